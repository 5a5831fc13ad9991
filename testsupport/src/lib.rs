//! Shared fixtures for the `mxkeys` and `mxkeys-providers` integration
//! tests (a dev-only crate, never published).
//!
//! Everything (CAs, leaves, keys, source trees, configs) is generated at test
//! time into a fresh temporary directory; no key material is committed. The
//! real programs the tests start (BIND, pebble, Postfix, Dovecot, OpenDKIM,
//! systemd in nspawn) listen on loopback ports from the one pool in
//! [`ports`]; without a program a test is skipped loudly, or fails when
//! `CI=true`.
//!
//! This crate depends on neither `mxkeys` nor `mxkeys-providers`: both use
//! it as a dev-dependency, and a cycle through a path crate would compile a
//! second copy of the crate under test. It drives `mxkeys` as a program
//! ([`bin`]), and the providers' tests build their clients from what
//! [`bind::Bind`] exposes.

pub mod adopt;
pub mod bind;
pub mod cf_mock;
pub mod chromium;
pub mod dkim_tools;
pub mod dnssec;
pub mod etcd;
pub mod fake_acme;
pub mod http_request;
pub mod mailloop;
pub mod mtasts;
pub mod netns;
pub mod nspawn;
pub mod podman;
pub mod ports;
pub mod servers;

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration as StdDuration;

use aws_lc_rs::encoding::AsDer;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use serde_json::{Value, json};
use time::{Duration, OffsetDateTime};

pub const HOST: &str = "mail.example.com";
pub const OTHER: &str = "other.example.com";

// ---------------------------------------------------------------------------
// Time helpers
// ---------------------------------------------------------------------------

/// Now, truncated to whole seconds (X.509 times have second precision).
/// A CA for a test server's own TLS (pebble's HTTPS, etcd's members):
/// its certificate, and the issuer that signs leaves with it. Valid from a
/// day ago for 30 days.
pub fn server_ca(
    common_name: &str,
) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, common_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = days(-1);
    ca.not_after = days(30);
    let cert = ca.self_signed(&key).unwrap();
    (cert, Issuer::new(ca, key))
}

pub fn now() -> OffsetDateTime {
    let n = OffsetDateTime::now_utc();
    n.replace_nanosecond(0).unwrap()
}

/// Now plus `d` days (negative for the past), truncated to whole seconds.
pub fn days(d: i64) -> OffsetDateTime {
    now() + Duration::days(d)
}

/// RFC 3339 / `2027-01-01T00:00:00Z` form used by `status --json`.
pub fn rfc3339_z(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Rsa2048,
    Ed25519,
}

impl KeyKind {
    pub fn alg(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
            KeyKind::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    /// The `key_type` string used by `status --json`.
    pub fn status_name(self) -> &'static str {
        match self {
            KeyKind::P256 => "ecdsa-p256",
            KeyKind::P384 => "ecdsa-p384",
            KeyKind::Rsa2048 => "rsa-2048",
            KeyKind::Ed25519 => "ed25519",
        }
    }

    pub fn generate(self) -> KeyPair {
        KeyPair::generate_for(self.alg()).expect("generate key pair")
    }
}

/// PEM encodings of a private key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// `-----BEGIN PRIVATE KEY-----`
    Pkcs8,
    /// `-----BEGIN EC PRIVATE KEY-----` (RFC 5915 / SEC1)
    Sec1,
    /// `-----BEGIN RSA PRIVATE KEY-----`
    Pkcs1,
}

/// Minimal DER TLV reader: returns (tag, content, rest).
fn der_tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, hdr) = if input[1] & 0x80 == 0 {
        (input[1] as usize, 2)
    } else {
        let n = (input[1] & 0x7f) as usize;
        let mut len = 0usize;
        for b in &input[2..2 + n] {
            len = (len << 8) | *b as usize;
        }
        (len, 2 + n)
    };
    (tag, &input[hdr..hdr + len], &input[hdr + len..])
}

/// Extract the inner `privateKey` OCTET STRING of a PKCS#8 PrivateKeyInfo.
fn pkcs8_inner(pkcs8: &[u8]) -> Vec<u8> {
    let (tag, seq, _) = der_tlv(pkcs8);
    assert_eq!(tag, 0x30, "PKCS#8 must be a SEQUENCE");
    let (tag, _version, rest) = der_tlv(seq);
    assert_eq!(tag, 0x02);
    let (tag, _alg, rest) = der_tlv(rest);
    assert_eq!(tag, 0x30);
    let (tag, inner, _) = der_tlv(rest);
    assert_eq!(tag, 0x04);
    inner.to_vec()
}

pub fn pem_block(label: &str, der: &[u8]) -> String {
    let b = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// Encode a PKCS#8 private key of the given kind in the requested PEM form.
pub fn key_pem(kind: KeyKind, pkcs8: &[u8], fmt: KeyFormat) -> String {
    match fmt {
        KeyFormat::Pkcs8 if kind == KeyKind::Ed25519 => {
            // aws-lc generates PKCS#8 v2 (with the public key); tools such as
            // OpenSSL write v1, so use that.
            let kp = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8)
                .expect("parse Ed25519 PKCS#8");
            let der: aws_lc_rs::encoding::Pkcs8V1Der = kp.as_der().expect("Ed25519 to PKCS#8 v1");
            pem_block("PRIVATE KEY", der.as_ref())
        }
        KeyFormat::Pkcs8 => pem_block("PRIVATE KEY", pkcs8),
        KeyFormat::Pkcs1 => {
            assert_eq!(kind, KeyKind::Rsa2048, "PKCS#1 is for RSA keys only");
            pem_block("RSA PRIVATE KEY", &pkcs8_inner(pkcs8))
        }
        KeyFormat::Sec1 => {
            let alg = match kind {
                KeyKind::P256 => &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                KeyKind::P384 => &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                _ => panic!("SEC1 is for EC keys only"),
            };
            let kp = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8)
                .expect("parse EC PKCS#8");
            let der = kp
                .private_key()
                .as_der()
                .expect("EC private key to RFC 5915");
            pem_block("EC PRIVATE KEY", der.as_ref())
        }
    }
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A leaf certificate with its private key and the intermediates that follow it.
#[derive(Clone, Debug)]
pub struct Leaf {
    pub der: Vec<u8>,
    /// Intermediates, in order (the CA's intermediate; never the root).
    pub chain: Vec<Vec<u8>>,
    pub key_pkcs8: Vec<u8>,
    pub kind: KeyKind,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Leaf {
    pub fn fp(&self) -> String {
        sha256_hex(&self.der)
    }
    pub fn cert_pem(&self) -> String {
        pem_block("CERTIFICATE", &self.der)
    }
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| pem_block("CERTIFICATE", c))
            .collect()
    }
    pub fn fullchain_pem(&self) -> String {
        format!("{}{}", self.cert_pem(), self.chain_pem())
    }
    pub fn key_pem(&self) -> String {
        self.key_pem_as(KeyFormat::Pkcs8)
    }
    pub fn key_pem_as(&self, fmt: KeyFormat) -> String {
        key_pem(self.kind, &self.key_pkcs8, fmt)
    }
    /// The same certificate paired with someone else's key.
    pub fn with_key_of(&self, other: &Leaf) -> Leaf {
        Leaf {
            key_pkcs8: other.key_pkcs8.clone(),
            kind: other.kind,
            ..self.clone()
        }
    }
    /// The same leaf followed by a different chain.
    pub fn with_chain(&self, chain: Vec<Vec<u8>>) -> Leaf {
        Leaf {
            chain,
            ..self.clone()
        }
    }
    /// Raw public key as found in the leaf's SubjectPublicKeyInfo BIT STRING.
    pub fn public_key_raw(&self) -> Vec<u8> {
        leaf_public_key_raw(&self.der)
    }
}

/// What a leaf should look like.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    pub names: Vec<String>,
    /// Subject CN; defaults to the first name.
    pub cn: Option<String>,
    pub kind: KeyKind,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// Valid since yesterday, expires in 60 days, ECDSA P-256.
    pub fn new(names: &[&str]) -> Self {
        LeafSpec {
            names: names.iter().map(|s| s.to_string()).collect(),
            cn: None,
            kind: KeyKind::P256,
            not_before: days(-1),
            not_after: days(60),
        }
    }
    pub fn kind(mut self, k: KeyKind) -> Self {
        self.kind = k;
        self
    }
    /// notAfter = now + `d` days.
    pub fn days(mut self, d: i64) -> Self {
        self.not_after = days(d);
        self
    }
    pub fn not_after(mut self, t: OffsetDateTime) -> Self {
        self.not_after = t;
        self
    }
    pub fn not_before(mut self, t: OffsetDateTime) -> Self {
        self.not_before = t;
        self
    }
    /// Valid from 90 days ago until yesterday.
    pub fn expired(mut self) -> Self {
        self.not_before = days(-90);
        self.not_after = days(-1);
        self
    }
    /// Valid from tomorrow for 90 days.
    pub fn future(mut self) -> Self {
        self.not_before = days(1);
        self.not_after = days(91);
        self
    }
    /// No SAN extension at all; only a subject CN.
    pub fn cn_only(name: &str) -> Self {
        let mut s = LeafSpec::new(&[]);
        s.cn = Some(name.to_string());
        s
    }
    pub fn cn(mut self, cn: &str) -> Self {
        self.cn = Some(cn.to_string());
        self
    }

    fn params(&self) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.subject_alt_names = self
            .names
            .iter()
            .map(|n| SanType::DnsName(n.clone().try_into().expect("dns name")))
            .collect();
        let mut dn = DistinguishedName::new();
        let cn = self
            .cn
            .clone()
            .or_else(|| self.names.first().cloned())
            .unwrap_or_else(|| "leaf".to_string());
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.not_before = self.not_before;
        p.not_after = self.not_after;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        p
    }
}

/// A test CA: a root and an intermediate signed by it. Leaves are issued by
/// the intermediate; their chain is `[intermediate]`.
pub struct Ca {
    pub root_der: Vec<u8>,
    pub inter_der: Vec<u8>,
    inter: Issuer<'static, KeyPair>,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mxkeys test");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = days(-365);
    p.not_after = days(3650);
    p
}

impl Ca {
    /// A CA whose names embed `tag`.
    pub fn new(tag: &str) -> Ca {
        Self::with_names(
            &format!("Test Root {tag}"),
            &format!("Test Intermediate {tag}"),
        )
    }

    /// A CA with explicit subject CNs (two CAs built with the same names
    /// have matching issuer names but different keys).
    pub fn with_names(root_cn: &str, inter_cn: &str) -> Ca {
        let root_key = KeyKind::P256.generate();
        let root_params = ca_params(root_cn);
        let root_cert = root_params.self_signed(&root_key).expect("root");
        let root = Issuer::new(root_params, root_key);

        let inter_key = KeyKind::P256.generate();
        let inter_params = ca_params(inter_cn);
        let inter_cert = inter_params
            .signed_by(&inter_key, &root)
            .expect("intermediate");
        Ca {
            root_der: root_cert.der().to_vec(),
            inter_der: inter_cert.der().to_vec(),
            inter: Issuer::new(inter_params, inter_key),
        }
    }

    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        self.issue_with(spec, spec.kind.generate())
    }

    /// A new leaf for `spec` with the key of `previous`: a renewal that
    /// keeps its key (`spec.kind` is ignored).
    pub fn reissue(&self, spec: &LeafSpec, previous: &Leaf) -> Leaf {
        let pem = pem_block("PRIVATE KEY", &previous.key_pkcs8);
        let key = KeyPair::from_pem(&pem).expect("the previous leaf's key");
        self.issue_with(
            &LeafSpec {
                kind: previous.kind,
                ..spec.clone()
            },
            key,
        )
    }

    fn issue_with(&self, spec: &LeafSpec, key: KeyPair) -> Leaf {
        let cert = spec.params().signed_by(&key, &self.inter).expect("leaf");
        Leaf {
            der: cert.der().to_vec(),
            chain: vec![self.inter_der.clone()],
            key_pkcs8: key.serialize_der(),
            kind: spec.kind,
            not_before: spec.not_before,
            not_after: spec.not_after,
        }
    }
}

/// A self-signed leaf (no chain).
pub fn self_signed_leaf(spec: &LeafSpec) -> Leaf {
    let key = spec.kind.generate();
    let cert = spec.params().self_signed(&key).expect("self-signed");
    Leaf {
        der: cert.der().to_vec(),
        chain: vec![],
        key_pkcs8: key.serialize_der(),
        kind: spec.kind,
        not_before: spec.not_before,
        not_after: spec.not_after,
    }
}

// ---------------------------------------------------------------------------
// Inspecting certificates and PEM files
// ---------------------------------------------------------------------------

pub fn sha256_hex(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Parse all PEM blocks of a text into (label, DER).
pub fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut label: Option<String> = None;
    let mut body = String::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            label = Some(rest.trim_end_matches("-----").to_string());
            body.clear();
        } else if line.starts_with("-----END ") {
            let l = label.take().expect("END without BEGIN");
            let der = B64
                .decode(body.trim().replace(['\n', ' '], ""))
                .expect("PEM body is base64");
            out.push((l, der));
        } else if label.is_some() {
            body.push_str(line.trim());
        }
    }
    assert!(label.is_none(), "unterminated PEM block");
    out
}

/// Read a PEM file produced by mxkeys, asserting it is normalized
/// (LF line endings, base64 lines of at most 64 columns).
pub fn read_pem(path: &Path) -> Vec<(String, Vec<u8>)> {
    let text =
        fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert!(
        !text.contains('\r'),
        "{} contains CR characters",
        path.display()
    );
    for line in text.lines() {
        assert!(
            line.len() <= 64 || line.starts_with("-----"),
            "{}: line longer than 64 columns: {line:?}",
            path.display()
        );
    }
    let blocks = pem_blocks(&text);
    assert!(!blocks.is_empty(), "{} holds no PEM block", path.display());
    blocks
}

/// DER of every CERTIFICATE block of a PEM file.
pub fn read_certs(path: &Path) -> Vec<Vec<u8>> {
    read_pem(path)
        .into_iter()
        .filter(|(l, _)| l == "CERTIFICATE")
        .map(|(_, d)| d)
        .collect()
}

pub fn is_private_key_label(label: &str) -> bool {
    matches!(label, "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY")
}

/// Raw public key bytes (SPKI BIT STRING content) of a certificate.
pub fn leaf_public_key_raw(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    cert.public_key().subject_public_key.data.to_vec()
}

/// Public key bytes of a PEM private key (any of the three forms), comparable
/// to `leaf_public_key_raw`.
pub fn private_key_public_raw(label: &str, der: &[u8]) -> Vec<u8> {
    let pem = pem_block(label, der);
    let kp = KeyPair::from_pem(&pem).unwrap_or_else(|e| panic!("parse {label}: {e}"));
    kp.public_key_raw().to_vec()
}

/// Facts about a certificate.
#[derive(Debug)]
pub struct CertInfo {
    pub dns_sans: Vec<String>,
    pub subject: String,
    pub issuer: String,
    pub key_type: String,
    pub not_after: i64,
}

pub fn cert_info(der: &[u8]) -> CertInfo {
    use x509_parser::extensions::GeneralName;
    use x509_parser::public_key::PublicKey;
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse certificate");
    let mut dns_sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                dns_sans.push(d.to_string());
            }
        }
    }
    let spki = cert.public_key();
    let oid = spki.algorithm.algorithm.to_id_string();
    let key_type = if oid == "1.3.101.112" {
        "ed25519".to_string()
    } else {
        match spki.parsed() {
            Ok(PublicKey::RSA(r)) => format!("rsa-{}", r.key_size()),
            Ok(PublicKey::EC(p)) => format!("ecdsa-p{}", p.key_size()),
            _ => format!("unknown-{oid}"),
        }
    };
    CertInfo {
        dns_sans,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        key_type,
        not_after: cert.validity().not_after.timestamp(),
    }
}

// ---------------------------------------------------------------------------
// Filesystem helpers
// ---------------------------------------------------------------------------

pub fn write(path: &Path, contents: impl AsRef<[u8]>) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Rewrite `path` in place (same inode), as Traefik rewrites acme.json:
/// truncate, write `bytes`.
pub fn write_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(bytes).unwrap();
    f.sync_data().unwrap();
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[track_caller]
pub fn assert_mode(path: &Path, want: u32) {
    let got = mode_of(path);
    assert_eq!(
        got,
        want,
        "mode of {}: got {got:o}, want {want:o}",
        path.display()
    );
}

/// (inode, mtime seconds, mtime nanoseconds, bytes) of a file.
pub fn file_id(path: &Path) -> (u64, i64, i64, Vec<u8>) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.ino(), m.mtime(), m.mtime_nsec(), fs::read(path).unwrap())
}

/// Every regular file below `dir` (relative path, bytes), sorted.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(base, &p, out);
            } else if ft.is_file() {
                out.push((
                    p.strip_prefix(base).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Create a sparse file of `len` bytes starting with `prefix`.
pub fn sparse_file(path: &Path, prefix: &[u8], len: u64) {
    write(path, prefix);
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(len).unwrap();
}

/// TOML basic string.
pub fn q(s: impl AsRef<str>) -> String {
    serde_json::to_string(s.as_ref()).unwrap()
}

pub fn qp(p: &Path) -> String {
    q(p.to_str().expect("utf-8 path"))
}

pub fn q_list(items: &[&str]) -> String {
    format!("[{}]", items.iter().map(q).collect::<Vec<_>>().join(", "))
}

// ---------------------------------------------------------------------------
// Source writers
// ---------------------------------------------------------------------------

/// One `Certificates` entry of an acme.json.
#[derive(Clone, Debug)]
pub struct AcmeEntry {
    pub main: Option<String>,
    pub sans: Option<Vec<String>>,
    /// Value of the certificate field (base64 of PEM); None = field absent.
    pub certificate: Option<String>,
    /// Value of the key field (base64 of PEM); None = field absent.
    pub key: Option<String>,
}

impl AcmeEntry {
    /// An entry for `leaf`, with `main` set to its first SAN (or `main`).
    pub fn new(leaf: &Leaf, main: &str) -> Self {
        Self::with_format(leaf, main, KeyFormat::Pkcs8)
    }
    pub fn with_format(leaf: &Leaf, main: &str, fmt: KeyFormat) -> Self {
        AcmeEntry {
            main: Some(main.to_string()),
            sans: None,
            certificate: Some(B64.encode(leaf.fullchain_pem())),
            key: Some(B64.encode(leaf.key_pem_as(fmt))),
        }
    }
    pub fn sans(mut self, sans: &[&str]) -> Self {
        self.sans = Some(sans.iter().map(|s| s.to_string()).collect());
        self
    }
    /// The entry as Traefik v2/v3 writes it (lower-case keys, optionally
    /// a `Store`).
    fn v2(&self, store: bool) -> Value {
        let mut e = self.encode(["domain", "main", "sans", "certificate", "key"]);
        if store {
            e.insert("Store".into(), json!("default"));
        }
        Value::Object(e)
    }
    /// The entry as Traefik v1 writes it (capitalised keys).
    fn v1(&self) -> Value {
        Value::Object(self.encode(["Domain", "Main", "SANs", "Certificate", "Key"]))
    }
    /// The entry's fields under the given key names: [domain, main, sans,
    /// certificate, key]; unset fields are left out.
    fn encode(
        &self,
        [domain_k, main_k, sans_k, cert_k, key_k]: [&str; 5],
    ) -> serde_json::Map<String, Value> {
        let mut domain = serde_json::Map::new();
        if let Some(m) = &self.main {
            domain.insert(main_k.into(), json!(m));
        }
        if let Some(s) = &self.sans {
            domain.insert(sans_k.into(), json!(s));
        }
        let mut e = serde_json::Map::new();
        e.insert(domain_k.into(), Value::Object(domain));
        if let Some(c) = &self.certificate {
            e.insert(cert_k.into(), json!(c));
        }
        if let Some(k) = &self.key {
            e.insert(key_k.into(), json!(k));
        }
        e
    }
}

fn acme_account() -> Value {
    json!({
        "Email": "admin@example.com",
        "Registration": {
            "body": {"status": "valid", "contact": ["mailto:admin@example.com"]},
            "uri": "https://acme-v02.api.letsencrypt.org/acme/acct/123456"
        },
        "PrivateKey": "MIIJKAIBAAKCAgEAnotarealkey",
        "KeyType": "4096"
    })
}

/// Traefik v2 acme.json: resolvers in order; `None` = `"Certificates": null`.
pub fn acme_v2(resolvers: &[(&str, Option<Vec<AcmeEntry>>)]) -> Value {
    acme_v2v3(resolvers, false)
}

/// Traefik v3 acme.json (entries carry `"Store": "default"`).
pub fn acme_v3(resolvers: &[(&str, Option<Vec<AcmeEntry>>)]) -> Value {
    acme_v2v3(resolvers, true)
}

fn acme_v2v3(resolvers: &[(&str, Option<Vec<AcmeEntry>>)], store: bool) -> Value {
    let mut top = serde_json::Map::new();
    for (name, entries) in resolvers {
        let certs = match entries {
            None => Value::Null,
            Some(es) => Value::Array(es.iter().map(|e| e.v2(store)).collect()),
        };
        top.insert(
            name.to_string(),
            json!({"Account": acme_account(), "Certificates": certs}),
        );
    }
    Value::Object(top)
}

/// Traefik v1 acme.json.
pub fn acme_v1(entries: &[AcmeEntry]) -> Value {
    json!({
        "Account": acme_account(),
        "Certificates": entries.iter().map(|e| e.v1()).collect::<Vec<_>>(),
        "HTTPChallenges": {},
        "TLSChallenges": {}
    })
}

pub fn write_json(path: &Path, v: &Value) {
    write(path, serde_json::to_vec_pretty(v).unwrap());
    set_mode(path, 0o600);
}

/// A Certbot configuration directory (`/etc/letsencrypt` layout).
pub struct Certbot {
    pub root: PathBuf,
}

impl Certbot {
    pub fn new(root: &Path) -> Certbot {
        for d in ["live", "archive", "renewal"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        set_mode(&root.join("live"), 0o700);
        set_mode(&root.join("archive"), 0o700);
        write(
            &root.join("live/README"),
            "This directory contains your keys and certificates.\n\n\
             `[cert name]/privkey.pem`  : the private key for your certificate.\n\
             `[cert name]/fullchain.pem`: the certificate file used in most server software.\n",
        );
        Certbot {
            root: root.to_path_buf(),
        }
    }

    pub fn live(&self) -> PathBuf {
        self.root.join("live")
    }

    pub fn live_name(&self, name: &str) -> PathBuf {
        self.root.join("live").join(name)
    }

    /// Add (or renew) lineage `name` with `leaf`: writes `archive/NAME/*N.pem`
    /// with the next N and points the `live/NAME` relative symlinks at it.
    /// Returns N.
    pub fn add(&self, name: &str, leaf: &Leaf) -> u32 {
        let archive = self.root.join("archive").join(name);
        let live = self.root.join("live").join(name);
        fs::create_dir_all(&archive).unwrap();
        fs::create_dir_all(&live).unwrap();
        let mut n = 1;
        while archive.join(format!("cert{n}.pem")).exists() {
            n += 1;
        }
        let files = [
            ("cert", leaf.cert_pem()),
            ("chain", leaf.chain_pem()),
            ("fullchain", leaf.fullchain_pem()),
            ("privkey", leaf.key_pem()),
        ];
        for (base, contents) in files {
            let f = archive.join(format!("{base}{n}.pem"));
            write(&f, contents);
            set_mode(&f, if base == "privkey" { 0o600 } else { 0o644 });
            let link = live.join(format!("{base}.pem"));
            let _ = fs::remove_file(&link);
            symlink(format!("../../archive/{name}/{base}{n}.pem"), &link).unwrap();
        }
        write(
            &self.root.join("renewal").join(format!("{name}.conf")),
            format!(
                "version = 2.11.0\narchive_dir = {0}\ncert = {1}/cert.pem\n\
                 privkey = {1}/privkey.pem\nchain = {1}/chain.pem\nfullchain = {1}/fullchain.pem\n\n\
                 [renewalparams]\nauthenticator = standalone\nserver = https://acme-v02.api.letsencrypt.org/directory\n",
                archive.display(),
                live.display()
            ),
        );
        n
    }
}

/// Add a certificate to a lego `--path` directory (`certificates/` below it).
/// `domain` may be a wildcard (`*.example.com` is stored as `_.example.com`).
pub fn lego_add(lego_path: &Path, domain: &str, leaf: &Leaf) {
    let dir = lego_path.join("certificates");
    fs::create_dir_all(&dir).unwrap();
    let name = domain.replace('*', "_");
    write(&dir.join(format!("{name}.crt")), leaf.fullchain_pem());
    write(&dir.join(format!("{name}.issuer.crt")), leaf.chain_pem());
    write(&dir.join(format!("{name}.key")), leaf.key_pem());
    set_mode(&dir.join(format!("{name}.key")), 0o600);
    write(
        &dir.join(format!("{name}.json")),
        serde_json::to_vec_pretty(&json!({
            "domain": domain,
            "certUrl": "https://acme-v02.api.letsencrypt.org/acme/cert/03a1",
            "certStableUrl": "https://acme-v02.api.letsencrypt.org/acme/cert/03a1"
        }))
        .unwrap(),
    );
}

// ---------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------

pub fn src_traefik(path: &Path) -> String {
    format!("[[source]]\ntype = \"traefik\"\npath = {}\n", qp(path))
}

pub fn src_traefik_resolvers(path: &Path, resolvers: &[&str]) -> String {
    format!(
        "[[source]]\ntype = \"traefik\"\npath = {}\nresolvers = {}\n",
        qp(path),
        q_list(resolvers)
    )
}

pub fn src_certbot(path: &Path) -> String {
    format!("[[source]]\ntype = \"certbot\"\npath = {}\n", qp(path))
}

pub fn src_lego(path: &Path) -> String {
    format!("[[source]]\ntype = \"lego\"\npath = {}\n", qp(path))
}

pub fn src_files(cert: &Path, key: &Path, chain: Option<&Path>) -> String {
    let mut s = format!(
        "[[source]]\ntype = \"files\"\ncert = {}\nkey = {}\n",
        qp(cert),
        qp(key)
    );
    if let Some(c) = chain {
        let _ = writeln!(s, "chain = {}", qp(c));
    }
    s
}

pub fn src_self_signed() -> String {
    "[[source]]\ntype = \"self-signed\"\n".to_string()
}

/// Write `leaf` as a plain-files source under `dir` (fullchain.pem + privkey.pem)
/// and return its config snippet.
pub fn files_source(dir: &Path, leaf: &Leaf) -> String {
    let cert = dir.join("fullchain.pem");
    let key = dir.join("privkey.pem");
    write(&cert, leaf.fullchain_pem());
    write(&key, leaf.key_pem());
    src_files(&cert, &key, None)
}

/// A `[[target]]` table.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    pub dir: PathBuf,
    pub domains: Option<Vec<String>>,
    pub key_type: Option<String>,
    pub fullchain: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub combined: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub chain: Option<PathBuf>,
    pub mode: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub reload: Option<Vec<String>>,
    pub reload_timeout: Option<String>,
    /// Raw extra TOML lines.
    pub extra: Vec<String>,
}

impl Target {
    /// Target `name` writing `fullchain.pem` and `privkey.pem` into
    /// `<env>/out/<name>/` (created), domains defaulting to the hostname.
    pub fn new(env: &Env, name: &str) -> Target {
        let dir = env.out.join(name);
        fs::create_dir_all(&dir).unwrap();
        Target::in_dir(name, &dir)
    }

    /// Target `name` writing `fullchain.pem` and `privkey.pem` into `dir`,
    /// every other key unset.
    pub fn in_dir(name: &str, dir: &Path) -> Target {
        let dir = dir.to_path_buf();
        Target {
            name: name.to_string(),
            fullchain: Some(dir.join("fullchain.pem")),
            key: Some(dir.join("privkey.pem")),
            dir,
            domains: None,
            key_type: None,
            combined: None,
            cert: None,
            chain: None,
            mode: None,
            owner: None,
            group: None,
            reload: None,
            reload_timeout: None,
            extra: vec![],
        }
    }
    pub fn domains(mut self, d: &[&str]) -> Self {
        self.domains = Some(d.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn key_type(mut self, k: &str) -> Self {
        self.key_type = Some(k.to_string());
        self
    }
    pub fn mode(mut self, m: &str) -> Self {
        self.mode = Some(m.to_string());
        self
    }
    /// Also write combined.pem, leaf.pem and intermediates.pem.
    pub fn all_outputs(mut self) -> Self {
        self.combined = Some(self.dir.join("combined.pem"));
        self.cert = Some(self.dir.join("leaf.pem"));
        self.chain = Some(self.dir.join("intermediates.pem"));
        self
    }
    pub fn reload(mut self, argv: &[&str]) -> Self {
        self.reload = Some(argv.iter().map(|s| s.to_string()).collect());
        self
    }
    pub fn reload_timeout(mut self, t: &str) -> Self {
        self.reload_timeout = Some(t.to_string());
        self
    }
    pub fn extra(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// Every output path configured.
    pub fn outputs(&self) -> Vec<PathBuf> {
        [
            &self.fullchain,
            &self.key,
            &self.combined,
            &self.cert,
            &self.chain,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    pub fn toml(&self) -> String {
        let mut s = format!("[[target]]\nname = {}\n", q(&self.name));
        if let Some(d) = &self.domains {
            let d: Vec<&str> = d.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(s, "domains = {}", q_list(&d));
        }
        if let Some(k) = &self.key_type {
            let _ = writeln!(s, "key_type = {}", q(k));
        }
        for (k, v) in [
            ("fullchain", &self.fullchain),
            ("key", &self.key),
            ("combined", &self.combined),
            ("cert", &self.cert),
            ("chain", &self.chain),
        ] {
            if let Some(p) = v {
                let _ = writeln!(s, "{k} = {}", qp(p));
            }
        }
        for (k, v) in [
            ("mode", &self.mode),
            ("owner", &self.owner),
            ("group", &self.group),
            ("reload_timeout", &self.reload_timeout),
        ] {
            if let Some(v) = v {
                let _ = writeln!(s, "{k} = {}", q(v));
            }
        }
        if let Some(r) = &self.reload {
            let r: Vec<&str> = r.iter().map(|s| s.as_str()).collect();
            let _ = writeln!(s, "reload = {}", q_list(&r));
        }
        for l in &self.extra {
            let _ = writeln!(s, "{l}");
        }
        s
    }

    /// DER of the leaf installed in this target's fullchain (first block).
    pub fn installed_leaf(&self) -> Vec<u8> {
        let p = self.fullchain.as_ref().expect("target has fullchain");
        let certs = read_certs(p);
        certs
            .into_iter()
            .next()
            .expect("fullchain holds a certificate")
    }

    /// Fingerprint of the installed leaf, or None when nothing is installed.
    pub fn installed_fp(&self) -> Option<String> {
        let p = self.fullchain.as_ref().expect("target has fullchain");
        if !p.exists() {
            return None;
        }
        Some(sha256_hex(&self.installed_leaf()))
    }

    /// Assert the target's fullchain is `leaf` followed by its chain and the
    /// key file holds the matching private key.
    #[track_caller]
    pub fn assert_installed(&self, leaf: &Leaf) {
        let fc = self.fullchain.as_ref().expect("fullchain");
        let certs = read_certs(fc);
        assert!(
            !certs.is_empty(),
            "target {}: no certificate installed",
            self.name
        );
        assert_eq!(
            sha256_hex(&certs[0]),
            leaf.fp(),
            "target {}: wrong leaf installed",
            self.name
        );
        assert_eq!(
            certs[1..].to_vec(),
            leaf.chain,
            "target {}: fullchain intermediates differ",
            self.name
        );
        if let Some(k) = &self.key {
            let blocks = read_pem(k);
            assert_eq!(blocks.len(), 1, "key file holds exactly one block");
            assert!(
                is_private_key_label(&blocks[0].0),
                "key label {}",
                blocks[0].0
            );
            assert_eq!(
                private_key_public_raw(&blocks[0].0, &blocks[0].1),
                leaf.public_key_raw(),
                "target {}: installed key does not match the leaf",
                self.name
            );
        }
    }

    /// (path, bytes) of every existing output file.
    pub fn contents(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        self.outputs()
            .into_iter()
            .map(|p| {
                let c = fs::read(&p).ok();
                (p, c)
            })
            .collect()
    }

    /// Write arbitrary pre-existing content into every output file.
    pub fn preseed(&self, text: &str) {
        for p in self.outputs() {
            write(&p, format!("{text} ({})\n", p.display()));
        }
    }
}

// ---------------------------------------------------------------------------
// Environment and runner
// ---------------------------------------------------------------------------

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub out: PathBuf,
    pub config: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("mxkeys-test-")
            .tempdir()
            .unwrap();
        let root = tmp.path().to_path_buf();
        let state = root.join("state");
        let out = root.join("out");
        fs::create_dir_all(&state).unwrap();
        fs::create_dir_all(&out).unwrap();
        let config = root.join("mxkeys.toml");
        Env {
            tmp,
            root,
            state,
            out,
            config,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The header every config starts with.
    pub fn header(&self) -> String {
        format!("hostname = {}\nstate_dir = {}\n", q(HOST), qp(&self.state))
    }

    /// Write the config file from source snippets and targets.
    pub fn write_config(&self, sources: &[String], targets: &[&Target]) {
        let mut s = self.header();
        for src in sources {
            s.push('\n');
            s.push_str(src);
        }
        for t in targets {
            s.push('\n');
            s.push_str(&t.toml());
        }
        write(&self.config, s);
    }

    pub fn write_config_raw(&self, text: &str) {
        write(&self.config, text);
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("MXKEYS_CONFIG");
        c.env("NO_COLOR", "1");
        c.current_dir(&self.root);
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from_output(
            format!(
                "mxkeys --config {} {}",
                self.config.display(),
                args.join(" ")
            ),
            run_with_timeout(self.cmd(args)),
        )
    }

    pub fn sync(&self) -> Run {
        self.run(&["sync"])
    }

    pub fn check(&self) -> Run {
        self.run(&["check"])
    }

    /// `status --json`, parsed, with a successful exit asserted by the caller.
    pub fn status_json(&self) -> (Run, Value) {
        let r = self.run(&["status", "--json"]);
        let v: Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| {
            panic!("status --json output is not JSON ({e}):\n{}", r.describe())
        });
        (r, v)
    }

    /// Make the temp tree usable by uid/gid 65534 (for permission tests).
    pub fn open_to_nobody(&self) {
        fn walk(p: &Path) {
            let m = fs::symlink_metadata(p).unwrap();
            if m.file_type().is_symlink() {
                return;
            }
            if m.is_dir() {
                set_mode(p, 0o777);
                for e in fs::read_dir(p).unwrap() {
                    walk(&e.unwrap().path());
                }
            } else {
                set_mode(p, 0o666);
            }
        }
        walk(&self.root);
        std::os::unix::fs::chown(&self.root, Some(65534), Some(65534)).unwrap();
        std::os::unix::fs::chown(&self.state, Some(65534), Some(65534)).unwrap();
    }

    /// Run the binary as uid/gid 65534 through setpriv.
    pub fn run_as_nobody(&self, args: &[&str]) -> Run {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("MXKEYS_CONFIG")
            .current_dir(&self.root);
        Run::from_output(
            format!("setpriv ... mxkeys {}", args.join(" ")),
            run_with_timeout(c),
        )
    }
}

/// The `mxkeys` binary under test. Cargo builds it for the main crate's
/// integration tests and names it in `CARGO_BIN_EXE_mxkeys`, at compile
/// time of the test (not of this crate) and, with newer Cargo, at run time;
/// otherwise it lies where Cargo puts it, next to the `deps/` directory that
/// holds the running test binary.
pub fn bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(path) = std::env::var_os("CARGO_BIN_EXE_mxkeys") {
            return path.to_string_lossy().into_owned();
        }
        let exe = std::env::current_exe().expect("the test binary's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("a test binary under target/PROFILE/deps");
        let path = profile_dir.join("mxkeys");
        assert!(
            path.is_file(),
            "{} is missing: run the tests with `cargo test`, which builds it",
            path.display()
        );
        path.to_string_lossy().into_owned()
    })
}

pub fn have_setpriv() -> bool {
    Command::new("setpriv")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// curl for `https://NAME:PORT/PATH` reached at 127.0.0.1, trusting only
/// `root`, ignoring any proxy of the environment, giving up after
/// `max_time` seconds; callers add their output options (curl takes
/// options after the URL too).
pub fn curl_https(root: &Path, name: &str, port: u16, path: &str, max_time: u32) -> Command {
    let mut c = Command::new("curl");
    c.args(["-sS", "--noproxy", "*", "--max-time"])
        .arg(max_time.to_string())
        .arg("--cacert")
        .arg(root)
        .arg("--resolve")
        .arg(format!("{name}:{port}:127.0.0.1"))
        .arg(format!("https://{name}:{port}{path}"));
    mtasts::clear_proxies(&mut c);
    c
}

/// Run a command, killing it if it has not finished within 60 seconds.
pub fn run_with_timeout(mut c: Command) -> Output {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().expect("spawn mxkeys");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let out = child.wait_with_output();
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(StdDuration::from_secs(60)).is_err() {
        // Our own child, by pid.
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        let out = h.join().unwrap().unwrap();
        panic!(
            "command timed out after 60s\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    h.join().unwrap().expect("wait for mxkeys")
}

/// Remove ANSI colour sequences (log output may be coloured).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug)]
pub struct Run {
    pub cmdline: String,
    /// Exit code; -1 when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(cmdline: String, o: Output) -> Run {
        let r = Run {
            cmdline,
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: strip_ansi(&String::from_utf8_lossy(&o.stderr)),
        };
        assert!(
            !r.stderr.contains("panicked") && !r.stdout.contains("panicked"),
            "mxkeys panicked:\n{}",
            r.describe()
        );
        assert!(r.code >= 0, "mxkeys killed by a signal:\n{}", r.describe());
        r
    }

    pub fn describe(&self) -> String {
        format!(
            "$ {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        )
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code\n{}", self.describe());
        self
    }

    #[track_caller]
    pub fn ok(&self) -> &Self {
        self.assert_code(0)
    }

    /// Assert some stderr line contains every one of `parts`
    /// (case-insensitive).
    #[track_caller]
    pub fn assert_err_line(&self, parts: &[&str]) -> &Self {
        let found = self.stderr.lines().any(|l| {
            let l = l.to_lowercase();
            parts.iter().all(|p| l.contains(&p.to_lowercase()))
        });
        assert!(
            found,
            "no stderr line contains all of {parts:?}\n{}",
            self.describe()
        );
        self
    }

    /// Assert stderr contains `part` somewhere (case-insensitive).
    #[track_caller]
    pub fn assert_stderr_contains(&self, part: &str) -> &Self {
        assert!(
            self.stderr.to_lowercase().contains(&part.to_lowercase()),
            "stderr does not contain {part:?}\n{}",
            self.describe()
        );
        self
    }

    #[track_caller]
    pub fn assert_stderr_lacks(&self, part: &str) -> &Self {
        assert!(
            !self.stderr.to_lowercase().contains(&part.to_lowercase()),
            "stderr unexpectedly contains {part:?}\n{}",
            self.describe()
        );
        self
    }

    /// The line of stdout mentioning `needle`.
    pub fn stdout_line_with(&self, needle: &str) -> Option<&str> {
        self.stdout.lines().find(|l| l.contains(needle))
    }
}

/// Write an executable shell script.
pub fn script(path: &Path, body: &str) {
    write(path, format!("#!/bin/sh\n{body}\n"));
    set_mode(path, 0o755);
}

/// Lines of a log file (empty when missing).
pub fn log_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|s| s.to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// Daemon (`mxkeys run`) helpers
// ---------------------------------------------------------------------------

/// How long any wait for the daemon may take before the test fails.
pub const DEADLINE: StdDuration = StdDuration::from_secs(15);

/// Polls `probe` every 20 ms until it returns `Some`, or fails after
/// [`DEADLINE`] saying `what` was awaited and showing `context()`.
#[track_caller]
pub fn wait_for<T>(
    what: &str,
    mut probe: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(StdDuration::from_millis(20));
    }
}

/// Waits until `observe` returns the same value twice in a row `quiet`
/// apart (the daemon has gone idle), and returns that value.
#[track_caller]
pub fn settle<T: PartialEq>(quiet: StdDuration, mut observe: impl FnMut() -> T) -> T {
    let start = std::time::Instant::now();
    let mut last = observe();
    loop {
        std::thread::sleep(quiet);
        let now = observe();
        if now == last {
            return now;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the daemon did not go quiet within {DEADLINE:?}"
        );
        last = now;
    }
}

/// Quote for `sh`.
pub fn sh_quote(s: impl AsRef<str>) -> String {
    format!("'{}'", s.as_ref().replace('\'', r"'\''"))
}

/// A running `mxkeys run` (or any child process) that is killed when the
/// guard is dropped, even when an assertion fails. Its stdout and stderr go
/// to files so they can be read while it runs.
pub struct Daemon {
    pub child: Option<std::process::Child>,
    pub cmdline: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Daemon {
    /// Spawn `cmd` with output captured into `<log_dir>/<tag>.{stdout,stderr}`.
    pub fn spawn(mut cmd: Command, log_dir: &Path, tag: &str) -> Daemon {
        fs::create_dir_all(log_dir).unwrap();
        let stdout_path = log_dir.join(format!("{tag}.stdout"));
        let stderr_path = log_dir.join(format!("{tag}.stderr"));
        let cmdline = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        let child = cmd.spawn().expect("spawn the daemon");
        Daemon {
            child: Some(child),
            cmdline,
            stdout_path,
            stderr_path,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon not yet reaped").id()
    }

    /// Its stderr so far, without colour sequences.
    pub fn stderr(&self) -> String {
        strip_ansi(&fs::read_to_string(&self.stderr_path).unwrap_or_default())
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn describe(&self) -> String {
        format!(
            "$ {}\n--- daemon stdout ---\n{}\n--- daemon stderr ---\n{}",
            self.cmdline,
            self.stdout(),
            self.stderr()
        )
    }

    /// Send `signal` (e.g. `nix::sys::signal::Signal::SIGHUP`).
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal the daemon");
    }

    /// Panics when the process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("daemon not yet reaped");
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the daemon exited ({status}) while it should be running\n{}",
                self.describe()
            );
        }
    }

    /// Waits for the process to exit (after a signal); panics after the
    /// deadline.
    #[track_caller]
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = std::time::Instant::now();
        loop {
            let child = self.child.as_mut().expect("daemon not yet reaped");
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            if start.elapsed() > DEADLINE {
                panic!(
                    "the daemon did not exit within {DEADLINE:?}\n{}",
                    self.describe()
                );
            }
            std::thread::sleep(StdDuration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for the exit.
    #[track_caller]
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait_exit()
    }

    /// Every non-empty stderr line containing `part` (case-insensitive).
    pub fn stderr_lines_with(&self, part: &str) -> Vec<String> {
        let part = part.to_lowercase();
        self.stderr()
            .lines()
            .filter(|l| l.to_lowercase().contains(&part))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Our own child, by its handle.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Variables the daemon must not inherit from whatever runs the tests.
pub const DAEMON_ENV_REMOVE: &[&str] = &[
    "MXKEYS_CONFIG",
    "MXKEYS_LOG",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "LISTEN_FDS",
    "LISTEN_PID",
];

impl Env {
    /// Write the config with top-level daemon keys (`top`, raw TOML lines,
    /// which may end with a `[metrics]` table) before the sources.
    pub fn write_config_with(&self, top: &str, sources: &[String], targets: &[&Target]) {
        let mut s = self.header();
        s.push_str(top);
        if !top.ends_with('\n') {
            s.push('\n');
        }
        for src in sources {
            s.push('\n');
            s.push_str(src);
        }
        for t in targets {
            s.push('\n');
            s.push_str(&t.toml());
        }
        write(&self.config, s);
    }

    /// Start `mxkeys --config CFG [args] run`.
    pub fn daemon(&self, args: &[&str]) -> Daemon {
        self.daemon_tagged("daemon", args)
    }

    pub fn daemon_tagged(&self, tag: &str, args: &[&str]) -> Daemon {
        let mut full: Vec<&str> = args.to_vec();
        full.push("run");
        let mut c = self.cmd(&full);
        for v in DAEMON_ENV_REMOVE {
            c.env_remove(v);
        }
        Daemon::spawn(c, &self.root.join("logs"), tag)
    }

    /// The `daemon` record of state_dir/state.json, if any.
    pub fn daemon_record(&self) -> Option<Value> {
        let bytes = fs::read(self.state.join("state.json")).ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v.get("daemon").filter(|d| !d.is_null()).cloned()
    }

    /// How many reconciles daemon `d` has recorded (0 before its first).
    pub fn reconciles_of(&self, d: &Daemon) -> u64 {
        self.daemon_record()
            .filter(|r| r["pid"].as_u64() == Some(u64::from(d.pid())))
            .and_then(|r| r["reconciles"].as_u64())
            .unwrap_or(0)
    }

    /// Wait until daemon `d` has finished at least `n` reconciles.
    #[track_caller]
    pub fn wait_reconciles(&self, d: &Daemon, n: u64) {
        wait_for(
            &format!("the daemon to finish {n} reconciles"),
            || (self.reconciles_of(d) >= n).then_some(()),
            || d.describe(),
        );
    }
}

/// A reload command that counts its runs and, at each run, copies the
/// target's fullchain and key as they are at that moment.
pub struct ReloadProbe {
    pub log: PathBuf,
    pub copies: PathBuf,
}

impl ReloadProbe {
    pub fn new(env: &Env, name: &str) -> ReloadProbe {
        let log = env.root.join(format!("{name}.reloads"));
        let copies = env.root.join(format!("{name}.copies"));
        fs::create_dir_all(&copies).unwrap();
        ReloadProbe { log, copies }
    }

    /// `sh -c SCRIPT` copying `t`'s fullchain and key into the copies
    /// directory, numbered by run, then appending a line to the log.
    pub fn argv(&self, t: &Target) -> Vec<String> {
        let fc = t.fullchain.as_ref().expect("target has a fullchain");
        let key = t.key.as_ref().expect("target has a key file");
        let log = sh_quote(self.log.to_str().unwrap());
        let dir = self.copies.to_str().unwrap();
        let script = format!(
            "set -e; touch {log}; n=$(wc -l < {log} | tr -d ' '); \
             cp {fc} {dir}/$n.fullchain.pem; cp {key} {dir}/$n.privkey.pem; echo x >> {log}",
            fc = sh_quote(fc.to_str().unwrap()),
            key = sh_quote(key.to_str().unwrap()),
            dir = sh_quote(dir),
        );
        vec!["sh".into(), "-c".into(), script]
    }

    /// `t` with this probe as its reload command.
    pub fn attach(&self, t: Target) -> Target {
        let argv = self.argv(&t);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        t.reload(&argv)
    }

    /// How many times the reload ran.
    pub fn count(&self) -> usize {
        log_lines(&self.log).len()
    }

    /// (fullchain, key) copies, in run order.
    pub fn copies(&self) -> Vec<(PathBuf, PathBuf)> {
        (0..self.count())
            .map(|n| {
                (
                    self.copies.join(format!("{n}.fullchain.pem")),
                    self.copies.join(format!("{n}.privkey.pem")),
                )
            })
            .collect()
    }

    /// Fingerprint of the leaf each reload saw, after checking that every
    /// copy is one of `allowed` (leaf, chain) with its matching key.
    #[track_caller]
    pub fn assert_copies_consistent(&self, allowed: &[&Leaf]) -> Vec<String> {
        let mut seen = Vec::new();
        for (i, (fc, key)) in self.copies().into_iter().enumerate() {
            let certs = read_certs(&fc);
            assert!(!certs.is_empty(), "reload #{i}: the fullchain was empty");
            let leaf = allowed
                .iter()
                .find(|l| l.der == certs[0])
                .unwrap_or_else(|| {
                    panic!(
                        "reload #{i}: the installed leaf {} is none of the expected ones",
                        sha256_hex(&certs[0])
                    )
                });
            assert_eq!(
                certs[1..].to_vec(),
                leaf.chain,
                "reload #{i}: wrong intermediates"
            );
            let blocks = read_pem(&key);
            assert_eq!(blocks.len(), 1, "reload #{i}: key file holds one block");
            assert_eq!(
                private_key_public_raw(&blocks[0].0, &blocks[0].1),
                leaf.public_key_raw(),
                "reload #{i}: the installed key does not match the installed leaf"
            );
            seen.push(leaf.fp());
        }
        seen
    }
}

pub use ports::free_port;

/// `GET path` over HTTP/1.1 on loopback: (status, body). `None` when the
/// connection fails (not listening yet).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(StdDuration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (size, after) = rest.split_once("\r\n")?;
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].strip_prefix("\r\n")?;
        }
        out
    } else {
        body.to_owned()
    };
    Some((status, body))
}

/// The value of the Prometheus sample named exactly `series` (name with
/// labels, e.g. `x{target="a"}`), if present.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A child process killed (by its handle) when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `sh` that writes its pid into `pidfile` once it traps HUP and
/// USR1, and appends `hup` / `usr1` to `log` on each.
pub fn signal_catcher(pidfile: &Path, log: &Path) -> KillOnDrop {
    fs::create_dir_all(pidfile.parent().unwrap()).unwrap();
    let script = format!(
        "trap 'echo hup >> {log}' HUP; trap 'echo usr1 >> {log}' USR1; \
         echo $$ > {tmp}; mv {tmp} {pid}; while :; do sleep 0.05; done",
        log = sh_quote(log.to_str().unwrap()),
        tmp = sh_quote(format!("{}.tmp", pidfile.display())),
        pid = sh_quote(pidfile.to_str().unwrap()),
    );
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A shell cannot trap a signal that was ignored when it started, and a
    // test run under `nohup` (or a CI runner doing the same) ignores HUP:
    // give the catcher the default dispositions.
    // SAFETY: between fork and exec the closure only calls sigaction, which
    // is async-signal-safe, and touches no memory of the parent.
    unsafe {
        use nix::sys::signal::{SigHandler, Signal, signal};
        use std::os::unix::process::CommandExt as _;
        sh.pre_exec(|| {
            for s in [Signal::SIGHUP, Signal::SIGUSR1] {
                signal(s, SigHandler::SigDfl).map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let guard = KillOnDrop(sh.spawn().expect("spawn sh"));
    wait_for(
        "the signal catcher to write its pid file",
        || pidfile.exists().then_some(()),
        String::new,
    );
    guard
}
