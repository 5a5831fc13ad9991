//! The webroot writer: the MTA-STS policy as files for an existing web
//! server, instead of the built-in responder.
//!
//! Rule: a policy file is replaced atomically (written to a temporary file
//! in the same directory, fsynced, renamed over the old one, the directory
//! fsynced: [`crate::install`]'s `TargetDir::write`), so a web server serves
//! the old body or the new one, never a part. The file is 0644 and the
//! `mta-sts.DOMAIN` and `.well-known` directories 0755 (created so, or given
//! the missing r-x bits, never narrowed), for a web server running as
//! another user whatever mxkeys' umask (the shipped unit's is 0077).
//!
//! The web server's user may be able to write under the webroot: below the
//! configured directory (followed as configured) every component is opened
//! relative to its parent's descriptor with O_NOFOLLOW, so a symlink
//! planted as `mta-sts.DOMAIN`, `.well-known` or the file is refused with
//! an error naming it, never followed; an old policy is read only from a
//! regular file of at most [`MAX_POLICY`] bytes, never blocking on a FIFO.
//!
//! Layout, for web servers that serve one domain per root:
//! - [`write_policy`]`(ROOT, body)` writes `ROOT/.well-known/mta-sts.txt`
//!   (ROOT is the document root of `mta-sts.DOMAIN`);
//! - [`write_policies`]`(DIR, policies)` gives each domain a root of its
//!   own under the configured `webroot = "DIR"`:
//!   `DIR/mta-sts.DOMAIN/.well-known/mta-sts.txt`, so one web server block
//!   can serve them all (nginx: `root DIR/$host;`, Apache:
//!   `VirtualDocumentRoot DIR/%0`).
//!
//! Domains are checked as host names before they become path components:
//! no wildcard, no `/`, no `..`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::install::TargetDir;
use crate::names::DnsName;

/// The policy file's path under a document root.
pub const POLICY_FILE: &str = ".well-known/mta-sts.txt";

const WELL_KNOWN: &str = ".well-known";
const FILE_NAME: &str = "mta-sts.txt";

/// The largest policy file read back (a policy is a few hundred bytes).
pub const MAX_POLICY: u64 = 64 * 1024;

/// Why a policy file could not be written, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum WebrootError {
    #[error("mta-sts webroot {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mta-sts webroot: {domain:?} is not a domain name ({reason})")]
    BadDomain { domain: String, reason: String },
}

fn write_err(path: &Path) -> impl Fn(std::io::Error) -> WebrootError + '_ {
    move |source| WebrootError::Write {
        path: path.to_owned(),
        source,
    }
}

/// The configured directory, created if missing and followed as
/// configured (the administrator chose its path).
fn open_root(root: &Path) -> Result<TargetDir, WebrootError> {
    std::fs::create_dir_all(root).map_err(write_err(root))?;
    TargetDir::open_following(root).map_err(write_err(root))
}

/// `dir`'s `.well-known`, made public, never through a link.
fn well_known(dir: &TargetDir) -> Result<TargetDir, WebrootError> {
    let path = dir.path().join(WELL_KNOWN);
    dir.subdir(WELL_KNOWN, true)
        .map_err(write_err(&path))?
        .ok_or_else(|| write_err(&path)(std::io::ErrorKind::NotFound.into()))
}

fn write_into(root: &TargetDir, body: &str) -> Result<PathBuf, WebrootError> {
    let dir = well_known(root)?;
    let path = dir.path().join(FILE_NAME);
    dir.write(FILE_NAME.as_ref(), body.as_bytes(), 0o644, None)
        .map_err(|e| write_err(&path)(e.error))?;
    Ok(path)
}

/// Writes `root/.well-known/mta-sts.txt` with `body` (mode 0644); `root`
/// is created if missing. Returns the file's path.
pub fn write_policy(root: &Path, body: &str) -> Result<PathBuf, WebrootError> {
    write_into(&open_root(root)?, body)
}

/// The document root of `mta-sts.DOMAIN` under `dir`.
pub fn root_of(dir: &Path, domain: &str) -> Result<PathBuf, WebrootError> {
    Ok(dir.join(site_of(domain)?))
}

/// `mta-sts.DOMAIN` for a domain that is a host name.
fn site_of(domain: &str) -> Result<String, WebrootError> {
    let bad = |reason: String| WebrootError::BadDomain {
        domain: domain.to_owned(),
        reason,
    };
    let name = DnsName::parse(domain).map_err(|e| bad(e.to_string()))?;
    if name.is_wildcard() {
        return Err(bad("a wildcard".to_owned()));
    }
    Ok(format!("mta-sts.{name}"))
}

/// Writes every domain's policy under `dir` in the layout
/// `dir/mta-sts.DOMAIN/.well-known/mta-sts.txt`. Every domain is checked
/// before any file is written. Returns the files written.
pub fn write_policies(
    dir: &Path,
    policies: &HashMap<String, String>,
) -> Result<Vec<PathBuf>, WebrootError> {
    let mut sites = policies
        .iter()
        .map(|(domain, body)| Ok((site_of(domain)?, body)))
        .collect::<Result<Vec<_>, WebrootError>>()?;
    sites.sort();
    let top = open_root(dir)?;
    sites
        .into_iter()
        .map(|(site, body)| {
            let path = top.path().join(&site);
            let root = top
                .subdir(&site, true)
                .map_err(write_err(&path))?
                .ok_or_else(|| write_err(&path)(std::io::ErrorKind::NotFound.into()))?;
            write_into(&root, body)
        })
        .collect()
}

/// The `.well-known` directory of `domain` under `dir`, if every component
/// exists (never through a link).
fn existing_well_known(dir: &Path, domain: &str) -> Result<Option<TargetDir>, WebrootError> {
    let site = site_of(domain)?;
    let top = match TargetDir::open_following(dir) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(write_err(dir)(e)),
    };
    let path = dir.join(&site);
    let Some(root) = top.subdir(&site, false).map_err(write_err(&path))? else {
        return Ok(None);
    };
    let path = root.path().join(WELL_KNOWN);
    root.subdir(WELL_KNOWN, false).map_err(write_err(&path))
}

/// The policy body served for `domain` under `dir` (`None`: no file),
/// read only from a regular file of at most [`MAX_POLICY`] bytes reached
/// without a link.
pub fn read_policy(dir: &Path, domain: &str) -> Result<Option<String>, WebrootError> {
    let Some(wk) = existing_well_known(dir, domain)? else {
        return Ok(None);
    };
    let path = wk.path().join(FILE_NAME);
    let Some(bytes) = wk
        .read_small(FILE_NAME, MAX_POLICY)
        .map_err(write_err(&path))?
    else {
        return Ok(None);
    };
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| write_err(&path)(std::io::ErrorKind::InvalidData.into()))
}

/// Removes `domain`'s policy file under `dir` (never through a link);
/// returns its path when there was one.
pub fn remove_policy(dir: &Path, domain: &str) -> Result<Option<PathBuf>, WebrootError> {
    let Some(wk) = existing_well_known(dir, domain)? else {
        return Ok(None);
    };
    let path = wk.path().join(FILE_NAME);
    match wk.remove(FILE_NAME.as_ref()) {
        Ok(()) => Ok(Some(path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(write_err(&path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_policy_is_written_world_readable_under_its_domains_root() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mta-sts");
        let body = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 86400\r\n";
        let written = write_policies(
            &dir,
            &HashMap::from([("Example.Test.".to_owned(), body.to_owned())]),
        )
        .unwrap();
        let file = dir.join("mta-sts.example.test/.well-known/mta-sts.txt");
        assert_eq!(written, std::slice::from_ref(&file));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), body);
        assert_eq!(mode(&file), 0o644);
        assert_eq!(mode(file.parent().unwrap()), 0o755);
        // Replaced in place, with no temporary file left behind.
        write_policy(
            &dir.join("mta-sts.example.test"),
            "version: STSv1\r\nmode: none\r\n",
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "version: STSv1\r\nmode: none\r\n"
        );
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["mta-sts.txt"]);
    }

    #[test]
    fn site_and_well_known_directories_made_private_are_opened_up_for_the_web_server() {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("www");
        let site = dir.join("mta-sts.example.test");
        // As a umask of 0077 (the shipped unit's) would have made them.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(site.join(".well-known"))
            .unwrap();
        std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o700)).unwrap();
        let policies =
            HashMap::from([("example.test".to_owned(), "version: STSv1\r\n".to_owned())]);
        write_policies(&dir, &policies).unwrap();
        assert_eq!(mode(&site), 0o755);
        assert_eq!(mode(&site.join(".well-known")), 0o755);
        assert_eq!(
            read_policy(&dir, "example.test").unwrap().as_deref(),
            Some("version: STSv1\r\n")
        );
        assert_eq!(
            remove_policy(&dir, "example.test").unwrap(),
            Some(site.join(POLICY_FILE))
        );
        assert_eq!(read_policy(&dir, "example.test").unwrap(), None);
        assert_eq!(remove_policy(&dir, "example.test").unwrap(), None);
    }

    #[test]
    fn a_planted_link_or_fifo_is_never_followed_read_or_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("www");
        let victim = tmp.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let site = dir.join("mta-sts.example.test");
        let policies =
            HashMap::from([("example.test".to_owned(), "version: STSv1\r\n".to_owned())]);
        std::os::unix::fs::symlink(&victim, &site).unwrap();
        let e = write_policies(&dir, &policies).unwrap_err().to_string();
        assert!(e.contains("mta-sts.example.test is not a directory"), "{e}");
        assert!(read_policy(&dir, "example.test").is_err());
        assert!(remove_policy(&dir, "example.test").is_err());
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0);
        std::fs::remove_file(&site).unwrap();
        std::fs::create_dir_all(site.join(".well-known")).unwrap();
        nix::unistd::mkfifo(
            &site.join(POLICY_FILE),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        // Returns at once: the FIFO is not opened for a blocking read.
        let e = read_policy(&dir, "example.test").unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
    }

    #[test]
    fn a_domain_that_is_not_a_host_name_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["../etc", "a/b.test", "*.example.test", "", "x y.test"] {
            let policies = HashMap::from([
                ("example.test".to_owned(), "version: STSv1\r\n".to_owned()),
                (bad.to_owned(), "version: STSv1\r\n".to_owned()),
            ]);
            let err = write_policies(tmp.path(), &policies).unwrap_err();
            assert!(
                matches!(err, WebrootError::BadDomain { .. }),
                "{bad}: {err}"
            );
            assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "{bad}");
        }
    }
}
