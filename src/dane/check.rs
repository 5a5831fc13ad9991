//! `mxkeys dane check`: does every address of a DANE host serve, on each
//! port, a chain that the host's DNSSEC-validated TLSA records match?
//!
//! The rule: ask as a DANE sender would (RFC 7672). The host's A/AAAA and
//! the TLSA set at `_PORT._tcp.HOST` come from a validating resolver and
//! count only when it vouches for them (AD bit): an unvalidated answer is a
//! failure, "not DNSSEC-validated", never a pass. Every address is
//! connected to (STARTTLS on 25 and 587, TLS from the first byte on other
//! ports, SNI = the host), any chain is accepted and captured, and the
//! chain matches when one published record of a kind mxkeys knows
//! (`3 1 1`, `2 1 1`) matches it ([`crate::dane::tlsa::matches`]); other
//! records are shown but never match.
//!
//! Decide apart from act: [`judge`] (pure, table-tested) decides one
//! address from the TLSA answer and the chain it served;
//! [`check_endpoint`] does the lookups and connections. The daemon's DANE
//! pass uses [`check_endpoint_against`] (the records it wants instead of
//! the published ones) to retire a record only after the new key is in
//! service.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use mxkeys_providers::propagation::{Secure, secure_lookup};
use mxkeys_providers::{RData, RecordType};
use rustls_pki_types::CertificateDer;

use super::tlsa::{Spec, Tlsa};
use crate::cert::KeyType;
use crate::config::{Config, VerifyProtocol};

/// What one address of an endpoint (or the endpoint as a whole, when no
/// address could be asked) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The served chain matches `record`.
    Match { record: Tlsa },
    /// No published record matches: the served leaf's `3 1 1` record
    /// (what would match it) and the records published.
    Mismatch {
        served: String,
        published: Vec<String>,
    },
    /// An answer the resolver did not validate (what, in one line).
    Insecure(String),
    /// No TLS handshake with the address (why), or no address at all.
    Unreachable(String),
    /// The validated answer at `_PORT._tcp.HOST` holds no TLSA record.
    NoRecords,
    /// The lookup failed (a validating resolver answers SERVFAIL for bogus
    /// data): which lookup and why.
    LookupFailed(String),
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Match { .. })
    }
}

/// One address's result; `address` is `None` when the endpoint failed
/// before any address could be asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressCheck {
    pub address: Option<IpAddr>,
    pub outcome: Outcome,
}

/// Every address of one host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointCheck {
    pub host: String,
    pub port: u16,
    /// The TLSA owner name asked, `_PORT._tcp.HOST`.
    pub owner: String,
    pub results: Vec<AddressCheck>,
}

impl EndpointCheck {
    /// Every address serves a matching chain (and there is one at least).
    pub fn ok(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|r| r.outcome.ok())
    }

    /// One line per address: `HOST port PORT ADDRESS: ok ...` or the
    /// problem, naming the hashes on a mismatch.
    pub fn lines(&self) -> Vec<String> {
        self.results
            .iter()
            .map(|r| {
                let at = match r.address {
                    Some(a) => format!("{} port {} {a}", self.host, self.port),
                    None => format!("{} port {}", self.host, self.port),
                };
                format!("{at}: {}", Describe(&r.outcome, &self.owner))
            })
            .collect()
    }
}

struct Describe<'a>(&'a Outcome, &'a str);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let owner = self.1;
        match self.0 {
            Outcome::Match { record } => write!(f, "ok, matches {owner} TLSA {record}"),
            Outcome::Mismatch { served, published } => write!(
                f,
                "MISMATCH: serves a key whose record is {served}; {owner} publishes {}",
                published.join(", ")
            ),
            Outcome::Insecure(what) => write!(f, "INSECURE: {what}: not DNSSEC-validated"),
            Outcome::Unreachable(why) => write!(f, "UNREACHABLE: {why}"),
            Outcome::NoRecords => write!(f, "NO RECORDS: {owner} has no TLSA record"),
            Outcome::LookupFailed(why) => write!(f, "LOOKUP FAILED: {why}"),
        }
    }
}

/// One published TLSA record: its presentation text, and the record when
/// it is of a kind mxkeys matches (`3 1 1`, `2 1 1`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub text: String,
    pub known: Option<Tlsa>,
}

impl Published {
    /// From the wire fields.
    pub fn new(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Published {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("{usage} {selector} {matching} {hex}");
        Published {
            known: text.parse().ok(),
            text,
        }
    }
}

/// The verdict for one address (pure): the first known record matching
/// the chain it served, else a mismatch naming the served leaf's `3 1 1`
/// record and every published record; no records at all is
/// [`Outcome::NoRecords`].
pub fn judge(published: &[Published], served: &[CertificateDer<'_>]) -> Outcome {
    if published.is_empty() {
        return Outcome::NoRecords;
    }
    if let Some(record) = published
        .iter()
        .filter_map(|p| p.known)
        .find(|t| super::tlsa::matches(t, served))
    {
        return Outcome::Match { record };
    }
    Outcome::Mismatch {
        served: match Spec::EE.build(served) {
            Ok(t) => t.to_string(),
            Err(e) => format!("(none: {e})"),
        },
        published: published.iter().map(|p| p.text.clone()).collect(),
    }
}

/// `_PORT._tcp.HOST`.
pub fn owner(host: &str, port: u16) -> String {
    format!("_{port}._tcp.{}", host.trim_end_matches('.'))
}

/// How TLS starts on `port`: STARTTLS for SMTP (25, 587), TLS from the
/// first byte elsewhere.
pub fn protocol_for(port: u16) -> VerifyProtocol {
    match port {
        25 | 587 => VerifyProtocol::Smtp,
        _ => VerifyProtocol::Tls,
    }
}

/// Checks every address of `host` on `port` against the TLSA set at
/// `_PORT._tcp.HOST`, asking `resolver` (default: the system's); see the
/// module doc. Never fails: every problem is an [`Outcome`].
pub async fn check_endpoint(host: &str, port: u16, resolver: Option<SocketAddr>) -> EndpointCheck {
    let owner = owner(host, port);
    let (tlsa, addresses) = tokio::join!(
        secure_lookup(resolver, &owner, RecordType::Tlsa),
        addresses(host, resolver),
    );
    let published = match tlsa {
        Err(e) => Err(Outcome::LookupFailed(e.to_string())),
        Ok(answer) if !answer.authenticated => Err(Outcome::Insecure(format!("TLSA {owner}"))),
        Ok(answer) => match tlsa_values(&answer) {
            p if p.is_empty() => Err(Outcome::NoRecords),
            p => Ok(p),
        },
    };
    let addresses = published.and_then(|p| addresses.map(|a| (p, a)));
    match addresses {
        Err(outcome) => EndpointCheck::whole(host, port, outcome),
        Ok((published, addresses)) => served(host, port, addresses, &published).await,
    }
}

/// Like [`check_endpoint`], against `records` (the records the DANE pass
/// wants) instead of the published set: the endpoint is ok when every
/// address serves a chain one of them matches. The addresses still come
/// from `resolver` and must be DNSSEC-validated.
pub async fn check_endpoint_against(
    host: &str,
    port: u16,
    resolver: Option<SocketAddr>,
    records: &[Tlsa],
) -> EndpointCheck {
    let wanted: Vec<Published> = records
        .iter()
        .map(|t| Published {
            text: t.to_string(),
            known: Some(*t),
        })
        .collect();
    if wanted.is_empty() {
        return EndpointCheck::whole(host, port, Outcome::NoRecords);
    }
    match addresses(host, resolver).await {
        Err(outcome) => EndpointCheck::whole(host, port, outcome),
        Ok(addresses) => served(host, port, addresses, &wanted).await,
    }
}

impl EndpointCheck {
    /// A result for the endpoint as a whole (no address asked).
    fn whole(host: &str, port: u16, outcome: Outcome) -> EndpointCheck {
        EndpointCheck {
            host: host.to_owned(),
            port,
            owner: owner(host, port),
            results: vec![AddressCheck {
                address: None,
                outcome,
            }],
        }
    }
}

/// The host's DNSSEC-validated A and AAAA addresses; at least one.
async fn addresses(host: &str, resolver: Option<SocketAddr>) -> Result<Vec<IpAddr>, Outcome> {
    let (a, aaaa) = tokio::join!(
        secure_lookup(resolver, host, RecordType::A),
        secure_lookup(resolver, host, RecordType::Aaaa),
    );
    let mut addresses = Vec::new();
    for (answer, rtype) in [(a, "A"), (aaaa, "AAAA")] {
        match answer {
            Err(e) => return Err(Outcome::LookupFailed(e.to_string())),
            Ok(answer) if !answer.authenticated => {
                return Err(Outcome::Insecure(format!("{rtype} {host}")));
            }
            Ok(answer) => addresses.extend(answer.values.iter().filter_map(|v| match v {
                RData::A(ip) => Some(IpAddr::V4(*ip)),
                RData::Aaaa(ip) => Some(IpAddr::V6(*ip)),
                _ => None,
            })),
        }
    }
    if addresses.is_empty() {
        return Err(Outcome::Unreachable(format!(
            "{host} has no A or AAAA record"
        )));
    }
    Ok(addresses)
}

/// Connects to every address at once and judges each served chain against
/// `records`.
async fn served(
    host: &str,
    port: u16,
    addresses: Vec<IpAddr>,
    records: &[Published],
) -> EndpointCheck {
    let protocol = protocol_for(port);
    let connections: Vec<_> = addresses
        .iter()
        .map(|&ip| {
            let sni = host.trim_end_matches('.').to_owned();
            tokio::task::spawn_blocking(move || {
                crate::verify::served_chain(
                    SocketAddr::new(ip, port),
                    protocol,
                    &sni,
                    KeyType::Other,
                )
            })
        })
        .collect();
    let mut results = Vec::with_capacity(addresses.len());
    for (ip, connection) in addresses.into_iter().zip(connections) {
        let outcome = match connection.await {
            Ok(Ok(chain)) => judge(records, &chain),
            Ok(Err(e)) => Outcome::Unreachable(e.to_string()),
            Err(e) => Outcome::Unreachable(format!("the connection task failed: {e}")),
        };
        results.push(AddressCheck {
            address: Some(ip),
            outcome,
        });
    }
    EndpointCheck {
        host: host.to_owned(),
        port,
        owner: owner(host, port),
        results,
    }
}

/// One host and port to check, and the resolver to ask.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// The `resolver` of the target's `[dns.NAME]` provider; `None`: the
    /// system's.
    pub resolver: Option<SocketAddr>,
}

/// Why `dane check` has nothing to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointsError {
    #[error("no target named {0:?}")]
    UnknownTarget(String),
    #[error("target {0}: no [target.dane] table")]
    NotDane(String),
    #[error("no target has a [target.dane] table")]
    NoDaneTarget,
}

/// Every host and port of the DANE targets (only `only`, when given),
/// once each, in order (pure).
pub fn endpoints(config: &Config, only: Option<&str>) -> Result<Vec<Endpoint>, EndpointsError> {
    if let Some(name) = only {
        let target = config
            .targets
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| EndpointsError::UnknownTarget(name.to_owned()))?;
        if target.dane.is_none() {
            return Err(EndpointsError::NotDane(name.to_owned()));
        }
    }
    let mut out = Vec::new();
    for target in &config.targets {
        if only.is_some_and(|name| name != target.name) {
            continue;
        }
        let Some(dane) = &target.dane else { continue };
        let resolver = config.dns.get(&dane.dns).and_then(|p| p.resolver);
        for host in &dane.hosts {
            for &port in &dane.ports {
                let e = Endpoint {
                    host: host.as_str().to_owned(),
                    port,
                    resolver,
                };
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(EndpointsError::NoDaneTarget);
    }
    Ok(out)
}

/// [`check_endpoint`] for each endpoint, all at once; results in order.
pub async fn check_all(endpoints: &[Endpoint]) -> Vec<EndpointCheck> {
    futures_util::future::join_all(
        endpoints
            .iter()
            .map(|e| check_endpoint(&e.host, e.port, e.resolver)),
    )
    .await
}

fn tlsa_values(answer: &Secure) -> Vec<Published> {
    answer
        .values
        .iter()
        .filter_map(|v| match v {
            RData::Tlsa {
                usage,
                selector,
                matching,
                data,
            } => Some(Published::new(*usage, *selector, *matching, data)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testing::{Alg, Ca};

    const NOT_BEFORE: i64 = 1_700_000_000;
    const NOT_AFTER: i64 = 1_900_000_000;

    fn published(records: &[Tlsa]) -> Vec<Published> {
        records
            .iter()
            .map(|t| {
                let usage = if t.spec == Spec::EE { 3 } else { 2 };
                Published::new(usage, 1, 1, &t.data)
            })
            .collect()
    }

    #[test]
    fn an_address_matches_when_one_known_record_matches_its_chain_and_names_the_record() {
        let ca = Ca::new();
        let served = ca.issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let other = ca.issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let foreign = Ca::new().issue(&["mx.example.org"], Alg::Rsa, NOT_BEFORE, NOT_AFTER);
        let ee = Spec::EE.build(&served.certs).unwrap();
        let ee_other = Spec::EE.build(&other.certs).unwrap();
        let ta = Spec::TA.build(&served.certs).unwrap();
        let ta_foreign = Spec::TA.build(&foreign.certs).unwrap();
        // (records published, which one matches)
        let table: &[(&[Tlsa], Option<Tlsa>)] = &[
            (&[ee], Some(ee)),
            (&[ee_other, ee], Some(ee)),
            (&[ta], Some(ta)),
            (&[ta_foreign, ta], Some(ta)),
            (&[ee_other], None),
            (&[ta_foreign], None),
            (&[ee_other, ta_foreign], None),
        ];
        for (records, expected) in table {
            let outcome = judge(&published(records), &served.certs);
            match expected {
                Some(record) => assert_eq!(outcome, Outcome::Match { record: *record }),
                None => assert_eq!(
                    outcome,
                    Outcome::Mismatch {
                        served: ee.to_string(),
                        published: records.iter().map(ToString::to_string).collect(),
                    },
                    "{records:?}"
                ),
            }
        }
    }

    #[test]
    fn records_of_kinds_mxkeys_does_not_know_are_shown_but_never_match() {
        let served = Ca::new().issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let ee = Spec::EE.build(&served.certs).unwrap();
        // The same digest as 1 1 1 (PKIX-EE, needs a trusted path) and
        // 3 0 1 (the whole certificate's digest): neither is a 3 1 1.
        let records = vec![
            Published::new(1, 1, 1, &ee.data),
            Published::new(3, 0, 1, &ee.data),
        ];
        assert!(records.iter().all(|p| p.known.is_none()));
        let outcome = judge(&records, &served.certs);
        assert_eq!(
            outcome,
            Outcome::Mismatch {
                served: ee.to_string(),
                published: vec![format!("1 1 1 {}", ee.hex()), format!("3 0 1 {}", ee.hex())],
            }
        );
    }

    #[test]
    fn no_published_record_is_no_records_not_a_match() {
        let served = Ca::new().issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        assert_eq!(judge(&[], &served.certs), Outcome::NoRecords);
        assert!(!Outcome::NoRecords.ok());
    }

    #[test]
    fn an_endpoint_is_ok_only_when_every_address_matches() {
        let served = Ca::new().issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let ee = Spec::EE.build(&served.certs).unwrap();
        let check = |outcomes: Vec<Outcome>| EndpointCheck {
            host: "mx.example.org".to_owned(),
            port: 25,
            owner: owner("mx.example.org", 25),
            results: outcomes
                .into_iter()
                .map(|outcome| AddressCheck {
                    address: Some(IpAddr::from([192, 0, 2, 1])),
                    outcome,
                })
                .collect(),
        };
        let matched = Outcome::Match { record: ee };
        assert!(check(vec![matched.clone()]).ok());
        assert!(check(vec![matched.clone(), matched.clone()]).ok());
        assert!(!check(vec![]).ok());
        for bad in [
            Outcome::Unreachable("cannot connect".to_owned()),
            Outcome::Insecure("TLSA _25._tcp.mx.example.org".to_owned()),
            Outcome::NoRecords,
            Outcome::LookupFailed("SERVFAIL".to_owned()),
        ] {
            assert!(!check(vec![matched.clone(), bad.clone()]).ok(), "{bad:?}");
        }
    }

    #[test]
    fn a_mismatch_line_names_host_port_address_and_both_hashes() {
        let line = EndpointCheck {
            host: "mx.example.org".to_owned(),
            port: 25,
            owner: owner("mx.example.org", 25),
            results: vec![AddressCheck {
                address: Some(IpAddr::from([192, 0, 2, 1])),
                outcome: Outcome::Mismatch {
                    served: format!("3 1 1 {}", "ab".repeat(32)),
                    published: vec![format!("3 1 1 {}", "cd".repeat(32))],
                },
            }],
        }
        .lines()
        .join("\n");
        assert_eq!(
            line,
            format!(
                "mx.example.org port 25 192.0.2.1: MISMATCH: serves a key whose record is 3 1 1 {}; \
                 _25._tcp.mx.example.org publishes 3 1 1 {}",
                "ab".repeat(32),
                "cd".repeat(32)
            )
        );
    }

    #[test]
    fn smtp_ports_start_tls_and_others_speak_tls_from_the_first_byte() {
        assert_eq!(protocol_for(25), VerifyProtocol::Smtp);
        assert_eq!(protocol_for(587), VerifyProtocol::Smtp);
        assert_eq!(protocol_for(465), VerifyProtocol::Tls);
        assert_eq!(protocol_for(993), VerifyProtocol::Tls);
        assert_eq!(owner("mx.example.org.", 25), "_25._tcp.mx.example.org");
    }

    fn config(text: &str) -> Config {
        let host = crate::config::Host {
            cwd: std::path::PathBuf::from("/srv/cwd"),
            hostname: None,
        };
        Config::parse(std::path::Path::new("/etc/mxkeys/test.toml"), text, &host).unwrap()
    }

    const DNS: &str = "[dns.ns]\ntype = \"manual\"\nresolver = \"192.0.2.53\"\n\
                       [dns.sys]\ntype = \"manual\"\n";

    #[test]
    fn endpoints_are_every_host_and_port_of_the_dane_targets_once_with_their_providers_resolver() {
        let c = config(&format!(
            "{DNS}\
             [[target]]\nname = \"mx\"\ndomains = [\"mx1.example.org\", \"mx2.example.org\"]\n\
             combined = \"/t/mx.pem\"\n\
             [target.dane]\ndns = \"ns\"\nports = [25, 465]\n\
             [[target]]\nname = \"plain\"\ndomains = [\"www.example.org\"]\ncombined = \"/t/www.pem\"\n\
             [[target]]\nname = \"again\"\ndomains = [\"mx1.example.org\"]\ncombined = \"/t/again.pem\"\n\
             [target.dane]\ndns = \"sys\"\nhosts = [\"mx1.example.org\", \"mx3.example.org\"]\n"
        ));
        let ns = Some("192.0.2.53:53".parse().unwrap());
        let e = |host: &str, port, resolver| Endpoint {
            host: host.to_owned(),
            port,
            resolver,
        };
        assert_eq!(
            endpoints(&c, None).unwrap(),
            [
                e("mx1.example.org", 25, ns),
                e("mx1.example.org", 465, ns),
                e("mx2.example.org", 25, ns),
                e("mx2.example.org", 465, ns),
                // Another target's resolver asks again; the same host,
                // port and resolver is asked once.
                e("mx1.example.org", 25, None),
                e("mx3.example.org", 25, None),
            ]
        );
        assert_eq!(
            endpoints(&c, Some("again")).unwrap(),
            [
                e("mx1.example.org", 25, None),
                e("mx3.example.org", 25, None)
            ]
        );
        assert_eq!(
            endpoints(&c, Some("plain")),
            Err(EndpointsError::NotDane("plain".to_owned()))
        );
        assert_eq!(
            endpoints(&c, Some("nope")),
            Err(EndpointsError::UnknownTarget("nope".to_owned()))
        );
        let none = config(&format!(
            "{DNS}[[target]]\nname = \"plain\"\ndomains = [\"www.example.org\"]\ncombined = \"/t/www.pem\"\n"
        ));
        assert_eq!(endpoints(&none, None), Err(EndpointsError::NoDaneTarget));
    }
}
