//! Questions to a validating recursive resolver, for `dane check`: the
//! answer's values and whether the resolver vouched for them (the AD bit).
//!
//! The rule: ask with RD=1, DO=1 and AD=1 (RFC 6840 §5.7: AD in a query
//! asks for AD in the answer), trust nothing but the AD bit of the answer,
//! and keep only answer records of the type asked (a CNAME chain's
//! records are skipped; the AD bit covers the whole answer). A failed
//! lookup (SERVFAIL: what a validating resolver answers for bogus data,
//! no answer, a malformed one) is an error naming the name, the type and
//! the resolver. NXDOMAIN and NODATA are answers: no values.
//!
//! The resolver is the one given, else the first `nameserver` of
//! /etc/resolv.conf (port 53).
//!
//! Temporary: stands for `mxkeys_providers::propagation::secure_lookup`
//! (helper "observe") until it lands; same signature, same meaning.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData as WireRData, RecordType as WireType};
use tokio::net::UdpSocket;
use tokio::time::{Instant, timeout_at};

/// What [`secure_lookup`] can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordType {
    A,
    Aaaa,
    Tlsa,
}

/// One value of an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RData {
    A(std::net::Ipv4Addr),
    Aaaa(std::net::Ipv6Addr),
    Tlsa {
        usage: u8,
        selector: u8,
        matching: u8,
        data: Vec<u8>,
    },
}

/// A resolver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secure {
    /// The answer's records of the type asked (empty: NXDOMAIN or NODATA).
    pub values: Vec<RData>,
    /// The resolver validated the answer (AD bit).
    pub authenticated: bool,
    /// The smallest TTL of the values, if any.
    pub ttl: Option<u32>,
}

/// Longest wait for the resolver's answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(6);
const TRIES: u32 = 3;

/// Asks `resolver` (default: the system's) for `name`/`rtype`; see the
/// module doc.
pub async fn secure_lookup(
    resolver: Option<SocketAddr>,
    name: &str,
    rtype: RecordType,
) -> Result<Secure, String> {
    let server = match resolver {
        Some(s) => s,
        None => system_resolver()?,
    };
    let what = format!("{name} {rtype:?} at {server}");
    let mut qname = Name::from_ascii(name.trim_end_matches('.'))
        .map_err(|e| format!("{what}: invalid name: {e}"))?;
    qname.set_fqdn(true);
    let wire_type = match rtype {
        RecordType::A => WireType::A,
        RecordType::Aaaa => WireType::AAAA,
        RecordType::Tlsa => WireType::TLSA,
    };
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.metadata.authentic_data = true;
    request.add_query(Query::query(qname, wire_type));
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    edns.set_dnssec_ok(true);
    request.edns = Some(edns);
    let bytes = request.to_vec().map_err(|e| format!("{what}: {e}"))?;
    let answer = exchange(server, &bytes, request.metadata.id)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let response = Message::from_vec(&answer).map_err(|e| format!("{what}: {e}"))?;
    if response.metadata.message_type != MessageType::Response
        || response.queries != request.queries
    {
        return Err(format!("{what}: the resolver answered another question"));
    }
    match response.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        other => {
            return Err(format!(
                "{what}: {other} (a validating resolver answers SERVFAIL for bogus DNSSEC)"
            ));
        }
    }
    let mut values = Vec::new();
    let mut ttl: Option<u32> = None;
    for record in &response.answers {
        let value = match &record.data {
            WireRData::A(a) if rtype == RecordType::A => RData::A(a.0),
            WireRData::AAAA(a) if rtype == RecordType::Aaaa => RData::Aaaa(a.0),
            WireRData::TLSA(t) if rtype == RecordType::Tlsa => RData::Tlsa {
                usage: u8::from(t.cert_usage),
                selector: u8::from(t.selector),
                matching: u8::from(t.matching),
                data: t.cert_data.clone(),
            },
            _ => continue,
        };
        ttl = Some(ttl.map_or(record.ttl, |t| t.min(record.ttl)));
        values.push(value);
    }
    Ok(Secure {
        values,
        authenticated: response.metadata.authentic_data,
        ttl,
    })
}

/// The first `nameserver` of /etc/resolv.conf, port 53.
fn system_resolver() -> Result<SocketAddr, String> {
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("/etc/resolv.conf: {e}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
        .ok_or_else(|| "/etc/resolv.conf names no nameserver".to_owned())
}

/// One UDP exchange, retried; answers that are not ours are ignored.
async fn exchange(server: SocketAddr, request: &[u8], id: u16) -> Result<Vec<u8>, String> {
    let local: SocketAddr = if server.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 65535];
    for _ in 0..TRIES {
        socket.send(request).await.map_err(|e| e.to_string())?;
        let deadline = Instant::now() + LOOKUP_TIMEOUT / TRIES;
        loop {
            match timeout_at(deadline, socket.recv(&mut buf)).await {
                Err(_) => break,
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(n))
                    if n >= 12
                        && u16::from_be_bytes([buf[0], buf[1]]) == id
                        && buf[2] & 0x80 != 0 =>
                {
                    if buf[2] & 0x02 != 0 {
                        return Err("answer truncated over UDP".to_owned());
                    }
                    return Ok(buf[..n].to_vec());
                }
                Ok(Ok(_)) => continue,
            }
        }
    }
    Err(format!("no answer within {LOOKUP_TIMEOUT:?}"))
}
