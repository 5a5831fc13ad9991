//! `state.json`, the run record: what each target holds and where it came
//! from (for `status`), the certificates a service refused, the reloads
//! owed, the last run and the daemon's last reconcile.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StateDir;

/// The record kept between runs.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    #[serde(default)]
    pub targets: BTreeMap<String, Installed>,
    #[serde(default)]
    pub last_run: Option<Run>,
    /// Written by `mxkeys run` after each reconcile.
    #[serde(default)]
    pub daemon: Option<Daemon>,
    /// Certificates a service refused, by slot: retried after `retry_at`.
    #[serde(default)]
    pub failures: BTreeMap<String, Failure>,
    /// Targets whose files were (about to be) replaced but whose reload
    /// has not run yet: recorded before the first write, cleared after the
    /// reload, so a run killed in between still reloads next time.
    #[serde(default)]
    pub pending_reloads: std::collections::BTreeSet<String>,
    /// The last reload and the last check of what each target's services
    /// present, by target name (for `status`).
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
}

/// A target's last reload and last check.
#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Service {
    pub reload: Option<ServiceEvent>,
    pub verification: Option<ServiceEvent>,
}

/// When a reload or check last ran, and its error line if it failed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceEvent {
    pub at: i64,
    pub error: Option<String>,
}

/// A certificate that was rolled back, and when to try it again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Failure {
    pub sha256: String,
    pub attempts: u32,
    pub retry_at: i64,
    pub reason: String,
}

/// What the running daemon last did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Daemon {
    pub pid: u32,
    pub started_at: i64,
    pub updated_at: i64,
    pub reconciles: u64,
    pub last_reconcile_ok: bool,
    pub watching: Vec<String>,
}

/// What mxkeys last installed for a target.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Installed {
    pub sha256: String,
    pub source: String,
    pub installed_at: i64,
}

/// A summary of the last run that could change anything.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub command: String,
    pub finished_at: i64,
    pub ok: bool,
    pub changed_targets: Vec<String>,
    pub errors: Vec<String>,
}

impl State {
    /// Loads the record; a missing or unreadable one is empty, a corrupt
    /// one is reported and treated as empty (it only feeds `status`).
    pub fn load(state_dir: &StateDir) -> State {
        match state_dir.state_record().load() {
            Ok(record) => record.unwrap_or_default(),
            Err(super::RecordError::Corrupt { path, error }) => {
                tracing::warn!(
                    "{}: unreadable record, starting afresh: {error}",
                    path.display()
                );
                State::default()
            }
            Err(_) => State::default(),
        }
    }

    /// Replaces the record (mode 0644), creating `state_dir` (0700).
    pub fn save(&self, state_dir: &StateDir) -> std::io::Result<()> {
        state_dir
            .state_record()
            .save(self)
            .map_err(super::RecordError::into_io)
    }
}
