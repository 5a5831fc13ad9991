//! A generator for Traefik v2/v3 `acme.json` files shaped like a large
//! real deployment: one ACME resolver (`le`) with an account and `count`
//! certificate entries, each an ECDSA P-256 leaf issued by one intermediate
//! (ECDSA P-384, like Let's Encrypt's E5..E9) under one root, stored the way
//! Traefik stores them: `certificate` is the base64 of the PEM full chain
//! (leaf then intermediate), `key` the base64 of the PEM private key
//! (SEC1 `EC PRIVATE KEY` as lego writes it, or PKCS#8).
//!
//! The target name appears in a few entries: expired duplicates, an older
//! still-valid one, and one newest valid entry (the one a correct selector
//! must pick). Every other entry has a distinct name. Validity is computed
//! from the current time, so nothing in the file expires soon after it is
//! generated.

use std::error::Error;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rayon::prelude::*;
use rcgen::{
    BasicConstraints, CertificateParams, CrlDistributionPoint, CustomExtension, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, RsaKeySize, SerialNumber,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::der;

pub type BoxError = Box<dyn Error + Send + Sync>;

const PRIME256V1: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_AIA: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 1, 1];
const OID_AD_OCSP: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 1];
const OID_AD_CA_ISSUERS: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 48, 2];
const OID_CERT_POLICIES: &[u64] = &[2, 5, 29, 32];
const OID_CABF_DOMAIN_VALIDATED: &[u64] = &[2, 23, 140, 1, 2, 1];
const OID_SCT_LIST: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 4, 2];

/// How the per-certificate private key is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFormat {
    /// `-----BEGIN EC PRIVATE KEY-----` (SEC1), what Traefik/lego store for ECDSA keys.
    Sec1,
    /// `-----BEGIN PRIVATE KEY-----` (PKCS#8).
    Pkcs8,
}

impl std::str::FromStr for KeyFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sec1" => Ok(Self::Sec1),
            "pkcs8" => Ok(Self::Pkcs8),
            other => Err(format!("unknown key format {other:?} (sec1 or pkcs8)")),
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Number of certificate entries, target entries included.
    pub count: usize,
    /// The name the benchmark's `[[target]]` asks for.
    pub target: String,
    /// Private key encoding of the entries.
    pub key_format: KeyFormat,
    /// Signed certificate timestamps embedded in each leaf. Let's Encrypt
    /// leaves carry two (about +480 bytes per entry once PEM- and
    /// base64-encoded); the default 0 keeps 10,000 entries near the 33 MB
    /// the benchmark is specified for.
    pub scts: usize,
    /// Seed of the filler bytes (serials, SCT log ids and signatures);
    /// keys are always fresh.
    pub seed: u64,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            count: 10_000,
            target: "mail.example.com".to_owned(),
            key_format: KeyFormat::Sec1,
            scts: 0,
            seed: 0x6d78_6b65_7973,
        }
    }
}

/// The role of an entry that carries the target name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetRole {
    /// Expired long ago.
    ExpiredOld,
    /// Expired recently.
    Expired,
    /// Valid, but an older issuance than the newest one.
    OlderValid,
    /// Valid and newest: the entry a selector must choose.
    NewestValid,
}

impl fmt::Display for TargetRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ExpiredOld => "expired (old)",
            Self::Expired => "expired",
            Self::OlderValid => "valid, older",
            Self::NewestValid => "valid, newest",
        })
    }
}

/// Where the target entries went and what they are.
#[derive(Clone, Debug)]
pub struct TargetEntry {
    pub index: usize,
    pub role: TargetRole,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// What [`generate`] produced.
#[derive(Debug)]
pub struct Summary {
    pub count: usize,
    pub bytes: u64,
    pub target_entries: Vec<TargetEntry>,
}

// ---------------------------------------------------------------------------
// acme.json shape (field names and order as Traefik's encoding/json writes them)

#[derive(Serialize)]
struct Resolvers<'a> {
    le: Resolver<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Resolver<'a> {
    account: Account<'a>,
    certificates: &'a [Entry],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Account<'a> {
    email: &'a str,
    registration: Registration<'a>,
    private_key: String,
    key_type: &'static str,
}

#[derive(Serialize)]
struct Registration<'a> {
    body: RegistrationBody,
    uri: &'a str,
}

#[derive(Serialize)]
struct RegistrationBody {
    status: &'static str,
    contact: Vec<String>,
    #[serde(rename = "termsOfServiceAgreed")]
    terms_of_service_agreed: bool,
}

#[derive(Serialize)]
struct Entry {
    domain: Domain,
    certificate: String,
    key: String,
    #[serde(rename = "Store")]
    store: &'static str,
}

#[derive(Serialize)]
struct Domain {
    main: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    sans: Vec<String>,
}

// ---------------------------------------------------------------------------
// Small deterministic filler source (SCT log ids, timestamps, signatures).

struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64, stream: u64) -> Self {
        let mut s = Self(seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        s.next_u64();
        s
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_be_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut b = [0u8; N];
        self.fill(&mut b);
        b
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

// ---------------------------------------------------------------------------
// Extensions rcgen does not have a field for.

fn access_description(method: &[u64], uri: &str) -> Vec<u8> {
    // GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
    der::seq(&[&der::oid(method), &der::tlv(0x86, uri.as_bytes())])
}

fn aia(ocsp: Option<&str>, ca_issuers: &str) -> CustomExtension {
    let mut parts = Vec::new();
    if let Some(ocsp) = ocsp {
        parts.push(access_description(OID_AD_OCSP, ocsp));
    }
    parts.push(access_description(OID_AD_CA_ISSUERS, ca_issuers));
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    CustomExtension::from_oid_content(OID_AIA, der::seq(&refs))
}

fn domain_validated_policy() -> CustomExtension {
    let policy = der::seq(&[&der::oid(OID_CABF_DOMAIN_VALIDATED)]);
    CustomExtension::from_oid_content(OID_CERT_POLICIES, der::seq(&[&policy]))
}

/// An RFC 6962 SignedCertificateTimestampList with `n` version-1 SCTs whose
/// log ids and ECDSA signatures are filler of the real sizes.
fn sct_list(rng: &mut SplitMix, n: usize, issued_ms: u64) -> CustomExtension {
    let mut list = Vec::new();
    for _ in 0..n {
        let mut sct = Vec::with_capacity(120);
        sct.push(0); // v1
        sct.extend_from_slice(&rng.bytes::<32>()); // log id
        sct.extend_from_slice(&(issued_ms + rng.below(2_000)).to_be_bytes());
        sct.extend_from_slice(&[0, 0]); // no extensions
        sct.extend_from_slice(&[4, 3]); // sha256, ecdsa
        let r = der::uint(&rng.bytes::<32>());
        let s = der::uint(&rng.bytes::<32>());
        let sig = der::seq(&[&r, &s]);
        sct.extend_from_slice(&(sig.len() as u16).to_be_bytes());
        sct.extend_from_slice(&sig);
        list.extend_from_slice(&(sct.len() as u16).to_be_bytes());
        list.extend_from_slice(&sct);
    }
    let mut tls = Vec::with_capacity(list.len() + 2);
    tls.extend_from_slice(&(list.len() as u16).to_be_bytes());
    tls.extend_from_slice(&list);
    CustomExtension::from_oid_content(OID_SCT_LIST, der::tlv(der::tag::OCTET_STRING, &tls))
}

fn printable(s: &str) -> Result<DnValue, BoxError> {
    Ok(DnValue::PrintableString(s.try_into()?))
}

// ---------------------------------------------------------------------------
// PEM helpers (64-column lines, LF, as Go's encoding/pem writes them).

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

fn key_pem(key: &KeyPair, format: KeyFormat) -> Result<String, BoxError> {
    match format {
        KeyFormat::Pkcs8 => Ok(pem("PRIVATE KEY", key.serialized_der())),
        KeyFormat::Sec1 => {
            let inner = der::pkcs8_inner_key(key.serialized_der()).ok_or("bad PKCS#8")?;
            let d = der::sec1_private_scalar(inner).ok_or("bad SEC1 key in PKCS#8")?;
            let sec1 = der::sec1_private_key(d, PRIME256V1, key.public_key_raw());
            Ok(pem("EC PRIVATE KEY", &sec1))
        }
    }
}

// ---------------------------------------------------------------------------
// The PKI.

struct Pki {
    intermediate: Issuer<'static, KeyPair>,
    intermediate_pem: String,
}

fn build_pki(now: OffsetDateTime) -> Result<Pki, BoxError> {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let mut root = CertificateParams::default();
    root.distinguished_name = rcgen::DistinguishedName::new();
    root.distinguished_name
        .push(DnType::CountryName, printable("US")?);
    root.distinguished_name.push(
        DnType::OrganizationName,
        printable("mxkeys Benchmark Security Research Group")?,
    );
    root.distinguished_name
        .push(DnType::CommonName, printable("mxkeys Bench Root X2")?);
    root.not_before = now - Duration::days(3 * 365);
    root.not_after = now + Duration::days(20 * 365);
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    root.serial_number = Some(SerialNumber::from_slice(&[
        0x41, 0xd2, 0x9d, 0xd1, 0x72, 0xea, 0xee, 0xa7, 0x80, 0xc1, 0x2c, 0x6c, 0xe9, 0x2f, 0x87,
        0x52,
    ]));
    let root_issuer = Issuer::new(root, root_key);

    let int_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)?;
    let mut int = CertificateParams::default();
    int.distinguished_name = rcgen::DistinguishedName::new();
    int.distinguished_name
        .push(DnType::CountryName, printable("US")?);
    int.distinguished_name
        .push(DnType::OrganizationName, printable("mxkeys Bench Encrypt")?);
    int.distinguished_name
        .push(DnType::CommonName, printable("B5")?);
    int.not_before = now - Duration::days(400);
    int.not_after = now + Duration::days(700);
    int.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    int.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    int.use_authority_key_identifier_extension = true;
    int.serial_number = Some(SerialNumber::from_slice(&[
        0x00, 0x84, 0x0d, 0x2e, 0x48, 0x3e, 0x21, 0x8c, 0x7c, 0x2e, 0x29, 0x16, 0x2d, 0x12, 0xb9,
        0x3b, 0x1e,
    ]));
    int.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec!["http://x2.c.bench-encrypt.example/".to_owned()],
    }];
    int.custom_extensions = vec![
        aia(None, "http://x2.i.bench-encrypt.example/"),
        domain_validated_policy(),
    ];
    let int_cert = int.signed_by(&int_key, &root_issuer)?;
    Ok(Pki {
        intermediate: Issuer::new(int, int_key),
        intermediate_pem: pem("CERTIFICATE", int_cert.der()),
    })
}

struct LeafSpec<'a> {
    names: &'a [String],
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    crl_shard: u64,
    scts: usize,
}

fn leaf_entry(
    pki: &Pki,
    spec: &LeafSpec<'_>,
    key_format: KeyFormat,
    rng: &mut SplitMix,
) -> Result<Entry, BoxError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(spec.names.to_vec())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, printable(&spec.names[0])?);
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    // 18 random bytes, like Let's Encrypt serials.
    let mut serial = rng.bytes::<18>();
    serial[0] = (serial[0] & 0x7f) | 0x03;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.crl_distribution_points = vec![CrlDistributionPoint {
        uris: vec![format!(
            "http://b5.c.bench-encrypt.example/{}.crl",
            spec.crl_shard
        )],
    }];
    let issued_ms = (spec.not_before.unix_timestamp() as u64) * 1000;
    // Current Let's Encrypt leaves: no OCSP URL, a CRL shard, CA issuers.
    params.custom_extensions = vec![
        aia(None, "http://b5.i.bench-encrypt.example/"),
        domain_validated_policy(),
    ];
    if spec.scts > 0 {
        params
            .custom_extensions
            .push(sct_list(rng, spec.scts, issued_ms));
    }
    let cert = params.signed_by(&key, &pki.intermediate)?;

    let mut chain = pem("CERTIFICATE", cert.der());
    chain.push('\n'); // lego separates the bundle's PEM blocks with a blank line
    chain.push_str(&pki.intermediate_pem);
    Ok(Entry {
        domain: Domain {
            main: spec.names[0].clone(),
            sans: spec.names[1..].to_vec(),
        },
        certificate: B64.encode(chain.as_bytes()),
        key: B64.encode(key_pem(&key, key_format)?.as_bytes()),
        store: "default",
    })
}

/// Positions and roles of the target entries: up to four, spread across the
/// list, the newest valid one always present and placed last among them.
pub fn target_layout(count: usize) -> Vec<(usize, TargetRole)> {
    let roles = [
        TargetRole::ExpiredOld,
        TargetRole::Expired,
        TargetRole::OlderValid,
        TargetRole::NewestValid,
    ];
    let k = count.min(roles.len());
    let roles = &roles[roles.len() - k..];
    roles
        .iter()
        .enumerate()
        .map(|(j, role)| ((2 * j + 1) * count / (2 * k), *role))
        .collect()
}

/// The sibling names a certificate for `target` also covers (Traefik's
/// `sans`): `mta-sts.<parent>` when the target has a parent domain.
fn target_names(target: &str) -> Vec<String> {
    let mut names = vec![target.to_owned()];
    if let Some((_, parent)) = target.split_once('.')
        && parent.contains('.')
    {
        names.push(format!("mta-sts.{parent}"));
    }
    names
}

/// Distinct, realistic-looking names for filler entry `i`: a host of one of
/// a few hundred customer domains, half of them with a `www.` alias.
fn filler_names(i: usize) -> Vec<String> {
    const TLDS: [&str; 5] = ["com", "net", "org", "io", "de"];
    const HOSTS: [&str; 6] = ["mx", "mail", "smtp", "imap", "app", "web"];
    let domain = format!("customer{:03}.example-{}.{}", i % 397, i % 7, TLDS[i % 5]);
    let main = format!("{}{}.{}", HOSTS[i % 6], i, domain);
    if i.is_multiple_of(2) {
        vec![main.clone(), format!("www.{main}")]
    } else {
        vec![main]
    }
}

fn validity(
    role: Option<TargetRole>,
    now: OffsetDateTime,
    rng: &mut SplitMix,
) -> (OffsetDateTime, OffsetDateTime) {
    let lifetime = Duration::days(90) - Duration::seconds(1);
    let not_before = match role {
        Some(TargetRole::ExpiredOld) => now - Duration::days(200),
        Some(TargetRole::Expired) => now - Duration::days(120),
        Some(TargetRole::OlderValid) => now - Duration::days(30),
        Some(TargetRole::NewestValid) => now - Duration::hours(1),
        // Issued 1..=29 days ago: at least 60 days left.
        None => {
            now - Duration::days(1 + rng.below(29) as i64)
                - Duration::seconds(1 + rng.below(86_000) as i64)
        }
    };
    (not_before, not_before + lifetime)
}

/// Generates the acme.json into `out`; returns what it wrote.
pub fn generate(spec: &Spec, out: &mut impl Write) -> Result<Summary, BoxError> {
    if spec.count == 0 {
        return Err("count must be at least 1".into());
    }
    // Whole seconds: X.509 times have no fractions.
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;

    // The RSA-4096 account key takes a while; make it alongside the certificates.
    let (account_key, entries) = rayon::join(
        || -> Result<Vec<u8>, BoxError> {
            let kp = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_4096)?;
            let pkcs1 = der::pkcs8_inner_key(kp.serialized_der()).ok_or("bad RSA PKCS#8")?;
            Ok(pkcs1.to_vec())
        },
        || -> Result<(Vec<Entry>, Vec<TargetEntry>), BoxError> {
            let pki = build_pki(now)?;
            let layout = target_layout(spec.count);
            let tnames = target_names(&spec.target);
            let results: Vec<Result<(Entry, Option<TargetEntry>), BoxError>> = (0..spec.count)
                .into_par_iter()
                .map(|i| {
                    let mut rng = SplitMix::new(spec.seed, i as u64);
                    let role = layout.iter().find(|(p, _)| *p == i).map(|(_, r)| *r);
                    let owned;
                    let names: &[String] = if role.is_some() {
                        &tnames
                    } else {
                        owned = filler_names(i);
                        &owned
                    };
                    let (not_before, not_after) = validity(role, now, &mut rng);
                    let leaf = LeafSpec {
                        names,
                        not_before,
                        not_after,
                        crl_shard: rng.below(128),
                        scts: spec.scts,
                    };
                    let entry = leaf_entry(&pki, &leaf, spec.key_format, &mut rng)?;
                    let target = role.map(|role| TargetEntry {
                        index: i,
                        role,
                        not_before,
                        not_after,
                    });
                    Ok((entry, target))
                })
                .collect();
            let mut entries = Vec::with_capacity(spec.count);
            let mut targets = Vec::new();
            for r in results {
                let (e, t) = r?;
                entries.push(e);
                targets.extend(t);
            }
            Ok((entries, targets))
        },
    );
    let account_key = account_key?;
    let (entries, target_entries) = entries?;

    let email = format!(
        "postmaster@{}",
        spec.target
            .split_once('.')
            .map_or(&*spec.target, |(_, p)| p)
    );
    let doc = Resolvers {
        le: Resolver {
            account: Account {
                email: &email,
                registration: Registration {
                    body: RegistrationBody {
                        status: "valid",
                        contact: vec![format!("mailto:{email}")],
                        terms_of_service_agreed: true,
                    },
                    uri: "https://acme.bench-encrypt.example/acme/acct/1838217486",
                },
                private_key: B64.encode(&account_key),
                key_type: "4096",
            },
            certificates: &entries,
        },
    };
    let mut counter = CountingWriter { inner: out, n: 0 };
    // Traefik writes the file with json.MarshalIndent(data, "", "  ").
    serde_json::to_writer_pretty(&mut counter, &doc)?;
    counter.flush()?;
    Ok(Summary {
        count: spec.count,
        bytes: counter.n,
        target_entries,
    })
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Paths of the mxkeys working directory the generated config points at.
#[derive(Debug)]
pub struct ConfigPaths {
    pub config: PathBuf,
    pub work_dir: PathBuf,
}

fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Writes `mxkeys.toml` next to `acme_json`: one `traefik` source on it,
/// `state_dir` and the target's output files inside `<stem>.mxkeys/`
/// (created, empty) in the same directory. Paths are relative to the
/// config file, which mxkeys resolves against the config's directory.
pub fn write_config(acme_json: &Path, target: &str) -> Result<ConfigPaths, BoxError> {
    let dir = acme_json
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = acme_json
        .file_name()
        .ok_or("output path has no file name")?
        .to_str()
        .ok_or("output file name is not UTF-8")?;
    let stem = acme_json
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("acme");
    let work = format!("{stem}.mxkeys");
    let work_dir = dir.join(&work);
    std::fs::create_dir_all(work_dir.join("state"))?;
    std::fs::create_dir_all(work_dir.join("out"))?;
    let config = dir.join("mxkeys.toml");
    let text = format!(
        "# Written by gen-acme-json (mxkeys-bench): `mxkeys --config <this> check`\n\
         hostname = {host}\n\
         state_dir = {state}\n\
         \n\
         [[source]]\n\
         type = \"traefik\"\n\
         path = {path}\n\
         \n\
         [[target]]\n\
         name = \"bench\"\n\
         domains = [{host}]\n\
         fullchain = {fullchain}\n\
         key = {key}\n",
        host = toml_str(target),
        state = toml_str(&format!("{work}/state")),
        path = toml_str(file_name),
        fullchain = toml_str(&format!("{work}/out/fullchain.pem")),
        key = toml_str(&format!("{work}/out/privkey.pem")),
    );
    std::fs::write(&config, text)?;
    Ok(ConfigPaths { config, work_dir })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_spreads_targets_and_ends_with_newest() {
        let l = target_layout(10_000);
        assert_eq!(l.len(), 4);
        assert_eq!(l.last().unwrap().1, TargetRole::NewestValid);
        assert!(l.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(target_layout(1), vec![(0, TargetRole::NewestValid)]);
        let two = target_layout(2);
        assert_eq!(
            two,
            vec![(0, TargetRole::OlderValid), (1, TargetRole::NewestValid)]
        );
    }

    #[test]
    fn small_file_parses_and_holds_the_target() {
        let spec = Spec {
            count: 12,
            ..Spec::default()
        };
        let mut buf = Vec::new();
        let summary = generate(&spec, &mut buf).unwrap();
        assert_eq!(summary.bytes as usize, buf.len());
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let certs = v["le"]["Certificates"].as_array().unwrap();
        assert_eq!(certs.len(), 12);
        let mains: Vec<&str> = certs
            .iter()
            .map(|c| c["domain"]["main"].as_str().unwrap())
            .collect();
        assert_eq!(
            mains.iter().filter(|m| **m == "mail.example.com").count(),
            4
        );
        let mut distinct = mains.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 12 - 3);
        for c in certs {
            let chain = B64.decode(c["certificate"].as_str().unwrap()).unwrap();
            let chain = String::from_utf8(chain).unwrap();
            assert_eq!(chain.matches("-----BEGIN CERTIFICATE-----").count(), 2);
            let key = String::from_utf8(B64.decode(c["key"].as_str().unwrap()).unwrap()).unwrap();
            assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
            assert_eq!(c["Store"], "default");
        }
        assert!(v["le"]["Account"]["PrivateKey"].as_str().unwrap().len() > 2000);
    }
}
