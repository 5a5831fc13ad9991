//! The shipped systemd units, exactly as shipped, under a real systemd.
//!
//! `systemd-analyze verify` accepts them and the daemon's sandbox keeps its
//! exposure score low (both on a temporary copy whose ExecStart names the
//! binary under test: verify checks that the executable exists).
//!
//! What the sandbox really allows only shows at run time, so the other
//! tests boot systemd 252 as PID 1 in systemd-nspawn on a minimal Debian
//! root (the test-support crate's `nspawn` module) with the unit files from systemd/ bound
//! read-only into /etc/systemd/system and the binary under test bound at
//! the units' ExecStart path, /usr/local/bin/mxkeys; the configuration
//! (/etc/mxkeys), the sources and the target directories the units list in
//! ReadWritePaths are host directories of the test. Every test boots its
//! own guest and asserts only on it. BIND, when a test needs DNS, runs on
//! a host loopback port (the guest shares the host's network).

use mxkeys_testsupport as common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::bind::{Bind as Dns, KEY_NAME};
use common::nspawn;
use common::servers::{PEBBLE, Pebble, require_programs};
use common::{Ca, HOST, Leaf, LeafSpec, q, read_pem, sha256_hex, src_files, write};
use nspawn::{Bind, Guest};

fn systemd_analyze() -> Option<PathBuf> {
    let found = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing: CI must install the `systemd` package (bash .ci/test does)"
        );
        eprintln!("SKIPPED: systemd-analyze not found; install it with: apt-get install systemd");
    }
    found
}

fn shipped(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

const UNITS: [&str; 3] = [
    "mxkeys.service",
    "mxkeys-renew.service",
    "mxkeys-renew.timer",
];

/// Copies the units into a temporary directory with ExecStart pointing at
/// the binary under test.
fn units() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS {
        let text = std::fs::read_to_string(shipped(name)).unwrap();
        let text = text.replace("/usr/local/bin/mxkeys", env!("CARGO_BIN_EXE_mxkeys"));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = units();
    let out = Command::new(analyze)
        .current_dir(dir.path())
        .args(["verify"])
        .args(UNITS)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // verify reports unknown or misspelled settings as warnings, not failures.
    let ours: Vec<&str> = stderr.lines().filter(|l| l.contains("mxkeys")).collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complained:\n{}",
        ours.join("\n")
    );
}

#[test]
fn daemon_exposure_stays_low() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let dir = units();
    for unit in ["mxkeys.service", "mxkeys-renew.service"] {
        let out = Command::new(&analyze)
            .current_dir(dir.path())
            .args(["security", "--offline=true", "--no-pager", unit])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let score: f64 = text
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
        // Root, network and chown are the job; everything else is locked down.
        assert!(
            score <= 2.2,
            "{unit}: exposure {score} (README reports 2.2)\n{text}"
        );
    }
}

// ---------------------------------------------------------------------------
// Under a real systemd
// ---------------------------------------------------------------------------

/// Where the guest sees the test's source files.
const SRC: &str = "/srv/mxkeys-test/src";
/// A target directory the units list in ReadWritePaths.
const TLS: &str = "/etc/postfix/tls";

/// The host side of one guest: the directories bound into it.
struct Host {
    dir: tempfile::TempDir,
    /// Host directory seen as /etc/mxkeys.
    etc: PathBuf,
    /// Host directory seen as [`TLS`].
    tls: PathBuf,
}

impl Host {
    /// An empty configuration directory, sources directory and [`TLS`].
    fn new() -> Host {
        let dir = tempfile::Builder::new()
            .prefix("mxkeys-systemd-")
            .tempdir()
            .unwrap();
        let etc = dir.path().join("etc-mxkeys");
        let tls = dir.path().join("tls");
        for d in [&etc, &tls] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        Host { dir, etc, tls }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes /etc/mxkeys/mxkeys.toml: `leaf` as a files source, then
    /// `rest` (targets, other tables).
    fn configure(&self, leaf: &Leaf, rest: &str) {
        write(&self.path("src/fullchain.pem"), leaf.fullchain_pem());
        write(&self.path("src/privkey.pem"), leaf.key_pem());
        let text = format!(
            "hostname = {}\nstate_dir = \"/var/lib/mxkeys\"\n\n{}\n{rest}",
            q(HOST),
            src_files(
                &Path::new(SRC).join("fullchain.pem"),
                &Path::new(SRC).join("privkey.pem"),
                None
            ),
        );
        self.configure_raw(&text);
    }

    /// Writes /etc/mxkeys/mxkeys.toml as is.
    fn configure_raw(&self, text: &str) {
        write(&self.etc.join("mxkeys.toml"), text);
    }

    /// The shipped units and the binary, the configuration directory, the
    /// sources and [`TLS`], plus `more`.
    fn binds(&self, more: Vec<Bind>) -> Vec<Bind> {
        let mut binds = vec![
            Bind::ro(env!("CARGO_BIN_EXE_mxkeys"), "/usr/local/bin/mxkeys"),
            Bind::rw(&self.etc, "/etc/mxkeys"),
            Bind::ro(self.path("src"), SRC),
            Bind::rw(&self.tls, TLS),
        ];
        for name in UNITS {
            binds.push(Bind::ro(
                shipped(name),
                &format!("/etc/systemd/system/{name}"),
            ));
        }
        binds.extend(more);
        binds
    }

    fn boot(&self, test: &str, more: Vec<Bind>) -> Option<Guest> {
        if !nspawn::available(test) {
            return None;
        }
        Some(Guest::boot(test_tag(test), &self.binds(more)))
    }
}

/// A short machine name for a test (nspawn allows 64 characters).
fn test_tag(test: &str) -> &str {
    &test[..test.len().min(24)]
}

/// The Postfix-style target of the issue: one combined file in [`TLS`],
/// given to another owner and group, and a reload that leaves a trace.
fn postfix_target() -> String {
    format!(
        "[[target]]\n\
         name = \"postfix\"\n\
         combined = \"{TLS}/chain.pem\"\n\
         owner = \"daemon\"\n\
         group = \"mail\"\n\
         mode = \"0640\"\n\
         reload = [\"/bin/sh\", \"-c\", \"echo reloaded >> {TLS}/reloads.log\"]\n"
    )
}

/// How many times the target's reload ran.
fn reloads(host: &Host) -> usize {
    std::fs::read_to_string(host.tls.join("reloads.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// `path` (host side) holds `leaf`'s key, then `leaf`, then its chain.
#[track_caller]
fn assert_combined(path: &Path, leaf: &Leaf) {
    let blocks = read_pem(path);
    assert!(
        common::is_private_key_label(&blocks[0].0),
        "{} starts with {}",
        path.display(),
        blocks[0].0
    );
    assert_eq!(
        common::private_key_public_raw(&blocks[0].0, &blocks[0].1),
        leaf.public_key_raw(),
        "{}: the key is not the leaf's",
        path.display()
    );
    assert_eq!(
        sha256_hex(&blocks[1].1),
        leaf.fp(),
        "{}: another leaf",
        path.display()
    );
}

/// Polls `probe` every 100 ms for up to `limit`; panics naming `what`
/// and showing the guest's journal.
#[track_caller]
fn wait_until(guest: &Guest, what: &str, limit: Duration, mut probe: impl FnMut() -> bool) {
    let start = Instant::now();
    while !probe() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n--- journal ---\n{}",
            guest.journal(None)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn leaf() -> Leaf {
    Ca::new("systemd").issue(&LeafSpec::new(&[HOST]))
}

/// A guest whose mxkeys unit was started with a [`leaf`] and the
/// [`postfix_target`]; `None` when the guest cannot boot here.
fn started_postfix_unit(test: &str) -> Option<(Leaf, Host, Guest)> {
    let leaf = leaf();
    let host = Host::new();
    host.configure(&leaf, &postfix_target());
    let guest = host.boot(test, vec![])?;
    guest.ok(&["systemctl", "start", "mxkeys"]);
    Some((leaf, host, guest))
}

/// `systemctl start mxkeys` returns once the daemon sent READY=1, which it
/// does after its first reconcile: by then the target is written, with
/// its owner, group and mode, under the shipped syscall filter, and its
/// reload has run. The issue's case: `~@privileged` denied fchown and the
/// unit still started.
#[test]
fn started_daemon_unit_has_written_an_owned_target_and_run_its_reload() {
    let Some((leaf, host, guest)) =
        started_postfix_unit("started_daemon_unit_has_written_an_owned_target_and_run_its_reload")
    else {
        return;
    };
    // No wait: READY=1 came after the first reconcile.
    let journal = guest.journal(Some("mxkeys"));
    assert!(
        host.tls.join("chain.pem").exists(),
        "the unit is started but the target is not written:\n{journal}"
    );
    assert_eq!(
        guest.stat("%U:%G:%a", &format!("{TLS}/chain.pem")),
        "daemon:mail:640"
    );
    assert_combined(&host.tls.join("chain.pem"), &leaf);
    assert_eq!(reloads(&host), 1, "the reload ran once:\n{journal}");
    assert!(!journal.contains("ERROR"), "errors in:\n{journal}");
    assert_eq!(guest.property("mxkeys", "ActiveState"), "active");
    assert_eq!(guest.property("mxkeys", "SubState"), "running");
    assert_eq!(guest.property("mxkeys", "NRestarts"), "0");
}

/// `systemctl reload mxkeys` (ExecReload) succeeds and the daemon re-reads
/// /etc/mxkeys/mxkeys.toml: a file added to the target is written, by the
/// same process.
#[test]
fn systemctl_reload_applies_a_changed_target() {
    let Some((leaf, host, guest)) =
        started_postfix_unit("systemctl_reload_applies_a_changed_target")
    else {
        return;
    };
    let pid = guest.property("mxkeys", "MainPID");
    host.configure(
        &leaf,
        &format!("{}fullchain = \"{TLS}/fullchain.pem\"\n", postfix_target()),
    );
    guest.ok(&["systemctl", "reload", "mxkeys"]);
    wait_until(
        &guest,
        "the reloaded configuration's new file",
        Duration::from_secs(30),
        || host.tls.join("fullchain.pem").exists(),
    );
    assert_eq!(
        sha256_hex(&common::read_certs(&host.tls.join("fullchain.pem"))[0]),
        leaf.fp()
    );
    assert_eq!(
        guest.stat("%U:%G", &format!("{TLS}/fullchain.pem")),
        "daemon:mail"
    );
    let journal = guest.journal(Some("mxkeys"));
    assert!(
        journal.contains("configuration reloaded"),
        "no reload in:\n{journal}"
    );
    assert_eq!(
        guest.property("mxkeys", "MainPID"),
        pid,
        "restarted:\n{journal}"
    );
    assert_eq!(guest.property("mxkeys", "ActiveState"), "active");
}

/// `systemctl stop mxkeys`: SIGTERM, a clean exit within TimeoutStopSec,
/// the unit inactive with Result=success and exit status 0.
#[test]
fn systemctl_stop_ends_the_daemon_cleanly() {
    let Some((_leaf, _host, guest)) =
        started_postfix_unit("systemctl_stop_ends_the_daemon_cleanly")
    else {
        return;
    };
    guest.ok(&["systemctl", "stop", "mxkeys"]);
    let journal = guest.journal(Some("mxkeys"));
    assert_eq!(guest.property("mxkeys", "ActiveState"), "inactive");
    assert_eq!(
        guest.property("mxkeys", "Result"),
        "success",
        "stop:\n{journal}"
    );
    assert_eq!(guest.property("mxkeys", "ExecMainStatus"), "0");
    assert!(journal.contains("stopping"), "no clean stop in:\n{journal}");
}

/// The status page and the new metrics as the shipped unit serves them:
/// the daemon gathers the page from its state directory and the target's
/// files under the unit's sandbox and syscall filter (it probes its own
/// pid with signal 0, reads the installed chain, parses its issuer).
#[test]
fn daemon_unit_serves_the_status_page_and_the_reconcile_metrics_under_the_shipped_sandbox() {
    let test =
        "daemon_unit_serves_the_status_page_and_the_reconcile_metrics_under_the_shipped_sandbox";
    let leaf = leaf();
    let host = Host::new();
    let port = common::free_port();
    host.configure(
        &leaf,
        &format!(
            "[metrics]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
            postfix_target()
        ),
    );
    let Some(guest) = host.boot(test, vec![]) else {
        return;
    };
    guest.ok(&["systemctl", "start", "mxkeys"]);
    let journal = || guest.journal(Some("mxkeys"));
    let (code, page) = common::http_get(port, "/status")
        .unwrap_or_else(|| panic!("no answer on /status:\n{}", journal()));
    assert_eq!(code, 200, "{page}\n{}", journal());
    let sha256 = common::sha256_hex(&leaf.der);
    assert!(
        page.contains(&sha256),
        "the page does not show the installed certificate {sha256}:\n{page}"
    );
    assert!(page.contains(HOST), "{page}");
    assert!(
        page.contains("data-state=\"ok\""),
        "the target is not shown ok:\n{page}"
    );
    let (code, metrics) = common::http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{metrics}");
    assert!(
        common::metric(&metrics, "mxkeys_reconcile_duration_seconds_count")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(
        common::metric(&metrics, "mxkeys_last_reconcile_success"),
        Some(1.0),
        "{metrics}"
    );
    assert!(!journal().contains("ERROR"), "errors in:\n{}", journal());
}

/// A Traefik acme.json of `count` entries for other names, with `leaf` for
/// HOST at position `at`: several of the streaming reader's windows.
fn large_acme_json(others: &Leaf, leaf: &Leaf, count: usize, at: usize) -> Vec<u8> {
    let entries = (0..count)
        .map(|i| match i == at {
            true => common::AcmeEntry::new(leaf, HOST),
            false => common::AcmeEntry::new(others, &format!("n{i}.example.net")),
        })
        .collect();
    serde_json::to_vec_pretty(&common::acme_v2(&[("le", Some(entries))])).unwrap()
}

/// The daemon unit reads an acme.json of 3,000 certificates (over 4 MB,
/// more than eight of the streaming reader's windows) under the shipped syscall
/// filter: its pool threads, its hand-offs between them and its second read
/// of the chosen entry are all allowed. The certificate for the host is
/// installed, and a rewrite in place, as Traefik does, with a newer one
/// replaces it.
#[test]
fn daemon_unit_installs_from_a_large_acme_json_read_in_windows_under_the_shipped_filter() {
    let test =
        "daemon_unit_installs_from_a_large_acme_json_read_in_windows_under_the_shipped_filter";
    let ca = Ca::new("systemd");
    let others = ca.issue(&LeafSpec::new(&["n.example.net"]));
    let first = ca.issue(&LeafSpec::new(&[HOST]).days(40));
    let newer = ca.issue(&LeafSpec::new(&[HOST]).days(80));
    let host = Host::new();
    let acme = host.path("src/acme.json");
    write(&acme, large_acme_json(&others, &first, 3_000, 2_500));
    let size = std::fs::metadata(&acme).unwrap().len();
    assert!(size > 4 << 20, "{size} bytes: fewer windows than meant");
    host.configure_raw(&format!(
        "hostname = {}\nstate_dir = \"/var/lib/mxkeys\"\n\n{}\n{}",
        q(HOST),
        common::src_traefik(&Path::new(SRC).join("acme.json")),
        postfix_target()
    ));
    let Some(guest) = host.boot(test, vec![]) else {
        return;
    };
    guest.ok(&["systemctl", "start", "mxkeys"]);
    let journal = guest.journal(Some("mxkeys"));
    assert_combined(&host.tls.join("chain.pem"), &first);
    assert!(!journal.contains("ERROR"), "errors in:\n{journal}");

    // Traefik rewrites acme.json in place (same inode): truncate, write.
    std::fs::write(&acme, large_acme_json(&others, &newer, 3_000, 2_900)).unwrap();
    let chain = host.tls.join("chain.pem");
    wait_until(
        &guest,
        "the newer certificate installed",
        Duration::from_secs(20),
        || {
            read_pem(&chain)
                .get(1)
                .is_some_and(|b| sha256_hex(&b.1) == newer.fp())
        },
    );
    assert_combined(&chain, &newer);
    let journal = guest.journal(Some("mxkeys"));
    assert_eq!(reloads(&host), 2, "one reload per certificate:\n{journal}");
    assert_eq!(guest.property("mxkeys", "NRestarts"), "0");
    assert_eq!(guest.property("mxkeys", "SubState"), "running");
}

/// The zone pebble resolves through for the renew test.
const ACME_ZONE: &str = "$TTL 300
@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60
@ IN NS ns.example.test.
ns IN A 127.0.0.1
mail IN A 127.0.0.1
";

/// The `[acme]` table for pebble (its CA copied to `/etc/mxkeys`) and
/// `[dns.bind]` for `dns` (its TSIG key copied there), as the guest reads
/// them.
fn acme_tables(pebble: &Pebble, dns: &Dns) -> String {
    format!(
        "[acme]\n\
         directory = {url}\n\
         email = \"admin@example.test\"\n\
         ca_bundle = \"/etc/mxkeys/pebble-ca.pem\"\n\
         [dns.bind]\n\
         type = \"rfc2136\"\n\
         server = \"{addr}\"\n\
         zone = \"example.test\"\n\
         tsig_name = \"{KEY_NAME}\"\n\
         tsig_secret_file = \"/etc/mxkeys/tsig.key\"\n\
         nameservers = [\"{addr}\"]\n\
         propagation_interval = \"200ms\"\n\
         propagation_timeout = \"30s\"\n",
        url = q(&pebble.url),
        addr = dns.addr(),
    )
}

/// The timer's service, started by hand as the timer would: `mxkeys renew`
/// under its own sandbox orders a certificate from a real ACME CA (pebble,
/// DNS-01 through BIND with TSIG), keeps its account in the state
/// directory, then syncs: the target holds the issued certificate with
/// its owner, group and mode, and its reload ran.
#[test]
fn renew_service_started_as_its_timer_would_orders_and_installs_an_owned_target() {
    let test = "renew_service_started_as_its_timer_would_orders_and_installs_an_owned_target";
    if !nspawn::available(test) || !require_programs(test, &[PEBBLE]) {
        return;
    }
    let Some(dns) = Dns::start_with_zone(ACME_ZONE) else {
        return;
    };
    let host = Host::new();
    let pebble = Pebble::start_with_dns(&host.path("pebble"), dns.addr());
    std::fs::copy(&pebble.https_ca, host.etc.join("pebble-ca.pem")).unwrap();
    std::fs::copy(dns.dir().join("tsig.key"), host.etc.join("tsig.key")).unwrap();
    host.configure_raw(&format!(
        "hostname = \"mail.example.test\"\n\
         state_dir = \"/var/lib/mxkeys\"\n\
         {acme_tables}\
         [[source]]\n\
         type = \"acme\"\n\
         name = \"pebble\"\n\
         domains = [\"mail.example.test\"]\n\
         challenge = \"dns-01\"\n\
         dns = \"bind\"\n\n{target}",
        acme_tables = acme_tables(&pebble, &dns),
        target = postfix_target(),
    ));
    let Some(guest) = host.boot(test, vec![]) else {
        return;
    };
    // The timer is valid and names the service.
    assert_eq!(
        guest.property("mxkeys-renew.timer", "Triggers"),
        "mxkeys-renew.service"
    );
    // A oneshot: start returns when it has finished.
    let out = guest.run(&["systemctl", "start", "mxkeys-renew.service"]);
    let journal = guest.journal(Some("mxkeys-renew"));
    assert!(
        out.status.success(),
        "mxkeys-renew.service failed:\n{journal}"
    );
    assert_eq!(guest.property("mxkeys-renew", "Result"), "success");
    assert_eq!(guest.property("mxkeys-renew", "ExecMainStatus"), "0");
    assert_eq!(
        guest.stat("%U:%G:%a", &format!("{TLS}/chain.pem")),
        "daemon:mail:640"
    );
    let blocks = read_pem(&host.tls.join("chain.pem"));
    assert!(blocks.len() >= 3, "key, leaf, intermediate:\n{journal}");
    assert!(common::is_private_key_label(&blocks[0].0));
    assert_eq!(
        common::private_key_public_raw(&blocks[0].0, &blocks[0].1),
        common::leaf_public_key_raw(&blocks[1].1),
        "the key is not the leaf's"
    );
    let info = common::cert_info(&blocks[1].1);
    assert_eq!(info.dns_sans, vec!["mail.example.test".to_owned()]);
    assert!(
        info.issuer.to_lowercase().contains("pebble"),
        "issued by {}",
        info.issuer
    );
    // The account lives in the state directory, readable by root only.
    let accounts = guest.stdout(&["sh", "-c", "stat -c %a /var/lib/mxkeys/acme/accounts/*"]);
    assert!(
        !accounts.trim().is_empty() && accounts.lines().all(|m| m == "600"),
        "account files' modes: {accounts:?}"
    );
    assert_eq!(reloads(&host), 1, "the reload ran once:\n{journal}");
}

/// The README's drop-in: a target directory the units do not list is
/// read-only to the daemon (ProtectSystem=strict) and its target fails;
/// after `ReadWritePaths=` for it in
/// /etc/systemd/system/mxkeys.service.d/, the restarted daemon writes it.
#[test]
fn target_outside_readwritepaths_is_written_once_a_drop_in_adds_its_directory() {
    let test = "target_outside_readwritepaths_is_written_once_a_drop_in_adds_its_directory";
    let leaf = leaf();
    let host = Host::new();
    let elsewhere = host.path("srv-mail-tls");
    std::fs::create_dir_all(&elsewhere).unwrap();
    host.configure(
        &leaf,
        "[[target]]\n\
         name = \"elsewhere\"\n\
         combined = \"/srv/mail/tls/chain.pem\"\n\
         owner = \"daemon\"\n",
    );
    let Some(guest) = host.boot(test, vec![Bind::rw(&elsewhere, "/srv/mail/tls")]) else {
        return;
    };
    guest.ok(&["systemctl", "start", "mxkeys"]);
    let journal = guest.journal(Some("mxkeys"));
    assert!(
        !elsewhere.join("chain.pem").exists(),
        "written outside ReadWritePaths: the sandbox is not in force:\n{journal}"
    );
    assert!(
        journal.contains("/srv/mail/tls/chain.pem"),
        "the failed target is not reported:\n{journal}"
    );
    guest.ok(&[
        "sh",
        "-c",
        "mkdir -p /etc/systemd/system/mxkeys.service.d && \
         printf '[Service]\\nReadWritePaths=/srv/mail/tls\\n' \
         > /etc/systemd/system/mxkeys.service.d/override.conf && \
         systemctl daemon-reload",
    ]);
    guest.ok(&["systemctl", "restart", "mxkeys"]);
    assert!(
        elsewhere.join("chain.pem").exists(),
        "not written with the drop-in:\n{}",
        guest.journal(Some("mxkeys"))
    );
    assert_combined(&elsewhere.join("chain.pem"), &leaf);
    assert_eq!(guest.stat("%U:%a", "/srv/mail/tls/chain.pem"), "daemon:600");
}

// ---------------------------------------------------------------------------
// DKIM under the unit
// ---------------------------------------------------------------------------

/// The DKIM directories the units list in ReadWritePaths.
const DKIM_KEYS: &str = "/etc/dkimkeys";
const OPENDKIM: &str = "/etc/opendkim";

/// The `[dns.bind]` and `[dkim]` tables for `dns` (the primary) with
/// `nameservers` checked for propagation, `key_owner = "opendkim"`.
fn dkim_config(dns: &Dns, nameservers: &[String], timeout: &str) -> String {
    format!(
        "[dns.bind]\n\
         type = \"rfc2136\"\n\
         server = \"{addr}\"\n\
         zone = \"example.test\"\n\
         tsig_name = \"{KEY_NAME}\"\n\
         tsig_secret_file = \"/etc/mxkeys/tsig.key\"\n\
         nameservers = [{ns}]\n\
         propagation_interval = \"200ms\"\n\
         propagation_timeout = \"{timeout}\"\n\
         [dkim]\n\
         domains = [\"example.test\"]\n\
         dns = \"bind\"\n\
         key_dir = \"{DKIM_KEYS}\"\n\
         signer = \"opendkim\"\n\
         signer_dir = \"{OPENDKIM}\"\n\
         key_owner = \"opendkim\"\n\
         rotate_every = \"90d\"\n\
         lead = \"0s\"\n",
        addr = dns.addr(),
        ns = nameservers
            .iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// A host for the DKIM tests: the TLS part as in the others, the TSIG
/// key in /etc/mxkeys, and host directories for the key and signer dirs.
fn dkim_host(dns: &Dns, leaf: &Leaf, nameservers: &[String], timeout: &str) -> Host {
    let host = Host::new();
    std::fs::copy(dns.dir().join("tsig.key"), host.etc.join("tsig.key")).unwrap();
    for d in ["dkimkeys", "opendkim"] {
        std::fs::create_dir_all(host.path(d)).unwrap();
    }
    host.configure(
        leaf,
        &format!(
            "{}\n{}",
            postfix_target(),
            dkim_config(dns, nameservers, timeout)
        ),
    );
    host
}

fn dkim_binds(host: &Host) -> Vec<Bind> {
    vec![
        Bind::rw(host.path("dkimkeys"), DKIM_KEYS),
        Bind::rw(host.path("opendkim"), OPENDKIM),
    ]
}

/// The DKIM keys of the guest's state: (selector, file, record, state).
fn dkim_keys(guest: &Guest) -> Vec<(String, String, String, String)> {
    let text = guest.stdout(&["cat", "/var/lib/mxkeys/dkim/state.json"]);
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    v["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            let s = |f: &str| k[f].as_str().unwrap_or_default().to_owned();
            (s("selector"), s("file"), s("record"), s("state"))
        })
        .collect()
}

/// The daemon unit generates, publishes and activates a DKIM key for a
/// signer running as its own user (`key_owner`): the key file and its
/// domain directory belong to that user, the record is on the server and
/// OpenDKIM's KeyTable names the file.
#[test]
fn dkim_rotation_under_the_daemon_unit_gives_the_keys_to_key_owner() {
    let test = "dkim_rotation_under_the_daemon_unit_gives_the_keys_to_key_owner";
    if !nspawn::available(test) {
        return;
    }
    let Some(dns) = Dns::start() else {
        return;
    };
    let leaf = leaf();
    let host = dkim_host(&dns, &leaf, &[dns.addr().to_string()], "20s");
    let Some(guest) = host.boot(test, dkim_binds(&host)) else {
        return;
    };
    guest.ok(&[
        "useradd",
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "opendkim",
    ]);
    guest.ok(&["systemctl", "start", "mxkeys"]);
    wait_until(
        &guest,
        "an active DKIM key",
        Duration::from_secs(60),
        || dkim_keys(&guest).iter().any(|k| k.3 == "active"),
    );
    let keys = dkim_keys(&guest);
    let (selector, file, record, _) = keys.iter().find(|k| k.3 == "active").unwrap();
    assert!(
        file.starts_with(&format!("{DKIM_KEYS}/example.test/")),
        "{file}"
    );
    assert_eq!(guest.stat("%U:%a", file), "opendkim:600");
    assert_eq!(
        guest.stat("%U:%a", &format!("{DKIM_KEYS}/example.test")),
        "opendkim:700"
    );
    assert_eq!(
        dns.txt_values(&format!("{selector}._domainkey.example.test")),
        vec![record.clone()]
    );
    let key_table = std::fs::read_to_string(host.path("opendkim/KeyTable")).unwrap_or_default();
    assert!(
        key_table.contains(file.as_str()),
        "KeyTable does not name {file}:\n{key_table}\n--- journal ---\n{}",
        guest.journal(Some("mxkeys"))
    );
    let journal = guest.journal(Some("mxkeys"));
    assert!(!journal.contains("ERROR"), "errors in:\n{journal}");
    assert_eq!(guest.property("mxkeys", "ActiveState"), "active");
}

/// The watchdog (WatchdogSec=3min as shipped) keeps the daemon alive while
/// a DKIM key waits two minutes for a record the checked server never
/// shows (a second BIND without the update): the unit starts within its
/// start timeout, then stays active with the same main process and no
/// restart for longer than the watchdog interval, and stops cleanly.
#[test]
fn watchdog_keeps_the_daemon_alive_through_a_two_minute_dkim_propagation_wait() {
    let test = "watchdog_keeps_the_daemon_alive_through_a_two_minute_dkim_propagation_wait";
    if !nspawn::available(test) {
        return;
    }
    let (Some(dns), Some(elsewhere)) = (Dns::start(), Dns::start()) else {
        return;
    };
    let leaf = leaf();
    let host = dkim_host(&dns, &leaf, &[elsewhere.addr().to_string()], "2m");
    let Some(guest) = host.boot("watchdog", dkim_binds(&host)) else {
        return;
    };
    guest.ok(&[
        "useradd",
        "--system",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        "opendkim",
    ]);
    let started = guest.run(&["systemctl", "start", "mxkeys"]);
    assert!(
        started.status.success(),
        "the unit did not start within its start timeout:\n{}",
        guest.journal(Some("mxkeys"))
    );
    let pid = guest.property("mxkeys", "MainPID");
    // Longer than WatchdogSec: without pings the watchdog would have fired.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(200) {
        let state = guest.property("mxkeys", "ActiveState");
        let now = guest.property("mxkeys", "MainPID");
        assert!(
            state == "active" && now == pid,
            "after {:?}: {state}, main pid {now} (was {pid}), restarts {}:\n{}",
            watch.elapsed(),
            guest.property("mxkeys", "NRestarts"),
            guest.journal(Some("mxkeys"))
        );
        std::thread::sleep(Duration::from_secs(5));
    }
    assert_eq!(guest.property("mxkeys", "NRestarts"), "0");
    // The wait did happen: the key is still unverified.
    assert!(
        dkim_keys(&guest).iter().all(|k| k.3 != "active"),
        "the record was seen: the test proved nothing"
    );
    guest.ok(&["systemctl", "stop", "mxkeys"]);
    assert_eq!(guest.property("mxkeys", "Result"), "success");
}

/// Where the annotated configuration puts the MTA-STS webroot.
const MTA_STS_WEBROOT: &str = "/var/www/mta-sts";

/// The body of the policy [`mta_sts_tables`] configures.
const MTA_STS_BODY: &str =
    "version: STSv1\r\nmode: testing\r\nmx: mail.example.test\r\nmax_age: 604800\r\n";

/// `[dns.bind]` for `dns` and `[mta_sts]` for `example.test` (testing,
/// `mail.example.test`, trusting /etc/mxkeys/mta-sts-ca.pem), served as
/// `serve` says (its `listen` or `webroot` lines).
fn mta_sts_tables(dns: &Dns, serve: &str) -> String {
    format!(
        "[dns.bind]\n\
         type = \"rfc2136\"\n\
         server = \"{addr}\"\n\
         zone = \"example.test\"\n\
         tsig_name = \"{KEY_NAME}\"\n\
         tsig_secret_file = \"/etc/mxkeys/tsig.key\"\n\
         nameservers = [\"{addr}\"]\n\
         propagation_interval = \"200ms\"\n\
         propagation_timeout = \"20s\"\n\
         [mta_sts]\n\
         domains = [\"example.test\"]\n\
         mode = \"testing\"\n\
         mx = [\"mail.example.test\"]\n\
         dns = \"bind\"\n\
         ca_bundle = \"/etc/mxkeys/mta-sts-ca.pem\"\n\
         {serve}\n",
        addr = dns.addr(),
    )
}

/// Waits until BIND serves the `_mta-sts` record of [`MTA_STS_BODY`]'s id.
fn wait_for_the_policy_id(guest: &Guest, dns: &Dns) {
    let id = mxkeys::mta_sts::policy::id_of(
        mxkeys::mta_sts::policy::Mode::Testing,
        &["mail.example.test".to_owned()].into(),
        604_800,
    );
    let record = mxkeys::mta_sts::policy::StsRecord::new(&id)
        .unwrap()
        .render();
    wait_until(
        guest,
        "the policy's id in BIND",
        Duration::from_secs(60),
        || dns.txt_values("_mta-sts.example.test") == [record.clone()],
    );
}

/// The daemon unit as shipped runs the MTA-STS pass with the annotated
/// configuration's `webroot`: under `ProtectSystem=strict` it writes the
/// policy there (the unit lists it in ReadWritePaths), fetches it back over
/// HTTPS from a web server of the host (`openssl s_server -WWW` serving the
/// same directory with a test-CA certificate for `mta-sts.example.test`)
/// and publishes its id to BIND over RFC 2136.
#[test]
fn daemon_unit_writes_the_mta_sts_policy_to_the_shipped_webroot_and_publishes_its_id() {
    let test = "daemon_unit_writes_the_mta_sts_policy_to_the_shipped_webroot_and_publishes_its_id";
    if !nspawn::available(test) || !require_programs(test, &[common::servers::OPENSSL]) {
        return;
    }
    let Some(dns) = Dns::start() else {
        return;
    };
    let leaf = leaf();
    let host = Host::new();
    std::fs::copy(dns.dir().join("tsig.key"), host.etc.join("tsig.key")).unwrap();
    let ca = Ca::new("systemd-mta-sts");
    let web = ca.issue(&LeafSpec::new(&["mta-sts.example.test"]));
    write(
        &host.etc.join("mta-sts-ca.pem"),
        common::pem_block("CERTIFICATE", &ca.root_der),
    );
    for (name, pem) in [
        ("web-cert.pem", web.cert_pem()),
        ("web-chain.pem", web.chain_pem()),
        ("web-key.pem", web.key_pem()),
    ] {
        write(&host.path(name), pem);
    }
    let www = host.path("www");
    let root = www.join("mta-sts.example.test");
    std::fs::create_dir_all(&root).unwrap();
    let https = common::free_port();
    let server = Command::new(common::servers::prog("openssl"))
        .args(["s_server", "-WWW", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{https}"))
        .arg("-cert")
        .arg(host.path("web-cert.pem"))
        .arg("-cert_chain")
        .arg(host.path("web-chain.pem"))
        .arg("-key")
        .arg(host.path("web-key.pem"))
        .current_dir(&root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _server = common::KillOnDrop(server);
    host.configure(
        &leaf,
        &format!(
            "{}\n{}",
            postfix_target(),
            mta_sts_tables(
                &dns,
                &format!("webroot = \"{MTA_STS_WEBROOT}\"\nresponders = [\"127.0.0.1:{https}\"]")
            )
        ),
    );
    let Some(guest) = host.boot(test, vec![Bind::rw(&www, MTA_STS_WEBROOT)]) else {
        return;
    };
    guest.ok(&["systemctl", "start", "mxkeys"]);
    wait_for_the_policy_id(&guest, &dns);
    let body = std::fs::read_to_string(root.join(".well-known/mta-sts.txt")).unwrap();
    assert_eq!(body, MTA_STS_BODY);
    assert_eq!(
        guest.stat(
            "%a",
            &format!("{MTA_STS_WEBROOT}/mta-sts.example.test/.well-known/mta-sts.txt")
        ),
        "644"
    );
    let journal = guest.journal(Some("mxkeys"));
    assert!(!journal.contains("ERROR"), "errors in:\n{journal}");
    assert_eq!(guest.property("mxkeys", "NRestarts"), "0");
}

/// The daemon unit as shipped runs the built-in responder on port 443
/// (`listen`, a privileged port, under the unit's capability set and
/// syscall filter): it serves the policy with the certificate the daemon
/// installed for a target covering `mta-sts.example.test`, fetches it back
/// and publishes its id. curl on the host (the guest shares its network)
/// gets the body over HTTPS, validating that certificate.
#[test]
fn daemon_unit_serves_the_mta_sts_policy_on_port_443_with_a_targets_certificate() {
    let test = "daemon_unit_serves_the_mta_sts_policy_on_port_443_with_a_targets_certificate";
    if !nspawn::available(test) || !require_programs(test, &[&[("curl", "curl")]]) {
        return;
    }
    let Some(dns) = Dns::start() else {
        return;
    };
    let ca = Ca::new("systemd-mta-sts-listen");
    let leaf = ca.issue(&LeafSpec::new(&[HOST, "mta-sts.example.test"]));
    let host = Host::new();
    std::fs::copy(dns.dir().join("tsig.key"), host.etc.join("tsig.key")).unwrap();
    let root_pem = host.etc.join("mta-sts-ca.pem");
    write(&root_pem, common::pem_block("CERTIFICATE", &ca.root_der));
    // 127.0.0.0/8 is all loopback: an address no other test listens on.
    let listen = "127.0.0.9:443";
    host.configure(
        &leaf,
        &format!(
            "{}\n[[target]]\n\
             name = \"mta-sts\"\n\
             domains = [\"mta-sts.example.test\"]\n\
             fullchain = \"{TLS}/mta-sts-fullchain.pem\"\n\
             key = \"{TLS}/mta-sts-key.pem\"\n\n{}",
            postfix_target(),
            mta_sts_tables(&dns, &format!("listen = \"{listen}\"")),
        ),
    );
    let Some(guest) = host.boot(test, vec![]) else {
        return;
    };
    guest.ok(&["systemctl", "start", "mxkeys"]);
    wait_for_the_policy_id(&guest, &dns);
    let out = Command::new(common::servers::prog("curl"))
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(&root_pem)
        .args([
            "--resolve",
            &format!("mta-sts.example.test:443:{}", &listen[..listen.len() - 4]),
            "https://mta-sts.example.test/.well-known/mta-sts.txt",
        ])
        .output()
        .unwrap();
    let journal = guest.journal(Some("mxkeys"));
    assert!(
        out.status.success(),
        "curl: {}\n--- journal ---\n{journal}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), MTA_STS_BODY);
    assert!(!journal.contains("ERROR"), "errors in:\n{journal}");
    assert_eq!(guest.property("mxkeys", "NRestarts"), "0");
}

// ---------------------------------------------------------------------------
// The cluster under the shipped unit (issue 18)
// ---------------------------------------------------------------------------

/// The etcd prefix of the cluster test and the shared source's keys there.
const CLUSTER_PREFIX: &str = "/mxkeys-systemd";

/// The shipped daemon unit with `[cluster]`: a real three-member etcd on
/// the host's loopback (the guest shares the host's network), `host_id`,
/// a 0600 `shared_key_file` and one `shared = true` ACME source (DNS-01
/// through BIND, pebble). Under the unit's sandbox (syscall filter,
/// MemoryDenyWriteExecute, ProtectSystem=strict, RestrictAddressFamilies)
/// the daemon connects to etcd, takes the source's lock, orders once,
/// stores the sealed order in etcd (no private key in clear), installs
/// the target; `mxkeys status` in the guest says the cluster is reachable.
#[test]
fn daemon_unit_with_a_cluster_leads_the_shared_order_stores_it_sealed_in_etcd_and_installs_it() {
    let test = "daemon_unit_with_a_cluster_leads_the_shared_order_stores_it_sealed_in_etcd_and_installs_it";
    if !nspawn::available(test) || !require_programs(test, &[PEBBLE, common::etcd::ETCD]) {
        return;
    }
    let Some(dns) = Dns::start_with_zone(ACME_ZONE) else {
        return;
    };
    let host = Host::new();
    let pebble = Pebble::start_with_dns(&host.path("pebble"), dns.addr());
    let etcd = common::etcd::EtcdCluster::start(&host.path("etcd"), 3);
    std::fs::copy(&pebble.https_ca, host.etc.join("pebble-ca.pem")).unwrap();
    std::fs::copy(dns.dir().join("tsig.key"), host.etc.join("tsig.key")).unwrap();
    {
        use base64::Engine as _;
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key).unwrap();
        let path = host.etc.join("shared.key");
        write(
            &path,
            base64::engine::general_purpose::STANDARD.encode(key) + "\n",
        );
        common::set_mode(&path, 0o600);
    }
    host.configure_raw(&format!(
        "hostname = \"mail.example.test\"\n\
         state_dir = \"/var/lib/mxkeys\"\n\
         host_id = \"mx1\"\n\
         [cluster]\n\
         backend = \"etcd\"\n\
         endpoints = {endpoints}\n\
         prefix = \"{CLUSTER_PREFIX}\"\n\
         shared_key_file = \"/etc/mxkeys/shared.key\"\n\
         lease_ttl = \"3s\"\n\
         {acme_tables}\
         [[source]]\n\
         type = \"acme\"\n\
         name = \"shared\"\n\
         domains = [\"mail.example.test\"]\n\
         challenge = \"dns-01\"\n\
         dns = \"bind\"\n\
         shared = true\n\n{target}",
        endpoints = etcd.endpoints_toml(),
        acme_tables = acme_tables(&pebble, &dns),
        target = postfix_target(),
    ));
    let Some(guest) = host.boot(test, vec![]) else {
        return;
    };
    guest.ok(&["systemctl", "start", "mxkeys"]);
    let issued = || {
        let blocks = read_pem(&host.tls.join("chain.pem"));
        blocks.len() >= 2
            && common::cert_info(&blocks[1].1)
                .issuer
                .to_lowercase()
                .contains("pebble")
    };
    wait_until(
        &guest,
        "the shared certificate in the target",
        Duration::from_secs(90),
        || host.tls.join("chain.pem").exists() && issued(),
    );
    let journal = guest.journal(Some("mxkeys"));
    let context = || {
        format!(
            "--- journal ---\n{journal}\n--- etcd keys: {:?}\n{}",
            etcd.keys(CLUSTER_PREFIX),
            etcd.log()
        )
    };
    // Led by this host, stored sealed.
    let stored = format!("{CLUSTER_PREFIX}/acme/shared");
    let value = etcd
        .get(&stored)
        .unwrap_or_else(|| panic!("no {stored} in etcd\n{}", context()));
    assert!(
        !String::from_utf8_lossy(&value).contains("PRIVATE KEY"),
        "{stored} holds a private key in clear"
    );
    let log = std::fs::read_to_string(pebble.dir.join("pebble.log")).unwrap_or_default();
    let orders = log
        .lines()
        .filter(|l| l.contains("POST /order-plz -> calling handler()"))
        .count();
    assert_eq!(orders, 1, "one order at pebble\n{}", context());
    // The target: key, the issued leaf, its chain; owner, group, mode.
    let blocks = read_pem(&host.tls.join("chain.pem"));
    assert!(common::is_private_key_label(&blocks[0].0));
    assert_eq!(
        common::private_key_public_raw(&blocks[0].0, &blocks[0].1),
        common::leaf_public_key_raw(&blocks[1].1),
        "the key is not the leaf's"
    );
    assert_eq!(
        common::cert_info(&blocks[1].1).dns_sans,
        vec!["mail.example.test".to_owned()]
    );
    assert_eq!(
        guest.stat("%U:%G:%a", &format!("{TLS}/chain.pem")),
        "daemon:mail:640"
    );
    // `mxkeys status` in the guest: reachable, and this host led the job.
    let mut status = String::new();
    wait_until(
        &guest,
        "status to say the cluster is reachable",
        Duration::from_secs(30),
        || {
            status = guest.stdout(&["mxkeys", "--config", "/etc/mxkeys/mxkeys.toml", "status"]);
            status.contains("cluster: host mx1; reachable since")
        },
    );
    // This host led the job and wrote the certificate through its lock;
    // the only errors are the target's, before its first certificate.
    assert!(
        journal.contains("stored the certificate in the cluster at acme/shared"),
        "not stored by this host:\n{}",
        context()
    );
    let errors: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("ERROR") && !l.contains("no valid certificate"))
        .collect();
    assert!(errors.is_empty(), "errors: {errors:?}\n{}", context());
    assert_eq!(guest.property("mxkeys", "ActiveState"), "active");
    assert_eq!(guest.property("mxkeys", "NRestarts"), "0", "{}", context());
}
