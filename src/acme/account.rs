//! The ACME account: created once per CA directory, its credentials kept in
//! `state_dir/acme/accounts/` (mode 0600), reused afterwards.
//!
//! Every request goes through one HTTPS client that notes the CA's
//! `Retry-After` on error answers (a `rateLimited` problem, a 503), for
//! the work [`observing`] it: instant-acme drops that header, and the
//! scheduler must never ask again sooner.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use serde::{Deserialize, Serialize};

use crate::config::AcmeAccount;
use crate::state::{RecordError, StateDir};

/// What is stored for an account.
#[derive(Serialize, Deserialize)]
struct Stored {
    directory: String,
    credentials: AccountCredentials,
}

/// Why the ACME account could not be loaded, created or stored. Names the
/// file or the setting; never carries the account's key or the EAB key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AccountError {
    #[error("{}: cannot read the ACME account (not creating another): {}", .file.display(), crate::source::io_reason(.source))]
    Read {
        file: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{}: unreadable account: {source}", .file.display())]
    Unreadable {
        file: PathBuf,
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// The CA refused the stored credentials (its problem, as text).
    #[error("ACME account from {}: {problem}", .file.display())]
    FromCredentials { file: PathBuf, problem: String },
    /// The EAB key could not be read (where, never what).
    #[error("[acme] EAB HMAC key: {0}")]
    EabRead(crate::config::SecretError),
    #[error("[acme] EAB HMAC key in {0}: not base64url")]
    EabNotBase64Url(String),
    #[error("creating an ACME account at {directory}: {problem}")]
    Create { directory: String, problem: String },
    /// The account (or its directory) could not be stored.
    #[error("{}: {source}", .path.display())]
    StoreDir {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{}: cannot store the account: {source}", .file.display())]
    Store {
        file: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("ACME client: {0}")]
    Verifier(#[source] rustls::Error),
    /// `ca_bundle` could not be read or used (the reader's reason).
    #[error("[acme] ca_bundle {}: {reason}", .bundle.display())]
    CaBundle { bundle: PathBuf, reason: String },
    #[error("{0}")]
    Tls(#[source] rustls::Error),
}

/// The account for the configured CA: loaded when stored, else created
/// (and stored before it is used).
pub async fn load_or_create(
    cfg: &AcmeAccount,
    state_dir: &StateDir,
) -> Result<Account, AccountError> {
    let record = state_dir.acme_account::<Stored>(&cfg.directory);
    let file = record.path().to_owned();
    let builder = || -> Result<instant_acme::AccountBuilder, AccountError> {
        Ok(Account::builder_with_http(Box::new(Observed(http_client(
            cfg.ca_bundle.as_deref(),
        )?))))
    };
    if let Some(bytes) = read_stored(&file)? {
        let stored: Stored =
            serde_json::from_slice(&bytes).map_err(|e| AccountError::Unreadable {
                file: file.clone(),
                source: Arc::new(e),
            })?;
        return builder()?
            .from_credentials(stored.credentials)
            .await
            .map_err(|e| AccountError::FromCredentials {
                file: file.clone(),
                problem: e.to_string(),
            });
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &cfg.eab {
        None => None,
        Some((kid, secret)) => {
            use base64::Engine as _;
            let text = secret.read().map_err(AccountError::EabRead)?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| AccountError::EabNotBase64Url(secret.to_string()))?;
            Some(ExternalAccountKey::new(kid.clone(), &key))
        }
    };
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cfg.directory.clone(),
            eab.as_ref(),
        )
        .await
        .map_err(|e| AccountError::Create {
            directory: cfg.directory.clone(),
            problem: e.to_string(),
        })?;
    let stored = Stored {
        directory: cfg.directory.clone(),
        credentials,
    };
    record.save(&stored).map_err(|e| match e {
        RecordError::Directory { dir, error } => AccountError::StoreDir {
            path: dir,
            source: Arc::new(error),
        },
        RecordError::Write { path, error } | RecordError::Unreadable { path, error } => {
            AccountError::Store {
                file: path,
                source: Arc::new(error),
            }
        }
        RecordError::Corrupt { path, error } => AccountError::Store {
            file: path,
            source: Arc::new(error.into()),
        },
    })?;
    tracing::info!(
        "created an ACME account at {} ({})",
        cfg.directory,
        file.display()
    );
    Ok(account)
}

/// The stored account file's bytes; `None` only when it does not exist.
/// Any other failure (permission denied, I/O error, too many open files)
/// is an error naming the file: an account is never created anew, and its
/// credentials never overwritten, because a read failed.
fn read_stored(file: &Path) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, AccountError> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(Some(zeroize::Zeroizing::new(bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AccountError::Read {
            file: file.to_owned(),
            source: Arc::new(e),
        }),
    }
}

/// An HTTPS client that trusts the system's roots, and `bundle`'s when
/// given (a test CA such as pebble, or a private CA).
fn http_client(bundle: Option<&Path>) -> Result<Box<dyn instant_acme::HttpClient>, AccountError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = match bundle {
        None => rustls_platform_verifier::Verifier::new(provider.clone())
            .map_err(AccountError::Verifier)?,
        Some(bundle) => {
            let pem = crate::source::read_limited(bundle, crate::source::PEM_SIZE_LIMIT).map_err(
                |e| AccountError::CaBundle {
                    bundle: bundle.to_owned(),
                    reason: e.to_string(),
                },
            )?;
            let extra = crate::cert::parse_pem_certs(&pem).map_err(|e| AccountError::CaBundle {
                bundle: bundle.to_owned(),
                reason: e.to_string(),
            })?;
            rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
                .map_err(|e| AccountError::CaBundle {
                    bundle: bundle.to_owned(),
                    reason: e.to_string(),
                })?
        }
    };
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(AccountError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, instant_acme::BodyWrapper<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    Ok(Box::new(client))
}

tokio::task_local! {
    /// The latest `Retry-After` (a Unix time) seen by the work in scope.
    static RETRY_AFTER: Arc<Mutex<Option<i64>>>;
}

/// Runs `work` and returns its output with the latest `Retry-After` the CA
/// gave on an error answer during it.
pub async fn observing<F: Future>(work: F) -> (F::Output, Option<i64>) {
    let slot = Arc::new(Mutex::new(None));
    let out = RETRY_AFTER.scope(slot.clone(), work).await;
    let seen = slot.lock().ok().and_then(|s| *s);
    (out, seen)
}

/// The HTTPS client, noting `Retry-After` for [`observing`].
struct Observed(Box<dyn instant_acme::HttpClient>);

type Answer = Result<instant_acme::BytesResponse, instant_acme::Error>;

impl instant_acme::HttpClient for Observed {
    fn request(
        &self,
        req: hyper::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Answer> + Send>> {
        let slot = RETRY_AFTER.try_with(Arc::clone).ok();
        let answer = self.0.request(req);
        Box::pin(async move {
            let rsp = answer.await?;
            let status = rsp.parts.status;
            if let Some(slot) = slot
                && (status.is_client_error() || status.is_server_error())
                && let Some(at) = rsp
                    .parts
                    .headers
                    .get(hyper::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| retry_after(v, crate::now()))
                && let Ok(mut seen) = slot.lock()
            {
                *seen = Some(seen.map_or(at, |s| s.max(at)));
            }
            Ok(rsp)
        })
    }
}

/// A `Retry-After` value (delay-seconds or an HTTP-date) as a Unix time.
pub fn retry_after(value: &str, now: i64) -> Option<i64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u32>() {
        return Some(now + i64::from(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    let secs = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account whose CA cannot be reached: creating one fails at once.
    fn unreachable() -> AcmeAccount {
        AcmeAccount {
            directory: "https://127.0.0.1:1/directory".to_owned(),
            email: None,
            ca_bundle: None,
            eab: None,
            profile: None,
        }
    }

    #[test]
    fn an_unreadable_account_file_is_an_error_naming_it_not_a_new_account() {
        let state = tempfile::tempdir().unwrap();
        let cfg = unreachable();
        let state_dir = StateDir::new(state.path().to_owned());
        let file = state_dir
            .acme_account::<Stored>(&cfg.directory)
            .path()
            .to_owned();
        // A directory where the file belongs: reading fails with EISDIR,
        // standing in for EACCES, EIO or EMFILE.
        std::fs::create_dir_all(&file).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let Err(e) = rt.block_on(load_or_create(&cfg, &state_dir)) else {
            panic!("an unreadable account file was accepted");
        };
        let e = e.to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("cannot read the ACME account"), "{e}");
        assert!(!e.contains("creating an ACME account"), "{e}");
        assert!(file.is_dir(), "the stored account was replaced");
    }

    #[test]
    fn only_a_missing_account_file_means_create_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            read_stored(&dir.path().join("none.json"))
                .unwrap()
                .is_none()
        );
        let f = dir.path().join("a.json");
        std::fs::write(&f, b"{}").unwrap();
        assert_eq!(read_stored(&f).unwrap().unwrap().as_slice(), b"{}");
        assert!(read_stored(dir.path()).is_err());
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(retry_after("120", 1_000), Some(1_120));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 0),
            Some(784_111_777)
        );
        assert_eq!(retry_after("soon", 0), None);
        assert_eq!(retry_after("-5", 0), None);
    }
}
