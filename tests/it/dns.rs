//! `mxkeys dns test` end to end, against a real BIND 9 on loopback (the
//! test-support crate's harness): through rfc2136 with TSIG, through an exec
//! program that runs nsupdate, and the manual provider's printed records.
//! Every run is checked for the secret leaking into its output.

use mxkeys_testsupport::bind;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output};

use bind::{Bind, KEY_NAME};

/// Runs mxkeys with `config`; fails the test on a panic.
pub(super) fn mxkeys(config: &Path, args: &[&str]) -> Output {
    run_mxkeys(Command::new(env!("CARGO_BIN_EXE_mxkeys")), config, args)
}

/// Runs `cmd` (mxkeys, or a wrapper such as `unshare -n` followed by it)
/// with `--config config` and `args`; fails the test on a panic.
pub(super) fn run_mxkeys(mut cmd: Command, config: &Path, args: &[&str]) -> Output {
    let out = cmd
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("MXKEYS_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "mxkeys panicked:\n{stderr}");
    out
}

/// stdout and stderr as text.
pub(super) fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(bind: &Bind, providers: &str) -> std::path::PathBuf {
    let path = bind.dir().join("mxkeys.toml");
    std::fs::write(&path, format!("state_dir = \"state\"\n{providers}")).unwrap();
    path
}

fn rfc2136_table(bind: &Bind, secret_file: &str) -> String {
    format!(
        "[dns.bind]\ntype = \"rfc2136\"\nserver = \"{}\"\nzone = \"example.test\"\ntsig_name = \"{KEY_NAME}\"\ntsig_secret_file = \"{secret_file}\"\nnameservers = [\"{}\"]\npropagation_interval = \"100ms\"\npropagation_timeout = \"10s\"\n",
        bind.addr(),
        bind.addr()
    )
}

#[test]
fn dns_test_through_rfc2136_writes_waits_and_removes() {
    let Some(bind) = Bind::start() else { return };
    // tsig-keygen's whole key statement, as BIND users have it.
    let config = write_config(&bind, &rfc2136_table(&bind, "tsig.key"));
    let out = mxkeys(&config, &["dns", "test", "bind"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for step in [
        "_mxkeys-probe.example.test",
        "writing the probe",
        "answers",
        "removed",
        "ok: [dns.bind] works",
    ] {
        assert!(stdout.contains(step), "no {step:?} in:\n{stdout}");
    }
    assert!(
        stdout.contains(&bind.addr().to_string()),
        "the server is not named:\n{stdout}"
    );
    // Each step has its time.
    assert!(
        stdout.lines().skip(1).take(3).all(|l| l
            .trim_start()
            .split('s')
            .next()
            .is_some_and(|t| t.trim().parse::<f64>().is_ok())),
        "{stdout}"
    );
    // The probe is gone afterwards.
    assert!(bind.txt_values("_mxkeys-probe.example.test").is_empty());
    assert!(!stdout.contains(&bind.secret_b64) && !stderr.contains(&bind.secret_b64));

    // --name writes elsewhere.
    let out = mxkeys(
        &config,
        &["dns", "test", "bind", "--name", "probe2.example.test"],
    );
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("probe2.example.test"));
}

/// A delegating provider writes only its delegated zone: its probe goes
/// there, as it is (no CNAME leads to a probe name).
#[test]
fn dns_test_of_a_delegating_provider_probes_the_delegated_zone() {
    let Some(bind) = Bind::start() else { return };
    let table = format!(
        "[dns.d]\ntype = \"rfc2136\"\nserver = \"{0}\"\ndelegate_to = \"delegated.test\"\ntsig_name = \"{KEY_NAME}\"\ntsig_secret_file = \"tsig.key\"\nnameservers = [\"{0}\"]\npropagation_interval = \"100ms\"\npropagation_timeout = \"10s\"\n",
        bind.addr()
    );
    let config = write_config(&bind, &table);
    let out = mxkeys(&config, &["dns", "test", "d"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("probe _mxkeys-probe.delegated.test TXT"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("delegated.test.delegated.test"),
        "{stdout}"
    );
}

#[test]
fn dns_test_with_a_wrong_secret_fails_clearly_without_the_secret() {
    let Some(bind) = Bind::start() else { return };
    let wrong = "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE=";
    std::fs::write(bind.dir().join("wrong.secret"), format!("{wrong}\n")).unwrap();
    let config = write_config(&bind, &rfc2136_table(&bind, "wrong.secret"));
    let out = mxkeys(&config, &["dns", "test", "bind"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("BADSIG") || stderr.contains("rejected"),
        "{stderr}"
    );
    assert!(stderr.contains("_mxkeys-probe.example.test"), "{stderr}");
    for secret in [wrong, bind.secret_b64.as_str()] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "secret leaked:\n{stdout}\n{stderr}"
        );
    }
    assert!(bind.txt_values("_mxkeys-probe.example.test").is_empty());
}

#[test]
fn unknown_provider_or_missing_secret() {
    let Some(bind) = Bind::start() else { return };
    let config = write_config(&bind, &rfc2136_table(&bind, "missing.secret"));
    let out = mxkeys(&config, &["dns", "test", "cloudflare"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("no [dns.cloudflare]") && text(&out).1.contains("bind"));
    let out = mxkeys(&config, &["dns", "test", "bind"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out).1;
    assert!(
        stderr.contains("missing.secret") && stderr.contains("not found"),
        "{stderr}"
    );
}

#[test]
fn dns_test_through_an_exec_program_running_nsupdate() {
    let Some(bind) = Bind::start() else { return };
    let script = bind.dir().join("dns-hook");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\naction=$1; name=$2; type=$3\necho \"$*\" >> {calls}\ncase $action in\n  read) exit 3 ;;\n  replace) ttl=$4; shift 4; {{ echo \"server 127.0.0.1 {port}\"; echo \"update delete $name $type\"; for v in \"$@\"; do echo \"update add $name $ttl $type \\\"$v\\\"\"; done; echo send; }} | nsupdate -k {key} ;;\n  remove) {{ echo \"server 127.0.0.1 {port}\"; echo \"update delete $name $type\"; echo send; }} | nsupdate -k {key} ;;\nesac\n",
            calls = bind.dir().join("calls").display(),
            port = bind.port,
            key = bind.dir().join("tsig.key").display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = write_config(
        &bind,
        &format!(
            "[dns.hook]\ntype = \"exec\"\ncommand = [\"{}\"]\nzone = \"example.test\"\nnameservers = [\"{}\"]\npropagation_interval = \"100ms\"\npropagation_timeout = \"10s\"\n",
            script.display(),
            bind.addr()
        ),
    );
    let out = mxkeys(&config, &["dns", "test", "hook"]);
    assert!(out.status.success(), "{:?}", text(&out));
    let calls = std::fs::read_to_string(bind.dir().join("calls")).unwrap();
    assert!(
        calls.contains("replace _mxkeys-probe.example.test TXT 60 mxkeys-probe "),
        "{calls}"
    );
    assert!(
        calls.contains("remove _mxkeys-probe.example.test TXT"),
        "{calls}"
    );
    assert!(bind.txt_values("_mxkeys-probe.example.test").is_empty());
}

#[test]
fn manual_prints_the_record_and_waits_for_it() {
    let Some(bind) = Bind::start() else { return };
    let config = write_config(
        &bind,
        &format!(
            "[dns.paste]\ntype = \"manual\"\nzone = \"example.test\"\nnameservers = [\"{}\"]\npropagation_interval = \"100ms\"\npropagation_timeout = \"1s\"\n",
            bind.addr()
        ),
    );
    let out = mxkeys(&config, &["dns", "test", "paste"]);
    let (stdout, stderr) = text(&out);
    // Nobody set it: the record was printed, then the check timed out
    // naming the server.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("_mxkeys-probe.example.test. 60 IN TXT \"mxkeys-probe "),
        "{stdout}"
    );
    assert!(stderr.contains(&bind.addr().to_string()), "{stderr}");
}
