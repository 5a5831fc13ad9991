//! `mxkeys status`: what each target holds now, read from its files, with
//! where it came from as recorded by the last run. Never prints key material.
//!
//! In `--json`, a value that does not exist is `null`, never `""`.
//!
//! A slot of a DANE target also shows what the DANE gate decided in the
//! last reconcile (read from the ledger, `state_dir/dane.json`): `open`,
//! `waiting` for which certificate and until when, or `forced`.

use serde::Serialize;

use crate::cert::{self, Leaf, Timeliness};
use crate::config::Config;
use crate::dane::ledger::{GateState, Ledger};
use crate::install;
use crate::state::{self, State};

#[derive(Debug, Serialize)]
pub struct Status {
    pub targets: Vec<TargetStatus>,
    pub last_run: Option<state::Run>,
    /// What `mxkeys run` last recorded, and whether it is still running.
    pub daemon: Option<DaemonStatus>,
    /// Every `acme` source: what it holds and when it renews.
    pub acme: Vec<AcmeStatus>,
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
    pub name: String,
    pub domains: Vec<String>,
    pub installed: Option<InstalledCert>,
    /// Why `installed` is empty, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// For a DANE target: the gate's last decision (`null` before the
    /// first reconcile); absent for other targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dane_gate: Option<Option<GateStatus>>,
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
    pub key_type: String,
    pub not_before: String,
    pub not_after: String,
    pub days_left: i64,
    pub expired: bool,
    pub sha256: String,
    /// The source entry it was installed from, when mxkeys installed it.
    pub source: Option<String>,
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
                let installed = install::installed_certs(&slot.files).and_then(|certs| {
                    let der = certs
                        .first()
                        .ok_or(install::InstalledError::NoCertificate)?;
                    let leaf = Leaf::parse(der.as_ref()).map_err(install::InstalledError::Leaf)?;
                    Ok((leaf, cert::fingerprint(der.as_ref())))
                });
                match installed {
                    Ok((leaf, sha256)) => {
                        let source = record
                            .targets
                            .get(&name)
                            .filter(|r| r.sha256 == sha256)
                            .map(|r| r.source.clone());
                        TargetStatus {
                            name,
                            domains,
                            installed: Some(InstalledCert {
                                sans: leaf.names,
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
                        domains,
                        installed: None,
                        problem: Some(e.to_string()),
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
            targets,
            last_run: record.last_run,
            daemon,
            acme,
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_next_renewal_is_null_in_json_and_none_in_text() {
        let status = Status {
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
}
