//! The admin endpoints: bearer auth on every one, off without `ADMIN_TOKEN`, and the dead-set
//! actions (list, retry one, retry all, discard).

use std::time::Duration;

use serde_json::{json, Value};

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{spawn_app_with, wait_for, TestApp};

const ADMIN: &str = "admin_s3cret";

/// Every admin endpoint, as (method, path).
fn endpoints(id: i64) -> Vec<(reqwest::Method, String)> {
    use reqwest::Method;
    vec![
        (Method::GET, "/admin/orders".into()),
        (Method::POST, "/admin/orders/retry-all".into()),
        (Method::POST, format!("/admin/orders/{id}/retry")),
        (Method::DELETE, format!("/admin/orders/{id}")),
    ]
}

#[actix_web::test]
async fn every_admin_endpoint_wants_the_right_bearer_token() {
    let app = spawn_app_with(&[("ADMIN_TOKEN", ADMIN), ("SYNC_ENGINE", "false")]).await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    for (method, path) in endpoints(id) {
        let request = || app.http.request(method.clone(), app.url(&path));
        let missing = request().send().await.unwrap();
        assert_eq!(missing.status(), 401, "{method} {path} without a token");
        assert_eq!(missing.headers()["www-authenticate"], "Bearer");
        assert_eq!(
            missing.json::<Value>().await.unwrap()["code"],
            "unauthorized"
        );
        let not_bearer = request()
            .header("Authorization", format!("Basic {ADMIN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            not_bearer.status(),
            401,
            "{method} {path} with a non-bearer scheme"
        );
        let wrong = request().bearer_auth("not-the-token").send().await.unwrap();
        assert_eq!(wrong.status(), 403, "{method} {path} with a wrong token");
        assert_eq!(wrong.json::<Value>().await.unwrap()["code"], "forbidden");
        let right = request().bearer_auth(ADMIN).send().await.unwrap();
        // The order is pending, so retry and discard answer 409; the point is: not 401/403.
        assert!(
            [200, 202, 409].contains(&right.status().as_u16()),
            "{method} {path}: {}",
            right.status()
        );
    }
}

#[actix_web::test]
async fn without_admin_token_the_admin_endpoints_are_off() {
    let app = spawn_app_with(&[("SYNC_ENGINE", "false")]).await;
    for (method, path) in endpoints(1) {
        let response = app
            .http
            .request(method.clone(), app.url(&path))
            .bearer_auth("anything")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{method} {path}");
    }
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = app
        .http
        .request(method, app.url(path))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_for_state(app: &TestApp, id: i64, state: &str) -> Value {
    wait_for(
        &format!("order {id} to be {state}"),
        Duration::from_secs(20),
        || async {
            let order = app.get_order(id).await;
            (order["sync"]["state"] == state).then_some(order)
        },
    )
    .await
}

#[actix_web::test]
async fn dead_orders_are_listed_retried_once_the_api_heals_and_discarded() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let url = api.url();
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &url),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("ADMIN_TOKEN", ADMIN),
        ("RETRY_MAX_ATTEMPTS", "1"),
        ("DELAYED_RETRY_LIMIT", "1"),
        ("DELAYED_RETRY_SCALE", "0.01"),
    ])
    .await;
    // The external API is down for everything until healed.
    api.server.reset().await;
    api.fail_next("POST", 1000, 500, json!({"message": "down"}), None)
        .await;
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(app.create_order().await["id"].as_i64().unwrap());
        }
        ids
    };
    for &id in &ids {
        let order = wait_for_state(&app, id, "dead").await;
        assert_eq!(order["sync"]["attempts"], 2, "one delayed retry, then dead");
    }
    let (status, listed) = admin(&app, reqwest::Method::GET, "/admin/orders?state=dead").await;
    assert_eq!(status, 200);
    let listed_ids: Vec<i64> = listed["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed_ids, ids.iter().rev().copied().collect::<Vec<_>>());
    assert!(
        listed["orders"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{listed}"
    );

    // Heal the API, then retry one, retry all, and discard the last.
    api.server.reset().await;
    api.mount_stubs(Duration::ZERO).await;
    let (status, _) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/admin/orders/{}/retry", ids[0]),
    )
    .await;
    assert_eq!(status, 202);
    app.wait_until_synced(ids[0]).await;
    let (status, _) = admin(
        &app,
        reqwest::Method::DELETE,
        &format!("/admin/orders/{}", ids[2]),
    )
    .await;
    assert_eq!(status, 202);
    let discarded = app.get_order(ids[2]).await;
    assert_eq!(discarded["sync"]["state"], "synced");
    assert!(discarded["sync"]["last_error"]
        .as_str()
        .unwrap()
        .starts_with("discarded by an operator"));
    let (status, body) = admin(&app, reqwest::Method::POST, "/admin/orders/retry-all").await;
    assert_eq!((status, body["retried"].as_i64()), (202, Some(1)));
    app.wait_until_synced(ids[1]).await;
    assert!(
        api.recorder
            .calls_for(ids[2])
            .iter()
            .all(|c| c.status == 500),
        "a discarded order is not sent"
    );

    let (status, listed) = admin(&app, reqwest::Method::GET, "/admin/orders").await;
    assert_eq!(
        (status, listed["orders"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, conflict) = admin(
        &app,
        reqwest::Method::POST,
        &format!("/admin/orders/{}/retry", ids[0]),
    )
    .await;
    assert_eq!((status, conflict["code"].as_str()), (409, Some("conflict")));
    let (status, _) = admin(&app, reqwest::Method::POST, "/admin/orders/999999/retry").await;
    assert_eq!(status, 404);
}
