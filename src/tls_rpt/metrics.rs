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

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::report::Report;

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
                    .entry((org.clone(), f.result_type.clone()))
                    .or_default();
                *slot = slot.saturating_add(f.sessions);
            }
        }
    }
    t
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
            "{name}{{organization=\"{}\",result_type=\"{}\"}} {n}",
            escape(org),
            escape(result_type)
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
            "{name}{{organization=\"{}\",result=\"{result}\"}} {n}",
            escape(org)
        );
    }
}

/// A label value in the text format: `\`, `"` and line feed escaped.
fn escape(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for c in label.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}
