//! `acme-floor read|parse|base64|der FILE [--threads N]` and
//! `acme-floor stages FILE [--iterations N] [--threads N]`
//!
//! The floor of acme.json ingest: the least work any reader that validates a
//! Traefik acme.json must do, one stage at a time, so that `mxkeys check` can
//! be timed against it in the same run (bench/acme-ingest.sh, BENCHMARKS.md).
//! Rule: each stage does exactly the work it names and nothing more (no
//! selection, no chain or key checks, no owned copy of any base64 field), and
//! every stage folds what it produced into a printed tally so the compiler
//! cannot drop the work. Each command includes the stages before it:
//!
//! - `read`: the whole file into memory;
//! - `parse`: + serde_json into borrowed strings (resolver -> `Certificates`
//!   -> each entry's `certificate`, `key`, `domain.main`);
//! - `base64`: + base64 decoding of every entry's `certificate` and `key`,
//!   whole;
//! - `der`: + PEM -> DER of every leaf (the first certificate of the chain)
//!   and an x509-parser parse of that DER.
//!
//! `--threads N` runs the per-entry work (base64, PEM, DER) on a rayon pool of
//! N threads; reading and parsing stay serial. `stages` times each stage alone
//! in one process and prints the medians as a table (stderr) and JSON
//! (stdout). Only dependencies mxkeys itself uses.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Add;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rayon::prelude::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use x509_parser::prelude::{FromDer as _, X509Certificate};

const USAGE: &str = "usage: acme-floor read|parse|base64|der FILE [--threads N]
       acme-floor stages FILE [--iterations N] [--threads N]

The least work a validating reader of a Traefik acme.json does, one stage at a
time, each command including the ones before it:
  read     read the whole FILE into memory
  parse    + serde_json parse into borrowed strings (Certificates: certificate,
           key, domain.main)
  base64   + base64-decode every entry's certificate and key
  der      + PEM -> DER of every leaf, and an x509-parser parse of it
  stages   time each stage alone (read; parse of the bytes in memory; base64 of
           the parsed fields; PEM -> DER of the decoded chains; DER parse of the
           leaves) N times (default 20) in one process; medians as a table on
           stderr and JSON on stdout
--threads N (default 1): the per-entry work of base64, der and stages on a
rayon pool of N threads; read and parse stay serial.
Prints a tally of the work (entries, bytes, leaves, a digest of the leaves'
validity) so that none of it can be optimised away.";

// ---------------------------------------------------------------------------
// The acme.json shape: only what a validating reader needs, borrowed.

/// One resolver. Its `Account` and every other field are skipped (serde_json
/// still checks their syntax).
#[derive(Deserialize)]
struct Resolver<'a> {
    /// Traefik writes `null` for a resolver without certificates.
    #[serde(rename = "Certificates", borrow, default)]
    certificates: Option<Vec<Entry<'a>>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    domain: Domain<'a>,
    /// base64 of the PEM chain; borrowed from the file unless it holds a JSON
    /// escape (base64 never does).
    #[serde(borrow)]
    certificate: Cow<'a, str>,
    /// base64 of the PEM private key.
    #[serde(borrow)]
    key: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Domain<'a> {
    #[serde(borrow)]
    main: Cow<'a, str>,
}

/// The whole file: resolver name -> resolver. The names (a few bytes each)
/// are the only strings copied.
type Acme<'a> = BTreeMap<String, Resolver<'a>>;

// ---------------------------------------------------------------------------
// What the work produced.

/// Counts and a digest of everything a stage produced; printed at the end.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Tally {
    entries: u64,
    /// Bytes of the `certificate` and `key` fields (base64 text).
    field_bytes: u64,
    /// Bytes after base64 decoding (PEM text).
    decoded_bytes: u64,
    leaves: u64,
    der_bytes: u64,
    /// `certificate`, `key` or `domain.main` fields the parse had to copy
    /// (0 unless one holds a JSON escape).
    owned_fields: u64,
    /// Sum (wrapping) of what each stage saw: the last decoded byte of each
    /// field, each leaf's notAfter (Unix seconds) and extension count.
    digest: u64,
}

impl Add for Tally {
    type Output = Tally;
    fn add(self, o: Tally) -> Tally {
        Tally {
            entries: self.entries + o.entries,
            field_bytes: self.field_bytes + o.field_bytes,
            decoded_bytes: self.decoded_bytes + o.decoded_bytes,
            leaves: self.leaves + o.leaves,
            der_bytes: self.der_bytes + o.der_bytes,
            owned_fields: self.owned_fields + o.owned_fields,
            digest: self.digest.wrapping_add(o.digest),
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} entries, {} field bytes, {} owned fields, {} decoded bytes, {} leaves, {} DER bytes, digest {:016x}",
            self.entries,
            self.field_bytes,
            self.owned_fields,
            self.decoded_bytes,
            self.leaves,
            self.der_bytes,
            self.digest
        )
    }
}

// ---------------------------------------------------------------------------
// The stages.

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Stage {
    Read,
    Parse,
    Base64,
    Der,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Read => "read",
            Stage::Parse => "parse",
            Stage::Base64 => "base64",
            Stage::Der => "der",
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn parse(bytes: &[u8]) -> Result<Acme<'_>, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("acme.json: {e}"))
}

/// Every entry's certificate list, resolver by resolver.
fn lists<'f, 'a>(acme: &'f Acme<'a>) -> impl Iterator<Item = &'f [Entry<'a>]> {
    acme.values()
        .map(|r| r.certificates.as_deref().unwrap_or_default())
}

/// Names an entry in an error without any of its key material.
fn which(index: usize, entry: &Entry<'_>) -> String {
    format!("acme.json entry {index} ({})", entry.domain.main)
}

/// Decodes an entry's `certificate` into `chain` and its `key` into `key`,
/// both cleared first (the buffers are reused from entry to entry).
fn decode(
    index: usize,
    entry: &Entry<'_>,
    chain: &mut Vec<u8>,
    key: &mut Vec<u8>,
) -> Result<Tally, String> {
    chain.clear();
    key.clear();
    B64.decode_vec(entry.certificate.as_bytes(), chain)
        .map_err(|e| format!("{}: certificate: base64: {e}", which(index, entry)))?;
    // The error names no byte of the key.
    B64.decode_vec(entry.key.as_bytes(), key)
        .map_err(|_| format!("{}: key: not valid base64", which(index, entry)))?;
    Ok(Tally {
        entries: 1,
        field_bytes: (entry.certificate.len() + entry.key.len()) as u64,
        decoded_bytes: (chain.len() + key.len()) as u64,
        digest: u64::from(chain.last().copied().unwrap_or(0))
            + u64::from(key.last().copied().unwrap_or(0)),
        ..Tally::default()
    })
}

/// PEM -> DER of the chain's first certificate (the leaf).
fn leaf_der(chain: &[u8]) -> Result<CertificateDer<'static>, String> {
    CertificateDer::from_pem_slice(chain).map_err(|e| format!("leaf PEM: {e}"))
}

/// An x509-parser parse of a leaf's DER.
fn parse_der(der: &[u8]) -> Result<Tally, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("leaf DER: {e}"))?;
    let not_after = cert.validity().not_after.timestamp() as u64;
    let extensions = cert.extensions().len() as u64;
    Ok(Tally {
        leaves: 1,
        der_bytes: der.len() as u64,
        digest: not_after.wrapping_add(extensions),
        ..Tally::default()
    })
}

/// The per-entry work of `stage` (Base64 or Der) on one entry.
fn entry_work(
    stage: Stage,
    index: usize,
    entry: &Entry<'_>,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> Result<Tally, String> {
    let mut tally = decode(index, entry, &mut bufs.0, &mut bufs.1)?;
    if stage == Stage::Der {
        let der = leaf_der(&bufs.0).map_err(|e| format!("{}: {e}", which(index, entry)))?;
        tally = tally + parse_der(&der).map_err(|e| format!("{}: {e}", which(index, entry)))?;
    }
    Ok(tally)
}

/// Runs `f` on every item, serially when `pool` is None, else on the pool
/// (one pair of reusable buffers per worker), and sums the tallies.
fn each<T: Sync>(
    pool: Option<&rayon::ThreadPool>,
    items: &[T],
    f: impl Fn(usize, &T, &mut (Vec<u8>, Vec<u8>)) -> Result<Tally, String> + Sync,
) -> Result<Tally, String> {
    match pool {
        None => {
            let mut bufs = (Vec::new(), Vec::new());
            let mut tally = Tally::default();
            for (i, item) in items.iter().enumerate() {
                tally = tally + f(i, item, &mut bufs)?;
            }
            Ok(tally)
        }
        Some(pool) => pool.install(|| {
            items
                .par_iter()
                .enumerate()
                .map_init(
                    || (Vec::new(), Vec::new()),
                    |bufs, (i, item)| f(i, item, bufs),
                )
                .try_reduce(Tally::default, |a, b| Ok(a + b))
        }),
    }
}

/// One command: every stage up to and including `stage`, once.
fn run(stage: Stage, path: &Path, pool: Option<&rayon::ThreadPool>) -> Result<Tally, String> {
    let bytes = read(path)?;
    run_bytes(stage, &bytes, pool)
}

/// The stages after `read`, on the file's bytes.
fn run_bytes(
    stage: Stage,
    bytes: &[u8],
    pool: Option<&rayon::ThreadPool>,
) -> Result<Tally, String> {
    let mut tally = Tally {
        field_bytes: bytes.len() as u64,
        ..Tally::default()
    };
    if stage == Stage::Read {
        // Fold the content in: reading without looking could be elided.
        tally.digest = bytes
            .iter()
            .step_by(4096)
            .fold(0u64, |d, b| d.rotate_left(1) ^ u64::from(*b));
        return Ok(tally);
    }
    let acme = parse(bytes)?;
    if stage == Stage::Parse {
        let mut t = Tally::default();
        for list in lists(&acme) {
            for e in list {
                t.entries += 1;
                t.field_bytes += (e.certificate.len() + e.key.len()) as u64;
                t.digest = t.digest.wrapping_add(e.domain.main.len() as u64);
                t.owned_fields += [&e.certificate, &e.key, &e.domain.main]
                    .iter()
                    .filter(|c| matches!(c, Cow::Owned(_)))
                    .count() as u64;
            }
        }
        return Ok(t);
    }
    let mut t = Tally::default();
    for list in lists(&acme) {
        t = t + each(pool, list, |i, e, bufs| entry_work(stage, i, e, bufs))?;
    }
    Ok(t)
}

// ---------------------------------------------------------------------------
// `stages`: each stage alone, N times, in one process.

struct Timing {
    name: &'static str,
    what: &'static str,
    times: Vec<Duration>,
}

impl Timing {
    fn median(&self) -> Duration {
        let mut t = self.times.clone();
        t.sort();
        match t.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => t[n / 2],
            n => (t[n / 2 - 1] + t[n / 2]) / 2,
        }
    }
    fn min(&self) -> Duration {
        self.times.iter().min().copied().unwrap_or_default()
    }
}

fn time<R>(times: &mut Vec<Duration>, f: impl FnOnce() -> Result<R, String>) -> Result<R, String> {
    let start = Instant::now();
    let r = f()?;
    times.push(start.elapsed());
    Ok(r)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn stages(path: &Path, iterations: usize, threads: usize) -> Result<(), String> {
    let pool = make_pool(threads)?;
    let pool = pool.as_ref();
    let mut timings = Vec::new();
    let mut check = Tally::default();

    // read: the whole file into a fresh buffer, as a one-shot reader does.
    let mut times = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..iterations {
        drop(std::mem::take(&mut bytes));
        bytes = time(&mut times, || read(path))?;
    }
    timings.push(Timing {
        name: "read",
        what: "whole file into memory (std::fs::read)",
        times,
    });
    check.field_bytes = bytes.len() as u64;

    // parse: of the bytes in memory.
    let mut times = Vec::new();
    for _ in 0..iterations {
        let acme = time(&mut times, || parse(&bytes))?;
        drop(acme);
    }
    timings.push(Timing {
        name: "parse",
        what: "serde_json, borrowed strings",
        times,
    });
    let acme = parse(&bytes)?;
    let entries: Vec<&Entry<'_>> = lists(&acme).flatten().collect();

    // base64: certificate and key of every entry, whole, into reused buffers.
    let mut times = Vec::new();
    for _ in 0..iterations {
        let t = time(&mut times, || {
            each(pool, &entries, |i, e, bufs| {
                decode(i, e, &mut bufs.0, &mut bufs.1)
            })
        })?;
        check.entries = t.entries;
        check.field_bytes = t.field_bytes;
        check.decoded_bytes = t.decoded_bytes;
        check.digest = t.digest;
    }
    timings.push(Timing {
        name: "base64",
        what: "certificate + key fields, whole",
        times,
    });
    let chains: Vec<Vec<u8>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut chain = Vec::new();
            decode(i, e, &mut chain, &mut Vec::new()).map(|_| chain)
        })
        .collect::<Result<_, _>>()?;

    // PEM -> DER of every leaf.
    let mut times = Vec::new();
    for _ in 0..iterations {
        let t = time(&mut times, || {
            each(pool, &chains, |i, chain, _| {
                let der = leaf_der(chain).map_err(|e| format!("entry {i}: {e}"))?;
                Ok(Tally {
                    leaves: 1,
                    der_bytes: der.len() as u64,
                    ..Tally::default()
                })
            })
        })?;
        check.leaves = t.leaves;
        check.der_bytes = t.der_bytes;
    }
    timings.push(Timing {
        name: "pem",
        what: "PEM -> DER of each leaf (rustls-pki-types)",
        times,
    });
    let leaves: Vec<CertificateDer<'static>> = chains
        .iter()
        .enumerate()
        .map(|(i, chain)| leaf_der(chain).map_err(|e| format!("entry {i}: {e}")))
        .collect::<Result<_, _>>()?;

    // DER parse of every leaf.
    let mut times = Vec::new();
    let mut der_digest = 0;
    for _ in 0..iterations {
        let t = time(&mut times, || {
            each(pool, &leaves, |i, der, _| {
                parse_der(der).map_err(|e| format!("entry {i}: {e}"))
            })
        })?;
        der_digest = t.digest;
    }
    check.digest = check.digest.wrapping_add(der_digest);
    timings.push(Timing {
        name: "der",
        what: "X509Certificate::from_der of each leaf (x509-parser)",
        times,
    });

    let total: Duration = timings.iter().map(Timing::median).sum();
    eprintln!(
        "acme-floor stages: {} ({} bytes), {iterations} iterations, {threads} thread(s) for base64/pem/der",
        path.display(),
        bytes.len()
    );
    eprintln!("{:<7} {:>10} {:>10}  what", "stage", "median", "min");
    for t in &timings {
        eprintln!(
            "{:<7} {:>7.2} ms {:>7.2} ms  {}",
            t.name,
            ms(t.median()),
            ms(t.min()),
            t.what
        );
    }
    eprintln!(
        "{:<7} {:>7.2} ms {:>10}  sum of the medians",
        "total",
        ms(total),
        ""
    );
    eprintln!("work:   {check}");

    let stages: serde_json::Map<String, serde_json::Value> = timings
        .iter()
        .map(|t| {
            (
                t.name.to_owned(),
                serde_json::json!({
                    "median_ms": ms(t.median()),
                    "min_ms": ms(t.min()),
                    "what": t.what,
                }),
            )
        })
        .collect();
    let json = serde_json::json!({
        "file": path.display().to_string(),
        "bytes": bytes.len(),
        "iterations": iterations,
        "threads": threads,
        "stages": stages,
        "total_median_ms": ms(total),
        "work": {
            "entries": check.entries,
            "field_bytes": check.field_bytes,
            "decoded_bytes": check.decoded_bytes,
            "leaves": check.leaves,
            "der_bytes": check.der_bytes,
            "digest": format!("{:016x}", check.digest),
        },
    });
    println!("{json}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Command line.

/// None for one thread: the work then runs on the main thread, no pool.
fn make_pool(threads: usize) -> Result<Option<rayon::ThreadPool>, String> {
    if threads <= 1 {
        return Ok(None);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map(Some)
        .map_err(|e| format!("rayon pool of {threads} threads: {e}"))
}

enum Command {
    One(Stage),
    Stages,
}

struct Args {
    command: Command,
    file: PathBuf,
    threads: usize,
    iterations: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut command = None;
    let mut file = None;
    let mut threads = None;
    let mut iterations = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut number = |name: &str| -> Result<usize, String> {
            let v = inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))?;
            match v.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(n),
                _ => Err(format!("{name}: {v:?} is not a positive integer")),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--threads" | "-j" => threads = Some(number("--threads")?),
            "--iterations" | "-n" => iterations = Some(number("--iterations")?),
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ if command.is_none() => {
                command = Some(match arg.as_str() {
                    "read" => Command::One(Stage::Read),
                    "parse" => Command::One(Stage::Parse),
                    "base64" => Command::One(Stage::Base64),
                    "der" => Command::One(Stage::Der),
                    "stages" => Command::Stages,
                    other => return Err(format!("unknown command {other:?}")),
                });
            }
            _ if file.is_none() => file = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let command = command.ok_or("a command is needed")?;
    let file = file.ok_or("FILE is needed")?;
    match command {
        Command::One(Stage::Read | Stage::Parse) if threads.is_some_and(|n| n > 1) => {
            return Err(
                "--threads applies to base64, der and stages only (read and parse are serial)"
                    .into(),
            );
        }
        Command::One(_) if iterations.is_some() => {
            return Err("--iterations applies to stages only".into());
        }
        _ => {}
    }
    Ok(Args {
        command,
        file,
        threads: threads.unwrap_or(1),
        iterations: iterations.unwrap_or(20),
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("acme-floor: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match args.command {
        Command::Stages => stages(&args.file, args.iterations, args.threads),
        Command::One(stage) => make_pool(args.threads).and_then(|pool| {
            let tally = run(stage, &args.file, pool.as_ref())?;
            println!("acme-floor {}: {tally}", stage.name());
            Ok(())
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("acme-floor: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mxkeys_bench::acme::{Spec, generate};

    fn generated(count: usize) -> Vec<u8> {
        let mut buf = Vec::new();
        generate(
            &Spec {
                count,
                ..Spec::default()
            },
            &mut buf,
        )
        .unwrap();
        buf
    }

    #[test]
    fn every_stage_sees_every_entry_and_two_threads_do_the_same_work_as_one() {
        let bytes = generated(12);
        let pool = make_pool(2).unwrap();
        assert!(pool.is_some());
        for stage in [Stage::Parse, Stage::Base64, Stage::Der] {
            let one = run_bytes(stage, &bytes, None).unwrap();
            let two = run_bytes(stage, &bytes, pool.as_ref()).unwrap();
            assert_eq!(one, two, "{stage:?}");
            assert_eq!(one.entries, 12, "{stage:?}");
            assert_eq!(one.owned_fields, 0, "{stage:?}: a field was copied");
        }
        let der = run_bytes(Stage::Der, &bytes, None).unwrap();
        assert_eq!(der.leaves, 12);
        assert!(der.der_bytes > 12 * 300 && der.decoded_bytes > der.der_bytes);
    }

    #[test]
    fn a_field_with_a_json_escape_is_copied_and_counted_not_rejected() {
        let text = String::from_utf8(generated(3)).unwrap();
        let escaped = text.replacen("\"main\": \"", "\"main\": \"\\u0078", 1);
        assert_ne!(escaped, text);
        let t = run_bytes(Stage::Parse, escaped.as_bytes(), None).unwrap();
        assert_eq!((t.entries, t.owned_fields), (3, 1));
    }

    #[test]
    fn a_key_that_is_not_base64_is_named_by_its_entry_without_its_bytes() {
        let json = br#"{"le": {"Certificates": [
            {"domain": {"main": "a.example"}, "certificate": "", "key": "QUFB"},
            {"domain": {"main": "b.example"}, "certificate": "", "key": "secret!material"}
        ]}}"#;
        let e = run_bytes(Stage::Base64, json, None).unwrap_err();
        assert_eq!(e, "acme.json entry 1 (b.example): key: not valid base64");
    }

    #[test]
    fn a_resolver_without_certificates_has_no_entries_and_bad_json_is_an_error() {
        let t = run_bytes(
            Stage::Der,
            br#"{"le": {"Certificates": null}, "x": {}}"#,
            None,
        )
        .unwrap();
        assert_eq!(t, Tally::default());
        let e =
            run_bytes(Stage::Parse, br#"{"le": {"Certificates": [{"domain""#, None).unwrap_err();
        assert!(e.starts_with("acme.json: "), "{e}");
    }

    #[test]
    fn a_chain_without_a_certificate_fails_the_der_stage_only() {
        // "not pem" in base64: decodes fine, holds no PEM section.
        let json = br#"{"le": {"Certificates": [
            {"domain": {"main": "a.example"}, "certificate": "bm90IHBlbQ==", "key": "QUFB"}
        ]}}"#;
        assert_eq!(run_bytes(Stage::Base64, json, None).unwrap().entries, 1);
        let e = run_bytes(Stage::Der, json, None).unwrap_err();
        assert!(
            e.starts_with("acme.json entry 0 (a.example): leaf PEM: "),
            "{e}"
        );
    }
}
