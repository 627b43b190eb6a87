//! Outages ridden out: Redis restarted (losing its data), PostgreSQL connections killed, and the
//! external API failing for a while. Nothing is lost; the backlog drains once things are back.

use std::time::Duration;

use serde_json::{json, Value};

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{id_of, spawn_app_syncing_to, spawn_app_with, wait_for, TestApp};
use crate::process::OwnRedis;

async fn app_with(api: &ExternalApi, extra: &[(&str, &str)]) -> TestApp {
    spawn_app_syncing_to(&api.url(), extra).await
}

/// Each order's last call carries its current version.
fn assert_external_matches(api: &ExternalApi, orders: &[Value]) {
    for order in orders {
        let id = id_of(order);
        let last = api
            .recorder
            .calls_for(id)
            .into_iter()
            .rfind(|c| c.status == 200);
        assert_eq!(
            last.map(|c| c.version),
            order["version"].as_i64(),
            "order {id}"
        );
    }
}

#[actix_web::test]
async fn a_redis_restart_that_loses_its_data_loses_no_change() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let mut redis = OwnRedis::start().await;
    let redis_url = redis.url();
    let app = app_with(
        &api,
        &[("REDIS_URL", &redis_url), ("RECONCILE_QUIET_SECS", "1")],
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&app.create_order().await));
    }
    for &id in &ids {
        app.wait_until_synced(id).await;
    }

    redis.stop();
    // Writes still succeed: they go to PostgreSQL and wait in the outbox.
    for _ in 0..5 {
        ids.push(id_of(&app.create_order().await));
    }
    for &id in &ids[..3] {
        app.patch_order(id, &json!({"city": "Kochi"})).await;
    }
    redis.restart().await;

    let mut orders = Vec::new();
    for &id in &ids {
        orders.push(app.wait_until_synced(id).await);
    }
    assert_external_matches(&api, &orders);
}

#[actix_web::test]
async fn events_lost_with_redis_are_published_again_by_the_reconciler() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let mut redis = OwnRedis::start().await;
    let redis_url = redis.url();
    // An API-only instance commits changes and leaves them in the outbox ...
    let writer = spawn_app_with(&[("REDIS_URL", &redis_url), ("SYNC_ENGINE", "false")]).await;
    let id = id_of(&writer.create_order().await);
    // ... which are published and then lost with Redis before anyone consumed them.
    let published: Vec<(i64,)> = sqlx::query_as("DELETE FROM outbox RETURNING order_id")
        .fetch_all(&writer.pool)
        .await
        .unwrap();
    assert_eq!(published.len(), 1);
    redis.restart().await;

    let url = api.url();
    let db_url = format!("{}/{}", crate::helpers::database_server(), writer.db_name);
    let engine = spawn_app_with(&[
        ("DATABASE_URL", &db_url),
        ("REDIS_URL", &redis_url),
        ("EXTERNAL_API_URL", &url),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("RECONCILE_QUIET_SECS", "1"),
    ])
    .await;
    let order = wait_for(
        "the reconciler to sync the order",
        Duration::from_secs(30),
        || async {
            let order = writer.get_order(id).await;
            (order["sync"]["state"] == "synced").then_some(order)
        },
    )
    .await;
    assert_eq!(order["sync"]["synced_version"], 1);
    assert_eq!(api.recorder.calls_for(id).len(), 1);
    drop(engine);
}

#[actix_web::test]
async fn killed_postgres_connections_give_503s_at_worst_and_lose_nothing() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = app_with(&api, &[]).await;
    let killer = {
        let pool = app.pool.clone();
        let db_name = app.db_name.clone();
        actix_rt::spawn(async move {
            for _ in 0..15 {
                let _ = sqlx::query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                )
                .bind(&db_name)
                .execute(&pool)
                .await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let mut acked = Vec::new();
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..40 {
        let response = app.post_order(&crate::helpers::order_body()).await;
        *statuses.entry(response.status().as_u16()).or_insert(0) += 1;
        if response.status() == 201 {
            let order: Value = response.json().await.unwrap();
            if i % 2 == 0 {
                let patched = app
                    .http
                    .patch(app.url(&format!("/orders/{}", id_of(&order))))
                    .json(&json!({"amount": 4242}))
                    .send()
                    .await
                    .unwrap();
                *statuses.entry(patched.status().as_u16()).or_insert(0) += 1;
            }
            acked.push(id_of(&order));
        }
    }
    killer.await.unwrap();
    assert!(
        statuses.keys().all(|s| [200, 201, 503].contains(s)),
        "statuses seen: {statuses:?}"
    );
    assert!(
        acked.len() >= 10,
        "too few writes got through: {statuses:?}"
    );
    let mut orders = Vec::new();
    for &id in &acked {
        orders.push(app.wait_until_synced(id).await);
    }
    assert_external_matches(&api, &orders);
}

#[actix_web::test]
async fn while_the_external_api_fails_the_backlog_waits_and_then_drains_in_order() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = app_with(
        &api,
        &[("RETRY_MAX_ATTEMPTS", "2"), ("DELAYED_RETRY_SCALE", "0.05")],
    )
    .await;
    api.server.reset().await;
    api.fail_next("POST", 10_000, 500, json!({"message": "down"}), None)
        .await;
    api.fail_next("PUT", 10_000, 500, json!({"message": "down"}), None)
        .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(id_of(&app.create_order().await));
    }
    for &id in &ids {
        wait_for(
            "the order to be parked",
            Duration::from_secs(20),
            || async { (app.get_order(id).await["sync"]["state"] == "retrying").then_some(()) },
        )
        .await;
        app.patch_order(id, &json!({"amount": 777})).await;
    }
    api.server.reset().await;
    api.mount_stubs(Duration::ZERO).await;
    let mut orders = Vec::new();
    for &id in &ids {
        orders.push(app.wait_until_synced(id).await);
    }
    assert_external_matches(&api, &orders);
    for &id in &ids {
        let ok: Vec<_> = api
            .recorder
            .calls_for(id)
            .into_iter()
            .filter(|c| c.status == 200)
            .collect();
        assert_eq!(
            ok.len(),
            1,
            "the parked create carries the later change: one call"
        );
        assert_eq!((ok[0].method.as_str(), ok[0].version), ("POST", 2));
    }
}
