//! The dispatcher: reads the streams of the shards this instance holds a lease on
//! (`crate::engine::cluster::leases`) and hands each event to the supervisor. It holds at most
//! `MAX_IN_FLIGHT_EVENTS` unacknowledged events: when that many are out it stops reading
//! (backpressure), so a backlog of millions stays in Redis, not in memory.
//!
//! Each held shard has a reader of its own, with its own connection for the blocking
//! `XREADGROUP` (one stream per command, so it works on Redis Cluster too). It reads as this
//! instance's consumer. When it starts (the lease was just taken), it claims every entry of the
//! shard left pending by anyone (XAUTOCLAIM): the shard was free, so their readers are gone or
//! fenced off. Those are handled first, in stream order, then new ones. When the lease is lost
//! or handed over, the reader stops; events already read and not yet called are refused by the
//! order's actor (no fence) and stay pending for the next owner.
//!
//! An entry is acknowledged (XACK, then XDEL to keep the stream short) only after the order's
//! actor reported its outcome, which it does only after recording it in PostgreSQL. A failed
//! acknowledgement is retried a few times. Every few seconds, entries pending for longer than
//! `RECLAIM_IDLE` that no event in memory stands for are claimed and dispatched again: those
//! whose `XREADGROUP` reply was lost (a response timeout, a dropped connection), whose
//! acknowledgement failed, or whose handling was deferred (PostgreSQL unreachable). On shutdown
//! it stops reading; events not yet started are abandoned unacknowledged and wait in Redis.

use crate::domain::OrderId;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use redis::aio::ConnectionManager;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamInfoConsumersReply, StreamReadOptions,
    StreamReadReply,
};
use redis::AsyncCommands;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_retry::strategy::ExponentialBackoff;
use tokio_retry::Retry;
use tokio_util::sync::CancellationToken;

use super::SyncEvent;
use crate::engine::actors::messages::{HandleEvent, Outcome};
use crate::engine::actors::supervisor::SupervisorActor;
use crate::engine::backoff::Backoff;
use crate::engine::cluster::leases::Leases;
use crate::engine::keys::{Keys, GROUP};
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
/// Consumers (instances of earlier runs) with nothing pending, idle for this long, are removed
/// from the group, so restarts do not pile up names.
const FORGET_CONSUMER_IDLE_MS: usize = 600_000;
/// Times an event is forwarded to its order's actor when the actor fails holding it. After
/// that, the entry is left pending and reclaimed later.
const MAX_FORWARDS: u32 = 5;

/// Reads the backlog and hands events to the supervisor. Cheap to clone: the engine starts a
/// clone again if a run ends unexpectedly, and the clones share the in-flight bound and the
/// acknowledgement queue.
#[derive(Clone)]
pub struct Dispatcher {
    /// For each reader's own connection: a blocking XREADGROUP holds it while it waits.
    redis_url: Arc<str>,
    acker: ConnectionManager,
    keys: Keys,
    /// This instance's consumer name: its instance id.
    consumer: String,
    leases: Leases,
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
    orders: HashMap<OrderId, u32>,
}

impl InFlight {
    fn new(capacity: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            capacity,
            tracked: Arc::default(),
        }
    }

    /// Events read but not yet acknowledged (or left pending). Not the slots taken: a reader
    /// holds its share of them while it waits for entries.
    pub fn count(&self) -> usize {
        self.lock().entries.len()
    }

    /// Resolves when no event is in flight.
    pub async fn drained(&self) {
        if let Ok(all) = self.slots.acquire_many(self.capacity as u32).await {
            drop(all);
        }
    }

    /// Whether an event of this order is in memory (queued for or held by its actor).
    pub fn holds_order(&self, order_id: OrderId) -> bool {
        self.lock().orders.contains_key(&order_id)
    }

    fn holds_entry(&self, stream: &str, entry_id: &str) -> bool {
        self.lock()
            .entries
            .contains(&(stream.to_string(), entry_id.to_string()))
    }

    /// Waits until at least one slot is free, then takes up to `most`.
    async fn reserve(&self, most: usize) -> Vec<OwnedSemaphorePermit> {
        let Ok(first) = self.slots.clone().acquire_owned().await else {
            return Vec::new(); // never closed
        };
        let mut slots = vec![first];
        while slots.len() < most {
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slots.push(slot),
                Err(_) => break,
            }
        }
        slots
    }

    /// Tracks an entry, holding `slot`, until the returned guard is dropped.
    fn track(
        &self,
        stream: &str,
        entry_id: String,
        order_id: Option<OrderId>,
        slot: OwnedSemaphorePermit,
    ) -> InFlightEntry {
        let mut tracked = self.lock();
        tracked
            .entries
            .insert((stream.to_string(), entry_id.clone()));
        if let Some(order_id) = order_id {
            *tracked.orders.entry(order_id).or_default() += 1;
        }
        InFlightEntry {
            stream: stream.to_string(),
            entry_id,
            order_id,
            tracked: self.tracked.clone(),
            _slot: slot,
        }
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
    order_id: Option<OrderId>,
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
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        redis_url: &str,
        acker: ConnectionManager,
        keys: Keys,
        leases: Leases,
        supervisor: Addr<SupervisorActor>,
        max_in_flight: usize,
        metrics: Arc<SyncMetrics>,
        shutdown: CancellationToken,
    ) -> Self {
        // Unbounded, yet bounded: every queued ack holds one of the in-flight slots.
        let (acks, queued) = mpsc::unbounded_channel();
        Self {
            redis_url: redis_url.into(),
            acker,
            keys,
            consumer: leases.instance().to_string(),
            leases,
            supervisor,
            in_flight: InFlight::new(max_in_flight.max(1)),
            acks,
            ack_queue: Arc::new(tokio::sync::Mutex::new(queued)),
            metrics,
            shutdown,
        }
    }

    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// Runs one reader per shard this instance may read, starting and stopping them as leases
    /// come and go, until shutdown. A reader that panics takes this task with it, so the engine
    /// restarts the dispatcher.
    pub async fn run(self) {
        let mut readable = self.leases.readable();
        // shard -> (the reader's run number, its stop token)
        let mut readers: HashMap<u64, (u64, CancellationToken)> = HashMap::new();
        let mut running: JoinSet<(u64, u64)> = JoinSet::new();
        let mut runs = 0u64;
        loop {
            let wanted = readable.borrow_and_update().clone();
            readers.retain(|shard, (_, stop)| {
                let keep = wanted.contains(shard);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for shard in wanted {
                if readers.contains_key(&shard) {
                    continue;
                }
                runs += 1;
                let stop = self.shutdown.child_token();
                readers.insert(shard, (runs, stop.clone()));
                let reader = ShardReader::new(self.clone(), shard, stop);
                let run = runs;
                running.spawn_local(async move {
                    reader.run().await;
                    (shard, run)
                });
            }
            tokio::select! {
                changed = readable.changed() => if changed.is_err() { break },
                Some(ended) = running.join_next() => match ended {
                    // Ended by its stop token; forget it unless a newer reader replaced it.
                    Ok((shard, run)) => {
                        if readers.get(&shard).is_some_and(|(current, _)| *current == run) {
                            readers.remove(&shard);
                        }
                    }
                    Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
                    Err(_) => {}
                },
                _ = self.shutdown.cancelled() => break,
            }
        }
        for (_, stop) in readers.values() {
            stop.cancel();
        }
    }

    /// Hands an entry to the order's actor, holding `slot` until its outcome is acknowledged
    /// (or it is left pending).
    fn dispatch(
        &self,
        shard: u64,
        stream: &str,
        entry_id: String,
        event: Option<SyncEvent>,
        slot: OwnedSemaphorePermit,
    ) {
        if self.in_flight.holds_entry(stream, &entry_id) || !self.leases.holds(shard) {
            return; // already in memory, or no longer ours: it stays pending
        }
        let order_id = event.as_ref().map(|e| e.order_id);
        let entry = self
            .in_flight
            .track(stream, entry_id.clone(), order_id, slot);
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
                        order_id = event.order_id.get(),
                        entry_id = entry.entry_id,
                        forwards,
                        "the order's actor keeps failing on this event; leaving it pending to be reclaimed later"
                    );
                    return; // dropping `entry` frees the slot; the entry stays pending
                }
                tracing::warn!(
                    order_id = event.order_id.get(),
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

/// The reader of one held shard's stream.
struct ShardReader {
    dispatcher: Dispatcher,
    shard: u64,
    stream: String,
    stop: CancellationToken,
    /// Its own connection, opened when the reader starts.
    connection: Option<ConnectionManager>,
    /// Whether the pending entries were claimed and read since the lease was taken.
    recovered: bool,
    last_reclaim: Instant,
}

impl ShardReader {
    fn new(dispatcher: Dispatcher, shard: u64, stop: CancellationToken) -> Self {
        let stream = dispatcher.keys.stream(shard);
        Self {
            dispatcher,
            shard,
            stream,
            stop,
            connection: None,
            recovered: false,
            last_reclaim: Instant::now(),
        }
    }

    /// Reads until stopped. Redis errors are retried with backoff; a lost consumer group (Redis
    /// restarted without its data) is created again.
    async fn run(mut self) {
        let mut backoff = Backoff::up_to(Duration::from_secs(5));
        let stop = self.stop.clone();
        while !stop.is_cancelled() {
            // Whether a read succeeded since the last error: the backoff grows only while Redis
            // keeps failing, not with every error in the process's life.
            let mut progressed = false;
            let result = tokio::select! {
                result = self.read_until_error(&mut progressed) => result,
                _ = stop.cancelled() => break,
            };
            if progressed {
                backoff.reset();
            }
            if let Err(error) = result {
                let wait = backoff.next_delay();
                tracing::warn!(
                    shard = self.shard,
                    error = format!("{error:#}"),
                    retry_in_ms = wait.as_millis() as u64,
                    "reading the backlog failed; retrying"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }

    async fn read_until_error(&mut self, progressed: &mut bool) -> anyhow::Result<()> {
        if self.connection.is_none() {
            self.connection = Some(crate::engine::keys::connect(&self.dispatcher.redis_url).await?);
        }
        self.ensure_group().await?;
        if !self.recovered {
            self.claim_abandoned().await?;
            self.read_history().await?;
            self.recovered = true;
        }
        loop {
            if self.last_reclaim.elapsed() >= RECLAIM_EVERY {
                self.reclaim_stalled().await?;
                self.last_reclaim = Instant::now();
            }
            self.read_new().await?;
            *progressed = true;
        }
    }

    /// Creates the consumer group on the stream (and the stream), if missing.
    async fn ensure_group(&mut self) -> redis::RedisResult<()> {
        let created: redis::RedisResult<()> = self
            .dispatcher
            .acker
            .xgroup_create_mkstream(&self.stream, GROUP, "0")
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    /// Takes over every entry of the shard that was delivered but never acknowledged, whoever
    /// read it: the lease was free when this instance took it, so its earlier readers are gone
    /// or fenced off. Then forgets consumers of earlier runs that hold nothing.
    async fn claim_abandoned(&mut self) -> redis::RedisResult<()> {
        let consumer = self.dispatcher.consumer.clone();
        let redis = &mut self.dispatcher.acker;
        let mut cursor = "0-0".to_string();
        loop {
            let reply: StreamAutoClaimReply = redis
                .xautoclaim_options(
                    &self.stream,
                    GROUP,
                    &consumer,
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
        let consumers: StreamInfoConsumersReply =
            redis.xinfo_consumers(&self.stream, GROUP).await?;
        for old in consumers.consumers {
            if old.name != consumer && old.pending == 0 && old.idle > FORGET_CONSUMER_IDLE_MS {
                redis
                    .xgroup_delconsumer::<_, _, _, ()>(&self.stream, GROUP, &old.name)
                    .await?;
            }
        }
        Ok(())
    }

    /// Reads this consumer's entries that were delivered but never acknowledged until none are
    /// left, skipping those already in memory.
    async fn read_history(&mut self) -> anyhow::Result<()> {
        let mut position = "0".to_string();
        loop {
            let reply = self.read(&position, None).await?;
            let mut read = 0;
            for (entry_id, event, slot) in reply {
                read += 1;
                position = entry_id.clone();
                self.dispatcher
                    .dispatch(self.shard, &self.stream, entry_id, event, slot);
            }
            if read == 0 {
                return Ok(());
            }
        }
    }

    /// Reads new entries once (waiting up to `BLOCK_MS` for some) and dispatches them.
    async fn read_new(&mut self) -> anyhow::Result<()> {
        for (entry_id, event, slot) in self.read(">", Some(BLOCK_MS)).await? {
            self.dispatcher
                .dispatch(self.shard, &self.stream, entry_id, event, slot);
        }
        Ok(())
    }

    /// One XREADGROUP of at most this reader's share of the free slots, once one is free. Each
    /// entry comes with its slot; slots left over are given back.
    async fn read(
        &mut self,
        position: &str,
        block_ms: Option<usize>,
    ) -> anyhow::Result<Vec<(String, Option<SyncEvent>, OwnedSemaphorePermit)>> {
        let readers = self.dispatcher.leases.held_shards().len().max(1);
        let share = (self.dispatcher.in_flight.capacity / readers).clamp(1, MAX_READ_PER_SHARD);
        let mut slots = self.dispatcher.in_flight.reserve(share).await;
        let mut options = StreamReadOptions::default()
            .group(GROUP, &self.dispatcher.consumer)
            .count(slots.len());
        if let Some(block_ms) = block_ms {
            options = options.block(block_ms);
        }
        let Some(connection) = self.connection.as_mut() else {
            anyhow::bail!("no connection");
        };
        let reply: Option<StreamReadReply> = connection
            .xread_options(&[&self.stream], &[position], &options)
            .await?;
        let mut entries = Vec::new();
        for stream in reply.unwrap_or_default().keys {
            for entry in stream.ids {
                let Some(slot) = slots.pop() else { break };
                let event = SyncEvent::from_fields(&entry.map);
                entries.push((entry.id, event, slot));
            }
        }
        Ok(entries)
    }

    /// Claims entries pending for longer than `RECLAIM_IDLE` and dispatches again those that
    /// no event in memory stands for. Entries deleted from the stream while pending are
    /// acknowledged away: nothing is left to handle (the reconciler covers their orders).
    async fn reclaim_stalled(&mut self) -> redis::RedisResult<()> {
        let min_idle = RECLAIM_IDLE.as_millis() as u64;
        let mut cursor = "0-0".to_string();
        loop {
            let free = self.dispatcher.in_flight.slots.available_permits();
            if free == 0 {
                return Ok(()); // the rest waits for the next round
            }
            let reply: StreamAutoClaimReply = self
                .dispatcher
                .acker
                .xautoclaim_options(
                    &self.stream,
                    GROUP,
                    &self.dispatcher.consumer,
                    min_idle,
                    &cursor,
                    StreamAutoClaimOptions::default().count(free.min(1000)),
                )
                .await?;
            if !reply.deleted_ids.is_empty() {
                self.dispatcher
                    .acker
                    .xack::<_, _, _, ()>(&self.stream, GROUP, &reply.deleted_ids)
                    .await?;
            }
            for entry in reply.claimed {
                if self
                    .dispatcher
                    .in_flight
                    .holds_entry(&self.stream, &entry.id)
                {
                    continue; // still being handled: a slow call, not a lost entry
                }
                let Ok(slot) = self.dispatcher.in_flight.slots.clone().try_acquire_owned() else {
                    return Ok(()); // the rest waits for the next round
                };
                tracing::warn!(
                    stream = self.stream,
                    entry_id = entry.id,
                    "reclaimed an entry left pending; dispatching it again"
                );
                let event = SyncEvent::from_fields(&entry.map);
                self.dispatcher
                    .dispatch(self.shard, &self.stream, entry.id, event, slot);
            }
            if reply.next_stream_id == "0-0" {
                return Ok(());
            }
            cursor = reply.next_stream_id;
        }
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
