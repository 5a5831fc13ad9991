//! The MTA-STS pass (effects): per `[mta_sts]` domain, look at what senders
//! see ([`super::probe`]), record it in the ledger (`state_dir/mta-sts.json`,
//! under the run lock), ask the planner ([`super::order::plan`]) for the
//! next step and take it: write the body to serve ([`serve_dir`]), publish
//! the `_mta-sts` TXT id, delete the records after `disable`. It also keeps
//! `[tls_rpt]`'s `_smtp._tls` records as configured. The pass is the only
//! code that writes those records and files; it never installs a
//! certificate.
//!
//! Rules: decide apart from act (the planner decides, this layer only
//! looks, records and takes the one step planned, then plans again); a look
//! that fails (the MX set, the TXT ids, the responders' addresses) changes
//! nothing and is one problem line naming the domain; the id is written
//! only after every responder served its body back over HTTPS, and is
//! recorded live only once every authoritative server answers it. Time is
//! the caller's `now`, moved on by the pauses the pass takes, never read
//! from the clock: the unit tests below drive it with a fake look, a fake
//! record store and a fake clock.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mxkeys_providers::propagation::Propagation;
use mxkeys_providers::{RData, RecordStore, RecordType};

use super::ledger::{DomainLedger, Ledger, StarttlsCheck, TxtState};
use super::order::{self, Inputs, Plan, Step, WaitReason, Wanted};
use super::policy::{self, Mode, MxPattern, StsRecord, sts_record_name};
use super::probe::{self, IdView, MxView, Trust};
use super::webroot;
use crate::config::{Config, MtaSts, Serve, TlsRpt};
use crate::dns::Provider;
use crate::names::DnsName;
use crate::tls_rpt::record::{TlsRptRecord, record_name};

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

/// The TTL of the `_mta-sts` and `_smtp._tls` TXT records written.
pub const RECORD_TTL: u32 = 300;
/// How long a passing STARTTLS check of an MX host counts, in seconds.
const STARTTLS_FRESH: i64 = 3_600;
/// How often a body just written is fetched back before the pass gives up
/// for now, and the pause between the tries.
const FETCH_TRIES: u32 = 3;
const FETCH_PAUSE: Duration = Duration::from_secs(1);
/// When a domain whose look failed is looked at again, in seconds.
const RETRY_AFTER_FAILURE: i64 = 60;
/// The most steps one pass takes for a domain (each is planned afresh).
const MAX_STEPS: usize = 8;

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
    let look = config.mta_sts.as_ref().map(|m| Probe::new(config, m));
    let look = match &look {
        Some(Ok(l)) => Ok(l),
        Some(Err(e)) => Err(e.clone()),
        None => Err(String::new()),
    };
    let out = run(config, now, look, &|name| provider(config, name)).await;
    // Each line names its domain ("mta-sts domain D: ...", "tls-rpt: ...").
    for p in &out.problems {
        tracing::error!("{p}");
    }
    for d in &out.done {
        tracing::info!("{d}");
    }
    out
}

/// `mxkeys mta-sts disable DOMAIN`: marks the domain in the ledger (under
/// the run lock); the next passes publish `mode: none` and later delete
/// the records.
pub fn disable(config: &Config, domain: &DnsName) -> Result<(), String> {
    policy_domain(config, domain)?;
    update_ledger(config, |l| {
        l.domains
            .entry(domain.as_str().to_owned())
            .or_default()
            .disable = true;
    })
}

/// `mxkeys mta-sts enable DOMAIN`: undoes `disable` in the ledger (under
/// the run lock); the next pass serves and publishes the configured policy
/// again, with its own id. Returns whether the domain was disabled.
pub fn enable(config: &Config, domain: &DnsName) -> Result<bool, String> {
    policy_domain(config, domain)?;
    update_ledger(config, |l| {
        l.domains
            .get_mut(domain.as_str())
            .is_some_and(|d| std::mem::replace(&mut d.disable, false))
    })
}

/// `domain` is one of `[mta_sts] domains`, or the error says why not.
fn policy_domain(config: &Config, domain: &DnsName) -> Result<(), String> {
    let Some(m) = &config.mta_sts else {
        return Err("no [mta_sts] table in the configuration".to_owned());
    };
    if m.domains.contains(domain) {
        Ok(())
    } else {
        Err(format!("{domain} is not one of the [mta_sts] domains"))
    }
}

/// What the pass looks at: [`Probe`] in service, a fake in the unit tests.
/// Errors are one line naming what was looked at.
trait Look {
    async fn responders(&self, domain: &DnsName) -> Result<Vec<SocketAddr>, String>;
    async fn fetch_policy(&self, at: SocketAddr, domain: &DnsName) -> Result<String, String>;
    async fn starttls(&self, host: &str) -> Result<(), String>;
    async fn observe_mx(&self, domain: &DnsName) -> Result<MxView, String>;
    async fn observe_ids(&self, domain: &DnsName) -> Result<Vec<IdView>, String>;
    /// Waits `d` (the pass moves its clock on by as much).
    async fn pause(&self, d: Duration);
}

/// The real look: [`super::probe`] with the `[mta_sts]` trust roots and
/// the provider's propagation settings.
struct Probe<'a> {
    mta_sts: &'a MtaSts,
    trust: Trust,
    prop: Propagation,
}

impl<'a> Probe<'a> {
    fn new(config: &Config, mta_sts: &'a MtaSts) -> Result<Probe<'a>, String> {
        let dns = config
            .dns
            .get(&mta_sts.dns)
            .ok_or_else(|| format!("[dns.{}] is not configured", mta_sts.dns))?;
        let trust = Trust::new(mta_sts.ca_bundle.as_deref()).map_err(|e| e.to_string())?;
        Ok(Probe {
            mta_sts,
            trust,
            prop: crate::dns::propagation(dns),
        })
    }
}

impl Look for Probe<'_> {
    async fn responders(&self, domain: &DnsName) -> Result<Vec<SocketAddr>, String> {
        probe::responders(self.mta_sts, domain)
            .await
            .map_err(|e| e.to_string())
    }

    async fn fetch_policy(&self, at: SocketAddr, domain: &DnsName) -> Result<String, String> {
        probe::fetch_policy(at, domain, &self.trust)
            .await
            .map_err(|e| e.to_string())
    }

    async fn starttls(&self, host: &str) -> Result<(), String> {
        probe::starttls(host, &self.trust)
            .await
            .map_err(|e| e.to_string())
    }

    async fn observe_mx(&self, domain: &DnsName) -> Result<MxView, String> {
        probe::observe_mx(&self.prop, domain)
            .await
            .map_err(|e| e.to_string())
    }

    async fn observe_ids(&self, domain: &DnsName) -> Result<Vec<IdView>, String> {
        probe::observe_ids(&self.prop, domain)
            .await
            .map_err(|e| e.to_string())
    }

    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// The `[dns.NAME]` provider, built.
fn provider(config: &Config, name: &str) -> Result<Provider, String> {
    let dns = config
        .dns
        .get(name)
        .ok_or_else(|| format!("[dns.{name}] is not configured"))?;
    Provider::build(dns).map_err(|e| e.to_string())
}

/// What every domain's part of a pass shares.
struct Ctx<'a, L, S> {
    config: &'a Config,
    mta_sts: &'a MtaSts,
    look: &'a L,
    store: &'a S,
    dir: PathBuf,
    interval: Duration,
    timeout: Duration,
}

/// The pass with its effects given: `look` (or why there is none) and the
/// record store of each `[dns.NAME]`.
async fn run<L: Look, S: RecordStore>(
    config: &Config,
    now: i64,
    look: Result<&L, String>,
    store_of: &dyn Fn(&str) -> Result<S, String>,
) -> MtaStsPass {
    let mut out = MtaStsPass::default();
    if let (Some(m), Some(dir)) = (&config.mta_sts, serve_dir(config)) {
        let store = store_of(&m.dns);
        let ready = match (look, &store) {
            (Ok(look), Ok(store)) => Ok((look, store)),
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(e.clone()),
        };
        let (interval, timeout) = config
            .dns
            .get(&m.dns)
            .map_or((Duration::from_secs(2), Duration::from_secs(60)), |d| {
                (d.propagation_interval, d.propagation_timeout)
            });
        for domain in &m.domains {
            let name = domain.as_str().to_owned();
            let plan = match &ready {
                Ok((look, store)) => {
                    let cx = Ctx {
                        config,
                        mta_sts: m,
                        look: *look,
                        store: *store,
                        dir: dir.clone(),
                        interval,
                        timeout,
                    };
                    match domain_pass(&cx, domain, now, &mut out).await {
                        Ok(plan) => Some(plan),
                        Err(e) => {
                            out.problems.push(format!("mta-sts domain {name}: {e}"));
                            out.next_wake =
                                earliest(out.next_wake, Some(now + RETRY_AFTER_FAILURE));
                            None
                        }
                    }
                }
                Err(e) => {
                    out.problems.push(format!("mta-sts domain {name}: {e}"));
                    None
                }
            };
            out.domains.push(DomainOutcome { domain: name, plan });
        }
    }
    if let Some(t) = &config.tls_rpt {
        match store_of(&t.dns) {
            Ok(store) => tls_rpt_records(config, t, &store, &mut out).await,
            Err(e) => out.problems.push(format!("tls-rpt: {e}")),
        }
    }
    out
}

/// One domain's part of the pass (see the module doc); the plan it ended
/// on, or why the domain could not be looked at (nothing changed then).
async fn domain_pass<L: Look, S: RecordStore>(
    cx: &Ctx<'_, L, S>,
    domain: &DnsName,
    now: i64,
    out: &mut MtaStsPass,
) -> Result<Plan, String> {
    let name = domain.as_str();
    let mut clock = now;

    // 1. Look: any failure here changes nothing.
    let responders = cx
        .look
        .responders(domain)
        .await
        .map_err(|e| format!("responders: {e}"))?;
    let mx = cx
        .look
        .observe_mx(domain)
        .await
        .map_err(|e| format!("MX set: {e}"))?;
    let ids = cx
        .look
        .observe_ids(domain)
        .await
        .map_err(|e| format!("{}: {e}", sts_record_name(domain)))?;
    let before = read_ledger(cx.config)?
        .domains
        .remove(name)
        .unwrap_or_default();
    let wanted_mx: BTreeSet<String> = if cx.mta_sts.mx.is_empty() {
        mx.hosts.clone()
    } else {
        cx.mta_sts
            .mx
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect()
    };
    if wanted_mx.is_empty() && cx.mta_sts.mode != Mode::None && !before.disable {
        return Err("no MX host in DNS and no `mx` configured: a policy must list one".to_owned());
    }
    let mut checks = Vec::new();
    if cx.mta_sts.mode == Mode::Enforce {
        for host in &mx.hosts {
            let fresh = before
                .starttls
                .get(host)
                .is_some_and(|c| c.ok && clock.saturating_sub(c.at) < STARTTLS_FRESH);
            if fresh {
                continue;
            }
            let result = cx.look.starttls(host).await;
            checks.push((
                host.clone(),
                StarttlsCheck {
                    ok: result.is_ok(),
                    reason: result.err(),
                    at: clock,
                },
            ));
        }
    }
    let served = fetch_all(cx, domain, &responders).await;

    // 2. Record what was seen.
    let names: Vec<String> = responders.iter().map(ToString::to_string).collect();
    let servers: Vec<String> = ids.iter().map(|v| v.server.clone()).collect();
    let mut d = update_domain(cx.config, name, |d| {
        d.observe_mx(mx.hosts.clone(), mx.ttl, clock);
        observe_ids(d, &ids, clock);
        observe_served(d, &served, clock);
        d.starttls.extend(checks);
    })?;

    // 3. Plan and take the step, then plan again.
    let wanted = Wanted {
        mode: cx.mta_sts.mode,
        mx: &wanted_mx,
        max_age: u64::from(cx.mta_sts.max_age),
    };
    let poll = secs(cx.interval);
    let mut plan = plan_of(&d, wanted, &names, &servers, clock);
    for _ in 0..MAX_STEPS {
        let id = plan.policy.id.clone();
        let everywhere = matches!(d.txt_state(&servers, &id), TxtState::Everywhere { .. });
        if everywhere
            && d.not_serving(&names, &id).is_none()
            && d.live.as_ref().map(|p| &p.id) != Some(&id)
        {
            let policy = plan.policy.clone();
            d = update_domain(cx.config, name, |d| d.went_live(&policy, clock))?;
            out.done.push(format!(
                "mta-sts domain {name}: policy {id} (mode {}) is live: every authoritative server answers its id",
                policy.mode
            ));
            plan = plan_of(&d, wanted, &names, &servers, clock);
            continue;
        }
        match &plan.step {
            Step::ServeBody { id, .. } => {
                let file = match write_body(&cx.dir, name, &plan.policy) {
                    Ok(file) => file,
                    Err(e) => return Ok(failed(out, name, e, plan, clock)),
                };
                if let Some(file) = file {
                    out.done.push(format!(
                        "mta-sts domain {name}: wrote policy body {id} to {}",
                        file.display()
                    ));
                }
                let mut last = Vec::new();
                for attempt in 0..FETCH_TRIES {
                    if attempt > 0 {
                        cx.look.pause(FETCH_PAUSE).await;
                        clock = clock.saturating_add(secs(FETCH_PAUSE));
                    }
                    last = fetch_all(cx, domain, &responders).await;
                    d = update_domain(cx.config, name, |d| observe_served(d, &last, clock))?;
                    if d.not_serving(&names, id).is_none() {
                        break;
                    }
                }
                if let Some(r) = d.not_serving(&names, id) {
                    if r.is_empty() {
                        return Err(format!(
                            "policy body {id}: no responder to fetch it back from (set `responders`): its id is not published"
                        ));
                    }
                    let seen = last
                        .iter()
                        .find(|(n, _)| n == r)
                        .map_or_else(|| "not fetched".to_owned(), seen_text);
                    out.problems.push(format!(
                        "mta-sts domain {name}: policy body {id} is not served by {r} yet ({seen}): its id is not published"
                    ));
                    out.next_wake = earliest(out.next_wake, Some(clock.saturating_add(poll)));
                    return Ok(plan_of(&d, wanted, &names, &servers, clock));
                }
            }
            Step::PublishId { id } => {
                let record = StsRecord::new(id).map_err(|e| e.to_string())?;
                let owner = sts_record_name(domain);
                // Under `delegate_to`: the user's CNAME first.
                if let Some(dns) = cx.config.dns.get(&cx.mta_sts.dns)
                    && let Err(e) =
                        crate::delegation::check::preflight(dns, std::slice::from_ref(&owner)).await
                {
                    let e = format!("publishing {owner} TXT \"{record}\": {e}");
                    return Ok(failed(out, name, e, plan, clock));
                }
                let written = cx
                    .store
                    .replace(&owner, RECORD_TTL, &[RData::Txt(record.render())])
                    .await;
                if let Err(e) = written {
                    let e = format!("publishing {owner} TXT \"{record}\": {e}");
                    return Ok(failed(out, name, e, plan, clock));
                }
                d = update_domain(cx.config, name, |d| d.published_id = Some(id.clone()))?;
                out.done.push(format!(
                    "mta-sts domain {name}: published {owner} TXT \"{record}\""
                ));
                // Observe until every authoritative server answers it.
                let mut waited = Duration::ZERO;
                while waited < cx.timeout {
                    cx.look.pause(cx.interval).await;
                    waited += cx.interval;
                    clock = clock.saturating_add(poll);
                    let ids = match cx.look.observe_ids(domain).await {
                        Ok(ids) => ids,
                        Err(e) => {
                            out.problems
                                .push(format!("mta-sts domain {name}: {owner}: {e}"));
                            break;
                        }
                    };
                    d = update_domain(cx.config, name, |d| observe_ids(d, &ids, clock))?;
                    if matches!(d.txt_state(&servers, id), TxtState::Everywhere { .. }) {
                        break;
                    }
                }
            }
            Step::DeleteRecords => {
                if let Err(e) = delete_records(cx, domain, out).await {
                    return Ok(failed(out, name, e, plan, clock));
                }
                d = update_domain(cx.config, name, |d| {
                    *d = DomainLedger {
                        disable: true,
                        ..DomainLedger::default()
                    };
                })?;
            }
            _ => break,
        }
        plan = plan_of(&d, wanted, &names, &servers, clock);
    }
    if let Some(r) = &plan.refused {
        out.done.push(format!("mta-sts domain {name}: {r}"));
    }
    let wake = match &plan.step {
        Step::Wait { until: Some(t), .. } => Some(*t),
        Step::Wait {
            reason: WaitReason::IdNotSeen { .. },
            ..
        }
        | Step::ServeBody { .. }
        | Step::PublishId { .. } => Some(clock.saturating_add(poll)),
        Step::AddMxAfter { at, .. } if *at > clock => Some(*at),
        _ => None,
    };
    out.next_wake = earliest(out.next_wake, wake);
    if !matches!(plan.step, Step::InStep { .. }) {
        out.done
            .push(format!("mta-sts domain {name}: next: {}", plan.step));
    }
    Ok(plan)
}

/// A write of `plan`'s step failed: one problem line, and a look again
/// after [`RETRY_AFTER_FAILURE`]; the plan stands.
fn failed(out: &mut MtaStsPass, domain: &str, e: String, plan: Plan, now: i64) -> Plan {
    out.problems.push(format!("mta-sts domain {domain}: {e}"));
    out.next_wake = earliest(out.next_wake, Some(now.saturating_add(RETRY_AFTER_FAILURE)));
    plan
}

/// The planner's answer for `d` now.
fn plan_of(
    d: &DomainLedger,
    wanted: Wanted<'_>,
    responders: &[String],
    servers: &[String],
    now: i64,
) -> Plan {
    order::plan(&Inputs {
        wanted,
        disable: d.disable,
        ledger: d,
        responders,
        servers,
        id_of: policy::id_of,
        now,
    })
}

/// What one fetch-back round saw: per responder (`ADDR` text) the id of
/// the policy its body is the canonical form of, or why there is none.
type Served = Vec<(String, Result<String, String>)>;

async fn fetch_all<L: Look, S>(
    cx: &Ctx<'_, L, S>,
    domain: &DnsName,
    responders: &[SocketAddr],
) -> Served {
    let mut served = Vec::new();
    for &at in responders {
        let id = match cx.look.fetch_policy(at, domain).await {
            Ok(body) => policy::Policy::parse(&body)
                .map(|p| p.id())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        served.push((at.to_string(), id));
    }
    served
}

fn seen_text((_, seen): &(String, Result<String, String>)) -> String {
    match seen {
        Ok(id) => format!("it serves policy {id}"),
        Err(e) => e.clone(),
    }
}

fn observe_served(d: &mut DomainLedger, served: &Served, now: i64) {
    for (r, id) in served {
        d.observe_served(r, id.as_deref().ok(), now);
    }
}

fn observe_ids(d: &mut DomainLedger, ids: &[IdView], now: i64) {
    for v in ids {
        d.observe_txt(&v.server, v.id.as_deref(), v.ttl, now);
    }
}

/// Writes `policy`'s canonical body for `domain` under `dir`, unless the
/// file already holds it; the file written, if any.
fn write_body(dir: &Path, domain: &str, p: &order::Policy) -> Result<Option<PathBuf>, String> {
    let mx =
        p.mx.iter()
            .map(|m| MxPattern::parse(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
    let max_age = u32::try_from(p.max_age)
        .map_err(|_| format!("policy {}: max_age {} is too large", p.id, p.max_age))?;
    let policy = policy::Policy::new(p.mode, mx, max_age).map_err(|e| e.to_string())?;
    if policy.id() != p.id {
        return Err(format!(
            "policy {}: its body has id {}, not writing it",
            p.id,
            policy.id()
        ));
    }
    let body = policy.canonical();
    // An unreadable old file (a link, a FIFO planted there) is replaced or
    // refused by the write below, which says why.
    if webroot::read_policy(dir, domain).is_ok_and(|old| old.as_deref() == Some(body.as_str())) {
        return Ok(None);
    }
    let written = webroot::write_policies(dir, &HashMap::from([(domain.to_owned(), body)]))
        .map_err(|e| e.to_string())?;
    Ok(written.into_iter().next())
}

/// `disable`, once every old policy expired: the `_mta-sts` TXT record
/// first, then the policy file, then the `_smtp._tls` record when
/// `[tls_rpt]` keeps one for the domain.
async fn delete_records<L: Look, S: RecordStore>(
    cx: &Ctx<'_, L, S>,
    domain: &DnsName,
    out: &mut MtaStsPass,
) -> Result<(), String> {
    let name = domain.as_str();
    let owner = sts_record_name(domain);
    cx.store
        .remove(&owner, RecordType::Txt)
        .await
        .map_err(|e| format!("removing {owner} TXT: {e}"))?;
    out.done.push(format!(
        "mta-sts domain {name}: removed {owner} TXT (disabled)"
    ));
    match webroot::remove_policy(&cx.dir, name) {
        Ok(Some(file)) => out.done.push(format!(
            "mta-sts domain {name}: removed {} (disabled)",
            file.display()
        )),
        Ok(None) => {}
        Err(e) => return Err(format!("removing the policy file: {e}")),
    }
    if let Some(t) = &cx.config.tls_rpt
        && t.domains.contains(domain)
    {
        let rpt = record_name(domain);
        match cx.store.remove(&rpt, RecordType::Txt).await {
            Ok(_) => out.done.push(format!(
                "mta-sts domain {name}: removed {rpt} TXT (disabled)"
            )),
            Err(e) => out
                .problems
                .push(format!("mta-sts domain {name}: removing {rpt} TXT: {e}")),
        }
    }
    Ok(())
}

/// Every `[tls_rpt]` domain's `_smtp._tls` TXT record is exactly the
/// configured one: replaced only when different; a domain `disable`d in
/// the MTA-STS ledger is left alone (its records go with the policy's).
async fn tls_rpt_records<S: RecordStore>(
    config: &Config,
    t: &TlsRpt,
    store: &S,
    out: &mut MtaStsPass,
) {
    let Some(record) = TlsRptRecord::new(t.rua.clone()) else {
        return;
    };
    let disabled: BTreeSet<String> = read_ledger(config)
        .map(|l| {
            l.domains
                .into_iter()
                .filter(|(_, d)| d.disable)
                .map(|(n, _)| n)
                .collect()
        })
        .unwrap_or_default();
    let value = RData::Txt(record.render());
    for domain in t.domains.iter().filter(|d| !disabled.contains(d.as_str())) {
        let owner = record_name(domain);
        match store.read(&owner, RecordType::Txt).await {
            Ok(values) if values == std::slice::from_ref(&value) => {}
            Ok(_) => match preflight(config, &t.dns, &owner).await {
                Err(e) => out
                    .problems
                    .push(format!("tls-rpt: publishing {owner} TXT: {e}")),
                Ok(()) => match store
                    .replace(&owner, RECORD_TTL, std::slice::from_ref(&value))
                    .await
                {
                    Ok(_) => out
                        .done
                        .push(format!("tls-rpt: published {owner} TXT \"{record}\"")),
                    Err(e) => out
                        .problems
                        .push(format!("tls-rpt: publishing {owner} TXT: {e}")),
                },
            },
            Err(e) => out
                .problems
                .push(format!("tls-rpt: reading {owner} TXT: {e}")),
        }
    }
}

/// Under the `[dns.NAME]` table's `delegate_to`: `owner` is a CNAME to its
/// place in the delegated zone on every authoritative server.
async fn preflight(
    config: &Config,
    dns: &str,
    owner: &str,
) -> Result<(), crate::delegation::check::DelegationError> {
    match config.dns.get(dns) {
        Some(cfg) => crate::delegation::check::preflight(cfg, &[owner.to_owned()]).await,
        None => Ok(()),
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The ledger as saved (empty when there is none yet).
fn read_ledger(config: &Config) -> Result<Ledger, String> {
    config
        .state_dir
        .mta_sts_record::<Ledger>()
        .load_or_default()
        .map_err(|e| e.to_string())
}

/// Loads, changes and saves the ledger under the run lock.
fn update_ledger<R>(config: &Config, change: impl FnOnce(&mut Ledger) -> R) -> Result<R, String> {
    config
        .state_dir
        .update(config.state_dir.mta_sts_record::<Ledger>(), change)
}

/// Changes one domain's ledger entry; returns it as saved.
fn update_domain(
    config: &Config,
    domain: &str,
    change: impl FnOnce(&mut DomainLedger),
) -> Result<DomainLedger, String> {
    update_ledger(config, |l| {
        let d = l.domains.entry(domain.to_owned()).or_default();
        change(d);
        d.clone()
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex, MutexGuard};

    use mxkeys_providers::{Change, Error};

    use super::*;
    use crate::config::Host;

    const DOMAIN: &str = "example.test";
    const STS: &str = "_mta-sts.example.test";
    const RPT: &str = "_smtp._tls.example.test";
    const R1: &str = "127.0.0.1:8443";
    const R2: &str = "127.0.0.2:8443";
    const MX1: &str = "mx1.example.test";
    const MX2: &str = "mx2.example.test";
    const NOW: i64 = 1_700_000_000;
    const DAY: i64 = 86_400;
    /// The fake provider's propagation interval and timeout (the defaults).
    const POLL: i64 = 2;
    const TIMEOUT: i64 = 60;
    const MX_TTL: u32 = 3_600;

    /// What the fake DNS, web servers and MX hosts show, and the order in
    /// which the pass changed things.
    #[derive(Default)]
    struct World {
        /// The serve dir: each responder serves what the pass wrote there.
        dir: PathBuf,
        mx: BTreeSet<String>,
        /// The provider's records, by owner name.
        records: BTreeMap<String, Vec<RData>>,
        /// Set: the second authoritative server still answers this id.
        stale_ns2: Option<Option<String>>,
        /// Responders whose fetch fails.
        down: BTreeSet<String>,
        /// Set: looking at the MX set fails with this.
        fail_mx: Option<String>,
        /// MX hosts whose STARTTLS check fails.
        bad_starttls: BTreeSet<String>,
        starttls_checks: usize,
        /// Set: the provider refuses every write.
        refuse_writes: bool,
        /// "served R ID" per successful fetch, "txt ID" per `_mta-sts`
        /// write, "write OWNER" / "remove OWNER" for other records.
        events: Vec<String>,
    }

    #[derive(Clone, Default)]
    struct Fake(Arc<Mutex<World>>);

    impl Fake {
        fn world(&self) -> MutexGuard<'_, World> {
            self.0.lock().expect("world")
        }
    }

    fn txt_id(values: Option<&Vec<RData>>) -> Option<String> {
        match values?.first()? {
            RData::Txt(t) => StsRecord::parse(t).ok().map(|r| r.id().to_owned()),
            _ => None,
        }
    }

    impl Look for Fake {
        async fn responders(&self, _: &DnsName) -> Result<Vec<SocketAddr>, String> {
            Ok(vec![R1.parse().expect("R1"), R2.parse().expect("R2")])
        }

        async fn fetch_policy(&self, at: SocketAddr, domain: &DnsName) -> Result<String, String> {
            let mut w = self.world();
            let at = at.to_string();
            if w.down.contains(&at) {
                return Err(format!("{at}: connection refused"));
            }
            let body = webroot::read_policy(&w.dir, domain.as_str())
                .ok()
                .flatten()
                .ok_or_else(|| format!("{at}: 404"))?;
            let id = policy::Policy::parse(&body)
                .map_err(|e| e.to_string())?
                .id();
            w.events.push(format!("served {at} {id}"));
            Ok(body)
        }

        async fn starttls(&self, host: &str) -> Result<(), String> {
            let mut w = self.world();
            w.starttls_checks += 1;
            if w.bad_starttls.contains(host) {
                return Err("self-signed certificate".to_owned());
            }
            Ok(())
        }

        async fn observe_mx(&self, _: &DnsName) -> Result<MxView, String> {
            let w = self.world();
            if let Some(e) = &w.fail_mx {
                return Err(e.clone());
            }
            Ok(MxView {
                hosts: w.mx.clone(),
                ttl: MX_TTL,
            })
        }

        async fn observe_ids(&self, _: &DnsName) -> Result<Vec<IdView>, String> {
            let w = self.world();
            let now = txt_id(w.records.get(STS));
            let view = |server: &str, id: Option<String>| IdView {
                server: server.to_owned(),
                ttl: if id.is_some() { RECORD_TTL } else { 60 },
                id,
            };
            let ns2 = w.stale_ns2.clone().unwrap_or_else(|| now.clone());
            Ok(vec![view("ns1", now), view("ns2", ns2)])
        }

        async fn pause(&self, _: Duration) {}
    }

    impl RecordStore for Fake {
        async fn read(&self, name: &str, _: RecordType) -> Result<Vec<RData>, Error> {
            Ok(self.world().records.get(name).cloned().unwrap_or_default())
        }

        async fn replace(&self, name: &str, _: u32, values: &[RData]) -> Result<Change, Error> {
            let mut w = self.world();
            if w.refuse_writes {
                return Err(Error::Refused("REFUSED".to_owned()));
            }
            w.records.insert(name.to_owned(), values.to_vec());
            let event = match txt_id(w.records.get(name)) {
                Some(id) if name == STS => format!("txt {id}"),
                _ => format!("write {name}"),
            };
            w.events.push(event);
            Ok(Change::Changed)
        }

        async fn remove(&self, name: &str, _: RecordType) -> Result<Change, Error> {
            let mut w = self.world();
            w.records.remove(name);
            w.events.push(format!("remove {name}"));
            Ok(Change::Changed)
        }

        async fn add(&self, _: &str, _: u32, _: &[RData]) -> Result<Change, Error> {
            Err(Error::Unsupported("the pass never adds".to_owned()))
        }

        async fn remove_values(&self, _: &str, _: &[RData]) -> Result<Change, Error> {
            Err(Error::Unsupported(
                "the pass never removes values".to_owned(),
            ))
        }
    }

    struct Lab {
        tmp: tempfile::TempDir,
        config: Config,
        fake: Fake,
    }

    impl Lab {
        /// `[mta_sts]` for example.test (webroot, two responders, max_age
        /// one day) with these `mx` lines and `mode`; `[tls_rpt]` with
        /// `tls_rpt`. DNS shows `dns_mx`.
        fn new(mx: &[&str], mode: &str, tls_rpt: bool, dns_mx: &[&str]) -> Lab {
            let tmp = tempfile::tempdir().expect("tempdir");
            let fake = Fake::default();
            {
                let mut w = fake.world();
                w.dir = tmp.path().join("www");
                w.mx = dns_mx.iter().map(|h| (*h).to_owned()).collect();
            }
            let config = config(tmp.path(), mx, mode, tls_rpt);
            Lab { tmp, config, fake }
        }

        fn set_mx(&mut self, mx: &[&str]) {
            let tls = self.config.tls_rpt.is_some();
            let mode = self.config.mta_sts.as_ref().expect("mta_sts").mode;
            self.config = config(self.tmp.path(), mx, mode.as_str(), tls);
        }

        async fn pass(&self, now: i64) -> MtaStsPass {
            let store = self.fake.clone();
            run(&self.config, now, Ok(&self.fake), &move |_| {
                Ok(store.clone())
            })
            .await
        }

        fn ledger(&self) -> DomainLedger {
            read_ledger(&self.config)
                .expect("ledger")
                .domains
                .remove(DOMAIN)
                .unwrap_or_default()
        }

        /// The events since the last call.
        fn events(&self) -> Vec<String> {
            std::mem::take(&mut self.fake.world().events)
        }

        fn file(&self) -> PathBuf {
            webroot::root_of(&self.tmp.path().join("www"), DOMAIN)
                .expect("file")
                .join(webroot::POLICY_FILE)
        }
    }

    fn config(dir: &Path, mx: &[&str], mode: &str, tls_rpt: bool) -> Config {
        let mx = mx
            .iter()
            .map(|m| format!("\"{m}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "state_dir = \"{d}/state\"\n[dns.fake]\ntype = \"manual\"\n\
             [mta_sts]\ndomains = [\"{DOMAIN}\"]\nmode = \"{mode}\"\nmx = [{mx}]\n\
             max_age = \"1d\"\ndns = \"fake\"\nwebroot = \"{d}/www\"\n\
             responders = [\"{R1}\", \"{R2}\"]\n",
            d = dir.display()
        );
        if tls_rpt {
            text.push_str("[tls_rpt]\nrua = [\"mailto:tlsrpt@example.test\"]\n");
        }
        let host = Host {
            cwd: dir.to_owned(),
            hostname: None,
        };
        Config::parse(&dir.join("mxkeys.toml"), &text, &host).expect("config")
    }

    fn id(mode: Mode, mx: &[&str], max_age: u64) -> String {
        let mx = mx.iter().map(|m| (*m).to_owned()).collect();
        policy::id_of(mode, &mx, max_age)
    }

    fn step(out: &MtaStsPass) -> Step {
        out.domains[0].plan.as_ref().expect("a plan").step.clone()
    }

    /// The events a first publication of `id` makes: fetched back from
    /// both responders, then the id.
    fn published(id: &str) -> Vec<String> {
        vec![
            format!("served {R1} {id}"),
            format!("served {R2} {id}"),
            format!("txt {id}"),
        ]
    }

    #[tokio::test]
    async fn a_new_body_is_fetched_back_from_every_responder_before_its_id_is_published_and_goes_live_once_every_server_answers()
     {
        let lab = Lab::new(&[MX1], "testing", false, &[MX1]);
        let out = lab.pass(NOW).await;
        let id = id(Mode::Testing, &[MX1], DAY as u64);
        assert_eq!(out.problems, Vec::<String>::new());
        assert_eq!(lab.events(), published(&id));
        assert_eq!(step(&out), Step::InStep { id: id.clone() });
        let body = std::fs::read_to_string(lab.file()).expect("body");
        assert_eq!(
            body,
            format!("version: STSv1\r\nmode: testing\r\nmx: {MX1}\r\nmax_age: 86400\r\n")
        );
        let l = lab.ledger();
        assert_eq!(l.published_id.as_deref(), Some(id.as_str()));
        assert_eq!(l.live.map(|p| p.id), Some(id.clone()));
        assert_eq!(out.next_wake, None);
        assert!(
            out.done.iter().any(|d| d.contains("is live")),
            "{:?}",
            out.done
        );
        let again = lab.pass(NOW + 600).await;
        assert_eq!(
            lab.events(),
            [format!("served {R1} {id}"), format!("served {R2} {id}")]
        );
        assert_eq!(step(&again), Step::InStep { id });
    }

    #[tokio::test]
    async fn no_id_is_published_while_one_responder_does_not_serve_the_new_body() {
        let lab = Lab::new(&[MX1], "testing", false, &[MX1]);
        lab.fake.world().down.insert(R2.to_owned());
        let out = lab.pass(NOW).await;
        let id = id(Mode::Testing, &[MX1], DAY as u64);
        assert!(lab.events().iter().all(|e| !e.starts_with("txt")));
        assert!(lab.fake.world().records.is_empty());
        assert_eq!(
            step(&out),
            Step::ServeBody {
                id: id.clone(),
                responder: R2.to_owned()
            }
        );
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        assert!(
            out.problems[0].starts_with("mta-sts domain example.test: policy body")
                && out.problems[0].contains(R2)
                && out.problems[0].contains("connection refused"),
            "{}",
            out.problems[0]
        );
        // Three tries one second apart, then again one poll later.
        assert_eq!(out.next_wake, Some(NOW + 2 + POLL));
        assert_eq!(lab.ledger().published_id, None);

        lab.fake.world().down.clear();
        let out = lab.pass(NOW + 10).await;
        assert_eq!(lab.events(), published(&id));
        assert_eq!(step(&out), Step::InStep { id });
    }

    #[tokio::test]
    async fn a_refused_id_write_is_one_problem_line_and_the_next_pass_writes_it_again() {
        let lab = Lab::new(&[MX1], "testing", false, &[MX1]);
        lab.fake.world().refuse_writes = true;
        let out = lab.pass(NOW).await;
        let id = id(Mode::Testing, &[MX1], DAY as u64);
        assert_eq!(
            out.problems,
            [format!(
                "mta-sts domain example.test: publishing {STS} TXT \"v=STSv1; id={id};\": REFUSED"
            )]
        );
        assert_eq!(step(&out), Step::PublishId { id: id.clone() });
        assert_eq!(out.next_wake, Some(NOW + RETRY_AFTER_FAILURE));
        assert_eq!(lab.ledger().published_id, None);
        lab.events();

        lab.fake.world().refuse_writes = false;
        let out = lab.pass(NOW + 60).await;
        assert_eq!(
            lab.events(),
            [
                format!("served {R1} {id}"),
                format!("served {R2} {id}"),
                format!("txt {id}")
            ]
        );
        assert_eq!(step(&out), Step::InStep { id });
    }

    #[tokio::test]
    async fn an_id_one_server_does_not_answer_yet_is_not_live_and_the_pass_comes_back_one_poll_later()
     {
        let lab = Lab::new(&[MX1], "testing", false, &[MX1]);
        lab.fake.world().stale_ns2 = Some(None);
        let out = lab.pass(NOW).await;
        let id = id(Mode::Testing, &[MX1], DAY as u64);
        assert_eq!(lab.events(), published(&id));
        assert_eq!(
            step(&out),
            Step::Wait {
                until: None,
                reason: WaitReason::IdNotSeen {
                    id: id.clone(),
                    server: "ns2".to_owned()
                }
            }
        );
        assert_eq!(lab.ledger().live, None);
        // Observed every poll up to the propagation timeout.
        assert_eq!(out.next_wake, Some(NOW + TIMEOUT + POLL));

        lab.fake.world().stale_ns2 = None;
        let out = lab.pass(NOW + 100).await;
        assert!(
            lab.events().iter().all(|e| !e.starts_with("txt")),
            "not written again"
        );
        assert_eq!(step(&out), Step::InStep { id: id.clone() });
        assert_eq!(lab.ledger().live.map(|p| p.id), Some(id));
    }

    #[tokio::test]
    async fn a_changed_mx_set_changes_the_id_and_the_new_body_is_served_before_the_new_id() {
        let lab = Lab::new(&[], "testing", false, &[MX1]);
        lab.pass(NOW).await;
        let old = id(Mode::Testing, &[MX1], DAY as u64);
        assert_eq!(lab.events(), published(&old));
        lab.fake.world().mx.insert(MX2.to_owned());
        let out = lab.pass(NOW + 600).await;
        let new = id(Mode::Testing, &[MX1, MX2], DAY as u64);
        assert_ne!(new, old);
        let events = lab.events();
        assert_eq!(
            events[2..],
            published(&new)[..],
            "the old body was fetched first: {events:?}"
        );
        assert_eq!(step(&out), Step::InStep { id: new });
        assert!(
            std::fs::read_to_string(lab.file())
                .expect("body")
                .contains(MX2)
        );
    }

    #[tokio::test]
    async fn an_mx_host_is_listed_first_and_the_pass_says_when_its_record_may_be_added() {
        let lab = Lab::new(&[MX1, MX2], "testing", false, &[MX1]);
        let out = lab.pass(NOW).await;
        let id = id(Mode::Testing, &[MX1, MX2], DAY as u64);
        assert_eq!(lab.events(), published(&id));
        // Seen everywhere after one poll; resolvers may hold the old
        // answer for the larger of the two TTLs.
        let at = NOW + POLL + i64::from(RECORD_TTL);
        assert_eq!(
            step(&out),
            Step::AddMxAfter {
                host: MX2.to_owned(),
                at
            }
        );
        assert_eq!(out.next_wake, Some(at));
        assert!(
            out.done
                .iter()
                .any(|d| d.contains("add MX mx2.example.test"))
        );

        lab.fake.world().mx.insert(MX2.to_owned());
        let out = lab.pass(at).await;
        assert_eq!(step(&out), Step::InStep { id });
        assert_eq!(out.next_wake, None);
    }

    #[tokio::test]
    async fn an_mx_host_leaves_the_policy_only_one_mx_ttl_after_its_record_is_seen_gone() {
        let mut lab = Lab::new(&[MX1, MX2], "testing", false, &[MX1, MX2]);
        lab.pass(NOW).await;
        let both = id(Mode::Testing, &[MX1, MX2], DAY as u64);
        assert_eq!(lab.events(), published(&both));
        lab.set_mx(&[MX1]);
        let out = lab.pass(NOW + 600).await;
        assert_eq!(
            step(&out),
            Step::RemoveMx {
                host: MX2.to_owned()
            }
        );
        assert!(lab.events().iter().all(|e| !e.starts_with("txt")));

        lab.fake.world().mx.remove(MX2);
        let gone = NOW + 1_200;
        let out = lab.pass(gone).await;
        let until = gone + i64::from(MX_TTL);
        assert_eq!(
            step(&out),
            Step::Wait {
                until: Some(until),
                reason: WaitReason::MxTtl {
                    host: MX2.to_owned(),
                    until
                }
            }
        );
        assert_eq!(out.next_wake, Some(until));
        let out = lab.pass(until - 1).await;
        assert!(matches!(step(&out), Step::Wait { .. }));
        assert!(lab.events().iter().all(|e| !e.starts_with("txt")));

        let out = lab.pass(until).await;
        let one = id(Mode::Testing, &[MX1], DAY as u64);
        let events = lab.events();
        assert_eq!(events[2..], published(&one)[..], "{events:?}");
        assert_eq!(step(&out), Step::InStep { id: one });
    }

    #[tokio::test]
    async fn disable_serves_mode_none_and_deletes_the_txt_and_the_file_only_after_the_old_max_age()
    {
        let lab = Lab::new(&[MX1], "testing", true, &[MX1]);
        lab.pass(NOW).await;
        lab.events();
        assert!(lab.fake.world().records.contains_key(RPT));
        let domain = DnsName::parse(DOMAIN).expect("domain");
        disable(&lab.config, &domain).expect("disable");
        assert!(lab.ledger().disable);

        let t = NOW + 600;
        let out = lab.pass(t).await;
        let none = id(Mode::None, &[MX1], DAY as u64);
        assert_eq!(lab.events()[2..], published(&none)[..]);
        assert!(
            std::fs::read_to_string(lab.file())
                .expect("body")
                .contains("mode: none\r\n")
        );
        // The testing policy (one day) went out of service when the none
        // id was seen everywhere, one poll after t.
        let until = t + POLL + DAY;
        assert_eq!(
            step(&out),
            Step::Wait {
                until: Some(until),
                reason: WaitReason::OldMaxAge { until }
            }
        );
        assert_eq!(out.next_wake, Some(until));

        let out = lab.pass(until - 1).await;
        assert!(matches!(step(&out), Step::Wait { .. }));
        assert!(lab.events().iter().all(|e| !e.starts_with("remove")));
        assert!(lab.file().exists());

        let out = lab.pass(until).await;
        let events = lab.events();
        assert_eq!(
            events[2..],
            [format!("remove {STS}"), format!("remove {RPT}")],
            "{events:?}"
        );
        assert!(!lab.file().exists());
        assert!(lab.fake.world().records.is_empty());
        assert_eq!(step(&out), Step::InStep { id: none });
        assert_eq!(
            lab.ledger(),
            DomainLedger {
                disable: true,
                ..DomainLedger::default()
            }
        );
        lab.pass(until + DAY).await;
        assert!(
            lab.events()
                .iter()
                .all(|e| e.starts_with("served") || e.is_empty()),
            "nothing comes back"
        );
        assert!(lab.fake.world().records.is_empty());
    }

    #[tokio::test]
    async fn the_tls_rpt_record_is_replaced_only_when_it_differs() {
        let lab = Lab::new(&[MX1], "testing", true, &[MX1]);
        let rpt = || lab.fake.world().records.get(RPT).cloned();
        let record = || {
            Some(vec![RData::Txt(
                "v=TLSRPTv1; rua=mailto:tlsrpt@example.test".to_owned(),
            )])
        };
        lab.pass(NOW).await;
        assert_eq!(rpt(), record());
        assert!(lab.events().contains(&format!("write {RPT}")));
        lab.pass(NOW + 600).await;
        assert!(!lab.events().contains(&format!("write {RPT}")), "the same");
        lab.fake.world().records.insert(
            RPT.to_owned(),
            vec![RData::Txt("v=TLSRPTv1; rua=mailto:x@y.test".into())],
        );
        lab.pass(NOW + 1_200).await;
        assert!(
            lab.events().contains(&format!("write {RPT}")),
            "changed by hand"
        );
        assert_eq!(rpt(), record());
    }

    #[tokio::test]
    async fn a_failed_look_changes_nothing_and_is_one_problem_line_naming_domain_and_reason() {
        let mut lab = Lab::new(&[MX1], "testing", false, &[MX1]);
        lab.pass(NOW).await;
        lab.events();
        let state = lab.tmp.path().join("state/mta-sts.json");
        let before = std::fs::read(&state).expect("ledger");
        let body = std::fs::read(lab.file()).expect("body");
        lab.set_mx(&[MX1, MX2]);
        lab.fake.world().fail_mx = Some("ns1: SERVFAIL".to_owned());
        let out = lab.pass(NOW + 600).await;
        assert_eq!(
            out.problems,
            ["mta-sts domain example.test: MX set: ns1: SERVFAIL"]
        );
        assert_eq!(out.domains[0].plan, None);
        assert_eq!(out.next_wake, Some(NOW + 600 + RETRY_AFTER_FAILURE));
        assert_eq!(lab.events(), Vec::<String>::new());
        assert_eq!(std::fs::read(&state).expect("ledger"), before);
        assert_eq!(std::fs::read(lab.file()).expect("body"), body);
    }

    #[tokio::test]
    async fn enforce_is_refused_while_an_mx_host_fails_starttls_and_a_passing_check_is_kept_an_hour()
     {
        let lab = Lab::new(&[MX1], "enforce", false, &[MX1]);
        lab.fake.world().bad_starttls.insert(MX1.to_owned());
        let out = lab.pass(NOW).await;
        let plan = out.domains[0].plan.clone().expect("plan");
        assert_eq!(plan.policy.mode, Mode::Testing);
        assert!(out.done.iter().any(|d| d.contains("enforce refused")));
        lab.fake.world().bad_starttls.clear();
        let out = lab.pass(NOW + 600).await;
        let enforce = id(Mode::Enforce, &[MX1], DAY as u64);
        assert_eq!(step(&out), Step::InStep { id: enforce });
        let checks = lab.fake.world().starttls_checks;
        lab.pass(NOW + 1_200).await;
        assert_eq!(lab.fake.world().starttls_checks, checks, "cached");
        lab.pass(NOW + 600 + STARTTLS_FRESH).await;
        assert_eq!(
            lab.fake.world().starttls_checks,
            checks + 1,
            "checked again"
        );
    }
}
