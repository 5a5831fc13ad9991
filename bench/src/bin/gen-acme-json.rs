//! `gen-acme-json [--count N] [--target NAME] [--key-format sec1|pkcs8] [--scts N] [--seed S] OUTPUT`
//!
//! Writes a Traefik v2/v3 acme.json with N ECDSA certificate entries to
//! OUTPUT, and an `mxkeys.toml` next to it that reads it and targets NAME.

use std::io::{BufWriter, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use mxkeys_bench::acme::{self, KeyFormat, Spec};

const USAGE: &str = "usage: gen-acme-json [--count N] [--target NAME] [--key-format sec1|pkcs8] [--scts N] [--seed S] OUTPUT

Writes a Traefik v2/v3 acme.json with N (default 10000) ECDSA P-256 certificate
entries to OUTPUT, the target NAME (default mail.example.com) in a few of them
(expired duplicates, an older valid one, one newest valid one), and an
mxkeys.toml next to OUTPUT whose [[target]] asks for NAME. --scts N embeds N
signed certificate timestamps per leaf (default 0; Let's Encrypt uses 2, which
adds about 480 bytes per entry).";

fn parse() -> Result<(Spec, PathBuf), String> {
    let mut spec = Spec::default();
    let mut output = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--count" | "-n" => {
                spec.count = value("--count")?
                    .replace('_', "")
                    .parse()
                    .map_err(|e| format!("--count: {e}"))?;
            }
            "--target" => spec.target = value("--target")?,
            "--key-format" => spec.key_format = value("--key-format")?.parse::<KeyFormat>()?,
            "--scts" => {
                spec.scts = value("--scts")?
                    .parse()
                    .map_err(|e| format!("--scts: {e}"))?;
            }
            "--seed" => {
                spec.seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?;
            }
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ if output.is_none() => output = Some(PathBuf::from(arg)),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    let output = output.ok_or("missing OUTPUT path")?;
    if spec.count == 0 {
        return Err("--count must be at least 1".into());
    }
    Ok((spec, output))
}

fn run(spec: &Spec, output: &PathBuf) -> Result<(), acme::BoxError> {
    let started = Instant::now();
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    // Write next to the final name, then rename: a reader never sees half a file.
    let tmp = output.with_extension("json.tmp");
    let summary = {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
        let s = acme::generate(spec, &mut w)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        s
    };
    std::fs::rename(&tmp, output)?;
    let paths = acme::write_config(output, &spec.target)?;
    let elapsed = started.elapsed();

    eprintln!(
        "wrote {} ({} entries, {} bytes = {:.1} MB, {:.0} bytes/entry) in {:.2}s",
        output.display(),
        summary.count,
        summary.bytes,
        summary.bytes as f64 / 1e6,
        summary.bytes as f64 / summary.count as f64,
        elapsed.as_secs_f64()
    );
    for t in &summary.target_entries {
        eprintln!(
            "  target {} at index {}: {} (valid {} .. {})",
            spec.target, t.index, t.role, t.not_before, t.not_after
        );
    }
    eprintln!(
        "wrote {} (work dir {})",
        paths.config.display(),
        paths.work_dir.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let (spec, output) = match parse() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("gen-acme-json: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&spec, &output) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-acme-json: {e}");
            ExitCode::FAILURE
        }
    }
}
