//! The daemon's DANE task: runs the DANE pass ([`crate::dane::pass`]) at
//! start, then again when it asked to be woken (every propagation interval
//! while a wanted record is not yet seen everywhere, or when the next one
//! becomes aged), after every reconcile (which may have chosen a new
//! certificate the gate holds until its record is published and aged, or
//! installed one, whose old record is retired once the new key is in
//! service), and on a new configuration. When a pass saw a record's `t0` change, or ran after
//! a record became aged, a gate may have opened: it asks the reconcile
//! task for a reconcile, as the ACME task does after an order. After a
//! pass that changed DNS, and at least every [`CHECK_EVERY`], it checks
//! every DANE endpoint as a sender would, for `mxkeys_dane_match`. The pass
//! runs off the runtime ([`super::tasks::off_runtime`]); every step of it
//! is saved, so one cut at shutdown is simply redone by the next start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch as channel};
use tokio::time::{Instant, sleep_until};

use super::tasks::{self, Pass};
use super::until_ready;
use crate::config::Config;

/// On SIGTERM, the longest a DNS write under way may take to finish.
const DANE_STOP_GRACE: Duration = Duration::from_secs(10);

/// How often, at least, the served endpoints are checked for the
/// `mxkeys_dane_match` metric (more often after a pass that changed DNS).
const CHECK_EVERY: Duration = Duration::from_secs(600);

/// The longest the task sleeps without a reason (the pass runs again
/// then, as a resync of the DNS side).
const MAX_SLEEP: i64 = 86_400;

pub(super) struct DaneTask {
    pub config: Arc<Config>,
    pub metrics: Arc<super::metrics::Metrics>,
    /// Reconciles asked of the reconcile task.
    pub requests: mpsc::UnboundedSender<&'static str>,
    /// A reconcile happened.
    pub reconciled: mpsc::UnboundedReceiver<()>,
    pub stop: channel::Receiver<bool>,
}

impl DaneTask {
    pub async fn run(
        mut self,
        mut config: channel::Receiver<Arc<Config>>,
        mut ready: channel::Receiver<bool>,
    ) {
        if !until_ready(&mut ready, &mut self.stop).await {
            return;
        }
        let mut next = Some(Instant::now());
        // When the last pass said a record becomes aged.
        let mut aged_at: Option<i64> = None;
        let mut last_check: Option<Instant> = None;
        loop {
            tokio::select! {
                // A stop wins over a pass falling due at the same moment.
                biased;
                _ = self.stop.changed() => break,
                Ok(()) = config.changed() => {
                    self.config = config.borrow_and_update().clone();
                    next = Some(Instant::now());
                }
                Some(()) = self.reconciled.recv() => {
                    while self.reconciled.try_recv().is_ok() {}
                    next = Some(Instant::now());
                }
                _ = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let Some(pass) = self.pass().await else {
                        break;
                    };
                    let now = crate::now();
                    let (reconcile, wait) = after_pass(&pass, aged_at, now);
                    if reconcile {
                        let _ = self.requests.send("DANE record seen or aged");
                    }
                    aged_at = pass.aged_at;
                    let check_due = last_check.is_none_or(|t| t.elapsed() >= CHECK_EVERY);
                    if !pass.done.is_empty() || check_due {
                        self.check().await;
                        last_check = Some(Instant::now());
                    }
                    next = Some(Instant::now() + Duration::from_secs(wait));
                }
            }
        }
    }

    /// Checks every DANE endpoint as a sender would (connections with a
    /// timeout each), for the `mxkeys_dane_match` metric; a stop cuts it.
    async fn check(&mut self) {
        let Ok(endpoints) = crate::dane::check::endpoints(&self.config, None) else {
            return;
        };
        tokio::select! {
            checks = crate::dane::check::check_all(&endpoints) => {
                for line in checks.iter().filter(|c| !c.ok()).flat_map(|c| c.lines()) {
                    tracing::warn!("dane check: {line}");
                }
                self.metrics.set_dane_checks(&checks);
            }
            _ = self.stop.changed() => {}
        }
    }

    /// One pass, off the runtime; `None` when the daemon is stopping.
    async fn pass(&mut self) -> Option<crate::dane::DanePass> {
        if !self.config.targets.iter().any(|t| t.dane.is_some()) {
            return Some(crate::dane::DanePass::default());
        }
        let config = self.config.clone();
        let grace = self.config.daemon.stop_timeout.min(DANE_STOP_GRACE);
        let pass = tasks::off_runtime(&mut self.stop, grace, || async move {
            crate::dane::pass(&config, crate::now()).await
        })
        .await;
        if *self.stop.borrow() {
            return None;
        }
        match pass {
            // The pass logged its own lines.
            Pass::Done(p) => Some(p),
            Pass::Cut => None,
            // Tried again in a minute.
            Pass::Failed(e) => {
                tracing::error!("dane: the pass failed: {e}");
                Some(crate::dane::DanePass {
                    next_wake: Some(crate::now() + 60),
                    ..crate::dane::DanePass::default()
                })
            }
        }
    }
}

/// What follows a pass run at `now` (pure): whether to ask for a reconcile
/// (a record's `t0` changed, or a record became aged since the previous
/// pass, which said when: `aged_at`), and how many seconds to sleep (to
/// the pass's `next_wake`, at least 1 s, at most [`MAX_SLEEP`]).
fn after_pass(pass: &crate::dane::DanePass, aged_at: Option<i64>, now: i64) -> (bool, u64) {
    let aged = aged_at.is_some_and(|t| now >= t);
    let wake = pass.next_wake.unwrap_or(now.saturating_add(MAX_SLEEP));
    let wait = wake.saturating_sub(now).clamp(1, MAX_SLEEP);
    (pass.changed_seen || aged, wait.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dane::DanePass;

    #[test]
    fn a_pass_asks_for_a_reconcile_when_a_t0_changed_or_a_record_aged_and_sleeps_to_its_wake() {
        let pass = |changed_seen, next_wake| DanePass {
            changed_seen,
            next_wake,
            ..DanePass::default()
        };
        // (what, pass, previous aged_at, expected (reconcile, sleep))
        let rows = [
            ("nothing new", pass(false, Some(1_010)), None, (false, 10)),
            (
                "a record seen: a gate may open",
                pass(true, Some(1_002)),
                None,
                (true, 2),
            ),
            (
                "woke when a record aged",
                pass(false, None),
                Some(1_000),
                (true, MAX_SLEEP.unsigned_abs()),
            ),
            (
                "before it aged",
                pass(false, Some(1_005)),
                Some(1_005),
                (false, 5),
            ),
            (
                "a wake in the past: 1 s",
                pass(false, Some(900)),
                None,
                (false, 1),
            ),
            (
                "far away: at most a day",
                pass(false, Some(i64::MAX)),
                None,
                (false, MAX_SLEEP.unsigned_abs()),
            ),
        ];
        for (what, p, aged_at, want) in rows {
            assert_eq!(after_pass(&p, aged_at, 1_000), want, "{what}");
        }
    }
}
