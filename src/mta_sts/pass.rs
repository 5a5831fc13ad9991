//! The MTA-STS pass (effects): per `[mta_sts]` domain, look at what senders
//! see ([`super::probe`]), record it in the ledger (`state_dir/mta-sts.json`,
//! under the run lock), ask the planner ([`super::order::plan`]) for the
//! next step and take it: write the body to serve ([`serve_dir`]), publish
//! the `_mta-sts` TXT id, delete the records after `disable`. It also keeps
//! `[tls_rpt]`'s `_smtp._tls` records as configured. The pass is the only
//! code that writes those records and files; it never installs a
//! certificate.
//!
//! LEAD SKELETON: the signatures are the contract; the bodies are the
//! pass helper's to write.

use std::path::PathBuf;

use super::order;
use crate::config::{Config, Serve};
use crate::names::DnsName;

/// What one pass did and saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MtaStsPass {
    /// When to run again (Unix seconds); `None`: nothing to wait for
    /// (the daemon still resyncs now and then).
    pub next_wake: Option<i64>,
    /// Per policy domain, in configuration order.
    pub domains: Vec<DomainOutcome>,
    /// What could not be done, one line each, naming domain and record.
    pub problems: Vec<String>,
    /// What was done (body written, id published, records deleted).
    pub done: Vec<String>,
}

/// One domain's plan after the pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainOutcome {
    pub domain: String,
    /// `None` when the domain could not be looked at (see `problems`).
    pub plan: Option<order::Plan>,
}

/// Where the pass writes the policy bodies, in the webroot layout:
/// `webroot`, or `state_dir/mta-sts-www` for the built-in responder.
pub fn serve_dir(config: &Config) -> Option<PathBuf> {
    let m = config.mta_sts.as_ref()?;
    Some(match &m.serve {
        Serve::Webroot(dir) => dir.clone(),
        Serve::Listen(_) => config.state_dir.mta_sts_www(),
    })
}

/// Runs the MTA-STS pass for every `[mta_sts]` domain and the `[tls_rpt]`
/// records at `now`. Never fails as a whole: each problem is a line.
pub async fn pass(config: &Config, now: i64) -> MtaStsPass {
    let _ = (config, now);
    MtaStsPass::default()
}

/// `mxkeys mta-sts disable DOMAIN`: marks the domain in the ledger (under
/// the run lock); the next passes publish `mode: none` and later delete
/// the records.
pub fn disable(config: &Config, domain: &DnsName) -> Result<(), String> {
    let _ = (config, domain);
    Err("not built yet".to_owned())
}
