//! Prometheus metrics and a health check for `mxkeys run`.
//!
//! Names follow cert-manager's and x509-certificate-exporter's conventions:
//! expiry as a `*_timestamp_seconds` gauge per target, counters with a
//! `result` label, the time of the last success as a timestamp gauge.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};

use crate::pipeline::Report;

/// What the metrics endpoint reports; updated after every reconcile.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    targets: BTreeMap<String, TargetFacts>,
    reconciles_ok: u64,
    reconciles_failed: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    verifications_ok: u64,
    verifications_failed: u64,
    rollbacks: BTreeMap<String, u64>,
    source_errors: u64,
    acme_next: BTreeMap<String, i64>,
    dkim_keys: BTreeMap<(String, String), u64>,
    dkim_next: Option<i64>,
    orders_ok: u64,
    orders_failed: u64,
    last_success: Option<i64>,
    last_ok: Option<bool>,
    last_problem: String,
}

#[derive(Debug, Default, Clone)]
struct TargetFacts {
    not_after: Option<i64>,
    not_before: Option<i64>,
    served: bool,
}

impl Metrics {
    pub fn record(&self, report: &Report, now: i64) {
        let Ok(mut m) = self.inner.lock() else { return };
        let ok = report.ok();
        if ok {
            m.reconciles_ok += 1;
            m.last_success = Some(now);
            m.last_problem.clear();
        } else {
            m.reconciles_failed += 1;
            m.last_problem = report
                .problems()
                .first()
                .cloned()
                .unwrap_or_else(|| "the last reconcile failed".to_owned());
        }
        m.last_ok = Some(ok);
        m.source_errors += report.errors.len() as u64;
        for r in &report.reloads {
            match r.result {
                Some(Ok(())) => m.reloads_ok += 1,
                Some(Err(_)) => m.reloads_failed += 1,
                None => {}
            }
        }
        for v in &report.verifications {
            match v.result {
                Ok(()) => m.verifications_ok += 1,
                Err(_) => m.verifications_failed += 1,
            }
        }
        for target in &report.rollbacks {
            *m.rollbacks.entry(target.clone()).or_default() += 1;
        }
        for t in &report.targets {
            let facts = m.targets.entry(t.name.clone()).or_default();
            facts.served = t.ok();
            if let Some(s) = &t.served {
                facts.not_after = Some(s.not_after);
                facts.not_before = Some(s.not_before);
            }
        }
    }

    /// Counts ACME orders by result.
    pub fn record_orders(&self, outcomes: &[crate::acme::Outcome]) {
        let Ok(mut m) = self.inner.lock() else { return };
        for o in outcomes {
            match o.result {
                Some(Ok(_)) => m.orders_ok += 1,
                Some(Err(_)) => m.orders_failed += 1,
                None => {}
            }
        }
    }

    /// When each `acme` source is next due.
    pub fn set_next_renewals(&self, due: &BTreeMap<String, i64>) {
        if let Ok(mut m) = self.inner.lock() {
            m.acme_next = due.clone();
        }
    }

    /// DKIM keys by domain and state, and the next transition.
    pub fn set_dkim(&self, config: &crate::config::Config) {
        let Ok(keys) = crate::dkim::status(config) else {
            return;
        };
        let next = crate::dkim::next_due(config);
        if let Ok(mut m) = self.inner.lock() {
            m.dkim_keys.clear();
            for k in keys {
                *m.dkim_keys.entry((k.domain, k.state)).or_default() += 1;
            }
            m.dkim_next = next;
        }
    }

    /// Forget targets that are no longer configured (after SIGHUP).
    pub fn retain_targets(&self, names: &[String]) {
        if let Ok(mut m) = self.inner.lock() {
            m.targets.retain(|k, _| names.contains(k));
        }
    }

    /// `(healthy, explanation)` for /healthz.
    pub fn health(&self) -> (bool, String) {
        let Ok(m) = self.inner.lock() else {
            return (false, "metrics unavailable".to_owned());
        };
        match m.last_ok {
            Some(true) => (true, "ok".to_owned()),
            Some(false) => (false, m.last_problem.clone()),
            None => (false, "no reconcile has finished yet".to_owned()),
        }
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let Ok(m) = self.inner.lock() else {
            return String::new();
        };
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family("mxkeys_build_info", "gauge", "mxkeys version.");
        let _ = writeln!(
            out,
            "mxkeys_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let mut out2 = String::new();
        let mut series = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            let _ = writeln!(out2, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in rows {
                let _ = writeln!(out2, "{name}{labels} {value}");
            }
        };
        let per_target = |f: &dyn Fn(&TargetFacts) -> Option<String>| -> Vec<(String, String)> {
            m.targets
                .iter()
                .filter_map(|(name, t)| {
                    f(t).map(|v| (format!("{{target=\"{}\"}}", escape(name)), v))
                })
                .collect()
        };
        series(
            "mxkeys_certificate_not_after_timestamp_seconds",
            "gauge",
            "The notAfter of the certificate a target holds, as a Unix timestamp.",
            per_target(&|t| t.not_after.map(|v| v.to_string())),
        );
        series(
            "mxkeys_certificate_not_before_timestamp_seconds",
            "gauge",
            "The notBefore of the certificate a target holds, as a Unix timestamp.",
            per_target(&|t| t.not_before.map(|v| v.to_string())),
        );
        series(
            "mxkeys_target_ready",
            "gauge",
            "1 when the target holds a valid certificate after the last reconcile, else 0.",
            per_target(&|t| Some(u8::from(t.served).to_string())),
        );
        let by_result = |ok: u64, failed: u64| {
            vec![
                ("{result=\"success\"}".to_owned(), ok.to_string()),
                ("{result=\"failure\"}".to_owned(), failed.to_string()),
            ]
        };
        series(
            "mxkeys_reconciles_total",
            "counter",
            "Reconciles by result.",
            by_result(m.reconciles_ok, m.reconciles_failed),
        );
        series(
            "mxkeys_reloads_total",
            "counter",
            "Reload commands and signals by result.",
            by_result(m.reloads_ok, m.reloads_failed),
        );
        series(
            "mxkeys_verifications_total",
            "counter",
            "Checks that a service presents the installed certificate, by result.",
            by_result(m.verifications_ok, m.verifications_failed),
        );
        series(
            "mxkeys_rollbacks_total",
            "counter",
            "New files taken back because the reload or the verification failed, by target.",
            m.rollbacks
                .iter()
                .map(|(t, n)| (format!("{{target=\"{}\"}}", escape(t)), n.to_string()))
                .collect(),
        );
        series(
            "mxkeys_acme_next_renewal_timestamp_seconds",
            "gauge",
            "When an acme source is next due for an order (or its backoff ends), as a Unix timestamp.",
            m.acme_next
                .iter()
                .map(|(s, t)| (format!("{{source=\"{}\"}}", escape(s)), t.to_string()))
                .collect(),
        );
        series(
            "mxkeys_acme_orders_total",
            "counter",
            "ACME orders by result.",
            by_result(m.orders_ok, m.orders_failed),
        );
        series(
            "mxkeys_dkim_keys",
            "gauge",
            "DKIM keys by domain and state.",
            m.dkim_keys
                .iter()
                .map(|((d, st), n)| {
                    (
                        format!("{{domain=\"{}\",state=\"{}\"}}", escape(d), escape(st)),
                        n.to_string(),
                    )
                })
                .collect(),
        );
        series(
            "mxkeys_dkim_next_transition_timestamp_seconds",
            "gauge",
            "When the next DKIM key transition is due, as a Unix timestamp.",
            m.dkim_next
                .map(|t| (String::new(), t.to_string()))
                .into_iter()
                .collect(),
        );
        series(
            "mxkeys_source_errors_total",
            "counter",
            "Source errors (unreadable files, broken entries) seen by reconciles.",
            vec![(String::new(), m.source_errors.to_string())],
        );
        series(
            "mxkeys_last_success_timestamp_seconds",
            "gauge",
            "When the last successful reconcile finished, as a Unix timestamp.",
            m.last_success
                .map(|t| (String::new(), t.to_string()))
                .into_iter()
                .collect(),
        );
        out + &out2
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds `listen` and serves /metrics and /healthz until the runtime ends,
/// under the listener limits of [`crate::listen`] (connection cap, header
/// and idle timeouts, backoff on accept errors).
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!("metrics on http://{listen}/metrics");
    tokio::spawn(crate::listen::serve(
        listener,
        crate::listen::Limits::DEFAULT,
        "metrics",
        move |req| respond(req, &metrics),
    ));
    Ok(())
}

fn respond<B>(req: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => {
            let (ok, why) = metrics.health();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "text/plain", format!("{}\n", one_line(&why)))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics or /healthz\n".to_owned(),
        ),
    }
}

/// `text` on one line, for a body a probe reads as one: whitespace runs
/// (newlines included) become one space, and it is cut at 300 characters.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None if line.is_empty() => "unhealthy".to_owned(),
        None => line,
    }
}
