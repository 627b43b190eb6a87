//! The dispatcher: reads the shard streams with a consumer group and hands each event to the
//! supervisor. It holds at most `MAX_IN_FLIGHT_EVENTS` unacknowledged events: when that many are
//! out it stops reading (backpressure), so a backlog of millions stays in Redis, not in memory.
//!
//! An entry is acknowledged (XACK, then XDEL to keep the stream short) only after the order's
//! actor reported its outcome, which it does only after recording it in PostgreSQL. At start,
//! entries that a previous run (of any consumer name) read but never acknowledged are claimed
//! (XAUTOCLAIM) and handled first, in stream order. On shutdown it stops reading; events not yet
//! started are abandoned unacknowledged and wait in Redis for the next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::keys::{Keys, CONSUMER, GROUP, SHARDS};
use super::SyncEvent;
use crate::actors::order_sync::{HandleEvent, Outcome};
use crate::actors::supervisor::SupervisorActor;
use crate::metrics::SyncMetrics;

/// How long one read waits for new entries before looking again.
const BLOCK_MS: usize = 1_000;
/// Most entries read from one shard at once.
const MAX_READ_PER_SHARD: usize = 256;

pub struct Dispatcher {
    /// A connection of its own: a blocking XREADGROUP holds it while it waits.
    reader: ConnectionManager,
    acker: ConnectionManager,
    keys: Keys,
    consumer: String,
    supervisor: Addr<SupervisorActor>,
    in_flight: InFlight,
    metrics: Arc<SyncMetrics>,
    shutdown: CancellationToken,
    /// To the acknowledging task.
    acks: mpsc::UnboundedSender<Ack>,
}

/// The bound on unacknowledged events, shared with shutdown (which waits for it to drain).
#[derive(Clone)]
pub struct InFlight {
    slots: Arc<Semaphore>,
    capacity: usize,
}

impl InFlight {
    fn new(capacity: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Events read but not yet acknowledged (or abandoned).
    pub fn count(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Resolves when no event is in flight.
    pub async fn drained(&self) {
        if let Ok(all) = self.slots.acquire_many(self.capacity as u32).await {
            drop(all);
        }
    }
}

impl Dispatcher {
    pub fn new(
        reader: ConnectionManager,
        acker: ConnectionManager,
        keys: Keys,
        supervisor: Addr<SupervisorActor>,
        max_in_flight: usize,
        metrics: Arc<SyncMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        // Unbounded, yet bounded: every queued ack holds one of the in-flight slots.
        let (acks, queued) = mpsc::unbounded_channel();
        actix_rt::spawn(acknowledge_batches(acker.clone(), queued));
        Self {
            reader,
            acker,
            keys,
            consumer: CONSUMER.to_string(),
            supervisor,
            in_flight: InFlight::new(max_in_flight.max(SHARDS as usize)),
            acks,
            metrics,
            shutdown,
        }
    }

    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// Reads and dispatches until shutdown. Redis errors are retried with backoff; a lost
    /// consumer group (Redis restarted without its data) is created again.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(100);
        let mut recovered = false;
        let shutdown = self.shutdown.clone();
        while !shutdown.is_cancelled() {
            let step = async {
                self.ensure_groups().await?;
                if !recovered {
                    self.claim_abandoned().await?;
                    self.read_all(true).await?;
                    recovered = true;
                }
                self.read_all(false).await
            };
            let result = tokio::select! {
                result = step => result,
                _ = shutdown.cancelled() => break,
            };
            if let Err(error) = result {
                tracing::warn!(error = %error, retry_in_ms = backoff.as_millis() as u64, "reading the backlog failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            } else {
                backoff = Duration::from_millis(100);
            }
        }
    }

    /// Creates the consumer group on every shard stream (and the stream), if missing.
    async fn ensure_groups(&mut self) -> redis::RedisResult<()> {
        for stream in self.keys.streams() {
            let created: redis::RedisResult<()> =
                self.acker.xgroup_create_mkstream(&stream, GROUP, "0").await;
            match created {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes over every entry that was delivered but never acknowledged, whoever read it (a
    /// crashed run, perhaps under another consumer name), so `read_all(true)` sees them all.
    /// This instance holds every shard, so every pending entry is its own to finish.
    async fn claim_abandoned(&mut self) -> redis::RedisResult<()> {
        for stream in self.keys.streams() {
            let mut cursor = "0-0".to_string();
            loop {
                let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg(0)
                    .arg(&cursor)
                    .arg("COUNT")
                    .arg(1000)
                    .arg("JUSTID")
                    .query_async(&mut self.acker)
                    .await?;
                // [next cursor, [claimed ids], [deleted ids] (Redis 7)]
                let next = match &reply {
                    redis::Value::Array(parts) => parts
                        .first()
                        .and_then(|c| redis::from_redis_value::<String>(c).ok()),
                    _ => None,
                };
                match next {
                    Some(next) if next != "0-0" => cursor = next,
                    _ => break,
                }
            }
        }
        Ok(())
    }

    /// With `history`, reads this consumer's entries that were delivered but never acknowledged
    /// (a previous run died) until none are left; otherwise reads new entries, forever.
    async fn read_all(&mut self, history: bool) -> redis::RedisResult<()> {
        let streams = self.keys.streams();
        let mut positions: Vec<String> =
            vec![if history { "0".into() } else { ">".into() }; streams.len()];
        loop {
            let free = self.wait_for_room().await;
            let per_shard = (free / SHARDS as usize).clamp(1, MAX_READ_PER_SHARD);
            let mut options = StreamReadOptions::default()
                .group(GROUP, &self.consumer)
                .count(per_shard);
            if !history {
                options = options.block(BLOCK_MS);
            }
            let reply: Option<StreamReadReply> = self
                .reader
                .xread_options(&streams, &positions, &options)
                .await?;
            let Some(reply) = reply else { continue };
            let mut read = 0;
            for stream in reply.keys {
                let position = streams.iter().position(|s| *s == stream.key);
                for entry in stream.ids {
                    read += 1;
                    if let (true, Some(i)) = (history, position) {
                        positions[i] = entry.id.clone();
                    }
                    self.dispatch(&stream.key, entry.id, SyncEvent::from_fields(&entry.map));
                }
            }
            if history && read == 0 {
                return Ok(());
            }
        }
    }

    /// Waits until at least one read's worth of room is free; returns how many slots are free.
    async fn wait_for_room(&self) -> usize {
        loop {
            let free = self.in_flight.slots.available_permits();
            if free >= SHARDS as usize {
                return free;
            }
            // Released when an event is acknowledged; give the slot straight back.
            if let Ok(permit) = self.in_flight.slots.acquire().await {
                drop(permit);
            }
        }
    }

    fn dispatch(&self, stream: &str, entry_id: String, event: Option<SyncEvent>) {
        let Ok(permit) = self.in_flight.slots.clone().try_acquire_owned() else {
            // Cannot happen (reads never exceed the free slots); the entry stays pending.
            tracing::error!(stream, entry_id, "no room for a read entry");
            return;
        };
        let ack = Ack {
            stream: stream.to_string(),
            entry_id,
            _slot: permit,
        };
        let acks = self.acks.clone();
        let Some(event) = event else {
            // Not ours, or deleted before it was read: nothing to sync.
            tracing::warn!(
                stream = ack.stream,
                entry_id = ack.entry_id,
                "dropping an unreadable backlog entry"
            );
            let _ = acks.send(ack);
            return;
        };
        self.metrics.events_received.inc();
        // Forwarded now, in stream order; only the waiting is spawned.
        let first = forward(&self.supervisor, event.clone());
        let supervisor = self.supervisor.clone();
        actix_rt::spawn(async move {
            let mut outcome = first.await;
            while outcome.is_err() {
                // The order's actor failed holding this event: the supervisor starts a new one.
                tokio::time::sleep(Duration::from_millis(50)).await;
                outcome = forward(&supervisor, event.clone()).await;
            }
            if outcome == Ok(Outcome::Abandoned) {
                return; // left pending in Redis for the next start; the slot is freed
            }
            let _ = acks.send(ack);
        });
    }
}

/// An entry whose outcome is recorded, waiting to be acknowledged; it holds its in-flight slot
/// until then.
struct Ack {
    stream: String,
    entry_id: String,
    _slot: OwnedSemaphorePermit,
}

/// Most entries acknowledged in one round trip.
const ACK_BATCH: usize = 512;

/// Acknowledges in batches: whatever has queued up while the previous batch was on its way goes
/// in one pipeline (XACK and XDEL per stream), so under load one round trip serves hundreds of
/// entries, and when idle an entry is acknowledged at once. If Redis is away the entries stay
/// pending and are handled again after a restart, where their versions make them no-ops.
async fn acknowledge_batches(mut redis: ConnectionManager, mut acks: mpsc::UnboundedReceiver<Ack>) {
    while let Some(first) = acks.recv().await {
        let mut batch = vec![first];
        while batch.len() < ACK_BATCH {
            match acks.try_recv() {
                Ok(ack) => batch.push(ack),
                Err(_) => break,
            }
        }
        let mut by_stream: HashMap<&str, Vec<&str>> = HashMap::new();
        for ack in &batch {
            by_stream
                .entry(&ack.stream)
                .or_default()
                .push(&ack.entry_id);
        }
        let mut pipe = redis::pipe();
        for (stream, ids) in &by_stream {
            pipe.xack(*stream, GROUP, ids)
                .ignore()
                .xdel(*stream, ids)
                .ignore();
        }
        if let Err(error) = pipe.query_async::<()>(&mut redis).await {
            tracing::warn!(entries = batch.len(), error = %error, "could not acknowledge entries; they will be handled again");
        }
        // Dropping the batch frees the slots.
    }
}

fn forward(supervisor: &Addr<SupervisorActor>, event: SyncEvent) -> oneshot::Receiver<Outcome> {
    let (done, outcome) = oneshot::channel();
    supervisor.do_send(HandleEvent { event, done });
    outcome
}
