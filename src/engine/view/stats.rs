//! How big the backlog is: each shard stream's length (entries unread or unacknowledged, since
//! acknowledged entries are deleted), its pending count (read, not yet acknowledged), and the
//! instance that holds its lease.

use redis::aio::ConnectionManager;

use crate::engine::keys::{Keys, GROUP};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ShardStats {
    pub shard: u64,
    pub length: u64,
    pub pending: u64,
    /// The instance holding the shard's lease; `None` while no instance does.
    pub owner: Option<String>,
}

/// One pipeline of `XLEN`, `XPENDING` (summary form) and the lease per shard.
pub async fn shard_stats(
    redis: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<Vec<ShardStats>> {
    let mut pipe = redis::pipe();
    // A stream with no consumer group yet (no worker ever read it) answers XPENDING with
    // NOGROUP: that shard has no pending entries, and the other replies still count.
    pipe.ignore_errors();
    for shard in 0..keys.shards() {
        let stream = keys.stream(shard);
        pipe.xlen(&stream);
        // Summary form: [count, smallest id, greatest id, consumers].
        pipe.cmd("XPENDING").arg(&stream).arg(GROUP);
        pipe.get(keys.lease(shard));
    }
    let replies: Vec<redis::Value> = pipe.query_async(redis).await?;
    let mut stats = Vec::new();
    for (shard, pair) in (0..keys.shards()).zip(replies.chunks(3)) {
        let length = redis::from_redis_value_ref::<u64>(&pair[0]).unwrap_or(0);
        let pending = match &pair[1] {
            redis::Value::Array(summary) => summary
                .first()
                .and_then(|c| redis::from_redis_value_ref::<u64>(c).ok())
                .unwrap_or(0),
            _ => 0,
        };
        let owner = redis::from_redis_value_ref::<Option<String>>(&pair[2])
            .ok()
            .flatten();
        stats.push(ShardStats {
            shard,
            length,
            pending,
            owner,
        });
    }
    Ok(stats)
}
