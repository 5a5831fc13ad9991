//! Container mode: with no configuration file, the configuration is built
//! from the environment (docker-mailserver's SSL_TYPE, SSL_DOMAIN,
//! ACME_FILE, ACME_POSTHOOK... plus MXKEYS_*). It must mean exactly what the
//! equivalent TOML means, and `mxkeys config` must print TOML that does.
//!
//! Every command runs with a cleared environment (PATH only, plus what the
//! test sets), MXKEYS_STATE_DIR and MXKEYS_OUTPUT_DIR in the temp dir, and
//! --config pointing at a file that does not exist. PATH starts with a fake
//! `postfix` that logs its arguments, so the default reload is observable.

use mxkeys_testsupport as common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration as StdDuration;

use common::*;

/// The files container mode writes, relative to MXKEYS_OUTPUT_DIR.
const MAIN_FILES: &[&str] = &["fullchain.pem", "privkey.pem", "combined.pem"];
const ALT_FILES: &[&str] = &["alt/fullchain.pem", "alt/privkey.pem", "alt/combined.pem"];

/// A container-mode invocation builder.
struct Container {
    config: PathBuf,
    root: PathBuf,
    path: String,
    vars: Vec<(String, String)>,
}

impl Container {
    /// State in `state`, output in `out`, a fake `postfix` first on PATH
    /// logging to `<root>/postfix.log`.
    fn new(env: &Env, state: &Path, out: &Path) -> Container {
        let bin_dir = env.path("bin");
        let postfix = bin_dir.join("postfix");
        if !postfix.exists() {
            script(
                &postfix,
                &format!(
                    "echo \"$*\" >> {}",
                    sh_quote(env.path("postfix.log").to_str().unwrap())
                ),
            );
        }
        let config = env.path("absent/mxkeys.toml");
        assert!(!config.exists());
        let mut c = Container {
            config,
            root: env.root.clone(),
            path: format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
            vars: Vec::new(),
        };
        c.set("MXKEYS_STATE_DIR", state.to_str().unwrap());
        c.set("MXKEYS_OUTPUT_DIR", out.to_str().unwrap());
        c
    }

    fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.vars.retain(|(key, _)| key != k);
        self.vars.push((k.to_owned(), v.to_owned()));
        self
    }

    fn with(mut self, k: &str, v: &str) -> Self {
        self.set(k, v);
        self
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.setup(Command::new(bin()), args)
    }

    /// `mxkeys ARGS` with no network at all (`unshare -n`, as root).
    fn run_offline(&self, args: &[&str]) -> Run {
        let mut c = Command::new("unshare");
        c.arg("-n").arg(bin());
        Run::from_output(
            format!("unshare -n mxkeys {}", args.join(" ")),
            run_with_timeout(self.setup(c, args)),
        )
    }

    /// `c` with this container's environment (only) and `args`.
    fn setup(&self, mut c: Command, args: &[&str]) -> Command {
        c.env_clear()
            .env("PATH", &self.path)
            .env("NO_COLOR", "1")
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .current_dir(&self.root);
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        let vars: Vec<String> = self
            .vars
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        Run::from_output(
            format!("env -i {} mxkeys {}", vars.join(" "), args.join(" ")),
            run_with_timeout(self.cmd(args)),
        )
    }

    fn sync(&self) -> Run {
        self.run(&["sync"])
    }

    fn daemon(&self, log_dir: &Path) -> Daemon {
        Daemon::spawn(self.cmd(&["run"]), log_dir, "container-daemon")
    }
}

/// A TOML target writing what container mode writes into `dir`.
fn tls_target(name: &str, dir: &Path, key_type: &str) -> Target {
    Target {
        domains: Some(vec![HOST.to_owned()]),
        key_type: Some(key_type.to_owned()),
        combined: Some(dir.join("combined.pem")),
        ..Target::in_dir(name, dir)
    }
}

/// Assert `a/f` and `b/f` exist with the same bytes and mode, for each `f`.
#[track_caller]
fn assert_same_files(a: &Path, b: &Path, files: &[&str]) {
    for f in files {
        let (pa, pb) = (a.join(f), b.join(f));
        let ba = fs::read(&pa).unwrap_or_else(|e| panic!("{}: {e}", pa.display()));
        let bb = fs::read(&pb).unwrap_or_else(|e| panic!("{}: {e}", pb.display()));
        assert!(ba == bb, "{} and {} differ", pa.display(), pb.display());
        assert_eq!(mode_of(&pa), mode_of(&pb), "modes of {f}");
    }
}

/// `mxkeys config` output: a `#` comment first, then TOML that parses.
#[track_caller]
fn printed_config(c: &Container) -> (String, toml::Table) {
    let r = c.run(&["config"]);
    r.ok();
    let first = r.stdout.lines().next().unwrap_or_default();
    assert!(
        first.starts_with('#'),
        "the first line is a comment\n{}",
        r.describe()
    );
    let table: toml::Table = r
        .stdout
        .parse()
        .unwrap_or_else(|e| panic!("not TOML ({e})\n{}", r.describe()));
    (r.stdout.clone(), table)
}

fn postfix_log(env: &Env) -> Vec<String> {
    log_lines(&env.path("postfix.log"))
}

/// SSL_TYPE=manual with SSL_ALT_*: two targets (ECDSA in the output dir,
/// RSA in alt/), byte for byte what the equivalent TOML writes; the TOML
/// `mxkeys config` prints writes the same again.
#[test]
fn manual_with_alt_matches_the_equivalent_toml_and_the_printed_config() {
    let env = Env::new();
    let ca = Ca::new("manual");
    let ec = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::P256));
    let rsa = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::Rsa2048));
    let (ec_cert, ec_key) = (env.path("certs/ecdsa.crt"), env.path("certs/ecdsa.key"));
    let (rsa_cert, rsa_key) = (env.path("certs/rsa.crt"), env.path("certs/rsa.key"));
    write(&ec_cert, ec.fullchain_pem());
    write(&ec_key, ec.key_pem());
    write(&rsa_cert, rsa.fullchain_pem());
    write(&rsa_key, rsa.key_pem());

    let out_env = env.path("tls-env");
    let vars = |c: Container| {
        c.with("SSL_TYPE", "manual")
            .with("SSL_CERT_PATH", ec_cert.to_str().unwrap())
            .with("SSL_KEY_PATH", ec_key.to_str().unwrap())
            .with("SSL_ALT_CERT_PATH", rsa_cert.to_str().unwrap())
            .with("SSL_ALT_KEY_PATH", rsa_key.to_str().unwrap())
            .with("SSL_DOMAIN", HOST)
            .with("ACME_POSTHOOK", "")
    };
    let c = vars(Container::new(&env, &env.path("state-env"), &out_env));
    c.sync().ok();
    tls_target("mail", &out_env, "ecdsa").assert_installed(&ec);
    tls_target("mail-alt", &out_env.join("alt"), "rsa").assert_installed(&rsa);

    // The same by hand, through a configuration file.
    let out_toml = env.path("tls-toml");
    let main = tls_target("mail", &out_toml, "ecdsa");
    let alt = tls_target("mail-alt", &out_toml.join("alt"), "rsa");
    env.write_config(
        &[
            src_files(&ec_cert, &ec_key, None),
            src_files(&rsa_cert, &rsa_key, None),
        ],
        &[&main, &alt],
    );
    env.sync().ok();
    assert_same_files(&out_env, &out_toml, MAIN_FILES);
    assert_same_files(&out_env, &out_toml, ALT_FILES);

    // What `mxkeys config` prints, used as a file, writes the same.
    let out_printed = env.path("tls-printed");
    let c3 = vars(Container::new(
        &env,
        &env.path("state-printed"),
        &out_printed,
    ));
    let (text, table) = printed_config(&c3);
    assert_eq!(table["target"].as_array().map(Vec::len), Some(2), "{text}");
    let printed = env.path("printed.toml");
    write(&printed, &text);
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg("--config")
        .arg(&printed)
        .arg("sync")
        .current_dir(&env.root);
    Run::from_output(
        "mxkeys --config printed.toml sync".into(),
        run_with_timeout(cmd),
    )
    .ok();
    assert_same_files(&out_env, &out_printed, MAIN_FILES);
    assert_same_files(&out_env, &out_printed, ALT_FILES);
    assert!(
        postfix_log(&env).is_empty(),
        "ACME_POSTHOOK=\"\" runs nothing"
    );
}

/// ACME_FILE + SSL_DOMAIN: the certificate for that name, as the
/// equivalent TOML installs it; MXKEYS_DOMAINS overrides SSL_DOMAIN; the
/// printed configuration writes the same.
#[test]
fn acme_file_and_ssl_domain_match_the_equivalent_toml() {
    let env = Env::new();
    let ca = Ca::new("acme-env");
    let mail = ca.issue(&LeafSpec::new(&[HOST]));
    let other = ca.issue(&LeafSpec::new(&[OTHER]).days(90));
    let acme = env.path("acme/acme.json");
    write_json(
        &acme,
        &acme_v2(&[(
            "le",
            Some(vec![
                AcmeEntry::new(&other, OTHER),
                AcmeEntry::new(&mail, HOST),
            ]),
        )]),
    );

    let out_env = env.path("tls-env");
    let c = Container::new(&env, &env.path("state-env"), &out_env)
        .with("ACME_FILE", acme.to_str().unwrap())
        .with("SSL_DOMAIN", HOST)
        .with("ACME_POSTHOOK", "");
    c.sync().ok();
    tls_target("mail", &out_env, "any").assert_installed(&mail);
    for f in MAIN_FILES {
        assert!(out_env.join(f).exists(), "{f} written");
    }
    assert!(
        !out_env.join("alt").exists(),
        "no alt target without SSL_ALT_*"
    );

    let out_toml = env.path("tls-toml");
    let t = tls_target("mail", &out_toml, "any");
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    assert_same_files(&out_env, &out_toml, MAIN_FILES);

    let out_printed = env.path("tls-printed");
    let c3 = Container::new(&env, &env.path("state-printed"), &out_printed)
        .with("ACME_FILE", acme.to_str().unwrap())
        .with("SSL_DOMAIN", HOST)
        .with("ACME_POSTHOOK", "");
    let (text, _) = printed_config(&c3);
    let printed = env.path("printed.toml");
    write(&printed, &text);
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .arg("--config")
        .arg(&printed)
        .arg("sync")
        .current_dir(&env.root);
    Run::from_output(
        "mxkeys --config printed.toml sync".into(),
        run_with_timeout(cmd),
    )
    .ok();
    assert_same_files(&out_env, &out_printed, MAIN_FILES);

    // MXKEYS_DOMAINS wins over SSL_DOMAIN.
    let out_other = env.path("tls-other");
    Container::new(&env, &env.path("state-other"), &out_other)
        .with("ACME_FILE", acme.to_str().unwrap())
        .with("SSL_DOMAIN", HOST)
        .with("MXKEYS_DOMAINS", OTHER)
        .with("ACME_POSTHOOK", "")
        .sync()
        .ok();
    tls_target("mail", &out_other, "any").assert_installed(&other);
}

/// ACME_POSTHOOK: unset runs `postfix reload`; empty runs nothing; a
/// command runs through `sh -c` once per change.
#[test]
fn acme_posthook_default_empty_and_command() {
    let env = Env::new();
    let ca = Ca::new("posthook");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let b = ca.issue(&LeafSpec::new(&[HOST]).days(90));
    let src = env.path("src");
    let (cert, key) = (src.join("fullchain.pem"), src.join("privkey.pem"));
    files_source(&src, &a);
    let manual = |c: Container| {
        c.with("SSL_TYPE", "manual")
            .with("SSL_CERT_PATH", cert.to_str().unwrap())
            .with("SSL_KEY_PATH", key.to_str().unwrap())
            .with("SSL_DOMAIN", HOST)
    };

    // Unset: the mail containers' default, `postfix reload`.
    let c = manual(Container::new(&env, &env.path("s1"), &env.path("o1")));
    c.sync().ok();
    assert_eq!(postfix_log(&env), ["reload"]);
    c.sync().ok();
    assert_eq!(postfix_log(&env), ["reload"], "no change, no reload");

    // Set but empty: no reload at all.
    let c =
        manual(Container::new(&env, &env.path("s2"), &env.path("o2"))).with("ACME_POSTHOOK", "");
    let (text, table) = printed_config(&c);
    for t in table["target"].as_array().unwrap() {
        assert!(t.get("reload").is_none(), "no reload configured:\n{text}");
    }
    c.sync().ok();
    tls_target("mail", &env.path("o2"), "any").assert_installed(&a);
    assert_eq!(
        postfix_log(&env),
        ["reload"],
        "ACME_POSTHOOK=\"\" runs nothing"
    );

    // A command: once per change.
    let hooklog = env.path("hook.log");
    let c = manual(Container::new(&env, &env.path("s3"), &env.path("o3"))).with(
        "ACME_POSTHOOK",
        &format!("echo x >> {}", sh_quote(hooklog.to_str().unwrap())),
    );
    c.sync().ok();
    assert_eq!(log_lines(&hooklog).len(), 1);
    c.sync().ok();
    assert_eq!(log_lines(&hooklog).len(), 1, "no change, no hook");
    write(&cert, b.fullchain_pem());
    write(&key, b.key_pem());
    c.sync().ok();
    tls_target("mail", &env.path("o3"), "any").assert_installed(&b);
    assert_eq!(log_lines(&hooklog).len(), 2, "one hook run per change");
    assert_eq!(
        postfix_log(&env),
        ["reload"],
        "a posthook replaces postfix reload"
    );
}

/// MXKEYS_RELOAD_PIDFILE signals the process in the pid file (HUP by
/// default, MXKEYS_RELOAD_SIGNAL otherwise) once per change.
#[test]
fn reload_pidfile_signals_the_process() {
    let env = Env::new();
    let ca = Ca::new("pidfile");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let b = ca.issue(&LeafSpec::new(&[HOST]).days(90));
    let acme = env.path("acme/acme.json");
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&a, HOST)]))]),
    );
    let pidfile = env.path("run/master.pid");
    let signals = env.path("signals.log");
    let _catcher = signal_catcher(&pidfile, &signals);
    let c = Container::new(&env, &env.path("state"), &env.path("tls"))
        .with("ACME_FILE", acme.to_str().unwrap())
        .with("SSL_DOMAIN", HOST)
        .with("ACME_POSTHOOK", "")
        .with("MXKEYS_RELOAD_PIDFILE", pidfile.to_str().unwrap());
    c.sync().ok();
    wait_for(
        "the HUP to be logged",
        || (!log_lines(&signals).is_empty()).then_some(()),
        || format!("{:?}", log_lines(&signals)),
    );
    c.sync().ok();
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&b, HOST)]))]),
    );
    let c = c.with("MXKEYS_RELOAD_SIGNAL", "USR1");
    c.sync().ok();
    tls_target("mail", &env.path("tls"), "any").assert_installed(&b);
    wait_for(
        "the USR1 to be logged",
        || (log_lines(&signals).len() >= 2).then_some(()),
        || format!("{:?}", log_lines(&signals)),
    );
    // Let a stray extra signal show up before counting.
    let seen = settle(StdDuration::from_millis(300), || log_lines(&signals));
    assert_eq!(seen, ["hup", "usr1"], "one signal per change");
    assert!(postfix_log(&env).is_empty());
}

/// A bad SSL_TYPE (or an incomplete manual setup) is a configuration
/// error: exit status 2, naming the problem.
#[test]
fn bad_ssl_type_exits_2_naming_it() {
    let env = Env::new();
    let c = Container::new(&env, &env.path("state"), &env.path("tls")).with("SSL_TYPE", "snakeoil");
    for args in [&["sync"][..], &["config"], &["check"]] {
        let r = c.run(args);
        r.assert_code(2).assert_stderr_contains("snakeoil");
        r.assert_err_line(&["SSL_TYPE"]);
    }
    assert!(!env.path("tls").exists(), "nothing written");

    let r = Container::new(&env, &env.path("state"), &env.path("tls"))
        .with("SSL_TYPE", "manual")
        .sync();
    r.assert_code(2).assert_stderr_contains("SSL_CERT_PATH");
}

/// `mxkeys run` in container mode: installs at start (ACME_POSTHOOK once),
/// then follows acme.json.
#[test]
fn run_in_container_mode_follows_acme_json() {
    let env = Env::new();
    let ca = Ca::new("container-run");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let b = ca.issue(&LeafSpec::new(&[HOST]).days(90));
    let acme = env.path("acme/acme.json");
    let json = |l: &Leaf| acme_v2(&[("le", Some(vec![AcmeEntry::new(l, HOST)]))]);
    write_json(&acme, &json(&a));
    let hooklog = env.path("hook.log");
    let out = env.path("tls");
    let c = Container::new(&env, &env.path("state"), &out)
        .with("ACME_FILE", acme.to_str().unwrap())
        .with("SSL_DOMAIN", HOST)
        .with(
            "ACME_POSTHOOK",
            &format!("echo x >> {}", sh_quote(hooklog.to_str().unwrap())),
        );
    let t = tls_target("mail", &out, "any");
    let mut d = c.daemon(&env.path("logs"));
    let reached = |leaf: &Leaf, n: usize, d: &Daemon| {
        wait_for(
            &format!("{} installed and {n} hook runs", leaf.fp()),
            || {
                (t.installed_fp() == Some(leaf.fp()) && log_lines(&hooklog).len() >= n)
                    .then_some(())
            },
            || d.describe(),
        );
        settle(StdDuration::from_millis(1000), || log_lines(&hooklog).len())
    };
    assert_eq!(
        reached(&a, 1, &d),
        1,
        "one hook run at start\n{}",
        d.describe()
    );
    // In place, as Traefik writes it.
    let bytes = serde_json::to_vec_pretty(&json(&b)).unwrap();
    write_in_place(&acme, &bytes);
    assert_eq!(
        reached(&b, 2, &d),
        2,
        "one hook run per change\n{}",
        d.describe()
    );
    t.assert_installed(&b);
    assert!(postfix_log(&env).is_empty());
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.describe());
}

// ---- sidecar defaults ----

/// The PATH of a sidecar image without Postfix: the system's own
/// directories that hold `sh` but not `postfix` (Debian keeps it in
/// /usr/sbin).
const SIDECAR_PATH: &str = "/usr/bin:/bin";

/// A container invocation as `docker run` makes it: `env -i`, the
/// documented variables the test sets, and a PATH with no `postfix`.
fn sidecar(env: &Env, state: &Path, out: &Path) -> Container {
    for dir in SIDECAR_PATH.split(':') {
        assert!(
            !Path::new(dir).join("postfix").exists(),
            "{dir}/postfix exists: this test needs a PATH without Postfix"
        );
    }
    let mut c = Container::new(env, state, out);
    c.path = SIDECAR_PATH.to_owned();
    c
}

/// A [`sidecar`] following an acme.json that holds `leaf` for HOST,
/// installing into `out`.
fn acme_sidecar(env: &Env, leaf: &Leaf, out: &Path) -> Container {
    let acme = env.path("acme/acme.json");
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(leaf, HOST)]))]),
    );
    sidecar(env, &env.path("state"), out)
        .with("ACME_FILE", acme.to_str().unwrap())
        .with("SSL_DOMAIN", HOST)
}

/// Issue 11, point 4: with ACME_POSTHOOK unset and no Postfix in the
/// image, the default reload is no command (said once), so the first
/// install stays instead of being rolled back to nothing.
#[test]
fn unset_posthook_without_postfix_installs_and_says_so_once() {
    let env = Env::new();
    let ca = Ca::new("sidecar-default");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let out = env.path("tls");
    let c = acme_sidecar(&env, &a, &out);
    let r = c.sync();
    r.ok();
    tls_target("mail", &out, "any").assert_installed(&a);
    let said: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.contains("no `postfix` is on PATH"))
        .collect();
    assert_eq!(said.len(), 1, "said once\n{}", r.describe());
    let (text, table) = printed_config(&c);
    for t in table["target"].as_array().unwrap() {
        assert!(t.get("reload").is_none(), "no reload command:\n{text}");
    }
}

/// Issue 11, point 4: a first install whose reload fails keeps its files
/// (there is nothing to go back to), exits 1 and says so in `status`; the
/// next pass runs the reload again and, when it works, succeeds.
#[test]
fn a_first_install_whose_reload_fails_stays_and_the_reload_is_retried() {
    let env = Env::new();
    let ca = Ca::new("sidecar-first");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let out = env.path("tls");
    let ready = env.path("neighbour-ready");
    let hooklog = env.path("hook.log");
    // The neighbour is not up yet: the hook fails until `ready` exists.
    let hook = format!(
        "echo run >> {log}; test -e {ready} || {{ echo 'neighbour not running' >&2; exit 1; }}",
        log = sh_quote(hooklog.to_str().unwrap()),
        ready = sh_quote(ready.to_str().unwrap()),
    );
    let c = acme_sidecar(&env, &a, &out).with("ACME_POSTHOOK", &hook);
    let t = tls_target("mail", &out, "any");

    let r = c.sync();
    r.assert_code(1)
        .assert_stderr_contains("neighbour not running");
    t.assert_installed(&a);
    assert_eq!(log_lines(&hooklog).len(), 1);
    let status = c.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&status.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}", status.describe()));
    assert_eq!(v["last_run"]["ok"], false, "{}", status.stdout);
    let errors = v["last_run"]["errors"].to_string();
    assert!(errors.contains("neighbour not running"), "{errors}");

    // Still failing: the reload is tried again, the files still stay.
    c.sync().assert_code(1);
    t.assert_installed(&a);
    assert_eq!(log_lines(&hooklog).len(), 2, "the owed reload is retried");

    // The neighbour is up: the owed reload runs and the pass succeeds.
    write(&ready, "");
    c.sync().ok();
    t.assert_installed(&a);
    assert_eq!(log_lines(&hooklog).len(), 3);
    c.sync().ok();
    assert_eq!(log_lines(&hooklog).len(), 3, "nothing owed any more");
}

/// Issue 11, point 4, as the daemon runs it: the failed first reload shows
/// in /metrics and /healthz, the files stay, and no rollback is counted.
#[test]
fn a_daemon_first_install_with_a_failing_reload_keeps_the_files_and_reports_it() {
    let env = Env::new();
    let ca = Ca::new("sidecar-daemon");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let out = env.path("tls");
    let port = free_port();
    let c = acme_sidecar(&env, &a, &out)
        .with("ACME_POSTHOOK", "echo 'neighbour not running' >&2; exit 1")
        .with("MXKEYS_METRICS_LISTEN", &format!("127.0.0.1:{port}"));
    let t = tls_target("mail", &out, "any");
    let mut d = c.daemon(&env.path("logs"));
    let body = wait_for(
        "/metrics to count the failed reload",
        || {
            let (code, body) = http_get(port, "/metrics")?;
            (code == 200
                && metric(&body, "mxkeys_reloads_total{result=\"failure\"}")
                    .is_some_and(|v| v >= 1.0))
            .then_some(body)
        },
        || d.describe(),
    );
    t.assert_installed(&a);
    assert_eq!(
        metric(&body, "mxkeys_target_ready{target=\"mail\"}"),
        Some(0.0),
        "{body}"
    );
    // The counter starts at 0 (so increase() sees a first rollback) and a
    // first install has nothing to roll back to.
    assert_eq!(
        metric(&body, "mxkeys_rollbacks_total{target=\"mail\"}"),
        Some(0.0),
        "{body}"
    );
    let (code, health) = http_get(port, "/healthz").expect("GET /healthz");
    assert_eq!(code, 503, "{health}");
    assert_eq!(health.trim_end().lines().count(), 1, "one line: {health:?}");
    // The status page says which target and why: its last reload failed.
    let (code, page) = http_get(port, "/status").expect("GET /status");
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("data-target=\"mail\"") && page.contains("neighbour not running"),
        "the page does not show mail's failed reload:\n{page}"
    );
    let status = d.terminate();
    assert_eq!(status.code(), Some(0), "{}", d.describe());
    t.assert_installed(&a);
}

/// A long-tail DNS provider from the environment alone: credentials from a
/// file, from a variable named by `_ENV`, and a setting; `mxkeys dns test
/// env` without a network fails in one line naming the type, and neither
/// it nor `mxkeys config` shows a credential.
#[test]
fn an_env_only_long_tail_provider_fails_dns_test_in_one_line_without_showing_its_token() {
    if !mxkeys_testsupport::servers::require(
        "an_env_only_long_tail_provider_fails_dns_test_in_one_line_without_showing_its_token",
        &[&[("unshare", "util-linux")]],
    ) {
        return;
    }
    let env = Env::new();
    let secret = |kind: &str| format!("TOKEN-{kind}-env-never-shown-4242");
    let file = |kind: &str| {
        let f = env.path(&format!("secrets/{kind}"));
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, secret(kind)).unwrap();
        f.to_str().unwrap().to_owned()
    };
    // DNS only: no certificate variable (MXKEYS_OUTPUT_DIR asks for one).
    let base = || {
        let mut c = Container::new(&env, &env.path("state"), &env.path("tls"));
        c.vars.retain(|(k, _)| k != "MXKEYS_OUTPUT_DIR");
        c
    };
    let (r53_file, hz_file) = (file("route53"), file("hetzner"));
    let cases = [
        (
            "route53",
            base()
                .with("MXKEYS_DNS_TYPE", "route53")
                .with("MXKEYS_DNS_ACCESS_KEY_ID_FILE", &r53_file)
                .with("MXKEYS_DNS_SECRET_ACCESS_KEY_ENV", "AWS_SECRET")
                .with("AWS_SECRET", &secret("route53-env"))
                .with("MXKEYS_DNS_REGION", "eu-west-1")
                .with("MXKEYS_DNS_ZONE", "example.com"),
            vec![secret("route53"), secret("route53-env")],
        ),
        (
            "hetzner",
            base()
                .with("MXKEYS_DNS_TYPE", "hetzner")
                .with("MXKEYS_DNS_API_TOKEN_FILE", &hz_file)
                .with("MXKEYS_DNS_ZONE", "example.com"),
            vec![secret("hetzner")],
        ),
        (
            "pdns",
            base()
                .with("MXKEYS_DNS_TYPE", "pdns")
                .with("MXKEYS_DNS_API_KEY_ENV", "PDNS_KEY")
                .with("PDNS_KEY", &secret("pdns"))
                .with("MXKEYS_DNS_ENDPOINT", "http://192.0.2.10:8081")
                .with("MXKEYS_DNS_ZONE", "example.com")
                .with("MXKEYS_DNS_DELEGATE_TO", "acme.example.com"),
            vec![secret("pdns")],
        ),
    ];
    for (kind, c, secrets) in &cases {
        let shown = |r: &Run| {
            for s in secrets {
                assert!(
                    !r.stdout.contains(s.as_str()) && !r.stderr.contains(s.as_str()),
                    "{kind}: a credential is shown\n{}\n{}",
                    r.stdout,
                    r.stderr
                );
            }
        };
        let config = c.run(&["config"]);
        config.assert_code(0);
        shown(&config);
        let printed = &config.stdout;
        assert!(printed.contains(&format!("type = \"{kind}\"")), "{printed}");
        if *kind == "pdns" {
            assert!(
                printed.contains("endpoint = \"http://192.0.2.10:8081\"")
                    && printed.contains("delegate_to = \"acme.example.com\""),
                "{printed}"
            );
        }
        let r = c.run_offline(&["dns", "test", "env"]);
        assert_ne!(r.code, 0, "{kind}: {}", r.stderr);
        shown(&r);
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(errors.len(), 1, "{kind}: one error line\n{}", r.stderr);
        assert!(
            errors[0].contains("dns test env: writing _mxkeys-probe.") && errors[0].contains(kind),
            "{kind}: {}",
            errors[0]
        );
    }
}
