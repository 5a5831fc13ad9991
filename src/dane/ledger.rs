//! The DANE ledger (`state_dir/dane.json`): per DANE target, the TLSA
//! records this host published (so it removes only its own), since when
//! each record has been seen DNSSEC-signed on every authoritative server
//! (the gate's `t0`), the TTL facts of each record set, and what the gate
//! decided last. Written by the DANE pass (the DNS side) and by the
//! pipeline (the gate's decision); read by the pipeline, `status` and
//! metrics.
//!
//! Pure: the type and its accessors; loading and saving go through
//! [`crate::state::StateDir::dane_record`]. Records are kept as their
//! presentation text (`3 1 1 <hex>`, see [`super::tlsa::Tlsa`]'s Display),
//! owner names as `_PORT._tcp.HOST`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Every DANE target's ledger, by target name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    #[serde(default)]
    pub targets: BTreeMap<String, TargetLedger>,
}

/// One DANE target's records and what DNS showed of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetLedger {
    /// Owner name → the records THIS host added there. Written before the
    /// DNS add, removed after the DNS removal: an owned record that is not
    /// in DNS is harmless, one in DNS that is not owned would leak.
    #[serde(default)]
    pub owned: BTreeMap<String, BTreeSet<String>>,
    /// Owner name → record → since when (Unix seconds) it has been seen,
    /// DNSSEC-signed, on every authoritative server without a gap.
    #[serde(default)]
    pub seen: BTreeMap<String, BTreeMap<String, i64>>,
    /// Owner name → the TTL facts of its record set.
    #[serde(default)]
    pub rrsets: BTreeMap<String, Rrset>,
    /// Whether the zone of the owner names is DNSSEC-signed, as last seen.
    #[serde(default)]
    pub zone_signed: Option<bool>,
    /// What the last DANE pass could not do, one line each.
    #[serde(default)]
    pub problems: Vec<String>,
    /// When the last DANE pass finished.
    #[serde(default)]
    pub last_pass: Option<i64>,
    /// What the gate decided in the last reconcile, for `status` and
    /// metrics.
    #[serde(default)]
    pub gate: Option<GateState>,
}

/// The TTL facts of one owner's record set, as observed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rrset {
    /// The largest TTL any authoritative server gave the set (a safe
    /// stand-in for max(old TTL, new TTL)).
    pub max_ttl: u32,
    /// Whether the set existed before this host first added to it.
    pub existed_before: bool,
    /// The zone's negative-caching TTL (min of SOA TTL and SOA minimum).
    pub negative_ttl: u32,
}

/// The gate's last decision for a target, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    /// `open`, `waiting` or `forced`.
    pub state: String,
    /// The certificate held (SHA-256 of its leaf), when waiting or forced.
    pub sha256: Option<String>,
    /// When the gate opens if nothing changes (Unix seconds).
    pub until: Option<i64>,
    /// What it waits for, one line.
    pub reason: Option<String>,
    /// When this was decided.
    pub at: i64,
}

/// What every authoritative server of one owner name answered in one
/// observation round (built from the providers' `Propagation::observe`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnerRound {
    pub servers: Vec<ServerView>,
}

/// One authoritative server's answer for an owner name's TLSA set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerView {
    /// The records it holds, as presentation text (`3 1 1 <hex>`).
    pub records: Vec<String>,
    /// Whether an RRSIG covering the set came with them.
    pub signed: bool,
    /// The set's TTL, when it exists.
    pub ttl: Option<u32>,
    /// For NODATA/NXDOMAIN: the negative-caching TTL (min of the SOA's
    /// TTL and minimum).
    pub negative_ttl: Option<u32>,
}

/// The TTLs the gate's hold is made of, over a target's owner names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HoldParams {
    pub old_ttl: u32,
    pub new_ttl: u32,
    pub rrset_existed: bool,
    pub negative_ttl: u32,
}

impl Ledger {
    /// Since when `record` has been seen on every one of `owners`: the
    /// latest of the per-owner times; `None` when one owner lacks it (or
    /// `owners` is empty).
    pub fn seen_since(&self, target: &str, owners: &[String], record: &str) -> Option<i64> {
        let t = self.targets.get(target)?;
        if owners.is_empty() {
            return None;
        }
        owners
            .iter()
            .map(|o| t.seen.get(o).and_then(|r| r.get(record)).copied())
            .try_fold(i64::MIN, |latest, since| since.map(|s| latest.max(s)))
    }

    /// The hold's TTLs over `owners`: the largest TTL seen (as both old
    /// and new), the largest negative TTL, and whether every set existed
    /// before mxkeys added to it. An owner never observed counts as a new
    /// set with no known TTL.
    pub fn hold_params(&self, target: &str, owners: &[String]) -> HoldParams {
        let mut p = HoldParams {
            rrset_existed: true,
            ..HoldParams::default()
        };
        let sets = self.targets.get(target).map(|t| &t.rrsets);
        for o in owners {
            match sets.and_then(|s| s.get(o)) {
                Some(r) => {
                    p.old_ttl = p.old_ttl.max(r.max_ttl);
                    p.negative_ttl = p.negative_ttl.max(r.negative_ttl);
                    p.rrset_existed &= r.existed_before;
                }
                None => p.rrset_existed = false,
            }
        }
        p.new_ttl = p.old_ttl;
        p
    }

    /// Pure: merges one observation round of `owner` into the ledger at
    /// `now`. A record present and signed on every server keeps its `t0`
    /// (or gets `t0 = now` when it appears); a record missing, or unsigned,
    /// on any server loses its `t0` (it starts again when it is back). An
    /// empty round (no server) shows nothing. TTL facts only grow (the
    /// largest TTL and negative TTL ever given). A set that did not exist
    /// before counts as existing once it has been seen everywhere for the
    /// negative TTL: by then no resolver still caches its absence.
    pub fn observe(&mut self, target: &str, owner: &str, round: &OwnerRound, now: i64) {
        let t = self.targets.entry(target.to_owned()).or_default();
        let mut everywhere: Option<BTreeSet<&str>> = None;
        for server in &round.servers {
            let here: BTreeSet<&str> = if server.signed {
                server.records.iter().map(String::as_str).collect()
            } else {
                BTreeSet::new()
            };
            everywhere = Some(match everywhere {
                None => here,
                Some(all) => all.intersection(&here).copied().collect(),
            });
        }
        let everywhere = everywhere.unwrap_or_default();
        let seen = t.seen.entry(owner.to_owned()).or_default();
        seen.retain(|r, _| everywhere.contains(r.as_str()));
        for r in &everywhere {
            seen.entry((*r).to_owned()).or_insert(now);
        }
        let set_since = seen.values().min().copied();
        if seen.is_empty() {
            t.seen.remove(owner);
        }
        let first = !t.rrsets.contains_key(owner);
        let rrset = t.rrsets.entry(owner.to_owned()).or_default();
        if first {
            rrset.existed_before =
                !round.servers.is_empty() && round.servers.iter().all(|s| !s.records.is_empty());
        }
        for s in &round.servers {
            rrset.max_ttl = rrset.max_ttl.max(s.ttl.unwrap_or(0));
            rrset.negative_ttl = rrset.negative_ttl.max(s.negative_ttl.unwrap_or(0));
        }
        if let Some(since) = set_since
            && now >= since.saturating_add(i64::from(rrset.negative_ttl))
        {
            rrset.existed_before = true;
        }
    }

    /// Pure: records, before this host's first addition at `owner`,
    /// whether its set existed then (the servers held records). Once
    /// known, never changed here ([`Ledger::observe`] only turns it true).
    pub fn note_set_before_add(&mut self, target: &str, owner: &str, existed: bool) {
        let t = self.targets.entry(target.to_owned()).or_default();
        t.rrsets.entry(owner.to_owned()).or_insert_with(|| Rrset {
            existed_before: existed,
            ..Rrset::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REC: &str = "3 1 1 aa";

    fn ledger(seen: &[(&str, i64)], rrsets: &[(&str, Rrset)]) -> Ledger {
        let mut t = TargetLedger::default();
        for (owner, since) in seen {
            t.seen
                .entry((*owner).to_owned())
                .or_default()
                .insert(REC.to_owned(), *since);
        }
        for (owner, r) in rrsets {
            t.rrsets.insert((*owner).to_owned(), *r);
        }
        Ledger {
            targets: BTreeMap::from([("mx".to_owned(), t)]),
        }
    }

    fn owners(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_record_is_seen_since_the_latest_owner_saw_it_and_not_while_one_lacks_it() {
        let l = ledger(&[("_25._tcp.a", 100), ("_25._tcp.b", 250)], &[]);
        for (target, names, want) in [
            ("mx", &["_25._tcp.a"][..], Some(100)),
            ("mx", &["_25._tcp.a", "_25._tcp.b"][..], Some(250)),
            ("mx", &["_25._tcp.a", "_25._tcp.c"][..], None),
            ("mx", &[][..], None),
            ("other", &["_25._tcp.a"][..], None),
        ] {
            assert_eq!(l.seen_since(target, &owners(names), REC), want, "{names:?}");
            assert_eq!(l.seen_since(target, &owners(names), "3 1 1 bb"), None);
        }
    }

    #[test]
    fn the_hold_takes_the_largest_ttls_and_a_new_set_when_any_set_was_new() {
        let set = |max_ttl, existed_before, negative_ttl| Rrset {
            max_ttl,
            existed_before,
            negative_ttl,
        };
        let l = ledger(
            &[],
            &[
                ("a", set(300, true, 60)),
                ("b", set(3600, true, 900)),
                ("c", set(5, false, 2)),
            ],
        );
        let p = |names: &[&str]| l.hold_params("mx", &owners(names));
        assert_eq!(
            p(&["a", "b"]),
            HoldParams {
                old_ttl: 3600,
                new_ttl: 3600,
                rrset_existed: true,
                negative_ttl: 900
            }
        );
        assert!(!p(&["a", "c"]).rrset_existed);
        assert!(!p(&["a", "unobserved"]).rrset_existed);
        assert_eq!(l.hold_params("other", &owners(&["a"])).old_ttl, 0);
    }

    #[test]
    fn the_ledger_reads_back_what_it_wrote_and_accepts_a_minimal_file() {
        let l = ledger(&[("_25._tcp.a", 100)], &[("_25._tcp.a", Rrset::default())]);
        let text = serde_json::to_string(&l).unwrap();
        assert_eq!(serde_json::from_str::<Ledger>(&text).unwrap(), l);
        let minimal: Ledger =
            serde_json::from_str(r#"{"targets":{"mx":{"seen":{"_25._tcp.a":{"3 1 1 aa":5}}}}}"#)
                .unwrap();
        assert_eq!(
            minimal.seen_since("mx", &owners(&["_25._tcp.a"]), REC),
            Some(5)
        );
    }

    fn view(records: &[&str], signed: bool, ttl: Option<u32>, negative: Option<u32>) -> ServerView {
        ServerView {
            records: records.iter().map(|s| (*s).to_owned()).collect(),
            signed,
            ttl,
            negative_ttl: negative,
        }
    }

    fn round(servers: Vec<ServerView>) -> OwnerRound {
        OwnerRound { servers }
    }

    #[test]
    fn a_record_keeps_its_t0_while_present_and_signed_everywhere_and_loses_it_when_one_server_lacks_it()
     {
        const A: &str = "3 1 1 aa";
        const B: &str = "3 1 1 bb";
        const O: &str = "_25._tcp.mx";
        let both = |recs: &[&str]| round(vec![view(recs, true, Some(60), None); 2]);
        // (what, round, now, since A, since B)
        type Step = (&'static str, OwnerRound, i64, Option<i64>, Option<i64>);
        let steps: Vec<Step> = vec![
            ("nothing yet", both(&[]), 100, None, None),
            (
                "A appears on both servers",
                both(&[A]),
                110,
                Some(110),
                None,
            ),
            ("A stays: t0 kept", both(&[A]), 150, Some(110), None),
            (
                "B on one server only: not seen",
                round(vec![
                    view(&[A, B], true, Some(60), None),
                    view(&[A], true, Some(60), None),
                ]),
                160,
                Some(110),
                None,
            ),
            ("B everywhere now", both(&[A, B]), 170, Some(110), Some(170)),
            (
                "one server answers unsigned: nothing counts",
                round(vec![
                    view(&[A, B], true, Some(60), None),
                    view(&[A, B], false, Some(60), None),
                ]),
                180,
                None,
                None,
            ),
            (
                "both signed again: t0 starts over",
                both(&[A, B]),
                190,
                Some(190),
                Some(190),
            ),
            (
                "A vanishes from one server: its t0 is dropped",
                round(vec![
                    view(&[B], true, Some(60), None),
                    view(&[A, B], true, Some(60), None),
                ]),
                200,
                None,
                Some(190),
            ),
            (
                "no server answered: nothing seen",
                round(vec![]),
                210,
                None,
                None,
            ),
        ];
        let mut l = Ledger::default();
        let owners = owners(&[O]);
        for (what, r, now, a, b) in steps {
            l.observe("mx", O, &r, now);
            assert_eq!(l.seen_since("mx", &owners, A), a, "{what}: A");
            assert_eq!(l.seen_since("mx", &owners, B), b, "{what}: B");
        }
    }

    #[test]
    fn observed_ttls_only_grow_and_a_new_set_counts_as_existing_once_seen_for_the_negative_ttl() {
        const A: &str = "3 1 1 aa";
        const O: &str = "_25._tcp.mx";
        let owners = owners(&[O]);
        let mut l = Ledger::default();
        // Before the first add: no set (NODATA, negative TTL 30).
        l.note_set_before_add("mx", O, false);
        l.observe("mx", O, &round(vec![view(&[], true, None, Some(30))]), 100);
        let p = l.hold_params("mx", &owners);
        assert_eq!((p.old_ttl, p.negative_ttl, p.rrset_existed), (0, 30, false));
        // Published with TTL 300 on one server, 60 on the other.
        let r = round(vec![
            view(&[A], true, Some(300), None),
            view(&[A], true, Some(60), None),
        ]);
        l.observe("mx", O, &r, 110);
        let p = l.hold_params("mx", &owners);
        assert_eq!(
            (p.old_ttl, p.negative_ttl, p.rrset_existed),
            (300, 30, false)
        );
        // A lower TTL later does not lower the fact.
        l.observe("mx", O, &round(vec![view(&[A], true, Some(5), None)]), 120);
        assert_eq!(l.hold_params("mx", &owners).old_ttl, 300);
        assert!(
            !l.hold_params("mx", &owners).rrset_existed,
            "seen 10 s < 30 s"
        );
        // Seen for the negative TTL: no resolver caches its absence any more.
        l.observe("mx", O, &round(vec![view(&[A], true, Some(5), None)]), 140);
        assert!(l.hold_params("mx", &owners).rrset_existed);
        // The note before an add never overrides what is known.
        l.note_set_before_add("mx", O, false);
        assert!(l.hold_params("mx", &owners).rrset_existed);

        // A set first observed already holding records existed before.
        let mut l = Ledger::default();
        l.observe(
            "mx",
            O,
            &round(vec![view(&["3 1 1 cc"], true, Some(60), None)]),
            100,
        );
        assert!(l.hold_params("mx", &owners).rrset_existed);
    }
}
