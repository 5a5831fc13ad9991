//! The configuration: where it comes from, and the short orchestrator
//! that turns its text into a validated [`Config`].
//!
//! Parsing is strict: an unknown key, a bad value or an impossible target is
//! a [`ConfigError`] naming the file, the key and the problem, and `mxkeys`
//! exits with status 2. Relative paths are resolved against the directory of
//! the configuration file, so a configuration means the same thing from any
//! working directory.
//!
//! Raw input is kept apart from validated settings (as ripgrep does):
//! `raw` holds the serde shapes, one module per section validates its
//! part (`source`, `target`, `acme`, `dns`, `dkim`, `mta_sts` (also
//! `[tls_rpt]`), `daemon`; `env` builds
//! the text of container mode), and `value` the parsers they share.
//! [`Config::parse`] is pure: the facts of the machine it needs (the
//! working directory, the host name) come in as a [`Host`].

use std::path::{Path, PathBuf};

mod acme;
mod cluster;
mod daemon;
mod dkim;
mod dns;
pub mod env;
mod mta_sts;
mod raw;
mod source;
mod target;
mod value;

pub use self::acme::{
    AcmeAccount, AcmeKeyType, AcmeSource, Challenge, LETSENCRYPT, LETSENCRYPT_STAGING,
};
pub use self::cluster::{
    Cluster, ClusterBackend, ClusterTls, DEFAULT_LEASE_TTL, DEFAULT_PREFIX, HostId,
};
pub use self::daemon::{Daemon, WatchMode};
pub use self::dkim::{Adopt, AdoptCheck, AdoptFrom, Dkim, Signer};
pub use self::dns::{DnsKind, DnsProvider};
pub use self::mta_sts::{DEFAULT_MTA_STS_MAX_AGE, MtaSts, Serve, TlsRpt};
pub use self::source::{SourceConfig, SourceKind};
pub use self::target::{
    DEFAULT_DANE_HOLD_MAX, DEFAULT_DANE_TTL, Dane, FileRole, Slot, Target, TargetFiles, Verify,
    VerifyProtocol,
};
pub use self::value::{Reload, Secret, SecretError, ValueError, selector_label};
pub use crate::cert::KeyTypeFilter;
pub use crate::dkim::machine::DkimAlgorithm;

use crate::names::DnsName;
use crate::state::StateDir;

/// The default configuration path when neither `--config` nor
/// `$MXKEYS_CONFIG` names one.
pub const DEFAULT_PATH: &str = "/etc/mxkeys/mxkeys.toml";
const DEFAULT_STATE_DIR: &str = "/var/lib/mxkeys";

/// A configuration that could not be used. Displayed as one line.
#[derive(Debug, thiserror::Error)]
#[error("configuration {}: {message}", path.display())]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

/// The facts of the machine a configuration is read on: what a relative
/// path and a target without `domains` mean. Built once by each caller
/// ([`Host::current`]); tests give their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The working directory, against which a configuration path without a
    /// directory (and container mode's) is resolved.
    pub cwd: PathBuf,
    /// The machine's host name, when it is a usable DNS name: the domain
    /// of targets without `domains` when there is no `hostname` key.
    pub hostname: Option<DnsName>,
}

impl Host {
    /// This process's working directory and this machine's host name.
    pub fn current() -> Host {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|name| DnsName::parse(name.to_str()?).ok());
        Host {
            cwd: std::env::current_dir().unwrap_or_default(),
            hostname,
        }
    }
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
            Err(e) => Err(ConfigError {
                path: PathBuf::from(ENV_PATH),
                message: e.to_string(),
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
                    .map_err(|e| ConfigError {
                        path: PathBuf::from(ENV_PATH),
                        message: e.to_string(),
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
    pub fn load(&self, host: &Host) -> Result<Config, ConfigError> {
        let text = self.text()?;
        let config = match self {
            ConfigSource::File(path) => Config::parse(path, &text, host),
            ConfigSource::Environment => Config::parse(Path::new(ENV_PATH), &text, host),
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
    pub state_dir: StateDir,
    pub sources: Vec<SourceConfig>,
    pub targets: Vec<Target>,
    pub daemon: Daemon,
    /// `[dns.NAME]` providers, by name.
    pub dns: std::collections::BTreeMap<String, DnsProvider>,
    /// The `[acme]` table (defaults when absent).
    pub acme: AcmeAccount,
    /// The `[dkim]` table, when DKIM keys are managed.
    pub dkim: Option<Dkim>,
    /// The `[mta_sts]` table, when MTA-STS policies are published.
    pub mta_sts: Option<MtaSts>,
    /// The `[tls_rpt]` table, when TLS-RPT records are published.
    pub tls_rpt: Option<TlsRpt>,
    /// What scopes this host's writes (`host_id`, else the first label of
    /// the host name); `None` when neither is usable.
    pub host_id: Option<HostId>,
    /// The `[cluster]` table, when hosts agree through etcd.
    pub cluster: Option<Cluster>,
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

/// What every section validator shares: the file messages name, and the
/// directory relative paths are resolved against.
struct Context<'a> {
    path: &'a Path,
    base: PathBuf,
}

impl Context<'_> {
    /// An absolute path, `.` and `..` removed, so watches and messages do
    /// not depend on the working directory.
    fn abs(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            value::normalize(p)
        } else {
            value::normalize(&self.base.join(p))
        }
    }

    /// The one-line error naming the file.
    fn error(&self, message: impl std::fmt::Display) -> ConfigError {
        ConfigError {
            path: self.path.to_owned(),
            message: message.to_string(),
        }
    }
}

impl Config {
    /// Validates configuration text that was read from `path` on `host`:
    /// each section in turn, then what ties sections together.
    pub fn parse(path: &Path, text: &str, host: &Host) -> Result<Self, ConfigError> {
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let ctx = Context {
            path,
            base: if base.is_absolute() {
                base
            } else {
                host.cwd.join(base)
            },
        };
        let raw = raw::from_toml(text).map_err(|e| ctx.error(e))?;
        let hostname = raw
            .hostname
            .as_deref()
            .map(DnsName::parse)
            .transpose()
            .map_err(|e| ctx.error(format!("key `hostname`: {e}")))?;
        let state_dir = StateDir::new(
            ctx.abs(
                raw.state_dir
                    .as_deref()
                    .unwrap_or(Path::new(DEFAULT_STATE_DIR)),
            ),
        );
        // The daemon's keys are read while `raw` is whole, but their error
        // is reported after the sources' and targets', as it always was.
        let daemon = daemon::daemon(&raw, &ctx);
        let mut sources = source::sources(raw.sources, &state_dir, &ctx)?;
        let targets = target::targets(
            raw.targets,
            hostname.as_ref().or(host.hostname.as_ref()),
            &ctx,
        )?;
        let daemon = daemon?;
        let dns = dns::providers(raw.dns, &ctx)?;
        acme::check_providers(&sources, &dns, &ctx)?;
        target::check_dane_providers(&targets, &dns, &ctx)?;
        acme::link_dane_targets(&mut sources, &targets);
        let acme = acme::account(raw.acme.unwrap_or_default(), &ctx)?;
        let dkim = raw
            .dkim
            .map(|d| dkim::dkim(d, &state_dir, &dns, &ctx))
            .transpose()?;
        target::check_overlaps(&targets, state_dir.path(), dkim.as_ref(), &ctx)?;
        let mta_sts = raw
            .mta_sts
            .map(|m| mta_sts::mta_sts(m, &dns, &ctx))
            .transpose()?;
        mta_sts::check_listen(mta_sts.as_ref(), daemon.metrics_listen, &sources, &ctx)?;
        let tls_rpt = raw
            .tls_rpt
            .map(|t| mta_sts::tls_rpt(t, mta_sts.as_ref(), &dns, &ctx))
            .transpose()?;
        let host_id = cluster::host_id(
            raw.host_id.as_deref(),
            hostname.as_ref().or(host.hostname.as_ref()),
            &ctx,
        )?;
        let cluster = raw.cluster.map(|c| cluster::cluster(c, &ctx)).transpose()?;
        let shared = sources
            .iter()
            .filter_map(|s| match &s.kind {
                SourceKind::Acme(a) if a.shared => Some(format!("acme source {:?}", a.name)),
                _ => None,
            })
            .chain(
                dkim.as_ref()
                    .filter(|d| d.shared)
                    .map(|_| "[dkim]".to_owned()),
            );
        cluster::check_shared(shared, cluster.as_ref(), host_id.as_ref(), &ctx)?;
        if let Some(d) = &dkim
            && d.selector.contains("{host}")
            && host_id.is_none()
        {
            return Err(ctx.error(
                "[dkim]: key `selector` uses {host} but there is no `host_id` (the machine's host name is not usable)",
            ));
        }
        Ok(Config {
            path: path.to_owned(),
            state_dir,
            sources,
            targets,
            daemon,
            dns,
            acme,
            dkim,
            mta_sts,
            tls_rpt,
            host_id,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The machine the unit tests read configurations on: a working
    /// directory and a host name that are nobody's real ones.
    pub(super) fn host() -> Host {
        Host {
            cwd: PathBuf::from("/srv/cwd"),
            hostname: Some(DnsName::parse("mx.host.test").unwrap()),
        }
    }

    pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/mxkeys/test.toml"), text, &host())
    }

    pub(super) const TARGET: &str = "[[target]]\nname = \"t\"\ndomains = [\"mail.example.com\"]\n";

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
    fn shipped_example_configurations_are_valid() {
        for name in ["mxkeys.toml", "demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("config")
                .join(name);
            let c = ConfigSource::File(path)
                .load(&Host::current())
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.targets.is_empty(), "{name}");
        }
    }

    #[test]
    fn a_configuration_without_a_directory_resolves_against_the_given_working_directory() {
        let text = "state_dir = \"state\"\n[[source]]\ntype = \"certbot\"\npath = \"../live\"\n[[target]]\nname = \"t\"\nkey = \"out/k.pem\"\n";
        for (path, base) in [
            ("mxkeys.toml", "/srv/cwd"),
            ("conf/mxkeys.toml", "/srv/cwd/conf"),
            ("/etc/mxkeys/mxkeys.toml", "/etc/mxkeys"),
        ] {
            let c = Config::parse(Path::new(path), text, &host()).unwrap();
            let base = Path::new(base);
            assert_eq!(c.state_dir, base.join("state"), "{path}");
            assert_eq!(
                c.sources[0].kind,
                SourceKind::Certbot {
                    path: value::normalize(&base.join("../live"))
                },
                "{path}"
            );
            assert_eq!(
                c.targets[0].slots[0].files.key,
                Some(base.join("out/k.pem")),
                "{path}"
            );
        }
        let elsewhere = Host {
            cwd: PathBuf::from("/opt/other"),
            ..host()
        };
        let c = Config::parse(Path::new("mxkeys.toml"), text, &elsewhere).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/opt/other/state"));
    }

    #[test]
    fn a_target_without_domains_serves_the_hostname_key_else_the_given_host_name() {
        let target = "[[target]]\nname = \"t\"\nkey = \"k\"\n";
        let c = parse(target).unwrap();
        assert_eq!(c.targets[0].domains[0].as_str(), "mx.host.test");
        let c = parse(&format!("hostname = \"Mail.Example.COM\"\n{target}")).unwrap();
        assert_eq!(c.targets[0].domains[0].as_str(), "mail.example.com");
        let nameless = Host {
            hostname: None,
            ..host()
        };
        let e = Config::parse(Path::new("/etc/mxkeys/test.toml"), target, &nameless)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the machine's host name is not usable"), "{e}");
    }
}
