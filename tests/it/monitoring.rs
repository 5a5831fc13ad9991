//! The shipped Prometheus alerting rules (issue 20):
//! `config/prometheus/mxkeys.rules.yml` loads in the real `promtool`
//! (Debian's `prometheus`), its unit tests (`mxkeys.rules.test.yml`) pass,
//! and those tests cover every alert both ways: each alert has a case where
//! it fires and one where it must not (a missing case fails here, see
//! [`uncovered`]). Every alert says how bad it is (`severity` warning or
//! critical) and what to run (`summary`, `description`, `action`).
//!
//! Both YAML files are read with python3's yaml module (python3-yaml) and
//! handed over as JSON: no YAML parser in the workspace for two files.
//! Whether the metric names exist in a running daemon is checked with the
//! dashboard's, elsewhere.

use mxkeys_testsupport as common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::servers::{Need, output_within, require_programs};
use serde_json::Value;

const PROMTOOL: &[Need] = &[("promtool", "prometheus")];
const PYTHON_YAML: &[Need] = &[
    ("python3", "python3"),
    (
        "/usr/lib/python3/dist-packages/yaml/__init__.py",
        "python3-yaml",
    ),
];

/// promtool checks and tests these rules in seconds.
const LIMIT: Duration = Duration::from_secs(120);

/// Return from the test (or fail under CI=true) when a program is missing.
macro_rules! require {
    ($test:expr, $($needs:expr),+) => {
        if !require_programs($test, &[$($needs),+]) {
            return;
        }
    };
}

fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/mxkeys.rules.yml")
}

fn tests_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/mxkeys.rules.test.yml")
}

/// Runs `promtool ARGS FILE` (bounded) and returns its output, failing the
/// test with everything promtool said when it does not succeed.
fn promtool(args: &[&str], file: &Path) -> String {
    let mut cmd = Command::new("promtool");
    cmd.args(args).arg(file);
    let out = output_within(cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool {} {}: {}\n{stdout}\n{stderr}",
        args.join(" "),
        file.display(),
        out.status
    );
    stdout
}

/// A YAML file as JSON, read by python3's yaml module (safe_load).
fn yaml(file: &Path) -> Value {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1], encoding='utf-8')), sys.stdout)",
    ])
    .arg(file);
    let out = output_within(cmd, LIMIT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "python3 yaml {}: {}\n{}",
        file.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("python3 yaml {}: not JSON: {e}", file.display()))
}

/// The alerting rules of a rules file, every group's.
fn alert_rules(rules: &Value) -> Vec<&Value> {
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

/// What the unit tests lack (pure): per alert of `rules`, "NAME: no case
/// where it fires" when no `alert_rule_test` of `tests` expects it to fire,
/// "NAME: no case where it must not fire" when none expects no alert of
/// it; and "NAME: tested but not a rule" for a case naming no alert.
fn uncovered(rules: &Value, tests: &Value) -> Vec<String> {
    let alerts: BTreeSet<&str> = alert_rules(rules)
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let cases = tests["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten());
    for case in cases {
        let Some(name) = case["alertname"].as_str() else {
            continue;
        };
        let firing = case["exp_alerts"].as_array().is_some_and(|a| !a.is_empty());
        if firing {
            fires.insert(name);
        } else {
            quiet.insert(name);
        }
    }
    let mut problems = Vec::new();
    for a in &alerts {
        if !fires.contains(a) {
            problems.push(format!("{a}: no case where it fires"));
        }
        if !quiet.contains(a) {
            problems.push(format!("{a}: no case where it must not fire"));
        }
    }
    for t in fires.union(&quiet) {
        if !alerts.contains(t) {
            problems.push(format!("{t}: tested but not a rule"));
        }
    }
    problems
}

#[test]
fn promtool_accepts_the_shipped_rules() {
    require!("promtool_accepts_the_shipped_rules", PROMTOOL);
    let out = promtool(&["check", "rules"], &rules_file());
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_fires_and_stays_quiet_as_the_promtool_unit_tests_expect() {
    require!(
        "every_alert_fires_and_stays_quiet_as_the_promtool_unit_tests_expect",
        PROMTOOL
    );
    let out = promtool(&["test", "rules"], &tests_file());
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn the_unit_tests_have_a_firing_and_a_quiet_case_for_every_alert() {
    require!(
        "the_unit_tests_have_a_firing_and_a_quiet_case_for_every_alert",
        PYTHON_YAML
    );
    let rules = yaml(&rules_file());
    let tests = yaml(&tests_file());
    assert!(
        alert_rules(&rules).len() >= 19,
        "fewer alerts than shipped: {rules}"
    );
    let problems = uncovered(&rules, &tests);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_alert_is_in_group_mxkeys_with_a_severity_and_says_what_to_run() {
    require!(
        "every_alert_is_in_group_mxkeys_with_a_severity_and_says_what_to_run",
        PYTHON_YAML
    );
    let rules = yaml(&rules_file());
    let groups: Vec<&str> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str())
        .collect();
    assert_eq!(groups, ["mxkeys"]);
    let mut problems = Vec::new();
    for r in alert_rules(&rules) {
        let name = r["alert"].as_str().unwrap_or("?");
        let severity = r["labels"]["severity"].as_str();
        if !matches!(severity, Some("warning" | "critical")) {
            problems.push(format!("{name}: severity {severity:?}"));
        }
        for key in ["summary", "description", "action"] {
            if r["annotations"][key]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                problems.push(format!("{name}: no annotation {key}"));
            }
        }
        let action = r["annotations"]["action"].as_str().unwrap_or_default();
        if !["mxkeys ", "journalctl ", "systemctl ", "promtool "]
            .iter()
            .any(|cmd| action.contains(cmd))
        {
            problems.push(format!("{name}: action names no command: {action:?}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_missing_firing_or_quiet_case_is_reported() {
    let rules = serde_json::json!({"groups": [{"name": "mxkeys", "rules": [
        {"alert": "Both", "expr": "x == 0"},
        {"alert": "OnlyFires", "expr": "y == 0"},
        {"alert": "OnlyQuiet", "expr": "z == 0"},
        {"alert": "Untested", "expr": "w == 0"},
        {"record": "not:an_alert", "expr": "sum(x)"},
    ]}]});
    let tests = serde_json::json!({"tests": [
        {"alert_rule_test": [
            {"eval_time": "1m", "alertname": "Both", "exp_alerts": []},
            {"eval_time": "9m", "alertname": "Both", "exp_alerts": [{"exp_labels": {}}]},
            {"eval_time": "9m", "alertname": "OnlyFires", "exp_alerts": [{"exp_labels": {}}]},
        ]},
        {"alert_rule_test": [
            {"eval_time": "1m", "alertname": "OnlyQuiet"},
            {"eval_time": "1m", "alertname": "Gone", "exp_alerts": []},
        ]},
    ]});
    assert_eq!(
        uncovered(&rules, &tests),
        [
            "OnlyFires: no case where it must not fire",
            "OnlyQuiet: no case where it fires",
            "Untested: no case where it fires",
            "Untested: no case where it must not fire",
            "Gone: tested but not a rule",
        ]
    );
}

/// The `mxkeys ...` commands of an action annotation, its label templates
/// (`{{ $labels.source }}`) filled with `VALUE`.
fn mxkeys_commands(action: &str) -> Vec<Vec<String>> {
    action
        .split(';')
        .map(str::trim)
        .filter_map(|part| part.strip_prefix("mxkeys "))
        .map(|args| {
            let mut filled = String::new();
            let mut rest = args;
            while let Some(start) = rest.find("{{") {
                filled.push_str(&rest[..start]);
                filled.push_str("VALUE");
                rest = rest[start..]
                    .find("}}")
                    .map_or("", |end| &rest[start + end + 2..]);
            }
            filled.push_str(rest);
            filled.split_whitespace().map(str::to_owned).collect()
        })
        .collect()
}

/// Every `mxkeys` command an alert tells the admin to run is one the real
/// binary accepts: its subcommands and options parse (`--help` appended,
/// so nothing runs).
#[test]
fn every_mxkeys_command_an_alert_names_is_accepted_by_the_binary() {
    require!(
        "every_mxkeys_command_an_alert_names_is_accepted_by_the_binary",
        PYTHON_YAML
    );
    let rules = yaml(&rules_file());
    let mut checked = 0;
    let mut problems = Vec::new();
    for r in alert_rules(&rules) {
        let name = r["alert"].as_str().unwrap_or("?");
        let action = r["annotations"]["action"].as_str().unwrap_or_default();
        for args in mxkeys_commands(action) {
            let out = Command::new(env!("CARGO_BIN_EXE_mxkeys"))
                .args(&args)
                .arg("--help")
                .output()
                .expect("run mxkeys");
            checked += 1;
            if !out.status.success() {
                problems.push(format!(
                    "{name}: `mxkeys {}` is refused: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    assert!(checked >= 10, "only {checked} mxkeys commands found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // And the check itself refuses a command that does not exist.
    assert_eq!(
        mxkeys_commands("mxkeys dkim frobnicate {{ $labels.domain }}; journalctl -u mxkeys"),
        [vec!["dkim", "frobnicate", "VALUE"]]
    );
    let bogus = Command::new(env!("CARGO_BIN_EXE_mxkeys"))
        .args(["dkim", "frobnicate", "VALUE", "--help"])
        .output()
        .expect("run mxkeys");
    assert!(!bogus.status.success(), "a bogus command was accepted");
}
