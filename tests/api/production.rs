//! The production edge, black-box through real sockets: `API_TOKENS` on every data route,
//! Standard Webhooks signatures on `/inbound` (valid, tampered, stale, replayed), and
//! `ORDER_SYNC_ENV=production` refusing development settings with one exact `error:` line.

use std::process::Command;
use std::time::Duration;

use order_sync::api::webhook::sign;
use order_sync::config::WebhookKey;
use reqwest::Method;
use serde_json::{json, Value};

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{order_body, spawn_app_with, TestApp};

const API_TOKEN: &str = "api-token-one";
const ROTATED_TOKEN: &str = "api-token-two";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn guarded_app() -> (TestApp, ExternalApi) {
    let api = ExternalApi::start(Duration::ZERO).await;
    let url = api.url();
    let tokens = format!("{API_TOKEN},{ROTATED_TOKEN}");
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &url),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("API_TOKENS", &tokens),
        ("INBOUND_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("ADMIN_TOKEN", "admin_s3cret"),
    ])
    .await;
    (app, api)
}

/// Creates an order with a valid token and returns its id.
async fn create(app: &TestApp) -> i64 {
    let response = app
        .http
        .post(app.url("/orders"))
        .bearer_auth(API_TOKEN)
        .json(&order_body())
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    response.json::<Value>().await.expect("JSON")["id"]
        .as_i64()
        .expect("id")
}

#[actix_web::test]
async fn every_data_route_wants_one_of_the_api_tokens_and_the_rest_stay_reachable() {
    let (app, _api) = guarded_app().await;
    let id = create(&app).await;
    let guarded = [
        (Method::POST, "/orders".to_string()),
        (Method::GET, "/orders".to_string()),
        (Method::GET, format!("/orders/{id}")),
        (Method::PUT, format!("/orders/{id}")),
        (Method::PATCH, format!("/orders/{id}")),
        (Method::DELETE, format!("/orders/{id}")),
        (Method::GET, format!("/orders/{id}/attempts")),
        (Method::GET, format!("/orders/{id}/sync")),
        (Method::GET, "/metrics".to_string()),
        (Method::GET, "/metrics/actors".to_string()),
        (Method::GET, "/metrics/history".to_string()),
    ];
    // Synced first, so that nothing but a refused request could change the snapshot.
    crate::helpers::wait_for("the order to sync", Duration::from_secs(20), || async {
        let state: String = sqlx::query_scalar("SELECT sync_state FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .ok()?;
        (state == "synced").then_some(())
    })
    .await;
    let before = app.snapshot().await;
    for (method, path) in &guarded {
        let request = || {
            app.http
                .request(method.clone(), app.url(path))
                .json(&order_body())
        };
        let missing = request().send().await.expect("sent");
        assert_eq!(missing.status(), 401, "{method} {path} without a token");
        assert_eq!(missing.headers()["www-authenticate"], "Bearer");
        let body: Value = missing.json().await.expect("the error shape");
        assert_eq!(body["code"], "unauthorized", "{body}");
        let wrong = request()
            .bearer_auth("api-token-on")
            .send()
            .await
            .expect("sent");
        assert_eq!(wrong.status(), 401, "{method} {path} with a wrong token");
        let wrong: Value = wrong.json().await.expect("the error shape");
        assert_eq!(wrong["detail"], "the bearer token is not valid");
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused request changed something"
    );
    // Either configured token works: a rotation needs no downtime.
    for token in [API_TOKEN, ROTATED_TOKEN] {
        let response = app
            .http
            .get(app.url(&format!("/orders/{id}")))
            .bearer_auth(token)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200, "{token}");
    }
    // Open without the API token: health, the data-free pages, and /admin (its own token).
    for path in ["/health", "/", "/openapi.json", "/docs"] {
        let response = app.http.get(app.url(path)).send().await.expect("sent");
        assert_eq!(response.status(), 200, "{path}");
    }
    let admin = app
        .http
        .get(app.url("/admin/orders"))
        .send()
        .await
        .expect("sent");
    assert_eq!(admin.status(), 401, "the admin token, not the API token");
    let admin = app
        .http
        .get(app.url("/admin/orders"))
        .bearer_auth("admin_s3cret")
        .send()
        .await
        .expect("sent");
    assert_eq!(admin.status(), 200);
}

/// A signed write-back: `(id, timestamp, signature)` headers for `body`.
fn signed_headers(id: &str, timestamp: i64, body: &str) -> [(&'static str, String); 3] {
    let key = WebhookKey::from_whsec(WEBHOOK_SECRET).expect("the test key");
    [
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            sign(&key, id, timestamp, body.as_bytes()),
        ),
    ]
}

async fn write_back(
    app: &TestApp,
    id: i64,
    body: &str,
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut request = app
        .http
        .put(app.url(&format!("/inbound/{id}")))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("sent")
}

async fn status_of(app: &TestApp, id: i64) -> (String, i64) {
    let order = order_of(app, id).await;
    (
        order["status"].as_str().expect("status").to_string(),
        order["version"].as_i64().expect("version"),
    )
}

#[actix_web::test]
async fn inbound_write_backs_must_be_signed_and_a_replay_is_not_applied_twice() {
    let (app, _api) = guarded_app().await;
    let id = create(&app).await;
    let now = chrono::Utc::now().timestamp();
    let body = r#"{"order": {"status": "canceled"}}"#;
    let before = status_of(&app, id).await;

    // Unsigned, tampered, stale, from the future, or signed with another key: 401, nothing changes.
    let tampered = {
        let mut headers = signed_headers("msg_tampered", now, body);
        headers[0].1 = "msg_other".into();
        headers
    };
    let other_key = {
        let key = WebhookKey::from_whsec("whsec_c2VjcmV0LWtleQ==").expect("key");
        [
            ("webhook-id", "msg_k".to_string()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                sign(&key, "msg_k", now, body.as_bytes()),
            ),
        ]
    };
    // (what, headers, body sent)
    type Refused<'a> = (&'a str, Vec<(&'a str, String)>, &'a str);
    let refused: Vec<Refused> = vec![
        ("unsigned", vec![], body),
        ("tampered id", tampered.to_vec(), body),
        (
            "tampered body",
            signed_headers("msg_b", now, body).to_vec(),
            r#"{"order": {"status": "delivered"}}"#,
        ),
        (
            "stale",
            signed_headers("msg_s", now - 301, body).to_vec(),
            body,
        ),
        (
            "from the future",
            signed_headers("msg_f", now + 360, body).to_vec(),
            body,
        ),
        ("another key", other_key.to_vec(), body),
    ];
    for (what, headers, sent_body) in refused {
        let response = write_back(&app, id, sent_body, &headers).await;
        assert_eq!(response.status(), 401, "{what}");
        let error: Value = response.json().await.expect("the error shape");
        assert!(
            ["invalid_signature"].contains(&error["code"].as_str().unwrap_or("")),
            "{what}: {error}"
        );
        assert_eq!(
            status_of(&app, id).await,
            before,
            "{what} changed the order"
        );
    }

    // Signed: applied.
    let headers = signed_headers("msg_ok", now, body);
    let response = write_back(&app, id, body, &headers).await;
    assert_eq!(response.status(), 200);
    let applied = status_of(&app, id).await;
    assert_eq!(applied.0, "canceled");

    // The same message again (the sender retrying): 200, not applied a second time.
    let response = write_back(&app, id, body, &headers).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.expect("JSON"),
        json!({"message": "Order record updated successfully."})
    );
    assert_eq!(
        status_of(&app, id).await,
        applied,
        "a replay was applied again"
    );
}

/// Runs the binary with `vars` (and nothing else from this environment) and returns its exit
/// code and standard error.
fn run_binary(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_order-sync"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "off")
        .envs(vars.iter().copied())
        .output()
        .expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn production_mode_refuses_development_settings_with_one_line_naming_the_variable() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let good = [
        ("ORDER_SYNC_ENV", "production"),
        ("EXTERNAL_API_URL", "https://api.example.com"),
        ("EXTERNAL_API_TOKEN", "a-real-token"),
        ("API_TOKENS", "t1"),
        ("INBOUND_WEBHOOK_SECRET", secret),
        ("ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
        // Unreachable on purpose: passing every check must get as far as connecting.
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing"),
    ];
    let with = |name: &str, value: Option<&str>| -> Vec<(String, String)> {
        good.iter()
            .filter(|(k, _)| *k != name)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(value.map(|v| (name.to_string(), v.to_string())))
            .collect()
    };
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (
            with("EXTERNAL_API_URL", None),
            "error: invalid configuration: EXTERNAL_API_URL must be set: the built-in fake is for development (ORDER_SYNC_ENV=production)",
        ),
        (
            with("EXTERNAL_API_URL", Some("http://api.example.com/")),
            "error: invalid configuration: EXTERNAL_API_URL=http://api.example.com/ must use https:// (the bearer token would travel in clear text) (ORDER_SYNC_ENV=production)",
        ),
        (
            with("EXTERNAL_API_TOKEN", None),
            "error: invalid configuration: EXTERNAL_API_TOKEN must be set to the external API's token, not dev-token (ORDER_SYNC_ENV=production)",
        ),
        (
            with("EXTERNAL_API_TOKEN", Some("dev-token")),
            "error: invalid configuration: EXTERNAL_API_TOKEN must be set to the external API's token, not dev-token (ORDER_SYNC_ENV=production)",
        ),
        (
            with("API_TOKENS", None),
            "error: invalid configuration: API_TOKENS must be set: the orders API would be open to anyone (ORDER_SYNC_ENV=production)",
        ),
        (
            with("INBOUND_WEBHOOK_SECRET", None),
            "error: invalid configuration: INBOUND_WEBHOOK_SECRET must be set: anyone could rewrite orders through /inbound (ORDER_SYNC_ENV=production)",
        ),
        (
            with("ADMIN_TOKEN", Some("short")),
            "error: invalid configuration: ADMIN_TOKEN must be at least 32 characters (ORDER_SYNC_ENV=production)",
        ),
        (
            with("INBOUND_WEBHOOK_SECRET", Some("whsec_!!not base64!!")),
            "error: invalid configuration: INBOUND_WEBHOOK_SECRET: each key must be whsec_ followed by base64",
        ),
    ];
    for (vars, expected) in cases {
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (code, stderr) = run_binary(&vars);
        assert_eq!(code, Some(1), "{expected}");
        assert_eq!(stderr.trim_end(), expected);
        assert!(
            !stderr.contains("a-real-token") && !stderr.contains("MfKQ9r8"),
            "{stderr}"
        );
    }
    // Everything set: the checks pass and start-up goes on to the (unreachable) database.
    let (code, stderr) = run_binary(&good);
    assert_eq!(code, Some(1));
    assert!(
        stderr.starts_with("error: cannot use DATABASE_URL="),
        "{stderr}"
    );
    // Loopback over plain HTTP is fine (a sidecar or a tunnel).
    let vars = with("EXTERNAL_API_URL", Some("http://127.0.0.1:9090"));
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (_, stderr) = run_binary(&vars);
    assert!(
        stderr.starts_with("error: cannot use DATABASE_URL="),
        "{stderr}"
    );
}

#[actix_web::test]
async fn health_names_the_built_in_fake_in_development() {
    let app = crate::helpers::spawn_app().await;
    let health: Value = app.get_json("/health").await;
    assert_eq!(health["external"], "built-in fake", "{health}");
    let (configured, _api) = guarded_app().await;
    let health: Value = configured.get_json("/health").await;
    assert_eq!(health["external"], "configured", "{health}");
}

/// The order as the API shows it (with the token).
async fn order_of(app: &TestApp, id: i64) -> Value {
    app.http
        .get(app.url(&format!("/orders/{id}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON")
}

async fn wait_synced(app: &TestApp, id: i64) -> Value {
    crate::helpers::wait_for(
        "the order synced",
        std::time::Duration::from_secs(20),
        || async {
            let order = order_of(app, id).await;
            (order["sync"]["state"] == "synced"
                && order["sync"]["synced_version"] == order["version"])
                .then_some(order)
        },
    )
    .await
}

/// Found by the soak: a write-back held up (here: on an instance frozen past its lease) and
/// delivered after a newer one must not put the older state back.
#[actix_web::test]
async fn a_write_back_delivered_after_a_newer_one_changes_nothing() {
    let (app, api) = guarded_app().await;
    let id = create(&app).await;
    wait_synced(&app, id).await;
    let now = chrono::Utc::now().timestamp();
    let newer = r#"{"order": {"status": "delivered", "delivered_on": 1750080675}}"#;
    let older = r#"{"order": {"status": "delivered", "delivered_on": 1750080585}}"#;
    let response = write_back(
        &app,
        id,
        newer,
        &signed_headers("msg_newer", now + 60, newer),
    )
    .await;
    assert_eq!(response.status(), 200);
    let applied = order_of(&app, id).await;
    assert!(
        applied["delivered_at"]
            .as_str()
            .is_some_and(|at| at.starts_with("2025-06-16T13:31:15")),
        "{applied}"
    );

    let response = write_back(
        &app,
        id,
        older,
        &signed_headers("msg_older", now + 30, older),
    )
    .await;
    assert_eq!(
        response.status(),
        200,
        "answered, so the sender stops retrying"
    );
    let after = order_of(&app, id).await;
    assert_eq!(
        (&after["delivered_at"], &after["version"]),
        (&applied["delivered_at"], &applied["version"]),
        "the older write-back changed nothing"
    );
    assert_eq!(api.recorder.calls_for(id).len(), 1, "and sent nothing");
}

/// Found by the soak: the external system changes its copy and writes back while our call for
/// the previous change is on its way; our call lands after its change (overwriting it), and the
/// write-back reaches us once that call is recorded. Trusting the external side to hold the
/// write-back would leave the two copies apart for good: the merged state is sent instead. A
/// write-back sent well after our last call still makes no call.
#[actix_web::test]
async fn a_write_back_sent_before_our_last_call_was_answered_is_sent_back() {
    let (app, api) = guarded_app().await;
    let crossed = create(&app).await;
    let synced = wait_synced(&app, crossed).await;
    let synced_at = chrono::DateTime::parse_from_rfc3339(
        synced["sync"]["synced_at"].as_str().expect("synced_at"),
    )
    .expect("RFC 3339")
    .timestamp();
    let body = r#"{"order": {"status": "delivered", "delivered_on": 1750080585}}"#;
    let headers = signed_headers("msg_crossed", synced_at - 1, body);
    assert_eq!(
        write_back(&app, crossed, body, &headers).await.status(),
        200
    );
    let order = wait_synced(&app, crossed).await;
    assert_eq!(order["version"], 2, "merged as a new version: {order}");
    let calls = api.recorder.calls_for(crossed);
    let last = calls.last().expect("calls");
    assert_eq!((last.method.as_str(), last.version), ("PUT", 2));
    assert_eq!(
        last.body.as_ref().map(|b| b["status"].clone()),
        Some(json!("delivered")),
        "the merged state went out"
    );

    // Sent a minute after our call was answered: the external side holds it; no call.
    let later = create(&app).await;
    wait_synced(&app, later).await;
    let body = r#"{"order": {"status": "delivered", "delivered_on": 1750080600}}"#;
    let headers = signed_headers("msg_later", chrono::Utc::now().timestamp() + 60, body);
    assert_eq!(write_back(&app, later, body, &headers).await.status(), 200);
    let order = order_of(&app, later).await;
    assert_eq!(
        (order["status"].as_str(), &order["version"]),
        (Some("delivered"), &json!(1))
    );
    assert_eq!(api.recorder.calls_for(later).len(), 1, "only the create");
}
