//! The health endpoints, for two different questions an orchestrator asks:
//!
//! - `GET /health/live`: should this process be restarted? 200 while the process and its engine
//!   run, whatever its dependencies do (a PostgreSQL failover must not restart every instance);
//!   503 only when the engine has given up.
//! - `GET /health/ready`: should this instance get work? PostgreSQL and Redis answer, this
//!   binary's migrations are applied, and on a worker the lease keeper has finished a round
//!   within the lease time. On an instance serving the API, the body also says whether any
//!   worker is syncing (`workers`), without making the API unready for it.
//! - `GET /health`: both at once, as before (200 when PostgreSQL and Redis answer and the
//!   engine runs or is off on purpose, 503 naming what failed when not).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::config::Role;
use crate::engine::EngineState;

/// How long one dependency may take to answer before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "PostgreSQL and Redis answer, and the sync engine runs (`engine`: `ok`, or `off` with `SYNC_ENGINE=false`; `sync`: `running`, or `paused` by an operator; `external_api`: `healthy`, `down` or `probing`, which does not make this instance unhealthy)"), (status = 503, description = "One of them is down, or the sync engine failed; the body names which")))]
pub async fn check_health(state: web::Data<AppState>) -> HttpResponse {
    let postgres = tokio::time::timeout(PROBE_TIMEOUT, crate::db::ping(&state.db)).await;
    let postgres_ok = matches!(postgres, Ok(Ok(_)));
    let mut redis = state.redis.clone();
    let ping = tokio::time::timeout(
        PROBE_TIMEOUT,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await;
    let redis_ok = matches!(ping, Ok(Ok(_)));
    let engine = state.engine.state();
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
        "sync": if state.engine.is_paused() { "paused" } else { "running" },
        // The external API's health for the cluster: `down` or `probing` is not this
        // instance's fault, so the answer stays 200 (a restart would not help).
        "external_api": state.engine.destination().state,
    });
    if let Some(shards) = state.engine.shards() {
        // Which instance answered, and its share of the backlog (a rolling deploy's progress).
        body["instance"] = json!(state.engine.instance_id());
        body["shards"] = json!(shards);
    }
    if all_ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "The process and its sync engine run; dependencies are not checked (`engine`: `ok`, `off` or `relay only`)"), (status = 503, description = "The sync engine has given up; the body says which task failed (the process is stopping)")))]
pub async fn check_live(state: web::Data<AppState>) -> HttpResponse {
    let engine = state.engine.state();
    let body = json!({"status": if matches!(engine, EngineState::Failed { .. }) { "down" } else { "ok" }, "engine": engine.describe()});
    if matches!(engine, EngineState::Failed { .. }) {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses((status = 200, description = "PostgreSQL and Redis answer, the migrations are applied, and on a worker the shard leases are being kept; `workers` says whether any worker syncs (`missing`: changes have waited 30 s with none)"), (status = 503, description = "Not ready; `why` names each reason")))]
pub async fn check_ready(state: web::Data<AppState>) -> HttpResponse {
    let mut why: Vec<String> = Vec::new();
    let pool = state.db.get_postgres_connection_pool();
    match tokio::time::timeout(PROBE_TIMEOUT, crate::db::migrations_applied(pool)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => why.push("postgres: this binary's migrations are not all applied".into()),
        Ok(Err(error)) => why.push(format!("postgres: {error}")),
        Err(_) => why.push(format!(
            "postgres: no answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
    let mut redis = state.redis.clone();
    match tokio::time::timeout(
        PROBE_TIMEOUT,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => why.push(format!("redis: {error}")),
        Err(_) => why.push(format!(
            "redis: no answer within {} s",
            PROBE_TIMEOUT.as_secs()
        )),
    }
    let engine = state.engine.state();
    if let EngineState::Failed { .. } = engine {
        why.push(format!("engine: {}", engine.describe()));
    }
    let mut body = json!({"role": state.role.as_str(), "instance": state.engine.instance_id(), "engine": engine.describe()});
    // A worker is ready while its keeper renews its leases.
    why.extend(state.engine.lease_trouble());
    if let Some(shards) = state.engine.shards() {
        body["shards"] = json!(shards);
    }
    if state.role != Role::Worker {
        let seen = state.engine.workers();
        body["workers"] = json!({
            "status": if !seen.known { "unknown" } else if seen.missing { "missing" } else { "ok" },
            "live": seen.live,
            "shards_held": seen.shards_held,
            "changes_waiting": seen.changes_waiting,
            "unserved_since": seen.unserved_since,
        });
        if seen.missing {
            body["warning"] = json!("no worker is live: changes wait and nothing reaches the external API; start an instance with ROLE=worker (or ROLE=all)");
        }
    }
    body["status"] = json!(if why.is_empty() { "ready" } else { "not ready" });
    if why.is_empty() {
        HttpResponse::Ok().json(body)
    } else {
        body["why"] = json!(why);
        HttpResponse::ServiceUnavailable().json(body)
    }
}
