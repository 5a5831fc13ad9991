//! The DANE gate in the certificate pipeline (issue 14), driven through
//! `mxkeys sync`, `status` and `run` with a `files` source: a certificate
//! with a new key waits until its TLSA record has been seen for 2 × TTL,
//! a renewal that keeps the key does not wait, and a certificate is
//! installed anyway, with an error, when the current one expires within
//! `dane_hold_max`.
//!
//! No DNS here: what the DANE pass would have observed is written by hand
//! into the ledger (`state_dir/dane.json`, a documented JSON shape), with
//! `t0`s in the past or now; the gate reads it as a fact.

use mxkeys_testsupport as common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::dnssec::tlsa_3_1_1;
use common::*;
use serde_json::{Value, json};

/// The TLSA owner name of the target (default `hosts` = its domains, the
/// config's `hostname`; default port 25).
fn owner() -> String {
    format!("_25._tcp.{HOST}")
}

/// The TTL the ledger says the TLSA set has: the gate holds for 2 × TTL.
const TTL: i64 = 60;

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn rfc3339(t: i64) -> String {
    rfc3339_z(time::OffsetDateTime::from_unix_timestamp(t).expect("a time"))
}

/// A DANE target `mail` (records `3 1 1`, ttl [`TTL`]) served by a files
/// source holding `leaf`, with a `manual` DNS provider named by
/// `[target.dane]`; `extra` goes into `[target.dane]`.
fn setup(env: &Env, leaf: &Leaf, extra: &[&str]) -> Target {
    setup_with(env, &files_source(&env.path("src"), leaf), extra)
}

/// The same with the source `src` (a `[[source]]` table).
fn setup_with(env: &Env, src: &str, extra: &[&str]) -> Target {
    let mut t = Target::new(env, "mail")
        .extra("[target.dane]")
        .extra("dns = \"paste\"")
        .extra(&format!("ttl = {TTL}"));
    for line in extra {
        t = t.extra(line);
    }
    let config = format!(
        "{}\n{src}\n[dns.paste]\ntype = \"manual\"\nzone = \"example.com\"\n\n{}",
        env.header(),
        t.toml()
    );
    env.write_config_raw(&config);
    t
}

/// Writes the ledger as the DANE pass would after observing the owner:
/// each leaf's `3 1 1` record seen, signed, on every server since its t0;
/// a set that existed, with TTL [`TTL`].
fn write_ledger(env: &Env, seen: &[(&Leaf, i64)]) {
    let records: serde_json::Map<String, Value> = seen
        .iter()
        .map(|(leaf, t0)| (tlsa_3_1_1(&leaf.der), json!(t0)))
        .collect();
    let ledger = json!({
        "targets": {
            "mail": {
                "seen": { owner(): records },
                "rrsets": {
                    owner(): { "max_ttl": TTL, "existed_before": true, "negative_ttl": 30 }
                }
            }
        }
    });
    write_json(&env.state.join("dane.json"), &ledger);
}

/// Runs `mxkeys sync` and returns it with the reconcile's verdict as the
/// run recorded it (`last_run` in `status --json`: `ok` and the error
/// lines). That verdict is sync's exit status without DANE; with it, sync
/// also fails when its DANE pass does, and there is no DNS here.
fn sync(env: &Env) -> (Run, bool, Vec<String>) {
    let run = env.sync();
    let (status, json) = env.status_json();
    status.ok();
    let last = &json["last_run"];
    let errors = last["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let ok = last["ok"]
        .as_bool()
        .unwrap_or_else(|| panic!("no last_run.ok\n{json}\n{}", run.describe()));
    (run, ok, errors)
}

/// Syncs and asserts the reconcile had no problem.
#[track_caller]
fn sync_ok(env: &Env) -> Run {
    let (run, ok, errors) = sync(env);
    assert!(ok, "reconcile errors {errors:?}\n{}", run.describe());
    run
}

/// The target's `dane_gate` in `status --json`.
fn gate_status(env: &Env) -> Value {
    let (run, status) = env.status_json();
    run.ok();
    status["targets"][0]["dane_gate"].clone()
}

#[test]
fn a_new_key_is_held_while_its_record_is_younger_than_two_ttls_and_installed_after() {
    let env = Env::new();
    let ca = Ca::new("gate-hold");
    let old = ca.issue(&LeafSpec::new(&[HOST]));
    let t = setup(&env, &old, &[]);
    // Nothing installed yet: no gate.
    sync_ok(&env);
    t.assert_installed(&old);

    // The source brings a new key; its record was just seen.
    let new = ca.issue(&LeafSpec::new(&[HOST]).days(90));
    files_source(&env.path("src"), &new);
    let t0 = unix_now();
    write_ledger(&env, &[(&old, t0 - 86_400), (&new, t0)]);
    // Held: not a failure.
    sync_ok(&env).assert_err_line(&["target mail", "DANE gate holds certificate", &new.fp()]);
    t.assert_installed(&old);
    let gate = gate_status(&env);
    assert_eq!(gate["state"], "waiting", "{gate}");
    assert_eq!(gate["sha256"], new.fp().as_str(), "{gate}");
    assert_eq!(gate["until"], rfc3339(t0 + 2 * TTL).as_str(), "{gate}");
    let reason = gate["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&tlsa_3_1_1(&new.der)), "{gate}");
    let text = env.run(&["status"]);
    text.ok()
        .stdout_line_with("dane gate    waiting: DANE gate holds certificate")
        .unwrap_or_else(|| panic!("no dane gate line\n{}", text.describe()));

    // `check` says the same and changes nothing.
    env.check()
        .ok()
        .stdout_line_with("held")
        .unwrap_or_else(|| panic!("no `held` line in check's output"));
    t.assert_installed(&old);

    // Half a minute short of 2 × TTL: still held.
    write_ledger(
        &env,
        &[(&old, t0 - 86_400), (&new, unix_now() - 2 * TTL + 30)],
    );
    sync_ok(&env);
    t.assert_installed(&old);

    // Aged 2 × TTL: installed.
    write_ledger(&env, &[(&old, t0 - 86_400), (&new, unix_now() - 2 * TTL)]);
    sync_ok(&env);
    t.assert_installed(&new);
    assert_eq!(gate_status(&env)["state"], "open");
}

#[test]
fn a_renewal_with_the_same_key_installs_at_once_though_no_record_was_ever_seen() {
    let env = Env::new();
    let ca = Ca::new("gate-same");
    let old = ca.issue(&LeafSpec::new(&[HOST]));
    let t = setup(&env, &old, &[]);
    sync_ok(&env);
    t.assert_installed(&old);

    let renewed = ca.reissue(&LeafSpec::new(&[HOST]).days(90), &old);
    assert_eq!(tlsa_3_1_1(&renewed.der), tlsa_3_1_1(&old.der));
    files_source(&env.path("src"), &renewed);
    write_ledger(&env, &[]);
    sync_ok(&env).assert_stderr_lacks("DANE gate holds");
    t.assert_installed(&renewed);
    assert_eq!(gate_status(&env)["state"], "open");
}

#[test]
fn a_held_certificate_is_forced_in_with_an_error_when_the_current_one_expires_within_dane_hold_max()
{
    let env = Env::new();
    let ca = Ca::new("gate-force");
    let old = ca.issue(&LeafSpec::new(&[HOST]).days(3));
    let t = setup(&env, &old, &["dane_hold_max = \"4d\""]);
    sync_ok(&env);
    t.assert_installed(&old);

    let new = ca.issue(&LeafSpec::new(&[HOST]).days(90));
    files_source(&env.path("src"), &new);
    write_ledger(&env, &[(&old, unix_now() - 86_400), (&new, unix_now())]);
    let (forced, ok, errors) = sync(&env);
    assert!(!ok, "a forced install is an error\n{}", forced.describe());
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("target mail: installing ")),
        "{errors:?}"
    );
    forced.assert_err_line(&[
        "target mail",
        &format!("installing {} although its TLSA record", new.fp()),
        &tlsa_3_1_1(&new.der),
        "is not aged",
        "the current certificate expires",
    ]);
    t.assert_installed(&new);
    let gate = gate_status(&env);
    assert_eq!(gate["state"], "forced", "{gate}");
    assert_eq!(gate["sha256"], new.fp().as_str(), "{gate}");

    // With more than `dane_hold_max` left, the same record is only waited for.
    let env = Env::new();
    let old = ca.issue(&LeafSpec::new(&[HOST]).days(5));
    let t = setup(&env, &old, &["dane_hold_max = \"4d\""]);
    sync_ok(&env);
    files_source(&env.path("src"), &new);
    write_ledger(&env, &[(&old, unix_now() - 86_400), (&new, unix_now())]);
    sync_ok(&env);
    t.assert_installed(&old);
}

#[test]
fn the_daemon_installs_a_held_certificate_when_its_gate_is_due() {
    let env = Env::new();
    let ca = Ca::new("gate-daemon");
    let old = ca.issue(&LeafSpec::new(&[HOST]));
    let t = setup(&env, &old, &[]);
    sync_ok(&env);
    let new = ca.issue(&LeafSpec::new(&[HOST]).days(90));
    files_source(&env.path("src"), &new);
    // Aged in a few seconds; nothing else will make the daemon reconcile
    // (the ledger is not watched, the resync is an hour away).
    write_ledger(
        &env,
        &[
            (&old, unix_now() - 86_400),
            (&new, unix_now() - 2 * TTL + 8),
        ],
    );
    let mut d = env.daemon(&[]);
    env.wait_reconciles(&d, 1);
    t.assert_installed(&old);
    wait_for(
        "the held certificate to be installed when its gate is due",
        || (t.installed_fp() == Some(new.fp())).then_some(()),
        || d.describe(),
    );
    assert!(
        !d.stderr_lines_with("DANE gate holds certificate")
            .is_empty(),
        "{}",
        d.describe()
    );
    assert!(d.terminate().success(), "{}", d.describe());
}

#[test]
fn a_certbot_renewal_with_a_new_key_is_held_and_the_hold_suggests_reuse_key() {
    let env = Env::new();
    let ca = Ca::new("gate-certbot");
    let certbot = Certbot::new(&env.path("letsencrypt"));
    let old = ca.issue(&LeafSpec::new(&[HOST]));
    certbot.add("mail", &old);
    let t = setup_with(&env, &src_certbot(&env.path("letsencrypt")), &[]);
    sync_ok(&env);
    t.assert_installed(&old);

    // Certbot's default: a new key on every renewal.
    let new = ca.issue(&LeafSpec::new(&[HOST]).days(90));
    certbot.add("mail", &new);
    write_ledger(&env, &[(&old, unix_now() - 86_400), (&new, unix_now())]);
    sync_ok(&env).assert_err_line(&[
        "DANE gate holds certificate",
        &new.fp(),
        "`reuse_key = True`",
    ]);
    t.assert_installed(&old);
    let gate = gate_status(&env);
    let reason = gate["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("certbot renew --reuse-key"), "{gate}");
}
