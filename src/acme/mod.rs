//! Ordering certificates from an ACME CA (RFC 8555) for `type = "acme"`
//! sources, with instant-acme.
//!
//! [`renew`] looks at every `acme` source: what it holds, what failed
//! before, and (when the CA offers ARI) the CA's renewal window; orders what
//! is due, all due sources at once; stores each issued certificate in the
//! source's `bundle.pem` (key and chain in one file, written atomically).
//! The targets pick it up through the ordinary pipeline. Nothing touches the
//! network when nothing is due.

pub mod account;
pub mod http01;
pub mod order;
pub mod schedule;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::cert::{self, Leaf};
use crate::config::{AcmeSource, Challenge, Config};
use crate::source::acme::{bundle_path, read_bundle};
use schedule::{Due, Held};

/// What is kept per `acme` source in `state_dir/acme/NAME/state.json`.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceState {
    /// Consecutive failed orders.
    #[serde(default)]
    pub failures: u32,
    /// No order before this time (set after a failure).
    #[serde(default)]
    pub next_attempt_at: Option<i64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub last_issued_at: Option<i64>,
    /// The CA's renewal window for the certificate held, and the point
    /// chosen in it.
    #[serde(default)]
    pub ari: Option<Ari>,
    /// When the CA last said it offers no ARI (asked again a day later).
    #[serde(default)]
    pub no_ari_since: Option<i64>,
}

/// ARI (RFC 9773) facts for one certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ari {
    /// The certificate they are about.
    pub sha256: String,
    pub window_start: i64,
    pub window_end: i64,
    /// When to renew: a random point of the window, kept.
    pub chosen: i64,
    /// When to ask the CA again (its Retry-After).
    pub refetch_at: i64,
}

impl SourceState {
    fn path(source: &AcmeSource) -> PathBuf {
        source.dir.join("state.json")
    }

    pub fn load(source: &AcmeSource) -> SourceState {
        std::fs::read(Self::path(source))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, source: &AcmeSource) -> Result<(), String> {
        crate::state::ensure_dir(&source.dir)
            .map_err(|e| format!("{}: {e}", source.dir.display()))?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        crate::install::write_atomic(&Self::path(source), &json, 0o600, None)
            .map_err(|e| format!("{}: {e}", Self::path(source).display()))
    }
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

/// The decision for a source, from its files and state alone.
fn decide(
    source: &AcmeSource,
    held: Option<&Holding>,
    state: &SourceState,
    force: bool,
    now: i64,
) -> Due {
    let ari_chosen = match (&state.ari, held) {
        (Some(ari), Some(h)) if ari.sha256 == h.sha256 => Some(ari.chosen),
        _ => None,
    };
    schedule::due(&schedule::Facts {
        now,
        held: held.map(|h| &h.facts),
        wanted: &source.domains,
        ari_chosen,
        next_attempt: state.next_attempt_at,
        force,
    })
}

/// What renewing one source did.
#[derive(Debug)]
pub struct Outcome {
    pub source: String,
    pub due: Due,
    /// `None` when no order was placed.
    pub result: Option<Result<Issued, String>>,
}

/// Summary of an issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub sha256: String,
    pub not_after: i64,
}

/// When each `acme` source is next due (or its backoff ends, or its ARI
/// window should be asked again): the daemon's next wake-up.
pub fn next_due(config: &Config) -> BTreeMap<String, i64> {
    let now = crate::now();
    config
        .acme_sources()
        .map(|s| {
            let state = SourceState::load(s);
            let held = holding(s);
            let at = match decide(s, held.as_ref(), &state, false, now) {
                Due::Now(_) => now,
                Due::Later(at) => at,
                Due::BackingOff { until } => until,
            };
            let refetch = state
                .ari
                .as_ref()
                .filter(|a| held.as_ref().is_some_and(|h| h.sha256 == a.sha256))
                .map_or(i64::MAX, |a| a.refetch_at);
            (s.name.clone(), at.min(refetch))
        })
        .collect()
}

/// Orders what is due (everything selected, with `force`); `only` limits
/// it to one source. Returns one outcome per source looked at.
pub async fn renew(
    config: &Config,
    force: bool,
    only: Option<&str>,
) -> Result<Vec<Outcome>, String> {
    let sources: Vec<&AcmeSource> = config
        .acme_sources()
        .filter(|s| only.is_none_or(|o| o == s.name))
        .collect();
    if let Some(name) = only
        && sources.is_empty()
    {
        let known: Vec<&str> = config.acme_sources().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "no acme source named {name:?} (configured: {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ));
    }
    let now = crate::now();
    let mut work: Vec<(&AcmeSource, Option<Holding>, SourceState, Due)> = sources
        .iter()
        .map(|s| {
            let state = SourceState::load(s);
            let held = holding(s);
            let due = decide(s, held.as_ref(), &state, force, now);
            (*s, held, state, due)
        })
        .collect();
    let ari_stale = |held: &Option<Holding>, state: &SourceState| {
        let recently_unsupported = state.no_ari_since.is_some_and(|t| now - t < 86_400);
        !recently_unsupported
            && held.as_ref().is_some_and(|h| {
                state
                    .ari
                    .as_ref()
                    .is_none_or(|a| a.sha256 != h.sha256 || a.refetch_at <= now)
            })
    };
    let needs_network = work.iter().any(|(_, held, state, due)| {
        matches!(due, Due::Now(_)) || (matches!(due, Due::Later(_)) && ari_stale(held, state))
    });
    if !needs_network {
        return Ok(work
            .into_iter()
            .map(|(s, _, _, due)| Outcome {
                source: s.name.clone(),
                due,
                result: None,
            })
            .collect());
    }
    let _lock = crate::state::lock(&config.state_dir.join("acme"))
        .map_err(|e| format!("acme lock: {e}"))?;
    let account = account::load_or_create(&config.acme, &config.state_dir).await?;

    // Ask the CA for its renewal windows (ARI) where they are stale.
    for (source, held, state, due) in &mut work {
        if !matches!(due, Due::Later(_)) || !ari_stale(held, state) {
            continue;
        }
        let Some(h) = held else { continue };
        match fetch_ari(&account, h, now).await {
            AriAnswer::Window(ari) => {
                state.ari = Some(ari);
                state.no_ari_since = None;
                *due = decide(source, Some(h), state, force, now);
            }
            AriAnswer::Unsupported => state.no_ari_since = Some(now),
            AriAnswer::Failed => continue,
        }
        if let Err(e) = state.save(source) {
            tracing::warn!("acme source {}: {e}", source.name);
        }
    }

    let profile = config.acme.profile.as_deref().filter(|p| {
        let offered = account.profiles().any(|m| m.name == *p);
        if !offered {
            tracing::warn!(
                "[acme] profile {p:?}: the CA offers no such profile; ordering without one"
            );
        }
        offered
    });
    // One built-in responder per listen address, while the orders run.
    let tokens: http01::Tokens = Arc::default();
    let mut responders = BTreeMap::new();
    for (source, _, _, due) in &work {
        if let (Due::Now(_), Challenge::Http01Listen(addr)) = (due, &source.challenge)
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
    let mut providers = BTreeMap::new();
    for (source, _, _, due) in &work {
        if let (Due::Now(_), Challenge::Dns01 { provider }) = (due, &source.challenge)
            && !providers.contains_key(provider)
        {
            let cfg = &config.dns[provider];
            let built = crate::dns::Provider::build(cfg).map(|p| (p, crate::dns::propagation(cfg)));
            providers.insert(provider.clone(), built);
        }
    }

    let orders = work.iter().map(|(source, held, _, due)| {
        let account = &account;
        let tokens = &tokens;
        let responders = &responders;
        let providers = &providers;
        async move {
            let Due::Now(reason) = due else { return None };
            let dns = match &source.challenge {
                Challenge::Dns01 { provider } => match &providers[provider] {
                    Ok((p, prop)) => Some((p, prop)),
                    Err(e) => return Some(Err(e.clone())),
                },
                Challenge::Http01Listen(addr)
                    if responders.get(addr).is_some_and(Option::is_none) =>
                {
                    return Some(Err(format!("http-01: cannot listen on {addr}")));
                }
                _ => None,
            };
            tracing::info!(
                "acme source {}: ordering {} ({reason})",
                source.name,
                source
                    .domains
                    .iter()
                    .map(|d| d.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let ctx = order::Context {
                account,
                profile,
                tokens,
                dns,
            };
            Some(order::order(source, &ctx, held.as_ref().map(|h| &h.previous)).await)
        }
    });
    let results = futures_util::future::join_all(orders).await;
    drop(responders);

    let mut outcomes = Vec::new();
    for ((source, _, mut state, due), result) in work.into_iter().zip(results) {
        let result = result.map(|r| record(source, &mut state, r));
        outcomes.push(Outcome {
            source: source.name.clone(),
            due,
            result,
        });
    }
    Ok(outcomes)
}

/// Stores an order's result: the certificate, or the failure and its
/// backoff.
fn record(
    source: &AcmeSource,
    state: &mut SourceState,
    result: Result<order::Issued, String>,
) -> Result<Issued, String> {
    let now = crate::now();
    let stored = result.and_then(|issued| {
        crate::state::ensure_dir(&source.dir)
            .map_err(|e| format!("{}: {e}", source.dir.display()))?;
        let path = bundle_path(source);
        crate::install::write_atomic(&path, issued.bundle_pem.as_bytes(), 0o600, None)
            .map_err(|e| format!("{}: cannot store the certificate: {e}", path.display()))?;
        Ok(issued)
    });
    let outcome = match stored {
        Ok(issued) => {
            tracing::info!(
                "acme source {}: issued {} (valid until {})",
                source.name,
                issued.sha256,
                crate::rfc3339(issued.not_after)
            );
            *state = SourceState {
                last_issued_at: Some(now),
                ..SourceState::default()
            };
            Ok(Issued {
                sha256: issued.sha256,
                not_after: issued.not_after,
            })
        }
        Err(e) => {
            state.failures += 1;
            let next = now + schedule::backoff(state.failures);
            state.next_attempt_at = Some(next);
            state.last_error = Some(e.clone());
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
    outcome
}

/// After the daemon cut a pass short at shutdown: every source that was due
/// for an order is recorded as failed (with the ordinary backoff), so the
/// next start waits instead of ordering again at once. Returns the names.
pub fn record_cut(config: &Config) -> Vec<String> {
    let now = crate::now();
    let mut cut = Vec::new();
    for source in config.acme_sources() {
        let mut state = SourceState::load(source);
        let held = holding(source);
        if !matches!(
            decide(source, held.as_ref(), &state, false, now),
            Due::Now(_)
        ) {
            continue;
        }
        state.failures += 1;
        let next = now + schedule::backoff(state.failures);
        state.next_attempt_at = Some(next);
        state.last_error =
            Some("the order was cut short: mxkeys stopped while it was under way".to_owned());
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
    /// A passing error: the lifetime rule applies this time.
    Failed,
}

/// The CA's renewal window for a certificate, when the CA offers ARI.
async fn fetch_ari(account: &instant_acme::Account, held: &Holding, now: i64) -> AriAnswer {
    let Ok(id) = instant_acme::CertificateIdentifier::try_from(&held.previous.leaf) else {
        return AriAnswer::Failed;
    };
    match account.renewal_info(&id).await {
        Ok((info, retry)) => {
            let start = info.suggested_window.start.unix_timestamp();
            let end = info.suggested_window.end.unix_timestamp();
            AriAnswer::Window(Ari {
                sha256: held.sha256.clone(),
                window_start: start,
                window_end: end,
                chosen: schedule::ari_pick(start, end, schedule::random_unit(), now),
                refetch_at: now
                    + i64::try_from(retry.as_secs())
                        .unwrap_or(86_400)
                        .clamp(60, 86_400),
            })
        }
        Err(instant_acme::Error::Unsupported(_)) => AriAnswer::Unsupported,
        Err(e) => {
            tracing::warn!("ARI: {}", order::acme_error(&e));
            AriAnswer::Failed
        }
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
        (Some(Err(e)), _) => format!("acme {name}: failed: {e}"),
        (_, Due::Later(at)) => format!(
            "acme {name}: not due; next renewal at {}",
            crate::rfc3339(at)
        ),
        (_, Due::BackingOff { until }) => format!(
            "acme {name}: a previous order failed; next attempt after {} (--force to try now)",
            crate::rfc3339(until)
        ),
        (_, Due::Now(reason)) => format!("acme {name}: due ({reason}) but not ordered"),
    }
}
