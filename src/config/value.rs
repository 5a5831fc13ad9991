//! The value parsers every section shares: file modes, signals, server
//! addresses, DKIM selectors, DNS names, reload commands, paths, secrets.
//!
//! Pure: each takes the text as written and returns the value or a
//! [`ValueError`], which renders as the end of the one-line message the
//! section validator prefixes with its table and key. Nothing here reads a
//! file, the environment or the clock, except [`Secret::read`], which is
//! called when the secret is needed, never while parsing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::names::{DnsName, NameError};

/// Why a value as written cannot be used. Displayed as the part of the
/// message after `key `NAME`: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not an octal file mode like \"0600\"")]
    NotAMode(String),
    #[error("{0:?} lets every user of the machine read the private key; use 0600 or 0640")]
    ModeOpenToAll(String),
    #[error("{0:?} does not let the owner read the file")]
    ModeUnreadable(String),
    #[error("{0:?} is not a signal name like \"HUP\" or \"USR1\"")]
    NotASignal(String),
    #[error("{0:?} is not an IP address with an optional port, like \"192.0.2.1:53\"")]
    NotAServer(String),
    #[error("{value:?} is not an address:port like \"{example}\"")]
    NotAnAddress {
        value: String,
        example: &'static str,
    },
    #[error(
        "selector {0:?}: must be one DNS label of 1 to 63 letters, digits and '-' (not at either end)"
    )]
    NotASelector(String),
    #[error("an argument list whose first item is the program")]
    NoProgram,
    #[error("must not be empty")]
    Empty,
    #[error("{} is shorter than the minimum {}", humantime::format_duration(*value), humantime::format_duration(*min))]
    TooShort { value: Duration, min: Duration },
    #[error(transparent)]
    Name(#[from] NameError),
}

/// A [`ValueError`] and the key it is about: "key `mode`: ...".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{key}`: {problem}")]
pub struct KeyError {
    pub key: &'static str,
    pub problem: ValueError,
}

/// Names `key` as the one a value error is about.
pub(super) fn at(key: &'static str) -> impl Fn(ValueError) -> KeyError {
    move |problem| KeyError { key, problem }
}

/// Parses an octal file mode like `"0640"`. Modes that let others read a
/// key are refused.
pub fn parse_mode(s: &str) -> Result<u32, ValueError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777 && !digits.is_empty())
        .ok_or_else(|| ValueError::NotAMode(s.to_owned()))?;
    if mode & 0o007 != 0 {
        return Err(ValueError::ModeOpenToAll(s.to_owned()));
    }
    if mode & 0o400 == 0 {
        return Err(ValueError::ModeUnreadable(s.to_owned()));
    }
    Ok(mode)
}

/// A key file mode as configured, 0600 when absent.
pub(super) fn key_mode(s: Option<&str>) -> Result<u32, ValueError> {
    s.map_or(Ok(0o600), parse_mode)
}

/// Parses a signal name: `HUP`, `SIGHUP`, `usr1`...
fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, ValueError> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .map_err(|_| ValueError::NotASignal(s.to_owned()))
}

/// Parses `host:port` (port 53 when absent) into a socket address.
pub fn parse_server(s: &str) -> Result<SocketAddr, ValueError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(ValueError::NotAServer(s.to_owned()))
}

/// Parses `address:port`; `example` shows the form in the message.
pub(super) fn parse_listen(s: &str, example: &'static str) -> Result<SocketAddr, ValueError> {
    s.parse().map_err(|_| ValueError::NotAnAddress {
        value: s.to_owned(),
        example,
    })
}

/// A DKIM selector must be one DNS label: letters, digits and '-', not
/// at either end, 1 to 63 characters (it also goes into key file paths
/// and the signer's configuration).
pub fn selector_label(selector: &str) -> Result<(), ValueError> {
    if selector.is_empty()
        || selector.len() > 63
        || selector.starts_with('-')
        || selector.ends_with('-')
        || !selector
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ValueError::NotASelector(selector.to_owned()));
    }
    Ok(())
}

/// Parses every name of a `domains` list (which may be empty).
pub(super) fn dns_names(names: &[String]) -> Result<Vec<DnsName>, ValueError> {
    Ok(names
        .iter()
        .map(|s| DnsName::parse(s))
        .collect::<Result<Vec<_>, _>>()?)
}

/// Refuses a duration under `min`.
pub(super) fn at_least(value: Duration, min: Duration) -> Result<Duration, ValueError> {
    if value < min {
        return Err(ValueError::TooShort { value, min });
    }
    Ok(value)
}

/// Refuses an owner or group given as "".
pub(super) fn not_empty(key: &'static str, value: Option<&str>) -> Result<(), KeyError> {
    match value {
        Some("") => Err(at(key)(ValueError::Empty)),
        _ => Ok(()),
    }
}

/// One way to tell a service that its files changed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reload {
    /// Run this program with these arguments (no shell).
    Command(Vec<String>),
    /// Send `signal` to the process whose pid is in `pidfile`.
    Signal {
        pidfile: PathBuf,
        signal: nix::sys::signal::Signal,
    },
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reload::Command(argv) => f.write_str(&shell_words(argv)),
            Reload::Signal { pidfile, signal } => {
                write!(f, "{signal} to the pid in {}", pidfile.display())
            }
        }
    }
}

/// Checks an argv whose first item must name a program.
pub(super) fn program(argv: &[String]) -> Result<(), ValueError> {
    match argv.first() {
        Some(p) if !p.is_empty() => Ok(()),
        _ => Err(ValueError::NoProgram),
    }
}

/// The `reload` and `reload_signal` keys of a target or of `[dkim]`, in
/// the order they run.
pub(super) fn reloads(
    command: Option<Vec<String>>,
    signal: Option<super::raw::RawSignal>,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<Vec<Reload>, KeyError> {
    let mut reloads = Vec::new();
    if let Some(argv) = command {
        program(&argv).map_err(at("reload"))?;
        reloads.push(Reload::Command(argv));
    }
    if let Some(sig) = signal {
        let signal = parse_signal(&sig.signal).map_err(at("reload_signal.signal"))?;
        reloads.push(Reload::Signal {
            pidfile: abs(&sig.pidfile),
            signal,
        });
    }
    Ok(reloads)
}

/// An argv as a person would type it, for messages.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes `.` and `..` components lexically, so messages show the path a
/// person would write (symlinks are not resolved: that is the reader's job).
pub(super) fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// Where a secret is read from, when it is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    Env(String),
}

/// Why a secret could not be read. Names where it was looked for, never
/// what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("{}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("environment variable {0} is not set")]
    Unset(String),
    #[error("{0} is empty")]
    Empty(Secret),
}

impl Secret {
    /// Reads the secret (trimmed). The error names where, never what.
    pub fn read(&self) -> Result<zeroize::Zeroizing<String>, SecretError> {
        let value = match self {
            Secret::File(path) => {
                std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
                    path: path.clone(),
                    reason: crate::source::io_reason(&e),
                })?
            }
            Secret::Env(var) => std::env::var(var).map_err(|_| SecretError::Unset(var.clone()))?,
        };
        let value = zeroize::Zeroizing::new(value);
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty(self.clone()));
        }
        Ok(zeroize::Zeroizing::new(trimmed.to_owned()))
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::File(p) => write!(f, "{}", p.display()),
            Secret::Env(v) => write!(f, "${v}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(
            normalize(Path::new("config/../out/./a.pem")),
            PathBuf::from("out/a.pem")
        );
        assert_eq!(normalize(Path::new("../a")), PathBuf::from("../a"));
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0604").is_err());
        assert!(parse_mode("").is_err());
    }

    #[test]
    fn each_value_error_reads_as_the_message_users_already_know() {
        fn key<T: std::fmt::Debug>(k: &'static str, r: Result<T, ValueError>) -> String {
            at(k)(r.unwrap_err()).to_string()
        }
        for (got, want) in [
            (
                key("mode", parse_mode("0999")),
                "key `mode`: \"0999\" is not an octal file mode like \"0600\"",
            ),
            (
                key("mode", parse_mode("0644")),
                "key `mode`: \"0644\" lets every user of the machine read the private key; use 0600 or 0640",
            ),
            (
                key("key_mode", parse_mode("0200")),
                "key `key_mode`: \"0200\" does not let the owner read the file",
            ),
            (
                key("reload_signal.signal", parse_signal("NOPE")),
                "key `reload_signal.signal`: \"NOPE\" is not a signal name like \"HUP\" or \"USR1\"",
            ),
            (
                key("server", parse_server("ns.example")),
                "key `server`: \"ns.example\" is not an IP address with an optional port, like \"192.0.2.1:53\"",
            ),
            (
                key(
                    "metrics.listen",
                    parse_listen("localhost", "127.0.0.1:9325"),
                ),
                "key `metrics.listen`: \"localhost\" is not an address:port like \"127.0.0.1:9325\"",
            ),
            (
                key("reload", program(&[String::new()])),
                "key `reload`: an argument list whose first item is the program",
            ),
            (
                key(
                    "poll_interval",
                    at_least(Duration::from_millis(10), Duration::from_millis(100)),
                ),
                "key `poll_interval`: 10ms is shorter than the minimum 100ms",
            ),
            (
                key("domains", dns_names(&["a b".to_owned()])),
                "key `domains`: \"a b\": character ' ' is not allowed in a host name",
            ),
            (
                not_empty("owner", Some("")).unwrap_err().to_string(),
                "key `owner`: must not be empty",
            ),
            (
                selector_label("a_b").unwrap_err().to_string(),
                "selector \"a_b\": must be one DNS label of 1 to 63 letters, digits and '-' (not at either end)",
            ),
        ] {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_secret_error_names_where_never_what() {
        let dir = std::env::temp_dir().join(format!("mxkeys-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let blank = dir.join("blank");
        std::fs::write(&blank, " \n").unwrap();
        let e = Secret::File(blank.clone()).read().unwrap_err();
        assert_eq!(e, SecretError::Empty(Secret::File(blank.clone())));
        assert_eq!(e.to_string(), format!("{} is empty", blank.display()));
        let missing = Secret::Env("MXKEYS_TEST_UNSET_SECRET_VARIABLE".to_owned());
        assert_eq!(
            missing.read().unwrap_err().to_string(),
            "environment variable MXKEYS_TEST_UNSET_SECRET_VARIABLE is not set"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_selector_is_one_dns_label_and_nothing_else() {
        let long = "a".repeat(63);
        let too_long = "a".repeat(64);
        for (selector, ok) in [
            ("r20260101", true),
            ("mail-2", true),
            ("A1", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            ("../x", false),
            ("a/b", false),
            ("a b", false),
            ("a.b", false),
            ("-a", false),
            ("a-", false),
            ("a'b", false),
            ("bad_sel", false),
            ("é", false),
        ] {
            assert_eq!(selector_label(selector).is_ok(), ok, "{selector:?}");
        }
    }
}
