//! The reconcile pipeline every command drives: sources produce candidates,
//! selection makes a plan per target slot, install applies it, reload and
//! verification close it (see [`apply`]).
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

mod apply;

pub use apply::apply;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::cert::{self, Bundle, KeyType, Leaf, Timeliness};
use crate::config::{Config, Reload, Slot, Target};
use crate::install;
use crate::names;
use crate::select::{self, Selection};
use crate::source::{self, Persist};
use crate::state::{self, State};

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
    Unserved(String),
    /// Writing failed; the target's files were restored.
    WriteFailed(String),
    /// Installed, but the reload or the verification failed, so the
    /// previous files were put back.
    RolledBack(String),
    /// This certificate was rolled back before; it is retried after a
    /// backoff.
    Deferred(String),
    /// A first install (the target had no files) whose reload or
    /// verification failed: there is nothing to go back to, so the new
    /// files stay and the reload is owed to the next pass.
    Unconfirmed(String),
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
}

impl TargetReport {
    pub fn ok(&self) -> bool {
        matches!(
            self.action,
            Action::UpToDate | Action::Changed(_) | Action::KeptInstalled
        )
    }

    /// Why this slot is not served (or not written), as one report line.
    pub fn problem(&self) -> Option<String> {
        match &self.action {
            Action::Unserved(e)
            | Action::WriteFailed(e)
            | Action::RolledBack(e)
            | Action::Deferred(e)
            | Action::Unconfirmed(e) => Some(format!("target {}: {e}", self.name)),
            Action::UpToDate | Action::Changed(_) | Action::KeptInstalled => None,
        }
    }
}

#[derive(Debug)]
pub struct ReloadReport {
    pub action: Reload,
    /// `None` in check mode (it would run).
    pub result: Option<Result<(), String>>,
}

/// One check that a service presents the installed certificate.
#[derive(Debug)]
pub struct VerifyReport {
    /// The slot checked.
    pub name: String,
    pub address: String,
    pub result: Result<(), String>,
}

/// Everything a reconcile did, for the caller to print and turn into an
/// exit status. Errors were already logged as they happened.
#[derive(Debug, Default)]
pub struct Report {
    pub candidates: usize,
    /// Source errors: unreadable files and broken entries.
    pub errors: Vec<String>,
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
        let mut out = self.errors.clone();
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
                    let message = format!(
                        "target {}: its certificate expires in {} days ({}); no source offers a newer one",
                        t.name,
                        left.div_euclid(86_400),
                        crate::rfc3339(s.not_after)
                    );
                    ((t.name.clone(), s.sha256.clone()), message)
                })
            })
            .collect()
    }

    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.targets.iter().all(TargetReport::ok)
            && self
                .reloads
                .iter()
                .all(|r| !matches!(r.result, Some(Err(_))))
    }
}

/// How much time left makes a certificate "expiring" (pure): the
/// configured `expiry_warning`, but at most a third of the certificate's
/// lifetime. A 90-day certificate is warned about 14 days (the default)
/// before expiry; a 6-day one only when less than 2 days are left, i.e.
/// when its renewal (due at about half its lifetime) is a day late, not
/// from the hour it is installed.
pub fn warning_threshold(configured: Duration, not_before: i64, not_after: i64) -> i64 {
    let configured = i64::try_from(configured.as_secs()).unwrap_or(i64::MAX);
    let lifetime = not_after.saturating_sub(not_before).max(0);
    configured.min(lifetime / 3)
}

/// What reading and selection decided, before anything is written.
#[derive(Debug, Default)]
pub struct Plan {
    pub candidates: usize,
    /// Source errors: unreadable files and broken entries, one line each.
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub slots: Vec<SlotPlan>,
}

/// The decision for one slot of a target.
#[derive(Debug)]
pub struct SlotPlan {
    pub report: TargetReport,
    /// The files to hold when a certificate was chosen (empty otherwise).
    files: Vec<install::Planned>,
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
pub fn plan(config: &Config, persist: Persist) -> Plan {
    let harvest = source::read_all(config, persist);
    let record = State::load(&config.state_dir);
    let mut plan = Plan {
        candidates: harvest.candidates.len(),
        errors: harvest.errors.iter().map(ToString::to_string).collect(),
        warnings: harvest.warnings.clone(),
        slots: Vec::new(),
    };
    let now = crate::now();
    let mut broken_reported = HashSet::new();
    for (ti, target, si, slot) in slots(config) {
        let selection = select::select(&target.domains, slot.key_type, &harvest.candidates, now);
        for (c, why) in &selection.refused {
            let line = format!("source {}: {why}", c.origin);
            if why.is_error() && broken_reported.insert(line.clone()) {
                plan.errors.push(line);
            }
        }
        let mut slot_plan = plan_slot(target, slot, selection, now);
        slot_plan.report.target = ti;
        slot_plan.report.slot = si;
        defer_if_rolled_back(&mut slot_plan, &record, now);
        plan.slots.push(slot_plan);
    }
    plan
}

/// A certificate that a service refused is not tried again before its
/// backoff has passed.
fn defer_if_rolled_back(slot_plan: &mut SlotPlan, record: &State, now: i64) {
    let r = &mut slot_plan.report;
    let (Some(served), Some(failure)) = (&r.served, record.failures.get(&r.name)) else {
        return;
    };
    if slot_plan.files.is_empty() || served.sha256 != failure.sha256 || now >= failure.retry_at {
        return;
    }
    r.action = Action::Deferred(format!(
        "certificate {} was rolled back ({}); trying it again after {}",
        failure.sha256,
        failure.reason,
        crate::rfc3339(failure.retry_at)
    ));
    slot_plan.files.clear();
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
        let msg = format!(
            "state_dir {}: cannot take the lock: {}",
            config.state_dir.display(),
            source::io_reason(&e)
        );
        tracing::error!("{msg}");
        Box::new(Report {
            errors: vec![msg],
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

fn served(leaf: &Leaf, bundle: &Bundle, origin: String, fallback: bool) -> Served {
    Served {
        sha256: cert::fingerprint(bundle.leaf_der()),
        names: leaf.names.clone(),
        key_type: leaf.key_type,
        not_before: leaf.validity.not_before,
        not_after: leaf.validity.not_after,
        origin,
        fallback,
        leaf: bundle.leaf_der().to_vec(),
    }
}

/// How many certificates for other names an unserved target's error lists.
const UNRELATED_LISTED: usize = 20;

fn plan_slot(target: &Target, slot: &Slot, selection: Selection<'_>, now: i64) -> SlotPlan {
    let mut refused = selection
        .refused
        .iter()
        .map(|(c, why)| (c.origin.to_string(), why.to_string()))
        .collect::<Vec<_>>();
    if selection.chosen.is_none() {
        // Nothing is valid: say what every certificate for other names was.
        for c in selection.unrelated.iter().take(UNRELATED_LISTED) {
            let why = select::Refusal::DoesNotCover {
                missing: target.domains.clone(),
            };
            let names = if c.leaf.names.is_empty() {
                "no DNS names".to_owned()
            } else {
                c.leaf.names.join(", ")
            };
            refused.push((c.origin.to_string(), format!("{why} (it is for {names})")));
        }
        if selection.unrelated.len() > UNRELATED_LISTED {
            refused.push((
                format!("{} more", selection.unrelated.len() - UNRELATED_LISTED),
                "certificates for other names".to_owned(),
            ));
        }
    }
    let mut report = TargetReport {
        name: target.slot_name(slot),
        target: 0,
        slot: 0,
        served: None,
        action: Action::UpToDate,
        refused,
        unrelated: selection.unrelated.len(),
    };

    let chosen = selection.chosen;
    // Never trade a good installed certificate for the self-signed fallback
    // (or for nothing): a source that is broken for a moment must not
    // downgrade a working server.
    if chosen.as_ref().is_none_or(|c| c.candidate.fallback)
        && let Some((leaf, bundle)) = valid_installed(target, slot, now)
    {
        let is_same = chosen
            .as_ref()
            .is_some_and(|c| c.bundle.leaf_der() == bundle.leaf_der());
        if !is_same {
            report.served = Some(served(&leaf, &bundle, "installed".to_owned(), false));
            report.action = Action::KeptInstalled;
            return SlotPlan {
                report,
                files: Vec::new(),
            };
        }
    }

    let Some(chosen) = chosen else {
        report.action = Action::Unserved(format!(
            "no valid certificate for {} ({} candidates refused, {} of them for other names); its files stay as they are",
            domains(target),
            report.refused.len() - report.unrelated.min(UNRELATED_LISTED) + report.unrelated,
            report.unrelated
        ));
        return SlotPlan {
            report,
            files: Vec::new(),
        };
    };
    let c = chosen.candidate;
    report.served = Some(served(
        &c.leaf,
        &chosen.bundle,
        c.origin.to_string(),
        c.fallback,
    ));
    SlotPlan {
        report,
        files: install::planned_files(target, slot, &chosen.bundle),
    }
}

fn domains(target: &Target) -> String {
    target
        .domains
        .iter()
        .map(|d| d.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The installed certificate, if it is from a CA and still fully valid for
/// the slot (names, dates, key type, key match, chain).
fn valid_installed(target: &Target, slot: &Slot, now: i64) -> Option<(Leaf, Bundle)> {
    let bundle = install::installed_bundle(&slot.files).ok()?;
    let leaf = Leaf::parse(bundle.leaf_der()).ok()?;
    let ok = !leaf.self_issued
        && leaf.validity.at(now) == Timeliness::Valid
        && slot.key_type.accepts(leaf.key_type)
        && names::cover_all(&leaf.names, &target.domains).is_ok()
        && bundle.verify().is_ok();
    ok.then_some((leaf, bundle))
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
            }],
            ..Report::default()
        }
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
}
