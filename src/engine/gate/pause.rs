//! The cluster-wide pause: `POST /admin/sync/pause` and `/resume` set one row in PostgreSQL
//! (`sync_control`), which survives restarts and does not depend on Redis keeping its data.
//! Every instance reads it every [`WATCH_EVERY`] (the one that answered the request applies it at
//! once) and tells its throttle, which then hands out no slot: no call starts, calls already
//! started finish, and events wait in their actors and, past `MAX_IN_FLIGHT_EVENTS`, in Redis.
//! Changes keep being written and coalesce: on resume each waiting actor reads its order again
//! and sends the latest state once.

use std::sync::Arc;
use std::time::Duration;

use crate::db::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::jobs;
use crate::engine::gate::throttle::Throttle;
use crate::metrics::SyncMetrics;

/// How often every instance reads the switch.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// The switch as this instance last read it, shared with `/health`.
#[derive(Clone)]
pub struct PauseSwitch {
    paused: Arc<watch::Sender<bool>>,
    throttle: Throttle,
    metrics: Arc<SyncMetrics>,
}

impl PauseSwitch {
    pub fn new(throttle: Throttle, metrics: Arc<SyncMetrics>) -> Self {
        Self {
            paused: Arc::new(watch::channel(false).0),
            throttle,
            metrics,
        }
    }

    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
    }

    /// Applies what the database says (or what this instance just wrote there).
    pub fn apply(&self, paused: bool) {
        let changed = self.paused.send_if_modified(|now| {
            let changed = *now != paused;
            *now = paused;
            changed
        });
        // The throttle is told every time: a restarted throttle starts unpaused.
        self.throttle.set_sync_paused(paused);
        self.metrics.sync_paused.set(i64::from(paused));
        if changed {
            if paused {
                tracing::warn!("outbound calls are paused (POST /admin/sync/resume resumes them)");
            } else {
                tracing::info!("outbound calls resumed");
            }
        }
    }

    /// Reads the switch every [`WATCH_EVERY`] until shutdown. While PostgreSQL cannot be read the
    /// last value holds.
    pub async fn keep_watching(self, pool: PgPool, shutdown: CancellationToken) {
        let mut failing = false;
        while !shutdown.is_cancelled() {
            match jobs::sync_paused(&pool).await {
                Ok((paused, _)) => {
                    failing = false;
                    self.apply(paused);
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "cannot read the pause switch; keeping its last value");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(WATCH_EVERY) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
}
