//! The reconcile pipeline every command drives: sources produce candidates,
//! selection makes a plan per target slot, install applies it, reload and
//! verification close it (see [`apply`]).
//!
//! Decide apart from act: [`plan`] first gathers the facts (what the sources
//! offer, what each slot's files hold, the state's rollback records, now),
//! then [`decide::decide`], which is pure, makes every slot's decision.
//! Problems stay typed ([`RunError`], [`Action`]'s values) up to the edges
//! that print them: [`Plan::log`], [`Report::problems`] and the CLI.
//!
//! `sync` runs it with [`Mode::Apply`]; `check` with [`Mode::Check`], which
//! reads and selects the same way but writes nothing and runs nothing. A
//! target has one slot, or two for a dual RSA + ECDSA target; reports are
//! per slot, named `target` or `target/rsa`.
//!
//! Expiry warnings ([`Report::expiring`]) respect the certificate's own
//! lifetime: less than `expiry_warning` left, or less than a third of its
//! lifetime for a short-lived one, whichever is shorter
//! ([`warning_threshold`], pure).
//!
//! A slot of a DANE target passes the DANE gate (see [`decide`]): a
//! certificate whose TLSA records are not yet aged is held
//! ([`Action::Held`]: the current files stay; not a failure; the report
//! says until when, [`Report::next_gate`]), or installed with an error
//! when the current certificate expires within `dane_hold_max`
//! ([`Gate::Forced`]).

mod apply;
pub mod decide;

pub use apply::apply;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

use crate::cert::KeyType;
use crate::config::{Config, Dane, Reload, Slot, SourceKind, Target};
use crate::dane::gate::{ForceReason, WaitReason};
use crate::dane::ledger::Ledger;
use crate::dane::tlsa::Tlsa;
use crate::install;
use crate::names::DnsName;
use crate::reload::ReloadError;
use crate::source::{self, Persist, SourceError, SourceErrorKind};
use crate::state::{self, State};
use crate::verify::VerifyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Write files, run reloads, record state.
    Apply,
    /// Read and select only.
    Check,
}

/// The certificate a target ends up with.
#[derive(Debug, Clone)]
pub struct Served {
    pub sha256: String,
    pub names: Vec<String>,
    pub key_type: KeyType,
    pub not_before: i64,
    pub not_after: i64,
    /// The source entry it came from, or "installed" when kept as is.
    pub origin: String,
    pub fallback: bool,
    /// The leaf's DER, to compare with what a service presents.
    pub leaf: Vec<u8>,
}

/// What happened to one target.
#[derive(Debug)]
pub enum Action {
    /// The files already hold the chosen certificate.
    UpToDate,
    /// These files were (or, in check mode, would be) replaced.
    Changed(Vec<PathBuf>),
    /// No source offers a valid certificate but the installed one is valid;
    /// it stays.
    KeptInstalled,
    /// Nothing valid: the files stay as they are.
    Unserved(Unserved),
    /// Writing failed; the target's files were restored.
    WriteFailed(install::InstallError),
    /// Installed, but the reload or the verification failed, so the
    /// previous files were put back.
    RolledBack(RolledBack),
    /// This certificate was rolled back before; it is retried after a
    /// backoff.
    Deferred(Deferred),
    /// A first install (the target had no files) whose reload or
    /// verification failed: there is nothing to go back to, so the new
    /// files stay and the reload is owed to the next pass.
    Unconfirmed(ServiceFailure),
    /// The DANE gate holds the chosen certificate: its TLSA record is not
    /// yet seen or not yet aged. The current files stay; not a failure.
    Held(DaneHold),
}

impl Action {
    /// Why the slot is not served (or not written), as text; `None` when
    /// it is.
    pub fn why(&self) -> Option<String> {
        match self {
            Action::Unserved(e) => Some(e.to_string()),
            Action::WriteFailed(e) => Some(e.to_string()),
            Action::RolledBack(e) => Some(e.to_string()),
            Action::Deferred(e) => Some(e.to_string()),
            Action::Unconfirmed(e) => Some(format!(
                "{e}; first install, nothing to go back to: the new files stay and the reload is retried on the next pass"
            )),
            Action::Held(h) => Some(h.to_string()),
            Action::UpToDate | Action::Changed(_) | Action::KeptInstalled => None,
        }
    }
}

/// A certificate the DANE gate holds back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneHold {
    /// The certificate held (SHA-256 of its leaf).
    pub sha256: String,
    /// Where it comes from.
    pub origin: source::Origin,
    /// The record it waits for (`None`: it cannot be built for that
    /// chain, e.g. a `2 1 1` with no issuer in the chain).
    pub record: Option<Tlsa>,
    /// When the gate opens if nothing changes; `None` while the record is
    /// not seen yet.
    pub until: Option<i64>,
    pub reason: WaitReason,
    /// How to renew without a hold, when its source can keep its key
    /// ([`reuse_key_hint`]).
    pub hint: Option<&'static str>,
}

#[cfg(test)]
impl DaneHold {
    /// A hold of certificate `sha256` from a files source's entry `next`,
    /// without record or hint: the unit tests' fixture.
    pub(crate) fn sample(sha256: &str, until: Option<i64>, reason: WaitReason) -> DaneHold {
        DaneHold {
            sha256: sha256.to_owned(),
            origin: source::Origin {
                source: Arc::from("src"),
                source_index: 0,
                entry: "next".to_owned(),
                entry_index: 0,
            },
            record: None,
            until,
            reason,
            hint: None,
        }
    }
}

impl fmt::Display for DaneHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let until = self
            .until
            .map_or_else(|| "its record is seen".to_owned(), crate::rfc3339);
        write!(
            f,
            "DANE gate holds certificate {} from {} until {until}: {} (record {}); the current certificate stays",
            self.sha256,
            self.origin,
            self.reason,
            record_text(self.record.as_ref())
        )?;
        if let Some(hint) = self.hint {
            write!(f, "; {hint}")?;
        }
        Ok(())
    }
}

/// How a source that makes a new key on every renewal can be told to keep
/// it, so that a renewal changes no TLSA record and is never held (pure).
pub fn reuse_key_hint(kind: &SourceKind) -> Option<&'static str> {
    match kind {
        SourceKind::Certbot { .. } => Some(
            "to renew without a hold, keep the key: `reuse_key = True` in Certbot's renewal \
             configuration (or `certbot renew --reuse-key`)",
        ),
        SourceKind::Lego { .. } => {
            Some("to renew without a hold, keep the key: `lego renew --reuse-key`")
        }
        _ => None,
    }
}

/// A certificate installed although the DANE gate was shut, because the
/// current one expires within `dane_hold_max`: an error-level problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaneForced {
    pub sha256: String,
    /// The record that was not aged.
    pub record: Option<Tlsa>,
    pub reason: ForceReason,
}

impl fmt::Display for DaneForced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "installing {} although its TLSA record {} is not aged ({}): the current certificate \
             expires {}, within dane_hold_max; DANE senders may refuse mail until the record ages",
            self.sha256,
            record_text(self.record.as_ref()),
            self.reason.waiting,
            crate::rfc3339(self.reason.expires)
        )
    }
}

fn record_text(record: Option<&Tlsa>) -> String {
    record.map_or_else(
        || "(cannot be built for this chain)".to_owned(),
        ToString::to_string,
    )
}

/// What the DANE gate did for a slot of a DANE target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Nothing to gate: nothing new to install, nothing installed, or the
    /// new certificate keeps every configured record.
    Clear,
    /// The new records are aged: the certificate is installed.
    Open,
    /// The certificate is held ([`Action::Held`] says why and until when).
    Held,
    /// Installed although the gate was shut (an error).
    Forced(DaneForced),
}

/// No candidate is valid for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unserved {
    pub domains: Vec<DnsName>,
    /// Candidates refused, those for other names included.
    pub refused: usize,
    /// Candidates for other names only.
    pub unrelated: usize,
}

impl fmt::Display for Unserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domains: Vec<&str> = self.domains.iter().map(DnsName::as_str).collect();
        write!(
            f,
            "no valid certificate for {} ({} candidates refused, {} of them for other names); its files stay as they are",
            domains.join(", "),
            self.refused,
            self.unrelated
        )
    }
}

/// Why a service did not confirm a target's new files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceFailure {
    /// One of the target's reloads failed.
    Reload { action: Reload, error: String },
    /// The service does not present the installed certificate.
    Verify(String),
}

impl fmt::Display for ServiceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServiceFailure::Reload { action, error } => {
                write!(f, "reload `{action}` failed: {error}")
            }
            ServiceFailure::Verify(e) => write!(f, "verification failed: {e}"),
        }
    }
}

/// A target's new files were taken back.
#[derive(Debug, Clone)]
pub struct RolledBack {
    pub cause: ServiceFailure,
    /// Why the previous files could not all be restored, if so (shared:
    /// every slot of the target reports the same rollback).
    pub restore_error: Option<Arc<install::RestoreError>>,
}

impl fmt::Display for RolledBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.restore_error {
            None => write!(f, "{}; rolled back to the previous files", self.cause),
            Some(e) => write!(f, "{}; rolling back failed: {e}", self.cause),
        }
    }
}

/// A certificate rolled back before, not tried again before its backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    pub sha256: String,
    /// Why it was rolled back, as recorded in the state.
    pub reason: String,
    pub retry_at: i64,
}

impl fmt::Display for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate {} was rolled back ({}); trying it again after {}",
            self.sha256,
            self.reason,
            crate::rfc3339(self.retry_at)
        )
    }
}

/// What happened to one slot of a target.
#[derive(Debug)]
pub struct TargetReport {
    /// The slot's name: `dovecot`, or `dovecot/rsa` in a dual target.
    pub name: String,
    /// Position of the target in the configuration, and of the slot in it.
    pub target: usize,
    pub slot: usize,
    pub served: Option<Served>,
    pub action: Action,
    /// Refused candidates: origin and reason.
    pub refused: Vec<(String, String)>,
    /// How many candidates covered none of its names.
    pub unrelated: usize,
    /// What the DANE gate did (`None`: the target has no DANE).
    pub gate: Option<Gate>,
}

impl TargetReport {
    /// The slot is served as it should be: a held certificate is not a
    /// failure (the current one stays), a forced install is served (its
    /// error is in [`TargetReport::problem`]).
    pub fn ok(&self) -> bool {
        matches!(
            self.action,
            Action::UpToDate | Action::Changed(_) | Action::KeptInstalled | Action::Held(_)
        )
    }

    /// Why this slot is not served (or not written), or the error of a
    /// forced install, as one report line. A held certificate is not a
    /// problem.
    pub fn problem(&self) -> Option<String> {
        if let Some(Gate::Forced(forced)) = &self.gate
            && self.ok()
        {
            return Some(format!("target {}: {forced}", self.name));
        }
        if matches!(self.action, Action::Held(_)) {
            return None;
        }
        let why = self.action.why()?;
        Some(format!("target {}: {why}", self.name))
    }

    /// The DANE gate holds this slot's new certificate.
    pub fn held(&self) -> Option<&DaneHold> {
        match &self.action {
            Action::Held(h) => Some(h),
            _ => None,
        }
    }
}

#[derive(Debug)]
pub struct ReloadReport {
    pub action: Reload,
    /// `None` in check mode (it would run).
    pub result: Option<Result<(), ReloadError>>,
}

/// One check that a service presents the installed certificate (its
/// error names the endpoint).
#[derive(Debug)]
pub struct VerifyReport {
    /// The target checked (its position in the configuration).
    pub target: usize,
    pub result: Result<(), VerifyError>,
}

/// A problem of a run that is no one target's: a source error (an
/// unreadable file, a broken entry), the lock, or reading that did not
/// finish. Rendered as one line by `Display`, once, at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    Source(SourceError),
    /// The run lock in state_dir could not be taken.
    Lock {
        state_dir: PathBuf,
        reason: String,
    },
    /// The task reading the sources failed.
    Reading(String),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::Source(e) => write!(f, "{e}"),
            RunError::Lock { state_dir, reason } => write!(
                f,
                "state_dir {}: cannot take the lock: {reason}",
                state_dir.display()
            ),
            RunError::Reading(e) => write!(f, "reading the sources failed: {e}"),
        }
    }
}

/// What tells one [`RunError`] from another, whatever its wording: the
/// source, the entry and the kind of a source error.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunErrorId {
    Source {
        source: Arc<str>,
        entry: Option<String>,
        kind: SourceErrorKind,
    },
    Lock,
    Reading,
}

impl RunError {
    pub fn id(&self) -> RunErrorId {
        match self {
            RunError::Source(e) => RunErrorId::Source {
                source: e.source.clone(),
                entry: e.entry.clone(),
                kind: e.kind,
            },
            RunError::Lock { .. } => RunErrorId::Lock,
            RunError::Reading(_) => RunErrorId::Reading,
        }
    }
}

/// Everything a reconcile did, for the caller to print and turn into an
/// exit status. Errors were already logged as they happened.
#[derive(Debug, Default)]
pub struct Report {
    pub candidates: usize,
    /// Source errors: unreadable files and broken entries.
    pub errors: Vec<RunError>,
    pub targets: Vec<TargetReport>,
    pub reloads: Vec<ReloadReport>,
    pub verifications: Vec<VerifyReport>,
    /// Targets whose new files were taken back.
    pub rollbacks: Vec<String>,
}

impl Report {
    /// Every problem of the run, one line each: source errors, targets not
    /// served or not written, failed reloads.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        out.extend(self.targets.iter().filter_map(TargetReport::problem));
        out.extend(self.reloads.iter().filter_map(|r| match &r.result {
            Some(Err(e)) => Some(format!("reload `{}`: {e}", r.action)),
            _ => None,
        }));
        out
    }

    /// Targets whose certificate is close to expiry (see
    /// [`warning_threshold`]: `threshold`, or a third of a short-lived
    /// certificate's lifetime), keyed by (target, fingerprint), with the
    /// warning to give.
    pub fn expiring(&self, threshold: Duration, now: i64) -> Vec<((String, String), String)> {
        self.targets
            .iter()
            .filter_map(|t| {
                let s = t.served.as_ref()?;
                let left = s.not_after - now;
                (left < warning_threshold(threshold, s.not_before, s.not_after)).then(|| {
                    let newer = match t.held() {
                        Some(h) => format!("a newer one ({}) waits for the DANE gate", h.sha256),
                        None => "no source offers a newer one".to_owned(),
                    };
                    let message = format!(
                        "target {}: its certificate expires in {} days ({}); {newer}",
                        t.name,
                        left.div_euclid(86_400),
                        crate::rfc3339(s.not_after)
                    );
                    ((t.name.clone(), s.sha256.clone()), message)
                })
            })
            .collect()
    }

    /// No problem at all: every slot served, no source error, no failed
    /// reload, no install forced through the DANE gate.
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.targets.iter().all(TargetReport::ok)
            && self
                .targets
                .iter()
                .all(|t| !matches!(t.gate, Some(Gate::Forced(_))))
            && self
                .reloads
                .iter()
                .all(|r| !matches!(r.result, Some(Err(_))))
    }

    /// The earliest time a held certificate's gate opens (if nothing
    /// changes): when to reconcile again.
    pub fn next_gate(&self) -> Option<i64> {
        self.targets.iter().filter_map(|t| t.held()?.until).min()
    }
}

/// How much time left makes a certificate "expiring" (pure): the
/// configured `expiry_warning`, but at most a third of the certificate's
/// lifetime. A 90-day certificate is warned about 14 days (the default)
/// before expiry; a 6-day one only when less than 2 days are left, i.e.
/// when its renewal (due at about half its lifetime) is a day late, not
/// from the hour it is installed.
fn warning_threshold(configured: Duration, not_before: i64, not_after: i64) -> i64 {
    let configured = i64::try_from(configured.as_secs()).unwrap_or(i64::MAX);
    let lifetime = not_after.saturating_sub(not_before).max(0);
    configured.min(lifetime / 3)
}

/// What reading and selection decided, before anything is written.
#[derive(Debug, Default)]
pub struct Plan {
    pub candidates: usize,
    /// Source errors: unreadable files and broken entries.
    pub errors: Vec<RunError>,
    pub warnings: Vec<String>,
    pub slots: Vec<SlotPlan>,
}

/// The decision for one slot of a target.
#[derive(Debug)]
pub struct SlotPlan {
    pub report: TargetReport,
    /// The files to hold when a certificate was chosen (empty otherwise).
    files: Vec<install::Planned>,
    /// The chain the slot would install, also when held or deferred.
    candidate: Option<Vec<CertificateDer<'static>>>,
}

impl SlotPlan {
    /// The chain this slot would install (leaf first), also when the DANE
    /// gate holds it or a backoff defers it: the DANE pass publishes its
    /// records. `None` when nothing new is chosen.
    pub fn candidate(&self) -> Option<&[CertificateDer<'static>]> {
        self.candidate.as_deref()
    }
}

impl Plan {
    /// Logs the plan's errors, warnings and refusals.
    pub fn log(&self) {
        for w in &self.warnings {
            tracing::warn!("{w}");
        }
        for e in &self.errors {
            tracing::error!("{e}");
        }
        for t in &self.slots {
            let r = &t.report;
            for (origin, why) in &r.refused {
                if matches!(r.action, Action::Unserved(_)) {
                    tracing::error!("target {}: refused {origin}: {why}", r.name);
                } else {
                    tracing::debug!("target {}: refused {origin}: {why}", r.name);
                }
            }
            match (&r.action, &r.served) {
                (Action::Unserved(why), _) => tracing::error!("target {}: {why}", r.name),
                (Action::Deferred(why), _) => tracing::warn!("target {}: {why}", r.name),
                (Action::Held(why), _) => tracing::info!("target {}: {why}", r.name),
                (Action::KeptInstalled, Some(s)) => tracing::warn!(
                    "target {}: no source offers a valid certificate; keeping the installed one (expires {})",
                    r.name,
                    crate::rfc3339(s.not_after)
                ),
                (_, Some(s)) if s.fallback => tracing::warn!(
                    "target {}: no valid certificate from any source; using the self-signed fallback",
                    r.name
                ),
                _ => {}
            }
            if let Some(Gate::Forced(forced)) = &r.gate {
                tracing::error!("target {}: {forced}", r.name);
            }
        }
    }
}

/// Every (target, slot) of a configuration, with their positions.
fn slots(config: &Config) -> impl Iterator<Item = (usize, &Target, usize, &Slot)> {
    config.targets.iter().enumerate().flat_map(|(ti, t)| {
        t.slots
            .iter()
            .enumerate()
            .map(move |(si, slot)| (ti, t, si, slot))
    })
}

/// Reads every source and decides every target slot. Writes nothing,
/// except the self-signed fallback's own files when `persist` says so.
/// Gathers the facts first (sources, installed files, state, now), then
/// decides ([`decide::decide`], pure).
pub fn plan(config: &Config, persist: Persist) -> Plan {
    let harvest = source::read_all(config, persist);
    let record = State::load(&config.state_dir);
    let ledger = load_ledger(config);
    let facts = decide::Facts {
        candidates: &harvest.candidates,
        slots: slots(config)
            .map(|(ti, target, si, slot)| {
                let name = target.slot_name(slot);
                decide::SlotFacts {
                    failure: record.failures.get(&name),
                    name,
                    target: ti,
                    slot: si,
                    domains: &target.domains,
                    key_type: slot.key_type,
                    installed: install::installed_bundle(&slot.files).ok(),
                    dane: target
                        .dane
                        .as_ref()
                        .map(|d| dane_facts(&ledger, &target.name, d)),
                }
            })
            .collect(),
        now: crate::now(),
    };
    let decision = decide::decide(facts);
    let mut errors: Vec<RunError> = harvest.errors.into_iter().map(RunError::Source).collect();
    errors.extend(decision.broken.into_iter().map(|b| {
        RunError::Source(SourceError {
            source: b.origin.source,
            entry: Some(b.origin.entry),
            kind: SourceErrorKind::Broken,
            reason: b.refusal.to_string(),
        })
    }));
    Plan {
        candidates: harvest.candidates.len(),
        errors,
        warnings: harvest.warnings,
        slots: decision
            .slots
            .into_iter()
            .map(|d| {
                let target = &config.targets[d.report.target];
                let files = d.install.as_ref().map_or_else(Vec::new, |bundle| {
                    install::planned_files(target, &target.slots[d.report.slot], bundle)
                });
                let mut report = d.report;
                if let Action::Held(h) = &mut report.action {
                    h.hint = config
                        .sources
                        .get(h.origin.source_index)
                        .and_then(|s| reuse_key_hint(&s.kind));
                }
                SlotPlan {
                    report,
                    files,
                    candidate: d.candidate,
                }
            })
            .collect(),
    }
}

/// The DANE ledger (`state_dir/dane.json`), read once per plan. Missing:
/// empty. Unreadable: empty too, with a warning: nothing is seen, so the
/// gate holds every new key (and forces it at `dane_hold_max`), the safe
/// side.
fn load_ledger(config: &Config) -> Ledger {
    if config.targets.iter().all(|t| t.dane.is_none()) {
        return Ledger::default();
    }
    match config.state_dir.dane_record::<Ledger>().load() {
        Ok(ledger) => ledger.unwrap_or_default(),
        Err(e) => {
            tracing::warn!("{e}; the DANE gate sees no record until it is readable");
            Ledger::default()
        }
    }
}

/// What the DANE gate of a slot of target `name` decides from: the
/// configured usages and `dane_hold_max`, and from the ledger, since when
/// each record has been seen at every owner name and the TTLs of their
/// sets. The TTL of the records mxkeys adds counts as the new TTL when it
/// is larger than any observed.
fn dane_facts(ledger: &Ledger, name: &str, dane: &Dane) -> decide::DaneFacts {
    let owners = dane.owners();
    let hold = ledger.hold_params(name, &owners);
    let mut seen: BTreeMap<String, i64> = BTreeMap::new();
    let texts: BTreeSet<&String> = ledger
        .targets
        .get(name)
        .map(|t| t.seen.values().flat_map(BTreeMap::keys).collect())
        .unwrap_or_default();
    for text in texts {
        let (Ok(record), Some(since)) =
            (text.parse::<Tlsa>(), ledger.seen_since(name, &owners, text))
        else {
            continue;
        };
        seen.entry(record.to_string())
            .and_modify(|t| *t = (*t).min(since))
            .or_insert(since);
    }
    decide::DaneFacts {
        records: dane.records.clone(),
        seen,
        old_ttl: hold.old_ttl,
        new_ttl: hold.new_ttl.max(dane.ttl),
        rrset_existed: hold.rrset_existed,
        negative_ttl: hold.negative_ttl,
        hold_max: i64::try_from(dane.hold_max.as_secs()).unwrap_or(i64::MAX),
    }
}

/// Runs one reconcile: plan, then apply ([`Mode::Apply`]) or compare
/// ([`Mode::Check`]).
pub fn reconcile(config: &Config, mode: Mode) -> Report {
    match mode {
        Mode::Check => {
            let plan = plan(config, Persist::No);
            plan.log();
            check(config, plan)
        }
        Mode::Apply => {
            let _lock = match lock(config) {
                Ok(l) => l,
                Err(report) => return *report,
            };
            let plan = plan(config, Persist::Yes);
            plan.log();
            apply(config, plan, "sync")
        }
    }
}

/// Takes the run lock, or returns the report of a run that could not start.
pub fn lock(config: &Config) -> Result<state::Lock, Box<Report>> {
    config.state_dir.lock().map_err(|e| {
        let error = RunError::Lock {
            state_dir: config.state_dir.path().to_owned(),
            reason: source::io_reason(&e),
        };
        tracing::error!("{error}");
        Box::new(Report {
            errors: vec![error],
            ..Report::default()
        })
    })
}

/// Marks which files would change; writes nothing.
pub fn check(config: &Config, plan: Plan) -> Report {
    let mut report = Report {
        candidates: plan.candidates,
        errors: plan.errors,
        ..Report::default()
    };
    for t in plan.slots {
        let mut r = t.report;
        let changed: Vec<PathBuf> = t
            .files
            .iter()
            .filter(|p| install::differs(&p.path, &p.bytes))
            .map(|p| p.path.clone())
            .collect();
        if !changed.is_empty() {
            r.action = Action::Changed(changed);
        }
        report.targets.push(r);
    }
    let owed = State::load(&config.state_dir).pending_reloads;
    report.reloads = apply::reloads_of_changed(config, &report.targets, &owed)
        .into_iter()
        .map(|(action, _)| ReloadReport {
            action,
            result: None,
        })
        .collect();
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// A fixed "now" (2026-01-01T00:00:00Z): the fake clock.
    const NOW: i64 = 1_767_225_600;

    fn report_with(not_before: i64, not_after: i64) -> Report {
        Report {
            targets: vec![TargetReport {
                name: "mail".to_owned(),
                target: 0,
                slot: 0,
                served: Some(Served {
                    sha256: "ab".to_owned(),
                    names: vec!["mx.example".to_owned()],
                    key_type: KeyType::Ed25519,
                    not_before,
                    not_after,
                    origin: "test".to_owned(),
                    fallback: false,
                    leaf: Vec::new(),
                }),
                action: Action::UpToDate,
                refused: Vec::new(),
                unrelated: 0,
                gate: None,
            }],
            ..Report::default()
        }
    }

    #[test]
    fn typed_problems_render_the_lines_the_cli_and_the_state_file_always_had() {
        let reload = Reload::Command(vec!["systemctl".to_owned(), "reload".to_owned()]);
        let failure = ServiceFailure::Reload {
            action: reload,
            error: "exit status 1".to_owned(),
        };
        let source = SourceError {
            source: Arc::from("traefik"),
            entry: Some("resolver \"le\" #1".to_owned()),
            kind: SourceErrorKind::Malformed,
            reason: "`key` is missing".to_owned(),
        };
        let rendered: Vec<(String, &str)> = vec![
            (
                RunError::Source(source).to_string(),
                "source traefik: resolver \"le\" #1: `key` is missing",
            ),
            (
                RunError::Lock {
                    state_dir: PathBuf::from("/var/lib/mxkeys"),
                    reason: "permission denied".to_owned(),
                }
                .to_string(),
                "state_dir /var/lib/mxkeys: cannot take the lock: permission denied",
            ),
            (
                RunError::Reading("task panicked".to_owned()).to_string(),
                "reading the sources failed: task panicked",
            ),
            (
                Action::Unserved(Unserved {
                    domains: vec![crate::names::DnsName::parse("mx.example").unwrap()],
                    refused: 2,
                    unrelated: 1,
                })
                .why()
                .unwrap(),
                "no valid certificate for mx.example (2 candidates refused, 1 of them for other names); its files stay as they are",
            ),
            (
                Action::RolledBack(RolledBack {
                    cause: failure.clone(),
                    restore_error: None,
                })
                .why()
                .unwrap(),
                "reload `systemctl reload` failed: exit status 1; rolled back to the previous files",
            ),
            (
                Action::RolledBack(RolledBack {
                    cause: ServiceFailure::Verify("timed out".to_owned()),
                    restore_error: Some(Arc::new(install::RestoreError(vec![(
                        PathBuf::from("/etc/ssl/mx.pem"),
                        std::io::Error::other("disk full"),
                    )]))),
                })
                .why()
                .unwrap(),
                "verification failed: timed out; rolling back failed: cannot restore /etc/ssl/mx.pem: disk full",
            ),
            (
                Action::Unconfirmed(failure).why().unwrap(),
                "reload `systemctl reload` failed: exit status 1; first install, nothing to go back to: the new files stay and the reload is retried on the next pass",
            ),
            (
                Action::Deferred(Deferred {
                    sha256: "ab".to_owned(),
                    reason: "verification failed: timed out".to_owned(),
                    retry_at: NOW,
                })
                .why()
                .unwrap(),
                "certificate ab was rolled back (verification failed: timed out); trying it again after 2026-01-01T00:00:00Z",
            ),
        ];
        for (got, want) in rendered {
            assert_eq!(got, want);
        }
        assert_eq!(Action::KeptInstalled.why(), None);
    }

    #[test]
    fn a_short_lived_certificate_is_warned_about_only_late_in_its_life() {
        let fourteen_days = Duration::from_secs(14 * DAY as u64);
        // (lifetime, time since issuance, warned?)
        for (lifetime, age, warned) in [
            // 6-day certificate: fresh, at its renewal point, a day late.
            (6 * DAY, 0, false),
            (6 * DAY, DAY, false),
            (6 * DAY, 3 * DAY, false),
            (6 * DAY, 4 * DAY + 1, true),
            (6 * DAY, 5 * DAY, true),
            // 90-day certificate: the configured 14 days rule.
            (90 * DAY, 60 * DAY, false),
            (90 * DAY, 76 * DAY, false),
            (90 * DAY, 76 * DAY + 1, true),
            (90 * DAY, 89 * DAY, true),
            // Expired: always.
            (6 * DAY, 7 * DAY, true),
        ] {
            let not_before = NOW - age;
            let report = report_with(not_before, not_before + lifetime);
            let got = !report.expiring(fourteen_days, NOW).is_empty();
            assert_eq!(
                got,
                warned,
                "lifetime {} days, issued {} s ago",
                lifetime / DAY,
                age
            );
        }
    }

    #[test]
    fn the_warning_threshold_is_the_shorter_of_the_setting_and_a_third_of_the_lifetime() {
        let d = |days: u64| Duration::from_secs(days * DAY as u64);
        for (configured, lifetime, want) in [
            (d(14), 90 * DAY, 14 * DAY),
            (d(14), 6 * DAY, 2 * DAY),
            (d(1), 6 * DAY, DAY),
            (d(14), 30 * DAY, 10 * DAY),
            (d(14), 0, 0),
            (d(14), -DAY, 0),
        ] {
            assert_eq!(
                warning_threshold(configured, NOW, NOW + lifetime),
                want,
                "{configured:?}, lifetime {lifetime}"
            );
        }
    }

    fn dane_slot(name: &str, action: Action, gate: Gate) -> TargetReport {
        TargetReport {
            name: name.to_owned(),
            target: 0,
            slot: 0,
            served: None,
            action,
            refused: Vec::new(),
            unrelated: 0,
            gate: Some(gate),
        }
    }

    fn held(until: Option<i64>) -> Action {
        Action::Held(DaneHold::sample(
            "ab",
            until,
            WaitReason::NotSeen {
                spec: crate::dane::tlsa::Spec::EE,
            },
        ))
    }

    #[test]
    fn a_held_slot_is_no_failure_and_the_earliest_gate_is_when_to_reconcile_again() {
        let report = Report {
            targets: vec![
                dane_slot("a", held(Some(NOW + 600)), Gate::Held),
                dane_slot("b", held(None), Gate::Held),
                dane_slot("c", held(Some(NOW + 60)), Gate::Held),
                dane_slot("d", Action::UpToDate, Gate::Open),
            ],
            ..Report::default()
        };
        assert!(report.ok(), "{:?}", report.problems());
        assert!(report.problems().is_empty());
        assert_eq!(report.next_gate(), Some(NOW + 60));
        assert_eq!(Report::default().next_gate(), None);
    }

    #[test]
    fn a_forced_install_is_served_but_fails_the_run_with_one_error_line() {
        let forced = DaneForced {
            sha256: "cd".to_owned(),
            record: None,
            reason: ForceReason {
                waiting: WaitReason::NotSeen {
                    spec: crate::dane::tlsa::Spec::EE,
                },
                expires: NOW,
            },
        };
        let report = Report {
            targets: vec![dane_slot(
                "mail",
                Action::Changed(Vec::new()),
                Gate::Forced(forced),
            )],
            ..Report::default()
        };
        assert!(report.targets[0].ok(), "the slot is served");
        assert!(!report.ok(), "but the run reports the error");
        let problems = report.problems();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("target mail: installing cd although its TLSA record")
                && problems[0].contains("the current certificate expires 2026-01-01T00:00:00Z"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_gate_sees_a_record_only_since_every_owner_shows_it() {
        use crate::dane::ledger::{Rrset, TargetLedger};
        let a = "aa".repeat(32);
        let b = "bb".repeat(32);
        let mut t = TargetLedger::default();
        // Owner 1 shows both (one in upper case hex); owner 2 only a.
        t.seen.insert(
            "_25._tcp.mx.example".to_owned(),
            BTreeMap::from([
                (format!("3 1 1 {}", a.to_uppercase()), 100),
                (format!("3 1 1 {b}"), 50),
            ]),
        );
        t.seen.insert(
            "_25._tcp.mx2.example".to_owned(),
            BTreeMap::from([(format!("3 1 1 {}", a.to_uppercase()), 300)]),
        );
        for owner in ["_25._tcp.mx.example", "_25._tcp.mx2.example"] {
            t.rrsets.insert(
                owner.to_owned(),
                Rrset {
                    max_ttl: 60,
                    existed_before: true,
                    negative_ttl: 30,
                },
            );
        }
        let ledger = Ledger {
            targets: BTreeMap::from([("mail".to_owned(), t)]),
        };
        let dane = Dane {
            dns: "ns".to_owned(),
            ports: vec![25],
            hosts: vec![
                DnsName::parse("mx.example").unwrap(),
                DnsName::parse("mx2.example").unwrap(),
            ],
            records: vec![crate::dane::tlsa::Spec::EE],
            ttl: 300,
            hold_max: Duration::from_secs(86_400),
            key_rollover: None,
        };
        let facts = dane_facts(&ledger, "mail", &dane);
        assert_eq!(
            facts.seen,
            BTreeMap::from([(format!("3 1 1 {a}"), 300)]),
            "normalized, the later owner's time, b missing at one owner"
        );
        assert_eq!(
            (
                facts.old_ttl,
                facts.new_ttl,
                facts.rrset_existed,
                facts.negative_ttl
            ),
            (60, 300, true, 30),
            "the configured TTL counts when larger"
        );
        assert_eq!(facts.hold_max, 86_400);
        assert!(dane_facts(&ledger, "other", &dane).seen.is_empty());
    }

    #[test]
    fn an_expiry_warning_of_a_held_slot_says_the_newer_certificate_waits_for_the_gate() {
        let mut report = report_with(NOW - 80 * DAY, NOW + 5 * DAY);
        let fourteen_days = Duration::from_secs(14 * DAY as u64);
        let plain = report.expiring(fourteen_days, NOW);
        assert!(
            plain[0].1.ends_with("no source offers a newer one"),
            "{plain:?}"
        );
        report.targets[0].action = held(Some(NOW + 60));
        let held = report.expiring(fourteen_days, NOW);
        assert!(
            held[0]
                .1
                .ends_with("a newer one (ab) waits for the DANE gate"),
            "{held:?}"
        );
    }

    #[test]
    fn only_the_sources_that_can_keep_their_key_get_a_reuse_key_hint() {
        let path = PathBuf::from("/x");
        for (kind, want) in [
            (
                SourceKind::Certbot { path: path.clone() },
                Some("reuse_key = True"),
            ),
            (
                SourceKind::Lego { path: path.clone() },
                Some("lego renew --reuse-key"),
            ),
            (
                SourceKind::Traefik {
                    path: path.clone(),
                    resolvers: None,
                },
                None,
            ),
            (
                SourceKind::Files {
                    cert: path.clone(),
                    key: path.clone(),
                    chain: None,
                },
                None,
            ),
        ] {
            let hint = reuse_key_hint(&kind);
            match want {
                Some(part) => assert!(hint.is_some_and(|h| h.contains(part)), "{kind:?}"),
                None => assert_eq!(hint, None, "{kind:?}"),
            }
        }
    }
}
