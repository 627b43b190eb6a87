//! `GET /health`: 200 when PostgreSQL and Redis both answer and the sync engine runs (or is off
//! on purpose), 503 naming what failed when not.

use std::time::Duration;

use actix_web::{web, HttpResponse};
use sea_orm::ConnectionTrait;
use serde_json::json;

use super::AppState;
use crate::engine::EngineState;

/// How long one dependency may take to answer before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "PostgreSQL and Redis answer, and the sync engine runs (`engine`: `ok`, or `off` with `SYNC_ENGINE=false`; `sync`: `running`, or `paused` by an operator; `external_api`: `healthy`, `down` or `probing`, which does not make this instance unhealthy)"), (status = 503, description = "One of them is down, or the sync engine failed; the body names which")))]
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
    let engine = state.engine.borrow().clone();
    let engine_ok = !matches!(engine, EngineState::Failed { .. });
    let all_ok = postgres_ok && redis_ok && engine_ok;
    let word = |ok: bool| if ok { "ok" } else { "down" };
    let mut body = json!({
        "status": word(all_ok),
        "postgres": word(postgres_ok),
        "redis": word(redis_ok),
        "engine": engine.describe(),
        "external": state.external_api,
        // Paused by an operator (`POST /admin/sync/pause`): healthy, and making no calls.
        "sync": if state.pause.is_paused() { "paused" } else { "running" },
        // The external API's health for the cluster: `down` or `probing` is not this
        // instance's fault, so the answer stays 200 (a restart would not help).
        "external_api": state.destination.view().state,
    });
    if let Some(leases) = &state.leases {
        // Which instance answered, and its share of the backlog (a rolling deploy's progress).
        body["instance"] = json!(leases.instance().as_str());
        body["shards"] = json!(leases.held_shards());
    }
    if all_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
