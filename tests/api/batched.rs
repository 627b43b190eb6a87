//! The engine's batched statements (`engine::actors::batched`): many order actors asking at
//! once each get their own answer, whatever batch their request travelled in.

use futures_util::future::join_all;
use order_sync::db::attempts::{AttemptOutcome, NewAttempt};
use order_sync::domain::OrderId;
use order_sync::engine::actors::BatchedQueries;
use serde_json::json;

use crate::helpers::{id_of, spawn_api_only};

/// A successful attempt of the order's create, as the engine logs it.
fn attempt(order_id: i64) -> NewAttempt {
    NewAttempt {
        order_id: OrderId::new(order_id),
        version: 1,
        verb: "POST",
        outcome: AttemptOutcome::Ok,
        http_status: Some(200),
        excerpt: "created".into(),
        duration_ms: 1,
        instance: "test".into(),
        attempted_at: chrono::Utc::now(),
    }
}

#[actix_web::test]
async fn reads_and_records_asked_at_once_each_get_their_own_answer() {
    let app = spawn_api_only().await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        ids.push(id_of(&app.create_order().await));
    }
    let changed = ids[17];
    app.patch_order(changed, &json!({"amount": 4321})).await;
    // Two connections for 300 requests: most of them wait, and go out together.
    let batched = BatchedQueries::start(app.pool.clone(), app.pool.clone());

    let first = join_all(
        ids.iter()
            .map(|&id| batched.load_marking_create(OrderId::new(id))),
    )
    .await;
    for (&id, row) in ids.iter().zip(first) {
        let row = row.expect("the read").expect("the order exists");
        assert_eq!(row.id().get(), id);
        assert_eq!(row.version(), if id == changed { 2 } else { 1 });
        assert!(
            row.marked_now && row.create_sent,
            "order {id}: marked by this read"
        );
    }
    assert_eq!(
        batched
            .load_marking_create(OrderId::new(changed))
            .await
            .expect("the read")
            .map(|row| row.order.amount),
        Some(4321)
    );
    let again = join_all(
        ids.iter()
            .map(|&id| batched.load_marking_create(OrderId::new(id))),
    )
    .await;
    for row in again {
        let row = row.expect("the read").expect("the order exists");
        assert!(row.create_sent && !row.marked_now, "marked once, not twice");
    }
    let missing =
        join_all([i64::MAX, ids[0]].map(|id| batched.load_marking_create(OrderId::new(id)))).await;
    assert!(missing[0].as_ref().expect("the read").is_none());
    assert_eq!(
        missing[1]
            .as_ref()
            .expect("the read")
            .as_ref()
            .map(|row| row.id().get()),
        Some(ids[0])
    );

    // Every order synced at version 1: each answer is that order's own current version, and
    // each call's attempt is written in the same statement.
    let recorded = join_all(
        ids.iter()
            .map(|&id| batched.record_synced(OrderId::new(id), 1, vec![attempt(id)])),
    )
    .await;
    for (&id, current) in ids.iter().zip(recorded) {
        let expected = if id == changed { 2 } else { 1 };
        assert_eq!(current.expect("the record"), Some(expected), "order {id}");
    }
    let states: Vec<(String, i64)> = sqlx::query_as(
        "SELECT sync_state, count(*) FROM orders WHERE synced_version = 1 GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .expect("the states");
    assert_eq!(
        states,
        [("pending".to_string(), 1), ("synced".to_string(), 299)]
    );
    let logged: Vec<i64> =
        sqlx::query_scalar("SELECT order_id FROM sync_attempts ORDER BY order_id")
            .fetch_all(&app.pool)
            .await
            .expect("the attempt log");
    assert_eq!(logged, ids, "one attempt per order, each its own");
    assert_eq!(
        batched
            .record_synced(OrderId::new(i64::MAX), 1, Vec::new())
            .await
            .expect("the record"),
        None
    );
}
