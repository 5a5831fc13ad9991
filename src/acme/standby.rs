//! The DANE standby key of `acme` sources that serve DANE targets, and key
//! rollover requests: the effects only. The rules are [`super::schedule`]'s
//! pure functions ([`key_choice`](super::schedule::key_choice),
//! [`standby_needed`](super::schedule::standby_needed),
//! [`after_issue`](super::schedule::after_issue)).
//!
//! - The standby key (`standby-key.pem`, PKCS#8, of the source's key type)
//!   is created with its final mode 0600 and replaced atomically, only
//!   under the ACME lock. It is never served and never logged; only its
//!   public `3 1 1` hash is, which the DANE pass publishes
//!   ([`standby_spki`]) long before a rollover certifies it.
//! - A rollover request is its own file (`rollover-request`), written by
//!   `mxkeys dane rollover` without the lock: no pass saving the source's
//!   record can lose it. Only a stored certificate for the standby key
//!   removes it, so a request survives a failed order or a killed run.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{KeyPair, PublicKeyData as _};
use zeroize::Zeroizing;

use super::schedule::{self, NewKey, StandbyFound};
use super::{AcmeError, SourceState};
use crate::cert::{Curve, KeyType};
use crate::config::{AcmeSource, Config};

/// What DANE asks of an `acme` source that serves DANE targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaneLink {
    /// Roll to the standby key every this many renewals: the smallest
    /// `key_rollover` of its DANE targets.
    pub key_rollover: Option<u32>,
}

/// Whether `source` serves DANE targets (`dane_targets`), and how.
pub fn link(config: &Config, source: &AcmeSource) -> Option<DaneLink> {
    if source.dane_targets.is_empty() {
        return None;
    }
    let key_rollover = config
        .targets
        .iter()
        .filter(|t| source.dane_targets.contains(&t.name))
        .filter_map(|t| t.dane.as_ref()?.key_rollover)
        .min();
    Some(DaneLink { key_rollover })
}

/// A standby key read from its file.
pub struct Standby {
    pub pem: Zeroizing<String>,
    /// Its SubjectPublicKeyInfo (DER), as a certificate for it carries it.
    pub spki: Vec<u8>,
    pub key_type_matches: bool,
}

/// The standby key's file, or why it cannot be used (`Err`: it exists but
/// holds no usable key).
fn read(source: &AcmeSource) -> Result<Option<Standby>, ()> {
    let path = source.dir.standby_key();
    let bytes = match crate::source::read_limited(&path, crate::source::PEM_SIZE_LIMIT) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(crate::source::ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(None);
        }
        Err(_) => return Err(()),
    };
    let pem = Zeroizing::new(std::str::from_utf8(&bytes).map_err(|_| ())?.to_owned());
    let pair = KeyPair::from_pem(&pem).map_err(|_| ())?;
    Ok(Some(Standby {
        spki: pair.subject_public_key_info(),
        key_type_matches: key_type(&pair).is_some_and(|t| source.key_type.matches(t)),
        pem,
    }))
}

/// The key type of a key pair mxkeys made (or could have).
fn key_type(pair: &KeyPair) -> Option<KeyType> {
    let alg = pair.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Some(KeyType::Ecdsa(Curve::P256))
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Some(KeyType::Ecdsa(Curve::P384))
    } else if alg == &rcgen::PKCS_RSA_SHA256 {
        let rsa = aws_lc_rs::rsa::KeyPair::from_pkcs8(pair.serialized_der()).ok()?;
        let bits = u32::try_from(rsa.public_modulus_len() * 8).ok()?;
        Some(KeyType::Rsa { bits })
    } else {
        None
    }
}

/// The SubjectPublicKeyInfo (DER) of a certificate.
pub fn leaf_spki(der: &[u8]) -> Option<Vec<u8>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.public_key().raw.to_vec())
}

/// The standby key as [`schedule::standby_needed`] sees it, next to the
/// SPKI of the certificate held.
fn found(source: &AcmeSource, held_spki: Option<&[u8]>) -> StandbyFound {
    match read(source) {
        Ok(None) => StandbyFound::Missing,
        Err(()) => StandbyFound::Unusable,
        Ok(Some(s)) => StandbyFound::Present {
            key_type_matches: s.key_type_matches,
            held: held_spki == Some(s.spki.as_slice()),
        },
    }
}

/// The SPKI of the certificate `source` holds.
fn held_spki(source: &AcmeSource) -> Option<Vec<u8>> {
    let (certs, _) = crate::source::acme::read_bundle(&source.dir.bundle()).ok()?;
    leaf_spki(certs.first()?.as_ref())
}

/// Whether a pass must take the ACME lock for the standby: one is to be
/// made, or a rollover was fulfilled and its request is still there.
pub fn needs_settling(config: &Config, source: &AcmeSource) -> bool {
    if link(config, source).is_none() {
        return false;
    }
    let held = held_spki(source);
    let found = found(source, held.as_deref());
    schedule::standby_needed(true, found).is_some()
}

/// Under the ACME lock: when the certificate held is for the standby key
/// (a rollover happened; the run that stored it may have been stopped
/// before it finished), the request is fulfilled and the renewals count
/// from zero; then a new standby key is made when [`schedule`] says so.
pub fn settle(config: &Config, source: &AcmeSource) -> Result<(), AcmeError> {
    if link(config, source).is_none() {
        return Ok(());
    }
    let held = held_spki(source);
    let found = found(source, held.as_deref());
    if let StandbyFound::Present { held: true, .. } = found {
        let mut state = SourceState::load(source);
        if state.renewals_since_rollover != 0 {
            state.renewals_since_rollover = 0;
            state.save(source)?;
        }
        clear_request(source);
    }
    if let Some(reason) = schedule::standby_needed(true, found) {
        let made = generate(source)?;
        tracing::info!(
            "acme source {}: new standby key ({reason}); its record: 3 1 1 {}",
            source.name,
            crate::cert::fingerprint(&made.spki)
        );
    }
    Ok(())
}

/// Makes a new standby key of the source's type and puts it in place
/// (0600 from creation, atomically).
fn generate(source: &AcmeSource) -> Result<Standby, AcmeError> {
    super::ensure_source_dir(source)?;
    let pair = super::order::new_key(source.key_type)?;
    let pem = Zeroizing::new(pair.serialize_pem());
    let path = source.dir.standby_key();
    crate::install::write_atomic(&path, pem.as_bytes(), 0o600, None).map_err(|e| {
        AcmeError::StandbyKey {
            path: path.clone(),
            why: e.to_string(),
        }
    })?;
    Ok(Standby {
        spki: pair.subject_public_key_info(),
        key_type_matches: true,
        pem,
    })
}

/// The standby key to certify in a rollover, checked usable.
pub fn for_order(source: &AcmeSource) -> Result<Zeroizing<String>, AcmeError> {
    let unusable = |why: &str| AcmeError::StandbyKey {
        path: source.dir.standby_key(),
        why: why.to_owned(),
    };
    match read(source) {
        Ok(Some(s)) if s.key_type_matches => Ok(s.pem),
        Ok(Some(_)) => Err(unusable("not of the configured key type")),
        Ok(None) => Err(unusable("missing")),
        Err(()) => Err(unusable("no usable key")),
    }
}

/// How a certificate just stored relates to the standby key and to the
/// key held before.
pub fn new_key(source: &AcmeSource, leaf: &[u8], previous_leaf: Option<&[u8]>) -> NewKey {
    let Some(spki) = leaf_spki(leaf) else {
        return NewKey::Other;
    };
    let standby = read(source).ok().flatten();
    if standby.is_some_and(|s| s.spki == spki) {
        NewKey::Standby
    } else if previous_leaf.and_then(leaf_spki).as_ref() == Some(&spki) {
        NewKey::Same
    } else {
        NewKey::Other
    }
}

/// Whether a rollover is requested for `source` (and it serves DANE
/// targets).
pub fn requested(config: &Config, source: &AcmeSource) -> bool {
    link(config, source).is_some() && source.dir.rollover_request().exists()
}

/// Removes a fulfilled rollover request.
pub fn clear_request(source: &AcmeSource) {
    let path = source.dir.rollover_request();
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("acme source {}: {}: {e}", source.name, path.display()),
    }
}

/// Why `mxkeys dane rollover` could not record its request.
#[derive(Debug, thiserror::Error)]
pub enum RolloverError {
    #[error("no DANE target named {name:?} (configured: {})", if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownTarget { name: String, known: Vec<String> },
    #[error("DANE target {0:?}: no acme source serves it (its `dane_targets` do not name it)")]
    NotServed(String),
    #[error("{}: cannot record the rollover request: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error(transparent)]
    Acme(#[from] AcmeError),
}

/// Records a key rollover request on every `acme` source serving the DANE
/// target `target`; returns their names. The next ACME pass orders with
/// each one's standby key.
pub fn request(config: &Config, target: &str) -> Result<Vec<String>, RolloverError> {
    let served = served_by(config, target)?;
    let now = crate::now();
    for source in &served {
        super::ensure_source_dir(source)?;
        let path = source.dir.rollover_request();
        crate::install::write_atomic(&path, format!("{now}\n").as_bytes(), 0o600, None).map_err(
            |e| RolloverError::Write {
                path: path.clone(),
                source: Arc::new(e),
            },
        )?;
    }
    Ok(served.iter().map(|s| s.name.clone()).collect())
}

/// The `acme` sources serving the DANE target `target`.
fn served_by<'c>(config: &'c Config, target: &str) -> Result<Vec<&'c AcmeSource>, RolloverError> {
    if !config
        .targets
        .iter()
        .any(|t| t.name == target && t.dane.is_some())
    {
        return Err(RolloverError::UnknownTarget {
            name: target.to_owned(),
            known: config
                .targets
                .iter()
                .filter(|t| t.dane.is_some())
                .map(|t| t.name.clone())
                .collect(),
        });
    }
    let served: Vec<&AcmeSource> = config
        .acme_sources()
        .filter(|s| s.dane_targets.iter().any(|t| t == target))
        .collect();
    if served.is_empty() {
        return Err(RolloverError::NotServed(target.to_owned()));
    }
    Ok(served)
}

/// The SubjectPublicKeyInfo (DER) of the standby key of the `acme` source
/// named `source`, when it serves DANE targets and its standby key is
/// usable: the DANE pass publishes `3 1 1 sha256(spki)`.
pub fn standby_spki(config: &Config, source: &str) -> Option<Vec<u8>> {
    let source = config.acme_sources().find(|s| s.name == source)?;
    link(config, source)?;
    read(source)
        .ok()
        .flatten()
        .filter(|s| s.key_type_matches)
        .map(|s| s.spki)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A configuration with one acme source `m` of `key_type` serving the
    /// DANE target `t`, its state under `state`.
    fn config(state: &std::path::Path, key_type: &str) -> Config {
        Config::parse(
            std::path::Path::new("/etc/mxkeys/test.toml"),
            &format!(
                "state_dir = {state:?}\n\
                 [[source]]\ntype = \"acme\"\nname = \"m\"\ndomains = [\"mail.example.com\"]\n\
                 challenge = \"http-01\"\nkey_type = \"{key_type}\"\n\
                 [[target]]\nname = \"t\"\ndomains = [\"mail.example.com\"]\ncombined = \"/c.pem\"\n\
                 [target.dane]\ndns = \"paste\"\n\
                 [dns.paste]\ntype = \"manual\"\n"
            ),
            &crate::config::Host::current(),
        )
        .unwrap()
    }

    #[test]
    fn a_standby_key_is_made_0600_of_the_configured_type_and_another_type_is_never_certified() {
        // (type made, type configured afterwards)
        let table = [
            ("ecdsa-p256", "ecdsa-p384"),
            ("ecdsa-p384", "ecdsa-p256"),
            ("rsa-2048", "rsa-3072"),
        ];
        for (made, then) in table {
            let tmp = tempfile::tempdir().unwrap();
            let state = tmp.path().join("state");
            let before = config(&state, made);
            let source = before.acme_sources().next().unwrap();
            assert!(link(&before, source).is_some(), "{made}: not linked");
            assert_eq!(found(source, None), StandbyFound::Missing);
            assert!(needs_settling(&before, source));
            settle(&before, source).unwrap();
            let path = source.dir.standby_key();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{made}");
            let Ok(Some(standby)) = read(source) else {
                panic!("{made}: no standby key read back");
            };
            assert!(standby.key_type_matches, "{made}");
            assert_eq!(standby_spki(&before, "m"), Some(standby.spki.clone()));
            assert!(for_order(source).is_ok(), "{made}");
            assert!(!needs_settling(&before, source), "{made}: made again");
            // Certified now: a new one is needed.
            let held = found(source, Some(&standby.spki));
            assert_eq!(
                schedule::standby_needed(true, held),
                Some(schedule::StandbyReason::RolledOver)
            );

            let after = config(&state, then);
            let source = after.acme_sources().next().unwrap();
            assert_eq!(
                found(source, None),
                StandbyFound::Present {
                    key_type_matches: false,
                    held: false
                },
                "{made} -> {then}"
            );
            assert!(for_order(source).is_err(), "{made} -> {then}");
            assert_eq!(standby_spki(&after, "m"), None, "{made} -> {then}");
            settle(&after, source).unwrap();
            let Ok(Some(remade)) = read(source) else {
                panic!("{then}: no standby key read back");
            };
            assert!(remade.key_type_matches, "{made} -> {then}");
            assert_ne!(remade.spki, standby.spki);
        }
    }

    #[test]
    fn a_corrupt_standby_key_is_replaced_and_a_source_without_dane_keeps_none() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let c = config(&state, "ecdsa-p256");
        let source = c.acme_sources().next().unwrap();
        source.dir.ensure().unwrap();
        std::fs::write(source.dir.standby_key(), "not a key\n").unwrap();
        assert_eq!(found(source, None), StandbyFound::Unusable);
        assert!(for_order(source).is_err());
        settle(&c, source).unwrap();
        assert!(for_order(source).is_ok());

        let plain = Config::parse(
            std::path::Path::new("/etc/mxkeys/test.toml"),
            &format!(
                "state_dir = {:?}\n\
                 [[source]]\ntype = \"acme\"\nname = \"p\"\ndomains = [\"mail.example.com\"]\n\
                 challenge = \"http-01\"\n\
                 [[target]]\nname = \"t\"\ndomains = [\"mail.example.com\"]\ncombined = \"/c.pem\"\n",
                tmp.path().join("plain")
            ),
            &crate::config::Host::current(),
        )
        .unwrap();
        let source = plain.acme_sources().next().unwrap();
        assert!(link(&plain, source).is_none());
        assert!(!needs_settling(&plain, source));
        settle(&plain, source).unwrap();
        assert!(!source.dir.standby_key().exists());
        assert_eq!(standby_spki(&plain, "p"), None);
        assert!(matches!(
            request(&plain, "t"),
            Err(RolloverError::UnknownTarget { .. })
        ));
    }
}
