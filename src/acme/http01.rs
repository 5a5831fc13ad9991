//! HTTP-01: the built-in responder, bound only while orders run (with the
//! listener limits of [`crate::listen`]), and the webroot alternative
//! (token files where a web server already serves
//! `/.well-known/acme-challenge/`).

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
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Responder {
    /// Binds `addr` and answers challenge requests from `tokens`.
    pub async fn start(addr: SocketAddr, tokens: Tokens) -> Result<Responder, String> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("http-01: cannot listen on {addr}: {e}"))?;
        let addr = listener.local_addr().unwrap_or(addr);
        tracing::debug!("http-01 responder on {addr}");
        let task = tokio::spawn(crate::listen::serve(
            listener,
            crate::listen::Limits::DEFAULT,
            "http-01 responder",
            move |req| answer(req, &tokens),
        ));
        Ok(Responder { addr, task })
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

/// Token files written into a webroot, removed on [`Webroot::clean`].
pub struct Webroot {
    written: Vec<PathBuf>,
}

impl Webroot {
    /// Writes `webroot/.well-known/acme-challenge/TOKEN` for each token.
    pub fn write(webroot: &Path, tokens: &[(String, String)]) -> Result<Webroot, String> {
        let dir = webroot.join(".well-known").join("acme-challenge");
        std::fs::create_dir_all(&dir).map_err(|e| format!("webroot {}: {e}", dir.display()))?;
        let mut written = Vec::new();
        for (token, key_authorization) in tokens {
            if token.is_empty()
                || !token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(format!("http-01: the CA sent an unusable token {token:?}"));
            }
            let path = dir.join(token);
            crate::install::write_atomic(&path, key_authorization.as_bytes(), 0o644, None)
                .map_err(|e| format!("webroot {}: {e}", path.display()))?;
            written.push(path);
        }
        Ok(Webroot { written })
    }

    pub fn clean(self) {
        for path in self.written {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("webroot: cannot remove {}: {e}", path.display());
            }
        }
    }
}
