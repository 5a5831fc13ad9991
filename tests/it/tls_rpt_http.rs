//! The built-in responder as senders see it over HTTPS: curl, trusting
//! only the test CA, posts TLS-RPT reports (RFC 8460 §5.3) to its report
//! endpoint and fetches policies that appear as files while it runs
//! (`--resolve` stands in for DNS). Reports are compressed by the real
//! `gzip` program; the store is a temporary `state_dir`'s, read back as
//! the metrics render it.
//!
//! The 100 MB test runs the responder in a child process (this binary,
//! re-run with one ignored test selected) so its memory high-water mark
//! (`VmHWM` in `/proc/PID/status`) is the responder's alone.
//!
//! Needs curl and gzip: without them a test is skipped loudly, or fails
//! with `CI=true`.

use mxkeys_testsupport as common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::tls_rpt::{REPORT, gzip};
use common::servers::{Need, require_programs};
use common::*;
use mxkeys::mta_sts::responder::{CertFiles, POLICY_PATH, Reports, Responder, ResponderConfig};
use mxkeys::mta_sts::webroot;
use mxkeys::names::DnsName;
use mxkeys::state::StateDir;
use mxkeys::tls_rpt::metrics;
use mxkeys::tls_rpt::report::{GZIP_TYPE, JSON_TYPE, MAX_JSON};
use mxkeys::tls_rpt::store::{Limits, Store};

const NEEDS: &[Need] = &[("curl", "curl"), ("gzip", "gzip")];
const POLICY_HOST: &str = "mta-sts.example.test";
const REPORT_HOST: &str = "reports.example.test";
const REPORT_PATH: &str = "/tlsrpt";
const BODY: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 604800\r\n";

/// A test CA, its root in a file, one certificate for both names, the
/// policy directory and the report store, in a temp dir.
struct Bed {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    root: PathBuf,
}

impl Bed {
    fn new() -> Bed {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let ca = Ca::new("tls-rpt-http");
        let root = dir.join("root.pem");
        write(&root, pem_block("CERTIFICATE", &ca.root_der));
        let leaf = ca.issue(&LeafSpec::new(&[POLICY_HOST, REPORT_HOST]));
        write(&dir.join("fullchain.pem"), leaf.fullchain_pem());
        write(&dir.join("key.pem"), leaf.key_pem());
        set_mode(&dir.join("key.pem"), 0o600);
        Bed {
            _tmp: tmp,
            dir,
            root,
        }
    }

    fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    fn store(&self) -> Store {
        store_in(&self.dir)
    }

    fn config(&self, port: u16) -> ResponderConfig {
        config_in(&self.dir, port)
    }
}

fn store_in(dir: &Path) -> Store {
    Store::new(
        StateDir::new(dir.join("state")).tls_rpt_dir(),
        Limits::default(),
    )
}

/// The responder of a bed in `dir`, on `port`.
fn config_in(dir: &Path, port: u16) -> ResponderConfig {
    ResponderConfig {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        certs: vec![CertFiles {
            names: [POLICY_HOST, REPORT_HOST]
                .iter()
                .map(|n| DnsName::parse(n).unwrap())
                .collect(),
            fullchain: dir.join("fullchain.pem"),
            key: dir.join("key.pem"),
        }],
        policies: dir.join("www"),
        reports: Some(Reports {
            endpoints: vec![(REPORT_HOST.to_owned(), REPORT_PATH.to_owned())],
            store: store_in(dir),
        }),
    }
}

async fn start(bed: &Bed) -> Responder {
    Responder::start(bed.config(free_port())).await.unwrap()
}

/// What curl got: its exit code, the status and the body.
#[derive(Debug)]
struct Got {
    exit: i32,
    status: String,
    body: String,
}

/// A curl command for `https://NAME:PORT/PATH`, NAME resolving to the
/// responder, trusting only the test CA, writing the status to stdout and
/// the body to `out`.
fn curl_command(root: &Path, port: u16, name: &str, path: &str, out: &Path) -> Command {
    let mut c = curl_https(root, name, port, path, 50);
    c.arg("-o").arg(out).args(["-w", "%{http_code}"]);
    c
}

async fn run(c: Command, out: &Path) -> Got {
    let got = tokio::task::spawn_blocking(move || run_with_timeout(c))
        .await
        .unwrap();
    Got {
        exit: got.status.code().unwrap_or(-1),
        status: String::from_utf8_lossy(&got.stdout).into_owned(),
        body: std::fs::read_to_string(out).unwrap_or_default(),
    }
}

/// Posts `body` with `content_type` (none: no header) to the endpoint.
async fn post(bed: &Bed, r: &Responder, body: &[u8], content_type: Option<&str>) -> Got {
    let n = free_port();
    let file = bed.dir.join(format!("post-{n}"));
    let out = bed.dir.join(format!("reply-{n}"));
    std::fs::write(&file, body).unwrap();
    let mut c = curl_command(
        &bed.root,
        r.local_addr().port(),
        REPORT_HOST,
        REPORT_PATH,
        &out,
    );
    c.arg("--data-binary").arg(format!("@{}", file.display()));
    // curl's own default for --data-binary is a form type: replace it.
    c.arg("-H")
        .arg(format!("Content-Type: {}", content_type.unwrap_or("")));
    run(c, &out).await
}

async fn get(bed: &Bed, r: &Responder, name: &str, path: &str) -> Got {
    let out = bed.dir.join(format!("reply-{}", free_port()));
    let c = curl_command(&bed.root, r.local_addr().port(), name, path, &out);
    run(c, &out).await
}

fn metrics_of(store: &Store) -> String {
    let (reports, skipped) = store.load().unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let mut out = String::new();
    metrics::render(&metrics::aggregate(&reports), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_report_posted_over_https_is_stored_once_and_counted_in_the_metrics() {
    if !require_programs("tls_rpt_http", &[NEEDS]) {
        return;
    }
    let bed = Bed::new();
    let r = start(&bed).await;
    let store = bed.store();

    let got = post(&bed, &r, &gzip(REPORT.as_bytes()), Some(GZIP_TYPE)).await;
    assert_eq!((got.exit, got.status.as_str()), (0, "201"), "{got:?}");
    let entries = store.entries().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(std::fs::read(&entries[0].path).unwrap(), REPORT.as_bytes());
    let out = metrics_of(&store);
    let series: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        series,
        [
            r#"mxkeys_tls_rpt_failures_total{organization="Company-X",result_type="certificate-expired"} 100"#,
            r#"mxkeys_tls_rpt_failures_total{organization="Company-X",result_type="sts-policy-invalid"} 200"#,
            r#"mxkeys_tls_rpt_failures_total{organization="Company-X",result_type="tlsa-invalid"} 3"#,
            r#"mxkeys_tls_rpt_sessions_total{organization="Company-X",result="failure"} 303"#,
            r#"mxkeys_tls_rpt_sessions_total{organization="Company-X",result="successful"} 5326"#,
        ]
    );

    // Sent again, uncompressed (senders retry): 200, not counted twice.
    let again = post(&bed, &r, REPORT.as_bytes(), Some(JSON_TYPE)).await;
    assert_eq!((again.exit, again.status.as_str()), (0, "200"), "{again:?}");
    assert_eq!(store.entries().unwrap().len(), 1);
    assert_eq!(metrics_of(&store), out);

    // A large report within the cap (9 MB of JSON), streamed chunked as
    // it is read: stored.
    let large = REPORT.replace("5065427c", "large-5065427c").replace(
        "\"contact-info\"",
        &format!(
            "\"padding\": \"{}\",\n  \"contact-info\"",
            "x".repeat(9 << 20)
        ),
    );
    let file = bed.dir.join("large.json");
    std::fs::write(&file, &large).unwrap();
    let reply = bed.dir.join("reply-large");
    let mut c = curl_command(
        &bed.root,
        r.local_addr().port(),
        REPORT_HOST,
        REPORT_PATH,
        &reply,
    );
    c.args([
        "-X",
        "POST",
        "-H",
        &format!("Content-Type: {JSON_TYPE}"),
        "-T",
    ])
    .arg(&file);
    c.args(["-H", "Transfer-Encoding: chunked"]);
    let got = run(c, &reply).await;
    assert_eq!((got.exit, got.status.as_str()), (0, "201"), "{got:?}");
    assert_eq!(store.entries().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_malformed_reports_posted_over_https_each_get_a_4xx_and_nothing_is_stored() {
    if !require_programs("tls_rpt_http", &[NEEDS]) {
        return;
    }
    let bed = Bed::new();
    let r = start(&bed).await;
    let store = bed.store();
    let compressed = gzip(REPORT.as_bytes());
    let edited = |from: &str, to: &str| {
        assert!(REPORT.contains(from), "{from}");
        REPORT.replacen(from, to, 1).into_bytes()
    };
    let bomb = gzip(&vec![b' '; (MAX_JSON + 1024 * 1024) as usize]);
    let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
        ("an empty body", vec![], Some(GZIP_TYPE), "400"),
        ("not gzip", REPORT.into(), Some(GZIP_TYPE), "400"),
        (
            "gzip of non-JSON",
            gzip(b"<html>502 Bad Gateway</html>"),
            Some(GZIP_TYPE),
            "400",
        ),
        (
            "truncated gzip",
            compressed[..compressed.len() * 2 / 3].to_vec(),
            Some(GZIP_TYPE),
            "400",
        ),
        (
            "JSON that is not RFC 8460 (no report-id)",
            gzip(&edited("\"report-id\"", "\"id\"")),
            Some(GZIP_TYPE),
            "400",
        ),
        (
            "a count of the wrong type",
            edited("5326", "\"5326\""),
            Some(JSON_TYPE),
            "400",
        ),
        (
            "a negative count",
            gzip(&edited("100", "-100")),
            Some(GZIP_TYPE),
            "400",
        ),
        ("a zip bomb", bomb, Some(GZIP_TYPE), "413"),
        (
            "JSON as text/plain",
            REPORT.into(),
            Some("text/plain"),
            "415",
        ),
        (
            "gzip as a form",
            compressed.clone(),
            Some("application/x-www-form-urlencoded"),
            "415",
        ),
        (
            "gzip labelled JSON",
            compressed.clone(),
            Some(JSON_TYPE),
            "400",
        ),
    ];
    assert!(cases.len() >= 10);
    for (what, body, content_type, want) in cases {
        let got = post(&bed, &r, &body, content_type).await;
        assert_eq!(
            (got.exit, got.status.as_str()),
            (0, want),
            "{what}: {got:?}"
        );
        assert!(store.entries().unwrap().is_empty(), "{what}: stored");
        assert!(!store.dir().exists(), "{what}: directory created");
    }
    // The endpoint takes nothing but POST; the policy path no POST, and
    // the endpoint's path is no endpoint under another host.
    let got = get(&bed, &r, REPORT_HOST, REPORT_PATH).await;
    assert_eq!(got.status, "405", "{got:?}");
    webroot::write_policies(
        &bed.www(),
        &HashMap::from([("example.test".to_owned(), BODY.to_owned())]),
    )
    .unwrap();
    for (path, want) in [(POLICY_PATH, "405"), (REPORT_PATH, "404")] {
        let out = bed.dir.join(format!("reply-{}", free_port()));
        let mut c = curl_command(&bed.root, r.local_addr().port(), POLICY_HOST, path, &out);
        c.args([
            "-H",
            &format!("Content-Type: {JSON_TYPE}"),
            "--data-binary",
            REPORT,
        ]);
        let got = run(c, &out).await;
        assert_eq!(
            (got.exit, got.status.as_str()),
            (0, want),
            "{path}: {got:?}"
        );
    }
    assert!(!store.dir().exists());
}

/// `VmHWM` (peak resident memory) of process `pid`, in kB.
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// The variable naming the inner test's bed directory.
const BED_VAR: &str = "MXKEYS_TEST_TLS_RPT_BED";

/// The inner test's full name in this binary.
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

/// Kills the child (ours, by its pid) if the test ends early.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_100_mb_report_is_cut_off_with_413_and_the_responders_memory_stays_bounded() {
    if !require_programs("tls_rpt_http", &[NEEDS]) {
        return;
    }
    let bed = Bed::new();
    let port = free_port();
    write(&bed.dir.join("port"), port.to_string());
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            &inner("inside_a_responder_process"),
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(BED_VAR, &bed.dir)
        .stdin(Stdio::null())
        .spawn()
        .expect("the test binary starts");
    let child = Reaped(child);
    let pid = child.0.id();
    let ready = bed.dir.join("ready");
    for _ in 0..600 {
        if ready.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready.exists(), "the responder process did not start");
    let before = vm_hwm_kb(pid);

    // Streamed from /dev/zero as curl reads it: sent chunked, so the
    // responder learns the size only by reading (-T - streams stdin;
    // --data-binary @- would read it all first and announce the length).
    let hundred_mb = 100 * 1024 * 1024;
    let streamed = |how: &str| {
        let out = bed.dir.join(format!("reply-{}", free_port()));
        let curl = curl_command(&bed.root, port, REPORT_HOST, REPORT_PATH, &out);
        let args: Vec<String> = curl
            .get_args()
            .map(|a| format!("'{}'", a.to_string_lossy()))
            .collect();
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "head -c {hundred_mb} /dev/zero | curl {} -H 'Content-Type: {GZIP_TYPE}' {how}",
            args.join(" ")
        ));
        let got = run_with_timeout(c);
        (
            String::from_utf8_lossy(&got.stdout).into_owned(),
            String::from_utf8_lossy(&got.stderr).into_owned(),
        )
    };
    let (status, stderr) = streamed("-X POST -T -");
    assert_eq!(status, "413", "{stderr}");
    // Announced: refused before a byte of the body is read.
    let (status, stderr) = streamed("--data-binary @-");
    assert_eq!(status, "413", "{stderr}");

    let after = vm_hwm_kb(pid);
    eprintln!("responder VmHWM: {before} kB before, {after} kB after two 100 MB bodies");
    assert!(
        after.saturating_sub(before) < 64 * 1024,
        "the responder's peak memory grew from {before} kB to {after} kB"
    );
    assert!(!bed.store().dir().exists(), "something was stored");
    // Still serving: a report after the refusals is stored.
    let report = bed.dir.join("report.gz");
    std::fs::write(&report, gzip(REPORT.as_bytes())).unwrap();
    let out = bed.dir.join("reply-report");
    let mut c = curl_command(&bed.root, port, REPORT_HOST, REPORT_PATH, &out);
    c.args(["-H", &format!("Content-Type: {GZIP_TYPE}"), "--data-binary"])
        .arg(format!("@{}", report.display()));
    let got = run_with_timeout(c);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "201", "{got:?}");
    assert_eq!(bed.store().entries().unwrap().len(), 1);
    write(&bed.dir.join("stop"), "");
    let mut child = child;
    for _ in 0..300 {
        if child.0.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.0.try_wait().unwrap();
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
#[ignore = "run in a child process by a_100_mb_report_is_cut_off_with_413_..."]
fn inside_a_responder_process() {
    let dir = PathBuf::from(std::env::var_os(BED_VAR).expect("run by its outer test"));
    let port: u16 = std::fs::read_to_string(dir.join("port"))
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _r = rt
        .block_on(Responder::start(config_in(&dir, port)))
        .unwrap();
    write(&dir.join("ready"), "");
    for _ in 0..1200 {
        if dir.join("stop").exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never told to stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_written_while_the_responder_runs_is_served_by_the_next_request() {
    if !require_programs("tls_rpt_http", &[NEEDS]) {
        return;
    }
    let bed = Bed::new();
    let r = start(&bed).await;
    // No file yet: no certificate for the name, the handshake fails
    // (curl's 35).
    let none = get(&bed, &r, POLICY_HOST, POLICY_PATH).await;
    assert_eq!(none.exit, 35, "{none:?}");

    webroot::write_policies(
        &bed.www(),
        &HashMap::from([("example.test".to_owned(), BODY.to_owned())]),
    )
    .unwrap();
    let got = get(&bed, &r, POLICY_HOST, POLICY_PATH).await;
    assert_eq!((got.exit, got.status.as_str()), (0, "200"), "{got:?}");
    assert_eq!(got.body, BODY);

    // Replaced: the next request gets the new body.
    let testing = BODY.replace("enforce", "testing");
    webroot::write_policies(
        &bed.www(),
        &HashMap::from([("example.test".to_owned(), testing.clone())]),
    )
    .unwrap();
    let got = get(&bed, &r, POLICY_HOST, POLICY_PATH).await;
    assert_eq!(got.body, testing, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_as_the_policy_file_is_not_followed() {
    if !require_programs("tls_rpt_http", &[NEEDS]) {
        return;
    }
    let bed = Bed::new();
    let r = start(&bed).await;
    let secret = bed.dir.join("secret.txt");
    write(&secret, "version: STSv1\r\nmode: enforce\r\nsecret: 1\r\n");
    let file = webroot::root_of(&bed.www(), "example.test")
        .unwrap()
        .join(webroot::POLICY_FILE);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(&secret, &file).unwrap();

    let got = get(&bed, &r, POLICY_HOST, POLICY_PATH).await;
    assert_eq!(got.exit, 35, "a policy was seen: {got:?}");
    assert!(!got.body.contains("secret"), "{got:?}");

    // The same file as a regular file: served.
    std::fs::remove_file(&file).unwrap();
    std::fs::copy(&secret, &file).unwrap();
    let got = get(&bed, &r, POLICY_HOST, POLICY_PATH).await;
    assert_eq!((got.exit, got.status.as_str()), (0, "200"), "{got:?}");
    assert!(got.body.contains("secret"), "{got:?}");
}
