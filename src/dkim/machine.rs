//! The DKIM key life cycle as a pure state machine, per domain and
//! algorithm:
//!
//! ```text
//! generated -> published -> (seen on every authoritative server, then `lead`)
//!   -> active (signs) -> (successor active) -> draining (record kept)
//!   -> (after `drain`) -> revoked (p=) -> (after `revoke_hold`) -> deleted
//! ```
//!
//! A group is a domain and an algorithm family (RSA or Ed25519: one RSA
//! size is configured at a time). A successor is generated when a group has
//! no key on its way to signing, when its active key is `rotate_every` old,
//! or when its active key is of another size than configured (an imported
//! rsa-1024 key, a changed `algorithms`): the old key signs until the
//! successor does. Transitions happen only in
//! this order: a key never signs before its record was verified, and a
//! record never disappears while mail signed with it may still be in
//! flight. [`next_step`] names one step at a time; the caller performs it,
//! saves the new state, and asks again, so a crash between any two steps
//! leaves a state the next run continues from.
//!
//! No signing gap: from its first activation on, every configured group
//! has a key of its family active at every moment (an active key drains
//! only once a later key of its family is active), unless the user
//! removed the family or revoked its only key with `--force`
//! ([`request_revoke`] refuses otherwise). Safe revocation: `p=` is never
//! due while a signer reload is owed, nor before the last reload settled
//! ([`revoke_at`]), so DNS never calls a key revoked while the signer may
//! still sign with it.
//!
//! Slots: under a selector template with `{slot}` (delegation by CNAME,
//! where each selector needs a CNAME the user makes once) a group has two
//! fixed selectors ([`slot_selectors`]). A new key takes one no key of the
//! book holds in any state ([`free_slot`]); a slot frees only when its key
//! is deleted (`revoke_hold` after `p=`), and while none is free the group
//! waits ([`slot_wait`] says why) instead of generating.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A DKIM signing algorithm and key size. Serialized into the state file
/// and written in `[dkim] algorithms` by these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub enum DkimAlgorithm {
    #[serde(rename = "rsa-1024")]
    Rsa1024,
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    #[serde(rename = "rsa-3072")]
    Rsa3072,
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl DkimAlgorithm {
    pub fn is_rsa(self) -> bool {
        !matches!(self, DkimAlgorithm::Ed25519)
    }

    /// `{alg}` in selector templates.
    fn letter(self) -> &'static str {
        if self.is_rsa() { "r" } else { "e" }
    }

    /// The family a group is made of: `rsa` or `ed25519`.
    pub fn family(self) -> &'static str {
        if self.is_rsa() { "rsa" } else { "ed25519" }
    }

    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::Rsa1024 => "rsa-1024",
            DkimAlgorithm::Rsa2048 => "rsa-2048",
            DkimAlgorithm::Rsa3072 => "rsa-3072",
            DkimAlgorithm::Ed25519 => "ed25519",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Generated,
    Published,
    Active,
    Draining,
    Revoked,
}

impl std::fmt::Display for KeyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyState::Generated => "generated",
            KeyState::Published => "published",
            KeyState::Active => "active",
            KeyState::Draining => "draining",
            KeyState::Revoked => "revoked",
        })
    }
}

/// One key and what has happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub domain: String,
    pub algorithm: DkimAlgorithm,
    pub selector: String,
    pub file: PathBuf,
    /// The record value publishing it (public).
    pub record: String,
    pub state: KeyState,
    /// When it entered `state`.
    pub since: i64,
    pub created_at: i64,
    /// When every authoritative server was seen answering `record`.
    pub verified_at: Option<i64>,
    pub activated_at: Option<i64>,
    /// When it entered each state it has been in (the timeline `status`
    /// draws). Books written before this field know only `since`, for
    /// the present state.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entered: BTreeMap<KeyState, i64>,
}

impl Key {
    /// Moves the key to `state` at `now`, recording when.
    pub fn enter(&mut self, state: KeyState, now: i64) {
        self.state = state;
        self.since = now;
        self.entered.insert(state, now);
    }

    /// When it entered `state`, if known: recorded by [`Key::enter`], or
    /// `since` for the present state of a book older than that record.
    pub fn entered_at(&self, state: KeyState) -> Option<i64> {
        self.entered
            .get(&state)
            .copied()
            .or_else(|| (self.state == state).then_some(self.since))
    }

    /// `SELECTOR._domainkey.DOMAIN`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

/// Every key mxkeys manages, and every selector it ever used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Book {
    pub keys: Vec<Key>,
    /// Per domain: selectors used, never to be used again.
    pub used_selectors: BTreeMap<String, BTreeSet<String>>,
    /// The signer's files changed but it was not reloaded yet (a run was
    /// interrupted): the next pass reloads it.
    #[serde(default)]
    pub signer_reload_pending: bool,
    /// Record names (`SELECTOR._domainkey.DOMAIN`) whose revocation was
    /// asked for (`mxkeys dkim revoke`): revoked as soon as they are out
    /// of the signer, whatever `drain` says.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub revoke_now: BTreeSet<String>,
    /// When the signer was last reloaded successfully: sessions it
    /// accepted before may still sign with a dropped key for
    /// [`Policy::revoke_settle`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_reloaded_at: Option<i64>,
}

/// The durations of `[dkim]`, in seconds, and its slot template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub rotate_every: i64,
    pub lead: i64,
    pub drain: i64,
    pub revoke_hold: i64,
    /// After a successful signer reload, how long before `p=` may be
    /// published for a key it dropped (at most `drain` for a scheduled
    /// revocation).
    pub revoke_settle: i64,
    /// The selector template when it names slots (`{slot}`, `{host}`
    /// already replaced): a new key takes a free slot ([`free_slot`]) and
    /// its group waits while none is.
    pub slots: Option<String>,
}

/// One thing to do now. Indices point into [`Book::keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new key (and selector) for this group.
    Generate {
        domain: String,
        algorithm: DkimAlgorithm,
    },
    /// Write the key's record.
    Publish(usize),
    /// Check every authoritative server answers the record.
    Verify(usize),
    /// The signer starts signing with it.
    Activate(usize),
    /// Out of the signer; the record stays.
    Drain(usize),
    /// Publish `p=` (revoked). Never while a signer reload is owed: the
    /// key must be out of the signer the mail goes through first.
    Revoke(usize),
    /// Delete the record and the key file.
    Delete(usize),
}

/// The next step, given the configured groups (`wanted`), the time, the
/// groups whose rotation is forced, and the keys whose verification already
/// failed in this pass (`waiting`, not retried until the next pass).
pub fn next_step(
    book: &Book,
    wanted: &[(String, DkimAlgorithm)],
    policy: &Policy,
    now: i64,
    forced: &BTreeSet<(String, DkimAlgorithm)>,
    waiting: &BTreeSet<usize>,
) -> Option<Step> {
    let is_wanted = |k: &Key| wanted.iter().any(|(d, a)| in_group(k, d, *a));
    // Keys ordered oldest first, per group.
    // Keys are kept in creation order: a later active key of the same group
    // is the successor (timestamps have one-second resolution and two
    // activations can share a second).
    let newer_active = |i: usize| {
        let k = &book.keys[i];
        book.keys[i + 1..]
            .iter()
            .any(|o| in_group(o, &k.domain, k.algorithm) && o.state == KeyState::Active)
    };
    for (i, k) in book.keys.iter().enumerate() {
        let step = match k.state {
            KeyState::Revoked if now >= k.since + policy.revoke_hold => Some(Step::Delete(i)),
            // Out of the signer's files, but until the signer reloaded them
            // it may still sign with it: p= waits for the reload.
            KeyState::Draining
                if !book.signer_reload_pending && now >= revoke_at(book, k, policy) =>
            {
                Some(Step::Revoke(i))
            }
            // Never published: nothing signed with it can be in flight.
            KeyState::Generated | KeyState::Published if !is_wanted(k) => Some(Step::Delete(i)),
            KeyState::Active if !is_wanted(k) || newer_active(i) => Some(Step::Drain(i)),
            KeyState::Generated => Some(Step::Publish(i)),
            KeyState::Published if k.verified_at.is_none() && !waiting.contains(&i) => {
                Some(Step::Verify(i))
            }
            KeyState::Published if k.verified_at.is_some_and(|v| now >= v + policy.lead) => {
                Some(Step::Activate(i))
            }
            _ => None,
        };
        if step.is_some() {
            return step;
        }
    }
    for (domain, algorithm) in wanted {
        let group: Vec<&Key> = book
            .keys
            .iter()
            .filter(|k| in_group(k, domain, *algorithm))
            .collect();
        let pending = group
            .iter()
            .any(|k| matches!(k.state, KeyState::Generated | KeyState::Published));
        if pending {
            continue;
        }
        let newest_active = group
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .filter_map(|k| k.activated_at.map(|at| (at, k.algorithm)))
            .max_by_key(|(at, _)| *at);
        let due = match newest_active {
            None => true,
            Some((_, other)) if other != *algorithm => true,
            Some((at, _)) => now >= at + policy.rotate_every,
        };
        if (due || forced.contains(&(domain.clone(), *algorithm)))
            && slot_free(book, domain, *algorithm, policy)
        {
            return Some(Step::Generate {
                domain: domain.clone(),
                algorithm: *algorithm,
            });
        }
    }
    None
}

/// When a key's next timed transition is due (`None` when it waits on
/// nothing timed).
pub fn next_transition(book: &Book, k: &Key, policy: &Policy) -> Option<(i64, &'static str)> {
    match k.state {
        KeyState::Generated => Some((k.since, "publish")),
        KeyState::Published => match k.verified_at {
            None => Some((k.since, "verify on every authoritative server")),
            Some(v) => Some((v + policy.lead, "activate")),
        },
        KeyState::Active => {
            let successor = book.keys.iter().any(|o| {
                in_group(o, &k.domain, k.algorithm)
                    && matches!(o.state, KeyState::Generated | KeyState::Published)
            });
            if successor {
                None
            } else if !slot_free(book, &k.domain, k.algorithm, policy) {
                // No slot is free: the successor waits for a key holding
                // one to move on (its own transition, also in `earliest`).
                let freed = slot_holders(book, &k.domain, k.algorithm, policy)
                    .filter_map(|h| match h.state {
                        KeyState::Draining => Some(revoke_at(book, h, policy)),
                        KeyState::Revoked => Some(h.since + policy.revoke_hold),
                        _ => None,
                    })
                    .min()?;
                k.activated_at.map(|a| {
                    (
                        (a + policy.rotate_every).max(freed),
                        "start a successor, once a slot is free",
                    )
                })
            } else {
                k.activated_at
                    .map(|a| (a + policy.rotate_every, "start a successor"))
            }
        }
        KeyState::Draining if book.revoke_now.contains(&k.record_name()) => Some((
            revoke_at(book, k, policy),
            "revoke (asked for), once the signer reloaded",
        )),
        KeyState::Draining => Some((revoke_at(book, k, policy), "revoke")),
        KeyState::Revoked => Some((k.since + policy.revoke_hold, "delete")),
    }
}

/// Per configured group (domain and algorithm family) that a key of the
/// book ever signed for: how many of its keys sign now. A group that never
/// had an active key (before its first key's `lead` ran out) is left out:
/// the signer's existing files still sign it. In `wanted` order, one entry
/// per group.
pub fn signing_keys<'w>(
    book: &Book,
    wanted: &'w [(String, DkimAlgorithm)],
) -> Vec<(&'w str, &'static str, usize)> {
    let mut out: Vec<(&str, &'static str, usize)> = Vec::new();
    for (domain, algorithm) in wanted {
        let family = algorithm.family();
        if out.iter().any(|(d, f, _)| d == domain && *f == family) {
            continue;
        }
        let group: Vec<&Key> = book
            .keys
            .iter()
            .filter(|k| in_group(k, domain, *algorithm))
            .collect();
        if group.iter().any(|k| k.activated_at.is_some()) {
            let active = group.iter().filter(|k| k.state == KeyState::Active).count();
            out.push((domain, family, active));
        }
    }
    out
}

/// When draining key `k` may be revoked (given no signer reload is owed):
/// after `drain`, or at once when asked for (`dkim revoke`), and in both
/// cases once the signer's last reload settled (`revoke_settle`, at most
/// `drain` for a scheduled revocation).
pub fn revoke_at(book: &Book, k: &Key, policy: &Policy) -> i64 {
    let asked = book.revoke_now.contains(&k.record_name());
    let (due, settle) = if asked {
        (k.since, policy.revoke_settle)
    } else {
        (
            k.since + policy.drain,
            policy.revoke_settle.min(policy.drain),
        )
    };
    let settled = book.signer_reloaded_at.map_or(i64::MIN, |t| t + settle);
    due.max(settled)
}

/// Whether `k` belongs to the group of `domain` and `algorithm`: the same
/// domain and algorithm family (an RSA key of another size is the group's
/// key until its successor signs).
pub fn in_group(k: &Key, domain: &str, algorithm: DkimAlgorithm) -> bool {
    k.domain == domain && k.algorithm.is_rsa() == algorithm.is_rsa()
}

/// Whether a key of the group of `domain` and `algorithm` (its family)
/// signs: the invariant is that every configured group signs from its
/// first activation on, unless the user removed its family or revoked its
/// only key with `--force`. The tests check it after every step; the
/// machine itself keeps it by construction.
#[cfg(test)]
fn signs(book: &Book, domain: &str, algorithm: DkimAlgorithm) -> bool {
    book.keys
        .iter()
        .any(|k| k.state == KeyState::Active && in_group(k, domain, algorithm))
}

/// Why [`request_revoke`] did nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeRefused {
    /// Already revoked (its `p=` record is published or being deleted).
    AlreadyRevoked,
    /// The key is the only one of its configured family that signs for
    /// its domain, and no verified successor can take over: revoking it
    /// leaves the domain without a signature of that family until a new
    /// key is published and verified. Only with `force`.
    OnlyKey,
}

/// Forgets the revocations asked for ([`Book::revoke_now`]) that no key
/// still owes: the key is revoked already or gone. A run stopped between
/// writing `p=` and forgetting the request leaves one behind; under a slot
/// template a later key takes the same record name, and a stale request
/// would revoke it. Returns whether any was forgotten.
pub fn forget_finished_revocations(book: &mut Book) -> bool {
    let before = book.revoke_now.len();
    let owed: BTreeSet<String> = book
        .keys
        .iter()
        .filter(|k| k.state != KeyState::Revoked)
        .map(Key::record_name)
        .collect();
    book.revoke_now.retain(|name| owed.contains(name));
    book.revoke_now.len() != before
}

/// `mxkeys dkim revoke` decided: key `i` leaves the signer now (state
/// draining) and is marked for revocation ([`Book::revoke_now`]), so the
/// next [`next_step`] revokes it once the signer was reloaded without it.
/// A verified successor of the same family signs at once, whatever the
/// lead says. Refused when this would leave a configured family of the
/// domain unsigned, unless `force`.
pub fn request_revoke(
    book: &mut Book,
    wanted: &[(String, DkimAlgorithm)],
    i: usize,
    now: i64,
    force: bool,
) -> Result<(), RevokeRefused> {
    let k = book.keys[i].clone();
    if k.state == KeyState::Revoked {
        return Err(RevokeRefused::AlreadyRevoked);
    }
    let successor = book.keys.iter().position(|s| {
        in_group(s, &k.domain, k.algorithm)
            && s.state == KeyState::Published
            && s.verified_at.is_some()
    });
    let others_sign =
        book.keys.iter().enumerate().any(|(j, o)| {
            j != i && o.state == KeyState::Active && in_group(o, &k.domain, k.algorithm)
        });
    let wanted_family = wanted.iter().any(|(d, a)| in_group(&k, d, *a));
    if k.state == KeyState::Active && wanted_family && !others_sign && successor.is_none() && !force
    {
        return Err(RevokeRefused::OnlyKey);
    }
    if k.state == KeyState::Active
        && let Some(s) = successor
    {
        let s = &mut book.keys[s];
        s.enter(KeyState::Active, now);
        s.activated_at = Some(now);
    }
    let k = &mut book.keys[i];
    if k.state != KeyState::Draining {
        k.enter(KeyState::Draining, now);
    }
    book.revoke_now.insert(k.record_name());
    Ok(())
}

/// How long after a failed signer reload it is tried again, in seconds.
const RELOAD_RETRY: i64 = 30;

/// When the next DKIM pass is due: now when a step is due now (a group
/// without a key, a key to publish or verify...), [`RELOAD_RETRY`] from
/// now while a signer reload is owed (a reload failed: it is retried on a
/// short timer, not at the next timed transition days away), else the
/// earliest timed transition.
pub fn next_due(
    book: &Book,
    wanted: &[(String, DkimAlgorithm)],
    policy: &Policy,
    now: i64,
) -> Option<i64> {
    let none = BTreeSet::new();
    if next_step(book, wanted, policy, now, &none, &BTreeSet::new()).is_some() {
        return Some(now);
    }
    let timed = earliest(book, policy);
    if book.signer_reload_pending {
        // A transition already past waits on the reload (a revocation):
        // it is retried with the reload, not in a busy loop.
        let retry = now + RELOAD_RETRY;
        return Some(timed.filter(|t| *t > now).map_or(retry, |t| t.min(retry)));
    }
    timed
}

/// The earliest timed transition of all keys (the daemon's next wake-up).
fn earliest(book: &Book, policy: &Policy) -> Option<i64> {
    book.keys
        .iter()
        .filter_map(|k| next_transition(book, k, policy).map(|(t, _)| t))
        .min()
}

/// A selector from the template, never one used before for the domain:
/// `{alg}` r/e, `{date}` YYYYMMDD, `{n}` 1, 2, 3...; a template without
/// `{n}` gets `-2`, `-3`... appended when the plain form was used.
pub fn selector(
    template: &str,
    algorithm: DkimAlgorithm,
    date: &str,
    used: &BTreeSet<String>,
) -> String {
    let base = template
        .replace("{alg}", algorithm.letter())
        .replace("{date}", date);
    // `used` is finite, so an unused candidate comes before `n` wraps.
    let mut n: u64 = 1;
    loop {
        let candidate = if base.contains("{n}") {
            base.replace("{n}", &n.to_string())
        } else if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        if !used.contains(&candidate) {
            return candidate;
        }
        n = n.wrapping_add(1);
    }
}

/// This host's selector template: `{host}` replaced by its host id, so
/// that hosts sharing a domain never pick the same selector (the
/// configuration refuses `{host}` without a host id; a template without
/// it is returned as it is).
pub fn host_template(template: &str, host: Option<&str>) -> String {
    match host {
        Some(h) => template.replace("{host}", h),
        None => template.to_owned(),
    }
}

/// The slots a selector template with `{slot}` gives each group.
pub const SLOTS: u32 = 2;

/// Whether `template` names slots (`{slot}`): its selectors are a fixed
/// set, reused in turn, so a delegating CNAME per selector is made once.
pub fn is_slot_template(template: &str) -> bool {
    template.contains("{slot}")
}

/// The selectors of a group under a slot template, slot 1 first: `{slot}`
/// 1 and 2, `{alg}` r/e, `{host}` the host id when given. Empty for a
/// template without `{slot}` (its selectors are never reused, so there is
/// no fixed set).
pub fn slot_selectors(template: &str, algorithm: DkimAlgorithm, host: Option<&str>) -> Vec<String> {
    if !is_slot_template(template) {
        return Vec::new();
    }
    let base = host_template(template, host).replace("{alg}", algorithm.letter());
    (1..=SLOTS)
        .map(|n| base.replace("{slot}", &n.to_string()))
        .collect()
}

/// The slots of the group of `domain` and `algorithm` under the policy's
/// slot template that no key of the book holds, in whatever state
/// (generated to revoked: a slot frees only when its key is deleted, its
/// record gone), slot 1 first. Under a slot template the never-reuse rule
/// of [`Book::used_selectors`] does not apply: the user's CNAME for each
/// slot is fixed, and a slot's last key was revoked `revoke_hold` before
/// its record was deleted, so mail it signed is long verified. Empty
/// without a slot template.
pub fn free_slots(
    book: &Book,
    domain: &str,
    algorithm: DkimAlgorithm,
    policy: &Policy,
) -> Vec<String> {
    let Some(template) = &policy.slots else {
        return Vec::new();
    };
    slot_selectors(template, algorithm, None)
        .into_iter()
        .filter(|s| {
            !book
                .keys
                .iter()
                .any(|k| k.domain == domain && &k.selector == s)
        })
        .collect()
}

/// The first of [`free_slots`], if any.
pub fn free_slot(
    book: &Book,
    domain: &str,
    algorithm: DkimAlgorithm,
    policy: &Policy,
) -> Option<String> {
    free_slots(book, domain, algorithm, policy)
        .into_iter()
        .next()
}

/// Whether a new key of the group can be made: always without a slot
/// template, else when a slot is free.
fn slot_free(book: &Book, domain: &str, algorithm: DkimAlgorithm, policy: &Policy) -> bool {
    policy.slots.is_none() || free_slot(book, domain, algorithm, policy).is_some()
}

/// The keys of the book holding a slot of the group.
fn slot_holders<'b>(
    book: &'b Book,
    domain: &str,
    algorithm: DkimAlgorithm,
    policy: &Policy,
) -> impl Iterator<Item = &'b Key> {
    let slots = policy
        .slots
        .as_deref()
        .map(|t| slot_selectors(t, algorithm, None))
        .unwrap_or_default();
    book.keys
        .iter()
        .filter(move |k| k.domain == domain && slots.contains(&k.selector))
}

/// Why the group of `domain` and `algorithm` waits for a slot, when its
/// rotation is due (or `forced`) and no slot is free: one line naming each
/// slot and the state of the key holding it. `None` when it does not wait.
pub fn slot_wait(
    book: &Book,
    domain: &str,
    algorithm: DkimAlgorithm,
    policy: &Policy,
    now: i64,
    forced: bool,
) -> Option<String> {
    if slot_free(book, domain, algorithm, policy) {
        return None;
    }
    let newest = book
        .keys
        .iter()
        .filter(|k| in_group(k, domain, algorithm) && k.state == KeyState::Active)
        .filter_map(|k| k.activated_at)
        .max();
    let due = newest.is_none_or(|a| now >= a + policy.rotate_every);
    let pending = book.keys.iter().any(|k| {
        in_group(k, domain, algorithm)
            && matches!(k.state, KeyState::Generated | KeyState::Published)
    });
    if pending || !(due || forced) {
        return None;
    }
    let held: Vec<String> = slot_holders(book, domain, algorithm, policy)
        .map(|k| format!("{} {}", k.selector, k.state))
        .collect();
    Some(format!(
        "{domain}: the next {} key waits for a free slot ({}): a slot frees when its key is deleted, revoke_hold after p=",
        algorithm.family(),
        held.join(", ")
    ))
}

/// The selector for a new key: [`selector`] passing over those used
/// before and those whose record name was found `occupied` in DNS (a
/// record mxkeys did not write: another host's key, a live record after
/// `state_dir` was lost). An occupied name is never published over.
pub fn free_selector(
    template: &str,
    algorithm: DkimAlgorithm,
    date: &str,
    used: &BTreeSet<String>,
    occupied: &BTreeSet<String>,
) -> String {
    let skip: BTreeSet<String> = used.union(occupied).cloned().collect();
    selector(template, algorithm, date, &skip)
}

/// Whether a record name holding `existing` may take a new key's record:
/// only when it holds nothing (a record equal to `ours` was written by
/// mxkeys itself in an interrupted run).
pub fn name_is_free(existing: &[String], ours: Option<&str>) -> bool {
    existing.is_empty() || ours.is_some_and(|o| existing.len() == 1 && existing[0] == o)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    const RSA: DkimAlgorithm = DkimAlgorithm::Rsa2048;

    fn policy() -> Policy {
        Policy {
            rotate_every: 90 * DAY,
            lead: 2 * DAY,
            drain: 7 * DAY,
            revoke_hold: 30 * DAY,
            revoke_settle: 5,
            slots: None,
        }
    }

    fn wanted() -> Vec<(String, DkimAlgorithm)> {
        vec![("example.com".to_owned(), RSA)]
    }

    /// Performs steps like the executor, with every verification passing
    /// when `dns_ok`, and returns the steps taken.
    fn pass(book: &mut Book, now: i64, dns_ok: bool) -> Vec<Step> {
        pass_with(book, &wanted(), &policy(), now, dns_ok, &BTreeSet::new())
    }

    /// [`pass`] with its own groups, policy and forced groups; under a
    /// slot template a new key takes the first free slot.
    fn pass_with(
        book: &mut Book,
        wanted: &[(String, DkimAlgorithm)],
        policy: &Policy,
        now: i64,
        dns_ok: bool,
        forced: &BTreeSet<(String, DkimAlgorithm)>,
    ) -> Vec<Step> {
        let mut taken = Vec::new();
        let mut waiting = BTreeSet::new();
        let mut forced = forced.clone();
        while let Some(step) = next_step(book, wanted, policy, now, &forced, &waiting) {
            taken.push(step.clone());
            match step {
                Step::Generate { domain, algorithm } => {
                    forced.remove(&(domain.clone(), algorithm));
                    let sel = if policy.slots.is_some() {
                        free_slot(book, &domain, algorithm, policy).expect("a free slot")
                    } else {
                        let used = book.used_selectors.entry(domain.clone()).or_default();
                        let sel = selector("{alg}{date}", algorithm, &now.to_string(), used);
                        used.insert(sel.clone());
                        sel
                    };
                    book.keys.push(Key {
                        domain,
                        algorithm,
                        file: PathBuf::from(format!("/k/{sel}")),
                        selector: sel,
                        record: "v=DKIM1; k=rsa; p=X".into(),
                        state: KeyState::Generated,
                        since: now,
                        created_at: now,
                        verified_at: None,
                        activated_at: None,
                        entered: Default::default(),
                    });
                }
                Step::Publish(i) => {
                    book.keys[i].state = KeyState::Published;
                    book.keys[i].since = now;
                }
                Step::Verify(i) if dns_ok => book.keys[i].verified_at = Some(now),
                Step::Verify(i) => {
                    waiting.insert(i);
                }
                Step::Activate(i) => {
                    book.keys[i].state = KeyState::Active;
                    book.keys[i].since = now;
                    book.keys[i].activated_at = Some(now);
                }
                Step::Drain(i) => {
                    book.keys[i].state = KeyState::Draining;
                    book.keys[i].since = now;
                }
                Step::Revoke(i) => {
                    book.keys[i].state = KeyState::Revoked;
                    book.keys[i].since = now;
                    let name = book.keys[i].record_name();
                    book.revoke_now.remove(&name);
                }
                Step::Delete(i) => {
                    book.keys.remove(i);
                }
            }
            assert!(taken.len() < 50, "no progress: {taken:?}");
        }
        taken
    }

    fn states(book: &Book) -> Vec<KeyState> {
        book.keys.iter().map(|k| k.state).collect()
    }

    #[test]
    fn a_full_rotation_in_order() {
        let mut b = Book::default();
        // Day 0: generated and published, verified, but not active before the lead.
        pass(&mut b, 0, true);
        assert_eq!(states(&b), [KeyState::Published]);
        pass(&mut b, DAY, true);
        assert_eq!(states(&b), [KeyState::Published]);
        pass(&mut b, 2 * DAY, true);
        assert_eq!(states(&b), [KeyState::Active]);
        // Day 92: rotation due: a successor is published, the old key still signs.
        pass(&mut b, 92 * DAY, true);
        assert_eq!(states(&b), [KeyState::Active, KeyState::Published]);
        // Two days later the successor signs and the old key drains.
        pass(&mut b, 94 * DAY, true);
        assert_eq!(states(&b), [KeyState::Draining, KeyState::Active]);
        assert_ne!(b.keys[0].selector, b.keys[1].selector);
        pass(&mut b, 100 * DAY, true);
        assert_eq!(states(&b), [KeyState::Draining, KeyState::Active]);
        pass(&mut b, 101 * DAY, true);
        assert_eq!(states(&b), [KeyState::Revoked, KeyState::Active]);
        pass(&mut b, 131 * DAY, true);
        assert_eq!(states(&b), [KeyState::Active]);
    }

    #[test]
    fn never_active_before_verified() {
        let mut b = Book::default();
        for day in 0..10 {
            pass(&mut b, day * DAY, false);
            assert_eq!(states(&b), [KeyState::Published], "day {day}");
        }
        pass(&mut b, 10 * DAY, true);
        // Verified just now: the lead starts now.
        assert_eq!(states(&b), [KeyState::Published]);
        pass(&mut b, 12 * DAY, true);
        assert_eq!(states(&b), [KeyState::Active]);
    }

    #[test]
    fn zero_lead_goes_from_nothing_to_active_in_one_pass() {
        let mut b = Book::default();
        let p = Policy {
            lead: 0,
            ..policy()
        };
        let mut waiting = BTreeSet::new();
        let mut steps = 0;
        while let Some(step) = next_step(&b, &wanted(), &p, 0, &BTreeSet::new(), &waiting) {
            steps += 1;
            match step {
                Step::Generate { .. } => {
                    pass_one_generate(&mut b);
                }
                Step::Publish(i) => b.keys[i].state = KeyState::Published,
                Step::Verify(i) => b.keys[i].verified_at = Some(0),
                Step::Activate(i) => {
                    b.keys[i].state = KeyState::Active;
                    b.keys[i].activated_at = Some(0);
                }
                other => panic!("{other:?}"),
            }
            waiting.clear();
        }
        assert_eq!(steps, 4);
        assert_eq!(states(&b), [KeyState::Active]);
    }

    fn pass_one_generate(b: &mut Book) {
        b.keys.push(Key {
            domain: "example.com".into(),
            algorithm: RSA,
            selector: "r1".into(),
            file: "/k".into(),
            record: String::new(),
            state: KeyState::Generated,
            since: 0,
            created_at: 0,
            verified_at: None,
            activated_at: None,
            entered: Default::default(),
        });
    }

    #[test]
    fn forced_rotation_and_removed_domains() {
        let mut b = Book::default();
        pass(&mut b, 0, true);
        pass(&mut b, 2 * DAY, true);
        let forced: BTreeSet<_> = [("example.com".to_owned(), RSA)].into();
        let step = next_step(&b, &wanted(), &policy(), 3 * DAY, &forced, &BTreeSet::new());
        assert!(matches!(step, Some(Step::Generate { .. })));
        // A domain no longer configured: its active key drains (its record stays).
        let step = next_step(
            &b,
            &[],
            &policy(),
            3 * DAY,
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(step, Some(Step::Drain(0)));
    }

    #[test]
    fn a_successor_activated_in_the_same_second_still_drains_its_predecessor() {
        let mut b = Book::default();
        pass(&mut b, 0, true);
        pass(&mut b, 2 * DAY, true);
        let forced: BTreeSet<_> = [("example.com".to_owned(), RSA)].into();
        let p = Policy {
            lead: 0,
            ..policy()
        };
        // Successor generated, published, verified and activated at the
        // very second the old key was activated.
        let mut k = b.keys[0].clone();
        k.selector = "r2".into();
        k.state = KeyState::Active;
        b.keys.push(k);
        let step = next_step(&b, &wanted(), &p, 2 * DAY, &forced, &BTreeSet::new());
        assert_eq!(step, Some(Step::Drain(0)));
    }

    #[test]
    fn a_slot_template_gives_each_family_two_fixed_selectors() {
        let ed = DkimAlgorithm::Ed25519;
        // (template, algorithm, host, selectors)
        let table: &[(&str, DkimAlgorithm, Option<&str>, &[&str])] = &[
            ("mx{slot}{alg}", RSA, None, &["mx1r", "mx2r"]),
            ("mx{slot}{alg}", ed, None, &["mx1e", "mx2e"]),
            (
                "mx{slot}{alg}",
                DkimAlgorithm::Rsa3072,
                None,
                &["mx1r", "mx2r"],
            ),
            ("{host}-{alg}{slot}", RSA, Some("a"), &["a-r1", "a-r2"]),
            ("{alg}{date}", RSA, None, &[]),
        ];
        for (template, algorithm, host, want) in table {
            assert_eq!(
                slot_selectors(template, *algorithm, *host),
                *want,
                "{template} {algorithm:?} {host:?}"
            );
        }
    }

    fn slot_policy() -> Policy {
        Policy {
            slots: Some("mx{slot}{alg}".into()),
            ..policy()
        }
    }

    /// Runs passes at every moment the machine says it is due (the
    /// daemon's wake-ups) until `until`, with `forced` groups forced in
    /// every pass, and returns each key's (selector, activation time) in
    /// order of activation.
    fn run_until(
        b: &mut Book,
        wanted: &[(String, DkimAlgorithm)],
        p: &Policy,
        until: i64,
        forced: &BTreeSet<(String, DkimAlgorithm)>,
    ) -> Vec<(String, i64)> {
        let mut activated = Vec::new();
        let mut now = 0;
        while now <= until {
            for step in pass_with(b, wanted, p, now, true, forced) {
                if let Step::Activate(i) = step {
                    activated.push((b.keys[i].selector.clone(), now));
                }
            }
            let next = next_due(b, wanted, p, now).expect("a next transition");
            assert!(next > now, "busy loop at {now}: {:?}", b.keys);
            now = next;
        }
        activated
    }

    #[test]
    fn three_rotations_alternate_between_the_two_slots() {
        let mut b = Book::default();
        let activated = run_until(
            &mut b,
            &wanted(),
            &slot_policy(),
            300 * DAY,
            &BTreeSet::new(),
        );
        // Each successor is made when due (90 days after its predecessor
        // signed) and signs after the 2-day lead: no wait for a slot.
        assert_eq!(
            activated,
            [
                ("mx1r".to_owned(), 2 * DAY),
                ("mx2r".to_owned(), 94 * DAY),
                ("mx1r".to_owned(), 186 * DAY),
                ("mx2r".to_owned(), 278 * DAY),
            ]
        );
        assert!(b.used_selectors.is_empty(), "{:?}", b.used_selectors);
    }

    #[test]
    fn a_forced_rotation_while_the_other_slot_is_still_held_waits_until_that_key_is_deleted() {
        let mut b = Book::default();
        let p = slot_policy();
        let forced: BTreeSet<_> = [("example.com".to_owned(), RSA)].into();
        run_until(&mut b, &wanted(), &p, 94 * DAY, &BTreeSet::new());
        assert_eq!(states(&b), [KeyState::Draining, KeyState::Active]);
        // (day, states after a forced pass) while mx1r drains, is revoked,
        // and is held until deleted on day 131 (revoked day 101 + 30).
        for (day, want) in [
            (95, [KeyState::Draining, KeyState::Active]),
            (101, [KeyState::Revoked, KeyState::Active]),
            (130, [KeyState::Revoked, KeyState::Active]),
        ] {
            let steps = pass_with(&mut b, &wanted(), &p, day * DAY, true, &forced);
            assert!(
                !steps.iter().any(|s| matches!(s, Step::Generate { .. })),
                "day {day}: {steps:?}"
            );
            assert_eq!(states(&b), want, "day {day}");
            let why = slot_wait(&b, "example.com", RSA, &p, day * DAY, true).expect("waits");
            assert!(why.contains("mx1r") && why.contains("mx2r active"), "{why}");
            // The next wake-up is the holder's own transition, not now.
            let due = next_due(&b, &wanted(), &p, day * DAY).unwrap();
            assert!(due > day * DAY, "day {day}: due {due}");
            assert_eq!(
                next_transition(&b, &b.keys[1], &p),
                Some((184 * DAY, "start a successor, once a slot is free"))
            );
        }
        // Day 131: mx1r is deleted and the forced successor takes its slot.
        let steps = pass_with(&mut b, &wanted(), &p, 131 * DAY, true, &forced);
        assert!(matches!(steps[0], Step::Delete(0)), "{steps:?}");
        assert_eq!(states(&b), [KeyState::Active, KeyState::Published]);
        assert_eq!(b.keys[1].selector, "mx1r");
        assert_eq!(slot_wait(&b, "example.com", RSA, &p, 131 * DAY, true), None);
    }

    #[test]
    fn rsa_and_ed25519_keys_rotate_through_their_own_slots() {
        let ed = DkimAlgorithm::Ed25519;
        let wanted = vec![
            ("example.com".to_owned(), RSA),
            ("example.com".to_owned(), ed),
        ];
        let mut b = Book::default();
        let activated = run_until(&mut b, &wanted, &slot_policy(), 100 * DAY, &BTreeSet::new());
        let names: Vec<&str> = activated.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(names, ["mx1r", "mx1e", "mx2r", "mx2e"]);
    }

    #[test]
    fn slots_are_free_when_due_exactly_when_rotate_every_covers_drain_and_revoke_hold() {
        // The slot a key leaves frees `drain` + `revoke_hold` after its
        // successor signs (that is when it drains), and the successor's
        // own rotation is due `rotate_every` after it signs: so the
        // configuration asks rotate_every > drain + revoke_hold +
        // revoke_settle. Just long enough: every rotation on time.
        let p = slot_policy();
        let tight = Policy {
            rotate_every: p.drain + p.revoke_hold + p.revoke_settle + 1,
            ..p.clone()
        };
        let r = tight.rotate_every;
        let mut b = Book::default();
        let activated = run_until(&mut b, &wanted(), &tight, 5 * r, &BTreeSet::new());
        for pair in activated.windows(2) {
            assert_eq!(pair[1].1 - pair[0].1, r + p.lead, "{activated:?}");
        }
        assert!(activated.len() >= 5, "{activated:?}");
        // A day shorter than drain + revoke_hold: the third key waits for
        // its slot, past its due date.
        let short = Policy {
            rotate_every: p.drain + p.revoke_hold - DAY,
            ..p
        };
        let mut b = Book::default();
        let activated = run_until(
            &mut b,
            &wanted(),
            &short,
            3 * short.rotate_every,
            &BTreeSet::new(),
        );
        assert!(
            activated[2].1 - activated[1].1 > short.rotate_every + short.lead,
            "{activated:?}"
        );
    }

    #[test]
    fn selectors_are_never_reused() {
        let mut used = BTreeSet::new();
        let a = selector("{alg}{date}", RSA, "20261121", &used);
        assert_eq!(a, "r20261121");
        used.insert(a);
        assert_eq!(
            selector("{alg}{date}", RSA, "20261121", &used),
            "r20261121-2"
        );
        assert_eq!(
            selector(
                "mx{n}",
                DkimAlgorithm::Ed25519,
                "x",
                &BTreeSet::from(["mx1".to_owned()])
            ),
            "mx2"
        );
    }

    #[test]
    fn next_transitions_are_named() {
        let mut b = Book::default();
        pass(&mut b, 0, true);
        assert_eq!(
            next_transition(&b, &b.keys[0], &policy()),
            Some((2 * DAY, "activate"))
        );
        pass(&mut b, 2 * DAY, true);
        assert_eq!(earliest(&b, &policy()), Some(92 * DAY));
    }

    #[test]
    fn host_in_the_template_gives_each_host_its_own_selectors_even_from_the_same_book() {
        let used = BTreeSet::new();
        let empty = BTreeSet::new();
        // (template, host, selector)
        for (template, host, want) in [
            ("{host}-{alg}{date}", Some("mx1"), "mx1-r20261130"),
            ("{host}-{alg}{date}", Some("mx2"), "mx2-r20261130"),
            ("{alg}{date}{host}", Some("b"), "r20261130b"),
            ("{host}{n}", Some("mx1"), "mx11"),
            ("{alg}{date}", Some("mx1"), "r20261130"),
            ("{alg}{date}", None, "r20261130"),
        ] {
            let t = host_template(template, host);
            assert_eq!(
                free_selector(&t, RSA, "20261130", &used, &empty),
                want,
                "{template} on {host:?}"
            );
        }
        // A selector another host made is never the one this host makes
        // next, whatever either has used.
        let mx1 = host_template("{host}-{alg}{date}", Some("mx1"));
        let mx2 = host_template("{host}-{alg}{date}", Some("mx2"));
        let mut used1 = BTreeSet::new();
        let mut used2 = BTreeSet::new();
        for _ in 0..5 {
            let a = selector(&mx1, RSA, "20261130", &used1);
            let b = selector(&mx2, RSA, "20261130", &used2);
            assert!(a.starts_with("mx1-") && b.starts_with("mx2-"), "{a} {b}");
            assert_ne!(a, b);
            used1.insert(a);
            used2.insert(b);
        }
        assert!(used1.is_disjoint(&used2));
    }

    #[test]
    fn occupied_selectors_are_passed_over_for_the_next_free_one() {
        let set = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        // (template, used, occupied in DNS, chosen)
        let table: &[(&str, &[&str], &[&str], &str)] = &[
            ("{alg}{date}", &[], &[], "r20261129"),
            ("{alg}{date}", &[], &["r20261129"], "r20261129-2"),
            (
                "{alg}{date}",
                &["r20261129"],
                &["r20261129-2"],
                "r20261129-3",
            ),
            ("mx{n}", &[], &["mx1", "mx2"], "mx3"),
            ("mx{n}", &["mx1"], &["mx3"], "mx2"),
            ("fixed", &[], &["fixed", "fixed-2"], "fixed-3"),
        ];
        for (template, used, occupied, want) in table {
            assert_eq!(
                free_selector(template, RSA, "20261129", &set(used), &set(occupied)),
                *want,
                "{template} used {used:?} occupied {occupied:?}"
            );
        }
    }

    #[test]
    fn a_name_is_free_only_when_empty_or_holding_our_own_value() {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let table: &[(&[&str], Option<&str>, bool)] = &[
            (&[], None, true),
            (&[], Some("v=DKIM1; p=A"), true),
            (&["v=DKIM1; p=B"], None, false),
            (&["v=DKIM1; p=B"], Some("v=DKIM1; p=A"), false),
            (&["v=DKIM1; p=A"], Some("v=DKIM1; p=A"), true),
            (&["v=DKIM1; p=A", "other"], Some("v=DKIM1; p=A"), false),
        ];
        for (existing, ours, free) in table {
            assert_eq!(
                name_is_free(&v(existing), *ours),
                *free,
                "{existing:?} {ours:?}"
            );
        }
    }

    #[test]
    fn a_pending_signer_reload_makes_the_next_pass_due_within_a_minute() {
        let mut b = Book::default();
        pass(&mut b, 0, true);
        pass(&mut b, 2 * DAY, true);
        let now = 3 * DAY;
        // Nothing due: the next pass is the rotation, 89 days away.
        assert_eq!(next_due(&b, &wanted(), &policy(), now), Some(92 * DAY));
        b.signer_reload_pending = true;
        let due = next_due(&b, &wanted(), &policy(), now).unwrap();
        assert!((now..=now + 60).contains(&due), "due {due}");
        assert_eq!(due, now + RELOAD_RETRY);
        // A group without a key is due now, pending reload or not.
        let more = vec![wanted()[0].clone(), ("example.org".to_owned(), RSA)];
        assert_eq!(next_due(&b, &more, &policy(), now), Some(now));
        assert_eq!(
            next_due(&Book::default(), &wanted(), &policy(), now),
            Some(now)
        );
    }

    #[test]
    fn an_rsa_key_of_another_size_signs_until_its_successor_of_the_configured_size_does() {
        let mut b = Book::default();
        pass_one_generate(&mut b);
        let mut k = b.keys.pop().unwrap();
        // An imported rsa-1024 key, active.
        k.algorithm = DkimAlgorithm::Rsa1024;
        k.selector = "legacy".into();
        k.state = KeyState::Active;
        k.verified_at = Some(0);
        k.activated_at = Some(0);
        b.keys.push(k);
        b.used_selectors
            .entry("example.com".into())
            .or_default()
            .insert("legacy".into());
        // It is not drained as unwanted: a successor of the configured size
        // is made at once, and the old key signs meanwhile.
        let steps = pass(&mut b, DAY, true);
        assert!(
            !steps.iter().any(|s| matches!(s, Step::Drain(_))),
            "{steps:?}"
        );
        assert_eq!(states(&b), [KeyState::Active, KeyState::Published]);
        assert_eq!(b.keys[1].algorithm, RSA);
        // After the lead the successor signs and the old key drains.
        pass(&mut b, 3 * DAY, true);
        assert_eq!(states(&b), [KeyState::Draining, KeyState::Active]);
        // And nothing more is due until the successor's rotation.
        assert_eq!(
            next_step(
                &b,
                &wanted(),
                &policy(),
                4 * DAY,
                &BTreeSet::new(),
                &BTreeSet::new()
            ),
            None
        );
    }

    // ---- no signing gap; safe revocation ----

    #[test]
    fn a_revocation_request_is_forgotten_once_its_key_is_revoked_or_gone() {
        use KeyState::*;
        type Keys<'a> = &'a [(&'a str, KeyState)];
        // (keys, asked, still owed)
        let cases: [(Keys, &[&str], &[&str]); 4] = [
            (&[("r1", Draining)], &["r1"], &["r1"]),
            (&[("r1", Revoked)], &["r1"], &[]),
            (&[], &["r1"], &[]),
            // A slot reused: the old key is gone, the new one must not
            // inherit its request; a draining key keeps its own.
            (
                &[("mx1r", Active), ("mx2r", Draining)],
                &["mx2r"],
                &["mx2r"],
            ),
        ];
        for (keys, asked, owed) in cases {
            let mut b = Book {
                keys: keys
                    .iter()
                    .map(|(sel, state)| key(sel, RSA, *state, true))
                    .collect(),
                revoke_now: asked
                    .iter()
                    .map(|s| format!("{s}._domainkey.example.com"))
                    .collect(),
                ..Book::default()
            };
            let changed = forget_finished_revocations(&mut b);
            let want: BTreeSet<String> = owed
                .iter()
                .map(|s| format!("{s}._domainkey.example.com"))
                .collect();
            assert_eq!(b.revoke_now, want, "{keys:?} {asked:?}");
            assert_eq!(changed, asked.len() != owed.len(), "{keys:?} {asked:?}");
        }
    }

    fn key(sel: &str, algorithm: DkimAlgorithm, state: KeyState, verified: bool) -> Key {
        Key {
            domain: "example.com".into(),
            algorithm,
            selector: sel.into(),
            file: PathBuf::from(format!("/k/{sel}.pem")),
            record: String::new(),
            state,
            since: 0,
            created_at: 0,
            verified_at: verified.then_some(0),
            activated_at: (state == KeyState::Active).then_some(0),
            entered: Default::default(),
        }
    }

    #[test]
    fn signing_keys_are_counted_per_family_only_once_a_key_of_the_group_ever_signed() {
        let ed = DkimAlgorithm::Ed25519;
        let wanted = vec![
            ("example.com".to_owned(), RSA),
            ("example.com".to_owned(), ed),
        ];
        let with = |keys: Vec<Key>| Book {
            keys,
            ..Book::default()
        };
        let mut drained_rsa = key("r1", RSA, KeyState::Draining, true);
        drained_rsa.activated_at = Some(0);
        let mut revoked_ed = key("e1", ed, KeyState::Revoked, true);
        revoked_ed.activated_at = Some(0);
        // (what, book, expected (domain, family, signing))
        type Signing = Vec<(&'static str, &'static str, usize)>;
        let rows: Vec<(&str, Book, Signing)> = vec![
            ("nothing generated yet", with(vec![]), vec![]),
            (
                "first keys waiting for their lead: left out",
                with(vec![
                    key("r1", RSA, KeyState::Published, true),
                    key("e1", ed, KeyState::Published, true),
                ]),
                vec![],
            ),
            (
                "both families sign",
                with(vec![
                    key("r1", RSA, KeyState::Active, true),
                    key("e1", ed, KeyState::Active, true),
                ]),
                vec![("example.com", "rsa", 1), ("example.com", "ed25519", 1)],
            ),
            (
                "rsa drained with no successor signing, ed25519 revoked: both counted at 0",
                with(vec![drained_rsa, revoked_ed]),
                vec![("example.com", "rsa", 0), ("example.com", "ed25519", 0)],
            ),
            (
                "an imported rsa-1024 key signs for the rsa family",
                with(vec![key(
                    "legacy",
                    DkimAlgorithm::Rsa1024,
                    KeyState::Active,
                    true,
                )]),
                vec![("example.com", "rsa", 1)],
            ),
        ];
        for (what, book, want) in rows {
            assert_eq!(signing_keys(&book, &wanted), want, "{what}");
        }
    }

    #[test]
    fn a_drained_key_is_revoked_only_after_the_pending_signer_reload() {
        let p = Policy {
            drain: 0,
            ..policy()
        };
        let mut b = Book {
            keys: vec![
                key("old", RSA, KeyState::Draining, true),
                key("new", RSA, KeyState::Active, true),
            ],
            signer_reload_pending: true,
            ..Book::default()
        };
        let (none, nowait) = (BTreeSet::new(), BTreeSet::new());
        // (reload pending, asked for by `dkim revoke`, now, expected step)
        let table: &[(bool, bool, i64, Option<Step>)] = &[
            (true, false, DAY, None),
            (true, true, 0, None),
            (false, false, DAY, Some(Step::Revoke(0))),
            (false, true, 0, Some(Step::Revoke(0))),
        ];
        for (pending, asked, now, want) in table {
            b.signer_reload_pending = *pending;
            b.revoke_now.clear();
            if *asked {
                b.revoke_now.insert("old._domainkey.example.com".into());
            }
            let got = next_step(&b, &wanted(), &p, *now, &none, &nowait);
            assert_eq!(&got, want, "pending {pending} asked {asked} now {now}");
        }
        // Waiting on the reload, the next pass is the reload's retry, never
        // a transition already past (no busy loop).
        b.signer_reload_pending = true;
        assert_eq!(
            next_due(&b, &wanted(), &p, 5 * DAY),
            Some(5 * DAY + RELOAD_RETRY)
        );
    }

    #[test]
    fn a_revocation_waits_for_the_last_signer_reload_to_settle() {
        let mut b = Book {
            keys: vec![
                key("old", RSA, KeyState::Draining, true),
                key("new", RSA, KeyState::Active, true),
            ],
            signer_reloaded_at: Some(100),
            ..Book::default()
        };
        let (none, nowait) = (BTreeSet::new(), BTreeSet::new());
        // (drain, asked for, now, revoked): settle 5 s after the reload at
        // 100, at most `drain` for a scheduled revocation.
        let table: &[(i64, bool, i64, bool)] = &[
            (0, true, 104, false),
            (0, true, 105, true),
            (0, false, 100, true),
            (3, false, 102, false),
            (3, false, 103, true),
            (DAY, false, 105, false),
            (DAY, false, DAY, true),
        ];
        for (drain, asked, now, revoked) in table {
            let p = Policy {
                drain: *drain,
                ..policy()
            };
            b.revoke_now.clear();
            if *asked {
                b.revoke_now.insert("old._domainkey.example.com".into());
            }
            let got = next_step(&b, &wanted(), &p, *now, &none, &nowait);
            assert_eq!(
                got == Some(Step::Revoke(0)),
                *revoked,
                "drain {drain} asked {asked} now {now}: {got:?}"
            );
        }
    }

    #[test]
    fn revoking_the_only_signing_key_of_a_family_needs_force() {
        use KeyState::*;
        let ed = DkimAlgorithm::Ed25519;
        let both = vec![
            ("example.com".to_owned(), RSA),
            ("example.com".to_owned(), ed),
        ];
        // (keys, configured, key revoked, force, result, who signs after)
        type Row = (
            Vec<Key>,
            Vec<(String, DkimAlgorithm)>,
            usize,
            bool,
            Result<(), RevokeRefused>,
            Vec<&'static str>,
        );
        let table: Vec<Row> = vec![
            // The only RSA key: refused, nothing changes.
            (
                vec![key("r1", RSA, Active, true)],
                wanted(),
                0,
                false,
                Err(RevokeRefused::OnlyKey),
                vec!["r1"],
            ),
            (
                vec![key("r1", RSA, Active, true)],
                wanted(),
                0,
                true,
                Ok(()),
                vec![],
            ),
            // An Ed25519 key beside it does not sign for the RSA family.
            (
                vec![key("r1", RSA, Active, true), key("e1", ed, Active, true)],
                both.clone(),
                0,
                false,
                Err(RevokeRefused::OnlyKey),
                vec!["r1", "e1"],
            ),
            // A successor not yet verified cannot take over.
            (
                vec![
                    key("r1", RSA, Active, true),
                    key("r2", RSA, Published, false),
                ],
                wanted(),
                0,
                false,
                Err(RevokeRefused::OnlyKey),
                vec!["r1"],
            ),
            // A verified successor (of another RSA size too) signs at once.
            (
                vec![
                    key("r1", RSA, Active, true),
                    key("r2", DkimAlgorithm::Rsa3072, Published, true),
                ],
                wanted(),
                0,
                false,
                Ok(()),
                vec!["r2"],
            ),
            // Another key of the family signs: no question asked.
            (
                vec![
                    key("r1", DkimAlgorithm::Rsa1024, Active, true),
                    key("r2", RSA, Active, true),
                ],
                wanted(),
                0,
                false,
                Ok(()),
                vec!["r2"],
            ),
            // A family no longer configured, a draining or published key.
            (
                vec![key("r1", RSA, Active, true), key("e1", ed, Active, true)],
                wanted(),
                1,
                false,
                Ok(()),
                vec!["r1"],
            ),
            (
                vec![key("r1", RSA, Draining, true), key("r2", RSA, Active, true)],
                wanted(),
                0,
                false,
                Ok(()),
                vec!["r2"],
            ),
            (
                vec![
                    key("r1", RSA, Active, true),
                    key("r2", RSA, Published, false),
                ],
                wanted(),
                1,
                false,
                Ok(()),
                vec!["r1"],
            ),
            (
                vec![key("r1", RSA, Revoked, true), key("r2", RSA, Active, true)],
                wanted(),
                0,
                true,
                Err(RevokeRefused::AlreadyRevoked),
                vec!["r2"],
            ),
        ];
        for (n, (keys, configured, i, force, result, signing)) in table.into_iter().enumerate() {
            let mut b = Book {
                keys,
                ..Book::default()
            };
            let before = b.clone();
            let got = request_revoke(&mut b, &configured, i, DAY, force);
            assert_eq!(got, result, "row {n}");
            if got.is_err() {
                assert_eq!(b, before, "row {n}: a refusal changes nothing");
            } else {
                assert_eq!(b.keys[i].state, KeyState::Draining, "row {n}");
                assert!(b.revoke_now.contains(&b.keys[i].record_name()), "row {n}");
            }
            let active: Vec<&str> = b
                .keys
                .iter()
                .filter(|k| k.state == KeyState::Active)
                .map(|k| k.selector.as_str())
                .collect();
            assert_eq!(active, signing, "row {n}");
        }
    }

    #[test]
    fn an_asked_revocation_drains_at_once_and_a_successor_follows() {
        let mut b = Book::default();
        pass(&mut b, 0, true);
        pass(&mut b, 2 * DAY, true);
        assert!(request_revoke(&mut b, &wanted(), 0, 3 * DAY, true).is_ok());
        // Not after `drain`: now (the signer was reloaded), and a successor
        // of the family is started in the same pass.
        let steps = pass(&mut b, 3 * DAY, true);
        assert_eq!(steps[0], Step::Revoke(0), "{steps:?}");
        assert_eq!(states(&b), [KeyState::Revoked, KeyState::Published]);
        assert!(b.revoke_now.is_empty());
    }

    #[test]
    fn changing_the_rsa_size_or_importing_another_size_keeps_rsa_signing_every_day() {
        let rsa3072 = vec![("example.com".to_owned(), DkimAlgorithm::Rsa3072)];
        let mut b = Book::default();
        let run = |b: &mut Book, wanted: &[(String, DkimAlgorithm)], day: i64| {
            let (none, nowait) = (BTreeSet::new(), BTreeSet::new());
            while let Some(step) = next_step(b, wanted, &policy(), day * DAY, &none, &nowait) {
                let now = day * DAY;
                match step.clone() {
                    Step::Generate { domain, algorithm } => {
                        let sel = format!("s{}", b.keys.len() + 10 * day as usize);
                        let mut k = key(&sel, algorithm, KeyState::Generated, false);
                        k.domain = domain;
                        k.since = now;
                        b.keys.push(k);
                    }
                    Step::Publish(i) => b.keys[i].state = KeyState::Published,
                    Step::Verify(i) => b.keys[i].verified_at = Some(now),
                    Step::Activate(i) => {
                        b.keys[i].state = KeyState::Active;
                        b.keys[i].activated_at = Some(now);
                    }
                    Step::Drain(i) => {
                        b.keys[i].state = KeyState::Draining;
                        b.keys[i].since = now;
                    }
                    Step::Revoke(i) => {
                        b.keys[i].state = KeyState::Revoked;
                        b.keys[i].since = now;
                    }
                    Step::Delete(i) => {
                        b.keys.remove(i);
                    }
                }
                // At every step, not only at the end of a pass.
                if day > 2 {
                    assert!(signs(b, "example.com", RSA), "day {day}: {step:?}");
                }
            }
        };
        for day in 0..5 {
            run(&mut b, &wanted(), day);
        }
        // rsa-2048 -> rsa-3072: the 2048 key signs until the 3072 one does.
        for day in 5..12 {
            run(&mut b, &rsa3072, day);
        }
        let active: Vec<_> = b
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .map(|k| k.algorithm)
            .collect();
        assert_eq!(active, [DkimAlgorithm::Rsa3072]);
        // An imported rsa-1024 key takes over; the configured size follows.
        for k in b.keys.iter_mut().filter(|k| k.state == KeyState::Active) {
            k.state = KeyState::Draining;
            k.since = 12 * DAY;
        }
        b.keys.push(key(
            "legacy",
            DkimAlgorithm::Rsa1024,
            KeyState::Active,
            true,
        ));
        for day in 12..20 {
            run(&mut b, &rsa3072, day);
        }
        let active: Vec<_> = b
            .keys
            .iter()
            .filter(|k| k.state == KeyState::Active)
            .map(|k| k.algorithm)
            .collect();
        assert_eq!(active, [DkimAlgorithm::Rsa3072]);
    }

    mod property {
        //! The invariant over random histories: configuration changes
        //! (RSA size, Ed25519 on or off), imports, forced rotations,
        //! revocations, crashes (a pass stopped after any step, the signer
        //! tables possibly not yet rewritten), failing signer reloads and
        //! clock jumps. After every step: each configured family of the
        //! domain that signed once signs in the signer's tables and in
        //! what the signer loaded (unless its family was removed or its
        //! only key revoked with --force), and no key with a `p=` record
        //! is in either.

        use super::*;
        use proptest::prelude::*;

        const D: &str = "example.com";

        #[derive(Debug, Clone)]
        enum Event {
            Configure { rsa: DkimAlgorithm, ed25519: bool },
            Import(DkimAlgorithm),
            ForceRotate,
            Revoke { pick: usize, force: bool },
            Pass { dns_ok: bool, reload_ok: bool },
            Crash { after: usize, tables_written: bool },
            Clock(i64),
        }

        fn event() -> impl Strategy<Value = Event> {
            let rsa = prop_oneof![Just(DkimAlgorithm::Rsa2048), Just(DkimAlgorithm::Rsa3072)];
            prop_oneof![
                (rsa, any::<bool>()).prop_map(|(rsa, ed25519)| Event::Configure { rsa, ed25519 }),
                prop_oneof![
                    Just(DkimAlgorithm::Rsa1024),
                    Just(DkimAlgorithm::Rsa2048),
                    Just(DkimAlgorithm::Rsa3072),
                    Just(DkimAlgorithm::Ed25519)
                ]
                .prop_map(Event::Import),
                Just(Event::ForceRotate),
                (0usize..8, any::<bool>()).prop_map(|(pick, force)| Event::Revoke { pick, force }),
                (any::<bool>(), any::<bool>())
                    .prop_map(|(dns_ok, reload_ok)| Event::Pass { dns_ok, reload_ok }),
                (0usize..12, any::<bool>()).prop_map(|(after, tables_written)| Event::Crash {
                    after,
                    tables_written
                }),
                prop_oneof![
                    Just(0),
                    Just(3600),
                    Just(DAY),
                    Just(3 * DAY),
                    Just(8 * DAY),
                    Just(100 * DAY)
                ]
                .prop_map(Event::Clock),
            ]
        }

        fn policy() -> impl Strategy<Value = Policy> {
            (
                prop_oneof![Just(0), Just(2 * DAY)],
                prop_oneof![Just(0), Just(7 * DAY)],
                prop_oneof![Just(0), Just(30 * DAY)],
                // A rotation shorter than drain + revoke_hold makes a
                // slot template wait for a free slot.
                prop_oneof![Just(90 * DAY), Just(20 * DAY)],
                prop_oneof![Just(None), Just(Some("mx{slot}{alg}".to_owned()))],
            )
                .prop_map(|(lead, drain, revoke_hold, rotate_every, slots)| Policy {
                    rotate_every,
                    lead,
                    drain,
                    revoke_hold,
                    revoke_settle: 0,
                    slots,
                })
        }

        /// The world: the state, the signer's files and what it loaded.
        struct World {
            book: Book,
            wanted: Vec<(String, DkimAlgorithm)>,
            policy: Policy,
            now: i64,
            /// Selectors in the signer's tables on disk.
            tables: BTreeSet<String>,
            /// Selectors the running signer signs with (tables at its last
            /// successful reload).
            loaded: BTreeSet<String>,
            /// (in the loaded signer rather than the tables, family is
            /// RSA) that must sign: signed once there, still configured,
            /// their only key not revoked with --force.
            established: BTreeSet<(bool, bool)>,
            serial: usize,
        }

        impl World {
            fn rendered(&self) -> BTreeSet<String> {
                self.book
                    .keys
                    .iter()
                    .filter(|k| k.state == KeyState::Active)
                    .map(|k| k.selector.clone())
                    .collect()
            }

            /// The executor's `update_signer`: rewrite the tables when
            /// they differ, a reload owed first.
            fn update_signer(&mut self) {
                let r = self.rendered();
                if r != self.tables {
                    self.book.signer_reload_pending = true;
                    self.tables = r;
                }
            }

            fn reload(&mut self, ok: bool) -> bool {
                if ok {
                    self.loaded = self.tables.clone();
                    self.book.signer_reload_pending = false;
                }
                ok
            }

            fn check(&mut self, when: &str) {
                // A selector (a slot) is held by one key at a time.
                let held: BTreeSet<&str> =
                    self.book.keys.iter().map(|k| k.selector.as_str()).collect();
                assert_eq!(
                    held.len(),
                    self.book.keys.len(),
                    "{when}: a selector held twice: {:?}",
                    self.book.keys
                );
                // (family, state) of the key a selector names.
                let family_of = |sel: &String| {
                    self.book
                        .keys
                        .iter()
                        .find(|k| &k.selector == sel)
                        .map(|k| (k.algorithm.is_rsa(), k.state))
                };
                for fam in [true, false] {
                    if !self.wanted.iter().any(|(_, a)| a.is_rsa() == fam) {
                        self.established.remove(&(false, fam));
                        self.established.remove(&(true, fam));
                        continue;
                    }
                    for (loaded, set) in [(false, &self.tables), (true, &self.loaded)] {
                        // Established by an active key; a draining key the
                        // signer still has signs too (until it reloads).
                        let of_family = |s: &String| {
                            family_of(s).filter(|(f, st)| *f == fam && *st != KeyState::Revoked)
                        };
                        if set
                            .iter()
                            .any(|s| of_family(s).is_some_and(|(_, st)| st == KeyState::Active))
                        {
                            self.established.insert((loaded, fam));
                        }
                        if !set.iter().any(|s| of_family(s).is_some()) {
                            assert!(
                                !self.established.contains(&(loaded, fam)),
                                "{when}: family rsa={fam} unsigned in the {}: {:?}",
                                if loaded { "loaded signer" } else { "tables" },
                                self.book.keys
                            );
                        }
                    }
                }
                for k in self
                    .book
                    .keys
                    .iter()
                    .filter(|k| k.state == KeyState::Revoked)
                {
                    assert!(
                        !self.tables.contains(&k.selector) && !self.loaded.contains(&k.selector),
                        "{when}: p= published for {} while the signer has it (tables {:?}, loaded {:?})",
                        k.selector,
                        self.tables,
                        self.loaded
                    );
                }
            }

            /// One pass like the executor's: steps until nothing is due,
            /// the owed reload done before a revocation can follow.
            /// `crash`: stops after that many steps (the last one's signer
            /// files written or not), without the final reload.
            fn pass(
                &mut self,
                forced: bool,
                dns_ok: bool,
                reload_ok: bool,
                crash: Option<(usize, bool)>,
            ) {
                self.update_signer();
                self.check("start of a pass");
                let mut forced: BTreeSet<(String, DkimAlgorithm)> = if forced {
                    self.wanted.iter().cloned().collect()
                } else {
                    BTreeSet::new()
                };
                let mut waiting = BTreeSet::new();
                let mut steps = 0;
                loop {
                    let now = self.now;
                    let Some(step) = next_step(
                        &self.book,
                        &self.wanted,
                        &self.policy,
                        now,
                        &forced,
                        &waiting,
                    ) else {
                        // Once a pass; a failed reload ends it.
                        if crash.is_none()
                            && self.book.signer_reload_pending
                            && self.reload(reload_ok)
                        {
                            self.check("after a reload");
                            continue;
                        }
                        break;
                    };
                    steps += 1;
                    assert!(steps < 200, "no progress: {step:?}");
                    let signs_changed = matches!(step, Step::Activate(_) | Step::Drain(_));
                    match step.clone() {
                        Step::Generate { domain, algorithm } => {
                            forced.remove(&(domain.clone(), algorithm));
                            self.serial += 1;
                            let sel = match &self.policy.slots {
                                // next_step generates only into a free slot.
                                Some(_) => free_slot(&self.book, &domain, algorithm, &self.policy)
                                    .expect("a free slot"),
                                None => format!("s{}", self.serial),
                            };
                            let mut k = key(&sel, algorithm, KeyState::Generated, false);
                            k.since = now;
                            k.created_at = now;
                            self.book.keys.push(k);
                        }
                        Step::Publish(i) => {
                            self.book.keys[i].state = KeyState::Published;
                            self.book.keys[i].since = now;
                        }
                        Step::Verify(i) if dns_ok => self.book.keys[i].verified_at = Some(now),
                        Step::Verify(i) => {
                            waiting.insert(i);
                        }
                        Step::Activate(i) => {
                            let k = &mut self.book.keys[i];
                            k.state = KeyState::Active;
                            k.since = now;
                            k.activated_at = Some(now);
                        }
                        Step::Drain(i) => {
                            self.book.keys[i].state = KeyState::Draining;
                            self.book.keys[i].since = now;
                        }
                        Step::Revoke(i) => {
                            let k = &mut self.book.keys[i];
                            k.state = KeyState::Revoked;
                            k.since = now;
                            let name = k.record_name();
                            self.book.revoke_now.remove(&name);
                        }
                        Step::Delete(i) => {
                            self.book.keys.remove(i);
                        }
                    }
                    let crashed_here = crash.is_some_and(|(after, _)| steps > after);
                    let tables_written = !crashed_here || crash.is_some_and(|(_, w)| w);
                    if signs_changed && tables_written {
                        self.update_signer();
                    }
                    self.check(&format!("after {step:?}"));
                    if crashed_here {
                        return;
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn every_configured_family_keeps_signing_and_no_signing_key_is_revoked(
                policy in policy(),
                events in proptest::collection::vec(event(), 1..40),
            ) {
                let mut w = World {
                    book: Book::default(),
                    wanted: vec![(D.to_owned(), RSA)],
                    policy,
                    now: 0,
                    tables: BTreeSet::new(),
                    loaded: BTreeSet::new(),
                    established: BTreeSet::new(),
                    serial: 0,
                };
                w.pass(false, true, true, None);
                for e in events {
                    match e {
                        Event::Configure { rsa, ed25519 } => {
                            w.wanted = vec![(D.to_owned(), rsa)];
                            if ed25519 {
                                w.wanted.push((D.to_owned(), DkimAlgorithm::Ed25519));
                            }
                            w.check("configuration changed");
                        }
                        Event::Import(algorithm) => {
                            // `dkim import`: active at once, the group's
                            // other active keys drain, the signer reloads.
                            w.serial += 1;
                            let now = w.now;
                            for k in w.book.keys.iter_mut().filter(|k| {
                                in_group(k, D, algorithm) && k.state == KeyState::Active
                            }) {
                                k.state = KeyState::Draining;
                                k.since = now;
                            }
                            let mut k =
                                key(&format!("s{}", w.serial), algorithm, KeyState::Active, true);
                            k.since = now;
                            k.created_at = now;
                            w.book.keys.push(k);
                            w.update_signer();
                            w.reload(true);
                            w.check("after an import");
                        }
                        Event::ForceRotate => w.pass(true, true, true, None),
                        Event::Revoke { pick, force } => {
                            if w.book.keys.is_empty() {
                                continue;
                            }
                            let i = pick % w.book.keys.len();
                            let k = w.book.keys[i].clone();
                            let fam = k.algorithm.is_rsa();
                            let before = w.book.clone();
                            let r = request_revoke(&mut w.book, &w.wanted, i, w.now, force);
                            if r.is_err() {
                                prop_assert_eq!(&w.book, &before);
                                continue;
                            }
                            // Revoking the only key with --force is the
                            // user's explicit choice: excluded.
                            if force
                                && request_revoke(&mut before.clone(), &w.wanted, i, w.now, false)
                                    == Err(RevokeRefused::OnlyKey)
                            {
                                w.established.remove(&(false, fam));
                                w.established.remove(&(true, fam));
                            }
                            w.update_signer();
                            w.check("revocation asked");
                            w.pass(false, true, true, None);
                        }
                        Event::Pass { dns_ok, reload_ok } => w.pass(false, dns_ok, reload_ok, None),
                        Event::Crash { after, tables_written } => {
                            w.pass(false, true, true, Some((after, tables_written)));
                        }
                        Event::Clock(dt) => w.now += dt,
                    }
                }
            }
        }
    }
}
