//! TLS-RPT counts for the daemon's metrics and `status`: pure. The rule:
//! the counts are sums over the stored reports ([`aggregate`]), by
//! reporting organization, and rendered as Prometheus text ([`render`])
//! with every label value escaped (they come from senders).
//!
//! Series:
//! - `mxkeys_tls_rpt_failures_total{organization,result_type}`: failed
//!   sessions by `failure-details[].result-type`;
//! - `mxkeys_tls_rpt_sessions_total{organization,result}`: sessions by
//!   `result` = `successful` | `failure` (the summary totals).
//!
//! A `result_type` outside RFC 8460's registry ([`RESULT_TYPES`]) is
//! counted as `other`: a sender cannot make a series per made-up type.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::Report;
use crate::daemon::metrics::labels;

/// The result types of RFC 8460 §4.3 (the IANA registry's initial
/// content); any other is counted as `other`.
pub const RESULT_TYPES: &[&str] = &[
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "dane-required",
    "sts-policy-fetch-error",
    "sts-policy-invalid",
    "sts-webpki-invalid",
];

/// The sums over a set of reports. Counts saturate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// (organization, result-type) -> failed sessions.
    pub failures: BTreeMap<(String, String), u64>,
    /// (organization, `successful` | `failure`) -> sessions.
    pub sessions: BTreeMap<(String, &'static str), u64>,
}

/// Sums `reports`.
pub fn aggregate<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Totals {
    let mut t = Totals::default();
    for r in reports {
        let org = &r.organization_name;
        for (result, n) in [
            ("successful", r.successful_sessions()),
            ("failure", r.failed_sessions()),
        ] {
            let slot = t.sessions.entry((org.clone(), result)).or_default();
            *slot = slot.saturating_add(n);
        }
        for p in &r.policies {
            for f in &p.failures {
                let slot = t
                    .failures
                    .entry((org.clone(), result_type(&f.result_type).to_owned()))
                    .or_default();
                *slot = slot.saturating_add(f.sessions);
            }
        }
    }
    t
}

/// `result_type` if registered, else `other`.
fn result_type(result_type: &str) -> &str {
    if RESULT_TYPES.contains(&result_type) {
        result_type
    } else {
        "other"
    }
}

/// Appends the two series (HELP, TYPE, one line per label set, sorted) to
/// `out`.
pub fn render(totals: &Totals, out: &mut String) {
    let name = "mxkeys_tls_rpt_failures_total";
    let _ = writeln!(
        out,
        "# HELP {name} Failed TLS sessions reported by senders (TLS-RPT), by result type.\n# TYPE {name} counter"
    );
    for ((org, result_type), n) in &totals.failures {
        let _ = writeln!(
            out,
            "{name}{} {n}",
            labels(&[("organization", org), ("result_type", result_type)])
        );
    }
    let name = "mxkeys_tls_rpt_sessions_total";
    let _ = writeln!(
        out,
        "# HELP {name} TLS sessions reported by senders (TLS-RPT), by result.\n# TYPE {name} counter"
    );
    for ((org, result), n) in &totals.sessions {
        let _ = writeln!(
            out,
            "{name}{} {n}",
            labels(&[("organization", org), ("result", result)])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_rpt::report::{JSON_TYPE, accept};

    fn report(org: &str, id: &str, ok: u64, failures: &[(&str, u64)]) -> Report {
        let details: Vec<String> = failures
            .iter()
            .map(|(t, n)| format!(r#"{{"result-type": {t:?}, "failed-session-count": {n}}}"#))
            .collect();
        let failed: u64 = failures.iter().map(|(_, n)| n).sum();
        let json = format!(
            r#"{{"organization-name": {org:?}, "report-id": {id:?},
                "date-range": {{"start-datetime": "s", "end-datetime": "e"}},
                "policies": [{{"policy": {{"policy-type": "sts", "policy-domain": "example.test"}},
                               "summary": {{"total-successful-session-count": {ok},
                                            "total-failure-session-count": {failed}}},
                               "failure-details": [{}]}}]}}"#,
            details.join(",")
        );
        accept(json.as_bytes(), Some(JSON_TYPE)).unwrap()
    }

    #[test]
    fn failures_are_summed_by_organization_and_result_type() {
        let reports = [
            report(
                "Google",
                "1",
                10,
                &[("sts-policy-invalid", 2), ("tlsa-invalid", 1)],
            ),
            report("Google", "2", 5, &[("sts-policy-invalid", 3)]),
            report("Microsoft", "3", 7, &[("certificate-expired", 4)]),
        ];
        let mut out = String::new();
        render(&aggregate(&reports), &mut out);
        let series: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            series,
            [
                r#"mxkeys_tls_rpt_failures_total{organization="Google",result_type="sts-policy-invalid"} 5"#,
                r#"mxkeys_tls_rpt_failures_total{organization="Google",result_type="tlsa-invalid"} 1"#,
                r#"mxkeys_tls_rpt_failures_total{organization="Microsoft",result_type="certificate-expired"} 4"#,
                r#"mxkeys_tls_rpt_sessions_total{organization="Google",result="failure"} 6"#,
                r#"mxkeys_tls_rpt_sessions_total{organization="Google",result="successful"} 15"#,
                r#"mxkeys_tls_rpt_sessions_total{organization="Microsoft",result="failure"} 4"#,
                r#"mxkeys_tls_rpt_sessions_total{organization="Microsoft",result="successful"} 7"#,
            ]
        );
        assert!(out.contains("# TYPE mxkeys_tls_rpt_failures_total counter\n"));
        assert!(out.contains("# TYPE mxkeys_tls_rpt_sessions_total counter\n"));
    }

    #[test]
    fn label_values_from_senders_are_escaped() {
        let r = report("Evil\"} 1\nx{a=\"\\", "1", 0, &[("tlsa-invalid", 1)]);
        let mut out = String::new();
        render(&aggregate([&r]), &mut out);
        assert!(out.contains(
            r#"mxkeys_tls_rpt_failures_total{organization="Evil\"} 1\nx{a=\"\\",result_type="tlsa-invalid"} 1"#
        ), "{out}");
        // One line per series: nothing a sender sends starts a line.
        assert_eq!(out.lines().filter(|l| !l.starts_with('#')).count(), 3);
    }

    #[test]
    fn result_types_outside_the_registry_are_counted_as_other() {
        let made_up: Vec<String> = (0..1000).map(|i| format!("made-up-{i}\"\n")).collect();
        let failures: Vec<(&str, u64)> = made_up
            .iter()
            .map(|t| (t.as_str(), 1))
            .chain([("dane-required", 2)])
            .collect();
        let t = aggregate([&report("O", "1", 0, &failures)]);
        let types: Vec<(&str, u64)> = t
            .failures
            .iter()
            .map(|((_, t), n)| (t.as_str(), *n))
            .collect();
        assert_eq!(types, [("dane-required", 2), ("other", 1000)]);
    }

    #[test]
    fn counts_saturate_instead_of_overflowing() {
        let big = u64::MAX - 1;
        let reports = [
            report("O", "1", big, &[("tlsa-invalid", big)]),
            report("O", "2", big, &[("tlsa-invalid", big)]),
        ];
        let t = aggregate(&reports);
        assert_eq!(
            t.failures[&("O".to_owned(), "tlsa-invalid".to_owned())],
            u64::MAX
        );
        assert_eq!(t.sessions[&("O".to_owned(), "successful")], u64::MAX);
    }
}
