//! Shared ACME certificates (issue 18) against a real CA (pebble): two
//! hosts, each with its own configuration and state directory, share one
//! in-process cluster store (`cluster::memory::Memory`, one session per
//! host: the etcd backend is tested on its own), and run the library's
//! shared renew (`acme::renew_with`) in this process.
//!
//! pebble resolves every name to 127.0.0.1 (pebble-challtestsrv) and
//! validates HTTP-01 at 127.0.0.1:`http_port`; pebble's log shows how many
//! orders reached the CA (`POST /order-plz`).

use mxkeys_testsupport as common;

use std::path::PathBuf;
use std::sync::Arc;

use common::servers::{Need, Pebble, require_programs};
use common::*;
use mxkeys::acme::{self, http01};
use mxkeys::cluster::acme::Ctx;
use mxkeys::cluster::memory::Memory;
use mxkeys::cluster::seal::SealKey;
use mxkeys::cluster::{Backend, Event, Expect, SharedCert, SharedStore, Written};
use mxkeys::config::{Config, Host, HostId};

const NEEDS: &[Need] = &[("pebble", "pebble"), ("pebble-challtestsrv", "pebble")];

const MAIL: &str = "mail.example.test";

/// One host: its directory, configuration and cluster context.
struct HostEnv {
    env: Env,
    config: Config,
    ctx: Ctx,
}

impl HostEnv {
    /// Host `id` with a shared HTTP-01 source whose responder listens on
    /// `http_listen`, on the cluster session `session`.
    fn new(pebble: &Pebble, id: &str, http_listen: &str, session: Memory) -> HostEnv {
        HostEnv::with_ca(&pebble.url, &pebble.https_ca, id, http_listen, session)
    }

    /// The same with any ACME directory (one never reached, in the tests
    /// that order nothing).
    fn with_ca(
        directory: &str,
        ca: &std::path::Path,
        id: &str,
        http_listen: &str,
        session: Memory,
    ) -> HostEnv {
        let env = Env::new();
        let key_file = env.path("shared.key");
        // base64 of 32 bytes of 7 (the same on every host).
        write(&key_file, "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=\n");
        let text = format!(
            "hostname = \"{id}.example.test\"\nhost_id = \"{id}\"\nstate_dir = {state}\n\n\
             [acme]\ndirectory = {dir}\nemail = \"admin@example.test\"\nca_bundle = {ca}\n\n\
             [cluster]\nbackend = \"etcd\"\nendpoints = [\"http://127.0.0.1:{etcd}\"]\n\
             shared_key_file = {key}\n\n\
             [[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [{MAIL:?}]\n\
             challenge = \"http-01\"\nhttp_listen = {listen}\nshared = true\n\n\
             [[target]]\nname = \"t\"\ndomains = [{MAIL:?}]\ncombined = {out}\n",
            state = qp(&env.state),
            dir = q(directory),
            ca = qp(ca),
            key = qp(&key_file),
            etcd = free_port(),
            listen = q(http_listen),
            out = qp(&env.out.join("combined.pem")),
        );
        write(&env.config, &text);
        let config = Config::parse(&env.config, &text, &Host::current()).unwrap();
        let seal = SealKey::load(&key_file).unwrap();
        let ctx = Ctx::new(Backend::Memory(session), seal, HostId::parse(id).unwrap());
        HostEnv { env, config, ctx }
    }

    fn bundle(&self) -> PathBuf {
        self.env.state.join("acme/mail/bundle.pem")
    }

    /// The SHA-256 of the leaf of the source's `bundle.pem` ("" when
    /// none).
    fn leaf(&self) -> String {
        read_certs(&self.bundle())
            .into_iter()
            .next()
            .map(|der| sha256_hex(&der))
            .unwrap_or_default()
    }

    /// The source's state records no failure (no order was attempted).
    #[track_caller]
    fn assert_no_failure_recorded(&self) {
        let path = self.env.state.join("acme/mail/state.json");
        let state: serde_json::Value = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        assert!(
            state["failures"].as_u64().unwrap_or(0) == 0 && state["last_error"].is_null(),
            "{}: {state}",
            path.display()
        );
    }

    async fn renew(&self, force: bool) -> Vec<acme::Outcome> {
        acme::renew_with(&self.config, force, None, Some(&self.ctx))
            .await
            .unwrap()
    }
}

fn orders(pebble: &Pebble) -> usize {
    std::fs::read_to_string(pebble.dir.join("pebble.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("POST /order-plz -> calling handler()"))
        .count()
}

fn lines(outcomes: &[acme::Outcome]) -> String {
    outcomes
        .iter()
        .map(acme::describe)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Who stored the certificate the cluster holds for `mail`, and its
/// leaf's SHA-256.
async fn stored_leaf(store: &Memory) -> (String, String) {
    let stored = store.get("acme/mail").await.unwrap().expect("acme/mail");
    let value: SharedCert = serde_json::from_slice(&stored.value).unwrap();
    assert!(
        !value.key_sealed.contains("PRIVATE"),
        "the key is stored sealed"
    );
    let leaf = pem_blocks(&value.chain_pem)
        .into_iter()
        .next()
        .map(|(_, der)| sha256_hex(&der))
        .unwrap();
    (value.host, leaf)
}

fn start(test: &str) -> Option<(Env, Pebble)> {
    if !require_programs(test, &[NEEDS]) {
        return None;
    }
    let dir = Env::new();
    let pebble = Pebble::start(&dir.path("pebble"));
    Some((dir, pebble))
}

fn pool_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_place_one_order_validated_through_the_followers_responder_and_install_the_same_certificate()
 {
    let Some((_dir, pebble)) = start("cluster_acme::two_hosts_place_one_order") else {
        return;
    };
    let validated_at = format!("127.0.0.1:{}", pebble.http_port);
    let mx2_store = Memory::new("mx2");
    let mx1_store = mx2_store.session("mx1");
    // mx1 (the leader) listens where pebble never connects; mx2 listens
    // where pebble validates, answering from the cluster's tokens.
    let mx1 = HostEnv::new(&pebble, "mx1", &pool_addr(), mx1_store.clone());
    let mx2 = HostEnv::new(&pebble, "mx2", &validated_at, mx2_store.clone());
    let tokens: http01::Tokens = Arc::default();
    let responder = http01::Responder::start(validated_at.parse().unwrap(), tokens.clone())
        .await
        .unwrap();
    let follower = {
        let (store, tokens) = (mx2_store.clone(), tokens.clone());
        tokio::spawn(async move { mxkeys::cluster::acme::answer_tokens(&store, &tokens).await })
    };
    // Let the follower's watch start before the leader publishes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // While mx2 leads the job, mx1 does not order (and asks no CA).
    let lead = mx2_store.campaign("acme/mail").await.unwrap().unwrap();
    let waiting = mx1.renew(false).await;
    assert!(waiting[0].result.is_none(), "{}", lines(&waiting));
    assert_eq!(
        waiting[0].shared.as_deref(),
        Some("shared: mx2 orders it"),
        "{}",
        lines(&waiting)
    );
    assert_eq!(orders(&pebble), 0);
    mx2_store.resign(&lead).await.unwrap();

    let first = mx1.renew(false).await;
    let text = lines(&first);
    assert!(
        matches!(first[0].result, Some(Ok(_))),
        "mx1 ordered:\n{text}\n{}",
        pebble.log()
    );
    // The tokens leave the cluster after the order (the follower's map
    // follows the watch: a bounded wait).
    let mut left = 50;
    while !tokens.lock().unwrap().is_empty() && left > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        left -= 1;
    }
    assert!(mx1_store.list("http01/").await.unwrap().is_empty());
    assert!(
        tokens.lock().unwrap().is_empty(),
        "the follower forgot the tokens"
    );
    drop(responder);
    follower.abort();

    // mx2 takes the certificate from the cluster and orders nothing.
    let second = mx2.renew(false).await;
    let text = lines(&second);
    assert!(second[0].result.is_none(), "mx2 ordered:\n{text}");
    assert_eq!(orders(&pebble), 1, "one order at the CA");
    assert!(!mx1.leaf().is_empty());
    assert_eq!(
        mx1.leaf(),
        mx2.leaf(),
        "both hosts hold the same certificate"
    );
    assert_eq!(mode_of(&mx2.bundle()) & 0o777, 0o600);
    let (host, leaf) = stored_leaf(&mx1_store).await;
    assert_eq!((host.as_str(), leaf), ("mx1", mx1.leaf()));
    assert_eq!(mx1.ctx.fenced(), 0);
    // The job is free again.
    assert!(mx2_store.get("lock/acme/mail").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_is_fenced_and_every_host_keeps_its_successors_certificate()
{
    let Some((_dir, pebble)) = start("cluster_acme::a_leader_paused_past_its_lease_is_fenced")
    else {
        return;
    };
    let validated_at = format!("127.0.0.1:{}", pebble.http_port);
    let mx2_store = Memory::new("mx2");
    let mx1_store = mx2_store.session("mx1");
    let mx1 = HostEnv::new(&pebble, "mx1", &validated_at, mx1_store.clone());
    let mx2 = HostEnv::new(&pebble, "mx2", &validated_at, mx2_store.clone());

    // mx2 orders first: the cluster holds its certificate.
    let first = mx2.renew(false).await;
    assert!(matches!(first[0].result, Some(Ok(_))), "{}", lines(&first));
    let (_, successor) = stored_leaf(&mx2_store).await;
    let revision = mx2_store.get("acme/mail").await.unwrap().unwrap().revision;

    // mx1 orders again (forced). While its order runs (its HTTP-01 token
    // appears in the cluster), its lease ends as after a pause, and mx2
    // takes the job and stores again.
    let watcher = {
        let (mx1_store, mx2_store) = (mx1_store.clone(), mx2_store.clone());
        let mut events = mx2_store.watch("http01/", 0).await.unwrap();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if matches!(event, Event::Put { .. }) {
                    mx1_store.expire();
                    let lead = mx2_store.campaign("acme/mail").await.unwrap().unwrap();
                    let value = mx2_store.get("acme/mail").await.unwrap().unwrap().value;
                    let written = mx2_store
                        .put_fenced(&lead, "acme/mail", &value, Expect::Revision(revision))
                        .await
                        .unwrap();
                    return matches!(written, Written::Stored(_));
                }
            }
            false
        })
    };
    let second = mx1.renew(true).await;
    assert!(watcher.await.unwrap(), "mx2 stored while mx1 was paused");
    assert!(
        matches!(second[0].result, Some(Ok(_))),
        "mx1's order itself succeeded:\n{}",
        lines(&second)
    );
    assert_eq!(orders(&pebble), 2, "the pause cost one extra order");
    assert_eq!(mx1.ctx.fenced(), 1, "mx1's store was fenced");
    let (host, leaf) = stored_leaf(&mx2_store).await;
    assert_eq!(
        (host.as_str(), &leaf),
        ("mx2", &successor),
        "the cluster keeps the successor's certificate"
    );
    assert_eq!(
        mx1.leaf(),
        successor,
        "mx1 put the cluster's certificate back"
    );
    assert_eq!(mx2.leaf(), successor);
}

/// A bundle about to expire (due by the lifetime rule), from a test CA.
fn expiring_bundle(host: &HostEnv) -> Vec<u8> {
    let leaf = Ca::new("cluster-acme").issue(&LeafSpec::new(&[MAIL]).not_before(days(-60)).days(5));
    let pem = common::servers::combined_pem(&leaf);
    std::fs::create_dir_all(host.bundle().parent().unwrap()).unwrap();
    write(&host.bundle(), &pem);
    set_mode(&host.bundle(), 0o600);
    pem.into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_quorum_orders_no_shared_certificate_and_keeps_the_one_installed() {
    let store = Memory::new("mx1");
    let dir = Env::new();
    let ca = dir.path("ca.pem");
    write(&ca, pem_block("CERTIFICATE", &Ca::new("unused").root_der));
    // A directory nobody answers at: contacting the CA would fail the source.
    let mx1 = HostEnv::with_ca(
        &format!("https://127.0.0.1:{}/dir", free_port()),
        &ca,
        "mx1",
        &pool_addr(),
        store.clone(),
    );
    let before = expiring_bundle(&mx1);
    store.set_available(false);
    let outcomes = mx1.renew(false).await;
    let text = lines(&outcomes);
    assert!(
        outcomes[0].result.is_none(),
        "no order, no failure:\n{text}"
    );
    assert!(
        text.contains("shared: not ordered, the cluster is unreachable (cluster unavailable"),
        "{text}"
    );
    assert!(!acme::failing(&outcomes), "{text}");
    assert_eq!(
        std::fs::read(mx1.bundle()).unwrap(),
        before,
        "the bundle stays"
    );
    mx1.assert_no_failure_recorded();
}

#[test]
fn renew_and_sync_with_a_cluster_they_cannot_reach_say_so_in_one_line_and_order_no_shared_certificate()
 {
    let dir = Env::new();
    let ca = dir.path("ca.pem");
    write(&ca, pem_block("CERTIFICATE", &Ca::new("unused").root_der));
    let mx1 = HostEnv::with_ca(
        &format!("https://127.0.0.1:{}/dir", free_port()),
        &ca,
        "mx1",
        &pool_addr(),
        Memory::new("mx1"),
    );
    let before = expiring_bundle(&mx1);
    let run = mx1.env.run(&["renew"]);
    assert!(
        run.stdout.contains("acme mail: due") && run.stdout.contains("shared: not ordered"),
        "{}",
        run.describe()
    );
    let cluster_lines = |run: &Run| {
        run.stderr
            .lines()
            .filter(|l| l.contains("shared certificates wait, everything installed stays"))
            .count()
    };
    assert_eq!(cluster_lines(&run), 1, "{}", run.describe());
    assert!(
        !run.stderr.contains("account"),
        "no CA asked: {}",
        run.describe()
    );
    assert_eq!(
        std::fs::read(mx1.bundle()).unwrap(),
        before,
        "the bundle stays"
    );
    mx1.assert_no_failure_recorded();
    // `sync` too: one line, exit 1, the bundle stays.
    let run = mx1.env.run(&["sync"]);
    assert_eq!(cluster_lines(&run), 1, "{}", run.describe());
    assert_eq!(run.code, 1, "{}", run.describe());
    assert_eq!(std::fs::read(mx1.bundle()).unwrap(), before);
}
