//! Every source format yields the expected certificate (checked by fingerprint).

use mxkeys_testsupport as common;

use std::fs;
use std::process::Command;

use common::*;

// ---------------------------------------------------------------------------
// Traefik acme.json
// ---------------------------------------------------------------------------

/// v2: several resolvers, an expired duplicate, an older duplicate and an
/// entry for other names; the newest valid one wins and nothing is an error.
#[test]
fn traefik_v2_picks_newest_valid_across_resolvers() {
    let env = Env::new();
    let ca = Ca::new("v2");
    let stale = ca.issue(&LeafSpec::new(&[HOST]).expired());
    let older = ca.issue(&LeafSpec::new(&[HOST]).days(20));
    let good = ca.issue(&LeafSpec::new(&[HOST, "smtp.example.com"]).days(70));
    let www = ca.issue(&LeafSpec::new(&["www.example.com"]).days(85));
    let acme = env.path("traefik/acme.json");
    write_json(
        &acme,
        &acme_v2(&[
            (
                "le",
                Some(vec![
                    AcmeEntry::new(&stale, HOST),
                    AcmeEntry::new(&www, "www.example.com"),
                    AcmeEntry::new(&good, HOST).sans(&["smtp.example.com"]),
                ]),
            ),
            ("other", Some(vec![AcmeEntry::new(&older, HOST)])),
        ]),
    );
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    t.assert_installed(&good);
}

/// v3 layout (entries carry "Store") with the `resolvers` filter.
#[test]
fn traefik_v3_resolvers_filter() {
    let env = Env::new();
    let ca = Ca::new("v3");
    let from_le = ca.issue(&LeafSpec::new(&[HOST]).days(30));
    let from_staging = ca.issue(&LeafSpec::new(&[HOST]).days(80));
    let acme = env.path("traefik/acme.json");
    write_json(
        &acme,
        &acme_v3(&[
            ("le", Some(vec![AcmeEntry::new(&from_le, HOST)])),
            ("staging", Some(vec![AcmeEntry::new(&from_staging, HOST)])),
        ]),
    );
    let t = Target::new(&env, "postfix");

    env.write_config(&[src_traefik_resolvers(&acme, &["le"])], &[&t]);
    env.sync().ok();
    t.assert_installed(&from_le);

    // Without the filter the later notAfter from the other resolver wins.
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    t.assert_installed(&from_staging);
}

/// v1 layout (top-level Account/Certificates with capitalised fields).
#[test]
fn traefik_v1() {
    let env = Env::new();
    let ca = Ca::new("v1");
    let stale = ca.issue(&LeafSpec::new(&[HOST]).expired());
    let good = ca.issue(&LeafSpec::new(&[HOST]).days(45));
    let other = ca.issue(&LeafSpec::new(&[OTHER]).days(50));
    let acme = env.path("traefik/acme.json");
    write_json(
        &acme,
        &acme_v1(&[
            AcmeEntry::new(&other, OTHER),
            AcmeEntry::new(&good, HOST),
            AcmeEntry::new(&stale, HOST),
        ]),
    );
    let t = Target::new(&env, "postfix");
    let t2 = Target::new(&env, "other").domains(&[OTHER]);
    env.write_config(&[src_traefik(&acme)], &[&t, &t2]);
    env.sync().ok();
    t.assert_installed(&good);
    t2.assert_installed(&other);
}

/// Keys in PKCS#8, SEC1 (`EC PRIVATE KEY`) and PKCS#1 (`RSA PRIVATE KEY`)
/// form, for P-256, P-384, RSA-2048 and Ed25519 leaves.
#[test]
fn traefik_all_key_encodings() {
    let env = Env::new();
    let ca = Ca::new("keys");
    let cases = [
        ("p256-pkcs8", KeyKind::P256, KeyFormat::Pkcs8),
        ("p256-sec1", KeyKind::P256, KeyFormat::Sec1),
        ("p384-sec1", KeyKind::P384, KeyFormat::Sec1),
        ("p384-pkcs8", KeyKind::P384, KeyFormat::Pkcs8),
        ("rsa-pkcs1", KeyKind::Rsa2048, KeyFormat::Pkcs1),
        ("rsa-pkcs8", KeyKind::Rsa2048, KeyFormat::Pkcs8),
        ("ed25519", KeyKind::Ed25519, KeyFormat::Pkcs8),
    ];
    let mut entries = vec![];
    let mut targets = vec![];
    let mut leaves = vec![];
    for (name, kind, fmt) in cases {
        let domain = format!("{name}.example.com");
        let leaf = ca.issue(&LeafSpec::new(&[&domain]).kind(kind));
        let pem = leaf.key_pem_as(fmt);
        let label = match fmt {
            KeyFormat::Pkcs8 => "PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
        };
        assert!(pem.starts_with(&format!("-----BEGIN {label}-----")));
        entries.push(AcmeEntry::with_format(&leaf, &domain, fmt));
        targets.push(Target::new(&env, name).domains(&[&domain]));
        leaves.push(leaf);
    }
    let acme = env.path("traefik/acme.json");
    write_json(&acme, &acme_v2(&[("le", Some(entries))]));
    let trefs: Vec<&Target> = targets.iter().collect();
    env.write_config(&[src_traefik(&acme)], &trefs);
    env.sync().ok();
    for (t, leaf) in targets.iter().zip(&leaves) {
        t.assert_installed(leaf);
    }
}

/// `main`/`sans` are never trusted: a wrong main, a main that is not a
/// hostname and a missing domain object all resolve by the certificate itself.
#[test]
fn traefik_main_and_sans_are_not_trusted() {
    let env = Env::new();
    let ca = Ca::new("liar");
    // Claims to be mail.example.com, really www.example.com (and the latest).
    let liar = ca.issue(&LeafSpec::new(&["www.example.com"]).days(90));
    // Really mail.example.com, main is garbage.
    let real = ca.issue(&LeafSpec::new(&[HOST]).days(50));
    // Really other.example.com, no domain at all.
    let nodomain = ca.issue(&LeafSpec::new(&[OTHER]).days(40));
    let mut e_nodomain = AcmeEntry::new(&nodomain, "x");
    e_nodomain.main = None;
    let acme = env.path("traefik/acme.json");
    write_json(
        &acme,
        &acme_v2(&[(
            "le",
            Some(vec![
                AcmeEntry::new(&liar, HOST).sans(&[HOST, OTHER]),
                AcmeEntry::new(&real, "not a hostname!").sans(&["*.*", ""]),
                e_nodomain,
            ]),
        )]),
    );
    let t = Target::new(&env, "postfix");
    let t2 = Target::new(&env, "other").domains(&[OTHER]);
    let t3 = Target::new(&env, "www").domains(&["www.example.com"]);
    env.write_config(&[src_traefik(&acme)], &[&t, &t2, &t3]);
    env.sync().ok();
    t.assert_installed(&real);
    t2.assert_installed(&nodomain);
    t3.assert_installed(&liar);
}

/// `Certificates: null`, `Account: null` and missing `sans` are normal.
#[test]
fn traefik_null_certificates_and_missing_sans_are_fine() {
    let env = Env::new();
    let ca = Ca::new("null");
    let good = ca.issue(&LeafSpec::new(&[HOST]));
    let mut v = acme_v2(&[
        ("empty", None),
        ("le", Some(vec![AcmeEntry::new(&good, HOST)])),
    ]);
    v["empty"]["Account"] = serde_json::Value::Null;
    assert!(v["le"]["Certificates"][0]["domain"].get("sans").is_none());
    let acme = env.path("traefik/acme.json");
    write_json(&acme, &v);
    // A file holding only resolvers without certificates.
    let acme2 = env.path("traefik2/acme.json");
    write_json(&acme2, &acme_v2(&[("a", None), ("b", Some(vec![]))]));
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_traefik(&acme2), src_traefik(&acme)], &[&t]);
    env.sync().ok();
    t.assert_installed(&good);
}

// ---------------------------------------------------------------------------
// Traefik acme.json: the streaming reader against the whole-file reader
// ---------------------------------------------------------------------------

/// A 2,000-entry acme.json over two resolvers, read through windows of 1,
/// 7 and 4096 bytes and the default: every window gives the harvest the
/// whole-file reader gives (the same 2,000 candidates in the same order,
/// no error), and selection picks the same entries: the one latest
/// certificate deep in the second resolver, and for RSA the first of the
/// equal RSA entries (entry order breaks the tie, so a reordering shows).
#[test]
fn traefik_2000_entries_read_through_any_window_match_the_whole_file_reader() {
    use mxkeys::source::Ingest;
    let env = Env::new();
    let ca = Ca::new("window");
    let both = [HOST, "smtp.example.com"];
    let p256 = ca.issue(&LeafSpec::new(&both).days(30));
    let rsa = ca.issue(&LeafSpec::new(&both).kind(KeyKind::Rsa2048).days(40));
    let expired = ca.issue(&LeafSpec::new(&both).expired());
    let best = ca.issue(&LeafSpec::new(&both).days(80));
    let entries = |resolver: usize| -> Vec<AcmeEntry> {
        (0..1000)
            .map(|i| match (resolver, i) {
                (1, 733) => AcmeEntry::new(&best, "best.example.com"),
                (_, i) if i % 3 == 0 => AcmeEntry::new(&expired, HOST),
                (_, i) if i % 3 == 1 => AcmeEntry::new(&p256, HOST),
                _ => AcmeEntry::new(&rsa, HOST).sans(&["smtp.example.com"]),
            })
            .collect()
    };
    let acme = env.path("big/acme.json");
    write_json(
        &acme,
        &acme_v3(&[("le", Some(entries(0))), ("other", Some(entries(1)))]),
    );
    let config = crate::properties::agree_config(&env.path("big"), &acme, None);
    let now = now().unix_timestamp();
    let whole = crate::properties::ingest_view(&config, Ingest::Whole, now);
    assert_eq!(whole.errors(), [] as [String; 0]);
    assert_eq!(whole.candidates(), 2000);
    assert_eq!(
        whole.chosen_entries(),
        [
            Some(r#"resolver "other" #734 (main "best.example.com")"#.to_owned()),
            Some(r#"resolver "le" #3 (main "mail.example.com")"#.to_owned()),
            None
        ]
    );
    let windows = [1, 7, 4096].map(|window| Ingest::Streaming { window });
    for ingest in windows.into_iter().chain([Ingest::default()]) {
        let streaming = crate::properties::ingest_view(&config, ingest, now);
        if let Some(d) = crate::properties::first_difference(&whole, &streaming) {
            panic!("{ingest:?}: {d}");
        }
    }
}

// ---------------------------------------------------------------------------
// Certbot
// ---------------------------------------------------------------------------

fn certbot_env(form: &str) {
    let env = Env::new();
    let ca = Ca::new("certbot");
    let good = ca.issue(&LeafSpec::new(&[HOST, "smtp.example.com"]).days(70));
    let cb = Certbot::new(&env.path("letsencrypt"));
    cb.add("mailcert", &good);
    // A stale lineage with the same name and an unrelated one.
    cb.add(
        "mailcert-0001",
        &ca.issue(&LeafSpec::new(&[HOST]).expired()),
    );
    cb.add(
        "www",
        &ca.issue(&LeafSpec::new(&["www.example.com"]).days(85)),
    );
    // Sanity: the live files are relative symlinks.
    let link = fs::read_link(cb.live_name("mailcert").join("fullchain.pem")).unwrap();
    assert!(link.is_relative());
    let path = match form {
        "config" => cb.root.clone(),
        "live" => cb.live(),
        "name" => cb.live_name("mailcert"),
        _ => unreachable!(),
    };
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_certbot(&path)], &[&t]);
    env.sync().ok();
    t.assert_installed(&good);
}

#[test]
fn certbot_config_dir() {
    certbot_env("config");
}

#[test]
fn certbot_live_dir() {
    certbot_env("live");
}

#[test]
fn certbot_live_name_dir() {
    certbot_env("name");
}

/// After a renewal (archive N+1 and re-pointed symlinks) the new one is used.
#[test]
fn certbot_renewal_uses_newest_archive() {
    let env = Env::new();
    let ca = Ca::new("renew");
    let first = ca.issue(&LeafSpec::new(&[HOST]).days(20));
    let cb = Certbot::new(&env.path("letsencrypt"));
    assert_eq!(cb.add(HOST, &first), 1);
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_certbot(&cb.root)], &[&t]);
    env.sync().ok();
    t.assert_installed(&first);

    let second = ca.issue(&LeafSpec::new(&[HOST]).days(89));
    assert_eq!(cb.add(HOST, &second), 2);
    assert!(
        env.path(&format!("letsencrypt/archive/{HOST}/fullchain1.pem"))
            .exists()
    );
    env.sync().ok();
    t.assert_installed(&second);
}

// ---------------------------------------------------------------------------
// lego
// ---------------------------------------------------------------------------

fn lego_case(use_certificates_dir: bool) {
    let env = Env::new();
    let ca = Ca::new("lego");
    let exact = ca.issue(&LeafSpec::new(&[HOST]).days(70));
    let wild = ca.issue(&LeafSpec::new(&["*.example.com", "example.com"]).days(40));
    let lego = env.path("lego");
    lego_add(&lego, HOST, &exact);
    lego_add(&lego, "*.example.com", &wild);
    assert!(lego.join("certificates/_.example.com.crt").exists());
    let path = if use_certificates_dir {
        lego.join("certificates")
    } else {
        lego.clone()
    };
    let t = Target::new(&env, "postfix");
    let t2 = Target::new(&env, "imap").domains(&["imap.example.com", "example.com"]);
    env.write_config(&[src_lego(&path)], &[&t, &t2]);
    env.sync().ok();
    t.assert_installed(&exact);
    t2.assert_installed(&wild);
}

#[test]
fn lego_path_dir() {
    lego_case(false);
}

#[test]
fn lego_certificates_dir() {
    lego_case(true);
}

/// Only the wildcard (`_.example.com.*`) exists; it serves mail.example.com.
#[test]
fn lego_wildcard_only() {
    let env = Env::new();
    let ca = Ca::new("legow");
    let wild = ca.issue(&LeafSpec::new(&["*.example.com"]).kind(KeyKind::Rsa2048));
    let lego = env.path("lego");
    lego_add(&lego, "*.example.com", &wild);
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_lego(&lego)], &[&t]);
    env.sync().ok();
    t.assert_installed(&wild);
}

// ---------------------------------------------------------------------------
// Plain files
// ---------------------------------------------------------------------------

/// `cert` holds only the leaf and `chain` the intermediates.
#[test]
fn files_with_separate_chain() {
    let env = Env::new();
    let ca = Ca::new("files");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::P384));
    let cert = env.path("certs/leaf.crt");
    let key = env.path("certs/leaf.key");
    let chain = env.path("certs/chain.crt");
    write(&cert, leaf.cert_pem());
    write(&key, leaf.key_pem_as(KeyFormat::Sec1));
    write(&chain, leaf.chain_pem());
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_files(&cert, &key, Some(&chain))], &[&t]);
    env.sync().ok();
    t.assert_installed(&leaf);
}

/// `cert` is a full chain, no `chain` key.
#[test]
fn files_fullchain_without_chain_key() {
    let env = Env::new();
    let ca = Ca::new("files2");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::Rsa2048));
    let cert = env.path("certs/fullchain.pem");
    let key = env.path("certs/privkey.pem");
    write(&cert, leaf.fullchain_pem());
    write(&key, leaf.key_pem_as(KeyFormat::Pkcs1));
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_files(&cert, &key, None)], &[&t]);
    env.sync().ok();
    t.assert_installed(&leaf);
}

/// Relative paths in the config resolve against the config file's
/// directory, not the working directory.
#[test]
fn relative_paths_resolve_against_config_dir() {
    let env = Env::new();
    let ca = Ca::new("rel");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    write_json(
        &env.path("conf/traefik/acme.json"),
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&leaf, HOST)]))]),
    );
    fs::create_dir_all(env.path("conf/out")).unwrap();
    let config = env.path("conf/mxkeys.toml");
    write(
        &config,
        format!(
            "hostname = {}\nstate_dir = \"state\"\n\n[[source]]\ntype = \"traefik\"\n\
             path = \"traefik/acme.json\"\n\n[[target]]\nname = \"postfix\"\n\
             fullchain = \"out/fullchain.pem\"\nkey = \"out/privkey.pem\"\n",
            q(HOST)
        ),
    );
    fs::create_dir_all(env.path("conf/state")).unwrap();
    let mut c = Command::new(bin());
    c.arg("--config")
        .arg(&config)
        .arg("sync")
        .env_remove("MXKEYS_CONFIG")
        .current_dir("/");
    let r = Run::from_output("mxkeys sync (cwd /)".into(), run_with_timeout(c));
    r.ok();
    let certs = read_certs(&env.path("conf/out/fullchain.pem"));
    assert_eq!(sha256_hex(&certs[0]), leaf.fp());
    assert!(env.path("conf/out/privkey.pem").exists());
}
