//! Running one test inside a network and mount namespace of its own.
//!
//! The rule: an outer test re-runs the current test binary inside
//! `unshare --net --mount` with one ignored inner test selected; in there
//! only a loopback interface exists (nothing leaves it), the well-known
//! ports are free, and /etc/resolv.conf is replaced by a file of the
//! test's, for that namespace only. The inner test tells it runs there by
//! the environment variable the outer one sets.

use std::process::Command;
use std::time::Duration;

use crate::servers::{output_within, prog};
use crate::write;

/// Runs the ignored test `inner` (its full name in this test binary, e.g.
/// `dane::inside_x`) in a new network and mount namespace: `lo` up, then
/// the shell lines `setup`, then `resolv` (the text of a resolv.conf)
/// bind-mounted over /etc/resolv.conf, with `mark` (name, value) in its
/// environment. Panics with its output unless it passed; `what` names the
/// namespace in that message.
pub fn run_inner(inner: &str, what: &str, setup: &str, resolv: &str, mark: (&str, &str)) {
    let dir = tempfile::Builder::new()
        .prefix("mxkeys-netns-")
        .tempdir()
        .unwrap();
    let resolv_file = dir.path().join("resolv.conf");
    write(&resolv_file, resolv);
    let script = format!(
        "set -eu\nip link set lo up\n{setup}\nmount --bind \"$1\" /etc/resolv.conf\nshift\nexec \"$@\""
    );
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(prog("unshare"));
    cmd.args(["--net", "--mount", "--propagation", "private", "--"])
        .args(["sh", "-c", &script, "sh"])
        .arg(&resolv_file)
        .arg(&exe)
        .args([
            inner,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(mark.0, mark.1)
        .stdin(std::process::Stdio::null());
    let out = output_within(cmd, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{inner} in {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown with --nocapture: what the inner test saw.
    eprintln!("--- {inner} in {what} ---\n{stdout}{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{inner} failed in {what}:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
}
