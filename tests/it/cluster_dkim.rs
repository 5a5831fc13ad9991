//! `[dkim] shared = true` (issue 18): two hosts, one key set, through the
//! library with the in-process cluster store (`cluster::memory`, etcd's
//! semantics; the etcd backend has its own tests) and a real BIND 9 on
//! loopback, the signatures checked by dkimpy through that server.
//!
//! The last two tests run the same path through a real three-member etcd
//! (Debian's etcd-server) with each host a separate process: the leader an
//! `mxkeys run` daemon killed with SIGKILL, the follower `mxkeys dkim
//! rotate` one-shots (about 5 s) or a daemon following each stored book
//! through its watch (about 35 s: a step made due by SIGHUP waits the DKIM
//! task's 30 s).
//!
//! Each host has its own state, key and signer directories and reload
//! log; both use the one BIND zone. Durations are short (lead 0 s, drain
//! and revoke_hold 2 s); waits poll with deadlines.

use mxkeys_testsupport as common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::Daemon;
use common::bind::{self, Bind};
use common::dkim_tools::{DEADLINE, DKIMPY, Dkimpy, message, mx_ok, setup};
use common::etcd::{ETCD, EtcdCluster};
use common::servers::poll;
use mxkeys::cluster::SharedStore as _;
use mxkeys::cluster::dkim::pass;
use mxkeys::cluster::memory::Memory;
use mxkeys::cluster::seal::SealKey;
use mxkeys::config::{Config, Host};
use serde_json::Value;

const DOMAIN: &str = "example.test";

/// One host: `work/ID/mxkeys.toml` and its directories.
struct Node {
    dir: PathBuf,
    config: Config,
}

impl Node {
    fn new(bind: &Bind, work: &Path, id: &str) -> Node {
        Node::with_cluster(bind, work, id, "endpoints = [\"http://127.0.0.1:1\"]\n")
    }

    /// The same with `cluster` (endpoints and further `[cluster]` lines).
    fn with_cluster(bind: &Bind, work: &Path, id: &str, cluster: &str) -> Node {
        let dir = work.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        let seal = work.join("shared.key");
        std::fs::write(&seal, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n").unwrap();
        let text = format!(
            "state_dir = \"state\"\n\
             host_id = \"{id}\"\n\
             [dns.bind]\n\
             type = \"rfc2136\"\n\
             server = \"{addr}\"\n\
             zone = \"{DOMAIN}\"\n\
             tsig_name = \"{key}\"\n\
             tsig_secret_file = \"{tsig}\"\n\
             nameservers = [\"{addr}\"]\n\
             propagation_interval = \"100ms\"\n\
             propagation_timeout = \"3s\"\n\
             [cluster]\n\
             backend = \"etcd\"\n\
             {cluster}\
             shared_key_file = \"{seal}\"\n\
             [dkim]\n\
             shared = true\n\
             domains = [\"{DOMAIN}\"]\n\
             algorithms = [\"rsa-2048\"]\n\
             dns = \"bind\"\n\
             key_dir = \"keys\"\n\
             signer = \"opendkim\"\n\
             signer_dir = \"signer\"\n\
             rotate_every = \"1h\"\n\
             lead = \"0s\"\n\
             drain = \"2s\"\n\
             revoke_hold = \"2s\"\n\
             revoke_settle = \"1s\"\n\
             reload = [\"sh\", \"-c\", \"echo reload >> {log}\"]\n",
            addr = bind.addr(),
            key = bind::KEY_NAME,
            tsig = bind.dir().join("tsig.key").display(),
            seal = seal.display(),
            log = dir.join("reloads.log").display(),
        );
        let path = dir.join("mxkeys.toml");
        std::fs::write(&path, &text).unwrap();
        let config = Config::parse(&path, &text, &Host::current()).unwrap();
        Node { dir, config }
    }

    fn book(&self) -> Value {
        let bytes = std::fs::read(self.dir.join("state/dkim/state.json")).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// (selector, state) of every key in this host's book.
    fn keys(&self) -> BTreeSet<(String, String)> {
        book_keys(&self.book())
    }

    fn selector_in(&self, state: &str) -> Option<String> {
        self.keys()
            .into_iter()
            .find(|(_, s)| s == state)
            .map(|(sel, _)| sel)
    }

    fn key_file(&self, selector: &str) -> PathBuf {
        self.dir.join(format!("keys/{DOMAIN}/{selector}.pem"))
    }

    /// The KeyTable's (selector, key file) lines.
    fn key_table(&self) -> Vec<(String, PathBuf)> {
        let text = std::fs::read_to_string(self.dir.join("signer/KeyTable")).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .map(|l| {
                let v: Vec<&str> = l.split_once(' ').unwrap().1.splitn(3, ':').collect();
                (v[1].to_owned(), PathBuf::from(v[2]))
            })
            .collect()
    }

    fn reloads(&self) -> usize {
        std::fs::read_to_string(self.dir.join("reloads.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

fn name(selector: &str) -> String {
    format!("{selector}._domainkey.{DOMAIN}")
}

/// A pass that must report no error; its lines.
async fn pass_ok(node: &Node, store: &Memory, seal: &SealKey, force: bool) -> Vec<String> {
    let p = pass(&node.config, store, seal, None, force)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", node.dir.display()));
    let errors: Vec<String> = p.errors.iter().map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{}: {errors:?}", node.dir.display());
    p.done
}

/// Passes of `node` (the first one `force`d) until `done` holds, with a
/// deadline; their lines.
async fn until(
    node: &Node,
    store: &Memory,
    seal: &SealKey,
    force: bool,
    what: &str,
    done: impl Fn(&Node) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    let mut lines = pass_ok(node, store, seal, force).await;
    while !done(node) {
        assert!(Instant::now() < deadline, "{what}: {lines:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        lines.extend(pass_ok(node, store, seal, false).await);
    }
    lines
}

/// dkimpy signs with `file` as `selector` and verifies through BIND.
fn signs_and_verifies(py: &Dkimpy, file: &Path, selector: &str) -> bool {
    let signed = py.sign(file, DOMAIN, selector, &message(DOMAIN, "shared"));
    py.verify_one(&signed).ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sign_with_one_key_set_that_only_the_leader_publishes_and_rotates() {
    let Some((bind, work)) = setup(
        "two_hosts_sign_with_one_key_set_that_only_the_leader_publishes_and_rotates",
        &[DKIMPY],
    ) else {
        return;
    };
    let (a, b) = (Node::new(&bind, &work, "a"), Node::new(&bind, &work, "b"));
    let seal = SealKey::load(&work.join("shared.key")).unwrap();
    let sa = Memory::new("a");
    let sb = sa.session("b");
    let py = Dkimpy::new(&work.join("py"), bind.port);

    // a leads: its first key is generated, published, verified and signs.
    until(&a, &sa, &seal, false, "a's first key signs", |n| {
        n.selector_in("active").is_some()
    })
    .await;
    let r1 = a.selector_in("active").unwrap();
    let record = a.book()["keys"][0]["record"].as_str().unwrap().to_owned();
    assert_eq!(bind.txt_values(&name(&r1)), vec![record]);
    assert_eq!(sa.get("lock/dkim").await.unwrap().unwrap().value, b"a");

    // b follows: the same key file and signer table, a reload, and not one
    // write to the zone.
    let serial = bind.serial(DOMAIN);
    pass_ok(&b, &sb, &seal, false).await;
    assert_eq!(b.keys(), a.keys());
    assert_eq!(
        std::fs::read(b.key_file(&r1)).unwrap(),
        std::fs::read(a.key_file(&r1)).unwrap()
    );
    assert_eq!(b.key_table(), vec![(r1.clone(), b.key_file(&r1))]);
    assert_eq!(a.key_table(), vec![(r1.clone(), a.key_file(&r1))]);
    assert_eq!(b.reloads(), 1);
    assert!(signs_and_verifies(&py, &b.key_file(&r1), &r1));
    // b asked to force a rotation while a leads: b only follows.
    pass_ok(&b, &sb, &seal, true).await;
    assert_eq!(b.keys(), a.keys());
    assert_eq!(bind.serial(DOMAIN), serial, "a follower never writes DNS");

    // a rotates: r2 signs, r1 drains; b's signer moves to r2 and r1's key
    // leaves b.
    until(&a, &sa, &seal, true, "a's second key signs", |n| {
        n.selector_in("draining").is_some()
    })
    .await;
    let r2 = a.selector_in("active").unwrap();
    assert_ne!(r2, r1);
    assert_eq!(a.selector_in("draining"), Some(r1.clone()));
    let serial = bind.serial(DOMAIN);
    pass_ok(&b, &sb, &seal, false).await;
    assert_eq!(bind.serial(DOMAIN), serial, "a follower never writes DNS");
    assert_eq!(b.keys(), a.keys());
    assert_eq!(b.key_table(), vec![(r2.clone(), b.key_file(&r2))]);
    assert!(!b.key_file(&r1).exists(), "r1's key left the follower");
    assert_eq!(b.reloads(), 2);
    assert!(signs_and_verifies(&py, &b.key_file(&r2), &r2));

    // a is paused past its lease: b leads and continues the same book,
    // revoking r1 when its drain ends, without a key of its own.
    sa.expire();
    let transcript = until(&b, &sb, &seal, false, "r1 revoked", |n| {
        n.keys().iter().any(|(s, st)| s == &r1 && st != "draining")
    })
    .await;
    assert_eq!(sb.get("lock/dkim").await.unwrap().unwrap().value, b"b");
    assert!(
        transcript.iter().all(|l| !l.contains(": new ")),
        "no second key for the same step: {transcript:?}"
    );
    assert_eq!(b.selector_in("active"), Some(r2.clone()));
    let revoked = bind.txt_values(&name(&r1));
    assert!(
        revoked.iter().all(|v| v.ends_with("p=")) && !revoked.is_empty(),
        "{revoked:?}"
    );
    assert!(signs_and_verifies(&py, &b.key_file(&r2), &r2));
    assert!(!signs_and_verifies(&py, &a.key_file(&r1), &r1));

    // a, resumed, follows b's book: r2 still signs there, r1 is gone.
    pass_ok(&a, &sa, &seal, false).await;
    assert_eq!(a.keys(), b.keys());
    assert_eq!(a.key_table(), vec![(r2.clone(), a.key_file(&r2))]);
    assert!(!a.key_file(&r1).exists(), "r1's key left a too");

    // b deletes r1 after revoke_hold; when b's lease ends in turn, a leads
    // from b's latest book (else its store would be refused as a conflict).
    until(&b, &sb, &seal, false, "r1 deleted", |n| {
        !n.keys().iter().any(|(s, _)| s == &r1)
    })
    .await;
    assert!(bind.txt_values(&name(&r1)).is_empty());
    sb.expire();
    let done = pass_ok(&a, &sa, &seal, false).await;
    assert_eq!(sa.get("lock/dkim").await.unwrap().unwrap().value, b"a");
    assert!(
        done.iter()
            .any(|l| l.starts_with("took the cluster's DKIM book")),
        "{done:?}"
    );
    assert_eq!(a.keys(), b.keys());
    assert!(done.iter().all(|l| !l.contains(": new ")), "{done:?}");
}

// ---------------------------------------------------------------------------
// The same through a real three-member etcd and separate processes
// ---------------------------------------------------------------------------

/// Where the etcd tests keep their keys.
const PREFIX: &str = "/mxkeys-dkim";

/// `[cluster]` lines for the real etcd (lease 2 s, the least allowed).
fn etcd_cluster(etcd: &EtcdCluster) -> String {
    format!(
        "endpoints = {}\nprefix = \"{PREFIX}\"\nlease_ttl = \"2s\"\n",
        etcd.endpoints_toml()
    )
}

impl Node {
    fn config_path(&self) -> PathBuf {
        self.dir.join("mxkeys.toml")
    }

    /// (selector, state) of every key in this host's book, empty while it
    /// has none.
    fn keys_now(&self) -> BTreeSet<(String, String)> {
        if self.dir.join("state/dkim/state.json").exists() {
            self.keys()
        } else {
            BTreeSet::new()
        }
    }

    fn selector_in_now(&self, state: &str) -> Option<String> {
        self.keys_now()
            .into_iter()
            .find(|(_, s)| s == state)
            .map(|(sel, _)| sel)
    }

    /// `mxkeys run` for this host, its output in its directory.
    fn daemon(&self, tag: &str) -> Daemon {
        let mut cmd = std::process::Command::new(common::bin());
        cmd.arg("--config")
            .arg(self.config_path())
            .arg("run")
            .env_remove("MXKEYS_CONFIG");
        Daemon::spawn(cmd, &self.dir, tag)
    }

    /// `mxkeys dkim rotate` (one process) that must succeed; its stdout.
    fn rotate(&self, force: bool) -> String {
        let mut args = vec!["dkim", "rotate"];
        if force {
            args.push("--force");
        }
        mx_ok(&self.config_path(), &args)
    }
}

/// (selector, state) of every key in the cluster's stored book.
fn stored_keys(etcd: &EtcdCluster) -> BTreeSet<(String, String)> {
    let Some(bytes) = etcd.get(&format!("{PREFIX}/dkim/book")) else {
        return BTreeSet::new();
    };
    book_keys(&serde_json::from_slice(&bytes).unwrap())
}

/// (selector, state) of every key in a book (`state.json`'s shape).
fn book_keys(book: &Value) -> BTreeSet<(String, String)> {
    book["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["selector"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn through_etcd_a_killed_leaders_book_is_followed_verified_and_continued_by_the_other_host() {
    let test =
        "through_etcd_a_killed_leaders_book_is_followed_verified_and_continued_by_the_other_host";
    let Some((bind, work)) = setup(test, &[DKIMPY, ETCD]) else {
        return;
    };
    let etcd = EtcdCluster::start(&work.join("etcd"), 3);
    let cluster = etcd_cluster(&etcd);
    let a = Node::with_cluster(&bind, &work, "a", &cluster);
    let b = Node::with_cluster(&bind, &work, "b", &cluster);
    let py = Dkimpy::new(&work.join("py"), bind.port);
    let lock = format!("{PREFIX}/lock/dkim");

    // a runs as a daemon and leads: its first key is published, verified,
    // signs, and its book and sealed key are in etcd.
    let mut da = a.daemon("a");
    let context = |d: &Daemon| format!("{}\netcd keys: {:?}", d.describe(), etcd.keys(PREFIX));
    let r1 = poll(
        "a's first key to sign and be stored in etcd",
        DEADLINE,
        || {
            let r1 = a
                .keys_now()
                .into_iter()
                .find(|(_, s)| s == "active")
                .map(|(sel, _)| sel)?;
            (stored_keys(&etcd) == a.keys_now()).then_some(r1)
        },
        || context(&da),
    );
    assert_eq!(etcd.get(&lock).as_deref(), Some(&b"a"[..]));
    let record = a.book()["keys"][0]["record"].as_str().unwrap().to_owned();
    assert_eq!(bind.txt_values(&name(&r1)), vec![record.clone()]);
    let sealed = etcd
        .get(&format!("{PREFIX}/dkim/key/{r1}.{DOMAIN}"))
        .expect("the sealed key is in etcd");
    assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE"));

    // b, another process with its own state and keys, follows: the same
    // key file, its own KeyTable and a reload; dkimpy verifies mail signed
    // with b's copy through BIND; b writes nothing to the zone, even
    // asked to force a rotation.
    let serial = bind.serial(DOMAIN);
    b.rotate(false);
    assert_eq!(b.keys(), a.keys());
    assert_eq!(
        std::fs::read(b.key_file(&r1)).unwrap(),
        std::fs::read(a.key_file(&r1)).unwrap()
    );
    assert_eq!(b.key_table(), vec![(r1.clone(), b.key_file(&r1))]);
    assert_eq!(b.reloads(), 1);
    assert!(signs_and_verifies(&py, &b.key_file(&r1), &r1));
    b.rotate(true);
    assert_eq!(b.keys(), a.keys(), "a follower's --force changes nothing");
    assert_eq!(stored_keys(&etcd), a.keys());
    assert_eq!(bind.serial(DOMAIN), serial, "a follower never writes DNS");
    assert_eq!(bind.txt_values(&name(&r1)), vec![record.clone()]);

    // a is killed: its lock goes with its lease; b leads and continues
    // a's book: the one step asked for (a forced rotation) makes one new
    // key, which b publishes and signs with (lead 0 s: in this one pass),
    // and r1 drains, its record kept.
    da.signal(nix::sys::signal::Signal::SIGKILL);
    da.wait_exit();
    poll(
        "a's lock to go with its lease",
        DEADLINE,
        || etcd.get(&lock).is_none().then_some(()),
        || context(&da),
    );
    let out = b.rotate(true);
    let keys = b.keys();
    assert!(
        keys.contains(&(r1.clone(), "draining".to_owned())),
        "{keys:?}\n{out}"
    );
    let new: Vec<&(String, String)> = keys.iter().filter(|(s, _)| *s != r1).collect();
    assert_eq!(new.len(), 1, "one new key for one step: {keys:?}\n{out}");
    let r2 = new[0].0.clone();
    assert_eq!(stored_keys(&etcd), keys, "b stored the book it continued");
    assert_eq!(bind.txt_values(&name(&r1)), vec![record]);
    assert_eq!(bind.txt_values(&name(&r2)).len(), 1, "b published r2");
    assert!(bind.serial(DOMAIN) != serial);
    assert_eq!(b.key_table(), vec![(r2.clone(), b.key_file(&r2))]);
    assert!(signs_and_verifies(&py, &b.key_file(&r2), &r2));
}

/// Both algorithms in `node`'s configuration, then SIGHUP to its daemon.
fn add_ed25519(node: &Node, daemon: &Daemon) {
    let path = node.config_path();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "algorithms = [\"rsa-2048\"]",
        "algorithms = [\"rsa-2048\", \"ed25519\"]",
    );
    std::fs::write(&path, text).unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
}

/// How many leases etcd holds.
fn leases(etcd: &EtcdCluster) -> usize {
    let out = etcd.etcdctl(&["lease", "list"]).unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// Well under a follower's one-minute poll: a wait this long that ends in
/// time shows the watch ran the pass.
const SOON: std::time::Duration = std::time::Duration::from_secs(20);

#[test]
fn through_etcd_a_follower_daemon_takes_each_stored_book_at_once_on_one_lease_and_leads_after_a_kill()
 {
    let test = "through_etcd_a_follower_daemon_takes_each_stored_book_at_once_on_one_lease_and_leads_after_a_kill";
    let Some((bind, work)) = setup(test, &[DKIMPY, ETCD]) else {
        return;
    };
    let etcd = EtcdCluster::start(&work.join("etcd"), 3);
    let cluster = etcd_cluster(&etcd);
    let a = Node::with_cluster(&bind, &work, "a", &cluster);
    let b = Node::with_cluster(&bind, &work, "b", &cluster);
    let lock = format!("{PREFIX}/lock/dkim");
    let mut da = a.daemon("a");
    let context = |ds: &[&Daemon]| {
        let mut s = format!("etcd keys: {:?}\n", etcd.keys(PREFIX));
        for d in ds {
            s.push_str(&d.describe());
        }
        s
    };
    let r1 = poll(
        "a's first key to sign and be stored in etcd",
        DEADLINE,
        || {
            let r1 = a.selector_in_now("active")?;
            (stored_keys(&etcd) == a.keys_now()).then_some(r1)
        },
        || context(&[&da]),
    );
    assert_eq!(etcd.get(&lock).as_deref(), Some(&b"a"[..]));

    // b's daemon follows (its first pass), on the one lease of its
    // connection: one lease per daemon.
    let mut db = b.daemon("b");
    poll(
        "b to sign with r1",
        DEADLINE,
        || (b.key_table() == vec![(r1.clone(), b.key_file(&r1))]).then_some(()),
        || context(&[&da, &db]),
    );
    assert_eq!(leases(&etcd), 2, "one lease per daemon");
    let serial = bind.serial(DOMAIN);

    // a adds an ed25519 key (its configuration reloaded): b signs with it
    // as soon as a stores the book, not at its next poll.
    add_ed25519(&a, &da);
    let both = poll(
        "a's ed25519 key to sign and be stored",
        DEADLINE,
        || {
            let keys = stored_keys(&etcd);
            (keys.len() == 2 && keys.iter().all(|(_, s)| s == "active")).then_some(keys)
        },
        || context(&[&da, &db]),
    );
    poll(
        "b to sign with both keys, well before its next poll",
        SOON,
        || (b.keys_now() == both && b.key_table().len() == 2).then_some(()),
        || context(&[&da, &db]),
    );
    assert_eq!(bind.serial(DOMAIN) - serial, 1, "a wrote the zone, b not");
    add_ed25519(&b, &db);

    // a is killed: b leads as soon as a's lease ends, and continues the
    // same book: no new key, the zone untouched.
    da.signal(nix::sys::signal::Signal::SIGKILL);
    da.wait_exit();
    poll(
        "b to lead once a's lease ended",
        SOON,
        || (etcd.get(&lock).as_deref() == Some(&b"b"[..])).then_some(()),
        || context(&[&db]),
    );
    let serial = bind.serial(DOMAIN);
    std::thread::sleep(std::time::Duration::from_secs(1));
    db.assert_running();
    assert_eq!(b.keys_now(), both, "{}", context(&[&db]));
    assert_eq!(stored_keys(&etcd), both);
    assert_eq!(bind.serial(DOMAIN), serial);
    assert_eq!(leases(&etcd), 1, "a's lease ended; b's is the only one");
}
