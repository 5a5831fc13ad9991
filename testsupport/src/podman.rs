//! Container images built and run for real with rootful podman, for the
//! test of the shipped Dockerfile and its compose shape.
//!
//! No registry is reachable from the test machines, so every base image is
//! made here: `mmdebstrap --variant=minbase` (the host's suite and mirror)
//! into a tarball cached under a directory the caller names (the tests use
//! one under target/), keyed by the recipe (suite, mirror, packages), then
//! `podman import`ed under a tag carrying the same key. A base is made once
//! per cache and reused while its tarball or image is there. The
//! sidecar's base is smaller still ([`tiny_base`]): no distribution, only
//! what its binary needs to run.
//!
//! Podman's configuration (/etc/containers) must exist before the first
//! podman command ever runs on the machine: [`available`] writes the two
//! files when they are missing and leaves existing ones alone.
//!
//! A [`Pod`] guard removes what it started when dropped, even when the
//! test fails: containers in reverse order of creation (a container whose
//! PID namespace another one joined can only go after it), their anonymous
//! volumes, then named volumes and images.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use crate::nspawn::{MMDEBSTRAP, codename, mirror};
use crate::servers::{Need, output_within, require};

/// What building and running images needs on the host (as root).
pub const PODMAN: &[Need] = &[
    ("podman", "podman"),
    ("runc", "runc"),
    ("catatonit", "catatonit"),
    ("mmdebstrap", "mmdebstrap"),
    ("strip", "binutils"),
    ("busybox", "busybox-static"),
];

/// /etc/containers/storage.conf: overlay storage in the usual places.
const STORAGE_CONF: &str = "[storage]\n\
driver = \"overlay\"\n\
runroot = \"/run/containers/storage\"\n\
graphroot = \"/var/lib/containers/storage\"\n";

/// /etc/containers/containers.conf: host networking, limits root may set
/// here (it cannot raise hard limits above the host's), cgroupfs, runc
/// (crun refuses hybrid cgroups), events in a file (no journald).
const CONTAINERS_CONF: &str = "[containers]\n\
netns = \"host\"\n\
default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
\n\
[engine]\n\
cgroup_manager = \"cgroupfs\"\n\
events_logger = \"file\"\n\
runtime = \"runc\"\n";

/// How long one podman command may take (a build copies the binary).
const PODMAN_DEADLINE: Duration = Duration::from_secs(300);

/// True when images can be built and run here: the programs are installed,
/// we are root, and podman's configuration is in place. Otherwise fails
/// under `CI=true`, or says loudly what is missing and returns false.
pub fn available(test: &str) -> bool {
    if !require(test, &[PODMAN]) {
        return false;
    }
    for (path, text) in [
        ("/etc/containers/storage.conf", STORAGE_CONF),
        ("/etc/containers/containers.conf", CONTAINERS_CONF),
    ] {
        let path = Path::new(path);
        if path.exists() {
            continue;
        }
        let written = fs::create_dir_all("/etc/containers").and_then(|()| fs::write(path, text));
        if let Err(e) = written {
            panic!("{test}: cannot write {}: {e}", path.display());
        }
    }
    true
}

/// Runs `podman ARGS`; Err with its output when it fails or times out.
pub fn podman(args: &[&str]) -> Result<Output, String> {
    let mut cmd = Command::new("podman");
    cmd.args(args);
    let out = output_within(cmd, PODMAN_DEADLINE)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "podman {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A local base image `localhost/mxkeys-base-NAME:KEY`: Debian minbase of
/// the host's suite plus `include`, made with mmdebstrap into `cache` on
/// first use and reused afterwards (KEY names the recipe, so a changed
/// package list makes a new base).
pub fn base_image(cache: &Path, name: &str, include: &[&str]) -> Result<String, String> {
    // One base at a time: a second test would make the same one.
    static ONE: Mutex<()> = Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let suite = codename();
    let url = mirror(&suite);
    let recipe = format!(
        "mmdebstrap --variant=minbase --include={} {suite} {url}",
        include.join(",")
    );
    let key = &crate::sha256_hex(recipe.as_bytes())[..16];
    let tag = format!("localhost/mxkeys-base-{name}:{key}");
    if podman(&["image", "exists", &tag]).is_ok() {
        return Ok(tag);
    }
    fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    let lock = fs::File::create(cache.join("lock")).map_err(|e| format!("{e}"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", cache.display()))?;
    let tar = cache.join(format!("{name}-{key}.tar"));
    if !tar.is_file() {
        let partial = cache.join(format!("{name}-{key}.partial.tar"));
        let _ = fs::remove_file(&partial);
        eprintln!("making base image {tag} with: {recipe}");
        let _mmdebstrap = MMDEBSTRAP.lock().unwrap_or_else(|e| e.into_inner());
        let mut cmd = Command::new("mmdebstrap");
        cmd.args(["--quiet", "--variant=minbase"]);
        if !include.is_empty() {
            cmd.arg(format!("--include={}", include.join(",")));
        }
        cmd.arg(&suite).arg(&partial).arg(&url);
        let out = output_within(cmd, Duration::from_secs(600))?;
        if !out.status.success() {
            return Err(format!(
                "{recipe} failed ({}):\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        fs::rename(&partial, &tar).map_err(|e| format!("{}: {e}", tar.display()))?;
    }
    let tar = tar.to_string_lossy();
    podman(&["import", "--change", "CMD [\"/bin/bash\"]", &tar, &tag])?;
    Ok(tag)
}

/// A near-static base `localhost/mxkeys-base-tiny:KEY` for `binary`: no
/// distribution at all, only what the binary needs to run: the shared
/// libraries `ldd` names (glibc, libgcc_s), the host's CA bundle, a
/// root-only /etc/passwd and /etc/group, and the static busybox of
/// Debian's busybox-static as /bin/sh and its applets (the Dockerfile's
/// RUN lines and ACME_POSTHOOK need a shell). What the image of a static
/// or near-static build weighs is then the binary plus a few MB. KEY
/// names the libraries and busybox, so a changed host makes a new base.
pub fn tiny_base(cache: &Path, binary: &Path) -> Result<String, String> {
    let ldd = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("ldd: {e}"))?;
    if !ldd.status.success() {
        return Err(format!("ldd {} failed", binary.display()));
    }
    // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or
    // `/lib64/ld-linux-x86-64.so.2 (0x...)`; linux-vdso has no file.
    let libs: Vec<PathBuf> = String::from_utf8_lossy(&ldd.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split("=>").nth(1).unwrap_or(l).trim();
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    let busybox = Path::new("/bin/busybox");
    let applets = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("{}: {e}", busybox.display()))?;
    let mut recipe = format!("tiny: {}\n", String::from_utf8_lossy(&applets.stdout).len());
    for f in libs.iter().chain([busybox.to_path_buf()].iter()) {
        let bytes = fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        recipe.push_str(&format!("{} {}\n", f.display(), crate::sha256_hex(&bytes)));
    }
    let key = &crate::sha256_hex(recipe.as_bytes())[..16];
    let tag = format!("localhost/mxkeys-base-tiny:{key}");
    if podman(&["image", "exists", &tag]).is_ok() {
        return Ok(tag);
    }
    let root = cache.join(format!("tiny-{key}"));
    let _ = fs::remove_dir_all(&root);
    let io = |what: &Path| {
        let what = what.display().to_string();
        move |e: std::io::Error| format!("{what}: {e}")
    };
    let copy = |from: &Path, to: &Path| -> Result<(), String> {
        fs::create_dir_all(to.parent().unwrap_or(Path::new("/"))).map_err(io(to))?;
        fs::copy(from, to).map_err(io(from)).map(|_| ())
    };
    for lib in &libs {
        copy(lib, &root.join(lib.strip_prefix("/").unwrap_or(lib)))?;
    }
    copy(busybox, &root.join("bin/busybox"))?;
    for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link).map_err(io(&link))?;
        }
    }
    copy(
        Path::new("/etc/ssl/certs/ca-certificates.crt"),
        &root.join("etc/ssl/certs/ca-certificates.crt"),
    )?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").map_err(io(&root))?;
    fs::write(root.join("etc/group"), "root:x:0:\n").map_err(io(&root))?;
    for dir in ["tmp", "root", "var/lib", "usr/local/bin"] {
        fs::create_dir_all(root.join(dir)).map_err(io(&root))?;
    }
    let tar = cache.join(format!("tiny-{key}.tar"));
    let mut cmd = Command::new("tar");
    cmd.arg("-C").arg(&root).args(["-cf"]).arg(&tar).arg(".");
    let out = output_within(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!("tar: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let _ = fs::remove_dir_all(&root);
    podman(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        &tar.to_string_lossy(),
        &tag,
    ])?;
    Ok(tag)
}

/// Everything a test created in podman, removed when dropped.
#[derive(Default)]
pub struct Pod {
    containers: Vec<String>,
    volumes: Vec<String>,
    images: Vec<String>,
}

impl Pod {
    pub fn new() -> Pod {
        Pod::default()
    }

    /// `podman volume create NAME`, removed on drop.
    pub fn volume(&mut self, name: &str) -> Result<(), String> {
        self.volumes.push(name.to_owned());
        podman(&["volume", "create", name]).map(|_| ())
    }

    /// `podman build --pull=never ARGS`, the image `tag` removed on drop.
    pub fn build(&mut self, tag: &str, args: &[&str]) -> Result<Output, String> {
        self.images.push(tag.to_owned());
        // No layers: the build stage is not kept as an untagged image.
        let mut all = vec!["build", "--pull=never", "--layers=false", "-t", tag];
        all.extend_from_slice(args);
        podman(&all)
    }

    /// `podman run -d --name NAME ARGS`, removed on drop.
    pub fn run(&mut self, name: &str, args: &[&str]) -> Result<(), String> {
        self.containers.push(name.to_owned());
        let mut all = vec!["run", "-d", "--name", name];
        all.extend_from_slice(args);
        podman(&all).map(|_| ())
    }

    /// A container's output so far (stdout and stderr), for counting what
    /// it logged and for failure messages.
    pub fn logs(&self, name: &str) -> String {
        match podman(&["logs", name]) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e,
        }
    }

    /// The logs of every container, labelled, for failure messages.
    pub fn describe(&self) -> String {
        self.containers
            .iter()
            .map(|c| format!("--- podman logs {c} ---\n{}", self.logs(c)))
            .collect()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for c in self.containers.iter().rev() {
            if let Err(e) = podman(&["rm", "-f", "-v", "-t", "2", c]) {
                eprintln!("cleanup: {e}");
            }
        }
        for v in &self.volumes {
            if let Err(e) = podman(&["volume", "rm", "-f", v]) {
                eprintln!("cleanup: {e}");
            }
        }
        for i in &self.images {
            let _ = podman(&["rmi", "-f", i]);
        }
    }
}

/// A build context holding only `binary`, stripped (podman sends the whole
/// directory, and the debug binary's symbols are most of its size), as
/// `mxkeys` in a fresh directory under `dir`.
pub fn binary_context(dir: &Path, binary: &Path) -> Result<PathBuf, String> {
    let ctx = dir.join("image-context");
    fs::create_dir_all(&ctx).map_err(|e| format!("{}: {e}", ctx.display()))?;
    let mut cmd = Command::new("strip");
    cmd.arg("-o").arg(ctx.join("mxkeys")).arg(binary);
    let out = output_within(cmd, Duration::from_secs(120))?;
    if !out.status.success() {
        return Err(format!(
            "strip {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(ctx)
}
