//! Property tests (proptest): the acme.json reader and the PEM/certificate
//! readers never panic on any input, keep finding the valid entries of a
//! file whose other entries are broken, and round-trip PEM; the streaming
//! and the whole-file acme.json readers give the same harvest and the same
//! selection for any file and any window.
//!
//! They go through the public library API: `mxkeys::config::Config::parse`
//! for a configuration naming a temporary file, `mxkeys::source::read_all`
//! to read it (`read_all_with` for a chosen `Ingest`), `select::select` to
//! choose, `Candidate::bundle` / `Bundle::verify` to build and check
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
use mxkeys::select;
use mxkeys::source::{Ingest, Origin, Persist, read_all, read_all_with};
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

// ---------------------------------------------------------------------------
// Streaming and whole-file acme.json readers agree
// ---------------------------------------------------------------------------
//
// `Ingest::Streaming { window }` reads an acme.json through a window of
// `window` bytes and judges each window's entries in parallel;
// `Ingest::Whole` parses the whole file and judges entries one by one. For
// any file and any window both must give the same harvest (candidates in
// order with the same origin, leaf and bundle, the same errors, the same
// warnings) and selection must pick the same candidate with the same
// refusals. Windows from 1 byte up put the window's edge at every kind of
// position: inside a string or an escape, inside a number, between
// entries, at the end of the file.

/// One candidate as a comparable value: nothing of it is left out, but
/// certificates and keys are shown as SHA-256 fingerprints (a failure
/// message stays short and prints no key).
#[derive(Debug, PartialEq)]
struct CandidateView {
    origin: Origin,
    fallback: bool,
    leaf: mx::Leaf,
    /// `bundle()`: (fingerprints of its certificates, fingerprint of its
    /// key's PEM), or its error's text.
    bundle: Result<(Vec<String>, String), String>,
}

/// What selection said for one slot of one target.
#[derive(Debug, PartialEq)]
struct SelectionView {
    target: String,
    chosen: Option<(Origin, String)>,
    /// (origin, reason) in the order selection gives them.
    refused: Vec<(Origin, String)>,
    unrelated: Vec<Origin>,
}

/// Everything one way of reading gives, for comparison.
pub(crate) struct IngestView {
    candidates: Vec<CandidateView>,
    /// `KIND: text` of every error, in order.
    errors: Vec<String>,
    warnings: Vec<String>,
    selections: Vec<SelectionView>,
}

impl IngestView {
    pub(crate) fn candidates(&self) -> usize {
        self.candidates.len()
    }

    pub(crate) fn errors(&self) -> &[String] {
        &self.errors
    }

    /// The entry each target's first slot chose, if any.
    pub(crate) fn chosen_entries(&self) -> Vec<Option<String>> {
        self.selections
            .iter()
            .map(|s| s.chosen.as_ref().map(|(o, _)| o.entry.clone()))
            .collect()
    }
}

/// Reads `config`'s sources the `ingest` way and selects for each slot of
/// each target at `now`.
pub(crate) fn ingest_view(config: &Config, ingest: Ingest, now: i64) -> IngestView {
    let h = read_all_with(config, Persist::No, ingest);
    let candidates = h
        .candidates
        .iter()
        .map(|c| CandidateView {
            origin: c.origin.clone(),
            fallback: c.fallback,
            leaf: c.leaf.clone(),
            bundle: c
                .bundle()
                .map(|b| {
                    (
                        b.certs.iter().map(|d| common::sha256_hex(d)).collect(),
                        common::sha256_hex(b.key.to_pem().as_bytes()),
                    )
                })
                .map_err(|e| e.to_string()),
        })
        .collect();
    let mut selections = Vec::new();
    for t in &config.targets {
        for slot in &t.slots {
            let s = select::select(&t.domains, slot.key_type, &h.candidates, now);
            selections.push(SelectionView {
                target: format!("{} {:?}", t.name, slot.label),
                chosen: s.chosen.map(|c| {
                    (
                        c.candidate.origin.clone(),
                        common::sha256_hex(c.bundle.leaf_der()),
                    )
                }),
                refused: s
                    .refused
                    .iter()
                    .map(|(c, r)| (c.origin.clone(), r.to_string()))
                    .collect(),
                unrelated: s.unrelated.iter().map(|c| c.origin.clone()).collect(),
            });
        }
    }
    IngestView {
        candidates,
        errors: h
            .errors
            .iter()
            .map(|e| format!("{:?}: {e}", e.kind))
            .collect(),
        warnings: h.warnings,
        selections,
    }
}

/// The first way `streaming` differs from `whole`, in words, or None.
pub(crate) fn first_difference(whole: &IngestView, streaming: &IngestView) -> Option<String> {
    fn list<T: PartialEq + std::fmt::Debug>(what: &str, w: &[T], s: &[T]) -> Option<String> {
        if let Some((i, (a, b))) = w.iter().zip(s).enumerate().find(|(_, (a, b))| a != b) {
            return Some(format!(
                "{what} #{i} differs:\n  whole:     {a:?}\n  streaming: {b:?}"
            ));
        }
        if w.len() != s.len() {
            let n = w.len().min(s.len());
            let extra = match (w.get(n), s.get(n)) {
                (Some(x), _) => format!("whole's {x:?}"),
                (None, Some(x)) => format!("streaming's {x:?}"),
                (None, None) => String::new(),
            };
            return Some(format!(
                "{what}: whole has {}, streaming {}; the first extra is {extra}",
                w.len(),
                s.len()
            ));
        }
        None
    }
    list("candidate", &whole.candidates, &streaming.candidates)
        .or_else(|| list("error", &whole.errors, &streaming.errors))
        .or_else(|| list("warning", &whole.warnings, &streaming.warnings))
        .or_else(|| list("selection", &whole.selections, &streaming.selections))
}

/// Leaves for valid-looking entries, each with the `main` an entry names:
/// every key kind, and what makes selection refuse or rank (expired, not
/// yet valid, other names, fewer names, a key of another certificate, a
/// later notAfter, a chain written CA first).
struct AgreeMaterial {
    /// (main, base64 `certificate`, base64 `key`)
    entries: Vec<(&'static str, String, String)>,
}

static AGREE: LazyLock<AgreeMaterial> = LazyLock::new(|| {
    let ca = Ca::new("agree");
    let m = &*MATERIAL;
    let both = [HOST, "smtp.example.com"];
    let p256 = |spec: LeafSpec| ca.issue(&spec.kind(KeyKind::P256));
    let expired = p256(LeafSpec::new(&both).expired());
    let future = p256(LeafSpec::new(&both).future());
    let www = p256(LeafSpec::new(&["www.example.com"]).days(60));
    let host_only = p256(LeafSpec::new(&[HOST]).days(85));
    let later_rsa = ca.issue(&LeafSpec::new(&both).kind(KeyKind::Rsa2048).days(88));
    let wrong_key = m.leaves[0].with_key_of(&m.leaves[1]);
    let plain =
        |l: &common::Leaf, main| (main, B64.encode(l.fullchain_pem()), B64.encode(l.key_pem()));
    let mut entries: Vec<_> = m.leaves.iter().map(|l| plain(l, HOST)).collect();
    entries.extend([
        plain(&expired, HOST),
        plain(&future, HOST),
        plain(&www, "www.example.com"),
        plain(&host_only, HOST),
        plain(&later_rsa, "smtp.example.com"),
        plain(&wrong_key, HOST),
    ]);
    // CA first: the reader decodes the whole entry to find the leaf.
    let reversed = format!("{}{}", m.leaves[1].chain_pem(), m.leaves[1].cert_pem());
    entries.push((
        HOST,
        B64.encode(reversed),
        B64.encode(m.leaves[1].key_pem()),
    ));
    // A chain in another PEM layout (48-column CRLF lines, text around).
    let l = &m.leaves[0];
    let relaid: String = std::iter::once(&l.der)
        .chain(&l.chain)
        .map(|d| relayout("CERTIFICATE", d, 48, true, "subject=x\n", "\r\n"))
        .collect();
    entries.push((HOST, B64.encode(relaid), B64.encode(l.key_pem())));
    AgreeMaterial { entries }
});

/// A JSON document that keeps what `serde_json::Value` cannot: duplicate
/// keys, key order, and numbers as written.
#[derive(Clone, Debug)]
enum Doc {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Doc>),
    Obj(Vec<(String, Doc)>),
}

impl From<&Value> for Doc {
    fn from(v: &Value) -> Doc {
        match v {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(*b),
            Value::Number(n) => Doc::Num(n.to_string()),
            Value::String(s) => Doc::Str(s.clone()),
            Value::Array(a) => Doc::Arr(a.iter().map(Doc::from).collect()),
            Value::Object(o) => {
                Doc::Obj(o.iter().map(|(k, v)| (k.clone(), Doc::from(v))).collect())
            }
        }
    }
}

/// How a [`Doc`] is written: a seed for the choices, and how much
/// whitespace and how many optional escapes to use.
#[derive(Clone, Copy, Debug)]
struct Style {
    seed: u64,
    /// 0: none; 1: a little; 2: a little, sometimes long runs.
    space: u8,
    /// 0: only the escapes JSON requires; 1: some strings escape some
    /// characters (`\/`, `\u0041`, surrogate pairs); 2: many.
    escape: u8,
}

struct Writer {
    out: String,
    rng: u64,
    style: Style,
}

impl Writer {
    fn next(&mut self) -> u64 {
        // xorshift64*: the layout follows from the seed alone.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    fn space(&mut self) {
        if self.style.space == 0 {
            return;
        }
        let n = if self.style.space == 2 && self.one_in(16) {
            self.next() % 300
        } else {
            self.next() % 3
        };
        for _ in 0..n {
            let c = [" ", "\t", "\n", "\r\n", "\r", "  "][(self.next() % 6) as usize];
            self.out.push_str(c);
        }
    }

    fn string(&mut self, s: &str) {
        use std::fmt::Write as _;
        let escape = self.style.escape;
        let rate = match escape {
            0 => 0,
            _ if self.one_in(2) => 0,
            1 => 16,
            _ => 2,
        };
        self.out.push('"');
        for c in s.chars() {
            let optional = rate != 0 && self.one_in(rate);
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' if !optional => self.out.push_str("\\n"),
                '/' if optional && self.one_in(2) => self.out.push_str("\\/"),
                c if (c as u32) < 0x20 || optional => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        if self.one_in(2) {
                            let _ = write!(self.out, "\\u{u:04x}");
                        } else {
                            let _ = write!(self.out, "\\u{u:04X}");
                        }
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }

    fn doc(&mut self, d: &Doc) {
        self.space();
        match d {
            Doc::Null => self.out.push_str("null"),
            Doc::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Doc::Num(n) => self.out.push_str(n),
            Doc::Str(s) => self.string(s),
            Doc::Arr(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.space();
                        self.out.push(',');
                    }
                    self.doc(item);
                }
                self.space();
                self.out.push(']');
            }
            Doc::Obj(fields) => {
                self.out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        self.space();
                        self.out.push(',');
                    }
                    self.space();
                    self.string(k);
                    self.space();
                    self.out.push(':');
                    self.doc(v);
                }
                self.space();
                self.out.push('}');
            }
        }
        self.space();
    }
}

fn write_doc(d: &Doc, style: Style) -> Vec<u8> {
    let mut w = Writer {
        out: String::new(),
        rng: style.seed | 1,
        style,
    };
    w.doc(d);
    w.out.into_bytes()
}

fn arb_style() -> impl Strategy<Value = Style> {
    (any::<u64>(), 0u8..3, 0u8..3).prop_map(|(seed, space, escape)| Style {
        seed,
        space,
        escape,
    })
}

/// Numbers as JSON allows writing them, some that serde_json refuses to
/// hold (out of range) included.
fn arb_number() -> impl Strategy<Value = Doc> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "-0",
            "1e5",
            "-12.5E-3",
            "3.0e+2",
            "123456789012345678901234567890",
            "1E400",
            "-9223372036854775809",
            "0.000000000000000000001",
        ])
        .prop_map(|s| Doc::Num(s.to_owned())),
        any::<i64>().prop_map(|n| Doc::Num(n.to_string())),
    ]
}

/// Nested junk: random JSON, odd numbers, deep nesting.
fn arb_junk() -> impl Strategy<Value = Doc> {
    prop_oneof![
        3 => arb_json().prop_map(|v| Doc::from(&v)),
        1 => arb_number(),
        1 => (1usize..40, arb_number()).prop_map(|(depth, n)| {
            (0..depth).fold(n, |d, i| if i % 2 == 0 { Doc::Arr(vec![d]) } else { Doc::Obj(vec![("x".to_owned(), d)]) })
        }),
    ]
}

/// A valid-looking entry: one of [`AGREE`]'s, its fields in any order,
/// v1 or v2 names, maybe a `Store`, maybe a duplicate field (the later
/// one wins), maybe junk fields.
fn arb_good_entry() -> impl Strategy<Value = Doc> {
    let n = AGREE.entries.len();
    (
        0..n,
        any::<bool>(),
        any::<bool>(),
        any::<prop::sample::Index>(),
        prop::option::of((0usize..3, arb_junk())),
        prop::option::of((arb_key(), arb_junk())),
    )
        .prop_map(|(which, upper, store, order, dup, extra)| {
            let (main, cert, key) = &AGREE.entries[which];
            let [domain_k, main_k, sans_k, cert_k, key_k] = if upper {
                ["Domain", "Main", "SANs", "Certificate", "Key"]
            } else {
                ["domain", "main", "sans", "certificate", "key"]
            };
            let domain = Doc::Obj(vec![
                (main_k.to_owned(), Doc::Str((*main).to_owned())),
                (sans_k.to_owned(), Doc::Arr(vec![])),
            ]);
            let mut fields = vec![
                (domain_k.to_owned(), domain),
                (cert_k.to_owned(), Doc::Str(cert.clone())),
                (key_k.to_owned(), Doc::Str(key.clone())),
            ];
            if store {
                fields.push(("Store".to_owned(), Doc::Str("default".to_owned())));
            }
            if let Some((k, v)) = extra {
                fields.push((k, v));
            }
            let at = order.index(fields.len());
            fields.rotate_left(at);
            if let Some((field, junk)) = dup {
                // Before or after the real field: the later one counts.
                let k = [domain_k, cert_k, key_k][field].to_owned();
                let pos = order.index(fields.len() + 1);
                fields.insert(pos, (k, junk));
            }
            Doc::Obj(fields)
        })
}

fn arb_entries() -> impl Strategy<Value = Doc> {
    prop::collection::vec(
        prop_oneof![
            5 => arb_good_entry(),
            2 => arb_entry().prop_map(|v| Doc::from(&v)),
            1 => arb_junk(),
        ],
        0..8,
    )
    .prop_map(Doc::Arr)
}

/// A resolver's value: an object with `Account`, `Certificates` (maybe
/// twice: the later one counts) and junk in any order; or null, or junk.
fn arb_resolver_doc() -> impl Strategy<Value = Doc> {
    let obj = (
        arb_junk(),
        arb_entries(),
        prop::option::of(arb_entries()),
        prop::option::of((arb_key(), arb_junk())),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(account, certs, again, extra, order)| {
            let mut fields = vec![
                ("Account".to_owned(), account),
                ("Certificates".to_owned(), certs),
            ];
            if let Some(kv) = extra {
                fields.push(kv);
            }
            let at = order.index(fields.len());
            fields.rotate_left(at);
            if let Some(again) = again {
                fields.push(("Certificates".to_owned(), again));
            }
            Doc::Obj(fields)
        });
    prop_oneof![
        6 => obj,
        1 => Just(Doc::Obj(vec![("Certificates".to_owned(), Doc::Null)])),
        1 => Just(Doc::Null),
        1 => arb_junk(),
    ]
}

/// Resolver names: a few that repeat (a duplicate key is a second group
/// to the reader) and random ones.
fn arb_resolver_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["le", "other", "good", "staging"]).prop_map(str::to_owned),
        1 => arb_key(),
    ]
}

/// A file of several groups: v2/v3 resolvers, the v1 `Certificates` and
/// the other v1 keys, in any order, with many valid and broken entries.
fn arb_rich_doc() -> impl Strategy<Value = Doc> {
    let group = prop_oneof![
        6 => (arb_resolver_name(), arb_resolver_doc()),
        2 => arb_entries().prop_map(|e| ("Certificates".to_owned(), e)),
        1 => (
            prop::sample::select(vec!["Account", "HTTPChallenges", "TLSChallenges", "DNSChallenges"]),
            arb_junk(),
        )
            .prop_map(|(k, v)| (k.to_owned(), v)),
    ];
    prop::collection::vec(group, 1..6).prop_map(Doc::Obj)
}

/// What is done to a written file's bytes.
#[derive(Clone, Debug)]
enum Damage {
    None,
    Truncate(prop::sample::Index),
    Flip(Vec<(prop::sample::Index, u8)>),
}

fn arb_damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        8 => Just(Damage::None),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
        1 => prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8).prop_map(Damage::Flip),
    ]
}

/// The bytes of an acme.json, shown as text when a case fails.
struct FileBytes(Vec<u8>);

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// An acme.json's bytes: a rich file, a file around one valid entry, any
/// JSON, or the valid two-resolver file; written in any layout, then
/// maybe cut or bit-flipped.
fn arb_agree_file() -> impl Strategy<Value = FileBytes> {
    let doc = prop_oneof![
        6 => arb_rich_doc(),
        2 => arb_acme_with_good().prop_map(|(v, _)| Doc::from(&v)),
        1 => arb_json().prop_map(|v| Doc::from(&v)),
        1 => Just(()).prop_map(|()| Doc::from(&serde_json::from_slice::<Value>(&valid_acme()).unwrap())),
    ];
    (doc, arb_style(), arb_damage()).prop_map(|(doc, style, damage)| {
        let bytes = write_doc(&doc, style);
        FileBytes(match damage {
            Damage::None => bytes,
            Damage::Truncate(at) => {
                let cut = at.index(bytes.len() + 1);
                bytes[..cut].to_vec()
            }
            Damage::Flip(flips) => flip(bytes, &flips),
        })
    })
}

/// The `resolvers` filter of the source: none, or a few names, some not
/// in the file.
fn arb_filter() -> impl Strategy<Value = Option<Vec<&'static str>>> {
    prop_oneof![
        3 => Just(None),
        1 => prop::collection::vec(
            prop::sample::select(vec!["le", "other", "good", "missing", "Certificates"]),
            0..3,
        )
        .prop_map(Some),
    ]
}

/// A window: tiny (the edge falls everywhere), any size up to 8 KiB (an
/// RSA entry is about 4 KiB), or the default.
fn arb_window() -> impl Strategy<Value = usize> {
    prop_oneof![
        2 => 1usize..=16,
        3 => 17usize..=8192,
        1 => Just(Ingest::default()).prop_map(|i| match i {
            Ingest::Streaming { window } => window,
            Ingest::Whole => 1 << 20,
        }),
    ]
}

/// The configuration of the agreement tests: one Traefik source reading
/// `acme_json` (with `resolvers` when given) and targets that make
/// selection choose and refuse: the hostname with any key, both names
/// with RSA only, and www with ECDSA only.
pub(crate) fn agree_config(dir: &Path, acme_json: &Path, resolvers: Option<&[&str]>) -> Config {
    let source = match resolvers {
        Some(r) => common::src_traefik_resolvers(acme_json, r),
        None => common::src_traefik(acme_json),
    };
    let target = |name: &str, extra: &str| {
        format!(
            "[[target]]\nname = \"{name}\"\n{extra}fullchain = {}\nkey = {}\n",
            common::qp(&dir.join(format!("out/{name}/fullchain.pem"))),
            common::qp(&dir.join(format!("out/{name}/privkey.pem")))
        )
    };
    let text = format!(
        "hostname = \"{HOST}\"\nstate_dir = {}\n\n{source}\n{}\n{}\n{}",
        common::qp(&dir.join("state")),
        target("mx", ""),
        target(
            "smtp",
            "domains = [\"mail.example.com\", \"smtp.example.com\"]\nkey_type = \"rsa\"\n"
        ),
        target(
            "www",
            "domains = [\"www.example.com\"]\nkey_type = \"ecdsa\"\n"
        ),
    );
    Config::parse(&dir.join("mxkeys.toml"), &text, &Host::current()).expect("agree config")
}

proptest! {
    #![proptest_config(config())]

    /// For any acme.json, any window and any resolver filter, the
    /// streaming reader gives what the whole-file reader gives, and
    /// selection decides the same.
    #[test]
    fn acme_streaming_and_whole_readers_agree(
        bytes in arb_agree_file(),
        window in arb_window(),
        filter in arb_filter(),
    ) {
        let w = World::new();
        let path = w.path("acme.json");
        fs::write(&path, &bytes.0).unwrap();
        let config = agree_config(&w.dir, &path, filter.as_deref());
        let now = common::now().unix_timestamp();
        let whole = ingest_view(&config, Ingest::Whole, now);
        let streaming = ingest_view(&config, Ingest::Streaming { window }, now);
        if let Some(d) = first_difference(&whole, &streaming) {
            return Err(TestCaseError::fail(format!("window {window}, filter {filter:?}: {d}")));
        }
    }
}
