//! DNS record providers for mxkeys, and the propagation check.
//!
//! ACME DNS-01 challenges, DKIM keys and DANE records all need mxkeys to
//! write DNS records and to know when the world can see them. Every
//! provider implements one trait, [`RecordStore`], over *record sets* (all
//! records of one name and type): read a set, replace it with exactly the
//! given values, remove it. TXT values are handled as whole strings: a
//! provider splits them into 255-byte character-strings on write and joins
//! them on read ([`txt`]), so values are compared as verifiers see them.
//!
//! Providers: [`cloudflare`] (API v4), [`rfc2136`] (dynamic update with
//! TSIG), [`exec`] (a program the user names), [`manual`] (prints what to
//! set). [`propagation`] asks every authoritative server directly until each
//! answers exactly the expected set.

pub mod cloudflare;
pub mod exec;
pub mod manual;
pub mod propagation;
pub mod rfc2136;
pub mod txt;

use std::fmt;
use std::future::Future;

/// A record type mxkeys writes. TXT first; the others fit the same trait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    Txt,
    Tlsa,
    Cname,
}

impl fmt::Display for RecordType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecordType::Txt => "TXT",
            RecordType::Tlsa => "TLSA",
            RecordType::Cname => "CNAME",
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
        usage: u8,
        selector: u8,
        matching: u8,
        data: Vec<u8>,
    },
    /// The target name, absolute, without the trailing dot.
    Cname(String),
}

impl RData {
    pub fn record_type(&self) -> RecordType {
        match self {
            RData::Txt(_) => RecordType::Txt,
            RData::Tlsa { .. } => RecordType::Tlsa,
            RData::Cname(_) => RecordType::Cname,
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
        }
    }
}

/// Whether a write changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The set already was as asked: nothing was written.
    Unchanged,
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
}

/// Canonical form of a DNS name: lower case, no trailing dot.
pub fn canonical_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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
