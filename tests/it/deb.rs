//! The Debian package, built by the README's command (`packaging/build-deb`)
//! and installed with dpkg under a real systemd.
//!
//! One package is built per test process, from the binary under test
//! (`--no-build`, with a Cargo target directory of its own holding that
//! binary as `release/mxkeys`), and shared by the tests; the upgrade's
//! package is that one repacked with `dpkg-deb`, its version bumped and its
//! conffile changed. Each test boots its own guest (systemd 252 as PID 1
//! in systemd-nspawn on a minimal Debian root, the test-support crate's
//! `nspawn` module), installs the package with `dpkg -i` and asserts only
//! on that guest: nothing enabled or started by the install, the packaged
//! configuration edited as an admin would (a files source, a target in a
//! directory of the test) started with `systemctl start mxkeys`, the
//! admin's edits kept and the running daemon restarted across an upgrade,
//! the daemon stopped by a removal, and nothing but the admin's own files
//! left after a purge. lintian reports no error on the package.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::nspawn::{self, Bind, Guest};
use common::servers::{Need, output_within, require_programs};
use common::{Ca, HOST, Leaf, LeafSpec, q, sha256_hex, src_files, write};

/// What building and checking the package needs on the host.
const PACKAGING: &[Need] = &[
    ("dpkg-deb", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("strip", "binutils"),
];
const LINTIAN: &[Need] = &[("lintian", "lintian")];

/// Where the guest sees the packages.
const DEBS: &str = "/srv/deb";
/// Where the guest sees the test's files: the source and the admin's
/// configuration.
const SRC: &str = "/srv/test-src";
/// A target directory the packaged units list in ReadWritePaths.
const TLS: &str = "/etc/postfix/tls";
/// The line the upgrade's package adds to its conffile.
const NEW_CONFFILE_LINE: &str = "# added by the next package version";

/// The two packages: as built, and the upgrade.
struct Debs {
    dir: PathBuf,
    v1: String,
    v2: String,
}

/// Builds the packages once per process; `None` (after a loud message)
/// when the host lacks the tools and CI is not set.
fn debs(test: &str) -> Option<&'static Debs> {
    if !require_programs(test, &[PACKAGING]) {
        return None;
    }
    static DEBS: OnceLock<Debs> = OnceLock::new();
    Some(DEBS.get_or_init(build))
}

fn build() -> Debs {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deb");
    let _ = std::fs::remove_dir_all(&root);
    let release = root.join("cargo-target/release");
    std::fs::create_dir_all(&release).unwrap();
    let bin = release.join("mxkeys");
    if std::fs::hard_link(env!("CARGO_BIN_EXE_mxkeys"), &bin).is_err() {
        std::fs::copy(env!("CARGO_BIN_EXE_mxkeys"), &bin).unwrap();
    }
    let dir = root.join("debs");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb"))
        .args(["--no-build", "--fast", "--output"])
        .arg(&dir)
        .env("CARGO_TARGET_DIR", root.join("cargo-target"));
    // A fresh machine installs cargo-deb first (about 75 s here).
    let out = output_within(cmd, Duration::from_secs(1200)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "packaging/build-deb failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v1 = only_deb(&dir);

    // The upgrade: the same files, version bumped, the conffile changed.
    let tree = root.join("v2-tree");
    run(Command::new("dpkg-deb")
        .arg("-R")
        .arg(dir.join(&v1))
        .arg(&tree));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("a Version field")
        .to_owned();
    let next = format!("{version}+next");
    std::fs::write(
        &control,
        text.replace(
            &format!("Version: {version}\n"),
            &format!("Version: {next}\n"),
        ),
    )
    .unwrap();
    let conffile = tree.join("etc/mxkeys/mxkeys.toml");
    let mut text = std::fs::read_to_string(&conffile).unwrap();
    text.push_str(&format!("\n{NEW_CONFFILE_LINE}\n"));
    std::fs::write(&conffile, text).unwrap();
    let v2 = v1.replace(&version, &next);
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "-z1", "-b"])
        .arg(&tree)
        .arg(dir.join(&v2)));
    Debs { dir, v1, v2 }
}

/// The one .deb in `dir`.
fn only_deb(dir: &Path) -> String {
    let debs: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one package in {}", dir.display());
    debs.into_iter().next().unwrap()
}

#[track_caller]
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lintian_reports_no_error_on_the_package() {
    let test = "lintian_reports_no_error_on_the_package";
    if !require_programs(test, &[LINTIAN]) {
        return;
    }
    let Some(debs) = debs(test) else {
        return;
    };
    let out = Command::new("lintian")
        .arg(debs.dir.join(&debs.v1))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = report.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        out.status.success() && errors.is_empty(),
        "lintian ({}):\n{report}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One guest with the packages at [`DEBS`], the test's files at [`SRC`]
/// and its target directory at [`TLS`].
struct Host {
    dir: tempfile::TempDir,
    leaf: Leaf,
}

impl Host {
    /// A source certificate and the admin's configuration for it: a files
    /// source and a combined target in [`TLS`] whose reload leaves a trace.
    fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("mxkeys-deb-")
            .tempdir()
            .unwrap();
        let leaf = Ca::new("deb").issue(&LeafSpec::new(&[HOST]));
        let src = dir.path().join("src");
        write(&src.join("fullchain.pem"), leaf.fullchain_pem());
        write(&src.join("privkey.pem"), leaf.key_pem());
        write(
            &src.join("mxkeys.toml"),
            format!(
                "hostname = {}\nstate_dir = \"/var/lib/mxkeys\"\n\n{}\n\
                 [[target]]\n\
                 name = \"postfix\"\n\
                 combined = \"{TLS}/chain.pem\"\n\
                 mode = \"0640\"\n\
                 reload = [\"/bin/sh\", \"-c\", \"echo reloaded >> {TLS}/reloads.log\"]\n",
                q(HOST),
                src_files(
                    &Path::new(SRC).join("fullchain.pem"),
                    &Path::new(SRC).join("privkey.pem"),
                    None
                ),
            ),
        );
        std::fs::create_dir_all(dir.path().join("tls")).unwrap();
        Host { dir, leaf }
    }

    fn tls(&self, name: &str) -> PathBuf {
        self.dir.path().join("tls").join(name)
    }

    fn boot(&self, test: &str, debs: &Debs) -> Option<Guest> {
        if !nspawn::available(test) {
            return None;
        }
        let binds = [
            Bind::ro(&debs.dir, DEBS),
            Bind::ro(self.dir.path().join("src"), SRC),
            Bind::rw(self.dir.path().join("tls"), TLS),
        ];
        Some(Guest::boot(&test[..test.len().min(24)], &binds))
    }

    /// The target holds the source's certificate.
    #[track_caller]
    fn assert_target_written(&self, guest: &Guest) {
        let chain = self.tls("chain.pem");
        assert!(
            chain.exists(),
            "the target is not written:\n{}",
            guest.journal(Some("mxkeys"))
        );
        assert_eq!(sha256_hex(&common::read_certs(&chain)[0]), self.leaf.fp());
    }
}

/// A guest with the first package installed.
fn installed(test: &str) -> Option<(&'static Debs, Host, Guest)> {
    if !nspawn::available(test) {
        return None;
    }
    let debs = debs(test)?;
    let host = Host::new();
    let guest = host.boot(test, debs)?;
    guest.ok(&["dpkg", "-i", &format!("{DEBS}/{}", debs.v1)]);
    Some((debs, host, guest))
}

/// Edits the packaged configuration as the admin would, then starts the
/// daemon.
fn configure_and_start(guest: &Guest) {
    guest.ok(&[
        "cp",
        &format!("{SRC}/mxkeys.toml"),
        "/etc/mxkeys/mxkeys.toml",
    ]);
    guest.ok(&["systemctl", "start", "mxkeys"]);
}

const UNITS: [&str; 3] = [
    "mxkeys.service",
    "mxkeys-renew.service",
    "mxkeys-renew.timer",
];

/// No unit of the package is enabled or running.
#[track_caller]
fn assert_nothing_enabled_or_active(guest: &Guest) {
    for unit in UNITS {
        let enabled = guest.stdout(&["systemctl", "is-enabled", unit]);
        assert!(
            ["disabled", "static"].contains(&enabled.trim()),
            "{unit} is {enabled}"
        );
        assert_eq!(guest.property(unit, "ActiveState"), "inactive", "{unit}");
    }
}

/// The install enables and starts nothing; the binary is in /usr/bin and
/// the units run it from there; the state directory is made 0700 and the
/// configuration is a conffile. Edited by the admin, the configuration
/// starts the daemon, which writes the target.
#[test]
fn installed_package_starts_nothing_until_its_edited_configuration_is_started() {
    let test = "installed_package_starts_nothing_until_its_edited_configuration_is_started";
    let Some((_debs, host, guest)) = installed(test) else {
        return;
    };
    assert_nothing_enabled_or_active(&guest);
    assert_eq!(guest.stat("%U:%G:%a", "/usr/bin/mxkeys"), "root:root:755");
    assert_eq!(guest.stat("%U:%G:%a", "/var/lib/mxkeys"), "root:root:700");
    assert_eq!(
        guest.stat("%U:%G:%a", "/etc/mxkeys/mxkeys.toml"),
        "root:root:644"
    );
    let conffiles = guest.stdout(&["dpkg-query", "-W", "-f", "${Conffiles}", "mxkeys"]);
    assert!(
        conffiles.contains("/etc/mxkeys/mxkeys.toml"),
        "conffiles: {conffiles}"
    );
    // The man pages and completions `mxkeys generate` made at build time,
    // and the monitoring files (alert rules with their tests, dashboard).
    for file in [
        "/usr/share/man/man1/mxkeys.1.gz",
        "/usr/share/man/man1/mxkeys-dkim-import.1.gz",
        "/usr/share/man/man5/mxkeys.toml.5.gz",
        "/usr/share/bash-completion/completions/mxkeys",
        "/usr/share/zsh/vendor-completions/_mxkeys",
        "/usr/share/fish/vendor_completions.d/mxkeys.fish",
        "/usr/share/mxkeys/prometheus/mxkeys.rules.yml",
        "/usr/share/mxkeys/prometheus/mxkeys.rules.test.yml",
        "/usr/share/mxkeys/grafana/mxkeys-dashboard.json",
    ] {
        assert_eq!(guest.stat("%U:%G:%a", file), "root:root:644", "{file}");
    }
    for unit in ["mxkeys.service", "mxkeys-renew.service"] {
        assert_eq!(
            guest.stat("%U:%G:%a", &format!("/lib/systemd/system/{unit}")),
            "root:root:644"
        );
        let exec = guest.property(unit, "ExecStart");
        assert!(
            exec.contains("path=/usr/bin/mxkeys ;"),
            "{unit}: ExecStart {exec}"
        );
    }

    // The installed units, as systemd reads them with the binary they name.
    let mut verify = vec!["systemd-analyze", "verify"];
    let paths: Vec<String> = UNITS
        .iter()
        .map(|u| format!("/lib/systemd/system/{u}"))
        .collect();
    verify.extend(paths.iter().map(String::as_str));
    let out = guest.ok(&verify);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.lines().any(|l| l.contains("mxkeys")),
        "systemd-analyze verify:\n{stderr}"
    );

    configure_and_start(&guest);
    host.assert_target_written(&guest);
    let journal = guest.journal(Some("mxkeys"));
    assert!(!journal.contains("ERROR"), "errors in:\n{journal}");
    assert_eq!(guest.property("mxkeys", "SubState"), "running");
}

/// An upgrade to a package whose conffile changed keeps the admin's
/// edited configuration (the package's new one lands beside it as
/// .dpkg-dist), keeps the timer the admin enabled and enables nothing
/// else, and restarts the running daemon on the new binary.
#[test]
fn upgrade_keeps_the_edited_configuration_and_restarts_the_running_daemon() {
    let test = "upgrade_keeps_the_edited_configuration_and_restarts_the_running_daemon";
    let Some((debs, host, guest)) = installed(test) else {
        return;
    };
    configure_and_start(&guest);
    host.assert_target_written(&guest);
    guest.ok(&["systemctl", "enable", "--now", "mxkeys-renew.timer"]);
    let pid = guest.property("mxkeys", "MainPID");
    let edited = guest.stdout(&["cat", "/etc/mxkeys/mxkeys.toml"]);

    // As unattended upgrades run it: no terminal to ask, keep the admin's.
    guest.ok(&[
        "dpkg",
        "--force-confdef",
        "--force-confold",
        "-i",
        &format!("{DEBS}/{}", debs.v2),
    ]);
    let version = guest.stdout(&["dpkg-query", "-W", "-f", "${Version}", "mxkeys"]);
    assert!(version.ends_with("+next"), "installed: {version}");
    assert_eq!(guest.stdout(&["cat", "/etc/mxkeys/mxkeys.toml"]), edited);
    let dist = guest.stdout(&["cat", "/etc/mxkeys/mxkeys.toml.dpkg-dist"]);
    assert!(dist.contains(NEW_CONFFILE_LINE), "dpkg-dist:\n{dist}");

    let journal = guest.journal(Some("mxkeys"));
    assert_eq!(
        guest.property("mxkeys", "ActiveState"),
        "active",
        "{journal}"
    );
    assert_ne!(
        guest.property("mxkeys", "MainPID"),
        pid,
        "not restarted:\n{journal}"
    );
    assert_eq!(
        guest
            .stdout(&["systemctl", "is-enabled", "mxkeys.service"])
            .trim(),
        "disabled"
    );
    assert_eq!(
        guest
            .stdout(&["systemctl", "is-enabled", "mxkeys-renew.timer"])
            .trim(),
        "enabled"
    );
    assert_eq!(
        guest.property("mxkeys-renew.timer", "ActiveState"),
        "active"
    );
}

/// `dpkg --remove` stops the running daemon and the enabled timer and
/// keeps the configuration and the state; `dpkg --purge` then removes
/// both, the units' masks and enable links, leaving only a file the admin
/// put in /etc/mxkeys.
#[test]
fn remove_stops_the_daemon_and_purge_leaves_only_the_admins_own_files() {
    let test = "remove_stops_the_daemon_and_purge_leaves_only_the_admins_own_files";
    let Some((_debs, host, guest)) = installed(test) else {
        return;
    };
    configure_and_start(&guest);
    host.assert_target_written(&guest);
    guest.ok(&["systemctl", "enable", "--now", "mxkeys-renew.timer"]);
    guest.ok(&["sh", "-c", "echo secret > /etc/mxkeys/admin.key"]);

    guest.ok(&["dpkg", "--remove", "mxkeys"]);
    assert_eq!(guest.property("mxkeys", "ActiveState"), "inactive");
    assert_eq!(
        guest.property("mxkeys-renew.timer", "ActiveState"),
        "inactive"
    );
    assert!(
        !guest
            .run(&["test", "-e", "/usr/bin/mxkeys"])
            .status
            .success()
    );
    assert!(
        guest
            .run(&["test", "-f", "/etc/mxkeys/mxkeys.toml"])
            .status
            .success(),
        "remove keeps the conffile"
    );
    assert!(
        guest
            .run(&["test", "-d", "/var/lib/mxkeys"])
            .status
            .success(),
        "remove keeps the state"
    );

    guest.ok(&["dpkg", "--purge", "mxkeys"]);
    // Everything named after the package on the guest's own file system
    // (the bound directories and /proc, /sys, /run are other mounts).
    let left = guest.stdout(&[
        "find", "/", "-xdev", "-name", "*mxkeys*", "-not", "-path", "/srv/*",
    ]);
    assert_eq!(left.trim(), "/etc/mxkeys", "left after purge:\n{left}");
    assert_eq!(
        guest.stdout(&["ls", "-A", "/etc/mxkeys"]).trim(),
        "admin.key"
    );
    let status = guest.stdout(&["dpkg-query", "-W", "-f", "${Status}", "mxkeys"]);
    assert!(
        status.is_empty() || status.contains("not-installed"),
        "dpkg still knows: {status}"
    );
}
