//! What the DANE pass wants published, and the record-by-record edits that
//! get a TLSA set there. Pure: chains, keys, what the server holds, what
//! this host owns and whether the service was verified come in as
//! parameters; records and edits come out. Tested with tables.
//!
//! The rules (issue 14):
//! - wanted, for every configured spec: the record of the installed chain,
//!   of the candidate the pipeline would install (also while the gate holds
//!   it), and, for `3 1 1`, of each standby key — so a key's record is in
//!   DNS, and ageing, before that key is ever served;
//! - a record is added only when missing, never more than [`MAX_RECORDS`]
//!   at one name (counting everything the server holds, whoever wrote it);
//! - a record is removed only when THIS host added it (it is `owned`), it
//!   is no longer wanted, and the served certificate was verified on every
//!   address of every host × port against a wanted record: the old record
//!   goes only after the new key is in service. Records others wrote are
//!   never touched;
//! - several hosts under one name (each its own key, issue 18): each adds
//!   its own record; an address serving a key another host's record
//!   matches (present, not owned here) counts as in service
//!   ([`in_service_records`]), so no host's retirement waits for another
//!   host's key, and no host removes another's record;
//! - an owned record that is neither present nor wanted is forgotten (a
//!   crash between recording ownership and the write leaves such entries;
//!   they are harmless and dropped here).

use std::collections::BTreeSet;

use aws_lc_rs::digest::{SHA256, digest};
use rustls_pki_types::CertificateDer;

use super::tlsa::{Spec, Tlsa};

/// The most TLSA records mxkeys lets one name hold (RFC 7671 §8.1 needs
/// two per usage during a rollover; more makes every sender's lookup
/// bigger and hints at records nobody retires).
pub const MAX_RECORDS: usize = 8;

/// What a DANE target's records are built from.
#[derive(Debug, Default, Clone, Copy)]
pub struct Keys<'a> {
    /// The chains installed in the target's slots (one, or two for a dual
    /// target), leaf first.
    pub installed: &'a [&'a [CertificateDer<'a>]],
    /// The chains the pipeline would install next (held or not).
    pub candidates: &'a [&'a [CertificateDer<'a>]],
    /// SubjectPublicKeyInfo DER of each standby key (acme sources whose
    /// `dane_targets` name this target).
    pub standby_spki: &'a [&'a [u8]],
}

/// The records wanted for `specs`, with a one-line problem for each record
/// that could not be built (a `2 1 1` for a chain without its issuer, a
/// certificate that does not parse). Sorted and without duplicates.
pub fn wanted(specs: &[Spec], keys: &Keys<'_>) -> (BTreeSet<Tlsa>, Vec<String>) {
    let mut out = BTreeSet::new();
    let mut problems = Vec::new();
    let chains = keys
        .installed
        .iter()
        .map(|c| ("installed", c))
        .chain(keys.candidates.iter().map(|c| ("candidate", c)));
    for (what, chain) in chains {
        for spec in specs {
            match spec.build(chain) {
                Ok(t) => {
                    out.insert(t);
                }
                Err(e) => problems.push(format!("{spec} for the {what} certificate: {e}")),
            }
        }
    }
    if specs.contains(&Spec::EE) {
        for spki in keys.standby_spki {
            out.insert(ee_of_spki(spki));
        }
    }
    (out, problems)
}

/// The `3 1 1` record of a SubjectPublicKeyInfo (DER).
pub fn ee_of_spki(spki: &[u8]) -> Tlsa {
    let mut data = [0u8; 32];
    data.copy_from_slice(digest(&SHA256, spki).as_ref());
    Tlsa {
        spec: Spec::EE,
        data,
    }
}

/// Records in the presentation form the ledger keeps (`3 1 1 <hex>`,
/// lowercase): what [`Tlsa`]'s `Display` and the providers' TLSA `RData`
/// both print, so texts from either compare equal.
pub fn texts(records: &BTreeSet<Tlsa>) -> BTreeSet<String> {
    records.iter().map(ToString::to_string).collect()
}

/// The presentation form of any TLSA text: `3 1 1 <hex>` lowercase, the
/// hex joined; texts mxkeys cannot parse (other usages) kept as given,
/// trimmed, with whitespace runs collapsed.
pub fn normalize(text: &str) -> String {
    match text.parse::<Tlsa>() {
        Ok(t) => t.to_string(),
        Err(_) => text.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// What one owner name (`_25._tcp.mx.example.org`) needs, from what the
/// server holds there.
#[derive(Debug, Clone, Copy)]
pub struct OwnerFacts<'a> {
    /// Wanted records (normalized texts).
    pub wanted: &'a BTreeSet<String>,
    /// Records this host added there (normalized texts).
    pub owned: &'a BTreeSet<String>,
    /// What the server holds now, whoever wrote it (normalized texts).
    pub present: &'a BTreeSet<String>,
    /// The served certificate was verified on every address of every host
    /// × port against a wanted record.
    pub verified: bool,
}

/// The edits for one owner name, in the order to make them: `remove`
/// first (only when verified, making room), then `add` one by one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edits {
    /// Owned, present, no longer wanted, and the service verified.
    pub remove: Vec<String>,
    /// Wanted and missing, within [`MAX_RECORDS`].
    pub add: Vec<String>,
    /// Owned entries to drop from the ledger at once: neither present nor
    /// wanted.
    pub forget: Vec<String>,
    /// Wanted and missing, but the name is full.
    pub no_room: Vec<String>,
    /// Owned, present, no longer wanted, waiting for the service to be
    /// verified with a wanted record.
    pub retiring: Vec<String>,
}

/// The edits that bring one owner name towards its wanted records (see
/// the module doc for the rules).
pub fn edits(f: &OwnerFacts<'_>) -> Edits {
    let mut e = Edits::default();
    for r in f.owned.difference(f.wanted) {
        if !f.present.contains(r) {
            e.forget.push(r.clone());
        } else if f.verified {
            e.remove.push(r.clone());
        } else {
            e.retiring.push(r.clone());
        }
    }
    let mut held = f.present.len() - e.remove.len();
    for r in f.wanted.difference(f.present) {
        if held < MAX_RECORDS {
            e.add.push(r.clone());
            held += 1;
        } else {
            e.no_room.push(r.clone());
        }
    }
    e
}

/// The records a served key may match for this host's unwanted records
/// at one owner name to retire: the wanted ones and those other hosts
/// published there (present, not owned). Under a name several hosts
/// serve, each with its own key, another host's address serves that
/// host's key: it must not hold this host's old record back forever. An
/// address still serving a key only an owned, unwanted record matches
/// does hold it back.
pub fn in_service_records(
    wanted: &BTreeSet<String>,
    owned: &BTreeSet<String>,
    present: &BTreeSet<String>,
) -> BTreeSet<String> {
    let others = present.difference(owned).cloned();
    wanted.iter().cloned().chain(others).collect()
}

/// When the DANE pass should run again: every `poll` seconds while a
/// wanted record is not yet seen everywhere; else when the next record
/// becomes aged (the earliest of `aged_at` after `now`); else never (the
/// daemon runs it again after each install and on its resync).
pub fn next_wake(
    unseen: bool,
    aged_at: impl IntoIterator<Item = i64>,
    now: i64,
    poll: i64,
) -> Option<i64> {
    if unseen {
        return Some(now.saturating_add(poll.max(1)));
    }
    aged_at.into_iter().filter(|&t| t > now).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testing::{Alg, Ca};

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }

    #[test]
    fn another_hosts_present_record_counts_as_in_service_and_this_hosts_old_one_never_does() {
        // (what, wanted, owned, present, in service)
        type Row<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let rows: &[Row<'_>] = &[
            (
                "alone",
                &["new"],
                &["old", "new"],
                &["old", "new"],
                &["new"],
            ),
            (
                "another host's key under the same name",
                &["new"],
                &["old", "new"],
                &["old", "new", "theirs"],
                &["new", "theirs"],
            ),
            (
                "the other host's record is not yet in DNS: not trusted",
                &["new"],
                &["old"],
                &["old"],
                &["new"],
            ),
            (
                "nothing wanted yet",
                &[],
                &["old"],
                &["old", "theirs"],
                &["theirs"],
            ),
        ];
        for &(what, wanted, owned, present, want) in rows {
            let got = in_service_records(&set(wanted), &set(owned), &set(present));
            assert_eq!(got, set(want), "{what}");
            for r in owned.iter().filter(|r| !wanted.contains(r)) {
                assert!(
                    !got.contains(*r),
                    "{what}: own retiring record {r} accepted"
                );
            }
        }
    }

    #[test]
    fn edits_add_missing_records_remove_only_owned_unwanted_ones_after_verification_and_never_touch_others()
     {
        // (what, wanted, owned, present, verified, add, remove, forget, retiring, no_room)
        type Row<'a> = (
            &'a str,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            bool,
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
        );
        let rows: &[Row<'_>] = &[
            (
                "first publication",
                &["A"],
                &[],
                &[],
                false,
                &["A"],
                &[],
                &[],
                &[],
                &[],
            ),
            (
                "already there",
                &["A"],
                &["A"],
                &["A"],
                true,
                &[],
                &[],
                &[],
                &[],
                &[],
            ),
            (
                "a next key is added beside the current one",
                &["A", "B"],
                &["A"],
                &["A"],
                false,
                &["B"],
                &[],
                &[],
                &[],
                &[],
            ),
            (
                "an old record waits for the new key to be verified in service",
                &["B"],
                &["A", "B"],
                &["A", "B"],
                false,
                &[],
                &[],
                &[],
                &["A"],
                &[],
            ),
            (
                "then it is removed",
                &["B"],
                &["A", "B"],
                &["A", "B"],
                true,
                &[],
                &["A"],
                &[],
                &[],
                &[],
            ),
            (
                "another host's record is never removed, verified or not",
                &["B"],
                &["B"],
                &["X", "B"],
                true,
                &[],
                &[],
                &[],
                &[],
                &[],
            ),
            (
                "a record present but not owned (another host's, same key) is not re-added",
                &["X"],
                &[],
                &["X"],
                true,
                &[],
                &[],
                &[],
                &[],
                &[],
            ),
            (
                "an owned record never written (crash before the add) is added when wanted",
                &["A"],
                &["A"],
                &[],
                false,
                &["A"],
                &[],
                &[],
                &[],
                &[],
            ),
            (
                "and forgotten when no longer wanted",
                &["B"],
                &["A", "B"],
                &["B"],
                false,
                &[],
                &[],
                &["A"],
                &[],
                &[],
            ),
            (
                "a full name takes nothing more",
                &["N"],
                &[],
                &["1", "2", "3", "4", "5", "6", "7", "8"],
                true,
                &[],
                &[],
                &[],
                &[],
                &["N"],
            ),
            (
                "one slot left: the first missing record only",
                &["M", "N"],
                &[],
                &["1", "2", "3", "4", "5", "6", "7"],
                true,
                &["M"],
                &[],
                &[],
                &[],
                &["N"],
            ),
            (
                "a verified removal makes room first",
                &["N"],
                &["8"],
                &["1", "2", "3", "4", "5", "6", "7", "8"],
                true,
                &["N"],
                &["8"],
                &[],
                &[],
                &[],
            ),
            (
                "an unverified one does not",
                &["N"],
                &["8"],
                &["1", "2", "3", "4", "5", "6", "7", "8"],
                false,
                &[],
                &[],
                &[],
                &["8"],
                &["N"],
            ),
        ];
        for &(what, wanted, owned, present, verified, add, remove, forget, retiring, no_room) in
            rows
        {
            let (wanted, owned, present) = (set(wanted), set(owned), set(present));
            let e = edits(&OwnerFacts {
                wanted: &wanted,
                owned: &owned,
                present: &present,
                verified,
            });
            assert_eq!(strs(&e.add), add, "{what}: add");
            assert_eq!(strs(&e.remove), remove, "{what}: remove");
            assert_eq!(strs(&e.forget), forget, "{what}: forget");
            assert_eq!(strs(&e.retiring), retiring, "{what}: retiring");
            assert_eq!(strs(&e.no_room), no_room, "{what}: no room");
            for r in &e.remove {
                assert!(owned.contains(r), "{what}: removes {r}, not owned");
            }
        }
    }

    const NOT_BEFORE: i64 = 1_700_000_000;
    const NOT_AFTER: i64 = 1_900_000_000;

    fn chain() -> Vec<CertificateDer<'static>> {
        Ca::new()
            .issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER)
            .certs
    }

    /// The SubjectPublicKeyInfo DER of a chain's leaf: what
    /// `acme::standby_spki` gives for a key.
    fn spki_of(chain: &[CertificateDer<'_>]) -> Vec<u8> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).unwrap();
        leaf.public_key().raw.to_vec()
    }

    #[test]
    fn wanted_holds_the_installed_the_candidate_and_the_standby_records_of_each_configured_spec() {
        let installed = chain();
        let candidate = chain();
        let standby_spki = spki_of(&chain());
        let keys = Keys {
            installed: &[&installed],
            candidates: &[&candidate],
            standby_spki: &[&standby_spki],
        };
        let ee = |c: &[CertificateDer<'_>]| Spec::EE.build(c).unwrap();
        let ta = |c: &[CertificateDer<'_>]| Spec::TA.build(c).unwrap();

        let (only_ee, problems) = wanted(&[Spec::EE], &keys);
        assert!(problems.is_empty(), "{problems:?}");
        let expect: BTreeSet<Tlsa> = [ee(&installed), ee(&candidate), ee_of_spki(&standby_spki)]
            .into_iter()
            .collect();
        assert_eq!(only_ee, expect);
        // The standby record is the one of the key, as a certificate made
        // with that key would carry.
        assert_eq!(
            ee_of_spki(&spki_of(&installed)),
            ee(&installed),
            "3 1 1 of a key equals 3 1 1 of its certificate"
        );

        let (both, problems) = wanted(&[Spec::EE, Spec::TA], &keys);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(both.contains(&ta(&installed)) && both.contains(&ta(&candidate)));
        assert_eq!(both.len(), 5, "3 × 3 1 1 + 2 × 2 1 1: {both:?}");

        // 2 1 1 alone: no standby record (a key has no issuer yet).
        let (only_ta, _) = wanted(&[Spec::TA], &keys);
        assert_eq!(only_ta.len(), 2, "{only_ta:?}");

        // Same key (a renewal that reused it): one record.
        let (same, _) = wanted(
            &[Spec::EE],
            &Keys {
                installed: &[&installed],
                candidates: &[&installed],
                standby_spki: &[],
            },
        );
        assert_eq!(same.len(), 1);

        // A chain without its issuer cannot give 2 1 1: said, not fatal.
        let leaf_only = &installed[..1];
        let (partial, problems) = wanted(
            &[Spec::EE, Spec::TA],
            &Keys {
                installed: &[leaf_only],
                ..Keys::default()
            },
        );
        assert_eq!(partial.len(), 1);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("2 1 1 for the installed certificate"),
            "{problems:?}"
        );
    }

    #[test]
    fn presentation_forms_from_dig_and_from_mxkeys_normalize_alike() {
        let hex = "AB".repeat(32);
        let split = format!("3 1 1 {} {}", &hex[..32], &hex[32..]);
        assert_eq!(normalize(&split), format!("3 1 1 {}", "ab".repeat(32)));
        assert_eq!(normalize("  0  0 1  abcd "), "0 0 1 abcd");
    }

    #[test]
    fn the_pass_polls_while_a_record_is_unseen_then_wakes_when_the_next_one_ages() {
        // (what, unseen, aged_at, expected)
        let rows: &[(&str, bool, &[i64], Option<i64>)] = &[
            ("unseen: poll", true, &[5_000], Some(1_002)),
            ("aged later", false, &[5_000, 3_000], Some(3_000)),
            ("already aged", false, &[900, 1_000], None),
            ("nothing wanted", false, &[], None),
        ];
        for &(what, unseen, aged, expect) in rows {
            assert_eq!(
                next_wake(unseen, aged.iter().copied(), 1_000, 2),
                expect,
                "{what}"
            );
        }
    }
}
