//! `mxkeys mta-sts status | check | disable` and the daemon's MTA-STS
//! responder, driven as an operator does: the `mxkeys` binary on a
//! configuration in a temp dir. `status` reads a ledger file written here
//! (no network); `mxkeys run` with `[mta_sts] listen` on a pool port serves
//! the policy file the pass writes (`state_dir/mta-sts-www`, written here
//! as the pass writes it) with the certificate of the target covering
//! `mta-sts.example.test`, fetched by curl trusting only the test CA
//! (`--resolve` stands in for DNS); a renewal installed while it runs is
//! served by the next handshake.
//!
//! Needs curl for the daemon test: without it that test is skipped loudly,
//! or fails with `CI=true`.

use mxkeys_testsupport as common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::servers::{Need, require_programs};
use common::*;
use mxkeys::mta_sts::policy::{Mode, MxPattern, Policy, StsRecord, id_of};

const CURL: &[Need] = &[("curl", "curl")];
const STS_HOST: &str = "mta-sts.example.test";

/// `[dns.ns]` and `[mta_sts]` for example.test, served by `serve` (a
/// `listen = ...` or `webroot = ...` line).
fn sts_tables(mode: &str, serve: &str) -> String {
    format!(
        "[dns.ns]\ntype = \"manual\"\n\n[mta_sts]\ndomains = [\"example.test\"]\nmode = \"{mode}\"\nmx = [\"mx.example.test\"]\nmax_age = \"1d\"\ndns = \"ns\"\n{serve}\n"
    )
}

#[test]
fn mta_sts_status_on_a_prepared_ledger_prints_the_step_and_the_refusal() {
    let env = Env::new();
    let target = Target::new(&env, "mail").domains(&["mx.example.test"]);
    env.write_config_with(
        &sts_tables("enforce", "listen = \"127.0.0.1:8443\""),
        &[],
        &[&target],
    );
    // The policy in testing mode is live everywhere; the MX host was never
    // checked, so enforce is refused and testing kept: in step.
    let mx: BTreeSet<String> = ["mx.example.test".to_owned()].into();
    let id = id_of(Mode::Testing, &mx, 86_400);
    let ledger = format!(
        r#"{{"domains": {{"example.test": {{
            "served": {{"127.0.0.1:8443": {{"id": "{id}", "since": 1000, "at": 2000}}}},
            "txt": {{"192.0.2.53:53": {{"id": "{id}", "ttl": 300, "since": 1500}}}},
            "published_id": "{id}",
            "live": {{"mode": "testing", "mx": ["mx.example.test"], "max_age": 86400, "id": "{id}"}},
            "mx": {{"hosts": ["mx.example.test"], "ttl": 300}}
        }}}}}}"#
    );
    write(&env.state.join("mta-sts.json"), ledger);

    let r = env.run(&["mta-sts", "status"]);
    r.ok();
    let lines: Vec<&str> = r.stdout.lines().collect();
    for want in [
        "mta-sts example.test:".to_owned(),
        format!("  live         id {id}, mode testing"),
        format!("  published    {id}"),
        format!("  next step    in step: policy {id} served and published everywhere"),
        "  refused      enforce refused: MX host mx.example.test has no STARTTLS certificate check yet; keeping mode testing".to_owned(),
    ] {
        assert!(lines.contains(&want.as_str()), "no line {want:?}\n{}", r.describe());
    }

    // The JSON says the same.
    let r = env.run(&["mta-sts", "status", "--json"]);
    r.ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let d = &v["domains"][0];
    assert_eq!(d["domain"], "example.test", "{v}");
    assert_eq!(d["in_step"], true, "{v}");
    assert_eq!(d["mode"], "testing", "{v}");
    assert!(
        d["refused"]
            .as_str()
            .unwrap_or("")
            .contains("enforce refused"),
        "{v}"
    );

    // `mxkeys status` has the section too.
    let r = env.run(&["status"]);
    assert!(
        r.stdout.contains("mta-sts example.test:"),
        "{}",
        r.describe()
    );
}

#[test]
fn disable_or_enable_on_a_domain_that_is_not_an_mta_sts_domain_exits_2_naming_it() {
    let env = Env::new();
    env.write_config_with(
        &sts_tables("testing", "webroot = \"/nonexistent/www\""),
        &[],
        &[],
    );
    for verb in ["disable", "enable"] {
        let r = env.run(&["mta-sts", verb, "other.test"]);
        assert_eq!(r.code, 2, "{}", r.describe());
        assert!(
            r.stderr.contains(&format!(
                "mta-sts {verb}: other.test is not a domain of [mta_sts]"
            )),
            "{}",
            r.describe()
        );
        // Nothing was recorded.
        assert!(!env.state.join("mta-sts.json").exists());
    }
}

#[test]
fn check_and_disable_without_an_mta_sts_table_exit_2() {
    let env = Env::new();
    env.write_config(&[], &[]);
    let r = env.run(&["mta-sts", "check"]);
    assert_eq!(r.code, 2, "{}", r.describe());
    assert!(r.stderr.contains("no [mta_sts] table"), "{}", r.describe());
    let r = env.run(&["mta-sts", "disable", "example.test"]);
    assert_eq!(r.code, 2, "{}", r.describe());
    assert!(
        r.stderr
            .contains("example.test is not a domain of [mta_sts]"),
        "{}",
        r.describe()
    );
    let r = env.run(&["mta-sts", "status"]);
    assert_eq!(r.code, 2, "{}", r.describe());
    assert!(
        r.stderr.contains("no [mta_sts] or [tls_rpt] table"),
        "{}",
        r.describe()
    );
}

#[test]
fn check_names_a_policy_name_no_target_covers() {
    let env = Env::new();
    let target = Target::new(&env, "mail").domains(&["mx.example.test"]);
    env.write_config_with(
        &sts_tables("testing", "listen = \"127.0.0.1:8443\""),
        &[src_self_signed()],
        &[&target],
    );
    let r = env.check();
    assert!(
        r.stdout.lines().any(|l| l
            == "mta-sts: no target covers mta-sts.example.test: the responder cannot serve it; add a [[target]] whose domains include mta-sts.example.test"),
        "{}",
        r.describe()
    );
}

/// What curl got from `https://mta-sts.example.test:PORT/.well-known/mta-sts.txt`.
#[derive(Debug)]
struct Fetched {
    exit: i32,
    status: String,
    body: String,
    /// SHA-256 of the served leaf.
    leaf: Option<String>,
    stderr: String,
}

fn curl(dir: &Path, root: &Path, port: u16) -> Fetched {
    curl_with(dir, root, port, "/.well-known/mta-sts.txt", &[])
}

/// A TLS-RPT report of RFC 8460 §4.4's example's shape: 2 sessions fine,
/// 1 failed.
const REPORT: &str = r#"{"organization-name": "Company-X", "report-id": "abc-1",
  "date-range": {"start-datetime": "2026-11-28T00:00:00Z", "end-datetime": "2026-11-28T23:59:59Z"},
  "contact-info": "sts-reporting@company-x.example",
  "policies": [{"policy": {"policy-type": "sts", "policy-domain": "example.test"},
    "summary": {"total-successful-session-count": 2, "total-failure-session-count": 1},
    "failure-details": [{"result-type": "certificate-expired", "failed-session-count": 1}]}]}"#;

/// curl of `https://mta-sts.example.test:PORT{path}` with more arguments.
fn curl_with(
    dir: &Path,
    root: &Path,
    port: u16,
    path: &str,
    extra: &[&std::ffi::OsStr],
) -> Fetched {
    let body_file = dir.join(format!("body-{}", free_port()));
    let mut c = curl_https(root, STS_HOST, port, path, 10);
    c.arg("-o")
        .arg(&body_file)
        .args(["-w", "%{http_code}\n%{certs}"])
        .args(extra);
    let out = run_with_timeout(c);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, certs) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    Fetched {
        exit: out.status.code().unwrap_or(-1),
        status: status.to_owned(),
        body: std::fs::read_to_string(&body_file).unwrap_or_default(),
        leaf: pem_blocks(certs)
            .into_iter()
            .find(|(label, _)| label == "CERTIFICATE")
            .map(|(_, der)| sha256_hex(&der)),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn run_serves_the_policy_and_takes_reports_with_the_covering_targets_certificate_and_its_renewal() {
    if !require_programs("mta_sts_cli_run", &[CURL]) {
        return;
    }
    let env = Env::new();
    let ca = Ca::new("mta-sts-run");
    let root = env.path("root.pem");
    write(&root, pem_block("CERTIFICATE", &ca.root_der));
    let first = ca.issue(&LeafSpec::new(&[STS_HOST]));
    let source_dir = env.path("source");
    std::fs::create_dir_all(&source_dir).unwrap();
    let source = files_source(&source_dir, &first);
    let mail = Target::new(&env, "mail").domains(&["mx.example.test"]);
    let web = Target::new(&env, "web").domains(&[STS_HOST]);
    let port = free_port();
    let metrics_port = free_port();
    let config = |port: u16| {
        let tables = format!(
            "{}\n[tls_rpt]\nrua = [\"https://{STS_HOST}/tlsrpt\"]\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n",
            sts_tables("testing", &format!("listen = \"127.0.0.1:{port}\""))
        );
        env.write_config_with(
            &tables,
            &[source.clone(), src_self_signed()],
            &[&mail, &web],
        );
    };
    config(port);
    // The policy file, where and as the pass writes it.
    let policy = Policy::new(
        Mode::Testing,
        vec![MxPattern::parse("mx.example.test").unwrap()],
        86_400,
    )
    .unwrap();
    let body = policy.canonical();
    let file = env
        .state
        .join("mta-sts-www/mta-sts.example.test/.well-known/mta-sts.txt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    write(&file, &body);

    let d = env.daemon(&[]);
    let got = wait_for(
        "the responder to serve the policy",
        || {
            let f = curl(&env.root, &root, port);
            (f.exit == 0).then_some(f)
        },
        || d.describe(),
    );
    assert_eq!(got.status, "200", "{got:?}");
    assert_eq!(got.body, body, "{got:?}");
    assert_eq!(got.leaf.as_deref(), Some(first.fp().as_str()), "{got:?}");

    // The https rua on the same name takes a report; the metrics count it.
    let report = env.path("report.json");
    write(&report, REPORT);
    let posted = curl_with(
        &env.root,
        &root,
        port,
        "/tlsrpt",
        &[
            "--data-binary".as_ref(),
            format!("@{}", report.display()).as_ref(),
            "-H".as_ref(),
            "Content-Type: application/tlsrpt+json".as_ref(),
        ],
    );
    assert_eq!(
        (posted.exit, posted.status.as_str()),
        (0, "201"),
        "{}",
        posted.stderr
    );
    let scrape = || {
        let mut c = Command::new("curl");
        c.args(["-sS", "--noproxy", "*", "--max-time", "10"])
            .arg(format!("http://127.0.0.1:{metrics_port}/metrics"));
        String::from_utf8_lossy(&run_with_timeout(c).stdout).into_owned()
    };
    let text = scrape();
    assert!(
        text.lines().any(|l| l
            == "mxkeys_tls_rpt_sessions_total{organization=\"Company-X\",result=\"successful\"} 2"),
        "{text}"
    );

    // A renewal reaches the target's files through the source: the next
    // handshake serves it, the daemon still running.
    let renewed = ca.issue(&LeafSpec::new(&[STS_HOST]));
    let tmp = source_dir.join("fullchain.tmp");
    write(&tmp, renewed.fullchain_pem());
    std::fs::rename(&tmp, source_dir.join("fullchain.pem")).unwrap();
    let tmp = source_dir.join("privkey.tmp");
    write(&tmp, renewed.key_pem());
    std::fs::rename(&tmp, source_dir.join("privkey.pem")).unwrap();
    wait_for(
        "the renewal installed in the web target",
        || (web.installed_fp().as_deref() == Some(renewed.fp().as_str())).then_some(()),
        || d.describe(),
    );
    let got = curl(&env.root, &root, port);
    assert_eq!((got.exit, got.body.as_str()), (0, body.as_str()), "{got:?}");
    assert_eq!(
        got.leaf.as_deref(),
        Some(renewed.fp().as_str()),
        "{got:?}\n{}",
        d.describe()
    );

    // A new configuration moves the responder: it is restarted on the new
    // address, and the old one is closed.
    let moved = free_port();
    config(moved);
    d.signal(nix::sys::signal::Signal::SIGHUP);
    let got = wait_for(
        "the responder on its new address",
        || {
            let f = curl(&env.root, &root, moved);
            (f.exit == 0).then_some(f)
        },
        || d.describe(),
    );
    assert_eq!(got.body, body, "{got:?}");
    // curl's 7: could not connect.
    wait_for(
        "the old address closed",
        || (curl(&env.root, &root, port).exit == 7).then_some(()),
        || d.describe(),
    );
}

#[test]
fn check_agrees_when_dns_and_the_responder_show_the_policy_and_names_each_disagreement() {
    if !require_programs("mta_sts_cli_check", &[CURL]) {
        return;
    }
    let policy = Policy::new(
        Mode::Testing,
        vec![MxPattern::parse("mx.example.test").unwrap()],
        86_400,
    )
    .unwrap();
    let id = policy.id();
    // A null MX: no MX host to check over STARTTLS (port 25 is not ours).
    let zone = format!(
        "$TTL 300\n@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60\n@ IN NS ns.example.test.\nns IN A 127.0.0.1\n@ IN MX 0 .\n_mta-sts IN TXT \"v=STSv1; id={id}\"\n"
    );
    let Some(bind) = common::bind::Bind::start_with_zone(&zone) else {
        return;
    };
    let env = Env::new();
    let ca = Ca::new("mta-sts-check");
    let root = env.path("root.pem");
    write(&root, pem_block("CERTIFICATE", &ca.root_der));
    let leaf = ca.issue(&LeafSpec::new(&[STS_HOST]));
    let source_dir = env.path("source");
    std::fs::create_dir_all(&source_dir).unwrap();
    let source = files_source(&source_dir, &leaf);
    let web = Target::new(&env, "web").domains(&[STS_HOST]);
    let port = free_port();
    let config = |trust: bool| {
        let tables = format!(
            "[dns.ns]\ntype = \"manual\"\nzone = \"example.test\"\nnameservers = [\"{}\"]\n\n[mta_sts]\ndomains = [\"example.test\"]\nmode = \"testing\"\nmx = [\"mx.example.test\"]\nmax_age = \"1d\"\ndns = \"ns\"\nlisten = \"127.0.0.1:{port}\"\n{}",
            bind.addr(),
            if trust {
                format!("ca_bundle = {}\n", qp(&root))
            } else {
                String::new()
            }
        );
        env.write_config_with(&tables, std::slice::from_ref(&source), &[&web]);
    };
    config(true);
    let file = env
        .state
        .join("mta-sts-www/mta-sts.example.test/.well-known/mta-sts.txt");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    write(&file, policy.canonical());
    let d = env.daemon(&[]);
    wait_for(
        "the responder to serve the policy",
        || (curl(&env.root, &root, port).exit == 0).then_some(()),
        || d.describe(),
    );

    let r = env.run(&["mta-sts", "check"]);
    assert_eq!(r.code, 0, "{}", r.describe());
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("example.test: _mta-sts id on ")
                && l.ends_with(&format!(": {id}"))),
        "{}",
        r.describe()
    );
    let served = format!("example.test: responder 127.0.0.1:{port}: serves id {id}");
    assert!(lines.contains(&served.as_str()), "{}", r.describe());
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "example.test: certificate of {STS_HOST} installed until "
        ))),
        "{}",
        r.describe()
    );
    assert!(!r.stdout.contains("DISAGREES"), "{}", r.describe());

    // Without the test CA among the trusted roots, the fetch fails as a
    // sender's would: one line, exit 1.
    config(false);
    let r = env.run(&["mta-sts", "check"]);
    assert_eq!(r.code, 1, "{}", r.describe());
    let bad: Vec<&str> = r
        .stdout
        .lines()
        .filter(|l| l.starts_with("DISAGREES "))
        .collect();
    assert_eq!(bad.len(), 1, "{}", r.describe());
    assert!(
        bad[0].starts_with(&format!(
            "DISAGREES example.test: responder 127.0.0.1:{port}: fetch failed"
        )),
        "{}",
        r.describe()
    );
}

const NSUPDATE: &[Need] = &[("nsupdate", "bind9-dnsutils"), ("named", "bind9")];

#[test]
fn run_makes_the_policy_live_and_disable_serves_mode_none_and_says_when_the_records_go() {
    if !require_programs("mta_sts_cli_disable", &[CURL, NSUPDATE]) {
        return;
    }
    let zone = "$TTL 300\n@ IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 60\n@ IN NS ns.example.test.\n@ IN MX 10 mx.example.test.\nns IN A 127.0.0.1\nmx IN A 127.0.0.1\n";
    let Some(bind) = common::bind::Bind::start_with_zone(zone) else {
        return;
    };
    let env = Env::new();
    let ca = Ca::new("mta-sts-disable");
    let root = env.path("root.pem");
    write(&root, pem_block("CERTIFICATE", &ca.root_der));
    let source_dir = env.path("source");
    std::fs::create_dir_all(&source_dir).unwrap();
    let source = files_source(&source_dir, &ca.issue(&LeafSpec::new(&[STS_HOST])));
    let web = Target::new(&env, "web").domains(&[STS_HOST]);
    let port = free_port();
    let addr = bind.addr();
    let tables = format!(
        "[dns.bind]\ntype = \"rfc2136\"\nserver = \"{addr}\"\ntsig_name = \"{key}\"\n\
         tsig_secret_file = {secret}\nzone = \"example.test\"\nnameservers = [\"{addr}\"]\n\
         propagation_interval = \"200ms\"\npropagation_timeout = \"10s\"\n\n\
         [mta_sts]\ndomains = [\"example.test\"]\nmode = \"testing\"\nmx = [\"mx.example.test\"]\n\
         max_age = \"1d\"\ndns = \"bind\"\nlisten = \"127.0.0.1:{port}\"\nca_bundle = {root}\n",
        key = common::bind::KEY_NAME,
        secret = qp(&bind.dir().join("tsig.key")),
        root = qp(&root),
    );
    env.write_config_with(&tables, &[source], &[&web]);
    let d = env.daemon(&[]);
    let testing = Policy::new(
        Mode::Testing,
        vec![MxPattern::parse("mx.example.test").unwrap()],
        86_400,
    )
    .unwrap();
    // The daemon's pass writes the body, its responder serves it, the id
    // goes to BIND and is seen there: the policy is live.
    let live = format!("  live         id {}, mode testing\n", testing.id());
    wait_for(
        "the daemon's pass to make the testing policy live",
        || {
            env.run(&["mta-sts", "status"])
                .stdout
                .contains(&live)
                .then_some(())
        },
        || d.describe(),
    );
    let got = curl(&env.root, &root, port);
    assert_eq!(got.body, testing.canonical(), "{got:?}");
    assert_eq!(
        bind.txt_values("_mta-sts.example.test"),
        [StsRecord::for_policy(&testing).render()]
    );

    // disable: mode none is served and published in one go; the records
    // go one old max_age (1 d) later, and the command says when.
    let run = env.run(&["mta-sts", "disable", "example.test"]);
    run.ok();
    let none = Policy::new(
        Mode::None,
        vec![MxPattern::parse("mx.example.test").unwrap()],
        86_400,
    )
    .unwrap();
    let got = curl(&env.root, &root, port);
    assert_eq!(got.body, none.canonical(), "{got:?}\n{}", run.describe());
    assert_eq!(
        bind.txt_values("_mta-sts.example.test"),
        [StsRecord::for_policy(&none).render()],
        "{}",
        run.describe()
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with(
            "mta-sts disable example.test: mode none is live; the records are deleted at "
        )),
        "{}",
        run.describe()
    );
    let status = env.run(&["mta-sts", "status"]);
    assert!(
        status
            .stdout
            .contains("mta-sts example.test: (disable asked)"),
        "{}",
        status.describe()
    );
}
