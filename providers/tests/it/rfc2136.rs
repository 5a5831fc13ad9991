//! The RFC 2136 provider against a real BIND 9 on loopback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::bind_client::BindClient as _;
use base64::Engine;
use mxkeys_providers::rfc2136::{Rfc2136, Rfc2136Config, TsigAlgorithm};
use mxkeys_providers::{Change, Error, RData, RecordStore, RecordType};
use mxkeys_testsupport::bind::Bind;

/// A TXT value the size of a 2048-bit RSA DKIM key record.
fn dkim_value(seed: char) -> String {
    format!(
        "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA{}",
        seed.to_string().repeat(350)
    )
}

fn txt(v: &str) -> RData {
    RData::Txt(v.to_owned())
}

#[tokio::test]
async fn dkim_sized_txt_is_written_replaced_and_removed() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "sel1._domainkey.example.test";
    let first = dkim_value('A');
    assert!(first.len() > 255 && first.len() < 510, "{}", first.len());

    assert_eq!(store.read(name, RecordType::Txt).await.unwrap(), vec![]);
    assert_eq!(
        store.replace(name, 300, &[txt(&first)]).await.unwrap(),
        Change::Changed
    );
    // dig sees one record of two character-strings that join to the value.
    assert_eq!(bind.txt_values(name), vec![first.clone()]);
    assert_eq!(bind.txt_string_counts(name), vec![2]);
    assert_eq!(
        store.read(name, RecordType::Txt).await.unwrap(),
        vec![txt(&first)]
    );

    let second = dkim_value('B');
    assert_eq!(
        store.replace(name, 300, &[txt(&second)]).await.unwrap(),
        Change::Changed
    );
    assert_eq!(bind.txt_values(name), vec![second.clone()]);
    assert_eq!(
        store.read(name, RecordType::Txt).await.unwrap(),
        vec![txt(&second)]
    );

    assert_eq!(
        store.remove(name, RecordType::Txt).await.unwrap(),
        Change::Changed
    );
    assert!(bind.short("TXT", name).is_empty());
    assert_eq!(store.read(name, RecordType::Txt).await.unwrap(), vec![]);
    assert_eq!(
        store.remove(name, RecordType::Txt).await.unwrap(),
        Change::Unchanged
    );
}

#[tokio::test]
async fn a_set_of_two_txt_values() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "_acme-challenge.www.example.test";
    let set = [txt("token-one"), txt("token-two")];
    assert_eq!(
        store.replace(name, 60, &set).await.unwrap(),
        Change::Changed
    );
    assert_eq!(bind.txt_values(name), vec!["token-one", "token-two"]);
    let read = store.read(name, RecordType::Txt).await.unwrap();
    assert!(mxkeys_providers::same_set(&read, &set), "{read:?}");
    // Same set in another order: nothing to do.
    let reversed = [txt("token-two"), txt("token-one")];
    assert_eq!(
        store.replace(name, 60, &reversed).await.unwrap(),
        Change::Unchanged
    );
    // Down to one value.
    assert_eq!(
        store.replace(name, 60, &[txt("token-two")]).await.unwrap(),
        Change::Changed
    );
    assert_eq!(bind.txt_values(name), vec!["token-two"]);
}

/// Four DKIM-sized values make an UPDATE and an answer over 1232 bytes:
/// the update goes over TCP, the read comes back truncated over UDP and is
/// retried over TCP. Without that, the read would not return all four.
#[tokio::test]
async fn large_sets_go_over_tcp() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "big.example.test";
    let set: Vec<RData> = ['C', 'D', 'E', 'F']
        .into_iter()
        .map(|c| txt(&dkim_value(c)))
        .collect();
    assert_eq!(
        store.replace(name, 300, &set).await.unwrap(),
        Change::Changed
    );
    let mut expected: Vec<String> = ['C', 'D', 'E', 'F'].into_iter().map(dkim_value).collect();
    expected.sort();
    assert_eq!(bind.txt_values(name), expected);
    let read = store.read(name, RecordType::Txt).await.unwrap();
    assert_eq!(read.len(), 4);
    assert!(mxkeys_providers::same_set(&read, &set));
}

/// While one task keeps replacing the set with A then B, another keeps
/// reading it: every read sees exactly A or exactly B, never an empty or
/// mixed set, because each replace is one UPDATE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_never_leaves_the_set_empty() {
    let Some(bind) = Bind::start() else { return };
    let store = Arc::new(bind.provider());
    let name = "swap.example.test";
    let a = [txt("alpha-1"), txt("alpha-2")];
    let b = [txt(&dkim_value('B'))];
    store.replace(name, 60, &a).await.unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (store.clone(), done.clone());
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let mut reads = 0u32;
            while !done.load(Ordering::SeqCst) || reads < 20 {
                let seen = store.read(name, RecordType::Txt).await.unwrap();
                assert!(
                    mxkeys_providers::same_set(&seen, &a) || mxkeys_providers::same_set(&seen, &b),
                    "a reader saw {seen:?} in the middle of a replace"
                );
                reads += 1;
            }
            reads
        })
    };
    for round in 0..30 {
        let set: &[RData] = if round % 2 == 0 { &b } else { &a };
        assert_eq!(store.replace(name, 60, set).await.unwrap(), Change::Changed);
    }
    done.store(true, Ordering::SeqCst);
    assert!(reader.await.unwrap() >= 20);
}

#[tokio::test]
async fn writing_the_same_set_twice_sends_no_second_update() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "same.example.test";
    let value = [txt(&dkim_value('S'))];
    assert_eq!(
        store.replace(name, 300, &value).await.unwrap(),
        Change::Changed
    );
    let serial = bind.serial("example.test");
    assert_eq!(
        store.replace(name, 300, &value).await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        bind.serial("example.test"),
        serial,
        "a second UPDATE was sent"
    );
    // A different TTL is a change.
    assert_eq!(
        store.replace(name, 600, &value).await.unwrap(),
        Change::Changed
    );
    assert!(bind.serial("example.test") > serial);
    assert!(bind.dig(&["TXT", name]).contains("600"));
}

fn assert_no_secret(message: &str, bind: &Bind) {
    let b64 = &bind.secret_b64;
    let hex: String = bind.secret.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !message.contains(b64.as_str()) && !message.contains(&hex),
        "{message}"
    );
    assert!(!message.contains(&b64[..8]), "{message}");
}

#[tokio::test]
async fn an_update_signed_with_a_wrong_secret_is_refused() {
    let Some(bind) = Bind::start() else { return };
    let wrong = Rfc2136::new(Rfc2136Config {
        tsig_secret: vec![0x42; 32],
        ..bind.config()
    })
    .unwrap();
    let err = wrong
        .replace("bad.example.test", 60, &[txt("x")])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(
        message.contains(&format!("update refused by {}", bind.addr())),
        "{message}"
    );
    assert!(
        message.contains("mxkeys-test") && message.contains("BADSIG"),
        "{message}"
    );
    assert_no_secret(&message, &bind);
    assert_no_secret(&format!("{wrong:?}"), &bind);
    assert!(bind.short("TXT", "bad.example.test").is_empty());
}

#[tokio::test]
async fn an_update_with_the_wrong_algorithm_or_key_name_is_refused() {
    let Some(bind) = Bind::start() else { return };
    let wrong_algorithm = Rfc2136::new(Rfc2136Config {
        tsig_algorithm: TsigAlgorithm::HmacSha512,
        ..bind.config()
    })
    .unwrap();
    let err = wrong_algorithm
        .replace("bad.example.test", 60, &[txt("x")])
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(
        message.contains("BADKEY") && message.contains("hmac-sha512"),
        "{message}"
    );
    assert_no_secret(&message, &bind);

    let wrong_name = Rfc2136::new(Rfc2136Config {
        tsig_name: "someone-else".to_owned(),
        ..bind.config()
    })
    .unwrap();
    let err = wrong_name
        .remove("bad.example.test", RecordType::Txt)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(
        err.to_string().contains("someone-else") && err.to_string().contains("BADKEY"),
        "{err}"
    );
    assert!(bind.short("TXT", "bad.example.test").is_empty());
}

#[tokio::test]
async fn an_update_to_a_zone_without_allow_update_is_refused() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider_any_zone();
    let err = store
        .replace("x.readonly.test", 60, &[txt("x")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("REFUSED") && message.contains("readonly.test"),
        "{message}"
    );
    assert!(message.contains(&bind.addr().to_string()), "{message}");
}

#[tokio::test]
async fn the_zone_is_found_by_soa_lookup() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider_any_zone();
    assert_eq!(
        store.zone_for("a.b.c.example.test").await.unwrap(),
        "example.test"
    );
    assert_eq!(
        store.zone_for("example.test").await.unwrap(),
        "example.test"
    );
    assert_eq!(
        store.zone_for("x.delegated.test").await.unwrap(),
        "delegated.test"
    );
    // A CNAME's owner lives in its own zone, not its target's.
    assert_eq!(
        store
            .zone_for("_acme-challenge.example.test")
            .await
            .unwrap(),
        "example.test"
    );
    let err = store.zone_for("www.elsewhere.invalid").await.unwrap_err();
    assert!(matches!(err, Error::NoZone(_)), "{err:?}");

    // Writes land in the zone found.
    assert_eq!(
        store
            .replace("x.delegated.test", 60, &[txt("found")])
            .await
            .unwrap(),
        Change::Changed
    );
    assert_eq!(bind.txt_values("x.delegated.test"), vec!["found"]);
    let serial = bind.serial("delegated.test");
    assert!(serial > 1, "delegated.test serial {serial}");
    assert_eq!(bind.serial("example.test"), 1);

    // A configured zone that does not hold the name is an error, not a write.
    let err = bind
        .provider()
        .replace("x.delegated.test", 60, &[txt("no")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoZone(_)), "{err:?}");
}

#[tokio::test]
async fn tlsa_round_trip() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "_25._tcp.mx.example.test";
    let digest: Vec<u8> = (0u8..32).collect();
    let record = RData::Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: digest.clone(),
    };
    assert_eq!(
        store
            .replace(name, 3600, std::slice::from_ref(&record))
            .await
            .unwrap(),
        Change::Changed
    );
    let hex: String = digest.iter().map(|b| format!("{b:02X}")).collect();
    let shown = bind.short("TLSA", name).join(" ");
    let shown_compact: String = shown.split_whitespace().skip(3).collect();
    assert!(shown.starts_with("3 1 1 "), "{shown}");
    assert_eq!(shown_compact, hex);
    assert_eq!(
        store.read(name, RecordType::Tlsa).await.unwrap(),
        vec![record.clone()]
    );
    // Rollover: two records at once, then back to one.
    let next = RData::Tlsa {
        usage: 3,
        selector: 1,
        matching: 1,
        data: vec![0xee; 32],
    };
    let both = [record.clone(), next.clone()];
    assert_eq!(
        store.replace(name, 3600, &both).await.unwrap(),
        Change::Changed
    );
    assert_eq!(bind.short("TLSA", name).len(), 2);
    assert_eq!(
        store.replace(name, 3600, &both).await.unwrap(),
        Change::Unchanged
    );
    assert_eq!(
        store.remove(name, RecordType::Tlsa).await.unwrap(),
        Change::Changed
    );
    assert!(bind.short("TLSA", name).is_empty());
}

#[tokio::test]
async fn a_and_aaaa_round_trip() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "host.example.test";
    let v4 = RData::A("192.0.2.7".parse().unwrap());
    let v6 = RData::Aaaa("2001:db8::7".parse().unwrap());
    for (value, rtype, shown) in [
        (&v4, RecordType::A, "192.0.2.7"),
        (&v6, RecordType::Aaaa, "2001:db8::7"),
    ] {
        assert_eq!(
            store
                .replace(name, 300, std::slice::from_ref(value))
                .await
                .unwrap(),
            Change::Changed
        );
        assert_eq!(bind.short(&rtype.to_string(), name), vec![shown]);
        assert_eq!(store.read(name, rtype).await.unwrap(), vec![value.clone()]);
    }
}

#[tokio::test]
async fn cname_round_trip() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "_acme-challenge.mail.example.test";
    let target = RData::Cname("mail.challenges.delegated.test".to_owned());
    assert_eq!(
        store
            .replace(name, 300, std::slice::from_ref(&target))
            .await
            .unwrap(),
        Change::Changed
    );
    assert_eq!(
        bind.short("CNAME", name),
        vec!["mail.challenges.delegated.test."]
    );
    assert_eq!(
        store.read(name, RecordType::Cname).await.unwrap(),
        vec![target.clone()]
    );
    assert_eq!(
        store.replace(name, 300, &[target]).await.unwrap(),
        Change::Unchanged
    );
    // Re-pointing replaces the CNAME in one update.
    let other = RData::Cname("other.delegated.test".to_owned());
    assert_eq!(
        store
            .replace(name, 300, std::slice::from_ref(&other))
            .await
            .unwrap(),
        Change::Changed
    );
    assert_eq!(bind.short("CNAME", name), vec!["other.delegated.test."]);
    assert_eq!(
        store.remove(name, RecordType::Cname).await.unwrap(),
        Change::Changed
    );
    assert!(bind.short("CNAME", name).is_empty());
}

/// BIND ignores a CNAME added next to other data and still answers
/// NOERROR: the provider notices by reading back.
#[tokio::test]
async fn a_cname_next_to_other_data_is_reported() {
    let Some(bind) = Bind::start() else { return };
    let store = bind.provider();
    let name = "both.example.test";
    store.replace(name, 300, &[txt("here")]).await.unwrap();
    let err = store
        .replace(name, 300, &[RData::Cname("x.delegated.test".to_owned())])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("did not apply"), "{err}");
    assert!(bind.short("CNAME", name).is_empty());
}

/// A server that never answers: the read fails with a transport error
/// naming it, after the configured timeout.
#[tokio::test]
async fn a_silent_server_is_a_transport_error() {
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let store = Rfc2136::new(Rfc2136Config {
        server: silent.local_addr().unwrap(),
        zone: Some("example.test".to_owned()),
        tsig_name: "k".to_owned(),
        tsig_algorithm: TsigAlgorithm::HmacSha256,
        tsig_secret: base64::engine::general_purpose::STANDARD
            .decode("c2VjcmV0c2VjcmV0")
            .unwrap(),
    })
    .unwrap()
    .with_timeout(Duration::from_millis(300));
    let err = store
        .read("a.example.test", RecordType::Txt)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains(&silent.local_addr().unwrap().to_string()),
        "{err}"
    );
    // It did receive the (retransmitted) query.
    let mut buf = [0u8; 512];
    let (n, _) = silent.recv_from(&mut buf).await.unwrap();
    assert!(n > 12);
}

/// ACME DNS-01 shares `_acme-challenge` names with other clients: adding
/// and removing single values (one UPDATE adding or deleting those records)
/// leaves another client's value alone, also when two orders add at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_values_are_added_and_removed_keeping_other_clients_values() {
    let Some(bind) = Bind::start() else { return };
    let name = "_acme-challenge.shared.example.test";
    let store = Arc::new(bind.provider());
    store.replace(name, 60, &[txt("certbot")]).await.unwrap();
    let (s1, s2) = (store.clone(), store.clone());
    let (added_a, added_b) = tokio::join!(
        tokio::spawn(async move { s1.add(name, 60, &[txt("order-a")]).await }),
        tokio::spawn(async move { s2.add(name, 60, &[txt("order-b")]).await })
    );
    assert_eq!(added_a.unwrap(), Ok(Change::Changed));
    assert_eq!(added_b.unwrap(), Ok(Change::Changed));
    assert_eq!(bind.txt_values(name), vec!["certbot", "order-a", "order-b"]);

    // Already there: no UPDATE.
    let serial = bind.serial("example.test");
    assert_eq!(
        store.add(name, 60, &[txt("order-a")]).await,
        Ok(Change::Unchanged)
    );
    assert_eq!(bind.serial("example.test"), serial);

    assert_eq!(
        store.remove_values(name, &[txt("order-a")]).await,
        Ok(Change::Changed)
    );
    assert_eq!(bind.txt_values(name), vec!["certbot", "order-b"]);
    assert_eq!(
        store.remove_values(name, &[txt("order-a")]).await,
        Ok(Change::Unchanged)
    );
    // A long (two-string) value is deleted by its whole data too.
    let long = dkim_value('L');
    store.add(name, 60, &[txt(&long)]).await.unwrap();
    assert_eq!(bind.txt_values(name).len(), 3);
    store
        .remove_values(name, &[txt(&long), txt("order-b")])
        .await
        .unwrap();
    assert_eq!(bind.txt_values(name), vec!["certbot"]);
}
