//! Where accepted TLS-RPT reports are kept: `state_dir/tls-rpt/ORG/
//! REPORT-ID.json`, the report's JSON as it came (effects: files). The
//! rule: only a report [`super::report`] accepted is ever written; each
//! once (a report id already stored is not stored again); within a cap on
//! the number of reports and their total size, the oldest dropped first.
//!
//! Names come from the sender, so they are sanitised ([`file_name`]):
//! letters, digits and `-_.@+` kept, anything else `_`, no leading `.`,
//! at most 64 characters; a name that had to change gets a hash of the
//! original appended, so two ids never share a file. Directories are
//! created 0700, reports written 0600 atomically (temporary file renamed
//! into place). Deciding what to drop ([`over_cap`]) is pure.
//!
//! The store holds no lock: its one writer (the daemon's report endpoint)
//! serialises its calls.

use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::report::{self, MAX_JSON, Report};

/// The longest sanitised name (before the hash suffix).
const NAME_MAX: usize = 64;

/// How much the store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this many reports.
    pub max_reports: usize,
    /// At most this many bytes of reports.
    pub max_bytes: u64,
}

impl Default for Limits {
    /// 1000 reports, 100 MiB.
    fn default() -> Limits {
        Limits {
            max_reports: 1000,
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

/// The report store at `state_dir/tls-rpt`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    limits: Limits,
}

/// What [`Store::save`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Written at this path; `dropped` older reports removed for the cap.
    New { path: PathBuf, dropped: usize },
    /// A report with this organization and id is already stored here.
    Duplicate(PathBuf),
}

/// A stored report file, as [`over_cap`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: PathBuf,
    pub modified: SystemTime,
    pub size: u64,
}

/// Why the store failed: one line naming the path and the reason.
#[derive(Debug)]
pub enum StoreError {
    Io { path: PathBuf, error: io::Error },
    /// A stored file is not a report (it is skipped).
    Unreadable {
        path: PathBuf,
        refusal: report::Refusal,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, error } => write!(
                f,
                "{}: {}",
                path.display(),
                crate::source::io_reason(error)
            ),
            StoreError::Unreadable { path, refusal } => {
                write!(f, "{}: {refusal}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// Why [`Store::receive`] kept nothing.
#[derive(Debug)]
pub enum Received {
    /// The body is not a report (the sender's fault: 4xx).
    Refused(report::Refusal),
    /// The report could not be stored (ours: 500).
    Store(StoreError),
}

impl Received {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Received::Refused(r) => r.status(),
            Received::Store(_) => 500,
        }
    }
}

impl fmt::Display for Received {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Received::Refused(r) => r.fmt(f),
            Received::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Received {}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |error| StoreError::Io {
        path: path.to_owned(),
        error,
    }
}

impl Store {
    /// The store in `dir` (normally [`crate::state::StateDir::tls_rpt_dir`]).
    pub fn new(dir: PathBuf, limits: Limits) -> Store {
        Store { dir, limits }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `report` is (or would be) stored.
    pub fn path_of(&self, report: &Report) -> PathBuf {
        self.dir
            .join(file_name(&report.organization_name))
            .join(format!("{}.json", file_name(&report.report_id)))
    }

    /// What the report endpoint does with a body: [`report::accept_from`]
    /// then [`Store::save`]. A refused body writes nothing.
    pub fn receive(
        &self,
        body: impl io::Read,
        content_type: Option<&str>,
    ) -> Result<Saved, Received> {
        let report = report::accept_from(body, content_type).map_err(Received::Refused)?;
        self.save(&report).map_err(Received::Store)
    }

    /// Stores `report` unless its id is already stored, then drops the
    /// oldest reports (never this one) while the store is over its cap.
    pub fn save(&self, report: &Report) -> Result<Saved, StoreError> {
        let path = self.path_of(report);
        if fs::symlink_metadata(&path).is_ok() {
            return Ok(Saved::Duplicate(path));
        }
        let org_dir = path.parent().unwrap_or(&self.dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(org_dir)
            .map_err(io_at(org_dir))?;
        crate::install::write_atomic(&path, report.json(), 0o600, None).map_err(io_at(&path))?;
        let dropped = self.prune(&path)?;
        Ok(Saved::New { path, dropped })
    }

    /// Every stored report file (regular files named `*.json`, one level
    /// below the organizations' directories); none when the store does not
    /// exist yet.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::new();
        let orgs = match fs::read_dir(&self.dir) {
            Ok(orgs) => orgs,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io_at(&self.dir)(e)),
        };
        for org in orgs {
            let org = org.map_err(io_at(&self.dir))?;
            if !org.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let org_path = org.path();
            for file in fs::read_dir(&org_path).map_err(io_at(&org_path))? {
                let file = file.map_err(io_at(&org_path))?;
                let name = file.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') || !name.ends_with(".json") {
                    continue;
                }
                let Ok(meta) = fs::symlink_metadata(file.path()) else {
                    continue;
                };
                if !meta.file_type().is_file() {
                    continue;
                }
                out.push(Entry {
                    path: file.path(),
                    modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    size: meta.len(),
                });
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// Every stored report, read back; a file that is not one is skipped
    /// and named in the second list.
    pub fn load(&self) -> Result<(Vec<Report>, Vec<StoreError>), StoreError> {
        let mut reports = Vec::new();
        let mut skipped = Vec::new();
        for entry in self.entries()? {
            match read_report(&entry.path) {
                Ok(r) => reports.push(r),
                Err(e) => skipped.push(e),
            }
        }
        Ok((reports, skipped))
    }

    /// Removes the reports [`over_cap`] picks, and organizations'
    /// directories left empty.
    fn prune(&self, keep: &Path) -> Result<usize, StoreError> {
        let drop = over_cap(self.entries()?, self.limits, keep);
        for path in &drop {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_at(path)(e)),
            }
            if let Some(dir) = path.parent() {
                // Fails (and is left) while the directory holds reports.
                let _ = fs::remove_dir(dir);
            }
        }
        Ok(drop.len())
    }
}

/// Reads one stored report (at most [`MAX_JSON`] bytes of it).
fn read_report(path: &Path) -> Result<Report, StoreError> {
    let file = fs::File::open(path).map_err(io_at(path))?;
    let mut json = Vec::new();
    file.take(MAX_JSON + 1)
        .read_to_end(&mut json)
        .map_err(io_at(path))?;
    if json.len() as u64 > MAX_JSON {
        return Err(StoreError::Unreadable {
            path: path.to_owned(),
            refusal: report::Refusal::TooLarge { limit: MAX_JSON },
        });
    }
    report::parse(json).map_err(|refusal| StoreError::Unreadable {
        path: path.to_owned(),
        refusal,
    })
}

/// Pure: the entries to drop so that at most `limits.max_reports` reports
/// of at most `limits.max_bytes` bytes remain, oldest (by modification
/// time, then path) first; `keep` (the report just stored) is never
/// dropped.
pub fn over_cap(mut entries: Vec<Entry>, limits: Limits, keep: &Path) -> Vec<PathBuf> {
    entries.sort_by(|a, b| (a.modified, &a.path).cmp(&(b.modified, &b.path)));
    let mut count = entries.len();
    let mut bytes: u64 = entries.iter().map(|e| e.size).fold(0, u64::saturating_add);
    let mut drop = Vec::new();
    for e in entries {
        if count <= limits.max_reports && bytes <= limits.max_bytes {
            break;
        }
        if e.path == keep {
            continue;
        }
        count -= 1;
        bytes = bytes.saturating_sub(e.size);
        drop.push(e.path);
    }
    drop
}

/// Pure: a sender's name (organization, report id) as one safe file name.
/// See the module's doc.
pub fn file_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .enumerate()
        .map(|(i, c)| match c {
            '.' if i == 0 => '_',
            c if c.is_ascii_alphanumeric() || "-_.@+".contains(c) => c,
            _ => '_',
        })
        .take(NAME_MAX)
        .collect();
    if out != name {
        let digest = crate::cert::fingerprint(name.as_bytes());
        out.push('-');
        out.push_str(&digest[..16]);
    }
    out
}
