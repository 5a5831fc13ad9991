//! DKIM key directories against a hostile signer user (issue 12, points 2
//! and 5): mxkeys runs as root, the signer's user (`key_owner`, here
//! `nobody`) owns `KEY_DIR/DOMAIN`. Whatever that user (or anyone) puts at
//! `KEY_DIR/DOMAIN`, a key generation never changes anything outside
//! KEY_DIR; KEY_DIR stays root's, and a KEY_DIR another user can write is
//! refused with a line saying how to fix it. `dkim import --selector` is a
//! DNS label or nothing happens.
//!
//! Keys are made by `mxkeys dkim rotate` publishing through a real BIND 9
//! (RFC 2136) on loopback; the attacks run as `nobody` through `setpriv`.
//! The `/etc`-like directory is one the test creates (never the real one).

use mxkeys_testsupport as common;

use common::bind;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bind::Bind;
use common::dkim_tools::{self, describe, mx, mx_ok, rsa_key_file, write_dkim_config};
use common::servers::{Need, open_dir, output_within, prog, run_ok};

const DOMAIN: &str = "example.test";
const SETPRIV: &[Need] = &[("setpriv", "util-linux")];
const SIGNER: &str = "nobody";

/// BIND and an open work directory (`nobody` can reach KEY_DIR in it), or
/// `None` (skip) when a program is missing outside CI.
fn setup(test: &str) -> Option<(Bind, PathBuf)> {
    let (bind, work) = dkim_tools::setup(test, &[SETPRIV])?;
    open_dir(bind.dir());
    open_dir(&work);
    Some((bind, work))
}

/// `work/mxkeys.toml`: keys in `work/keys` owned by `nobody`, published
/// through BIND, OpenDKIM tables in `work/signer` (no signer runs).
fn write_config(bind: &Bind, work: &Path) -> PathBuf {
    write_config_with(bind, work, "signer = \"opendkim\"\n")
}

/// [`write_config`] with other `signer` (and `algorithms`) lines.
fn write_config_with(bind: &Bind, work: &Path, signer: &str) -> PathBuf {
    let dkim = format!(
        "domains = [\"{DOMAIN}\"]\n\
         key_dir = \"keys\"\n\
         key_owner = \"{SIGNER}\"\n\
         dns = \"bind\"\n\
         {signer}\
         signer_dir = \"signer\"\n\
         lead = \"0s\"\n\
         ttl = 300\n"
    );
    write_dkim_config(bind, work, &dkim)
}

/// `sh -c SCRIPT` as the signer's user, with no supplementary groups.
fn as_signer(script: &str) -> Output {
    let user = nix::unistd::User::from_name(SIGNER).unwrap().unwrap();
    Command::new(prog("setpriv"))
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--clear-groups")
        .args(["sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Every entry under `dir` (itself included, links not followed): owner,
/// group, mode, and the content of files or the target of links.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let content = if meta.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
            Vec::new()
        } else if meta.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            std::fs::read(&p).unwrap()
        };
        out.insert(p, (meta.uid(), meta.gid(), meta.mode(), content));
    }
    out
}

/// A root-owned directory standing in for `/etc`: mode 0755, a file and a
/// subdirectory.
fn etc_like(work: &Path) -> PathBuf {
    let etc = work.join("etc");
    std::fs::create_dir_all(etc.join("ssl")).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    for d in [&etc, &etc.join("ssl")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    etc
}

/// Whether `out` failed with a stderr line naming `path`.
fn fails_naming(out: &Output, path: &Path) -> bool {
    let path = path.to_str().unwrap();
    !out.status.success()
        && String::from_utf8_lossy(&out.stderr)
            .lines()
            .any(|l| l.contains(path))
}

/// The first key generation with `key_owner`: KEY_DIR (created by mxkeys)
/// stays root's, mode 0755; the domain directory is the signer's, 0700.
#[test]
fn key_dir_created_by_mxkeys_stays_root_owned_and_the_domain_directory_is_the_signers() {
    let Some((bind, work)) =
        setup("key_dir_created_by_mxkeys_stays_root_owned_and_the_domain_directory_is_the_signers")
    else {
        return;
    };
    let config = write_config(&bind, &work);
    mx_ok(&config, &["dkim", "rotate"]);
    let signer = nix::unistd::User::from_name(SIGNER).unwrap().unwrap();
    let key_dir = std::fs::symlink_metadata(work.join("keys")).unwrap();
    assert_eq!(
        (key_dir.uid(), key_dir.mode() & 0o7777),
        (0, 0o755),
        "KEY_DIR"
    );
    let domain = std::fs::symlink_metadata(work.join("keys").join(DOMAIN)).unwrap();
    assert!(domain.is_dir());
    assert_eq!(
        (domain.uid(), domain.mode() & 0o7777),
        (signer.uid.as_raw(), 0o700),
        "KEY_DIR/DOMAIN"
    );
    let keys: Vec<_> = std::fs::read_dir(work.join("keys").join(DOMAIN))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = std::fs::symlink_metadata(&keys[0]).unwrap();
    assert_eq!(
        (key.uid(), key.mode() & 0o7777),
        (signer.uid.as_raw(), 0o600)
    );
}

/// The attack of issue 12 point 2, as the signer's user: `mv
/// KEY_DIR/DOMAIN x; ln -s /etc KEY_DIR/DOMAIN`, then a forced key
/// generation. The `/etc`-like directory keeps its owner, mode and
/// contents; if the swap could be made at all, the run fails naming the
/// path.
#[test]
fn signer_user_swapping_its_key_directory_for_a_link_gains_nothing() {
    let Some((bind, work)) =
        setup("signer_user_swapping_its_key_directory_for_a_link_gains_nothing")
    else {
        return;
    };
    let config = write_config(&bind, &work);
    let etc = etc_like(&work);
    mx_ok(&config, &["dkim", "rotate"]);
    let key_dir = work.join("keys");
    let domain_dir = key_dir.join(DOMAIN);
    let before = snapshot(&etc);
    let attack = as_signer(&format!(
        "mv {d} {k}/x && ln -s {etc} {d}",
        d = domain_dir.display(),
        k = key_dir.display(),
        etc = etc.display()
    ));
    let swapped = std::fs::symlink_metadata(&domain_dir).is_ok_and(|m| m.file_type().is_symlink());
    let out = mx(&config, &["dkim", "rotate", "--force"]);
    assert_eq!(
        snapshot(&etc),
        before,
        "the /etc-like directory changed (attack: {})\n{}",
        describe(&attack),
        describe(&out)
    );
    if swapped {
        assert!(fails_naming(&out, &domain_dir), "{}", describe(&out));
    } else {
        // The swap was refused: the generation went on, in the real directory.
        assert!(out.status.success(), "{}", describe(&out));
        let keys = std::fs::read_dir(&domain_dir).unwrap().count();
        assert_eq!(keys, 2, "the successor's key file beside the first");
    }
}

/// Whoever put a link at `KEY_DIR/DOMAIN` (here root itself, the one user
/// left who can write KEY_DIR), a key generation refuses it naming the
/// path and changes nothing where it points.
#[test]
fn a_link_in_place_of_a_key_directory_is_an_error_naming_it_and_nothing_outside_changes() {
    let Some((bind, work)) = setup(
        "a_link_in_place_of_a_key_directory_is_an_error_naming_it_and_nothing_outside_changes",
    ) else {
        return;
    };
    let config = write_config(&bind, &work);
    let etc = etc_like(&work);
    mx_ok(&config, &["dkim", "rotate"]);
    let key_dir = work.join("keys");
    let domain_dir = key_dir.join(DOMAIN);
    std::fs::rename(&domain_dir, key_dir.join("x")).unwrap();
    std::os::unix::fs::symlink(&etc, &domain_dir).unwrap();
    let before = snapshot(&etc);
    let out = mx(&config, &["dkim", "rotate", "--force"]);
    assert!(fails_naming(&out, &domain_dir), "{}", describe(&out));
    assert_eq!(snapshot(&etc), before, "{}", describe(&out));
}

/// A KEY_DIR the signer's user owns, or that group or others can write, is
/// refused at the start of the pass with one line saying how to fix it;
/// nothing is written in it and its owner and mode stay.
#[test]
fn a_key_dir_anyone_but_root_can_write_is_refused_with_the_fix() {
    let Some((bind, work)) = setup("a_key_dir_anyone_but_root_can_write_is_refused_with_the_fix")
    else {
        return;
    };
    let config = write_config(&bind, &work);
    let signer = nix::unistd::User::from_name(SIGNER).unwrap().unwrap();
    let key_dir = work.join("keys");
    std::fs::create_dir(&key_dir).unwrap();
    for (uid, mode) in [(signer.uid.as_raw(), 0o700), (0, 0o775), (0, 0o777)] {
        std::os::unix::fs::chown(&key_dir, Some(uid), Some(0)).unwrap();
        std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(mode)).unwrap();
        let before = snapshot(&key_dir);
        let out = mx(&config, &["dkim", "rotate"]);
        let fix = format!("chown root:root {k}; chmod 755 {k}", k = key_dir.display());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.lines().filter(|l| l.contains(&fix)).count() == 1,
            "uid {uid} mode {mode:o}: {}",
            describe(&out)
        );
        assert_eq!(snapshot(&key_dir), before, "uid {uid} mode {mode:o}");
        // `dkim import` refuses it the same way, before anything is written.
        let pem = work.join("import.pem");
        run_ok({
            let mut c = Command::new(prog("openssl"));
            c.args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(&pem);
            c
        });
        let out = mx(
            &config,
            &[
                "dkim",
                "import",
                "--domain",
                DOMAIN,
                "--selector",
                "imported",
                pem.to_str().unwrap(),
            ],
        );
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(&fix),
            "{}",
            describe(&out)
        );
        assert_eq!(snapshot(&key_dir), before, "uid {uid} mode {mode:o}");
    }
}

/// `dkim import --selector` must be one DNS label: `../x` (a path) and
/// `a b` are refused with exit 2 and one line, before anything is read or
/// written.
#[test]
fn import_refuses_a_selector_that_is_not_a_dns_label_and_writes_nothing() {
    let Some((bind, work)) =
        setup("import_refuses_a_selector_that_is_not_a_dns_label_and_writes_nothing")
    else {
        return;
    };
    let config = write_config(&bind, &work);
    let pem = work.join("import.pem");
    rsa_key_file(&pem, 2048);
    let before = snapshot(&work);
    for selector in ["../x", "a b", "-a", "a-", "", &"a".repeat(64)] {
        let out = mx(
            &config,
            &[
                "dkim",
                "import",
                "--domain",
                DOMAIN,
                &format!("--selector={selector}"),
                pem.to_str().unwrap(),
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(2),
            "{selector:?}: {}",
            describe(&out)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            lines.len() == 1 && lines[0].contains("selector"),
            "{selector:?}: {}",
            describe(&out)
        );
        assert_eq!(snapshot(&work), before, "{selector:?}");
    }
}

/// The signer's user puts a FIFO in place of a key file mxkeys reads
/// (Rspamd's Ed25519 key is re-derived from its PEM file at every pass):
/// the pass does not block on it, it fails naming the file.
#[test]
fn a_fifo_in_place_of_a_key_file_is_refused_not_read() {
    let Some((bind, work)) = setup("a_fifo_in_place_of_a_key_file_is_refused_not_read") else {
        return;
    };
    let config = write_config_with(
        &bind,
        &work,
        "signer = \"rspamd\"\nalgorithms = [\"rsa-2048\", \"ed25519\"]\n",
    );
    mx_ok(&config, &["dkim", "rotate"]);
    let domain_dir = work.join("keys").join(DOMAIN);
    let ed = std::fs::read_dir(&domain_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "pem")
                && p.file_name().unwrap().to_string_lossy().starts_with('e')
        })
        .expect("the Ed25519 key file");
    let attack = as_signer(&format!("rm {f} && mkfifo {f}", f = ed.display()));
    assert!(attack.status.success(), "{}", describe(&attack));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxkeys"));
    cmd.arg("--config")
        .arg(&config)
        .args(["dkim", "rotate"])
        .env_remove("MXKEYS_CONFIG");
    let out = output_within(cmd, std::time::Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("mxkeys dkim rotate did not finish: {e}"));
    assert!(fails_naming(&out, &ed), "{}", describe(&out));
}
