//! Running reload commands and sending reload signals, each bounded.
//!
//! A command runs once in its own process group, with `reload_timeout` as
//! the bound of the whole run, reading its stderr included: when the
//! command itself has exited, a background child it left holding the pipe
//! (`sleep 600 &`) does not hold up the run, and at the deadline the whole
//! group is killed. A signal goes only to a process named by a pid file
//! that root or mxkeys' own user owns and nobody else can write, and never
//! to pid 0, 1 or a negative pid (a process group).

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::Reload;
use crate::source::io_reason;

/// Why a reload did not happen or failed, one line naming the pid file or
/// what the command did.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The pid file could not be opened, inspected or read.
    #[error("pid file {}: {}", .pidfile.display(), io_reason(.source))]
    PidFileIo {
        pidfile: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pid file is not one only root or mxkeys' user could have written,
    /// or names no single service process.
    #[error("pid file {}: {refusal}", .pidfile.display())]
    PidFileRefused {
        pidfile: PathBuf,
        refusal: PidFileRefusal,
    },
    /// `kill` itself failed.
    #[error("cannot signal process {pid} (from {}): {source}", .pidfile.display())]
    Signal {
        pid: i32,
        pidfile: PathBuf,
        #[source]
        source: nix::Error,
    },
    /// The command line is empty.
    #[error("empty command")]
    EmptyCommand,
    /// The program could not be started.
    #[error("cannot start: {}", io_reason(.0))]
    Start(#[source] std::io::Error),
    /// Waiting for the command failed.
    #[error("cannot wait for it: {0}")]
    Wait(#[source] std::io::Error),
    /// The command (and its group) ran past the timeout and was killed.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The command exited unsuccessfully; `stderr` is the tail of its
    /// stderr on one line, maybe empty.
    #[error("failed ({status}){}", if .stderr.is_empty() { String::new() } else { format!(": {}", .stderr) })]
    Failed {
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Why a pid file is not trusted to name the process to signal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidFileRefusal {
    #[error("not a regular file; not signalling")]
    NotRegular,
    #[error("owned by uid {owner}, not root or mxkeys' user (uid {euid}); not signalling")]
    ForeignOwner { owner: u32, euid: u32 },
    #[error("writable by group or others (mode {mode:04o}); not signalling")]
    OpenToOthers { mode: u32 },
    #[error("no process id in it")]
    NoPid,
    #[error(
        "pid {0} is not a single service process (0, 1 and negative pids are refused); not signalling"
    )]
    NotAServiceProcess(i64),
}

/// How much of a failing command's stderr the error keeps.
const STDERR_TAIL: usize = 400;

/// How often a running command is looked at (exit, output).
const TICK: Duration = Duration::from_millis(10);

/// The most stderr read after the command exited: a background child that
/// keeps writing cannot keep the run going.
const AFTER_EXIT_READ_LIMIT: usize = 64 * 1024;

/// Carries out one reload: runs the command (all of it ends by `timeout`)
/// or sends the signal.
pub fn run(action: &Reload, timeout: Duration) -> Result<(), ReloadError> {
    match action {
        Reload::Command(argv) => run_command(argv, timeout),
        Reload::Signal { pidfile, signal } => send_signal(pidfile, *signal),
    }
}

/// Sends `signal` to the process named by `pidfile`, after checking that
/// the file is one only root or mxkeys' user could have written and that
/// the pid names one process other than init.
fn send_signal(pidfile: &Path, signal: Signal) -> Result<(), ReloadError> {
    let pid = read_pidfile(pidfile, nix::unistd::geteuid().as_raw())?;
    nix::sys::signal::kill(Pid::from_raw(pid), signal).map_err(|source| ReloadError::Signal {
        pid,
        pidfile: pidfile.to_owned(),
        source,
    })
}

/// The pid in `pidfile`, refused (one line naming the file and why) unless
/// the file is a regular file owned by root or `euid`, not writable by
/// group or others, and holds a pid above 1.
fn read_pidfile(pidfile: &Path, euid: u32) -> Result<i32, ReloadError> {
    let io = |source| ReloadError::PidFileIo {
        pidfile: pidfile.to_owned(),
        source,
    };
    let refused = |refusal| ReloadError::PidFileRefused {
        pidfile: pidfile.to_owned(),
        refusal,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(pidfile)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(refused(PidFileRefusal::NotRegular));
    }
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(refused(PidFileRefusal::ForeignOwner {
            owner: meta.uid(),
            euid,
        }));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refused(PidFileRefusal::OpenToOthers {
            mode: meta.mode() & 0o7777,
        }));
    }
    let mut text = Vec::new();
    file.by_ref().take(64).read_to_end(&mut text).map_err(io)?;
    let pid: i64 = String::from_utf8_lossy(&text)
        .trim()
        .parse()
        .map_err(|_| refused(PidFileRefusal::NoPid))?;
    match i32::try_from(pid) {
        Ok(pid) if pid > 1 => Ok(pid),
        _ => Err(refused(PidFileRefusal::NotAServiceProcess(pid))),
    }
}

/// Runs `argv` in its own process group; all of it, reading its stderr
/// included, ends by `timeout`. `Err` says what went wrong in one line:
/// could not start, exit status with stderr tail, or timed out.
fn run_command(argv: &[String], timeout: Duration) -> Result<(), ReloadError> {
    let deadline = Instant::now() + timeout;
    let (program, args) = argv.split_first().ok_or(ReloadError::EmptyCommand)?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(ReloadError::Start)?;
    let mut stderr = Stderr::new(child.stderr.take());
    let status = loop {
        stderr.read_available(usize::MAX);
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(ReloadError::Wait(e));
            }
        }
        if Instant::now() >= deadline {
            kill_group(&mut child);
            return Err(ReloadError::TimedOut(timeout));
        }
        std::thread::sleep(TICK);
    };
    // What the command wrote before it exited is in the pipe now; whatever
    // stays behind it (a background child holding the pipe) is not waited for.
    stderr.read_available(AFTER_EXIT_READ_LIMIT);
    if status.success() {
        Ok(())
    } else {
        Err(ReloadError::Failed {
            status,
            stderr: tail(&String::from_utf8_lossy(&stderr.buf)),
        })
    }
}

/// Kills the command's whole process group (it leads it) and reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The read end of a command's stderr, read without blocking; keeps the
/// last part only.
struct Stderr {
    pipe: Option<std::process::ChildStderr>,
    buf: Vec<u8>,
}

impl Stderr {
    fn new(pipe: Option<std::process::ChildStderr>) -> Stderr {
        let pipe = pipe.filter(|p| {
            let flags = nix::fcntl::fcntl(p, nix::fcntl::FcntlArg::F_GETFL)
                .map(nix::fcntl::OFlag::from_bits_truncate);
            flags.is_ok_and(|f| {
                nix::fcntl::fcntl(
                    p,
                    nix::fcntl::FcntlArg::F_SETFL(f | nix::fcntl::OFlag::O_NONBLOCK),
                )
                .is_ok()
            })
        });
        Stderr {
            pipe,
            buf: Vec::new(),
        }
    }

    /// Reads what the pipe holds now, up to `limit` bytes; at end of file
    /// or on an error the pipe is closed.
    fn read_available(&mut self, limit: usize) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let mut read = 0;
        while read < limit {
            match pipe.read(&mut chunk) {
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => {
                    read += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                    // Keep only the end: the tail is what the error shows.
                    let keep = STDERR_TAIL * 16;
                    if self.buf.len() > 2 * keep {
                        self.buf.drain(..self.buf.len() - keep);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.pipe = None;
                    return;
                }
            }
        }
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
        assert_eq!(
            run(&sh("exit 0"), Duration::from_secs(5)).map_err(|e| e.to_string()),
            Ok(())
        );
        let e = run(&sh("echo 'bad config' >&2; exit 3"), Duration::from_secs(5))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("exit status: 3") && e.contains("bad config"),
            "{e}"
        );
        let e = run(&sh("sleep 5"), Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out"), "{e}");
        let e = run(
            &Reload::Command(vec!["/nonexistent/reload".into()]),
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
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
        assert_eq!(
            run(&action, Duration::from_secs(1)).map_err(|e| e.to_string()),
            Ok(())
        );
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        std::fs::write(&pidfile, "garbage").unwrap();
        let e = run(&action, Duration::from_secs(1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no process id"), "{e}");
        let e = run(
            &Reload::Signal {
                pidfile: dir.path().join("missing.pid"),
                signal: Signal::SIGHUP,
            },
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn a_background_child_holding_stderr_does_not_hold_up_the_reload() {
        let started = Instant::now();
        assert_eq!(
            run(
                &sh("echo starting >&2; sleep 600 & exit 0"),
                Duration::from_secs(60)
            )
            .map_err(|e| e.to_string()),
            Ok(())
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the reload waited for its background child"
        );
        // A failing command's message is still read before it exits.
        let e = run(
            &sh("sleep 600 & echo 'bad config' >&2; exit 4"),
            Duration::from_secs(60),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("exit status: 4") && e.contains("bad config"),
            "{e}"
        );
    }

    #[test]
    fn the_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch '{}') & sleep 600", marker.display());
        let e = run(&sh(&script), Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timed out"), "{e}");
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            !marker.exists(),
            "a child of the timed-out command kept running"
        );
    }

    fn pidfile_with(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn pid_files_naming_init_or_groups_or_open_to_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let euid = nix::unistd::geteuid().as_raw();
        let ok = pidfile_with(dir.path(), "ok.pid", "4242\n", 0o644);
        assert_eq!(read_pidfile(&ok, euid).map_err(|e| e.to_string()), Ok(4242));
        for (text, why) in [("0", "pid 0"), ("1\n", "pid 1"), ("-7", "pid -7")] {
            let p = pidfile_with(dir.path(), "bad.pid", text, 0o644);
            let e = read_pidfile(&p, euid).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("bad.pid") && !e.contains('\n'),
                "{e}"
            );
        }
        for mode in [0o664, 0o646, 0o666] {
            let p = pidfile_with(dir.path(), "open.pid", "4242", mode);
            let e = read_pidfile(&p, euid).unwrap_err().to_string();
            assert!(e.contains("writable by group or others"), "{mode:o}: {e}");
        }
        // Owned by someone else (the file's owner is this process's user,
        // so ask as if mxkeys ran as another, non-root user).
        if euid != 0 {
            return;
        }
        let mine = pidfile_with(dir.path(), "theirs.pid", "4242", 0o644);
        nix::unistd::chown(&mine, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let e = read_pidfile(&mine, 0).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert_eq!(
            read_pidfile(&mine, 65534).map_err(|e| e.to_string()),
            Ok(4242)
        );
    }

    #[test]
    fn signal_refusals_send_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = pidfile_with(dir.path(), "init.pid", "1", 0o644);
        let e = run(
            &Reload::Signal {
                pidfile: p,
                signal: Signal::SIGHUP,
            },
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pid 1"), "{e}");
    }

    #[test]
    fn tail_keeps_the_end_on_one_line() {
        let long = "x".repeat(1000) + "\nlast words";
        let t = tail(&long);
        assert!(t.ends_with("last words") && t.chars().count() <= STDERR_TAIL + 2);
    }
}
