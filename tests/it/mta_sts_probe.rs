//! What the MTA-STS pass sees (`mxkeys::mta_sts::probe`), against real
//! servers on loopback pool ports, with certificates of a test CA made at
//! test time:
//! - the policy fetch, from the built-in responder and from a Python HTTPS
//!   server (a 404, another content type, a body too large, a certificate
//!   for another name or expired): only a 200 `text/plain` body within
//!   64 KiB over a chain valid for `mta-sts.DOMAIN` under the trust given;
//! - the STARTTLS check, against Postfix serving a test-CA certificate for
//!   the MX host's name, a self-signed one, and one for another name; and
//!   by name, in a namespace of the test's own (`testsupport::dnssec`:
//!   the MX host resolves through its Unbound to Postfix on port 25);
//! - the MX set and the `_mta-sts` ids, from BIND (two servers: they must
//!   agree on the MX hosts).
//!
//! Needs python3, Postfix (root) and BIND: without them a test is skipped
//! loudly, or fails with `CI=true`.

use mxkeys_testsupport as common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bind::Bind;
use common::dnssec;
use common::servers::{Need, POSTFIX, Postfix, combined_pem, require, require_programs};
use common::*;
use mxkeys::mta_sts::probe::{
    IdView, MxView, ProbeError, Trust, fetch_policy, observe_ids, observe_mx, starttls, starttls_at,
};
use mxkeys::mta_sts::responder::{CertFiles, Responder, ResponderConfig};
use mxkeys::mta_sts::webroot::write_policies;
use mxkeys::names::DnsName;
use mxkeys_providers::propagation::Propagation;

const PYTHON: &[Need] = &[("python3", "python3")];
const DOMAIN: &str = "example.test";
const HOST: &str = "mta-sts.example.test";
const MX: &str = "mail.example.test";
const BODY: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 604800\r\n";

fn domain() -> DnsName {
    DnsName::parse(DOMAIN).unwrap()
}

/// A test CA with its root in `root.pem`, in a temp dir.
struct Bed {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    root: PathBuf,
}

impl Bed {
    fn new() -> Bed {
        Bed::of("mta-sts-probe")
    }

    /// With a CA named after `tag`.
    fn of(tag: &str) -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ca = Ca::new(tag);
        let root = dir.join("root.pem");
        write(&root, pem_block("CERTIFICATE", &ca.root_der));
        Bed {
            _tmp: tmp,
            dir,
            ca,
            root,
        }
    }

    /// Trusting the system's roots and the test CA.
    fn trust(&self) -> Trust {
        Trust::new(Some(&self.root)).unwrap()
    }

    /// Writes `leaf`'s fullchain and key as `NAME.pem` / `NAME.key`.
    fn files(&self, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
        let chain = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}.key"));
        write(&chain, leaf.fullchain_pem());
        write(&key, leaf.key_pem());
        set_mode(&key, 0o600);
        (chain, key)
    }
}

fn fetch_error(got: Result<String, ProbeError>) -> String {
    match got {
        Err(e @ ProbeError::Fetch { .. }) => e.to_string(),
        other => panic!("expected a fetch error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The policy fetch
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_policy_gets_the_responders_body_only_over_a_chain_the_trust_validates_for_mta_sts_domain()
 {
    let bed = Bed::new();
    let leaf = bed.ca.issue(&LeafSpec::new(&[HOST]));
    let (fullchain, key) = bed.files("responder", &leaf);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let files = CertFiles {
        names: vec![DnsName::parse(HOST).unwrap()],
        fullchain,
        key,
    };
    let www = bed.dir.join("www");
    let policies = HashMap::from([(DOMAIN.to_owned(), BODY.to_owned())]);
    write_policies(&www, &policies).unwrap();
    let responder = Responder::start(ResponderConfig {
        addr,
        certs: vec![files],
        policies: www,
        reports: None,
    })
    .await
    .unwrap();
    let at = responder.local_addr();

    let body = fetch_policy(at, &domain(), &bed.trust()).await.unwrap();
    assert_eq!(body, BODY);

    // The system's roots alone, or another CA's: the test CA is unknown.
    let other = Bed::of("another");
    for (how, trust) in [
        ("system roots", Trust::new(None).unwrap()),
        ("another CA", other.trust()),
    ] {
        let err = fetch_error(fetch_policy(at, &domain(), &trust).await);
        assert!(err.contains(&at.to_string()), "{how}: {err}");
        assert!(err.contains(HOST), "{how}: {err}");
        assert!(err.contains("TLS handshake failed"), "{how}: {err}");
        assert!(err.contains("UnknownIssuer"), "{how}: {err}");
    }
}

/// A Python HTTPS server on a pool port answering every GET with `status`,
/// `content_type` and `body`, over `leaf`'s chain.
struct PyServer {
    child: Child,
    addr: SocketAddr,
}

const PY_SERVER: &str = r#"
import http.server, ssl, sys
port, chain, key, status, ctype, body = sys.argv[1:7]
body = open(body, 'rb').read()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    def do_GET(self):
        self.send_response(int(status))
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
srv = http.server.HTTPServer(('127.0.0.1', int(port)), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(chain, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;

impl PyServer {
    fn start(
        bed: &Bed,
        tag: &str,
        leaf: &Leaf,
        status: u16,
        content_type: &str,
        body: &[u8],
    ) -> PyServer {
        let (chain, key) = bed.files(tag, leaf);
        let body_file = bed.dir.join(format!("{tag}.body"));
        std::fs::write(&body_file, body).unwrap();
        let script = bed.dir.join("server.py");
        write(&script, PY_SERVER);
        let port = free_port();
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .args([&chain, &key])
            .arg(status.to_string())
            .arg(content_type)
            .arg(&body_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut server = PyServer { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("the Python server exited: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the Python server never listened on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_policy_refuses_a_404_another_content_type_a_body_over_64_kib_another_name_and_an_expired_certificate()
 {
    if !require_programs("mta_sts_probe_fetch_refusals", &[PYTHON]) {
        return;
    }
    let bed = Bed::new();
    let trust = bed.trust();
    let good = bed.ca.issue(&LeafSpec::new(&[HOST]));

    // The server itself is fine: a 200 text/plain body is taken.
    let ok = PyServer::start(
        &bed,
        "ok",
        &good,
        200,
        "text/plain; charset=utf-8",
        BODY.as_bytes(),
    );
    assert_eq!(
        fetch_policy(ok.addr, &domain(), &trust).await.unwrap(),
        BODY
    );

    let big = "x".repeat(64 * 1024 + 1);
    let wrong_name = bed.ca.issue(&LeafSpec::new(&["mta-sts.other.test"]));
    let expired = bed.ca.issue(&LeafSpec::new(&[HOST]).expired());
    // (what, leaf, status, content type, body, expected in the reason)
    type Case<'a> = (&'a str, &'a Leaf, u16, &'a str, &'a [u8], &'a str);
    let cases: &[Case] = &[
        (
            "404",
            &good,
            404,
            "text/plain",
            b"not here",
            "HTTP status 404",
        ),
        (
            "html",
            &good,
            200,
            "text/html",
            BODY.as_bytes(),
            "content type text/html",
        ),
        (
            "big",
            &good,
            200,
            "text/plain",
            big.as_bytes(),
            "body larger than 65536 bytes",
        ),
        (
            "name",
            &wrong_name,
            200,
            "text/plain",
            BODY.as_bytes(),
            "certificate not valid for name \"mta-sts.example.test\"",
        ),
        (
            "expired",
            &expired,
            200,
            "text/plain",
            BODY.as_bytes(),
            "certificate expired",
        ),
    ];
    for (what, leaf, status, content_type, body, reason) in cases {
        let server = PyServer::start(&bed, what, leaf, *status, content_type, body);
        let err = fetch_error(fetch_policy(server.addr, &domain(), &trust).await);
        assert!(err.contains(&server.addr.to_string()), "{what}: {err}");
        assert!(err.contains(HOST), "{what}: {err}");
        assert!(err.contains(reason), "{what}: {err}");
    }
}

#[test]
fn a_ca_bundle_that_cannot_be_read_or_holds_no_certificate_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.pem");
    let empty = tmp.path().join("empty.pem");
    write(&empty, "no certificate here\n");
    for bundle in [&missing, &empty] {
        match Trust::new(Some(bundle)) {
            Err(e @ ProbeError::CaBundle { .. }) => {
                let text = e.to_string();
                assert!(text.contains("[mta_sts] ca_bundle"), "{text}");
                assert!(text.contains(&bundle.display().to_string()), "{text}");
            }
            Err(other) => panic!("{}: wrong error {other:?}", bundle.display()),
            Ok(_) => panic!("{}: accepted", bundle.display()),
        }
    }
}

// ---------------------------------------------------------------------------
// The STARTTLS check
// ---------------------------------------------------------------------------

/// Postfix on a pool port serving `leaf` after STARTTLS.
fn postfix(bed: &Bed, tag: &str, leaf: &Leaf) -> (Postfix, SocketAddr) {
    let dir = bed.dir.join(format!("postfix-{tag}"));
    std::fs::create_dir_all(&dir).unwrap();
    let chain = bed.dir.join(format!("{tag}-chain.pem"));
    write(&chain, combined_pem(leaf));
    set_mode(&chain, 0o600);
    let postfix = Postfix::start(&dir, &[chain.as_path()]);
    let addr = postfix.addr().parse().unwrap();
    (postfix, addr)
}

fn starttls_error(got: Result<(), ProbeError>) -> String {
    match got {
        Err(e @ ProbeError::StartTls { .. }) => e.to_string(),
        other => panic!("expected a STARTTLS error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_passes_a_test_ca_certificate_for_the_mx_name_and_fails_a_self_signed_one_or_one_for_another_name_naming_each_address()
 {
    if !require("mta_sts_probe_starttls", &[POSTFIX]) {
        return;
    }
    let bed = Bed::new();
    let trust = bed.trust();
    let (good, good_at) = postfix(&bed, "good", &bed.ca.issue(&LeafSpec::new(&[MX])));
    let (selfie, selfie_at) = postfix(&bed, "self", &self_signed_leaf(&LeafSpec::new(&[MX])));
    let (other, other_at) = postfix(
        &bed,
        "other",
        &bed.ca.issue(&LeafSpec::new(&["other.example.test"])),
    );

    starttls_at(MX, &[good_at], &trust)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", good.log()));
    // The MX name as DNS gives it (upper case, final dot) is the same host.
    starttls_at("Mail.Example.Test.", &[good_at], &trust)
        .await
        .unwrap();

    let err = starttls_error(starttls_at(MX, &[selfie_at], &trust).await);
    assert!(err.contains(MX), "{err}\n{}", selfie.log());
    assert!(err.contains(&selfie_at.to_string()), "{err}");
    assert!(err.contains("TLS handshake failed"), "{err}");
    assert!(err.contains("UnknownIssuer"), "{err}");

    let err = starttls_error(starttls_at(MX, &[other_at], &trust).await);
    assert!(
        err.contains(&other_at.to_string()),
        "{err}\n{}",
        other.log()
    );
    assert!(
        err.contains("certificate not valid for name \"mail.example.test\""),
        "{err}"
    );

    // Every address must pass: one good, one bad is a failure naming only
    // the bad one.
    let err = starttls_error(starttls_at(MX, &[good_at, other_at], &trust).await);
    assert!(err.contains(&other_at.to_string()), "{err}");
    assert!(!err.contains(&good_at.to_string()), "{err}");

    // An address where nothing listens: named, with the reason.
    let closed: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let err = starttls_error(starttls_at(MX, &[closed], &trust).await);
    assert!(err.contains(&format!("{closed}: cannot connect")), "{err}");
}

/// The inner test's full name in this binary (`mta_sts_probe::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

#[test]
fn starttls_resolves_the_mx_host_and_checks_it_on_port_25_and_a_host_without_an_address_is_an_error_naming_it()
 {
    dnssec::run_in_namespace(
        "starttls_resolves_the_mx_host_and_checks_it_on_port_25_and_a_host_without_an_address_is_an_error_naming_it",
        &inner("inside_starttls_by_name"),
        &[POSTFIX],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run inside a namespace by starttls_resolves_the_mx_host_..."]
async fn inside_starttls_by_name() {
    // mail.example.test resolves (through Unbound) to 127.0.0.1, where
    // Postfix serves the bed CA's leaf for it on port 25.
    let bed = dnssec::ReceiverBed::start("mta-sts-probe-25");
    let issuer = bed.dir.path().join("issuer.pem");
    write(&issuer, pem_block("CERTIFICATE", &bed.leaf.chain[0]));
    let trust = Trust::new(Some(&issuer)).unwrap();

    starttls(MX, &trust)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", bed.postfix.log()));

    // Without the bed's CA: refused, naming the host, 127.0.0.1:25 and why.
    let err = starttls_error(starttls(MX, &Trust::new(None).unwrap()).await);
    assert!(
        err.contains(&format!("MX host {MX}: 127.0.0.1:25: ")),
        "{err}"
    );
    assert!(err.contains("UnknownIssuer"), "{err}");

    // A name without an address.
    let err = starttls_error(starttls("nowhere.example.test", &trust).await);
    assert!(err.contains("MX host nowhere.example.test: "), "{err}");
}

// ---------------------------------------------------------------------------
// The MX set and the ids, from BIND
// ---------------------------------------------------------------------------

fn zone(mx: &str, txt: &str) -> String {
    format!(
        "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
{mx}
{txt}
"
    )
}

fn asking(servers: &[&Bind]) -> Propagation {
    Propagation {
        nameservers: Some(servers.iter().map(|b| b.addr()).collect()),
        zone: Some(DOMAIN.to_owned()),
        ..Propagation::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_mx_and_observe_ids_read_what_every_bind_serves_and_servers_disagreeing_on_the_mx_hosts_are_an_error_naming_them()
 {
    let two_mx = "@ 600 IN MX 10 MX1.Example.Test.\n@ 600 IN MX 20 mx2";
    let Some(a) = Bind::start_with_zone(&zone(
        two_mx,
        "_mta-sts 300 IN TXT \"v=STSv1; id=20260101;\"",
    )) else {
        return;
    };
    // Another server: the same MX hosts (other preferences and TTL), no
    // `_mta-sts` record.
    let Some(b) = Bind::start_with_zone(&zone("@ 60 IN MX 5 mx2\n@ 60 IN MX 5 mx1", "")) else {
        return;
    };
    let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<BTreeSet<_>>();

    assert_eq!(
        observe_mx(&asking(&[&a, &b]), &domain()).await.unwrap(),
        MxView {
            hosts: hosts(&["mx1.example.test", "mx2.example.test"]),
            ttl: 600
        }
    );
    assert_eq!(
        observe_ids(&asking(&[&a, &b]), &domain()).await.unwrap(),
        vec![
            IdView {
                server: a.addr().to_string(),
                id: Some("20260101".to_owned()),
                ttl: 300
            },
            IdView {
                server: b.addr().to_string(),
                id: None,
                ttl: 60
            },
        ]
    );

    // Two valid records at one server: no policy there (RFC 8461 §3.1).
    let Some(c) = Bind::start_with_zone(&zone(
        "@ IN MX 0 .",
        "_mta-sts IN TXT \"v=STSv1; id=one;\"\n_mta-sts IN TXT \"v=STSv1; id=two;\"",
    )) else {
        return;
    };
    let ids = observe_ids(&asking(&[&c]), &domain()).await.unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].id, None, "{ids:?}");
    // Its null MX: no hosts; and it disagrees with the others, named.
    assert_eq!(
        observe_mx(&asking(&[&c]), &domain()).await.unwrap().hosts,
        hosts(&[])
    );
    match observe_mx(&asking(&[&a, &c]), &domain()).await {
        Err(e @ ProbeError::Dns { .. }) => {
            let text = e.to_string();
            assert!(text.contains("disagree"), "{text}");
            assert!(text.contains(&a.addr().to_string()), "{text}");
            assert!(
                text.contains(&format!("{} ({}) answers no MX hosts", c.addr(), c.addr())),
                "{text}"
            );
        }
        other => panic!("expected the servers to disagree, got {other:?}"),
    }
}
