//! The outbox relay: moves committed changes from the `outbox` table into the Redis streams.
//!
//! It runs right after each commit that wrote outbox rows (`crate::db::Changes` rings its
//! [`RelayDoorbell`]) and by a sweep every few seconds for
//! rows left behind (a crash between commit and publish, Redis down for a while). Rows are taken
//! in id order with `FOR UPDATE SKIP LOCKED` (so several instances never publish one row twice
//! at once), written to their shard's stream in one pipeline, and deleted in the same
//! transaction only after Redis has answered: a row is never deleted before its entry exists.

use std::time::Duration;

use crate::db::PgPool;
use anyhow::Context;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::{EventKind, SyncEvent};
use crate::db::outbox::{self, ChangeAction};
use crate::db::RelayDoorbell;
use crate::engine::backoff::Backoff;
use crate::engine::keys::Keys;

/// Rows published per transaction.
const BATCH: i64 = 1_000;
/// How often the relay looks for rows even when nobody woke it.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    redis: ConnectionManager,
    keys: Keys,
    doorbell: RelayDoorbell,
    shutdown: CancellationToken,
}

impl OutboxRelay {
    pub fn new(
        pool: PgPool,
        redis: ConnectionManager,
        keys: Keys,
        doorbell: RelayDoorbell,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pool,
            redis,
            keys,
            doorbell,
            shutdown,
        }
    }

    /// Publishes until the outbox is empty, then waits for the doorbell or the next sweep. Errors
    /// (PostgreSQL or Redis away) are logged and retried with backoff: rows wait in the outbox.
    pub async fn run(mut self) {
        let mut backoff = Backoff::up_to(Duration::from_secs(5));
        let shutdown = self.shutdown.clone();
        while !shutdown.is_cancelled() {
            let wait = match self.publish_batch().await {
                Ok(published) if published as i64 == BATCH => continue,
                Ok(_) => {
                    backoff.reset();
                    SWEEP_EVERY
                }
                Err(error) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(
                        error = format!("{error:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "outbox relay failed; retrying"
                    );
                    wait
                }
            };
            tokio::select! {
                _ = self.doorbell.rung() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Publishes up to `BATCH` rows; returns how many.
    pub async fn publish_batch(&mut self) -> anyhow::Result<usize> {
        let mut txn = self.pool.begin().await.context("begin")?;
        let rows = outbox::lock_oldest(&mut txn, BATCH)
            .await
            .context("read outbox")?;
        if rows.is_empty() {
            return Ok(0);
        }
        crate::crash::point("before_publish");
        let mut pipe = redis::pipe();
        for row in &rows {
            let event = SyncEvent {
                order_id: row.order_id,
                version: row.version,
                // An operator's retry must reach a parked order; a change waits behind it.
                kind: if row.action == ChangeAction::Retry {
                    EventKind::Retry { attempt: None }
                } else {
                    EventKind::Change
                },
                committed_at_ms: row.committed_at_ms,
            };
            pipe.xadd(
                self.keys.stream(self.keys.shard_of(row.order_id)),
                "*",
                &event.fields(),
            )
            .ignore();
        }
        pipe.query_async::<()>(&mut self.redis)
            .await
            .context("publish to Redis")?;
        let ids: Vec<i64> = rows.iter().map(|row| row.id).collect();
        outbox::delete(&mut txn, &ids)
            .await
            .context("delete published outbox rows")?;
        // If this commit fails the rows are published again later: a duplicate event, which
        // the actor skips by version. Never a lost one.
        txn.commit().await.context("commit")?;
        Ok(rows.len())
    }
}

/// Publishes events straight to the streams (for retries and the reconciler, which start from
/// PostgreSQL state rather than from outbox rows).
pub async fn publish(
    redis: &mut ConnectionManager,
    keys: &Keys,
    events: &[SyncEvent],
) -> redis::RedisResult<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for event in events {
        pipe.xadd(
            keys.stream(keys.shard_of(event.order_id)),
            "*",
            &event.fields(),
        )
        .ignore();
    }
    pipe.query_async::<()>(redis).await
}
