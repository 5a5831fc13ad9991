//! DNS record providers for mxkeys, and the propagation check.
//!
//! ACME DNS-01 challenges, DKIM keys and DANE records all need mxkeys to
//! write DNS records and to know when the world can see them. Every
//! provider implements one trait, [`RecordStore`], over *record sets* (all
//! records of one name and type): read a set, replace it with exactly the
//! given values, remove it; and over single values of a set that others
//! share (ACME DNS-01: several clients answer challenges at one
//! `_acme-challenge` name): add values, remove values, leaving every other
//! value alone. TXT values are handled as whole strings: a
//! provider splits them into 255-byte character-strings on write and joins
//! them on read ([`txt`]), so values are compared as verifiers see them.
//!
//! Providers: [`cloudflare`] (API v4), [`rfc2136`] (dynamic update with
//! TSIG), [`exec`] (a program the user names), [`manual`] (prints what to
//! set), [`longtail`] (Route 53, Hetzner, OVH and the other hosts of the
//! `dns-update` crate). [`propagation`] asks every authoritative server directly until each
//! answers exactly the expected set, or a set containing the expected
//! values; [`observe`] reports, in one round, what each serves and whether
//! it is DNSSEC-signed, and what a validating resolver answers (DANE).

#![deny(missing_docs)]

pub mod cloudflare;
pub mod exec;
pub mod longtail;
pub mod manual;
pub mod observe;
pub mod propagation;
pub mod rfc2136;
pub mod txt;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// A record type mxkeys writes. TXT first; the others fit the same trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    /// Text: ACME DNS-01 challenges and DKIM public keys.
    Txt,
    /// DANE certificate association (RFC 6698), for the mail server's TLS keys.
    Tlsa,
    /// An alias, followed by the propagation check when it meets one on the
    /// way to the expected set (delegated `_acme-challenge` names).
    Cname,
    /// An IPv4 address: looked up through a validating resolver for the
    /// DANE check of a mail host's addresses.
    A,
    /// An IPv6 address, as [`RecordType::A`].
    Aaaa,
    /// A mail exchange: read (never written) for MTA-STS, whose policy
    /// lists the domain's MX hosts.
    Mx,
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::Txt => "TXT",
            RecordType::Tlsa => "TLSA",
            RecordType::Cname => "CNAME",
            RecordType::A => "A",
            RecordType::Aaaa => "AAAA",
            RecordType::Mx => "MX",
        })
    }
}

/// One record's data.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RData {
    /// The whole TXT value: its character-strings joined without separator.
    Txt(String),
    /// DANE TLSA (RFC 6698).
    Tlsa {
        /// Certificate usage: which certificate of the chain is matched
        /// (3 = DANE-EE, the server's own).
        usage: u8,
        /// Whether the whole certificate (0) or its public key (1) is matched.
        selector: u8,
        /// How `data` was made: 0 exact bytes, 1 SHA-256, 2 SHA-512.
        matching: u8,
        /// The association data: the selected bytes, or their digest.
        data: Vec<u8>,
    },
    /// The target name, absolute, without the trailing dot.
    Cname(String),
    /// An IPv4 address.
    A(Ipv4Addr),
    /// An IPv6 address.
    Aaaa(Ipv6Addr),
    /// A mail exchange (RFC 5321 §5.1).
    Mx {
        /// Lower is tried first.
        preference: u16,
        /// The host, lower case, without the trailing dot; the null MX
        /// (RFC 7505: the domain accepts no mail) is `"."`.
        exchange: String,
    },
}

impl RData {
    /// The type a set of this value has: every value given to one write
    /// must match the type asked for.
    pub fn record_type(&self) -> RecordType {
        match self {
            RData::Txt(_) => RecordType::Txt,
            RData::Tlsa { .. } => RecordType::Tlsa,
            RData::Cname(_) => RecordType::Cname,
            RData::A(_) => RecordType::A,
            RData::Aaaa(_) => RecordType::Aaaa,
            RData::Mx { .. } => RecordType::Mx,
        }
    }
}

impl fmt::Display for RData {
    /// Zone-file presentation (TXT split into quoted strings of at most 255
    /// bytes).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RData::Txt(value) => f.write_str(&txt::zone_file_strings(value)),
            RData::Tlsa {
                usage,
                selector,
                matching,
                data,
            } => {
                write!(f, "{usage} {selector} {matching} ")?;
                data.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
            RData::Cname(target) => write!(f, "{target}."),
            RData::A(ip) => write!(f, "{ip}"),
            RData::Aaaa(ip) => write!(f, "{ip}"),
            RData::Mx {
                preference,
                exchange,
            } if exchange == "." => write!(f, "{preference} ."),
            RData::Mx {
                preference,
                exchange,
            } => write!(f, "{preference} {exchange}."),
        }
    }
}

/// Whether a write changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The set already was as asked: nothing was written.
    Unchanged,
    /// The store was asked to change the set (replaced, values added or
    /// removed).
    Changed,
}

/// What went wrong, in one line that never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Credentials missing, unreadable or refused.
    #[error("authentication: {0}")]
    Auth(String),
    /// No zone the provider manages contains this name.
    #[error("no zone found for {0}")]
    NoZone(String),
    /// The provider said no (an API error, a REFUSED update...).
    #[error("{0}")]
    Refused(String),
    /// Rate-limited and still limited after waiting as asked.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// Network or protocol trouble.
    #[error("{0}")]
    Transport(String),
    /// A value this provider cannot represent.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The configuration cannot work.
    #[error("configuration: {0}")]
    Config(String),
}

/// A store of DNS record sets. Names are absolute, lower case, without the
/// trailing dot.
pub trait RecordStore: Send + Sync {
    /// The values of the set `name`/`rtype` (empty when it does not exist).
    fn read(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> impl Future<Output = Result<Vec<RData>, Error>> + Send;

    /// Makes the set exactly `values` with `ttl`: reads first and writes
    /// nothing when it already is; never leaves the set empty in between.
    fn replace(
        &self,
        name: &str,
        ttl: u32,
        values: &[RData],
    ) -> impl Future<Output = Result<Change, Error>> + Send;

    /// Removes the set `name`/`rtype` (no-op when absent).
    fn remove(
        &self,
        name: &str,
        rtype: RecordType,
    ) -> impl Future<Output = Result<Change, Error>> + Send;

    /// Adds `values` (of one type) to their set with `ttl`, keeping every
    /// value already there, whoever wrote it. Values already present are
    /// left as they are ([`Change::Unchanged`] when all are).
    fn add(
        &self,
        name: &str,
        ttl: u32,
        values: &[RData],
    ) -> impl Future<Output = Result<Change, Error>> + Send;

    /// Removes exactly `values` (of one type) from their set, keeping every
    /// other value; values not present are ignored.
    fn remove_values(
        &self,
        name: &str,
        values: &[RData],
    ) -> impl Future<Output = Result<Change, Error>> + Send;
}

/// The one record type of `values`, for [`RecordStore::add`] and
/// [`RecordStore::remove_values`].
pub fn values_type(values: &[RData]) -> Result<RecordType, Error> {
    let Some(rtype) = values.first().map(RData::record_type) else {
        return Err(Error::Config("no values given".to_owned()));
    };
    if let Some(other) = values.iter().find(|v| v.record_type() != rtype) {
        return Err(Error::Unsupported(format!(
            "values of one type expected, got {rtype} and {}",
            other.record_type()
        )));
    }
    Ok(rtype)
}

/// One async lock per record name, for providers that change a set by
/// reading it and writing it whole: two tasks of one process changing the
/// same set take turns, so neither loses the other's values. (Other
/// processes are not covered: such providers say so.)
#[derive(Debug, Clone, Default)]
pub struct NameLocks(Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>);

impl NameLocks {
    /// Waits for, and holds until dropped, the lock of `name`.
    pub async fn lock(&self, name: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            // Forget locks nobody holds or waits for.
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.entry(canonical_name(name)).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// Canonical form of a DNS name: lower case, no trailing dot.
pub fn canonical_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// An MX exchange in mxkeys' form: lower case, no trailing dot; the null
/// MX (the root name, `"."` or `""`) stays `"."`.
pub fn mx_exchange(name: &str) -> String {
    match canonical_name(name) {
        root if root.is_empty() => ".".to_owned(),
        host => host,
    }
}

/// Whether `set` holds every value of `values`.
pub fn contains_all(set: &[RData], values: &[RData]) -> bool {
    values.iter().all(|v| set.contains(v))
}

/// Compares two sets as unordered collections.
pub fn same_set(a: &[RData], b: &[RData]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    a == b
}
