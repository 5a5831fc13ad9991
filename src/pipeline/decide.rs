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

use std::collections::HashSet;

use crate::cert::{self, Bundle, KeyTypeFilter, Leaf, Timeliness};
use crate::names::{self, DnsName};
use crate::select::{self, Selection};
use crate::source::{Candidate, Origin};
use crate::state::Failure;

use super::{Action, Deferred, Served, TargetReport, Unserved};

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
}

/// The decision for one slot.
#[derive(Debug)]
pub struct SlotDecision {
    pub report: TargetReport,
    /// The bundle to write into the slot's files, if any.
    pub install: Option<Bundle>,
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
        install: Some(chosen.bundle),
    };
    defer_if_rolled_back(&mut decided, facts.failure, now);
    decided
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
}
