//! The monitoring shipped in `deploy/prometheus/` (docs/architecture.md §10): the alert rules pass
//! `promtool check rules` and their unit tests, every alert is tested both firing and quiet
//! (and its tests notice a rule that never fires), every query of the Grafana dashboard is
//! PromQL that promtool accepts, and every metric the three files name is one splicer exports.
//! Fails when `promtool` is not installed.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::prometheus::run_promtool;
use common::{metrics_text, start_splicer};

const RULES: &str = "splicer.rules.yml";
const RULE_TESTS: &str = "splicer.rules.test.yml";
const DASHBOARD: &str = "grafana-dashboard.json";

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
}

/// The names of the alerts in the rules file (`- alert: NAME`), in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn rules_pass_promtool_check() {
    let (ok, out) = run_promtool(&dir(), &["check", "rules", RULES]);
    assert!(ok, "promtool check rules {RULES}:\n{out}");
    let alerts = alert_names(&read(RULES));
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{out}"
    );
    for required in [
        "SplicerBackendDown",
        "SplicerPoolFailingOpen",
        "SplicerClusterHealthFailing",
        "SplicerSharedOutage",
        "SplicerFileDescriptorsNearLimit",
        "SplicerConfigReloadFailed",
        "SplicerUpgradeFailed",
    ] {
        assert!(
            alerts.iter().any(|a| a == required),
            "{required} missing: {alerts:?}"
        );
    }
}

#[test]
fn rules_pass_their_unit_tests() {
    let (ok, out) = run_promtool(&dir(), &["test", "rules", RULE_TESTS]);
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{out}");
}

/// The alert test cases of the unit-test file: (alert name, whether it expects alerts).
fn alert_cases(tests: &str) -> Vec<(String, bool)> {
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let mut cases = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_prefix("alertname:") else {
            continue;
        };
        let expects = lines[i + 1..]
            .iter()
            .find_map(|l| l.strip_prefix("exp_alerts:"))
            .unwrap_or_else(|| panic!("case of {name} without exp_alerts"));
        cases.push((name.trim().to_string(), expects.trim() != "[]"));
    }
    cases
}

#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let alerts = alert_names(&read(RULES));
    let cases = alert_cases(&read(RULE_TESTS));
    for alert in &alerts {
        for (firing, kind) in [(true, "fires"), (false, "stays quiet")] {
            assert!(
                cases.iter().any(|(a, f)| a == alert && *f == firing),
                "{RULE_TESTS} has no case where {alert} {kind}"
            );
        }
    }
    for (alert, _) in &cases {
        assert!(
            alerts.contains(alert),
            "{RULE_TESTS} tests {alert}, which {RULES} does not define"
        );
    }
}

/// `rules` with the `expr:` of `alert` (and its continuation lines) replaced by `expr`.
fn with_expr(rules: &str, alert: &str, expr: &str) -> String {
    let mut out = Vec::new();
    let mut in_alert = false;
    let mut skipping: Option<usize> = None;
    let mut replaced = false;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(at) = skipping {
            if !line.trim().is_empty() && indent > at {
                continue;
            }
            skipping = None;
        }
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            in_alert = name.trim() == alert;
        }
        if in_alert && !replaced && line.trim_start().starts_with("expr:") {
            out.push(format!("{}expr: {expr}", " ".repeat(indent)));
            skipping = Some(indent);
            replaced = true;
            continue;
        }
        out.push(line.to_string());
    }
    assert!(replaced, "no expr for {alert}");
    out.join("\n") + "\n"
}

/// The firing cases must be what make the tests pass: with any one rule made never to fire,
/// the unit tests fail on that alert.
#[test]
fn the_tests_notice_an_alert_that_never_fires() {
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join(RULE_TESTS), &tests).expect("copy the tests");
    for alert in alert_names(&rules) {
        std::fs::write(
            work.path().join(RULES),
            with_expr(&rules, &alert, "vector(0) > 1"),
        )
        .expect("write the mutated rules");
        let (ok, out) = run_promtool(work.path(), &["test", "rules", RULE_TESTS]);
        assert!(
            !ok && out.contains(&format!("alertname: {alert}")),
            "{alert} never firing went unnoticed by {RULE_TESTS}:\n{out}"
        );
    }
}

#[test]
fn with_expr_replaces_one_rules_expression() {
    let rules = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: >-\n          up\n          == 0\n        for: 1m\n      - alert: B\n        expr: up == 1\n";
    let got = with_expr(rules, "A", "vector(0)");
    assert_eq!(
        got,
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: vector(0)\n        for: 1m\n      - alert: B\n        expr: up == 1\n"
    );
}

// ---- the dashboard ----------------------------------------------------------------------------

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every value of a key called `key`, anywhere in `v`.
fn values_of<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, child) in map {
                if k == key {
                    out.push(child);
                }
                values_of(child, key, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| values_of(i, key, out)),
        _ => {}
    }
}

/// The dashboard's template variables (name, query).
fn variables(d: &serde_json::Value) -> Vec<(String, String)> {
    d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| {
            let name = v["name"].as_str().expect("a variable's name").to_string();
            let query = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .expect("a variable's query")
                .to_string();
            (name, query)
        })
        .collect()
}

/// `expr` with Grafana's variables replaced by values a real dashboard could have.
fn substitute(expr: &str, variables: &[(String, String)]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "1h");
    for (name, _) in variables {
        let value = match name.as_str() {
            "instance" => "10.0.0.5:9090",
            "pool" => "quay",
            other => panic!("no test value for the dashboard variable ${other}"),
        };
        e = e
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("${name}"), value);
    }
    assert!(!e.contains('$'), "a variable is left in {e}");
    e
}

/// Every PromQL expression of the dashboard, variables substituted: the panels' `expr`s and
/// the selectors inside the variables' `label_values(...)` queries.
fn dashboard_exprs() -> Vec<String> {
    let d = dashboard();
    let vars = variables(&d);
    let mut found = Vec::new();
    values_of(&d, "expr", &mut found);
    let mut exprs: Vec<String> = found
        .iter()
        .map(|v| substitute(v.as_str().expect("expr is a string"), &vars))
        .collect();
    for (name, query) in &vars {
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector.trim())
            .unwrap_or_else(|| panic!("variable {name}: not label_values(selector, label)"));
        exprs.push(substitute(inner, &vars));
    }
    exprs
}

#[test]
fn every_dashboard_query_is_promql_that_promtool_accepts() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() > 20, "{} queries", exprs.len());
    // Each expression as a recording rule: `promtool check rules` parses it with Prometheus'
    // own PromQL parser. JSON strings are valid YAML double-quoted scalars.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let quoted = serde_json::to_string(e).expect("quote");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {quoted}\n"
        ));
    }
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(work.path().join("dashboard.rules.yml"), &rules).expect("write");
    let (ok, out) = run_promtool(work.path(), &["check", "rules", "dashboard.rules.yml"]);
    assert!(
        ok,
        "promtool rejects a dashboard query:\n{out}\n---\n{rules}"
    );
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{out}"
    );
}

#[test]
fn the_dashboard_takes_its_data_source_as_an_input() {
    let d = dashboard();
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );
    let mut sources = Vec::new();
    values_of(&d, "datasource", &mut sources);
    let mut prometheus = 0;
    for s in sources {
        if s["type"] == "grafana" {
            continue; // the built-in annotations
        }
        assert_eq!(s["uid"], "${DS_PROMETHEUS}", "{s}");
        prometheus += 1;
    }
    assert!(prometheus > 20);
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate id {p}"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "no gridPos: {p}");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
    }
}

/// The panels the operator needs, each found by a metric its queries use.
#[test]
fn the_dashboard_covers_what_an_operator_watches() {
    let all = dashboard_exprs().join("\n");
    for metric in [
        "splicer_backend_up",
        "splicer_backend_state",
        "splicer_backend_active_connections",
        "splicer_listener_connections_total",
        "splicer_backend_bytes_total",
        "splicer_backend_connect_duration_seconds_bucket",
        "splicer_listener_connection_duration_seconds_bucket",
        "splicer_health_checks_total",
        "splicer_health_check_duration_seconds_bucket",
        "splicer_pool_fail_open",
        "splicer_cluster_health_up",
        "splicer_pool_shared_outage",
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "splicer_config_reloads_total",
        "splicer_upgrades_total",
    ] {
        assert!(
            names_in(&all).contains(metric),
            "no dashboard query uses {metric}"
        );
    }
}

// ---- metric names -----------------------------------------------------------------------------

/// Identifiers in `text` that look like splicer's metric names (`splicer_...`, `process_...`),
/// outside comment lines and label values (`="..."`, `=~"..."`).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut word = String::new();
        let mut prev = ' ';
        let mut chars = line.chars().chain([' ']);
        while let Some(c) = chars.next() {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                word.push(c);
            } else {
                if word.starts_with("splicer_") || word.starts_with("process_") {
                    names.insert(word.clone());
                }
                word.clear();
                if c == '"' && matches!(prev, '=' | '~') {
                    // A label value: up to its closing, unescaped quote.
                    let mut escaped = false;
                    for v in chars.by_ref() {
                        match v {
                            _ if escaped => escaped = false,
                            '\\' => escaped = true,
                            '"' => break,
                            _ => {}
                        }
                    }
                }
            }
            prev = c;
        }
    }
    names
}

/// The sample names splicer exports, from a real scrape: counters with `_total`, histograms
/// with `_bucket`, `_sum` and `_count`.
async fn exported_names() -> BTreeSet<String> {
    let splicer = start_splicer(
        r#"
[[listener]]
name = "in"
bind = "127.0.0.1:0"
pool = "p"

[[pool]]
name = "p"
backends = ["127.0.0.1:9"]

[pool.health]
check = "none"
"#,
    )
    .await;
    let text = metrics_text(splicer.admin).await;
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    assert!(names.len() > 30, "{text}");
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_named_is_one_splicer_exports() {
    let exported = exported_names().await;
    let files = [
        (RULES, names_in(&read(RULES))),
        (RULE_TESTS, names_in(&read(RULE_TESTS))),
        (DASHBOARD, names_in(&dashboard_exprs().join("\n"))),
    ];
    for (file, names) in &files {
        assert!(names.len() >= 5, "{file}: only {names:?}");
        let unknown: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics splicer does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
}

#[test]
fn names_are_found_in_expressions_and_series() {
    let got = names_in(
        "# splicer_in_a_comment\n\
         expr: sum by (pool) (splicer_backend_up{job=\"splicer\",pool=~\"splicer_x\"}) / process_max_fds\n\
         - series: 'splicer_pool_fail_open{pool=\"quay\"}'\n",
    );
    let want: BTreeSet<String> = [
        "splicer_backend_up",
        "process_max_fds",
        "splicer_pool_fail_open",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(got, want);
}
