//! DKIM under delegation by CNAME against a real BIND 9 serving the
//! user's zone (`example.test`, where the user made the CNAMEs) and the
//! delegated zone (`delegated.test`, which mxkeys writes with RFC 2136):
//! a `mxkeys dkim rotate` pass publishes the first slot's record
//! (`mx1r._domainkey.example.test`) at its target in `delegated.test` and
//! activates it when the user's CNAME is in place; without the CNAME it
//! names the record and the CNAME to create, and publishes nothing.
//! Checked with `dig` and the signer's KeyTable.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};

use common::bind::{Bind, KEY_NAME};
use common::dkim_tools::{BIND_TOOLS, OPENSSL, mx};
use common::servers::require;

const NAME: &str = "mx1r._domainkey.example.test";
const TARGET: &str = "mx1r._domainkey.example.test.delegated.test";

/// The user's zone, with the CNAMEs of `cnames` lines.
fn user_zone(cnames: &str) -> String {
    format!(
        "$TTL 300\n@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60\n\
         @ IN NS ns.example.test.\nns IN A 127.0.0.1\n{cnames}"
    )
}

/// BIND with `zone` as example.test, and `work/mxkeys.toml`: an rfc2136
/// provider whose TSIG key can write only delegated.test (its nameservers
/// answer for every zone) and that delegates to it, and a
/// `[dkim]` table naming no selector (the delegated default, slots).
fn setup(test: &str, zone: &str) -> Option<(Bind, PathBuf, PathBuf)> {
    if !require(test, &[BIND_TOOLS, OPENSSL]) {
        return None;
    }
    let bind = Bind::start_split(zone)?;
    let work = bind.dir().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let config = format!(
        "state_dir = \"state\"\n\
         [dns.deleg]\n\
         type = \"rfc2136\"\n\
         server = \"{addr}\"\n\
         delegate_to = \"delegated.test\"\n\
         tsig_name = \"{KEY_NAME}\"\n\
         tsig_secret_file = \"{tsig}\"\n\
         nameservers = [\"{addr}\"]\n\
         propagation_interval = \"100ms\"\n\
         propagation_timeout = \"3s\"\n\
         [dkim]\n\
         domains = [\"example.test\"]\n\
         dns = \"deleg\"\n\
         key_dir = \"keys\"\n\
         signer = \"opendkim\"\n\
         signer_dir = \"signer\"\n\
         lead = \"0s\"\n",
        addr = bind.addr(),
        tsig = bind.dir().join("tsig.key").display(),
    );
    let path = work.join("mxkeys.toml");
    std::fs::write(&path, config).unwrap();
    Some((bind, work, path))
}

/// (selector, state) of every key in the state file.
fn keys(work: &Path) -> Vec<(String, String)> {
    let Ok(bytes) = std::fs::read(work.join("state/dkim/state.json")) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["selector"].as_str().unwrap().to_owned(),
                k["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn key_table(work: &Path) -> String {
    std::fs::read_to_string(work.join("signer/KeyTable")).unwrap_or_default()
}

#[test]
fn with_the_cname_in_place_the_first_slot_is_published_in_the_delegated_zone_and_signs() {
    let zone = user_zone(&format!("{NAME}. IN CNAME {TARGET}.\n"));
    let Some((bind, work, config)) = setup(
        "with_the_cname_in_place_the_first_slot_is_published_in_the_delegated_zone_and_signs",
        &zone,
    ) else {
        return;
    };
    let out = mx(&config, &["dkim", "rotate"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(keys(&work), [("mx1r".to_owned(), "active".to_owned())]);
    // The record is at the target, in the zone mxkeys writes...
    let at_target = bind.txt_values(TARGET);
    assert_eq!(at_target.len(), 1, "{at_target:?}");
    assert!(
        at_target[0].starts_with("v=DKIM1; k=rsa; p="),
        "{at_target:?}"
    );
    // ...and the user's zone still holds only the CNAME to it.
    assert_eq!(bind.short("CNAME", NAME), [format!("{TARGET}.")]);
    assert!(key_table(&work).contains(NAME), "{}", key_table(&work));
}

#[test]
fn without_the_cname_the_pass_names_it_and_publishes_nothing() {
    let Some((bind, work, config)) = setup(
        "without_the_cname_the_pass_names_it_and_publishes_nothing",
        &user_zone(""),
    ) else {
        return;
    };
    for _ in 0..2 {
        let out = mx(&config, &["dkim", "rotate"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let want = format!(
            "{NAME}: no CNAME on {}; create \"{NAME}. IN CNAME {TARGET}.\"",
            bind.addr()
        );
        assert!(stderr.contains(&want), "no {want:?} in:\n{stderr}");
        // The key stays generated, in its slot; nothing is written.
        assert_eq!(keys(&work), [("mx1r".to_owned(), "generated".to_owned())]);
        assert_eq!(bind.txt_values(TARGET), Vec::<String>::new());
        assert!(!key_table(&work).contains("mx1r"), "{}", key_table(&work));
    }
}

#[test]
fn forced_rotations_alternate_slots_and_wait_while_both_are_held() {
    let zone = user_zone(&format!(
        "{NAME}. IN CNAME {TARGET}.\n{two}. IN CNAME {two}.delegated.test.\n",
        two = "mx2r._domainkey.example.test"
    ));
    let Some((bind, work, config)) = setup(
        "forced_rotations_alternate_slots_and_wait_while_both_are_held",
        &zone,
    ) else {
        return;
    };
    let run = |args: &[&str]| {
        let out = mx(&config, args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
        stdout
    };
    run(&["dkim", "rotate"]);
    run(&["dkim", "rotate", "--force"]);
    let pair = |a: &str, b: &str| {
        vec![
            ("mx1r".to_owned(), a.to_owned()),
            ("mx2r".to_owned(), b.to_owned()),
        ]
    };
    assert_eq!(keys(&work), pair("draining", "active"));
    assert_eq!(
        bind.txt_values("mx2r._domainkey.example.test.delegated.test")
            .len(),
        1
    );
    // mx1r drains for 7 days and holds its slot until deleted: a third
    // key waits, and says so.
    let out = run(&["dkim", "rotate", "--force"]);
    assert!(
        out.contains(
            "waiting: example.test: the next rsa key waits for a free slot (mx1r draining, mx2r active)"
        ),
        "{out}"
    );
    assert_eq!(keys(&work), pair("draining", "active"));
}

#[test]
fn a_slot_key_the_signer_files_name_is_not_adopted_again_by_the_next_pass() {
    let zone = user_zone(&format!("{NAME}. IN CNAME {TARGET}.\n"));
    let Some((_bind, work, config)) = setup(
        "a_slot_key_the_signer_files_name_is_not_adopted_again_by_the_next_pass",
        &zone,
    ) else {
        return;
    };
    // A first pass writes the signer's files, naming mxkeys' own mx1r,
    // whose selector is recorded nowhere but in its key; then the files
    // are named for adoption (as when they were the host's own).
    let out = mx(&config, &["dkim", "rotate"]);
    assert!(out.status.success(), "{out:?}");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(
        "[[dkim.adopt]]\nfrom = \"opendkim\"\npath = \"signer/KeyTable\"\ncheck = \"none\"\n",
    );
    std::fs::write(&config, text).unwrap();
    for pass in 0..3 {
        let out = mx(&config, &["dkim", "rotate"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pass {pass}: {stdout}\n{stderr}");
        assert!(!stdout.contains("adopt"), "pass {pass}: {stdout}\n{stderr}");
        assert_eq!(
            keys(&work),
            [("mx1r".to_owned(), "active".to_owned())],
            "pass {pass}: {stdout}\n{stderr}"
        );
    }
    assert!(key_table(&work).contains(NAME), "{}", key_table(&work));
}
