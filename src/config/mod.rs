//! The configuration file: its TOML shape, defaults, and validation.
//!
//! Parsing is strict: an unknown key, a bad value or an impossible target is
//! a [`ConfigError`] naming the file, the key and the problem, and `mxkeys`
//! exits with status 2. Relative paths are resolved against the directory of
//! the configuration file, so a configuration means the same thing from any
//! working directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod env;

use crate::names::DnsName;

/// The default configuration path when neither `--config` nor
/// `$MXKEYS_CONFIG` names one.
pub const DEFAULT_PATH: &str = "/etc/mxkeys/mxkeys.toml";
const DEFAULT_STATE_DIR: &str = "/var/lib/mxkeys";
const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// A configuration that could not be used. Displayed as one line.
#[derive(Debug, thiserror::Error)]
#[error("configuration {}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

/// Where the configuration comes from, so SIGHUP can read it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    File(PathBuf),
    /// Built from the environment (container sidecar mode).
    Environment,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Environment => f.write_str("the environment"),
        }
    }
}

impl ConfigSource {
    /// Chooses the file when it exists; else the environment when it asks
    /// for mxkeys (see [`env`]); else the missing file is the error.
    pub fn choose(path: &Path) -> Result<ConfigSource, ConfigError> {
        if path.exists() {
            return Ok(ConfigSource::File(path.to_owned()));
        }
        match env::toml_from(&|k| std::env::var(k).ok(), &|p| p.exists()) {
            Ok(Some(_)) => Ok(ConfigSource::Environment),
            Ok(None) => Err(ConfigError {
                path: path.to_owned(),
                message:
                    "not found (and no container environment such as ACME_FILE or SSL_TYPE is set)"
                        .to_owned(),
            }),
            Err(message) => Err(ConfigError {
                path: PathBuf::from(ENV_PATH),
                message,
            }),
        }
    }

    /// The configuration text: the file's, or TOML built from the environment.
    pub fn text(&self) -> Result<String, ConfigError> {
        match self {
            ConfigSource::File(path) => std::fs::read_to_string(path).map_err(|e| ConfigError {
                path: path.clone(),
                message: crate::source::io_reason(&e),
            }),
            ConfigSource::Environment => {
                env::toml_from(&|k| std::env::var(k).ok(), &|p| p.exists())
                    .map_err(|message| ConfigError {
                        path: PathBuf::from(ENV_PATH),
                        message,
                    })?
                    .ok_or_else(|| ConfigError {
                        path: PathBuf::from(ENV_PATH),
                        message: "the container variables are gone".to_owned(),
                    })
            }
        }
    }

    /// Reads and validates the configuration, then checks who can write
    /// the targets' directories: a warning each, or the error for a target
    /// with `strict_permissions = true`.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let text = self.text()?;
        let config = match self {
            ConfigSource::File(path) => Config::parse(path, &text),
            ConfigSource::Environment => Config::parse(Path::new(ENV_PATH), &text),
        }?;
        for (strict, why) in crate::install::exposed_target_dirs(&config.targets) {
            if strict {
                return Err(ConfigError {
                    path: config.path.clone(),
                    message: format!("{why} (strict_permissions = true)"),
                });
            }
            tracing::warn!("{why}");
        }
        Ok(config)
    }
}

/// How messages name a configuration built from the environment.
const ENV_PATH: &str = "(environment)";

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration was read from.
    pub path: PathBuf,
    pub hostname: Option<DnsName>,
    pub state_dir: crate::state::StateDir,
    pub sources: Vec<SourceConfig>,
    pub targets: Vec<Target>,
    pub daemon: Daemon,
    /// `[dns.NAME]` providers, by name.
    pub dns: std::collections::BTreeMap<String, DnsProvider>,
    /// The `[acme]` table (defaults when absent).
    pub acme: AcmeAccount,
    /// The `[dkim]` table, when DKIM keys are managed.
    pub dkim: Option<Dkim>,
}

/// The `[dkim]` table: which keys to keep, how to rotate them, where the
/// signer reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dkim {
    pub domains: Vec<DnsName>,
    pub algorithms: Vec<DkimAlgorithm>,
    /// Selector template: `{alg}` (r/e), `{date}` (YYYYMMDD), `{n}`.
    pub selector: String,
    pub key_dir: PathBuf,
    /// A `[dns.NAME]` provider, or "manual".
    pub dns: String,
    pub ttl: u32,
    pub rotate_every: Duration,
    pub lead: Duration,
    pub drain: Duration,
    pub revoke_hold: Duration,
    /// After a signer reload, how long sessions it accepted before may
    /// still sign with a key it dropped: `p=` waits this long.
    pub revoke_settle: Duration,
    pub signer: Signer,
    pub signer_dir: PathBuf,
    pub key_owner: Option<String>,
    pub key_group: Option<String>,
    pub key_mode: u32,
    pub reload: Vec<Reload>,
    pub reload_timeout: Duration,
}

/// A DKIM signing algorithm and key size.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-1024")]
    Rsa1024,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl DkimAlgorithm {
    pub fn is_rsa(self) -> bool {
        !matches!(self, DkimAlgorithm::Ed25519)
    }

    /// `{alg}` in selector templates.
    pub fn letter(self) -> &'static str {
        if self.is_rsa() { "r" } else { "e" }
    }

    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa1024 => "rsa-1024",
            DkimAlgorithm::Rsa2048 => "rsa-2048",
            DkimAlgorithm::Rsa3072 => "rsa-3072",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }
}

/// Which signer's configuration mxkeys writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signer {
    Opendkim,
    Rspamd,
    Amavis,
}

impl Config {
    /// The `acme` sources, in configuration order.
    pub fn acme_sources(&self) -> impl Iterator<Item = &AcmeSource> {
        self.sources.iter().filter_map(|s| match &s.kind {
            SourceKind::Acme(a) => Some(a),
            _ => None,
        })
    }
}

/// A `[dns.NAME]` table: a DNS provider and how to check propagation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsProvider {
    pub name: String,
    pub kind: DnsKind,
    /// The zone to write in; found from the record name when absent.
    pub zone: Option<String>,
    /// The authoritative servers of `zone` (of every name when `zone` is
    /// not set), asked instead of the NS set found through DNS.
    pub nameservers: Option<Vec<std::net::SocketAddr>>,
    /// The recursive resolver that finds other zones' servers and follows
    /// CNAMEs outside `zone`; default: the system's.
    pub resolver: Option<std::net::SocketAddr>,
    pub propagation_interval: Duration,
    pub propagation_timeout: Duration,
}

/// What kind of provider, with its settings. Secrets are named here
/// (a file or an environment variable), never held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsKind {
    Rfc2136 {
        server: std::net::SocketAddr,
        tsig_name: String,
        tsig_algorithm: String,
        tsig_secret: Secret,
    },
    Cloudflare {
        api_token: Secret,
        api_url: Option<String>,
    },
    Exec {
        command: Vec<String>,
    },
    Manual,
}

/// Where a secret is read from, when it is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    File(PathBuf),
    Env(String),
}

impl Secret {
    /// Reads the secret (trimmed). The error names where, never what.
    pub fn read(&self) -> Result<zeroize::Zeroizing<String>, String> {
        let value = match self {
            Secret::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("{}: {}", path.display(), crate::source::io_reason(&e)))?,
            Secret::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?
            }
        };
        let value = zeroize::Zeroizing::new(value);
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(format!("{self} is empty"));
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

/// How `mxkeys run` watches and when it acts on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Daemon {
    pub watch: WatchMode,
    /// How often the polling watcher looks at the sources.
    pub poll_interval: Duration,
    /// Quiet time after a change before reading the sources.
    pub debounce: Duration,
    /// A full reconcile this often, whatever the watcher says.
    pub resync_interval: Duration,
    /// Warn when a target's certificate has less than this left.
    pub expiry_warning: Duration,
    /// Where to serve /metrics and /healthz (off when `None`).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// On SIGTERM, how long an ACME pass under way may take to finish
    /// before it is cut (and recorded as cut).
    pub stop_timeout: Duration,
}

impl Default for Daemon {
    fn default() -> Self {
        Daemon {
            watch: WatchMode::Auto,
            poll_interval: Duration::from_secs(2),
            debounce: Duration::from_millis(50),
            resync_interval: Duration::from_secs(3600),
            expiry_warning: Duration::from_secs(14 * 86_400),
            metrics_listen: None,
            stop_timeout: Duration::from_secs(60),
        }
    }
}

/// How `mxkeys run` notices that a source changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify, falling back to polling for paths it cannot watch.
    #[default]
    Auto,
    /// inotify only.
    Inotify,
    /// Polling only (NFS, some container volumes).
    Poll,
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

/// An argv as a person would type it, for messages.
pub fn shell_words(argv: &[String]) -> String {
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

/// One `[[source]]`, with paths made absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    /// A short label for messages: `name` when given, else `TYPE:PATH`.
    pub label: String,
    pub kind: SourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Traefik {
        path: PathBuf,
        resolvers: Option<Vec<String>>,
    },
    Certbot {
        path: PathBuf,
    },
    Lego {
        path: PathBuf,
    },
    Files {
        cert: PathBuf,
        key: PathBuf,
        chain: Option<PathBuf>,
    },
    SelfSigned {
        dir: crate::state::SelfSignedDir,
        days: u32,
    },
    /// Certificates mxkeys orders itself (`mxkeys renew`, or `run`).
    Acme(AcmeSource),
}

/// A `type = "acme"` source: what to order and how to prove control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSource {
    /// Its state lives in `state_dir/acme/NAME/`.
    pub name: String,
    pub domains: Vec<DnsName>,
    pub challenge: Challenge,
    pub key_type: AcmeKeyType,
    /// Keep the private key across renewals (DANE pins it).
    pub reuse_key: bool,
    pub dir: crate::state::AcmeSourceDir,
}

/// How an `acme` source proves control of its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// The built-in responder, listening only while an order runs.
    Http01Listen(std::net::SocketAddr),
    /// Token files written where a web server already serves them.
    Http01Webroot(PathBuf),
    /// TXT records through a `[dns.NAME]` provider.
    Dns01 { provider: String },
}

/// The key of certificates an `acme` source orders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum AcmeKeyType {
    #[default]
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl AcmeKeyType {
    /// Whether a certificate's key is of this type.
    pub fn matches(self, key: crate::cert::KeyType) -> bool {
        use crate::cert::{Curve, KeyType};
        matches!(
            (self, key),
            (AcmeKeyType::EcdsaP256, KeyType::Ecdsa(Curve::P256))
                | (AcmeKeyType::EcdsaP384, KeyType::Ecdsa(Curve::P384))
                | (AcmeKeyType::Rsa2048, KeyType::Rsa { bits: 2048 })
                | (AcmeKeyType::Rsa3072, KeyType::Rsa { bits: 3072 })
                | (AcmeKeyType::Rsa4096, KeyType::Rsa { bits: 4096 })
        )
    }
}

/// The `[acme]` table: the CA and the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeAccount {
    /// The directory URL (aliases resolved).
    pub directory: String,
    pub email: Option<String>,
    /// Roots to trust for the ACME server, besides the system's.
    pub ca_bundle: Option<PathBuf>,
    /// External account binding: key id and where its HMAC key is.
    pub eab: Option<(String, Secret)>,
    pub profile: Option<String>,
}

/// Let's Encrypt's production directory, the default.
pub const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "letsencrypt-staging"`).
pub const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Which key algorithms a target accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum KeyTypeFilter {
    Rsa,
    Ecdsa,
    #[default]
    Any,
}

impl KeyTypeFilter {
    pub fn accepts(self, key_type: crate::cert::KeyType) -> bool {
        match self {
            KeyTypeFilter::Rsa => key_type.is_rsa(),
            KeyTypeFilter::Ecdsa => key_type.is_ecdsa(),
            KeyTypeFilter::Any => key_type != crate::cert::KeyType::Other,
        }
    }
}

/// One `[[target]]`: the names to serve, where to write them, how to tell
/// the service, and how to check what it serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub domains: Vec<DnsName>,
    /// One slot, or two for a dual RSA + ECDSA target.
    pub slots: Vec<Slot>,
    pub key_mode: u32,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// Run, in order, after this target's files changed.
    pub reloads: Vec<Reload>,
    pub reload_timeout: Duration,
    /// Where to check, after a reload, that the new certificate is served.
    pub verify: Vec<Verify>,
    pub verify_timeout: Duration,
    /// Refuse the configuration (instead of warning) when a directory of
    /// this target's files is writable by a user other than root and the
    /// target's owner.
    pub strict_permissions: bool,
}

/// One certificate of a target: its key type and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// `Some("rsa")`/`Some("ecdsa")` for the sub-tables of a dual target.
    pub label: Option<&'static str>,
    pub key_type: KeyTypeFilter,
    pub files: TargetFiles,
}

impl Target {
    /// The name of a slot in messages, state and metrics: `dovecot`, or
    /// `dovecot/rsa` for one half of a dual target.
    pub fn slot_name(&self, slot: &Slot) -> String {
        match slot.label {
            Some(label) => format!("{}/{label}", self.name),
            None => self.name.clone(),
        }
    }
}

/// An endpoint where a target's service presents its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verify {
    /// `host:port`.
    pub address: String,
    pub protocol: VerifyProtocol,
    /// The name to send as SNI. Default: the target's first domain.
    pub sni: Option<String>,
}

/// How to reach TLS on a verify endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyProtocol {
    /// SMTP with STARTTLS (ports 25, 587).
    Smtp,
    /// IMAP with STARTTLS (port 143).
    Imap,
    /// POP3 with STLS (port 110).
    Pop3,
    /// TLS from the first byte (ports 465, 993, 995).
    Tls,
}

/// The files a target writes; at least one holds the key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetFiles {
    pub fullchain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub combined: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub chain: Option<PathBuf>,
}

impl TargetFiles {
    /// Every configured file with its role, in the order they are written.
    pub fn iter(&self) -> impl Iterator<Item = (FileRole, &Path)> {
        [
            (FileRole::Key, &self.key),
            (FileRole::Fullchain, &self.fullchain),
            (FileRole::Combined, &self.combined),
            (FileRole::Cert, &self.cert),
            (FileRole::Chain, &self.chain),
        ]
        .into_iter()
        .filter_map(|(role, p)| p.as_deref().map(|p| (role, p)))
    }
}

/// What a target file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    Key,
    Fullchain,
    Combined,
    Cert,
    Chain,
}

impl FileRole {
    pub fn holds_key(self) -> bool {
        matches!(self, FileRole::Key | FileRole::Combined)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FileRole::Key => "key",
            FileRole::Fullchain => "fullchain",
            FileRole::Combined => "combined",
            FileRole::Cert => "cert",
            FileRole::Chain => "chain",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hostname: Option<String>,
    state_dir: Option<PathBuf>,
    watch: Option<WatchMode>,
    #[serde(default, with = "humantime_serde")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    debounce: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    resync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    expiry_warning: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    stop_timeout: Option<Duration>,
    metrics: Option<RawMetrics>,
    #[serde(default)]
    dns: std::collections::BTreeMap<String, RawDns>,
    acme: Option<RawAcme>,
    dkim: Option<RawDkim>,
    #[serde(default, rename = "source")]
    sources: Vec<RawSource>,
    #[serde(default, rename = "target")]
    targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    domains: Vec<String>,
    algorithms: Option<Vec<DkimAlgorithm>>,
    selector: Option<String>,
    key_dir: Option<PathBuf>,
    dns: String,
    ttl: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    rotate_every: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    lead: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    drain: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    revoke_hold: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    revoke_settle: Option<Duration>,
    signer: Signer,
    signer_dir: PathBuf,
    key_owner: Option<String>,
    key_group: Option<String>,
    key_mode: Option<String>,
    reload: Option<Vec<String>>,
    reload_signal: Option<RawSignal>,
    #[serde(default, with = "humantime_serde")]
    reload_timeout: Option<Duration>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Option<String>,
    email: Option<String>,
    ca_bundle: Option<PathBuf>,
    eab_kid: Option<String>,
    eab_hmac_key_file: Option<PathBuf>,
    eab_hmac_key_env: Option<String>,
    profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum RawDns {
    Rfc2136 {
        server: String,
        zone: Option<String>,
        tsig_name: String,
        tsig_algorithm: Option<String>,
        tsig_secret_file: Option<PathBuf>,
        tsig_secret_env: Option<String>,
        nameservers: Option<Vec<String>>,
        resolver: Option<String>,
        #[serde(default, with = "humantime_serde")]
        propagation_interval: Option<Duration>,
        #[serde(default, with = "humantime_serde")]
        propagation_timeout: Option<Duration>,
    },
    Cloudflare {
        api_token_file: Option<PathBuf>,
        api_token_env: Option<String>,
        api_url: Option<String>,
        zone: Option<String>,
        nameservers: Option<Vec<String>>,
        resolver: Option<String>,
        #[serde(default, with = "humantime_serde")]
        propagation_interval: Option<Duration>,
        #[serde(default, with = "humantime_serde")]
        propagation_timeout: Option<Duration>,
    },
    Exec {
        command: Vec<String>,
        zone: Option<String>,
        nameservers: Option<Vec<String>>,
        resolver: Option<String>,
        #[serde(default, with = "humantime_serde")]
        propagation_interval: Option<Duration>,
        #[serde(default, with = "humantime_serde")]
        propagation_timeout: Option<Duration>,
    },
    Manual {
        zone: Option<String>,
        nameservers: Option<Vec<String>>,
        resolver: Option<String>,
        #[serde(default, with = "humantime_serde")]
        propagation_interval: Option<Duration>,
        #[serde(default, with = "humantime_serde")]
        propagation_timeout: Option<Duration>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    pidfile: PathBuf,
    #[serde(default = "default_signal")]
    signal: String,
}

fn default_signal() -> String {
    "HUP".to_owned()
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
enum RawSource {
    Traefik {
        name: Option<String>,
        path: PathBuf,
        resolvers: Option<Vec<String>>,
    },
    Certbot {
        name: Option<String>,
        path: PathBuf,
    },
    Lego {
        name: Option<String>,
        path: PathBuf,
    },
    Files {
        name: Option<String>,
        cert: PathBuf,
        key: PathBuf,
        chain: Option<PathBuf>,
    },
    SelfSigned {
        name: Option<String>,
        days: Option<u32>,
    },
    Acme {
        name: String,
        domains: Vec<String>,
        challenge: String,
        http_listen: Option<String>,
        webroot: Option<PathBuf>,
        dns: Option<String>,
        #[serde(default)]
        key_type: AcmeKeyType,
        #[serde(default)]
        reuse_key: bool,
    },
}

/// `key_type` as written: a filter, or "dual" (with `[target.rsa]` and
/// `[target.ecdsa]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKeyType {
    Rsa,
    Ecdsa,
    Any,
    Dual,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFiles {
    fullchain: Option<PathBuf>,
    key: Option<PathBuf>,
    combined: Option<PathBuf>,
    cert: Option<PathBuf>,
    chain: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: String,
    domains: Option<Vec<String>>,
    key_type: Option<RawKeyType>,
    fullchain: Option<PathBuf>,
    key: Option<PathBuf>,
    combined: Option<PathBuf>,
    cert: Option<PathBuf>,
    chain: Option<PathBuf>,
    rsa: Option<RawFiles>,
    ecdsa: Option<RawFiles>,
    #[serde(default)]
    verify: Vec<Verify>,
    #[serde(default, with = "humantime_serde")]
    verify_timeout: Option<Duration>,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
    reload: Option<Vec<String>>,
    reload_signal: Option<RawSignal>,
    #[serde(default, with = "humantime_serde")]
    reload_timeout: Option<Duration>,
    #[serde(default)]
    strict_permissions: bool,
}

impl Config {
    /// Reads and validates the configuration at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            message: crate::source::io_reason(&e),
        })?;
        Self::parse(path, &text)
    }

    /// Validates configuration text that was read from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines (a source excerpt); keep one.
            let msg = e.message().trim().to_owned();
            match e.span() {
                Some(span) => {
                    let start = span.start.min(text.len());
                    let line = text[..start].matches('\n').count() + 1;
                    // Only the key, and only from a `key = value` line: a
                    // value (or a bare line) may be a secret pasted by mistake.
                    let key = text
                        .lines()
                        .nth(line - 1)
                        .and_then(|l| l.split_once('='))
                        .map(|(k, _)| k.trim())
                        .filter(|k| {
                            !k.is_empty()
                                && k.len() <= 64
                                && k.chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "_-.\"[]".contains(c))
                        });
                    match key {
                        Some(k) => err(format!("line {line} `{k}`: {msg}")),
                        None => err(format!("line {line}: {msg}")),
                    }
                }
                None => err(msg),
            }
        })?;
        // Absolute, so watches and messages do not depend on the working
        // directory.
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.is_absolute() {
            base
        } else {
            std::env::current_dir().unwrap_or_default().join(base)
        };
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                normalize(p)
            } else {
                normalize(&base.join(p))
            }
        };

        let hostname = raw
            .hostname
            .as_deref()
            .map(DnsName::parse)
            .transpose()
            .map_err(|e| err(format!("key `hostname`: {e}")))?;
        let state_dir = crate::state::StateDir::new(abs(raw
            .state_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_STATE_DIR))));

        let mut sources = Vec::new();
        let mut labels = HashSet::new();
        for (i, s) in raw.sources.into_iter().enumerate() {
            let (name, kind, default_label) = match s {
                RawSource::Traefik {
                    name,
                    path,
                    resolvers,
                } => {
                    let path = abs(&path);
                    let label = format!("traefik:{}", path.display());
                    (name, SourceKind::Traefik { path, resolvers }, label)
                }
                RawSource::Certbot { name, path } => {
                    let path = abs(&path);
                    let label = format!("certbot:{}", path.display());
                    (name, SourceKind::Certbot { path }, label)
                }
                RawSource::Lego { name, path } => {
                    let path = abs(&path);
                    let label = format!("lego:{}", path.display());
                    (name, SourceKind::Lego { path }, label)
                }
                RawSource::Files {
                    name,
                    cert,
                    key,
                    chain,
                } => {
                    let cert = abs(&cert);
                    let label = format!("files:{}", cert.display());
                    let kind = SourceKind::Files {
                        cert,
                        key: abs(&key),
                        chain: chain.as_deref().map(abs),
                    };
                    (name, kind, label)
                }
                RawSource::SelfSigned { name, days } => {
                    let days = days.unwrap_or(90);
                    if !(2..=3650).contains(&days) {
                        return Err(err(format!(
                            "source #{}: key `days`: {days} is outside 2..=3650",
                            i + 1
                        )));
                    }
                    let label = "self-signed".to_owned();
                    let dir = state_dir.self_signed();
                    (name, SourceKind::SelfSigned { dir, days }, label)
                }
                RawSource::Acme {
                    name,
                    domains,
                    challenge,
                    http_listen,
                    webroot,
                    dns,
                    key_type,
                    reuse_key,
                } => {
                    let source = validate_acme_source(
                        name,
                        domains,
                        &challenge,
                        (http_listen, webroot, dns),
                        key_type,
                        reuse_key,
                        &state_dir,
                        &abs,
                    )
                    .map_err(|m| err(format!("source #{}: {m}", i + 1)))?;
                    let label = format!("acme:{}", source.name);
                    (Some(label.clone()), SourceKind::Acme(source), label)
                }
            };
            let label = name.unwrap_or(default_label);
            if !labels.insert(label.clone()) {
                return Err(err(format!(
                    "source #{}: two sources are both called {label:?}; give one a `name`",
                    i + 1
                )));
            }
            sources.push(SourceConfig { label, kind });
        }

        let mut targets = Vec::new();
        let mut target_names = HashSet::new();
        let mut written = HashSet::new();
        for t in raw.targets {
            let target = validate_target(t, hostname.as_ref(), &abs)
                .map_err(|(name, m)| err(format!("target {name:?}: {m}")))?;
            if !target_names.insert(target.name.clone()) {
                return Err(err(format!(
                    "target {:?}: the name is used by another target",
                    target.name
                )));
            }
            for (_, p) in target.slots.iter().flat_map(|s| s.files.iter()) {
                if !written.insert(p.to_owned()) {
                    return Err(err(format!(
                        "target {:?}: {} is written by another target or file too",
                        target.name,
                        p.display()
                    )));
                }
            }
            targets.push(target);
        }
        let defaults = Daemon::default();
        let metrics_listen = match raw.metrics.and_then(|m| m.listen) {
            None => None,
            Some(l) => Some(l.parse().map_err(|_| {
                err(format!(
                    "key `metrics.listen`: {l:?} is not an address:port like \"127.0.0.1:9325\""
                ))
            })?),
        };
        let daemon = Daemon {
            watch: raw.watch.unwrap_or(defaults.watch),
            poll_interval: raw.poll_interval.unwrap_or(defaults.poll_interval),
            debounce: raw.debounce.unwrap_or(defaults.debounce),
            resync_interval: raw.resync_interval.unwrap_or(defaults.resync_interval),
            expiry_warning: raw.expiry_warning.unwrap_or(defaults.expiry_warning),
            metrics_listen,
            stop_timeout: raw.stop_timeout.unwrap_or(defaults.stop_timeout),
        };
        for (key, value, min) in [
            (
                "poll_interval",
                daemon.poll_interval,
                Duration::from_millis(100),
            ),
            (
                "resync_interval",
                daemon.resync_interval,
                Duration::from_secs(10),
            ),
        ] {
            if value < min {
                return Err(err(format!(
                    "key `{key}`: {} is shorter than the minimum {}",
                    humantime::format_duration(value),
                    humantime::format_duration(min)
                )));
            }
        }
        let mut dns = std::collections::BTreeMap::new();
        for (name, raw) in raw.dns {
            let provider =
                validate_dns(&name, raw, &abs).map_err(|m| err(format!("[dns.{name}]: {m}")))?;
            dns.insert(name, provider);
        }
        for s in &sources {
            if let SourceKind::Acme(AcmeSource {
                name,
                challenge: Challenge::Dns01 { provider },
                ..
            }) = &s.kind
                && !dns.contains_key(provider)
            {
                return Err(err(format!(
                    "acme source {name:?}: key `dns`: no [dns.{provider}] table"
                )));
            }
        }
        let acme = validate_acme(raw.acme.unwrap_or_default(), &abs)
            .map_err(|m| err(format!("[acme]: {m}")))?;
        let dkim = raw
            .dkim
            .map(|d| validate_dkim(d, &state_dir, &dns, &abs))
            .transpose()
            .map_err(|m| err(format!("[dkim]: {m}")))?;
        check_target_overlaps(&targets, state_dir.path(), dkim.as_ref()).map_err(err)?;
        Ok(Config {
            path: path.to_owned(),
            hostname,
            state_dir,
            sources,
            targets,
            daemon,
            dns,
            acme,
            dkim,
        })
    }
}

/// Target files are written over whatever is there: none may lie inside
/// `state_dir` (mxkeys' own records, ACME keys, the DKIM keys by default),
/// inside `[dkim] key_dir`, or be one of the signer files mxkeys writes in
/// `[dkim] signer_dir`. One line naming both keys.
fn check_target_overlaps(
    targets: &[Target],
    state_dir: &Path,
    dkim: Option<&Dkim>,
) -> Result<(), String> {
    let mut owned: Vec<(String, PathBuf, bool)> =
        vec![("state_dir".to_owned(), state_dir.to_owned(), true)];
    if let Some(d) = dkim {
        owned.push(("[dkim] key_dir".to_owned(), d.key_dir.clone(), true));
        let names: &[&str] = match d.signer {
            Signer::Opendkim => &["KeyTable", "SigningTable"],
            Signer::Rspamd => &["dkim_signing.conf"],
            Signer::Amavis => &["dkim_keys.conf"],
        };
        for n in names {
            owned.push(("[dkim] signer_dir".to_owned(), d.signer_dir.join(n), false));
        }
    }
    for t in targets {
        for slot in &t.slots {
            for (role, path) in slot.files.iter() {
                let clash = owned.iter().find(|(_, other, is_dir)| {
                    if *is_dir {
                        path.starts_with(other) || other.starts_with(path)
                    } else {
                        path == other
                    }
                });
                if let Some((key, other, is_dir)) = clash {
                    let how = if !*is_dir {
                        "is the signer file"
                    } else if path.starts_with(other) {
                        "is inside"
                    } else {
                        "contains"
                    };
                    return Err(format!(
                        "target {:?}: key `{}` ({}) {how} `{key}` ({}): mxkeys would overwrite its own files",
                        t.name,
                        role.as_str(),
                        path.display(),
                        other.display()
                    ));
                }
            }
        }
    }
    Ok(())
}

fn validate_target(
    t: RawTarget,
    hostname: Option<&DnsName>,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<Target, (String, String)> {
    let name = t.name.clone();
    let fail = |m: String| (name.clone(), m);
    if t.name.is_empty() {
        return Err(fail("key `name`: must not be empty".to_owned()));
    }
    let domains = match t.domains {
        Some(d) if d.is_empty() => return Err(fail("key `domains`: must not be empty".to_owned())),
        Some(d) => d
            .iter()
            .map(|s| DnsName::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("key `domains`: {e}")))?,
        None => match hostname {
            Some(h) => vec![h.clone()],
            None => match machine_hostname() {
                Some(h) => vec![h],
                None => {
                    return Err(fail(
                        "no `domains`, no `hostname`, and the machine's host name is not usable"
                            .to_owned(),
                    ));
                }
            },
        },
    };
    let own_files = RawFiles {
        fullchain: t.fullchain,
        key: t.key,
        combined: t.combined,
        cert: t.cert,
        chain: t.chain,
    };
    let has_own = own_files.fullchain.is_some()
        || own_files.key.is_some()
        || own_files.combined.is_some()
        || own_files.cert.is_some()
        || own_files.chain.is_some();
    let slot_files = |raw: RawFiles, what: &str| -> Result<TargetFiles, (String, String)> {
        let files = TargetFiles {
            fullchain: raw.fullchain.as_deref().map(abs),
            key: raw.key.as_deref().map(abs),
            combined: raw.combined.as_deref().map(abs),
            cert: raw.cert.as_deref().map(abs),
            chain: raw.chain.as_deref().map(abs),
        };
        if files.iter().next().is_none() {
            return Err(fail(format!(
                "{what}no file to write: set at least one of `fullchain`, `key`, `combined`, `cert`, `chain`"
            )));
        }
        if files.key.is_none() && files.combined.is_none() {
            return Err(fail(format!(
                "{what}writes a certificate but no private key: set `key` or `combined`"
            )));
        }
        Ok(files)
    };
    let slots = match (t.rsa, t.ecdsa) {
        (None, None) => {
            let key_type = match t.key_type {
                None | Some(RawKeyType::Any) => KeyTypeFilter::Any,
                Some(RawKeyType::Rsa) => KeyTypeFilter::Rsa,
                Some(RawKeyType::Ecdsa) => KeyTypeFilter::Ecdsa,
                Some(RawKeyType::Dual) => {
                    return Err(fail(
                        "key `key_type`: \"dual\" needs the [target.rsa] and [target.ecdsa] tables"
                            .to_owned(),
                    ));
                }
            };
            vec![Slot {
                label: None,
                key_type,
                files: slot_files(own_files, "")?,
            }]
        }
        (rsa, ecdsa) => {
            if has_own {
                return Err(fail(
                    "file keys go inside [target.rsa] and [target.ecdsa] when those tables are used"
                        .to_owned(),
                ));
            }
            if !matches!(t.key_type, None | Some(RawKeyType::Dual)) {
                return Err(fail(
                    "key `key_type`: with [target.rsa]/[target.ecdsa] leave it out or set \"dual\""
                        .to_owned(),
                ));
            }
            if t.key_type == Some(RawKeyType::Dual) && (rsa.is_none() || ecdsa.is_none()) {
                return Err(fail(
                    "key `key_type`: \"dual\" needs both [target.rsa] and [target.ecdsa]"
                        .to_owned(),
                ));
            }
            let mut slots = Vec::new();
            if let Some(files) = ecdsa {
                slots.push(Slot {
                    label: Some("ecdsa"),
                    key_type: KeyTypeFilter::Ecdsa,
                    files: slot_files(files, "[ecdsa]: ")?,
                });
            }
            if let Some(files) = rsa {
                slots.push(Slot {
                    label: Some("rsa"),
                    key_type: KeyTypeFilter::Rsa,
                    files: slot_files(files, "[rsa]: ")?,
                });
            }
            slots
        }
    };
    for v in &t.verify {
        if v.address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(fail(format!(
                "key `verify`: address {:?} is not host:port like \"127.0.0.1:25\"",
                v.address
            )));
        }
    }
    let key_mode = match t.mode.as_deref() {
        None => 0o600,
        Some(m) => parse_mode(m).map_err(|e| fail(format!("key `mode`: {e}")))?,
    };
    let mut reloads = Vec::new();
    if let Some(argv) = t.reload {
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(fail(
                "key `reload`: an argument list whose first item is the program".to_owned(),
            ));
        }
        reloads.push(Reload::Command(argv));
    }
    if let Some(sig) = t.reload_signal {
        let signal = parse_signal(&sig.signal)
            .map_err(|e| fail(format!("key `reload_signal.signal`: {e}")))?;
        reloads.push(Reload::Signal {
            pidfile: abs(&sig.pidfile),
            signal,
        });
    }
    for (key, v) in [("owner", &t.owner), ("group", &t.group)] {
        if v.as_deref().is_some_and(str::is_empty) {
            return Err(fail(format!("key `{key}`: must not be empty")));
        }
    }
    Ok(Target {
        name: t.name,
        domains,
        slots,
        key_mode,
        owner: t.owner,
        group: t.group,
        reloads,
        reload_timeout: t.reload_timeout.unwrap_or(DEFAULT_RELOAD_TIMEOUT),
        verify: t.verify,
        verify_timeout: t.verify_timeout.unwrap_or(DEFAULT_VERIFY_TIMEOUT),
        strict_permissions: t.strict_permissions,
    })
}

#[allow(clippy::too_many_arguments)]
fn validate_acme_source(
    name: String,
    domains: Vec<String>,
    challenge: &str,
    (http_listen, webroot, dns): (Option<String>, Option<PathBuf>, Option<String>),
    key_type: AcmeKeyType,
    reuse_key: bool,
    state_dir: &crate::state::StateDir,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<AcmeSource, String> {
    let fail = |m: String| format!("acme source {name:?}: {m}");
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        return Err(fail(
            "key `name`: letters, digits, '-', '_' and '.' only (it names a directory)".to_owned(),
        ));
    }
    if domains.is_empty() {
        return Err(fail("key `domains`: at least one name".to_owned()));
    }
    let domains = domains
        .iter()
        .map(|d| DnsName::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("key `domains`: {e}")))?;
    let challenge = match (challenge, http_listen, webroot, dns) {
        ("http-01", Some(_), Some(_), _) => {
            return Err(fail("set `http_listen` or `webroot`, not both".to_owned()));
        }
        ("http-01", _, _, Some(_)) => {
            return Err(fail(
                "key `dns` goes with challenge = \"dns-01\"".to_owned(),
            ));
        }
        ("http-01", None, Some(root), None) => Challenge::Http01Webroot(abs(&root)),
        ("http-01", listen, None, None) => {
            let listen = listen.unwrap_or_else(|| "0.0.0.0:80".to_owned());
            Challenge::Http01Listen(listen.parse().map_err(|_| {
                fail(format!(
                    "key `http_listen`: {listen:?} is not an address:port like \"0.0.0.0:80\""
                ))
            })?)
        }
        ("dns-01", None, None, Some(provider)) => Challenge::Dns01 { provider },
        ("dns-01", _, _, None) => {
            return Err(fail(
                "challenge = \"dns-01\" needs `dns`, the name of a [dns.NAME] provider".to_owned(),
            ));
        }
        ("dns-01", _, _, Some(_)) => {
            return Err(fail(
                "`http_listen` and `webroot` go with challenge = \"http-01\"".to_owned(),
            ));
        }
        (other, _, _, _) => {
            return Err(fail(format!(
                "key `challenge`: {other:?} is not \"http-01\" or \"dns-01\""
            )));
        }
    };
    if !matches!(challenge, Challenge::Dns01 { .. })
        && let Some(w) = domains.iter().find(|d| d.is_wildcard())
    {
        return Err(fail(format!(
            "{w} is a wildcard: CAs issue wildcards only through dns-01"
        )));
    }
    let dir = state_dir.acme_source(&name);
    Ok(AcmeSource {
        name,
        domains,
        challenge,
        key_type,
        reuse_key,
        dir,
    })
}

fn validate_acme(raw: RawAcme, abs: &dyn Fn(&Path) -> PathBuf) -> Result<AcmeAccount, String> {
    let directory = match raw.directory.as_deref() {
        None | Some("letsencrypt") => LETSENCRYPT.to_owned(),
        Some("letsencrypt-staging") => LETSENCRYPT_STAGING.to_owned(),
        Some(url) if url.starts_with("https://") => url.to_owned(),
        Some(other) => {
            return Err(format!(
                "key `directory`: {other:?} is not an https:// URL, \"letsencrypt\" or \"letsencrypt-staging\""
            ));
        }
    };
    let eab = match (raw.eab_kid, raw.eab_hmac_key_file, raw.eab_hmac_key_env) {
        (None, None, None) => None,
        (Some(kid), Some(f), None) => Some((kid, Secret::File(abs(&f)))),
        (Some(kid), None, Some(e)) => Some((kid, Secret::Env(e))),
        (None, _, _) => return Err("`eab_hmac_key_file`/`_env` needs `eab_kid`".to_owned()),
        (Some(_), None, None) => {
            return Err("`eab_kid` needs `eab_hmac_key_file` or `eab_hmac_key_env`".to_owned());
        }
        (Some(_), Some(_), Some(_)) => {
            return Err("set only one of `eab_hmac_key_file` and `eab_hmac_key_env`".to_owned());
        }
    };
    if let Some(email) = &raw.email
        && (!email.contains('@') || email.contains(char::is_whitespace))
    {
        return Err(format!("key `email`: {email:?} is not an e-mail address"));
    }
    Ok(AcmeAccount {
        directory,
        email: raw.email,
        ca_bundle: raw.ca_bundle.as_deref().map(abs),
        eab,
        profile: raw.profile,
    })
}

/// A DKIM selector must be one DNS label: letters, digits and '-', not
/// at either end, 1 to 63 characters (it also goes into key file paths
/// and the signer's configuration). Pure.
pub fn selector_label(selector: &str) -> Result<(), String> {
    if selector.is_empty()
        || selector.len() > 63
        || selector.starts_with('-')
        || selector.ends_with('-')
        || !selector
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(format!(
            "selector {selector:?}: must be one DNS label of 1 to 63 letters, digits and '-' (not at either end)"
        ));
    }
    Ok(())
}

fn validate_dkim(
    raw: RawDkim,
    state_dir: &crate::state::StateDir,
    dns: &std::collections::BTreeMap<String, DnsProvider>,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<Dkim, String> {
    if raw.domains.is_empty() {
        return Err("key `domains`: at least one domain".to_owned());
    }
    let domains = raw
        .domains
        .iter()
        .map(|d| DnsName::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("key `domains`: {e}"))?;
    if let Some(w) = domains.iter().find(|d| d.is_wildcard()) {
        return Err(format!(
            "key `domains`: {w}: DKIM domains cannot be wildcards"
        ));
    }
    let mut algorithms = raw
        .algorithms
        .unwrap_or_else(|| vec![DkimAlgorithm::Rsa2048]);
    algorithms.sort();
    algorithms.dedup();
    if algorithms.is_empty() {
        return Err("key `algorithms`: at least one".to_owned());
    }
    if !algorithms.iter().any(|a| a.is_rsa()) {
        return Err(
            "key `algorithms`: Ed25519 alone is refused: large receivers still do not verify it (RFC 8463); add \"rsa-2048\""
                .to_owned(),
        );
    }
    if algorithms.contains(&DkimAlgorithm::Rsa1024) {
        return Err(
            "key `algorithms`: \"rsa-1024\" cannot be generated (aws-lc-rs makes RSA keys of 2048 bits or more; RFC 8301 recommends 2048): use \"rsa-2048\" (an existing rsa-1024 key can still be adopted with `mxkeys dkim import`)"
                .to_owned(),
        );
    }
    if algorithms.iter().filter(|a| a.is_rsa()).count() > 1 {
        return Err("key `algorithms`: one RSA size at a time".to_owned());
    }
    if raw.signer == Signer::Amavis && algorithms.contains(&DkimAlgorithm::Ed25519) {
        return Err(
            "amavis signs with RSA only: remove \"ed25519\" or use opendkim or rspamd".to_owned(),
        );
    }
    let selector = raw.selector.unwrap_or_else(|| "{alg}{date}".to_owned());
    let sample = selector
        .replace("{alg}", "r")
        .replace("{date}", "20260101")
        .replace("{n}", "1");
    if selector_label(&sample).is_err() {
        return Err(format!(
            "key `selector`: {selector:?} must give a DNS label of letters, digits and '-' ({{alg}}, {{date}}, {{n}} are replaced)"
        ));
    }
    if dns.get(&raw.dns).is_none() && raw.dns != "manual" {
        return Err(format!(
            "key `dns`: no [dns.{}] table (or \"manual\")",
            raw.dns
        ));
    }
    let day = |d: u64| Duration::from_secs(d * 86_400);
    let rotate_every = raw.rotate_every.unwrap_or(day(90));
    if rotate_every < Duration::from_secs(60) {
        return Err("key `rotate_every`: at least 1m".to_owned());
    }
    let key_mode = match raw.key_mode.as_deref() {
        None => 0o600,
        Some(m) => parse_mode(m).map_err(|e| format!("key `key_mode`: {e}"))?,
    };
    let mut reload = Vec::new();
    if let Some(argv) = raw.reload {
        if argv.first().is_none_or(|a| a.is_empty()) {
            return Err(
                "key `reload`: an argument list whose first item is the program".to_owned(),
            );
        }
        reload.push(Reload::Command(argv));
    }
    if let Some(sig) = raw.reload_signal {
        let signal =
            parse_signal(&sig.signal).map_err(|e| format!("key `reload_signal.signal`: {e}"))?;
        reload.push(Reload::Signal {
            pidfile: abs(&sig.pidfile),
            signal,
        });
    }
    Ok(Dkim {
        domains,
        algorithms,
        selector,
        key_dir: raw
            .key_dir
            .as_deref()
            .map(abs)
            .unwrap_or_else(|| state_dir.default_dkim_key_dir()),
        dns: raw.dns,
        ttl: raw.ttl.unwrap_or(300),
        rotate_every,
        lead: raw.lead.unwrap_or(Duration::from_secs(48 * 3600)),
        drain: raw.drain.unwrap_or(day(7)),
        revoke_hold: raw.revoke_hold.unwrap_or(day(30)),
        revoke_settle: raw.revoke_settle.unwrap_or(Duration::from_secs(5)),
        signer: raw.signer,
        signer_dir: abs(&raw.signer_dir),
        key_owner: raw.key_owner,
        key_group: raw.key_group,
        key_mode,
        reload,
        reload_timeout: raw.reload_timeout.unwrap_or(DEFAULT_RELOAD_TIMEOUT),
    })
}

/// Parses `host:port` (port 53 when absent) into a socket address.
fn parse_server(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, 53));
    }
    Err(format!(
        "{s:?} is not an IP address with an optional port, like \"192.0.2.1:53\""
    ))
}

const DEFAULT_PROPAGATION_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);

fn validate_dns(
    name: &str,
    raw: RawDns,
    abs: &dyn Fn(&Path) -> PathBuf,
) -> Result<DnsProvider, String> {
    let secret = |file: Option<PathBuf>, env: Option<String>, what: &str| match (file, env) {
        (Some(f), None) => Ok(Secret::File(abs(&f))),
        (None, Some(e)) => Ok(Secret::Env(e)),
        (None, None) => Err(format!(
            "set `{what}_file` or `{what}_env`: secrets are read from a file or the environment, never from this file"
        )),
        (Some(_), Some(_)) => Err(format!("set only one of `{what}_file` and `{what}_env`")),
    };
    let servers = |list: Option<Vec<String>>| -> Result<Option<Vec<std::net::SocketAddr>>, String> {
        list.map(|l| {
            l.iter()
                .map(|s| parse_server(s).map_err(|e| format!("key `nameservers`: {e}")))
                .collect()
        })
        .transpose()
    };
    let (kind, zone, nameservers, resolver, interval, timeout) = match raw {
        RawDns::Rfc2136 {
            server,
            zone,
            tsig_name,
            tsig_algorithm,
            tsig_secret_file,
            tsig_secret_env,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => {
            let algorithm = tsig_algorithm.unwrap_or_else(|| "hmac-sha256".to_owned());
            if !["hmac-sha256", "hmac-sha384", "hmac-sha512"].contains(&algorithm.as_str()) {
                return Err(format!(
                    "key `tsig_algorithm`: {algorithm:?} is not hmac-sha256, hmac-sha384 or hmac-sha512"
                ));
            }
            let kind = DnsKind::Rfc2136 {
                server: parse_server(&server).map_err(|e| format!("key `server`: {e}"))?,
                tsig_name,
                tsig_algorithm: algorithm,
                tsig_secret: secret(tsig_secret_file, tsig_secret_env, "tsig_secret")?,
            };
            (
                kind,
                zone,
                nameservers,
                resolver,
                propagation_interval,
                propagation_timeout,
            )
        }
        RawDns::Cloudflare {
            api_token_file,
            api_token_env,
            api_url,
            zone,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => {
            let kind = DnsKind::Cloudflare {
                api_token: secret(api_token_file, api_token_env, "api_token")?,
                api_url,
            };
            (
                kind,
                zone,
                nameservers,
                resolver,
                propagation_interval,
                propagation_timeout,
            )
        }
        RawDns::Exec {
            command,
            zone,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => {
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err(
                    "key `command`: an argument list whose first item is the program".to_owned(),
                );
            }
            (
                DnsKind::Exec { command },
                zone,
                nameservers,
                resolver,
                propagation_interval,
                propagation_timeout,
            )
        }
        RawDns::Manual {
            zone,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => (
            DnsKind::Manual,
            zone,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        ),
    };
    let zone = zone
        .map(|z| DnsName::parse(&z).map(|n| n.as_str().to_owned()))
        .transpose()
        .map_err(|e| format!("key `zone`: {e}"))?;
    Ok(DnsProvider {
        name: name.to_owned(),
        kind,
        zone,
        nameservers: servers(nameservers)?,
        resolver: resolver
            .map(|r| parse_server(&r).map_err(|e| format!("key `resolver`: {e}")))
            .transpose()?,
        propagation_interval: interval.unwrap_or(DEFAULT_PROPAGATION_INTERVAL),
        propagation_timeout: timeout.unwrap_or(DEFAULT_PROPAGATION_TIMEOUT),
    })
}

/// Parses a signal name: `HUP`, `SIGHUP`, `usr1`...
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal, String> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse()
        .map_err(|_| format!("{s:?} is not a signal name like \"HUP\" or \"USR1\""))
}

/// Parses an octal file mode like `"0640"`. Modes that let others read a
/// key are refused.
fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let mode = u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777 && !digits.is_empty())
        .ok_or_else(|| format!("{s:?} is not an octal file mode like \"0600\""))?;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{s:?} lets every user of the machine read the private key; use 0600 or 0640"
        ));
    }
    if mode & 0o400 == 0 {
        return Err(format!("{s:?} does not let the owner read the file"));
    }
    Ok(mode)
}

/// Removes `.` and `..` components lexically, so messages show the path a
/// person would write (symlinks are not resolved: that is the reader's job).
fn normalize(path: &Path) -> PathBuf {
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

/// The machine's host name, when it is a usable DNS name.
fn machine_hostname() -> Option<DnsName> {
    let name = nix::unistd::gethostname().ok()?;
    DnsName::parse(name.to_str()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/mxkeys/test.toml"), text)
    }

    const TARGET: &str = "[[target]]\nname = \"t\"\ndomains = [\"mail.example.com\"]\n";

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let c = parse(&format!(
            "[[source]]\ntype = \"traefik\"\npath = \"acme.json\"\n{TARGET}fullchain = \"out/f.pem\"\nkey = \"/k.pem\"\n"
        ))
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/mxkeys"));
        assert_eq!(
            c.sources[0].kind,
            SourceKind::Traefik {
                path: "/etc/mxkeys/acme.json".into(),
                resolvers: None
            }
        );
        let t = &c.targets[0];
        assert_eq!(t.slots.len(), 1);
        assert_eq!(
            t.slots[0].files.fullchain,
            Some("/etc/mxkeys/out/f.pem".into())
        );
        assert_eq!(t.key_mode, 0o600);
        assert_eq!(t.reload_timeout, Duration::from_secs(60));
    }

    #[test]
    fn unknown_key_names_the_key_and_line() {
        let e = parse("hostname = \"a.example\"\nfoo = 1\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("/etc/mxkeys/test.toml"), "{msg}");
        assert!(msg.contains("foo") && msg.contains("line 2"), "{msg}");
        let e = parse(&format!("{TARGET}key = \"k\"\nkeys = \"x\"\n")).unwrap_err();
        assert!(e.to_string().contains("keys"), "{e}");
        let e = parse("[[source]]\ntype = \"traefik\"\npath = \"a\"\nresolver = [\"le\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("resolver"), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        for (extra, needle) in [
            ("key = \"k\"\nmode = \"0999\"\n", "mode"),
            ("key = \"k\"\nmode = \"0644\"\n", "every user"),
            ("fullchain = \"f\"\n", "no private key"),
            ("key = \"k\"\nreload = []\n", "reload"),
            ("key = \"k\"\nkey_type = \"dsa\"\n", "dsa"),
            ("key = \"k\"\nreload_timeout = \"soon\"\n", "reload_timeout"),
        ] {
            let e = parse(&format!("{TARGET}{extra}")).unwrap_err().to_string();
            assert!(e.contains(needle), "{extra:?}: {e}");
        }
        let e = parse("[[target]]\nname = \"t\"\ndomains = [\"a.*.example\"]\nkey = \"k\"\n")
            .unwrap_err();
        assert!(e.to_string().contains("wildcard"), "{e}");
    }

    #[test]
    fn the_same_file_in_two_targets_is_refused() {
        let e = parse(&format!(
            "{TARGET}key = \"k\"\n[[target]]\nname = \"u\"\ndomains = [\"a.example\"]\nkey = \"k\"\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("another target"), "{e}");
    }

    #[test]
    fn relative_paths_are_normalized() {
        assert_eq!(
            normalize(Path::new("config/../out/./a.pem")),
            PathBuf::from("out/a.pem")
        );
        assert_eq!(normalize(Path::new("../a")), PathBuf::from("../a"));
    }

    #[test]
    fn shipped_example_configurations_are_valid() {
        for name in ["mxkeys.toml", "demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name);
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.targets.is_empty(), "{name}");
        }
    }

    #[test]
    fn daemon_keys_and_reload_signal() {
        let c = parse(&format!(
            "watch = \"poll\"\npoll_interval = \"500ms\"\nexpiry_warning = \"7d\"\n[metrics]\nlisten = \"127.0.0.1:9325\"\n{TARGET}key = \"k\"\nreload = [\"postfix\", \"reload\"]\nreload_signal = {{ pidfile = \"/run/dovecot/master.pid\", signal = \"usr1\" }}\n"
        ))
        .unwrap();
        assert_eq!(c.daemon.watch, WatchMode::Poll);
        assert_eq!(c.daemon.poll_interval, Duration::from_millis(500));
        assert_eq!(c.daemon.expiry_warning, Duration::from_secs(7 * 86_400));
        assert_eq!(
            c.daemon.metrics_listen,
            Some("127.0.0.1:9325".parse().unwrap())
        );
        assert_eq!(
            c.targets[0].reloads,
            vec![
                Reload::Command(vec!["postfix".into(), "reload".into()]),
                Reload::Signal {
                    pidfile: "/run/dovecot/master.pid".into(),
                    signal: nix::sys::signal::Signal::SIGUSR1
                }
            ]
        );
        let e = parse(&format!(
            "{TARGET}key = \"k\"\nreload_signal = {{ pidfile = \"/p\", signal = \"NOPE\" }}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("reload_signal.signal"), "{e}");
        let e = parse("[metrics]\nlisten = \"localhost\"\n").unwrap_err();
        assert!(e.to_string().contains("metrics.listen"), "{e}");
    }

    #[test]
    fn dual_targets_and_verify() {
        let c = parse(
            "[[target]]\nname = \"dovecot\"\ndomains = [\"a.example\"]\nkey_type = \"dual\"\nverify = [{ address = \"127.0.0.1:993\", protocol = \"tls\" }]\nverify_timeout = \"3s\"\n[target.rsa]\nkey = \"r.key\"\nfullchain = \"r.pem\"\n[target.ecdsa]\ncombined = \"e.pem\"\n",
        )
        .unwrap();
        let t = &c.targets[0];
        assert_eq!(t.slots.len(), 2);
        assert_eq!(t.slots[0].key_type, KeyTypeFilter::Ecdsa);
        assert_eq!(t.slot_name(&t.slots[1]), "dovecot/rsa");
        assert_eq!(t.verify[0].protocol, VerifyProtocol::Tls);
        assert_eq!(t.verify_timeout, Duration::from_secs(3));
        for (text, needle) in [
            ("key_type = \"dual\"\nkey = \"k\"\n", "dual"),
            ("key = \"k\"\n[target.rsa]\nkey = \"r\"\n", "inside"),
            (
                "key_type = \"rsa\"\n[target.rsa]\nkey = \"r\"\n",
                "key_type",
            ),
            (
                "[target.rsa]\nfullchain = \"r\"\n",
                "[rsa]: writes a certificate but no private key",
            ),
            (
                "key = \"k\"\nverify = [{ address = \"localhost\", protocol = \"smtp\" }]\n",
                "host:port",
            ),
            (
                "key = \"k\"\nverify = [{ address = \"a:1\", protocol = \"ftp\" }]\n",
                "ftp",
            ),
        ] {
            let e = parse(&format!("{TARGET}{text}")).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn dns_providers_name_their_secrets_never_hold_them() {
        let c = parse(
            "[dns.bind]\ntype = \"rfc2136\"\nserver = \"127.0.0.1:5353\"\nzone = \"Example.Test.\"\ntsig_name = \"mxkeys\"\ntsig_secret_file = \"tsig.secret\"\nnameservers = [\"127.0.0.1:5353\", \"::1\"]\n[dns.cf]\ntype = \"cloudflare\"\napi_token_env = \"CF_TOKEN\"\npropagation_timeout = \"2m\"\n[dns.hook]\ntype = \"exec\"\ncommand = [\"/usr/local/bin/dns-hook\"]\nresolver = \"192.0.2.53\"\n[dns.paste]\ntype = \"manual\"\n",
        )
        .unwrap();
        let bind = &c.dns["bind"];
        assert_eq!(bind.zone.as_deref(), Some("example.test"));
        assert_eq!(
            bind.kind,
            DnsKind::Rfc2136 {
                server: "127.0.0.1:5353".parse().unwrap(),
                tsig_name: "mxkeys".into(),
                tsig_algorithm: "hmac-sha256".into(),
                tsig_secret: Secret::File("/etc/mxkeys/tsig.secret".into()),
            }
        );
        assert_eq!(
            bind.nameservers.as_ref().unwrap()[1],
            "[::1]:53".parse().unwrap()
        );
        assert_eq!(c.dns["cf"].propagation_timeout, Duration::from_secs(120));
        assert_eq!(c.dns["cf"].propagation_interval, Duration::from_secs(2));
        assert_eq!(c.dns["paste"].kind, DnsKind::Manual);
        assert_eq!(
            c.dns["hook"].resolver,
            Some("192.0.2.53:53".parse().unwrap())
        );
        assert_eq!(c.dns["bind"].resolver, None);
        for (text, needle) in [
            (
                "[dns.cf]\ntype = \"cloudflare\"\napi_token = \"secret123\"\n",
                "api_token",
            ),
            (
                "[dns.cf]\ntype = \"cloudflare\"\napi_token_env = \"X\"\nzone = 5\nx = \"secret123\"\n",
                "zone",
            ),
            ("[dns.cf]\ntype = \"cloudflare\"\n", "never from this file"),
            (
                "[dns.b]\ntype = \"rfc2136\"\nserver = \"ns.example\"\ntsig_name = \"k\"\ntsig_secret_env = \"S\"\n",
                "server",
            ),
            (
                "[dns.b]\ntype = \"rfc2136\"\nserver = \"127.0.0.1\"\ntsig_name = \"k\"\ntsig_secret_env = \"S\"\ntsig_algorithm = \"hmac-md5\"\n",
                "hmac-md5",
            ),
            ("[dns.x]\ntype = \"route53\"\n", "route53"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains("secret123"), "{e}");
        }
    }

    #[test]
    fn acme_sources_and_account() {
        let c = parse(
            "[acme]\ndirectory = \"letsencrypt-staging\"\nemail = \"admin@example.com\"\nca_bundle = \"ca.pem\"\nprofile = \"tlsserver\"\n[dns.cf]\ntype = \"cloudflare\"\napi_token_env = \"T\"\n[[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [\"mail.example.com\", \"*.example.com\"]\nchallenge = \"dns-01\"\ndns = \"cf\"\nkey_type = \"rsa-3072\"\n[[source]]\ntype = \"acme\"\nname = \"web\"\ndomains = [\"www.example.com\"]\nchallenge = \"http-01\"\n",
        )
        .unwrap();
        assert_eq!(c.acme.directory, LETSENCRYPT_STAGING);
        assert_eq!(c.acme.ca_bundle, Some("/etc/mxkeys/ca.pem".into()));
        let sources: Vec<_> = c.acme_sources().collect();
        assert_eq!(sources[0].key_type, AcmeKeyType::Rsa3072);
        assert_eq!(sources[0].dir, PathBuf::from("/var/lib/mxkeys/acme/mail"));
        assert_eq!(
            sources[1].challenge,
            Challenge::Http01Listen("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(c.sources[0].label, "acme:mail");
        for (text, needle) in [
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"*.example.com\"]\nchallenge = \"http-01\"\n",
                "wildcard",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"a.example\"]\nchallenge = \"dns-01\"\ndns = \"nope\"\n",
                "[dns.nope]",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"../x\"\ndomains = [\"a.example\"]\nchallenge = \"http-01\"\n",
                "name",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"a.example\"]\nchallenge = \"tls-alpn-01\"\n",
                "tls-alpn-01",
            ),
            (
                "[[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"a.example\"]\nchallenge = \"http-01\"\nkey_type = \"rsa-1024\"\n",
                "rsa-1024",
            ),
            ("[acme]\ndirectory = \"http://ca.example/dir\"\n", "https"),
            ("[acme]\neab_kid = \"k\"\n", "eab_hmac_key"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn dkim_table() {
        let c = parse(
            "[dns.cf]\ntype = \"cloudflare\"\napi_token_env = \"T\"\n[dkim]\ndomains = [\"example.com\", \"example.org\"]\nalgorithms = [\"ed25519\", \"rsa-2048\"]\ndns = \"cf\"\nlead = \"0s\"\nsigner = \"opendkim\"\nsigner_dir = \"/etc/opendkim\"\nreload = [\"sh\", \"-c\", \"kill -USR1 1\"]\n",
        )
        .unwrap();
        let d = c.dkim.unwrap();
        assert_eq!(
            d.algorithms,
            vec![DkimAlgorithm::Rsa2048, DkimAlgorithm::Ed25519]
        );
        assert_eq!(d.selector, "{alg}{date}");
        assert_eq!(d.lead, Duration::ZERO);
        assert_eq!(d.rotate_every, Duration::from_secs(90 * 86_400));
        assert_eq!(d.key_dir, PathBuf::from("/var/lib/mxkeys/dkim"));
        for (text, needle) in [
            (
                "algorithms = [\"ed25519\"]\nsigner = \"opendkim\"\n",
                "Ed25519 alone",
            ),
            (
                "algorithms = [\"rsa-2048\", \"ed25519\"]\nsigner = \"amavis\"\n",
                "amavis",
            ),
            (
                "signer = \"opendkim\"\nselector = \"bad_sel\"\n",
                "selector",
            ),
            ("signer = \"postfix\"\n", "postfix"),
            (
                "signer = \"opendkim\"\nalgorithms = [\"rsa-512\"]\n",
                "rsa-512",
            ),
            (
                "signer = \"opendkim\"\nalgorithms = [\"rsa-1024\"]\n",
                "\"rsa-1024\" cannot be generated",
            ),
        ] {
            let e = parse(&format!(
                "[dkim]\ndomains = [\"example.com\"]\ndns = \"manual\"\nsigner_dir = \"/x\"\n{text}"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn modes_parse_as_octal() {
        assert_eq!(parse_mode("0640"), Ok(0o640));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert!(parse_mode("0604").is_err());
        assert!(parse_mode("").is_err());
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
