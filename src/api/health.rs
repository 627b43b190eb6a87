//! `GET /health`: 200 when PostgreSQL and Redis both answer, 503 (with which one failed) when not.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use sea_orm::ConnectionTrait;
use serde_json::json;

use super::AppState;

/// How long one dependency may take to answer before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "PostgreSQL and Redis answer"), (status = 503, description = "One of them is down; the body names which")))]
pub async fn check_health(state: web::Data<AppState>) -> HttpResponse {
    let postgres =
        tokio::time::timeout(PROBE_TIMEOUT, state.db.execute_unprepared("SELECT 1")).await;
    let postgres_ok = matches!(postgres, Ok(Ok(_)));
    let mut redis = state.redis.clone();
    let ping = tokio::time::timeout(
        PROBE_TIMEOUT,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await;
    let redis_ok = matches!(ping, Ok(Ok(_)));
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let body = json!({
        "status": word(postgres_ok && redis_ok),
        "postgres": word(postgres_ok),
        "redis": word(redis_ok),
    });
    if postgres_ok && redis_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
