//! `mxkeys dkim` end to end against a real BIND 9 (RFC 2136 with TSIG) on
//! loopback, checked only by third-party programs: `dig` for what the
//! server publishes, `openssl` for the record a key file needs, dkimpy
//! signing with mxkeys' key files and verifying through that server,
//! `opendkim-testkey`, a real OpenDKIM milter behind a real Postfix
//! configured from mxkeys' KeyTable and SigningTable, and a real Rspamd
//! signing from mxkeys' `dkim_signing.conf`.
//!
//! Durations are short (lead 0-2 s, drain and revoke_hold 2 s); waits poll
//! with deadlines, never assume how long anything takes.

use mxkeys_testsupport as common;

use common::bind;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use bind::Bind;
use common::dkim_tools::{
    DEADLINE, DKIMPY, Dkimpy, OPENDKIM, OPENDKIM_TESTKEY, OpenDkim, PERL, POSTFIX, RSPAMD, Rspamd,
    SmtpSink, describe, message, mx, mx_ok, opendkim_testkey, record_of_key_file, rsa_key_file,
    setup, smtp_send, testkey_conf, write_dkim_config,
};
use common::servers::{prog, run_ok};
use serde_json::Value;

const DOMAIN: &str = "example.test";

// ---------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------

/// Writes `work/mxkeys.toml`: the rfc2136 provider for the BIND server,
/// and a `[dkim]` table of `dkim` lines (domains, key_dir, dns, signer_dir
/// and rotate_every have defaults here when `dkim` does not set them).
fn write_config(bind: &Bind, work: &Path, dkim: &str) -> PathBuf {
    let mut table = String::from(dkim);
    for (key, default) in [
        ("domains", "domains = [\"example.test\"]"),
        ("key_dir", "key_dir = \"keys\""),
        ("dns", "dns = \"bind\""),
        ("signer_dir", "signer_dir = \"signer\""),
        ("signer", "signer = \"opendkim\""),
        ("rotate_every", "rotate_every = \"1m\""),
        ("ttl", "ttl = 300"),
    ] {
        if !dkim
            .lines()
            .any(|l| l.split('=').next().unwrap().trim() == key)
        {
            table.push_str(default);
            table.push('\n');
        }
    }
    write_dkim_config(bind, work, &table)
}

/// `dkim import --domain DOMAIN --selector SELECTOR FILE`.
fn import_args<'a>(selector: &'a str, file: &'a Path) -> [&'a str; 7] {
    [
        "dkim",
        "import",
        "--domain",
        DOMAIN,
        "--selector",
        selector,
        file.to_str().unwrap(),
    ]
}

fn today() -> String {
    let n = common::now();
    format!("{:04}{:02}{:02}", n.year(), u8::from(n.month()), n.day())
}

// ---------------------------------------------------------------------------
// What mxkeys keeps, and what the signer reads
// ---------------------------------------------------------------------------

/// One key of `state_dir/dkim/state.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) domain: String,
    pub(super) algorithm: String,
    pub(super) selector: String,
    pub(super) file: PathBuf,
    pub(super) record: String,
    pub(super) state: String,
    pub(super) since: i64,
    pub(super) verified_at: Option<i64>,
    pub(super) activated_at: Option<i64>,
}

impl Key {
    fn name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

fn state_json(work: &Path) -> Option<Value> {
    let bytes = std::fs::read(work.join("state/dkim/state.json")).ok()?;
    Some(serde_json::from_slice(&bytes).expect("state.json is JSON"))
}

pub(super) fn keys(work: &Path) -> Vec<Key> {
    let Some(v) = state_json(work) else {
        return Vec::new();
    };
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| Key {
            domain: k["domain"].as_str().unwrap().to_owned(),
            algorithm: k["algorithm"].as_str().unwrap().to_owned(),
            selector: k["selector"].as_str().unwrap().to_owned(),
            file: PathBuf::from(k["file"].as_str().unwrap()),
            record: k["record"].as_str().unwrap().to_owned(),
            state: k["state"].as_str().unwrap().to_owned(),
            since: k["since"].as_i64().unwrap(),
            verified_at: k["verified_at"].as_i64(),
            activated_at: k["activated_at"].as_i64(),
        })
        .collect()
}

fn used_selectors(work: &Path) -> BTreeSet<String> {
    state_json(work)
        .and_then(|v| {
            v["used_selectors"].as_object().map(|m| {
                m.iter()
                    .flat_map(|(d, sels)| {
                        sels.as_array()
                            .unwrap()
                            .iter()
                            .map(move |s| format!("{}._domainkey.{d}", s.as_str().unwrap()))
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

pub(super) fn key(work: &Path, algorithm: &str, state: &str) -> Key {
    let all = keys(work);
    let found: Vec<&Key> = all
        .iter()
        .filter(|k| k.algorithm == algorithm && k.state == state)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {algorithm} key in state {state}: {all:#?}"
    );
    found[0].clone()
}

/// KeyTable lines: (id, domain, selector, key file).
fn key_table(signer: &Path) -> Vec<(String, String, String, PathBuf)> {
    let Ok(text) = std::fs::read_to_string(signer.join("KeyTable")) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (id, value) = l.split_once(' ').unwrap();
            let mut parts = value.splitn(3, ':');
            (
                id.to_owned(),
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
                PathBuf::from(parts.next().unwrap()),
            )
        })
        .collect()
}

/// SigningTable lines: (pattern, key id).
fn signing_table(signer: &Path) -> Vec<(String, String)> {
    let Ok(text) = std::fs::read_to_string(signer.join("SigningTable")) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (p, id) = l.split_once(' ').unwrap();
            (p.to_owned(), id.trim().to_owned())
        })
        .collect()
}

/// The record names the OpenDKIM tables sign with.
pub(super) fn signer_names(signer: &Path) -> BTreeSet<String> {
    key_table(signer).into_iter().map(|(id, ..)| id).collect()
}

fn names_in(keys: &[Key], state: &str) -> BTreeSet<String> {
    keys.iter()
        .filter(|k| k.state == state)
        .map(Key::name)
        .collect()
}

/// The safety property, checked against the DNS server and the key files
/// only: every key the signer's tables name is published with exactly the
/// record its key file needs (computed by openssl), not revoked, and the
/// tables agree with each other.
#[track_caller]
fn assert_signer_safe(bind: &Bind, signer: &Path, context: &str) {
    let kt = key_table(signer);
    for (id, domain, selector, file) in &kt {
        assert_eq!(id, &format!("{selector}._domainkey.{domain}"), "{context}");
        assert!(
            file.is_file(),
            "{context}: the KeyTable names {}, which does not exist",
            file.display()
        );
        let want = record_of_key_file(file);
        assert_eq!(
            bind.txt_values(id),
            vec![want],
            "{context}: the signer names {id} but the server does not publish its key"
        );
    }
    let ids: BTreeSet<&String> = kt.iter().map(|(id, ..)| id).collect();
    for (pattern, id) in signing_table(signer) {
        let domain = id.split("._domainkey.").nth(1).unwrap();
        assert_eq!(pattern, format!("*@{domain}"), "{context}");
        assert!(
            ids.contains(&id),
            "{context}: SigningTable {id} not in KeyTable"
        );
    }
}

/// After a kill the two OpenDKIM tables may disagree (they are two files,
/// replaced one after the other): each key either names must still be
/// published with exactly the record of the key mxkeys holds for it.
/// Returns whether they disagreed.
#[track_caller]
fn assert_signer_safe_after_kill(bind: &Bind, work: &Path, context: &str) -> bool {
    let signer = work.join("signer");
    let kt = key_table(&signer);
    for (id, domain, selector, file) in &kt {
        assert_eq!(id, &format!("{selector}._domainkey.{domain}"), "{context}");
        assert!(
            file.is_file(),
            "{context}: the KeyTable names {}, which does not exist",
            file.display()
        );
        assert_eq!(
            bind.txt_values(id),
            vec![record_of_key_file(file)],
            "{context}: the signer names {id} but the server does not publish its key"
        );
    }
    let ids: BTreeSet<String> = kt.into_iter().map(|(id, ..)| id).collect();
    let mut disagree = false;
    let ks = keys(work);
    for (_, id) in signing_table(&signer) {
        if ids.contains(&id) {
            continue;
        }
        disagree = true;
        let k = ks.iter().find(|k| k.name() == id).unwrap_or_else(|| {
            panic!("{context}: the SigningTable names {id}, a key mxkeys does not hold")
        });
        assert_eq!(
            bind.txt_values(&id),
            vec![k.record.clone()],
            "{context}: the SigningTable names {id} but the server does not publish its key"
        );
    }
    disagree
}

/// Every active key is on the server with exactly its record (which its
/// key file matches), and the signer's tables name exactly the active keys.
#[track_caller]
fn assert_converged(bind: &Bind, work: &Path) {
    let ks = keys(work);
    for k in ks.iter().filter(|k| k.state == "active") {
        assert!(k.verified_at.is_some(), "active but never verified: {k:?}");
        assert_eq!(bind.txt_values(&k.name()), vec![k.record.clone()], "{k:?}");
        assert_eq!(record_of_key_file(&k.file), k.record, "{k:?}");
        assert_eq!(common::mode_of(&k.file) & 0o777, 0o600, "{k:?}");
    }
    assert_eq!(
        signer_names(&work.join("signer")),
        names_in(&ks, "active"),
        "the signer's tables must name exactly the active keys"
    );
    assert_signer_safe(bind, &work.join("signer"), "converged");
}

/// `mxkeys ARGS` (a DKIM pass) with `reload` appending a line to
/// `work/reloads.log`: the reload runs exactly once when the pass changed
/// the signer's files, and not at all otherwise.
#[track_caller]
pub(super) fn rotate_counting_reloads(config: &Path, work: &Path, args: &[&str]) -> String {
    let signer_files =
        || ["KeyTable", "SigningTable"].map(|f| std::fs::read(work.join("signer").join(f)).ok());
    let reloads = || {
        std::fs::read_to_string(work.join("reloads.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let (files_before, reloads_before) = (signer_files(), reloads());
    let out = mx_ok(config, args);
    let changed = signer_files() != files_before;
    assert_eq!(
        reloads() - reloads_before,
        usize::from(changed),
        "signer files changed: {changed}; reloads must be once per changing pass\n{out}"
    );
    out
}

/// Runs `dkim rotate` until `done(keys)`, every 200 ms; the transcript.
#[track_caller]
pub(super) fn rotate_until(
    config: &Path,
    work: &Path,
    what: &str,
    done: impl Fn(&[Key]) -> bool,
) -> String {
    let start = Instant::now();
    let mut transcript = String::new();
    loop {
        transcript.push_str(&rotate_counting_reloads(config, work, &["dkim", "rotate"]));
        if done(&keys(work)) {
            return transcript;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}; keys: {:#?}\ntranscript:\n{transcript}",
            keys(work)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(super) fn has(ks: &[Key], selector: &str, state: &str) -> bool {
    ks.iter()
        .any(|k| k.selector == selector && k.state == state)
}

#[track_caller]
pub(super) fn assert_verifies(py: &Dkimpy, msg: &[u8], selector: &str, algorithm: &str) {
    let v = py.verify_one(msg);
    assert_eq!(
        (v.selector.as_str(), v.domain.as_str(), v.algorithm.as_str()),
        (selector, DOMAIN, algorithm)
    );
    assert!(v.ok, "dkimpy: the {selector} signature must verify: {v:?}");
}

#[track_caller]
pub(super) fn assert_fails(py: &Dkimpy, msg: &[u8], selector: &str) {
    let v = py.verify_one(msg);
    assert_eq!(v.selector, selector);
    assert!(
        !v.ok,
        "dkimpy: the {selector} signature must fail now: {v:?}"
    );
}

// ---------------------------------------------------------------------------
// 1. A full rotation, RSA and Ed25519, checked by dig and dkimpy
// ---------------------------------------------------------------------------

#[test]
fn full_rotation_through_bind_verified_by_dkimpy() {
    let Some((bind, work)) = setup("full_rotation_through_bind_verified_by_dkimpy", &[DKIMPY])
    else {
        return;
    };
    let config = write_config(
        &bind,
        &work,
        &format!(
            "algorithms = [\"rsa-2048\", \"ed25519\"]\n\
             selector = \"{{alg}}{{date}}\"\n\
             lead = \"2s\"\n\
             drain = \"2s\"\n\
             revoke_hold = \"2s\"\n\
             reload = [\"sh\", \"-c\", \"echo reload >> {}\"]\n",
            work.join("reloads.log").display()
        ),
    );
    let py = Dkimpy::new(&work.join("py"), bind.port);
    let signer = work.join("signer");
    let day = today();
    let (r1, e1) = (format!("r{day}"), format!("e{day}"));
    let name = |s: &str| format!("{s}._domainkey.{DOMAIN}");

    // First pass: both keys generated, published and verified.
    let out = rotate_counting_reloads(&config, &work, &["dkim", "rotate"]);
    for line in [
        format!("{DOMAIN}: new rsa-2048 key {r1}"),
        format!("{DOMAIN}: new ed25519 key {e1}"),
        format!("published {}", name(&r1)),
        format!("published {}", name(&e1)),
        format!("verified {} on every authoritative server", name(&r1)),
        format!("verified {} on every authoritative server", name(&e1)),
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
    }
    let ks = keys(&work);
    assert_eq!(ks.len(), 2, "{ks:#?}");
    for k in &ks {
        // Published on the server with exactly the record its file needs.
        assert_eq!(bind.txt_values(&k.name()), vec![k.record.clone()]);
        assert_eq!(record_of_key_file(&k.file), k.record);
        assert!(
            std::fs::read_to_string(&k.file)
                .unwrap()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        assert_eq!(
            k.file,
            work.join("keys")
                .join(DOMAIN)
                .join(format!("{}.pem", k.selector))
        );
        // The lead starts when the record was seen: never active earlier.
        let v = k.verified_at.expect("verified");
        match k.state.as_str() {
            "published" => {}
            "active" => assert!(k.activated_at.unwrap() >= v + 2, "{k:?}"),
            other => panic!("state {other} after the first pass: {k:?}"),
        }
    }
    assert_eq!(
        bind.txt_string_counts(&name(&r1)),
        vec![2],
        "an RSA record is two strings of at most 255 bytes"
    );
    assert_eq!(signer_names(&signer), names_in(&ks, "active"));
    if names_in(&ks, "active").is_empty() {
        assert_eq!(
            table_bytes(&signer),
            [None, None],
            "no table before a key signs"
        );
    }
    assert_signer_safe(&bind, &signer, "after the first pass");

    // After the lead, both sign.
    let mut transcript = out;
    transcript.push_str(&rotate_until(&config, &work, "r1 and e1 active", |ks| {
        has(ks, &r1, "active") && has(ks, &e1, "active")
    }));
    for s in [&r1, &e1] {
        assert!(
            transcript.contains(&format!("{DOMAIN}: {s} signs")),
            "{transcript}"
        );
    }
    for k in keys(&work) {
        assert!(
            k.activated_at.unwrap() >= k.verified_at.unwrap() + 2,
            "{k:?}"
        );
    }
    assert_converged(&bind, &work);
    assert_eq!(
        signer_names(&signer),
        [name(&r1), name(&e1)].into_iter().collect()
    );
    let st = std::fs::read_to_string(signer.join("SigningTable")).unwrap();
    assert!(st.contains("MultipleSignatures yes"), "{st}");

    // dkimpy signs with mxkeys' key files; the signatures verify through BIND.
    let key_r1 = key(&work, "rsa-2048", "active");
    let key_e1 = key(&work, "ed25519", "active");
    let m_r1 = py.sign(&key_r1.file, DOMAIN, &r1, &message(DOMAIN, "old-rsa"));
    let m_e1 = py.sign(&key_e1.file, DOMAIN, &e1, &message(DOMAIN, "old-ed25519"));
    assert_verifies(&py, &m_r1, &r1, "rsa-sha256");
    assert_verifies(&py, &m_e1, &e1, "ed25519-sha256");
    // A tampered message fails: the verifier really checks.
    let tampered = String::from_utf8(m_r1.clone())
        .unwrap()
        .replace("A second line", "A forged line");
    assert_fails(&py, tampered.as_bytes(), &r1);

    // A forced rotation: successors under new selectors, published and
    // verified while the old keys still sign.
    let (r2, e2) = (format!("r{day}-2"), format!("e{day}-2"));
    let out = rotate_counting_reloads(&config, &work, &["dkim", "rotate", "--force"]);
    transcript.push_str(&out);
    assert!(
        out.contains(&format!("{DOMAIN}: new rsa-2048 key {r2}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("{DOMAIN}: new ed25519 key {e2}")),
        "{out}"
    );
    let ks = keys(&work);
    for (old, new) in [(&r1, &r2), (&e1, &e2)] {
        let k = ks.iter().find(|k| &k.selector == new).expect("successor");
        assert_eq!(bind.txt_values(&name(new)), vec![k.record.clone()]);
        if k.state == "published" {
            assert!(has(&ks, old, "active"), "{ks:#?}");
        }
    }
    assert_eq!(signer_names(&signer), names_in(&ks, "active"));
    assert_signer_safe(&bind, &signer, "after --force");

    // The successors sign; the old keys drain with their records intact.
    transcript.push_str(&rotate_until(&config, &work, "r2 and e2 active", |ks| {
        has(ks, &r2, "active") && has(ks, &e2, "active")
    }));
    let ks = keys(&work);
    assert!(
        has(&ks, &r1, "draining") || has(&ks, &r1, "revoked"),
        "{ks:#?}"
    );
    assert_converged(&bind, &work);
    assert_eq!(
        signer_names(&signer),
        [name(&r2), name(&e2)].into_iter().collect()
    );
    for s in [&r1, &e1] {
        assert!(
            transcript.contains(&format!(
                "{DOMAIN}: {s} no longer signs; its record stays while mail drains"
            )),
            "{transcript}"
        );
    }
    let key_r2 = key(&work, "rsa-2048", "active");
    let key_e2 = key(&work, "ed25519", "active");
    let m_r2 = py.sign(&key_r2.file, DOMAIN, &r2, &message(DOMAIN, "new-rsa"));
    let m_e2 = py.sign(&key_e2.file, DOMAIN, &e2, &message(DOMAIN, "new-ed25519"));
    assert_verifies(&py, &m_r2, &r2, "rsa-sha256");
    assert_verifies(&py, &m_e2, &e2, "ed25519-sha256");
    if has(&ks, &r1, "draining") && has(&ks, &e1, "draining") {
        // Mail signed before the rotation still verifies while draining.
        assert_eq!(bind.txt_values(&name(&r1)), vec![key_r1.record.clone()]);
        assert_verifies(&py, &m_r1, &r1, "rsa-sha256");
        assert_verifies(&py, &m_e1, &e1, "ed25519-sha256");
    }

    // After the drain: revoked with an empty p=; old signatures fail.
    transcript.push_str(&rotate_until(&config, &work, "r1 and e1 revoked", |ks| {
        !has(ks, &r1, "draining") && !has(ks, &e1, "draining")
    }));
    let ks = keys(&work);
    if has(&ks, &r1, "revoked") && has(&ks, &e1, "revoked") {
        assert_eq!(bind.txt_values(&name(&r1)), vec!["v=DKIM1; k=rsa; p="]);
        assert_eq!(bind.txt_values(&name(&e1)), vec!["v=DKIM1; k=ed25519; p="]);
        assert!(key_r1.file.exists(), "the key stays until deleted");
    }
    assert_fails(&py, &m_r1, &r1);
    assert_fails(&py, &m_e1, &e1);
    assert_verifies(&py, &m_r2, &r2, "rsa-sha256");
    assert_verifies(&py, &m_e2, &e2, "ed25519-sha256");
    for s in [&r1, &e1] {
        assert!(
            transcript.contains(&format!("revoked {} (p=)", name(s))),
            "{transcript}"
        );
    }
    assert_converged(&bind, &work);

    // After revoke_hold: the record and the key file are gone.
    transcript.push_str(&rotate_until(&config, &work, "r1 and e1 deleted", |ks| {
        !ks.iter().any(|k| k.selector == r1 || k.selector == e1)
    }));
    for (s, k) in [(&r1, &key_r1), (&e1, &key_e1)] {
        assert!(bind.txt_values(&name(s)).is_empty(), "{s} still published");
        assert!(!k.file.exists(), "{} still exists", k.file.display());
        assert!(
            transcript.contains(&format!("deleted {} and its key", name(s))),
            "{transcript}"
        );
    }
    assert_fails(&py, &m_r1, &r1);
    assert_verifies(&py, &m_r2, &r2, "rsa-sha256");
    assert_verifies(&py, &m_e2, &e2, "ed25519-sha256");
    assert_converged(&bind, &work);
    // The selectors stay used: a third rotation never hands them out again.
    let used = used_selectors(&work);
    for s in [&r1, &e1, &r2, &e2] {
        assert!(used.contains(&name(s)), "{used:?}");
    }
    let out = rotate_counting_reloads(&config, &work, &["dkim", "rotate", "--force"]);
    assert!(out.contains(&format!("new rsa-2048 key r{day}-3")), "{out}");
    assert!(out.contains(&format!("new ed25519 key e{day}-3")), "{out}");
    // The signer was reloaded: when r1/e1 began signing (its files are
    // created then, not before), when r2/e2 did (once per such pass,
    // checked above).
    let reloads = std::fs::read_to_string(work.join("reloads.log")).unwrap();
    assert!(reloads.lines().count() >= 2, "{reloads}");
}

// ---------------------------------------------------------------------------
// 2. opendkim-testkey
// ---------------------------------------------------------------------------

#[test]
fn opendkim_testkey_finds_the_record_matching_the_key() {
    let Some((bind, work)) = setup(
        "opendkim_testkey_finds_the_record_matching_the_key",
        &[OPENDKIM_TESTKEY],
    ) else {
        return;
    };
    let config = write_config(&bind, &work, "lead = \"0s\"\n");
    mx_ok(&config, &["dkim", "rotate"]);
    let k = key(&work, "rsa-2048", "active");
    let conf = testkey_conf(&work.join("testkey"), bind.port);
    let (ok, out) = opendkim_testkey(&conf, DOMAIN, &k.selector, &k.file);
    assert!(ok, "opendkim-testkey failed:\n{out}");
    assert!(
        out.contains(&format!(
            "checking key '{}._domainkey.{DOMAIN}'",
            k.selector
        )),
        "{out}"
    );
    assert!(
        out.contains("key OK") || out.contains("key not secure"),
        "{out}"
    );

    // The tool really compares: another key against this record fails.
    let other = work.join("other.pem");
    rsa_key_file(&other, 2048);
    let (ok, out) = opendkim_testkey(&conf, DOMAIN, &k.selector, &other);
    assert!(!ok, "a foreign key must not match:\n{out}");
    assert!(out.contains("do not match"), "{out}");
}

// ---------------------------------------------------------------------------
// 3. OpenDKIM behind Postfix, configured from mxkeys' tables
// ---------------------------------------------------------------------------

#[test]
fn opendkim_milter_behind_postfix_signs_with_the_active_key_and_the_successor() {
    let Some((bind, work)) = setup(
        "opendkim_milter_behind_postfix_signs_with_the_active_key_and_the_successor",
        &[DKIMPY, OPENDKIM, POSTFIX],
    ) else {
        return;
    };
    let odk_dir = work.join("opendkim");
    let config = write_config(
        &bind,
        &work,
        &format!(
            "lead = \"0s\"\n\
             drain = \"1h\"\n\
             reload_signal = {{ pidfile = \"{}\", signal = \"USR1\" }}\n",
            odk_dir.join("opendkim.pid").display()
        ),
    );
    // The first pass runs before OpenDKIM exists: its reload fails, the
    // keys and tables are in place all the same.
    let out = mx(&config, &["dkim", "rotate"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("reload"),
        "{}",
        describe(&out)
    );
    let first = key(&work, "rsa-2048", "active");
    assert_converged(&bind, &work);

    let (mut opendkim, sink, postfix, py) = start_mail_path(&bind, &work);
    let context = || format!("{}\n--- opendkim ---\n{}", postfix.log(), opendkim.log());

    send_as_alice(&postfix.addr(), "through-postfix-1");
    let got = sink.wait_for("through-postfix-1", context);
    let v = py.verify_one(&got);
    assert_eq!(v.selector, first.selector, "{v:?}");
    assert_eq!(v.algorithm, "rsa-sha256");
    assert!(v.ok, "dkimpy must verify OpenDKIM's signature: {v:?}");
    let first_signed = got;

    // A forced rotation; mxkeys signals OpenDKIM, which signs with the
    // successor from then on.
    let out = mx_ok(&config, &["dkim", "rotate", "--force"]);
    let second = key(&work, "rsa-2048", "active");
    assert_ne!(second.selector, first.selector);
    assert!(
        out.contains(&format!("{DOMAIN}: {} signs", second.selector)),
        "{out}"
    );
    assert_converged(&bind, &work);
    opendkim.assert_running();
    // OpenDKIM re-reads its tables on the connection after SIGUSR1.
    let mut n = 2;
    let signed = common::servers::poll(
        "OpenDKIM to sign with the successor",
        DEADLINE,
        || {
            let subject = format!("through-postfix-{n}");
            n += 1;
            send_as_alice(&postfix.addr(), &subject);
            let got = sink.wait_for(&subject, || postfix.log());
            let v = py.verify_one(&got);
            assert!(v.ok, "every signature verifies: {v:?}");
            (v.selector == second.selector).then_some(got)
        },
        || opendkim.log(),
    );
    assert_verifies(&py, &signed, &second.selector, "rsa-sha256");
    // Mail signed before the rotation still verifies: its record stays.
    assert_verifies(&py, &first_signed, &first.selector, "rsa-sha256");
}

/// Rspamd signs from the `dkim_signing.conf` mxkeys writes, with both
/// algorithms (Rspamd reads Ed25519 keys only in its own base64 form,
/// which mxkeys writes beside the PEM file), as the unprivileged user
/// `key_owner` names; after a forced rotation and mxkeys' reload, with the
/// successors. dkimpy verifies every signature through BIND.
#[test]
fn rspamd_signs_with_both_algorithms_and_the_successors() {
    let Some((bind, work)) = setup(
        "rspamd_signs_with_both_algorithms_and_the_successors",
        &[DKIMPY, RSPAMD],
    ) else {
        return;
    };
    // Rspamd's workers run as _rspamd: they must reach the key files.
    for dir in [bind.dir(), work.as_path()] {
        common::servers::open_dir(dir);
    }
    let rspamd = Rspamd::start(&work.join("rspamd"), bind.port);
    let reload: Vec<String> = rspamd
        .reload_argv()
        .iter()
        .map(|a| format!("{a:?}"))
        .collect();
    let config = write_config(
        &bind,
        &work,
        &format!(
            "algorithms = [\"rsa-2048\", \"ed25519\"]\n\
             lead = \"0s\"\n\
             drain = \"1h\"\n\
             signer = \"rspamd\"\n\
             signer_dir = \"{}\"\n\
             key_owner = \"{}\"\n\
             reload = [{}]\n",
            rspamd.local_d().display(),
            Rspamd::USER,
            reload.join(", ")
        ),
    );
    let py = Dkimpy::new(&work.join("py"), bind.port);
    let user = format!("alice@{DOMAIN}");
    let context = || rspamd.log();
    // Signs a message until Rspamd (reloading in the background) uses the
    // `want` selectors; every signature it makes must verify.
    let mut n = 0;
    let mut signed_by = |want: &BTreeSet<String>| {
        common::servers::poll(
            "Rspamd to sign with the active selectors",
            DEADLINE,
            || {
                n += 1;
                let signed = rspamd.sign(&message(DOMAIN, &format!("rspamd-{n}")), &user);
                let verdicts = py.verify(&signed);
                for v in &verdicts {
                    assert!(v.ok, "dkimpy must verify Rspamd's signature: {v:?}");
                }
                let selectors: BTreeSet<String> =
                    verdicts.iter().map(|v| v.selector.clone()).collect();
                (&selectors == want).then_some((signed, verdicts))
            },
            context,
        )
    };

    // The active keys are on the server (the tables checks of
    // assert_converged are OpenDKIM's; here Rspamd's signatures show it).
    let published = |work: &Path| {
        for k in keys(work).iter().filter(|k| k.state == "active") {
            assert_eq!(bind.txt_values(&k.name()), vec![k.record.clone()], "{k:?}");
        }
    };
    mx_ok(&config, &["dkim", "rotate"]);
    published(&work);
    let (rsa, ed) = (
        key(&work, "rsa-2048", "active"),
        key(&work, "ed25519", "active"),
    );
    let (first, verdicts) = signed_by(&[rsa.selector.clone(), ed.selector.clone()].into());
    let algorithms: BTreeSet<&str> = verdicts.iter().map(|v| v.algorithm.as_str()).collect();
    assert_eq!(algorithms, ["ed25519-sha256", "rsa-sha256"].into());
    // Rspamd's copy of the Ed25519 key: its own form, the configured
    // owner, mode 0600, beside the PEM file in a directory _rspamd enters.
    use std::os::unix::fs::MetadataExt as _;
    let rspamd_user = nix::unistd::User::from_name(Rspamd::USER).unwrap().unwrap();
    let copy = ed.file.with_extension("rspamd");
    let meta = std::fs::metadata(&copy).unwrap();
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid()),
        (0o600, rspamd_user.uid.as_raw()),
        "{}",
        copy.display()
    );
    let dir = std::fs::metadata(ed.file.parent().unwrap()).unwrap();
    assert_eq!(dir.uid(), rspamd_user.uid.as_raw());
    let conf = std::fs::read_to_string(rspamd.local_d().join("dkim_signing.conf")).unwrap();
    assert!(
        conf.contains(&format!("path = \"{}\";", copy.display())),
        "{conf}"
    );

    // A forced rotation: mxkeys reloads Rspamd, which signs with the
    // successors; mail signed before still verifies.
    mx_ok(&config, &["dkim", "rotate", "--force"]);
    published(&work);
    let (rsa2, ed2) = (
        key(&work, "rsa-2048", "active"),
        key(&work, "ed25519", "active"),
    );
    assert!(rsa2.selector != rsa.selector && ed2.selector != ed.selector);
    signed_by(&[rsa2.selector.clone(), ed2.selector.clone()].into());
    let again = py.verify(&first);
    assert_eq!(again.len(), 2);
    assert!(again.iter().all(|v| v.ok), "{again:?}");
}

// ---------------------------------------------------------------------------
// 4. Crash safety
// ---------------------------------------------------------------------------

/// How a killed-or-not run ended.
enum Ended {
    Killed,
    Finished(Output),
}

/// Runs `mxkeys ARGS` and SIGKILLs it `delay` after the `nth` change of
/// its state file seen (each change is one step saved); `Finished` when it
/// ends on its own first.
fn run_killed_after(
    config: &Path,
    work: &Path,
    args: &[&str],
    nth: usize,
    delay: Duration,
) -> Ended {
    let state = work.join("state/dkim/state.json");
    let mut last = std::fs::read(&state).ok();
    let mut changes = 0;
    let log = work.join("killed-run.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mxkeys"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MXKEYS_CONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let finished = |status| {
        Ended::Finished(Output {
            status,
            stdout: std::fs::read(&log).unwrap(),
            stderr: Vec::new(),
        })
    };
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return finished(status);
        }
        let now = std::fs::read(&state).ok();
        if now != last {
            last = now;
            changes += 1;
            if changes >= nth {
                std::thread::sleep(delay);
                // Our own child, by its handle.
                let _ = child.kill();
                let status = child.wait().unwrap();
                if status.success() {
                    return finished(status);
                }
                return Ended::Killed;
            }
        }
        assert!(start.elapsed() < DEADLINE, "mxkeys {args:?} hangs");
        std::thread::sleep(Duration::from_micros(300));
    }
}

const DELAYS: [u64; 5] = [0, 1, 3, 7, 15];

/// After a kill: the signer names only keys the server publishes with
/// exactly their record, every active key is published, and no selector
/// ever carried two keys.
#[track_caller]
fn check_after_kill(bind: &Bind, work: &Path, published: &mut Published, context: &str) {
    if assert_signer_safe_after_kill(bind, work, context) {
        published.tables_disagreed.push(context.to_owned());
    }
    for k in keys(work).iter().filter(|k| k.state == "active") {
        assert_eq!(
            bind.txt_values(&k.name()),
            vec![k.record.clone()],
            "{context}: active key not published: {k:?}"
        );
    }
    published.observe(bind, work, context);
}

/// What the DNS server has published under each selector mxkeys ever
/// used (non-revoked values), across the whole test.
#[derive(Default)]
struct Published {
    values: BTreeMap<String, BTreeSet<String>>,
    /// Kills after which KeyTable and SigningTable disagreed.
    tables_disagreed: Vec<String>,
}

impl Published {
    #[track_caller]
    fn observe(&mut self, bind: &Bind, work: &Path, context: &str) {
        let mut names = used_selectors(work);
        names.extend(keys(work).iter().map(Key::name));
        for name in names {
            for v in bind.txt_values(&name) {
                if !v.ends_with("p=") {
                    self.values.entry(name.clone()).or_default().insert(v);
                }
            }
            let values = &self.values.get(&name);
            assert!(
                values.is_none_or(|v| v.len() == 1),
                "{context}: the selector {name} was published with two keys: {values:?}"
            );
        }
    }
}

/// Kills `dkim rotate` after its first step, again and again, until a run
/// completes on its own: every step is interrupted once, in order.
/// Checks after every kill. Returns the number of kills.
#[track_caller]
fn crash_chain(
    bind: &Bind,
    config: &Path,
    work: &Path,
    published: &mut Published,
    phase: &str,
) -> usize {
    let mut kills = 0;
    for i in 0..400 {
        let delay = Duration::from_millis(DELAYS[i % DELAYS.len()]);
        match run_killed_after(config, work, &["dkim", "rotate"], 1, delay) {
            Ended::Killed => {
                kills += 1;
                check_after_kill(
                    bind,
                    work,
                    published,
                    &format!("{phase}: kill {kills} ({delay:?} after a step)"),
                );
            }
            Ended::Finished(out) => {
                assert!(out.status.success(), "{phase}: {}", describe(&out));
                return kills;
            }
        }
    }
    panic!("{phase}: no run finished after 400 attempts");
}

#[test]
fn killed_at_every_step_the_next_run_converges() {
    let Some((bind, work)) = setup("killed_at_every_step_the_next_run_converges", &[DKIMPY]) else {
        return;
    };
    let config = write_config(
        &bind,
        &work,
        "algorithms = [\"rsa-2048\", \"ed25519\"]\n\
         lead = \"0s\"\n\
         drain = \"1s\"\n\
         revoke_hold = \"1s\"\n",
    );
    let mut published = Published::default();
    let check_final = |published: &mut Published, phase: &str| {
        let out = mx_ok(&config, &["dkim", "rotate"]);
        assert_converged(&bind, &work);
        published.observe(&bind, &work, phase);
        let ks = keys(&work);
        // One active key per domain and algorithm.
        for d in [DOMAIN] {
            for a in ["rsa-2048", "ed25519"] {
                let n = ks
                    .iter()
                    .filter(|k| k.domain == d && k.algorithm == a && k.state == "active")
                    .count();
                assert_eq!(n, 1, "{phase}: {d} {a}: {ks:#?}\n{out}");
            }
        }
        // No selector twice; every key's selector recorded as used.
        let names: Vec<String> = ks.iter().map(Key::name).collect();
        let unique: BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{phase}: {names:?}");
        let used = used_selectors(&work);
        assert!(names.iter().all(|n| used.contains(n)), "{phase}");
        // Every selector ever used is either a key mxkeys holds (published
        // as its state says) or absent from the server.
        for name in &used {
            let values = bind.txt_values(name);
            match ks.iter().find(|k| &k.name() == name) {
                Some(k) if k.state == "revoked" => assert!(
                    values.len() == 1 && values[0].ends_with("p="),
                    "{phase}: {name}: {values:?}"
                ),
                Some(k) if k.state != "generated" => {
                    assert_eq!(values, vec![k.record.clone()], "{phase}: {name}")
                }
                _ => assert!(values.is_empty(), "{phase}: {name} left behind: {values:?}"),
            }
        }
        // The key directory holds the keys mxkeys holds, nothing else
        // (temporary files of a killed write aside).
        let mut files = BTreeSet::new();
        for d in std::fs::read_dir(work.join("keys")).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                let p = f.unwrap().path();
                if !p.file_name().unwrap().to_str().unwrap().starts_with('.') {
                    files.insert(p);
                }
            }
        }
        let held: BTreeSet<PathBuf> = ks.iter().map(|k| k.file.clone()).collect();
        assert_eq!(files, held, "{phase}: key files");
    };

    // From nothing to signing.
    let t0 = Instant::now();
    let kills = crash_chain(&bind, &config, &work, &mut published, "first keys");
    // How many runs a kill lands in depends on the machine's load; that
    // runs were killed, and the last one completed, does not.
    assert!(kills >= 1, "no run was interrupted");
    check_final(&mut published, "first keys");
    eprintln!("crash test: {kills} first-key kills at {:?}", t0.elapsed());
    let first: BTreeSet<String> = names_in(&keys(&work), "active");

    // Forced rotations, each killed at its k-th step (k = 1, 2, ... until
    // a forced pass completes), then finished by an ordinary run.
    let mut forced_kills = 0;
    for k in 1..200 {
        let delay = Duration::from_millis(DELAYS[k % DELAYS.len()]);
        match run_killed_after(&config, &work, &["dkim", "rotate", "--force"], k, delay) {
            Ended::Killed => {
                forced_kills += 1;
                let context = format!("forced rotation killed at step {k} (+{delay:?})");
                check_after_kill(&bind, &work, &mut published, &context);
                mx_ok(&config, &["dkim", "rotate"]);
                assert_converged(&bind, &work);
                published.observe(&bind, &work, &context);
            }
            Ended::Finished(out) => {
                assert!(out.status.success(), "{}", describe(&out));
                break;
            }
        }
    }
    eprintln!(
        "crash test: {forced_kills} forced kills at {:?}",
        t0.elapsed()
    );
    assert!(forced_kills >= 1, "no forced run was interrupted");
    check_final(&mut published, "rotation");
    assert!(names_in(&keys(&work), "active").is_disjoint(&first));

    // Revocation, then deletion, of the old keys.
    let start = Instant::now();
    while keys(&work).iter().any(|k| k.state != "active") {
        std::thread::sleep(Duration::from_millis(300));
        crash_chain(&bind, &config, &work, &mut published, "revoke and delete");
        assert!(start.elapsed() < DEADLINE, "old keys never deleted");
    }
    check_final(&mut published, "revoke and delete");
    if !published.tables_disagreed.is_empty() {
        eprintln!(
            "NOTE: KeyTable and SigningTable disagreed (a SigningTable entry without its KeyTable line) after {} kills, e.g. {}",
            published.tables_disagreed.len(),
            published.tables_disagreed[0]
        );
    }
    for name in &first {
        assert!(bind.txt_values(name).is_empty(), "{name}");
    }
}

// ---------------------------------------------------------------------------
// 5. records, import, revoke, status, configuration, other signers
// ---------------------------------------------------------------------------

#[test]
fn records_are_zone_file_lines_split_at_255_that_named_accepts() {
    let Some((bind, work)) = setup(
        "records_are_zone_file_lines_split_at_255_that_named_accepts",
        &[DKIMPY],
    ) else {
        return;
    };
    let config = write_config(
        &bind,
        &work,
        "algorithms = [\"rsa-2048\", \"ed25519\"]\nlead = \"0s\"\nttl = 600\n",
    );
    mx_ok(&config, &["dkim", "rotate"]);
    let out = mx_ok(&config, &["dkim", "records"]);
    let ks = keys(&work);
    for k in &ks {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{}.", k.name())))
            .unwrap_or_else(|| panic!("no line for {} in:\n{out}", k.name()));
        assert!(line.contains(" 600 ") && line.contains(" TXT "), "{line}");
        let strings: Vec<&str> = line.split('"').skip(1).step_by(2).collect();
        assert!(strings.iter().all(|s| s.len() <= 255), "{line}");
        assert_eq!(strings.concat(), k.record, "{line}");
        if k.algorithm == "rsa-2048" {
            assert_eq!(strings.len(), 2, "{line}");
        }
    }
    // named-checkzone loads them, and reads the same values back.
    let zone = work.join("records.zone");
    std::fs::write(
        &zone,
        format!(
            "$TTL 300\n@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60\n\
             @ IN NS ns.example.test.\nns IN A 127.0.0.1\n{out}"
        ),
    )
    .unwrap();
    let mut c = Command::new(prog("named-checkzone"));
    c.args(["-D", "-o", "-", DOMAIN]).arg(&zone);
    let dumped = String::from_utf8(run_ok(c).stdout).unwrap();
    for k in &ks {
        let line = dumped
            .lines()
            .find(|l| l.starts_with(&format!("{}.", k.name())))
            .unwrap_or_else(|| panic!("named-checkzone lost {}:\n{dumped}", k.name()));
        let joined: String = line.split('"').skip(1).step_by(2).collect();
        assert_eq!(joined, k.record);
    }
}

/// An RSA key made by openssl (PKCS#8 PEM) and the record publishing it.
pub(super) fn openssl_key(path: &Path) -> String {
    rsa_key_file(path, 2048);
    record_of_key_file(path)
}

/// Publishes `value` (split into 255-byte strings) with nsupdate and the
/// server's TSIG key.
pub(super) fn nsupdate_txt(bind: &Bind, name: &str, value: &str) {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap()))
        .collect();
    let script = format!(
        "server 127.0.0.1 {}\nzone example.test\nupdate delete {name} TXT\nupdate add {name} 300 TXT {}\nsend\n",
        bind.port,
        strings.join(" ")
    );
    let script_path = bind.dir().join("nsupdate.txt");
    std::fs::write(&script_path, script).unwrap();
    let mut c = Command::new(prog("nsupdate"));
    c.arg("-k")
        .arg(bind.dir().join("tsig.key"))
        .arg(&script_path);
    run_ok(c);
}

#[test]
fn import_adopts_a_published_key_and_refuses_an_unpublished_one() {
    let Some((bind, work)) = setup(
        "import_adopts_a_published_key_and_refuses_an_unpublished_one",
        &[DKIMPY],
    ) else {
        return;
    };
    let config = write_config(&bind, &work, "lead = \"0s\"\n");
    let py = Dkimpy::new(&work.join("py"), bind.port);

    // A key whose record is not published: refused, nothing adopted.
    let missing = work.join("missing.pem");
    let record = openssl_key(&missing);
    let out = mx(&config, &import_args("legacy0", &missing));
    assert!(!out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("legacy0._domainkey.example.test"), "{err}");
    assert!(
        err.contains(&record),
        "the error shows the record to publish: {err}"
    );
    assert!(keys(&work).is_empty(), "{:#?}", keys(&work));
    assert!(signer_names(&work.join("signer")).is_empty());

    // A record published by hand (nsupdate) for a key openssl made.
    let legacy = work.join("legacy.pem");
    let record = openssl_key(&legacy);
    nsupdate_txt(&bind, "legacy1._domainkey.example.test", &record);
    let out = mx_ok(&config, &import_args("legacy1", &legacy));
    assert!(out.contains("imported legacy1"), "{out}");
    let k = key(&work, "rsa-2048", "active");
    assert_eq!(k.selector, "legacy1");
    assert_eq!(k.record, record);
    assert_converged(&bind, &work);
    let m = py.sign(&k.file, DOMAIN, "legacy1", &message(DOMAIN, "imported"));
    assert_verifies(&py, &m, "legacy1", "rsa-sha256");
    // The imported key is in mxkeys' rotation: a pass changes nothing.
    let out = mx_ok(&config, &["dkim", "rotate"]);
    assert!(out.trim().is_empty(), "{out}");
    // The same selector cannot be imported twice.
    let out = mx(&config, &import_args("legacy1", &legacy));
    assert!(!out.status.success(), "{}", describe(&out));
}

#[test]
fn revoke_publishes_empty_p_now_and_a_successor_signs() {
    let Some((bind, work)) = setup(
        "revoke_publishes_empty_p_now_and_a_successor_signs",
        &[DKIMPY],
    ) else {
        return;
    };
    let zero = write_config(&bind, &work, "lead = \"0s\"\n");
    mx_ok(&zero, &["dkim", "rotate"]);
    let active = key(&work, "rsa-2048", "active");
    // Now a long lead: revoke must skip it for the successor.
    let config = write_config(&bind, &work, "lead = \"1h\"\n");
    let py = Dkimpy::new(&work.join("py"), bind.port);
    let m_old = py.sign(
        &active.file,
        DOMAIN,
        &active.selector,
        &message(DOMAIN, "before"),
    );
    assert_verifies(&py, &m_old, &active.selector, "rsa-sha256");

    let out = mx_ok(
        &config,
        &[
            "dkim",
            "revoke",
            "--domain",
            DOMAIN,
            "--selector",
            &active.selector,
            "--force",
        ],
    );
    assert!(
        out.contains(&format!("revoked {} (p=)", active.name())),
        "{out}"
    );
    assert_eq!(bind.txt_values(&active.name()), vec!["v=DKIM1; k=rsa; p="]);
    assert_fails(&py, &m_old, &active.selector);
    let successor = key(&work, "rsa-2048", "active");
    assert_ne!(successor.selector, active.selector);
    assert!(
        out.contains(&format!("{DOMAIN}: {} signs", successor.selector)),
        "{out}"
    );
    assert!(successor.verified_at.is_some());
    assert_converged(&bind, &work);
    assert_eq!(
        signer_names(&work.join("signer")),
        [successor.name()].into_iter().collect()
    );
    let m_new = py.sign(
        &successor.file,
        DOMAIN,
        &successor.selector,
        &message(DOMAIN, "after"),
    );
    assert_verifies(&py, &m_new, &successor.selector, "rsa-sha256");
}

#[test]
fn status_json_names_every_key_with_its_next_transition() {
    let Some((bind, work)) = setup("status_json_names_every_key_with_its_next_transition", &[])
    else {
        return;
    };
    let config = write_config(
        &bind,
        &work,
        "algorithms = [\"rsa-2048\", \"ed25519\"]\nlead = \"0s\"\nrotate_every = \"90d\"\n",
    );
    mx_ok(&config, &["dkim", "rotate"]);
    let out = mx_ok(&config, &["dkim", "status", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 2, "{out}");
    let ks = keys(&work);
    for entry in arr {
        let obj = entry.as_object().unwrap();
        let fields: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            [
                "domain",
                "selector",
                "algorithm",
                "state",
                "since",
                "next",
                "next_at",
                "file"
            ]
            .into_iter()
            .collect(),
            "{out}"
        );
        let k = ks
            .iter()
            .find(|k| k.selector == entry["selector"].as_str().unwrap())
            .unwrap();
        assert_eq!(entry["domain"], DOMAIN);
        assert_eq!(entry["algorithm"], k.algorithm.as_str());
        assert_eq!(entry["state"], "active");
        assert_eq!(entry["file"], k.file.to_str().unwrap());
        assert_eq!(entry["next"], "start a successor");
        let at = |t: i64| common::rfc3339_z(time::OffsetDateTime::from_unix_timestamp(t).unwrap());
        assert_eq!(entry["since"], at(k.since).as_str(), "{out}");
        assert_eq!(
            entry["next_at"],
            at(k.activated_at.unwrap() + 90 * 86_400).as_str(),
            "{out}"
        );
    }
    let text = mx_ok(&config, &["dkim", "status"]);
    assert!(
        text.contains("active") && text.contains("next: start a successor"),
        "{text}"
    );
}

#[test]
fn ed25519_alone_is_refused_with_exit_2() {
    let Some((bind, work)) = setup("ed25519_alone_is_refused_with_exit_2", &[]) else {
        return;
    };
    let config = write_config(&bind, &work, "algorithms = [\"ed25519\"]\n");
    for args in [&["dkim", "rotate"][..], &["dkim", "status"][..]] {
        let out = mx(&config, args);
        assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("algorithms") && err.contains("rsa-2048"),
            "{err}"
        );
    }
    assert!(!work.join("state/dkim").exists());
    assert!(!work.join("keys").exists());
}

#[test]
fn rspamd_and_amavis_files_name_the_active_selectors() {
    let Some((bind, work)) = setup("rspamd_and_amavis_files_name_the_active_selectors", &[PERL])
    else {
        return;
    };
    // Rspamd: RSA and Ed25519 under one domain block.
    let config = write_config(
        &bind,
        &work,
        "algorithms = [\"rsa-2048\", \"ed25519\"]\nlead = \"0s\"\nsigner = \"rspamd\"\n\
         drain = \"1s\"\nrevoke_hold = \"1s\"\n",
    );
    mx_ok(&config, &["dkim", "rotate"]);
    let conf = std::fs::read_to_string(work.join("signer/dkim_signing.conf")).unwrap();
    let ks = keys(&work);
    assert_eq!(names_in(&ks, "active").len(), 2);
    for k in &ks {
        // Rspamd reads Ed25519 keys from its own form, written beside the PEM.
        let file = if k.algorithm == "ed25519" {
            k.file.with_extension("rspamd")
        } else {
            k.file.clone()
        };
        assert_eq!(common::mode_of(&file) & 0o777, 0o600, "{}", file.display());
        assert!(
            conf.contains(&format!(
                "{{ selector = \"{}\"; path = \"{}\"; }}",
                k.selector,
                file.display()
            )),
            "{conf}"
        );
    }
    assert!(conf.contains(&format!("  {DOMAIN} {{\n")), "{conf}");
    assert_eq!(
        conf.matches('{').count(),
        conf.matches('}').count(),
        "{conf}"
    );
    // A forced rotation: only the successors are named.
    let first_ed = key(&work, "ed25519", "active");
    mx_ok(&config, &["dkim", "rotate", "--force"]);
    let conf = std::fs::read_to_string(work.join("signer/dkim_signing.conf")).unwrap();
    for k in keys(&work) {
        let named = conf.contains(&format!("selector = \"{}\";", k.selector));
        assert_eq!(named, k.state == "active", "{k:?}\n{conf}");
    }
    // When the old Ed25519 key is deleted (drain and revoke_hold 1 s),
    // Rspamd's copy of it goes too; the successor's stays.
    let start = Instant::now();
    while keys(&work).iter().any(|k| k.selector == first_ed.selector) {
        assert!(start.elapsed() < DEADLINE, "{:#?}", keys(&work));
        std::thread::sleep(Duration::from_millis(300));
        mx_ok(&config, &["dkim", "rotate"]);
    }
    assert!(!first_ed.file.exists() && !first_ed.file.with_extension("rspamd").exists());
    let second_ed = key(&work, "ed25519", "active");
    assert!(second_ed.file.with_extension("rspamd").exists());

    // amavis: a fresh state, RSA only; the file is Perl amavisd can `do`.
    let work2 = work.join("amavis");
    std::fs::create_dir_all(&work2).unwrap();
    let config = write_config(
        &bind,
        &work2,
        "lead = \"0s\"\nsigner = \"amavis\"\ndomains = [\"amavis.example.test\"]\n",
    );
    mx_ok(&config, &["dkim", "rotate"]);
    let k = key(&work2, "rsa-2048", "active");
    let file = work2.join("signer/dkim_keys.conf");
    let mut c = Command::new(prog("perl"));
    c.arg("-e")
        .arg(
            "my @k; sub dkim_key { push @k, join('|', @_) } \
             my $r = do $ARGV[0]; die \"not loaded: $@ $!\" unless $r; print \"$_\\n\" for @k;",
        )
        .arg(&file);
    let printed = String::from_utf8(run_ok(c).stdout).unwrap();
    assert_eq!(
        printed,
        format!("amavis.example.test|{}|{}\n", k.selector, k.file.display())
    );
    // Ed25519 with amavis is a configuration error.
    let config = write_config(
        &bind,
        &work2,
        "lead = \"0s\"\nsigner = \"amavis\"\nalgorithms = [\"rsa-2048\", \"ed25519\"]\n",
    );
    let out = mx(&config, &["dkim", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
}

/// OpenDKIM and Rspamd load key files through OpenSSL; Debian 12's
/// OpenSSL 3.0 must read the Ed25519 key files mxkeys writes, as it reads
/// the RSA ones. (It does not read PKCS#8 v2, the form with the public key
/// appended: OpenDKIM given such a key answers every message from the
/// domain with `451 4.7.0 resource unavailable`; the same key as PKCS#8 v1
/// signs, and dkimpy verifies the ed25519-sha256 signature.)
#[test]
fn ed25519_key_files_load_in_openssl() {
    let Some((bind, work)) = setup("ed25519_key_files_load_in_openssl", &[DKIMPY]) else {
        return;
    };
    let config = write_config(
        &bind,
        &work,
        "algorithms = [\"rsa-2048\", \"ed25519\"]\nlead = \"0s\"\nsigner = \"rspamd\"\n",
    );
    mx_ok(&config, &["dkim", "rotate"]);
    for k in keys(&work) {
        let mut c = Command::new(prog("openssl"));
        c.args(["pkey", "-noout", "-in"]).arg(&k.file);
        let out = common::servers::output_within(c, Duration::from_secs(30)).unwrap();
        assert!(
            out.status.success(),
            "openssl cannot load the {} key {} that the signer is told to use:\n{}\n{}",
            k.algorithm,
            k.file.display(),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&k.file)
                .unwrap()
                .lines()
                .next()
                .unwrap()
        );
    }
}

/// `mxkeys renew` does a DKIM pass; `mxkeys run` advances the keys on its
/// own timer: after the lead, the key signs with no command run.
#[test]
fn renew_and_run_advance_the_keys_on_their_own() {
    let Some((bind, work)) = setup("renew_and_run_advance_the_keys_on_their_own", &[]) else {
        return;
    };
    let config = write_config(&bind, &work, "lead = \"2s\"\n");
    let out = mx(&config, &["renew"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("dkim: {DOMAIN}: new rsa-2048 key r")),
        "{}",
        describe(&out)
    );
    let k = key(&work, "rsa-2048", "published");
    assert!(k.verified_at.is_some(), "{k:?}");
    assert_eq!(bind.txt_values(&k.name()), vec![k.record.clone()]);
    assert!(signer_names(&work.join("signer")).is_empty());

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxkeys"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("MXKEYS_CONFIG");
    let mut daemon = common::Daemon::spawn(cmd, &work, "run");
    let active = common::servers::poll(
        "the daemon to activate the key after its lead",
        Duration::from_secs(150),
        || keys(&work).into_iter().find(|k| k.state == "active"),
        || daemon.describe(),
    );
    assert_eq!(active.selector, k.selector);
    assert!(active.activated_at.unwrap() >= active.verified_at.unwrap() + 2);
    common::servers::poll(
        "the daemon to write the signer's tables",
        DEADLINE,
        || (signer_names(&work.join("signer")) == names_in(&keys(&work), "active")).then_some(()),
        || daemon.describe(),
    );
    assert_converged(&bind, &work);
    daemon.assert_running();
    daemon.terminate();
}

// ---------------------------------------------------------------------------
// Never wipe a signer's configuration; never publish over another record
// ---------------------------------------------------------------------------

/// The signer's two OpenDKIM tables, byte for byte (`None`: absent).
pub(super) fn table_bytes(signer: &Path) -> [Option<String>; 2] {
    ["KeyTable", "SigningTable"].map(|f| {
        std::fs::read(signer.join(f))
            .ok()
            .map(|b| String::from_utf8(b).expect("a table is UTF-8"))
    })
}

/// The mail path of the signing tests: OpenDKIM (in `work/opendkim`,
/// reading mxkeys' tables in `work/signer`) as the milter of a Postfix
/// (in `work/postfix`) relaying to an SMTP sink, and dkimpy verifying
/// through `bind`.
/// An admin's OpenDKIM set-up in `work`: a key `admin/mail.private`
/// (selector `mail`), its record published by hand, and the admin's own
/// KeyTable and SigningTable in `signer/`.
pub(super) struct AdminSigner {
    pub(super) signer: PathBuf,
    pub(super) key: PathBuf,
    pub(super) record: String,
}

pub(super) fn admin_signer(bind: &Bind, work: &Path) -> AdminSigner {
    let signer = work.join("signer");
    std::fs::create_dir_all(&signer).unwrap();
    std::fs::create_dir_all(work.join("admin")).unwrap();
    let key = work.join("admin").join("mail.private");
    let record = openssl_key(&key);
    nsupdate_txt(bind, &format!("mail._domainkey.{DOMAIN}"), &record);
    std::fs::write(
        signer.join("KeyTable"),
        format!(
            "# the admin's\nmail._domainkey.{DOMAIN} {DOMAIN}:mail:{}\n",
            key.display()
        ),
    )
    .unwrap();
    std::fs::write(
        signer.join("SigningTable"),
        format!("*@{DOMAIN} mail._domainkey.{DOMAIN}\n"),
    )
    .unwrap();
    AdminSigner {
        signer,
        key,
        record,
    }
}

pub(super) fn start_mail_path(
    bind: &Bind,
    work: &Path,
) -> (OpenDkim, SmtpSink, common::servers::Postfix, Dkimpy) {
    let opendkim = OpenDkim::start(&work.join("opendkim"), &work.join("signer"));
    let sink = SmtpSink::start();
    let postfix =
        common::servers::Postfix::start_relay(&work.join("postfix"), opendkim.port, sink.port);
    let py = Dkimpy::new(&work.join("py"), bind.port);
    (opendkim, sink, postfix, py)
}

/// Sends a message with `subject` from alice@DOMAIN to bob@receiver.test
/// by SMTP to `addr`.
fn send_as_alice(addr: &str, subject: &str) {
    smtp_send(
        addr,
        &format!("alice@{DOMAIN}"),
        "bob@receiver.test",
        &message(DOMAIN, subject),
    );
}

/// Sends a message through `postfix` (OpenDKIM behind it) and returns
/// dkimpy's verdict on what the sink received.
#[track_caller]
pub(super) fn send_and_verify(
    postfix: &common::servers::Postfix,
    sink: &SmtpSink,
    py: &Dkimpy,
    subject: &str,
) -> common::dkim_tools::Verdict {
    send_as_alice(&postfix.addr(), subject);
    let got = sink.wait_for(subject, || postfix.log());
    py.verify_one(&got)
}

/// An admin's own KeyTable and SigningTable, signing through OpenDKIM
/// behind Postfix: `mxkeys dkim rotate` and `mxkeys run` with a `[dkim]`
/// table leave them byte for byte (reporting them in one line that says to
/// `mxkeys dkim import` first), and mail stays signed; `dkim status` and
/// `check` say so too. After `dkim import` of the admin's key mxkeys takes
/// the tables over, and OpenDKIM then signs with mxkeys' keys.
#[test]
fn an_admins_opendkim_tables_stay_untouched_and_signing_until_dkim_import_takes_them_over() {
    let Some((bind, work)) = setup(
        "an_admins_opendkim_tables_stay_untouched_and_signing_until_dkim_import_takes_them_over",
        &[DKIMPY, OPENDKIM, POSTFIX],
    ) else {
        return;
    };
    // The admin's key, published by hand, and the admin's tables.
    let AdminSigner {
        signer,
        key: admin_key,
        ..
    } = admin_signer(&bind, &work);
    let admin_tables = table_bytes(&signer);

    let (mut opendkim, sink, postfix, py) = start_mail_path(&bind, &work);
    let v = send_and_verify(&postfix, &sink, &py, "admin-signed-1");
    assert!(v.ok && v.selector == "mail", "{v:?}");

    let config = write_config(
        &bind,
        &work,
        &format!(
            "lead = \"0s\"\n\
             reload_signal = {{ pidfile = \"{}\", signal = \"USR1\" }}\n",
            opendkim.pidfile.display()
        ),
    );
    let key_table = signer.join("KeyTable").display().to_string();
    // A pass: refused, in one line naming the file and `dkim import`.
    let out = mx(&config, &["dkim", "rotate"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(&key_table)).collect();
    assert_eq!(lines.len(), 1, "{}", describe(&out));
    assert!(lines[0].contains("`mxkeys dkim import`"), "{}", lines[0]);
    assert_eq!(
        table_bytes(&signer),
        admin_tables,
        "dkim rotate wrote the admin's tables"
    );
    // The daemon too.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxkeys"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("MXKEYS_CONFIG");
    let mut daemon = common::Daemon::spawn(cmd, &work, "run");
    common::servers::poll(
        "the daemon to report the admin's KeyTable",
        DEADLINE,
        || daemon.stderr().contains(&key_table).then_some(()),
        || daemon.describe(),
    );
    daemon.assert_running();
    daemon.terminate();
    assert_eq!(
        table_bytes(&signer),
        admin_tables,
        "mxkeys run wrote the admin's tables"
    );
    // `dkim status` and `check` say to import first.
    let status = mx_ok(&config, &["dkim", "status"]);
    assert!(
        status.contains(&key_table) && status.contains("`mxkeys dkim import`"),
        "{status}"
    );
    let check = mx(&config, &["check"]);
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check_out.contains(&key_table) && check_out.contains("`mxkeys dkim import`"),
        "{}",
        describe(&check)
    );
    // Mail is still signed with the admin's key.
    opendkim.assert_running();
    let v = send_and_verify(&postfix, &sink, &py, "admin-signed-2");
    assert!(v.ok && v.selector == "mail", "{v:?}");

    // Import of the admin's key: mxkeys takes the tables over.
    let out = mx_ok(&config, &import_args("mail", &admin_key));
    assert!(out.contains("imported mail"), "{out}");
    for table in ["KeyTable", "SigningTable"] {
        let text = std::fs::read_to_string(signer.join(table)).unwrap();
        assert!(text.starts_with("# Written by mxkeys"), "{table}:\n{text}");
    }
    assert_converged(&bind, &work);
    assert_eq!(
        signer_names(&signer),
        [format!("mail._domainkey.{DOMAIN}")].into_iter().collect()
    );
    let v = send_and_verify(&postfix, &sink, &py, "imported-signed");
    assert!(v.ok && v.selector == "mail", "{v:?}");
    let status = mx_ok(&config, &["dkim", "status"]);
    assert!(!status.contains("dkim import"), "{status}");

    // From now on mxkeys rotates: OpenDKIM signs with its successor.
    mx_ok(&config, &["dkim", "rotate", "--force"]);
    let next = key(&work, "rsa-2048", "active");
    assert_ne!(next.selector, "mail");
    assert_converged(&bind, &work);
    let mut n = 0;
    common::servers::poll(
        "OpenDKIM to sign with mxkeys' successor",
        DEADLINE,
        || {
            n += 1;
            let v = send_and_verify(&postfix, &sink, &py, &format!("successor-{n}"));
            assert!(v.ok, "every signature verifies: {v:?}");
            (v.selector == next.selector).then_some(())
        },
        || opendkim.log(),
    );
}

/// Before the first key signs, and after `state_dir` is lost, the signer's
/// files stay as they are (absent, or the last ones written).
#[test]
fn signer_tables_are_not_written_before_the_first_activation_nor_after_state_loss() {
    let Some((bind, work)) = setup(
        "signer_tables_are_not_written_before_the_first_activation_nor_after_state_loss",
        &[],
    ) else {
        return;
    };
    let signer = work.join("signer");
    let config = write_config(&bind, &work, "lead = \"1h\"\n");
    mx_ok(&config, &["dkim", "rotate"]);
    let first = key(&work, "rsa-2048", "published");
    assert_eq!(bind.txt_values(&first.name()), vec![first.record.clone()]);
    assert_eq!(
        table_bytes(&signer),
        [None, None],
        "tables written before any key signs"
    );

    // The key signs (no lead now): the tables are written.
    let config = write_config(&bind, &work, "lead = \"0s\"\n");
    mx_ok(&config, &["dkim", "rotate"]);
    key(&work, "rsa-2048", "active");
    assert_converged(&bind, &work);
    let written = table_bytes(&signer);

    // state_dir lost: a new key is made and published, the tables stay.
    std::fs::remove_dir_all(work.join("state")).unwrap();
    let config = write_config(&bind, &work, "lead = \"1h\"\n");
    mx_ok(&config, &["dkim", "rotate"]);
    let new = key(&work, "rsa-2048", "published");
    assert_ne!(
        new.selector, first.selector,
        "the live selector is not reused"
    );
    assert_eq!(
        table_bytes(&signer),
        written,
        "the tables were wiped after state loss"
    );
    assert_eq!(bind.txt_values(&first.name()), vec![first.record.clone()]);
    assert_signer_safe(&bind, &signer, "after state loss");
}

/// A selector whose record name already holds a TXT record (written by
/// someone else) is passed over: the next one is published, the other
/// record stays.
#[test]
fn a_selector_whose_name_already_holds_a_record_is_passed_over() {
    let Some((bind, work)) = setup(
        "a_selector_whose_name_already_holds_a_record_is_passed_over",
        &[],
    ) else {
        return;
    };
    let taken = format!("r{}._domainkey.{DOMAIN}", today());
    let foreign = "v=DKIM1; k=rsa; p=ANOTHERHOSTSKEY";
    nsupdate_txt(&bind, &taken, foreign);
    let config = write_config(&bind, &work, "lead = \"0s\"\n");
    let out = mx_ok(&config, &["dkim", "rotate"]);
    let k = key(&work, "rsa-2048", "active");
    assert_eq!(k.selector, format!("r{}-2", today()), "{out}");
    assert_eq!(bind.txt_values(&k.name()), vec![k.record.clone()]);
    assert_eq!(bind.txt_values(&taken), vec![foreign.to_owned()]);
    assert_converged(&bind, &work);
}

/// A signer reload that fails is tried again by `mxkeys run` on its short
/// timer (about 30 s), not at the next timed transition (30 days here);
/// meanwhile the state, `dkim status` and the metrics say it is pending.
#[test]
fn a_failed_signer_reload_is_retried_within_a_minute_by_the_daemon() {
    let Some((bind, work)) = setup(
        "a_failed_signer_reload_is_retried_within_a_minute_by_the_daemon",
        &[],
    ) else {
        return;
    };
    let log = work.join("reloads.log");
    // The first reload fails, every later one succeeds.
    let config = write_config(
        &bind,
        &work,
        &format!(
            "lead = \"0s\"\n\
             rotate_every = \"30d\"\n\
             reload = [\"sh\", \"-c\", \"echo reload >> {log}; [ $(wc -l < {log}) -ge 2 ]\"]\n",
            log = log.display()
        ),
    );
    let port = common::free_port();
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"));
    std::fs::write(&config, text).unwrap();
    let reloads = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };
    let pending = || state_json(&work).is_some_and(|v| v["signer_reload_pending"] == true);

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mxkeys"));
    cmd.arg("--config")
        .arg(&config)
        .arg("run")
        .env_remove("MXKEYS_CONFIG");
    let mut daemon = common::Daemon::spawn(cmd, &work, "run");
    common::servers::poll(
        "the first (failing) reload",
        DEADLINE,
        || (reloads() == 1 && pending()).then_some(()),
        || daemon.describe(),
    );
    let status = mx_ok(&config, &["dkim", "status"]);
    assert!(status.contains("signer reload pending"), "{status}");
    common::servers::poll(
        "the pending-reload gauge",
        DEADLINE,
        || {
            let (_, body) = common::http_get(port, "/metrics")?;
            (common::metric(&body, "mxkeys_dkim_signer_reload_pending") == Some(1.0)
                && common::metric(&body, "mxkeys_dkim_failed_passes") == Some(1.0))
            .then_some(())
        },
        || daemon.describe(),
    );
    // Retried on the short timer: bounded well under the 30-day rotation.
    common::servers::poll(
        "the daemon to retry the reload",
        Duration::from_secs(90),
        || (reloads() >= 2 && !pending()).then_some(()),
        || daemon.describe(),
    );
    assert_converged(&bind, &work);
    common::servers::poll(
        "the gauges to clear",
        DEADLINE,
        || {
            let (_, body) = common::http_get(port, "/metrics")?;
            (common::metric(&body, "mxkeys_dkim_signer_reload_pending") == Some(0.0)
                && common::metric(&body, "mxkeys_dkim_failed_passes") == Some(0.0))
            .then_some(())
        },
        || daemon.describe(),
    );
    daemon.assert_running();
    daemon.terminate();
}

/// `rsa-1024` in `[dkim] algorithms` is refused in one line (it cannot be
/// generated); an existing rsa-1024 key is still adopted by `dkim import`
/// and keeps signing while its rsa-2048 successor waits for its lead.
#[test]
fn rsa_1024_is_refused_in_the_configuration_but_an_rsa_1024_key_is_imported() {
    let Some((bind, work)) = setup(
        "rsa_1024_is_refused_in_the_configuration_but_an_rsa_1024_key_is_imported",
        &[],
    ) else {
        return;
    };
    let config = write_config(&bind, &work, "algorithms = [\"rsa-1024\"]\n");
    let out = mx(&config, &["dkim", "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("rsa-1024") && err.contains("dkim import"),
        "{err}"
    );

    let config = write_config(&bind, &work, "lead = \"1h\"\n");
    let legacy = work.join("legacy1024.pem");
    rsa_key_file(&legacy, 1024);
    let record = record_of_key_file(&legacy);
    // The same key in PKCS#1 form ("BEGIN RSA PRIVATE KEY", as older
    // opendkim-genkey writes), then in PKCS#8 under a second selector.
    let pkcs1 = work.join("legacy1024.private");
    let mut c = Command::new(prog("openssl"));
    c.args(["rsa", "-traditional", "-in"])
        .arg(&legacy)
        .arg("-out")
        .arg(&pkcs1);
    run_ok(c);
    assert!(
        std::fs::read_to_string(&pkcs1)
            .unwrap()
            .starts_with("-----BEGIN RSA PRIVATE KEY-----")
    );
    for (selector, file) in [("old1024a", &pkcs1), ("old1024", &legacy)] {
        nsupdate_txt(&bind, &format!("{selector}._domainkey.{DOMAIN}"), &record);
        let out = mx_ok(&config, &import_args(selector, file));
        assert!(
            out.contains(&format!("imported {selector} (rsa-1024)")),
            "{out}"
        );
        assert_converged(&bind, &work);
    }
    // A pass: a successor of the configured size is published, the
    // imported key still signs.
    mx_ok(&config, &["dkim", "rotate"]);
    let old = key(&work, "rsa-1024", "active");
    assert_eq!(old.selector, "old1024");
    let successor = key(&work, "rsa-2048", "published");
    assert_eq!(
        bind.txt_values(&successor.name()),
        vec![successor.record.clone()]
    );
    assert_converged(&bind, &work);
}

/// An admin's Rspamd `dkim_signing.conf` signing with an RSA and an
/// Ed25519 key: left untouched by `dkim rotate`; importing one key is not
/// enough (the other is still named only there); once both are imported
/// mxkeys takes the file over and names both selectors.
#[test]
fn an_admins_rspamd_file_is_taken_over_only_once_every_selector_it_names_is_imported() {
    let Some((bind, work)) = setup(
        "an_admins_rspamd_file_is_taken_over_only_once_every_selector_it_names_is_imported",
        &[DKIMPY],
    ) else {
        return;
    };
    let signer = work.join("signer");
    std::fs::create_dir_all(&signer).unwrap();
    let rsa = work.join("mail.key");
    let rsa_record = openssl_key(&rsa);
    let ed = work.join("mailed.key");
    let mut c = Command::new(prog("openssl"));
    c.args(["genpkey", "-algorithm", "ED25519", "-out"])
        .arg(&ed);
    run_ok(c);
    let ed_record = record_of_key_file(&ed);
    nsupdate_txt(&bind, &format!("mail._domainkey.{DOMAIN}"), &rsa_record);
    nsupdate_txt(&bind, &format!("mailed._domainkey.{DOMAIN}"), &ed_record);
    let conf = signer.join("dkim_signing.conf");
    let admin = format!(
        "# the admin's\ndomain {{\n  {DOMAIN} {{\n    selectors [\n      \
         {{ selector = \"mail\"; path = \"{}\"; }},\n      \
         {{ selector = \"mailed\"; path = \"{}\"; }}\n    ]\n  }}\n}}\n",
        rsa.display(),
        ed.display()
    );
    std::fs::write(&conf, &admin).unwrap();
    let config = write_config(
        &bind,
        &work,
        "algorithms = [\"rsa-2048\", \"ed25519\"]\nlead = \"0s\"\nsigner = \"rspamd\"\n",
    );
    let conf_name = conf.display().to_string();

    let out = mx(&config, &["dkim", "rotate"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&conf_name),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), admin);

    // One of the two keys imported: the file still signs with the other.
    let out = mx(&config, &import_args("mail", &rsa));
    assert!(out.status.success(), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&conf_name) && err.contains("mailed._domainkey"),
        "{}",
        describe(&out)
    );
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), admin);

    // Both imported: mxkeys writes the file, naming both.
    mx_ok(&config, &import_args("mailed", &ed));
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.starts_with("# Written by mxkeys"), "{text}");
    for selector in ["mail", "mailed"] {
        assert!(
            text.contains(&format!("selector = \"{selector}\";")),
            "{text}"
        );
    }
    assert_eq!(names_in(&keys(&work), "active").len(), 2);
    let status = mx_ok(&config, &["dkim", "status"]);
    assert!(!status.contains("dkim import"), "{status}");
}

// ---- no signing gap; safe revocation ----

/// `dkim revoke --domain DOMAIN --selector SELECTOR [EXTRA]`.
fn revoke_args<'a>(selector: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["dkim", "revoke", "--domain", DOMAIN, "--selector", selector];
    args.extend_from_slice(extra);
    args
}

/// The first pass with a zero lead (one active key), then a forced
/// rotation with a long lead: a verified successor waits, published.
fn active_and_verified_successor(bind: &Bind, work: &Path, extra: &str) -> (Key, Key) {
    let zero = write_config(bind, work, &format!("lead = \"0s\"\n{extra}"));
    let _ = mx(&zero, &["dkim", "rotate"]);
    let config = write_config(bind, work, &format!("lead = \"1h\"\n{extra}"));
    let _ = mx(&config, &["dkim", "rotate", "--force"]);
    let active = key(work, "rsa-2048", "active");
    let successor = key(work, "rsa-2048", "published");
    assert!(successor.verified_at.is_some(), "{successor:?}");
    (active, successor)
}

#[test]
fn revoking_the_only_signing_key_is_refused_with_exit_2_unless_forced() {
    let Some((bind, work)) = setup(
        "revoking_the_only_signing_key_is_refused_with_exit_2_unless_forced",
        &[],
    ) else {
        return;
    };
    let config = write_config(&bind, &work, "lead = \"0s\"\n");
    mx_ok(&config, &["dkim", "rotate"]);
    let only = key(&work, "rsa-2048", "active");
    let before = std::fs::read(work.join("state/dkim/state.json")).unwrap();
    let out = mx(&config, &revoke_args(&only.selector, &[]));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--force") && err.contains(&only.name()),
        "one line naming the key and --force: {err}"
    );
    // Nothing changed: the record, the state, the signer's tables.
    assert_eq!(bind.txt_values(&only.name()), vec![only.record.clone()]);
    assert_eq!(
        std::fs::read(work.join("state/dkim/state.json")).unwrap(),
        before
    );
    assert_eq!(signer_names(&work.join("signer")), [only.name()].into());
    // With --force it is revoked and a successor signs.
    let out = mx_ok(&config, &revoke_args(&only.selector, &["--force"]));
    assert!(
        out.contains(&format!("revoked {} (p=)", only.name())),
        "{out}"
    );
    assert_eq!(bind.txt_values(&only.name()), vec!["v=DKIM1; k=rsa; p="]);
    let successor = key(&work, "rsa-2048", "active");
    assert_eq!(
        signer_names(&work.join("signer")),
        [successor.name()].into()
    );
}

#[test]
fn revoke_publishes_no_empty_p_while_the_signer_reload_fails() {
    let Some((bind, work)) = setup(
        "revoke_publishes_no_empty_p_while_the_signer_reload_fails",
        &[],
    ) else {
        return;
    };
    // The reload succeeds while the file `reload-ok` exists; each reload
    // logs the TXT value of the key being revoked as the server answers it
    // at that moment.
    let ok = work.join("reload-ok");
    let log = work.join("reloads.log");
    std::fs::write(&ok, "").unwrap();
    let reload = format!(
        "reload = [\"sh\", \"-c\", \"echo reload >> {log}; [ -e {ok} ]\"]\n",
        log = log.display(),
        ok = ok.display()
    );
    let (active, successor) = active_and_verified_successor(&bind, &work, &reload);
    std::fs::remove_file(&ok).unwrap();
    let config = work.join("mxkeys.toml");

    // A verified successor takes over: no --force needed. The reload
    // fails: the key is out of the tables, but p= is not published.
    let out = mx(&config, &revoke_args(&active.selector, &[]));
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reload"), "{err}");
    assert!(err.contains("not revoked yet"), "{err}");
    assert_eq!(
        bind.txt_values(&active.name()),
        vec![active.record.clone()],
        "p= must wait for a successful signer reload"
    );
    assert_eq!(
        signer_names(&work.join("signer")),
        [successor.name()].into()
    );
    assert!(has(&keys(&work), &active.selector, "draining"));
    // A pass while the reload still fails: still no p=.
    let out = mx(&config, &["dkim", "rotate"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(bind.txt_values(&active.name()), vec![active.record.clone()]);
    // The reload works again: the next pass reloads, then publishes p=.
    std::fs::write(&ok, "").unwrap();
    let out = mx_ok(&config, &["dkim", "rotate"]);
    assert!(
        out.contains(&format!("revoked {} (p=)", active.name())),
        "{out}"
    );
    assert_eq!(bind.txt_values(&active.name()), vec!["v=DKIM1; k=rsa; p="]);
    assert!(has(&keys(&work), &active.selector, "revoked"));
    assert_eq!(
        state_json(&work).unwrap()["signer_reload_pending"],
        Value::Bool(false)
    );
}

#[test]
fn no_mail_signed_with_a_revoked_selector_leaves_postfix_after_p_is_visible() {
    let Some((bind, work)) = setup(
        "no_mail_signed_with_a_revoked_selector_leaves_postfix_after_p_is_visible",
        &[DKIMPY, OPENDKIM, POSTFIX],
    ) else {
        return;
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let odk_dir = work.join("opendkim");
    // A reload that takes a second, as `systemctl reload` may.
    let reload = format!(
        "reload = [\"sh\", \"-c\", \"sleep 1; kill -USR1 $(cat {})\"]\n",
        odk_dir.join("opendkim.pid").display()
    );
    // OpenDKIM is not running yet: the first passes' reloads fail.
    let (active, successor) = active_and_verified_successor(&bind, &work, &reload);
    let config = work.join("mxkeys.toml");
    let (mut opendkim, sink, postfix, py) = start_mail_path(&bind, &work);
    let sink = Arc::new(sink);
    // The owed reload is paid: OpenDKIM signs with the active key.
    mx_ok(&config, &["dkim", "rotate"]);
    assert_eq!(
        send_and_verify(&postfix, &sink, &py, "before-revoke").selector,
        active.selector
    );

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    // When each message reached the sink (polled every 5 ms).
    let arrivals: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let watcher = {
        let (stop, sink, arrivals) = (stop.clone(), sink.clone(), arrivals.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let n = sink.messages().len();
                let mut a = arrivals.lock().unwrap();
                while a.len() < n {
                    a.push(start.elapsed());
                }
                drop(a);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // When p= was first seen on the authoritative server.
    let revoked_seen: Arc<Mutex<Option<Duration>>> = Arc::default();
    let digger = {
        let (stop, seen, name, port) =
            (stop.clone(), revoked_seen.clone(), active.name(), bind.port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) && seen.lock().unwrap().is_none() {
                let out = Command::new("dig")
                    .args([
                        "@127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "TXT",
                        &name,
                        "+short",
                    ])
                    .output()
                    .unwrap();
                if String::from_utf8_lossy(&out.stdout).contains("\"v=DKIM1; k=rsa; p=\"") {
                    *seen.lock().unwrap() = Some(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let sender = {
        let (stop, addr) = (stop.clone(), postfix.addr());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                send_as_alice(&addr, &format!("loop-{n}"));
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let out = mx_ok(&config, &revoke_args(&active.selector, &[]));
    assert!(
        out.contains(&format!("revoked {} (p=)", active.name())),
        "{out}"
    );
    // Mail goes on until the successor signs and p= was seen.
    let mut k = 0;
    common::servers::poll(
        "p= seen and a message signed by the successor",
        DEADLINE,
        || {
            k += 1;
            let seen = revoked_seen.lock().unwrap().is_some();
            let signed = sink.messages().iter().rev().take(3).any(|m| {
                py.verify(m)
                    .iter()
                    .any(|v| v.selector == successor.selector)
            });
            (seen && signed).then_some(())
        },
        || format!("{}\n--- opendkim ---\n{}", postfix.log(), opendkim.log()),
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let sent = sender.join().unwrap();
    watcher.join().unwrap();
    digger.join().unwrap();
    // The last messages may have arrived after the watcher stopped.
    let messages = sink.messages();
    let arrivals = arrivals.lock().unwrap().clone();
    let p_seen = revoked_seen.lock().unwrap().unwrap();
    let (mut old_before, mut old_after, mut new_after) = (0, 0, 0);
    for (i, m) in messages.iter().enumerate().skip(1) {
        let at = arrivals.get(i).copied().unwrap_or(Duration::MAX);
        let text = String::from_utf8_lossy(m);
        let signed_old = text.contains(&format!("s={};", active.selector))
            || text.contains(&format!("s={}\r", active.selector));
        let signed_new = text.contains(&format!("s={}", successor.selector));
        match (signed_old, at > p_seen) {
            (true, true) => old_after += 1,
            (true, false) => old_before += 1,
            (false, true) if signed_new => new_after += 1,
            _ => {}
        }
    }
    eprintln!(
        "{sent} messages sent, {} received; p= seen at {p_seen:?}; signed by the revoked \
         selector before: {old_before}, after: {old_after}; by the successor after: {new_after}",
        messages.len()
    );
    assert!(old_before > 0, "the loop ran while the old key signed");
    assert!(new_after > 0, "the loop ran after p= was visible");
    assert_eq!(
        old_after, 0,
        "a message signed with the revoked selector left Postfix after p= was visible"
    );
    opendkim.assert_running();
}

/// Signs a message with each RSA key the OpenDKIM KeyTable names (its own
/// key file, as the milter would) and verifies it with dkimpy through BIND;
/// the selectors whose signature verified. Fails when none does: the
/// domain would be sending mail with no RSA signature.
#[track_caller]
fn rsa_selectors_verifying(py: &Dkimpy, bind: &Bind, work: &Path, context: &str) -> Vec<String> {
    let signer = work.join("signer");
    assert_signer_safe(bind, &signer, context);
    let ks = keys(work);
    let mut verified = Vec::new();
    for (id, domain, selector, file) in key_table(&signer) {
        let k = ks
            .iter()
            .find(|k| k.name() == id)
            .unwrap_or_else(|| panic!("{context}: the KeyTable names {id}, unknown: {ks:#?}"));
        if !k.algorithm.starts_with("rsa-") {
            continue;
        }
        let subject = format!("{selector}-{}", verified.len());
        let signed = py.sign(&file, &domain, &selector, &message(DOMAIN, &subject));
        let v = py.verify_one(&signed);
        assert!(
            v.ok,
            "{context}: the signer's key {id} does not verify: {v:?}"
        );
        assert_eq!(v.algorithm, "rsa-sha256", "{context}");
        verified.push(selector);
    }
    assert!(
        !verified.is_empty(),
        "{context}: no RSA key in the signer's tables verifies: mail goes out without an RSA \
         signature\nKeyTable: {:?}\nkeys: {ks:#?}",
        key_table(&signer)
    );
    verified
}

#[test]
fn changing_rsa_2048_to_rsa_3072_keeps_an_rsa_signature_verifying_at_every_step() {
    let Some((bind, work)) = setup(
        "changing_rsa_2048_to_rsa_3072_keeps_an_rsa_signature_verifying_at_every_step",
        &[DKIMPY],
    ) else {
        return;
    };
    let dkim = |algorithms: &str, lead: &str| {
        format!(
            "algorithms = [{algorithms}]\n\
             selector = \"{{alg}}{{date}}\"\n\
             lead = \"{lead}\"\n\
             drain = \"2s\"\n\
             revoke_hold = \"2s\"\n\
             revoke_settle = \"1s\"\n\
             rotate_every = \"1d\"\n\
             reload = [\"sh\", \"-c\", \"echo reload >> {}\"]\n",
            work.join("reloads.log").display()
        )
    };
    let py = Dkimpy::new(&work.join("py"), bind.port);
    let day = today();
    let (r2048, r3072) = (format!("r{day}"), format!("r{day}-2"));

    // rsa-2048 and ed25519 sign.
    let config = write_config(&bind, &work, &dkim("\"rsa-2048\", \"ed25519\"", "0s"));
    let mut transcript = rotate_counting_reloads(&config, &work, &["dkim", "rotate"]);
    let old = key(&work, "rsa-2048", "active");
    assert_eq!(old.selector, r2048);
    key(&work, "ed25519", "active");
    assert_eq!(
        rsa_selectors_verifying(&py, &bind, &work, "before the change"),
        vec![r2048.clone()]
    );
    let signed_by_old = py.sign(&old.file, DOMAIN, &r2048, &message(DOMAIN, "by-2048"));

    // rsa-3072 configured, with a lead the test never reaches: the 3072
    // key is published and verified, and the 2048 key must go on signing
    // at every pass (before the fix it was drained at the first one).
    let config = write_config(&bind, &work, &dkim("\"rsa-3072\", \"ed25519\"", "1h"));
    for pass in 1..=4 {
        transcript.push_str(&rotate_counting_reloads(
            &config,
            &work,
            &["dkim", "rotate"],
        ));
        let context = format!("pass {pass} with rsa-3072 and a lead of 1h");
        let verified = rsa_selectors_verifying(&py, &bind, &work, &context);
        assert_eq!(verified, vec![r2048.clone()], "{context}");
        assert!(has(&keys(&work), &r2048, "active"), "{context}");
        // Long enough for `drain` and `revoke_settle` to pass.
        std::thread::sleep(Duration::from_millis(1200));
    }
    let new = key(&work, "rsa-3072", "published");
    assert_eq!(new.selector, r3072);
    assert!(new.verified_at.is_some(), "{new:?}");
    assert_eq!(bind.txt_values(&new.name()), vec![new.record.clone()]);

    // A short lead: the 3072 key takes over, then the 2048 key drains and
    // is revoked; after every pass some RSA key of the tables verifies.
    let config = write_config(&bind, &work, &dkim("\"rsa-3072\", \"ed25519\"", "2s"));
    let start = Instant::now();
    // The signer's RSA selectors, as they changed from pass to pass.
    let mut seen = vec![vec![r2048.clone()]];
    let mut pass = 0;
    loop {
        pass += 1;
        transcript.push_str(&rotate_counting_reloads(
            &config,
            &work,
            &["dkim", "rotate"],
        ));
        let context = format!("pass {pass} with rsa-3072 and a lead of 2s");
        let verified = rsa_selectors_verifying(&py, &bind, &work, &context);
        if seen.last() != Some(&verified) {
            seen.push(verified);
        }
        let ks = keys(&work);
        if has(&ks, &r3072, "active") && !ks.iter().any(|k| k.selector == r2048) {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for the 2048 key to go; keys: {ks:#?}\ntranscript:\n{transcript}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // The signer went from the 2048 key to the 3072 one, never through
    // nothing (the loop above checked that after every pass).
    assert_eq!(seen.last(), Some(&vec![r3072.clone()]), "{seen:?}");
    for line in [
        format!("{DOMAIN}: new rsa-3072 key {r3072}"),
        format!("{DOMAIN}: {r3072} signs"),
        format!("{DOMAIN}: {r2048} no longer signs; its record stays while mail drains"),
        format!("revoked {} (p=)", old.name()),
        format!("deleted {} and its key", old.name()),
    ] {
        assert!(transcript.contains(&line), "no {line:?} in:\n{transcript}");
    }
    let new = key(&work, "rsa-3072", "active");
    let bits = run_ok({
        let mut c = Command::new("openssl");
        c.args(["pkey", "-noout", "-text", "-in"]).arg(&new.file);
        c
    });
    assert!(
        String::from_utf8_lossy(&bits.stdout).contains("3072 bit"),
        "the signing key is not a 3072-bit key"
    );
    let signed_by_new = py.sign(&new.file, DOMAIN, &r3072, &message(DOMAIN, "by-3072"));
    assert_verifies(&py, &signed_by_new, &r3072, "rsa-sha256");
    assert_fails(&py, &signed_by_old, &r2048);
    assert_converged(&bind, &work);
}
