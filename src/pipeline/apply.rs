//! Applying a plan: write every slot's files, run each distinct reload
//! once, check that each service presents what was installed, and take back
//! what a service refused.
//!
//! The order matters. All files of all targets are written before any
//! reload, so a service reloads once and sees a complete set. A target
//! whose reload fails, or whose service does not present the new
//! certificate within `verify_timeout`, gets its previous files back, is
//! reloaded again and checked again; the certificate it refused is retried
//! only after a growing backoff (recorded in state_dir). A service is never
//! left with a pair mxkeys did not check, nor without the files it had.
//! A first install (none of the target's files existed) is never rolled
//! back to nothing: its files stay, the run fails, and the reload stays
//! owed so the next pass runs it again.
//! What the DANE gate decided for each DANE target is recorded in the
//! ledger's `gate` (`state_dir/dane.json`, for `status`), when it changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{
    Action, Gate, Plan, ReloadReport, Report, RolledBack, ServiceFailure, SlotPlan, TargetReport,
    VerifyReport,
};
use crate::config::{Config, Reload, Target};
use crate::dane::ledger::{GateState, Ledger};
use crate::install::{self, Undo};
use crate::source;
use crate::state::{self, State};
use crate::verify;

/// First backoff after a rollback; it grows fourfold per failure, to
/// [`MAX_BACKOFF_SECS`].
const FIRST_BACKOFF_SECS: i64 = 60;
const MAX_BACKOFF_SECS: i64 = 6 * 3600;

/// Writes, reloads, verifies, rolls back where needed, and records the run
/// in state_dir. The caller holds the lock. Each phase is a function below,
/// in this order.
pub fn apply(config: &Config, plan: Plan, command: &str) -> Report {
    let mut report = Report {
        candidates: plan.candidates,
        errors: plan.errors,
        ..Report::default()
    };
    // The record is loaded once, here: after the caller took the lock (the
    // plan may have been made before it, as the daemon's is), so no other
    // run changes it until this one saves it.
    let mut st = State::load(&config.state_dir);
    let owed_before = record_intent(config, &mut st, &plan.slots);
    let written = write(config, plan.slots, &mut report);
    report.reloads = run_reloads(reloads_of_changed(config, &report.targets, &owed_before));
    let failed = verify_changed(config, &written.undo, &mut report);
    settle_failures(config, &failed, &written, &mut report);
    log_installed(&report);
    record(config, st, &report, command, &failed, &owed_before);
    record_gates(config, &report, crate::now());
    report
}

/// Phase 0: records the reloads this run will owe before writing
/// anything (a run killed between the writes and the reloads must not
/// leave a service on its old files forever: the next run sees nothing to
/// write), and clears stale temporary files. Returns the reloads owed by
/// an earlier, interrupted run.
fn record_intent(config: &Config, st: &mut State, slots: &[SlotPlan]) -> BTreeSet<String> {
    let owed_before = st.pending_reloads.clone();
    let about_to_change: BTreeSet<String> = slots
        .iter()
        .filter(|s| s.files.iter().any(|p| install::differs(&p.path, &p.bytes)))
        .map(|s| config.targets[s.report.target].name.clone())
        .collect();
    if !about_to_change.is_subset(&owed_before) {
        st.pending_reloads.extend(about_to_change);
        if let Err(e) = st.save(&config.state_dir) {
            tracing::warn!("state_dir: cannot record the reloads owed: {e}");
        }
    }
    for dir in slots
        .iter()
        .flat_map(|s| s.files.iter().filter_map(|p| p.path.parent()))
        .collect::<BTreeSet<_>>()
    {
        install::clean_stale_temps(dir);
    }
    for owed in &owed_before {
        tracing::warn!(
            "target {owed}: a previous run was interrupted before its reload; reloading now"
        );
    }
    owed_before
}

/// What writing left behind for the later phases.
#[derive(Default)]
struct Written {
    /// How to restore each target's previous files.
    undo: HashMap<usize, Vec<Undo>>,
    /// Targets that had at least one of their files before this run: only
    /// those have something to go back to.
    had_files: BTreeSet<usize>,
}

/// Phase 1: writes every slot's files, all before any reload.
fn write(config: &Config, slots: Vec<SlotPlan>, report: &mut Report) -> Written {
    let mut written = Written::default();
    for slot_plan in slots {
        let mut r = slot_plan.report;
        let target = &config.targets[r.target];
        if slot_plan
            .files
            .iter()
            .any(|p| p.path.symlink_metadata().is_ok())
        {
            written.had_files.insert(r.target);
        }
        if !slot_plan.files.is_empty() {
            r.action = match install::ownership(target)
                .map_err(install::InstallError::from)
                .and_then(|o| install::apply(&slot_plan.files, o))
            {
                Ok(o) if o.changed.is_empty() => Action::UpToDate,
                Ok(o) => {
                    written.undo.entry(r.target).or_default().push(o.undo);
                    Action::Changed(o.changed)
                }
                Err(e) => {
                    tracing::error!("target {}: {e}; its previous files were restored", r.name);
                    Action::WriteFailed(e)
                }
            };
        }
        report.targets.push(r);
    }
    written
}

/// Phase 3 (after the reloads): checks what each changed target serves.
/// Returns the targets that failed, a failed reload or a failed check,
/// with why.
fn verify_changed(
    config: &Config,
    undo: &HashMap<usize, Vec<Undo>>,
    report: &mut Report,
) -> Vec<(usize, ServiceFailure)> {
    let mut failed: Vec<(usize, ServiceFailure)> = Vec::new();
    for (ti, target) in config.targets.iter().enumerate() {
        if !undo.contains_key(&ti) {
            continue;
        }
        let reload_failure = target.reloads.iter().find_map(|action| {
            report
                .reloads
                .iter()
                .find(|r| &r.action == action)
                .and_then(|r| r.result.as_ref()?.as_ref().err())
                .map(|e| ServiceFailure::Reload {
                    action: action.clone(),
                    error: e.to_string(),
                })
        });
        let failure = match reload_failure {
            Some(f) => Some(f),
            None => verify_target(config, ti, &report.targets, &mut report.verifications),
        };
        if let Some(why) = failure {
            failed.push((ti, why));
        }
    }
    failed
}

/// Phase 4: takes back what failed, reloads again and checks the old
/// certificate; a first install has nothing to go back to and keeps its
/// files.
fn settle_failures(
    config: &Config,
    failed: &[(usize, ServiceFailure)],
    written: &Written,
    report: &mut Report,
) {
    let (to_roll_back, first_installs): (Vec<_>, Vec<_>) = failed
        .iter()
        .cloned()
        .partition(|(ti, _)| written.had_files.contains(ti));
    for (ti, why) in &first_installs {
        let outcome = Action::Unconfirmed(why.clone());
        if let Some(line) = outcome.why() {
            tracing::error!("target {}: {line}", config.targets[*ti].name);
        }
        for r in report.targets.iter_mut().filter(|r| r.target == *ti) {
            if matches!(r.action, Action::Changed(_) | Action::UpToDate) {
                r.action = Action::Unconfirmed(why.clone());
            }
        }
    }
    if !to_roll_back.is_empty() {
        roll_back(config, report, &to_roll_back, &written.undo);
    }
}

fn log_installed(report: &Report) {
    for t in &report.targets {
        if let (Action::Changed(files), Some(s)) = (&t.action, &t.served) {
            tracing::info!(
                "target {}: installed {} from {} ({} files changed)",
                t.name,
                s.sha256,
                s.origin,
                files.len()
            );
        }
    }
}

/// Checks every verify endpoint of target `ti` for every slot it serves,
/// offering only that slot's key type. `None` when all present what was
/// installed.
fn verify_target(
    config: &Config,
    ti: usize,
    reports: &[TargetReport],
    out: &mut Vec<VerifyReport>,
) -> Option<ServiceFailure> {
    let target = &config.targets[ti];
    let mut failure = None;
    for r in reports.iter().filter(|r| r.target == ti) {
        let Some(served) = &r.served else { continue };
        for endpoint in &target.verify {
            // One failure decides the rollback: do not keep a refused
            // certificate live while the other endpoints time out too.
            if failure.is_some() {
                break;
            }
            let sni = endpoint
                .sni
                .clone()
                .unwrap_or_else(|| target.domains[0].as_str().to_owned());
            let result = verify::wait_for(
                endpoint,
                &sni,
                served.key_type,
                &served.leaf,
                target.verify_timeout,
            );
            match &result {
                Ok(()) => tracing::info!(
                    "target {}: {} presents {}",
                    r.name,
                    endpoint.address,
                    served.sha256
                ),
                Err(e) => {
                    tracing::error!("target {}: verification failed: {e}", r.name);
                    failure.get_or_insert_with(|| ServiceFailure::Verify(e.to_string()));
                }
            }
            out.push(VerifyReport { target: ti, result });
        }
    }
    failure
}

fn roll_back(
    config: &Config,
    report: &mut Report,
    failed: &[(usize, ServiceFailure)],
    undo: &HashMap<usize, Vec<Undo>>,
) {
    for (ti, why) in failed {
        let target = &config.targets[*ti];
        let restored = undo
            .get(ti)
            .map(|u| {
                u.iter()
                    .map(Undo::restore)
                    .collect::<Result<Vec<()>, install::RestoreError>>()
            })
            .unwrap_or(Ok(Vec::new()));
        let outcome = RolledBack {
            cause: why.clone(),
            restore_error: restored.err().map(Arc::new),
        };
        tracing::error!("target {}: {outcome}", target.name);
        report.rollbacks.push(target.name.clone());
        for r in report.targets.iter_mut().filter(|r| r.target == *ti) {
            if matches!(r.action, Action::Changed(_) | Action::UpToDate) {
                r.action = Action::RolledBack(outcome.clone());
            }
        }
    }
    // Reload the restored files once per distinct action, then check that
    // the previous certificate is back.
    let mut again: Vec<(Reload, Duration)> = Vec::new();
    for (ti, _) in failed {
        let target = &config.targets[*ti];
        add_reloads(&mut again, target);
    }
    let results = run_reloads(again);
    report.reloads.extend(results);
    for (ti, _) in failed {
        let target = &config.targets[*ti];
        for slot in &target.slots {
            let Ok(certs) = install::installed_certs(&slot.files) else {
                continue;
            };
            let Some(leaf) = certs.first() else { continue };
            let Ok(parsed) = crate::cert::Leaf::parse(leaf.as_ref()) else {
                continue;
            };
            for endpoint in &target.verify {
                let sni = endpoint
                    .sni
                    .clone()
                    .unwrap_or_else(|| target.domains[0].as_str().to_owned());
                match verify::wait_for(
                    endpoint,
                    &sni,
                    parsed.key_type,
                    leaf.as_ref(),
                    target.verify_timeout,
                ) {
                    Ok(()) => tracing::info!(
                        "target {}: {} presents the previous certificate again",
                        target.slot_name(slot),
                        endpoint.address
                    ),
                    Err(e) => tracing::error!(
                        "target {}: after the rollback: {e}",
                        target.slot_name(slot)
                    ),
                }
            }
        }
    }
}

fn add_reloads(out: &mut Vec<(Reload, Duration)>, target: &Target) {
    for action in &target.reloads {
        match out.iter_mut().find(|(a, _)| a == action) {
            Some((_, t)) => *t = (*t).max(target.reload_timeout),
            None => out.push((action.clone(), target.reload_timeout)),
        }
    }
}

/// Distinct reloads of targets with a changed slot (or owed by an
/// interrupted run), in target order, each with the longest timeout any of
/// its targets allows.
pub(super) fn reloads_of_changed(
    config: &Config,
    reports: &[TargetReport],
    owed: &BTreeSet<String>,
) -> Vec<(Reload, Duration)> {
    let mut out = Vec::new();
    for (ti, target) in config.targets.iter().enumerate() {
        let changed = reports
            .iter()
            .any(|r| r.target == ti && matches!(r.action, Action::Changed(_)));
        if changed || owed.contains(&target.name) {
            add_reloads(&mut out, target);
        }
    }
    out
}

fn run_reloads(reloads: Vec<(Reload, Duration)>) -> Vec<ReloadReport> {
    reloads
        .into_iter()
        .map(|(action, timeout)| {
            let result = crate::reload::run(&action, timeout);
            match &result {
                Ok(()) => tracing::info!("reload `{action}`: done"),
                Err(e) => tracing::error!("reload `{action}`: {e}"),
            }
            ReloadReport {
                action,
                result: Some(result),
            }
        })
        .collect()
}

/// Records the run in state_dir: applies [`bookkeeping`] to the state
/// loaded at the start of the run, saves it.
fn record(
    config: &Config,
    st: State,
    report: &Report,
    command: &str,
    failed: &[(usize, ServiceFailure)],
    owed_before: &BTreeSet<String>,
) {
    let targets: Vec<TargetRun<'_>> = config
        .targets
        .iter()
        .enumerate()
        .map(|(ti, target)| {
            let ran: Vec<&ReloadReport> = report
                .reloads
                .iter()
                .filter(|r| target.reloads.contains(&r.action) && r.result.is_some())
                .collect();
            let checks: Vec<&VerifyReport> = report
                .verifications
                .iter()
                .filter(|v| v.target == ti)
                .collect();
            TargetRun {
                name: &target.name,
                reloads_ok: target.reloads.iter().all(|action| {
                    report
                        .reloads
                        .iter()
                        .filter(|r| &r.action == action)
                        .all(|r| matches!(r.result, Some(Ok(()))))
                }),
                reload: (!ran.is_empty()).then(|| {
                    ran.iter()
                        .find_map(|r| match &r.result {
                            Some(Err(e)) => Some(format!("reload `{}`: {e}", r.action)),
                            _ => None,
                        })
                        .map_or(Ok(()), Err)
                }),
                verification: (!checks.is_empty()).then(|| {
                    checks
                        .iter()
                        .find_map(|v| v.result.as_ref().err().map(ToString::to_string))
                        .map_or(Ok(()), Err)
                }),
            }
        })
        .collect();
    let run = RunFacts {
        targets: &targets,
        report,
        command,
        failed,
        owed_before,
    };
    let st = bookkeeping(st, &run, crate::now());
    if let Err(e) = st.save(&config.state_dir) {
        tracing::warn!(
            "state_dir {}: cannot record this run: {}",
            config.state_dir.display(),
            source::io_reason(&e)
        );
    }
}

/// Records in the ledger what the DANE gate decided for every DANE target
/// ([`gate_state`]), saving it only when a decision changed (the DANE pass
/// writes the same file; the caller holds the lock).
fn record_gates(config: &Config, report: &Report, now: i64) {
    let decided: Vec<(&str, GateState)> = config
        .targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.dane.is_some())
        .filter_map(|(ti, t)| {
            let slots = report.targets.iter().filter(|r| r.target == ti);
            Some((t.name.as_str(), gate_state(slots, now)?))
        })
        .collect();
    if decided.is_empty() {
        return;
    }
    let record = config.state_dir.dane_record::<Ledger>();
    let mut ledger = match record.load() {
        Ok(ledger) => ledger.unwrap_or_default(),
        Err(e) => {
            tracing::warn!("{e}; the DANE gate's decision is not recorded");
            return;
        }
    };
    let mut changed = false;
    for (name, state) in decided {
        let gate = &mut ledger.targets.entry(name.to_owned()).or_default().gate;
        let same = gate.as_ref().is_some_and(|old| {
            (&old.state, &old.sha256, old.until, &old.reason)
                == (&state.state, &state.sha256, state.until, &state.reason)
        });
        if !same {
            *gate = Some(state);
            changed = true;
        }
    }
    if changed && let Err(e) = record.save(&ledger) {
        tracing::warn!("{e}; the DANE gate's decision is not recorded");
    }
}

/// What the gate decided for a target, from its slots' reports (pure):
/// `forced` if a slot was installed through a shut gate, else `waiting`
/// if one is held, else `open`. `None` when no slot went through a gate.
fn gate_state<'r>(
    slots: impl Iterator<Item = &'r TargetReport> + Clone,
    now: i64,
) -> Option<GateState> {
    let state = |state: &str, sha256: Option<&str>, until, reason: Option<String>| GateState {
        state: state.to_owned(),
        sha256: sha256.map(str::to_owned),
        until,
        reason,
        at: now,
    };
    if let Some(f) = slots.clone().find_map(|r| match &r.gate {
        Some(Gate::Forced(f)) => Some(f),
        _ => None,
    }) {
        return Some(state("forced", Some(&f.sha256), None, Some(f.to_string())));
    }
    if let Some(h) = slots.clone().find_map(TargetReport::held) {
        return Some(state(
            "waiting",
            Some(&h.sha256),
            h.until,
            Some(h.to_string()),
        ));
    }
    let mut slots = slots;
    slots
        .any(|r| r.gate.is_some())
        .then(|| state("open", None, None, None))
}

/// One configured target, as the bookkeeping sees it.
struct TargetRun<'a> {
    name: &'a str,
    /// Every reload of the target that ran this time succeeded.
    reloads_ok: bool,
    /// Its reloads that ran this time: `Err` with the first failure's
    /// line; `None` when none ran.
    reload: Option<Result<(), String>>,
    /// Its checks that ran this time, likewise.
    verification: Option<Result<(), String>>,
}

/// What the bookkeeping records: the run's outcome.
struct RunFacts<'a> {
    /// Every configured target, in configuration order.
    targets: &'a [TargetRun<'a>],
    report: &'a Report,
    command: &'a str,
    /// Targets whose reload or check failed (by position), with why.
    failed: &'a [(usize, ServiceFailure)],
    /// Reloads owed by an earlier, interrupted run.
    owed_before: &'a BTreeSet<String>,
}

/// The state after a run (pure): what each slot holds, the backoff of
/// refused certificates, the reloads still owed, and a summary of the run.
fn bookkeeping(mut st: State, run: &RunFacts<'_>, now: i64) -> State {
    let report = run.report;
    // A target's owed reload is paid when every reload it has succeeded;
    // after a rollback its files are those the service already had, so
    // nothing is owed unless it was owed before this run.
    for (ti, target) in run.targets.iter().enumerate() {
        let rolled_back = report.rollbacks.iter().any(|r| r == target.name);
        // A first install kept although it failed owes its reload (and
        // so another check) whatever the reload said.
        let unconfirmed = report
            .targets
            .iter()
            .any(|r| r.target == ti && matches!(r.action, Action::Unconfirmed(_)));
        if unconfirmed {
            st.pending_reloads.insert(target.name.to_owned());
        } else if target.reloads_ok || (rolled_back && !run.owed_before.contains(target.name)) {
            st.pending_reloads.remove(target.name);
        }
    }
    st.pending_reloads
        .retain(|name| run.targets.iter().any(|t| t.name == name));
    // The last reload and check of each target, kept until the next ones.
    let event = |result: &Result<(), String>| state::ServiceEvent {
        at: now,
        error: result.as_ref().err().cloned(),
    };
    for target in run.targets {
        if target.reload.is_none() && target.verification.is_none() {
            continue;
        }
        let service = st.services.entry(target.name.to_owned()).or_default();
        if let Some(r) = &target.reload {
            service.reload = Some(event(r));
        }
        if let Some(v) = &target.verification {
            service.verification = Some(event(v));
        }
    }
    st.services
        .retain(|name, _| run.targets.iter().any(|t| t.name == name));
    for t in &report.targets {
        let Some(s) = &t.served else { continue };
        match &t.action {
            // An unconfirmed first install is what the files hold.
            Action::Changed(_) | Action::Unconfirmed(_) => {
                st.failures.remove(&t.name);
                st.targets.insert(
                    t.name.clone(),
                    state::Installed {
                        sha256: s.sha256.clone(),
                        source: s.origin.clone(),
                        installed_at: now,
                    },
                );
            }
            Action::RolledBack(_) => {
                let why = run
                    .failed
                    .iter()
                    .find(|(ti, _)| *ti == t.target)
                    .map(|(_, w)| w.to_string())
                    .unwrap_or_default();
                let attempts = st
                    .failures
                    .get(&t.name)
                    .filter(|f| f.sha256 == s.sha256)
                    .map_or(1, |f| f.attempts + 1);
                let backoff =
                    (FIRST_BACKOFF_SECS << (2 * (attempts.min(8) - 1))).min(MAX_BACKOFF_SECS);
                st.failures.insert(
                    t.name.clone(),
                    state::Failure {
                        sha256: s.sha256.clone(),
                        attempts,
                        retry_at: now + backoff,
                        reason: why,
                    },
                );
            }
            _ => {}
        }
    }
    st.last_run = Some(state::Run {
        command: run.command.to_owned(),
        finished_at: now,
        ok: report.ok(),
        changed_targets: report
            .targets
            .iter()
            .filter(|t| matches!(t.action, Action::Changed(_)))
            .map(|t| t.name.clone())
            .collect(),
        errors: report.problems(),
    });
    st
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::cert::KeyType;
    use crate::pipeline::Served;

    /// A fixed "now" (2026-01-01T00:00:00Z): the fake clock.
    const NOW: i64 = 1_767_225_600;

    fn slot(target: usize, name: &str, sha256: &str, action: Action) -> TargetReport {
        TargetReport {
            name: name.to_owned(),
            target,
            slot: 0,
            served: Some(Served {
                sha256: sha256.to_owned(),
                names: vec!["mx.example".to_owned()],
                key_type: KeyType::Ed25519,
                not_before: NOW - 86_400,
                not_after: NOW + 80 * 86_400,
                origin: "src: entry".to_owned(),
                fallback: false,
                leaf: Vec::new(),
            }),
            action,
            refused: Vec::new(),
            unrelated: 0,
            gate: None,
        }
    }

    fn verify_failed() -> ServiceFailure {
        ServiceFailure::Verify("boom".to_owned())
    }

    fn rolled_back() -> Action {
        Action::RolledBack(RolledBack {
            cause: verify_failed(),
            restore_error: None,
        })
    }

    fn run_with<'a>(
        targets: &'a [TargetRun<'a>],
        report: &'a Report,
        failed: &'a [(usize, ServiceFailure)],
        owed_before: &'a BTreeSet<String>,
    ) -> RunFacts<'a> {
        RunFacts {
            targets,
            report,
            command: "sync",
            failed,
            owed_before,
        }
    }

    #[test]
    fn a_targets_last_reload_and_check_are_kept_until_the_next_ones_ran() {
        let targets_with = |reload, verification| {
            [
                TargetRun {
                    name: "mail",
                    reloads_ok: true,
                    reload,
                    verification,
                },
                TargetRun {
                    name: "web",
                    reloads_ok: true,
                    reload: None,
                    verification: None,
                },
            ]
        };
        let report = Report::default();
        let owed = BTreeSet::new();
        let mut before = State::default();
        before
            .services
            .insert("gone".to_owned(), state::Service::default());
        // A reload and a failed check ran for `mail`; nothing for `web`.
        let targets = targets_with(Some(Ok(())), Some(Err("mx:25 presents bb".to_owned())));
        let after = bookkeeping(before, &run_with(&targets, &report, &[], &owed), NOW);
        let mail = &after.services["mail"];
        assert_eq!(
            mail.reload,
            Some(state::ServiceEvent {
                at: NOW,
                error: None
            })
        );
        assert_eq!(
            mail.verification,
            Some(state::ServiceEvent {
                at: NOW,
                error: Some("mx:25 presents bb".to_owned())
            })
        );
        assert!(!after.services.contains_key("web"), "nothing ran for web");
        assert!(
            !after.services.contains_key("gone"),
            "a target no longer configured is forgotten"
        );
        // A later run that only reloads keeps the last check.
        let targets = targets_with(Some(Err("reload `x`: exit 1".to_owned())), None);
        let later = bookkeeping(after, &run_with(&targets, &report, &[], &owed), NOW + 60);
        let mail = &later.services["mail"];
        assert_eq!(
            mail.reload.as_ref().map(|e| (e.at, e.error.as_deref())),
            Some((NOW + 60, Some("reload `x`: exit 1")))
        );
        assert_eq!(mail.verification.as_ref().map(|e| e.at), Some(NOW));
    }

    #[test]
    fn an_installed_certificate_is_recorded_and_its_reload_paid() {
        let targets = [TargetRun {
            name: "mail",
            reloads_ok: true,
            reload: None,
            verification: None,
        }];
        let report = Report {
            targets: vec![slot(
                0,
                "mail",
                "aa",
                Action::Changed(vec![PathBuf::from("/x")]),
            )],
            ..Report::default()
        };
        let mut before = State::default();
        before.pending_reloads.insert("mail".to_owned());
        before.pending_reloads.insert("gone".to_owned());
        before.failures.insert(
            "mail".to_owned(),
            state::Failure {
                sha256: "aa".to_owned(),
                attempts: 2,
                retry_at: NOW - 1,
                reason: "r".to_owned(),
            },
        );
        let owed = BTreeSet::new();
        let after = bookkeeping(before, &run_with(&targets, &report, &[], &owed), NOW);
        assert!(
            after.pending_reloads.is_empty(),
            "{:?}",
            after.pending_reloads
        );
        assert!(after.failures.is_empty());
        assert_eq!(
            after.targets["mail"],
            state::Installed {
                sha256: "aa".to_owned(),
                source: "src: entry".to_owned(),
                installed_at: NOW,
            }
        );
        let last = after.last_run.unwrap();
        assert_eq!(
            (
                last.command.as_str(),
                last.ok,
                last.changed_targets,
                last.finished_at
            ),
            ("sync", true, vec!["mail".to_owned()], NOW)
        );
    }

    #[test]
    fn a_rolled_back_certificate_backs_off_fourfold_per_failure_up_to_six_hours() {
        let targets = [TargetRun {
            name: "mail",
            reloads_ok: true,
            reload: None,
            verification: None,
        }];
        let report = Report {
            targets: vec![slot(0, "mail", "bb", rolled_back())],
            rollbacks: vec!["mail".to_owned()],
            ..Report::default()
        };
        let failed = [(0, verify_failed())];
        let owed = BTreeSet::new();
        let mut st = State::default();
        let mut waits = Vec::new();
        for _ in 0..7 {
            st = bookkeeping(st, &run_with(&targets, &report, &failed, &owed), NOW);
            let f = &st.failures["mail"];
            assert_eq!(f.reason, "verification failed: boom");
            waits.push((f.attempts, f.retry_at - NOW));
        }
        assert_eq!(
            waits,
            [
                (1, 60),
                (2, 240),
                (3, 960),
                (4, 3840),
                (5, 15360),
                (6, 21600),
                (7, 21600)
            ]
        );
        assert!(
            !st.targets.contains_key("mail"),
            "a rollback installs nothing"
        );
        assert!(!st.last_run.unwrap().ok);
    }

    #[test]
    fn a_rollback_pays_no_reload_owed_by_an_earlier_run() {
        let targets = [TargetRun {
            name: "mail",
            reloads_ok: false,
            reload: None,
            verification: None,
        }];
        let report = Report {
            targets: vec![slot(0, "mail", "bb", rolled_back())],
            rollbacks: vec!["mail".to_owned()],
            ..Report::default()
        };
        let failed = [(0, verify_failed())];
        let mut before = State::default();
        before.pending_reloads.insert("mail".to_owned());
        // Owed by this run only: the rollback restored what the service had.
        let fresh = bookkeeping(
            before.clone(),
            &run_with(&targets, &report, &failed, &BTreeSet::new()),
            NOW,
        );
        assert!(fresh.pending_reloads.is_empty());
        // Owed before this run: still owed.
        let owed = BTreeSet::from(["mail".to_owned()]);
        let old = bookkeeping(before, &run_with(&targets, &report, &failed, &owed), NOW);
        assert!(old.pending_reloads.contains("mail"));
    }

    #[test]
    fn an_unconfirmed_first_install_is_recorded_and_still_owes_its_reload() {
        let targets = [TargetRun {
            name: "mail",
            reloads_ok: true,
            reload: None,
            verification: None,
        }];
        let report = Report {
            targets: vec![slot(0, "mail", "cc", Action::Unconfirmed(verify_failed()))],
            ..Report::default()
        };
        let owed = BTreeSet::new();
        let after = bookkeeping(
            State::default(),
            &run_with(&targets, &report, &[], &owed),
            NOW,
        );
        assert!(after.pending_reloads.contains("mail"));
        assert_eq!(after.targets["mail"].sha256, "cc");
        assert_eq!(
            after.last_run.unwrap().errors,
            [
                "target mail: verification failed: boom; first install, nothing to go back to: \
              the new files stay and the reload is retried on the next pass"
            ]
        );
    }

    #[test]
    fn the_ledger_records_forced_over_waiting_over_open_for_a_dual_target() {
        use crate::dane::gate::{ForceReason, WaitReason};
        use crate::dane::tlsa::Spec;
        use crate::pipeline::{DaneForced, DaneHold};
        let waiting = WaitReason::NotSeen { spec: Spec::EE };
        let with_gate = |action, gate| TargetReport {
            gate: Some(gate),
            ..slot(0, "mail/rsa", "aa", action)
        };
        let held = || {
            with_gate(
                Action::Held(DaneHold::sample("bb", Some(NOW + 60), waiting)),
                Gate::Held,
            )
        };
        let open = || with_gate(Action::UpToDate, Gate::Open);
        let forced = || {
            with_gate(
                Action::Changed(Vec::new()),
                Gate::Forced(DaneForced {
                    sha256: "cc".to_owned(),
                    record: None,
                    reason: ForceReason {
                        waiting,
                        expires: NOW,
                    },
                }),
            )
        };
        let state = |slots: Vec<TargetReport>| {
            gate_state(slots.iter(), NOW).map(|g| (g.state, g.sha256, g.until))
        };
        assert_eq!(
            state(vec![open(), open()]),
            Some(("open".to_owned(), None, None))
        );
        assert_eq!(
            state(vec![open(), held()]),
            Some(("waiting".to_owned(), Some("bb".to_owned()), Some(NOW + 60)))
        );
        assert_eq!(
            state(vec![held(), forced()]),
            Some(("forced".to_owned(), Some("cc".to_owned()), None))
        );
        assert_eq!(state(vec![slot(0, "plain", "aa", Action::UpToDate)]), None);
        let reason = gate_state([held()].iter(), NOW).unwrap().reason.unwrap();
        assert!(
            reason.contains("DANE gate holds certificate bb"),
            "{reason}"
        );
    }
}
