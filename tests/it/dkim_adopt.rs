//! The readers behind `mxkeys dkim import --from opendkim | rspamd | dms |
//! dir` (`mxkeys::dkim::adopt`), on layouts made by the real tools: keys
//! from `opendkim-genkey` and `rspamadm dkim_keygen`, a KeyTable,
//! SigningTable and `opendkim.conf` as Debian writes them, a
//! `dkim_signing.conf` in the forms of Rspamd's documentation, and a
//! docker-mailserver configuration directory laid out as its `setup config
//! dkim` leaves it. Each reader finds every good key with its domain,
//! selector and file; each bad entry (missing file, bad domain, a key file
//! replaced by a symlink) is one error line and the others are still found.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::servers::{Need, prog, require_programs, run_ok};
use mxkeys::dkim::adopt::{self, Adopted};
use mxkeys::names::DnsName;

pub(super) const GENKEY: &[Need] = &[("opendkim-genkey", "opendkim-tools")];
pub(super) const RSPAMADM: &[Need] = &[("rspamadm", "rspamd")];
const OPENDKIM: &[Need] = &[("opendkim", "opendkim")];

/// The real OpenDKIM reads `conf` without complaint (`opendkim -n`), so the
/// test's configuration is one OpenDKIM takes.
fn opendkim_accepts(conf: &Path) {
    let mut c = Command::new(prog("opendkim"));
    c.arg("-n").arg("-x").arg(conf);
    run_ok(c);
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mxkeys-adopt-")
        .tempdir()
        .unwrap()
}

/// `opendkim-genkey` as docker-mailserver runs it: `DIR/SELECTOR.private`
/// and `DIR/SELECTOR.txt`.
pub(super) fn genkey(dir: &Path, domain: &str, selector: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut c = Command::new(prog("opendkim-genkey"));
    c.args([
        "--bits=2048",
        "--subdomains",
        "--domain",
        domain,
        "--selector",
        selector,
    ])
    .arg("--directory")
    .arg(dir);
    run_ok(c);
    dir.join(format!("{selector}.private"))
}

/// `rspamadm dkim_keygen`, the public part (zone form) written to `public`.
pub(super) fn rspamd_keygen(key: &Path, public: &Path, domain: &str, selector: &str) {
    let mut c = Command::new(prog("rspamadm"));
    c.args([
        "dkim_keygen",
        "-b",
        "2048",
        "-d",
        domain,
        "-s",
        selector,
        "-k",
    ])
    .arg(key);
    let out = run_ok(c);
    std::fs::write(public, out.stdout).unwrap();
}

/// `rspamadm dkim_keygen -t ed25519`: Rspamd's raw key form.
fn rspamd_keygen_ed25519(key: &Path, public: &Path) {
    let mut c = Command::new(prog("rspamadm"));
    c.args([
        "dkim_keygen",
        "-t",
        "ed25519",
        "-d",
        "example.com",
        "-s",
        "mail",
        "-k",
    ])
    .arg(key);
    let out = run_ok(c);
    std::fs::write(public, out.stdout).unwrap();
}

/// (domain, selector, key file, record file) of every key found, sorted.
fn found(a: &Adopted) -> Vec<(String, String, PathBuf, Option<PathBuf>)> {
    let mut v: Vec<_> = a
        .found
        .iter()
        .map(|f| {
            (
                f.domain.to_string(),
                f.selector.clone(),
                f.key_file.clone(),
                f.record_file.clone(),
            )
        })
        .collect();
    v.sort();
    v
}

fn errors(a: &Adopted) -> Vec<String> {
    a.errors.iter().map(ToString::to_string).collect()
}

/// Asserts `errors` are one line each, match `wanted` (substrings, in
/// order) one to one, and never hold key material.
fn assert_errors(a: &Adopted, wanted: &[&str]) {
    let got = errors(a);
    assert_eq!(got.len(), wanted.len(), "{got:#?}");
    for (g, w) in got.iter().zip(wanted) {
        assert!(g.contains(w), "{g:?} lacks {w:?}\n{got:#?}");
        assert!(!g.contains('\n') && !g.contains("PRIVATE KEY"), "{g}");
    }
}

#[test]
fn an_opendkim_key_table_and_the_conf_naming_it_yield_every_key_and_one_error_per_bad_line() {
    if !require_programs(
        "an_opendkim_key_table_and_the_conf_naming_it_yield_every_key_and_one_error_per_bad_line",
        &[GENKEY, OPENDKIM],
    ) {
        return;
    }
    let t = tmp();
    let etc = t.path().join("etc/opendkim");
    let keys = t.path().join("etc/dkimkeys");
    let com = genkey(&keys.join("example.com"), "example.com", "mail");
    let org = genkey(&keys.join("example.org"), "example.org", "s2024");
    // A key file the signer's user replaced by a link to another file.
    let linked = keys.join("example.com/evil.private");
    std::os::unix::fs::symlink(&org, &linked).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    let table = etc.join("KeyTable");
    std::fs::write(
        &table,
        format!(
            "# OpenDKIM KeyTable\n\
             mail._domainkey.example.com example.com:mail:{}\n\
             \n\
             s2024._domainkey.example.org\tExample.ORG:s2024:{}\n\
             gone._domainkey.example.net example.net:gone:{}/missing.private\n\
             bad._domainkey.bad bad_domain!.com:mail:{}\n\
             evil._domainkey.example.com example.com:evil:{}\n\
             any %:mail:{}\n\
             a-line-without-a-value\n",
            com.display(),
            org.display(),
            keys.display(),
            com.display(),
            linked.display(),
            com.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        etc.join("SigningTable"),
        "*@example.com mail._domainkey.example.com\n*@example.org s2024._domainkey.example.org\n",
    )
    .unwrap();
    let want_found = vec![
        (
            "example.com".to_owned(),
            "mail".to_owned(),
            com.clone(),
            Some(com.with_extension("txt")),
        ),
        (
            "example.org".to_owned(),
            "s2024".to_owned(),
            org.clone(),
            Some(org.with_extension("txt")),
        ),
    ];
    let want_errors = [
        "KeyTable: line 5: key file ",
        "KeyTable: line 6: \"bad_domain!.com\": character '!'",
        "KeyTable: line 7: key file ",
        "KeyTable: line 8: domain `%`",
        "KeyTable: line 9: not of the form",
    ];
    let a = adopt::opendkim(&table);
    assert_eq!(found(&a), want_found);
    assert_errors(&a, &want_errors);
    let e = errors(&a);
    assert!(e[0].ends_with("missing.private: not found"), "{}", e[0]);
    assert!(e[2].contains("symbolic link"), "{}", e[2]);

    // Debian's opendkim.conf naming the tables (refile: as Debian's
    // SigningTable line, file: for the KeyTable): the same keys.
    let conf = etc.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Syslog\t\t\tyes\nUMask\t\t\t007\n#Domain\t\t\texample.com\n\
             RequireSafeKeys\t\tfalse\n\
             KeyTable\t\tfile:{}\nSigningTable\t\trefile:{}\n\
             Socket\t\t\tlocal:/run/opendkim/opendkim.sock\n",
            table.display(),
            etc.join("SigningTable").display()
        ),
    )
    .unwrap();
    opendkim_accepts(&conf);
    let a = adopt::opendkim(&conf);
    assert_eq!(found(&a), want_found);
    assert_errors(&a, &want_errors);

    // The single-key form: Domain (a list), Selector, KeyFile.
    std::fs::write(
        &conf,
        format!(
            "Domain\t\t\texample.com, example.org,not!a.name\nSelector\t\tmail\nKeyFile\t\t{}\n\
             RequireSafeKeys\t\tfalse\n",
            com.display()
        ),
    )
    .unwrap();
    opendkim_accepts(&conf);
    let a = adopt::opendkim(&conf);
    let both: Vec<_> = found(&a)
        .into_iter()
        .map(|(d, s, k, _)| (d, s, k))
        .collect();
    assert_eq!(
        both,
        vec![
            ("example.com".to_owned(), "mail".to_owned(), com.clone()),
            ("example.org".to_owned(), "mail".to_owned(), com.clone()),
        ]
    );
    assert_errors(&a, &["opendkim.conf: line 1: \"not!a.name\""]);

    // `Domain` naming a file of domains (a dataset, as `file:PATH`).
    let domains = etc.join("domains");
    std::fs::write(&domains, "# signed domains\nexample.com\n\nbad!.example\n").unwrap();
    std::fs::write(
        &conf,
        format!(
            "Domain\t\t\tfile:{}\nSelector\t\tmail\nKeyFile\t\t{}\nRequireSafeKeys\t\tfalse\n",
            domains.display(),
            com.display()
        ),
    )
    .unwrap();
    opendkim_accepts(&conf);
    let a = adopt::opendkim(&conf);
    assert_eq!(found(&a).len(), 1, "{:#?}", found(&a));
    assert_eq!(a.found[0].domain.as_str(), "example.com");
    assert_errors(&a, &["opendkim/domains: line 4: \"bad!.example\""]);
}

#[test]
fn a_directory_of_opendkim_genkey_output_yields_each_selector_with_the_domain_of_its_record() {
    if !require_programs(
        "a_directory_of_opendkim_genkey_output_yields_each_selector_with_the_domain_of_its_record",
        &[GENKEY],
    ) {
        return;
    }
    let t = tmp();
    let dir = t.path().join("keys");
    let a1 = genkey(&dir, "example.com", "a1");
    let b2 = genkey(&dir, "example.com", "b2");
    std::os::unix::fs::symlink(&a1, dir.join("link.private")).unwrap();
    std::fs::write(
        dir.join("link.txt"),
        "; ----- DKIM key link for example.com\n",
    )
    .unwrap();
    // A key whose record file names no domain.
    let other = t.path().join("other");
    let c3 = genkey(&other, "example.com", "c3");
    std::fs::copy(&c3, dir.join("c3.private")).unwrap();
    std::fs::write(dir.join("c3.txt"), "c3._domainkey IN TXT \"p=\"\n").unwrap();
    // One whose record comment names no valid domain.
    std::fs::copy(&c3, dir.join("d4.private")).unwrap();
    std::fs::write(dir.join("d4.txt"), "; ----- DKIM key d4 for bad!.example\n").unwrap();

    let a = adopt::genkey_dir(&dir, None);
    let want = |domain: &str| {
        vec![
            (
                domain.to_owned(),
                "a1".to_owned(),
                a1.clone(),
                Some(a1.with_extension("txt")),
            ),
            (
                domain.to_owned(),
                "b2".to_owned(),
                b2.clone(),
                Some(b2.with_extension("txt")),
            ),
        ]
    };
    assert_eq!(found(&a), want("example.com"));
    assert_errors(
        &a,
        &[
            "c3.txt: no `DKIM key",
            "keys: d4.private: \"bad!.example\": character '!'",
            "keys: link.private: key file ",
        ],
    );
    assert!(errors(&a)[2].contains("symbolic link"));

    // The caller's domain wins over the comments (c3 is then found too).
    let given = DnsName::parse("mail.example.net").unwrap();
    let a = adopt::genkey_dir(&dir, Some(&given));
    let mut w = want("mail.example.net");
    w.insert(
        2,
        (
            "mail.example.net".to_owned(),
            "c3".to_owned(),
            dir.join("c3.private"),
            Some(dir.join("c3.txt")),
        ),
    );
    w.push((
        "mail.example.net".to_owned(),
        "d4".to_owned(),
        dir.join("d4.private"),
        Some(dir.join("d4.txt")),
    ));
    assert_eq!(found(&a), w);
    assert_errors(&a, &["link.private: key file "]);
}

#[test]
fn a_docker_mailserver_config_directory_yields_its_opendkim_and_rspamd_keys() {
    if !require_programs(
        "a_docker_mailserver_config_directory_yields_its_opendkim_and_rspamd_keys",
        &[GENKEY, RSPAMADM],
    ) {
        return;
    }
    let t = tmp();
    // docker-data/dms/config on the host is /tmp/docker-mailserver inside.
    let config = t.path().join("docker-data/dms/config");
    let od = config.join("opendkim");
    let com = genkey(&od.join("keys/example.com"), "example.com", "mail");
    let org = genkey(&od.join("keys/example.org"), "example.org", "mail");
    std::fs::write(
        od.join("KeyTable"),
        "mail._domainkey.example.com example.com:mail:/etc/opendkim/keys/example.com/mail.private\n\
         mail._domainkey.example.org example.org:mail:/etc/opendkim/keys/example.org/mail.private\n\
         mail._domainkey.example.net example.net:mail:/etc/opendkim/keys/example.net/mail.private\n\
         mail._domainkey.example.info example.info:mail:/root/mail.private\n\
         mail._domainkey.bad bad!.example:mail:/etc/opendkim/keys/example.com/mail.private\n",
    )
    .unwrap();
    std::fs::write(
        od.join("SigningTable"),
        "*@example.com mail._domainkey.example.com\n*@example.org mail._domainkey.example.org\n",
    )
    .unwrap();
    std::fs::write(od.join("TrustedHosts"), "127.0.0.1\nlocalhost\n").unwrap();
    // Rspamd's half, as rspamd-dkim names it (selector with a dash, so
    // only the public file tells selector from domain).
    let rd = config.join("rspamd/dkim");
    std::fs::create_dir_all(&rd).unwrap();
    let base = "rsa-2048-dkim-2024-example.net";
    let key = rd.join(format!("{base}.private.txt"));
    let public = rd.join(format!("{base}.public.txt"));
    rspamd_keygen(&key, &public, "example.net", "dkim-2024");
    let dns = rd.join(format!("{base}.public.dns.txt"));
    std::fs::write(&dns, "v=DKIM1; k=rsa; p=AAAA\n").unwrap();
    // An Ed25519 key in Rspamd's raw form (`setup config dkim keytype
    // ed25519`): named, not importable as it is.
    rspamd_keygen_ed25519(
        &rd.join("ed25519-mail-example.com.private.txt"),
        &rd.join("ed25519-mail-example.com.public.txt"),
    );
    // A private key replaced by a link.
    std::os::unix::fs::symlink(&key, rd.join("rsa-2048-mail-example.org.private.txt")).unwrap();

    let a = adopt::dms(&config);
    assert_eq!(
        found(&a),
        vec![
            (
                "example.com".to_owned(),
                "mail".to_owned(),
                com.clone(),
                Some(com.with_extension("txt")),
            ),
            (
                "example.net".to_owned(),
                "dkim-2024".to_owned(),
                key.clone(),
                Some(dns.clone()),
            ),
            (
                "example.org".to_owned(),
                "mail".to_owned(),
                org.clone(),
                Some(org.with_extension("txt")),
            ),
        ]
    );
    assert_errors(
        &a,
        &[
            "KeyTable: line 3: key file ",
            "KeyTable: line 4: /root/mail.private: not under /etc/opendkim",
            "KeyTable: line 5: \"bad!.example\": character '!'",
            "ed25519-mail-example.com.private.txt: key file ",
            "rsa-2048-mail-example.org.private.txt: key file ",
        ],
    );
    let e = errors(&a);
    assert!(
        e[0].ends_with("opendkim/keys/example.net/mail.private: not found"),
        "{}",
        e[0]
    );
    assert!(e[3].contains("Rspamd's raw base64 form"), "{}", e[3]);
    assert!(e[4].contains("symbolic link"), "{}", e[4]);

    // Without a KeyTable, the keys/DOMAIN directories are read; one that
    // is a link is refused, not followed.
    std::fs::remove_file(od.join("KeyTable")).unwrap();
    std::fs::remove_file(rd.join("rsa-2048-mail-example.org.private.txt")).unwrap();
    std::os::unix::fs::symlink(od.join("keys/example.org"), od.join("keys/example.info")).unwrap();
    let a = adopt::dms(&config);
    assert_eq!(found(&a).len(), 3, "{:#?}", found(&a));
    assert_errors(
        &a,
        &[
            "opendkim/keys: example.info: a symbolic link: refused",
            "ed25519-mail-example.com.private.txt: key file ",
        ],
    );
}

#[test]
fn an_rspamd_dkim_signing_conf_yields_its_keys_in_each_documented_form() {
    if !require_programs(
        "an_rspamd_dkim_signing_conf_yields_its_keys_in_each_documented_form",
        &[RSPAMADM],
    ) {
        return;
    }
    let t = tmp();
    let dir = t.path().join("var/lib/rspamd/dkim");
    std::fs::create_dir_all(&dir).unwrap();
    let k = |domain: &str, selector: &str| {
        let key = dir.join(format!("{domain}.{selector}.key"));
        rspamd_keygen(&key, &key.with_extension("pub"), domain, selector);
        key
    };
    let com = k("example.com", "dkim");
    let org = k("example.org", "dkim");
    // Same selector, other name: not this template's.
    k("example.org", "other");
    let conf = t.path().join("dkim_signing.conf");
    // The documentation's default: one path template for every domain.
    std::fs::write(
        &conf,
        format!(
            "# If false, messages with empty envelope from are not signed\n\
             allow_envfrom_empty = true;\n\
             sign_authenticated = true;\n\
             path = \"{}/$domain.$selector.key\";\n\
             selector = \"dkim\";\n",
            dir.display()
        ),
    )
    .unwrap();
    let a = adopt::rspamd(&conf);
    let plain = |v: Vec<(String, String, PathBuf, Option<PathBuf>)>| {
        v.into_iter()
            .map(|(d, s, k, _)| (d, s, k))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        plain(found(&a)),
        vec![
            ("example.com".to_owned(), "dkim".to_owned(), com.clone()),
            ("example.org".to_owned(), "dkim".to_owned(), org.clone()),
        ]
    );
    assert_errors(&a, &[]);

    // docker-mailserver's and the documentation's domain blocks, with a
    // selectors list, a missing key and a bad domain.
    let net = k("example.net", "s1");
    let net2 = k("example.net", "s2");
    std::os::unix::fs::symlink(&com, dir.join("linked.key")).unwrap();
    std::fs::write(
        &conf,
        format!(
            "enabled = true;\nuse_esld = true;\ncheck_pubkey = true;\n\
             path = \"{d}/$domain.$selector.key\";\n\
             domain {{\n\
             \x20   example.com {{\n        path = \"{com}\";\n        selector = \"dkim\";\n    }}\n\
             \x20   example.org {{ selector = \"dkim\"; }}\n\
             \x20   example.net {{\n        selectors [\n\
             \x20         {{ path: \"{d}/example.net.s1.key\"; selector: \"s1\"; }},\n\
             \x20         {{ selector = \"s2\"; }}\n        ]\n    }}\n\
             \x20   gone.example {{ path = \"{d}/gone.key\"; selector = \"x\"; }}\n\
             \x20   \"bad!.example\" {{ selector = \"dkim\"; }}\n\
             \x20   linked.example {{ path = \"{d}/linked.key\"; selector = \"dkim\"; }}\n\
             }}\n",
            d = dir.display(),
            com = com.display(),
        ),
    )
    .unwrap();
    let a = adopt::rspamd(&conf);
    assert_eq!(
        plain(found(&a)),
        vec![
            ("example.com".to_owned(), "dkim".to_owned(), com.clone()),
            ("example.net".to_owned(), "s1".to_owned(), net),
            ("example.net".to_owned(), "s2".to_owned(), net2),
            ("example.org".to_owned(), "dkim".to_owned(), org),
        ]
    );
    assert_errors(
        &a,
        &[
            "dkim_signing.conf: line 17: domain gone.example: key file ",
            "dkim_signing.conf: line 18: domain bad!.example: \"bad!.example\"",
            "dkim_signing.conf: line 19: domain linked.example: key file ",
        ],
    );

    // An unclosed block is one error naming its line.
    std::fs::write(
        &conf,
        "domain {\n  example.com {\n    selector = \"dkim\";\n",
    )
    .unwrap();
    assert_errors(
        &adopt::rspamd(&conf),
        &["dkim_signing.conf: line 3: a `{` is not closed"],
    );
}
