//! Figures 8 and 9: several instances of one deployment, and rate-limit grants from Redis.

use std::time::Instant;

use super::throttle::measure_rate;
use super::{start_services, wait_all_synced, Row};
use crate::harness::{start_fake, BenchDb};
use crate::Scale;

/// [`UNTHROTTLED`](super::UNTHROTTLED) for several instances at once: each opens two pools, and
/// three at the default 20 connections would pass PostgreSQL's default `max_connections` (100).
const SHARING: [(&str, &str); 5] = [
    ("RATE_LIMIT_PER_SEC", "1000000"),
    ("RATE_LIMIT_BURST", "1000000"),
    ("MAX_CONCURRENT_CALLS", "64"),
    ("ORDER_ACTOR_IDLE_SECS", "5"),
    ("DATABASE_MAX_CONNECTIONS", "15"),
];

/// Figure 8: one deployment of 1, 2 and 3 instances on this machine: throughput with the
/// throttle off, and the rate achieved against one cluster-wide limit.
pub async fn several_instances(scale: &Scale) -> anyhow::Result<Vec<Row>> {
    let mut throughput = Vec::new();
    let mut rates = Vec::new();
    for count in 1..=3 {
        let db = BenchDb::create().await?;
        let fake = start_fake().await?;
        seeder::write::insert_orders(&db.pool, scale.instance_orders, true, |_| {}).await?;
        let started = Instant::now();
        let services = start_services(&db, &fake, &SHARING, count).await?;
        wait_all_synced(&db, scale.long_timeout).await?;
        throughput.push(scale.instance_orders as f64 / started.elapsed().as_secs_f64());
        drop(services);
        drop(fake);
        db.drop_now().await;

        rates.push(measure_rate(scale, count, scale.instance_rate_duration).await?);
    }
    let (rate, burst) = (scale.throttle_rate, scale.throttle_burst);
    let listed = |values: &[String]| values.join(", ");
    let per_count: Vec<String> = throughput
        .iter()
        .enumerate()
        .map(|(i, t)| format!("{}: {t:.0}", i + 1))
        .collect();
    let rate_rows: Vec<String> = rates
        .iter()
        .enumerate()
        .map(|(i, (achieved, busiest))| {
            format!("{}: {achieved:.0}/s (busiest 1 s {busiest})", i + 1)
        })
        .collect();
    let worst_error = rates
        .iter()
        .map(|(achieved, _)| (achieved - rate as f64).abs() / rate as f64)
        .fold(0.0, f64::max);
    let worst_window = rates.iter().map(|(_, busiest)| *busiest).max().unwrap_or(0);
    Ok(vec![
        Row {
            figure: "8a several instances, throughput (throttle off)",
            measured: format!(
                "orders/s with 1, 2, 3 instances: {} ({} orders)",
                listed(&per_count),
                scale.instance_orders
            ),
            limit: "one instance's figure (2 cores shared by all)".into(),
            goal: "no loss of throughput from sharing".into(),
            met: throughput
                .iter()
                .all(|t| *t >= 0.8 * throughput.first().copied().unwrap_or(0.0)),
        },
        Row {
            figure: "8b several instances, one rate limit",
            measured: format!("achieved with 1, 2, 3 instances: {}", listed(&rate_rows)),
            limit: format!("{rate}/s, burst {burst}, cluster-wide"),
            goal: format!(
                "within 2% ({:.1}% worst), window <= {}",
                worst_error * 100.0,
                rate + burst
            ),
            met: worst_error <= 0.02 && worst_window <= rate + burst,
        },
    ])
}

/// Figure 9: how many rate-limit grants one instance gets from Redis per second, asking one
/// request at a time as the throttle does, one call per request against `MAX_GRANT`-sized
/// batches; beside the round trip's own limit (PINGs one at a time).
pub async fn rate_limit_grants(scale: &Scale) -> anyhow::Result<Row> {
    use order_sync::engine::gate::rate_limit::{ClusterRateLimit, Grant};
    let redis = order_sync::engine::keys::connect(&crate::harness::redis_url()).await?;
    let key = format!("bench-grants-{}", uuid::Uuid::new_v4().simple());
    let requests = scale.grant_requests;
    let mut ping = redis.clone();
    let started = Instant::now();
    for _ in 0..requests {
        redis::cmd("PING").query_async::<String>(&mut ping).await?;
    }
    let round_trips = requests as f64 / started.elapsed().as_secs_f64();
    let mut per_batch = Vec::new();
    for batch in [1u32, 64] {
        let limit = ClusterRateLimit::new(redis.clone(), key.clone(), 1_000_000, 1_000_000);
        let started = Instant::now();
        let mut granted = 0u64;
        for _ in 0..requests {
            if let Grant::Calls(n) = limit.take(batch).await? {
                granted += u64::from(n);
            }
        }
        per_batch.push(granted as f64 / started.elapsed().as_secs_f64());
    }
    let mut cleanup = redis.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut cleanup)
        .await?;
    let (one, batched) = (per_batch[0], per_batch[1]);
    Ok(Row {
        figure: "9 rate-limit grants from Redis (one instance)",
        measured: format!(
            "{one:.0} calls/s one per request; {batched:.0} calls/s up to 64 per request ({requests} requests each)"
        ),
        limit: format!("{round_trips:.0} round trips/s (PING)"),
        goal: "batches lift the round-trip ceiling".into(),
        met: batched > one,
    })
}
