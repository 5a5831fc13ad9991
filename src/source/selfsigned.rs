//! The self-signed fallback: a certificate mxkeys makes itself with rcgen,
//! kept in `state_dir/self-signed/`, covering every target's names.
//!
//! Its candidates are marked as fallback: selection uses them only when no
//! other certificate is valid for a target, so a mail server still offers
//! STARTTLS (opportunistic TLS between MTAs does not check certificates)
//! while the real source is being set up.

use std::path::Path;

use rcgen::{CertificateParams, DnType, KeyPair, RsaKeySize};

use super::{Harvest, Persist, Reader, SourceErrorKind};
use crate::cert::{self, Timeliness};
use crate::config::{Config, KeyTypeFilter};
use crate::names::{self, DnsName};
use crate::state::SelfSignedDir;

/// What the fallback must cover.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub names: Vec<DnsName>,
    pub ecdsa: bool,
    pub rsa: bool,
}

pub fn wanted(config: &Config) -> Wanted {
    let mut w = Wanted::default();
    for t in &config.targets {
        w.names.extend(t.domains.iter().cloned());
        for slot in &t.slots {
            match slot.key_type {
                KeyTypeFilter::Rsa => w.rsa = true,
                KeyTypeFilter::Ecdsa | KeyTypeFilter::Any => w.ecdsa = true,
            }
        }
    }
    w.names.sort();
    w.names.dedup();
    w
}

pub fn read(
    reader: &Reader,
    dir: &SelfSignedDir,
    days: u32,
    wanted: &Wanted,
    persist: Persist,
) -> Harvest {
    let mut harvest = Harvest::default();
    if wanted.names.is_empty() {
        return harvest;
    }
    let kinds = [("ecdsa", wanted.ecdsa), ("rsa", wanted.rsa)];
    for (index, (kind, _)) in kinds.iter().enumerate().filter(|(_, (_, on))| *on) {
        let crt = dir.cert(kind);
        let key = dir.key(kind);
        let entry = crt.display().to_string();
        if let Some(c) = existing(reader, &crt, &key, days, wanted, index) {
            harvest.candidates.push(c);
            continue;
        }
        let generated = generate(kind == &"rsa", days, &wanted.names).map_err(|e| {
            reader.error(
                Some(entry.clone()),
                SourceErrorKind::Fallback,
                format!("cannot generate: {e}"),
            )
        });
        let (cert_pem, key_pem) = match generated {
            Ok(g) => g,
            Err(e) => {
                harvest.errors.push(e);
                continue;
            }
        };
        if persist == Persist::Yes {
            let stored = std::fs::create_dir_all(dir.path())
                .and_then(|()| crate::install::write_atomic(&key, key_pem.as_bytes(), 0o600, None))
                .and_then(|()| {
                    crate::install::write_atomic(&crt, cert_pem.as_bytes(), 0o644, None)
                });
            match stored {
                Ok(()) => tracing::info!(
                    "generated a self-signed {kind} certificate in {} for {}",
                    dir.display(),
                    join(&wanted.names)
                ),
                Err(e) => harvest.errors.push(reader.error(
                    Some(entry.clone()),
                    SourceErrorKind::Fallback,
                    format!("cannot store: {}", super::io_reason(&e)),
                )),
            }
        }
        let parsed = cert::parse_pem_certs(cert_pem.as_bytes())
            .and_then(|certs| Ok((certs, cert::PrivateKey::from_pem(key_pem.as_bytes())?)));
        match parsed {
            Ok((certs, key)) => match reader.pem_candidate(entry, index, certs, key) {
                Ok(mut c) => {
                    c.fallback = true;
                    harvest.candidates.push(c);
                }
                Err(e) => harvest.errors.push(e),
            },
            Err(e) => harvest.errors.push(reader.error(
                Some(entry),
                SourceErrorKind::Fallback,
                e.to_string(),
            )),
        }
    }
    harvest
}

fn join(names: &[DnsName]) -> String {
    names
        .iter()
        .map(DnsName::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The stored certificate, when it still covers every name and has more
/// than a third of its lifetime left.
fn existing(
    reader: &Reader,
    crt: &Path,
    key: &Path,
    days: u32,
    wanted: &Wanted,
    index: usize,
) -> Option<super::Candidate> {
    let certs = super::read_pem_certs(crt).ok()?;
    let key = super::read_pem_key(key).ok()?;
    let mut c = reader
        .pem_candidate(crt.display().to_string(), index, certs, key)
        .ok()?;
    let now = crate::now();
    let renew_at = c.leaf.validity.not_after - i64::from(days) * 86_400 / 3;
    let fresh = c.leaf.validity.at(now) == Timeliness::Valid && now < renew_at;
    let covers = names::cover_all(&c.leaf.names, &wanted.names).is_ok();
    let matches = c.bundle().and_then(|b| b.verify()).is_ok();
    c.fallback = true;
    (fresh && covers && matches).then_some(c)
}

/// A new key and certificate as PEM (certificate, PKCS#8 key).
fn generate(
    rsa: bool,
    days: u32,
    names: &[DnsName],
) -> Result<(String, zeroize::Zeroizing<String>), rcgen::Error> {
    let key = if rsa {
        KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)?
    } else {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?
    };
    let mut params = CertificateParams::new(
        names
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect::<Vec<_>>(),
    )?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map(DnsName::as_str).unwrap_or("mxkeys"),
    );
    params
        .distinguished_name
        .push(DnType::OrganizationName, "mxkeys self-signed fallback");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}
