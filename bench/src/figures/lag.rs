//! Figure 3: sync lag at steady load, and what one change costs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngExt;
use serde_json::{json, Value};

use super::{order_json, wait_all_synced, Row, UNTHROTTLED};
use crate::harness::{get_json, start_fake, start_service, BenchDb, ChildProcess};
use crate::Scale;

/// What the service has cost so far: PostgreSQL commits in its database, Redis commands (the
/// whole server's: run nothing else against it), and the service's CPU time.
struct Cost {
    commits: i64,
    redis_commands: u64,
    cpu: Duration,
}

impl Cost {
    async fn read(db: &BenchDb, service: &ChildProcess) -> anyhow::Result<Self> {
        let commits: i64 = sqlx::query_scalar(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&db.pool)
        .await?;
        let mut redis = redis::Client::open(crate::harness::redis_url())?
            .get_multiplexed_async_connection()
            .await?;
        let info: String = redis::cmd("INFO")
            .arg("stats")
            .query_async(&mut redis)
            .await?;
        let redis_commands = info
            .lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        Ok(Self {
            commits,
            redis_commands,
            cpu: service.cpu_time(),
        })
    }

    /// Per change, from `before` to now: "N commits, N Redis commands, N ms CPU".
    fn per_change(&self, before: &Cost, changes: usize) -> String {
        let n = changes.max(1) as f64;
        format!(
            "{:.2} commits, {:.2} Redis commands, {:.2} ms CPU per change",
            (self.commits - before.commits) as f64 / n,
            self.redis_commands.saturating_sub(before.redis_commands) as f64 / n,
            (self.cpu.saturating_sub(before.cpu)).as_secs_f64() * 1000.0 / n
        )
    }
}

/// Figure 3: lag from commit to external success at a steady rate of changes through the API.
pub async fn lag(scale: &Scale) -> anyhow::Result<Row> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let service = start_service(&db, &fake, &UNTHROTTLED).await?;
    let http = reqwest::Client::new();
    let body = order_json();
    let cost_before = Cost::read(&db, &service).await?;
    let ids = Arc::new(Mutex::new(Vec::<i64>::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / scale.lag_rate as f64));
    let end = Instant::now() + scale.lag_duration;
    let mut tasks = Vec::new();
    while Instant::now() < end {
        ticker.tick().await;
        let (http, ids, body, base) = (http.clone(), ids.clone(), body.clone(), service.url(""));
        let target = {
            let ids = ids.lock().expect("ids");
            (!ids.is_empty() && rand::rng().random_bool(0.5))
                .then(|| ids[rand::rng().random_range(0..ids.len())])
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
    // PostgreSQL publishes a backend's counts within a second of its commits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cost = Cost::read(&db, &service)
        .await?
        .per_change(&cost_before, sent);
    let lag = get_json(&service.url("/metrics/actors")).await?["lag_ms"].clone();
    let p99 = lag["p99"].as_u64().unwrap_or(u64::MAX);
    drop(service);
    drop(fake);
    db.drop_now().await;
    Ok(Row {
        figure: "3 sync lag at steady load",
        measured: format!(
            "p50 {} ms, p99 {p99} ms, max {} ms ({sent} changes at {}/s, {} synced calls); {cost}",
            lag["p50"], lag["max"], scale.lag_rate, lag["samples"]
        ),
        limit: "10 ms".into(),
        goal: "p99 <= 10 ms".into(),
        met: p99 <= 10,
    })
}
