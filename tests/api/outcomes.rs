//! Outcomes are compare-and-set on what the call was decided from (invariant 7): a change,
//! a delete, an inbound write-back or an operator's action that lands while a call is in flight
//! is never lost to that call's outcome. Each test ends with the external API holding the
//! database's state.

use std::time::Duration;

use redis::AsyncCommands;
use serde_json::json;
use wiremock::matchers::{body_string_contains, method};
use wiremock::Mock;

use crate::external::ExternalApi;
use crate::helpers::{id_of, order_body, spawn_app_syncing_to, wait_for, TestApp};

const ADMIN: &str = "admin_s3cret";

async fn app_with(api: &ExternalApi, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![("ADMIN_TOKEN", ADMIN)];
    vars.extend_from_slice(extra);
    spawn_app_syncing_to(&api.url(), &vars).await
}

/// Answers calls whose body contains `marker` with `status` after `delay` (before the 200 stubs).
async fn reject_bodies_with(api: &ExternalApi, marker: &str, status: u16, delay: Duration) {
    Mock::given(body_string_contains(marker))
        .respond_with(api.responder(status, json!({"errors": ["rejected"]}), delay))
        .with_priority(1)
        .mount(&api.server)
        .await;
}

/// An operator discards the order through the admin endpoint.
async fn discard(app: &TestApp, id: i64) {
    let discarded = app
        .http
        .delete(app.url(&format!("/admin/orders/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("sent");
    assert!(discarded.status().is_success(), "{}", discarded.status());
}

/// Waits until the external API has received `count` calls for the order.
async fn wait_for_calls(api: &ExternalApi, id: i64, count: usize) {
    wait_for(
        &format!("{count} calls for order {id}"),
        Duration::from_secs(20),
        || async { (api.recorder.calls_for(id).len() >= count).then_some(()) },
    )
    .await;
}

/// The last successful call for the order, which must carry the database's version.
fn last_ok_call(api: &ExternalApi, id: i64) -> crate::external::Call {
    api.recorder
        .calls_for(id)
        .into_iter()
        .rfind(|c| c.status == 200)
        .unwrap_or_else(|| panic!("no successful call for order {id}"))
}

#[actix_web::test]
async fn a_fix_committed_during_a_rejected_create_is_sent_and_the_order_ends_synced() {
    let api = ExternalApi::start(Duration::ZERO).await;
    reject_bodies_with(&api, "Wrong Street", 422, Duration::from_millis(1500)).await;
    let app = app_with(&api, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        let mut body = order_body();
        body["street_address"] = json!("1 Wrong Street");
        let response = app.post_order(&body).await;
        assert_eq!(response.status(), 201);
        ids.push(id_of(&response.json().await.expect("order JSON")));
    }
    // Each create is on its way (and will be rejected) when its fix is committed.
    for &id in &ids {
        wait_for_calls(&api, id, 1).await;
        app.patch_order(id, &json!({"street_address": "12 MG Road"}))
            .await;
    }
    for &id in &ids {
        let order = app.wait_until_synced(id).await;
        assert_eq!(order["sync"]["attempts"], 0, "order {id}: {order}");
        let last = last_ok_call(&api, id);
        assert_eq!(
            (last.method.as_str(), last.version),
            ("POST", 2),
            "order {id}"
        );
        let address = last.body.expect("a body")["address"].clone();
        assert!(
            address
                .as_str()
                .is_some_and(|a| a.starts_with("12 MG Road")),
            "order {id} was sent {address}"
        );
    }
}

#[actix_web::test]
async fn a_delete_committed_during_a_rejected_create_is_still_sent() {
    let api = ExternalApi::start(Duration::ZERO).await;
    reject_bodies_with(&api, "Wrong Street", 422, Duration::from_millis(1500)).await;
    let app = app_with(&api, &[]).await;
    let mut body = order_body();
    body["street_address"] = json!("1 Wrong Street");
    let response = app.post_order(&body).await;
    let id = id_of(&response.json().await.expect("order JSON"));
    wait_for_calls(&api, id, 1).await;
    app.delete_order(id).await;
    app.wait_until_purged(id).await;
    let calls: Vec<_> = api
        .recorder
        .calls_for(id)
        .into_iter()
        .map(|c| (c.method, c.status))
        .collect();
    // The create may have reached the external side before it answered, so the delete is owed.
    assert_eq!(
        calls,
        vec![("POST".to_string(), 422), ("DELETE".to_string(), 200)]
    );
}

#[actix_web::test]
async fn a_change_revives_a_dead_order_with_its_attempts_reset() {
    let api = ExternalApi::start(Duration::ZERO).await;
    reject_bodies_with(&api, "Pune", 500, Duration::ZERO).await;
    let app = app_with(
        &api,
        &[
            ("RETRY_MAX_ATTEMPTS", "1"),
            ("DELAYED_RETRY_LIMIT", "2"),
            ("DELAYED_RETRY_SCALE", "0.01"),
        ],
    )
    .await;
    let id = id_of(&app.create_order().await);
    let dead = wait_for("the order to die", Duration::from_secs(20), || async {
        let order = app.get_order(id).await;
        (order["sync"]["state"] == "dead").then_some(order)
    })
    .await;
    assert_eq!(dead["sync"]["attempts"], 3, "{dead}");
    // The change is the fix: its city no longer fails.
    let revived = app.patch_order(id, &json!({"city": "Mumbai"})).await;
    assert_eq!(revived["sync"]["attempts"], 0, "{revived}");
    assert_ne!(revived["sync"]["state"], "dead");
    app.wait_until_synced(id).await;
    assert_eq!(last_ok_call(&api, id).version, 2);
}

#[actix_web::test]
async fn an_operators_discard_during_a_failing_call_is_not_overwritten() {
    let api = ExternalApi::start(Duration::ZERO).await;
    reject_bodies_with(&api, "Pune", 500, Duration::from_millis(1500)).await;
    let app = app_with(
        &api,
        &[("RETRY_MAX_ATTEMPTS", "1"), ("DELAYED_RETRY_SCALE", "0.05")],
    )
    .await;
    let id = id_of(&app.create_order().await);
    // The first call fails and parks the order; its delayed retry is the second call.
    wait_for_calls(&api, id, 2).await;
    let parked = app.get_order(id).await;
    assert_eq!(parked["sync"]["state"], "retrying", "{parked}");
    let skipped_before = app.actor_metrics().await["events"]["skipped"]
        .as_u64()
        .expect("skipped count");
    discard(&app, id).await;
    // The retry's failure arrives after the discard, and is left alone.
    wait_for(
        "the failed retry's outcome",
        Duration::from_secs(10),
        || async {
            let skipped = app.actor_metrics().await["events"]["skipped"].as_u64();
            (skipped > Some(skipped_before)).then_some(())
        },
    )
    .await;
    let order = app.get_order(id).await;
    assert_eq!(order["sync"]["state"], "synced", "{order}");
    assert!(
        order["sync"]["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("discarded by an operator")),
        "{order}"
    );
    assert_eq!(api.recorder.calls_for(id).len(), 2);
}

#[actix_web::test]
async fn a_discarded_order_never_created_remotely_is_created_by_its_next_change() {
    let api = ExternalApi::start(Duration::ZERO).await;
    reject_bodies_with(&api, "Wrong Street", 422, Duration::ZERO).await;
    let app = app_with(&api, &[]).await;
    let mut body = order_body();
    body["street_address"] = json!("1 Wrong Street");
    let id = id_of(
        &app.post_order(&body)
            .await
            .json()
            .await
            .expect("order JSON"),
    );
    wait_for("the order to die", Duration::from_secs(20), || async {
        (app.get_order(id).await["sync"]["state"] == "dead").then_some(())
    })
    .await;
    discard(&app, id).await;
    let order = app.get_order(id).await;
    assert_eq!(order["sync"]["state"], "synced");
    assert_eq!(order["sync"]["synced_version"], 0, "never created remotely");

    app.patch_order(id, &json!({"street_address": "12 MG Road"}))
        .await;
    app.wait_until_synced(id).await;
    let last = last_ok_call(&api, id);
    assert_eq!((last.method.as_str(), last.version), ("POST", 2));
}

#[actix_web::test]
async fn a_duplicate_delayed_retry_is_a_no_op() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 1, 500, json!({"message": "down"}), None)
        .await;
    // A scale this large parks the order for hours: only a retry event can make it call.
    let app = app_with(
        &api,
        &[("RETRY_MAX_ATTEMPTS", "1"), ("DELAYED_RETRY_SCALE", "500")],
    )
    .await;
    let id = id_of(&app.create_order().await);
    let parked = wait_for("the order to park", Duration::from_secs(20), || async {
        let order = app.get_order(id).await;
        (order["sync"]["state"] == "retrying").then_some(order)
    })
    .await;
    assert_eq!(parked["sync"]["attempts"], 1);

    let publish_retry = |attempt: i64| {
        let keys = order_sync::engine::keys::Keys::new(&app.redis_prefix, 8);
        let stream = keys.stream(keys.shard_of(order_sync::domain::OrderId::new(id)));
        async move {
            let client = redis::Client::open(crate::helpers::redis_url()).expect("redis url");
            let mut redis = client
                .get_multiplexed_async_connection()
                .await
                .expect("redis");
            let fields = [
                ("order_id", id.to_string()),
                ("version", "1".to_string()),
                ("kind", "retry".to_string()),
                ("committed_at_ms", "0".to_string()),
                ("attempt", attempt.to_string()),
            ];
            let _: String = redis.xadd(&stream, "*", &fields).await.expect("xadd");
        }
    };
    // A duplicate of the retry for attempt 0, already made: skipped, no call.
    let skipped_before = app.actor_metrics().await["events"]["skipped"]
        .as_u64()
        .expect("skipped count");
    publish_retry(0).await;
    wait_for(
        "the duplicate to be skipped",
        Duration::from_secs(10),
        || async {
            let skipped = app.actor_metrics().await["events"]["skipped"].as_u64();
            (skipped > Some(skipped_before)).then_some(())
        },
    )
    .await;
    assert_eq!(api.recorder.calls_for(id).len(), 1);
    assert_eq!(app.get_order(id).await["sync"]["state"], "retrying");

    // The retry for the attempt the order waits for is made.
    publish_retry(1).await;
    app.wait_until_synced(id).await;
    assert_eq!(api.recorder.calls_for(id).len(), 2);
}

#[actix_web::test]
async fn an_inbound_write_back_racing_a_put_in_flight_is_carried_by_one_more_call() {
    let api = ExternalApi::start(Duration::ZERO).await;
    // PUTs take a while, so the write-back lands while one is in flight.
    Mock::given(method("PUT"))
        .respond_with(api.responder(
            200,
            json!({"message": "Order was successfully updated."}),
            Duration::from_millis(1000),
        ))
        .with_priority(1)
        .mount(&api.server)
        .await;
    let app = app_with(&api, &[]).await;
    let id = id_of(&app.create_order().await);
    app.wait_until_synced(id).await;

    app.patch_order(id, &json!({"amount": 5000})).await;
    wait_for_calls(&api, id, 2).await; // the POST, then the PUT now in flight
    let written_back = app
        .http
        .put(app.url(&format!("/inbound/{id}")))
        .json(&json!({"order": {"status": "canceled"}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(written_back.status(), 200);

    let order = app.wait_until_synced(id).await;
    assert_eq!(order["status"], "canceled");
    let puts: Vec<_> = api
        .recorder
        .calls_for(id)
        .into_iter()
        .filter(|c| c.method == "PUT")
        .collect();
    assert_eq!(
        puts.len(),
        2,
        "the in-flight PUT, then one carrying the merge"
    );
    let last = puts.last().expect("a PUT");
    assert_eq!(last.version, order["version"].as_i64().expect("version"));
    let sent = last.body.as_ref().expect("a body");
    assert_eq!(sent["status"], "canceled");
    assert_eq!(sent["cost"], 5000 + 180);
}

#[actix_web::test]
async fn an_inbound_write_back_to_a_synced_order_makes_no_call() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = app_with(&api, &[]).await;
    let id = id_of(&app.create_order().await);
    let synced = app.wait_until_synced(id).await;
    let written_back = app
        .http
        .patch(app.url(&format!("/inbound/{id}")))
        .json(&json!({"order": {"status": "canceled"}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(written_back.status(), 200);
    let order = app.get_order(id).await;
    assert_eq!(order["status"], "canceled");
    assert_eq!(order["version"], synced["version"], "no new version");
    assert_eq!(order["sync"]["state"], "synced");
    assert_eq!(api.recorder.calls_for(id).len(), 1);
}
