//! The `[[target]]` tables: the names to serve, the files to write, how to
//! tell the service, and how to check what it serves.
//!
//! Pure. Rules: every target writes its private key somewhere (`key` or
//! `combined`); a dual target has `[target.rsa]` and `[target.ecdsa]` and
//! no files of its own; no file is written by two targets; no target file
//! lies inside `state_dir` or `[dkim] key_dir` or is a signer file mxkeys
//! writes ([`check_overlaps`]). A target without `domains` serves the
//! `hostname` key, else the machine's host name given in [`super::Host`].
//! A `[target.dane]` table names a `[dns.NAME]` provider that exists, at
//! least one port, host and record kind, and no wildcard host (TLSA owner
//! names are `_PORT._tcp.HOST`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::dkim::Dkim;
use super::raw::{RawDane, RawFiles, RawKeyType, RawTarget};
use super::value::{Reload, ValueError, at, dns_names, key_mode, not_empty, reloads};
use super::{ConfigError, Context};
use crate::cert::KeyTypeFilter;
use crate::dane::tlsa::Spec;
use crate::names::DnsName;

pub(super) const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `[target.dane]`: TLSA records kept in step with this target's
    /// certificates, and the gate that holds a new key until they are aged.
    pub dane: Option<Dane>,
}

/// `ttl` of the TLSA records mxkeys adds, when not configured: 5 minutes, so
/// the gate (2 × TTL) holds a new key for about ten minutes.
pub const DEFAULT_DANE_TTL: u32 = 300;
/// `dane_hold_max` when not configured.
pub const DEFAULT_DANE_HOLD_MAX: Duration = Duration::from_secs(7 * 86_400);
/// The ports senders look TLSA records up for when `ports` is not set.
const DEFAULT_DANE_PORTS: [u16; 1] = [25];

/// A target's `[target.dane]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dane {
    /// The `[dns.NAME]` provider that writes the TLSA records.
    pub dns: String,
    /// The ports senders connect to (`_PORT._tcp.HOST`).
    pub ports: Vec<u16>,
    /// The names senders look up: the target's `domains` by default.
    pub hosts: Vec<DnsName>,
    /// The kinds of record to keep, each built from the chain being
    /// installed (`3 1 1`: the leaf's key; `2 1 1`: its issuer's key).
    pub records: Vec<Spec>,
    /// TTL of the records mxkeys adds.
    pub ttl: u32,
    /// `dane_hold_max`: a held certificate is installed anyway when the
    /// current one has less than this left.
    pub hold_max: Duration,
    /// `key_rollover`: an `acme` source serving this target orders with its
    /// standby key every this many renewals; `None`: only on request.
    pub key_rollover: Option<u32>,
}

impl Dane {
    /// The TLSA owner names, `_PORT._tcp.HOST`, for every host and port, in
    /// configuration order.
    pub fn owners(&self) -> Vec<String> {
        self.hosts
            .iter()
            .flat_map(|h| {
                self.ports
                    .iter()
                    .map(move |p| format!("_{p}._tcp.{}", h.as_str()))
            })
            .collect()
    }
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

/// Validates the targets in order; `default_name` serves those without
/// `domains`. No two targets share a name or a file.
pub(super) fn targets(
    raw: Vec<RawTarget>,
    default_name: Option<&DnsName>,
    ctx: &Context,
) -> Result<Vec<Target>, ConfigError> {
    let mut targets = Vec::new();
    let mut names = HashSet::new();
    let mut written = HashSet::new();
    for t in raw {
        let name = t.name.clone();
        let target =
            target(t, default_name, ctx).map_err(|m| ctx.error(format!("target {name:?}: {m}")))?;
        if !names.insert(target.name.clone()) {
            return Err(ctx.error(format!(
                "target {:?}: the name is used by another target",
                target.name
            )));
        }
        for (_, p) in target.slots.iter().flat_map(|s| s.files.iter()) {
            if !written.insert(p.to_owned()) {
                return Err(ctx.error(format!(
                    "target {:?}: {} is written by another target or file too",
                    target.name,
                    p.display()
                )));
            }
        }
        targets.push(target);
    }
    Ok(targets)
}

/// Why one target is refused; the caller names the target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum TargetError {
    #[error(transparent)]
    Key(#[from] super::value::KeyError),
    #[error("no `domains`, no `hostname`, and the machine's host name is not usable")]
    NoName,
    #[error(
        "{0}no file to write: set at least one of `fullchain`, `key`, `combined`, `cert`, `chain`"
    )]
    NoFile(&'static str),
    #[error("{0}writes a certificate but no private key: set `key` or `combined`")]
    NoKeyFile(&'static str),
    #[error("key `key_type`: \"dual\" needs the [target.rsa] and [target.ecdsa] tables")]
    DualWithoutTables,
    #[error("file keys go inside [target.rsa] and [target.ecdsa] when those tables are used")]
    OwnFilesBesideTables,
    #[error("key `key_type`: with [target.rsa]/[target.ecdsa] leave it out or set \"dual\"")]
    SingleTypeWithTables,
    #[error("key `key_type`: \"dual\" needs both [target.rsa] and [target.ecdsa]")]
    DualMissingTable,
    #[error("key `verify`: address {0:?} is not host:port like \"127.0.0.1:25\"")]
    VerifyAddress(String),
    #[error("[target.dane]: {0}")]
    Dane(String),
}

fn target(
    t: RawTarget,
    default_name: Option<&DnsName>,
    ctx: &Context,
) -> Result<Target, TargetError> {
    if t.name.is_empty() {
        return Err(at("name")(ValueError::Empty).into());
    }
    let domains = match t.domains {
        Some(d) if d.is_empty() => return Err(at("domains")(ValueError::Empty).into()),
        Some(d) => dns_names(&d).map_err(at("domains"))?,
        None => vec![default_name.cloned().ok_or(TargetError::NoName)?],
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
    let slot_files = |raw: RawFiles, what: &'static str| -> Result<TargetFiles, TargetError> {
        let abs = |p: Option<PathBuf>| p.map(|p| ctx.abs(&p));
        let files = TargetFiles {
            fullchain: abs(raw.fullchain),
            key: abs(raw.key),
            combined: abs(raw.combined),
            cert: abs(raw.cert),
            chain: abs(raw.chain),
        };
        if files.iter().next().is_none() {
            return Err(TargetError::NoFile(what));
        }
        if files.key.is_none() && files.combined.is_none() {
            return Err(TargetError::NoKeyFile(what));
        }
        Ok(files)
    };
    let slots = match (t.rsa, t.ecdsa) {
        (None, None) => {
            let key_type = match t.key_type {
                None | Some(RawKeyType::Any) => KeyTypeFilter::Any,
                Some(RawKeyType::Rsa) => KeyTypeFilter::Rsa,
                Some(RawKeyType::Ecdsa) => KeyTypeFilter::Ecdsa,
                Some(RawKeyType::Dual) => return Err(TargetError::DualWithoutTables),
            };
            vec![Slot {
                label: None,
                key_type,
                files: slot_files(own_files, "")?,
            }]
        }
        (rsa, ecdsa) => {
            if has_own {
                return Err(TargetError::OwnFilesBesideTables);
            }
            if !matches!(t.key_type, None | Some(RawKeyType::Dual)) {
                return Err(TargetError::SingleTypeWithTables);
            }
            if t.key_type == Some(RawKeyType::Dual) && (rsa.is_none() || ecdsa.is_none()) {
                return Err(TargetError::DualMissingTable);
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
    if let Some(v) = t.verify.iter().find(|v| {
        v.address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    }) {
        return Err(TargetError::VerifyAddress(v.address.clone()));
    }
    let key_mode = key_mode(t.mode.as_deref()).map_err(at("mode"))?;
    let reloads = reloads(t.reload, t.reload_signal, &|p| ctx.abs(p))?;
    not_empty("owner", t.owner.as_deref())?;
    not_empty("group", t.group.as_deref())?;
    let dane = t.dane.map(|d| dane(d, &domains)).transpose()?;
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
        dane,
    })
}

/// Validates `[target.dane]`; `domains` are the target's, the default hosts.
fn dane(d: RawDane, domains: &[DnsName]) -> Result<Dane, TargetError> {
    let bad = |m: String| TargetError::Dane(m);
    if d.dns.is_empty() {
        return Err(bad("key `dns`: empty".to_owned()));
    }
    let ports = d.ports.unwrap_or_else(|| DEFAULT_DANE_PORTS.to_vec());
    if ports.is_empty() {
        return Err(bad("key `ports`: empty (leave it out for [25])".to_owned()));
    }
    if ports.contains(&0) {
        return Err(bad("key `ports`: 0 is not a port".to_owned()));
    }
    let hosts_given = d.hosts.is_some();
    let hosts = match d.hosts {
        Some(h) if h.is_empty() => {
            return Err(bad(
                "key `hosts`: empty (leave it out for the target's domains)".to_owned(),
            ));
        }
        Some(h) => dns_names(&h).map_err(|e| bad(format!("key `hosts`: {e}")))?,
        None => domains.to_vec(),
    };
    if let Some(w) = hosts.iter().find(|h| h.is_wildcard()) {
        return Err(bad(format!(
            "key `hosts`: {:?} is a wildcard; senders look TLSA records up under the MX host's own name{}",
            w.as_str(),
            if !hosts_given {
                " (set `hosts` to the MX names this target serves)"
            } else {
                ""
            }
        )));
    }
    let mut records = d.records.unwrap_or_else(|| vec![Spec::EE]);
    if records.is_empty() {
        return Err(bad(
            "key `records`: empty (leave it out for [\"3 1 1\"])".to_owned()
        ));
    }
    let mut once = HashSet::new();
    records.retain(|r| once.insert(*r));
    let ttl = d.ttl.unwrap_or(DEFAULT_DANE_TTL);
    if ttl == 0 {
        return Err(bad(
            "key `ttl`: 0 would let resolvers never cache the records".to_owned(),
        ));
    }
    if d.key_rollover == Some(0) {
        return Err(bad(
            "key `key_rollover`: 0 (leave it out to roll only on `mxkeys dane rollover`)"
                .to_owned(),
        ));
    }
    Ok(Dane {
        dns: d.dns,
        ports,
        hosts,
        records,
        ttl,
        hold_max: d.dane_hold_max.unwrap_or(DEFAULT_DANE_HOLD_MAX),
        key_rollover: d.key_rollover,
    })
}

/// Every `[target.dane]` names a `[dns.NAME]` table that exists.
pub(super) fn check_dane_providers(
    targets: &[Target],
    dns: &std::collections::BTreeMap<String, super::DnsProvider>,
    ctx: &Context,
) -> Result<(), ConfigError> {
    for t in targets {
        if let Some(d) = &t.dane
            && !dns.contains_key(&d.dns)
        {
            return Err(ctx.error(format!(
                "target {:?}: [target.dane]: key `dns`: no [dns.{}] table",
                t.name, d.dns
            )));
        }
    }
    Ok(())
}

/// Target files are written over whatever is there: none may lie inside
/// `state_dir` (mxkeys' own records, ACME keys, the DKIM keys by default),
/// inside `[dkim] key_dir`, or be one of the signer files mxkeys writes in
/// `[dkim] signer_dir`. One line naming both keys.
pub(super) fn check_overlaps(
    targets: &[Target],
    state_dir: &Path,
    dkim: Option<&Dkim>,
    ctx: &Context,
) -> Result<(), ConfigError> {
    // (key, path, whether it is a directory mxkeys owns)
    let mut owned: Vec<(&str, PathBuf, bool)> = vec![("state_dir", state_dir.to_owned(), true)];
    if let Some(d) = dkim {
        owned.push(("[dkim] key_dir", d.key_dir.clone(), true));
        for n in d.signer.files() {
            owned.push(("[dkim] signer_dir", d.signer_dir.join(n), false));
        }
    }
    for t in targets {
        for (role, path) in t.slots.iter().flat_map(|s| s.files.iter()) {
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
                return Err(ctx.error(format!(
                    "target {:?}: key `{}` ({}) {how} `{key}` ({}): mxkeys would overwrite its own files",
                    t.name,
                    role.as_str(),
                    path.display(),
                    other.display()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TARGET, parse};
    use super::{KeyTypeFilter, VerifyProtocol};
    use std::time::Duration;
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
    fn a_dane_table_gets_port_25_the_target_domains_and_3_1_1_by_default() {
        let dns = "[dns.ns]\ntype = \"manual\"\n";
        let c = parse(&format!(
            "{dns}{TARGET}key = \"k\"\n[target.dane]\ndns = \"ns\"\n"
        ))
        .unwrap();
        let d = c.targets[0].dane.as_ref().unwrap();
        assert_eq!(d.ports, vec![25]);
        assert_eq!(d.owners(), vec!["_25._tcp.mail.example.com".to_owned()]);
        assert_eq!(d.records, vec![crate::dane::tlsa::Spec::EE]);
        assert_eq!(d.ttl, super::DEFAULT_DANE_TTL);
        assert_eq!(d.hold_max, super::DEFAULT_DANE_HOLD_MAX);
        assert_eq!(d.key_rollover, None);

        let c = parse(&format!(
            "{dns}{TARGET}key = \"k\"\n[target.dane]\ndns = \"ns\"\nports = [25, 465]\nhosts = [\"mx1.example.com\", \"MX2.example.com\"]\nrecords = [\"3 1 1\", \"2 1 1\", \"3 1 1\"]\nttl = 2\ndane_hold_max = \"3d\"\nkey_rollover = 4\n"
        ))
        .unwrap();
        let d = c.targets[0].dane.as_ref().unwrap();
        assert_eq!(
            d.owners(),
            vec![
                "_25._tcp.mx1.example.com",
                "_465._tcp.mx1.example.com",
                "_25._tcp.mx2.example.com",
                "_465._tcp.mx2.example.com"
            ]
        );
        assert_eq!(
            d.records,
            vec![crate::dane::tlsa::Spec::EE, crate::dane::tlsa::Spec::TA]
        );
        assert_eq!((d.ttl, d.key_rollover), (2, Some(4)));
        assert_eq!(d.hold_max, Duration::from_secs(3 * 86_400));
    }

    #[test]
    fn a_dane_table_that_cannot_work_is_refused_naming_its_key() {
        let dns = "[dns.ns]\ntype = \"manual\"\n";
        for (table, needle) in [
            ("dns = \"other\"\n", "no [dns.other] table"),
            ("dns = \"ns\"\nports = []\n", "key `ports`"),
            ("dns = \"ns\"\nports = [0]\n", "key `ports`"),
            ("dns = \"ns\"\nhosts = []\n", "key `hosts`"),
            ("dns = \"ns\"\nhosts = [\"*.example.com\"]\n", "wildcard"),
            ("dns = \"ns\"\nrecords = []\n", "key `records`"),
            ("dns = \"ns\"\nrecords = [\"3 0 1\"]\n", "records"),
            ("dns = \"ns\"\nttl = 0\n", "key `ttl`"),
            ("dns = \"ns\"\nkey_rollover = 0\n", "key `key_rollover`"),
            ("dns = \"ns\"\nport = 25\n", "port"),
        ] {
            let e = parse(&format!("{dns}{TARGET}key = \"k\"\n[target.dane]\n{table}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{table:?}: {e}");
        }
    }

    #[test]
    fn an_acme_source_is_linked_to_the_dane_targets_its_names_cover() {
        let c = parse(
            "[dns.ns]\ntype = \"manual\"\n[[source]]\ntype = \"acme\"\nname = \"wild\"\ndomains = [\"*.example.com\"]\nchallenge = \"dns-01\"\ndns = \"ns\"\n[[source]]\ntype = \"acme\"\nname = \"other\"\ndomains = [\"mail.example.org\"]\nchallenge = \"http-01\"\n[[target]]\nname = \"mx\"\ndomains = [\"mail.example.com\"]\nkey = \"k1\"\n[target.dane]\ndns = \"ns\"\n[[target]]\nname = \"plain\"\ndomains = [\"mail.example.com\"]\nkey = \"k2\"\n",
        )
        .unwrap();
        let linked: Vec<(&str, &[String])> = c
            .acme_sources()
            .map(|a| (a.name.as_str(), a.dane_targets.as_slice()))
            .collect();
        assert_eq!(
            linked,
            vec![("wild", &["mx".to_owned()][..]), ("other", &[][..])]
        );
    }
}
