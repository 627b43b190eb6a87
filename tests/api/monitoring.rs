//! The monitoring that ships with the service (`docs/monitoring/`): the alerting rules pass
//! promtool's check and their unit tests, the Grafana dashboard is a well-formed dashboard whose
//! queries parse, and both name only metrics a running service exports. The exported text
//! passes `promtool check metrics` too. promtool comes from Debian's `prometheus` package
//! (`scripts/test` installs it when missing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::helpers::spawn_app;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/monitoring")
}

/// Runs promtool with `args` in `dir` (and `input` on its stdin), failing the test with its
/// output unless it succeeds.
fn promtool(dir: &Path, args: &[&str], input: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test installs Debian's prometheus package)");
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every `order_sync_*` name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("order_sync_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The metric names a service exports once it has synced an order, and the text itself.
async fn exported() -> (BTreeSet<String>, String) {
    let app = spawn_app().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    app.wait_until_synced(id).await;
    let text = app.prometheus_text().await;
    let names = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    (names, text)
}

fn assert_all_exported(file: &str, used: &BTreeSet<String>, exported: &BTreeSet<String>) {
    let unknown: Vec<_> = used.difference(exported).collect();
    assert!(
        unknown.is_empty(),
        "{file} names metrics the service does not export: {unknown:?}\nexported: {exported:?}"
    );
}

#[actix_web::test]
async fn the_alerting_rules_pass_promtool_and_name_only_exported_metrics() {
    let dir = monitoring_dir();
    promtool(&dir, &["check", "rules", "alerts.yml"], None);
    promtool(&dir, &["test", "rules", "alerts.test.yml"], None);
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let used = names_in(&rules);
    for alert in [
        "OrderSyncDeadOrders",
        "OrderSyncLagHigh",
        "OrderSyncBacklogGrowing",
        "OrderSyncThrottlePaused",
        "OrderSyncEngineNotRunning",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
    }
    let (exported, text) = exported().await;
    assert!(used.len() >= 6, "{used:?}");
    assert_all_exported("alerts.yml", &used, &exported);
    promtool(&dir, &["check", "metrics"], Some(&text));
}

#[actix_web::test]
async fn the_grafana_dashboard_is_well_formed_and_queries_only_exported_metrics() {
    let dir = monitoring_dir();
    let text = std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "order-sync");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let input = dashboard["__inputs"][0]["name"].as_str().unwrap();
    let datasource = format!("${{{input}}}");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id reused"
        );
        assert!(
            ["stat", "timeseries"].contains(&panel["type"].as_str().unwrap()),
            "{title}"
        );
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        assert_eq!(panel["datasource"]["uid"], datasource.as_str(), "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], datasource.as_str(), "{title}");
            queries.push(target["expr"].as_str().expect("a query").to_string());
        }
    }
    // Each query parses as PromQL: promtool checks it as a recording rule.
    let rules: String = queries
        .iter()
        .enumerate()
        .map(|(n, query)| {
            format!(
                "      - record: dashboard:query_{n}\n        expr: {}\n",
                serde_json::to_string(query).unwrap()
            )
        })
        .collect();
    let checked = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "dashboard-queries-{}.yml",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(
        &checked,
        format!("groups:\n  - name: dashboard\n    rules:\n{rules}"),
    )
    .unwrap();
    promtool(
        checked.parent().unwrap(),
        &["check", "rules", checked.to_str().unwrap()],
        None,
    );
    std::fs::remove_file(&checked).ok();
    let used = names_in(&queries.join("\n"));
    let (exported, _) = exported().await;
    assert!(used.len() >= 15, "{used:?}");
    assert_all_exported("grafana-dashboard.json", &used, &exported);
}
