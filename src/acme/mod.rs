//! Ordering certificates from an ACME CA (RFC 8555) for `type = "acme"`
//! sources, with instant-acme.
//!
//! [`renew`] looks at every `acme` source: what it holds, what failed
//! before, and (when the CA offers ARI) the CA's renewal window; orders what
//! is due, all due sources at once; stores each issued certificate in the
//! source's `bundle.pem` (key and chain in one file, written atomically).
//! The targets pick it up through the ordinary pipeline. Nothing touches the
//! network when nothing is due.
//!
//! The rule: every failure backs off. A failed account (bad directory,
//! missing EAB secret, rate limit), lock or order records a failure with
//! [`schedule::backoff`] (and the CA's Retry-After) on each source that
//! needed the CA; a failed ARI fetch moves that source's next fetch. The
//! decisions are [`schedule`]'s pure functions; this module does the I/O.
//! Before the CA is contacted, each source about to order is recorded as
//! failed once more, so a run killed mid-order leaves a backoff behind and
//! the next start never orders again at once; the pass's outcome replaces
//! that record.
//!
//! `state.json` keeps, with the certificate held, the directory, account
//! and profile it came from ([`schedule::Issuance`]): `replaces` names
//! only such a certificate, and a change of directory or profile orders
//! anew. An order about to be finalized is recorded (its URL in
//! `state.json`, its key in `order-key.pem`, mode 0600) and fetched again
//! on the next pass when its certificate was not stored.
//!
//! DANE: a source serving `[target.dane]` targets keeps a standby key
//! (made under the ACME lock before any order) and renews with its current
//! key; a rollover (`mxkeys dane rollover`, or every `key_rollover`
//! renewals) orders with the standby key, and once that certificate is
//! stored a new standby key is made ([`standby`]; the rules are
//! [`schedule::key_choice`] and [`schedule::standby_needed`]).
//!
//! Shared sources (`shared = true`, issue 18): given a cluster
//! ([`renew_with`]), every shared source first takes what the cluster
//! holds; one still due orders only on the host leading job `acme/NAME`,
//! which stores the result in the cluster ([`crate::cluster::acme`]).
//! Without a cluster context they are not ordered.

pub mod account;
pub mod dns01;
pub mod http01;
pub mod order;
pub mod schedule;
pub mod standby;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cert::{self, Leaf};
use crate::config::{AcmeKeyType, AcmeSource, Challenge, Config};
use crate::source::acme::{bundle_path, read_bundle};
use schedule::{Due, Held, Issuance, Reason, Wanted};
pub use standby::{RolloverError, standby_spki};

/// Why an `acme` source got no certificate this pass, or why `renew` did
/// not run: the source's state file, the lock, the account, the DNS
/// provider, the responder or the order. Rendered to text where it is
/// printed, logged or recorded as the source's `last_error`. Cloneable:
/// one failure before ordering (the lock, the account) is every waiting
/// source's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AcmeError {
    #[error("no acme source named {name:?} (configured: {})", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownSource { name: String, known: Vec<String> },
    #[error("acme lock: {0}")]
    Lock(#[source] Arc<std::io::Error>),
    #[error(transparent)]
    Account(#[from] account::AccountError),
    #[error(transparent)]
    Dns(#[from] crate::dns::BuildError),
    #[error("http-01: cannot listen on {0}")]
    CannotListen(std::net::SocketAddr),
    #[error(transparent)]
    Order(#[from] order::OrderError),
    /// The source's directory could not be made.
    #[error("{}: {source}", .dir.display())]
    SourceDir {
        dir: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The source's record could not be saved (its file and why).
    #[error("{0}")]
    SaveState(#[source] Arc<crate::state::RecordError>),
    #[error("{}: cannot keep the order's key: {source}", .path.display())]
    KeepOrderKey {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{}: cannot store the certificate: {source}", .path.display())]
    StoreCertificate {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The DANE standby key could not be made, or used for a rollover.
    #[error("{}: standby key: {why}", .path.display())]
    StandbyKey { path: PathBuf, why: String },
}

/// Makes a source's directory (0700).
fn ensure_source_dir(source: &AcmeSource) -> Result<(), AcmeError> {
    source.dir.ensure().map_err(|e| AcmeError::SourceDir {
        dir: source.dir.path().to_owned(),
        source: Arc::new(e),
    })
}

/// What is kept per `acme` source in `state_dir/acme/NAME/state.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceState {
    /// Consecutive failures (account, lock, order).
    #[serde(default)]
    pub failures: u32,
    /// No order before this time (set after a failure).
    #[serde(default)]
    pub next_attempt_at: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_issued_at: Option<i64>,
    /// How the certificate held was ordered, and from whom.
    #[serde(default)]
    pub issuance: Option<Issuance>,
    /// An order about to be finalized whose certificate was not stored yet.
    #[serde(default)]
    pub pending_order: Option<PendingOrder>,
    /// The CA's renewal window for the certificate held, and the point
    /// chosen in it.
    #[serde(default)]
    pub ari: Option<Ari>,
    /// When the CA last said it offers no ARI (asked again a day later).
    #[serde(default)]
    pub no_ari_since: Option<i64>,
    /// Consecutive failed ARI fetches.
    #[serde(default)]
    pub ari_failures: u32,
    /// No ARI fetch before this time (set after a failed one).
    #[serde(default)]
    pub ari_retry_at: Option<i64>,
    /// DANE: renewals that kept the key since the certificate's key was
    /// new (a rollover to the standby key), for `key_rollover`.
    #[serde(default)]
    pub renewals_since_rollover: u32,
}

/// ARI (RFC 9773) facts for one certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ari {
    /// The certificate they are about.
    pub sha256: String,
    pub window_start: i64,
    pub window_end: i64,
    /// When to renew: a random point of the window, kept while the window
    /// stays.
    pub chosen: i64,
    /// When to ask the CA again (its Retry-After).
    pub refetch_at: i64,
    /// The CA's page explaining the window, when it gave one.
    #[serde(default)]
    pub explanation_url: Option<String>,
}

/// An order recorded before finalizing: its URL and what it was for (its
/// key is in `order-key.pem`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingOrder {
    pub url: String,
    pub directory: String,
    pub account: String,
    #[serde(default)]
    pub profile: Option<String>,
    pub names: Vec<String>,
    pub key_type: String,
}

impl SourceState {
    /// The source's record; empty when missing, unreadable or corrupt.
    pub fn load(source: &AcmeSource) -> SourceState {
        source
            .dir
            .record()
            .load()
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn save(&self, source: &AcmeSource) -> Result<(), AcmeError> {
        source
            .dir
            .record()
            .save(self)
            .map_err(|e| AcmeError::SaveState(Arc::new(e)))
    }

    /// Records the `failures`-th consecutive failure and its backoff.
    fn failed(&mut self, error: &str, retry_after: Option<i64>, now: i64) -> i64 {
        self.failures += 1;
        let next = schedule::next_attempt(now, self.failures, retry_after);
        self.next_attempt_at = Some(next);
        self.last_error = Some(error.to_owned());
        next
    }

    /// Records a failed ARI fetch.
    fn ari_failed(&mut self, retry_after: Option<i64>, now: i64) -> i64 {
        self.ari_failures += 1;
        let next = schedule::ari_retry(now, self.ari_failures, retry_after);
        self.ari_retry_at = Some(next);
        next
    }

    /// The recorded issuance, when it is about the certificate held.
    fn issuance_of(&self, held: Option<&Holding>) -> Option<&Issuance> {
        let held = held?;
        self.issuance.as_ref().filter(|i| i.sha256 == held.sha256)
    }

    /// The ARI point, when it is about the certificate held.
    fn ari_of(&self, held: Option<&Holding>) -> Option<&Ari> {
        let held = held?;
        self.ari.as_ref().filter(|a| a.sha256 == held.sha256)
    }
}

/// Where the key of a recorded order is kept until its certificate is.
fn order_key_path(source: &AcmeSource) -> PathBuf {
    source.dir.order_key()
}

/// Forgets a recorded order and saves the state at once (a resume that
/// gives up stores nothing else).
fn forget_order_for_good(source: &AcmeSource, state: &mut SourceState) {
    forget_order(source, state);
    if let Err(e) = state.save(source) {
        tracing::warn!("acme source {}: {e}", source.name);
    }
}

fn forget_order(source: &AcmeSource, state: &mut SourceState) {
    state.pending_order = None;
    let path = order_key_path(source);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("acme source {}: {}: {e}", source.name, path.display());
    }
}

/// The name a key type is recorded under.
fn key_type_name(key_type: AcmeKeyType) -> String {
    format!("{key_type:?}")
}

/// What a source holds now: its facts and the material to renew from.
struct Holding {
    facts: Held,
    sha256: String,
    previous: order::Previous,
}

fn holding(source: &AcmeSource) -> Option<Holding> {
    let (certs, key) = read_bundle(&bundle_path(source)).ok()?;
    let leaf_der = certs.first()?.clone();
    let leaf = Leaf::parse(leaf_der.as_ref()).ok()?;
    Some(Holding {
        facts: Held {
            names: leaf.names.clone(),
            not_before: leaf.validity.not_before,
            not_after: leaf.validity.not_after,
            key_type_matches: source.key_type.matches(leaf.key_type),
        },
        sha256: cert::fingerprint(leaf_der.as_ref()),
        previous: order::Previous {
            leaf: leaf_der,
            key_pem: key.to_pem(),
        },
    })
}

/// The facts of a source for [`schedule`], passed to `decide`.
fn with_facts<T>(
    config: &Config,
    source: &AcmeSource,
    held: Option<&Holding>,
    state: &SourceState,
    force: bool,
    now: i64,
    decide: impl FnOnce(&schedule::Facts<'_>) -> T,
) -> T {
    let acme = &config.acme;
    let rollover = standby::requested(config, source);
    let key_type = key_type_name(source.key_type);
    decide(&schedule::Facts {
        now,
        held: held.map(|h| &h.facts),
        wanted: Wanted {
            names: &source.domains,
            directory: &acme.directory,
            profile: acme.profile.as_deref(),
            key_type: &key_type,
        },
        issuance: state.issuance_of(held),
        ari_chosen: state.ari_of(held).map(|a| a.chosen),
        next_attempt: state.next_attempt_at,
        force,
        rollover,
    })
}

/// The decision for a source, from its files and state alone.
fn decide(
    config: &Config,
    source: &AcmeSource,
    held: Option<&Holding>,
    state: &SourceState,
    force: bool,
    now: i64,
) -> Due {
    with_facts(config, source, held, state, force, now, schedule::due)
}

/// What renewing one source did.
#[derive(Debug)]
pub struct Outcome {
    pub source: String,
    pub due: Due,
    /// `None` when no order was placed.
    pub result: Option<Result<Issued, AcmeError>>,
    /// Failing (this pass, or backing off) while the certificate it would
    /// replace is missing or within its renewal window.
    pub urgent: bool,
    /// A shared source not ordered here: why ("shared: mx1 orders it").
    pub shared: Option<String>,
}

/// Summary of an issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub sha256: String,
    pub not_after: i64,
}

/// Whether any source fails where it matters: `renew` exits 1.
pub fn failing(outcomes: &[Outcome]) -> bool {
    outcomes.iter().any(|o| o.urgent)
}

/// When each `acme` source is next due (or its backoff ends, or its ARI
/// window should be asked again): what `status` and the metrics show.
pub fn next_due(config: &Config) -> BTreeMap<String, i64> {
    times(config)
        .into_iter()
        .map(|(name, due, _)| (name, due))
        .collect()
}

/// When the daemon should look again: the first source due, or with an
/// ARI window to ask for, an order to fetch again, or a certificate
/// stored early becoming valid.
pub fn next_check(config: &Config) -> Option<i64> {
    times(config).into_iter().map(|(_, _, check)| check).min()
}

/// Per source: (name, next due, next check).
fn times(config: &Config) -> Vec<(String, i64, i64)> {
    let now = crate::now();
    config
        .acme_sources()
        .map(|s| {
            let state = SourceState::load(s);
            let held = holding(s);
            let due = decide(config, s, held.as_ref(), &state, false, now);
            let mut at = match due {
                Due::Now(_) => now,
                Due::Later(at) => at,
                Due::BackingOff { until } => until,
            };
            if let Some(ari) = state.ari_of(held.as_ref()) {
                at = at.min(ari.refetch_at.max(state.ari_retry_at.unwrap_or(i64::MIN)));
            }
            let mut check = at;
            // The first ARI fetch (as `renew` decides it is stale), not
            // before a failed one's retry time.
            if held.is_some()
                && state.ari_of(held.as_ref()).is_none()
                && matches!(due, Due::Later(_))
            {
                let fetch = state.no_ari_since.map_or(now, |t| t + 86_400);
                check = check.min(fetch.max(state.ari_retry_at.unwrap_or(i64::MIN)));
            }
            if state.pending_order.is_some() {
                check = check.min(state.next_attempt_at.unwrap_or(now));
            }
            // A certificate stored a little before its notBefore (clock
            // skew): the reconcile after it installs it.
            if let Some(h) = &held
                && h.facts.not_before > now
            {
                check = check.min(h.facts.not_before + 1);
            }
            (s.name.clone(), at, check)
        })
        .collect()
}

/// One source's pass.
struct Work<'c> {
    source: &'c AcmeSource,
    held: Option<Holding>,
    state: SourceState,
    due: Due,
    /// A recorded order to fetch again first.
    resume: bool,
    /// Needs its ARI window asked.
    ari_stale: bool,
    /// Settled this pass (a resumed order, or a failure before ordering).
    result: Option<Result<Issued, AcmeError>>,
    /// A shared source: not ordered here, and why.
    held_back: Option<String>,
    /// A shared source this host orders: its leadership and the revision
    /// of `acme/NAME` it read after winning it.
    lead: Option<(crate::cluster::Leadership, Option<i64>)>,
}

impl Work<'_> {
    /// Orders this pass: due, not settled, and (a shared source) led by
    /// this host.
    fn ordering(&self) -> bool {
        self.result.is_none()
            && self.held_back.is_none()
            && (!self.source.shared || self.lead.is_some())
            && matches!(self.due, Due::Now(_))
    }
}

/// Orders what is due (everything selected, with `force`); `only` limits
/// it to one source. Returns one outcome per source looked at.
///
/// The phases, in order: look at each source ([`gather_work`]); stop there
/// when none needs the CA; take the lock and the account (a failure there
/// is every waiting source's, [`fail_all`]); ask for stale renewal windows
/// ([`refresh_ari`]); take the certificates of orders finalized before
/// ([`resume`]); start what the challenges need ([`start_responders`],
/// [`build_providers`]); place the orders ([`place_orders`]).
pub async fn renew(
    config: &Config,
    force: bool,
    only: Option<&str>,
) -> Result<Vec<Outcome>, AcmeError> {
    renew_with(config, force, only, None).await
}

/// [`renew`] with the cluster (`sync`, `renew` and the daemon with
/// `[cluster]`): shared sources take what the cluster holds first, and
/// only the leader of a due one orders it and stores the result. Without
/// `cluster`, shared sources are not ordered (the cluster could not be
/// reached: everything installed stays).
pub async fn renew_with(
    config: &Config,
    force: bool,
    only: Option<&str>,
    cluster: Option<&crate::cluster::acme::Ctx>,
) -> Result<Vec<Outcome>, AcmeError> {
    let mut leads = Vec::new();
    let result = renew_pass(config, force, only, cluster, &mut leads).await;
    // Every job taken is given up, whatever the pass came to.
    if let Some(ctx) = cluster {
        use crate::cluster::SharedStore as _;
        for lead in leads {
            if let Err(e) = ctx.store.resign(&lead).await {
                tracing::warn!("cluster: giving up job {}: {e}", lead.job);
            }
        }
    }
    result
}

/// [`renew_with`]'s pass; the jobs it leads are pushed on `leads`.
async fn renew_pass(
    config: &Config,
    force: bool,
    only: Option<&str>,
    cluster: Option<&crate::cluster::acme::Ctx>,
    leads: &mut Vec<crate::cluster::Leadership>,
) -> Result<Vec<Outcome>, AcmeError> {
    let now = crate::now();
    let mut work = gather_work(config, force, only, now)?;
    if let Some(ctx) = cluster {
        // What the cluster holds first: a source it makes good is not due.
        let mirrored = crate::cluster::acme::mirror(config, &ctx.store, &ctx.seal).await;
        if !mirrored.installed.is_empty() {
            work = gather_work(config, force, only, now)?;
        }
    }
    hold_back_shared(config, &mut work, cluster, force, now, leads).await;
    let needs_network =
        |work: &[Work<'_>]| work.iter().any(|w| w.resume || w.ari_stale || w.ordering());
    let needs_standby = work
        .iter()
        .any(|w| standby::needs_settling(config, w.source));
    if !needs_network(&work) && !needs_standby {
        return Ok(outcomes(work, now));
    }
    let _lock = match config.state_dir.lock_acme() {
        Ok(lock) => lock,
        Err(e) => return Ok(fail_all(work, &AcmeError::Lock(Arc::new(e)), None, now)),
    };
    if needs_standby {
        // Under the lock: a rollover a stopped run stored is settled, and
        // missing or spent standby keys are made before any order.
        for w in &work {
            if let Err(e) = standby::settle(config, w.source) {
                tracing::error!("acme source {}: {e}", w.source.name);
            }
        }
        let shared: BTreeMap<String, _> = work
            .iter_mut()
            .map(|w| (w.source.name.clone(), (w.held_back.take(), w.lead.take())))
            .collect();
        work = gather_work(config, force, only, now)?;
        for w in &mut work {
            if let Some((held_back, lead)) = shared.get(&w.source.name) {
                (w.held_back, w.lead) = (held_back.clone(), lead.clone());
            }
        }
        if !needs_network(&work) {
            return Ok(outcomes(work, now));
        }
    }
    mark_in_flight(&work, now);
    let (account, retry_after) =
        account::observing(account::load_or_create(&config.acme, &config.state_dir)).await;
    let account = match account {
        Ok(account) => account,
        Err(e) => return Ok(fail_all(work, &e.into(), retry_after, now)),
    };
    refresh_ari(config, &account, &mut work, force, now).await;
    // Orders finalized before whose certificate was not stored.
    for w in &mut work {
        if w.resume {
            resume(config, &account, w, now).await;
        }
    }
    let profile = offered_profile(config, &account);
    // One built-in responder per listen address, while the orders run.
    let tokens: http01::Tokens = Arc::default();
    let responders = start_responders(&work, &tokens).await;
    let providers = build_providers(config, &work);
    // Sources the ARI answers made due since.
    mark_in_flight(&work, now);
    let ready = Ready {
        account: &account,
        profile,
        tokens: &tokens,
        responders: &responders,
        providers: &providers,
    };
    place_orders(config, &ready, &mut work, cluster).await;
    drop(responders);
    if let Some(ctx) = cluster {
        store_shared(ctx, &mut work).await;
    }
    Ok(outcomes(work, now))
}

/// Decides for each shared source about to order whether this host orders
/// it ([`crate::cluster::shared::plan`]): it campaigns for job
/// `acme/NAME`; a leader reads `acme/NAME` again (a leader killed
/// mid-order may have stored one) and orders only if still due.
async fn hold_back_shared(
    config: &Config,
    work: &mut [Work<'_>],
    cluster: Option<&crate::cluster::acme::Ctx>,
    force: bool,
    now: i64,
    leads: &mut Vec<crate::cluster::Leadership>,
) {
    use crate::cluster::SharedStore as _;
    use crate::cluster::shared::{Plan, Role, plan};
    for w in work.iter_mut().filter(|w| w.source.shared) {
        if w.result.is_some() || !(matches!(w.due, Due::Now(_)) || w.resume) {
            continue;
        }
        let Some(ctx) = cluster else {
            w.held_back = Some("shared: not ordered without the cluster".to_owned());
            w.resume = false;
            continue;
        };
        let job = crate::cluster::acme::job(w.source);
        let (role, lead) =
            match crate::cluster::campaign_if_free(&ctx.store, &job, ctx.host.as_str()).await {
                Ok(Some(lead)) => (Role::Leader, Some(lead)),
                Ok(None) => (
                    Role::Follower(crate::cluster::acme::holder(&ctx.store, &job).await),
                    None,
                ),
                Err(e) => (Role::Unreachable(e.to_string()), None),
            };
        let mut read_revision = None;
        if let Some(lead) = &lead {
            leads.push(lead.clone());
            match crate::cluster::acme::mirror_source(w.source, &ctx.store, &ctx.seal, now, false)
                .await
            {
                Ok(read) => {
                    read_revision = read.revision;
                    if read.installed.is_some() {
                        w.held = holding(w.source);
                        w.due = decide(config, w.source, w.held.as_ref(), &w.state, force, now);
                    }
                }
                Err(e) => {
                    // An unusable stored value: ordered over, against
                    // the revision read.
                    tracing::error!("acme source {}: {e}", w.source.name);
                    read_revision = ctx.store.get(&job).await.ok().flatten().map(|s| s.revision);
                }
            }
        }
        let due = matches!(w.due, Due::Now(_)) || w.resume;
        match (plan(due, &role), lead) {
            (Plan::Order, Some(lead)) => w.lead = Some((lead, read_revision)),
            (Plan::Wait(why), _) => {
                tracing::info!("acme source {}: {why}", w.source.name);
                w.held_back = Some(why);
                w.resume = false;
            }
            // Not due any more (the cluster's certificate was taken): the
            // job is given up at the end of the pass.
            _ => w.resume = false,
        }
    }
}

/// Stores what each leader ordered in the cluster (the jobs are given up
/// by [`renew_with`]).
async fn store_shared(ctx: &crate::cluster::acme::Ctx, work: &mut [Work<'_>]) {
    for w in work.iter_mut() {
        let Some((lead, read_revision)) = w.lead.take() else {
            continue;
        };
        if matches!(w.result, Some(Ok(_)))
            && let Err(e) =
                crate::cluster::acme::store_issued(ctx, &lead, w.source, read_revision).await
        {
            tracing::error!(
                "acme source {}: not stored in the cluster: {e}",
                w.source.name
            );
        }
    }
}

/// The sources `renew` looks at (`only` one, when given), each with its
/// state, the certificate it holds, and what is due.
fn gather_work<'c>(
    config: &'c Config,
    force: bool,
    only: Option<&str>,
    now: i64,
) -> Result<Vec<Work<'c>>, AcmeError> {
    let sources: Vec<&AcmeSource> = config
        .acme_sources()
        .filter(|s| only.is_none_or(|o| o == s.name))
        .collect();
    if let Some(name) = only
        && sources.is_empty()
    {
        return Err(AcmeError::UnknownSource {
            name: name.to_owned(),
            known: config.acme_sources().map(|s| s.name.clone()).collect(),
        });
    }
    Ok(sources
        .iter()
        .map(|s| {
            let state = SourceState::load(s);
            let held = holding(s);
            let due = decide(config, s, held.as_ref(), &state, force, now);
            let resume = state.pending_order.is_some()
                && (force || state.next_attempt_at.is_none_or(|t| t <= now));
            let recently_unsupported = state.no_ari_since.is_some_and(|t| now - t < 86_400);
            let ari_stale = matches!(due, Due::Later(_))
                && !recently_unsupported
                && state.ari_retry_at.is_none_or(|t| t <= now)
                && held.as_ref().is_some_and(|h| {
                    state
                        .ari
                        .as_ref()
                        .is_none_or(|a| a.sha256 != h.sha256 || a.refetch_at <= now)
                });
            Work {
                source: s,
                held,
                state,
                due,
                resume,
                ari_stale,
                result: None,
                held_back: None,
                lead: None,
            }
        })
        .collect())
}

/// Asks the CA for its renewal windows (ARI) where they are stale, and
/// decides again what is due with the answers.
async fn refresh_ari(
    config: &Config,
    account: &instant_acme::Account,
    work: &mut [Work<'_>],
    force: bool,
    now: i64,
) {
    for w in work {
        if !w.ari_stale {
            continue;
        }
        let Some(h) = &w.held else { continue };
        let (answer, retry_after) =
            account::observing(fetch_ari(account, h, w.state.ari.as_ref(), now)).await;
        match answer {
            AriAnswer::Window(ari) => {
                if let Some(url) = &ari.explanation_url
                    && w.state
                        .ari
                        .as_ref()
                        .and_then(|a| a.explanation_url.as_ref())
                        != Some(url)
                {
                    tracing::info!(
                        "acme source {}: the CA explains its renewal window at {url}",
                        w.source.name
                    );
                }
                w.state.ari = Some(ari);
                w.state.no_ari_since = None;
                w.state.ari_failures = 0;
                w.state.ari_retry_at = None;
                w.due = decide(config, w.source, Some(h), &w.state, force, now);
            }
            AriAnswer::Unsupported => w.state.no_ari_since = Some(now),
            AriAnswer::Failed(e) => {
                let next = w.state.ari_failed(retry_after, now);
                tracing::warn!(
                    "acme source {}: ARI: {e}; asking again after {}",
                    w.source.name,
                    crate::rfc3339(next)
                );
            }
        }
        if let Err(e) = w.state.save(w.source) {
            tracing::warn!("acme source {}: {e}", w.source.name);
        }
    }
}

/// The configured `[acme] profile` when the CA offers it (else a warning,
/// and orders go without one).
fn offered_profile<'c>(config: &'c Config, account: &instant_acme::Account) -> Option<&'c str> {
    config.acme.profile.as_deref().filter(|p| {
        let offered = account.profiles().any(|m| m.name == *p);
        if !offered {
            tracing::warn!(
                "[acme] profile {p:?}: the CA offers no such profile; ordering without one"
            );
        }
        offered
    })
}

/// One built-in HTTP-01 responder per listen address of a source about to
/// order; `None` where the address could not be bound (logged).
async fn start_responders(
    work: &[Work<'_>],
    tokens: &http01::Tokens,
) -> BTreeMap<std::net::SocketAddr, Option<http01::Responder>> {
    let mut responders = BTreeMap::new();
    for w in work {
        if let (true, Challenge::Http01Listen(addr)) = (w.ordering(), &w.source.challenge)
            && !responders.contains_key(addr)
        {
            match http01::Responder::start(*addr, tokens.clone()).await {
                Ok(r) => {
                    responders.insert(*addr, Some(r));
                }
                Err(e) => {
                    tracing::error!("{e}");
                    responders.insert(*addr, None);
                }
            }
        }
    }
    responders
}

/// A DNS provider with its propagation check, or why it could not be built.
type BuiltProvider = Result<
    (
        crate::dns::Provider,
        mxkeys_providers::propagation::Propagation,
    ),
    crate::dns::BuildError,
>;

/// The DNS provider (and propagation check) of each dns-01 source about to
/// order, built once per provider.
fn build_providers(config: &Config, work: &[Work<'_>]) -> BTreeMap<String, BuiltProvider> {
    let mut providers = BTreeMap::new();
    for w in work {
        if let (true, Challenge::Dns01 { provider }) = (w.ordering(), &w.source.challenge)
            && !providers.contains_key(provider)
        {
            let cfg = &config.dns[provider];
            let built = crate::dns::Provider::build(cfg).map(|p| (p, crate::dns::propagation(cfg)));
            providers.insert(provider.clone(), built);
        }
    }
    providers
}

/// What the orders of one pass share.
struct Ready<'a> {
    account: &'a instant_acme::Account,
    profile: Option<&'a str>,
    tokens: &'a http01::Tokens,
    responders: &'a BTreeMap<std::net::SocketAddr, Option<http01::Responder>>,
    providers: &'a BTreeMap<String, BuiltProvider>,
}

/// Places the order of every source due now, all at once, and records
/// each result.
async fn place_orders(
    config: &Config,
    ready: &Ready<'_>,
    work: &mut [Work<'_>],
    cluster: Option<&crate::cluster::acme::Ctx>,
) {
    let account_id = ready.account.id().to_owned();
    let orders = work.iter_mut().filter(|w| w.ordering()).map(|w| {
        let shared = cluster.filter(|_| w.lead.is_some());
        place_order(config, ready, &account_id, w, shared)
    });
    futures_util::future::join_all(orders).await;
}

/// Places one source's order (when its challenge can be answered) and
/// records the result.
async fn place_order(
    config: &Config,
    ready: &Ready<'_>,
    account_id: &str,
    w: &mut Work<'_>,
    cluster: Option<&crate::cluster::acme::Ctx>,
) {
    let Due::Now(reason) = w.due else { return };
    let source = w.source;
    let dns = match &source.challenge {
        Challenge::Dns01 { provider } => match &ready.providers[provider] {
            Ok((p, prop)) => Some((p, prop)),
            Err(e) => {
                let e = AcmeError::from(e.clone());
                record(config, account_id, w, Err(e), None);
                return;
            }
        },
        Challenge::Http01Listen(addr)
            if ready.responders.get(addr).is_some_and(Option::is_none) =>
        {
            let e = AcmeError::CannotListen(*addr);
            record(config, account_id, w, Err(e), None);
            return;
        }
        _ => None,
    };
    let replaces = schedule::may_replace(
        w.state.issuance_of(w.held.as_ref()),
        &config.acme.directory,
        account_id,
        &source.domains,
    );
    tracing::info!(
        "acme source {}: ordering {} ({reason}{})",
        source.name,
        source
            .domains
            .iter()
            .map(|d| d.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if replaces {
            ", replacing the certificate held"
        } else {
            ""
        }
    );
    let ctx = order::Context {
        account: ready.account,
        profile: ready.profile,
        tokens: ready.tokens,
        dns,
        cluster,
    };
    let dane = standby::link(config, source);
    let choice = schedule::key_choice(&schedule::KeyFacts {
        held: w.held.as_ref().map(|h| &h.facts),
        reuse_key: source.reuse_key,
        dane: dane.is_some(),
        rollover: standby::requested(config, source),
        renewals: w.state.renewals_since_rollover,
        key_rollover: dane.and_then(|d| d.key_rollover),
    });
    let standby_key = match choice {
        schedule::KeyChoice::Standby => match standby::for_order(source) {
            Ok(pem) => {
                tracing::info!(
                    "acme source {}: rolling over to the standby key",
                    source.name
                );
                Some(pem)
            }
            Err(e) => {
                record(config, account_id, w, Err(e), None);
                return;
            }
        },
        _ => None,
    };
    let renewal = order::Renewal {
        previous: w.held.as_ref().map(|h| &h.previous),
        replaces,
        key: match choice {
            schedule::KeyChoice::Keep => w.held.as_ref().map(|h| &h.previous.key_pem),
            schedule::KeyChoice::Standby => standby_key.as_ref(),
            schedule::KeyChoice::Fresh => None,
        },
    };
    let state = &mut w.state;
    let mut checkpoint =
        |url: &str, key: &Zeroizing<String>| remember(config, account_id, source, state, url, key);
    let (result, retry_after) =
        account::observing(order::order(source, &ctx, &renewal, &mut checkpoint)).await;
    record(
        config,
        account_id,
        w,
        result.map_err(AcmeError::from),
        retry_after,
    );
}

/// Records an order about to be finalized: its key (0600) and its URL.
fn remember(
    config: &Config,
    account: &str,
    source: &AcmeSource,
    state: &mut SourceState,
    url: &str,
    key: &Zeroizing<String>,
) -> Result<(), AcmeError> {
    ensure_source_dir(source)?;
    let path = order_key_path(source);
    crate::install::write_atomic(&path, key.as_bytes(), 0o600, None).map_err(|e| {
        AcmeError::KeepOrderKey {
            path: path.clone(),
            source: Arc::new(e),
        }
    })?;
    state.pending_order = Some(PendingOrder {
        url: url.to_owned(),
        directory: config.acme.directory.clone(),
        account: account.to_owned(),
        profile: config.acme.profile.clone(),
        names: source
            .domains
            .iter()
            .map(|d| d.as_str().to_owned())
            .collect(),
        key_type: key_type_name(source.key_type),
    });
    state.save(source)
}

/// Fetches a recorded order again and takes its certificate, or forgets
/// it (the source then orders anew when due).
async fn resume(config: &Config, account: &instant_acme::Account, w: &mut Work<'_>, now: i64) {
    let source = w.source;
    let Some(pending) = w.state.pending_order.clone() else {
        return;
    };
    let key = crate::source::read_limited(&order_key_path(source), crate::source::PEM_SIZE_LIMIT)
        .ok()
        .map(|bytes| Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()));
    let Some(key) = key
        .filter(|_| pending.directory == config.acme.directory && pending.account == account.id())
    else {
        tracing::info!(
            "acme source {}: forgetting the order {} (another CA or account, or its key is gone)",
            source.name,
            pending.url
        );
        forget_order_for_good(source, &mut w.state);
        return;
    };
    let (result, retry_after) =
        account::observing(order::resume(source, account, &pending.url, &key)).await;
    match result {
        Ok(order::Resumed::Issued(issued)) => {
            tracing::info!(
                "acme source {}: took the certificate of the order {} finalized before",
                source.name,
                pending.url
            );
            w.due = Due::Now(Reason::Resumed);
            record(config, account.id(), w, Ok(issued), None);
        }
        Ok(order::Resumed::Gone(why)) => {
            tracing::info!(
                "acme source {}: the order {} cannot be taken ({why}); ordering anew when due",
                source.name,
                pending.url
            );
            forget_order_for_good(source, &mut w.state);
        }
        Err(e) => {
            let e = AcmeError::from(e);
            let next = w.state.failed(&e.to_string(), retry_after, now);
            tracing::error!(
                "acme source {}: {e}; next attempt after {}",
                source.name,
                crate::rfc3339(next)
            );
            if let Err(e) = w.state.save(source) {
                tracing::warn!("acme source {}: {e}", source.name);
            }
            w.result = Some(Err(e));
        }
    }
}

/// What a source's state says while its order is under way.
const INTERRUPTED: &str = "the order was interrupted: mxkeys stopped while it was under way";

/// Records, before the CA is contacted, that each source about to order
/// has failed once more (with its backoff): a run killed mid-order
/// (SIGKILL, a crash, a stop past its bound) leaves this behind, so the
/// next start backs off instead of ordering again at once. The pass's own
/// outcome, recorded from the state held in memory, replaces it.
fn mark_in_flight(work: &[Work<'_>], now: i64) {
    for w in work.iter().filter(|w| w.ordering()) {
        let mut marked = w.state.clone();
        marked.failed(INTERRUPTED, None, now);
        if let Err(e) = marked.save(w.source) {
            tracing::warn!("acme source {}: {e}", w.source.name);
        }
    }
}

/// Records a failure that came before any order (the lock, the account)
/// on every source that needed the CA, so none asks again before its
/// backoff ends.
fn fail_all(
    mut work: Vec<Work<'_>>,
    error: &AcmeError,
    retry_after: Option<i64>,
    now: i64,
) -> Vec<Outcome> {
    let text = error.to_string();
    let mut logged = false;
    for w in &mut work {
        if w.held_back.is_none() && (matches!(w.due, Due::Now(_)) || w.resume) {
            let next = w.state.failed(&text, retry_after, now);
            if !logged {
                tracing::error!("acme: {error}; next attempt after {}", crate::rfc3339(next));
                logged = true;
            }
            w.result = Some(Err(error.clone()));
        } else if w.ari_stale {
            let next = w.state.ari_failed(retry_after, now);
            tracing::warn!(
                "acme source {}: ARI: {error}; asking again after {}",
                w.source.name,
                crate::rfc3339(next)
            );
        } else {
            continue;
        }
        if let Err(e) = w.state.save(w.source) {
            tracing::error!("acme source {}: {e}", w.source.name);
        }
    }
    outcomes(work, now)
}

fn outcomes(work: Vec<Work<'_>>, now: i64) -> Vec<Outcome> {
    work.into_iter()
        .map(|w| {
            let failing =
                matches!(w.result, Some(Err(_))) || matches!(w.due, Due::BackingOff { .. });
            let ari = w.state.ari_of(w.held.as_ref()).map(|a| a.chosen);
            Outcome {
                urgent: failing && schedule::urgent(now, w.held.as_ref().map(|h| &h.facts), ari),
                source: w.source.name.clone(),
                due: w.due,
                result: w.result,
                shared: w.held_back,
            }
        })
        .collect()
}

/// Stores an order's result: the certificate and how it was ordered, or
/// the failure and its backoff.
fn record(
    config: &Config,
    account: &str,
    w: &mut Work<'_>,
    result: Result<order::Issued, AcmeError>,
    retry_after: Option<i64>,
) {
    let source = w.source;
    let state = &mut w.state;
    let now = crate::now();
    let mut rolled = false;
    let stored = result.and_then(|issued| {
        ensure_source_dir(source)?;
        let path = bundle_path(source);
        crate::install::write_atomic(&path, issued.bundle_pem.as_bytes(), 0o600, None).map_err(
            |e| AcmeError::StoreCertificate {
                path: path.clone(),
                source: Arc::new(e),
            },
        )?;
        Ok(issued)
    });
    let outcome = match stored {
        Ok(issued) => {
            if issued.not_before > now {
                tracing::warn!(
                    "acme source {}: the certificate issued is valid only from {} (the CA's clock is ahead); it is installed then",
                    source.name,
                    crate::rfc3339(issued.not_before)
                );
            }
            tracing::info!(
                "acme source {}: issued {} (valid until {})",
                source.name,
                issued.sha256,
                crate::rfc3339(issued.not_after)
            );
            let (names, profile, key_type) = match &state.pending_order {
                // A resumed order: what it was placed for.
                Some(p) if matches!(w.due, Due::Now(Reason::Resumed)) => {
                    (p.names.clone(), p.profile.clone(), p.key_type.clone())
                }
                _ => (
                    source
                        .domains
                        .iter()
                        .map(|d| d.as_str().to_owned())
                        .collect(),
                    config.acme.profile.clone(),
                    key_type_name(source.key_type),
                ),
            };
            let failures = state.failures;
            forget_order(source, state);
            let held = holding(source);
            // A rollover when the key is the standby key; a renewal that
            // kept the key counts towards `key_rollover`.
            let new_key = held.as_ref().map_or(schedule::NewKey::Other, |h| {
                standby::new_key(
                    source,
                    h.previous.leaf.as_ref(),
                    w.held.as_ref().map(|p| p.previous.leaf.as_ref()),
                )
            });
            let renewals;
            (renewals, rolled) = schedule::after_issue(state.renewals_since_rollover, new_key);
            if rolled {
                // Fulfilled by the certificate just stored.
                standby::clear_request(source);
            }
            *state = SourceState {
                last_issued_at: Some(now),
                issuance: Some(Issuance {
                    sha256: issued.sha256.clone(),
                    at: now,
                    directory: config.acme.directory.clone(),
                    account: account.to_owned(),
                    profile,
                    names,
                    key_type,
                }),
                renewals_since_rollover: renewals,
                ..SourceState::default()
            };
            // A rule still saying "due" for the certificate just issued
            // would order again and again: an error, with backoff. (A
            // resumed order was placed for an older configuration: the
            // rules may rightly want another.)
            let resumed = matches!(w.due, Due::Now(Reason::Resumed));
            let still = with_facts(
                config,
                source,
                held.as_ref(),
                state,
                false,
                now,
                schedule::still_due,
            );
            if let Some(reason) = still.filter(|_| !resumed) {
                state.failures = failures;
                let error = format!(
                    "the certificate just issued is still due ({reason}); not ordering again before the backoff ends"
                );
                let next = state.failed(&error, None, now);
                tracing::error!(
                    "acme source {}: {error} ({})",
                    source.name,
                    crate::rfc3339(next)
                );
            }
            w.held = held;
            Ok(Issued {
                sha256: issued.sha256,
                not_after: issued.not_after,
            })
        }
        Err(e) => {
            let next = state.failed(&e.to_string(), retry_after, now);
            tracing::error!(
                "acme source {}: order failed: {e}; next attempt after {}",
                source.name,
                crate::rfc3339(next)
            );
            Err(e)
        }
    };
    if let Err(e) = state.save(source) {
        tracing::error!("acme source {}: {e}", source.name);
    }
    if rolled {
        // The former standby key is the certificate's now: the next one is
        // made (a stop before that settles on the next pass).
        if let Err(e) = standby::settle(config, source) {
            tracing::error!("acme source {}: {e}", source.name);
        }
    }
    w.result = Some(outcome);
}

/// After the daemon cut a pass short at shutdown: every source that was due
/// for an order is recorded as failed (with the ordinary backoff), so the
/// next start waits instead of ordering again at once. Returns the names.
pub fn record_cut(config: &Config) -> Vec<String> {
    let now = crate::now();
    let mut cut = Vec::new();
    for source in config.acme_sources() {
        let mut state = SourceState::load(source);
        if state.last_error.as_deref() == Some(INTERRUPTED) {
            // Recorded before the CA was contacted.
            tracing::warn!(
                "acme source {}: the order under way was cut at shutdown; next attempt after {}",
                source.name,
                crate::rfc3339(state.next_attempt_at.unwrap_or(now))
            );
            cut.push(source.name.clone());
            continue;
        }
        let held = holding(source);
        if !matches!(
            decide(config, source, held.as_ref(), &state, false, now),
            Due::Now(_)
        ) {
            continue;
        }
        let next = state.failed(
            "the order was cut short: mxkeys stopped while it was under way",
            None,
            now,
        );
        tracing::warn!(
            "acme source {}: the order under way was cut at shutdown; next attempt after {}",
            source.name,
            crate::rfc3339(next)
        );
        if let Err(e) = state.save(source) {
            tracing::error!("acme source {}: {e}", source.name);
        }
        cut.push(source.name.clone());
    }
    cut
}

/// What the CA said about a certificate's renewal window.
enum AriAnswer {
    Window(Ari),
    /// The CA's directory has no `renewalInfo`.
    Unsupported,
    /// A passing error: asked again after Retry-After or a backoff.
    Failed(String),
}

/// The CA's renewal window for a certificate, when the CA offers ARI; the
/// point chosen in `kept` stays while the window does.
async fn fetch_ari(
    account: &instant_acme::Account,
    held: &Holding,
    kept: Option<&Ari>,
    now: i64,
) -> AriAnswer {
    let id = match instant_acme::CertificateIdentifier::try_from(&held.previous.leaf) {
        Ok(id) => id,
        Err(e) => return AriAnswer::Failed(format!("the certificate's identifier: {e}")),
    };
    match account.renewal_info(&id).await {
        Ok((info, retry)) => {
            let start = info.suggested_window.start.unix_timestamp();
            let end = info.suggested_window.end.unix_timestamp();
            let kept = kept
                .filter(|a| a.sha256 == held.sha256)
                .map(|a| (a.window_start, a.window_end, a.chosen));
            AriAnswer::Window(Ari {
                sha256: held.sha256.clone(),
                window_start: start,
                window_end: end,
                chosen: schedule::ari_pick(kept, start, end, schedule::random_unit()),
                refetch_at: schedule::ari_refetch(
                    now,
                    i64::try_from(retry.as_secs()).unwrap_or(86_400),
                ),
                explanation_url: info.explanation_url,
            })
        }
        Err(instant_acme::Error::Unsupported(_)) => AriAnswer::Unsupported,
        Err(e) => AriAnswer::Failed(order::acme_error(&e)),
    }
}

/// A line for `renew`'s output.
pub fn describe(outcome: &Outcome) -> String {
    let name = &outcome.source;
    match (&outcome.result, outcome.due) {
        (Some(Ok(i)), Due::Now(reason)) => format!(
            "acme {name}: issued {} ({reason}), valid until {}",
            i.sha256,
            crate::rfc3339(i.not_after)
        ),
        (Some(Ok(i)), _) => format!(
            "acme {name}: issued {}, valid until {}",
            i.sha256,
            crate::rfc3339(i.not_after)
        ),
        (Some(Err(e)), _) => format!("acme {name}: failed: {e}"),
        (_, Due::Later(at)) => format!(
            "acme {name}: not due; next renewal at {}",
            crate::rfc3339(at)
        ),
        (_, Due::BackingOff { until }) => format!(
            "acme {name}: a previous order failed; next attempt after {} (--force to try now)",
            crate::rfc3339(until)
        ),
        (_, Due::Now(reason)) => match &outcome.shared {
            Some(why) => format!("acme {name}: due ({reason}); {why}"),
            None => format!("acme {name}: due ({reason}) but not ordered"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(
            std::path::Path::new("/etc/mxkeys/test.toml"),
            text,
            &crate::config::Host::current(),
        )
        .unwrap()
    }

    #[test]
    fn an_unknown_source_is_its_own_variant_naming_the_configured_ones() {
        let none = config(
            "[[source]]\ntype = \"traefik\"\npath = \"acme.json\"\n\
             [[target]]\nname = \"t\"\ndomains = [\"mail.example.com\"]\nkey = \"/k.pem\"\n\
             fullchain = \"/f.pem\"\n",
        );
        let Err(e) = gather_work(&none, false, Some("nope"), 0) else {
            panic!("an unknown source was accepted");
        };
        // `mxkeys renew --source` exits 2 on this variant, whatever its text.
        assert!(matches!(&e, AcmeError::UnknownSource { name, .. } if name == "nope"));
        assert_eq!(
            e.to_string(),
            "no acme source named \"nope\" (configured: none)"
        );
        let Ok(work) = gather_work(&none, false, None, 0) else {
            panic!("no source asked for, yet an error");
        };
        assert!(work.is_empty());
    }

    #[test]
    fn failures_before_ordering_render_as_they_always_did() {
        let io = || Arc::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        let table = [
            (
                AcmeError::Lock(io()),
                "acme lock: permission denied".to_owned(),
            ),
            (
                AcmeError::CannotListen("127.0.0.1:80".parse().unwrap()),
                "http-01: cannot listen on 127.0.0.1:80".to_owned(),
            ),
            (
                AcmeError::StoreCertificate {
                    path: "/s/bundle.pem".into(),
                    source: io(),
                },
                "/s/bundle.pem: cannot store the certificate: permission denied".to_owned(),
            ),
            (
                order::OrderError::NotCovering(vec!["a.example".into(), "b.example".into()]).into(),
                "the issued certificate does not cover a.example, b.example".to_owned(),
            ),
            (
                order::OrderError::Validation(vec!["x: one".into(), "y: two".into()]).into(),
                "x: one; y: two".to_owned(),
            ),
        ];
        for (e, want) in table {
            assert_eq!(e.to_string(), want, "{e:?}");
        }
    }
}
