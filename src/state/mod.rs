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
//!   self-signed/              umask the fallback: KIND.crt (0644), KIND.key (0600)
//!   acme/                     0700
//!     lock                    0600  serialises orders
//!     accounts/HASH.json      0600  one ACME account per CA directory
//!     NAME/                   0700  one `acme` source ([`AcmeSourceDir`])
//!       state.json            0600
//!       bundle.pem            0600  key, leaf and chain
//!       order-key.pem         0600  the key of an order whose certificate is not stored
//!       standby-key.pem       0600  DANE: the next key, published before it is served
//!       rollover-request      0600  DANE: a key rollover is asked for (its time)
//!   dkim/                     0700  (also the default `[dkim] key_dir`)
//!     lock                    0600
//!     state.json              0600  the DKIM key book
//!   dane.json                 0600  the DANE ledger (`crate::dane::ledger`)
//!   mta-sts.json              0600  the MTA-STS ledger (`crate::mta_sts::ledger`)
//!   mta-sts-www/              0700  the policies `[mta_sts] listen` serves:
//!     mta-sts.DOMAIN/.well-known/mta-sts.txt  (the webroot layout)
//!   tls-rpt/                  0700  TLS-RPT reports received (`crate::tls_rpt::store`)
//!     ORG/REPORT-ID.json      0600  one report's JSON, names sanitised
//! ```
//!
//! Every file is replaced atomically (a temporary `.NAME.mxkeys-PID-N.tmp`
//! in the same directory, renamed into place). Taking a lock removes the
//! temporaries that killed runs left in the directories that lock guards,
//! and only those: files named like them whose process is gone.

mod record;
mod run;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

pub use record::{Record, RecordError};
pub use run::{Daemon, Failure, Installed, Run, Service, ServiceEvent, State};

const LOCK_FILE: &str = "lock";
const STATE_FILE: &str = "state.json";
const DANE_FILE: &str = "dane.json";
const MTA_STS_FILE: &str = "mta-sts.json";
const CLUSTER_FILE: &str = "cluster.json";
const MTA_STS_WWW_DIR: &str = "mta-sts-www";
const SELF_SIGNED_DIR: &str = "self-signed";
const ACME_DIR: &str = "acme";
const ACCOUNTS_DIR: &str = "accounts";
const BUNDLE_FILE: &str = "bundle.pem";
const ORDER_KEY_FILE: &str = "order-key.pem";
const STANDBY_KEY_FILE: &str = "standby-key.pem";
const ROLLOVER_REQUEST_FILE: &str = "rollover-request";
const DKIM_DIR: &str = "dkim";
const TLS_RPT_DIR: &str = "tls-rpt";

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

    /// What this host last saw of the cluster's DKIM book (`[dkim]
    /// shared`, see `crate::cluster::dkim::Synced`).
    pub fn dkim_cluster_record<T>(&self) -> Record<T> {
        Record::new(self.dkim().join("cluster.json"), 0o600)
    }

    /// The DANE ledger (`dane.json`): the TLSA records this host published
    /// and since when each has been seen (see `crate::dane::ledger`).
    pub fn dane_record<T>(&self) -> Record<T> {
        Record::new(self.0.join(DANE_FILE), 0o600)
    }

    /// The MTA-STS ledger (`mta-sts.json`): what the responders served and
    /// DNS showed, per policy domain (see `crate::mta_sts::ledger`).
    pub fn mta_sts_record<T>(&self) -> Record<T> {
        Record::new(self.0.join(MTA_STS_FILE), 0o600)
    }

    /// The cluster task's health (`cluster.json`): whether the cluster is
    /// reachable, the jobs this host leads (see `crate::cluster::Health`).
    pub fn cluster_record<T>(&self) -> Record<T> {
        Record::new(self.0.join(CLUSTER_FILE), 0o600)
    }

    /// The policy files the built-in responder (`[mta_sts] listen`) serves,
    /// in the webroot layout (`crate::mta_sts::webroot`): the MTA-STS pass
    /// writes them, the responder reads them.
    pub fn mta_sts_www(&self) -> PathBuf {
        self.0.join(MTA_STS_WWW_DIR)
    }

    /// Where received TLS-RPT reports are kept (`crate::tls_rpt::store`).
    pub fn tls_rpt_dir(&self) -> PathBuf {
        self.0.join(TLS_RPT_DIR)
    }

    /// `[dkim] key_dir` when the configuration names none.
    pub fn default_dkim_key_dir(&self) -> PathBuf {
        self.dkim()
    }

    /// Takes the run lock (`sync`, `run`), waiting for another run to
    /// finish; then removes killed runs' temporaries from `state_dir` and
    /// `self-signed/`.
    pub fn lock(&self) -> io::Result<Lock> {
        let lock = take_lock(&self.0)?;
        clean_stale_temps(&self.0);
        clean_stale_temps(&self.self_signed().0);
        Ok(lock)
    }

    /// Takes the ACME lock (orders), waiting for another run to finish;
    /// then removes killed runs' temporaries from `acme/`, `acme/accounts/`
    /// and every source's directory.
    /// Loads `record` (its default when absent), changes it and saves it,
    /// all under the run lock: for the ledgers that `sync`, `run` and the
    /// CLI all write (DANE, MTA-STS). A record that cannot be read is left
    /// as it is. Errors are one line naming the file.
    pub fn update<T, R>(
        &self,
        record: Record<T>,
        change: impl FnOnce(&mut T) -> R,
    ) -> Result<R, String>
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Default,
    {
        let _lock = self
            .lock()
            .map_err(|e| format!("state_dir {}: cannot take the lock: {e}", self.display()))?;
        let mut value = record.load_or_default().map_err(|e| e.to_string())?;
        let r = change(&mut value);
        record.save(&value).map_err(|e| e.to_string())?;
        Ok(r)
    }

    pub fn lock_acme(&self) -> io::Result<Lock> {
        let acme = self.acme();
        let lock = take_lock(&acme)?;
        clean_stale_temps(&acme);
        if let Ok(entries) = fs::read_dir(&acme) {
            for entry in entries.filter_map(Result::ok) {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    clean_stale_temps(&entry.path());
                }
            }
        }
        Ok(lock)
    }

    /// Takes the DKIM lock, waiting for another run to finish; then removes
    /// killed runs' temporaries from `dkim/` (the key directories inside it,
    /// when `key_dir` is the default, are cleaned by [`crate::dkim::keydir`]).
    pub fn lock_dkim(&self) -> io::Result<Lock> {
        let dkim = self.dkim();
        let lock = take_lock(&dkim)?;
        clean_stale_temps(&dkim);
        Ok(lock)
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

    /// The standby key of a source serving DANE targets (mode 0600): the
    /// next key, published in TLSA before it is ever served.
    pub fn standby_key(&self) -> PathBuf {
        self.0.join(STANDBY_KEY_FILE)
    }

    /// Present while a key rollover to the standby key is requested (`mxkeys
    /// dane rollover`): its own file, so a request is never lost to a pass
    /// saving the source's record.
    pub fn rollover_request(&self) -> PathBuf {
        self.0.join(ROLLOVER_REQUEST_FILE)
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

/// Removes from `dir` the regular files named like mxkeys' temporaries
/// ([`crate::install::is_stale_temp`]: `.NAME.mxkeys-PID-N.tmp`) whose
/// process is gone. They were never renamed into place; they may hold a
/// key. Anything else, and a missing `dir`, is left alone.
fn clean_stale_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(text) = name.to_str() else { continue };
        if crate::install::is_stale_temp(text)
            && entry.file_type().is_ok_and(|t| t.is_file())
            && fs::remove_file(entry.path()).is_ok()
        {
            tracing::debug!(
                "removed {} left by an interrupted run",
                entry.path().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn temp_state_dir() -> (tempfile::TempDir, StateDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::new(tmp.path().join("state"));
        (tmp, dir)
    }

    #[test]
    fn every_path_is_where_existing_installs_keep_it() {
        let s = StateDir::new(PathBuf::from("/var/lib/mxkeys"));
        let directory = "https://acme-v02.api.letsencrypt.org/directory";
        let digest = crate::cert::fingerprint(directory.as_bytes());
        let acme = s.acme_source("mail");
        let fallback = s.self_signed();
        for (got, want) in [
            (s.path().to_owned(), "/var/lib/mxkeys".to_owned()),
            (
                s.state_record().path().to_owned(),
                "/var/lib/mxkeys/state.json".to_owned(),
            ),
            (
                fallback.path().to_owned(),
                "/var/lib/mxkeys/self-signed".to_owned(),
            ),
            (
                fallback.cert("ecdsa"),
                "/var/lib/mxkeys/self-signed/ecdsa.crt".to_owned(),
            ),
            (
                fallback.key("rsa"),
                "/var/lib/mxkeys/self-signed/rsa.key".to_owned(),
            ),
            (
                acme.path().to_owned(),
                "/var/lib/mxkeys/acme/mail".to_owned(),
            ),
            (
                acme.record::<()>().path().to_owned(),
                "/var/lib/mxkeys/acme/mail/state.json".to_owned(),
            ),
            (
                acme.bundle(),
                "/var/lib/mxkeys/acme/mail/bundle.pem".to_owned(),
            ),
            (
                acme.order_key(),
                "/var/lib/mxkeys/acme/mail/order-key.pem".to_owned(),
            ),
            (
                acme.standby_key(),
                "/var/lib/mxkeys/acme/mail/standby-key.pem".to_owned(),
            ),
            (
                acme.rollover_request(),
                "/var/lib/mxkeys/acme/mail/rollover-request".to_owned(),
            ),
            (
                s.acme_account::<()>(directory).path().to_owned(),
                format!("/var/lib/mxkeys/acme/accounts/{}.json", &digest[..16]),
            ),
            (
                s.dkim_record::<()>().path().to_owned(),
                "/var/lib/mxkeys/dkim/state.json".to_owned(),
            ),
            (s.default_dkim_key_dir(), "/var/lib/mxkeys/dkim".to_owned()),
            (s.tls_rpt_dir(), "/var/lib/mxkeys/tls-rpt".to_owned()),
            (
                s.mta_sts_record::<()>().path().to_owned(),
                "/var/lib/mxkeys/mta-sts.json".to_owned(),
            ),
            (s.mta_sts_www(), "/var/lib/mxkeys/mta-sts-www".to_owned()),
        ] {
            assert_eq!(got, PathBuf::from(&want));
        }
    }

    #[test]
    fn each_lock_creates_its_directory_0700_and_its_file_0600() {
        let (_tmp, s) = temp_state_dir();
        let run = s.lock().unwrap();
        let acme = s.lock_acme().unwrap();
        let dkim = s.lock_dkim().unwrap();
        for dir in ["", "acme", "dkim"] {
            let dir = s.path().join(dir);
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
            assert_eq!(mode(&dir.join("lock")), 0o600, "{}", dir.display());
        }
        // The three locks are distinct: holding all at once does not block.
        drop((run, acme, dkim));
        drop(s.lock().unwrap());
    }

    #[test]
    fn records_are_written_with_their_mode_in_a_0700_directory_and_read_back() {
        let (_tmp, s) = temp_state_dir();
        let mut state = State::default();
        state.pending_reloads.insert("postfix".to_owned());
        state.save(&s).unwrap();
        assert_eq!(State::load(&s), state);
        assert_eq!(mode(s.path()), 0o700);
        // state.json feeds `status`: readable, as it always was.
        assert_eq!(mode(s.state_record().path()), 0o644);

        let acme = s.acme_source("mail");
        let book: Vec<String> = vec!["a".to_owned()];
        for record in [
            acme.record(),
            s.dkim_record(),
            s.acme_account("https://ca/dir"),
        ] {
            record.save(&book).unwrap();
            assert_eq!(record.load().unwrap(), Some(book.clone()));
            assert_eq!(mode(record.path()), 0o600, "{}", record.path().display());
            let dir = record.path().parent().unwrap();
            assert_eq!(mode(dir), 0o700, "{}", dir.display());
        }
        acme.ensure().unwrap();
        assert_eq!(mode(acme.path()), 0o700);
    }

    #[test]
    fn a_missing_record_is_none_a_corrupt_or_unreadable_one_an_error_naming_the_file() {
        let (_tmp, s) = temp_state_dir();
        let record = s.dkim_record::<Vec<String>>();
        assert!(record.load().unwrap().is_none());

        fs::create_dir_all(record.path().parent().unwrap()).unwrap();
        fs::write(record.path(), b"{ not json").unwrap();
        let e = record.load().unwrap_err();
        assert!(matches!(e, RecordError::Corrupt { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&record.path().display().to_string()),
            "{e}"
        );

        fs::remove_file(record.path()).unwrap();
        fs::create_dir(record.path()).unwrap();
        let e = record.load().unwrap_err();
        assert!(matches!(e, RecordError::Unreadable { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&record.path().display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_missing_or_corrupt_state_json_is_an_empty_record() {
        let (_tmp, s) = temp_state_dir();
        assert_eq!(State::load(&s), State::default());
        fs::create_dir_all(s.path()).unwrap();
        fs::write(s.state_record().path(), b"[1, 2").unwrap();
        assert_eq!(State::load(&s), State::default());
    }

    #[test]
    fn taking_a_lock_removes_only_dead_runs_temporaries_in_the_directories_it_guards() {
        let (_tmp, s) = temp_state_dir();
        let dead = |dir: &Path, name: &str| dir.join(format!(".{name}.mxkeys-2147483646-0.tmp"));
        let mine = |dir: &Path, name: &str| {
            dir.join(format!(".{name}.mxkeys-{}-7.tmp", std::process::id()))
        };
        let guarded = [
            (s.path().to_owned(), "state.json"),
            (s.self_signed().path().to_owned(), "ecdsa.key"),
            (s.path().join("acme"), "lock"),
            (s.path().join("acme/accounts"), "0123456789abcdef.json"),
            (s.acme_source("mail").path().to_owned(), "bundle.pem"),
            (s.path().join("dkim"), "state.json"),
        ];
        // Not state_dir's: a key directory inside dkim/ is keydir's to clean.
        let foreign = s.path().join("dkim/example.com");
        let mut kept = Vec::new();
        for (dir, name) in guarded
            .iter()
            .map(|(d, n)| (d.as_path(), *n))
            .chain([(foreign.as_path(), "sel.private")])
        {
            fs::create_dir_all(dir).unwrap();
            for p in [dead(dir, name), mine(dir, name)] {
                fs::write(p, b"x").unwrap();
            }
            fs::write(dir.join(".not-ours.tmp"), b"x").unwrap();
            fs::write(dir.join(name), b"x").unwrap();
            fs::create_dir(dead(dir, "a-directory")).unwrap();
            kept.extend([
                mine(dir, name),
                dir.join(".not-ours.tmp"),
                dir.join(name),
                dead(dir, "a-directory"),
            ]);
        }
        kept.push(dead(&foreign, "sel.private"));
        drop(s.lock().unwrap());
        drop(s.lock_acme().unwrap());
        drop(s.lock_dkim().unwrap());
        for (dir, name) in &guarded {
            let p = dead(dir, name);
            assert!(!p.exists(), "{} was left", p.display());
        }
        for p in kept {
            assert!(p.exists(), "{} was removed", p.display());
        }
    }
}
