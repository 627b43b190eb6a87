//! Whether any worker is syncing. An `api` instance relays changes into the streams and makes no
//! call itself, so a deployment started without a worker (or whose workers all died) accepts
//! orders and syncs none. Every [`LOOK_EVERY`] the watcher reads each shard's owner and size
//! (one pipeline, `crate::engine::backlog::stats`); when changes wait and no instance has held a
//! shard for [`NO_WORKER_AFTER`], it says so: a warning line every [`WARN_EVERY`],
//! `/health/ready`'s body, `order_sync_workers_missing`, and the dashboard's banner.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::engine::backlog::keys::Keys;
use crate::engine::backlog::stats::shard_stats;

/// How long changes may wait with no worker before it counts as missing: longer than a
/// SIGKILLed worker's shards wait for a new owner with the default lease (18 s).
pub const NO_WORKER_AFTER: Duration = Duration::from_secs(30);
const LOOK_EVERY: Duration = Duration::from_secs(5);
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What the watcher saw last.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkersSeen {
    /// Whether the watcher has read the shards yet (`false`: the figures below mean nothing).
    pub known: bool,
    /// Instances holding at least one shard's lease.
    pub live: u64,
    /// Shards whose lease some instance holds, of `shards`.
    pub shards_held: u64,
    pub shards: u64,
    /// Changes waiting to be synced: stream entries, or outbox rows when the streams are empty.
    pub changes_waiting: u64,
    /// Since when changes have waited with no shard held (RFC 3339).
    pub unserved_since: Option<chrono::DateTime<chrono::Utc>>,
    /// `true` once that has lasted [`NO_WORKER_AFTER`]: nothing reaches the external API.
    pub missing: bool,
}

/// The watcher's latest reading, shared with the health, metrics and dashboard routes.
#[derive(Clone, Default)]
pub struct WorkerWatch {
    seen: Arc<Mutex<WorkersSeen>>,
}

impl WorkerWatch {
    pub fn seen(&self) -> WorkersSeen {
        self.lock().clone()
    }

    /// Reads the shards every [`LOOK_EVERY`] until shutdown. A failed read changes nothing
    /// (Redis away is `/health`'s to report).
    pub async fn keep_watching(
        self,
        mut redis: ConnectionManager,
        keys: Keys,
        pool: PgPool,
        shutdown: CancellationToken,
    ) {
        let mut unserved_since: Option<(Instant, chrono::DateTime<chrono::Utc>)> = None;
        let mut warned_at: Option<Instant> = None;
        while !shutdown.is_cancelled() {
            if let Ok(shards) = shard_stats(&mut redis, &keys).await {
                let owners: BTreeSet<&str> =
                    shards.iter().filter_map(|s| s.owner.as_deref()).collect();
                let shards_held = shards.iter().filter(|s| s.owner.is_some()).count() as u64;
                let mut waiting: u64 = shards.iter().map(|s| s.length).sum();
                if waiting == 0 && shards_held == 0 {
                    // The outbox is read only when it can matter: no worker, empty streams.
                    waiting = db::outbox::count(&pool)
                        .await
                        .map_or(0, |n| n.max(0) as u64);
                }
                let unserved = shards_held == 0 && waiting > 0;
                if unserved {
                    unserved_since.get_or_insert_with(|| (Instant::now(), chrono::Utc::now()));
                } else if unserved_since.take().is_some() && warned_at.take().is_some() {
                    tracing::info!(
                        workers = owners.len(),
                        "a worker holds the shards again: syncing resumes"
                    );
                }
                let missing =
                    unserved_since.is_some_and(|(since, _)| since.elapsed() >= NO_WORKER_AFTER);
                if missing && warned_at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    warned_at = Some(Instant::now());
                    tracing::warn!(
                        changes_waiting = waiting,
                        waiting_secs = unserved_since.map_or(0, |(since, _)| since.elapsed().as_secs()),
                        "no worker is live: changes wait and nothing reaches the external API; start an instance with ROLE=worker (or ROLE=all)"
                    );
                }
                *self.lock() = WorkersSeen {
                    known: true,
                    live: owners.len() as u64,
                    shards_held,
                    shards: keys.shards(),
                    changes_waiting: waiting,
                    unserved_since: unserved_since.map(|(_, at)| at),
                    missing,
                };
            }
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WorkersSeen> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
