//! End to end: real Postfix and Dovecot serve what mxkeys installs, real
//! certbot output from a real ACME server (pebble) reaches them, and a
//! failed reload or a certificate the server refuses is rolled back.
//!
//! Every test starts its own servers on free loopback ports in its own
//! temporary directory. The served certificate is read with `openssl
//! s_client`, independently of mxkeys' own verification.

use mxkeys_testsupport as common;

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use common::servers::*;
use common::*;

/// Return from the test (or fail under CI=true) when a program is missing.
macro_rules! require {
    ($test:expr, $($needs:expr),+ $(,)?) => {
        if !require($test, &[$($needs),+]) {
            return;
        }
    };
}

/// A test environment whose root the servers' own users can enter.
pub(super) fn new_env() -> Env {
    let env = Env::new();
    // The servers' own users must reach their directories below it.
    open_dir(&env.root);
    env
}

fn ca_leaf(ca: &Ca, kind: KeyKind, days: i64) -> Leaf {
    ca.issue(&LeafSpec::new(&[MAIL]).kind(kind).days(days))
}

fn write_key_pair(fullchain: &Path, key: &Path, leaf: &Leaf) {
    write_atomic(fullchain, leaf.fullchain_pem(), 0o644);
    write_atomic(key, leaf.key_pem(), 0o600);
}

fn endpoints_of(pf: &Postfix, dv: &Dovecot) -> Vec<Endpoint> {
    vec![
        Endpoint::new("postfix smtp", &pf.addr(), Proto::Smtp, Some(MAIL)),
        Endpoint::new("dovecot imaps", &dv.imaps_addr(), Proto::Tls, Some(MAIL)),
        Endpoint::new("dovecot imap", &dv.imap_addr(), Proto::Imap, Some(MAIL)),
        Endpoint::new("dovecot pop3", &dv.pop3_addr(), Proto::Pop3, Some(MAIL)),
    ]
}

fn fp_or_err(r: &Result<Vec<u8>, String>) -> String {
    match r {
        Ok(d) => sha256_hex(d),
        Err(e) => e.clone(),
    }
}

// ---------------------------------------------------------------------------
// The harness itself: each server serves and reloads hand-made files.
// ---------------------------------------------------------------------------

#[test]
fn postfix_serves_and_reloads_dual_certificates_by_hand() {
    require!(
        "postfix_serves_and_reloads_dual_certificates_by_hand",
        POSTFIX,
        OPENSSL
    );
    let env = new_env();
    let ca = Ca::new("postfix-hand");
    let (e1, r1) = (
        ca_leaf(&ca, KeyKind::P256, 60),
        ca_leaf(&ca, KeyKind::Rsa2048, 60),
    );
    let ecdsa = env.path("tls/ecdsa.pem");
    let rsa = env.path("tls/rsa.pem");
    write_atomic(&ecdsa, combined_pem(&e1), 0o600);
    write_atomic(&rsa, combined_pem(&r1), 0o600);
    let pf = Postfix::start(&env.path("postfix"), &[&ecdsa, &rsa]);
    let addr = pf.addr();

    assert!(
        smtp_banner(&addr).unwrap().starts_with("220 "),
        "Postfix greets"
    );
    let reply = starttls_reply(&addr, Proto::Smtp).unwrap();
    assert!(reply.starts_with("220"), "STARTTLS accepted: {reply}");
    let ctx = || pf.log();
    for (offer, want) in [(Offer::EcdsaOnly, &e1), (Offer::RsaOnly, &r1)] {
        let got = served_leaf(&addr, Proto::Smtp, Some(MAIL), offer).unwrap();
        assert_eq!(sha256_hex(&got), want.fp(), "{offer:?} client\n{}", ctx());
    }
    let any = served_leaf(&addr, Proto::Smtp, None, Offer::Any).unwrap();
    assert!(
        any == e1.der || any == r1.der,
        "a client offering both gets one of them"
    );

    // New files, then one reload: the very next connections use them.
    let (e2, r2) = (
        ca_leaf(&ca, KeyKind::P256, 70),
        ca_leaf(&ca, KeyKind::Rsa2048, 70),
    );
    write_atomic(&ecdsa, combined_pem(&e2), 0o600);
    write_atomic(&rsa, combined_pem(&r2), 0o600);
    pf.reload();
    wait_served(
        &addr,
        Proto::Smtp,
        Some(MAIL),
        Offer::EcdsaOnly,
        &e2.der,
        ctx,
    );
    wait_served(&addr, Proto::Smtp, Some(MAIL), Offer::RsaOnly, &r2.der, ctx);
}

#[test]
fn dovecot_serves_and_reloads_dual_certificates_by_hand() {
    require!(
        "dovecot_serves_and_reloads_dual_certificates_by_hand",
        DOVECOT,
        OPENSSL
    );
    let env = new_env();
    let ca = Ca::new("dovecot-hand");
    let (e1, r1) = (
        ca_leaf(&ca, KeyKind::P256, 60),
        ca_leaf(&ca, KeyKind::Rsa2048, 60),
    );
    let p = |f: &str| env.path(&format!("tls/{f}"));
    write_key_pair(&p("ecdsa.pem"), &p("ecdsa.key"), &e1);
    write_key_pair(&p("rsa.pem"), &p("rsa.key"), &r1);
    let dv = Dovecot::start(
        &env.path("dovecot"),
        DovecotTls {
            cert: &p("ecdsa.pem"),
            key: &p("ecdsa.key"),
            alt: Some((&p("rsa.pem"), &p("rsa.key"))),
        },
    );
    let ctx = || dv.log();
    let eps = [
        (dv.imaps_addr(), Proto::Tls),
        (dv.imap_addr(), Proto::Imap),
        (dv.pop3_addr(), Proto::Pop3),
    ];
    for (addr, proto) in &eps {
        for (offer, want) in [(Offer::EcdsaOnly, &e1), (Offer::RsaOnly, &r1)] {
            let got = served_leaf(addr, *proto, Some(MAIL), offer).unwrap();
            assert_eq!(
                sha256_hex(&got),
                want.fp(),
                "{proto:?} {offer:?}\n{}",
                ctx()
            );
        }
    }
    let reply = starttls_reply(&dv.imap_addr(), Proto::Imap).unwrap();
    assert!(
        reply.starts_with("a1 OK"),
        "IMAP STARTTLS accepted: {reply}"
    );

    let (e2, r2) = (
        ca_leaf(&ca, KeyKind::P256, 70),
        ca_leaf(&ca, KeyKind::Rsa2048, 70),
    );
    write_key_pair(&p("ecdsa.pem"), &p("ecdsa.key"), &e2);
    write_key_pair(&p("rsa.pem"), &p("rsa.key"), &r2);
    dv.reload();
    for (addr, proto) in &eps {
        wait_served(addr, *proto, Some(MAIL), Offer::EcdsaOnly, &e2.der, ctx);
        wait_served(addr, *proto, Some(MAIL), Offer::RsaOnly, &r2.der, ctx);
    }
}

/// `tls_works` sees Postfix's "454 TLS not available" (a key that does not
/// match the certificate) as a failure.
#[test]
fn postfix_mismatched_key_answers_454_and_probe_fails() {
    require!(
        "postfix_mismatched_key_answers_454_and_probe_fails",
        POSTFIX,
        OPENSSL
    );
    let env = new_env();
    let ca = Ca::new("mismatch");
    let good = ca_leaf(&ca, KeyKind::P256, 60);
    let other = ca_leaf(&ca, KeyKind::P256, 60);
    let chain = env.path("tls/chain.pem");
    write_atomic(&chain, combined_pem(&good), 0o600);
    let pf = Postfix::start(&env.path("postfix"), &[&chain]);
    let addr = pf.addr();
    wait_served(
        &addr,
        Proto::Smtp,
        Some(MAIL),
        Offer::Any,
        &good.der,
        || pf.log(),
    );

    write_atomic(&chain, combined_pem(&good.with_key_of(&other)), 0o600);
    pf.reload();
    let reply = poll(
        "Postfix to answer STARTTLS with 454",
        SERVER_DEADLINE,
        || {
            starttls_reply(&addr, Proto::Smtp)
                .ok()
                .filter(|r| r.starts_with("454"))
        },
        || pf.log(),
    );
    assert!(reply.contains("TLS not available"), "{reply}");
    let probe = tls_works(&addr, Proto::Smtp, Some(MAIL));
    assert!(probe.is_err(), "the TLS probe must fail on 454: {probe:?}");
}

/// The "server refuses a certificate mxkeys accepts" case of the rollback
/// test is real for Postfix: STARTTLS is accepted, the handshake fails.
#[test]
fn postfix_refuses_chain_with_sha1_signed_intermediate() {
    require!(
        "postfix_refuses_chain_with_sha1_signed_intermediate",
        POSTFIX,
        OPENSSL
    );
    let env = new_env();
    let good = ca_leaf(&Ca::new("good"), KeyKind::P256, 60);
    let weak = weak_chain_leaf(&env.path("weak"), &[MAIL]);
    let chain = env.path("tls/chain.pem");
    write_atomic(&chain, combined_pem(&good), 0o600);
    let pf = Postfix::start(&env.path("postfix"), &[&chain]);
    let addr = pf.addr();
    wait_served(
        &addr,
        Proto::Smtp,
        Some(MAIL),
        Offer::Any,
        &good.der,
        || pf.log(),
    );

    write_atomic(&chain, combined_pem(&weak), 0o600);
    pf.reload();
    let err = poll(
        "Postfix to fail the handshake with the weak chain",
        SERVER_DEADLINE,
        || tls_works(&addr, Proto::Smtp, Some(MAIL)).err(),
        || pf.log(),
    );
    poll(
        "Postfix to log why",
        SERVER_DEADLINE,
        || pf.log().contains("ca md too weak").then_some(()),
        || format!("probe: {err}\n{}", pf.log()),
    );

    // And it recovers once the good file is back.
    write_atomic(&chain, combined_pem(&good), 0o600);
    pf.reload();
    wait_served(
        &addr,
        Proto::Smtp,
        Some(MAIL),
        Offer::Any,
        &good.der,
        || pf.log(),
    );
}

/// The same for Dovecot: every handshake fails.
#[test]
fn dovecot_refuses_chain_with_sha1_signed_intermediate() {
    require!(
        "dovecot_refuses_chain_with_sha1_signed_intermediate",
        DOVECOT,
        OPENSSL
    );
    let env = new_env();
    let good = ca_leaf(&Ca::new("good"), KeyKind::P256, 60);
    let weak = weak_chain_leaf(&env.path("weak"), &[MAIL]);
    let (fc, key) = (env.path("tls/fullchain.pem"), env.path("tls/privkey.pem"));
    write_key_pair(&fc, &key, &good);
    let dv = Dovecot::start(
        &env.path("dovecot"),
        DovecotTls {
            cert: &fc,
            key: &key,
            alt: None,
        },
    );
    wait_served(
        &dv.imaps_addr(),
        Proto::Tls,
        Some(MAIL),
        Offer::Any,
        &good.der,
        || dv.log(),
    );

    write_key_pair(&fc, &key, &weak);
    dv.reload();
    for (addr, proto) in [
        (dv.imaps_addr(), Proto::Tls),
        (dv.imap_addr(), Proto::Imap),
        (dv.pop3_addr(), Proto::Pop3),
    ] {
        poll(
            &format!("Dovecot to fail the handshake on {addr} ({proto:?})"),
            SERVER_DEADLINE,
            || tls_works(&addr, proto, Some(MAIL)).err(),
            || dv.log(),
        );
    }
    write_key_pair(&fc, &key, &good);
    dv.reload();
    wait_served(
        &dv.imaps_addr(),
        Proto::Tls,
        Some(MAIL),
        Offer::Any,
        &good.der,
        || dv.log(),
    );
}

/// pebble issues to certbot, and a forced renewal gives a new certificate
/// in a new archive generation.
#[test]
fn certbot_obtains_and_renews_from_pebble() {
    require!(
        "certbot_obtains_and_renews_from_pebble",
        PEBBLE,
        CERTBOT,
        OPENSSL
    );
    let env = new_env();
    let pebble = Pebble::start(&env.path("pebble"));
    let cb = CertbotDir::new(&env.path("certbot"));
    certbot_certonly(&pebble, &cb, "mail", &[MAIL]);
    let first = cb.live_leaf("mail");
    let info = cert_info(&first);
    assert_eq!(info.dns_sans, vec![MAIL.to_string()]);
    let link = fs::read_link(cb.live("mail").join("cert.pem")).unwrap();
    assert!(link.ends_with("cert1.pem"), "{}", link.display());

    certbot_renew_force(&pebble, &cb, "mail");
    let second = cb.live_leaf("mail");
    assert_ne!(first, second, "the renewal is a new certificate");
    let link = fs::read_link(cb.live("mail").join("cert.pem")).unwrap();
    assert!(link.ends_with("cert2.pem"), "{}", link.display());
}

// ---------------------------------------------------------------------------
// mxkeys with real servers
// ---------------------------------------------------------------------------

/// Postfix and Dovecot with the single-certificate targets mxkeys writes,
/// started on a bootstrap certificate (Postfix needs its files at start).
struct Stack {
    pf: Postfix,
    dv: Dovecot,
    pf_target: Target,
    dv_target: Target,
    /// Postfix's combined file.
    chain: PathBuf,
}

impl Stack {
    fn start(env: &Env, boot: &Leaf) -> Stack {
        let mut pf_target = Target::new(env, "postfix").domains(&[MAIL]);
        let chain = pf_target.dir.join("chain.pem");
        pf_target.fullchain = None;
        pf_target.key = None;
        pf_target.combined = Some(chain.clone());
        let dv_target = Target::new(env, "dovecot").domains(&[MAIL]);
        let fc = dv_target.fullchain.clone().unwrap();
        let key = dv_target.key.clone().unwrap();
        write_atomic(&chain, combined_pem(boot), 0o600);
        write_key_pair(&fc, &key, boot);

        let pf = Postfix::start(&env.path("postfix"), &[&chain]);
        let dv = Dovecot::start(
            &env.path("dovecot"),
            DovecotTls {
                cert: &fc,
                key: &key,
                alt: None,
            },
        );
        let pf_reload = pf.reload_argv();
        let dv_reload = dv.reload_argv();
        let pf_target = pf_target
            .reload(&pf_reload.iter().map(String::as_str).collect::<Vec<_>>())
            .extra(&format!(
                "verify = [{{ address = {}, protocol = \"smtp\", sni = {} }}]",
                q(pf.addr()),
                q(MAIL)
            ))
            .extra("verify_timeout = \"10s\"");
        let dv_target = dv_target
            .reload(&dv_reload.iter().map(String::as_str).collect::<Vec<_>>())
            .extra(&format!(
                "verify = [{{ address = {}, protocol = \"tls\", sni = {m} }}, \
                 {{ address = {}, protocol = \"imap\" }}, {{ address = {}, protocol = \"pop3\" }}]",
                q(dv.imaps_addr()),
                q(dv.imap_addr()),
                q(dv.pop3_addr()),
                m = q(MAIL)
            ))
            .extra("verify_timeout = \"10s\"");
        let stack = Stack {
            pf,
            dv,
            pf_target,
            dv_target,
            chain,
        };
        stack.wait_all_serve(boot);
        stack
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        endpoints_of(&self.pf, &self.dv)
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.pf.log(), self.dv.log())
    }

    /// Poll until every endpoint serves `leaf`.
    #[track_caller]
    fn wait_all_serve(&self, leaf: &Leaf) {
        for e in self.endpoints() {
            wait_served(
                &e.addr,
                e.proto,
                e.sni.as_deref(),
                Offer::Any,
                &leaf.der,
                || format!("endpoint {}\n{}", e.label, self.logs()),
            );
        }
    }

    /// Every endpoint serves `leaf` now (no waiting).
    #[track_caller]
    fn assert_all_serve_now(&self, leaf: &Leaf, context: &str) {
        for e in self.endpoints() {
            let got = served_leaf(&e.addr, e.proto, e.sni.as_deref(), Offer::Any);
            assert_eq!(
                fp_or_err(&got),
                leaf.fp(),
                "{}: wrong or no certificate served\n{context}\n{}",
                e.label,
                self.logs()
            );
        }
    }

    /// Both targets' files hold `leaf` (and its key).
    #[track_caller]
    fn assert_files_hold(&self, leaf: &Leaf) {
        let blocks = read_pem(&self.chain);
        assert!(
            is_private_key_label(&blocks[0].0),
            "combined starts with the key"
        );
        assert_eq!(
            private_key_public_raw(&blocks[0].0, &blocks[0].1),
            leaf.public_key_raw(),
            "Postfix's combined file: key does not match"
        );
        let certs: Vec<Vec<u8>> = blocks
            .into_iter()
            .filter(|(l, _)| l == "CERTIFICATE")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(
            sha256_hex(&certs[0]),
            leaf.fp(),
            "Postfix's combined file: leaf"
        );
        assert_eq!(
            certs[1..].to_vec(),
            leaf.chain,
            "Postfix's combined file: chain"
        );
        self.dv_target.assert_installed(leaf);
    }

    fn file_bytes(&self) -> Vec<(PathBuf, Option<Vec<u8>>)> {
        let mut v = self.pf_target.contents();
        v.extend(self.dv_target.contents());
        v
    }
}

/// Assert a probe loop saw only `allowed` leaves and no failure, and saw
/// the last of them at least once.
#[track_caller]
fn assert_probes(results: &[ProbeResult], allowed: &[&Leaf], ctx: &str) {
    assert!(!results.is_empty(), "the probe loop ran no probe");
    let allowed_fps: Vec<String> = allowed.iter().map(|l| l.fp()).collect();
    for (i, (label, r)) in results.iter().enumerate() {
        match r {
            Ok(der) => assert!(
                allowed_fps.contains(&sha256_hex(der)),
                "probe #{i} ({label}) saw {} which is none of {allowed_fps:?}\n{ctx}",
                sha256_hex(der)
            ),
            Err(e) => panic!("probe #{i} ({label}) failed during the swap: {e}\n{ctx}"),
        }
    }
    let last = allowed.last().unwrap().fp();
    assert!(
        results
            .iter()
            .any(|(_, r)| r.as_ref().map(|d| sha256_hex(d)) == Ok(last.clone())),
        "the probe loop never saw the new certificate"
    );
}

/// Case 1: `mxkeys sync` installs a certificate; Postfix (STARTTLS) and Dovecot
/// (IMAPS, IMAP STARTTLS, POP3 STLS) serve exactly it.
#[test]
fn sync_installs_certificate_served_by_postfix_and_dovecot() {
    require!(
        "sync_installs_certificate_served_by_postfix_and_dovecot",
        POSTFIX,
        DOVECOT,
        OPENSSL
    );
    let env = new_env();
    let boot = self_signed_leaf(&LeafSpec::new(&[MAIL]));
    let st = Stack::start(&env, &boot);
    let leaf = ca_leaf(&Ca::new("sync"), KeyKind::P256, 60);
    env.write_config(
        &[files_source(&env.path("src"), &leaf)],
        &[&st.pf_target, &st.dv_target],
    );
    let r = env.sync();
    r.ok();
    st.assert_files_hold(&leaf);
    // mxkeys verified after its reloads: the servers serve it now.
    st.assert_all_serve_now(&leaf, &r.describe());

    // Nothing changed: nothing written, nothing reloaded, still served.
    let before = st.file_bytes();
    env.sync().ok();
    assert_eq!(st.file_bytes(), before);
    st.assert_all_serve_now(&leaf, "second sync");
}

/// Case 2: certbot (against pebble) obtains a certificate; `mxkeys run` installs
/// it; a forced renewal reaches both servers, and no client sees a failed
/// handshake or a third certificate during the swap.
#[test]
fn daemon_delivers_certbot_renewal_to_both_servers_without_interruption() {
    require!(
        "daemon_delivers_certbot_renewal_to_both_servers_without_interruption",
        POSTFIX,
        DOVECOT,
        OPENSSL,
        PEBBLE,
        CERTBOT
    );
    let env = new_env();
    let pebble = Pebble::start(&env.path("pebble"));
    let cb = CertbotDir::new(&env.path("certbot"));
    certbot_certonly(&pebble, &cb, "mail", &[MAIL]);
    let old = leaf_from_der(cb.live_leaf("mail"));

    let boot = self_signed_leaf(&LeafSpec::new(&[MAIL]));
    let st = Stack::start(&env, &boot);
    env.write_config(&[src_certbot(&cb.config)], &[&st.pf_target, &st.dv_target]);
    let mut d = env.daemon(&[]);
    wait_daemon_delivers(&mut d, &st, &old);

    let probes = ProbeLoop::start(st.endpoints());
    certbot_renew_force(&pebble, &cb, "mail");
    let new = leaf_from_der(cb.live_leaf("mail"));
    assert_ne!(old.der, new.der, "certbot renewed");
    wait_daemon_delivers(&mut d, &st, &new);
    finish_probes_after_switch(probes, &mut d, &st, &[&old, &new]);
    st.assert_files_hold_leaf_only(&new);
}

/// After the daemon delivered the new certificate: a few more probe rounds,
/// then every probe must have seen one of `allowed` (never a failed
/// handshake), and the daemon must still run.
#[track_caller]
fn finish_probes_after_switch(probes: ProbeLoop, d: &mut Daemon, st: &Stack, allowed: &[&Leaf]) {
    let n = probes.count();
    poll(
        "more probes after the switch",
        SERVER_DEADLINE,
        || (probes.count() >= n + 8).then_some(()),
        String::new,
    );
    let results = probes.finish();
    assert_probes(
        &results,
        allowed,
        &format!("{}\n{}", d.describe(), st.logs()),
    );
    d.assert_running();
}

/// Poll until every endpoint of `st` serves `leaf`, failing at once when
/// the daemon exits.
#[track_caller]
fn wait_daemon_delivers(d: &mut Daemon, st: &Stack, leaf: &Leaf) {
    for e in st.endpoints() {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = d.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "the daemon exited ({status})\n{}\n{}",
                    d.describe(),
                    st.logs()
                );
            }
            let got = served_leaf(&e.addr, e.proto, e.sni.as_deref(), Offer::Any);
            if got.as_deref() == Ok(leaf.der.as_slice()) {
                break;
            }
            if start.elapsed() > SERVER_DEADLINE {
                panic!(
                    "timed out after {SERVER_DEADLINE:?}: {} does not serve {}; last probe: {}\n{}\n{}",
                    e.label,
                    leaf.fp(),
                    fp_or_err(&got),
                    d.describe(),
                    st.logs()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// A leaf known only by its DER (issued by pebble): enough for comparing.
fn leaf_from_der(der: Vec<u8>) -> Leaf {
    Leaf {
        der,
        chain: vec![],
        key_pkcs8: vec![],
        kind: KeyKind::P256,
        not_before: days(0),
        not_after: days(0),
    }
}

impl Stack {
    /// The leaf in both targets' files is `leaf` (key checked elsewhere by
    /// the servers themselves).
    #[track_caller]
    fn assert_files_hold_leaf_only(&self, leaf: &Leaf) {
        assert_eq!(
            sha256_hex(&first_cert(&self.chain)),
            leaf.fp(),
            "Postfix's file"
        );
        assert_eq!(
            self.dv_target.installed_fp().as_deref(),
            Some(leaf.fp().as_str()),
            "Dovecot's file"
        );
    }
}

/// Case 3: Traefik rewrites acme.json in place (truncate + write, same inode);
/// `mxkeys run` delivers the new certificate to both servers, and no client
/// sees a failure or a third certificate meanwhile.
#[test]
fn daemon_delivers_in_place_acme_json_rewrite_to_both_servers() {
    require!(
        "daemon_delivers_in_place_acme_json_rewrite_to_both_servers",
        POSTFIX,
        DOVECOT,
        OPENSSL
    );
    let env = new_env();
    let ca = Ca::new("traefik");
    let a = ca_leaf(&ca, KeyKind::P256, 60);
    let b = ca_leaf(&ca, KeyKind::P256, 89);
    let acme = env.path("traefik/acme.json");
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&a, MAIL)]))]),
    );
    let ino = fs::metadata(&acme).unwrap().ino();

    let boot = self_signed_leaf(&LeafSpec::new(&[MAIL]));
    let st = Stack::start(&env, &boot);
    env.write_config(&[src_traefik(&acme)], &[&st.pf_target, &st.dv_target]);
    let mut d = env.daemon(&[]);
    wait_daemon_delivers(&mut d, &st, &a);

    let probes = ProbeLoop::start(st.endpoints());
    poll(
        "a first probe round",
        SERVER_DEADLINE,
        || (probes.count() >= 4).then_some(()),
        String::new,
    );
    // Traefik's way: truncate, then write the new content, same inode.
    let text = serde_json::to_vec_pretty(&acme_v2(&[(
        "le",
        Some(vec![AcmeEntry::new(&a, MAIL), AcmeEntry::new(&b, MAIL)]),
    )]))
    .unwrap();
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&acme)
            .unwrap();
        let (head, rest) = text.split_at(text.len() / 2);
        f.write_all(head).unwrap();
        f.flush().unwrap();
        f.write_all(rest).unwrap();
    }
    assert_eq!(fs::metadata(&acme).unwrap().ino(), ino, "same inode");
    wait_daemon_delivers(&mut d, &st, &b);
    finish_probes_after_switch(probes, &mut d, &st, &[&a, &b]);
    st.assert_files_hold(&b);
}

/// Case 4a: A reload command that fails: the files are put back byte for byte,
/// exit 1 with "rolled back", and the servers keep the previous certificate.
#[test]
fn failed_reload_rolls_back_files() {
    require!("failed_reload_rolls_back_files", POSTFIX, DOVECOT, OPENSSL);
    let env = new_env();
    let ca = Ca::new("reload-fails");
    let a = ca_leaf(&ca, KeyKind::P256, 60);
    let b = ca_leaf(&ca, KeyKind::P256, 89);
    let boot = self_signed_leaf(&LeafSpec::new(&[MAIL]));
    let st = Stack::start(&env, &boot);
    let src = env.path("src");
    env.write_config(&[files_source(&src, &a)], &[&st.pf_target, &st.dv_target]);
    env.sync().ok();
    st.assert_files_hold(&a);
    st.wait_all_serve(&a);
    let before = st.file_bytes();

    // The same targets, but their reload fails (the servers keep running
    // the old files).
    let failing = ["sh", "-c", "exit 1"];
    let pf_t = st.pf_target.clone().reload(&failing);
    let dv_t = st.dv_target.clone().reload(&failing);
    env.write_config(&[files_source(&src, &b)], &[&pf_t, &dv_t]);
    let r = env.sync();
    r.assert_code(1);
    r.assert_err_line(&["rolled back", "postfix"]);
    r.assert_err_line(&["rolled back", "dovecot"]);
    assert_eq!(
        st.file_bytes(),
        before,
        "the target files are put back\n{}",
        r.describe()
    );
    st.assert_all_serve_now(&a, &r.describe());
}

/// Case 4b: A certificate valid for mxkeys that the servers refuse (its
/// intermediate is signed with SHA-1; see the two `..._refuses_...` tests):
/// verification fails, the files are restored, the servers serve the
/// previous certificate, exit 1 with "rolled back".
#[test]
fn certificate_refused_by_servers_rolls_back() {
    require!(
        "certificate_refused_by_servers_rolls_back",
        POSTFIX,
        DOVECOT,
        OPENSSL
    );
    let env = new_env();
    let a = ca_leaf(&Ca::new("refused"), KeyKind::P256, 60);
    let weak = weak_chain_leaf(&env.path("weak"), &[MAIL]);
    let boot = self_signed_leaf(&LeafSpec::new(&[MAIL]));
    let st = Stack::start(&env, &boot);
    let src = env.path("src");
    env.write_config(&[files_source(&src, &a)], &[&st.pf_target, &st.dv_target]);
    env.sync().ok();
    st.assert_files_hold(&a);
    st.wait_all_serve(&a);
    let before = st.file_bytes();

    // The weak chain expires later, so mxkeys prefers it.
    env.write_config(
        &[files_source(&src, &weak)],
        &[&st.pf_target, &st.dv_target],
    );
    let check = env.check();
    assert!(
        check.stdout.contains(&weak.fp()) || check.stderr.contains(&weak.fp()),
        "mxkeys must select the weak-chain certificate for the case to be real\n{}",
        check.describe()
    );
    let r = env.sync();
    r.assert_code(1);
    r.assert_err_line(&["rolled back", "postfix"]);
    r.assert_err_line(&["rolled back", "dovecot"]);
    assert_eq!(
        st.file_bytes(),
        before,
        "the target files are restored\n{}",
        r.describe()
    );
    st.assert_all_serve_now(&a, &r.describe());
    let reply = starttls_reply(&st.pf.addr(), Proto::Smtp).unwrap();
    assert!(
        reply.starts_with("220"),
        "Postfix offers TLS again: {reply}"
    );
}

/// Case 5: Dual RSA + ECDSA targets: a client offering only RSA signature
/// algorithms gets the RSA leaf, an ECDSA client the ECDSA leaf, from
/// Postfix and from Dovecot.
#[test]
fn dual_rsa_and_ecdsa_certificates_served_by_key_type() {
    require!(
        "dual_rsa_and_ecdsa_certificates_served_by_key_type",
        POSTFIX,
        DOVECOT,
        OPENSSL
    );
    let env = new_env();
    let ca = Ca::new("dual");
    let ec = ca_leaf(&ca, KeyKind::P256, 60);
    let rsa = ca_leaf(&ca, KeyKind::Rsa2048, 60);
    let boot_ec = self_signed_leaf(&LeafSpec::new(&[MAIL]));
    let boot_rsa = self_signed_leaf(&LeafSpec::new(&[MAIL]).kind(KeyKind::Rsa2048));

    let pdir = env.out.join("postfix");
    let ddir = env.out.join("dovecot");
    let p = |d: &Path, f: &str| d.join(f);
    write_atomic(&p(&pdir, "ecdsa.pem"), combined_pem(&boot_ec), 0o600);
    write_atomic(&p(&pdir, "rsa.pem"), combined_pem(&boot_rsa), 0o600);
    write_key_pair(&p(&ddir, "ecdsa.pem"), &p(&ddir, "ecdsa.key"), &boot_ec);
    write_key_pair(&p(&ddir, "rsa.pem"), &p(&ddir, "rsa.key"), &boot_rsa);
    let pf = Postfix::start(
        &env.path("postfix"),
        &[&p(&pdir, "ecdsa.pem"), &p(&pdir, "rsa.pem")],
    );
    let dv = Dovecot::start(
        &env.path("dovecot"),
        DovecotTls {
            cert: &p(&ddir, "ecdsa.pem"),
            key: &p(&ddir, "ecdsa.key"),
            alt: Some((&p(&ddir, "rsa.pem"), &p(&ddir, "rsa.key"))),
        },
    );

    let config = format!(
        "{header}\n{src_ec}\n{src_rsa}\n\
         [[target]]\nname = \"postfix\"\ndomains = [{m}]\nreload = {pr}\n\
         verify = [{{ address = {pa}, protocol = \"smtp\", sni = {m} }}]\nverify_timeout = \"10s\"\n\
         [target.ecdsa]\ncombined = {pe}\n\
         [target.rsa]\ncombined = {prs}\n\n\
         [[target]]\nname = \"dovecot\"\ndomains = [{m}]\nreload = {dr}\n\
         verify = [{{ address = {da}, protocol = \"tls\", sni = {m} }}, {{ address = {di}, protocol = \"imap\" }}]\n\
         verify_timeout = \"10s\"\n\
         [target.ecdsa]\nfullchain = {de}\nkey = {dek}\n\
         [target.rsa]\nfullchain = {drs}\nkey = {drk}\n",
        header = env.header(),
        src_ec = files_source(&env.path("src-ecdsa"), &ec),
        src_rsa = files_source(&env.path("src-rsa"), &rsa),
        m = q(MAIL),
        pr = q_list(
            &pf.reload_argv()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        pa = q(pf.addr()),
        pe = qp(&p(&pdir, "ecdsa.pem")),
        prs = qp(&p(&pdir, "rsa.pem")),
        dr = q_list(
            &dv.reload_argv()
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        ),
        da = q(dv.imaps_addr()),
        di = q(dv.imap_addr()),
        de = qp(&p(&ddir, "ecdsa.pem")),
        dek = qp(&p(&ddir, "ecdsa.key")),
        drs = qp(&p(&ddir, "rsa.pem")),
        drk = qp(&p(&ddir, "rsa.key")),
    );
    env.write_config_raw(&config);
    let r = env.sync();
    r.ok();
    assert_eq!(
        first_cert(&p(&pdir, "ecdsa.pem")),
        ec.der,
        "Postfix ECDSA file"
    );
    assert_eq!(
        first_cert(&p(&pdir, "rsa.pem")),
        rsa.der,
        "Postfix RSA file"
    );
    assert_eq!(
        first_cert(&p(&ddir, "ecdsa.pem")),
        ec.der,
        "Dovecot ECDSA file"
    );
    assert_eq!(
        first_cert(&p(&ddir, "rsa.pem")),
        rsa.der,
        "Dovecot RSA file"
    );

    let logs = || format!("{}\n{}\n{}", r.describe(), pf.log(), dv.log());
    for (label, addr, proto) in [
        ("postfix smtp", pf.addr(), Proto::Smtp),
        ("dovecot imaps", dv.imaps_addr(), Proto::Tls),
        ("dovecot imap", dv.imap_addr(), Proto::Imap),
        ("dovecot pop3", dv.pop3_addr(), Proto::Pop3),
    ] {
        for (offer, want) in [(Offer::RsaOnly, &rsa), (Offer::EcdsaOnly, &ec)] {
            let got = served_leaf(&addr, proto, Some(MAIL), offer);
            assert_eq!(
                fp_or_err(&got),
                want.fp(),
                "{label}: a client offering {offer:?} gets the wrong certificate\n{}",
                logs()
            );
        }
    }
}
