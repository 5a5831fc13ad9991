//! Two MX hosts without `[cluster]` (issue 18): coordination-free. Each
//! host (its own configuration, `host_id`, state directory and keys) writes
//! into the same zones of the same BIND; each keeps its own DKIM selectors
//! and its own TLSA record under a name both serve, and a rotation on one
//! never touches the other's records: every step is checked in BIND.
//!
//! DKIM: one BIND on loopback (RFC 2136 with TSIG), `dkim rotate` with
//! short durations, as `tests/it/dkim.rs`. DANE: a namespace of its own
//! (`testsupport::dnssec`, as `tests/it/dane_pass.rs`): BIND signing
//! `example.test`, Unbound validating, `mail.example.test` on 127.0.0.1
//! and 127.0.0.4, one Postfix per host on its address, port 25.

use mxkeys_testsupport as common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::bind::Bind;
use common::dkim_tools::{DEADLINE, mx_ok, setup, write_dkim_config};
use common::dnssec::{self, AUTHORITATIVE, RESOLVER, SignedZone, TTL};
use common::servers::{MAIL, POSTFIX, Postfix, combined_pem, prog};
use common::*;

use super::dkim::{Key, keys};

const DOMAINS: [&str; 2] = ["example.test", "sub.example.test"];

/// One host's configuration in `work/HOST/mxkeys.toml`: `host_id = HOST`,
/// the selector `template`, the rfc2136 provider for `bind`, rotation
/// durations of a second or two.
fn dkim_host(bind: &Bind, work: &Path, host: &str, template: &str) -> (PathBuf, PathBuf) {
    let dir = work.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    let dkim = format!(
        "domains = [\"{}\", \"{}\"]\n\
         selector = \"{template}\"\n\
         key_dir = \"keys\"\n\
         dns = \"bind\"\n\
         signer = \"opendkim\"\n\
         signer_dir = \"signer\"\n\
         rotate_every = \"1h\"\n\
         lead = \"0s\"\n\
         drain = \"1s\"\n\
         revoke_hold = \"1s\"\n\
         ttl = 300\n",
        DOMAINS[0], DOMAINS[1],
    );
    let path = write_dkim_config(bind, &dir, &dkim);
    // Top-level keys come before the first table.
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("host_id = \"{host}\"\n{text}")).unwrap();
    (path, dir)
}

/// Every DKIM record name either host ever used, with what BIND serves
/// there now (sorted TXT values; empty: nothing).
fn published(bind: &Bind, names: &[String]) -> BTreeMap<String, Vec<String>> {
    names
        .iter()
        .map(|n| (n.clone(), bind.txt_values(n)))
        .collect()
}

fn names_of(ks: &[Key]) -> Vec<String> {
    ks.iter()
        .map(|k| format!("{}._domainkey.{}", k.selector, k.domain))
        .collect()
}

/// The records a host's keys put in BIND, each by name: the key's record
/// (`p=` once revoked; a deleted key is no longer in the book).
fn records_of(ks: &[Key]) -> BTreeMap<String, Vec<String>> {
    ks.iter()
        .filter(|k| k.state != "generated")
        .map(|k| {
            let value = if k.state == "revoked" {
                "v=DKIM1; k=rsa; p=".to_owned()
            } else {
                k.record.clone()
            };
            (
                format!("{}._domainkey.{}", k.selector, k.domain),
                vec![value],
            )
        })
        .collect()
}

#[test]
fn two_hosts_keep_their_own_dkim_selectors_and_a_rotation_on_one_never_touches_the_others_records()
{
    two_hosts_rotate(
        "two_hosts_keep_their_own_dkim_selectors_and_a_rotation_on_one_never_touches_the_others_records",
        "{host}-{alg}{date}",
        ["mx1-", "mx2-"],
    );
}

/// With the default template (no `{host}`) the second host passes over the
/// first's selector (its name holds a record it did not write), and the
/// rotations stay as apart as with `{host}`.
#[test]
fn two_hosts_on_the_default_selector_template_pass_over_each_others_selectors() {
    two_hosts_rotate(
        "two_hosts_on_the_default_selector_template_pass_over_each_others_selectors",
        "{alg}{date}",
        ["r", "r"],
    );
}

/// Hosts mx1 and mx2 with selector `template` (their selectors start with
/// `prefixes`): both sign both domains, then each rotates in turn until
/// its old keys are deleted; BIND is checked after every step.
fn two_hosts_rotate(test: &str, template: &str, prefixes: [&str; 2]) {
    let Some((bind, work)) = setup(test, &[]) else {
        return;
    };
    let (a_config, a) = dkim_host(&bind, &work, "mx1", template);
    let (b_config, b) = dkim_host(&bind, &work, "mx2", template);
    // Every name either host ever used: checked in BIND at every step.
    let mut seen: Vec<String> = Vec::new();
    let mut remember = |ks: &[Key]| {
        for n in names_of(ks) {
            if !seen.contains(&n) {
                seen.push(n);
            }
        }
        seen.clone()
    };

    // Both hosts start: each its own selectors, every domain signed by
    // both, each record as its host's book says.
    mx_ok(&a_config, &["dkim", "rotate"]);
    mx_ok(&b_config, &["dkim", "rotate"]);
    let (ka, kb) = (keys(&a), keys(&b));
    remember(&ka);
    let names = remember(&kb);
    for (ks, host) in [(&ka, prefixes[0]), (&kb, prefixes[1])] {
        assert_eq!(ks.len(), DOMAINS.len(), "{ks:#?}");
        assert!(ks.iter().all(|k| k.selector.starts_with(host)), "{ks:#?}");
        assert!(ks.iter().all(|k| k.state == "active"), "{ks:#?}");
    }
    // What BIND must hold: both books' records, never one name in both.
    let both = |ka: &[Key], kb: &[Key]| {
        let mut want = records_of(ka);
        for (name, record) in records_of(kb) {
            assert!(
                want.insert(name.clone(), record).is_none(),
                "{name} is in both hosts' books\n{ka:#?}\n{kb:#?}"
            );
        }
        want
    };
    let served = |names: &[String]| {
        published(&bind, names)
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(served(&names), both(&ka, &kb));

    // Each host in turn rotates, step by step until its old keys are gone:
    // after every step the other's records are in BIND exactly as its book
    // says, and the old names of the one that rotated hold nothing any more.
    let hosts = [("mx1", &a_config, &a), ("mx2", &b_config, &b)];
    for (mover, other) in [(0, 1), (1, 0)] {
        let (name, config, dir) = hosts[mover];
        let (other_name, _, other_dir) = hosts[other];
        let still = keys(other_dir);
        let before = records_of(&still);
        let old = names_of(&keys(dir));
        let mut transcript = mx_ok(config, &["dkim", "rotate", "--force"]);
        let start = Instant::now();
        loop {
            let moved = keys(dir);
            let names = remember(&moved);
            let now = served(&names);
            for (n, record) in &before {
                assert_eq!(
                    now.get(n),
                    Some(record),
                    "{other_name}'s {n} changed by {name}'s rotation\n{transcript}"
                );
            }
            let (ka, kb) = if mover == 0 {
                (&moved, &still)
            } else {
                (&still, &moved)
            };
            assert_eq!(now, both(ka, kb), "{transcript}");
            if old.iter().all(|n| !names_of(&moved).contains(n)) {
                assert!(
                    moved
                        .iter()
                        .all(|k| k.selector.starts_with(prefixes[mover]))
                );
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{name}'s old keys never went\n{transcript}"
            );
            std::thread::sleep(Duration::from_millis(300));
            transcript.push_str(&mx_ok(config, &["dkim", "rotate"]));
        }
        for n in &old {
            assert_eq!(bind.txt_values(n), Vec::<String>::new(), "{n}");
        }
    }
}

// ---------------------------------------------------------------------------
// DANE: one name, two hosts, each its own key
// ---------------------------------------------------------------------------

const OWNER: &str = "_25._tcp.mail.example.test";
/// The second host's address for `mail.example.test`.
const SECOND: &str = "127.0.0.4";

/// The inner test's full name in this binary (`two_hosts::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

#[test]
fn two_hosts_under_one_name_each_publish_their_own_tlsa_and_retire_only_their_own() {
    dnssec::run_in_namespace(
        "two_hosts_under_one_name_each_publish_their_own_tlsa_and_retire_only_their_own",
        &inner("inside_two_hosts_tlsa"),
        &[POSTFIX],
    );
}

/// One host of the DANE test: a files source (`src/`), a target writing
/// `tls/combined.pem`, state in `state/`, its own `host_id`.
struct DaneHost {
    dir: PathBuf,
    config: PathBuf,
}

impl DaneHost {
    fn new(root: &Path, host: &str, zone: &SignedZone) -> DaneHost {
        let dir = root.join(host);
        for d in ["src", "tls", "state"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let config = dir.join("mxkeys.toml");
        write(
            &config,
            format!(
                "host_id = {}\nhostname = {}\nstate_dir = {}\n\n\
                 [dns.bind]\ntype = \"rfc2136\"\nserver = \"{AUTHORITATIVE}:53\"\n\
                 zone = \"example.test\"\ntsig_name = \"{}\"\ntsig_secret_file = {}\n\
                 nameservers = [\"{AUTHORITATIVE}:53\"]\nresolver = \"{RESOLVER}:53\"\n\
                 propagation_interval = \"1s\"\n\n\
                 [[source]]\ntype = \"files\"\ncert = {}\nkey = {}\n\n\
                 [[target]]\nname = \"mx\"\ndomains = [{}]\ncombined = {}\n\
                 reload = [{}]\n\
                 [target.dane]\ndns = \"bind\"\nttl = {TTL}\n",
                q(host),
                q(MAIL),
                qp(&dir.join("state")),
                dnssec::KEY_NAME,
                qp(&zone.dir.join("tsig.key")),
                qp(&dir.join("src/fullchain.pem")),
                qp(&dir.join("src/privkey.pem")),
                q(MAIL),
                qp(&dir.join("tls/combined.pem")),
                // The "reload" does nothing: Postfix serves the new key
                // when the test reloads it.
                q(prog("true").to_str().unwrap()),
            ),
        );
        DaneHost { dir, config }
    }

    fn offer(&self, leaf: &Leaf) {
        write(&self.dir.join("src/fullchain.pem"), leaf.fullchain_pem());
        write(&self.dir.join("src/privkey.pem"), leaf.key_pem());
    }

    fn install(&self, leaf: &Leaf) {
        let combined = self.combined();
        write(&combined, combined_pem(leaf));
        set_mode(&combined, 0o600);
    }

    fn combined(&self) -> PathBuf {
        self.dir.join("tls/combined.pem")
    }

    fn sync(&self) -> Run {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(&self.config)
            .args(["-v", "sync"])
            .env_remove("MXKEYS_CONFIG")
            .env("NO_COLOR", "1");
        Run::from_output("mxkeys -v sync".to_owned(), run_with_timeout(c))
    }

    fn served_file_leaf(&self) -> Vec<u8> {
        read_certs(&self.combined()).remove(0)
    }
}

/// The TLSA set at [`OWNER`] on the authoritative server, sorted.
fn tlsa(zone: &SignedZone) -> Vec<String> {
    let out = zone.authoritative(&["TLSA", OWNER]);
    let mut v: Vec<String> = dnssec::answer(&out, "TLSA")
        .iter()
        .map(|r| dnssec::normalize(r))
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
#[ignore = "run inside a namespace by two_hosts_under_one_name_each_publish_..."]
fn inside_two_hosts_tlsa() {
    dnssec::assert_in_namespace();
    // The second host's address (Postfix needs it on an interface).
    let ip = Command::new(prog("ip"))
        .args(["addr", "add", &format!("{SECOND}/32"), "dev", "lo"])
        .output()
        .unwrap();
    assert!(ip.status.success(), "{ip:?}");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let zone = SignedZone::start(&root.join("dns"), &format!("mail IN A {SECOND}\n"));
    let ca = Ca::new("two-hosts");
    let issue = || ca.issue(&LeafSpec::new(&[MAIL]));
    let (a1, a2, b1) = (issue(), issue(), issue());
    let (rec_a1, rec_a2, rec_b1) = (
        dnssec::tlsa_3_1_1(&a1.der),
        dnssec::tlsa_3_1_1(&a2.der),
        dnssec::tlsa_3_1_1(&b1.der),
    );
    let a = DaneHost::new(root, "mx1", &zone);
    let b = DaneHost::new(root, "mx2", &zone);
    a.offer(&a1);
    a.install(&a1);
    b.offer(&b1);
    b.install(&b1);
    let pa = Postfix::start_sink_at(&root.join("postfix-a"), "127.0.0.1", &[&a.combined()], 25);
    let _pb = Postfix::start_sink_at(&root.join("postfix-b"), SECOND, &[&b.combined()], 25);

    // Each host adds its own record; neither removes the other's.
    let run = a.sync();
    run.ok();
    assert_eq!(
        tlsa(&zone),
        std::slice::from_ref(&rec_a1),
        "{}",
        run.describe()
    );
    let run = b.sync();
    run.ok();
    assert_eq!(
        tlsa(&zone),
        sorted(vec![rec_a1.clone(), rec_b1.clone()]),
        "{}",
        run.describe()
    );
    let run = a.sync();
    run.ok();
    assert_eq!(
        tlsa(&zone),
        sorted(vec![rec_a1.clone(), rec_b1.clone()]),
        "{}",
        run.describe()
    );

    // mx1 gets a new key: published beside both, installed once aged;
    // mx2's record is there at every step.
    a.offer(&a2);
    let start = Instant::now();
    while a.served_file_leaf() != a2.der {
        let run = a.sync();
        run.ok();
        let now = tlsa(&zone);
        assert!(now.contains(&rec_b1), "{now:?}\n{}", run.describe());
        assert!(now.contains(&rec_a1), "{now:?}\n{}", run.describe());
        let run = b.sync();
        run.ok();
        assert!(tlsa(&zone).contains(&rec_b1), "{}", run.describe());
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "a2 never installed\n{}",
            run.describe()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Installed, not served yet (mx1's Postfix serves a1): a1 stays.
    let run = a.sync();
    run.ok();
    assert_eq!(
        tlsa(&zone),
        sorted(vec![rec_a1.clone(), rec_a2.clone(), rec_b1.clone()]),
        "a1 removed while still served\n{}",
        run.describe()
    );
    // Served: mx1 retires a1 although mx2's address serves mx2's key (a
    // key mx1 never wanted), and leaves mx2's record alone.
    pa.reload();
    let start = Instant::now();
    loop {
        let run = a.sync();
        run.ok();
        let now = tlsa(&zone);
        assert!(now.contains(&rec_b1), "{now:?}\n{}", run.describe());
        if now == sorted(vec![rec_a2.clone(), rec_b1.clone()]) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "mx1 never retired a1 (held back by mx2's key?): {now:?}\n{}\n{}",
            run.describe(),
            pa.log()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // mx2 changes nothing: its record stays, mx1's new one too.
    let run = b.sync();
    run.ok();
    assert_eq!(
        tlsa(&zone),
        sorted(vec![rec_a2, rec_b1]),
        "{}",
        run.describe()
    );
}
