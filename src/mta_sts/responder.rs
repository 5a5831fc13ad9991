//! The built-in MTA-STS HTTPS responder (RFC 8461 §3.3), and the TLS-RPT
//! report endpoint (RFC 8460 §3) when an https `rua` is served here: on a
//! configured address it answers `GET /.well-known/mta-sts.txt` for the
//! `mta-sts.DOMAIN` names it holds a policy for, `POST` of reports to the
//! configured endpoints, and nothing else.
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
//! Policies are files, in the webroot layout the MTA-STS pass writes
//! ([`crate::mta_sts::webroot`]: `DIR/mta-sts.DOMAIN/.well-known/mta-sts.txt`),
//! read again at each request (and looked at at each handshake), so a
//! policy written by another process is served by the next request
//! without a restart. A domain has a policy iff its file reads: each
//! component below `DIR` is opened without following a symlink
//! (O_NOFOLLOW, relative to its parent's descriptor), the file must be a
//! regular file of at most [`POLICY_LIMIT`] bytes; a symlink planted in
//! the tree is never followed. The reads are small and fast, done on the
//! async worker.
//!
//! Reports: a `POST` to an exact (host, path) of [`Reports::endpoints`]
//! (Host = SNI, as for GET; another method there is a 405) has its body
//! read with the wire cap of [`crate::tls_rpt::report::MAX_BODY`]: a body
//! declared or found larger is answered 413 as soon as the cap is passed,
//! the connection closed, nothing stored. At most [`REPORTS_AT_ONCE`]
//! bodies are held at once (more get a 503: senders retry), so memory
//! stays bounded; a body must be complete within [`REPORT_TIMEOUT`]
//! (else 408), besides the idle timeout of [`crate::listen`]. The body is
//! then decoded and stored ([`crate::tls_rpt::store::Store::receive`],
//! gzip or JSON by content type, RFC 8460 §5.3) on a blocking thread
//! (`spawn_blocking`: inflating and fsyncing are not for the async
//! workers), one store write at a time: 201 for a new report, 200 for one
//! already stored, the refusal's 4xx for a bad one, 500 when it cannot be
//! written.
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
//! is served (logged once).
//!
//! Connections have the limits of [`crate::listen`]. The decisions
//! ([`route`], [`host_of`], [`wanted_domain`]) are pure functions apart
//! from the effects (files, sockets) and are tested with tables.

use std::io::{self, Read as _};
use std::net::SocketAddr;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::Mode;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;

use crate::cert::Timeliness;
use crate::mta_sts::webroot;
use crate::names::{DnsName, canonical, covers};
use crate::tls_rpt::report::MAX_BODY;
use crate::tls_rpt::store::{Received, Saved, Store};

/// The one path answered.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

/// The largest policy file served (a policy is a few hundred bytes).
pub const POLICY_LIMIT: u64 = 64 * 1024;

/// Report bodies held at once; one more is answered 503.
pub const REPORTS_AT_ONCE: usize = 4;

/// Time for a whole report body to arrive, after its request head.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// What a responder serves.
#[derive(Debug, Clone)]
pub struct ResponderConfig {
    pub addr: SocketAddr,
    pub certs: Vec<CertFiles>,
    /// The policies, in the webroot layout; a domain has a policy iff its
    /// file reads.
    pub policies: PathBuf,
    /// The TLS-RPT endpoint, if an https `rua` is served here.
    pub reports: Option<Reports>,
}

/// Where reports are received and kept.
#[derive(Debug, Clone)]
pub struct Reports {
    /// (host, path) of every https `rua` served here; the host is compared
    /// in canonical form, the path exactly.
    pub endpoints: Vec<(String, String)>,
    pub store: Store,
}

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
    policies: PathBuf,
    reports: Option<ReportSide>,
    certs: Vec<Slot>,
}

/// The report endpoint's state.
struct ReportSide {
    /// (canonical host, path).
    endpoints: Vec<(String, String)>,
    store: Store,
    /// One per body held at once.
    permits: Arc<tokio::sync::Semaphore>,
    /// Held while the store is written (it has one writer at a time).
    writer: Arc<Mutex<()>>,
}

impl Shared {
    fn endpoints(&self) -> &[(String, String)] {
        self.reports.as_ref().map_or(&[], |r| &r.endpoints)
    }

    /// Whether a handshake for `sni` gets a certificate: an endpoint host,
    /// or `mta-sts.DOMAIN` with a policy file.
    fn serves(&self, sni: &str) -> bool {
        let host = canonical(sni);
        if self.endpoints().iter().any(|(h, _)| *h == host) {
            return true;
        }
        wanted_domain(&host).is_some_and(|d| open_policy(&self.policies, &d).is_ok())
    }
}

/// Opens the policy file of `domain` under `dir` (webroot layout): every
/// component below `dir` opened relative to its parent without following
/// a symlink; only a regular file of at most [`POLICY_LIMIT`] bytes.
fn open_policy(dir: &Path, domain: &str) -> io::Result<std::fs::File> {
    let root = webroot::root_of(dir, domain)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let site = root
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no site directory"))?;
    let dirs = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // The configured directory itself is the administrator's choice.
    let base = openat(AT_FDCWD, dir, dirs, Mode::empty())?;
    let site = openat(base.as_fd(), site, dirs | OFlag::O_NOFOLLOW, Mode::empty())?;
    let well_known = openat(
        site.as_fd(),
        ".well-known",
        dirs | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )?;
    let file = openat(
        well_known.as_fd(),
        "mta-sts.txt",
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let file = std::fs::File::from(file);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    if meta.len() > POLICY_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("larger than {POLICY_LIMIT} bytes"),
        ));
    }
    Ok(file)
}

/// The policy body of `domain` under `dir` (see [`open_policy`]).
pub fn read_policy(dir: &Path, domain: &str) -> io::Result<Bytes> {
    let file = open_policy(dir, domain)?;
    let mut body = Vec::new();
    file.take(POLICY_LIMIT + 1).read_to_end(&mut body)?;
    if body.len() as u64 > POLICY_LIMIT {
        return Err(io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("grew past {POLICY_LIMIT} bytes"),
        ));
    }
    Ok(Bytes::from(body))
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

/// What one request asks for, decided from its SNI, Host, method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// GET or HEAD of this domain's policy (if it has one).
    Policy(String),
    /// POST of a TLS-RPT report to an endpoint.
    Report,
    /// Answered with this status and text; `allow` for a 405.
    Refuse {
        status: StatusCode,
        text: &'static str,
        allow: Option<&'static str>,
    },
}

fn refuse(status: StatusCode, text: &'static str) -> Route {
    Route::Refuse {
        status,
        text,
        allow: None,
    }
}

/// Where one request that came over a TLS connection with `sni` goes;
/// `endpoints` are the report endpoints, (canonical host, path).
pub fn route<B>(endpoints: &[(String, String)], sni: Option<&str>, req: &Request<B>) -> Route {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(host_of)
        .or_else(|| req.uri().host().map(host_of));
    let sni = sni.map(canonical);
    let (Some(sni), true) = (sni.as_deref(), host == sni) else {
        return refuse(StatusCode::MISDIRECTED_REQUEST, "wrong host\n");
    };
    let path = req.uri().path();
    if endpoints.iter().any(|(h, p)| h == sni && p == path) {
        if req.method() == Method::POST {
            return Route::Report;
        }
        return Route::Refuse {
            status: StatusCode::METHOD_NOT_ALLOWED,
            text: "POST\n",
            allow: Some("POST"),
        };
    }
    if path != POLICY_PATH {
        return refuse(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Route::Refuse {
            status: StatusCode::METHOD_NOT_ALLOWED,
            text: "GET or HEAD\n",
            allow: Some("GET, HEAD"),
        };
    }
    match wanted_domain(sni) {
        Some(domain) => Route::Policy(domain),
        None => refuse(StatusCode::NOT_FOUND, "no policy\n"),
    }
}

/// A `text/plain` reply; without its body (but with its length) for HEAD.
fn reply(status: StatusCode, body: impl Into<Bytes>, head: bool) -> Response<Full<Bytes>> {
    let body: Bytes = body.into();
    let len = body.len();
    let body = if head { Bytes::new() } else { body };
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("content-length", len)
        .header("cache-control", "no-store")
        .body(Full::new(body))
        .unwrap_or_default()
}

/// A reply after which the connection is closed (the rest of a body is
/// not read).
fn closing(status: StatusCode, text: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = reply(status, text, false);
    r.headers_mut().insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    r
}

/// Answers one request.
async fn handle(
    shared: Arc<Shared>,
    sni: Option<Arc<str>>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let head = req.method() == Method::HEAD;
    match route(shared.endpoints(), sni.as_deref(), &req) {
        Route::Policy(domain) => match read_policy(&shared.policies, &domain) {
            Ok(body) => reply(StatusCode::OK, body, head),
            Err(e) => {
                tracing::debug!("mta-sts responder: no policy for {domain}: {e}");
                reply(StatusCode::NOT_FOUND, "no policy\n", head)
            }
        },
        Route::Report => match &shared.reports {
            Some(side) => receive(side, req).await,
            None => reply(StatusCode::NOT_FOUND, "not found\n", head),
        },
        Route::Refuse {
            status,
            text,
            allow,
        } => {
            let mut r = reply(status, text, head);
            if let Some(allow) = allow {
                r.headers_mut().insert(
                    hyper::header::ALLOW,
                    hyper::header::HeaderValue::from_static(allow),
                );
            }
            r
        }
    }
}

/// Why a body was not read whole.
#[derive(Debug)]
pub enum BodyError {
    /// More than the cap arrived (or was announced).
    TooLarge,
    /// The connection failed or the body was malformed (the reason).
    Broken(String),
    /// It did not end in time.
    TimedOut,
}

/// Reads `body` whole if it has at most `cap` bytes and ends `within`
/// this time; stops at the first frame that passes the cap.
pub async fn read_capped<B>(body: B, cap: u64, within: Duration) -> Result<Vec<u8>, BodyError>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let read = async {
        let mut body = std::pin::pin!(body);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if (out.len() + data.len()) as u64 > cap {
                    return Err(BodyError::TooLarge);
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// Receives one report: reads the body under the cap, then decodes and
/// stores it on a blocking thread.
async fn receive(side: &ReportSide, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &hyper::header::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let declared = header(hyper::header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || {
        tracing::warn!("tls-rpt: a report larger than {MAX_BODY} bytes refused");
        closing(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the report is larger than {MAX_BODY} bytes\n"),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY) {
        return too_large();
    }
    let Ok(_permit) = side.permits.clone().try_acquire_owned() else {
        let mut r = closing(StatusCode::SERVICE_UNAVAILABLE, "busy, try again later\n");
        r.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("60"),
        );
        return r;
    };
    let body = match read_capped(req.into_body(), MAX_BODY, REPORT_TIMEOUT).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => return too_large(),
        Err(BodyError::Broken(why)) => {
            tracing::debug!("tls-rpt: a report body broke off: {why}");
            return closing(StatusCode::BAD_REQUEST, "the body broke off\n");
        }
        Err(BodyError::TimedOut) => {
            return closing(
                StatusCode::REQUEST_TIMEOUT,
                "the report did not arrive in time\n",
            );
        }
    };
    let store = side.store.clone();
    let writer = side.writer.clone();
    let done = tokio::task::spawn_blocking(move || {
        let _one = writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        store.receive(&body[..], content_type.as_deref())
    })
    .await;
    match done {
        Ok(Ok(Saved::New { path, dropped })) => {
            tracing::info!(
                "tls-rpt: report stored in {}{}",
                path.display(),
                if dropped > 0 {
                    format!(" ({dropped} older dropped for the cap)")
                } else {
                    String::new()
                }
            );
            reply(StatusCode::CREATED, "stored\n", false)
        }
        Ok(Ok(Saved::Duplicate(_))) => reply(StatusCode::OK, "already stored\n", false),
        Ok(Err(e)) => {
            let status =
                StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match &e {
                Received::Refused(_) => tracing::info!("tls-rpt: a report refused: {e}"),
                Received::Store(_) => tracing::warn!("tls-rpt: a report not stored: {e}"),
            }
            reply(status, format!("{e}\n"), false)
        }
        Err(e) => {
            tracing::warn!("tls-rpt: storing a report failed: {e}");
            reply(StatusCode::INTERNAL_SERVER_ERROR, "not stored\n", false)
        }
    }
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
        if !self.0.serves(sni) {
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

impl Responder {
    /// Binds `config.addr` and serves the policies under `config.policies`
    /// (and reports, if configured) with the certificates of
    /// `config.certs`. Certificates that cannot be read now are logged and
    /// tried again at each handshake.
    pub async fn start(config: ResponderConfig) -> Result<Responder, ResponderError> {
        let ResponderConfig {
            addr,
            certs,
            policies,
            reports,
        } = config;
        let reports = reports.map(|r| ReportSide {
            endpoints: r
                .endpoints
                .into_iter()
                .map(|(host, path)| (canonical(&host), path))
                .collect(),
            store: r.store,
            permits: Arc::new(tokio::sync::Semaphore::new(REPORTS_AT_ONCE)),
            writer: Arc::new(Mutex::new(())),
        });
        let shared = Arc::new(Shared {
            policies,
            reports,
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
        let task = tokio::spawn(crate::listen::serve_tls_async(
            listener,
            crate::listen::Limits::DEFAULT,
            "mta-sts responder",
            Arc::new(config),
            move |sni, req| handle(handler_shared.clone(), sni, req),
        ));
        Ok(Responder { addr, shared, task })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
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

    fn req(method: &str, host: Option<&str>, path: &str) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    fn body(r: &Response<Full<Bytes>>) -> Bytes {
        let full = r.body().clone();
        futures_util::FutureExt::now_or_never(full.collect())
            .unwrap()
            .unwrap()
            .to_bytes()
    }

    /// (method, SNI, Host header, path, route wanted: the domain of the
    /// policy, "report", or the status)
    type Row = (
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        &'static str,
        &'static str,
    );

    fn name_of(r: &Route) -> String {
        match r {
            Route::Policy(d) => d.clone(),
            Route::Report => "report".to_owned(),
            Route::Refuse { status, .. } => status.as_u16().to_string(),
        }
    }

    #[test]
    fn each_request_goes_to_the_policy_or_endpoint_of_its_own_host_and_path() {
        const H: &str = "mta-sts.example.test";
        const R: &str = "reports.example.test";
        let endpoints = [
            (R.to_owned(), "/tlsrpt".to_owned()),
            (H.to_owned(), "/v1/tlsrpt".to_owned()),
        ];
        let table: &[Row] = &[
            ("GET", Some(H), Some(H), POLICY_PATH, "example.test"),
            (
                "GET",
                Some(H),
                Some("MTA-STS.Example.Test:443"),
                POLICY_PATH,
                "example.test",
            ),
            (
                "GET",
                Some(H),
                Some("mta-sts.example.test."),
                POLICY_PATH,
                "example.test",
            ),
            ("HEAD", Some(H), Some(H), POLICY_PATH, "example.test"),
            (
                "GET",
                Some(H),
                Some("mta-sts.other.test"),
                POLICY_PATH,
                "421",
            ),
            ("GET", Some(H), None, POLICY_PATH, "421"),
            ("GET", None, Some(H), POLICY_PATH, "421"),
            ("GET", Some(H), Some(H), "/", "404"),
            ("GET", Some(H), Some(H), "/.well-known/mta-sts.txt/", "404"),
            (
                "GET",
                Some(H),
                Some(H),
                "/.well-known/acme-challenge/x",
                "404",
            ),
            ("POST", Some(H), Some(H), POLICY_PATH, "405"),
            ("PUT", Some(H), Some(H), POLICY_PATH, "405"),
            (
                "GET",
                Some("mta-sts.other.test"),
                Some("mta-sts.other.test"),
                POLICY_PATH,
                "other.test",
            ),
            (
                "GET",
                Some("example.test"),
                Some("example.test"),
                POLICY_PATH,
                "404",
            ),
            // The report endpoints: exact host and path, POST only.
            ("POST", Some(R), Some(R), "/tlsrpt", "report"),
            (
                "POST",
                Some(R),
                Some("Reports.Example.Test:443"),
                "/tlsrpt",
                "report",
            ),
            ("POST", Some(H), Some(H), "/v1/tlsrpt", "report"),
            ("GET", Some(R), Some(R), "/tlsrpt", "405"),
            ("PUT", Some(R), Some(R), "/tlsrpt", "405"),
            ("POST", Some(R), Some(R), "/tlsrpt/", "404"),
            ("POST", Some(R), Some(R), "/TLSRPT", "404"),
            ("POST", Some(H), Some(H), "/tlsrpt", "404"),
            ("POST", Some(R), Some(H), "/tlsrpt", "421"),
            ("POST", Some(R), None, "/tlsrpt", "421"),
            ("GET", Some(R), Some(R), POLICY_PATH, "404"),
        ];
        for (method, sni, host, path, want) in table {
            let got = route(&endpoints, *sni, &req(method, *host, path));
            assert_eq!(
                name_of(&got),
                *want,
                "{method} {path} sni {sni:?} host {host:?}"
            );
        }
        // Without endpoints, a POST is only a 405 or 404.
        let got = route(&[], Some(R), &req("POST", Some(R), "/tlsrpt"));
        assert_eq!(name_of(&got), "404");
    }

    #[test]
    fn head_gets_the_length_of_the_body_without_the_body() {
        let r = reply(StatusCode::OK, "version: STSv1\r\n", true);
        assert!(body(&r).is_empty());
        assert_eq!(r.headers()["content-length"], "16");
        assert_eq!(r.headers()["content-type"], "text/plain");
        let r = reply(StatusCode::OK, "version: STSv1\r\n", false);
        assert_eq!(body(&r), "version: STSv1\r\n");
    }

    #[test]
    fn a_policy_is_read_only_from_regular_files_reached_without_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("www");
        let body = "version: STSv1\r\nmode: testing\r\n";
        webroot::write_policies(
            &dir,
            &std::collections::HashMap::from([("example.test".to_owned(), body.to_owned())]),
        )
        .unwrap();
        assert_eq!(read_policy(&dir, "Example.Test").unwrap(), body);
        assert!(read_policy(&dir, "other.test").is_err());
        assert!(read_policy(&dir, "../etc").is_err());

        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "version: STSv1\r\nsecret\r\n").unwrap();
        // A symlink as the file, as the .well-known directory, as the
        // site directory: none is followed.
        let site = |d: &str| dir.join(format!("mta-sts.{d}"));
        std::fs::create_dir_all(site("a.test").join(".well-known")).unwrap();
        std::os::unix::fs::symlink(&secret, site("a.test").join(POLICY_FILE_REL)).unwrap();
        std::fs::create_dir_all(site("b.test")).unwrap();
        std::os::unix::fs::symlink(
            site("example.test").join(".well-known"),
            site("b.test").join(".well-known"),
        )
        .unwrap();
        std::os::unix::fs::symlink(site("example.test"), site("c.test")).unwrap();
        // A directory, a FIFO and a file over the cap.
        std::fs::create_dir_all(site("d.test").join(POLICY_FILE_REL)).unwrap();
        std::fs::create_dir_all(site("e.test").join(".well-known")).unwrap();
        nix::unistd::mkfifo(
            &site("e.test").join(POLICY_FILE_REL),
            Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        std::fs::create_dir_all(site("f.test").join(".well-known")).unwrap();
        std::fs::write(
            site("f.test").join(POLICY_FILE_REL),
            vec![b'x'; POLICY_LIMIT as usize + 1],
        )
        .unwrap();
        for d in ["a.test", "b.test", "c.test", "d.test", "e.test", "f.test"] {
            assert!(read_policy(&dir, d).is_err(), "{d}");
        }
        // At the cap: served.
        std::fs::write(
            site("f.test").join(POLICY_FILE_REL),
            vec![b'x'; POLICY_LIMIT as usize],
        )
        .unwrap();
        assert_eq!(
            read_policy(&dir, "f.test").unwrap().len() as u64,
            POLICY_LIMIT
        );
    }

    const POLICY_FILE_REL: &str = webroot::POLICY_FILE;

    #[tokio::test]
    async fn a_body_past_the_cap_is_refused_at_the_first_frame_over_it() {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        let frames = |n: usize| {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = (0..n)
                .map(|_| Ok(Frame::data(Bytes::from(vec![0u8; 10]))))
                .collect();
            StreamBody::new(futures_util::stream::iter(chunks))
        };
        let t = Duration::from_secs(60);
        assert_eq!(read_capped(frames(3), 30, t).await.unwrap().len(), 30);
        assert!(matches!(
            read_capped(frames(4), 30, t).await,
            Err(BodyError::TooLarge)
        ));
        // An endless body stops too.
        let endless = StreamBody::new(futures_util::stream::repeat_with(|| {
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![0u8; 1024])))
        }));
        assert!(matches!(
            read_capped(endless, 1 << 20, t).await,
            Err(BodyError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_is_given_up_after_its_time() {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        // One frame, then nothing more, ever.
        let first = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from_static(b"{"),
        ))]);
        let stalled = StreamBody::new(futures_util::StreamExt::chain(
            first,
            futures_util::stream::pending(),
        ));
        let got = tokio::time::timeout(
            Duration::from_secs(30),
            read_capped(stalled, 1 << 20, Duration::from_millis(200)),
        )
        .await
        .expect("read_capped returns on its own");
        assert!(matches!(got, Err(BodyError::TimedOut)), "{got:?}");
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
