//! Candidate validity and ordering, and the self-signed fallback.

use mxkeys_testsupport as common;

use common::*;

fn acme_with(env: &Env, file: &str, entries: Vec<AcmeEntry>) -> std::path::PathBuf {
    let p = env.path(file);
    write_json(&p, &acme_v2(&[("le", Some(entries))]));
    p
}

#[test]
fn latest_not_after_wins() {
    let env = Env::new();
    let ca = Ca::new("order");
    let a = ca.issue(&LeafSpec::new(&[HOST]).days(30));
    let b = ca.issue(&LeafSpec::new(&[HOST]).days(80));
    let c = ca.issue(&LeafSpec::new(&[HOST]).days(60));
    let acme = acme_with(
        &env,
        "acme.json",
        vec![
            AcmeEntry::new(&a, HOST),
            AcmeEntry::new(&b, HOST),
            AcmeEntry::new(&c, HOST),
        ],
    );
    // A later source with an even later certificate still wins over order.
    let d = ca.issue(&LeafSpec::new(&[HOST]).days(85));
    let files = files_source(&env.path("files"), &d);
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    t.assert_installed(&b);
    env.write_config(&[src_traefik(&acme), files], &[&t]);
    env.sync().ok();
    t.assert_installed(&d);
}

#[test]
fn exact_name_beats_wildcard_on_tie() {
    let env = Env::new();
    let ca = Ca::new("tie");
    let t_after = days(50);
    let wild = ca.issue(&LeafSpec::new(&["*.example.com"]).not_after(t_after));
    let exact = ca.issue(&LeafSpec::new(&[HOST]).not_after(t_after));
    let acme = acme_with(
        &env,
        "acme.json",
        vec![
            AcmeEntry::new(&wild, "*.example.com"),
            AcmeEntry::new(&exact, HOST),
        ],
    );
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    t.assert_installed(&exact);

    // A wildcard that lives longer still wins over the exact name.
    let env2 = Env::new();
    let wild2 = ca.issue(&LeafSpec::new(&["*.example.com"]).days(70));
    let acme2 = acme_with(
        &env2,
        "acme.json",
        vec![
            AcmeEntry::new(&exact, HOST),
            AcmeEntry::new(&wild2, "*.example.com"),
        ],
    );
    let t2 = Target::new(&env2, "postfix");
    env2.write_config(&[src_traefik(&acme2)], &[&t2]);
    env2.sync().ok();
    t2.assert_installed(&wild2);
}

#[test]
fn source_order_then_entry_order_break_ties() {
    let env = Env::new();
    let ca = Ca::new("srcorder");
    let t_after = days(50);
    let x = ca.issue(&LeafSpec::new(&[HOST]).not_after(t_after));
    let y = ca.issue(&LeafSpec::new(&[HOST]).not_after(t_after));
    let sx = files_source(&env.path("x"), &x);
    let sy = files_source(&env.path("y"), &y);
    let t = Target::new(&env, "postfix");
    env.write_config(&[sx.clone(), sy.clone()], &[&t]);
    env.sync().ok();
    t.assert_installed(&x);
    env.write_config(&[sy, sx], &[&t]);
    env.sync().ok();
    t.assert_installed(&y);

    // Entry order within one source.
    let env2 = Env::new();
    let acme = acme_with(
        &env2,
        "acme.json",
        vec![AcmeEntry::new(&y, HOST), AcmeEntry::new(&x, HOST)],
    );
    let t2 = Target::new(&env2, "postfix");
    env2.write_config(&[src_traefik(&acme)], &[&t2]);
    env2.sync().ok();
    t2.assert_installed(&y);
}

/// `*.example.com` covers exactly one label.
#[test]
fn wildcard_covers_exactly_one_label() {
    let env = Env::new();
    let ca = Ca::new("wild");
    let wild = ca.issue(&LeafSpec::new(&["*.example.com"]));
    let acme = acme_with(
        &env,
        "acme.json",
        vec![AcmeEntry::new(&wild, "*.example.com")],
    );
    let mail = Target::new(&env, "mail");
    let apex = Target::new(&env, "apex").domains(&["example.com"]);
    let deep = Target::new(&env, "deep").domains(&["a.b.example.com"]);
    apex.preseed("old apex");
    deep.preseed("old deep");
    let apex_before = apex.contents();
    let deep_before = deep.contents();
    env.write_config(&[src_traefik(&acme)], &[&mail, &apex, &deep]);
    let r = env.sync();
    r.assert_code(1);
    r.assert_err_line(&["does not cover"]);
    mail.assert_installed(&wild);
    assert_eq!(
        apex.contents(),
        apex_before,
        "apex files must stay as they are"
    );
    assert_eq!(
        deep.contents(),
        deep_before,
        "deep files must stay as they are"
    );
}

/// Names compare case-insensitively and ignore a trailing dot.
#[test]
fn names_case_insensitive_and_trailing_dot() {
    let env = Env::new();
    let ca = Ca::new("case");
    let a = ca.issue(&LeafSpec::new(&[HOST]));
    let b = ca.issue(&LeafSpec::new(&["Other.Example.COM"]));
    let sa = files_source(&env.path("a"), &a);
    let sb = files_source(&env.path("b"), &b);
    let t = Target::new(&env, "postfix").domains(&["MAIL.Example.com."]);
    let t2 = Target::new(&env, "other").domains(&["other.example.com"]);
    env.write_config(&[sa, sb], &[&t, &t2]);
    env.sync().ok();
    t.assert_installed(&a);
    t2.assert_installed(&b);
}

/// A target with several domains needs a certificate covering all of them.
#[test]
fn every_target_domain_must_be_covered() {
    let env = Env::new();
    let ca = Ca::new("multi");
    let only_mail = ca.issue(&LeafSpec::new(&[HOST]).days(89));
    let both = ca.issue(&LeafSpec::new(&["smtp.example.com", HOST]).days(30));
    let acme = acme_with(
        &env,
        "acme.json",
        vec![
            AcmeEntry::new(&only_mail, HOST),
            AcmeEntry::new(&both, HOST),
        ],
    );
    let t = Target::new(&env, "postfix").domains(&[HOST, "smtp.example.com"]);
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    t.assert_installed(&both);
}

/// The subject CN counts only when the certificate has no SAN.
#[test]
fn common_name_only_without_san() {
    let env = Env::new();
    let ca = Ca::new("cn");
    let cn_only = ca.issue(&LeafSpec::cn_only(HOST).days(30));
    let san_other = ca.issue(&LeafSpec::new(&["www.example.com"]).cn(HOST).days(80));
    let acme = acme_with(
        &env,
        "acme.json",
        vec![
            AcmeEntry::new(&san_other, HOST),
            AcmeEntry::new(&cn_only, HOST),
        ],
    );
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_traefik(&acme)], &[&t]);
    env.sync().ok();
    t.assert_installed(&cn_only);
}

/// key_type = "rsa" / "ecdsa" / "any".
#[test]
fn key_type_separates_rsa_and_ecdsa() {
    let env = Env::new();
    let ca = Ca::new("kt");
    let ec = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::P384).days(80));
    let rsa = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::Rsa2048).days(50));
    let ed = ca.issue(&LeafSpec::new(&[HOST]).kind(KeyKind::Ed25519).days(85));
    let acme = acme_with(
        &env,
        "acme.json",
        vec![
            AcmeEntry::new(&rsa, HOST),
            AcmeEntry::new(&ed, HOST),
            AcmeEntry::new(&ec, HOST),
        ],
    );
    let t_rsa = Target::new(&env, "rsa").key_type("rsa");
    let t_ec = Target::new(&env, "ec").key_type("ecdsa");
    let t_any = Target::new(&env, "any").key_type("any");
    let t_default = Target::new(&env, "default");
    env.write_config(&[src_traefik(&acme)], &[&t_rsa, &t_ec, &t_any, &t_default]);
    env.sync().ok();
    t_rsa.assert_installed(&rsa);
    t_ec.assert_installed(&ec);
    t_any.assert_installed(&ed);
    t_default.assert_installed(&ed);
}

/// A target wanting RSA is not served by an ECDSA certificate.
#[test]
fn key_type_without_matching_candidate_fails() {
    let env = Env::new();
    let ca = Ca::new("kt2");
    let ec = ca.issue(&LeafSpec::new(&[HOST]));
    let acme = acme_with(&env, "acme.json", vec![AcmeEntry::new(&ec, HOST)]);
    let t_rsa = Target::new(&env, "rsa").key_type("rsa");
    let t_ec = Target::new(&env, "ec").key_type("ecdsa");
    t_rsa.preseed("old rsa");
    let before = t_rsa.contents();
    env.write_config(&[src_traefik(&acme)], &[&t_rsa, &t_ec]);
    env.check().assert_code(1);
    env.sync().assert_code(1);
    assert_eq!(t_rsa.contents(), before);
    t_ec.assert_installed(&ec);
}

/// The intermediates following the leaf must really have issued it: a chain
/// from another CA, or from a CA with the same names but another key, is
/// refused even though the leaf lives longer.
#[test]
fn chain_must_really_issue_the_leaf() {
    let env = Env::new();
    let ca = Ca::with_names("Test Root same", "Test Intermediate same");
    let forger = Ca::with_names("Test Root same", "Test Intermediate same");
    let stranger = Ca::new("stranger");
    let good = ca.issue(&LeafSpec::new(&[HOST]).days(30));
    // Signed by `forger`, presented with `ca`'s intermediate (same names).
    let forged = forger
        .issue(&LeafSpec::new(&[HOST]).days(80))
        .with_chain(vec![ca.inter_der.clone()]);
    // Signed by `ca`, presented with `stranger`'s intermediate.
    let wrong_chain = ca
        .issue(&LeafSpec::new(&[HOST]).days(85))
        .with_chain(vec![stranger.inter_der.clone()]);
    let acme = acme_with(
        &env,
        "acme.json",
        vec![
            AcmeEntry::new(&forged, HOST),
            AcmeEntry::new(&wrong_chain, HOST),
            AcmeEntry::new(&good, HOST),
        ],
    );
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_traefik(&acme)], &[&t]);
    // Whether a broken chain is a refused candidate (exit 0, the target is
    // served) or a malformed entry (exit 1) is left open by the contract.
    let r = env.sync();
    assert!(r.code == 0 || r.code == 1, "{}", r.describe());
    t.assert_installed(&good);
}

// ---------------------------------------------------------------------------
// Self-signed fallback
// ---------------------------------------------------------------------------

/// With nothing else valid, one ECDSA P-256 self-signed certificate covering
/// every target's domains is generated under state_dir and installed; a
/// second sync reuses it and writes nothing.
#[test]
fn self_signed_when_nothing_else_is_valid() {
    let env = Env::new();
    let ca = Ca::new("ss");
    let expired = ca.issue(&LeafSpec::new(&[HOST]).expired());
    let acme = acme_with(&env, "acme.json", vec![AcmeEntry::new(&expired, HOST)]);
    let t = Target::new(&env, "postfix");
    let t2 = Target::new(&env, "other").domains(&[OTHER, "imap.example.com"]);
    env.write_config(&[src_traefik(&acme), src_self_signed()], &[&t, &t2]);
    let r = env.sync();
    assert_ne!(r.code, 2, "{}", r.describe());
    for tg in [&t, &t2] {
        let leaf = tg.installed_leaf();
        let info = cert_info(&leaf);
        assert_eq!(
            info.issuer, info.subject,
            "target {} is not self-signed",
            tg.name
        );
        assert_eq!(info.key_type, "ecdsa-p256");
        let sans: Vec<String> = info.dns_sans.iter().map(|s| s.to_lowercase()).collect();
        for d in [HOST, OTHER, "imap.example.com"] {
            assert!(
                sans.contains(&d.to_string()),
                "self-signed SANs {sans:?} lack {d}"
            );
        }
        let key = read_pem(tg.key.as_ref().unwrap());
        assert_eq!(
            private_key_public_raw(&key[0].0, &key[0].1),
            leaf_public_key_raw(&leaf)
        );
    }
    assert_eq!(t.installed_leaf(), t2.installed_leaf());
    assert!(
        !snapshot(&env.state).is_empty(),
        "nothing written under state_dir"
    );

    let ids: Vec<_> = t.outputs().iter().map(|p| file_id(p)).collect();
    let r2 = env.sync();
    assert_eq!(r2.code, r.code, "{}", r2.describe());
    let ids2: Vec<_> = t.outputs().iter().map(|p| file_id(p)).collect();
    assert_eq!(ids, ids2, "second sync rewrote the self-signed files");
}

/// Only self-signed plus a valid CA certificate: the CA one is used.
#[test]
fn self_signed_not_used_when_ca_certificate_valid() {
    let env = Env::new();
    let ca = Ca::new("ss2");
    let good = ca.issue(&LeafSpec::new(&[HOST]).days(10));
    let files = files_source(&env.path("files"), &good);
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_self_signed(), files], &[&t]);
    env.sync().ok();
    t.assert_installed(&good);
}

/// Only the self-signed source, for `postfix` (any key type, HOST) and
/// `legacy` (key_type = "rsa", OTHER), synced once.
fn self_signed_any_and_rsa(env: &Env) -> (Target, Target) {
    let t = Target::new(env, "postfix");
    let t_rsa = Target::new(env, "legacy").key_type("rsa").domains(&[OTHER]);
    env.write_config(&[src_self_signed()], &[&t, &t_rsa]);
    env.sync().ok();
    (t, t_rsa)
}

/// A target with key_type = "rsa" gets an RSA-2048 self-signed certificate.
#[test]
fn self_signed_rsa_for_rsa_target() {
    let env = Env::new();
    let (t, t_rsa) = self_signed_any_and_rsa(&env);
    let ec = cert_info(&t.installed_leaf());
    let rsa = cert_info(&t_rsa.installed_leaf());
    assert_eq!(ec.key_type, "ecdsa-p256");
    assert_eq!(rsa.key_type, "rsa-2048");
    assert_eq!(rsa.issuer, rsa.subject);
    for info in [&ec, &rsa] {
        let sans: Vec<String> = info.dns_sans.iter().map(|s| s.to_lowercase()).collect();
        assert!(sans.contains(&HOST.to_string()) && sans.contains(&OTHER.to_string()));
    }
}

/// Between the fallback's own certificates the order is fixed (ECDSA for a
/// target that takes any key type), whichever was made later: the RSA one
/// is often seconds newer (RSA keys take longer), or years when an RSA
/// target was added later.
#[test]
fn self_signed_ecdsa_for_any_target_even_when_rsa_is_newer() {
    let env = Env::new();
    let (t, t_rsa) = self_signed_any_and_rsa(&env);
    assert_eq!(cert_info(&t.installed_leaf()).key_type, "ecdsa-p256");
    // A stored RSA fallback that lives longer than the ECDSA one.
    let later = Ca::new("later").issue(
        &LeafSpec::new(&[HOST, OTHER])
            .kind(KeyKind::Rsa2048)
            .days(3000),
    );
    let dir = env.state.join("self-signed");
    write(&dir.join("rsa.crt"), later.fullchain_pem());
    write(&dir.join("rsa.key"), later.key_pem());
    env.sync().ok();
    assert_eq!(cert_info(&t.installed_leaf()).key_type, "ecdsa-p256");
    t_rsa.assert_installed(&later);
}

/// The self-signed fallback is replaced once a CA certificate shows up.
#[test]
fn self_signed_replaced_by_ca_certificate() {
    let env = Env::new();
    let ca = Ca::new("ss3");
    let t = Target::new(&env, "postfix");
    let acme = acme_with(&env, "acme.json", vec![]);
    env.write_config(&[src_traefik(&acme), src_self_signed()], &[&t]);
    env.sync().ok();
    let info = cert_info(&t.installed_leaf());
    assert_eq!(info.issuer, info.subject);

    let good = ca.issue(&LeafSpec::new(&[HOST]));
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&good, HOST)]))]),
    );
    env.sync().ok();
    t.assert_installed(&good);
}

/// A target holding a valid CA certificate is never downgraded to the
/// self-signed fallback, nor are its files removed.
#[test]
fn never_downgrade_to_self_signed() {
    let env = Env::new();
    let ca = Ca::new("ss4");
    let good = ca.issue(&LeafSpec::new(&[HOST]).days(40));
    let files = files_source(&env.path("files"), &good);
    let t = Target::new(&env, "postfix").all_outputs();
    env.write_config(&[files.clone(), src_self_signed()], &[&t]);
    env.sync().ok();
    t.assert_installed(&good);
    let ids: Vec<_> = t.outputs().iter().map(|p| file_id(p)).collect();

    // The CA source disappears from the config: keep what is installed.
    env.write_config(&[src_self_signed()], &[&t]);
    env.sync().ok();
    let ids2: Vec<_> = t.outputs().iter().map(|p| file_id(p)).collect();
    assert_eq!(ids, ids2, "installed CA certificate was replaced");

    // The source now offers only an expired certificate.
    let expired = ca.issue(&LeafSpec::new(&[HOST]).expired());
    let files = files_source(&env.path("files"), &expired);
    env.write_config(&[files, src_self_signed()], &[&t]);
    let r = env.sync();
    assert_ne!(r.code, 2, "{}", r.describe());
    let ids3: Vec<_> = t.outputs().iter().map(|p| file_id(p)).collect();
    assert_eq!(ids, ids3, "installed CA certificate was replaced");
}

/// A valid CA certificate put in place by someone else (no mxkeys state at
/// all) is not replaced by the self-signed fallback either.
#[test]
fn never_downgrade_foreign_installed_certificate() {
    let env = Env::new();
    let ca = Ca::new("foreign");
    let good = ca.issue(&LeafSpec::new(&[HOST]).days(40));
    let t = Target::new(&env, "postfix");
    write(t.fullchain.as_ref().unwrap(), good.fullchain_pem());
    write(t.key.as_ref().unwrap(), good.key_pem());
    set_mode(t.key.as_ref().unwrap(), 0o600);
    let before: Vec<_> = t.outputs().iter().map(|p| file_id(p)).collect();
    env.write_config(&[src_self_signed()], &[&t]);
    env.sync().ok();
    let after: Vec<_> = t.outputs().iter().map(|p| file_id(p)).collect();
    assert_eq!(
        before, after,
        "a valid installed CA certificate was replaced"
    );
}

/// `check` with only the self-signed source on a fresh state_dir generates
/// nothing into state_dir and writes no target files.
#[test]
fn check_does_not_generate_self_signed_state() {
    let env = Env::new();
    let t = Target::new(&env, "postfix");
    env.write_config(&[src_self_signed()], &[&t]);
    let r = env.check();
    assert_ne!(r.code, 2, "{}", r.describe());
    let state: Vec<_> = snapshot(&env.state)
        .into_iter()
        .filter(|(p, _)| !p.to_string_lossy().to_lowercase().contains("lock"))
        .collect();
    assert!(
        state.is_empty(),
        "check wrote {:?}",
        state.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    assert!(snapshot(&env.out).is_empty(), "check wrote target files");
}
