//! Delegation by CNAME (`[dns.NAME] delegate_to`, issue 21) end to end:
//! one real BIND serves the user's zone `example.test`, which holds the
//! one-time CNAMEs and for which mxkeys has no key (its key cannot even
//! read it), and the zone `delegated.test`, which mxkeys writes with its
//! TSIG key ([`Bind::start_split`]). pebble and dkimpy resolve through that
//! BIND with recursion, so they chase the CNAMEs as a CA and a receiver
//! would.
//!
//! The provider has no `zone`: its `nameservers` (the BIND) serve every
//! name, so the delegation checks ask the user's zone's server, and the
//! RFC 2136 client finds `delegated.test` by an SOA query for each target.
//!
//! What is shown: a wildcard DNS-01 order whose values land at
//! `_acme-challenge.NAME.delegated.test` only; a DKIM rotation through the
//! selector slots `mx1r`/`mx2r`, each key verified by dkimpy through its
//! CNAME; a missing `_acme-challenge` CNAME refused before any order.
//! `mxkeys dns delegation` agrees with each (the slot CNAMEs ok, the
//! missing one named). `example.test`'s SOA serial never moves: mxkeys
//! never writes there.
//!
//! Without BIND, pebble, dkimpy or openssl a test is skipped naming the
//! Debian package; with `CI=true` it fails.

use mxkeys_testsupport as common;

use std::path::Path;
use std::process::Command;

use common::bind::{Bind, KEY_NAME};
use common::dkim_tools::{DKIMPY, Dkimpy, OPENSSL, describe, message, mx, record_of_key_file};
use common::servers::{Need, Pebble, require_programs};
use common::{Env, q, qp};

use crate::acme::{Acme, Installed, dns_source, issued, requests, target};
use crate::dkim::{
    Key, assert_fails, assert_verifies, has, key, keys, rotate_counting_reloads, rotate_until,
};

/// The zone mxkeys writes.
const DELEGATED: &str = "delegated.test";

/// `named-journalprint`, to read which names BIND's dynamic updates
/// touched.
const JOURNALPRINT: &[Need] = &[("named-journalprint", "bind9-utils")];

/// The user's zone: the ACME tests' zone (every name at 127.0.0.1) plus
/// `extra` lines (the CNAMEs the user created).
fn user_zone(extra: &str) -> String {
    format!("{}{extra}", crate::acme::ZONE)
}

/// `NAME. IN CNAME NAME.delegated.test.`, as a line of the user's zone.
fn cname_line(name: &str) -> String {
    let relative = name
        .strip_suffix(".example.test")
        .expect("a name in example.test");
    format!("{relative} IN CNAME {name}.{DELEGATED}.\n")
}

/// `[dns.bind]`: RFC 2136 to the BIND with mxkeys' key, delegating to
/// `delegated.test`, every name checked at the BIND.
fn provider_table(bind: &Bind, timeout: &str) -> String {
    let dns = bind.addr();
    format!(
        "[dns.bind]\n\
         type = \"rfc2136\"\n\
         server = \"{dns}\"\n\
         tsig_name = \"{KEY_NAME}\"\n\
         tsig_secret_file = {tsig}\n\
         nameservers = [\"{dns}\"]\n\
         resolver = \"{dns}\"\n\
         delegate_to = \"{DELEGATED}\"\n\
         propagation_interval = \"200ms\"\n\
         propagation_timeout = \"{timeout}\"\n",
        tsig = qp(&bind.dir().join("tsig.key")),
    )
}

/// The owner names of the TXT records BIND's dynamic updates added to
/// `delegated.test` (from its journal), lower case, without the final dot.
fn txt_names_added(bind: &Bind) -> Vec<String> {
    let journal = bind.dir().join(format!("{DELEGATED}.zone.jnl"));
    if !journal.exists() {
        return Vec::new();
    }
    let out = Command::new("named-journalprint")
        .arg(&journal)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "named-journalprint {}: {}",
        journal.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 4 && f[0] == "add" && f[4] == "TXT")
                .then(|| f[1].trim_end_matches('.').to_ascii_lowercase())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

// ---------------------------------------------------------------------------
// ACME DNS-01
// ---------------------------------------------------------------------------

/// pebble and a split BIND whose user zone has `extra` lines.
fn start_acme(test: &str, extra: &str) -> Option<Acme> {
    if !require_programs(test, &[crate::acme::NEEDS, JOURNALPRINT]) {
        return None;
    }
    let bind = Bind::start_split(&user_zone(extra))?;
    let env = Env::new();
    let pebble = Pebble::start_with_dns(&env.path("pebble"), bind.addr());
    Some(Acme { pebble, bind, env })
}

/// The configuration: `[acme]` at pebble, the delegating `[dns.bind]`, the
/// DNS-01 source `wild` for `names` and a target writing `out`.
fn write_acme_config(acme: &Acme, names: &[&str], out: &Path, timeout: &str) {
    acme.env.write_config_raw(&format!(
        "state_dir = {state}\n\n\
         [acme]\n\
         directory = {dir}\n\
         email = \"admin@example.test\"\n\
         ca_bundle = {ca}\n\n\
         {dns}\n{source}\n{target}",
        state = qp(&acme.env.state),
        dir = q(&acme.pebble.url),
        ca = qp(&acme.pebble.https_ca),
        dns = provider_table(&acme.bind, timeout),
        source = dns_source("wild", names, ""),
        target = target("web", names, out, ""),
    ));
}

const CHALLENGE: &str = "_acme-challenge.mail.example.test";

/// A wildcard order (`*.mail.example.test` and `mail.example.test`, two
/// values at one challenge name) through a provider delegating to
/// `delegated.test`: the values are written at
/// `_acme-challenge.mail.example.test.delegated.test` and nowhere else,
/// pebble validates both through the user's CNAME, the certificate is
/// installed, the values are gone afterwards, and the user's zone was
/// never written.
#[test]
fn a_wildcard_dns01_order_through_a_delegating_provider_writes_only_the_delegated_zone() {
    let Some(acme) = start_acme(
        "a_wildcard_dns01_order_through_a_delegating_provider_writes_only_the_delegated_zone",
        &cname_line(CHALLENGE),
    ) else {
        return;
    };
    let names = ["mail.example.test", "*.mail.example.test"];
    let out = acme.env.out.join("wild.pem");
    write_acme_config(&acme, &names, &out, "30s");
    let user_serial = acme.bind.serial("example.test");
    let delegated_serial = acme.bind.serial(DELEGATED);
    let at = format!("{CHALLENGE}.{DELEGATED}");

    let run = acme.renew(&[]);
    assert_eq!(run.code, 0, "{}", acme.context(&run));
    let fp = issued(&run, "wild", "no certificate yet");
    let installed = Installed::read(&out);
    assert_eq!(installed.fp(), fp);
    installed.assert_names(&names);
    installed.assert_from_pebble(&acme, "wild");

    // The two values were added at the delegated name, and only there.
    assert_eq!(
        txt_names_added(&acme.bind),
        vec![at.clone()],
        "the TXT records mxkeys added in {DELEGATED}"
    );
    assert!(
        acme.bind.serial(DELEGATED) >= delegated_serial + 2,
        "the values were not added and removed in {DELEGATED}"
    );
    // Removed after the order.
    assert!(
        acme.bind.txt_values(&at).is_empty(),
        "challenge values left at {at}"
    );
    // The user's zone: never written, its CNAME as the user made it.
    assert_eq!(
        acme.bind.serial("example.test"),
        user_serial,
        "example.test was written"
    );
    assert_eq!(acme.bind.short("CNAME", CHALLENGE), vec![format!("{at}.")]);
}

/// The `_acme-challenge` CNAME is missing: `mxkeys renew` fails before
/// asking pebble for an order, with one line naming the challenge name and
/// the CNAME to create; neither zone is written, and `dns delegation`
/// reports it missing.
#[test]
fn a_missing_acme_challenge_cname_is_reported_before_any_order() {
    let Some(acme) = start_acme(
        "a_missing_acme_challenge_cname_is_reported_before_any_order",
        "",
    ) else {
        return;
    };
    let names = ["mail.example.test", "*.mail.example.test"];
    let out = acme.env.out.join("wild.pem");
    // Short: without the check, the wait for values nobody can see ends
    // this soon (after the order was placed).
    write_acme_config(&acme, &names, &out, "3s");
    let user_serial = acme.bind.serial("example.test");
    let delegated_serial = acme.bind.serial(DELEGATED);

    let run = acme.renew(&[]);
    assert_ne!(run.code, 0, "{}", acme.context(&run));
    let want = format!("{CHALLENGE}. IN CNAME {CHALLENGE}.{DELEGATED}.");
    let all = format!("{}\n{}", run.stdout, run.stderr);
    let line = all
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("no line names the CNAME {want:?}\n{}", acme.context(&run)));
    // The name itself, before what to create.
    let before = line.split(&want).next().unwrap_or_default();
    assert!(
        before.contains(CHALLENGE),
        "the line does not name {CHALLENGE} first: {line:?}"
    );
    assert_eq!(
        requests(&acme.pebble_log(), "POST /order-plz"),
        0,
        "pebble was asked for an order\n{}",
        acme.context(&run)
    );
    assert!(!out.exists(), "a certificate was installed");
    assert_eq!(acme.bind.serial("example.test"), user_serial);
    assert_eq!(
        acme.bind.serial(DELEGATED),
        delegated_serial,
        "{DELEGATED} was written"
    );
    assert!(txt_names_added(&acme.bind).is_empty());

    // `dns delegation` says the same, and exits 1.
    let check = acme.env.run(&["dns", "delegation", "bind"]);
    assert_eq!(check.code, 1, "{}", check.describe());
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("missing ") && l.contains(&want)),
        "{}",
        check.describe()
    );
}

// ---------------------------------------------------------------------------
// DKIM through selector slots
// ---------------------------------------------------------------------------

const DOMAIN: &str = "example.test";

fn dkim_name(selector: &str) -> String {
    format!("{selector}._domainkey.{DOMAIN}")
}

/// Where the record of `selector` lives under delegation.
fn dkim_target(selector: &str) -> String {
    format!("{}.{DELEGATED}", dkim_name(selector))
}

/// The key `k` is published at its delegated name with exactly the record
/// its key file needs (computed by openssl).
#[track_caller]
fn assert_published(bind: &Bind, k: &Key) {
    assert_eq!(record_of_key_file(&k.file), k.record, "{k:?}");
    assert_eq!(
        bind.txt_values(&dkim_target(&k.selector)),
        vec![k.record.clone()],
        "{k:?}"
    );
}

/// A DKIM domain whose `[dkim] dns` provider delegates: `dns delegation`
/// finds the two slot CNAMEs in place; with no `selector` set the keys
/// take the slots `mx1r` then `mx2r` (after a forced
/// rotation), each record lands at `SLOT._domainkey.example.test.
/// delegated.test`, mail signed with each key verifies with dkimpy through
/// the user's CNAME, and a third rotation, once `mx1r`'s old key is
/// deleted, returns to `mx1r` with a new key that verifies too. The user's
/// zone is never written.
#[test]
fn dkim_rotation_through_delegated_selector_slots_verifies_with_dkimpy() {
    let test = "dkim_rotation_through_delegated_selector_slots_verifies_with_dkimpy";
    if !require_programs(test, &[crate::acme::NEEDS, DKIMPY, OPENSSL, JOURNALPRINT]) {
        return;
    }
    let zone = user_zone(&format!(
        "{}{}",
        cname_line(&dkim_name("mx1r")),
        cname_line(&dkim_name("mx2r"))
    ));
    let Some(bind) = Bind::start_split(&zone) else {
        return;
    };
    let work = bind.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("mxkeys.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n\
             {dns}\
             [dkim]\n\
             domains = [\"{DOMAIN}\"]\n\
             algorithms = [\"rsa-2048\"]\n\
             dns = \"bind\"\n\
             key_dir = \"keys\"\n\
             signer = \"opendkim\"\n\
             signer_dir = \"signer\"\n\
             rotate_every = \"1h\"\n\
             ttl = 300\n\
             lead = \"1s\"\n\
             drain = \"2s\"\n\
             revoke_hold = \"2s\"\n\
             reload = [\"sh\", \"-c\", \"echo reload >> {reloads}\"]\n",
            dns = provider_table(&bind, "10s"),
            reloads = work.join("reloads.log").display(),
        ),
    )
    .unwrap();
    let user_serial = bind.serial("example.test");
    let py = Dkimpy::new(&work.join("py"), bind.port);

    // `dns delegation` names exactly the two slot CNAMEs, found in place.
    let check = mx(&config, &["dns", "delegation", "bind"]);
    let stdout = String::from_utf8_lossy(&check.stdout).into_owned();
    assert_eq!(check.status.code(), Some(0), "{}", describe(&check));
    for slot in ["mx1r", "mx2r"] {
        let (name, at) = (dkim_name(slot), dkim_target(slot));
        assert!(
            stdout.contains(&format!("{name}. IN CNAME {at}.")),
            "{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("ok ") && l.ends_with(&name)),
            "{stdout}"
        );
    }

    // The first key takes slot 1, and signs once its record is seen.
    let mut transcript = rotate_until(&config, &work, "mx1r active", |ks| {
        has(ks, "mx1r", "active")
    });
    let k1 = key(&work, "rsa-2048", "active");
    assert_eq!(k1.selector, "mx1r", "{transcript}");
    assert_published(&bind, &k1);
    let m1 = py.sign(&k1.file, DOMAIN, "mx1r", &message(DOMAIN, "slot-1"));
    assert_verifies(&py, &m1, "mx1r", "rsa-sha256");
    let tampered = String::from_utf8(m1.clone())
        .unwrap()
        .replace("A second line", "A forged line");
    assert_fails(&py, tampered.as_bytes(), "mx1r");

    // A forced rotation: the successor takes slot 2.
    let out = rotate_counting_reloads(&config, &work, &["dkim", "rotate", "--force"]);
    assert!(
        out.contains(&format!("{DOMAIN}: new rsa-2048 key mx2r")),
        "{out}"
    );
    transcript.push_str(&out);
    transcript.push_str(&rotate_until(&config, &work, "mx2r active", |ks| {
        has(ks, "mx2r", "active")
    }));
    let k2 = key(&work, "rsa-2048", "active");
    assert_eq!(k2.selector, "mx2r");
    assert_published(&bind, &k2);
    let m2 = py.sign(&k2.file, DOMAIN, "mx2r", &message(DOMAIN, "slot-2"));
    assert_verifies(&py, &m2, "mx2r", "rsa-sha256");

    // mx1r drains, is revoked, then deleted with its key file.
    transcript.push_str(&rotate_until(&config, &work, "mx1r deleted", |ks| {
        !ks.iter().any(|k| k.selector == "mx1r")
    }));
    assert!(!k1.file.exists(), "{} still exists", k1.file.display());
    assert!(bind.txt_values(&dkim_target("mx1r")).is_empty());
    assert_fails(&py, &m1, "mx1r");

    // The third rotation returns to slot 1, with a new key.
    let out = rotate_counting_reloads(&config, &work, &["dkim", "rotate", "--force"]);
    assert!(
        out.contains(&format!("{DOMAIN}: new rsa-2048 key mx1r")),
        "{out}\ntranscript:\n{transcript}"
    );
    rotate_until(&config, &work, "the new mx1r active", |ks| {
        has(ks, "mx1r", "active")
    });
    let k3 = key(&work, "rsa-2048", "active");
    assert_eq!(k3.selector, "mx1r");
    assert_ne!(k3.record, k1.record, "slot 1 reused the old key");
    assert_published(&bind, &k3);
    let m3 = py.sign(&k3.file, DOMAIN, "mx1r", &message(DOMAIN, "slot-1-again"));
    assert_verifies(&py, &m3, "mx1r", "rsa-sha256");
    assert_fails(&py, &m1, "mx1r");

    // Every record mxkeys added is in the delegated zone, at a slot.
    let added = txt_names_added(&bind);
    assert_eq!(
        added,
        vec![dkim_target("mx1r"), dkim_target("mx2r")],
        "{:#?}",
        keys(&work)
    );
    assert_eq!(
        bind.serial("example.test"),
        user_serial,
        "example.test was written"
    );
}
