//! The `[dns.NAME]` tables: DNS providers and how to check propagation.
//!
//! Pure: a provider's secret is named (a `_file` or an `_env`, exactly
//! one), never held, and never accepted inline; servers are IP addresses
//! (port 53 when absent); the zone is a DNS name. The providers are built
//! and their secrets read in `crate::dns`, when a record is written.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawDns, RawKeys};
use super::value::{Secret, at, parse_server, program};
use super::{ConfigError, Context};
use crate::names::DnsName;

/// A `[dns.NAME]` table: a DNS provider and how to check propagation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsProvider {
    pub name: String,
    pub kind: DnsKind,
    /// The zone to write in; found from the record name when absent.
    pub zone: Option<String>,
    /// Delegation by CNAME (`crate::delegation`): every record mxkeys
    /// publishes at a user's name `N` is written at `N.ZONE` instead, and a
    /// one-time CNAME `N -> N.ZONE` in the user's zone must point there.
    pub delegate_to: Option<String>,
    /// The authoritative servers of `zone` (of every name when `zone` is
    /// not set), asked instead of the NS set found through DNS.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// The recursive resolver that finds other zones' servers and follows
    /// CNAMEs outside `zone`; default: the system's.
    pub resolver: Option<SocketAddr>,
    pub propagation_interval: Duration,
    pub propagation_timeout: Duration,
}

/// What kind of provider, with its settings. Secrets are named here
/// (a file or an environment variable), never held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsKind {
    Rfc2136 {
        server: SocketAddr,
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
    /// A host of the long tail (`mxkeys_providers::longtail::SPECS`):
    /// its credentials by key (named, never held) and plain settings.
    LongTail {
        kind: &'static str,
        secrets: BTreeMap<String, Secret>,
        settings: BTreeMap<String, String>,
    },
}

const DEFAULT_PROPAGATION_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);
const TSIG_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

/// Validates every `[dns.NAME]` table, by name.
pub(super) fn providers(
    raw: BTreeMap<String, RawDns>,
    ctx: &Context,
) -> Result<BTreeMap<String, DnsProvider>, ConfigError> {
    let mut dns = BTreeMap::new();
    for (name, raw) in raw {
        let provider = provider(&name, raw, ctx)?;
        dns.insert(name, provider);
    }
    Ok(dns)
}

/// The keys every kind of provider has.
struct Common {
    zone: Option<String>,
    delegate_to: Option<String>,
    nameservers: Option<Vec<String>>,
    resolver: Option<String>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
}

fn provider(name: &str, raw: RawDns, ctx: &Context) -> Result<DnsProvider, ConfigError> {
    let fail = |m: &dyn std::fmt::Display| ctx.error(format_args!("[dns.{name}]: {m}"));
    let secret = |file: Option<PathBuf>, env: Option<String>, what: &str| match (file, env) {
        (Some(f), None) => Ok(Secret::File(ctx.abs(&f))),
        (None, Some(e)) => Ok(Secret::Env(e)),
        (None, None) => Err(fail(&format_args!(
            "set `{what}_file` or `{what}_env`: secrets are read from a file or the environment, never from this file"
        ))),
        (Some(_), Some(_)) => Err(fail(&format_args!(
            "set only one of `{what}_file` and `{what}_env`"
        ))),
    };
    let (kind, common) = match raw {
        RawDns::Rfc2136 {
            server,
            zone,
            delegate_to,
            tsig_name,
            tsig_algorithm,
            tsig_secret_file,
            tsig_secret_env,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => {
            let algorithm = tsig_algorithm.unwrap_or_else(|| TSIG_ALGORITHMS[0].to_owned());
            if !TSIG_ALGORITHMS.contains(&algorithm.as_str()) {
                return Err(fail(&format_args!(
                    "key `tsig_algorithm`: {algorithm:?} is not hmac-sha256, hmac-sha384 or hmac-sha512"
                )));
            }
            let kind = DnsKind::Rfc2136 {
                server: parse_server(&server).map_err(|e| fail(&at("server")(e)))?,
                tsig_name,
                tsig_algorithm: algorithm,
                tsig_secret: secret(tsig_secret_file, tsig_secret_env, "tsig_secret")?,
            };
            let common = Common {
                zone,
                delegate_to,
                nameservers,
                resolver,
                interval: propagation_interval,
                timeout: propagation_timeout,
            };
            (kind, common)
        }
        RawDns::Cloudflare {
            api_token_file,
            api_token_env,
            api_url,
            zone,
            delegate_to,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => {
            let kind = DnsKind::Cloudflare {
                api_token: secret(api_token_file, api_token_env, "api_token")?,
                api_url,
            };
            let common = Common {
                zone,
                delegate_to,
                nameservers,
                resolver,
                interval: propagation_interval,
                timeout: propagation_timeout,
            };
            (kind, common)
        }
        RawDns::Exec {
            command,
            zone,
            delegate_to,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => {
            program(&command).map_err(|e| fail(&at("command")(e)))?;
            let common = Common {
                zone,
                delegate_to,
                nameservers,
                resolver,
                interval: propagation_interval,
                timeout: propagation_timeout,
            };
            (DnsKind::Exec { command }, common)
        }
        RawDns::Manual {
            zone,
            delegate_to,
            nameservers,
            resolver,
            propagation_interval,
            propagation_timeout,
        } => {
            let common = Common {
                zone,
                delegate_to,
                nameservers,
                resolver,
                interval: propagation_interval,
                timeout: propagation_timeout,
            };
            (DnsKind::Manual, common)
        }
        other => match other.long_tail() {
            Some((kind, keys)) => long_tail(kind, keys, &fail, &secret)?,
            None => return Err(fail(&"not a provider type")),
        },
    };
    let zone = common
        .zone
        .map(|z| DnsName::parse(&z).map(|n| n.as_str().to_owned()))
        .transpose()
        .map_err(|e| fail(&at("zone")(e.into())))?;
    let delegate_to = common
        .delegate_to
        .map(|z| DnsName::parse(&z).map(|n| n.as_str().to_owned()))
        .transpose()
        .map_err(|e| fail(&at("delegate_to")(e.into())))?;
    if let (Some(d), Some(z)) = (&delegate_to, &zone)
        && d != z
        && !d.ends_with(&format!(".{z}"))
    {
        return Err(fail(&format_args!(
            "key `delegate_to`: {d:?} is not in `zone` {z:?}, the zone this provider writes"
        )));
    }
    let nameservers = common
        .nameservers
        .map(|l| l.iter().map(|s| parse_server(s)).collect())
        .transpose()
        .map_err(|e| fail(&at("nameservers")(e)))?;
    let resolver = common
        .resolver
        .map(|r| parse_server(&r))
        .transpose()
        .map_err(|e| fail(&at("resolver")(e)))?;
    Ok(DnsProvider {
        name: name.to_owned(),
        kind,
        zone,
        delegate_to,
        nameservers,
        resolver,
        propagation_interval: common.interval.unwrap_or(DEFAULT_PROPAGATION_INTERVAL),
        propagation_timeout: common.timeout.unwrap_or(DEFAULT_PROPAGATION_TIMEOUT),
    })
}

/// The keys every type of the long tail takes besides its spec's.
const COMMON_KEYS: [&str; 6] = [
    "zone",
    "delegate_to",
    "nameservers",
    "resolver",
    "propagation_interval",
    "propagation_timeout",
];

/// How a table's secret is named: from its `_file` and `_env` keys.
type SecretOf<'a> =
    dyn Fn(Option<PathBuf>, Option<String>, &str) -> Result<Secret, ConfigError> + 'a;

/// A long-tail table checked against its type's spec: every credential as
/// `KEY_file` or `KEY_env` (exactly one; required ones present), settings
/// as strings, the common keys, and nothing else.
fn long_tail(
    kind: &'static str,
    mut keys: RawKeys,
    fail: &dyn Fn(&dyn std::fmt::Display) -> ConfigError,
    secret: &SecretOf<'_>,
) -> Result<(DnsKind, Common), ConfigError> {
    let Some(spec) = mxkeys_providers::longtail::spec(kind) else {
        return Err(fail(&format_args!("type {kind:?} has no spec")));
    };
    if let Some(k) = spec.secrets.iter().find(|k| keys.contains_key(k.name)) {
        // The key only: its value is a secret pasted by mistake.
        return Err(fail(&format_args!(
            "key `{0}`: secrets are read from a file or the environment, never from this file: set `{0}_file` or `{0}_env`",
            k.name
        )));
    }
    let mut string = |key: &str| -> Result<Option<String>, ConfigError> {
        match keys.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(fail(&format_args!("key `{key}`: expected a string"))),
        }
    };
    let mut secrets = BTreeMap::new();
    for key in spec.secrets {
        let file = string(&format!("{}_file", key.name))?.map(PathBuf::from);
        let env = string(&format!("{}_env", key.name))?;
        if file.is_none() && env.is_none() && !key.required {
            continue;
        }
        secrets.insert(key.name.to_owned(), secret(file, env, key.name)?);
    }
    let mut settings = BTreeMap::new();
    for key in spec.settings {
        match string(key.name)? {
            Some(v) => {
                settings.insert(key.name.to_owned(), v);
            }
            None if key.required => {
                return Err(fail(&format_args!(
                    "type {kind:?} needs key `{}`",
                    key.name
                )));
            }
            None => {}
        }
    }
    let zone = string("zone")?;
    let delegate_to = string("delegate_to")?;
    let resolver = string("resolver")?;
    let mut duration = |key: &str| -> Result<Option<std::time::Duration>, ConfigError> {
        string(key)?
            .map(|v| {
                humantime::parse_duration(&v).map_err(|e| fail(&format_args!("key `{key}`: {e}")))
            })
            .transpose()
    };
    let interval = duration("propagation_interval")?;
    let timeout = duration("propagation_timeout")?;
    let nameservers = match keys.remove("nameservers") {
        None => None,
        Some(toml::Value::Array(list)) => Some(
            list.into_iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s),
                    _ => Err(fail(&"key `nameservers`: expected a list of strings")),
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err(fail(&"key `nameservers`: expected a list of strings")),
    };
    if let Some(key) = keys.keys().next() {
        let mut known: Vec<String> = spec
            .secrets
            .iter()
            .map(|k| format!("{}_file/_env", k.name))
            .chain(spec.settings.iter().map(|k| k.name.to_owned()))
            .chain(COMMON_KEYS.iter().map(|k| (*k).to_owned()))
            .collect();
        known.dedup();
        return Err(fail(&format_args!(
            "unknown key `{key}` for type {kind:?}; its keys: {}",
            known.join(", ")
        )));
    }
    Ok((
        DnsKind::LongTail {
            kind: spec.kind,
            secrets,
            settings,
        },
        Common {
            zone,
            delegate_to,
            nameservers,
            resolver,
            interval,
            timeout,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::{DnsKind, Secret};
    use std::time::Duration;
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
            ("[dns.x]\ntype = \"route54\"\n", "route54"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains("secret123"), "{e}");
        }
    }

    #[test]
    fn every_long_tail_type_is_a_table_whose_keys_its_spec_checks() {
        for spec in mxkeys_providers::longtail::SPECS {
            let mut text = format!(
                "[dns.x]\ntype = \"{}\"\nzone = \"Example.COM.\"\npropagation_timeout = \"2m\"\n",
                spec.kind
            );
            for key in spec.secrets.iter().filter(|k| k.required) {
                text.push_str(&format!("{}_env = \"VAR_{}\"\n", key.name, key.name));
            }
            for key in spec.settings.iter().filter(|k| k.required) {
                text.push_str(&format!("{} = \"v\"\n", key.name));
            }
            let c = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", spec.kind));
            let x = &c.dns["x"];
            assert_eq!(x.zone.as_deref(), Some("example.com"));
            assert_eq!(x.propagation_timeout, Duration::from_secs(120));
            let DnsKind::LongTail {
                kind,
                secrets,
                settings,
            } = &x.kind
            else {
                panic!("{}: {:?}", spec.kind, x.kind)
            };
            assert_eq!(*kind, spec.kind);
            for key in spec.secrets.iter().filter(|k| k.required) {
                assert_eq!(secrets[key.name], Secret::Env(format!("VAR_{}", key.name)));
            }
            assert_eq!(
                settings.len(),
                spec.settings.iter().filter(|k| k.required).count()
            );
            // Without its first credential: the error says how to give it.
            let first = spec.secrets[0].name;
            let without = text.replace(&format!("{first}_env = \"VAR_{first}\"\n"), "");
            let e = parse(&without).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{first}_file")) && e.contains("[dns.x]"),
                "{}: {e}",
                spec.kind
            );
        }
        for (text, needle) in [
            (
                "[dns.h]\ntype = \"hetzner\"\napi_token = \"secret123\"\n",
                "`api_token`",
            ),
            (
                "[dns.h]\ntype = \"hetzner\"\napi_token_env = \"T\"\ntoken_url = \"secret123\"\n",
                "unknown key `token_url`",
            ),
            (
                "[dns.h]\ntype = \"hetzner\"\napi_token_env = \"T\"\napi_token_file = \"t\"\n",
                "only one",
            ),
            (
                "[dns.r]\ntype = \"route53\"\naccess_key_id_env = \"A\"\nsecret_access_key_env = \"S\"\nregion = 5\n",
                "`region`",
            ),
            (
                "[dns.h]\ntype = \"hetzner\"\napi_token_env = \"T\"\nzone = \"not a name!\"\n",
                "zone",
            ),
            (
                "[dns.o]\ntype = \"ovh\"\napplication_key_env = \"A\"\napplication_secret_env = \"B\"\nconsumer_key_env = \"C\"\n",
                "`endpoint`",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains("secret123"), "{e}");
        }
    }
}
