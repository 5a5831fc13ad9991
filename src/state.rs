//! What mxkeys keeps in `state_dir`: the lock that serialises runs, and a
//! record of what each target holds and where it came from (for `status`).

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use serde::{Deserialize, Serialize};

const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";

/// Held while a run changes anything; released on drop.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

/// Takes the run lock in `state_dir`, waiting for another run to finish.
pub fn lock(state_dir: &Path) -> io::Result<Lock> {
    ensure_dir(state_dir)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(state_dir.join(LOCK_FILE))?;
    if file.try_lock().is_err() {
        tracing::info!(
            "another mxkeys run holds {}; waiting for it",
            state_dir.display()
        );
        file.lock()?;
    }
    Ok(Lock(file))
}

/// Creates `state_dir` (mode 0700) when missing.
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

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
    /// Loads the record; a missing one is empty, a corrupt one is reported
    /// and treated as empty (it only feeds `status`).
    pub fn load(state_dir: &Path) -> State {
        let path = state_dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: unreadable record, starting afresh: {e}",
                    path.display()
                );
                State::default()
            }),
            Err(_) => State::default(),
        }
    }

    pub fn save(&self, state_dir: &Path) -> io::Result<()> {
        ensure_dir(state_dir)?;
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        crate::install::write_atomic(&state_dir.join(STATE_FILE), &bytes, 0o644, None)
    }
}
