//! The success paths of `/orders`.

use serde_json::{json, Value};

use crate::helpers::{order_body, spawn_api_only};

#[actix_web::test]
async fn creating_an_order_answers_201_with_version_1_and_writes_one_create_outbox_row() {
    let app = spawn_api_only().await;
    let order = app.create_order().await;
    assert_eq!(order["version"], 1);
    assert_eq!(order["pincode"], "011001");
    assert_eq!(order["sync"]["state"], "pending");
    assert_eq!(order["sync"]["synced_version"], 0);
    let outbox: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT order_id, version, action FROM outbox")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        outbox,
        vec![(order["id"].as_i64().unwrap(), 1, "create".to_string())]
    );
}

#[actix_web::test]
async fn getting_an_order_returns_what_was_created() {
    let app = spawn_api_only().await;
    let created = app.create_order().await;
    let response = app
        .http
        .get(app.url(&format!("/orders/{}", created["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let fetched: Value = response.json().await.unwrap();
    assert_eq!(fetched, created);
}

#[actix_web::test]
async fn replacing_an_order_bumps_its_version_and_writes_an_update_outbox_row() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let mut body = order_body();
    body["status"] = json!("canceled");
    body["delivered_at"] = Value::Null;
    body["city"] = json!("Mumbai");
    let response = app
        .http
        .put(app.url(&format!("/orders/{id}")))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let order: Value = response.json().await.unwrap();
    assert_eq!(
        (
            order["version"].as_i64(),
            order["status"].as_str(),
            order["city"].as_str()
        ),
        (Some(2), Some("canceled"), Some("Mumbai"))
    );
    assert_eq!(order["delivered_at"], Value::Null);
    let outbox: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, action FROM outbox ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(outbox, vec![(1, "create".into()), (2, "update".into())]);
}

#[actix_web::test]
async fn patching_an_order_changes_only_the_fields_sent() {
    let app = spawn_api_only().await;
    let created = app.create_order().await;
    let id = created["id"].as_i64().unwrap();
    let response = app
        .http
        .patch(app.url(&format!("/orders/{id}")))
        .json(&json!({"amount": 2500, "pincode": 411001}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["amount"], 2500);
    assert_eq!(order["pincode"], "411001");
    assert_eq!(order["version"], 2);
    for unchanged in [
        "status",
        "placed_at",
        "delivered_at",
        "tax",
        "street_address",
        "city",
        "state",
        "country",
    ] {
        assert_eq!(order[unchanged], created[unchanged], "{unchanged} changed");
    }
    assert_eq!(
        app.count("outbox WHERE action = 'update' AND version = 2")
            .await,
        1
    );
}

#[actix_web::test]
async fn a_deleted_order_answers_404_from_then_on_and_stays_as_a_tombstone_with_a_delete_event() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let path = app.url(&format!("/orders/{id}"));
    let response = app.http.delete(&path).send().await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(app.http.get(&path).send().await.unwrap().status(), 404);
    assert_eq!(
        app.http
            .put(&path)
            .json(&order_body())
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.http
            .patch(&path)
            .json(&json!({"city": "X"}))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(app.http.delete(&path).send().await.unwrap().status(), 404);
    let listed: Value = app
        .http
        .get(app.url("/orders"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["orders"].as_array().map(Vec::len), Some(0));
    let (version, tombstone): (i64, bool) =
        sqlx::query_as("SELECT version, deleted_at IS NOT NULL FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((version, tombstone), (2, true));
    assert_eq!(
        app.count("outbox WHERE action = 'delete' AND version = 2")
            .await,
        1
    );
}

/// Creates `n` orders with the given statuses in turn and returns their ids, oldest first.
async fn create_orders(app: &crate::helpers::TestApp, statuses: &[&str], n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let mut body = order_body();
        let status = statuses[i % statuses.len()];
        body["status"] = json!(status);
        if status != "delivered" {
            body["delivered_at"] = Value::Null;
        }
        let order: Value = app.post_order(&body).await.json().await.unwrap();
        ids.push(order["id"].as_i64().unwrap());
    }
    ids
}

fn ids_of(page: &Value) -> Vec<i64> {
    page["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_i64().unwrap())
        .collect()
}

#[actix_web::test]
async fn listing_pages_by_number_newest_first_with_a_total() {
    let app = spawn_api_only().await;
    let ids = create_orders(&app, &["pending"], 5).await;
    let newest_first: Vec<i64> = ids.iter().rev().copied().collect();
    let mut seen = Vec::new();
    for page in 1..=3 {
        let body: Value = app
            .http
            .get(app.url(&format!("/orders?page={page}&per_page=2")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["total"], 5);
        assert_eq!(body["page"], page);
        seen.extend(ids_of(&body));
    }
    assert_eq!(seen, newest_first);
}

#[actix_web::test]
async fn listing_by_cursor_walks_every_order_once() {
    let app = spawn_api_only().await;
    let ids = create_orders(&app, &["pending"], 7).await;
    let mut seen = Vec::new();
    let mut cursor: Option<i64> = None;
    for _ in 0..10 {
        let query = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
        let body: Value = app
            .http
            .get(app.url(&format!("/orders?per_page=3{query}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(ids_of(&body));
        match body["next_cursor"].as_i64() {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ids.iter().rev().copied().collect::<Vec<_>>());
}

#[actix_web::test]
async fn listing_filters_by_status_and_by_sync_state() {
    let app = spawn_api_only().await;
    let ids = create_orders(&app, &["pending", "canceled", "delivered"], 6).await;
    sqlx::query("UPDATE orders SET sync_state = 'dead' WHERE id = $1")
        .bind(ids[1])
        .execute(&app.pool)
        .await
        .unwrap();
    let get = |query: &str| app.http.get(app.url(&format!("/orders?{query}"))).send();
    let canceled: Value = get("status=canceled").await.unwrap().json().await.unwrap();
    assert_eq!(ids_of(&canceled), vec![ids[4], ids[1]]);
    let dead: Value = get("sync.state=dead").await.unwrap().json().await.unwrap();
    assert_eq!(ids_of(&dead), vec![ids[1]]);
    let both: Value = get("status=pending&sync_state=dead")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids_of(&both), Vec::<i64>::new());
}

#[actix_web::test]
async fn listing_with_bad_parameters_answers_422_naming_each() {
    let app = spawn_api_only().await;
    let response = app
        .http
        .get(app.url("/orders?status=lost&sync.state=gone&per_page=1000&page=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body: Value = response.json().await.unwrap();
    for field in ["status", "sync.state", "per_page", "page"] {
        assert!(
            body["fields"][field].is_string(),
            "{field} not named in {body}"
        );
    }
}
