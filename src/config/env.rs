//! Configuration from the environment alone, for a container sidecar.
//!
//! Honours the variables users of the mail containers already set
//! (docker-mailserver's `SSL_TYPE`, `SSL_DOMAIN`, `ACME_FILE`,
//! `ACME_POSTHOOK`...) with their meanings, plus `MXKEYS_*` variables for
//! what those containers never had to say (where to write). The result is
//! TOML text, parsed by the same code as a configuration file, so the
//! environment and the equivalent TOML cannot mean different things.
//! `mxkeys config` prints it.

use std::path::Path;

use toml::{Table, Value};

/// Every variable this module reads, for `mxkeys config` and the docs.
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "ACME_FILE",
        "Traefik acme.json to read (default: /acme/acme.json when it exists)",
    ),
    (
        "ACME_POSTHOOK",
        "shell command run after new files are installed (default `postfix reload` when `postfix` is on PATH, else none; empty: none)",
    ),
    (
        "SSL_TYPE",
        "letsencrypt | manual | self-signed (what else to read besides ACME_FILE)",
    ),
    (
        "SSL_CERT_PATH",
        "SSL_TYPE=manual: certificate (leaf first) to install",
    ),
    ("SSL_KEY_PATH", "SSL_TYPE=manual: its private key"),
    (
        "SSL_ALT_CERT_PATH",
        "SSL_TYPE=manual: a second certificate of the other key type",
    ),
    ("SSL_ALT_KEY_PATH", "SSL_TYPE=manual: its private key"),
    (
        "SSL_DOMAIN",
        "the name to select a certificate for (overrides HOSTNAME)",
    ),
    ("HOSTNAME", "the mail server's name"),
    (
        "MXKEYS_DOMAINS",
        "comma-separated names the certificate must cover (overrides SSL_DOMAIN)",
    ),
    (
        "MXKEYS_OUTPUT_DIR",
        "where to write fullchain.pem, privkey.pem, combined.pem (default /tls); the alternative key type goes to its alt/ subdirectory",
    ),
    (
        "MXKEYS_KEY_TYPE",
        "ecdsa | rsa | any: key type of the main certificate (default any; with SSL_ALT_* ecdsa, and alt/ gets rsa)",
    ),
    (
        "MXKEYS_KEY_MODE",
        "mode of the files holding the key (default 0600)",
    ),
    ("MXKEYS_OWNER", "owner of the written files"),
    ("MXKEYS_GROUP", "group of the written files"),
    (
        "MXKEYS_RELOAD_PIDFILE",
        "also signal the process in this pid file after a change (shared PID namespace)",
    ),
    (
        "MXKEYS_RELOAD_SIGNAL",
        "the signal for MXKEYS_RELOAD_PIDFILE (default HUP)",
    ),
    (
        "MXKEYS_STATE_DIR",
        "state directory (default /var/lib/mxkeys)",
    ),
    ("MXKEYS_WATCH", "auto | inotify | poll"),
    ("MXKEYS_POLL_INTERVAL", "polling interval, e.g. 2s"),
    ("MXKEYS_RESYNC_INTERVAL", "full reconcile interval, e.g. 1h"),
    (
        "MXKEYS_EXPIRY_WARNING",
        "warn when less than this is left, e.g. 14d",
    ),
    (
        "MXKEYS_METRICS_LISTEN",
        "serve /metrics and /healthz here, e.g. 0.0.0.0:9325",
    ),
];

/// Default acme.json location of the mail containers' Traefik setups.
const DEFAULT_ACME_FILE: &str = "/acme/acme.json";

/// Why the environment does not make a configuration. Displayed as the
/// message of the configuration error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("SSL_TYPE=manual needs {0}")]
    ManualNeeds(&'static str),
    #[error("SSL_ALT_CERT_PATH and SSL_ALT_KEY_PATH go together")]
    AltHalf,
    #[error("SSL_TYPE={0:?} is not one mxkeys reads (letsencrypt, manual, self-signed)")]
    UnknownSslType(String),
    #[error("no source: set ACME_FILE, mount {DEFAULT_ACME_FILE}, or set SSL_TYPE")]
    NoSource,
    #[error("{0}")]
    Toml(String),
}

/// Builds configuration TOML from the environment `get`, or `None` when
/// nothing in it asks for mxkeys (no relevant variable, no
/// /acme/acme.json). `exists` tells whether a path exists (tests replace it).
pub fn toml_from(
    raw_get: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<Option<String>, EnvError> {
    let get = |k: &str| raw_get(k).filter(|v| !v.trim().is_empty());
    let configured = VARIABLES
        .iter()
        .any(|(k, _)| *k != "HOSTNAME" && get(k).is_some())
        || exists(Path::new(DEFAULT_ACME_FILE));
    if !configured {
        return Ok(None);
    }
    let mut root = Table::new();
    let s = |v: &str| Value::String(v.to_owned());
    if let Some(h) = get("HOSTNAME") {
        root.insert("hostname".into(), s(&h));
    }
    for (var, key) in [
        ("MXKEYS_STATE_DIR", "state_dir"),
        ("MXKEYS_WATCH", "watch"),
        ("MXKEYS_POLL_INTERVAL", "poll_interval"),
        ("MXKEYS_RESYNC_INTERVAL", "resync_interval"),
        ("MXKEYS_EXPIRY_WARNING", "expiry_warning"),
    ] {
        if let Some(v) = get(var) {
            root.insert(key.into(), s(&v));
        }
    }
    if let Some(listen) = get("MXKEYS_METRICS_LISTEN") {
        let mut m = Table::new();
        m.insert("listen".into(), s(&listen));
        root.insert("metrics".into(), Value::Table(m));
    }

    // Sources.
    let mut sources = Vec::new();
    let source = |pairs: &[(&str, &str)]| {
        Value::Table(pairs.iter().map(|(k, v)| ((*k).to_owned(), s(v))).collect())
    };
    let ssl_type = get("SSL_TYPE").map(|t| t.to_ascii_lowercase());
    match get("ACME_FILE") {
        Some(f) => sources.push(source(&[("type", "traefik"), ("path", &f)])),
        None if exists(Path::new(DEFAULT_ACME_FILE)) => {
            sources.push(source(&[("type", "traefik"), ("path", DEFAULT_ACME_FILE)]))
        }
        None => {}
    }
    let mut alt = false;
    match ssl_type.as_deref() {
        None | Some("") => {}
        Some("letsencrypt") => {
            let acme = "/etc/letsencrypt/acme.json";
            if get("ACME_FILE").is_none() && exists(Path::new(acme)) {
                sources.push(source(&[("type", "traefik"), ("path", acme)]));
            }
            sources.push(source(&[
                ("type", "certbot"),
                ("path", "/etc/letsencrypt/live"),
            ]));
        }
        Some("manual") => {
            let need = |k: &'static str| get(k).ok_or(EnvError::ManualNeeds(k));
            sources.push(source(&[
                ("type", "files"),
                ("name", "manual"),
                ("cert", &need("SSL_CERT_PATH")?),
                ("key", &need("SSL_KEY_PATH")?),
            ]));
            match (get("SSL_ALT_CERT_PATH"), get("SSL_ALT_KEY_PATH")) {
                (Some(c), Some(k)) => {
                    alt = true;
                    sources.push(source(&[
                        ("type", "files"),
                        ("name", "manual-alt"),
                        ("cert", &c),
                        ("key", &k),
                    ]));
                }
                (None, None) => {}
                _ => return Err(EnvError::AltHalf),
            }
        }
        Some("self-signed") => sources.push(source(&[("type", "self-signed")])),
        Some(other) => {
            return Err(EnvError::UnknownSslType(other.to_owned()));
        }
    }
    if sources.is_empty() {
        return Err(EnvError::NoSource);
    }
    root.insert("source".into(), Value::Array(sources));

    // Targets.
    let domains: Option<Vec<Value>> = get("MXKEYS_DOMAINS")
        .map(|d| {
            d.split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(s)
                .collect()
        })
        .or_else(|| get("SSL_DOMAIN").map(|d| vec![s(d.trim())]));
    let out = get("MXKEYS_OUTPUT_DIR").unwrap_or_else(|| "/tls".to_owned());
    let main_type =
        get("MXKEYS_KEY_TYPE").unwrap_or_else(|| if alt { "ecdsa" } else { "any" }.to_owned());
    let mut reload = Vec::new();
    match raw_get("ACME_POSTHOOK") {
        // Unset: the mail containers' default, where there is a Postfix to
        // reload (a sidecar has none: it signals through
        // MXKEYS_RELOAD_PIDFILE). Set but empty: no command.
        None if on_path("postfix", raw_get, exists) => reload.push("postfix reload".to_owned()),
        None => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::info!(
                    "ACME_POSTHOOK is not set and no `postfix` is on PATH: no reload command runs after an install (MXKEYS_RELOAD_PIDFILE signals a neighbour process)"
                );
            });
        }
        Some(hook) if hook.trim().is_empty() => {}
        Some(hook) => reload.push(hook),
    }
    let target = |name: &str, dir: &str, key_type: &str| -> Table {
        let mut t = Table::new();
        t.insert("name".into(), s(name));
        if let Some(d) = &domains {
            t.insert("domains".into(), Value::Array(d.clone()));
        }
        t.insert("key_type".into(), s(key_type));
        t.insert("fullchain".into(), s(&format!("{dir}/fullchain.pem")));
        t.insert("key".into(), s(&format!("{dir}/privkey.pem")));
        t.insert("combined".into(), s(&format!("{dir}/combined.pem")));
        for (var, key) in [
            ("MXKEYS_KEY_MODE", "mode"),
            ("MXKEYS_OWNER", "owner"),
            ("MXKEYS_GROUP", "group"),
        ] {
            if let Some(v) = get(var) {
                t.insert(key.into(), s(&v));
            }
        }
        if let Some(hook) = reload.first() {
            t.insert(
                "reload".into(),
                Value::Array(vec![s("sh"), s("-c"), s(hook)]),
            );
        }
        if let Some(pidfile) = get("MXKEYS_RELOAD_PIDFILE") {
            let mut sig = Table::new();
            sig.insert("pidfile".into(), s(&pidfile));
            sig.insert(
                "signal".into(),
                s(&get("MXKEYS_RELOAD_SIGNAL").unwrap_or_else(|| "HUP".to_owned())),
            );
            t.insert("reload_signal".into(), Value::Table(sig));
        }
        t
    };
    let mut targets = vec![Value::Table(target("mail", &out, &main_type))];
    if alt {
        let alt_type = if main_type == "rsa" { "ecdsa" } else { "rsa" };
        targets.push(Value::Table(target(
            "mail-alt",
            &format!("{out}/alt"),
            alt_type,
        )));
    }
    root.insert("target".into(), Value::Array(targets));
    toml::to_string(&root)
        .map(Some)
        .map_err(|e| EnvError::Toml(e.to_string()))
}

/// The search path `sh` uses when PATH is not set (dash's and busybox's).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Whether `program` is in a directory of PATH (as `sh -c` would find it).
fn on_path(
    program: &str,
    raw_get: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
) -> bool {
    let path = raw_get("PATH").unwrap_or_else(|| DEFAULT_PATH.to_owned());
    path.split(':')
        .filter(|dir| !dir.is_empty())
        .any(|dir| exists(&Path::new(dir).join(program)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn build(vars: &[(&str, &str)], acme_exists: bool) -> Result<Option<String>, EnvError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // A `postfix` exists only in /fake-sbin.
        toml_from(&|k| map.get(k).cloned(), &|p| {
            (acme_exists && p == Path::new(DEFAULT_ACME_FILE)) || p.starts_with("/fake-sbin")
        })
    }

    fn parse(text: &str) -> super::super::Config {
        super::super::Config::parse(
            Path::new("(environment)"),
            text,
            &super::super::tests::host(),
        )
        .unwrap()
    }

    #[test]
    fn nothing_set_means_no_environment_configuration() {
        assert_eq!(build(&[("HOSTNAME", "mail.example.com")], false), Ok(None));
    }

    #[test]
    fn mounted_acme_json_is_enough() {
        let c = parse(
            &build(&[("SSL_DOMAIN", "mail.example.com")], true)
                .unwrap()
                .unwrap(),
        );
        assert_eq!(c.sources[0].label, "traefik:/acme/acme.json");
        let t = &c.targets[0];
        assert_eq!(t.domains[0].as_str(), "mail.example.com");
        assert_eq!(
            t.slots[0].files.combined.as_deref(),
            Some(Path::new("/tls/combined.pem"))
        );
    }

    #[test]
    fn manual_with_alt_makes_two_targets_and_signal_reload() {
        let text = build(
            &[
                ("SSL_TYPE", "manual"),
                ("SSL_CERT_PATH", "/in/ecdsa.pem"),
                ("SSL_KEY_PATH", "/in/ecdsa.key"),
                ("SSL_ALT_CERT_PATH", "/in/rsa.pem"),
                ("SSL_ALT_KEY_PATH", "/in/rsa.key"),
                ("HOSTNAME", "mx.example.org"),
                ("ACME_POSTHOOK", "echo 'reloaded \"now\"'"),
                ("MXKEYS_OUTPUT_DIR", "/shared"),
                ("MXKEYS_RELOAD_PIDFILE", "/run/postfix.pid"),
            ],
            false,
        )
        .unwrap()
        .unwrap();
        let c = parse(&text);
        assert_eq!(c.sources.len(), 2);
        assert_eq!(c.targets.len(), 2);
        assert_eq!(
            c.targets[0].slots[0].key_type,
            super::super::KeyTypeFilter::Ecdsa
        );
        assert_eq!(
            c.targets[1].slots[0].key_type,
            super::super::KeyTypeFilter::Rsa
        );
        assert_eq!(
            c.targets[1].slots[0].files.key.as_deref(),
            Some(Path::new("/shared/alt/privkey.pem"))
        );
        assert_eq!(c.targets[0].domains[0].as_str(), "mx.example.org");
        assert_eq!(
            c.targets[0].reloads[0],
            super::super::Reload::Command(vec![
                "sh".into(),
                "-c".into(),
                "echo 'reloaded \"now\"'".into()
            ])
        );
        assert!(matches!(
            c.targets[0].reloads[1],
            super::super::Reload::Signal { .. }
        ));
    }

    #[test]
    fn empty_posthook_disables_the_default_reload() {
        let with_default = parse(
            &build(
                &[("SSL_TYPE", "self-signed"), ("PATH", "/usr/bin:/fake-sbin")],
                false,
            )
            .unwrap()
            .unwrap(),
        );
        assert_eq!(
            with_default.targets[0].reloads,
            vec![super::super::Reload::Command(vec![
                "sh".into(),
                "-c".into(),
                "postfix reload".into()
            ])]
        );
        let disabled = parse(
            &build(&[("SSL_TYPE", "self-signed"), ("ACME_POSTHOOK", "")], false)
                .unwrap()
                .unwrap(),
        );
        assert!(disabled.targets[0].reloads.is_empty());
    }

    #[test]
    fn unset_posthook_without_postfix_on_path_runs_no_command() {
        for path in [Some("/usr/bin:/bin"), None] {
            let mut vars = vec![("SSL_TYPE", "self-signed")];
            vars.extend(path.map(|p| ("PATH", p)));
            let c = parse(&build(&vars, false).unwrap().unwrap());
            assert!(c.targets[0].reloads.is_empty(), "PATH {path:?}");
        }
        // The neighbour is still signalled.
        let c = parse(
            &build(
                &[
                    ("SSL_TYPE", "self-signed"),
                    ("PATH", "/usr/bin"),
                    ("MXKEYS_RELOAD_PIDFILE", "/run/postfix/master.pid"),
                ],
                false,
            )
            .unwrap()
            .unwrap(),
        );
        assert!(matches!(
            c.targets[0].reloads[..],
            [super::super::Reload::Signal { .. }]
        ));
    }

    #[test]
    fn readme_documents_every_variable() {
        let readme = include_str!("../../README.md");
        for (var, _) in VARIABLES {
            assert!(
                readme.contains(&format!("`{var}`")),
                "README does not document {var}"
            );
        }
    }

    #[test]
    fn bad_combinations_are_explained() {
        let e = build(&[("SSL_TYPE", "manual")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("SSL_CERT_PATH"), "{e}");
        let e = build(&[("SSL_TYPE", "snakeoil")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("snakeoil"), "{e}");
    }
}
