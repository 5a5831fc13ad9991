//! Keys a mail host already signs with, adopted by mxkeys: `mxkeys dkim
//! import --from opendkim | rspamd | amavis | dms | dir` and `[[dkim.adopt]]`
//! entries in a pass (`sync`, `dkim rotate`), against a real BIND 9 (RFC
//! 2136 with TSIG) as the authoritative server. Keys are made by the real
//! tools (`opendkim-genkey`, `rspamadm dkim_keygen`, `openssl`), records
//! published with `nsupdate` and computed by `openssl`, never by mxkeys. A
//! published key is adopted and the signer file mxkeys writes names its
//! selector; a key whose record does not match is reported and not
//! adopted (no book entry, no key file); a real OpenDKIM behind Postfix
//! signs with the same selector before and after a `sync` takes its
//! tables over.

use mxkeys_testsupport as common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::bind::Bind;
use common::dkim_tools::{
    DKIMPY, OPENDKIM, POSTFIX, describe, mx, record_of_key_file, setup, write_dkim_config,
};

use super::dkim::{
    AdminSigner, admin_signer, keys, nsupdate_txt, openssl_key, send_and_verify, signer_names,
    start_mail_path, table_bytes,
};
use super::dkim_adopt::{GENKEY, RSPAMADM, genkey, rspamd_keygen};

const DOMAIN: &str = "example.test";

/// The `[dkim]` table of a case in `dir` (its own state, keys and signer
/// files), with `extra` lines after it (`[[dkim.adopt]]` entries).
fn case_config(bind: &Bind, dir: &Path, extra: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    write_dkim_config(
        bind,
        dir,
        &format!(
            "domains = [\"{DOMAIN}\"]\nkey_dir = \"keys\"\ndns = \"bind\"\n\
             signer = \"opendkim\"\nsigner_dir = \"signer\"\nlead = \"0s\"\n{extra}"
        ),
    )
}

/// Publishes the record of `key` (computed by openssl) at `selector`.
fn publish(bind: &Bind, selector: &str, key: &Path) -> String {
    let record = record_of_key_file(key);
    nsupdate_txt(bind, &format!("{selector}._domainkey.{DOMAIN}"), &record);
    record
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The files mxkeys holds in `dir`'s KEY_DIR for the domain.
fn key_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("keys").join(DOMAIN))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `selector` was adopted in `dir`: the only key, active, its record the
/// published one, copied to KEY_DIR with mode 0600, and the KeyTable
/// mxkeys wrote names exactly it.
#[track_caller]
fn assert_adopted(dir: &Path, selector: &str, record: &str, context: &str) {
    let ks = keys(dir);
    assert_eq!(ks.len(), 1, "{context}: {ks:#?}");
    let k = &ks[0];
    assert_eq!(
        (k.selector.as_str(), k.state.as_str(), k.domain.as_str()),
        (selector, "active", DOMAIN),
        "{context}"
    );
    assert_eq!(k.record, record, "{context}");
    assert_eq!(
        k.file,
        dir.join("keys")
            .join(DOMAIN)
            .join(format!("{selector}.pem")),
        "{context}"
    );
    assert_eq!(record_of_key_file(&k.file), record, "{context}");
    assert_eq!(common::mode_of(&k.file) & 0o777, 0o600, "{context}");
    let [key_table, _] = table_bytes(&dir.join("signer"));
    assert!(
        key_table.is_some_and(|t| t.starts_with("# Written by mxkeys")),
        "{context}: mxkeys wrote no KeyTable"
    );
    assert_eq!(
        signer_names(&dir.join("signer")),
        BTreeSet::from([format!("{selector}._domainkey.{DOMAIN}")]),
        "{context}"
    );
}

#[test]
fn import_from_each_layout_adopts_a_published_key_and_the_signer_file_names_its_selector() {
    let Some((bind, work)) = setup(
        "import_from_each_layout_adopts_a_published_key_and_the_signer_file_names_its_selector",
        &[GENKEY, RSPAMADM],
    ) else {
        return;
    };
    // (layout, selector, the path given to --from), each in its own case.
    let mut cases: Vec<(&str, &str, PathBuf, String)> = Vec::new();

    // OpenDKIM: a KeyTable naming an opendkim-genkey key.
    let dir = work.join("opendkim");
    let key = genkey(&dir.join("admin"), DOMAIN, "odk");
    let table = dir.join("admin").join("KeyTable");
    std::fs::write(
        &table,
        format!("odk._domainkey.{DOMAIN} {DOMAIN}:odk:{}\n", key.display()),
    )
    .unwrap();
    cases.push(("opendkim", "odk", table, publish(&bind, "odk", &key)));

    // Rspamd: dkim_signing.conf naming a key of rspamadm dkim_keygen.
    let dir = work.join("rspamd");
    std::fs::create_dir_all(dir.join("admin")).unwrap();
    let key = dir.join("admin").join("rsp.key");
    rspamd_keygen(&key, &dir.join("admin").join("rsp.txt"), DOMAIN, "rsp");
    let conf = dir.join("admin").join("dkim_signing.conf");
    std::fs::write(
        &conf,
        format!(
            "domain {{\n  {DOMAIN} {{\n    path = \"{}\";\n    selector = \"rsp\";\n  }}\n}}\n",
            key.display()
        ),
    )
    .unwrap();
    cases.push(("rspamd", "rsp", conf, publish(&bind, "rsp", &key)));

    // amavis: a conf.d directory whose file has a dkim_key line (Perl
    // quoting of both kinds).
    let dir = work.join("amavis");
    let confd = dir.join("admin").join("conf.d");
    std::fs::create_dir_all(&confd).unwrap();
    let key = dir.join("admin").join("amv.pem");
    openssl_key(&key);
    std::fs::write(
        confd.join("20-debian_defaults"),
        "use strict;\n$enable_dkim_signing = 1;\n",
    )
    .unwrap();
    std::fs::write(
        confd.join("50-user"),
        format!(
            "# the admin's key\ndkim_key('{DOMAIN}', \"amv\", '{}');\n1;\n",
            key.display()
        ),
    )
    .unwrap();
    cases.push(("amavis", "amv", confd, publish(&bind, "amv", &key)));

    // docker-mailserver: config/opendkim/KeyTable naming the container's
    // path of config/opendkim/keys/DOMAIN/SELECTOR.private.
    let dir = work.join("dms");
    let config = dir.join("config");
    let key = genkey(
        &config.join("opendkim").join("keys").join(DOMAIN),
        DOMAIN,
        "dms",
    );
    std::fs::write(
        config.join("opendkim").join("KeyTable"),
        format!("dms._domainkey.{DOMAIN} {DOMAIN}:dms:/etc/opendkim/keys/{DOMAIN}/dms.private\n"),
    )
    .unwrap();
    cases.push(("dms", "dms", config, publish(&bind, "dms", &key)));

    // opendkim-genkey output alone: the domain from SELECTOR.txt, and its
    // record published as that file says (`h=sha256; k=rsa; ...`), which
    // publishes the same key in other words.
    let dir = work.join("dir");
    let key = genkey(&dir.join("admin"), DOMAIN, "gk");
    let txt = std::fs::read_to_string(dir.join("admin").join("gk.txt")).unwrap();
    let as_written: String = txt.split('"').skip(1).step_by(2).collect();
    assert!(as_written.contains("h=sha256"), "{txt}");
    nsupdate_txt(&bind, &format!("gk._domainkey.{DOMAIN}"), &as_written);
    cases.push(("dir", "gk", dir.join("admin"), record_of_key_file(&key)));

    for (layout, selector, path, record) in &cases {
        let dir = work.join(layout);
        let config = case_config(&bind, &dir, "");
        let out = mx(
            &config,
            &["dkim", "import", "--from", layout, path.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(0), "{layout}: {}", describe(&out));
        let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 1, "{layout}: one line per key: {lines:#?}");
        assert!(
            lines[0].starts_with(&format!("adopted {selector}._domainkey.{DOMAIN}")),
            "{layout}: {lines:#?}"
        );
        assert_adopted(&dir, selector, record, layout);
        // Again: held already, nothing changes.
        let out = mx(
            &config,
            &["dkim", "import", "--from", layout, path.to_str().unwrap()],
        );
        assert_eq!(out.status.code(), Some(0), "{layout}: {}", describe(&out));
        assert!(stdout(&out).contains("held already"), "{}", describe(&out));
        assert_adopted(&dir, selector, record, layout);
    }
}

#[test]
fn a_key_whose_published_record_does_not_match_is_reported_and_not_adopted() {
    let Some((bind, work)) = setup(
        "a_key_whose_published_record_does_not_match_is_reported_and_not_adopted",
        &[GENKEY],
    ) else {
        return;
    };
    // Two opendkim-genkey keys: one whose name publishes another key's
    // record, one whose name publishes nothing.
    let admin = work.join("admin");
    genkey(&admin, DOMAIN, "other");
    genkey(&admin, DOMAIN, "nopub");
    let stranger = work.join("stranger.pem");
    let wrong = openssl_key(&stranger);
    nsupdate_txt(&bind, &format!("other._domainkey.{DOMAIN}"), &wrong);

    let dir = work.join("cli");
    let config = case_config(&bind, &dir, "");
    let out = mx(
        &config,
        &["dkim", "import", "--from", "dir", admin.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    for selector in ["other", "nopub"] {
        let want = format!(
            "not adopted: adopt {}: {selector}._domainkey.{DOMAIN}: published record does not match the key",
            admin.join(format!("{selector}.private")).display()
        );
        assert!(
            text.lines().any(|l| l == want),
            "{want}\n{}",
            describe(&out)
        );
    }
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains(&wrong),
        "{text}"
    );
    assert!(keys(&dir).is_empty(), "{:#?}", keys(&dir));
    assert!(key_files(&dir).is_empty(), "{:?}", key_files(&dir));
    assert_eq!(table_bytes(&dir.join("signer")), [None, None]);

    // The same layout as a [[dkim.adopt]] entry: every pass reports it
    // (exit 1), adopts nothing, and makes no key of mxkeys' own for the
    // domain.
    let dir = work.join("pass");
    let config = case_config(
        &bind,
        &dir,
        &format!(
            "[[dkim.adopt]]\nfrom = \"dir\"\npath = \"{}\"\n",
            admin.display()
        ),
    );
    for pass in 1..=2 {
        let out = mx(&config, &["dkim", "rotate"]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "pass {pass}: {}",
            describe(&out)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        let mismatch: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("published record does not match the key"))
            .collect();
        assert_eq!(mismatch.len(), 2, "pass {pass}: {}", describe(&out));
        for selector in ["nopub", "other"] {
            let want = format!(
                "dkim: adopt {}: {selector}._domainkey.{DOMAIN}: published record does not match the key",
                admin.join(format!("{selector}.private")).display()
            );
            assert!(
                mismatch.iter().any(|l| l.ends_with(&want)),
                "{want}\n{}",
                describe(&out)
            );
        }
        assert!(keys(&dir).is_empty(), "pass {pass}: {:#?}", keys(&dir));
        assert!(
            key_files(&dir).is_empty(),
            "pass {pass}: {:?}",
            key_files(&dir)
        );
    }
    // The daemon's next DKIM pass for the held domain is minutes away,
    // not the 30 s loop that would repeat the same error line.
    let loaded = mxkeys::config::ConfigSource::choose(&config)
        .and_then(|c| c.load(&mxkeys::config::Host::current()))
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let next = mxkeys::dkim::next_due(&loaded).expect("a pass is due");
    assert!(next >= now + 240, "next DKIM pass in {} s", next - now);
}

/// `mxkeys --config CONFIG sync` with `env` added to its environment.
fn sync_with(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(common::bin());
    c.arg("--config")
        .arg(config)
        .arg("sync")
        .env_remove("MXKEYS_CONFIG")
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        describe(&out)
    );
    out
}

#[test]
fn a_key_in_an_environment_variable_without_its_pem_lines_is_adopted_by_sync() {
    let Some((bind, work)) = setup(
        "a_key_in_an_environment_variable_without_its_pem_lines_is_adopted_by_sync",
        &[],
    ) else {
        return;
    };
    let key = work.join("env.pem");
    let record = openssl_key(&key);
    nsupdate_txt(&bind, &format!("envk._domainkey.{DOMAIN}"), &record);
    // A PKCS#1 ("RSA PRIVATE KEY") form of the same key, as openssl's
    // traditional form.
    let pkcs1 = work.join("env-pkcs1.pem");
    let mut c = Command::new(common::servers::prog("openssl"));
    c.args(["pkey", "-traditional", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&pkcs1);
    common::servers::run_ok(c);
    for (file, case, begin) in [
        (&key, "env", "-----BEGIN PRIVATE KEY-----"),
        (&pkcs1, "env-pkcs1", "-----BEGIN RSA PRIVATE KEY-----"),
    ] {
        // As a container's DKIM_PRIVATEKEY: the base64 body alone.
        let pem = std::fs::read_to_string(file).unwrap();
        assert!(pem.starts_with(begin), "{pem}");
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n");
        let dir = work.join(case);
        let config = case_config(
            &bind,
            &dir,
            &format!(
                "[[dkim.adopt]]\nfrom = \"env\"\nvar = \"DKIM_PRIVATEKEY\"\ndomain = \"{DOMAIN}\"\nselector = \"envk\"\n"
            ),
        );
        let out = sync_with(&config, &[("DKIM_PRIVATEKEY", &body)]);
        assert_eq!(out.status.code(), Some(0), "{case}: {}", describe(&out));
        let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(
            !all.contains(&body[..40]),
            "{case}: the key was logged:\n{all}"
        );
        assert_adopted(&dir, "envk", &record, case);
    }

    // Unset: one error line naming the variable, nothing else adopted and
    // no key of mxkeys' own made for the domain.
    let dir = work.join("unset");
    let config = case_config(
        &bind,
        &dir,
        &format!(
            "[[dkim.adopt]]\nfrom = \"env\"\nvar = \"MXKEYS_TEST_NO_SUCH_KEY\"\ndomain = \"{DOMAIN}\"\nselector = \"envk\"\n"
        ),
    );
    let out = sync_with(&config, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.contains("dkim: adopt $MXKEYS_TEST_NO_SUCH_KEY: not set")),
        "{}",
        describe(&out)
    );
    assert!(keys(&dir).is_empty(), "{:#?}", keys(&dir));
}

/// An admin's OpenDKIM tables signing behind Postfix; a `sync` with a
/// `[[dkim.adopt]]` entry naming them adopts the admin's key as active,
/// generates no key of mxkeys' own, takes the tables over and reloads
/// OpenDKIM, which signs with the same selector before and after.
#[test]
fn a_sync_with_an_adopt_entry_takes_over_opendkim_which_signs_with_the_same_selector() {
    let Some((bind, work)) = setup(
        "a_sync_with_an_adopt_entry_takes_over_opendkim_which_signs_with_the_same_selector",
        &[DKIMPY, OPENDKIM, POSTFIX],
    ) else {
        return;
    };
    let AdminSigner { signer, record, .. } = admin_signer(&bind, &work);
    let (mut opendkim, sink, postfix, py) = start_mail_path(&bind, &work);
    let v = send_and_verify(&postfix, &sink, &py, "before-takeover");
    assert!(v.ok && v.selector == "mail", "{v:?}");

    let config = case_config(
        &bind,
        &work,
        &format!(
            "reload_signal = {{ pidfile = \"{}\", signal = \"USR1\" }}\n\
             [[dkim.adopt]]\nfrom = \"opendkim\"\npath = \"signer/KeyTable\"\n",
            opendkim.pidfile.display()
        ),
    );
    let out = sync_with(&config, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_adopted(&work, "mail", &record, "sync");
    let ks = keys(&work);
    assert_eq!(ks[0].algorithm, "rsa-2048");
    // The tables now name mxkeys' copy of the key.
    let [key_table, _] = table_bytes(&signer);
    let key_table = key_table.unwrap();
    assert!(
        key_table.contains(&ks[0].file.display().to_string()),
        "{key_table}"
    );
    opendkim.assert_running();
    let v = send_and_verify(&postfix, &sink, &py, "after-takeover");
    assert!(v.ok && v.selector == "mail", "{v:?}\n{}", opendkim.log());

    // The next sync finds the key held: nothing changes.
    let before = table_bytes(&signer);
    let out = sync_with(&config, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(table_bytes(&signer), before);
    assert_eq!(keys(&work), ks);
    let v = send_and_verify(&postfix, &sink, &py, "after-second-sync");
    assert!(v.ok && v.selector == "mail", "{v:?}");
}

/// `mxkeys init` pointed at a running OpenDKIM's configuration writes the
/// `[dkim]` table that adopts its keys (its KeyTable's directory as
/// `signer_dir`, its pid file with USR1 as the reload); with the DNS
/// provider filled in, as the FILL IN comment asks, the first sync takes
/// over, and OpenDKIM signs with the admin's selector before and after.
#[test]
fn init_adopts_a_running_opendkims_key_and_it_signs_with_the_same_selector_after_sync() {
    let Some((bind, work)) = setup(
        "init_adopts_a_running_opendkims_key_and_it_signs_with_the_same_selector_after_sync",
        &[DKIMPY, OPENDKIM, POSTFIX],
    ) else {
        return;
    };
    let AdminSigner { signer, record, .. } = admin_signer(&bind, &work);
    let (mut opendkim, sink, postfix, py) = start_mail_path(&bind, &work);
    let v = send_and_verify(&postfix, &sink, &py, "before-init");
    assert!(v.ok && v.selector == "mail", "{v:?}");

    let nothing = work.join("nothing-here");
    let conf = work.join("opendkim").join("opendkim.conf");
    let init = Command::new(common::bin())
        .args([
            "init",
            "--no-postfix",
            "--no-dovecot",
            "--hostname",
            "mail.example.test",
        ])
        .arg("--opendkim-config")
        .arg(&conf)
        .args(
            [
                "--letsencrypt",
                "--lego",
                "--acme-json",
                "--rspamd-config",
                "--amavis-config",
            ]
            .iter()
            .flat_map(|flag| [std::ffi::OsStr::new(flag), nothing.as_os_str()]),
        )
        .env_remove("MXKEYS_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(init.status.code(), Some(0), "{}", describe(&init));
    let printed = stdout(&init);
    let mut dkim: toml::Table = printed.parse::<toml::Table>().unwrap()["dkim"]
        .as_table()
        .unwrap_or_else(|| panic!("no [dkim] in\n{printed}"))
        .clone();
    assert_eq!(dkim["domains"].as_array().unwrap().len(), 1, "{printed}");
    assert_eq!(dkim["domains"][0].as_str(), Some(DOMAIN), "{printed}");
    assert_eq!(dkim["signer"].as_str(), Some("opendkim"), "{printed}");
    assert_eq!(dkim["signer_dir"].as_str(), signer.to_str(), "{printed}");
    assert_eq!(
        dkim["adopt"][0]["path"].as_str(),
        conf.to_str(),
        "{printed}"
    );
    assert_eq!(
        dkim["reload_signal"]["pidfile"].as_str(),
        opendkim.pidfile.to_str(),
        "{printed}"
    );
    assert!(printed.contains("FILL IN: dns"), "{printed}");
    // What the admin fills in: the provider, and where mxkeys keeps keys.
    dkim.insert("dns".into(), "bind".into());
    dkim.insert("key_dir".into(), "keys".into());
    let config = case_config(&bind, &work, "");
    let mut table: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    table.insert("dkim".into(), toml::Value::Table(dkim));
    std::fs::write(&config, toml::to_string(&table).unwrap()).unwrap();

    let out = sync_with(&config, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_adopted(&work, "mail", &record, "sync");
    opendkim.assert_running();
    let v = send_and_verify(&postfix, &sink, &py, "after-init-sync");
    assert!(v.ok && v.selector == "mail", "{v:?}\n{}", opendkim.log());
}

/// The daemon's passes report a key whose record does not match as a DKIM
/// error: /healthz answers 503 with that one line, and no key of mxkeys'
/// own is made for the domain meanwhile.
#[test]
fn healthz_names_an_adopted_key_whose_record_does_not_match() {
    let Some((bind, work)) = setup(
        "healthz_names_an_adopted_key_whose_record_does_not_match",
        &[],
    ) else {
        return;
    };
    let key = work.join("mail.pem");
    openssl_key(&key);
    let stranger = work.join("stranger.pem");
    let wrong = openssl_key(&stranger);
    nsupdate_txt(&bind, &format!("mail._domainkey.{DOMAIN}"), &wrong);
    let port = common::free_port();
    let dir = work.join("daemon");
    let config = case_config(
        &bind,
        &dir,
        &format!(
            "[[dkim.adopt]]\nfrom = \"key\"\npath = \"{}\"\ndomain = \"{DOMAIN}\"\nselector = \"mail\"\n\
             [metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            key.display()
        ),
    );
    let mut cmd = Command::new(common::bin());
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("MXKEYS_CONFIG");
    let mut daemon = common::Daemon::spawn(cmd, &dir, "run");
    let (_, why) = common::servers::poll(
        "/healthz to report the record that does not match",
        common::dkim_tools::DEADLINE,
        || {
            common::http_get(port, "/healthz").filter(|(code, body)| {
                *code == 503 && body.contains("published record does not match the key")
            })
        },
        || daemon.describe(),
    );
    assert_eq!(
        why.trim_end(),
        format!(
            "dkim: adopt {}: mail._domainkey.{DOMAIN}: published record does not match the key",
            key.display()
        ),
        "{}",
        daemon.describe()
    );
    daemon.assert_running();
    daemon.terminate();
    assert!(keys(&dir).is_empty(), "{:#?}", keys(&dir));
    assert!(key_files(&dir).is_empty(), "{:?}", key_files(&dir));
}

/// `--check none`: a key whose record is not published yet is adopted
/// without a look at DNS, and the record to publish is logged once as a
/// zone-file line (what `dkim records` prints).
#[test]
fn check_none_adopts_without_dns_and_logs_the_record_to_publish() {
    let Some((bind, work)) = setup(
        "check_none_adopts_without_dns_and_logs_the_record_to_publish",
        &[GENKEY],
    ) else {
        return;
    };
    let admin = work.join("admin");
    let key = genkey(&admin, DOMAIN, "side");
    let record = record_of_key_file(&key);
    let dir = work.join("none");
    let config = case_config(&bind, &dir, "");
    let out = mx(
        &config,
        &[
            "dkim",
            "import",
            "--from",
            "dir",
            admin.to_str().unwrap(),
            "--check",
            "none",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_adopted(&dir, "side", &record, "check none");
    let records = common::dkim_tools::mx_ok(&config, &["dkim", "records"]);
    let line = records.lines().next().unwrap().to_owned();
    assert!(
        line.starts_with(&format!("side._domainkey.{DOMAIN}. ")),
        "{records}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().filter(|l| l.ends_with(&line)).count(),
        1,
        "the record to publish, once: {line}\n{}",
        describe(&out)
    );
    assert!(
        bind.txt_values(&format!("side._domainkey.{DOMAIN}"))
            .is_empty()
    );
}

/// A layout naming a key for a domain not in `[dkim] domains`: `dkim
/// import --from` says so in its line (exit 1) and adopts the others; a
/// pass skips it in one line. Bad arguments exit 2.
#[test]
fn a_key_for_another_domain_is_one_line_and_bad_arguments_exit_2() {
    let Some((bind, work)) = setup(
        "a_key_for_another_domain_is_one_line_and_bad_arguments_exit_2",
        &[GENKEY],
    ) else {
        return;
    };
    let admin = work.join("admin");
    let ours = genkey(&admin.join("ours"), DOMAIN, "ours");
    let theirs = genkey(&admin.join("theirs"), "other.test", "theirs");
    let record = publish(&bind, "ours", &ours);
    let table = admin.join("KeyTable");
    std::fs::write(
        &table,
        format!(
            "ours._domainkey.{DOMAIN} {DOMAIN}:ours:{}\ntheirs._domainkey.other.test other.test:theirs:{}\n",
            ours.display(),
            theirs.display()
        ),
    )
    .unwrap();
    let table_arg = table.to_str().unwrap();

    let dir = work.join("cli");
    let config = case_config(&bind, &dir, "");
    for args in [
        &["dkim", "import", "--from", "postfix", table_arg][..],
        &[
            "dkim",
            "import",
            "--from",
            "opendkim",
            "--selector",
            "s",
            table_arg,
        ],
        &[
            "dkim", "import", "--check", "none", "--domain", DOMAIN, table_arg,
        ],
        &["dkim", "import", table_arg],
        &[
            "dkim",
            "import",
            "--from",
            "opendkim",
            "--domain",
            "nowhere.test",
            table_arg,
        ],
    ] {
        let out = mx(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", describe(&out));
        assert!(keys(&dir).is_empty(), "{args:?}");
    }
    let out = mx(
        &config,
        &["dkim", "import", "--from", "opendkim", table_arg],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("not adopted: ")
            && l.contains("theirs._domainkey.other.test")
            && l.contains("other.test is not one of [dkim] domains")),
        "{text}"
    );
    assert_adopted(&dir, "ours", &record, "cli");

    let dir = work.join("pass");
    let config = case_config(
        &bind,
        &dir,
        &format!(
            "[[dkim.adopt]]\nfrom = \"opendkim\"\npath = \"{}\"\n",
            table.display()
        ),
    );
    let out = mx(&config, &["dkim", "rotate"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let skipped: Vec<&str> = err.lines().filter(|l| l.contains("other.test")).collect();
    assert_eq!(skipped.len(), 1, "{}", describe(&out));
    assert!(
        skipped[0].contains("is not one of [dkim] domains: skipped"),
        "{}",
        skipped[0]
    );
    assert_adopted(&dir, "ours", &record, "pass");
}
