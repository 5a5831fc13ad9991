//! `mxkeys renew` end to end against a real ACME CA (pebble) and a real
//! authoritative DNS server (BIND 9, RFC 2136 with TSIG).
//!
//! Every test starts its own BIND (zone `example.test` with A records to
//! 127.0.0.1 and a wildcard) and its own pebble resolving every name through
//! that BIND (`-dnsserver`: HTTP-01's A lookups and DNS-01's TXT lookups),
//! with `PEBBLE_VA_NOSLEEP=1`, `PEBBLE_WFE_NONCEREJECT=0` and
//! `PEBBLE_AUTHZREUSE=0`. pebble's HTTP-01 validator connects to
//! 127.0.0.1:`http_port`. Everything listens on loopback only.
//!
//! Issued chains are checked against pebble's intermediate, fetched from its
//! management interface; pebble's log (one line per request) shows which
//! requests reached the CA.
//!
//! Without pebble or BIND, a test is skipped with a message naming the
//! Debian package; with `CI=true` it fails.

use mxkeys_testsupport as common;

use common::bind;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bind::{Bind, KEY_NAME};
use common::fake_acme::FakeAcme;
use common::servers::{Need, Pebble, require_programs};
use common::*;
use mxkeys_providers::rfc2136::{Rfc2136, Rfc2136Config, TsigAlgorithm};
use serde_json::{Value, json};

/// An RFC 2136 client of the test's BIND for the zone `example.test` (the
/// harness does not depend on mxkeys-providers, whose tests also use it).
trait BindProvider {
    fn provider(&self) -> Rfc2136;
}

impl BindProvider for Bind {
    fn provider(&self) -> Rfc2136 {
        Rfc2136::new(Rfc2136Config {
            server: self.addr(),
            zone: Some("example.test".to_owned()),
            tsig_name: KEY_NAME.to_owned(),
            tsig_algorithm: TsigAlgorithm::HmacSha256,
            tsig_secret: self.secret.clone(),
        })
        .unwrap()
    }
}

/// The zone pebble resolves through: every name at 127.0.0.1. The names
/// the HTTP-01 tests validate have their own A records, so a DNS-01
/// challenge below them (which turns a name into an empty non-terminal the
/// wildcard no longer covers) never hides them.
pub(crate) const ZONE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
@ IN A 127.0.0.1
ns IN A 127.0.0.1
mail IN A 127.0.0.1
smtp IN A 127.0.0.1
imap IN A 127.0.0.1
a IN A 127.0.0.1
b IN A 127.0.0.1
* IN A 127.0.0.1
_acme-challenge.deleg IN CNAME x.challenges.example.test.
";

const MAIL: &str = "mail.example.test";

// ---------------------------------------------------------------------------
// Required programs
// ---------------------------------------------------------------------------

/// pebble and BIND. Missing: with `CI=true` the test fails; without it, a
/// loud message names the Debian packages and the test returns.
pub(crate) const NEEDS: &[Need] = &[
    ("pebble", "pebble"),
    ("named", "bind9"),
    ("tsig-keygen", "bind9"),
    ("dig", "bind9-dnsutils"),
];

pub(crate) fn require(test: &str) -> bool {
    require_programs(test, &[NEEDS])
}

// ---------------------------------------------------------------------------
// The servers and mxkeys
// ---------------------------------------------------------------------------

/// pebble, the BIND it resolves through, and a test directory.
/// (Dropped in this order: pebble, BIND, then the directory.)
pub(crate) struct Acme {
    pub(crate) pebble: Pebble,
    pub(crate) bind: Bind,
    pub(crate) env: Env,
}

impl Acme {
    /// Starts BIND and pebble, or returns `None` (skip) when they are not
    /// installed and CI is not set.
    fn start(test: &str) -> Option<Acme> {
        if !require(test) {
            return None;
        }
        let bind = Bind::start_with_zone(ZONE)?;
        let env = Env::new();
        let pebble = Pebble::start_with_dns(&env.path("pebble"), bind.addr());
        Some(Acme { pebble, bind, env })
    }

    /// `state_dir`, `[acme]` and `[dns.bind]` (writing to, and checking
    /// propagation at, `dns`).
    fn header_with_dns(&self, dns: SocketAddr) -> String {
        self.header_for_zone(dns, "example.test")
    }

    /// The same with `zone` as `[dns.bind]`'s zone.
    fn header_for_zone(&self, dns: SocketAddr, zone: &str) -> String {
        format!(
            "state_dir = {state}\n\n\
             [acme]\n\
             directory = {dir}\n\
             email = \"admin@example.test\"\n\
             ca_bundle = {ca}\n\n\
             [dns.bind]\n\
             type = \"rfc2136\"\n\
             server = \"{dns}\"\n\
             zone = \"{zone}\"\n\
             tsig_name = \"{KEY_NAME}\"\n\
             tsig_secret_file = {tsig}\n\
             nameservers = [\"{dns}\"]\n\
             propagation_interval = \"200ms\"\n\
             propagation_timeout = \"30s\"\n",
            state = qp(&self.env.state),
            dir = q(&self.pebble.url),
            ca = qp(&self.pebble.https_ca),
            tsig = qp(&self.bind.dir().join("tsig.key")),
        )
    }

    /// Writes the configuration: the header, then `body` (sources and
    /// targets).
    fn config(&self, body: &str) {
        self.config_with_dns(self.bind.addr(), body);
    }

    fn config_with_dns(&self, dns: SocketAddr, body: &str) {
        self.env
            .write_config_raw(&format!("{}\n{body}", self.header_with_dns(dns)));
    }

    /// Where pebble validates HTTP-01.
    fn http_listen(&self) -> String {
        format!("127.0.0.1:{}", self.pebble.http_port)
    }

    /// `mxkeys --config F renew ARGS`.
    pub(crate) fn renew(&self, args: &[&str]) -> Run {
        let mut all = vec!["renew"];
        all.extend_from_slice(args);
        self.env.run(&all)
    }

    pub(crate) fn pebble_log(&self) -> String {
        std::fs::read_to_string(self.pebble.dir.join("pebble.log")).unwrap_or_default()
    }

    /// A run's output and the end of pebble's log, for failure messages.
    pub(crate) fn context(&self, run: &Run) -> String {
        let log = self.pebble_log();
        let start = log.len().saturating_sub(6000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        format!(
            "{}\n--- pebble.log (end) ---\n{}",
            run.describe(),
            &log[start..]
        )
    }

    /// `[[source]]` for HTTP-01 with the built-in responder on pebble's
    /// validation port.
    fn http_source(&self, name: &str, domains: &[&str], extra: &str) -> String {
        format!(
            "[[source]]\ntype = \"acme\"\nname = {}\ndomains = {}\nchallenge = \"http-01\"\nhttp_listen = {}\n{extra}\n",
            q(name),
            q_list(domains),
            q(self.http_listen())
        )
    }

    /// The state directory of an acme source.
    fn source_dir(&self, name: &str) -> PathBuf {
        self.env.state.join("acme").join(name)
    }

    fn state_json(&self, name: &str) -> Value {
        let path = self.source_dir(name).join("state.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", path.display()))
    }

    /// pebble's current intermediate (DER), from its management interface.
    fn intermediate(&self) -> Vec<u8> {
        let pem = https_get(
            &self.pebble.https_ca,
            self.pebble.mgmt_port,
            "/intermediates/0",
        );
        pem_blocks(&pem)
            .into_iter()
            .find(|(l, _)| l == "CERTIFICATE")
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no certificate in pebble's /intermediates/0:\n{pem}"))
    }

    /// The files under the account directory: (name, bytes, mode).
    fn accounts(&self) -> Vec<(PathBuf, Vec<u8>, u32)> {
        let dir = self.env.state.join("acme").join("accounts");
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.map(|e| {
                    let p = e.unwrap().path();
                    let bytes = std::fs::read(&p).unwrap();
                    let mode = mode_of(&p);
                    (p, bytes, mode)
                })
                .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

pub(crate) fn dns_source(name: &str, domains: &[&str], extra: &str) -> String {
    format!(
        "[[source]]\ntype = \"acme\"\nname = {}\ndomains = {}\nchallenge = \"dns-01\"\ndns = \"bind\"\n{extra}\n",
        q(name),
        q_list(domains)
    )
}

/// A target writing one combined file (key, leaf, intermediates).
pub(crate) fn target(name: &str, domains: &[&str], combined: &Path, extra: &str) -> String {
    format!(
        "[[target]]\nname = {}\ndomains = {}\ncombined = {}\n{extra}\n",
        q(name),
        q_list(domains),
        qp(combined)
    )
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `GET path` over HTTPS from 127.0.0.1:port, trusting only `ca` (pebble's
/// management interface): the body.
fn https_get(ca: &Path, port: u16, path: &str) -> String {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for der in read_certs(ca) {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    // A server closing without close_notify ends the read with an error
    // after the body: what was read counts.
    let _ = tls.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer from 127.0.0.1:{port}{path}: {text:?}"));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path} on pebble's management port: {head}"
    );
    body.to_owned()
}

// ---------------------------------------------------------------------------
// Certificates as installed
// ---------------------------------------------------------------------------

/// A combined file (key, leaf, intermediates) as mxkeys wrote it.
pub(crate) struct Installed {
    key: (String, Vec<u8>),
    leaf: Vec<u8>,
    chain: Vec<Vec<u8>>,
}

impl Installed {
    #[track_caller]
    pub(crate) fn read(path: &Path) -> Installed {
        let blocks = read_pem(path);
        let keys: Vec<_> = blocks
            .iter()
            .filter(|(l, _)| is_private_key_label(l))
            .cloned()
            .collect();
        assert_eq!(keys.len(), 1, "{}: one private key", path.display());
        let certs: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|(l, _)| l == "CERTIFICATE")
            .map(|(_, d)| d)
            .collect();
        assert!(
            certs.len() >= 2,
            "{}: a leaf and its intermediate",
            path.display()
        );
        Installed {
            key: keys[0].clone(),
            leaf: certs[0].clone(),
            chain: certs[1..].to_vec(),
        }
    }

    pub(crate) fn fp(&self) -> String {
        sha256_hex(&self.leaf)
    }

    fn public_key(&self) -> Vec<u8> {
        leaf_public_key_raw(&self.leaf)
    }

    /// The key matches the leaf; the leaf was issued (name and signature) by
    /// pebble's current intermediate, which is the chain that follows.
    #[track_caller]
    pub(crate) fn assert_from_pebble(&self, acme: &Acme, what: &str) {
        assert_eq!(
            private_key_public_raw(&self.key.0, &self.key.1),
            self.public_key(),
            "{what}: the key does not match the leaf"
        );
        let inter = acme.intermediate();
        assert_eq!(
            self.chain,
            vec![inter.clone()],
            "{what}: the chain is not pebble's intermediate"
        );
        let (_, leaf) = x509_parser::parse_x509_certificate(&self.leaf).unwrap();
        let (_, issuer) = x509_parser::parse_x509_certificate(&inter).unwrap();
        assert_eq!(
            leaf.issuer().to_string(),
            issuer.subject().to_string(),
            "{what}: issuer name"
        );
        leaf.verify_signature(Some(issuer.public_key()))
            .unwrap_or_else(|e| panic!("{what}: the leaf's signature by the intermediate: {e:?}"));
        assert!(
            issuer.subject().to_string().contains("Pebble Intermediate"),
            "{what}: issued by {}",
            issuer.subject()
        );
    }

    #[track_caller]
    pub(crate) fn assert_names(&self, want: &[&str]) {
        let mut got = cert_info(&self.leaf).dns_sans;
        got.sort();
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(got, want, "the leaf's DNS names");
    }
}

/// The `acme NAME: ...` line of a run's stdout.
#[track_caller]
fn line<'a>(run: &'a Run, source: &str) -> &'a str {
    let prefix = format!("acme {source}: ");
    run.stdout
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no line for acme source {source}\n{}", run.describe()))
}

/// The fingerprint of an `acme NAME: issued SHA256 (REASON), valid until`
/// line, after checking the reason.
#[track_caller]
pub(crate) fn issued(run: &Run, source: &str, reason: &str) -> String {
    let l = line(run, source);
    let rest = l
        .strip_prefix(&format!("acme {source}: issued "))
        .unwrap_or_else(|| panic!("{source} was not issued: {l:?}\n{}", run.describe()));
    let (fp, after) = rest.split_once(' ').unwrap();
    assert!(
        after.starts_with(&format!("({reason}), valid until ")),
        "{source}: reason or format: {l:?}"
    );
    assert_eq!(fp.len(), 64, "a SHA-256 in {l:?}");
    fp.to_owned()
}

/// How many requests of this kind pebble logged (`POST /order-plz`,
/// `POST /finalize-order/`, ...).
pub(crate) fn requests(log: &str, what: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(&format!("{what} -> calling handler()")))
        .count()
}

/// Pebble's `log` shows two orders and two finalizations, the second
/// order placed before the first finalization (else `sequential` is the
/// failure).
#[track_caller]
fn assert_two_orders_overlap(log: &str, sequential: &str) {
    let at = |what: &str| -> Vec<usize> {
        log.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(&format!("{what} -> calling handler()")))
            .map(|(i, _)| i)
            .collect()
    };
    let (orders, finals) = (at("POST /order-plz"), at("POST /finalize-order/"));
    assert_eq!((orders.len(), finals.len()), (2, 2), "{log}");
    assert!(orders[1] < finals[0], "{sequential}\n{log}");
}

// ---------------------------------------------------------------------------
// A web server for the webroot test
// ---------------------------------------------------------------------------

/// Serves `webroot` on 127.0.0.1:port (plain HTTP/1.x GET) and records
/// every request: (path, status).
struct WebServer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(String, u16)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl WebServer {
    fn start(port: u16, webroot: &Path) -> WebServer {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l, root) = (stop.clone(), log.clone(), webroot.to_path_buf());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        if let Some(entry) = serve_one(stream, &root) {
                            l.lock().unwrap().push(entry);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        WebServer {
            stop,
            log,
            handle: Some(handle),
        }
    }

    fn requests(&self) -> Vec<(String, u16)> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn serve_one(stream: TcpStream, root: &Path) -> Option<(String, u16)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut request = String::new();
    reader.read_line(&mut request).ok()?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request.split_whitespace().nth(1)?.to_owned();
    // Only token files: letters, digits, '-' and '_'.
    let file = path
        .strip_prefix("/.well-known/acme-challenge/")
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(|t| root.join(".well-known/acme-challenge").join(t));
    let body = file.and_then(|f| std::fs::read(f).ok());
    let status = if body.is_some() { 200 } else { 404 };
    let body = body.unwrap_or_else(|| b"not found\n".to_vec());
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Not Found" },
        body.len()
    );
    let _ = stream.write_all(&body);
    Some((path, status))
}

// ---------------------------------------------------------------------------
// 1. HTTP-01, built-in responder
// ---------------------------------------------------------------------------

#[test]
fn http01_builtin_responder_issues_a_chain_to_pebbles_intermediate_and_stops_listening() {
    let Some(acme) = Acme::start(
        "http01_builtin_responder_issues_a_chain_to_pebbles_intermediate_and_stops_listening",
    ) else {
        return;
    };
    let out = acme.env.out.join("chain.pem");
    // pebble 2.4 offers no profiles: the profile is ignored with a warning.
    let text = acme.http_source("mail", &[MAIL, "smtp.example.test"], "");
    acme.config(&format!(
        "{text}\n{}",
        target("postfix", &[MAIL, "smtp.example.test"], &out, "")
    ));
    let config = std::fs::read_to_string(&acme.env.config).unwrap();
    acme.env
        .write_config_raw(&config.replace("ca_bundle =", "profile = \"shortlived\"\nca_bundle ="));

    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let fp = issued(&run, "mail", "no certificate yet");
    run.assert_stderr_contains("profile");

    let installed = Installed::read(&out);
    assert_eq!(installed.fp(), fp, "the target holds what renew printed");
    installed.assert_names(&[MAIL, "smtp.example.test"]);
    installed.assert_from_pebble(&acme, "target");
    assert_eq!(
        cert_info(&installed.leaf).key_type,
        "ecdsa-p256",
        "default key type"
    );
    assert_mode(&out, 0o600);

    // The source's own bundle: key and chain, 0600.
    let bundle = acme.source_dir("mail").join("bundle.pem");
    assert_mode(&bundle, 0o600);
    assert_eq!(Installed::read(&bundle).fp(), fp);
    let state = acme.state_json("mail");
    assert_eq!(state["failures"], 0, "{state}");
    assert!(state["last_issued_at"].is_i64(), "{state}");

    // pebble validated through the responder...
    let log = acme.pebble_log();
    assert!(
        log.contains(&format!(
            "http://{MAIL}:{}/.well-known/acme-challenge/",
            acme.pebble.http_port
        )),
        "pebble did not validate over HTTP:\n{}",
        acme.context(&run)
    );
    // ...which listens no more.
    assert!(
        TcpStream::connect(acme.http_listen()).is_err(),
        "something still listens on {} after renew",
        acme.http_listen()
    );
}

// ---------------------------------------------------------------------------
// 2. HTTP-01 by webroot
// ---------------------------------------------------------------------------

#[test]
fn http01_webroot_serves_token_files_during_the_order_and_removes_them() {
    let Some(acme) =
        Acme::start("http01_webroot_serves_token_files_during_the_order_and_removes_them")
    else {
        return;
    };
    let webroot = acme.env.path("www");
    std::fs::create_dir_all(&webroot).unwrap();
    let web = WebServer::start(acme.pebble.http_port, &webroot);
    let out = acme.env.out.join("chain.pem");
    acme.config(&format!(
        "[[source]]\ntype = \"acme\"\nname = \"web\"\ndomains = {}\nchallenge = \"http-01\"\nwebroot = {}\n\n{}",
        q_list(&[MAIL, "imap.example.test"]),
        qp(&webroot),
        target("dovecot", &[MAIL, "imap.example.test"], &out, "")
    ));

    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let fp = issued(&run, "web", "no certificate yet");
    let installed = Installed::read(&out);
    assert_eq!(installed.fp(), fp);
    installed.assert_names(&[MAIL, "imap.example.test"]);
    installed.assert_from_pebble(&acme, "target");

    // The validator fetched two tokens (one per name) from the webroot, and
    // found them.
    let served: Vec<String> = web
        .requests()
        .into_iter()
        .filter(|(p, s)| p.starts_with("/.well-known/acme-challenge/") && *s == 200)
        .map(|(p, _)| p)
        .collect();
    let mut tokens = served.clone();
    tokens.sort();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        2,
        "tokens served from the webroot: {:?}",
        web.requests()
    );
    // Gone afterwards.
    let dir = webroot.join(".well-known/acme-challenge");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "token files left in {}: {left:?}",
        dir.display()
    );
}

// ---------------------------------------------------------------------------
// 3. DNS-01 through RFC 2136, with a wildcard
// ---------------------------------------------------------------------------

#[test]
fn dns01_rfc2136_issues_a_wildcard_and_removes_the_challenge_records() {
    let Some(acme) =
        Acme::start("dns01_rfc2136_issues_a_wildcard_and_removes_the_challenge_records")
    else {
        return;
    };
    let out = acme.env.out.join("chain.pem");
    // `*.example.test` and `example.test` share `_acme-challenge.example.test`
    // (one set, two values: pebble validates both against it).
    let names = [MAIL, "*.example.test", "example.test"];
    acme.config(&format!(
        "{}\n{}",
        dns_source("wild", &names, ""),
        target("postfix", &[MAIL, "imap.example.test"], &out, "")
    ));
    let serial = acme.bind.serial("example.test");

    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let fp = issued(&run, "wild", "no certificate yet");
    let installed = Installed::read(&out);
    assert_eq!(installed.fp(), fp);
    installed.assert_names(&names);
    installed.assert_from_pebble(&acme, "target");

    // The records were written through BIND (the zone changed), and pebble
    // validated by DNS, not HTTP...
    assert!(
        acme.bind.serial("example.test") > serial,
        "the zone was never updated"
    );
    assert!(
        !acme.pebble_log().contains("Attempting to validate w/ HTTP"),
        "{}",
        acme.context(&run)
    );
    // ...and are gone.
    for name in [
        "_acme-challenge.example.test",
        "_acme-challenge.mail.example.test",
    ] {
        assert!(
            acme.bind.short("TXT", name).is_empty(),
            "{name} still has records: {:?}",
            acme.bind.short("TXT", name)
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Key types
// ---------------------------------------------------------------------------

/// `_acme-challenge.deleg` is a CNAME (delegated challenges): the TXT
/// record is written at the CNAME's target, pebble follows the CNAME, the
/// CNAME itself is left alone and the target's record removed afterwards.
#[test]
fn dns01_follows_a_delegating_cname() {
    let Some(acme) = Acme::start("dns01_follows_a_delegating_cname") else {
        return;
    };
    let out = acme.env.out.join("chain.pem");
    acme.config(&format!(
        "{}\n{}",
        dns_source("deleg", &["deleg.example.test"], ""),
        target("web", &["deleg.example.test"], &out, "")
    ));
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let fp = issued(&run, "deleg", "no certificate yet");
    assert_eq!(Installed::read(&out).fp(), fp);
    assert_eq!(
        acme.bind
            .short("CNAME", "_acme-challenge.deleg.example.test"),
        vec!["x.challenges.example.test.".to_owned()],
        "the delegating CNAME must stay"
    );
    assert!(acme.bind.txt_values("x.challenges.example.test").is_empty());
}

#[test]
fn key_types_rsa_2048_and_ecdsa_p384_are_what_the_leaves_carry() {
    let Some(acme) = Acme::start("key_types_rsa_2048_and_ecdsa_p384_are_what_the_leaves_carry")
    else {
        return;
    };
    let (rsa_out, ec_out) = (acme.env.out.join("rsa.pem"), acme.env.out.join("ec.pem"));
    acme.config(&format!(
        "{}\n{}\n{}\n{}",
        dns_source("rsa", &["a.example.test"], "key_type = \"rsa-2048\""),
        acme.http_source("p384", &["b.example.test"], "key_type = \"ecdsa-p384\""),
        target("rsa", &["a.example.test"], &rsa_out, "key_type = \"rsa\""),
        target("ec", &["b.example.test"], &ec_out, "key_type = \"ecdsa\""),
    ));
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    issued(&run, "rsa", "no certificate yet");
    issued(&run, "p384", "no certificate yet");

    let rsa = Installed::read(&rsa_out);
    assert_eq!(cert_info(&rsa.leaf).key_type, "rsa-2048");
    rsa.assert_from_pebble(&acme, "rsa");
    let ec = Installed::read(&ec_out);
    assert_eq!(cert_info(&ec.leaf).key_type, "ecdsa-p384");
    ec.assert_from_pebble(&acme, "p384");
}

// ---------------------------------------------------------------------------
// 5. The account, the schedule, --source
// ---------------------------------------------------------------------------

#[test]
fn a_second_renew_reuses_the_account_and_orders_nothing_that_is_not_due() {
    let Some(acme) =
        Acme::start("a_second_renew_reuses_the_account_and_orders_nothing_that_is_not_due")
    else {
        return;
    };
    let out = acme.env.out.join("chain.pem");
    acme.config(&format!(
        "{}\n{}",
        acme.http_source("mail", &[MAIL], ""),
        target("postfix", &[MAIL], &out, "")
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    let fp = issued(&first, "mail", "no certificate yet");
    let accounts = acme.accounts();
    assert_eq!(accounts.len(), 1, "one stored account: {accounts:?}");
    assert_eq!(accounts[0].2, 0o600, "account file mode");
    let installed = file_id(&out);
    let bundle = file_id(&acme.source_dir("mail").join("bundle.pem"));
    let orders = requests(&acme.pebble_log(), "POST /order-plz");
    assert_eq!(orders, 1);

    let second = acme.renew(&[]);
    assert_eq!(second.code, 0, "{}", acme.context(&second));
    let l = line(&second, "mail");
    assert!(
        l.starts_with("acme mail: not due; next renewal at "),
        "{}",
        second.describe()
    );
    assert!(!second.stdout.contains("issued"), "{}", second.describe());
    assert_eq!(file_id(&out), installed, "the target file was touched");
    assert_eq!(
        file_id(&acme.source_dir("mail").join("bundle.pem")),
        bundle,
        "the bundle was touched"
    );
    // status reports what the source holds and its next renewal: a third of
    // the lifetime before the end (pebble issues for 90 days here).
    let status = acme.env.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let src = &json["acme"][0];
    assert_eq!(src["name"], "mail", "{json:#}");
    assert_eq!(src["sha256"], fp.as_str(), "{json:#}");
    let next = src["next_renewal"].as_str().unwrap();
    let not_after = src["not_after"].as_str().unwrap();
    let ts = |t: &str| {
        time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp()
    };
    let lifetime = ts(not_after) - unix_now();
    let expected = ts(not_after) - lifetime / 3;
    assert!(
        (ts(next) - expected).abs() < 3 * 86_400,
        "next renewal {next} is not a third of the lifetime before {not_after}"
    );
    assert!(
        l.ends_with(next),
        "renew and status disagree: {l} vs {next}"
    );

    let log = acme.pebble_log();
    assert_eq!(requests(&log, "POST /order-plz"), orders, "a new order");
    // Same account file, same bytes; pebble saw one account only.
    assert_eq!(acme.accounts(), accounts, "the stored account changed");
    assert_eq!(
        requests(&log, "POST /sign-me-up"),
        1,
        "new-account requests"
    );
    assert!(log.contains("There are now 1 accounts in memory"), "{log}");
    assert!(!log.contains("There are now 2 accounts"), "{log}");
    assert_eq!(Installed::read(&out).fp(), fp);
}

#[test]
fn renew_source_orders_only_that_source_and_an_unknown_one_exits_2() {
    let Some(acme) = Acme::start("renew_source_orders_only_that_source_and_an_unknown_one_exits_2")
    else {
        return;
    };
    acme.config(&format!(
        "{}\n{}\n{}",
        acme.http_source("one", &[MAIL], ""),
        acme.http_source("two", &["smtp.example.test"], ""),
        target("postfix", &[MAIL], &acme.env.out.join("chain.pem"), "")
    ));

    let unknown = acme.renew(&["--source", "nope"]);
    assert_eq!(unknown.code, 2, "{}", unknown.describe());
    unknown.assert_stderr_contains("nope");
    assert_eq!(requests(&acme.pebble_log(), "POST /order-plz"), 0);

    let run = acme.renew(&["--source", "one"]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    issued(&run, "one", "no certificate yet");
    assert!(
        !run.stdout.contains("acme two:"),
        "source two was looked at:\n{}",
        run.describe()
    );
    assert!(!acme.source_dir("two").join("bundle.pem").exists());
    assert_eq!(requests(&acme.pebble_log(), "POST /order-plz"), 1);

    // Without --source, only the one still due is ordered.
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    issued(&run, "two", "no certificate yet");
    assert!(
        line(&run, "one").starts_with("acme one: not due; "),
        "{}",
        run.describe()
    );
    assert_eq!(requests(&acme.pebble_log(), "POST /order-plz"), 2);
}

#[test]
fn renew_force_orders_a_new_certificate_with_the_same_account() {
    let Some(acme) = Acme::start("renew_force_orders_a_new_certificate_with_the_same_account")
    else {
        return;
    };
    let out = acme.env.out.join("chain.pem");
    acme.config(&format!(
        "{}\n{}",
        acme.http_source("mail", &[MAIL], ""),
        target("postfix", &[MAIL], &out, "")
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    let fp1 = issued(&first, "mail", "no certificate yet");
    let accounts = acme.accounts();

    let forced = acme.renew(&["--force"]);
    assert_eq!(forced.code, 0, "{}", acme.context(&forced));
    let fp2 = issued(&forced, "mail", "forced");
    assert_ne!(fp1, fp2, "--force gave the same certificate");
    let installed = Installed::read(&out);
    assert_eq!(installed.fp(), fp2, "the target holds the new certificate");
    installed.assert_from_pebble(&acme, "after --force");
    assert_eq!(acme.accounts(), accounts, "the stored account changed");
    assert_eq!(requests(&acme.pebble_log(), "POST /sign-me-up"), 1);
}

#[test]
fn changed_domains_are_ordered_without_force() {
    let Some(acme) = Acme::start("changed_domains_are_ordered_without_force") else {
        return;
    };
    let out = acme.env.out.join("chain.pem");
    acme.config(&format!(
        "{}\n{}",
        acme.http_source("mail", &[MAIL], ""),
        target("postfix", &[MAIL], &out, "")
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    issued(&first, "mail", "no certificate yet");

    let names = [MAIL, "smtp.example.test"];
    acme.config(&format!(
        "{}\n{}",
        acme.http_source("mail", &names, ""),
        target("postfix", &names, &out, "")
    ));
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let fp = issued(&run, "mail", "the names changed");
    let installed = Installed::read(&out);
    assert_eq!(installed.fp(), fp);
    installed.assert_names(&names);
}

// ---------------------------------------------------------------------------
// 6. A CA error, and the backoff
// ---------------------------------------------------------------------------

#[test]
fn a_failed_order_names_the_problem_keeps_the_installed_files_and_backs_off() {
    let Some(acme) =
        Acme::start("a_failed_order_names_the_problem_keeps_the_installed_files_and_backs_off")
    else {
        return;
    };
    // postfix holds a certificate installed before (from plain files);
    // dovecot holds none yet.
    let out = acme.env.out.join("chain.pem");
    let dovecot = acme.env.out.join("dovecot.pem");
    let postfix = target("postfix", &[MAIL], &out, "");
    let tgt = format!("{postfix}\n{}", target("dovecot", &[MAIL], &dovecot, ""));
    let ca = Ca::new("before-acme");
    let before = ca.issue(&LeafSpec::new(&[MAIL]));
    let files = acme.env.path("files");
    write(&files.join("fullchain.pem"), before.fullchain_pem());
    write(&files.join("key.pem"), before.key_pem());
    set_mode(&files.join("key.pem"), 0o600);
    acme.config(&format!(
        "{}\n{postfix}",
        src_files(&files.join("fullchain.pem"), &files.join("key.pem"), None)
    ));
    acme.env.sync().ok();
    let installed = file_id(&out);
    assert_eq!(Installed::read(&out).leaf, before.der);

    // Now only an acme source, whose responder listens where pebble does
    // not validate: the name resolves to 127.0.0.1, pebble connects to
    // http_port, nothing answers there.
    let elsewhere = free_port();
    let bad = format!(
        "[[source]]\ntype = \"acme\"\nname = \"web\"\ndomains = {}\nchallenge = \"http-01\"\nhttp_listen = \"127.0.0.1:{elsewhere}\"\n",
        q_list(&[MAIL])
    );
    acme.config(&format!("{bad}\n{tgt}"));
    let t0 = unix_now();
    let run = acme.renew(&[]);
    let t1 = unix_now();
    assert_eq!(
        run.code,
        1,
        "the target is unserved\n{}",
        acme.context(&run)
    );
    let l = line(&run, "web");
    assert!(l.starts_with("acme web: failed: "), "{}", run.describe());
    for part in [
        MAIL,
        "urn:ietf:params:acme:error:connection",
        "connection refused",
    ] {
        assert!(l.contains(part), "no {part:?} in {l:?}");
    }
    let lower = l.to_lowercase();
    assert!(
        lower.contains("http-01") || lower.contains("http01"),
        "the challenge is not named: {l:?}"
    );
    assert_eq!(file_id(&out), installed, "the installed file changed");
    assert!(!dovecot.exists(), "dovecot got a file");
    assert!(!acme.source_dir("web").join("bundle.pem").exists());

    let state = acme.state_json("web");
    assert_eq!(state["failures"], 1, "{state}");
    let next = state["next_attempt_at"].as_i64().unwrap();
    assert!(
        (t0 + 60..=t1 + 61).contains(&next),
        "next_attempt_at {next}, expected about {t0}+60\n{state}"
    );
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("urn:ietf:params:acme:error:connection")),
        "{state}"
    );

    // Backing off: the CA is not contacted at all.
    let log_len = acme.pebble_log().len();
    let again = acme.renew(&[]);
    assert_eq!(again.code, 1, "{}", again.describe());
    let l = line(&again, "web");
    assert!(
        l.starts_with("acme web: a previous order failed; next attempt after "),
        "{}",
        again.describe()
    );
    assert_eq!(
        acme.pebble_log().len(),
        log_len,
        "renew contacted the CA during the backoff:\n{}",
        acme.context(&again)
    );
    assert_eq!(acme.state_json("web")["failures"], 1);
    assert_eq!(file_id(&out), installed);

    // --force tries again (and fails again: the next wait is 10 min).
    let orders = requests(&acme.pebble_log(), "POST /order-plz");
    let t0 = unix_now();
    let forced = acme.renew(&["--force"]);
    let t1 = unix_now();
    assert_eq!(forced.code, 1, "{}", acme.context(&forced));
    assert!(line(&forced, "web").starts_with("acme web: failed: "));
    assert_eq!(requests(&acme.pebble_log(), "POST /order-plz"), orders + 1);
    let state = acme.state_json("web");
    assert_eq!(state["failures"], 2, "{state}");
    let next = state["next_attempt_at"].as_i64().unwrap();
    assert!((t0 + 600..=t1 + 601).contains(&next), "{state}");
    assert_eq!(file_id(&out), installed);

    // Fixed: still backing off without --force; --force orders it.
    acme.config(&format!("{}\n{tgt}", acme.http_source("web", &[MAIL], "")));
    let waiting = acme.renew(&[]);
    assert!(
        line(&waiting, "web").contains("a previous order failed"),
        "{}",
        waiting.describe()
    );
    let fixed = acme.renew(&["--force"]);
    assert_eq!(fixed.code, 0, "{}", acme.context(&fixed));
    let fp = issued(&fixed, "web", "forced");
    assert_eq!(Installed::read(&out).fp(), fp);
    assert_eq!(Installed::read(&dovecot).fp(), fp);
    let state = acme.state_json("web");
    assert_eq!(state["failures"], 0, "{state}");
    assert!(state["next_attempt_at"].is_null(), "{state}");
}

#[test]
fn a_failed_dns01_order_names_the_problem_and_removes_its_records() {
    let Some(acme) = Acme::start("a_failed_dns01_order_names_the_problem_and_removes_its_records")
    else {
        return;
    };
    // mxkeys writes to, and checks propagation at, a second BIND that pebble
    // never asks: the records propagate where mxkeys looks, pebble finds
    // none.
    let Some(other) = Bind::start_with_zone(ZONE) else {
        return;
    };
    acme.config_with_dns(
        other.addr(),
        &format!(
            "{}\n{}",
            dns_source("mail", &[MAIL], ""),
            target("postfix", &[MAIL], &acme.env.out.join("chain.pem"), "")
        ),
    );
    // The secret file of the server written to.
    let config = std::fs::read_to_string(&acme.env.config).unwrap();
    acme.env.write_config_raw(&config.replace(
        &qp(&acme.bind.dir().join("tsig.key")),
        &qp(&other.dir().join("tsig.key")),
    ));
    let serial = other.serial("example.test");
    let run = acme.renew(&[]);
    assert_eq!(run.code, 1, "{}", acme.context(&run));
    let l = line(&run, "mail");
    assert!(l.starts_with("acme mail: failed: "), "{}", run.describe());
    assert!(l.contains(MAIL), "{l}");
    assert!(l.contains("urn:ietf:params:acme:error:"), "{l}");
    let lower = l.to_lowercase();
    assert!(lower.contains("dns-01") || lower.contains("dns01"), "{l}");
    assert!(lower.contains("txt"), "no detail about the TXT lookup: {l}");
    // Written, then removed, also on failure.
    assert!(other.serial("example.test") > serial, "nothing was written");
    assert!(
        other
            .short("TXT", "_acme-challenge.mail.example.test")
            .is_empty(),
        "the challenge record was left behind"
    );
    assert_eq!(acme.state_json("mail")["failures"], 1);
}

// ---------------------------------------------------------------------------
// 7. reuse_key
// ---------------------------------------------------------------------------

#[test]
fn reuse_key_keeps_the_key_across_forced_renewals_and_the_default_does_not() {
    let Some(acme) =
        Acme::start("reuse_key_keeps_the_key_across_forced_renewals_and_the_default_does_not")
    else {
        return;
    };
    let (keep_out, fresh_out) = (
        acme.env.out.join("keep.pem"),
        acme.env.out.join("fresh.pem"),
    );
    acme.config(&format!(
        "{}\n{}\n{}\n{}",
        acme.http_source("keep", &[MAIL], "reuse_key = true"),
        acme.http_source("fresh", &["smtp.example.test"], ""),
        target("keep", &[MAIL], &keep_out, ""),
        target("fresh", &["smtp.example.test"], &fresh_out, ""),
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    let (keep1, fresh1) = (Installed::read(&keep_out), Installed::read(&fresh_out));

    for round in 1..=2 {
        let run = acme.renew(&["--force"]);
        assert_eq!(run.code, 0, "round {round}\n{}", acme.context(&run));
        issued(&run, "keep", "forced");
        issued(&run, "fresh", "forced");
        let (keep, fresh) = (Installed::read(&keep_out), Installed::read(&fresh_out));
        assert_ne!(keep.fp(), keep1.fp(), "round {round}: no new certificate");
        assert_eq!(
            keep.public_key(),
            keep1.public_key(),
            "round {round}: reuse_key = true changed the key"
        );
        keep.assert_from_pebble(&acme, "keep");
        assert_ne!(fresh.fp(), fresh1.fp(), "round {round}: no new certificate");
        assert_ne!(
            fresh.public_key(),
            fresh1.public_key(),
            "round {round}: the default kept the key"
        );
    }
}

// ---------------------------------------------------------------------------
// 8. Concurrent orders
// ---------------------------------------------------------------------------

#[test]
fn two_sources_are_ordered_concurrently_in_one_run() {
    let Some(acme) = Acme::start("two_sources_are_ordered_concurrently_in_one_run") else {
        return;
    };
    let (a_out, b_out) = (acme.env.out.join("a.pem"), acme.env.out.join("b.pem"));
    acme.config(&format!(
        "{}\n{}\n{}\n{}",
        acme.http_source("a", &["a.example.test"], ""),
        dns_source("b", &["b.example.test"], ""),
        target("a", &["a.example.test"], &a_out, ""),
        target("b", &["b.example.test"], &b_out, ""),
    ));
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    assert_eq!(
        Installed::read(&a_out).fp(),
        issued(&run, "a", "no certificate yet")
    );
    assert_eq!(
        Installed::read(&b_out).fp(),
        issued(&run, "b", "no certificate yet")
    );

    // Both orders were placed before either was finalized: not one after
    // the other.
    assert_two_orders_overlap(
        &acme.pebble_log(),
        "the second order was placed after the first was finalized: sequential",
    );
}

// ---------------------------------------------------------------------------
// 9. By the rules of real CAs: a test CA with ARI, Boulder's replacement
//    rules and rate limits (testsupport/src/fake_acme.rs). In process: no
//    program to install.
// ---------------------------------------------------------------------------

/// The fake CA, a test directory, and a webroot for HTTP-01 (the fake CA
/// validates nothing, but mxkeys writes and removes its token files).
struct Fake {
    ca: FakeAcme,
    env: Env,
    webroot: PathBuf,
}

impl Fake {
    fn start() -> Fake {
        let env = Env::new();
        let ca = FakeAcme::start(&env.path("fake-ca"));
        let webroot = env.path("www");
        std::fs::create_dir_all(&webroot).unwrap();
        Fake { ca, env, webroot }
    }

    /// `[acme]` at the fake CA (`extra` lines added to it), an HTTP-01
    /// webroot source "web" for `domains` with `source_extra`, and a target.
    fn config(&self, acme_extra: &str, domains: &[&str], source_extra: &str) {
        self.config_at(&self.ca, acme_extra, domains, source_extra);
    }

    fn config_at(&self, ca: &FakeAcme, acme_extra: &str, domains: &[&str], source_extra: &str) {
        self.env.write_config_raw(&format!(
            "state_dir = {state}\n\n[acme]\ndirectory = {dir}\nca_bundle = {bundle}\n{acme_extra}\n\n\
             [[source]]\ntype = \"acme\"\nname = \"web\"\ndomains = {domains}\nchallenge = \"http-01\"\nwebroot = {www}\n{source_extra}\n\n{target}",
            state = qp(&self.env.state),
            dir = q(&ca.url),
            bundle = qp(&ca.https_ca),
            domains = q_list(domains),
            www = qp(&self.webroot),
            target = target("postfix", domains, &self.out(), ""),
        ));
    }

    fn out(&self) -> PathBuf {
        self.env.out.join("chain.pem")
    }

    fn renew(&self, args: &[&str]) -> Run {
        let mut all = vec!["renew"];
        all.extend_from_slice(args);
        self.env.run(&all)
    }

    /// Runs `renew` with `args`; the run and how many orders it placed.
    fn renew_counting_orders(&self, args: &[&str]) -> (Run, usize) {
        let before = self.ca.count("POST /order");
        let run = self.renew(args);
        (run, self.ca.count("POST /order") - before)
    }

    fn dir(&self) -> PathBuf {
        self.env.state.join("acme").join("web")
    }

    fn state(&self) -> Value {
        let text = std::fs::read_to_string(self.dir().join("state.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    fn edit_state(&self, edit: impl FnOnce(&mut Value)) {
        let mut state = self.state();
        edit(&mut state);
        write(&self.dir().join("state.json"), state.to_string());
    }

    /// A run's output and the requests the CA received.
    fn context(&self, run: &Run) -> String {
        format!(
            "{}\n--- fake CA requests ---\n{}",
            run.describe(),
            self.ca.log()
        )
    }

    /// Issues the first certificate; its fingerprint.
    fn first(&self, run_args: &[&str]) -> String {
        let run = self.renew(run_args);
        assert_eq!(run.code, 0, "{}", self.context(&run));
        issued(&run, "web", "no certificate yet")
    }
}

/// The ARI identifier of the certificate in the source's bundle.
fn held_ari_id(fake: &Fake) -> String {
    let der = read_certs(&fake.dir().join("bundle.pem")).remove(0);
    instant_acme::CertificateIdentifier::try_from(&rustls_pki_types::CertificateDer::from(der))
        .unwrap()
        .to_string()
}

#[test]
fn a_refused_account_backs_off_and_the_daemon_asks_the_ca_a_handful_of_times() {
    let fake = Fake::start();
    // newAccount answers rateLimited (Retry-After 1 s: the ladder decides).
    fake.ca.set(|k| k.refuse_accounts = Some(1));
    fake.config("", &[MAIL], "");

    let t0 = unix_now();
    let run = fake.renew(&[]);
    assert_eq!(
        run.code,
        1,
        "no certificate and failing\n{}",
        fake.context(&run)
    );
    assert!(
        line(&run, "web").contains("rateLimited"),
        "{}",
        run.describe()
    );
    let state = fake.state();
    assert_eq!(state["failures"], 1, "{state}");
    let next = state["next_attempt_at"].as_i64().unwrap();
    assert!(
        next >= t0 + 60,
        "no backoff after an account failure: {state}"
    );
    // The backoff holds: the CA is not asked again.
    let asked = fake.ca.total();
    let again = fake.renew(&[]);
    assert_eq!(again.code, 1, "{}", again.describe());
    assert_eq!(fake.ca.total(), asked, "{}", fake.context(&again));

    // The daemon, from a clean state, against the same refusing CA.
    std::fs::remove_file(fake.dir().join("state.json")).unwrap();
    let before = fake.ca.count("POST /acct");
    let mut daemon = fake.env.daemon(&[]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while fake.state()["failures"] != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(fake.state()["failures"], 1, "{}", daemon.describe());
    std::thread::sleep(Duration::from_secs(20));
    daemon.assert_running();
    let asked = fake.ca.count("POST /acct") - before;
    daemon.terminate();
    assert!(
        asked <= 2,
        "{asked} newAccount requests in 20 s: a retry storm\n{}\n{}",
        daemon.describe(),
        fake.ca.log()
    );
}

#[test]
fn a_rate_limited_order_waits_for_the_retry_after_and_renew_fails_only_when_it_matters() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    fake.ca.set(|k| k.rate_limit_orders = Some(7200));
    let t0 = unix_now();
    let run = fake.renew(&[]);
    assert_eq!(run.code, 1, "{}", fake.context(&run));
    let state = fake.state();
    let next = state["next_attempt_at"].as_i64().unwrap();
    assert!(
        next >= t0 + 7200,
        "the next attempt ignores the CA's Retry-After: {state}"
    );
    let (waiting, placed) = fake.renew_counting_orders(&[]);
    assert_eq!(waiting.code, 1, "failing without a certificate");
    assert_eq!(placed, 0, "{}", fake.context(&waiting));

    // With a healthy certificate far from renewal, a failing order backs
    // off but `renew` exits 0.
    fake.ca.set(|k| k.rate_limit_orders = None);
    let fixed = fake.renew(&["--force"]);
    assert_eq!(fixed.code, 0, "{}", fake.context(&fixed));
    fake.ca.set(|k| k.rate_limit_orders = Some(60));
    let (forced, placed) = fake.renew_counting_orders(&["--force"]);
    // A rate limit is not retried without `replaces`: one request.
    assert_eq!(placed, 1, "{}", fake.ca.log());
    assert!(
        line(&forced, "web").contains("rateLimited"),
        "{}",
        forced.describe()
    );
    assert_eq!(
        forced.code,
        0,
        "healthy certificate\n{}",
        fake.context(&forced)
    );
    let backing_off = fake.renew(&[]);
    assert!(line(&backing_off, "web").contains("a previous order failed"));
    assert_eq!(backing_off.code, 0, "{}", backing_off.describe());

    // The same failure with the certificate within its renewal window: 1.
    fake.edit_state(|s| s["next_attempt_at"] = json!(0));
    std::fs::remove_file(fake.dir().join("bundle.pem")).unwrap();
    let missing = fake.renew(&[]);
    assert!(
        line(&missing, "web").contains("rateLimited"),
        "{}",
        missing.describe()
    );
    assert_eq!(missing.code, 1, "{}", missing.describe());
}

#[test]
fn a_failed_ari_fetch_is_asked_again_only_after_its_retry_after() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    fake.first(&[]);
    fake.ca.set(|k| k.fail_ari = Some(1800));
    let t0 = unix_now();
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    assert_eq!(fake.ca.count("GET /renewal-info/"), 1, "{}", fake.ca.log());
    let state = fake.state();
    let retry = state["ari_retry_at"].as_i64().unwrap_or(0);
    assert!(retry >= t0 + 1800, "{state}");
    for _ in 0..3 {
        let again = fake.renew(&[]);
        assert_eq!(again.code, 0, "{}", again.describe());
    }
    assert_eq!(
        fake.ca.count("GET /renewal-info/"),
        1,
        "ARI asked again before its Retry-After\n{}",
        fake.ca.log()
    );
}

#[test]
fn the_ari_point_is_kept_across_refetches_until_the_window_moves() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    fake.first(&[]);
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    assert!(
        run.stderr
            .contains(&format!("{}/why", fake.ca.url.trim_end_matches("/dir"))),
        "the explanationURL is not logged\n{}",
        run.describe()
    );
    let first = fake.state()["ari"].clone();
    let chosen = first["chosen"].as_i64().unwrap();
    for round in 0..3 {
        fake.edit_state(|s| s["ari"]["refetch_at"] = json!(0));
        let run = fake.renew(&[]);
        assert_eq!(run.code, 0, "{}", run.describe());
        assert_eq!(
            fake.state()["ari"]["chosen"].as_i64(),
            Some(chosen),
            "round {round}: a new point for the same window"
        );
    }
    assert_eq!(fake.ca.count("GET /renewal-info/"), 4, "{}", fake.ca.log());
    // The window moves: a point of the new one.
    fake.ca.set(|k| k.ari_window = Some((86_400, 2 * 86_400)));
    fake.edit_state(|s| s["ari"]["refetch_at"] = json!(0));
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}", run.describe());
    let ari = fake.state()["ari"].clone();
    let start = ari["window_start"].as_i64().unwrap();
    assert_ne!(start, first["window_start"].as_i64().unwrap(), "{ari}");
    let chosen = ari["chosen"].as_i64().unwrap();
    assert!((start..start + 86_400).contains(&chosen), "{ari}");
}

#[test]
fn replaces_names_only_a_certificate_of_this_account_directory_and_names() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    fake.first(&[]);
    assert_eq!(fake.ca.orders()[0].replaces, None);

    // A renewal by the same account: `replaces` names the certificate.
    let replaced = held_ari_id(&fake);
    let run = fake.renew(&["--force"]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    assert_eq!(
        fake.ca.orders()[1].replaces.as_deref(),
        Some(replaced.as_str())
    );

    // A new account (its credentials lost): no `replaces`, one order.
    std::fs::remove_dir_all(fake.env.state.join("acme").join("accounts")).unwrap();
    let (run, placed) = fake.renew_counting_orders(&["--force"]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    assert_eq!(placed, 1, "{}", fake.ca.log());
    let last = fake.ca.orders().pop().unwrap();
    assert_eq!((last.account, last.replaces), (1, None));

    // Other names altogether: no `replaces`, one order.
    fake.config("", &["smtp.example.test"], "");
    let (run, placed) = fake.renew_counting_orders(&[]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    issued(&run, "web", "the names changed");
    assert_eq!(placed, 1, "{}", fake.ca.log());
    assert_eq!(fake.ca.orders().pop().unwrap().replaces, None);
}

#[test]
fn a_replacement_left_pending_by_a_failed_order_does_not_block_the_next_renewal() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    fake.first(&[]);
    let replaced = held_ari_id(&fake);

    // The challenge cannot be published (the webroot is a file): the order
    // fails before finalizing.
    std::fs::remove_dir_all(&fake.webroot).unwrap();
    write(&fake.webroot, "not a directory");
    let run = fake.renew(&["--force"]);
    assert!(
        line(&run, "web").contains("failed"),
        "{}",
        fake.context(&run)
    );
    let abandoned = fake.ca.orders().pop().unwrap();
    assert_eq!(abandoned.replaces.as_deref(), Some(replaced.as_str()));
    assert_eq!(
        abandoned.status,
        "invalid",
        "the abandoned order's authorizations were not deactivated\n{}",
        fake.ca.log()
    );

    // Fixed: the renewal replaces the same certificate, at once.
    std::fs::remove_file(&fake.webroot).unwrap();
    std::fs::create_dir_all(&fake.webroot).unwrap();
    let (run, placed) = fake.renew_counting_orders(&["--force"]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    assert_eq!(placed, 1, "{}", fake.ca.log());
    assert_eq!(
        fake.ca.orders().pop().unwrap().replaces.as_deref(),
        Some(replaced.as_str())
    );
}

#[test]
fn an_already_replaced_certificate_is_renewed_without_replaces() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    fake.first(&[]);
    // A backup of the source, restored after a renewal: the CA holds a
    // valid replacement of the certificate mxkeys holds again.
    let bundle = std::fs::read(fake.dir().join("bundle.pem")).unwrap();
    let state = std::fs::read(fake.dir().join("state.json")).unwrap();
    let run = fake.renew(&["--force"]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    write(&fake.dir().join("bundle.pem"), &bundle);
    write(&fake.dir().join("state.json"), &state);

    let (run, placed) = fake.renew_counting_orders(&["--force"]);
    assert_eq!(
        run.code,
        0,
        "alreadyReplaced blocks the renewal\n{}",
        fake.context(&run)
    );
    assert!(run.stderr.contains("alreadyReplaced"), "{}", run.describe());
    assert_eq!(placed, 2, "{}", fake.ca.log());
    assert_eq!(fake.ca.orders().pop().unwrap().replaces, None);
}

#[test]
fn an_order_finalized_but_not_stored_is_fetched_again_not_ordered_anew() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    // Finalized, then the download fails.
    fake.ca.set(|k| k.fail_downloads = 100);
    let run = fake.renew(&[]);
    assert_eq!(run.code, 1, "{}", fake.context(&run));
    let state = fake.state();
    let url = state["pending_order"]["url"].as_str().unwrap_or_default();
    assert!(
        url.ends_with("/order/0"),
        "the order is not recorded: {state}"
    );
    assert_mode(&fake.dir().join("order-key.pem"), 0o600);
    assert_eq!(fake.ca.issued().len(), 1);

    // After the backoff, the order is fetched again and its certificate
    // taken: no new order.
    fake.ca.set(|k| k.fail_downloads = 0);
    fake.edit_state(|s| s["next_attempt_at"] = json!(0));
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    let fp = issued(&run, "web", "an order finalized before was fetched again");
    assert_eq!(fake.ca.count("POST /order"), 1, "{}", fake.ca.log());
    assert_eq!(fp, sha256_hex(&fake.ca.issued()[0].der));
    assert_eq!(Installed::read(&fake.out()).fp(), fp);
    let state = fake.state();
    assert!(state["pending_order"].is_null(), "{state}");
    assert!(!fake.dir().join("order-key.pem").exists());
    // And it is not due.
    let run = fake.renew(&[]);
    assert!(line(&run, "web").contains("not due"), "{}", run.describe());
    assert_eq!(fake.ca.count("POST /order"), 1);
}

#[test]
fn reuse_key_with_a_changed_key_type_orders_once_with_a_new_key() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "reuse_key = true");
    fake.first(&[]);
    let p256 = Installed::read(&fake.out()).public_key();
    fake.config("", &[MAIL], "reuse_key = true\nkey_type = \"ecdsa-p384\"");
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    issued(&run, "web", "the key type changed");
    let p384 = Installed::read(&fake.out());
    assert_ne!(
        p384.public_key(),
        p256,
        "the key of the old type was reused"
    );
    for _ in 0..3 {
        let run = fake.renew(&[]);
        assert!(
            line(&run, "web").contains("not due"),
            "{}",
            fake.context(&run)
        );
    }
    assert_eq!(fake.ca.count("POST /order"), 2, "{}", fake.ca.log());
    // And the kept key is reused for the next (forced) renewal.
    let run = fake.renew(&["--force"]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    assert_eq!(Installed::read(&fake.out()).public_key(), p384.public_key());
}

#[test]
fn a_change_of_profile_or_directory_orders_anew_without_replaces() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    fake.first(&[]);
    fake.config("profile = \"shortlived\"", &[MAIL], "");
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    issued(&run, "web", "the ACME profile changed");
    assert_eq!(
        fake.ca.orders().pop().unwrap().profile.as_deref(),
        Some("shortlived")
    );
    let run = fake.renew(&[]);
    assert!(line(&run, "web").contains("not due"), "{}", run.describe());

    // Another CA (staging to production): ordered there, without
    // `replaces` (a certificate it never issued).
    let other = FakeAcme::start(&fake.env.path("other-ca"));
    fake.config_at(&other, "profile = \"shortlived\"", &[MAIL], "");
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}\n{}", run.describe(), other.log());
    issued(&run, "web", "the ACME directory changed");
    assert_eq!(other.count("POST /order"), 1, "{}", other.log());
    assert_eq!(other.orders()[0].replaces, None);
    let run = fake.renew(&[]);
    assert!(line(&run, "web").contains("not due"), "{}", run.describe());
}

#[test]
fn a_certificate_valid_a_little_later_than_the_local_clock_is_kept() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    // The CA's clock is two minutes ahead.
    fake.ca.set(|k| k.not_before_offset = 120);
    let run = fake.renew(&[]);
    let fp = issued(&run, "web", "no certificate yet");
    let stored = read_certs(&fake.dir().join("bundle.pem")).remove(0);
    assert_eq!(sha256_hex(&stored), fp);
    let run = fake.renew(&[]);
    assert!(line(&run, "web").contains("not due"), "{}", run.describe());
    assert_eq!(fake.ca.count("POST /order"), 1, "{}", fake.ca.log());
}

#[test]
fn a_failing_acme_lock_backs_off_like_a_failed_order() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    // The lock cannot be opened: a directory where its file goes.
    std::fs::create_dir_all(fake.env.state.join("acme").join("lock")).unwrap();
    let t0 = unix_now();
    let run = fake.renew(&[]);
    assert_eq!(run.code, 1, "{}", fake.context(&run));
    assert!(
        line(&run, "web").contains("acme lock"),
        "{}",
        run.describe()
    );
    let state = fake.state();
    assert_eq!(state["failures"], 1, "{state}");
    assert!(
        state["next_attempt_at"].as_i64().unwrap() >= t0 + 60,
        "{state}"
    );
    let again = fake.renew(&[]);
    assert!(
        line(&again, "web").contains("a previous order failed"),
        "{}",
        again.describe()
    );
    assert_eq!(fake.ca.total(), 0, "{}", fake.ca.log());
}

#[test]
fn a_certificate_due_as_soon_as_issued_is_an_error_not_an_order_loop() {
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    // Ten-minute certificates issued nine minutes back: the lifetime rule
    // calls each one due the moment it arrives.
    fake.ca.set(|k| {
        k.lifetime = 600;
        k.not_before_offset = -540;
    });
    let run = fake.renew(&[]);
    issued(&run, "web", "no certificate yet");
    assert!(
        run.stderr.contains("still due"),
        "not reported\n{}",
        run.describe()
    );
    let state = fake.state();
    assert_eq!(state["failures"], 1, "{state}");
    assert!(
        state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("still due")),
        "{state}"
    );
    for _ in 0..3 {
        let run = fake.renew(&[]);
        assert!(!run.stdout.contains("issued"), "{}", fake.context(&run));
    }
    assert_eq!(fake.ca.count("POST /order"), 1, "{}", fake.ca.log());
}

// ---- DNS-01: own values, delegation ----

/// Runs `future` (a provider call) to its end.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// The dual ECDSA + RSA setup: two `acme` sources for the same names (a
/// wildcard among them, so two challenges of each order share
/// `_acme-challenge.example.test`), ordered at once through one provider.
/// Each order adds and removes only its own values and waits until the
/// servers' sets contain them: both succeed, and a value another client
/// (certbot, another host) placed at each challenge name beforehand is
/// still there afterwards.
#[test]
fn dns01_dual_ecdsa_and_rsa_sources_for_the_same_names_both_succeed_and_keep_a_foreign_value() {
    let Some(acme) = Acme::start(
        "dns01_dual_ecdsa_and_rsa_sources_for_the_same_names_both_succeed_and_keep_a_foreign_value",
    ) else {
        return;
    };
    let names = [MAIL, "*.example.test"];
    let challenge_names = [
        "_acme-challenge.mail.example.test",
        "_acme-challenge.example.test",
    ];
    let foreign = mxkeys_providers::RData::Txt("certbot-elsewhere-0123456789".to_owned());
    for name in challenge_names {
        block_on(mxkeys_providers::RecordStore::replace(
            &acme.bind.provider(),
            name,
            300,
            std::slice::from_ref(&foreign),
        ))
        .unwrap();
    }
    let (ec_out, rsa_out) = (acme.env.out.join("ec.pem"), acme.env.out.join("rsa.pem"));
    acme.config(&format!(
        "{}\n{}\n{}\n{}",
        dns_source("ec", &names, "key_type = \"ecdsa-p256\""),
        dns_source("rsa", &names, "key_type = \"rsa-2048\""),
        target("ec", &names, &ec_out, "key_type = \"ecdsa\""),
        target("rsa", &names, &rsa_out, "key_type = \"rsa\""),
    ));
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let ec = Installed::read(&ec_out);
    assert_eq!(ec.fp(), issued(&run, "ec", "no certificate yet"));
    assert_eq!(cert_info(&ec.leaf).key_type, "ecdsa-p256");
    ec.assert_names(&names);
    ec.assert_from_pebble(&acme, "ec");
    let rsa = Installed::read(&rsa_out);
    assert_eq!(rsa.fp(), issued(&run, "rsa", "no certificate yet"));
    assert_eq!(cert_info(&rsa.leaf).key_type, "rsa-2048");
    rsa.assert_names(&names);
    rsa.assert_from_pebble(&acme, "rsa");

    // The orders ran at once: both placed before either was finalized.
    assert_two_orders_overlap(&acme.pebble_log(), "the orders ran one after the other");

    // Only the orders' own values are gone.
    for name in challenge_names {
        assert_eq!(
            acme.bind.txt_values(name),
            vec!["certbot-elsewhere-0123456789".to_owned()],
            "{name}"
        );
    }
}

/// Starts pebble and a BIND where mxkeys' key reaches only the challenge
/// zone `delegated.test` ([`Bind::start_split`]); `example.test` holds
/// `_acme-challenge.split IN CNAME x.delegated.test.`.
fn start_split(test: &str) -> Option<Acme> {
    if !require(test) {
        return None;
    }
    let zone = format!("{ZONE}_acme-challenge.split IN CNAME x.delegated.test.\n");
    let bind = Bind::start_split(&zone)?;
    let env = Env::new();
    let pebble = Pebble::start_with_dns(&env.path("pebble"), bind.addr());
    Some(Acme { pebble, bind, env })
}

/// A challenge delegated by CNAME into a zone kept for challenges, with a
/// provider whose credentials reach only that zone: the main zone has its
/// own key (not given to mxkeys) and does not even answer mxkeys' key. The
/// CNAME is followed through public resolution (`resolver`), the value is
/// written in the challenge zone (`zone`, whose servers `nameservers`
/// are), the CA follows the CNAME, and the main zone is never written.
#[test]
fn dns01_cname_delegated_challenge_works_with_credentials_for_the_challenge_zone_only() {
    let Some(acme) = start_split(
        "dns01_cname_delegated_challenge_works_with_credentials_for_the_challenge_zone_only",
    ) else {
        return;
    };
    let dns = acme.bind.addr();
    let out = acme.env.out.join("split.pem");
    // `resolver` still belongs to `[dns.bind]`, which the header ends with.
    acme.env.write_config_raw(&format!(
        "{header}resolver = \"{dns}\"\n\n{source}\n{target}",
        header = acme.header_for_zone(dns, "delegated.test"),
        source = dns_source("split", &["split.example.test"], ""),
        target = target("web", &["split.example.test"], &out, ""),
    ));
    let serial = acme.bind.serial("example.test");
    let delegated_serial = acme.bind.serial("delegated.test");

    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let fp = issued(&run, "split", "no certificate yet");
    let installed = Installed::read(&out);
    assert_eq!(installed.fp(), fp);
    installed.assert_from_pebble(&acme, "split");

    assert!(
        acme.bind.serial("delegated.test") > delegated_serial,
        "nothing was written in the challenge zone"
    );
    assert_eq!(
        acme.bind.serial("example.test"),
        serial,
        "the main zone was written"
    );
    assert_eq!(
        acme.bind
            .short("CNAME", "_acme-challenge.split.example.test"),
        vec!["x.delegated.test.".to_owned()]
    );
    assert!(acme.bind.txt_values("x.delegated.test").is_empty());
}

// ---------------------------------------------------------------------------
// DANE: the standby key, key reuse and `dane rollover` (issue 14)
// ---------------------------------------------------------------------------

/// pebble and BIND, plus openssl (which derives a key's SubjectPublicKeyInfo
/// independently of mxkeys).
fn start_dane(test: &str) -> Option<Acme> {
    if !require_programs(test, &[NEEDS, common::servers::OPENSSL]) {
        return None;
    }
    Acme::start(test)
}

/// The DANE target `mx` for MAIL, writing `out`; `dane` adds keys to its
/// `[target.dane]` table. (The test zone is not signed: nothing here
/// publishes; these tests are about the keys.)
fn dane_target(out: &Path, dane: &str) -> String {
    format!(
        "{}[target.dane]\ndns = \"bind\"\n{dane}\n",
        target("mx", &[MAIL], out, "")
    )
}

/// The SubjectPublicKeyInfo (DER) of a private key file, as openssl derives
/// it: what a certificate for that key carries, and what `3 1 1` hashes.
#[track_caller]
fn key_spki(path: &Path) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "openssl pkey {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
fn cert_spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.public_key().raw.to_vec()
}

impl Acme {
    /// What an acme source holds (`bundle.pem`: key, leaf, chain).
    #[track_caller]
    fn bundle(&self, name: &str) -> Installed {
        Installed::read(&self.source_dir(name).join("bundle.pem"))
    }

    fn standby(&self, name: &str) -> PathBuf {
        self.source_dir(name).join("standby-key.pem")
    }

    fn rollover_request(&self, name: &str) -> PathBuf {
        self.source_dir(name).join("rollover-request")
    }

    /// The SPKI of the certificate an acme source holds (after checking it
    /// came from pebble and matches its key).
    #[track_caller]
    fn held_spki(&self, name: &str) -> Vec<u8> {
        let held = self.bundle(name);
        held.assert_from_pebble(self, name);
        cert_spki(&held.leaf)
    }
}

#[test]
fn a_dane_source_keeps_a_0600_standby_key_and_its_renewals_keep_the_key_whatever_reuse_key_says() {
    let Some(acme) = start_dane(
        "a_dane_source_keeps_a_0600_standby_key_and_its_renewals_keep_the_key_whatever_reuse_key_says",
    ) else {
        return;
    };
    let (out, plain_out) = (acme.env.out.join("mx.pem"), acme.env.out.join("web.pem"));
    acme.config(&format!(
        "{}\n{}\n{}\n{}",
        acme.http_source("mail", &[MAIL], "reuse_key = false"),
        acme.http_source("plain", &["smtp.example.test"], ""),
        dane_target(&out, ""),
        target("web", &["smtp.example.test"], &plain_out, ""),
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    issued(&first, "mail", "no certificate yet");
    let standby = acme.standby("mail");
    assert_mode(&standby, 0o600);
    let standby_bytes = std::fs::read(&standby).unwrap();
    let standby_spki = key_spki(&standby);
    let key = acme.held_spki("mail");
    assert_ne!(key, standby_spki, "the standby key is the certificate's");
    // The first certificate took the first standby key (made before the
    // order); the next one was made after. Only their public records are
    // logged, never a key.
    for (why, spki) in [
        ("there was none", &key),
        (
            "the former standby key is now the certificate's",
            &standby_spki,
        ),
    ] {
        let logged = format!(
            "acme source mail: new standby key ({why}); its record: 3 1 1 {}",
            sha256_hex(spki)
        );
        assert!(first.stderr.contains(&logged), "{}", first.describe());
    }
    assert!(
        !first.stderr.contains("PRIVATE KEY"),
        "{}",
        first.describe()
    );
    // A source serving no DANE target keeps none.
    assert!(!acme.standby("plain").exists());

    let mut fp = acme.bundle("mail").fp();
    for round in 1..=2 {
        let run = acme.renew(&["--force", "--source", "mail"]);
        assert_eq!(run.code, 0, "round {round}\n{}", acme.context(&run));
        issued(&run, "mail", "forced");
        let held = acme.bundle("mail");
        assert_ne!(held.fp(), fp, "round {round}: no new certificate");
        fp = held.fp();
        assert_eq!(
            acme.held_spki("mail"),
            key,
            "round {round}: the renewal changed the key"
        );
        assert_eq!(
            std::fs::read(&standby).unwrap(),
            standby_bytes,
            "round {round}: the standby key changed"
        );
        assert_eq!(
            acme.state_json("mail")["renewals_since_rollover"],
            round,
            "round {round}"
        );
    }
}

#[test]
fn dane_rollover_orders_with_the_standby_key_then_makes_a_new_standby_key() {
    let Some(acme) =
        start_dane("dane_rollover_orders_with_the_standby_key_then_makes_a_new_standby_key")
    else {
        return;
    };
    let (out, other_out) = (acme.env.out.join("mx.pem"), acme.env.out.join("o.pem"));
    // `other` is served by the self-signed fallback only.
    acme.config(&format!(
        "{}\n[[source]]\ntype = \"self-signed\"\n\n{}\n{}[target.dane]\ndns = \"bind\"\n",
        acme.http_source("mail", &[MAIL], ""),
        dane_target(&out, ""),
        target("other", &["b.example.test"], &other_out, ""),
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    let key = acme.held_spki("mail");
    let standby = key_spki(&acme.standby("mail"));
    let standby_pem = std::fs::read(acme.standby("mail")).unwrap();

    // A name that is no DANE target, and a DANE target no acme source
    // serves: exit 2, nothing ordered.
    for (name, why) in [
        (
            "nope",
            "no DANE target named \"nope\" (configured: mx, other)",
        ),
        ("other", "DANE target \"other\": no acme source serves it"),
    ] {
        let run = acme.env.run(&["dane", "rollover", name]);
        assert_eq!(run.code, 2, "{}", run.describe());
        assert!(run.stderr.contains(why), "{}", run.describe());
    }
    assert_eq!(requests(&acme.pebble_log(), "POST /order-plz"), 1);
    assert!(!acme.rollover_request("mail").exists());

    let run = acme.env.run(&["dane", "rollover", "mx"]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    assert!(
        run.stdout
            .contains("dane rollover mx: requested for acme source mail\n"),
        "{}",
        run.describe()
    );
    issued(&run, "mail", "a key rollover was requested");
    // The certificate carries exactly the standby key's SPKI: the record
    // published for it (3 1 1) matches what is served now.
    assert_eq!(acme.held_spki("mail"), standby, "not the standby key");
    let next = key_spki(&acme.standby("mail"));
    assert_mode(&acme.standby("mail"), 0o600);
    assert_ne!(next, standby, "no new standby key");
    assert_ne!(next, key, "the new standby key is the old key");
    assert!(!acme.rollover_request("mail").exists());
    assert_eq!(acme.state_json("mail")["renewals_since_rollover"], 0);

    // Fulfilled: not due again; renewals keep the former standby key and
    // leave the new one waiting.
    let run = acme.renew(&[]);
    assert!(line(&run, "mail").contains("not due"), "{}", run.describe());
    let run = acme.renew(&["--force"]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    issued(&run, "mail", "forced");
    assert_eq!(acme.held_spki("mail"), standby);
    assert_eq!(key_spki(&acme.standby("mail")), next);

    // As a run stopped right after storing the rollover's certificate
    // leaves it: the request still there, the standby key the one now
    // certified. The next pass settles it without ordering again.
    std::fs::write(acme.standby("mail"), &standby_pem).unwrap();
    std::fs::write(acme.rollover_request("mail"), "1\n").unwrap();
    let orders = requests(&acme.pebble_log(), "POST /order-plz");
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    assert!(line(&run, "mail").contains("not due"), "{}", run.describe());
    assert_eq!(requests(&acme.pebble_log(), "POST /order-plz"), orders);
    assert!(!acme.rollover_request("mail").exists());
    assert_eq!(acme.held_spki("mail"), standby);
    let after = key_spki(&acme.standby("mail"));
    assert!(after != standby && after != key, "no new standby key");
    assert_mode(&acme.standby("mail"), 0o600);
}

#[test]
fn key_rollover_2_rolls_to_the_standby_key_on_every_second_renewal() {
    let Some(acme) = start_dane("key_rollover_2_rolls_to_the_standby_key_on_every_second_renewal")
    else {
        return;
    };
    let out = acme.env.out.join("mx.pem");
    acme.config(&format!(
        "{}\n{}",
        acme.http_source("mail", &[MAIL], ""),
        dane_target(&out, "key_rollover = 2"),
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    let mut key = acme.held_spki("mail");
    let mut standby = key_spki(&acme.standby("mail"));
    // (renewal, rolls over)
    for (renewal, rolls) in [(1, false), (2, true), (3, false), (4, true)] {
        let run = acme.renew(&["--force"]);
        assert_eq!(run.code, 0, "renewal {renewal}\n{}", acme.context(&run));
        issued(&run, "mail", "forced");
        let now = acme.held_spki("mail");
        let next = key_spki(&acme.standby("mail"));
        if rolls {
            assert_eq!(now, standby, "renewal {renewal}: no rollover");
            assert!(next != standby && next != key, "renewal {renewal}");
        } else {
            assert_eq!(now, key, "renewal {renewal}: the key changed");
            assert_eq!(next, standby, "renewal {renewal}: the standby changed");
        }
        (key, standby) = (now, next);
    }
}

#[test]
fn a_rollover_request_killed_before_its_order_still_rolls_over_on_the_next_pass() {
    let Some(acme) =
        start_dane("a_rollover_request_killed_before_its_order_still_rolls_over_on_the_next_pass")
    else {
        return;
    };
    let out = acme.env.out.join("mx.pem");
    acme.config(&format!(
        "{}\n{}",
        acme.http_source("mail", &[MAIL], ""),
        dane_target(&out, ""),
    ));
    let first = acme.renew(&[]);
    assert_eq!(first.code, 0, "{}", acme.context(&first));
    let key = acme.held_spki("mail");
    let standby = key_spki(&acme.standby("mail"));

    // Holding the ACME lock stops `dane rollover` right after it recorded
    // the request, before its order: it is SIGKILLed there.
    let lock = std::fs::File::open(acme.env.state.join("acme").join("lock")).unwrap();
    lock.lock().unwrap();
    let mut child = acme
        .env
        .cmd(&["dane", "rollover", "mx"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let request = acme.rollover_request("mail");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !request.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    drop(lock);
    assert!(request.exists(), "the request was not recorded");
    assert_eq!(acme.held_spki("mail"), key, "ordered before the kill");

    // The next pass, not forced, rolls over at once.
    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    issued(&run, "mail", "a key rollover was requested");
    assert_eq!(acme.held_spki("mail"), standby);
    assert!(!request.exists());
    assert_ne!(key_spki(&acme.standby("mail")), standby);
}

#[test]
fn a_rollover_order_finalized_but_not_stored_is_fetched_again_and_completes_the_rollover() {
    if !require_programs(
        "a_rollover_order_finalized_but_not_stored_is_fetched_again_and_completes_the_rollover",
        &[common::servers::OPENSSL],
    ) {
        return;
    }
    let fake = Fake::start();
    fake.config("", &[MAIL], "");
    // The target `postfix` is last in the file: make it a DANE target.
    let mut text = std::fs::read_to_string(&fake.env.config).unwrap();
    text.push_str("[target.dane]\ndns = \"paste\"\n\n[dns.paste]\ntype = \"manual\"\n");
    fake.env.write_config_raw(&text);
    fake.first(&[]);
    let standby = fake.dir().join("standby-key.pem");
    let (key, next) = (
        cert_spki(&read_certs(&fake.dir().join("bundle.pem"))[0]),
        key_spki(&standby),
    );
    assert_ne!(key, next);

    // Finalized with the standby key, then the download fails.
    fake.ca.set(|k| k.fail_downloads = 100);
    let run = fake.env.run(&["dane", "rollover", "postfix"]);
    assert_eq!(run.code, 1, "{}", fake.context(&run));
    assert!(fake.dir().join("rollover-request").exists());
    assert_eq!(key_spki(&fake.dir().join("order-key.pem")), next);
    assert_eq!(fake.ca.count("POST /order"), 2, "{}", fake.ca.log());

    // Fetched again after the backoff: the rollover completes, no new order.
    fake.ca.set(|k| k.fail_downloads = 0);
    fake.edit_state(|s| s["next_attempt_at"] = json!(0));
    let run = fake.renew(&[]);
    assert_eq!(run.code, 0, "{}", fake.context(&run));
    issued(&run, "web", "an order finalized before was fetched again");
    assert_eq!(fake.ca.count("POST /order"), 2, "{}", fake.ca.log());
    assert_eq!(
        cert_spki(&read_certs(&fake.dir().join("bundle.pem"))[0]),
        next,
        "not the standby key"
    );
    assert!(!fake.dir().join("rollover-request").exists());
    let after = key_spki(&standby);
    assert!(after != next && after != key, "no new standby key");
    // Fulfilled: nothing more to order.
    let run = fake.renew(&[]);
    assert!(line(&run, "web").contains("not due"), "{}", run.describe());
}
