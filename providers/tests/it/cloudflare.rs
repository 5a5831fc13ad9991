//! The Cloudflare provider against a local stand-in of the API v4
//! (`cf_mock`): loopback HTTP only.

use std::time::Duration;

use mxkeys_providers::cloudflare::{Cloudflare, CloudflareConfig};
use mxkeys_providers::{Change, Error, RData, RecordStore, RecordType, same_set};
use mxkeys_testsupport::cf_mock::{Mock, Request};
use serde_json::json;

const TOKEN: &str = "cfut-Zq8vX2-test-token-Pw93kL";
const EXAMPLE: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const SUB: &str = "9a7806061c88ada191ed06f989cc3dac";

fn txt(v: &str) -> RData {
    RData::Txt(v.to_owned())
}

fn dkim_value() -> String {
    let b64: String = (0..392)
        .map(|i| {
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i * 7 % 64] as char
        })
        .collect();
    format!("v=DKIM1; k=rsa; p={b64}")
}

/// A server with `example.com` and `sub.example.com`, records of types the
/// `cloudflare` crate does not model, and enough records to need paging.
async fn server() -> Mock {
    let mock = Mock::start(TOKEN).await;
    mock.add_zone(EXAMPLE, "example.com");
    mock.add_zone(SUB, "sub.example.com");
    let caa = json!({"flags": 0, "tag": "issue", "value": "letsencrypt.org"});
    mock.add_record(
        EXAMPLE,
        "example.com",
        "CAA",
        "0 issue \"letsencrypt.org\"",
        Some(caa),
        300,
    );
    for name in ["mixed.example.com", "_25._tcp.mx.example.com"] {
        mock.add_record(
            EXAMPLE,
            name,
            "TLSA",
            "3 1 1 0a0b0c0d",
            Some(json!({"usage": 3, "selector": 1, "matching_type": 1, "certificate": "0a0b0c0d"})),
            300,
        );
        mock.add_record(
            EXAMPLE,
            name,
            "SVCB",
            "1 . alpn=\"h2\"",
            Some(json!({"priority": 1, "target": ".", "value": "alpn=\"h2\""})),
            300,
        );
        mock.add_record(
            EXAMPLE,
            name,
            "HTTPS",
            "1 . alpn=\"h3,h2\"",
            Some(json!({"priority": 1, "target": ".", "value": "alpn=\"h3,h2\""})),
            300,
        );
        mock.add_record(
            EXAMPLE,
            name,
            "CAA",
            "0 issue \"letsencrypt.org\"",
            Some(caa_data()),
            300,
        );
    }
    mock.add_record(
        EXAMPLE,
        "mixed.example.com",
        "TXT",
        "\"hello\" \"world\"",
        None,
        300,
    );
    mock.add_record(EXAMPLE, "mixed.example.com", "TXT", "plain", None, 300);
    for i in 0..23 {
        mock.add_record(
            EXAMPLE,
            "many.example.com",
            "TXT",
            &format!("token-{i:02}"),
            None,
            120,
        );
    }
    for i in 0..12 {
        mock.add_record(
            EXAMPLE,
            "many.example.com",
            "A",
            &format!("192.0.2.{i}"),
            None,
            120,
        );
    }
    mock
}

fn caa_data() -> serde_json::Value {
    json!({"flags": 0, "tag": "issue", "value": "letsencrypt.org"})
}

fn provider(mock: &Mock) -> Cloudflare {
    Cloudflare::new(CloudflareConfig {
        api_token: TOKEN.to_owned(),
        api_url: Some(mock.url.clone()),
        zone: None,
    })
    .unwrap()
    .with_max_wait(Duration::from_millis(20))
}

fn writes(requests: &[Request]) -> Vec<&Request> {
    requests.iter().filter(|r| r.is_write()).collect()
}

fn count(requests: &[Request], method: &str) -> usize {
    requests.iter().filter(|r| r.method == method).count()
}

#[tokio::test]
async fn txt_set_create_read_replace_remove() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "_acme-challenge.example.com";

    assert_eq!(cf.read(name, RecordType::Txt).await.unwrap(), vec![]);
    assert_eq!(
        cf.replace(name, 120, &[txt("one")]).await.unwrap(),
        Change::Changed
    );
    assert_eq!(
        cf.read(name, RecordType::Txt).await.unwrap(),
        vec![txt("one")]
    );
    let stored = mock.records(name, "TXT");
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].content.as_str(), stored[0].ttl), ("one", 120));
    assert_eq!(stored[0].zone_id, EXAMPLE);

    let two = [txt("two"), txt("three")];
    assert_eq!(cf.replace(name, 120, &two).await.unwrap(), Change::Changed);
    assert!(same_set(
        &cf.read(name, RecordType::Txt).await.unwrap(),
        &two
    ));
    // A trailing dot and upper case name the same set.
    assert!(same_set(
        &cf.read("_ACME-challenge.Example.COM.", RecordType::Txt)
            .await
            .unwrap(),
        &two
    ));

    assert_eq!(
        cf.remove(name, RecordType::Txt).await.unwrap(),
        Change::Changed
    );
    assert_eq!(cf.read(name, RecordType::Txt).await.unwrap(), vec![]);
    assert!(mock.records(name, "TXT").is_empty());
    mock.clear_requests();
    assert_eq!(
        cf.remove(name, RecordType::Txt).await.unwrap(),
        Change::Unchanged
    );
    assert!(writes(&mock.requests()).is_empty());
    // Records of other names and types were not touched.
    assert_eq!(mock.records("example.com", "CAA").len(), 1);
    assert_eq!(mock.records("many.example.com", "TXT").len(), 23);

    // An empty or mixed set is refused before any request.
    mock.clear_requests();
    assert!(matches!(
        cf.replace(name, 120, &[]).await,
        Err(Error::Config(_))
    ));
    assert!(matches!(
        cf.replace(name, 120, &[txt("a"), RData::Cname("x.example.net".into())])
            .await,
        Err(Error::Config(_))
    ));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn dkim_sized_txt_round_trips_equal() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "mx2025._domainkey.example.com";
    let value = dkim_value();
    assert_eq!(value.len(), 410);

    assert_eq!(
        cf.replace(name, 3600, &[txt(&value)]).await.unwrap(),
        Change::Changed
    );
    let stored = mock.records(name, "TXT");
    assert_eq!(stored.len(), 1);
    // Sent as quoted character-strings of at most 255 bytes.
    assert_eq!(
        stored[0].content,
        format!("\"{}\" \"{}\"", &value[..255], &value[255..])
    );
    assert_eq!(
        cf.read(name, RecordType::Txt).await.unwrap(),
        vec![txt(&value)]
    );

    // Content stored raw (as written by another tool) reads the same.
    let other = "sel2._domainkey.example.com";
    mock.add_record(EXAMPLE, other, "TXT", &value, None, 3600);
    assert_eq!(
        cf.read(other, RecordType::Txt).await.unwrap(),
        vec![txt(&value)]
    );

    // Writing it again compares the joined value: nothing is written.
    mock.clear_requests();
    assert_eq!(
        cf.replace(name, 3600, &[txt(&value)]).await.unwrap(),
        Change::Unchanged
    );
    assert!(writes(&mock.requests()).is_empty());

    // Quotes and backslashes survive the round trip too.
    let odd = "a \"quoted\" \\ value";
    cf.replace("odd.example.com", 300, &[txt(odd)])
        .await
        .unwrap();
    assert_eq!(
        cf.read("odd.example.com", RecordType::Txt).await.unwrap(),
        vec![txt(odd)]
    );
}

#[tokio::test]
async fn replace_updates_in_place_and_writes_only_the_difference() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "_acme-challenge.mail.example.com";
    cf.replace(name, 300, &[txt("a"), txt("b"), txt("c")])
        .await
        .unwrap();
    let id_of = |v: &str| {
        mock.records(name, "TXT")
            .into_iter()
            .find(|r| r.content == v)
            .map(|r| r.id)
            .unwrap()
    };
    let (id_a, id_b, id_c) = (id_of("a"), id_of("b"), id_of("c"));
    mock.watch(name, "TXT");

    // a, b stay; c becomes d in place; e is created; nothing is deleted.
    mock.clear_requests();
    let wanted = [txt("a"), txt("b"), txt("d"), txt("e")];
    assert_eq!(
        cf.replace(name, 300, &wanted).await.unwrap(),
        Change::Changed
    );
    let reqs = mock.requests();
    assert_eq!(count(&reqs, "PATCH") + count(&reqs, "PUT"), 1, "{reqs:#?}");
    assert_eq!(count(&reqs, "POST"), 1);
    assert_eq!(count(&reqs, "DELETE"), 0);
    let patched = reqs
        .iter()
        .find(|r| r.method == "PATCH" || r.method == "PUT")
        .unwrap();
    assert_eq!(patched.record_id(), Some(id_c.as_str()));
    assert!(same_set(
        &cf.read(name, RecordType::Txt).await.unwrap(),
        &wanted
    ));
    assert_eq!(id_of("a"), id_a);
    assert_eq!(id_of("b"), id_b);
    assert_eq!(id_of("d"), id_c);

    // Shrinking to one value deletes the three others, never a.
    mock.clear_requests();
    assert_eq!(
        cf.replace(name, 300, &[txt("a")]).await.unwrap(),
        Change::Changed
    );
    let reqs = mock.requests();
    assert_eq!(count(&reqs, "DELETE"), 3);
    assert_eq!(
        count(&reqs, "POST") + count(&reqs, "PATCH") + count(&reqs, "PUT"),
        0
    );
    assert!(reqs.iter().all(|r| r.record_id() != Some(id_a.as_str())));
    assert_eq!(mock.records(name, "TXT").len(), 1);

    // A wholly new single value replaces the record in place.
    mock.clear_requests();
    assert_eq!(
        cf.replace(name, 300, &[txt("z")]).await.unwrap(),
        Change::Changed
    );
    let reqs = mock.requests();
    assert_eq!(writes(&reqs).len(), 1);
    assert_eq!(writes(&reqs)[0].method, "PATCH");
    assert_eq!(writes(&reqs)[0].record_id(), Some(id_a.as_str()));
    assert_eq!(
        cf.read(name, RecordType::Txt).await.unwrap(),
        vec![txt("z")]
    );

    // A TTL difference alone is a change, made in place.
    mock.clear_requests();
    assert_eq!(
        cf.replace(name, 600, &[txt("z")]).await.unwrap(),
        Change::Changed
    );
    let reqs = mock.requests();
    assert_eq!(writes(&reqs).len(), 1);
    assert_eq!(writes(&reqs)[0].method, "PATCH");
    assert_eq!(mock.records(name, "TXT")[0].ttl, 600);

    // Three values replacing one: one update, two creations.
    mock.clear_requests();
    let three = [txt("x1"), txt("x2"), txt("x3")];
    cf.replace(name, 600, &three).await.unwrap();
    let reqs = mock.requests();
    assert_eq!(
        (
            count(&reqs, "PATCH"),
            count(&reqs, "POST"),
            count(&reqs, "DELETE")
        ),
        (1, 2, 0)
    );
    assert!(same_set(
        &cf.read(name, RecordType::Txt).await.unwrap(),
        &three
    ));

    // Never was the set empty after any request.
    assert_eq!(mock.violations(), Vec::<String>::new());
}

#[tokio::test]
async fn writing_the_same_set_again_writes_nothing() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "_acme-challenge.www.example.com";
    assert_eq!(
        cf.replace(name, 300, &[txt("k1"), txt("k2")])
            .await
            .unwrap(),
        Change::Changed
    );
    mock.clear_requests();
    // Same set in another order, with a duplicate.
    let again = [txt("k2"), txt("k1"), txt("k2")];
    assert_eq!(
        cf.replace(name, 300, &again).await.unwrap(),
        Change::Unchanged
    );
    let reqs = mock.requests();
    assert!(!reqs.is_empty());
    assert!(writes(&reqs).is_empty(), "{reqs:#?}");
    assert!(
        reqs.iter().all(|r| r.is_listing()),
        "zone id is cached: {reqs:#?}"
    );

    // Quoted content for a short value is the same value.
    mock.add_record(EXAMPLE, "q.example.com", "TXT", "\"k1\"", None, 300);
    mock.clear_requests();
    assert_eq!(
        cf.replace("q.example.com", 300, &[txt("k1")])
            .await
            .unwrap(),
        Change::Unchanged
    );
    assert!(writes(&mock.requests()).is_empty());

    // A different TTL is not the same set.
    assert_eq!(cf.replace(name, 60, &again).await.unwrap(), Change::Changed);
}

#[tokio::test]
async fn zone_is_the_longest_match_for_a_deep_name() {
    let mock = server().await;
    let cf = provider(&mock);
    let deep = "_acme-challenge.host.sub.example.com";
    cf.replace(deep, 120, &[txt("in-sub")]).await.unwrap();
    let stored = mock.records(deep, "TXT");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].zone_id, SUB);

    let lookups: Vec<String> = mock
        .requests()
        .iter()
        .filter(|r| r.is_zone_lookup())
        .map(|r| r.param("name").unwrap_or_default().to_owned())
        .collect();
    // From the longest suffix down, stopping at the first zone found.
    assert_eq!(lookups, [deep, "host.sub.example.com", "sub.example.com"]);

    // Cached: no more zone lookups for that name.
    mock.clear_requests();
    cf.read(deep, RecordType::Txt).await.unwrap();
    assert!(!mock.requests().iter().any(Request::is_zone_lookup));
    // Every record request went to the sub zone.
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.path.starts_with(&format!("/zones/{SUB}/")))
    );

    // A name only under example.com goes there.
    cf.replace(
        "_acme-challenge.other.example.com",
        120,
        &[txt("in-parent")],
    )
    .await
    .unwrap();
    assert_eq!(
        mock.records("_acme-challenge.other.example.com", "TXT")[0].zone_id,
        EXAMPLE
    );

    // A name in no zone.
    match cf
        .read("_acme-challenge.example.net", RecordType::Txt)
        .await
    {
        Err(Error::NoZone(m)) => assert!(m.contains("example.net")),
        other => panic!("expected NoZone, got {other:?}"),
    }
}

#[tokio::test]
async fn configured_zone_is_used() {
    let mock = server().await;
    let cf = Cloudflare::new(CloudflareConfig {
        api_token: TOKEN.to_owned(),
        api_url: Some(format!("{}/", mock.url)),
        zone: Some("Example.com.".to_owned()),
    })
    .unwrap();
    // Even under sub.example.com, the configured zone is where it goes.
    let name = "_acme-challenge.host.sub.example.com";
    cf.replace(name, 120, &[txt("v")]).await.unwrap();
    assert_eq!(mock.records(name, "TXT")[0].zone_id, EXAMPLE);
    let lookups: Vec<Request> = mock
        .requests()
        .into_iter()
        .filter(Request::is_zone_lookup)
        .collect();
    assert_eq!(lookups.len(), 1);
    assert_eq!(lookups[0].param("name"), Some("example.com"));

    mock.clear_requests();
    assert!(matches!(
        cf.read("_acme-challenge.example.org", RecordType::Txt)
            .await,
        Err(Error::NoZone(_))
    ));
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn listing_follows_pagination() {
    let mock = server().await;
    let cf = provider(&mock);
    let values = cf.read("many.example.com", RecordType::Txt).await.unwrap();
    let expected: Vec<RData> = (0..23).map(|i| txt(&format!("token-{i:02}"))).collect();
    assert!(same_set(&values, &expected));
    assert_eq!(values.len(), 23);

    let pages: Vec<String> = mock
        .requests()
        .iter()
        .filter(|r| r.is_listing())
        .map(|r| r.param("page").unwrap_or("none").to_owned())
        .collect();
    // 23 records at most 5 a page: 5 pages, each asked once.
    assert_eq!(pages, ["1", "2", "3", "4", "5"]);

    // Replacing a set spread over pages sees all of it.
    mock.clear_requests();
    assert_eq!(
        cf.replace("many.example.com", 120, &expected)
            .await
            .unwrap(),
        Change::Unchanged
    );
    assert!(writes(&mock.requests()).is_empty());
    assert_eq!(
        cf.remove("many.example.com", RecordType::Txt)
            .await
            .unwrap(),
        Change::Changed
    );
    assert!(mock.records("many.example.com", "TXT").is_empty());
    assert_eq!(mock.records("many.example.com", "A").len(), 12);
}

#[tokio::test]
async fn listings_are_filtered_by_name_and_type() {
    let mock = server().await;
    let cf = provider(&mock);
    cf.read("mixed.example.com", RecordType::Txt).await.unwrap();
    cf.read("_25._tcp.mx.example.com", RecordType::Tlsa)
        .await
        .unwrap();
    cf.read("alias.example.com", RecordType::Cname)
        .await
        .unwrap();
    cf.replace("f.example.com", 120, &[txt("1")]).await.unwrap();
    cf.remove("f.example.com", RecordType::Txt).await.unwrap();

    let listings: Vec<Request> = mock
        .requests()
        .into_iter()
        .filter(Request::is_listing)
        .collect();
    assert_eq!(listings.len(), 5);
    let asked: Vec<(Option<&str>, Option<&str>)> = listings
        .iter()
        .map(|r| (r.param("name"), r.param("type")))
        .collect();
    assert_eq!(
        asked,
        [
            (Some("mixed.example.com"), Some("TXT")),
            (Some("_25._tcp.mx.example.com"), Some("TLSA")),
            (Some("alias.example.com"), Some("CNAME")),
            (Some("f.example.com"), Some("TXT")),
            (Some("f.example.com"), Some("TXT")),
        ]
    );
    assert!(listings.iter().all(|r| r.param("page") == Some("1")));
    assert!(listings.iter().all(|r| r.param("per_page").is_some()));
}

#[tokio::test]
async fn unmodelled_record_types_do_not_break_reads() {
    let mock = server().await;
    let cf = provider(&mock);
    let expected = [txt("helloworld"), txt("plain")];
    assert!(same_set(
        &cf.read("mixed.example.com", RecordType::Txt).await.unwrap(),
        &expected
    ));

    // Even a listing that ignores the type filter (CAA, TLSA, SVCB, HTTPS
    // mixed in) gives only the TXT set, and a write based on it is right.
    mock.ignore_type_filter(true);
    assert!(same_set(
        &cf.read("mixed.example.com", RecordType::Txt).await.unwrap(),
        &expected
    ));
    mock.clear_requests();
    assert_eq!(
        cf.replace("mixed.example.com", 300, &expected)
            .await
            .unwrap(),
        Change::Unchanged
    );
    assert!(writes(&mock.requests()).is_empty());
    assert_eq!(
        cf.remove("mixed.example.com", RecordType::Txt)
            .await
            .unwrap(),
        Change::Changed
    );
    let deleted: Vec<String> = mock
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .filter_map(|r| r.record_id().map(str::to_owned))
        .collect();
    assert_eq!(deleted.len(), 2);
    for rtype in ["TLSA", "SVCB", "HTTPS", "CAA"] {
        assert_eq!(
            mock.records("mixed.example.com", rtype).len(),
            1,
            "{rtype} kept"
        );
    }
    // And the TLSA record there (with its `data` object) reads.
    assert_eq!(
        cf.read("_25._tcp.mx.example.com", RecordType::Tlsa)
            .await
            .unwrap(),
        vec![RData::Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0x0a, 0x0b, 0x0c, 0x0d]
        }]
    );
}

#[tokio::test]
async fn tlsa_and_cname_round_trip() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "_25._tcp.mail.example.com";
    let tlsa = [
        RData::Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: (0u8..32).collect(),
        },
        RData::Tlsa {
            usage: 2,
            selector: 1,
            matching: 1,
            data: vec![0xab; 32],
        },
    ];
    assert_eq!(
        cf.replace(name, 3600, &tlsa).await.unwrap(),
        Change::Changed
    );
    let posted: Vec<serde_json::Value> = mock
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .map(Request::json)
        .collect();
    assert_eq!(posted.len(), 2);
    assert!(posted.iter().any(|b| b["data"]
        == json!({"usage": 3, "selector": 1, "matching_type": 1,
                  "certificate": "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"})));
    assert!(
        posted
            .iter()
            .all(|b| b["type"] == "TLSA" && b["name"] == name)
    );
    assert!(same_set(
        &cf.read(name, RecordType::Tlsa).await.unwrap(),
        &tlsa
    ));
    mock.clear_requests();
    assert_eq!(
        cf.replace(name, 3600, &tlsa).await.unwrap(),
        Change::Unchanged
    );
    assert!(writes(&mock.requests()).is_empty());

    let alias = "_acme-challenge.mx.example.com";
    let target = RData::Cname("mx.acme-delegation.example.net".to_owned());
    assert_eq!(
        cf.replace(alias, 300, std::slice::from_ref(&target))
            .await
            .unwrap(),
        Change::Changed
    );
    let stored = mock.records(alias, "CNAME");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].content, "mx.acme-delegation.example.net");
    assert_eq!(
        cf.read(alias, RecordType::Cname).await.unwrap(),
        vec![target.clone()]
    );
    // A target listed with a trailing dot is the same target.
    mock.add_record(
        EXAMPLE,
        "b.example.com",
        "CNAME",
        "Target.Example.net.",
        None,
        300,
    );
    assert_eq!(
        cf.read("b.example.com", RecordType::Cname).await.unwrap(),
        vec![RData::Cname("target.example.net".to_owned())]
    );
}

#[tokio::test]
async fn rate_limit_is_waited_out_then_succeeds() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "_acme-challenge.example.com";
    mock.rate_limit_next(2);
    assert_eq!(cf.read(name, RecordType::Txt).await.unwrap(), vec![]);
    let reqs = mock.requests();
    // The first zone lookup was answered 429 twice and asked again each
    // time; then the lookups and the listing went on.
    assert_eq!(reqs.len(), 5, "{reqs:#?}");
    assert!(
        reqs[..3]
            .iter()
            .all(|r| r.is_zone_lookup() && r.param("name") == Some(name))
    );
    assert_eq!(reqs[3].param("name"), Some("example.com"));
    assert_eq!(reqs[4].param("type"), Some("TXT"));

    // A write interrupted by 429 goes through once allowed.
    mock.clear_requests();
    mock.rate_limit_next(2);
    assert_eq!(
        cf.replace(name, 120, &[txt("v")]).await.unwrap(),
        Change::Changed
    );
    let reqs = mock.requests();
    assert_eq!(count(&reqs, "GET"), 3);
    assert_eq!(count(&reqs, "POST"), 1);
    assert_eq!(mock.records(name, "TXT").len(), 1);
}

/// The wait after a 429 is what its Retry-After asks (1 s from the mock),
/// not the fallback schedule (10 s first) and not nothing.
#[tokio::test]
async fn retry_after_sets_the_wait() {
    let mock = server().await;
    let cf = provider(&mock).with_max_wait(Duration::from_secs(30));
    mock.rate_limit_next(1);
    let started = std::time::Instant::now();
    assert_eq!(
        cf.read("_acme-challenge.example.com", RecordType::Txt)
            .await
            .unwrap(),
        vec![]
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950),
        "answered before the 1 s Retry-After: {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(9),
        "waited the fallback schedule, not Retry-After: {waited:?}"
    );
}

#[tokio::test]
async fn persistent_rate_limit_gives_rate_limited() {
    let mock = server().await;
    let cf = provider(&mock);
    mock.rate_limit_next(1000);
    match cf
        .read("_acme-challenge.example.com", RecordType::Txt)
        .await
    {
        Err(Error::RateLimited(m)) => {
            assert!(m.contains("429"), "{m}");
            assert!(!m.contains(TOKEN));
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Bounded: the first try and three retries.
    assert_eq!(mock.requests().len(), 4);
}

#[tokio::test]
async fn api_error_envelope_is_refused_with_code_and_message() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "_acme-challenge.example.com";
    cf.read(name, RecordType::Txt).await.unwrap();

    mock.fail_next(
        400,
        json!({"success": false, "messages": [], "result": null,
               "errors": [{"code": 9109, "message": "Invalid request: record name is malformed"}]}),
    );
    match cf.replace(name, 120, &[txt("v")]).await {
        Err(Error::Refused(m)) => {
            assert!(m.contains("9109"), "{m}");
            assert!(
                m.contains("Invalid request: record name is malformed"),
                "{m}"
            );
            assert!(m.contains("400"), "{m}");
            assert!(!m.contains('\n'));
        }
        other => panic!("expected Refused, got {other:?}"),
    }

    // An envelope with success false in a 200 answer is refused too.
    mock.fail_next(
        200,
        json!({"success": false, "messages": [], "result": null,
               "errors": [{"code": 81058, "message": "An identical record already exists."}]}),
    );
    match cf.read(name, RecordType::Txt).await {
        Err(Error::Refused(m)) => {
            assert!(
                m.contains("81058") && m.contains("An identical record already exists."),
                "{m}"
            )
        }
        other => panic!("expected Refused, got {other:?}"),
    }

    // The failed write above left nothing behind.
    assert!(mock.records(name, "TXT").is_empty());

    // A code too large for the crate's error type (u16) is still reported
    // with the HTTP status, the code and the message.
    mock.fail_next(
        400,
        json!({"success": false, "errors": [{"code": 81058, "message": "An identical record already exists."}]}),
    );
    match cf.remove(name, RecordType::Txt).await {
        Err(Error::Refused(m)) => assert!(
            m.contains("HTTP 400") && m.contains("81058") && m.contains("identical record"),
            "{m}"
        ),
        other => panic!("expected Refused, got {other:?}"),
    }

    // An answer that is not the API's envelope is a transport error.
    mock.fail_next(200, json!(["not", "an", "envelope"]));
    assert!(matches!(
        cf.read(name, RecordType::Txt).await,
        Err(Error::Transport(_))
    ));
}

#[tokio::test]
async fn wrong_token_is_auth_error_and_the_token_is_never_shown() {
    let mock = server().await;
    let wrong = "cfut-WRONG-token-value-123456";
    let config = CloudflareConfig {
        api_token: wrong.to_owned(),
        api_url: Some(mock.url.clone()),
        zone: None,
    };
    assert!(!format!("{config:?}").contains(wrong));
    let cf = Cloudflare::new(config).unwrap();
    assert!(!format!("{cf:?}").contains(wrong));
    let mut messages = Vec::new();
    match cf
        .read("_acme-challenge.example.com", RecordType::Txt)
        .await
    {
        Err(e @ Error::Auth(_)) => messages.push((e.to_string(), format!("{e:?}"))),
        other => panic!("expected Auth, got {other:?}"),
    }
    match cf
        .replace("_acme-challenge.example.com", 60, &[txt("v")])
        .await
    {
        Err(e @ Error::Auth(_)) => messages.push((e.to_string(), format!("{e:?}"))),
        other => panic!("expected Auth, got {other:?}"),
    }
    assert!(
        mock.records("_acme-challenge.example.com", "TXT")
            .is_empty()
    );

    // 403 is an authentication problem too; a server echoing the token in
    // its message does not get it into the error.
    let good = provider(&mock);
    assert!(!format!("{good:?}").contains(TOKEN));
    mock.fail_next(
        403,
        json!({"success": false,
               "errors": [{"code": 9109, "message": format!("Unauthorized to access requested resource with {TOKEN}")}]}),
    );
    match good
        .read("_acme-challenge.example.com", RecordType::Txt)
        .await
    {
        Err(e @ Error::Auth(_)) => {
            assert!(e.to_string().contains("9109"));
            messages.push((e.to_string(), format!("{e:?}")));
        }
        other => panic!("expected Auth, got {other:?}"),
    }
    mock.fail_next(
        400,
        json!({"success": false, "errors": [{"code": 1004, "message": format!("bad {TOKEN}")}]}),
    );
    let e = good
        .read("_acme-challenge.example.com", RecordType::Txt)
        .await
        .unwrap_err();
    messages.push((e.to_string(), format!("{e:?}")));

    for (display, debug) in &messages {
        for secret in [wrong, TOKEN] {
            assert!(!display.contains(secret), "{display}");
            assert!(!debug.contains(secret), "{debug}");
        }
    }
    // The requests did carry the tokens as bearer credentials (checked by
    // the server), so the absence above is redaction, not omission.
    assert!(mock.requests().len() >= 4);
}

#[tokio::test]
async fn bad_configuration_and_unreachable_api() {
    for url in [
        "ftp://example.com/",
        "http://",
        "http://bad host/",
        "http://127.0.0.1:99999/",
    ] {
        let r = Cloudflare::new(CloudflareConfig {
            api_token: TOKEN.to_owned(),
            api_url: Some(url.to_owned()),
            zone: None,
        });
        assert!(matches!(r, Err(Error::Config(_))), "{url}");
    }
    let r = Cloudflare::new(CloudflareConfig {
        api_token: "  ".to_owned(),
        api_url: None,
        zone: None,
    });
    assert!(matches!(r, Err(Error::Config(_))));

    // Nothing listens on this port any more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let cf = Cloudflare::new(CloudflareConfig {
        api_token: TOKEN.to_owned(),
        api_url: Some(format!("http://{addr}/client/v4")),
        zone: None,
    })
    .unwrap();
    match cf
        .read("_acme-challenge.example.com", RecordType::Txt)
        .await
    {
        Err(Error::Transport(m)) => assert!(!m.contains(TOKEN)),
        other => panic!("expected Transport, got {other:?}"),
    }
}

/// ACME DNS-01 shares `_acme-challenge` names with other clients: adding
/// and removing single values creates and deletes those records only, and
/// another client's record is neither rewritten nor deleted, also when two
/// orders add at once.
#[tokio::test]
async fn single_values_are_added_and_removed_keeping_other_clients_records() {
    let mock = server().await;
    let cf = provider(&mock);
    let name = "_acme-challenge.example.com";
    let foreign = mock.add_record(EXAMPLE, name, "TXT", "certbot-value", None, 120);
    let (a, b) = (txt("order-a"), txt("order-b"));
    let (added_a, added_b) = tokio::join!(
        cf.add(name, 60, std::slice::from_ref(&a)),
        cf.add(name, 60, std::slice::from_ref(&b))
    );
    assert_eq!(
        (added_a, added_b),
        (Ok(Change::Changed), Ok(Change::Changed))
    );
    assert!(same_set(
        &cf.read(name, RecordType::Txt).await.unwrap(),
        &[txt("certbot-value"), a.clone(), b.clone()]
    ));
    let kept = mock.records(name, "TXT");
    let kept = kept.iter().find(|r| r.id == foreign).unwrap();
    assert_eq!((kept.content.as_str(), kept.ttl), ("certbot-value", 120));
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.record_id() == Some(foreign.as_str())),
        "another client's record was written"
    );

    // Already there: no write.
    mock.clear_requests();
    assert_eq!(
        cf.add(name, 60, std::slice::from_ref(&a)).await,
        Ok(Change::Unchanged)
    );
    assert!(writes(&mock.requests()).is_empty());

    assert_eq!(
        cf.remove_values(name, std::slice::from_ref(&a)).await,
        Ok(Change::Changed)
    );
    let w = mock.requests();
    let w = writes(&w);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].method, "DELETE");
    assert_ne!(w[0].record_id(), Some(foreign.as_str()));
    assert!(same_set(
        &cf.read(name, RecordType::Txt).await.unwrap(),
        &[txt("certbot-value"), b.clone()]
    ));
    mock.clear_requests();
    assert_eq!(
        cf.remove_values(name, std::slice::from_ref(&a)).await,
        Ok(Change::Unchanged)
    );
    assert!(writes(&mock.requests()).is_empty());
    cf.remove_values(name, &[b]).await.unwrap();
    let left = mock.records(name, "TXT");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, foreign);
}
