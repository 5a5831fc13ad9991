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
    // serde's message may quote the value: only where it broke.
    let value: SharedCert = serde_json::from_slice(&stored.value).map_err(|e| {
        bad(format!(
            "not a shared certificate (JSON {:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
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

/// How long a leader waits for every host that answers a shared source's
/// HTTP-01 tokens to say it has them, before it asks the CA anyway.
pub const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where a host whose daemon answers shared source SOURCE's HTTP-01 tokens
/// says so: `responders/SOURCE/HOST`, on its lease (gone with the host).
pub fn responder_key(source: &str, host: &str) -> String {
    format!("responders/{source}/{host}")
}

/// Where a host says it answers TOKEN: `http01-ack/TOKEN/HOST`, on its
/// lease; it deletes it when the token goes.
pub fn ack_key(token: &str, host: &str) -> String {
    format!("http01-ack/{token}/{host}")
}

/// The hosts (other than `me`) among `responders` that have not said they
/// answer every one of `tokens` (pure). `keys` are the keys listed under
/// `http01-ack/`.
pub fn missing_answers(
    responders: &[String],
    acks: &[String],
    tokens: &[&str],
    me: &str,
) -> Vec<String> {
    let acked: std::collections::BTreeSet<&str> = acks.iter().map(String::as_str).collect();
    responders
        .iter()
        .filter(|h| h.as_str() != me)
        .filter(|h| {
            tokens
                .iter()
                .any(|t| !acked.contains(ack_key(t, h).as_str()))
        })
        .cloned()
        .collect()
}

/// A leader's wait before the CA validates: until every host registered
/// under `responders/SOURCE/` (other than `me`) has acknowledged every
/// token, looking every 100 ms, for at most `bound`. A host that never
/// does (its responder could not bind, it is gone) is named in one
/// warning and the order goes on: the CA may still reach another host.
pub async fn wait_for_answers(
    store: &impl SharedStore,
    source: &str,
    tokens: &[&str],
    me: &str,
    bound: std::time::Duration,
) {
    if tokens.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + bound;
    let prefix = format!("responders/{source}/");
    loop {
        let missing = match (store.list(&prefix).await, store.list("http01-ack/").await) {
            (Ok(responders), Ok(acks)) => {
                let hosts: Vec<String> = responders
                    .into_iter()
                    .filter_map(|(k, _)| k.strip_prefix(&prefix).map(str::to_owned))
                    .collect();
                let acks: Vec<String> = acks.into_iter().map(|(k, _)| k).collect();
                missing_answers(&hosts, &acks, tokens, me)
            }
            (Err(e), _) | (_, Err(e)) => vec![format!("(cannot tell: {e})")],
        };
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                "http-01 for {source}: {} did not say they answer the tokens within {}s; asking the CA anyway",
                missing.join(", "),
                bound.as_secs()
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::memory::Memory;
    use crate::source::testing::{Alg, Ca, Issued};

    const DAY: i64 = 86_400;

    fn config(state: &Path) -> Config {
        let text = format!(
            "host_id = \"mx1\"\nstate_dir = {state:?}\n\
             [acme]\ndirectory = \"https://127.0.0.1:1/dir\"\nemail = \"a@example.test\"\n\
             [cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:1\"]\n\
             shared_key_file = \"/nonexistent/shared.key\"\n\
             [[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [\"mail.example.test\"]\n\
             challenge = \"http-01\"\nshared = true\n\
             [[target]]\nname = \"t\"\ndomains = [\"mail.example.test\"]\ncombined = \"/nonexistent/c.pem\"\n",
            state = state.display().to_string(),
        );
        Config::parse(
            Path::new("/etc/mxkeys/test.toml"),
            &text,
            &crate::config::Host::current(),
        )
        .unwrap()
    }

    fn seal() -> SealKey {
        SealKey::from_bytes(&[7; 32]).unwrap()
    }

    /// `acme/mail` as a leader would store `issued`, sealed for `name`.
    fn value(issued: &Issued, name: &str) -> Vec<u8> {
        let bundle = issued.bundle();
        serde_json::to_vec(&SharedCert {
            chain_pem: bundle.fullchain_pem(),
            key_sealed: seal().seal(name, bundle.key.to_pem().as_bytes()).unwrap(),
            host: "mx2".into(),
            not_after: 0,
            stored_at: crate::now(),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn mirror_installs_only_a_usable_stored_certificate_and_names_the_key_of_a_bad_value() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let bundle = dir.path().join("acme/mail/bundle.pem");
        let now = crate::now();
        let ca = Ca::new();
        let good = ca.issue(
            &["mail.example.test"],
            Alg::Ecdsa,
            now - DAY,
            now + 60 * DAY,
        );
        let other = ca.issue(
            &["mail.example.test"],
            Alg::Ecdsa,
            now - DAY,
            now + 60 * DAY,
        );
        let elsewhere = ca.issue(&["www.example.test"], Alg::Ecdsa, now - DAY, now + 60 * DAY);
        let expired = ca.issue(
            &["mail.example.test"],
            Alg::Ecdsa,
            now - 90 * DAY,
            now - DAY,
        );
        let store = Memory::new("mx1");
        // (stored value, what the one problem line says)
        let bad: [(Vec<u8>, &str); 6] = [
            (
                b"{not json".to_vec(),
                "cluster value acme/mail: not a shared certificate",
            ),
            (
                br#"{"chain_pem": "", "key_sealed": "", "host": "", "not_after": "SECRET", "stored_at": 0}"#.to_vec(),
                "not a shared certificate (JSON Data error at line 1",
            ),
            (
                value(&good, "acme/other"),
                "cluster value acme/mail: sealed value for acme/mail: does not open",
            ),
            (
                value(&good.with_key_of(&other), "acme/mail"),
                "its key does not match its chain",
            ),
            (
                value(&elsewhere, "acme/mail"),
                "it does not cover mail.example.test",
            ),
            (value(&expired, "acme/mail"), "it expired"),
        ];
        for (i, (stored, want)) in bad.into_iter().enumerate() {
            store.put_leased("acme/mail", &stored).await.unwrap();
            let m = mirror(&config, &store, &seal()).await;
            assert!(m.installed.is_empty(), "row {i}: {m:?}");
            assert_eq!(m.problems.len(), 1, "row {i}: {m:?}");
            assert!(m.problems[0].contains(want), "row {i}: {m:?}");
            assert!(!m.problems[0].contains("PRIVATE"), "row {i}: {m:?}");
            assert!(!m.problems[0].contains("SECRET"), "row {i}: {m:?}");
            assert!(!bundle.exists(), "row {i}: installed");
        }
        store
            .put_leased("acme/mail", &value(&good, "acme/mail"))
            .await
            .unwrap();
        let m = mirror(&config, &store, &seal()).await;
        assert_eq!(m.installed.len(), 1, "{m:?}");
        assert!(m.problems.is_empty(), "{m:?}");
        let (certs, _) = read_bundle(&bundle).unwrap();
        assert_eq!(certs, good.certs);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&bundle).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // The same again: nothing to do. An unusable one later: the good
        // one stays.
        assert_eq!(mirror(&config, &store, &seal()).await, Mirrored::default());
        store
            .put_leased("acme/mail", &value(&expired, "acme/mail"))
            .await
            .unwrap();
        assert_eq!(mirror(&config, &store, &seal()).await.problems.len(), 1);
        assert_eq!(read_bundle(&bundle).unwrap().0, good.certs);
        // The cluster unreachable: one line, the bundle stays.
        store.set_available(false);
        let m = mirror(&config, &store, &seal()).await;
        assert_eq!(m.problems.len(), 1, "{m:?}");
        assert!(m.problems[0].contains("cluster unavailable"), "{m:?}");
        assert_eq!(read_bundle(&bundle).unwrap().0, good.certs);
    }

    /// Waits (bounded) until `done` holds.
    async fn until(mut done: impl FnMut() -> bool) -> bool {
        for _ in 0..100 {
            if done() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        done()
    }

    #[tokio::test]
    async fn a_follower_answers_the_leaders_tokens_from_its_map_and_its_webroot_until_they_go() {
        let leader = Memory::new("mx1");
        let follower = leader.session("mx2");
        leader
            .put_leased(&token_key("early"), b"early.ka")
            .await
            .unwrap();
        let tokens: http01::Tokens = std::sync::Arc::default();
        let webroot = tempfile::tempdir().unwrap();
        let file = |t: &str| webroot.path().join(".well-known/acme-challenge").join(t);
        let (f1, f2, t1, root) = (
            follower.clone(),
            follower.clone(),
            tokens.clone(),
            webroot.path().to_owned(),
        );
        let map_task = tokio::spawn(async move { answer_tokens(&f1, &t1).await });
        let root_task = tokio::spawn(async move { answer_webroot(&f2, &root).await });
        let has = |t: &str| tokens.lock().unwrap().get(t).cloned();
        assert!(until(|| has("early").as_deref() == Some("early.ka")).await);
        assert!(until(|| file("early").exists()).await);
        leader
            .put_leased(&token_key("tok-2"), b"tok-2.ka")
            .await
            .unwrap();
        assert!(until(|| has("tok-2").as_deref() == Some("tok-2.ka")).await);
        assert!(until(|| std::fs::read(file("tok-2")).is_ok_and(|b| b == b"tok-2.ka")).await);
        // The order ends: deleted. The leader dies: its lease takes the rest.
        leader.delete(&token_key("tok-2")).await.unwrap();
        assert!(until(|| has("tok-2").is_none() && !file("tok-2").exists()).await);
        leader.expire();
        assert!(until(|| tokens.lock().unwrap().is_empty() && !file("early").exists()).await);
        map_task.abort();
        root_task.abort();
    }
    #[test]
    fn a_leader_waits_only_for_the_other_registered_hosts_that_have_not_acknowledged_every_token() {
        let hosts = |v: &[&str]| v.iter().map(|h| h.to_string()).collect::<Vec<_>>();
        let acks = |v: &[(&str, &str)]| v.iter().map(|(t, h)| ack_key(t, h)).collect::<Vec<_>>();
        // (responders, acks, tokens, missing)
        type Row<'a> = (
            &'a [&'a str],
            &'a [(&'a str, &'a str)],
            &'a [&'a str],
            &'a [&'a str],
        );
        let table: &[Row] = &[
            (&[], &[], &["t1"], &[]),
            (&["mx1"], &[], &["t1"], &[]),
            (&["mx1", "mx2"], &[], &["t1"], &["mx2"]),
            (&["mx1", "mx2"], &[("t1", "mx2")], &["t1"], &[]),
            (&["mx1", "mx2", "mx3"], &[("t1", "mx2")], &["t1"], &["mx3"]),
            (&["mx2"], &[("t1", "mx2")], &["t1", "t2"], &["mx2"]),
            (
                &["mx2"],
                &[("t1", "mx2"), ("t2", "mx2")],
                &["t1", "t2"],
                &[],
            ),
            (&["mx2"], &[("t1", "mx3")], &["t1"], &["mx2"]),
        ];
        for (responders, acked, tokens, missing) in table {
            assert_eq!(
                missing_answers(&hosts(responders), &acks(acked), tokens, "mx1"),
                hosts(missing),
                "{responders:?} {acked:?} {tokens:?}"
            );
        }
    }

    #[tokio::test]
    async fn the_wait_ends_when_every_responder_acknowledged_and_at_the_bound_when_one_never_does()
    {
        let leader = Memory::new("mx1");
        let follower = leader.session("mx2");
        follower
            .put_leased(&responder_key("mail", "mx2"), b"")
            .await
            .unwrap();
        let bound = std::time::Duration::from_secs(30);
        let acked = {
            let follower = follower.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                follower
                    .put_leased(&ack_key("t1", "mx2"), b"")
                    .await
                    .unwrap();
            }
        };
        let started = std::time::Instant::now();
        tokio::join!(
            wait_for_answers(&leader, "mail", &["t1"], "mx1", bound),
            acked
        );
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(300),
            "{waited:?}"
        );
        assert!(waited < bound, "{waited:?}");
        // A registered host that never acknowledges holds the order back
        // for the bound only.
        let short = std::time::Duration::from_millis(400);
        let started = std::time::Instant::now();
        wait_for_answers(&leader, "mail", &["t2"], "mx1", short).await;
        assert!(started.elapsed() >= short);
        // Its lease gone, it is not waited for.
        follower.expire();
        let started = std::time::Instant::now();
        wait_for_answers(&leader, "mail", &["t3"], "mx1", bound).await;
        assert!(started.elapsed() < bound);
    }
}
