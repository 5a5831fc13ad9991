//! `status` and `status --json`.

use mxkeys_testsupport as common;

use std::process::Command;

use common::*;
use serde_json::Value;
use time::Duration;

fn target_json<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["targets"]
        .as_array()
        .unwrap_or_else(|| panic!("no targets array in {v}"))
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no target {name} in {v}"))
}

fn sorted_lower(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_lowercase())
        .collect();
    out.sort();
    out
}

/// Every field of `installed`, for every key type.
#[test]
fn status_json_reports_installed_certificates() {
    let env = Env::new();
    let ca = Ca::new("status");
    let not_after = days(40) + Duration::hours(1);
    let cases = [
        ("postfix", KeyKind::P256, vec![HOST, "smtp.example.com"]),
        ("p384", KeyKind::P384, vec!["p384.example.com"]),
        ("rsa", KeyKind::Rsa2048, vec!["rsa.example.com"]),
        ("ed", KeyKind::Ed25519, vec!["ed.example.com"]),
    ];
    let mut entries = vec![];
    let mut targets = vec![];
    let mut leaves = vec![];
    for (name, kind, names) in &cases {
        let leaf = ca.issue(&LeafSpec::new(names).kind(*kind).not_after(not_after));
        entries.push(AcmeEntry::new(&leaf, names[0]));
        let t = if *name == "postfix" {
            // domains default to the hostname
            Target::new(&env, name)
        } else {
            Target::new(&env, name).domains(&[names[0]])
        };
        targets.push(t);
        leaves.push(leaf);
    }
    let acme = env.path("acme.json");
    write_json(&acme, &acme_v2(&[("le", Some(entries))]));
    let trefs: Vec<&Target> = targets.iter().collect();
    env.write_config(&[src_traefik(&acme)], &trefs);
    env.sync().ok();

    let (r, v) = env.status_json();
    r.ok();
    assert_eq!(v["targets"].as_array().unwrap().len(), cases.len(), "{v}");
    for (((name, kind, names), t), leaf) in cases.iter().zip(&targets).zip(&leaves) {
        let tj = target_json(&v, name);
        let want_domains: Vec<String> = t.domains.clone().unwrap_or_else(|| vec![HOST.to_string()]);
        assert_eq!(sorted_lower(&tj["domains"]), want_domains, "{tj}");
        let inst = &tj["installed"];
        assert!(inst.is_object(), "installed missing for {name}: {tj}");
        let mut want_sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want_sans.sort();
        assert_eq!(sorted_lower(&inst["sans"]), want_sans, "{tj}");
        assert_eq!(inst["key_type"], kind.status_name(), "{tj}");
        assert_eq!(inst["not_after"], rfc3339_z(not_after), "{tj}");
        let dl = inst["days_left"]
            .as_i64()
            .unwrap_or_else(|| panic!("days_left: {tj}"));
        assert!((40..=41).contains(&dl), "days_left {dl} for 40d+1h: {tj}");
        assert_eq!(inst["sha256"], leaf.fp(), "{tj}");
        // mxkeys installed it from a known source, so it has a label.
        assert!(
            inst["source"].as_str().is_some_and(|s| !s.is_empty()),
            "source must be a label: {tj}"
        );
    }
    assert!(!r.stdout.contains("PRIVATE KEY"));
}

/// `installed` is null when a target has no readable certificate.
#[test]
fn status_json_installed_null() {
    let env = Env::new();
    let ca = Ca::new("status-null");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let src = files_source(&env.path("src"), &leaf);
    let t = Target::new(&env, "postfix");
    let empty = Target::new(&env, "never").domains(&["never.example.com"]);
    let junk = Target::new(&env, "junk").domains(&["junk.example.com"]);
    junk.preseed("not a certificate");
    env.write_config(&[src], &[&t, &empty, &junk]);
    let (r, v) = env.status_json();
    assert_ne!(r.code, 2, "{}", r.describe());
    for name in ["postfix", "never", "junk"] {
        let tj = target_json(&v, name);
        assert!(tj["installed"].is_null(), "{name}: {tj}");
    }
    let junk_domains = sorted_lower(&target_json(&v, "junk")["domains"]);
    assert_eq!(junk_domains, vec!["junk.example.com"]);
    // Why, naming the file that is not there.
    let never = empty.fullchain.as_ref().unwrap();
    assert_eq!(
        target_json(&v, "never")["problem"],
        format!("{}: not found", never.display()),
        "{v}"
    );
    // status writes nothing either.
    assert!(!t.fullchain.as_ref().unwrap().exists());
}

/// Plain `status` is human text naming targets and domains, never showing
/// private key material; `MXKEYS_CONFIG` works as the config path.
#[test]
fn status_plain_text_has_no_key_material() {
    let env = Env::new();
    let ca = Ca::new("status-plain");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::Rsa2048));
    let cert = env.path("src/fullchain.pem");
    let key = env.path("src/privkey.pem");
    write(&cert, leaf.fullchain_pem());
    write(&key, leaf.key_pem());
    let t = Target::new(&env, "postfix").all_outputs();
    env.write_config(&[src_files(&cert, &key, None)], &[&t]);
    env.sync().ok();

    let mut c = Command::new(bin());
    c.arg("status")
        .env("MXKEYS_CONFIG", &env.config)
        .current_dir(&env.root);
    let r = Run::from_output(
        "MXKEYS_CONFIG=... mxkeys status".into(),
        run_with_timeout(c),
    );
    r.ok();
    assert!(r.stdout.contains("postfix"), "{}", r.describe());
    assert!(r.stdout.contains(HOST), "{}", r.describe());
    let fp = leaf.fp();
    let fp_colons = fp
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    let lower = r.stdout.to_lowercase();
    assert!(
        lower.contains(&fp) || lower.contains(&fp_colons),
        "status lacks the fingerprint\n{}",
        r.describe()
    );
    let date = rfc3339_z(leaf.not_after)[..10].to_string();
    assert!(
        r.stdout.contains(&date),
        "status lacks notAfter {date}\n{}",
        r.describe()
    );
    assert!(
        r.stdout.contains("rsa"),
        "status lacks the key type\n{}",
        r.describe()
    );
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!all.contains("PRIVATE KEY"), "{}", r.describe());
    let installed_key = std::fs::read_to_string(t.key.as_ref().unwrap()).unwrap();
    for body in [leaf.key_pem(), installed_key] {
        for l in body
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 24)
        {
            assert!(
                !all.contains(l) && !all.contains(&l[..24]),
                "status printed key material\n{}",
                r.describe()
            );
        }
    }
    let (rj, _) = env.status_json();
    for l in leaf
        .key_pem()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 24)
    {
        assert!(!rj.stdout.contains(l), "status --json printed key material");
    }
}
