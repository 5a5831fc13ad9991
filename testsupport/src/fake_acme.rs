//! A small ACME CA (RFC 8555) for the tests: what pebble 2.4 lacks.
//!
//! - `renewalInfo` (ARI, RFC 9773) answering with a window and Retry-After,
//!   or failing on demand (500 with Retry-After).
//! - Boulder's replacement rules for `replaces`: the replaced certificate
//!   must be known and issued to the same account, share a name with the
//!   new order, and have no pending, ready, processing or valid replacement
//!   order yet (`alreadyReplaced`).
//! - `rateLimited` (429 with Retry-After) on newAccount or newOrder, on
//!   demand; a failing certificate download, on demand.
//! - A log of every request, to count what reached the CA.
//!
//! HTTPS on loopback (a port of the pool) with a CA made at start; one
//! request per connection (`Connection: close`), each on its own thread.
//! JWS signatures are decoded, not verified; a challenge is valid as soon
//! as the client says it is ready (nothing is validated); certificates are
//! real, for the CSR's public key, issued by a test intermediate.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rcgen::{
    CertificateParams, DistinguishedName, IsCa, KeyPair, PublicKeyData, SanType, SerialNumber,
    SignatureAlgorithm,
};
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Ca, free_port, pem_block, write};

/// What the CA does besides succeeding; changed by the test at any time.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// newAccount answers `rateLimited` with this Retry-After (seconds).
    pub refuse_accounts: Option<u64>,
    /// newOrder answers `rateLimited` with this Retry-After (seconds).
    pub rate_limit_orders: Option<u64>,
    /// renewalInfo answers 500 with this Retry-After (seconds).
    pub fail_ari: Option<u64>,
    /// The Retry-After of a good renewalInfo answer (seconds).
    pub ari_retry_after: u64,
    /// The ARI window, as (start, end) offsets from notBefore (seconds);
    /// by default the last third of the lifetime's first two thirds.
    pub ari_window: Option<(i64, i64)>,
    /// Lifetime of the certificates issued (seconds).
    pub lifetime: i64,
    /// notBefore relative to now (seconds): > 0 for a CA clock ahead.
    pub not_before_offset: i64,
    /// This many certificate downloads fail (500) before one succeeds.
    pub fail_downloads: u32,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            refuse_accounts: None,
            rate_limit_orders: None,
            fail_ari: None,
            ari_retry_after: 6 * 3600,
            ari_window: None,
            lifetime: 90 * 86_400,
            not_before_offset: -60,
            fail_downloads: 0,
        }
    }
}

/// An order as the CA keeps it.
#[derive(Debug, Clone)]
pub struct FakeOrder {
    pub account: usize,
    pub names: Vec<String>,
    pub status: String,
    pub authzs: Vec<usize>,
    /// The ARI identifier of the certificate it replaces.
    pub replaces: Option<String>,
    pub profile: Option<String>,
    /// Index into `issued` once valid.
    pub cert: Option<usize>,
}

/// A certificate the CA issued.
#[derive(Debug, Clone)]
pub struct FakeCert {
    pub account: usize,
    pub names: Vec<String>,
    /// `base64url(AKI).base64url(serial)`.
    pub ari_id: String,
    pub der: Vec<u8>,
    pub not_before: i64,
    pub not_after: i64,
}

#[derive(Debug, Clone)]
struct Authz {
    name: String,
    status: String,
    token: String,
}

/// Everything the CA knows, for the handlers and the test.
#[derive(Default)]
pub struct CaState {
    pub knobs: Knobs,
    /// Every request: (method, path).
    pub requests: Vec<(String, String)>,
    /// Account keys (their JWK, as text), by account number.
    pub accounts: Vec<String>,
    pub orders: Vec<FakeOrder>,
    pub issued: Vec<FakeCert>,
    authzs: Vec<Authz>,
}

impl CaState {
    /// Requests whose "METHOD /path" is `what`, or starts with it when it
    /// ends with a slash (`POST /order` is newOrder alone, `POST /order/`
    /// the order fetches).
    pub fn count(&self, what: &str) -> usize {
        self.requests
            .iter()
            .map(|(m, p)| format!("{m} {p}"))
            .filter(|r| r == what || (what.ends_with('/') && r.starts_with(what)))
            .count()
    }
}

pub struct FakeAcme {
    /// The directory URL.
    pub url: String,
    /// The root of the CA behind the HTTPS endpoint (`[acme] ca_bundle`).
    pub https_ca: PathBuf,
    pub state: Arc<Mutex<CaState>>,
    stop: Arc<AtomicBool>,
    port: u16,
    handle: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    base: String,
    issuer: Ca,
    state: Arc<Mutex<CaState>>,
}

impl FakeAcme {
    /// Starts the CA on 127.0.0.1, writing its HTTPS root into `dir`.
    pub fn start(dir: &Path) -> FakeAcme {
        std::fs::create_dir_all(dir).unwrap();
        let https = Ca::new("fake ACME HTTPS");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::IpAddress(Ipv4Addr::LOCALHOST.into())];
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, &https.inter).unwrap();
        let https_ca = dir.join("fake-acme-https-ca.pem");
        write(&https_ca, pem_block("CERTIFICATE", &https.root_der));
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), https.inter_der.clone().into()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        let tls = Arc::new(tls);

        let port = free_port();
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("https://127.0.0.1:{port}");
        let state = Arc::new(Mutex::new(CaState::default()));
        let shared = Arc::new(Shared {
            base: base.clone(),
            issuer: Ca::new("fake ACME"),
            state: state.clone(),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::spawn(move || {
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (tls, shared) = (tls.clone(), shared.clone());
                        std::thread::spawn(move || serve(stream, tls, &shared));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeAcme {
            url: format!("{base}/dir"),
            https_ca,
            state,
            stop,
            port,
            handle: Some(handle),
        }
    }

    /// Changes the knobs.
    pub fn set(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut self.state.lock().unwrap().knobs);
    }

    /// Requests of a kind: see [`CaState::count`].
    pub fn count(&self, what: &str) -> usize {
        self.state.lock().unwrap().count(what)
    }

    pub fn total(&self) -> usize {
        self.state.lock().unwrap().requests.len()
    }

    pub fn orders(&self) -> Vec<FakeOrder> {
        self.state.lock().unwrap().orders.clone()
    }

    pub fn issued(&self) -> Vec<FakeCert> {
        self.state.lock().unwrap().issued.clone()
    }

    /// The requests so far, one a line, for failure messages.
    pub fn log(&self) -> String {
        let state = self.state.lock().unwrap();
        state
            .requests
            .iter()
            .map(|(m, p)| format!("{m} {p}\n"))
            .collect()
    }
}

impl Drop for FakeAcme {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// An HTTP answer.
struct Answer {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, v: &Value) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type", "application/json".into())],
            body: v.to_string().into_bytes(),
        }
    }

    fn created(v: &Value, location: String) -> Answer {
        let mut a = Answer::json(201, v);
        a.headers.push(("Location", location));
        a
    }

    fn problem(status: u16, kind: &str, detail: &str) -> Answer {
        Answer {
            status,
            headers: vec![("Content-Type", "application/problem+json".into())],
            body: json!({
                "type": format!("urn:ietf:params:acme:error:{kind}"),
                "detail": detail,
                "status": status,
            })
            .to_string()
            .into_bytes(),
        }
    }

    fn retry_after(mut self, secs: u64) -> Answer {
        self.headers.push(("Retry-After", secs.to_string()));
        self
    }
}

fn serve(stream: TcpStream, tls: Arc<rustls::ServerConfig>, shared: &Shared) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let Ok(conn) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, stream);
    let mut reader = BufReader::new(&mut tls);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return;
    }
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).unwrap_or(0) == 0 {
            return;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_owned(),
        parts.next().unwrap_or("").to_owned(),
    );
    let answer = handle(shared, &method, &path, &body);
    let mut head = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\nReplay-Nonce: {}\r\nCache-Control: no-store\r\n",
        answer.status,
        answer.body.len(),
        B64URL.encode(rand_bytes())
    );
    for (k, v) in &answer.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = tls.write_all(head.as_bytes());
    let _ = tls.write_all(&answer.body);
    tls.conn.send_close_notify();
    let _ = tls.flush();
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    b
}

/// The protected header and payload of a JWS (not verified).
fn jws(body: &[u8]) -> (Value, Option<Value>) {
    let decode =
        |field: &str, v: &Value| -> Option<Vec<u8>> { B64URL.decode(v.get(field)?.as_str()?).ok() };
    let Ok(outer) = serde_json::from_slice::<Value>(body) else {
        return (Value::Null, None);
    };
    let protected = decode("protected", &outer)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let payload = decode("payload", &outer)
        .filter(|b| !b.is_empty())
        .and_then(|b| serde_json::from_slice(&b).ok());
    (protected, payload)
}

fn handle(shared: &Shared, method: &str, path: &str, body: &[u8]) -> Answer {
    let base = &shared.base;
    let mut state = shared.state.lock().unwrap();
    state.requests.push((method.to_owned(), path.to_owned()));
    let (protected, payload) = jws(body);
    let account = protected["kid"]
        .as_str()
        .and_then(|k| k.rsplit('/').next())
        .and_then(|n| n.parse::<usize>().ok());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let id = segments.get(1).and_then(|n| n.parse::<usize>().ok());
    match (method, segments[0]) {
        ("GET", "dir") => Answer::json(
            200,
            &json!({
                "newNonce": format!("{base}/nonce"),
                "newAccount": format!("{base}/acct"),
                "newOrder": format!("{base}/order"),
                "revokeCert": format!("{base}/revoke"),
                "keyChange": format!("{base}/key-change"),
                "renewalInfo": format!("{base}/renewal-info"),
                "meta": {"profiles": {"classic": "90 days", "shortlived": "6 days"}},
            }),
        ),
        (_, "nonce") => Answer {
            status: 200,
            headers: vec![],
            body: vec![],
        },
        ("POST", "acct") if id.is_none() => {
            if let Some(secs) = state.knobs.refuse_accounts {
                return Answer::problem(429, "rateLimited", "too many new accounts")
                    .retry_after(secs);
            }
            let jwk = protected["jwk"].to_string();
            let n = match state.accounts.iter().position(|k| *k == jwk) {
                Some(n) => n,
                None => {
                    state.accounts.push(jwk);
                    state.accounts.len() - 1
                }
            };
            Answer::created(&json!({"status": "valid"}), format!("{base}/acct/{n}"))
        }
        ("POST", "order") if id.is_none() => {
            let Some(account) = account else {
                return Answer::problem(400, "malformed", "no kid");
            };
            new_order(shared, &mut state, account, payload.unwrap_or(Value::Null))
        }
        ("POST", "order") => match id.and_then(|n| state.orders.get(n).map(|o| (n, o))) {
            Some((n, o)) if Some(o.account) == account => {
                Answer::json(200, &order_json(base, n, o, &state))
            }
            Some(_) => Answer::problem(403, "unauthorized", "not your order"),
            None => Answer::problem(404, "malformed", "no such order"),
        },
        ("POST", "authz") => {
            let Some(n) = id.filter(|n| *n < state.authzs.len()) else {
                return Answer::problem(404, "malformed", "no such authorization");
            };
            if payload.as_ref().and_then(|p| p["status"].as_str()) == Some("deactivated") {
                state.authzs[n].status = "deactivated".into();
                update_orders(&mut state);
            }
            Answer::json(200, &authz_json(base, n, &state.authzs[n]))
        }
        ("POST", "chall") => {
            let Some(n) = id.filter(|n| *n < state.authzs.len()) else {
                return Answer::problem(404, "malformed", "no such challenge");
            };
            if payload.is_some() && state.authzs[n].status == "pending" {
                state.authzs[n].status = "valid".into();
                update_orders(&mut state);
            }
            let a = &state.authzs[n];
            Answer::json(200, &challenge_json(base, n, a, segments.get(2).copied()))
        }
        ("POST", "finalize") => {
            let Some(n) = id.filter(|n| *n < state.orders.len()) else {
                return Answer::problem(404, "malformed", "no such order");
            };
            if state.orders[n].status != "ready" {
                return Answer::problem(403, "orderNotReady", "the order is not ready");
            }
            let csr = payload
                .as_ref()
                .and_then(|p| p["csr"].as_str())
                .and_then(|c| B64URL.decode(c).ok());
            let Some(cert) = csr.and_then(|csr| issue(shared, &mut state, n, &csr)) else {
                return Answer::problem(400, "badCSR", "unreadable CSR");
            };
            state.orders[n].status = "valid".into();
            state.orders[n].cert = Some(cert);
            Answer::json(200, &order_json(base, n, &state.orders[n], &state))
        }
        ("POST", "cert") => {
            if state.knobs.fail_downloads > 0 {
                state.knobs.fail_downloads -= 1;
                return Answer::problem(500, "serverInternal", "try again");
            }
            let Some(c) = id.and_then(|n| state.issued.get(n)) else {
                return Answer::problem(404, "malformed", "no such certificate");
            };
            let pem = pem_block("CERTIFICATE", &c.der)
                + &pem_block("CERTIFICATE", &shared.issuer.inter_der);
            Answer {
                status: 200,
                headers: vec![("Content-Type", "application/pem-certificate-chain".into())],
                body: pem.into_bytes(),
            }
        }
        ("GET", "renewal-info") => {
            if let Some(secs) = state.knobs.fail_ari {
                return Answer::problem(500, "serverInternal", "ARI is down").retry_after(secs);
            }
            let wanted = segments.get(1).copied().unwrap_or("");
            let Some(c) = state.issued.iter().find(|c| c.ari_id == wanted) else {
                return Answer::problem(404, "malformed", "unknown certificate");
            };
            let lifetime = c.not_after - c.not_before;
            let (start, end) = state
                .knobs
                .ari_window
                .unwrap_or((lifetime / 2, lifetime * 2 / 3));
            let at = |offset: i64| {
                let t = OffsetDateTime::from_unix_timestamp(c.not_before + offset).unwrap();
                t.format(&time::format_description::well_known::Rfc3339)
                    .unwrap()
            };
            Answer::json(
                200,
                &json!({
                    "suggestedWindow": {"start": at(start), "end": at(end)},
                    "explanationURL": format!("{base}/why"),
                }),
            )
            .retry_after(state.knobs.ari_retry_after)
        }
        _ => Answer::problem(404, "malformed", &format!("no {method} {path}")),
    }
}

/// newOrder, with Boulder's rules for `replaces`.
fn new_order(shared: &Shared, state: &mut CaState, account: usize, payload: Value) -> Answer {
    if let Some(secs) = state.knobs.rate_limit_orders {
        return Answer::problem(
            429,
            "rateLimited",
            "too many certificates already issued for this exact set of identifiers",
        )
        .retry_after(secs);
    }
    let names: Vec<String> = payload["identifiers"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .filter_map(|i| i["value"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Answer::problem(400, "malformed", "no identifiers");
    }
    let replaces = payload["replaces"].as_str().map(str::to_owned);
    if let Some(r) = &replaces {
        let Some(old) = state.issued.iter().find(|c| c.ari_id == *r) else {
            return Answer::problem(400, "malformed", "the replaced certificate is unknown");
        };
        if old.account != account {
            return Answer::problem(
                403,
                "unauthorized",
                "the replaced certificate was issued to another account",
            );
        }
        if !old.names.iter().any(|n| names.contains(n)) {
            return Answer::problem(
                400,
                "malformed",
                "the new order shares no identifier with the replaced certificate",
            );
        }
        let taken = state.orders.iter().any(|o| {
            o.replaces.as_deref() == Some(r.as_str())
                && ["pending", "ready", "processing", "valid"].contains(&o.status.as_str())
        });
        if taken {
            return Answer::problem(
                409,
                "alreadyReplaced",
                "the certificate already has a replacement order",
            );
        }
    }
    let mut authzs = Vec::new();
    for name in &names {
        state.authzs.push(Authz {
            name: name.clone(),
            status: "pending".into(),
            token: B64URL.encode(rand_bytes()),
        });
        authzs.push(state.authzs.len() - 1);
    }
    state.orders.push(FakeOrder {
        account,
        names,
        status: "pending".into(),
        authzs,
        replaces,
        profile: payload["profile"].as_str().map(str::to_owned),
        cert: None,
    });
    let n = state.orders.len() - 1;
    Answer::created(
        &order_json(&shared.base, n, &state.orders[n], state),
        format!("{}/order/{n}", shared.base),
    )
}

/// Orders follow their authorizations: all valid is ready, one
/// deactivated or invalid is invalid.
fn update_orders(state: &mut CaState) {
    let authzs = state.authzs.clone();
    for o in &mut state.orders {
        if o.status != "pending" && o.status != "ready" {
            continue;
        }
        let statuses: Vec<&str> = o
            .authzs
            .iter()
            .map(|a| authzs[*a].status.as_str())
            .collect();
        if statuses
            .iter()
            .any(|s| *s == "deactivated" || *s == "invalid")
        {
            o.status = "invalid".into();
        } else if statuses.iter().all(|s| *s == "valid") {
            o.status = "ready".into();
        }
    }
}

fn order_json(base: &str, n: usize, o: &FakeOrder, state: &CaState) -> Value {
    let identifiers: Vec<Value> = o
        .names
        .iter()
        .map(|n| json!({"type": "dns", "value": n}))
        .collect();
    let authorizations: Vec<String> = o
        .authzs
        .iter()
        .map(|a| format!("{base}/authz/{a}"))
        .collect();
    let mut v = json!({
        "status": o.status,
        "identifiers": identifiers,
        "authorizations": authorizations,
        "finalize": format!("{base}/finalize/{n}"),
    });
    if let Some(r) = &o.replaces {
        v["replaces"] = json!(r);
    }
    if let Some(p) = &o.profile {
        v["profile"] = json!(p);
    }
    if let Some(c) = o.cert.filter(|c| *c < state.issued.len()) {
        v["certificate"] = json!(format!("{base}/cert/{c}"));
    }
    v
}

fn authz_json(base: &str, n: usize, a: &Authz) -> Value {
    let challenges: Vec<Value> = ["http-01", "dns-01"]
        .iter()
        .map(|t| challenge_json(base, n, a, Some(t)))
        .collect();
    json!({
        "status": a.status,
        "identifier": {"type": "dns", "value": a.name},
        "challenges": challenges,
    })
}

fn challenge_json(base: &str, n: usize, a: &Authz, kind: Option<&str>) -> Value {
    let kind = kind.unwrap_or("http-01");
    let status = match a.status.as_str() {
        "valid" => "valid",
        "pending" => "pending",
        _ => "invalid",
    };
    json!({
        "type": kind,
        "url": format!("{base}/chall/{n}/{kind}"),
        "token": a.token,
        "status": status,
    })
}

/// The CSR's public key, for rcgen.
struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// Issues the certificate of order `n` for the CSR's key; its index.
fn issue(shared: &Shared, state: &mut CaState, n: usize, csr: &[u8]) -> Option<usize> {
    use x509_parser::prelude::FromDer as _;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(csr).ok()?;
    let spki = &req.certification_request_info.subject_pki;
    let oid = spki.algorithm.algorithm.to_id_string();
    let params_oid = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let alg = match (oid.as_str(), params_oid.as_deref()) {
        ("1.2.840.113549.1.1.1", _) => &rcgen::PKCS_RSA_SHA256,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => &rcgen::PKCS_ECDSA_P384_SHA384,
        ("1.2.840.10045.2.1", _) => &rcgen::PKCS_ECDSA_P256_SHA256,
        _ => return None,
    };
    let key = CsrKey {
        raw: spki.subject_public_key.data.to_vec(),
        alg,
    };
    let order = state.orders[n].clone();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let not_before = now + state.knobs.not_before_offset;
    let not_after = not_before + state.knobs.lifetime;
    let mut params = CertificateParams::default();
    params.subject_alt_names = order
        .names
        .iter()
        .map(|n| SanType::DnsName(n.clone().try_into().unwrap()))
        .collect();
    params.distinguished_name = DistinguishedName::new();
    params.not_before = OffsetDateTime::from_unix_timestamp(not_before).ok()?;
    params.not_after = OffsetDateTime::from_unix_timestamp(not_after).ok()?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.use_authority_key_identifier_extension = true;
    let mut serial = rand_bytes().to_vec();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from(serial));
    let cert = params.signed_by(&key, &shared.issuer.inter).ok()?;
    let der = cert.der().to_vec();
    let leaf = rustls_pki_types::CertificateDer::from(der.clone());
    let ari_id = instant_acme::CertificateIdentifier::try_from(&leaf)
        .ok()?
        .to_string();
    state.issued.push(FakeCert {
        account: order.account,
        names: order.names.clone(),
        ari_id,
        der,
        not_before,
        not_after,
    });
    Some(state.issued.len() - 1)
}
