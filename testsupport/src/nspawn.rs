//! A real systemd (PID 1) booted in `systemd-nspawn` on a minimal Debian
//! root, for tests that must see what a unit's sandbox really allows
//! (seccomp filter, capabilities, ProtectSystem, watchdog): `systemd-analyze`
//! alone cannot.
//!
//! The root is made once with `mmdebstrap` (the host's suite and Debian
//! mirror, as /etc/apt/sources.list(.d) name them) into a cache directory
//! and reused while its completion marker is there; every boot runs on a
//! volatile overlay of it, so a guest never changes it. Each guest gets a
//! cgroup of its own on the host (nspawn otherwise leaves `/payload` and
//! `/supervisor` at the host's cgroup root, and two guests clash), is
//! powered off and its cgroup removed when its guard is dropped, even when
//! the test fails. Commands run in the guest through `nsenter`.
//!
//! The guest shares the host's network: servers the test starts on host
//! loopback ports (BIND) are reachable from inside.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::servers::{Need, output_within, require};

/// What booting a guest needs on the host (as root).
pub const NSPAWN: &[Need] = &[
    ("systemd-nspawn", "systemd-container"),
    ("mmdebstrap", "mmdebstrap"),
    ("nsenter", "util-linux"),
];

/// Packages of the guest's root beyond `minbase` (which already has
/// coreutils, dash and passwd's `useradd`).
const INCLUDE: &str = "systemd,systemd-sysv,dbus";

/// How long the guest may take to boot, or to power off.
const BOOT_DEADLINE: Duration = Duration::from_secs(60);

/// True when a guest can be booted here: the programs are installed and
/// the root is made (or was). Otherwise fails under `CI=true`, or says
/// loudly what is missing and returns false.
pub fn available(test: &str) -> bool {
    if !require(test, &[NSPAWN]) {
        return false;
    }
    match rootfs() {
        Ok(_) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") => {
            panic!("{test}: CI=true and the guest root cannot be made: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n************************************************************\n\
                 SKIPPING {test}: the guest root cannot be made: {e}\n\
                 ************************************************************\n"
            );
            false
        }
    }
}

/// The cache directory: `$MXKEYS_NSPAWN_CACHE`, else
/// /var/tmp/mxkeys-nspawn. It holds `root/` and, once that is complete,
/// the marker `complete` naming what it was made with.
fn cache_dir() -> PathBuf {
    std::env::var_os("MXKEYS_NSPAWN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/mxkeys-nspawn"))
}

/// The host's release codename (`VERSION_CODENAME` of /etc/os-release).
pub(crate) fn codename() -> String {
    let text = fs::read_to_string("/etc/os-release").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned())
}

/// The Debian mirror the host's apt sources use for `suite` (one-line
/// `deb URI SUITE ...` or deb822 stanzas), else deb.debian.org.
pub(crate) fn mirror(suite: &str) -> String {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.to_string_lossy();
            if name.ends_with(".list") || name.ends_with(".sources") {
                texts.push(fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    for text in &texts {
        // One-line style.
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.first() == Some(&"deb") {
                // Skip an optional [options] block.
                let rest: Vec<&str> = match words.iter().position(|w| w.ends_with(']')) {
                    Some(i) if words[1].starts_with('[') => words[i + 1..].to_vec(),
                    _ => words[1..].to_vec(),
                };
                if rest.len() >= 2 && rest[1] == suite {
                    return rest[0].to_owned();
                }
            }
        }
        // deb822 stanzas.
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|r| r.strip_prefix(':'))
                        .map(str::trim)
                })
            };
            let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
            let has_suite =
                field("Suites").is_some_and(|s| s.split_whitespace().any(|s| s == suite));
            if is_deb
                && has_suite
                && let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next())
            {
                return uri.to_owned();
            }
        }
    }
    "http://deb.debian.org/debian".to_owned()
}

/// Held while mmdebstrap runs (here and in [`crate::podman`]): two runs at
/// once have produced nothing.
pub(crate) static MMDEBSTRAP: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The guest's root file system, made on first use (about 45 s) and reused
/// afterwards; one attempt per test process.
pub fn rootfs() -> Result<PathBuf, String> {
    static ROOT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    ROOT.get_or_init(make_rootfs).clone()
}

fn make_rootfs() -> Result<PathBuf, String> {
    let cache = cache_dir();
    fs::create_dir_all(&cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    // One builder across test processes too.
    let lock = fs::File::create(cache.join("lock")).map_err(|e| format!("{e}"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", cache.display()))?;
    let root = cache.join("root");
    let marker = cache.join("complete");
    let suite = codename();
    let url = mirror(&suite);
    let recipe = format!("mmdebstrap --variant=minbase --include={INCLUDE} {suite} {url}\n");
    if fs::read_to_string(&marker).ok().as_deref() == Some(recipe.as_str()) && root.is_dir() {
        return Ok(root);
    }
    let partial = cache.join("root.partial");
    for stale in [&marker, &root, &partial] {
        remove_any(stale).map_err(|e| format!("{}: {e}", stale.display()))?;
    }
    eprintln!("making the guest root with: {}", recipe.trim_end());
    let _one = MMDEBSTRAP.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("mmdebstrap");
    cmd.args(["--quiet", "--variant=minbase"])
        .arg(format!("--include={INCLUDE}"))
        .arg(&suite)
        .arg(&partial)
        .arg(&url);
    let out = output_within(cmd, Duration::from_secs(600))?;
    if !out.status.success() {
        return Err(format!(
            "mmdebstrap failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    fs::rename(&partial, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    fs::write(&marker, recipe).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(root)
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => Ok(()),
    }
}

/// A host path visible in the guest.
pub struct Bind {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

impl Bind {
    pub fn ro(host: impl Into<PathBuf>, guest: &str) -> Bind {
        Bind {
            host: host.into(),
            guest: guest.to_owned(),
            read_only: true,
        }
    }
    pub fn rw(host: impl Into<PathBuf>, guest: &str) -> Bind {
        Bind {
            host: host.into(),
            guest: guest.to_owned(),
            read_only: false,
        }
    }
}

/// A booted guest; powered off when dropped.
pub struct Guest {
    pub name: String,
    nspawn: Child,
    leader: u32,
    cgroups: Vec<PathBuf>,
    console: PathBuf,
    _dir: tempfile::TempDir,
}

/// The cgroup hierarchies a launcher must join: the named systemd one and
/// the unified one on a hybrid host, the root of a pure cgroup v2 host.
fn cgroup_roots() -> Vec<PathBuf> {
    let hybrid = Path::new("/sys/fs/cgroup/unified");
    if hybrid.join("cgroup.procs").exists() {
        vec!["/sys/fs/cgroup/systemd".into(), hybrid.into()]
    } else {
        vec!["/sys/fs/cgroup".into()]
    }
}

impl Guest {
    /// Boots `rootfs()` as machine `mxkeys-TAG-PID` with `binds`, and
    /// waits until systemd reports the system `running`. Call it after
    /// [`available`] said yes.
    pub fn boot(tag: &str, binds: &[Bind]) -> Guest {
        let root = rootfs().unwrap_or_else(|e| panic!("the guest root: {e}"));
        // A machine name is a host name: no underscores.
        let name = format!("mxkeys-{}-{}", tag.replace('_', "-"), std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("mxkeys-nspawn-")
            .tempdir()
            .unwrap();
        let console = dir.path().join("console.log");
        let cgroups: Vec<PathBuf> = cgroup_roots()
            .into_iter()
            .map(|r| r.join(format!("nspawn-{name}")))
            .collect();
        for c in &cgroups {
            fs::create_dir_all(c).unwrap();
        }
        // The launching shell moves itself into the new cgroups, then
        // becomes nspawn.
        let mut script = String::new();
        for c in &cgroups {
            script.push_str(&format!(
                "echo $$ > {}/cgroup.procs || exit 1\n",
                crate::sh_quote(c.to_string_lossy())
            ));
        }
        script.push_str("exec \"$@\"\n");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).arg("sh").arg("systemd-nspawn");
        cmd.args(["-q", "-D"]).arg(&root);
        cmd.args(["-M", &name]);
        cmd.args([
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "--volatile=overlay",
        ]);
        for b in binds {
            let flag = if b.read_only { "--bind-ro" } else { "--bind" };
            cmd.arg(format!("{flag}={}:{}", b.host.display(), b.guest));
        }
        let log = fs::File::create(&console).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let nspawn = cmd.spawn().expect("spawn systemd-nspawn");
        let mut guest = Guest {
            name,
            leader: 0,
            nspawn,
            cgroups,
            console,
            _dir: dir,
        };
        guest.leader = guest.wait_leader();
        guest.wait_running();
        guest
    }

    /// The guest's PID 1: the child of the nspawn process once it runs
    /// systemd (before that, a child of nspawn still setting up, which
    /// exits).
    fn wait_leader(&mut self) -> u32 {
        let start = Instant::now();
        let parent = self.nspawn.id();
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!(
                    "systemd-nspawn exited at once ({status}):\n{}",
                    self.console()
                );
            }
            let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                .unwrap_or_default();
            let systemd = children.split_whitespace().find(|pid| {
                fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim() == "systemd")
            });
            if let Some(pid) = systemd.and_then(|p| p.parse().ok()) {
                return pid;
            }
            assert!(
                start.elapsed() < BOOT_DEADLINE,
                "no guest process within {BOOT_DEADLINE:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_running(&self) {
        let start = Instant::now();
        while !self
            .run(&["test", "-S", "/run/systemd/private"])
            .status
            .success()
        {
            assert!(
                start.elapsed() < BOOT_DEADLINE,
                "the guest's systemd did not come up within {BOOT_DEADLINE:?}:\n{}",
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let state = self.run(&["systemctl", "is-system-running", "--wait"]);
        let state = String::from_utf8_lossy(&state.stdout).trim().to_owned();
        assert_eq!(
            state,
            "running",
            "the guest did not boot cleanly:\n{}",
            self.stdout(&["systemctl", "--failed", "--no-pager"])
        );
    }

    /// Runs `argv` in the guest (all its namespaces), killed after 150 s.
    pub fn run(&self, argv: &[&str]) -> Output {
        self.run_within(argv, Duration::from_secs(150))
    }

    pub fn run_within(&self, argv: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(argv);
        output_within(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Runs `argv` in the guest; panics with its output and the unit's
    /// journal when it fails.
    #[track_caller]
    pub fn ok(&self, argv: &[&str]) -> Output {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "`{}` failed in the guest ({}):\n{}{}\n--- journal ---\n{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal(None)
        );
        out
    }

    /// The standard output of `argv` in the guest, whatever its status.
    pub fn stdout(&self, argv: &[&str]) -> String {
        String::from_utf8_lossy(&self.run(argv).stdout).into_owned()
    }

    /// One property of a unit (`systemctl show -P`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.stdout(&["systemctl", "show", "-P", name, unit])
            .trim()
            .to_owned()
    }

    /// The journal of `unit` (of the whole guest for `None`), messages only.
    pub fn journal(&self, unit: Option<&str>) -> String {
        let mut argv = vec!["journalctl", "--no-pager", "-o", "cat"];
        if let Some(u) = unit {
            argv.extend(["-u", u]);
        }
        self.stdout(&argv)
    }

    /// `stat -c FORMAT PATH` in the guest (names as the guest knows them).
    pub fn stat(&self, format: &str, path: &str) -> String {
        let out = self.ok(&["stat", "-c", format, path]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// What nspawn and the guest's console printed.
    pub fn console(&self) -> String {
        fs::read_to_string(&self.console).unwrap_or_default()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // SIGTERM to nspawn: a clean poweroff of the guest. Our own child.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.nspawn.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        use wait_timeout::ChildExt as _;
        if !matches!(self.nspawn.wait_timeout(BOOT_DEADLINE), Ok(Some(_))) {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for c in &self.cgroups {
            remove_cgroup(c);
        }
        let _ = fs::remove_dir_all(format!("/run/systemd/nspawn/propagate/{}", self.name));
    }
}

/// Removes a cgroup directory and those below it, deepest first (a
/// cgroup's files cannot be deleted, only its empty directories).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = fs::remove_dir(dir);
}
