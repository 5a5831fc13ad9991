//! Running reload commands: each argv once, with a timeout, keeping the
//! tail of its stderr for the error message.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use std::path::Path;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use wait_timeout::ChildExt as _;

use crate::config::Reload;

/// How much of a failing command's stderr the error keeps.
const STDERR_TAIL: usize = 400;

/// Carries out one reload: runs the command (waiting up to `timeout`) or
/// sends the signal.
pub fn run(action: &Reload, timeout: Duration) -> Result<(), String> {
    match action {
        Reload::Command(argv) => run_command(argv, timeout),
        Reload::Signal { pidfile, signal } => send_signal(pidfile, *signal),
    }
}

/// Sends `signal` to the process named by `pidfile`.
fn send_signal(pidfile: &Path, signal: Signal) -> Result<(), String> {
    let text = crate::source::read_limited(pidfile, 64)
        .map_err(|e| format!("pid file {}: {e}", pidfile.display()))?;
    let pid: i32 = String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("pid file {}: no process id in it", pidfile.display()))?;
    nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(|e| {
        format!(
            "cannot signal process {pid} (from {}): {e}",
            pidfile.display()
        )
    })
}

/// Runs `argv` and waits up to `timeout`. `Err` says what went wrong in one
/// line: could not start, exit status with stderr tail, or timed out.
fn run_command(argv: &[String], timeout: Duration) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {}", crate::source::io_reason(&e)))?;
    // Drain stderr on a thread so a chatty command cannot block on a full pipe.
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    });
    let status = match child.wait_timeout(timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            ));
        }
        Err(e) => return Err(format!("cannot wait for it: {e}")),
    };
    let err_text = stderr
        .and_then(|t| t.join().ok())
        .map(|b| tail(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    if status.success() {
        Ok(())
    } else if err_text.is_empty() {
        Err(format!("failed ({status})"))
    } else {
        Err(format!("failed ({status}): {err_text}"))
    }
}

/// The last part of a command's output as one line.
fn tail(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().rev().nth(STDERR_TAIL) {
        Some((i, _)) => format!("…{}", &one_line[i..]),
        None => one_line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Reload {
        Reload::Command(vec!["sh".into(), "-c".into(), script.into()])
    }

    #[test]
    fn success_failure_and_timeout() {
        assert_eq!(run(&sh("exit 0"), Duration::from_secs(5)), Ok(()));
        let e = run(&sh("echo 'bad config' >&2; exit 3"), Duration::from_secs(5)).unwrap_err();
        assert!(
            e.contains("exit status: 3") && e.contains("bad config"),
            "{e}"
        );
        let e = run(&sh("sleep 5"), Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("timed out"), "{e}");
        let e = run(
            &Reload::Command(vec!["/nonexistent/reload".into()]),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn signal_goes_to_the_pid_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pidfile = dir.path().join("x.pid");
        std::fs::write(&pidfile, format!("{}\n", child.id())).unwrap();
        let action = Reload::Signal {
            pidfile: pidfile.clone(),
            signal: Signal::SIGTERM,
        };
        assert_eq!(run(&action, Duration::from_secs(1)), Ok(()));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        std::fs::write(&pidfile, "garbage").unwrap();
        let e = run(&action, Duration::from_secs(1)).unwrap_err();
        assert!(e.contains("no process id"), "{e}");
        let e = run(
            &Reload::Signal {
                pidfile: dir.path().join("missing.pid"),
                signal: Signal::SIGHUP,
            },
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn tail_keeps_the_end_on_one_line() {
        let long = "x".repeat(1000) + "\nlast words";
        let t = tail(&long);
        assert!(t.ends_with("last words") && t.chars().count() <= STDERR_TAIL + 2);
    }
}
