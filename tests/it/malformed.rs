//! Malformed-input corpus: every source type (Traefik acme.json, Certbot,
//! lego, plain files) broken, in two parts: the table below, and
//! [`bad_input`], one test per breakage the table does not cover (a missing
//! or empty file, a bad acme.json entry, a refused candidate...), each
//! asserting the error line, exit 1 and the untouched target.
//!
//! The corpus is generated at test time in temporary directories; nothing is
//! committed. One driver (`corpus`) runs the table of cases, in parallel,
//! and prints a summary; a few bespoke tests follow it.
//!
//! Each case: a good sync installs the source's certificate into target
//! `postfix` (and a separate files source's into `other`); the case then
//! breaks the source and renews `other`'s certificate; a second sync must
//!
//! - exit with the expected status (1 for unreadable or broken input),
//! - print one clear line on stderr naming the source (and entry) and the
//!   reason,
//! - not panic and not hang (a deadline kills a hung process),
//! - leave `postfix`'s files byte-identical with the same inodes,
//! - still install `other`'s renewed certificate.

mod bad_input;

use mxkeys_testsupport as common;

use std::fs;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration as StdDuration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::{Value, json};

/// Resolver of the acme.json cases (distinctive, so error lines can be
/// checked for it).
const RESOLVER: &str = "myresolver";
/// The Certbot lineage of the good certificate.
const LINEAGE: &str = "mailcert";
/// How long one mxkeys run may take before it counts as hung. Not a
/// performance threshold: a healthy run takes well under a second.
const HANG_DEADLINE: StdDuration = StdDuration::from_secs(20);

// ---------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Traefik,
    Certbot,
    Lego,
    Files,
}

/// One case's world: the source under test serving `postfix`, a files
/// source serving `other`.
struct Fx {
    env: Env,
    ca: Ca,
    good: Leaf,
    postfix: Target,
    other: Target,
    /// Traefik: the acme.json (named so that it contains neither "json" nor
    /// "acme", which are reasons looked for).
    acme: PathBuf,
    /// Certbot configuration directory.
    cb: PathBuf,
    /// lego --path directory.
    lego: PathBuf,
    /// Files source: certificate and key (names avoid "pem" and "key").
    cert: PathBuf,
    key: PathBuf,
    /// Extra lines for the files source (e.g. `chain = ...`).
    files_extra: Mutex<String>,
}

impl Fx {
    fn new(kind: Kind) -> Fx {
        let env = Env::new();
        let postfix = Target::new(&env, "postfix");
        let other = Target::new(&env, "other").domains(&[OTHER]);
        let ca = Ca::new("malformed");
        let good = ca.issue(&LeafSpec::new(&[HOST]).days(60));
        let fx = Fx {
            acme: env.path("traefik/store.dat"),
            cb: env.path("letsencrypt"),
            lego: env.path("legodir"),
            cert: env.path("postfix-src/mail.crt"),
            key: env.path("postfix-src/mail.sec"),
            env,
            ca,
            good,
            postfix,
            other,
            files_extra: Mutex::new(String::new()),
        };
        match kind {
            Kind::Traefik => fx.acme_write(vec![fx.entry(&fx.good)]),
            Kind::Certbot => {
                Certbot::new(&fx.cb).add(LINEAGE, &fx.good);
            }
            Kind::Lego => lego_add(&fx.lego, HOST, &fx.good),
            Kind::Files => {
                write(&fx.cert, fx.good.fullchain_pem());
                write(&fx.key, fx.good.key_pem());
            }
        }
        fx
    }

    fn leaf(&self, spec: LeafSpec) -> Leaf {
        self.ca.issue(&spec)
    }

    fn s(p: &Path) -> String {
        p.to_str().unwrap().to_owned()
    }

    // ---- Traefik --------------------------------------------------------

    /// A v2 entry for `leaf`.
    fn entry(&self, leaf: &Leaf) -> Value {
        json!({
            "domain": {"main": HOST},
            "certificate": B64.encode(leaf.fullchain_pem()),
            "key": B64.encode(leaf.key_pem()),
        })
    }

    fn acme_write(&self, entries: Vec<Value>) {
        self.acme_raw(
            &json!({RESOLVER: {"Account": {"Email": "a@example.com"}, "Certificates": entries}}),
        );
    }

    fn acme_raw(&self, v: &Value) {
        write(&self.acme, serde_json::to_vec_pretty(v).unwrap());
    }

    /// The good entry with `field` set to `value`.
    fn acme_field(&self, field: &str, value: Value) {
        let mut e = self.entry(&self.good);
        e[field] = value;
        self.acme_write(vec![e]);
    }

    // ---- Certbot --------------------------------------------------------

    /// `archive/mailcert/BASE1.pem`, where `live/mailcert/BASE.pem` points.
    fn cb_archive(&self, base: &str) -> PathBuf {
        self.cb.join(format!("archive/{LINEAGE}/{base}1.pem"))
    }

    fn cb_live(&self, base: &str) -> PathBuf {
        self.cb.join(format!("live/{LINEAGE}/{base}.pem"))
    }

    /// Rewrite the lineage's files for `leaf` (in place, same archive N).
    fn cb_rewrite(&self, leaf: &Leaf) {
        write(&self.cb_archive("cert"), leaf.cert_pem());
        write(&self.cb_archive("chain"), leaf.chain_pem());
        write(&self.cb_archive("fullchain"), leaf.fullchain_pem());
        write(&self.cb_archive("privkey"), leaf.key_pem());
    }

    // ---- lego -----------------------------------------------------------

    fn lego_file(&self, ext: &str) -> PathBuf {
        self.lego.join(format!("certificates/{HOST}.{ext}"))
    }

    // ---- Config and runs ------------------------------------------------

    fn source_cfg(&self, kind: Kind) -> String {
        match kind {
            Kind::Traefik => src_traefik(&self.acme),
            Kind::Certbot => src_certbot(&self.cb),
            Kind::Lego => src_lego(&self.lego),
            Kind::Files => {
                let mut s = src_files(&self.cert, &self.key, None);
                s.push_str(&self.files_extra.lock().unwrap());
                s
            }
        }
    }

    /// `other`'s files source, under `other-src/`.
    fn other_files(&self, leaf: &Leaf) -> String {
        let cert = self.env.path("other-src/other.crt");
        let key = self.env.path("other-src/other.sec");
        write(&cert, leaf.fullchain_pem());
        write(&key, leaf.key_pem());
        src_files(&cert, &key, None)
    }

    fn config(&self, kind: Kind, other: &Leaf) {
        let other_src = self.other_files(other);
        self.env.write_config(
            &[self.source_cfg(kind), other_src],
            &[&self.postfix, &self.other],
        );
    }

    /// Run mxkeys (as uid 65534 when `nobody`), killed after the deadline.
    fn run(&self, nobody: bool, args: &[&str]) -> Outcome {
        let mut c = if nobody {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(bin());
            c
        } else {
            Command::new(bin())
        };
        c.arg("--config").arg(&self.env.config).args(args);
        for v in DAEMON_ENV_REMOVE {
            c.env_remove(v);
        }
        c.env("NO_COLOR", "1").current_dir(&self.env.root);
        run_deadline(c, &self.env.root, &format!("mxkeys {}", args.join(" ")))
    }
}

/// What one run did.
struct Outcome {
    cmdline: String,
    /// None when it was killed at the deadline (or by a signal).
    code: Option<i32>,
    hung: bool,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn describe(&self) -> String {
        format!(
            "$ {}\nexit code: {:?}{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline,
            self.code,
            if self.hung {
                format!(" (HUNG: killed after {HANG_DEADLINE:?})")
            } else {
                String::new()
            },
            self.stdout,
            self.stderr
        )
    }
}

/// Spawn `c` with its output in files under `dir`; kill it (by its handle)
/// if it has not exited within [`HANG_DEADLINE`].
fn run_deadline(mut c: Command, dir: &Path, cmdline: &str) -> Outcome {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let out_p = dir.join(format!("run{n}.stdout"));
    let err_p = dir.join(format!("run{n}.stderr"));
    c.stdin(Stdio::null())
        .stdout(fs::File::create(&out_p).unwrap())
        .stderr(fs::File::create(&err_p).unwrap());
    let mut child = c.spawn().expect("spawn mxkeys");
    let start = Instant::now();
    let (status, hung) = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break (Some(s), false);
        }
        if start.elapsed() > HANG_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(StdDuration::from_millis(10));
    };
    Outcome {
        cmdline: cmdline.to_owned(),
        code: status.and_then(|s| s.code()),
        hung,
        stdout: String::from_utf8_lossy(&fs::read(&out_p).unwrap()).into_owned(),
        stderr: strip_ansi(&String::from_utf8_lossy(&fs::read(&err_p).unwrap())),
    }
}

/// (path, inode, bytes) of every output file of a target.
fn identity(t: &Target) -> Vec<(PathBuf, u64, Vec<u8>)> {
    t.outputs()
        .into_iter()
        .map(|p| {
            let m = fs::metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            let bytes = fs::read(&p).unwrap();
            (p, m.ino(), bytes)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Expectations
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// An `ERROR` line.
    Error,
    /// A `WARN` or `ERROR` line.
    Warn,
    /// Any line (refusals are explained at `-v`).
    Any,
}

type Needles = fn(&Fx) -> Vec<String>;
/// (case name, source type, result) of one corpus case.
type Outcomes = (&'static str, Kind, Result<(), String>);

struct Case {
    name: &'static str,
    kind: Kind,
    /// Run both syncs as uid 65534 (root reads anything).
    nobody: bool,
    /// Run the second sync with `-v`.
    verbose: bool,
    /// Break the source (and set up what the case needs).
    corrupt: fn(&Fx),
    code: i32,
    level: Level,
    /// Strings one stderr line must all contain (source path, entry...).
    needles: Needles,
    /// With every path-like word (containing '/') removed, that line must
    /// contain one of these (case-insensitive).
    reasons: &'static [&'static str],
}

fn line_matches(line: &str, needles: &[String], reasons: &[&str], level: Level) -> bool {
    let level_ok = match level {
        Level::Error => line.contains("ERROR"),
        Level::Warn => line.contains("ERROR") || line.contains("WARN"),
        Level::Any => true,
    };
    if !level_ok || !needles.iter().all(|n| line.contains(n.as_str())) {
        return false;
    }
    let words = line
        .split_whitespace()
        .filter(|w| !w.contains('/'))
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    reasons.iter().any(|r| words.contains(&r.to_lowercase()))
}

fn run_case(case: &Case) -> Result<(), String> {
    let fx = Fx::new(case.kind);
    let o1 = fx.leaf(LeafSpec::new(&[OTHER]).days(30));
    fx.config(case.kind, &o1);
    if case.nobody {
        fx.env.open_to_nobody();
    }
    let r = fx.run(case.nobody, &["sync"]);
    if r.code != Some(0) {
        return Err(format!("the good sync failed\n{}", r.describe()));
    }
    fx.postfix.assert_installed(&fx.good);
    fx.other.assert_installed(&o1);
    let before = identity(&fx.postfix);

    (case.corrupt)(&fx);
    let o2 = fx.leaf(LeafSpec::new(&[OTHER]).days(80));
    fx.config(case.kind, &o2);
    if case.nobody {
        // The renewed files source and config were written as root.
        for p in [
            fx.env.config.clone(),
            fx.env.path("other-src/other.crt"),
            fx.env.path("other-src/other.sec"),
        ] {
            set_mode(&p, 0o644);
        }
    }
    let args: &[&str] = if case.verbose {
        &["-v", "sync"]
    } else {
        &["sync"]
    };
    let r = fx.run(case.nobody, args);
    let mut problems = Vec::new();
    if r.hung {
        problems.push("mxkeys hung".to_owned());
    }
    if r.stderr.contains("panicked") || r.stdout.contains("panicked") {
        problems.push("mxkeys panicked".to_owned());
    }
    if !r.hung && r.code != Some(case.code) {
        problems.push(format!("exit status {:?}, expected {}", r.code, case.code));
    }
    let needles = (case.needles)(&fx);
    if !r
        .stderr
        .lines()
        .any(|l| line_matches(l, &needles, case.reasons, case.level))
    {
        problems.push(format!(
            "no {:?} line on stderr naming {needles:?} with a reason in {:?}",
            case.level, case.reasons
        ));
    }
    if identity(&fx.postfix) != before {
        problems.push("postfix's installed files changed (bytes or inode)".to_owned());
    }
    if !r.hung && fx.other.installed_fp().is_none_or(|fp| fp != o2.fp()) {
        problems.push("other's renewed certificate was not installed".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}\n{}", problems.join("; "), r.describe()))
    }
}

// ---------------------------------------------------------------------------
// Corpus helpers
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Random bytes that start with a byte no text format starts with.
fn garbage() -> Vec<u8> {
    let mut g = noise(0x5eed, 4096);
    g[0] = 0xff;
    g
}

fn nuls() -> Vec<u8> {
    vec![0u8; 4096]
}

/// A PKCS#8 encrypted key (the body only has to look like one).
fn pkcs8_encrypted() -> String {
    pem_block(
        "ENCRYPTED PRIVATE KEY",
        &[
            0x30, 0x0b, 0x30, 0x03, 0x06, 0x01, 0x00, 0x04, 0x04, 0xde, 0xad, 0xbe, 0xef,
        ],
    )
}

/// A traditional OpenSSL encrypted key (`Proc-Type: 4,ENCRYPTED`).
fn traditional_encrypted() -> String {
    format!(
        "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
         DEK-Info: AES-128-CBC,0123456789ABCDEF0123456789ABCDEF\n\n{}\n\
         -----END EC PRIVATE KEY-----\n",
        B64.encode(noise(7, 96))
    )
}

/// A certificate PEM whose body has broken base64 (a bad character in the
/// middle).
fn pem_broken_base64(leaf: &Leaf) -> String {
    let pem = leaf.cert_pem();
    let mut lines: Vec<String> = pem.lines().map(str::to_owned).collect();
    lines[3].replace_range(10..11, "*");
    lines.join("\n") + "\n"
}

/// Replace `p` (file or symlink) with a FIFO.
fn fifo(p: &Path) {
    let _ = fs::remove_file(p);
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

/// Replace `p` with a directory.
fn dir_instead(p: &Path) {
    let _ = fs::remove_file(p);
    fs::create_dir(p).unwrap();
}

/// Replace `p` with a symlink to itself.
fn self_loop(p: &Path) {
    let _ = fs::remove_file(p);
    symlink(p.file_name().unwrap(), p).unwrap();
}

/// Replace `p` with a -> b -> a (b beside it).
fn two_loop(p: &Path) {
    let _ = fs::remove_file(p);
    let b = p.with_file_name("loop-b");
    symlink("loop-b", p).unwrap();
    symlink(p.file_name().unwrap(), &b).unwrap();
}

/// A sparse file one byte over the 1 MiB PEM limit, starting with `prefix`.
fn over_pem_limit(p: &Path, prefix: &[u8]) {
    let _ = fs::remove_file(p);
    sparse_file(p, prefix, (1 << 20) + 1);
}

/// A directory whose name is not UTF-8 (`bad\xffdir`) under `parent`.
fn non_utf8(parent: &Path, stem: &str) -> PathBuf {
    let mut name = stem.as_bytes().to_vec();
    name.push(0xff);
    name.extend_from_slice(b"dir");
    parent.join(std::ffi::OsStr::from_bytes(&name))
}

fn acme_s(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.acme)]
}
fn acme_entry1(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.acme), format!("resolver \"{RESOLVER}\" #1")]
}
fn cb_s(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.cb)]
}
fn cb_fullchain(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.cb), format!("live/{LINEAGE}/fullchain.pem")]
}
fn cb_privkey(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.cb), format!("live/{LINEAGE}/privkey.pem")]
}
fn cb_lineage(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.cb), format!("live/{LINEAGE}")]
}
fn lego_s(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.lego)]
}
fn lego_crt(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.lego), format!("certificates/{HOST}.crt")]
}
fn lego_key(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.lego), format!("certificates/{HOST}.key")]
}
fn files_cert(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.cert)]
}
fn files_key(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.key)]
}
fn files_chain(f: &Fx) -> Vec<String> {
    vec![Fx::s(&f.env.path("postfix-src/chain.crt"))]
}

/// Reasons for a FIFO (or any non-regular file) that must not be opened
/// for reading.
const NOT_REGULAR: &[&str] = &["fifo", "regular file", "special file", "not a file"];
const LOOP: &[&str] = &["symbolic links", "symlink loop"];
const DIRECTORY: &[&str] = &["is a directory"];
const TOO_LARGE: &[&str] = &["too large"];
const DENIED: &[&str] = &["permission denied"];
const ENCRYPTED: &[&str] = &["encrypted"];
const NO_CERT: &[&str] = &["no pem certificate"];
const NO_KEY: &[&str] = &["no pem private key"];
const BAD_B64_PEM: &[&str] = &["bad base64 inside a pem block"];
const MISMATCH: &[&str] = &["does not match"];
/// A source that yields nothing at all must say so.
const NOTHING: &[&str] = &[
    "no certificate",
    "holds no",
    "no lineage",
    "contains no",
    "is empty",
];

macro_rules! case {
    ($name:ident, $kind:ident, $code:expr, $level:ident, $needles:expr, $reasons:expr, $corrupt:expr) => {
        Case {
            name: stringify!($name),
            kind: Kind::$kind,
            nobody: false,
            verbose: false,
            corrupt: $corrupt,
            code: $code,
            level: Level::$level,
            needles: $needles,
            reasons: $reasons,
        }
    };
}

/// The table. Each entry: name, source type, exit status, line level, what
/// the line names, the reasons accepted, and the corruption.
fn corpus() -> Vec<Case> {
    let mut cases = vec![
        // ---- Traefik acme.json: the file as a whole ---------------------
        case!(
            acme_cut_after_first_byte,
            Traefik,
            1,
            Error,
            acme_s,
            &["truncated"],
            |f| {
                write(&f.acme, b"{");
            }
        ),
        case!(
            acme_cut_inside_base64,
            Traefik,
            1,
            Error,
            acme_s,
            &["truncated"],
            |f| {
                let text = fs::read(&f.acme).unwrap();
                let at = text.windows(4).position(|w| w == b"LS0t").unwrap() + 40;
                write(&f.acme, &text[..at]);
            }
        ),
        case!(
            acme_cut_last_brace,
            Traefik,
            1,
            Error,
            acme_s,
            &["truncated"],
            |f| {
                let text = fs::read(&f.acme).unwrap();
                write(&f.acme, &text[..text.len() - 1]);
            }
        ),
        case!(
            acme_plain_text,
            Traefik,
            1,
            Error,
            acme_s,
            &["invalid json"],
            |f| {
                write(&f.acme, "this is not JSON at all\n");
            }
        ),
        case!(
            acme_trailing_garbage,
            Traefik,
            1,
            Error,
            acme_s,
            &["invalid json"],
            |f| {
                let mut text = fs::read(&f.acme).unwrap();
                text.extend_from_slice(b"\n}}garbage");
                write(&f.acme, &text);
            }
        ),
        case!(
            acme_top_null,
            Traefik,
            1,
            Error,
            acme_s,
            &["top level is null"],
            |f| {
                write(&f.acme, "null");
            }
        ),
        case!(
            acme_top_number,
            Traefik,
            1,
            Error,
            acme_s,
            &["top level is a number"],
            |f| {
                write(&f.acme, "42");
            }
        ),
        case!(
            acme_random_bytes,
            Traefik,
            1,
            Error,
            acme_s,
            &["invalid json"],
            |f| {
                write(&f.acme, garbage());
            }
        ),
        case!(
            acme_nul_bytes,
            Traefik,
            1,
            Error,
            acme_s,
            &["invalid json"],
            |f| {
                write(&f.acme, nuls());
            }
        ),
        case!(acme_self_loop, Traefik, 1, Error, acme_s, LOOP, |f| {
            self_loop(&f.acme)
        }),
        case!(acme_fifo, Traefik, 1, Error, acme_s, NOT_REGULAR, |f| fifo(
            &f.acme
        )),
        case!(
            acme_one_byte_over_limit,
            Traefik,
            1,
            Error,
            acme_s,
            TOO_LARGE,
            |f| {
                sparse_file(&f.acme, b"{\"myresolver\": ", (256 << 20) + 1);
            }
        ),
        case!(
            acme_through_non_utf8_dir_truncated,
            Traefik,
            1,
            Error,
            acme_s,
            &["truncated"],
            |f| {
                let dir = non_utf8(&f.env.root, "real");
                fs::create_dir_all(&dir).unwrap();
                let text = fs::read(&f.acme).unwrap();
                fs::write(dir.join("store.dat"), &text[..text.len() / 3]).unwrap();
                fs::remove_file(&f.acme).unwrap();
                symlink(dir.join("store.dat"), &f.acme).unwrap();
            }
        ),
        // ---- Traefik acme.json: resolvers and entries -------------------
        case!(acme_resolver_null, Traefik, 0, Warn, acme_s, NOTHING, |f| {
            f.acme_raw(&json!({ RESOLVER: null }));
        }),
        case!(
            acme_resolver_is_string,
            Traefik,
            1,
            Error,
            |f| vec![Fx::s(&f.acme), format!("resolver \"{RESOLVER}\"")],
            &["not a traefik acme.json resolver"],
            |f| f.acme_raw(&json!({ RESOLVER: "le" }))
        ),
        case!(
            acme_certificates_null_entry,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["the entry is null"],
            |f| {
                f.acme_write(vec![Value::Null]);
            }
        ),
        case!(
            acme_entry_is_number,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["the entry is a number"],
            |f| {
                f.acme_write(vec![json!(7)]);
            }
        ),
        case!(
            acme_certificates_is_string,
            Traefik,
            1,
            Error,
            |f| vec![Fx::s(&f.acme), format!("resolver \"{RESOLVER}\"")],
            &["is a string, expected a list"],
            |f| f.acme_raw(&json!({ RESOLVER: {"Certificates": "none"} }))
        ),
        case!(
            acme_certificates_is_object,
            Traefik,
            1,
            Error,
            |f| vec![Fx::s(&f.acme), format!("resolver \"{RESOLVER}\"")],
            &["is an object, expected a list"],
            |f| f.acme_raw(&json!({ RESOLVER: {"Certificates": {}} }))
        ),
        case!(
            acme_certificate_null,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["no certificate"],
            |f| {
                f.acme_field("certificate", Value::Null);
            }
        ),
        case!(
            acme_key_null,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["no key"],
            |f| {
                f.acme_field("key", Value::Null);
            }
        ),
        case!(
            acme_certificate_number,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["`certificate` is a number"],
            |f| {
                f.acme_field("certificate", json!(12345));
            }
        ),
        case!(
            acme_certificate_list,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["`certificate` is a list"],
            |f| {
                f.acme_field("certificate", json!(["LS0t"]));
            }
        ),
        case!(
            acme_key_object,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["`key` is an object"],
            |f| {
                f.acme_field("key", json!({"pem": "x"}));
            }
        ),
        case!(
            acme_domain_null_and_key_broken,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["`key` is not valid base64"],
            |f| {
                let mut e = f.entry(&f.good);
                e["domain"] = Value::Null;
                e["key"] = json!("%%%% not base64 %%%%");
                f.acme_write(vec![e]);
            }
        ),
        case!(
            acme_v1_v2_mix_broken_v1_entry,
            Traefik,
            1,
            Error,
            |f| vec![Fx::s(&f.acme), "v1 Certificates #1".to_owned()],
            &["no key"],
            |f| {
                let good = f.entry(&f.good);
                f.acme_raw(&json!({
                    "Certificates": [{"Domain": {"Main": HOST}, "Certificate": B64.encode(f.good.fullchain_pem())}],
                    RESOLVER: {"Certificates": [good]},
                }));
            }
        ),
        case!(
            acme_certificate_bad_padding,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["not valid base64"],
            |f| {
                let mut c = B64.encode(f.good.fullchain_pem());
                while c.ends_with('=') {
                    c.pop();
                }
                c.pop();
                f.acme_field("certificate", json!(c));
            }
        ),
        case!(
            acme_certificate_mime_wrapped,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["not valid base64"],
            |f| {
                let c = B64.encode(f.good.fullchain_pem());
                let wrapped: Vec<String> = c
                    .as_bytes()
                    .chunks(76)
                    .map(|l| String::from_utf8(l.to_vec()).unwrap())
                    .collect();
                f.acme_field("certificate", json!(wrapped.join("\n")));
            }
        ),
        case!(
            acme_certificate_is_a_key,
            Traefik,
            1,
            Error,
            acme_entry1,
            NO_CERT,
            |f| {
                f.acme_field("certificate", json!(B64.encode(f.good.key_pem())));
            }
        ),
        case!(
            acme_certificate_pem_broken_base64,
            Traefik,
            1,
            Error,
            acme_entry1,
            BAD_B64_PEM,
            |f| {
                f.acme_field("certificate", json!(B64.encode(pem_broken_base64(&f.good))));
            }
        ),
        case!(
            acme_key_bad_characters,
            Traefik,
            1,
            Error,
            acme_entry1,
            &["`key` is not valid base64"],
            |f| {
                f.acme_field("key", json!("LS0tLS1CRUdJTi?*&^%$"));
            }
        ),
        case!(
            acme_key_base64_of_binary,
            Traefik,
            1,
            Error,
            acme_entry1,
            NO_KEY,
            |f| {
                f.acme_field("key", json!(B64.encode(garbage())));
            }
        ),
        case!(
            acme_key_traditional_encrypted,
            Traefik,
            1,
            Error,
            acme_entry1,
            ENCRYPTED,
            |f| {
                f.acme_field("key", json!(B64.encode(traditional_encrypted())));
            }
        ),
        // ---- Certbot ----------------------------------------------------
        case!(
            certbot_fullchain_text,
            Certbot,
            1,
            Error,
            cb_fullchain,
            NO_CERT,
            |f| {
                write(&f.cb_archive("fullchain"), "renewal failed, see the log\n");
            }
        ),
        case!(
            certbot_fullchain_broken_base64,
            Certbot,
            1,
            Error,
            cb_fullchain,
            BAD_B64_PEM,
            |f| {
                write(&f.cb_archive("fullchain"), pem_broken_base64(&f.good));
            }
        ),
        case!(
            certbot_fullchain_nul_bytes,
            Certbot,
            1,
            Error,
            cb_fullchain,
            NO_CERT,
            |f| {
                write(&f.cb_archive("fullchain"), nuls());
            }
        ),
        case!(
            certbot_fullchain_over_limit,
            Certbot,
            1,
            Error,
            cb_fullchain,
            TOO_LARGE,
            |f| {
                over_pem_limit(
                    &f.cb_archive("fullchain"),
                    f.good.fullchain_pem().as_bytes(),
                );
            }
        ),
        case!(
            certbot_fullchain_fifo,
            Certbot,
            1,
            Error,
            cb_fullchain,
            NOT_REGULAR,
            |f| {
                fifo(&f.cb_archive("fullchain"));
            }
        ),
        case!(
            certbot_fullchain_two_loop,
            Certbot,
            1,
            Error,
            cb_fullchain,
            LOOP,
            |f| {
                two_loop(&f.cb_live("fullchain"));
            }
        ),
        case!(
            certbot_privkey_self_loop,
            Certbot,
            1,
            Error,
            cb_privkey,
            LOOP,
            |f| {
                self_loop(&f.cb_live("privkey"));
            }
        ),
        case!(
            certbot_privkey_directory,
            Certbot,
            1,
            Error,
            cb_privkey,
            DIRECTORY,
            |f| {
                fs::remove_file(f.cb_archive("privkey")).unwrap();
                fs::create_dir(f.cb_archive("privkey")).unwrap();
            }
        ),
        case!(
            certbot_privkey_pkcs8_encrypted,
            Certbot,
            1,
            Error,
            cb_privkey,
            ENCRYPTED,
            |f| {
                write(&f.cb_archive("privkey"), pkcs8_encrypted());
            }
        ),
        case!(
            certbot_privkey_traditional_encrypted,
            Certbot,
            1,
            Error,
            cb_privkey,
            ENCRYPTED,
            |f| {
                write(&f.cb_archive("privkey"), traditional_encrypted());
            }
        ),
        case!(
            certbot_privkey_mismatch,
            Certbot,
            1,
            Error,
            cb_lineage,
            MISMATCH,
            |f| {
                let other = f.leaf(LeafSpec::new(&[HOST]));
                write(&f.cb_archive("privkey"), other.key_pem());
            }
        ),
        case!(certbot_root_self_loop, Certbot, 1, Error, cb_s, LOOP, |f| {
            fs::rename(&f.cb, f.env.path("letsencrypt.moved")).unwrap();
            self_loop(&f.cb);
        }),
        case!(
            certbot_empty_live_dir,
            Certbot,
            0,
            Warn,
            cb_s,
            NOTHING,
            |f| {
                fs::remove_dir_all(f.cb.join("live").join(LINEAGE)).unwrap();
            }
        ),
        case!(
            certbot_non_utf8_lineage_broken_key,
            Certbot,
            1,
            Error,
            |f| vec![Fx::s(&f.cb), "live/mail".to_owned()],
            NO_KEY,
            |f| {
                write(&f.cb_archive("privkey"), "not a key\n");
                let live = f.cb.join("live");
                fs::rename(live.join(LINEAGE), non_utf8(&live, "mail")).unwrap();
            }
        ),
        Case {
            verbose: true,
            ..case!(
                certbot_expired,
                Certbot,
                0,
                Any,
                cb_lineage,
                &["expired"],
                |f| {
                    f.cb_rewrite(&f.leaf(LeafSpec::new(&[HOST]).expired()));
                }
            )
        },
        // ---- lego -------------------------------------------------------
        case!(
            lego_second_crt_without_key,
            Lego,
            1,
            Error,
            |f| vec![Fx::s(&f.lego), format!("certificates/{OTHER}.key")],
            &["not found"],
            |f| {
                let o = f.leaf(LeafSpec::new(&[OTHER]));
                write(
                    &f.lego.join(format!("certificates/{OTHER}.crt")),
                    o.fullchain_pem(),
                );
            }
        ),
        case!(
            lego_non_utf8_crt_without_key,
            Lego,
            1,
            Error,
            |f| vec![Fx::s(&f.lego), "certificates/bad".to_owned()],
            &["not found"],
            |f| {
                let mut name = b"bad".to_vec();
                name.push(0xff);
                name.extend_from_slice(b".crt");
                let p = f
                    .lego
                    .join("certificates")
                    .join(std::ffi::OsStr::from_bytes(&name));
                write(&p, f.leaf(LeafSpec::new(&[OTHER])).fullchain_pem());
            }
        ),
        case!(
            lego_key_random_bytes,
            Lego,
            1,
            Error,
            lego_key,
            NO_KEY,
            |f| {
                write(&f.lego_file("key"), garbage());
            }
        ),
        case!(lego_crt_is_a_key, Lego, 1, Error, lego_crt, NO_CERT, |f| {
            write(&f.lego_file("crt"), f.good.key_pem());
        }),
        case!(
            lego_key_mismatch,
            Lego,
            1,
            Error,
            |f| vec![Fx::s(&f.lego), format!("certificates/{HOST}.crt")],
            MISMATCH,
            |f| {
                write(
                    &f.lego_file("key"),
                    f.leaf(LeafSpec::new(&[HOST])).key_pem(),
                );
            }
        ),
        case!(lego_key_two_loop, Lego, 1, Error, lego_key, LOOP, |f| {
            two_loop(&f.lego_file("key"))
        }),
        case!(lego_key_fifo, Lego, 1, Error, lego_key, NOT_REGULAR, |f| {
            fifo(&f.lego_file("key"))
        }),
        case!(
            lego_key_directory,
            Lego,
            1,
            Error,
            lego_key,
            DIRECTORY,
            |f| dir_instead(&f.lego_file("key"))
        ),
        case!(
            lego_key_over_limit,
            Lego,
            1,
            Error,
            lego_key,
            TOO_LARGE,
            |f| {
                over_pem_limit(&f.lego_file("key"), f.good.key_pem().as_bytes());
            }
        ),
        case!(
            lego_crt_pem_broken_base64,
            Lego,
            1,
            Error,
            lego_crt,
            BAD_B64_PEM,
            |f| {
                write(&f.lego_file("crt"), pem_broken_base64(&f.good));
            }
        ),
        Case {
            verbose: true,
            ..case!(
                lego_not_yet_valid,
                Lego,
                0,
                Any,
                lego_crt,
                &["not yet valid"],
                |f| {
                    let l = f.leaf(LeafSpec::new(&[HOST]).future());
                    write(&f.lego_file("crt"), l.fullchain_pem());
                    write(&f.lego_file("key"), l.key_pem());
                }
            )
        },
        Case {
            verbose: true,
            ..case!(
                lego_wrong_names,
                Lego,
                0,
                Any,
                lego_crt,
                &["does not cover"],
                |f| {
                    let l = f.leaf(LeafSpec::new(&["smtp.example.com"]));
                    write(&f.lego_file("crt"), l.fullchain_pem());
                    write(&f.lego_file("key"), l.key_pem());
                }
            )
        },
        // ---- Plain files ------------------------------------------------
        case!(
            files_cert_broken_base64,
            Files,
            1,
            Error,
            files_cert,
            BAD_B64_PEM,
            |f| {
                write(&f.cert, pem_broken_base64(&f.good));
            }
        ),
        case!(
            files_cert_is_the_key,
            Files,
            1,
            Error,
            files_cert,
            NO_CERT,
            |f| {
                write(&f.cert, f.good.key_pem());
            }
        ),
        case!(
            files_cert_random_bytes,
            Files,
            1,
            Error,
            files_cert,
            NO_CERT,
            |f| {
                write(&f.cert, garbage());
            }
        ),
        case!(
            files_cert_two_loop,
            Files,
            1,
            Error,
            files_cert,
            LOOP,
            |f| two_loop(&f.cert)
        ),
        case!(
            files_cert_self_loop,
            Files,
            1,
            Error,
            files_cert,
            LOOP,
            |f| self_loop(&f.cert)
        ),
        case!(
            files_key_holds_a_certificate,
            Files,
            1,
            Error,
            files_key,
            &["holds no rsa, ec or pkcs#8 private key"],
            |f| {
                write(&f.key, f.good.cert_pem());
            }
        ),
        case!(
            files_key_traditional_encrypted,
            Files,
            1,
            Error,
            files_key,
            ENCRYPTED,
            |f| {
                write(&f.key, traditional_encrypted());
            }
        ),
        case!(
            files_key_nul_bytes,
            Files,
            1,
            Error,
            files_key,
            NO_KEY,
            |f| write(&f.key, nuls())
        ),
        case!(
            files_key_fifo,
            Files,
            1,
            Error,
            files_key,
            NOT_REGULAR,
            |f| fifo(&f.key)
        ),
        case!(
            files_key_directory,
            Files,
            1,
            Error,
            files_key,
            DIRECTORY,
            |f| dir_instead(&f.key)
        ),
        case!(
            files_key_over_limit,
            Files,
            1,
            Error,
            files_key,
            TOO_LARGE,
            |f| {
                over_pem_limit(&f.key, f.good.key_pem().as_bytes());
            }
        ),
        case!(
            files_chain_missing,
            Files,
            1,
            Error,
            files_chain,
            &["not found"],
            |f| {
                let chain = f.env.path("postfix-src/chain.crt");
                *f.files_extra.lock().unwrap() = format!("chain = {}\n", qp(&chain));
            }
        ),
        case!(
            files_chain_random_bytes,
            Files,
            1,
            Error,
            files_chain,
            NO_CERT,
            |f| {
                let chain = f.env.path("postfix-src/chain.crt");
                write(&chain, garbage());
                *f.files_extra.lock().unwrap() = format!("chain = {}\n", qp(&chain));
            }
        ),
        case!(
            files_key_through_non_utf8_dir_garbage,
            Files,
            1,
            Error,
            files_key,
            NO_KEY,
            |f| {
                let dir = non_utf8(&f.env.root, "keys");
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("mail.sec"), "garbage\n").unwrap();
                fs::remove_file(&f.key).unwrap();
                symlink(dir.join("mail.sec"), &f.key).unwrap();
            }
        ),
        Case {
            verbose: true,
            ..case!(
                files_expired,
                Files,
                0,
                Any,
                files_cert,
                &["expired"],
                |f| {
                    let l = f.leaf(LeafSpec::new(&[HOST]).expired());
                    write(&f.cert, l.fullchain_pem());
                    write(&f.key, l.key_pem());
                }
            )
        },
    ];
    // ---- Permission denied, as an unprivileged user ---------------------
    cases.extend([
        Case {
            nobody: true,
            ..case!(
                acme_permission_denied,
                Traefik,
                1,
                Error,
                acme_s,
                DENIED,
                |f| {
                    set_mode(&f.acme, 0o000);
                }
            )
        },
        Case {
            nobody: true,
            ..case!(
                certbot_privkey_permission_denied,
                Certbot,
                1,
                Error,
                cb_privkey,
                DENIED,
                |f| {
                    set_mode(&f.cb_archive("privkey"), 0o000);
                }
            )
        },
        Case {
            nobody: true,
            ..case!(
                lego_dir_permission_denied,
                Lego,
                1,
                Error,
                lego_s,
                DENIED,
                |f| {
                    set_mode(&f.lego.join("certificates"), 0o000);
                }
            )
        },
        Case {
            nobody: true,
            ..case!(
                files_cert_permission_denied,
                Files,
                1,
                Error,
                files_cert,
                DENIED,
                |f| {
                    set_mode(&f.cert, 0o000);
                }
            )
        },
    ]);
    cases
}

/// Runs the whole table, four cases at a time, and reports every failure.
#[test]
fn corpus_of_malformed_sources() {
    let cases = corpus();
    let names: std::collections::HashSet<_> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    let nobody_ok = have_setpriv();
    if !nobody_ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "setpriv is required for the permission cases in CI"
        );
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Outcomes>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if case.nobody && !nobody_ok {
                        eprintln!("!!! SKIPPING {}: setpriv not found", case.name);
                        continue;
                    }
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_case(case)))
                            .unwrap_or_else(|p| {
                                Err(p
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                                    .unwrap_or_else(|| "panic".to_owned()))
                            });
                    results.lock().unwrap().push((case.name, case.kind, r));
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(n, _, _)| *n);
    let failed: Vec<_> = results.iter().filter(|(_, _, r)| r.is_err()).collect();
    for kind in [Kind::Traefik, Kind::Certbot, Kind::Lego, Kind::Files] {
        let n = results.iter().filter(|(_, k, _)| *k == kind).count();
        eprintln!("malformed corpus: {kind:?}: {n} cases");
    }
    for (name, _, r) in &failed {
        eprintln!(
            "\n===== FAILED: {name} =====\n{}",
            r.as_ref().err().unwrap()
        );
    }
    eprintln!(
        "\nmalformed corpus: {} cases, {} passed, {} failed{}",
        results.len(),
        results.len() - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                failed
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    assert!(
        failed.is_empty(),
        "{} of {} malformed-input cases failed: {}",
        failed.len(),
        results.len(),
        failed
            .iter()
            .map(|(n, _, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    );
}

// ---------------------------------------------------------------------------
// Bespoke tests
// ---------------------------------------------------------------------------

/// acme.json cut at many points (every 1/24th of the file, and the first
/// and last few bytes): always exit 1 naming the file, never a panic,
/// postfix's files untouched.
#[test]
fn acme_truncated_at_many_cut_points() {
    let fx = Fx::new(Kind::Traefik);
    let o = fx.leaf(LeafSpec::new(&[OTHER]).days(30));
    fx.config(Kind::Traefik, &o);
    let r = fx.run(false, &["sync"]);
    assert_eq!(r.code, Some(0), "{}", r.describe());
    let before = identity(&fx.postfix);
    let full = fs::read(&fx.acme).unwrap();
    let mut cuts: Vec<usize> = (1..24).map(|i| full.len() * i / 24).collect();
    cuts.extend([1, 2, 3, full.len() - 2, full.len() - 1]);
    for cut in cuts {
        write(&fx.acme, &full[..cut]);
        let r = fx.run(false, &["sync"]);
        assert!(
            !r.hung && !r.stderr.contains("panicked"),
            "{}",
            r.describe()
        );
        assert_eq!(r.code, Some(1), "cut at {cut}: {}", r.describe());
        let path = Fx::s(&fx.acme);
        assert!(
            r.stderr
                .lines()
                .any(|l| l.contains("ERROR") && l.contains(&path)),
            "cut at {cut}: no error line names the file\n{}",
            r.describe()
        );
        assert_eq!(identity(&fx.postfix), before, "cut at {cut}");
    }
}

/// Random byte flips of a valid acme.json (seeded): exit 0 or 1, never a
/// panic or a hang, and postfix's files are either untouched or still hold
/// the good certificate (a flip inside whitespace changes nothing).
#[test]
fn acme_byte_flips() {
    let fx = Fx::new(Kind::Traefik);
    let o = fx.leaf(LeafSpec::new(&[OTHER]).days(30));
    fx.config(Kind::Traefik, &o);
    assert_eq!(fx.run(false, &["sync"]).code, Some(0));
    let before = identity(&fx.postfix);
    let full = fs::read(&fx.acme).unwrap();
    for round in 0..24u64 {
        let mut text = full.clone();
        let r = noise(round + 11, 16);
        for pair in r.chunks(2) {
            let at = (usize::from(pair[0]) << 8 | usize::from(pair[1])) % text.len();
            text[at] ^= 1 << (pair[0] % 8);
        }
        write(&fx.acme, &text);
        let r = fx.run(false, &["sync"]);
        assert!(
            !r.hung && !r.stderr.contains("panicked"),
            "{}",
            r.describe()
        );
        assert!(
            matches!(r.code, Some(0 | 1)),
            "round {round}: {}",
            r.describe()
        );
        assert_eq!(identity(&fx.postfix), before, "round {round}");
    }
}

/// `check` on a FIFO in place of acme.json must not hang either, and must
/// write nothing.
#[test]
fn check_does_not_hang_on_a_fifo() {
    let fx = Fx::new(Kind::Traefik);
    let o = fx.leaf(LeafSpec::new(&[OTHER]).days(30));
    fx.config(Kind::Traefik, &o);
    assert_eq!(fx.run(false, &["sync"]).code, Some(0));
    let before = identity(&fx.postfix);
    fifo(&fx.acme);
    let r = fx.run(false, &["check"]);
    assert!(!r.hung, "check hung on a FIFO\n{}", r.describe());
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert_eq!(identity(&fx.postfix), before);
}

/// A symlink loop as the source path of each directory source: one error
/// each, and both other targets are still served.
#[test]
fn lego_root_two_loop_and_files_both_broken() {
    let fx = Fx::new(Kind::Lego);
    let o = fx.leaf(LeafSpec::new(&[OTHER]).days(30));
    fx.config(Kind::Lego, &o);
    assert_eq!(fx.run(false, &["sync"]).code, Some(0));
    let before = identity(&fx.postfix);
    fs::rename(&fx.lego, fx.env.path("legodir.moved")).unwrap();
    two_loop(&fx.lego);
    let r = fx.run(false, &["sync"]);
    assert!(!r.hung, "{}", r.describe());
    assert_eq!(r.code, Some(1), "{}", r.describe());
    let path = Fx::s(&fx.lego);
    assert!(
        r.stderr
            .lines()
            .any(|l| line_matches(l, std::slice::from_ref(&path), LOOP, Level::Error)),
        "{}",
        r.describe()
    );
    assert_eq!(identity(&fx.postfix), before);
    fx.other.assert_installed(&o);
}
