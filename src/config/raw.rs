//! The configuration file's TOML shape, as written: serde structures only.
//!
//! Pure: [`from_toml`] turns text into these shapes or into one line naming
//! the line and key (never a value, which may be a secret pasted by
//! mistake). Unknown keys are refused (`deny_unknown_fields`) so a typo is
//! an error, not a silent default. Meaning (defaults, absolute paths,
//! cross-checks) is given by the section validators.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{AcmeKeyType, DkimAlgorithm, Signer, Verify, WatchMode};

/// Why configuration text is not TOML of the expected shape: where, and
/// toml's own reason, on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyntaxError {
    #[error("line {line} `{key}`: {message}")]
    AtKey {
        line: usize,
        key: String,
        message: String,
    },
    #[error("line {line}: {message}")]
    AtLine { line: usize, message: String },
    #[error("{0}")]
    Whole(String),
}

/// Parses configuration text into its raw shape.
pub(super) fn from_toml(text: &str) -> Result<RawConfig, SyntaxError> {
    toml::from_str(text).map_err(|e| {
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
                    Some(k) => SyntaxError::AtKey {
                        line,
                        key: k.to_owned(),
                        message: msg,
                    },
                    None => SyntaxError::AtLine { line, message: msg },
                }
            }
            None => SyntaxError::Whole(msg),
        }
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) hostname: Option<String>,
    pub(super) host_id: Option<String>,
    pub(super) cluster: Option<RawCluster>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) watch: Option<WatchMode>,
    #[serde(default, with = "humantime_serde")]
    pub(super) poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) debounce: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) resync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) expiry_warning: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) stop_timeout: Option<Duration>,
    pub(super) metrics: Option<RawMetrics>,
    #[serde(default)]
    pub(super) dns: std::collections::BTreeMap<String, RawDns>,
    pub(super) acme: Option<RawAcme>,
    pub(super) dkim: Option<RawDkim>,
    pub(super) mta_sts: Option<RawMtaSts>,
    pub(super) tls_rpt: Option<RawTlsRpt>,
    #[serde(default, rename = "source")]
    pub(super) sources: Vec<RawSource>,
    #[serde(default, rename = "target")]
    pub(super) targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) backend: String,
    #[serde(default)]
    pub(super) endpoints: Vec<String>,
    pub(super) prefix: Option<String>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) cert_file: Option<PathBuf>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) user: Option<String>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) password_env: Option<String>,
    pub(super) shared_key_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub(super) lease_ttl: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    pub(super) domains: Vec<String>,
    pub(super) algorithms: Option<Vec<DkimAlgorithm>>,
    pub(super) selector: Option<String>,
    pub(super) key_dir: Option<PathBuf>,
    pub(super) record_dir: Option<PathBuf>,
    pub(super) dns: String,
    pub(super) ttl: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) rotate_every: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) lead: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) drain: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) revoke_hold: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub(super) revoke_settle: Option<Duration>,
    pub(super) signer: Signer,
    pub(super) signer_dir: PathBuf,
    pub(super) key_owner: Option<String>,
    pub(super) key_group: Option<String>,
    pub(super) key_mode: Option<String>,
    pub(super) reload: Option<Vec<String>>,
    pub(super) reload_signal: Option<RawSignal>,
    #[serde(default, with = "humantime_serde")]
    pub(super) reload_timeout: Option<Duration>,
    #[serde(default)]
    pub(super) adopt: Vec<RawAdopt>,
    #[serde(default)]
    pub(super) shared: bool,
}

/// One `[[dkim.adopt]]` entry: a layout of keys the host's signer already
/// signs with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdopt {
    pub(super) from: String,
    pub(super) path: Option<PathBuf>,
    pub(super) domain: Option<String>,
    pub(super) selector: Option<String>,
    pub(super) var: Option<String>,
    pub(super) check: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMtaSts {
    pub(super) domains: Vec<String>,
    pub(super) mode: Option<String>,
    pub(super) mx: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub(super) max_age: Option<Duration>,
    pub(super) dns: String,
    pub(super) listen: Option<String>,
    pub(super) webroot: Option<PathBuf>,
    pub(super) responders: Option<Vec<String>>,
    pub(super) ca_bundle: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsRpt {
    pub(super) rua: Vec<String>,
    pub(super) domains: Option<Vec<String>>,
    pub(super) dns: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    pub(super) directory: Option<String>,
    pub(super) email: Option<String>,
    pub(super) ca_bundle: Option<PathBuf>,
    pub(super) eab_kid: Option<String>,
    pub(super) eab_hmac_key_file: Option<PathBuf>,
    pub(super) eab_hmac_key_env: Option<String>,
    pub(super) profile: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawDns {
    Rfc2136 {
        server: String,
        zone: Option<String>,
        delegate_to: Option<String>,
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
        delegate_to: Option<String>,
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
        delegate_to: Option<String>,
        nameservers: Option<Vec<String>>,
        resolver: Option<String>,
        #[serde(default, with = "humantime_serde")]
        propagation_interval: Option<Duration>,
        #[serde(default, with = "humantime_serde")]
        propagation_timeout: Option<Duration>,
    },
    Manual {
        zone: Option<String>,
        delegate_to: Option<String>,
        nameservers: Option<Vec<String>>,
        resolver: Option<String>,
        #[serde(default, with = "humantime_serde")]
        propagation_interval: Option<Duration>,
        #[serde(default, with = "humantime_serde")]
        propagation_timeout: Option<Duration>,
    },
    // The long tail through dns-update, one line per type of
    // `mxkeys_providers::longtail::SPECS`: the keys as written, checked
    // against the type's spec by the validator (an unknown key is still an
    // error naming it).
    Route53(RawKeys),
    Hetzner(RawKeys),
    DigitalOcean(RawKeys),
    Ovh(RawKeys),
    Gandi(RawKeys),
    Porkbun(RawKeys),
    Ionos(RawKeys),
    Linode(RawKeys),
    Vultr(RawKeys),
    GoDaddy(RawKeys),
    Dnsimple(RawKeys),
    Desec(RawKeys),
    Pdns(RawKeys),
    Bunny(RawKeys),
    Scaleway(RawKeys),
    Gcore(RawKeys),
    NameSilo(RawKeys),
    Dynu(RawKeys),
    Netlify(RawKeys),
    Infomaniak(RawKeys),
    HostingDe(RawKeys),
    Ns1(RawKeys),
    SafeDns(RawKeys),
    DreamHost(RawKeys),
    Domeneshop(RawKeys),
    DnsMadeEasy(RawKeys),
    Exoscale(RawKeys),
    Constellix(RawKeys),
    Spaceship(RawKeys),
    NameDotCom(RawKeys),
    LuaDns(RawKeys),
    Netcup(RawKeys),
    Vercel(RawKeys),
}

/// A long-tail provider's table as written, but for its `type`.
pub(super) type RawKeys = std::collections::BTreeMap<String, toml::Value>;

impl RawDns {
    /// A long-tail table's type and keys; `None` for the others.
    pub(super) fn long_tail(self) -> Option<(&'static str, RawKeys)> {
        Some(match self {
            RawDns::Route53(keys) => ("route53", keys),
            RawDns::Hetzner(keys) => ("hetzner", keys),
            RawDns::DigitalOcean(keys) => ("digitalocean", keys),
            RawDns::Ovh(keys) => ("ovh", keys),
            RawDns::Gandi(keys) => ("gandi", keys),
            RawDns::Porkbun(keys) => ("porkbun", keys),
            RawDns::Ionos(keys) => ("ionos", keys),
            RawDns::Linode(keys) => ("linode", keys),
            RawDns::Vultr(keys) => ("vultr", keys),
            RawDns::GoDaddy(keys) => ("godaddy", keys),
            RawDns::Dnsimple(keys) => ("dnsimple", keys),
            RawDns::Desec(keys) => ("desec", keys),
            RawDns::Pdns(keys) => ("pdns", keys),
            RawDns::Bunny(keys) => ("bunny", keys),
            RawDns::Scaleway(keys) => ("scaleway", keys),
            RawDns::Gcore(keys) => ("gcore", keys),
            RawDns::NameSilo(keys) => ("namesilo", keys),
            RawDns::Dynu(keys) => ("dynu", keys),
            RawDns::Netlify(keys) => ("netlify", keys),
            RawDns::Infomaniak(keys) => ("infomaniak", keys),
            RawDns::HostingDe(keys) => ("hostingde", keys),
            RawDns::Ns1(keys) => ("ns1", keys),
            RawDns::SafeDns(keys) => ("safedns", keys),
            RawDns::DreamHost(keys) => ("dreamhost", keys),
            RawDns::Domeneshop(keys) => ("domeneshop", keys),
            RawDns::DnsMadeEasy(keys) => ("dnsmadeeasy", keys),
            RawDns::Exoscale(keys) => ("exoscale", keys),
            RawDns::Constellix(keys) => ("constellix", keys),
            RawDns::Spaceship(keys) => ("spaceship", keys),
            RawDns::NameDotCom(keys) => ("namedotcom", keys),
            RawDns::LuaDns(keys) => ("luadns", keys),
            RawDns::Netcup(keys) => ("netcup", keys),
            RawDns::Vercel(keys) => ("vercel", keys),
            _ => return None,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignal {
    pub(super) pidfile: PathBuf,
    #[serde(default = "default_signal")]
    pub(super) signal: String,
}

fn default_signal() -> String {
    "HUP".to_owned()
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum RawSource {
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
    Acme(RawAcmeSource),
}

/// The keys of a `type = "acme"` source (the tag is taken by
/// [`RawSource`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcmeSource {
    pub(super) name: String,
    pub(super) domains: Vec<String>,
    pub(super) challenge: String,
    pub(super) http_listen: Option<String>,
    pub(super) webroot: Option<PathBuf>,
    pub(super) dns: Option<String>,
    #[serde(default)]
    pub(super) key_type: AcmeKeyType,
    #[serde(default)]
    pub(super) reuse_key: bool,
    #[serde(default)]
    pub(super) shared: bool,
}

/// `key_type` as written: a filter, or "dual" (with `[target.rsa]` and
/// `[target.ecdsa]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawKeyType {
    Rsa,
    Ecdsa,
    Any,
    Dual,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFiles {
    pub(super) fullchain: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) combined: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) chain: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub(super) name: String,
    pub(super) domains: Option<Vec<String>>,
    pub(super) key_type: Option<RawKeyType>,
    pub(super) fullchain: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) combined: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) chain: Option<PathBuf>,
    pub(super) rsa: Option<RawFiles>,
    pub(super) ecdsa: Option<RawFiles>,
    #[serde(default)]
    pub(super) verify: Vec<Verify>,
    #[serde(default, with = "humantime_serde")]
    pub(super) verify_timeout: Option<Duration>,
    pub(super) mode: Option<String>,
    pub(super) owner: Option<String>,
    pub(super) group: Option<String>,
    pub(super) reload: Option<Vec<String>>,
    pub(super) reload_signal: Option<RawSignal>,
    #[serde(default, with = "humantime_serde")]
    pub(super) reload_timeout: Option<Duration>,
    #[serde(default)]
    pub(super) strict_permissions: bool,
    pub(super) dane: Option<RawDane>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDane {
    pub(super) dns: String,
    pub(super) ports: Option<Vec<u16>>,
    pub(super) hosts: Option<Vec<String>>,
    pub(super) records: Option<Vec<crate::dane::tlsa::Spec>>,
    pub(super) ttl: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub(super) dane_hold_max: Option<Duration>,
    pub(super) key_rollover: Option<u32>,
}
