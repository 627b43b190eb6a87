//! Publishes events that start from PostgreSQL state rather than from an outbox row:
//!
//! - delayed retries: parked (`retrying`) orders whose `next_attempt_at` has come get a `retry`
//!   event. The schedule lives in PostgreSQL, so it survives restarts of anything.
//! - the reconciler: an order that has been behind (`pending` with `synced_version < version`)
//!   for longer than `RECONCILE_QUIET_SECS`, with no outbox row, no event in memory and no event
//!   still queued in its shard's stream, has lost its event (Redis lost it, an entry was
//!   deleted, an outcome was lost with the asynchronous-commit pool): it gets a new one. This
//!   runs under load too, so the system converges from PostgreSQL alone whatever else goes on.
//!
//! "No event still queued" is read from the stream itself. The candidates are read first, and
//! their outbox rows were gone by then, so any entry of theirs existed by a moment taken just
//! after (Redis's `TIME`). Once the consumer group has been delivered every entry of the shard up
//! to that moment, an entry of theirs is either in memory (the dispatcher says which orders have
//! one) or lost. Until then they stay suspects, checked again each round, so a dispatcher that
//! runs seconds behind under load delays the verdict but never prevents it.

use crate::domain::OrderId;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::db::PgPool;
use redis::aio::ConnectionManager;
use redis::streams::{StreamInfoGroupsReply, StreamRangeReply};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::dispatcher::InFlight;
use super::relay::publish;
use super::{EventKind, SyncEvent};
use crate::db::sync as queries;
use crate::engine::cluster::leases::Leases;
use crate::engine::keys::{Keys, GROUP};
use crate::metrics::SyncMetrics;

/// How often due retries are looked for.
const RETRY_TICK: Duration = Duration::from_millis(500);
/// How long a claimed retry is left alone before it may be published again (if its event was
/// lost on the way).
const RETRY_LEASE: Duration = Duration::from_secs(300);
/// How often the reconciler looks.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
const BATCH: i64 = 500;
/// Most steps of `BATCH` orders the reconciler takes in one round (20,000 orders).
const MAX_STEPS_PER_ROUND: usize = 40;
/// How long the reconciler waits for the dispatcher to read past a moment before it leaves the
/// shard for the next round.
const CATCH_UP_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Scheduler {
    pool: PgPool,
    redis: ConnectionManager,
    keys: Keys,
    /// How long an order must have been quiet before the reconciler publishes it again.
    quiet_for: Duration,
    /// The events in memory: their orders are not lost.
    in_flight: InFlight,
    /// Only orders of the shards this instance holds are its to reconcile: another instance's
    /// events in memory are invisible here.
    leases: Leases,
    metrics: Arc<SyncMetrics>,
    /// Where the reconciler's walk over the orders behind goes on from.
    after_id: i64,
    /// Orders found behind whose shards had not yet been read past `published_by_ms`.
    suspects: Vec<(OrderId, i64)>,
    published_by_ms: u64,
    shutdown: CancellationToken,
}

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: PgPool,
        redis: ConnectionManager,
        keys: Keys,
        quiet_for: Duration,
        in_flight: InFlight,
        leases: Leases,
        metrics: Arc<SyncMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            pool,
            redis,
            keys,
            quiet_for,
            in_flight,
            leases,
            metrics,
            after_id: 0,
            suspects: Vec::new(),
            published_by_ms: 0,
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
                .map(|&(id, version, attempt)| {
                    event(
                        id,
                        version,
                        EventKind::Retry {
                            attempt: Some(attempt),
                        },
                    )
                })
                .collect();
            publish(&mut self.redis, &self.keys, &events).await?;
            if (due.len() as i64) < BATCH {
                return Ok(());
            }
        }
    }

    /// One round of the reconciler: settles the suspects of earlier rounds, then walks on over
    /// the orders behind (at most `MAX_STEPS_PER_ROUND` steps), publishing an event for each
    /// order whose event is lost (see the module's doc).
    async fn reconcile(&mut self) -> anyhow::Result<()> {
        if !self.suspects.is_empty() {
            self.settle_suspects().await?;
            if !self.suspects.is_empty() {
                return Ok(()); // their shards are still behind: look again next round
            }
        }
        for _ in 0..MAX_STEPS_PER_ROUND {
            let scan =
                queries::scan_behind(&self.pool, self.after_id, BATCH, self.quiet_for).await?;
            self.after_id = scan.last_id.unwrap_or(0);
            if !scan.candidates.is_empty() {
                // Taken after the candidates were read: their entries, if any, existed by now.
                self.published_by_ms = self.redis_time_ms().await?;
                self.suspects = scan.candidates;
                self.settle_suspects().await?;
                if !self.suspects.is_empty() {
                    return Ok(());
                }
            }
            if scan.last_id.is_none() {
                return Ok(()); // the walk starts again from the first order next round
            }
        }
        Ok(())
    }

    /// Publishes the suspects whose shards have been read past `published_by_ms` and that are
    /// still behind at the same version with no event in memory; keeps the others as suspects.
    async fn settle_suspects(&mut self) -> anyhow::Result<()> {
        let (keys, leases) = (&self.keys, &self.leases);
        self.suspects
            .retain(|&(id, _)| leases.holds(keys.shard_of(id)));
        let shards: BTreeSet<u64> = self
            .suspects
            .iter()
            .map(|&(id, _)| self.keys.shard_of(id))
            .collect();
        let caught_up = self
            .shards_delivered_up_to(&shards, self.published_by_ms)
            .await?;
        let (settled, waiting): (Vec<_>, Vec<_>) = self
            .suspects
            .iter()
            .partition(|(id, _)| caught_up.contains(&self.keys.shard_of(*id)));
        if !settled.is_empty() {
            let still_behind = queries::still_behind(&self.pool, &settled).await?;
            let lost: Vec<SyncEvent> = still_behind
                .into_iter()
                .filter(|&(id, _)| !self.in_flight.holds_order(id))
                .map(|(id, version)| event(id, version, EventKind::Change))
                .collect();
            if !lost.is_empty() {
                let ids: Vec<OrderId> = lost.iter().take(10).map(|e| e.order_id).collect();
                tracing::warn!(
                    orders = lost.len(),
                    first_ids = ?ids,
                    "orders behind with no event in flight or queued; publishing them again"
                );
                publish(&mut self.redis, &self.keys, &lost).await?;
                self.metrics.republished.inc_by(lost.len() as u64);
            }
        }
        self.suspects = waiting;
        Ok(())
    }

    /// Redis's clock, in milliseconds: the clock stream entry ids are made from.
    async fn redis_time_ms(&mut self) -> redis::RedisResult<u64> {
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut self.redis).await?;
        Ok(secs * 1000 + micros / 1000)
    }

    /// Of `shards`, those whose every entry up to `until_ms` has been delivered to the consumer
    /// group, waiting up to `CATCH_UP_WAIT` for the dispatcher to read that far.
    async fn shards_delivered_up_to(
        &mut self,
        shards: &BTreeSet<u64>,
        until_ms: u64,
    ) -> redis::RedisResult<BTreeSet<u64>> {
        let mut caught_up = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
        loop {
            let waiting: Vec<u64> = shards.difference(&caught_up).copied().collect();
            for shard in waiting {
                if self.delivered_up_to(shard, until_ms).await? {
                    caught_up.insert(shard);
                }
            }
            if caught_up.len() == shards.len() || tokio::time::Instant::now() >= deadline {
                return Ok(caught_up);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether no entry published up to `until_ms` waits undelivered in the shard's stream.
    async fn delivered_up_to(&mut self, shard: u64, until_ms: u64) -> redis::RedisResult<bool> {
        let stream = self.keys.stream(shard);
        let groups: redis::RedisResult<StreamInfoGroupsReply> =
            self.redis.xinfo_groups(&stream).await;
        let last_delivered = match groups {
            Ok(reply) => match reply.groups.into_iter().find(|g| g.name == GROUP) {
                Some(group) => group.last_delivered_id,
                // The group is being created again (Redis lost it): everything is undelivered.
                None => "0-0".to_string(),
            },
            // No stream: nothing is queued.
            Err(e) if matches!(e.kind(), redis::ErrorKind::Server(_)) => return Ok(true),
            Err(e) => return Err(e),
        };
        let undelivered: StreamRangeReply = self
            .redis
            .xrange_count(&stream, format!("({last_delivered}"), until_ms, 1)
            .await?;
        Ok(undelivered.ids.is_empty())
    }
}

fn event(order_id: OrderId, version: i64, kind: EventKind) -> SyncEvent {
    SyncEvent {
        order_id,
        version,
        kind,
        committed_at_ms: chrono::Utc::now().timestamp_millis(),
    }
}
