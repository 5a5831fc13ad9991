//! The MTA-STS ledger (meant for `state_dir/mta-sts.json`): per policy
//! domain, what each HTTPS responder served when its body was fetched
//! back, which `_mta-sts` TXT id each authoritative server shows (with its
//! TTL and since when), the policy last seen live everywhere, the MX set in
//! DNS (with its TTL, and since when each host that left it has been seen
//! gone), and each MX host's last STARTTLS check. The planner
//! ([`super::order`]) reads it; the MTA-STS pass ([`super::pass`]) fills it
//! through the `observe_*` updaters, which keep each "since" without a gap,
//! and [`DomainLedger::went_live`] once the planned id is on every server.
//!
//! Pure: the serde type, its accessors and updaters; no clock, files or
//! network.
//! Times are Unix seconds, TTLs and ages seconds. A responder or server the
//! ledger does not know counts as "not seen": the accessors never take
//! absence for agreement.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::order::{MAX_AGE_LIMIT, Mode, Policy, covers};

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
    /// The TXT id this host last wrote to the DNS provider (seen or not).
    #[serde(default)]
    pub published_id: Option<String>,
    /// The policy whose id was last seen on every authoritative server.
    #[serde(default)]
    pub live: Option<Policy>,
    /// Until when (Unix seconds) a sender may still hold a policy served
    /// before `live`: the latest, over the policies replaced, of "when
    /// replaced + its `max_age`". `disable` deletes the records only then.
    #[serde(default)]
    pub held_until: i64,
    /// The domain's MX set as every authoritative server showed it.
    #[serde(default)]
    pub mx: MxSeen,
    /// MX host → its last STARTTLS certificate check.
    #[serde(default)]
    pub starttls: BTreeMap<String, StarttlsCheck>,
    /// `mxkeys mta-sts disable DOMAIN` was asked for: the planner's
    /// `disable` input, until the records are deleted.
    #[serde(default)]
    pub disable: bool,
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
    /// The TTL of the answer this id replaced: a resolver may hold the old
    /// id that long.
    #[serde(default)]
    pub replaced_ttl: u32,
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
    /// with the largest TTL any gave, its own or the replaced answer's.
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
                    ttl = ttl.max(t.ttl).max(t.replaced_ttl);
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

    /// Records a body fetched back from `responder` at `now` (`id`: the
    /// policy it is the canonical form of, `None` when the fetch failed);
    /// `since` moves only when the id changes.
    pub fn observe_served(&mut self, responder: &str, id: Option<&str>, now: i64) {
        let since = match self.served.get(responder) {
            Some(f) if f.id.as_deref() == id => f.since,
            _ => now,
        };
        let fetched = Fetched {
            id: id.map(str::to_owned),
            since,
            at: now,
        };
        self.served.insert(responder.to_owned(), fetched);
    }

    /// Records one authoritative server's `_mta-sts` answer at `now`
    /// (`ttl`: the record's, or the negative TTL when absent); a changed id
    /// starts a new `since` and remembers the replaced answer's TTL.
    pub fn observe_txt(&mut self, server: &str, id: Option<&str>, ttl: u32, now: i64) {
        let seen = match self.txt.get(server) {
            Some(t) if t.id.as_deref() == id => TxtSeen { ttl, ..t.clone() },
            previous => TxtSeen {
                id: id.map(str::to_owned),
                ttl,
                since: now,
                replaced_ttl: previous.map_or(0, |t| t.ttl),
            },
        };
        self.txt.insert(server.to_owned(), seen);
    }

    /// Records the MX set every authoritative server showed at `now`, with
    /// its largest TTL: a host that left it is gone from `now`, one back in
    /// it is not gone, a host the live policy lists by name that is not in
    /// it counts as gone from `now` too; a gone host no live line covers is
    /// forgotten.
    pub fn observe_mx(&mut self, hosts: BTreeSet<String>, ttl: u32, now: i64) {
        for h in self.mx.hosts.difference(&hosts) {
            self.mx.gone.entry(h.clone()).or_insert(now);
        }
        let lines = self.live.as_ref().map(|p| &p.mx);
        for p in lines.into_iter().flatten() {
            if !p.starts_with("*.") && !hosts.contains(p) {
                self.mx.gone.entry(p.clone()).or_insert(now);
            }
        }
        self.mx.gone.retain(|h, _| {
            !hosts.contains(h) && lines.is_some_and(|l| l.iter().any(|p| covers(p, h)))
        });
        self.mx.hosts = hosts;
        self.mx.ttl = ttl;
    }

    /// Records that `policy` is live (its id answered by every
    /// authoritative server) at `now`: a sender may hold the policy it
    /// replaces until `now` + that policy's `max_age`.
    ///
    /// `mode: none` replacing no known live policy replaces one this host
    /// never saw live (its id published by another run, or before mxkeys):
    /// a sender may hold it for up to the RFC's largest `max_age`.
    pub fn went_live(&mut self, policy: &Policy, now: i64) {
        let held = match &self.live {
            Some(old) if old.id != policy.id => Some(old.max_age),
            Some(_) => None,
            None if policy.mode == Mode::None => Some(MAX_AGE_LIMIT),
            None => None,
        };
        if let Some(age) = held {
            let age = i64::try_from(age).unwrap_or(i64::MAX);
            self.held_until = self.held_until.max(now.saturating_add(age));
        }
        self.live = Some(policy.clone());
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
            replaced_ttl: 0,
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
    fn a_since_moves_only_when_the_answer_changes_and_a_replaced_txt_ttl_is_remembered() {
        let mut l = DomainLedger::default();
        l.observe_served("r1", Some("a"), 10);
        l.observe_served("r1", Some("a"), 20);
        assert_eq!(l.served["r1"], fetched_at(Some("a"), 10, 20), "same id");
        l.observe_served("r1", None, 30);
        l.observe_served("r1", Some("a"), 40);
        assert_eq!(l.served["r1"], fetched_at(Some("a"), 40, 40), "after a gap");

        l.observe_txt("ns1", Some("a"), 3_600, 10);
        l.observe_txt("ns1", Some("a"), 3_600, 20);
        assert_eq!((l.txt["ns1"].since, l.txt["ns1"].replaced_ttl), (10, 0));
        l.observe_txt("ns1", Some("b"), 300, 30);
        assert_eq!((l.txt["ns1"].since, l.txt["ns1"].replaced_ttl), (30, 3_600));
        assert_eq!(
            l.txt_state(&["ns1".to_owned()], "b"),
            TxtState::Everywhere {
                since: 30,
                ttl: 3_600
            },
            "a resolver may hold the old id for the old TTL"
        );
    }

    fn fetched_at(id: Option<&str>, since: i64, at: i64) -> Fetched {
        Fetched {
            id: id.map(str::to_owned),
            since,
            at,
        }
    }

    #[test]
    fn a_host_is_gone_from_when_it_left_the_mx_set_and_forgotten_once_no_live_line_covers_it() {
        let hosts =
            |h: &[&str]| -> BTreeSet<String> { h.iter().map(|s| (*s).to_owned()).collect() };
        let mut l = DomainLedger {
            live: Some(Policy {
                mode: super::super::order::Mode::Testing,
                mx: hosts(&["mx1.example.org", "*.example.net", "mx3.example.org"]),
                max_age: 100,
                id: "a".into(),
            }),
            ..DomainLedger::default()
        };
        l.observe_mx(hosts(&["mx1.example.org", "mx.example.net"]), 600, 10);
        assert_eq!(
            l.mx.gone,
            BTreeMap::from([("mx3.example.org".to_owned(), 10)]),
            "a listed host never in the MX set"
        );
        l.observe_mx(hosts(&["mx1.example.org"]), 600, 20);
        l.observe_mx(hosts(&["mx1.example.org"]), 300, 30);
        assert_eq!(
            l.mx.gone.get("mx.example.net"),
            Some(&20),
            "kept from when it left"
        );
        assert_eq!(
            l.mx.gone.get("mx3.example.org"),
            Some(&10),
            "kept from first seen"
        );
        assert_eq!(l.mx.ttl, 300);
        l.observe_mx(hosts(&["mx1.example.org", "mx.example.net"]), 300, 40);
        assert_eq!(l.mx.gone.get("mx.example.net"), None, "back in the MX set");
        l.observe_mx(hosts(&["mx1.example.org", "mx3.example.org"]), 300, 50);
        l.observe_mx(hosts(&["mx1.example.org", "mx9.example.com"]), 300, 60);
        assert_eq!(
            l.mx.gone,
            BTreeMap::from([
                ("mx.example.net".to_owned(), 50),
                ("mx3.example.org".to_owned(), 60)
            ]),
            "mx9.example.com, never listed, is not tracked"
        );
    }

    #[test]
    fn a_replaced_policy_is_held_by_senders_until_its_max_age_after_it_was_replaced() {
        let policy = |id: &str, max_age| Policy {
            mode: super::super::order::Mode::Testing,
            mx: BTreeSet::new(),
            max_age,
            id: id.into(),
        };
        let mut l = DomainLedger::default();
        l.went_live(&policy("a", 1_000), 10);
        assert_eq!(l.held_until, 0, "nothing replaced");
        l.went_live(&policy("a", 1_000), 20);
        assert_eq!(l.held_until, 0, "the same policy again");
        l.went_live(&policy("b", 50), 30);
        assert_eq!(l.held_until, 1_030);
        l.went_live(&policy("c", 50), 40);
        assert_eq!(l.held_until, 1_030, "the longer hold stays");
        assert_eq!(l.live.as_ref().map(|p| p.id.as_str()), Some("c"));
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
