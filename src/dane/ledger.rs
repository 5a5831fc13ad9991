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
}
