//! Publishes events that start from PostgreSQL state rather than from an outbox row:
//!
//! - delayed retries: parked (`retrying`) orders whose `next_attempt_at` has come get a `retry`
//!   event. The schedule lives in PostgreSQL, so it survives restarts of anything.
//! - the reconciler: when the backlog and the outbox are both empty, orders still behind
//!   (`pending` with `synced_version < version`) and untouched for a while have lost their
//!   events (Redis restarted without its data); they get a new event. So the system converges
//!   from PostgreSQL alone.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::keys::Keys;
use super::relay::publish;
use super::{EventKind, SyncEvent};
use crate::db::sync as queries;

/// How often due retries are looked for.
const RETRY_TICK: Duration = Duration::from_millis(500);
/// How long a claimed retry is left alone before it may be published again (if its event was
/// lost on the way).
const RETRY_LEASE: Duration = Duration::from_secs(300);
/// How often the reconciler looks.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
const BATCH: i64 = 500;

pub struct Scheduler {
    pool: PgPool,
    redis: ConnectionManager,
    keys: Keys,
    /// How long an order must have been quiet before the reconciler publishes it again.
    quiet_for: Duration,
    shutdown: CancellationToken,
}

impl Scheduler {
    pub fn new(
        pool: PgPool,
        redis: ConnectionManager,
        keys: Keys,
        quiet_for: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pool,
            redis,
            keys,
            quiet_for,
            shutdown,
        }
    }

    pub async fn run(mut self) {
        let mut since_reconcile = Duration::ZERO;
        while !self.shutdown.is_cancelled() {
            if let Err(error) = self.publish_due_retries().await {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "publishing due retries failed; will retry"
                );
            }
            if since_reconcile >= RECONCILE_EVERY {
                since_reconcile = Duration::ZERO;
                if let Err(error) = self.reconcile().await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "reconciling failed; will retry"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_TICK) => {}
                _ = self.shutdown.cancelled() => {}
            }
            since_reconcile += RETRY_TICK;
        }
    }

    async fn publish_due_retries(&mut self) -> anyhow::Result<()> {
        loop {
            let due = queries::claim_due_retries(&self.pool, BATCH, RETRY_LEASE).await?;
            let events: Vec<SyncEvent> = due
                .iter()
                .map(|&(id, version)| event(id, version, EventKind::Retry))
                .collect();
            publish(&mut self.redis, &self.keys, &events).await?;
            if (due.len() as i64) < BATCH {
                return Ok(());
            }
        }
    }

    /// Publishes events for orders left behind, but only when nothing is in the backlog or the
    /// outbox: while anything is, those orders may simply be waiting their turn.
    async fn reconcile(&mut self) -> anyhow::Result<()> {
        let mut backlog: u64 = 0;
        for stream in self.keys.streams() {
            backlog += self.redis.xlen::<_, u64>(&stream).await?;
        }
        let outbox: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox)")
            .fetch_one(&self.pool)
            .await?;
        if backlog > 0 || outbox {
            return Ok(());
        }
        let mut after_id = 0;
        loop {
            let stale = queries::stale_pending(&self.pool, after_id, BATCH, self.quiet_for).await?;
            let Some(&(last_id, _)) = stale.last() else {
                return Ok(());
            };
            tracing::warn!(
                orders = stale.len(),
                "orders behind with no event in the backlog; publishing again"
            );
            let events: Vec<SyncEvent> = stale
                .iter()
                .map(|&(id, version)| event(id, version, EventKind::Change))
                .collect();
            publish(&mut self.redis, &self.keys, &events).await?;
            after_id = last_id;
        }
    }
}

fn event(order_id: i64, version: i64, kind: EventKind) -> SyncEvent {
    SyncEvent {
        order_id,
        version,
        kind,
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
    }
}
