//! The reconcile pipeline every command drives: sources produce candidates,
//! selection makes a plan per target, install applies it, reload closes it.
//!
//! `sync` runs it with [`Mode::Apply`]; `check` with [`Mode::Check`], which
//! reads and selects the same way but writes nothing and runs nothing.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::cert::{self, Bundle, KeyType, Leaf, Timeliness};
use crate::config::{Config, Target};
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
    pub not_after: i64,
    /// The source entry it came from, or "installed" when kept as is.
    pub origin: String,
    pub fallback: bool,
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
}

#[derive(Debug)]
pub struct TargetReport {
    pub name: String,
    pub served: Option<Served>,
    pub action: Action,
    /// Refused candidates: origin and reason.
    pub refused: Vec<(String, String)>,
    /// How many candidates covered none of its names.
    pub unrelated: usize,
    pub reload: Option<Vec<String>>,
}

impl TargetReport {
    pub fn ok(&self) -> bool {
        matches!(
            self.action,
            Action::UpToDate | Action::Changed(_) | Action::KeptInstalled
        )
    }
}

#[derive(Debug)]
pub struct ReloadReport {
    pub argv: Vec<String>,
    /// `None` in check mode (it would run).
    pub result: Option<Result<(), String>>,
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
}

impl Report {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
            && self.targets.iter().all(TargetReport::ok)
            && self
                .reloads
                .iter()
                .all(|r| !matches!(r.result, Some(Err(_))))
    }
}

/// Runs one reconcile.
pub fn reconcile(config: &Config, mode: Mode) -> Report {
    let mut report = Report::default();
    let _lock = match mode {
        Mode::Check => None,
        Mode::Apply => match state::lock(&config.state_dir) {
            Ok(l) => Some(l),
            Err(e) => {
                let msg = format!(
                    "state_dir {}: cannot take the lock: {}",
                    config.state_dir.display(),
                    source::io_reason(&e)
                );
                tracing::error!("{msg}");
                report.errors.push(msg);
                return report;
            }
        },
    };
    let persist = match mode {
        Mode::Apply => Persist::Yes,
        Mode::Check => Persist::No,
    };
    let harvest = source::read_all(config, persist);
    for w in &harvest.warnings {
        tracing::warn!("{w}");
    }
    for e in &harvest.errors {
        tracing::error!("{e}");
        report.errors.push(e.to_string());
    }
    report.candidates = harvest.candidates.len();
    tracing::debug!(
        "{} candidates from {} sources",
        harvest.candidates.len(),
        config.sources.len()
    );

    let now = crate::now();
    let mut broken_reported = HashSet::new();
    for target in &config.targets {
        let selection = select::select(target, &harvest.candidates, now);
        for (c, why) in &selection.refused {
            if why.is_error() {
                let line = format!("source {}: {why}", c.origin);
                if broken_reported.insert(line.clone()) {
                    tracing::error!("{line}");
                    report.errors.push(line);
                }
            } else {
                tracing::debug!("target {}: refused {}: {why}", target.name, c.origin);
            }
        }
        report
            .targets
            .push(plan_target(target, selection, now, mode));
    }

    if mode == Mode::Apply {
        report.reloads = run_reloads(config, &report.targets);
        record(config, &report, now);
    } else {
        report.reloads = reloads_needed(config, &report.targets)
            .into_iter()
            .map(|(argv, _)| ReloadReport { argv, result: None })
            .collect();
    }
    report
}

fn served(leaf: &Leaf, bundle: &Bundle, origin: String, fallback: bool) -> Served {
    Served {
        sha256: cert::fingerprint(bundle.leaf_der()),
        names: leaf.names.clone(),
        key_type: leaf.key_type,
        not_after: leaf.validity.not_after,
        origin,
        fallback,
    }
}

fn plan_target(target: &Target, selection: Selection<'_>, now: i64, mode: Mode) -> TargetReport {
    let refused = selection
        .refused
        .iter()
        .map(|(c, why)| (c.origin.to_string(), why.to_string()))
        .collect::<Vec<_>>();
    let mut report = TargetReport {
        name: target.name.clone(),
        served: None,
        action: Action::UpToDate,
        refused,
        unrelated: selection.unrelated,
        reload: target.reload.clone(),
    };

    let chosen = selection.chosen;
    // Never trade a good installed certificate for the self-signed fallback
    // (or for nothing): a source that is broken for a moment must not
    // downgrade a working server.
    if chosen.as_ref().is_none_or(|c| c.candidate.fallback)
        && let Some((leaf, bundle)) = valid_installed(target, now)
    {
        let is_same = chosen
            .as_ref()
            .is_some_and(|c| c.bundle.leaf_der() == bundle.leaf_der());
        if !is_same {
            tracing::warn!(
                "target {}: no source offers a valid certificate for {}; keeping the installed one (expires {})",
                target.name,
                domains(target),
                crate::rfc3339(leaf.validity.not_after)
            );
            report.served = Some(served(&leaf, &bundle, "installed".to_owned(), false));
            report.action = Action::KeptInstalled;
            return report;
        }
    }

    let Some(chosen) = chosen else {
        let why = format!(
            "no valid certificate for {} ({} refused, {} for other names); its files stay as they are",
            domains(target),
            report.refused.len(),
            report.unrelated
        );
        tracing::error!("target {}: {why}", target.name);
        for (origin, reason) in &report.refused {
            tracing::error!("target {}: refused {origin}: {reason}", target.name);
        }
        report.action = Action::Unserved(why);
        return report;
    };
    let c = chosen.candidate;
    if c.fallback {
        tracing::warn!(
            "target {}: no valid certificate from any source; using the self-signed fallback",
            target.name
        );
    }
    report.served = Some(served(
        &c.leaf,
        &chosen.bundle,
        c.origin.to_string(),
        c.fallback,
    ));
    let planned = install::planned_files(target, &chosen.bundle);
    report.action = match mode {
        Mode::Check => {
            let changed: Vec<PathBuf> = planned
                .iter()
                .filter(|p| install::differs(&p.path, &p.bytes))
                .map(|p| p.path.clone())
                .collect();
            if changed.is_empty() {
                Action::UpToDate
            } else {
                Action::Changed(changed)
            }
        }
        Mode::Apply => apply(target, &planned),
    };
    if let (Action::Changed(files), Some(s)) = (&report.action, &report.served)
        && mode == Mode::Apply
    {
        tracing::info!(
            "target {}: installed {} from {} ({} files changed)",
            target.name,
            s.sha256,
            s.origin,
            files.len()
        );
    }
    report
}

fn apply(target: &Target, planned: &[install::Planned]) -> Action {
    let outcome = install::ownership(target).and_then(|o| install::apply(planned, o));
    match outcome {
        Ok(o) if o.changed.is_empty() => Action::UpToDate,
        Ok(o) => Action::Changed(o.changed),
        Err(e) => {
            tracing::error!(
                "target {}: {e}; its previous files were restored",
                target.name
            );
            Action::WriteFailed(e)
        }
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
/// the target (names, dates, key type, key match, chain).
fn valid_installed(target: &Target, now: i64) -> Option<(Leaf, Bundle)> {
    let bundle = install::installed_bundle(target).ok()?;
    let leaf = Leaf::parse(bundle.leaf_der()).ok()?;
    let ok = !leaf.self_issued
        && leaf.validity.at(now) == Timeliness::Valid
        && target.key_type.accepts(leaf.key_type)
        && names::cover_all(&leaf.names, &target.domains).is_ok()
        && bundle.verify().is_ok();
    ok.then_some((leaf, bundle))
}

/// Distinct reload commands of changed targets, in target order, each with
/// the longest timeout any of its targets allows.
fn reloads_needed(config: &Config, reports: &[TargetReport]) -> Vec<(Vec<String>, Duration)> {
    let mut out: Vec<(Vec<String>, Duration)> = Vec::new();
    for (target, report) in config.targets.iter().zip(reports) {
        let (Action::Changed(_), Some(argv)) = (&report.action, &target.reload) else {
            continue;
        };
        match out.iter_mut().find(|(a, _)| a == argv) {
            Some((_, t)) => *t = (*t).max(target.reload_timeout),
            None => out.push((argv.clone(), target.reload_timeout)),
        }
    }
    out
}

fn run_reloads(config: &Config, reports: &[TargetReport]) -> Vec<ReloadReport> {
    reloads_needed(config, reports)
        .into_iter()
        .map(|(argv, timeout)| {
            let shown = shell_words(&argv);
            let result = crate::reload::run(&argv, timeout);
            match &result {
                Ok(()) => tracing::info!("reload `{shown}`: done"),
                Err(e) => tracing::error!("reload `{shown}`: {e}"),
            }
            ReloadReport {
                argv,
                result: Some(result),
            }
        })
        .collect()
}

/// An argv as a person would type it, for messages.
pub fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn record(config: &Config, report: &Report, now: i64) {
    let mut state = State::load(&config.state_dir);
    for t in &report.targets {
        if let (Some(s), Action::Changed(_)) = (&t.served, &t.action) {
            state.targets.insert(
                t.name.clone(),
                state::Installed {
                    sha256: s.sha256.clone(),
                    source: s.origin.clone(),
                    installed_at: now,
                },
            );
        }
    }
    let mut errors = report.errors.clone();
    errors.extend(report.targets.iter().filter_map(|t| match &t.action {
        Action::Unserved(e) | Action::WriteFailed(e) => Some(format!("target {}: {e}", t.name)),
        _ => None,
    }));
    errors.extend(report.reloads.iter().filter_map(|r| match &r.result {
        Some(Err(e)) => Some(format!("reload `{}`: {e}", shell_words(&r.argv))),
        _ => None,
    }));
    state.last_run = Some(state::Run {
        command: "sync".to_owned(),
        finished_at: crate::now(),
        ok: report.ok(),
        changed_targets: report
            .targets
            .iter()
            .filter(|t| matches!(t.action, Action::Changed(_)))
            .map(|t| t.name.clone())
            .collect(),
        errors,
    });
    if let Err(e) = state.save(&config.state_dir) {
        tracing::warn!(
            "state_dir {}: cannot record this run: {}",
            config.state_dir.display(),
            source::io_reason(&e)
        );
    }
}
