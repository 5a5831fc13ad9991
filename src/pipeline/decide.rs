//! Deciding what every target slot gets. This module is pure: no I/O, no
//! clock. [`super::plan`] gathers the [`Facts`] first (the candidates every
//! source offers, what each slot's files hold, the state's record of
//! rolled-back certificates, and "now"); [`decide`] turns them into one
//! [`SlotDecision`] per slot, and the same facts always give the same
//! decision.
//!
//! The rules, in order: selection picks the best valid candidate
//! ([`select::select`]); a valid installed certificate from a CA is never
//! traded for the self-signed fallback or for nothing; with nothing valid
//! the slot is unserved and its files stay; a certificate a service refused
//! (recorded in state) is deferred until its backoff has passed.
//!
//! Then the DANE gate (issue 14), for a slot of a target with
//! `[target.dane]`: when something is installed and the chosen certificate
//! would change one of the configured records (`3 1 1`: another key;
//! `2 1 1`: another issuer key), [`gate::decide`] says whether the new
//! records have been seen and aged long enough. Open: install. Wait: the
//! installed certificate stays ([`Action::Held`], not a failure). Shut but
//! the installed certificate expires within `dane_hold_max`: install
//! anyway, with an error ([`Gate::Forced`]). A renewal that keeps every
//! configured record (same key, same issuer key) never waits, nor does a
//! slot with nothing installed.

use std::collections::{BTreeMap, HashSet};

use rustls_pki_types::CertificateDer;

use crate::cert::{self, Bundle, KeyTypeFilter, Leaf, Timeliness};
use crate::dane::gate;
use crate::dane::tlsa::{Spec, Tlsa};
use crate::names::{self, DnsName};
use crate::select::{self, Selection};
use crate::source::{Candidate, Origin};
use crate::state::Failure;

use super::{Action, DaneForced, DaneHold, Deferred, Gate, Served, TargetReport, Unserved};

/// Everything a decision depends on, gathered before deciding.
#[derive(Debug)]
pub struct Facts<'c> {
    /// Every candidate the sources offer, in source order.
    pub candidates: &'c [Candidate],
    /// Every slot of every target, in configuration order.
    pub slots: Vec<SlotFacts<'c>>,
    /// The time to judge validity at.
    pub now: i64,
}

/// What one slot wants and what its files hold.
#[derive(Debug)]
pub struct SlotFacts<'c> {
    /// The slot's name: `dovecot`, or `dovecot/rsa` in a dual target.
    pub name: String,
    /// Position of the target in the configuration, and of the slot in it.
    pub target: usize,
    pub slot: usize,
    pub domains: &'c [DnsName],
    pub key_type: KeyTypeFilter,
    /// What the slot's files hold, when they hold a readable certificate
    /// and key (`None` when missing or unreadable).
    pub installed: Option<Bundle>,
    /// The certificate last rolled back on this slot, from the state.
    pub failure: Option<&'c Failure>,
    /// For a slot of a DANE target: what its gate decides from.
    pub dane: Option<DaneFacts>,
}

/// What the DANE gate of one slot decides from: the target's
/// `[target.dane]` and what the DANE pass recorded in the ledger about the
/// target's owner names (`_PORT._tcp.HOST`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaneFacts {
    /// The configured usages (`records`).
    pub records: Vec<Spec>,
    /// Record (`3 1 1 <hex>`, as [`Tlsa`] renders it) → since when it has
    /// been seen, DNSSEC-signed, on every authoritative server of every
    /// owner name. A record missing at one owner is not here.
    pub seen: BTreeMap<String, i64>,
    /// TTL of the TLSA RRsets before and after the edit (the larger over
    /// the owners).
    pub old_ttl: u32,
    pub new_ttl: u32,
    /// Whether every owner's TLSA RRset existed before mxkeys added to it.
    pub rrset_existed: bool,
    /// The zone's negative-caching TTL.
    pub negative_ttl: u32,
    /// `dane_hold_max`, in seconds.
    pub hold_max: i64,
}

/// The decision for one slot.
#[derive(Debug)]
pub struct SlotDecision {
    pub report: TargetReport,
    /// The bundle to write into the slot's files, if any.
    pub install: Option<Bundle>,
    /// The chain the slot would install: the chosen certificate's, also
    /// when the gate holds it or a backoff defers it (the DANE pass
    /// publishes its records).
    pub candidate: Option<Vec<CertificateDer<'static>>>,
}

/// A candidate whose material is broken (undecodable, key mismatch, bad
/// chain): an error of its source, reported once however many slots
/// refused it.
#[derive(Debug)]
pub struct Broken {
    pub origin: Origin,
    pub refusal: select::Refusal,
}

/// The decision for every slot, and the broken candidates met on the way.
#[derive(Debug, Default)]
pub struct Decision {
    pub broken: Vec<Broken>,
    pub slots: Vec<SlotDecision>,
}

/// Decides every slot (pure).
pub fn decide(facts: Facts<'_>) -> Decision {
    let mut decision = Decision::default();
    let mut broken_seen: HashSet<(usize, usize)> = HashSet::new();
    for slot in facts.slots {
        let selection = select::select(slot.domains, slot.key_type, facts.candidates, facts.now);
        for (c, why) in &selection.refused {
            if let select::Refusal::Broken(e) = why
                && broken_seen.insert((c.origin.source_index, c.origin.entry_index))
            {
                decision.broken.push(Broken {
                    origin: c.origin.clone(),
                    refusal: select::Refusal::Broken(e.clone()),
                });
            }
        }
        decision.slots.push(decide_slot(slot, selection, facts.now));
    }
    decision
}

/// How many certificates for other names an unserved target's error lists.
const UNRELATED_LISTED: usize = 20;

fn decide_slot(facts: SlotFacts<'_>, selection: Selection<'_>, now: i64) -> SlotDecision {
    let mut refused = selection
        .refused
        .iter()
        .map(|(c, why)| (c.origin.to_string(), why.to_string()))
        .collect::<Vec<_>>();
    if selection.chosen.is_none() {
        // Nothing is valid: say what every certificate for other names was.
        for c in selection.unrelated.iter().take(UNRELATED_LISTED) {
            let why = select::Refusal::DoesNotCover {
                missing: facts.domains.to_vec(),
            };
            let names = if c.leaf.names.is_empty() {
                "no DNS names".to_owned()
            } else {
                c.leaf.names.join(", ")
            };
            refused.push((c.origin.to_string(), format!("{why} (it is for {names})")));
        }
        if selection.unrelated.len() > UNRELATED_LISTED {
            refused.push((
                format!("{} more", selection.unrelated.len() - UNRELATED_LISTED),
                "certificates for other names".to_owned(),
            ));
        }
    }
    let mut report = TargetReport {
        name: facts.name.clone(),
        target: facts.target,
        slot: facts.slot,
        served: None,
        action: Action::UpToDate,
        refused,
        unrelated: selection.unrelated.len(),
        gate: facts.dane.as_ref().map(|_| Gate::Clear),
    };

    let chosen = selection.chosen;
    // Never trade a good installed certificate for the self-signed fallback
    // (or for nothing): a source that is broken for a moment must not
    // downgrade a working server.
    if chosen.as_ref().is_none_or(|c| c.candidate.fallback)
        && let Some((leaf, bundle)) = valid_installed(&facts, now)
    {
        let is_same = chosen
            .as_ref()
            .is_some_and(|c| c.bundle.leaf_der() == bundle.leaf_der());
        if !is_same {
            report.served = Some(served(&leaf, bundle, "installed".to_owned(), false));
            report.action = Action::KeptInstalled;
            return SlotDecision {
                report,
                install: None,
                candidate: None,
            };
        }
    }

    let Some(chosen) = chosen else {
        report.action = Action::Unserved(Unserved {
            domains: facts.domains.to_vec(),
            refused: report.refused.len() - report.unrelated.min(UNRELATED_LISTED)
                + report.unrelated,
            unrelated: report.unrelated,
        });
        return SlotDecision {
            report,
            install: None,
            candidate: None,
        };
    };
    let c = chosen.candidate;
    report.served = Some(served(
        &c.leaf,
        &chosen.bundle,
        c.origin.to_string(),
        c.fallback,
    ));
    let mut decided = SlotDecision {
        report,
        candidate: Some(chosen.bundle.certs.clone()),
        install: Some(chosen.bundle),
    };
    defer_if_rolled_back(&mut decided, facts.failure, now);
    hold_at_dane_gate(&mut decided, &facts, &c.origin, now);
    decided
}

/// The DANE gate (see the module doc): holds, or forces with an error, an
/// install that would change a configured TLSA record before the new
/// record is seen and aged.
fn hold_at_dane_gate(decided: &mut SlotDecision, facts: &SlotFacts<'_>, origin: &Origin, now: i64) {
    let Some(dane) = &facts.dane else { return };
    let (Some(new), Some((current, installed))) = (&decided.install, serving_installed(facts))
    else {
        return;
    };
    if new.leaf_der() == installed.leaf_der() {
        return;
    }
    // The records the install would change, with since when each is seen.
    // A record that cannot be built for the new chain while the installed
    // chain has one (a 2 1 1 with no issuer in the new chain) can never be
    // seen: it waits, and is forced at the end. A usage neither chain can
    // build changes nothing.
    let mut changed: Vec<(gate::Seen, Option<Tlsa>)> = Vec::new();
    for spec in &dane.records {
        let wanted = spec.build_for(new).ok();
        if wanted == spec.build_for(installed).ok() {
            continue;
        }
        let since = wanted.and_then(|r| dane.seen.get(&r.to_string()).copied());
        changed.push((gate::Seen { spec: *spec, since }, wanted));
    }
    if changed.is_empty() {
        return;
    }
    let seen: Vec<gate::Seen> = changed.iter().map(|(s, _)| *s).collect();
    let inputs = gate::Inputs {
        seen: &seen,
        old_ttl: dane.old_ttl,
        new_ttl: dane.new_ttl,
        rrset_existed: dane.rrset_existed,
        negative_ttl: dane.negative_ttl,
        current_not_after: current.validity.not_after,
        hold_max: dane.hold_max,
        now,
    };
    let record_of = |spec: Spec| {
        changed
            .iter()
            .find(|(s, _)| s.spec == spec)
            .and_then(|(_, r)| *r)
    };
    let r = &mut decided.report;
    let Some(sha256) = r.served.as_ref().map(|s| s.sha256.clone()) else {
        return;
    };
    match gate::decide(&inputs) {
        gate::Decision::Open => r.gate = Some(Gate::Open),
        gate::Decision::ForceInstall { reason } => {
            r.gate = Some(Gate::Forced(DaneForced {
                sha256,
                record: record_of(spec_of(reason.waiting)),
                reason,
            }));
        }
        gate::Decision::Wait { until, reason } => {
            r.action = Action::Held(DaneHold {
                sha256,
                origin: origin.clone(),
                record: record_of(spec_of(reason)),
                until,
                reason,
                hint: None,
            });
            r.served = Some(served(&current, installed, "installed".to_owned(), false));
            r.gate = Some(Gate::Held);
            decided.install = None;
        }
    }
}

fn spec_of(reason: gate::WaitReason) -> Spec {
    match reason {
        gate::WaitReason::NotSeen { spec } | gate::WaitReason::NotAged { spec, .. } => spec,
    }
}

/// The installed certificate, when it serves the slot's names with its
/// key, whatever its dates (an expired one is replaced at once by the
/// gate's `dane_hold_max` rule) and whoever issued it (DANE-EE trusts a
/// self-signed one too).
fn serving_installed<'f>(facts: &'f SlotFacts<'_>) -> Option<(Leaf, &'f Bundle)> {
    let bundle = facts.installed.as_ref()?;
    let leaf = Leaf::parse(bundle.leaf_der()).ok()?;
    let ok = facts.key_type.accepts(leaf.key_type)
        && names::cover_all(&leaf.names, facts.domains).is_ok()
        && bundle.verify().is_ok();
    ok.then_some((leaf, bundle))
}

/// A certificate that a service refused is not tried again before its
/// backoff has passed.
fn defer_if_rolled_back(decided: &mut SlotDecision, failure: Option<&Failure>, now: i64) {
    let r = &mut decided.report;
    let (Some(served), Some(failure)) = (&r.served, failure) else {
        return;
    };
    if decided.install.is_none() || served.sha256 != failure.sha256 || now >= failure.retry_at {
        return;
    }
    r.action = Action::Deferred(Deferred {
        sha256: failure.sha256.clone(),
        reason: failure.reason.clone(),
        retry_at: failure.retry_at,
    });
    decided.install = None;
}

fn served(leaf: &Leaf, bundle: &Bundle, origin: String, fallback: bool) -> Served {
    Served {
        sha256: cert::fingerprint(bundle.leaf_der()),
        names: leaf.names.clone(),
        key_type: leaf.key_type,
        not_before: leaf.validity.not_before,
        not_after: leaf.validity.not_after,
        origin,
        fallback,
        leaf: bundle.leaf_der().to_vec(),
    }
}

/// The installed certificate, if it is from a CA and still fully valid for
/// the slot (names, dates, key type, key match, chain).
fn valid_installed<'f>(facts: &'f SlotFacts<'_>, now: i64) -> Option<(Leaf, &'f Bundle)> {
    let bundle = facts.installed.as_ref()?;
    let leaf = Leaf::parse(bundle.leaf_der()).ok()?;
    let ok = !leaf.self_issued
        && leaf.validity.at(now) == Timeliness::Valid
        && facts.key_type.accepts(leaf.key_type)
        && names::cover_all(&leaf.names, facts.domains).is_ok()
        && bundle.verify().is_ok();
    ok.then_some((leaf, bundle))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::source::testing::{self, Alg, Ca, Issued};

    const DAY: i64 = 86_400;
    /// A fixed "now" (2026-01-01T00:00:00Z): the fake clock.
    const NOW: i64 = 1_767_225_600;
    const NAMES: [&str; 2] = ["mx.example", "imap.example"];

    /// Every certificate a case can name, made once.
    fn world() -> HashMap<&'static str, Issued> {
        let ca = Ca::new();
        let both = &NAMES[..];
        let ecdsa = |nb, na| ca.issue(both, Alg::Ecdsa, nb, na);
        let mut w = HashMap::new();
        w.insert("good", ecdsa(NOW - 10 * DAY, NOW + 80 * DAY));
        w.insert("later", ecdsa(NOW - DAY, NOW + 89 * DAY));
        w.insert("earlier", ecdsa(NOW - 60 * DAY, NOW + 30 * DAY));
        w.insert("expiring", ecdsa(NOW - 85 * DAY, NOW + 5 * DAY));
        w.insert("expired", ecdsa(NOW - 100 * DAY, NOW - 10 * DAY));
        w.insert("future", ecdsa(NOW + DAY, NOW + 91 * DAY));
        w.insert(
            "wildcard",
            ca.issue(&["*.example"], Alg::Ecdsa, NOW - 10 * DAY, NOW + 80 * DAY),
        );
        w.insert(
            "partial",
            ca.issue(&["mx.example"], Alg::Ecdsa, NOW - DAY, NOW + 89 * DAY),
        );
        w.insert(
            "unrelated",
            ca.issue(&["other.test"], Alg::Ecdsa, NOW - DAY, NOW + 89 * DAY),
        );
        w.insert("rsa", ca.issue(both, Alg::Rsa, NOW - DAY, NOW + 70 * DAY));
        let stranger = ecdsa(NOW - DAY, NOW + 89 * DAY);
        let mismatched = w["later"].with_key_of(&stranger);
        w.insert("mismatched", mismatched);
        w.insert(
            "self-signed",
            testing::self_signed(both, Alg::Ecdsa, NOW - DAY, NOW + 365 * DAY),
        );
        w.insert(
            "fallback",
            testing::self_signed(both, Alg::Ecdsa, NOW - DAY, NOW + 365 * DAY),
        );
        w
    }

    /// The expected action: install a candidate (by entry name), keep the
    /// installed certificate, leave the slot unserved, or defer.
    #[derive(Debug, PartialEq)]
    enum Want {
        Install(&'static str),
        Keep,
        Unserved,
        Deferred,
    }
    use Want::*;

    struct Case {
        what: &'static str,
        key_type: KeyTypeFilter,
        candidates: &'static [&'static str],
        installed: Option<&'static str>,
        /// A rollback recorded for this certificate, retried at NOW + this.
        rolled_back: Option<(&'static str, i64)>,
        want: Want,
    }

    const fn case(
        what: &'static str,
        candidates: &'static [&'static str],
        installed: Option<&'static str>,
        want: Want,
    ) -> Case {
        Case {
            what,
            key_type: KeyTypeFilter::Any,
            candidates,
            installed,
            rolled_back: None,
            want,
        }
    }

    fn cases() -> Vec<Case> {
        vec![
            case(
                "nothing installed, one valid candidate",
                &["good"],
                None,
                Install("good"),
            ),
            case(
                "the installed certificate is the candidate",
                &["good"],
                Some("good"),
                Install("good"),
            ),
            case(
                "a better candidate replaces the installed one",
                &["later"],
                Some("good"),
                Install("later"),
            ),
            case(
                "a worse but valid candidate still replaces it: sources decide",
                &["earlier"],
                Some("good"),
                Install("earlier"),
            ),
            case(
                "the latest notAfter wins",
                &["earlier", "later", "good"],
                None,
                Install("later"),
            ),
            case(
                "a wildcard covers both names",
                &["wildcard"],
                None,
                Install("wildcard"),
            ),
            case(
                "exact names beat a wildcard with the same notAfter",
                &["wildcard", "good"],
                None,
                Install("good"),
            ),
            case(
                "an expiring installed one stays when no source offers anything",
                &[],
                Some("expiring"),
                Keep,
            ),
            case(
                "a valid installed one stays when every candidate expired",
                &["expired"],
                Some("good"),
                Keep,
            ),
            case(
                "a valid installed one is not traded for the fallback",
                &["fallback"],
                Some("good"),
                Keep,
            ),
            case(
                "an expired installed one gives way to the fallback",
                &["fallback"],
                Some("expired"),
                Install("fallback"),
            ),
            case(
                "the fallback serves an empty slot",
                &["fallback"],
                None,
                Install("fallback"),
            ),
            case(
                "a CA candidate beats the fallback",
                &["fallback", "earlier"],
                None,
                Install("earlier"),
            ),
            case(
                "expired installed, nothing offered: unserved",
                &[],
                Some("expired"),
                Unserved,
            ),
            case(
                "nothing installed, nothing offered: unserved",
                &[],
                None,
                Unserved,
            ),
            case(
                "an installed pair whose key does not match is not kept",
                &[],
                Some("mismatched"),
                Unserved,
            ),
            case(
                "an installed self-signed certificate is not kept",
                &[],
                Some("self-signed"),
                Unserved,
            ),
            case(
                "an installed one missing a name is not kept",
                &[],
                Some("partial"),
                Unserved,
            ),
            case(
                "only expired candidates: unserved",
                &["expired"],
                None,
                Unserved,
            ),
            case(
                "only a not-yet-valid candidate: unserved",
                &["future"],
                None,
                Unserved,
            ),
            case(
                "a candidate missing a name is refused",
                &["partial"],
                None,
                Unserved,
            ),
            case(
                "certificates for other names only: unserved",
                &["unrelated"],
                None,
                Unserved,
            ),
            case(
                "a key mismatch is refused; the next best serves",
                &["mismatched", "good"],
                None,
                Install("good"),
            ),
            case(
                "a key mismatch alone leaves the installed one",
                &["mismatched"],
                Some("earlier"),
                Keep,
            ),
            Case {
                key_type: KeyTypeFilter::Rsa,
                ..case(
                    "an RSA slot takes the RSA candidate",
                    &["later", "rsa"],
                    None,
                    Install("rsa"),
                )
            },
            Case {
                key_type: KeyTypeFilter::Ecdsa,
                ..case(
                    "an ECDSA slot takes the ECDSA candidate",
                    &["rsa", "good"],
                    None,
                    Install("good"),
                )
            },
            Case {
                key_type: KeyTypeFilter::Rsa,
                ..case(
                    "an RSA slot refuses ECDSA candidates",
                    &["good"],
                    None,
                    Unserved,
                )
            },
            Case {
                key_type: KeyTypeFilter::Rsa,
                ..case(
                    "an RSA slot does not keep an installed ECDSA one",
                    &["expired"],
                    Some("good"),
                    Unserved,
                )
            },
            Case {
                rolled_back: Some(("later", DAY)),
                ..case(
                    "a rolled-back certificate waits for its backoff",
                    &["later"],
                    Some("good"),
                    Deferred,
                )
            },
            Case {
                rolled_back: Some(("later", 0)),
                ..case(
                    "a rolled-back certificate is retried once the backoff passed",
                    &["later"],
                    Some("good"),
                    Install("later"),
                )
            },
            Case {
                rolled_back: Some(("good", DAY)),
                ..case(
                    "a rollback of another certificate defers nothing",
                    &["later"],
                    Some("good"),
                    Install("later"),
                )
            },
        ]
    }

    fn failure(world: &HashMap<&str, Issued>, name: &str, retry_in: i64) -> Failure {
        Failure {
            sha256: cert::fingerprint(world[name].certs[0].as_ref()),
            attempts: 1,
            retry_at: NOW + retry_in,
            reason: "reload `true` failed: exit 1".to_owned(),
        }
    }

    fn domains() -> Vec<DnsName> {
        NAMES.iter().map(|n| DnsName::parse(n).unwrap()).collect()
    }

    fn outcome(d: &SlotDecision) -> Want {
        match (&d.report.action, &d.install, &d.report.served) {
            (Action::UpToDate, Some(_), Some(s)) => {
                let entry = s.origin.rsplit(": ").next().unwrap();
                Install(
                    ["good", "later", "earlier", "wildcard", "fallback", "rsa"]
                        .into_iter()
                        .find(|e| *e == entry)
                        .unwrap_or("?"),
                )
            }
            (Action::KeptInstalled, None, Some(s)) if s.origin == "installed" => Keep,
            (Action::Unserved(_), None, None) => Unserved,
            (Action::Deferred(_), None, Some(_)) => Deferred,
            other => panic!("unexpected decision {other:?}"),
        }
    }

    #[test]
    fn each_slot_gets_what_the_policy_table_says() {
        let world = world();
        let domains = domains();
        for c in cases() {
            let candidates: Vec<Candidate> = c
                .candidates
                .iter()
                .enumerate()
                .map(|(i, name)| world[name].candidate(0, name, i, *name == "fallback"))
                .collect();
            let failure = c.rolled_back.map(|(name, at)| failure(&world, name, at));
            let facts = Facts {
                candidates: &candidates,
                slots: vec![SlotFacts {
                    name: "mail".to_owned(),
                    target: 0,
                    slot: 0,
                    domains: &domains,
                    key_type: c.key_type,
                    installed: c.installed.map(|name| world[name].bundle()),
                    failure: failure.as_ref(),
                    dane: None,
                }],
                now: NOW,
            };
            let decision = decide(facts);
            assert_eq!(outcome(&decision.slots[0]), c.want, "{}", c.what);
        }
    }

    #[test]
    fn a_dual_target_serves_each_slot_its_own_key_type() {
        let world = world();
        let domains = domains();
        let candidates: Vec<Candidate> = ["good", "rsa"]
            .iter()
            .enumerate()
            .map(|(i, name)| world[name].candidate(0, name, i, false))
            .collect();
        let slot = |si: usize, key_type| SlotFacts {
            name: format!("mail/{key_type:?}"),
            target: 0,
            slot: si,
            domains: &domains,
            key_type,
            installed: None,
            failure: None,
            dane: None,
        };
        let decision = decide(Facts {
            candidates: &candidates,
            slots: vec![slot(0, KeyTypeFilter::Rsa), slot(1, KeyTypeFilter::Ecdsa)],
            now: NOW,
        });
        let got: Vec<Want> = decision.slots.iter().map(outcome).collect();
        assert_eq!(got, [Install("rsa"), Install("good")]);
        assert_eq!(decision.slots[1].report.slot, 1);
    }

    #[test]
    fn a_broken_candidate_is_one_source_error_however_many_slots_refuse_it() {
        let world = world();
        let domains = domains();
        let candidates = vec![world["mismatched"].candidate(0, "mismatched", 0, false)];
        let slot = |si| SlotFacts {
            name: format!("mail{si}"),
            target: si,
            slot: 0,
            domains: &domains,
            key_type: KeyTypeFilter::Any,
            installed: None,
            failure: None,
            dane: None,
        };
        let decision = decide(Facts {
            candidates: &candidates,
            slots: vec![slot(0), slot(1)],
            now: NOW,
        });
        assert_eq!(decision.broken.len(), 1);
        assert_eq!(decision.broken[0].origin.entry, "mismatched");
        assert!(decision.slots.iter().all(|s| s.report.refused.len() == 1));
    }

    #[test]
    fn an_unserved_slot_says_what_each_certificate_for_other_names_was() {
        let world = world();
        let domains = domains();
        let candidates = vec![world["unrelated"].candidate(0, "unrelated", 0, false)];
        let decision = decide(Facts {
            candidates: &candidates,
            slots: vec![SlotFacts {
                name: "mail".to_owned(),
                target: 0,
                slot: 0,
                domains: &domains,
                key_type: KeyTypeFilter::Any,
                installed: None,
                failure: None,
                dane: None,
            }],
            now: NOW,
        });
        let r = &decision.slots[0].report;
        assert_eq!(
            r.refused,
            [(
                "src0: unrelated".to_owned(),
                "does not cover mx.example, imap.example (it is for other.test)".to_owned()
            )]
        );
        let Action::Unserved(why) = &r.action else {
            panic!("{:?}", r.action)
        };
        assert_eq!(
            why.to_string(),
            "no valid certificate for mx.example, imap.example (1 candidates refused, 1 of them for other names); its files stay as they are"
        );
    }

    /// The certificates of the DANE gate table: the installed one and
    /// what a source may bring next.
    struct GateWorld {
        /// Installed: 30 days left (a normal renewal point).
        current: Issued,
        /// Installed: 5 days left (within `dane_hold_max`).
        expiring: Issued,
        /// Installed: expired yesterday.
        expired: Issued,
        /// Renewal with the current key, same CA.
        same_key: Issued,
        /// Renewal with a new key, same CA.
        new_key: Issued,
        /// Renewal with the current key from another CA (another issuer
        /// key: a new `2 1 1`).
        other_ca: Issued,
    }

    fn gate_world() -> GateWorld {
        let ca = Ca::new();
        let other = Ca::new();
        let current = ca.issue(&NAMES, Alg::Ecdsa, NOW - 60 * DAY, NOW + 30 * DAY);
        GateWorld {
            expiring: ca.reissue(&current, &NAMES, NOW - 85 * DAY, NOW + 5 * DAY),
            expired: ca.reissue(&current, &NAMES, NOW - 100 * DAY, NOW - DAY),
            same_key: ca.reissue(&current, &NAMES, NOW - DAY, NOW + 89 * DAY),
            new_key: ca.issue(&NAMES, Alg::Ecdsa, NOW - DAY, NOW + 89 * DAY),
            other_ca: other.reissue(&current, &NAMES, NOW - DAY, NOW + 89 * DAY),
            current,
        }
    }

    /// What the gate table expects of a slot.
    #[derive(Debug, PartialEq)]
    enum GateWant {
        /// Installed; the gate says this.
        Installs(Gate),
        /// Installed with an error.
        Forced,
        /// Held, opening at NOW + this (`None`: record not seen).
        HeldUntil(Option<i64>),
    }

    struct GateCase {
        what: &'static str,
        installed: Option<fn(&GateWorld) -> &Issued>,
        candidate: fn(&GateWorld) -> &Issued,
        records: &'static [Spec],
        /// For each usage of the candidate's records: seen since NOW - this.
        seen: &'static [(Spec, i64)],
        /// (old TTL, new TTL, RRset existed, negative TTL)
        ttls: (u32, u32, bool, u32),
        want: GateWant,
    }

    const EE: &[Spec] = &[Spec::EE];
    const BOTH: &[Spec] = &[Spec::EE, Spec::TA];
    const TA: &[Spec] = &[Spec::TA];
    const TTL_300: (u32, u32, bool, u32) = (300, 300, true, 900);

    fn gate_cases() -> Vec<GateCase> {
        use GateWant::*;
        let base = GateCase {
            what: "",
            installed: Some(|w| &w.current),
            candidate: |w| &w.new_key,
            records: EE,
            seen: &[],
            ttls: TTL_300,
            want: HeldUntil(None),
        };
        vec![
            GateCase {
                what: "nothing installed: no gate, even unseen",
                installed: None,
                want: Installs(Gate::Clear),
                ..base
            },
            GateCase {
                what: "a renewal with the same key installs at once, its record unseen",
                candidate: |w| &w.same_key,
                want: Installs(Gate::Clear),
                ..base
            },
            GateCase {
                what: "the installed certificate itself: nothing to gate",
                candidate: |w| &w.current,
                want: Installs(Gate::Clear),
                ..base
            },
            GateCase {
                what: "a new key whose record is not seen is held with no end",
                ..base
            },
            GateCase {
                what: "a new key seen just now is held 2 × TTL",
                seen: &[(Spec::EE, 0)],
                want: HeldUntil(Some(600)),
                ..base
            },
            GateCase {
                what: "one second short of 2 × TTL is held",
                seen: &[(Spec::EE, 599)],
                want: HeldUntil(Some(1)),
                ..base
            },
            GateCase {
                what: "aged 2 × TTL opens",
                seen: &[(Spec::EE, 600)],
                want: Installs(Gate::Open),
                ..base
            },
            GateCase {
                what: "the larger old TTL counts",
                seen: &[(Spec::EE, 600)],
                ttls: (3_600, 300, true, 900),
                want: HeldUntil(Some(7_200 - 600)),
                ..base
            },
            GateCase {
                what: "a new RRset adds the negative TTL",
                seen: &[(Spec::EE, 600)],
                ttls: (300, 300, false, 900),
                want: HeldUntil(Some(900)),
                ..base
            },
            GateCase {
                what: "an unseen record is forced when the current expires within hold_max",
                installed: Some(|w| &w.expiring),
                want: Forced,
                ..base
            },
            GateCase {
                what: "an ageing record is forced when the current one expired",
                installed: Some(|w| &w.expired),
                seen: &[(Spec::EE, 0)],
                want: Forced,
                ..base
            },
            GateCase {
                what: "an aged record opens even when the current one expires soon",
                installed: Some(|w| &w.expiring),
                seen: &[(Spec::EE, DAY)],
                want: Installs(Gate::Open),
                ..base
            },
            GateCase {
                what: "another CA, same key: 3 1 1 alone does not change",
                candidate: |w| &w.other_ca,
                want: Installs(Gate::Clear),
                ..base
            },
            GateCase {
                what: "another CA, same key: a configured 2 1 1 waits for its record",
                candidate: |w| &w.other_ca,
                records: BOTH,
                want: HeldUntil(None),
                ..base
            },
            GateCase {
                what: "another CA, same key: an aged 2 1 1 opens",
                candidate: |w| &w.other_ca,
                records: BOTH,
                seen: &[(Spec::TA, DAY)],
                want: Installs(Gate::Open),
                ..base
            },
            GateCase {
                what: "a new key from the same CA keeps 2 1 1 alone",
                records: TA,
                want: Installs(Gate::Clear),
                ..base
            },
            GateCase {
                what: "a new key with both usages waits for the one still ageing",
                records: BOTH,
                seen: &[(Spec::EE, 100)],
                want: HeldUntil(Some(500)),
                ..base
            },
        ]
    }

    /// The DANE facts of a case: the installed certificate's records long
    /// aged, the candidate's as the case says.
    fn dane_facts(c: &GateCase, w: &GateWorld) -> DaneFacts {
        let mut seen = BTreeMap::new();
        if let Some(installed) = c.installed {
            for spec in c.records {
                let r = spec.build_for(&installed(w).bundle()).unwrap();
                seen.insert(r.to_string(), NOW - 30 * DAY);
            }
        }
        for (spec, ago) in c.seen {
            let r = spec.build_for(&(c.candidate)(w).bundle()).unwrap();
            seen.insert(r.to_string(), NOW - ago);
        }
        let (old_ttl, new_ttl, rrset_existed, negative_ttl) = c.ttls;
        DaneFacts {
            records: c.records.to_vec(),
            seen,
            old_ttl,
            new_ttl,
            rrset_existed,
            negative_ttl,
            hold_max: gate::DEFAULT_HOLD_MAX,
        }
    }

    fn decide_one(
        candidate: &Issued,
        installed: Option<&Issued>,
        dane: Option<DaneFacts>,
    ) -> SlotDecision {
        let domains = domains();
        let candidates = vec![candidate.candidate(0, "next", 0, false)];
        let mut d = decide(Facts {
            candidates: &candidates,
            slots: vec![SlotFacts {
                name: "mail".to_owned(),
                target: 0,
                slot: 0,
                domains: &domains,
                key_type: KeyTypeFilter::Any,
                installed: installed.map(Issued::bundle),
                failure: None,
                dane,
            }],
            now: NOW,
        });
        d.slots.remove(0)
    }

    fn gate_outcome(d: &SlotDecision) -> GateWant {
        let r = &d.report;
        match (&r.action, &r.gate, &d.install) {
            (Action::UpToDate, Some(Gate::Forced(_)), Some(_)) => GateWant::Forced,
            (Action::UpToDate, Some(g), Some(_)) => GateWant::Installs(g.clone()),
            (Action::Held(h), Some(Gate::Held), None) => {
                let s = r.served.as_ref().unwrap();
                assert_eq!(s.origin, "installed", "a held slot serves what it has");
                assert_ne!(h.sha256, s.sha256, "the hold names the new certificate");
                GateWant::HeldUntil(h.until.map(|u| u - NOW))
            }
            other => panic!("unexpected decision {other:?}"),
        }
    }

    #[test]
    fn a_dane_slot_installs_holds_or_forces_as_the_gate_table_says() {
        let w = gate_world();
        for c in gate_cases() {
            let d = decide_one(
                (c.candidate)(&w),
                c.installed.map(|i| i(&w)),
                Some(dane_facts(&c, &w)),
            );
            assert_eq!(gate_outcome(&d), c.want, "{}", c.what);
            // Held or not, the slot knows the chain it would install.
            assert_eq!(
                d.candidate.as_deref(),
                Some(&(c.candidate)(&w).certs[..]),
                "{}",
                c.what
            );
        }
    }

    #[test]
    fn a_slot_without_dane_installs_a_new_key_at_once() {
        let w = gate_world();
        let d = decide_one(&w.new_key, Some(&w.current), None);
        assert!(matches!(d.report.action, Action::UpToDate) && d.install.is_some());
        assert_eq!(d.report.gate, None);
    }

    #[test]
    fn a_hold_and_a_forced_install_read_as_one_line_naming_the_record() {
        let w = gate_world();
        let record = Spec::EE.build_for(&w.new_key.bundle()).unwrap().to_string();
        let mut facts = DaneFacts {
            records: EE.to_vec(),
            old_ttl: 300,
            new_ttl: 300,
            rrset_existed: true,
            hold_max: gate::DEFAULT_HOLD_MAX,
            ..DaneFacts::default()
        };
        facts.seen.insert(record.clone(), NOW);
        let held = decide_one(&w.new_key, Some(&w.current), Some(facts.clone()));
        let line = held.report.action.why().unwrap();
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.contains(&record) && line.contains("2026-01-01T00:10:00Z"),
            "{line}"
        );
        assert_eq!(held.report.problem(), None, "a hold is not a problem");
        assert!(held.report.ok());

        let forced = decide_one(&w.new_key, Some(&w.expiring), Some(facts));
        let problem = forced.report.problem().unwrap();
        assert!(!problem.contains('\n'), "{problem}");
        assert!(
            problem.starts_with("target mail: installing ")
                && problem.contains(&record)
                && problem.contains("is not aged")
                && problem.contains("the current certificate expires 2026-01-06T00:00:00Z"),
            "{problem}"
        );
    }
}
