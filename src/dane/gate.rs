//! The DANE gate: whether a DANE target may install a new certificate now.
//! Pure: what DNS showed and since when, the TTLs and `now` come in as
//! parameters, a [`Decision`] comes out; tested with tables and a fixed
//! clock.
//!
//! The rule (issue 14, RFC 7671 §8.1): for every configured usage, a record
//! matching the new certificate must have been seen on every authoritative
//! server, DNSSEC-signed, since a time `t0`, and the gate opens when
//! `now ≥ t0 + 2 × max(old TTL, new TTL)`, plus the zone's negative TTL if
//! the RRset did not exist before (a resolver may hold its absence that
//! long). Until then the target keeps its current certificate and the
//! decision says what it waits for and until when. If the current
//! certificate has less than `dane_hold_max` left (default 7 days) while
//! the gate is shut, install anyway: an expired certificate breaks WebPKI
//! senders too; the caller raises an error-level alert.

use std::fmt;

use super::tlsa::Spec;

/// `dane_hold_max` when not configured: 7 days, in seconds.
pub const DEFAULT_HOLD_MAX: i64 = 7 * 86_400;

/// What DNS showed for one configured usage of the new certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub spec: Spec,
    /// Since when a matching, DNSSEC-signed record has been seen on every
    /// authoritative server (Unix seconds); `None`: not yet.
    pub since: Option<i64>,
}

/// Everything the gate decides from. Times are Unix seconds, TTLs and
/// durations seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inputs<'a> {
    /// One entry per configured usage (`records`).
    pub seen: &'a [Seen],
    /// TTL of the RRset before the edit.
    pub old_ttl: u32,
    /// TTL of the RRset after the edit.
    pub new_ttl: u32,
    /// Whether the TLSA RRset existed before the edit.
    pub rrset_existed: bool,
    /// The zone's negative-caching TTL (SOA minimum, RFC 2308), added when
    /// the RRset did not exist.
    pub negative_ttl: u32,
    /// `not_after` of the certificate the target serves now.
    pub current_not_after: i64,
    /// `dane_hold_max`: how close to its expiry the current certificate may
    /// come before the new one is installed whatever the gate says.
    pub hold_max: i64,
    pub now: i64,
}

/// What the gate waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// No matching, signed record seen on every authoritative server yet.
    NotSeen { spec: Spec },
    /// Seen since `since`; aged enough at `until`.
    NotAged { spec: Spec, since: i64, until: i64 },
}

/// The gate's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every usage is published and aged: install.
    Open,
    /// Keep the current certificate. `until`: when the gate opens if
    /// nothing changes (`None` while a record is not seen yet).
    Wait {
        until: Option<i64>,
        reason: WaitReason,
    },
    /// The gate is shut but the current certificate expires at `expires`,
    /// less than `dane_hold_max` away: install anyway and alert (error).
    ForceInstall { reason: ForceReason },
}

/// Why an install is forced: what the gate still waited for, and when the
/// current certificate expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForceReason {
    pub waiting: WaitReason,
    pub expires: i64,
}

/// How long a record must have been seen before the gate opens.
pub fn hold(old_ttl: u32, new_ttl: u32, rrset_existed: bool, negative_ttl: u32) -> i64 {
    let ttl = i64::from(old_ttl.max(new_ttl));
    let negative = if rrset_existed {
        0
    } else {
        i64::from(negative_ttl)
    };
    2 * ttl + negative
}

/// The gate's decision for `inputs` (see the module doc for the rule). With
/// no configured usage there is nothing to wait for: open.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let hold = hold(
        inputs.old_ttl,
        inputs.new_ttl,
        inputs.rrset_existed,
        inputs.negative_ttl,
    );
    // The usage that holds the gate longest: one not seen at all, else
    // the one that ages last.
    let mut lagging: Option<WaitReason> = None;
    for seen in inputs.seen {
        let reason = match seen.since {
            None => WaitReason::NotSeen { spec: seen.spec },
            Some(since) => {
                let until = since.saturating_add(hold);
                if inputs.now >= until {
                    continue;
                }
                WaitReason::NotAged {
                    spec: seen.spec,
                    since,
                    until,
                }
            }
        };
        lagging = match (lagging, reason) {
            (Some(w @ WaitReason::NotSeen { .. }), _) => Some(w),
            (
                Some(w @ WaitReason::NotAged { until: a, .. }),
                WaitReason::NotAged { until: b, .. },
            ) if a >= b => Some(w),
            (_, r) => Some(r),
        };
    }
    let Some(waiting) = lagging else {
        return Decision::Open;
    };
    if inputs.current_not_after.saturating_sub(inputs.now) < inputs.hold_max {
        return Decision::ForceInstall {
            reason: ForceReason {
                waiting,
                expires: inputs.current_not_after,
            },
        };
    }
    let until = match waiting {
        WaitReason::NotSeen { .. } => None,
        WaitReason::NotAged { until, .. } => Some(until),
    };
    Decision::Wait {
        until,
        reason: waiting,
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NotSeen { spec } => write!(
                f,
                "TLSA {spec} for the new key not yet seen signed on every authoritative server"
            ),
            WaitReason::NotAged { spec, since, until } => write!(
                f,
                "TLSA {spec} for the new key seen since {}, aged at {}",
                crate::rfc3339(*since),
                crate::rfc3339(*until)
            ),
        }
    }
}

impl fmt::Display for ForceReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the current certificate expires at {}, within dane_hold_max, while the DANE gate \
             is shut ({}): installing anyway, DANE senders may refuse mail until the record ages",
            crate::rfc3339(self.expires),
            self.waiting
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;
    const EE: Spec = Spec::EE;
    const TA: Spec = Spec::TA;

    fn seen(spec: Spec, since: Option<i64>) -> Seen {
        Seen { spec, since }
    }

    /// A target whose current certificate has 30 days left, TTLs of 300 s
    /// and 600 s, an RRset that existed: the gate holds for 1200 s.
    fn inputs(seen: &[Seen]) -> Inputs<'_> {
        Inputs {
            seen,
            old_ttl: 300,
            new_ttl: 600,
            rrset_existed: true,
            negative_ttl: 3_600,
            current_not_after: NOW + 30 * DAY,
            hold_max: DEFAULT_HOLD_MAX,
            now: NOW,
        }
    }

    fn wait(until: i64, spec: Spec, since: i64) -> Decision {
        Decision::Wait {
            until: Some(until),
            reason: WaitReason::NotAged { spec, since, until },
        }
    }

    fn not_seen(spec: Spec) -> Decision {
        Decision::Wait {
            until: None,
            reason: WaitReason::NotSeen { spec },
        }
    }

    #[test]
    fn the_gate_opens_exactly_two_larger_ttls_after_the_record_is_seen_and_not_a_second_before() {
        type Case<'a> = (&'static str, fn(&mut Inputs<'_>), &'a [Seen], Decision);
        let at = |t0: i64| [seen(EE, Some(t0))];
        let exactly = at(NOW - 1_200);
        let one_short = at(NOW - 1_199);
        let long_ago = at(NOW - DAY);
        let just_now = at(NOW);
        let missing = [seen(EE, None)];
        let both_aged = [seen(EE, Some(NOW - DAY)), seen(TA, Some(NOW - 2 * DAY))];
        let ta_lags = [seen(EE, Some(NOW - DAY)), seen(TA, Some(NOW - 100))];
        let ee_missing = [seen(EE, None), seen(TA, Some(NOW - 100))];
        let ta_missing = [seen(EE, Some(NOW - 100)), seen(TA, None)];
        let both_lag = [seen(EE, Some(NOW - 500)), seen(TA, Some(NOW - 100))];
        let none: [Seen; 0] = [];
        let keep = |_: &mut Inputs<'_>| {};
        let cases: &[Case] = &[
            (
                "aged exactly 2 × max TTL opens",
                keep,
                &exactly,
                Decision::Open,
            ),
            (
                "one second short waits",
                keep,
                &one_short,
                wait(NOW + 1, EE, NOW - 1_199),
            ),
            ("aged long ago opens", keep, &long_ago, Decision::Open),
            (
                "seen just now waits 2 × TTL",
                keep,
                &just_now,
                wait(NOW + 1_200, EE, NOW),
            ),
            ("not seen waits with no end", keep, &missing, not_seen(EE)),
            (
                "the old TTL counts when larger",
                |i| i.old_ttl = 900,
                &exactly,
                wait(NOW + 600, EE, NOW - 1_200),
            ),
            (
                "a new RRset adds the negative TTL",
                |i| i.rrset_existed = false,
                &exactly,
                wait(NOW + 3_600, EE, NOW - 1_200),
            ),
            (
                "a new RRset opens once that is aged too",
                |i| i.rrset_existed = false,
                &long_ago,
                Decision::Open,
            ),
            ("every usage aged opens", keep, &both_aged, Decision::Open),
            (
                "one usage lagging holds the gate",
                keep,
                &ta_lags,
                wait(NOW + 1_100, TA, NOW - 100),
            ),
            (
                "an unseen usage holds the gate",
                keep,
                &ee_missing,
                not_seen(EE),
            ),
            (
                "an unseen usage outranks an ageing one",
                keep,
                &ta_missing,
                not_seen(TA),
            ),
            (
                "the usage that ages last names the time",
                keep,
                &both_lag,
                wait(NOW + 1_100, TA, NOW - 100),
            ),
            ("no configured usage opens", keep, &none, Decision::Open),
            (
                "zero TTLs open once seen",
                |i| {
                    i.old_ttl = 0;
                    i.new_ttl = 0
                },
                &just_now,
                Decision::Open,
            ),
        ];
        for (name, adjust, seen, expected) in cases {
            let mut i = inputs(seen);
            adjust(&mut i);
            assert_eq!(decide(&i), *expected, "{name}");
        }
    }

    #[test]
    fn a_current_certificate_within_hold_max_of_expiry_forces_the_install_while_the_gate_is_shut() {
        let force = |waiting, expires| Decision::ForceInstall {
            reason: ForceReason { waiting, expires },
        };
        let just_now = [seen(EE, Some(NOW))];
        let missing = [seen(EE, None)];
        let aged = [seen(EE, Some(NOW - DAY))];
        // (case, current not_after, seen, expected)
        let cases: &[(&str, i64, &[Seen], Decision)] = &[
            (
                "exactly hold_max left waits",
                NOW + 7 * DAY,
                &just_now,
                wait(NOW + 1_200, EE, NOW),
            ),
            (
                "one second under hold_max forces",
                NOW + 7 * DAY - 1,
                &just_now,
                force(
                    WaitReason::NotAged {
                        spec: EE,
                        since: NOW,
                        until: NOW + 1_200,
                    },
                    NOW + 7 * DAY - 1,
                ),
            ),
            (
                "an unseen record forces too",
                NOW + DAY,
                &missing,
                force(WaitReason::NotSeen { spec: EE }, NOW + DAY),
            ),
            (
                "already expired forces",
                NOW - DAY,
                &missing,
                force(WaitReason::NotSeen { spec: EE }, NOW - DAY),
            ),
            (
                "an open gate never forces",
                NOW + DAY,
                &aged,
                Decision::Open,
            ),
        ];
        for (name, not_after, seen, expected) in cases {
            let mut i = inputs(seen);
            i.current_not_after = *not_after;
            assert_eq!(decide(&i), *expected, "{name}");
        }
    }

    #[test]
    fn the_decision_reads_as_one_line_naming_the_record_and_times() {
        let reason = WaitReason::NotAged {
            spec: TA,
            since: 0,
            until: 1_200,
        };
        assert_eq!(
            reason.to_string(),
            "TLSA 2 1 1 for the new key seen since 1970-01-01T00:00:00Z, aged at 1970-01-01T00:20:00Z"
        );
        let forced = ForceReason {
            waiting: WaitReason::NotSeen { spec: EE },
            expires: 0,
        }
        .to_string();
        assert!(!forced.contains('\n'), "{forced}");
        assert!(
            forced.contains("3 1 1") && forced.contains("1970-01-01T00:00:00Z"),
            "{forced}"
        );
    }
}
