//! `mxkeys init` (issue 16), the binary against real configurations: the
//! real `postconf` reads a Postfix configuration directory the test wrote
//! and the real `doveconf` a dovecot.conf (neither server runs), their TLS
//! files hold certificates made at test time, and a Certbot tree holds the
//! same certificates. The TOML `init` prints must pass `check` with every
//! target "up to date", and `sync` must then write nothing and reload
//! nothing (a reload here would fail: no Postfix or Dovecot runs).

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};

use common::servers::{Need, combined_pem, require_programs, write_atomic};
use common::*;

const MAIL: &str = "mail.example.test";

const POSTCONF: &[Need] = &[("postconf", "postfix")];
const DOVECONF: &[Need] = &[("doveconf", "dovecot-core")];

/// Return from the test (or fail under CI=true) when a program is missing.
macro_rules! require {
    ($test:expr, $($needs:expr),+) => {
        if !require_programs($test, &[$($needs),+]) {
            return;
        }
    };
}

/// master.cf: smtp by main.cf's level, submissions in wrapper mode.
const MASTER_CF: &str = "\
smtp      inet  n       -       y       -       -       smtpd
submissions     inet  n       -       y       -       -       smtpd
  -o smtpd_tls_wrappermode=yes
pickup    unix  n       -       y       60      1       pickup
";

/// A Postfix configuration directory whose main.cf holds `tls`.
fn postfix_dir(env: &Env, tls: &str) -> PathBuf {
    let dir = env.path("postfix");
    write(
        &dir.join("main.cf"),
        format!("smtpd_tls_security_level = may\n{tls}"),
    );
    write(&dir.join("master.cf"), MASTER_CF);
    dir
}

/// A dovecot.conf serving IMAP with `tls` (`ssl_cert = <...`).
fn dovecot_conf(env: &Env, tls: &str) -> PathBuf {
    let conf = env.path("dovecot/dovecot.conf");
    write(
        &conf,
        format!(
            "protocols = imap\n\
             base_dir = {run}\n\
             state_dir = {state}\n\
             ssl = required\n\
             {tls}\
             service imap-login {{\n\
             \x20 inet_listener imap {{\n    port = 1143\n  }}\n\
             \x20 inet_listener imaps {{\n    port = 1993\n    ssl = yes\n  }}\n\
             }}\n",
            run = env.path("dovecot/run").display(),
            state = env.path("dovecot/state").display(),
        ),
    );
    conf
}

fn leaf(ca: &Ca, kind: KeyKind) -> Leaf {
    ca.issue(&LeafSpec::new(&[MAIL]).kind(kind).days(60))
}

/// `mxkeys init` looking only where the test says (Certbot's tree in the
/// test's directory).
fn init(env: &Env, look: &[&str]) -> Run {
    let letsencrypt = env.path("letsencrypt");
    let state = env.state.display().to_string();
    let mut args = vec![
        "init",
        "--hostname",
        MAIL,
        "--state-dir",
        &state,
        "--letsencrypt",
        letsencrypt.to_str().unwrap(),
    ];
    args.extend_from_slice(look);
    let r = env.run(&args);
    r.ok();
    r
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes what `init` printed as the configuration, then: `check` accepts
/// it and calls every target (`names`) up to date; `sync` leaves every
/// file in `files` as it was (same inode, same bytes) and exits 0.
#[track_caller]
fn assert_takes_over_unchanged(env: &Env, toml: &str, names: &[&str], files: &[&Path]) {
    env.write_config_raw(toml);
    let check = env.check();
    check.ok();
    for n in names {
        assert!(
            check
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("{n}: ")) && l.ends_with(" up to date")),
            "target {n} is not up to date\n{toml}\n{}",
            check.describe()
        );
    }
    let targets = check
        .stdout
        .lines()
        .filter(|l| !l.starts_with(' ') && l.contains(": "))
        .count();
    assert_eq!(targets, names.len(), "{}", check.describe());
    let before: Vec<_> = files.iter().map(|f| file_id(f)).collect();
    env.sync().ok();
    let after: Vec<_> = files.iter().map(|f| file_id(f)).collect();
    assert_eq!(before, after, "sync rewrote a file the servers read");
}

#[test]
fn init_takes_over_a_postfix_chain_file_and_a_dovecot_pair_without_installing_anything() {
    require!(
        "init_takes_over_a_postfix_chain_file_and_a_dovecot_pair_without_installing_anything",
        POSTCONF,
        DOVECONF
    );
    let env = Env::new();
    let ca = Ca::new("init-cmd-single");
    let (ec, rsa) = (leaf(&ca, KeyKind::P256), leaf(&ca, KeyKind::Rsa2048));
    let tls = env.path("tls");
    let (pf, dv_crt, dv_key) = (
        tls.join("postfix.pem"),
        tls.join("dv.crt"),
        tls.join("dv.key"),
    );
    write_atomic(&pf, combined_pem(&ec), 0o600);
    write_atomic(&dv_crt, rsa.fullchain_pem(), 0o644);
    write_atomic(&dv_key, rsa.key_pem(), 0o600);
    let certbot = Certbot::new(&env.path("letsencrypt"));
    certbot.add("mail-ec", &ec);
    certbot.add("mail-rsa", &rsa);
    let postfix = postfix_dir(&env, &format!("smtpd_tls_chain_files = {}\n", pf.display()));
    let dovecot = dovecot_conf(
        &env,
        &format!(
            "ssl_cert = <{}\nssl_key = <{}\n",
            dv_crt.display(),
            dv_key.display()
        ),
    );
    let r = init(
        &env,
        &[
            "--postfix-config",
            arg(&postfix),
            "--dovecot-config",
            arg(&dovecot),
        ],
    );
    let toml = &r.stdout;
    for line in [
        "name = \"postfix\"",
        "key_type = \"ecdsa\"",
        &format!("combined = \"{}\"", pf.display()),
        "  { address = \"127.0.0.1:25\", protocol = \"smtp\" },",
        "  { address = \"127.0.0.1:465\", protocol = \"tls\" },",
        "name = \"dovecot\"",
        &format!("fullchain = \"{}\"", dv_crt.display()),
        &format!(
            "reload = [\"doveadm\", \"-c\", \"{}\", \"reload\"]",
            dovecot.display()
        ),
        "  { address = \"127.0.0.1:1143\", protocol = \"imap\" },",
        "  { address = \"127.0.0.1:1993\", protocol = \"tls\" },",
        "domains = [\"mail.example.test\"]",
        "type = \"certbot\"",
    ] {
        assert!(toml.lines().any(|l| l == line), "no line {line:?}\n{toml}");
    }
    assert!(!toml.contains("no source found holds"), "{toml}");
    assert_takes_over_unchanged(
        &env,
        toml,
        &["postfix", "dovecot"],
        &[&pf, &dv_crt, &dv_key],
    );
}

#[test]
fn init_makes_one_dual_target_when_postfix_and_dovecot_read_the_same_rsa_and_ecdsa_files() {
    require!(
        "init_makes_one_dual_target_when_postfix_and_dovecot_read_the_same_rsa_and_ecdsa_files",
        POSTCONF,
        DOVECONF
    );
    let env = Env::new();
    let ca = Ca::new("init-cmd-dual");
    let (ec, rsa) = (leaf(&ca, KeyKind::P256), leaf(&ca, KeyKind::Rsa2048));
    let tls = env.path("tls");
    let (rsa_pem, ec_key, ec_crt) = (tls.join("rsa.pem"), tls.join("ec.key"), tls.join("ec.crt"));
    write_atomic(&rsa_pem, combined_pem(&rsa), 0o600);
    write_atomic(&ec_key, ec.key_pem(), 0o600);
    write_atomic(&ec_crt, ec.fullchain_pem(), 0o644);
    let certbot = Certbot::new(&env.path("letsencrypt"));
    certbot.add("mail-ec", &ec);
    certbot.add("mail-rsa", &rsa);
    let postfix = postfix_dir(
        &env,
        &format!(
            "smtpd_tls_chain_files = {}, {} {}\n",
            rsa_pem.display(),
            ec_key.display(),
            ec_crt.display()
        ),
    );
    let dovecot = dovecot_conf(
        &env,
        &format!(
            "ssl_cert = <{}\nssl_key = <{}\nssl_alt_cert = <{2}\nssl_alt_key = <{2}\n",
            ec_crt.display(),
            ec_key.display(),
            rsa_pem.display()
        ),
    );
    let r = init(
        &env,
        &[
            "--postfix-config",
            arg(&postfix),
            "--dovecot-config",
            arg(&dovecot),
        ],
    );
    let toml = &r.stdout;
    for line in [
        "name = \"mail\"",
        // Both instances init was pointed at, reloaded by one command.
        &format!(
            "reload = [\"sh\", \"-c\", \"postfix -c {} reload && doveadm -c {} reload\"]",
            postfix.display(),
            dovecot.display()
        ),
        "[target.ecdsa]",
        &format!("fullchain = \"{}\"", ec_crt.display()),
        &format!("key = \"{}\"", ec_key.display()),
        "[target.rsa]",
        &format!("combined = \"{}\"", rsa_pem.display()),
        "  { address = \"127.0.0.1:1993\", protocol = \"tls\" },",
    ] {
        assert!(toml.lines().any(|l| l == line), "no line {line:?}\n{toml}");
    }
    assert_takes_over_unchanged(
        &env,
        toml,
        &["mail/ecdsa", "mail/rsa"],
        &[&rsa_pem, &ec_key, &ec_crt],
    );
}

#[test]
fn init_takes_over_postfixs_older_cert_and_eccert_pairs_as_one_dual_target() {
    require!(
        "init_takes_over_postfixs_older_cert_and_eccert_pairs_as_one_dual_target",
        POSTCONF
    );
    let env = Env::new();
    let ca = Ca::new("init-cmd-legacy");
    let (ec, rsa) = (leaf(&ca, KeyKind::P256), leaf(&ca, KeyKind::Rsa2048));
    let tls = env.path("tls");
    let files = [
        tls.join("rsa.crt"),
        tls.join("rsa.key"),
        tls.join("ec.crt"),
        tls.join("ec.key"),
    ];
    write_atomic(&files[0], rsa.fullchain_pem(), 0o644);
    write_atomic(&files[1], rsa.key_pem(), 0o600);
    write_atomic(&files[2], ec.fullchain_pem(), 0o644);
    write_atomic(&files[3], ec.key_pem(), 0o600);
    let certbot = Certbot::new(&env.path("letsencrypt"));
    certbot.add("mail-ec", &ec);
    certbot.add("mail-rsa", &rsa);
    let postfix = postfix_dir(
        &env,
        &format!(
            "smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n\
             smtpd_tls_eccert_file = {}\nsmtpd_tls_eckey_file = {}\n",
            files[0].display(),
            files[1].display(),
            files[2].display(),
            files[3].display()
        ),
    );
    let r = init(&env, &["--postfix-config", arg(&postfix), "--no-dovecot"]);
    let toml = &r.stdout;
    for line in [
        "name = \"postfix\"",
        "[target.ecdsa]",
        &format!("fullchain = \"{}\"", files[2].display()),
        "[target.rsa]",
        &format!("key = \"{}\"", files[1].display()),
    ] {
        assert!(toml.lines().any(|l| l == line), "no line {line:?}\n{toml}");
    }
    assert!(!toml.contains("name = \"dovecot\""), "{toml}");
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    assert_takes_over_unchanged(&env, toml, &["postfix/ecdsa", "postfix/rsa"], &refs);
}

#[test]
fn init_never_targets_certbots_live_files_and_says_how_to_point_postfix_at_mxkeys_files() {
    require!(
        "init_never_targets_certbots_live_files_and_says_how_to_point_postfix_at_mxkeys_files",
        POSTCONF
    );
    let env = Env::new();
    let ca = Ca::new("init-cmd-certbot");
    let ec = leaf(&ca, KeyKind::P256);
    let certbot = Certbot::new(&env.path("letsencrypt"));
    certbot.add("mail", &ec);
    let live = certbot.live_name("mail");
    let postfix = postfix_dir(
        &env,
        &format!(
            "smtpd_tls_cert_file = {0}/fullchain.pem\nsmtpd_tls_key_file = {0}/privkey.pem\n",
            live.display()
        ),
    );
    let before = snapshot(&certbot.root);
    let r = init(&env, &["--postfix-config", arg(&postfix), "--no-dovecot"]);
    let toml = &r.stdout;
    assert!(
        toml.contains("`postconf -e 'smtpd_tls_chain_files = /etc/mxkeys/tls/postfix.key, /etc/mxkeys/tls/postfix.crt'`"),
        "{toml}"
    );
    assert!(toml.lines().any(|l| l == "# [[target]]"), "{toml}");
    assert!(!toml.lines().any(|l| l == "[[target]]"), "{toml}");
    env.write_config_raw(toml);
    let check = env.check();
    check.ok();
    // No target: the plan is the candidates line alone.
    assert_eq!(check.stdout.lines().count(), 1, "{}", check.describe());
    env.sync().ok();
    assert_eq!(
        snapshot(&certbot.root),
        before,
        "Certbot's tree was written"
    );
}

#[test]
fn init_write_creates_the_config_refuses_to_replace_it_without_force_and_replaces_it_with_force() {
    require!(
        "init_write_creates_the_config_refuses_to_replace_it_without_force_and_replaces_it_with_force",
        POSTCONF
    );
    let env = Env::new();
    let postfix = postfix_dir(&env, "");
    let look = ["--postfix-config", arg(&postfix), "--no-dovecot"];
    let printed = init(&env, &look).stdout.clone();
    let write = |extra: &[&str]| {
        let mut args = vec!["init", "--write", "--hostname", MAIL];
        args.extend_from_slice(&look);
        args.extend_from_slice(extra);
        let state = env.state.display().to_string();
        let letsencrypt = env.path("letsencrypt");
        args.extend_from_slice(&["--state-dir", &state]);
        args.extend_from_slice(&["--letsencrypt", letsencrypt.to_str().unwrap()]);
        env.run(&args)
    };
    write(&[]).ok();
    assert_eq!(std::fs::read_to_string(&env.config).unwrap(), printed);
    assert_mode(&env.config, 0o644);
    env.check().ok();
    // There: refused, exit 2, naming the file and --force; unchanged.
    std::fs::write(&env.config, "# the admin's own\n").unwrap();
    write(&[])
        .assert_code(2)
        .assert_err_line(&[arg(&env.config), "--force"]);
    assert_eq!(
        std::fs::read_to_string(&env.config).unwrap(),
        "# the admin's own\n"
    );
    write(&["--force"]).ok();
    assert_eq!(std::fs::read_to_string(&env.config).unwrap(), printed);
    assert_mode(&env.config, 0o644);
    // The directory must exist.
    let missing = "/nonexistent-dir/mxkeys.toml";
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["-c", missing, "init", "--write"]).args(look);
    cmd.env_remove("MXKEYS_CONFIG").env("NO_COLOR", "1");
    Run::from_output(
        format!("mxkeys -c {missing} init --write"),
        run_with_timeout(cmd),
    )
    .assert_code(1)
    .assert_err_line(&[missing]);
}

/// Debian's Dovecot reads links into /etc/ssl (the snakeoil pair): init
/// never makes a target of a link (mxkeys would replace the link, not what
/// it points at, and the server's other readers would miss the change).
/// The target is written commented out, saying which file is a link to
/// what; the configuration loads and `sync` leaves the links and their
/// targets as they are.
#[test]
fn a_dovecot_reading_links_gets_its_target_commented_out_naming_the_link() {
    require!(
        "a_dovecot_reading_links_gets_its_target_commented_out_naming_the_link",
        DOVECONF
    );
    let env = Env::new();
    let ca = Ca::new("init-cmd-links");
    let rsa = leaf(&ca, KeyKind::Rsa2048);
    let shared = env.path("ssl-shared");
    let (crt, key) = (shared.join("cert.pem"), shared.join("key.pem"));
    write_atomic(&crt, rsa.fullchain_pem(), 0o644);
    write_atomic(&key, rsa.key_pem(), 0o600);
    let private = env.path("dovecot/private");
    std::fs::create_dir_all(&private).unwrap();
    let (crt_link, key_link) = (private.join("dovecot.pem"), private.join("dovecot.key"));
    std::os::unix::fs::symlink(&crt, &crt_link).unwrap();
    std::os::unix::fs::symlink(&key, &key_link).unwrap();
    Certbot::new(&env.path("letsencrypt")).add("mail", &rsa);
    let dovecot = dovecot_conf(
        &env,
        &format!(
            "ssl_cert = <{}\nssl_key = <{}\n",
            crt_link.display(),
            key_link.display()
        ),
    );
    let r = init(&env, &["--no-postfix", "--dovecot-config", arg(&dovecot)]);
    let toml = &r.stdout;
    let fill_in = toml
        .lines()
        .find(|l| l.starts_with("# FILL IN: Dovecot reads"))
        .unwrap_or_else(|| panic!("no FILL IN for the links:\n{toml}"));
    assert!(
        fill_in.contains(&format!("a link to {}", crt.display()))
            || fill_in.contains(&format!("a link to {}", key.display())),
        "{fill_in}"
    );
    assert!(
        toml.lines().any(|l| l == "# [[target]]") && !toml.lines().any(|l| l == "[[target]]"),
        "the target must be commented out:\n{toml}"
    );
    env.write_config_raw(toml);
    env.check().ok();
    let before: Vec<_> = [&crt, &key].iter().map(|f| file_id(f)).collect();
    env.sync().ok();
    let after: Vec<_> = [&crt, &key].iter().map(|f| file_id(f)).collect();
    assert_eq!(before, after);
    for (link, to) in [(&crt_link, &crt), (&key_link, &key)] {
        assert_eq!(&std::fs::read_link(link).unwrap(), to);
    }
}
