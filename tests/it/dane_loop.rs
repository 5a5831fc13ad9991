//! Issue 14 end to end, under a mail loop: a Postfix sender in `dane` mode
//! delivers a message every second to the Postfix under test while its
//! certificate changes, and every message must arrive over a connection
//! verified against the DNSSEC-validated TLSA set (`testsupport::mailloop`).
//!
//! The harness is tested first, both ways: a loop with a matching record
//! delivers every message verified; a loop during which the served key is
//! swapped without publishing its hash records the deferrals (so a loop can
//! fail). Then mxkeys keeps the records itself, in the lab's signed zone
//! (RFC 2136 with TSIG to BIND, Unbound validating): a Certbot renewal and a
//! Traefik acme.json bringing a new key are held until the new key's record
//! is aged, then installed, then the old record retired, and no message is
//! deferred; records another host and an administrator added (nsupdate)
//! survive every edit; an unsigned zone is refused and nothing published.
//!
//! Each test re-runs this binary inside a network + mount namespace of its
//! own (`testsupport::dnssec`). Needs root, util-linux, iproute2, bind9,
//! bind9-dnsutils, unbound, postfix and openssl: without them a test is
//! skipped loudly, or fails with `CI=true`.

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::dnssec::{self, SignedZone, TTL, UNSIGNED_ZONE, ZONE};
use common::mailloop::MailLoop;
use common::servers::{
    MAIL, OPENSSL, PEBBLE, POSTFIX, Pebble, Postfix, combined_pem, write_atomic,
};
use common::*;

/// Where senders look for the TLSA records of the host under test.
const OWNER: &str = "_25._tcp.mail.example.test";
/// Another MX host of the zone, whose record an administrator added.
const MX2_OWNER: &str = "_25._tcp.mx2.example.test";
/// How long a step of mxkeys (publish, age, install, retire) may take.
const STEP: Duration = Duration::from_secs(120);

/// The inner test's full name in this binary (`dane_loop::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

#[test]
fn a_mail_loop_with_a_matching_record_delivers_every_message_verified() {
    dnssec::run_in_namespace(
        "a_mail_loop_with_a_matching_record_delivers_every_message_verified",
        &inner("inside_loop_with_matching_record"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn a_mail_loop_with_a_matching_2_1_1_record_counts_its_trusted_deliveries_as_verified() {
    dnssec::run_in_namespace(
        "a_mail_loop_with_a_matching_2_1_1_record_counts_its_trusted_deliveries_as_verified",
        &inner("inside_loop_with_2_1_1_record"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn a_mail_loop_records_deferrals_when_the_served_key_changes_without_its_record() {
    dnssec::run_in_namespace(
        "a_mail_loop_records_deferrals_when_the_served_key_changes_without_its_record",
        &inner("inside_loop_with_unpublished_key"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn a_certbot_renewal_with_a_new_key_waits_for_its_record_and_no_message_is_deferred() {
    dnssec::run_in_namespace(
        "a_certbot_renewal_with_a_new_key_waits_for_its_record_and_no_message_is_deferred",
        &inner("inside_certbot_new_key"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn a_traefik_acme_json_with_a_new_key_under_the_daemon_loses_no_message() {
    dnssec::run_in_namespace(
        "a_traefik_acme_json_with_a_new_key_under_the_daemon_loses_no_message",
        &inner("inside_traefik_new_key_daemon"),
        &[POSTFIX, OPENSSL],
    );
}

#[test]
fn an_own_acme_renewal_reuses_the_key_and_a_rollover_moves_to_the_aged_standby_without_a_deferral()
{
    dnssec::run_in_namespace(
        "an_own_acme_renewal_reuses_the_key_and_a_rollover_moves_to_the_aged_standby_without_a_deferral",
        &inner("inside_own_acme_reuse_and_rollover"),
        &[POSTFIX, OPENSSL, PEBBLE],
    );
}

#[test]
fn an_unsigned_zone_is_refused_and_no_record_is_published_there() {
    dnssec::run_in_namespace(
        "an_unsigned_zone_is_refused_and_no_record_is_published_there",
        &inner("inside_unsigned_zone"),
        &[],
    );
}

// ---------------------------------------------------------------------------
// Inside the namespace: the harness
// ---------------------------------------------------------------------------

#[test]
#[ignore = "run inside a namespace by a_mail_loop_with_a_matching_record_..."]
fn inside_loop_with_matching_record() {
    let lab = Lab::start();
    lab.zone
        .set_tlsa(OWNER, &[&dnssec::tlsa_3_1_1(&lab.leaf.der)]);
    let sender = Postfix::start_dane_sender(&lab.dir.path().join("sender"));
    let mail = MailLoop::start(&sender);
    assert!(
        mail.wait_delivered(5, STEP),
        "the loop delivered fewer than 5 messages: {:?}\n{}",
        mail.tally(),
        sender.log()
    );
    let tally = mail.stop();
    eprintln!("{tally:?}");
    tally.assert_every_message_verified(|| format!("{}\n{}", sender.log(), lab.receiver.log()));
    assert!(tally.verified >= 5, "{tally:?}");
}

#[test]
#[ignore = "run inside a namespace by a_mail_loop_with_a_matching_2_1_1_record_..."]
fn inside_loop_with_2_1_1_record() {
    let lab = Lab::start();
    // DANE-TA: the issuer's key, the leaf's name checked.
    let issuer = lab.leaf.chain.first().expect("the leaf's issuer");
    lab.zone.set_tlsa(OWNER, &[&dnssec::tlsa_2_1_1(issuer)]);
    let sender = Postfix::start_dane_sender(&lab.dir.path().join("sender"));
    let mail = MailLoop::start(&sender);
    assert!(
        mail.wait_delivered(3, STEP),
        "the loop delivered fewer than 3 messages: {:?}\n{}",
        mail.tally(),
        sender.log()
    );
    let tally = mail.stop();
    eprintln!("{tally:?}");
    tally.assert_every_message_verified(|| format!("{}\n{}", sender.log(), lab.receiver.log()));
}

#[test]
#[ignore = "run inside a namespace by a_mail_loop_records_deferrals_..."]
fn inside_loop_with_unpublished_key() {
    let lab = Lab::start();
    lab.zone
        .set_tlsa(OWNER, &[&dnssec::tlsa_3_1_1(&lab.leaf.der)]);
    let sender = Postfix::start_dane_sender(&lab.dir.path().join("sender"));
    let mail = MailLoop::start(&sender);
    assert!(
        mail.wait_delivered(2, STEP),
        "the loop delivered fewer than 2 messages before the swap: {:?}\n{}",
        mail.tally(),
        sender.log()
    );
    // Another key served, its hash published nowhere.
    let other = lab.ca.issue(&LeafSpec::new(&[MAIL]));
    write_atomic(&lab.chain, combined_pem(&other), 0o600);
    lab.receiver.reload();
    let start = Instant::now();
    while mail.tally().deferred.is_empty() && start.elapsed() < STEP {
        std::thread::sleep(Duration::from_millis(200));
    }
    let tally = mail.stop();
    eprintln!("{tally:?}");
    assert!(!tally.all_verified(), "{tally:?}\n{}", sender.log());
    assert!(
        tally.deferred.iter().any(|l| l.contains("dsn=4.7.5")),
        "no deferral for the unpublished key: {tally:?}\n{}",
        sender.log()
    );
    assert!(
        tally.verified >= 2,
        "the deliveries before the swap: {tally:?}"
    );
}

/// The signed zone, a CA, and the Postfix receiver on 127.0.0.1:25 serving
/// a fresh leaf from a combined file.
struct Lab {
    receiver: Postfix,
    zone: SignedZone,
    dir: tempfile::TempDir,
    ca: Ca,
    leaf: Leaf,
    chain: PathBuf,
}

impl Lab {
    fn start() -> Lab {
        dnssec::assert_in_namespace();
        let dir = tempfile::tempdir().unwrap();
        let zone = SignedZone::start(&dir.path().join("dns"), "");
        let ca = Ca::new("dane-loop");
        let leaf = ca.issue(&LeafSpec::new(&[MAIL]));
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        let chain = tls.join("chain.pem");
        write_atomic(&chain, combined_pem(&leaf), 0o600);
        let receiver = Postfix::start_sink_on(&dir.path().join("postfix"), &[&chain], 25);
        Lab {
            receiver,
            zone,
            dir,
            ca,
            leaf,
            chain,
        }
    }
}

// ---------------------------------------------------------------------------
// Inside the namespace: mxkeys
// ---------------------------------------------------------------------------

#[test]
#[ignore = "run inside a namespace by a_certbot_renewal_with_a_new_key_..."]
fn inside_certbot_new_key() {
    dnssec::assert_in_namespace();
    let env = Env::new();
    let ca = Ca::new("dane-certbot");
    let old = ca.issue(&LeafSpec::new(&[MAIL]));
    let certbot = Certbot::new(&env.path("letsencrypt"));
    certbot.add("mail", &old);
    let bed = Bed::start(env, src_certbot(&certbot.root), &old, &ca);
    let old_rec = dnssec::tlsa_3_1_1(&old.der);

    // Certbot renews with a new key (its default).
    let new = ca.issue(&LeafSpec::new(&[MAIL]));
    let new_rec = dnssec::tlsa_3_1_1(&new.der);
    certbot.add("mail", &new);

    // The first sync publishes the new key's record at once and holds the
    // certificate: the record is younger than 2 × TTL.
    bed.env.sync().ok();
    bed.assert_foreign_records_intact();
    let served = bed.zone.served_tlsa(OWNER);
    assert!(
        served.contains(&new_rec) && served.contains(&old_rec),
        "after the first sync, both keys' records are published: {served:?}"
    );
    assert_eq!(
        bed.installed(),
        old.der,
        "the new key was installed before its record aged"
    );
    // Both say how to renew without a hold next time.
    for args in [&["status"][..], &["check"][..]] {
        let run = bed.env.run(args);
        assert!(
            run.stdout.contains("reuse_key = True"),
            "`mxkeys {}` does not suggest reuse_key for the held Certbot key:\n{}",
            args.join(" "),
            run.describe()
        );
    }
    let status = bed.env.run(&["dane", "status"]);
    status.ok();
    assert!(
        status.stdout.to_lowercase().contains(&hash_of(&new_rec)),
        "dane status names the new key's record:\n{}",
        status.describe()
    );

    // Syncing on: installed once aged, then the old record retired.
    bed.until("the new certificate installed", || {
        bed.env.sync().ok();
        bed.assert_foreign_records_intact();
        bed.assert_installed_key_published();
        bed.installed() == new.der
    });
    bed.until("the old key's record retired", || {
        bed.env.sync().ok();
        bed.assert_foreign_records_intact();
        bed.assert_installed_key_published();
        !bed.zone.served_tlsa(OWNER).contains(&old_rec)
    });
    bed.finish(&[&new_rec]);
}

#[test]
#[ignore = "run inside a namespace by a_traefik_acme_json_with_a_new_key_..."]
fn inside_traefik_new_key_daemon() {
    dnssec::assert_in_namespace();
    let env = Env::new();
    let ca = Ca::new("dane-traefik");
    let old = ca.issue(&LeafSpec::new(&[MAIL]));
    let acme = env.path("acme.json");
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&old, MAIL)]))]),
    );
    let bed = Bed::start(env, src_traefik(&acme), &old, &ca);
    let old_rec = dnssec::tlsa_3_1_1(&old.der);
    let mut daemon = bed.env.daemon(&[]);

    // Traefik renews with a new key (it always does).
    let new = ca.issue(&LeafSpec::new(&[MAIL]));
    let new_rec = dnssec::tlsa_3_1_1(&new.der);
    write_json(
        &acme,
        &acme_v2(&[("le", Some(vec![AcmeEntry::new(&new, MAIL)]))]),
    );

    // The daemon publishes first, installs after: the new record is
    // served by BIND before the new certificate is in the target.
    let mut published = false;
    bed.until("the daemon to install the new certificate", || {
        daemon.assert_running();
        bed.assert_foreign_records_intact();
        bed.assert_installed_key_published();
        let installed = bed.installed() == new.der;
        assert!(
            !installed || published,
            "the new certificate was installed before its record was served\n{}",
            daemon.describe()
        );
        published = published || bed.zone.served_tlsa(OWNER).contains(&new_rec);
        installed
    });
    bed.until("the daemon to retire the old key's record", || {
        daemon.assert_running();
        bed.assert_foreign_records_intact();
        bed.assert_installed_key_published();
        !bed.zone.served_tlsa(OWNER).contains(&old_rec)
    });
    bed.finish(&[&new_rec]);
    daemon.terminate();
}

#[test]
#[ignore = "run inside a namespace by an_own_acme_renewal_reuses_the_key_..."]
fn inside_own_acme_reuse_and_rollover() {
    dnssec::assert_in_namespace();
    let env = Env::new();
    let pebble = Pebble::start_with_dns(
        &env.path("pebble"),
        format!("{}:53", dnssec::AUTHORITATIVE).parse().unwrap(),
    );
    let ca = Ca::new("dane-acme");
    // Postfix needs files at start: a bootstrap certificate.
    let boot = self_signed_leaf(&LeafSpec::new(&[MAIL]));
    let mut bed = Bed::new(env, &boot, &ca);
    let top = format!(
        "[acme]\ndirectory = {}\nemail = \"admin@example.test\"\nca_bundle = {}\n",
        q(&pebble.url),
        qp(&pebble.https_ca)
    );
    let source = format!(
        "[[source]]\ntype = \"acme\"\nname = \"own\"\ndomains = {}\n\
         challenge = \"http-01\"\nhttp_listen = {}\n",
        q_list(&[MAIL]),
        q(format!("127.0.0.1:{}", pebble.http_port))
    );
    bed.configure(&top, vec![source]);
    let first = bed.env.run(&["renew"]);
    first.ok();
    bed.until("the first certificate from pebble installed", || {
        bed.env.sync().ok();
        bed.installed() != boot.der
    });
    let current_rec = dnssec::tlsa_3_1_1(&bed.installed());
    // Current + next: the standby key's record is published too.
    let standby_rec = bed.until_some("the standby key's record published", || {
        bed.env.sync().ok();
        let mine = bed.own_records();
        (mine.len() == 2 && mine.contains(&current_rec))
            .then(|| mine.into_iter().find(|r| *r != current_rec))
            .flatten()
    });
    bed.start_loop();

    // (a) A renewal reuses the key: installed at once, no DNS change.
    let current = bed.installed();
    bed.env.run(&["renew", "--force"]).ok();
    let renewed = bed.installed();
    assert_ne!(
        renewed,
        current,
        "the renewed certificate was not installed at once\n{}",
        bed.context()
    );
    assert_eq!(
        dnssec::tlsa_3_1_1(&renewed),
        current_rec,
        "the renewal did not reuse the key"
    );
    let mut both = vec![current_rec.clone(), standby_rec.clone()];
    both.sort();
    assert_eq!(bed.own_records(), both, "a key-reusing renewal changed DNS");

    // (b) A rollover orders with the standby key, whose record is aged:
    // installed, then a new standby published and the old record retired.
    // `dane rollover` orders at once and reconciles (the gate opens: the
    // standby's record is aged); syncs then retire the old record.
    bed.env.run(&["dane", "rollover", "mx"]).ok();
    bed.until("the certificate with the standby key installed", || {
        bed.env.sync().ok();
        bed.assert_foreign_records_intact();
        bed.assert_installed_key_published();
        dnssec::tlsa_3_1_1(&bed.installed()) == standby_rec
    });
    let next_rec = bed.until_some("a new standby published and the old record retired", || {
        bed.env.sync().ok();
        bed.assert_foreign_records_intact();
        bed.assert_installed_key_published();
        let mine = bed.own_records();
        (mine.len() == 2 && mine.contains(&standby_rec) && !mine.contains(&current_rec))
            .then(|| mine.into_iter().find(|r| *r != standby_rec))
            .flatten()
    });
    bed.finish(&[&standby_rec, &next_rec]);
}

#[test]
#[ignore = "run inside a namespace by an_unsigned_zone_is_refused_..."]
fn inside_unsigned_zone() {
    dnssec::assert_in_namespace();
    let env = Env::new();
    let zone = SignedZone::start(&env.path("dns"), "");
    let host = format!("mail.{UNSIGNED_ZONE}");
    let owner = format!("_25._tcp.{host}");
    let ca = Ca::new("dane-unsigned");
    let leaf = ca.issue(&LeafSpec::new(&[&host]));
    let mut target = Target::new(&env, "mx").domains(&[&host]);
    for l in ["[target.dane]", "dns = \"plain\"", "ttl = 2"] {
        target = target.extra(l);
    }
    env.write_config(
        &[
            files_source(&env.root, &leaf),
            zone.rfc2136_toml("plain", UNSIGNED_ZONE),
        ],
        &[&target],
    );
    let run = env.sync();
    let all = format!("{}\n{}", run.stdout, run.stderr);
    let line = all
        .lines()
        .find(|l| l.contains(UNSIGNED_ZONE) && l.contains("dig +dnssec DNSKEY"))
        .unwrap_or_else(|| {
            panic!(
                "no line names the unsigned zone and how to check it\n{}",
                run.describe()
            )
        });
    eprintln!("refused: {line}");
    assert!(
        zone.served_tlsa(&owner).is_empty(),
        "a TLSA record was published into the unsigned zone: {:?}\n{}",
        zone.served_tlsa(&owner),
        run.describe()
    );
}

/// mxkeys keeping one target's records in the signed zone, its Postfix
/// receiver on 127.0.0.1:25 serving the target's combined file, records of
/// another host and an administrator's in the zone, and a mail loop
/// through a DANE sender, started once the installed key's record is
/// validated.
struct Bed {
    // Dropped in this order: the loop, the two Postfixes, the DNS servers,
    // then the files.
    mail: Option<MailLoop>,
    sender: Option<Postfix>,
    receiver: Postfix,
    zone: SignedZone,
    env: Env,
    target: Target,
    chain: PathBuf,
    /// Records mxkeys must never touch: (owner, record).
    foreign: Vec<(String, String)>,
}

impl Bed {
    /// `source` (a `[[source]]` table) holds `first`, which the target's
    /// file holds already (installed by an earlier run); one sync, then the
    /// loop.
    fn start(env: Env, source: String, first: &Leaf, ca: &Ca) -> Bed {
        let mut bed = Bed::new(env, first, ca);
        bed.configure("", vec![source]);
        bed.env.sync().ok();
        bed.start_loop();
        bed
    }

    /// The zone (with the foreign records), the receiver serving `boot` and
    /// the target; no configuration written, no loop.
    fn new(env: Env, boot: &Leaf, ca: &Ca) -> Bed {
        let zone = SignedZone::start(&env.path("dns"), "");
        // Another MX host's record, and a hand-made one at our owner (a
        // spare key of the administrator's): both must survive.
        let foreign = vec![
            (
                MX2_OWNER.to_owned(),
                dnssec::tlsa_3_1_1(&ca.issue(&LeafSpec::new(&["mx2.example.test"])).der),
            ),
            (
                OWNER.to_owned(),
                dnssec::tlsa_3_1_1(&ca.issue(&LeafSpec::new(&[MAIL])).der),
            ),
        ];
        for (owner, record) in &foreign {
            zone.add_tlsa(owner, record);
        }

        let mut target = Target::new(&env, "mx").domains(&[MAIL]);
        let chain = target.dir.join("chain.pem");
        target.fullchain = None;
        target.key = None;
        target.combined = Some(chain.clone());
        write_atomic(&chain, combined_pem(boot), 0o600);
        let receiver = Postfix::start_sink_on(&env.path("postfix"), &[&chain], 25);
        let reload = receiver.reload_argv();
        target = target.reload(&reload.iter().map(String::as_str).collect::<Vec<_>>());
        for l in ["[target.dane]", "dns = \"lab\"", &format!("ttl = {TTL}")] {
            target = target.extra(l);
        }
        Bed {
            mail: None,
            sender: None,
            receiver,
            zone,
            env,
            target,
            chain,
            foreign,
        }
    }

    /// Writes the configuration: `top` (top-level keys and tables), the
    /// `sources`, the lab's `[dns.lab]` and the target.
    fn configure(&self, top: &str, mut sources: Vec<String>) {
        sources.push(self.zone.rfc2136_toml("lab", ZONE));
        self.env.write_config_with(top, &sources, &[&self.target]);
    }

    /// Waits until the installed key's record is validated, then starts the
    /// sender and the loop and waits for its first deliveries.
    fn start_loop(&mut self) {
        let rec = dnssec::tlsa_3_1_1(&self.installed());
        self.zone.wait(
            "Unbound to answer the installed key's record with ad",
            || {
                self.zone
                    .resolved_tlsa(OWNER)
                    .filter(|s| s.contains(&rec))
                    .map(|_| ())
            },
        );
        let sender = Postfix::start_dane_sender(&self.env.path("sender"));
        let mail = MailLoop::start(&sender);
        self.sender = Some(sender);
        assert!(
            mail.wait_delivered(2, STEP),
            "the loop delivered fewer than 2 messages before any change: {:?}\n{}",
            mail.tally(),
            self.context()
        );
        self.mail = Some(mail);
        self.assert_foreign_records_intact();
    }

    /// The leaf in the target's combined file.
    fn installed(&self) -> Vec<u8> {
        leaf_of(&self.chain)
    }

    #[track_caller]
    fn assert_foreign_records_intact(&self) {
        for (owner, record) in &self.foreign {
            let served = self.zone.served_tlsa(owner);
            assert!(
                served.contains(record),
                "the record {record} at {owner}, not mxkeys', is gone: {served:?}\n{}",
                self.context()
            );
        }
    }

    /// The invariant, sampled: the key in the target's file (served from
    /// the next reload on) has its record published, and so has the key
    /// Postfix serves until then (checked by the loop).
    #[track_caller]
    fn assert_installed_key_published(&self) {
        let rec = dnssec::tlsa_3_1_1(&self.installed());
        let served = self.zone.served_tlsa(OWNER);
        assert!(
            served.contains(&rec),
            "the installed key's record {rec} is not published: {served:?}\n{}",
            self.context()
        );
    }

    /// Polls `probe` every second until true; panics after [`STEP`].
    #[track_caller]
    fn until(&self, what: &str, mut probe: impl FnMut() -> bool) {
        let start = Instant::now();
        while !probe() {
            assert!(
                start.elapsed() < STEP,
                "timed out after {STEP:?} waiting for {what}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Polls `probe` every second until it returns `Some`; panics after
    /// [`STEP`].
    #[track_caller]
    fn until_some<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                start.elapsed() < STEP,
                "timed out after {STEP:?} waiting for {what}\n{}",
                self.context()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// The records BIND serves at [`OWNER`] that are not foreign (sorted).
    fn own_records(&self) -> Vec<String> {
        self.zone
            .served_tlsa(OWNER)
            .into_iter()
            .filter(|r| !self.foreign.iter().any(|(o, f)| o == OWNER && f == r))
            .collect()
    }

    /// Lets the loop deliver a few more messages over the final state, stops
    /// it and asserts that every message was verified, that the owner holds
    /// exactly `records` (mxkeys') plus the foreign one, and that `mxkeys
    /// dane check` is satisfied.
    #[track_caller]
    fn finish(mut self, records: &[&str]) {
        let mail = self.mail.take().expect("the loop runs");
        assert!(
            mail.wait_delivered(3, STEP),
            "the loop delivered fewer than 3 messages after the change: {:?}\n{}",
            mail.tally(),
            self.context()
        );
        let tally = mail.stop();
        eprintln!("mail loop: {tally:?}");
        tally.assert_every_message_verified(|| self.context());
        let mut want: Vec<String> = records.iter().map(|r| (*r).to_owned()).collect();
        want.extend(
            self.foreign
                .iter()
                .filter(|(o, _)| o == OWNER)
                .map(|(_, r)| r.clone()),
        );
        want.sort();
        assert_eq!(
            self.zone.served_tlsa(OWNER),
            want,
            "the records at {OWNER} at the end\n{}",
            self.context()
        );
        self.assert_foreign_records_intact();
        // mxkeys' own DANE sender view agrees.
        let check = self.env.run(&["dane", "check"]);
        assert_eq!(
            check.code,
            0,
            "dane check after the change\n{}\n{}",
            check.describe(),
            self.context()
        );
    }

    fn context(&self) -> String {
        let ledger = std::fs::read_to_string(self.env.state.join("dane.json")).unwrap_or_default();
        format!(
            "--- dane.json ---\n{ledger}\n{}\n{}\n{}",
            self.sender.as_ref().map(Postfix::log).unwrap_or_default(),
            self.receiver.log(),
            self.zone.logs()
        )
    }
}

/// The leaf (DER) first in a PEM file.
fn leaf_of(path: &Path) -> Vec<u8> {
    read_certs(path).into_iter().next().unwrap_or_default()
}

/// The hex hash of a `3 1 1 HEX` record, lower-case.
fn hash_of(record: &str) -> String {
    record
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_lowercase()
}
