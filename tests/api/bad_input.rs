//! Bad input gets a clear error of one shape (an RFC 9457 problem detail) and changes nothing.

use serde_json::{json, Value};

use crate::helpers::{order_body, spawn_api_only, TestApp};

/// Asserts the one error shape, a problem detail sent as `application/problem+json`, with
/// `status` and `code`; returns the body.
async fn error_body(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{response:?}"
    );
    let body: Value = response.json().await.expect("errors are JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(
        body["type"],
        format!("https://order-sync.dev/problems/{code}"),
        "{body}"
    );
    for member in ["title", "detail"] {
        assert!(
            body[member].as_str().is_some_and(|m| !m.is_empty()),
            "{member} in {body}"
        );
    }
    body
}

#[actix_web::test]
async fn a_422_and_an_unknown_routes_404_are_problem_details() {
    let app = spawn_api_only().await;
    let response = app.post_order(&json!({"amount": -1})).await;
    let body = error_body(response, 422, "validation_failed").await;
    println!("422: {body}");
    assert_eq!(body["title"], "Validation failed");
    assert_eq!(body["detail"], "the request is invalid");
    assert!(body["fields"]["amount"].is_string(), "{body}");

    let response = app
        .http
        .get(app.url("/no/such/route"))
        .send()
        .await
        .unwrap();
    let body = error_body(response, 404, "not_found").await;
    println!("404: {body}");
    assert_eq!(body["title"], "Not found");
    assert_eq!(body["detail"], "no route for GET /no/such/route");
    assert!(
        body.get("fields").is_none(),
        "fields only on validation errors: {body}"
    );
}

/// Sends `body` to POST /orders, PUT /orders/{id} and PATCH /orders/{id} of an existing order;
/// each must answer 422 naming `field`, and nothing in the database may change.
async fn assert_rejected_everywhere(app: &TestApp, id: i64, body: &Value, field: &str) {
    let before = app.snapshot().await;
    let path = app.url(&format!("/orders/{id}"));
    let requests = [
        ("POST", app.http.post(app.url("/orders"))),
        ("PUT", app.http.put(&path)),
        ("PATCH", app.http.patch(&path)),
    ];
    for (verb, request) in requests {
        let response = request.json(body).send().await.unwrap();
        let error = error_body(response, 422, "validation_failed").await;
        assert!(
            error["fields"][field].is_string(),
            "{verb}: {field} not named in {error}"
        );
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "a rejected request wrote something"
    );
}

#[actix_web::test]
async fn each_invalid_field_is_rejected_with_422_naming_it_and_nothing_is_written() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let cases: Vec<(&str, Value)> = vec![
        ("status", json!("lost")),
        ("status", json!(3)),
        ("amount", json!(-1)),
        ("amount", json!(10_000_000_000_000_i64)),
        ("amount", json!(18446744073709551615_u64)),
        ("amount", json!(12.5)),
        ("tax", json!(-5)),
        ("tax", json!("180")),
        ("delivered_at", json!("2025-05-01T00:00:00Z")),
        ("placed_at", json!("yesterday")),
        ("placed_at", json!("2025-13-01T00:00:00Z")),
        ("street_address", json!("")),
        ("street_address", json!("   ")),
        ("city", json!("x".repeat(201))),
        ("state", json!(null)),
        ("country", json!(["India"])),
        ("pincode", json!("!!")),
        ("pincode", json!("12345678901")),
        ("colour", json!("red")),
    ];
    for (field, value) in cases {
        let mut body = order_body();
        body[field] = value;
        assert_rejected_everywhere(&app, id, &body, field).await;
    }
}

#[actix_web::test]
async fn delivered_at_on_an_order_that_is_not_delivered_is_rejected() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let mut body = order_body();
    body["status"] = json!("pending");
    assert_rejected_everywhere(&app, id, &body, "delivered_at").await;
}

#[actix_web::test]
async fn every_bad_field_is_named_in_one_answer() {
    let app = spawn_api_only().await;
    let body = json!({"status": "lost", "amount": -1, "tax": "x", "pincode": "", "extra": 1});
    let error = error_body(app.post_order(&body).await, 422, "validation_failed").await;
    let fields = error["fields"].as_object().unwrap();
    for field in [
        "status",
        "amount",
        "tax",
        "pincode",
        "extra",
        "placed_at",
        "street_address",
        "city",
        "state",
        "country",
    ] {
        assert!(fields.contains_key(field), "{field} missing in {error}");
    }
    assert_eq!(app.count("orders").await, 0);
}

#[actix_web::test]
async fn a_patch_that_would_make_the_order_invalid_is_rejected_and_changes_nothing() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let before = app.snapshot().await;
    let response = app
        .http
        .patch(app.url(&format!("/orders/{id}")))
        .json(&json!({"status": "pending"}))
        .send()
        .await
        .unwrap();
    let error = error_body(response, 422, "validation_failed").await;
    assert!(error["fields"]["delivered_at"].is_string());
    assert_eq!(app.snapshot().await, before);
}

#[actix_web::test]
async fn malformed_json_answers_400_and_writes_nothing() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let before = app.snapshot().await;
    for (verb, path) in [
        ("POST", "/orders".to_string()),
        ("PUT", format!("/orders/{id}")),
        ("PATCH", format!("/orders/{id}")),
    ] {
        let method = reqwest::Method::from_bytes(verb.as_bytes()).unwrap();
        let response = app
            .http
            .request(method, app.url(&path))
            .header("content-type", "application/json")
            .body("{\"status\": ")
            .send()
            .await
            .unwrap();
        error_body(response, 400, "malformed_json").await;
    }
    assert_eq!(app.snapshot().await, before);
}

#[actix_web::test]
async fn a_body_that_is_not_an_object_answers_422() {
    let app = spawn_api_only().await;
    let error = error_body(
        app.post_order(&json!([1, 2])).await,
        422,
        "validation_failed",
    )
    .await;
    assert!(error["fields"]["body"].is_string());
    assert_eq!(app.count("orders").await, 0);
}

#[actix_web::test]
async fn a_body_over_the_limit_answers_413_and_writes_nothing() {
    let app = spawn_app_limited().await;
    let mut body = order_body();
    body["street_address"] = json!("x".repeat(2048));
    error_body(app.post_order(&body).await, 413, "payload_too_large").await;
    let response = app
        .http
        .put(app.url("/inbound/1"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("order[status]={}", "x".repeat(2048)))
        .send()
        .await
        .unwrap();
    error_body(response, 413, "payload_too_large").await;
    assert_eq!(app.count("orders").await, 0);
}

async fn spawn_app_limited() -> TestApp {
    crate::helpers::spawn_app_with(&[("MAX_BODY_BYTES", "1024"), ("SYNC_ENGINE", "false")]).await
}

#[actix_web::test]
async fn unknown_ids_answer_404_and_non_numeric_ids_400() {
    let app = spawn_api_only().await;
    let body = order_body();
    for verb in ["GET", "PUT", "PATCH", "DELETE"] {
        let method = reqwest::Method::from_bytes(verb.as_bytes()).unwrap();
        let missing = app
            .http
            .request(method.clone(), app.url("/orders/999999"))
            .json(&body)
            .send()
            .await
            .unwrap();
        error_body(missing, 404, "not_found").await;
        let bad = app
            .http
            .request(method, app.url("/orders/abc"))
            .json(&body)
            .send()
            .await
            .unwrap();
        error_body(bad, 400, "bad_request").await;
    }
    assert_eq!(app.count("orders").await, 0);
}

#[actix_web::test]
async fn unknown_routes_and_methods_answer_in_the_same_json_shape() {
    let app = spawn_api_only().await;
    error_body(
        app.http.get(app.url("/nowhere")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    error_body(
        app.http.delete(app.url("/orders")).send().await.unwrap(),
        405,
        "method_not_allowed",
    )
    .await;
}
