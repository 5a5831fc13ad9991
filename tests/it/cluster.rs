//! `mxkeys run` with `[cluster]` against a real three-member etcd
//! (Debian's etcd-server) on loopback pool ports (issue 18).
//!
//! The rule these tests prove: losing the cluster never removes or
//! changes an installed certificate; it only stops shared work, and
//! `status` and the metrics say so.
//!
//! Without etcd, a test is skipped with a message naming the Debian
//! package; with `CI=true` it fails.

use mxkeys_testsupport as common;

use std::path::Path;

use common::bind::Bind;
use common::etcd::{ETCD, EtcdCluster};
use common::servers::{
    Need, Offer, Pebble, Postfix, Proto, combined_pem, poll, require_programs, served_leaf,
    write_atomic,
};
use common::*;
use serde_json::Value;

/// The seal key every host of a test shares: 32 random bytes, base64.
fn write_shared_key(path: &Path) {
    use base64::Engine as _;
    let mut key = [0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    write(
        path,
        base64::engine::general_purpose::STANDARD.encode(key) + "\n",
    );
    set_mode(path, 0o600);
}

/// `host_id`, `[cluster]` (lease 3 s) and `[metrics]` on `metrics_port`.
fn cluster_top(host: &str, etcd: &EtcdCluster, shared_key: &Path, metrics_port: u16) -> String {
    format!(
        "host_id = {}\n\n[cluster]\nbackend = \"etcd\"\nendpoints = {}\nprefix = \"/mxkeys-test\"\n\
         shared_key_file = {}\nlease_ttl = \"3s\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
        q(host),
        etcd.endpoints_toml(),
        qp(shared_key),
    )
}

/// The `cluster` section of `status --json`.
fn cluster_status(env: &Env) -> Value {
    let (run, v) = env.status_json();
    assert!(
        v.get("cluster").is_some_and(|c| !c.is_null()),
        "no cluster section in status --json\n{}",
        run.describe()
    );
    v["cluster"].clone()
}

/// sha256 of every file of the target, as installed now.
fn installed(t: &Target) -> Vec<(std::path::PathBuf, Option<String>)> {
    t.contents()
        .into_iter()
        .map(|(p, bytes)| (p, bytes.map(|b| sha256_hex(&b))))
        .collect()
}

#[test]
fn losing_a_majority_of_etcd_members_changes_nothing_installed_and_status_and_metrics_say_so() {
    if !require_programs(
        "cluster::losing_a_majority_of_etcd_members_changes_nothing_installed_and_status_and_metrics_say_so",
        &[ETCD],
    ) {
        return;
    }
    let env = Env::new();
    let mut etcd = EtcdCluster::start(&env.path("etcd"), 3);
    let ca = Ca::new("cluster");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let t = Target::new(&env, "mail").domains(&[HOST]);
    let shared_key = env.path("shared.key");
    write_shared_key(&shared_key);
    let port = free_port();
    env.write_config_with(
        &cluster_top("mx1", &etcd, &shared_key, port),
        &[files_source(&env.path("src"), &leaf)],
        &[&t],
    );
    let d = env.daemon(&[]);
    wait_for(
        "the target to be installed",
        || (t.installed_fp().as_deref() == Some(&leaf.fp())).then_some(()),
        || d.describe(),
    );
    // Connected: status and the metrics say the cluster is reachable.
    wait_for(
        "status to say the cluster is reachable",
        || (cluster_status(&env)["health"]["reachable"] == true).then_some(()),
        || format!("{}\n{}", d.describe(), etcd.log()),
    );
    let body = wait_for(
        "mxkeys_cluster_up 1",
        || {
            let (_, body) = http_get(port, "/metrics")?;
            (metric(&body, "mxkeys_cluster_up") == Some(1.0)).then_some(body)
        },
        || d.describe(),
    );
    assert_eq!(
        metric(&body, "mxkeys_cluster_fenced_writes_total"),
        Some(0.0),
        "{body}"
    );
    let text = env.run(&["status"]);
    let line = text
        .stdout_line_with("cluster: host mx1; reachable since")
        .unwrap_or_else(|| panic!("no reachable cluster line\n{}", text.describe()))
        .to_owned();
    assert!(line.contains("0 fenced writes"), "{line}");

    // A majority of members stops: no quorum.
    let before = installed(&t);
    assert!(before.iter().all(|(_, h)| h.is_some()), "{before:?}");
    etcd.stop_member(1);
    etcd.stop_member(2);
    let health = wait_for(
        "status to say the cluster is unreachable",
        || {
            let c = cluster_status(&env);
            (c["health"]["reachable"] == false).then_some(c)
        },
        || d.describe(),
    );
    assert!(
        health["health"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty() && !e.contains('\n')),
        "one-line last error: {health}"
    );
    wait_for(
        "mxkeys_cluster_up 0",
        || {
            let (_, body) = http_get(port, "/metrics")?;
            (metric(&body, "mxkeys_cluster_up") == Some(0.0)).then_some(())
        },
        || d.describe(),
    );
    let text = env.run(&["status"]);
    assert!(
        text.stdout_line_with("cluster: host mx1; UNREACHABLE since")
            .is_some(),
        "{}",
        text.describe()
    );
    // The daemon keeps reconciling without the cluster, and nothing it
    // installed changed.
    let n = env.reconciles_of(&d);
    let mut d = d;
    d.signal(nix::sys::signal::Signal::SIGHUP);
    env.wait_reconciles(&d, n + 1);
    d.assert_running();
    assert_eq!(installed(&t), before, "installed files changed");
    t.assert_installed(&leaf);

    // The quorum returns: reachable again.
    etcd.start_member(1);
    wait_for(
        "status to say the cluster is reachable again",
        || (cluster_status(&env)["health"]["reachable"] == true).then_some(()),
        || d.describe(),
    );
    assert_eq!(installed(&t), before, "installed files changed");
}

// ---------------------------------------------------------------------------
// Three hosts, one shared certificate: pebble, BIND, etcd, three Postfix
// ---------------------------------------------------------------------------

/// What the three-host tests need besides etcd.
const SHARED_NEEDS: &[Need] = &[
    ("pebble", "pebble"),
    ("named", "bind9"),
    ("tsig-keygen", "bind9"),
    ("dig", "bind9-dnsutils"),
    ("postfix", "postfix"),
    ("openssl", "openssl"),
];

/// The zone pebble resolves through: every name at 127.0.0.1.
const ZONE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
@ IN A 127.0.0.1
ns IN A 127.0.0.1
mail IN A 127.0.0.1
";

const MAIL: &str = "mail.example.test";

/// The etcd prefix of the tests, and the key of the shared source's lock.
const PREFIX: &str = "/mxkeys-test";
const LOCK: &str = "/mxkeys-test/lock/acme/shared";
const STORED: &str = "/mxkeys-test/acme/shared";

/// How long a shared certificate may take to reach every host (an order
/// through DNS-01, a lease expiry, a mirror, a reload): less than the
/// ACME task's 60 s between passes, so it is the cluster task (watch,
/// mirror, reconcile) that spreads it, not a follower's next timer.
const SPREAD: std::time::Duration = std::time::Duration::from_secs(45);

/// One MX host: its state, its Postfix (started on a bootstrap
/// certificate), its daemon.
struct Host {
    id: String,
    env: Env,
    pf: Postfix,
    chain: std::path::PathBuf,
    daemon: Option<Daemon>,
}

/// pebble, BIND, a three-member etcd and three hosts.
struct Three {
    // Dropped first: the daemons (with their hosts), then the servers.
    hosts: Vec<Host>,
    etcd: EtcdCluster,
    pebble: Pebble,
    bind: Bind,
    boot: Leaf,
    shared_key: std::path::PathBuf,
    _root: Env,
}

impl Three {
    fn start(test: &str) -> Option<Three> {
        if !require_programs(test, &[ETCD, SHARED_NEEDS]) {
            return None;
        }
        let bind = Bind::start_with_zone(ZONE)?;
        let root = Env::new();
        let pebble = Pebble::start_with_dns(&root.path("pebble"), bind.addr());
        let etcd = EtcdCluster::start(&root.path("etcd"), 3);
        let shared_key = root.path("shared.key");
        write_shared_key(&shared_key);
        let boot = Ca::new("boot").issue(&LeafSpec::new(&[MAIL]));
        let hosts = ["mx1", "mx2", "mx3"]
            .into_iter()
            .map(|id| {
                let env = Env::new();
                let chain = env.out.join("chain.pem");
                write_atomic(&chain, combined_pem(&boot), 0o600);
                let pf = Postfix::start(&env.path("postfix"), &[&chain]);
                Host {
                    id: id.to_owned(),
                    env,
                    pf,
                    chain,
                    daemon: None,
                }
            })
            .collect();
        let three = Three {
            hosts,
            etcd,
            pebble,
            bind,
            boot,
            shared_key,
            _root: root,
        };
        for i in 0..3 {
            three.write_config(i);
        }
        Some(three)
    }

    /// Host `i`'s configuration: `[cluster]`, pebble, BIND with TSIG, one
    /// shared dns-01 source for MAIL, Postfix's combined file as target.
    fn write_config(&self, i: usize) {
        self.write_config_with(i, "challenge = \"dns-01\"\ndns = \"bind\"");
    }

    /// The same with `challenge` (the source's challenge lines).
    fn write_config_with(&self, i: usize, challenge: &str) {
        let h = &self.hosts[i];
        let reload = h.pf.reload_argv();
        let text = format!(
            "{header}host_id = {id}\n\n\
             [cluster]\nbackend = \"etcd\"\nendpoints = {endpoints}\nprefix = \"{PREFIX}\"\n\
             shared_key_file = {key}\nlease_ttl = \"3s\"\n\n\
             [acme]\ndirectory = {dir}\nemail = \"admin@example.test\"\nca_bundle = {ca}\n\n\
             [dns.bind]\ntype = \"rfc2136\"\nserver = \"{dns}\"\nzone = \"example.test\"\n\
             tsig_name = \"{key_name}\"\ntsig_secret_file = {tsig}\nnameservers = [\"{dns}\"]\n\
             propagation_interval = \"200ms\"\npropagation_timeout = \"30s\"\n\n\
             [[source]]\ntype = \"acme\"\nname = \"shared\"\ndomains = [\"{MAIL}\"]\n\
             {challenge}\nshared = true\n\n\
             [[target]]\nname = \"postfix\"\ndomains = [\"{MAIL}\"]\ncombined = {chain}\n\
             reload = [{reload}]\n",
            header = h.env.header(),
            id = q(&h.id),
            endpoints = self.etcd.endpoints_toml(),
            key = qp(&self.shared_key),
            dir = q(&self.pebble.url),
            ca = qp(&self.pebble.https_ca),
            dns = self.bind.addr(),
            key_name = common::bind::KEY_NAME,
            tsig = qp(&self.bind.dir().join("tsig.key")),
            chain = qp(&h.chain),
            reload = reload.iter().map(q).collect::<Vec<_>>().join(", "),
        );
        h.env.write_config_raw(&text);
    }

    fn start_daemon(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.daemon = Some(h.env.daemon_tagged(&h.id, &[]));
    }

    fn pebble_log(&self) -> String {
        std::fs::read_to_string(self.pebble.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Orders pebble received.
    fn orders(&self) -> usize {
        self.pebble_log()
            .lines()
            .filter(|l| l.contains("POST /order-plz -> calling handler()"))
            .count()
    }

    /// Certificates pebble issued (finalized orders).
    fn finalized(&self) -> usize {
        self.pebble_log()
            .lines()
            .filter(|l| l.contains("POST /finalize-order/") && l.contains("calling handler()"))
            .count()
    }

    /// The leaf host `i`'s Postfix serves now.
    fn served(&self, i: usize) -> Result<Vec<u8>, String> {
        served_leaf(
            &self.hosts[i].pf.addr(),
            Proto::Smtp,
            Some(MAIL),
            Offer::Any,
        )
    }

    /// The host holding the shared source's lock, by etcd.
    fn leader(&self) -> Option<usize> {
        let holder = self.etcd.get(LOCK)?;
        let holder = String::from_utf8_lossy(&holder).trim().to_owned();
        self.hosts.iter().position(|h| h.id == holder)
    }

    /// Everything a failure message needs.
    fn context(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            if let Some(d) = &h.daemon {
                out.push_str(&format!("=== {}\n{}\n", h.id, d.describe()));
            }
        }
        let log = self.pebble_log();
        let tail: String = log
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        out.push_str(&format!(
            "=== etcd keys: {:?}\n=== pebble.log (end)\n{tail}\n",
            self.etcd.keys(PREFIX)
        ));
        out
    }

    /// Waits until every host in `hosts` serves the same leaf, not the
    /// bootstrap one; returns it.
    #[track_caller]
    fn wait_same_leaf(&self, hosts: &[usize]) -> Vec<u8> {
        poll(
            "every host to serve the same new certificate",
            SPREAD,
            || {
                let leaves: Vec<Vec<u8>> = hosts
                    .iter()
                    .map(|&i| self.served(i).ok())
                    .collect::<Option<_>>()?;
                let first = leaves.first()?.clone();
                (first != self.boot.der && leaves.iter().all(|l| *l == first)).then_some(first)
            },
            || self.context(),
        )
    }
}

/// sha256 of a file, or `None` when missing.
fn file_sha(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256_hex(&b))
}

#[test]
fn three_hosts_place_one_order_for_a_shared_certificate_and_all_serve_it() {
    let Some(mut three) = Three::start(
        "cluster::three_hosts_place_one_order_for_a_shared_certificate_and_all_serve_it",
    ) else {
        return;
    };
    for i in 0..3 {
        three.start_daemon(i);
    }
    let leaf = three.wait_same_leaf(&[0, 1, 2]);
    assert_eq!(
        three.orders(),
        1,
        "one order at pebble\n{}",
        three.context()
    );
    assert_eq!(
        three.finalized(),
        1,
        "one certificate issued\n{}",
        three.context()
    );
    // The cluster holds it, stored by the host that led.
    assert!(three.etcd.get(STORED).is_some(), "{}", three.context());
    // The leaf is pebble's, for MAIL, in every host's target file.
    for h in &three.hosts {
        let certs = read_certs(&h.chain);
        assert_eq!(certs.first(), Some(&leaf), "{}: file", h.id);
    }
}

#[test]
fn a_leader_killed_mid_order_is_replaced_after_its_lease_with_at_most_one_more_order() {
    let Some(mut three) = Three::start(
        "cluster::a_leader_killed_mid_order_is_replaced_after_its_lease_with_at_most_one_more_order",
    ) else {
        return;
    };
    for i in 0..3 {
        three.start_daemon(i);
    }
    // The leader's order reaches pebble: kill the leader there.
    let leader = poll(
        "the first order at pebble",
        SPREAD,
        || (three.orders() >= 1).then(|| three.leader()).flatten(),
        || three.context(),
    );
    three.hosts[leader]
        .daemon
        .as_ref()
        .expect("running")
        .signal(nix::sys::signal::Signal::SIGKILL);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let leaf = three.wait_same_leaf(&survivors);
    assert!(
        three.orders() <= 2,
        "at most one extra order after the kill\n{}",
        three.context()
    );
    // The killed host's lock went with its lease; another host ordered
    // and stored what every survivor serves.
    assert_ne!(three.leader(), Some(leader), "{}", three.context());
    assert_ne!(leaf, three.boot.der);
    let stored: Value = serde_json::from_slice(&three.etcd.get(STORED).expect("stored"))
        .expect("a shared certificate");
    assert_ne!(
        stored["host"].as_str(),
        Some(three.hosts[leader].id.as_str()),
        "the killed leader had already stored its certificate: the kill came too late\n{}",
        three.context()
    );
    assert_eq!(three.orders(), 2, "{}", three.context());
}

#[test]
fn a_leader_paused_past_its_lease_cannot_write_when_it_resumes() {
    let Some(mut three) =
        Three::start("cluster::a_leader_paused_past_its_lease_cannot_write_when_it_resumes")
    else {
        return;
    };
    for i in 0..3 {
        three.start_daemon(i);
    }
    let leader = poll(
        "the first order at pebble",
        SPREAD,
        || (three.orders() >= 1).then(|| three.leader()).flatten(),
        || three.context(),
    );
    let paused = three.hosts[leader].daemon.as_ref().expect("running");
    paused.signal(nix::sys::signal::Signal::SIGSTOP);
    // Another host takes the job over after the lease (3 s) and stores.
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let leaf = three.wait_same_leaf(&survivors);
    let stored = poll(
        "the successor's certificate in etcd",
        SPREAD,
        || three.etcd.get(STORED),
        || three.context(),
    );
    assert_ne!(three.leader(), Some(leader), "{}", three.context());
    three.hosts[leader]
        .daemon
        .as_ref()
        .expect("running")
        .signal(nix::sys::signal::Signal::SIGCONT);
    // The resumed leader's write is refused: its log says fenced, and the
    // stored value is the successor's.
    let fenced = poll(
        "the resumed leader to log a fenced write",
        SPREAD,
        || {
            let d = three.hosts[leader].daemon.as_ref()?;
            let lines = d.stderr_lines_with("fenced");
            (!lines.is_empty()).then_some(lines)
        },
        || three.context(),
    );
    assert_eq!(
        three.etcd.get(STORED),
        Some(stored),
        "the stored value changed after the resume\n{}",
        three.context()
    );
    assert!(
        fenced.iter().any(|l| l.contains("acme/shared")),
        "{fenced:?}"
    );
    // Its status counts the refused write.
    poll(
        "the resumed leader's status to count a fenced write",
        SPREAD,
        || {
            let c = cluster_status(&three.hosts[leader].env);
            (c["health"]["fenced_writes"].as_u64() >= Some(1)).then_some(())
        },
        || three.context(),
    );
    // And it ends up serving the shared certificate too.
    let all = three.wait_same_leaf(&[0, 1, 2]);
    assert_eq!(all, leaf);
}

#[test]
fn stopping_a_majority_of_etcd_members_changes_nothing_any_host_installed_or_serves() {
    let Some(mut three) = Three::start(
        "cluster::stopping_a_majority_of_etcd_members_changes_nothing_any_host_installed_or_serves",
    ) else {
        return;
    };
    for i in 0..3 {
        three.start_daemon(i);
    }
    let leaf = three.wait_same_leaf(&[0, 1, 2]);
    let files: Vec<Option<String>> = three.hosts.iter().map(|h| file_sha(&h.chain)).collect();
    three.etcd.stop_member(1);
    three.etcd.stop_member(2);
    for h in &three.hosts {
        poll(
            "status to say the cluster is unreachable",
            SPREAD,
            || (cluster_status(&h.env)["health"]["reachable"] == false).then_some(()),
            || three.context(),
        );
    }
    for (i, h) in three.hosts.iter_mut().enumerate() {
        // A reconcile without the cluster (SIGHUP re-reads and reconciles).
        let d = h.daemon.as_mut().expect("running");
        let n = h.env.reconciles_of(d);
        d.signal(nix::sys::signal::Signal::SIGHUP);
        h.env.wait_reconciles(d, n + 1);
        d.assert_running();
        assert_eq!(
            file_sha(&h.chain),
            files[i],
            "{}: the installed file changed",
            h.id
        );
    }
    for i in 0..3 {
        assert_eq!(three.served(i).as_ref(), Ok(&leaf), "{}", three.hosts[i].id);
    }
}

/// HTTP-01 behind one address: the CA reaches only mx1's `http_listen`,
/// while mx2 leads the order. The test holds the job's lock first, in
/// mx1's name, so mx1 never takes the job (its own lock going away asks it
/// for nothing) and mx2, told that another host's job ended, does.
#[test]
fn a_follower_answers_the_leaders_http01_tokens_where_the_ca_connects() {
    let Some(mut three) =
        Three::start("cluster::a_follower_answers_the_leaders_http01_tokens_where_the_ca_connects")
    else {
        return;
    };
    let reached = format!("127.0.0.1:{}", three.pebble.http_port);
    let elsewhere = format!("127.0.0.1:{}", free_port());
    three.write_config_with(
        0,
        &format!("challenge = \"http-01\"\nhttp_listen = {}", q(&reached)),
    );
    three.write_config_with(
        1,
        &format!("challenge = \"http-01\"\nhttp_listen = {}", q(&elsewhere)),
    );
    // The lock, held by the test in mx1's name on a lease of its own.
    let grant = three.etcd.etcdctl(&["lease", "grant", "120"]).unwrap();
    let grant = String::from_utf8_lossy(&grant.stdout).to_string();
    let lease = grant
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no lease id in {grant:?}"))
        .to_owned();
    let put = three
        .etcd
        .etcdctl(&["put", &format!("--lease={lease}"), LOCK, "mx1"])
        .unwrap();
    assert!(put.status.success(), "{put:?}");
    three.start_daemon(0);
    three.start_daemon(1);
    for i in [0, 1] {
        poll(
            "both hosts to hold back the shared order",
            SPREAD,
            || {
                let d = three.hosts[i].daemon.as_ref()?;
                (!d.stderr_lines_with("shared: mx1 orders it").is_empty()).then_some(())
            },
            || three.context(),
        );
    }
    assert_eq!(three.orders(), 0, "{}", three.context());
    let del = three.etcd.etcdctl(&["del", LOCK]).unwrap();
    assert!(del.status.success(), "{del:?}");

    let leaf = three.wait_same_leaf(&[0, 1]);
    assert_ne!(leaf, three.boot.der);
    assert_eq!(three.orders(), 1, "{}", three.context());
    let stored: Value = serde_json::from_slice(&three.etcd.get(STORED).expect("stored"))
        .expect("a shared certificate");
    assert_eq!(stored["host"], "mx2", "mx2 ordered\n{}", three.context());
    // pebble validated over HTTP, at mx1's address, which only mx1's
    // cluster task served.
    assert!(
        three.pebble_log().contains("validate w/ HTTP"),
        "{}",
        three.context()
    );
    let mx1 = three.hosts[0].daemon.as_ref().expect("running");
    assert!(
        !mx1.stderr_lines_with(&format!("answering shared http-01 tokens on {reached}"))
            .is_empty(),
        "{}",
        three.context()
    );
}
