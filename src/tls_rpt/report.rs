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
            Refusal::UnsupportedType(t) => write!(
                f,
                "content type {t:?} is not {GZIP_TYPE} or {JSON_TYPE}"
            ),
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
        let policy = p.policy.ok_or_else(|| Refusal::MissingField(at("policy")))?;
        let summary = p
            .summary
            .ok_or_else(|| Refusal::MissingField(at("summary")))?;
        let mut failures = Vec::new();
        for (j, d) in p.failure_details.unwrap_or_default().into_iter().enumerate() {
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
