//! Figure 11: the external API down, black-box. The service runs with its default settings, the
//! fake external API as its own process; orders change at `OUTAGE_CHANGES_PER_SEC` and are
//! created at `OUTAGE_CREATES_PER_SEC` through the HTTP API while the fake answers every call
//! with 500 (its `failure_rate` 1). Measured: the calls that reached the dead API (per second of
//! outage), and how long after its return every order is synced again (no order behind, none
//! dead). `BENCH_OUTAGE_SECS` sets the outage's length (120 s by default: 1800 for the long run);
//! `BENCH_OUTAGE_FLAP=1` makes it flap instead: down 20 s, up 5 s, for that long.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{json, Value};

use crate::figures::Row;
use crate::harness::{get_json, start_fake, start_service, BenchDb, ChildProcess};
use crate::Scale;

/// The load: 10 changes and 1 new order a second.
const OUTAGE_CHANGES_PER_SEC: u64 = 10;
const OUTAGE_CREATES_PER_SEC: u64 = 1;
/// Orders synced before the outage.
const ORDERS_BEFORE: usize = 300;

/// How the outage goes.
#[derive(Debug, Clone, Copy)]
struct Outage {
    length: Duration,
    /// `Some((down, up))`: it flaps, down then up, for `length`.
    flapping: Option<(Duration, Duration)>,
}

impl Outage {
    fn from_env(scale: &Scale) -> anyhow::Result<Self> {
        let length = match std::env::var("BENCH_OUTAGE_SECS") {
            Ok(secs) if !secs.is_empty() => Duration::from_secs(secs.parse().map_err(|_| {
                anyhow::anyhow!("BENCH_OUTAGE_SECS must be a whole number of seconds, not {secs:?}")
            })?),
            _ => scale.outage_length,
        };
        let flapping = std::env::var("BENCH_OUTAGE_FLAP")
            .is_ok_and(|v| v == "1")
            .then_some((Duration::from_secs(20), Duration::from_secs(5)));
        Ok(Self { length, flapping })
    }
}

pub async fn external_api_outage(scale: &Scale) -> anyhow::Result<Row> {
    let outage = Outage::from_env(scale)?;
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let service = start_service(&db, &fake, &[]).await?;
    let http = reqwest::Client::new();
    let base = service.url("");
    let mut ids = Vec::new();
    for _ in 0..ORDERS_BEFORE {
        if let Some(id) = create(&http, &base).await {
            ids.push(id);
        }
    }
    crate::figures::wait_all_synced(&db, scale.long_timeout).await?;
    let ids = Arc::new(Mutex::new(ids));

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn(drive_load(
        http.clone(),
        base.clone(),
        ids.clone(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await; // the load before the outage (its length)

    let calls_before = fake_calls(&fake).await?;
    let started = Instant::now();
    let mut down_for = Duration::ZERO;
    match outage.flapping {
        None => {
            set_failure_rate(&http, &fake, 1.0).await?;
            tokio::time::sleep(outage.length).await;
            down_for = outage.length;
        }
        Some((down, up)) => {
            while started.elapsed() < outage.length {
                set_failure_rate(&http, &fake, 1.0).await?;
                tokio::time::sleep(down).await;
                down_for += down;
                set_failure_rate(&http, &fake, 0.0).await?;
                tokio::time::sleep(up).await;
            }
        }
    }
    let calls_during = fake_calls(&fake).await? - calls_before;
    let behind_at_return = db
        .count("SELECT count(*) FROM orders WHERE synced_version < version")
        .await;
    set_failure_rate(&http, &fake, 0.0).await?;
    let back = Instant::now();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let changes = load.await??;
    crate::figures::wait_all_synced(&db, scale.long_timeout).await?;
    let converged = back.elapsed();
    let dead = db
        .count("SELECT count(*) FROM orders WHERE sync_state = 'dead'")
        .await;
    let orders = db.count("SELECT count(*) FROM orders").await;
    drop(service);
    drop(fake);
    db.drop_now().await;

    let per_sec = calls_during as f64 / outage.length.as_secs_f64();
    // Each order behind needs one call, and the rate limit holds after an outage too: no
    // backlog drains faster than `behind / RATE_LIMIT_PER_SEC` (the service's, inherited from
    // this program's environment, 100 by default).
    let rate_limit: f64 = std::env::var("RATE_LIMIT_PER_SEC")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100.0);
    let floor = Duration::from_secs_f64(behind_at_return as f64 / rate_limit);
    let allowed = Duration::from_secs(10).max(floor.mul_f64(1.1) + Duration::from_secs(1));
    let (figure, goal_per_sec) = match outage.flapping {
        None => ("11 external API down", 1.0),
        // While it flaps it is up a fifth of the time, and every waiting order goes out then.
        Some(_) => (
            "11 external API flapping (down 20 s, up 5 s)",
            f64::INFINITY,
        ),
    };
    Ok(Row {
        figure,
        measured: format!(
            "{calls_during} calls in {:.0} s ({per_sec:.2}/s; down {:.0} s), synced {:.1} s after the return, {dead} dead; {changes} changes, {orders} orders, {behind_at_return} behind at the return",
            outage.length.as_secs_f64(),
            down_for.as_secs_f64(),
            converged.as_secs_f64()
        ),
        limit: format!(
            "{OUTAGE_CHANGES_PER_SEC} changes/s + {OUTAGE_CREATES_PER_SEC} new/s; {behind_at_return} orders at {rate_limit:.0}/s take {:.1} s",
            floor.as_secs_f64()
        ),
        goal: match outage.flapping {
            None => "<= 1 call/s while down, synced <= 10 s after (or the rate limit's time + 10%), 0 dead".into(),
            Some(_) => "synced <= 10 s after (or the rate limit's time + 10%), 0 dead".into(),
        },
        met: per_sec <= goal_per_sec && converged <= allowed && dead == 0,
    })
}

/// Changes and creates at the figure's rates until `stop`; returns how many were acknowledged.
async fn drive_load(
    http: reqwest::Client,
    base: String,
    ids: Arc<Mutex<Vec<i64>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<u64> {
    let per_sec = OUTAGE_CHANGES_PER_SEC + OUTAGE_CREATES_PER_SEC;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec as f64));
    let mut acknowledged = 0;
    let mut tick = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        ticker.tick().await;
        tick += 1;
        if tick % per_sec < OUTAGE_CREATES_PER_SEC {
            if let Some(id) = create(&http, &base).await {
                ids.lock()
                    .map_err(|_| anyhow::anyhow!("ids lock"))?
                    .push(id);
                acknowledged += 1;
            }
            continue;
        }
        let target = {
            let ids = ids.lock().map_err(|_| anyhow::anyhow!("ids lock"))?;
            ids[rand::rng().random_range(0..ids.len())]
        };
        let amount = rand::rng().random_range(100..100_000);
        let answer = http
            .patch(format!("{base}/orders/{target}"))
            .json(&json!({"amount": amount}))
            .send()
            .await?;
        if answer.status().is_success() {
            acknowledged += 1;
        }
    }
    Ok(acknowledged)
}

async fn create(http: &reqwest::Client, base: &str) -> Option<i64> {
    let answer = http
        .post(format!("{base}/orders"))
        .json(&crate::figures::order_json())
        .send()
        .await
        .ok()?;
    let order: Value = answer.json().await.ok()?;
    order["id"].as_i64()
}

async fn set_failure_rate(
    http: &reqwest::Client,
    fake: &ChildProcess,
    rate: f64,
) -> anyhow::Result<()> {
    http.put(fake.url("/_fake/config"))
        .json(&json!({"failure_rate": rate}))
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Every call the fake has answered so far.
async fn fake_calls(fake: &ChildProcess) -> anyhow::Result<u64> {
    let stats = get_json(&fake.url("/_fake/stats")).await?;
    Ok(stats["calls"]
        .as_object()
        .map_or(0, |calls| calls.values().filter_map(Value::as_u64).sum()))
}
