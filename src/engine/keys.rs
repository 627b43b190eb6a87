//! Every Redis key and name the service uses, built in one place, and the connection to Redis:
//! the engine's bottom layer, which every other part uses. All keys live under `REDIS_PREFIX`,
//! so tests and deployments can share one Redis.
//!
//! One shard's keys (its stream and its lease) share a hash tag, `{prefix:shard}`, so on Redis
//! Cluster they live in one slot; no command or script touches keys of two shards at once.

use crate::domain::OrderId;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Connects to Redis and checks it answers. The connection manager reconnects by itself later.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("not a valid Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    let mut manager = tokio::time::timeout(
        Duration::from_secs(10),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .context("timed out connecting")?
    .context("cannot connect")?;
    redis::cmd("PING")
        .query_async::<String>(&mut manager)
        .await
        .context("PING failed")?;
    Ok(manager)
}

/// The consumer group every instance reads the streams with. Each instance reads as its own
/// consumer, named by its instance id (`crate::engine::cluster::InstanceId`).
pub const GROUP: &str = "order-sync";

/// Names of the keys of one deployment (one `REDIS_PREFIX`), and the shard of each order.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
    shards: u64,
}

impl Keys {
    /// `shards` is `SHARDS`: every instance of a deployment must use the same number, which
    /// `crate::engine::cluster::check_shard_count` enforces at start-up.
    pub fn new(prefix: &str, shards: u64) -> Self {
        Self {
            prefix: prefix.to_string(),
            shards: shards.max(1),
        }
    }

    /// How many shards the backlog is split into.
    pub fn shards(&self) -> u64 {
        self.shards
    }

    /// The shard an order's events go to. An order always maps to the same shard, so its events
    /// stay in commit order, and only the instance holding that shard's lease handles them.
    pub fn shard_of(&self, order_id: OrderId) -> u64 {
        order_id.get().unsigned_abs() % self.shards
    }

    /// `{prefix:shard}:events`: the stream of one shard.
    pub fn stream(&self, shard: u64) -> String {
        format!("{{{}:{shard}}}:events", self.prefix)
    }

    /// Every shard's stream, in shard order.
    pub fn streams(&self) -> Vec<String> {
        (0..self.shards).map(|shard| self.stream(shard)).collect()
    }

    /// `{prefix:shard}:lease`: which instance holds the shard (`SET NX PX`).
    pub fn lease(&self, shard: u64) -> String {
        format!("{{{}:{shard}}}:lease", self.prefix)
    }

    /// `{prefix}:instances`: the live instances, a sorted set scored by when each one's
    /// heartbeat runs out.
    pub fn instances(&self) -> String {
        format!("{{{}}}:instances", self.prefix)
    }

    /// `{prefix}:shards`: the shard count the backlog was laid out with.
    pub fn shard_count(&self) -> String {
        format!("{{{}}}:shards", self.prefix)
    }

    /// `{prefix}:rate`: the cluster-wide rate limit's state (GCRA's theoretical arrival time).
    pub fn rate_limit(&self) -> String {
        format!("{{{}}}:rate", self.prefix)
    }

    /// `{prefix}:destination`: the external API's health, shared by every instance
    /// (`crate::engine::gate::destination`).
    pub fn destination(&self) -> String {
        format!("{{{}}}:destination", self.prefix)
    }

    /// `{prefix}:destination:probe`: which instance may send the one probe (`SET NX PX`).
    pub fn destination_probe(&self) -> String {
        format!("{{{}}}:destination:probe", self.prefix)
    }

    /// `{prefix}:census`: the instances publishing their figures, scored by when each one's
    /// entry runs out (`crate::engine::view::census`).
    pub fn census(&self) -> String {
        format!("{{{}}}:census", self.prefix)
    }

    /// `{prefix}:census:{id}`: one instance's figures.
    pub fn census_entry(&self, instance: &str) -> String {
        format!("{{{}}}:census:{instance}", self.prefix)
    }

    /// `{prefix}:history`: the cluster's chart, per 5-second bucket.
    pub fn history(&self) -> String {
        format!("{{{}}}:history", self.prefix)
    }

    /// The audits' share of the rate (`AUDIT_RATE_SHARE`): a GCRA key of its own.
    pub fn audit_rate_limit(&self) -> String {
        format!("{{{}}}:rate:audit", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn one_shards_keys_share_a_hash_tag() {
        let keys = Keys::new("order-sync", 8);
        let tag =
            |key: &str| key[key.find('{').unwrap_or(0)..=key.find('}').unwrap_or(0)].to_string();
        assert_eq!(tag(&keys.stream(3)), tag(&keys.lease(3)));
        assert_ne!(tag(&keys.stream(3)), tag(&keys.stream(4)));
        assert_eq!(keys.shard_of(crate::domain::OrderId::new(11)), 3);
        assert_eq!(keys.shard_of(crate::domain::OrderId::new(-11)), 3);
    }
}
