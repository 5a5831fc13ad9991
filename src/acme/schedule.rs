//! When an `acme` source needs a new certificate, as pure functions of what
//! it holds, what the CA suggests, and what failed before. Pure: no clock,
//! no files, no network; `now` is a parameter, so every rule is tested with
//! tables and a fake clock.
//!
//! - No certificate, names changed, key type changed, expired, or a
//!   certificate from another `[acme] directory` or `profile` than the one
//!   configured: order now.
//! - Renewal Information (ARI, RFC 9773): a uniformly random point of the
//!   CA's suggested window, chosen once per window and kept across
//!   refetches; a new point is drawn only when the window moves (a point
//!   already past means now).
//! - Without ARI: when a third of the lifetime is left (half, for lifetimes
//!   under 10 days, like Let's Encrypt's short-lived profile).
//! - After a failure of any kind (account, lock, order): not before 1 min,
//!   then 10 min, 100 min, then daily, and never before the CA's
//!   Retry-After, so a broken setup never hammers the CA (and its rate
//!   limits). A failed ARI fetch is asked again after the CA's Retry-After
//!   or the same ladder.
//! - After a successful order the source is quiet for [`MIN_REORDER`],
//!   whatever the rules say, unless its configuration changed since; a rule
//!   still saying "due" for the certificate just issued is an error, not a
//!   new order.
//! - The daemon looks again no sooner than [`MIN_PASS_INTERVAL`] after a
//!   pass.
//! - DANE (a source serving DANE targets): a requested key rollover orders
//!   now (quiet time aside, backoff kept). Which key an order certifies is
//!   [`key_choice`]: renewals keep the current key whatever `reuse_key`
//!   says; a rollover (requested, or the `key_rollover`-th renewal since
//!   the last one, or a key type change) takes the standby key, whose
//!   TLSA record is already published. [`standby_needed`] says when a new
//!   standby key is made: missing, unusable, of another type, or now the
//!   certificate's key; [`after_issue`] keeps the renewal count.

use serde::{Deserialize, Serialize};

use crate::names::DnsName;

/// How long a source stays quiet after a successful order, unless its
/// configuration changes.
const MIN_REORDER: i64 = 3_600;

/// The daemon's renewal timer never fires sooner than this after a pass.
pub const MIN_PASS_INTERVAL: i64 = 60;

/// What an `acme` source holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    /// Its key is of the configured type.
    pub key_type_matches: bool,
}

/// What an order asked for and who issued it: kept with the certificate it
/// gave (in `state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuance {
    /// The certificate issued.
    pub sha256: String,
    pub at: i64,
    /// The `[acme] directory` it came from.
    pub directory: String,
    /// The account URL it was issued to.
    pub account: String,
    /// The `[acme] profile` configured when it was ordered.
    #[serde(default)]
    pub profile: Option<String>,
    /// The names ordered.
    pub names: Vec<String>,
    /// The configured key type (its name).
    pub key_type: String,
}

/// What the configuration asks for now.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub names: &'a [DnsName],
    pub directory: &'a str,
    pub profile: Option<&'a str>,
    pub key_type: &'a str,
}

impl Wanted<'_> {
    fn sorted_names(&self) -> Vec<&str> {
        let mut wanted: Vec<&str> = self.names.iter().map(DnsName::as_str).collect();
        wanted.sort_unstable();
        wanted.dedup();
        wanted
    }

    /// Whether `issuance` was ordered for exactly this.
    fn same_as(&self, issuance: &Issuance) -> bool {
        let mut names: Vec<&str> = issuance.names.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names == self.sorted_names()
            && issuance.directory == self.directory
            && issuance.profile.as_deref() == self.profile
            && issuance.key_type == self.key_type
    }
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
    /// The certificate came from another `[acme] directory`.
    DirectoryChanged,
    /// The certificate was ordered with another `[acme] profile`.
    ProfileChanged,
    /// The CA's renewal window (ARI) has been reached.
    RenewalWindow,
    /// A third (or half) of the lifetime is left.
    LifetimeRule,
    /// An order finalized before, whose certificate was not stored, was
    /// fetched again (not a rule of [`due`]).
    Resumed,
    /// A key rollover to the standby key was requested (DANE).
    KeyRollover,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reason::Forced => "forced",
            Reason::NoCertificate => "no certificate yet",
            Reason::NamesChanged => "the names changed",
            Reason::KeyTypeChanged => "the key type changed",
            Reason::Expired => "the certificate expired",
            Reason::DirectoryChanged => "the ACME directory changed",
            Reason::ProfileChanged => "the ACME profile changed",
            Reason::RenewalWindow => "the CA's renewal window was reached",
            Reason::LifetimeRule => "a third of its lifetime is left",
            Reason::Resumed => "an order finalized before was fetched again",
            Reason::KeyRollover => "a key rollover was requested",
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
    pub wanted: Wanted<'a>,
    /// How the certificate held was ordered, when the state recorded it
    /// (the caller passes it only for the certificate held).
    pub issuance: Option<&'a Issuance>,
    /// The renewal time chosen in the CA's ARI window, when it has one.
    pub ari_chosen: Option<i64>,
    /// Set after a failure: no order before this time.
    pub next_attempt: Option<i64>,
    pub force: bool,
    /// A key rollover is requested for this source (it serves DANE
    /// targets).
    pub rollover: bool,
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
    if f.now >= held.not_after {
        return Due::Now(Reason::Expired);
    }
    // Asked for by hand (or left by a run that was stopped): not held
    // back by the quiet time.
    if f.rollover {
        return Due::Now(Reason::KeyRollover);
    }
    let ruled = rules(f, held);
    match (quiet_until(f), ruled) {
        (Some(until), Due::Later(at)) => Due::Later(at.max(until)),
        (Some(until), _) => Due::Later(until),
        (None, ruled) => ruled,
    }
}

/// The end of the quiet time after a successful order, while the
/// configuration is what it was ordered for.
fn quiet_until(f: &Facts<'_>) -> Option<i64> {
    f.issuance
        .filter(|i| f.wanted.same_as(i))
        .map(|i| i.at.saturating_add(MIN_REORDER))
        .filter(|until| *until > f.now)
}

/// The renewal rules proper, for a certificate held and not expired.
fn rules(f: &Facts<'_>, held: &Held) -> Due {
    let mut held_names: Vec<&str> = held.names.iter().map(String::as_str).collect();
    held_names.sort_unstable();
    held_names.dedup();
    if held_names != f.wanted.sorted_names() {
        return Due::Now(Reason::NamesChanged);
    }
    if !held.key_type_matches {
        return Due::Now(Reason::KeyTypeChanged);
    }
    if let Some(issuance) = f.issuance {
        if issuance.directory != f.wanted.directory {
            return Due::Now(Reason::DirectoryChanged);
        }
        if issuance.profile.as_deref() != f.wanted.profile {
            return Due::Now(Reason::ProfileChanged);
        }
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

/// For the certificate just issued (the facts describe it): the rule that
/// would order again at once, quiet time aside. `Some` is a defect of the
/// rules or of the CA's answer, reported as an error, never a new order.
pub fn still_due(f: &Facts<'_>) -> Option<Reason> {
    let held = f.held?;
    if f.now >= held.not_after {
        return Some(Reason::Expired);
    }
    if f.rollover {
        return Some(Reason::KeyRollover);
    }
    match rules(f, held) {
        Due::Now(reason) => Some(reason),
        _ => None,
    }
}

/// Whether a failing source matters now: no certificate, or the one held
/// is within its renewal window (or expired).
pub fn urgent(now: i64, held: Option<&Held>, ari_chosen: Option<i64>) -> bool {
    held.is_none_or(|h| {
        now >= h.not_after
            || now >= ari_chosen.unwrap_or_else(|| lifetime_renewal(h.not_before, h.not_after))
    })
}

/// Whether a new order may name the certificate held in `replaces`
/// (RFC 9773 §5): only a certificate this account got from this directory,
/// for names overlapping the new order's. Boulder refuses anything else.
pub fn may_replace(
    issuance: Option<&Issuance>,
    directory: &str,
    account: &str,
    wanted: &[DnsName],
) -> bool {
    issuance.is_some_and(|i| {
        i.directory == directory
            && i.account == account
            && wanted
                .iter()
                .any(|w| i.names.iter().any(|n| n == w.as_str()))
    })
}

/// Renewal time without ARI: a third of the lifetime before the end, or
/// half of it for lifetimes under 10 days.
fn lifetime_renewal(not_before: i64, not_after: i64) -> i64 {
    let lifetime = (not_after - not_before).max(0);
    if lifetime < 10 * 86_400 {
        not_after - lifetime / 2
    } else {
        not_after - lifetime / 3
    }
}

/// The renewal point for the ARI window `[start, end]`: the point `kept`
/// (window start, end, point) when the window is the same, else a new
/// uniformly random point of it, `unit` in `[0, 1)` drawn by the caller. A
/// point already past means renew now (RFC 9773 §4.2).
pub fn ari_pick(kept: Option<(i64, i64, i64)>, start: i64, end: i64, unit: f64) -> i64 {
    if let Some((s, e, chosen)) = kept
        && (s, e) == (start, end)
    {
        return chosen;
    }
    let span = (end - start).max(0) as f64;
    start + (span * unit.clamp(0.0, 1.0)) as i64
}

/// When to ask for a certificate's ARI window again: after the CA's
/// Retry-After (in seconds), kept between a minute and a day.
pub fn ari_refetch(now: i64, retry_after: i64) -> i64 {
    now + retry_after.clamp(60, 86_400)
}

/// When to ask again after the `failures`-th failed ARI fetch: at the
/// CA's Retry-After (a time, kept between a minute and a day ahead), else
/// after the backoff.
pub fn ari_retry(now: i64, failures: u32, retry_after: Option<i64>) -> i64 {
    match retry_after {
        Some(at) => at.clamp(now + 60, now + 86_400),
        None => now + backoff(failures.max(1)),
    }
}

/// No order before this time after the `failures`-th consecutive
/// failure: the backoff, or the CA's Retry-After (a time) when later, at
/// most a week ahead.
pub fn next_attempt(now: i64, failures: u32, retry_after: Option<i64>) -> i64 {
    let ladder = now + backoff(failures.max(1));
    retry_after.map_or(ladder, |at| at.min(now + 7 * 86_400).max(ladder))
}

/// When the daemon's renewal timer fires: when the next source is due,
/// never sooner than [`MIN_PASS_INTERVAL`] after the last pass.
pub fn next_wake(last_pass: i64, due_at: i64) -> i64 {
    due_at.max(last_pass.saturating_add(MIN_PASS_INTERVAL))
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

/// Whether an order may keep the key held (`reuse_key`): only a key of the
/// configured type is ever reused.
pub fn keep_key(reuse_key: bool, held: Option<&Held>) -> bool {
    reuse_key && held.is_some_and(|h| h.key_type_matches)
}

/// The key an order certifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    /// A new key, made for this order.
    Fresh,
    /// The key of the certificate held.
    Keep,
    /// The standby key (DANE): its record is already published.
    Standby,
}

/// What [`key_choice`] decides from.
#[derive(Debug, Clone, Copy)]
pub struct KeyFacts<'a> {
    pub held: Option<&'a Held>,
    /// The source's `reuse_key`.
    pub reuse_key: bool,
    /// The source serves DANE targets (it keeps a standby key).
    pub dane: bool,
    /// A key rollover is requested.
    pub rollover: bool,
    /// Renewals that kept the key since the last rollover (or the first
    /// certificate).
    pub renewals: u32,
    /// Roll to the standby key every this many renewals.
    pub key_rollover: Option<u32>,
}

/// Which key an order certifies. Without DANE: the held key when
/// `reuse_key` allows it, else a new one. With DANE: the held key (its
/// record is published), except for a rollover: requested, the
/// `key_rollover`-th renewal, or a held key of another type than
/// configured; then the standby key. With nothing held, the standby key
/// too: its record may be published and aged already (a target still
/// serving a key whose bundle was lost), a new key's is not.
pub fn key_choice(f: &KeyFacts<'_>) -> KeyChoice {
    let Some(held) = f.held else {
        return if f.dane {
            KeyChoice::Standby
        } else {
            KeyChoice::Fresh
        };
    };
    if !f.dane {
        return if keep_key(f.reuse_key, Some(held)) {
            KeyChoice::Keep
        } else {
            KeyChoice::Fresh
        };
    }
    let counted = f
        .key_rollover
        .is_some_and(|n| f.renewals.saturating_add(1) >= n.max(1));
    if f.rollover || counted || !held.key_type_matches {
        KeyChoice::Standby
    } else {
        KeyChoice::Keep
    }
}

/// The standby key as found in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyFound {
    Missing,
    /// Not a key mxkeys can use (corrupt, unreadable, foreign).
    Unusable,
    Present {
        /// Of the source's configured key type.
        key_type_matches: bool,
        /// The key of the certificate the source holds now (a rollover
        /// happened).
        held: bool,
    },
}

/// Why a new standby key is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyReason {
    Missing,
    Unusable,
    KeyTypeChanged,
    /// The standby key became the current key.
    RolledOver,
}

impl std::fmt::Display for StandbyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StandbyReason::Missing => "there was none",
            StandbyReason::Unusable => "the file held no usable key",
            StandbyReason::KeyTypeChanged => "the key type changed",
            StandbyReason::RolledOver => "the former standby key is now the certificate's",
        })
    }
}

/// Whether a source needs a new standby key, and why: only a source
/// serving DANE targets keeps one; it is replaced when missing, unusable,
/// of another type than configured, or once it is the key of the
/// certificate held (the next rollover needs another).
pub fn standby_needed(dane: bool, found: StandbyFound) -> Option<StandbyReason> {
    if !dane {
        return None;
    }
    match found {
        StandbyFound::Missing => Some(StandbyReason::Missing),
        StandbyFound::Unusable => Some(StandbyReason::Unusable),
        StandbyFound::Present {
            key_type_matches: false,
            ..
        } => Some(StandbyReason::KeyTypeChanged),
        StandbyFound::Present { held: true, .. } => Some(StandbyReason::RolledOver),
        StandbyFound::Present { .. } => None,
    }
}

/// The key of a certificate just stored, against what the source had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKey {
    /// The standby key: a rollover.
    Standby,
    /// The key of the certificate it replaces: a renewal keeping the key.
    Same,
    /// Another key (a new key).
    Other,
}

/// After a certificate is stored: the renewals counted since the last
/// rollover, and whether a rollover request is fulfilled (only by a
/// certificate for the standby key, so a request outlives any failure or
/// crash until then).
pub fn after_issue(renewals: u32, new_key: NewKey) -> (u32, bool) {
    match new_key {
        NewKey::Standby => (0, true),
        NewKey::Same => (renewals.saturating_add(1), false),
        NewKey::Other => (0, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const DIR: &str = "https://ca.example/dir";
    const STAGING: &str = "https://staging.ca.example/dir";

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

    fn wanted(names: &[DnsName]) -> Wanted<'_> {
        Wanted {
            names,
            directory: DIR,
            profile: None,
            key_type: "EcdsaP256",
        }
    }

    fn facts<'a>(now: i64, held: Option<&'a Held>, wanted_names: &'a [DnsName]) -> Facts<'a> {
        Facts {
            now,
            held,
            wanted: wanted(wanted_names),
            issuance: None,
            ari_chosen: None,
            next_attempt: None,
            force: false,
            rollover: false,
        }
    }

    fn issuance(at: i64) -> Issuance {
        Issuance {
            sha256: "ab".repeat(32),
            at,
            directory: DIR.into(),
            account: "https://ca.example/acct/1".into(),
            profile: None,
            names: vec!["mail.example.com".into()],
            key_type: "EcdsaP256".into(),
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
    fn a_change_of_directory_or_profile_is_due_and_an_unrecorded_one_is_not() {
        let w = names(&["mail.example.com"]);
        let h = held(0, 90);
        let now = 10 * DAY;
        let same = issuance(0);
        let staging = Issuance {
            directory: STAGING.into(),
            ..issuance(0)
        };
        let profiled = Issuance {
            profile: Some("shortlived".into()),
            ..issuance(0)
        };
        // (issuance recorded, configured profile, decision)
        let table: [(Option<&Issuance>, Option<&str>, Due); 5] = [
            (Some(&same), None, Due::Later(60 * DAY)),
            (Some(&staging), None, Due::Now(Reason::DirectoryChanged)),
            (Some(&profiled), None, Due::Now(Reason::ProfileChanged)),
            (
                Some(&same),
                Some("tlsserver"),
                Due::Now(Reason::ProfileChanged),
            ),
            // A certificate from before the state recorded its CA: kept.
            (None, Some("tlsserver"), Due::Later(60 * DAY)),
        ];
        for (i, (issuance, profile, want)) in table.into_iter().enumerate() {
            let mut f = facts(now, Some(&h), &w);
            f.issuance = issuance;
            f.wanted.profile = profile;
            assert_eq!(due(&f), want, "row {i}");
        }
    }

    #[test]
    fn a_fresh_certificate_is_quiet_for_the_minimum_interval_unless_the_configuration_changed() {
        let w = names(&["mail.example.com"]);
        // A 6-day certificate whose ARI window already started.
        let h = held(0, 6);
        let just = issuance(1000);
        let mut f = facts(1000 + 1, Some(&h), &w);
        f.issuance = Some(&just);
        f.ari_chosen = Some(0);
        assert_eq!(due(&f), Due::Later(1000 + MIN_REORDER));
        f.now = 1000 + MIN_REORDER;
        assert_eq!(due(&f), Due::Now(Reason::RenewalWindow));
        // A wrong key type right after an order: quiet, and reported.
        let mut wrong = h.clone();
        wrong.key_type_matches = false;
        let mut f = facts(1001, Some(&wrong), &w);
        f.issuance = Some(&just);
        assert_eq!(due(&f), Due::Later(1000 + MIN_REORDER));
        assert_eq!(still_due(&f), Some(Reason::KeyTypeChanged));
        // The admin changes the key type, names or profile: due at once.
        f.wanted.key_type = "Rsa2048";
        assert_eq!(due(&f), Due::Now(Reason::KeyTypeChanged));
        let more = names(&["mail.example.com", "smtp.example.com"]);
        let mut f = facts(1001, Some(&h), &more);
        f.issuance = Some(&just);
        assert_eq!(due(&f), Due::Now(Reason::NamesChanged));
        let mut f = facts(1001, Some(&h), &w);
        f.issuance = Some(&just);
        f.wanted.profile = Some("shortlived");
        assert_eq!(due(&f), Due::Now(Reason::ProfileChanged));
        // Forced and expired still order.
        let mut f = facts(1001, Some(&h), &w);
        f.issuance = Some(&just);
        f.force = true;
        assert_eq!(due(&f), Due::Now(Reason::Forced));
        f.force = false;
        f.now = 7 * DAY;
        assert_eq!(due(&f), Due::Now(Reason::Expired));
        // A healthy fresh certificate: nothing to report, and its renewal
        // time as the rules say.
        let mut f = facts(1001, Some(&h), &w);
        f.issuance = Some(&just);
        assert_eq!(still_due(&f), None);
        assert_eq!(due(&f), Due::Later(3 * DAY));
    }

    #[test]
    fn a_key_of_another_type_is_never_reused() {
        let h = held(0, 90);
        let mut other = h.clone();
        other.key_type_matches = false;
        // (reuse_key, held, keep the key)
        let table = [
            (true, Some(&h), true),
            (true, Some(&other), false),
            (true, None, false),
            (false, Some(&h), false),
        ];
        for (reuse, held, want) in table {
            assert_eq!(keep_key(reuse, held), want, "{reuse} {held:?}");
        }
    }

    #[test]
    fn replaces_only_names_a_certificate_of_this_account_and_directory_with_shared_names() {
        let mine = issuance(0);
        let account = mine.account.clone();
        let w = names(&["mail.example.com", "smtp.example.com"]);
        let other = names(&["imap.example.com"]);
        // (issuance, directory, account, names, may replace)
        type Row<'a> = (Option<&'a Issuance>, &'a str, &'a str, &'a [DnsName], bool);
        let table: [Row<'_>; 5] = [
            (Some(&mine), DIR, &account, &w, true),
            (Some(&mine), STAGING, &account, &w, false),
            (Some(&mine), DIR, "https://ca.example/acct/2", &w, false),
            (Some(&mine), DIR, &account, &other, false),
            (None, DIR, &account, &w, false),
        ];
        for (i, (issuance, dir, acct, wanted, want)) in table.into_iter().enumerate() {
            assert_eq!(may_replace(issuance, dir, acct, wanted), want, "row {i}");
        }
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
        assert_eq!(ari_pick(None, start, end, 0.0), start);
        assert_eq!(ari_pick(None, start, end, 0.5), start + DAY / 2);
        assert!(ari_pick(None, start, end, 0.999_999) < end);
        // Random points fall inside the window and are spread out.
        let points: Vec<i64> = (0..200)
            .map(|_| ari_pick(None, start, end, random_unit()))
            .collect();
        assert!(points.iter().all(|p| (start..end).contains(p)));
        let low = points.iter().filter(|p| **p < start + DAY / 2).count();
        assert!(
            (40..160).contains(&low),
            "not uniform: {low} of 200 in the first half"
        );
    }

    #[test]
    fn the_ari_point_is_kept_across_refetches_until_the_window_moves() {
        let (start, end) = (10 * DAY, 12 * DAY);
        let chosen = ari_pick(None, start, end, 0.75);
        assert_eq!(chosen, 11 * DAY + DAY / 2);
        let kept = Some((start, end, chosen));
        // (window fetched again, unit drawn, point)
        let table = [
            ((start, end), 0.0, chosen),
            ((start, end), 0.99, chosen),
            // The window moved (a revocation, say): drawn again.
            ((2 * DAY, 3 * DAY), 0.5, 2 * DAY + DAY / 2),
            ((start, end + DAY), 0.0, start),
        ];
        for ((s, e), unit, want) in table {
            assert_eq!(ari_pick(kept, s, e, unit), want, "window {s}..{e}");
        }
        // A fetch after the window opened keeps the point drawn before: the
        // renewal lands where it was drawn, not at the first refetch.
        let w = names(&["mail.example.com"]);
        let h = held(0, 90);
        let mut f = facts(start + 3600, Some(&h), &w);
        f.ari_chosen = Some(ari_pick(kept, start, end, 0.0));
        assert_eq!(due(&f), Due::Later(chosen));
    }

    #[test]
    fn retry_after_sets_the_next_attempt_and_the_next_ari_fetch() {
        let now = 1_000_000;
        // (failures, Retry-After, next attempt)
        let table = [
            (1, None, now + 60),
            (2, None, now + 600),
            (1, Some(now + 3_600), now + 3_600),
            // A Retry-After sooner than the ladder: the ladder.
            (3, Some(now + 10), now + 6_000),
            // At most a week.
            (1, Some(now + 30 * DAY), now + 7 * DAY),
        ];
        for (failures, retry, want) in table {
            assert_eq!(
                next_attempt(now, failures, retry),
                want,
                "{failures} {retry:?}"
            );
        }
        // A failed ARI fetch: Retry-After (a minute to a day ahead), else
        // the ladder; a successful one: its Retry-After, likewise bounded.
        assert_eq!(ari_retry(now, 1, None), now + 60);
        assert_eq!(ari_retry(now, 3, None), now + 6_000);
        assert_eq!(ari_retry(now, 1, Some(now + 7_200)), now + 7_200);
        assert_eq!(ari_retry(now, 1, Some(now - 5)), now + 60);
        assert_eq!(ari_retry(now, 1, Some(now + 9 * DAY)), now + DAY);
        assert_eq!(ari_refetch(now, 0), now + 60);
        assert_eq!(ari_refetch(now, 21_600), now + 21_600);
    }

    #[test]
    fn the_renewal_timer_waits_the_minimum_interval_after_a_pass() {
        // (last pass, next due, wake)
        let table = [
            (1000, 0, 1000 + MIN_PASS_INTERVAL),
            (1000, 1000, 1000 + MIN_PASS_INTERVAL),
            (1000, 1030, 1000 + MIN_PASS_INTERVAL),
            (1000, 5000, 5000),
        ];
        for (last, at, want) in table {
            assert_eq!(next_wake(last, at), want, "{last} {at}");
        }
    }

    /// Ten minutes of a CA that refuses everything (a bad account, a rate
    /// limit without Retry-After, an ARI endpoint answering 500), driven
    /// through the daemon's own rules with a fake clock: a handful of
    /// requests, not one a second.
    #[test]
    fn ten_minutes_of_failures_make_a_handful_of_requests() {
        let w = names(&["mail.example.com"]);
        let h = held(0, 6);
        let start = 3 * DAY; // renewal due at 3 days: from the first second
        let (mut now, mut orders, mut ari_fetches) = (start, 0, 0);
        let (mut failures, mut next): (u32, Option<i64>) = (0, None);
        let (mut ari_failures, mut ari_at) = (0u32, start);
        while now < start + 600 {
            if now >= ari_at {
                ari_fetches += 1;
                ari_failures += 1;
                ari_at = ari_retry(now, ari_failures, None);
            }
            let mut f = facts(now, Some(&h), &w);
            f.next_attempt = next;
            f.now = now;
            let at = match due(&f) {
                Due::Now(_) => {
                    orders += 1;
                    failures += 1;
                    let n = next_attempt(now, failures, None);
                    next = Some(n);
                    n
                }
                Due::Later(at) => at,
                Due::BackingOff { until } => until,
            };
            now = next_wake(now, at.min(ari_at));
        }
        // At 0 and 1 min; the next at 11 min.
        assert_eq!(orders, 2, "orders in 10 minutes");
        assert_eq!(ari_fetches, 2, "ARI fetches in 10 minutes");
    }

    #[test]
    fn urgency_is_a_missing_certificate_or_one_within_its_renewal_window() {
        let h = held(0, 90);
        // (now, ARI point, urgent)
        let table = [
            (DAY, None, false),
            (60 * DAY, None, true),
            (DAY, Some(2 * DAY), false),
            (3 * DAY, Some(2 * DAY), true),
            (91 * DAY, Some(95 * DAY), true),
        ];
        for (now, ari, want) in table {
            assert_eq!(urgent(now, Some(&h), ari), want, "{now} {ari:?}");
        }
        assert!(urgent(DAY, None, None));
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

    #[test]
    fn a_requested_rollover_orders_now_even_in_the_quiet_time_but_not_while_backing_off() {
        let w = names(&["mail.example.com"]);
        let h = held(0, 90);
        let i = issuance(DAY);
        let mut f = facts(DAY + 60, Some(&h), &w);
        f.issuance = Some(&i);
        // Quiet after the order, not due for two months.
        assert_eq!(due(&f), Due::Later(60 * DAY));
        f.rollover = true;
        assert_eq!(due(&f), Due::Now(Reason::KeyRollover));
        // Still due for the certificate just issued: the request was not
        // fulfilled, an error rather than another order at once.
        assert_eq!(still_due(&f), Some(Reason::KeyRollover));
        f.next_attempt = Some(DAY + 120);
        assert_eq!(due(&f), Due::BackingOff { until: DAY + 120 });
        // Nothing held: the first certificate, whatever was asked.
        let mut none = facts(DAY, None, &w);
        none.rollover = true;
        assert_eq!(due(&none), Due::Now(Reason::NoCertificate));
    }

    #[test]
    fn dane_sources_keep_their_key_and_roll_to_the_standby_when_asked_or_counted() {
        use KeyChoice::*;
        let h = held(0, 90);
        let mut other_type = h.clone();
        other_type.key_type_matches = false;
        let (h, other_type) = (Some(&h), Some(&other_type));
        // (serves DANE, reuse_key, held, rollover asked, renewals,
        // key_rollover, choice)
        let table = [
            // Without DANE: reuse_key decides, as before; a rollover
            // request means nothing.
            (false, false, h, false, 0, None, Fresh),
            (false, true, h, false, 0, None, Keep),
            (false, true, other_type, false, 0, None, Fresh),
            (false, false, h, true, 0, None, Fresh),
            (false, true, None, false, 0, None, Fresh),
            // DANE: the key is kept whatever reuse_key says.
            (true, false, h, false, 0, None, Keep),
            (true, true, h, false, 0, None, Keep),
            (true, false, h, false, 500, None, Keep),
            // A rollover: asked, a key of another type, or nothing held
            // (the standby's record may be aged; a new key's is not).
            (true, false, h, true, 0, None, Standby),
            (true, false, other_type, false, 0, None, Standby),
            (true, false, None, false, 0, None, Standby),
            // key_rollover = 2: the first renewal keeps, the second rolls.
            (true, false, h, false, 0, Some(2), Keep),
            (true, false, h, false, 1, Some(2), Standby),
            (true, false, h, false, 5, Some(2), Standby),
            (true, false, h, false, 0, Some(1), Standby),
            (true, false, h, false, 0, Some(0), Standby),
        ];
        for (dane, reuse_key, held, rollover, renewals, key_rollover, want) in table {
            let facts = KeyFacts {
                held,
                reuse_key,
                dane,
                rollover,
                renewals,
                key_rollover,
            };
            assert_eq!(key_choice(&facts), want, "{facts:?}");
        }
    }

    #[test]
    fn a_new_standby_key_is_made_when_missing_unusable_retyped_or_rolled_into_service() {
        use StandbyFound::*;
        let present = |key_type_matches, held| Present {
            key_type_matches,
            held,
        };
        // (serves DANE, found, new standby because)
        let table = [
            (true, Missing, Some(StandbyReason::Missing)),
            (true, Unusable, Some(StandbyReason::Unusable)),
            (
                true,
                present(false, false),
                Some(StandbyReason::KeyTypeChanged),
            ),
            (
                true,
                present(false, true),
                Some(StandbyReason::KeyTypeChanged),
            ),
            (true, present(true, true), Some(StandbyReason::RolledOver)),
            (true, present(true, false), None),
            // Without DANE nothing is made (nor removed).
            (false, Missing, None),
            (false, Unusable, None),
            (false, present(true, true), None),
        ];
        for (dane, found, want) in table {
            assert_eq!(standby_needed(dane, found), want, "{dane} {found:?}");
        }
    }

    #[test]
    fn renewals_are_counted_until_a_certificate_for_the_standby_key_fulfils_the_request() {
        // (renewals before, new key, (renewals after, request fulfilled))
        let table = [
            (0, NewKey::Same, (1, false)),
            (1, NewKey::Same, (2, false)),
            (u32::MAX, NewKey::Same, (u32::MAX, false)),
            (3, NewKey::Standby, (0, true)),
            (0, NewKey::Standby, (0, true)),
            (3, NewKey::Other, (0, false)),
        ];
        for (before, new_key, want) in table {
            assert_eq!(after_issue(before, new_key), want, "{before} {new_key:?}");
        }
        // key_rollover = 2 through the rules: issue, renew (keep), renew
        // (roll), renew (keep), renew (roll).
        let h = held(0, 90);
        let mut renewals = 0;
        let mut chosen = Vec::new();
        for _ in 0..4 {
            let choice = key_choice(&KeyFacts {
                held: Some(&h),
                reuse_key: false,
                dane: true,
                rollover: false,
                renewals,
                key_rollover: Some(2),
            });
            let new_key = match choice {
                KeyChoice::Standby => NewKey::Standby,
                KeyChoice::Keep => NewKey::Same,
                KeyChoice::Fresh => NewKey::Other,
            };
            renewals = after_issue(renewals, new_key).0;
            chosen.push(choice);
        }
        use KeyChoice::*;
        assert_eq!(chosen, [Keep, Standby, Keep, Standby]);
    }
}
