//! DANE (issue 14): TLSA records for a target's certificates and the gate
//! that holds a certificate change until senders can know its key.
//!
//! Pure cores, no DNS and no files: [`tlsa`] builds, parses, renders
//! and matches the records; [`gate`] decides, from what has been seen in
//! DNS and since when, whether a DANE target may install a new certificate;
//! [`ledger`] is what the DNS side recorded (`state_dir/dane.json`);
//! [`desired`] says which records are wanted and which edits get there.
//!
//! Effects: [`check`] looks at the served endpoints as a DANE sender would;
//! here, the DANE pass ([`pass`]), the only code that writes TLSA
//! records. The rule: decide apart from act, and never let the served key
//! lack a published record. Per DANE target it refuses an unsigned zone,
//! reports host addresses a sender cannot validate, adds the wanted
//! records one by one (each recorded as owned in the ledger BEFORE the DNS
//! write: after a crash an owned record that is not in DNS is harmless, one
//! in DNS that is not owned would never be retired), removes owned records
//! no longer wanted only once every address of every host × port serves a
//! chain matching a wanted record (or another host's record: several hosts
//! under one name, each its own key), then observes every owner name on every
//! authoritative server and merges that into the ledger, where the
//! certificate pipeline's gate reads it. The pass never installs anything.

pub mod check;
pub mod desired;
pub mod gate;
pub mod ledger;
pub mod tlsa;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use mxkeys_providers::propagation::Propagation;
use mxkeys_providers::{RData, RecordStore, RecordType};
use rustls_pki_types::CertificateDer;

use crate::config::{Config, Dane, Target};
use crate::dns::Provider;
use crate::pipeline::{self, Plan};
use crate::source::Persist;
use desired::{Keys, OwnerFacts};
use ledger::{Ledger, OwnerRound, ServerView};
use tlsa::Tlsa;

/// What one DANE pass did and what it asks of its caller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DanePass {
    /// A wanted record's `t0` changed (first seen everywhere, or lost):
    /// a gate may have opened (or shut); the caller reconciles.
    pub changed_seen: bool,
    /// When to run the pass again (Unix seconds): every propagation
    /// interval while a wanted record is not yet seen everywhere, else when
    /// the next record becomes aged; `None`: nothing to wait for.
    pub next_wake: Option<i64>,
    /// When the next wanted record becomes aged (Unix seconds, after the
    /// pass): a gate may open then, and the caller reconciles.
    pub aged_at: Option<i64>,
    /// What could not be done, one line each, naming target and record.
    pub problems: Vec<String>,
    /// What was done (records added and removed), one line each.
    pub done: Vec<String>,
}

/// When a pass that failed for a target (DNS unreachable, ledger
/// unreadable) runs again, in seconds.
const RETRY_AFTER_FAILURE: i64 = 60;
/// When a pass that had a problem (unsigned zone, insecure addresses, a
/// full name) runs again, in seconds.
const RETRY_AFTER_PROBLEM: i64 = 600;

/// When a pass that kept an old record because the new key was not yet
/// verified in service looks again, in seconds.
const RETRY_RETIREMENT: i64 = 30;

/// One DANE target's part of a pass, gathered before any DNS work.
struct Job<'a> {
    target: &'a Target,
    dane: &'a Dane,
    owners: Vec<String>,
    /// The chains installed in the target's slots.
    installed: Vec<Vec<CertificateDer<'static>>>,
    /// The chains the pipeline would install next (held or not).
    candidates: Vec<Vec<CertificateDer<'static>>>,
    /// SubjectPublicKeyInfo DER of the standby keys of the acme sources
    /// linked to this target.
    standby: Vec<Vec<u8>>,
    /// How to make the sources of chosen certificates with a new key keep
    /// their key (Certbot, lego): a renewal with the same key needs no hold.
    reuse_hints: Vec<String>,
}

/// Runs the DANE pass for every DANE target (see the module doc) at `now`.
/// Never fails as a whole: each problem is a line of the result (and is
/// logged), the other targets go on.
pub async fn pass(config: &Config, now: i64) -> DanePass {
    let mut out = DanePass::default();
    for job in jobs(config) {
        target_pass(config, &job, now, &mut out).await;
    }
    for p in &out.problems {
        tracing::error!("dane: {p}");
    }
    for d in &out.done {
        tracing::info!("dane: {d}");
    }
    out
}

/// Every DANE target with the keys its records are built from: the
/// installed chains, what the pipeline would install next (held by the
/// gate or not: its records go out before the certificate does) and the
/// standby keys.
fn jobs(config: &Config) -> Vec<Job<'_>> {
    if !config.targets.iter().any(|t| t.dane.is_some()) {
        return Vec::new();
    }
    let plan = pipeline::plan(config, Persist::No);
    config
        .targets
        .iter()
        .enumerate()
        .filter_map(|(index, target)| {
            let dane = target.dane.as_ref()?;
            Some(Job {
                target,
                dane,
                owners: dane.owners(),
                installed: target
                    .slots
                    .iter()
                    .filter_map(|s| crate::install::installed_bundle(&s.files).ok())
                    .map(|b| b.certs)
                    .collect(),
                candidates: candidates(&plan, index),
                standby: config
                    .acme_sources()
                    .filter(|a| a.dane_targets.contains(&target.name))
                    .filter_map(|a| standby_spki(config, &a.name))
                    .collect(),
                reuse_hints: reuse_hints(&plan, index),
            })
        })
        .collect()
}

/// For target `index`: a hint per slot whose new certificate the gate
/// holds and whose source can keep its key (Certbot, lego): how to renew
/// without a hold.
fn reuse_hints(plan: &Plan, index: usize) -> Vec<String> {
    plan.slots
        .iter()
        .filter(|s| s.report.target == index)
        .filter_map(|s| match &s.report.action {
            crate::pipeline::Action::Held(h) => h.hint.map(|hint| {
                format!(
                    "the new certificate {} from {} has a new key and waits for its TLSA record to age; {hint}",
                    h.sha256, h.origin
                )
            }),
            _ => None,
        })
        .collect()
}

impl Job<'_> {
    /// The records wanted, with a one-line problem for each that could not
    /// be built.
    fn wanted(&self) -> (BTreeSet<Tlsa>, Vec<String>) {
        let installed: Vec<&[CertificateDer<'_>]> =
            self.installed.iter().map(Vec::as_slice).collect();
        let candidates: Vec<&[CertificateDer<'_>]> =
            self.candidates.iter().map(Vec::as_slice).collect();
        let standby: Vec<&[u8]> = self.standby.iter().map(Vec::as_slice).collect();
        desired::wanted(
            &self.dane.records,
            &Keys {
                installed: &installed,
                candidates: &candidates,
                standby_spki: &standby,
            },
        )
    }

    /// What each wanted record stands for: `installed`, `candidate`,
    /// `standby` (several when they share a key).
    fn roles(&self) -> BTreeMap<String, Vec<&'static str>> {
        let mut roles: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for (role, chains) in [
            ("installed", &self.installed),
            ("candidate", &self.candidates),
        ] {
            for chain in chains {
                for spec in &self.dane.records {
                    if let Ok(t) = spec.build(chain) {
                        let v = roles.entry(t.to_string()).or_default();
                        if !v.contains(&role) {
                            v.push(role);
                        }
                    }
                }
            }
        }
        if self.dane.records.contains(&tlsa::Spec::EE) {
            for spki in &self.standby {
                let v = roles
                    .entry(desired::ee_of_spki(spki).to_string())
                    .or_default();
                if !v.contains(&"standby") {
                    v.push("standby");
                }
            }
        }
        roles
    }
}

async fn target_pass(config: &Config, job: &Job<'_>, now: i64, out: &mut DanePass) {
    let name = job.target.name.as_str();
    let mut problems: Vec<String> = Vec::new();
    let outcome = publish_and_observe(config, job, now, out, &mut problems).await;
    let problems: Vec<String> = problems
        .into_iter()
        .map(|p| format!("target {name}: {p}"))
        .collect();
    let zone_signed = outcome.as_ref().ok().copied();
    // Look again soon after a failure, later after a refusal.
    let retry = match (&outcome, problems.is_empty()) {
        (Err(()), _) => Some(now + RETRY_AFTER_FAILURE),
        (Ok(_), false) => Some(now + RETRY_AFTER_PROBLEM),
        (Ok(_), true) => None,
    };
    out.next_wake = earliest(out.next_wake, retry);
    let saved = update_ledger(config, |l| {
        let t = l.targets.entry(name.to_owned()).or_default();
        if let Some(signed) = zone_signed {
            t.zone_signed = signed;
        }
        t.problems = problems.clone();
        t.last_pass = Some(now);
    });
    if let Err(e) = saved {
        out.problems.push(format!("target {name}: {e}"));
    }
    out.problems.extend(problems);
}

/// The DNS work of one target; `Ok(zone_signed)` as far as it got.
async fn publish_and_observe(
    config: &Config,
    job: &Job<'_>,
    now: i64,
    out: &mut DanePass,
    problems: &mut Vec<String>,
) -> Result<Option<bool>, ()> {
    let name = job.target.name.as_str();
    let Some(dns) = config.dns.get(&job.dane.dns) else {
        problems.push(format!("[dns.{}] is not configured", job.dane.dns));
        return Err(());
    };
    let store = match Provider::build(dns) {
        Ok(s) => s,
        Err(e) => {
            problems.push(e.to_string());
            return Err(());
        }
    };
    let prop = crate::dns::propagation(dns);
    if job.owners.is_empty() {
        return Ok(None);
    }

    // 1. The records wanted.
    let (wanted, build_problems) = job.wanted();
    problems.extend(build_problems);
    let wanted_texts = desired::texts(&wanted);

    // 2. Under `delegate_to`: each owner a CNAME to its place in the
    // delegated zone, and both zones signed (a CNAME at a TLSA name works
    // for DANE only then), before anything is written.
    if let Some(zone) = dns.delegate_to.as_deref() {
        for owner in &job.owners {
            let target = match crate::delegation::target(owner, zone) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(e.to_string());
                    return Err(());
                }
            };
            match crate::delegation::check::tlsa(&prop, owner, &target).await {
                Ok(()) => {}
                Err(e @ crate::delegation::check::DelegationError::Unsigned { .. }) => {
                    problems.push(format!("{e}: no TLSA record published"));
                    return Ok(Some(false));
                }
                Err(e) => {
                    problems.push(format!("{e}: no TLSA record published"));
                    return Err(());
                }
            }
        }
    }
    // Only into signed zones (the zone of each host's owner names); and
    // say when senders cannot trust the hosts' addresses (they then ignore
    // TLSA records).
    let mut checked = BTreeSet::new();
    for (host, owner) in job
        .dane
        .hosts
        .iter()
        .filter(|_| dns.delegate_to.is_none())
        .filter_map(|h| {
            let port = job.dane.ports.first()?;
            Some((h, format!("_{port}._tcp.{}", h.as_str())))
        })
    {
        if !checked.insert(host.as_str()) {
            continue;
        }
        let zone = dns
            .zone
            .clone()
            .unwrap_or_else(|| format!("the zone of {owner}"));
        match zone_signed(&prop, &owner).await {
            Ok(true) => {}
            Ok(false) => {
                problems.push(format!(
                    "zone {zone} is not DNSSEC-signed: no TLSA record published (check with `dig +dnssec DNSKEY {zone}`)"
                ));
                return Ok(Some(false));
            }
            Err(e) => {
                problems.push(format!(
                    "cannot tell whether {zone} is DNSSEC-signed ({e}): no TLSA record published"
                ));
                return Err(());
            }
        }
    }
    for host in &job.dane.hosts {
        match addresses_secure(dns.resolver, host.as_str()).await {
            Ok(true) => {}
            Ok(false) => problems.push(format!(
                "the address records of {host} are not DNSSEC-validated: DANE senders ignore its TLSA records (check with `dig +dnssec A {host}`)"
            )),
            Err(e) => problems.push(format!("address records of {host}: {e}")),
        }
    }

    // 3. Record by record.
    let before = read_ledger(config).map_err(|e| problems.push(e))?;
    let seen_before: BTreeMap<&str, Option<i64>> = wanted_texts
        .iter()
        .map(|r| (r.as_str(), before.seen_since(name, &job.owners, r)))
        .collect();
    // The last in-service check: the records it accepted, and its answer.
    let mut verified: Option<(BTreeSet<String>, bool)> = None;
    for owner in &job.owners {
        let present: BTreeSet<String> = match store.read(owner, RecordType::Tlsa).await {
            Ok(values) => values
                .iter()
                .map(|v| desired::normalize(&v.to_string()))
                .collect(),
            Err(e) => {
                problems.push(format!("reading {owner} TLSA: {e}"));
                continue;
            }
        };
        let owned = read_ledger(config)
            .map_err(|e| problems.push(e))?
            .targets
            .get(name)
            .and_then(|t| t.owned.get(owner))
            .cloned()
            .unwrap_or_default();
        let retiring = owned
            .iter()
            .any(|r| !wanted_texts.contains(r) && present.contains(r));
        // Served keys may match a wanted record or another host's (issue
        // 18: several hosts under one name, each its own key).
        let accepted = desired::in_service_records(&wanted_texts, &owned, &present);
        if retiring && verified.as_ref().is_none_or(|(set, _)| *set != accepted) {
            let records: BTreeSet<Tlsa> = accepted.iter().filter_map(|r| r.parse().ok()).collect();
            let ok = in_service(job, dns.resolver, &records).await;
            verified = Some((accepted, ok));
        }
        let edits = desired::edits(&OwnerFacts {
            wanted: &wanted_texts,
            owned: &owned,
            present: &present,
            verified: retiring && verified.as_ref().is_some_and(|(_, ok)| *ok),
        });
        for r in &edits.remove {
            let Some(value) = rdata(r) else { continue };
            match store.remove_values(owner, &[value]).await {
                Ok(_) => {
                    // Dropped from `owned` only once gone from DNS.
                    update_ledger(config, |l| disown(l, name, owner, r))
                        .map_err(|e| problems.push(e))?;
                    out.done.push(format!(
                        "target {name}: removed {owner} TLSA {r} (the new certificate is in service)"
                    ));
                }
                Err(e) => problems.push(format!("removing {owner} TLSA {r}: {e}")),
            }
        }
        for r in &edits.forget {
            update_ledger(config, |l| disown(l, name, owner, r)).map_err(|e| problems.push(e))?;
        }
        for r in &edits.add {
            let Some(value) = rdata(r) else { continue };
            // Owned BEFORE the write (see the module doc).
            let existed = !present.is_empty();
            update_ledger(config, |l| {
                l.note_set_before_add(name, owner, existed);
                l.targets
                    .entry(name.to_owned())
                    .or_default()
                    .owned
                    .entry(owner.clone())
                    .or_default()
                    .insert(r.clone());
            })
            .map_err(|e| problems.push(e))?;
            match store.add(owner, job.dane.ttl, &[value]).await {
                Ok(_) => out
                    .done
                    .push(format!("target {name}: published {owner} TLSA {r}")),
                Err(e) => problems.push(format!("publishing {owner} TLSA {r}: {e}")),
            }
        }
        for r in &edits.no_room {
            problems.push(format!(
                "{owner} already holds {} TLSA records: {r} not published (remove stale records by hand)",
                desired::MAX_RECORDS
            ));
        }
        for r in &edits.retiring {
            out.done.push(format!(
                "target {name}: keeping {owner} TLSA {r} until a wanted key is verified in service on every address"
            ));
        }
        if !edits.retiring.is_empty() {
            // The service may take a moment to serve the new key.
            out.next_wake = earliest(out.next_wake, Some(now + RETRY_RETIREMENT));
        }
    }

    // 4. Observe every owner on every authoritative server.
    let mut rounds: Vec<(&String, OwnerRound)> = Vec::new();
    for owner in &job.owners {
        // Under delegation the set lives at the CNAME's target (checked
        // above): observe it there.
        let at = match dns.delegate_to.as_deref() {
            Some(zone) => crate::delegation::target(owner, zone).unwrap_or_else(|_| owner.clone()),
            None => owner.clone(),
        };
        match observe(&prop, &at).await {
            Ok(servers) => rounds.push((owner, OwnerRound { servers })),
            // Nothing is merged: a t0 is neither started nor lost on a
            // round that could not ask every server.
            Err(e) => problems.push(format!("observing {owner} TLSA: {e}")),
        }
    }
    let after = update_ledger(config, |l| {
        for (owner, round) in &rounds {
            l.observe(name, owner, round, now);
        }
        l.clone()
    })
    .map_err(|e| problems.push(e))?;

    // 5. What changed for the gate, and when to look again.
    let mut unseen = false;
    let mut aged_at = Vec::new();
    let hold = after.hold_params(name, &job.owners);
    let hold = gate::hold(
        hold.old_ttl,
        hold.new_ttl,
        hold.rrset_existed,
        hold.negative_ttl,
    );
    for r in &wanted_texts {
        let since = after.seen_since(name, &job.owners, r);
        if seen_before.get(r.as_str()) != Some(&since) {
            out.changed_seen = true;
        }
        match since {
            None => unseen = true,
            Some(t0) => aged_at.push(t0.saturating_add(hold)),
        }
    }
    let poll = i64::try_from(dns.propagation_interval.as_secs()).unwrap_or(i64::MAX);
    let next_aged = aged_at.iter().copied().filter(|&t| t > now).min();
    let wake = desired::next_wake(unseen, aged_at, now, poll);
    out.next_wake = earliest(out.next_wake, wake);
    out.aged_at = earliest(out.aged_at, next_aged);
    Ok(Some(true))
}

/// `mxkeys dane status`: per DANE target and owner name, the records
/// published (this host's and others', as last seen on every
/// authoritative server), what each stands for (installed, candidate,
/// standby), since when it is seen and when it is aged, and the gate's
/// last decision. Reads files only; the DNS facts are the last pass's.
pub fn status_text(config: &Config, now: i64) -> Result<String, String> {
    use std::fmt::Write as _;
    let ledger = read_ledger(config)?;
    let mut s = String::new();
    let jobs = jobs(config);
    if jobs.is_empty() {
        return Err("no target has a [target.dane] table".to_owned());
    }
    let when = |t: i64| crate::rfc3339(t);
    for job in &jobs {
        let name = job.target.name.as_str();
        let t = ledger.targets.get(name).cloned().unwrap_or_default();
        let _ = writeln!(
            s,
            "target {name}: zone {}; last pass {}",
            match t.zone_signed {
                Some(true) => "DNSSEC-signed",
                Some(false) => "NOT DNSSEC-signed",
                None => "not checked yet",
            },
            t.last_pass.map_or_else(|| "never".to_owned(), when)
        );
        match &t.gate {
            Some(g) => {
                let _ = writeln!(
                    s,
                    "  gate: {}{}{}",
                    g.state,
                    g.until
                        .map(|u| format!(" until {}", when(u)))
                        .unwrap_or_default(),
                    g.reason
                        .as_ref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
            }
            None => s.push_str("  gate: no decision yet\n"),
        }
        let roles = job.roles();
        for (record, role) in &roles {
            let _ = writeln!(s, "  {:<9} {record}", role.join("+"));
        }
        let hold = ledger.hold_params(name, &job.owners);
        let hold = gate::hold(
            hold.old_ttl,
            hold.new_ttl,
            hold.rrset_existed,
            hold.negative_ttl,
        );
        for owner in &job.owners {
            let _ = writeln!(s, "  {owner}:");
            let owned = t.owned.get(owner).cloned().unwrap_or_default();
            let seen = t.seen.get(owner).cloned().unwrap_or_default();
            let records: BTreeSet<&String> = owned.iter().chain(seen.keys()).collect();
            if records.is_empty() {
                s.push_str("    no TLSA record seen\n");
            }
            for r in records {
                let whose = if owned.contains(r) {
                    "ours"
                } else {
                    "not ours"
                };
                let what = roles
                    .get(r.as_str())
                    .map_or_else(|| "not wanted".to_owned(), |v| v.join("+"));
                let state = match seen.get(r) {
                    None => "not seen signed on every server yet".to_owned(),
                    Some(&t0) if t0.saturating_add(hold) <= now => {
                        format!("seen since {}, aged since {}", when(t0), when(t0 + hold))
                    }
                    Some(&t0) => format!(
                        "seen since {}, aged at {}",
                        when(t0),
                        when(t0.saturating_add(hold))
                    ),
                };
                let _ = writeln!(s, "    {r} ({whose}, {what}): {state}");
            }
        }
        for p in &t.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        for h in &job.reuse_hints {
            let _ = writeln!(s, "  hint: {h}");
        }
    }
    Ok(s)
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn disown(l: &mut Ledger, target: &str, owner: &str, record: &str) {
    if let Some(t) = l.targets.get_mut(target)
        && let Some(set) = t.owned.get_mut(owner)
    {
        set.remove(record);
        if set.is_empty() {
            t.owned.remove(owner);
        }
    }
}

/// Whether every address of every host × port serves a chain that one of
/// `wanted` matches (the wanted records and other hosts' records, see
/// [`desired::in_service_records`]): the new key is in service, the old
/// record may go.
async fn in_service(job: &Job<'_>, resolver: Option<SocketAddr>, wanted: &BTreeSet<Tlsa>) -> bool {
    for host in &job.dane.hosts {
        for &port in &job.dane.ports {
            if !served_matches(host.as_str(), port, resolver, wanted).await {
                return false;
            }
        }
    }
    true
}

/// The ledger as saved (empty when there is none yet).
fn read_ledger(config: &Config) -> Result<Ledger, String> {
    config
        .state_dir
        .dane_record::<Ledger>()
        .load_or_default()
        .map_err(|e| e.to_string())
}

/// Loads, changes and saves the ledger under the run lock (the pipeline
/// writes the gate's decision into it too). A ledger that cannot be read
/// is left as it is.
fn update_ledger<R>(config: &Config, change: impl FnOnce(&mut Ledger) -> R) -> Result<R, String> {
    config
        .state_dir
        .update(config.state_dir.dane_record::<Ledger>(), change)
}

/// The provider value of a record text (`3 1 1 <hex>`).
fn rdata(text: &str) -> Option<RData> {
    let t: Tlsa = text.parse().ok()?;
    let mut fields = text.split_whitespace();
    let mut number = || fields.next()?.parse::<u8>().ok();
    Some(RData::Tlsa {
        usage: number()?,
        selector: number()?,
        matching: number()?,
        data: t.data.to_vec(),
    })
}

// ---------------------------------------------------------------------------
// What the other parts of issue 14 provide, as the pass uses it.
// ---------------------------------------------------------------------------

/// The chains the slots of target `index` would install next (held by the
/// gate or not).
fn candidates(plan: &Plan, index: usize) -> Vec<Vec<CertificateDer<'static>>> {
    plan.slots
        .iter()
        .filter(|s| s.report.target == index)
        .filter_map(|s| s.candidate())
        .map(<[CertificateDer<'static>]>::to_vec)
        .collect()
}

/// The SubjectPublicKeyInfo of acme source `source`'s standby key.
fn standby_spki(config: &Config, source: &str) -> Option<Vec<u8>> {
    crate::acme::standby_spki(config, source)
}

/// Whether the zone holding `name` is DNSSEC-signed on every
/// authoritative server.
async fn zone_signed(prop: &Propagation, name: &str) -> Result<bool, mxkeys_providers::Error> {
    prop.zone_signed(name).await
}

/// One observation round of `name`'s TLSA set, as the ledger takes it.
async fn observe(
    prop: &Propagation,
    name: &str,
) -> Result<Vec<ServerView>, mxkeys_providers::Error> {
    Ok(prop
        .observe(name, RecordType::Tlsa)
        .await?
        .into_iter()
        .map(|o| ServerView {
            records: o
                .values
                .iter()
                .map(|v| desired::normalize(&v.to_string()))
                .collect(),
            signed: o.signed,
            ttl: o.ttl,
            negative_ttl: o.negative_ttl,
        })
        .collect())
}

/// Whether the validating resolver vouches (AD) for `host`'s A and AAAA
/// answers: a DANE sender ignores TLSA records of a host whose address it
/// cannot validate.
async fn addresses_secure(
    resolver: Option<SocketAddr>,
    host: &str,
) -> Result<bool, mxkeys_providers::Error> {
    use mxkeys_providers::observe::secure_lookup;
    let a = secure_lookup(resolver, host, RecordType::A).await?;
    let aaaa = secure_lookup(resolver, host, RecordType::Aaaa).await?;
    Ok(a.authenticated && aaaa.authenticated)
}

/// Whether every address of `host` on `port` serves a chain that a wanted
/// record matches, asked as a DANE sender would
/// ([`check::check_endpoint_against`]).
async fn served_matches(
    host: &str,
    port: u16,
    resolver: Option<SocketAddr>,
    wanted: &BTreeSet<Tlsa>,
) -> bool {
    let wanted: Vec<Tlsa> = wanted.iter().copied().collect();
    let endpoint = check::check_endpoint_against(host, port, resolver, &wanted).await;
    if !endpoint.ok() {
        for line in endpoint.lines() {
            tracing::debug!("dane: not retiring yet: {line}");
        }
    }
    endpoint.ok()
}
