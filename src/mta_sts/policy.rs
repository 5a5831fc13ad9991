//! The MTA-STS policy (RFC 8461 §3.2), its canonical text, its id, and the
//! `_mta-sts.DOMAIN` TXT record that announces the id (RFC 8461 §3.1).
//!
//! Pure: text in, values out; no DNS, no files, no clock. The rule: the id
//! is derived only from the canonical form of the policy (`version`, `mode`,
//! the `mx` patterns lower-cased, sorted and deduplicated, `max_age`, each
//! line ending CRLF), as the first 128 bits of its SHA-256 in hex, so every
//! host and every version of mxkeys computes the same id for the same
//! policy without coordination, and any change of mode, MX set or max_age
//! gives another id. Reading a served body back ([`Policy::parse`]) is as
//! lenient as senders are: LF or CRLF, unknown keys ignored, required keys
//! checked.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest::{SHA256, digest};

/// The largest `max_age` RFC 8461 §3.2 allows: 31,557,600 s (one year).
pub const MAX_AGE_LIMIT: u32 = 31_557_600;

/// The largest policy body read back (RFC 8461 §3.3: senders should refuse
/// bodies over 64 KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// The longest id RFC 8461 §3.1 allows (`1*32(ALPHA / DIGIT)`).
pub const MAX_ID: usize = 32;

/// Why a policy, a pattern or a TXT record could not be read or built. One
/// line; quotes what was written (a policy holds nothing secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("MTA-STS mode {0:?}: expected \"testing\", \"enforce\" or \"none\"")]
    BadMode(String),
    #[error(
        "MTA-STS mx pattern {0:?}: expected a host name, or \"*.\" and a host name (letters, digits, '-')"
    )]
    BadPattern(String),
    #[error("MTA-STS max_age {0:?}: expected whole seconds from 0 to 31557600")]
    BadMaxAge(String),
    #[error("MTA-STS policy in mode {0}: at least one mx pattern is required")]
    NoMx(Mode),
    #[error("MTA-STS policy: version {0:?}, expected \"STSv1\"")]
    BadVersion(String),
    #[error("MTA-STS policy: the required key `{0}` is missing")]
    Missing(&'static str),
    #[error("MTA-STS policy: line {0} is not \"key: value\"")]
    BadLine(usize),
    #[error("MTA-STS policy: {0} bytes, more than the 65536 senders read")]
    TooLarge(usize),
    #[error("_mta-sts TXT record: does not start with \"v=STSv1\"")]
    BadRecordVersion,
    #[error("_mta-sts TXT record: no `id` field")]
    NoId,
    #[error("_mta-sts TXT record: id {0:?} must be 1 to 32 letters and digits")]
    BadId(String),
}

/// The canonical form of a policy given by its parts, `mx` already in
/// canonical order (lower case, sorted, without duplicates).
fn canonical_of<'a>(mode: Mode, mx: impl Iterator<Item = &'a str>, max_age: u64) -> String {
    let mut out = format!("version: STSv1\r\nmode: {mode}\r\n");
    for p in mx {
        out.push_str("mx: ");
        out.push_str(p);
        out.push_str("\r\n");
    }
    out.push_str(&format!("max_age: {max_age}\r\n"));
    out
}

/// The first 16 bytes of SHA-256 of a canonical form, in lower-case hex.
fn hash_id(canonical: &str) -> String {
    let hash = digest(&SHA256, canonical.as_bytes());
    hash.as_ref()[..MAX_ID / 2]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The id of the policy made of these parts, as [`Policy::id`] computes
/// it (`mx`: canonical patterns; a set iterates them sorted): what the
/// change planner (`super::order`) is given as its `IdOf`.
pub fn id_of(mode: Mode, mx: &std::collections::BTreeSet<String>, max_age: u64) -> String {
    hash_id(&canonical_of(mode, mx.iter().map(String::as_str), max_age))
}

/// What a sender does with a host the policy does not cover (RFC 8461 §5).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Report failures (TLS-RPT) but deliver anyway.
    Testing,
    /// Refuse to deliver to a host that fails.
    Enforce,
    /// No policy: how a domain withdraws one.
    None,
}

impl Mode {
    /// The name as written in a policy and in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Testing => "testing",
            Mode::Enforce => "enforce",
            Mode::None => "none",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = PolicyError;

    /// The exact names (senders compare them case-sensitively).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "testing" => Ok(Mode::Testing),
            "enforce" => Ok(Mode::Enforce),
            "none" => Ok(Mode::None),
            _ => Err(PolicyError::BadMode(s.to_owned())),
        }
    }
}

/// One `mx` pattern: a host name, or `*.` and a host name (which covers
/// exactly one label in its place, RFC 8461 §4.1). Lower case, no
/// trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MxPattern(String);

impl MxPattern {
    /// Parses a pattern as written (any case, one trailing dot allowed).
    pub fn parse(input: &str) -> Result<Self, PolicyError> {
        let bad = || PolicyError::BadPattern(input.to_owned());
        let name = crate::names::canonical(input.trim());
        let host = name.strip_prefix("*.").unwrap_or(&name);
        if host.is_empty() || host.len() > 253 {
            return Err(bad());
        }
        for label in host.split('.') {
            if label.is_empty()
                || label.len() > 63
                || label.starts_with('-')
                || label.ends_with('-')
                || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            {
                return Err(bad());
            }
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// Whether an MX host name matches, as senders decide (RFC 8461 §4.1):
    /// case-insensitively, a trailing dot ignored, a wildcard standing for
    /// exactly one label (`*.example.com` matches `mx.example.com`, not
    /// `example.com`, not `a.mx.example.com`).
    pub fn matches(&self, host: &str) -> bool {
        line_covers(&self.0, &crate::names::canonical(host))
    }
}

/// Whether the `mx` line `pattern` covers `host`, both already lower case
/// without a trailing dot (RFC 8461 §4.1: a `*.` wildcard stands for
/// exactly one leftmost label).
pub fn line_covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => host == pattern,
    }
}

impl fmt::Display for MxPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An MTA-STS policy. Built with [`Policy::new`] or [`Policy::parse`], so
/// `max_age` is within the limit and `mx` is sorted, deduplicated and (in
/// `testing` and `enforce`) not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    mode: Mode,
    mx: Vec<MxPattern>,
    max_age: u32,
}

impl Policy {
    /// A policy; the patterns are sorted and deduplicated. Refuses a
    /// `max_age` over [`MAX_AGE_LIMIT`] and `testing` or `enforce` without
    /// an `mx` pattern (a sender could deliver nowhere).
    pub fn new(mode: Mode, mx: Vec<MxPattern>, max_age: u32) -> Result<Self, PolicyError> {
        if max_age > MAX_AGE_LIMIT {
            return Err(PolicyError::BadMaxAge(max_age.to_string()));
        }
        let mut mx = mx;
        mx.sort();
        mx.dedup();
        if mx.is_empty() && mode != Mode::None {
            return Err(PolicyError::NoMx(mode));
        }
        Ok(Self { mode, mx, max_age })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The patterns, sorted and deduplicated.
    pub fn mx(&self) -> &[MxPattern] {
        &self.mx
    }

    pub fn max_age(&self) -> u32 {
        self.max_age
    }

    /// Whether some `mx` pattern matches an MX host name.
    pub fn covers(&self, host: &str) -> bool {
        self.mx.iter().any(|p| p.matches(host))
    }

    /// The body to serve, in canonical form: `version`, `mode`, the sorted
    /// `mx` lines, `max_age`, each line ending CRLF.
    pub fn canonical(&self) -> String {
        canonical_of(
            self.mode,
            self.mx.iter().map(MxPattern::as_str),
            u64::from(self.max_age),
        )
    }

    /// The id: the first 16 bytes of SHA-256 of [`Policy::canonical`], in
    /// lower-case hex (32 characters, all letters and digits).
    pub fn id(&self) -> String {
        hash_id(&self.canonical())
    }

    /// Reads a served body back, as a sender does: lines end in LF or
    /// CRLF, spaces around values are ignored, unknown keys are ignored,
    /// `version`, `mode` and `max_age` are required (the first of each
    /// counts), every `mx` line is a pattern.
    pub fn parse(body: &str) -> Result<Self, PolicyError> {
        if body.len() > MAX_BODY {
            return Err(PolicyError::TooLarge(body.len()));
        }
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for (i, line) in body.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let (key, value) = line.split_once(':').ok_or(PolicyError::BadLine(i + 1))?;
            let value = value.trim();
            match key.trim() {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" => {
                    mode.get_or_insert(value);
                }
                "max_age" => {
                    max_age.get_or_insert(value);
                }
                "mx" => mx.push(MxPattern::parse(value)?),
                _ => {}
            }
        }
        match version {
            None => return Err(PolicyError::Missing("version")),
            Some("STSv1") => {}
            Some(v) => return Err(PolicyError::BadVersion(v.to_owned())),
        }
        let mode: Mode = mode.ok_or(PolicyError::Missing("mode"))?.parse()?;
        let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
        let seconds = max_age
            .parse::<u32>()
            .ok()
            .filter(|_| max_age.bytes().all(|b| b.is_ascii_digit()) && max_age.len() <= 10)
            .ok_or_else(|| PolicyError::BadMaxAge(max_age.to_owned()))?;
        Policy::new(mode, mx, seconds)
    }
}

/// The name of the TXT record that announces a domain's policy id.
pub fn sts_record_name(domain: &crate::names::DnsName) -> String {
    format!("_mta-sts.{domain}")
}

/// The `_mta-sts.DOMAIN` TXT record: `v=STSv1; id=ID;` (RFC 8461 §3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    id: String,
}

impl StsRecord {
    /// A record for an id (1 to 32 letters and digits).
    pub fn new(id: &str) -> Result<Self, PolicyError> {
        if id.is_empty() || id.len() > MAX_ID || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(PolicyError::BadId(id.to_owned()));
        }
        Ok(Self { id: id.to_owned() })
    }

    /// The record announcing `policy`.
    pub fn for_policy(policy: &Policy) -> Self {
        Self { id: policy.id() }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The TXT value as published.
    pub fn render(&self) -> String {
        format!("v=STSv1; id={};", self.id)
    }

    /// Reads a TXT value: `v=STSv1` first, then fields separated by `;`
    /// with optional spaces; the `id` field is required, others (RFC 8461
    /// extensions) are ignored.
    pub fn parse(txt: &str) -> Result<Self, PolicyError> {
        let mut fields = txt.split(';').map(str::trim);
        match fields.next().and_then(|f| f.split_once('=')) {
            Some((k, v)) if k.trim() == "v" && v.trim() == "STSv1" => {}
            _ => return Err(PolicyError::BadRecordVersion),
        }
        let id = fields
            .filter_map(|f| f.split_once('='))
            .find(|(k, _)| k.trim() == "id")
            .map(|(_, v)| v.trim())
            .ok_or(PolicyError::NoId)?;
        Self::new(id)
    }
}

impl fmt::Display for StsRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(names: &[&str]) -> Vec<MxPattern> {
        names.iter().map(|n| MxPattern::parse(n).unwrap()).collect()
    }

    fn policy(mode: Mode, names: &[&str], max_age: u32) -> Policy {
        Policy::new(mode, mx(names), max_age).unwrap()
    }

    #[test]
    fn the_canonical_form_sorts_and_lowercases_the_mx_lines_and_ends_each_line_with_crlf() {
        let p = policy(
            Mode::Enforce,
            &[
                "MX2.example.com.",
                "*.example.net",
                "mx1.example.com",
                "mx2.example.com",
            ],
            604_800,
        );
        assert_eq!(
            p.canonical(),
            "version: STSv1\r\nmode: enforce\r\nmx: *.example.net\r\nmx: mx1.example.com\r\nmx: mx2.example.com\r\nmax_age: 604800\r\n"
        );
    }

    #[test]
    fn the_id_is_the_same_for_mx_lines_in_another_order_or_case() {
        let base = policy(Mode::Enforce, &["a.example.com", "b.example.com"], 86_400);
        for names in [
            &["b.example.com", "a.example.com"][..],
            &["B.EXAMPLE.COM", "a.example.com."],
            &["a.example.com", "b.example.com", "A.example.com"],
        ] {
            assert_eq!(
                policy(Mode::Enforce, names, 86_400).id(),
                base.id(),
                "{names:?}"
            );
        }
    }

    #[test]
    fn the_id_changes_with_the_mode_the_mx_set_or_max_age() {
        let base = policy(Mode::Enforce, &["a.example.com"], 86_400);
        for other in [
            policy(Mode::Testing, &["a.example.com"], 86_400),
            policy(Mode::None, &["a.example.com"], 86_400),
            policy(Mode::Enforce, &["b.example.com"], 86_400),
            policy(Mode::Enforce, &["a.example.com", "b.example.com"], 86_400),
            policy(Mode::Enforce, &["*.example.com"], 86_400),
            policy(Mode::Enforce, &["a.example.com"], 86_401),
        ] {
            assert_ne!(other.id(), base.id(), "{}", other.canonical());
        }
    }

    #[test]
    fn the_id_is_32_letters_and_digits_and_the_same_in_every_version() {
        let p = policy(Mode::Testing, &["mail.example.com"], 604_800);
        let id = p.id();
        assert_eq!(id.len(), 32);
        assert!(id.chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
        // Pinned (computed apart, with Python's hashlib): a change here
        // changes every published id, and hosts running another version
        // would announce another id for the same policy.
        assert_eq!(id, "c0a762642c8ff96deabc4e74c1e5d657");
    }

    #[test]
    fn a_policy_reads_back_from_its_canonical_form_and_from_lenient_bodies() {
        let p = policy(Mode::Enforce, &["mx.example.com", "*.example.org"], 604_800);
        assert_eq!(Policy::parse(&p.canonical()), Ok(p.clone()));
        for body in [
            "version: STSv1\nmode: enforce\nmx: mx.example.com\nmx: *.example.org\nmax_age: 604800\n",
            "version:STSv1\r\nmode:   enforce  \r\nmx: *.EXAMPLE.org\r\nfuture: x\r\nmx: mx.example.com\r\nmax_age: 604800",
            "max_age: 604800\nmx: mx.example.com\nmode: enforce\nversion: STSv1\nmx: *.example.org\n\n",
        ] {
            assert_eq!(Policy::parse(body), Ok(p.clone()), "{body:?}");
        }
        let none = Policy::parse("version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!(
            (none.mode(), none.mx(), none.max_age()),
            (Mode::None, &[][..], 0)
        );
    }

    #[test]
    fn a_policy_missing_a_key_or_with_a_bad_value_is_refused() {
        let ok = "version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 86400\n";
        assert!(Policy::parse(ok).is_ok());
        for (body, want) in [
            (
                "mode: enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::Missing("version"),
            ),
            (
                "version: STSv1\nmx: a.example\nmax_age: 1\n",
                PolicyError::Missing("mode"),
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.example\n",
                PolicyError::Missing("max_age"),
            ),
            (
                "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::BadVersion("STSv2".into()),
            ),
            (
                "version: STSv1\nmode: Enforce\nmx: a.example\nmax_age: 1\n",
                PolicyError::BadMode("Enforce".into()),
            ),
            (
                "version: STSv1\nmode: enforce\nmax_age: 1\n",
                PolicyError::NoMx(Mode::Enforce),
            ),
            (
                "version: STSv1\nmode: testing\nmx: a..example\nmax_age: 1\n",
                PolicyError::BadPattern("a..example".into()),
            ),
            (
                "version: STSv1\nmode: testing\nmx: a.example\nmax_age: 31557601\n",
                PolicyError::BadMaxAge("31557601".into()),
            ),
            (
                "version: STSv1\nmode: testing\nmx: a.example\nmax_age: +5\n",
                PolicyError::BadMaxAge("+5".into()),
            ),
            ("version: STSv1\nmode testing\n", PolicyError::BadLine(2)),
        ] {
            assert_eq!(Policy::parse(body), Err(want), "{body:?}");
        }
        let huge = format!("{ok}{}", "x: y\n".repeat(MAX_BODY / 5));
        assert!(matches!(
            Policy::parse(&huge),
            Err(PolicyError::TooLarge(_))
        ));
    }

    #[test]
    fn a_policy_over_the_max_age_limit_is_refused_at_the_limit_it_is_not() {
        assert!(Policy::new(Mode::None, vec![], MAX_AGE_LIMIT).is_ok());
        assert_eq!(
            Policy::new(Mode::None, vec![], MAX_AGE_LIMIT + 1),
            Err(PolicyError::BadMaxAge("31557601".into()))
        );
    }

    #[test]
    fn mx_patterns_are_host_names_or_one_leading_wildcard_label() {
        for (input, ok) in [
            ("mx.example.com", true),
            ("MX.Example.COM.", true),
            ("*.example.com", true),
            ("mx-1.example.com", true),
            ("", false),
            ("*", false),
            ("*.", false),
            ("a.*.example.com", false),
            ("**.example.com", false),
            ("mx_1.example.com", false),
            ("-mx.example.com", false),
            ("mx .example.com", false),
            ("a..b", false),
        ] {
            assert_eq!(MxPattern::parse(input).is_ok(), ok, "{input:?}");
        }
    }

    #[test]
    fn a_wildcard_pattern_matches_exactly_one_label_in_its_place() {
        let p = policy(Mode::Enforce, &["mail.example.com", "*.mx.example.net"], 1);
        for (host, covered) in [
            ("mail.example.com", true),
            ("MAIL.example.com.", true),
            ("a.mx.example.net", true),
            ("B.MX.example.net.", true),
            ("mx.example.net", false),
            ("a.b.mx.example.net", false),
            (".mx.example.net", false),
            ("other.example.com", false),
            ("mail.example.com.evil.test", false),
            ("", false),
        ] {
            assert_eq!(p.covers(host), covered, "{host:?}");
        }
    }

    #[test]
    fn the_sts_record_renders_and_parses_back() {
        let p = policy(Mode::Testing, &["mx.example.com"], 604_800);
        let r = StsRecord::for_policy(&p);
        assert_eq!(r.render(), format!("v=STSv1; id={};", p.id()));
        assert_eq!(StsRecord::parse(&r.render()), Ok(r.clone()));
        for txt in [
            "v=STSv1;id=20160831085700Z;",
            "v=STSv1; id=20160831085700Z",
            "  v = STSv1 ;  id = 20160831085700Z ; ext=1",
            "v=STSv1; ext=1; id=20160831085700Z;",
        ] {
            assert_eq!(
                StsRecord::parse(txt).unwrap().id(),
                "20160831085700Z",
                "{txt:?}"
            );
        }
        assert_eq!(
            sts_record_name(&crate::names::DnsName::parse("Example.COM").unwrap()),
            "_mta-sts.example.com"
        );
    }

    #[test]
    fn an_sts_record_with_a_wrong_version_or_a_bad_id_is_refused() {
        let long = format!("v=STSv1; id={};", "a".repeat(33));
        for (txt, want) in [
            ("v=STSv2; id=abc;", PolicyError::BadRecordVersion),
            ("id=abc; v=STSv1;", PolicyError::BadRecordVersion),
            ("v=TLSRPTv1; rua=mailto:a@b", PolicyError::BadRecordVersion),
            ("", PolicyError::BadRecordVersion),
            ("v=STSv1;", PolicyError::NoId),
            ("v=STSv1; id=;", PolicyError::BadId(String::new())),
            ("v=STSv1; id=ab-c;", PolicyError::BadId("ab-c".into())),
            ("v=STSv1; id=ab c;", PolicyError::BadId("ab c".into())),
            (long.as_str(), PolicyError::BadId("a".repeat(33))),
        ] {
            assert_eq!(StsRecord::parse(txt), Err(want), "{txt:?}");
        }
    }

    #[test]
    fn the_planners_id_of_the_parts_is_the_policys_id() {
        let mx: Vec<MxPattern> = ["MX2.example.com", "mx1.example.com", "*.backup.example.com"]
            .iter()
            .map(|m| MxPattern::parse(m).unwrap())
            .collect();
        let policy = Policy::new(Mode::Enforce, mx, 604_800).unwrap();
        let parts: std::collections::BTreeSet<String> =
            policy.mx().iter().map(|p| p.as_str().to_owned()).collect();
        assert_eq!(id_of(Mode::Enforce, &parts, 604_800), policy.id());
        assert_ne!(id_of(Mode::Testing, &parts, 604_800), policy.id());
    }
}
