//! The ACME account: created once per CA directory, its credentials kept in
//! `state_dir/acme/accounts/` (mode 0600), reused afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use serde::{Deserialize, Serialize};

use crate::config::AcmeAccount;

/// What is stored for an account.
#[derive(Serialize, Deserialize)]
struct Stored {
    directory: String,
    credentials: AccountCredentials,
}

/// Where the account for `directory` is kept.
pub fn path(state_dir: &Path, directory: &str) -> PathBuf {
    let digest = crate::cert::fingerprint(directory.as_bytes());
    state_dir
        .join("acme")
        .join("accounts")
        .join(format!("{}.json", &digest[..16]))
}

/// The account for the configured CA: loaded when stored, else created
/// (and stored before it is used).
pub async fn load_or_create(cfg: &AcmeAccount, state_dir: &Path) -> Result<Account, String> {
    let file = path(state_dir, &cfg.directory);
    let builder = || -> Result<instant_acme::AccountBuilder, String> {
        match &cfg.ca_bundle {
            None => Account::builder().map_err(|e| format!("ACME client: {e}")),
            Some(bundle) => Ok(Account::builder_with_http(http_client(bundle)?)),
        }
    };
    if let Ok(bytes) = std::fs::read(&file) {
        let stored: Stored = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{}: unreadable account: {e}", file.display()))?;
        return builder()?
            .from_credentials(stored.credentials)
            .await
            .map_err(|e| format!("ACME account from {}: {e}", file.display()));
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let eab = match &cfg.eab {
        None => None,
        Some((kid, secret)) => {
            use base64::Engine as _;
            let text = secret
                .read()
                .map_err(|e| format!("[acme] EAB HMAC key: {e}"))?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| format!("[acme] EAB HMAC key in {secret}: not base64url"))?;
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
        .map_err(|e| format!("creating an ACME account at {}: {e}", cfg.directory))?;
    let stored = Stored {
        directory: cfg.directory.clone(),
        credentials,
    };
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(&stored).map_err(|e| format!("account: {e}"))?,
    );
    if let Some(dir) = file.parent() {
        crate::state::ensure_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::install::write_atomic(&file, &json, 0o600, None)
        .map_err(|e| format!("{}: cannot store the account: {e}", file.display()))?;
    tracing::info!(
        "created an ACME account at {} ({})",
        cfg.directory,
        file.display()
    );
    Ok(account)
}

/// An HTTPS client that trusts the system's roots and `bundle`'s (a test CA
/// such as pebble, or a private CA).
fn http_client(bundle: &Path) -> Result<Box<dyn instant_acme::HttpClient>, String> {
    let pem = crate::source::read_limited(bundle, crate::source::PEM_SIZE_LIMIT)
        .map_err(|e| format!("[acme] ca_bundle {}: {e}", bundle.display()))?;
    let extra = crate::cert::parse_pem_certs(&pem)
        .map_err(|e| format!("[acme] ca_bundle {}: {e}", bundle.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("[acme] ca_bundle {}: {e}", bundle.display()))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
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
