//! What senders see of an MTA-STS domain (effects, read-only): the policy
//! body each responder serves over HTTPS, the `_mta-sts` id and the MX set
//! on every authoritative server, and each MX host's STARTTLS certificate.
//!
//! Rule: look as a sender looks. A body counts only when fetched over
//! HTTPS with SNI and Host `mta-sts.DOMAIN` and a chain that validates
//! (the system's roots plus `[mta_sts] ca_bundle`) for that name; an MX
//! host passes only when every address of it serves, after STARTTLS on
//! port 25, a chain valid for its name. Nothing here writes or decides:
//! the MTA-STS pass ([`super::pass`]) and `mxkeys mta-sts check` do.
//!
//! LEAD SKELETON: the signatures are the contract; the bodies are the
//! pass helper's to write.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use mxkeys_providers::propagation::Propagation;

use crate::config::MtaSts;
use crate::names::DnsName;

/// Why a look failed, one line, naming what was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("not built yet")]
    NotBuilt,
}

/// The roots a fetch or a STARTTLS check validates against.
#[derive(Clone)]
pub struct Trust {}

impl Trust {
    /// The system's roots plus the certificates of `ca_bundle`.
    pub fn new(ca_bundle: Option<&Path>) -> Result<Trust, ProbeError> {
        let _ = ca_bundle;
        Err(ProbeError::NotBuilt)
    }
}

/// The MX set every authoritative server shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxView {
    /// Exchange host names, lower case, no trailing dot.
    pub hosts: BTreeSet<String>,
    /// The largest TTL any server gave the set.
    pub ttl: u32,
}

/// One authoritative server's `_mta-sts` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdView {
    /// The server, as the ledger names it.
    pub server: String,
    /// The `id=` value; `None` for no (valid) record.
    pub id: Option<String>,
    /// The record's TTL, or the negative TTL when absent.
    pub ttl: u32,
}

/// The addresses the policy of `domain` is fetched back from: `responders`,
/// else the `listen` address (loopback for a wildcard), else every address
/// `mta-sts.DOMAIN` resolves to.
pub async fn responders(mta_sts: &MtaSts, domain: &DnsName) -> Result<Vec<SocketAddr>, ProbeError> {
    let _ = (mta_sts, domain);
    Err(ProbeError::NotBuilt)
}

/// The body `at` serves for `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
pub async fn fetch_policy(
    at: SocketAddr,
    domain: &DnsName,
    trust: &Trust,
) -> Result<String, ProbeError> {
    let _ = (at, domain, trust);
    Err(ProbeError::NotBuilt)
}

/// Whether every address of MX host `host` serves, after STARTTLS on port
/// 25, a chain valid for `host` under `trust`.
pub async fn starttls(host: &str, trust: &Trust) -> Result<(), ProbeError> {
    let _ = (host, trust);
    Err(ProbeError::NotBuilt)
}

/// `domain`'s MX set on every authoritative server.
pub async fn observe_mx(prop: &Propagation, domain: &DnsName) -> Result<MxView, ProbeError> {
    let _ = (prop, domain);
    Err(ProbeError::NotBuilt)
}

/// `_mta-sts.DOMAIN` on every authoritative server.
pub async fn observe_ids(prop: &Propagation, domain: &DnsName) -> Result<Vec<IdView>, ProbeError> {
    let _ = (prop, domain);
    Err(ProbeError::NotBuilt)
}
