#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

//! deploy/optional/monitoring: its alerts fire when and as `tests/alerts.test.yaml` says on
//! recorded series (`promtool test rules`, from Debian's prometheus package), and every metric
//! the alerts and the Grafana dashboard query is one the agents export (or kubelet's, listed
//! here), so a renamed metric cannot leave an alert that never fires.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// Metrics of other components that the alerts use.
const EXTERNAL: &[&str] = &["kubelet_volume_stats_health_status_abnormal"];

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/optional/monitoring")
}

fn yaml(path: &Path) -> Value {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn promtool(dir: &Path, args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is missing: run scripts/setup.sh");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alerts_fire_as_the_recorded_series_say() {
    let rule = yaml(&monitoring().join("prometheusrule.yaml"));
    let dir = tempfile::tempdir().unwrap();
    // The PrometheusRule's groups are a Prometheus rules file (JSON is YAML).
    std::fs::write(dir.path().join("rules.yaml"), rule["spec"].to_string()).unwrap();
    std::fs::copy(
        monitoring().join("tests/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )
    .unwrap();
    promtool(dir.path(), &["check", "rules", "rules.yaml"]);
    promtool(dir.path(), &["test", "rules", "alerts.test.yaml"]);
    // Every alert has a test.
    let tests = std::fs::read_to_string(dir.path().join("alerts.test.yaml")).unwrap();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for alert in group["rules"].as_array().unwrap() {
            let name = alert["alert"].as_str().unwrap();
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "alert {name} has no test in tests/alerts.test.yaml"
            );
        }
    }
}

/// The metric names a PromQL expression mentions (Tether's and kubelet's).
fn metrics_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tether_") || w.starts_with("kubelet_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn alerts_and_the_dashboard_query_only_metrics_the_agents_export() {
    let exported: BTreeSet<String> = cni_overlay::daemon::metrics::exposed_names()
        .into_iter()
        .chain(tether_netpol::metrics::exposed_names())
        .chain(tether_csi::metrics::exposed_names())
        .chain(EXTERNAL.iter().map(|s| s.to_string()))
        .collect();
    let mut queried = Vec::new();
    let rule = yaml(&monitoring().join("prometheusrule.yaml"));
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for alert in group["rules"].as_array().unwrap() {
            let name = alert["alert"].as_str().unwrap().to_string();
            for metric in metrics_in(alert["expr"].as_str().unwrap()) {
                queried.push((format!("alert {name}"), metric));
            }
        }
    }
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring().join("dashboard.json")).unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            for metric in metrics_in(target["expr"].as_str().unwrap()) {
                queried.push((format!("panel {:?}", panel["title"]), metric));
            }
        }
    }
    assert!(queried.len() > 20, "{queried:?}");
    let unknown: Vec<_> = queried
        .iter()
        .filter(|(_, metric)| !exported.contains(metric))
        .collect();
    assert!(
        unknown.is_empty(),
        "queried but not exported: {unknown:?}\nexported: {exported:?}"
    );
}
