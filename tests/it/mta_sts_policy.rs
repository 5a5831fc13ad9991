//! The MTA-STS policy body and `_mta-sts` TXT record mxkeys renders, read
//! by a real sender's parser: postfix-mta-sts-resolver's own
//! `parse_mta_sts_policy` and `parse_mta_sts_record` (the functions its
//! daemon runs on what it fetches), run by the Python interpreter its
//! `mta-sts-query` uses. Each policy must come back with the id mxkeys
//! announced and the fields the resolver checks before it accepts a policy
//! (`version: STSv1`, a known `mode`, `max_age` within 0..=31557600, an `mx`
//! list unless the mode is `none`), the mx lines exactly mxkeys' patterns.
//! The fetch over HTTPS through DNS belongs to the responder's tests.
//!
//! Needs postfix-mta-sts-resolver: without it the test is skipped loudly,
//! or fails with `CI=true`.

use mxkeys_testsupport as common;

use std::process::Command;
use std::time::Duration;

use common::servers::{Need, output_within, prog, require_programs};
use mxkeys::mta_sts::policy::{Mode, MxPattern, Policy, StsRecord};

const RESOLVER: &[Need] = &[("mta-sts-query", "postfix-mta-sts-resolver")];

/// Runs the resolver's parsers on each (TXT record, policy body) pair;
/// returns what they made of each, as JSON.
fn resolver_reads(pairs: &[(String, String)]) -> Vec<serde_json::Value> {
    let query = prog("mta-sts-query");
    let shebang = std::fs::read_to_string(&query).expect("read mta-sts-query");
    let python = shebang
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .expect("mta-sts-query starts with #!");
    let input = serde_json::to_string(pairs).unwrap();
    let script = "import json, sys\n\
        from postfix_mta_sts_resolver.utils import parse_mta_sts_record, parse_mta_sts_policy\n\
        pairs = json.loads(sys.argv[1])\n\
        print(json.dumps([{'record': parse_mta_sts_record(r), 'policy': parse_mta_sts_policy(b)} for r, b in pairs]))\n";
    let mut cmd = Command::new(python);
    cmd.args(["-c", script, &input]);
    let out = output_within(cmd, Duration::from_secs(60)).expect("run the resolver's parsers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script prints JSON")
}

#[test]
fn postfix_mta_sts_resolver_reads_the_policy_and_id_mxkeys_publishes() {
    if !require_programs(
        "postfix_mta_sts_resolver_reads_the_policy_and_id_mxkeys_publishes",
        &[RESOLVER],
    ) {
        return;
    }
    let mx = |names: &[&str]| -> Vec<MxPattern> {
        names.iter().map(|n| MxPattern::parse(n).unwrap()).collect()
    };
    let policies = [
        Policy::new(
            Mode::Enforce,
            mx(&["Mail.Example.com", "*.mx.example.net"]),
            604_800,
        ),
        Policy::new(Mode::Testing, mx(&["mx.example.org"]), 31_557_600),
        Policy::new(Mode::None, vec![], 0),
    ]
    .map(Result::unwrap);
    let pairs: Vec<(String, String)> = policies
        .iter()
        .map(|p| (StsRecord::for_policy(p).render(), p.canonical()))
        .collect();
    let read = resolver_reads(&pairs);
    assert_eq!(read.len(), policies.len());
    for (p, r) in policies.iter().zip(&read) {
        let want_mx: Vec<&str> = p.mx().iter().map(MxPattern::as_str).collect();
        assert_eq!(r["record"]["v"], "STSv1", "{r}");
        assert_eq!(r["record"]["id"], p.id().as_str(), "{r}");
        assert_eq!(r["policy"]["version"], "STSv1", "{r}");
        assert_eq!(r["policy"]["mode"], p.mode().as_str(), "{r}");
        assert_eq!(r["policy"]["max_age"], p.max_age().to_string(), "{r}");
        assert_eq!(r["policy"]["mx"], serde_json::json!(want_mx), "{r}");
    }
}

#[test]
fn mta_sts_records_prints_a_body_and_records_the_resolver_reads_with_one_id() {
    if !require_programs(
        "mta_sts_records_prints_a_body_and_records_the_resolver_reads_with_one_id",
        &[RESOLVER],
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mxkeys.toml");
    common::write(
        &config,
        "[dns.ns]\ntype = \"manual\"\n\
         [mta_sts]\ndomains = [\"example.com\", \"example.org\"]\nmode = \"enforce\"\n\
         mx = [\"mx2.example.com\", \"MX1.example.com\"]\nmax_age = \"2d\"\ndns = \"ns\"\nwebroot = \"www\"\n\
         [tls_rpt]\nrua = [\"mailto:tlsrpt@example.com\"]\n",
    );
    let mut cmd = Command::new(common::bin());
    cmd.arg("--config")
        .arg(&config)
        .args(["mta-sts", "records"])
        .env_remove("MXKEYS_CONFIG");
    let out = output_within(cmd, Duration::from_secs(30)).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{out:?}");
    // The body, from the comment lines, with the CRLF line ends served.
    let body: String = text
        .lines()
        .filter_map(|l| l.strip_prefix(";   "))
        .map(|l| format!("{l}\r\n"))
        .collect();
    let txt = |name: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"));
        line.split_once(" IN TXT ")
            .map(|(_, v)| v.trim_matches('"').to_owned())
            .unwrap()
    };
    let read = resolver_reads(&[
        (txt("_mta-sts.example.com. "), body.clone()),
        (txt("_mta-sts.example.org. "), body.clone()),
    ]);
    let id = Policy::parse(&body).unwrap().id();
    for r in &read {
        assert_eq!(r["record"]["id"], id.as_str(), "{r}\n{text}");
        assert_eq!(r["policy"]["mode"], "enforce", "{r}");
        assert_eq!(r["policy"]["max_age"], "172800", "{r}");
        assert_eq!(
            r["policy"]["mx"],
            serde_json::json!(["mx1.example.com", "mx2.example.com"]),
            "{r}"
        );
    }
    assert_eq!(
        txt("_smtp._tls.example.org. "),
        "v=TLSRPTv1; rua=mailto:tlsrpt@example.com"
    );
}
