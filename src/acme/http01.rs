//! HTTP-01: the built-in responder, bound only while orders run (with the
//! listener limits of [`crate::listen`]), and the webroot alternative
//! (token files where a web server already serves
//! `/.well-known/acme-challenge/`).
//!
//! Webroot files are for a web server running as another user, whatever
//! mxkeys' umask (systemd units run it with `UMask=0077`): the
//! `.well-known` and `acme-challenge` directories are made 0755 (created so,
//! or an existing one given the missing r-x bits; never narrowed) and each
//! token file 0644, set on the open descriptor (fchmod). One pair of
//! functions owns the token files: [`write_webroot_tokens`] and
//! [`remove_webroot_tokens`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};

/// Tokens and their key authorizations, shared by the orders of a run.
pub type Tokens = Arc<Mutex<HashMap<String, String>>>;

const PREFIX: &str = "/.well-known/acme-challenge/";

/// A responder listening on one address until dropped.
pub struct Responder {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a challenge response could not be put in place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Http01Error {
    #[error("http-01: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A webroot directory or token file could not be written.
    #[error("webroot {}: {source}", .path.display())]
    Webroot {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("http-01: the CA sent an unusable token {0:?}")]
    UnusableToken(String),
}

impl Http01Error {
    fn webroot(path: &Path) -> impl Fn(std::io::Error) -> Http01Error + '_ {
        move |e| Http01Error::Webroot {
            path: path.to_owned(),
            source: Arc::new(e),
        }
    }
}

impl Responder {
    /// Binds `addr` and answers challenge requests from `tokens`.
    pub async fn start(addr: SocketAddr, tokens: Tokens) -> Result<Responder, Http01Error> {
        let listener =
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Http01Error::Listen {
                    addr,
                    source: Arc::new(e),
                })?;
        let addr = listener.local_addr().unwrap_or(addr);
        tracing::debug!("http-01 responder on {addr}");
        let task = tokio::spawn(crate::listen::serve(
            listener,
            crate::listen::Limits::DEFAULT,
            "http-01 responder",
            move |req| answer(req, &tokens),
        ));
        Ok(Responder { task })
    }
}

fn answer<B>(req: &Request<B>, tokens: &Tokens) -> Response<Full<Bytes>> {
    let body = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .and_then(|token| tokens.lock().ok()?.get(token).cloned());
    let (status, body) = match body {
        Some(key_authorization) => (StatusCode::OK, key_authorization),
        None => (StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// Makes `dir` (creating it if needed) readable and searchable by everyone:
/// 0755 when created, else its mode plus the missing r-x bits.
pub(crate) fn public_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECTORY.bits())
        .open(dir)?;
    let mode = handle.metadata()?.permissions().mode() & 0o7777;
    if mode & 0o755 != 0o755 {
        handle.set_permissions(std::fs::Permissions::from_mode(mode | 0o755))?;
    }
    Ok(())
}

/// Where a webroot's token files go.
fn challenge_dir(webroot: &Path) -> PathBuf {
    webroot.join(".well-known").join("acme-challenge")
}

/// Writes `webroot/.well-known/acme-challenge/TOKEN` for each token;
/// [`remove_webroot_tokens`] takes them away.
pub fn write_webroot_tokens(
    webroot: &Path,
    tokens: &[(String, String)],
) -> Result<(), Http01Error> {
    std::fs::create_dir_all(webroot).map_err(Http01Error::webroot(webroot))?;
    let dir = challenge_dir(webroot);
    let well_known = webroot.join(".well-known");
    for d in [&well_known, &dir] {
        public_dir(d).map_err(Http01Error::webroot(d))?;
    }
    for (token, key_authorization) in tokens {
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Http01Error::UnusableToken(token.clone()));
        }
        let path = dir.join(token);
        crate::install::write_atomic(&path, key_authorization.as_bytes(), 0o644, None)
            .map_err(Http01Error::webroot(&path))?;
    }
    Ok(())
}

/// Removes the token files [`write_webroot_tokens`] wrote (a file already
/// gone is fine; other errors are logged: the order's outcome matters
/// more).
pub fn remove_webroot_tokens<'t>(webroot: &Path, tokens: impl IntoIterator<Item = &'t str>) {
    let dir = challenge_dir(webroot);
    for token in tokens {
        let path = dir.join(token);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("webroot: cannot remove {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::{remove_webroot_tokens, write_webroot_tokens};

    /// Set in the child process that runs the test under umask 077.
    const CHILD: &str = "MXKEYS_TEST_WEBROOT_UMASK_CHILD";

    fn mode(p: &std::path::Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// The umask is per process and the test harness runs tests in
    /// threads, so the test runs itself again in a child process that
    /// sets umask 077 (as `UMask=0077` does) and checks the modes there.
    #[test]
    fn webroot_directories_and_tokens_are_world_readable_under_umask_077() {
        if std::env::var_os(CHILD).is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "acme::http01::tests::webroot_directories_and_tokens_are_world_readable_under_umask_077",
                    "--test-threads=1",
                    "--nocapture",
                ])
                .env(CHILD, "1")
                .output()
                .unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "the child failed:\n{text}");
            assert!(text.contains("1 passed"), "the child ran no test:\n{text}");
            return;
        }
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        let tmp = tempfile::tempdir().unwrap();
        let webroot = tmp.path().join("www");
        std::fs::create_dir(&webroot).unwrap();
        write_webroot_tokens(
            &webroot,
            &[("tok-1_A".to_owned(), "tok-1_A.thumb".to_owned())],
        )
        .unwrap();
        let dir = webroot.join(".well-known/acme-challenge");
        assert_eq!(mode(&webroot.join(".well-known")), 0o755);
        assert_eq!(mode(&dir), 0o755);
        assert_eq!(mode(&dir.join("tok-1_A")), 0o644);
        assert_eq!(
            std::fs::read(dir.join("tok-1_A")).unwrap(),
            b"tok-1_A.thumb"
        );
        remove_webroot_tokens(&webroot, ["tok-1_A"]);
        assert!(!dir.join("tok-1_A").exists());

        // A directory left 0700 by an earlier run is opened up (never
        // narrowed: the sticky and group-write bits stay).
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1770)).unwrap();
        write_webroot_tokens(&webroot, &[("t2".to_owned(), "t2.x".to_owned())]).unwrap();
        remove_webroot_tokens(&webroot, ["t2"]);
        assert_eq!(mode(&dir), 0o1775);
    }
}
