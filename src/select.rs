//! Selection: for one target, which candidate to install, and why every
//! other candidate that came close was refused.
//!
//! A candidate is valid for a target only if its key matches its leaf, its
//! chain really issued the leaf, now is inside its validity window, its
//! names cover every target name, and its key type fits. Among valid
//! candidates the latest notAfter wins, then the one needing fewer wildcard
//! matches, then source order, then entry order. Fallback (self-signed)
//! candidates count only when nothing else is valid. The costly checks (key
//! match, chain signatures) run in rank order and stop at the first winner.
//!
//! This module does no I/O: it works on candidates already read.

use std::fmt;

use crate::cert::{Bundle, CertError, KeyType, KeyTypeFilter, Timeliness};
use crate::names::{self, DnsName};
use crate::source::Candidate;

/// Why a candidate was not chosen for a target.
#[derive(Debug)]
pub enum Refusal {
    Expired {
        not_after: i64,
    },
    NotYetValid {
        not_before: i64,
    },
    DoesNotCover {
        missing: Vec<DnsName>,
    },
    KeyType {
        found: KeyType,
        wanted: KeyTypeFilter,
    },
    /// Its material is broken: undecodable, key mismatch, bad chain.
    Broken(CertError),
}

impl Refusal {
    /// Broken material is an error in the source; the rest is normal.
    pub fn is_error(&self) -> bool {
        matches!(self, Refusal::Broken(_))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Expired { not_after } => {
                write!(f, "expired on {}", crate::rfc3339(*not_after))
            }
            Refusal::NotYetValid { not_before } => {
                write!(f, "not yet valid (from {})", crate::rfc3339(*not_before))
            }
            Refusal::DoesNotCover { missing } => {
                let m: Vec<&str> = missing.iter().map(DnsName::as_str).collect();
                write!(f, "does not cover {}", m.join(", "))
            }
            Refusal::KeyType { found, wanted } => {
                write!(f, "key type {found} is not the wanted {wanted:?}")
            }
            Refusal::Broken(e) => write!(f, "{e}"),
        }
    }
}

/// The winner for a target, with its built and verified bundle.
#[derive(Debug)]
pub struct Chosen<'c> {
    pub candidate: &'c Candidate,
    pub bundle: Bundle,
}

/// The outcome of selection for one target.
#[derive(Debug)]
pub struct Selection<'c> {
    pub chosen: Option<Chosen<'c>>,
    /// Candidates that cover at least one of the target's names but were
    /// refused, best-ranked first.
    pub refused: Vec<(&'c Candidate, Refusal)>,
    /// Candidates that covered none of the target's names (for messages
    /// when nothing is valid).
    pub unrelated: Vec<&'c Candidate>,
}

/// Ranking key: smaller is better. Among the self-signed fallback's own
/// certificates the order is fixed (ECDSA, then RSA) rather than by
/// notAfter: which was made later says nothing about which to serve.
fn rank(c: &Candidate, wildcards: usize) -> (bool, std::cmp::Reverse<i64>, usize, usize, usize) {
    (
        c.fallback,
        std::cmp::Reverse(if c.fallback {
            0
        } else {
            c.leaf.validity.not_after
        }),
        wildcards,
        c.origin.source_index,
        c.origin.entry_index,
    )
}

/// Chooses the best valid candidate covering `domains` with a key of
/// `key_type`, at time `now`.
pub fn select<'c>(
    domains: &[DnsName],
    key_type: KeyTypeFilter,
    candidates: &'c [Candidate],
    now: i64,
) -> Selection<'c> {
    let mut refused = Vec::new();
    let mut unrelated = Vec::new();
    let mut fit = Vec::new();
    for c in candidates {
        // Most of a large acme.json covers none of the names: set those
        // aside without building the list of missing names.
        if !domains.is_empty() && !names::covers_any(&c.leaf.names, domains) {
            unrelated.push(c);
            continue;
        }
        let wildcards = match names::cover_all(&c.leaf.names, domains) {
            Ok(w) => w,
            Err(missing) => {
                if missing.len() == domains.len() {
                    unrelated.push(c);
                } else {
                    refused.push((c, Refusal::DoesNotCover { missing }));
                }
                continue;
            }
        };
        let validity = c.leaf.validity;
        let refusal = match validity.at(now) {
            Timeliness::Expired => Some(Refusal::Expired {
                not_after: validity.not_after,
            }),
            Timeliness::NotYetValid => Some(Refusal::NotYetValid {
                not_before: validity.not_before,
            }),
            Timeliness::Valid if !key_type.accepts(c.leaf.key_type) => Some(Refusal::KeyType {
                found: c.leaf.key_type,
                wanted: key_type,
            }),
            Timeliness::Valid => None,
        };
        match refusal {
            Some(r) => refused.push((c, r)),
            None => fit.push((rank(c, wildcards), c)),
        }
    }
    fit.sort_by_key(|(rank, _)| *rank);

    let mut chosen = None;
    for (_, c) in fit {
        match c.bundle().and_then(|b| b.verify().map(|()| b)) {
            Ok(bundle) => {
                chosen = Some(Chosen {
                    candidate: c,
                    bundle,
                });
                break;
            }
            Err(e) => refused.push((c, Refusal::Broken(e))),
        }
    }
    refused.sort_by_key(|(c, _)| rank(c, 0));
    Selection {
        chosen,
        refused,
        unrelated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testing::{self, Alg, Ca, Issued};

    const DAY: i64 = 86_400;
    /// A fixed "now" (2026-01-01T00:00:00Z): the fake clock.
    const NOW: i64 = 1_767_225_600;

    fn names(list: &[&str]) -> Vec<DnsName> {
        list.iter().map(|n| DnsName::parse(n).unwrap()).collect()
    }

    /// What selection says of a one-candidate case.
    #[derive(Debug, PartialEq)]
    enum Got {
        Chosen,
        Expired,
        NotYetValid,
        /// The names missing, joined.
        DoesNotCover(String),
        KeyType,
        Broken,
        Unrelated,
    }

    fn judge(domains: &[&str], key_type: KeyTypeFilter, issued: &Issued) -> Got {
        let candidates = [issued.candidate(0, "entry", 0, false)];
        let s = select(&names(domains), key_type, &candidates, NOW);
        if s.chosen.is_some() {
            return Got::Chosen;
        }
        if !s.unrelated.is_empty() {
            return Got::Unrelated;
        }
        match &s.refused[..] {
            [(_, Refusal::Expired { not_after })] => {
                assert_eq!(*not_after, issued_leaf(issued).validity.not_after);
                Got::Expired
            }
            [(_, Refusal::NotYetValid { .. })] => Got::NotYetValid,
            [(_, Refusal::DoesNotCover { missing })] => {
                let missing: Vec<&str> = missing.iter().map(DnsName::as_str).collect();
                Got::DoesNotCover(missing.join(", "))
            }
            [(_, Refusal::KeyType { .. })] => Got::KeyType,
            [(_, Refusal::Broken(_))] => Got::Broken,
            other => panic!("unexpected refusals {other:?}"),
        }
    }

    fn issued_leaf(i: &Issued) -> crate::cert::Leaf {
        crate::cert::Leaf::parse(i.certs[0].as_ref()).unwrap()
    }

    #[test]
    fn each_candidate_is_chosen_or_refused_as_the_table_says() {
        let ca = Ca::new();
        let valid = (NOW - DAY, NOW + 60 * DAY);
        let issue = |n: &[&str], alg, (nb, na): (i64, i64)| ca.issue(n, alg, nb, na);
        let mx = issue(&["mx.example"], Alg::Ecdsa, valid);
        let mx_imap = issue(&["mx.example", "imap.example"], Alg::Ecdsa, valid);
        let wildcard = issue(&["*.example"], Alg::Ecdsa, valid);
        let rsa = issue(&["mx.example"], Alg::Rsa, valid);
        let expired = issue(&["mx.example"], Alg::Ecdsa, (NOW - 90 * DAY, NOW - 1));
        let future = issue(&["mx.example"], Alg::Ecdsa, (NOW + 1, NOW + 90 * DAY));
        let mismatched = mx.with_key_of(&mx_imap);
        let self_signed = testing::self_signed(&["mx.example"], Alg::Ecdsa, valid.0, valid.1);
        use Got::*;
        use KeyTypeFilter::{Any, Ecdsa, Rsa};
        let table: Vec<(&str, &[&str], KeyTypeFilter, &Issued, Got)> = vec![
            ("an exact name", &["mx.example"], Any, &mx, Chosen),
            (
                "all names",
                &["mx.example", "imap.example"],
                Any,
                &mx_imap,
                Chosen,
            ),
            (
                "one name missing",
                &["mx.example", "imap.example"],
                Any,
                &mx,
                DoesNotCover("imap.example".into()),
            ),
            ("no name covered", &["smtp.example"], Any, &mx, Unrelated),
            (
                "a wildcard one label deep",
                &["mx.example", "imap.example"],
                Any,
                &wildcard,
                Chosen,
            ),
            (
                "a wildcard does not cover the bare domain",
                &["example", "mx.example"],
                Any,
                &wildcard,
                DoesNotCover("example".into()),
            ),
            (
                "a wildcard does not cover two labels",
                &["a.mx.example"],
                Any,
                &wildcard,
                Unrelated,
            ),
            (
                "an RSA key for an RSA slot",
                &["mx.example"],
                Rsa,
                &rsa,
                Chosen,
            ),
            (
                "an RSA key for an ECDSA slot",
                &["mx.example"],
                Ecdsa,
                &rsa,
                KeyType,
            ),
            (
                "an ECDSA key for an RSA slot",
                &["mx.example"],
                Rsa,
                &mx,
                KeyType,
            ),
            (
                "an ECDSA key for an ECDSA slot",
                &["mx.example"],
                Ecdsa,
                &mx,
                Chosen,
            ),
            (
                "expired a second ago",
                &["mx.example"],
                Any,
                &expired,
                Expired,
            ),
            (
                "valid from a second ahead",
                &["mx.example"],
                Any,
                &future,
                NotYetValid,
            ),
            (
                "a key from another certificate",
                &["mx.example"],
                Any,
                &mismatched,
                Broken,
            ),
            (
                "self-signed is fine for selection",
                &["mx.example"],
                Any,
                &self_signed,
                Chosen,
            ),
        ];
        for (what, domains, key_type, issued, want) in table {
            assert_eq!(judge(domains, key_type, issued), want, "{what}");
        }
    }

    #[test]
    fn the_best_ranked_valid_candidate_wins() {
        let ca = Ca::new();
        let both = ["mx.example", "imap.example"];
        let c = |entry: &str, index, source, names: &[&str], not_after, fallback| {
            ca.issue(names, Alg::Ecdsa, NOW - DAY, not_after)
                .candidate(source, entry, index, fallback)
        };
        // (what, candidates, winner's entry)
        let table: Vec<(&str, Vec<Candidate>, &str)> = vec![
            (
                "the latest notAfter",
                vec![
                    c("early", 0, 0, &both, NOW + 10 * DAY, false),
                    c("late", 1, 0, &both, NOW + 20 * DAY, false),
                ],
                "late",
            ),
            (
                "fewer wildcards at the same notAfter",
                vec![
                    c("wild", 0, 0, &["*.example"], NOW + 10 * DAY, false),
                    c("exact", 1, 0, &both, NOW + 10 * DAY, false),
                ],
                "exact",
            ),
            (
                "source order, then entry order",
                vec![
                    c("second-source", 0, 1, &both, NOW + 10 * DAY, false),
                    c("first-source-b", 1, 0, &both, NOW + 10 * DAY, false),
                    c("first-source-a", 0, 0, &both, NOW + 10 * DAY, false),
                ],
                "first-source-a",
            ),
            (
                "a fallback only when nothing else is valid",
                vec![
                    c("fallback", 0, 0, &both, NOW + 900 * DAY, true),
                    c("ca", 0, 1, &both, NOW + 10 * DAY, false),
                ],
                "ca",
            ),
            (
                "a broken best candidate gives way to the next",
                vec![
                    {
                        let good = ca.issue(&both, Alg::Ecdsa, NOW - DAY, NOW + 80 * DAY);
                        let other = ca.issue(&both, Alg::Ecdsa, NOW - DAY, NOW + 80 * DAY);
                        good.with_key_of(&other).candidate(0, "broken", 0, false)
                    },
                    c("next", 1, 0, &both, NOW + 10 * DAY, false),
                ],
                "next",
            ),
        ];
        for (what, candidates, winner) in table {
            let s = select(&names(&both), KeyTypeFilter::Any, &candidates, NOW);
            let chosen = s.chosen.map(|c| c.candidate.origin.entry.clone());
            assert_eq!(chosen.as_deref(), Some(winner), "{what}");
        }
    }
}
