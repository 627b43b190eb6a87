//! How several instances share one backlog: Redis and PostgreSQL are the distributed engine, and
//! nothing here replaces them.
//!
//! - [`leases`]: an instance reads a shard's stream, and makes calls for its orders, only while
//!   it holds the shard's lease (`SET NX PX`, renewed, released on shutdown). Leases spread
//!   evenly over the live instances; a shard whose owner died is taken over with its pending
//!   entries. So one order's events are never handled by two instances at once.
//!
//! What every instance shares about the calls themselves (the rate limit, the pause, the external
//! API's health) is in `crate::engine::gate`; what the instances show of each other (the census,
//! the worker watch) in `crate::engine::view`.
//!
//! Outcomes are recorded in PostgreSQL as compare-and-sets on the version (`crate::db::sync`),
//! so a late write from an instance whose lease ran out cannot overwrite a newer one.

pub mod leases;

use std::fmt;
use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::AsyncCommands;

use crate::engine::keys::Keys;

/// This process's name among the instances: its consumer name in the group and the value of
/// the leases it holds. Unique per run (`INSTANCE_ID`, or the host name, the process id and a
/// random suffix), so a restarted instance never mistakes a lease of its previous run for its own.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// `configured` (`INSTANCE_ID`) gets a random suffix too: two processes started with the same
    /// value would otherwise share leases.
    pub fn generate(configured: Option<&str>) -> Self {
        let base = configured
            .map(str::to_string)
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "order-sync".to_string());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{base}-{}-{}", std::process::id(), &suffix[..8]).into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

/// Records the shard count the first instance laid the backlog out with, and refuses another:
/// an order's shard is `id % SHARDS`, so two counts would send one order's events to two shards
/// held by two instances, and its calls could cross.
pub async fn check_shard_count(redis: &mut ConnectionManager, keys: &Keys) -> Result<(), String> {
    let key = keys.shard_count();
    let _: bool = redis
        .set_nx(&key, keys.shards())
        .await
        .map_err(|e| format!("cannot record SHARDS in Redis: {e}"))?;
    let recorded: u64 = redis
        .get(&key)
        .await
        .map_err(|e| format!("cannot read SHARDS from Redis: {e}"))?;
    if recorded != keys.shards() {
        return Err(format!(
            "SHARDS={} but this deployment's backlog in Redis ({key}) is split into {recorded} shards; every instance must use the same SHARDS",
            keys.shards()
        ));
    }
    Ok(())
}
