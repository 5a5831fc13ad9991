//! Crash consistency: `mxkeys sync` and `mxkeys dkim rotate --force` are
//! SIGKILLed at random moments while they have real work to do, and after
//! every kill the files a server reads, the state and (for DKIM) the DNS
//! server are checked; then a run that is not killed must converge.
//!
//! Certificates: the sources alternate between two certificates, so every
//! killed run replaces three targets' files (a `combined` file with a slow
//! reload, separate `fullchain` + `key`, and every file kind). After each
//! kill: the combined file is always key + leaf + chain of one certificate
//! with a matching key; separate files are each whole and of one of the two
//! certificates (whether key and fullchain match each other at that moment
//! is counted and printed, not asserted: mxkeys writes them one after the
//! other and documents `combined` as the safe form); leftover temporary
//! files hold no key readable by others. The next run exits 0 and every
//! file holds the offered certificate with its key.
//!
//! DKIM: against a real BIND 9 on loopback (RFC 2136 + TSIG), lead 0s,
//! first with drain and revoke_hold 0s (keys go all the way to deletion in
//! one pass), then with 1h. After each kill: every key the signer's
//! KeyTable names exists and has exactly its record on the server, the
//! state's records agree with each key's state, no selector appears twice.
//! The next run exits 0 and every domain and algorithm has one active key
//! with its exact record, named by the signer files.
//!
//! Delays are random (seed printed; `MXKEYS_CRASH_SEED` replays one) and
//! scaled to the time an uninterrupted run takes, measured first.

use mxkeys_testsupport as common;

use common::bind;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration as StdDuration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use serde_json::Value;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// xorshift64*: enough randomness for delays, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn new(tag: &str) -> Rng {
        let seed = std::env::var("MXKEYS_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                t.as_nanos() as u64 ^ u64::from(std::process::id())
            });
        eprintln!("{tag}: random seed {seed} (MXKEYS_CRASH_SEED={seed} replays it)");
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in 0..=max.
    fn delay(&mut self, max: StdDuration) -> StdDuration {
        let us = max.as_micros() as u64;
        StdDuration::from_micros(self.next() % (us + 1))
    }
}

/// Starts `cmd`, sleeps `delay`, SIGKILLs it (our own child, by its
/// handle). Returns whether it was still running when killed.
fn kill_after(mut cmd: Command, delay: StdDuration) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn mxkeys");
    std::thread::sleep(delay);
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let status = child.wait().unwrap();
    if !running {
        assert!(
            status.code().is_some(),
            "mxkeys ended by a signal before the kill: {status}"
        );
    }
    running
}

/// Files in `dir` named like mxkeys' temporary files
/// (`.NAME.mxkeys-PID-N.tmp`).
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| is_temp_name(p))
        .collect();
    out.sort();
    out
}

fn is_temp_name(p: &Path) -> bool {
    let name = p.file_name().unwrap().to_string_lossy();
    name.starts_with('.') && name.contains(".mxkeys-") && name.ends_with(".tmp")
}

/// A leftover temporary file must never expose a key to other users.
#[track_caller]
fn assert_temp_safe(p: &Path) {
    let mode = mode_of(p);
    let bytes = fs::read(p).unwrap_or_default();
    if String::from_utf8_lossy(&bytes).contains("PRIVATE KEY") {
        assert_eq!(
            mode & 0o077,
            0,
            "{} holds a key and is readable by others (mode {mode:o})",
            p.display()
        );
    }
}

/// Waits until no reload script of a killed run is still running (their
/// marker files are gone), so reload logs are final.
fn wait_reloads_idle(dir: &Path) {
    wait_for(
        "orphaned reload scripts to finish",
        || {
            let busy = fs::read_dir(dir).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".running")
            });
            (!busy).then_some(())
        },
        String::new,
    );
}

/// The sha256 of a file's bytes (hex).
fn sha_file(p: &Path) -> String {
    sha256_hex(&fs::read(p).unwrap())
}

fn last_line(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()?
        .lines()
        .last()
        .map(str::to_owned)
}

/// A reload command that sleeps `sleep`, then appends the sha256 of `file`
/// as the service would read it to `log`; `log.PID.running` exists while it
/// runs.
fn hashing_reload(file: &Path, log: &Path, sleep: &str) -> Vec<String> {
    let script = format!(
        "touch {log}.$$.running; sleep {sleep}; sha256sum {file} | cut -c1-64 >> {log}; rm -f {log}.$$.running",
        log = sh_quote(log.to_str().unwrap()),
        file = sh_quote(file.to_str().unwrap()),
    );
    vec!["sh".into(), "-c".into(), script]
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// Which of `leaves` a DER certificate is.
fn which(der: &[u8], leaves: &[&Leaf]) -> Option<usize> {
    leaves.iter().position(|l| l.der == der)
}

/// Checks a combined file (key, leaf, intermediates) and returns which leaf
/// it holds.
#[track_caller]
fn check_combined(p: &Path, leaves: &[&Leaf], when: &str) -> usize {
    let blocks = read_pem(p);
    assert!(
        is_private_key_label(&blocks[0].0),
        "{when}: {} does not start with the key",
        p.display()
    );
    let certs: Vec<Vec<u8>> = blocks[1..]
        .iter()
        .map(|(l, d)| {
            assert_eq!(l, "CERTIFICATE", "{when}: {}", p.display());
            d.clone()
        })
        .collect();
    assert!(
        !certs.is_empty(),
        "{when}: {} holds no certificate",
        p.display()
    );
    let i = which(&certs[0], leaves)
        .unwrap_or_else(|| panic!("{when}: {} holds an unknown leaf", p.display()));
    assert_eq!(
        certs[1..].to_vec(),
        leaves[i].chain,
        "{when}: {} has the wrong intermediates",
        p.display()
    );
    assert_eq!(
        private_key_public_raw(&blocks[0].0, &blocks[0].1),
        leaves[i].public_key_raw(),
        "{when}: the key in {} does not match its leaf",
        p.display()
    );
    i
}

/// Checks a fullchain file and returns which leaf it holds.
#[track_caller]
fn check_fullchain(p: &Path, leaves: &[&Leaf], when: &str) -> usize {
    let certs = read_certs(p);
    assert!(!certs.is_empty(), "{when}: {} is empty", p.display());
    let i = which(&certs[0], leaves)
        .unwrap_or_else(|| panic!("{when}: {} holds an unknown leaf", p.display()));
    assert_eq!(
        certs[1..].to_vec(),
        leaves[i].chain,
        "{when}: {} has the wrong intermediates",
        p.display()
    );
    i
}

/// Checks a key file (one whole private key of one of `leaves`) and
/// returns whose key it is.
#[track_caller]
fn check_key(p: &Path, leaves: &[&Leaf], when: &str) -> usize {
    let blocks = read_pem(p);
    assert_eq!(blocks.len(), 1, "{when}: {} holds one block", p.display());
    assert!(
        is_private_key_label(&blocks[0].0),
        "{when}: {}",
        p.display()
    );
    assert_eq!(
        mode_of(p) & 0o077,
        0,
        "{when}: {} readable by others",
        p.display()
    );
    let public = private_key_public_raw(&blocks[0].0, &blocks[0].1);
    leaves
        .iter()
        .position(|l| l.public_key_raw() == public)
        .unwrap_or_else(|| panic!("{when}: {} holds an unknown key", p.display()))
}

#[derive(Default, Debug)]
struct CertTally {
    runs: usize,
    killed_running: usize,
    finished_before_kill: usize,
    /// Kills after which the separate key and fullchain did not match.
    key_fullchain_split: usize,
    /// Kills after which cert/chain and fullchain held different leaves.
    cert_fullchain_split: usize,
    /// Kills after which the target files held the new certificate
    /// (combined of the `postfix` target).
    new_installed: usize,
    /// Rounds whose converging run left a target's last reload having
    /// seen older files than the ones installed.
    stale_reloads: BTreeMap<String, usize>,
    temp_max: usize,
}

#[test]
fn sync_killed_at_random_moments_keeps_pairs_and_converges() {
    let started = Instant::now();
    let env = Env::new();
    let ca = Ca::new("crash");
    // Two certificates for the host, both better than anything else
    // offered; the sources offer one at a time, alternately.
    let a = ca.issue(&LeafSpec::new(&[HOST, "smtp.example.com"]).days(60));
    let b = ca.issue(
        &LeafSpec::new(&[HOST, "smtp.example.com"])
            .kind(KeyKind::Rsa2048)
            .days(59),
    );
    let leaves = [&a, &b];
    // Extra work for every read: other names in acme.json, an older
    // certificate in Certbot's tree, an expired one in lego's.
    let fillers: Vec<AcmeEntry> = (0..30)
        .map(|i| {
            let name = format!("host{i}.example.net");
            AcmeEntry::new(&ca.issue(&LeafSpec::new(&[&name])), &name)
        })
        .collect();
    let certbot = Certbot::new(&env.path("letsencrypt"));
    certbot.add(
        HOST,
        &ca.issue(&LeafSpec::new(&[HOST, "smtp.example.com"]).days(20)),
    );
    let lego = env.path("lego");
    lego_add(&lego, HOST, &ca.issue(&LeafSpec::new(&[HOST]).expired()));
    let acme = env.path("traefik/acme.json");
    let offer = |leaf: &Leaf| {
        let mut entries = fillers.clone();
        entries.insert(12, AcmeEntry::new(leaf, HOST));
        write_json(&acme, &acme_v2(&[("le", Some(entries))]));
    };

    let logs = env.path("reloads");
    fs::create_dir_all(&logs).unwrap();
    let postfix = Target::new(&env, "postfix").domains(&[HOST, "smtp.example.com"]);
    let postfix = Target {
        fullchain: None,
        key: None,
        combined: Some(postfix.dir.join("chain.pem")),
        ..postfix
    };
    let dovecot = Target::new(&env, "dovecot");
    let all = Target::new(&env, "all").all_outputs();
    let reload_file = |t: &Target| t.combined.clone().or(t.fullchain.clone()).unwrap();
    let with_reload = |t: Target, sleep: &str| {
        let argv = hashing_reload(&reload_file(&t), &logs.join(&t.name), sleep);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        t.reload(&argv)
    };
    let postfix = with_reload(postfix, "0.1");
    let dovecot = with_reload(dovecot, "0.01");
    let all = with_reload(all, "0");
    let targets = [&postfix, &dovecot, &all];
    env.write_config(
        &[
            src_traefik(&acme),
            src_certbot(&certbot.root),
            src_lego(&lego),
        ],
        &targets,
    );

    // Every file of every target, checked; returns the leaf the combined
    // file of `postfix` holds.
    let check_all = |tally: &mut CertTally, when: &str| -> usize {
        let p = check_combined(postfix.combined.as_ref().unwrap(), &leaves, when);
        let fc = check_fullchain(dovecot.fullchain.as_ref().unwrap(), &leaves, when);
        let k = check_key(dovecot.key.as_ref().unwrap(), &leaves, when);
        let mut split = fc != k;
        let c = check_combined(all.combined.as_ref().unwrap(), &leaves, when);
        let fc2 = check_fullchain(all.fullchain.as_ref().unwrap(), &leaves, when);
        let k2 = check_key(all.key.as_ref().unwrap(), &leaves, when);
        split |= fc2 != k2;
        let certs = read_certs(all.cert.as_ref().unwrap());
        assert_eq!(certs.len(), 1, "{when}: leaf.pem holds one certificate");
        let leaf = which(&certs[0], &leaves).expect("leaf.pem holds a known leaf");
        assert_eq!(
            read_certs(all.chain.as_ref().unwrap()),
            vec![ca.inter_der.clone()],
            "{when}: intermediates.pem"
        );
        if split {
            tally.key_fullchain_split += 1;
        }
        if leaf != fc2 || c != fc2 {
            tally.cert_fullchain_split += 1;
        }
        // Nothing but the configured files and mxkeys' temporaries.
        let mut temps = 0;
        for t in &targets {
            let wanted: BTreeSet<PathBuf> = t.outputs().into_iter().collect();
            for e in fs::read_dir(&t.dir).unwrap() {
                let path = e.unwrap().path();
                if wanted.contains(&path) {
                    continue;
                }
                assert!(
                    is_temp_name(&path),
                    "{when}: unexpected file {}",
                    path.display()
                );
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    wanted.iter().any(|w| name.starts_with(&format!(
                        ".{}.mxkeys-",
                        w.file_name().unwrap().to_string_lossy()
                    ))),
                    "{when}: temporary file {name} names no output"
                );
                assert_temp_safe(&path);
                temps += 1;
            }
        }
        tally.temp_max = tally.temp_max.max(temps);
        // The state file is replaced atomically too: always JSON.
        if let Ok(bytes) = fs::read(env.state.join("state.json")) {
            serde_json::from_slice::<Value>(&bytes)
                .unwrap_or_else(|e| panic!("{when}: state.json is not JSON: {e}"));
        }
        p
    };

    // The run that is not killed: exit 0, every file holds `want`.
    let converge = |tally: &mut CertTally, want: &Leaf, when: &str| {
        let r = env.sync();
        r.assert_code(0);
        let i = check_all(tally, when);
        assert_eq!(
            leaves[i].fp(),
            want.fp(),
            "{when}: postfix holds the old certificate"
        );
        dovecot.assert_installed(want);
        all.assert_installed(want);
        assert_eq!(
            check_combined(all.combined.as_ref().unwrap(), &leaves, when),
            i
        );
        assert_eq!(
            read_certs(all.cert.as_ref().unwrap()),
            vec![want.der.clone()]
        );
        // Did each service's last reload see the files as they are now?
        wait_reloads_idle(&logs);
        // A reload owed by a killed run is paid by the next one.
        for t in &targets {
            let seen = last_line(&logs.join(&t.name));
            if seen.as_deref() != Some(sha_file(&reload_file(t)).as_str()) {
                *tally.stale_reloads.entry(t.name.clone()).or_default() += 1;
            }
            assert_eq!(
                seen.as_deref(),
                Some(sha_file(&reload_file(t)).as_str()),
                "{when}: target {}'s last reload saw older files than it holds",
                t.name
            );
        }
    };

    // Measure an uninterrupted run with real work (the certificate changes).
    let mut tally = CertTally::default();
    let mut durations = Vec::new();
    for (i, leaf) in [&a, &b, &a, &b, &a].into_iter().enumerate() {
        offer(leaf);
        let t0 = Instant::now();
        let r = env.sync();
        durations.push(t0.elapsed());
        r.assert_code(0);
        converge(&mut tally, leaf, &format!("warm-up run {i}"));
    }
    tally.stale_reloads.clear();
    durations.sort();
    let one_run = durations[durations.len() / 2];
    // A bit longer than one run: most kills land inside it, some after.
    let window = one_run.mul_f64(1.3) + StdDuration::from_millis(5);

    let kills: usize = 160;
    let mut rng = Rng::new("sync");
    let mut current = &a;
    for n in 0..kills {
        let next = if current.der == a.der { &b } else { &a };
        offer(next);
        let delay = rng.delay(window);
        tally.runs += 1;
        if kill_after(env.cmd(&["sync"]), delay) {
            tally.killed_running += 1;
        } else {
            tally.finished_before_kill += 1;
        }
        let when = format!("after kill {n} at {delay:?}");
        if leaves[check_all(&mut tally, &when)].der == next.der {
            tally.new_installed += 1;
        }
        // Every few rounds, a second kill before the recovery run.
        if n % 5 == 4 {
            let delay = rng.delay(window);
            tally.runs += 1;
            if kill_after(env.cmd(&["sync"]), delay) {
                tally.killed_running += 1;
            } else {
                tally.finished_before_kill += 1;
            }
            check_all(&mut tally, &format!("after second kill {n} at {delay:?}"));
        }
        converge(&mut tally, next, &format!("run after kill {n}"));
        current = next;
    }
    // Leftover temporary files are not cleaned by later runs; they are
    // never read (the runs above converged with them present).
    let leftovers: Vec<PathBuf> = targets.iter().flat_map(|t| temp_files(&t.dir)).collect();
    for p in &leftovers {
        assert_temp_safe(p);
    }
    eprintln!(
        "sync crash test: one uninterrupted run {one_run:?} (median of {}), kill window 0..{window:?}\n\
         kills: {} ({} while running, {} had already exited)\n\
         after a kill: new certificate already in the combined file {} times; \
         separate key and fullchain from different certificates {} times; \
         cert/chain vs fullchain differing {} times\n\
         converging runs whose last reload saw older files than installed: {:?} (of {kills} rounds)\n\
         leftover temporary files: at most {} at once, {} at the end (not cleaned up)\n\
         time: {:?}",
        durations.len(),
        tally.runs,
        tally.killed_running,
        tally.finished_before_kill,
        tally.new_installed,
        tally.key_fullchain_split,
        tally.cert_fullchain_split,
        tally.stale_reloads,
        tally.temp_max,
        leftovers.len(),
        started.elapsed(),
    );
    // The delays did reach into the runs.
    assert!(tally.killed_running > 0, "{tally:?}");
}

// ---------------------------------------------------------------------------
// DKIM
// ---------------------------------------------------------------------------

const DOMAINS: [&str; 2] = ["example.test", "delegated.test"];
const ALGORITHMS: [&str; 2] = ["rsa-2048", "ed25519"];

/// The DKIM record value publishing the key in a PEM file.
fn record_of_pem(pem: &str) -> String {
    use rcgen::PublicKeyData as _;
    let kp = rcgen::KeyPair::from_pem(pem).expect("a DKIM key file holds a private key");
    if kp.algorithm() == &rcgen::PKCS_ED25519 {
        format!("v=DKIM1; k=ed25519; p={}", B64.encode(kp.public_key_raw()))
    } else {
        format!(
            "v=DKIM1; k=rsa; p={}",
            B64.encode(kp.subject_public_key_info())
        )
    }
}

fn revoked_of(algorithm: &str) -> String {
    if algorithm == "ed25519" {
        "v=DKIM1; k=ed25519; p=".into()
    } else {
        "v=DKIM1; k=rsa; p=".into()
    }
}

/// `(id, domain, selector, file)` of every KeyTable line.
fn key_table(path: &Path) -> Vec<(String, String, String, PathBuf)> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (id, rest) = l.split_once(' ').expect("KeyTable: id and value");
            let mut parts = rest.splitn(3, ':');
            let domain = parts.next().unwrap().to_owned();
            let selector = parts.next().expect("KeyTable selector").to_owned();
            let file = PathBuf::from(parts.next().expect("KeyTable key file"));
            (id.to_owned(), domain, selector, file)
        })
        .collect()
}

/// The key ids the SigningTable refers to.
fn signing_table(path: &Path) -> Vec<String> {
    let Ok(text) = fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .expect("SigningTable id")
                .to_owned()
        })
        .collect()
}

struct DkimEnv {
    bind: bind::Bind,
    root: tempfile::TempDir,
    config: PathBuf,
    state: PathBuf,
    key_dir: PathBuf,
    signer_dir: PathBuf,
    reload_log: PathBuf,
}

impl DkimEnv {
    /// BIND and a fresh root (mode 0700, named `prefix...`) holding the
    /// config, state, key directory, OpenDKIM tables and the reload log;
    /// `None` (skip) without BIND.
    fn start(prefix: &str) -> Option<DkimEnv> {
        let bind = bind::Bind::start()?;
        let root = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let logs = root.path().join("reloads");
        fs::create_dir_all(&logs).unwrap();
        let env = DkimEnv {
            config: root.path().join("mxkeys.toml"),
            state: root.path().join("state"),
            key_dir: root.path().join("keys"),
            signer_dir: root.path().join("opendkim"),
            reload_log: logs.join("opendkim"),
            bind,
            root,
        };
        fs::set_permissions(env.root.path(), fs::Permissions::from_mode(0o700)).unwrap();
        Some(env)
    }

    fn write_config(&self, drain: &str, revoke_hold: &str) {
        let argv = hashing_reload(&self.signer_dir.join("KeyTable"), &self.reload_log, "0");
        self.write_config_with(&ALGORITHMS, "0s", drain, revoke_hold, &argv, "");
    }

    fn write_config_with(
        &self,
        algorithms: &[&str],
        lead: &str,
        drain: &str,
        revoke_hold: &str,
        argv: &[String],
        extra: &str,
    ) {
        let addr = self.bind.addr();
        let text = format!(
            "hostname = \"mail.example.test\"\nstate_dir = {state}\n\n\
             [dns.bind]\ntype = \"rfc2136\"\nserver = \"{addr}\"\ntsig_name = \"{key}\"\n\
             tsig_secret_file = {secret}\nnameservers = [\"{addr}\"]\n\
             propagation_interval = \"100ms\"\npropagation_timeout = \"10s\"\n\n\
             [dkim]\ndomains = {domains}\nalgorithms = {algs}\nkey_dir = {key_dir}\n\
             dns = \"bind\"\nttl = 60\nlead = \"{lead}\"\ndrain = \"{drain}\"\n\
             revoke_hold = \"{revoke_hold}\"\nsigner = \"opendkim\"\nsigner_dir = {signer_dir}\n\
             reload = {reload}\n{extra}",
            state = qp(&self.state),
            key = bind::KEY_NAME,
            secret = qp(&self.bind.dir().join("tsig.key")),
            domains = q_list(&DOMAINS),
            algs = q_list(algorithms),
            key_dir = qp(&self.key_dir),
            signer_dir = qp(&self.signer_dir),
            reload = q_list(&argv.iter().map(String::as_str).collect::<Vec<_>>()),
        );
        write(&self.config, text);
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("MXKEYS_CONFIG").env("NO_COLOR", "1");
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run::from_output(
            format!("mxkeys {}", args.join(" ")),
            run_with_timeout(self.cmd(args)),
        )
    }

    fn book(&self) -> Value {
        match fs::read(self.state.join("dkim/state.json")) {
            Ok(b) => serde_json::from_slice(&b).expect("dkim/state.json is JSON"),
            Err(_) => serde_json::json!({"keys": [], "used_selectors": {}}),
        }
    }

    /// The TXT values at `name`.
    fn txt(&self, name: &str) -> Vec<String> {
        self.txt_many(&[name.to_owned()]).remove(name).unwrap()
    }

    /// The TXT values at each of `names`, asked in one `dig` run (each
    /// record's strings joined, sorted).
    fn txt_many(&self, names: &[String]) -> BTreeMap<String, Vec<String>> {
        let unique: BTreeSet<&String> = names.iter().collect();
        let mut args = vec!["+noall", "+answer"];
        for n in unique {
            args.push("TXT");
            args.push(n);
        }
        let out = self.bind.dig(&args);
        let mut found: BTreeMap<String, Vec<String>> =
            names.iter().map(|n| (n.clone(), Vec::new())).collect();
        for line in out
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        {
            let owner = line
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches('.');
            let value: String = line
                .split('"')
                .enumerate()
                .filter(|(i, _)| i % 2 == 1)
                .map(|(_, s)| s)
                .collect();
            if let Some(v) = found.get_mut(owner) {
                v.push(value);
            }
        }
        for v in found.values_mut() {
            v.sort();
        }
        found
    }
}

#[derive(Default, Debug)]
struct DkimTally {
    runs: usize,
    killed_running: usize,
    finished_before_kill: usize,
    /// `dkim revoke` runs killed before they saved their request (run
    /// again, as an admin would).
    killed_before_recording: usize,
    /// Kills after which SigningTable named an id KeyTable did not hold
    /// (or the reverse).
    tables_split: usize,
    /// Converging runs after which the signer's last reload saw an older
    /// KeyTable than the one installed.
    stale_reloads: usize,
    temp_max: usize,
    keys_max: usize,
    /// Converged states with two active keys for one domain and algorithm.
    several_active: usize,
}

/// The invariants that must hold at any moment.
fn check_dkim(env: &DkimEnv, tally: &mut DkimTally, when: &str) {
    let book = env.book();
    let keys = book["keys"].as_array().expect("keys");
    tally.keys_max = tally.keys_max.max(keys.len());
    let kt = key_table(&env.signer_dir.join("KeyTable"));
    let mut names: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{}._domainkey.{}",
                k["selector"].as_str().unwrap(),
                k["domain"].as_str().unwrap()
            )
        })
        .collect();
    names.extend(kt.iter().map(|(id, ..)| id.clone()));
    let dns = env.txt_many(&names);
    let mut seen = BTreeSet::new();
    for k in keys {
        let domain = k["domain"].as_str().unwrap();
        let selector = k["selector"].as_str().unwrap();
        assert!(
            seen.insert((domain.to_owned(), selector.to_owned())),
            "{when}: selector {selector} of {domain} appears twice in the state"
        );
        assert!(
            book["used_selectors"][domain]
                .as_array()
                .is_some_and(|u| u.iter().any(|s| s == selector)),
            "{when}: {selector} of {domain} is not recorded as used"
        );
        let name = format!("{selector}._domainkey.{domain}");
        let record = k["record"].as_str().unwrap().to_owned();
        let revoked = revoked_of(k["algorithm"].as_str().unwrap());
        let got = dns[&name].clone();
        let ok = match k["state"].as_str().unwrap() {
            "generated" => true,
            "published" | "active" => got == [record.clone()],
            // Killed between publishing p= and saving `revoked`.
            "draining" => got == [record.clone()] || got == [revoked.clone()],
            // Killed between deleting the record and forgetting the key.
            "revoked" => got == [revoked.clone()] || got.is_empty(),
            s => panic!("{when}: unknown state {s}"),
        };
        assert!(
            ok,
            "{when}: {name} ({}) is published as {got:?}",
            k["state"]
        );
    }
    for (id, domain, selector, file) in &kt {
        assert_eq!(id, &format!("{selector}._domainkey.{domain}"), "{when}");
        let pem = fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("{when}: KeyTable names {}: {e}", file.display()));
        assert_eq!(
            mode_of(file) & 0o077,
            0,
            "{when}: {} readable by others",
            file.display()
        );
        let record = record_of_pem(&pem);
        assert_eq!(
            dns[id],
            vec![record.clone()],
            "{when}: the signer signs with {id}, whose record is not exactly its key's"
        );
        let k = keys
            .iter()
            .find(|k| k["domain"] == domain.as_str() && k["selector"] == selector.as_str())
            .unwrap_or_else(|| panic!("{when}: KeyTable names {id}, unknown to the state"));
        assert_eq!(k["record"], record.as_str(), "{when}: {id}");
    }
    let ids: BTreeSet<&str> = kt.iter().map(|(id, ..)| id.as_str()).collect();
    let st: BTreeSet<String> = signing_table(&env.signer_dir.join("SigningTable"))
        .into_iter()
        .collect();
    if st.iter().map(String::as_str).collect::<BTreeSet<_>>() != ids {
        tally.tables_split += 1;
    }
    let mut temps = temp_files(&env.signer_dir);
    temps.extend(temp_files(&env.state.join("dkim")));
    for d in DOMAINS {
        temps.extend(temp_files(&env.key_dir.join(d)));
    }
    for t in &temps {
        assert_temp_safe(t);
    }
    tally.temp_max = tally.temp_max.max(temps.len());
}

/// After a run that was not killed: one active key per domain and
/// algorithm, published exactly, and the signer tables naming exactly
/// those. With `drained_gone`, nothing else is left (drain and revoke_hold
/// are 0s): no other key in the state, no other key file.
fn check_converged(env: &DkimEnv, tally: &mut DkimTally, drained_gone: bool, when: &str) {
    check_dkim(env, tally, when);
    let book = env.book();
    let keys = book["keys"].as_array().unwrap();
    let mut active = BTreeSet::new();
    for d in DOMAINS {
        for a in ALGORITHMS {
            let group: Vec<&Value> = keys
                .iter()
                .filter(|k| k["domain"] == d && k["algorithm"] == a && k["state"] == "active")
                .collect();
            assert!(
                !group.is_empty(),
                "{when}: no active {a} key for {d}: {keys:?}"
            );
            // Exactly one signing key per domain and algorithm, also when a
            // successor was activated in the same second as its predecessor.
            if group.len() > 1 {
                tally.several_active += 1;
            }
            assert_eq!(
                group.len(),
                1,
                "{when}: several active {a} keys for {d}: {keys:?}"
            );
            for k in group {
                let id = format!("{}._domainkey.{d}", k["selector"].as_str().unwrap());
                assert_eq!(
                    env.txt(&id),
                    vec![k["record"].as_str().unwrap().to_owned()],
                    "{when}"
                );
                active.insert(id);
            }
        }
        // Generated or published successors are finished too.
        assert!(
            !keys.iter().any(|k| k["domain"] == d
                && matches!(k["state"].as_str(), Some("generated" | "published"))),
            "{when}: a successor of {d} was left unfinished: {keys:?}"
        );
    }
    let kt: BTreeSet<String> = key_table(&env.signer_dir.join("KeyTable"))
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(kt, active, "{when}: KeyTable");
    let st: BTreeSet<String> = signing_table(&env.signer_dir.join("SigningTable"))
        .into_iter()
        .collect();
    assert_eq!(st, active, "{when}: SigningTable");
    if drained_gone {
        assert_eq!(keys.len(), active.len(), "{when}: keys left: {keys:?}");
        let files: BTreeSet<PathBuf> = keys
            .iter()
            .map(|k| PathBuf::from(k["file"].as_str().unwrap()))
            .collect();
        for d in DOMAINS {
            for e in fs::read_dir(env.key_dir.join(d)).unwrap() {
                let p = e.unwrap().path();
                if is_temp_name(&p) {
                    continue;
                }
                assert!(
                    files.contains(&p),
                    "{when}: key file {} left behind",
                    p.display()
                );
            }
        }
    } else {
        for k in keys.iter().filter(|k| k["state"] != "active") {
            assert_eq!(k["state"], "draining", "{when}: {k:?}");
        }
    }
    wait_reloads_idle(env.reload_log.parent().unwrap());
    // The signer's last reload saw the tables as they are: a reload owed by
    // a killed run is paid by the next one.
    if last_line(&env.reload_log).as_deref()
        != Some(sha_file(&env.signer_dir.join("KeyTable")).as_str())
    {
        tally.stale_reloads += 1;
    }
    assert_eq!(
        tally.stale_reloads, 0,
        "{when}: the signer was not reloaded after its tables changed"
    );
}

#[test]
fn dkim_rotate_killed_at_random_moments_keeps_signer_and_dns_consistent() {
    let started = Instant::now();
    let Some(env) = DkimEnv::start("mxkeys-crash-dkim-") else {
        return;
    };
    let mut tally = DkimTally::default();

    // Phases: (drain, revoke_hold, kills).
    let phases = [("0s", "0s", 30usize), ("1h", "1h", 22usize)];
    let mut rng = Rng::new("dkim");
    let mut summary = Vec::new();
    for (drain, hold, kills) in phases {
        env.write_config(drain, hold);
        let gone = drain == "0s";
        // First keys, then a few forced rotations timed uninterrupted.
        env.run(&["dkim", "rotate"]).assert_code(0);
        check_converged(
            &env,
            &mut tally,
            gone,
            &format!("first pass (drain {drain})"),
        );
        let mut durations = Vec::new();
        for i in 0..3 {
            let t0 = Instant::now();
            env.run(&["dkim", "rotate", "--force"]).assert_code(0);
            durations.push(t0.elapsed());
            check_converged(
                &env,
                &mut tally,
                gone,
                &format!("forced run {i} (drain {drain})"),
            );
        }
        tally.stale_reloads = 0;
        durations.sort();
        let one_run = durations[1];
        let window = one_run.mul_f64(1.3) + StdDuration::from_millis(5);
        for n in 0..kills {
            let delay = rng.delay(window);
            tally.runs += 1;
            if kill_after(env.cmd(&["dkim", "rotate", "--force"]), delay) {
                tally.killed_running += 1;
            } else {
                tally.finished_before_kill += 1;
            }
            check_dkim(
                &env,
                &mut tally,
                &format!("drain {drain}: after kill {n} at {delay:?}"),
            );
            let r = env.run(&["dkim", "rotate"]);
            r.assert_code(0);
            check_converged(
                &env,
                &mut tally,
                gone,
                &format!("drain {drain}: run after kill {n}"),
            );
        }
        summary.push(format!(
            "drain/revoke_hold {drain}: {kills} kills, one uninterrupted forced run {one_run:?}, window 0..{window:?}"
        ));
    }
    eprintln!(
        "dkim crash test: {}\n\
         kills: {} ({} while running, {} had already exited)\n\
         after a kill: SigningTable and KeyTable naming different keys {} times\n\
         converging runs whose last signer reload saw an older KeyTable: {}\n\
         converged states with two active keys of one algorithm (same-second activation): {}\n\
         leftover temporary files: at most {}; keys in state at most {}\n\
         time: {:?}",
        summary.join("; "),
        tally.runs,
        tally.killed_running,
        tally.finished_before_kill,
        tally.tables_split,
        tally.stale_reloads,
        tally.several_active,
        tally.temp_max,
        tally.keys_max,
        started.elapsed(),
    );
    assert!(tally.killed_running > 0, "{tally:?}");
}

// ---------------------------------------------------------------------------
// DKIM: revocations and algorithm changes killed at random moments
// ---------------------------------------------------------------------------

/// A reload command that copies the KeyTable, as the signer would load it,
/// to `loaded` (atomically: a copy, then a rename).
fn loading_reload(env: &DkimEnv, loaded: &Path) -> Vec<String> {
    let script = format!(
        "cp {kt} {loaded}.tmp.$$ && mv {loaded}.tmp.$$ {loaded}",
        kt = sh_quote(env.signer_dir.join("KeyTable").to_str().unwrap()),
        loaded = sh_quote(loaded.to_str().unwrap()),
    );
    vec!["sh".into(), "-c".into(), script]
}

/// The invariants of a revocation and an algorithm change, at any moment:
/// besides [`check_dkim`] (every key the KeyTable names has exactly its
/// record: never a `p=` record for a key in the signer's tables), no key
/// whose record is `p=` is in what the signer last loaded, and each
/// domain keeps a key of every family in `families` (is RSA) in the tables
/// and in what the signer loaded.
fn check_nogap(env: &DkimEnv, tally: &mut DkimTally, loaded: &Path, families: &[bool], when: &str) {
    check_dkim(env, tally, when);
    let book = env.book();
    let keys = book["keys"].as_array().unwrap();
    let family = |domain: &str, selector: &str| {
        keys.iter()
            .find(|k| k["domain"] == domain && k["selector"] == selector)
            .map(|k| k["algorithm"].as_str().unwrap() != "ed25519")
    };
    let tables = key_table(&env.signer_dir.join("KeyTable"));
    let in_loaded = key_table(loaded);
    let names: Vec<String> = in_loaded.iter().map(|(id, ..)| id.clone()).collect();
    let dns = env.txt_many(&names);
    for (id, ..) in &in_loaded {
        assert!(
            !dns[id].is_empty() && !dns[id].iter().any(|v| v.ends_with("p=")),
            "{when}: the signer still signs with {id}, whose record is {:?}",
            dns[id]
        );
    }
    for d in DOMAINS {
        for fam in families {
            for (what, table) in [("tables", &tables), ("loaded signer", &in_loaded)] {
                assert!(
                    table
                        .iter()
                        .any(|(_, dom, sel, _)| dom == d && family(dom, sel) == Some(*fam)),
                    "{when}: no {} key for {d} in the {what}: {table:?}\n{keys:?}",
                    if *fam { "RSA" } else { "Ed25519" }
                );
            }
        }
    }
}

#[test]
fn dkim_revoke_and_algorithm_changes_killed_at_random_moments_never_leave_a_gap() {
    let started = Instant::now();
    let Some(env) = DkimEnv::start("mxkeys-crash-nogap-") else {
        return;
    };
    let loaded = env.root.path().join("loaded-KeyTable");
    let argv = loading_reload(&env, &loaded);
    let mut tally = DkimTally::default();
    let mut rng = Rng::new("dkim nogap");
    let settle = "revoke_settle = \"1s\"\n";

    // 1. Algorithm changes (lead, drain, revoke_hold 0s: every step of the
    // change runs in one pass), each killed at a random moment.
    let configs: [&[&str]; 4] = [
        &["rsa-2048", "ed25519"],
        &["rsa-3072", "ed25519"],
        &["rsa-3072"],
        &["rsa-2048", "ed25519"],
    ];
    env.write_config_with(configs[0], "0s", "0s", "0s", &argv, settle);
    env.run(&["dkim", "rotate"]).assert_code(0);
    check_nogap(&env, &mut tally, &loaded, &[true, false], "first pass");
    let mut changes = 0;
    // Each change's uninterrupted duration (round 0) scales its kill window.
    let mut took = [StdDuration::ZERO; 4];
    for round in 0..5 {
        for (i, algs) in configs.iter().enumerate().skip(1) {
            // Families that must sign throughout: RSA always; Ed25519 when
            // kept (removing it is the user's choice; when added, it signs
            // from its first activation).
            let before = configs[i - 1].contains(&"ed25519");
            let kept: Vec<bool> = if before && algs.contains(&"ed25519") {
                vec![true, false]
            } else {
                vec![true]
            };
            env.write_config_with(algs, "0s", "0s", "0s", &argv, settle);
            let when = if round == 0 {
                let t0 = Instant::now();
                env.run(&["dkim", "rotate"]).assert_code(0);
                took[i] = t0.elapsed();
                format!("round {round}: {algs:?}")
            } else {
                let delay = rng.delay(took[i].mul_f64(1.3));
                tally.runs += 1;
                if kill_after(env.cmd(&["dkim", "rotate"]), delay) {
                    tally.killed_running += 1;
                } else {
                    tally.finished_before_kill += 1;
                }
                let when = format!("round {round}: {algs:?} killed at {delay:?}");
                check_nogap(&env, &mut tally, &loaded, &kept, &when);
                env.run(&["dkim", "rotate"]).assert_code(0);
                when
            };
            let all: Vec<bool> = if algs.contains(&"ed25519") {
                vec![true, false]
            } else {
                vec![true]
            };
            check_nogap(
                &env,
                &mut tally,
                &loaded,
                &all,
                &format!("{when}, then run"),
            );
            // The configured RSA size signs.
            let book = env.book();
            let rsa = algs[0];
            for d in DOMAINS {
                assert!(
                    book["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|k| k["domain"] == d
                            && k["algorithm"] == rsa
                            && k["state"] == "active"),
                    "{when}: no active {rsa} key for {d}: {book}"
                );
            }
            changes += 1;
        }
    }

    // 2. Revocations: each round a forced rotation (lead 1h) leaves a
    // verified successor per group; `dkim revoke` of example.test's
    // active RSA key is killed at a random moment; the next pass
    // publishes p= only once the signer was reloaded without it.
    let algs = ["rsa-2048", "ed25519"];
    env.write_config_with(&algs, "1h", "1h", "1h", &argv, settle);
    let mut revokes = 0;
    let mut durations = Vec::new();
    for round in 0..14 {
        env.run(&["dkim", "rotate", "--force"]).assert_code(0);
        let book = env.book();
        let active = book["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| {
                k["domain"] == DOMAINS[0] && k["algorithm"] == "rsa-2048" && k["state"] == "active"
            })
            .unwrap_or_else(|| panic!("round {round}: no active RSA key: {book}"))
            .clone();
        let selector = active["selector"].as_str().unwrap().to_owned();
        let name = format!("{selector}._domainkey.{}", DOMAINS[0]);
        let args = [
            "dkim",
            "revoke",
            "--domain",
            DOMAINS[0],
            "--selector",
            &selector,
        ];
        let when = format!("revoke round {round}");
        if round < 2 {
            // Uninterrupted: measures the window.
            let t0 = Instant::now();
            env.run(&args).assert_code(0);
            durations.push(t0.elapsed());
        } else {
            let window = durations.iter().max().unwrap().mul_f64(1.3);
            let delay = rng.delay(window);
            tally.runs += 1;
            if kill_after(env.cmd(&args), delay) {
                tally.killed_running += 1;
            } else {
                tally.finished_before_kill += 1;
            }
            let when = format!("{when}: killed at {delay:?}");
            check_nogap(&env, &mut tally, &loaded, &[true, false], &when);
            // Killed before it saved its request (the key still active and
            // nothing asked), the command did nothing and reported nothing:
            // the admin runs it again.
            let book = env.book();
            let asked = book["revoke_now"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == name.as_str()));
            let still_active = book["keys"].as_array().unwrap().iter().any(|k| {
                k["selector"] == selector.as_str()
                    && k["domain"] == DOMAINS[0]
                    && k["state"] == "active"
            });
            if still_active && !asked {
                tally.killed_before_recording += 1;
                env.run(&args).assert_code(0);
            }
            env.run(&["dkim", "rotate"]).assert_code(0);
        }
        check_nogap(
            &env,
            &mut tally,
            &loaded,
            &[true, false],
            &format!("{when}, then run"),
        );
        assert_eq!(
            env.txt(&name),
            vec!["v=DKIM1; k=rsa; p=".to_owned()],
            "{when}: the revocation was finished by the next pass"
        );
        assert!(
            env.book()["revoke_now"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "{when}: a revocation is still owed"
        );
        revokes += 1;
    }
    eprintln!(
        "dkim nogap crash test: {changes} algorithm changes, {revokes} revocations; \
         kills: {} ({} while running, {} had already exited, {} revokes before recording); \
         changes took {took:?}, \
         revoke runs {durations:?}; \
         time: {:?}",
        tally.runs,
        tally.killed_running,
        tally.finished_before_kill,
        tally.killed_before_recording,
        started.elapsed(),
    );
    assert!(tally.killed_running > 0, "{tally:?}");
}
