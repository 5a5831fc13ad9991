//! An `acme` source's current certificate: `state_dir/acme/NAME/bundle.pem`,
//! written by `mxkeys renew` (or the daemon) as one file holding the private
//! key, the leaf and the intermediates, so it is never seen half-renewed.

use std::path::{Path, PathBuf};

use super::{Harvest, Reader, SourceErrorKind};
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
    match read_classified(&path) {
        Ok((certs, key)) => match reader.pem_candidate(entry, 0, certs, key) {
            Ok(c) => harvest.candidates.push(c),
            Err(e) => harvest.errors.push(e),
        },
        Err((kind, reason)) => harvest.errors.push(reader.error(Some(entry), kind, reason)),
    }
    harvest
}

/// The certificates and key of a bundle file, or why not, with its kind.
type Bundle = (Vec<rustls_pki_types::CertificateDer<'static>>, PrivateKey);

fn read_classified(path: &Path) -> Result<Bundle, (SourceErrorKind, String)> {
    let text = zeroize::Zeroizing::new(
        super::read_limited(path, super::PEM_SIZE_LIMIT)
            .map_err(|r| (SourceErrorKind::Unreadable, r))?,
    );
    let malformed = |e: cert::CertError| (SourceErrorKind::Malformed, e.to_string());
    let certs = cert::parse_pem_certs(&text).map_err(malformed)?;
    let key = PrivateKey::from_pem(&text).map_err(malformed)?;
    Ok((certs, key))
}

/// The certificates and key of a bundle file.
pub fn read_bundle(
    path: &Path,
) -> Result<(Vec<rustls_pki_types::CertificateDer<'static>>, PrivateKey), String> {
    let text = zeroize::Zeroizing::new(super::read_limited(path, super::PEM_SIZE_LIMIT)?);
    let certs = cert::parse_pem_certs(&text).map_err(|e| e.to_string())?;
    let key = PrivateKey::from_pem(&text).map_err(|e| e.to_string())?;
    Ok((certs, key))
}
