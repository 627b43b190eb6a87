//! `GET /metrics/actors`: what the sync engine is doing, as JSON.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

pub async fn actor_metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    let (p50, p95, p99, samples) = m.lag_percentiles();
    let calls: Vec<_> = m
        .calls()
        .into_iter()
        .map(|((verb, class), count)| json!({"verb": verb, "status": class, "count": count}))
        .collect();
    HttpResponse::Ok().json(json!({
        "actors": {
            "live": m.live_actors.get(),
            "spawned": m.actors_spawned.get(),
            "stopped": m.actors_stopped.get(),
            "restarted": m.actors_restarted.get(),
        },
        "events": {
            "received": m.events_received.get(),
            "synced": m.synced.get(),
            "skipped": m.skipped.get(),
            "purged": m.purged.get(),
            "retried": m.retried.get(),
            "parked": m.parked.get(),
            "dead": m.dead.get(),
        },
        "calls": calls,
        "throttle": state.throttle.state().await,
        "lag_ms": {"p50": p50, "p95": p95, "p99": p99, "samples": samples},
    }))
}
