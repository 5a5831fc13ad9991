//! DNS observation with DNSSEC (`Propagation::observe`, `zone_signed`,
//! `secure_lookup`) against the DNSSEC test bed of `testsupport::dnssec`:
//! BIND 9 signing `example.test` (and serving `unsigned.test` unsigned) on
//! 127.0.0.1:53, Unbound validating it on 127.0.0.2:53, inside a network +
//! mount namespace each test makes for itself (its /etc/resolv.conf names
//! Unbound). Every check has its "can fail" half: the unsigned zone, where
//! the same question must come back unsigned.
//!
//! Needs root, util-linux, iproute2, bind9, bind9-dnsutils and unbound:
//! without them a test is skipped loudly, or fails with `CI=true`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mxkeys_providers::propagation::{Observed, Propagation, secure_lookup};
use mxkeys_providers::{Error, RData, RecordType};
use mxkeys_testsupport::dnssec::{
    self, AUTHORITATIVE, RESOLVER, SignedZone, TTL, UNSIGNED_ZONE, ZONE,
};

/// A TLSA owner in the signed zone, served from the zone file.
const OWNER: &str = "_25._tcp.mail.example.test";
/// Its record (zone-file form) and data.
const HASH: &str = "0101010101010101010101010101010101010101010101010101010101010101";

fn tlsa(byte: u8) -> RData {
    RData::Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![byte; 32],
    }
}

/// The inner test's full name in this binary (`observe::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

fn addr(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 53)
}

/// Asks exactly the signing BIND.
fn at_bind() -> Propagation {
    Propagation {
        nameservers: Some(vec![addr(AUTHORITATIVE)]),
        ..Propagation::default()
    }
}

/// Finds the zone's servers through Unbound (SOA, NS, their addresses).
fn discovered() -> Propagation {
    Propagation {
        resolver: Some(addr(RESOLVER)),
        ..Propagation::default()
    }
}

/// The signed zone, with [`OWNER`] TLSA 3 1 1 in its zone file.
fn start(dir: &std::path::Path) -> SignedZone {
    SignedZone::start(dir, &format!("_25._tcp.mail IN TLSA 3 1 1 {HASH}"))
}

fn one(observed: Vec<Observed>) -> Observed {
    assert_eq!(observed.len(), 1, "{observed:?}");
    observed.into_iter().next().unwrap()
}

#[test]
fn observe_sees_a_signed_tlsa_record_with_its_ttl_an_unsigned_zones_record_unsigned_and_a_denial_with_the_negative_ttl()
 {
    dnssec::run_in_namespace(
        "observe_sees_a_signed_tlsa_record_with_its_ttl_an_unsigned_zones_record_unsigned_and_a_denial_with_the_negative_ttl",
        &inner("inside_observe"),
        &[],
    );
}

#[test]
fn zone_signed_is_true_for_the_signed_zone_false_for_the_unsigned_one_and_an_error_for_a_failing_server()
 {
    dnssec::run_in_namespace(
        "zone_signed_is_true_for_the_signed_zone_false_for_the_unsigned_one_and_an_error_for_a_failing_server",
        &inner("inside_zone_signed"),
        &[],
    );
}

#[test]
fn secure_lookup_through_unbound_is_authenticated_for_the_signed_zone_and_not_for_the_unsigned_one()
{
    dnssec::run_in_namespace(
        "secure_lookup_through_unbound_is_authenticated_for_the_signed_zone_and_not_for_the_unsigned_one",
        &inner("inside_secure_lookup"),
        &[],
    );
}

// ---------------------------------------------------------------------------
// Inside the namespace
// ---------------------------------------------------------------------------

#[tokio::test]
#[ignore = "run inside a namespace by observe_sees_a_signed_tlsa_record_..."]
async fn inside_observe() {
    dnssec::assert_in_namespace();
    let dir = tempfile::tempdir().unwrap();
    let zone = start(dir.path());

    // The signing BIND serves the record with its RRSIG and TTL; the same
    // through the servers found by way of the resolver.
    for (how, p) in [("configured", at_bind()), ("discovered", discovered())] {
        let seen = one(p.observe(OWNER, RecordType::Tlsa).await.unwrap());
        assert_eq!(seen.server, addr(AUTHORITATIVE), "{how}");
        assert_eq!(seen.values, vec![tlsa(1)], "{how}");
        assert_eq!(seen.ttl, Some(TTL), "{how}");
        assert!(seen.signed, "{how}: {seen:?}\n{}", zone.logs());
        assert_eq!(seen.negative_ttl, None, "{how}");
    }
    let seen = one(discovered().observe(OWNER, RecordType::Tlsa).await.unwrap());
    assert_eq!(seen.host, "ns.example.test");

    // A record added by RFC 2136 is served signed once BIND re-signed.
    let added = "_25._tcp.added.example.test";
    zone.update(&format!(
        "update add {added} {TTL} TLSA 3 1 1 {}",
        "02".repeat(32)
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = one(at_bind().observe(added, RecordType::Tlsa).await.unwrap());
        if !seen.values.is_empty() {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "{added} never served\n{}",
            zone.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seen.values, vec![tlsa(2)]);
    assert!(seen.signed, "{seen:?}");

    // NODATA and NXDOMAIN in the signed zone: the SOA's negative TTL, and
    // a signed denial (NSEC with RRSIG).
    for name in ["mail.example.test", "_25._tcp.nowhere.example.test"] {
        let denial = one(at_bind().observe(name, RecordType::Tlsa).await.unwrap());
        assert!(denial.values.is_empty(), "{name}: {denial:?}");
        assert_eq!(denial.ttl, None, "{name}");
        assert!(!denial.signed, "{name}");
        assert_eq!(denial.negative_ttl, Some(TTL), "{name}");
        assert!(denial.denial_signed, "{name}: {denial:?}");
    }

    // The unsigned zone: the record is served, without a signature; its
    // denials are unsigned too.
    let plain = format!("_25._tcp.mail.{UNSIGNED_ZONE}");
    zone.update_zone(
        UNSIGNED_ZONE,
        &format!("update add {plain} {TTL} TLSA 3 1 1 {}", "03".repeat(32)),
    );
    let seen = one(at_bind().observe(&plain, RecordType::Tlsa).await.unwrap());
    assert_eq!(seen.values, vec![tlsa(3)]);
    assert_eq!(seen.ttl, Some(TTL));
    assert!(!seen.signed, "{seen:?}");
    let denial = one(at_bind()
        .observe(&format!("mail.{UNSIGNED_ZONE}"), RecordType::Tlsa)
        .await
        .unwrap());
    assert_eq!(denial.negative_ttl, Some(TTL));
    assert!(!denial.denial_signed, "{denial:?}");

    // A server that does not answer fails the observation, named; the
    // others' answers do not stand in for it.
    let silent: SocketAddr = "127.0.0.1:54".parse().unwrap();
    let two = Propagation {
        nameservers: Some(vec![addr(AUTHORITATIVE), silent]),
        ..Propagation::default()
    };
    match two.observe(OWNER, RecordType::Tlsa).await {
        Err(Error::Transport(message)) => {
            assert!(message.contains("127.0.0.1:54"), "{message}");
            assert!(!message.contains("127.0.0.1:53"), "{message}");
        }
        other => panic!("expected an error naming 127.0.0.1:54, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "run inside a namespace by zone_signed_is_true_..."]
async fn inside_zone_signed() {
    dnssec::assert_in_namespace();
    let dir = tempfile::tempdir().unwrap();
    let zone = start(dir.path());

    for p in [at_bind(), discovered()] {
        // The zone is found from any name in it, existing or not.
        for name in [ZONE, OWNER, "_25._tcp.nowhere.example.test"] {
            assert!(
                p.zone_signed(name).await.unwrap(),
                "{name} ({p:?})\n{}",
                zone.logs()
            );
        }
        for name in [UNSIGNED_ZONE, "_25._tcp.mail.unsigned.test"] {
            assert!(!p.zone_signed(name).await.unwrap(), "{name} ({p:?})");
        }
    }

    // A DNSKEY set without an RRSIG is no signed zone: the unsigned zone
    // publishing the signed zone's public key. (Flags 0, not a zone key:
    // BIND refuses to add a zone key it has no private key for.)
    let keys = dnssec::answer(&zone.authoritative(&["DNSKEY", ZONE]), "DNSKEY");
    let key = keys
        .first()
        .and_then(|k| k.split_once(' '))
        .map(|(_, rest)| rest);
    let key = key.unwrap_or_else(|| panic!("no DNSKEY for {ZONE}\n{}", zone.logs()));
    zone.update_zone(
        UNSIGNED_ZONE,
        &format!("update add {UNSIGNED_ZONE} {TTL} DNSKEY 0 {key}"),
    );
    let published = zone.authoritative(&["DNSKEY", UNSIGNED_ZONE]);
    assert_eq!(dnssec::answer(&published, "DNSKEY").len(), 1, "{published}");
    assert!(!published.contains("RRSIG"), "{published}");
    assert!(!at_bind().zone_signed(UNSIGNED_ZONE).await.unwrap());

    // A name no zone of the server holds: BIND refuses, an error naming
    // the server.
    match at_bind().zone_signed("mail.elsewhere.example").await {
        Err(Error::Transport(message)) => {
            assert!(message.contains("127.0.0.1:53"), "{message}");
            assert!(message.contains("REFUSED"), "{message}");
        }
        other => panic!("expected an error naming the server, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "run inside a namespace by secure_lookup_through_unbound_..."]
async fn inside_secure_lookup() {
    dnssec::assert_in_namespace();
    let dir = tempfile::tempdir().unwrap();
    let zone = start(dir.path());
    let unbound = Some(addr(RESOLVER));
    let localhost = RData::A("127.0.0.1".parse().unwrap());

    // The signed zone: authenticated, whether asked at Unbound or at the
    // resolver /etc/resolv.conf names (Unbound, in this namespace).
    for resolver in [unbound, None] {
        let a = secure_lookup(resolver, "mail.example.test", RecordType::A)
            .await
            .unwrap();
        assert_eq!(a.values, vec![localhost.clone()], "{resolver:?}");
        assert!(a.authenticated, "{resolver:?}: {a:?}\n{}", zone.logs());
        assert!(a.ttl.is_some_and(|t| t <= TTL), "{a:?}");
    }
    let t = secure_lookup(unbound, OWNER, RecordType::Tlsa)
        .await
        .unwrap();
    assert_eq!(t.values, vec![tlsa(1)]);
    assert!(t.authenticated, "{t:?}");
    // A signed denial is authenticated too: no AAAA, securely.
    let none = secure_lookup(unbound, "mail.example.test", RecordType::Aaaa)
        .await
        .unwrap();
    assert!(none.values.is_empty(), "{none:?}");
    assert!(none.authenticated, "{none:?}");

    // The unsigned zone: the same values, not authenticated.
    let plain = secure_lookup(unbound, &format!("mail.{UNSIGNED_ZONE}"), RecordType::A)
        .await
        .unwrap();
    assert_eq!(plain.values, vec![localhost]);
    assert!(!plain.authenticated, "{plain:?}");

    // No resolver there: an error naming it.
    let nowhere: SocketAddr = "127.0.0.1:54".parse().unwrap();
    match secure_lookup(Some(nowhere), "mail.example.test", RecordType::A).await {
        Err(Error::Transport(message)) => assert!(message.contains("127.0.0.1:54"), "{message}"),
        other => panic!("expected an error naming the resolver, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// MX sets (MTA-STS), against a plain BIND on a pool port
// ---------------------------------------------------------------------------

/// `example.test` with two MX hosts (one written in upper case, one
/// relative), a null MX at `nomail`, and no MX at `ns`. (BIND refuses an
/// update adding an MX whose host has no address: the hosts have one.)
const MX_ZONE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
mx1 IN A 127.0.0.1
mx2 IN A 127.0.0.1
mail IN A 127.0.0.1
@ 120 IN MX 10 MX1.Example.TEST.
@ 120 IN MX 20 mx2
nomail IN MX 0 .
";

fn mx(preference: u16, exchange: &str) -> RData {
    RData::Mx {
        preference,
        exchange: exchange.to_owned(),
    }
}

#[tokio::test]
async fn observe_reads_an_mx_set_lower_case_without_the_dot_a_null_mx_as_dot_and_an_mx_written_over_rfc2136()
 {
    use crate::bind_client::BindClient as _;
    use mxkeys_providers::RecordStore as _;
    let Some(bind) = mxkeys_testsupport::bind::Bind::start_with_zone(MX_ZONE) else {
        return;
    };
    let p = Propagation {
        nameservers: Some(vec![bind.addr()]),
        ..Propagation::default()
    };

    let mut seen = one(p.observe(ZONE, RecordType::Mx).await.unwrap());
    seen.values.sort();
    assert_eq!(
        seen.values,
        vec![mx(10, "mx1.example.test"), mx(20, "mx2.example.test")]
    );
    assert_eq!(seen.ttl, Some(120));

    let null = one(p
        .observe("nomail.example.test", RecordType::Mx)
        .await
        .unwrap());
    assert_eq!(null.values, vec![mx(0, ".")]);

    let none = one(p.observe("ns.example.test", RecordType::Mx).await.unwrap());
    assert!(none.values.is_empty(), "{none:?}");
    assert_eq!(none.negative_ttl, Some(60));

    // Written through RFC 2136 (the wire form out), read back the same.
    let written = [mx(5, "mail.example.test"), mx(0, ".")];
    let log = || std::fs::read_to_string(bind.dir().join("named.log")).unwrap_or_default();
    for (name, values) in [("relay", &written[..1]), ("gone", &written[1..])] {
        let name = format!("{name}.example.test");
        if let Err(e) = bind.provider().replace(&name, 300, values).await {
            panic!("{name}: {e}\n{}", log());
        }
    }
    let relay = one(p
        .observe("relay.example.test", RecordType::Mx)
        .await
        .unwrap());
    assert_eq!(relay.values, written[..1]);
    let gone = one(p
        .observe("gone.example.test", RecordType::Mx)
        .await
        .unwrap());
    assert_eq!(gone.values, written[1..]);
    assert_eq!(
        bind.short("MX", "relay.example.test"),
        vec!["5 mail.example.test.".to_owned()]
    );
}
