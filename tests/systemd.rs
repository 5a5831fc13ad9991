//! The shipped systemd units: `systemd-analyze verify` accepts them and the
//! daemon's sandbox keeps its exposure score low.
//!
//! The units name /usr/local/bin/mxkeys; the test rewrites that to the
//! binary under test in a temporary copy, since verify checks that the
//! executable exists.

use std::path::{Path, PathBuf};
use std::process::Command;

fn systemd_analyze() -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing: CI must install the `systemd` package (bash .ci/test does)"
        );
        eprintln!("SKIPPED: systemd-analyze not found; install it with: apt-get install systemd");
    }
    found
}

/// Copies the units into a temporary directory with ExecStart pointing at
/// the binary under test.
fn units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    for name in [
        "mxkeys.service",
        "mxkeys-renew.service",
        "mxkeys-renew.timer",
    ] {
        let text = std::fs::read_to_string(src.join(name)).unwrap();
        let text = text.replace("/usr/local/bin/mxkeys", env!("CARGO_BIN_EXE_mxkeys"));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = units();
    let out = Command::new(analyze)
        .current_dir(dir.path())
        .args([
            "verify",
            "mxkeys.service",
            "mxkeys-renew.service",
            "mxkeys-renew.timer",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify reports unknown or misspelled settings as warnings, not failures.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("mxkeys")).collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complained:\n{}",
        ours.join("\n")
    );
}

#[test]
fn daemon_exposure_stays_low() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = units();
    for unit in ["mxkeys.service", "mxkeys-renew.service"] {
        let out = Command::new(&analyze)
            .current_dir(dir.path())
            .args(["security", "--offline=true", "--no-pager", unit])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
        // Root, network and chown are the job; everything else is locked down.
        assert!(
            score <= 2.5,
            "{unit}: exposure {score} (README reports 2.1)\n{text}"
        );
    }
}
