//! A hostile filesystem: a user who can write a target's directory (here
//! uid 65534 through `setpriv`, the directory being group-writable by its
//! group) plants a symlink, a FIFO, a link to /dev/zero or a directory where
//! mxkeys (running as root) writes, or swaps the directory between runs.
//! Each time the run ends within a bounded wait and memory, names the path,
//! and every file the attack aimed at is exactly as it was (type, inode,
//! owner, mode, content). The root-owned "shadow" is a stand-in the test
//! creates; no real /etc file is touched.

use mxkeys_testsupport as common;

use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::servers::{Need, output_within, require, run_ok};
use common::*;

const SETPRIV: Need = ("setpriv", "util-linux");
const ATTACKER: u32 = 65534;
/// What the stand-in for /etc/shadow holds: must never appear elsewhere.
const SECRET: &str = "root:$6$SECRET-HASH-OF-ROOT:19000:0:99999:7:::\n";

/// Everything that identifies a directory entry, without following it.
fn ident(p: &Path) -> String {
    let Ok(m) = fs::symlink_metadata(p) else {
        return "absent".to_owned();
    };
    let t = m.file_type();
    let what = if t.is_symlink() {
        format!("symlink -> {}", fs::read_link(p).unwrap().display())
    } else if t.is_file() {
        format!("file {}", sha256_hex(&fs::read(p).unwrap()))
    } else if t.is_dir() {
        let mut names: Vec<String> = fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        format!("dir {names:?}")
    } else {
        format!("special {:o}", m.mode() & 0o170000)
    };
    format!(
        "{what} ino={} uid={} gid={} mode={:o} mtime={}.{}",
        m.ino(),
        m.uid(),
        m.gid(),
        m.mode() & 0o7777,
        m.mtime(),
        m.mtime_nsec()
    )
}

/// A certificate installed by root in `out/svc/tls` (root-owned, writable
/// by the attacker's group), and a stand-in shadow file.
struct Scene {
    env: Env,
    target: Target,
    dir: PathBuf,
    shadow: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let env = Env::new();
        let leaf = Ca::new("hostile").issue(&LeafSpec::new(&[HOST]));
        let src = files_source(&env.path("src"), &leaf);
        let svc = env.out.join("svc");
        let dir = svc.join("tls");
        fs::create_dir_all(&dir).unwrap();
        let target = Target::in_dir("svc", &dir);
        env.write_config(&[src], &[&target]);
        let etc = env.path("etc");
        fs::create_dir_all(&etc).unwrap();
        let shadow = etc.join("shadow");
        write(&shadow, SECRET);
        set_mode(&shadow, 0o640);
        // The attacker reaches the tree, and writes `svc` and `svc/tls`
        // through their group.
        for d in [&env.root, &env.out, &etc] {
            set_mode(d, 0o755);
        }
        for d in [&svc, &dir] {
            std::os::unix::fs::chown(d, Some(0), Some(ATTACKER)).unwrap();
            set_mode(d, 0o770);
        }
        let s = Scene {
            env,
            target,
            dir,
            shadow,
        };
        s.sync().ok();
        s.target.assert_installed(&leaf);
        // The next run has something to write.
        let newer = Ca::new("hostile-2").issue(&LeafSpec::new(&[HOST]));
        fs::remove_dir_all(s.env.path("src")).unwrap();
        let src = files_source(&s.env.path("src"), &newer);
        s.env.write_config(&[src], &[&s.target]);
        s
    }

    fn key(&self) -> PathBuf {
        self.dir.join("privkey.pem")
    }

    fn fullchain(&self) -> PathBuf {
        self.dir.join("fullchain.pem")
    }

    /// `script` run by sh as the attacker, with `args` as $1, $2...
    fn attack(&self, script: &str, args: &[&Path]) {
        let mut c = Command::new("setpriv");
        c.args([
            &format!("--reuid={ATTACKER}"),
            &format!("--regid={ATTACKER}"),
            "--clear-groups",
            "sh",
            "-euc",
            script,
            "attacker",
        ])
        .args(args)
        .current_dir(&self.env.root);
        run_ok(c);
    }

    /// `mxkeys sync` as root, limited to 30 s and 1 GiB of address space:
    /// a run that blocks or reads without end fails here instead of
    /// hanging the test or the machine.
    fn sync(&self) -> Run {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("ulimit -v 1048576; exec \"$0\" --config \"$1\" sync")
            .arg(bin())
            .arg(&self.env.config)
            .env_remove("MXKEYS_CONFIG")
            .env("NO_COLOR", "1")
            .current_dir(&self.env.root);
        let out = output_within(c, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("mxkeys sync did not end (blocked?): {e}"));
        Run::from_output("mxkeys sync (ulimit -v 1 GiB)".to_owned(), out)
    }

    fn idents(&self, paths: &[&Path]) -> Vec<String> {
        paths.iter().map(|p| ident(p)).collect()
    }

    /// No file under the target tree holds the shadow's bytes.
    #[track_caller]
    fn assert_no_secret_copied(&self) {
        for (p, bytes) in snapshot(&self.env.out) {
            assert!(
                !String::from_utf8_lossy(&bytes).contains("SECRET-HASH"),
                "{} holds the linked file's content",
                p.display()
            );
        }
    }
}

fn ready(test: &str) -> bool {
    require(test, &[&[SETPRIV]])
}

#[test]
fn a_symlink_to_a_root_file_at_a_target_path_is_refused_and_the_file_is_untouched() {
    if !ready("a_symlink_to_a_root_file_at_a_target_path_is_refused") {
        return;
    }
    let s = Scene::new();
    s.attack("rm -f \"$1\"; ln -s \"$2\" \"$1\"", &[&s.key(), &s.shadow]);
    let watched = [s.key(), s.fullchain(), s.shadow.clone()];
    let watched: Vec<&Path> = watched.iter().map(PathBuf::as_path).collect();
    let before = s.idents(&watched);
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    r.assert_err_line(&[s.key().to_str().unwrap(), "symbolic link"]);
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
    assert_eq!(fs::read_to_string(&s.shadow).unwrap(), SECRET);
    s.assert_no_secret_copied();
}

#[test]
fn a_later_failure_never_copies_a_linked_root_file_into_the_target() {
    if !ready("a_later_failure_never_copies_a_linked_root_file_into_the_target") {
        return;
    }
    let s = Scene::new();
    // The key links to the shadow, and the chain's place is taken by a
    // directory so that a write after the key's fails and is undone.
    s.attack(
        "rm -f \"$1\" \"$3\"; ln -s \"$2\" \"$1\"; mkdir \"$3\"",
        &[&s.key(), &s.shadow, &s.fullchain()],
    );
    let watched = [s.key(), s.fullchain(), s.shadow.clone()];
    let watched: Vec<&Path> = watched.iter().map(PathBuf::as_path).collect();
    let before = s.idents(&watched);
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    s.assert_no_secret_copied();
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
}

#[test]
fn a_fifo_at_a_target_path_neither_blocks_the_run_nor_is_replaced() {
    if !ready("a_fifo_at_a_target_path_neither_blocks_the_run_nor_is_replaced") {
        return;
    }
    let s = Scene::new();
    s.attack("rm -f \"$1\"; mkfifo \"$1\"", &[&s.key()]);
    let watched = [s.key(), s.fullchain()];
    let watched: Vec<&Path> = watched.iter().map(PathBuf::as_path).collect();
    let before = s.idents(&watched);
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    r.assert_err_line(&[s.key().to_str().unwrap(), "FIFO"]);
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
}

#[test]
fn a_symlink_to_dev_zero_at_a_target_path_is_not_read() {
    if !ready("a_symlink_to_dev_zero_at_a_target_path_is_not_read") {
        return;
    }
    let s = Scene::new();
    s.attack("rm -f \"$1\"; ln -s /dev/zero \"$1\"", &[&s.fullchain()]);
    let watched = [s.key(), s.fullchain()];
    let watched: Vec<&Path> = watched.iter().map(PathBuf::as_path).collect();
    let before = s.idents(&watched);
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    r.assert_err_line(&[s.fullchain().to_str().unwrap(), "symbolic link"]);
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
}

#[test]
fn a_directory_in_place_of_a_target_file_changes_no_file_of_the_target() {
    if !ready("a_directory_in_place_of_a_target_file_changes_no_file_of_the_target") {
        return;
    }
    let s = Scene::new();
    s.attack(
        "rm -f \"$1\"; mkdir \"$1\"; echo mine > \"$1/x\"",
        &[&s.fullchain()],
    );
    let watched = [s.key(), s.fullchain(), s.fullchain().join("x")];
    let watched: Vec<&Path> = watched.iter().map(PathBuf::as_path).collect();
    let before = s.idents(&watched);
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    r.assert_err_line(&[s.fullchain().to_str().unwrap(), "directory"]);
    // The key, written before the chain, is not even rewritten and put back.
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
}

#[test]
fn a_target_directory_swapped_for_a_symlink_between_runs_is_refused() {
    if !ready("a_target_directory_swapped_for_a_symlink_between_runs_is_refused") {
        return;
    }
    let s = Scene::new();
    // A root-owned directory standing in for /etc/ssl/private, holding
    // files of the same names.
    let elsewhere = s.env.path("etc/private");
    fs::create_dir_all(&elsewhere).unwrap();
    set_mode(&elsewhere, 0o755);
    for name in ["privkey.pem", "fullchain.pem"] {
        write(&elsewhere.join(name), format!("root's own {name}\n"));
        set_mode(&elsewhere.join(name), 0o600);
    }
    s.attack(
        "mv \"$1\" \"$1.old\"; ln -s \"$2\" \"$1\"",
        &[&s.dir, &elsewhere],
    );
    let watched = [
        elsewhere.clone(),
        elsewhere.join("privkey.pem"),
        elsewhere.join("fullchain.pem"),
    ];
    let watched: Vec<&Path> = watched.iter().map(PathBuf::as_path).collect();
    let before = s.idents(&watched);
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    r.assert_err_line(&[s.dir.to_str().unwrap(), "symbolic link"]);
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
}

#[test]
fn a_target_directory_others_can_write_is_a_warning_or_with_strict_permissions_an_error() {
    let env = Env::new();
    let leaf = Ca::new("perm").issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let t = Target::new(&env, "svc");
    fs::set_permissions(&t.dir, fs::Permissions::from_mode(0o777)).unwrap();
    env.write_config(std::slice::from_ref(&src), &[&t]);
    let r = env.sync();
    r.ok();
    r.assert_err_line(&[t.dir.to_str().unwrap(), "world-writable"]);

    let strict = t.clone_with_extra("strict_permissions = true");
    env.write_config(&[src], &[&strict]);
    let before = ident(&strict.fullchain.clone().unwrap());
    let r = env.sync();
    r.assert_code(2);
    r.assert_err_line(&[strict.dir.to_str().unwrap(), "world-writable"]);
    assert_eq!(ident(&strict.fullchain.clone().unwrap()), before);
}

/// `Target` is not `Clone`; rebuild one with an extra TOML line.
trait WithExtra {
    fn clone_with_extra(&self, line: &str) -> Target;
}

impl WithExtra for Target {
    fn clone_with_extra(&self, line: &str) -> Target {
        let mut t = Target::in_dir(&self.name, &self.dir);
        t.extra = self.extra.clone();
        t.extra(line)
    }
}

/// The MTA-STS webroot is the web server's: its user may write it. A
/// symlink planted as `mta-sts.DOMAIN`, or as `.well-known` inside a
/// directory the attacker made, pointing at a root-owned directory, is
/// refused naming it, and nothing is created through it.
#[test]
fn a_symlink_planted_in_the_mta_sts_webroot_is_refused_and_nothing_is_written_through_it() {
    let test =
        "a_symlink_planted_in_the_mta_sts_webroot_is_refused_and_nothing_is_written_through_it";
    if !ready(test) {
        return;
    }
    let Some(bind) = common::bind::Bind::start() else {
        return;
    };
    let s = Scene::new();
    let www = s.env.out.join("www");
    fs::create_dir_all(&www).unwrap();
    std::os::unix::fs::chown(&www, Some(0), Some(ATTACKER)).unwrap();
    set_mode(&www, 0o770);
    let victim = s.env.path("etc/victim");
    fs::create_dir_all(&victim).unwrap();
    set_mode(&victim, 0o755);
    let config = fs::read_to_string(&s.env.config).unwrap();
    let addr = bind.addr();
    write(
        &s.env.config,
        format!(
            "{config}\n[dns.bind]\ntype = \"rfc2136\"\nserver = \"{addr}\"\n\
             tsig_name = \"{key}\"\ntsig_secret_file = {secret}\nzone = \"example.test\"\n\
             nameservers = [\"{addr}\"]\npropagation_interval = \"200ms\"\n\
             propagation_timeout = \"5s\"\n\
             [mta_sts]\ndomains = [\"example.test\"]\nmx = [\"mx.example.test\"]\n\
             dns = \"bind\"\nwebroot = {www}\nresponders = [\"127.0.0.1:9\"]\n",
            key = common::bind::KEY_NAME,
            secret = qp(&bind.dir().join("tsig.key")),
            www = qp(&www),
        ),
    );
    let site = www.join("mta-sts.example.test");
    let watched = [victim.as_path(), s.shadow.as_path()];
    let before = s.idents(&watched);
    // The site directory itself is a link to the victim.
    s.attack("ln -s \"$1\" \"$2\"", &[&victim, &site]);
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    r.assert_err_line(&[site.to_str().unwrap(), "symbolic link"]);
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
    // A real site directory of the attacker's, with `.well-known` a link.
    s.attack(
        "rm \"$2\"; mkdir \"$2\"; ln -s \"$1\" \"$2/.well-known\"",
        &[&victim, &site],
    );
    let r = s.sync();
    assert_ne!(r.code, 0, "{}", r.describe());
    r.assert_err_line(&[site.join(".well-known").to_str().unwrap(), "symbolic link"]);
    assert_eq!(s.idents(&watched), before, "{}", r.describe());
}
