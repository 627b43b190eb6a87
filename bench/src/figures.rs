//! One function per figure. Each measures its figure and, where the goal is a ratio, the limit
//! beside it in the same run, and returns a row of the table.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use order_sync::config::Secret;
use order_sync::db::sync as queries;
use order_sync::external::payload::ExternalOrder;
use order_sync::external::{ExternalCall, ExternalClient};
use rand::Rng;
use serde_json::{json, Value};
use sqlx::postgres::{PgPoolCopyExt, PgPoolOptions};

use crate::harness::{
    get_json, percentile, post, start_fake, start_service, wait_for, BenchDb, ChildProcess,
};
use crate::Scale;

/// One line of the table.
pub struct Row {
    pub figure: &'static str,
    pub measured: String,
    pub limit: String,
    pub goal: String,
    pub met: bool,
}

/// The engine's settings with the throttle off: the highest rate and burst the service accepts,
/// far above what it can call.
const UNTHROTTLED: [(&str, &str); 4] = [
    ("RATE_LIMIT_PER_SEC", "1000000"),
    ("RATE_LIMIT_BURST", "1000000"),
    ("MAX_CONCURRENT_CALLS", "64"),
    ("ORDER_ACTOR_IDLE_SECS", "5"),
];
/// [`UNTHROTTLED`] for several instances at once: each opens two pools, and three at the default
/// 20 connections would pass PostgreSQL's default `max_connections` (100).
const SHARING: [(&str, &str); 5] = [
    ("RATE_LIMIT_PER_SEC", "1000000"),
    ("RATE_LIMIT_BURST", "1000000"),
    ("MAX_CONCURRENT_CALLS", "64"),
    ("ORDER_ACTOR_IDLE_SECS", "5"),
    ("DATABASE_MAX_CONNECTIONS", "15"),
];
const CONCURRENCY: usize = 64;
/// The raw loop's rate is a rate: at a million orders (`BENCH_MODE=large`) it is measured on the
/// first 100,000, which takes a minute rather than ten.
const RAW_LOOP_MOST: u64 = 100_000;

/// Waits until no order is behind. It polls every 250 ms with a count over the partial index of
/// unsynced orders: a full count every 50 ms over a million rows would itself slow the engine.
pub(crate) async fn wait_all_synced(db: &BenchDb, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let behind = db
            .count("SELECT count(*) FROM orders WHERE synced_version < version")
            .await;
        if behind == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{behind} orders still behind after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Figures 1 and 5: end-to-end throughput against the raw ceiling, and memory and actors.
pub async fn throughput_and_memory(scale: &Scale, orders: u64) -> anyhow::Result<(Row, Row)> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    seeder::write::insert_orders(&db.pool, orders, true, |_| {}).await?;

    // The raw ceiling: the same calls, concurrency and client, with the SELECT and UPDATE of each
    // order, in a plain loop with nothing else.
    let ceiling = raw_ceiling(&db.url, &fake.url(""), orders.min(RAW_LOOP_MOST)).await?;
    // PostgreSQL's own per-order limit on the same rows: one SELECT and one UPDATE by primary
    // key per transaction, as the service does per order (issue 13's yardstick).
    let pgbench = pgbench_select_update(&db, orders, scale.pgbench_duration)
        .map_err(|error| eprintln!("[bench] no pgbench figure: {error:#}"))
        .ok();
    sqlx::query("UPDATE orders SET synced_version = 0, sync_state = 'pending', synced_at = NULL")
        .execute(&db.pool)
        .await?;
    post(&fake.url("/_fake/reset")).await?;

    // Timed from the spawn: the engine starts syncing before the HTTP server answers, so timing
    // from "ready" would flatter it (its start-up is counted against it instead).
    let started = Instant::now();
    let service = start_service(&db, &fake, &UNTHROTTLED).await?;
    let peak_actors = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, url) = (
            peak_actors.clone(),
            sampling.clone(),
            service.url("/metrics/actors"),
        );
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(m) = get_json(&url).await {
                    peak.fetch_max(m["actors"]["live"].as_u64().unwrap_or(0), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    wait_all_synced(&db, scale.long_timeout).await?;
    let elapsed = started.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    sampler.await?;
    let engine = orders as f64 / elapsed;
    let ratio = engine / ceiling;
    let peak_rss = service.peak_rss_mib();
    let idle_url = service.url("/metrics/actors");
    let after_idle = wait_for("idle actors to stop", Duration::from_secs(120), || async {
        let live = get_json(&idle_url).await.ok()?["actors"]["live"].as_u64()?;
        (live == 0).then_some(live)
    })
    .await
    .unwrap_or(u64::MAX);
    let peak_rss_after = service.peak_rss_mib();
    drop(service);
    drop(fake);
    db.drop_now().await;

    // Issue 13's goal is the ratio to pgbench (0.5, aiming at 1.0); the raw loop's ratio aims
    // at 0.8. Without pgbench only the raw loop's goal can be judged.
    let to_pgbench = pgbench.map(|tps| engine / tps);
    let throughput = Row {
        figure: "1 end-to-end throughput (throttle off)",
        measured: format!("{engine:.0} orders/s ({orders} orders, {elapsed:.1} s)"),
        limit: match pgbench {
            Some(tps) => {
                format!("pgbench SELECT+UPDATE {tps:.0} tps; raw loop {ceiling:.0} calls/s")
            }
            None => format!("pgbench unavailable; raw loop {ceiling:.0} calls/s"),
        },
        goal: match to_pgbench {
            Some(to_pgbench) => {
                format!("to pgbench {to_pgbench:.2} >= 0.5; to raw loop {ratio:.2} >= 0.8")
            }
            None => format!("to raw loop {ratio:.2} >= 0.8"),
        },
        met: to_pgbench.is_none_or(|r| r >= 0.5) && ratio >= 0.8,
    };
    let memory = Row {
        figure: "5 memory and actors",
        measured: format!(
            "peak RSS {:.0} MiB; live actors {} at peak, {} after idle timeout ({orders} orders synced in {elapsed:.0} s)",
            peak_rss_after.max(peak_rss),
            peak_actors.load(Ordering::Relaxed),
            after_idle
        ),
        limit: "64 MiB; 0 actors".into(),
        goal: "RSS <= 64 MiB, 0 after idle".into(),
        met: peak_rss_after.max(peak_rss) <= 64.0 && after_idle == 0,
    };
    Ok((throughput, memory))
}

/// Transactions per second of `pgbench -n -c 32 -j 2 -T {secs} -f {script}` against `db`, the
/// script being one SELECT and one UPDATE of a random order by primary key (`BENCH_PGBENCH`
/// names another pgbench binary).
fn pgbench_select_update(db: &BenchDb, orders: u64, duration: Duration) -> anyhow::Result<f64> {
    let script = std::env::temp_dir().join(format!("{}.pgbench.sql", db.name));
    std::fs::write(
        &script,
        format!(
            "\\set id random(1, {orders})\n\
             SELECT id, version, synced_version, status, amount, tax FROM orders WHERE id = :id;\n\
             UPDATE orders SET synced_version = version WHERE id = :id;\n"
        ),
    )?;
    let binary = std::env::var("BENCH_PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let output = std::process::Command::new(binary)
        .args(["-n", "-c", "32", "-j", "2", "-T"])
        .arg(duration.as_secs().max(1).to_string())
        .arg("-f")
        .arg(&script)
        .arg(&db.url)
        .output()?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix("tps = ")?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "pgbench gave no tps: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
}

/// Calls per second of the plain loop. awc is not `Send`: it runs on an actix system of its own.
async fn raw_ceiling(db_url: &str, api_url: &str, orders: u64) -> anyhow::Result<f64> {
    let (db_url, api_url) = (db_url.to_string(), api_url.to_string());
    let handle = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let pool = PgPoolOptions::new()
                .max_connections(20)
                .connect(&db_url)
                .await?;
            // The service's default timeout and Retry-After cap (the fake never sends one).
            let client = ExternalClient::new(
                &api_url,
                Secret::new("bench"),
                Duration::from_secs(5),
                Duration::from_secs(300),
                order_sync::external::tls::client_config()?,
            );
            let next = Rc::new(Cell::new(1_i64));
            let started = Instant::now();
            let workers = (0..CONCURRENCY).map(|_| {
                let (pool, client, next) = (pool.clone(), client.clone(), next.clone());
                async move {
                    loop {
                        let id = next.get();
                        if id > orders as i64 {
                            return anyhow::Ok(());
                        }
                        next.set(id + 1);
                        let Some(row) = queries::load(&pool, id).await? else {
                            continue;
                        };
                        client
                            .send(&ExternalCall::Create(ExternalOrder::from(&row.order)))
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                        queries::record_synced(&pool, id, row.version()).await?;
                    }
                }
            });
            futures_util::future::try_join_all(workers).await?;
            anyhow::Ok(orders as f64 / started.elapsed().as_secs_f64())
        })
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("the raw loop panicked"))?
}

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

/// Figure 3: lag from commit to external success at a steady rate of changes through the API.
pub async fn lag(scale: &Scale) -> anyhow::Result<Row> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let service = start_service(&db, &fake, &UNTHROTTLED).await?;
    let http = reqwest::Client::new();
    let body = json!({"status": "pending", "placed_at": "2025-06-01T10:00:00Z", "amount": 1000, "tax": 180,
        "street_address": "12 MG Road", "city": "Pune", "state": "MH", "country": "India", "pincode": "411001"});
    let ids = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / scale.lag_rate as f64));
    let end = Instant::now() + scale.lag_duration;
    let mut tasks = Vec::new();
    while Instant::now() < end {
        ticker.tick().await;
        let (http, ids, body, base) = (http.clone(), ids.clone(), body.clone(), service.url(""));
        let target = {
            let ids = ids.lock().expect("ids");
            (!ids.is_empty() && rand::thread_rng().gen_bool(0.5))
                .then(|| ids[rand::thread_rng().gen_range(0..ids.len())])
        };
        tasks.push(tokio::spawn(async move {
            match target {
                Some(id) => {
                    let _ = http
                        .patch(format!("{base}/orders/{id}"))
                        .json(&json!({"amount": 2000}))
                        .send()
                        .await;
                }
                None => {
                    if let Ok(r) = http.post(format!("{base}/orders")).json(&body).send().await {
                        if let Ok(order) = r.json::<Value>().await {
                            if let Some(id) = order["id"].as_i64() {
                                ids.lock().expect("ids").push(id);
                            }
                        }
                    }
                }
            }
        }));
    }
    let sent = tasks.len();
    futures_util::future::join_all(tasks).await;
    wait_all_synced(&db, scale.long_timeout).await?;
    let lag = get_json(&service.url("/metrics/actors")).await?["lag_ms"].clone();
    let p99 = lag["p99"].as_u64().unwrap_or(u64::MAX);
    drop(service);
    drop(fake);
    db.drop_now().await;
    Ok(Row {
        figure: "3 sync lag at steady load",
        measured: format!(
            "p50 {} ms, p99 {p99} ms, max {} ms ({sent} changes at {}/s, {} synced calls)",
            lag["p50"], lag["max"], scale.lag_rate, lag["samples"]
        ),
        limit: "10 ms".into(),
        goal: "p99 <= 10 ms".into(),
        met: p99 <= 10,
    })
}

/// Figure 4: the achieved call rate against the configured one, with load far above it.
pub async fn throttle(scale: &Scale) -> anyhow::Result<Row> {
    let (rate, burst) = (scale.throttle_rate, scale.throttle_burst);
    let seconds = scale.throttle_duration.as_secs();
    let (achieved, busiest) = measure_rate(scale, 1, scale.throttle_duration).await?;
    let error = (achieved - rate as f64).abs() / rate as f64;
    Ok(Row {
        figure: "4 throttle accuracy",
        measured: format!("{achieved:.0} calls/s over {seconds} s; busiest 1 s window {busiest}"),
        limit: format!("{rate}/s, burst {burst}"),
        goal: format!(
            "within 2% ({:.1}%), window <= {}",
            error * 100.0,
            rate + burst
        ),
        met: error <= 0.02 && busiest <= rate + burst,
    })
}

/// `count` instances with the figure's limit and load far above it, measured for `window` after
/// the first second: the achieved mean rate and the busiest 1 s window.
async fn measure_rate(scale: &Scale, count: usize, window: Duration) -> anyhow::Result<(f64, u64)> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let (rate, burst) = (scale.throttle_rate, scale.throttle_burst);
    let seconds = window.as_secs();
    seeder::write::insert_orders(&db.pool, rate * (seconds + 4), true, |_| {}).await?;
    let (rate_s, burst_s) = (rate.to_string(), burst.to_string());
    let limits = [
        ("RATE_LIMIT_PER_SEC", rate_s.as_str()),
        ("RATE_LIMIT_BURST", burst_s.as_str()),
        ("MAX_CONCURRENT_CALLS", "64"),
        // Two pools each: three instances at 15 stay under PostgreSQL's 100 connections.
        ("DATABASE_MAX_CONNECTIONS", "15"),
    ];
    let services = start_services(&db, &fake, &limits, count).await?;
    // The measurement window itself (not a wait for anything): the first second, then `window`.
    tokio::time::sleep(window + Duration::from_millis(1500)).await;
    let timeline = get_json(&fake.url("/_fake/timeline")).await?;
    drop(services);
    drop(fake);
    db.drop_now().await;
    rate_from_timeline(&timeline, seconds)
}

/// From the fake's timeline (calls per 100 ms slot): the mean rate over `seconds` after the
/// first second (which holds the burst), and the most calls in any 1 s window.
fn rate_from_timeline(timeline: &Value, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let slots: Vec<(u64, u64)> = timeline["calls"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let Some(first) = slots.iter().map(|(slot, _)| *slot).min() else {
        anyhow::bail!("the fake received no calls");
    };
    let in_range = |from: u64, to: u64| {
        slots
            .iter()
            .filter(|(s, _)| *s >= from && *s < to)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let achieved = in_range(first + 10, first + 10 + seconds * 10) as f64 / seconds as f64;
    let last = slots.iter().map(|(slot, _)| *slot).max().unwrap_or(first);
    let busiest = (first..=last.saturating_sub(9))
        .map(|start| in_range(start, start + 10))
        .max()
        .unwrap_or(0);
    Ok((achieved, busiest))
}

/// `count` services on `db` at once (one deployment: the same Redis prefix), spawned together.
async fn start_services(
    db: &BenchDb,
    fake: &ChildProcess,
    extra: &[(&str, &str)],
    count: usize,
) -> anyhow::Result<Vec<ChildProcess>> {
    let starting = (0..count).map(|_| start_service(db, fake, extra));
    futures_util::future::try_join_all(starting).await
}

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
    use order_sync::engine::cluster::rate_limit::{ClusterRateLimit, Grant};
    let redis = order_sync::engine::backlog::connect(&crate::harness::redis_url()).await?;
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

/// Figure 6: the seeder against PostgreSQL's COPY of the same kind of rows from a file.
pub async fn seeder_speed(scale: &Scale) -> anyhow::Result<Row> {
    let db = BenchDb::create().await?;
    let orders = scale.seeder_orders;
    let csv = std::env::temp_dir().join(format!("{}.csv", db.name));
    write_csv(&csv, orders)?;
    let copy_started = Instant::now();
    let mut copy = db
        .pool
        .copy_in_raw(
            "COPY orders (status, placed_at, delivered_at, amount, tax, street_address, city, state, country, pincode)
             FROM STDIN (FORMAT csv)",
        )
        .await?;
    let file = tokio::fs::File::open(&csv).await?;
    copy.read_from(file).await?;
    copy.finish().await?;
    let copy_rate = orders as f64 / copy_started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&csv);
    sqlx::query("TRUNCATE orders, outbox")
        .execute(&db.pool)
        .await?;

    let seeded = Instant::now();
    seeder::write::insert_orders(&db.pool, orders, false, |_| {}).await?;
    let seeder_rate = orders as f64 / seeded.elapsed().as_secs_f64();
    sqlx::query("TRUNCATE orders, outbox")
        .execute(&db.pool)
        .await?;
    let with_outbox = Instant::now();
    seeder::write::insert_orders(&db.pool, orders, true, |_| {}).await?;
    let with_outbox_rate = orders as f64 / with_outbox.elapsed().as_secs_f64();
    db.drop_now().await;
    let ratio = seeder_rate / copy_rate;
    Ok(Row {
        figure: "6 seeder",
        measured: format!(
            "{seeder_rate:.0} orders/s (SYNC=false), {with_outbox_rate:.0} orders/s with outbox rows ({orders} orders)"
        ),
        limit: format!("COPY {copy_rate:.0} rows/s"),
        goal: format!("ratio {ratio:.2} >= 0.5"),
        met: ratio >= 0.5,
    })
}

/// The same kind of rows the seeder makes, as CSV.
fn write_csv(path: &std::path::Path, orders: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let now = chrono::Utc::now();
    let mut rng = rand::thread_rng();
    let mut left = orders;
    while left > 0 {
        let n = left.min(10_000);
        let c = seeder::generate::OrderColumns::fake(n as usize, now, &mut rng);
        for i in 0..c.len() {
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                c.status[i],
                c.placed_at[i].to_rfc3339(),
                c.delivered_at[i]
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default(),
                c.amount[i],
                c.tax[i],
                quote(&c.street_address[i]),
                quote(&c.city[i]),
                quote(&c.state[i]),
                quote(&c.country[i]),
                quote(&c.pincode[i]),
            )?;
        }
        left -= n;
    }
    out.flush()?;
    Ok(())
}

/// Figure 7: `POST /orders` at a fixed concurrency, against a plain sqlx loop running the same
/// two-insert transaction at the same concurrency and pool size.
pub async fn ingest(scale: &Scale) -> anyhow::Result<Row> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    // The API alone: the engine would compete for the same two cores.
    let service = start_service(
        &db,
        &fake,
        &[("SYNC_ENGINE", "false"), ("DATABASE_MAX_CONNECTIONS", "20")],
    )
    .await?;
    let (api_rate, api_p99) = drive_api(&service, scale.ingest_duration).await?;
    drop(service);
    let (sql_rate, sql_p99) = drive_sql(&db.url, scale.ingest_duration).await?;
    drop(fake);
    db.drop_now().await;
    let ratio = api_rate / sql_rate;
    Ok(Row {
        figure: "7 ingest (POST /orders, concurrency 64)",
        measured: format!("{api_rate:.0} req/s, p99 {api_p99:.1} ms"),
        limit: format!("sqlx loop {sql_rate:.0} tx/s, p99 {sql_p99:.1} ms"),
        goal: format!("ratio {ratio:.2} >= 0.6"),
        met: ratio >= 0.6,
    })
}

const ORDER_JSON: &str = r#"{"status": "delivered", "placed_at": "2025-06-01T10:00:00Z", "delivered_at": "2025-06-04T10:00:00Z",
    "amount": 1000, "tax": 180, "street_address": "12 MG Road", "city": "Pune", "state": "Maharashtra",
    "country": "India", "pincode": "411001"}"#;

async fn drive_api(
    service: &ChildProcess,
    duration: std::time::Duration,
) -> anyhow::Result<(f64, f64)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let url = service.url("/orders");
    measure(duration, move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .body(ORDER_JSON)
                .send()
                .await?;
            anyhow::ensure!(
                response.status() == 201,
                "POST /orders answered {}",
                response.status()
            );
            Ok(())
        }
    })
    .await
}

async fn drive_sql(url: &str, duration: std::time::Duration) -> anyhow::Result<(f64, f64)> {
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await?;
    measure(duration, move || {
        let pool = pool.clone();
        async move {
            let mut txn = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO orders (status, placed_at, delivered_at, amount, tax, street_address, city, state, country, pincode)
                 VALUES ('delivered', '2025-06-01T10:00:00Z', '2025-06-04T10:00:00Z', 1000, 180, '12 MG Road', 'Pune',
                         'Maharashtra', 'India', '411001') RETURNING id",
            )
            .fetch_one(&mut *txn)
            .await?;
            sqlx::query("INSERT INTO outbox (order_id, version, action) VALUES ($1, 1, 'create')")
                .bind(id)
                .execute(&mut *txn)
                .await?;
            txn.commit().await?;
            Ok(())
        }
    })
    .await
}

/// Runs `op` from `CONCURRENCY` loops for `duration`; returns (operations per second, p99 ms).
async fn measure<F, Fut>(duration: std::time::Duration, op: F) -> anyhow::Result<(f64, f64)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let end = Instant::now() + duration;
    let started = Instant::now();
    let loops = (0..CONCURRENCY).map(|_| {
        let op = op.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let at = Instant::now();
                op().await?;
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        })
    });
    let mut all = Vec::new();
    let mut results = futures_util::stream::iter(loops).buffer_unordered(CONCURRENCY);
    while let Some(result) = results.next().await {
        all.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Ok((all.len() as f64 / elapsed, percentile(&all, 0.99)))
}

/// `RATE_LIMIT_PER_SEC` and `AUDIT_RATE_SHARE` when unset (`src/config.rs`): figure 10's run at
/// the defaults leaves both unset, and these give what it is measured against.
const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 100;
const DEFAULT_AUDIT_RATE_SHARE: f64 = 0.1;
/// `MAX_IN_FLIGHT_EVENTS` when unset: events handed to actors at once, per instance.
const DEFAULT_MAX_IN_FLIGHT_EVENTS: usize = 1_000;
/// The admin token of figure 10's services.
const ADMIN_TOKEN: &str = "bench-admin-token";

/// What the audits' share allows, in checks per second: the engine's own rounding.
fn audit_allowed(rate_limit: u32, share: f64) -> u32 {
    order_sync::engine::jobs::JobSettings {
        rate_per_sec: rate_limit,
        audit_share: share,
        audit_every: None,
        audit_sample: 1,
    }
    .audit_rate()
}

/// How one audit run of figure 10 is set and how long it goes on.
struct AuditSetup {
    /// `RATE_LIMIT_PER_SEC` and `AUDIT_RATE_SHARE`; `None` leaves them unset (the defaults).
    rate_limit: Option<u32>,
    share: Option<f64>,
    /// How long after the first check counted it goes on (less if the audit ends sooner); the
    /// rate is measured from `audit_ramp` after the first check.
    run_for: Duration,
    /// Its name in the log file's name.
    label: &'static str,
}

impl AuditSetup {
    fn rate_limit(&self) -> u32 {
        self.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT_PER_SEC)
    }

    fn share(&self) -> f64 {
        self.share.unwrap_or(DEFAULT_AUDIT_RATE_SHARE)
    }

    fn allowed(&self) -> u32 {
        audit_allowed(self.rate_limit(), self.share())
    }

    fn limit(&self) -> String {
        let set = |unset: bool| if unset { " (default)" } else { "" };
        format!(
            "RATE_LIMIT_PER_SEC {}{} x AUDIT_RATE_SHARE {}{} = {}/s, burst {}",
            self.rate_limit(),
            set(self.rate_limit.is_none()),
            self.share(),
            set(self.share.is_none()),
            self.allowed(),
            audit_burst(self.allowed())
        )
    }
}

/// The audit limiter's burst, as the service sets it (`startup.rs`): 50 ms of the share.
fn audit_burst(allowed: u32) -> u32 {
    (allowed / 20).max(1)
}

/// One audit run of figure 10.
struct AuditRun {
    /// Checks counted per second over the steady window.
    checks_per_s: f64,
    /// Calls per second the fake received over the same window (all `GET`s: every order is
    /// synced, and a repair would show in the verdicts).
    gets_per_s: f64,
    /// The most calls the fake received in any 1 s within the window.
    busiest: u64,
    window_s: f64,
    /// Rate-limit script calls (`EVALSHA`) Redis served per second over the window.
    redis_per_s: f64,
    /// The job's counts once the service was stopped (every check made by then counted).
    job: order_sync::db::jobs::Job,
    /// From the first check counted to the last, when the audit finished.
    finished_in: Option<f64>,
    peak_rss: f64,
    /// WARN and ERROR lines of the service's log.
    warnings: Vec<String>,
    log: std::path::PathBuf,
}

/// Figure 10: the audit's rate against its share of the rate limit. `audit_orders` orders are
/// seeded and synced (throttle off), so the fake holds every one and an audit finds them all
/// matching. Then three services in turn, each starting an audit of every id: one at
/// `RATE_LIMIT_PER_SEC=audit_rate_limit` and the default share (0.1), one at the service's
/// defaults (the rate a whole audit takes in production), and one at share 1 (where the
/// engine's own ceiling for checks lies). Beside them, the share's limiter alone, asked as an
/// audit check asks it, by as many waiters as the audit keeps queued.
pub async fn audit_rate(scale: &Scale) -> anyhow::Result<Vec<Row>> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let orders = scale.audit_orders;
    seeder::write::insert_orders(&db.pool, orders, true, |_| {}).await?;
    let syncing = Instant::now();
    let service = start_service(&db, &fake, &UNTHROTTLED).await?;
    wait_all_synced(&db, scale.long_timeout).await?;
    drop(service);
    let synced_in = syncing.elapsed().as_secs_f64();
    let stored = get_json(&fake.url("/_fake/stats")).await?["stored_orders"]
        .as_u64()
        .unwrap_or(0);
    anyhow::ensure!(
        stored == orders,
        "the fake holds {stored} orders of {orders} after the sync"
    );
    eprintln!("[bench] figure 10: {orders} orders synced in {synced_in:.0} s; auditing");

    let share_setup = AuditSetup {
        rate_limit: Some(scale.audit_rate_limit),
        share: Some(DEFAULT_AUDIT_RATE_SHARE),
        run_for: scale.audit_ramp + scale.audit_window,
        label: "share",
    };
    let default_setup = AuditSetup {
        rate_limit: None,
        share: None,
        run_for: scale.audit_ramp + scale.audit_default_window,
        label: "defaults",
    };
    let full_setup = AuditSetup {
        rate_limit: Some(scale.audit_rate_limit),
        share: Some(1.0),
        run_for: scale.audit_ceiling_within,
        label: "full",
    };
    let at_share = audit_run(&db, &fake, &share_setup, scale).await?;
    let at_defaults = audit_run(&db, &fake, &default_setup, scale).await?;
    let at_full = audit_run(&db, &fake, &full_setup, scale).await?;
    drop(fake);
    db.drop_now().await;
    // An audit keeps two seconds of checks queued (`engine::jobs`), each waiting for its token
    // once the dispatcher has handed it to its order's actor (at most `MAX_IN_FLIGHT_EVENTS`).
    let waiters = |allowed: u32| (allowed as usize * 2).min(DEFAULT_MAX_IN_FLIGHT_EVENTS);
    let share_waiters = waiters(share_setup.allowed());
    let (alone, alone_scripts) = share_limiter_alone(
        share_setup.allowed(),
        share_waiters,
        scale.audit_limiter_duration,
    )
    .await?;
    let full_waiters = waiters(full_setup.allowed());
    let (full_alone, full_alone_scripts) = share_limiter_alone(
        full_setup.allowed(),
        full_waiters,
        scale.audit_limiter_duration,
    )
    .await?;

    let share_allowed = f64::from(share_setup.allowed());
    let error = (at_share.checks_per_s - share_allowed).abs() / share_allowed;
    let window_limit =
        u64::from(share_setup.allowed()) + u64::from(audit_burst(share_setup.allowed()));
    let share_row = Row {
        figure: "10a audit rate at its share",
        measured: format!(
            "{:.1} checks/s over {:.0} s ({:.1} GETs/s at the fake, busiest 1 s {}; Redis {:.0} script calls/s); {}",
            at_share.checks_per_s,
            at_share.window_s,
            at_share.gets_per_s,
            at_share.busiest,
            at_share.redis_per_s,
            verdicts(&at_share),
        ),
        limit: format!(
            "{}; the share's limiter alone, {share_waiters} waiters: {alone:.1}/s ({alone_scripts:.0} script calls/s)",
            share_setup.limit()
        ),
        goal: format!(
            "within 2% ({:.1}%), busiest 1 s <= {window_limit}, all matching",
            error * 100.0
        ),
        met: error <= 0.02 && at_share.busiest <= window_limit && all_matching(&at_share),
    };
    let default_allowed = f64::from(default_setup.allowed());
    let default_error = (at_defaults.checks_per_s - default_allowed).abs() / default_allowed;
    let whole_s = orders as f64 / at_defaults.checks_per_s;
    let defaults_row = Row {
        figure: "10b audit rate at the service's defaults",
        measured: format!(
            "{:.2} checks/s over {:.0} s ({:.2} GETs/s at the fake, busiest 1 s {}; Redis {:.0} script calls/s); {}; the whole {orders} at this rate: {} ({} at exactly {}/s)",
            at_defaults.checks_per_s,
            at_defaults.window_s,
            at_defaults.gets_per_s,
            at_defaults.busiest,
            at_defaults.redis_per_s,
            verdicts(&at_defaults),
            hours_minutes(whole_s),
            hours_minutes(orders as f64 / default_allowed),
            default_setup.allowed(),
        ),
        limit: default_setup.limit(),
        goal: format!(
            "within 2% ({:.1}%), all matching",
            default_error * 100.0
        ),
        met: default_error <= 0.02 && all_matching(&at_defaults),
    };
    let full_row = Row {
        figure: "10c audit checks at share 1 (the engine's ceiling)",
        measured: format!(
            "{:.0} checks/s over {:.1} s ({:.0} GETs/s at the fake, busiest 1 s {}; Redis {:.0} script calls/s); {}{}; peak RSS {:.0} MiB",
            at_full.checks_per_s,
            at_full.window_s,
            at_full.gets_per_s,
            at_full.busiest,
            at_full.redis_per_s,
            verdicts(&at_full),
            match at_full.finished_in {
                Some(s) => format!("; all {} checked in {s:.1} s", at_full.job.total),
                None => format!(
                    "; stopped after {} s",
                    scale.audit_ceiling_within.as_secs()
                ),
            },
            at_full.peak_rss,
        ),
        limit: format!(
            "{}; the share's limiter alone, {full_waiters} waiters: {full_alone:.0}/s ({full_alone_scripts:.0} script calls/s)",
            full_setup.limit()
        ),
        goal: format!(
            "reported: {:.0}% of the share; all matching",
            at_full.checks_per_s / f64::from(full_setup.allowed()) * 100.0
        ),
        met: all_matching(&at_full),
    };
    for (setup, run) in [
        (&share_setup, &at_share),
        (&default_setup, &at_defaults),
        (&full_setup, &at_full),
    ] {
        eprintln!(
            "[bench] figure 10, {}: {} WARN/ERROR lines in {}",
            setup.label,
            run.warnings.len(),
            run.log.display()
        );
        for line in run.warnings.iter().take(5) {
            eprintln!("[bench]   {line}");
        }
    }
    Ok(vec![share_row, defaults_row, full_row])
}

/// The audits' share limiter alone (`ClusterRateLimit` at `rate`, burst 1, on a key of its own):
/// `waiters` tasks each asking for one token as an audit check does (`take(1)`, then sleeping
/// for the wait it is told), for `duration`. Tokens granted per second, and Redis script calls
/// per second.
async fn share_limiter_alone(
    rate: u32,
    waiters: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    use order_sync::engine::cluster::rate_limit::{ClusterRateLimit, Grant};
    let redis = order_sync::engine::backlog::connect(&crate::harness::redis_url()).await?;
    let scripts_before = redis_script_calls(&redis).await?;
    let key = format!("bench-audit-share-{}", uuid::Uuid::new_v4().simple());
    let limit = ClusterRateLimit::new(redis.clone(), key.clone(), rate, 1);
    let granted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let tasks = (0..waiters).map(|_| {
        let (limit, granted) = (limit.clone(), granted.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                match limit.take(1).await? {
                    Grant::Calls(n) => {
                        granted.fetch_add(u64::from(n), Ordering::Relaxed);
                    }
                    Grant::WaitFor(wait) => tokio::time::sleep(wait).await,
                }
            }
            anyhow::Ok(())
        })
    });
    for task in futures_util::future::join_all(tasks).await {
        task??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let scripts = redis_script_calls(&redis)
        .await?
        .saturating_sub(scripts_before);
    let mut cleanup = redis.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut cleanup)
        .await?;
    Ok((
        granted.load(Ordering::Relaxed) as f64 / elapsed,
        scripts as f64 / elapsed,
    ))
}

fn verdicts(run: &AuditRun) -> String {
    let job = &run.job;
    format!(
        "{} checked: {} matching, {} skipped, {} errors, {} repaired; {} log warnings",
        job.checked,
        job.matching,
        job.skipped,
        job.errors,
        job.repaired_missing + job.repaired_different + job.repaired_stray,
        run.warnings.len()
    )
}

fn all_matching(run: &AuditRun) -> bool {
    run.job.checked > 0 && run.job.matching == run.job.checked
}

fn hours_minutes(seconds: f64) -> String {
    if seconds < 600.0 {
        return format!("{seconds:.0} s");
    }
    let minutes = (seconds / 60.0).round() as u64;
    format!("{} h {:02} min", minutes / 60, minutes % 60)
}

/// One sample of a job's progress.
#[derive(Clone, Copy)]
struct JobSample {
    at: Instant,
    epoch_ms: u64,
    checked: i64,
    done: bool,
    redis_scripts: u64,
}

fn epoch_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// Script calls (`EVALSHA`) Redis has served since it started: every grant the rate limits ask
/// for is one (the whole server's: anything else using this Redis counts too).
async fn redis_script_calls(redis: &redis::aio::ConnectionManager) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.clone())
        .await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Where an audit job is (`GET /admin/jobs/{id}`), with Redis's count of script calls.
async fn job_sample(
    http: &reqwest::Client,
    url: &str,
    redis: &redis::aio::ConnectionManager,
) -> anyhow::Result<JobSample> {
    let job: Value = http
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let redis_scripts = redis_script_calls(redis).await?;
    Ok(JobSample {
        at: Instant::now(),
        epoch_ms: epoch_ms(),
        checked: job["checked"].as_i64().unwrap_or(0),
        done: job["status"] == "done",
        redis_scripts,
    })
}

/// Starts a service set as `setup` says (with a Redis prefix of its own, so nothing of an
/// earlier run's streams or leases is in its way), starts an audit of every id and follows it.
async fn audit_run(
    db: &BenchDb,
    fake: &ChildProcess,
    setup: &AuditSetup,
    scale: &Scale,
) -> anyhow::Result<AuditRun> {
    let rate_s = setup.rate_limit.map(|r| r.to_string());
    let share_s = setup.share.map(|s| s.to_string());
    let prefix = format!("bench-{}-audit-{}", db.name, setup.label);
    let log_level = std::env::var("BENCH_CHILD_LOG").unwrap_or_else(|_| {
        "warn,order_sync::engine::jobs=info,order_sync::engine::actors::audit=info".into()
    });
    let log = std::env::temp_dir().join(format!("{}-audit-{}.log", db.name, setup.label));
    let mut settings = vec![
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("REDIS_PREFIX", prefix.as_str()),
        ("RUST_LOG", log_level.as_str()),
        ("LOG_FORMAT", "json"),
    ];
    if let Some(rate) = &rate_s {
        settings.push(("RATE_LIMIT_PER_SEC", rate.as_str()));
    }
    if let Some(share) = &share_s {
        settings.push(("AUDIT_RATE_SHARE", share.as_str()));
    }
    let service = crate::harness::start_service_logging_to(db, fake, &settings, Some(&log)).await?;
    let redis = order_sync::engine::backlog::connect(&crate::harness::redis_url()).await?;
    let http = reqwest::Client::new();
    let started = http
        .post(service.url("/admin/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    anyhow::ensure!(
        started.status() == 202,
        "POST /admin/audit answered {}",
        started.status()
    );
    let job_id = started.json::<Value>().await?["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("POST /admin/audit gave no job id"))?;
    let job_url = service.url(&format!("/admin/jobs/{job_id}"));
    let sample = || job_sample(&http, &job_url, &redis);

    // From the first check counted: the job runner looks for jobs every second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let now = sample().await?;
        if now.checked > 0 || now.done {
            break now;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the audit counted no check within 30 s (see {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let end = first.at + setup.run_for;
    let mut samples = vec![first];
    while !samples.last().is_some_and(|s| s.done) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(sample().await?);
    }
    // The steady window: from `audit_ramp` after the first check (or the first sample, if the
    // audit ended sooner) to the first sample with the last count (a finished job is marked
    // done a moment after its last check: that moment is not the checks' time).
    let final_count = samples.last().map_or(0, |s| s.checked);
    let last = *samples
        .iter()
        .find(|s| s.checked == final_count)
        .expect("one sample at least");
    let from = samples
        .iter()
        .find(|s| s.at.duration_since(first.at) >= scale.audit_ramp && s.at < last.at)
        .copied()
        .unwrap_or(first);
    let window_s = last.at.duration_since(from.at).as_secs_f64();
    anyhow::ensure!(
        window_s > 0.0,
        "the audit ended before it could be measured"
    );
    let checks_per_s = (last.checked - from.checked) as f64 / window_s;
    let redis_per_s = last.redis_scripts.saturating_sub(from.redis_scripts) as f64 / window_s;
    let finished_in = samples
        .last()
        .is_some_and(|s| s.done)
        .then(|| last.at.duration_since(first.at).as_secs_f64());
    let timeline = get_json(&fake.url("/_fake/timeline")).await?;
    let (gets_per_s, busiest) = calls_between(&timeline, from.epoch_ms, last.epoch_ms);
    let peak_rss = service.peak_rss_mib();
    drop(service);

    // Every check made is counted by now; an unfinished job is closed, or the next service
    // would claim and resume it once this one's claim runs out.
    let job = order_sync::db::jobs::get_job(&db.pool, job_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {job_id} vanished"))?;
    sqlx::query(
        "UPDATE sync_jobs SET status = 'done', finished_at = now(), runner_until = NULL
         WHERE id = $1 AND status = 'running'",
    )
    .bind(job_id)
    .execute(&db.pool)
    .await?;
    let warnings = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#))
        .map(str::to_string)
        .collect();
    Ok(AuditRun {
        checks_per_s,
        gets_per_s,
        busiest,
        window_s,
        redis_per_s,
        job,
        finished_in,
        peak_rss,
        warnings,
        log,
    })
}

/// From the fake's timeline: the calls per second between two instants (epoch milliseconds,
/// whole 100 ms slots within them), and the most calls in any 10 consecutive of those slots.
fn calls_between(timeline: &Value, from_ms: u64, to_ms: u64) -> (f64, u64) {
    let (first, last) = (from_ms.div_ceil(100), to_ms / 100);
    if last <= first {
        return (0.0, 0);
    }
    let slots: std::collections::BTreeMap<u64, u64> = timeline["calls"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                .filter(|(slot, _)| (first..last).contains(slot))
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = slots.values().sum();
    let busiest = (first..=last.saturating_sub(10).max(first))
        .map(|start| slots.range(start..start + 10).map(|(_, n)| n).sum::<u64>())
        .max()
        .unwrap_or(0);
    (total as f64 / ((last - first) as f64 / 10.0), busiest)
}
