//! Prometheus metrics and a health check for `mxkeys run`.
//!
//! Names follow cert-manager's and x509-certificate-exporter's conventions:
//! expiry as a `*_timestamp_seconds` gauge per target, counters with a
//! `result` label, the time of the last success as a timestamp gauge.
//!
//! Health measures what matters to the mail server, not every line a
//! reconcile logged: `/healthz` is 200 when every target slot is served
//! (holds a valid certificate for its names after the last reconcile), no
//! `acme` source has failed [`ACME_FAILURES_UNHEALTHY`] orders in a row,
//! no reload failed in the last reconcile, and the last DKIM pass had no
//! error. A source error no target depends on
//! (a broken entry for another name in a shared acme.json) is counted in
//! `mxkeys_source_errors_total` but leaves health alone. The body is `ok`
//! or one line naming the first failing target or task (see [`verdict`],
//! pure).

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
    tls_rpt: Mutex<TlsRptCache>,
    /// The configuration in use (`GET /status` gathers from it).
    config: Mutex<Option<Arc<crate::config::Config>>>,
}

/// The upper bounds of `mxkeys_reconcile_duration_seconds`' buckets: a
/// reconcile that installs nothing takes milliseconds, one that reloads
/// and checks services seconds, one that waits out `verify_timeout` more.
const RECONCILE_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A Prometheus histogram over [`RECONCILE_BUCKETS`].
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or under each bound (not cumulative).
    buckets: [u64; RECONCILE_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = RECONCILE_BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }

    /// The `_bucket`, `_sum` and `_count` samples, as what follows the
    /// family's name on each line, and the value.
    fn rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        let mut cumulative = 0;
        for (bound, n) in RECONCILE_BUCKETS.iter().zip(self.buckets) {
            cumulative += n;
            rows.push((format!("_bucket{{le=\"{bound}\"}}"), cumulative.to_string()));
        }
        rows.push(("_bucket{le=\"+Inf\"}".to_owned(), self.count.to_string()));
        rows.push(("_sum".to_owned(), self.sum.to_string()));
        rows.push(("_count".to_owned(), self.count.to_string()));
        rows
    }
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
    /// DKIM passes that failed in a row (0 after one without errors).
    dkim_failed_passes: Option<u64>,
    dkim_reload_pending: Option<bool>,
    /// Consecutive failed orders and the last error, per `acme` source.
    acme_failures: BTreeMap<String, (u32, Option<String>)>,
    /// The error of the last DKIM pass, if it failed.
    dkim_error: Option<String>,
    /// The error of the last reconcile when it could decide no target at
    /// all (its lock or state directory failed).
    reconcile_error: Option<String>,
    /// Reloads that failed in the last reconcile (an owed reload is tried
    /// again by every reconcile until it works).
    reload_errors: Vec<String>,
    orders_ok: u64,
    orders_failed: u64,
    /// Whether every address of a DANE host and port served a chain its
    /// TLSA records match, at the last DANE pass.
    dane_match: BTreeMap<(String, u16), bool>,
    /// Per `[mta_sts]` domain, the plan of the last MTA-STS pass.
    mta_sts: BTreeMap<String, MtaStsFacts>,
    /// Where received TLS-RPT reports are kept, when `[tls_rpt]` is set.
    tls_rpt_dir: Option<std::path::PathBuf>,
    last_success: Option<i64>,
    last_ok: Option<bool>,
    reconcile_durations: Histogram,
    /// `[daemon] resync_interval`, in seconds.
    resync_interval: Option<u64>,
    /// Per configured DKIM domain and family that ever signed: keys
    /// signing now.
    dkim_signing: Vec<(String, &'static str, usize)>,
    /// Per DKIM key not seen on every authoritative server yet (domain,
    /// selector): when it passes its provider's `propagation_timeout`.
    dkim_dns_deadlines: BTreeMap<(String, String), i64>,
    /// With `[cluster]`: reachable, the shared jobs (and whether this host
    /// leads each), fenced writes refused.
    cluster: Option<ClusterFacts>,
}

/// The cluster as the cluster task last saw it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct ClusterFacts {
    up: bool,
    leader: BTreeMap<String, bool>,
    fenced_writes: u64,
}

/// One MTA-STS domain as its last plan left it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct MtaStsFacts {
    in_step: bool,
    enforce_refused: bool,
    max_age: Option<u64>,
    /// While the plan waits out a TTL or the old max_age: when that ends.
    wait_until: Option<i64>,
}

/// The TLS-RPT series as last rendered, and what the store looked like
/// then ([`store_key`]): a scrape reads the reports again only when a
/// report was added or dropped.
#[derive(Debug, Default)]
struct TlsRptCache {
    /// `None` before the first read; `Some(None)`: the store did not exist.
    key: Option<Option<StoreKey>>,
    text: String,
    /// How many times the store was read (for the tests).
    loads: u64,
}

/// What identifies the store's content without reading any report: its
/// directory's stat, and per organization directory its name, its stat
/// and its file names (the store only ever adds a new file by renaming it
/// into place and drops whole files, each of which changes these; the
/// names as well as the stats, as two writes within one clock tick can
/// leave a directory's times unchanged).
type StoreKey = Vec<(
    std::ffi::OsString,
    (u64, u64, i64, i64, i64, i64),
    Vec<std::ffi::OsString>,
)>;

/// The stat of a directory that says whether it changed (device, inode,
/// mtime and ctime to the nanosecond).
fn dir_stamp(meta: &std::fs::Metadata) -> (u64, u64, i64, i64, i64, i64) {
    use std::os::unix::fs::MetadataExt as _;
    (
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    )
}

/// The store's [`StoreKey`] (stats and directory listings, no report
/// read); `None` when the store does not exist (yet).
fn store_key(dir: &std::path::Path) -> Option<StoreKey> {
    let top = std::fs::symlink_metadata(dir).ok()?;
    let mut key = vec![(std::ffi::OsString::new(), dir_stamp(&top), Vec::new())];
    let mut orgs: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    orgs.sort_by_key(std::fs::DirEntry::file_name);
    for org in orgs {
        let Ok(meta) = std::fs::symlink_metadata(org.path()) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let mut names: Vec<_> = std::fs::read_dir(org.path())
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        key.push((org.file_name(), dir_stamp(&meta), names));
    }
    Some(key)
}

impl TlsRptCache {
    /// The TLS-RPT series of the store in `dir`, read again only when
    /// its [`StoreKey`] changed.
    fn render(&mut self, dir: &std::path::Path) -> &str {
        let key = store_key(dir);
        if self.key.as_ref() != Some(&key) {
            let store = crate::tls_rpt::store::Store::new(
                dir.to_owned(),
                crate::tls_rpt::store::Limits::default(),
            );
            let reports = match store.load() {
                Ok((reports, skipped)) => {
                    for e in skipped {
                        tracing::debug!("tls-rpt: {e}");
                    }
                    reports
                }
                Err(e) => {
                    tracing::warn!("tls-rpt: {e}");
                    Vec::new()
                }
            };
            let mut text = String::new();
            crate::tls_rpt::metrics::render(
                &crate::tls_rpt::metrics::aggregate(&reports),
                &mut text,
            );
            self.text = text;
            self.key = Some(key);
            self.loads += 1;
        }
        &self.text
    }
}

#[derive(Debug, Default, Clone)]
struct TargetFacts {
    not_after: Option<i64>,
    not_before: Option<i64>,
    served: bool,
    /// Why it is not served, when it is not.
    problem: Option<String>,
    /// For a slot of a DANE target: whether the gate holds a new
    /// certificate, and until when (if known).
    dane_gate: Option<(bool, Option<i64>)>,
}

impl Metrics {
    pub fn record(&self, report: &Report, now: i64) {
        let Ok(mut m) = self.inner.lock() else { return };
        let ok = report.ok();
        if ok {
            m.reconciles_ok += 1;
            m.last_success = Some(now);
        } else {
            m.reconciles_failed += 1;
        }
        m.last_ok = Some(ok);
        m.reconcile_error = report
            .targets
            .is_empty()
            .then(|| report.errors.first().map(ToString::to_string))
            .flatten();
        m.source_errors += report.errors.len() as u64;
        m.reload_errors = report
            .reloads
            .iter()
            .filter_map(|r| match &r.result {
                Some(Err(e)) => Some(format!("reload `{}`: {e}", r.action)),
                _ => None,
            })
            .collect();
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
            facts.problem = t.problem();
            facts.dane_gate = t.gate.as_ref().map(|_| {
                let held = t.held();
                (held.is_some(), held.and_then(|h| h.until))
            });
            if let Some(s) = &t.served {
                facts.not_after = Some(s.not_after);
                facts.not_before = Some(s.not_before);
            }
        }
    }

    /// The MTA-STS series after a pass: each domain's plan (a domain the
    /// pass could not look at counts as not in step), and where the
    /// TLS-RPT reports are (when `[tls_rpt]` is set).
    pub fn set_mta_sts(
        &self,
        config: &crate::config::Config,
        pass: &crate::mta_sts::pass::MtaStsPass,
    ) {
        let Ok(mut m) = self.inner.lock() else { return };
        m.mta_sts = pass
            .domains
            .iter()
            .map(|d| {
                let facts = d
                    .plan
                    .as_ref()
                    .map_or_else(MtaStsFacts::default, |p| MtaStsFacts {
                        in_step: matches!(p.step, crate::mta_sts::order::Step::InStep { .. }),
                        enforce_refused: p.refused.is_some(),
                        max_age: Some(p.policy.max_age),
                        wait_until: match p.step {
                            crate::mta_sts::order::Step::Wait { until, .. } => until,
                            crate::mta_sts::order::Step::AddMxAfter { at, .. } => Some(at),
                            _ => None,
                        },
                    });
                (d.domain.clone(), facts)
            })
            .collect();
        drop(m);
        self.set_tls_rpt(config);
    }

    /// Where the TLS-RPT reports are, when `[tls_rpt]` is set: their
    /// totals are rendered from there.
    pub fn set_tls_rpt(&self, config: &crate::config::Config) {
        let Ok(mut m) = self.inner.lock() else { return };
        m.tls_rpt_dir = config
            .tls_rpt
            .as_ref()
            .map(|_| config.state_dir.tls_rpt_dir());
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

    /// After a DKIM pass (`ok`: it had no error): DKIM keys by domain and
    /// state, the keys signing per domain and family, when each key still
    /// waiting for DNS passes its timeout, the next transition, the failed
    /// passes in a row, and whether a signer reload is owed.
    pub fn set_dkim(&self, config: &crate::config::Config, ok: bool) {
        // The book is read once for the three series drawn from it.
        let book = config
            .dkim
            .as_ref()
            .and_then(|d| Some((crate::dkim::load(config).ok()?, crate::dkim::wanted(d))));
        let timeout = crate::dkim::propagation_timeout(config)
            .map_or(0, |t| i64::try_from(t.as_secs()).unwrap_or(i64::MAX));
        let next = crate::dkim::next_due(config);
        let health = crate::dkim::health(config);
        if let Ok(mut m) = self.inner.lock() {
            if let Some((book, wanted)) = book {
                m.dkim_keys.clear();
                for k in &book.keys {
                    *m.dkim_keys
                        .entry((k.domain.clone(), k.state.to_string()))
                        .or_default() += 1;
                }
                m.dkim_dns_deadlines = dns_deadlines(book.keys.iter(), timeout);
                m.dkim_signing = crate::dkim::machine::signing_keys(&book, &wanted)
                    .into_iter()
                    .map(|(d, f, n)| (d.to_owned(), f, n))
                    .collect();
            }
            m.dkim_next = next;
            let failed = if ok {
                0
            } else {
                m.dkim_failed_passes.unwrap_or(0) + 1
            };
            m.dkim_failed_passes = Some(failed);
            m.dkim_reload_pending = Some(health.reload_pending);
        }
    }

    /// Consecutive failed orders of every `acme` source, read from their
    /// state files (`state_dir/acme/NAME/state.json`).
    pub fn set_acme(&self, config: &crate::config::Config) {
        let failures: BTreeMap<String, (u32, Option<String>)> = config
            .acme_sources()
            .map(|s| {
                let state = crate::acme::SourceState::load(s);
                (s.name.clone(), (state.failures, state.last_error))
            })
            .collect();
        if let Ok(mut m) = self.inner.lock() {
            m.acme_failures = failures;
        }
    }

    /// The outcome of a DKIM pass: its error, or its first per-key error.
    pub fn dkim_outcome<E: std::fmt::Display>(&self, outcome: &Result<crate::dkim::Pass, E>) {
        let error = match outcome {
            Err(e) => Some(e.to_string()),
            Ok(pass) => pass.errors.first().map(ToString::to_string),
        };
        if let Ok(mut m) = self.inner.lock() {
            m.dkim_error = error;
        }
    }

    /// After a DANE pass: which DANE endpoints served a matching chain
    /// (replaces the previous pass's endpoints).
    pub fn set_dane_checks(&self, checks: &[crate::dane::check::EndpointCheck]) {
        if let Ok(mut m) = self.inner.lock() {
            m.dane_match = checks
                .iter()
                .map(|c| ((c.host.clone(), c.port), c.ok()))
                .collect();
        }
    }

    /// The cluster task's health: `jobs` are the shared jobs configured
    /// (each reported led or not), plus any job the health says is led.
    pub fn set_cluster(&self, health: &crate::cluster::Health, jobs: &[String]) {
        let mut leader: BTreeMap<String, bool> = jobs.iter().map(|j| (j.clone(), false)).collect();
        for job in &health.leading {
            leader.insert(job.clone(), true);
        }
        if let Ok(mut m) = self.inner.lock() {
            m.cluster = Some(ClusterFacts {
                up: health.reachable,
                leader,
                fenced_writes: health.fenced_writes,
            });
        }
    }

    /// Takes the configuration in use (at start and after SIGHUP): forgets
    /// target slots no longer configured, starts every target's rollback
    /// counter at 0 (so `increase()` sees its first rollback), and keeps
    /// the resync interval and the configuration for `GET /status`.
    pub fn configure(&self, config: &Arc<crate::config::Config>) {
        // Metrics are kept per slot: `mail`, or `mail/rsa` and
        // `mail/ecdsa` for a dual target.
        let slots: Vec<String> = config
            .targets
            .iter()
            .flat_map(|t| t.slots.iter().map(|s| t.slot_name(s)))
            .collect();
        if let Ok(mut m) = self.inner.lock() {
            m.targets.retain(|k, _| slots.contains(k));
            m.rollbacks
                .retain(|k, _| config.targets.iter().any(|t| &t.name == k));
            for t in &config.targets {
                m.rollbacks.entry(t.name.clone()).or_default();
            }
            m.resync_interval = Some(config.daemon.resync_interval.as_secs());
        }
        if let Ok(mut c) = self.config.lock() {
            *c = Some(config.clone());
        }
    }

    /// The configuration in use, once [`Self::configure`] was called.
    pub fn config(&self) -> Option<Arc<crate::config::Config>> {
        self.config.lock().ok().and_then(|c| c.clone())
    }

    /// How long a reconcile took, from its first plan to its record.
    pub fn observe_reconcile(&self, took: std::time::Duration) {
        if let Ok(mut m) = self.inner.lock() {
            m.reconcile_durations.observe(took.as_secs_f64());
        }
    }

    /// `(healthy, explanation)` for /healthz: see [`verdict`].
    pub fn health(&self) -> (bool, String) {
        let Ok(m) = self.inner.lock() else {
            return (false, "metrics unavailable".to_owned());
        };
        match verdict(&m) {
            Ok(()) => (true, "ok".to_owned()),
            Err(why) => (false, why.to_string()),
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
                .filter_map(|(name, t)| f(t).map(|v| (labels(&[("target", name)]), v)))
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
        series(
            "mxkeys_dane_gate_waiting",
            "gauge",
            "1 while the DANE gate holds a new certificate of a DANE target (its TLSA record is not aged yet), else 0.",
            per_target(&|t| t.dane_gate.map(|(held, _)| u8::from(held).to_string())),
        );
        series(
            "mxkeys_dane_gate_until_seconds",
            "gauge",
            "When the DANE gate holding a target's new certificate opens if nothing changes, as a Unix timestamp.",
            per_target(&|t| {
                t.dane_gate
                    .and_then(|(_, until)| until)
                    .map(|u| u.to_string())
            }),
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
            "mxkeys_last_reconcile_success",
            "gauge",
            "1 when the last reconcile had no error, else 0 (absent before the first).",
            m.last_ok
                .map(|ok| (String::new(), u8::from(ok).to_string()))
                .into_iter()
                .collect(),
        );
        series(
            "mxkeys_resync_interval_seconds",
            "gauge",
            "[daemon] resync_interval: every target is reconciled at least this often.",
            m.resync_interval
                .map(|s| (String::new(), s.to_string()))
                .into_iter()
                .collect(),
        );
        series(
            "mxkeys_reconcile_duration_seconds",
            "histogram",
            "How long reconciles took, from the first plan to the record (reloads and checks included).",
            m.reconcile_durations.rows(),
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
                .map(|(t, n)| (labels(&[("target", t)]), n.to_string()))
                .collect(),
        );
        series(
            "mxkeys_acme_next_renewal_timestamp_seconds",
            "gauge",
            "When an acme source is next due for an order (or its backoff ends), as a Unix timestamp.",
            m.acme_next
                .iter()
                .map(|(s, t)| (labels(&[("source", s)]), t.to_string()))
                .collect(),
        );
        series(
            "mxkeys_acme_consecutive_failures",
            "gauge",
            "Failed ACME orders in a row, per acme source (0 after a success).",
            m.acme_failures
                .iter()
                .map(|(s, (n, _))| (labels(&[("source", s)]), n.to_string()))
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
                .map(|((d, st), n)| (labels(&[("domain", d), ("state", st)]), n.to_string()))
                .collect(),
        );
        series(
            "mxkeys_dkim_signing_keys",
            "gauge",
            "DKIM keys signing now, per configured domain and algorithm family (rsa, ed25519) whose keys ever signed.",
            m.dkim_signing
                .iter()
                .map(|(d, family, n)| (labels(&[("domain", d), ("family", family)]), n.to_string()))
                .collect(),
        );
        series(
            "mxkeys_dkim_key_dns_deadline_timestamp_seconds",
            "gauge",
            "For a DKIM key whose record is not yet seen on every authoritative server: when it has waited its DNS provider's propagation_timeout, as a Unix timestamp.",
            m.dkim_dns_deadlines
                .iter()
                .map(|((d, sel), t)| (labels(&[("domain", d), ("selector", sel)]), t.to_string()))
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
            "mxkeys_dkim_failed_passes",
            "gauge",
            "DKIM passes that failed in a row (0 after a pass without errors).",
            m.dkim_failed_passes
                .map(|n| (String::new(), n.to_string()))
                .into_iter()
                .collect(),
        );
        series(
            "mxkeys_dkim_signer_reload_pending",
            "gauge",
            "1 while the DKIM signer's files changed and its reload has not succeeded yet (retried every 30 s).",
            m.dkim_reload_pending
                .map(|p| (String::new(), u8::from(p).to_string()))
                .into_iter()
                .collect(),
        );
        series(
            "mxkeys_dane_match",
            "gauge",
            "1 when every address of a DANE host and port served a chain its DNSSEC-validated TLSA records match, else 0.",
            m.dane_match
                .iter()
                .map(|((h, p), ok)| {
                    (
                        labels(&[("host", h), ("port", &p.to_string())]),
                        u8::from(*ok).to_string(),
                    )
                })
                .collect(),
        );
        let per_domain = |f: &dyn Fn(&MtaStsFacts) -> Option<String>| -> Vec<(String, String)> {
            m.mta_sts
                .iter()
                .filter_map(|(d, facts)| f(facts).map(|v| (labels(&[("domain", d)]), v)))
                .collect()
        };
        series(
            "mxkeys_mta_sts_in_step",
            "gauge",
            "1 when an MTA-STS domain's policy is served and published everywhere and its MX set agrees, else 0.",
            per_domain(&|f| Some(u8::from(f.in_step).to_string())),
        );
        series(
            "mxkeys_mta_sts_enforce_refused",
            "gauge",
            "1 while mode enforce is wanted for an MTA-STS domain but refused (an MX host not listed, unchecked or failing its STARTTLS check), else 0.",
            per_domain(&|f| Some(u8::from(f.enforce_refused).to_string())),
        );
        series(
            "mxkeys_mta_sts_wait_until_timestamp_seconds",
            "gauge",
            "While an MTA-STS domain's next step waits out a TTL or the old policy's max_age (a disable): when that wait ends, as a Unix timestamp.",
            per_domain(&|f| f.wait_until.map(|t| t.to_string())),
        );
        series(
            "mxkeys_mta_sts_policy_max_age_seconds",
            "gauge",
            "The max_age of the MTA-STS policy an MTA-STS domain serves now.",
            per_domain(&|f| f.max_age.map(|a| a.to_string())),
        );
        if let Some(c) = &m.cluster {
            series(
                "mxkeys_cluster_up",
                "gauge",
                "1 when the last request to the [cluster] reached a quorum, else 0 (shared orders wait; installed certificates stay).",
                vec![(String::new(), u8::from(c.up).to_string())],
            );
            series(
                "mxkeys_cluster_leader",
                "gauge",
                "1 while this host leads a shared job (acme/NAME, dkim), else 0. The label is shared_job, not job: Prometheus keeps job for the scrape's own.",
                c.leader
                    .iter()
                    .map(|(j, led)| (labels(&[("shared_job", j)]), u8::from(*led).to_string()))
                    .collect(),
            );
            series(
                "mxkeys_cluster_fenced_writes_total",
                "counter",
                "Writes to the cluster refused by fencing (this host had lost the job's lock, e.g. paused past its lease).",
                vec![(String::new(), c.fenced_writes.to_string())],
            );
        }
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
        let tls_rpt_dir = m.tls_rpt_dir.clone();
        drop(m);
        if let Some(dir) = tls_rpt_dir
            && let Ok(mut cache) = self.tls_rpt.lock()
        {
            out2.push_str(cache.render(&dir));
        }
        out + &out2
    }
}

/// Per DKIM key generated or published but not yet seen on every
/// authoritative server: when it has waited `timeout` seconds since it
/// entered that state (pure).
fn dns_deadlines<'k>(
    keys: impl Iterator<Item = &'k crate::dkim::machine::Key>,
    timeout: i64,
) -> BTreeMap<(String, String), i64> {
    use crate::dkim::machine::KeyState;
    keys.filter(|k| {
        matches!(k.state, KeyState::Generated | KeyState::Published) && k.verified_at.is_none()
    })
    .map(|k| {
        (
            (k.domain.clone(), k.selector.clone()),
            k.since.saturating_add(timeout),
        )
    })
    .collect()
}

/// An `acme` source with this many failed orders in a row makes the daemon
/// unhealthy: one failure is retried after a backoff, a second in a row is
/// a problem someone must look at.
const ACME_FAILURES_UNHEALTHY: u32 = 2;

/// Longest health line (a CA's error detail can be long).
const HEALTH_LINE_MAX: usize = 300;

/// Why the daemon is unhealthy, for /healthz.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum Unhealthy {
    #[error("no reconcile has finished yet")]
    NotYetReconciled,
    /// The first failing target or task (one line, cut at
    /// [`HEALTH_LINE_MAX`]) and how many more there are.
    #[error("{first}{}", if *.more > 0 { format!(" (and {} more)", .more) } else { String::new() })]
    Failing { first: String, more: usize },
}

/// The health rule (pure): the first failing target or task, as one line,
/// with how many more there are.
fn verdict(m: &Inner) -> Result<(), Unhealthy> {
    if m.last_ok.is_none() {
        return Err(Unhealthy::NotYetReconciled);
    }
    let mut failing: Vec<String> = m.reconcile_error.iter().cloned().collect();
    failing.extend(
        m.targets
            .iter()
            .filter(|(_, t)| !t.served)
            .map(|(name, t)| {
                t.problem
                    .clone()
                    .unwrap_or_else(|| format!("target {name}: not served"))
            }),
    );
    failing.extend(m.reload_errors.iter().cloned());
    failing.extend(
        m.acme_failures
            .iter()
            .filter(|(_, (n, _))| *n >= ACME_FAILURES_UNHEALTHY)
            .map(|(name, (n, e))| {
                format!(
                    "acme source {name}: {n} orders failed in a row ({})",
                    e.as_deref().unwrap_or("no error recorded")
                )
            }),
    );
    failing.extend(m.dkim_error.iter().map(|e| format!("dkim: {e}")));
    let Some(first) = failing.first() else {
        return Ok(());
    };
    Err(Unhealthy::Failing {
        first: one_line(first),
        more: failing.len() - 1,
    })
}

/// Whitespace and control characters folded to single spaces, cut at
/// [`HEALTH_LINE_MAX`] characters.
fn one_line(text: &str) -> String {
    let mut out = String::new();
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() > HEALTH_LINE_MAX {
        out = out.chars().take(HEALTH_LINE_MAX - 1).collect();
        out.push('…');
    }
    out
}

/// A sample's labels in the text format, `{name="value",...}`: each value
/// with `\`, `"` and line feed escaped (values come from configuration,
/// certificates and senders' reports).
pub(crate) fn labels(pairs: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// Binds `listen` and serves /metrics, /healthz and /status until the
/// runtime ends, under the listener limits of [`crate::listen`]
/// (connection cap, header and idle timeouts, backoff on accept errors).
/// Each answer is made in the blocking pool: `/status` reads the state
/// directory and the targets' files, which must not hold up the runtime's
/// thread.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!("metrics on http://{listen}/metrics");
    tokio::spawn(crate::listen::serve_async(
        listener,
        crate::listen::Limits::DEFAULT,
        "metrics",
        move |req| {
            let metrics = metrics.clone();
            async move {
                tokio::task::spawn_blocking(move || respond(&req, &metrics))
                    .await
                    .unwrap_or_else(|e| {
                        tracing::error!("metrics: the answer failed: {e}");
                        Response::builder()
                            .status(StatusCode::INTERNAL_SERVER_ERROR)
                            .body(Full::new(Bytes::from_static(b"internal error\n")))
                            .unwrap_or_default()
                    })
            }
        },
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
        "/status" => {
            let Some(config) = metrics.config() else {
                return reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no configuration loaded yet\n".to_owned(),
                );
            };
            let page = crate::status::html::render(&crate::status::Status::gather(&config));
            let mut response = reply(StatusCode::OK, "text/html; charset=utf-8", page);
            let headers = response.headers_mut();
            headers.insert(
                "content-security-policy",
                hyper::header::HeaderValue::from_static(
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                ),
            );
            headers.insert(
                "x-content-type-options",
                hyper::header::HeaderValue::from_static("nosniff"),
            );
            response
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics, /healthz or /status\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(ok: bool, problem: Option<&str>) -> TargetFacts {
        TargetFacts {
            not_after: Some(1),
            not_before: Some(0),
            served: ok,
            problem: problem.map(str::to_owned),
            dane_gate: None,
        }
    }

    /// A daemon after a reconcile where everything is fine.
    fn healthy() -> Inner {
        let mut m = Inner {
            last_ok: Some(false),
            ..Inner::default()
        };
        m.targets.insert("mail".to_owned(), served(true, None));
        m.targets
            .insert("dovecot/rsa".to_owned(), served(true, None));
        m.acme_failures
            .insert("mx".to_owned(), (1, Some("timeout".to_owned())));
        m
    }

    #[test]
    fn health_is_about_targets_and_repeated_failures_in_one_line() {
        type Change = fn(&mut Inner);
        let cases: [(&str, Change, Result<(), &str>); 8] = [
            ("all served, one ACME failure", |_| {}, Ok(())),
            (
                "no reconcile yet",
                |m| m.last_ok = None,
                Err("no reconcile has finished yet"),
            ),
            (
                "a slot not served",
                |m| {
                    m.targets.insert(
                        "dovecot/rsa".to_owned(),
                        served(false, Some("target dovecot/rsa: no valid certificate")),
                    );
                },
                Err("target dovecot/rsa: no valid certificate"),
            ),
            (
                "two ACME failures in a row",
                |m| {
                    m.acme_failures.insert(
                        "mx".to_owned(),
                        (2, Some("newOrder:\n  rateLimited\tslow down".to_owned())),
                    );
                },
                Err("acme source mx: 2 orders failed in a row (newOrder: rateLimited slow down)"),
            ),
            (
                "a DKIM pass failed",
                |m| m.dkim_error = Some("key_dir /x: not a directory".to_owned()),
                Err("dkim: key_dir /x: not a directory"),
            ),
            (
                "a reload failed",
                |m| m.reload_errors = vec!["reload `postfix reload`: exit 1".to_owned()],
                Err("reload `postfix reload`: exit 1"),
            ),
            (
                "no target could be decided",
                |m| m.reconcile_error = Some("state_dir /s: cannot take the lock".to_owned()),
                Err("state_dir /s: cannot take the lock"),
            ),
            (
                "several at once: the first, and how many more",
                |m| {
                    m.dkim_error = Some("d".to_owned());
                    m.acme_failures.insert("mx".to_owned(), (5, None));
                },
                Err("acme source mx: 5 orders failed in a row (no error recorded) (and 1 more)"),
            ),
        ];
        for (case, change, want) in cases {
            let mut m = healthy();
            change(&mut m);
            assert_eq!(
                verdict(&m).map_err(|e| e.to_string()),
                want.map_err(str::to_owned),
                "{case}"
            );
        }
    }

    #[test]
    fn the_reconcile_histogram_counts_each_duration_in_its_bucket_and_every_larger_one() {
        let metrics = Metrics::default();
        for ms in [3, 40, 40, 700, 200_000] {
            metrics.observe_reconcile(std::time::Duration::from_millis(ms));
        }
        let text = metrics.render();
        for line in [
            "mxkeys_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "mxkeys_reconcile_duration_seconds_bucket{le=\"0.025\"} 1",
            "mxkeys_reconcile_duration_seconds_bucket{le=\"0.05\"} 3",
            "mxkeys_reconcile_duration_seconds_bucket{le=\"1\"} 4",
            "mxkeys_reconcile_duration_seconds_bucket{le=\"120\"} 4",
            "mxkeys_reconcile_duration_seconds_bucket{le=\"+Inf\"} 5",
            "mxkeys_reconcile_duration_seconds_count 5",
            "# TYPE mxkeys_reconcile_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let sum = text
            .lines()
            .find_map(|l| l.strip_prefix("mxkeys_reconcile_duration_seconds_sum "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(sum.is_some_and(|s| (s - 200.783).abs() < 1e-6), "{sum:?}");
    }

    #[test]
    fn only_keys_not_yet_seen_everywhere_have_a_dns_deadline_their_timeout_after_they_got_there() {
        use crate::dkim::machine::{DkimAlgorithm, Key, KeyState};
        let key = |sel: &str, state, since, verified: Option<i64>| Key {
            domain: "example.com".into(),
            algorithm: DkimAlgorithm::Rsa2048,
            selector: sel.into(),
            file: "/k".into(),
            record: String::new(),
            state,
            since,
            created_at: 0,
            verified_at: verified,
            activated_at: None,
            entered: Default::default(),
        };
        let keys = [
            key("gen", KeyState::Generated, 100, None),
            key("pub", KeyState::Published, 200, None),
            key("seen", KeyState::Published, 200, Some(250)),
            key("act", KeyState::Active, 300, Some(250)),
        ];
        let deadlines = dns_deadlines(keys.iter(), 60);
        let want: BTreeMap<(String, String), i64> = [
            (("example.com".to_owned(), "gen".to_owned()), 160),
            (("example.com".to_owned(), "pub".to_owned()), 260),
        ]
        .into();
        assert_eq!(deadlines, want);
    }

    #[test]
    fn configure_starts_every_targets_rollback_counter_and_records_the_resync_interval() {
        let host = crate::config::Host {
            cwd: std::path::PathBuf::from("/srv"),
            hostname: None,
        };
        let config = crate::config::Config::parse(
            std::path::Path::new("/etc/mxkeys/t.toml"),
            "resync_interval = \"2h\"\n[[source]]\ntype = \"traefik\"\npath = \"acme.json\"\n[[target]]\nname = \"mail\"\ndomains = [\"mx.example\"]\nfullchain = \"a/f.pem\"\nkey = \"a/k.pem\"\n[[target]]\nname = \"imap\"\ndomains = [\"imap.example\"]\nfullchain = \"b/f.pem\"\nkey = \"b/k.pem\"\n",
            &host,
        )
        .unwrap();
        assert_eq!(config.targets.len(), 2);
        let metrics = Metrics::default();
        metrics.configure(&Arc::new(config.clone()));
        let text = metrics.render();
        for t in &config.targets {
            let line = format!("mxkeys_rollbacks_total{{target=\"{}\"}} 0", t.name);
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        let interval = format!(
            "mxkeys_resync_interval_seconds {}",
            config.daemon.resync_interval.as_secs()
        );
        assert!(text.lines().any(|l| l == interval), "{text}");
        assert!(metrics.config().is_some());
        // Before any reconcile, no last result.
        assert!(!text.contains("\nmxkeys_last_reconcile_success "), "{text}");
    }

    #[test]
    fn get_status_serves_the_page_under_a_strict_policy_and_503_before_a_configuration() {
        let get = |metrics: &Metrics, method: Method, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            respond(&req, metrics)
        };
        let metrics = Metrics::default();
        let none = get(&metrics, Method::GET, "/status");
        assert_eq!(none.status(), StatusCode::SERVICE_UNAVAILABLE);

        let host = crate::config::Host {
            cwd: std::path::PathBuf::from("/nonexistent-mxkeys-test"),
            hostname: None,
        };
        let config = crate::config::Config::parse(
            std::path::Path::new("/etc/mxkeys/t.toml"),
            "[[source]]\ntype = \"traefik\"\npath = \"acme.json\"\n[[target]]\nname = \"mail\"\ndomains = [\"mx.example\"]\nfullchain = \"a/f.pem\"\nkey = \"a/k.pem\"\n",
            &host,
        )
        .unwrap();
        metrics.configure(&Arc::new(config));
        for method in [Method::GET, Method::HEAD] {
            let page = get(&metrics, method.clone(), "/status");
            assert_eq!(page.status(), StatusCode::OK, "{method}");
            let header = |name: &str| {
                page.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            assert_eq!(
                header("content-type").as_deref(),
                Some("text/html; charset=utf-8")
            );
            assert_eq!(
                header("content-security-policy").as_deref(),
                Some("default-src 'none'; style-src 'unsafe-inline'; img-src data:")
            );
            assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
        }
        let page = get(&metrics, Method::GET, "/status");
        let body = String::from_utf8(futures_body(page.into_body())).unwrap();
        assert!(
            body.contains("<article class=\"target\" data-target=\"mail\" data-state=\"missing\">"),
            "{body}"
        );
        let other = get(&metrics, Method::GET, "/nope");
        assert_eq!(other.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            futures_body(other.into_body()),
            b"try /metrics, /healthz or /status\n"
        );
    }

    /// The bytes of a full body (it is ready: no runtime needed).
    fn futures_body(body: Full<Bytes>) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        let fut = body.collect();
        let mut fut = std::pin::pin!(fut);
        let waker = std::task::Waker::noop();
        match fut
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker))
        {
            std::task::Poll::Ready(Ok(c)) => c.to_bytes().to_vec(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn a_long_health_line_is_cut() {
        let mut m = healthy();
        m.dkim_error = Some("x".repeat(1000));
        let why = verdict(&m).unwrap_err().to_string();
        assert_eq!(why.chars().count(), HEALTH_LINE_MAX);
        assert!(why.starts_with("dkim: xxx") && why.ends_with('…'), "{why}");
    }

    #[test]
    fn dane_match_is_one_per_host_and_port_and_the_last_pass_replaces_the_previous() {
        use crate::dane::check::{AddressCheck, EndpointCheck, Outcome};
        let check = |host: &str, port: u16, outcome: Outcome| EndpointCheck {
            host: host.to_owned(),
            port,
            owner: crate::dane::check::owner(host, port),
            results: vec![AddressCheck {
                address: None,
                outcome,
            }],
        };
        let record = format!("3 1 1 {}", "ab".repeat(32)).parse().unwrap();
        let metrics = Metrics::default();
        metrics.set_dane_checks(&[
            check("mx1.example.org", 25, Outcome::Match { record }),
            check("mx1.example.org", 465, Outcome::NoRecords),
            check("mx\"2", 25, Outcome::Insecure("TLSA".to_owned())),
        ]);
        let text = metrics.render();
        for line in [
            "mxkeys_dane_match{host=\"mx1.example.org\",port=\"25\"} 1",
            "mxkeys_dane_match{host=\"mx1.example.org\",port=\"465\"} 0",
            "mxkeys_dane_match{host=\"mx\\\"2\",port=\"25\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        metrics.set_dane_checks(&[check("mx1.example.org", 25, Outcome::NoRecords)]);
        let rows: Vec<String> = metrics
            .render()
            .lines()
            .filter(|l| l.starts_with("mxkeys_dane_match{"))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            rows,
            ["mxkeys_dane_match{host=\"mx1.example.org\",port=\"25\"} 0"]
        );
    }

    #[test]
    fn the_dane_gate_series_show_which_dane_target_waits_and_until_when() {
        use crate::dane::gate::WaitReason;
        use crate::dane::tlsa::Spec;
        use crate::pipeline::{Action, DaneHold, Gate, TargetReport};
        let slot = |name: &str, action, gate| TargetReport {
            name: name.to_owned(),
            target: 0,
            slot: 0,
            served: None,
            action,
            refused: Vec::new(),
            unrelated: 0,
            gate,
        };
        let hold = |until| {
            Action::Held(DaneHold::sample(
                "ab",
                until,
                WaitReason::NotSeen { spec: Spec::EE },
            ))
        };
        let report = Report {
            targets: vec![
                slot("held", hold(Some(1_800_000_000)), Some(Gate::Held)),
                slot("unseen", hold(None), Some(Gate::Held)),
                slot("open", Action::UpToDate, Some(Gate::Open)),
                slot("plain", Action::UpToDate, None),
            ],
            ..Report::default()
        };
        let m = Metrics::default();
        m.record(&report, 0);
        let text = m.render();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("mxkeys_dane_gate"))
            .collect();
        assert_eq!(
            lines,
            [
                "mxkeys_dane_gate_waiting{target=\"held\"} 1",
                "mxkeys_dane_gate_waiting{target=\"open\"} 0",
                "mxkeys_dane_gate_waiting{target=\"unseen\"} 1",
                "mxkeys_dane_gate_until_seconds{target=\"held\"} 1800000000",
            ]
        );
        assert_eq!(m.health(), (true, "ok".to_owned()), "a hold is healthy");
    }

    fn sts_plan(step: crate::mta_sts::order::Step, refused: bool) -> crate::mta_sts::order::Plan {
        use crate::mta_sts::order::{Mode, Plan, Policy, Refusal, RefuseReason};
        Plan {
            policy: Policy {
                mode: Mode::Testing,
                mx: ["mx.example.test".to_owned()].into(),
                max_age: 604_800,
                id: "id1".to_owned(),
            },
            refused: refused.then(|| Refusal {
                host: "mx.example.test".to_owned(),
                reason: RefuseReason::NotChecked,
                keep: Mode::Testing,
            }),
            step,
        }
    }

    fn sts_config(state_dir: &std::path::Path, tls_rpt: bool) -> crate::config::Config {
        let host = crate::config::Host {
            cwd: std::path::PathBuf::from("/srv"),
            hostname: crate::names::DnsName::parse("mx.example.test").ok(),
        };
        let rpt = if tls_rpt {
            "[tls_rpt]\nrua = [\"mailto:t@example.test\"]\n"
        } else {
            ""
        };
        crate::config::Config::parse(
            std::path::Path::new("/etc/mxkeys/t.toml"),
            &format!(
                "state_dir = {:?}\n[dns.ns]\ntype = \"manual\"\n[mta_sts]\ndomains = [\"a.test\", \"b.test\", \"c.test\"]\nmx = [\"mx.example.test\"]\ndns = \"ns\"\nwebroot = \"/var/www\"\n{rpt}",
                state_dir.display()
            ),
            &host,
        )
        .unwrap()
    }

    fn lines_with(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_cluster_series_say_up_which_shared_job_this_host_leads_and_the_fenced_writes() {
        let m = Metrics::default();
        assert!(
            lines_with(&m.render(), "mxkeys_cluster_").is_empty(),
            "no cluster series without [cluster]"
        );
        let jobs = ["acme/a".to_owned(), "acme/b".to_owned(), "dkim".to_owned()];
        let health = crate::cluster::Health {
            reachable: true,
            since: 1,
            last_error: None,
            leading: vec!["acme/b".to_owned()],
            fenced_writes: 3,
        };
        m.set_cluster(&health, &jobs);
        assert_eq!(
            lines_with(&m.render(), "mxkeys_cluster_"),
            [
                "mxkeys_cluster_up 1",
                "mxkeys_cluster_leader{shared_job=\"acme/a\"} 0",
                "mxkeys_cluster_leader{shared_job=\"acme/b\"} 1",
                "mxkeys_cluster_leader{shared_job=\"dkim\"} 0",
                "mxkeys_cluster_fenced_writes_total 3",
            ]
        );
        let lost = crate::cluster::Health {
            reachable: false,
            leading: Vec::new(),
            ..health
        };
        m.set_cluster(&lost, &jobs);
        let text = m.render();
        assert_eq!(
            lines_with(&text, "mxkeys_cluster_up "),
            ["mxkeys_cluster_up 0"]
        );
        assert_eq!(
            lines_with(&text, "mxkeys_cluster_leader{shared_job=\"acme/b\"}"),
            ["mxkeys_cluster_leader{shared_job=\"acme/b\"} 0"]
        );
    }

    #[test]
    fn the_mta_sts_series_say_per_domain_whether_it_is_in_step_refused_and_its_max_age() {
        use crate::mta_sts::order::Step;
        use crate::mta_sts::pass::{DomainOutcome, MtaStsPass};
        let tmp = tempfile::tempdir().unwrap();
        let config = sts_config(tmp.path(), false);
        let metrics = Metrics::default();
        let outcome = |domain: &str, plan| DomainOutcome {
            domain: domain.to_owned(),
            plan,
        };
        metrics.set_mta_sts(
            &config,
            &MtaStsPass {
                domains: vec![
                    outcome(
                        "a.test",
                        Some(sts_plan(
                            Step::InStep {
                                id: "id1".to_owned(),
                            },
                            false,
                        )),
                    ),
                    outcome(
                        "b.test",
                        Some(sts_plan(
                            Step::PublishId {
                                id: "id1".to_owned(),
                            },
                            true,
                        )),
                    ),
                    // Could not be looked at: not in step, no max_age.
                    outcome("c.test", None),
                    // A disable waiting out the old max_age.
                    outcome(
                        "d.test",
                        Some(sts_plan(
                            Step::Wait {
                                until: Some(1_800_000_000),
                                reason: crate::mta_sts::order::WaitReason::OldMaxAge {
                                    until: 1_800_000_000,
                                },
                            },
                            false,
                        )),
                    ),
                ],
                ..MtaStsPass::default()
            },
        );
        let text = metrics.render();
        assert_eq!(
            lines_with(&text, "mxkeys_mta_sts_"),
            [
                "mxkeys_mta_sts_in_step{domain=\"a.test\"} 1",
                "mxkeys_mta_sts_in_step{domain=\"b.test\"} 0",
                "mxkeys_mta_sts_in_step{domain=\"c.test\"} 0",
                "mxkeys_mta_sts_in_step{domain=\"d.test\"} 0",
                "mxkeys_mta_sts_enforce_refused{domain=\"a.test\"} 0",
                "mxkeys_mta_sts_enforce_refused{domain=\"b.test\"} 1",
                "mxkeys_mta_sts_enforce_refused{domain=\"c.test\"} 0",
                "mxkeys_mta_sts_enforce_refused{domain=\"d.test\"} 0",
                "mxkeys_mta_sts_wait_until_timestamp_seconds{domain=\"d.test\"} 1800000000",
                "mxkeys_mta_sts_policy_max_age_seconds{domain=\"a.test\"} 604800",
                "mxkeys_mta_sts_policy_max_age_seconds{domain=\"b.test\"} 604800",
                "mxkeys_mta_sts_policy_max_age_seconds{domain=\"d.test\"} 604800",
            ]
        );
        // Without [tls_rpt]: no TLS-RPT series.
        assert!(!text.contains("mxkeys_tls_rpt_"), "{text}");
        // The next pass replaces the last: a domain no longer configured goes.
        metrics.set_mta_sts(&config, &MtaStsPass::default());
        assert!(lines_with(&metrics.render(), "mxkeys_mta_sts_").is_empty());
    }

    #[test]
    fn the_tls_rpt_totals_are_read_again_only_when_the_store_changed() {
        use crate::tls_rpt::store::{Limits, Store};
        let tmp = tempfile::tempdir().unwrap();
        let config = sts_config(tmp.path(), true);
        let metrics = Metrics::default();
        metrics.set_mta_sts(&config, &crate::mta_sts::pass::MtaStsPass::default());
        let loads = || metrics.tls_rpt.lock().unwrap().loads;
        let sessions = |text: &str| lines_with(text, "mxkeys_tls_rpt_sessions_total{");
        // No store yet: the series with no line, read once.
        assert!(sessions(&metrics.render()).is_empty());
        metrics.render();
        assert_eq!(loads(), 1);

        let store = Store::new(config.state_dir.tls_rpt_dir(), Limits::default());
        let report = |org: &str, id: &str, ok: u64, failed: u64| {
            let json = format!(
                r#"{{"organization-name": {org:?}, "report-id": {id:?},
                "date-range": {{"start-datetime": "2026-11-28T00:00:00Z",
                                "end-datetime": "2026-11-28T23:59:59Z"}},
                "policies": [{{"policy": {{"policy-type": "sts", "policy-domain": "a.test"}},
                               "summary": {{"total-successful-session-count": {ok},
                                            "total-failure-session-count": {failed}}},
                               "failure-details": [{{"result-type": "certificate-expired",
                                                     "failed-session-count": {failed}}}]}}]}}"#
            );
            crate::tls_rpt::report::accept(json.as_bytes(), Some("application/tlsrpt+json"))
                .unwrap()
        };
        store.save(&report("Org \"A\"", "r1", 5, 2)).unwrap();
        let text = metrics.render();
        assert_eq!(
            sessions(&text),
            [
                "mxkeys_tls_rpt_sessions_total{organization=\"Org \\\"A\\\"\",result=\"failure\"} 2",
                "mxkeys_tls_rpt_sessions_total{organization=\"Org \\\"A\\\"\",result=\"successful\"} 5",
            ]
        );
        assert!(
            text.contains("mxkeys_tls_rpt_failures_total{organization=\"Org \\\"A\\\"\",result_type=\"certificate-expired\"} 2"),
            "{text}"
        );
        assert_eq!(loads(), 2);
        // Scrapes with nothing new do not read the reports again.
        assert_eq!(metrics.render(), text);
        assert_eq!(loads(), 2);
        // A second report of the same organization, written within the
        // same clock tick as far as the test can tell: counted.
        store.save(&report("Org \"A\"", "r2", 1, 0)).unwrap();
        assert!(metrics.render().contains(
            "mxkeys_tls_rpt_sessions_total{organization=\"Org \\\"A\\\"\",result=\"successful\"} 6"
        ));
        assert_eq!(loads(), 3);
    }
}
