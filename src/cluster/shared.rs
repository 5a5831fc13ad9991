//! Shared ACME certificates (issue 18): what a host decides about one
//! `shared = true` source, from facts alone.
//!
//! Pure: no I/O, no clock (the caller passes `now`); [`super::acme`] reads
//! the cluster and the files and acts. The rules:
//! - A certificate stored in the cluster is installed only when it is
//!   usable (valid now, its key matches its chain, it covers the source's
//!   names) and better than the one held: none held, the one held
//!   unusable, a later notAfter, or a different one stored after the held
//!   one was written (the cluster wins over a fenced leader's order).
//!   Never something worse ([`mirror_choice`]).
//! - Only the leader of job `acme/NAME` orders, and only while the source
//!   is still due after taking what the cluster holds ([`plan`]); a
//!   follower or a host that cannot reach the cluster never orders.
//! - The leader stores its result with compare-and-set against what it
//!   read ([`expect_for`]); a fenced write stores nothing ([`after_write`]).

use super::{Expect, Written};
use crate::names::{self, DnsName};

/// The facts of a certificate (stored in the cluster or held locally).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub sha256: String,
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// The private key matches the leaf and the chain links up.
    pub key_matches: bool,
    /// When it was stored (the cluster's `stored_at`) or written locally
    /// (the bundle's mtime), Unix seconds.
    pub since: i64,
}

impl CertFacts {
    /// Why it cannot be installed for `wanted` at `now`, if it cannot.
    pub fn unusable(&self, wanted: &[DnsName], now: i64) -> Option<String> {
        if !self.key_matches {
            return Some("its key does not match its chain".to_owned());
        }
        if now >= self.not_after {
            return Some(format!("it expired at {}", crate::rfc3339(self.not_after)));
        }
        if now < self.not_before {
            return Some(format!(
                "it is valid only from {}",
                crate::rfc3339(self.not_before)
            ));
        }
        if let Err(missing) = names::cover_all(&self.names, wanted) {
            let missing: Vec<&str> = missing.iter().map(DnsName::as_str).collect();
            return Some(format!("it does not cover {}", missing.join(", ")));
        }
        None
    }
}

/// Whether to install the cluster's certificate over the one held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorChoice {
    /// Install it.
    Take,
    /// Keep the one held (the same, or better).
    Keep,
    /// The stored one cannot be used: why (one line, no key material).
    Refuse(String),
}

/// What to do with the certificate the cluster holds for a source.
pub fn mirror_choice(
    stored: &CertFacts,
    held: Option<&CertFacts>,
    wanted: &[DnsName],
    now: i64,
) -> MirrorChoice {
    if let Some(why) = stored.unusable(wanted, now) {
        return MirrorChoice::Refuse(why);
    }
    let Some(held) = held else {
        return MirrorChoice::Take;
    };
    if held.sha256 == stored.sha256 {
        return MirrorChoice::Keep;
    }
    if held.unusable(wanted, now).is_some()
        || stored.not_after > held.not_after
        || stored.since >= held.since
    {
        MirrorChoice::Take
    } else {
        MirrorChoice::Keep
    }
}

/// This host's part in job `acme/NAME` right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It holds the job's lock.
    Leader,
    /// Another host holds it (its id, when readable).
    Follower(Option<String>),
    /// The cluster could not be asked (the error, one line).
    Unreachable(String),
}

/// What a shared source does this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to order (the certificate held, perhaps just taken from the
    /// cluster, is good): a leader resigns.
    NotDue,
    /// Order, and store the result in the cluster.
    Order,
    /// Not ordered here: why, for the outcome ("shared: mx1 orders it").
    Wait(String),
}

/// Whether a shared source orders, given whether it is still due (after
/// mirroring what the cluster holds) and this host's role.
pub fn plan(due: bool, role: &Role) -> Plan {
    match (due, role) {
        (false, _) => Plan::NotDue,
        (true, Role::Leader) => Plan::Order,
        (true, Role::Follower(Some(host))) => Plan::Wait(format!("shared: {host} orders it")),
        (true, Role::Follower(None)) => Plan::Wait("shared: another host orders it".to_owned()),
        (true, Role::Unreachable(e)) => Plan::Wait(format!(
            "shared: not ordered, the cluster is unreachable ({e})"
        )),
    }
}

/// The compare-and-set a leader's store expects: the key as it read it.
pub fn expect_for(read_revision: Option<i64>) -> Expect {
    read_revision.map_or(Expect::Absent, Expect::Revision)
}

/// What a leader's store came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterWrite {
    /// Stored: every host takes it.
    Stored,
    /// Refused: this host lost the job while ordering; count it, and the
    /// next mirror installs the cluster's certificate.
    Fenced,
    /// Refused: another host stored one meanwhile; the next mirror decides.
    Conflict,
}

pub fn after_write(written: Written) -> AfterWrite {
    match written {
        Written::Stored(_) => AfterWrite::Stored,
        Written::Fenced => AfterWrite::Fenced,
        Written::Conflict => AfterWrite::Conflict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_000 * DAY;

    fn wanted() -> Vec<DnsName> {
        vec![DnsName::parse("mail.example.test").unwrap()]
    }

    fn cert(sha: &str, not_after: i64, since: i64) -> CertFacts {
        CertFacts {
            sha256: sha.to_owned(),
            names: vec!["mail.example.test".to_owned()],
            not_before: NOW - DAY,
            not_after,
            key_matches: true,
            since,
        }
    }

    #[test]
    fn a_stored_certificate_that_is_expired_mismatched_or_not_covering_is_never_mirrored() {
        let good_held = cert("h", NOW + 10 * DAY, NOW - DAY);
        let expired = cert("s", NOW - 1, NOW);
        let mismatched = CertFacts {
            key_matches: false,
            ..cert("s", NOW + 80 * DAY, NOW)
        };
        let elsewhere = CertFacts {
            names: vec!["other.example.test".to_owned()],
            ..cert("s", NOW + 80 * DAY, NOW)
        };
        let future = CertFacts {
            not_before: NOW + DAY,
            ..cert("s", NOW + 80 * DAY, NOW)
        };
        // (stored, held, what it must say)
        let table: [(&CertFacts, Option<&CertFacts>, &str); 8] = [
            (&expired, None, "expired"),
            (&expired, Some(&good_held), "expired"),
            (&mismatched, None, "key does not match"),
            (&mismatched, Some(&good_held), "key does not match"),
            (&elsewhere, None, "does not cover mail.example.test"),
            (&elsewhere, Some(&good_held), "does not cover"),
            (&future, None, "valid only from"),
            (&future, Some(&good_held), "valid only from"),
        ];
        for (i, (stored, held, why)) in table.into_iter().enumerate() {
            match mirror_choice(stored, held, &wanted(), NOW) {
                MirrorChoice::Refuse(r) => assert!(r.contains(why), "row {i}: {r}"),
                other => panic!("row {i}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_usable_stored_certificate_is_taken_only_when_better_than_the_one_held() {
        let stored = cert("s", NOW + 60 * DAY, NOW - 10);
        let table: [(Option<CertFacts>, MirrorChoice); 7] = [
            // Nothing held.
            (None, MirrorChoice::Take),
            // The same certificate.
            (Some(cert("s", NOW + 60 * DAY, NOW)), MirrorChoice::Keep),
            // An older one, written before the cluster's was stored.
            (
                Some(cert("h", NOW + 20 * DAY, NOW - DAY)),
                MirrorChoice::Take,
            ),
            // An expired one.
            (Some(cert("h", NOW - 1, NOW - 90 * DAY)), MirrorChoice::Take),
            // A later one the cluster never stored, written after it: a
            // leader whose store failed; kept until the cluster has newer.
            (Some(cert("h", NOW + 70 * DAY, NOW)), MirrorChoice::Keep),
            // A later one written before the cluster's was stored (a
            // fenced leader's order): the cluster's wins.
            (
                Some(cert("h", NOW + 70 * DAY, NOW - 20)),
                MirrorChoice::Take,
            ),
            // One held that does not cover the names any more.
            (
                Some(CertFacts {
                    names: vec!["old.example.test".to_owned()],
                    ..cert("h", NOW + 70 * DAY, NOW)
                }),
                MirrorChoice::Take,
            ),
        ];
        for (i, (held, want)) in table.into_iter().enumerate() {
            assert_eq!(
                mirror_choice(&stored, held.as_ref(), &wanted(), NOW),
                want,
                "row {i}"
            );
        }
    }

    #[test]
    fn only_the_leader_orders_and_only_while_still_due() {
        let table = [
            (true, Role::Leader, Plan::Order),
            (false, Role::Leader, Plan::NotDue),
            (
                true,
                Role::Follower(Some("mx1".into())),
                Plan::Wait("shared: mx1 orders it".into()),
            ),
            (false, Role::Follower(Some("mx1".into())), Plan::NotDue),
            (
                true,
                Role::Follower(None),
                Plan::Wait("shared: another host orders it".into()),
            ),
            (
                true,
                Role::Unreachable("cluster unavailable: no quorum".into()),
                Plan::Wait(
                    "shared: not ordered, the cluster is unreachable (cluster unavailable: no quorum)"
                        .into(),
                ),
            ),
        ];
        for (i, (due, role, want)) in table.into_iter().enumerate() {
            assert_eq!(plan(due, &role), want, "row {i}");
        }
    }

    #[test]
    fn a_leader_stores_against_what_it_read_and_a_fenced_write_stores_nothing() {
        assert_eq!(expect_for(None), Expect::Absent);
        assert_eq!(expect_for(Some(7)), Expect::Revision(7));
        assert_eq!(after_write(Written::Stored(9)), AfterWrite::Stored);
        assert_eq!(after_write(Written::Fenced), AfterWrite::Fenced);
        assert_eq!(after_write(Written::Conflict), AfterWrite::Conflict);
    }
}
