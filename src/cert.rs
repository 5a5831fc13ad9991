//! Certificates and private keys: what selection needs to know of a leaf,
//! private-key loading and matching, chain checks, and PEM output.
//!
//! Parsing is split so the cheap part ([`Leaf::parse`]: names, dates, key
//! type) can run on every certificate of a large acme.json, while the costly
//! part ([`Bundle::verify`]: key match and chain signatures) runs only for
//! certificates that could serve a target.
//!
//! A chain given out of order (intermediates before the leaf, root and
//! intermediate swapped) is put in order by [`order_chain`] before any of
//! this: the leaf is the certificate whose public key matches the private
//! key, then each next one is the issuer of the one before (by name). A
//! chain holding a certificate that is not part of that path (an unrelated
//! extra) is not reordered nor trimmed: it stays as given, and
//! [`Bundle::verify`] refuses it, naming the pair that does not link.

use std::fmt;

use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{self, PemObject, SectionKind};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;
use zeroize::Zeroizing;

use crate::names;

/// The public key algorithm of a certificate, as a target's `key_type` sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyType {
    Rsa { bits: u32 },
    Ecdsa(Curve),
    Ed25519,
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Curve {
    P256,
    P384,
    P521,
}

impl KeyType {
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa { .. })
    }

    fn is_ecdsa(self) -> bool {
        matches!(self, KeyType::Ecdsa(_))
    }
}

/// Which key algorithms a target accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyTypeFilter {
    Rsa,
    Ecdsa,
    #[default]
    Any,
}

impl KeyTypeFilter {
    pub fn accepts(self, key_type: KeyType) -> bool {
        match self {
            KeyTypeFilter::Rsa => key_type.is_rsa(),
            KeyTypeFilter::Ecdsa => key_type.is_ecdsa(),
            KeyTypeFilter::Any => key_type != KeyType::Other,
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa { bits } => write!(f, "rsa-{bits}"),
            KeyType::Ecdsa(Curve::P256) => f.write_str("ecdsa-p256"),
            KeyType::Ecdsa(Curve::P384) => f.write_str("ecdsa-p384"),
            KeyType::Ecdsa(Curve::P521) => f.write_str("ecdsa-p521"),
            KeyType::Ed25519 => f.write_str("ed25519"),
            KeyType::Other => f.write_str("unsupported"),
        }
    }
}

/// What went wrong with certificate or key data. Messages are one line and
/// never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("no PEM certificate found (the text is not PEM)")]
    NoPemCertificate,
    #[error("invalid PEM: {0}")]
    BadPem(String),
    #[error("not a valid X.509 certificate: {0}")]
    BadDer(String),
    #[error("no PEM private key found (the text is not PEM)")]
    NoPemKey,
    #[error(
        "the private key is encrypted; mxkeys needs it unencrypted (openssl pkey -in KEY -out KEY.plain)"
    )]
    EncryptedKey,
    #[error("unsupported private key: {0}")]
    UnsupportedKey(String),
    #[error("the private key ({key}) does not match the certificate's public key ({cert})")]
    KeyMismatch { key: String, cert: KeyType },
    #[error("chain: certificate {child} was not issued by certificate {parent} ({why})")]
    BrokenChain {
        child: usize,
        parent: usize,
        why: String,
    },
    /// The bundle built for a candidate has another leaf than the one
    /// selection judged.
    #[error(
        "its certificate is no longer the one read: the file changed since it was read, or its chain's order makes another certificate the leaf"
    )]
    NotJudged,
}

/// Validity window in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// Where a point in time stands against a validity window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeliness {
    NotYetValid,
    Valid,
    Expired,
}

impl Validity {
    pub fn at(&self, now: i64) -> Timeliness {
        if now < self.not_before {
            Timeliness::NotYetValid
        } else if now > self.not_after {
            Timeliness::Expired
        } else {
            Timeliness::Valid
        }
    }
}

/// The facts selection needs about a leaf certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// DNS names in canonical form: the SAN dNSNames, or the subject CN when
    /// the certificate has no SAN extension.
    pub names: Vec<String>,
    pub validity: Validity,
    pub key_type: KeyType,
    /// Subject and issuer are the same name (a self-signed certificate).
    pub self_issued: bool,
    /// A CA's certificate (basicConstraints cA): a chain that starts with
    /// one is out of order (see [`order_chain`]).
    pub is_ca: bool,
}

impl Leaf {
    /// Parses the DER of a leaf certificate.
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let cert = parse_x509(der)?;
        let mut names = Vec::new();
        let mut has_san = false;
        for ext in cert.extensions() {
            if let x509_parser::extensions::ParsedExtension::SubjectAlternativeName(san) =
                ext.parsed_extension()
            {
                has_san = true;
                for gn in &san.general_names {
                    if let GeneralName::DNSName(n) = gn {
                        names.push(names::canonical(n));
                    }
                }
            }
        }
        if !has_san {
            for cn in cert.subject().iter_common_name() {
                if let Ok(s) = cn.as_str() {
                    names.push(names::canonical(s));
                }
            }
        }
        let validity = cert.validity();
        Ok(Leaf {
            names,
            validity: Validity {
                not_before: validity.not_before.timestamp(),
                not_after: validity.not_after.timestamp(),
            },
            key_type: key_type_of(&cert),
            self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
            is_ca: cert.is_ca(),
        })
    }
}

/// Parses a certificate strictly: the whole input must be one DER
/// SEQUENCE, as TLS peers require (a lenient parse would let through bytes
/// that clients then refuse).
fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    if der.first() != Some(&0x30) {
        return Err(CertError::BadDer("not a DER SEQUENCE".to_owned()));
    }
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => {
            if !outer_matches_inner(der, cert.tbs_certificate.as_ref()) {
                return Err(CertError::BadDer(
                    "the signature algorithm differs from the one signed (RFC 5280 4.1.1.2), or the certificate is malformed".to_owned(),
                ));
            }
            Ok(cert)
        }
        Ok((rest, _)) => Err(CertError::BadDer(format!(
            "{} bytes of trailing data",
            rest.len()
        ))),
        Err(e) => Err(CertError::BadDer(e.to_string())),
    }
}

fn key_type_of(cert: &X509Certificate<'_>) -> KeyType {
    use x509_parser::oid_registry as oids;
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyType::Rsa {
            bits: u32::try_from(rsa.key_size()).unwrap_or(0),
        },
        Ok(PublicKey::EC(_)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == oids::OID_EC_P256 => KeyType::Ecdsa(Curve::P256),
                Some(c) if c == oids::OID_NIST_EC_P384 => KeyType::Ecdsa(Curve::P384),
                Some(c) if c == oids::OID_NIST_EC_P521 => KeyType::Ecdsa(Curve::P521),
                _ => KeyType::Other,
            }
        }
        _ if spki.algorithm.algorithm == oids::OID_SIG_ED25519 => KeyType::Ed25519,
        _ => KeyType::Other,
    }
}

/// One DER TLV at the start of `b`: (tag, header length, content length).
fn tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    if first < 0x80 {
        return Some((tag, 2, first));
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 {
        return None;
    }
    let len = b
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |acc, x| (acc << 8) | *x as usize);
    Some((tag, 2 + n, len))
}

/// The certificate's outer signatureAlgorithm equals, byte for byte, the
/// `signature` AlgorithmIdentifier inside the TBS, and the signature BIT
/// STRING ends the certificate. A lenient parser accepts damaged tags
/// there; TLS peers do not.
fn outer_matches_inner(der: &[u8], tbs: &[u8]) -> bool {
    let check = || -> Option<bool> {
        let tbs_start = (tbs.as_ptr() as usize).checked_sub(der.as_ptr() as usize)?;
        let after = der.get(tbs_start + tbs.len()..)?;
        let (tag, h, l) = tlv(after)?;
        let outer = after.get(..h + l)?;
        let (bit_tag, bh, bl) = tlv(after.get(h + l..)?)?;
        // A signature is whole bytes: no unused bits (OpenSSL refuses any).
        let unused_bits = *after.get(h + l + bh)?;
        if tag != 0x30 || bit_tag != 0x03 || h + l + bh + bl != after.len() || unused_bits != 0 {
            return Some(false);
        }
        // Inside the TBS: [0] version (optional), serial INTEGER, then the
        // signature AlgorithmIdentifier.
        let (_, th, tl) = tlv(tbs)?;
        let mut rest = tbs.get(th..th + tl)?;
        for expected in [0xa0u8, 0x02] {
            let (t, h, l) = tlv(rest)?;
            if t == expected {
                rest = rest.get(h + l..)?;
            } else if expected == 0x02 {
                return Some(false);
            }
        }
        let (_, ih, il) = tlv(rest)?;
        Some(rest.get(..ih + il)? == outer)
    };
    check().unwrap_or(false)
}

/// SHA-256 of a certificate's DER, lower-case hex without separators.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Every certificate in a PEM text, in order.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    check_armor(pem)?;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::BadPem(pem_error(&e)))?;
    if certs.is_empty() {
        return Err(CertError::NoPemCertificate);
    }
    Ok(certs)
}

/// The first certificate of a PEM text (which may be cut after that
/// certificate: the armor of the whole text is checked by
/// [`parse_pem_certs`] when the chain is read).
pub fn first_pem_cert(pem: &[u8]) -> Result<CertificateDer<'static>, CertError> {
    match CertificateDer::from_pem_slice(pem) {
        Ok(c) => Ok(c),
        Err(pem::Error::NoItemsFound) => Err(CertError::NoPemCertificate),
        Err(e) => Err(CertError::BadPem(pem_error(&e))),
    }
}

/// Every line that starts with five dashes must be a BEGIN or END line,
/// in BEGIN/END pairs of one label. The PEM reader skips text it does not
/// recognise as a block: a damaged BEGIN line (`-----BEGHN CERTIFICATE`)
/// would silently drop that certificate, and a chain that lost its
/// intermediate leaves the leaf's signature unchecked.
fn check_armor(pem: &[u8]) -> Result<(), CertError> {
    let damaged = |n: usize, why: &str| CertError::BadPem(format!("line {n}: {why}"));
    let mut open: Option<&[u8]> = None;
    for (i, line) in pem.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii_end();
        let Some(rest) = line.strip_prefix(b"-----") else {
            continue;
        };
        let (begin, label) = if let Some(l) = rest.strip_prefix(b"BEGIN ") {
            (true, l.strip_suffix(b"-----"))
        } else if let Some(l) = rest.strip_prefix(b"END ") {
            (false, l.strip_suffix(b"-----"))
        } else {
            (false, None)
        };
        let label = label
            // RFC 7468 labels: printable characters, single spaces or
            // hyphens between them.
            .filter(|l| {
                l.iter().all(|&b| b.is_ascii_graphic() || b == b' ')
                    && !l.is_empty()
                    && ![l[0], l[l.len() - 1]]
                        .iter()
                        .any(|&b| b == b' ' || b == b'-')
                    && !l
                        .windows(2)
                        .any(|w| matches!(w, b"--" | b"  " | b" -" | b"- "))
            })
            .ok_or_else(|| damaged(i + 1, "a damaged PEM BEGIN or END line"))?;
        match (begin, open) {
            (true, None) => open = Some(label),
            (true, Some(_)) => return Err(damaged(i + 1, "a PEM block begins inside another")),
            (false, Some(o)) if o == label => open = None,
            (false, Some(_)) => return Err(damaged(i + 1, "a PEM END line of another label")),
            (false, None) => return Err(damaged(i + 1, "a PEM END line without its BEGIN")),
        }
    }
    match open {
        Some(_) => Err(CertError::BadPem("a PEM block has no END line".to_owned())),
        None => Ok(()),
    }
}

fn pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::Base64Decode(_) => "bad base64 inside a PEM block".to_owned(),
        pem::Error::MissingSectionEnd { .. } => "a PEM block has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a malformed BEGIN line".to_owned(),
        other => other.to_string(),
    }
}

/// The encodings a PEM private key may come in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// `RSA PRIVATE KEY` (PKCS#1).
    Pkcs1,
    /// `EC PRIVATE KEY` (SEC1, RFC 5915).
    Sec1,
    /// `PRIVATE KEY` (PKCS#8).
    Pkcs8,
}

impl KeyFormat {
    fn label(self) -> &'static str {
        match self {
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
            KeyFormat::Pkcs8 => "PRIVATE KEY",
        }
    }
}

/// An unencrypted private key. Its bytes are wiped on drop and never printed.
#[derive(Clone)]
pub struct PrivateKey {
    der: Zeroizing<Vec<u8>>,
    format: KeyFormat,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?}, redacted)", self.format)
    }
}

impl PrivateKey {
    /// The first private key of a PEM text.
    pub fn from_pem(text: &[u8]) -> Result<Self, CertError> {
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(text) {
            let (kind, der) = section.map_err(|e| match e {
                _ if is_encrypted_pem(text) => CertError::EncryptedKey,
                e => CertError::BadPem(pem_error(&e)),
            })?;
            if let Some(key) = PrivateKey::from_section(kind, der) {
                return Ok(key);
            }
        }
        if is_encrypted_pem(text) {
            Err(CertError::EncryptedKey)
        } else if text.windows(11).any(|w| w == b"-----BEGIN ") {
            Err(CertError::UnsupportedKey(
                "the PEM text holds no RSA, EC or PKCS#8 private key".to_owned(),
            ))
        } else {
            Err(CertError::NoPemKey)
        }
    }

    /// The public key bytes as they appear in a certificate's
    /// subjectPublicKey, derived with the algorithm `hint` suggests first.
    fn public_key(&self, hint: KeyType) -> Result<(KeyType, Vec<u8>), CertError> {
        let der = self.der.as_slice();
        let curves = {
            let mut c = vec![Curve::P256, Curve::P384, Curve::P521];
            if let KeyType::Ecdsa(h) = hint {
                c.retain(|x| *x != h);
                c.insert(0, h);
            }
            c
        };
        /// The encodings an EC key comes in (PKCS#1 is RSA only).
        enum Ec {
            Sec1,
            Pkcs8,
        }
        let ecdsa = |encoding: Ec| {
            curves.iter().find_map(|&curve| {
                let alg = match curve {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    Curve::P521 => &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
                };
                let pair = match encoding {
                    Ec::Pkcs8 => EcdsaKeyPair::from_pkcs8(alg, der),
                    Ec::Sec1 => EcdsaKeyPair::from_private_key_der(alg, der),
                };
                pair.ok()
                    .map(|k| (KeyType::Ecdsa(curve), k.public_key().as_ref().to_vec()))
            })
        };
        let rsa = |pair: Result<RsaKeyPair, _>| {
            pair.ok().map(|k: RsaKeyPair| {
                let bits = u32::try_from(k.public_modulus_len() * 8).unwrap_or(0);
                (KeyType::Rsa { bits }, k.public_key().as_ref().to_vec())
            })
        };
        let found = match self.format {
            KeyFormat::Pkcs1 => rsa(RsaKeyPair::from_der(der)),
            KeyFormat::Sec1 => ecdsa(Ec::Sec1),
            KeyFormat::Pkcs8 => rsa(RsaKeyPair::from_pkcs8(der))
                .or_else(|| ecdsa(Ec::Pkcs8))
                .or_else(|| {
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .ok()
                        .map(|k| (KeyType::Ed25519, k.public_key().as_ref().to_vec()))
                }),
        };
        found.ok_or_else(|| {
            CertError::UnsupportedKey(format!(
                "a {} block that is not an RSA, ECDSA (P-256/384/521) or Ed25519 key",
                self.format.label()
            ))
        })
    }

    /// The key as PEM, in the encoding it was given in.
    pub fn to_pem(&self) -> Zeroizing<String> {
        pem_encode(self.format.label(), &self.der)
    }

    /// Whether `other` is this key, whatever the encoding of either
    /// (PKCS#1, SEC1, PKCS#8): the same public key (an EC or Ed25519
    /// private key is determined by it; two RSA keys with it decrypt and
    /// sign alike). A key that cannot be read is no match.
    pub fn same_key(&self, other: &PrivateKey) -> bool {
        if self.der == other.der {
            return true;
        }
        match (
            self.public_key(KeyType::Other),
            other.public_key(KeyType::Other),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }

    /// A key from one PEM section of a key kind (`None` for another kind).
    pub fn from_section(kind: SectionKind, der: Vec<u8>) -> Option<Self> {
        let format = match kind {
            SectionKind::RsaPrivateKey => KeyFormat::Pkcs1,
            SectionKind::EcPrivateKey => KeyFormat::Sec1,
            SectionKind::PrivateKey => KeyFormat::Pkcs8,
            _ => return None,
        };
        Some(PrivateKey {
            der: Zeroizing::new(der),
            format,
        })
    }
}

fn is_encrypted_pem(text: &[u8]) -> bool {
    let has = |needle: &[u8]| text.windows(needle.len()).any(|w| w == needle);
    has(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") || has(b"Proc-Type: 4,ENCRYPTED")
}

/// PEM armour with 64-column lines and LF endings, into a buffer that is
/// wiped on drop (it may hold a key).
pub fn pem_encode(label: &str, der: &[u8]) -> Zeroizing<String> {
    use base64::Engine as _;
    let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + b64.len() / 64 + 64));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// `certs` in issuing order (leaf first), when they are the leaf of `key`
/// and its issuers given in another order; otherwise `certs` unchanged
/// (already in order, or not one path: [`Bundle::verify`] says why). The
/// key is looked at only when the order is broken.
pub fn order_chain(
    certs: Vec<CertificateDer<'static>>,
    key: &PrivateKey,
) -> Vec<CertificateDer<'static>> {
    let Some(reordered) = chain_order(&certs, key) else {
        return certs;
    };
    reordered.into_iter().map(|i| certs[i].clone()).collect()
}

/// The positions of `certs` in issuing order, or `None` when nothing is
/// to be changed.
fn chain_order(certs: &[CertificateDer<'static>], key: &PrivateKey) -> Option<Vec<usize>> {
    let parsed = certs
        .iter()
        .map(|c| parse_x509(c.as_ref()).ok())
        .collect::<Option<Vec<_>>>()?;
    let linked = |child: &X509Certificate<'_>, parent: &X509Certificate<'_>| {
        child.issuer().as_raw() == parent.subject().as_raw()
    };
    if parsed.windows(2).all(|w| linked(&w[0], &w[1])) {
        return None;
    }
    let hint = key_type_of(&parsed[0]);
    let (_, public) = key.public_key(hint).ok()?;
    let leaf = parsed
        .iter()
        .position(|c| c.public_key().subject_public_key.data.as_ref() == public.as_slice())?;
    let mut order = vec![leaf];
    let mut current = leaf;
    while let Some(next) =
        (0..parsed.len()).find(|i| !order.contains(i) && linked(&parsed[current], &parsed[*i]))
    {
        order.push(next);
        current = next;
    }
    (order.len() == certs.len()).then_some(order)
}

/// A leaf, its intermediates and its private key: everything a target needs.
#[derive(Debug)]
pub struct Bundle {
    /// Leaf first, then intermediates in issuing order.
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKey,
}

impl Bundle {
    pub fn leaf_der(&self) -> &[u8] {
        self.certs.first().map(|c| c.as_ref()).unwrap_or_default()
    }

    fn intermediates(&self) -> &[CertificateDer<'static>] {
        self.certs.get(1..).unwrap_or_default()
    }

    /// Checks that the key matches the leaf and that each certificate was
    /// issued (name and signature) by the one after it.
    pub fn verify(&self) -> Result<(), CertError> {
        let leaf = parse_x509(self.leaf_der())?;
        let cert_key_type = key_type_of(&leaf);
        let (key_type, public) = self.key.public_key(cert_key_type)?;
        if public != leaf.public_key().subject_public_key.data.as_ref() {
            return Err(CertError::KeyMismatch {
                key: key_type.to_string(),
                cert: cert_key_type,
            });
        }
        let parsed = self
            .certs
            .iter()
            .map(|c| parse_x509(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, pair) in parsed.windows(2).enumerate() {
            let (child, parent) = (&pair[0], &pair[1]);
            let broken = |why: String| CertError::BrokenChain {
                child: i + 1,
                parent: i + 2,
                why,
            };
            if child.issuer().as_raw() != parent.subject().as_raw() {
                return Err(broken(format!(
                    "issuer \"{}\" is not subject \"{}\"",
                    child.issuer(),
                    parent.subject()
                )));
            }
            // An algorithm that cannot be checked is refused too: it is what
            // a corrupted certificate looks like, and clients refuse it.
            if let Err(e) = child.verify_signature(Some(parent.public_key())) {
                return Err(broken(format!(
                    "signature ({}): {e}",
                    child.signature_algorithm.algorithm
                )));
            }
        }
        Ok(())
    }

    /// Leaf then intermediates, as PEM.
    pub fn fullchain_pem(&self) -> String {
        self.certs_pem(&self.certs)
    }

    pub fn leaf_pem(&self) -> String {
        self.certs_pem(&self.certs[..self.certs.len().min(1)])
    }

    pub fn chain_pem(&self) -> String {
        self.certs_pem(self.intermediates())
    }

    /// Private key, then leaf, then intermediates: one file that can never
    /// be seen with a key from another generation.
    pub fn combined_pem(&self) -> Zeroizing<String> {
        let mut out = self.key.to_pem();
        out.push_str(&self.fullchain_pem());
        out
    }

    fn certs_pem(&self, certs: &[CertificateDer<'static>]) -> String {
        certs
            .iter()
            .map(|c| pem_encode("CERTIFICATE", c.as_ref()).to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::check_armor;

    #[test]
    fn armor_lines_must_pair_up() {
        let block = |label: &str| format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n");
        let good = format!(
            "subject=CN = x\n{}{}text between\r\n{}",
            block("PRIVATE KEY"),
            block("CERTIFICATE"),
            block("CERTIFICATE").replace('\n', "\r\n")
        );
        assert!(check_armor(good.as_bytes()).is_ok());
        for (bad, why) in [
            (
                good.replacen("-----BEGIN CERTIFICATE", "-----BEGHN CERTIFICATE", 1),
                "damaged",
            ),
            (
                good.replacen("-----BEGIN CERTIFICATE", ",----BEGIN CERTIFICATE", 1),
                "without its BEGIN",
            ),
            (
                good.replacen("-----END CERTIFICATE", "-----END CERTIFICATD", 1),
                "another label",
            ),
            (
                good.replacen("-----END PRIVATE KEY-----\n", "", 1),
                "inside another",
            ),
            (
                format!("{good}-----BEGIN CERTIFICATE-----\nAAAA\n"),
                "no END line",
            ),
            (
                good.replacen(
                    "-----BEGIN CERTIFICATE-----",
                    "-----BEGIN certificate-----",
                    1,
                ),
                "another label",
            ),
            (
                good.replacen(
                    "-----BEGIN CERTIFICATE-----",
                    "-----BEGIN CERTIFICATE----=",
                    1,
                ),
                "damaged",
            ),
            (
                good.replacen(
                    "-----BEGIN CERTIFICATE-----",
                    "-----BEGIN CERTIFICATE------",
                    1,
                ),
                "damaged",
            ),
        ] {
            let e = check_armor(bad.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}\n{bad}");
        }
    }
}
