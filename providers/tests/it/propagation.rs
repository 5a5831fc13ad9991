//! The propagation check against real BIND 9 servers on loopback. Every
//! check asks the configured servers only (or a resolver on loopback):
//! nothing here asks the system resolver.

use std::net::SocketAddr;
use std::time::Duration;

use crate::bind_client::BindClient as _;
use mxkeys_providers::propagation::{MAX_CNAME_CHAIN, Propagation, ServerAnswer};
use mxkeys_providers::{Error, RData, RecordStore, RecordType};
use mxkeys_testsupport::bind::Bind;

fn txt(v: &str) -> RData {
    RData::Txt(v.to_owned())
}

/// Asks exactly `servers`, every 50 ms, for at most `timeout`.
fn check(servers: &[SocketAddr], timeout: Duration) -> Propagation {
    Propagation {
        nameservers: Some(servers.to_vec()),
        interval: Duration::from_millis(50),
        timeout,
        ..Propagation::default()
    }
}

/// A short check expected to fail: its error message.
async fn fails(p: &Propagation, name: &str, rtype: RecordType, expected: &[RData]) -> String {
    let mut short = p.clone();
    short.timeout = Duration::from_millis(300);
    match short.wait(name, rtype, expected).await {
        Err(Error::Transport(message)) => message,
        other => panic!("expected the check to time out, got {other:?}"),
    }
}

fn servers_of(answers: &[ServerAnswer]) -> Vec<(SocketAddr, String)> {
    answers.iter().map(|a| (a.server, a.name.clone())).collect()
}

#[tokio::test]
async fn passes_only_once_the_record_is_written() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "_acme-challenge.www.example.test";
    let value = format!("v=DKIM1; k=rsa; p={}", "K".repeat(392));
    let p = check(&[bind.addr()], Duration::from_secs(20));

    let before = fails(&p, name, RecordType::Txt, &[txt(&value)]).await;
    assert!(before.contains(&bind.addr().to_string()), "{before}");
    assert!(before.contains("NXDOMAIN"), "{before}");
    assert!(before.contains(name), "{before}");

    store.replace(name, 60, &[txt(&value)]).await.unwrap();
    let answers = p.wait(name, RecordType::Txt, &[txt(&value)]).await.unwrap();
    assert_eq!(servers_of(&answers), vec![(bind.addr(), name.to_owned())]);
    // Names are absolute with or without the final dot, in any case.
    p.wait(
        "_ACME-challenge.www.example.test.",
        RecordType::Txt,
        &[txt(&value)],
    )
    .await
    .unwrap();

    // Another value than the one expected is not propagation: the error
    // shows what the server has.
    let other = fails(&p, name, RecordType::Txt, &[txt("something-else")]).await;
    assert!(
        other.contains(&bind.addr().to_string()) && other.contains("v=DKIM1"),
        "{other}"
    );
    // A superset is not the expected set either.
    let more = fails(&p, name, RecordType::Txt, &[txt(&value), txt("extra")]).await;
    assert!(more.contains(&bind.addr().to_string()), "{more}");
}

/// A waiter started before the write (polling, seeing NXDOMAIN) passes
/// once the write lands.
#[tokio::test]
async fn a_running_wait_sees_the_write() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "later.example.test";
    let p = check(&[bind.addr()], Duration::from_secs(20));
    let waiter = {
        let p = p.clone();
        tokio::spawn(async move { p.wait(name, RecordType::Txt, &[txt("later")]).await })
    };
    store.replace(name, 60, &[txt("later")]).await.unwrap();
    let answers = waiter.await.unwrap().unwrap();
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].server, bind.addr());
    assert!(answers[0].first_matched_after <= p.timeout);
}

/// Two servers: the check passes only when both answer the set.
#[tokio::test]
async fn every_server_must_answer() {
    let Some(first) = Bind::start() else { return };
    let Some(second) = Bind::start() else { return };
    let plain = "two.example.test";
    let p = check(&[first.addr(), second.addr()], Duration::from_secs(20));
    first
        .provider()
        .replace(plain, 60, &[txt("v1")])
        .await
        .unwrap();

    let message = fails(&p, plain, RecordType::Txt, &[txt("v1")]).await;
    assert!(message.contains(&second.addr().to_string()), "{message}");
    assert!(!message.contains(&first.addr().to_string()), "{message}");

    second
        .provider()
        .replace(plain, 60, &[txt("v1")])
        .await
        .unwrap();
    let answers = p.wait(plain, RecordType::Txt, &[txt("v1")]).await.unwrap();
    assert_eq!(
        servers_of(&answers),
        vec![
            (first.addr(), plain.to_owned()),
            (second.addr(), plain.to_owned())
        ]
    );
}

/// `_acme-challenge.example.test CNAME x.delegated.test`: the value is
/// checked at the target.
#[tokio::test]
async fn cnames_are_followed_to_the_target() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider_any_zone();
    let name = "_acme-challenge.example.test";
    let p = check(&[bind.addr()], Duration::from_secs(20));

    let before = fails(&p, name, RecordType::Txt, &[txt("token")]).await;
    assert!(before.contains("x.delegated.test"), "{before}");
    assert!(before.contains("NXDOMAIN"), "{before}");

    store
        .replace("x.delegated.test", 60, &[txt("token")])
        .await
        .unwrap();
    let answers = p
        .wait(name, RecordType::Txt, &[txt("token")])
        .await
        .unwrap();
    assert_eq!(
        servers_of(&answers),
        vec![
            (bind.addr(), "_acme-challenge.example.test".to_owned()),
            (bind.addr(), "x.delegated.test".to_owned()),
        ]
    );
    assert_eq!(answers[0].answer, "CNAME x.delegated.test.");
    // The value at the CNAME's own name would not be what verifiers see.
    let wrong = fails(&p, name, RecordType::Txt, &[txt("other")]).await;
    assert!(
        wrong.contains("x.delegated.test") && wrong.contains("token"),
        "{wrong}"
    );
    // Asked for the CNAME itself, it is not followed.
    p.wait(
        name,
        RecordType::Cname,
        &[RData::Cname("x.delegated.test".to_owned())],
    )
    .await
    .unwrap();
}

/// Chains of up to `MAX_CNAME_CHAIN` links are followed; longer ones fail
/// with the chain in the message.
#[tokio::test]
async fn cname_chains_are_bounded() {
    let Some(bind) = Bind::start() else { return };
    let p = check(&[bind.addr()], Duration::from_secs(20));
    assert_eq!(MAX_CNAME_CHAIN, 8);
    let answers = p
        .wait("a0.example.test", RecordType::Txt, &[txt("end")])
        .await
        .unwrap();
    assert_eq!(answers.len(), 9);
    assert_eq!(answers.last().unwrap().name, "a8.example.test");

    let message = fails(&p, "b0.example.test", RecordType::Txt, &[txt("end")]).await;
    assert!(message.contains("CNAME chain too long"), "{message}");
    assert!(
        message.contains("b0.example.test -> b1.example.test"),
        "{message}"
    );
    assert!(
        message.contains("b8.example.test -> b9.example.test"),
        "{message}"
    );

    // A loop never passes (BIND itself answers SERVFAIL after chasing it).
    let message = fails(&p, "loop1.example.test", RecordType::Txt, &[txt("x")]).await;
    assert!(message.contains(&bind.addr().to_string()), "{message}");
}

/// An empty expected set: passes once the set is gone (NXDOMAIN or NODATA).
#[tokio::test]
async fn an_empty_set_passes_after_removal() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "gone.example.test";
    let p = check(&[bind.addr()], Duration::from_secs(20));
    store.replace(name, 60, &[txt("old")]).await.unwrap();
    // NODATA: the name keeps another type.
    let tlsa = RData::Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![1; 32],
    };
    store.replace(name, 60, &[tlsa]).await.unwrap();

    let present = fails(&p, name, RecordType::Txt, &[]).await;
    assert!(
        present.contains("\"old\"") && present.contains(&bind.addr().to_string()),
        "{present}"
    );

    store.remove(name, RecordType::Txt).await.unwrap();
    p.wait(name, RecordType::Txt, &[]).await.unwrap();
    // NXDOMAIN.
    store.remove(name, RecordType::Tlsa).await.unwrap();
    p.wait(name, RecordType::Tlsa, &[]).await.unwrap();
    p.wait("never.example.test", RecordType::Txt, &[])
        .await
        .unwrap();
}

/// A server that does not answer at all keeps the check from passing, and
/// is named in the error.
#[tokio::test]
async fn a_silent_server_is_named() {
    let Some(bind) = Bind::start() else { return };
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    bind.provider()
        .replace("s.example.test", 60, &[txt("v")])
        .await
        .unwrap();
    let p = check(&[bind.addr(), silent_addr], Duration::from_secs(20));
    let message = fails(&p, "s.example.test", RecordType::Txt, &[txt("v")]).await;
    assert!(message.contains(&silent_addr.to_string()), "{message}");
    assert!(!message.contains(&bind.addr().to_string()), "{message}");
}

/// A server that is not authoritative for the zone does not count.
#[tokio::test]
async fn non_authoritative_answers_do_not_count() {
    let Some(bind) = Bind::start() else { return };
    let p = check(&[bind.addr()], Duration::from_secs(20));
    let message = fails(&p, "www.elsewhere.invalid", RecordType::Txt, &[]).await;
    assert!(message.contains("REFUSED"), "{message}");
}

/// Without a configured list, the servers are found by SOA, NS and address
/// lookups (here through BIND itself as the resolver, so the lookups stay
/// on loopback): `ns.example.test` is 127.0.0.1, port 53.
#[tokio::test]
async fn authoritative_servers_are_found_through_the_resolver() {
    let Some(bind) = Bind::start() else { return };
    let p = Propagation {
        resolver: Some(bind.addr()),
        ..Propagation::default()
    };
    let expected: SocketAddr = "127.0.0.1:53".parse().unwrap();
    assert_eq!(
        p.authoritative_servers("a.b.example.test").await.unwrap(),
        vec![expected]
    );
    assert_eq!(
        p.authoritative_servers("x.delegated.test").await.unwrap(),
        vec![expected]
    );
    // The configured list wins.
    let listed = check(&[bind.addr()], Duration::from_secs(1));
    assert_eq!(
        listed
            .authoritative_servers("a.example.test")
            .await
            .unwrap(),
        vec![bind.addr()]
    );
}

/// ACME challenges share their name with other clients' values: the
/// "contains" wait passes when every server's set holds ours among others,
/// where the exact wait (DKIM) does not.
#[tokio::test]
async fn a_set_holding_other_values_too_contains_ours_but_is_not_exactly_ours() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "_acme-challenge.shared.example.test";
    store
        .replace(name, 60, &[txt("someone-else"), txt("ours")])
        .await
        .unwrap();
    let p = check(&[bind.addr()], Duration::from_secs(20));
    let answers = p
        .wait_contains(name, RecordType::Txt, &[txt("ours")])
        .await
        .unwrap();
    assert_eq!(servers_of(&answers), vec![(bind.addr(), name.to_owned())]);
    let exact = fails(&p, name, RecordType::Txt, &[txt("ours")]).await;
    assert!(exact.contains("someone-else"), "{exact}");
    // A value that is not there is still waited for.
    let mut short = p.clone();
    short.timeout = Duration::from_millis(300);
    let missing = short
        .wait_contains(name, RecordType::Txt, &[txt("ours"), txt("not-yet")])
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("a set containing") && missing.contains("not-yet"),
        "{missing}"
    );
}

/// `nameservers` serve their `zone` only: a name outside it (the main zone
/// of a delegated `_acme-challenge`) is resolved through the resolver, as a
/// CA would, and its servers are found through it too.
#[tokio::test]
async fn nameservers_serve_their_zone_and_cnames_elsewhere_are_followed_through_the_resolver() {
    let Some(bind) = Bind::start() else { return };
    // A list that would answer nothing for example.test: a silent socket.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let p = Propagation {
        nameservers: Some(vec![bind.addr()]),
        zone: Some("delegated.test".to_owned()),
        resolver: Some(bind.addr()),
        ..check(&[bind.addr()], Duration::from_secs(5))
    };
    assert_eq!(
        p.follow_cnames("_acme-challenge.example.test")
            .await
            .unwrap(),
        "x.delegated.test"
    );
    // Not a CNAME: the name itself.
    assert_eq!(
        p.follow_cnames("x.delegated.test").await.unwrap(),
        "x.delegated.test"
    );
    assert_eq!(
        p.authoritative_servers("x.delegated.test").await.unwrap(),
        vec![bind.addr()]
    );
    // Outside the zone: found through the resolver (ns.example.test, port 53).
    let expected: SocketAddr = "127.0.0.1:53".parse().unwrap();
    assert_eq!(
        p.authoritative_servers("a.example.test").await.unwrap(),
        vec![expected]
    );
    // Inside the zone, CNAMEs are asked at the listed servers, not the
    // resolver.
    let listed_only = Propagation {
        nameservers: Some(vec![silent.local_addr().unwrap()]),
        zone: Some("example.test".to_owned()),
        resolver: Some(bind.addr()),
        ..p.clone()
    };
    let e = listed_only
        .follow_cnames("_acme-challenge.example.test")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&silent.local_addr().unwrap().to_string()), "{e}");
    // A loop is an error naming the chain.
    let loops = Propagation {
        zone: None,
        ..p.clone()
    };
    let e = loops.follow_cnames("loop1.example.test").await.unwrap_err();
    assert!(e.to_string().contains("loop"), "{e}");
}

/// NS names whose address lookup finds nothing (`nowhere.delegated.test`,
/// NXDOMAIN) or fails (`ns.elsewhere.test`, REFUSED by the only server)
/// are not silently left out of "every server": finding the servers fails
/// naming each, and so does a wait, even though the zone's other server
/// has the record.
#[tokio::test]
async fn an_ns_whose_address_lookup_fails_is_an_error_naming_it() {
    // (BIND refuses to load a zone whose own NS names lack addresses: the
    // address-less names live outside it.)
    let zone = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
@ IN NS nowhere.delegated.test.
@ IN NS ns.elsewhere.test.
ns IN A 127.0.0.1
";
    let Some(bind) = Bind::start_with_zone(zone) else {
        return;
    };
    bind.provider()
        .replace("probe.example.test", 60, &[txt("v")])
        .await
        .unwrap();
    let p = Propagation {
        resolver: Some(bind.addr()),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
        ..Propagation::default()
    };
    match p.authoritative_servers("probe.example.test").await {
        Err(Error::Transport(message)) => {
            assert!(
                message.contains("nowhere.delegated.test: no A or AAAA records"),
                "{message}"
            );
            assert!(
                message.contains("ns.elsewhere.test: address lookup failed"),
                "{message}"
            );
            assert!(!message.contains(" ns.example.test:"), "{message}");
        }
        other => panic!("expected an error naming both NS names, got {other:?}"),
    }
    let message = fails(&p, "probe.example.test", RecordType::Txt, &[txt("v")]).await;
    assert!(
        message.contains("nowhere.delegated.test") && message.contains("ns.elsewhere.test"),
        "{message}"
    );
}
