//! Delegation by CNAME against a real BIND 9 on loopback serving the
//! user's zone (`example.test`, with the CNAMEs a test needs) and the
//! delegated zone (`delegated.test`): `delegation::check::cname` says ok
//! for a present CNAME, and names the name, the server and what to create
//! or fix for an absent or wrong one.

use mxkeys::delegation::check::{self, DelegationError};
use mxkeys_providers::propagation::Propagation;
use mxkeys_testsupport::bind::Bind;

const USER_ZONE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
_acme-challenge.mail IN CNAME _acme-challenge.mail.example.test.delegated.test.
_acme-challenge.wrong IN CNAME elsewhere.delegated.test.
_acme-challenge.plain IN TXT \"not a cname\"
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
