//! The metrics endpoints move exactly as a known sequence of events says, the Prometheus text
//! parses, every route is in the OpenAPI document (with unique operation ids, and every path
//! answers other methods 405 with `Allow`), and logs are one line per request and per call
//! attempt.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{order_body, spawn_app_with, wait_for, TestApp};

async fn prometheus(app: &TestApp) -> prometheus_parse::Scrape {
    let response = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("the Prometheus text parses")
}

/// The value of `name` with `labels` in a scrape.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match found.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v))
        | Some(prometheus_parse::Value::Gauge(v))
        | Some(prometheus_parse::Value::Untyped(v)) => *v,
        Some(prometheus_parse::Value::Histogram(buckets)) => {
            buckets.last().map_or(0.0, |b| b.count)
        }
        other => panic!("{name}{labels:?}: {other:?}"),
    }
}

#[actix_web::test]
async fn the_json_and_prometheus_figures_follow_a_known_sequence_of_events_exactly() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 1, 422, json!({"message": "no"}), None)
        .await;
    let url = api.url();
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &url),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("ORDER_ACTOR_IDLE_SECS", "600"),
    ])
    .await;

    let before = app.actor_metrics().await;
    assert_eq!(before["events"]["received"], 0);
    // 1 order whose create is refused (dead), 3 created, 1 of them updated and 1 deleted.
    let dead = app.create_order().await["id"].as_i64().unwrap();
    wait_for(
        "the refused order to be dead",
        Duration::from_secs(20),
        || async { (app.get_order(dead).await["sync"]["state"] == "dead").then_some(()) },
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.create_order().await["id"].as_i64().unwrap());
    }
    for &id in &ids {
        app.wait_until_synced(id).await;
    }
    app.patch_order(ids[0], &json!({"city": "Surat"})).await;
    app.wait_until_synced(ids[0]).await;
    app.delete_order(ids[1]).await;
    app.wait_until_purged(ids[1]).await;
    // The last acknowledgement follows the last record by a moment.
    let metrics = wait_for(
        "the backlog to be acknowledged",
        Duration::from_secs(10),
        || async {
            let metrics = app.actor_metrics().await;
            (metrics["backlog"]["stream_length"] == 0 && metrics["events"]["in_flight"] == 0)
                .then_some(metrics)
        },
    )
    .await;

    let events = &metrics["events"];
    assert_eq!(events["received"], 6, "{metrics}");
    assert_eq!(
        events["synced"], 5,
        "3 creates, 1 update, 1 delete: {metrics}"
    );
    assert_eq!(
        (
            events["dead"].as_u64(),
            events["failed"].as_u64(),
            events["parked"].as_u64()
        ),
        (Some(1), Some(1), Some(0))
    );
    assert_eq!(
        (
            events["skipped"].as_u64(),
            events["purged"].as_u64(),
            events["retried"].as_u64()
        ),
        (Some(0), Some(0), Some(0))
    );
    let calls: Vec<(String, String, u64)> = metrics["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["verb"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
                c["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            ("DELETE".into(), "2xx".into(), 1),
            ("POST".into(), "2xx".into(), 3),
            ("POST".into(), "4xx".into(), 1),
            ("PUT".into(), "2xx".into(), 1)
        ]
    );
    assert_eq!(metrics["actors"]["spawned"], 4);
    assert_eq!(metrics["actors"]["live"], 4);
    assert_eq!(metrics["actors"]["mailbox"]["depth_sum"], 0);
    assert_eq!(
        metrics["orders"],
        json!({"pending": 0, "retrying": 0, "dead": 1})
    );
    assert_eq!(metrics["backlog"]["outbox_rows"], 0);
    assert_eq!(metrics["lag_ms"]["samples"], 5);
    assert_eq!(metrics["throttle"]["in_flight"], 0);

    let scrape = prometheus(&app).await;
    assert_eq!(
        sample(&scrape, "order_sync_events_received_total", &[]),
        6.0
    );
    assert_eq!(sample(&scrape, "order_sync_events_synced_total", &[]), 5.0);
    assert_eq!(
        sample(
            &scrape,
            "order_sync_external_calls_total",
            &[("verb", "POST"), ("status_class", "2xx")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &scrape,
            "order_sync_external_calls_total",
            &[("verb", "POST"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        sample(&scrape, "order_sync_orders", &[("sync_state", "dead")]),
        1.0
    );
    assert_eq!(sample(&scrape, "order_sync_actors_live", &[]), 4.0);
    assert_eq!(
        sample(&scrape, "order_sync_sync_lag_seconds", &[]),
        5.0,
        "5 lag observations"
    );
    assert_eq!(
        sample(
            &scrape,
            "order_sync_backlog_stream_length",
            &[("shard", "0")]
        ),
        0.0
    );
    assert_eq!(
        sample(&scrape, "order_sync_throttle_rate_per_second", &[]),
        100.0
    );
}

/// Every route the service serves, as (method, OpenAPI path, a concrete path to call).
const ROUTES: &[(&str, &str, &str)] = &[
    ("post", "/orders", "/orders"),
    ("get", "/orders", "/orders"),
    ("get", "/orders/{id}", "/orders/1"),
    ("put", "/orders/{id}", "/orders/1"),
    ("patch", "/orders/{id}", "/orders/1"),
    ("delete", "/orders/{id}", "/orders/1"),
    ("get", "/orders/{id}/attempts", "/orders/1/attempts"),
    ("get", "/orders/{id}/sync", "/orders/1/sync"),
    ("put", "/inbound/{id}", "/inbound/1"),
    ("patch", "/inbound/{id}", "/inbound/1"),
    ("get", "/health", "/health"),
    ("get", "/health/live", "/health/live"),
    ("get", "/health/ready", "/health/ready"),
    ("get", "/metrics", "/metrics"),
    ("get", "/metrics/actors", "/metrics/actors"),
    ("get", "/metrics/history", "/metrics/history"),
    ("get", "/admin/orders", "/admin/orders"),
    ("post", "/admin/orders/retry-all", "/admin/orders/retry-all"),
    ("post", "/admin/orders/{id}/retry", "/admin/orders/1/retry"),
    ("delete", "/admin/orders/{id}", "/admin/orders/1"),
    ("post", "/admin/audit", "/admin/audit"),
    ("post", "/admin/resync", "/admin/resync"),
    ("get", "/admin/jobs", "/admin/jobs"),
    ("get", "/admin/jobs/{id}", "/admin/jobs/1"),
    ("post", "/admin/sync/pause", "/admin/sync/pause"),
    ("post", "/admin/sync/resume", "/admin/sync/resume"),
];

#[actix_web::test]
async fn every_route_is_in_the_openapi_document_and_every_documented_route_is_served() {
    let app = spawn_app_with(&[("ADMIN_TOKEN", "t0ken"), ("SYNC_ENGINE", "false")]).await;
    let doc: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    let documented: usize = paths
        .values()
        .map(|ops| ops.as_object().map_or(0, |o| o.len()))
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "the document has routes this list lacks: {:?}",
        paths.keys()
    );
    for (method, path, concrete) in ROUTES {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} is not in the OpenAPI document"
        );
        let verb = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = app
            .http
            .request(verb, app.url(concrete))
            .bearer_auth("t0ken")
            .json(&order_body())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let unrouted = body["detail"]
            .as_str()
            .is_some_and(|m| m.starts_with("no route"));
        assert!(
            !unrouted && status != 405,
            "{method} {concrete} is documented but not served ({status})"
        );
    }
    for page in ["/docs", "/"] {
        let response = app.http.get(app.url(page)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{page}");
        assert!(
            response.text().await.unwrap().contains("<html"),
            "{page} is a page"
        );
    }
    let bundle = app
        .http
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), 200);
}

#[actix_web::test]
async fn every_path_answers_an_unknown_method_405_with_allow_naming_the_methods_it_takes() {
    let app = spawn_app_with(&[("ADMIN_TOKEN", "t0ken"), ("SYNC_ENGINE", "false")]).await;
    let mut takes: std::collections::BTreeMap<&str, BTreeSet<String>> = Default::default();
    for (method, _, concrete) in ROUTES {
        takes
            .entry(*concrete)
            .or_default()
            .insert(method.to_uppercase());
    }
    for page in [
        "/",
        "/dashboard.js",
        "/dashboard.css",
        "/openapi.json",
        "/docs",
        "/docs/swagger-ui.css",
    ] {
        takes.entry(page).or_default().insert("GET".into());
    }
    for (path, methods) in takes {
        let response = app
            .http
            .request(reqwest::Method::TRACE, app.url(path))
            .bearer_auth("t0ken")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "TRACE {path}");
        let allow: BTreeSet<String> = response.headers()["allow"]
            .to_str()
            .unwrap()
            .split(", ")
            .map(str::to_string)
            .collect();
        assert_eq!(allow, methods, "Allow of {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "method_not_allowed", "{path}");
    }
}

#[actix_web::test]
async fn operation_ids_are_unique_and_the_created_orders_links_reach_real_operations() {
    let app = spawn_app_with(&[("SYNC_ENGINE", "false")]).await;
    let doc = app.get_json("/openapi.json").await;
    let mut ids = BTreeSet::new();
    for operations in doc["paths"].as_object().unwrap().values() {
        for operation in operations.as_object().unwrap().values() {
            let id = operation["operationId"].as_str().expect("an operationId");
            assert!(ids.insert(id.to_string()), "operationId {id} is used twice");
        }
    }
    let links = doc["paths"]["/orders"]["post"]["responses"]["201"]["links"]
        .as_object()
        .expect("links from the created order");
    assert_eq!(links.len(), 10, "{links:?}");
    for link in links.values() {
        let target = link["operationId"].as_str().unwrap();
        assert!(
            ids.contains(target),
            "a link to {target}, which does not exist"
        );
        assert_eq!(link["parameters"]["id"], "$response.body#/id");
    }
}

#[actix_web::test]
async fn json_logs_have_one_line_per_request_and_per_call_attempt_with_their_fields() {
    use crate::process::{log_path, service_env, OwnDatabase, ServiceProcess};
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 1, 503, json!({"message": "busy"}), None)
        .await;
    let url = api.url();
    let db = OwnDatabase::new();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let env = service_env(
        &db,
        &prefix,
        &[
            ("EXTERNAL_API_URL", &url),
            ("EXTERNAL_API_TOKEN", TOKEN),
            ("LOG_FORMAT", "json"),
        ],
    );
    let log = log_path(&format!("json-logs-{}", db.name));
    let mut service = ServiceProcess::start(&env, &log);
    service.wait_ready().await;
    let created = reqwest::Client::new()
        .post(service.url("/orders"))
        .header("x-request-id", "client-req:42")
        .json(&order_body())
        .send()
        .await
        .unwrap();
    assert_eq!(created.headers()["x-request-id"], "client-req:42");
    // A hostile id is replaced, and never reaches the log.
    let marker = uuid::Uuid::new_v4().simple().to_string();
    let hostile = reqwest::Client::new()
        .get(service.url("/health/live"))
        .header("x-request-id", format!("forged\t{marker}"))
        .send()
        .await
        .unwrap();
    assert_ne!(
        hostile.headers()["x-request-id"],
        format!("forged\t{marker}")
    );
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    wait_for(
        "two call attempts to be logged",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).ok()?;
            (text.matches("\"external call\"").count() >= 2).then_some(())
        },
    )
    .await;
    service.signal("TERM");
    service.wait_exit(Duration::from_secs(15)).await;

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"))
        })
        .collect();
    let post = lines
        .iter()
        .find(|l| l["message"] == "request" && l["method"] == "POST" && l["path"] == "/orders")
        .expect("a line for the POST request");
    assert_eq!(post["status"], 201);
    assert_eq!(post["route"], "/orders");
    assert_eq!(post["request_id"], "client-req:42", "{post}");
    assert!(post["duration_ms"].is_string(), "{post}");
    assert!(
        !lines.iter().any(|l| l.to_string().contains(&marker)),
        "a hostile request id was logged"
    );
    let attempts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "external call" && l["order_id"] == id)
        .collect();
    assert_eq!(attempts.len(), 2, "a 503, then a success");
    assert_eq!(
        (
            attempts[0]["status"].as_str(),
            attempts[1]["status"].as_str()
        ),
        (Some("503"), Some("200"))
    );
    for attempt in attempts {
        assert_eq!(
            (attempt["verb"].as_str(), attempt["version"].as_i64()),
            (Some("POST"), Some(1))
        );
        assert!(attempt["duration_ms"].is_string());
    }
}

#[actix_web::test]
async fn a_sane_incoming_request_id_is_echoed_and_a_hostile_one_replaced() {
    let app = spawn_app_with(&[("SYNC_ENGINE", "false")]).await;
    let answered = |id: reqwest::header::HeaderValue| {
        let request = app
            .http
            .get(app.url("/health/live"))
            .header("x-request-id", id);
        async move {
            let response = request.send().await.unwrap();
            let id = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            id
        }
    };
    let given = "3f2a9c1e-7b4d:edge.lb_1";
    assert_eq!(answered(given.parse().unwrap()).await, given);
    let too_long = "a".repeat(129);
    let hostile = [
        too_long.as_bytes(),
        b"id\twith-a-tab",
        b"<script>alert(1)</script>",
        b"caf\xc3\xa9",
    ];
    for id in hostile {
        let fresh = answered(reqwest::header::HeaderValue::from_bytes(id).unwrap()).await;
        assert_ne!(fresh.as_bytes(), id);
        assert!(
            fresh.len() == 32 && fresh.bytes().all(|b| b.is_ascii_hexdigit()),
            "a fresh id, not {fresh:?}"
        );
    }
    // No id given: a fresh one.
    let response = app.http.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 32);
}
