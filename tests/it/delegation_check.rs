//! Delegation by CNAME against a real BIND 9 on loopback serving the
//! user's zone (`example.test`, with the CNAMEs a test needs) and the
//! delegated zone (`delegated.test`): `delegation::check::cname` says ok
//! for a present CNAME, and names the name, the server and what to create
//! or fix for an absent or wrong one; `mxkeys dns delegation` prints the
//! CNAMEs of a delegating provider and one status line per name (ok,
//! missing, wrong, unsigned for a TLSA name in unsigned zones), with its
//! exit codes; an ACME DNS-01 order through a delegating provider is not
//! created at the CA while a challenge CNAME is missing, and with the
//! CNAME in place the value is written once mapped (at
//! `N.delegated.test`).

use std::path::PathBuf;

use super::dns::{mxkeys, text};
use mxkeys::delegation::check::{self, DelegationError};
use mxkeys_providers::propagation::Propagation;
use mxkeys_testsupport::bind::{Bind, KEY_NAME};
use mxkeys_testsupport::fake_acme::FakeAcme;

const USER_ZONE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
_acme-challenge.mail IN CNAME _acme-challenge.mail.example.test.delegated.test.
_acme-challenge.wrong IN CNAME elsewhere.delegated.test.
_acme-challenge.plain IN TXT \"not a cname\"
_25._tcp.mail IN CNAME _25._tcp.mail.example.test.delegated.test.
_smtp._tls.mail IN CNAME _smtp._tls.mail.example.test.delegated.test.
";

fn propagation(bind: &Bind) -> Propagation {
    Propagation {
        nameservers: Some(vec![bind.addr()]),
        ..Propagation::default()
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    mxkeys::runtime().expect("a runtime").block_on(f)
}

#[test]
fn a_cname_to_exactly_the_target_on_every_server_is_ok() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let prop = propagation(&bind);
    let got = run(check::cname(
        &prop,
        "_acme-challenge.MAIL.example.test.",
        "_acme-challenge.mail.example.test.delegated.test",
    ));
    assert_eq!(got, Ok(()));
}

#[test]
fn a_missing_cname_names_the_name_the_server_and_the_line_to_create() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let prop = propagation(&bind);
    for name in [
        "_acme-challenge.absent.example.test",
        "_acme-challenge.plain.example.test",
    ] {
        let target = format!("{name}.delegated.test");
        let e = run(check::cname(&prop, name, &target)).unwrap_err();
        assert!(matches!(e, DelegationError::Missing { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "{name}: no CNAME on {}; create \"{name}. IN CNAME {target}.\"",
                bind.addr()
            )
        );
    }
}

#[test]
fn a_cname_pointing_elsewhere_names_both_targets() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let prop = propagation(&bind);
    let name = "_acme-challenge.wrong.example.test";
    let target = format!("{name}.delegated.test");
    let e = run(check::cname(&prop, name, &target)).unwrap_err();
    assert!(matches!(e, DelegationError::Wrong { .. }), "{e}");
    let text = e.to_string();
    for part in [
        name,
        "elsewhere.delegated.test.",
        &target,
        &bind.addr().to_string(),
    ] {
        assert!(text.contains(part), "no {part:?} in {text}");
    }
}

#[test]
fn a_server_that_does_not_answer_is_a_lookup_error_naming_the_name() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let mut prop = propagation(&bind);
    // A port the pool gave and nothing listens on.
    let silent = mxkeys_testsupport::ports::free_port();
    prop.nameservers = Some(vec![std::net::SocketAddr::from(([127, 0, 0, 1], silent))]);
    let name = "_acme-challenge.mail.example.test";
    let e = run(check::cname(&prop, name, &format!("{name}.delegated.test"))).unwrap_err();
    assert!(matches!(e, DelegationError::Lookup { .. }), "{e}");
    assert!(e.to_string().starts_with(name), "{e}");
    drop(bind);
}

/// A configuration whose `[dns.deleg]` delegates to `delegated.test`, for
/// an `acme` source with `names`, and a target with DANE when `dane`.
fn write_config(bind: &Bind, names: &[&str], dane: bool) -> PathBuf {
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let mut text = format!(
        "state_dir = \"state\"\n\
         [dns.deleg]\ntype = \"manual\"\ndelegate_to = \"delegated.test\"\nnameservers = [\"{addr}\"]\n\
         [dns.direct]\ntype = \"manual\"\n\
         [[source]]\ntype = \"acme\"\nname = \"le\"\ndomains = [{names}]\nchallenge = \"dns-01\"\ndns = \"deleg\"\n",
        addr = bind.addr(),
        names = names.join(", ")
    );
    if dane {
        text.push_str("[[target]]\nname = \"mx\"\ndomains = [\"mail.example.test\"]\nkey = \"k\"\n[target.dane]\ndns = \"deleg\"\n");
    }
    let path = bind.dir().join("mxkeys.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn dns_delegation_prints_the_cnames_and_exits_0_when_every_one_is_in_place() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let config = write_config(&bind, &["mail.example.test"], false);
    let out = mxkeys(&config, &["dns", "delegation"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("; [dns.deleg] writes under delegated.test"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "_acme-challenge.mail.example.test. IN CNAME _acme-challenge.mail.example.test.delegated.test."
        ),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "ok       _acme-challenge.mail.example.test"),
        "{stdout}"
    );
}

#[test]
fn dns_delegation_reports_each_missing_and_wrong_cname_by_name_and_exits_1() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let config = write_config(
        &bind,
        &[
            "mail.example.test",
            "absent.example.test",
            "wrong.example.test",
        ],
        false,
    );
    let out = mxkeys(&config, &["dns", "delegation", "deleg"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    let status = |name: &str| {
        stdout
            .lines()
            .find(|l| !l.starts_with(';') && l.contains(&format!("{name}:")) || l.ends_with(name))
            .unwrap_or_else(|| panic!("no status line for {name} in:\n{stdout}"))
            .to_owned()
    };
    assert!(status("_acme-challenge.mail.example.test").starts_with("ok "));
    let missing = status("_acme-challenge.absent.example.test");
    assert!(missing.starts_with("missing "), "{missing}");
    assert!(
        missing.contains("create \"_acme-challenge.absent.example.test. IN CNAME _acme-challenge.absent.example.test.delegated.test.\""),
        "{missing}"
    );
    let wrong = status("_acme-challenge.wrong.example.test");
    assert!(wrong.starts_with("wrong "), "{wrong}");
    assert!(wrong.contains("elsewhere.delegated.test."), "{wrong}");

    // --no-check asks nothing and prints the lines only.
    let out = mxkeys(&config, &["dns", "delegation", "--no-check"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("_acme-challenge.absent.example.test. IN CNAME"),
        "{stdout}"
    );
    assert!(!stdout.contains("missing"), "{stdout}");
}

#[test]
fn a_tlsa_name_in_unsigned_zones_is_reported_unsigned_even_with_its_cname() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let config = write_config(&bind, &["mail.example.test"], true);
    let out = mxkeys(&config, &["dns", "delegation"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("both zones must be DNSSEC-signed"),
        "{stdout}"
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("unsigned "))
        .unwrap_or_else(|| panic!("no unsigned line in:\n{stdout}"));
    assert!(line.contains("_25._tcp.mail.example.test"), "{line}");
}

#[test]
fn dns_delegation_exits_2_for_an_unknown_provider_or_one_without_delegate_to() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let config = write_config(&bind, &["mail.example.test"], false);
    for (provider, says) in [
        ("nosuch", "no [dns.nosuch]"),
        ("direct", "[dns.direct] has no delegate_to"),
    ] {
        let out = mxkeys(&config, &["dns", "delegation", provider]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
        assert!(stderr.contains(says), "{stderr}");
    }
}

/// `[acme]` at the fake CA, `[dns.deleg]` through RFC 2136 with
/// `delegate_to = "delegated.test"`, a DNS-01 source for `names` and a
/// target.
fn write_acme_config(bind: &Bind, ca: &FakeAcme, names: &[&str]) -> PathBuf {
    let dir = bind.dir();
    let names: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    let text = format!(
        "state_dir = \"{state}\"\n\
         [acme]\ndirectory = \"{url}\"\nca_bundle = \"{bundle}\"\n\
         [dns.deleg]\ntype = \"rfc2136\"\nserver = \"{addr}\"\ntsig_name = \"{KEY_NAME}\"\ntsig_secret_file = \"{tsig}\"\n\
         delegate_to = \"delegated.test\"\nnameservers = [\"{addr}\"]\npropagation_interval = \"100ms\"\npropagation_timeout = \"10s\"\n\
         [[source]]\ntype = \"acme\"\nname = \"le\"\ndomains = [{names}]\nchallenge = \"dns-01\"\ndns = \"deleg\"\n\
         [[target]]\nname = \"mx\"\ndomains = [{names}]\ncombined = \"{out}\"\n",
        state = dir.join("state").display(),
        url = ca.url,
        bundle = ca.https_ca.display(),
        addr = bind.addr(),
        tsig = dir.join("tsig.key").display(),
        names = names.join(", "),
        out = dir.join("mx.pem").display(),
    );
    let path = dir.join("mxkeys.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_missing_challenge_cname_fails_the_order_before_the_ca_hears_of_it() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let ca = FakeAcme::start(&bind.dir().join("ca"));
    let config = write_acme_config(&bind, &ca, &["mail.example.test", "absent.example.test"]);
    let out = mxkeys(&config, &["renew"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "_acme-challenge.absent.example.test: no CNAME on {}; create \"_acme-challenge.absent.example.test. IN CNAME _acme-challenge.absent.example.test.delegated.test.\"",
            bind.addr()
        )),
        "{stderr}"
    );
    assert!(
        ca.orders().is_empty(),
        "an order reached the CA:\n{}",
        ca.log()
    );
    assert!(
        bind.txt_values("_acme-challenge.mail.example.test.delegated.test")
            .is_empty()
    );
}

#[test]
fn with_the_cname_in_place_the_challenge_is_written_once_mapped_into_the_delegated_zone() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let ca = FakeAcme::start(&bind.dir().join("ca"));
    let config = write_acme_config(&bind, &ca, &["mail.example.test"]);
    let serial = bind.serial("delegated.test");
    let out = mxkeys(&config, &["renew"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(ca.issued().len(), 1, "{}", ca.log());
    // Written (and removed again) in the delegated zone; never at the end
    // of the chain mapped a second time.
    assert!(bind.serial("delegated.test") > serial);
    let logged = std::fs::read_to_string(bind.dir().join("named.log")).unwrap_or_default();
    assert!(
        !logged.contains("delegated.test.delegated.test"),
        "a name was mapped twice:\n{logged}"
    );
}

#[test]
fn the_tls_rpt_record_is_written_through_its_cname_and_not_at_all_without_one() {
    let Some(bind) = Bind::start_split(USER_ZONE) else {
        return;
    };
    let dir = bind.dir();
    let config = dir.join("mxkeys.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n\
             [dns.deleg]\ntype = \"rfc2136\"\nserver = \"{addr}\"\ntsig_name = \"{KEY_NAME}\"\ntsig_secret_file = \"{tsig}\"\n\
             delegate_to = \"delegated.test\"\nnameservers = [\"{addr}\"]\n\
             [tls_rpt]\nrua = [\"mailto:tlsrpt@example.test\"]\ndomains = [\"mail.example.test\", \"absent.example.test\"]\ndns = \"deleg\"\n",
            state = dir.join("state").display(),
            addr = bind.addr(),
            tsig = dir.join("tsig.key").display(),
        ),
    )
    .unwrap();
    let out = mxkeys(&config, &["sync"]);
    let (stdout, stderr) = text(&out);
    assert!(
        stderr.contains(&format!(
            "tls-rpt: publishing _smtp._tls.absent.example.test TXT: _smtp._tls.absent.example.test: no CNAME on {}",
            bind.addr()
        )),
        "{stdout}\n{stderr}"
    );
    assert!(
        bind.txt_values("_smtp._tls.absent.example.test.delegated.test")
            .is_empty()
    );
    assert_eq!(
        bind.txt_values("_smtp._tls.mail.example.test.delegated.test"),
        vec!["v=TLSRPTv1; rua=mailto:tlsrpt@example.test".to_owned()],
        "{stdout}\n{stderr}"
    );
}
