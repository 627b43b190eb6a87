//! One view of the cluster, on every instance. Each instance publishes what it does every
//! [`PUBLISH_EVERY`]; any instance reads the others' figures from Redis, so the dashboard and
//! `GET /metrics/actors` served by an `api` instance count the workers' syncing too (workers
//! publish no port, and no instance calls another).
//!
//! One script per instance per tick, on Redis's clock:
//! - `{prefix}:census:{id}`, a hash of the instance's figures (role, version, start, counters
//!   since it started), expiring [`ENTRY_TTL`] after its last publication;
//! - `{prefix}:census`, a sorted set of the instance ids scored by when their entry expires;
//! - `{prefix}:history`, the cluster's chart: per 5-second bucket the calls synced (summed over
//!   the instances) and the worst instance's lag p95; buckets older than 15 minutes are dropped.
//!
//! The Prometheus counters stay per instance, as Prometheus expects (sum them in PromQL).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use tokio_util::sync::CancellationToken;

use crate::config::Role;
use crate::engine::backlog::dispatcher::InFlight;
use crate::engine::keys::Keys;
use crate::metrics::{HistoryPoint, SyncMetrics, HISTORY_EVERY};

/// How often an instance publishes: the chart's step.
pub const PUBLISH_EVERY: Duration = HISTORY_EVERY;
/// An instance missing three publications in a row leaves the view.
const ENTRY_TTL: Duration = Duration::from_secs(15);
/// The chart's window, in buckets of [`PUBLISH_EVERY`]: 15 minutes.
const HISTORY_BUCKETS: i64 = 180;

/// KEYS: census set, the instance's hash, history hash. ARGV: id, entry ttl ms, bucket ms,
/// buckets kept, synced since the last publication, lag p95 ms, then field/value pairs.
const PUBLISH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local bucket_ms = tonumber(ARGV[3])
local kept = tonumber(ARGV[4])
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
fields[#fields + 1] = 'published_at_ms'
fields[#fields + 1] = tostring(now)
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], ttl * 4)
local bucket = math.floor(now / bucket_ms)
local synced = tonumber(ARGV[5])
if synced > 0 then redis.call('HINCRBY', KEYS[3], bucket .. ':synced', synced) end
local lag = tonumber(ARGV[6])
local worst = tonumber(redis.call('HGET', KEYS[3], bucket .. ':lag') or '0')
if lag > worst then redis.call('HSET', KEYS[3], bucket .. ':lag', lag) end
redis.call('HSETNX', KEYS[3], bucket .. ':synced', 0)
local old = bucket - kept
redis.call('HDEL', KEYS[3], old .. ':synced', old .. ':lag')
redis.call('PEXPIRE', KEYS[3], bucket_ms * kept * 2)
return bucket";

/// One instance as the cluster sees it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct InstanceFigures {
    pub id: String,
    pub role: String,
    pub version: String,
    pub started_at_ms: i64,
    /// How long until its entry runs out (it publishes every 5 s).
    pub heartbeat_expires_in_ms: i64,
    /// The shards whose lease it holds (from the leases themselves).
    pub shards: Vec<u64>,
    #[serde(flatten)]
    pub counts: Counts,
}

/// What an instance counts (since it started, but `in_flight` and `actors_live`: now), and the
/// cluster's sums of them.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counts {
    pub synced: u64,
    pub received: u64,
    pub failed: u64,
    pub dead: u64,
    /// Events read and not yet acknowledged.
    pub in_flight: u64,
    pub actors_live: u64,
}

impl Counts {
    /// The cluster's totals over its live instances.
    pub fn sum_of(instances: &[InstanceFigures]) -> Self {
        instances.iter().fold(Self::default(), |sum, i| Self {
            synced: sum.synced + i.counts.synced,
            received: sum.received + i.counts.received,
            failed: sum.failed + i.counts.failed,
            dead: sum.dead + i.counts.dead,
            in_flight: sum.in_flight + i.counts.in_flight,
            actors_live: sum.actors_live + i.counts.actors_live,
        })
    }
}

/// What an instance publishes about itself.
pub struct Publisher {
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub instance: String,
    pub role: Role,
    pub metrics: Arc<SyncMetrics>,
    pub in_flight: Option<InFlight>,
    pub shutdown: CancellationToken,
}

impl Publisher {
    /// Publishes every [`PUBLISH_EVERY`] until shutdown, then leaves the census. A failed
    /// publication is dropped (the view shows the instance again at the next one).
    pub async fn keep_publishing(mut self) {
        let started_at_ms = chrono::Utc::now().timestamp_millis();
        let mut synced_then = self.metrics.synced.get();
        let mut every = tokio::time::interval(PUBLISH_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            let synced = self.metrics.synced.get();
            let published = self
                .publish(started_at_ms, synced.saturating_sub(synced_then))
                .await;
            match published {
                Ok(()) => synced_then = synced,
                Err(error) => tracing::debug!(error = %error, "cannot publish to the census"),
            }
        }
        let _: redis::RedisResult<()> = redis::pipe()
            .zrem(self.keys.census(), &self.instance)
            .del(self.keys.census_entry(&self.instance))
            .query_async(&mut self.redis)
            .await;
    }

    async fn publish(&mut self, started_at_ms: i64, synced_since: u64) -> redis::RedisResult<()> {
        let m = &self.metrics;
        let figures: [(&str, String); 9] = [
            ("role", self.role.as_str().to_string()),
            ("version", crate::build_info::VERSION.to_string()),
            ("started_at_ms", started_at_ms.to_string()),
            ("synced", m.synced.get().to_string()),
            ("received", m.events_received.get().to_string()),
            ("failed", m.failed.get().to_string()),
            ("dead", m.dead.get().to_string()),
            (
                "in_flight",
                self.in_flight
                    .as_ref()
                    .map_or(0, InFlight::count)
                    .to_string(),
            ),
            ("actors_live", m.live_actors.get().max(0).to_string()),
        ];
        let code = Script::new(PUBLISH);
        let mut script = code.prepare_invoke();
        script
            .key(self.keys.census())
            .key(self.keys.census_entry(&self.instance))
            .key(self.keys.history())
            .arg(&self.instance)
            .arg(ENTRY_TTL.as_millis() as u64)
            .arg(PUBLISH_EVERY.as_millis() as u64)
            .arg(HISTORY_BUCKETS)
            .arg(synced_since)
            .arg(m.lag_p95_within(PUBLISH_EVERY));
        for (field, value) in figures {
            script.arg(field).arg(value);
        }
        let _bucket: i64 = script.invoke_async(&mut self.redis).await?;
        Ok(())
    }
}

/// The live instances' figures, with the shards each holds (`owners[shard]`), oldest first.
pub async fn read_instances(
    redis: &mut ConnectionManager,
    keys: &Keys,
    owners: &[(u64, Option<String>)],
) -> redis::RedisResult<Vec<InstanceFigures>> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await?;
    let now_ms = secs * 1000 + micros / 1000;
    let ids: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.census())
        .arg(now_ms)
        .arg("+inf")
        .arg("WITHSCORES")
        .query_async(redis)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for (id, _) in &ids {
        pipe.hgetall(keys.census_entry(id));
    }
    let entries: Vec<BTreeMap<String, String>> = pipe.query_async(redis).await?;
    let mut instances: Vec<InstanceFigures> = ids
        .into_iter()
        .zip(entries)
        .filter(|(_, entry)| !entry.is_empty())
        .map(|((id, expires_at), entry)| {
            let number = |field: &str| {
                entry
                    .get(field)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            InstanceFigures {
                shards: owners
                    .iter()
                    .filter(|(_, owner)| owner.as_deref() == Some(id.as_str()))
                    .map(|(shard, _)| *shard)
                    .collect(),
                role: entry.get("role").cloned().unwrap_or_default(),
                version: entry.get("version").cloned().unwrap_or_default(),
                started_at_ms: number("started_at_ms") as i64,
                heartbeat_expires_in_ms: expires_at as i64 - now_ms,
                counts: Counts {
                    synced: number("synced"),
                    received: number("received"),
                    failed: number("failed"),
                    dead: number("dead"),
                    in_flight: number("in_flight"),
                    actors_live: number("actors_live"),
                },
                id,
            }
        })
        .collect();
    instances.sort_by_key(|i| i.started_at_ms);
    Ok(instances)
}

/// The cluster's chart, oldest first: the complete buckets of the last 15 minutes.
pub async fn read_history(
    redis: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<Vec<HistoryPoint>> {
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(redis).await?;
    let bucket_ms = PUBLISH_EVERY.as_millis() as i64;
    let current = (secs * 1000 + micros / 1000) / bucket_ms;
    let fields: BTreeMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys.history())
        .query_async(redis)
        .await?;
    let mut buckets: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for (field, value) in fields {
        let Some((bucket, what)) = field.split_once(':') else {
            continue;
        };
        let Ok(bucket) = bucket.parse::<i64>() else {
            continue;
        };
        if bucket >= current || bucket < current - HISTORY_BUCKETS {
            continue;
        }
        let point = buckets.entry(bucket).or_default();
        match what {
            "synced" => point.0 = value,
            "lag" => point.1 = value,
            _ => {}
        }
    }
    let seconds = PUBLISH_EVERY.as_secs_f64();
    Ok(buckets
        .into_iter()
        .map(|(bucket, (synced, lag))| HistoryPoint {
            at_ms: (bucket + 1) * bucket_ms,
            synced_per_sec: (synced as f64 / seconds * 100.0).round() / 100.0,
            lag_p95_ms: lag,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_totals_sum_every_instance() {
        let figures = |counts: Counts| InstanceFigures {
            counts,
            ..Default::default()
        };
        let a = Counts {
            synced: 10,
            failed: 1,
            in_flight: 3,
            ..Default::default()
        };
        let b = Counts {
            synced: 5,
            dead: 2,
            in_flight: 1,
            ..Default::default()
        };
        let totals = Counts::sum_of(&[figures(a), figures(b)]);
        assert_eq!(
            (totals.synced, totals.failed, totals.dead, totals.in_flight),
            (15, 1, 2, 4)
        );
    }
}
