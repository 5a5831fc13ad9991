//! Which certificate files Postfix and Dovecot serve, and on which TLS ports.
//!
//! Rule: decide apart from act. The parsers of `postconf` and `doveconf`
//! output and the functions that turn their settings into [`PostfixTls`] and
//! [`DovecotTls`] are pure (no files, no processes) and table-tested; the
//! effect layer ([`probe_postfix`], [`probe_dovecot`]) only runs the two
//! programs (given by path, with the configuration location tests point at)
//! and reads the PEM labels of `smtpd_tls_chain_files` (and each
//! certificate's key algorithm). Nothing is written, no key material is
//! kept or printed: a file's text and a key block's bytes are wiped as soon
//! as the labels are known. Every error is one line naming the program or
//! file, the setting and the reason.
//!
//! Postfix's rules followed here (postconf(5)): a non-empty
//! `smtpd_tls_chain_files` wins over the older `smtpd_tls_cert_file`/
//! `smtpd_tls_key_file` and `smtpd_tls_eccert_file`/`smtpd_tls_eckey_file`;
//! its files are read in order as one stream in which each private key is
//! directly followed by its certificate chain (key and chain in one file, or
//! a key file then a chain file). An empty key file parameter means the key
//! is in the certificate file. `$name` expansion is postconf's own (`-x`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rustls_pki_types::pem::{PemObject, SectionKind};
use zeroize::Zeroizing;

use crate::cert::{KeyType, Leaf};

/// The key algorithm a slot serves, as far as the configuration tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyTypeHint {
    Rsa,
    Ecdsa,
    Ed25519,
    /// Not told by the setting's name nor by the PEM labels.
    Unknown,
}

impl From<KeyType> for KeyTypeHint {
    fn from(k: KeyType) -> Self {
        match k {
            KeyType::Rsa { .. } => KeyTypeHint::Rsa,
            KeyType::Ecdsa(_) => KeyTypeHint::Ecdsa,
            KeyType::Ed25519 => KeyTypeHint::Ed25519,
            KeyType::Other => KeyTypeHint::Unknown,
        }
    }
}

/// One certificate a server serves: its private key file and the file
/// holding its chain (the same file when combined).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub key: PathBuf,
    pub chain: PathBuf,
    pub key_type_hint: KeyTypeHint,
}

impl Slot {
    /// Key and chain in one file.
    pub fn is_combined(&self) -> bool {
        self.key == self.chain
    }
}

/// How a listener offers TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS from the first byte (Postfix `smtpd_tls_wrappermode`, Dovecot
    /// `ssl = yes` on the listener).
    Implicit,
    /// The plain protocol's STARTTLS command.
    StartTls,
}

/// A listening service that offers TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Postfix: the master.cf service name (`smtp`, `127.0.0.1:2525`);
    /// Dovecot: `SERVICE/LISTENER` (`imap-login/imaps`).
    pub service: String,
    /// The address it binds, when the configuration names one.
    pub address: Option<String>,
    /// `None` when a Postfix service name is not one this module knows.
    pub port: Option<u16>,
    pub tls: TlsMode,
}

/// Which Postfix parameters named the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PostfixParams {
    /// `smtpd_tls_chain_files`.
    ChainFiles,
    /// `smtpd_tls_cert_file`/`key_file` and `eccert_file`/`eckey_file`.
    Legacy,
    /// None of them is set: Postfix serves no certificate.
    None,
}

/// What Postfix's smtpd serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostfixTls {
    pub slots: Vec<Slot>,
    /// Every slot keeps key and chain in one file (false without slots).
    pub combined: bool,
    pub from: PostfixParams,
    /// The smtpd and postscreen services of master.cf that offer TLS.
    pub ports: Vec<Listener>,
    /// master.cf services whose `-o` sets certificate or key files of their
    /// own (not followed here: `init` leaves them as a comment to fill in).
    pub own_files: Vec<String>,
}

/// Where a Dovecot `ssl_*` setting takes its PEM from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DovecotSource {
    /// `<PATH`: read from a file.
    File(PathBuf),
    /// The PEM text is in the configuration itself (not kept here).
    Inline,
}

/// One Dovecot certificate: `ssl_cert`/`ssl_key` or the `ssl_alt_` pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DovecotPair {
    pub cert: DovecotSource,
    pub key: DovecotSource,
}

/// What Dovecot serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DovecotTls {
    /// `ssl_cert`/`ssl_key`; `None` when unset.
    pub main: Option<DovecotPair>,
    /// `ssl_alt_cert`/`ssl_alt_key`; `None` when unset.
    pub alt: Option<DovecotPair>,
    /// Login listeners of the enabled protocols that offer TLS.
    pub ports: Vec<Listener>,
    /// Filter blocks (`local_name imap.example.test`, `local 10.0.0.1 /
    /// protocol imap`) that set a certificate of their own (not followed
    /// here: `init` leaves them as a comment to fill in).
    pub scoped: Vec<String>,
}

/// Why a program's output or settings could not be understood (pure
/// layer): the setting and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unparsable {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Unparsable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

fn unparsable(key: &str, reason: impl Into<String>) -> Unparsable {
    Unparsable {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Why probing a server failed (effect layer).
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{program}: cannot run it: {reason}")]
    Missing { program: PathBuf, reason: String },
    /// Exit status, or a timeout (then `stderr` is empty).
    #[error("{program} {args}: {status}{}", if .stderr.is_empty() { String::new() } else { format!(": {}", .stderr) })]
    Status {
        program: PathBuf,
        args: String,
        status: String,
        stderr: String,
    },
    #[error("{program}: {key}: {reason}")]
    Unparsable {
        program: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{file}: named by {key}: {reason}")]
    File {
        file: PathBuf,
        key: String,
        reason: String,
    },
}

// ---------------------------------------------------------------------------
// Pure: postconf
// ---------------------------------------------------------------------------

/// The main.cf parameters [`probe_postfix`] asks `postconf -x` for.
pub const POSTFIX_PARAMS: &[&str] = &[
    "smtpd_tls_chain_files",
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
    "smtpd_tls_security_level",
    "smtpd_use_tls",
    "smtpd_enforce_tls",
    "smtpd_tls_wrappermode",
    "postscreen_tls_security_level",
    "postscreen_use_tls",
    "postscreen_enforce_tls",
];

/// `name = value` lines, as `postconf` and `doveconf` print them (without
/// `-h`); an empty value may print as `name =`.
pub fn parse_assignments(out: &str) -> Result<BTreeMap<String, String>, Unparsable> {
    let mut map = BTreeMap::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let Some((name, value)) = line.split_once(" =") else {
            return Err(unparsable(
                line.split_whitespace().next().unwrap_or(line),
                "a line that is not `name = value`",
            ));
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(unparsable(line, "a line that is not `name = value`"));
        }
        map.insert(name.to_owned(), value.trim().to_owned());
    }
    Ok(map)
}

/// A Postfix list: names separated by commas and/or whitespace.
pub fn postfix_list(value: &str) -> Vec<&str> {
    value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A master.cf service as `postconf -M` prints it (one line per service).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterEntry {
    pub service: String,
    pub kind: String,
    pub command: String,
    /// `-o name=value` overrides on the command line.
    pub overrides: BTreeMap<String, String>,
}

/// `postconf -M` output: `service type private unpriv chroot wakeup
/// maxproc command [args]`.
pub fn parse_master(out: &str) -> Result<Vec<MasterEntry>, Unparsable> {
    let mut entries = Vec::new();
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 8 {
            return Err(unparsable(
                fields.first().copied().unwrap_or(line),
                "a master.cf line with fewer than 8 fields",
            ));
        }
        let mut overrides = BTreeMap::new();
        let mut args = fields[8..].iter();
        while let Some(arg) = args.next() {
            let Some(first) = (match *arg {
                "-o" => args.next().copied(),
                a => a.strip_prefix("-o"),
            }) else {
                continue;
            };
            // `-o {name=value with spaces}` spans several fields.
            let mut pair = first.to_owned();
            if let Some(rest) = first.strip_prefix('{') {
                pair = rest.to_owned();
                while !pair.ends_with('}') {
                    let Some(more) = args.next() else { break };
                    pair.push(' ');
                    pair.push_str(more);
                }
                pair = pair.trim_end_matches('}').to_owned();
            }
            if let Some((k, v)) = pair.split_once('=') {
                overrides.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
        entries.push(MasterEntry {
            service: fields[0].to_owned(),
            kind: fields[1].to_owned(),
            command: fields[7].to_owned(),
            overrides,
        });
    }
    Ok(entries)
}

/// The older parameter pairs: RSA in `cert_file`, ECDSA in `eccert_file`;
/// an empty key parameter means the key is in the certificate file.
pub fn legacy_slots(main: &BTreeMap<String, String>) -> Result<Vec<Slot>, Unparsable> {
    let get = |k: &str| main.get(k).map(|v| v.trim()).unwrap_or("");
    let mut slots = Vec::new();
    for (cert_p, key_p, hint) in [
        (
            "smtpd_tls_cert_file",
            "smtpd_tls_key_file",
            KeyTypeHint::Rsa,
        ),
        (
            "smtpd_tls_eccert_file",
            "smtpd_tls_eckey_file",
            KeyTypeHint::Ecdsa,
        ),
    ] {
        let (cert, key) = (get(cert_p), get(key_p));
        match (cert.is_empty(), key.is_empty()) {
            (true, true) => {}
            (true, false) => {
                return Err(unparsable(key_p, format!("is set but {cert_p} is empty")));
            }
            (false, _) => slots.push(Slot {
                chain: PathBuf::from(cert),
                key: PathBuf::from(if key.is_empty() { cert } else { key }),
                key_type_hint: hint,
            }),
        }
    }
    Ok(slots)
}

/// A PEM block of a `smtpd_tls_chain_files` file, as far as slots care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// A private key (hint from its label: PKCS#1 is RSA, SEC1 is ECDSA,
    /// PKCS#8 says nothing).
    Key(KeyTypeHint),
    /// A certificate, with its public key's algorithm.
    Cert(KeyTypeHint),
}

/// Postfix's stream rule: each key is directly followed by its chain. The
/// slot's chain file is the file of the certificate right after the key;
/// its hint is the key's, else the leaf's.
pub fn chain_slots(files: &[(PathBuf, Vec<Block>)]) -> Result<Vec<Slot>, Unparsable> {
    const KEY: &str = "smtpd_tls_chain_files";
    let stream = files
        .iter()
        .flat_map(|(f, blocks)| blocks.iter().map(move |b| (f, *b)));
    let mut slots: Vec<Slot> = Vec::new();
    // The key waiting for its leaf.
    let mut pending: Option<(&PathBuf, KeyTypeHint)> = None;
    let mut seen_key = false;
    for (file, block) in stream {
        match (block, pending.take()) {
            (Block::Key(_), Some((k, _))) => {
                return Err(unparsable(
                    KEY,
                    format!(
                        "the key in {} is not followed by a certificate",
                        k.display()
                    ),
                ));
            }
            (Block::Key(h), None) => {
                pending = Some((file, h));
                seen_key = true;
            }
            (Block::Cert(leaf), Some((key, h))) => slots.push(Slot {
                key: key.clone(),
                chain: file.clone(),
                key_type_hint: if h == KeyTypeHint::Unknown { leaf } else { h },
            }),
            (Block::Cert(_), None) if !seen_key => {
                return Err(unparsable(
                    KEY,
                    format!(
                        "{} starts with a certificate, not a private key",
                        file.display()
                    ),
                ));
            }
            // The rest of the previous slot's chain.
            (Block::Cert(_), None) => {}
        }
    }
    if let Some((k, _)) = pending {
        return Err(unparsable(
            KEY,
            format!(
                "the key in {} is not followed by a certificate",
                k.display()
            ),
        ));
    }
    Ok(slots)
}

/// The port of a master.cf inet service name: `[host:]port` where port is
/// a number or a service this module knows.
pub fn postfix_service_port(service: &str) -> (Option<String>, Option<u16>) {
    let (host, port) = match service.rsplit_once(':') {
        Some((h, p)) => (Some(h.trim_matches(['[', ']']).to_owned()), p),
        None => (None, service),
    };
    let port = port.parse().ok().or(match port {
        "smtp" => Some(25),
        "submission" => Some(587),
        "submissions" | "smtps" | "urd" => Some(465),
        _ => None,
    });
    (host, port)
}

/// The inet services that offer TLS: smtpd in wrapper mode (implicit TLS),
/// or by STARTTLS when the service's security level (its `-o`, else
/// main.cf's) is not `none`; postscreen (which answers port 25 in front of
/// smtpd, its STARTTLS done by tlsproxy with smtpd's files) by its own
/// `postscreen_` level. The obsolete `*_use_tls`/`*_enforce_tls` count when
/// no security level is set.
pub fn postfix_listeners(main: &BTreeMap<String, String>, master: &[MasterEntry]) -> Vec<Listener> {
    let yes = |v: Option<&String>| v.is_some_and(|v| v.trim().eq_ignore_ascii_case("yes"));
    master
        .iter()
        .filter(|e| e.kind == "inet")
        .filter_map(|e| {
            let prefix = match e.command.as_str() {
                "smtpd" => "smtpd",
                "postscreen" => "postscreen",
                _ => return None,
            };
            let get = |k: &str| {
                let k = format!("{prefix}_{k}");
                e.overrides.get(&k).or_else(|| main.get(&k))
            };
            let tls = if prefix == "smtpd" && yes(get("tls_wrappermode")) {
                TlsMode::Implicit
            } else {
                let level = get("tls_security_level").map(|v| v.trim()).unwrap_or("");
                let on = if level.is_empty() {
                    yes(get("use_tls")) || yes(get("enforce_tls"))
                } else {
                    level != "none"
                };
                if !on {
                    return None;
                }
                TlsMode::StartTls
            };
            let (address, port) = postfix_service_port(&e.service);
            Some(Listener {
                service: e.service.clone(),
                address,
                port,
                tls,
            })
        })
        .collect()
}

/// Everything together. `chain_blocks` are the PEM blocks of the files of
/// `smtpd_tls_chain_files`, in its order (empty when it is empty).
pub fn postfix_tls(
    main: &BTreeMap<String, String>,
    master: &[MasterEntry],
    chain_blocks: &[(PathBuf, Vec<Block>)],
) -> Result<PostfixTls, Unparsable> {
    let chain_files = main
        .get("smtpd_tls_chain_files")
        .map(|v| !postfix_list(v).is_empty())
        .unwrap_or(false);
    let (slots, from) = if chain_files {
        (chain_slots(chain_blocks)?, PostfixParams::ChainFiles)
    } else {
        let slots = legacy_slots(main)?;
        let from = if slots.is_empty() {
            PostfixParams::None
        } else {
            PostfixParams::Legacy
        };
        (slots, from)
    };
    Ok(PostfixTls {
        combined: !slots.is_empty() && slots.iter().all(Slot::is_combined),
        slots,
        from,
        ports: postfix_listeners(main, master),
        own_files: master
            .iter()
            .filter(|e| {
                e.overrides
                    .keys()
                    .any(|k| FILE_PARAMS.contains(&k.as_str()))
            })
            .map(|e| e.service.clone())
            .collect(),
    })
}

/// The parameters that name smtpd's certificate and key files.
const FILE_PARAMS: &[&str] = &[
    "smtpd_tls_chain_files",
    "smtpd_tls_cert_file",
    "smtpd_tls_key_file",
    "smtpd_tls_eccert_file",
    "smtpd_tls_eckey_file",
];

// ---------------------------------------------------------------------------
// Pure: doveconf
// ---------------------------------------------------------------------------

/// One `ssl_*` value as `doveconf -h` prints it: `<PATH`, inline PEM, or
/// empty (unset).
pub fn dovecot_source(value: &str) -> Option<DovecotSource> {
    let v = value.trim();
    if v.is_empty() {
        None
    } else if let Some(path) = v.strip_prefix('<') {
        Some(DovecotSource::File(PathBuf::from(path.trim())))
    } else {
        Some(DovecotSource::Inline)
    }
}

/// A certificate and key setting pair; one set without the other is an error.
pub fn dovecot_pair(
    (cert_name, cert): (&str, &str),
    (key_name, key): (&str, &str),
) -> Result<Option<DovecotPair>, Unparsable> {
    match (dovecot_source(cert), dovecot_source(key)) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => Ok(Some(DovecotPair { cert, key })),
        (Some(_), None) => Err(unparsable(
            key_name,
            format!("is empty but {cert_name} is set"),
        )),
        (None, Some(_)) => Err(unparsable(
            cert_name,
            format!("is empty but {key_name} is set"),
        )),
    }
}

/// The filter blocks of `doveconf -n` output that set `ssl_cert` or
/// `ssl_alt_cert`, as their headers joined by ` / `.
pub fn dovecot_scoped_certs(out: &str) -> Result<Vec<String>, Unparsable> {
    let mut stack: Vec<&str> = Vec::new();
    let mut scoped: Vec<String> = Vec::new();
    for line in out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(header) = line.strip_suffix('{') {
            stack.push(header.trim());
        } else if line == "}" {
            if stack.pop().is_none() {
                return Err(unparsable("-n", "a `}` without a block"));
            }
        } else if let Some((k, _)) = line.split_once(" =") {
            let scope = stack.join(" / ");
            if !stack.is_empty()
                && matches!(k.trim(), "ssl_cert" | "ssl_alt_cert")
                && !scoped.contains(&scope)
            {
                scoped.push(scope);
            }
        }
    }
    if let Some(open) = stack.last() {
        return Err(unparsable(open, "a block that is not closed"));
    }
    Ok(scoped)
}

/// A service of `doveconf service` output with its inet listeners.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DovecotService {
    pub name: String,
    pub protocol: String,
    pub kind: String,
    pub listeners: Vec<DovecotListener>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DovecotListener {
    pub name: String,
    pub address: String,
    pub port: String,
    pub ssl: String,
}

/// The `service NAME { ... inet_listener NAME { ... } }` blocks of
/// `doveconf service`.
pub fn parse_dovecot_services(out: &str) -> Result<Vec<DovecotService>, Unparsable> {
    let mut services: Vec<DovecotService> = Vec::new();
    // Block headers from the outermost.
    let mut stack: Vec<String> = Vec::new();
    for line in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(header) = line.strip_suffix('{') {
            let header = header.trim().to_owned();
            match (stack.len(), header.split_once(' ')) {
                (0, Some(("service", name))) => services.push(DovecotService {
                    name: name.trim().to_owned(),
                    ..Default::default()
                }),
                (1, Some(("inet_listener", name))) => {
                    if let Some(s) = services.last_mut() {
                        s.listeners.push(DovecotListener {
                            name: name.trim().to_owned(),
                            ..Default::default()
                        });
                    }
                }
                (1, None) if header == "inet_listener" => {
                    if let Some(s) = services.last_mut() {
                        s.listeners.push(DovecotListener::default());
                    }
                }
                _ => {}
            }
            stack.push(header);
        } else if line == "}" {
            if stack.pop().is_none() {
                return Err(unparsable("service", "a `}` without a block"));
            }
        } else if let Some((k, v)) = line.split_once(" =") {
            let (k, v) = (k.trim(), v.trim().to_owned());
            let in_service = stack.first().is_some_and(|h| h.starts_with("service "));
            let Some(s) = services.last_mut().filter(|_| in_service) else {
                continue;
            };
            match stack.len() {
                1 => match k {
                    "protocol" => s.protocol = v,
                    "type" => s.kind = v,
                    _ => {}
                },
                2 if stack[1].starts_with("inet_listener") => {
                    if let Some(l) = s.listeners.last_mut() {
                        match k {
                            "address" => l.address = v,
                            "port" => l.port = v,
                            "ssl" => l.ssl = v,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        } else {
            return Err(unparsable(
                stack.last().map(String::as_str).unwrap_or("service"),
                format!("an unexpected line {line:?}"),
            ));
        }
    }
    if let Some(open) = stack.last() {
        return Err(unparsable(open, "a block that is not closed"));
    }
    Ok(services)
}

/// The login listeners of the enabled `protocols` that offer TLS: implicit
/// when the listener says `ssl = yes`, STARTTLS otherwise unless the global
/// `ssl` is `no`. Port 0 is a disabled listener.
pub fn dovecot_listeners(protocols: &str, ssl: &str, services: &[DovecotService]) -> Vec<Listener> {
    let enabled: Vec<&str> = protocols.split_whitespace().collect();
    let ssl_off = ssl.trim() == "no";
    let mut out = Vec::new();
    for s in services
        .iter()
        .filter(|s| s.kind == "login" && enabled.contains(&s.protocol.as_str()))
    {
        for l in &s.listeners {
            let Ok(port) = l.port.parse::<u16>() else {
                continue;
            };
            if port == 0 || ssl_off {
                continue;
            }
            let tls = if l.ssl == "yes" {
                TlsMode::Implicit
            } else {
                TlsMode::StartTls
            };
            out.push(Listener {
                service: format!("{}/{}", s.name, l.name),
                address: Some(l.address.clone()).filter(|a| !a.is_empty()),
                port: Some(port),
                tls,
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Effects
// ---------------------------------------------------------------------------

/// Where Postfix's configuration printer is and which configuration it reads.
#[derive(Clone, Debug)]
pub struct PostfixProbe {
    /// `postconf` (e.g. `/usr/sbin/postconf`).
    pub postconf: PathBuf,
    /// `-c DIR`; `None` for Postfix's default configuration directory.
    pub config_dir: Option<PathBuf>,
    /// The most each `postconf` run may take (it stalls up to 2 s when
    /// main.cf changed in the last 2 s).
    pub timeout: Duration,
}

/// Where Dovecot's configuration printer is and which configuration it reads.
#[derive(Clone, Debug)]
pub struct DovecotProbe {
    /// `doveconf` (e.g. `/usr/bin/doveconf`).
    pub doveconf: PathBuf,
    /// `-c FILE`; `None` for Dovecot's default configuration file.
    pub config: Option<PathBuf>,
    /// The most each `doveconf` run may take.
    pub timeout: Duration,
}

/// Runs `program args` for at most `timeout` (then kills it), its
/// standard output as text.
fn run(program: &Path, args: &[OsString], timeout: Duration) -> Result<String, ProbeError> {
    use std::io::Read as _;
    use wait_timeout::ChildExt as _;
    let shown = || {
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ProbeError::Missing {
            program: program.to_owned(),
            reason: e.to_string(),
        })?;
    // Both pipes are drained while it runs, so a large output cannot stall it.
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProbeError::Status {
                program: program.to_owned(),
                args: shown(),
                status: match other {
                    Err(e) => format!("cannot wait for it: {e}"),
                    _ => format!("timed out after {}", humantime::format_duration(timeout)),
                },
                stderr: String::new(),
            });
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        let stderr = String::from_utf8_lossy(&stderr);
        return Err(ProbeError::Status {
            program: program.to_owned(),
            args: shown(),
            status: status.to_string(),
            stderr: stderr.lines().last().unwrap_or("").trim().to_owned(),
        });
    }
    String::from_utf8(stdout).map_err(|_| ProbeError::Unparsable {
        program: program.to_owned(),
        key: shown(),
        reason: "the output is not UTF-8".to_owned(),
    })
}

fn with_program(program: &Path) -> impl Fn(Unparsable) -> ProbeError + '_ {
    move |u| ProbeError::Unparsable {
        program: program.to_owned(),
        key: u.key,
        reason: u.reason,
    }
}

/// The PEM blocks of one `smtpd_tls_chain_files` file. Key bytes are held
/// in wiped buffers and dropped at once: only the label is kept.
pub fn read_blocks(file: &Path) -> Result<Vec<Block>, ProbeError> {
    let err = |reason: String| ProbeError::File {
        file: file.to_owned(),
        key: "smtpd_tls_chain_files".to_owned(),
        reason,
    };
    let text = Zeroizing::new(std::fs::read(file).map_err(|e| err(e.to_string()))?);
    let mut blocks = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&text) {
        let (kind, der) = section.map_err(|_| err("malformed PEM".to_owned()))?;
        let der = Zeroizing::new(der);
        blocks.push(match kind {
            SectionKind::RsaPrivateKey => Block::Key(KeyTypeHint::Rsa),
            SectionKind::EcPrivateKey => Block::Key(KeyTypeHint::Ecdsa),
            SectionKind::PrivateKey => Block::Key(KeyTypeHint::Unknown),
            SectionKind::Certificate => Block::Cert(
                Leaf::parse(&der)
                    .map(|l| l.key_type.into())
                    .unwrap_or(KeyTypeHint::Unknown),
            ),
            _ => continue,
        });
    }
    if blocks.is_empty() {
        return Err(err("holds no private key nor certificate".to_owned()));
    }
    Ok(blocks)
}

/// Asks Postfix (`postconf -x NAME...`, printed as `name = value` so an
/// empty value cannot shift the others; `postconf -M`) which files smtpd serves and
/// which smtpd services offer TLS; reads the PEM labels of
/// `smtpd_tls_chain_files` to split it into slots.
pub fn probe_postfix(p: &PostfixProbe) -> Result<PostfixTls, ProbeError> {
    let base: Vec<OsString> = match &p.config_dir {
        Some(d) => vec!["-c".into(), d.into()],
        None => Vec::new(),
    };
    let mut args = base.clone();
    args.push("-x".into());
    args.extend(POSTFIX_PARAMS.iter().map(OsString::from));
    let main = parse_assignments(&run(&p.postconf, &args, p.timeout)?)
        .map_err(with_program(&p.postconf))?;
    let mut args = base;
    args.push("-M".into());
    let master =
        parse_master(&run(&p.postconf, &args, p.timeout)?).map_err(with_program(&p.postconf))?;
    let mut chain_blocks = Vec::new();
    for f in postfix_list(main.get("smtpd_tls_chain_files").map_or("", |s| s)) {
        let f = PathBuf::from(f);
        let blocks = read_blocks(&f)?;
        chain_blocks.push((f, blocks));
    }
    postfix_tls(&main, &master, &chain_blocks).map_err(with_program(&p.postconf))
}

/// Asks Dovecot (`doveconf -h` per setting, so an inline PEM value cannot
/// shift the others; `doveconf service`) which files it serves and which
/// login listeners offer TLS.
pub fn probe_dovecot(p: &DovecotProbe) -> Result<DovecotTls, ProbeError> {
    let base: Vec<OsString> = match &p.config {
        Some(f) => vec!["-c".into(), f.into()],
        None => Vec::new(),
    };
    let get = |name: &str| {
        let mut args = base.clone();
        args.extend(["-h".into(), name.into()]);
        run(&p.doveconf, &args, p.timeout)
    };
    let names = ["ssl_cert", "ssl_key", "ssl_alt_cert", "ssl_alt_key"];
    // ssl_key may hold an inline key: its text is wiped once read.
    let mut values = Vec::new();
    for n in names {
        values.push(Zeroizing::new(get(n)?));
    }
    let main = dovecot_pair((names[0], &values[0]), (names[1], &values[1]));
    let alt = dovecot_pair((names[2], &values[2]), (names[3], &values[3]));
    let protocols = get("protocols")?;
    let ssl = get("ssl")?;
    let mut args = base.clone();
    args.push("service".into());
    let services = parse_dovecot_services(&run(&p.doveconf, &args, p.timeout)?);
    // -n (without -P) prints the filter blocks; keys show as hidden.
    let mut args = base;
    args.push("-n".into());
    let scoped = dovecot_scoped_certs(&run(&p.doveconf, &args, p.timeout)?);
    let fail = with_program(&p.doveconf);
    Ok(DovecotTls {
        main: main.map_err(&fail)?,
        alt: alt.map_err(&fail)?,
        ports: dovecot_listeners(&protocols, &ssl, &services.map_err(&fail)?),
        scoped: scoped.map_err(&fail)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn slot(key: &str, chain: &str, h: KeyTypeHint) -> Slot {
        Slot {
            key: key.into(),
            chain: chain.into(),
            key_type_hint: h,
        }
    }

    /// A table row: the input and the slots, or a part of the error.
    type Row<I> = (I, Result<Vec<Slot>, &'static str>);
    /// The files of `smtpd_tls_chain_files` with their blocks.
    type Files = Vec<(PathBuf, Vec<Block>)>;

    #[test]
    fn postconf_assignments_parse_with_empty_values_and_reject_other_lines() {
        let m = parse_assignments("a = x y\nb =\nc = \n").unwrap();
        assert_eq!(m, map(&[("a", "x y"), ("b", ""), ("c", "")]));
        let e = parse_assignments("a = 1\npostconf: warning\n").unwrap_err();
        assert_eq!(e.key, "postconf:");
    }

    #[test]
    fn postfix_lists_split_on_commas_and_whitespace() {
        assert_eq!(postfix_list(" a, b\n  c,,d "), ["a", "b", "c", "d"]);
        assert!(postfix_list(" , ").is_empty());
    }

    #[test]
    fn chain_files_follow_postfixs_key_then_chain_stream() {
        use Block::*;
        use KeyTypeHint::*;
        let p = |s: &str| PathBuf::from(s);
        let table: Vec<Row<Files>> = vec![
            // Two combined files.
            (
                vec![
                    (p("/r.pem"), vec![Key(Rsa), Cert(Rsa), Cert(Rsa)]),
                    (p("/e.pem"), vec![Key(Unknown), Cert(Ecdsa)]),
                ],
                Ok(vec![
                    slot("/r.pem", "/r.pem", Rsa),
                    slot("/e.pem", "/e.pem", Ecdsa),
                ]),
            ),
            // Key file then chain file, twice.
            (
                vec![
                    (p("/e.key"), vec![Key(Ecdsa)]),
                    (p("/e.crt"), vec![Cert(Ecdsa), Cert(Rsa)]),
                    (p("/r.key"), vec![Key(Unknown)]),
                    (p("/r.crt"), vec![Cert(Rsa)]),
                ],
                Ok(vec![
                    slot("/e.key", "/e.crt", Ecdsa),
                    slot("/r.key", "/r.crt", Rsa),
                ]),
            ),
            // Both keys in one file, chains after (Postfix allows one stream).
            (
                vec![(
                    p("/all.pem"),
                    vec![Key(Rsa), Cert(Rsa), Key(Ed25519), Cert(Ed25519)],
                )],
                Ok(vec![
                    slot("/all.pem", "/all.pem", Rsa),
                    slot("/all.pem", "/all.pem", Ed25519),
                ]),
            ),
            (
                vec![(p("/c.crt"), vec![Cert(Rsa)])],
                Err("starts with a certificate"),
            ),
            (
                vec![(p("/k.key"), vec![Key(Rsa)])],
                Err("not followed by a certificate"),
            ),
            (
                vec![(p("/k.key"), vec![Key(Rsa), Key(Ecdsa), Cert(Ecdsa)])],
                Err("not followed by a certificate"),
            ),
        ];
        for (files, want) in table {
            let got = chain_slots(&files);
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{files:?}"),
                (Err(g), Err(w)) => {
                    assert_eq!(g.key, "smtpd_tls_chain_files");
                    assert!(g.reason.contains(w), "{files:?}: {g}");
                }
                (g, w) => panic!("{files:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn legacy_pairs_give_rsa_and_ecdsa_slots_and_an_empty_key_means_combined() {
        use KeyTypeHint::*;
        let table: Vec<Row<Vec<(&str, &str)>>> = vec![
            (vec![], Ok(vec![])),
            (
                vec![
                    ("smtpd_tls_cert_file", "/r.crt"),
                    ("smtpd_tls_key_file", "/r.key"),
                ],
                Ok(vec![slot("/r.key", "/r.crt", Rsa)]),
            ),
            (
                vec![
                    ("smtpd_tls_cert_file", "/r.pem"),
                    ("smtpd_tls_key_file", ""),
                ],
                Ok(vec![slot("/r.pem", "/r.pem", Rsa)]),
            ),
            (
                vec![
                    ("smtpd_tls_cert_file", "/r.crt"),
                    ("smtpd_tls_key_file", "/r.key"),
                    ("smtpd_tls_eccert_file", "/e.crt"),
                    ("smtpd_tls_eckey_file", "/e.key"),
                ],
                Ok(vec![
                    slot("/r.key", "/r.crt", Rsa),
                    slot("/e.key", "/e.crt", Ecdsa),
                ]),
            ),
            (
                vec![("smtpd_tls_eckey_file", "/e.key")],
                Err("smtpd_tls_eckey_file"),
            ),
        ];
        for (params, want) in table {
            let got = legacy_slots(&map(&params));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{params:?}"),
                (Err(g), Err(w)) => assert_eq!(g.key, w),
                (g, w) => panic!("{params:?}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn chain_files_win_over_the_legacy_parameters() {
        let main = map(&[
            ("smtpd_tls_chain_files", "/r.pem"),
            ("smtpd_tls_cert_file", "/old.crt"),
        ]);
        let blocks = vec![(
            PathBuf::from("/r.pem"),
            vec![Block::Key(KeyTypeHint::Rsa), Block::Cert(KeyTypeHint::Rsa)],
        )];
        let t = postfix_tls(&main, &[], &blocks).unwrap();
        assert_eq!(t.from, PostfixParams::ChainFiles);
        assert_eq!(t.slots, vec![slot("/r.pem", "/r.pem", KeyTypeHint::Rsa)]);
        assert!(t.combined);
        let none = postfix_tls(&map(&[]), &[], &[]).unwrap();
        assert_eq!((none.from, none.combined), (PostfixParams::None, false));
    }

    #[test]
    fn master_services_offer_tls_by_wrapper_mode_or_security_level() {
        let master = parse_master(
            "smtp       inet  n       -       y       -       -       smtpd\n\
             submission inet  n       -       y       -       -       smtpd -o syslog_name=postfix/submission -o smtpd_tls_security_level=encrypt\n\
             submissions inet n       -       y       -       -       smtpd -o smtpd_tls_wrappermode=yes\n\
             127.0.0.1:2525 inet n    -       n       -       -       smtpd -o smtpd_tls_security_level=none\n\
             [::1]:10025 inet n    -       n       -       -       smtpd\n\
             pickup     unix  n       -       y       60      1       pickup\n",
        )
        .unwrap();
        let l = |s: &str, a: Option<&str>, p: u16, tls| Listener {
            service: s.into(),
            address: a.map(Into::into),
            port: Some(p),
            tls,
        };
        // main.cf says `may`: every smtpd but the one set to `none`.
        let may = map(&[("smtpd_tls_security_level", "may")]);
        assert_eq!(
            postfix_listeners(&may, &master),
            vec![
                l("smtp", None, 25, TlsMode::StartTls),
                l("submission", None, 587, TlsMode::StartTls),
                l("submissions", None, 465, TlsMode::Implicit),
                l("[::1]:10025", Some("::1"), 10025, TlsMode::StartTls),
            ]
        );
        // No level in main.cf: only the services that set TLS themselves.
        assert_eq!(
            postfix_listeners(&map(&[]), &master),
            vec![
                l("submission", None, 587, TlsMode::StartTls),
                l("submissions", None, 465, TlsMode::Implicit),
            ]
        );
        // The obsolete switch counts when no level is set.
        assert_eq!(
            postfix_listeners(&map(&[("smtpd_use_tls", "yes")]), &master).len(),
            4
        );
        assert!(parse_master("smtp inet n - y - -\n").is_err());
        // A service with certificate files of its own is named.
        let own = parse_master(
            "smtp inet n - y - - smtpd\n\
             submission inet n - y - - smtpd -o smtpd_tls_chain_files=/etc/sub.pem\n\
             submissions inet n - y - - smtpd -o {smtpd_tls_chain_files=/etc/a.pem, /etc/b.pem} -o smtpd_tls_wrappermode=yes\n",
        )
        .unwrap();
        assert_eq!(
            own[2]
                .overrides
                .get("smtpd_tls_chain_files")
                .map(String::as_str),
            Some("/etc/a.pem, /etc/b.pem")
        );
        assert_eq!(
            postfix_tls(&may, &own, &[]).unwrap().own_files,
            ["submission", "submissions"]
        );
        // postscreen in front of smtpd: port 25 by its own level.
        let screened = parse_master(
            "smtp inet n - y - 1 postscreen\n\
             smtpd pass - - y - - smtpd\n\
             tlsproxy unix - - y - 0 tlsproxy\n",
        )
        .unwrap();
        let levels = |ps: &str| {
            map(&[
                ("smtpd_tls_security_level", "may"),
                ("postscreen_tls_security_level", ps),
            ])
        };
        assert_eq!(
            postfix_listeners(&levels("may"), &screened),
            vec![l("smtp", None, 25, TlsMode::StartTls)]
        );
        assert!(postfix_listeners(&levels("none"), &screened).is_empty());
    }

    #[test]
    fn dovecot_values_with_a_less_than_sign_are_files_and_empty_ones_unset() {
        assert_eq!(
            dovecot_source("</etc/tls/a.pem\n"),
            Some(DovecotSource::File("/etc/tls/a.pem".into()))
        );
        assert_eq!(
            dovecot_source("-----BEGIN CERTIFICATE-----"),
            Some(DovecotSource::Inline)
        );
        assert_eq!(dovecot_source("\n"), None);
        assert_eq!(
            dovecot_pair(("ssl_alt_cert", ""), ("ssl_alt_key", "")),
            Ok(None)
        );
        let e = dovecot_pair(("ssl_alt_cert", "</a"), ("ssl_alt_key", "")).unwrap_err();
        assert_eq!(e.key, "ssl_alt_key");
    }

    #[test]
    fn dovecot_login_listeners_of_enabled_protocols_offer_tls() {
        let services = parse_dovecot_services(
            "service imap-login {\n  chroot = login\n  inet_listener imap {\n    address = 127.0.0.1\n    port = 1143\n    ssl = no\n  }\n  inet_listener imaps {\n    address = \n    port = 1993\n    ssl = yes\n  }\n  protocol = imap\n  type = login\n}\n\
             service pop3-login {\n  inet_listener pop3s {\n    port = 0\n    ssl = yes\n  }\n  protocol = pop3\n  type = login\n}\n\
             service submission-login {\n  inet_listener submission {\n    port = 587\n    ssl = no\n  }\n  protocol = submission\n  type = login\n}\n\
             service imap {\n  protocol = imap\n  type = \n}\n",
        )
        .unwrap();
        let got = dovecot_listeners("imap pop3", "required", &services);
        assert_eq!(
            got,
            vec![
                Listener {
                    service: "imap-login/imap".into(),
                    address: Some("127.0.0.1".into()),
                    port: Some(1143),
                    tls: TlsMode::StartTls
                },
                Listener {
                    service: "imap-login/imaps".into(),
                    address: None,
                    port: Some(1993),
                    tls: TlsMode::Implicit
                },
            ]
        );
        assert!(dovecot_listeners("imap", "no", &services).is_empty());
        assert_eq!(
            dovecot_scoped_certs(
                "# 2.3.19.1\nssl_cert = </a.crt\nlocal 127.0.0.2 {\n  protocol imap {\n    ssl_cert = </c.crt\n    ssl_key = # hidden, use -P to show it\n  }\n}\n\
                 local_name imap.example.test {\n  ssl_alt_cert = </b.crt\n}\nservice imap-login {\n  inet_listener imaps {\n    port = 993\n  }\n}\n"
            )
            .unwrap(),
            ["local 127.0.0.2 / protocol imap", "local_name imap.example.test"]
        );
        assert!(parse_dovecot_services("service x {\n").is_err());
        assert!(parse_dovecot_services("}\n").is_err());
    }
}
