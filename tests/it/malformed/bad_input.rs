//! Bad input: one error line naming the source path, the entry and the
//! reason; exit 1; other sources and entries still used; installed files of
//! the affected target stay byte-identical; never a panic (checked by `Run`).

use mxkeys_testsupport as common;

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;

/// Resolver name used for acme.json entries (distinctive, so it can be
/// looked for in error lines).
const RESOLVER: &str = "myresolver";

/// Assert some stderr line names `path` (and every `extra`), and, with all
/// path-like tokens (containing '/') removed, contains `reason`.
#[track_caller]
fn assert_error(r: &Run, path: &Path, extra: &[&str], reason: &str) {
    let path = path.to_str().unwrap();
    let found = r.stderr.lines().any(|l| {
        if !l.contains(path) || !extra.iter().all(|e| l.contains(e)) {
            return false;
        }
        let words: String = l
            .split_whitespace()
            .filter(|w| !w.contains('/'))
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        words.contains(&reason.to_lowercase())
    });
    assert!(
        found,
        "no stderr line names {path:?} {extra:?} with reason {reason:?}\n{}",
        r.describe()
    );
}

/// Two targets: `postfix` (mail.example.com), served by the source under
/// test, and `other` (other.example.com), served by something else.
struct Case {
    env: Env,
    ca: Ca,
    postfix: Target,
    other: Target,
}

impl Case {
    fn new() -> Case {
        let env = Env::new();
        let postfix = Target::new(&env, "postfix");
        let other = Target::new(&env, "other").domains(&[OTHER]);
        Case {
            env,
            ca: Ca::new("bad"),
            postfix,
            other,
        }
    }

    fn leaf(&self, name: &str, d: i64) -> Leaf {
        self.ca.issue(&LeafSpec::new(&[name]).days(d))
    }

    /// A files source for `other`, under `other-src/`.
    fn other_files(&self, leaf: &Leaf) -> String {
        let cert = self.env.path("other-src/other.crt");
        let key = self.env.path("other-src/other.key");
        write(&cert, leaf.fullchain_pem());
        write(&key, leaf.key_pem());
        src_files(&cert, &key, None)
    }

    fn config(&self, sources: &[String]) {
        self.env
            .write_config(sources, &[&self.postfix, &self.other]);
    }
}

/// Phase 1: `bad_src` (still good) serves postfix, a files source serves
/// other; sync succeeds. Phase 2: `corrupt()` breaks the source and other
/// gets a renewed certificate; sync must exit 1 naming `path` and `reason`,
/// postfix's files must stay byte-identical and other must be renewed.
fn source_breaks(
    case: &Case,
    bad_src: String,
    good: &Leaf,
    corrupt: impl FnOnce(),
    path: &Path,
    extra: &[&str],
    reason: &str,
) -> Run {
    let o1 = case.leaf(OTHER, 30);
    let other_src = case.other_files(&o1);
    case.config(&[bad_src, other_src]);
    case.env.sync().ok();
    case.postfix.assert_installed(good);
    case.other.assert_installed(&o1);
    let before = case.postfix.contents();

    corrupt();
    let o2 = case.leaf(OTHER, 80);
    case.other_files(&o2);
    let r = case.env.sync();
    r.assert_code(1);
    assert_error(&r, path, extra, reason);
    assert_eq!(
        case.postfix.contents(),
        before,
        "postfix files changed\n{}",
        r.describe()
    );
    case.other.assert_installed(&o2);
    r
}

// ---------------------------------------------------------------------------
// acme.json as a whole
// ---------------------------------------------------------------------------

/// The acme.json path is chosen so that it contains neither "json" nor
/// "acme.json" (those are reasons to look for).
fn acme_path(case: &Case) -> PathBuf {
    case.env.path("traefik/store.dat")
}

fn acme_file_breaks(corrupt: impl FnOnce(&Path), reason: &str) {
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let acme = acme_path(&case);
    write_json(
        &acme,
        &acme_v2(&[(RESOLVER, Some(vec![AcmeEntry::new(&good, HOST)]))]),
    );
    source_breaks(
        &case,
        src_traefik(&acme),
        &good,
        || corrupt(&acme),
        &acme,
        &[],
        reason,
    );
}

#[test]
fn acme_missing_file() {
    acme_file_breaks(|p| fs::remove_file(p).unwrap(), "not found");
}

#[test]
fn acme_empty_file() {
    acme_file_breaks(|p| write(p, ""), "empty");
}

#[test]
fn acme_truncated_json() {
    acme_file_breaks(
        |p| {
            let text = fs::read(p).unwrap();
            write(p, &text[..text.len() / 2]);
        },
        "json",
    );
}

#[test]
fn acme_json_array_is_not_acme() {
    acme_file_breaks(|p| write(p, "[1,2]"), "acme.json");
}

#[test]
fn acme_json_string_is_not_acme() {
    acme_file_breaks(|p| write(p, "\"x\""), "acme.json");
}

#[test]
fn acme_path_is_a_directory() {
    acme_file_breaks(
        |p| {
            fs::remove_file(p).unwrap();
            fs::create_dir(p).unwrap();
        },
        "directory",
    );
}

#[test]
fn acme_too_large() {
    acme_file_breaks(
        |p| sparse_file(p, b"{\"myresolver\": ", 256 * 1024 * 1024 + 4096),
        "too large",
    );
}

// ---------------------------------------------------------------------------
// acme.json entries
// ---------------------------------------------------------------------------

/// Entry 0 serves postfix, entry 1 serves other, both in RESOLVER. Phase 2
/// breaks entry 0 with `mutate` and renews entry 1.
fn acme_entry_breaks(v1: bool, mutate: impl FnOnce(&mut AcmeEntry), reason: &str) {
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let acme = acme_path(&case);
    let write_acme = |e0: AcmeEntry, e1: AcmeEntry| {
        let v = if v1 {
            acme_v1(&[e0, e1])
        } else {
            acme_v2(&[(RESOLVER, Some(vec![e0, e1]))])
        };
        write_json(&acme, &v);
    };
    let o1 = case.leaf(OTHER, 30);
    write_acme(AcmeEntry::new(&good, HOST), AcmeEntry::new(&o1, OTHER));
    case.config(&[src_traefik(&acme)]);
    case.env.sync().ok();
    case.postfix.assert_installed(&good);
    case.other.assert_installed(&o1);
    let before = case.postfix.contents();

    let mut e0 = AcmeEntry::new(&good, HOST);
    mutate(&mut e0);
    let o2 = case.leaf(OTHER, 80);
    write_acme(e0, AcmeEntry::new(&o2, OTHER));
    let r = case.env.sync();
    r.assert_code(1);
    let extra: &[&str] = if v1 { &[] } else { &[RESOLVER] };
    assert_error(&r, &acme, extra, reason);
    assert_eq!(case.postfix.contents(), before, "postfix files changed");
    case.other.assert_installed(&o2);
}

#[test]
fn acme_entry_without_certificate() {
    acme_entry_breaks(false, |e| e.certificate = None, "no certificate");
}

#[test]
fn acme_entry_without_key() {
    acme_entry_breaks(false, |e| e.key = None, "no key");
}

#[test]
fn acme_v1_entry_without_key() {
    acme_entry_breaks(true, |e| e.key = None, "no key");
}

#[test]
fn acme_entry_invalid_base64() {
    acme_entry_breaks(
        false,
        |e| e.certificate = Some("!!!not base64!!!".into()),
        "base64",
    );
}

#[test]
fn acme_entry_certificate_not_pem() {
    acme_entry_breaks(
        false,
        |e| e.certificate = Some(B64.encode("hello, this is not a certificate\n")),
        "pem",
    );
}

#[test]
fn acme_entry_key_not_pem() {
    acme_entry_breaks(
        false,
        |e| e.key = Some(B64.encode("garbage key text\n")),
        "pem",
    );
}

/// The entry's chain with the intermediate's BEGIN line replaced by
/// `damaged`: the PEM reader would skip that block, and a leaf without
/// its issuer has no signature to check.
fn with_damaged_intermediate(e: &mut AcmeEntry, damaged: &str) {
    let chain = String::from_utf8(B64.decode(e.certificate.as_ref().unwrap()).unwrap()).unwrap();
    let second = chain
        .match_indices("-----BEGIN CERTIFICATE-----")
        .nth(1)
        .unwrap()
        .0;
    let mut broken = chain.clone();
    broken.replace_range(second..second + 27, damaged);
    e.certificate = Some(B64.encode(broken));
}

#[test]
fn acme_entry_damaged_begin_line() {
    acme_entry_breaks(
        false,
        |e| with_damaged_intermediate(e, "-----BEGHN CERTIFICATE-----"),
        "damaged pem begin or end line",
    );
}

#[test]
fn acme_entry_begin_line_without_dashes() {
    acme_entry_breaks(
        false,
        |e| with_damaged_intermediate(e, ",----BEGIN CERTIFICATE-----"),
        "pem end line without its begin",
    );
}

fn encrypted_key_pem() -> String {
    // The body only has to look like an encrypted PKCS#8 structure.
    pem_block("ENCRYPTED PRIVATE KEY", &[0x30, 0x03, 0x02, 0x01, 0x00])
}

#[test]
fn acme_entry_encrypted_key() {
    acme_entry_breaks(
        false,
        |e| e.key = Some(B64.encode(encrypted_key_pem())),
        "encrypted",
    );
}

// ---------------------------------------------------------------------------
// Refused candidates: postfix has no valid candidate at all; its pre-existing
// files stay as they are and the error names the candidate and why.
// ---------------------------------------------------------------------------

fn acme_candidate_refused(bad: Leaf, reason: &str) {
    let case = Case::new();
    case.postfix.preseed("previously installed");
    let before = case.postfix.contents();
    let o = case.leaf(OTHER, 30);
    let acme = acme_path(&case);
    write_json(
        &acme,
        &acme_v2(&[(
            RESOLVER,
            // `main` claims the wanted name; it must not matter.
            Some(vec![AcmeEntry::new(&bad, HOST), AcmeEntry::new(&o, OTHER)]),
        )]),
    );
    case.config(&[src_traefik(&acme)]);
    let r = case.env.sync();
    r.assert_code(1);
    assert_error(&r, &acme, &[], reason);
    assert_eq!(case.postfix.contents(), before, "postfix files changed");
    case.other.assert_installed(&o);
}

#[test]
fn acme_expired() {
    let ca = Ca::new("exp");
    acme_candidate_refused(ca.issue(&LeafSpec::new(&[HOST]).expired()), "expired");
}

#[test]
fn acme_not_yet_valid() {
    let ca = Ca::new("nyv");
    acme_candidate_refused(ca.issue(&LeafSpec::new(&[HOST]).future()), "not yet valid");
}

#[test]
fn acme_other_names() {
    let ca = Ca::new("names");
    acme_candidate_refused(
        ca.issue(&LeafSpec::new(&["www.example.com"])),
        "does not cover",
    );
}

#[test]
fn acme_key_does_not_match() {
    let ca = Ca::new("mismatch");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let b = ca.issue(&LeafSpec::new(&[HOST]));
    acme_candidate_refused(a.with_key_of(&b), "does not match");
}

/// When nothing serves a target, the error names every refused candidate
/// and why; `check` reports the same and exits 1 too.
#[test]
fn unserved_target_names_every_refused_candidate() {
    let case = Case::new();
    case.postfix.preseed("previously installed");
    let before = case.postfix.contents();
    let expired = case.ca.issue(&LeafSpec::new(&[HOST]).expired());
    let future = case.ca.issue(&LeafSpec::new(&[HOST]).future());
    let a = case.leaf(HOST, 60);
    let mismatched = a.with_key_of(&case.leaf(HOST, 60));
    let www = case.leaf("www.example.com", 70);
    let o = case.leaf(OTHER, 30);
    let acme = acme_path(&case);
    write_json(
        &acme,
        &acme_v2(&[(
            RESOLVER,
            Some(vec![
                AcmeEntry::new(&expired, HOST),
                AcmeEntry::new(&future, HOST),
                AcmeEntry::new(&mismatched, HOST),
                AcmeEntry::new(&www, HOST),
                AcmeEntry::new(&o, OTHER),
            ]),
        )]),
    );
    case.config(&[src_traefik(&acme)]);
    let c = case.env.check();
    c.assert_code(1);
    let r = case.env.sync();
    r.assert_code(1);
    for reason in [
        "expired",
        "not yet valid",
        "does not match",
        "does not cover",
    ] {
        assert_error(&r, &acme, &[RESOLVER], reason);
    }
    assert_eq!(case.postfix.contents(), before);
    case.other.assert_installed(&o);
}

/// Expired duplicates and entries for other names are not errors when
/// another candidate serves the target.
#[test]
fn refused_duplicates_are_not_errors_when_served() {
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let o = case.leaf(OTHER, 30);
    let expired = case.ca.issue(&LeafSpec::new(&[HOST]).expired());
    let future = case.ca.issue(&LeafSpec::new(&[HOST]).future());
    let www = case.leaf("www.example.com", 70);
    let acme = acme_path(&case);
    write_json(
        &acme,
        &acme_v2(&[(
            RESOLVER,
            Some(vec![
                AcmeEntry::new(&expired, HOST),
                AcmeEntry::new(&future, HOST),
                AcmeEntry::new(&www, HOST),
                AcmeEntry::new(&good, HOST),
                AcmeEntry::new(&o, OTHER),
            ]),
        )]),
    );
    case.config(&[src_traefik(&acme)]);
    case.env.sync().ok();
    case.postfix.assert_installed(&good);
    case.other.assert_installed(&o);
}

// ---------------------------------------------------------------------------
// Plain files
// ---------------------------------------------------------------------------

struct FilesSrc {
    cert: PathBuf,
    key: PathBuf,
    cfg: String,
}

/// Postfix's files source under `postfix-src/`; the names avoid "pem".
fn postfix_files(case: &Case, leaf: &Leaf) -> FilesSrc {
    let cert = case.env.path("postfix-src/mail.crt");
    let key = case.env.path("postfix-src/mail.key");
    write(&cert, leaf.fullchain_pem());
    write(&key, leaf.key_pem());
    FilesSrc {
        cfg: src_files(&cert, &key, None),
        cert,
        key,
    }
}

/// `which` selects the file to corrupt: "cert" or "key".
fn files_break(which: &str, corrupt: impl FnOnce(&Path), reason: &str) {
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let fs_ = postfix_files(&case, &good);
    let path = if which == "cert" {
        fs_.cert.clone()
    } else {
        fs_.key.clone()
    };
    source_breaks(&case, fs_.cfg, &good, || corrupt(&path), &path, &[], reason);
}

#[test]
fn files_cert_missing() {
    files_break("cert", |p| fs::remove_file(p).unwrap(), "not found");
}

#[test]
fn files_key_missing() {
    files_break("key", |p| fs::remove_file(p).unwrap(), "not found");
}

#[test]
fn files_cert_empty() {
    files_break("cert", |p| write(p, ""), "empty");
}

#[test]
fn files_key_empty() {
    files_break("key", |p| write(p, ""), "empty");
}

#[test]
fn files_cert_not_pem() {
    files_break("cert", |p| write(p, "this is not a certificate\n"), "pem");
}

#[test]
fn files_key_encrypted() {
    files_break("key", |p| write(p, encrypted_key_pem()), "encrypted");
}

#[test]
fn files_cert_is_directory() {
    files_break(
        "cert",
        |p| {
            fs::remove_file(p).unwrap();
            fs::create_dir(p).unwrap();
        },
        "directory",
    );
}

#[test]
fn files_cert_too_large() {
    files_break(
        "cert",
        |p| {
            let pem = fs::read(p).unwrap();
            sparse_file(p, &pem, 2 * 1024 * 1024);
        },
        "too large",
    );
}

#[test]
fn files_key_does_not_match() {
    let case = Case::new();
    case.postfix.preseed("previously installed");
    let before = case.postfix.contents();
    let a = case.leaf(HOST, 60);
    let b = case.leaf(HOST, 60);
    let src = postfix_files(&case, &a.with_key_of(&b));
    let o = case.leaf(OTHER, 30);
    let other_src = case.other_files(&o);
    case.config(&[src.cfg, other_src]);
    let r = case.env.sync();
    r.assert_code(1);
    assert_error(&r, &case.env.path("postfix-src"), &[], "does not match");
    assert_eq!(case.postfix.contents(), before);
    case.other.assert_installed(&o);
}

/// An unreadable key (run as an unprivileged user, since root reads
/// anything).
#[test]
fn files_key_permission_denied() {
    if !have_setpriv() {
        assert!(
            std::env::var_os("CI").is_none(),
            "setpriv is required for the permission test in CI"
        );
        eprintln!("\n!!! SKIPPING files_key_permission_denied: setpriv not found !!!\n");
        return;
    }
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let src = postfix_files(&case, &good);
    let o1 = case.leaf(OTHER, 30);
    let other_src = case.other_files(&o1);
    case.config(&[src.cfg.clone(), other_src]);
    case.env.open_to_nobody();
    case.env.run_as_nobody(&["sync"]).ok();
    case.postfix.assert_installed(&good);
    let before = case.postfix.contents();

    set_mode(&src.key, 0o000);
    let o2 = case.leaf(OTHER, 80);
    case.other_files(&o2);
    let r = case.env.run_as_nobody(&["sync"]);
    r.assert_code(1);
    assert_error(&r, &src.key, &[], "permission denied");
    assert_eq!(case.postfix.contents(), before);
    case.other.assert_installed(&o2);
}

// ---------------------------------------------------------------------------
// Certbot and lego
// ---------------------------------------------------------------------------

/// A live/NAME symlink whose archive file is gone.
#[test]
fn certbot_dangling_symlink() {
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let cb = Certbot::new(&case.env.path("letsencrypt"));
    cb.add("mailcert", &good);
    let archive_key = cb.root.join("archive/mailcert/privkey1.pem");
    source_breaks(
        &case,
        src_certbot(&cb.root),
        &good,
        || fs::remove_file(&archive_key).unwrap(),
        &cb.root,
        &["mailcert"],
        "not found",
    );
}

/// A lego certificate whose key file is gone.
#[test]
fn lego_missing_key() {
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let lego = case.env.path("lego");
    lego_add(&lego, HOST, &good);
    let key = lego.join(format!("certificates/{HOST}.key"));
    source_breaks(
        &case,
        src_lego(&lego),
        &good,
        || fs::remove_file(&key).unwrap(),
        &lego,
        &[HOST],
        "not found",
    );
}

/// A configured source directory that does not exist.
#[test]
fn certbot_missing_dir() {
    let case = Case::new();
    let good = case.leaf(HOST, 60);
    let cb = Certbot::new(&case.env.path("letsencrypt"));
    cb.add("mailcert", &good);
    let root = cb.root.clone();
    source_breaks(
        &case,
        src_certbot(&cb.root),
        &good,
        || fs::remove_dir_all(&root).unwrap(),
        &cb.root,
        &[],
        "not found",
    );
}
