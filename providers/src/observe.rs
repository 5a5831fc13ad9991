//! DNS observation with DNSSEC, for DANE: what every authoritative server
//! serves, and whether it is signed ([`Propagation::observe`],
//! [`Propagation::zone_signed`]), and what a validating resolver answers
//! ([`secure_lookup`]).
//!
//! The rule: one observation is one round of questions, never a wait; it
//! reports facts and decides nothing (the DANE pass and the gate decide
//! from them). Authoritative servers are asked as [`Propagation::wait`]
//! asks them: the same server set (configured `nameservers` for their
//! `zone`, otherwise the zone's NS hosts found through the resolver), the
//! same reachability rule (addresses this host has no route to are
//! skipped), directly, RD=0, and only authoritative (AA) answers count.
//! Every question carries EDNS DO=1, so a signed zone's servers add their
//! RRSIGs, and NSEC/NSEC3 proofs to a denial.
//!
//! Per server, every address of it that answered is reported (a DANE
//! sender's resolver may ask any of them: a record counts as served only
//! when each reported view has it). A server none of whose addresses
//! answered usably (timeout, REFUSED, not authoritative, a CNAME at the
//! name) makes the whole observation an error naming it: the set of
//! servers never silently shrinks.
//!
//! [`secure_lookup`] asks the recursive resolver (by default the first
//! `nameserver` of /etc/resolv.conf) with RD=1, DO=1 and AD=1, and reports
//! the AD bit of the answer: whether that resolver validated it. A
//! resolver that finds an answer bogus says SERVFAIL: that is an error.
//!
//! The reading of answers (`view`, `zone_from`, `secure_answer`, `fold`,
//! `first_nameserver`) is pure and table-tested; the queries feed it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::dnssec::rdata::DNSSECRData;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RData as WireRData, Record, RecordType as WireType};
use tokio::task::JoinSet;

use crate::propagation::{
    MAX_CNAME_CHAIN, Propagation, QUERY_TIMEOUT, Server, ServerCache, addresses, authoritative,
    cname_at, records_at,
};
use crate::rfc2136::{
    check_question, display_name, from_wire, parse_name, query_message, rcode_text, wire, wire_type,
};
use crate::{Error, RData, RecordType};

/// Longest wait for a recursive resolver's answer (it may have to ask
/// around first): three UDP tries of 3 s.
const RESOLVER_TIMEOUT: Duration = Duration::from_secs(9);

/// Where the system's resolver is named.
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// What one authoritative server (one of its addresses) serves for a name
/// and type, in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The address asked.
    pub server: SocketAddr,
    /// The server it belongs to: its NS host name, or the configured
    /// address as text.
    pub host: String,
    /// The records of the type at the name (empty: NODATA or NXDOMAIN).
    pub values: Vec<RData>,
    /// The set's TTL (the largest when its records disagree); `None` when
    /// the set is absent.
    pub ttl: Option<u32>,
    /// An RRSIG covering the type at the name came with the answer.
    pub signed: bool,
    /// For an absent set: the negative TTL from the SOA in the authority
    /// section (the smaller of the SOA record's TTL and its minimum field,
    /// RFC 2308); `None` when the set exists or no SOA came.
    pub negative_ttl: Option<u32>,
    /// For an absent set: NSEC or NSEC3 records with their RRSIGs came
    /// with the denial.
    pub denial_signed: bool,
}

/// What a validating recursive resolver answered ([`secure_lookup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secure {
    /// The records of the type at the name, or at the end of the CNAME
    /// chain the resolver followed (empty: NODATA or NXDOMAIN).
    pub values: Vec<RData>,
    /// The resolver set AD: it validated the answer (the records, or
    /// their absence) with DNSSEC.
    pub authenticated: bool,
    /// The smallest TTL of `values` (when the resolver's copy of the set
    /// expires); `None` when there are none.
    pub ttl: Option<u32>,
}

/// One address's authoritative answer, read (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    /// Records of the type at the name, whatever the type (DNSKEY is
    /// counted here, not converted).
    count: usize,
    values: Vec<RData>,
    ttl: Option<u32>,
    signed: bool,
    negative_ttl: Option<u32>,
    denial_signed: bool,
}

impl Propagation {
    /// One round of questions for `name`/`rtype` to every authoritative
    /// server (see the module documentation): per answering address, the
    /// records, their TTL and whether they are signed, or for an absent set
    /// the negative TTL and whether the denial is signed. An error names
    /// each server that gave no usable answer.
    pub async fn observe(&self, name: &str, rtype: RecordType) -> Result<Vec<Observed>, Error> {
        let name = parse_name(name)?;
        let wtype = wire_type(rtype);
        let mut cache = ServerCache::new(self)?;
        let set = cache.servers(&name).await?;
        let answers = ask_all(&addresses(&set), &name, wtype).await;
        let views: Vec<(SocketAddr, Result<View, String>)> = answers
            .into_iter()
            .map(|(addr, answer)| (addr, answer.and_then(|m| view(&m, &name, wtype))))
            .collect();
        let (kept, ignored) = fold(&set, &views).map_err(|problems| {
            Error::Transport(format!(
                "observing {} {rtype}: {}",
                display_name(&name),
                problems.join("; ")
            ))
        })?;
        for why in ignored {
            tracing::debug!(name = %display_name(&name), %rtype, %why, "observe: another address of the server answered");
        }
        Ok(kept
            .into_iter()
            .map(|(host, server, v)| {
                tracing::debug!(name = %display_name(&name), %rtype, %server, values = v.values.len(), signed = v.signed, ttl = ?v.ttl, negative_ttl = ?v.negative_ttl, "observed");
                Observed {
                    server,
                    host,
                    values: v.values,
                    ttl: v.ttl,
                    signed: v.signed,
                    negative_ttl: v.negative_ttl,
                    denial_signed: v.denial_signed,
                }
            })
            .collect())
    }

    /// Whether the zone holding `name` is DNSSEC-signed on every
    /// authoritative server: each answers the zone's DNSKEY set with an
    /// RRSIG covering it. The zone is the one the servers' SOA names (at
    /// `name` itself, or in the authority section of the answer for it).
    /// An error names each server that gave no usable answer, or says the
    /// servers disagree on the zone.
    pub async fn zone_signed(&self, name: &str) -> Result<bool, Error> {
        let name = parse_name(name)?;
        let mut cache = ServerCache::new(self)?;
        let set = cache.servers(&name).await?;
        let addrs = addresses(&set);
        let shown = display_name(&name);

        let soa = ask_all(&addrs, &name, WireType::SOA).await;
        let zones: Vec<(SocketAddr, Result<Name, String>)> = soa
            .into_iter()
            .map(|(addr, answer)| (addr, answer.and_then(|m| zone_from(&m, &name))))
            .collect();
        let (zones, _) = fold(&set, &zones).map_err(|problems| {
            Error::Transport(format!(
                "finding the zone of {shown}: {}",
                problems.join("; ")
            ))
        })?;
        let zone = match zones.first() {
            Some((_, _, zone)) => zone.clone(),
            None => return Err(Error::NoZone(shown)),
        };
        if let Some((_, addr, other)) = zones.iter().find(|(_, _, z)| *z != zone) {
            return Err(Error::Transport(format!(
                "the servers of {shown} disagree on its zone: {} says {}, {addr} says {}",
                zones[0].1,
                display_name(&zone),
                display_name(other)
            )));
        }

        let keys = ask_all(&addrs, &zone, WireType::DNSKEY).await;
        let views: Vec<(SocketAddr, Result<View, String>)> = keys
            .into_iter()
            .map(|(addr, answer)| (addr, answer.and_then(|m| view(&m, &zone, WireType::DNSKEY))))
            .collect();
        let (views, _) = fold(&set, &views).map_err(|problems| {
            Error::Transport(format!(
                "DNSKEY of {}: {}",
                display_name(&zone),
                problems.join("; ")
            ))
        })?;
        let mut signed = true;
        for (host, addr, v) in &views {
            let this = v.count > 0 && v.signed;
            tracing::debug!(zone = %display_name(&zone), %host, %addr, dnskeys = v.count, rrsig = v.signed, "zone signed?");
            signed &= this;
        }
        Ok(signed)
    }
}

/// Asks `resolver` (default: the first `nameserver` of /etc/resolv.conf,
/// port 53) for `name`/`rtype` with RD=1, DO=1 and AD=1: the records
/// (following the CNAME chain the resolver answered), and whether the
/// resolver validated them (the AD bit). A SERVFAIL, which a validating
/// resolver answers for a bogus answer, is an error.
pub async fn secure_lookup(
    resolver: Option<SocketAddr>,
    name: &str,
    rtype: RecordType,
) -> Result<Secure, Error> {
    let resolver = match resolver {
        Some(addr) => addr,
        None => {
            let text = std::fs::read_to_string(RESOLV_CONF)
                .map_err(|e| Error::Config(format!("cannot read {RESOLV_CONF}: {e}")))?;
            let ip = first_nameserver(&text)
                .ok_or_else(|| Error::Config(format!("{RESOLV_CONF} names no nameserver")))?;
            SocketAddr::new(ip, 53)
        }
    };
    let qname = parse_name(name)?;
    let wtype = wire_type(rtype);
    let mut request = query_message(&qname, wtype);
    request.metadata.recursion_desired = true;
    request.metadata.authentic_data = true;
    if let Some(edns) = request.edns.as_mut() {
        edns.set_dnssec_ok(true);
    }
    let what = || format!("{} {rtype} through {resolver}", display_name(&qname));
    let bytes = request
        .to_vec()
        .map_err(|e| Error::Transport(format!("{}: cannot encode the query: {e}", what())))?;
    let raw = wire::exchange(resolver, &bytes, request.metadata.id, RESOLVER_TIMEOUT)
        .await
        .map_err(|e| Error::Transport(format!("{}: {e}", what())))?;
    let response = Message::from_vec(&raw)
        .map_err(|e| Error::Transport(format!("{}: an unreadable answer ({e})", what())))?;
    check_question(&request, &response, resolver)?;
    secure_answer(&response, &qname, wtype)
        .map_err(|why| Error::Transport(format!("{}: {why}", what())))
}

/// Asks every address at once, with DO=1 and RD=0; answers in the order of
/// `addrs`.
async fn ask_all(
    addrs: &[SocketAddr],
    name: &Name,
    wtype: WireType,
) -> Vec<(SocketAddr, Result<Message, String>)> {
    let mut tasks = JoinSet::new();
    for (i, addr) in addrs.iter().copied().enumerate() {
        let name = name.clone();
        tasks.spawn(async move { (i, addr, ask(addr, &name, wtype).await) });
    }
    let mut answers = Vec::with_capacity(addrs.len());
    while let Some(joined) = tasks.join_next().await {
        if let Ok(answer) = joined {
            answers.push(answer);
        }
    }
    answers.sort_by_key(|(i, ..)| *i);
    answers
        .into_iter()
        .map(|(_, addr, answer)| (addr, answer))
        .collect()
}

/// One authoritative question, DO=1, RD=0.
async fn ask(server: SocketAddr, name: &Name, wtype: WireType) -> Result<Message, String> {
    let mut request = query_message(name, wtype);
    if let Some(edns) = request.edns.as_mut() {
        edns.set_dnssec_ok(true);
    }
    let bytes = request
        .to_vec()
        .map_err(|e| format!("cannot encode the query: {e}"))?;
    let raw = wire::exchange(server, &bytes, request.metadata.id, QUERY_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let response = Message::from_vec(&raw).map_err(|e| format!("an unreadable answer ({e})"))?;
    check_question(&request, &response, server).map_err(|e| e.to_string())?;
    Ok(response)
}

/// The type an RRSIG record covers (`None` for other records).
fn covered(record: &Record) -> Option<WireType> {
    match &record.data {
        WireRData::DNSSEC(DNSSECRData::RRSIG(sig)) => Some(sig.input().type_covered),
        _ => None,
    }
}

/// Pure: what one authoritative answer for `name`/`wtype` says.
fn view(response: &Message, name: &Name, wtype: WireType) -> Result<View, String> {
    authoritative(response)?;
    let at_name = |t: WireType| records_at(response, name, t);
    if wtype != WireType::CNAME
        && let Some(target) = cname_at(response, name)
    {
        return Err(format!(
            "a CNAME to {target}. at {} (not followed when observing)",
            display_name(name)
        ));
    }
    let records: Vec<&Record> = at_name(wtype).collect();
    let signed = at_name(WireType::RRSIG).any(|r| covered(r) == Some(wtype));
    let mut view = View {
        count: records.len(),
        values: records.iter().filter_map(|r| from_wire(&r.data)).collect(),
        ttl: records.iter().map(|r| r.ttl).max(),
        signed,
        negative_ttl: None,
        denial_signed: false,
    };
    if records.is_empty() {
        view.negative_ttl = response.authorities.iter().find_map(|r| match &r.data {
            WireRData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        });
        let proofs = [WireType::NSEC, WireType::NSEC3];
        let has_proof = response
            .authorities
            .iter()
            .any(|r| proofs.contains(&r.record_type()));
        let proof_signed = response
            .authorities
            .iter()
            .filter_map(covered)
            .any(|t| proofs.contains(&t));
        view.denial_signed = has_proof && proof_signed;
    }
    Ok(view)
}

/// Pure: the zone holding `name`, from an authoritative answer to `SOA
/// name`: `name` itself when the SOA is in the answer, otherwise the owner
/// of the SOA in the authority section.
fn zone_from(response: &Message, name: &Name) -> Result<Name, String> {
    authoritative(response)?;
    if response
        .answers
        .iter()
        .any(|r| r.name == *name && r.record_type() == WireType::SOA)
    {
        return Ok(name.clone());
    }
    response
        .authorities
        .iter()
        .find(|r| r.record_type() == WireType::SOA && r.name.zone_of(name))
        .map(|r| r.name.clone())
        .ok_or_else(|| format!("no SOA for {} in the answer", display_name(name)))
}

/// Pure: a recursive resolver's answer for `name`/`wtype`: the records at
/// the end of the CNAME chain in the answer, and the AD bit.
fn secure_answer(response: &Message, name: &Name, wtype: WireType) -> Result<Secure, String> {
    let code = response.metadata.response_code;
    match code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        ResponseCode::ServFail => {
            return Err(
                "SERVFAIL (a validating resolver answers so when DNSSEC validation fails, \
                 or when it cannot reach the zone's servers)"
                    .to_owned(),
            );
        }
        other => return Err(rcode_text(other)),
    }
    let mut owner = name.clone();
    if wtype != WireType::CNAME {
        let mut links = 0;
        while let Some(target) = response.answers.iter().find_map(|r| match &r.data {
            WireRData::CNAME(c) if r.name == owner => Some(c.0.clone()),
            _ => None,
        }) {
            links += 1;
            if links > MAX_CNAME_CHAIN || target == *name {
                return Err(format!(
                    "a CNAME chain too long or looping from {}",
                    display_name(name)
                ));
            }
            owner = target;
        }
    }
    let records: Vec<&Record> = response
        .answers
        .iter()
        .filter(|r| r.name == owner && r.record_type() == wtype)
        .collect();
    Ok(Secure {
        values: records.iter().filter_map(|r| from_wire(&r.data)).collect(),
        authenticated: response.metadata.authentic_data,
        ttl: records.iter().map(|r| r.ttl).min(),
    })
}

/// What [`fold`] keeps: (server name, address, what it answered).
type Kept<T> = Vec<(String, SocketAddr, T)>;

/// Pure: per-address results folded into per-server ones. Every address
/// that answered is kept (an address shared by two servers once); the
/// failures of a server that has an answering address are returned apart
/// (to be logged). `Err`: one problem per server none of whose addresses
/// answered, each naming the server and why.
fn fold<T: Clone>(
    servers: &[Server],
    results: &[(SocketAddr, Result<T, String>)],
) -> Result<(Kept<T>, Vec<String>), Vec<String>> {
    let mut kept: Kept<T> = Vec::new();
    let mut ignored = Vec::new();
    let mut problems = Vec::new();
    for server in servers {
        let mut answered = false;
        let mut failures = Vec::new();
        for addr in &server.addrs {
            let label = if addr.to_string() == server.name {
                addr.to_string()
            } else {
                format!("{} ({addr})", server.name)
            };
            match results.iter().find(|(a, _)| a == addr).map(|(_, r)| r) {
                Some(Ok(value)) => {
                    answered = true;
                    if !kept.iter().any(|(_, a, _)| a == addr) {
                        kept.push((server.name.clone(), *addr, value.clone()));
                    }
                }
                Some(Err(why)) => failures.push(format!("{label}: {why}")),
                None => failures.push(format!("{label}: no answer")),
            }
        }
        if answered {
            ignored.extend(failures);
        } else {
            problems.extend(failures);
        }
    }
    if problems.is_empty() {
        Ok((kept, ignored))
    } else {
        Err(problems)
    }
}

/// Pure: the address of the first `nameserver` line of a resolv.conf (a
/// zone index such as `%eth0` dropped).
fn first_nameserver(resolv_conf: &str) -> Option<IpAddr> {
    resolv_conf.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            return None;
        }
        let addr = words.next()?;
        let addr = addr.split_once('%').map_or(addr, |(a, _)| a);
        addr.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::dnssec::Algorithm;
    use hickory_proto::dnssec::rdata::{NSEC, RRSIG, SigInput};
    use hickory_proto::op::OpCode;
    use hickory_proto::rr::SerialNumber;
    use hickory_proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
    use hickory_proto::rr::rdata::{A, CNAME, SOA, TLSA};

    fn n(s: &str) -> Name {
        parse_name(s).unwrap()
    }

    const OWNER: &str = "_25._tcp.mail.example.test";

    fn tlsa(ttl: u32, byte: u8) -> Record {
        Record::from_rdata(
            n(OWNER),
            ttl,
            WireRData::TLSA(TLSA::new(
                CertUsage::DaneEe,
                Selector::Spki,
                Matching::Sha256,
                vec![byte; 32],
            )),
        )
    }

    fn rrsig(owner: &str, covers: WireType) -> Record {
        let input = SigInput {
            type_covered: covers,
            algorithm: Algorithm::ECDSAP256SHA256,
            num_labels: 2,
            original_ttl: 2,
            sig_expiration: SerialNumber::new(2_000_000_000),
            sig_inception: SerialNumber::new(1_000_000_000),
            key_tag: 1,
            signer_name: n("example.test"),
        };
        Record::from_rdata(
            n(owner),
            2,
            WireRData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, vec![1; 64]))),
        )
    }

    fn soa(ttl: u32, minimum: u32) -> Record {
        Record::from_rdata(
            n("example.test"),
            ttl,
            WireRData::SOA(SOA::new(
                n("ns.example.test"),
                n("hostmaster.example.test"),
                1,
                3600,
                600,
                86400,
                minimum,
            )),
        )
    }

    fn nsec(owner: &str) -> Record {
        Record::from_rdata(
            n(owner),
            2,
            WireRData::DNSSEC(DNSSECRData::NSEC(NSEC::new(
                n("zzz.example.test"),
                [WireType::A, WireType::RRSIG, WireType::NSEC],
            ))),
        )
    }

    fn response(code: ResponseCode, aa: bool, answers: Vec<Record>, auth: Vec<Record>) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.metadata.response_code = code;
        m.metadata.authoritative = aa;
        m.answers = answers;
        m.authorities = auth;
        m
    }

    fn tlsa_value(byte: u8) -> RData {
        RData::Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![byte; 32],
        }
    }

    #[test]
    fn an_authoritative_answer_reads_as_records_ttl_signature_and_denial() {
        use ResponseCode::{NXDomain, NoError, Refused};
        let tlsa_t = WireType::TLSA;
        // (answer, expected view or the start of the error)
        type Row = (Message, Result<View, &'static str>);
        let present = |count, values, ttl, signed| View {
            count,
            values,
            ttl,
            signed,
            negative_ttl: None,
            denial_signed: false,
        };
        let absent = |negative_ttl, denial_signed| View {
            count: 0,
            values: vec![],
            ttl: None,
            signed: false,
            negative_ttl,
            denial_signed,
        };
        let table: Vec<Row> = vec![
            // Two records with their RRSIG: signed, the larger TTL.
            (
                response(
                    NoError,
                    true,
                    vec![tlsa(300, 1), tlsa(600, 2), rrsig(OWNER, tlsa_t)],
                    vec![],
                ),
                Ok(present(
                    2,
                    vec![tlsa_value(1), tlsa_value(2)],
                    Some(600),
                    true,
                )),
            ),
            // No RRSIG: served, not signed.
            (
                response(NoError, true, vec![tlsa(300, 1)], vec![]),
                Ok(present(1, vec![tlsa_value(1)], Some(300), false)),
            ),
            // An RRSIG covering another type, or at another name, is not
            // this set's signature.
            (
                response(
                    NoError,
                    true,
                    vec![tlsa(300, 1), rrsig(OWNER, WireType::TXT)],
                    vec![],
                ),
                Ok(present(1, vec![tlsa_value(1)], Some(300), false)),
            ),
            (
                response(
                    NoError,
                    true,
                    vec![tlsa(300, 1), rrsig("other.example.test", tlsa_t)],
                    vec![],
                ),
                Ok(present(1, vec![tlsa_value(1)], Some(300), false)),
            ),
            // NODATA: the negative TTL is the smaller of the SOA's TTL and
            // its minimum; signed when an NSEC and its RRSIG came.
            (
                response(NoError, true, vec![], vec![soa(3600, 300)]),
                Ok(absent(Some(300), false)),
            ),
            (
                response(NoError, true, vec![], vec![soa(60, 300)]),
                Ok(absent(Some(60), false)),
            ),
            (
                response(
                    NXDomain,
                    true,
                    vec![],
                    vec![
                        soa(60, 300),
                        rrsig("example.test", WireType::SOA),
                        nsec(OWNER),
                        rrsig(OWNER, WireType::NSEC),
                    ],
                ),
                Ok(absent(Some(60), true)),
            ),
            // An NSEC without its RRSIG, or an RRSIG (of the SOA) without
            // an NSEC, is no signed denial.
            (
                response(NXDomain, true, vec![], vec![soa(60, 300), nsec(OWNER)]),
                Ok(absent(Some(60), false)),
            ),
            (
                response(
                    NXDomain,
                    true,
                    vec![],
                    vec![soa(60, 300), rrsig("example.test", WireType::SOA)],
                ),
                Ok(absent(Some(60), false)),
            ),
            // Not authoritative, refused, or a CNAME: no view.
            (
                response(NoError, false, vec![tlsa(300, 1)], vec![]),
                Err("a non-authoritative NOERROR"),
            ),
            (response(Refused, true, vec![], vec![]), Err("REFUSED")),
            (
                response(
                    NoError,
                    true,
                    vec![Record::from_rdata(
                        n(OWNER),
                        60,
                        WireRData::CNAME(CNAME(n("tlsa.elsewhere.test"))),
                    )],
                    vec![],
                ),
                Err("a CNAME to tlsa.elsewhere.test."),
            ),
        ];
        for (i, (message, want)) in table.into_iter().enumerate() {
            let got = view(&message, &n(OWNER), tlsa_t);
            match (want, got) {
                (Ok(want), Ok(got)) => assert_eq!(got, want, "row {i}"),
                (Err(prefix), Err(got)) => assert!(got.starts_with(prefix), "row {i}: {got}"),
                (want, got) => panic!("row {i}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_zone_is_the_soa_at_the_name_or_in_the_authority_section() {
        let apex = response(ResponseCode::NoError, true, vec![soa(2, 2)], vec![]);
        assert_eq!(zone_from(&apex, &n("example.test")), Ok(n("example.test")));
        let below = response(ResponseCode::NXDomain, true, vec![], vec![soa(2, 2)]);
        assert_eq!(zone_from(&below, &n(OWNER)), Ok(n("example.test")));
        // An SOA of a zone not holding the name does not count.
        assert!(zone_from(&below, &n("mail.other.test")).is_err());
        let referral = response(ResponseCode::NoError, false, vec![], vec![soa(2, 2)]);
        assert!(zone_from(&referral, &n(OWNER)).is_err());
    }

    fn a(owner: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(
            n(owner),
            ttl,
            WireRData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
        )
    }

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(n(owner), 60, WireRData::CNAME(CNAME(n(target))))
    }

    #[test]
    fn a_resolver_answer_reads_as_values_ad_and_the_smallest_ttl() {
        let mut m = response(
            ResponseCode::NoError,
            false,
            vec![
                a("mail.example.test", [192, 0, 2, 1], 300),
                a("mail.example.test", [192, 0, 2, 2], 120),
                rrsig("mail.example.test", WireType::A),
            ],
            vec![],
        );
        m.metadata.authentic_data = true;
        let got = secure_answer(&m, &n("mail.example.test"), WireType::A).unwrap();
        assert_eq!(
            got,
            Secure {
                values: vec![
                    RData::A([192, 0, 2, 1].into()),
                    RData::A([192, 0, 2, 2].into())
                ],
                authenticated: true,
                ttl: Some(120),
            }
        );
        // Without AD: not authenticated, the same values.
        m.metadata.authentic_data = false;
        let got = secure_answer(&m, &n("mail.example.test"), WireType::A).unwrap();
        assert!(!got.authenticated);
        assert_eq!(got.values.len(), 2);

        // A CNAME chain is followed to its end; records elsewhere ignored.
        let chained = response(
            ResponseCode::NoError,
            false,
            vec![
                cname("mx.example.test", "host.example.net"),
                cname("host.example.net", "mail.example.test"),
                a("mail.example.test", [192, 0, 2, 1], 300),
                a("unrelated.example.test", [192, 0, 2, 9], 300),
            ],
            vec![],
        );
        let got = secure_answer(&chained, &n("mx.example.test"), WireType::A).unwrap();
        assert_eq!(got.values, vec![RData::A([192, 0, 2, 1].into())]);
        // A loop is an error, not a hang.
        let looping = response(
            ResponseCode::NoError,
            false,
            vec![
                cname("a.example.test", "b.example.test"),
                cname("b.example.test", "a.example.test"),
            ],
            vec![],
        );
        assert!(secure_answer(&looping, &n("a.example.test"), WireType::A).is_err());

        // An authenticated denial: no values, AD.
        let mut nx = response(ResponseCode::NXDomain, false, vec![], vec![soa(2, 2)]);
        nx.metadata.authentic_data = true;
        let got = secure_answer(&nx, &n(OWNER), WireType::TLSA).unwrap();
        assert_eq!(
            got,
            Secure {
                values: vec![],
                authenticated: true,
                ttl: None
            }
        );
        // SERVFAIL (bogus) is an error that says what it may mean.
        let bogus = response(ResponseCode::ServFail, false, vec![], vec![]);
        let err = secure_answer(&bogus, &n(OWNER), WireType::TLSA).unwrap_err();
        assert!(
            err.contains("SERVFAIL") && err.contains("validation"),
            "{err}"
        );
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn server(name: &str, addrs: &[&str]) -> Server {
        Server {
            name: name.to_owned(),
            addrs: addrs.iter().map(|a| sa(a)).collect(),
        }
    }

    #[test]
    fn every_answering_address_is_kept_and_a_server_without_one_is_named() {
        let servers = [
            server("ns1.example.test", &["192.0.2.1:53", "[2001:db8::1]:53"]),
            server("ns2.example.test", &["192.0.2.2:53"]),
        ];
        // (per-address results) -> kept addresses, or the servers named
        type Row<'a> = (
            Vec<(&'a str, Result<u8, &'a str>)>,
            Result<Vec<&'a str>, Vec<&'a str>>,
        );
        let table: Vec<Row> = vec![
            // Both addresses of ns1 answered: both kept (each may differ).
            (
                vec![
                    ("192.0.2.1:53", Ok(1)),
                    ("[2001:db8::1]:53", Ok(2)),
                    ("192.0.2.2:53", Ok(3)),
                ],
                Ok(vec!["192.0.2.1:53", "[2001:db8::1]:53", "192.0.2.2:53"]),
            ),
            // One address of ns1 failed, the other answered: ns1 counts.
            (
                vec![
                    ("192.0.2.1:53", Err("timed out")),
                    ("[2001:db8::1]:53", Ok(2)),
                    ("192.0.2.2:53", Ok(3)),
                ],
                Ok(vec!["[2001:db8::1]:53", "192.0.2.2:53"]),
            ),
            // ns2 failed: an error naming it, not a smaller set.
            (
                vec![
                    ("192.0.2.1:53", Ok(1)),
                    ("[2001:db8::1]:53", Ok(2)),
                    ("192.0.2.2:53", Err("REFUSED")),
                ],
                Err(vec!["ns2.example.test (192.0.2.2:53): REFUSED"]),
            ),
            // An address that gave nothing at all fails too.
            (
                vec![("192.0.2.1:53", Ok(1))],
                Err(vec!["ns2.example.test (192.0.2.2:53): no answer"]),
            ),
        ];
        for (i, (results, want)) in table.into_iter().enumerate() {
            let results: Vec<(SocketAddr, Result<u8, String>)> = results
                .into_iter()
                .map(|(a, r)| (sa(a), r.map_err(str::to_owned)))
                .collect();
            match (want, fold(&servers, &results)) {
                (Ok(want), Ok((kept, _))) => {
                    let got: Vec<SocketAddr> = kept.iter().map(|(_, a, _)| *a).collect();
                    let want: Vec<SocketAddr> = want.iter().map(|a| sa(a)).collect();
                    assert_eq!(got, want, "row {i}");
                }
                (Err(want), Err(got)) => assert_eq!(got, want, "row {i}"),
                (want, got) => panic!("row {i}: wanted {want:?}, got {got:?}"),
            }
        }
        // A shared address is kept once; a configured address is its own
        // server name.
        let shared = [
            server("ns1.example.test", &["192.0.2.1:53"]),
            server("ns2.example.test", &["192.0.2.1:53"]),
        ];
        let (kept, _) = fold(&shared, &[(sa("192.0.2.1:53"), Ok::<u8, String>(1))]).unwrap();
        assert_eq!(kept.len(), 1);
        let configured = [server("127.0.0.1:53", &["127.0.0.1:53"])];
        let err = fold(
            &configured,
            &[(sa("127.0.0.1:53"), Err::<u8, String>("REFUSED".into()))],
        )
        .unwrap_err();
        assert_eq!(err, vec!["127.0.0.1:53: REFUSED"]);
    }

    #[test]
    fn the_resolver_is_the_first_nameserver_line() {
        let table: &[(&str, Option<&str>)] = &[
            (
                "nameserver 127.0.0.2\nnameserver 9.9.9.9\n",
                Some("127.0.0.2"),
            ),
            (
                "# comment\nsearch example.test\noptions edns0 trust-ad\n  nameserver ::1\n",
                Some("::1"),
            ),
            ("nameserver fe80::1%eth0\n", Some("fe80::1")),
            ("; nameserver 10.0.0.1\nnameserver bogus\n", None),
            ("", None),
        ];
        for (text, want) in table {
            let want: Option<IpAddr> = want.map(|w| w.parse().unwrap());
            assert_eq!(first_nameserver(text), want, "{text:?}");
        }
    }

    #[test]
    fn a_dnskey_set_counts_without_conversion() {
        // DNSKEY is no mxkeys record type: counted, not converted.
        use hickory_proto::dnssec::PublicKeyBuf;
        use hickory_proto::dnssec::rdata::DNSKEY;
        let key = Record::from_rdata(
            n("example.test"),
            2,
            WireRData::DNSSEC(DNSSECRData::DNSKEY(DNSKEY::new(
                true,
                true,
                false,
                PublicKeyBuf::new(vec![4; 64], Algorithm::ECDSAP256SHA256),
            ))),
        );
        let m = response(
            ResponseCode::NoError,
            true,
            vec![key.clone(), rrsig("example.test", WireType::DNSKEY)],
            vec![],
        );
        let v = view(&m, &n("example.test"), WireType::DNSKEY).unwrap();
        assert_eq!((v.count, v.signed, v.values.len()), (1, true, 0));
        let unsigned = response(ResponseCode::NoError, true, vec![key], vec![]);
        let v = view(&unsigned, &n("example.test"), WireType::DNSKEY).unwrap();
        assert_eq!((v.count, v.signed), (1, false));
    }
}
