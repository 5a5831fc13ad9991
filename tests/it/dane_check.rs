//! `mxkeys dane check` run as users run it, in the DNSSEC test bed of
//! `testsupport::dnssec`: BIND signing example.test on 127.0.0.1:53,
//! Unbound validating on 127.0.0.2:53 (the namespace's resolv.conf names
//! it, so mxkeys asks it as "the system's resolver"), and a Postfix
//! receiver serving STARTTLS on 127.0.0.1:25 with a leaf for
//! mail.example.test and its intermediate.
//!
//! Every check has its "can fail" half: the same bed with a wrong record,
//! a record of another CA, or an unsigned zone exits 1 and says why.
//!
//! Needs root, util-linux, iproute2, bind9, bind9-dnsutils, unbound,
//! postfix and openssl: without them a test is skipped loudly, or fails
//! with `CI=true`.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::dnssec::{self, KEY_NAME, TTL, UNSIGNED_ZONE};
use common::servers::{MAIL, OPENSSL, POSTFIX, output_within};
use common::*;

const OWNER: &str = "_25._tcp.mail.example.test";

/// The inner test's full name in this binary (`dane_check::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

#[test]
fn dane_check_passes_with_a_matching_3_1_1_record_and_fails_naming_host_port_and_both_hashes_with_a_wrong_one()
 {
    dnssec::run_in_namespace(
        "dane_check_passes_with_a_matching_3_1_1_record_and_fails_naming_host_port_and_both_hashes_with_a_wrong_one",
        &inner("inside_3_1_1"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn dane_check_passes_with_a_2_1_1_record_of_the_issuer_and_fails_with_one_of_another_ca() {
    dnssec::run_in_namespace(
        "dane_check_passes_with_a_2_1_1_record_of_the_issuer_and_fails_with_one_of_another_ca",
        &inner("inside_2_1_1"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn dane_check_fails_on_an_unsigned_zone_even_when_the_record_matches() {
    dnssec::run_in_namespace(
        "dane_check_fails_on_an_unsigned_zone_even_when_the_record_matches",
        &inner("inside_unsigned_zone"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn dane_check_fails_naming_the_address_that_serves_nothing_on_a_dane_port() {
    dnssec::run_in_namespace(
        "dane_check_fails_naming_the_address_that_serves_nothing_on_a_dane_port",
        &inner("inside_unreachable"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn a_check_against_the_wanted_records_passes_only_when_the_served_key_is_one_of_them() {
    dnssec::run_in_namespace(
        "a_check_against_the_wanted_records_passes_only_when_the_served_key_is_one_of_them",
        &inner("inside_against_wanted"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn dane_check_exits_2_naming_an_unknown_target_a_target_without_dane_or_none_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("mxkeys.toml");
    write(
        &config,
        format!(
            "state_dir = \"{d}/state\"\n[[target]]\nname = \"mail\"\ndomains = [\"{MAIL}\"]\n\
             combined = \"{d}/chain.pem\"\n"
        ),
    );
    for (args, why) in [
        (
            &["dane", "check"][..],
            "no target has a [target.dane] table",
        ),
        (
            &["dane", "check", "mail"][..],
            "target mail: no [target.dane] table",
        ),
        (&["dane", "check", "nope"][..], "no target named \"nope\""),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mxkeys"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("MXKEYS_CONFIG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
}

// ---------------------------------------------------------------------------
// Inside the namespace
// ---------------------------------------------------------------------------

#[test]
#[ignore = "run inside a namespace by dane_check_passes_with_a_matching_3_1_1_record_..."]
fn inside_3_1_1() {
    let bed = Bed::start();
    let config = bed.config(MAIL);
    let good = dnssec::tlsa_3_1_1(&bed.leaf.der);
    let wrong = dnssec::tlsa_3_1_1(&bed.other.der);

    bed.zone.set_tlsa(OWNER, &[&good]);
    let (ok, out) = dane_check(&config, &bed);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "mail.example.test port 25 127.0.0.1: ok, matches {OWNER} TLSA {good}"
        )),
        "{out}"
    );

    bed.zone.set_tlsa(OWNER, &[&wrong]);
    let (ok, out) = dane_check(&config, &bed);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "mail.example.test port 25 127.0.0.1: MISMATCH: serves a key whose record is {good}; \
             {OWNER} publishes {wrong}"
        )),
        "{out}"
    );
}

#[test]
#[ignore = "run inside a namespace by dane_check_passes_with_a_2_1_1_record_..."]
fn inside_2_1_1() {
    let bed = Bed::start();
    let config = bed.config(MAIL);
    let issuer = tlsa_2_1_1(&bed.leaf.chain[0]);
    let foreign = tlsa_2_1_1(&Ca::new("foreign").issue(&LeafSpec::new(&[MAIL])).chain[0]);

    bed.zone.set_tlsa(OWNER, &[&issuer]);
    let (ok, out) = dane_check(&config, &bed);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("ok, matches {OWNER} TLSA {issuer}")),
        "{out}"
    );

    bed.zone.set_tlsa(OWNER, &[&foreign]);
    let (ok, out) = dane_check(&config, &bed);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "MISMATCH: serves a key whose record is {}; {OWNER} publishes {foreign}",
            dnssec::tlsa_3_1_1(&bed.leaf.der)
        )),
        "{out}"
    );
}

#[test]
#[ignore = "run inside a namespace by dane_check_fails_on_an_unsigned_zone_..."]
fn inside_unsigned_zone() {
    let bed = Bed::start();
    let host = format!("mail.{UNSIGNED_ZONE}");
    let owner = format!("_25._tcp.{host}");
    let config = bed.config(&host);
    // A record that matches what is served: only the missing signatures
    // can fail the check.
    let good = dnssec::tlsa_3_1_1(&bed.leaf.der);
    bed.zone.update_zone(
        UNSIGNED_ZONE,
        &format!("update add {owner} {TTL} TLSA {good}"),
    );
    bed.zone
        .wait("Unbound to answer the unsigned TLSA record", || {
            let out = bed.zone.resolve(&["TLSA", &owner]);
            (!dnssec::answer(&out, "TLSA").is_empty()).then_some(())
        });
    let (ok, out) = dane_check(&config, &bed);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "{host} port 25: INSECURE: TLSA {owner}: not DNSSEC-validated"
        )),
        "{out}"
    );
}

#[test]
#[ignore = "run inside a namespace by dane_check_fails_naming_the_address_that_serves_nothing_..."]
fn inside_unreachable() {
    let bed = Bed::start();
    // Nothing listens on 465; its record is the right one.
    let config = bed.config_with(MAIL, "ports = [25, 465]\n");
    let good = dnssec::tlsa_3_1_1(&bed.leaf.der);
    bed.zone.set_tlsa(OWNER, &[&good]);
    bed.zone.set_tlsa("_465._tcp.mail.example.test", &[&good]);
    let (ok, out) = dane_check(&config, &bed);
    assert!(!ok, "{out}");
    assert!(
        out.contains("mail.example.test port 25 127.0.0.1: ok, matches"),
        "{out}"
    );
    assert!(
        out.contains("mail.example.test port 465 127.0.0.1: UNREACHABLE: cannot connect"),
        "{out}"
    );
}

#[test]
#[ignore = "run inside a namespace by a_check_against_the_wanted_records_..."]
fn inside_against_wanted() {
    use mxkeys::dane::check::{Outcome, check_endpoint_against};
    use mxkeys::dane::tlsa::Tlsa;

    let bed = Bed::start();
    let good: Tlsa = dnssec::tlsa_3_1_1(&bed.leaf.der).parse().unwrap();
    let wrong: Tlsa = dnssec::tlsa_3_1_1(&bed.other.der).parse().unwrap();
    // What DNS publishes does not count here: only the wrong record is.
    bed.zone.set_tlsa(OWNER, &[&wrong.to_string()]);
    let rt = mxkeys::runtime().unwrap();
    let check = |records: &[Tlsa]| rt.block_on(check_endpoint_against(MAIL, 25, None, records));

    let both = check(&[wrong, good]);
    assert!(both.ok(), "{both:?}");
    assert_eq!(both.results[0].outcome, Outcome::Match { record: good });
    let old_only = check(&[wrong]);
    assert!(!old_only.ok(), "{old_only:?}");
    assert!(
        matches!(&old_only.results[0].outcome, Outcome::Mismatch { served, .. } if *served == good.to_string()),
        "{old_only:?}"
    );
    assert!(!check(&[]).ok());
}

/// The signed zone, a Postfix receiver on 127.0.0.1:25 serving a fresh
/// leaf for mail.example.test and its intermediate, and a leaf with
/// another key from the same CA.
struct Bed(dnssec::ReceiverBed);

impl std::ops::Deref for Bed {
    type Target = dnssec::ReceiverBed;
    fn deref(&self) -> &dnssec::ReceiverBed {
        &self.0
    }
}

impl Bed {
    fn start() -> Bed {
        Bed(dnssec::ReceiverBed::start("dane-check"))
    }

    /// A configuration with one DANE target for `host` (port 25, the
    /// default), its records written by the bed's BIND, and no
    /// `resolver`: mxkeys asks the system's, Unbound.
    fn config(&self, host: &str) -> PathBuf {
        self.config_with(host, "")
    }

    /// Like [`Bed::config`], with `dane` (lines) added to `[target.dane]`.
    fn config_with(&self, host: &str, dane: &str) -> PathBuf {
        let path = self.dir.path().join("mxkeys.toml");
        let d = self.dir.path().display();
        write(
            &path,
            format!(
                r#"state_dir = "{d}/state"

[dns.bind]
type = "rfc2136"
server = "{}:53"
zone = "example.test"
tsig_name = "{KEY_NAME}"
tsig_secret_file = "{}"

[[target]]
name = "mail"
domains = ["{host}"]
combined = "{d}/target/chain.pem"

[target.dane]
dns = "bind"
{dane}"#,
                dnssec::AUTHORITATIVE,
                self.zone.dir.join("tsig.key").display(),
            ),
        );
        path
    }
}

/// `mxkeys --config CONFIG dane check`: (exit status 0, stdout and stderr).
fn dane_check(config: &Path, bed: &Bed) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxkeys"));
    cmd.arg("--config")
        .arg(config)
        .args(["dane", "check"])
        .env_remove("MXKEYS_CONFIG");
    let out: Output = output_within(cmd, Duration::from_secs(60)).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("mxkeys dane check (exit {:?}):\n{text}", out.status.code());
    assert!(!text.contains("panicked"), "{text}");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0 | 1)),
        "exit {code:?}, expected 0 or 1:\n{text}\n{}",
        bed.zone.logs()
    );
    (code == Some(0), text)
}

/// The `2 1 1` TLSA data for a CA certificate (DER): SHA-256 of its
/// SubjectPublicKeyInfo.
fn tlsa_2_1_1(ca_der: &[u8]) -> String {
    dnssec::tlsa_3_1_1(ca_der).replacen("3 1 1", "2 1 1", 1)
}
