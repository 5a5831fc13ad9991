//! Issue 15 end to end, with real senders: the MTA-STS policy mxkeys keeps
//! (`mxkeys sync` writing into a webroot nginx serves, and publishing the
//! `_mta-sts` TXT record over RFC 2136 to BIND) is read by
//! postfix-mta-sts-resolver and applied by a Postfix sender
//! (`testsupport::mtasts`).
//!
//! The lab is tested first, both ways, with a hand-written body and TXT: a
//! sender delivers to an MX host the `enforce` policy lists, and defers
//! mail for a host it does not list (the same host took mail before the
//! policy was there, so the deferral is the policy's); and a reader
//! polling the TXT, then the body, catches an id published a second before
//! its body (so the reader of the last test can fail). Then mxkeys keeps
//! the policy: the resolver reads the body mxkeys wrote and reports the id
//! mxkeys published; under `enforce` the sender delivers to the listed MX
//! and defers the unlisted one; `enforce` is refused (the policy stays
//! `testing`, and mxkeys names the host) while an MX host serves a
//! self-signed certificate; a reader polling the TXT and the body during a
//! policy change never sees the new id with the old body; and `mxkeys run`
//! with `listen` serves the policy itself (the certificate of a target
//! covering `mta-sts.example.test`) and the sender applies it.
//!
//! Each test re-runs this binary inside a network + mount namespace of its
//! own (`testsupport::dnssec`). Needs root, util-linux, iproute2, bind9,
//! bind9-dnsutils, unbound, postfix, nginx-light, curl and
//! postfix-mta-sts-resolver: without them a test is skipped loudly, or
//! fails with `CI=true`.

use mxkeys_testsupport as common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::dnssec;
use common::mtasts::{Lab, MX1, MX2, Mx2, POLICY_HOST, RESPONDER_IP};
use common::*;
use mxkeys::mta_sts::policy::{Mode, Policy};

/// How long mxkeys may take to serve a body and publish its id.
const STEP: Duration = Duration::from_secs(120);

/// The inner test's full name in this binary (`mta_sts_send::NAME`).
fn inner(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}

fn outer(name: &str, inside: &str) {
    dnssec::run_in_namespace(name, &inner(inside), &[common::mtasts::NEEDS]);
}

#[test]
fn a_hand_written_enforce_policy_delivers_to_the_listed_mx_and_defers_an_unlisted_one() {
    outer(
        "a_hand_written_enforce_policy_delivers_to_the_listed_mx_and_defers_an_unlisted_one",
        "inside_hand_written_policy",
    );
}

#[test]
fn a_reader_catches_an_id_published_before_its_body() {
    outer(
        "a_reader_catches_an_id_published_before_its_body",
        "inside_reader_catches_id_before_body",
    );
}

#[test]
fn mta_sts_query_reads_the_policy_mxkeys_wrote_and_reports_the_id_mxkeys_published() {
    outer(
        "mta_sts_query_reads_the_policy_mxkeys_wrote_and_reports_the_id_mxkeys_published",
        "inside_query_reads_mxkeys_policy",
    );
}

#[test]
fn under_mxkeys_enforce_policy_the_sender_delivers_to_the_listed_mx_and_defers_an_unlisted_one() {
    outer(
        "under_mxkeys_enforce_policy_the_sender_delivers_to_the_listed_mx_and_defers_an_unlisted_one",
        "inside_mxkeys_enforce",
    );
}

#[test]
fn enforce_is_refused_while_an_mx_host_serves_a_self_signed_certificate_and_mxkeys_names_it() {
    outer(
        "enforce_is_refused_while_an_mx_host_serves_a_self_signed_certificate_and_mxkeys_names_it",
        "inside_self_signed_mx_keeps_testing",
    );
}

#[test]
fn the_daemon_serves_its_enforce_policy_itself_and_the_sender_applies_it() {
    outer(
        "the_daemon_serves_its_enforce_policy_itself_and_the_sender_applies_it",
        "inside_daemon_listen",
    );
}

#[test]
fn a_reader_during_a_policy_change_never_sees_the_new_id_with_the_old_body() {
    outer(
        "a_reader_during_a_policy_change_never_sees_the_new_id_with_the_old_body",
        "inside_reader_during_change",
    );
}

// ---------------------------------------------------------------------------
// Inside the namespace: the lab, by hand
// ---------------------------------------------------------------------------

const HAND_ENFORCE_MX1: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.test\r\nmax_age: 86400\r\n";

#[test]
#[ignore = "run inside a namespace by a_hand_written_enforce_policy_..."]
fn inside_hand_written_policy() {
    let lab = Lab::start(Mx2::TestCa);

    // No policy yet: mx2 takes mail (its certificate is the test CA's).
    lab.set_mx(&[MX2]);
    assert_eq!(lab.resolver_answer(), "", "{}", lab.logs());
    let before = lab.send("before@example.test");
    assert_sent_via(&lab, &before, MX2);

    // The policy lists mx1: mail goes there, verified.
    lab.set_mx(&[MX1]);
    lab.write_policy(HAND_ENFORCE_MX1);
    lab.set_txt("hand1");
    let answer = lab.wait_resolver("secure for mx1", |a| {
        a.contains("secure") && a.contains("match=mx1.example.test")
    });
    eprintln!("resolver: {answer}");
    let listed = lab.send("listed@example.test");
    assert_sent_via(&lab, &listed, MX1);

    // DNS now names mx2 alone, which the policy does not list: deferred.
    lab.set_mx(&[MX2]);
    let unlisted = lab.send("unlisted@example.test");
    assert_deferred_by_policy(&lab, &unlisted, MX2);
}

#[test]
#[ignore = "run inside a namespace by a_reader_catches_an_id_published_before_its_body"]
fn inside_reader_catches_id_before_body() {
    let lab = Arc::new(Lab::start(Mx2::TestCa));
    let old_body = HAND_ENFORCE_MX1.replace("enforce", "testing");
    lab.write_policy(&old_body);
    lab.set_txt(&Policy::parse(&old_body).unwrap().id());
    let new = Policy::parse(HAND_ENFORCE_MX1).unwrap().id();

    // The wrong order: the id first, the body a second later.
    let reader = Reader::start(&lab);
    std::thread::sleep(Duration::from_millis(500));
    lab.set_txt(&new);
    std::thread::sleep(Duration::from_secs(1));
    lab.write_policy(HAND_ENFORCE_MX1);
    std::thread::sleep(Duration::from_millis(500));
    let seen = reader.finish();
    let caught = new_id_with_another_body(&seen, &new);
    assert!(caught.is_some(), "the reader missed the window: {seen:?}");
    eprintln!("caught: {caught:?} in {} samples", seen.len());
}

// ---------------------------------------------------------------------------
// Inside the namespace: mxkeys keeps the policy
// ---------------------------------------------------------------------------

#[test]
#[ignore = "run inside a namespace by mta_sts_query_reads_the_policy_mxkeys_wrote_..."]
fn inside_query_reads_mxkeys_policy() {
    let lab = Lab::start(Mx2::TestCa);
    let env = Env::new();
    env.write_config(&[lab.mxkeys_toml("testing", "max_age = \"1d\"")], &[]);
    let id = sync_until_published(&lab, &env, |_| true);

    let body = lab
        .fetch_body()
        .expect("nginx serves the body mxkeys wrote");
    let policy = Policy::parse(&body).expect("the served body parses");
    assert_eq!(policy.id(), id, "the TXT names the served body's id");
    assert_eq!(policy.mode(), Mode::Testing, "{body}");
    let written =
        std::fs::read_to_string(lab.policy_file()).expect("mxkeys wrote the webroot file");
    assert_eq!(written, body, "nginx serves the file mxkeys wrote");

    let got = lab.query();
    eprintln!("mta-sts-query: {got}");
    assert!(got.contains("VALID"), "{got}\n{}", lab.logs());
    assert!(
        got.contains(&id),
        "mta-sts-query reports another id than {id}: {got}"
    );
    assert!(
        got.contains("testing") && got.contains(MX1),
        "mta-sts-query read another policy than mxkeys': {got}"
    );
}

#[test]
#[ignore = "run inside a namespace by under_mxkeys_enforce_policy_the_sender_..."]
fn inside_mxkeys_enforce() {
    let lab = Lab::start(Mx2::TestCa);
    let env = Env::new();
    env.write_config(
        &[lab.mxkeys_toml("enforce", &format!("mx = [\"{MX1}\"]\nmax_age = \"1d\""))],
        &[],
    );
    let id = sync_until_published(&lab, &env, |p| p.mode() == Mode::Enforce);
    eprintln!("published {id}");
    lab.wait_resolver("secure for mx1", |a| {
        a.contains("secure") && a.contains(&format!("match={MX1}"))
    });
    let listed = lab.send("listed@example.test");
    assert_sent_via(&lab, &listed, MX1);

    // The domain's MX moves to mx2 behind mxkeys' back: the policy still
    // lists mx1 alone, so the sender refuses mx2.
    lab.set_mx(&[MX2]);
    let unlisted = lab.send("unlisted@example.test");
    assert_deferred_by_policy(&lab, &unlisted, MX2);
}

#[test]
#[ignore = "run inside a namespace by enforce_is_refused_while_an_mx_host_serves_a_self_signed_..."]
fn inside_self_signed_mx_keeps_testing() {
    let lab = Lab::start(Mx2::SelfSigned);
    lab.set_mx(&[MX1, MX2]);
    let env = Env::new();
    env.write_config(&[lab.mxkeys_toml("enforce", "max_age = \"1d\"")], &[]);
    let mut outputs = String::new();
    let id = sync_until_published_with(&lab, &env, &mut outputs, |_| true);

    let body = lab
        .fetch_body()
        .expect("nginx serves the body mxkeys wrote");
    let policy = Policy::parse(&body).expect("the served body parses");
    assert_eq!(policy.id(), id);
    assert_eq!(
        policy.mode(),
        Mode::Testing,
        "enforce was published although mx2 serves a self-signed certificate:\n{body}\n{outputs}"
    );
    // Another pass changes nothing: still testing.
    let again = env.sync();
    outputs.push_str(&again.describe());
    assert_eq!(lab.served_id().as_deref(), Some(id.as_str()), "{outputs}");

    // Both the pass's output and `mta-sts status` say why, naming mx2.
    let names_mx2 = |text: &str| {
        text.lines()
            .find(|l| l.contains(MX2) && l.contains("enforce refused"))
            .map(str::to_owned)
    };
    let why = names_mx2(&outputs)
        .unwrap_or_else(|| panic!("no sync output says enforce waits for {MX2}:\n{outputs}"));
    eprintln!("sync: {why}");
    let status = env.run(&["mta-sts", "status"]);
    let why = names_mx2(&status.stdout).unwrap_or_else(|| {
        panic!(
            "mta-sts status does not say enforce waits for {MX2}:\n{}",
            status.describe()
        )
    });
    eprintln!("status: {why}");
    assert_eq!(
        lab.resolver_answer(),
        "",
        "a testing policy changes no delivery"
    );
}

#[test]
#[ignore = "run inside a namespace by the_daemon_serves_its_enforce_policy_itself_..."]
fn inside_daemon_listen() {
    let lab = Lab::start(Mx2::TestCa);
    lab.point_policy_host(RESPONDER_IP);
    let env = Env::new();
    // The responder's certificate: a target covering mta-sts.example.test.
    let web = lab.ca.issue(&LeafSpec::new(&[POLICY_HOST]));
    let target = Target::new(&env, "web").domains(&[POLICY_HOST]);
    env.write_config(
        &[
            files_source(&env.root, &web),
            lab.mxkeys_toml_serving(
                "enforce",
                &format!("listen = \"{RESPONDER_IP}:443\""),
                &format!("mx = [\"{MX1}\"]\nmax_age = \"1d\""),
            ),
        ],
        &[&target],
    );
    let mut daemon = env.daemon(&[]);
    let id = common::servers::poll(
        "the daemon to serve its policy and publish its id",
        STEP,
        || {
            let body = lab.fetch_body()?;
            let policy = Policy::parse(&body).ok()?;
            (policy.mode() == Mode::Enforce && lab.served_id()? == policy.id()).then(|| policy.id())
        },
        || format!("{}\n{}", daemon.describe(), lab.logs()),
    );
    let got = lab.query();
    assert!(
        got.contains("VALID") && got.contains(&id) && got.contains("enforce"),
        "mta-sts-query: {got}\n{}",
        daemon.describe()
    );
    lab.wait_resolver("secure for mx1", |a| {
        a.contains("secure") && a.contains(&format!("match={MX1}"))
    });
    let listed = lab.send("listed@example.test");
    assert_sent_via(&lab, &listed, MX1);
    daemon.assert_running();
    daemon.terminate();
}

#[test]
#[ignore = "run inside a namespace by a_reader_during_a_policy_change_..."]
fn inside_reader_during_change() {
    let lab = Arc::new(Lab::start(Mx2::TestCa));
    let env = Env::new();
    env.write_config(&[lab.mxkeys_toml("testing", "max_age = \"1d\"")], &[]);
    let old = sync_until_published(&lab, &env, |_| true);

    let reader = Reader::start(&lab);
    env.write_config(
        &[lab.mxkeys_toml("enforce", &format!("mx = [\"{MX1}\"]\nmax_age = \"1d\""))],
        &[],
    );
    let new = sync_until_published(&lab, &env, |p| p.mode() == Mode::Enforce);
    assert_ne!(old, new);
    // A few more samples once the new id is out.
    std::thread::sleep(Duration::from_secs(3));
    let seen = reader.finish();
    eprintln!(
        "{} samples: {} with the old id, {} with the new",
        seen.len(),
        with_id(&seen, &old),
        with_id(&seen, &new)
    );
    assert!(
        with_id(&seen, &new) > 0,
        "the reader never saw the new id: {seen:?}"
    );
    assert_eq!(
        new_id_with_another_body(&seen, &new),
        None,
        "the TXT named the new id while the body served was another: {seen:?}"
    );
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// One look of the reader: the id the TXT names (read first), then the id
/// of the body served (read after).
type Sample = (Option<String>, Option<String>);

/// A reader polling the TXT (dig at BIND), then the body (curl through
/// nginx), as a sender that sees an id fetches the body after.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Reader {
    fn start(lab: &Arc<Lab>) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (lab, stop) = (lab.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let id = lab.served_id();
                    let body = lab.fetch_body();
                    let body_id = body
                        .as_deref()
                        .and_then(|b| Policy::parse(b).ok())
                        .map(|p| p.id());
                    seen.push((id, body_id));
                }
                seen
            })
        };
        Reader { stop, thread }
    }

    fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap()
    }
}

fn with_id(seen: &[Sample], id: &str) -> usize {
    seen.iter()
        .filter(|(i, _)| i.as_deref() == Some(id))
        .count()
}

/// The first look that saw the TXT name `new` and then another body.
fn new_id_with_another_body<'a>(seen: &'a [Sample], new: &str) -> Option<&'a Sample> {
    seen.iter()
        .find(|(id, body)| id.as_deref() == Some(new) && body.as_deref() != Some(new))
}

/// Runs `mxkeys sync` until BIND serves an `_mta-sts` id equal to the
/// served body's, and that body satisfies `want`; returns the id.
#[track_caller]
fn sync_until_published(lab: &Lab, env: &Env, want: impl Fn(&Policy) -> bool) -> String {
    let mut outputs = String::new();
    sync_until_published_with(lab, env, &mut outputs, want)
}

#[track_caller]
fn sync_until_published_with(
    lab: &Lab,
    env: &Env,
    outputs: &mut String,
    want: impl Fn(&Policy) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let run = env.sync();
        let last = run.describe();
        outputs.push_str(&last);
        outputs.push('\n');
        let served = lab
            .fetch_body()
            .and_then(|b| Policy::parse(&b).ok())
            .filter(|p| want(p));
        if let (Some(id), Some(p)) = (lab.served_id(), served)
            && p.id() == id
        {
            return id;
        }
        assert!(
            start.elapsed() < STEP,
            "mxkeys did not serve and publish the wanted policy within {STEP:?}; the last sync:\n{last}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Sent through `host`, which took the message (its own log says so).
#[track_caller]
fn assert_sent_via(lab: &Lab, d: &common::mtasts::Delivery, host: &str) {
    let text = d.lines.join("\n");
    assert_eq!(d.status, "sent", "{text}\n{}", lab.logs());
    assert!(
        d.lines
            .iter()
            .any(|l| l.contains("status=sent") && l.contains(&format!("relay={host}["))),
        "not delivered through {host}:\n{text}"
    );
    let receiver = if host == MX1 { &lab.mx1 } else { &lab.mx2 };
    let rcpt = format!("to=<{}>", d.rcpt);
    common::servers::poll(
        &format!("{host} to log the message"),
        Duration::from_secs(30),
        || receiver.log().contains(&rcpt).then_some(()),
        || lab.logs(),
    );
}

/// Deferred, by the TLS policy: the sender reached `host` and refused its
/// certificate, which the policy's `match=` does not name.
#[track_caller]
fn assert_deferred_by_policy(lab: &Lab, d: &common::mtasts::Delivery, host: &str) {
    let text = d.lines.join("\n");
    assert_eq!(d.status, "deferred", "{text}\n{}", lab.logs());
    let line = d
        .lines
        .iter()
        .find(|l| l.contains("status=deferred"))
        .unwrap();
    assert!(
        line.contains(&format!("relay={host}[")) && line.contains("dsn=4.7.5"),
        "the deferral is not a TLS refusal of {host}: {text}"
    );
    assert!(
        line.contains("Server certificate not verified"),
        "the deferral does not say the certificate was refused: {text}"
    );
    // The refusal is the MTA-STS policy's: the resolver tells Postfix to
    // require a certificate matching the listed hosts, not this one.
    let answer = lab.resolver_answer();
    assert!(
        answer.starts_with("secure match=") && !answer.contains(host),
        "the resolver's policy does not exclude {host}: {answer:?}"
    );
    eprintln!("deferred: {line}\nresolver: {answer}");
}
