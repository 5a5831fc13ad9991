//! Waits until every authoritative server of a name answers exactly the
//! expected record set ([`Propagation::wait`]: DKIM keys, probes), or a set
//! containing the expected values ([`Propagation::wait_contains`]: ACME
//! challenges, whose name other clients may hold values at too).
//!
//! Each server is asked directly, with recursion not desired (RD=0), and
//! only authoritative answers (AA set) count: a recursive resolver's cache
//! says nothing about what an ACME server or a DKIM verifier will see next.
//! Values are compared as unordered sets of whole values (TXT strings
//! joined); an empty expected set means the set must be absent (NXDOMAIN or
//! NODATA).
//!
//! When a server answers a CNAME for the name (a delegated
//! `_acme-challenge` pointing into another zone), the check moves to the
//! target: every server of the name must agree on the CNAME, and every
//! authoritative server of the target must answer the expected set there.
//! Chains are followed up to [`MAX_CNAME_CHAIN`] links.
//!
//! Which servers are asked: a configured `nameservers` list serves the
//! configured `zone` (every name when no zone is set); names outside it
//! are asked at the authoritative servers found through the resolver.
//! [`Propagation::follow_cnames`] resolves a CNAME chain as a CA sees it:
//! names in the zone at the configured servers, others through the
//! resolver, never through a DNS provider's credentials.
//!
//! A server is an NS host (or one configured address). It counts as having
//! the record when ONE of its addresses that this host can reach answers
//! the expected set: on a host with only IPv4 (or only IPv6), the addresses
//! of the other family are skipped (said once per wait at debug level)
//! instead of failing every round. "Can reach" is a route check: a UDP
//! `connect()` to the address, which sends nothing, fails with
//! `ENETUNREACH`/`EADDRNOTAVAIL` when this host has no route for it. A
//! server with no reachable address, or whose address lookup fails, is an
//! error naming it: the set of servers never silently shrinks. The
//! decisions (`server_set`, `per_server`) are pure and table-tested;
//! the lookups and the route check feed them.
//!
//! **Call [`Propagation::wait`] only after the record was written.** Asking
//! before the write gets NXDOMAIN answers, and anything that keeps them
//! (a resolver between a verifier and the servers, the cache of the machine
//! that asked, a secondary's negative cache) holds on to the absence for the
//! zone's negative TTL (the SOA minimum), which delays validation long
//! after the record is in place.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData as WireRData, RecordType as WireType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::rfc2136::{
    check_question, display_name, from_wire, parse_name, query_message, rcode_text, wire, wire_type,
};
use crate::{Error, RData, RecordType};

// One round with DNSSEC (DANE): `Propagation::observe`, `zone_signed`, and
// the validating resolver's view.
pub use crate::observe::{Observed, Secure, secure_lookup};

/// The longest CNAME chain followed from the name asked.
pub const MAX_CNAME_CHAIN: usize = 8;

/// Longest wait for one server's answer within a round.
pub(crate) const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// How to check propagation.
#[derive(Debug, Clone)]
pub struct Propagation {
    /// The authoritative servers of `zone` (of every name when `zone` is not
    /// set). Default, and for names outside `zone`: found through
    /// `resolver` (SOA of the name's zone, its NS names, their addresses,
    /// port 53).
    pub nameservers: Option<Vec<SocketAddr>>,
    /// The zone `nameservers` serve (absolute, without the final dot).
    pub zone: Option<String>,
    /// The recursive resolver used to find authoritative servers and to
    /// follow CNAMEs outside `zone`. Default: the system's
    /// (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// Time between two rounds of questions.
    pub interval: Duration,
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for Propagation {
    fn default() -> Self {
        Propagation {
            nameservers: None,
            zone: None,
            resolver: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(60),
        }
    }
}

/// One server that answered as expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAnswer {
    /// The authoritative server's address, as it was asked.
    pub server: SocketAddr,
    /// The name asked at this server: the name given to [`Propagation::wait`],
    /// or a CNAME target on the way.
    pub name: String,
    /// What it answered: the expected set, or `CNAME target.` on the way.
    pub answer: String,
    /// Time from the start of the wait to the first answer of the run of
    /// matching answers that ended the wait.
    pub first_matched_after: Duration,
}

/// What a wait asks of each server's set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Exactly the expected values.
    Exactly,
    /// At least the expected values (others may be there too).
    Contains,
}

/// What one server answered for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Records(Vec<RData>),
    /// NXDOMAIN or NODATA.
    Absent(&'static str),
    Cname(String),
    /// No usable answer (timeout, REFUSED, not authoritative...).
    Failed(String),
}

impl Answer {
    fn describe(&self) -> String {
        match self {
            Answer::Records(values) => describe_values(values),
            Answer::Absent(why) => (*why).to_owned(),
            Answer::Cname(target) => format!("CNAME {target}."),
            Answer::Failed(why) => why.clone(),
        }
    }
}

/// One server's answer in a round, and whether it is the one wanted.
#[derive(Debug, Clone)]
struct Observation {
    server: SocketAddr,
    name: String,
    answer: Answer,
    matched: bool,
    /// Why it does not match, beyond the answer itself.
    wanted: String,
    at: Duration,
}

impl Propagation {
    /// Polls every `interval` until every authoritative server answers
    /// exactly `expected` for `name`/`rtype` (following CNAMEs), or
    /// `timeout` passes. The error names each server still differing and
    /// what it answered.
    ///
    /// Call it only after the record was written (see the module
    /// documentation).
    pub async fn wait(
        &self,
        name: &str,
        rtype: RecordType,
        expected: &[RData],
    ) -> Result<Vec<ServerAnswer>, Error> {
        self.wait_for(name, rtype, expected, Expect::Exactly).await
    }

    /// Like [`Propagation::wait`], until every authoritative server's set
    /// contains `values` (values of other clients may be there too).
    pub async fn wait_contains(
        &self,
        name: &str,
        rtype: RecordType,
        values: &[RData],
    ) -> Result<Vec<ServerAnswer>, Error> {
        self.wait_for(name, rtype, values, Expect::Contains).await
    }

    async fn wait_for(
        &self,
        name: &str,
        rtype: RecordType,
        expected: &[RData],
        expect: Expect,
    ) -> Result<Vec<ServerAnswer>, Error> {
        if let Some(other) = expected.iter().find(|v| v.record_type() != rtype) {
            return Err(Error::Config(format!(
                "propagation check of {rtype} records given a {} value",
                other.record_type()
            )));
        }
        let start = Instant::now();
        let deadline = start + self.timeout;
        let name = parse_name(name)?;
        let mut servers = ServerCache::new(self)?;
        let mut first_match: HashMap<(SocketAddr, String), Duration> = HashMap::new();
        loop {
            let round = self
                .round(
                    &mut servers,
                    &name,
                    rtype,
                    expected,
                    expect,
                    start,
                    deadline,
                )
                .await;
            let last_problem = match round {
                Ok(observations) => {
                    first_match.retain(|key, _| {
                        observations
                            .iter()
                            .any(|o| o.matched && (o.server, o.name.clone()) == *key)
                    });
                    for o in &observations {
                        if o.matched {
                            first_match
                                .entry((o.server, o.name.clone()))
                                .or_insert(o.at);
                        }
                        tracing::debug!(server = %o.server, name = %o.name, answer = %o.answer.describe(), matched = o.matched, "propagation");
                    }
                    if observations.iter().all(|o| o.matched) {
                        return Ok(observations
                            .into_iter()
                            .map(|o| ServerAnswer {
                                first_matched_after: first_match
                                    .get(&(o.server, o.name.clone()))
                                    .copied()
                                    .unwrap_or(o.at),
                                server: o.server,
                                answer: o.answer.describe(),
                                name: o.name,
                            })
                            .collect());
                    }
                    let mut text = String::new();
                    for o in observations.iter().filter(|o| !o.matched) {
                        if !text.is_empty() {
                            text.push_str("; ");
                        }
                        let _ = write!(
                            text,
                            "{} answered {} for {}{}",
                            o.server,
                            o.answer.describe(),
                            o.name,
                            o.wanted
                        );
                    }
                    text
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() + self.interval > deadline {
                return Err(Error::Transport(format!(
                    "{} {rtype} not propagated after {:?} (expected {}{}): {last_problem}",
                    display_name(&name),
                    self.timeout,
                    if expect == Expect::Contains {
                        "a set containing "
                    } else {
                        ""
                    },
                    describe_values(expected)
                )));
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// The authoritative servers of the zone holding `name`: the configured
    /// list, or those found through the resolver.
    ///
    /// Only addresses this host can reach are listed; a server with none,
    /// or whose address lookup fails, is an error naming it.
    pub async fn authoritative_servers(&self, name: &str) -> Result<Vec<SocketAddr>, Error> {
        let name = parse_name(name)?;
        let set = ServerCache::new(self)?.servers(&name).await?;
        Ok(addresses(&set))
    }

    /// The zone holding `name` (the owner of its SOA, found through the
    /// resolver), for providers whose API needs it.
    pub async fn zone_of(&self, name: &str) -> Result<String, Error> {
        let name = parse_name(name)?;
        let zone = ServerCache::new(self)?.zone_of(&name).await?;
        Ok(display_name(&zone))
    }

    /// Where the CNAME chain starting at `name` ends, as a CA resolving it
    /// sees it: each link asked at the configured servers when it is in
    /// their zone, otherwise through the resolver. `name` itself when it is
    /// no CNAME.
    pub async fn follow_cnames(&self, name: &str) -> Result<String, Error> {
        let mut servers = ServerCache::new(self)?;
        let mut chain = vec![crate::canonical_name(name)];
        let mut qname = parse_name(name)?;
        loop {
            let target = match servers.configured_for(&qname) {
                Some(addrs) => {
                    let limit = QUERY_TIMEOUT;
                    let answers =
                        ask_all(&addrs, &qname, RecordType::Cname, limit, Instant::now()).await;
                    let mut target = None;
                    let mut failures = Vec::new();
                    let mut answered = false;
                    for (server, answer, _) in answers {
                        match answer {
                            Answer::Records(values) => {
                                answered = true;
                                target = values.into_iter().find_map(|v| match v {
                                    RData::Cname(t) => Some(t),
                                    _ => None,
                                });
                                break;
                            }
                            Answer::Absent(_) => {
                                answered = true;
                                break;
                            }
                            Answer::Cname(t) => {
                                answered = true;
                                target = Some(t);
                                break;
                            }
                            Answer::Failed(why) => failures.push(format!("{server}: {why}")),
                        }
                    }
                    if !answered {
                        return Err(Error::Transport(format!(
                            "CNAME lookup of {}: {}",
                            display_name(&qname),
                            failures.join("; ")
                        )));
                    }
                    target
                }
                None => servers.resolve_cname(&qname).await?,
            };
            let Some(target) = target else {
                return Ok(display_name(&qname));
            };
            let target = crate::canonical_name(&target);
            qname = next_link(&mut chain, target)?;
        }
    }

    /// One round: asks every server of the name, follows a CNAME they
    /// answer, and returns one observation per server asked.
    #[allow(clippy::too_many_arguments)]
    async fn round(
        &self,
        servers: &mut ServerCache,
        name: &Name,
        rtype: RecordType,
        expected: &[RData],
        expect: Expect,
        start: Instant,
        deadline: Instant,
    ) -> Result<Vec<Observation>, Error> {
        let mut observations = Vec::new();
        let mut qname = name.clone();
        let mut chain = vec![display_name(name)];
        loop {
            let set = servers.servers(&qname).await?;
            let addrs = addresses(&set);
            let limit = QUERY_TIMEOUT.min(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(200)),
            );
            let answers = ask_all(&addrs, &qname, rtype, limit, start).await;
            let target = if rtype == RecordType::Cname {
                None
            } else {
                answers.iter().find_map(|(_, a, _)| match a {
                    Answer::Cname(t) => Some(t.clone()),
                    _ => None,
                })
            };
            let qdisplay = display_name(&qname);
            let mut asked = Vec::with_capacity(answers.len());
            match target {
                Some(target) => {
                    for (server, answer, at) in answers {
                        let matched = answer == Answer::Cname(target.clone());
                        asked.push(Observation {
                            server,
                            name: qdisplay.clone(),
                            matched,
                            wanted: if matched {
                                String::new()
                            } else {
                                format!(" (others answer CNAME {target}.)")
                            },
                            answer,
                            at,
                        });
                    }
                    observations.extend(per_server(&set, &qdisplay, asked));
                    qname = next_link(&mut chain, target)?;
                }
                None => {
                    for (server, answer, at) in answers {
                        let matched = match &answer {
                            Answer::Records(values) => match expect {
                                Expect::Exactly => crate::same_set(values, expected),
                                Expect::Contains => crate::contains_all(values, expected),
                            },
                            Answer::Absent(_) => expected.is_empty(),
                            Answer::Cname(_) | Answer::Failed(_) => false,
                        };
                        asked.push(Observation {
                            server,
                            name: qdisplay.clone(),
                            answer,
                            matched,
                            wanted: String::new(),
                            at,
                        });
                    }
                    observations.extend(per_server(&set, &qdisplay, asked));
                    return Ok(observations);
                }
            }
        }
    }
}

/// Adds `target` to the CNAME `chain` followed so far and returns it as
/// the next name to ask; an error naming the whole chain when `target`
/// loops back or the chain grows past [`MAX_CNAME_CHAIN`] links.
fn next_link(chain: &mut Vec<String>, target: String) -> Result<Name, Error> {
    if chain.contains(&target) || chain.len() > MAX_CNAME_CHAIN {
        chain.push(target);
        return Err(Error::Transport(format!(
            "CNAME chain too long or looping: {}",
            chain.join(" -> ")
        )));
    }
    let next = parse_name(&target)?;
    chain.push(target);
    Ok(next)
}

/// Asks every server at once; answers in the order of `servers`.
async fn ask_all(
    servers: &[SocketAddr],
    name: &Name,
    rtype: RecordType,
    limit: Duration,
    start: Instant,
) -> Vec<(SocketAddr, Answer, Duration)> {
    let mut tasks = JoinSet::new();
    for (i, server) in servers.iter().copied().enumerate() {
        let name = name.clone();
        tasks.spawn(async move {
            let answer = ask(server, &name, rtype, limit).await;
            (i, server, answer, start.elapsed())
        });
    }
    let mut answers = Vec::with_capacity(servers.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(i, ..)| *i);
    answers
        .into_iter()
        .map(|(_, server, answer, at)| (server, answer, at))
        .collect()
}

/// Asks one server directly, RD=0, and classifies its answer.
async fn ask(server: SocketAddr, name: &Name, rtype: RecordType, limit: Duration) -> Answer {
    let request = query_message(name, wire_type(rtype));
    let bytes = match request.to_vec() {
        Ok(bytes) => bytes,
        Err(e) => return Answer::Failed(format!("cannot encode the query: {e}")),
    };
    let raw = match wire::exchange(server, &bytes, request.metadata.id, limit).await {
        Ok(raw) => raw,
        Err(e) => return Answer::Failed(e.to_string()),
    };
    let response = match Message::from_vec(&raw) {
        Ok(response) => response,
        Err(e) => return Answer::Failed(format!("an unreadable answer ({e})")),
    };
    if let Err(e) = check_question(&request, &response, server) {
        return Answer::Failed(e.to_string());
    }
    classify(&response, name, rtype)
}

/// Whether an answer counts at all: NOERROR or NXDOMAIN, with AA set
/// (only an authoritative server's answer says what verifiers will see).
/// The reason it does not, in one line.
pub(crate) fn authoritative(response: &Message) -> Result<(), String> {
    let code = response.metadata.response_code;
    if !matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
        return Err(rcode_text(code));
    }
    if !response.metadata.authoritative {
        return Err(format!(
            "a non-authoritative {} (is it a server of the zone?)",
            rcode_text(code)
        ));
    }
    Ok(())
}

/// The answer's records of type `t` owned by `name` itself.
pub(crate) fn records_at<'a>(
    response: &'a Message,
    name: &'a Name,
    t: WireType,
) -> impl Iterator<Item = &'a hickory_proto::rr::Record> {
    response
        .answers
        .iter()
        .filter(move |r| r.name == *name && r.record_type() == t)
}

/// The target of a CNAME the answer holds at `name`, if any.
pub(crate) fn cname_at(response: &Message, name: &Name) -> Option<String> {
    records_at(response, name, WireType::CNAME).find_map(|r| match &r.data {
        WireRData::CNAME(c) => Some(display_name(&c.0)),
        _ => None,
    })
}

fn classify(response: &Message, name: &Name, rtype: RecordType) -> Answer {
    if let Err(why) = authoritative(response) {
        return Answer::Failed(why);
    }
    if rtype != RecordType::Cname
        && let Some(target) = cname_at(response, name)
    {
        return Answer::Cname(target);
    }
    let code = response.metadata.response_code;
    let values: Vec<RData> = records_at(response, name, wire_type(rtype))
        .filter_map(|r| from_wire(&r.data))
        .collect();
    if !values.is_empty() {
        return Answer::Records(values);
    }
    Answer::Absent(if code == ResponseCode::NXDomain {
        "NXDOMAIN"
    } else {
        "NODATA"
    })
}

/// A set for messages: each value in zone-file form, long ones shortened.
fn describe_values(values: &[RData]) -> String {
    if values.is_empty() {
        return "no records".to_owned();
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted
        .iter()
        .map(|v| {
            let text = v.to_string();
            if text.chars().count() > 80 {
                let head: String = text.chars().take(60).collect();
                format!("{head}...({} bytes)", text.len())
            } else {
                text
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One authoritative server: an NS host and the addresses of it this host
/// can reach, or one configured address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// The NS host name, or the configured address as text.
    pub(crate) name: String,
    /// Never empty; asked in this order.
    pub(crate) addrs: Vec<SocketAddr>,
}

/// What finding one server's addresses gave: each address with the route
/// check's verdict (`Err` says why this host cannot reach it), and the
/// address lookups that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Found {
    addrs: Vec<(SocketAddr, Result<(), NoRoute>)>,
    lookup_errors: Vec<String>,
}

/// Why this host cannot reach an address: its family and what `connect()`
/// said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {family} route from this host ({reason})")]
pub struct NoRoute {
    /// `IPv4` or `IPv6`.
    pub family: &'static str,
    /// What `connect()` said.
    pub reason: String,
}

/// An address skipped because this host cannot reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Skipped {
    server: String,
    addr: SocketAddr,
    why: NoRoute,
}

/// Pure: the servers of `zone` from what was found for each of them. Every
/// server keeps its reachable addresses; unreachable ones are returned as
/// skipped. A server with no address at all (lookup failed or empty) or
/// none reachable makes the whole set an error naming each such server.
fn server_set(
    zone: &str,
    found: Vec<(String, Found)>,
) -> Result<(Vec<Server>, Vec<Skipped>), Error> {
    let mut servers = Vec::new();
    let mut skipped = Vec::new();
    let mut problems = Vec::new();
    if found.is_empty() {
        return Err(Error::Transport(format!(
            "zone {zone} has no authoritative servers (no NS records)"
        )));
    }
    for (name, found) in found {
        let lookups = if found.lookup_errors.is_empty() {
            String::new()
        } else {
            format!("; {}", found.lookup_errors.join("; "))
        };
        if found.addrs.is_empty() {
            problems.push(if found.lookup_errors.is_empty() {
                format!("{name}: no A or AAAA records")
            } else {
                format!(
                    "{name}: address lookup failed ({})",
                    found.lookup_errors.join("; ")
                )
            });
            continue;
        }
        let mut addrs = Vec::new();
        let mut unreachable = Vec::new();
        for (addr, route) in found.addrs {
            match route {
                Ok(()) => {
                    if !addrs.contains(&addr) {
                        addrs.push(addr);
                    }
                }
                Err(why) => {
                    unreachable.push(format!("{addr}: {why}"));
                    skipped.push(Skipped {
                        server: name.clone(),
                        addr,
                        why,
                    });
                }
            }
        }
        if addrs.is_empty() {
            problems.push(format!(
                "{name}: no address this host can reach ({}{lookups})",
                unreachable.join(", ")
            ));
            continue;
        }
        addrs.sort_by_key(|a| (matches!(a.ip(), IpAddr::V6(_)), *a));
        servers.push(Server { name, addrs });
    }
    if !problems.is_empty() {
        return Err(Error::Transport(format!(
            "authoritative servers of {zone}: {}",
            problems.join("; ")
        )));
    }
    Ok((servers, skipped))
}

/// Every address to ask, each once: IPv4 first, in server order.
pub(crate) fn addresses(servers: &[Server]) -> Vec<SocketAddr> {
    let mut all: Vec<SocketAddr> = Vec::new();
    for addr in servers.iter().flat_map(|s| &s.addrs) {
        if !all.contains(addr) {
            all.push(*addr);
        }
    }
    all.sort_by_key(|a| matches!(a.ip(), IpAddr::V6(_)));
    all
}

/// Pure: one round's per-address observations folded into per-server ones.
/// A server with an address that matched is that one observation (its first
/// matching address); a server with none keeps every address's observation,
/// unmatched, each naming the server. An address shared by two servers is
/// reported once. Addresses that gave no observation at all (their query
/// task died) leave a server unmatched.
fn per_server(servers: &[Server], name: &str, observations: Vec<Observation>) -> Vec<Observation> {
    let mut out: Vec<Observation> = Vec::new();
    for server in servers {
        let mine = || {
            server
                .addrs
                .iter()
                .filter_map(|a| observations.iter().find(|o| o.server == *a))
        };
        let mut picked: Vec<Observation> = match mine().find(|o| o.matched) {
            Some(o) => vec![o.clone()],
            None => {
                let mut all: Vec<Observation> = mine().cloned().collect();
                for o in &mut all {
                    if o.server.to_string() != server.name {
                        o.wanted.push_str(&format!(" (server {})", server.name));
                    }
                }
                if all.is_empty() {
                    all = server
                        .addrs
                        .iter()
                        .map(|a| Observation {
                            server: *a,
                            name: name.to_owned(),
                            answer: Answer::Failed("no answer".to_owned()),
                            matched: false,
                            wanted: format!(" (server {})", server.name),
                            at: Duration::ZERO,
                        })
                        .collect();
                }
                all
            }
        };
        picked.retain(|o| {
            !out.iter()
                .any(|seen| seen.server == o.server && seen.matched == o.matched)
        });
        out.extend(picked);
    }
    out
}

/// Why an address lookup failed, or `None` when the name truly has no
/// records of the type (NXDOMAIN or NODATA from the resolver). A REFUSED
/// or SERVFAIL, which the resolver also reports as "no records", is a
/// failure.
fn lookup_failure(e: &NetError) -> Option<String> {
    match e {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { response_code, .. })) => {
            match response_code {
                ResponseCode::NXDomain | ResponseCode::NoError => None,
                code => Some(rcode_text(*code)),
            }
        }
        other => Some(other.to_string()),
    }
}

/// Whether this host has a route to `addr`: a UDP socket of its family
/// `connect()`ed to it (nothing is sent). `Err` says why not. Also used by
/// mxkeys' other lookups of addresses (MTA-STS responders, MX hosts), so
/// a single-family host skips the other family everywhere alike.
pub fn route_to(addr: SocketAddr) -> Result<(), NoRoute> {
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let local: SocketAddr = if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    std::net::UdpSocket::bind(local)
        .and_then(|socket| socket.connect(addr))
        .map_err(|e| NoRoute {
            family,
            reason: e.to_string(),
        })
}

/// The authoritative servers of each name asked, found once per wait.
pub(crate) struct ServerCache {
    configured: Option<Vec<SocketAddr>>,
    /// The zone `configured` serves (all names when `None`).
    zone: Option<Name>,
    /// The configured list checked for routes, once.
    configured_set: Option<Vec<Server>>,
    resolver_addr: Option<SocketAddr>,
    resolver: Option<TokioResolver>,
    found: HashMap<Name, Vec<Server>>,
    /// Addresses already said to be skipped in this wait.
    said: Vec<SocketAddr>,
}

impl ServerCache {
    pub(crate) fn new(propagation: &Propagation) -> Result<ServerCache, Error> {
        if let Some(list) = &propagation.nameservers
            && list.is_empty()
        {
            return Err(Error::Config(
                "propagation: the nameservers list is empty".to_owned(),
            ));
        }
        let zone = match &propagation.zone {
            Some(zone) => Some(parse_name(zone)?),
            None => None,
        };
        Ok(ServerCache {
            configured: propagation.nameservers.clone(),
            zone,
            configured_set: None,
            resolver_addr: propagation.resolver,
            resolver: None,
            found: HashMap::new(),
            said: Vec::new(),
        })
    }

    /// The configured servers, when they serve `name`.
    fn configured_for(&self, name: &Name) -> Option<Vec<SocketAddr>> {
        let list = self.configured.as_ref()?;
        match &self.zone {
            Some(zone) if !zone.zone_of(name) => None,
            _ => Some(list.clone()),
        }
    }

    pub(crate) async fn servers(&mut self, name: &Name) -> Result<Vec<Server>, Error> {
        if let Some(list) = self.configured_for(name) {
            if let Some(set) = &self.configured_set {
                return Ok(set.clone());
            }
            let found = list
                .iter()
                .map(|addr| {
                    (
                        addr.to_string(),
                        Found {
                            addrs: vec![(*addr, route_to(*addr))],
                            lookup_errors: Vec::new(),
                        },
                    )
                })
                .collect();
            let (set, _) = server_set("the configured nameservers", found)?;
            self.configured_set = Some(set.clone());
            return Ok(set);
        }
        if let Some(found) = self.found.get(name) {
            return Ok(found.clone());
        }
        let found = self.discover(name).await?;
        self.found.insert(name.clone(), found.clone());
        Ok(found)
    }

    fn resolver(&mut self) -> Result<&TokioResolver, Error> {
        if self.resolver.is_none() {
            let builder = match self.resolver_addr {
                Some(addr) => {
                    let mut connection = ConnectionConfig::udp();
                    connection.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    let server = NameServerConfig::new(addr.ip(), true, vec![connection, tcp]);
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_name_servers(vec![server]),
                        TokioRuntimeProvider::default(),
                    )
                }
                None => TokioResolver::builder_tokio().map_err(|e| {
                    Error::Config(format!(
                        "cannot read the system resolver configuration: {e}"
                    ))
                })?,
            };
            let resolver = builder
                .build()
                .map_err(|e| Error::Config(format!("cannot build a resolver: {e}")))?;
            self.resolver = Some(resolver);
        }
        Ok(self.resolver.as_ref().expect("set above"))
    }

    /// The CNAME target of `name` through the resolver (`None`: no CNAME).
    async fn resolve_cname(&mut self, name: &Name) -> Result<Option<String>, Error> {
        let resolver = self.resolver()?.clone();
        match resolver.lookup(name.clone(), WireType::CNAME).await {
            Ok(lookup) => Ok(lookup.answers().iter().find_map(|r| match &r.data {
                WireRData::CNAME(c) if r.name == *name => Some(display_name(&c.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() => Ok(None),
            Err(e) => Err(Error::Transport(format!(
                "CNAME lookup of {}: {e}",
                display_name(name)
            ))),
        }
    }

    /// The zone holding `name`: SOA lookups through the resolver from the
    /// name up, until one answers for the name asked.
    async fn zone_of(&mut self, name: &Name) -> Result<Name, Error> {
        let shown = display_name(name);
        let resolver = self.resolver()?.clone();
        let transport =
            |what: &str, e: &dyn std::fmt::Display| Error::Transport(format!("{what}: {e}"));
        let mut candidate = name.clone();
        let zone = loop {
            match resolver.lookup(candidate.clone(), WireType::SOA).await {
                Ok(lookup) => {
                    if lookup
                        .answers()
                        .iter()
                        .any(|r| r.record_type() == WireType::SOA && r.name == candidate)
                    {
                        break candidate;
                    }
                }
                Err(e) if e.is_no_records_found() => {}
                Err(e) => {
                    return Err(transport(
                        &format!("SOA lookup of {}", display_name(&candidate)),
                        &e,
                    ));
                }
            }
            if candidate.is_root() {
                return Err(Error::NoZone(shown));
            }
            candidate = candidate.base_name();
        };
        Ok(zone)
    }

    /// SOA lookups from the name up to find its zone, then the zone's NS
    /// names and their addresses.
    async fn discover(&mut self, name: &Name) -> Result<Vec<Server>, Error> {
        let shown = display_name(name);
        let zone = self.zone_of(name).await?;
        let resolver = self.resolver()?.clone();
        let transport =
            |what: &str, e: &dyn std::fmt::Display| Error::Transport(format!("{what}: {e}"));
        let ns = resolver
            .lookup(zone.clone(), WireType::NS)
            .await
            .map_err(|e| transport(&format!("NS lookup of {}", display_name(&zone)), &e))?;
        let hosts: Vec<Name> = ns
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                WireRData::NS(ns) => Some(ns.0.clone()),
                _ => None,
            })
            .collect();
        let mut found = Vec::with_capacity(hosts.len());
        for host in &hosts {
            let mut this = Found::default();
            for family in [WireType::A, WireType::AAAA] {
                match resolver.lookup(host.clone(), family).await {
                    Ok(lookup) => {
                        for r in lookup.answers() {
                            let ip = match &r.data {
                                WireRData::A(a) => IpAddr::V4(a.0),
                                WireRData::AAAA(a) => IpAddr::V6(a.0),
                                _ => continue,
                            };
                            let addr = SocketAddr::new(ip, 53);
                            if !this.addrs.iter().any(|(a, _)| *a == addr) {
                                this.addrs.push((addr, route_to(addr)));
                            }
                        }
                    }
                    Err(e) => match lookup_failure(&e) {
                        None => {}
                        Some(why) => this.lookup_errors.push(format!("{family} lookup: {why}")),
                    },
                }
            }
            found.push((display_name(host), this));
        }
        let (servers, skipped) = server_set(&display_name(&zone), found)?;
        for s in skipped {
            if self.said.contains(&s.addr) {
                continue;
            }
            self.said.push(s.addr);
            tracing::debug!(server = %s.server, addr = %s.addr, why = %s.why, "propagation: address skipped, this host cannot reach it");
        }
        tracing::debug!(name = %shown, zone = %display_name(&zone), servers = ?servers, "authoritative servers");
        Ok(servers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, OpCode};
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::{CNAME, TXT};

    fn response(code: ResponseCode, aa: bool, answers: Vec<Record>) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = code;
        m.metadata.authoritative = aa;
        m.answers = answers;
        m
    }

    #[test]
    fn answers_are_classified() {
        let name = parse_name("_acme-challenge.example.test").unwrap();
        let txt = |v: &str| {
            Record::from_rdata(
                name.clone(),
                60,
                WireRData::TXT(TXT::new(vec![v.to_owned()])),
            )
        };
        assert_eq!(
            classify(
                &response(ResponseCode::NXDomain, true, vec![]),
                &name,
                RecordType::Txt
            ),
            Answer::Absent("NXDOMAIN")
        );
        assert_eq!(
            classify(
                &response(ResponseCode::NoError, true, vec![]),
                &name,
                RecordType::Txt
            ),
            Answer::Absent("NODATA")
        );
        assert_eq!(
            classify(
                &response(ResponseCode::NoError, true, vec![txt("a"), txt("b")]),
                &name,
                RecordType::Txt
            ),
            Answer::Records(vec![RData::Txt("a".into()), RData::Txt("b".into())])
        );
        assert!(matches!(
            classify(
                &response(ResponseCode::NoError, false, vec![txt("a")]),
                &name,
                RecordType::Txt
            ),
            Answer::Failed(_)
        ));
        assert_eq!(
            classify(
                &response(ResponseCode::Refused, true, vec![]),
                &name,
                RecordType::Txt
            ),
            Answer::Failed("REFUSED".into())
        );
        // A CNAME (with the target's records chased by the server) is
        // followed, not taken as the answer.
        let target = parse_name("x.delegated.test").unwrap();
        let cname = Record::from_rdata(name.clone(), 60, WireRData::CNAME(CNAME(target.clone())));
        let chased = Record::from_rdata(target, 60, WireRData::TXT(TXT::new(vec!["v".into()])));
        assert_eq!(
            classify(
                &response(ResponseCode::NoError, true, vec![cname.clone(), chased]),
                &name,
                RecordType::Txt
            ),
            Answer::Cname("x.delegated.test".into())
        );
        // Asked for the CNAME itself, it is the answer.
        assert_eq!(
            classify(
                &response(ResponseCode::NoError, true, vec![cname]),
                &name,
                RecordType::Cname
            ),
            Answer::Records(vec![RData::Cname("x.delegated.test".into())])
        );
    }

    fn sa(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// An address and its route check.
    /// An address and its route check (`Err`: the family not routed).
    type Addr<'a> = (&'a str, Result<(), &'static str>);

    fn found(addrs: &[Addr], lookup_errors: &[&str]) -> Found {
        Found {
            addrs: addrs
                .iter()
                .map(|(a, r)| {
                    let route = r.map_err(|family| NoRoute {
                        family,
                        reason: "unreachable".to_owned(),
                    });
                    (sa(a), route)
                })
                .collect(),
            lookup_errors: lookup_errors.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    const V4: &str = "127.0.0.1:53";
    const V6: &str = "[::1]:53";
    const NO_V6: Result<(), &str> = Err("IPv6");
    const NO_V4: Result<(), &str> = Err("IPv4");

    #[test]
    fn a_server_keeps_only_the_addresses_this_host_can_reach() {
        // (addresses with their route check, lookup errors) -> kept addresses
        // (None: the server set is an error naming the server).
        type Row<'a> = (&'a [Addr<'a>], &'a [&'a str], Option<&'a [&'a str]>);
        let table: &[Row] = &[
            // Both families reachable: both asked, IPv4 first.
            (&[(V6, Ok(())), (V4, Ok(()))], &[], Some(&[V4, V6])),
            // An IPv4-only host: the AAAA address is skipped.
            (&[(V4, Ok(())), (V6, NO_V6)], &[], Some(&[V4])),
            // An IPv6-only host: the A address is skipped.
            (&[(V4, NO_V4), (V6, Ok(()))], &[], Some(&[V6])),
            // One family's lookup failed, the other gave a reachable one.
            (&[(V4, Ok(()))], &["AAAA lookup: timed out"], Some(&[V4])),
            // Nothing reachable: an error, not a smaller set.
            (&[(V4, NO_V4), (V6, NO_V6)], &[], None),
            (&[(V6, NO_V6)], &["A lookup: timed out"], None),
            // No address at all: the lookup failed or found nothing.
            (&[], &[], None),
            (&[], &["A lookup: SERVFAIL", "AAAA lookup: SERVFAIL"], None),
        ];
        for (addrs, errors, kept) in table {
            let got = server_set(
                "example.test",
                vec![("ns1.example.test".to_owned(), found(addrs, errors))],
            );
            match (kept, got) {
                (Some(kept), Ok((servers, skipped))) => {
                    let want: Vec<SocketAddr> = kept.iter().map(|a| sa(a)).collect();
                    assert_eq!(servers.len(), 1, "{addrs:?}");
                    assert_eq!(servers[0].name, "ns1.example.test");
                    assert_eq!(servers[0].addrs, want, "{addrs:?}");
                    assert_eq!(skipped.len(), addrs.len() - kept.len(), "{addrs:?}");
                    assert!(skipped.iter().all(|s| s.server == "ns1.example.test"));
                }
                (None, Err(Error::Transport(message))) => {
                    assert!(message.contains("ns1.example.test"), "{message}");
                    assert!(message.contains("example.test"), "{message}");
                    for e in *errors {
                        assert!(message.contains(e), "{message}");
                    }
                }
                (kept, got) => panic!("{addrs:?} {errors:?}: wanted {kept:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn one_server_without_an_address_fails_the_set_and_is_named() {
        let err = server_set(
            "example.test",
            vec![
                ("ns1.example.test".to_owned(), found(&[(V4, Ok(()))], &[])),
                ("nowhere.example.test".to_owned(), found(&[], &[])),
                (
                    "v6.example.test".to_owned(),
                    found(&[("[2001:db8::1]:53", NO_V6)], &[]),
                ),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("nowhere.example.test: no A or AAAA records"),
            "{err}"
        );
        assert!(
            err.contains("v6.example.test: no address this host can reach ([2001:db8::1]:53"),
            "{err}"
        );
        assert!(!err.contains("ns1"), "{err}");
        assert!(server_set("example.test", vec![]).is_err());
    }

    fn seen(server: &str, matched: bool) -> Observation {
        Observation {
            server: sa(server),
            name: "x.example.test".to_owned(),
            answer: if matched {
                Answer::Records(vec![RData::Txt("v".into())])
            } else {
                Answer::Absent("NXDOMAIN")
            },
            matched,
            wanted: String::new(),
            at: Duration::ZERO,
        }
    }

    fn server(name: &str, addrs: &[&str]) -> Server {
        Server {
            name: name.to_owned(),
            addrs: addrs.iter().map(|a| sa(a)).collect(),
        }
    }

    #[test]
    fn a_server_matches_when_one_of_its_addresses_answers_the_set() {
        let both = [server("ns1.example.test", &[V4, V6])];
        // (per-address outcomes) -> (reported addresses, all matched)
        type Row<'a> = (&'a [(&'a str, bool)], &'a [&'a str], bool);
        let table: &[Row] = &[
            (&[(V4, true), (V6, true)], &[V4], true),
            (&[(V4, false), (V6, true)], &[V6], true),
            (&[(V4, true), (V6, false)], &[V4], true),
            (&[(V4, false), (V6, false)], &[V4, V6], false),
            // An address whose query gave nothing does not count.
            (&[(V4, false)], &[V4], false),
            (&[], &[V4, V6], false),
        ];
        for (outcomes, reported, all) in table {
            let got = per_server(
                &both,
                "x.example.test",
                outcomes.iter().map(|(a, m)| seen(a, *m)).collect(),
            );
            let addrs: Vec<SocketAddr> = got.iter().map(|o| o.server).collect();
            let want: Vec<SocketAddr> = reported.iter().map(|a| sa(a)).collect();
            assert_eq!(addrs, want, "{outcomes:?}");
            assert_eq!(got.iter().all(|o| o.matched), *all, "{outcomes:?}");
            for o in got.iter().filter(|o| !o.matched) {
                assert!(o.wanted.contains("ns1.example.test"), "{o:?}");
                assert_eq!(o.name, "x.example.test");
            }
        }
    }

    #[test]
    fn every_server_must_match_and_a_shared_address_is_reported_once() {
        let two = [
            server("ns1.example.test", &[V4]),
            server("ns2.example.test", &["127.0.0.2:53"]),
        ];
        let got = per_server(
            &two,
            "x.example.test",
            vec![seen(V4, true), seen("127.0.0.2:53", false)],
        );
        assert_eq!(got.len(), 2);
        assert!(!got.iter().all(|o| o.matched));
        assert!(got[1].wanted.contains("ns2.example.test"), "{got:?}");

        let shared = [
            server("ns1.example.test", &[V4]),
            server("ns2.example.test", &[V4]),
        ];
        let got = per_server(&shared, "x.example.test", vec![seen(V4, true)]);
        assert_eq!(got.len(), 1);
        assert!(got[0].matched);
        // A configured address is its own server name: not repeated.
        let configured = [server(V4, &[V4])];
        let got = per_server(&configured, "x.example.test", vec![seen(V4, false)]);
        assert_eq!(got[0].wanted, "");
    }

    #[test]
    fn the_route_check_tells_reachable_loopback() {
        assert_eq!(route_to(sa("127.0.0.1:53")), Ok(()));
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = RData::Txt("p".repeat(400));
        let text = describe_values(&[long]);
        assert!(text.len() < 100, "{text}");
        assert_eq!(describe_values(&[]), "no records");
    }
}
