//! The built-in MTA-STS HTTPS responder (RFC 8461 §3.3): on a configured
//! address it answers `GET /.well-known/mta-sts.txt` for the
//! `mta-sts.DOMAIN` names it holds a policy for, and nothing else.
//!
//! Rule: a sender gets a policy body only over a TLS connection whose SNI
//! is `mta-sts.DOMAIN` for a domain with a policy, with a certificate that
//! matches its key, is within its validity and covers that name, and only
//! when the Host header names the same host as the SNI. Any other SNI (or
//! none) gets no certificate, so the handshake fails; another path a 404;
//! a Host that differs from the SNI a 421; a method other than GET or HEAD
//! a 405. HEAD gets the headers without the body. Every body is
//! `text/plain`.
//!
//! Certificates are read from the files another part installs, one
//! [`CertFiles`] per certificate (its names, fullchain path, key path).
//! They are reloaded without a restart: each handshake stats the two files
//! of the certificate it picks (device, inode, size, mtime, ctime: a
//! cheap `stat`, no read) and reads them again only when that changed, so
//! a renewed certificate is served by the next handshake; [`Responder::reload`]
//! rereads them all at once (for a caller that knows it just installed
//! them). A changed pair that is unusable (half written, the key of another
//! certificate, expired, not covering the names) is refused with one log
//! line naming the file and the reason, never key material, and the last
//! good certificate stays in service, until it expires: from then on none
//! is served (logged once). Policies are swapped at run time
//! with [`Responder::set_policies`].
//!
//! Connections have the limits of [`crate::listen`]. The decisions
//! ([`answer`], [`host_of`], [`wanted_domain`]) are pure functions apart
//! from the effects (files, sockets) and are tested with tables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::cert::Timeliness;
use crate::names::{DnsName, canonical, covers};

/// The one path answered.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// The largest certificate or key file read.
const FILE_LIMIT: u64 = 1024 * 1024;

/// One certificate the responder serves: the names it is for and the files
/// it is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub names: Vec<DnsName>,
    pub fullchain: PathBuf,
    pub key: PathBuf,
}

/// Why the responder cannot start or a certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ResponderError {
    #[error("mta-sts responder: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mta-sts responder: TLS setup: {0}")]
    Tls(String),
    #[error("mta-sts responder: {}: {reason}", .path.display())]
    Certificate { path: PathBuf, reason: String },
}

/// The policy bodies by domain (canonical, without `mta-sts.`).
type Policies = Arc<HashMap<String, Bytes>>;

/// A responder listening on one address until dropped.
pub struct Responder {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Shared {
    policies: RwLock<Policies>,
    certs: Vec<Slot>,
}

impl Shared {
    fn policies(&self) -> Policies {
        match self.policies.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// What identifies a file's version without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// One certificate's files and what was last loaded from them.
struct Slot {
    files: CertFiles,
    loaded: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    /// The stamps of (fullchain, key) last looked at, loaded or refused.
    seen: Option<(Option<Stamp>, Option<Stamp>)>,
    /// The last good certificate and its notAfter (Unix seconds).
    key: Option<(Arc<CertifiedKey>, i64)>,
    /// Whether the expiry of `key` was logged.
    expiry_said: bool,
}

impl Loaded {
    /// The certificate in service, unless it has expired since it was
    /// loaded (then none: an expired certificate is never served).
    fn serving(&mut self, files: &CertFiles, now: i64) -> Option<Arc<CertifiedKey>> {
        let (key, not_after) = self.key.as_ref()?;
        if now > *not_after {
            if !self.expiry_said {
                tracing::warn!(
                    "mta-sts responder: {}: the certificate in service has expired; \
                     serving none until a valid one is installed",
                    files.fullchain.display()
                );
                self.expiry_said = true;
            }
            return None;
        }
        Some(key.clone())
    }
}

impl Slot {
    /// The certificate to serve at `now` (Unix seconds), reading the files
    /// again first if their stamps changed (or always with `force`).
    fn current(
        &self,
        force: bool,
        now: i64,
    ) -> (Option<Arc<CertifiedKey>>, Option<ResponderError>) {
        let stamps = (stamp(&self.files.fullchain), stamp(&self.files.key));
        let mut loaded = match self.loaded.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if !force && loaded.seen == Some(stamps) {
            return (loaded.serving(&self.files, now), None);
        }
        loaded.seen = Some(stamps);
        match load(&self.files, now) {
            Ok((key, not_after)) => {
                if loaded.key.is_some() {
                    tracing::info!(
                        "mta-sts responder: serving the new certificate of {}",
                        self.files.fullchain.display()
                    );
                }
                loaded.key = Some((Arc::new(key), not_after));
                loaded.expiry_said = false;
                (loaded.serving(&self.files, now), None)
            }
            Err(e) => {
                if loaded.key.is_some() {
                    tracing::warn!("{e}; still serving the previous certificate");
                } else {
                    tracing::warn!("{e}");
                }
                (loaded.serving(&self.files, now), Some(e))
            }
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn read_limited(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, ResponderError> {
    use std::io::Read as _;
    let bad = |reason: String| ResponderError::Certificate {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(FILE_LIMIT + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > FILE_LIMIT {
        return Err(bad(format!("larger than {FILE_LIMIT} bytes")));
    }
    Ok(bytes)
}

/// Reads and checks one certificate: the key matches the leaf, the leaf is
/// valid at `now` and covers every configured name.
fn load(files: &CertFiles, now: i64) -> Result<(CertifiedKey, i64), ResponderError> {
    let chain_err = |reason: String| ResponderError::Certificate {
        path: files.fullchain.clone(),
        reason,
    };
    let key_err = |reason: String| ResponderError::Certificate {
        path: files.key.clone(),
        reason,
    };
    let chain_pem = read_limited(&files.fullchain)?;
    let certs = crate::cert::parse_pem_certs(&chain_pem).map_err(|e| chain_err(e.to_string()))?;
    let leaf_der = certs
        .first()
        .ok_or_else(|| chain_err("no certificate".to_owned()))?;
    let leaf = crate::cert::Leaf::parse(leaf_der).map_err(|e| chain_err(e.to_string()))?;
    match leaf.validity.at(now) {
        Timeliness::Valid => {}
        Timeliness::Expired => return Err(chain_err("the certificate has expired".to_owned())),
        Timeliness::NotYetValid => {
            return Err(chain_err("the certificate is not valid yet".to_owned()));
        }
    }
    if let Some(missing) = files
        .names
        .iter()
        .find(|n| !leaf.names.iter().any(|p| covers(p, n).is_some()))
    {
        return Err(chain_err(format!(
            "the certificate does not cover {missing}"
        )));
    }
    let key_pem = read_limited(&files.key)?;
    // The parse error names no byte of the file.
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| key_err("no usable private key in PEM form".to_owned()))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = CertifiedKey::from_der(certs, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            key_err("the key does not match the certificate".to_owned())
        }
        _ => key_err("the private key cannot be used".to_owned()),
    })?;
    Ok((key, leaf.validity.not_after))
}

/// The domain whose policy a host name `mta-sts.DOMAIN` asks for.
pub fn wanted_domain(host: &str) -> Option<String> {
    let host = canonical(host);
    let domain = host.strip_prefix("mta-sts.")?;
    (!domain.is_empty()).then(|| domain.to_owned())
}

/// The host of a Host header value (`name`, `name:port`), canonical.
pub fn host_of(value: &str) -> String {
    let value = value.trim();
    let host = match value.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => value,
    };
    canonical(host)
}

/// The reply to one request that came over a TLS connection with `sni`.
pub fn answer<B>(
    policies: &HashMap<String, Bytes>,
    sni: Option<&str>,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_of)
        .or_else(|| req.uri().host().map(host_of));
    let sni = sni.map(canonical);
    if sni.is_none() || host != sni {
        return reply(StatusCode::MISDIRECTED_REQUEST, "wrong host\n", req);
    }
    if req.uri().path() != POLICY_PATH {
        return reply(StatusCode::NOT_FOUND, "not found\n", req);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n", req);
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let body = sni
        .as_deref()
        .and_then(wanted_domain)
        .and_then(|d| policies.get(&d));
    match body {
        Some(body) => reply(StatusCode::OK, body.clone(), req),
        None => reply(StatusCode::NOT_FOUND, "no policy\n", req),
    }
}

fn reply<B>(status: StatusCode, body: impl Into<Bytes>, req: &Request<B>) -> Response<Full<Bytes>> {
    let body: Bytes = body.into();
    let len = body.len();
    let body = if req.method() == Method::HEAD {
        Bytes::new()
    } else {
        body
    };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("content-length", len)
        .header("cache-control", "no-store")
        .body(Full::new(body))
        .unwrap_or_default()
}

/// Picks the certificate for a handshake from its SNI.
struct Resolver(Arc<Shared>);

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mta-sts certificate resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        let domain = wanted_domain(sni)?;
        if !self.0.policies().contains_key(&domain) {
            return None;
        }
        let name = DnsName::parse(sni).ok()?;
        let slot = self.0.certs.iter().find(|s| {
            s.files
                .names
                .iter()
                .any(|n| covers(n.as_str(), &name).is_some())
        })?;
        slot.current(false, unix_now()).0
    }
}

fn to_policies(policies: HashMap<String, String>) -> Policies {
    Arc::new(
        policies
            .into_iter()
            .map(|(d, body)| (canonical(&d), Bytes::from(body)))
            .collect(),
    )
}

impl Responder {
    /// Binds `addr` and serves `policies` (body by domain) with the
    /// certificates of `certs`. Certificates that cannot be read now are
    /// logged and tried again at each handshake.
    pub async fn start(
        addr: SocketAddr,
        certs: Vec<CertFiles>,
        policies: HashMap<String, String>,
    ) -> Result<Responder, ResponderError> {
        let shared = Arc::new(Shared {
            policies: RwLock::new(to_policies(policies)),
            certs: certs
                .into_iter()
                .map(|files| Slot {
                    files,
                    loaded: Mutex::new(Loaded::default()),
                })
                .collect(),
        });
        for slot in &shared.certs {
            let _ = slot.current(true, unix_now());
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ResponderError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Resolver(shared.clone())));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ResponderError::Listen { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        tracing::debug!("mta-sts responder on {addr}");
        let handler_shared = shared.clone();
        let task = tokio::spawn(crate::listen::serve_tls(
            listener,
            crate::listen::Limits::DEFAULT,
            "mta-sts responder",
            Arc::new(config),
            move |sni, req| answer(&handler_shared.policies(), sni, req),
        ));
        Ok(Responder { addr, shared, task })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves these policies (body by domain) from the next request on.
    pub fn set_policies(&self, policies: HashMap<String, String>) {
        let new = to_policies(policies);
        match self.shared.policies.write() {
            Ok(mut p) => *p = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    /// Rereads every certificate's files now; returns the problems (each
    /// one's previous certificate, if any, stays in service).
    pub fn reload(&self) -> Vec<ResponderError> {
        self.shared
            .certs
            .iter()
            .filter_map(|s| s.current(true, unix_now()).1)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> HashMap<String, Bytes> {
        HashMap::from([(
            "example.test".to_owned(),
            Bytes::from_static(b"version: STSv1\r\nmode: testing\r\n"),
        )])
    }

    fn req(method: &str, host: Option<&str>, path: &str) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    fn body(r: &Response<Full<Bytes>>) -> Bytes {
        use http_body_util::BodyExt as _;
        let full = r.body().clone();
        futures_util::FutureExt::now_or_never(full.collect())
            .unwrap()
            .unwrap()
            .to_bytes()
    }

    /// (method, SNI, Host header, path, status wanted)
    type Row = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        u16,
    );

    #[test]
    fn each_request_gets_the_policy_only_for_its_own_host_and_path() {
        const H: &str = "mta-sts.example.test";
        let table: &[Row] = &[
            ("GET", Some(H), Some(H), POLICY_PATH, 200),
            (
                "GET",
                Some(H),
                Some("MTA-STS.Example.Test:443"),
                POLICY_PATH,
                200,
            ),
            (
                "GET",
                Some(H),
                Some("mta-sts.example.test."),
                POLICY_PATH,
                200,
            ),
            ("HEAD", Some(H), Some(H), POLICY_PATH, 200),
            ("GET", Some(H), Some("mta-sts.other.test"), POLICY_PATH, 421),
            ("GET", Some(H), None, POLICY_PATH, 421),
            ("GET", None, Some(H), POLICY_PATH, 421),
            ("GET", Some(H), Some(H), "/", 404),
            ("GET", Some(H), Some(H), "/.well-known/mta-sts.txt/", 404),
            (
                "GET",
                Some(H),
                Some(H),
                "/.well-known/acme-challenge/x",
                404,
            ),
            ("POST", Some(H), Some(H), POLICY_PATH, 405),
            ("PUT", Some(H), Some(H), POLICY_PATH, 405),
            (
                "GET",
                Some("mta-sts.other.test"),
                Some("mta-sts.other.test"),
                POLICY_PATH,
                404,
            ),
            (
                "GET",
                Some("example.test"),
                Some("example.test"),
                POLICY_PATH,
                404,
            ),
        ];
        let p = policies();
        for (method, sni, host, path, want) in table {
            let r = answer(&p, *sni, &req(method, *host, path));
            assert_eq!(
                r.status().as_u16(),
                *want,
                "{method} {path} sni {sni:?} host {host:?}"
            );
            assert_eq!(r.headers()["content-type"], "text/plain");
            let served = body(&r) == p["example.test"];
            assert_eq!(
                served,
                *want == 200 && *method == "GET",
                "{method} {path} sni {sni:?} host {host:?}"
            );
        }
    }

    #[test]
    fn head_gets_the_length_of_the_body_without_the_body() {
        let p = policies();
        const H: &str = "mta-sts.example.test";
        let r = answer(&p, Some(H), &req("HEAD", Some(H), POLICY_PATH));
        assert_eq!(r.status(), StatusCode::OK);
        assert!(body(&r).is_empty());
        assert_eq!(
            r.headers()["content-length"],
            p["example.test"].len().to_string().as_str()
        );
    }

    /// Writes a self-signed certificate for `names` and its key (or
    /// `other_key`'s) into `dir`; returns the files for `want`.
    fn files_for(
        dir: &Path,
        names: &[&str],
        want: &[&str],
        other_key: bool,
    ) -> (CertFiles, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let key_pem = if other_key {
            rcgen::KeyPair::generate().unwrap().serialize_pem()
        } else {
            key.serialize_pem()
        };
        std::fs::write(dir.join("fullchain.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), &key_pem).unwrap();
        let files = CertFiles {
            names: want.iter().map(|n| DnsName::parse(n).unwrap()).collect(),
            fullchain: dir.join("fullchain.pem"),
            key: dir.join("key.pem"),
        };
        (files, key_pem)
    }

    #[test]
    fn a_certificate_is_used_only_with_its_key_and_covering_every_name() {
        let tmp = tempfile::tempdir().unwrap();
        let now = unix_now();
        const H: &str = "mta-sts.example.test";
        let (good, _) = files_for(tmp.path(), &[H], &[H], false);
        assert!(load(&good, now).is_ok());
        let (wild, _) = files_for(tmp.path(), &["*.example.test"], &[H], false);
        assert!(load(&wild, now).is_ok());

        let (uncovered, _) = files_for(tmp.path(), &["mta-sts.other.test"], &[H], false);
        let e = load(&uncovered, now).unwrap_err().to_string();
        assert!(
            e.contains("fullchain.pem") && e.contains("does not cover mta-sts.example.test"),
            "{e}"
        );

        let (mismatched, key_pem) = files_for(tmp.path(), &[H], &[H], true);
        let e = load(&mismatched, now).unwrap_err().to_string();
        assert!(e.contains("key.pem") && e.contains("does not match"), "{e}");
        let body: String = key_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        assert!(!e.contains("PRIVATE") && !e.contains(&body[..16]), "{e}");

        // Past its notAfter (rcgen's default: 4096-01-01): refused.
        let e = load(&good, 100_000_000_000).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");

        let (mut garbled, _) = files_for(tmp.path(), &[H], &[H], false);
        garbled.key = tmp.path().join("garbled.pem");
        std::fs::write(
            &garbled.key,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = load(&garbled, now).unwrap_err().to_string();
        assert!(e.contains("garbled.pem") && !e.contains("AAAA"), "{e}");
    }

    #[test]
    fn a_certificate_in_service_is_no_longer_served_once_it_has_expired() {
        let tmp = tempfile::tempdir().unwrap();
        const H: &str = "mta-sts.example.test";
        let (files, _) = files_for(tmp.path(), &[H], &[H], false);
        let slot = Slot {
            files,
            loaded: Mutex::new(Loaded::default()),
        };
        let now = unix_now();
        assert!(slot.current(false, now).0.is_some());
        // The same files, later than rcgen's default notAfter (4096-01-01).
        let later = 100_000_000_000;
        assert!(slot.current(false, later).0.is_none());
        assert!(slot.current(false, now).0.is_some());
    }

    #[test]
    fn only_mta_sts_names_ask_for_a_domain() {
        let table = [
            ("mta-sts.example.test", Some("example.test")),
            ("MTA-STS.Example.TEST.", Some("example.test")),
            ("mta-sts.", None),
            ("mail.example.test", None),
            ("xmta-sts.example.test", None),
        ];
        for (host, want) in table {
            assert_eq!(wanted_domain(host).as_deref(), want, "{host}");
        }
    }

    #[test]
    fn host_headers_lose_their_port_and_case() {
        let table = [
            ("mta-sts.example.test", "mta-sts.example.test"),
            ("mta-sts.example.test:8443", "mta-sts.example.test"),
            ("MTA-STS.example.test.", "mta-sts.example.test"),
            ("  mta-sts.example.test  ", "mta-sts.example.test"),
        ];
        for (value, want) in table {
            assert_eq!(host_of(value), want, "{value}");
        }
    }
}
