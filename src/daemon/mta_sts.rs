//! The daemon's MTA-STS task: with `[mta_sts] listen` it runs the built-in
//! HTTPS responder ([`crate::mta_sts::responder`]), and it runs the
//! MTA-STS pass ([`crate::mta_sts::pass::pass`]) at start, when the pass
//! asked to be woken, after every reconcile (a certificate of
//! `mta-sts.DOMAIN` may have been installed: the responder rereads its
//! files then), on a new configuration (the responder is restarted when
//! what it serves changed), and at least every [`RESYNC`] (MX sets change
//! behind mxkeys' back). The pass runs off the runtime
//! ([`super::tasks::off_runtime`]); every step of it is saved, so one cut
//! at shutdown is redone by the next start.
//!
//! The pass writes the policy files, the responder reads them: `sync` (a
//! separate process) and the daemon never need to talk. Which certificate
//! serves which name ([`responder_certs`]) is decided from the
//! configuration alone (pure): every target whose `domains` cover
//! `mta-sts.DOMAIN` of a policy domain, or the host of an `https` rua.
//! With an `https` rua of `[tls_rpt]`, the responder also takes TLS
//! reports at its (host, path) ([`report_endpoints`]) into
//! `state_dir/tls-rpt`, whose totals the metrics render.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch as channel};
use tokio::time::{Instant, sleep, sleep_until};

use super::tasks::{self, Pass};
use super::until_ready;
use crate::config::{Config, Serve};
use crate::mta_sts::pass::MtaStsPass;
use crate::mta_sts::responder::{CertFiles, Reports, Responder, ResponderConfig};
use crate::names::{DnsName, covers};
use crate::tls_rpt::store::{Limits, Store};

/// The longest the task sleeps between passes.
pub const RESYNC: Duration = Duration::from_secs(600);

/// On SIGTERM, the longest a DNS write under way may take to finish.
const MTA_STS_STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a restarted responder waits for its old socket to be closed.
const REBIND_TRIES: u32 = 50;

/// The names the responder needs a certificate for, and the certificates
/// that cover them (pure: from the configuration alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponderCerts {
    /// One per slot of every target covering a wanted name, in
    /// configuration order: its `domains` and installed files.
    pub certs: Vec<CertFiles>,
    /// The wanted names no target covers: the responder cannot serve them.
    pub uncovered: Vec<DnsName>,
}

/// `mta-sts.DOMAIN` of every `[mta_sts]` domain, then the host of every
/// `https` rua of `[tls_rpt]` (lower case, no duplicates).
pub fn wanted_names(config: &Config) -> Vec<DnsName> {
    let mut names: Vec<DnsName> = Vec::new();
    let policy = config
        .mta_sts
        .iter()
        .flat_map(|m| m.domains.iter())
        .filter_map(|d| DnsName::parse(&format!("mta-sts.{d}")).ok());
    let rua = config
        .tls_rpt
        .iter()
        .flat_map(|t| t.rua.iter())
        .filter(|r| r.is_https())
        .filter_map(|r| DnsName::parse(&https_host(r.as_str())?).ok());
    for n in policy.chain(rua) {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    names
}

/// The host of an `https://HOST[:PORT]/PATH` URI, lower case.
pub fn https_host(uri: &str) -> Option<String> {
    https_endpoint(uri).map(|(host, _)| host)
}

/// The (host, path) a sender posts TLS reports to for an `https` rua: the
/// host lower case, the path without query or fragment (`/` when none).
pub fn https_endpoint(uri: &str) -> Option<(String, String)> {
    let rest = uri
        .get(..8)?
        .eq_ignore_ascii_case("https://")
        .then(|| &uri[8..])?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split(':').next()?;
    if host.is_empty() {
        return None;
    }
    let path = tail.split(['?', '#']).next().unwrap_or("");
    let path = if path.is_empty() { "/" } else { path };
    Some((host.to_ascii_lowercase(), path.to_owned()))
}

/// Every (host, path) of the `https` ruas of `[tls_rpt]`: where the
/// responder takes reports.
pub fn report_endpoints(config: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in config
        .tls_rpt
        .iter()
        .flat_map(|t| t.rua.iter())
        .filter(|r| r.is_https())
        .filter_map(|r| https_endpoint(r.as_str()))
    {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    out
}

/// Which certificates the responder serves (see [`ResponderCerts`]): a
/// slot's fullchain (or combined, or cert file) and its key (or combined
/// file); a slot with neither pair is skipped.
pub fn responder_certs(config: &Config) -> ResponderCerts {
    let mut out = ResponderCerts::default();
    let wanted = wanted_names(config);
    for name in &wanted {
        if !config
            .targets
            .iter()
            .any(|t| t.domains.iter().any(|d| covers(d.as_str(), name).is_some()))
        {
            out.uncovered.push(name.clone());
        }
    }
    for t in &config.targets {
        let serves = wanted
            .iter()
            .any(|n| t.domains.iter().any(|d| covers(d.as_str(), n).is_some()));
        if !serves {
            continue;
        }
        for slot in &t.slots {
            let f = &slot.files;
            let chain = f
                .fullchain
                .as_ref()
                .or(f.combined.as_ref())
                .or(f.cert.as_ref());
            let key = f.key.as_ref().or(f.combined.as_ref());
            if let (Some(fullchain), Some(key)) = (chain, key) {
                out.certs.push(CertFiles {
                    names: t.domains.clone(),
                    fullchain: fullchain.clone(),
                    key: key.clone(),
                });
            }
        }
    }
    out
}

/// The problem lines `mxkeys check` prints for `[mta_sts] listen`: each
/// name the responder must serve that no target covers.
pub fn check_lines(config: &Config) -> Vec<String> {
    let Some(m) = &config.mta_sts else {
        return Vec::new();
    };
    if !matches!(m.serve, Serve::Listen(_)) {
        return Vec::new();
    }
    responder_certs(config)
        .uncovered
        .iter()
        .map(|n| {
            format!(
                "mta-sts: no target covers {n}: the responder cannot serve it; add a [[target]] whose domains include {n}"
            )
        })
        .collect()
}

/// What the responder is started with; a new configuration restarts it
/// only when this changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ResponderWant {
    addr: SocketAddr,
    certs: Vec<CertFiles>,
    policies: PathBuf,
    /// Where reports are taken (`[tls_rpt]` https ruas), and stored.
    reports: Option<(Vec<(String, String)>, PathBuf)>,
}

fn responder_want(config: &Config) -> Option<ResponderWant> {
    let m = config.mta_sts.as_ref()?;
    let Serve::Listen(addr) = m.serve else {
        return None;
    };
    Some(ResponderWant {
        addr,
        certs: responder_certs(config).certs,
        policies: config.state_dir.mta_sts_www(),
        reports: Some(report_endpoints(config))
            .filter(|e| !e.is_empty())
            .map(|e| (e, config.state_dir.tls_rpt_dir())),
    })
}

/// The running responder and what it was started with.
struct Running {
    want: ResponderWant,
    responder: Responder,
}

impl Running {
    /// Starts the responder (rebinding a just-released address for up to
    /// five seconds).
    async fn start(want: ResponderWant) -> Option<Running> {
        let mut tries = 0;
        loop {
            let reports = want.reports.as_ref().map(|(endpoints, dir)| Reports {
                endpoints: endpoints.clone(),
                store: Store::new(dir.clone(), Limits::default()),
            });
            let config = ResponderConfig {
                addr: want.addr,
                certs: want.certs.clone(),
                policies: want.policies.clone(),
                reports,
            };
            match Responder::start(config).await {
                Ok(responder) => {
                    tracing::info!(
                        "mta-sts: responder on {} ({} certificates)",
                        responder.local_addr(),
                        want.certs.len()
                    );
                    return Some(Running { want, responder });
                }
                Err(e) if tries < REBIND_TRIES => {
                    tracing::debug!("{e}; trying again");
                    tries += 1;
                    sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::error!("{e}");
                    return None;
                }
            }
        }
    }
}

pub(super) struct MtaStsTask {
    pub config: Arc<Config>,
    pub metrics: Arc<super::metrics::Metrics>,
    /// A reconcile happened.
    pub reconciled: mpsc::UnboundedReceiver<()>,
    pub stop: channel::Receiver<bool>,
}

impl MtaStsTask {
    pub async fn run(
        mut self,
        mut config: channel::Receiver<Arc<Config>>,
        mut ready: channel::Receiver<bool>,
    ) {
        if !until_ready(&mut ready, &mut self.stop).await {
            return;
        }
        self.metrics.set_tls_rpt(&self.config);
        let mut running = None;
        self.responder(&mut running).await;
        let mut next = Some(Instant::now());
        loop {
            tokio::select! {
                // A stop wins over a pass falling due at the same moment.
                biased;
                _ = self.stop.changed() => break,
                Ok(()) = config.changed() => {
                    self.config = config.borrow_and_update().clone();
                    self.metrics.set_tls_rpt(&self.config);
                    self.responder(&mut running).await;
                    next = Some(Instant::now());
                }
                Some(()) = self.reconciled.recv() => {
                    while self.reconciled.try_recv().is_ok() {}
                    if let Some(r) = &running {
                        for e in r.responder.reload() {
                            tracing::warn!("{e}");
                        }
                    }
                    next = Some(Instant::now());
                }
                _ = sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                    let Some(pass) = self.pass().await else {
                        break;
                    };
                    // One that could not bind is tried again.
                    self.responder(&mut running).await;
                    self.metrics.set_mta_sts(&self.config, &pass);
                    let wait = after_pass(&pass, crate::now());
                    next = Some(Instant::now() + Duration::from_secs(wait));
                }
            }
        }
    }

    /// Starts, restarts or stops the responder as the configuration wants.
    async fn responder(&self, running: &mut Option<Running>) {
        let want = responder_want(&self.config);
        if running.as_ref().map(|r| &r.want) == want.as_ref() {
            return;
        }
        // The old one goes first: it holds the address.
        *running = None;
        for line in check_lines(&self.config) {
            tracing::warn!("{line}");
        }
        if let Some(want) = want {
            *running = Running::start(want).await;
        }
    }

    /// One pass, off the runtime; `None` when the daemon is stopping.
    async fn pass(&mut self) -> Option<MtaStsPass> {
        if self.config.mta_sts.is_none() && self.config.tls_rpt.is_none() {
            return Some(MtaStsPass::default());
        }
        let config = self.config.clone();
        let grace = self.config.daemon.stop_timeout.min(MTA_STS_STOP_GRACE);
        let pass = tasks::off_runtime(&mut self.stop, grace, || async move {
            crate::mta_sts::pass::pass(&config, crate::now()).await
        })
        .await;
        if *self.stop.borrow() {
            return None;
        }
        match pass {
            // The pass logged its lines.
            Pass::Done(p) => Some(p),
            Pass::Cut => None,
            // Tried again in a minute.
            Pass::Failed(e) => {
                tracing::error!("mta-sts: the pass failed: {e}");
                Some(MtaStsPass {
                    next_wake: Some(crate::now() + 60),
                    ..MtaStsPass::default()
                })
            }
        }
    }
}

/// How many seconds to sleep after a pass run at `now` (pure): to its
/// `next_wake`, at least 1 s, at most [`RESYNC`].
fn after_pass(pass: &MtaStsPass, now: i64) -> u64 {
    let most = RESYNC.as_secs();
    pass.next_wake
        .map_or(most, |w| u64::try_from(w.saturating_sub(now)).unwrap_or(0))
        .clamp(1, most)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_sleeps_to_its_wake_within_a_second_and_ten_minutes() {
        let pass = |next_wake| MtaStsPass {
            next_wake,
            ..MtaStsPass::default()
        };
        for (what, p, want) in [
            ("a wake in 30 s", pass(Some(1_030)), 30),
            ("nothing to wait for: the resync", pass(None), 600),
            ("a wake in the past: 1 s", pass(Some(900)), 1),
            ("far away: the resync", pass(Some(i64::MAX)), 600),
        ] {
            assert_eq!(after_pass(&p, 1_000), want, "{what}");
        }
    }

    fn config(tables: &str) -> Config {
        let host = crate::config::Host {
            cwd: PathBuf::from("/srv"),
            hostname: DnsName::parse("mx.example.test").ok(),
        };
        Config::parse(
            std::path::Path::new("/etc/mxkeys/t.toml"),
            &format!("state_dir = \"/var/lib/mxkeys\"\n[dns.ns]\ntype = \"manual\"\n{tables}"),
            &host,
        )
        .unwrap()
    }

    const TARGETS: &str = "
[[target]]
name = \"postfix\"
domains = [\"mx.example.test\"]
fullchain = \"/etc/postfix/fullchain.pem\"
key = \"/etc/postfix/key.pem\"

[[target]]
name = \"web\"
domains = [\"*.example.test\", \"example.test\"]
combined = \"/etc/web/combined.pem\"

[[target]]
name = \"reports\"
domains = [\"reports.other.test\"]
fullchain = \"/etc/reports/fullchain.pem\"
key = \"/etc/reports/key.pem\"
";

    #[test]
    fn the_responder_serves_the_targets_covering_its_names_and_check_names_the_uncovered() {
        let sts = "[mta_sts]\ndomains = [\"example.test\", \"example.org\"]\ndns = \"ns\"\nlisten = \"127.0.0.1:8443\"\n";
        let rpt = "[tls_rpt]\nrua = [\"mailto:t@example.test\", \"https://reports.other.test/v1\", \"https://nobody.test/v1\"]\n";
        let c = config(&format!("{sts}{rpt}{TARGETS}"));
        let got = responder_certs(&c);
        let files: Vec<(&str, &str)> = got
            .certs
            .iter()
            .map(|f| (f.fullchain.to_str().unwrap(), f.key.to_str().unwrap()))
            .collect();
        // mta-sts.example.test by the wildcard target (a combined file is
        // both), reports.other.test by its own; postfix covers none.
        assert_eq!(
            files,
            [
                ("/etc/web/combined.pem", "/etc/web/combined.pem"),
                ("/etc/reports/fullchain.pem", "/etc/reports/key.pem"),
            ]
        );
        assert_eq!(got.certs[0].names, c.targets[1].domains);
        let uncovered: Vec<&str> = got.uncovered.iter().map(DnsName::as_str).collect();
        assert_eq!(uncovered, ["mta-sts.example.org", "nobody.test"]);
        assert_eq!(
            check_lines(&c),
            [
                "mta-sts: no target covers mta-sts.example.org: the responder cannot serve it; add a [[target]] whose domains include mta-sts.example.org",
                "mta-sts: no target covers nobody.test: the responder cannot serve it; add a [[target]] whose domains include nobody.test",
            ]
        );
        // A webroot is served by another web server: no such line.
        let web = sts.replace("listen = \"127.0.0.1:8443\"", "webroot = \"/var/www\"");
        assert!(check_lines(&config(&format!("{web}{TARGETS}"))).is_empty());
    }

    #[test]
    fn an_https_rua_names_the_host_and_path_reports_are_posted_to() {
        for (uri, want) in [
            (
                "https://Reports.Example.Test/tlsrpt",
                Some(("reports.example.test", "/tlsrpt")),
            ),
            (
                "https://reports.example.test:8443/v1/x?k=v",
                Some(("reports.example.test", "/v1/x")),
            ),
            (
                "https://reports.example.test",
                Some(("reports.example.test", "/")),
            ),
            ("HTTPS://r.example.test#f", Some(("r.example.test", "/"))),
            ("mailto:tlsrpt@example.test", None),
            ("https:///x", None),
            ("http://r.example.test/x", None),
        ] {
            let got = https_endpoint(uri);
            let got = got.as_ref().map(|(h, p)| (h.as_str(), p.as_str()));
            assert_eq!(got, want, "{uri}");
            assert_eq!(https_host(uri).as_deref(), want.map(|w| w.0), "{uri}");
        }
    }
}
