//! `mxkeys status`: what each target holds now, read from its files, with
//! where it came from as recorded by the last run. Never prints key material.
//!
//! In `--json`, a value that does not exist is `null`, never `""`.
//!
//! A slot of a DANE target also shows what the DANE gate decided in the
//! last reconcile (read from the ledger, `state_dir/dane.json`): `open`,
//! `waiting` for which certificate and until when, or `forced`.
//!
//! With `[mta_sts]`, an MTA-STS section: per policy domain the policy live
//! everywhere, the id last published, and the planner's next step and any
//! refusal of `enforce`, recomputed at now from the ledger
//! (`state_dir/mta-sts.json`) by [`mta_sts_plans`] (pure: no network);
//! with `[tls_rpt]`, the sessions senders reported, by organization.
//!
//! With `[cluster]`, one cluster line from what the daemon's cluster task
//! last recorded (`state_dir/cluster.json`): reachable or not and since
//! when, the last error, the jobs this host leads, fenced writes refused.
//!
//! With `[dkim]`, every key of the book with the times it entered each
//! state and its next transition (the timeline `--html` draws).
//!
//! [`Status::gather`] reads; [`html`] renders one self-contained page from
//! what it gathered (pure), for `status --html FILE` and the metrics
//! listener's `GET /status`.

pub mod html;

use serde::Serialize;

use crate::cert::{self, Leaf, Timeliness};
use crate::config::Config;
use crate::dane::ledger::{GateState, Ledger};
use crate::install;
use crate::state::{self, State};

/// A moment, as a Unix timestamp; written as RFC 3339 in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub i64);

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::rfc3339(self.0))
    }
}

impl std::fmt::Display for Time {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::rfc3339(self.0))
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    /// When this was gathered.
    pub at: Time,
    pub targets: Vec<TargetStatus>,
    pub last_run: Option<state::Run>,
    /// What `mxkeys run` last recorded, and whether it is still running.
    pub daemon: Option<DaemonStatus>,
    /// Every `acme` source: what it holds and when it renews.
    pub acme: Vec<AcmeStatus>,
    /// `[mta_sts]` and `[tls_rpt]`, when either is configured.
    pub mta_sts: Option<MtaStsStatus>,
    /// With `[cluster]`: this host's id and the daemon's last view of the
    /// cluster (`health` is `null` before the daemon recorded one).
    pub cluster: Option<ClusterStatus>,
    /// With `[dkim]`: every key, per domain, on its timeline.
    pub dkim: Option<DkimStatus>,
}

/// The DKIM section: the keys of the book, per domain.
#[derive(Debug, Serialize)]
pub struct DkimStatus {
    pub domains: Vec<DkimDomainStatus>,
    /// Why the book could not be read, when it could not.
    pub problem: Option<String>,
}

/// One domain's keys, oldest first.
#[derive(Debug, Serialize)]
pub struct DkimDomainStatus {
    pub domain: String,
    pub keys: Vec<DkimKeyStatus>,
}

/// One key: where it stands, when it got there, and what comes next.
#[derive(Debug, Serialize)]
pub struct DkimKeyStatus {
    pub selector: String,
    /// `SELECTOR._domainkey.DOMAIN`.
    pub record_name: String,
    pub algorithm: &'static str,
    /// `generated`, `published`, `active`, `draining` or `revoked`.
    pub state: String,
    /// What happened to it so far, oldest first: `generated`,
    /// `published`, `verified` (seen on every authoritative server),
    /// `active`, `draining`, `revoked` (each once, when known).
    pub events: Vec<KeyEvent>,
    /// The next transition and when it is due (`null` when none is
    /// scheduled: an active key whose successor is on its way).
    pub next: Option<KeyEvent>,
}

/// One point on a key's timeline.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyEvent {
    pub what: String,
    pub at: Time,
}

impl DkimStatus {
    /// The section from the book; `None` without `[dkim]`.
    pub fn gather(config: &Config) -> Option<DkimStatus> {
        let d = config.dkim.as_ref()?;
        Some(match crate::dkim::timeline(config) {
            Ok(keys) => DkimStatus::from_keys(keys)
                .with_domains(d.domains.iter().map(crate::names::DnsName::as_str)),
            Err(e) => DkimStatus {
                domains: Vec::new(),
                problem: Some(e.to_string()),
            },
        })
    }

    /// Every domain of `configured` the book has no key for yet, added
    /// with no key (unsigned, and shown so), in name order like the
    /// book's (pure).
    pub fn with_domains<'a>(mut self, configured: impl IntoIterator<Item = &'a str>) -> DkimStatus {
        for domain in configured {
            if !self.domains.iter().any(|d| d.domain == domain) {
                self.domains.push(DkimDomainStatus {
                    domain: domain.to_owned(),
                    keys: Vec::new(),
                });
            }
        }
        self.domains.sort_by(|a, b| a.domain.cmp(&b.domain));
        self
    }

    /// The section from the keys in book order with their next
    /// transitions (pure).
    pub fn from_keys(keys: Vec<crate::dkim::Scheduled>) -> DkimStatus {
        use crate::dkim::machine::KeyState;
        let mut domains: Vec<DkimDomainStatus> = Vec::new();
        for (k, next) in keys {
            let mut events: Vec<KeyEvent> = [
                ("generated", Some(k.created_at)),
                ("published", k.entered_at(KeyState::Published)),
                ("verified", k.verified_at),
                ("active", k.activated_at.or(k.entered_at(KeyState::Active))),
                ("draining", k.entered_at(KeyState::Draining)),
                ("revoked", k.entered_at(KeyState::Revoked)),
            ]
            .into_iter()
            .filter_map(|(what, at)| {
                at.map(|at| KeyEvent {
                    what: what.to_owned(),
                    at: Time(at),
                })
            })
            .collect();
            events.sort_by_key(|e| e.at);
            let key = DkimKeyStatus {
                selector: k.selector.clone(),
                record_name: k.record_name(),
                algorithm: k.algorithm.name(),
                state: k.state.to_string(),
                events,
                next: next.map(|(at, what)| KeyEvent {
                    what: what.to_owned(),
                    at: Time(at),
                }),
            };
            match domains.last_mut() {
                Some(d) if d.domain == k.domain => d.keys.push(key),
                _ => domains.push(DkimDomainStatus {
                    domain: k.domain.clone(),
                    keys: vec![key],
                }),
            }
        }
        DkimStatus {
            domains,
            problem: None,
        }
    }
}

/// The cluster section: who this host is, and the recorded health.
#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub host_id: Option<String>,
    pub health: Option<crate::cluster::Health>,
    /// Why the record could not be read, when it could not.
    pub problem: Option<String>,
}

impl ClusterStatus {
    /// The section from `state_dir/cluster.json`; `None` without
    /// `[cluster]`.
    pub fn gather(config: &Config) -> Option<ClusterStatus> {
        config.cluster.as_ref()?;
        let (health, problem) = match config
            .state_dir
            .cluster_record::<crate::cluster::Health>()
            .load()
        {
            Ok(h) => (h, None),
            Err(e) => (None, Some(e.to_string())),
        };
        Some(ClusterStatus {
            host_id: config.host_id.as_ref().map(|h| h.as_str().to_owned()),
            health,
            problem,
        })
    }

    /// One line (two with a last error), pure.
    pub fn to_text(&self) -> String {
        let host = self.host_id.as_deref().unwrap_or("(no host_id)");
        let Some(h) = &self.health else {
            return format!(
                "cluster: host {host}; {}\n",
                self.problem
                    .as_deref()
                    .unwrap_or("no state recorded yet (is mxkeys run running?)")
            );
        };
        let mut out = if h.reachable {
            format!(
                "cluster: host {host}; reachable since {}; leads {}; {} fenced writes refused\n",
                crate::rfc3339(h.since),
                if h.leading.is_empty() {
                    "no job".to_owned()
                } else {
                    h.leading.join(", ")
                },
                h.fenced_writes
            )
        } else {
            format!(
                "cluster: host {host}; UNREACHABLE since {} (shared orders wait; installed certificates stay); {} fenced writes refused\n",
                crate::rfc3339(h.since),
                h.fenced_writes
            )
        };
        if let Some(e) = &h.last_error {
            out.push_str(&format!("  last error   {e}\n"));
        }
        out
    }
}

/// The MTA-STS section: every policy domain, and the TLS-RPT totals.
#[derive(Debug, Serialize)]
pub struct MtaStsStatus {
    pub domains: Vec<MtaStsDomainStatus>,
    /// Sessions reported by senders, per organization (`null` without
    /// `[tls_rpt]`).
    pub tls_rpt: Option<Vec<TlsRptTotal>>,
}

/// One `[mta_sts]` domain: what the ledger recorded, and the plan at now.
#[derive(Debug, Serialize)]
pub struct MtaStsDomainStatus {
    pub domain: String,
    /// The policy whose id every authoritative server answered last.
    pub live_id: Option<String>,
    pub live_mode: Option<String>,
    /// The `_mta-sts` id mxkeys last wrote (seen or not).
    pub published_id: Option<String>,
    /// `mxkeys mta-sts disable` was asked for.
    pub disabled: bool,
    /// The policy to serve and publish now: its id and mode.
    pub policy_id: String,
    pub mode: String,
    /// The next step, one line.
    pub step: String,
    /// The policy is served and published everywhere, the MX set agrees.
    pub in_step: bool,
    /// Why `enforce` is refused, when it is.
    pub refused: Option<String>,
}

/// One organization's reported sessions.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TlsRptTotal {
    pub organization: String,
    pub successful: u64,
    pub failure: u64,
}

/// Per `[mta_sts]` domain, the planner's answer at `now` from the ledger
/// alone (pure). The wanted MX lines are `mx`, or when empty the MX set
/// the ledger last saw; the responders are `responders`, else the
/// `listen` address (a wildcard read as loopback), else those the ledger
/// recorded; the servers are those the ledger recorded.
pub fn mta_sts_plans(
    config: &Config,
    ledger: &crate::mta_sts::ledger::Ledger,
    now: i64,
) -> Vec<(
    String,
    crate::mta_sts::ledger::DomainLedger,
    crate::mta_sts::order::Plan,
)> {
    use crate::mta_sts::order;
    let Some(m) = &config.mta_sts else {
        return Vec::new();
    };
    let configured: Option<Vec<String>> = if !m.responders.is_empty() {
        Some(m.responders.iter().map(ToString::to_string).collect())
    } else if let crate::config::Serve::Listen(addr) = m.serve {
        Some(vec![listen_responder(addr).to_string()])
    } else {
        None
    };
    m.domains
        .iter()
        .map(|d| {
            let l = ledger.domains.get(d.as_str()).cloned().unwrap_or_default();
            let mx: std::collections::BTreeSet<String> = if m.mx.is_empty() {
                l.mx.hosts.clone()
            } else {
                m.mx.iter().map(|p| p.as_str().to_owned()).collect()
            };
            let responders = configured
                .clone()
                .unwrap_or_else(|| l.served.keys().cloned().collect());
            let servers: Vec<String> = l.txt.keys().cloned().collect();
            let plan = order::plan(&order::Inputs {
                wanted: order::Wanted {
                    mode: m.mode,
                    mx: &mx,
                    max_age: u64::from(m.max_age),
                },
                disable: l.disable,
                ledger: &l,
                responders: &responders,
                servers: &servers,
                id_of: crate::mta_sts::policy::id_of,
                now,
            });
            (d.as_str().to_owned(), l, plan)
        })
        .collect()
}

/// Where the built-in responder listening on `addr` is fetched back from:
/// `addr`, a wildcard read as loopback.
pub fn listen_responder(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    std::net::SocketAddr::new(ip, addr.port())
}

impl MtaStsStatus {
    /// The section from the ledger and the TLS-RPT totals (pure).
    pub fn from_ledger(
        config: &Config,
        ledger: &crate::mta_sts::ledger::Ledger,
        totals: Option<&crate::tls_rpt::metrics::Totals>,
        now: i64,
    ) -> MtaStsStatus {
        let domains = mta_sts_plans(config, ledger, now)
            .into_iter()
            .map(|(domain, l, plan)| MtaStsDomainStatus {
                domain,
                live_id: l.live.as_ref().map(|p| p.id.clone()),
                live_mode: l.live.as_ref().map(|p| p.mode.to_string()),
                published_id: l.published_id.clone(),
                disabled: l.disable,
                in_step: matches!(plan.step, crate::mta_sts::order::Step::InStep { .. }),
                policy_id: plan.policy.id.clone(),
                mode: plan.policy.mode.to_string(),
                step: plan.step.to_string(),
                refused: plan.refused.as_ref().map(ToString::to_string),
            })
            .collect();
        let tls_rpt = totals.map(|t| {
            let mut by_org: std::collections::BTreeMap<&str, TlsRptTotal> =
                std::collections::BTreeMap::new();
            for ((org, result), n) in &t.sessions {
                let e = by_org.entry(org).or_insert_with(|| TlsRptTotal {
                    organization: org.clone(),
                    successful: 0,
                    failure: 0,
                });
                if *result == "successful" {
                    e.successful = e.successful.saturating_add(*n);
                } else {
                    e.failure = e.failure.saturating_add(*n);
                }
            }
            by_org.into_values().collect()
        });
        MtaStsStatus { domains, tls_rpt }
    }

    /// The section from `state_dir` (the ledger, the report store) at
    /// `now`; `None` when neither `[mta_sts]` nor `[tls_rpt]` is set. An
    /// unreadable ledger reads as empty (with a warning).
    pub fn gather(config: &Config, now: i64) -> Option<MtaStsStatus> {
        if config.mta_sts.is_none() && config.tls_rpt.is_none() {
            return None;
        }
        let ledger = match config
            .state_dir
            .mta_sts_record::<crate::mta_sts::ledger::Ledger>()
            .load()
        {
            Ok(l) => l.unwrap_or_default(),
            Err(e) => {
                tracing::warn!("mta-sts: {e}");
                crate::mta_sts::ledger::Ledger::default()
            }
        };
        let totals = config.tls_rpt.as_ref().map(|_| {
            let store = crate::tls_rpt::store::Store::new(
                config.state_dir.tls_rpt_dir(),
                crate::tls_rpt::store::Limits::default(),
            );
            match store.load() {
                Ok((reports, _)) => crate::tls_rpt::metrics::aggregate(&reports),
                Err(e) => {
                    tracing::warn!("tls-rpt: {e}");
                    crate::tls_rpt::metrics::Totals::default()
                }
            }
        });
        Some(MtaStsStatus::from_ledger(
            config,
            &ledger,
            totals.as_ref(),
            now,
        ))
    }

    /// The section as text: one block per domain, then the TLS-RPT lines.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for d in &self.domains {
            out.push_str(&format!(
                "mta-sts {}:{}\n",
                d.domain,
                if d.disabled { " (disable asked)" } else { "" }
            ));
            match (&d.live_id, &d.live_mode) {
                (Some(id), Some(mode)) => {
                    out.push_str(&format!("  live         id {id}, mode {mode}\n"));
                }
                _ => out.push_str("  live         none\n"),
            }
            out.push_str(&format!(
                "  published    {}\n",
                d.published_id.as_deref().unwrap_or("none")
            ));
            out.push_str(&format!(
                "  policy       id {}, mode {}\n",
                d.policy_id, d.mode
            ));
            out.push_str(&format!("  next step    {}\n", d.step));
            if let Some(r) = &d.refused {
                out.push_str(&format!("  refused      {r}\n"));
            }
        }
        match &self.tls_rpt {
            Some(orgs) if orgs.is_empty() => out.push_str("tls-rpt: no reports received\n"),
            Some(orgs) => {
                out.push_str("tls-rpt: sessions reported\n");
                for o in orgs {
                    out.push_str(&format!(
                        "  {}: {} successful, {} failed\n",
                        o.organization, o.successful, o.failure
                    ));
                }
            }
            None => {}
        }
        out
    }
}

#[derive(Debug, Serialize)]
pub struct AcmeStatus {
    pub name: String,
    pub domains: Vec<String>,
    /// The certificate it holds (SHA-256) and until when.
    pub sha256: Option<String>,
    pub not_after: Option<String>,
    /// When it is next due for an order (or its backoff ends); null when
    /// nothing is scheduled.
    pub next_renewal: Option<String>,
    pub failures: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DaemonStatus {
    #[serde(flatten)]
    pub record: state::Daemon,
    pub running: bool,
}

#[derive(Debug, Serialize)]
pub struct TargetStatus {
    /// The slot's name: the target's, or `TARGET/KIND` for a target with
    /// one slot per key type.
    pub name: String,
    /// The target's name.
    pub target: String,
    pub domains: Vec<String>,
    /// The target's last reload and last check of what its services
    /// present, by any run (`null`: none recorded yet).
    pub last_reload: Option<ServiceEventStatus>,
    pub last_verification: Option<ServiceEventStatus>,
    pub installed: Option<InstalledCert>,
    /// Why `installed` is empty, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// For a DANE target: the gate's last decision (`null` before the
    /// first reconcile); absent for other targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dane_gate: Option<Option<GateStatus>>,
}

/// When a reload or check last ran, and how it ended.
#[derive(Debug, Serialize)]
pub struct ServiceEventStatus {
    pub at: Time,
    pub ok: bool,
    pub error: Option<String>,
}

impl ServiceEventStatus {
    fn from_record(e: &state::ServiceEvent) -> ServiceEventStatus {
        ServiceEventStatus {
            at: Time(e.at),
            ok: e.error.is_none(),
            error: e.error.clone(),
        }
    }
}

/// The DANE gate's last decision for a target.
#[derive(Debug, Serialize)]
pub struct GateStatus {
    /// `open`, `waiting` or `forced`.
    pub state: String,
    /// The certificate held or forced (SHA-256 of its leaf).
    pub sha256: Option<String>,
    /// When the gate opens if nothing changes.
    pub until: Option<String>,
    /// What it waits for (or why it was forced), one line.
    pub reason: Option<String>,
    /// When this was decided.
    pub decided_at: String,
}

impl GateStatus {
    fn from_ledger(g: &GateState) -> GateStatus {
        GateStatus {
            state: g.state.clone(),
            sha256: g.sha256.clone(),
            until: g.until.map(crate::rfc3339),
            reason: g.reason.clone(),
            decided_at: crate::rfc3339(g.at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct InstalledCert {
    pub sans: Vec<String>,
    /// The issuer's common name (or whole name); `null` if unreadable.
    pub issuer: Option<String>,
    pub key_type: String,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    pub expired: bool,
    pub sha256: String,
    /// The source entry it was installed from, when mxkeys installed it.
    pub source: Option<String>,
}

/// Why a slot shows no certificate, naming the file when the reason is
/// about the file (`not found` alone does not say which).
fn installed_problem(files: &crate::config::TargetFiles, e: &install::InstalledError) -> String {
    let file = files
        .combined
        .as_deref()
        .or(files.fullchain.as_deref())
        .or(files.cert.as_deref());
    match (e, file) {
        (install::InstalledError::NotFound, Some(p)) => {
            format!("{}: not found", p.display())
        }
        (install::InstalledError::Read(_), Some(p)) => format!("{}: {e}", p.display()),
        _ => e.to_string(),
    }
}

/// Whether a process with this pid exists (signal 0 probes without sending).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(e) => e == nix::errno::Errno::EPERM,
    }
}

impl Status {
    pub fn gather(config: &Config) -> Status {
        let record = State::load(&config.state_dir);
        let now = crate::now();
        let ledger = if config.targets.iter().any(|t| t.dane.is_some()) {
            config
                .state_dir
                .dane_record::<Ledger>()
                .load()
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Ledger::default()
        };
        let gate_of = |t: &crate::config::Target| {
            t.dane.as_ref().map(|_| {
                ledger
                    .targets
                    .get(&t.name)
                    .and_then(|l| l.gate.as_ref())
                    .map(GateStatus::from_ledger)
            })
        };
        let targets = config
            .targets
            .iter()
            .flat_map(|t| t.slots.iter().map(move |slot| (t, slot)))
            .map(|(t, slot)| {
                let name = t.slot_name(slot);
                let domains = t.domains.iter().map(|d| d.as_str().to_owned()).collect();
                let dane_gate = gate_of(t);
                let service = record.services.get(&t.name);
                let last_reload = service
                    .and_then(|s| s.reload.as_ref())
                    .map(ServiceEventStatus::from_record);
                let last_verification = service
                    .and_then(|s| s.verification.as_ref())
                    .map(ServiceEventStatus::from_record);
                let installed = install::installed_certs(&slot.files).and_then(|certs| {
                    let der = certs
                        .first()
                        .ok_or(install::InstalledError::NoCertificate)?;
                    let leaf = Leaf::parse(der.as_ref()).map_err(install::InstalledError::Leaf)?;
                    Ok((
                        leaf,
                        cert::fingerprint(der.as_ref()),
                        cert::issuer_name(der.as_ref()),
                    ))
                });
                match installed {
                    Ok((leaf, sha256, issuer)) => {
                        let source = record
                            .targets
                            .get(&name)
                            .filter(|r| r.sha256 == sha256)
                            .map(|r| r.source.clone());
                        TargetStatus {
                            name,
                            target: t.name.clone(),
                            domains,
                            last_reload,
                            last_verification,
                            installed: Some(InstalledCert {
                                sans: leaf.names,
                                issuer,
                                key_type: leaf.key_type.to_string(),
                                not_before: crate::rfc3339(leaf.validity.not_before),
                                not_after: crate::rfc3339(leaf.validity.not_after),
                                days_left: (leaf.validity.not_after - now).div_euclid(86_400),
                                expired: leaf.validity.at(now) == Timeliness::Expired,
                                sha256,
                                source,
                            }),
                            problem: None,
                            dane_gate,
                        }
                    }
                    Err(e) => TargetStatus {
                        name,
                        target: t.name.clone(),
                        domains,
                        last_reload,
                        last_verification,
                        installed: None,
                        problem: Some(installed_problem(&slot.files, &e)),
                        dane_gate,
                    },
                }
            })
            .collect();
        let daemon = record.daemon.map(|d| DaemonStatus {
            running: process_alive(d.pid),
            record: d,
        });
        let next = crate::acme::next_due(config);
        let acme = config
            .acme_sources()
            .map(|s| {
                let state = crate::acme::SourceState::load(s);
                let held = crate::source::acme::read_bundle(&crate::source::acme::bundle_path(s))
                    .ok()
                    .and_then(|(certs, _)| {
                        let der = certs.first()?.clone();
                        let leaf = Leaf::parse(der.as_ref()).ok()?;
                        Some((cert::fingerprint(der.as_ref()), leaf.validity.not_after))
                    });
                AcmeStatus {
                    name: s.name.clone(),
                    domains: s.domains.iter().map(|d| d.as_str().to_owned()).collect(),
                    sha256: held.as_ref().map(|h| h.0.clone()),
                    not_after: held.map(|h| crate::rfc3339(h.1)),
                    next_renewal: next
                        .get(&s.name)
                        .filter(|t| **t < i64::MAX)
                        .map(|t| crate::rfc3339(*t)),
                    failures: state.failures,
                    last_error: state.last_error,
                }
            })
            .collect();
        Status {
            at: Time(now),
            targets,
            last_run: record.last_run,
            daemon,
            acme,
            mta_sts: MtaStsStatus::gather(config, now),
            cluster: ClusterStatus::gather(config),
            dkim: DkimStatus::gather(config),
        }
    }

    /// Every target holds a certificate that has not expired.
    pub fn healthy(&self) -> bool {
        self.targets
            .iter()
            .all(|t| t.installed.as_ref().is_some_and(|i| !i.expired))
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for t in &self.targets {
            out.push_str(&format!("{}: {}\n", t.name, t.domains.join(", ")));
            match (&t.installed, &t.problem) {
                (Some(i), _) => {
                    let left = if i.expired {
                        "EXPIRED".to_owned()
                    } else {
                        format!("{} days left", i.days_left)
                    };
                    out.push_str(&format!("  certificate  {}\n", i.sha256));
                    out.push_str(&format!("  names        {}\n", i.sans.join(", ")));
                    out.push_str(&format!("  key          {}\n", i.key_type));
                    out.push_str(&format!("  not after    {} ({left})\n", i.not_after));
                    out.push_str(&format!(
                        "  source       {}\n",
                        i.source.as_deref().unwrap_or("(not installed by mxkeys)")
                    ));
                }
                (None, problem) => out.push_str(&format!(
                    "  no certificate installed: {}\n",
                    problem.as_deref().unwrap_or("unknown")
                )),
            }
            match &t.dane_gate {
                Some(Some(g)) => out.push_str(&format!(
                    "  dane gate    {}{}\n",
                    g.state,
                    g.reason
                        .as_ref()
                        .map_or_else(String::new, |r| format!(": {r}"))
                )),
                Some(None) => out.push_str("  dane gate    not decided yet\n"),
                None => {}
            }
        }
        for a in &self.acme {
            out.push_str(&format!("acme {}: {}\n", a.name, a.domains.join(", ")));
            match (&a.sha256, &a.not_after) {
                (Some(sha), Some(until)) => {
                    out.push_str(&format!("  holds        {sha} (until {until})\n"));
                }
                _ => out.push_str("  holds        nothing yet\n"),
            }
            out.push_str(&format!(
                "  next renewal {}\n",
                a.next_renewal.as_deref().unwrap_or("none")
            ));
            if let Some(e) = &a.last_error {
                out.push_str(&format!(
                    "  last error   {e} ({} failures in a row)\n",
                    a.failures
                ));
            }
        }
        if let Some(d) = &self.daemon {
            let r = &d.record;
            out.push_str(&format!(
                "daemon: pid {} {} (started {}); {} reconciles, the last at {}: {}\n",
                r.pid,
                if d.running { "running" } else { "not running" },
                crate::rfc3339(r.started_at),
                r.reconciles,
                crate::rfc3339(r.updated_at),
                if r.last_reconcile_ok {
                    "ok"
                } else {
                    "with errors"
                }
            ));
            if !r.watching.is_empty() {
                out.push_str(&format!("  watching {}\n", r.watching.join(", ")));
            }
        }
        if let Some(run) = &self.last_run {
            out.push_str(&format!(
                "last {}: {} ({})\n",
                run.command,
                crate::rfc3339(run.finished_at),
                if run.ok { "ok" } else { "with errors" }
            ));
            for e in &run.errors {
                out.push_str(&format!("  {e}\n"));
            }
        }
        if let Some(m) = &self.mta_sts {
            out.push_str(&m.to_text());
        }
        if let Some(c) = &self.cluster {
            out.push_str(&c.to_text());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_line_says_reachable_or_not_since_when_what_is_led_and_the_last_error() {
        let health = |reachable, leading: &[&str], error: Option<&str>| ClusterStatus {
            host_id: Some("mx1".to_owned()),
            health: Some(crate::cluster::Health {
                reachable,
                since: 1_700_000_000,
                last_error: error.map(str::to_owned),
                leading: leading.iter().map(|j| (*j).to_owned()).collect(),
                fenced_writes: 2,
            }),
            problem: None,
        };
        let since = crate::rfc3339(1_700_000_000);
        // (status, expected text)
        for (what, status, want) in [
            (
                "reachable, leading",
                health(true, &["acme/mx"], None),
                format!(
                    "cluster: host mx1; reachable since {since}; leads acme/mx; 2 fenced writes refused\n"
                ),
            ),
            (
                "reachable, nothing led, an old error",
                health(true, &[], Some("cluster unavailable: timeout")),
                format!(
                    "cluster: host mx1; reachable since {since}; leads no job; 2 fenced writes refused\n  last error   cluster unavailable: timeout\n"
                ),
            ),
            (
                "unreachable",
                health(false, &[], Some("cluster unavailable: no quorum")),
                format!(
                    "cluster: host mx1; UNREACHABLE since {since} (shared orders wait; installed certificates stay); 2 fenced writes refused\n  last error   cluster unavailable: no quorum\n"
                ),
            ),
            (
                "no record yet",
                ClusterStatus {
                    host_id: Some("mx1".to_owned()),
                    health: None,
                    problem: None,
                },
                "cluster: host mx1; no state recorded yet (is mxkeys run running?)\n".to_owned(),
            ),
        ] {
            assert_eq!(status.to_text(), want, "{what}");
        }
    }

    #[test]
    fn a_configured_domain_without_a_key_is_listed_with_none_in_name_order() {
        let with = |domain: &str| DkimDomainStatus {
            domain: domain.to_owned(),
            keys: vec![DkimKeyStatus {
                selector: "r1".to_owned(),
                record_name: format!("r1._domainkey.{domain}"),
                algorithm: "rsa-2048",
                state: "active".to_owned(),
                events: Vec::new(),
                next: None,
            }],
        };
        let status = DkimStatus {
            domains: vec![with("b.test"), with("d.test")],
            problem: None,
        }
        .with_domains(["d.test", "c.test", "a.test", "b.test"]);
        let got: Vec<(&str, usize)> = status
            .domains
            .iter()
            .map(|d| (d.domain.as_str(), d.keys.len()))
            .collect();
        assert_eq!(
            got,
            [("a.test", 0), ("b.test", 1), ("c.test", 0), ("d.test", 1)]
        );
    }

    #[test]
    fn no_next_renewal_is_null_in_json_and_none_in_text() {
        let status = Status {
            at: Time(1_800_000_000),
            targets: Vec::new(),
            last_run: None,
            daemon: None,
            acme: vec![AcmeStatus {
                name: "mx".to_owned(),
                domains: vec!["mx.example".to_owned()],
                sha256: None,
                not_after: None,
                next_renewal: None,
                failures: 0,
                last_error: None,
            }],
            mta_sts: None,
            cluster: None,
            dkim: None,
        };
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["acme"][0]["next_renewal"], serde_json::Value::Null);
        let text = status.to_text();
        assert!(text.contains("  next renewal none\n"), "{text}");
        // No other field of the document is an empty string.
        fn no_empty_strings(v: &serde_json::Value) -> bool {
            match v {
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Array(a) => a.iter().all(no_empty_strings),
                serde_json::Value::Object(o) => o.values().all(no_empty_strings),
                _ => true,
            }
        }
        assert!(no_empty_strings(&json), "{json}");
    }

    fn sts_config(mode: &str) -> Config {
        let host = crate::config::Host {
            cwd: std::path::PathBuf::from("/srv"),
            hostname: crate::names::DnsName::parse("mx.example.test").ok(),
        };
        Config::parse(
            std::path::Path::new("/etc/mxkeys/t.toml"),
            &format!(
                "state_dir = \"/var/lib/mxkeys\"\n[dns.ns]\ntype = \"manual\"\n[mta_sts]\ndomains = [\"a.test\"]\nmode = \"{mode}\"\nmx = [\"mx.a.test\"]\nmax_age = \"1d\"\ndns = \"ns\"\nlisten = \"0.0.0.0:8443\"\n"
            ),
            &host,
        )
        .unwrap()
    }

    #[test]
    fn the_mta_sts_section_shows_each_domains_live_policy_next_step_and_refusal_from_the_ledger() {
        use crate::mta_sts::ledger::{DomainLedger, Fetched, Ledger, TxtSeen};
        use crate::mta_sts::order::{Mode, Policy};
        const NOW: i64 = 1_800_000_000;
        let mx: std::collections::BTreeSet<String> = ["mx.a.test".to_owned()].into();
        let testing = crate::mta_sts::policy::id_of(Mode::Testing, &mx, 86_400);
        let live = |id: &str| {
            let mut l = DomainLedger::default();
            l.served.insert(
                "127.0.0.1:8443".to_owned(),
                Fetched {
                    id: Some(id.to_owned()),
                    since: NOW - 100,
                    at: NOW - 10,
                },
            );
            l.txt.insert(
                "192.0.2.53:53".to_owned(),
                TxtSeen {
                    id: Some(id.to_owned()),
                    ttl: 300,
                    since: NOW - 50,
                    replaced_ttl: 0,
                },
            );
            l.published_id = Some(id.to_owned());
            l.live = Some(Policy {
                mode: Mode::Testing,
                mx: mx.clone(),
                max_age: 86_400,
                id: id.to_owned(),
            });
            l.mx.hosts = mx.clone();
            l.mx.ttl = 300;
            l
        };
        let ledger = |l: Option<DomainLedger>| Ledger {
            domains: l.into_iter().map(|l| ("a.test".to_owned(), l)).collect(),
        };
        // (what, mode wanted, ledger, lines the section must hold)
        let rows: Vec<(&str, &str, Ledger, Vec<String>)> = vec![
            (
                "nothing recorded yet: serve the body first, to the listen address (wildcard: loopback)",
                "testing",
                ledger(None),
                vec![
                    "mta-sts a.test:".to_owned(),
                    "  live         none".to_owned(),
                    "  published    none".to_owned(),
                    format!("  policy       id {testing}, mode testing"),
                    format!("  next step    serve policy body {testing}: not yet fetched back from 127.0.0.1:8443"),
                ],
            ),
            (
                "served and seen everywhere",
                "testing",
                ledger(Some(live(&testing))),
                vec![
                    format!("  live         id {testing}, mode testing"),
                    format!("  published    {testing}"),
                    format!("  next step    in step: policy {testing} served and published everywhere"),
                ],
            ),
            (
                "enforce wanted, the MX host never checked: refused, testing kept",
                "enforce",
                ledger(Some(live(&testing))),
                vec![
                    format!("  policy       id {testing}, mode testing"),
                    "  refused      enforce refused: MX host mx.a.test has no STARTTLS certificate check yet; keeping mode testing".to_owned(),
                ],
            ),
        ];
        for (what, mode, ledger, want) in rows {
            let status = MtaStsStatus::from_ledger(&sts_config(mode), &ledger, None, NOW);
            let text = status.to_text();
            for line in &want {
                assert!(
                    text.lines().any(|l| l == line),
                    "{what}: no line {line:?} in\n{text}"
                );
            }
            assert_eq!(
                status.domains[0].in_step,
                text.contains("in step"),
                "{what}"
            );
            assert!(!text.contains("tls-rpt"), "{what}: {text}");
        }

        // TLS-RPT totals, by organization.
        let mut totals = crate::tls_rpt::metrics::Totals::default();
        totals
            .sessions
            .insert(("google.com".to_owned(), "successful"), 12);
        totals
            .sessions
            .insert(("google.com".to_owned(), "failure"), 3);
        let status = MtaStsStatus::from_ledger(
            &sts_config("testing"),
            &Ledger::default(),
            Some(&totals),
            NOW,
        );
        assert!(
            status
                .to_text()
                .ends_with("tls-rpt: sessions reported\n  google.com: 12 successful, 3 failed\n"),
            "{}",
            status.to_text()
        );
        let none = MtaStsStatus::from_ledger(
            &sts_config("testing"),
            &Ledger::default(),
            Some(&Default::default()),
            NOW,
        );
        assert!(none.to_text().ends_with("tls-rpt: no reports received\n"));
    }
}
