//! Shard leases: which instance may read a shard's stream and make calls for its orders.
//!
//! A lease is a Redis key, `{prefix:shard}:lease`, holding the owner's instance id, set with
//! `SET NX PX` and renewed by a script that extends it only if it still holds that id. Every
//! `renew_every` the keeper ([`Leases::keep`]):
//!
//! 1. beats its heartbeat in `{prefix}:instances` and counts the live instances;
//! 2. renews the leases it holds (one lost to another instance is dropped at once);
//! 3. releases leases beyond its fair share, `ceil(SHARDS / live)`, so a joining instance gets
//!    work; a released shard stops being read at once, its calls in progress finish and are
//!    recorded, and only then is the key deleted;
//! 4. takes free shards up to its fair share. A shard whose owner died is free once its lease
//!    expires; the dispatcher then claims the previous owner's pending entries.
//!
//! # Fencing: why two instances never call for one order at once
//!
//! A call is made only under a [`Fence`], which is granted only while the lease's local deadline
//! is far enough away for the call to finish: `now + call_budget < renewed_at + ttl`, where
//! `renewed_at` is taken *before* the renewal was sent, so Redis's expiry is never earlier than
//! the local deadline. `call_budget` is the external call's whole timeout (`EXTERNAL_TIMEOUT_MS`)
//! plus a one-second margin for clock drift and scheduling. An owner that cannot renew (Redis
//! away) therefore stops starting calls `call_budget` before its lease can expire, and every call
//! it started has ended by then. Another instance can take the shard only after the key expired
//! or was deleted, that is after the last call of the old owner. Each retry of a call checks the
//! fence again.
//!
//! A fence belongs to one *generation* of the lease: each time this instance takes a shard it is
//! a new lease. An owner frozen (SIGSTOP, a stalled VM) past its lease loses the shard; another
//! instance sends the orders' newer versions; the old owner thaws and may take the shard back
//! moments later. A quick retry still waiting from before the freeze, or a row read before it,
//! must not go out under the new lease: it would carry a version older than one already
//! accepted (the chaos soak saw exactly that, BENCHMARKS.md "Soak"). So a fence opens only under
//! the lease it was granted under, and the event path sends a row only under the lease it was
//! read under.
//!
//! For calls to start at all times, a renewal must come before the fence closes:
//! `renew_every < ttl - call_budget`. With the defaults, `ttl` = 15 s, `renew_every` = ttl / 5 =
//! 3 s, `call_budget` = 5 s + 1 s = 6 s: the fence closes 9 s after a renewal, and the next one
//! comes after 3 s, so two renewals in a row can fail before calls stop. `SHARD_LEASE_MS` must be
//! at least twice `call_budget` (checked at start-up). A SIGKILLed owner's shards wait at most
//! `ttl + renew_every` (18 s) for a new owner; a SIGTERMed one hands them over at once.

use crate::domain::OrderId;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use redis::Script;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::InstanceId;
use crate::config::LeaseTimes;
use crate::engine::keys::Keys;

/// Added to the external call's timeout: clock drift between this host and Redis over one
/// lease, and the time between the fence check and the request leaving.
pub const CALL_MARGIN: Duration = Duration::from_secs(1);

/// How soon an instance short of its fair share looks for free shards again.
const SHORT_OF_SHARE_RETRY: Duration = Duration::from_millis(500);

/// Whether the keeper holds its fair share after a round.
enum Share {
    Held,
    /// Fewer than its share: the others have not handed theirs over yet.
    Short,
}

impl LeaseTimes {
    pub fn new(ttl: Duration, call_timeout: Duration) -> Self {
        Self {
            ttl,
            call_budget: call_timeout + CALL_MARGIN,
        }
    }

    pub fn renew_every(&self) -> Duration {
        self.ttl / 5
    }
}

/// A lease this instance holds.
#[derive(Debug)]
struct Held {
    /// Which taking of the shard this is. A shard lost and taken again is a new lease: a fence
    /// (or a row read) from the old one must not pass under the new one, because another
    /// instance owned the shard in between and may have sent newer versions of its orders.
    generation: u64,
    /// When the lease runs out at the earliest, as far as this instance can tell.
    valid_until: Instant,
    /// Being handed over: no new event is read or started; calls in progress finish.
    releasing: bool,
    /// Fences out: calls in progress and their recording.
    busy: u32,
}

/// The leases this instance holds, shared by the keeper, the dispatcher and the order actors.
#[derive(Clone)]
pub struct Leases {
    instance: InstanceId,
    keys: Keys,
    times: LeaseTimes,
    held: Arc<Mutex<HashMap<u64, Held>>>,
    /// The last generation handed out to a taken lease (see [`Held::generation`]).
    generations: Arc<AtomicU64>,
    /// Woken when a fence is dropped: a release waits for its shard's calls to end.
    fence_dropped: Arc<Notify>,
    /// The shards to read: held and not being released.
    readable: watch::Sender<BTreeSet<u64>>,
    /// When the keeper last finished a round (heartbeat and renewals answered), for
    /// `/health/ready`: a worker whose keeper cannot reach Redis holds nothing soon.
    last_round: Arc<Mutex<Option<Instant>>>,
}

/// Permission to make calls for one shard's orders, held from the call until its outcome is
/// recorded. Dropping it lets a release go on. It belongs to one lease (one generation): once
/// the shard is lost, it never opens again, even if this instance takes the shard back.
pub struct Fence {
    leases: Leases,
    shard: u64,
    generation: u64,
}

impl Fence {
    /// Whether another attempt may start now (see the module's doc): the lease it was granted
    /// under is still held and far enough from running out.
    pub fn may_call(&self) -> bool {
        let held = self.leases.lock();
        held.get(&self.shard).is_some_and(|lease| {
            lease.generation == self.generation
                && Instant::now() + self.leases.times.call_budget < lease.valid_until
        })
    }

    /// The lease this fence belongs to.
    pub fn generation(&self) -> LeaseGeneration {
        LeaseGeneration(self.generation)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        if let Some(lease) = self.leases.lock().get_mut(&self.shard) {
            // A fence of an earlier lease of the shard does not count against this one.
            if lease.generation == self.generation {
                lease.busy = lease.busy.saturating_sub(1);
            }
        }
        self.leases.fence_dropped.notify_waiters();
    }
}

/// Which lease of a shard something happened under: an order's row read under one lease is
/// only sent under the same lease ([`Leases::generation_of`], [`Fence::generation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGeneration(u64);

/// Extends a lease only if this instance still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Deletes a lease only if this instance still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Beats this instance's heartbeat, forgets instances whose heartbeat ran out (by Redis's own
/// clock, so hosts' clocks do not matter) and returns how many are live.
const HEARTBEAT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 2)
return redis.call('ZCARD', KEYS[1])";

impl Leases {
    pub fn new(instance: InstanceId, keys: Keys, times: LeaseTimes) -> Self {
        Self {
            instance,
            keys,
            times,
            held: Arc::default(),
            generations: Arc::default(),
            fence_dropped: Arc::new(Notify::new()),
            readable: watch::channel(BTreeSet::new()).0,
            last_round: Arc::default(),
        }
    }

    /// How long ago the keeper last finished a round; `None` before the first.
    pub fn since_last_round(&self) -> Option<Duration> {
        let last = *self
            .last_round
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        last.map(|at| at.elapsed())
    }

    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    pub fn times(&self) -> LeaseTimes {
        self.times
    }

    /// A fence for a call for `order_id`, if its shard's lease is held, not being handed over,
    /// and far enough from running out for the call to end before it does.
    pub fn fence(&self, order_id: OrderId) -> Option<Fence> {
        let shard = self.keys.shard_of(order_id);
        let mut held = self.lock();
        let lease = held.get_mut(&shard)?;
        if lease.releasing || Instant::now() + self.times.call_budget >= lease.valid_until {
            return None;
        }
        lease.busy += 1;
        Some(Fence {
            leases: self.clone(),
            shard,
            generation: lease.generation,
        })
    }

    /// The lease under which this instance holds `order_id`'s shard now, if it does.
    pub fn generation_of(&self, order_id: OrderId) -> Option<LeaseGeneration> {
        let shard = self.keys.shard_of(order_id);
        self.lock()
            .get(&shard)
            .map(|lease| LeaseGeneration(lease.generation))
    }

    /// Whether this instance may read and start events of `shard` now.
    pub fn holds(&self, shard: u64) -> bool {
        self.lock()
            .get(&shard)
            .is_some_and(|lease| !lease.releasing && Instant::now() < lease.valid_until)
    }

    /// The shards held (including those being handed over), for `/health` and the metrics.
    pub fn held_shards(&self) -> Vec<u64> {
        let mut shards: Vec<u64> = self.lock().keys().copied().collect();
        shards.sort_unstable();
        shards
    }

    /// The shards to read, as they change.
    pub fn readable(&self) -> watch::Receiver<BTreeSet<u64>> {
        self.readable.subscribe()
    }

    /// Keeps the leases until shutdown (see the module's doc). Redis errors are logged and the
    /// round is tried again at the next tick; meanwhile the fences close on their own.
    pub async fn keep(self, mut redis: ConnectionManager, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            // Short of its share, an instance looks again soon: a shard handed over on SIGTERM
            // is taken within half a second, not a whole renewal period.
            let round = self.keep_once(&mut redis).await;
            if round.is_ok() {
                *self
                    .last_round
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Instant::now());
            }
            let next = match round {
                Ok(Share::Short) => SHORT_OF_SHARE_RETRY.min(self.times.renew_every()),
                Ok(Share::Held) => self.times.renew_every(),
                Err(error) => {
                    tracing::warn!(error = %error, "keeping the shard leases failed; retrying");
                    self.times.renew_every()
                }
            };
            self.forget_expired();
            self.publish_readable();
            tokio::select! {
                _ = tokio::time::sleep(next) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    async fn keep_once(&self, redis: &mut ConnectionManager) -> redis::RedisResult<Share> {
        let ttl_ms = self.times.ttl.as_millis() as u64;
        let live: u64 = Script::new(HEARTBEAT)
            .key(self.keys.instances())
            .arg(self.instance.as_str())
            .arg(ttl_ms)
            .invoke_async(redis)
            .await?;
        self.renew(redis).await?;
        let fair_share = self.keys.shards().div_ceil(live.max(1));
        let keeping: Vec<u64> = {
            let held = self.lock();
            let mut keeping: Vec<u64> = held
                .iter()
                .filter(|(_, lease)| !lease.releasing)
                .map(|(shard, _)| *shard)
                .collect();
            keeping.sort_unstable();
            keeping
        };
        let count = keeping.len() as u64;
        if count > fair_share {
            for &shard in keeping.iter().rev().take((count - fair_share) as usize) {
                self.hand_over(redis.clone(), shard);
            }
        } else if count < fair_share {
            let taken = self.take_free_shards(redis, fair_share - count).await?;
            // Short only below the floor: with 8 shards over 3 instances one of them holds 2 for
            // good, and polling every 0.5 s for a third would be Redis traffic for nothing.
            if count + taken < self.keys.shards() / live.max(1) {
                return Ok(Share::Short);
            }
        }
        Ok(Share::Held)
    }

    /// Renews every held lease; forgets those another instance holds now and those that ran out.
    async fn renew(&self, redis: &mut ConnectionManager) -> redis::RedisResult<()> {
        let ttl_ms = self.times.ttl.as_millis() as u64;
        for shard in self.held_shards() {
            let sent_at = Instant::now();
            let renewed: i64 = Script::new(RENEW)
                .key(self.keys.lease(shard))
                .arg(self.instance.as_str())
                .arg(ttl_ms)
                .invoke_async(redis)
                .await?;
            let mut held = self.lock();
            if renewed == 1 {
                if let Some(lease) = held.get_mut(&shard) {
                    lease.valid_until = sent_at + self.times.ttl;
                }
            } else if held.remove(&shard).is_some() {
                tracing::warn!(
                    shard,
                    "the shard's lease ran out and another instance holds it now; stopped handling it"
                );
            }
        }
        Ok(())
    }

    /// Forgets the leases whose local deadline passed (they could not be renewed): their shards
    /// are no longer read, and their fences are closed already.
    fn forget_expired(&self) {
        let now = Instant::now();
        self.lock().retain(|shard, lease| {
            let alive = lease.valid_until > now;
            if !alive {
                tracing::warn!(
                    shard,
                    "the shard's lease ran out before it could be renewed"
                );
            }
            alive
        });
    }

    /// Tries the shards not held, starting at a place that depends on the instance id (so
    /// instances starting together try different shards first), until `wanted` are taken.
    async fn take_free_shards(
        &self,
        redis: &mut ConnectionManager,
        wanted: u64,
    ) -> redis::RedisResult<u64> {
        let mut taken_count = 0;
        let shards = self.keys.shards();
        let start = self.instance.as_str().bytes().fold(0u64, |hash, b| {
            hash.wrapping_mul(31).wrapping_add(u64::from(b))
        }) % shards;
        for offset in 0..shards {
            if taken_count == wanted {
                break;
            }
            let shard = (start + offset) % shards;
            if self.lock().contains_key(&shard) {
                continue;
            }
            let sent_at = Instant::now();
            let taken: Option<String> = redis::cmd("SET")
                .arg(self.keys.lease(shard))
                .arg(self.instance.as_str())
                .arg("NX")
                .arg("PX")
                .arg(self.times.ttl.as_millis() as u64)
                .query_async(redis)
                .await?;
            if taken.is_some() {
                tracing::info!(shard, instance = %self.instance, "took the shard's lease");
                let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                self.lock().insert(
                    shard,
                    Held {
                        generation,
                        valid_until: sent_at + self.times.ttl,
                        releasing: false,
                        busy: 0,
                    },
                );
                taken_count += 1;
            }
        }
        Ok(taken_count)
    }

    /// Stops reading `shard` at once, and deletes its lease once its calls in progress are
    /// recorded (or the lease ran out).
    fn hand_over(&self, redis: ConnectionManager, shard: u64) {
        let Some(valid_until) = self.lock().get_mut(&shard).map(|lease| {
            lease.releasing = true;
            lease.valid_until
        }) else {
            return;
        };
        tracing::info!(shard, "handing the shard over to balance the instances");
        self.publish_readable();
        let leases = self.clone();
        actix_rt::spawn(async move {
            let deadline = tokio::time::Instant::from_std(valid_until);
            let _ = tokio::time::timeout_at(deadline, leases.calls_ended(shard)).await;
            leases.release(redis, shard).await;
        });
    }

    /// Resolves once no fence of `shard` is out.
    async fn calls_ended(&self, shard: u64) {
        loop {
            let dropped = self.fence_dropped.notified();
            if self.lock().get(&shard).is_none_or(|lease| lease.busy == 0) {
                return;
            }
            dropped.await;
        }
    }

    /// Deletes the lease in Redis (if still ours) and forgets it.
    async fn release(&self, mut redis: ConnectionManager, shard: u64) {
        let released: redis::RedisResult<i64> = Script::new(RELEASE)
            .key(self.keys.lease(shard))
            .arg(self.instance.as_str())
            .invoke_async(&mut redis)
            .await;
        if let Err(error) = released {
            // It runs out on its own within the lease time.
            tracing::warn!(shard, error = %error, "could not release the shard's lease");
        }
        self.lock().remove(&shard);
        self.publish_readable();
    }

    /// On graceful shutdown, after the events in flight have finished: hands every shard over at
    /// once and leaves the instances set, so others take over without waiting for the leases to
    /// run out.
    pub async fn release_all(&self, mut redis: ConnectionManager) {
        for shard in self.held_shards() {
            if let Some(lease) = self.lock().get_mut(&shard) {
                lease.releasing = true;
            }
        }
        self.publish_readable();
        for shard in self.held_shards() {
            let _ = tokio::time::timeout(self.times.call_budget, self.calls_ended(shard)).await;
            self.release(redis.clone(), shard).await;
        }
        let _: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(self.keys.instances())
            .arg(self.instance.as_str())
            .query_async(&mut redis)
            .await;
        tracing::info!(instance = %self.instance, "released the shard leases");
    }

    fn publish_readable(&self) {
        let readable: BTreeSet<u64> = self
            .lock()
            .iter()
            .filter(|(_, lease)| !lease.releasing)
            .map(|(shard, _)| *shard)
            .collect();
        self.readable.send_if_modified(|current| {
            let changed = *current != readable;
            *current = readable;
            changed
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Held>> {
        // Every update leaves the map whole; a panic elsewhere cannot half-change it.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn redis() -> (ConnectionManager, redis::Client) {
        let client = redis::Client::open(test_support::redis_url()).expect("a Redis URL");
        let manager = ConnectionManager::new(client.clone())
            .await
            .expect("the tests' Redis runs");
        (manager, client)
    }

    /// The soak's reordered call (BENCHMARKS.md, "Soak"): an owner frozen past its lease loses
    /// the shard, another instance sends a newer version, the thawed owner takes the shard back,
    /// and a retry still waiting from before the freeze must not pass the new lease's fence.
    #[actix_rt::test]
    async fn a_fence_from_a_lost_lease_stays_closed_after_the_shard_is_taken_back() {
        let prefix = test_support::unique_redis_prefix();
        let keys = Keys::new(&prefix, 1);
        let times = LeaseTimes::new(Duration::from_secs(15), Duration::from_secs(1));
        let leases = Leases::new(InstanceId::generate(Some("frozen")), keys.clone(), times);
        let (mut redis, client) = redis().await;

        leases.keep_once(&mut redis).await.expect("a round");
        let before_the_freeze = leases.fence(OrderId::new(7)).expect("the shard is held");
        assert!(before_the_freeze.may_call());
        let read_before = leases.generation_of(OrderId::new(7));

        // While it was frozen its lease ran out and another instance took the shard.
        let mut other = client
            .get_multiplexed_async_connection()
            .await
            .expect("a connection");
        let _: () = redis::cmd("SET")
            .arg(keys.lease(0))
            .arg("the-other-instance")
            .query_async(&mut other)
            .await
            .expect("SET");
        leases.keep_once(&mut redis).await.expect("a round");
        assert!(!before_the_freeze.may_call(), "lost to another instance");
        assert_eq!(leases.generation_of(OrderId::new(7)), None);

        // The other instance hands it back, and the thawed one takes it again.
        let _: () = redis::cmd("DEL")
            .arg(keys.lease(0))
            .query_async(&mut other)
            .await
            .expect("DEL");
        leases.keep_once(&mut redis).await.expect("a round");
        let taken_back = leases
            .fence(OrderId::new(7))
            .expect("the shard is held again");
        assert!(taken_back.may_call());
        assert!(
            !before_the_freeze.may_call(),
            "a fence of the lost lease opened under the new one"
        );
        assert_ne!(leases.generation_of(OrderId::new(7)), read_before);
        assert_eq!(
            leases.generation_of(OrderId::new(7)),
            Some(taken_back.generation())
        );

        // The old fence going does not count against the new lease's calls in progress.
        drop(before_the_freeze);
        assert_eq!(leases.lock().get(&0).map(|lease| lease.busy), Some(1));
        drop(taken_back);
        assert_eq!(leases.lock().get(&0).map(|lease| lease.busy), Some(0));

        let _: () = redis::cmd("DEL")
            .arg(keys.lease(0))
            .arg(keys.instances())
            .query_async(&mut other)
            .await
            .expect("DEL");
    }
}
