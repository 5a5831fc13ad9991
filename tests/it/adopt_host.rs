//! Adopting a running mail host (issue 16): the configuration `mxkeys init`
//! writes for a host whose TLS files are already right changes nothing
//! there. Real Postfix (STARTTLS on its "25", implicit TLS on its "465")
//! and Dovecot (IMAPS "993", IMAP STARTTLS "143", POP3 STLS "110") run on
//! loopback with files made from a Certbot tree the way deploy hooks make
//! them (`cat privkey.pem fullchain.pem`, copies, `openssl pkey`); `mxkeys
//! check` plans nothing, `mxkeys sync` writes no file (content, inode and
//! mtime kept), runs no reload (the reload commands leave a mark) and
//! every port serves the same certificate before and after. A host
//! serving an expired certificate gets the source's newer one, installed
//! once and reloaded once.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};

use common::adopt::*;
use common::servers::*;
use common::*;

use super::mail_servers::new_env;

/// Return from the test (or fail under CI=true) when a program is missing.
macro_rules! require {
    ($test:expr, $($needs:expr),+ $(,)?) => {
        if !require($test, &[$($needs),+]) {
            return;
        }
    };
}

/// Which certificates the host serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One ECDSA certificate.
    Single,
    /// ECDSA and RSA (`smtpd_tls_chain_files` with two files, Dovecot's
    /// `ssl_alt_cert`).
    Dual,
}

/// A running host: Postfix and Dovecot serving files made from a Certbot
/// tree.
struct Host {
    env: Env,
    kind: Kind,
    /// The Certbot configuration directory (`/etc/letsencrypt`).
    letsencrypt: PathBuf,
    pf: Postfix,
    /// Postfix's implicit-TLS listener (the "465").
    submissions: String,
    dv: Dovecot,
    /// Postfix's `smtpd_tls_chain_files`, ECDSA first.
    pf_chain: Vec<PathBuf>,
    /// Dovecot's (certificate, key) pairs: `ssl_cert`/`ssl_key`, then
    /// `ssl_alt_cert`/`ssl_alt_key`.
    dv_files: Vec<(PathBuf, PathBuf)>,
    /// Where the reload commands leave their mark.
    marker: PathBuf,
}

impl Host {
    /// Certbot lineages `mail-ecdsa` (and `mail-rsa` for [`Kind::Dual`])
    /// holding `served`, the host's files made from them by deploy-hook
    /// commands, and both servers started on them.
    fn start(kind: Kind, served: &[&Leaf]) -> Host {
        let env = new_env();
        let cb = Certbot::new(&env.path("letsencrypt"));
        let lives: Vec<PathBuf> = served
            .iter()
            .zip(["ecdsa", "rsa"])
            .map(|(leaf, ty)| certbot_lineage(&cb, &format!("mail-{ty}"), leaf))
            .collect();
        Host::start_from(env, kind, &cb.root, &lives)
    }

    /// The host's files made from the `live/NAME` directories `lives` of
    /// the Certbot tree `letsencrypt` (ECDSA, then RSA), and both servers
    /// started on them.
    fn start_from(env: Env, kind: Kind, letsencrypt: &Path, lives: &[PathBuf]) -> Host {
        let etc = env.path("etc");
        let mut pf_chain = Vec::new();
        let mut dv_files = Vec::new();
        for (live, ty) in lives.iter().zip(["ecdsa", "rsa"]) {
            let chain = etc.join(format!("postfix/tls/{ty}-chain.pem"));
            let cert = etc.join(format!("dovecot/tls/{ty}-fullchain.pem"));
            let key = etc.join(format!("dovecot/private/{ty}-privkey.pem"));
            let (l, c, k) = (
                sh_quote(live.to_str().unwrap()),
                sh_quote(cert.to_str().unwrap()),
                sh_quote(key.to_str().unwrap()),
            );
            let pc = sh_quote(chain.to_str().unwrap());
            // The ECDSA files are what the common hooks write: Postfix's
            // combined file by `cat`, Dovecot's by copying. The RSA ones
            // went through `openssl pkey` (a PKCS#8 key where Certbot's is
            // PKCS#1): the same key in another encoding. Dovecot's key is
            // group-readable by dovecot, as some admins keep it: init
            // keeps owner, group and mode, so nothing changes there either.
            let key_cmd = if ty == "rsa" {
                format!("openssl pkey -in {l}/privkey.pem")
            } else {
                format!("cat {l}/privkey.pem")
            };
            deploy_hook(&format!(
                "mkdir -p $(dirname {pc}) $(dirname {c}) $(dirname {k})\n\
                 umask 077\n\
                 {{ {key_cmd}; cat {l}/fullchain.pem; }} > {pc}\n\
                 install -m 0644 {l}/fullchain.pem {c}\n\
                 {key_cmd} > {k}\n\
                 chgrp dovecot {k} && chmod 0640 {k}\n"
            ));
            pf_chain.push(chain);
            dv_files.push((cert, key));
        }
        let chain_refs: Vec<&Path> = pf_chain.iter().map(PathBuf::as_path).collect();
        let (pf, submissions) = Postfix::start_with_submissions(&env.path("postfix"), &chain_refs);
        let dv = Dovecot::start(
            &env.path("dovecot"),
            DovecotTls {
                cert: &dv_files[0].0,
                key: &dv_files[0].1,
                alt: dv_files.get(1).map(|(c, k)| (c.as_path(), k.as_path())),
            },
        );
        let marker = env.path("reloads.log");
        Host {
            env,
            kind,
            letsencrypt: letsencrypt.to_owned(),
            pf,
            submissions,
            dv,
            pf_chain,
            dv_files,
            marker,
        }
    }

    /// Every TLS file the servers read.
    fn files(&self) -> Vec<PathBuf> {
        let mut v = self.pf_chain.clone();
        for (c, k) in &self.dv_files {
            v.push(c.clone());
            v.push(k.clone());
        }
        v
    }

    /// Every listening TLS port: (label, address, protocol).
    fn endpoints(&self) -> Vec<(&'static str, String, Proto)> {
        vec![
            ("postfix smtp (25)", self.pf.addr(), Proto::Smtp),
            (
                "postfix submissions (465)",
                self.submissions.clone(),
                Proto::Tls,
            ),
            ("dovecot imaps (993)", self.dv.imaps_addr(), Proto::Tls),
            ("dovecot imap (143)", self.dv.imap_addr(), Proto::Imap),
            ("dovecot pop3 (110)", self.dv.pop3_addr(), Proto::Pop3),
        ]
    }

    /// The client offers to ask each port with: one per key type served.
    fn offers(&self) -> Vec<Offer> {
        match self.kind {
            Kind::Single => vec![Offer::EcdsaOnly],
            Kind::Dual => vec![Offer::EcdsaOnly, Offer::RsaOnly],
        }
    }

    /// The fingerprint each port serves to each offer (an error's text
    /// when the handshake fails).
    fn served(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (label, addr, proto) in self.endpoints() {
            for offer in self.offers() {
                let got = served_leaf(&addr, proto, Some(MAIL), offer);
                let fp = match got {
                    Ok(der) => sha256_hex(&der),
                    Err(e) => format!("handshake failed: {e}"),
                };
                out.push((format!("{label} {offer:?}"), fp));
            }
        }
        out
    }

    /// Polls until every port serves `want` (ECDSA, then RSA) to the
    /// client offering that key type.
    fn wait_serving(&self, want: &[&Leaf]) {
        for (_, addr, proto) in self.endpoints() {
            for (offer, leaf) in self.offers().into_iter().zip(want) {
                wait_served(&addr, proto, Some(MAIL), offer, &leaf.der, || self.logs());
            }
        }
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.pf.log(), self.dv.log())
    }

    /// The reloads that ran, one label each.
    fn reloads(&self) -> Vec<String> {
        reload_marks(&self.marker)
    }
}

/// The configuration `mxkeys init` writes for `host` (pointed at its
/// Postfix and Dovecot configurations and its Certbot tree, at nothing
/// else), as the admin would run it, with each target's reload wrapped to
/// leave a mark in the host's marker. Checked on the way: init found what
/// the host runs (a `postfix` and a `dovecot` target, a dual one when both
/// key types are served, each reloading its own instance) and the Certbot
/// tree as the source.
fn adopting_config(host: &Host) -> String {
    let nothing = host.env.path("nothing-here");
    let state = host.env.state.display().to_string();
    let args = [
        "init",
        "--hostname",
        MAIL,
        "--state-dir",
        &state,
        "--postfix-config",
        host.pf.dir.to_str().unwrap(),
        "--dovecot-config",
        host.dv.conf.to_str().unwrap(),
        "--letsencrypt",
        host.letsencrypt.to_str().unwrap(),
        "--lego",
        nothing.to_str().unwrap(),
        "--acme-json",
        nothing.to_str().unwrap(),
        "--opendkim-config",
        nothing.to_str().unwrap(),
        "--rspamd-config",
        nothing.to_str().unwrap(),
        "--amavis-config",
        nothing.to_str().unwrap(),
    ];
    let init = host.env.run(&args);
    init.ok();
    let mut config: toml::Table = init
        .stdout
        .parse()
        .unwrap_or_else(|e| panic!("init printed no TOML: {e}\n{}", init.describe()));
    let sources = config["source"].as_array().expect("[[source]]");
    assert_eq!(sources.len(), 1, "{}", init.stdout);
    assert_eq!(sources[0]["type"].as_str(), Some("certbot"));
    assert_eq!(
        sources[0]["path"].as_str(),
        host.letsencrypt.to_str(),
        "{}",
        init.stdout
    );
    let targets = config
        .get_mut("target")
        .and_then(|t| t.as_array_mut())
        .expect("[[target]]");
    let names: Vec<&str> = targets.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["postfix", "dovecot"], "{}", init.stdout);
    for t in targets.iter_mut() {
        let t = t.as_table_mut().unwrap();
        let name = t["name"].as_str().unwrap().to_owned();
        let wanted = match name.as_str() {
            "postfix" => host.pf.reload_argv(),
            _ => host.dv.reload_argv(),
        };
        let argv: Vec<String> = t["reload"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect();
        // init writes the tool's name, which PATH finds; the lab's argv
        // names the same tool by its full path.
        assert_eq!(argv[1..], wanted[1..], "{name}: {}", init.stdout);
        let key_type = t.get("key_type").and_then(|k| k.as_str());
        match host.kind {
            Kind::Single => assert!(t.get("rsa").is_none(), "{}", init.stdout),
            Kind::Dual => assert!(
                t.contains_key("rsa") && t.contains_key("ecdsa") && key_type != Some("ecdsa"),
                "{}",
                init.stdout
            ),
        }
        let marked = marking_reload(&host.marker, &name, &argv);
        t.insert(
            "reload".into(),
            toml::Value::Array(marked.into_iter().map(toml::Value::String).collect()),
        );
    }
    toml::to_string(&config).unwrap()
}

fn leaves(kind: Kind, ca: &Ca, spec: &LeafSpec) -> Vec<Leaf> {
    let mut v = vec![ca.issue(&spec.clone().kind(KeyKind::P256))];
    if kind == Kind::Dual {
        v.push(ca.issue(&spec.clone().kind(KeyKind::Rsa2048)));
    }
    v
}

/// Each target slot as `check` names it, with the leaf it should serve.
fn slots(kind: Kind, fps: &[String]) -> Vec<(String, &String)> {
    let mut v = Vec::new();
    for target in ["postfix", "dovecot"] {
        match kind {
            Kind::Single => v.push((target.to_owned(), &fps[0])),
            Kind::Dual => {
                for (ty, fp) in ["ecdsa", "rsa"].iter().zip(fps) {
                    v.push((format!("{target}/{ty}"), fp));
                }
            }
        }
    }
    v
}

/// A host whose files are right, made from generated certificates.
fn adopting_changes_nothing(kind: Kind) {
    let ca = Ca::new("adopt");
    let served = leaves(kind, &ca, &LeafSpec::new(&[MAIL]).days(60));
    let refs: Vec<&Leaf> = served.iter().collect();
    let host = Host::start(kind, &refs);
    host.wait_serving(&refs);
    let fps: Vec<String> = served.iter().map(Leaf::fp).collect();
    assert_adopting_changes_nothing(&host, &fps);
}

/// The whole proof for a host whose files are right, serving the
/// certificates `fps` (ECDSA, then RSA).
fn assert_adopting_changes_nothing(host: &Host, fps: &[String]) {
    let kind = host.kind;
    host.env.write_config_raw(&adopting_config(host));

    let files_before = file_marks(&host.files());
    let certbot_before = snapshot(&host.letsencrypt);
    let served_before = host.served();

    let check = host.env.check();
    check.ok();
    for (slot, fp) in slots(kind, fps) {
        {
            let line = format!("{slot}: {fp} up to date");
            assert!(
                check.stdout.contains(&line),
                "check must plan nothing to install: no `{line}`\n{}",
                check.describe()
            );
        }
    }
    assert!(
        !check.stdout.contains("would install") && !check.stdout.contains("  write "),
        "{}",
        check.describe()
    );

    let sync = host.env.sync();
    sync.ok();
    assert_eq!(
        file_marks(&host.files()),
        files_before,
        "sync wrote a file the host already had right\n{}",
        sync.describe()
    );
    assert_eq!(
        host.reloads(),
        Vec::<String>::new(),
        "sync reloaded a server with nothing new\n{}",
        sync.describe()
    );
    assert_eq!(
        snapshot(&host.letsencrypt),
        certbot_before,
        "Certbot's tree"
    );
    let served_after = host.served();
    assert_eq!(served_after, served_before, "{}", host.logs());
    for (label, fp) in &served_after {
        assert!(fps.contains(fp), "{label} serves {fp}\n{}", host.logs());
    }
}

#[test]
fn adopting_a_host_with_right_files_writes_nothing_and_reloads_nothing() {
    require!(
        "adopting_a_host_with_right_files_writes_nothing_and_reloads_nothing",
        POSTFIX,
        DOVECOT,
        OPENSSL
    );
    adopting_changes_nothing(Kind::Single);
}

/// Dual certificates, the RSA key in PKCS#8 on the host and PKCS#1 in
/// Certbot's tree: the same key, so nothing to write either.
#[test]
fn adopting_a_dual_certificate_host_writes_nothing_whatever_the_key_encoding() {
    require!(
        "adopting_a_dual_certificate_host_writes_nothing_whatever_the_key_encoding",
        POSTFIX,
        DOVECOT,
        OPENSSL
    );
    adopting_changes_nothing(Kind::Dual);
}

/// The host's files come from real Certbot (pebble issued): its PEM
/// layout, its key encoding, pebble's chain.
#[test]
fn adopting_a_host_fed_by_real_certbot_writes_nothing_and_reloads_nothing() {
    require!(
        "adopting_a_host_fed_by_real_certbot_writes_nothing_and_reloads_nothing",
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
    let leaf = cb.live_leaf("mail");
    let host = Host::start_from(env, Kind::Single, &cb.config, &[cb.live("mail")]);
    for (_, addr, proto) in host.endpoints() {
        wait_served(&addr, proto, Some(MAIL), Offer::Any, &leaf, || host.logs());
    }
    assert_adopting_changes_nothing(&host, &[sha256_hex(&leaf)]);
}

/// The host serves an expired certificate and Certbot holds a newer one:
/// the first sync installs it (each target's files once, each server
/// reloaded once) and every port serves it; a second sync does nothing.
#[test]
fn adopting_a_host_serving_an_expired_certificate_installs_the_newer_one_once() {
    require!(
        "adopting_a_host_serving_an_expired_certificate_installs_the_newer_one_once",
        POSTFIX,
        DOVECOT,
        OPENSSL
    );
    let ca = Ca::new("adopt-expired");
    let old = leaves(Kind::Dual, &ca, &LeafSpec::new(&[MAIL]).expired());
    let old_refs: Vec<&Leaf> = old.iter().collect();
    let host = Host::start(Kind::Dual, &old_refs);
    host.wait_serving(&old_refs);
    let new = leaves(Kind::Dual, &ca, &LeafSpec::new(&[MAIL]).days(80));
    for (leaf, ty) in new.iter().zip(["ecdsa", "rsa"]) {
        certbot_lineage(
            &Certbot::new(&host.letsencrypt),
            &format!("mail-{ty}"),
            leaf,
        );
    }
    host.env.write_config_raw(&adopting_config(&host));
    let before = file_marks(&host.files());

    let check = host.env.check();
    check.ok();
    let new_fps: Vec<String> = new.iter().map(Leaf::fp).collect();
    for (slot, fp) in slots(Kind::Dual, &new_fps) {
        {
            let line = format!("{slot}: {fp} would install");
            assert!(
                check.stdout.contains(&line),
                "no `{line}`\n{}",
                check.describe()
            );
        }
    }

    let sync = host.env.sync();
    sync.ok();
    let after = file_marks(&host.files());
    for ((path, b), (_, a)) in before.iter().zip(&after) {
        assert_ne!(a.sha256, b.sha256, "{} not rewritten", path.display());
    }
    let mut reloads = host.reloads();
    reloads.sort();
    assert_eq!(
        reloads,
        ["dovecot", "postfix"],
        "one reload per server\n{}",
        sync.describe()
    );
    // mxkeys verified after its reloads: every port serves it now.
    let want = [new[0].fp(), new[1].fp()];
    for (label, fp) in host.served() {
        let offer_rsa = label.ends_with("RsaOnly");
        assert_eq!(
            fp,
            want[usize::from(offer_rsa)],
            "{label}\n{}\n{}",
            sync.describe(),
            host.logs()
        );
    }

    let again = host.env.sync();
    again.ok();
    assert_eq!(
        file_marks(&host.files()),
        after,
        "a second sync rewrote\n{}",
        again.describe()
    );
    assert_eq!(host.reloads().len(), 2, "{}", again.describe());
}
