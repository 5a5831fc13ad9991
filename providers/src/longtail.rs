//! The long tail of DNS hosts (Route 53, Hetzner, OVH, DigitalOcean,
//! Gandi, Porkbun, IONOS...) through Stalwart's `dns-update` crate, behind
//! [`RecordStore`].
//!
//! Rule: only single-value calls are made — `add_to_rrset`,
//! `remove_from_rrset` and `list_rrset` — never `set_rrset`, which replaces
//! a whole set: values other hosts or people put in a set survive every
//! write. `replace` adds the missing values first and removes the extra
//! ones after, so the set is never empty in between; every change reads
//! the set first and writes nothing when it already is as asked. Changes
//! of one name take turns within the process ([`NameLocks`]); the crate
//! itself reads and writes whole sets on APIs that only know sets (Route
//! 53 UPSERTs the set it read with the value added; Hetzner falls back to
//! `set_records` when `add_records` finds no set, and sets the set's TTL
//! after adding), so two processes writing one set at once may lose a
//! value there.
//!
//! Each type is one [`Spec`] in [`SPECS`]: its credentials (each read by
//! mxkeys from a `KEY_file` or `KEY_env`, never written in the
//! configuration), its plain settings, and how the crate's client is
//! built from them. Errors are one line, without a credential: response
//! snippets are flattened and URLs lose their query strings (some APIs
//! carry keys there).

use std::collections::BTreeMap;
use std::time::Duration;

use dns_update::providers::route53::Route53Config;
use dns_update::{
    DnsRecord, DnsRecordType, DnsUpdater, MXRecord, TLSARecord, TlsaCertUsage, TlsaMatching,
    TlsaSelector,
};
use zeroize::Zeroizing;

use crate::propagation::Propagation;
use crate::{Change, Error, NameLocks, RData, RecordStore, RecordType, same_set, values_type};

/// Longest wait for one API request.
const TIMEOUT: Duration = Duration::from_secs(30);

/// One key of a provider's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The key's name; a credential is given as `NAME_file` or `NAME_env`.
    pub name: &'static str,
    /// Whether the table must set it.
    pub required: bool,
}

const fn req(name: &'static str) -> Key {
    Key {
        name,
        required: true,
    }
}

const fn opt(name: &'static str) -> Key {
    Key {
        name,
        required: false,
    }
}

/// A provider type of the long tail: what its table holds and how its
/// client is built.
pub struct Spec {
    /// The `type` of its `[dns.NAME]` table.
    pub kind: &'static str,
    /// The host's name, for people.
    pub title: &'static str,
    /// Its credentials, each read from `NAME_file` or `NAME_env`.
    pub secrets: &'static [Key],
    /// Its plain settings (endpoints, regions, account ids).
    pub settings: &'static [Key],
    /// Whether the crate finds the zone itself (otherwise mxkeys gives it:
    /// the table's `zone`, or the owner of the name's SOA).
    finds_zone: bool,
    build: fn(&Settings<'_>) -> Result<DnsUpdater, BuildErr>,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("kind", &self.kind)
            .field("secrets", &self.secrets)
            .field("settings", &self.settings)
            .finish()
    }
}

/// Why a client could not be built: ours, or the crate's.
enum BuildErr {
    Ours(Error),
    Crate(dns_update::Error),
}

impl From<dns_update::Error> for BuildErr {
    fn from(e: dns_update::Error) -> Self {
        BuildErr::Crate(e)
    }
}

impl From<Error> for BuildErr {
    fn from(e: Error) -> Self {
        BuildErr::Ours(e)
    }
}

/// A table's credentials (read, zeroized on drop) and settings, as the
/// spec's builder sees them.
pub struct Settings<'a> {
    secrets: &'a BTreeMap<String, Zeroizing<String>>,
    settings: &'a BTreeMap<String, String>,
}

impl Settings<'_> {
    fn secret(&self, key: &str) -> Result<&str, Error> {
        self.opt_secret(key)
            .ok_or_else(|| Error::Config(format!("set `{key}_file` or `{key}_env`")))
    }

    fn opt_secret(&self, key: &str) -> Option<&str> {
        self.secrets.get(key).map(|s| s.as_str())
    }

    fn setting(&self, key: &str) -> Result<&str, Error> {
        self.opt(key)
            .ok_or_else(|| Error::Config(format!("set `{key}`")))
    }

    fn opt(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }
}

/// A spec whose only credential is one token given to `new`.
macro_rules! one_token {
    ($kind:literal, $title:literal, $key:literal, $new:path) => {
        Spec {
            kind: $kind,
            title: $title,
            secrets: &[req($key)],
            settings: &[],
            finds_zone: false,
            build: |s| Ok($new(s.secret($key)?, Some(TIMEOUT))?),
        }
    };
}

/// A spec with two credentials given to `new` in this order.
macro_rules! two_secrets {
    ($kind:literal, $title:literal, $a:literal, $b:literal, $new:path) => {
        Spec {
            kind: $kind,
            title: $title,
            secrets: &[req($a), req($b)],
            settings: &[],
            finds_zone: false,
            build: |s| Ok($new(s.secret($a)?, s.secret($b)?, Some(TIMEOUT))?),
        }
    };
}

/// Every type of the long tail. `cloudflare` and `rfc2136` are mxkeys' own
/// providers (tested for in-place updates and rate limits), not these.
pub static SPECS: &[Spec] = &[
    Spec {
        kind: "route53",
        title: "Amazon Route 53 (and Route 53 compatible APIs)",
        secrets: &[
            req("access_key_id"),
            req("secret_access_key"),
            opt("session_token"),
        ],
        settings: &[opt("region"), opt("hosted_zone_id"), opt("endpoint")],
        finds_zone: true,
        build: |s| {
            Ok(DnsUpdater::new_route53(Route53Config {
                access_key_id: s.secret("access_key_id")?.to_owned(),
                secret_access_key: s.secret("secret_access_key")?.to_owned(),
                session_token: s.opt_secret("session_token").map(str::to_owned),
                region: s.opt("region").map(str::to_owned),
                hosted_zone_id: s.opt("hosted_zone_id").map(str::to_owned),
                private_zone_only: None,
                endpoint: s
                    .opt("endpoint")
                    .map(|e| e.trim_end_matches('/').to_owned()),
            })?)
        },
    },
    one_token!(
        "hetzner",
        "Hetzner (Cloud DNS API)",
        "api_token",
        DnsUpdater::new_hetzner
    ),
    one_token!(
        "digitalocean",
        "DigitalOcean",
        "api_token",
        DnsUpdater::new_digitalocean
    ),
    Spec {
        kind: "ovh",
        title: "OVHcloud (and Kimsufi, So you Start)",
        secrets: &[
            req("application_key"),
            req("application_secret"),
            req("consumer_key"),
        ],
        settings: &[req("endpoint")],
        finds_zone: false,
        build: |s| {
            let endpoint = s.setting("endpoint")?;
            let endpoint = endpoint.parse().map_err(|_| {
                Error::Config(format!(
                    "`endpoint` {endpoint:?} is not one of ovh-eu, ovh-us, ovh-ca, kimsufi-eu, kimsufi-ca, soyoustart-eu, soyoustart-ca"
                ))
            })?;
            Ok(DnsUpdater::new_ovh(
                s.secret("application_key")?,
                s.secret("application_secret")?,
                s.secret("consumer_key")?,
                endpoint,
                Some(TIMEOUT),
            )?)
        },
    },
    one_token!(
        "gandi",
        "Gandi LiveDNS (personal access token)",
        "api_token",
        DnsUpdater::new_gandiv5
    ),
    two_secrets!(
        "porkbun",
        "Porkbun",
        "api_key",
        "secret_api_key",
        DnsUpdater::new_porkbun
    ),
    one_token!("ionos", "IONOS", "api_key", DnsUpdater::new_ionos),
    one_token!(
        "linode",
        "Linode (Akamai)",
        "api_token",
        DnsUpdater::new_linode
    ),
    one_token!("vultr", "Vultr", "api_key", DnsUpdater::new_vultr),
    two_secrets!(
        "godaddy",
        "GoDaddy",
        "api_key",
        "api_secret",
        DnsUpdater::new_godaddy
    ),
    Spec {
        kind: "dnsimple",
        title: "DNSimple",
        secrets: &[req("api_token")],
        settings: &[req("account_id")],
        finds_zone: false,
        build: |s| {
            Ok(DnsUpdater::new_dnsimple(
                s.secret("api_token")?,
                s.setting("account_id")?,
                Some(TIMEOUT),
            )?)
        },
    },
    one_token!("desec", "deSEC", "api_token", DnsUpdater::new_desec),
    Spec {
        kind: "pdns",
        title: "PowerDNS Authoritative (HTTP API)",
        secrets: &[req("api_key")],
        settings: &[req("endpoint"), opt("server_name")],
        finds_zone: false,
        build: |s| {
            Ok(DnsUpdater::new_pdns(
                s.secret("api_key")?,
                Some(s.setting("endpoint")?.trim_end_matches('/')),
                s.opt("server_name"),
                Some(TIMEOUT),
            )?)
        },
    },
    one_token!("bunny", "Bunny DNS", "api_key", DnsUpdater::new_bunny),
    one_token!(
        "scaleway",
        "Scaleway",
        "api_token",
        DnsUpdater::new_scaleway
    ),
    one_token!("gcore", "Gcore", "api_token", DnsUpdater::new_gcore),
    one_token!("namesilo", "NameSilo", "api_key", DnsUpdater::new_namesilo),
    one_token!("dynu", "Dynu", "api_key", DnsUpdater::new_dynu),
    one_token!("netlify", "Netlify", "api_token", DnsUpdater::new_netlify),
    one_token!(
        "infomaniak",
        "Infomaniak",
        "api_token",
        DnsUpdater::new_infomaniak
    ),
    one_token!(
        "hostingde",
        "hosting.de",
        "api_key",
        DnsUpdater::new_hostingde
    ),
    one_token!("ns1", "NS1 (IBM)", "api_key", DnsUpdater::new_ns1),
    one_token!(
        "safedns",
        "ANS SafeDNS",
        "api_token",
        DnsUpdater::new_safedns
    ),
    one_token!(
        "dreamhost",
        "DreamHost",
        "api_key",
        DnsUpdater::new_dreamhost
    ),
    two_secrets!(
        "domeneshop",
        "Domeneshop",
        "api_token",
        "api_secret",
        DnsUpdater::new_domeneshop
    ),
    two_secrets!(
        "dnsmadeeasy",
        "DNS Made Easy",
        "api_key",
        "api_secret",
        DnsUpdater::new_dnsmadeeasy
    ),
    two_secrets!(
        "exoscale",
        "Exoscale",
        "api_key",
        "api_secret",
        DnsUpdater::new_exoscale
    ),
    two_secrets!(
        "constellix",
        "Constellix",
        "api_key",
        "secret_key",
        DnsUpdater::new_constellix
    ),
    two_secrets!(
        "spaceship",
        "Spaceship",
        "api_key",
        "api_secret",
        DnsUpdater::new_spaceship
    ),
    Spec {
        kind: "namedotcom",
        title: "Name.com",
        secrets: &[req("api_token")],
        settings: &[req("username")],
        finds_zone: false,
        build: |s| {
            Ok(DnsUpdater::new_namedotcom(
                s.setting("username")?,
                s.secret("api_token")?,
                Some(TIMEOUT),
            )?)
        },
    },
    Spec {
        kind: "luadns",
        title: "LuaDNS",
        secrets: &[req("api_token")],
        settings: &[req("username")],
        finds_zone: false,
        build: |s| {
            Ok(DnsUpdater::new_luadns(
                s.setting("username")?,
                s.secret("api_token")?,
                Some(TIMEOUT),
            )?)
        },
    },
    Spec {
        kind: "netcup",
        title: "netcup",
        secrets: &[req("api_key"), req("api_password")],
        settings: &[req("customer_number")],
        finds_zone: false,
        build: |s| {
            Ok(DnsUpdater::new_netcup(
                s.setting("customer_number")?,
                s.secret("api_key")?,
                s.secret("api_password")?,
                Some(TIMEOUT),
            )?)
        },
    },
    Spec {
        kind: "vercel",
        title: "Vercel",
        secrets: &[req("api_token")],
        settings: &[opt("team_id")],
        finds_zone: false,
        build: |s| {
            Ok(DnsUpdater::new_vercel(
                s.secret("api_token")?,
                s.opt("team_id"),
                Some(TIMEOUT),
            )?)
        },
    },
];

/// The spec of a `type`, if it is one of the long tail.
pub fn spec(kind: &str) -> Option<&'static Spec> {
    SPECS.iter().find(|s| s.kind == kind)
}

/// What [`LongTail::new`] needs: the type, its credentials (already read;
/// zeroized when this is dropped) and settings, and where the zone of a
/// name is found.
pub struct LongTailConfig {
    /// A [`Spec::kind`].
    pub kind: String,
    /// Credentials by key name (without `_file`/`_env`).
    pub secrets: BTreeMap<String, Zeroizing<String>>,
    /// Plain settings by key name.
    pub settings: BTreeMap<String, String>,
    /// The zone written in (every name must be in it); found by an SOA
    /// lookup through `zones` when absent.
    pub zone: Option<String>,
    /// Finds the zone of a name when `zone` is not set.
    pub zones: Propagation,
}

/// A provider of the long tail (see the module's rule).
pub struct LongTail {
    spec: &'static Spec,
    updater: DnsUpdater,
    zone: Option<String>,
    zones: Propagation,
    locks: NameLocks,
}

impl LongTail {
    /// Builds the client of `config.kind`. Errors name the key or the
    /// reason, never a credential.
    pub fn new(config: LongTailConfig) -> Result<LongTail, Error> {
        let spec = spec(&config.kind)
            .ok_or_else(|| Error::Config(format!("unknown provider type {:?}", config.kind)))?;
        let settings = Settings {
            secrets: &config.secrets,
            settings: &config.settings,
        };
        let updater = (spec.build)(&settings).map_err(|e| match e {
            BuildErr::Ours(e) => e,
            BuildErr::Crate(e) => match map_error(spec.kind, e) {
                Error::Refused(m) | Error::Transport(m) => Error::Config(m),
                other => other,
            },
        })?;
        Ok(LongTail {
            spec,
            updater,
            zone: config.zone.map(|z| crate::canonical_name(&z)),
            zones: config.zones,
            locks: NameLocks::default(),
        })
    }

    /// The provider's type.
    pub fn kind(&self) -> &'static str {
        self.spec.kind
    }

    /// The zone ("origin") the crate is given for `name`.
    async fn origin(&self, name: &str) -> Result<String, Error> {
        if self.spec.finds_zone {
            return Ok(name.to_owned());
        }
        match &self.zone {
            Some(zone) if name == zone || name.ends_with(&format!(".{zone}")) => Ok(zone.clone()),
            Some(zone) => Err(Error::NoZone(format!(
                "{name} (not in zone {zone}, the zone this provider writes)"
            ))),
            None => self.zones.zone_of(name).await,
        }
    }

    async fn list(&self, name: &str, rtype: RecordType, origin: &str) -> Result<Vec<RData>, Error> {
        let records = self
            .updater
            .list_rrset(name, wire_type(rtype)?, origin)
            .await
            .map_err(|e| map_error(self.kind(), e))?;
        records.into_iter().filter_map(from_record).collect()
    }

    async fn add_values(
        &self,
        name: &str,
        ttl: u32,
        values: &[RData],
        origin: &str,
    ) -> Result<(), Error> {
        let rtype = values_type(values)?;
        let records = values.iter().map(to_record).collect::<Result<_, _>>()?;
        self.updater
            .add_to_rrset(name, wire_type(rtype)?, ttl, records, origin)
            .await
            .map_err(|e| map_error(self.kind(), e))
    }

    async fn remove_listed(&self, name: &str, values: &[RData], origin: &str) -> Result<(), Error> {
        let rtype = values_type(values)?;
        let records = values.iter().map(to_record).collect::<Result<_, _>>()?;
        self.updater
            .remove_from_rrset(name, wire_type(rtype)?, records, origin)
            .await
            .map_err(|e| map_error(self.kind(), e))
    }
}

impl RecordStore for LongTail {
    async fn read(&self, name: &str, rtype: RecordType) -> Result<Vec<RData>, Error> {
        let name = crate::canonical_name(name);
        let origin = self.origin(&name).await?;
        self.list(&name, rtype, &origin).await
    }

    async fn replace(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let rtype = values_type(values)?;
        let name = crate::canonical_name(name);
        let origin = self.origin(&name).await?;
        let _turn = self.locks.lock(&name).await;
        let current = self.list(&name, rtype, &origin).await?;
        if same_set(&current, values) {
            return Ok(Change::Unchanged);
        }
        let (missing, extra) = difference(&current, values);
        if !missing.is_empty() {
            self.add_values(&name, ttl, &missing, &origin).await?;
        }
        if !extra.is_empty() {
            self.remove_listed(&name, &extra, &origin).await?;
        }
        Ok(Change::Changed)
    }

    async fn remove(&self, name: &str, rtype: RecordType) -> Result<Change, Error> {
        let name = crate::canonical_name(name);
        let origin = self.origin(&name).await?;
        let _turn = self.locks.lock(&name).await;
        let current = self.list(&name, rtype, &origin).await?;
        if current.is_empty() {
            return Ok(Change::Unchanged);
        }
        self.remove_listed(&name, &current, &origin).await?;
        Ok(Change::Changed)
    }

    async fn add(&self, name: &str, ttl: u32, values: &[RData]) -> Result<Change, Error> {
        let rtype = values_type(values)?;
        let name = crate::canonical_name(name);
        let origin = self.origin(&name).await?;
        let _turn = self.locks.lock(&name).await;
        let current = self.list(&name, rtype, &origin).await?;
        let (missing, _) = difference(&current, values);
        if missing.is_empty() {
            return Ok(Change::Unchanged);
        }
        self.add_values(&name, ttl, &missing, &origin).await?;
        Ok(Change::Changed)
    }

    async fn remove_values(&self, name: &str, values: &[RData]) -> Result<Change, Error> {
        let rtype = values_type(values)?;
        let name = crate::canonical_name(name);
        let origin = self.origin(&name).await?;
        let _turn = self.locks.lock(&name).await;
        let current = self.list(&name, rtype, &origin).await?;
        let present: Vec<RData> = values
            .iter()
            .filter(|v| current.contains(v))
            .cloned()
            .collect();
        if present.is_empty() {
            return Ok(Change::Unchanged);
        }
        self.remove_listed(&name, &present, &origin).await?;
        Ok(Change::Changed)
    }
}

/// The values of `wanted` not in `current` (to add), and those of
/// `current` not in `wanted` (to remove), each without duplicates.
fn difference(current: &[RData], wanted: &[RData]) -> (Vec<RData>, Vec<RData>) {
    let mut missing: Vec<RData> = Vec::new();
    for v in wanted {
        if !current.contains(v) && !missing.contains(v) {
            missing.push(v.clone());
        }
    }
    let mut extra: Vec<RData> = Vec::new();
    for v in current {
        if !wanted.contains(v) && !extra.contains(v) {
            extra.push(v.clone());
        }
    }
    (missing, extra)
}

fn wire_type(rtype: RecordType) -> Result<DnsRecordType, Error> {
    Ok(match rtype {
        RecordType::Txt => DnsRecordType::TXT,
        RecordType::Tlsa => DnsRecordType::TLSA,
        RecordType::Cname => DnsRecordType::CNAME,
        RecordType::A => DnsRecordType::A,
        RecordType::Aaaa => DnsRecordType::AAAA,
        RecordType::Mx => DnsRecordType::MX,
    })
}

/// Our value as the crate's record. TXT values go whole: the crate splits
/// them into character-strings of at most 255 bytes, never inside a UTF-8
/// character, as [`crate::txt::split`] does.
fn to_record(value: &RData) -> Result<DnsRecord, Error> {
    Ok(match value {
        RData::Txt(text) => DnsRecord::TXT(text.clone()),
        RData::Tlsa {
            usage,
            selector,
            matching,
            data,
        } => DnsRecord::TLSA(TLSARecord {
            cert_usage: match usage {
                0 => TlsaCertUsage::PkixTa,
                1 => TlsaCertUsage::PkixEe,
                2 => TlsaCertUsage::DaneTa,
                3 => TlsaCertUsage::DaneEe,
                255 => TlsaCertUsage::Private,
                u => return Err(Error::Unsupported(format!("TLSA certificate usage {u}"))),
            },
            selector: match selector {
                0 => TlsaSelector::Full,
                1 => TlsaSelector::Spki,
                255 => TlsaSelector::Private,
                s => return Err(Error::Unsupported(format!("TLSA selector {s}"))),
            },
            matching: match matching {
                0 => TlsaMatching::Raw,
                1 => TlsaMatching::Sha256,
                2 => TlsaMatching::Sha512,
                255 => TlsaMatching::Private,
                m => return Err(Error::Unsupported(format!("TLSA matching type {m}"))),
            },
            cert_data: data.clone(),
        }),
        RData::Cname(target) => DnsRecord::CNAME(format!("{}.", crate::canonical_name(target))),
        RData::A(ip) => DnsRecord::A(*ip),
        RData::Aaaa(ip) => DnsRecord::AAAA(*ip),
        RData::Mx {
            preference,
            exchange,
        } => DnsRecord::MX(MXRecord {
            exchange: if exchange == "." {
                ".".to_owned()
            } else {
                format!("{}.", crate::canonical_name(exchange))
            },
            priority: *preference,
        }),
    })
}

/// The crate's record as our value (`None`: a type mxkeys never asks for).
fn from_record(record: DnsRecord) -> Option<Result<RData, Error>> {
    Some(Ok(match record {
        DnsRecord::TXT(text) => RData::Txt(text),
        DnsRecord::TLSA(t) => RData::Tlsa {
            usage: match t.cert_usage {
                TlsaCertUsage::PkixTa => 0,
                TlsaCertUsage::PkixEe => 1,
                TlsaCertUsage::DaneTa => 2,
                TlsaCertUsage::DaneEe => 3,
                TlsaCertUsage::Private => 255,
            },
            selector: match t.selector {
                TlsaSelector::Full => 0,
                TlsaSelector::Spki => 1,
                TlsaSelector::Private => 255,
            },
            matching: match t.matching {
                TlsaMatching::Raw => 0,
                TlsaMatching::Sha256 => 1,
                TlsaMatching::Sha512 => 2,
                TlsaMatching::Private => 255,
            },
            data: t.cert_data,
        },
        DnsRecord::CNAME(target) => RData::Cname(crate::canonical_name(&target)),
        DnsRecord::A(ip) => RData::A(ip),
        DnsRecord::AAAA(ip) => RData::Aaaa(ip),
        DnsRecord::MX(mx) => RData::Mx {
            preference: mx.priority,
            exchange: crate::mx_exchange(&mx.exchange),
        },
        DnsRecord::NS(_) | DnsRecord::SRV(_) | DnsRecord::CAA(_) => return None,
    }))
}

/// The crate's error as ours, in one line naming the provider type:
/// refused credentials are [`Error::Auth`], throttling is
/// [`Error::RateLimited`] (the crate already retried where it does);
/// response snippets are flattened and URLs lose their query strings.
pub fn map_error(kind: &str, e: dns_update::Error) -> Error {
    use dns_update::Error as E;
    let text = |m: &str| format!("{kind}: {}", one_line(m));
    match e {
        E::Unauthorized => Error::Auth(format!("{kind}: credentials refused (HTTP 401)")),
        E::NotFound => Error::Refused(format!(
            "{kind}: not found (HTTP 404): is the zone in this account?"
        )),
        E::BadRequest => Error::Refused(format!("{kind}: bad request (HTTP 400)")),
        E::InvalidRegion => Error::Config(format!("{kind}: invalid `region`")),
        E::Unsupported(m) => Error::Unsupported(text(&m)),
        E::Api(m) | E::Response(m) => {
            let lower = m.to_ascii_lowercase();
            if lower.contains("http 429")
                || lower.contains("429 too many")
                || lower.contains("throttl")
                || lower.contains("rate limit")
                || lower.contains("ratelimit")
            {
                Error::RateLimited(text(&m))
            } else if lower.contains("http 403") || lower.contains("403 forbidden") {
                Error::Auth(text(&m))
            } else if lower.starts_with("failed to send request")
                || lower.contains("error sending request")
            {
                Error::Transport(text(&m))
            } else {
                Error::Refused(text(&m))
            }
        }
        E::Client(m) | E::Protocol(m) => Error::Transport(text(&m)),
        E::Parse(m) | E::Serialize(m) => Error::Refused(text(&m)),
        other => Error::Refused(text(&other.to_string())),
    }
}

/// One line: whitespace runs (newlines of response bodies) become one
/// space, URLs lose their query strings, and the whole is cut at 400
/// characters.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(&strip_queries(word));
    }
    if out.chars().count() > 400 {
        out = out.chars().take(400).collect::<String>() + "...";
    }
    out
}

/// A word with the query string of any URL in it removed.
fn strip_queries(word: &str) -> String {
    let Some(start) = word.find("http://").or_else(|| word.find("https://")) else {
        return word.to_owned();
    };
    let (head, url) = word.split_at(start);
    match url.find('?') {
        Some(q) => {
            let tail = url[q..]
                .find([')', '"', '\'', ',', ';'])
                .map_or("", |end| &url[q + end..]);
            format!("{head}{}?…{tail}", &url[..q])
        }
        None => word.to_owned(),
    }
}

/// Markdown rows for the README's list of DNS providers: type, host, and
/// the keys of each (credentials as `KEY_file`/`KEY_env`; optional keys in
/// brackets).
pub fn readme_rows() -> String {
    let mut out = String::new();
    for spec in SPECS {
        let mut keys: Vec<String> = spec
            .secrets
            .iter()
            .map(|k| {
                let s = format!("`{0}_file`/`{0}_env`", k.name);
                if k.required { s } else { format!("[{s}]") }
            })
            .collect();
        keys.extend(spec.settings.iter().map(|k| {
            if k.required {
                format!("`{}`", k.name)
            } else {
                format!("[`{}`]", k.name)
            }
        }));
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            spec.kind,
            spec.title,
            keys.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(s: &str) -> RData {
        RData::Txt(s.to_owned())
    }

    #[test]
    fn replace_adds_what_is_missing_and_removes_only_the_extra() {
        let current = [txt("a"), txt("b")];
        let (missing, extra) = difference(&current, &[txt("b"), txt("c"), txt("c")]);
        assert_eq!(missing, [txt("c")]);
        assert_eq!(extra, [txt("a")]);
        let (missing, extra) = difference(&current, &[txt("b"), txt("a")]);
        assert!(missing.is_empty() && extra.is_empty());
    }

    #[test]
    fn every_value_survives_the_trip_to_the_crate_and_back() {
        for v in [
            txt(&"x".repeat(600)),
            RData::Tlsa {
                usage: 3,
                selector: 1,
                matching: 1,
                data: vec![1, 2, 3],
            },
            RData::Cname("target.example.net".into()),
            RData::A("192.0.2.1".parse().unwrap()),
            RData::Aaaa("2001:db8::1".parse().unwrap()),
            RData::Mx {
                preference: 10,
                exchange: "mx.example.com".into(),
            },
            RData::Mx {
                preference: 0,
                exchange: ".".into(),
            },
        ] {
            let back = from_record(to_record(&v).unwrap()).unwrap().unwrap();
            assert_eq!(back, v);
        }
        assert!(
            to_record(&RData::Tlsa {
                usage: 7,
                selector: 1,
                matching: 1,
                data: vec![]
            })
            .is_err()
        );
    }

    #[test]
    fn crate_errors_become_one_line_of_the_right_kind_without_query_strings() {
        use dns_update::Error as E;
        assert!(matches!(
            map_error("hetzner", E::Unauthorized),
            Error::Auth(_)
        ));
        let e = map_error(
            "hetzner",
            E::Api("HTTP 429: {\n \"error\": \"slow down\"\n}".into()),
        );
        assert!(matches!(e, Error::RateLimited(_)), "{e:?}");
        assert!(!e.to_string().contains('\n'), "{e}");
        let e = map_error(
            "route53",
            E::Api("Route53 API error: 400 Bad Request - <ErrorResponse><Error><Code>Throttling</Code></Error></ErrorResponse>".into()),
        );
        assert!(matches!(e, Error::RateLimited(_)), "{e:?}");
        let e = map_error(
            "duckdns",
            E::Api("Failed to send request to https://www.duckdns.org/update?domains=x&token=SECRET-TOKEN: error sending request for url (https://www.duckdns.org/update?domains=x&token=SECRET-TOKEN)".into()),
        );
        assert!(matches!(e, Error::Transport(_)), "{e:?}");
        let shown = e.to_string();
        assert!(!shown.contains("SECRET-TOKEN"), "{shown}");
        assert!(shown.contains("https://www.duckdns.org/update"), "{shown}");
        let e = map_error(
            "pdns",
            E::Api("BadRequest {\"error\": \"RRset x. IN TXT: bad\"}".into()),
        );
        assert!(matches!(e, Error::Refused(_)), "{e:?}");
        assert!(e.to_string().starts_with("pdns: BadRequest"), "{e}");
    }

    #[test]
    fn every_spec_names_distinct_keys_and_builds_with_them() {
        let mut kinds = std::collections::BTreeSet::new();
        for spec in SPECS {
            assert!(kinds.insert(spec.kind), "{} twice", spec.kind);
            let mut names = std::collections::BTreeSet::new();
            for k in spec.secrets.iter().chain(spec.settings) {
                assert!(names.insert(k.name), "{}: {} twice", spec.kind, k.name);
            }
            let secrets = spec
                .secrets
                .iter()
                .map(|k| (k.name.to_owned(), Zeroizing::new("token".to_owned())))
                .collect();
            let settings = spec
                .settings
                .iter()
                .map(|k| {
                    let v = match k.name {
                        "endpoint" if spec.kind == "ovh" => "ovh-eu",
                        "endpoint" => "http://127.0.0.1:1",
                        "region" => "us-east-1",
                        _ => "1234",
                    };
                    (k.name.to_owned(), v.to_owned())
                })
                .collect();
            let built = LongTail::new(LongTailConfig {
                kind: spec.kind.to_owned(),
                secrets,
                settings,
                zone: Some("example.com".into()),
                zones: Propagation::default(),
            });
            assert!(built.is_ok(), "{}: {:?}", spec.kind, built.err());
        }
    }
}
