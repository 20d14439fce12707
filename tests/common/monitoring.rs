//! The chart's monitoring as rendered: the PrometheusRule's rules and the Grafana
//! dashboard's queries, and the metric names they use.
#![allow(dead_code)]

use std::process::Command;

use super::tools::{self, root};

pub struct Monitoring {
    /// The PrometheusRule's spec (a Prometheus rules file), as JSON.
    pub rules: serde_json::Value,
    pub rule_exprs: Vec<String>,
    /// Every panel target's query, with Grafana's variables filled in.
    pub dashboard_exprs: Vec<String>,
    pub panel_titles: Vec<String>,
}

/// Render the chart (minimal values) with the dashboard and the rules on.
pub fn render() -> Monitoring {
    let text = tools::run_ok(
        Command::new(tools::helm())
            .arg("template")
            .arg("apns")
            .arg(root().join("helm/apns-worker"))
            .arg("-f")
            .arg(root().join("helm/apns-worker/ci/minimal-values.yaml"))
            .args([
                "--set",
                "grafanaDashboard.enabled=true,prometheusRule.enabled=true",
            ]),
    );
    let docs = tools::yaml_docs(&text);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule");
    let rules = rule["spec"].clone();
    let rule_exprs = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect();
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["apns-worker.json"].is_string())
        .expect("the dashboard's ConfigMap");
    assert_eq!(
        cm["metadata"]["labels"]["grafana_dashboard"], "1",
        "the Grafana sidecar's label"
    );
    let dash: serde_json::Value =
        serde_json::from_str(cm["data"]["apns-worker.json"].as_str().unwrap()).unwrap();
    let mut dashboard_exprs = Vec::new();
    let mut panel_titles = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        panel_titles.push(p["title"].as_str().unwrap().to_string());
        for t in p["targets"].as_array().unwrap() {
            dashboard_exprs.push(
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "5m")
                    .replace("$namespace", "default")
                    .replace("$queue", "apns\\\\.jobs"),
            );
        }
    }
    Monitoring {
        rules,
        rule_exprs,
        dashboard_exprs,
        panel_titles,
    }
}

/// The series an expression names (ours and RabbitMQ's).
pub fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            if word.starts_with("apns_worker_") || word.starts_with("rabbitmq_") {
                out.push(word.clone());
            }
            word.clear();
        }
    }
    out
}

/// Does a Prometheus exposition have a sample of `name`?
pub fn exposes(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}
