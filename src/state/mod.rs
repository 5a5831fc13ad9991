//! The state directory (`state_dir`): this module owns its layout and is
//! the only code that names a path inside it. Everything else asks a
//! [`StateDir`] (built once, by the configuration) for a path, a lock or a
//! record.
//!
//! The layout, the same since the first release so that installs upgrade
//! in place (modes as created):
//!
//! ```text
//! state_dir/                  0700
//!   lock                      0600  serialises runs that install (sync, run)
//!   state.json                0644  what each target holds, for `status` ([`State`])
//!   self-signed/                    the fallback: KIND.crt (0644), KIND.key (0600)
//!   acme/                     0700
//!     lock                    0600  serialises orders
//!     accounts/HASH.json      0600  one ACME account per CA directory
//!     NAME/                   0700  one `acme` source ([`AcmeSourceDir`])
//!       state.json            0600
//!       bundle.pem            0600  key, leaf and chain
//!       order-key.pem         0600  the key of an order whose certificate is not stored
//!   dkim/                     0700  (also the default `[dkim] key_dir`)
//!     lock                    0600
//!     state.json              0600  the DKIM key book
//! ```
//!
//! Every file is replaced atomically (a temporary `.NAME.mxkeys-PID-N.tmp`
//! in the same directory, renamed into place).

mod record;
mod run;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

pub use record::{Record, RecordError};
pub use run::{Daemon, Failure, Installed, Run, State};

const LOCK_FILE: &str = "lock";
const STATE_FILE: &str = "state.json";
const SELF_SIGNED_DIR: &str = "self-signed";
const ACME_DIR: &str = "acme";
const ACCOUNTS_DIR: &str = "accounts";
const BUNDLE_FILE: &str = "bundle.pem";
const ORDER_KEY_FILE: &str = "order-key.pem";
const DKIM_DIR: &str = "dkim";

/// The validated, absolute `state_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir(PathBuf);

/// Held while a run changes anything; released on drop.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] File);

impl StateDir {
    /// The state directory at `path` (absolute and normalised by the
    /// configuration).
    pub fn new(path: PathBuf) -> StateDir {
        StateDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn display(&self) -> std::path::Display<'_> {
        self.0.display()
    }

    /// `state.json`: the run record (mode 0644: `status` reads it).
    pub fn state_record(&self) -> Record<State> {
        Record::new(self.0.join(STATE_FILE), 0o644)
    }

    /// Where the self-signed fallback keeps its files.
    pub fn self_signed(&self) -> SelfSignedDir {
        SelfSignedDir(self.0.join(SELF_SIGNED_DIR))
    }

    fn acme(&self) -> PathBuf {
        self.0.join(ACME_DIR)
    }

    /// The directory of the `acme` source `name` (a name the configuration
    /// checked: letters, digits, '-', '_', '.', not starting with '.').
    pub fn acme_source(&self, name: &str) -> AcmeSourceDir {
        AcmeSourceDir(self.acme().join(name))
    }

    /// The stored ACME account for the CA `directory` URL: one file per
    /// directory, named by the start of the URL's SHA-256.
    pub fn acme_account<T>(&self, directory: &str) -> Record<T> {
        let digest = crate::cert::fingerprint(directory.as_bytes());
        Record::new(
            self.acme()
                .join(ACCOUNTS_DIR)
                .join(format!("{}.json", &digest[..16])),
            0o600,
        )
    }

    fn dkim(&self) -> PathBuf {
        self.0.join(DKIM_DIR)
    }

    /// The DKIM key book.
    pub fn dkim_record<T>(&self) -> Record<T> {
        Record::new(self.dkim().join(STATE_FILE), 0o600)
    }

    /// `[dkim] key_dir` when the configuration names none.
    pub fn default_dkim_key_dir(&self) -> PathBuf {
        self.dkim()
    }

    /// Takes the run lock (`sync`, `run`), waiting for another run to
    /// finish.
    pub fn lock(&self) -> io::Result<Lock> {
        take_lock(&self.0)
    }

    /// Takes the ACME lock (orders), waiting for another run to finish.
    pub fn lock_acme(&self) -> io::Result<Lock> {
        take_lock(&self.acme())
    }

    /// Takes the DKIM lock, waiting for another run to finish.
    pub fn lock_dkim(&self) -> io::Result<Lock> {
        take_lock(&self.dkim())
    }
}

/// Compares the directory's path (configuration tests).
impl PartialEq<PathBuf> for StateDir {
    fn eq(&self, other: &PathBuf) -> bool {
        &self.0 == other
    }
}

/// `state_dir/acme/NAME/`: one `acme` source's certificate, order key and
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSourceDir(PathBuf);

impl AcmeSourceDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn display(&self) -> std::path::Display<'_> {
        self.0.display()
    }

    /// Creates the directory (mode 0700) when missing.
    pub fn ensure(&self) -> io::Result<()> {
        ensure_dir(&self.0)
    }

    /// The source's record (`state.json`, mode 0600).
    pub fn record<T>(&self) -> Record<T> {
        Record::new(self.0.join(STATE_FILE), 0o600)
    }

    /// The current certificate: key, leaf and chain in one file.
    pub fn bundle(&self) -> PathBuf {
        self.0.join(BUNDLE_FILE)
    }

    /// The key of an order about to be finalized.
    pub fn order_key(&self) -> PathBuf {
        self.0.join(ORDER_KEY_FILE)
    }
}

/// Compares the directory's path (configuration tests).
impl PartialEq<PathBuf> for AcmeSourceDir {
    fn eq(&self, other: &PathBuf) -> bool {
        &self.0 == other
    }
}

/// `state_dir/self-signed/`: the fallback certificate and key of each key
/// type (`ecdsa`, `rsa`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSignedDir(PathBuf);

impl SelfSignedDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn display(&self) -> std::path::Display<'_> {
        self.0.display()
    }

    /// `KIND.crt`.
    pub fn cert(&self, kind: &str) -> PathBuf {
        self.0.join(format!("{kind}.crt"))
    }

    /// `KIND.key`.
    pub fn key(&self, kind: &str) -> PathBuf {
        self.0.join(format!("{kind}.key"))
    }
}

/// Takes the lock file in `dir` (created 0700 with its parents, the file
/// 0600), waiting for its holder.
fn take_lock(dir: &Path) -> io::Result<Lock> {
    ensure_dir(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK_FILE))?;
    if file.try_lock().is_err() {
        tracing::info!("another mxkeys run holds {}; waiting for it", dir.display());
        file.lock()?;
    }
    Ok(Lock(file))
}

/// Creates `dir` and its missing parents (mode 0700).
fn ensure_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}
