//! Certificates and private keys: what selection needs to know of a leaf,
//! private-key loading and matching, chain checks, and PEM output.
//!
//! Parsing is split so the cheap part ([`Leaf::parse`]: names, dates, key
//! type, of the extensions only subjectAltName and basicConstraints) can run
//! on every certificate of a large acme.json, while the costly part
//! ([`Bundle::verify`]: every extension of the leaf sound, key match and
//! chain signatures) runs only for certificates that could serve a target.
//! Selection calls [`Bundle::verify`] before it chooses: a leaf the cheap
//! parse lets through is never installed unless it passes.
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
use x509_parser::der_parser::Oid;
use x509_parser::error::X509Error;
use x509_parser::extensions::{
    BasicConstraints, ParsedExtension, SubjectAlternativeName, X509Extension,
};
use x509_parser::nom::Parser as _;
use x509_parser::oid_registry as oids;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate, X509CertificateParser};
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
    /// An extension of the leaf is malformed, repeated, or critical and
    /// unknown: TLS clients refuse such a certificate.
    #[error("the certificate's extension {oid} ({name}) {why}")]
    BadExtension {
        oid: String,
        name: &'static str,
        why: &'static str,
    },
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
    /// Parses the DER of a leaf certificate, cheaply: the envelope as
    /// strictly as [`parse_x509`] (one DER SEQUENCE, no trailing data, the
    /// outer signature algorithm equal to the signed one), but of the
    /// extensions only the two a [`Leaf`] holds, subjectAltName and
    /// basicConstraints, found by OID and parsed from their raw values
    /// (each at most once, consumed whole). The other extensions (CRL
    /// distribution points, AIA, policies, SCTs...) are not parsed here:
    /// [`Bundle::verify`], which selection calls before it chooses a
    /// certificate, parses them all and refuses a malformed one.
    pub fn parse(der: &[u8]) -> Result<Self, CertError> {
        let cert = parse_x509_with(der, false)?;
        let mut san = None;
        let mut basic = None;
        for ext in cert.extensions() {
            if ext.oid == oids::OID_X509_EXT_SUBJECT_ALT_NAME {
                let value = whole::<SubjectAlternativeName<'_>>(ext, san.is_some())?;
                san = Some(value);
            } else if ext.oid == oids::OID_X509_EXT_BASIC_CONSTRAINTS {
                let value = whole::<BasicConstraints>(ext, basic.is_some())?;
                basic = Some(value);
            }
        }
        Ok(leaf_of(
            &cert,
            san.as_ref().map(|s| s.general_names.as_slice()),
            basic.is_some_and(|b| b.ca),
        ))
    }
}

/// The [`Leaf`] of a parsed certificate, given its SAN (if it has the
/// extension) and whether basicConstraints says cA.
fn leaf_of(cert: &X509Certificate<'_>, san: Option<&[GeneralName<'_>]>, is_ca: bool) -> Leaf {
    let mut names = Vec::new();
    match san {
        Some(general_names) => {
            for gn in general_names {
                if let GeneralName::DNSName(n) = gn {
                    names.push(names::canonical(n));
                }
            }
        }
        None => {
            for cn in cert.subject().iter_common_name() {
                if let Ok(s) = cn.as_str() {
                    names.push(names::canonical(s));
                }
            }
        }
    }
    let validity = cert.validity();
    Leaf {
        names,
        validity: Validity {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        },
        key_type: key_type_of(cert),
        self_issued: cert.subject().as_raw() == cert.issuer().as_raw(),
        is_ca,
    }
}

/// The value of one extension Leaf::parse needs, which must appear once
/// (`seen`: it already did) and be one DER value with nothing after it.
fn whole<'a, T: FromDer<'a, X509Error>>(
    ext: &X509Extension<'a>,
    seen: bool,
) -> Result<T, CertError> {
    let bad = |why| CertError::BadExtension {
        oid: ext.oid.to_id_string(),
        name: extension_name(&ext.oid),
        why,
    };
    if seen {
        return Err(bad("appears twice"));
    }
    match T::from_der(ext.value) {
        Ok(([], value)) => Ok(value),
        Ok(_) => Err(bad("is malformed (trailing data)")),
        Err(_) => Err(bad("is malformed")),
    }
}

/// A short name for an extension's OID, for error lines.
fn extension_name(oid: &Oid<'_>) -> &'static str {
    x509_parser::objects::oid2sn(oid, x509_parser::objects::oid_registry())
        .ok()
        .and_then(|sn| KNOWN_NAMES.iter().find(|k| **k == sn).copied())
        .unwrap_or("unknown")
}

/// Names [`extension_name`] can give out with a `'static` lifetime.
const KNOWN_NAMES: &[&str] = &[
    "subjectAltName",
    "basicConstraints",
    "keyUsage",
    "extendedKeyUsage",
    "subjectKeyIdentifier",
    "authorityKeyIdentifier",
    "crlDistributionPoints",
    "authorityInfoAccess",
    "certificatePolicies",
    "ct_cert_scts",
    "nameConstraints",
    "policyConstraints",
    "policyMappings",
    "inhibitAnyPolicy",
    "issuerAltName",
];

/// Every extension of a deep-parsed certificate is sound: each appears
/// once (RFC 5280 4.2), holds one DER value and nothing after it, each
/// x509-parser knows parses, and none it does not know is critical.
/// x509-parser's deep parse does not refuse a certificate for any of
/// these (it records a malformed extension as `ParseError`, ignores bytes
/// after a value, and keeps going), but TLS clients do: such a leaf must
/// never be installed.
fn check_extensions(cert: &X509Certificate<'_>) -> Result<(), CertError> {
    let exts = cert.extensions();
    for (i, ext) in exts.iter().enumerate() {
        let bad = |why| CertError::BadExtension {
            oid: ext.oid.to_id_string(),
            name: extension_name(&ext.oid),
            why,
        };
        if exts[..i].iter().any(|e| e.oid == ext.oid) {
            return Err(bad("appears twice"));
        }
        // extnValue holds one DER value (RFC 5280 4.1); x509-parser
        // ignores what follows it.
        match tlv(ext.value) {
            Some((_, h, l)) if h + l == ext.value.len() => {}
            Some((_, h, l)) if h + l < ext.value.len() => {
                return Err(bad("is malformed (trailing data)"));
            }
            _ => return Err(bad("is malformed")),
        }
        match ext.parsed_extension() {
            ParsedExtension::ParseError { .. } => return Err(bad("is malformed")),
            ParsedExtension::UnsupportedExtension { .. } if ext.critical => {
                return Err(bad("is critical and not understood"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Parses a certificate strictly: the whole input must be one DER
/// SEQUENCE, as TLS peers require (a lenient parse would let through bytes
/// that clients then refuse). Every extension is parsed.
fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    parse_x509_with(der, true)
}

/// [`parse_x509`], with or without x509-parser's parse of every
/// extension's value (`deep`); the rest is the same.
fn parse_x509_with(der: &[u8], deep: bool) -> Result<X509Certificate<'_>, CertError> {
    if der.first() != Some(&0x30) {
        return Err(CertError::BadDer("not a DER SEQUENCE".to_owned()));
    }
    let mut parser = X509CertificateParser::new().with_deep_parse_extensions(deep);
    match parser.parse(der) {
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

/// The issuer's name as people read it: its common name, else its whole
/// distinguished name (RFC 4514 form); `None` when the DER does not parse.
/// For display only: nothing is decided from it.
pub fn issuer_name(der: &[u8]) -> Option<String> {
    let cert = parse_x509_with(der, false).ok()?;
    let issuer = cert.issuer();
    let cn = issuer
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Some(cn.unwrap_or_else(|| issuer.to_string()))
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

    /// Checks that every extension of the leaf is sound (parsed, once, no
    /// unknown critical one: see [`check_extensions`]), that the key
    /// matches the leaf and that each certificate was issued (name and
    /// signature) by the one after it.
    pub fn verify(&self) -> Result<(), CertError> {
        let leaf = parse_x509(self.leaf_der())?;
        check_extensions(&leaf)?;
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
    use super::*;
    use crate::names::DnsName;
    use crate::select::select;
    use crate::source::testing::Issued;
    use rcgen::{
        BasicConstraints as RcBasic, CertificateParams, CertifiedIssuer, CrlDistributionPoint,
        CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType, SignatureAlgorithm,
    };

    /// The fake clock of these tests (2026-01-01T00:00:00Z).
    const NOW: i64 = 1_767_225_600;
    const DAY: i64 = 86_400;

    /// The full parse `Leaf::parse` did before it skipped extensions:
    /// x509-parser's deep parse of every extension, kept as the reference
    /// the cheap parse must agree with.
    fn parse_full(der: &[u8]) -> Result<Leaf, CertError> {
        let cert = parse_x509(der)?;
        let mut names = Vec::new();
        let mut has_san = false;
        for ext in cert.extensions() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
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

    /// A DER TLV (tag, content).
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..0x80 => out.push(n as u8),
            n @ 0x80..0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        der(0x30, &parts.concat())
    }

    const OID_AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
    const OID_POLICIES: &[u64] = &[2, 5, 29, 32];
    const OID_SCTS: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];
    const OID_SAN: &[u64] = &[2, 5, 29, 17];
    const OID_CRL_DP: &[u64] = &[2, 5, 29, 31];
    const OID_PRIVATE: &[u64] = &[1, 3, 6, 1, 4, 1, 55555, 1];

    /// authorityInfoAccess: OCSP and caIssuers URIs, as Let's Encrypt writes it.
    fn aia() -> CustomExtension {
        let access = |method: u8, uri: &str| {
            seq(&[
                der(0x06, &[0x2b, 6, 1, 5, 5, 7, 0x30, method]),
                der(0x86, uri.as_bytes()),
            ])
        };
        CustomExtension::from_oid_content(
            OID_AIA,
            seq(&[
                access(1, "http://ocsp.example.net"),
                access(2, "http://ca.example.net/i.der"),
            ]),
        )
    }

    /// certificatePolicies: the CA/B Forum domain-validated policy.
    fn policies() -> CustomExtension {
        let dv = der(0x06, &[0x67, 0x81, 0x0c, 1, 2, 1]);
        CustomExtension::from_oid_content(OID_POLICIES, seq(&[seq(&[dv])]))
    }

    /// Embedded SCTs: a TLS-encoded list of two made-up timestamps.
    fn scts() -> CustomExtension {
        let sct = |n: u8| {
            let mut s = vec![0u8]; // v1
            s.extend([n; 32]); // log id
            s.extend(1_767_225_600_000u64.to_be_bytes());
            s.extend([0, 0]); // no extensions
            s.extend([4, 3, 0, 4, 1, 2, 3, 4]); // sha256/ecdsa, 4-byte signature
            let mut out = (s.len() as u16).to_be_bytes().to_vec();
            out.extend(s);
            out
        };
        let list = [sct(1), sct(2)].concat();
        let mut tls = (list.len() as u16).to_be_bytes().to_vec();
        tls.extend(list);
        CustomExtension::from_oid_content(OID_SCTS, der(0x04, &tls))
    }

    fn custom(oid: &[u64], content: Vec<u8>, critical: bool) -> CustomExtension {
        let mut e = CustomExtension::from_oid_content(oid, content);
        e.set_criticality(critical);
        e
    }

    /// A leaf's parameters: SAN `names` (none: no SAN extension), subject
    /// CN `cn`, valid for 90 days around the fake clock.
    fn params(names: &[&str], cn: Option<&str>) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = names
            .iter()
            .map(|n| SanType::DnsName((*n).try_into().expect("ia5 name")))
            .collect();
        if let Some(cn) = cn {
            p.distinguished_name.push(DnType::CommonName, cn);
        }
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 10 * DAY).expect("date");
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 80 * DAY).expect("date");
        p
    }

    fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
        KeyPair::generate_for(alg).expect("test key")
    }

    fn test_ca() -> CertifiedIssuer<'static, KeyPair> {
        let mut p = params(&[], Some("mxkeys cert test CA"));
        p.is_ca = IsCa::Ca(RcBasic::Unconstrained);
        CertifiedIssuer::self_signed(p, key(&rcgen::PKCS_ECDSA_P384_SHA384)).expect("test CA")
    }

    /// `p` with `key`, issued by `ca`: leaf then CA certificate.
    fn issue(ca: &CertifiedIssuer<'static, KeyPair>, p: CertificateParams, key: KeyPair) -> Issued {
        let leaf = p.signed_by(&key, ca).expect("test leaf");
        Issued {
            certs: vec![leaf.der().clone(), ca.der().clone()],
            key: PrivateKey::from_pem(key.serialize_pem().as_bytes()).expect("test key"),
        }
    }

    #[test]
    fn the_cheap_leaf_parse_gives_exactly_the_leaf_of_the_full_parse() {
        let ca = test_ca();
        let p256 = || key(&rcgen::PKCS_ECDSA_P256_SHA256);
        let rsa = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .expect("rsa key");
        let le_like = |p: &mut CertificateParams| {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            p.is_ca = IsCa::ExplicitNoCa;
            p.use_authority_key_identifier_extension = true;
            p.crl_distribution_points = vec![CrlDistributionPoint {
                uris: vec!["http://crl.example.net/1.crl".to_owned()],
            }];
            p.custom_extensions = vec![aia(), policies()];
        };
        let mut cases: Vec<(&str, Vec<u8>, Leaf)> = Vec::new();
        let mut case =
            |what: &'static str, der: &[u8], names: &[&str], key_type, ca, self_issued| {
                let expected = Leaf {
                    names: names.iter().map(|n| (*n).to_owned()).collect(),
                    validity: Validity {
                        not_before: NOW - 10 * DAY,
                        not_after: NOW + 80 * DAY,
                    },
                    key_type,
                    self_issued,
                    is_ca: ca,
                };
                cases.push((what, der.to_vec(), expected));
            };
        let ecdsa = KeyType::Ecdsa(Curve::P256);
        let leaf = |p: CertificateParams, k: KeyPair| issue(&ca, p, k).certs[0].to_vec();

        let p = params(
            &["mail.example.com", "mx.example.com"],
            Some("mail.example.com"),
        );
        case(
            "two SANs",
            &leaf(p, p256()),
            &["mail.example.com", "mx.example.com"],
            ecdsa,
            false,
            false,
        );
        let p = params(&[], Some("Mail.Example.COM"));
        case(
            "no SAN: the CN, canonical",
            &leaf(p, p256()),
            &["mail.example.com"],
            ecdsa,
            false,
            false,
        );
        let p = params(&[], None);
        case(
            "no SAN and no CN: no names",
            &leaf(p, p256()),
            &[],
            ecdsa,
            false,
            false,
        );
        let p = params(&["mail.example.com"], Some("not-a-san.example.com"));
        case(
            "a SAN hides the CN",
            &leaf(p, p256()),
            &["mail.example.com"],
            ecdsa,
            false,
            false,
        );
        let p = params(&["*.example.com", "example.com"], None);
        case(
            "wildcard",
            &leaf(p, p256()),
            &["*.example.com", "example.com"],
            ecdsa,
            false,
            false,
        );
        let p = params(&["xn--bcher-kva.example", "MAIL.Example.COM."], None);
        case(
            "IDN A-label, upper case and a root dot",
            &leaf(p, p256()),
            &["xn--bcher-kva.example", "mail.example.com"],
            ecdsa,
            false,
            false,
        );
        let mut p = params(&["mail.example.com"], None);
        p.subject_alt_names
            .push(SanType::IpAddress([192, 0, 2, 1].into()));
        p.subject_alt_names.push(SanType::Rfc822Name(
            "postmaster@example.com".try_into().expect("ia5"),
        ));
        p.subject_alt_names.push(SanType::URI(
            "https://example.com/".try_into().expect("ia5"),
        ));
        case(
            "only the dNSNames of a SAN with other kinds",
            &leaf(p, p256()),
            &["mail.example.com"],
            ecdsa,
            false,
            false,
        );
        let mut p = params(&["mail.example.com"], Some("mail.example.com"));
        le_like(&mut p);
        case(
            "Let's Encrypt-like (KU, EKU, BC, AKI, CRL DP, AIA, policies)",
            &leaf(p, p256()),
            &["mail.example.com"],
            ecdsa,
            false,
            false,
        );
        let mut p = params(&["mail.example.com"], Some("mail.example.com"));
        le_like(&mut p);
        p.custom_extensions.push(scts());
        case(
            "with SCTs",
            &leaf(p, p256()),
            &["mail.example.com"],
            ecdsa,
            false,
            false,
        );
        let mut p = params(&["mail.example.com"], None);
        p.custom_extensions = vec![custom(OID_PRIVATE, der(0x05, &[]), false)];
        case(
            "an unknown non-critical extension",
            &leaf(p, p256()),
            &["mail.example.com"],
            ecdsa,
            false,
            false,
        );
        let p = params(&["mail.example.com"], None);
        case(
            "RSA-2048",
            &leaf(p, rsa),
            &["mail.example.com"],
            KeyType::Rsa { bits: 2048 },
            false,
            false,
        );
        let p = params(&["mail.example.com"], None);
        case(
            "ECDSA P-384",
            &leaf(p, key(&rcgen::PKCS_ECDSA_P384_SHA384)),
            &["mail.example.com"],
            KeyType::Ecdsa(Curve::P384),
            false,
            false,
        );
        let p = params(&["mail.example.com"], None);
        case(
            "Ed25519",
            &leaf(p, key(&rcgen::PKCS_ED25519)),
            &["mail.example.com"],
            KeyType::Ed25519,
            false,
            false,
        );
        let mut p = params(&[], Some("Intermediate CA"));
        p.is_ca = IsCa::Ca(RcBasic::Constrained(0));
        case(
            "a CA certificate",
            &leaf(p, p256()),
            &["intermediate ca"],
            ecdsa,
            true,
            false,
        );
        let k = p256();
        let p = params(&["mail.example.com"], Some("mail.example.com"));
        let der = p.self_signed(&k).expect("self-signed").der().to_vec();
        case(
            "self-signed",
            &der,
            &["mail.example.com"],
            ecdsa,
            false,
            true,
        );
        case(
            "the test CA (self-signed CA)",
            ca.der(),
            &["mxkeys cert test ca"],
            KeyType::Ecdsa(Curve::P384),
            true,
            true,
        );

        for (what, der, expected) in &cases {
            let cheap = Leaf::parse(der).unwrap_or_else(|e| panic!("{what}: {e}"));
            let full = parse_full(der).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(
                cheap, full,
                "{what}: the cheap parse differs from the full one"
            );
            assert_eq!(&cheap, expected, "{what}");
        }
    }

    /// A leaf for `mail.example.com` from `ca` that carries `bad` besides
    /// what `params` gives it, newer than any good one.
    fn with_extensions(
        ca: &CertifiedIssuer<'static, KeyPair>,
        san: bool,
        bad: Vec<CustomExtension>,
    ) -> Issued {
        let names: &[&str] = if san { &["mail.example.com"] } else { &[] };
        let mut p = params(names, Some("mail.example.com"));
        p.not_after = time::OffsetDateTime::from_unix_timestamp(NOW + 85 * DAY).expect("date");
        p.custom_extensions = bad;
        issue(ca, p, key(&rcgen::PKCS_ECDSA_P256_SHA256))
    }

    #[test]
    fn a_leaf_with_an_unsound_extension_is_never_chosen_and_the_reason_is_shown() {
        let ca = test_ca();
        let good = issue(
            &ca,
            params(&["mail.example.com"], None),
            key(&rcgen::PKCS_ECDSA_P256_SHA256),
        );
        let truncated = seq(&[]).into_iter().chain([0x02, 0x01]).collect::<Vec<_>>();
        let mut bogus_len = seq(&[der(0x02, &[1])]);
        bogus_len[1] = 0x05;
        // (case, SAN from params, extensions, what the refusal says)
        let cases: Vec<(&str, bool, Vec<CustomExtension>, &str)> = vec![
            (
                "a malformed CRL DP",
                true,
                vec![custom(OID_CRL_DP, bogus_len.clone(), false)],
                "2.5.29.31 (crlDistributionPoints) is malformed",
            ),
            (
                "a malformed AIA",
                true,
                vec![custom(OID_AIA, truncated.clone(), false)],
                "1.3.6.1.5.5.7.1.1 (authorityInfoAccess) is malformed (trailing data)",
            ),
            (
                "a malformed policies",
                true,
                vec![custom(OID_POLICIES, der(0x02, &[1]), false)],
                "2.5.29.32 (certificatePolicies) is malformed",
            ),
            (
                "the same unknown extension twice",
                true,
                vec![
                    custom(OID_PRIVATE, der(0x05, &[]), false),
                    custom(OID_PRIVATE, der(0x05, &[]), false),
                ],
                "1.3.6.1.4.1.55555.1 (unknown) appears twice",
            ),
            (
                "a critical unknown extension",
                true,
                vec![custom(OID_PRIVATE, der(0x05, &[]), true)],
                "1.3.6.1.4.1.55555.1 (unknown) is critical and not understood",
            ),
        ];
        let domains = [DnsName::parse("mail.example.com").expect("name")];
        for (what, san, exts, reason) in cases {
            let bad = with_extensions(&ca, san, exts);
            let candidates = [
                bad.candidate(0, "bad", 0, false),
                good.candidate(0, "good", 1, false),
            ];
            let s = select(&domains, KeyTypeFilter::Any, &candidates, NOW);
            let chosen = s.chosen.as_ref().map(|c| c.candidate.origin.entry.as_str());
            assert_eq!(chosen, Some("good"), "{what}");
            let refusals: Vec<String> = s
                .refused
                .iter()
                .map(|(c, r)| format!("{}: {r}", c.origin.entry))
                .collect();
            assert_eq!(
                refusals,
                vec![format!("bad: the certificate's extension {reason}")],
                "{what}"
            );
        }
    }

    #[test]
    fn a_malformed_or_repeated_subject_alt_name_is_refused_when_the_leaf_is_read() {
        let ca = test_ca();
        let bad_san = |content: Vec<u8>| custom(OID_SAN, content, false);
        let name = der(0x82, b"mail.example.com");
        let cases = [
            // The full parse fell back to the CN for this one.
            (
                "malformed",
                with_extensions(&ca, false, vec![bad_san(der(0x30, &[0x82, 0x05, b'x']))]),
                "2.5.29.17 (subjectAltName) is malformed",
            ),
            (
                "not a SEQUENCE",
                with_extensions(&ca, false, vec![bad_san(der(0x04, &name))]),
                "2.5.29.17 (subjectAltName) is malformed",
            ),
            (
                "trailing data",
                with_extensions(
                    &ca,
                    false,
                    vec![bad_san(
                        [seq(std::slice::from_ref(&name)), vec![0, 0]].concat(),
                    )],
                ),
                "2.5.29.17 (subjectAltName) is malformed (trailing data)",
            ),
            (
                "twice",
                with_extensions(
                    &ca,
                    true,
                    vec![bad_san(seq(&[der(0x82, b"other.example.com")]))],
                ),
                "2.5.29.17 (subjectAltName) appears twice",
            ),
        ];
        for (what, issued, reason) in cases {
            let e = Leaf::parse(issued.certs[0].as_ref()).expect_err(what);
            assert_eq!(
                e.to_string(),
                format!("the certificate's extension {reason}"),
                "{what}"
            );
            assert!(
                issued.bundle().verify().is_err(),
                "{what}: verify accepts it"
            );
        }
    }

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
