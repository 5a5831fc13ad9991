//! The cluster task (issue 18, `[cluster]`): this host's view of what the
//! hosts share, and what it says about the cluster.
//!
//! The rule: losing the cluster never removes or changes an installed
//! certificate; it only stops shared work, and says so. The task connects
//! (retrying with a growing delay: a failure is one error line and
//! `reachable = false`, never fatal), loads the seal key, lists the prefix
//! and watches it. A change under `acme/` mirrors the shared certificates
//! into their sources and asks the reconcile task for a reconcile (the way
//! the ACME task does after an order): installing goes through the normal
//! pipeline. Tokens under `http01/` are answered by the built-in responder
//! on each shared http-01 source's `http_listen` while any exist, except
//! where this host leads the source's job (its own order's responder is
//! there). A change of `dkim/book`, or the `dkim` lock of another host
//! gone, runs the DKIM task's shared pass at once ([`dkim_pass_due`]),
//! through this task's connection (one lease per daemon). The daemon
//! registers as a responder of each shared http-01 source and
//! acknowledges every token it answers, so the leader asks the CA only
//! once every host has it. A watch that ends is listed and watched again;
//! a probe (a full
//! listing, which needs a quorum) every [`probe_interval`] keeps
//! [`Health`] true to the cluster and the view whole even if a watch
//! silently stalls. [`Health`] is written atomically to
//! `state_dir/cluster.json` when it changes (for `mxkeys status`) and
//! given to the metrics.
//!
//! Decide apart from act: [`View`] (what the listing and the events say),
//! [`observe`] (health), [`retry_delay`], [`probe_interval`] and
//! [`responder_addrs`] are pure and tested with tables; [`ClusterTask`]
//! does the network, the files and the responders.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch as channel};
use tokio::time::{Instant, sleep, sleep_until};

use crate::acme::http01;
use crate::cluster::acme::{Ctx, ack_key, responder_key};
use crate::cluster::{Backend, Event, Health, SharedStore as _, Stored};
use crate::config::{Challenge, Cluster, Config};

use super::metrics::Metrics;

/// The longest wait between two connection attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// The delay before connection attempt `failures + 1` (pure): 1 s after
/// the first failure, doubling, at most [`MAX_RETRY`].
pub fn retry_delay(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    (Duration::from_secs(1) * 2u32.pow(exp)).min(MAX_RETRY)
}

/// How often the cluster is probed (pure): a third of the lease, between
/// 1 and 10 seconds, so a lost quorum shows within about one lease.
pub fn probe_interval(lease_ttl: Duration) -> Duration {
    (lease_ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(10))
}

/// What a key under the prefix is, by its layout ([`crate::cluster`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'k> {
    /// `acme/NAME`: a shared certificate.
    Acme(&'k str),
    /// `http01/TOKEN`: a key authorization.
    Http01(&'k str),
    /// `lock/JOB`: a job's lock; its value is the holder's host id.
    Lock(&'k str),
    /// `dkim/book`: the shared DKIM book.
    DkimBook,
    Other,
}

/// Which part of a key it is (pure).
pub fn classify(key: &str) -> Key<'_> {
    let key = key.trim_start_matches('/');
    let part = |p: &str| key.strip_prefix(p).filter(|rest| !rest.is_empty());
    if let Some(name) = part("acme/") {
        Key::Acme(name)
    } else if let Some(token) = part("http01/") {
        Key::Http01(token)
    } else if let Some(job) = part("lock/") {
        Key::Lock(job)
    } else if key == crate::cluster::dkim::BOOK {
        Key::DkimBook
    } else {
        Key::Other
    }
}

/// What changed in the view, and so what must be done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Changed {
    /// A shared certificate was stored or removed: mirror, then reconcile.
    pub acme: bool,
    /// The HTTP-01 tokens changed: the responders follow.
    pub tokens: bool,
    /// A lock was taken or given up.
    pub locks: bool,
}

/// This host's view of the prefix (pure): the shared certificates' revisions,
/// the HTTP-01 tokens and the locks' holders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub acme: BTreeMap<String, i64>,
    pub tokens: BTreeMap<String, String>,
    pub locks: BTreeMap<String, String>,
    /// The DKIM book's revision (0: none stored).
    pub dkim_book: i64,
    /// The highest revision seen: a watch starts after it.
    pub revision: i64,
}

impl View {
    /// The view a full listing gives, and what differs from this one.
    pub fn relist(&mut self, listing: &[(String, Stored)]) -> Changed {
        let mut next = View {
            revision: self.revision,
            ..View::default()
        };
        for (key, stored) in listing {
            next.put(key, stored);
        }
        let changed = Changed {
            acme: next.acme != self.acme,
            tokens: next.tokens != self.tokens,
            locks: next.locks != self.locks,
        };
        *self = next;
        changed
    }

    /// One watch event, and what it changed.
    pub fn apply(&mut self, event: &Event) -> Changed {
        match event {
            Event::Put { key, stored } => self.put(key, stored),
            Event::Delete { key } => match classify(key) {
                Key::Acme(name) => Changed {
                    acme: self.acme.remove(name).is_some(),
                    ..Changed::default()
                },
                Key::Http01(token) => Changed {
                    tokens: self.tokens.remove(token).is_some(),
                    ..Changed::default()
                },
                Key::Lock(job) => Changed {
                    locks: self.locks.remove(job).is_some(),
                    ..Changed::default()
                },
                Key::DkimBook => {
                    self.dkim_book = 0;
                    Changed::default()
                }
                Key::Other => Changed::default(),
            },
        }
    }

    fn put(&mut self, key: &str, stored: &Stored) -> Changed {
        self.revision = self.revision.max(stored.revision);
        let text = || String::from_utf8_lossy(&stored.value).trim().to_owned();
        match classify(key) {
            Key::Acme(name) => Changed {
                acme: self.acme.insert(name.to_owned(), stored.revision) != Some(stored.revision),
                ..Changed::default()
            },
            Key::Http01(token) => {
                let value = text();
                Changed {
                    tokens: self.tokens.insert(token.to_owned(), value.clone()) != Some(value),
                    ..Changed::default()
                }
            }
            Key::Lock(job) => {
                let value = text();
                Changed {
                    locks: self.locks.insert(job.to_owned(), value.clone()) != Some(value),
                    ..Changed::default()
                }
            }
            Key::DkimBook => {
                self.dkim_book = stored.revision;
                Changed::default()
            }
            Key::Other => Changed::default(),
        }
    }

    /// The jobs whose lock `host` holds.
    pub fn leading(&self, host: &str) -> Vec<String> {
        self.locks
            .iter()
            .filter(|(_, holder)| holder.as_str() == host)
            .map(|(job, _)| job.clone())
            .collect()
    }
}

/// Health after one request to the cluster (pure): `Ok` reached a quorum,
/// `Err` is the one-line error. `since` moves only when `reachable`
/// flips; the last error stays until another replaces it.
pub fn observe(health: &Health, outcome: Result<(), String>, now: i64) -> Health {
    let reachable = outcome.is_ok();
    Health {
        reachable,
        since: if reachable == health.reachable && health.since != 0 {
            health.since
        } else {
            now
        },
        last_error: outcome.err().or_else(|| health.last_error.clone()),
        leading: health.leading.clone(),
        fenced_writes: health.fenced_writes,
    }
}

/// The job of a shared acme source.
pub fn acme_job(source: &str) -> String {
    format!("acme/{source}")
}

/// The shared jobs this configuration takes part in (pure): `acme/NAME`
/// per shared acme source, `dkim` when `[dkim]` is shared.
pub fn shared_jobs(config: &Config) -> Vec<String> {
    let mut jobs: Vec<String> = config
        .acme_sources()
        .filter(|s| s.shared)
        .map(|s| acme_job(&s.name))
        .collect();
    if config.dkim.as_ref().is_some_and(|d| d.shared) {
        jobs.push("dkim".to_owned());
    }
    jobs
}

/// Where this host answers shared HTTP-01 tokens now (pure): the
/// `http_listen` of each shared http-01 source whose job another host
/// leads (bound as soon as its lock appears, before its order publishes a
/// token, so the CA never comes early), or of every shared http-01 source
/// this host does not lead while any token exists. Never where this host
/// leads: its order runs its own responder there.
pub fn responder_addrs(config: &Config, view: &View, host: &str) -> BTreeSet<SocketAddr> {
    let tokens = !view.tokens.is_empty();
    config
        .acme_sources()
        .filter(|s| s.shared)
        .filter(|s| match view.locks.get(&acme_job(&s.name)) {
            Some(holder) => holder != host,
            None => tokens,
        })
        .filter_map(|s| match s.challenge {
            Challenge::Http01Listen(addr) => Some(addr),
            _ => None,
        })
        .collect()
}

/// The shared http-01 sources (listen or webroot) this host answers for
/// now (pure): those whose job it does not lead.
pub fn answering_sources<'c>(config: &'c Config, view: &View, host: &str) -> Vec<&'c str> {
    config
        .acme_sources()
        .filter(|s| s.shared)
        .filter(|s| {
            matches!(
                s.challenge,
                Challenge::Http01Listen(_) | Challenge::Http01Webroot(_)
            )
        })
        .filter(|s| view.locks.get(&acme_job(&s.name)).is_none_or(|h| h != host))
        .map(|s| s.name.as_str())
        .collect()
}

/// Whether a shared acme job's lock held by another host is gone (pure):
/// its leader finished, or died and its lease ended; a host still waiting
/// for that certificate should look again now, not at its next timer.
pub fn released_by_others(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    host: &str,
) -> bool {
    before.iter().any(|(job, holder)| {
        job.starts_with("acme/") && holder != host && after.get(job) != Some(holder)
    })
}

/// Whether the DKIM task should run a shared pass now (pure), rather than
/// at its next timer (a follower polls once a minute): the stored book's
/// revision is not the one last handed on (`seen`; another host stored
/// one, or this host just connected), or the `dkim` lock another host held
/// is gone (it resigned or died and its lease ended: this host may lead).
pub fn dkim_pass_due(
    seen: i64,
    view: &View,
    before: &BTreeMap<String, String>,
    host: &str,
) -> bool {
    let released = before.get(crate::cluster::dkim::JOB).is_some_and(|holder| {
        holder != host && view.locks.get(crate::cluster::dkim::JOB) != Some(holder)
    });
    view.dkim_book != seen || released
}

/// What the ACME task gets from the cluster task: the shared order path's
/// context (store, seal key, host id, fenced-write count) while connected
/// with a usable seal key; `None` otherwise, and shared sources are then
/// not ordered (what is installed stays).
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    ctx: channel::Receiver<Option<Arc<Ctx>>>,
    /// Bumped when another host's shared acme job ends
    /// ([`released_by_others`]).
    pub released: channel::Receiver<u64>,
    /// Bumped when a shared DKIM pass is due at once ([`dkim_pass_due`]),
    /// and at each connection (the context is there to use).
    pub dkim: channel::Receiver<u64>,
}

impl ClusterHandle {
    /// The context, while connected.
    pub fn ctx(&self) -> Option<Arc<Ctx>> {
        self.ctx.borrow().clone()
    }
}

/// Why a session with the cluster ended.
enum Ended {
    /// The daemon stops.
    Stop,
    /// The `[cluster]` table changed: connect again.
    Reconfigured,
}

/// The task: connect, list, watch, probe; mirror, answer, report.
pub struct ClusterTask {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub requests: mpsc::UnboundedSender<&'static str>,
    pub stop: channel::Receiver<bool>,
    ctx_tx: channel::Sender<Option<Arc<Ctx>>>,
    released: channel::Sender<u64>,
    dkim: channel::Sender<u64>,
    /// The DKIM book's revision last handed on (-1: none yet this session).
    dkim_seen: i64,
    /// The context handed out while connected (its fenced-write count).
    ctx: Option<Arc<Ctx>>,
    health: Health,
    view: View,
    tokens: http01::Tokens,
    responders: BTreeMap<SocketAddr, http01::Responder>,
    /// Tokens this host said it answers (`http01-ack/TOKEN/HOST`).
    acked: BTreeSet<String>,
}

impl ClusterTask {
    pub fn new(
        config: Arc<Config>,
        metrics: Arc<Metrics>,
        requests: mpsc::UnboundedSender<&'static str>,
        stop: channel::Receiver<bool>,
    ) -> (ClusterTask, ClusterHandle) {
        let (ctx_tx, ctx) = channel::channel(None);
        let (released_tx, released) = channel::channel(0);
        let (dkim_tx, dkim) = channel::channel(0);
        let handle = ClusterHandle {
            ctx,
            released,
            dkim,
        };
        let task = ClusterTask {
            config,
            metrics,
            requests,
            stop,
            ctx_tx,
            released: released_tx,
            dkim: dkim_tx,
            dkim_seen: -1,
            ctx: None,
            health: Health::default(),
            view: View::default(),
            tokens: http01::Tokens::default(),
            responders: BTreeMap::new(),
            acked: BTreeSet::new(),
        };
        (task, handle)
    }

    /// Until stopped: idle without `[cluster]`, else one session after
    /// another (a new one when `[cluster]` changes on SIGHUP).
    pub async fn run(mut self, mut config: channel::Receiver<Arc<Config>>) {
        loop {
            let Some(cluster) = self.config.cluster.clone() else {
                tokio::select! {
                    biased;
                    _ = self.stop.changed() => return,
                    Ok(()) = config.changed() => {
                        self.config = config.borrow_and_update().clone();
                        continue;
                    }
                }
            };
            match self.session(&cluster, &mut config).await {
                Ended::Stop => break,
                Ended::Reconfigured => {
                    tracing::info!("[cluster] changed: connecting again");
                    self.disconnect();
                }
            }
        }
        self.disconnect();
    }

    /// Hands no context out any more; the responders stop.
    fn disconnect(&mut self) {
        let _ = self.ctx_tx.send(None);
        self.ctx = None;
        self.responders.clear();
        self.view = View::default();
        self.dkim_seen = -1;
    }

    fn host(&self) -> String {
        self.config
            .host_id
            .as_ref()
            .map_or_else(String::new, |h| h.as_str().to_owned())
    }

    /// Connects (with retries), then lists, watches and probes until the
    /// daemon stops or `[cluster]` changes.
    async fn session(
        &mut self,
        cluster: &Cluster,
        config: &mut channel::Receiver<Arc<Config>>,
    ) -> Ended {
        let Some(host) = self.config.host_id.clone() else {
            self.report(Err(
                "no host_id (set `host_id`, or `hostname` to derive it)".to_owned(),
            ));
            return self.idle(config, cluster).await;
        };
        let mut seal = match crate::cluster::seal::SealKey::load(&cluster.shared_key_file) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(
                    "cluster: {e}; shared certificates are neither ordered nor installed"
                );
                self.health.last_error = Some(e.to_string());
                None
            }
        };
        let mut failures = 0u32;
        let backend = loop {
            let attempt = tokio::select! {
                biased;
                _ = self.stop.changed() => return Ended::Stop,
                b = Backend::connect(cluster, &host) => b,
            };
            match attempt {
                Ok(b) => break b,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let delay = retry_delay(failures);
                    tracing::error!(
                        "cluster: cannot connect: {e}; shared orders wait (trying again in {delay:?})"
                    );
                    self.report(Err(e.to_string()));
                    if let Some(end) = self.wait(delay, config, cluster).await {
                        return end;
                    }
                }
            }
        };
        tracing::info!(
            "cluster: connected to {} as {host}",
            cluster.endpoints.join(", ")
        );
        if let Some(seal) = seal.take() {
            let ctx = Arc::new(Ctx::new(backend.clone(), seal, host.clone()));
            self.ctx = Some(ctx.clone());
            let _ = self.ctx_tx.send(Some(ctx));
        }
        let probe_every = probe_interval(cluster.lease_ttl);
        let mut events: Option<mpsc::Receiver<Event>> = None;
        let mut next_probe = Instant::now();
        loop {
            if events.is_none() && self.health.reachable {
                // List first (a fresh view), then watch from there.
                self.probe(&backend).await;
                if self.health.reachable {
                    match backend.watch("", self.view.revision).await {
                        Ok(rx) => events = Some(rx),
                        Err(e) => self.report(Err(format!("watch: {e}"))),
                    }
                }
                next_probe = Instant::now() + probe_every;
            }
            tokio::select! {
                biased;
                _ = self.stop.changed() => return Ended::Stop,
                Ok(()) = config.changed() => {
                    self.config = config.borrow_and_update().clone();
                    if self.config.cluster.as_ref() != Some(cluster) {
                        return Ended::Reconfigured;
                    }
                }
                event = recv(&mut events), if events.is_some() => match event {
                    Some(event) => {
                        let before = self.view.locks.clone();
                        let changed = self.view.apply(&event);
                        self.act(&backend, changed, &before).await;
                    }
                    None => {
                        tracing::warn!("cluster: the watch ended; listing and watching again");
                        events = None;
                        self.report(Err("the watch ended".to_owned()));
                        sleep(Duration::from_secs(1)).await;
                        // The next probe decides whether to watch again.
                        next_probe = Instant::now();
                    }
                },
                _ = sleep_until(next_probe) => {
                    let was = self.health.reachable;
                    self.probe(&backend).await;
                    if !self.health.reachable {
                        // A watch on a member without quorum may stall:
                        // start again from a listing once it is back.
                        events = None;
                    } else if !was {
                        tracing::info!("cluster: reachable again");
                    }
                    next_probe = Instant::now() + probe_every;
                }
            }
        }
    }

    /// Without what a session needs: wait for a stop or a new `[cluster]`.
    async fn idle(
        &mut self,
        config: &mut channel::Receiver<Arc<Config>>,
        cluster: &Cluster,
    ) -> Ended {
        loop {
            if let Some(end) = self
                .wait(Duration::from_secs(86_400), config, cluster)
                .await
            {
                return end;
            }
        }
    }

    /// Sleeps `delay` unless the daemon stops or `[cluster]` changes.
    async fn wait(
        &mut self,
        delay: Duration,
        config: &mut channel::Receiver<Arc<Config>>,
        cluster: &Cluster,
    ) -> Option<Ended> {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.changed() => return Some(Ended::Stop),
                Ok(()) = config.changed() => {
                    self.config = config.borrow_and_update().clone();
                    if self.config.cluster.as_ref() != Some(cluster) {
                        return Some(Ended::Reconfigured);
                    }
                }
                _ = sleep_until(until) => return None,
            }
        }
    }

    /// Lists the whole prefix: the health, and the view made whole again.
    async fn probe(&mut self, backend: &Backend) {
        match backend.list("").await {
            Ok(listing) => {
                self.report(Ok(()));
                self.register_responder(backend, &listing).await;
                let before = self.view.locks.clone();
                let changed = self.view.relist(&listing);
                self.act(backend, changed, &before).await;
            }
            Err(e) => {
                if self.health.reachable || self.health.since == 0 {
                    tracing::error!(
                        "cluster: {e}; shared orders wait, installed certificates stay"
                    );
                }
                self.report(Err(e.to_string()));
            }
        }
    }

    /// Does what a change asks for: mirror and reconcile, the responders,
    /// the leading jobs, and an ACME pass when another host's shared job
    /// was given up or lost (`before`: the locks before the change).
    async fn act(
        &mut self,
        backend: &Backend,
        changed: Changed,
        before: &BTreeMap<String, String>,
    ) {
        if changed.acme {
            self.mirror(backend).await;
        }
        if changed.locks && released_by_others(before, &self.view.locks, &self.host()) {
            // The ACME task's pass mirrors first, so a certificate the
            // leader stored is taken, not ordered again.
            self.released.send_modify(|n| *n += 1);
        }
        let unbound = || {
            responder_addrs(&self.config, &self.view, &self.host())
                .iter()
                .any(|a| !self.responders.contains_key(a))
        };
        if changed.tokens || changed.locks || unbound() {
            self.answer_tokens(backend).await;
        }
        if changed.locks {
            self.report_leading();
        }
        let shared_dkim = self.config.dkim.as_ref().is_some_and(|d| d.shared);
        if shared_dkim
            && self.ctx.is_some()
            && dkim_pass_due(self.dkim_seen, &self.view, before, &self.host())
        {
            self.dkim_seen = self.view.dkim_book;
            self.dkim.send_modify(|n| *n += 1);
        }
    }

    /// Installs what `acme/` holds: the shared certificates better than
    /// those held are written into their sources
    /// ([`crate::cluster::acme::mirror`]), then the reconcile task installs
    /// them through the pipeline.
    async fn mirror(&mut self, backend: &Backend) {
        let Some(ctx) = &self.ctx else {
            return;
        };
        let mirrored = crate::cluster::acme::mirror(&self.config, backend, &ctx.seal).await;
        if !mirrored.installed.is_empty() {
            let _ = self.requests.send("shared certificate");
        }
    }

    /// The token map, the responders and the shared webroots follow the
    /// view; then this host says which tokens it answers, so the leader
    /// asks the CA only once every answering host has them
    /// ([`crate::cluster::acme::wait_for_answers`]).
    async fn answer_tokens(&mut self, backend: &Backend) {
        let before = match self.tokens.lock() {
            Ok(mut t) => std::mem::replace(&mut *t, self.view.tokens.clone().into_iter().collect()),
            Err(_) => Default::default(),
        };
        self.answer_webroots(&before);
        let want = responder_addrs(&self.config, &self.view, &self.host());
        self.responders.retain(|addr, _| want.contains(addr));
        for addr in want {
            if self.responders.contains_key(&addr) {
                continue;
            }
            match http01::Responder::start(addr, self.tokens.clone()).await {
                Ok(r) => {
                    tracing::info!("cluster: answering shared http-01 tokens on {addr}");
                    self.responders.insert(addr, r);
                }
                // Tried again at the next change or probe.
                Err(e) => tracing::warn!("cluster: {e}"),
            }
        }
        self.acknowledge(backend).await;
    }

    /// Acknowledges the tokens this host answers (every responder it wants
    /// bound, or a shared webroot source it does not lead), and withdraws
    /// the acknowledgements of tokens gone.
    async fn acknowledge(&mut self, backend: &Backend) {
        let host = self.host();
        let want = responder_addrs(&self.config, &self.view, &host);
        let bound = want.iter().all(|a| self.responders.contains_key(a));
        let answering = bound && !answering_sources(&self.config, &self.view, &host).is_empty();
        let gone: Vec<String> = self
            .acked
            .iter()
            .filter(|t| !answering || !self.view.tokens.contains_key(*t))
            .cloned()
            .collect();
        for token in gone {
            if backend.delete(&ack_key(&token, &host)).await.is_ok() {
                self.acked.remove(&token);
            }
        }
        if !answering {
            return;
        }
        let new: Vec<String> = self
            .view
            .tokens
            .keys()
            .filter(|t| !self.acked.contains(*t))
            .cloned()
            .collect();
        for token in new {
            match backend.put_leased(&ack_key(&token, &host), b"").await {
                Ok(()) => {
                    self.acked.insert(token);
                }
                Err(e) => tracing::warn!("cluster: cannot acknowledge an http-01 token: {e}"),
            }
        }
    }

    /// Registers this host under `responders/SOURCE/` for each shared
    /// http-01 source (on its lease: a new lease after a pause registers
    /// again at the next listing).
    async fn register_responder(&mut self, backend: &Backend, listing: &[(String, Stored)]) {
        let host = self.host();
        for s in self.config.acme_sources().filter(|s| s.shared) {
            if !matches!(
                s.challenge,
                Challenge::Http01Listen(_) | Challenge::Http01Webroot(_)
            ) {
                continue;
            }
            let key = responder_key(&s.name, &host);
            if listing.iter().any(|(k, _)| *k == key) {
                continue;
            }
            if let Err(e) = backend.put_leased(&key, b"").await {
                tracing::warn!("cluster: cannot register as an http-01 responder: {e}");
            }
        }
    }

    /// Token files in each shared http-01 webroot this host does not lead
    /// (the leader's order writes and removes its own): new tokens
    /// written, gone ones removed.
    fn answer_webroots(&self, before: &std::collections::HashMap<String, String>) {
        let host = self.host();
        for s in self.config.acme_sources().filter(|s| s.shared) {
            let Challenge::Http01Webroot(root) = &s.challenge else {
                continue;
            };
            if self.view.locks.get(&acme_job(&s.name)) == Some(&host) {
                continue;
            }
            let new: Vec<(String, String)> = self
                .view
                .tokens
                .iter()
                .filter(|(t, ka)| before.get(*t) != Some(*ka))
                .map(|(t, ka)| (t.clone(), ka.clone()))
                .collect();
            if !new.is_empty()
                && let Err(e) = http01::write_webroot_tokens(root, &new)
            {
                tracing::warn!("cluster: {e}");
            }
            http01::remove_webroot_tokens(
                root,
                before
                    .keys()
                    .filter(|t| !self.view.tokens.contains_key(*t))
                    .map(String::as_str),
            );
        }
    }

    fn report_leading(&mut self) {
        let leading = self.view.leading(&self.host());
        if leading != self.health.leading {
            self.health.leading = leading;
            self.save();
        }
    }

    /// Records the outcome of a request: health, file, metrics.
    fn report(&mut self, outcome: Result<(), String>) {
        let mut next = observe(&self.health, outcome, crate::now());
        next.fenced_writes = self.fenced();
        if !next.reachable {
            // Nothing is known to be led without the cluster.
            next.leading.clear();
        }
        if next != self.health {
            self.health = next;
            self.save();
        }
    }

    /// Fenced writes refused since start (counted by the shared order
    /// path in the context).
    fn fenced(&self) -> u64 {
        self.ctx
            .as_ref()
            .map_or(self.health.fenced_writes, |c| c.fenced())
    }

    /// Writes `state_dir/cluster.json` (atomically) and the metrics.
    fn save(&mut self) {
        self.health.fenced_writes = self.fenced();
        self.metrics
            .set_cluster(&self.health, &shared_jobs(&self.config));
        if let Err(e) = self
            .config
            .state_dir
            .cluster_record::<Health>()
            .save(&self.health)
        {
            tracing::warn!("cluster: cannot record the cluster's health: {e}");
        }
    }
}

/// The next event of a watch that exists.
async fn recv(events: &mut Option<mpsc::Receiver<Event>>) -> Option<Event> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(value: &str, revision: i64) -> Stored {
        Stored {
            value: value.as_bytes().to_vec(),
            revision,
        }
    }

    fn put(key: &str, value: &str, revision: i64) -> Event {
        Event::Put {
            key: key.to_owned(),
            stored: stored(value, revision),
        }
    }

    fn del(key: &str) -> Event {
        Event::Delete {
            key: key.to_owned(),
        }
    }

    #[test]
    fn retries_wait_longer_after_each_failure_up_to_half_a_minute() {
        let secs: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY);
    }

    #[test]
    fn the_probe_runs_three_times_per_lease_between_one_and_ten_seconds() {
        for (ttl, every) in [(3, 1), (15, 5), (60, 10), (1, 1)] {
            assert_eq!(
                probe_interval(Duration::from_secs(ttl)),
                Duration::from_secs(every),
                "lease {ttl} s"
            );
        }
    }

    #[test]
    fn keys_are_told_apart_by_the_layout() {
        for (key, kind) in [
            ("acme/mx", Key::Acme("mx")),
            ("/acme/mx", Key::Acme("mx")),
            ("http01/tok-1", Key::Http01("tok-1")),
            ("lock/acme/mx", Key::Lock("acme/mx")),
            ("lock/dkim", Key::Lock("dkim")),
            ("acme/", Key::Other),
            ("dkim/book", Key::DkimBook),
            ("dkim/key/s1.example.test", Key::Other),
            ("acmex/mx", Key::Other),
        ] {
            assert_eq!(classify(key), kind, "{key}");
        }
    }

    #[test]
    fn each_event_says_what_it_changed_and_a_repeat_changes_nothing() {
        let mut view = View::default();
        // (event, acme, tokens, locks)
        let steps = [
            (put("lock/acme/mx", "a", 5), false, false, true),
            (put("lock/acme/mx", "a", 5), false, false, false),
            (put("http01/t1", "t1.thumb", 6), false, true, false),
            (put("http01/t1", "t1.thumb", 6), false, false, false),
            (put("acme/mx", "{}", 7), true, false, false),
            (put("acme/mx", "{}", 7), false, false, false),
            (put("acme/mx", "{}", 9), true, false, false),
            (put("dkim/book", "{}", 10), false, false, false),
            (del("http01/t1"), false, true, false),
            (del("http01/t1"), false, false, false),
            (del("lock/acme/mx"), false, false, true),
            (del("acme/mx"), true, false, false),
        ];
        for (i, (event, acme, tokens, locks)) in steps.into_iter().enumerate() {
            let changed = view.apply(&event);
            assert_eq!(
                changed,
                Changed {
                    acme,
                    tokens,
                    locks
                },
                "step {i}: {event:?}"
            );
        }
        assert_eq!(view.revision, 10);
    }

    #[test]
    fn a_shared_dkim_pass_is_due_when_the_book_moves_or_anothers_dkim_lock_goes() {
        let locks = |l: &[(&str, &str)]| -> BTreeMap<String, String> {
            l.iter()
                .map(|(j, h)| ((*j).to_owned(), (*h).to_owned()))
                .collect()
        };
        // (seen, book now, locks before, locks now, due)
        let cases = [
            (-1, 0, locks(&[]), locks(&[]), true),
            (-1, 7, locks(&[]), locks(&[]), true),
            (7, 7, locks(&[]), locks(&[]), false),
            (7, 9, locks(&[]), locks(&[]), true),
            (7, 0, locks(&[]), locks(&[]), true),
            (7, 7, locks(&[("dkim", "b")]), locks(&[]), true),
            (7, 7, locks(&[("dkim", "b")]), locks(&[("dkim", "c")]), true),
            (
                7,
                7,
                locks(&[("dkim", "b")]),
                locks(&[("dkim", "b")]),
                false,
            ),
            (7, 7, locks(&[("dkim", "a")]), locks(&[]), false),
            (7, 7, locks(&[("acme/mx", "b")]), locks(&[]), false),
            (7, 7, locks(&[]), locks(&[("dkim", "b")]), false),
        ];
        for (i, (seen, book, before, now, due)) in cases.into_iter().enumerate() {
            let view = View {
                dkim_book: book,
                locks: now,
                ..View::default()
            };
            assert_eq!(dkim_pass_due(seen, &view, &before, "a"), due, "case {i}");
        }
        let mut view = View::default();
        view.apply(&put("dkim/book", "{}", 12));
        assert_eq!(view.dkim_book, 12);
        view.apply(&put("dkim/key/s1.example.test", "x", 13));
        assert_eq!(view.dkim_book, 12, "a key is not the book");
        view.apply(&del("dkim/book"));
        assert_eq!(view.dkim_book, 0);
        view.relist(&[("dkim/book".to_owned(), stored("{}", 15))]);
        assert_eq!(view.dkim_book, 15);
    }

    #[test]
    fn a_listing_replaces_the_view_and_says_what_differs() {
        let mut view = View::default();
        let first = [
            ("acme/mx".to_owned(), stored("{}", 3)),
            ("lock/acme/mx".to_owned(), stored("a\n", 2)),
            ("http01/t1".to_owned(), stored("t1.x", 4)),
        ];
        assert_eq!(
            view.relist(&first),
            Changed {
                acme: true,
                tokens: true,
                locks: true
            }
        );
        assert_eq!(view.leading("a"), ["acme/mx"]);
        assert!(view.leading("b").is_empty());
        assert_eq!(view.relist(&first), Changed::default(), "the same listing");
        // The lock passed to b, the token expired with a's lease.
        let second = [
            ("acme/mx".to_owned(), stored("{}", 3)),
            ("lock/acme/mx".to_owned(), stored("b", 8)),
        ];
        assert_eq!(
            view.relist(&second),
            Changed {
                acme: false,
                tokens: true,
                locks: true
            }
        );
        assert_eq!(view.leading("b"), ["acme/mx"]);
        assert_eq!(view.revision, 8);
    }

    /// Two shared http-01 sources, one shared dns-01, one not shared.
    fn http_config() -> Config {
        let host = crate::config::Host {
            cwd: std::path::PathBuf::from("/srv"),
            hostname: crate::names::DnsName::parse("mx1.example.test").ok(),
        };
        let source = |name: &str, extra: &str| {
            format!(
                "[[source]]\ntype = \"acme\"\nname = \"{name}\"\ndomains = [\"{name}.example.test\"]\n{extra}\n"
            )
        };
        let text = format!(
            "state_dir = \"/var/lib/mxkeys\"\n\
             [cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nshared_key_file = \"/etc/mxkeys/shared.key\"\n\
             [acme]\ndirectory = \"https://acme.example.test/dir\"\nemail = \"a@example.test\"\n\
             [dns.ns]\ntype = \"manual\"\n\
             {}{}{}{}",
            source(
                "a",
                "challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:5001\"\nshared = true"
            ),
            source(
                "b",
                "challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:5002\"\nshared = true"
            ),
            source("c", "challenge = \"dns-01\"\ndns = \"ns\"\nshared = true"),
            source(
                "d",
                "challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:5004\""
            ),
        );
        Config::parse(std::path::Path::new("/etc/mxkeys/t.toml"), &text, &host).unwrap()
    }

    #[test]
    fn shared_tokens_are_answered_on_each_shared_http01_address_this_host_does_not_lead() {
        let config = http_config();
        assert_eq!(shared_jobs(&config), ["acme/a", "acme/b", "acme/c"]);
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let view = |tokens: bool, locks: &[(&str, &str)]| View {
            tokens: if tokens {
                [("t1".to_owned(), "t1.x".to_owned())].into()
            } else {
                BTreeMap::new()
            },
            locks: locks
                .iter()
                .map(|(j, h)| ((*j).to_owned(), (*h).to_owned()))
                .collect(),
            ..View::default()
        };
        // (what, view, addresses for host mx1)
        for (what, v, want) in [
            (
                "no token, no order: nothing bound",
                view(false, &[]),
                vec![],
            ),
            (
                "no token yet, another host's order of b under way",
                view(false, &[("acme/b", "mx2")]),
                vec![addr(5002)],
            ),
            (
                "tokens, another host leads a",
                view(true, &[("acme/a", "mx2")]),
                vec![addr(5001), addr(5002)],
            ),
            (
                "tokens, this host leads a: its order's responder is there",
                view(true, &[("acme/a", "mx1")]),
                vec![addr(5002)],
            ),
        ] {
            let got: Vec<SocketAddr> = responder_addrs(&config, &v, "mx1").into_iter().collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn another_hosts_acme_job_ending_is_a_release_and_ones_own_or_dkims_is_not() {
        let locks = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(j, h)| ((*j).to_owned(), (*h).to_owned()))
                .collect()
        };
        // (what, before, after, released for host a)
        for (what, before, after, released) in [
            (
                "b's lock gone",
                locks(&[("acme/mx", "b")]),
                locks(&[]),
                true,
            ),
            (
                "b's lock taken by c",
                locks(&[("acme/mx", "b")]),
                locks(&[("acme/mx", "c")]),
                true,
            ),
            (
                "a's own lock gone",
                locks(&[("acme/mx", "a")]),
                locks(&[]),
                false,
            ),
            (
                "dkim's lock gone",
                locks(&[("dkim", "b")]),
                locks(&[]),
                false,
            ),
            (
                "b's lock still there",
                locks(&[("acme/mx", "b")]),
                locks(&[("acme/mx", "b")]),
                false,
            ),
            ("a new lock", locks(&[]), locks(&[("acme/mx", "b")]), false),
        ] {
            assert_eq!(released_by_others(&before, &after, "a"), released, "{what}");
        }
    }

    #[test]
    fn health_moves_its_since_only_when_reachability_flips_and_keeps_the_last_error() {
        let start = Health::default();
        let h1 = observe(&start, Ok(()), 100);
        assert!(h1.reachable);
        assert_eq!(h1.since, 100);
        let h2 = observe(&h1, Ok(()), 110);
        assert_eq!(h2.since, 100, "still reachable: since unchanged");
        let h3 = observe(&h2, Err("cluster unavailable: no quorum".to_owned()), 120);
        assert!(!h3.reachable);
        assert_eq!(h3.since, 120);
        let h4 = observe(&h3, Err("cluster unavailable: timeout".to_owned()), 130);
        assert_eq!(h4.since, 120);
        assert_eq!(
            h4.last_error.as_deref(),
            Some("cluster unavailable: timeout")
        );
        let h5 = observe(&h4, Ok(()), 140);
        assert!(h5.reachable);
        assert_eq!(h5.since, 140);
        assert_eq!(
            h5.last_error.as_deref(),
            Some("cluster unavailable: timeout"),
            "the last error stays after recovery"
        );
        // Never reached: unreachable since the first failure.
        let never = observe(&start, Err("x".to_owned()), 50);
        assert_eq!((never.reachable, never.since), (false, 50));
    }
}
