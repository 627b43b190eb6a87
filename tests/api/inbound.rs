//! `PUT|PATCH /inbound/{id}`: the external system's write-back, which must not echo a sync event
//! when the order is synced, and is merged as a new version when a call is owed (one may be in
//! flight with the old fields; `outcomes.rs` races one).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::external::ExternalApi;
use crate::helpers::{id_of, order_body, spawn_api_only, spawn_app_syncing_to, wait_for, TestApp};

/// Marks the order as synced at its version, as the engine would after a successful call.
async fn mark_synced(app: &TestApp, id: i64) {
    sqlx::query("UPDATE orders SET sync_state = 'synced', synced_version = version WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
}

#[actix_web::test]
async fn an_inbound_json_update_changes_status_and_delivery_without_a_sync_event() {
    let app = spawn_api_only().await;
    let mut body = order_body();
    body["status"] = json!("pending");
    body["delivered_at"] = Value::Null;
    let id = app.post_order(&body).await.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    mark_synced(&app, id).await;
    let outbox_before = app.count("outbox").await;

    let response = app
        .http
        .patch(app.url(&format!("/inbound/{id}")))
        .json(&json!({"order": {"status": "delivered", "delivered_on": 1_749_000_000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"message": "Order record updated successfully."})
    );

    let order = app.get_order(id).await;
    assert_eq!(order["status"], "delivered");
    assert_eq!(order["delivered_at"], "2025-06-04T01:20:00Z");
    assert_eq!(
        order["version"], 1,
        "an inbound change must not bump the version"
    );
    assert_eq!(
        app.count("outbox").await,
        outbox_before,
        "an inbound change must not emit a sync event"
    );
}

#[actix_web::test]
async fn an_inbound_form_update_works_as_in_the_reference() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    mark_synced(&app, id).await;
    let response = app
        .http
        .put(app.url(&format!("/inbound/{id}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("order%5Bstatus%5D=canceled")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let order = app.get_order(id).await;
    assert_eq!(order["status"], "canceled");
    assert_eq!(
        order["delivered_at"],
        Value::Null,
        "a status other than delivered clears the delivery time"
    );
    assert_eq!(app.count("outbox").await, 1);
}

#[actix_web::test]
async fn an_inbound_update_to_an_order_that_owes_a_call_is_merged_as_a_new_version() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    // Never synced: its create is owed (and could be in flight with the old status).
    let response = app
        .http
        .put(app.url(&format!("/inbound/{id}")))
        .json(&json!({"order": {"status": "canceled"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let order = app.get_order(id).await;
    assert_eq!(order["status"], "canceled");
    assert_eq!(order["version"], 2, "merged as a new version");
    assert_eq!(order["sync"]["state"], "pending");
    let queued: Vec<(i64, String)> =
        sqlx::query_as("SELECT version, action FROM outbox WHERE order_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        queued,
        vec![(1, "create".to_string()), (2, "update".to_string())]
    );
}

#[actix_web::test]
async fn bad_inbound_input_is_rejected_and_changes_nothing() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let before = app.snapshot().await;
    let path = app.url(&format!("/inbound/{id}"));
    let cases = [
        (json!({"order": {"status": "lost"}}), "order[status]"),
        (
            json!({"order": {"delivered_on": "soon"}}),
            "order[delivered_on]",
        ),
        (json!({"order": {"colour": "red"}}), "order[colour]"),
        (json!({"order": {}}), "order"),
        (json!({"status": "delivered"}), "order"),
    ];
    for (body, field) in cases {
        let response = app.http.put(&path).json(&body).send().await.unwrap();
        assert_eq!(response.status(), 422, "{body}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["fields"][field].is_string(),
            "{field} not named in {error}"
        );
    }
    let malformed = app
        .http
        .put(&path)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let missing = app
        .http
        .put(app.url("/inbound/424242"))
        .json(&json!({"order": {"status": "canceled"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(app.snapshot().await, before);
}

/// How long a change's outbox row may wait once its write answered: the relay is woken after
/// each commit, so the row is published within milliseconds; left to the relay's 2 s sweep, it
/// would wait a second on average.
const RELAYED_WITHIN: Duration = Duration::from_millis(500);

#[actix_web::test]
async fn a_write_back_merged_as_a_new_version_is_relayed_at_once() {
    // Every create fails with 500 and is retried: each order owes a call, so a write-back is
    // merged as a new version with an outbox row of its own.
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 100_000, 500, json!({"error": "down"}), None)
        .await;
    let app = spawn_app_syncing_to(&api.url(), &[]).await;
    let ids = {
        let mut ids = Vec::new();
        for _ in 0..6 {
            ids.push(id_of(&app.create_order().await));
        }
        ids
    };
    wait_for(
        "every order's create to have been tried",
        Duration::from_secs(20),
        || async {
            let tried: HashSet<i64> = api.recorder.calls().iter().map(|c| c.order_id).collect();
            ids.iter().all(|id| tried.contains(id)).then_some(())
        },
    )
    .await;
    wait_for(
        "the creates' outbox rows to be published",
        Duration::from_secs(5),
        || async { (app.count("outbox").await == 0).then_some(()) },
    )
    .await;

    let mut waited = Vec::new();
    for &id in &ids {
        let response = app
            .http
            .patch(app.url(&format!("/inbound/{id}")))
            .json(&json!({"order": {"status": "canceled"}}))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        let answered = Instant::now();
        assert_eq!(
            app.get_order(id).await["version"],
            2,
            "a write-back while a call is owed is a new version"
        );
        wait_for(
            "the write-back's outbox row to be published",
            Duration::from_secs(10),
            || async {
                (app.count(&format!("outbox WHERE order_id = {id}")).await == 0).then_some(())
            },
        )
        .await;
        waited.push(answered.elapsed());
    }
    assert!(
        waited.iter().all(|w| *w <= RELAYED_WITHIN),
        "each write-back's outbox row must be published within {RELAYED_WITHIN:?} of its answer, \
         not at the relay's next sweep: {waited:?}"
    );
}
