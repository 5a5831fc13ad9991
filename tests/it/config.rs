//! Bad command lines and bad configuration: exit 2, message names the file,
//! the key and the problem, nothing is written.

use mxkeys_testsupport as common;

use std::process::Command;

use common::*;

struct Fixture {
    env: Env,
    src: String,
    target: Target,
    log: std::path::PathBuf,
}

/// A valid setup (checked to sync fine in `baseline_config_is_valid`).
fn fixture() -> Fixture {
    let env = Env::new();
    let ca = Ca::new("cfg");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let log = env.path("reload.log");
    let sh = env.path("bin/reload-log");
    script(&sh, &format!("echo ran >> {}", qp(&log)));
    let target = Target::new(&env, "postfix").reload(&[sh.to_str().unwrap()]);
    Fixture {
        env,
        src,
        target,
        log,
    }
}

impl Fixture {
    fn text(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.env.header(),
            self.src,
            self.target.toml()
        )
    }

    /// Write `text` as the config, run sync, check and status; each must exit
    /// 2 with a message naming the config file and each of `names`; nothing
    /// may be written and no reload run.
    #[track_caller]
    fn expect_config_error(&self, text: &str, names: &[&str]) {
        self.env.write_config_raw(text);
        for args in [&["sync"][..], &["check"], &["status", "--json"]] {
            let r = self.env.run(args);
            r.assert_code(2);
            r.assert_stderr_contains(self.env.config.to_str().unwrap());
            for n in names {
                r.assert_stderr_contains(n);
            }
        }
        assert!(
            snapshot(&self.env.out).is_empty(),
            "files written on bad config"
        );
        assert!(!self.log.exists(), "reload ran on bad config");
    }
}

#[test]
fn baseline_config_is_valid() {
    let f = fixture();
    f.env.write_config_raw(&f.text());
    f.env.sync().ok();
    assert!(f.target.installed_fp().is_some());
}

#[test]
fn unknown_top_level_key() {
    let f = fixture();
    let text = f
        .text()
        .replace("hostname =", "hostnme = \"x\"\nhostname =");
    f.expect_config_error(&text, &["hostnme"]);
}

#[test]
fn unknown_target_key() {
    let f = fixture();
    let text = format!("{}fulchain = \"/tmp/x.pem\"\n", f.text());
    f.expect_config_error(&text, &["fulchain"]);
}

#[test]
fn unknown_source_key() {
    let f = fixture();
    let text = f
        .text()
        .replace("type = \"files\"\n", "type = \"files\"\nchian = \"/x\"\n");
    assert!(text.contains("chian"));
    f.expect_config_error(&text, &["chian"]);
}

#[test]
fn unknown_source_type() {
    let f = fixture();
    let text = f.text().replace("type = \"files\"", "type = \"traefk\"");
    f.expect_config_error(&text, &["traefk"]);
}

#[test]
fn bad_mode() {
    for mode in ["0999", "rw-------", "12345"] {
        let f = fixture();
        let text = format!("{}mode = \"{mode}\"\n", f.text());
        f.expect_config_error(&text, &["mode"]);
    }
}

#[test]
fn bad_key_type() {
    let f = fixture();
    let text = format!("{}key_type = \"dsa\"\n", f.text());
    f.expect_config_error(&text, &["key_type"]);
}

#[test]
fn bad_reload_timeout() {
    let f = fixture();
    let text = format!("{}reload_timeout = \"soon\"\n", f.text());
    f.expect_config_error(&text, &["reload_timeout"]);
}

#[test]
fn invalid_toml() {
    let f = fixture();
    let text = format!("{}[[target]\nname = \n", f.text());
    f.expect_config_error(&text, &[]);
}

#[test]
fn target_without_outputs() {
    let f = fixture();
    let mut t = f.target.clone();
    t.fullchain = None;
    t.key = None;
    let text = format!("{}\n{}\n{}", f.env.header(), f.src, t.toml());
    f.expect_config_error(&text, &["postfix"]);
}

#[test]
fn target_with_certificate_but_no_key() {
    let f = fixture();
    let mut t = f.target.clone();
    t.key = None;
    t.cert = Some(t.dir.join("leaf.pem"));
    let text = format!("{}\n{}\n{}", f.env.header(), f.src, t.toml());
    f.expect_config_error(&text, &["postfix"]);
}

#[test]
fn missing_config_file() {
    let env = Env::new();
    let r = env.sync();
    r.assert_code(2);
    r.assert_stderr_contains(env.config.to_str().unwrap());
    // Also through $MXKEYS_CONFIG.
    let missing = env.path("elsewhere.toml");
    let mut c = Command::new(bin());
    c.arg("check")
        .env("MXKEYS_CONFIG", &missing)
        .current_dir(&env.root);
    let r = Run::from_output(
        "MXKEYS_CONFIG=missing mxkeys check".into(),
        run_with_timeout(c),
    );
    r.assert_code(2);
    r.assert_stderr_contains(missing.to_str().unwrap());
}

#[test]
fn bad_command_lines() {
    let f = fixture();
    f.env.write_config_raw(&f.text());
    for args in [
        &["frobnicate"][..],
        &["sync", "--no-such-flag"],
        &["status", "--jsno"],
        &[],
    ] {
        let r = f.env.run(args);
        r.assert_code(2);
    }
    assert!(snapshot(&f.env.out).is_empty());
}

#[test]
fn a_target_file_inside_the_state_directory_is_refused_naming_both_keys() {
    let f = fixture();
    for inside in ["postfix.key", "acme/mail/bundle.pem"] {
        let mut t = f.target.clone();
        t.key = Some(f.env.state.join(inside));
        let text = format!("{}\n{}\n{}", f.env.header(), f.src, t.toml());
        f.expect_config_error(&text, &["postfix", "`key`", "`state_dir`", inside]);
    }
}

#[test]
fn a_target_file_over_a_dkim_key_or_signer_file_is_refused_naming_both_keys() {
    let f = fixture();
    let keys = f.env.path("dkimkeys");
    let signer = f.env.path("opendkim");
    // The fixture's configuration with `[dkim]` and the target `t`.
    let config = |t: &Target| {
        format!(
            "{}\n[dkim]\ndomains = [\"example.test\"]\ndns = \"manual\"\nkey_dir = {}\nsigner = \"opendkim\"\nsigner_dir = {}\n\n{}\n{}",
            f.env.header(),
            qp(&keys),
            qp(&signer),
            f.src,
            t.toml()
        )
    };
    // The certificate written into the DKIM key directory.
    let mut t = f.target.clone();
    t.fullchain = Some(keys.join("example.test/fullchain.pem"));
    f.expect_config_error(&config(&t), &["postfix", "`fullchain`", "key_dir"]);
    // The key written over OpenDKIM's KeyTable.
    let mut t = f.target.clone();
    t.key = Some(signer.join("KeyTable"));
    f.expect_config_error(&config(&t), &["postfix", "`key`", "signer_dir", "KeyTable"]);
    // Beside the signer files, in the same directory, is fine.
    let mut t = f.target.clone();
    t.key = Some(signer.join("mail.key"));
    let text = config(&t);
    f.env.write_config_raw(&text);
    let r = f.env.check();
    r.assert_stderr_lacks("would overwrite");
    assert_ne!(r.code, 2, "{}", r.describe());
}
