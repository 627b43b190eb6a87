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
