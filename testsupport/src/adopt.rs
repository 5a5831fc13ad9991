//! A mail host as mxkeys finds it when it adopts one (issue 16): Postfix
//! with STARTTLS on its "25" and implicit TLS on its "465" listener, a
//! Certbot tree whose keys are in the encoding Certbot 2 writes, TLS files
//! made from it the way deploy hooks make them (run as real shell
//! commands), and what a test needs to prove that adopting it changed
//! nothing: each file's content, inode and mtime, and a reload command
//! that leaves a mark.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::servers::{Postfix, run_ok, smtpd_tls_cf};
use super::{Certbot, KeyFormat, KeyKind, Leaf, free_port, set_mode, sha256_hex, write};

impl Postfix {
    /// Like [`Postfix::start`], with a second smtpd in wrapper mode
    /// (implicit TLS, as on port 465, `smtpd_tls_security_level =
    /// encrypt`) on another loopback port. Returns it and that address.
    #[track_caller]
    pub fn start_with_submissions(dir: &Path, chain_files: &[&Path]) -> (Postfix, String) {
        let addr = format!("127.0.0.1:{}", free_port());
        let master = format!(
            "{addr} inet n - n - - smtpd\n  -o smtpd_tls_wrappermode=yes\n  \
             -o smtpd_tls_security_level=encrypt\n"
        );
        let pf = Postfix::launch(dir, &smtpd_tls_cf(chain_files), &master);
        (pf, addr)
    }
}

/// Adds lineage `name` holding `leaf` to `cb` ([`Certbot::add`]), with the
/// private key in the encoding Certbot 2 writes (`TraditionalOpenSSL`:
/// `EC PRIVATE KEY` or `RSA PRIVATE KEY`). Returns `live/NAME`.
pub fn certbot_lineage(cb: &Certbot, name: &str, leaf: &Leaf) -> PathBuf {
    let n = cb.add(name, leaf);
    let fmt = match leaf.kind {
        KeyKind::Rsa2048 => KeyFormat::Pkcs1,
        _ => KeyFormat::Sec1,
    };
    let key = cb
        .root
        .join("archive")
        .join(name)
        .join(format!("privkey{n}.pem"));
    write(&key, leaf.key_pem_as(fmt));
    set_mode(&key, 0o600);
    cb.live_name(name)
}

/// Runs `script` with `sh -e`, as a Certbot deploy hook would; panics with
/// its output when it fails.
#[track_caller]
pub fn deploy_hook(script: &str) {
    let mut c = Command::new("sh");
    c.arg("-ec").arg(script);
    run_ok(c);
}

/// What shows that a file was not written: its content's SHA-256, inode,
/// mtime and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMark {
    pub sha256: String,
    pub ino: u64,
    pub mtime: (i64, i64),
    pub mode: u32,
}

/// The [`FileMark`] of each of `paths`, in order.
#[track_caller]
pub fn file_marks(paths: &[PathBuf]) -> Vec<(PathBuf, FileMark)> {
    paths
        .iter()
        .map(|p| {
            let m = fs::metadata(p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
            let bytes = fs::read(p).unwrap();
            let mark = FileMark {
                sha256: sha256_hex(&bytes),
                ino: m.ino(),
                mtime: (m.mtime(), m.mtime_nsec()),
                mode: m.mode() & 0o7777,
            };
            (p.clone(), mark)
        })
        .collect()
}

/// A reload command that appends `label` to `marker`, then runs `argv`:
/// the marker counts the reloads mxkeys ran.
pub fn marking_reload(marker: &Path, label: &str, argv: &[String]) -> Vec<String> {
    let mut v = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!(
            "printf '%s\\n' {label} >> '{}' && exec \"$@\"",
            marker.display()
        ),
        "reload".to_owned(),
    ];
    v.extend(argv.iter().cloned());
    v
}

/// The labels [`marking_reload`] left in `marker`, one per reload.
pub fn reload_marks(marker: &Path) -> Vec<String> {
    fs::read_to_string(marker)
        .map(|s| s.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}
