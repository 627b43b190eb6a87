//! Whether any worker is syncing. An `api` instance relays changes into the streams and makes no
//! call itself, so a deployment started without a worker (or whose workers all died) accepts
//! orders and syncs none. Every [`LOOK_EVERY`] the watcher reads each shard's owner and size
//! (one pipeline, `crate::engine::view::stats`); when changes wait and no instance has held a
//! shard for [`NO_WORKER_AFTER`], it says so: a warning line every [`WARN_EVERY`],
//! `/health/ready`'s body, `order_sync_workers_missing`, and the dashboard's banner.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::PgPool;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::engine::keys::Keys;
use crate::engine::view::stats::shard_stats;

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
        let mut verdicts = Verdicts::default();
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
                let look = Look {
                    live: owners.len() as u64,
                    shards_held,
                    shards: keys.shards(),
                    waiting,
                };
                let (seen, say) = verdicts.judge(&look, Instant::now(), chrono::Utc::now());
                match say {
                    Some(Say::NoWorker { waiting_secs }) => tracing::warn!(
                        changes_waiting = waiting,
                        waiting_secs,
                        "no worker is live: changes wait and nothing reaches the external API; start an instance with ROLE=worker (or ROLE=all)"
                    ),
                    Some(Say::Resumed) => tracing::info!(
                        workers = look.live,
                        "a worker holds the shards again: syncing resumes"
                    ),
                    None => {}
                }
                *self.lock() = seen;
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

/// One reading of the shards.
#[derive(Debug, Clone, Copy)]
struct Look {
    /// Distinct instances holding a shard.
    live: u64,
    shards_held: u64,
    shards: u64,
    waiting: u64,
}

/// What a look makes the watcher say in the log.
#[derive(Debug, PartialEq, Eq)]
enum Say {
    /// Changes have waited [`NO_WORKER_AFTER`] with no shard held: said again every
    /// [`WARN_EVERY`] while it lasts.
    NoWorker { waiting_secs: u64 },
    /// A shard is held again after a warning.
    Resumed,
}

/// The watcher's memory between looks: since when changes have waited unserved, and when it
/// last warned. Kept apart from the reading so the timing can be checked without waiting.
#[derive(Debug, Default)]
struct Verdicts {
    unserved_since: Option<(Instant, chrono::DateTime<chrono::Utc>)>,
    warned_at: Option<Instant>,
}

impl Verdicts {
    fn judge(
        &mut self,
        look: &Look,
        now: Instant,
        wall: chrono::DateTime<chrono::Utc>,
    ) -> (WorkersSeen, Option<Say>) {
        let mut say = None;
        if look.shards_held == 0 && look.waiting > 0 {
            self.unserved_since.get_or_insert((now, wall));
        } else if self.unserved_since.take().is_some() && self.warned_at.take().is_some() {
            say = Some(Say::Resumed);
        }
        let waited = self
            .unserved_since
            .map(|(since, _)| now.saturating_duration_since(since));
        let missing = waited.is_some_and(|waited| waited >= NO_WORKER_AFTER);
        if missing
            && self
                .warned_at
                .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY)
        {
            self.warned_at = Some(now);
            say = Some(Say::NoWorker {
                waiting_secs: waited.map_or(0, |w| w.as_secs()),
            });
        }
        let seen = WorkersSeen {
            known: true,
            live: look.live,
            shards_held: look.shards_held,
            shards: look.shards,
            changes_waiting: look.waiting,
            unserved_since: self.unserved_since.map(|(_, at)| at),
            missing,
        };
        (seen, say)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOBODY: Look = Look {
        live: 0,
        shards_held: 0,
        shards: 8,
        waiting: 3,
    };

    #[test]
    fn no_worker_is_said_after_30_s_then_every_minute_and_its_end_once() {
        let start = Instant::now();
        let wall = chrono::Utc::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut verdicts = Verdicts::default();
        let mut said = Vec::new();
        // A look every 5 s for three minutes with changes waiting and no shard held.
        for secs in (0..=180).step_by(5) {
            let (seen, say) = verdicts.judge(&NOBODY, at(secs), wall);
            assert_eq!(seen.missing, secs >= 30, "at {secs} s");
            assert_eq!(seen.unserved_since, Some(wall));
            if let Some(say) = say {
                said.push((secs, say));
            }
        }
        assert_eq!(
            said,
            vec![
                (30, Say::NoWorker { waiting_secs: 30 }),
                (90, Say::NoWorker { waiting_secs: 90 }),
                (150, Say::NoWorker { waiting_secs: 150 }),
            ]
        );
        // A worker takes the shards: said once, and the state is clear.
        let served = Look {
            live: 1,
            shards_held: 8,
            ..NOBODY
        };
        let (seen, say) = verdicts.judge(&served, at(185), wall);
        assert_eq!(say, Some(Say::Resumed));
        assert!(!seen.missing && seen.unserved_since.is_none());
        assert_eq!(verdicts.judge(&served, at(190), wall).1, None);
    }

    #[test]
    fn nothing_is_said_when_nothing_waits_or_a_worker_comes_within_30_s() {
        let start = Instant::now();
        let wall = chrono::Utc::now();
        let mut verdicts = Verdicts::default();
        let idle = Look {
            waiting: 0,
            ..NOBODY
        };
        for secs in (0..=120).step_by(5) {
            let (seen, say) = verdicts.judge(&idle, start + Duration::from_secs(secs), wall);
            assert!(say.is_none() && !seen.missing && seen.unserved_since.is_none());
        }
        // Unserved for 25 s, then served: no warning, and no "resumes" for a warning never made.
        for secs in (125..=150).step_by(5) {
            let (_, say) = verdicts.judge(&NOBODY, start + Duration::from_secs(secs), wall);
            assert_eq!(say, None);
        }
        let served = Look {
            live: 2,
            shards_held: 8,
            ..NOBODY
        };
        assert_eq!(
            verdicts
                .judge(&served, start + Duration::from_secs(155), wall)
                .1,
            None
        );
    }
}
