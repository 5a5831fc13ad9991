//! The webroot writer: the MTA-STS policy as files for an existing web
//! server, instead of the built-in responder.
//!
//! Rule: a policy file is replaced atomically (written to a temporary file
//! in the same directory, fsynced, renamed over the old one, the directory
//! fsynced: [`crate::install::write_atomic`]), so a web server serves the
//! old body or the new one, never a part. The file is 0644 and the
//! `.well-known` directory 0755 (created so, or given the missing r-x bits,
//! never narrowed), for a web server running as another user whatever
//! mxkeys' umask.
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

use crate::names::DnsName;

/// The policy file's path under a document root.
pub const POLICY_FILE: &str = ".well-known/mta-sts.txt";

/// Why a policy file could not be written.
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

/// Writes `root/.well-known/mta-sts.txt` with `body` (mode 0644); `root`
/// is created if missing. Returns the file's path.
pub fn write_policy(root: &Path, body: &str) -> Result<PathBuf, WebrootError> {
    std::fs::create_dir_all(root).map_err(write_err(root))?;
    let well_known = root.join(".well-known");
    crate::acme::http01::public_dir(&well_known).map_err(write_err(&well_known))?;
    let path = root.join(POLICY_FILE);
    crate::install::write_atomic(&path, body.as_bytes(), 0o644, None).map_err(write_err(&path))?;
    Ok(path)
}

/// The document root of `mta-sts.DOMAIN` under `dir`.
pub fn root_of(dir: &Path, domain: &str) -> Result<PathBuf, WebrootError> {
    let bad = |reason: String| WebrootError::BadDomain {
        domain: domain.to_owned(),
        reason,
    };
    let name = DnsName::parse(domain).map_err(|e| bad(e.to_string()))?;
    if name.is_wildcard() {
        return Err(bad("a wildcard".to_owned()));
    }
    Ok(dir.join(format!("mta-sts.{name}")))
}

/// Writes every domain's policy under `dir` in the layout
/// `dir/mta-sts.DOMAIN/.well-known/mta-sts.txt`. Every domain is checked
/// before any file is written. Returns the files written.
pub fn write_policies(
    dir: &Path,
    policies: &HashMap<String, String>,
) -> Result<Vec<PathBuf>, WebrootError> {
    let mut roots = policies
        .iter()
        .map(|(domain, body)| Ok((root_of(dir, domain)?, body)))
        .collect::<Result<Vec<_>, WebrootError>>()?;
    roots.sort();
    roots
        .into_iter()
        .map(|(root, body)| write_policy(&root, body))
        .collect()
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
