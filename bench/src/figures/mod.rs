//! One file per figure of BENCHMARKS.md: each measures its figure and, where the goal is a
//! ratio, the limit beside it in the same run, and returns a row of the table. What several
//! figures share is here: the [`Row`], the engine's settings with the throttle off, and the
//! helpers to start services, wait for the sync and make an order's body.

mod audit;
mod coalescing;
mod ingest;
mod instances;
mod lag;
mod seeder;
mod throttle;
mod throughput;

pub use audit::audit_rate;
pub use coalescing::coalescing;
pub use ingest::ingest;
pub use instances::{rate_limit_grants, several_instances};
pub use lag::lag;
pub use seeder::seeder_speed;
pub use throttle::throttle;
pub use throughput::throughput_and_memory;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{start_service, BenchDb, ChildProcess};

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

const CONCURRENCY: usize = 64;

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

/// A valid new order's body.
pub(crate) fn order_json() -> Value {
    json!({"status": "pending", "placed_at": "2025-06-01T10:00:00Z", "amount": 1000, "tax": 180,
        "street_address": "12 MG Road", "city": "Pune", "state": "MH", "country": "India", "pincode": "411001"})
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
