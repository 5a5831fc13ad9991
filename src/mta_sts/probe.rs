//! What senders see of an MTA-STS domain (effects, read-only): the policy
//! body each responder serves over HTTPS, the `_mta-sts` id and the MX set
//! on every authoritative server, and each MX host's STARTTLS certificate.
//!
//! Rule: look as a sender looks. A body counts only when fetched over
//! HTTPS with SNI and Host `mta-sts.DOMAIN` and a chain that validates
//! (the system's roots plus `[mta_sts] ca_bundle`) for that name; an MX
//! host passes only when every address of it serves, after STARTTLS on
//! port 25, a chain valid for its name. Nothing here writes or decides:
//! the MTA-STS pass ([`super::pass`]) and `mxkeys mta-sts check` do.
//!
//! The readings of DNS answers (`mx_view`, `id_view`, `sts_id`) are pure
//! and table-tested; the lookups, fetches and handshakes feed them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use mxkeys_providers::propagation::{Observed, Propagation};
use mxkeys_providers::{RData, RecordType};
use rustls::pki_types::ServerName;

use super::policy::{MAX_BODY, PolicyError, StsRecord, sts_record_name};
use super::responder::POLICY_PATH;
use crate::config::VerifyProtocol;
use crate::config::{MtaSts, Serve};
use crate::names::DnsName;

/// The longest a policy fetch may take, connection to last body byte
/// (RFC 8461 §3.3 suggests a minute; a responder of ours answers at once).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The SMTP port senders deliver to.
pub const SMTP_PORT: u16 = 25;

/// The HTTPS port a policy is fetched from.
pub const HTTPS_PORT: u16 = 443;

/// Why a look failed, one line, naming what was looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// `[mta_sts] ca_bundle` could not be read or used.
    #[error("[mta_sts] ca_bundle {}: {reason}", .bundle.display())]
    CaBundle { bundle: PathBuf, reason: String },
    /// The TLS client could not be set up.
    #[error("TLS client: {0}")]
    Tls(String),
    /// A policy fetch failed.
    #[error("https://{host}{POLICY_PATH} at {at}: {reason}")]
    Fetch {
        host: String,
        at: SocketAddr,
        reason: String,
    },
    /// An MX host failed the STARTTLS check at one or more addresses
    /// (`ADDR: reason`, `; `-separated), or could not be resolved.
    #[error("MX host {host}: {reason}")]
    StartTls { host: String, reason: String },
    /// The authoritative servers could not be asked, or did not agree.
    #[error("{name} {rtype}: {reason}")]
    Dns {
        name: String,
        rtype: &'static str,
        reason: String,
    },
    /// The addresses to fetch a policy back from could not be found.
    #[error("responders of {domain}: {reason}")]
    Responders { domain: String, reason: String },
}

/// The roots a fetch or a STARTTLS check validates against.
#[derive(Clone)]
pub struct Trust {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("system roots + ca_bundle")
    }
}

impl Trust {
    /// The system's roots plus the certificates of `ca_bundle`.
    pub fn new(ca_bundle: Option<&Path>) -> Result<Trust, ProbeError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = match ca_bundle {
            None => rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| ProbeError::Tls(e.to_string()))?,
            Some(bundle) => {
                let bad = |reason: String| ProbeError::CaBundle {
                    bundle: bundle.to_owned(),
                    reason,
                };
                let pem = crate::source::read_limited(bundle, crate::source::PEM_SIZE_LIMIT)
                    .map_err(|e| bad(e.to_string()))?;
                let extra = crate::cert::parse_pem_certs(&pem).map_err(|e| bad(e.to_string()))?;
                if extra.is_empty() {
                    return Err(bad("no certificate in it".to_owned()));
                }
                rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                    .map_err(|e| bad(e.to_string()))?
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ProbeError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Trust {
            config: Arc::new(config),
        })
    }
}

/// The MX set every authoritative server shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxView {
    /// Exchange host names, lower case, no trailing dot.
    pub hosts: BTreeSet<String>,
    /// The largest TTL any server gave the set.
    pub ttl: u32,
}

/// One authoritative server's `_mta-sts` answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdView {
    /// The server, as the ledger names it.
    pub server: String,
    /// The `id=` value; `None` for no (valid) record.
    pub id: Option<String>,
    /// The record's TTL, or the negative TTL when absent.
    pub ttl: u32,
}

/// The addresses the policy of `domain` is fetched back from: `responders`,
/// else the `listen` address (loopback for a wildcard), else every address
/// `mta-sts.DOMAIN` resolves to.
pub async fn responders(mta_sts: &MtaSts, domain: &DnsName) -> Result<Vec<SocketAddr>, ProbeError> {
    if !mta_sts.responders.is_empty() {
        return Ok(mta_sts.responders.clone());
    }
    match &mta_sts.serve {
        Serve::Listen(addr) => Ok(vec![reachable(*addr)]),
        Serve::Webroot(_) => {
            let host = format!("mta-sts.{domain}");
            let fail = |reason: String| ProbeError::Responders {
                domain: domain.to_string(),
                reason,
            };
            let mut found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), HTTPS_PORT))
                .await
                .map_err(|e| fail(format!("cannot resolve {host}: {e}")))?
                .collect();
            found.sort();
            found.dedup();
            if found.is_empty() {
                return Err(fail(format!("{host} has no address")));
            }
            routable(&host, found).map_err(fail)
        }
    }
}

/// The addresses of `host` this host has a route to, as the propagation
/// check keeps them: on a single-family host the other family's addresses
/// are skipped (said at debug level), not failed; none left is an error
/// naming why each was skipped.
fn routable(host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
    let mut kept = Vec::new();
    let mut skipped = Vec::new();
    for addr in addrs {
        match mxkeys_providers::propagation::route_to(addr) {
            Ok(()) => kept.push(addr),
            Err(why) => {
                tracing::debug!(%host, %addr, %why, "address skipped");
                skipped.push(format!("{addr}: {why}"));
            }
        }
    }
    if kept.is_empty() {
        return Err(format!(
            "no address of {host} is reachable from this host ({})",
            skipped.join("; ")
        ));
    }
    Ok(kept)
}

/// Where a listener on `addr` is reached from this host: a wildcard
/// address stands for loopback of its family.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// The body `at` serves for `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
pub async fn fetch_policy(
    at: SocketAddr,
    domain: &DnsName,
    trust: &Trust,
) -> Result<String, ProbeError> {
    let host = format!("mta-sts.{domain}");
    let outcome = tokio::time::timeout(FETCH_TIMEOUT, fetch(at, &host, trust)).await;
    let reason = match outcome {
        Ok(Ok(body)) => return Ok(body),
        Ok(Err(reason)) => reason,
        Err(_) => format!("no complete answer within {FETCH_TIMEOUT:?}"),
    };
    Err(ProbeError::Fetch { host, at, reason })
}

/// One GET of the policy from `at`, as a sender makes it (RFC 8461 §3.3):
/// TLS with SNI `host` validated for `host`, HTTP/1.1 with Host `host`, no
/// redirect followed, only 200 with `text/plain`, the body within
/// [`MAX_BODY`].
async fn fetch(at: SocketAddr, host: &str, trust: &Trust) -> Result<String, String> {
    let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("name {host:?}: {e}"))?;
    let tcp = tokio::net::TcpStream::connect(at)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(trust.config.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(conn);
    let result = async {
        let request = Request::get(POLICY_PATH)
            .header(header::HOST, host)
            .header(
                header::USER_AGENT,
                concat!("mxkeys/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {} (200 wanted)", response.status()));
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if !content_type.as_deref().is_some_and(is_text_plain) {
            return Err(format!(
                "content type {} (text/plain wanted)",
                content_type.as_deref().unwrap_or("missing")
            ));
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    format!("body larger than {MAX_BODY} bytes")
                } else {
                    format!("reading the body: {e}")
                }
            })?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8".to_owned())
    }
    .await;
    driver.abort();
    result
}

/// Whether a Content-Type value is `text/plain` (parameters such as a
/// charset allowed).
fn is_text_plain(value: &str) -> bool {
    value
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/plain"))
}

/// Whether every address of MX host `host` serves, after STARTTLS on port
/// 25, a chain valid for `host` under `trust`.
pub async fn starttls(host: &str, trust: &Trust) -> Result<(), ProbeError> {
    let host = mxkeys_providers::canonical_name(host);
    let fail = |reason: String| ProbeError::StartTls {
        host: host.clone(),
        reason,
    };
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), SMTP_PORT))
        .await
        .map_err(|e| fail(format!("cannot resolve: {e}")))?
        .collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(fail("no address".to_owned()));
    }
    let addrs = routable(&host, addrs).map_err(fail)?;
    starttls_at(&host, &addrs, trust).await
}

/// [`starttls`] at the given addresses of `host` (every one must pass).
pub async fn starttls_at(
    host: &str,
    addrs: &[SocketAddr],
    trust: &Trust,
) -> Result<(), ProbeError> {
    let host = mxkeys_providers::canonical_name(host);
    if addrs.is_empty() {
        return Err(ProbeError::StartTls {
            host,
            reason: "no address".to_owned(),
        });
    }
    let mut checks = tokio::task::JoinSet::new();
    for (i, addr) in addrs.iter().copied().enumerate() {
        let config = trust.config.clone();
        let sni = host.clone();
        checks.spawn_blocking(move || {
            let outcome =
                crate::verify::served_chain_with(addr, VerifyProtocol::Smtp, &sni, config)
                    .map(drop)
                    .map_err(|e| e.to_string());
            (i, addr, outcome)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = checks.join_next().await {
        match joined {
            Ok((_, _, Ok(()))) => {}
            Ok((i, addr, Err(reason))) => failures.push((i, format!("{addr}: {reason}"))),
            Err(e) => failures.push((usize::MAX, format!("check aborted: {e}"))),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort();
    Err(ProbeError::StartTls {
        host,
        reason: failures
            .into_iter()
            .map(|(_, f)| f)
            .collect::<Vec<_>>()
            .join("; "),
    })
}

/// `domain`'s MX set on every authoritative server: the exchange hosts
/// (a null MX, or no MX set, is no hosts) with the largest TTL; servers
/// showing different hosts are an error naming each and its answer.
pub async fn observe_mx(prop: &Propagation, domain: &DnsName) -> Result<MxView, ProbeError> {
    let name = domain.to_string();
    let seen = prop
        .observe(&name, RecordType::Mx)
        .await
        .map_err(|e| dns_error(&name, RecordType::Mx, e.to_string()))?;
    mx_view(&seen).map_err(|reason| dns_error(&name, RecordType::Mx, reason))
}

/// `_mta-sts.DOMAIN` on every authoritative server: one entry per
/// answering address (`IdView.server` is its `ADDR:PORT` text, as
/// [`Propagation::observe`] reports each address a sender's resolver may
/// ask), absent records with the negative TTL.
pub async fn observe_ids(prop: &Propagation, domain: &DnsName) -> Result<Vec<IdView>, ProbeError> {
    let name = sts_record_name(domain);
    let seen = prop
        .observe(&name, RecordType::Txt)
        .await
        .map_err(|e| dns_error(&name, RecordType::Txt, e.to_string()))?;
    Ok(seen.iter().map(id_view).collect())
}

fn dns_error(name: &str, rtype: RecordType, reason: String) -> ProbeError {
    ProbeError::Dns {
        name: name.to_owned(),
        rtype: match rtype {
            RecordType::Mx => "MX",
            _ => "TXT",
        },
        reason,
    }
}

/// The hosts of one server's MX answer: the exchanges, less the null MX
/// "." (RFC 7505: no mail), so a null MX or no MX set is no hosts.
fn mx_hosts(seen: &Observed) -> BTreeSet<String> {
    seen.values
        .iter()
        .filter_map(|v| match v {
            RData::Mx { exchange, .. } if exchange != "." => Some(exchange.clone()),
            _ => None,
        })
        .collect()
}

/// The one MX set every answering address shows, with the largest TTL
/// (for an absent set, its negative TTL); an error naming each address
/// and what it answered when they differ (pure).
fn mx_view(seen: &[Observed]) -> Result<MxView, String> {
    let Some(first) = seen.first() else {
        return Err("no authoritative server answered".to_owned());
    };
    let hosts = mx_hosts(first);
    if seen.iter().any(|s| mx_hosts(s) != hosts) {
        let each: Vec<String> = seen
            .iter()
            .map(|s| {
                let hosts = mx_hosts(s);
                let shown = if hosts.is_empty() {
                    "no MX hosts".to_owned()
                } else {
                    hosts.into_iter().collect::<Vec<_>>().join(", ")
                };
                format!("{} ({}) answers {shown}", s.server, s.host)
            })
            .collect();
        return Err(format!(
            "the authoritative servers disagree: {}",
            each.join("; ")
        ));
    }
    let ttl = seen.iter().map(ttl_of).max().unwrap_or(0);
    Ok(MxView { hosts, ttl })
}

/// A set's TTL, or for an absent set the negative TTL (0 when none came).
fn ttl_of(seen: &Observed) -> u32 {
    seen.ttl.or(seen.negative_ttl).unwrap_or(0)
}

/// One answering address's `_mta-sts` id (pure).
fn id_view(seen: &Observed) -> IdView {
    let texts: Vec<&str> = seen
        .values
        .iter()
        .filter_map(|v| match v {
            RData::Txt(t) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    IdView {
        server: seen.server.to_string(),
        id: sts_id(&texts),
        ttl: ttl_of(seen),
    }
}

/// The policy id of a `_mta-sts` TXT set, as RFC 8461 §3.1 reads it: the
/// records that do not start with `v=STSv1` are discarded; unless exactly
/// one is left, and it parses, there is no policy (pure).
fn sts_id(texts: &[&str]) -> Option<String> {
    let mut candidates = texts
        .iter()
        .map(|t| StsRecord::parse(t))
        .filter(|r| !matches!(r, Err(PolicyError::BadRecordVersion)));
    match (candidates.next(), candidates.next()) {
        (Some(Ok(record)), None) => Some(record.id().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(
        server: &str,
        values: Vec<RData>,
        ttl: Option<u32>,
        negative: Option<u32>,
    ) -> Observed {
        Observed {
            server: server.parse().unwrap(),
            host: format!("ns.{server}"),
            values,
            ttl,
            signed: false,
            negative_ttl: negative,
            denial_signed: false,
        }
    }

    fn mx(preference: u16, exchange: &str) -> RData {
        RData::Mx {
            preference,
            exchange: exchange.to_owned(),
        }
    }

    const A: &str = "127.0.0.1:53";
    const B: &str = "127.0.0.2:53";

    #[test]
    fn the_mx_view_is_the_one_host_set_every_server_shows_with_the_largest_ttl() {
        let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();
        let two = || vec![mx(10, "mx1.example.test"), mx(20, "mx2.example.test")];
        // Preferences may differ; the hosts are what a policy lists.
        let reordered = vec![mx(5, "mx2.example.test"), mx(10, "mx1.example.test")];
        let got = mx_view(&[
            observed(A, two(), Some(300), None),
            observed(B, reordered, Some(600), None),
        ])
        .unwrap();
        assert_eq!(got.hosts, hosts(&["mx1.example.test", "mx2.example.test"]));
        assert_eq!(got.ttl, 600);

        // A null MX, or no MX set at all, is no hosts (the negative TTL).
        let null = mx_view(&[observed(A, vec![mx(0, ".")], Some(120), None)]).unwrap();
        assert_eq!(
            null,
            MxView {
                hosts: hosts(&[]),
                ttl: 120
            }
        );
        let absent = mx_view(&[observed(A, vec![], None, Some(60))]).unwrap();
        assert_eq!(
            absent,
            MxView {
                hosts: hosts(&[]),
                ttl: 60
            }
        );

        // Servers that disagree: an error naming each and its answer.
        let err = mx_view(&[
            observed(A, two(), Some(300), None),
            observed(B, vec![mx(10, "mx1.example.test")], Some(300), None),
        ])
        .unwrap_err();
        assert!(err.contains("disagree"), "{err}");
        assert!(
            err.contains(
                "127.0.0.1:53 (ns.127.0.0.1:53) answers mx1.example.test, mx2.example.test"
            ),
            "{err}"
        );
        assert!(
            err.contains("127.0.0.2:53 (ns.127.0.0.2:53) answers mx1.example.test"),
            "{err}"
        );
        let err = mx_view(&[
            observed(A, two(), Some(300), None),
            observed(B, vec![], None, Some(60)),
        ])
        .unwrap_err();
        assert!(
            err.contains("127.0.0.2:53 (ns.127.0.0.2:53) answers no MX hosts"),
            "{err}"
        );
        assert!(mx_view(&[]).is_err());
    }

    #[test]
    fn an_sts_id_is_read_only_from_exactly_one_record_starting_with_v_stsv1() {
        // (TXT values, id)
        let table: &[(&[&str], Option<&str>)] = &[
            (&["v=STSv1; id=20260101;"], Some("20260101")),
            (&["v=STSv1; id=abc"], Some("abc")),
            // Other records at the name are ignored.
            (&["v=spf1 -all", "v=STSv1; id=abc;"], Some("abc")),
            (&["hello"], None),
            (&[], None),
            // Several: no policy (RFC 8461 §3.1), even if one is broken.
            (&["v=STSv1; id=abc;", "v=STSv1; id=def;"], None),
            (&["v=STSv1; id=abc;", "v=STSv1; nothing"], None),
            // One, but invalid.
            (&["v=STSv1;"], None),
            (&["v=STSv1; id=not-alnum!;"], None),
        ];
        for (texts, want) in table {
            assert_eq!(sts_id(texts).as_deref(), *want, "{texts:?}");
        }
    }

    #[test]
    fn an_id_view_names_the_address_and_takes_the_negative_ttl_when_absent() {
        let present = observed(
            A,
            vec![RData::Txt("v=STSv1; id=x1;".into())],
            Some(300),
            None,
        );
        assert_eq!(
            id_view(&present),
            IdView {
                server: A.to_owned(),
                id: Some("x1".into()),
                ttl: 300
            }
        );
        let absent = observed(B, vec![], None, Some(60));
        assert_eq!(
            id_view(&absent),
            IdView {
                server: B.to_owned(),
                id: None,
                ttl: 60
            }
        );
    }

    #[test]
    fn only_text_plain_is_a_policy_content_type() {
        for ok in [
            "text/plain",
            "text/plain; charset=utf-8",
            "Text/Plain ;charset=us-ascii",
        ] {
            assert!(is_text_plain(ok), "{ok}");
        }
        for bad in ["text/html", "application/octet-stream", "", "text/plainx"] {
            assert!(!is_text_plain(bad), "{bad}");
        }
    }

    #[tokio::test]
    async fn responders_are_the_configured_ones_else_the_listen_address_reached_on_loopback() {
        let s = |a: &str| a.parse::<SocketAddr>().unwrap();
        let domain = DnsName::parse("example.test").unwrap();
        let mut config = MtaSts {
            domains: vec![domain.clone()],
            mode: super::super::policy::Mode::Testing,
            mx: Vec::new(),
            max_age: 86_400,
            dns: "dns".to_owned(),
            serve: Serve::Listen(s("0.0.0.0:8443")),
            responders: Vec::new(),
            ca_bundle: None,
        };
        assert_eq!(
            responders(&config, &domain).await.unwrap(),
            vec![s("127.0.0.1:8443")]
        );
        config.responders = vec![s("192.0.2.7:443"), s("[2001:db8::7]:443")];
        assert_eq!(
            responders(&config, &domain).await.unwrap(),
            config.responders
        );
    }

    #[test]
    fn a_wildcard_listener_is_fetched_back_on_loopback() {
        let s = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(reachable(s("0.0.0.0:443")), s("127.0.0.1:443"));
        assert_eq!(reachable(s("[::]:8443")), s("[::1]:8443"));
        assert_eq!(reachable(s("192.0.2.1:443")), s("192.0.2.1:443"));
    }
}
