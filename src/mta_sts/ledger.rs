//! The MTA-STS ledger (meant for `state_dir/mta-sts.json`): per policy
//! domain, what each HTTPS responder served when its body was fetched
//! back, which `_mta-sts` TXT id each authoritative server shows (with its
//! TTL and since when), the policy last seen live everywhere, the MX set in
//! DNS (with its TTL, and since when each host that left it has been seen
//! gone), and each MX host's last STARTTLS check. The planner
//! ([`super::order`]) reads it; the MTA-STS pass (not written yet) fills it.
//!
//! Pure: the serde type and its accessors; no clock, files or network.
//! Times are Unix seconds, TTLs and ages seconds. A responder or server the
//! ledger does not know counts as "not seen": the accessors never take
//! absence for agreement.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::order::Policy;

/// Every policy domain's ledger, by domain name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    pub domains: BTreeMap<String, DomainLedger>,
}

/// What one policy domain's responders and DNS showed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainLedger {
    /// Responder (`ADDR:443` or the webroot's web server) → the policy
    /// body last fetched back from it over HTTPS with WebPKI validation.
    #[serde(default)]
    pub served: BTreeMap<String, Fetched>,
    /// Authoritative server → the `_mta-sts` TXT id it answered.
    #[serde(default)]
    pub txt: BTreeMap<String, TxtSeen>,
    /// The largest TTL the TXT records replaced by the current id had: a
    /// resolver may hold the old id that long, so it counts towards "one
    /// TXT TTL" with the current record's TTL.
    #[serde(default)]
    pub txt_ttl_before: u32,
    /// The TXT id this host last wrote to the DNS provider (seen or not).
    #[serde(default)]
    pub published_id: Option<String>,
    /// The policy whose id was last seen on every authoritative server.
    #[serde(default)]
    pub live: Option<Policy>,
    /// The largest `max_age` of the policies `live` replaced since the
    /// records were created: a sender may hold any of them that long, so
    /// `disable` deletes the records only after it.
    #[serde(default)]
    pub old_max_age: u64,
    /// The domain's MX set as every authoritative server showed it.
    #[serde(default)]
    pub mx: MxSeen,
    /// MX host → its last STARTTLS certificate check.
    #[serde(default)]
    pub starttls: BTreeMap<String, StarttlsCheck>,
}

/// A policy body fetched back from one responder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// The `id` of the policy the body is the canonical form of; `None`
    /// when the fetch failed or the body parsed to no known policy.
    pub id: Option<String>,
    /// Since when this responder has served this id without a gap.
    pub since: i64,
    /// When the body was last fetched.
    pub at: i64,
}

/// One authoritative server's `_mta-sts` TXT answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxtSeen {
    /// The `id=` value, `None` for NXDOMAIN/NODATA.
    pub id: Option<String>,
    /// The record's TTL (or the negative TTL when absent).
    pub ttl: u32,
    /// Since when this server has answered this id without a gap.
    pub since: i64,
}

/// The MX set in DNS.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MxSeen {
    /// The exchange hosts (lower case, no trailing dot) every
    /// authoritative server lists.
    #[serde(default)]
    pub hosts: BTreeSet<String>,
    /// The largest TTL any authoritative server gave the MX set.
    #[serde(default)]
    pub ttl: u32,
    /// Host → since when it has been seen gone from the MX set on every
    /// authoritative server (kept until it leaves the policy).
    #[serde(default)]
    pub gone: BTreeMap<String, i64>,
}

/// An MX host's STARTTLS certificate check (like `verify`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StarttlsCheck {
    /// Whether the host served, over STARTTLS, a certificate that chains
    /// to a WebPKI root, is unexpired and covers its name.
    pub ok: bool,
    /// Why not, one line (no key material).
    #[serde(default)]
    pub reason: Option<String>,
    /// When it was checked.
    pub at: i64,
}

/// Where a TXT id stands over the authoritative servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxtState {
    /// Every server answers the id: since the latest of their `since`,
    /// with the largest TTL any gave.
    Everywhere { since: i64, ttl: u32 },
    /// This server (the first, in order) does not answer it.
    Missing { server: String },
}

impl DomainLedger {
    /// The first of `responders` that does not serve `id` (unknown,
    /// failed, or another id); `None` when all do. With no responder at all
    /// nothing is served: the answer is `Some("")`.
    pub fn not_serving<'a>(&self, responders: &'a [String], id: &str) -> Option<&'a str> {
        if responders.is_empty() {
            return Some("");
        }
        responders
            .iter()
            .find(|r| self.served.get(r.as_str()).and_then(|f| f.id.as_deref()) != Some(id))
            .map(String::as_str)
    }

    /// Whether `id` is answered by every one of `servers` (an empty list
    /// never agrees), since when and with which largest TTL.
    pub fn txt_state(&self, servers: &[String], id: &str) -> TxtState {
        let mut since = i64::MIN;
        let mut ttl = 0;
        for s in servers {
            match self.txt.get(s) {
                Some(t) if t.id.as_deref() == Some(id) => {
                    since = since.max(t.since);
                    ttl = ttl.max(t.ttl);
                }
                _ => {
                    return TxtState::Missing { server: s.clone() };
                }
            }
        }
        if servers.is_empty() {
            return TxtState::Missing {
                server: String::new(),
            };
        }
        TxtState::Everywhere { since, ttl }
    }

    /// Whether any authoritative server still answers some `_mta-sts` id.
    pub fn txt_present(&self) -> bool {
        self.txt.values().any(|t| t.id.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fetched(id: Option<&str>) -> Fetched {
        Fetched {
            id: id.map(str::to_owned),
            since: 10,
            at: 20,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_body_counts_as_served_only_when_every_listed_responder_returned_its_id() {
        let mut l = DomainLedger::default();
        l.served.insert("a".into(), fetched(Some("new")));
        l.served.insert("b".into(), fetched(Some("old")));
        l.served.insert("c".into(), fetched(None));
        let cases: &[(&str, &[&str], Option<&str>)] = &[
            ("the one responder serving it", &["a"], None),
            ("one serving the old id", &["a", "b"], Some("b")),
            ("one whose fetch failed", &["a", "c"], Some("c")),
            ("one never fetched", &["a", "d"], Some("d")),
            ("no responder at all", &[], Some("")),
        ];
        for (name, responders, expected) in cases {
            let r = names(responders);
            assert_eq!(l.not_serving(&r, "new"), *expected, "{name}");
        }
    }

    #[test]
    fn a_txt_id_is_everywhere_from_the_latest_server_to_show_it_with_the_largest_ttl() {
        let mut l = DomainLedger::default();
        let seen = |id: Option<&str>, ttl, since| TxtSeen {
            id: id.map(str::to_owned),
            ttl,
            since,
        };
        l.txt.insert("ns1".into(), seen(Some("new"), 300, 100));
        l.txt.insert("ns2".into(), seen(Some("new"), 600, 50));
        l.txt.insert("ns3".into(), seen(Some("old"), 300, 10));
        l.txt.insert("ns4".into(), seen(None, 60, 10));
        let missing = |s: &str| TxtState::Missing { server: s.into() };
        let cases: &[(&str, &[&str], TxtState)] = &[
            (
                "two agreeing servers",
                &["ns1", "ns2"],
                TxtState::Everywhere {
                    since: 100,
                    ttl: 600,
                },
            ),
            ("one with the old id", &["ns1", "ns3"], missing("ns3")),
            ("one without a record", &["ns1", "ns4"], missing("ns4")),
            ("one never asked", &["ns1", "ns9"], missing("ns9")),
            ("no server", &[], missing("")),
        ];
        for (name, servers, expected) in cases {
            assert_eq!(l.txt_state(&names(servers), "new"), *expected, "{name}");
        }
        assert!(l.txt_present());
        l.txt.retain(|_, t| t.id.is_none());
        assert!(!l.txt_present());
    }

    #[test]
    fn the_ledger_reads_back_what_it_wrote_and_an_empty_document_is_an_empty_ledger() {
        let mut ledger = Ledger::default();
        let mut d = DomainLedger::default();
        d.served.insert("127.0.0.1:443".into(), fetched(Some("x")));
        d.mx.hosts.insert("mx1.example.org".into());
        d.mx.gone.insert("mx0.example.org".into(), 5);
        d.starttls.insert(
            "mx1.example.org".into(),
            StarttlsCheck {
                ok: false,
                reason: Some("self-signed".into()),
                at: 7,
            },
        );
        ledger.domains.insert("example.org".into(), d);
        let text = serde_json::to_string(&ledger).expect("serialize");
        let back: Ledger = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, ledger);
        let empty: Ledger = serde_json::from_str("{}").expect("parse");
        assert_eq!(empty, Ledger::default());
        let bare: DomainLedger = serde_json::from_str("{}").expect("parse");
        assert_eq!(bare, DomainLedger::default());
    }
}
