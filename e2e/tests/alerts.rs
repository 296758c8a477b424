//! The chart's alerts and dashboard against the metrics meshfed serves.
//!
//! * the PrometheusRule (`prometheusRule.enabled`), rendered by `helm
//!   template`, passes `promtool check rules`, and `promtool test rules` with
//!   e2e/testdata/prometheus-rules-test.yaml: every alert fires on a series
//!   that should fire it, after its `for:`, and stays silent on a healthy one;
//! * every alert names the federation (and the member, where it has one) and
//!   points at a section of docs/troubleshooting.md that exists;
//! * every query of the rules and of the Grafana dashboard
//!   (charts/meshfed-operator/dashboards/meshfed.json) names only metrics and
//!   labels listed in docs/reference.md's Metrics table (the operator's unit
//!   tests keep that table equal to what it serves), and the dashboard uses
//!   every one of them;
//! * the values reach the objects, and the schema rejects bad ones.
//!
//! Needs `helm` (e2e/testbed/build-helm.sh) and `promtool`
//! (e2e/testbed/build-promtool.sh, about five minutes on a cold cache).
use std::collections::{BTreeMap, BTreeSet};

use e2e::chart::{chart_dir, run, workspace};
use serde_json::Value;

const NAMESPACE: &str = e2e::mesh::OPERATOR_NAMESPACE;

/// Runs the pinned helm with its own state in a throwaway directory (never
/// the user's): Ok(stdout), or Err(what went wrong).
async fn helm(args: &[&str]) -> Result<String, String> {
    let helm = e2e::istiod::helm().await.expect("helm");
    e2e::chart::helm(&helm, args)
}

/// `helm template` of the chart with `set` (a `--set` argument, may be
/// empty): every rendered object, or helm's complaint.
async fn helm_template(set: &str) -> Result<Vec<Value>, String> {
    let helm = e2e::istiod::helm().await.expect("helm");
    match set.is_empty() {
        true => e2e::chart::render(&helm, &[]),
        false => e2e::chart::render(&helm, &["--set", set]),
    }
}

fn only<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind}");
    found[0]
}

// ---------------------------------------------------------------------------
// docs/reference.md's Metrics table, and the metrics and labels a query names
// ---------------------------------------------------------------------------

/// A metric of the Metrics table: its type and labels.
#[derive(Debug)]
struct Metric {
    kind: String,
    labels: BTreeSet<String>,
}

/// Every row of docs/reference.md's Metrics table, by name.
fn reference_metrics() -> BTreeMap<String, Metric> {
    let text = std::fs::read_to_string(workspace().join("docs/reference.md")).unwrap();
    let section = text
        .split("\n## ")
        .find(|s| s.starts_with("Metrics"))
        .expect("docs/reference.md has a Metrics section");
    let mut metrics = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `meshfed_")) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(
            cells.len() >= 3,
            "a metric row with type and labels: {line}"
        );
        let name = cells[0].trim_matches('`').to_string();
        let labels = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty())
            .collect();
        metrics.insert(
            name,
            Metric {
                kind: cells[1].to_string(),
                labels,
            },
        );
    }
    assert!(
        metrics.len() >= 10,
        "the Metrics table of docs/reference.md lists meshfed's metrics: {metrics:?}"
    );
    metrics
}

/// The table's metric a series name belongs to (a histogram's `_bucket`,
/// `_sum` and `_count` belong to it), and whether it is a bucket.
fn served<'a>(name: &str, metrics: &'a BTreeMap<String, Metric>) -> Option<(&'a str, bool)> {
    if let Some((n, _)) = metrics.get_key_value(name) {
        return Some((n, false));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && let Some((n, m)) = metrics.get_key_value(base)
            && m.kind == "histogram"
        {
            return Some((n, suffix == "_bucket"));
        }
    }
    None
}

/// Metric names and label names in a PromQL expression (Grafana's `$var`s
/// allowed). A small lexer, enough for the queries here: string literals
/// are skipped, identifiers in `{}` and in `by`/`without`/`on`/`ignoring`/
/// `group_*` lists are labels, ranges are skipped, an identifier before `(`
/// is a function (or an aggregation, also before `by`), and every other identifier is a metric.
fn names_in(expr: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "inf",
        "nan",
        // aggregations, whose `by (...)` may come before their `(`
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let (mut metrics, mut labels) = (BTreeSet::new(), BTreeSet::new());
    let (mut braces, mut brackets, mut label_list) = (0usize, 0usize, false);
    let mut previous = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => brackets += 1,
            ']' => brackets = brackets.saturating_sub(1),
            '(' if LABEL_LISTS.contains(&previous.as_str()) => label_list = true,
            ')' if label_list => label_list = false,
            '$' => {
                // A Grafana variable: skip its name.
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        if c.is_ascii_digit() || c == '.' {
            // A number or a duration (5m, 0.95, 1e3).
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            previous.clear();
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if brackets > 0 {
                // a range or subquery duration
            } else if braces > 0 || label_list {
                labels.insert(word.clone());
            } else if KEYWORDS.contains(&word.as_str()) || next == Some(&'(') {
                // an operator, or a function or aggregation
            } else {
                metrics.insert(word.clone());
            }
            previous = word;
            continue;
        }
        if !c.is_whitespace() {
            previous.clear();
        }
        i += 1;
    }
    (metrics, labels)
}

/// Complaints about `expr`: metrics the table does not list, and labels that
/// none of the metrics it names has. Returns the table's metrics it uses.
fn check_expr(
    what: &str,
    expr: &str,
    metrics: &BTreeMap<String, Metric>,
    complaints: &mut Vec<String>,
) -> BTreeSet<String> {
    let (names, labels) = names_in(expr);
    if names.is_empty() {
        complaints.push(format!("{what}: `{expr}` names no metric"));
    }
    let mut used = BTreeSet::new();
    let mut allowed = BTreeSet::new();
    for name in &names {
        match served(name, metrics) {
            Some((base, bucket)) => {
                used.insert(base.to_string());
                allowed.extend(metrics[base].labels.iter().cloned());
                if bucket {
                    allowed.insert("le".to_string());
                }
            }
            None => complaints.push(format!(
                "{what}: `{name}` in `{expr}` is not in docs/reference.md's Metrics table"
            )),
        }
    }
    for label in labels.difference(&allowed) {
        complaints.push(format!(
            "{what}: label `{label}` in `{expr}` belongs to none of its metrics ({names:?})"
        ));
    }
    used
}

#[test]
fn the_promql_lexer_tells_metrics_from_labels_and_functions() {
    let (m, l) = names_in(
        r#"histogram_quantile(0.95, sum by (federation, le) (rate(meshfed_reconcile_duration_seconds_bucket{federation=~"$federation", x="a{b}"}[$__rate_interval])))
            / on (federation) group_left meshfed_root_expiry_seconds offset 5m > 1e3 and up"#,
    );
    assert_eq!(
        m,
        BTreeSet::from(
            [
                "meshfed_reconcile_duration_seconds_bucket",
                "meshfed_root_expiry_seconds",
                "up"
            ]
            .map(String::from)
        )
    );
    assert_eq!(
        l,
        BTreeSet::from(["federation", "le", "x"].map(String::from))
    );
    let metrics = reference_metrics();
    let mut complaints = Vec::new();
    check_expr(
        "x",
        r#"sum by (pod) (meshfed_member_ready{zone="a"}) + node_load1"#,
        &metrics,
        &mut complaints,
    );
    assert_eq!(complaints.len(), 3, "{complaints:#?}");
}

// ---------------------------------------------------------------------------
// PrometheusRule
// ---------------------------------------------------------------------------

/// GitHub's anchor of a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor of docs/troubleshooting.md's headings.
fn troubleshooting_anchors() -> BTreeSet<String> {
    std::fs::read_to_string(workspace().join("docs/troubleshooting.md"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|l| anchor(l.trim_start_matches('#')))
        .collect()
}

/// `name{a="b",c="d"}` as its name and labels.
fn parse_series(series: &str) -> (String, BTreeMap<String, String>) {
    let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
    let labels = rest
        .trim_end_matches('}')
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').expect("label=\"value\"");
            (k.trim().to_string(), v.trim().trim_matches('"').to_string())
        })
        .collect();
    (name.trim().to_string(), labels)
}

#[tokio::test]
async fn prometheus_rule_passes_promtool_and_its_fixtures() {
    let objects = helm_template("prometheusRule.enabled=true").await.unwrap();
    let rule = only(&objects, "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], NAMESPACE);
    let spec = &rule["spec"];
    let rules: Vec<&Value> = spec["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();

    // What each alert says and queries.
    let metrics = reference_metrics();
    let anchors = troubleshooting_anchors();
    let mut complaints = Vec::new();
    let mut alerts = BTreeMap::new();
    for r in &rules {
        let name = r["alert"]
            .as_str()
            .expect("only alerting rules")
            .to_string();
        let expr = r["expr"].as_str().unwrap();
        let used = check_expr(&name, expr, &metrics, &mut complaints);
        let per_member = used.iter().any(|m| metrics[m].labels.contains("member"));
        let annotations = &r["annotations"];
        let text = format!("{} {}", annotations["summary"], annotations["description"]);
        for label in ["federation"]
            .into_iter()
            .chain(per_member.then_some("member"))
        {
            let wanted = format!("{{{{ $labels.{label} }}}}");
            if !annotations["summary"]
                .as_str()
                .unwrap_or("")
                .contains(&wanted)
            {
                complaints.push(format!("{name}: its summary does not name the {label}"));
            }
        }
        match text.split_once("docs/troubleshooting.md#") {
            Some((_, rest)) => {
                let target: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_'))
                    .collect();
                if !anchors.contains(&target) {
                    complaints.push(format!(
                        "{name}: docs/troubleshooting.md has no section #{target}"
                    ));
                }
            }
            None => complaints.push(format!(
                "{name}: points at no docs/troubleshooting.md section"
            )),
        }
        if r["labels"]["severity"].as_str().is_none() {
            complaints.push(format!("{name}: no severity label"));
        }
        assert!(
            alerts.insert(name.clone(), used).is_none(),
            "{name} is defined twice"
        );
    }
    for wanted in [
        "MeshfedIntermediateExpiringSoon",
        "MeshfedRootExpiringSoon",
        "MeshfedRemoteSecretTokenExpiringSoon",
        "MeshfedMemberUnreachable",
        "MeshfedMemberWithdrawn",
        "MeshfedControlPlaneRolloutHalted",
        "MeshfedRootRotationStuck",
        "MeshfedRootRotationDrainStuck",
        "MeshfedReconcileErrors",
    ] {
        assert!(alerts.contains_key(wanted), "{wanted} is missing");
    }

    // The fixtures cover every alert: firing on some subject, silent on
    // another (a healthy member or federation) and before its `for:`.
    let fixtures_path = workspace().join("e2e/testdata/prometheus-rules-test.yaml");
    let fixtures: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&fixtures_path).unwrap()).unwrap();
    for (alert, used) in &alerts {
        let (mut fires, mut silent) = (false, false);
        for group in fixtures["tests"].as_array().unwrap() {
            let subjects: BTreeSet<BTreeMap<String, String>> = group["input_series"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| parse_series(s["series"].as_str().unwrap()))
                .filter(|(name, _)| served(name, &metrics).is_some_and(|(m, _)| used.contains(m)))
                .map(|(_, labels)| {
                    labels
                        .into_iter()
                        .filter(|(k, _)| k == "federation" || k == "member")
                        .collect()
                })
                .collect();
            for case in group["alert_rule_test"].as_array().unwrap() {
                if case["alertname"] != alert.as_str() {
                    continue;
                }
                let expected = case["exp_alerts"].as_array().map_or(0, Vec::len);
                silent |= expected == 0;
                // More subjects than alerts: one of them stays silent.
                fires |= expected > 0 && subjects.len() > expected;
            }
        }
        if !fires {
            complaints.push(format!(
                "{alert}: no fixture fires it while a healthy subject stays silent"
            ));
        }
        if !silent {
            complaints.push(format!("{alert}: no fixture expects it silent"));
        }
    }
    assert!(complaints.is_empty(), "{complaints:#?}");

    // promtool on the rendered rules, exactly as the PrometheusRule holds them.
    let promtool = e2e::istiod::promtool().await.expect("promtool");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(spec).unwrap(),
    )
    .unwrap();
    std::fs::copy(&fixtures_path, dir.path().join("rules-test.yaml")).unwrap();
    let checked = run(&promtool, &["check", "rules", "rules.yaml"], dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", rules.len())),
        "{checked}"
    );
    let tested = run(&promtool, &["test", "rules", "rules-test.yaml"], dir.path())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(tested.contains("SUCCESS"), "{tested}");
    eprintln!(
        "promtool: {} rules checked, fixtures passed for {:?}",
        rules.len(),
        alerts.keys()
    );
}

#[tokio::test]
async fn prometheus_rule_and_dashboard_follow_their_values() {
    // Both templates switched on lint.
    let chart = chart_dir();
    let lint = helm(&[
        "lint",
        "--strict",
        chart.to_str().unwrap(),
        "--set",
        "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
    ])
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    // Off by default.
    let defaults = helm_template("").await.unwrap();
    assert!(!defaults.iter().any(|o| o["kind"] == "PrometheusRule"));
    assert!(
        !defaults.iter().any(|o| o["kind"] == "ConfigMap"
            && o["metadata"]["labels"]["grafana_dashboard"].is_string()),
        "the dashboard is opt-in"
    );

    let set = [
        "prometheusRule.enabled=true",
        "prometheusRule.labels.release=prom",
        "prometheusRule.alertLabels.team=mesh",
        "prometheusRule.runbookBaseUrl=https://docs.example.com/meshfed/docs/",
        "prometheusRule.intermediateExpiryDays=7",
        "prometheusRule.rootExpiryDays=30",
        "prometheusRule.tokenExpiryHours=2",
        "prometheusRule.memberUnreachableFor=3m",
        "prometheusRule.memberWithdrawnFor=2m",
        "prometheusRule.rolloutHaltedFor=4m",
        "prometheusRule.rootRotationStuckFor=2h",
        "prometheusRule.rootRotationDrainStuckFor=50h",
        "prometheusRule.reconcileErrorsFor=30m",
    ]
    .join(",");
    let objects = helm_template(&set).await.unwrap();
    let rule = only(&objects, "PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"], "prom");
    let by_alert: BTreeMap<&str, &Value> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["alert"].as_str().unwrap(), r))
        .collect();
    for (alert, expr, r#for) in [
        (
            "MeshfedIntermediateExpiringSoon",
            "meshfed_intermediate_expiry_seconds < 7 * 86400",
            "15m",
        ),
        (
            "MeshfedRootExpiringSoon",
            "meshfed_root_expiry_seconds < 30 * 86400",
            "15m",
        ),
        (
            "MeshfedRemoteSecretTokenExpiringSoon",
            "meshfed_remote_secret_token_expiry_seconds < 2 * 3600",
            "5m",
        ),
        (
            "MeshfedMemberUnreachable",
            "meshfed_member_reachable == 0",
            "3m",
        ),
        (
            "MeshfedMemberWithdrawn",
            "meshfed_member_withdrawn == 1",
            "2m",
        ),
        (
            "MeshfedControlPlaneRolloutHalted",
            r#"meshfed_control_plane_rollout_phase{phase="Halted"} == 1"#,
            "4m",
        ),
        (
            "MeshfedRootRotationStuck",
            r#"meshfed_root_rotation_phase{phase=~"TrustBoth|SignWithNew|TrustNew"} == 1"#,
            "2h",
        ),
        (
            "MeshfedRootRotationDrainStuck",
            r#"meshfed_root_rotation_phase{phase=~"Drain"} == 1"#,
            "50h",
        ),
        (
            "MeshfedReconcileErrors",
            r#"sum by (federation) (increase(meshfed_reconciles_total{result="error"}[5m])) > 0"#,
            "30m",
        ),
    ] {
        let r = by_alert[alert];
        assert_eq!(r["expr"], expr, "{alert}");
        assert_eq!(r["for"], r#for, "{alert}");
        assert_eq!(r["labels"]["team"], "mesh", "{alert}: alertLabels");
        let runbook = r["annotations"]["runbook_url"].as_str().unwrap();
        assert!(
            runbook.starts_with("https://docs.example.com/meshfed/docs/troubleshooting.md#"),
            "{alert}: {runbook}"
        );
    }
    assert_eq!(by_alert.len(), 9);
    // Without a base URL, no runbook_url.
    let plain = helm_template("prometheusRule.enabled=true").await.unwrap();
    assert!(
        !serde_json::to_string(only(&plain, "PrometheusRule"))
            .unwrap()
            .contains("runbook_url")
    );

    // The dashboard's ConfigMap: the sidecar's label, then a configured one.
    let dashboard_file =
        std::fs::read_to_string(chart_dir().join("dashboards/meshfed.json")).unwrap();
    let on = helm_template("grafanaDashboard.enabled=true")
        .await
        .unwrap();
    let cm = only(&on, "ConfigMap");
    assert_eq!(cm["metadata"]["name"], "meshfed-operator-dashboard");
    assert_eq!(cm["metadata"]["namespace"], NAMESPACE);
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let rendered: Value = serde_json::from_str(cm["data"]["meshfed.json"].as_str().unwrap())
        .expect("the ConfigMap holds JSON");
    assert_eq!(
        rendered,
        serde_json::from_str::<Value>(&dashboard_file).unwrap(),
        "the ConfigMap holds dashboards/meshfed.json"
    );
    let custom = helm_template(
        "grafanaDashboard.enabled=true,grafanaDashboard.label=example.com/dashboard,\
         grafanaDashboard.labelValue=meshfed,grafanaDashboard.namespace=monitoring,\
         grafanaDashboard.annotations.grafana_folder=Mesh",
    )
    .await
    .unwrap();
    let cm = only(&custom, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["example.com/dashboard"], "meshfed");
    assert!(cm["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(cm["metadata"]["namespace"], "monitoring");
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"], "Mesh");

    // The schema refuses bad values.
    for (set, complaint) in [
        ("prometheusRule.enabled=yes", "/prometheusRule/enabled"),
        (
            "prometheusRule.memberUnreachableFor=10",
            "/prometheusRule/memberUnreachableFor",
        ),
        (
            "prometheusRule.rootRotationStuckFor=1 hour",
            "/prometheusRule/rootRotationStuckFor",
        ),
        (
            "prometheusRule.intermediateExpiryDays=0",
            "/prometheusRule/intermediateExpiryDays",
        ),
        (
            "prometheusRule.tokenExpiryHours=soon",
            "/prometheusRule/tokenExpiryHours",
        ),
        (
            "prometheusRule.runbookBaseUrl=docs",
            "/prometheusRule/runbookBaseUrl",
        ),
        (
            "prometheusRule.severity=page",
            "additional properties 'severity'",
        ),
        (
            "grafanaDashboard.label=not a label",
            "/grafanaDashboard/label",
        ),
        (
            "grafanaDashboard.labelValue=a b",
            "/grafanaDashboard/labelValue",
        ),
        (
            "grafanaDashboard.namespace=Monitoring",
            "/grafanaDashboard/namespace",
        ),
    ] {
        let err = helm_template(set)
            .await
            .expect_err(&format!("--set {set} must be rejected"));
        assert!(
            err.contains("values don't meet the specifications of the schema")
                && err.contains(complaint),
            "--set {set}: expected a schema error about {complaint}, got:\n{err}"
        );
    }
}

// ---------------------------------------------------------------------------
// Grafana dashboard
// ---------------------------------------------------------------------------

/// Every panel, rows' collapsed panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        all.push(p);
        if let Some(inner) = p["panels"].as_array() {
            all.extend(inner);
        }
    }
    all
}

#[tokio::test]
async fn dashboard_queries_name_only_served_metrics_and_use_them_all() {
    let path = chart_dir().join("dashboards/meshfed.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .expect("dashboards/meshfed.json is JSON");
    let metrics = reference_metrics();
    let mut complaints = Vec::new();
    let mut used = BTreeSet::new();
    let mut exprs = Vec::new();

    let mut ids = BTreeSet::new();
    for panel in panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        if !ids.insert(panel["id"].as_u64().expect("a panel id")) {
            complaints.push(format!("panel {title}: id {} twice", panel["id"]));
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            complaints.push(format!("panel {title}: not on the $datasource variable"));
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if targets.is_empty() {
            complaints.push(format!("panel {title}: no query"));
        }
        for t in targets {
            let expr = t["expr"].as_str().expect("a PromQL target");
            used.extend(check_expr(
                &format!("panel {title}"),
                expr,
                &metrics,
                &mut complaints,
            ));
            exprs.push(expr.to_string());
        }
    }
    // The variables' queries too: label_values(metric{...}, label).
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"].as_str().unwrap();
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .unwrap_or_else(|| panic!("variable {}: label_values(metric, label)", var["name"]));
        let what = format!("variable {}", var["name"]);
        used.extend(check_expr(&what, inner.0, &metrics, &mut complaints));
        let label = inner.1.trim();
        let (names, _) = names_in(inner.0);
        if !names
            .iter()
            .filter_map(|n| served(n, &metrics))
            .any(|(m, _)| metrics[m].labels.contains(label))
        {
            complaints.push(format!("{what}: no metric in `{query}` has label {label}"));
        }
    }
    // Every metric meshfed serves has a panel.
    let unused: Vec<&String> = metrics.keys().filter(|m| !used.contains(*m)).collect();
    if !unused.is_empty() {
        complaints.push(format!("metrics on no panel: {unused:?}"));
    }
    assert!(complaints.is_empty(), "{complaints:#?}");

    // Every query parses: promtool checks them as recording rules, with
    // Grafana's variables replaced by what they expand to.
    let promtool = e2e::istiod::promtool().await.expect("promtool");
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let expr = e
                .replace("$__rate_interval", "5m")
                .replace("$federation", ".*")
                .replace("$member", ".*");
            serde_json::json!({"record": format!("meshfed:dashboard_query_{i}"), "expr": expr})
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(
        dir.path().join("dashboard.yaml"),
        serde_yaml::to_string(&file).unwrap(),
    )
    .unwrap();
    let checked = run(
        &promtool,
        &["check", "rules", "--lint=none", "dashboard.yaml"],
        dir.path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{checked}"
    );
    eprintln!(
        "dashboard: {} queries over {} metrics",
        exprs.len(),
        used.len()
    );
}
