//! `GET /health` checks PostgreSQL and Redis for real.

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};
use crate::process::OwnRedis;

#[actix_web::test]
async fn health_is_200_when_postgres_and_redis_answer() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["postgres"].as_str(), body["redis"].as_str()),
        (Some("ok"), Some("ok"))
    );
}

#[actix_web::test]
async fn health_is_503_naming_redis_when_redis_goes_down() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(&[("REDIS_URL", &url)]).await;
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    redis.stop();
    let response = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["postgres"].as_str(), body["redis"].as_str()),
        (Some("ok"), Some("down"))
    );
}

async fn status_and_body(app: &crate::helpers::TestApp, path: &str) -> (u16, Value) {
    let response = app.http.get(app.url(path)).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Sets whether the app's database takes connections, and cuts those it has.
async fn database_reachable(app: &crate::helpers::TestApp, reachable: bool) {
    let admin = sqlx::PgPool::connect(&format!("{}/postgres", test_support::database_server()))
        .await
        .unwrap();
    // The name is the test's own (`unique_db_name`), not input.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS {reachable}",
        app.db_name
    )))
    .execute(&admin)
    .await
    .unwrap();
    if !reachable {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
            .bind(&app.db_name)
            .execute(&admin)
            .await
            .unwrap();
    }
    admin.close().await;
}

#[actix_web::test]
async fn a_database_or_redis_outage_makes_an_instance_unready_but_not_dead() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    let app = spawn_app_with(&[("REDIS_URL", &url)]).await;
    let (status, ready) = status_and_body(&app, "/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(status_and_body(&app, "/health/live").await.0, 200);

    // PostgreSQL refuses this instance (a failover, seen from here): not ready, still alive, so
    // an orchestrator takes it out of rotation without restarting it.
    database_reachable(&app, false).await;
    let (status, ready) = status_and_body(&app, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["why"].as_array().is_some_and(|why| why
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with("postgres:")))),
        "{ready}"
    );
    let (status, live) = status_and_body(&app, "/health/live").await;
    assert_eq!((status, live["status"].as_str()), (200, Some("ok")));
    database_reachable(&app, true).await;
    crate::helpers::wait_for(
        "ready again",
        std::time::Duration::from_secs(20),
        || async { (status_and_body(&app, "/health/ready").await.0 == 200).then_some(()) },
    )
    .await;

    // Redis goes away: the same.
    redis.stop();
    let (status, ready) = status_and_body(&app, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["why"].as_array().is_some_and(|why| why
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.starts_with("redis:")))),
        "{ready}"
    );
    assert_eq!(status_and_body(&app, "/health/live").await.0, 200);
}

#[actix_web::test]
async fn a_worker_that_loses_redis_is_not_ready_and_says_why_but_stays_live() {
    let mut redis = OwnRedis::start().await;
    let url = redis.url();
    // A short lease, so its running out is seen within seconds.
    let app = spawn_app_with(&[
        ("REDIS_URL", &url),
        ("ROLE", "worker"),
        ("EXTERNAL_TIMEOUT_MS", "1000"),
        ("SHARD_LEASE_MS", "4000"),
    ])
    .await;
    let ready = crate::helpers::wait_for(
        "the worker to be ready with its shards",
        std::time::Duration::from_secs(20),
        || async {
            let (status, ready) = status_and_body(&app, "/health/ready").await;
            (status == 200 && ready["shards"].as_array().is_some_and(|s| !s.is_empty()))
                .then_some(ready)
        },
    )
    .await;
    assert_eq!(ready["role"], "worker", "{ready}");
    assert!(
        ready.get("workers").is_none(),
        "a worker does not watch workers: {ready}"
    );

    redis.stop();
    let (status, ready) = status_and_body(&app, "/health/ready").await;
    assert_eq!(status, 503, "{ready}");
    let reasons = |ready: &Value| -> Vec<String> {
        ready["why"]
            .as_array()
            .map(|why| {
                why.iter()
                    .filter_map(|w| w.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(
        reasons(&ready).iter().any(|w| w.starts_with("redis: ")),
        "{ready}"
    );
    // Past the lease time without a renewal, it also says it holds no shard.
    let ready = crate::helpers::wait_for(
        "the worker to say its leases ran out",
        std::time::Duration::from_secs(20),
        || async {
            let (status, ready) = status_and_body(&app, "/health/ready").await;
            (status == 503
                && reasons(&ready)
                    .iter()
                    .any(|w| w.starts_with("leases: not renewed for")))
            .then_some(ready)
        },
    )
    .await;
    assert!(
        reasons(&ready)
            .iter()
            .any(|w| w.contains("this worker holds no shard")),
        "{ready}"
    );
    let (status, live) = status_and_body(&app, "/health/live").await;
    assert_eq!(
        (status, live["status"].as_str()),
        (200, Some("ok")),
        "{live}"
    );

    // Redis is back: ready again, with its shards.
    redis.restart().await;
    crate::helpers::wait_for(
        "the worker to be ready again",
        std::time::Duration::from_secs(30),
        || async {
            let (status, ready) = status_and_body(&app, "/health/ready").await;
            (status == 200 && ready["shards"].as_array().is_some_and(|s| !s.is_empty()))
                .then_some(())
        },
    )
    .await;
}
