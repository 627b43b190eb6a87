//! Figure 2: coalescing, many quick updates of each order through the HTTP API.

use std::time::Instant;

use futures_util::StreamExt;
use serde_json::{json, Value};

use super::{wait_all_synced, Row, UNTHROTTLED};
use crate::harness::{get_json, post, start_fake, start_service, BenchDb};
use crate::Scale;

/// Concurrent clients of figure 2's burst.
const PATCH_CLIENTS: usize = 32;

/// Figure 2: many quick updates of each order coalesce into few calls. The burst goes through
/// the HTTP API (`PATCH /orders/{id}`) from concurrent clients, while the external API takes
/// `coalesce_latency` per call, as a real one would.
pub async fn coalescing(scale: &Scale) -> anyhow::Result<Row> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let service = start_service(&db, &fake, &UNTHROTTLED).await?;
    let orders = scale.coalesce_orders;
    seeder::write::insert_orders(&db.pool, orders, true, |_| {}).await?;
    wait_all_synced(&db, scale.long_timeout).await?;
    post(&fake.url("/_fake/reset")).await?;
    let http = reqwest::Client::new();
    http.put(fake.url("/_fake/config"))
        .json(
            &json!({"latency_ms": scale.coalesce_latency.as_millis() as u64, "failure_rate": 0.0}),
        )
        .send()
        .await?
        .error_for_status()?;

    // Order after order, each changed `coalesce_updates` times (each change a new amount) by
    // PATCH_CLIENTS concurrent clients: a burst of changes to one order, as when several
    // systems update it at once. (Round after round over all orders instead spreads one
    // order's changes over seconds, each synced before the next arrives: nothing to coalesce.)
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders ORDER BY id")
        .fetch_all(&db.pool)
        .await?;
    let updates = scale.coalesce_updates;
    let changes: Vec<(u32, i64)> = ids
        .iter()
        .flat_map(|id| (0..updates).map(move |round| (round, *id)))
        .collect();
    let burst = Instant::now();
    let refused = futures_util::stream::iter(changes)
        .map(|(round, id)| {
            let (http, url) = (http.clone(), service.url(&format!("/orders/{id}")));
            async move {
                let answer = http
                    .patch(url)
                    .json(&json!({"amount": 10_000 + i64::from(round)}))
                    .send()
                    .await;
                !answer.is_ok_and(|answer| answer.status().is_success())
            }
        })
        .buffer_unordered(PATCH_CLIENTS)
        .filter(|refused| std::future::ready(*refused))
        .count()
        .await;
    let burst_s = burst.elapsed().as_secs_f64();
    anyhow::ensure!(refused == 0, "{refused} PATCH requests failed");
    wait_all_synced(&db, scale.long_timeout).await?;
    let stats = get_json(&fake.url("/_fake/stats")).await?;
    let calls =
        stats["calls"]["PUT"].as_u64().unwrap_or(0) + stats["calls"]["POST"].as_u64().unwrap_or(0);
    let per_order = calls as f64 / orders as f64;
    let stored: Vec<Value> = http
        .get(fake.url("/v1/orders"))
        .bearer_auth("bench")
        .send()
        .await?
        .json()
        .await?;
    let stored: std::collections::HashMap<i64, (i64, i64)> = stored
        .iter()
        .filter_map(|o| {
            Some((
                o["id"].as_i64()?,
                (o["version"].as_i64()?, o["cost"].as_i64()?),
            ))
        })
        .collect();
    // The external body carries `cost` (amount + tax).
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as("SELECT id, version, amount + tax FROM orders")
        .fetch_all(&db.pool)
        .await?;
    let exact = rows
        .iter()
        .filter(|(id, version, cost)| stored.get(id) == Some(&(*version, *cost)))
        .count();
    drop(service);
    drop(fake);
    db.drop_now().await;
    let changes = orders * u64::from(scale.coalesce_updates);
    Ok(Row {
        figure: "2 coalescing (HTTP PATCH burst)",
        measured: format!(
            "{per_order:.2} calls/order; {changes} PATCHes by {PATCH_CLIENTS} clients in {burst_s:.1} s \
             ({:.0}/s); external = final state for {exact} of {orders}",
            changes as f64 / burst_s
        ),
        limit: format!(
            "{} changes/order, external API {} ms per call",
            scale.coalesce_updates,
            scale.coalesce_latency.as_millis()
        ),
        goal: "<= 3 calls/order, final state exact".into(),
        met: per_order <= 3.0 && exact == rows.len(),
    })
}
