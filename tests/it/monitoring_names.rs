//! The shipped monitoring files name only what mxkeys exports: every
//! metric an expression of the Grafana dashboard
//! (`config/grafana/mxkeys-dashboard.json`) or of the alert rules
//! (`config/prometheus/mxkeys.rules.yml`) names is a `# TYPE` family of a
//! real daemon's `/metrics`; every dashboard query is PromQL that
//! `promtool` parses, and evaluates without error (as every rule does) in a
//! real Prometheus scraping that daemon, the certificate panels showing the
//! test certificate's days left; and the dashboard is an importable Grafana
//! model.
//!
//! Needs promtool and prometheus (Debian package `prometheus`) and, for the
//! rules file, python3-yaml (read as JSON through `python3`): without them
//! a test is skipped loudly, or fails with `CI=true`.

use mxkeys_testsupport as common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use common::servers::{self, Need, output_within, poll, prog, require_programs};
use common::*;

const PROMTOOL: &[Need] = &[("promtool", "prometheus")];
const PYYAML: &[Need] = &[
    ("/usr/bin/python3", "python3"),
    (
        "/usr/lib/python3/dist-packages/yaml/__init__.py",
        "python3-yaml",
    ),
];

/// Families rendered only with `[cluster]` (an etcd cluster the daemon's
/// cluster task reaches): not configured here, so they are taken on the
/// word of `src/daemon/metrics.rs`, which must still name each one.
const CLUSTER_ONLY: &[&str] = &[
    "mxkeys_cluster_up",
    "mxkeys_cluster_leader",
    "mxkeys_cluster_fenced_writes_total",
];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

const DASHBOARD: &str = "config/grafana/mxkeys-dashboard.json";
const RULES: &str = "config/prometheus/mxkeys.rules.yml";

fn dashboard() -> Value {
    let path = repo(DASHBOARD);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The alert rules file as JSON (read by python3-yaml), when it exists.
fn rules() -> Option<Value> {
    let path = repo(RULES);
    if !path.exists() {
        eprintln!("note: {RULES} does not exist (yet): only the dashboard is checked");
        return None;
    }
    let mut c = Command::new(prog("python3"));
    c.args([
        "-c",
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
    ])
    .arg(&path);
    let out = output_within(c, std::time::Duration::from_secs(30)).expect("python3 runs");
    assert!(
        out.status.success(),
        "{RULES} is not YAML: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("python3 prints JSON"))
}

/// Every `expr` of the alert rules (and each `mxkeys_...` name their
/// annotations query, as a bare selector), and the names recording rules
/// define.
fn rule_exprs(rules: &Value) -> (Vec<String>, BTreeSet<String>) {
    let mut exprs = Vec::new();
    let mut records = BTreeSet::new();
    let groups = rules["groups"].as_array().expect("rules: groups is a list");
    for rule in groups.iter().flat_map(|g| {
        g["rules"]
            .as_array()
            .expect("rules: each group has a list of rules")
    }) {
        let expr = rule["expr"].as_str().map(str::to_owned).or_else(|| {
            // An integer expression reads as a number in YAML.
            rule["expr"].as_i64().map(|n| n.to_string())
        });
        exprs.push(expr.unwrap_or_else(|| panic!("rule without expr: {rule}")));
        let annotations = rule["annotations"].as_object().into_iter().flatten();
        for text in annotations.filter_map(|(_, v)| v.as_str()) {
            exprs.extend(words(text).filter(|w| w.starts_with("mxkeys_")));
        }
        if let Some(r) = rule["record"].as_str() {
            records.insert(r.to_owned());
        }
    }
    (exprs, records)
}

/// The identifiers of `text` (letters, digits, `_`, `:`), quoted or not.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
}

/// Every query of the dashboard: each `expr` anywhere (panels, their
/// targets, rows' panels), and each query variable's query (its
/// `label_values(SELECTOR, LABEL)` given as SELECTOR).
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    for var in variables(dash) {
        if var["type"] != "query" {
            continue;
        }
        let queries = [
            var["definition"].as_str(),
            var["query"]
                .as_str()
                .or_else(|| var["query"]["query"].as_str()),
        ];
        for q in queries.into_iter().flatten() {
            out.push(variable_selector(q).to_owned());
        }
    }
    out
}

fn variables(dash: &Value) -> &[Value] {
    dash["templating"]["list"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The PromQL inside Grafana's `label_values(SELECTOR, LABEL)` (or
/// `query_result(EXPR)`); any other query as is.
fn variable_selector(q: &str) -> &str {
    let q = q.trim();
    for f in ["label_values(", "query_result("] {
        if let Some(inner) = q.strip_prefix(f).and_then(|r| r.strip_suffix(')')) {
            return match (f, inner.rfind(',')) {
                ("label_values(", Some(comma)) => inner[..comma].trim(),
                _ => inner.trim(),
            };
        }
    }
    q
}

/// The `mxkeys_...` metric names `expr` mentions: whole identifiers
/// outside string literals (label values and regexes are not names).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut chars = expr.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if d == '\\' && c != '`' {
                    escaped = true;
                } else if d == c {
                    break;
                }
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut end = i + c.len_utf8();
            while let Some(&(j, d)) = chars.peek() {
                if d.is_ascii_alphanumeric() || d == '_' || d == ':' {
                    end = j + d.len_utf8();
                    chars.next();
                } else {
                    break;
                }
            }
            let word = &expr[i..end];
            if word.starts_with("mxkeys_") {
                names.insert(word.to_owned());
            }
        } else if c.is_ascii_digit() {
            // A number (1e3, 0x1f, 5m): never a name.
            while chars
                .peek()
                .is_some_and(|&(_, d)| d.is_ascii_alphanumeric())
            {
                chars.next();
            }
        }
    }
    names
}

/// `# TYPE name kind` of a scrape, by name.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.trim().to_owned()))
        })
        .collect()
}

/// The names of `exprs` that are no family of `families` (a histogram's
/// `_bucket`, `_sum` and `_count` belong to it; a summary's `_sum` and
/// `_count` too) nor in `also`, each with the expression naming it.
fn unknown_names(
    exprs: &[String],
    families: &BTreeMap<String, String>,
    also: &BTreeSet<String>,
) -> Vec<String> {
    let known = |name: &str| {
        if families.contains_key(name) || also.contains(name) {
            return true;
        }
        let of = |suffix: &str, kinds: &[&str]| {
            name.strip_suffix(suffix)
                .and_then(|base| families.get(base))
                .is_some_and(|k| kinds.contains(&k.as_str()))
        };
        of("_bucket", &["histogram"])
            || of("_sum", &["histogram", "summary"])
            || of("_count", &["histogram", "summary"])
    };
    let mut unknown = Vec::new();
    for e in exprs {
        for name in metric_names(e) {
            if !known(&name) {
                unknown.push(format!("{name} (in `{e}`)"));
            }
        }
    }
    unknown
}

/// A daemon with targets, a files source, an acme source (its CA port
/// refuses: the order fails), `[dkim]` and `[tls_rpt]` on a manual DNS
/// provider whose authoritative server never answers, and `/metrics` on a
/// port of the pool, after its first reconcile.
struct Running {
    env: Env,
    d: Daemon,
    metrics_port: u16,
    leaf: Leaf,
    /// Held so that DNS queries go to a socket that never answers.
    _dns: std::net::UdpSocket,
}

impl Running {
    fn start() -> Running {
        let ca = Ca::new("monitoring");
        let leaf = ca.issue(&LeafSpec::new(&[HOST]));
        let env = Env::new();
        let metrics_port = free_port();
        let acme_port = free_port();
        let dns_port = free_port();
        let dns = std::net::UdpSocket::bind(("127.0.0.1", dns_port)).unwrap();
        let top = format!(
            "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
             [acme]\ndirectory = \"https://127.0.0.1:{acme_port}/directory\"\n\n\
             [dns.paste]\ntype = \"manual\"\nzone = \"example.com\"\n\
             nameservers = [\"127.0.0.1:{dns_port}\"]\n\
             propagation_interval = \"1s\"\npropagation_timeout = \"10m\"\n\n\
             [dkim]\ndomains = [\"example.com\"]\nkey_dir = {keys}\ndns = \"paste\"\n\
             signer = \"opendkim\"\nsigner_dir = {signer}\n\n\
             [tls_rpt]\nrua = [\"mailto:tlsrpt@example.com\"]\ndomains = [\"example.com\"]\n\
             dns = \"paste\"\n",
            keys = qp(&env.path("dkim-keys")),
            signer = qp(&env.path("signer")),
        );
        let files = files_source(&env.path("src"), &leaf);
        let ordered = "[[source]]\ntype = \"acme\"\nname = \"ordered\"\n\
                       domains = [\"acme.example.com\"]\nchallenge = \"dns-01\"\ndns = \"paste\"\n"
            .to_owned();
        let mail = Target::new(&env, "mail");
        let smtp = Target::new(&env, "smtp");
        env.write_config_with(&top, &[files, ordered], &[&mail, &smtp]);
        let d = env.daemon(&[]);
        env.wait_reconciles(&d, 1);
        let running = Running {
            env,
            d,
            metrics_port,
            leaf,
            _dns: dns,
        };
        running.scrape();
        running
    }

    /// `/metrics` once both targets are ready.
    fn scrape(&self) -> String {
        wait_for(
            "/metrics after the first reconcile",
            || {
                let (code, body) = http_get(self.metrics_port, "/metrics")?;
                (code == 200
                    && metric(&body, "mxkeys_reconciles_total{result=\"success\"}")
                        .is_some_and(|v| v >= 1.0)
                    && metric(&body, "mxkeys_target_ready{target=\"mail\"}") == Some(1.0)
                    && metric(&body, "mxkeys_target_ready{target=\"smtp\"}") == Some(1.0))
                .then_some(body)
            },
            || self.d.describe(),
        )
    }
}

#[test]
fn every_metric_the_rules_and_dashboard_name_is_exported_by_a_running_daemon() {
    if !require_programs(
        "every_metric_the_rules_and_dashboard_name_is_exported_by_a_running_daemon",
        &[PYYAML],
    ) {
        return;
    }
    let mut exprs = dashboard_exprs(&dashboard());
    assert!(exprs.len() >= 20, "the dashboard's queries: {exprs:?}");
    let mut also = BTreeSet::new();
    if let Some(rules) = rules() {
        let (rule_exprs, records) = rule_exprs(&rules);
        assert!(!rule_exprs.is_empty(), "{RULES} has no rule");
        exprs.extend(rule_exprs);
        also.extend(records);
    }

    let scrape = Running::start().scrape();
    let families = families(&scrape);
    // The check can fail: a misspelled name, a histogram's bucket of a
    // gauge, and a name inside a label value are told apart.
    assert_eq!(
        unknown_names(
            &[
                "mxkeys_target_redy{target=\"mxkeys_nope\"}".to_owned(),
                "mxkeys_target_ready_bucket".to_owned(),
            ],
            &families,
            &also
        ),
        [
            "mxkeys_target_redy (in `mxkeys_target_redy{target=\"mxkeys_nope\"}`)",
            "mxkeys_target_ready_bucket (in `mxkeys_target_ready_bucket`)",
        ],
        "the families scraped:\n{scrape}"
    );

    let metrics_rs = std::fs::read_to_string(repo("src/daemon/metrics.rs")).unwrap();
    for name in CLUSTER_ONLY {
        assert!(
            metrics_rs.contains(&format!("\"{name}\"")),
            "{name} is allowed without a scrape, but src/daemon/metrics.rs no longer renders it"
        );
        assert!(
            !families.contains_key(*name),
            "{name} is scraped here: drop it from CLUSTER_ONLY"
        );
        also.insert((*name).to_owned());
    }
    let unknown = unknown_names(&exprs, &families, &also);
    assert!(
        unknown.is_empty(),
        "named in {DASHBOARD} or {RULES} but no family of /metrics:\n{}\nthe families scraped:\n{}",
        unknown.join("\n"),
        families
            .iter()
            .map(|(n, k)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A dashboard query as Prometheus would get it: Grafana's variables
/// replaced by plausible values.
fn substitute(expr: &str) -> String {
    let mut e = expr.to_owned();
    for (var, value) in [
        ("$__rate_interval", "1m"),
        ("$__interval", "30s"),
        ("$__range", "1d"),
        ("${__range}", "1d"),
        ("${__rate_interval}", "1m"),
        ("$__range_s", "86400"),
        ("${instance}", "mx1.example.com:9300"),
        ("$instance", "mx1.example.com:9300"),
    ] {
        e = e.replace(var, value);
    }
    e
}

#[test]
fn the_dashboards_queries_are_valid_promql() {
    if !require_programs("the_dashboards_queries_are_valid_promql", &[PROMTOOL]) {
        return;
    }
    let exprs = dashboard_exprs(&dashboard());
    assert!(!exprs.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let check = |exprs: &[String]| {
        let mut yaml = String::from("groups:\n- name: dashboard\n  rules:\n");
        for (i, e) in exprs.iter().enumerate() {
            let e = substitute(e);
            assert!(!e.contains('$'), "a Grafana variable left in `{e}`");
            // A JSON string is a YAML double-quoted scalar.
            yaml.push_str(&format!(
                "  - record: dashboard:query{i}\n    expr: {}\n",
                serde_json::to_string(&e).unwrap()
            ));
        }
        let file = dir.path().join("dashboard.rules.yml");
        std::fs::write(&file, yaml).unwrap();
        let mut c = Command::new(prog("promtool"));
        c.args(["check", "rules"]).arg(&file);
        let out = output_within(c, std::time::Duration::from_secs(60)).expect("promtool runs");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // promtool tells a syntax error (the check can fail).
    let (ok, said) = check(&["sum by (le (rate(mxkeys_reconciles_total[5m]))".to_owned()]);
    assert!(!ok, "promtool took a broken query: {said}");
    let (ok, said) = check(&exprs);
    assert!(
        ok,
        "promtool check rules on the dashboard's queries:\n{said}"
    );
    assert!(
        said.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{said}"
    );
}

#[test]
fn the_dashboard_is_an_importable_grafana_model_on_its_datasource_variable() {
    let dash = dashboard();
    assert_eq!(dash["uid"], "mxkeys");
    assert_eq!(dash["title"], "mxkeys");
    assert_eq!(dash["schemaVersion"], 39);
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs.iter().any(|i| i["name"] == "DS_PROMETHEUS"
            && i["type"] == "datasource"
            && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let vars = variables(&dash);
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    let ds = var("datasource");
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let instance = var("instance");
    assert_eq!(instance["type"], "query");
    assert_eq!(
        instance["definition"],
        "label_values(mxkeys_build_info, instance)"
    );

    let on_variable = |v: &Value| v["uid"] == "${datasource}" && v["type"] == "prometheus";
    assert!(on_variable(&instance["datasource"]), "{instance}");
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = dash["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = panels.pop() {
        let title = p["title"].as_str().unwrap_or_default();
        let id = p["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("panel {title:?} has no id"));
        assert!(ids.insert(id), "panel id {id} twice ({title:?})");
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel {title:?} gridPos"
        );
        if let Some(nested) = p["panels"].as_array() {
            panels.extend(nested);
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(
            on_variable(&p["datasource"]),
            "panel {title:?} is not on the datasource variable: {}",
            p["datasource"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            let r = t["refId"].as_str().filter(|r| !r.is_empty());
            let r = r.unwrap_or_else(|| panic!("a query of {title:?} has no refId: {t}"));
            assert!(refs.insert(r), "refId {r} twice in {title:?}");
            assert!(on_variable(&t["datasource"]), "{title:?}: {t}");
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title:?}: a query not filtered by $instance: {expr}"
            );
        }
    }
    assert!(ids.len() >= 20, "{} panels", ids.len());
}

#[test]
fn names_are_read_from_queries_outside_strings_and_numbers() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.9, sum by (le) (rate(mxkeys_reconcile_duration_seconds_bucket{instance=~\"mxkeys_x.*\",a='mxkeys_y'}[5m]))) / on() xmxkeys_z + mxkeys:rec - 1e3"
        ),
        BTreeSet::from(["mxkeys_reconcile_duration_seconds_bucket".to_owned()])
    );
    assert_eq!(
        variable_selector("label_values(mxkeys_build_info{job=\"a,b\"}, instance)"),
        "mxkeys_build_info{job=\"a,b\"}"
    );
}

const PROMETHEUS: &[Need] = &[("prometheus", "prometheus")];

/// `text` percent-encoded for a query string (RFC 3986 unreserved kept).
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server (Debian's `prometheus`) on a pool port,
/// scraping one daemon every second and evaluating `rules` if given.
struct Prometheus {
    port: u16,
    log: PathBuf,
    _child: KillOnDrop,
}

impl Prometheus {
    fn start(dir: &Path, target: &str, rules: Option<&Path>) -> Prometheus {
        std::fs::create_dir_all(dir).unwrap();
        let rule_files = rules
            .map(|r| format!("rule_files:\n  - {}\n", serde_json::to_string(r).unwrap()))
            .unwrap_or_default();
        let config = dir.join("prometheus.yml");
        write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}\
                 scrape_configs:\n  - job_name: mxkeys\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        );
        let port = free_port();
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(prog("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            port,
            log,
            _child: KillOnDrop(child),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET `path` of the HTTP API as JSON (`None` while not listening).
    fn api(&self, path: &str) -> Option<Value> {
        let (_, body) = http_get(self.port, path)?;
        serde_json::from_str(&body).ok()
    }

    /// The instant query's answer (`status` success or error).
    fn query(&self, q: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", url_encode(q)))
            .unwrap_or_else(|| panic!("no answer to {q}\n{}", self.log()))
    }

    /// The vector a successful instant query gave.
    fn vector(&self, q: &str) -> Vec<Value> {
        let v = self.query(q);
        assert_eq!(v["status"], "success", "{q}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// The value of each sample of `vector` by its label `label`.
fn by_label(vector: &[Value], label: &str) -> BTreeMap<String, f64> {
    vector
        .iter()
        .filter_map(|s| {
            let key = s["metric"][label].as_str()?.to_owned();
            let value = s["value"][1].as_str()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// The `ref_id` query of the dashboard's panel `title`.
fn panel_expr(dash: &Value, title: &str, ref_id: &str) -> String {
    let panels = dash["panels"].as_array().expect("panels");
    let panel = panels
        .iter()
        .find(|p| p["title"] == title)
        .unwrap_or_else(|| panic!("no panel {title:?}"));
    let target = panel["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["refId"] == ref_id));
    let target = target.unwrap_or_else(|| panic!("no query {ref_id} in {title:?}"));
    target["expr"].as_str().expect("expr").to_owned()
}

#[test]
fn the_dashboards_queries_and_the_rules_evaluate_in_a_real_prometheus_scraping_the_daemon() {
    if !require_programs(
        "the_dashboards_queries_and_the_rules_evaluate_in_a_real_prometheus_scraping_the_daemon",
        &[PROMETHEUS],
    ) {
        return;
    }
    let run = Running::start();
    let instance = format!("127.0.0.1:{}", run.metrics_port);
    let rules = Some(repo(RULES)).filter(|r| r.exists());
    let prom = Prometheus::start(&run.env.path("prometheus"), &instance, rules.as_deref());
    poll(
        "Prometheus to have scraped the daemon twice",
        servers::SERVER_DEADLINE,
        || {
            let v = prom.api(&format!(
                "/api/v1/query?query={}",
                url_encode("count_over_time(mxkeys_build_info[1m]) >= 2")
            ))?;
            (v["data"]["result"].as_array()?.len() == 1).then_some(())
        },
        || format!("{}\n{}", prom.log(), run.d.describe()),
    );

    // The instance variable's query finds the daemon.
    let dash = dashboard();
    let values = prom
        .api(&format!(
            "/api/v1/label/instance/values?{}={}",
            url_encode("match[]"),
            url_encode(variable_selector(
                "label_values(mxkeys_build_info, instance)"
            ))
        ))
        .expect("label values");
    assert!(
        values["data"]
            .as_array()
            .is_some_and(|v| v.iter().any(|i| i == &*instance)),
        "{values}"
    );

    // Every query evaluates on the daemon's series, without error.
    let on_instance = |e: &str| substitute(e).replace("mx1.example.com:9300", &instance);
    for e in dashboard_exprs(&dash) {
        let q = on_instance(&e);
        let v = prom.query(&q);
        assert_eq!(v["status"], "success", "{q}: {v}");
    }

    // The days left are the test certificate's, per target.
    let days = by_label(
        &prom.vector(&on_instance(&panel_expr(
            &dash,
            "Days left per target",
            "A",
        ))),
        "target",
    );
    let expected = (run.leaf.not_after - now()).as_seconds_f64() / 86_400.0;
    assert_eq!(
        days.keys().collect::<Vec<_>>(),
        ["mail", "smtp"],
        "{days:?}"
    );
    for (target, d) in &days {
        assert!(
            (d - expected).abs() < 0.01,
            "{target}: {d} days left, the certificate has {expected}"
        );
    }
    let ready = by_label(
        &prom.vector(&on_instance(&panel_expr(&dash, "Target ready", "A"))),
        "target",
    );
    assert_eq!(
        ready,
        BTreeMap::from([("mail".to_owned(), 1.0), ("smtp".to_owned(), 1.0)])
    );
    let last = prom.vector(&on_instance(&panel_expr(&dash, "Last reconcile", "A")));
    assert_eq!(
        by_label(&last, "instance"),
        BTreeMap::from([(instance.clone(), 1.0)])
    );
    let age = prom.vector(&on_instance(&panel_expr(&dash, "Last success age", "A")));
    assert!(
        by_label(&age, "instance")
            .get(&instance)
            .is_some_and(|a| *a >= 0.0),
        "{age:?}"
    );

    // Every rule evaluates without error on the same series.
    if rules.is_some() {
        let groups = poll(
            "Prometheus to evaluate every rule",
            servers::SERVER_DEADLINE,
            || {
                let v = prom.api("/api/v1/rules")?;
                let groups = v["data"]["groups"].as_array()?.clone();
                let evaluated = groups
                    .iter()
                    .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                    .all(|r| r["health"] != "unknown");
                (!groups.is_empty() && evaluated).then_some(groups)
            },
            || prom.log(),
        );
        for rule in groups
            .iter()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        {
            assert_eq!(
                rule["health"], "ok",
                "{}: {}",
                rule["name"], rule["lastError"]
            );
        }
    }
}

/// The DKIM series come from the daemon's own DKIM pass: a key whose
/// record no authoritative server answers (a socket that never replies)
/// is counted `published`, and its DNS deadline is the time it was
/// published plus the provider's `propagation_timeout` (2 s), read back
/// from the key book; no family has signed yet, so no signing series.
#[test]
fn a_key_waiting_for_dns_shows_its_deadline_in_the_daemons_metrics() {
    let ca = Ca::new("monitoring-dkim");
    let leaf = ca.issue(&LeafSpec::new(&[HOST]));
    let env = Env::new();
    let metrics_port = free_port();
    let dns_port = free_port();
    let _dns = std::net::UdpSocket::bind(("127.0.0.1", dns_port)).unwrap();
    let top = format!(
        "[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\
         [dns.paste]\ntype = \"manual\"\nzone = \"example.com\"\n\
         nameservers = [\"127.0.0.1:{dns_port}\"]\n\
         propagation_interval = \"1s\"\npropagation_timeout = \"2s\"\n\
         [dkim]\ndomains = [\"example.com\"]\nkey_dir = {keys}\ndns = \"paste\"\n\
         signer = \"opendkim\"\nsigner_dir = {signer}\n",
        keys = qp(&env.path("dkim-keys")),
        signer = qp(&env.path("signer")),
    );
    let mail = Target::new(&env, "mail");
    env.write_config_with(&top, &[files_source(&env.path("src"), &leaf)], &[&mail]);
    let d = env.daemon(&[]);
    let body = wait_for(
        "/metrics to show the published key's DNS deadline",
        || {
            let (code, body) = http_get(metrics_port, "/metrics")?;
            (code == 200
                && body
                    .lines()
                    .any(|l| l.starts_with("mxkeys_dkim_key_dns_deadline_timestamp_seconds{")))
            .then_some(body)
        },
        || d.describe(),
    );
    let book: Value = serde_json::from_str(
        &std::fs::read_to_string(env.state.join("dkim/state.json")).expect("the key book"),
    )
    .unwrap();
    let key = &book["keys"][0];
    let selector = key["selector"].as_str().expect("a selector");
    let since = key["since"].as_i64().expect("since");
    assert_eq!(key["state"], "published", "{book}");
    assert_eq!(
        metric(
            &body,
            &format!(
                "mxkeys_dkim_key_dns_deadline_timestamp_seconds{{domain=\"example.com\",selector=\"{selector}\"}}"
            )
        ),
        Some((since + 2) as f64),
        "{body}"
    );
    assert_eq!(
        metric(
            &body,
            "mxkeys_dkim_keys{domain=\"example.com\",state=\"published\"}"
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        !body.contains("\nmxkeys_dkim_signing_keys{"),
        "no family ever signed:\n{body}"
    );
}
