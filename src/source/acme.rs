//! An `acme` source's current certificate: `state_dir/acme/NAME/bundle.pem`,
//! written by `mxkeys renew` (or the daemon) as one file holding the private
//! key, the leaf and the intermediates, so it is never seen half-renewed.

use std::path::{Path, PathBuf};

use super::{Harvest, ReadError, Reader, SourceErrorKind};
use crate::cert::{self, PrivateKey};
use crate::config::AcmeSource;

/// Where an `acme` source keeps its certificate.
pub fn bundle_path(source: &AcmeSource) -> PathBuf {
    source.dir.bundle()
}

pub fn read(reader: &Reader, source: &AcmeSource) -> Harvest {
    let mut harvest = Harvest::default();
    let path = bundle_path(source);
    if !path.exists() {
        harvest.warnings.push(format!(
            "source {}: no certificate ordered yet ({} does not exist; `mxkeys renew` orders it)",
            reader.label,
            path.display()
        ));
        return harvest;
    }
    let entry = path.display().to_string();
    match read_bundle(&path) {
        Ok((certs, key)) => match reader.pem_candidate(entry, 0, certs, key) {
            Ok(c) => harvest.candidates.push(c),
            Err(e) => harvest.errors.push(e),
        },
        Err(e) => harvest
            .errors
            .push(reader.error(Some(entry), e.kind(), e.to_string())),
    }
    harvest
}

/// The certificates and key of a bundle file.
type Bundle = (Vec<rustls_pki_types::CertificateDer<'static>>, PrivateKey);

/// Why a bundle file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Read, but its certificates or its key do not parse.
    #[error(transparent)]
    Pem(#[from] cert::CertError),
}

impl BundleError {
    /// The kind of source error it is.
    pub fn kind(&self) -> SourceErrorKind {
        match self {
            BundleError::Read(_) => SourceErrorKind::Unreadable,
            BundleError::Pem(_) => SourceErrorKind::Malformed,
        }
    }
}

/// The certificates and key of a bundle file.
pub fn read_bundle(path: &Path) -> Result<Bundle, BundleError> {
    let text = zeroize::Zeroizing::new(super::read_limited(path, super::PEM_SIZE_LIMIT)?);
    let certs = cert::parse_pem_certs(&text)?;
    let key = PrivateKey::from_pem(&text)?;
    Ok((certs, key))
}
