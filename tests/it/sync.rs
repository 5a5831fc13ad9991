//! Installing: file modes, layout, idempotency, reloads, locking and `check`.

use mxkeys_testsupport as common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Run `mxkeys --config CFG sync` under a given umask.
fn sync_with_umask(env: &Env, umask: &str) -> Run {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" --config \"$1\" sync"))
        .arg(bin())
        .arg(&env.config)
        .env_remove("MXKEYS_CONFIG")
        .current_dir(&env.root);
    Run::from_output(format!("umask {umask}; mxkeys sync"), run_with_timeout(c))
}

/// Key-holding files get 0600 by default and non-key files 0644, whatever
/// the umask and whatever mode a pre-existing file had.
#[test]
fn default_modes() {
    for umask in ["077", "000"] {
        let env = Env::new();
        let ca = Ca::new("modes");
        let leaf = ca.issue(&LeafSpec::new(&[HOST]));
        let src = files_source(&env.path("src"), &leaf);
        let t = Target::new(&env, "postfix").all_outputs();
        // A pre-existing, too open key file.
        write(t.key.as_ref().unwrap(), "old key\n");
        set_mode(t.key.as_ref().unwrap(), 0o644);
        env.write_config(&[src], &[&t]);
        sync_with_umask(&env, umask).ok();
        t.assert_installed(&leaf);
        assert_mode(t.key.as_ref().unwrap(), 0o600);
        assert_mode(t.combined.as_ref().unwrap(), 0o600);
        assert_mode(t.fullchain.as_ref().unwrap(), 0o644);
        assert_mode(t.cert.as_ref().unwrap(), 0o644);
        assert_mode(t.chain.as_ref().unwrap(), 0o644);
    }
}

/// `mode` applies to key-holding files only.
#[test]
fn custom_mode_for_key_files() {
    let env = Env::new();
    let ca = Ca::new("modes2");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let t = Target::new(&env, "postfix").all_outputs().mode("0640");
    env.write_config(&[src], &[&t]);
    sync_with_umask(&env, "077").ok();
    assert_mode(t.key.as_ref().unwrap(), 0o640);
    assert_mode(t.combined.as_ref().unwrap(), 0o640);
    assert_mode(t.fullchain.as_ref().unwrap(), 0o644);
    assert_mode(t.cert.as_ref().unwrap(), 0o644);
    assert_mode(t.chain.as_ref().unwrap(), 0o644);
}

/// The name of numeric id `id` in /etc/passwd or /etc/group.
fn name_of_id(file: &str, id: u32) -> String {
    fs::read_to_string(file)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == id.to_string()).then(|| f[0].to_string())
        })
        .unwrap_or_else(|| panic!("no entry for id {id} in {file}"))
}

/// `owner` and `group` are applied to the key-holding files.
#[test]
fn owner_and_group() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let ca = Ca::new("owner");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let mut t = Target::new(&env, "postfix").all_outputs().mode("0640");
    t.owner = Some(name_of_id("/etc/passwd", 65534));
    t.group = Some(name_of_id("/etc/group", 65534));
    env.write_config(&[src], &[&t]);
    env.sync().ok();
    for p in [t.key.as_ref().unwrap(), t.combined.as_ref().unwrap()] {
        let m = fs::metadata(p).unwrap();
        assert_eq!(
            (m.uid(), m.gid()),
            (65534, 65534),
            "owner of {}",
            p.display()
        );
    }
}

/// fullchain = leaf + intermediates; combined = key, leaf, intermediates;
/// cert = leaf only; chain = intermediates only. All normalized PEM.
#[test]
fn output_layout() {
    let env = Env::new();
    let ca = Ca::new("layout");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::Rsa2048));
    // Input with unwrapped base64 and text around the blocks, and a key in
    // PKCS#1 form with CRLF line endings.
    let cert = env.path("src/fullchain.pem");
    let key = env.path("src/privkey.pem");
    write(
        &cert,
        format!(
            "subject=CN = {HOST}\n{}",
            pem_unwrapped(&leaf.fullchain_pem())
        ),
    );
    write(
        &key,
        leaf.key_pem_as(KeyFormat::Pkcs1).replace('\n', "\r\n"),
    );
    let t = Target::new(&env, "postfix").all_outputs();
    env.write_config(&[src_files(&cert, &key, None)], &[&t]);
    env.sync().ok();
    t.assert_installed(&leaf);
    assert_only_outputs(&t);

    let combined = read_pem(t.combined.as_ref().unwrap());
    assert_eq!(combined.len(), 3, "combined = key + leaf + intermediate");
    assert!(
        is_private_key_label(&combined[0].0),
        "combined starts with the key"
    );
    assert_eq!(
        private_key_public_raw(&combined[0].0, &combined[0].1),
        leaf.public_key_raw()
    );
    assert_eq!(combined[1], ("CERTIFICATE".to_string(), leaf.der.clone()));
    assert_eq!(
        combined[2],
        ("CERTIFICATE".to_string(), leaf.chain[0].clone())
    );

    let leaf_only = read_pem(t.cert.as_ref().unwrap());
    assert_eq!(
        leaf_only,
        vec![("CERTIFICATE".to_string(), leaf.der.clone())]
    );
    let chain_only = read_pem(t.chain.as_ref().unwrap());
    assert_eq!(
        chain_only,
        vec![("CERTIFICATE".to_string(), leaf.chain[0].clone())]
    );
    let fullchain = read_pem(t.fullchain.as_ref().unwrap());
    assert_eq!(fullchain.len(), 2);
}

/// A target with only `combined` (no separate key) is fine.
#[test]
fn combined_only_target() {
    let env = Env::new();
    let ca = Ca::new("combined");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let mut t = Target::new(&env, "haproxy");
    t.fullchain = None;
    t.key = None;
    t.combined = Some(t.dir.join("haproxy.pem"));
    env.write_config(&[src], &[&t]);
    env.sync().ok();
    let blocks = read_pem(t.combined.as_ref().unwrap());
    assert!(is_private_key_label(&blocks[0].0));
    assert_eq!(sha256_hex(&blocks[1].1), leaf.fp());
    assert_mode(t.combined.as_ref().unwrap(), 0o600);
}

/// The target directory holds the configured outputs and nothing else (no
/// temporary files left behind).
#[track_caller]
fn assert_only_outputs(t: &Target) {
    let mut found: Vec<_> = fs::read_dir(&t.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    let mut want = t.outputs();
    want.sort();
    assert_eq!(found, want, "unexpected files in {}", t.dir.display());
}

/// The same PEM blocks with each base64 body on a single line.
fn pem_unwrapped(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("-----BEGIN") {
            out.push_str(line);
            out.push('\n');
        } else if line.starts_with("-----END") {
            out.push('\n');
            out.push_str(line);
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    out
}

fn ids(t: &Target) -> Vec<(u64, i64, i64, Vec<u8>)> {
    t.outputs().iter().map(|p| file_id(p)).collect()
}

/// A second sync with nothing new writes nothing (same inode and mtime)
/// and runs no reload.
#[test]
fn second_sync_is_a_no_op() {
    let env = Env::new();
    let ca = Ca::new("idem");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let acme = env.path("acme.json");
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&leaf, HOST)]))]),
    );
    let log = env.path("reload.log");
    let sh = env.path("bin/reload-log");
    script(&sh, &format!("echo \"$1\" >> {}", qp(&log)));
    let t = Target::new(&env, "postfix")
        .all_outputs()
        .reload(&[sh.to_str().unwrap(), "postfix"]);
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    assert_eq!(log_lines(&log), vec!["postfix"]);
    let before = ids(&t);
    std::thread::sleep(Duration::from_millis(20));
    env.sync().ok();
    assert_eq!(ids(&t), before, "second sync rewrote target files");
    assert_eq!(log_lines(&log), vec!["postfix"], "second sync ran a reload");
}

/// When the certificate changes, changed files are replaced atomically
/// (new inode), unchanged files (same intermediates) are left alone, and
/// the reload runs again.
#[test]
fn renewal_replaces_changed_files_only() {
    let env = Env::new();
    let ca = Ca::new("renewal");
    let first = ca.issue(&LeafSpec::new(&[HOST]).days(20));
    let src_dir = env.path("src");
    let src = files_source(&src_dir, &first);
    let log = env.path("reload.log");
    let sh = env.path("bin/reload-log");
    script(&sh, &format!("echo \"$1\" >> {}", qp(&log)));
    let t = Target::new(&env, "postfix")
        .all_outputs()
        .reload(&[sh.to_str().unwrap(), "postfix"]);
    env.write_config(&[src], &[&t]);
    env.sync().ok();
    let before = ids(&t);

    let second = ca.issue(&LeafSpec::new(&[HOST]).days(80));
    files_source(&src_dir, &second);
    env.sync().ok();
    t.assert_installed(&second);
    let after = ids(&t);
    for ((p, b), a) in t.outputs().iter().zip(&before).zip(&after) {
        if p == t.chain.as_ref().unwrap() {
            assert_eq!(a, b, "unchanged intermediates file was rewritten");
        } else {
            assert_ne!(a.3, b.3, "{} content did not change", p.display());
            assert_ne!(a.0, b.0, "{} was not replaced by rename", p.display());
        }
    }
    assert_eq!(log_lines(&log), vec!["postfix", "postfix"]);
    assert_only_outputs(&t);
}

/// Identical reload argv across targets runs once; all files of all targets
/// are written before any reload; a different argv runs separately; targets
/// whose files did not change do not reload.
#[test]
fn reloads_run_once_after_all_writes() {
    let env = Env::new();
    let ca = Ca::new("reload");
    let la = ca.issue(&LeafSpec::new(&[HOST]));
    let lc = ca.issue(&LeafSpec::new(&[OTHER]));
    let src_a = files_source(&env.path("src-a"), &la);
    let src_c = files_source(&env.path("src-c"), &lc);
    let log = env.path("reload.log");
    let sh = env.path("bin/reload-log");
    let ta = Target::new(&env, "a");
    let tb = Target::new(&env, "b");
    let tc = Target::new(&env, "c").domains(&[OTHER]);
    // The script records its argument and whether every target's files exist.
    let mut body = String::from("present=yes\n");
    for t in [&ta, &tb, &tc] {
        for p in t.outputs() {
            body.push_str(&format!("[ -f {} ] || present=no\n", qp(&p)));
        }
    }
    body.push_str(&format!("echo \"$1 $present\" >> {}", qp(&log)));
    script(&sh, &body);
    let sh_s = sh.to_str().unwrap();
    let ta = ta.reload(&[sh_s, "x"]);
    let tb = tb.reload(&[sh_s, "x"]);
    let tc = tc.reload(&[sh_s, "y"]);
    env.write_config(&[src_a, src_c], &[&ta, &tb, &tc]);
    env.sync().ok();
    let mut lines = log_lines(&log);
    lines.sort();
    assert_eq!(lines, vec!["x yes", "y yes"]);

    // Only c's certificate changes: only "y" runs.
    let lc2 = ca.issue(&LeafSpec::new(&[OTHER]).days(88));
    files_source(&env.path("src-c"), &lc2);
    env.sync().ok();
    tc.assert_installed(&lc2);
    let mut lines = log_lines(&log);
    lines.sort();
    assert_eq!(lines, vec!["x yes", "y yes", "y yes"]);
}

/// A failing reload makes sync exit 1, naming the command and the tail of
/// its stderr; that target's new files are rolled back (the service keeps
/// what it had), while other targets are installed and their reloads run.
#[test]
fn failing_reload_exits_1() {
    let env = Env::new();
    let ca = Ca::new("fail");
    let old = ca.issue(&LeafSpec::new(&[HOST]).days(30));
    let la = ca.issue(&LeafSpec::new(&[HOST]).days(60));
    let lb = ca.issue(&LeafSpec::new(&[OTHER]));
    let bad = env.path("bin/failing-reload");
    script(
        &bad,
        "i=0; while [ $i -lt 50 ]; do echo \"noise line $i\" >&2; i=$((i+1)); done\n\
         echo 'boom-detail-xyz' >&2\nexit 3",
    );
    let log = env.path("ok.log");
    let good = env.path("bin/ok-reload");
    script(&good, &format!("echo ran >> {}", qp(&log)));
    // First the old certificate, with a reload that works.
    let src_old = files_source(&env.path("src-old"), &old);
    let ta = Target::new(&env, "a").reload(&[good.to_str().unwrap()]);
    env.write_config(&[src_old], &[&ta]);
    env.sync().assert_code(0);
    ta.assert_installed(&old);
    fs::remove_file(&log).unwrap();

    // Then a newer one, whose reload fails.
    let src_a = files_source(&env.path("src-a"), &la);
    let src_b = files_source(&env.path("src-b"), &lb);
    let ta = Target::new(&env, "a").reload(&[bad.to_str().unwrap()]);
    let tb = Target::new(&env, "b")
        .domains(&[OTHER])
        .reload(&[good.to_str().unwrap()]);
    env.write_config(&[src_a, src_b], &[&ta, &tb]);
    let r = env.sync();
    r.assert_code(1);
    r.assert_stderr_contains("failing-reload");
    r.assert_stderr_contains("boom-detail-xyz");
    r.assert_stderr_contains("rolled back");
    ta.assert_installed(&old);
    tb.assert_installed(&lb);
    assert_eq!(log_lines(&log), vec!["ran"]);
}

/// A target file that cannot be written (a directory in its place) makes
/// sync exit 1; other targets are still installed and reloaded, and the
/// failed target's reload does not run.
#[test]
fn write_failure_exits_1_others_processed() {
    let env = Env::new();
    let ca = Ca::new("wfail");
    let la = ca.issue(&LeafSpec::new(&[HOST]));
    let lb = ca.issue(&LeafSpec::new(&[OTHER]));
    let src_a = files_source(&env.path("src-a"), &la);
    let src_b = files_source(&env.path("src-b"), &lb);
    let log = env.path("reload.log");
    let sh = env.path("bin/reload-log");
    script(&sh, &format!("echo \"$1\" >> {}", qp(&log)));
    let ta = Target::new(&env, "a").reload(&[sh.to_str().unwrap(), "a"]);
    let tb = Target::new(&env, "b")
        .domains(&[OTHER])
        .reload(&[sh.to_str().unwrap(), "b"]);
    let blocker = ta.fullchain.as_ref().unwrap();
    fs::create_dir_all(blocker.join("occupied")).unwrap();
    env.write_config(&[src_a, src_b], &[&ta, &tb]);
    let r = env.sync();
    r.assert_code(1);
    r.assert_stderr_contains(blocker.to_str().unwrap());
    assert!(
        blocker.join("occupied").is_dir(),
        "the directory was removed"
    );
    tb.assert_installed(&lb);
    let lines = log_lines(&log);
    assert!(
        lines.contains(&"b".to_string()),
        "b's reload did not run: {lines:?}"
    );
}

/// A reload over its timeout is stopped and makes sync exit 1; the
/// previous files come back.
#[test]
fn reload_timeout() {
    let env = Env::new();
    let ca = Ca::new("timeout");
    let old = ca.issue(&LeafSpec::new(&[HOST]).days(30));
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let before = Target::new(&env, "postfix");
    env.write_config(&[files_source(&env.path("src-old"), &old)], &[&before]);
    env.sync().ok();
    let src = files_source(&env.path("src"), &leaf);
    let slow = env.path("bin/slow-reload");
    script(&slow, "exec sleep 30");
    let t = Target::new(&env, "postfix")
        .reload(&[slow.to_str().unwrap()])
        .reload_timeout("1s");
    env.write_config(&[src], &[&t]);
    let start = Instant::now();
    let r = env.sync();
    let took = start.elapsed();
    r.assert_code(1);
    r.assert_stderr_contains("slow-reload");
    r.assert_stderr_contains("timed out");
    r.assert_stderr_contains("rolled back");
    assert!(took < Duration::from_secs(20), "sync took {took:?}");
    t.assert_installed(&old);
}

/// Two syncs at once (sharing state_dir) do not interleave: the lock covers
/// the reloads too.
#[test]
fn concurrent_syncs_do_not_interleave() {
    let env = Env::new();
    let ca = Ca::new("lock");
    let log = env.path("lock.log");
    let sh = env.path("bin/slow-reload");
    script(
        &sh,
        &format!("echo start >> {0}\nsleep 1\necho end >> {0}", qp(&log)),
    );
    let mut configs = vec![];
    for (i, name) in ["a", "b"].iter().enumerate() {
        let leaf = ca.issue(&LeafSpec::new(&[HOST]));
        let src = files_source(&env.path(&format!("src-{name}")), &leaf);
        let t = Target::new(&env, name).reload(&[sh.to_str().unwrap(), name]);
        let cfg = env.path(&format!("mxkeys-{i}.toml"));
        let mut text = env.header();
        text.push('\n');
        text.push_str(&src);
        text.push('\n');
        text.push_str(&t.toml());
        write(&cfg, text);
        configs.push(cfg);
    }
    let handles: Vec<_> = configs
        .iter()
        .map(|cfg| {
            let mut c = Command::new(bin());
            c.arg("--config")
                .arg(cfg)
                .arg("sync")
                .env_remove("MXKEYS_CONFIG")
                .current_dir(&env.root);
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                Run::from_output(
                    format!("mxkeys --config {} sync", cfg.display()),
                    run_with_timeout(c),
                )
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap().ok();
    }
    assert_eq!(log_lines(&log), vec!["start", "end", "start", "end"]);
}

/// Files under state_dir other than lock files.
fn state_without_locks(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    snapshot(dir)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().to_lowercase().contains("lock"))
        .collect()
}

/// `check` prints one line per target with its name and the chosen
/// fingerprint, writes nothing and runs nothing.
#[test]
fn check_prints_plan_and_writes_nothing() {
    let env = Env::new();
    let ca = Ca::new("check");
    let la = ca.issue(&LeafSpec::new(&[HOST]));
    let lb = ca.issue(&LeafSpec::new(&[OTHER]).kind(KeyKind::Rsa2048));
    let acme = env.path("acme.json");
    write_json(
        &acme,
        &acme_v2(&[(
            "le",
            Some(vec![AcmeEntry::new(&la, HOST), AcmeEntry::new(&lb, OTHER)]),
        )]),
    );
    let log = env.path("reload.log");
    let sh = env.path("bin/reload-log");
    script(&sh, &format!("echo ran >> {}", qp(&log)));
    let ta = Target::new(&env, "postfix")
        .all_outputs()
        .reload(&[sh.to_str().unwrap()]);
    let tb = Target::new(&env, "dovecot")
        .domains(&[OTHER])
        .reload(&[sh.to_str().unwrap()]);
    env.write_config(&[src_traefik(&acme)], &[&ta, &tb]);
    let r = env.check();
    r.ok();
    let line = r
        .stdout_line_with(&la.fp())
        .unwrap_or_else(|| panic!("no plan line with postfix's fingerprint\n{}", r.describe()));
    assert!(
        line.contains("postfix"),
        "plan line {line:?} lacks the target name"
    );
    let line = r
        .stdout_line_with(&lb.fp())
        .unwrap_or_else(|| panic!("no plan line with dovecot's fingerprint\n{}", r.describe()));
    assert!(
        line.contains("dovecot"),
        "plan line {line:?} lacks the target name"
    );
    assert!(snapshot(&env.out).is_empty(), "check wrote target files");
    assert!(
        state_without_locks(&env.state).is_empty(),
        "check wrote state"
    );
    assert!(!log.exists(), "check ran a reload");
}

/// After a sync, `check` with a newer certificate available shows the new
/// fingerprint but leaves target files and state untouched.
#[test]
fn check_after_sync_changes_nothing() {
    let env = Env::new();
    let ca = Ca::new("check2");
    let first = ca.issue(&LeafSpec::new(&[HOST]).days(20));
    let src = files_source(&env.path("src"), &first);
    let log = env.path("reload.log");
    let sh = env.path("bin/reload-log");
    script(&sh, &format!("echo ran >> {}", qp(&log)));
    let t = Target::new(&env, "postfix").reload(&[sh.to_str().unwrap()]);
    env.write_config(&[src], &[&t]);
    env.sync().ok();
    assert_eq!(log_lines(&log).len(), 1);
    let before = ids(&t);
    let state_before = state_without_locks(&env.state);

    let second = ca.issue(&LeafSpec::new(&[HOST]).days(80));
    files_source(&env.path("src"), &second);
    let r = env.check();
    r.ok();
    let line = r
        .stdout_line_with(&second.fp())
        .unwrap_or_else(|| panic!("plan lacks the new fingerprint\n{}", r.describe()));
    assert!(line.contains("postfix"));
    assert_eq!(ids(&t), before, "check touched target files");
    assert_eq!(
        state_without_locks(&env.state),
        state_before,
        "check changed state"
    );
    assert_eq!(log_lines(&log).len(), 1, "check ran a reload");
}

/// `check` uses the same exit codes: 1 when a source cannot be read, while
/// still planning the other targets.
#[test]
fn check_exit_1_on_unreadable_source() {
    let env = Env::new();
    let ca = Ca::new("check3");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let missing = env.path("nowhere/acme.json");
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_traefik(&missing), src], &[&t]);
    let r = env.check();
    r.assert_code(1);
    r.assert_err_line(&[missing.to_str().unwrap(), "not found"]);
    assert!(r.stdout_line_with(&leaf.fp()).is_some(), "{}", r.describe());
    assert!(snapshot(&env.out).is_empty());
}

/// `--config` may come from $MXKEYS_CONFIG; `-v` is accepted.
#[test]
fn config_from_environment_and_verbose_flag() {
    let env = Env::new();
    let ca = Ca::new("envcfg");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let t = Target::new(&env, "postfix");
    env.write_config(&[src], &[&t]);
    let mut c = Command::new(bin());
    c.args(["-v", "sync"])
        .env("MXKEYS_CONFIG", &env.config)
        .current_dir(&env.root);
    Run::from_output(
        "MXKEYS_CONFIG=... mxkeys -v sync".into(),
        run_with_timeout(c),
    )
    .ok();
    t.assert_installed(&leaf);
}

/// A certificate the service refused (here: its reload fails) is rolled
/// back and recorded with a backoff; the next sync does not try it again
/// before the backoff ends (no write, no reload), and says so.
#[test]
fn a_refused_certificate_is_retried_only_after_its_backoff() {
    let env = Env::new();
    let ca = Ca::new("backoff");
    let old = ca.issue(&LeafSpec::new(&[HOST]).days(30));
    let new = ca.issue(&LeafSpec::new(&[HOST]).days(60));
    let log = env.path("reloads.log");
    let good = env.path("bin/ok-reload");
    script(&good, &format!("echo ok >> {}", qp(&log)));
    let bad = env.path("bin/refusing-reload");
    script(&bad, &format!("echo refused >> {}; exit 1", qp(&log)));
    let t = Target::new(&env, "postfix").reload(&[good.to_str().unwrap()]);
    env.write_config(&[files_source(&env.path("src-old"), &old)], &[&t]);
    env.sync().assert_code(0);

    let t = Target::new(&env, "postfix").reload(&[bad.to_str().unwrap()]);
    env.write_config(&[files_source(&env.path("src-new"), &new)], &[&t]);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    env.sync()
        .assert_code(1)
        .assert_stderr_contains("rolled back");
    t.assert_installed(&old);
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(env.state.join("state.json")).unwrap()).unwrap();
    let failure = &state["failures"]["postfix"];
    assert_eq!(failure["sha256"], new.fp(), "{state:#}");
    assert_eq!(failure["attempts"], 1);
    let retry_at = failure["retry_at"].as_i64().unwrap();
    assert!(
        (before + 55..before + 70).contains(&retry_at),
        "first backoff is a minute: {retry_at} vs {before}"
    );
    let reloads_after_rollback = log_lines(&log).len();

    // Within the backoff: no write, no reload, a clear word, exit 1.
    let r = env.sync();
    r.assert_code(1)
        .assert_stderr_contains("trying it again after");
    t.assert_installed(&old);
    assert_eq!(log_lines(&log).len(), reloads_after_rollback);
}

/// A chain given out of order (intermediate before the leaf, everything
/// reversed, root before intermediate; in the certificate file or in a
/// separate chain file) is installed in issuing order: leaf, intermediate,
/// root. A chain with a certificate that belongs to no path from the leaf
/// is still refused and nothing is installed.
#[test]
fn out_of_order_chains_are_installed_in_issuing_order_and_unrelated_extras_refused() {
    let ca = Ca::new("order");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let pems = [
        pem_block("CERTIFICATE", &leaf.der),
        pem_block("CERTIFICATE", &ca.inter_der),
        pem_block("CERTIFICATE", &ca.root_der),
    ];
    let want = vec![leaf.der.clone(), ca.inter_der.clone(), ca.root_der.clone()];
    // The blocks of `pems` at `order`, as one file.
    let joined = |order: &[usize]| order.iter().map(|&i| pems[i].as_str()).collect::<String>();
    // `sync` in `env` succeeds and `t` holds leaf, intermediate, root.
    let syncs_in_issuing_order = |env: &Env, t: &Target, case: &str| {
        let r = env.sync();
        assert_eq!(r.code, 0, "{case}: {}", r.describe());
        assert_eq!(
            read_certs(t.fullchain.as_ref().unwrap()),
            want,
            "{case}: the installed fullchain is leaf, intermediate, root"
        );
    };
    // (case, certificate file, chain file)
    for (case, in_cert, in_chain) in [
        ("intermediate before the leaf", vec![1, 0, 2], vec![]),
        ("all reversed", vec![2, 1, 0], vec![]),
        ("root before intermediate", vec![0, 2, 1], vec![]),
        ("chain file reversed", vec![0], vec![2, 1]),
    ] {
        let env = Env::new();
        let cert = env.path("src/cert.pem");
        let key = env.path("src/privkey.pem");
        write(&cert, joined(&in_cert));
        write(&key, leaf.key_pem());
        let chain = env.path("src/chain.pem");
        if !in_chain.is_empty() {
            write(&chain, joined(&in_chain));
        }
        let t = Target::new(&env, "mail");
        let src = src_files(
            &cert,
            &key,
            (!in_chain.is_empty()).then_some(chain.as_path()),
        );
        env.write_config(&[src], &[&t]);
        syncs_in_issuing_order(&env, &t, case);
    }

    // The same in a Traefik acme.json entry (decoded in full only when its
    // first certificate is a CA's).
    for (case, order) in [
        ("acme.json: intermediate before the leaf", [1, 0, 2]),
        ("acme.json: all reversed", [2, 1, 0]),
        ("acme.json: root before intermediate", [0, 2, 1]),
    ] {
        use base64::Engine as _;
        let env = Env::new();
        let acme = env.path("acme/acme.json");
        let mut entry = AcmeEntry::new(&leaf, HOST);
        entry.certificate = Some(base64::engine::general_purpose::STANDARD.encode(joined(&order)));
        write_json(&acme, &acme_v2(&[("le", Some(vec![entry]))]));
        let t = Target::new(&env, "mail");
        env.write_config(&[src_traefik(&acme)], &[&t]);
        syncs_in_issuing_order(&env, &t, case);
    }

    // An intermediate of another CA among them: refused, nothing installed.
    let other = Ca::new("order-other");
    for (case, chain) in [
        (
            "unrelated extra at the end",
            vec![
                pems[1].clone(),
                pems[0].clone(),
                pem_block("CERTIFICATE", &other.inter_der),
            ],
        ),
        (
            "unrelated extra in the middle",
            vec![
                pems[0].clone(),
                pem_block("CERTIFICATE", &other.inter_der),
                pems[1].clone(),
            ],
        ),
    ] {
        let env = Env::new();
        let cert = env.path("src/cert.pem");
        let key = env.path("src/privkey.pem");
        write(&cert, chain.concat());
        write(&key, leaf.key_pem());
        let t = Target::new(&env, "mail");
        env.write_config(&[src_files(&cert, &key, None)], &[&t]);
        let r = env.sync();
        assert_eq!(r.code, 1, "{case}: {}", r.describe());
        assert!(
            t.installed_fp().is_none(),
            "{case}: a chain with an unrelated certificate was installed"
        );
    }
}

// ---- bounded reloads ----

/// Ends the background `sleep`s whose pids a reload logged, when dropped
/// (they are this test's).
struct KillLogged(std::path::PathBuf);

impl Drop for KillLogged {
    fn drop(&mut self) {
        for pid in log_lines(&self.0) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// `mxkeys sync` that must end within 20 s (far below the background
/// child's 600 s).
fn sync_within_20s(env: &Env) -> Run {
    let out = common::servers::output_within(env.cmd(&["sync"]), Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("sync waited for the reload's background child: {e}"));
    Run::from_output("mxkeys sync".into(), out)
}

/// Issue 11, point 5: a reload command that leaves a background child
/// holding its stderr (`sleep 600 &`) returns as soon as the command
/// itself exits; the reload counts as done and nothing is rolled back.
#[test]
fn a_reload_leaving_a_background_child_does_not_hold_up_sync() {
    let env = Env::new();
    let ca = Ca::new("grandchild");
    let old = ca.issue(&LeafSpec::new(&[HOST]).days(30));
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let pids = env.path("background.pid");
    let _cleanup = KillLogged(pids.clone());
    let script_text = format!("sleep 600 & echo $! >> {}; exit 0", qp(&pids));
    let t = Target::new(&env, "postfix").reload(&["sh", "-c", &script_text]);
    env.write_config(&[files_source(&env.path("src-old"), &old)], &[&t]);
    sync_within_20s(&env).ok();
    t.assert_installed(&old);
    // A change: the reload runs again and counts as done.
    env.write_config(&[files_source(&env.path("src-new"), &leaf)], &[&t]);
    sync_within_20s(&env)
        .ok()
        .assert_stderr_lacks("rolled back");
    t.assert_installed(&leaf);
    assert_eq!(log_lines(&pids).len(), 2, "one reload per change");
    let (_, status) = env.status_json();
    assert_eq!(status["last_run"]["ok"], true, "{status:#}");
}
