//! TLS-RPT reports (RFC 8460) read and kept as the report endpoint will:
//! bodies compressed by the real `gzip` program go through
//! `Store::receive` into a store under a temporary `state_dir`, then are
//! counted as the metrics render them. Nothing here is wired into the
//! daemon yet (issue 15): these drive the library.
//!
//! Needs gzip (Debian package `gzip`): without it a test is skipped
//! loudly, or fails with `CI=true`.

use mxkeys_testsupport as common;

use std::io::{Read, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};

use common::servers::{Need, require_programs};
use mxkeys::state::StateDir;
use mxkeys::tls_rpt::metrics;
use mxkeys::tls_rpt::report::{GZIP_TYPE, JSON_TYPE, MAX_JSON, Refusal};
use mxkeys::tls_rpt::store::{Limits, Received, Saved, Store};

const GZIP: &[Need] = &[("gzip", "gzip")];

/// A report shaped like RFC 8460 §4.4's example, from a sender of
/// example.test's mail (also posted by `tls_rpt_http`).
pub(super) const REPORT: &str = r#"{
  "organization-name": "Company-X",
  "date-range": {
    "start-datetime": "2026-11-28T00:00:00Z",
    "end-datetime": "2026-11-28T23:59:59Z"
  },
  "contact-info": "sts-reporting@company-x.example",
  "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
  "policies": [{
    "policy": {
      "policy-type": "sts",
      "policy-string": ["version: STSv1", "mode: enforce",
                        "mx: mail.example.test", "max_age: 604800"],
      "policy-domain": "example.test",
      "mx-host": "mail.example.test"
    },
    "summary": {
      "total-successful-session-count": 5326,
      "total-failure-session-count": 303
    },
    "failure-details": [{
      "result-type": "certificate-expired",
      "sending-mta-ip": "2001:db8:abcd:0012::1",
      "receiving-mx-hostname": "mail.example.test",
      "failed-session-count": 100
    }, {
      "result-type": "sts-policy-invalid",
      "sending-mta-ip": "2001:db8:abcd:0013::1",
      "receiving-mx-hostname": "mail.example.test",
      "failed-session-count": 200
    }, {
      "result-type": "tlsa-invalid",
      "sending-mta-ip": "198.51.100.62",
      "receiving-ip": "203.0.113.58",
      "receiving-mx-hostname": "mail.example.test",
      "failed-session-count": 3,
      "failure-reason-code": "X509_V_ERR_PROOF_OF_POSSESSION"
    }]
  }]
}"#;

/// `bytes` compressed by the `gzip` program.
pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-c", "-n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip starts");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("gzip runs");
    writer.join().unwrap().expect("gzip reads its input");
    assert!(out.status.success(), "gzip: {:?}", out.status);
    out.stdout
}

fn store(tmp: &Path) -> Store {
    let state = StateDir::new(tmp.join("state"));
    Store::new(state.tls_rpt_dir(), Limits::default())
}

fn metrics_of(store: &Store) -> String {
    let (reports, skipped) = store.load().unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let mut out = String::new();
    metrics::render(&metrics::aggregate(&reports), &mut out);
    out
}

#[test]
fn a_report_gzipped_by_the_gzip_program_is_stored_once_and_counted_by_organization_and_result_type()
{
    if !require_programs("tls_rpt", &[GZIP]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let body = gzip(REPORT.as_bytes());
    let Saved::New { path, .. } = store.receive(&body[..], Some(GZIP_TYPE)).unwrap() else {
        panic!("not stored")
    };
    assert_eq!(
        path,
        tmp.path()
            .join("state/tls-rpt/Company-X/5065427c-23d3-47ca-b6e0-946ea0e8c4be.json")
    );
    assert_eq!(std::fs::read(&path).unwrap(), REPORT.as_bytes());
    let want = [
        r#"mxkeys_tls_rpt_failures_total{organization="Company-X",result_type="certificate-expired"} 100"#,
        r#"mxkeys_tls_rpt_failures_total{organization="Company-X",result_type="sts-policy-invalid"} 200"#,
        r#"mxkeys_tls_rpt_failures_total{organization="Company-X",result_type="tlsa-invalid"} 3"#,
        r#"mxkeys_tls_rpt_sessions_total{organization="Company-X",result="failure"} 303"#,
        r#"mxkeys_tls_rpt_sessions_total{organization="Company-X",result="successful"} 5326"#,
    ];
    let out = metrics_of(&store);
    let series: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(series, want);
    // Sent again (senders retry), uncompressed this time: not counted twice.
    assert_eq!(
        store.receive(REPORT.as_bytes(), Some(JSON_TYPE)).unwrap(),
        Saved::Duplicate(path)
    );
    assert_eq!(metrics_of(&store), out);
}

#[test]
fn malformed_reports_are_refused_with_a_4xx_and_nothing_is_stored() {
    if !require_programs("tls_rpt", &[GZIP]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let compressed = gzip(REPORT.as_bytes());
    let edited = |from: &str, to: &str| {
        assert!(REPORT.contains(from), "{from}");
        REPORT.replacen(from, to, 1).into_bytes()
    };
    let bomb = gzip(&vec![0u8; (MAX_JSON + 1024 * 1024) as usize]);
    assert!(bomb.len() < 64 * 1024, "a small body: {}", bomb.len());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an empty body", vec![], GZIP_TYPE),
        ("not gzip", REPORT.into(), GZIP_TYPE),
        (
            "gzip of non-JSON",
            gzip(b"<html>502 Bad Gateway</html>"),
            GZIP_TYPE,
        ),
        (
            "truncated gzip",
            compressed[..compressed.len() * 2 / 3].to_vec(),
            GZIP_TYPE,
        ),
        (
            "JSON missing report-id",
            gzip(&edited("\"report-id\"", "\"id\"")),
            GZIP_TYPE,
        ),
        (
            "JSON missing a summary",
            gzip(&edited("\"summary\"", "\"totals\"")),
            GZIP_TYPE,
        ),
        (
            "a count of the wrong type",
            gzip(&edited("5326", "\"5326\"")),
            GZIP_TYPE,
        ),
        (
            "a huge count",
            gzip(&edited("303", "340282366920938463463374607431768211456")),
            GZIP_TYPE,
        ),
        ("a negative count", edited("100", "-100"), JSON_TYPE),
        ("a zip bomb", bomb, GZIP_TYPE),
        ("JSON as text/plain", REPORT.into(), "text/plain"),
    ];
    for (what, body, content_type) in cases {
        let got = store.receive(&body[..], Some(content_type));
        let Err(Received::Refused(refusal)) = got else {
            panic!("{what}: {got:?}")
        };
        assert!((400..500).contains(&refusal.status()), "{what}: {refusal}");
        assert!(store.entries().unwrap().is_empty(), "{what}: stored");
        assert!(!store.dir().exists(), "{what}: directory created");
    }
}

/// Counts what was read from the inner reader.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

#[test]
fn a_100_mb_report_streamed_from_the_gzip_program_is_cut_off_before_its_end() {
    if !require_programs("tls_rpt", &[GZIP]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    // 100 MB of zeros, compressed as they are produced, read as a body.
    let mut child = Command::new("sh")
        .args(["-c", "head -c 104857600 /dev/zero | gzip -c -1"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sh starts");
    let mut body = Counting {
        inner: child.stdout.take().unwrap(),
        read: 0,
    };
    let got = store.receive(&mut body, Some(GZIP_TYPE));
    let Err(Received::Refused(refusal)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(refusal, Refusal::TooLarge { limit: MAX_JSON });
    assert_eq!(refusal.status(), 413);
    // The rest of the body was never read: drain it to compare.
    let taken = body.read;
    let mut rest = Vec::new();
    body.inner.read_to_end(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let total = taken + rest.len() as u64;
    assert!(
        taken * 5 < total,
        "{taken} of {total} compressed bytes read before refusing"
    );
    assert!(!store.dir().exists());
}
