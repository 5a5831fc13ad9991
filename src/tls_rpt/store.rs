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
    Io {
        path: PathBuf,
        error: io::Error,
    },
    /// A stored file is not a report (it is skipped).
    Unreadable {
        path: PathBuf,
        refusal: report::Refusal,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Io { path, error } => {
                write!(f, "{}: {}", path.display(), crate::source::io_reason(error))
            }
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::time::Duration;

    use super::*;
    use crate::tls_rpt::report::{JSON_TYPE, accept};

    fn report(org: &str, id: &str) -> Report {
        let json = format!(
            r#"{{"organization-name": {org:?}, "report-id": {id:?},
                "date-range": {{"start-datetime": "2026-11-28T00:00:00Z",
                                "end-datetime": "2026-11-28T23:59:59Z"}},
                "policies": [{{"policy": {{"policy-type": "tlsa", "policy-domain": "example.test"}},
                               "summary": {{"total-successful-session-count": 2,
                                            "total-failure-session-count": 1}},
                               "failure-details": [{{"result-type": "tlsa-invalid",
                                                     "failed-session-count": 1}}]}}]}}"#
        );
        accept(json.as_bytes(), Some(JSON_TYPE)).unwrap()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn store(limits: Limits) -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::new(tmp.path().join("state/tls-rpt"), limits);
        (tmp, s)
    }

    #[test]
    fn a_report_is_stored_0600_in_0700_directories_once_and_read_back() {
        let (_tmp, s) = store(Limits::default());
        let r = report("Company-X", "abc-1");
        let Saved::New { path, dropped } = s.save(&r).unwrap() else {
            panic!("not stored")
        };
        assert_eq!(path, s.dir().join("Company-X/abc-1.json"));
        assert_eq!(dropped, 0);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(fs::read(&path).unwrap(), r.json());
        // The same id again: not written twice.
        fs::write(&path, r.json()).unwrap();
        let before = fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(s.save(&r).unwrap(), Saved::Duplicate(path.clone()));
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), before);
        let (reports, skipped) = s.load().unwrap();
        assert_eq!(reports, [r]);
        assert!(skipped.is_empty());
    }

    #[test]
    fn senders_names_become_safe_distinct_file_names() {
        for (name, want) in [
            ("Company-X", "Company-X".to_owned()),
            ("google.com", "google.com".to_owned()),
            ("a@b+c_d", "a@b+c_d".to_owned()),
        ] {
            assert_eq!(file_name(name), want);
        }
        for hostile in [
            "..",
            ".",
            ".hidden",
            "../../etc/passwd",
            "a/b",
            "a\\b",
            "a\0b",
            "é",
            "a b",
            &"x".repeat(300),
        ] {
            let got = file_name(hostile);
            assert!(!got.starts_with('.'), "{hostile:?} -> {got}");
            assert!(got.len() <= NAME_MAX + 17, "{hostile:?} -> {got}");
            assert!(
                got.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@+".contains(c)),
                "{hostile:?} -> {got}"
            );
        }
        // Names that sanitise alike still differ.
        assert_ne!(file_name("a/b"), file_name("a_b"));
        assert_ne!(file_name("a/b"), file_name("a:b"));
        assert_ne!(file_name(&"x".repeat(65)), file_name(&"x".repeat(66)));
    }

    #[test]
    fn a_hostile_organization_name_stays_inside_the_store() {
        let (tmp, s) = store(Limits::default());
        let r = report("../../escape", "../id");
        let Saved::New { path, .. } = s.save(&r).unwrap() else {
            panic!("not stored")
        };
        assert_eq!(path.parent().unwrap().parent().unwrap(), s.dir());
        assert!(!tmp.path().join("escape").exists());
        assert_eq!(s.load().unwrap().0, [r]);
    }

    fn entry(name: &str, age_s: u64, size: u64) -> Entry {
        Entry {
            path: PathBuf::from(name),
            modified: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 - age_s),
            size,
        }
    }

    #[test]
    fn over_the_cap_the_oldest_are_dropped_never_the_new_one() {
        let e = || {
            vec![
                entry("b", 10, 100),
                entry("new", 0, 100),
                entry("a", 30, 100),
                entry("c", 20, 100),
            ]
        };
        let limits = |max_reports, max_bytes| Limits {
            max_reports,
            max_bytes,
        };
        let new = Path::new("new");
        for (limits, want) in [
            (limits(4, 400), vec![]),
            (limits(3, 400), vec!["a"]),
            (limits(2, 400), vec!["a", "c"]),
            (limits(4, 250), vec!["a", "c"]),
            (limits(1, 400), vec!["a", "c", "b"]),
            // Even when the new one alone is over: the others go, it stays.
            (limits(0, 0), vec!["a", "c", "b"]),
        ] {
            let want: Vec<PathBuf> = want.into_iter().map(PathBuf::from).collect();
            assert_eq!(over_cap(e(), limits, new), want, "{limits:?}");
        }
        // Same time: by path.
        let tied = vec![entry("y", 5, 1), entry("x", 5, 1), entry("new", 0, 1)];
        assert_eq!(over_cap(tied, limits(2, 100), new), [PathBuf::from("x")]);
    }

    #[test]
    fn saving_over_the_cap_removes_the_oldest_report_and_its_empty_directory() {
        let (_tmp, s) = store(Limits {
            max_reports: 2,
            max_bytes: u64::MAX,
        });
        let old = SystemTime::now() - Duration::from_secs(3600);
        let mut paths = Vec::new();
        for (i, org) in ["Old-Org", "Mid-Org", "New-Org"].into_iter().enumerate() {
            let Saved::New { path, dropped } = s.save(&report(org, "r")).unwrap() else {
                panic!("not stored")
            };
            assert_eq!(dropped, usize::from(i == 2), "{org}");
            if i < 2 {
                let f = fs::File::options().write(true).open(&path).unwrap();
                f.set_modified(old + Duration::from_secs(i as u64)).unwrap();
            }
            paths.push(path);
        }
        assert!(!paths[0].exists() && paths[1].exists() && paths[2].exists());
        assert!(!s.dir().join("Old-Org").exists(), "empty directory left");
        assert_eq!(s.entries().unwrap().len(), 2);
    }

    #[test]
    fn a_refused_body_stores_nothing_and_a_stored_file_that_is_not_a_report_is_skipped() {
        let (_tmp, s) = store(Limits::default());
        let got = s.receive(&b"{\"organization-name\": 1"[..], Some(JSON_TYPE));
        assert!(matches!(&got, Err(Received::Refused(_))), "{got:?}");
        assert_eq!(got.unwrap_err().status(), 400);
        assert!(!s.dir().exists());
        s.save(&report("Org", "good")).unwrap();
        fs::write(s.dir().join("Org/bad.json"), b"not json").unwrap();
        fs::write(s.dir().join("Org/.tmp.json"), b"ignored").unwrap();
        let (reports, skipped) = s.load().unwrap();
        assert_eq!(reports.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert!(
            skipped[0].to_string().contains("bad.json"),
            "{}",
            skipped[0]
        );
    }
}
