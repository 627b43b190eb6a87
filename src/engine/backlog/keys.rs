//! Every Redis key and name the service uses, built in one place. All keys live under
//! `REDIS_PREFIX`, so tests and instances can share one Redis.

/// Streams the backlog is split into. An order always maps to the same shard, so its events stay
/// in commit order; shards let several consumers (and, later, instances) share the work.
pub const SHARDS: u64 = 8;

/// The consumer group every instance reads the streams with.
pub const GROUP: &str = "order-sync";

/// This instance's consumer name in the group. Stable across restarts, so entries a crashed run
/// read but never acknowledged are this consumer's, and are read again first at the next start.
pub const CONSUMER: &str = "main";

/// The shard an order's events go to.
pub fn shard_of(order_id: i64) -> u64 {
    order_id.unsigned_abs() % SHARDS
}

/// Names of this instance's keys.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// `{prefix}:events:{shard}`: the stream of one shard.
    pub fn stream(&self, shard: u64) -> String {
        format!("{}:events:{shard}", self.prefix)
    }

    /// Every shard's stream, in shard order.
    pub fn streams(&self) -> Vec<String> {
        (0..SHARDS).map(|shard| self.stream(shard)).collect()
    }
}
