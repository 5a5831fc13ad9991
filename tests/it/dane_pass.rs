//! The DANE pass (issue 14) against real DNS: `mxkeys sync` publishes TLSA
//! records into a zone BIND signs, observes them on the authoritative
//! server, holds a new key until its record is aged, retires the old
//! record only once the new key is served, leaves other hosts' records
//! alone, refuses an unsigned zone, and converges after a SIGKILL between
//! recording a record as its own and writing it.
//!
//! Each test re-runs this binary inside a network + mount namespace of its
//! own (`testsupport::dnssec`, as `tests/it/dane.rs`): BIND signing
//! `example.test` on 127.0.0.1:53 (RFC 2136 with TSIG, every TTL 2 s),
//! Unbound validating on 127.0.0.2:53, a Postfix receiver on 127.0.0.1:25
//! when the test needs a served certificate.
//!
//! Needs root, util-linux, iproute2, bind9, bind9-dnsutils, unbound (and
//! postfix for retirement): without them a test is skipped loudly, or fails
//! with `CI=true`.

use mxkeys_testsupport as common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dnssec::{self, AUTHORITATIVE, KEY_NAME, RESOLVER, SignedZone, TTL, UNSIGNED_ZONE};
use common::servers::{
    MAIL, OPENSSL, Offer, POSTFIX, Postfix, Proto, combined_pem, output_within, prog, served_leaf,
};
use common::*;
use serde_json::Value;

const OWNER: &str = "_25._tcp.mail.example.test";
/// How long a test waits for the gate, retirement or convergence.
const DEADLINE: Duration = Duration::from_secs(60);

/// The inner test's full name in this binary (`dane_pass::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

#[test]
fn sync_publishes_the_installed_certificates_3_1_1_into_the_signed_zone_and_sees_it_signed() {
    dnssec::run_in_namespace(
        "sync_publishes_the_installed_certificates_3_1_1_into_the_signed_zone_and_sees_it_signed",
        &inner("inside_publish"),
        &[],
    );
}

#[test]
fn a_new_key_from_a_files_source_is_published_at_once_and_installed_only_after_two_ttls() {
    dnssec::run_in_namespace(
        "a_new_key_from_a_files_source_is_published_at_once_and_installed_only_after_two_ttls",
        &inner("inside_new_key_waits"),
        &[],
    );
}

#[test]
fn another_hosts_record_survives_every_add_and_the_old_record_goes_once_the_new_key_is_served() {
    dnssec::run_in_namespace(
        "another_hosts_record_survives_every_add_and_the_old_record_goes_once_the_new_key_is_served",
        &inner("inside_other_host_and_retirement"),
        &[POSTFIX],
    );
}

#[test]
fn an_unsigned_zone_is_refused_naming_it_and_how_to_check_and_nothing_is_published() {
    dnssec::run_in_namespace(
        "an_unsigned_zone_is_refused_naming_it_and_how_to_check_and_nothing_is_published",
        &inner("inside_unsigned_zone"),
        &[],
    );
}

#[test]
fn a_sigkill_between_recording_a_record_and_writing_it_converges_on_the_next_sync() {
    dnssec::run_in_namespace(
        "a_sigkill_between_recording_a_record_and_writing_it_converges_on_the_next_sync",
        &inner("inside_crash_before_add"),
        &[],
    );
}

#[test]
fn mxkeys_run_publishes_a_new_key_installs_it_once_aged_and_retires_the_old_record_with_no_gap() {
    dnssec::run_in_namespace(
        "mxkeys_run_publishes_a_new_key_installs_it_once_aged_and_retires_the_old_record_with_no_gap",
        &inner("inside_daemon_cycle"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn a_rollover_to_the_published_standby_key_installs_at_once_and_publishes_the_next_standby() {
    dnssec::run_in_namespace(
        "a_rollover_to_the_published_standby_key_installs_at_once_and_publishes_the_next_standby",
        &inner("inside_standby_rollover"),
        &[POSTFIX],
    );
}

#[test]
fn a_sigkill_at_each_step_of_a_rollover_never_leaves_the_served_key_without_an_aged_record() {
    dnssec::run_in_namespace(
        "a_sigkill_at_each_step_of_a_rollover_never_leaves_the_served_key_without_an_aged_record",
        &inner("inside_rollover_crashes"),
        &[POSTFIX],
    );
}

/// No DNS needed: `dane status` reads files and the ledger only.
#[test]
fn dane_status_suggests_reuse_key_when_certbot_brings_a_new_key_to_a_dane_target() {
    let env = Env::new();
    let ca = Ca::new("dane-hint");
    let (a, b) = (
        ca.issue(&LeafSpec::new(&[MAIL])),
        ca.issue(&LeafSpec::new(&[MAIL])),
    );
    let certbot = Certbot::new(&env.path("letsencrypt"));
    let out = env.out.join("combined.pem");
    write(&out, combined_pem(&a));
    set_mode(&out, 0o600);
    let config = |certbot_key: &Leaf| {
        certbot.add("mail", certbot_key);
        env.write_config_raw(&format!(
            "{}{}\n[dns.paste]\ntype = \"manual\"\n\n\
             [[target]]\nname = \"mx\"\ndomains = [{}]\ncombined = {}\n\
             [target.dane]\ndns = \"paste\"\n",
            env.header(),
            src_certbot(&certbot.root),
            q(MAIL),
            qp(&out)
        ));
    };
    // Certbot renewed with the same key: nothing to suggest.
    config(&a);
    let same = env.run(&["dane", "status"]);
    same.ok();
    assert!(!same.stdout.contains("reuse_key"), "{}", same.describe());
    // With a new key: the hint, naming Certbot's setting.
    config(&b);
    let new = env.run(&["dane", "status"]);
    new.ok();
    let hint = new
        .stdout_line_with("hint:")
        .unwrap_or_else(|| panic!("{}", new.describe()));
    assert!(
        hint.contains("new key") && hint.contains("reuse_key = True"),
        "{hint}"
    );
}

// ---------------------------------------------------------------------------
// Inside the namespace
// ---------------------------------------------------------------------------

#[test]
#[ignore = "run inside a namespace by sync_publishes_..."]
fn inside_publish() {
    let lab = Lab::start();
    let a = lab.issue();
    lab.offer(&a);
    lab.install(&a);
    lab.write_config(&lab.rfc2136(), "", "");

    let run = lab.sync();
    run.ok();
    let want = dnssec::tlsa_3_1_1(&a.der);
    assert_eq!(
        lab.tlsa(),
        std::slice::from_ref(&want),
        "{}",
        run.describe()
    );
    let signed = lab.zone.authoritative(&["TLSA", OWNER]);
    assert!(signed.contains("RRSIG"), "{signed}");
    let ledger = lab.ledger();
    assert_eq!(
        ledger["targets"]["mx"]["owned"][OWNER],
        serde_json::json!([want]),
        "{ledger:#}"
    );
    assert_eq!(ledger["targets"]["mx"]["zone_signed"], true, "{ledger:#}");
    // Seen signed on the authoritative server (by this sync's last pass
    // at the latest, or the next one: BIND re-signs within moments).
    let t0 = lab.until_seen(&want);
    assert!(t0 > 0);

    let status = lab.mx(&["dane", "status"]);
    status.ok();
    // The owner's line for the record (after the target's key lines).
    let line = status
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&want))
        .unwrap_or_else(|| panic!("{}", status.describe()));
    assert!(
        line.contains("ours") && line.contains("installed"),
        "{line}"
    );
    assert!(line.contains("seen since"), "{line}");

    // A second sync changes nothing in DNS.
    lab.sync().ok();
    assert_eq!(lab.tlsa(), [want]);
}

#[test]
#[ignore = "run inside a namespace by a_new_key_from_a_files_source_..."]
fn inside_new_key_waits() {
    let lab = Lab::start();
    let a = lab.issue();
    let b = lab.issue();
    lab.offer(&a);
    lab.install(&a);
    lab.write_config(&lab.rfc2136(), "", "");
    lab.sync().ok();
    let (rec_a, rec_b) = (dnssec::tlsa_3_1_1(&a.der), dnssec::tlsa_3_1_1(&b.der));
    lab.until_seen(&rec_a);

    // Certbot-style: the source brings a new key. Its record goes out at
    // once; the target keeps A.
    lab.offer(&b);
    let run = lab.sync();
    run.ok();
    let mut published = lab.tlsa();
    published.sort();
    let mut both = vec![rec_a.clone(), rec_b.clone()];
    both.sort();
    assert_eq!(published, both, "{}", run.describe());
    assert_eq!(
        lab.served_file_leaf(),
        a.der,
        "installed before its record aged"
    );

    // Installed only once B's record has been seen for 2 × TTL (plus the
    // negative TTL of a set that was new: not here, A's set existed).
    let start = Instant::now();
    loop {
        let run = lab.sync();
        run.ok();
        let installed_b = lab.served_file_leaf() == b.der;
        let t0 = lab.t0(&rec_b);
        if installed_b {
            let t0 = t0.expect("B installed although its record was never seen");
            let installed_at = lab.installed_at();
            assert!(
                installed_at >= t0 + 2 * i64::from(TTL),
                "installed at {installed_at}, record seen since {t0}\n{}",
                run.describe()
            );
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "B never installed\n{}\n{:#}",
            run.describe(),
            lab.ledger()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
#[ignore = "run inside a namespace by another_hosts_record_survives_..."]
fn inside_other_host_and_retirement() {
    let lab = Lab::start();
    let a = lab.issue();
    let b = lab.issue();
    let other = dnssec::tlsa_3_1_1(&lab.issue().der);
    lab.offer(&a);
    lab.install(&a);
    let postfix = Postfix::start_sink_on(&lab.dir.join("postfix"), &[&lab.combined()], 25);
    // The "reload" does nothing: Postfix keeps serving A after B is
    // installed, until the test reloads it.
    let reload = format!("reload = [{}]\n", q(prog("true").to_str().unwrap()));
    lab.write_config(&lab.rfc2136(), &reload, "");
    // Another host's record, added by hand.
    lab.zone
        .update(&format!("update add {OWNER} {TTL} TLSA {other}\n"));

    let (rec_a, rec_b) = (dnssec::tlsa_3_1_1(&a.der), dnssec::tlsa_3_1_1(&b.der));
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    lab.sync().ok();
    assert_eq!(
        sorted(lab.tlsa()),
        sorted(vec![rec_a.clone(), other.clone()])
    );
    // A new key: B is published beside A and the other host's record, and
    // installed once its record is aged.
    lab.offer(&b);
    let start = Instant::now();
    while lab.served_file_leaf() != b.der {
        let run = lab.sync();
        run.ok();
        let now = lab.tlsa();
        assert!(now.contains(&other), "{now:?}\n{}", run.describe());
        assert!(now.contains(&rec_a), "{now:?}\n{}", run.describe());
        assert!(
            start.elapsed() < DEADLINE,
            "B never installed\n{}",
            run.describe()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    // Installed but not served (Postfix still serves A): A's record stays.
    for _ in 0..2 {
        let run = lab.sync();
        run.ok();
        assert_eq!(
            sorted(lab.tlsa()),
            sorted(vec![rec_a.clone(), rec_b.clone(), other.clone()]),
            "A's record removed while A is still served\n{}",
            run.describe()
        );
    }
    // Served: the next sync retires A's record, and only it.
    postfix.reload();
    let run = lab.sync();
    run.ok();
    assert_eq!(
        sorted(lab.tlsa()),
        sorted(vec![rec_b.clone(), other.clone()]),
        "{}\n{}",
        run.describe(),
        postfix.log()
    );
    let ledger = lab.ledger();
    assert_eq!(
        ledger["targets"]["mx"]["owned"][OWNER],
        serde_json::json!([rec_b]),
        "{ledger:#}"
    );
    // Again: nothing more changes, the other record stays.
    lab.sync().ok();
    assert_eq!(sorted(lab.tlsa()), sorted(vec![rec_b, other]));
}

/// DANE through delegation: a missing CNAME, then a delegated zone that is
/// not signed, each publish nothing; with both zones signed the record is
/// published at the target and validated through the CNAME.
#[test]
fn a_delegated_tlsa_name_needs_its_cname_and_both_zones_signed_before_anything_is_published() {
    dnssec::run_in_namespace(
        "a_delegated_tlsa_name_needs_its_cname_and_both_zones_signed_before_anything_is_published",
        &inner("inside_delegated_tlsa"),
        &[],
    );
}

#[test]
#[ignore = "run inside a namespace by a_delegated_tlsa_name_needs_..."]
fn inside_delegated_tlsa() {
    let lab = Lab::start();
    let a = lab.issue();
    lab.offer(&a);
    lab.install(&a);
    // The provider writes in the unsigned zone, by delegation.
    let dns = lab.rfc2136().replace(
        "zone = \"example.test\"",
        &format!("delegate_to = \"{UNSIGNED_ZONE}\""),
    );
    lab.write_config(&dns, "", "");
    let target = format!("{OWNER}.{UNSIGNED_ZONE}");

    // No CNAME yet: named with the line to create.
    let run = lab.sync();
    run.assert_code(1);
    run.assert_err_line(&[
        &format!("{OWNER}: no CNAME on {AUTHORITATIVE}:53"),
        &format!("create \"{OWNER}. IN CNAME {target}.\""),
        "no TLSA record published",
    ]);

    // The CNAME in the signed zone, into the unsigned one: refused, naming
    // the unsigned zone's name.
    lab.zone
        .update(&format!("update add {OWNER} {TTL} CNAME {target}."));
    let run = lab.sync();
    run.assert_code(1);
    run.assert_err_line(&[
        &format!("the zone of {target} is not DNSSEC-signed"),
        "both the user's zone and the delegated zone are signed",
    ]);
    let out = lab.zone.authoritative(&["TLSA", &target]);
    assert!(dnssec::answer(&out, "TLSA").is_empty(), "{out}");

    // Delegated to a name inside the signed zone: both ends signed, so the
    // record is published at the target, and a validating resolver
    // answers it through the CNAME with `ad`, as a DANE sender sees it.
    let signed_target = format!("{OWNER}.dane.example.test");
    lab.zone.update(&format!(
        "update delete {OWNER} CNAME\nupdate add {OWNER} {TTL} CNAME {signed_target}."
    ));
    let dns = lab.rfc2136().replace(
        "zone = \"example.test\"",
        "zone = \"example.test\"\ndelegate_to = \"dane.example.test\"",
    );
    lab.write_config(&dns, "", "");
    let run = lab.sync();
    run.ok();
    let want = dnssec::tlsa_3_1_1(&a.der);
    assert_eq!(
        lab.zone.served_tlsa(&signed_target),
        vec![want.clone()],
        "{}",
        run.describe()
    );
    assert!(
        lab.zone.authoritative(&["TLSA", OWNER]).contains("CNAME"),
        "the user's name must stay a CNAME"
    );
    lab.zone.wait(
        "Unbound to answer the TLSA through the CNAME with ad",
        || {
            lab.zone
                .resolved_tlsa(OWNER)
                .filter(|set| set == std::slice::from_ref(&want))
                .map(|_| ())
        },
    );
}

#[test]
#[ignore = "run inside a namespace by an_unsigned_zone_is_refused_..."]
fn inside_unsigned_zone() {
    let lab = Lab::start();
    let a = lab.issue();
    lab.offer(&a);
    lab.install(&a);
    let dns = lab.rfc2136().replace(
        "zone = \"example.test\"",
        &format!("zone = \"{UNSIGNED_ZONE}\""),
    );
    let host = format!("mail.{UNSIGNED_ZONE}");
    lab.write_config(&dns, "", &format!("hosts = [{}]\n", q(&host)));

    let run = lab.sync();
    run.assert_code(1);
    run.assert_err_line(&[
        "target mx",
        &format!("zone {UNSIGNED_ZONE} is not DNSSEC-signed"),
        &format!("check with `dig +dnssec DNSKEY {UNSIGNED_ZONE}`"),
    ]);
    let owner = format!("_25._tcp.{host}");
    let out = lab.zone.authoritative(&["TLSA", &owner]);
    assert!(dnssec::answer(&out, "TLSA").is_empty(), "{out}");
    let ledger = lab.ledger();
    assert_eq!(ledger["targets"]["mx"]["zone_signed"], false, "{ledger:#}");
    assert!(
        ledger["targets"]["mx"]["owned"]
            .as_object()
            .is_none_or(|o| o.is_empty()),
        "{ledger:#}"
    );
}

#[test]
#[ignore = "run inside a namespace by a_sigkill_between_recording_..."]
fn inside_crash_before_add() {
    let lab = Lab::start();
    let a = lab.issue();
    lab.offer(&a);
    lab.install(&a);
    // An exec provider over nsupdate that SIGKILLs mxkeys (its parent) on
    // its first write while the marker file exists: after the pass has
    // recorded the record as its own, before DNS holds it.
    let marker = lab.dir.join("kill-on-write");
    let dns = lab.nsupdate_provider(
        "",
        &format!(
            "if [ -e {m} ]; then rm -f {m}; kill -9 $PPID; sleep 5; exit 1; fi",
            m = marker.display()
        ),
        "",
    );
    write(&marker, "");
    lab.write_config(&dns, "", "");
    let want = dnssec::tlsa_3_1_1(&a.der);

    let out = output_within(lab.mx_cmd(&["sync"]), DEADLINE).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "mxkeys was not killed by the provider: {out:?}"
    );
    assert!(!marker.exists());
    // The crash left the record owned but not in DNS.
    let ledger = lab.ledger();
    assert_eq!(
        ledger["targets"]["mx"]["owned"][OWNER],
        serde_json::json!([want]),
        "{ledger:#}"
    );
    assert!(lab.tlsa().is_empty());

    // The next run adds it and sees it.
    lab.sync().ok();
    assert_eq!(lab.tlsa(), std::slice::from_ref(&want));
    lab.until_seen(&want);
}

#[test]
#[ignore = "run inside a namespace by mxkeys_run_publishes_..."]
fn inside_daemon_cycle() {
    let lab = Lab::start();
    let a = lab.issue();
    let b = lab.issue();
    lab.offer(&a);
    lab.install(&a);
    let postfix = Postfix::start_sink_on(&lab.dir.join("postfix"), &[&lab.combined()], 25);
    let reload = format!(
        "reload = [{}]\n",
        postfix
            .reload_argv()
            .iter()
            .map(q)
            .collect::<Vec<_>>()
            .join(", ")
    );
    lab.write_config(&lab.rfc2136(), &reload, "");
    // With metrics, for mxkeys_dane_match.
    let port = free_port();
    let text = std::fs::read_to_string(&lab.config).unwrap().replacen(
        "\n\n",
        &format!("\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n"),
        1,
    );
    write(&lab.config, text);
    let (rec_a, rec_b) = (dnssec::tlsa_3_1_1(&a.der), dnssec::tlsa_3_1_1(&b.der));
    let mut daemon = Daemon::spawn(lab.mx_cmd(&["-v", "run"]), &lab.dir, "run");

    // The daemon publishes A's record at start, with no sync.
    let start = Instant::now();
    while lab.tlsa() != [rec_a.clone()] {
        daemon.assert_running();
        assert!(
            start.elapsed() < DEADLINE,
            "A never published\n{}",
            daemon.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A new key arrives. At every moment after, the served key's record is
    // published; B is installed, then A's record retired.
    lab.offer(&b);
    let start = Instant::now();
    let mut served_b_at = None;
    loop {
        daemon.assert_running();
        let published = lab.tlsa();
        let served = served_leaf(
            &format!("{}:25", AUTHORITATIVE),
            Proto::Smtp,
            Some(MAIL),
            Offer::Any,
        );
        if let Ok(leaf) = &served {
            let record = dnssec::tlsa_3_1_1(leaf);
            // The published set was read before the handshake: a record
            // removed in between would be missed, not a gap invented.
            assert!(
                published.contains(&record) || lab.tlsa().contains(&record),
                "served a key whose record is not published: {record} not in {published:?}\n{}",
                daemon.describe()
            );
            if *leaf == b.der && served_b_at.is_none() {
                served_b_at = Some(Instant::now());
            }
        }
        if published == [rec_b.clone()] {
            assert!(
                served_b_at.is_some(),
                "A's record retired before B was served"
            );
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no convergence: published {published:?}, served {served:?}\n{}\n{:#}",
            daemon.describe(),
            lab.ledger()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(lab.served_file_leaf(), b.der);
    let t0 = lab.t0(&rec_b).expect("B's record seen");
    assert!(lab.installed_at() >= t0 + 2 * i64::from(TTL));
    // The pass that retired A's record changed DNS: the endpoints were
    // checked as a sender would, and the served key matches.
    let series = format!("mxkeys_dane_match{{host=\"{MAIL}\",port=\"25\"}} 1");
    let start = Instant::now();
    loop {
        let body = http_get(port, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        if body.lines().any(|l| l == series) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no {series}:\n{body}\n{}",
            daemon.describe()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.terminate();
}

#[test]
#[ignore = "run inside a namespace by a_rollover_to_the_published_standby_key_..."]
fn inside_standby_rollover() {
    let lab = Lab::start();
    // The acme source `mail` (no CA needed: its stored bundle and standby
    // key are written here as its ACME pass would write them).
    let (current, standby, next) = (lab.issue(), lab.issue(), lab.issue());
    let source = lab.dir.join("state/acme/mail");
    std::fs::create_dir_all(&source).unwrap();
    set_mode(&source, 0o700);
    set_mode(&lab.dir.join("state/acme"), 0o700);
    let put = |name: &str, text: String| {
        write(&source.join(name), text);
        set_mode(&source.join(name), 0o600);
    };
    put("bundle.pem", combined_pem(&current));
    put("standby-key.pem", standby.key_pem());
    lab.install(&current);
    let postfix = Postfix::start_sink_on(&lab.dir.join("postfix"), &[&lab.combined()], 25);
    let reload = format!(
        "reload = [{}]\n",
        postfix
            .reload_argv()
            .iter()
            .map(q)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let acme = format!(
        "[[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [{}]\nchallenge = \"http-01\"\n",
        q(MAIL)
    );
    lab.write_config_sources(&lab.rfc2136(), &acme, &reload, "");
    let rec = |l: &Leaf| dnssec::tlsa_3_1_1(&l.der);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // Current and standby are both published (the standby key is never
    // served) and age.
    let run = lab.sync();
    run.ok();
    assert_eq!(
        sorted(lab.tlsa()),
        sorted(vec![rec(&current), rec(&standby)]),
        "{}",
        run.describe()
    );
    lab.until_seen(&rec(&standby));
    std::thread::sleep(Duration::from_secs(u64::from(3 * TTL)));

    // The rollover: the source now holds a certificate for the standby key
    // and a new standby key. One sync installs it at once (its record is
    // aged), publishes the next standby, and retires the old current
    // record once Postfix serves the new key.
    put("bundle.pem", combined_pem(&standby));
    put("standby-key.pem", next.key_pem());
    let run = lab.sync();
    run.ok();
    assert_eq!(
        lab.served_file_leaf(),
        standby.der,
        "the standby key's certificate was held\n{}",
        run.describe()
    );
    assert_eq!(
        sorted(lab.tlsa()),
        sorted(vec![rec(&standby), rec(&next)]),
        "{}\n{}",
        run.describe(),
        postfix.log()
    );
}

/// Where a rollover's `sync` is killed: before or after a DNS write (the
/// first adds the next standby's record, the second removes the old
/// current record), or in the reload between the install and the
/// verification.
const ROLLOVER_KILLS: [&str; 5] = [
    "before-write-1",
    "after-write-1",
    "in-reload",
    "before-write-2",
    "after-write-2",
];

#[test]
#[ignore = "run inside a namespace by a_sigkill_at_each_step_of_a_rollover_..."]
fn inside_rollover_crashes() {
    let lab = Lab::start();
    let source = lab.dir.join("state/acme/mail");
    std::fs::create_dir_all(&source).unwrap();
    set_mode(&source, 0o700);
    set_mode(&lab.dir.join("state/acme"), 0o700);
    let put = |name: &str, text: String| {
        write(&source.join(name), text);
        set_mode(&source.join(name), 0o600);
    };
    let (mut current, mut standby) = (lab.issue(), lab.issue());
    put("bundle.pem", combined_pem(&current));
    put("standby-key.pem", standby.key_pem());
    lab.install(&current);
    let postfix = Postfix::start_sink_on(&lab.dir.join("postfix"), &[&lab.combined()], 25);

    // The provider (nsupdate) and the reload (postfix reload) SIGKILL
    // mxkeys, their parent, at the step the file `kill` names: a DNS write
    // is counted, and killed before or after it is sent.
    let kill = lab.dir.join("kill");
    let count = lab.dir.join("writes");
    let dns = lab.nsupdate_provider(
        &format!(
            "step() {{ n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count};\n\
               if [ \"$(cat {kill} 2>/dev/null)\" = \"$1-write-$n\" ]; then rm -f {kill}; kill -9 $PPID; sleep 5; exit 1; fi; }}\n",
            kill = kill.display(),
            count = count.display(),
        ),
        &format!("step before; n=$(cat {})", count.display()),
        &format!("echo $((n - 1)) > {}; step after", count.display()),
    );
    let reload = lab.dir.join("reload.sh");
    write(
        &reload,
        format!(
            "#!/bin/sh\n\
             if [ \"$(cat {kill} 2>/dev/null)\" = in-reload ]; then rm -f {kill}; kill -9 $PPID; sleep 5; exit 1; fi\n\
             exec {}\n",
            postfix.reload_argv().join(" "),
            kill = kill.display(),
        ),
    );
    set_mode(&reload, 0o755);
    let acme = format!(
        "[[source]]\ntype = \"acme\"\nname = \"mail\"\ndomains = [{}]\nchallenge = \"http-01\"\n",
        q(MAIL)
    );
    let target = format!(
        "reload = [{}]\nverify = [{{ address = \"{AUTHORITATIVE}:25\", protocol = \"smtp\" }}]\n",
        q(reload.to_str().unwrap())
    );
    lab.write_config_sources(&dns, &acme, &target, "");
    let rec = |l: &Leaf| dnssec::tlsa_3_1_1(&l.der);
    let served = || {
        served_leaf(
            &format!("{AUTHORITATIVE}:25"),
            Proto::Smtp,
            Some(MAIL),
            Offer::Any,
        )
        .unwrap()
    };
    // The served key and the key in the target's file (which Postfix
    // serves after any reload) each have a record in DNS, seen since long
    // enough for every resolver to know it.
    let assert_covered = |step: &str| {
        let published = lab.tlsa();
        let now = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
        )
        .unwrap();
        for (what, leaf) in [("served", served()), ("installed", lab.served_file_leaf())] {
            let record = dnssec::tlsa_3_1_1(&leaf);
            assert!(
                published.contains(&record),
                "after a kill {step}: the {what} key's record {record} is not published: {published:?}\n{:#}",
                lab.ledger()
            );
            let t0 = lab.t0(&record);
            assert!(
                t0.is_some_and(|t0| now - t0 >= 2 * i64::from(TTL)),
                "after a kill {step}: the {what} key's record {record} is not aged (t0 {t0:?}, now {now})\n{:#}",
                lab.ledger()
            );
        }
    };

    // Before the rollovers: current and standby published and aged.
    lab.sync().ok();
    lab.until_seen(&rec(&standby));
    std::thread::sleep(Duration::from_secs(u64::from(3 * TTL)));

    for step in ROLLOVER_KILLS {
        // The ACME pass stored a certificate for the standby key and made
        // the next standby key, as a rollover does.
        let next = lab.issue();
        put("bundle.pem", combined_pem(&standby));
        put("standby-key.pem", next.key_pem());
        write(&count, "0");
        write(&kill, step);
        let out = output_within(lab.mx_cmd(&["sync"]), DEADLINE).unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(9),
            "mxkeys was not killed {step}: {out:?}"
        );
        assert!(!kill.exists(), "the kill {step} did not happen");
        assert_covered(step);

        // The next runs converge: the former standby is served, the old
        // current record is gone, the next standby is published and ages.
        let start = Instant::now();
        loop {
            let run = lab.sync();
            let published = lab.tlsa();
            if served() == standby.der
                && lab.served_file_leaf() == standby.der
                && published.len() == 2
                && published.contains(&rec(&standby))
                && published.contains(&rec(&next))
            {
                break;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no convergence after a kill {step}: {published:?}\n{}\n{}",
                run.describe(),
                postfix.log()
            );
            assert_covered(step);
            std::thread::sleep(Duration::from_secs(1));
        }
        lab.until_seen(&rec(&next));
        std::thread::sleep(Duration::from_secs(u64::from(3 * TTL)));
        (current, standby) = (standby, next);
    }
    assert_eq!(served(), current.der);
}

/// The signed zone, a CA, and mxkeys' files: a files source (`src/`), a
/// target writing `tls/combined.pem`, state in `state/`.
struct Lab {
    zone: SignedZone,
    ca: Ca,
    dir: PathBuf,
    config: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn start() -> Lab {
        dnssec::assert_in_namespace();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let zone = SignedZone::start(&dir.join("dns"), "");
        for d in ["src", "tls", "state"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        Lab {
            zone,
            ca: Ca::new("dane-pass"),
            config: dir.join("mxkeys.toml"),
            dir,
            _tmp: tmp,
        }
    }

    fn issue(&self) -> Leaf {
        self.ca.issue(&LeafSpec::new(&[MAIL]))
    }

    /// The files source offers `leaf`.
    fn offer(&self, leaf: &Leaf) {
        write(&self.dir.join("src/fullchain.pem"), leaf.fullchain_pem());
        write(&self.dir.join("src/privkey.pem"), leaf.key_pem());
    }

    fn combined(&self) -> PathBuf {
        self.dir.join("tls/combined.pem")
    }

    /// The target holds `leaf` already (as if installed long ago).
    fn install(&self, leaf: &Leaf) {
        write(&self.combined(), combined_pem(leaf));
        set_mode(&self.combined(), 0o600);
    }

    /// The rfc2136 provider for BIND, checking at BIND and resolving
    /// through Unbound.
    fn rfc2136(&self) -> String {
        format!(
            "[dns.bind]\ntype = \"rfc2136\"\nserver = \"{AUTHORITATIVE}:53\"\n\
             zone = \"example.test\"\ntsig_name = \"{KEY_NAME}\"\ntsig_secret_file = {}\n\
             nameservers = [\"{AUTHORITATIVE}:53\"]\nresolver = \"{RESOLVER}:53\"\n\
             propagation_interval = \"1s\"\n",
            qp(&self.zone.dir.join("tsig.key"))
        )
    }

    /// An exec provider over nsupdate and dig (the `[dns.bind]` table):
    /// `prelude` is shell put before the dispatch, `before` and `after`
    /// run around every write (replace or remove), so a test can SIGKILL
    /// mxkeys, the script's parent, at a chosen write.
    fn nsupdate_provider(&self, prelude: &str, before: &str, after: &str) -> String {
        let script = self.dir.join("provider.sh");
        let key = self.zone.dir.join("tsig.key");
        write(
            &script,
            format!(
                "#!/bin/sh\n\
                 action=$1; name=$2\n\
                 {prelude}\
                 case $action in\n\
                 read) exec {dig} @{AUTHORITATIVE} +norecurse +short \"$name\" TLSA ;;\n\
                 replace) ttl=$4; shift 4\n\
                   {before}\n\
                   {{ echo 'server {AUTHORITATIVE} 53'; echo 'zone example.test'; echo \"update delete $name TLSA\";\n\
                     for v in \"$@\"; do echo \"update add $name $ttl TLSA $v\"; done; echo send; }} | {nsupdate} -k {key}\n\
                   {after} ;;\n\
                 remove) {before}\n\
                   printf 'server {AUTHORITATIVE} 53\\nzone example.test\\nupdate delete %s TLSA\\nsend\\n' \"$name\" | {nsupdate} -k {key}\n\
                   {after} ;;\n\
                 esac\n",
                dig = prog("dig").display(),
                nsupdate = prog("nsupdate").display(),
                key = key.display(),
            ),
        );
        set_mode(&script, 0o755);
        format!(
            "[dns.bind]\ntype = \"exec\"\ncommand = [{}]\nzone = \"example.test\"\n\
             nameservers = [\"{AUTHORITATIVE}:53\"]\nresolver = \"{RESOLVER}:53\"\n\
             propagation_interval = \"1s\"\n",
            q(script.to_str().unwrap())
        )
    }

    /// `dns`: the `[dns.bind]` table; `target`: more target keys; `dane`:
    /// more `[target.dane]` keys. The source: the files in `src/`.
    fn write_config(&self, dns: &str, target: &str, dane: &str) {
        let files = format!(
            "[[source]]\ntype = \"files\"\ncert = {}\nkey = {}\n",
            qp(&self.dir.join("src/fullchain.pem")),
            qp(&self.dir.join("src/privkey.pem")),
        );
        self.write_config_sources(dns, &files, target, dane);
    }

    /// Like [`Lab::write_config`] with `sources` (TOML tables).
    fn write_config_sources(&self, dns: &str, sources: &str, target: &str, dane: &str) {
        write(
            &self.config,
            format!(
                "hostname = {}\nstate_dir = {}\n\n{dns}\n{sources}\n\
                 [[target]]\nname = \"mx\"\ndomains = [{}]\ncombined = {}\n{target}\
                 [target.dane]\ndns = \"bind\"\nttl = {TTL}\n{dane}",
                q(MAIL),
                qp(&self.dir.join("state")),
                q(MAIL),
                qp(&self.combined()),
            ),
        );
    }

    fn mx_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("MXKEYS_CONFIG").env("NO_COLOR", "1");
        c
    }

    fn mx(&self, args: &[&str]) -> Run {
        Run::from_output(
            format!("mxkeys {}", args.join(" ")),
            run_with_timeout(self.mx_cmd(args)),
        )
    }

    fn sync(&self) -> Run {
        self.mx(&["-v", "sync"])
    }

    /// The TLSA set at [`OWNER`] on the authoritative server, as `3 1 1
    /// <lowercase hex>` texts.
    fn tlsa(&self) -> Vec<String> {
        let out = self.zone.authoritative(&["TLSA", OWNER]);
        dnssec::answer(&out, "TLSA")
            .iter()
            .map(|r| common::dnssec::normalize(r))
            .collect()
    }

    fn ledger(&self) -> Value {
        let text = std::fs::read_to_string(self.dir.join("state/dane.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The record's `t0` at [`OWNER`] in the ledger.
    fn t0(&self, record: &str) -> Option<i64> {
        self.ledger()["targets"]["mx"]["seen"][OWNER][record].as_i64()
    }

    /// Runs `sync` until the ledger has a `t0` for `record`; that `t0`.
    fn until_seen(&self, record: &str) -> i64 {
        let start = Instant::now();
        loop {
            if let Some(t0) = self.t0(record) {
                return t0;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{record} never seen\n{:#}\n{}",
                self.ledger(),
                self.zone.logs()
            );
            std::thread::sleep(Duration::from_secs(1));
            self.sync().ok();
        }
    }

    /// DER of the leaf the target's file holds.
    fn served_file_leaf(&self) -> Vec<u8> {
        read_certs(&self.combined()).remove(0)
    }

    /// When the target's file was last written (Unix seconds).
    fn installed_at(&self) -> i64 {
        let modified = std::fs::metadata(self.combined())
            .and_then(|m| m.modified())
            .unwrap();
        let secs = modified
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        i64::try_from(secs).unwrap()
    }
}
