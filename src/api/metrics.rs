//! The metrics endpoints: `GET /metrics/actors` (JSON, for people and the dashboard) and
//! `GET /metrics` (Prometheus text). Both read the same figures: the engine's counters, plus
//! what is gathered at scrape time from the throttle, the supervisor, Redis and PostgreSQL.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::db;
use crate::db::jobs::{Job, JobKind, Verdict};
use crate::domain::SyncState;
use crate::engine::{Counts, DestinationView, Health, Snapshot, ThrottleState};

/// How long the external API has been in its current state (0 when it never changed).
fn state_seconds(view: &DestinationView) -> f64 {
    if view.since_ms == 0 {
        return 0.0;
    }
    (chrono::Utc::now().timestamp_millis() - view.since_ms).max(0) as f64 / 1000.0
}

/// The external API's health for people: its state, since when, the next probe, the calls
/// waiting here, and the orders waiting in the cluster (`pending` and `retrying`).
pub fn external_api_json(
    state: &AppState,
    throttle: Option<&ThrottleState>,
    orders: &[(SyncState, i64)],
) -> serde_json::Value {
    let view = state.engine.destination();
    let now_ms = chrono::Utc::now().timestamp_millis();
    let waiting: i64 = orders
        .iter()
        .filter(|(s, _)| matches!(s, SyncState::Pending | SyncState::Retrying))
        .map(|(_, n)| *n)
        .sum();
    json!({
        "state": view.state,
        "since": (view.since_ms > 0).then(|| chrono::DateTime::from_timestamp_millis(view.since_ms)).flatten(),
        "state_seconds": state_seconds(&view),
        "next_probe_in_ms": view.next_probe_ms.filter(|_| view.state != Health::Healthy).map(|at| (at - now_ms).max(0)),
        "probes_failed": view.probes_failed,
        "probes_sent_here": state.engine.probes_sent(),
        "calls_waiting_here": throttle.map_or(0, |t| t.slot_waiters),
        "orders_waiting": waiting,
    })
}

/// The sync states whose orders are counted: every state but `synced`, which holds nearly every
/// order (counting it would scan the table at each scrape) and owes nothing.
fn counted_states() -> Vec<SyncState> {
    SyncState::ALL
        .into_iter()
        .filter(|state| *state != SyncState::Synced)
        .collect()
}

/// What is gathered at scrape time: the engine's figures, and PostgreSQL's.
struct Gathered {
    engine: Snapshot,
    outbox_rows: i64,
    /// Orders by sync state: pending, retrying, dead.
    orders: Vec<(SyncState, i64)>,
    /// Running jobs with their progress, oldest first.
    jobs: Vec<(Job, f64)>,
}

async fn gather(state: &AppState) -> Gathered {
    let engine = state.engine.snapshot().await;
    let pool = state.db.get_postgres_connection_pool();
    let outbox_rows = db::outbox::count(pool).await.unwrap_or(-1);
    let states = counted_states();
    let counts = db::count_by_sync_state(pool, &states)
        .await
        .unwrap_or_default();
    let count = |state: SyncState| {
        counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    };
    let mut jobs = Vec::new();
    for job in db::jobs::running_jobs(pool).await.unwrap_or_default() {
        let progress = db::jobs::progress(pool, &job).await.map_or(0.0, |(p, _)| p);
        jobs.push((job, progress));
    }
    let gathered = Gathered {
        jobs,
        engine,
        outbox_rows,
        orders: states.iter().map(|state| (*state, count(*state))).collect(),
    };
    record(state, &gathered);
    gathered
}

/// Puts the scrape-time figures into the registry's gauges.
fn record(state: &AppState, g: &Gathered) {
    let m = &state.metrics;
    m.mailbox_depth_max.set(g.engine.mailbox.depth_max as i64);
    m.events_in_flight
        .set(state.engine.events_in_flight() as i64);
    if let Some(t) = &g.engine.throttle {
        m.throttle_tokens.set(t.tokens);
        m.throttle_waiters.set(t.waiters as i64);
        m.throttle_calls_in_flight.set(i64::from(t.in_flight));
        m.throttle_rate.set(i64::from(t.rate_per_sec));
        m.throttle_burst.set(i64::from(t.burst));
        m.throttle_paused_seconds
            .set(t.paused_for_ms.unwrap_or(0) as f64 / 1000.0);
    }
    for shard in &g.engine.shards {
        let label = shard.shard.to_string();
        m.stream_length
            .with_label_values(&[label.as_str()])
            .set(shard.length as i64);
        m.stream_pending
            .with_label_values(&[label.as_str()])
            .set(shard.pending as i64);
    }
    m.outbox_rows.set(g.outbox_rows);
    m.shards_held.set(
        state
            .engine
            .shards()
            .map_or(0, |shards| shards.len() as i64),
    );
    m.live_instances.set(g.engine.instances.len() as i64);
    m.workers_live.set(
        g.engine
            .instances
            .iter()
            .filter(|instance| !instance.shards.is_empty())
            .count() as i64,
    );
    m.workers_missing
        .set(i64::from(state.engine.workers().missing));
    for &(state, count) in &g.orders {
        m.orders.with_label_values(&[state.as_str()]).set(count);
    }
    m.engine_up.set(i64::from(state.engine.state().is_up()));
    m.sync_paused.set(i64::from(state.engine.is_paused()));
    let destination = state.engine.destination();
    m.external_api_up
        .set(i64::from(destination.state == Health::Healthy));
    m.external_api_state_seconds
        .set(state_seconds(&destination));
    let probes = state.engine.probes_sent();
    m.external_api_probes
        .inc_by(probes.saturating_sub(m.external_api_probes.get()));
    for kind in JobKind::ALL {
        let running: Vec<_> = g.jobs.iter().filter(|(job, _)| job.kind == kind).collect();
        m.jobs_running
            .with_label_values(&[kind.as_str()])
            .set(running.len() as i64);
        m.job_progress
            .with_label_values(&[kind.as_str()])
            .set(running.first().map_or(0.0, |(_, progress)| *progress));
    }
}

#[utoipa::path(get, path = "/metrics/actors", tag = "operations",
    responses((status = 200, description = "The sync engine's figures as JSON (see the README's metrics list)")))]
pub async fn actor_metrics(state: web::Data<AppState>) -> HttpResponse {
    let g = gather(&state).await;
    let m = &state.metrics;
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
            "mailbox": g.engine.mailbox,
        },
        "events": {
            "received": m.events_received.get(),
            "synced": m.synced.get(),
            "skipped": m.skipped.get(),
            "purged": m.purged.get(),
            "retried": m.retried.get(),
            "parked": m.parked.get(),
            "dead": m.dead.get(),
            "failed": m.failed.get(),
            "in_flight": m.events_in_flight.get(),
            "reclaimed": m.reclaimed.get(),
            "republished": m.republished.get(),
        },
        "engine": {
            "state": state.engine.state().describe(),
            "task_restarts": m.engine_task_restarts.get(),
        },
        "instance": {
            "id": state.engine.instance_id(),
            "role": state.role.as_str(),
            "shards": state.engine.shards().unwrap_or_default(),
        },
        // Every live instance (role, version, shards, counters since it started) and their
        // sums: what the dashboard shows, whichever instance serves it.
        "cluster": {
            "instances": g.engine.instances,
            "totals": Counts::sum_of(&g.engine.instances),
        },
        // Whether any worker syncs (`engine::view::workers`): the dashboard's banner.
        "workers": state.engine.workers(),
        "calls": calls,
        "throttle": g.engine.throttle,
        "backlog": {
            "stream_length": g.engine.shards.iter().map(|s| s.length).sum::<u64>(),
            "pending": g.engine.shards.iter().map(|s| s.pending).sum::<u64>(),
            "outbox_rows": g.outbox_rows,
            "shards": g.engine.shards,
        },
        "orders": g.orders.iter().map(|(state, count)| (state.to_string(), json!(count))).collect::<serde_json::Map<_, _>>(),
        "lag_ms": m.lag_summary(),
        "uptime_secs": state.started_at.elapsed().as_secs(),
        "sync": if state.engine.is_paused() { "paused" } else { "running" },
        "external_api": external_api_json(&state, g.engine.throttle.as_ref(), &g.orders),
        // The cluster's running jobs (from PostgreSQL), and the checks this instance made.
        "jobs": g.jobs.iter().map(|(job, progress)| json!({
            "id": job.id, "kind": job.kind, "sampled": job.sampled, "progress": progress,
            "total": job.total, "queued": job.queued, "checked": job.checked,
            "matching": job.matching, "skipped": job.skipped, "errors": job.errors,
            "repaired_missing": job.repaired_missing, "repaired_different": job.repaired_different,
            "repaired_stray": job.repaired_stray,
        })).collect::<Vec<_>>(),
        "audit_checks": Verdict::ALL.iter().map(|v| (v.as_str().to_string(), json!(m.audit_checks.with_label_values(&[v.as_str()]).get()))).collect::<serde_json::Map<_, _>>(),
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The same figures in the Prometheus text format", content_type = "text/plain")))]
pub async fn prometheus_metrics(state: web::Data<AppState>) -> HttpResponse {
    gather(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.prometheus_text())
}

/// The chart's history (`GET /metrics/history`).
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HistoryOut {
    /// Seconds between points.
    pub every_secs: u64,
    /// `cluster` (every instance's calls), or `instance` when Redis could not be read.
    pub scope: String,
    /// Oldest first: up to the last 15 minutes.
    pub points: Vec<crate::metrics::HistoryPoint>,
}

#[utoipa::path(get, path = "/metrics/history", tag = "operations",
    responses((status = 200, body = HistoryOut, description = "The cluster's throughput (calls synced per second, summed over the instances) and lag p95 (the worst instance's) over the last 15 minutes, a point every 5 s: the dashboard's chart. `scope` is `cluster`, or `instance` when Redis cannot be read and the points are this instance's own")))]
pub async fn metrics_history(state: web::Data<AppState>) -> HttpResponse {
    let (scope, points) = match state.engine.cluster_history().await {
        Ok(points) => ("cluster", points),
        Err(error) => {
            tracing::warn!(error = %error, "cannot read the cluster's history; showing this instance's");
            ("instance", state.metrics.history())
        }
    };
    HttpResponse::Ok().json(HistoryOut {
        every_secs: crate::metrics::HISTORY_EVERY.as_secs(),
        scope: scope.to_string(),
        points,
    })
}
