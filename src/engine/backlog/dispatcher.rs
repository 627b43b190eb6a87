//! The dispatcher: reads the shard streams with a consumer group and hands each event to the
//! supervisor. It holds at most `MAX_IN_FLIGHT_EVENTS` unacknowledged events: when that many are
//! out it stops reading (backpressure), so a backlog of millions stays in Redis, not in memory.
//!
//! An entry is acknowledged (XACK, then XDEL to keep the stream short) only after the order's
//! actor reported its outcome, which it does only after recording it in PostgreSQL. A failed
//! acknowledgement is retried a few times. At start, entries that a previous run (of any
//! consumer name) read but never acknowledged are claimed (XAUTOCLAIM) and handled first, in
//! stream order. While running, every few seconds, entries pending for longer than
//! `RECLAIM_IDLE` that no event in memory stands for are claimed and dispatched again: those
//! whose `XREADGROUP` reply was lost (a response timeout, a dropped connection), whose
//! acknowledgement failed, or whose handling was deferred (PostgreSQL unreachable). On shutdown
//! it stops reading; events not yet started are abandoned unacknowledged and wait in Redis for
//! the next start.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio_retry::strategy::ExponentialBackoff;
use tokio_retry::Retry;
use tokio_util::sync::CancellationToken;

use super::keys::{Keys, CONSUMER, GROUP, SHARDS};
use super::SyncEvent;
use crate::engine::actors::messages::{HandleEvent, Outcome};
use crate::engine::actors::supervisor::SupervisorActor;
use crate::metrics::SyncMetrics;

/// How long one read waits for new entries before looking again.
const BLOCK_MS: usize = 1_000;
/// Most entries read from one shard at once.
const MAX_READ_PER_SHARD: usize = 256;
/// How often pending entries are looked at while running.
const RECLAIM_EVERY: Duration = Duration::from_secs(5);
/// How long an entry must have been pending, with no event in memory standing for it, before
/// it is claimed and dispatched again. Entries in memory are never dispatched twice, so this
/// only delays recovery; it is longer than a lost `XREADGROUP` reply takes to show up as an
/// error (the 5 s response timeout).
pub const RECLAIM_IDLE: Duration = Duration::from_secs(15);
/// Times an event is forwarded to its order's actor when the actor fails holding it. After
/// that, the entry is left pending and reclaimed later.
const MAX_FORWARDS: u32 = 5;

/// Reads the backlog and hands events to the supervisor. Cheap to clone: the engine starts a
/// clone again if a run ends unexpectedly, and the clones share the in-flight bound and the
/// acknowledgement queue.
#[derive(Clone)]
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
    /// To the acknowledging task ([`Dispatcher::acknowledge`]).
    acks: mpsc::UnboundedSender<InFlightEntry>,
    ack_queue: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<InFlightEntry>>>,
}

/// The bound on unacknowledged events, shared with shutdown (which waits for it to drain) and
/// with the reconciler (which must not republish an order whose event is in memory).
#[derive(Clone)]
pub struct InFlight {
    slots: Arc<Semaphore>,
    capacity: usize,
    tracked: Arc<Mutex<Tracked>>,
}

/// The entries in memory, and how many of them each order has.
#[derive(Default)]
struct Tracked {
    entries: HashSet<(String, String)>,
    orders: HashMap<i64, u32>,
}

impl InFlight {
    fn new(capacity: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            tracked: Arc::default(),
        }
    }

    /// Events read but not yet acknowledged (or left pending).
    pub fn count(&self) -> usize {
        self.capacity - self.slots.available_permits()
    }

    /// Resolves when no event is in flight.
    pub async fn drained(&self) {
        if let Ok(all) = self.slots.acquire_many(self.capacity as u32).await {
            drop(all);
        }
    }

    /// Whether an event of this order is in memory (queued for or held by its actor).
    pub fn holds_order(&self, order_id: i64) -> bool {
        self.lock().orders.contains_key(&order_id)
    }

    fn holds_entry(&self, stream: &str, entry_id: &str) -> bool {
        self.lock()
            .entries
            .contains(&(stream.to_string(), entry_id.to_string()))
    }

    /// Takes a slot for an entry and tracks it until the returned guard is dropped; `None` when
    /// no slot is free.
    fn track(
        &self,
        stream: &str,
        entry_id: String,
        order_id: Option<i64>,
    ) -> Option<InFlightEntry> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let mut tracked = self.lock();
        tracked
            .entries
            .insert((stream.to_string(), entry_id.clone()));
        if let Some(order_id) = order_id {
            *tracked.orders.entry(order_id).or_default() += 1;
        }
        Some(InFlightEntry {
            stream: stream.to_string(),
            entry_id,
            order_id,
            tracked: self.tracked.clone(),
            _slot: slot,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // A panic while holding this lock cannot leave the sets half-changed; carry on.
        self.tracked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One entry in memory: it holds its in-flight slot and stays tracked until dropped (once it is
/// acknowledged, or left pending for later). Entries whose outcome is recorded travel to the
/// acknowledger as these, so their slots stay held until the XACK was tried.
struct InFlightEntry {
    stream: String,
    entry_id: String,
    order_id: Option<i64>,
    tracked: Arc<Mutex<Tracked>>,
    _slot: OwnedSemaphorePermit,
}

impl Drop for InFlightEntry {
    fn drop(&mut self) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        tracked.entries.remove(&(
            std::mem::take(&mut self.stream),
            std::mem::take(&mut self.entry_id),
        ));
        if let Some(order_id) = self.order_id {
            if let Some(count) = tracked.orders.get_mut(&order_id) {
                *count -= 1;
                if *count == 0 {
                    tracked.orders.remove(&order_id);
                }
            }
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
        Self {
            reader,
            acker,
            keys,
            consumer: CONSUMER.to_string(),
            supervisor,
            in_flight: InFlight::new(max_in_flight.max(SHARDS as usize)),
            acks,
            ack_queue: Arc::new(tokio::sync::Mutex::new(queued)),
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
        let mut last_reclaim = Instant::now();
        let shutdown = self.shutdown.clone();
        while !shutdown.is_cancelled() {
            // Whether a read succeeded since the last error: the backoff grows only while Redis
            // keeps failing, not with every error in the process's life.
            let mut progressed = false;
            let step = async {
                self.ensure_groups().await?;
                if !recovered {
                    self.claim_abandoned().await?;
                    self.read_history().await?;
                    recovered = true;
                }
                loop {
                    if last_reclaim.elapsed() >= RECLAIM_EVERY {
                        self.reclaim_stalled().await?;
                        last_reclaim = Instant::now();
                    }
                    self.read_new().await?;
                    progressed = true;
                }
            };
            let result: redis::RedisResult<()> = tokio::select! {
                result = step => result,
                _ = shutdown.cancelled() => break,
            };
            if let Err(error) = result {
                if progressed {
                    backoff = Duration::from_millis(100);
                }
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
    /// crashed run, perhaps under another consumer name), so `read_history` sees them all.
    /// This instance holds every shard, so every pending entry is its own to finish.
    async fn claim_abandoned(&mut self) -> redis::RedisResult<()> {
        for stream in self.keys.streams() {
            let mut cursor = "0-0".to_string();
            loop {
                let reply: StreamAutoClaimReply = self
                    .acker
                    .xautoclaim_options(
                        &stream,
                        GROUP,
                        &self.consumer,
                        0,
                        &cursor,
                        StreamAutoClaimOptions::default().count(1000).with_justid(),
                    )
                    .await?;
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
        Ok(())
    }

    /// Reads this consumer's entries that were delivered but never acknowledged (a previous run
    /// died) until none are left, skipping those already in memory.
    async fn read_history(&mut self) -> redis::RedisResult<()> {
        let streams = self.keys.streams();
        let mut positions: Vec<String> = vec!["0".into(); streams.len()];
        loop {
            let reply = self.read(&streams, &positions, None).await?;
            let mut read = 0;
            for stream in reply.keys {
                let position = streams.iter().position(|s| *s == stream.key);
                for entry in stream.ids {
                    read += 1;
                    if let Some(i) = position {
                        positions[i] = entry.id.clone();
                    }
                    self.dispatch(&stream.key, entry.id, SyncEvent::from_fields(&entry.map));
                }
            }
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// Reads new entries once (waiting up to `BLOCK_MS` for some) and dispatches them.
    async fn read_new(&mut self) -> redis::RedisResult<()> {
        let streams = self.keys.streams();
        let positions: Vec<String> = vec![">".into(); streams.len()];
        let reply = self.read(&streams, &positions, Some(BLOCK_MS)).await?;
        for stream in reply.keys {
            for entry in stream.ids {
                self.dispatch(&stream.key, entry.id, SyncEvent::from_fields(&entry.map));
            }
        }
        Ok(())
    }

    /// One XREADGROUP of at most one read's worth of free slots, once there is room.
    async fn read(
        &mut self,
        streams: &[String],
        positions: &[String],
        block_ms: Option<usize>,
    ) -> redis::RedisResult<StreamReadReply> {
        let free = self.wait_for_room().await;
        let per_shard = (free / SHARDS as usize).clamp(1, MAX_READ_PER_SHARD);
        let mut options = StreamReadOptions::default()
            .group(GROUP, &self.consumer)
            .count(per_shard);
        if let Some(block_ms) = block_ms {
            options = options.block(block_ms);
        }
        let reply: Option<StreamReadReply> = self
            .reader
            .xread_options(streams, positions, &options)
            .await?;
        Ok(reply.unwrap_or_default())
    }

    /// Claims entries pending for longer than `RECLAIM_IDLE` and dispatches again those that
    /// no event in memory stands for. Entries deleted from the stream while pending are
    /// acknowledged away: nothing is left to handle (the reconciler covers their orders).
    async fn reclaim_stalled(&mut self) -> redis::RedisResult<()> {
        let min_idle = RECLAIM_IDLE.as_millis() as u64;
        for stream in self.keys.streams() {
            let mut cursor = "0-0".to_string();
            loop {
                let free = self.in_flight.slots.available_permits();
                if free == 0 {
                    return Ok(()); // the rest waits for the next round
                }
                let reply: StreamAutoClaimReply = self
                    .acker
                    .xautoclaim_options(
                        &stream,
                        GROUP,
                        &self.consumer,
                        min_idle,
                        &cursor,
                        StreamAutoClaimOptions::default().count(free.min(1000)),
                    )
                    .await?;
                if !reply.deleted_ids.is_empty() {
                    self.acker
                        .xack::<_, _, _, ()>(&stream, GROUP, &reply.deleted_ids)
                        .await?;
                }
                for entry in reply.claimed {
                    if self.in_flight.holds_entry(&stream, &entry.id) {
                        continue; // still being handled: a slow call, not a lost entry
                    }
                    tracing::warn!(
                        stream,
                        entry_id = entry.id,
                        "reclaimed an entry left pending; dispatching it again"
                    );
                    self.dispatch(&stream, entry.id, SyncEvent::from_fields(&entry.map));
                }
                if reply.next_stream_id == "0-0" {
                    break;
                }
                cursor = reply.next_stream_id;
            }
        }
        Ok(())
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
        if self.in_flight.holds_entry(stream, &entry_id) {
            return; // already in memory (a restarted run reading its history again)
        }
        let order_id = event.as_ref().map(|e| e.order_id);
        let Some(entry) = self.in_flight.track(stream, entry_id.clone(), order_id) else {
            // Cannot happen (reads never exceed the free slots); the entry stays pending.
            tracing::error!(stream, entry_id, "no room for a read entry");
            return;
        };
        let acks = self.acks.clone();
        let Some(event) = event else {
            // Not ours, or deleted before it was read: nothing to sync.
            tracing::warn!(stream, entry_id, "dropping an unreadable backlog entry");
            let _ = acks.send(entry);
            return;
        };
        self.metrics.events_received.inc();
        // Forwarded now, in stream order; only the waiting is spawned.
        let first = forward(&self.supervisor, event.clone());
        let supervisor = self.supervisor.clone();
        actix_rt::spawn(async move {
            let mut outcome = first.await;
            let mut forwards = 1;
            while outcome.is_err() {
                // The order's actor failed holding this event: the supervisor starts a new one.
                if forwards >= MAX_FORWARDS {
                    tracing::error!(
                        order_id = event.order_id,
                        entry_id = entry.entry_id,
                        forwards,
                        "the order's actor keeps failing on this event; leaving it pending to be reclaimed later"
                    );
                    return; // dropping `entry` frees the slot; the entry stays pending
                }
                tracing::warn!(
                    order_id = event.order_id,
                    forwards,
                    "the order's actor failed holding an event; forwarding it again"
                );
                tokio::time::sleep(Duration::from_millis(50 << forwards)).await;
                outcome = forward(&supervisor, event.clone()).await;
                forwards += 1;
            }
            if outcome.is_ok_and(Outcome::leaves_entry_pending) {
                return; // left pending in Redis, reclaimed later; the slot is freed
            }
            let _ = acks.send(entry);
        });
    }

    /// Acknowledges in batches until the queue closes (see [`acknowledge_batches`]). A separate
    /// task, so that a slow acknowledgement never delays reading.
    pub async fn acknowledge(self) {
        let mut queue = self.ack_queue.lock().await;
        acknowledge_batches(self.acker.clone(), &mut queue).await;
    }
}

/// Most entries acknowledged in one round trip.
const ACK_BATCH: usize = 512;

/// Acknowledges in batches: whatever has queued up while the previous batch was on its way goes
/// in one pipeline (XACK and XDEL per stream), so under load one round trip serves hundreds of
/// entries, and when idle an entry is acknowledged at once. A failed pipeline is tried again
/// three times (0.1, 0.4, 1.6 s); if Redis is still away the entries stay pending, and the
/// dispatcher reclaims them later, where their versions make them no-ops.
async fn acknowledge_batches(
    redis: ConnectionManager,
    acks: &mut mpsc::UnboundedReceiver<InFlightEntry>,
) {
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
        let backoff = ExponentialBackoff::from_millis(4).factor(25).take(3);
        let acked =
            Retry::start(backoff, || {
                let mut redis = redis.clone();
                let pipe = &pipe;
                async move {
                    pipe.query_async::<()>(&mut redis).await.inspect_err(|error| {
                    tracing::warn!(error = %error, "acknowledging entries failed; retrying");
                })
                }
            })
            .await;
        if let Err(error) = acked {
            tracing::warn!(entries = batch.len(), error = %error, "could not acknowledge entries; they will be reclaimed and skipped");
        }
        // Dropping the batch frees the slots.
    }
}

fn forward(supervisor: &Addr<SupervisorActor>, event: SyncEvent) -> oneshot::Receiver<Outcome> {
    let (done, outcome) = oneshot::channel();
    supervisor.do_send(HandleEvent { event, done });
    outcome
}
