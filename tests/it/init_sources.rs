//! What `mxkeys init` will learn from a host's certificate stores and DKIM
//! signers (issue 16): `mxkeys::init::sources` and `mxkeys::init::dkim` on
//! stores made by the real programs: Certbot and lego issued by pebble (one
//! lineage with `--reuse-key` and a deploy hook, one without), an acme.json
//! as Traefik writes it, OpenDKIM's Debian layout with `opendkim-genkey`
//! keys, an Rspamd `dkim_signing.conf` with `rspamadm dkim_keygen` keys, an
//! amavis conf.d. Each finder returns exactly what the test made; each bad
//! entry is one note and the rest is still found.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::dkim_adopt::{RSPAMADM, genkey, rspamd_keygen};
use common::servers::{
    CERTBOT, CertbotDir, Need, PEBBLE, Pebble, certbot_certonly_with, combined_pem, first_cert,
    output_within, prog, require_programs, run_ok,
};
use common::*;
use mxkeys::config::{Adopt, AdoptCheck, AdoptFrom, DkimAlgorithm, Signer};
use mxkeys::init::mail::KeyTypeHint;
use mxkeys::init::{FoundCert, FoundKind, FoundSource, Look};

const LEGO: &[Need] = &[("lego", "lego")];
const GENKEY: &[Need] = &[
    ("opendkim-genkey", "opendkim-tools"),
    ("opendkim", "opendkim"),
];

/// Return from the test (or fail under CI=true) when a program is missing.
macro_rules! require {
    ($test:expr, $($needs:expr),+) => {
        if !require_programs($test, &[$($needs),+]) {
            return;
        }
    };
}

/// A [`Look`] at nothing: every place under `root`, none of them there.
fn look_at_nothing(root: &Path) -> Look {
    Look {
        postfix_config: None,
        skip_postfix: true,
        dovecot_config: None,
        skip_dovecot: true,
        letsencrypt: root.join("no-letsencrypt"),
        lego: vec![root.join("no-lego")],
        acme_json: vec![root.join("no-acme.json")],
        opendkim_config: root.join("no-opendkim.conf"),
        rspamd_config: root.join("no-dkim_signing.conf"),
        amavis_config: root.join("no-amavis"),
        dms: Some(root.join("no-dms")),
        state_dir: None,
        hostname: None,
    }
}

/// (label, names, key type, reuse_key) of each certificate.
fn certs(source: &FoundSource) -> Vec<(String, Vec<String>, KeyTypeHint, Option<bool>)> {
    source
        .certs
        .iter()
        .map(|c| (c.label.clone(), c.names.clone(), c.key_type, c.reuse_key))
        .collect()
}

fn cert<'a>(source: &'a FoundSource, label: &str) -> &'a FoundCert {
    source
        .certs
        .iter()
        .find(|c| c.label == label)
        .unwrap_or_else(|| panic!("no {label} in {source:#?}"))
}

/// Asserts `notes` match `wanted` (substrings) one to one, in order, each
/// one line.
fn assert_notes(notes: &[String], wanted: &[&str]) {
    assert_eq!(notes.len(), wanted.len(), "{notes:#?}");
    for (note, want) in notes.iter().zip(wanted) {
        assert!(note.contains(want), "{note:?} should say {want:?}");
        assert!(!note.contains('\n'), "{note:?}");
        assert!(!note.contains("PRIVATE KEY"), "{note:?}");
    }
}

/// `lego run` against pebble: `--path` is `path`, HTTP-01 on pebble's port.
fn lego_run(pebble: &Pebble, path: &Path, domain: &str, key_type: &str) {
    let mut c = Command::new(prog("lego"));
    c.args(["--accept-tos", "--email", "admin@example.test"])
        .args(["--server", &pebble.url])
        .arg("--path")
        .arg(path)
        .args(["--http", "--http.port"])
        .arg(format!("127.0.0.1:{}", pebble.http_port))
        .args(["--key-type", key_type, "-d", domain, "run"])
        .env("LEGO_CA_CERTIFICATES", &pebble.https_ca);
    let desc = format!("{c:?}");
    let o = output_within(c, Duration::from_secs(180)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        o.status.success(),
        "{desc} failed\n{}\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        pebble.log()
    );
}

#[test]
fn certbot_and_lego_stores_issued_by_pebble_are_found_with_names_key_types_and_reuse_key() {
    require!(
        "certbot_and_lego_stores_issued_by_pebble_are_found_with_names_key_types_and_reuse_key",
        PEBBLE,
        CERTBOT,
        LEGO
    );
    let env = Env::new();
    let pebble = Pebble::start(&env.path("pebble"));
    let certbot = CertbotDir::new(&env.path("certbot"));
    let hook = format!(
        "cp -L live/kept/fullchain.pem {}",
        env.path("out").display()
    );
    certbot_certonly_with(
        &pebble,
        &certbot,
        "kept",
        &["kept.example.test", "smtp.example.test"],
        &["--reuse-key", "--key-type", "ecdsa", "--deploy-hook", &hook],
    );
    certbot_certonly_with(
        &pebble,
        &certbot,
        "fresh",
        &["fresh.example.test"],
        &["--key-type", "rsa"],
    );
    // A lineage whose key link dangles: one note, the others still found.
    let broken = certbot.config.join("live").join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::copy(
        certbot.live("fresh").join("fullchain.pem"),
        broken.join("fullchain.pem"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        "../../archive/broken/privkey1.pem",
        broken.join("privkey.pem"),
    )
    .unwrap();
    // A deploy hook Certbot runs for every lineage.
    let every = certbot
        .config
        .join("renewal-hooks")
        .join("deploy")
        .join("copy-to-postfix");
    write(
        &every,
        "#!/bin/sh\ncp \"$RENEWED_LINEAGE\"/*.pem /etc/postfix/\n",
    );
    set_mode(&every, 0o755);
    let lego = env.path("lego");
    lego_run(&pebble, &lego, "lego.example.test", "rsa2048");
    lego_run(&pebble, &lego, "ec.example.test", "ec256");

    let mut look = look_at_nothing(&env.root);
    look.letsencrypt = certbot.config.clone();
    look.lego = vec![env.path("no-such-lego"), lego.clone()];
    let found = mxkeys::init::sources::sources(&look);
    assert_eq!(
        found
            .iter()
            .map(|s| (s.kind, s.path.clone()))
            .collect::<Vec<_>>(),
        vec![
            (FoundKind::Certbot, certbot.config.clone()),
            (FoundKind::Lego, lego.clone())
        ],
        "{found:#?}"
    );
    let (cb, lg) = (&found[0], &found[1]);
    assert_eq!(
        certs(cb),
        vec![
            (
                "fresh".to_owned(),
                vec!["fresh.example.test".to_owned()],
                KeyTypeHint::Rsa,
                Some(false)
            ),
            (
                "kept".to_owned(),
                vec![
                    "kept.example.test".to_owned(),
                    "smtp.example.test".to_owned()
                ],
                KeyTypeHint::Ecdsa,
                Some(true)
            ),
        ],
        "{cb:#?}"
    );
    for name in ["kept", "fresh"] {
        let leaf = certbot.live_leaf(name);
        let c = cert(cb, name);
        assert_eq!(c.sha256, sha256_hex(&leaf), "{name}");
        assert_eq!(c.not_after, cert_info(&leaf).not_after, "{name}");
    }
    assert_notes(
        &cb.notes,
        &[
            "live/broken/privkey.pem",
            "lineage fresh: renewal makes a new key each time",
            &format!("lineage kept: renew_hook `{hook}`"),
            &format!("deploy hook {} runs after each renewal", every.display()),
        ],
    );

    assert_eq!(
        certs(lg),
        vec![
            (
                "ec.example.test".to_owned(),
                vec!["ec.example.test".to_owned()],
                KeyTypeHint::Ecdsa,
                None
            ),
            (
                "lego.example.test".to_owned(),
                vec!["lego.example.test".to_owned()],
                KeyTypeHint::Rsa,
                None
            ),
        ],
        "{lg:#?}"
    );
    let lego_leaf = first_cert(&lego.join("certificates/lego.example.test.crt"));
    assert_eq!(cert(lg, "lego.example.test").sha256, sha256_hex(&lego_leaf));
    assert_notes(&lg.notes, &[]);

    // What the servers serve: the same fingerprints, read from the files
    // they read (a symlinked fullchain, a combined key+chain file).
    let combined = env.path("combined.pem");
    let ca = Ca::new("init-served");
    let own = ca.issue(&LeafSpec::new(&["own.example.test"]).kind(KeyKind::P256));
    write(&combined, combined_pem(&own));
    let kept_chain = certbot.live("kept").join("fullchain.pem");
    let missing = env.path("missing.pem");
    let (served, problems) = mxkeys::init::sources::served(&[
        kept_chain.clone(),
        combined.clone(),
        missing.clone(),
        kept_chain.clone(),
    ]);
    assert_eq!(
        served
            .iter()
            .map(|s| (
                s.chain.clone(),
                s.names.clone(),
                s.key_type,
                s.sha256.clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            (
                kept_chain,
                vec![
                    "kept.example.test".to_owned(),
                    "smtp.example.test".to_owned()
                ],
                KeyTypeHint::Ecdsa,
                cert(cb, "kept").sha256.clone()
            ),
            (
                combined,
                vec!["own.example.test".to_owned()],
                KeyTypeHint::Ecdsa,
                own.fp()
            ),
        ]
    );
    assert_eq!(problems, vec![format!("{}: not found", missing.display())]);
}

#[test]
fn every_resolver_of_a_traefik_acme_json_is_found_and_a_bad_entry_is_one_note() {
    let env = Env::new();
    let ca = Ca::new("init-traefik");
    let a = ca.issue(&LeafSpec::new(&["a.example.test", "mx.example.test"]).kind(KeyKind::Rsa2048));
    let b = ca.issue(&LeafSpec::new(&["b.example.test"]).kind(KeyKind::P256));
    let mut bad = AcmeEntry::new(&b, "bad.example.test");
    bad.key = None;
    let file = env.path("acme.json");
    write_json(
        &file,
        &acme_v2(&[
            ("le", Some(vec![AcmeEntry::new(&a, "a.example.test")])),
            (
                "other",
                Some(vec![bad, AcmeEntry::new(&b, "b.example.test")]),
            ),
        ]),
    );
    let mut look = look_at_nothing(&env.root);
    look.acme_json = vec![env.path("no-acme.json"), file.clone()];
    let found = mxkeys::init::sources::sources(&look);
    assert_eq!(found.len(), 1, "{found:#?}");
    let t = &found[0];
    assert_eq!((t.kind, &t.path), (FoundKind::Traefik, &file));
    assert_eq!(
        t.certs
            .iter()
            .map(|c| (c.names.clone(), c.key_type, c.sha256.clone(), c.reuse_key))
            .collect::<Vec<_>>(),
        vec![
            (
                vec!["a.example.test".to_owned(), "mx.example.test".to_owned()],
                KeyTypeHint::Rsa,
                a.fp(),
                None
            ),
            (
                vec!["b.example.test".to_owned()],
                KeyTypeHint::Ecdsa,
                b.fp(),
                None
            ),
        ]
    );
    assert!(
        t.certs[0].label.contains("\"le\""),
        "{:?}",
        t.certs[0].label
    );
    assert!(
        t.certs[1].label.contains("\"other\""),
        "{:?}",
        t.certs[1].label
    );
    assert_notes(
        &t.notes,
        &["resolver \"other\" #1 (main \"bad.example.test\")"],
    );
}

#[test]
fn nothing_is_found_and_nothing_noted_where_no_store_and_no_signer_exists() {
    let env = Env::new();
    let look = look_at_nothing(&env.root);
    assert_eq!(mxkeys::init::sources::sources(&look), vec![]);
    assert_eq!(mxkeys::init::dkim::dkim(&look), vec![]);
}

/// The real OpenDKIM takes `conf` (`opendkim -n`).
fn opendkim_accepts(conf: &Path) {
    let mut c = Command::new(prog("opendkim"));
    c.arg("-n").arg("-x").arg(conf);
    run_ok(c);
}

/// (domain, selector, algorithm, key file) of each key found.
fn keys(found: &mxkeys::init::FoundDkim) -> Vec<(String, String, DkimAlgorithm, PathBuf)> {
    found
        .keys
        .iter()
        .map(|k| {
            (
                k.domain.to_string(),
                k.selector.clone(),
                k.algorithm,
                k.key_file.clone(),
            )
        })
        .collect()
}

fn adopt(from: AdoptFrom) -> Adopt {
    Adopt {
        from,
        check: AdoptCheck::Dns,
    }
}

#[test]
fn an_opendkim_key_table_is_adopted_with_its_directory_and_pid_file_and_a_bad_line_is_one_note() {
    require!(
        "an_opendkim_key_table_is_adopted_with_its_directory_and_pid_file_and_a_bad_line_is_one_note",
        GENKEY
    );
    let env = Env::new();
    let keys_dir = env.path("dkimkeys");
    let a = genkey(&keys_dir.join("example.com"), "mail", "mail");
    let b = genkey(&keys_dir.join("example.org"), "2024", "2024");
    let tables = env.path("opendkim");
    write(
        &tables.join("KeyTable"),
        format!(
            "# Debian layout\nmail._domainkey.example.com example.com:mail:{}\n\
             2024._domainkey.example.org example.org:2024:{}\n\
             gone._domainkey.example.net example.net:gone:{}\n",
            a.display(),
            b.display(),
            keys_dir.join("gone.private").display()
        ),
    );
    write(
        &tables.join("SigningTable"),
        "*@example.com mail._domainkey.example.com\n*@example.org 2024._domainkey.example.org\n",
    );
    let pid = env.path("run/opendkim.pid");
    let conf = env.path("opendkim.conf");
    write(
        &conf,
        format!(
            "Syslog no\nMode sv\nCanonicalization relaxed/simple\nRequireSafeKeys false\n\
             Socket inet:{}@127.0.0.1\nPidFile {}\nKeyTable file:{}\nSigningTable refile:{}\n",
            common::ports::free_port(),
            pid.display(),
            tables.join("KeyTable").display(),
            tables.join("SigningTable").display()
        ),
    );
    opendkim_accepts(&conf);

    let mut look = look_at_nothing(&env.root);
    look.opendkim_config = conf.clone();
    let found = mxkeys::init::dkim::dkim(&look);
    assert_eq!(found.len(), 1, "{found:#?}");
    let o = &found[0];
    assert_eq!(o.signer, Signer::Opendkim);
    assert_eq!(o.signer_dir, tables);
    assert_eq!(o.adopt, vec![adopt(AdoptFrom::Opendkim(conf.clone()))]);
    assert_eq!(o.reload_signal, Some((pid, "USR1".to_owned())));
    assert_eq!(o.reload, None);
    assert_eq!(
        keys(o),
        vec![
            (
                "example.com".to_owned(),
                "mail".to_owned(),
                DkimAlgorithm::Rsa2048,
                a.clone()
            ),
            (
                "example.org".to_owned(),
                "2024".to_owned(),
                DkimAlgorithm::Rsa2048,
                b
            ),
        ]
    );
    assert_notes(&o.notes, &["KeyTable: line 4: key file"]);

    // One key named by Domain/Selector/KeyFile, no PidFile: the systemd
    // reload, and a note that mxkeys' tables must be named.
    let single = env.path("single.conf");
    write(
        &single,
        format!(
            "Syslog no\nRequireSafeKeys false\nDomain example.com\nSelector mail\nKeyFile {}\n",
            a.display()
        ),
    );
    opendkim_accepts(&single);
    look.opendkim_config = single.clone();
    let found = mxkeys::init::dkim::dkim(&look);
    let o = &found[0];
    assert_eq!(o.signer_dir, keys_dir.join("example.com"));
    assert_eq!(
        o.reload,
        Some(vec![
            "systemctl".to_owned(),
            "reload".to_owned(),
            "opendkim".to_owned()
        ])
    );
    assert_eq!(o.reload_signal, None);
    assert_eq!(
        keys(o),
        vec![(
            "example.com".to_owned(),
            "mail".to_owned(),
            DkimAlgorithm::Rsa2048,
            a
        )]
    );
    assert_notes(&o.notes, &["names no KeyTable"]);

    // Debian's opendkim.conf as installed signs with no key: nothing to
    // adopt, one note.
    let stock = env.path("stock.conf");
    write(
        &stock,
        "Syslog yes\nUMask 007\n#Domain example.com\n#KeyFile /etc/dkimkeys/dkim.key\n\
         #Selector 2020\nSocket local:/run/opendkim/opendkim.sock\n\
         PidFile /run/opendkim/opendkim.pid\n",
    );
    opendkim_accepts(&stock);
    look.opendkim_config = stock.clone();
    let found = mxkeys::init::dkim::dkim(&look);
    let o = &found[0];
    assert_eq!(
        (o.signer, o.adopt.len(), o.keys.len()),
        (Signer::Opendkim, 0, 0)
    );
    assert_eq!(
        o.reload_signal,
        Some((
            PathBuf::from("/run/opendkim/opendkim.pid"),
            "USR1".to_owned()
        ))
    );
    assert_notes(&o.notes, &["names no KeyTable and no KeyFile"]);
}

#[test]
fn an_rspamd_dkim_signing_conf_and_amavis_dkim_key_lines_are_adopted_and_a_raw_ed25519_key_is_one_note()
 {
    require!(
        "an_rspamd_dkim_signing_conf_and_amavis_dkim_key_lines_are_adopted_and_a_raw_ed25519_key_is_one_note",
        RSPAMADM
    );
    let env = Env::new();
    let dkim_dir = env.path("dkim");
    std::fs::create_dir_all(&dkim_dir).unwrap();
    let rsa = dkim_dir.join("example.com.mail.key");
    let ed = dkim_dir.join("example.org.ed.key");
    for (key, domain, selector, kind) in [
        (&rsa, "example.com", "mail", "rsa"),
        (&ed, "example.org", "ed", "ed25519"),
    ] {
        let mut c = Command::new(prog("rspamadm"));
        c.args(["dkim_keygen", "-t", kind, "-d", domain, "-s", selector])
            .args(["-b", "2048", "-k"])
            .arg(key);
        run_ok(c);
    }
    let local_d = env.path("rspamd/local.d");
    let conf = local_d.join("dkim_signing.conf");
    write(
        &conf,
        format!(
            "allow_username_mismatch = true;\ndomain {{\n  example.com {{\n    path = \"{}\";\n    selector = \"mail\";\n  }}\n  example.org {{\n    path = \"{}\";\n    selector = \"ed\";\n  }}\n}}\n",
            rsa.display(),
            ed.display()
        ),
    );
    let amavis = env.path("amavis/conf.d");
    write(
        &amavis.join("20-debian_defaults"),
        "use strict;\n$enable_dkim_signing = 0;\n1;\n",
    );
    let with_keys = amavis.join("50-user");
    write(
        &with_keys,
        format!(
            "use strict;\n$enable_dkim_signing = 1;\ndkim_key('example.com', 'mail', '{}');\n1;\n",
            rsa.display()
        ),
    );

    let mut look = look_at_nothing(&env.root);
    look.rspamd_config = conf.clone();
    look.amavis_config = amavis.clone();
    let found = mxkeys::init::dkim::dkim(&look);
    assert_eq!(found.len(), 2, "{found:#?}");
    let r = &found[0];
    assert_eq!(r.signer, Signer::Rspamd);
    assert_eq!(r.signer_dir, local_d);
    assert_eq!(r.adopt, vec![adopt(AdoptFrom::Rspamd(conf.clone()))]);
    assert_eq!((&r.reload, &r.reload_signal), (&None, &None));
    assert_eq!(
        keys(r),
        vec![(
            "example.com".to_owned(),
            "mail".to_owned(),
            DkimAlgorithm::Rsa2048,
            rsa.clone()
        )]
    );
    assert_notes(&r.notes, &["SIGHUP", "Rspamd's raw base64 form"]);

    let m = &found[1];
    assert_eq!(m.signer, Signer::Amavis);
    assert_eq!(m.signer_dir, amavis);
    assert_eq!(m.adopt, vec![adopt(AdoptFrom::Amavis(with_keys))]);
    assert_eq!(
        keys(m),
        vec![(
            "example.com".to_owned(),
            "mail".to_owned(),
            DkimAlgorithm::Rsa2048,
            rsa
        )]
    );
    assert_notes(&m.notes, &["reload"]);
}

#[test]
fn a_docker_mailserver_config_directory_is_adopted_whole_with_its_opendkim_or_rspamd_signer() {
    require!(
        "a_docker_mailserver_config_directory_is_adopted_whole_with_its_opendkim_or_rspamd_signer",
        GENKEY,
        RSPAMADM
    );
    let env = Env::new();
    // docker-data/dms/config on the host is /tmp/docker-mailserver inside.
    let config = env.path("docker-data/dms/config");
    let od = config.join("opendkim");
    let com = genkey(&od.join("keys/example.com"), "example.com", "mail");
    write(
        &od.join("KeyTable"),
        "mail._domainkey.example.com example.com:mail:/etc/opendkim/keys/example.com/mail.private\n\
         mail._domainkey.example.net example.net:mail:/etc/opendkim/keys/example.net/mail.private\n",
    );
    write(
        &od.join("SigningTable"),
        "*@example.com mail._domainkey.example.com\n",
    );
    let mut look = look_at_nothing(&env.root);
    look.dms = Some(config.clone());
    let found = mxkeys::init::dkim::dkim(&look);
    assert_eq!(found.len(), 1, "{found:#?}");
    let d = &found[0];
    assert_eq!(d.signer, Signer::Opendkim);
    assert_eq!(d.signer_dir, od);
    assert_eq!(d.adopt, vec![adopt(AdoptFrom::Dms(config.clone()))]);
    assert_eq!(
        keys(d),
        vec![(
            "example.com".to_owned(),
            "mail".to_owned(),
            DkimAlgorithm::Rsa2048,
            com
        )]
    );
    assert_notes(
        &d.notes,
        &["copies its config directory", "KeyTable: line 2: key file"],
    );

    // Rspamd's half only (`setup config dkim` with ENABLE_RSPAMD=1).
    std::fs::remove_dir_all(&od).unwrap();
    let rd = config.join("rspamd/dkim");
    std::fs::create_dir_all(&rd).unwrap();
    let key = rd.join("rsa-2048-mail-example.org.private.txt");
    rspamd_keygen(
        &key,
        &rd.join("rsa-2048-mail-example.org.public.txt"),
        "example.org",
        "mail",
    );
    let found = mxkeys::init::dkim::dkim(&look);
    let d = &found[0];
    assert_eq!(d.signer, Signer::Rspamd);
    assert_eq!(d.signer_dir, config.join("rspamd/override.d"));
    assert_eq!(
        keys(d),
        vec![(
            "example.org".to_owned(),
            "mail".to_owned(),
            DkimAlgorithm::Rsa2048,
            key
        )]
    );
    assert_notes(&d.notes, &["copies its config directory"]);
}
