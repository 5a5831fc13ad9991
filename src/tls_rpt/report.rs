//! Reading one TLS-RPT report (RFC 8460) as it arrives over HTTPS: pure,
//! no files and no network. The rule: a body is either a report, decoded
//! within fixed bounds, or a typed [`Refusal`] the HTTP side turns into a
//! 4xx; nothing in between is kept.
//!
//! A report is `application/tlsrpt+gzip` (RFC 8460 §5.3) or
//! `application/tlsrpt+json`. The body is read through a bounded reader
//! ([`MAX_BODY`] bytes of body, [`MAX_JSON`] bytes once decompressed):
//! a larger body, or a small gzip that inflates past the cap (a zip bomb),
//! is refused as soon as the cap is crossed, never read or inflated whole.
//! The JSON is then read for the fields mxkeys counts (§4.4):
//! `organization-name`, `date-range`, `report-id`, and per policy its
//! `policy-type` and `policy-domain`, the summary totals and each failure
//! detail's `result-type` and `failed-session-count`. Other fields are
//! allowed and ignored; the decoded JSON is kept as it came, to be stored.

use std::fmt;
use std::io::{self, Read};

use serde::Deserialize;

/// The largest body read off the wire (compressed or not).
pub const MAX_BODY: u64 = 10 * 1024 * 1024;
/// The largest report JSON accepted (after decompression).
pub const MAX_JSON: u64 = 10 * 1024 * 1024;

/// The media type of a gzip-compressed report (RFC 8460 §6.4).
pub const GZIP_TYPE: &str = "application/tlsrpt+gzip";
/// The media type of an uncompressed report (RFC 8460 §6.5).
pub const JSON_TYPE: &str = "application/tlsrpt+json";

/// A report, read and checked: the fields mxkeys counts, and the JSON as
/// it came (what is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub organization_name: String,
    pub date_range: DateRange,
    pub report_id: String,
    pub policies: Vec<PolicyResult>,
    json: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateRange {
    pub start: String,
    pub end: String,
}

/// One `policies[]` entry: the policy applied and its sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyResult {
    /// `tlsa`, `sts` or `no-policy-found`.
    pub policy_type: String,
    pub policy_domain: String,
    pub successful_sessions: u64,
    pub failed_sessions: u64,
    pub failures: Vec<Failure>,
}

/// One `failure-details[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// `sts-policy-invalid`, `tlsa-invalid`, `certificate-expired`, ...
    pub result_type: String,
    pub sessions: u64,
}

/// Why a body is not a report: one line, never the body's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The content type is neither TLS-RPT type (the type, cut short).
    UnsupportedType(String),
    /// The body is empty.
    Empty,
    /// Said or looked like gzip but is not (bad magic, corrupt or cut-off
    /// stream: the decoder's reason).
    NotGzip(String),
    /// The body, or its decompressed JSON, crosses the cap (bytes).
    TooLarge { limit: u64 },
    /// Not JSON, or not a JSON object (serde's reason: line and column).
    NotJson(String),
    /// A required field is missing (its path, e.g. `policies[0].summary`).
    MissingField(String),
    /// A field has the wrong type or an impossible value (the reason).
    Invalid(String),
}

impl Refusal {
    /// The HTTP status to answer with: 415, 413, else 400.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::UnsupportedType(_) => 415,
            Refusal::TooLarge { .. } => 413,
            _ => 400,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnsupportedType(t) => {
                write!(f, "content type {t:?} is not {GZIP_TYPE} or {JSON_TYPE}")
            }
            Refusal::Empty => write!(f, "the report is empty"),
            Refusal::NotGzip(why) => write!(f, "the report is not valid gzip: {why}"),
            Refusal::TooLarge { limit } => {
                write!(f, "the report is larger than {limit} bytes")
            }
            Refusal::NotJson(why) => write!(f, "the report is not JSON: {why}"),
            Refusal::MissingField(path) => write!(f, "the report has no {path}"),
            Refusal::Invalid(why) => write!(f, "the report is invalid: {why}"),
        }
    }
}

impl std::error::Error for Refusal {}

impl Report {
    /// The decoded JSON as it came (what the store keeps).
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// Total successful sessions over every policy (saturating).
    pub fn successful_sessions(&self) -> u64 {
        self.policies
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.successful_sessions))
    }

    /// Total failed sessions over every policy (saturating).
    pub fn failed_sessions(&self) -> u64 {
        self.policies
            .iter()
            .fold(0u64, |n, p| n.saturating_add(p.failed_sessions))
    }
}

/// Reads a report from a body held in memory. See [`accept_from`].
pub fn accept(body: &[u8], content_type: Option<&str>) -> Result<Report, Refusal> {
    accept_from(body, content_type)
}

/// Reads a report from `body` as it streams in, reading at most
/// [`MAX_BODY`] + 1 bytes of it and inflating at most [`MAX_JSON`] + 1.
/// `content_type` picks the decoding (its parameters and case ignored);
/// without one, a body starting with the gzip magic is gzip, else JSON.
pub fn accept_from(body: impl Read, content_type: Option<&str>) -> Result<Report, Refusal> {
    let mut body = body.take(MAX_BODY + 1);
    let gzip = match content_type {
        Some(t) => match media_type(t).as_str() {
            GZIP_TYPE => Some(true),
            JSON_TYPE => Some(false),
            _ => return Err(Refusal::UnsupportedType(t.chars().take(80).collect())),
        },
        None => None,
    };
    // The first bytes decide (or check) the encoding.
    let mut head = [0u8; 2];
    let got = read_up_to(&mut body, &mut head).map_err(|e| Refusal::NotGzip(e.to_string()))?;
    if got == 0 {
        return Err(Refusal::Empty);
    }
    let magic = got == 2 && head == [0x1f, 0x8b];
    let gzip = gzip.unwrap_or(magic);
    if gzip && !magic {
        return Err(Refusal::NotGzip("no gzip header".to_owned()));
    }
    let stream = Capped {
        inner: head[..got].chain(body),
        left: MAX_BODY,
    };
    let json = if gzip {
        let mut json = Vec::new();
        flate2::read::MultiGzDecoder::new(stream)
            .take(MAX_JSON + 1)
            .read_to_end(&mut json)
            .map_err(|e| match e.kind() {
                io::ErrorKind::FileTooLarge => Refusal::TooLarge { limit: MAX_BODY },
                _ => Refusal::NotGzip(e.to_string()),
            })?;
        if json.len() as u64 > MAX_JSON {
            return Err(Refusal::TooLarge { limit: MAX_JSON });
        }
        json
    } else {
        let mut json = Vec::new();
        stream
            .take(MAX_JSON + 1)
            .read_to_end(&mut json)
            .map_err(|e| match e.kind() {
                io::ErrorKind::FileTooLarge => Refusal::TooLarge { limit: MAX_BODY },
                _ => Refusal::NotJson(e.to_string()),
            })?;
        if json.len() as u64 > MAX_JSON {
            return Err(Refusal::TooLarge { limit: MAX_JSON });
        }
        json
    };
    parse(json)
}

/// Reads a report's JSON (a stored report, or a decoded body).
pub fn parse(json: Vec<u8>) -> Result<Report, Refusal> {
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(Refusal::Empty);
    }
    let raw: RawReport = serde_json::from_slice(&json).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => Refusal::Invalid(e.to_string()),
            Category::Io | Category::Syntax | Category::Eof => Refusal::NotJson(e.to_string()),
        }
    })?;
    let organization_name = required(raw.organization_name, "organization-name")?;
    let report_id = required(raw.report_id, "report-id")?;
    let range = required(raw.date_range, "date-range")?;
    let date_range = DateRange {
        start: required(range.start_datetime, "date-range.start-datetime")?,
        end: required(range.end_datetime, "date-range.end-datetime")?,
    };
    let mut policies = Vec::new();
    for (i, p) in required(raw.policies, "policies")?.into_iter().enumerate() {
        let at = |field: &str| format!("policies[{i}].{field}");
        let policy = p
            .policy
            .ok_or_else(|| Refusal::MissingField(at("policy")))?;
        let summary = p
            .summary
            .ok_or_else(|| Refusal::MissingField(at("summary")))?;
        let mut failures = Vec::new();
        for (j, d) in p
            .failure_details
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let at = |field: &str| format!("policies[{i}].failure-details[{j}].{field}");
            failures.push(Failure {
                result_type: required(d.result_type, &at("result-type"))?,
                sessions: required(d.failed_session_count, &at("failed-session-count"))?,
            });
        }
        policies.push(PolicyResult {
            policy_type: required(policy.policy_type, &at("policy.policy-type"))?,
            policy_domain: required(policy.policy_domain, &at("policy.policy-domain"))?,
            successful_sessions: required(
                summary.total_successful_session_count,
                &at("summary.total-successful-session-count"),
            )?,
            failed_sessions: required(
                summary.total_failure_session_count,
                &at("summary.total-failure-session-count"),
            )?,
            failures,
        });
    }
    for (what, text) in [
        ("organization-name", &organization_name),
        ("report-id", &report_id),
    ] {
        if text.trim().is_empty() {
            return Err(Refusal::Invalid(format!("{what} is empty")));
        }
    }
    Ok(Report {
        organization_name,
        date_range,
        report_id,
        policies,
        json,
    })
}

fn required<T>(value: Option<T>, path: &str) -> Result<T, Refusal> {
    value.ok_or_else(|| Refusal::MissingField(path.to_owned()))
}

/// `Application/TLSRPT+gzip; charset=x` -> `application/tlsrpt+gzip`.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A reader that fails with `FileTooLarge` once more than `left` bytes
/// were asked of it, so a body over the cap is an error, not a silently
/// cut (and maybe valid-looking) prefix.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.left = 0;
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "body over the cap",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

// The JSON shapes, every field optional so a missing one is reported by
// its path; unknown fields ignored (RFC 8460 allows extensions).

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawReport {
    organization_name: Option<String>,
    date_range: Option<RawDateRange>,
    report_id: Option<String>,
    policies: Option<Vec<RawPolicyResult>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawDateRange {
    start_datetime: Option<String>,
    end_datetime: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawPolicyResult {
    policy: Option<RawPolicy>,
    summary: Option<RawSummary>,
    failure_details: Option<Vec<RawFailure>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawPolicy {
    policy_type: Option<String>,
    policy_domain: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawSummary {
    total_successful_session_count: Option<u64>,
    total_failure_session_count: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawFailure {
    result_type: Option<String>,
    failed_session_count: Option<u64>,
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// RFC 8460 §4.4's example (its multi-line string joined).
    pub(crate) const RFC_EXAMPLE: &str = r#"{
      "organization-name": "Company-X",
      "date-range": {
        "start-datetime": "2016-04-01T00:00:00Z",
        "end-datetime": "2016-04-01T23:59:59Z"
      },
      "contact-info": "sts-reporting@company-x.example",
      "report-id": "5065427c-23d3-47ca-b6e0-946ea0e8c4be",
      "policies": [{
        "policy": {
          "policy-type": "sts",
          "policy-string": ["version: STSv1","mode: testing",
                "mx: *.mail.company-y.example","max_age: 86400"],
          "policy-domain": "company-y.example",
          "mx-host": "*.mail.company-y.example"
        },
        "summary": {
          "total-successful-session-count": 5326,
          "total-failure-session-count": 303
        },
        "failure-details": [{
          "result-type": "certificate-expired",
          "sending-mta-ip": "2001:db8:abcd:0012::1",
          "receiving-mx-hostname": "mx1.mail.company-y.example",
          "failed-session-count": 100
        }, {
          "result-type": "starttls-not-supported",
          "sending-mta-ip": "2001:db8:abcd:0013::1",
          "receiving-mx-hostname": "mx2.mail.company-y.example",
          "receiving-ip": "203.0.113.56",
          "failed-session-count": 200,
          "additional-information": "https://reports.company-x.example/report_info?id=5065427c-23d3#StarttlsNotSupported"
        }, {
          "result-type": "validation-failure",
          "sending-mta-ip": "198.51.100.62",
          "receiving-ip": "203.0.113.58",
          "receiving-mx-hostname": "mx-backup.mail.company-y.example",
          "failed-session-count": 3,
          "failure-reason-code": "X509_V_ERR_PROOF_OF_POSSESSION"
        }]
      }]
    }"#;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    fn kind(r: &Result<Report, Refusal>) -> &'static str {
        match r {
            Ok(_) => "accepted",
            Err(Refusal::UnsupportedType(_)) => "UnsupportedType",
            Err(Refusal::Empty) => "Empty",
            Err(Refusal::NotGzip(_)) => "NotGzip",
            Err(Refusal::TooLarge { .. }) => "TooLarge",
            Err(Refusal::NotJson(_)) => "NotJson",
            Err(Refusal::MissingField(_)) => "MissingField",
            Err(Refusal::Invalid(_)) => "Invalid",
        }
    }

    #[test]
    fn the_rfc_example_is_read_with_its_counts_gzip_or_not() {
        let gz = gzip(RFC_EXAMPLE.as_bytes());
        for (body, ct) in [
            (RFC_EXAMPLE.as_bytes(), Some(JSON_TYPE)),
            (&gz[..], Some(GZIP_TYPE)),
            (&gz[..], Some("Application/TLSRPT+GZIP; charset=binary")),
            (&gz[..], None),
            (RFC_EXAMPLE.as_bytes(), None),
        ] {
            let r = accept(body, ct).unwrap();
            assert_eq!(r.organization_name, "Company-X");
            assert_eq!(r.report_id, "5065427c-23d3-47ca-b6e0-946ea0e8c4be");
            assert_eq!(r.date_range.end, "2016-04-01T23:59:59Z");
            assert_eq!(r.policies.len(), 1);
            let p = &r.policies[0];
            assert_eq!(
                (p.policy_type.as_str(), p.policy_domain.as_str()),
                ("sts", "company-y.example")
            );
            assert_eq!((p.successful_sessions, p.failed_sessions), (5326, 303));
            let failures: Vec<_> = p
                .failures
                .iter()
                .map(|f| (f.result_type.as_str(), f.sessions))
                .collect();
            assert_eq!(
                failures,
                [
                    ("certificate-expired", 100),
                    ("starttls-not-supported", 200),
                    ("validation-failure", 3)
                ]
            );
            assert_eq!(
                r.json(),
                RFC_EXAMPLE.as_bytes(),
                "the JSON is kept as it came"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_typed_reason() {
        let without = |field: &str| {
            let mut v: serde_json::Value = serde_json::from_str(RFC_EXAMPLE).unwrap();
            let mut at = &mut v;
            let path: Vec<&str> = field.split('.').collect();
            for p in &path[..path.len() - 1] {
                at = match p.parse::<usize>() {
                    Ok(i) => &mut at[i],
                    Err(_) => &mut at[*p],
                };
            }
            at.as_object_mut().unwrap().remove(path[path.len() - 1]);
            serde_json::to_vec(&v).unwrap()
        };
        let replaced = |from: &str, to: &str| RFC_EXAMPLE.replacen(from, to, 1).into_bytes();
        let gz = gzip(RFC_EXAMPLE.as_bytes());
        let bomb = gzip(&vec![b' '; (MAX_JSON + 1) as usize]);
        let mut trailing = gz.clone();
        trailing.extend_from_slice(b"garbage after the stream");
        let cases: Vec<(&str, Vec<u8>, Option<&str>, &str)> = vec![
            ("empty", vec![], Some(GZIP_TYPE), "Empty"),
            ("empty json", b"  \n".to_vec(), Some(JSON_TYPE), "Empty"),
            (
                "json sent as gzip",
                RFC_EXAMPLE.into(),
                Some(GZIP_TYPE),
                "NotGzip",
            ),
            ("one byte", vec![0x1f], Some(GZIP_TYPE), "NotGzip"),
            (
                "gzip of non-JSON",
                gzip(b"<html>no</html>"),
                Some(GZIP_TYPE),
                "NotJson",
            ),
            ("gzip sent as json", gz.clone(), Some(JSON_TYPE), "NotJson"),
            (
                "truncated gzip",
                gz[..gz.len() / 2].to_vec(),
                Some(GZIP_TYPE),
                "NotGzip",
            ),
            (
                "gzip missing its trailer",
                gz[..gz.len() - 4].to_vec(),
                Some(GZIP_TYPE),
                "NotGzip",
            ),
            ("garbage after gzip", trailing, Some(GZIP_TYPE), "NotGzip"),
            (
                "truncated json",
                RFC_EXAMPLE.as_bytes()[..200].to_vec(),
                Some(JSON_TYPE),
                "NotJson",
            ),
            (
                "no report-id",
                without("report-id"),
                Some(JSON_TYPE),
                "MissingField",
            ),
            (
                "no policies",
                without("policies"),
                Some(JSON_TYPE),
                "MissingField",
            ),
            (
                "no summary",
                without("policies.0.summary"),
                Some(JSON_TYPE),
                "MissingField",
            ),
            (
                "no policy-domain",
                without("policies.0.policy.policy-domain"),
                None,
                "MissingField",
            ),
            (
                "no end-datetime",
                without("date-range.end-datetime"),
                None,
                "MissingField",
            ),
            (
                "no result-type",
                without("policies.0.failure-details.1.result-type"),
                None,
                "MissingField",
            ),
            (
                "count as string",
                replaced("5326", "\"5326\""),
                None,
                "Invalid",
            ),
            (
                "a policy an array",
                replaced("\"policies\": [", "\"policies\": [[")
                    .into_iter()
                    .chain(b"]".iter().copied())
                    .collect(),
                None,
                "Invalid",
            ),
            (
                "organization a number",
                replaced("\"Company-X\"", "7"),
                None,
                "Invalid",
            ),
            (
                "huge count",
                replaced("5326", "99999999999999999999999"),
                None,
                "Invalid",
            ),
            ("negative count", replaced("5326", "-1"), None, "Invalid"),
            ("fractional count", replaced("5326", "1.5"), None, "Invalid"),
            ("exponent count", replaced("5326", "1e400"), None, "NotJson"),
            (
                "blank report-id",
                replaced("5065427c-23d3-47ca-b6e0-946ea0e8c4be", " "),
                None,
                "Invalid",
            ),
            ("an array", b"[1,2]".to_vec(), None, "Invalid"),
            ("zip bomb", bomb, Some(GZIP_TYPE), "TooLarge"),
            (
                "plain body over the cap",
                vec![b' '; (MAX_BODY + 1) as usize],
                Some(JSON_TYPE),
                "TooLarge",
            ),
            (
                "other type",
                RFC_EXAMPLE.into(),
                Some("application/json"),
                "UnsupportedType",
            ),
        ];
        for (what, body, ct, want) in cases {
            let got = accept(&body, ct);
            assert_eq!(kind(&got), want, "{what}: {got:?}");
            let status = got.unwrap_err().status();
            assert!((400..500).contains(&status), "{what}: {status}");
        }
    }

    /// A reader of `left` bytes from `inner` that counts what was taken.
    struct Counting<R> {
        inner: R,
        taken: std::rc::Rc<std::cell::Cell<u64>>,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.taken.set(self.taken.get() + n as u64);
            Ok(n)
        }
    }

    const HUNDRED_MB: u64 = 100 * 1024 * 1024;

    #[test]
    fn a_100_mb_gzip_body_of_zeros_is_cut_off_without_inflating_it_whole() {
        // The body is compressed as it is read: what the decoder pulled
        // from the 100 MB of zeros is what was inflated.
        let inflated = std::rc::Rc::new(std::cell::Cell::new(0));
        let zeros = Counting {
            inner: io::repeat(0).take(HUNDRED_MB),
            taken: inflated.clone(),
        };
        let body = flate2::read::GzEncoder::new(zeros, flate2::Compression::fast());
        let got = accept_from(body, Some(GZIP_TYPE));
        assert_eq!(got, Err(Refusal::TooLarge { limit: MAX_JSON }));
        assert!(
            inflated.get() < MAX_JSON + 2 * 1024 * 1024,
            "{} bytes of zeros read",
            inflated.get()
        );
    }

    #[test]
    fn a_100_mb_plain_body_is_refused_after_the_cap_not_read_whole() {
        let taken = std::rc::Rc::new(std::cell::Cell::new(0));
        let body = Counting {
            inner: io::repeat(b' ').take(HUNDRED_MB),
            taken: taken.clone(),
        };
        let got = accept_from(body, Some(JSON_TYPE));
        assert!(matches!(got, Err(Refusal::TooLarge { .. })), "{got:?}");
        assert!(taken.get() <= MAX_BODY + 1, "{} bytes read", taken.get());
    }

    #[test]
    fn a_gzip_body_over_the_wire_cap_is_refused_even_if_it_inflates_small() {
        // Incompressible bytes: the compressed body itself is over MAX_BODY.
        let mut noise = Vec::with_capacity((MAX_BODY + 1024) as usize);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while (noise.len() as u64) < MAX_BODY + 1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        let body = gzip(&noise);
        assert!(body.len() as u64 > MAX_BODY);
        assert!(matches!(
            accept(&body, Some(GZIP_TYPE)),
            Err(Refusal::TooLarge { .. })
        ));
    }

    #[test]
    fn refusals_say_why_in_one_line_without_the_body() {
        let secretish = "organization-name-SECRET";
        let body = format!("{{\"{secretish}\": 1");
        let why = accept(body.as_bytes(), Some(JSON_TYPE))
            .unwrap_err()
            .to_string();
        assert!(!why.contains("SECRET") && !why.contains('\n'), "{why}");
    }
}
