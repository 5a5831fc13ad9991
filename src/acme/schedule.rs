//! When an `acme` source needs a new certificate, as pure functions of what
//! it holds, what the CA suggests, and what failed before.
//!
//! - No certificate, names changed, key type changed, expired: order now.
//! - Renewal Information (ARI, RFC 9773): a uniformly random point of the
//!   CA's suggested window, chosen once per window and kept; a window that
//!   has started means now.
//! - Without ARI: when a third of the lifetime is left (half, for lifetimes
//!   under 10 days, like Let's Encrypt's short-lived profile).
//! - After a failure: not before 1 min, then 10 min, 100 min, then daily,
//!   so a broken setup never hammers the CA (and its rate limits).

use serde::{Deserialize, Serialize};

use crate::names::DnsName;

/// What an `acme` source holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// Its key is of the configured type.
    pub key_type_matches: bool,
}

/// Why an order is placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Forced,
    NoCertificate,
    NamesChanged,
    KeyTypeChanged,
    Expired,
    /// The CA's renewal window (ARI) has been reached.
    RenewalWindow,
    /// A third (or half) of the lifetime is left.
    LifetimeRule,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Forced => "forced",
            Reason::NoCertificate => "no certificate yet",
            Reason::NamesChanged => "the names changed",
            Reason::KeyTypeChanged => "the key type changed",
            Reason::Expired => "the certificate expired",
            Reason::RenewalWindow => "the CA's renewal window was reached",
            Reason::LifetimeRule => "a third of its lifetime is left",
        })
    }
}

/// The decision for one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Now(Reason),
    /// Not yet: due at this time.
    Later(i64),
    /// A failure's backoff runs until this time.
    BackingOff {
        until: i64,
    },
}

/// The facts [`due`] decides from.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub now: i64,
    pub held: Option<&'a Held>,
    pub wanted: &'a [DnsName],
    /// The renewal time chosen in the CA's ARI window, when it has one.
    pub ari_chosen: Option<i64>,
    /// Set after a failure: no order before this time.
    pub next_attempt: Option<i64>,
    pub force: bool,
}

/// Whether to order now, and if not, when.
pub fn due(f: &Facts<'_>) -> Due {
    if f.force {
        return Due::Now(Reason::Forced);
    }
    if let Some(until) = f.next_attempt.filter(|t| *t > f.now) {
        return Due::BackingOff { until };
    }
    let Some(held) = f.held else {
        return Due::Now(Reason::NoCertificate);
    };
    let mut held_names: Vec<&str> = held.names.iter().map(String::as_str).collect();
    let mut wanted: Vec<&str> = f.wanted.iter().map(DnsName::as_str).collect();
    held_names.sort_unstable();
    held_names.dedup();
    wanted.sort_unstable();
    wanted.dedup();
    if held_names != wanted {
        return Due::Now(Reason::NamesChanged);
    }
    if !held.key_type_matches {
        return Due::Now(Reason::KeyTypeChanged);
    }
    if f.now >= held.not_after {
        return Due::Now(Reason::Expired);
    }
    match f.ari_chosen {
        Some(at) if f.now >= at => Due::Now(Reason::RenewalWindow),
        Some(at) => Due::Later(at),
        None => {
            let at = lifetime_renewal(held.not_before, held.not_after);
            if f.now >= at {
                Due::Now(Reason::LifetimeRule)
            } else {
                Due::Later(at)
            }
        }
    }
}

/// Renewal time without ARI: a third of the lifetime before the end, or
/// half of it for lifetimes under 10 days.
pub fn lifetime_renewal(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    if lifetime < 10 * 86_400 {
        not_after - lifetime / 2
    } else {
        not_after - lifetime / 3
    }
}

/// A point of the ARI window `[start, end]`, `unit` in `[0, 1)` drawn
/// uniformly by the caller. RFC 9773 §4.2: a window whose start has passed
/// means renew now.
pub fn ari_pick(start: i64, end: i64, unit: f64, now: i64) -> i64 {
    if start <= now {
        return now;
    }
    let span = (end - start).max(0) as f64;
    start + (span * unit.clamp(0.0, 1.0)) as i64
}

/// The wait after `failures` consecutive failures: 1 min, 10 min, 100 min,
/// then a day.
pub fn backoff(failures: u32) -> i64 {
    match failures {
        0 => 0,
        1 => 60,
        2 => 600,
        3 => 6_000,
        _ => 86_400,
    }
}

/// A uniform number in `[0, 1)` from the system's randomness.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn names(list: &[&str]) -> Vec<DnsName> {
        list.iter().map(|n| DnsName::parse(n).unwrap()).collect()
    }

    fn held(not_before: i64, days: i64) -> Held {
        Held {
            names: vec!["mail.example.com".into()],
            not_before,
            not_after: not_before + days * DAY,
            key_type_matches: true,
        }
    }

    fn facts<'a>(now: i64, held: Option<&'a Held>, wanted: &'a [DnsName]) -> Facts<'a> {
        Facts {
            now,
            held,
            wanted,
            ari_chosen: None,
            next_attempt: None,
            force: false,
        }
    }

    #[test]
    fn ninety_days_renew_with_thirty_left_six_days_with_three_left() {
        assert_eq!(lifetime_renewal(0, 90 * DAY), 60 * DAY);
        assert_eq!(lifetime_renewal(0, 45 * DAY), 30 * DAY);
        assert_eq!(lifetime_renewal(0, 6 * DAY), 3 * DAY);
        let w = names(&["mail.example.com"]);
        let h = held(0, 90);
        assert_eq!(due(&facts(59 * DAY, Some(&h), &w)), Due::Later(60 * DAY));
        assert_eq!(
            due(&facts(60 * DAY, Some(&h), &w)),
            Due::Now(Reason::LifetimeRule)
        );
    }

    #[test]
    fn missing_changed_or_expired_means_now() {
        let w = names(&["mail.example.com"]);
        let h = held(0, 90);
        assert_eq!(due(&facts(DAY, None, &w)), Due::Now(Reason::NoCertificate));
        let more = names(&["mail.example.com", "smtp.example.com"]);
        assert_eq!(
            due(&facts(DAY, Some(&h), &more)),
            Due::Now(Reason::NamesChanged)
        );
        let mut other_key = h.clone();
        other_key.key_type_matches = false;
        assert_eq!(
            due(&facts(DAY, Some(&other_key), &w)),
            Due::Now(Reason::KeyTypeChanged)
        );
        // An ARI point after the end does not hide expiry.
        let mut f = facts(91 * DAY, Some(&h), &w);
        f.ari_chosen = Some(95 * DAY);
        assert_eq!(due(&f), Due::Now(Reason::Expired));
        // Names compare as sets.
        let swapped = Held {
            names: vec!["b.example".into(), "a.example".into(), "a.example".into()],
            ..h.clone()
        };
        assert_eq!(
            due(&facts(
                DAY,
                Some(&swapped),
                &names(&["a.example", "b.example"])
            )),
            Due::Later(60 * DAY)
        );
    }

    #[test]
    fn ari_point_overrides_the_lifetime_rule() {
        let w = names(&["mail.example.com"]);
        let h = held(0, 90);
        let mut f = facts(10 * DAY, Some(&h), &w);
        f.ari_chosen = Some(20 * DAY);
        assert_eq!(due(&f), Due::Later(20 * DAY));
        f.now = 20 * DAY;
        assert_eq!(due(&f), Due::Now(Reason::RenewalWindow));
    }

    /// RFC 9773 §4.2's example window: 2025-01-02T04:00:00Z to
    /// 2025-01-03T04:00:00Z.
    #[test]
    fn ari_pick_follows_the_rfc_example_window() {
        let start = 1_735_790_400; // 2025-01-02T04:00:00Z
        let end = 1_735_876_800; // 2025-01-03T04:00:00Z
        let before = start - 10 * DAY;
        assert_eq!(ari_pick(start, end, 0.0, before), start);
        assert_eq!(ari_pick(start, end, 0.5, before), start + DAY / 2);
        assert!(ari_pick(start, end, 0.999_999, before) < end);
        // A window that already started: renew now.
        assert_eq!(ari_pick(start, end, 0.9, start + 3600), start + 3600);
        // Random points fall inside the window and are spread out.
        let points: Vec<i64> = (0..200)
            .map(|_| ari_pick(start, end, random_unit(), before))
            .collect();
        assert!(points.iter().all(|p| (start..end).contains(p)));
        let low = points.iter().filter(|p| **p < start + DAY / 2).count();
        assert!(
            (40..160).contains(&low),
            "not uniform: {low} of 200 in the first half"
        );
    }

    #[test]
    fn backoff_grows_and_blocks_until_its_end_unless_forced() {
        assert_eq!(
            [1, 2, 3, 4, 9].map(backoff),
            [60, 600, 6_000, 86_400, 86_400]
        );
        let w = names(&["mail.example.com"]);
        let mut f = facts(1000, None, &w);
        f.next_attempt = Some(1060);
        assert_eq!(due(&f), Due::BackingOff { until: 1060 });
        f.now = 1060;
        assert_eq!(due(&f), Due::Now(Reason::NoCertificate));
        f.now = 1000;
        f.force = true;
        assert_eq!(due(&f), Due::Now(Reason::Forced));
    }
}
