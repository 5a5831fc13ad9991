//! What `mxkeys init` will learn from the mail servers (issue 16): the real
//! `postconf` reads a Postfix configuration directory the test wrote
//! (main.cf, master.cf; no Postfix needs to run) and the real `doveconf` a
//! dovecot.conf the test wrote; the probe's answer must be exactly the
//! files and ports the test configured. Certificates and keys are made at
//! test time, so the chain files' PEM labels are real.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::servers::{Need, combined_pem, prog, require_programs, write_atomic};
use common::*;
use mxkeys::init::mail::*;

const MAIL: &str = "mail.example.test";

/// Generous: postconf stalls up to 2 s after main.cf changed.
const TIMEOUT: Duration = Duration::from_secs(60);

const POSTCONF: &[Need] = &[("postconf", "postfix")];
const DOVECONF: &[Need] = &[("doveconf", "dovecot-core")];

/// Return from the test (or fail under CI=true) when a program is missing.
macro_rules! require {
    ($test:expr, $needs:expr) => {
        if !require_programs($test, &[$needs]) {
            return;
        }
    };
}

/// master.cf: smtp (STARTTLS by main.cf's level), submission (encrypt),
/// submissions (wrapper mode), a loopback content filter without TLS and a
/// unix service.
const MASTER_CF: &str = "\
smtp      inet  n       -       y       -       -       smtpd
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
submissions     inet  n       -       y       -       -       smtpd
  -o syslog_name=postfix/submissions
  -o smtpd_tls_wrappermode=yes
127.0.0.1:10025 inet n  -       n       -       -       smtpd
  -o smtpd_tls_security_level=none
#smtps     inet  n       -       y       -       -       smtpd
pickup    unix  n       -       y       60      1       pickup
";

/// A Postfix configuration directory with `main` and [`MASTER_CF`].
fn postfix_dir(env: &Env, main: &str) -> PostfixProbe {
    postfix_dir_with(env, main, MASTER_CF)
}

fn postfix_dir_with(env: &Env, main: &str, master: &str) -> PostfixProbe {
    let dir = env.path("postfix");
    write(&dir.join("main.cf"), main);
    write(&dir.join("master.cf"), master);
    PostfixProbe {
        postconf: prog("postconf"),
        config_dir: Some(dir),
        timeout: TIMEOUT,
    }
}

fn leaf(ca: &Ca, kind: KeyKind) -> Leaf {
    ca.issue(&LeafSpec::new(&[MAIL]).kind(kind).days(60))
}

fn slot(key: &Path, chain: &Path, key_type_hint: KeyTypeHint) -> Slot {
    Slot {
        key: key.to_owned(),
        chain: chain.to_owned(),
        key_type_hint,
    }
}

fn listener(service: &str, address: Option<&str>, port: u16, tls: TlsMode) -> Listener {
    Listener {
        service: service.to_owned(),
        address: address.map(str::to_owned),
        port: Some(port),
        tls,
    }
}

/// smtp and submission by STARTTLS, submissions by wrapper mode; never the
/// content filter set to `none`.
fn tls_services() -> Vec<Listener> {
    vec![
        listener("smtp", None, 25, TlsMode::StartTls),
        listener("submission", None, 587, TlsMode::StartTls),
        listener("submissions", None, 465, TlsMode::Implicit),
    ]
}

#[test]
fn postfix_chain_files_give_one_slot_per_key_whether_combined_or_key_then_chain() {
    require!(
        "postfix_chain_files_give_one_slot_per_key_whether_combined_or_key_then_chain",
        POSTCONF
    );
    let env = Env::new();
    let ca = Ca::new("init-chain");
    let (rsa, ec) = (leaf(&ca, KeyKind::Rsa2048), leaf(&ca, KeyKind::P256));
    let tls = env.path("tls");
    let (rsa_pem, ec_key, ec_crt) = (tls.join("rsa.pem"), tls.join("ec.key"), tls.join("ec.crt"));
    // RSA: key (PKCS#8, so the hint comes from the leaf) then chain in one
    // file; ECDSA: a SEC1 key file, then its chain file.
    write_atomic(&rsa_pem, combined_pem(&rsa), 0o600);
    write_atomic(&ec_key, ec.key_pem_as(KeyFormat::Sec1), 0o600);
    write_atomic(&ec_crt, ec.fullchain_pem(), 0o644);
    // `$var` expansion is postconf's; the older parameters are ignored.
    let probe = postfix_dir(
        &env,
        &format!(
            "tls_dir = {}\n\
             smtpd_tls_chain_files = $tls_dir/rsa.pem,\n    ${{tls_dir}}/ec.key ${{tls_dir}}/ec.crt\n\
             smtpd_tls_cert_file = /nonexistent/old.crt\n\
             smtpd_tls_key_file = /nonexistent/old.key\n\
             smtpd_tls_security_level = may\n",
            tls.display()
        ),
    );
    let got = probe_postfix(&probe).unwrap();
    assert_eq!(
        got,
        PostfixTls {
            slots: vec![
                slot(&rsa_pem, &rsa_pem, KeyTypeHint::Rsa),
                slot(&ec_key, &ec_crt, KeyTypeHint::Ecdsa),
            ],
            combined: false,
            from: PostfixParams::ChainFiles,
            ports: tls_services(),
            own_files: vec![],
        }
    );
}

#[test]
fn postfix_older_cert_and_key_pairs_give_an_rsa_slot_and_a_service_with_files_of_its_own_is_named()
{
    require!(
        "postfix_older_cert_and_key_pairs_give_an_rsa_slot_and_a_service_with_files_of_its_own_is_named",
        POSTCONF
    );
    let env = Env::new();
    // One more service with files of its own: named, not followed.
    let master = format!(
        "{MASTER_CF}2587 inet n - y - - smtpd\n  -o smtpd_tls_cert_file=/etc/tls/sub.crt\n  -o smtpd_tls_key_file=/etc/tls/sub.key\n"
    );
    let probe = postfix_dir_with(
        &env,
        "smtpd_tls_cert_file = /etc/letsencrypt/live/mail/fullchain.pem\n\
         smtpd_tls_key_file = /etc/letsencrypt/live/mail/privkey.pem\n\
         smtpd_use_tls = yes\n",
        &master,
    );
    let got = probe_postfix(&probe).unwrap();
    let live = PathBuf::from("/etc/letsencrypt/live/mail");
    assert_eq!(
        got,
        PostfixTls {
            slots: vec![slot(
                &live.join("privkey.pem"),
                &live.join("fullchain.pem"),
                KeyTypeHint::Rsa
            )],
            combined: false,
            from: PostfixParams::Legacy,
            // The obsolete smtpd_use_tls still turns STARTTLS on.
            ports: [
                tls_services(),
                vec![listener("2587", None, 2587, TlsMode::StartTls)]
            ]
            .concat(),
            own_files: vec!["2587".to_owned()],
        }
    );
}

#[test]
fn postfix_eccert_adds_an_ecdsa_slot_whose_key_defaults_to_the_certificate_file() {
    require!(
        "postfix_eccert_adds_an_ecdsa_slot_whose_key_defaults_to_the_certificate_file",
        POSTCONF
    );
    let env = Env::new();
    // smtpd_tls_eckey_file is left at Postfix's default,
    // `$smtpd_tls_eccert_file`: key and chain in one file.
    let probe = postfix_dir(
        &env,
        "smtpd_tls_cert_file = /etc/tls/rsa.crt\n\
         smtpd_tls_key_file = /etc/tls/rsa.key\n\
         smtpd_tls_eccert_file = /etc/tls/ec.pem\n\
         smtpd_tls_security_level = may\n",
    );
    let got = probe_postfix(&probe).unwrap();
    let t = PathBuf::from("/etc/tls");
    assert_eq!(
        got.slots,
        vec![
            slot(&t.join("rsa.key"), &t.join("rsa.crt"), KeyTypeHint::Rsa),
            slot(&t.join("ec.pem"), &t.join("ec.pem"), KeyTypeHint::Ecdsa),
        ]
    );
    assert_eq!((got.from, got.combined), (PostfixParams::Legacy, false));
    assert_eq!(got.ports, tls_services());
}

#[test]
fn postfix_without_tls_settings_serves_no_certificate_and_only_the_services_that_ask_for_tls() {
    require!(
        "postfix_without_tls_settings_serves_no_certificate_and_only_the_services_that_ask_for_tls",
        POSTCONF
    );
    let env = Env::new();
    let probe = postfix_dir(&env, "myhostname = mail.example.test\n");
    let got = probe_postfix(&probe).unwrap();
    assert_eq!(
        got,
        PostfixTls {
            slots: vec![],
            combined: false,
            from: PostfixParams::None,
            ports: vec![
                listener("submission", None, 587, TlsMode::StartTls),
                listener("submissions", None, 465, TlsMode::Implicit),
            ],
            own_files: vec![],
        }
    );
}

#[test]
fn postfix_postscreen_on_port_25_offers_starttls_by_smtpds_level_unless_set_apart() {
    require!(
        "postfix_postscreen_on_port_25_offers_starttls_by_smtpds_level_unless_set_apart",
        POSTCONF
    );
    let master = "\
smtp      inet  n       -       y       -       1       postscreen
smtpd     pass  -       -       y       -       -       smtpd
dnsblog   unix  -       -       y       -       0       dnsblog
tlsproxy  unix  -       -       y       -       0       tlsproxy
";
    let env = Env::new();
    // postscreen_tls_security_level defaults to $smtpd_tls_security_level
    // (expanded by postconf -x).
    let probe = postfix_dir_with(&env, "smtpd_tls_security_level = may\n", master);
    assert_eq!(
        probe_postfix(&probe).unwrap().ports,
        vec![listener("smtp", None, 25, TlsMode::StartTls)]
    );
    let probe = postfix_dir_with(
        &env,
        "smtpd_tls_security_level = may\npostscreen_tls_security_level = none\n",
        master,
    );
    assert_eq!(probe_postfix(&probe).unwrap().ports, vec![]);
}

#[test]
fn postfix_probe_errors_name_the_program_or_the_file() {
    require!(
        "postfix_probe_errors_name_the_program_or_the_file",
        POSTCONF
    );
    let env = Env::new();
    // A configuration directory without main.cf: postconf's exit status.
    let missing_dir = PostfixProbe {
        postconf: prog("postconf"),
        config_dir: Some(env.path("nothing-here")),
        timeout: TIMEOUT,
    };
    let e = probe_postfix(&missing_dir).unwrap_err().to_string();
    assert!(e.contains("postconf") && e.contains("main.cf"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    // No such program.
    let no_program = PostfixProbe {
        postconf: env.path("bin/postconf"),
        config_dir: None,
        timeout: TIMEOUT,
    };
    let e = probe_postfix(&no_program).unwrap_err().to_string();
    assert!(
        e.contains("bin/postconf") && e.contains("cannot run it"),
        "{e}"
    );
    // A chain file that holds a certificate but no key before it.
    let ca = Ca::new("init-errors");
    let crt = env.path("tls/only.crt");
    write_atomic(&crt, leaf(&ca, KeyKind::P256).fullchain_pem(), 0o644);
    let probe = postfix_dir(
        &env,
        &format!("smtpd_tls_chain_files = {}\n", crt.display()),
    );
    let e = probe_postfix(&probe).unwrap_err().to_string();
    assert!(
        e.contains("smtpd_tls_chain_files")
            && e.contains("only.crt")
            && e.contains("starts with a certificate"),
        "{e}"
    );
}

/// A dovecot.conf with `ssl` settings `tls` and two login services.
fn dovecot_conf(env: &Env, tls: &str) -> DovecotProbe {
    let conf = env.path("dovecot/dovecot.conf");
    write(
        &conf,
        format!(
            "protocols = imap pop3\n\
             base_dir = {run}\n\
             state_dir = {state}\n\
             ssl = required\n\
             {tls}\
             service imap-login {{\n\
             \x20 inet_listener imap {{\n    address = 127.0.0.1\n    port = 1143\n  }}\n\
             \x20 inet_listener imaps {{\n    port = 1993\n    ssl = yes\n  }}\n\
             }}\n\
             service pop3-login {{\n\
             \x20 inet_listener pop3 {{\n    port = 0\n  }}\n\
             \x20 inet_listener pop3s {{\n    port = 1995\n    ssl = yes\n  }}\n\
             }}\n",
            run = env.path("dovecot/run").display(),
            state = env.path("dovecot/state").display(),
        ),
    );
    DovecotProbe {
        doveconf: prog("doveconf"),
        config: Some(conf),
        timeout: TIMEOUT,
    }
}

/// imap by STARTTLS, imaps and pop3s implicit; the disabled pop3 (port 0)
/// and the protocols not enabled (submission, lmtp) are not listed.
fn dovecot_ports() -> Vec<Listener> {
    vec![
        listener(
            "imap-login/imap",
            Some("127.0.0.1"),
            1143,
            TlsMode::StartTls,
        ),
        listener("imap-login/imaps", None, 1993, TlsMode::Implicit),
        listener("pop3-login/pop3s", None, 1995, TlsMode::Implicit),
    ]
}

#[test]
fn dovecot_single_certificate_files_are_read_from_the_less_than_paths_and_an_sni_block_is_named() {
    require!(
        "dovecot_single_certificate_files_are_read_from_the_less_than_paths_and_an_sni_block_is_named",
        DOVECONF
    );
    let env = Env::new();
    let (crt, key) = (env.path("tls/mail.crt"), env.path("tls/mail.key"));
    let probe = dovecot_conf(
        &env,
        &format!(
            "ssl_cert = <{}\nssl_key = <{}\n\
             local_name imap.example.test {{\n  ssl_cert = </etc/tls/imap.crt\n  ssl_key = </etc/tls/imap.key\n}}\n",
            crt.display(),
            key.display()
        ),
    );
    let got = probe_dovecot(&probe).unwrap();
    assert_eq!(
        got,
        DovecotTls {
            main: Some(DovecotPair {
                cert: DovecotSource::File(crt),
                key: DovecotSource::File(key),
            }),
            alt: None,
            ports: dovecot_ports(),
            // The SNI block's own certificate is named, not followed.
            scoped: vec!["local_name imap.example.test".to_owned()],
        }
    );
}

#[test]
fn dovecot_alt_certificate_is_a_second_pair() {
    require!("dovecot_alt_certificate_is_a_second_pair", DOVECONF);
    let env = Env::new();
    let p = |s: &str| env.path(&format!("tls/{s}"));
    let probe = dovecot_conf(
        &env,
        &format!(
            "ssl_cert = <{}\nssl_key = <{}\nssl_alt_cert = <{}\nssl_alt_key = <{}\n",
            p("rsa.crt").display(),
            p("rsa.key").display(),
            p("ec.crt").display(),
            p("ec.key").display(),
        ),
    );
    let got = probe_dovecot(&probe).unwrap();
    let pair = |c: &str, k: &str| DovecotPair {
        cert: DovecotSource::File(p(c)),
        key: DovecotSource::File(p(k)),
    };
    assert_eq!(
        got,
        DovecotTls {
            main: Some(pair("rsa.crt", "rsa.key")),
            alt: Some(pair("ec.crt", "ec.key")),
            ports: dovecot_ports(),
            scoped: vec![],
        }
    );
}

#[test]
fn dovecot_probe_error_names_doveconf_and_the_reason() {
    require!(
        "dovecot_probe_error_names_doveconf_and_the_reason",
        DOVECONF
    );
    let env = Env::new();
    let probe = DovecotProbe {
        doveconf: prog("doveconf"),
        config: Some(env.path("dovecot/missing.conf")),
        timeout: TIMEOUT,
    };
    let e = probe_dovecot(&probe).unwrap_err().to_string();
    assert!(e.contains("doveconf") && e.contains("missing.conf"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

#[test]
fn a_configuration_printer_that_hangs_is_killed_and_named() {
    let env = Env::new();
    // A stand-in for a postconf that never answers.
    let hung = env.path("bin/postconf");
    script(&hung, "exec sleep 600");
    let probe = PostfixProbe {
        postconf: hung,
        config_dir: None,
        timeout: Duration::from_secs(1),
    };
    let e = probe_postfix(&probe).unwrap_err().to_string();
    assert!(
        e.contains("bin/postconf") && e.contains("timed out after 1s"),
        "{e}"
    );
}
