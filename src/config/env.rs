//! Configuration from the environment alone, for a container sidecar.
//!
//! Honours the variables users of the mail containers already set
//! (docker-mailserver's `SSL_TYPE`, `SSL_DOMAIN`, `ACME_FILE`,
//! `ACME_POSTHOOK`...) with their meanings, plus `MXKEYS_*` variables for
//! what those containers never had to say (where to write). The result is
//! TOML text, parsed by the same code as a configuration file, so the
//! environment and the equivalent TOML cannot mean different things.
//! `mxkeys config` prints it.
//!
//! DKIM speaks the seed containers' variables (mlan/docker-postfix,
//! mikenye/postfix, boky/postfix, docker-mailserver): a key their signer
//! signs with already becomes a `[[dkim.adopt]]` entry (a key in a
//! variable by the variable's name only), a domain without one gets a key
//! mxkeys makes; variables of two containers, or two that exclude each
//! other, are an error naming both. MXKEYS_DNS_* make `[dns.env]`; without
//! it records are printed and adopted keys are not looked up. The long
//! tail's variables are derived from its spec table
//! (`mxkeys_providers::longtail::SPECS`), never listed here.
//!
//! Pure: the environment and whether a path exists come in as functions.

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
    // DKIM: the seed containers' own variables (see `dkim_seed`).
    (
        "MAIL_DOMAIN",
        "mlan/docker-postfix: the domains (space-separated) to sign for; its key signs the first",
    ),
    (
        "DKIM_SELECTOR",
        "mlan: the key's selector (default `default`); boky/postfix: `SEL` or `SEL,DOMAIN=SEL,...` (default `mail`)",
    ),
    (
        "DKIM_KEYBITS",
        "mlan: size of RSA keys made (2048, the default, or 3072)",
    ),
    (
        "DKIM_PRIVATEKEY",
        "mlan: the PEM key its signer signs with (BEGIN/END lines optional); adopted by name, never printed",
    ),
    (
        "OPENDKIM_DOMAIN",
        "mikenye/postfix: the domains (comma-separated) OpenDKIM signs for",
    ),
    (
        "OPENDKIM_SELECTOR",
        "mikenye/postfix: the selector of OPENDKIM_KEYFILE",
    ),
    (
        "OPENDKIM_KEYFILE",
        "mikenye/postfix: the one key OpenDKIM signs with",
    ),
    (
        "OPENDKIM_KEYTABLE",
        "mikenye/postfix: OpenDKIM's KeyTable (instead of OPENDKIM_KEYFILE)",
    ),
    (
        "OPENDKIM_SIGNINGTABLE",
        "mikenye/postfix: OpenDKIM's SigningTable (goes with OPENDKIM_KEYTABLE)",
    ),
    (
        "ALLOWED_SENDER_DOMAINS",
        "boky/postfix: the domains (space- or comma-separated); keys in /etc/opendkim/keys/DOMAIN.private",
    ),
    (
        "DKIM_AUTOGENERATE",
        "boky/postfix: make the keys that do not exist (true/false)",
    ),
    (
        "ENABLE_OPENDKIM",
        "docker-mailserver: 1 when OpenDKIM signs (keys in the config directory's opendkim/); with MXKEYS_DKIM_DOMAINS",
    ),
    (
        "ENABLE_RSPAMD",
        "docker-mailserver: 1 when Rspamd signs (keys in the config directory's rspamd/dkim/); with MXKEYS_DKIM_DOMAINS",
    ),
    (
        "MXKEYS_DMS_CONFIG",
        "docker-mailserver's config directory as mounted here (default /tmp/docker-mailserver)",
    ),
    (
        "MXKEYS_DKIM_DOMAINS",
        "comma-separated domains to sign for (overrides the seed's; needed for docker-mailserver)",
    ),
    (
        "MXKEYS_DKIM_SELECTOR",
        "selector template of the keys mxkeys makes (default: the seed's selector)",
    ),
    (
        "MXKEYS_DKIM_KEY_DIR",
        "[dkim] key_dir (default state_dir/dkim)",
    ),
    (
        "MXKEYS_DKIM_SIGNER_DIR",
        "[dkim] signer_dir: where the signer's files are written (default: the seed's; mlan's record_dir moves with it)",
    ),
    (
        "MXKEYS_DKIM_RELOAD_PIDFILE",
        "signal the signer in this pid file after its files change (shared PID namespace)",
    ),
    (
        "MXKEYS_DKIM_RELOAD_SIGNAL",
        "the signal for MXKEYS_DKIM_RELOAD_PIDFILE (default USR1 for OpenDKIM, else HUP)",
    ),
    // DNS: one provider, `[dns.env]`.
    (
        "MXKEYS_DNS_TYPE",
        "rfc2136 | cloudflare | exec | manual | a type of the long tail (route53, hetzner, ovh...: README's DNS providers): the provider [dns.env] that publishes DKIM records (unset: records are printed, adopted keys are not looked up)",
    ),
    (
        "MXKEYS_DNS_<KEY>_FILE",
        "a long-tail type: file holding its credential KEY (e.g. MXKEYS_DNS_SECRET_ACCESS_KEY_FILE for route53's secret_access_key)",
    ),
    (
        "MXKEYS_DNS_<KEY>_ENV",
        "a long-tail type: name of the variable holding its credential KEY (one of _FILE and _ENV)",
    ),
    (
        "MXKEYS_DNS_<SETTING>",
        "a long-tail type: its plain setting (e.g. MXKEYS_DNS_ENDPOINT, MXKEYS_DNS_REGION)",
    ),
    (
        "MXKEYS_DNS_SERVER",
        "rfc2136: the primary server, IP[:port]",
    ),
    ("MXKEYS_DNS_ZONE", "the zone to write in"),
    (
        "MXKEYS_DNS_DELEGATE_TO",
        "delegation by CNAME: write each record at NAME.ZONE, for the user's CNAME NAME -> NAME.ZONE",
    ),
    ("MXKEYS_DNS_TSIG_NAME", "rfc2136: the TSIG key's name"),
    (
        "MXKEYS_DNS_TSIG_ALGORITHM",
        "rfc2136: hmac-sha256 (default), hmac-sha384, hmac-sha512",
    ),
    (
        "MXKEYS_DNS_TSIG_SECRET_FILE",
        "rfc2136: file holding the TSIG secret",
    ),
    (
        "MXKEYS_DNS_TSIG_SECRET_ENV",
        "rfc2136: name of the variable holding the TSIG secret",
    ),
    (
        "MXKEYS_DNS_API_TOKEN_FILE",
        "cloudflare (and long-tail types with an api_token): file holding the API token",
    ),
    (
        "MXKEYS_DNS_API_TOKEN_ENV",
        "cloudflare (and long-tail types with an api_token): name of the variable holding the API token",
    ),
    ("MXKEYS_DNS_API_URL", "cloudflare: the API's URL"),
    (
        "MXKEYS_DNS_COMMAND",
        "exec: the program, run by `sh -c` with its arguments appended",
    ),
    (
        "MXKEYS_DNS_NAMESERVERS",
        "comma-separated authoritative servers of the zone",
    ),
    ("MXKEYS_DNS_RESOLVER", "the recursive resolver, IP[:port]"),
    (
        "MXKEYS_DNS_PROPAGATION_INTERVAL",
        "how often propagation is checked, e.g. 2s",
    ),
    (
        "MXKEYS_DNS_PROPAGATION_TIMEOUT",
        "how long propagation is waited for, e.g. 60s",
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
    #[error("{0} and {1} conflict: {2}")]
    Conflict(&'static str, &'static str, &'static str),
    #[error("{0} needs {1}")]
    Needs(&'static str, &'static str),
    /// A variable's value is refused; `shown` is the value when it is no
    /// secret (DKIM_PRIVATEKEY's never is).
    #[error("{var}{}: {why}", shown.as_deref().map(|v| format!("={v:?}")).unwrap_or_default())]
    Bad {
        var: &'static str,
        shown: Option<String>,
        why: String,
    },
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
    // The certificate side is asked for by its own variables (and the
    // daemon's), or a mounted acme.json; DKIM and DNS by theirs.
    let tls_asked = VARIABLES
        .iter()
        .any(|(k, _)| !is_general(k) && !is_dkim_or_dns(k) && get(k).is_some())
        || exists(Path::new(DEFAULT_ACME_FILE));
    let general = VARIABLES
        .iter()
        .any(|(k, _)| *k != "HOSTNAME" && is_general(k) && get(k).is_some());
    let dns = dns_env(&get)?;
    let dkim = dkim_table(&get, exists, dns.is_some())?;
    let dkim_or_dns = dkim.is_some() || dns.is_some();
    if !tls_asked && !general && !dkim_or_dns {
        return Ok(None);
    }
    // Without DKIM or DNS, the daemon's variables alone still ask for the
    // certificate side (and its missing source is the error).
    let tls_asked = tls_asked || !dkim_or_dns;
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

    if let Some(dns) = dns {
        let mut t = Table::new();
        t.insert("env".into(), Value::Table(dns));
        root.insert("dns".into(), Value::Table(t));
    }
    if let Some(dkim) = dkim {
        root.insert("dkim".into(), Value::Table(dkim));
    }
    if !tls_asked {
        // DKIM (or DNS) alone: no certificate source, no target.
        return toml::to_string(&root)
            .map(Some)
            .map_err(|e| EnvError::Toml(e.to_string()));
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

/// The seeds' DKIM variables (not the certificate side's).
const DKIM_SEED_VARIABLES: &[&str] = &[
    "MAIL_DOMAIN",
    "DKIM_SELECTOR",
    "DKIM_KEYBITS",
    "DKIM_PRIVATEKEY",
    "OPENDKIM_DOMAIN",
    "OPENDKIM_SELECTOR",
    "OPENDKIM_KEYFILE",
    "OPENDKIM_KEYTABLE",
    "OPENDKIM_SIGNINGTABLE",
    "ALLOWED_SENDER_DOMAINS",
    "DKIM_AUTOGENERATE",
    "ENABLE_OPENDKIM",
    "ENABLE_RSPAMD",
];

/// The variables of the daemon as a whole, not of one side.
fn is_general(var: &str) -> bool {
    [
        "HOSTNAME",
        "MXKEYS_STATE_DIR",
        "MXKEYS_WATCH",
        "MXKEYS_POLL_INTERVAL",
        "MXKEYS_RESYNC_INTERVAL",
        "MXKEYS_EXPIRY_WARNING",
        "MXKEYS_METRICS_LISTEN",
    ]
    .contains(&var)
}

fn is_dkim_or_dns(var: &str) -> bool {
    DKIM_SEED_VARIABLES.contains(&var)
        || var.starts_with("MXKEYS_DKIM_")
        || var.starts_with("MXKEYS_DNS_")
        || var == "MXKEYS_DMS_CONFIG"
}

/// mlan/docker-postfix's key directory (amavis signs with
/// `DOMAIN.SELECTOR.privkey.pem` there).
const MLAN_DKIM_DIR: &str = "/var/db/dkim";
/// boky/postfix's key directory (`DOMAIN.private`).
const BOKY_KEY_DIR: &str = "/etc/opendkim/keys";
/// Where docker-mailserver reads its config directory.
const DMS_CONFIG: &str = "/tmp/docker-mailserver";

type Get<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// A yes/no variable, as the seeds' shell scripts read them.
fn flag(get: &Get, var: &'static str) -> Result<bool, EnvError> {
    match get(var).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("0" | "false" | "no" | "off") => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some(other) => Err(EnvError::Bad {
            var,
            shown: Some(other.to_owned()),
            why: "not a yes/no value (1, true, yes, on; 0, false, no, off)".into(),
        }),
    }
}

/// A list separated by commas and/or white space.
fn list(v: &str) -> Vec<String> {
    v.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Which seed container's DKIM variables are set, named by the first of
/// them (for a conflict's message).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seed {
    Mlan,
    Mikenye,
    Boky,
    Dms,
}

/// What the seed's variables say, before it becomes the `[dkim]` table.
struct DkimPlan {
    domains: Vec<String>,
    /// Where the seed's users read the record to publish.
    record_dir: Option<&'static str>,
    algorithm: Option<&'static str>,
    selector: Option<String>,
    signer: &'static str,
    signer_dir: String,
    adopt: Vec<Table>,
}

fn adopt_entry(pairs: &[(&str, &str)]) -> Table {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect()
}

/// The `[dkim]` table the seeds' variables mean, or `None` when none asks
/// for DKIM. A key the seed's signer signs with already is adopted
/// (`[[dkim.adopt]]`); a domain without one gets a key mxkeys makes.
/// Without a DNS provider (`has_dns` false) records are printed
/// (`dns = "manual"`) and adopted keys are not looked up
/// (`check = "none"`): the signer signs with them already.
fn dkim_table(
    get: &Get,
    exists: &dyn Fn(&Path) -> bool,
    has_dns: bool,
) -> Result<Option<Table>, EnvError> {
    // A key given and also one to be made.
    if get("DKIM_PRIVATEKEY").is_some() && flag(get, "DKIM_AUTOGENERATE")? {
        return Err(EnvError::Conflict(
            "DKIM_PRIVATEKEY",
            "DKIM_AUTOGENERATE",
            "a key is given and another is to be made; unset one",
        ));
    }
    if get("OPENDKIM_KEYFILE").is_some() && get("OPENDKIM_KEYTABLE").is_some() {
        return Err(EnvError::Conflict(
            "OPENDKIM_KEYFILE",
            "OPENDKIM_KEYTABLE",
            "OpenDKIM reads one key file or a key table, not both",
        ));
    }
    // docker-mailserver's own variables name no domains: its DKIM is
    // taken over once MXKEYS_DKIM_DOMAINS names them, so a sidecar
    // sharing its mailserver.env keeps working as before.
    let dms_flags = flag(get, "ENABLE_OPENDKIM")? || flag(get, "ENABLE_RSPAMD")?;
    let dms_asked = dms_flags && get("MXKEYS_DKIM_DOMAINS").is_some();
    if dms_asked && flag(get, "ENABLE_OPENDKIM")? && flag(get, "ENABLE_RSPAMD")? {
        return Err(EnvError::Conflict(
            "ENABLE_OPENDKIM",
            "ENABLE_RSPAMD",
            "docker-mailserver signs with one of them; set ENABLE_OPENDKIM=0 with Rspamd",
        ));
    }
    let first = |vars: &[&'static str]| vars.iter().copied().find(|v| get(v).is_some());
    let mlan = first(&["DKIM_PRIVATEKEY", "DKIM_KEYBITS", "MAIL_DOMAIN"]);
    let mikenye = first(&[
        "OPENDKIM_KEYFILE",
        "OPENDKIM_KEYTABLE",
        "OPENDKIM_SIGNINGTABLE",
        "OPENDKIM_DOMAIN",
        "OPENDKIM_SELECTOR",
    ]);
    let boky = first(&["DKIM_AUTOGENERATE", "ALLOWED_SENDER_DOMAINS"]);
    let dms = [
        ("ENABLE_RSPAMD", flag(get, "ENABLE_RSPAMD")?),
        ("ENABLE_OPENDKIM", flag(get, "ENABLE_OPENDKIM")?),
    ]
    .into_iter()
    .find_map(|(v, on)| (on && dms_asked).then_some(v));
    let seeds: Vec<(Seed, &'static str)> = [
        (Seed::Mlan, mlan),
        (Seed::Mikenye, mikenye),
        (Seed::Boky, boky),
        (Seed::Dms, dms),
    ]
    .into_iter()
    .filter_map(|(s, v)| Some((s, v?)))
    .collect();
    // MAIL_DOMAIN alone (or ALLOWED_SENDER_DOMAINS alone) names domains
    // but asks for no DKIM unless a key of the seed is there; see below.
    let seed = match seeds[..] {
        [] if dms_flags => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::info!(
                    "docker-mailserver's ENABLE_OPENDKIM or ENABLE_RSPAMD is set: set MXKEYS_DKIM_DOMAINS for mxkeys to take over its DKIM keys"
                );
            });
            return Ok(None);
        }
        [] => {
            for var in [
                "DKIM_SELECTOR",
                "MXKEYS_DKIM_DOMAINS",
                "MXKEYS_DKIM_SELECTOR",
            ] {
                if get(var).is_some() {
                    return Err(EnvError::Needs(
                        var,
                        "the DKIM variables of a mail container (MAIL_DOMAIN, ALLOWED_SENDER_DOMAINS, OPENDKIM_*, ENABLE_OPENDKIM or ENABLE_RSPAMD)",
                    ));
                }
            }
            return Ok(None);
        }
        [(seed, _)] => seed,
        [(_, a), (_, b), ..] => {
            return Err(EnvError::Conflict(
                a,
                b,
                "they are two mail containers' DKIM variables; set one container's",
            ));
        }
    };
    let plan = match seed {
        Seed::Mlan => mlan_plan(get, exists)?,
        Seed::Mikenye => mikenye_plan(get)?,
        Seed::Boky => boky_plan(get, exists)?,
        Seed::Dms => dms_plan(get, exists)?,
    };
    let Some(mut plan) = plan else {
        return Ok(None);
    };
    if let Some(d) = get("MXKEYS_DKIM_DOMAINS") {
        plan.domains = list(&d);
    }
    if let Some(s) = get("MXKEYS_DKIM_SELECTOR") {
        plan.selector = Some(s);
    }
    let s = |v: &str| Value::String(v.to_owned());
    let mut t = Table::new();
    t.insert(
        "domains".into(),
        Value::Array(plan.domains.iter().map(|d| s(d)).collect()),
    );
    if let Some(a) = plan.algorithm {
        t.insert("algorithms".into(), Value::Array(vec![s(a)]));
    }
    if let Some(sel) = &plan.selector {
        t.insert("selector".into(), s(sel));
    }
    if let Some(dir) = get("MXKEYS_DKIM_KEY_DIR") {
        t.insert("key_dir".into(), s(&dir));
    }
    let signer_dir = get("MXKEYS_DKIM_SIGNER_DIR");
    if let Some(dir) = plan.record_dir {
        // mlan keeps records and signer files in its one DKIM volume:
        // mounted elsewhere, both move.
        let moved = signer_dir.as_deref().filter(|_| dir == plan.signer_dir);
        t.insert("record_dir".into(), s(moved.unwrap_or(dir)));
    }
    t.insert("dns".into(), s(if has_dns { "env" } else { "manual" }));
    t.insert("signer".into(), s(plan.signer));
    t.insert(
        "signer_dir".into(),
        s(&signer_dir.unwrap_or(plan.signer_dir)),
    );
    match (
        get("MXKEYS_DKIM_RELOAD_PIDFILE"),
        get("MXKEYS_DKIM_RELOAD_SIGNAL"),
    ) {
        (Some(pidfile), signal) => {
            let default = if plan.signer == "opendkim" {
                "USR1"
            } else {
                "HUP"
            };
            let mut sig = Table::new();
            sig.insert("pidfile".into(), s(&pidfile));
            sig.insert("signal".into(), s(&signal.unwrap_or(default.to_owned())));
            t.insert("reload_signal".into(), Value::Table(sig));
        }
        (None, Some(_)) => {
            return Err(EnvError::Needs(
                "MXKEYS_DKIM_RELOAD_SIGNAL",
                "MXKEYS_DKIM_RELOAD_PIDFILE",
            ));
        }
        (None, None) => {}
    }
    if !plan.adopt.is_empty() {
        let adopt = plan
            .adopt
            .into_iter()
            .map(|mut a| {
                if !has_dns {
                    a.insert("check".into(), s("none"));
                }
                Value::Table(a)
            })
            .collect();
        t.insert("adopt".into(), Value::Array(adopt));
    }
    Ok(Some(t))
}

/// mlan/docker-postfix (and postfix-amavis): amavis signs for the first
/// of MAIL_DOMAIN with `/var/db/dkim/DOMAIN.SELECTOR.privkey.pem`, which
/// DKIM_PRIVATEKEY fills, else `amavisd genrsa` made; its users read the
/// record to publish from `/var/db/dkim/DOMAIN.SELECTOR._domainkey.txt`,
/// which `record_dir` keeps writing.
fn mlan_plan(get: &Get, exists: &dyn Fn(&Path) -> bool) -> Result<Option<DkimPlan>, EnvError> {
    let Some(domains) = get("MAIL_DOMAIN").map(|d| list(&d)) else {
        let var = if get("DKIM_PRIVATEKEY").is_some() {
            "DKIM_PRIVATEKEY"
        } else {
            "DKIM_KEYBITS"
        };
        return Err(EnvError::Needs(
            var,
            "MAIL_DOMAIN (the domain it signs for)",
        ));
    };
    let main = domains[0].clone();
    let selector = get("DKIM_SELECTOR").unwrap_or_else(|| "default".to_owned());
    let algorithm = match get("DKIM_KEYBITS").as_deref().map(str::trim) {
        None => None,
        Some("2048") => Some("rsa-2048"),
        Some("3072") => Some("rsa-3072"),
        Some(other) => {
            return Err(EnvError::Bad {
                var: "DKIM_KEYBITS",
                shown: Some(other.to_owned()),
                why: "mxkeys makes RSA keys of 2048 or 3072 bits".into(),
            });
        }
    };
    let key_file = format!("{MLAN_DKIM_DIR}/{main}.{selector}.privkey.pem");
    let adopt = if get("DKIM_PRIVATEKEY").is_some() {
        vec![adopt_entry(&[
            ("from", "env"),
            ("var", "DKIM_PRIVATEKEY"),
            ("domain", &main),
            ("selector", &selector),
        ])]
    } else if exists(Path::new(&key_file)) {
        vec![adopt_entry(&[
            ("from", "key"),
            ("path", &key_file),
            ("domain", &main),
            ("selector", &selector),
        ])]
    } else if get("DKIM_SELECTOR").is_none() && get("DKIM_KEYBITS").is_none() {
        // MAIL_DOMAIN alone, and no key: nothing asks for DKIM.
        return Ok(None);
    } else {
        Vec::new()
    };
    Ok(Some(DkimPlan {
        domains,
        record_dir: Some(MLAN_DKIM_DIR),
        algorithm,
        selector: Some(selector),
        signer: "amavis",
        signer_dir: MLAN_DKIM_DIR.to_owned(),
        adopt,
    }))
}

/// mikenye/postfix: OpenDKIM with OPENDKIM_KEYFILE (for OPENDKIM_DOMAIN
/// and OPENDKIM_SELECTOR) or OPENDKIM_KEYTABLE and OPENDKIM_SIGNINGTABLE.
fn mikenye_plan(get: &Get) -> Result<Option<DkimPlan>, EnvError> {
    let domains = get("OPENDKIM_DOMAIN").map(|d| list(&d));
    let selector = get("OPENDKIM_SELECTOR");
    let mut signer_dir = "/etc/opendkim".to_owned();
    let adopt = match (get("OPENDKIM_KEYFILE"), get("OPENDKIM_KEYTABLE")) {
        (Some(file), _) => {
            let domain = domains
                .as_ref()
                .and_then(|d| d.first().cloned())
                .ok_or(EnvError::Needs("OPENDKIM_KEYFILE", "OPENDKIM_DOMAIN"))?;
            let selector = selector
                .clone()
                .ok_or(EnvError::Needs("OPENDKIM_KEYFILE", "OPENDKIM_SELECTOR"))?;
            vec![adopt_entry(&[
                ("from", "key"),
                ("path", &file),
                ("domain", &domain),
                ("selector", &selector),
            ])]
        }
        (None, Some(table)) => {
            if get("OPENDKIM_SIGNINGTABLE").is_none() {
                return Err(EnvError::Needs(
                    "OPENDKIM_KEYTABLE",
                    "OPENDKIM_SIGNINGTABLE",
                ));
            }
            if let Some(dir) = Path::new(&table)
                .parent()
                .and_then(Path::to_str)
                .filter(|d| !d.is_empty())
            {
                signer_dir = dir.to_owned();
            }
            vec![adopt_entry(&[("from", "opendkim"), ("path", &table)])]
        }
        (None, None) => {
            if get("OPENDKIM_SIGNINGTABLE").is_some() {
                return Err(EnvError::Needs(
                    "OPENDKIM_SIGNINGTABLE",
                    "OPENDKIM_KEYTABLE",
                ));
            }
            Vec::new()
        }
    };
    let domains = match domains {
        Some(d) => d,
        None if get("MXKEYS_DKIM_DOMAINS").is_some() => Vec::new(),
        None => {
            let var = if get("OPENDKIM_KEYTABLE").is_some() {
                "OPENDKIM_KEYTABLE"
            } else {
                "OPENDKIM_SELECTOR"
            };
            return Err(EnvError::Needs(
                var,
                "OPENDKIM_DOMAIN or MXKEYS_DKIM_DOMAINS",
            ));
        }
    };
    Ok(Some(DkimPlan {
        domains,
        record_dir: None,
        algorithm: None,
        selector,
        signer: "opendkim",
        signer_dir,
        adopt,
    }))
}

/// boky/postfix: OpenDKIM signs each of ALLOWED_SENDER_DOMAINS with
/// `/etc/opendkim/keys/DOMAIN.private`, made when missing with
/// DKIM_AUTOGENERATE; DKIM_SELECTOR is `SEL` or `SEL,DOMAIN=SEL,...`.
fn boky_plan(get: &Get, exists: &dyn Fn(&Path) -> bool) -> Result<Option<DkimPlan>, EnvError> {
    let autogenerate = flag(get, "DKIM_AUTOGENERATE")?;
    let Some(domains) = get("ALLOWED_SENDER_DOMAINS").map(|d| list(&d)) else {
        return Err(EnvError::Needs(
            "DKIM_AUTOGENERATE",
            "ALLOWED_SENDER_DOMAINS (the domains to sign for)",
        ));
    };
    let mut default = "mail".to_owned();
    let mut per_domain = Vec::new();
    for part in get("DKIM_SELECTOR")
        .as_deref()
        .map(list)
        .unwrap_or_default()
    {
        match part.split_once('=') {
            Some((d, sel)) => per_domain.push((d.to_ascii_lowercase(), sel.to_owned())),
            None => default = part,
        }
    }
    let selector_of = |domain: &str| {
        per_domain
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map_or(default.as_str(), |(_, s)| s.as_str())
    };
    let adopt: Vec<Table> = domains
        .iter()
        .filter_map(|d| {
            let file = format!("{BOKY_KEY_DIR}/{d}.private");
            exists(Path::new(&file)).then(|| {
                adopt_entry(&[
                    ("from", "key"),
                    ("path", &file),
                    ("domain", d),
                    ("selector", selector_of(d)),
                ])
            })
        })
        .collect();
    if adopt.is_empty() && !autogenerate && get("DKIM_SELECTOR").is_none() {
        // No key and none to make: boky's OpenDKIM does not run.
        return Ok(None);
    }
    Ok(Some(DkimPlan {
        domains,
        record_dir: None,
        algorithm: None,
        selector: Some(default.clone()),
        signer: "opendkim",
        signer_dir: "/etc/opendkim".to_owned(),
        adopt,
    }))
}

/// docker-mailserver: its config directory's `opendkim/` (ENABLE_OPENDKIM)
/// or `rspamd/` (ENABLE_RSPAMD) tree, as `setup config dkim` writes it.
fn dms_plan(get: &Get, exists: &dyn Fn(&Path) -> bool) -> Result<Option<DkimPlan>, EnvError> {
    let rspamd = flag(get, "ENABLE_RSPAMD")?;
    let var = if rspamd {
        "ENABLE_RSPAMD"
    } else {
        "ENABLE_OPENDKIM"
    };
    let domains = get("MXKEYS_DKIM_DOMAINS")
        .map(|d| list(&d))
        .ok_or(EnvError::Needs(var, "MXKEYS_DKIM_DOMAINS"))?;
    let config = get("MXKEYS_DMS_CONFIG").unwrap_or_else(|| DMS_CONFIG.to_owned());
    let config = config.trim_end_matches('/');
    let (signer, signer_dir, tree) = if rspamd {
        (
            "rspamd",
            format!("{config}/rspamd/override.d"),
            format!("{config}/rspamd/dkim"),
        )
    } else {
        (
            "opendkim",
            format!("{config}/opendkim"),
            format!("{config}/opendkim"),
        )
    };
    let adopt = if exists(Path::new(&tree)) {
        vec![adopt_entry(&[("from", "dms"), ("path", config)])]
    } else {
        Vec::new()
    };
    Ok(Some(DkimPlan {
        domains,
        record_dir: None,
        algorithm: None,
        selector: None,
        signer,
        signer_dir,
        adopt,
    }))
}

/// One MXKEYS_DNS_* variable and the key of `[dns.env]` it sets.
type DnsVar = (&'static str, &'static str);

/// The variables of one long-tail type, derived from its spec
/// (`mxkeys_providers::longtail::SPECS`): `MXKEYS_DNS_<KEY>_FILE` and
/// `_ENV` for each credential, in that order, then `MXKEYS_DNS_<SETTING>`.
struct LongTailVars {
    kind: &'static str,
    /// (variable, table key); the first `2 * secrets` are file/env pairs.
    vars: Vec<(String, String)>,
    secrets: usize,
}

impl LongTailVars {
    fn vars(&'static self) -> impl Iterator<Item = DnsVar> {
        self.vars.iter().map(|(v, k)| (v.as_str(), k.as_str()))
    }

    /// Each credential's `_FILE` and `_ENV` variables.
    fn pairs(&'static self) -> impl Iterator<Item = (&'static str, &'static str)> {
        self.vars[..2 * self.secrets]
            .chunks(2)
            .map(|p| (p[0].0.as_str(), p[1].0.as_str()))
    }
}

/// Every long-tail type's variables, made once from the spec table (so
/// names live as long as the program, like the fixed ones).
static LONG_TAIL_VARS: std::sync::LazyLock<Vec<LongTailVars>> = std::sync::LazyLock::new(|| {
    let var = |key: &str| format!("MXKEYS_DNS_{}", key.to_ascii_uppercase());
    mxkeys_providers::longtail::SPECS
        .iter()
        .map(|spec| {
            let mut vars = Vec::new();
            for key in spec.secrets {
                for end in ["file", "env"] {
                    let key = format!("{}_{end}", key.name);
                    vars.push((var(&key), key));
                }
            }
            for key in spec.settings {
                vars.push((var(key.name), key.name.to_owned()));
            }
            LongTailVars {
                kind: spec.kind,
                vars,
                secrets: spec.secrets.len(),
            }
        })
        .collect()
});

/// The valid MXKEYS_DNS_TYPE values, the long tail's from its table.
static DNS_TYPES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let long: Vec<&str> = mxkeys_providers::longtail::SPECS
        .iter()
        .map(|s| s.kind)
        .collect();
    format!(
        "rfc2136, cloudflare, exec, manual, or one of the long tail: {}",
        long.join(", ")
    )
});

/// Where MXKEYS_DNS_TYPE is missing: what to set it to.
static DNS_TYPE_NEEDED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("MXKEYS_DNS_TYPE ({})", *DNS_TYPES));

/// The `[dns.env]` table MXKEYS_DNS_* describe, or `None` when
/// MXKEYS_DNS_TYPE is not set (then no other MXKEYS_DNS_* may be).
/// Secrets are named (a file or a variable), never taken as values.
fn dns_env(get: &Get) -> Result<Option<Table>, EnvError> {
    const COMMON: &[DnsVar] = &[
        ("MXKEYS_DNS_ZONE", "zone"),
        ("MXKEYS_DNS_DELEGATE_TO", "delegate_to"),
        ("MXKEYS_DNS_RESOLVER", "resolver"),
        ("MXKEYS_DNS_PROPAGATION_INTERVAL", "propagation_interval"),
        ("MXKEYS_DNS_PROPAGATION_TIMEOUT", "propagation_timeout"),
    ];
    const RFC2136: &[DnsVar] = &[
        ("MXKEYS_DNS_SERVER", "server"),
        ("MXKEYS_DNS_TSIG_NAME", "tsig_name"),
        ("MXKEYS_DNS_TSIG_ALGORITHM", "tsig_algorithm"),
        ("MXKEYS_DNS_TSIG_SECRET_FILE", "tsig_secret_file"),
        ("MXKEYS_DNS_TSIG_SECRET_ENV", "tsig_secret_env"),
    ];
    const CLOUDFLARE: &[DnsVar] = &[
        ("MXKEYS_DNS_API_TOKEN_FILE", "api_token_file"),
        ("MXKEYS_DNS_API_TOKEN_ENV", "api_token_env"),
        ("MXKEYS_DNS_API_URL", "api_url"),
    ];
    const EXEC: &[DnsVar] = &[("MXKEYS_DNS_COMMAND", "command")];
    const NAMESERVERS: &str = "MXKEYS_DNS_NAMESERVERS";
    let long_tail: &'static [LongTailVars] = &LONG_TAIL_VARS;
    // Every type's own variables (names may repeat across types).
    let every = || {
        [COMMON, RFC2136, CLOUDFLARE, EXEC]
            .into_iter()
            .flatten()
            .copied()
            .chain(long_tail.iter().flat_map(LongTailVars::vars))
    };
    let Some(kind) = get("MXKEYS_DNS_TYPE").map(|t| t.trim().to_ascii_lowercase()) else {
        if let Some(var) = every()
            .map(|(v, _)| v)
            .chain([NAMESERVERS])
            .find(|v| get(v).is_some())
        {
            return Err(EnvError::Needs(var, &DNS_TYPE_NEEDED));
        }
        return Ok(None);
    };
    let mut pairs = vec![
        ("MXKEYS_DNS_TSIG_SECRET_FILE", "MXKEYS_DNS_TSIG_SECRET_ENV"),
        ("MXKEYS_DNS_API_TOKEN_FILE", "MXKEYS_DNS_API_TOKEN_ENV"),
    ];
    let own: Vec<DnsVar> = match kind.as_str() {
        "rfc2136" => RFC2136.to_vec(),
        "cloudflare" => CLOUDFLARE.to_vec(),
        "exec" => EXEC.to_vec(),
        "manual" => Vec::new(),
        _ => match long_tail.iter().find(|l| l.kind == kind) {
            Some(l) => {
                pairs.extend(l.pairs());
                l.vars().collect()
            }
            None => {
                return Err(EnvError::Bad {
                    var: "MXKEYS_DNS_TYPE",
                    shown: Some(kind),
                    why: format!("not a provider type ({})", *DNS_TYPES),
                });
            }
        },
    };
    for (a, b) in pairs {
        if get(a).is_some() && get(b).is_some() {
            return Err(EnvError::Conflict(
                a,
                b,
                "the secret is read from one place: set one of them",
            ));
        }
    }
    if let Some(var) = every()
        .map(|(v, _)| v)
        .find(|v| get(v).is_some() && !own.iter().chain(COMMON).any(|(o, _)| o == v))
    {
        return Err(EnvError::Bad {
            var,
            shown: None,
            why: format!("does not apply to MXKEYS_DNS_TYPE={kind}"),
        });
    }
    let s = |v: &str| Value::String(v.to_owned());
    let mut t = Table::new();
    t.insert("type".into(), s(&kind));
    for (var, key) in own.iter().chain(COMMON) {
        let Some(v) = get(var) else { continue };
        let v = v.trim();
        let value = if kind == "exec" && *key == "command" {
            // Run by the shell, mxkeys' arguments appended.
            Value::Array(vec![
                s("sh"),
                s("-c"),
                s(&format!("{v} \"$@\"")),
                s("mxkeys-dns"),
            ])
        } else {
            s(v)
        };
        t.insert((*key).into(), value);
    }
    if let Some(n) = get(NAMESERVERS) {
        t.insert(
            "nameservers".into(),
            Value::Array(list(&n).iter().map(|v| s(v)).collect()),
        );
    }
    Ok(Some(t))
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

    /// The environment `vars` on a machine where only `files` exist.
    fn build_on(vars: &[(&str, &str)], files: &[&str]) -> Result<Option<String>, EnvError> {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        toml_from(&|k| map.get(k).map(|v| (*v).to_owned()), &|p| {
            files.iter().any(|f| p == Path::new(f))
        })
    }

    /// The `[[dkim.adopt]]` entries of the built configuration.
    fn adopted(vars: &[(&str, &str)], files: &[&str]) -> Vec<super::super::Adopt> {
        parse(&build_on(vars, files).unwrap().unwrap())
            .dkim
            .unwrap()
            .adopt
    }

    #[test]
    fn keys_the_seeds_left_on_disk_are_adopted_where_their_containers_keep_them() {
        use super::super::{Adopt, AdoptCheck, AdoptFrom};
        let name = |n: &str| crate::names::DnsName::parse(n).unwrap();
        let key = |file: &str, domain: &str, selector: &str| Adopt {
            from: AdoptFrom::Key {
                file: file.into(),
                domain: name(domain),
                selector: selector.into(),
            },
            check: AdoptCheck::None,
        };
        // mlan: amavis' key for the first domain, from `amavisd genrsa`.
        let mlan = "/var/db/dkim/example.com.s1.privkey.pem";
        assert_eq!(
            adopted(
                &[
                    ("MAIL_DOMAIN", "example.com example.org"),
                    ("DKIM_SELECTOR", "s1")
                ],
                &[mlan]
            ),
            vec![key(mlan, "example.com", "s1")]
        );
        // ... and MAIL_DOMAIN with that file alone is enough.
        assert_eq!(
            adopted(
                &[("MAIL_DOMAIN", "example.com")],
                &["/var/db/dkim/example.com.default.privkey.pem"]
            ),
            vec![key(
                "/var/db/dkim/example.com.default.privkey.pem",
                "example.com",
                "default"
            )]
        );
        // boky: each domain's key that exists, with its own selector.
        assert_eq!(
            adopted(
                &[
                    (
                        "ALLOWED_SENDER_DOMAINS",
                        "example.com example.org,example.net"
                    ),
                    ("DKIM_SELECTOR", "sel,example.org=other"),
                ],
                &[
                    "/etc/opendkim/keys/example.com.private",
                    "/etc/opendkim/keys/example.org.private"
                ]
            ),
            vec![
                key(
                    "/etc/opendkim/keys/example.com.private",
                    "example.com",
                    "sel"
                ),
                key(
                    "/etc/opendkim/keys/example.org.private",
                    "example.org",
                    "other"
                ),
            ]
        );
        // docker-mailserver's OpenDKIM tree, at its own path.
        assert_eq!(
            adopted(
                &[
                    ("ENABLE_OPENDKIM", "1"),
                    ("MXKEYS_DKIM_DOMAINS", "example.com")
                ],
                &["/tmp/docker-mailserver/opendkim"]
            ),
            vec![Adopt {
                from: AdoptFrom::Dms("/tmp/docker-mailserver".into()),
                check: AdoptCheck::None
            }]
        );
        // Nothing there: mxkeys makes the keys.
        assert!(
            adopted(
                &[
                    ("ENABLE_OPENDKIM", "yes"),
                    ("MXKEYS_DKIM_DOMAINS", "example.com")
                ],
                &[]
            )
            .is_empty()
        );
    }

    #[test]
    fn domains_alone_ask_for_no_dkim() {
        for var in ["MAIL_DOMAIN", "ALLOWED_SENDER_DOMAINS"] {
            assert_eq!(build_on(&[(var, "example.com")], &[]), Ok(None), "{var}");
        }
        assert_eq!(build_on(&[("ENABLE_OPENDKIM", "0")], &[]), Ok(None));
        // docker-mailserver's env file shared by a sidecar: its DKIM only
        // once MXKEYS_DKIM_DOMAINS names the domains.
        let both = [("ENABLE_OPENDKIM", "1"), ("ENABLE_RSPAMD", "1")];
        assert_eq!(build_on(&both, &[]), Ok(None));
        let tls_only = build_on(&[both[0], ("SSL_TYPE", "self-signed")], &[])
            .unwrap()
            .unwrap();
        assert!(!tls_only.contains("[dkim]"), "{tls_only}");
    }

    #[test]
    fn dkim_and_dns_variables_are_checked_without_showing_a_key() {
        let key = "MIIEsecretsecretsecret";
        for (vars, needles) in [
            (
                &[("DKIM_PRIVATEKEY", key)][..],
                &["DKIM_PRIVATEKEY needs MAIL_DOMAIN"][..],
            ),
            (
                &[("MAIL_DOMAIN", "example.com"), ("DKIM_KEYBITS", "1024")][..],
                &["DKIM_KEYBITS=\"1024\"", "2048 or 3072"][..],
            ),
            (
                &[
                    ("ALLOWED_SENDER_DOMAINS", "example.com"),
                    ("DKIM_AUTOGENERATE", "maybe"),
                ][..],
                &["DKIM_AUTOGENERATE=\"maybe\""][..],
            ),
            (
                &[
                    ("OPENDKIM_KEYFILE", "/k"),
                    ("OPENDKIM_DOMAIN", "example.com"),
                ][..],
                &["OPENDKIM_KEYFILE needs OPENDKIM_SELECTOR"][..],
            ),
            (
                &[
                    ("OPENDKIM_KEYTABLE", "/k"),
                    ("OPENDKIM_DOMAIN", "example.com"),
                ][..],
                &["OPENDKIM_KEYTABLE needs OPENDKIM_SIGNINGTABLE"][..],
            ),
            (
                &[("MXKEYS_DKIM_DOMAINS", "example.com")][..],
                &["MXKEYS_DKIM_DOMAINS needs"][..],
            ),
            (
                &[("MXKEYS_DNS_SERVER", "127.0.0.1")][..],
                &["MXKEYS_DNS_SERVER needs MXKEYS_DNS_TYPE"][..],
            ),
            (
                &[("MXKEYS_DNS_TYPE", "route54")][..],
                &["MXKEYS_DNS_TYPE=\"route54\""][..],
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "exec"),
                    ("MXKEYS_DNS_API_TOKEN_ENV", "T"),
                ][..],
                &["MXKEYS_DNS_API_TOKEN_ENV", "exec"][..],
            ),
            (
                &[
                    ("MAIL_DOMAIN", "example.com"),
                    ("DKIM_PRIVATEKEY", key),
                    ("MXKEYS_DKIM_RELOAD_SIGNAL", "HUP"),
                ][..],
                &["MXKEYS_DKIM_RELOAD_SIGNAL needs MXKEYS_DKIM_RELOAD_PIDFILE"][..],
            ),
        ] {
            let e = build_on(vars, &[]).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{vars:?}: {e}");
            }
            assert!(!e.contains(key), "{e}");
        }
    }

    #[test]
    fn an_exec_provider_runs_the_command_with_mxkeys_arguments() {
        let c = parse(
            &build_on(
                &[
                    ("MXKEYS_DNS_TYPE", "exec"),
                    ("MXKEYS_DNS_COMMAND", "/usr/local/bin/hook --zone a"),
                ],
                &[],
            )
            .unwrap()
            .unwrap(),
        );
        assert_eq!(
            c.dns["env"].kind,
            super::super::DnsKind::Exec {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "/usr/local/bin/hook --zone a \"$@\"".into(),
                    "mxkeys-dns".into()
                ]
            }
        );
        assert!(c.dkim.is_none() && c.sources.is_empty());
    }

    /// The `[dns.env]` provider the environment `vars` make.
    fn env_provider(vars: &[(&str, &str)]) -> super::super::DnsProvider {
        let text = build_on(vars, &[])
            .unwrap_or_else(|e| panic!("{vars:?}: {e}"))
            .unwrap();
        parse(&text).dns.remove("env").unwrap()
    }

    /// The provider `[dns.env]` of the configuration text `toml`.
    fn toml_provider(toml: &str) -> super::super::DnsProvider {
        parse(toml).dns.remove("env").unwrap()
    }

    #[test]
    fn long_tail_types_from_the_environment_are_the_providers_their_toml_makes() {
        for (vars, toml) in [
            (
                &[
                    ("MXKEYS_DNS_TYPE", "hetzner"),
                    ("MXKEYS_DNS_API_TOKEN_FILE", "/run/secrets/hetzner"),
                    ("MXKEYS_DNS_ZONE", "example.com"),
                ][..],
                "[dns.env]\ntype = \"hetzner\"\napi_token_file = \"/run/secrets/hetzner\"\nzone = \"example.com\"\n",
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "Route53"),
                    ("MXKEYS_DNS_ACCESS_KEY_ID_ENV", "AWS_ACCESS_KEY_ID"),
                    ("MXKEYS_DNS_SECRET_ACCESS_KEY_FILE", "/run/secrets/aws"),
                    ("MXKEYS_DNS_SESSION_TOKEN_ENV", "AWS_SESSION_TOKEN"),
                    ("MXKEYS_DNS_REGION", "eu-west-1"),
                    ("MXKEYS_DNS_HOSTED_ZONE_ID", "Z123"),
                    ("MXKEYS_DNS_NAMESERVERS", "192.0.2.1, 192.0.2.2:5300"),
                    ("MXKEYS_DNS_PROPAGATION_TIMEOUT", "5m"),
                ][..],
                "[dns.env]\ntype = \"route53\"\naccess_key_id_env = \"AWS_ACCESS_KEY_ID\"\nsecret_access_key_file = \"/run/secrets/aws\"\nsession_token_env = \"AWS_SESSION_TOKEN\"\nregion = \"eu-west-1\"\nhosted_zone_id = \"Z123\"\nnameservers = [\"192.0.2.1\", \"192.0.2.2:5300\"]\npropagation_timeout = \"5m\"\n",
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "pdns"),
                    ("MXKEYS_DNS_API_KEY_ENV", "PDNS_KEY"),
                    ("MXKEYS_DNS_ENDPOINT", "http://192.0.2.10:8081"),
                    ("MXKEYS_DNS_SERVER_NAME", "localhost"),
                    ("MXKEYS_DNS_ZONE", "example.net"),
                    ("MXKEYS_DNS_DELEGATE_TO", "acme.example.net."),
                ][..],
                "[dns.env]\ntype = \"pdns\"\napi_key_env = \"PDNS_KEY\"\nendpoint = \"http://192.0.2.10:8081\"\nserver_name = \"localhost\"\nzone = \"example.net\"\ndelegate_to = \"acme.example.net\"\n",
            ),
        ] {
            let from_env = env_provider(vars);
            assert!(
                matches!(from_env.kind, super::super::DnsKind::LongTail { .. }),
                "{vars:?}: {:?}",
                from_env.kind
            );
            assert_eq!(from_env, toml_provider(toml), "{vars:?}");
        }
    }

    #[test]
    fn delegate_to_passes_through_for_every_type() {
        for (vars, toml) in [
            (
                &[("MXKEYS_DNS_TYPE", "manual")][..],
                "[dns.env]\ntype = \"manual\"\n",
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "rfc2136"),
                    ("MXKEYS_DNS_SERVER", "192.0.2.53"),
                    ("MXKEYS_DNS_TSIG_NAME", "mxkeys"),
                    ("MXKEYS_DNS_TSIG_SECRET_FILE", "/run/secrets/tsig"),
                ][..],
                "[dns.env]\ntype = \"rfc2136\"\nserver = \"192.0.2.53\"\ntsig_name = \"mxkeys\"\ntsig_secret_file = \"/run/secrets/tsig\"\n",
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "gandi"),
                    ("MXKEYS_DNS_API_TOKEN_ENV", "GANDI_PAT"),
                ][..],
                "[dns.env]\ntype = \"gandi\"\napi_token_env = \"GANDI_PAT\"\n",
            ),
        ] {
            let mut vars = vars.to_vec();
            vars.push(("MXKEYS_DNS_DELEGATE_TO", "ACME.Example.NET."));
            let p = env_provider(&vars);
            assert_eq!(
                p.delegate_to.as_deref(),
                Some("acme.example.net"),
                "{vars:?}"
            );
            let toml = format!("{toml}delegate_to = \"acme.example.net\"\n");
            assert_eq!(p, toml_provider(&toml), "{vars:?}");
        }
        // Alone it still needs a type.
        let e = build_on(&[("MXKEYS_DNS_DELEGATE_TO", "acme.example.net")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("MXKEYS_DNS_DELEGATE_TO needs MXKEYS_DNS_TYPE"),
            "{e}"
        );
    }

    #[test]
    fn a_dns_variable_of_another_type_is_refused_naming_it() {
        for (vars, var) in [
            (
                &[
                    ("MXKEYS_DNS_TYPE", "hetzner"),
                    ("MXKEYS_DNS_API_TOKEN_FILE", "/t"),
                    ("MXKEYS_DNS_ENDPOINT", "http://192.0.2.10"),
                ][..],
                "MXKEYS_DNS_ENDPOINT",
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "cloudflare"),
                    ("MXKEYS_DNS_API_TOKEN_FILE", "/t"),
                    ("MXKEYS_DNS_SECRET_ACCESS_KEY_ENV", "AWS_SECRET"),
                ][..],
                "MXKEYS_DNS_SECRET_ACCESS_KEY_ENV",
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "route53"),
                    ("MXKEYS_DNS_ACCESS_KEY_ID_FILE", "/a"),
                    ("MXKEYS_DNS_SECRET_ACCESS_KEY_FILE", "/s"),
                    ("MXKEYS_DNS_TSIG_NAME", "k"),
                ][..],
                "MXKEYS_DNS_TSIG_NAME",
            ),
            (
                &[
                    ("MXKEYS_DNS_TYPE", "pdns"),
                    ("MXKEYS_DNS_API_KEY_FILE", "/k"),
                    ("MXKEYS_DNS_ENDPOINT", "http://192.0.2.10"),
                    ("MXKEYS_DNS_API_TOKEN_FILE", "/t"),
                ][..],
                "MXKEYS_DNS_API_TOKEN_FILE",
            ),
        ] {
            let e = build_on(vars, &[]).unwrap_err().to_string();
            let kind = vars[0].1;
            assert!(
                e.contains(var) && e.contains(&format!("does not apply to MXKEYS_DNS_TYPE={kind}")),
                "{vars:?}: {e}"
            );
        }
    }

    #[test]
    fn a_credential_from_both_a_file_and_a_variable_is_refused() {
        for (kind, file, env) in [
            (
                "route53",
                "MXKEYS_DNS_SECRET_ACCESS_KEY_FILE",
                "MXKEYS_DNS_SECRET_ACCESS_KEY_ENV",
            ),
            (
                "hetzner",
                "MXKEYS_DNS_API_TOKEN_FILE",
                "MXKEYS_DNS_API_TOKEN_ENV",
            ),
            ("pdns", "MXKEYS_DNS_API_KEY_FILE", "MXKEYS_DNS_API_KEY_ENV"),
        ] {
            let e = build_on(
                &[
                    ("MXKEYS_DNS_TYPE", kind),
                    (file, "/run/secrets/x"),
                    (env, "SOME_VAR"),
                ],
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(&format!("{file} and {env} conflict")),
                "{kind}: {e}"
            );
        }
    }

    #[test]
    fn an_unknown_dns_type_is_refused_listing_the_types_from_the_table() {
        let e = build_on(&[("MXKEYS_DNS_TYPE", "route54")], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("MXKEYS_DNS_TYPE=\"route54\""), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        for kind in ["rfc2136", "cloudflare", "exec", "manual"]
            .into_iter()
            .chain(mxkeys_providers::longtail::SPECS.iter().map(|s| s.kind))
        {
            assert!(e.contains(kind), "{kind} missing: {e}");
        }
    }

    #[test]
    fn every_long_tail_type_is_reachable_from_the_environment() {
        // Each spec's required keys as variables make a provider of its type.
        for spec in mxkeys_providers::longtail::SPECS {
            let mut vars: Vec<(String, String)> =
                vec![("MXKEYS_DNS_TYPE".into(), spec.kind.into())];
            for key in spec.secrets.iter().filter(|k| k.required) {
                vars.push((
                    format!("MXKEYS_DNS_{}_ENV", key.name.to_ascii_uppercase()),
                    format!("VAR_{}", key.name),
                ));
            }
            for key in spec.settings.iter().filter(|k| k.required) {
                vars.push((
                    format!("MXKEYS_DNS_{}", key.name.to_ascii_uppercase()),
                    "v".into(),
                ));
            }
            let vars: Vec<(&str, &str)> =
                vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let p = env_provider(&vars);
            let super::super::DnsKind::LongTail { kind, secrets, .. } = p.kind else {
                panic!("{}: {:?}", spec.kind, p.kind)
            };
            assert_eq!(kind, spec.kind);
            assert_eq!(
                secrets.len(),
                spec.secrets.iter().filter(|k| k.required).count(),
                "{}",
                spec.kind
            );
        }
    }

    #[test]
    fn long_tail_variables_share_a_name_only_with_a_variable_of_the_same_meaning() {
        // A derived name equal to a fixed one must mean the same key
        // (hetzner's api_token is cloudflare's MXKEYS_DNS_API_TOKEN_FILE).
        let fixed: Vec<&str> = VARIABLES.iter().map(|(v, _)| *v).collect();
        for l in LONG_TAIL_VARS.iter() {
            for (var, key) in &l.vars {
                assert!(var.starts_with("MXKEYS_DNS_"), "{var}");
                if fixed.contains(&var.as_str()) {
                    assert!(
                        ["api_token_file", "api_token_env"].contains(&key.as_str()),
                        "{}: {var} already means something else",
                        l.kind
                    );
                }
            }
        }
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
