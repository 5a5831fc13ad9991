//! `mxkeys run`: the same reconcile as `sync`, at start, whenever a source
//! changes, and on a periodic resync; until SIGTERM or SIGINT.
//!
//! The daemon is a set of independent tasks, so that a long wait in one
//! never delays another: the TLS reconcile ([`Reconciler`]: watch,
//! debounce, resync), the ACME scheduler ([`AcmeTask`]), the DKIM scheduler
//! ([`DkimTask`]), the DANE pass ([`dane`]), the MTA-STS pass and
//! responder ([`mta_sts`]), the cluster task ([`cluster`], with
//! `[cluster]`), the metrics server and the watchdog ([`tasks`]); the main
//! task only handles signals. READY=1 is sent after the first reconcile,
//! before any network work (the ACME and DKIM tasks start after it). An
//! issued certificate is installed by asking the reconcile task for a
//! reconcile, never inline. ACME and DKIM passes run off the runtime's
//! thread ([`tasks::off_runtime`]); reconciles run in the blocking pool
//! under the pipeline lock, one at a time. A certificate the DANE gate
//! holds is reconciled again when its gate is due (the earliest `until` of
//! the last reconcile, [`pipeline::Report::next_gate`]).
//!
//! A change is noticed by [`watch`] (inotify through notify's debouncer, or
//! polling). A read that catches a source mid-write (unparseable JSON, a key
//! from another generation) is read again after a short backoff before
//! anything is written, so an inconsistent state never causes a reload;
//! errors that survive the retries are reported and the rest is applied,
//! and such known errors (known by source, entry and kind, never by their
//! text) do not delay later reconciles. SIGHUP re-reads the
//! configuration (an invalid one is reported and the old one kept) and
//! hands it to every task. SIGTERM lets the step under way finish: the
//! reconcile in flight, an ACME pass for up to `stop_timeout` (then it is
//! cut and recorded as failed, so the next start backs off), a DKIM step
//! for up to [`DKIM_STOP_GRACE`] (every DKIM step is saved; a cut one is
//! redone by the next pass).

pub mod cluster;
mod dane;
pub mod metrics;
pub mod mta_sts;
pub mod tasks;
pub mod watch;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch as channel};
use tokio::time::{Instant, sleep, sleep_until};

use crate::config::{Config, ConfigSource};
use crate::pipeline::{self, Plan, Report, RunError, RunErrorId};
use crate::source::Persist;
use crate::state::{self, State};
use tasks::Pass;

/// The longest a burst of change events can delay a reconcile.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// On SIGTERM, the longest a DKIM step under way may take to finish (a
/// DNS provider's write); a propagation wait is simply cut.
const DKIM_STOP_GRACE: Duration = Duration::from_secs(10);

/// Delays between re-reads of a source that looks mid-write.
const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
];

/// Runs the daemon until a termination signal. The exit status is 0 after
/// SIGTERM/SIGINT; 1 when it cannot start (runtime, signals, metrics port)
/// or when its reconcile task ended on its own.
pub fn run(source: ConfigSource, config: Config) -> ExitCode {
    let Some(runtime) = crate::runtime() else {
        return ExitCode::FAILURE;
    };
    let code = runtime.block_on(async move {
        match Daemon::start(source, config).await {
            Ok(daemon) => daemon.serve().await,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    });
    // A pass cut at shutdown may still be inside a synchronous step on its
    // thread: do not wait for it.
    runtime.shutdown_background();
    code
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
enum StartError {
    /// The metrics port could not be bound.
    #[error("metrics.listen {listen}: cannot listen: {source}")]
    MetricsListen {
        listen: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The main task: the configuration's source, and the signals.
struct Daemon {
    source: ConfigSource,
    config: Arc<Config>,
    metrics: Arc<metrics::Metrics>,
}

impl Daemon {
    async fn start(source: ConfigSource, config: Config) -> Result<Daemon, StartError> {
        let config = Arc::new(config);
        let metrics = Arc::new(metrics::Metrics::default());
        metrics.configure(&config);
        if let Some(listen) = config.daemon.metrics_listen {
            metrics::serve(listen, metrics.clone())
                .await
                .map_err(|source| StartError::MetricsListen { listen, source })?;
        }
        Ok(Daemon {
            source,
            config,
            metrics,
        })
    }

    async fn serve(mut self) -> ExitCode {
        let (Ok(mut hup), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::hangup()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        let (stop_tx, stop) = channel::channel(false);
        let (config_tx, config) = channel::channel(self.config.clone());
        let (ready_tx, ready) = channel::channel(false);
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (dane_tx, dane_reconciled) = mpsc::unbounded_channel();
        let (mta_sts_tx, mta_sts_reconciled) = mpsc::unbounded_channel();
        let mut reconciler = Reconciler::new(&self.config, self.metrics.clone());
        reconciler.dane = Some(dane_tx);
        reconciler.mta_sts = Some(mta_sts_tx);
        tracing::info!(
            "mxkeys {} watching {} ({} targets)",
            env!("CARGO_PKG_VERSION"),
            reconciler.watcher.describe().join(", "),
            self.config.targets.len()
        );
        let mut tls =
            tokio::spawn(reconciler.run(config.clone(), stop.clone(), requests, ready_tx));
        let dane = dane::DaneTask {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            requests: requests_tx.clone(),
            reconciled: dane_reconciled,
            stop: stop.clone(),
        };
        let dane = tokio::spawn(dane.run(config.clone(), ready.clone()));
        let mta_sts = mta_sts::MtaStsTask {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            reconciled: mta_sts_reconciled,
            stop: stop.clone(),
        };
        let mta_sts = tokio::spawn(mta_sts.run(config.clone(), ready.clone()));
        let (cluster, cluster_handle) = cluster::ClusterTask::new(
            self.config.clone(),
            self.metrics.clone(),
            requests_tx.clone(),
            stop.clone(),
        );
        let cluster = tokio::spawn(cluster.run(config.clone()));
        let acme = AcmeTask {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            requests: requests_tx,
            stop: stop.clone(),
            last_renewal: i64::MIN / 2,
            cluster: cluster_handle.clone(),
        };
        let acme = tokio::spawn(acme.run(config.clone(), ready.clone()));
        let dkim = DkimTask {
            config: self.config.clone(),
            metrics: self.metrics.clone(),
            stop: stop.clone(),
            cluster: cluster_handle,
        };
        let dkim = tokio::spawn(dkim.run(config, ready));
        let watchdog = tokio::spawn(tasks::watchdog(vec![
            ("TLS reconcile", tls.abort_handle()),
            ("ACME", acme.abort_handle()),
            ("DKIM", dkim.abort_handle()),
            ("DANE", dane.abort_handle()),
            ("MTA-STS", mta_sts.abort_handle()),
            ("cluster", cluster.abort_handle()),
        ]));
        let mut code = ExitCode::SUCCESS;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => self.reload_config(&config_tx),
                r = &mut tls => {
                    tracing::error!("the reconcile task ended ({r:?}); stopping");
                    code = ExitCode::FAILURE;
                    break;
                }
            }
        }
        tracing::info!("stopping");
        notify(&[NotifyState::Stopping]);
        let _ = stop_tx.send(true);
        // Each task finishes or cuts its step under way within its bound.
        if !tls.is_finished() {
            let _ = tls.await;
        }
        let _ = acme.await;
        let _ = dkim.await;
        let _ = dane.await;
        let _ = mta_sts.await;
        let _ = cluster.await;
        watchdog.abort();
        code
    }

    /// Reads the configuration again and hands it to every task; the
    /// reconcile task says READY once it has applied it.
    fn reload_config(&mut self, tasks: &channel::Sender<Arc<Config>>) {
        notify_reloading();
        match self.source.load(&crate::config::Host::current()) {
            Ok(new) => {
                if new.daemon.metrics_listen != self.config.daemon.metrics_listen {
                    tracing::warn!("metrics.listen changed: restart mxkeys to apply it");
                }
                tracing::info!("configuration reloaded from {}", self.source);
                self.config = Arc::new(new);
                self.metrics.configure(&self.config);
                let _ = tasks.send(self.config.clone());
            }
            Err(e) => {
                tracing::error!("{e}; keeping the configuration in use");
                notify(&[NotifyState::Ready]);
            }
        }
    }
}

/// Waits for READY before a task's first network work: false when the
/// daemon stops first (or READY can no longer come).
async fn until_ready(
    ready: &mut channel::Receiver<bool>,
    stop: &mut channel::Receiver<bool>,
) -> bool {
    tokio::select! {
        r = ready.changed() => r.is_ok(),
        _ = stop.changed() => false,
    }
}

/// The ACME scheduler: orders what is due, then asks for a reconcile.
struct AcmeTask {
    config: Arc<Config>,
    metrics: Arc<metrics::Metrics>,
    requests: mpsc::UnboundedSender<&'static str>,
    stop: channel::Receiver<bool>,
    /// When the last ACME pass ran: the renewal timer waits at least
    /// [`crate::acme::schedule::MIN_PASS_INTERVAL`] after it.
    last_renewal: i64,
    /// The cluster's context while connected: shared sources order
    /// through it (without it they are not ordered).
    cluster: cluster::ClusterHandle,
}

impl AcmeTask {
    async fn run(
        mut self,
        mut config: channel::Receiver<Arc<Config>>,
        mut ready: channel::Receiver<bool>,
    ) {
        if !until_ready(&mut ready, &mut self.stop).await {
            return;
        }
        let mut next_renewal = self.next_renewal();
        loop {
            tokio::select! {
                // A stop wins over a pass falling due at the same moment.
                biased;
                _ = self.stop.changed() => break,
                Ok(()) = config.changed() => {
                    self.config = config.borrow_and_update().clone();
                    next_renewal = self.next_renewal();
                }
                // Another host's shared order ended (done, or its leader
                // died): take its certificate, or order if still due.
                Ok(()) = self.cluster.released.changed() => {
                    self.cluster.released.borrow_and_update();
                    next_renewal = Some(Instant::now());
                }
                _ = sleep_until(next_renewal.unwrap_or_else(Instant::now)), if next_renewal.is_some() => {
                    let issued = self.renew().await;
                    if *self.stop.borrow() {
                        break;
                    }
                    if issued {
                        let _ = self.requests.send("renewal");
                    }
                    next_renewal = self.next_renewal();
                }
            }
        }
    }

    /// Orders what the `acme` sources need now; whether a certificate was
    /// issued. The pass runs off the runtime; at shutdown it gets
    /// `stop_timeout` to finish, and a cut pass is recorded as failed.
    async fn renew(&mut self) -> bool {
        if self.config.acme_sources().next().is_none() {
            return false;
        }
        self.last_renewal = crate::now();
        let config = self.config.clone();
        let cluster = self.cluster.ctx();
        let pass =
            tasks::off_runtime(
                &mut self.stop,
                self.config.daemon.stop_timeout,
                || async move {
                    crate::acme::renew_with(&config, false, None, cluster.as_deref()).await
                },
            )
            .await;
        match pass {
            // Each order already logged its outcome.
            Pass::Done(Ok(outcomes)) => {
                self.metrics.record_orders(&outcomes);
                outcomes.iter().any(|o| matches!(o.result, Some(Ok(_))))
            }
            Pass::Done(Err(e)) => {
                tracing::error!("renew: {e}");
                false
            }
            Pass::Cut => {
                let config = self.config.clone();
                let _ = tokio::task::spawn_blocking(move || crate::acme::record_cut(&config)).await;
                false
            }
            Pass::Failed(e) => {
                tracing::error!("renew: the pass failed: {e}");
                false
            }
        }
    }

    /// When the next `acme` source is due (its backoff ends, or its ARI
    /// window should be asked again), as a timer deadline: never sooner
    /// than the minimum interval after the last pass, whatever failed.
    fn next_renewal(&self) -> Option<Instant> {
        let due = crate::acme::next_due(&self.config);
        self.metrics.set_next_renewals(&due);
        let at = crate::acme::next_check(&self.config)?;
        let at = crate::acme::schedule::next_wake(self.last_renewal, at);
        let wait = (at - crate::now()).clamp(1, 7 * 86_400);
        tracing::debug!(
            "next acme renewal check at {}",
            crate::rfc3339(crate::now() + wait)
        );
        Some(Instant::now() + Duration::from_secs(wait as u64))
    }
}

/// The DKIM scheduler: advances the keys' state machine when a transition
/// is due. With `[dkim] shared` it passes through the cluster task's
/// connection (one lease per daemon), and at once when the cluster task
/// says the stored book changed or the `dkim` lock was released.
struct DkimTask {
    config: Arc<Config>,
    metrics: Arc<metrics::Metrics>,
    stop: channel::Receiver<bool>,
    cluster: cluster::ClusterHandle,
}

impl DkimTask {
    async fn run(
        mut self,
        mut config: channel::Receiver<Arc<Config>>,
        mut ready: channel::Receiver<bool>,
    ) {
        if !until_ready(&mut ready, &mut self.stop).await {
            return;
        }
        let mut next_dkim = Some(Instant::now());
        loop {
            tokio::select! {
                // A stop wins over a pass falling due at the same moment.
                biased;
                _ = self.stop.changed() => break,
                Ok(()) = config.changed() => {
                    self.config = config.borrow_and_update().clone();
                    next_dkim = self.next_dkim();
                }
                Ok(()) = self.cluster.dkim.changed() => {
                    self.cluster.dkim.borrow_and_update();
                    if self.shared() {
                        next_dkim = Some(Instant::now());
                    }
                }
                _ = sleep_until(next_dkim.unwrap_or_else(Instant::now)), if next_dkim.is_some() => {
                    self.dkim_pass().await;
                    if *self.stop.borrow() {
                        break;
                    }
                    next_dkim = self.next_dkim();
                }
            }
        }
    }

    /// Advances the DKIM keys' state machine, off the runtime; at shutdown
    /// a step under way gets [`DKIM_STOP_GRACE`] (at most `stop_timeout`).
    async fn dkim_pass(&mut self) {
        if self.config.dkim.is_none() {
            return;
        }
        let config = self.config.clone();
        let grace = self.config.daemon.stop_timeout.min(DKIM_STOP_GRACE);
        let shared = self.shared().then(|| self.cluster.ctx());
        let pass = tasks::off_runtime(&mut self.stop, grace, || async move {
            match shared {
                None => crate::dkim::rotate(&config, None, false).await,
                Some(Some(ctx)) => {
                    crate::cluster::dkim::pass(&config, &ctx.store, &ctx.seal, None, false).await
                }
                // The cluster task says when it is connected.
                Some(None) => Err(crate::dkim::DkimError::Shared(
                    crate::cluster::ClusterError::Unavailable(
                        "not connected yet; the shared DKIM pass waits".into(),
                    )
                    .into(),
                )),
            }
        })
        .await;
        // The pass logged its own errors.
        let outcome = match pass {
            Pass::Done(outcome) => outcome.map_err(|e| e.to_string()),
            Pass::Cut => {
                tracing::info!(
                    "dkim: the step under way was cut at shutdown; the next start continues from the saved state"
                );
                return;
            }
            Pass::Failed(e) => Err(format!("the pass failed: {e}")),
        };
        if let Err(e) = &outcome {
            tracing::error!("dkim: {e}");
        }
        let ok = outcome.as_ref().is_ok_and(|pass| pass.errors.is_empty());
        self.metrics.dkim_outcome(&outcome);
        self.metrics.set_dkim(&self.config, ok);
    }

    /// `[dkim] shared` with `[cluster]`: passes go through the cluster task.
    fn shared(&self) -> bool {
        self.config.cluster.is_some() && self.config.dkim.as_ref().is_some_and(|d| d.shared)
    }

    /// When the next DKIM pass is due; keys waiting for their record to
    /// appear everywhere (a transition already due) are looked at again
    /// after half a minute, and a failed signer reload is retried as soon
    /// (`dkim::next_due`).
    fn next_dkim(&self) -> Option<Instant> {
        let at = crate::dkim::next_due(&self.config)?;
        let left = at - crate::now();
        let wait = if left > 0 { left.min(7 * 86_400) } else { 30 };
        Some(Instant::now() + Duration::from_secs(wait as u64))
    }
}

/// The TLS reconcile task: the watches, the debounce, the periodic resync,
/// and reconciles asked for by other tasks; one reconcile at a time.
struct Reconciler {
    config: Arc<Config>,
    watcher: watch::Watcher,
    changes: mpsc::UnboundedReceiver<watch::Changed>,
    changes_tx: mpsc::UnboundedSender<watch::Changed>,
    metrics: Arc<metrics::Metrics>,
    /// Errors that survived a full retry cycle: stable, not mid-write.
    /// Known by source, entry and kind, never by their text.
    known_errors: HashSet<RunErrorId>,
    /// Expiry warnings already given: target and certificate, and when.
    warned: HashMap<(String, String), Instant>,
    started_at: i64,
    reconciles: u64,
    /// Told after every reconcile while a target has DANE: the DANE pass
    /// publishes the record of a new candidate the gate holds, and retires
    /// the old record once a new key is served.
    dane: Option<mpsc::UnboundedSender<()>>,
    /// Told after every reconcile while `[mta_sts]` or `[tls_rpt]` is set:
    /// the MTA-STS responder rereads its certificates, the pass runs.
    mta_sts: Option<mpsc::UnboundedSender<()>>,
    /// When a certificate held by the DANE gate may be installed (the
    /// earliest `until` of the last reconcile): reconcile again then.
    next_gate: Option<Instant>,
}

impl Reconciler {
    fn new(config: &Arc<Config>, metrics: Arc<metrics::Metrics>) -> Reconciler {
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let watcher = watch::Watcher::new(config, changes_tx.clone());
        Reconciler {
            config: config.clone(),
            watcher,
            changes,
            changes_tx,
            metrics,
            known_errors: HashSet::new(),
            warned: HashMap::new(),
            started_at: crate::now(),
            reconciles: 0,
            dane: None,
            mta_sts: None,
            next_gate: None,
        }
    }

    /// The first reconcile, READY, then reconciles on changes, requests,
    /// new configurations and the resync timer until stopped (the
    /// reconcile under way finishes first).
    async fn run(
        mut self,
        mut config: channel::Receiver<Arc<Config>>,
        mut stop: channel::Receiver<bool>,
        mut requests: mpsc::UnboundedReceiver<&'static str>,
        ready: channel::Sender<bool>,
    ) {
        self.reconcile("start").await;
        notify(&[NotifyState::Ready, NotifyState::Status("watching")]);
        let _ = ready.send(true);
        let mut next_resync = Instant::now() + self.config.daemon.resync_interval;
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Ok(()) = config.changed() => {
                    let new = config.borrow_and_update().clone();
                    self.reload_config(new).await;
                    next_resync = Instant::now() + self.config.daemon.resync_interval;
                }
                Some(why) = requests.recv() => {
                    self.reconcile(why).await;
                    self.watcher.rearm();
                }
                Some(changed) = self.changes.recv() => {
                    let paths = self.settle(changed.paths).await;
                    // Empty paths: events were lost; assume the worst.
                    if paths.is_empty() || self.watcher.relevant(&paths) {
                        tracing::debug!("change: {}", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "));
                        self.reconcile("change").await;
                    }
                    self.watcher.rearm();
                }
                _ = sleep_until(self.next_gate.unwrap_or_else(Instant::now)), if self.next_gate.is_some() => {
                    self.reconcile("DANE gate due").await;
                    self.watcher.rearm();
                }
                _ = sleep_until(next_resync) => {
                    self.reconcile("periodic resync").await;
                    self.watcher.rearm();
                    next_resync = Instant::now() + self.config.daemon.resync_interval;
                }
            }
        }
    }

    /// Applies a configuration the main task read: new watches, then a
    /// reconcile with it, then READY.
    async fn reload_config(&mut self, new: Arc<Config>) {
        self.watcher = watch::Watcher::new(&new, self.changes_tx.clone());
        self.config = new;
        self.known_errors.clear();
        self.reconcile("configuration reloaded").await;
        notify(&[NotifyState::Ready]);
    }

    /// The debounce: gathers change events until none came for `debounce`
    /// (at most [`MAX_SETTLE`] after the first), so a burst of writes makes
    /// one reconcile. Event-driven: nothing wakes while nothing happens.
    async fn settle(&mut self, mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
        let deadline = Instant::now() + MAX_SETTLE;
        loop {
            tokio::select! {
                more = self.changes.recv() => match more {
                    Some(m) => paths.extend(m.paths),
                    None => break,
                },
                _ = sleep(self.config.daemon.debounce) => break,
                _ = sleep_until(deadline) => break,
            }
        }
        paths
    }

    /// Plans (re-reading while the sources look mid-write), then applies
    /// under the lock, then records what happened.
    async fn reconcile(&mut self, why: &str) {
        let started = std::time::Instant::now();
        let mut retries = RETRY_DELAYS.iter();
        let plan = loop {
            let plan = self.plan().await;
            let fresh = fresh_error(&plan.errors, &self.known_errors);
            match (fresh, retries.next()) {
                (Some(e), Some(delay)) => {
                    tracing::debug!(
                        "{why}: a source looks mid-write ({e}); reading again within {delay:?}"
                    );
                    // Read again after the backoff, or as soon as the writer's
                    // next change has settled, whichever comes first.
                    tokio::select! {
                        _ = sleep(*delay) => {}
                        Some(_) = self.changes.recv() => {}
                    }
                    while self.changes.try_recv().is_ok() {}
                }
                _ => break plan,
            }
        };
        self.known_errors = plan.errors.iter().map(RunError::id).collect();
        plan.log();
        let config = self.config.clone();
        let record = state::Daemon {
            pid: std::process::id(),
            started_at: self.started_at,
            reconciles: self.reconciles + 1,
            watching: self.watcher.describe(),
            updated_at: 0,
            last_reconcile_ok: false,
        };
        let report = tokio::task::spawn_blocking(move || {
            let _lock = match pipeline::lock(&config) {
                Ok(l) => l,
                Err(report) => return *report,
            };
            let report = pipeline::apply(&config, plan, "run");
            // Read again what apply saved (still under the lock) to add
            // the daemon's line to it.
            let mut state = State::load(&config.state_dir);
            state.daemon = Some(state::Daemon {
                updated_at: crate::now(),
                last_reconcile_ok: report.ok(),
                ..record
            });
            if let Err(e) = state.save(&config.state_dir) {
                tracing::warn!("cannot record the daemon's state: {e}");
            }
            report
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("reconcile task failed: {e}");
            Report::default()
        });
        self.reconciles += 1;
        if let Some(dane) = &self.dane
            && self.config.targets.iter().any(|t| t.dane.is_some())
        {
            let _ = dane.send(());
        }
        if let Some(mta_sts) = &self.mta_sts
            && (self.config.mta_sts.is_some() || self.config.tls_rpt.is_some())
        {
            let _ = mta_sts.send(());
        }
        // Every renewal is followed by a reconcile: the failure counts it
        // left are read here (before the report, so a scrape that sees
        // this reconcile sees them too).
        self.metrics.set_acme(&self.config);
        self.metrics.record(&report, crate::now());
        self.next_gate = report.next_gate().map(|at| {
            // At least a second later: a gate due now is reconciled once,
            // not in a loop.
            let left = u64::try_from(at - crate::now()).unwrap_or(0).max(1);
            Instant::now() + Duration::from_secs(left)
        });
        self.warn_expiry(&report);
        self.metrics.observe_reconcile(started.elapsed());
        tracing::debug!("reconcile ({why}) took {:?}", started.elapsed());
        let status = if report.ok() {
            "ok".to_owned()
        } else {
            format!("{} problems", report.problems().len())
        };
        notify(&[NotifyState::Status(&format!("last reconcile: {status}"))]);
    }

    /// Expiry warnings, once per target and certificate per resync
    /// interval: a busy source must not flood the log.
    fn warn_expiry(&mut self, report: &Report) {
        let threshold = self.config.daemon.expiry_warning;
        let again_after = self.config.daemon.resync_interval;
        let expiring = report.expiring(threshold, crate::now());
        self.warned
            .retain(|key, _| expiring.iter().any(|(k, _)| k == key));
        for (key, message) in expiring {
            let due = self
                .warned
                .get(&key)
                .is_none_or(|at| at.elapsed() >= again_after);
            if due {
                tracing::warn!("{message}");
                self.warned.insert(key, Instant::now());
            }
        }
    }

    async fn plan(&self) -> Plan {
        let config = self.config.clone();
        tokio::task::spawn_blocking(move || pipeline::plan(&config, Persist::Yes))
            .await
            .unwrap_or_else(|e| Plan {
                errors: vec![RunError::Reading(e.to_string())],
                ..Plan::default()
            })
    }
}

/// The first error of a plan that is not already known (pure): a source
/// that may be caught mid-write, worth reading again. Errors are told apart
/// by source, entry and kind ([`RunError::id`]), never by their wording.
fn fresh_error<'p>(errors: &'p [RunError], known: &HashSet<RunErrorId>) -> Option<&'p RunError> {
    errors.iter().find(|e| !known.contains(&e.id()))
}

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("sd_notify: {e}");
    }
}

fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{SourceError, SourceErrorKind};

    fn source_error(entry: &str, kind: SourceErrorKind, reason: &str) -> RunError {
        RunError::Source(SourceError {
            source: Arc::from("traefik"),
            entry: Some(entry.to_owned()),
            kind,
            reason: reason.to_owned(),
        })
    }

    #[test]
    fn a_known_error_is_told_by_source_entry_and_kind_not_by_its_wording() {
        use SourceErrorKind::{Broken, Malformed};
        let known_one = source_error("#1", Malformed, "truncated JSON (line 3, column 9)");
        let known: HashSet<RunErrorId> = [known_one.id()].into();
        // (what, error, fresh?)
        for (what, error, fresh) in [
            ("the same error", known_one.clone(), false),
            (
                "reworded",
                source_error("#1", Malformed, "truncated JSON (line 40, column 2)"),
                false,
            ),
            (
                "another entry",
                source_error("#2", Malformed, "truncated JSON"),
                true,
            ),
            (
                "another kind",
                source_error("#1", Broken, "key mismatch"),
                true,
            ),
            (
                "reading failed",
                RunError::Reading("panic".to_owned()),
                true,
            ),
        ] {
            let errors = [error];
            assert_eq!(fresh_error(&errors, &known).is_some(), fresh, "{what}");
        }
        assert!(fresh_error(&[], &known).is_none(), "no errors");
    }
}
