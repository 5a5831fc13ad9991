//! TLSA records (RFC 6698, RFC 7671) for the two usages mxkeys publishes:
//! `3 1 1` (DANE-EE: SHA-256 of the leaf's SubjectPublicKeyInfo) and
//! `2 1 1` (DANE-TA: SHA-256 of the issuing CA's SubjectPublicKeyInfo, taken
//! from the chain being installed). Pure: bytes in, records out; no DNS, no
//! files, no clock.
//!
//! The rule: a record is built from, and matched against, the chain exactly
//! as it will be served (leaf first, then its issuer). `3 1 1` matches only
//! the leaf's key; `2 1 1` matches any certificate above the leaf, never the
//! leaf itself. Records are parsed from and rendered to the zone-file
//! presentation form (`3 1 1 <hex>`: hex in either case, spaces inside the
//! hex allowed); anything else is refused with a one-line reason.

use std::fmt;
use std::str::FromStr;

use aws_lc_rs::digest::{SHA256, digest};
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::cert::Bundle;

/// Why a TLSA record or spec could not be read or built. One line, never
/// key material (a digest of a public key is not secret, but is not
/// repeated here either).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsaError {
    #[error("TLSA spec {0:?}: expected three numbers \"USAGE SELECTOR MATCHING\", e.g. \"3 1 1\"")]
    BadSpec(String),
    #[error(
        "TLSA certificate usage {0}: mxkeys supports 3 (DANE-EE) and 2 (DANE-TA) only (RFC 7672)"
    )]
    UnsupportedUsage(String),
    #[error("TLSA selector {0}: mxkeys supports 1 (SubjectPublicKeyInfo) only")]
    UnsupportedSelector(String),
    #[error("TLSA matching type {0}: mxkeys supports 1 (SHA-256) only")]
    UnsupportedMatching(String),
    #[error("TLSA record has no association data after \"USAGE SELECTOR MATCHING\"")]
    MissingData,
    #[error("TLSA association data: {0:?} is not a hex digit")]
    BadHex(char),
    #[error("TLSA association data: {0} hex digits, SHA-256 needs 64")]
    WrongLength(usize),
    #[error("TLSA: the chain is empty")]
    EmptyChain,
    #[error("TLSA 2 1 1: the chain holds no issuer certificate after the leaf")]
    NoIssuer,
    #[error("TLSA 2 1 1: certificate 1 of the chain is not the leaf's issuer (names differ)")]
    NotIssuer,
    #[error("TLSA: certificate {index} of the chain is not valid X.509: {why}")]
    BadCert { index: usize, why: String },
}

/// Certificate usage (RFC 6698 §2.1.1), the two that make sense for SMTP
/// (RFC 7672 §3.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Usage {
    /// 2: the record names a trust anchor in the served chain.
    DaneTa,
    /// 3: the record names the served leaf itself.
    DaneEe,
}

/// Selector (RFC 6698 §2.1.2): mxkeys hashes the SubjectPublicKeyInfo only,
/// so a renewal that keeps the key keeps the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    Spki,
}

/// Matching type (RFC 6698 §2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Matching {
    Sha256,
}

impl Usage {
    fn number(self) -> u8 {
        match self {
            Usage::DaneTa => 2,
            Usage::DaneEe => 3,
        }
    }
}

impl Selector {
    fn number(self) -> u8 {
        match self {
            Selector::Spki => 1,
        }
    }
}

impl Matching {
    fn number(self) -> u8 {
        match self {
            Matching::Sha256 => 1,
        }
    }
}

/// A configured kind of record, `"3 1 1"` or `"2 1 1"` in `[target.dane]
/// records`: what to build, without the data. Deserializes from that
/// string, refusing anything else with the [`TlsaError`] reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Spec {
    pub usage: Usage,
    pub selector: Selector,
    pub matching: Matching,
}

impl Spec {
    /// `3 1 1`: the leaf's key.
    pub const EE: Spec = Spec {
        usage: Usage::DaneEe,
        selector: Selector::Spki,
        matching: Matching::Sha256,
    };
    /// `2 1 1`: the issuer's key.
    pub const TA: Spec = Spec {
        usage: Usage::DaneTa,
        selector: Selector::Spki,
        matching: Matching::Sha256,
    };

    /// The record of this kind for `chain` (leaf first, then its issuer).
    pub fn build(self, chain: &[CertificateDer<'_>]) -> Result<Tlsa, TlsaError> {
        let leaf = chain.first().ok_or(TlsaError::EmptyChain)?;
        let data = match self.usage {
            Usage::DaneEe => spki_sha256(leaf, 0)?,
            Usage::DaneTa => {
                let issuer = chain.get(1).ok_or(TlsaError::NoIssuer)?;
                let leaf_issuer = issuer_name(leaf, 0)?;
                let subject = subject_name(issuer, 1)?;
                if leaf_issuer != subject {
                    return Err(TlsaError::NotIssuer);
                }
                spki_sha256(issuer, 1)?
            }
        };
        Ok(Tlsa { spec: self, data })
    }

    /// The record of this kind for the chain of `bundle`.
    pub fn build_for(self, bundle: &Bundle) -> Result<Tlsa, TlsaError> {
        self.build(&bundle.certs)
    }

    fn parse_numbers<'a>(
        fields: &mut impl Iterator<Item = &'a str>,
        whole: &str,
    ) -> Result<Spec, TlsaError> {
        let bad = || TlsaError::BadSpec(whole.trim().to_owned());
        let (Some(u), Some(s), Some(m)) = (fields.next(), fields.next(), fields.next()) else {
            return Err(bad());
        };
        for f in [u, s, m] {
            if f.parse::<u8>().is_err() {
                return Err(bad());
            }
        }
        let usage = match u {
            "3" => Usage::DaneEe,
            "2" => Usage::DaneTa,
            _ => return Err(TlsaError::UnsupportedUsage(u.to_owned())),
        };
        if s != "1" {
            return Err(TlsaError::UnsupportedSelector(s.to_owned()));
        }
        if m != "1" {
            return Err(TlsaError::UnsupportedMatching(m.to_owned()));
        }
        Ok(Spec {
            usage,
            selector: Selector::Spki,
            matching: Matching::Sha256,
        })
    }
}

impl FromStr for Spec {
    type Err = TlsaError;

    /// `"3 1 1"`: exactly three numbers separated by whitespace.
    fn from_str(s: &str) -> Result<Spec, TlsaError> {
        let mut fields = s.split_whitespace();
        let spec = Spec::parse_numbers(&mut fields, s)?;
        if fields.next().is_some() {
            return Err(TlsaError::BadSpec(s.trim().to_owned()));
        }
        Ok(spec)
    }
}

impl TryFrom<String> for Spec {
    type Error = TlsaError;

    fn try_from(s: String) -> Result<Spec, TlsaError> {
        s.parse()
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.usage.number(),
            self.selector.number(),
            self.matching.number()
        )
    }
}

/// One TLSA record's data: its kind and the SHA-256 it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tlsa {
    pub spec: Spec,
    pub data: [u8; 32],
}

impl Tlsa {
    /// Whether this record matches `chain` as served (leaf first): `3 1 1`
    /// the leaf's key, `2 1 1` the key of any certificate above the leaf.
    /// A certificate that does not parse matches nothing.
    pub fn matches(&self, chain: &[CertificateDer<'_>]) -> bool {
        let candidates = match self.spec.usage {
            Usage::DaneEe => chain.get(..1),
            Usage::DaneTa => chain.get(1..),
        };
        candidates
            .unwrap_or_default()
            .iter()
            .enumerate()
            .any(|(i, c)| spki_sha256(c, i).is_ok_and(|d| d == self.data))
    }

    /// The association data as lowercase hex.
    pub fn hex(&self) -> String {
        use fmt::Write;
        self.data
            .iter()
            .fold(String::with_capacity(64), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    }
}

/// Whether `tlsa` matches `chain` (see [`Tlsa::matches`]).
pub fn matches(tlsa: &Tlsa, chain: &[CertificateDer<'_>]) -> bool {
    tlsa.matches(chain)
}

impl FromStr for Tlsa {
    type Err = TlsaError;

    /// The presentation form `3 1 1 <hex>` (RDATA only: no owner, TTL,
    /// class or type). The hex may be in either case and split by spaces,
    /// as zone files and `dig` print it.
    fn from_str(s: &str) -> Result<Tlsa, TlsaError> {
        let mut fields = s.split_whitespace();
        let spec = Spec::parse_numbers(&mut fields, s)?;
        let mut digits = Vec::with_capacity(64);
        for c in fields.flat_map(str::chars) {
            digits.push(c.to_digit(16).ok_or(TlsaError::BadHex(c))? as u8);
        }
        if digits.is_empty() {
            return Err(TlsaError::MissingData);
        }
        if digits.len() != 64 {
            return Err(TlsaError::WrongLength(digits.len()));
        }
        let mut data = [0u8; 32];
        for (byte, pair) in data.iter_mut().zip(digits.chunks_exact(2)) {
            *byte = (pair[0] << 4) | pair[1];
        }
        Ok(Tlsa { spec, data })
    }
}

impl fmt::Display for Tlsa {
    /// `3 1 1 <64 lowercase hex digits>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.spec, self.hex())
    }
}

fn parse(der: &[u8], index: usize) -> Result<X509Certificate<'_>, TlsaError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| TlsaError::BadCert {
            index,
            why: e.to_string(),
        })
}

fn spki_sha256(der: &[u8], index: usize) -> Result<[u8; 32], TlsaError> {
    let cert = parse(der, index)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, cert.public_key().raw).as_ref());
    Ok(out)
}

fn issuer_name(der: &[u8], index: usize) -> Result<Vec<u8>, TlsaError> {
    Ok(parse(der, index)?.issuer().as_raw().to_vec())
}

fn subject_name(der: &[u8], index: usize) -> Result<Vec<u8>, TlsaError> {
    Ok(parse(der, index)?.subject().as_raw().to_vec())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;
    use crate::source::testing::{Alg, Ca, self_signed};

    const NOT_BEFORE: i64 = 1_700_000_000;
    const NOT_AFTER: i64 = 1_900_000_000;

    /// SHA-256 of the leaf's SubjectPublicKeyInfo as openssl computes it:
    /// `openssl x509 -pubkey | openssl pkey -pubin -outform DER | sha256`.
    /// `None` (said loudly) when openssl is missing; under `CI=true` that
    /// fails the test instead.
    fn openssl_spki_sha256(leaf_pem: &str) -> Option<String> {
        let script = "openssl x509 -noout -pubkey | openssl pkey -pubin -outform DER \
                      | openssl dgst -sha256 -r";
        let have_openssl = Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !have_openssl {
            assert!(
                std::env::var_os("CI").is_none(),
                "openssl is missing (install the Debian package openssl)"
            );
            eprintln!("SKIPPED: openssl is missing; install the Debian package openssl");
            return None;
        }
        let child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = child.expect("sh starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(leaf_pem.as_bytes())
            .expect("write the leaf to openssl");
        let out = child.wait_with_output().expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("openssl prints text");
        Some(text.split_whitespace().next().expect("a digest").to_owned())
    }

    #[test]
    fn the_3_1_1_record_of_a_leaf_is_the_sha256_openssl_computes_of_its_public_key() {
        for alg in [Alg::Ecdsa, Alg::Rsa] {
            let issued = Ca::new().issue(&["mx.example.org"], alg, NOT_BEFORE, NOT_AFTER);
            let tlsa = Spec::EE.build_for(&issued.bundle()).expect("3 1 1 builds");
            let Some(expected) = openssl_spki_sha256(&issued.bundle().leaf_pem()) else {
                return;
            };
            assert_eq!(tlsa.hex(), expected, "{alg:?}");
            assert_eq!(tlsa.to_string(), format!("3 1 1 {expected}"), "{alg:?}");
            assert!(tlsa.matches(&issued.certs), "{alg:?}");
        }
    }

    #[test]
    fn a_3_1_1_record_does_not_match_a_certificate_with_another_key_but_survives_a_renewal_with_the_same()
     {
        let ca = Ca::new();
        let old = ca.issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let other = ca.issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let tlsa = Spec::EE.build(&old.certs).expect("3 1 1 builds");
        assert!(!matches(&tlsa, &other.certs));
        assert!(matches(&tlsa, &old.certs));
        // The same key from another CA (RSA test leaves share one key).
        let a = ca.issue(&["mx.example.org"], Alg::Rsa, NOT_BEFORE, NOT_AFTER);
        let b = Ca::new().issue(&["mx.example.org"], Alg::Rsa, NOT_BEFORE, NOT_AFTER + 1);
        let tlsa = Spec::EE.build(&a.certs).expect("3 1 1 builds");
        assert!(matches(&tlsa, &b.certs));
    }

    #[test]
    fn a_2_1_1_record_names_the_issuer_of_the_chain_and_not_the_leaf() {
        let ca = Ca::new();
        let issued = ca.issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let ta = Spec::TA.build(&issued.certs).expect("2 1 1 builds");
        let ee = Spec::EE.build(&issued.certs).expect("3 1 1 builds");
        assert_ne!(ta.data, ee.data);
        assert_eq!(ta.data, spki_sha256(&issued.certs[1], 1).expect("issuer"));
        assert!(matches(&ta, &issued.certs));
        // Another leaf of the same CA keeps the 2 1 1 record valid.
        let next = ca.issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        assert!(matches(&ta, &next.certs));
        // The leaf alone (no issuer served) matches no 2 1 1 record, and a
        // 2 1 1 record carrying the leaf's hash does not match the leaf.
        assert!(!matches(&ta, &issued.certs[..1]));
        let leaf_as_ta = Tlsa {
            spec: Spec::TA,
            data: ee.data,
        };
        assert!(!matches(&leaf_as_ta, &issued.certs));
        // A chain from another CA does not match.
        let foreign = Ca::new().issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        assert!(!matches(&ta, &foreign.certs));
    }

    #[test]
    fn a_2_1_1_record_is_refused_for_a_chain_without_the_leafs_issuer() {
        let alone = self_signed(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        assert_eq!(Spec::TA.build(&alone.certs), Err(TlsaError::NoIssuer));
        let leaf = Ca::new().issue(&["mx.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let stranger = Ca::new().issue(&["ca.example.org"], Alg::Ecdsa, NOT_BEFORE, NOT_AFTER);
        let wrong = vec![leaf.certs[0].clone(), stranger.certs[0].clone()];
        assert_eq!(Spec::TA.build(&wrong), Err(TlsaError::NotIssuer));
        assert_eq!(Spec::EE.build(&[]), Err(TlsaError::EmptyChain));
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
        assert!(matches!(
            Spec::EE.build(&garbage),
            Err(TlsaError::BadCert { index: 0, .. })
        ));
    }

    #[test]
    fn records_and_specs_round_trip_through_the_presentation_form() {
        let hex = "8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1";
        let tlsa: Tlsa = format!("3 1 1 {hex}").parse().expect("parses");
        assert_eq!(tlsa.spec, Spec::EE);
        assert_eq!(tlsa.to_string(), format!("3 1 1 {hex}"));
        assert_eq!(tlsa.to_string().parse::<Tlsa>(), Ok(tlsa));
        // Upper case, spaces inside the hex and around, as zone files and
        // dig print it.
        let zone = format!(
            "  2 1 1 {} {}\t",
            hex[..32].to_uppercase(),
            hex[32..].to_uppercase()
        );
        let parsed: Tlsa = zone.parse().expect("parses");
        assert_eq!(
            parsed,
            Tlsa {
                spec: Spec::TA,
                data: tlsa.data
            }
        );
        assert_eq!(parsed.to_string(), format!("2 1 1 {hex}"));
        for spec in [" 3 1 1", "2\t1 1 "] {
            let parsed: Spec = spec.parse().expect("spec parses");
            assert_eq!(parsed.to_string().parse::<Spec>(), Ok(parsed));
        }
        assert_eq!("3 1 1".parse::<Spec>(), Ok(Spec::EE));
        assert_eq!("2 1 1".parse::<Spec>(), Ok(Spec::TA));
    }

    #[test]
    fn a_records_list_in_the_configuration_reads_as_specs_and_names_a_bad_entry() {
        #[derive(Debug, serde::Deserialize)]
        struct Dane {
            records: Vec<Spec>,
        }
        let ok: Dane = toml::from_str(r#"records = ["3 1 1", "2 1 1"]"#).expect("parses");
        assert_eq!(ok.records, [Spec::EE, Spec::TA]);
        let bad = toml::from_str::<Dane>(r#"records = ["3 0 1"]"#).expect_err("refused");
        assert!(
            bad.to_string()
                .contains(&TlsaError::UnsupportedSelector("0".into()).to_string()),
            "{bad}"
        );
    }

    #[test]
    fn malformed_records_and_specs_are_refused_with_a_reason() {
        let hex = "8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1";
        let records: &[(String, TlsaError)] = &[
            (
                format!("1 1 1 {hex}"),
                TlsaError::UnsupportedUsage("1".into()),
            ),
            (
                format!("3 0 1 {hex}"),
                TlsaError::UnsupportedSelector("0".into()),
            ),
            (
                format!("3 1 2 {hex}"),
                TlsaError::UnsupportedMatching("2".into()),
            ),
            ("3 1 1".into(), TlsaError::MissingData),
            (format!("3 1 1 {}", &hex[..62]), TlsaError::WrongLength(62)),
            (format!("3 1 1 {hex}00"), TlsaError::WrongLength(66)),
            (format!("3 1 1 {}g", &hex[..63]), TlsaError::BadHex('g')),
            (
                format!("x 1 1 {hex}"),
                TlsaError::BadSpec(format!("x 1 1 {hex}")),
            ),
            ("3 1".into(), TlsaError::BadSpec("3 1".into())),
            ("".into(), TlsaError::BadSpec(String::new())),
        ];
        for (text, expected) in records {
            let got = text.parse::<Tlsa>();
            assert_eq!(got.as_ref(), Err(expected), "{text:?}");
            let message = expected.to_string();
            assert!(!message.contains('\n'), "{message}");
        }
        let specs: &[(&str, TlsaError)] = &[
            ("3 1 1 1", TlsaError::BadSpec("3 1 1 1".into())),
            ("311", TlsaError::BadSpec("311".into())),
            ("0 1 1", TlsaError::UnsupportedUsage("0".into())),
            ("3 1 0", TlsaError::UnsupportedMatching("0".into())),
            ("3 -1 1", TlsaError::BadSpec("3 -1 1".into())),
        ];
        for (text, expected) in specs {
            assert_eq!(text.parse::<Spec>().as_ref(), Err(expected), "{text:?}");
        }
    }
}
