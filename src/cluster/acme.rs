//! Shared ACME certificates (issue 18): the effects. The decisions are
//! [`super::shared`]'s pure functions; this module reads and writes the
//! cluster and the source's `bundle.pem`.
//!
//! The rule: for a `shared = true` source only the leader of job
//! `acme/NAME` orders; every host first takes what the cluster holds at
//! `acme/NAME` ([`mirror`]) when it is better than what it holds, and the
//! leader reads it again after winning the job (a killed leader may have
//! stored one), so a crash mid-order costs at most one extra order. The
//! leader stores its certificate fenced and compare-and-set, the key
//! sealed for `acme/NAME`; a fenced store (a paused leader) is one error
//! line and a count in [`Ctx::fenced_writes`], and the next mirror puts
//! the cluster's certificate back. HTTP-01 key authorizations of a shared
//! order are also stored at `http01/TOKEN` on the leader's lease, so any
//! host's responder can answer ([`answer_tokens`], [`answer_webroot`]).
//! Errors are one line naming the key, never a byte of a key.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::seal::SealKey;
use super::shared::{self, AfterWrite, CertFacts, MirrorChoice};
use super::{Backend, Event, Leadership, SharedCert, SharedStore};
use crate::acme::http01;
use crate::cert::{self, Bundle, Leaf, PrivateKey};
use crate::config::{AcmeSource, Config, HostId};
use crate::source::acme::{bundle_path, read_bundle};

/// What the shared order path needs: the store, the sealing key, this
/// host's id, and the count of fenced stores (for [`super::Health`]).
#[derive(Debug)]
pub struct Ctx {
    pub store: Backend,
    pub seal: SealKey,
    pub host: HostId,
    /// Stores refused because this host had lost the job (a paused
    /// leader's), since the start.
    pub fenced_writes: AtomicU64,
}

impl Ctx {
    /// A context over a store already connected.
    pub fn new(store: Backend, seal: SealKey, host: HostId) -> Ctx {
        Ctx {
            store,
            seal,
            host,
            fenced_writes: AtomicU64::new(0),
        }
    }

    /// Connects to the configured `[cluster]` and loads the sealing key;
    /// `Ok(None)` without `[cluster]`. The error is one line.
    pub async fn connect(config: &Config) -> Result<Option<Ctx>, String> {
        let Some(cluster) = &config.cluster else {
            return Ok(None);
        };
        let Some(host) = &config.host_id else {
            return Err("cluster: no `host_id` (the machine's host name is not usable)".into());
        };
        let seal = SealKey::load(&cluster.shared_key_file).map_err(|e| e.to_string())?;
        let store = Backend::connect(cluster, host)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Some(Ctx::new(store, seal, host.clone())))
    }

    /// Fenced stores refused so far.
    pub fn fenced(&self) -> u64 {
        self.fenced_writes.load(Ordering::Relaxed)
    }
}

/// The job (and the key of the stored certificate) of a shared source.
pub fn job(source: &AcmeSource) -> String {
    format!("acme/{}", source.name)
}

/// What a [`mirror`] pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Mirrored {
    /// One line per certificate installed from the cluster.
    pub installed: Vec<String>,
    /// One line per problem (an unusable stored value, a file that could
    /// not be written, the cluster unreachable).
    pub problems: Vec<String>,
}

/// Installs into each shared source's `bundle.pem` the certificate the
/// cluster holds for it, when it is better than the one held (never
/// something worse). Problems are logged and returned, one line each.
pub async fn mirror(config: &Config, store: &impl SharedStore, seal: &SealKey) -> Mirrored {
    let mut out = Mirrored::default();
    let now = crate::now();
    for source in config.acme_sources().filter(|s| s.shared) {
        match mirror_source(source, store, seal, now, false).await {
            Ok(read) => out.installed.extend(read.installed),
            Err(problem) => {
                tracing::error!("acme source {}: {problem}", source.name);
                out.problems
                    .push(format!("acme {}: {problem}", source.name));
            }
        }
    }
    out
}

/// What mirroring one source read and did.
#[derive(Debug, Default)]
pub(crate) struct SourceMirror {
    /// The revision of `acme/NAME` as read (`None`: absent).
    pub revision: Option<i64>,
    /// A line when the cluster's certificate was installed.
    pub installed: Option<String>,
}

/// Reads `acme/NAME` and installs it when better than the one held; with
/// `cluster_wins` (after this host's store was fenced) whenever it is
/// usable and another certificate.
pub(crate) async fn mirror_source(
    source: &AcmeSource,
    store: &impl SharedStore,
    seal: &SealKey,
    now: i64,
    cluster_wins: bool,
) -> Result<SourceMirror, String> {
    let key = job(source);
    let Some(stored) = store.get(&key).await.map_err(|e| e.to_string())? else {
        return Ok(SourceMirror::default());
    };
    let mut read = SourceMirror {
        revision: Some(stored.revision),
        installed: None,
    };
    let bad = |reason: String| format!("cluster value {key}: {reason}");
    let value: SharedCert = serde_json::from_slice(&stored.value)
        .map_err(|e| bad(format!("not a shared certificate ({e})")))?;
    let plain = seal
        .open(&key, &value.key_sealed)
        .map_err(|e| bad(e.to_string()))?;
    let certs = cert::parse_pem_certs(value.chain_pem.as_bytes())
        .map_err(|e| bad(format!("chain: {e}")))?;
    let private = PrivateKey::from_pem(&plain).map_err(|e| bad(format!("key: {e}")))?;
    let bundle = Bundle {
        certs,
        key: private,
    };
    let facts = facts_of(&bundle, value.stored_at).map_err(bad)?;
    let held = held_facts(source).filter(|h| !cluster_wins || h.sha256 == facts.sha256);
    match shared::mirror_choice(&facts, held.as_ref(), &source.domains, now) {
        MirrorChoice::Keep => Ok(read),
        MirrorChoice::Refuse(why) => Err(bad(format!("not installed: {why}"))),
        MirrorChoice::Take => {
            source
                .dir
                .ensure()
                .map_err(|e| format!("{}: {e}", source.dir.path().display()))?;
            let path = bundle_path(source);
            crate::install::write_atomic(&path, bundle.combined_pem().as_bytes(), 0o600, None)
                .map_err(|e| format!("{}: cannot store the certificate: {e}", path.display()))?;
            let line = format!(
                "acme {}: took {}'s certificate {} from the cluster (valid until {})",
                source.name,
                value.host,
                facts.sha256,
                crate::rfc3339(facts.not_after)
            );
            tracing::info!("{line}");
            read.installed = Some(line);
            Ok(read)
        }
    }
}

/// The facts of a bundle: its leaf, and whether its key and chain fit.
fn facts_of(bundle: &Bundle, since: i64) -> Result<CertFacts, String> {
    let leaf = Leaf::parse(bundle.leaf_der()).map_err(|e| format!("leaf: {e}"))?;
    Ok(CertFacts {
        sha256: cert::fingerprint(bundle.leaf_der()),
        names: leaf.names,
        not_before: leaf.validity.not_before,
        not_after: leaf.validity.not_after,
        key_matches: bundle.verify().is_ok(),
        since,
    })
}

/// The facts of the certificate a source holds (its `bundle.pem`, dated
/// by its mtime).
fn held_facts(source: &AcmeSource) -> Option<CertFacts> {
    let path = bundle_path(source);
    let since = std::fs::metadata(&path)
        .ok()?
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())?;
    let (certs, key) = read_bundle(&path).ok()?;
    facts_of(&Bundle { certs, key }, since).ok()
}

/// Who holds job `job`'s lock, when readable.
pub(crate) async fn holder(store: &impl SharedStore, job: &str) -> Option<String> {
    let stored = store.get(&format!("lock/{job}")).await.ok()??;
    String::from_utf8(stored.value).ok()
}

/// Stores the certificate the leader just put in `bundle.pem` at
/// `acme/NAME`, fenced by `lead` and compare-and-set against what it read.
/// Returns what came of it; errors and fenced stores are logged (one
/// line) and fenced ones counted.
pub(crate) async fn store_issued(
    ctx: &Ctx,
    lead: &Leadership,
    source: &AcmeSource,
    read_revision: Option<i64>,
) -> Result<AfterWrite, String> {
    let key = job(source);
    let (certs, private) = read_bundle(&bundle_path(source)).map_err(|e| e.to_string())?;
    let bundle = Bundle {
        certs,
        key: private,
    };
    let leaf = Leaf::parse(bundle.leaf_der()).map_err(|e| e.to_string())?;
    let value = SharedCert {
        chain_pem: bundle.fullchain_pem(),
        key_sealed: ctx
            .seal
            .seal(&key, bundle.key.to_pem().as_bytes())
            .map_err(|e| e.to_string())?,
        host: ctx.host.to_string(),
        not_after: leaf.validity.not_after,
        stored_at: crate::now(),
    };
    let json = serde_json::to_vec(&value).map_err(|e| e.to_string())?;
    let written = ctx
        .store
        .put_fenced(lead, &key, &json, shared::expect_for(read_revision))
        .await
        .map_err(|e| e.to_string())?;
    let after = shared::after_write(written);
    match after {
        AfterWrite::Stored => tracing::info!(
            "acme source {}: stored the certificate in the cluster at {key}",
            source.name
        ),
        AfterWrite::Fenced => {
            ctx.fenced_writes.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                "acme source {}: not stored in the cluster: this host lost job {key} while ordering (fenced); the cluster's certificate is installed instead",
                source.name
            );
        }
        AfterWrite::Conflict => tracing::warn!(
            "acme source {}: not stored in the cluster: {key} changed while ordering; the cluster's certificate is installed instead",
            source.name
        ),
    }
    if after != AfterWrite::Stored {
        // The cluster's certificate, not this host's, is what every host
        // serves (none stored: the one just ordered stays until one is).
        if let Err(e) = mirror_source(source, &ctx.store, &ctx.seal, crate::now(), true).await {
            tracing::error!("acme source {}: {e}", source.name);
        }
    }
    Ok(after)
}

/// The cluster key of an HTTP-01 token.
pub fn token_key(token: &str) -> String {
    format!("http01/{token}")
}

/// Fills `tokens` (a responder's map) with the key authorizations the
/// cluster holds under `http01/`, and keeps it in step with the watch
/// until the watch ends (the caller then calls again). A follower's
/// responder on the source's `http_listen` answers from it.
pub async fn answer_tokens(
    store: &impl SharedStore,
    tokens: &http01::Tokens,
) -> Result<(), super::ClusterError> {
    let mut events = store.watch("http01/", 0).await?;
    let listed = store.list("http01/").await?;
    if let Ok(mut map) = tokens.lock() {
        map.retain(|_, _| false);
        for (key, stored) in listed {
            insert_token(&mut map, &key, stored.value);
        }
    }
    while let Some(event) = events.recv().await {
        let Ok(mut map) = tokens.lock() else { break };
        match event {
            Event::Put { key, stored } => insert_token(&mut map, &key, stored.value),
            Event::Delete { key } => {
                if let Some(token) = key.strip_prefix("http01/") {
                    map.remove(token);
                }
            }
        }
    }
    Ok(())
}

fn insert_token(map: &mut std::collections::HashMap<String, String>, key: &str, value: Vec<u8>) {
    if let (Some(token), Ok(ka)) = (key.strip_prefix("http01/"), String::from_utf8(value)) {
        map.insert(token.to_owned(), ka);
    }
}

/// The same for a webroot source: writes each token the cluster holds as
/// `webroot/.well-known/acme-challenge/TOKEN` and removes it when the
/// cluster does, until the watch ends.
pub async fn answer_webroot(
    store: &impl SharedStore,
    webroot: &Path,
) -> Result<(), super::ClusterError> {
    let mut events = store.watch("http01/", 0).await?;
    let put = |key: &str, value: Vec<u8>| {
        if let (Some(token), Ok(ka)) = (key.strip_prefix("http01/"), String::from_utf8(value))
            && let Err(e) = http01::write_webroot_tokens(webroot, &[(token.to_owned(), ka)])
        {
            tracing::warn!("{e}");
        }
    };
    for (key, stored) in store.list("http01/").await? {
        put(&key, stored.value);
    }
    while let Some(event) = events.recv().await {
        match event {
            Event::Put { key, stored } => put(&key, stored.value),
            Event::Delete { key } => {
                if let Some(token) = key.strip_prefix("http01/") {
                    http01::remove_webroot_tokens(webroot, [token]);
                }
            }
        }
    }
    Ok(())
}
