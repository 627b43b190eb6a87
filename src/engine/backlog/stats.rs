//! How big the backlog is: each shard stream's length (entries unread or unacknowledged, since
//! acknowledged entries are deleted) and its pending count (read, not yet acknowledged).

use redis::aio::ConnectionManager;

use super::keys::{Keys, GROUP, SHARDS};

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ShardStats {
    pub shard: u64,
    pub length: u64,
    pub pending: u64,
}

/// One pipeline of `XLEN` and `XPENDING` (summary form) per shard.
pub async fn shard_stats(
    redis: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<Vec<ShardStats>> {
    let mut pipe = redis::pipe();
    for shard in 0..SHARDS {
        let stream = keys.stream(shard);
        pipe.xlen(&stream);
        // Summary form: [count, smallest id, greatest id, consumers]. A missing group (not created
        // yet) is an error, which counts as no pending entries.
        pipe.cmd("XPENDING").arg(&stream).arg(GROUP);
    }
    let replies: Vec<redis::Value> = pipe.query_async(redis).await?;
    let mut stats = Vec::new();
    for (shard, pair) in (0..SHARDS).zip(replies.chunks(2)) {
        let length = redis::from_redis_value_ref::<u64>(&pair[0]).unwrap_or(0);
        let pending = match &pair[1] {
            redis::Value::Array(summary) => summary
                .first()
                .and_then(|c| redis::from_redis_value_ref::<u64>(c).ok())
                .unwrap_or(0),
            _ => 0,
        };
        stats.push(ShardStats {
            shard,
            length,
            pending,
        });
    }
    Ok(stats)
}
