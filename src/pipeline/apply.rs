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

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::{Action, Plan, ReloadReport, Report, TargetReport, VerifyReport};
use crate::config::{Config, Reload, Target};
use crate::install::{self, Undo};
use crate::source;
use crate::state::{self, State};
use crate::verify;

/// First backoff after a rollback; it grows fourfold per failure, to
/// [`MAX_BACKOFF_SECS`].
const FIRST_BACKOFF_SECS: i64 = 60;
const MAX_BACKOFF_SECS: i64 = 6 * 3600;

/// Writes, reloads, verifies, rolls back where needed, and records the run
/// in state_dir. The caller holds the lock.
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
    // 0. Record the reloads this run will owe before writing anything: a
    // run killed between the writes and the reloads must not leave a
    // service on its old files forever (the next run sees nothing to write).
    let owed_before = st.pending_reloads.clone();
    let about_to_change: BTreeSet<String> = plan
        .slots
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
    for dir in plan
        .slots
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

    // 1. Write every slot's files.
    let mut undo: HashMap<usize, Vec<Undo>> = HashMap::new();
    // Targets that had at least one of their files before this run: only
    // those have something to go back to.
    let mut had_files: BTreeSet<usize> = BTreeSet::new();
    for slot_plan in plan.slots {
        let mut r = slot_plan.report;
        let target = &config.targets[r.target];
        if slot_plan
            .files
            .iter()
            .any(|p| p.path.symlink_metadata().is_ok())
        {
            had_files.insert(r.target);
        }
        if !slot_plan.files.is_empty() {
            r.action = match install::ownership(target)
                .and_then(|o| install::apply(&slot_plan.files, o))
            {
                Ok(o) if o.changed.is_empty() => Action::UpToDate,
                Ok(o) => {
                    undo.entry(r.target).or_default().push(o.undo);
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

    // 2. Reload each distinct action of the changed (or owed) targets once.
    report.reloads = run_reloads(reloads_of_changed(config, &report.targets, &owed_before));

    // 3. Check what each changed target serves; collect the failures.
    let mut failed: Vec<(usize, String)> = Vec::new();
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
                .map(|e| format!("reload `{action}` failed: {e}"))
        });
        let failure = match reload_failure {
            Some(f) => Some(f),
            None => verify_target(config, ti, &report.targets, &mut report.verifications),
        };
        if let Some(why) = failure {
            failed.push((ti, why));
        }
    }

    // 4. Take back what failed, reload again, check the old certificate;
    // a first install has nothing to go back to and keeps its files.
    let (to_roll_back, first_installs): (Vec<_>, Vec<_>) = failed
        .iter()
        .cloned()
        .partition(|(ti, _)| had_files.contains(ti));
    for (ti, why) in &first_installs {
        let outcome = format!(
            "{why}; first install, nothing to go back to: the new files stay and the reload is retried on the next pass"
        );
        tracing::error!("target {}: {outcome}", config.targets[*ti].name);
        for r in report.targets.iter_mut().filter(|r| r.target == *ti) {
            if matches!(r.action, Action::Changed(_) | Action::UpToDate) {
                r.action = Action::Unconfirmed(outcome.clone());
            }
        }
    }
    if !to_roll_back.is_empty() {
        roll_back(config, &mut report, &to_roll_back, &undo);
    }
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
    record(
        &mut st,
        config,
        &report,
        command,
        &failed,
        &owed_before,
        crate::now(),
    );
    if let Err(e) = st.save(&config.state_dir) {
        tracing::warn!(
            "state_dir {}: cannot record this run: {}",
            config.state_dir.display(),
            source::io_reason(&e)
        );
    }
    report
}

/// Checks every verify endpoint of target `ti` for every slot it serves,
/// offering only that slot's key type. `None` when all present what was
/// installed.
fn verify_target(
    config: &Config,
    ti: usize,
    reports: &[TargetReport],
    out: &mut Vec<VerifyReport>,
) -> Option<String> {
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
                    failure.get_or_insert_with(|| format!("verification failed: {e}"));
                }
            }
            out.push(VerifyReport {
                name: r.name.clone(),
                address: endpoint.address.clone(),
                result,
            });
        }
    }
    failure
}

fn roll_back(
    config: &Config,
    report: &mut Report,
    failed: &[(usize, String)],
    undo: &HashMap<usize, Vec<Undo>>,
) {
    for (ti, why) in failed {
        let target = &config.targets[*ti];
        let restored = undo
            .get(ti)
            .map(|u| {
                u.iter()
                    .map(Undo::restore)
                    .collect::<Result<Vec<()>, String>>()
            })
            .unwrap_or(Ok(Vec::new()));
        let outcome = match restored {
            Ok(_) => format!("{why}; rolled back to the previous files"),
            Err(e) => format!("{why}; rolling back failed: {e}"),
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

/// Records in `st` what each slot holds, the backoff of refused
/// certificates, and a summary of the run finished at `now`. Pure: the
/// caller loads and saves the record.
fn record(
    st: &mut State,
    config: &Config,
    report: &Report,
    command: &str,
    failed: &[(usize, String)],
    owed_before: &BTreeSet<String>,
    now: i64,
) {
    // A target's owed reload is paid when every reload it has succeeded;
    // after a rollback its files are those the service already had, so
    // nothing is owed unless it was owed before this run.
    for (ti, target) in config.targets.iter().enumerate() {
        let all_ok = target.reloads.iter().all(|action| {
            report
                .reloads
                .iter()
                .filter(|r| &r.action == action)
                .all(|r| matches!(r.result, Some(Ok(()))))
        });
        let rolled_back = report.rollbacks.contains(&target.name);
        // A first install kept although it failed owes its reload (and
        // so another check) whatever the reload said.
        let unconfirmed = report
            .targets
            .iter()
            .any(|r| r.target == ti && matches!(r.action, Action::Unconfirmed(_)));
        if unconfirmed {
            st.pending_reloads.insert(target.name.clone());
        } else if all_ok || (rolled_back && !owed_before.contains(&target.name)) {
            st.pending_reloads.remove(&target.name);
        }
    }
    st.pending_reloads
        .retain(|name| config.targets.iter().any(|t| &t.name == name));
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
                let why = failed
                    .iter()
                    .find(|(ti, _)| *ti == t.target)
                    .map(|(_, w)| w.clone())
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
        command: command.to_owned(),
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
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::cert::KeyType;
    use crate::pipeline::{Action, Served};

    /// A fixed "now" (2026-01-01T00:00:00Z): the fake clock.
    const NOW: i64 = 1_767_225_600;

    fn config() -> Config {
        Config::parse(
            Path::new("/etc/mxkeys/test.toml"),
            "hostname = \"mail.example.com\"\n[[target]]\nname = \"postfix\"\ncombined = \"/etc/postfix/chain.pem\"\nreload = [\"postfix\", \"reload\"]\n",
        )
        .unwrap()
    }

    /// A run in which target `postfix` ended with `action` serving
    /// certificate `sha256`, its reload succeeding or not.
    fn run(config: &Config, action: Action, sha256: &str, reload_ok: bool) -> Report {
        let rolled_back = matches!(action, Action::RolledBack(_));
        Report {
            targets: vec![TargetReport {
                name: "postfix".to_owned(),
                target: 0,
                slot: 0,
                served: Some(Served {
                    sha256: sha256.to_owned(),
                    names: vec!["mail.example.com".to_owned()],
                    key_type: KeyType::Ed25519,
                    not_before: NOW - 86_400,
                    not_after: NOW + 90 * 86_400,
                    origin: "files:/etc/ssl/mail.pem".to_owned(),
                    fallback: false,
                    leaf: Vec::new(),
                }),
                action,
                refused: Vec::new(),
                unrelated: 0,
            }],
            reloads: vec![ReloadReport {
                action: config.targets[0].reloads[0].clone(),
                result: Some(if reload_ok {
                    Ok(())
                } else {
                    Err("exit status 1".to_owned())
                }),
            }],
            rollbacks: if rolled_back {
                vec!["postfix".to_owned()]
            } else {
                Vec::new()
            },
            ..Report::default()
        }
    }

    fn changed() -> Action {
        Action::Changed(vec![PathBuf::from("/etc/postfix/chain.pem")])
    }

    #[test]
    fn the_record_of_a_run_follows_what_each_target_ended_with() {
        let config = config();
        let refused = vec![(0, "reload failed".to_owned())];
        let owed: BTreeSet<String> = ["postfix".to_owned()].into();
        let none = BTreeSet::new();
        // (case, state before, action, reload ok, owed before, rolled back for,
        //  then: installed sha, failure (attempts, retry_at), reload owed)
        type Case<'a> = (
            &'a str,
            State,
            Action,
            bool,
            &'a BTreeSet<String>,
            &'a [(usize, String)],
            Option<&'a str>,
            Option<(u32, i64)>,
            bool,
        );
        let failed_once = State {
            failures: [(
                "postfix".to_owned(),
                state::Failure {
                    sha256: "new".to_owned(),
                    attempts: 1,
                    retry_at: NOW - 1,
                    reason: "reload failed".to_owned(),
                },
            )]
            .into(),
            pending_reloads: owed.clone(),
            ..State::default()
        };
        let cases: Vec<Case<'_>> = vec![
            (
                "installed and reloaded",
                failed_once.clone(),
                changed(),
                true,
                &owed,
                &[],
                Some("new"),
                None,
                false,
            ),
            (
                "up to date, its owed reload paid",
                State {
                    pending_reloads: owed.clone(),
                    ..State::default()
                },
                Action::UpToDate,
                true,
                &owed,
                &[],
                None,
                None,
                false,
            ),
            (
                "owed reload failing again",
                State {
                    pending_reloads: owed.clone(),
                    ..State::default()
                },
                Action::UpToDate,
                false,
                &owed,
                &[],
                None,
                None,
                true,
            ),
            (
                "rolled back a first time: one minute",
                State::default(),
                Action::RolledBack("reload failed".to_owned()),
                false,
                &none,
                &refused,
                None,
                Some((1, NOW + 60)),
                false,
            ),
            (
                "rolled back again: four times longer",
                failed_once.clone(),
                Action::RolledBack("reload failed".to_owned()),
                false,
                &none,
                &refused,
                None,
                Some((2, NOW + 240)),
                false,
            ),
            (
                "a first install not confirmed keeps its reload owed",
                State::default(),
                Action::Unconfirmed("reload failed".to_owned()),
                false,
                &none,
                &[],
                Some("new"),
                None,
                true,
            ),
        ];
        for (case, before, action, reload_ok, owed_before, failed, installed, failure, owes) in
            cases
        {
            let report = run(&config, action, "new", reload_ok);
            let mut st = before;
            record(&mut st, &config, &report, "sync", failed, owed_before, NOW);
            assert_eq!(
                st.targets.get("postfix").map(|i| i.sha256.as_str()),
                installed,
                "{case}"
            );
            if let Some(i) = st.targets.get("postfix") {
                assert_eq!(
                    (i.installed_at, i.source.as_str()),
                    (NOW, "files:/etc/ssl/mail.pem"),
                    "{case}"
                );
            }
            assert_eq!(
                st.failures.get("postfix").map(|f| (f.attempts, f.retry_at)),
                failure,
                "{case}"
            );
            assert_eq!(st.pending_reloads.contains("postfix"), owes, "{case}");
            let last = st.last_run.as_ref().unwrap();
            assert_eq!(
                (last.command.as_str(), last.finished_at),
                ("sync", NOW),
                "{case}"
            );
            assert_eq!(last.ok, report.ok(), "{case}");
        }
    }

    #[test]
    fn reloads_owed_by_targets_no_longer_configured_are_forgotten() {
        let config = config();
        let mut st = State {
            pending_reloads: ["gone".to_owned()].into(),
            ..State::default()
        };
        let report = run(&config, Action::UpToDate, "old", true);
        record(&mut st, &config, &report, "run", &[], &BTreeSet::new(), NOW);
        assert!(st.pending_reloads.is_empty());
        assert_eq!(
            st.last_run.map(|r| (r.ok, r.changed_targets)),
            Some((true, Vec::new()))
        );
    }
}
