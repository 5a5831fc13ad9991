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
