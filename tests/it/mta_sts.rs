//! The built-in MTA-STS responder (`mxkeys::mta_sts::responder`) as
//! senders see it: curl, trusting only the test CA, fetches
//! `https://mta-sts.example.test/.well-known/mta-sts.txt` from it on a
//! loopback port (`--resolve` stands in for DNS), picking the certificate
//! by SNI. Certificates are generated at test time and read from files,
//! as the responder reads the files another part installs; policies are
//! files in the webroot layout, as the MTA-STS pass writes them.
//!
//! `postfix-mta-sts-resolver`'s `mta-sts-query` fetches the policy as a
//! Postfix sender's resolver does: the `_mta-sts` TXT record and the
//! `mta-sts.example.test` address from BIND (through the validating
//! resolver of `testsupport::dnssec`, in a namespace of the test's own),
//! then the body over HTTPS on port 443 from the responder.
//!
//! Needs curl (and for the resolver's test root, BIND, Unbound and
//! postfix-mta-sts-resolver): without them a test is skipped loudly, or
//! fails with `CI=true`.

use mxkeys_testsupport as common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::dnssec::{self, SignedZone};
use common::servers::{Need, output_within, require_programs};
use common::*;
use mxkeys::mta_sts::responder::{CertFiles, POLICY_PATH, Responder, ResponderConfig};
use mxkeys::mta_sts::webroot;
use mxkeys::names::DnsName;

const CURL: &[Need] = &[("curl", "curl")];
const HOST: &str = "mta-sts.example.test";
const BODY: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 604800\r\n";

/// A test CA, its root in a file, and a responder's files in a temp dir.
struct Bed {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    root: PathBuf,
}

impl Bed {
    fn new() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ca = Ca::new("mta-sts");
        let root = dir.join("root.pem");
        write(&root, pem_block("CERTIFICATE", &ca.root_der));
        Bed {
            _tmp: tmp,
            dir,
            ca,
            root,
        }
    }

    /// Where the responder reads its policies (webroot layout).
    fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    /// Writes these policies (domain, body) as the pass does; a domain
    /// without one has its file removed.
    fn policies(&self, policies: &[(&str, &str)], removed: &[&str]) {
        webroot::write_policies(&self.www(), &policy_map(policies)).unwrap();
        for d in removed {
            let file = webroot::root_of(&self.www(), d)
                .unwrap()
                .join(webroot::POLICY_FILE);
            let _ = std::fs::remove_file(file);
        }
    }

    fn config(&self, addr: SocketAddr, names: &[&str]) -> ResponderConfig {
        ResponderConfig {
            addr,
            certs: vec![self.files(names)],
            policies: self.www(),
            reports: None,
        }
    }

    fn files(&self, names: &[&str]) -> CertFiles {
        CertFiles {
            names: names.iter().map(|n| DnsName::parse(n).unwrap()).collect(),
            fullchain: self.dir.join("fullchain.pem"),
            key: self.dir.join("key.pem"),
        }
    }

    /// Installs `leaf` as the files of [`Bed::files`] the way the install
    /// code does: each file written aside and renamed into place.
    fn install(&self, leaf: &Leaf) {
        replace(&self.dir.join("fullchain.pem"), &leaf.fullchain_pem());
        replace(&self.dir.join("key.pem"), &leaf.key_pem());
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    write(&tmp, text);
    set_mode(&tmp, 0o600);
    std::fs::rename(&tmp, path).unwrap();
}

async fn start(bed: &Bed, names: &[&str], policies: &[(&str, &str)]) -> Responder {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    bed.policies(policies, &[]);
    Responder::start(bed.config(addr, names)).await.unwrap()
}

fn policy_map(policies: &[(&str, &str)]) -> HashMap<String, String> {
    policies
        .iter()
        .map(|(d, b)| ((*d).to_owned(), (*b).to_owned()))
        .collect()
}

/// What curl got: its exit code, the status, content type, body and the
/// served certificates (DER, leaf first).
#[derive(Debug)]
struct Fetched {
    exit: i32,
    status: String,
    content_type: String,
    body: String,
    /// SHA-256 of each served certificate, leaf first.
    certs: Vec<String>,
    stderr: String,
}

/// Fetches `https://NAME:PORT/PATH` with curl, NAME resolving to the
/// responder, trusting only the test CA; `extra` are more curl arguments.
async fn curl(bed: &Bed, r: &Responder, name: &str, path: &str, extra: &[&str]) -> Fetched {
    let port = r.local_addr().port();
    let body_file = bed.dir.join(format!("body-{}", free_port()));
    let mut c = curl_https(&bed.root, name, port, path, 20);
    c.arg("-o")
        .arg(&body_file)
        .args(["-w", "%{http_code}\n%{content_type}\n%{certs}"])
        .args(extra);
    let out = tokio::task::spawn_blocking(move || run_with_timeout(c))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = stdout.splitn(3, '\n');
    let status = lines.next().unwrap_or_default().to_owned();
    let content_type = lines.next().unwrap_or_default().to_owned();
    let certs = pem_blocks(lines.next().unwrap_or_default())
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| sha256_hex(&der))
        .collect();
    Fetched {
        exit: out.status.code().unwrap_or(-1),
        status,
        content_type,
        body: std::fs::read_to_string(&body_file).unwrap_or_default(),
        certs,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_trusting_the_test_ca_fetches_the_policy_of_mta_sts_example_test_by_sni() {
    if !require_programs("mta_sts_fetch", &[CURL]) {
        return;
    }
    let bed = Bed::new();
    let leaf = bed.ca.issue(&LeafSpec::new(&[HOST]));
    bed.install(&leaf);
    let r = start(&bed, &[HOST], &[("example.test", BODY)]).await;

    let got = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!(got.exit, 0, "{got:?}");
    assert_eq!(got.status, "200", "{got:?}");
    assert_eq!(got.content_type, "text/plain", "{got:?}");
    assert_eq!(got.body, BODY);
    assert_eq!(got.certs.first(), Some(&leaf.fp()), "{got:?}");

    // HEAD: the headers, no body.
    let head = curl(&bed, &r, HOST, POLICY_PATH, &["--head"]).await;
    assert_eq!((head.exit, head.status.as_str()), (0, "200"), "{head:?}");
    assert!(
        head.body
            .contains(&format!("content-length: {}", BODY.len())),
        "{head:?}"
    );
    assert!(!head.body.contains("STSv1"), "{head:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_sni_path_or_host_gets_no_policy() {
    if !require_programs("mta_sts_unknown", &[CURL]) {
        return;
    }
    let bed = Bed::new();
    // One certificate that would cover both names: only the policy decides.
    let leaf = bed.ca.issue(&LeafSpec::new(&[HOST, "mta-sts.other.test"]));
    bed.install(&leaf);
    let r = start(
        &bed,
        &[HOST, "mta-sts.other.test"],
        &[("example.test", BODY)],
    )
    .await;

    // A name with no policy: no certificate, the handshake fails.
    let other = curl(&bed, &r, "mta-sts.other.test", POLICY_PATH, &[]).await;
    // curl's 35: the TLS handshake failed.
    assert_eq!(other.exit, 35, "{}", other.stderr);
    assert!(other.body.is_empty() && other.certs.is_empty(), "{other:?}");

    // Another path on the right name: 404.
    let path = curl(&bed, &r, HOST, "/.well-known/acme-challenge/x", &[]).await;
    assert_eq!((path.exit, path.status.as_str()), (0, "404"), "{path:?}");
    assert!(!path.body.contains("STSv1"), "{path:?}");

    // A Host header naming another host than the SNI: 421.
    let host = curl(
        &bed,
        &r,
        HOST,
        POLICY_PATH,
        &["-H", "Host: mta-sts.other.test"],
    )
    .await;
    assert_eq!((host.exit, host.status.as_str()), (0, "421"), "{host:?}");
    assert!(!host.body.contains("STSv1"), "{host:?}");

    // Policy files changed at run time: the new body, then none at all.
    let testing = BODY.replace("enforce", "testing");
    bed.policies(&[("example.test", &testing)], &[]);
    let swapped = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!(swapped.body, testing, "{swapped:?}");
    bed.policies(&[], &["example.test"]);
    let gone = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!(gone.exit, 35, "{}", gone.stderr);
    assert!(gone.body.is_empty(), "{gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_file_is_served_by_the_next_handshake_without_restart() {
    if !require_programs("mta_sts_renewal", &[CURL]) {
        return;
    }
    let bed = Bed::new();
    let first = bed.ca.issue(&LeafSpec::new(&[HOST]));
    bed.install(&first);
    let r = start(&bed, &[HOST], &[("example.test", BODY)]).await;
    let got = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!(got.certs.first(), Some(&first.fp()), "{got:?}");

    // Renewed with a new key: the next handshake serves it.
    let renewed = bed.ca.issue(&LeafSpec::new(&[HOST]));
    bed.install(&renewed);
    let got = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!((got.exit, got.body.as_str()), (0, BODY), "{got:?}");
    assert_eq!(got.certs.first(), Some(&renewed.fp()), "{got:?}");

    // A pair that does not belong together (a new certificate, the old
    // key still in place) is refused: the last good one stays served.
    let half = bed.ca.issue(&LeafSpec::new(&[HOST]));
    replace(&bed.dir.join("fullchain.pem"), &half.fullchain_pem());
    let got = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!(got.certs.first(), Some(&renewed.fp()), "{got:?}");
    let problems = r.reload();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let problem = problems[0].to_string();
    assert!(
        problem.contains("key.pem") && problem.contains("does not match"),
        "{problem}"
    );
    assert!(!problem.contains("PRIVATE"), "{problem}");
    // Its key arrives: served at once.
    replace(&bed.dir.join("key.pem"), &half.key_pem());
    let got = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!(got.certs.first(), Some(&half.fp()), "{got:?}");

    // An expired renewal is refused too.
    let expired = bed.ca.issue(&LeafSpec::new(&[HOST]).expired());
    bed.install(&expired);
    let got = curl(&bed, &r, HOST, POLICY_PATH, &[]).await;
    assert_eq!(got.certs.first(), Some(&half.fp()), "{got:?}");
}

const MTA_STS_QUERY: &[Need] = &[("mta-sts-query", "postfix-mta-sts-resolver")];

/// The inner test's full name in this binary (`mta_sts::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

#[test]
fn mta_sts_query_fetches_the_policy_from_the_responder_through_the_test_dns() {
    dnssec::run_in_namespace(
        "mta_sts_query_fetches_the_policy_from_the_responder_through_the_test_dns",
        &inner("inside_mta_sts_query"),
        &[MTA_STS_QUERY],
    );
}

#[test]
#[ignore = "run inside a namespace by mta_sts_query_fetches_the_policy_from_the_responder_..."]
fn inside_mta_sts_query() {
    dnssec::assert_in_namespace();
    let bed = Bed::new();
    let leaf = bed.ca.issue(&LeafSpec::new(&[HOST]));
    bed.install(&leaf);
    let _zone = SignedZone::start(
        &bed.dir.join("dns"),
        "mta-sts A 127.0.0.1\n_mta-sts TXT \"v=STSv1; id=20261129T2300\"\n",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr: SocketAddr = "127.0.0.1:443".parse().unwrap();
    bed.policies(&[("example.test", BODY)], &[]);
    let _r = rt
        .block_on(Responder::start(bed.config(addr, &[HOST])))
        .unwrap();

    let query = |domain: &str| {
        let mut c = Command::new("mta-sts-query");
        c.arg(domain).env("SSL_CERT_FILE", &bed.root);
        common::mtasts::clear_proxies(&mut c);
        let out = output_within(c, std::time::Duration::from_secs(60)).unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let got = query("example.test");
    assert!(got.contains("VALID"), "{got}");
    assert!(got.contains("20261129T2300"), "{got}");
    assert!(
        got.contains("enforce") && got.contains("mail.example.test"),
        "{got}"
    );

    // The TXT record still names a policy, but the responder no longer
    // holds it: the resolver gets none.
    bed.policies(&[], &["example.test"]);
    let gone = query("example.test");
    assert!(gone.contains("<STSFetchResult.FETCH_ERROR: 2>"), "{gone}");
}
