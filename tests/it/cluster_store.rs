//! The etcd backend of `SharedStore` against a real 3-member etcd cluster
//! (Debian's etcd-server) on loopback: leader election, fencing of a
//! leader whose lease ended, compare-and-set, leased keys and watches,
//! quorum loss, and TLS with client certificates. What the store did is
//! checked with `etcdctl` where it matters. Each test starts its own
//! cluster; waits are bounded polls, never assumed durations.
#![cfg(feature = "etcd")]

use mxkeys_testsupport as common;

use std::path::Path;
use std::time::Duration;

use common::etcd::{ETCD, EtcdCluster};
use common::servers::require;
use mxkeys::cluster::{
    Backend, ClusterError, Event, Expect, Fence, Leadership, SharedStore, Written, campaign_if_free,
};
use mxkeys::config::{Cluster, ClusterBackend, ClusterTls, HostId, Secret};

const PREFIX: &str = "/mxkeys/test";
/// The longest any single store call may take in these tests: a bound so
/// that a hang fails the test instead of stalling it.
const BOUND: Duration = Duration::from_secs(30);

fn cluster_config(etcd: &EtcdCluster, dir: &Path, ttl_secs: u64) -> Cluster {
    Cluster {
        backend: ClusterBackend::Etcd,
        endpoints: etcd.endpoints(),
        prefix: PREFIX.to_owned(),
        tls: etcd.tls.as_ref().map(|t| ClusterTls {
            ca_file: Some(t.ca.clone()),
            client: Some((t.client_cert.clone(), t.client_key.clone())),
        }),
        credentials: None,
        shared_key_file: dir.join("shared.key"),
        lease_ttl: Duration::from_secs(ttl_secs),
    }
}

async fn connect(cluster: &Cluster, host: &str) -> Backend {
    let host = HostId::parse(host).unwrap();
    bounded(Backend::connect(cluster, &host))
        .await
        .unwrap_or_else(|e| panic!("connect as {host}: {e}"))
}

/// `f`, or a failure naming the hang.
async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("a store call did not return within its bound")
}

/// The lease (hex, as etcdctl takes it) and create revision of the
/// absolute key `key`, read with etcdctl.
fn lease_of(etcd: &EtcdCluster, key: &str) -> (String, i64) {
    let out = etcd
        .etcdctl(&["get", "--write-out=json", key])
        .expect("etcdctl get");
    assert!(out.status.success(), "etcdctl get {key}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kv = &v["kvs"][0];
    let lease = kv["lease"]
        .as_i64()
        .or_else(|| kv["lease"].as_u64().map(|l| l as i64))
        .unwrap_or_else(|| panic!("{key} has no lease: {v}"));
    (
        format!("{lease:x}"),
        kv["create_revision"].as_i64().unwrap(),
    )
}

fn setup(test: &str) -> Option<(tempfile::TempDir, EtcdCluster)> {
    if !require(test, &[ETCD]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start(&dir.path().join("etcd"), 3);
    Some((dir, etcd))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_campaigning_at_once_elect_exactly_one_leader() {
    let Some((dir, etcd)) = setup("three_hosts_campaigning_at_once_elect_exactly_one_leader")
    else {
        return;
    };
    let config = cluster_config(&etcd, dir.path(), 10);
    let hosts = [
        connect(&config, "mx1").await,
        connect(&config, "mx2").await,
        connect(&config, "mx3").await,
    ];
    let (a, b, c) = tokio::join!(
        hosts[0].campaign("acme/shared"),
        hosts[1].campaign("acme/shared"),
        hosts[2].campaign("acme/shared"),
    );
    let results = [a.unwrap(), b.unwrap(), c.unwrap()];
    let leaders: Vec<usize> = (0..3).filter(|&i| results[i].is_some()).collect();
    assert_eq!(leaders.len(), 1, "exactly one leader: {results:?}");
    let leader = leaders[0];
    let lead = results[leader].clone().unwrap();
    // The lock names the leader, with the fence as its create revision.
    let lock = format!("{PREFIX}/lock/acme/shared");
    assert_eq!(
        etcd.get(&lock).as_deref(),
        Some(format!("mx{}", leader + 1).as_bytes())
    );
    assert_eq!(lease_of(&etcd, &lock).1, lead.fence.0);
    // The lock holds for the leader's fence, asked from any host, and for
    // no other fence (the others have no leadership to ask about).
    let other = Leadership {
        job: lead.job.clone(),
        fence: Fence(lead.fence.0 - 1),
    };
    for h in &hosts {
        assert!(bounded(h.holds(&lead)).await.unwrap());
        assert!(!bounded(h.holds(&other)).await.unwrap());
    }
    // Campaigning again: the leader keeps its leadership, the others still
    // get nothing.
    for (i, h) in hosts.iter().enumerate() {
        let again = bounded(h.campaign("acme/shared")).await.unwrap();
        assert_eq!(again.as_ref(), (i == leader).then_some(&lead), "host {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_was_revoked_is_fenced_and_leads_again_only_after_its_successor_resigns()
 {
    let Some((dir, etcd)) = setup(
        "a_leader_whose_lease_was_revoked_is_fenced_and_leads_again_only_after_its_successor_resigns",
    ) else {
        return;
    };
    let config = cluster_config(&etcd, dir.path(), 3);
    let a = connect(&config, "mx1").await;
    let b = connect(&config, "mx2").await;
    let job = "acme/shared";
    let lock = format!("{PREFIX}/lock/{job}");
    let cert = format!("{PREFIX}/acme/shared");

    let lead_a = bounded(a.campaign(job)).await.unwrap().expect("A leads");
    let w = bounded(a.put_fenced(&lead_a, "acme/shared", b"from A", Expect::Absent))
        .await
        .unwrap();
    let Written::Stored(rev_a) = w else {
        panic!("A's first write: {w:?}")
    };
    assert!(bounded(b.campaign(job)).await.unwrap().is_none());

    // A's lease ends behind its back (as when A is paused past its TTL).
    let (old_lease, _) = lease_of(&etcd, &lock);
    let out = etcd.etcdctl(&["lease", "revoke", &old_lease]).unwrap();
    assert!(
        out.status.success(),
        "etcdctl lease revoke: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!bounded(a.holds(&lead_a)).await.unwrap());
    // A's keep-alive finds its lease gone and grants a new one on its own
    // (A makes no call meanwhile): etcd then has two leases again, A's new
    // one and B's.
    let leases = || {
        let out = etcd
            .etcdctl(&["lease", "list"])
            .expect("etcdctl lease list");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty())
            .collect::<Vec<String>>()
    };
    common::servers::poll(
        "A's keep-alive to grant a new lease",
        BOUND,
        || {
            let now = leases();
            (now.len() == 2 && !now.contains(&old_lease)).then_some(())
        },
        || format!("leases: {:?}", leases()),
    );

    let lead_b = bounded(b.campaign(job))
        .await
        .unwrap()
        .expect("B leads now");
    assert!(lead_b.fence > lead_a.fence, "{lead_b:?} after {lead_a:?}");
    let w = bounded(b.put_fenced(&lead_b, "acme/shared", b"from B", Expect::Revision(rev_a)))
        .await
        .unwrap();
    assert!(matches!(w, Written::Stored(_)), "B's write: {w:?}");

    // A resumes and writes as if it still led: refused, B's value stays.
    let w = bounded(a.put_fenced(&lead_a, "acme/shared", b"stale A", Expect::Revision(rev_a)))
        .await
        .unwrap();
    assert_eq!(w, Written::Fenced);
    let w = bounded(a.put_fenced(&lead_a, "acme/other", b"stale A", Expect::Absent))
        .await
        .unwrap();
    assert_eq!(w, Written::Fenced);
    assert_eq!(etcd.get(&cert).as_deref(), Some(&b"from B"[..]));
    assert_eq!(etcd.get(&format!("{PREFIX}/acme/other")), None);

    // A has a new lease for new work, but cannot lead while B does.
    assert!(bounded(a.campaign(job)).await.unwrap().is_none());
    bounded(b.resign(&lead_b)).await.unwrap();
    assert_eq!(etcd.get(&lock), None, "B's resign removed its lock");
    let lead_a2 = bounded(a.campaign(job))
        .await
        .unwrap()
        .expect("A leads again once B resigned");
    assert!(lead_a2.fence > lead_b.fence);
    let (new_lease, _) = lease_of(&etcd, &lock);
    assert_ne!(new_lease, old_lease, "A's new leadership is on a new lease");
    assert_eq!(etcd.get(&lock).as_deref(), Some(&b"mx1"[..]));
    // B's old leadership is fenced in turn.
    let w = bounded(b.put_fenced(&lead_b, "acme/shared", b"stale B", Expect::Absent))
        .await
        .unwrap();
    assert_eq!(w, Written::Fenced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_refuses_absent_on_an_existing_key_and_a_stale_revision() {
    let Some((dir, etcd)) =
        setup("compare_and_set_refuses_absent_on_an_existing_key_and_a_stale_revision")
    else {
        return;
    };
    let config = cluster_config(&etcd, dir.path(), 10);
    let a = connect(&config, "mx1").await;
    let lead = bounded(a.campaign("dkim")).await.unwrap().unwrap();
    let Written::Stored(r1) = bounded(a.put_fenced(&lead, "dkim/book", b"v1", Expect::Absent))
        .await
        .unwrap()
    else {
        panic!("first write refused")
    };
    assert_eq!(
        bounded(a.put_fenced(&lead, "dkim/book", b"again", Expect::Absent))
            .await
            .unwrap(),
        Written::Conflict
    );
    let Written::Stored(r2) =
        bounded(a.put_fenced(&lead, "dkim/book", b"v2", Expect::Revision(r1)))
            .await
            .unwrap()
    else {
        panic!("write at the read revision refused")
    };
    assert!(r2 > r1);
    assert_eq!(
        bounded(a.put_fenced(&lead, "dkim/book", b"stale", Expect::Revision(r1)))
            .await
            .unwrap(),
        Written::Conflict
    );
    assert_eq!(
        bounded(a.put_fenced(&lead, "dkim/missing", b"x", Expect::Revision(r1)))
            .await
            .unwrap(),
        Written::Conflict
    );
    assert_eq!(
        etcd.get(&format!("{PREFIX}/dkim/book")).as_deref(),
        Some(&b"v2"[..])
    );
    let got = bounded(a.get("dkim/book")).await.unwrap().unwrap();
    assert_eq!((got.value.as_slice(), got.revision), (&b"v2"[..], r2));
    let listed = bounded(a.list("dkim/")).await.unwrap();
    let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["dkim/book"]);
    bounded(a.delete("dkim/book")).await.unwrap();
    assert_eq!(bounded(a.get("dkim/book")).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leased_keys_live_while_kept_alive_and_vanish_with_the_host_and_a_watch_sees_it_all_in_order()
 {
    let Some((dir, etcd)) = setup(
        "leased_keys_live_while_kept_alive_and_vanish_with_the_host_and_a_watch_sees_it_all_in_order",
    ) else {
        return;
    };
    let config = cluster_config(&etcd, dir.path(), 2);
    let watcher = connect(&config, "mx1").await;
    let leaving = connect(&config, "mx2").await;
    let mut events = bounded(watcher.watch("http01/", 0)).await.unwrap();

    bounded(leaving.put_leased("http01/tok1", b"auth1"))
        .await
        .unwrap();
    bounded(leaving.put_leased("http01/tok2", b"auth2"))
        .await
        .unwrap();
    bounded(watcher.delete("http01/tok1")).await.unwrap();
    // Outside the watched prefix: not delivered.
    bounded(watcher.put_leased("acme/x", b"y")).await.unwrap();
    // Kept alive past three TTLs: still there.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        etcd.get(&format!("{PREFIX}/http01/tok2")).as_deref(),
        Some(&b"auth2"[..]),
        "the keep-alive kept the lease"
    );
    // The host goes away: its lease ends within its TTL, and the key with it.
    drop(leaving);
    common::servers::poll(
        "the leased key to vanish",
        BOUND,
        || {
            etcd.get(&format!("{PREFIX}/http01/tok2"))
                .is_none()
                .then_some(())
        },
        || etcd.log(),
    );

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let e = bounded(events.recv()).await.expect("the watch ended early");
        seen.push(e);
    }
    let summary: Vec<String> = seen
        .iter()
        .map(|e| match e {
            Event::Put { key, stored } => {
                format!("put {key}={}", String::from_utf8_lossy(&stored.value))
            }
            Event::Delete { key } => format!("delete {key}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "put http01/tok1=auth1",
            "put http01/tok2=auth2",
            "delete http01/tok1",
            "delete http01/tok2",
        ]
    );
    // Watching from a revision replays what came after it.
    let Event::Put { stored, .. } = &seen[0] else {
        unreachable!()
    };
    let mut replay = bounded(watcher.watch("http01/", stored.revision))
        .await
        .unwrap();
    let e = bounded(replay.recv()).await.unwrap();
    assert_eq!(e, seen[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_calls_fail_as_unavailable_within_bounds_and_work_again_when_it_returns() {
    let Some((dir, mut etcd)) = setup(
        "without_a_quorum_calls_fail_as_unavailable_within_bounds_and_work_again_when_it_returns",
    ) else {
        return;
    };
    let config = cluster_config(&etcd, dir.path(), 3);
    let a = connect(&config, "mx1").await;
    let lead = bounded(a.campaign("dkim")).await.unwrap().unwrap();
    let w = bounded(a.put_fenced(&lead, "dkim/book", b"v1", Expect::Absent))
        .await
        .unwrap();
    assert!(matches!(w, Written::Stored(_)), "{w:?}");
    // From now: the write before is not replayed, even if the watch lands
    // on a member that has not applied it yet.
    let mut events = bounded(a.watch("dkim/", 0)).await.unwrap();
    etcd.stop_member(1);
    etcd.stop_member(2);
    // The watch ends: a member without a leader cancels it (etcd-client
    // asks for a leader), a stopped one breaks it. The caller lists again.
    assert_eq!(bounded(events.recv()).await, None, "the watch ended");
    let got = bounded(a.get("dkim/book")).await;
    assert!(matches!(got, Err(ClusterError::Unavailable(_))), "{got:?}");
    let msg = got.unwrap_err().to_string();
    eprintln!("without a quorum: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    let c = bounded(a.campaign("acme/shared")).await;
    assert!(matches!(c, Err(ClusterError::Unavailable(_))), "{c:?}");
    let w = bounded(a.put_fenced(&lead, "dkim/book", b"v2", Expect::Absent)).await;
    assert!(matches!(w, Err(ClusterError::Unavailable(_))), "{w:?}");

    etcd.start_member(1);
    etcd.start_member(2);
    // The same store works again without reconnecting by hand.
    let back = bounded(async {
        loop {
            if let Ok(Some(v)) = a.get("dkim/book").await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
    .await;
    assert_eq!(back.value, b"v1");
    let lead2 = bounded(a.campaign("acme/shared")).await.unwrap();
    assert!(lead2.is_some(), "campaigns again once the quorum is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_client_certificate_gets_in_and_without_it_connecting_fails_in_one_line() {
    let test =
        "over_tls_the_client_certificate_gets_in_and_without_it_connecting_fails_in_one_line";
    if !require(test, &[ETCD]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdCluster::start_tls(&dir.path().join("etcd"), 3);
    assert!(etcd.endpoints()[0].starts_with("https://"));
    let config = cluster_config(&etcd, dir.path(), 5);
    let a = connect(&config, "mx1").await;
    bounded(a.put_leased("http01/tls", b"ok")).await.unwrap();
    assert_eq!(
        etcd.get(&format!("{PREFIX}/http01/tls")).as_deref(),
        Some(&b"ok"[..])
    );

    let mut no_cert = config.clone();
    no_cert.tls = Some(ClusterTls {
        ca_file: no_cert.tls.unwrap().ca_file,
        client: None,
    });
    let err = bounded(Backend::connect(&no_cert, &HostId::parse("mx2").unwrap()))
        .await
        .expect_err("connecting without a client certificate");
    let msg = err.to_string();
    eprintln!("without a client certificate: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(msg.contains("127.0.0.1"), "names the endpoints: {msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_authentication_the_password_file_gets_in_and_a_wrong_password_is_refused_as_auth()
 {
    let Some((dir, etcd)) = setup(
        "with_etcd_authentication_the_password_file_gets_in_and_a_wrong_password_is_refused_as_auth",
    ) else {
        return;
    };
    let ctl = |args: &[&str]| {
        let out = etcd.etcdctl(args).unwrap();
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let prefix = format!("{PREFIX}/");
    ctl(&["user", "add", "root:root-pw"]);
    ctl(&["user", "add", "mxkeys:mxkeys-pw"]);
    ctl(&["role", "add", "mxkeys"]);
    ctl(&[
        "role",
        "grant-permission",
        "mxkeys",
        "--prefix=true",
        "readwrite",
        &prefix,
    ]);
    ctl(&["user", "grant-role", "mxkeys", "mxkeys"]);
    ctl(&["auth", "enable"]);

    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "mxkeys-pw\n").unwrap();
    let mut config = cluster_config(&etcd, dir.path(), 5);
    config.credentials = Some(("mxkeys".into(), Secret::File(password.clone())));
    let a = connect(&config, "mx1").await;
    let lead = bounded(a.campaign("dkim")).await.unwrap().expect("leads");
    let w = bounded(a.put_fenced(&lead, "dkim/book", b"v1", Expect::Absent))
        .await
        .unwrap();
    assert!(matches!(w, Written::Stored(_)), "{w:?}");
    let out = etcd
        .etcdctl(&[
            "--user=root:root-pw",
            "get",
            "--print-value-only",
            &format!("{prefix}dkim/book"),
        ])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v1");

    std::fs::write(&password, "not-the-password\n").unwrap();
    let err = bounded(Backend::connect(&config, &HostId::parse("mx2").unwrap()))
        .await
        .expect_err("a wrong password");
    let msg = err.to_string();
    assert!(matches!(err, ClusterError::Auth(_)), "{err:?}");
    assert!(!msg.contains("not-the-password"), "no secret in: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
}

/// etcd's count of watchers, summed over the members (their /metrics).
fn etcd_watchers(etcd: &EtcdCluster) -> u64 {
    etcd_metric(etcd, "etcd_debugging_mvcc_watcher_total")
        .iter()
        .sum()
}

/// One metric of every member (their /metrics), in member order.
fn etcd_metric(etcd: &EtcdCluster, name: &str) -> Vec<u64> {
    use std::io::{Read, Write};
    let mut values = Vec::new();
    for e in etcd.endpoints() {
        let addr = e.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).expect("etcd metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let line = body
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {addr}'s metrics"));
        values.push(
            line.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap() as u64,
        );
    }
    values
}

/// The Raft proposals the cluster committed (the most any member saw).
fn proposals(etcd: &EtcdCluster) -> u64 {
    etcd_metric(etcd, "etcd_server_proposals_committed_total")
        .into_iter()
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_finds_a_job_held_by_another_reads_and_proposes_nothing() {
    let Some((dir, etcd)) =
        setup("a_host_that_finds_a_job_held_by_another_reads_and_proposes_nothing")
    else {
        return;
    };
    let config = cluster_config(&etcd, dir.path(), 10);
    let a = connect(&config, "mx1").await;
    let b = connect(&config, "mx2").await;
    let lead = bounded(campaign_if_free(&a, "acme/mx", "mx1"))
        .await
        .unwrap()
        .expect("a free job is taken");
    // Its own job: taken again, the same fence.
    let again = bounded(campaign_if_free(&a, "acme/mx", "mx1"))
        .await
        .unwrap();
    assert_eq!(again.map(|l| l.fence), Some(lead.fence));
    let before = proposals(&etcd);
    for _ in 0..20 {
        assert!(
            bounded(campaign_if_free(&b, "acme/mx", "mx2"))
                .await
                .unwrap()
                .is_none()
        );
    }
    let read_only = proposals(&etcd) - before;
    // A campaign that loses is a proposal all the same.
    let before = proposals(&etcd);
    for _ in 0..20 {
        assert!(bounded(b.campaign("acme/mx")).await.unwrap().is_none());
    }
    let campaigned = proposals(&etcd) - before;
    assert!(
        campaigned >= 20,
        "20 lost campaigns, {campaigned} proposals"
    );
    assert!(
        read_only < 5,
        "20 looks at a held job made {read_only} proposals"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_watch_receiver_ends_the_watch_in_etcd_even_when_nothing_changes() {
    let Some((dir, etcd)) =
        setup("dropping_a_watch_receiver_ends_the_watch_in_etcd_even_when_nothing_changes")
    else {
        return;
    };
    let config = cluster_config(&etcd, dir.path(), 5);
    let a = connect(&config, "mx1").await;
    assert_eq!(etcd_watchers(&etcd), 0);
    let events = bounded(a.watch("acme/", 0)).await.unwrap();
    assert_eq!(
        etcd_watchers(&etcd),
        1,
        "the watch exists once watch() returned"
    );
    drop(events);
    common::servers::poll(
        "etcd to drop the watcher",
        BOUND,
        || (etcd_watchers(&etcd) == 0).then_some(()),
        || format!("watchers: {}", etcd_watchers(&etcd)),
    );
}
