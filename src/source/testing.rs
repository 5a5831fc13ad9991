//! Certificates for unit tests (test builds only), made at test time: a CA
//! that issues leaves with exactly the names, dates and key type a table
//! case needs, self-signed certificates, and [`Candidate`]s made of them.
//! No files: everything stays in memory.

use std::sync::{Arc, OnceLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, RsaKeySize,
};
use rustls_pki_types::CertificateDer;

use super::{Candidate, Material, Origin};
use crate::cert::{Bundle, Leaf, PrivateKey};

/// The key algorithm of a test leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Ecdsa,
    Rsa,
}

fn key_pair(alg: Alg) -> KeyPair {
    match alg {
        Alg::Ecdsa => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("ecdsa key"),
        // RSA generation is slow: one key serves every RSA leaf.
        Alg::Rsa => {
            static RSA: OnceLock<String> = OnceLock::new();
            let pem = RSA.get_or_init(|| {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
                    .expect("rsa key")
                    .serialize_pem()
            });
            KeyPair::from_pem(pem).expect("rsa key")
        }
    }
}

fn params(names: &[&str], cn: &str, not_before: i64, not_after: i64) -> CertificateParams {
    let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        .expect("names");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.not_before = time::OffsetDateTime::from_unix_timestamp(not_before).expect("not_before");
    p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).expect("not_after");
    p
}

/// A certificate chain (leaf first) and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
}

impl Issued {
    pub fn bundle(&self) -> Bundle {
        Bundle {
            certs: self.certs.clone(),
            key: self.key.clone(),
        }
    }

    /// The same certificates with another key (a key from another
    /// generation: a mismatch).
    pub fn with_key_of(&self, other: &Issued) -> Issued {
        Issued {
            certs: self.certs.clone(),
            key: other.key.clone(),
        }
    }

    /// A candidate offering this chain, from source `source` (label `src`
    /// followed by its number) entry `entry`.
    pub fn candidate(&self, source: usize, entry: &str, index: usize, fallback: bool) -> Candidate {
        let leaf = Leaf::parse(self.certs[0].as_ref()).expect("test leaf parses");
        Candidate {
            origin: Origin {
                source: Arc::from(format!("src{source}").as_str()),
                source_index: source,
                entry: entry.to_owned(),
                entry_index: index,
            },
            leaf,
            fallback,
            material: Material::Parsed {
                certs: self.certs.clone(),
                key: Arc::new(self.key.clone()),
            },
        }
    }
}

/// A test certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut p = params(&[], "mxkeys test CA", 0, 4_102_444_800);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ca {
            issuer: CertifiedIssuer::self_signed(p, key_pair(Alg::Ecdsa)).expect("test CA"),
        }
    }

    /// A leaf for `names`, valid from `not_before` to `not_after`, with
    /// its chain (leaf, CA).
    pub fn issue(&self, names: &[&str], alg: Alg, not_before: i64, not_after: i64) -> Issued {
        self.issue_for(names, key_pair(alg), not_before, not_after)
    }

    /// A leaf for `names` with the key of `previous`: a renewal that keeps
    /// its key (from this CA or another).
    pub fn reissue(
        &self,
        previous: &Issued,
        names: &[&str],
        not_before: i64,
        not_after: i64,
    ) -> Issued {
        let key = KeyPair::from_pem(&previous.key.to_pem()).expect("test key");
        self.issue_for(names, key, not_before, not_after)
    }

    fn issue_for(&self, names: &[&str], key: KeyPair, not_before: i64, not_after: i64) -> Issued {
        let cn = names.first().copied().unwrap_or("leaf");
        let leaf = params(names, cn, not_before, not_after)
            .signed_by(&key, &self.issuer)
            .expect("test leaf");
        Issued {
            certs: vec![leaf.der().clone(), self.issuer.der().clone()],
            key: PrivateKey::from_pem(key.serialize_pem().as_bytes()).expect("test key"),
        }
    }
}

/// A self-signed leaf for `names` (what the fallback makes).
pub fn self_signed(names: &[&str], alg: Alg, not_before: i64, not_after: i64) -> Issued {
    let key = key_pair(alg);
    let cn = names.first().copied().unwrap_or("leaf");
    let cert = params(names, cn, not_before, not_after)
        .self_signed(&key)
        .expect("self-signed");
    Issued {
        certs: vec![cert.der().clone()],
        key: PrivateKey::from_pem(key.serialize_pem().as_bytes()).expect("test key"),
    }
}
