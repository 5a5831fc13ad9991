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
