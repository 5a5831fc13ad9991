//! DKIM keys (rcgen on aws-lc-rs, PKCS#8 PEM) and the TXT records that
//! publish them: `v=DKIM1; k=rsa; p=<SubjectPublicKeyInfo, base64>` or
//! `v=DKIM1; k=ed25519; p=<raw 32-byte key, base64>` (RFC 6376, RFC 8463).

use base64::Engine as _;
use rcgen::{KeyPair, PublicKeyData, RsaKeySize};
use zeroize::Zeroizing;

use crate::dkim::machine::DkimAlgorithm;

/// Why a key could not be generated, read or published. Never carries
/// key material: the causes are the crypto libraries' own error values.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "rsa-1024: aws-lc-rs does not generate RSA keys under 2048 bits (RFC 8301 allows 1024, recommends 2048); import one with `mxkeys dkim import` or use rsa-2048"
    )]
    NoRsa1024,
    #[error("generating a {algorithm} key: {source}", algorithm = .algorithm.name())]
    Generate {
        algorithm: DkimAlgorithm,
        #[source]
        source: rcgen::Error,
    },
    #[error("generating an ed25519 key: {0}")]
    GenerateEd25519(aws_lc_rs::error::Unspecified),
    #[error("encoding an ed25519 key: {0}")]
    EncodeEd25519(aws_lc_rs::error::Unspecified),
    #[error("ed25519 key: {0}")]
    LoadEd25519(#[source] rcgen::Error),
    #[error("a DKIM key must be RSA or Ed25519")]
    NotRsaOrEd25519,
    #[error("not a usable private key: {0}")]
    Unusable(#[source] rcgen::Error),
    /// The public key inside could not be parsed (the parser's text).
    #[error("public key: {0}")]
    PublicKey(String),
    #[error("RSA keys of {0} bits are not one of rsa-1024, rsa-2048, rsa-3072")]
    RsaSize(usize),
    #[error("not a PKCS#8 PEM key: {0}")]
    NotPkcs8(#[source] rustls_pki_types::pem::Error),
    #[error("not an ed25519 key: {0}")]
    NotEd25519(aws_lc_rs::error::KeyRejected),
    #[error("cannot read the ed25519 seed")]
    Seed,
}

/// A new private key and the record value that publishes it.
pub struct NewKey {
    pub pem: Zeroizing<String>,
    pub record: String,
}

/// Generates a key of `algorithm`.
pub fn generate(algorithm: DkimAlgorithm) -> Result<NewKey, KeyError> {
    let key = match algorithm {
        DkimAlgorithm::Rsa1024 => {
            return Err(KeyError::NoRsa1024);
        }
        DkimAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
        }
        DkimAlgorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
        }
        DkimAlgorithm::Ed25519 => return generate_ed25519(),
    }
    .map_err(|source| KeyError::Generate { algorithm, source })?;
    let record = record_of(&key)?;
    Ok(NewKey {
        pem: Zeroizing::new(key.serialize_pem()),
        record,
    })
}

/// Ed25519 keys are written as PKCS#8 v1 (RFC 5208, no public key inside):
/// the v2 form rcgen writes is refused by OpenSSL 3.0, and so by OpenDKIM
/// and Rspamd on Debian 12.
fn generate_ed25519() -> Result<NewKey, KeyError> {
    use aws_lc_rs::signature::Ed25519KeyPair;
    let pair = Ed25519KeyPair::generate().map_err(KeyError::GenerateEd25519)?;
    let v1 = pair.to_pkcs8v1().map_err(KeyError::EncodeEd25519)?;
    let pem = crate::cert::pem_encode("PRIVATE KEY", v1.as_ref());
    let key = KeyPair::from_pem(&pem).map_err(KeyError::LoadEd25519)?;
    let record = record_of(&key)?;
    Ok(NewKey { pem, record })
}

/// The record value publishing a key.
fn record_of(key: &KeyPair) -> Result<String, KeyError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if key.algorithm() == &rcgen::PKCS_ED25519 {
        Ok(format!(
            "v=DKIM1; k=ed25519; p={}",
            b64.encode(key.public_key_raw())
        ))
    } else if key.algorithm() == &rcgen::PKCS_RSA_SHA256 {
        Ok(format!(
            "v=DKIM1; k=rsa; p={}",
            b64.encode(key.subject_public_key_info())
        ))
    } else {
        Err(KeyError::NotRsaOrEd25519)
    }
}

/// The algorithm and record value of an existing private key (PEM:
/// PKCS#8, or PKCS#1 for RSA), for `mxkeys dkim import`.
pub fn inspect(pem: &str) -> Result<(DkimAlgorithm, String), KeyError> {
    let key = match KeyPair::from_pem(pem) {
        Ok(key) => key,
        Err(e) => {
            // aws-lc-rs loads no RSA key under 2048 bits; an rsa-1024 key
            // is still adopted (mxkeys never signs with it: the signer does).
            return match rsa_1024_record(pem) {
                Some(record) => Ok((DkimAlgorithm::Rsa1024, record)),
                None => Err(KeyError::Unusable(e)),
            };
        }
    };
    let record = record_of(&key)?;
    let algorithm = if key.algorithm() == &rcgen::PKCS_ED25519 {
        DkimAlgorithm::Ed25519
    } else {
        // The RSA modulus size, from the SubjectPublicKeyInfo.
        use x509_parser::prelude::FromDer as _;
        let spki = key.subject_public_key_info();
        let (_, info) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki)
            .map_err(|e| KeyError::PublicKey(e.to_string()))?;
        match info.parsed().map(|p| p.key_size()) {
            Ok(1024) => DkimAlgorithm::Rsa1024,
            Ok(2048) => DkimAlgorithm::Rsa2048,
            Ok(3072) => DkimAlgorithm::Rsa3072,
            Ok(bits) => {
                return Err(KeyError::RsaSize(bits));
            }
            Err(e) => return Err(KeyError::PublicKey(e.to_string())),
        }
    };
    Ok((algorithm, record))
}

/// The record of an RSA private key of 1024 bits (PKCS#8 or PKCS#1 PEM),
/// read from its DER: the modulus and exponent, re-encoded as the
/// SubjectPublicKeyInfo the record publishes. `None` for anything else.
fn rsa_1024_record(pem: &str) -> Option<String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes()).ok()?;
    let pkcs1 = match &der {
        PrivateKeyDer::Pkcs1(k) => k.secret_pkcs1_der().to_vec(),
        PrivateKeyDer::Pkcs8(k) => {
            let (_, info, _) = der_item(k.secret_pkcs8_der(), 0x30)?;
            let (_, _version, rest) = der_item(info, 0x02)?;
            let (_, algorithm, rest) = der_item(rest, 0x30)?;
            let (_, oid, _) = der_item(algorithm, 0x06)?;
            if oid != RSA_ENCRYPTION {
                return None;
            }
            der_item(rest, 0x04)?.1.to_vec()
        }
        _ => return None,
    };
    let pkcs1 = Zeroizing::new(pkcs1);
    let (_, key, _) = der_item(&pkcs1, 0x30)?;
    let (_, _version, rest) = der_item(key, 0x02)?;
    let (_, n, rest) = der_item(rest, 0x02)?;
    let (_, e, _) = der_item(rest, 0x02)?;
    let significant = n.iter().position(|b| *b != 0).map(|i| &n[i..])?;
    let bits = significant.len() * 8 - significant[0].leading_zeros() as usize;
    if bits != 1024 {
        return None;
    }
    let public = der_encode(0x30, &[der_encode(0x02, n), der_encode(0x02, e)].concat());
    let algorithm = der_encode(
        0x30,
        &[der_encode(0x06, RSA_ENCRYPTION), vec![0x05, 0x00]].concat(),
    );
    let bit_string = der_encode(0x03, &[&[0u8][..], &public].concat());
    let spki = der_encode(0x30, &[algorithm, bit_string].concat());
    Some(format!(
        "v=DKIM1; k=rsa; p={}",
        base64::engine::general_purpose::STANDARD.encode(spki)
    ))
}

/// One DER item of tag `tag` at the start of `input`: (tag, content, rest).
fn der_item(input: &[u8], tag: u8) -> Option<(u8, &[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (t == tag && rest.len() >= len).then(|| (t, &rest[..len], &rest[len..]))
}

/// A DER item: tag, definite length, content.
fn der_encode(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// An Ed25519 key in the form Rspamd reads: the base64 of its 32-byte
/// seed on one line. Rspamd 3.4 reads only RSA keys from PEM files ("cannot
/// extract rsa key from evp key"); for Ed25519 it wants this raw form.
pub fn rspamd_ed25519(pem: &str) -> Result<Zeroizing<String>, KeyError> {
    use aws_lc_rs::encoding::AsBigEndian as _;
    use aws_lc_rs::signature::Ed25519KeyPair;
    use rustls_pki_types::PrivatePkcs8KeyDer;
    use rustls_pki_types::pem::PemObject as _;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).map_err(KeyError::NotPkcs8)?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
        .map_err(KeyError::NotEd25519)?;
    let seed = pair
        .seed()
        .and_then(|s| s.as_be_bytes())
        .map_err(|_| KeyError::Seed)?;
    let mut line = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(seed.as_ref()));
    line.push('\n');
    Ok(line)
}

/// The record value of a revoked key: an empty `p=` (RFC 6376 §3.6.1).
pub fn revoked_record(algorithm: DkimAlgorithm) -> String {
    if algorithm.is_rsa() {
        "v=DKIM1; k=rsa; p=".to_owned()
    } else {
        "v=DKIM1; k=ed25519; p=".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_and_ed25519_records_have_the_rfc_shapes() {
        let rsa = generate(DkimAlgorithm::Rsa2048).unwrap();
        assert!(rsa.pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let p = rsa.record.strip_prefix("v=DKIM1; k=rsa; p=").unwrap();
        // A 2048-bit SubjectPublicKeyInfo is 294 bytes: 392 base64 characters.
        assert_eq!(p.len(), 392);
        let ed = generate(DkimAlgorithm::Ed25519).unwrap();
        let p = ed.record.strip_prefix("v=DKIM1; k=ed25519; p=").unwrap();
        assert_eq!(p.len(), 44, "the raw 32-byte key, not an SPKI");
        assert_eq!(
            inspect(&ed.pem).unwrap(),
            (DkimAlgorithm::Ed25519, ed.record.clone())
        );
        assert_eq!(
            inspect(&rsa.pem).unwrap(),
            (DkimAlgorithm::Rsa2048, rsa.record.clone())
        );
        assert!(
            generate(DkimAlgorithm::Rsa1024).is_err_and(|e| e.to_string().contains("rsa-2048"))
        );
        assert_eq!(
            revoked_record(DkimAlgorithm::Ed25519),
            "v=DKIM1; k=ed25519; p="
        );
    }

    #[test]
    fn rspamd_form_is_the_seed_of_the_published_key() {
        use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
        let b64 = base64::engine::general_purpose::STANDARD;
        let ed = generate(DkimAlgorithm::Ed25519).unwrap();
        let line = rspamd_ed25519(&ed.pem).unwrap();
        assert!(line.ends_with('\n') && !line.trim_end().contains(['\n', ' ']));
        let seed = b64.decode(line.trim_end()).unwrap();
        assert_eq!(seed.len(), 32);
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let published = ed.record.strip_prefix("v=DKIM1; k=ed25519; p=").unwrap();
        assert_eq!(b64.encode(pair.public_key().as_ref()), published);
        let rsa = generate(DkimAlgorithm::Rsa2048).unwrap();
        assert!(rspamd_ed25519(&rsa.pem).is_err());
        assert!(rspamd_ed25519("garbage").is_err());
    }
}
