//! The order of MTA-STS changes (RFC 8461 §8.1–8.3): per policy domain,
//! the next step towards the wanted policy. Pure: the wanted policy, what
//! the ledger ([`super::ledger`]) says the responders served and DNS
//! showed, and `now` come in; a [`Plan`] comes out. No DNS, files, clock
//! or network; tested with tables and a fixed clock.
//!
//! The rules, in the order the planner applies them:
//! - The policy to serve ([`Plan::policy`]) is the wanted one, except that
//!   a host the live policy lists and the wanted one drops stays listed
//!   while it is in the MX set, and until one MX TTL after it was seen gone
//!   from it on every authoritative server (removing: the MX record first,
//!   [`Step::RemoveMx`], then the policy).
//! - `enforce` is refused while a live MX host (in the MX set) is not
//!   listed by the policy, was never checked, or fails its STARTTLS
//!   certificate check: the plan names the host and the reason, and keeps
//!   the live policy's mode (`testing` when none is live).
//! - Body first: until every responder serves the new body (fetched back
//!   over HTTPS), the step is [`Step::ServeBody`]; only then
//!   [`Step::PublishId`], and a wait until every authoritative server
//!   answers the id. The planner never publishes an id whose body is not
//!   served everywhere, so a reader polling both never sees the new id
//!   with the old body.
//! - Adding an MX host: it is listed by the policy first; once that id is
//!   seen everywhere since `t`, [`Step::AddMxAfter`] says the MX record may
//!   be added at `t + TXT TTL` (the larger of the current record's TTL and
//!   the replaced records', which resolvers may still hold).
//! - `disable` (§8.3): the policy becomes `mode: none` (same MX lines, a
//!   `max_age` of at most [`DISABLE_MAX_AGE`]) with its new id, served and
//!   published as above; the records are deleted
//!   ([`Step::DeleteRecords`]) once every policy served before may have
//!   expired from senders' caches: the ledger's `held_until`, and the live
//!   policy's `max_age` after the `none` id was seen everywhere (the RFC's
//!   31,557,600 s limit when no live policy is known).
//!
//! [`Policy`] here is a policy as served and recorded in the ledger (its
//! parts and its id); the id comes from the caller's [`IdOf`]:
//! [`super::policy::id_of`] in service, a readable stand-in in the tables.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::ledger::{DomainLedger, TxtState};

/// The largest `max_age` of the `mode: none` policy `disable` publishes
/// (RFC 8461 §8.3: "a small max_age (e.g., one day)").
pub const DISABLE_MAX_AGE: u64 = 86_400;

/// The largest `max_age` RFC 8461 §3.2 allows, in seconds.
pub const MAX_AGE_LIMIT: u64 = super::policy::MAX_AGE_LIMIT as u64;

pub use super::policy::Mode;

/// A policy as served: its parts and its id, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub mode: Mode,
    /// `mx` lines: host names or `*.` wildcards, lower case.
    pub mx: BTreeSet<String>,
    pub max_age: u64,
    pub id: String,
}

/// How a policy's id is computed from its content (the canonical form's
/// hash, in `policy.rs`).
pub type IdOf = fn(Mode, &BTreeSet<String>, u64) -> String;

/// The configured policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub mode: Mode,
    pub mx: &'a BTreeSet<String>,
    pub max_age: u64,
}

/// Everything the planner decides from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub wanted: Wanted<'a>,
    /// `mxkeys mta-sts disable DOMAIN` was asked for.
    pub disable: bool,
    pub ledger: &'a DomainLedger,
    /// Every responder that must serve the body.
    pub responders: &'a [String],
    /// Every authoritative server of the `_mta-sts` name.
    pub servers: &'a [String],
    pub id_of: IdOf,
    pub now: i64,
}

/// The next step for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Serve the body of policy `id`; `responder` (the first, in order)
    /// has not been seen serving it (empty: no responder configured).
    ServeBody { id: String, responder: String },
    /// Set the `_mta-sts` TXT id to `id`: its body is served everywhere.
    PublishId { id: String },
    /// Remove `host`'s MX record: the policy keeps listing it until one MX
    /// TTL after it is seen gone.
    RemoveMx { host: String },
    /// The policy listing `host` is live: its MX record may be added at
    /// `at` (one TXT TTL after the id was seen everywhere).
    AddMxAfter { host: String, at: i64 },
    /// Nothing to do but wait; `until`: when something changes if nothing
    /// else does (`None`: when DNS shows something new).
    Wait {
        until: Option<i64>,
        reason: WaitReason,
    },
    /// `mode: none` has been live for the old `max_age`: delete the TXT
    /// record and stop serving the policy.
    DeleteRecords,
    /// Policy `id` is served and published everywhere, the MX set agrees.
    InStep { id: String },
}

/// What a [`Step::Wait`] waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// TXT id `id` published, not yet answered by `server`.
    IdNotSeen { id: String, server: String },
    /// `host` was seen gone from the MX set; it leaves the policy at
    /// `until` (one MX TTL later).
    MxTtl { host: String, until: i64 },
    /// `host` is not in the MX set, but was never seen leaving it: it
    /// stays in the policy until the ledger records when it went.
    MxNotSeenGone { host: String },
    /// `mode: none` is live; the records go at `until`, after the old
    /// `max_age`.
    OldMaxAge { until: i64 },
}

/// Why `enforce` is refused for a live MX host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefuseReason {
    /// The policy does not list it.
    NotListed,
    /// Its STARTTLS certificate was never checked.
    NotChecked,
    /// Its STARTTLS certificate check failed, with this one-line reason.
    Starttls(String),
}

/// `enforce` refused: the host, why, and the mode kept instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub host: String,
    pub reason: RefuseReason,
    pub keep: Mode,
}

/// The planner's answer for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The policy to serve and publish now.
    pub policy: Policy,
    /// Set when `enforce` was wanted and refused.
    pub refused: Option<Refusal>,
    pub step: Step,
}

/// Whether policy `mx` line `pattern` covers `host`, both lower case as
/// the ledger keeps them (the rule is [`super::policy::line_covers`]).
pub fn covers(pattern: &str, host: &str) -> bool {
    super::policy::line_covers(pattern, host)
}

fn listed(mx: &BTreeSet<String>, host: &str) -> bool {
    mx.iter().any(|p| covers(p, host))
}

/// The MX lines to serve: the wanted ones, plus the live policy's lines
/// still needed by a host on its way out. Returns the lines and, per line
/// kept, what it waits for.
fn mx_lines(
    wanted: &BTreeSet<String>,
    ledger: &DomainLedger,
    now: i64,
) -> (BTreeSet<String>, Vec<WaitReason>) {
    let mut lines = wanted.clone();
    let mut waits = Vec::new();
    let Some(live) = &ledger.live else {
        return (lines, waits);
    };
    let leaving = |h: &String| !listed(wanted, h);
    for p in live.mx.iter().filter(|p| !wanted.contains(*p)) {
        if ledger.mx.hosts.iter().any(|h| covers(p, h) && leaving(h)) {
            lines.insert(p.clone());
            continue;
        }
        let mut kept = false;
        for (h, since) in &ledger.mx.gone {
            let until = since.saturating_add(i64::from(ledger.mx.ttl));
            if covers(p, h) && leaving(h) && now < until {
                kept = true;
                waits.push(WaitReason::MxTtl {
                    host: h.clone(),
                    until,
                });
            }
        }
        let literal = !p.starts_with("*.");
        if !kept && literal && leaving(p) && !ledger.mx.gone.contains_key(p) {
            kept = true;
            waits.push(WaitReason::MxNotSeenGone { host: p.clone() });
        }
        if kept {
            lines.insert(p.clone());
        }
    }
    (lines, waits)
}

/// The first live MX host that bars `enforce` under `mx`, and why.
fn enforce_bar(mx: &BTreeSet<String>, ledger: &DomainLedger) -> Option<(String, RefuseReason)> {
    ledger.mx.hosts.iter().find_map(|h| {
        let reason = if !listed(mx, h) {
            RefuseReason::NotListed
        } else {
            match ledger.starttls.get(h) {
                None => RefuseReason::NotChecked,
                Some(c) if !c.ok => RefuseReason::Starttls(
                    c.reason
                        .clone()
                        .unwrap_or_else(|| "check failed".to_owned()),
                ),
                Some(_) => return None,
            }
        };
        Some((h.clone(), reason))
    })
}

/// The next step for one domain (see the module doc for the rules).
pub fn plan(inputs: &Inputs<'_>) -> Plan {
    let ledger = inputs.ledger;
    let live_mode = ledger.live.as_ref().map(|p| p.mode);
    let (mode, mx, max_age, waits, refused) = if inputs.disable {
        let mx = ledger
            .live
            .as_ref()
            .map_or_else(|| inputs.wanted.mx.clone(), |p| p.mx.clone());
        let max_age = inputs.wanted.max_age.min(DISABLE_MAX_AGE);
        (Mode::None, mx, max_age, Vec::new(), None)
    } else {
        let (mx, waits) = mx_lines(inputs.wanted.mx, ledger, inputs.now);
        let mut mode = inputs.wanted.mode;
        let mut refused = None;
        if mode == Mode::Enforce
            && let Some((host, reason)) = enforce_bar(&mx, ledger)
        {
            let keep = live_mode.unwrap_or(Mode::Testing);
            mode = keep;
            refused = Some(Refusal { host, reason, keep });
        }
        (mode, mx, inputs.wanted.max_age, waits, refused)
    };
    let id = (inputs.id_of)(mode, &mx, max_age);
    let policy = Policy {
        mode,
        mx,
        max_age,
        id,
    };
    let step = next_step(inputs, &policy, &waits);
    Plan {
        policy,
        refused,
        step,
    }
}

fn next_step(inputs: &Inputs<'_>, policy: &Policy, waits: &[WaitReason]) -> Step {
    let ledger = inputs.ledger;
    if inputs.disable && ledger.live.is_none() && !ledger.txt_present() {
        return Step::InStep {
            id: policy.id.clone(),
        };
    }
    if let Some(responder) = ledger.not_serving(inputs.responders, &policy.id) {
        return Step::ServeBody {
            id: policy.id.clone(),
            responder: responder.to_owned(),
        };
    }
    let (since, ttl) = match ledger.txt_state(inputs.servers, &policy.id) {
        TxtState::Everywhere { since, ttl } => (since, ttl),
        TxtState::Missing { server } => {
            if ledger.published_id.as_deref() == Some(policy.id.as_str()) {
                return Step::Wait {
                    until: None,
                    reason: WaitReason::IdNotSeen {
                        id: policy.id.clone(),
                        server,
                    },
                };
            }
            return Step::PublishId {
                id: policy.id.clone(),
            };
        }
    };
    // The MX record goes before the policy line, which the policy keeps
    // meanwhile.
    if !inputs.disable
        && let Some(live) = &ledger.live
        && let Some(host) = ledger
            .mx
            .hosts
            .iter()
            .find(|h| listed(&live.mx, h) && !listed(inputs.wanted.mx, h))
    {
        return Step::RemoveMx { host: host.clone() };
    }
    if let Some(w) = waits
        .iter()
        .find(|w| matches!(w, WaitReason::MxNotSeenGone { .. }))
    {
        return Step::Wait {
            until: None,
            reason: w.clone(),
        };
    }
    let earliest = waits
        .iter()
        .filter_map(|w| match w {
            WaitReason::MxTtl { until, .. } => Some((*until, w)),
            _ => None,
        })
        .min_by_key(|(until, _)| *until);
    if let Some((until, w)) = earliest {
        return Step::Wait {
            until: Some(until),
            reason: w.clone(),
        };
    }
    let adding = policy
        .mx
        .iter()
        .find(|p| !p.starts_with("*.") && !ledger.mx.hosts.contains(*p));
    if let (Some(host), false) = (adding, inputs.disable) {
        return Step::AddMxAfter {
            host: host.clone(),
            at: since.saturating_add(i64::from(ttl)),
        };
    }
    if inputs.disable {
        // The live policy was served until `since` at the latest; when
        // `went_live` has recorded the none policy, `held_until` has it.
        let last = match &ledger.live {
            Some(live) if live.id == policy.id => 0,
            Some(live) => live.max_age,
            None => MAX_AGE_LIMIT,
        };
        let last = since.saturating_add(i64::try_from(last).unwrap_or(i64::MAX));
        let until = ledger.held_until.max(last);
        if inputs.now < until {
            return Step::Wait {
                until: Some(until),
                reason: WaitReason::OldMaxAge { until },
            };
        }
        return Step::DeleteRecords;
    }
    Step::InStep {
        id: policy.id.clone(),
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::IdNotSeen { id, server } => write!(
                f,
                "TXT id {id} published, not yet answered by authoritative server {server}"
            ),
            WaitReason::MxTtl { host, until } => write!(
                f,
                "MX host {host} seen gone from the MX set, leaves the policy at {}",
                crate::rfc3339(*until)
            ),
            WaitReason::MxNotSeenGone { host } => write!(
                f,
                "MX host {host} is listed but not in the MX set, and was never seen leaving it"
            ),
            WaitReason::OldMaxAge { until } => write!(
                f,
                "mode none is live, the records are deleted after the old max_age, at {}",
                crate::rfc3339(*until)
            ),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::ServeBody { id, responder } if responder.is_empty() => {
                write!(f, "serve policy body {id}: no responder configured")
            }
            Step::ServeBody { id, responder } => write!(
                f,
                "serve policy body {id}: not yet fetched back from {responder}"
            ),
            Step::PublishId { id } => {
                write!(f, "publish TXT id {id}: its body is served everywhere")
            }
            Step::RemoveMx { host } => write!(
                f,
                "remove the MX record for {host}: it leaves the policy one MX TTL after it is gone"
            ),
            Step::AddMxAfter { host, at } => write!(
                f,
                "add MX {host} after {}: the policy listing it is live",
                crate::rfc3339(*at)
            ),
            Step::Wait {
                until: Some(until),
                reason,
            } => write!(f, "wait until {}: {reason}", crate::rfc3339(*until)),
            Step::Wait {
                until: None,
                reason,
            } => write!(f, "wait: {reason}"),
            Step::DeleteRecords => f.write_str(
                "delete the _mta-sts TXT record and the policy: mode none outlived the old max_age",
            ),
            Step::InStep { id } => {
                write!(f, "in step: policy {id} served and published everywhere")
            }
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::NotListed => f.write_str("is not listed by the policy"),
            RefuseReason::NotChecked => f.write_str("has no STARTTLS certificate check yet"),
            RefuseReason::Starttls(why) => write!(f, "fails its STARTTLS certificate check: {why}"),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "enforce refused: MX host {} {}; keeping mode {}",
            self.host, self.reason, self.keep
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::ledger::{Fetched, StarttlsCheck, TxtSeen};
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;
    const WEEK: u64 = 604_800;

    /// A readable stand-in for the canonical form's hash.
    fn id_of(mode: Mode, mx: &BTreeSet<String>, max_age: u64) -> String {
        let mx: Vec<&str> = mx.iter().map(String::as_str).collect();
        format!("{mode}/{}/{max_age}", mx.join(","))
    }

    fn set(hosts: &[&str]) -> BTreeSet<String> {
        hosts.iter().map(|h| (*h).to_owned()).collect()
    }

    fn policy(mode: Mode, mx: &[&str]) -> Policy {
        let mx = set(mx);
        Policy {
            mode,
            id: id_of(mode, &mx, WEEK),
            mx,
            max_age: WEEK,
        }
    }

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    /// Responders r1, r2 and servers ns1, ns2 all agree, since a day, on
    /// the live policy; its hosts are in DNS (MX TTL 3600 s) and pass
    /// their STARTTLS check.
    fn settled(live: &Policy) -> DomainLedger {
        let mut l = DomainLedger::default();
        serve(&mut l, "r1", &live.id);
        serve(&mut l, "r2", &live.id);
        answer(&mut l, "ns1", &live.id, NOW - DAY);
        answer(&mut l, "ns2", &live.id, NOW - DAY);
        l.published_id = Some(live.id.clone());
        l.live = Some(live.clone());
        l.mx.hosts = live.mx.clone();
        l.mx.ttl = 3_600;
        for h in &live.mx {
            check(&mut l, h, None);
        }
        l
    }

    fn serve(l: &mut DomainLedger, responder: &str, id: &str) {
        l.served.insert(
            responder.into(),
            Fetched {
                id: Some(id.into()),
                since: NOW - DAY,
                at: NOW,
            },
        );
    }

    fn answer(l: &mut DomainLedger, server: &str, id: &str, since: i64) {
        l.txt.insert(
            server.into(),
            TxtSeen {
                id: Some(id.into()),
                ttl: 300,
                since,
                replaced_ttl: 0,
            },
        );
    }

    /// A STARTTLS check: `None` passes, `Some(why)` fails.
    fn check(l: &mut DomainLedger, host: &str, failure: Option<&str>) {
        l.starttls.insert(
            host.into(),
            StarttlsCheck {
                ok: failure.is_none(),
                reason: failure.map(str::to_owned),
                at: NOW,
            },
        );
    }

    fn plan_for(wanted: &Policy, ledger: &DomainLedger, disable: bool) -> Plan {
        let responders = list(&["r1", "r2"]);
        let servers = list(&["ns1", "ns2"]);
        plan(&Inputs {
            wanted: Wanted {
                mode: wanted.mode,
                mx: &wanted.mx,
                max_age: wanted.max_age,
            },
            disable,
            ledger,
            responders: &responders,
            servers: &servers,
            id_of,
            now: NOW,
        })
    }

    fn serve_body(id: &str, responder: &str) -> Step {
        Step::ServeBody {
            id: id.into(),
            responder: responder.into(),
        }
    }

    #[test]
    fn the_body_is_served_everywhere_before_the_id_and_the_id_is_then_verified_on_every_server() {
        let old = policy(Mode::Testing, &["mx1.example.org"]);
        let new = policy(Mode::Enforce, &["mx1.example.org"]);
        let id = new.id.as_str();
        type Case = (&'static str, fn(&mut DomainLedger, &str), Step);
        let cases: &[Case] = &[
            ("nothing served yet", |_, _| {}, serve_body(id, "r1")),
            (
                "one responder still serves the old body",
                |l, id| serve(l, "r1", id),
                serve_body(id, "r2"),
            ),
            (
                "a failed fetch is not a served body",
                |l, id| {
                    serve(l, "r1", id);
                    serve(l, "r2", id);
                    l.served.get_mut("r2").expect("r2").id = None;
                },
                serve_body(id, "r2"),
            ),
            (
                "served everywhere: the id may change",
                |l, id| {
                    serve(l, "r1", id);
                    serve(l, "r2", id);
                },
                Step::PublishId { id: id.into() },
            ),
            (
                "published, one server still answers the old id",
                |l, id| {
                    serve(l, "r1", id);
                    serve(l, "r2", id);
                    l.published_id = Some(id.into());
                    answer(l, "ns1", id, NOW);
                },
                Step::Wait {
                    until: None,
                    reason: WaitReason::IdNotSeen {
                        id: id.into(),
                        server: "ns2".into(),
                    },
                },
            ),
            (
                "a new id on a server is not published while the body is not served",
                |l, id| {
                    serve(l, "r1", id);
                    answer(l, "ns1", id, NOW);
                    answer(l, "ns2", id, NOW);
                },
                serve_body(id, "r2"),
            ),
            (
                "served and answered everywhere: in step",
                |l, id| {
                    serve(l, "r1", id);
                    serve(l, "r2", id);
                    answer(l, "ns1", id, NOW);
                    answer(l, "ns2", id, NOW);
                },
                Step::InStep { id: id.into() },
            ),
        ];
        for (name, adjust, expected) in cases {
            let mut l = settled(&old);
            adjust(&mut l, id);
            let p = plan_for(&new, &l, false);
            assert_eq!(p.policy, new, "{name}");
            assert_eq!(p.step, *expected, "{name}");
        }
        let none = plan(&Inputs {
            wanted: Wanted {
                mode: new.mode,
                mx: &new.mx,
                max_age: new.max_age,
            },
            disable: false,
            ledger: &settled(&old),
            responders: &[],
            servers: &list(&["ns1"]),
            id_of,
            now: NOW,
        });
        assert_eq!(none.step, serve_body(id, ""), "no responder serves nothing");
    }

    /// Plays the planner's steps against a world where each step reaches
    /// one responder or one server at a time, and a reader that polls
    /// every server and every responder after each move.
    #[test]
    fn a_reader_polling_both_never_sees_the_new_id_with_the_old_body() {
        let old = policy(Mode::Testing, &["mx1.example.org"]);
        let new = policy(Mode::Testing, &["mx1.example.org", "mx2.example.org"]);
        let mut l = settled(&old);
        let responders = ["r1", "r2"];
        let servers = ["ns1", "ns2"];
        let mut reached = Vec::new();
        for _ in 0..20 {
            let p = plan_for(&new, &l, false);
            match &p.step {
                Step::ServeBody { id, responder } => serve(&mut l, responder, id),
                Step::PublishId { id } => l.published_id = Some(id.clone()),
                Step::Wait {
                    reason: WaitReason::IdNotSeen { id, server },
                    ..
                } => answer(&mut l, server, id, NOW),
                _ => break,
            }
            reached.push(p.step.clone());
            for s in servers {
                let txt = l.txt[s].id.as_deref();
                if txt == Some(new.id.as_str()) {
                    for r in responders {
                        assert_eq!(
                            l.served[r].id.as_deref(),
                            txt,
                            "{s} answers the new id while {r} serves another body, after {reached:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(
            plan_for(&new, &l, false).step,
            Step::AddMxAfter {
                host: "mx2.example.org".into(),
                at: NOW + 300
            },
            "the world converged, after {reached:?}"
        );
        assert!(reached.len() >= 5, "{reached:?}");
    }

    #[test]
    fn an_mx_host_is_added_to_the_policy_first_and_to_dns_one_txt_ttl_after_its_id_is_everywhere() {
        let old = policy(Mode::Testing, &["mx1.example.org"]);
        let new = policy(Mode::Testing, &["mx1.example.org", "mx2.example.org"]);
        let id = new.id.as_str();
        type Case = (&'static str, fn(&mut DomainLedger, &str), Step);
        let add = |at| Step::AddMxAfter {
            host: "mx2.example.org".into(),
            at,
        };
        fn everywhere(l: &mut DomainLedger, id: &str, since: i64) {
            serve(l, "r1", id);
            serve(l, "r2", id);
            answer(l, "ns1", id, since - 50);
            answer(l, "ns2", id, since);
        }
        let cases: &[Case] = &[
            (
                "the policy listing it is served first",
                |_, _| {},
                serve_body(id, "r1"),
            ),
            (
                "its id is not yet everywhere: no MX yet",
                |l, id| {
                    serve(l, "r1", id);
                    serve(l, "r2", id);
                    l.published_id = Some(id.into());
                    answer(l, "ns1", id, NOW);
                },
                Step::Wait {
                    until: None,
                    reason: WaitReason::IdNotSeen {
                        id: id.into(),
                        server: "ns2".into(),
                    },
                },
            ),
            (
                "seen everywhere just now: one TXT TTL from the last server",
                |l, id| everywhere(l, id, NOW),
                add(NOW + 300),
            ),
            (
                "seen everywhere long ago: the time is past",
                |l, id| everywhere(l, id, NOW - DAY),
                add(NOW - DAY + 300),
            ),
            (
                "the old record's larger TTL counts",
                |l, id| {
                    everywhere(l, id, NOW);
                    l.txt.get_mut("ns1").expect("ns1").replaced_ttl = 3_600;
                },
                add(NOW + 3_600),
            ),
            (
                "the MX record is there: in step",
                |l, id| {
                    everywhere(l, id, NOW - DAY);
                    l.mx.hosts.insert("mx2.example.org".into());
                    check(l, "mx2.example.org", None);
                },
                Step::InStep { id: id.into() },
            ),
        ];
        for (name, adjust, expected) in cases {
            let mut l = settled(&old);
            adjust(&mut l, id);
            let p = plan_for(&new, &l, false);
            assert_eq!(p.policy, new, "{name}");
            assert_eq!(p.step, *expected, "{name}");
        }
        let wild = policy(Mode::Testing, &["*.example.org", "mx1.example.org"]);
        let l = settled(&wild);
        assert_eq!(
            plan_for(&wild, &l, false).step,
            Step::InStep {
                id: wild.id.clone()
            },
            "a wildcard line is never an MX host to add"
        );
    }

    #[test]
    fn an_mx_host_leaves_dns_first_and_the_policy_one_mx_ttl_after_it_is_seen_gone() {
        let both = policy(Mode::Testing, &["mx1.example.org", "mx2.example.org"]);
        let one = policy(Mode::Testing, &["mx1.example.org"]);
        let mx2 = "mx2.example.org";
        let gone = |l: &mut DomainLedger, since: i64| {
            l.mx.hosts.remove(mx2);
            l.mx.gone.insert(mx2.into(), since);
        };
        // (case, ledger change, policy served, step)
        type Case = (&'static str, fn(&mut DomainLedger), bool, Step);
        let cases: &[Case] = &[
            (
                "still in DNS: remove its MX record, keep it listed",
                |_| {},
                true,
                Step::RemoveMx { host: mx2.into() },
            ),
            (
                "gone for less than the MX TTL: still listed",
                |l| {
                    l.mx.hosts.remove("mx2.example.org");
                    l.mx.gone.insert("mx2.example.org".into(), NOW - 100);
                },
                true,
                Step::Wait {
                    until: Some(NOW + 3_500),
                    reason: WaitReason::MxTtl {
                        host: "mx2.example.org".into(),
                        until: NOW + 3_500,
                    },
                },
            ),
            (
                "gone for exactly the MX TTL: it leaves the policy",
                |l| {
                    l.mx.hosts.remove("mx2.example.org");
                    l.mx.gone.insert("mx2.example.org".into(), NOW - 3_600);
                },
                false,
                serve_body(&one.id, "r1"),
            ),
            (
                "not in DNS, never seen leaving: still listed",
                |l| {
                    l.mx.hosts.remove("mx2.example.org");
                },
                true,
                Step::Wait {
                    until: None,
                    reason: WaitReason::MxNotSeenGone {
                        host: "mx2.example.org".into(),
                    },
                },
            ),
        ];
        for (name, adjust, listed, expected) in cases {
            let mut l = settled(&both);
            adjust(&mut l);
            let p = plan_for(&one, &l, false);
            let served = if *listed { &both } else { &one };
            assert_eq!(p.policy, *served, "{name}");
            assert_eq!(p.step, *expected, "{name}");
        }
        let mut l = settled(&both);
        gone(&mut l, NOW - 3_600);
        serve(&mut l, "r1", &one.id);
        serve(&mut l, "r2", &one.id);
        assert_eq!(
            plan_for(&one, &l, false).step,
            Step::PublishId { id: one.id.clone() },
            "then its id, like any change"
        );
        let wild = policy(Mode::Testing, &["*.example.org"]);
        let mut l = settled(&wild);
        l.mx.hosts = set(&["mx1.example.org", mx2]);
        assert_eq!(
            plan_for(&one, &l, false).policy.mx,
            set(&["*.example.org", "mx1.example.org"]),
            "a wildcard line covering a leaving host stays"
        );
    }

    #[test]
    fn enforce_is_refused_naming_the_host_while_a_live_mx_is_unlisted_or_fails_starttls() {
        let mx = &["mx1.example.org", "mx2.example.org"];
        let enforce = policy(Mode::Enforce, mx);
        let refused = |host: &str, reason, keep| {
            Some(Refusal {
                host: host.into(),
                reason,
                keep,
            })
        };
        type Case = (&'static str, Mode, fn(&mut DomainLedger), Option<Refusal>);
        let cases: &[Case] = &[
            (
                "every live host listed and valid",
                Mode::Testing,
                |_| {},
                None,
            ),
            (
                "a live MX host the policy does not list",
                Mode::Testing,
                |l| {
                    l.mx.hosts.insert("mx3.example.org".into());
                    check(l, "mx3.example.org", None);
                },
                refused("mx3.example.org", RefuseReason::NotListed, Mode::Testing),
            ),
            (
                "a self-signed certificate",
                Mode::Testing,
                |l| check(l, "mx2.example.org", Some("self-signed certificate")),
                refused(
                    "mx2.example.org",
                    RefuseReason::Starttls("self-signed certificate".into()),
                    Mode::Testing,
                ),
            ),
            (
                "a host never checked",
                Mode::Testing,
                |l| {
                    l.starttls.remove("mx1.example.org");
                },
                refused("mx1.example.org", RefuseReason::NotChecked, Mode::Testing),
            ),
            (
                "the live mode is kept, whatever it is",
                Mode::None,
                |l| check(l, "mx1.example.org", Some("expired")),
                refused(
                    "mx1.example.org",
                    RefuseReason::Starttls("expired".into()),
                    Mode::None,
                ),
            ),
            (
                "no live policy: testing",
                Mode::Testing,
                |l| {
                    l.live = None;
                    check(l, "mx1.example.org", Some("expired"));
                },
                refused(
                    "mx1.example.org",
                    RefuseReason::Starttls("expired".into()),
                    Mode::Testing,
                ),
            ),
            (
                "a host being added is not live yet",
                Mode::Testing,
                |l| {
                    l.mx.hosts.remove("mx2.example.org");
                    l.starttls.remove("mx2.example.org");
                },
                None,
            ),
        ];
        for (name, live_mode, adjust, expected) in cases {
            let live = policy(*live_mode, mx);
            let mut l = settled(&live);
            adjust(&mut l);
            let p = plan_for(&enforce, &l, false);
            assert_eq!(p.refused, *expected, "{name}");
            let mode = expected.as_ref().map_or(Mode::Enforce, |r| r.keep);
            assert_eq!(p.policy, policy(mode, mx), "{name}");
        }
    }

    /// What `disable` serves for a live `mx1.example.org` policy: mode
    /// none, one day.
    fn disabled() -> Policy {
        let mx = set(&["mx1.example.org"]);
        Policy {
            mode: Mode::None,
            id: id_of(Mode::None, &mx, DISABLE_MAX_AGE),
            mx,
            max_age: DISABLE_MAX_AGE,
        }
    }

    #[test]
    fn disable_publishes_mode_none_and_deletes_the_records_only_once_every_old_policy_expired() {
        let live = policy(Mode::Enforce, &["mx1.example.org"]);
        let none = disabled();
        let id = none.id.as_str();
        const W: i64 = WEEK as i64;
        fn everywhere(l: &mut DomainLedger, id: &str, since: i64) {
            serve(l, "r1", id);
            serve(l, "r2", id);
            answer(l, "ns1", id, since);
            answer(l, "ns2", id, since);
        }
        let wait = |until| Step::Wait {
            until: Some(until),
            reason: WaitReason::OldMaxAge { until },
        };
        type Case = (&'static str, fn(&mut DomainLedger, &str), Step);
        let cases: &[Case] = &[
            ("mode none is served first", |_, _| {}, serve_body(id, "r1")),
            (
                "then its new id",
                |l, id| {
                    serve(l, "r1", id);
                    serve(l, "r2", id);
                },
                Step::PublishId { id: id.into() },
            ),
            (
                "live for less than the old max_age: the records stay",
                |l, id| {
                    everywhere(l, id, NOW - 1);
                    l.went_live(&disabled(), NOW - 1);
                },
                wait(NOW - 1 + W),
            ),
            (
                "seen everywhere, not yet recorded live: the live max_age counts",
                |l, id| everywhere(l, id, NOW - 1),
                wait(NOW - 1 + W),
            ),
            (
                "an older policy with a longer max_age counts",
                |l, id| {
                    l.held_until = NOW + 100 * DAY;
                    everywhere(l, id, NOW - W);
                    l.went_live(&disabled(), NOW - W);
                },
                wait(NOW + 100 * DAY),
            ),
            (
                "no live policy known: the largest max_age allowed counts",
                |l, id| {
                    l.live = None;
                    everywhere(l, id, NOW - 1);
                },
                wait(NOW - 1 + 31_557_600),
            ),
            (
                "mode none went live over a policy never seen live: the largest max_age allowed counts",
                |l, id| {
                    l.live = None;
                    everywhere(l, id, NOW - W);
                    l.went_live(&disabled(), NOW - W);
                },
                wait(NOW - W + 31_557_600),
            ),
            (
                "live for the old max_age: delete them",
                |l, id| {
                    everywhere(l, id, NOW - W);
                    l.went_live(&disabled(), NOW - W);
                },
                Step::DeleteRecords,
            ),
            (
                "deleted: nothing left to do",
                |l, _| {
                    l.live = None;
                    l.txt.clear();
                    l.served.clear();
                },
                Step::InStep { id: id.into() },
            ),
            (
                "an unlisted, failing host does not hold up disable",
                |l, _| {
                    l.mx.hosts.insert("mx9.example.org".into());
                },
                serve_body(id, "r1"),
            ),
        ];
        for (name, adjust, expected) in cases {
            let mut l = settled(&live);
            adjust(&mut l, id);
            let p = plan_for(&live, &l, true);
            assert_eq!((&p.policy, &p.refused), (&none, &None), "{name}");
            assert_eq!(p.step, *expected, "{name}");
        }
    }

    #[test]
    fn a_wildcard_line_covers_exactly_one_leftmost_label() {
        let cases = [
            ("mx.example.org", "mx.example.org", true),
            ("mx.example.org", "mx2.example.org", false),
            ("*.example.org", "mx.example.org", true),
            ("*.example.org", "a.mx.example.org", false),
            ("*.example.org", "example.org", false),
            ("*.example.org", ".example.org", false),
        ];
        for (pattern, host, expected) in cases {
            assert_eq!(covers(pattern, host), expected, "{pattern} {host}");
        }
    }

    #[test]
    fn every_decision_reads_as_one_line_naming_the_host_id_and_time() {
        let cases = [
            (
                Step::AddMxAfter {
                    host: "mx2.example.org".into(),
                    at: 0,
                }
                .to_string(),
                "add MX mx2.example.org after 1970-01-01T00:00:00Z: the policy listing it is live",
            ),
            (
                serve_body("abc", "r1").to_string(),
                "serve policy body abc: not yet fetched back from r1",
            ),
            (
                Step::Wait {
                    until: Some(3_600),
                    reason: WaitReason::MxTtl {
                        host: "mx2.example.org".into(),
                        until: 3_600,
                    },
                }
                .to_string(),
                "wait until 1970-01-01T01:00:00Z: MX host mx2.example.org seen gone from the MX set, \
                 leaves the policy at 1970-01-01T01:00:00Z",
            ),
            (
                Refusal {
                    host: "mx3.example.org".into(),
                    reason: RefuseReason::Starttls("self-signed certificate".into()),
                    keep: Mode::Testing,
                }
                .to_string(),
                "enforce refused: MX host mx3.example.org fails its STARTTLS certificate check: \
                 self-signed certificate; keeping mode testing",
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(line, expected);
        }
        let others = [
            Step::PublishId { id: "abc".into() },
            Step::RemoveMx { host: "mx".into() },
            Step::DeleteRecords,
            Step::InStep { id: "abc".into() },
            serve_body("abc", ""),
            Step::Wait {
                until: None,
                reason: WaitReason::IdNotSeen {
                    id: "abc".into(),
                    server: "ns1".into(),
                },
            },
            Step::Wait {
                until: None,
                reason: WaitReason::MxNotSeenGone { host: "mx".into() },
            },
            Step::Wait {
                until: Some(0),
                reason: WaitReason::OldMaxAge { until: 0 },
            },
        ];
        for step in others {
            let line = step.to_string();
            assert!(!line.contains('\n') && !line.is_empty(), "{line}");
        }
    }
}
