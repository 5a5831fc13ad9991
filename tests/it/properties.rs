//! Property tests (proptest): the acme.json reader and the PEM/certificate
//! readers never panic on any input, keep finding the valid entries of a
//! file whose other entries are broken, and round-trip PEM.
//!
//! They go through the public library API: `mxkeys::config::Config::parse`
//! for a configuration naming a temporary file, `mxkeys::source::read_all`
//! to read it, `Candidate::bundle` / `Bundle::verify` to build and check
//! what was found, and `mxkeys::cert::{parse_pem_certs, first_pem_cert,
//! PrivateKey, Leaf}` directly.
//!
//! Case count: 256 per property by default (proptest's default). Set
//! `PROPTEST_CASES` for more, e.g. a long fuzzing run:
//!
//! ```sh
//! PROPTEST_CASES=20000 cargo test --release --test it properties::
//! ```
//!
//! Failures are not persisted to `proptest-regressions/` (nothing is
//! written into the source tree); proptest prints the shrunk input.

use mxkeys_testsupport as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Ca, KeyFormat, KeyKind, LeafSpec, pem_block};
use mxkeys::cert::{self as mx, Bundle, PrivateKey};
use mxkeys::config::{Config, Host};
use mxkeys::source::{Persist, read_all};
use proptest::prelude::*;
use proptest::test_runner::Config as PtConfig;
use serde_json::{Map, Value, json};

const HOST: &str = "mail.example.com";

// ---------------------------------------------------------------------------
// Fixtures (made once per test binary)
// ---------------------------------------------------------------------------

/// Valid leaves of every key kind, issued by one test CA.
struct Material {
    leaves: Vec<common::Leaf>,
}

static MATERIAL: LazyLock<Material> = LazyLock::new(|| {
    let ca = Ca::new("props");
    let leaves = [
        KeyKind::P256,
        KeyKind::P384,
        KeyKind::Rsa2048,
        KeyKind::Ed25519,
    ]
    .into_iter()
    .map(|k| ca.issue(&LeafSpec::new(&[HOST, "smtp.example.com"]).kind(k)))
    .collect();
    Material { leaves }
});

fn good() -> &'static common::Leaf {
    &MATERIAL.leaves[0]
}

/// A valid v2 entry for `leaf`.
fn entry(leaf: &common::Leaf) -> Value {
    json!({
        "domain": {"main": HOST, "sans": []},
        "certificate": B64.encode(leaf.fullchain_pem()),
        "key": B64.encode(leaf.key_pem()),
    })
}

/// A valid acme.json with two resolvers.
fn valid_acme() -> Vec<u8> {
    let m = &*MATERIAL;
    serde_json::to_vec_pretty(&json!({
        "le": {"Account": {"Email": "a@example.com"}, "Certificates": [entry(&m.leaves[0]), entry(&m.leaves[1])]},
        "other": {"Account": null, "Certificates": [entry(&m.leaves[2])]},
    }))
    .unwrap()
}

/// A temporary directory with a configuration reading `acme.json` (Traefik)
/// and `cert.pem` + `key.pem` (files) there.
struct World {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    acme_config: Config,
    files_config: Config,
}

impl World {
    fn new() -> World {
        let tmp = tempfile::Builder::new()
            .prefix("mxkeys-prop-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let head = format!(
            "hostname = \"{HOST}\"\nstate_dir = {}\n",
            common::qp(&dir.join("state"))
        );
        let target = format!(
            "[[target]]\nname = \"t\"\nfullchain = {}\nkey = {}\n",
            common::qp(&dir.join("out/fullchain.pem")),
            common::qp(&dir.join("out/privkey.pem"))
        );
        let cfg = dir.join("mxkeys.toml");
        let acme_text = format!(
            "{head}\n{}\n{target}",
            common::src_traefik(&dir.join("acme.json"))
        );
        let files_text = format!(
            "{head}\n{}\n{target}",
            common::src_files(&dir.join("cert.pem"), &dir.join("key.pem"), None)
        );
        let host = Host::current();
        let acme_config = Config::parse(&cfg, &acme_text, &host).expect("acme config");
        let files_config = Config::parse(&cfg, &files_text, &host).expect("files config");
        World {
            _tmp: tmp,
            dir,
            acme_config,
            files_config,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Write `bytes` as acme.json and read it. Every candidate's bundle is
    /// built and verified too (neither may panic). Returns the harvest's
    /// candidates (as leaf DERs of the bundles that verify) and errors.
    fn read_acme(&self, bytes: &[u8]) -> Read {
        fs::write(self.path("acme.json"), bytes).unwrap();
        read(&self.acme_config)
    }

    fn read_files(&self, cert: &[u8], key: &[u8]) -> Read {
        fs::write(self.path("cert.pem"), cert).unwrap();
        fs::write(self.path("key.pem"), key).unwrap();
        read(&self.files_config)
    }
}

/// What a read found.
struct Read {
    /// (entry name, leaf DER) of every candidate whose bundle verifies.
    verified: Vec<(String, Vec<u8>)>,
    candidates: usize,
    errors: Vec<String>,
}

fn read(config: &Config) -> Read {
    let h = read_all(config, Persist::No);
    let mut verified = Vec::new();
    for c in &h.candidates {
        if let Ok(b) = c.bundle()
            && b.verify().is_ok()
        {
            verified.push((c.origin.entry.clone(), b.leaf_der().to_vec()));
        }
        // Output never panics either.
        if let Ok(b) = c.bundle() {
            let _ = (b.fullchain_pem(), b.combined_pem(), b.chain_pem());
        }
    }
    let errors: Vec<String> = h.errors.iter().map(ToString::to_string).collect();
    for e in &errors {
        assert!(!e.contains('\n'), "an error spans lines: {e:?}");
        assert!(
            e.starts_with("source "),
            "error does not name the source: {e:?}"
        );
    }
    Read {
        verified,
        candidates: h.candidates.len(),
        errors,
    }
}

fn config() -> PtConfig {
    PtConfig {
        failure_persistence: None,
        ..PtConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// Keys likely to mean something to the reader, and random ones.
fn arb_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "Certificates", "certificate", "Certificate", "key", "Key", "domain",
            "Domain", "main", "Main", "sans", "Account", "Store", "HTTPChallenges",
        ])
        .prop_map(str::to_owned),
        1 => "[a-zA-Z_]{1,8}",
        1 => any::<String>(),
    ]
}

/// Strings the reader decodes: valid base64 of PEM, of a key, of garbage,
/// truncated base64, and anything.
fn arb_b64ish() -> impl Strategy<Value = String> {
    let m = &*MATERIAL;
    let full = B64.encode(m.leaves[1].fullchain_pem());
    let key = B64.encode(m.leaves[1].key_pem());
    prop_oneof![
        Just(full.clone()),
        Just(key.clone()),
        (0..full.len()).prop_map(move |n| full[..n].to_owned()),
        (0..key.len()).prop_map(move |n| key[..n].to_owned()),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| B64.encode(b)),
        "[A-Za-z0-9+/=]{0,64}",
        any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        arb_b64ish().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((arb_key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A field value: absent (None), plausible, or any JSON.
fn arb_field(plausible: BoxedStrategy<Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        3 => plausible.prop_map(Some),
        2 => arb_json().prop_map(Some),
    ]
}

/// An entry of `Certificates`, each field independently absent, plausible
/// or of a random type; sometimes not an object at all.
fn arb_entry() -> impl Strategy<Value = Value> {
    let obj = (
        arb_field(
            prop_oneof![
                Just(json!({"main": HOST})),
                Just(json!({"Main": HOST, "SANs": null})),
                arb_json(),
            ]
            .boxed(),
        ),
        arb_field(arb_b64ish().prop_map(Value::String).boxed()),
        arb_field(arb_b64ish().prop_map(Value::String).boxed()),
        arb_field(arb_json().boxed()),
        any::<bool>(),
    )
        .prop_map(|(domain, cert, key, store, upper)| {
            let mut m = Map::new();
            let names = if upper {
                ["Domain", "Certificate", "Key"]
            } else {
                ["domain", "certificate", "key"]
            };
            for (k, v) in names.into_iter().zip([domain, cert, key]) {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            if let Some(s) = store {
                m.insert("Store".to_owned(), s);
            }
            Value::Object(m)
        });
    prop_oneof![4 => obj, 1 => arb_json()]
}

/// A resolver value: usually `{"Account", "Certificates": [entries]}`,
/// sometimes anything.
fn arb_resolver() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => (arb_json(), prop_oneof![
            4 => prop::collection::vec(arb_entry(), 0..5).prop_map(Value::Array),
            1 => arb_json(),
        ])
            .prop_map(|(account, certs)| json!({"Account": account, "Certificates": certs})),
        1 => arb_json(),
    ]
}

/// An acme.json with random resolvers (and maybe a v1 `Certificates`
/// beside them) plus a resolver `good` whose entries are broken except one
/// valid entry for `good()` at a random position. Returns (file, position).
fn arb_acme_with_good() -> impl Strategy<Value = (Value, usize)> {
    (
        prop::collection::vec((arb_key(), arb_resolver()), 0..4),
        prop::collection::vec(arb_entry(), 0..6),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(others, mut broken, at)| {
            let pos = at.index(broken.len() + 1);
            broken.insert(pos, entry(good()));
            let mut top = Map::new();
            for (k, v) in others {
                if k != "good" {
                    top.insert(k, v);
                }
            }
            top.insert(
                "good".to_owned(),
                json!({"Account": {}, "Certificates": broken}),
            );
            (Value::Object(top), pos)
        })
}

/// A PEM text laid out differently: line width, CRLF, text around blocks,
/// trailing whitespace.
fn relayout(
    label: &str,
    der: &[u8],
    width: usize,
    crlf: bool,
    before: &str,
    after: &str,
) -> String {
    let nl = if crlf { "\r\n" } else { "\n" };
    let b = B64.encode(der);
    let mut out = String::from(before);
    out.push_str(&format!("-----BEGIN {label}-----{nl}"));
    for chunk in b.as_bytes().chunks(width) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str(nl);
    }
    out.push_str(&format!("-----END {label}-----{nl}"));
    out.push_str(after);
    out
}

fn flip(mut bytes: Vec<u8>, flips: &[(prop::sample::Index, u8)]) -> Vec<u8> {
    if bytes.is_empty() {
        return bytes;
    }
    for (i, bit) in flips {
        let at = i.index(bytes.len());
        bytes[at] ^= 1 << (bit % 8);
    }
    bytes
}

// ---------------------------------------------------------------------------
// acme.json
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Any bytes as acme.json: no panic; errors are one line naming the
    /// source; a file that yields candidates yields only verified ones or
    /// errors for the others.
    #[test]
    fn acme_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let w = World::new();
        let r = w.read_acme(&bytes);
        // Random bytes are never a certificate.
        prop_assert!(r.verified.is_empty());
    }

    /// Any JSON value as the whole file: no panic.
    #[test]
    fn acme_arbitrary_json(v in arb_json()) {
        let w = World::new();
        w.read_acme(&serde_json::to_vec(&v).unwrap());
    }

    /// Broken entries of every shape around one valid entry: the valid
    /// entry is still found, verified, and named by its position; every
    /// other entry either is a candidate or has an error.
    #[test]
    fn acme_valid_entry_found_among_broken((file, pos) in arb_acme_with_good()) {
        let w = World::new();
        let r = w.read_acme(&serde_json::to_vec_pretty(&file).unwrap());
        let want = format!("resolver \"good\" #{}", pos + 1);
        prop_assert!(
            r.verified.iter().any(|(e, der)| e.starts_with(&want) && *der == good().der),
            "the valid entry {want} was not found; errors: {:?}", r.errors
        );
    }

    /// A valid file cut anywhere: no panic; a cut before the closing brace
    /// is an error and yields no candidate.
    #[test]
    fn acme_truncated(at in any::<prop::sample::Index>()) {
        let w = World::new();
        let full = valid_acme();
        let cut = at.index(full.len());
        let r = w.read_acme(&full[..cut]);
        prop_assert_eq!(r.candidates, 0);
        prop_assert!(!r.errors.is_empty());
    }

    /// A valid file with a few flipped bits: no panic; whatever verifies
    /// is byte for byte one of the file's certificates: no flip can forge
    /// names, keys, dates or signatures. (Flips that damaged an
    /// intermediate's BEGIN line used to drop it from the chain unnoticed,
    /// and a flipped leaf then went unchecked: see `cert::check_armor`.)
    #[test]
    fn acme_bit_flips(flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let w = World::new();
        let r = w.read_acme(&flip(valid_acme(), &flips));
        let m = &*MATERIAL;
        for (entry, der) in &r.verified {
            prop_assert!(
                m.leaves[..3].iter().any(|l| &l.der == der),
                "{entry}: a verified leaf that is not in the file"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// PEM and certificates
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Arbitrary bytes into every parser: no panic.
    #[test]
    fn parsers_take_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = mx::parse_pem_certs(&bytes);
        let _ = mx::first_pem_cert(&bytes);
        let _ = PrivateKey::from_pem(&bytes);
        let _ = mx::Leaf::parse(&bytes);
    }

    /// Arbitrary bytes inside PEM armour: no panic, and a certificate that
    /// parses as PEM but not as X.509 is refused by Leaf::parse.
    #[test]
    fn armoured_garbage(
        body in prop::collection::vec(any::<u8>(), 0..512),
        label in prop::sample::select(vec!["CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "X"]),
    ) {
        let pem = pem_block(label, &body);
        if let Ok(certs) = mx::parse_pem_certs(pem.as_bytes()) {
            for c in certs {
                let _ = mx::Leaf::parse(c.as_ref());
            }
        }
        if let Ok(key) = PrivateKey::from_pem(pem.as_bytes()) {
            // A key that parses can be paired with a real certificate and
            // checked: no panic, and random bytes never match.
            let b = Bundle {
                certs: vec![good().der.clone().into()],
                key,
            };
            prop_assert!(b.verify().is_err());
        }
    }

    /// The DER of a real certificate with bits flipped or cut short:
    /// Leaf::parse and Bundle::verify never panic.
    #[test]
    fn mutated_certificate_der(
        which in 0usize..4,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let leaf = &MATERIAL.leaves[which];
        let mut der = flip(leaf.der.clone(), &flips);
        der.truncate(cut.index(der.len() + 1).max(1));
        let _ = mx::Leaf::parse(&der);
        let key = PrivateKey::from_pem(leaf.key_pem().as_bytes()).unwrap();
        let b = Bundle {
            certs: vec![der.into(), leaf.chain[0].clone().into()],
            key,
        };
        let _ = b.verify();
    }

    /// Bit flips anywhere in a real fullchain or key PEM text: no panic.
    #[test]
    fn mutated_pem_text(
        which in 0usize..4,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let leaf = &MATERIAL.leaves[which];
        let chain = flip(leaf.fullchain_pem().into_bytes(), &flips);
        if let Ok(certs) = mx::parse_pem_certs(&chain) {
            for c in &certs {
                let _ = mx::Leaf::parse(c.as_ref());
            }
        }
        let key = flip(leaf.key_pem().into_bytes(), &flips);
        let _ = PrivateKey::from_pem(&key);
    }

    /// PEM round trips: a chain and a key in any layout (line width, CRLF,
    /// text around the blocks) parse to the same DER; a key read back from
    /// its own PEM output is the same key; the bundle verifies, and its
    /// fullchain and combined PEM parse back to the same certificates.
    #[test]
    fn pem_round_trips(
        which in 0usize..4,
        fmt in 0usize..3,
        width in 1usize..=96,
        crlf in any::<bool>(),
        before in "[ -~]{0,40}",
        after in "[ -~]{0,40}",
    ) {
        // Text before a block must not look like PEM armour itself.
        prop_assume!(!before.contains("-----") && !after.contains("-----"));
        let leaf = &MATERIAL.leaves[which];
        let chain: String = std::iter::once(&leaf.der)
            .chain(&leaf.chain)
            .map(|d| relayout("CERTIFICATE", d, width, crlf, &format!("{before}\n"), &format!("{after}\n")))
            .collect();
        let certs = mx::parse_pem_certs(chain.as_bytes()).unwrap();
        let ders: Vec<&[u8]> = certs.iter().map(|c| c.as_ref()).collect();
        prop_assert_eq!(ders, vec![leaf.der.as_slice(), leaf.chain[0].as_slice()]);
        let first = mx::first_pem_cert(chain.as_bytes()).unwrap();
        prop_assert_eq!(first.as_ref(), leaf.der.as_slice());

        let fmt = match (fmt, leaf.kind) {
            (1, KeyKind::P256 | KeyKind::P384) => KeyFormat::Sec1,
            (2, KeyKind::Rsa2048) => KeyFormat::Pkcs1,
            _ => KeyFormat::Pkcs8,
        };
        let canonical = leaf.key_pem_as(fmt);
        let (label, der) = common::pem_blocks(&canonical).remove(0);
        let key_text = relayout(&label, &der, width, crlf, &format!("{before}\n"), &after);
        let key = PrivateKey::from_pem(key_text.as_bytes()).unwrap();
        let out = key.to_pem().as_str().to_owned();
        let again = PrivateKey::from_pem(out.as_bytes()).unwrap().to_pem().as_str().to_owned();
        prop_assert_eq!(&out, &again);
        prop_assert_eq!(&out, &canonical);

        let b = Bundle { certs, key };
        prop_assert!(b.verify().is_ok(), "{:?}", b.verify());
        let back = mx::parse_pem_certs(b.fullchain_pem().as_bytes()).unwrap();
        prop_assert_eq!(&back, &b.certs);
        let combined = b.combined_pem();
        prop_assert_eq!(&mx::parse_pem_certs(combined.as_bytes()).unwrap(), &b.certs);
        let combined_key = PrivateKey::from_pem(combined.as_bytes()).unwrap().to_pem().as_str().to_owned();
        prop_assert_eq!(&combined_key, &canonical);
    }

    /// The files source (the PEM bundle reader used for Certbot, lego and
    /// plain files) with arbitrary or mutated files: no panic; a valid
    /// certificate with a garbage key, or the reverse, is an error.
    #[test]
    fn files_source_mutations(
        flips_c in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        flips_k in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        junk in prop::collection::vec(any::<u8>(), 0..256),
        mode in 0u8..3,
    ) {
        let w = World::new();
        let leaf = good();
        let (cert, key) = match mode {
            0 => (flip(leaf.fullchain_pem().into_bytes(), &flips_c), flip(leaf.key_pem().into_bytes(), &flips_k)),
            1 => (leaf.fullchain_pem().into_bytes(), junk.clone()),
            _ => (junk.clone(), leaf.key_pem().into_bytes()),
        };
        let r = w.read_files(&cert, &key);
        if mode != 0 {
            prop_assert!(r.verified.is_empty());
            // Junk may happen to be whitespace only ("empty file") or not:
            // either way one error names the broken file.
            prop_assert!(!r.errors.is_empty(), "no error for junk {:?}", junk);
        } else if flips_c.is_empty() && flips_k.is_empty() {
            prop_assert_eq!(r.verified.len(), 1);
        }
    }

    /// `mxkeys::source::acme::read_bundle` (one file: key, leaf, chain)
    /// with arbitrary bytes spliced into a valid bundle: no panic.
    #[test]
    fn acme_bundle_file_mutations(
        junk in prop::collection::vec(any::<u8>(), 0..256),
        at in any::<prop::sample::Index>(),
    ) {
        let w = World::new();
        let leaf = good();
        let mut text = format!("{}{}", leaf.key_pem(), leaf.fullchain_pem()).into_bytes();
        let pos = at.index(text.len() + 1);
        text.splice(pos..pos, junk);
        let p = w.path("bundle.pem");
        fs::write(&p, &text).unwrap();
        let _ = mxkeys::source::acme::read_bundle(Path::new(&p));
    }

    /// Configuration text of any shape: Config::parse never panics (its
    /// error excerpt slices the text at the error's position).
    #[test]
    fn config_parse_any_text(
        text in prop_oneof![
            any::<String>(),
            prop::collection::vec(prop_oneof![
                Just("[[source]]\n".to_owned()),
                Just("[[target]]\n".to_owned()),
                Just("type = \"files\"\n".to_owned()),
                Just("name = \"é\"\n".to_owned()),
                Just("domains = [\"mail.example.com\"]\n".to_owned()),
                "[a-zé☃_]{1,6} = [\"0-9a-zé]{0,6}\n",
                "[^\n]{0,12}\n",
            ], 0..8).prop_map(|parts| parts.concat()),
        ],
    ) {
        let _ = Config::parse(Path::new("/nonexistent/mxkeys.toml"), &text, &Host::current());
    }
}

/// Exhaustive, not random: every single-bit flip of a real leaf's DER. A
/// corrupted leaf must never pass `Bundle::verify` (it would be installed,
/// and TLS clients refuse it). The random `acme_bit_flips` property finds
/// these only occasionally; this finds them every time.
#[test]
fn verify_refuses_every_single_bit_flip_of_a_leaf() {
    let mut accepted = Vec::new();
    for leaf in &MATERIAL.leaves {
        for i in 0..leaf.der.len() {
            for bit in 0..8 {
                let mut der = leaf.der.clone();
                der[i] ^= 1 << bit;
                let key = PrivateKey::from_pem(leaf.key_pem().as_bytes()).unwrap();
                let b = Bundle {
                    certs: vec![der.into(), leaf.chain[0].clone().into()],
                    key,
                };
                if b.verify().is_ok() {
                    accepted.push(format!("{:?} byte {i} bit {bit}", leaf.kind));
                }
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "{} corrupted leaves passed Bundle::verify, e.g. {:?}",
        accepted.len(),
        &accepted[..accepted.len().min(8)]
    );
}
