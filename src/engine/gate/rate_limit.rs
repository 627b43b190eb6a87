//! The external API's rate limit across every instance: GCRA (the generic cell rate algorithm)
//! in one Lua script, on Redis's clock, one round trip per grant.
//!
//! GCRA keeps one number per limit, the theoretical arrival time (TAT): when the next call would
//! be due if calls came exactly at the rate. A call is allowed while `TAT - now` is within the
//! burst's tolerance, `(burst - 1) * interval`, and each allowed call moves TAT on by one
//! interval. So at most `burst` calls go out at once and `rate` per second after that: no
//! one-second window sees more than `rate + burst` calls, however many instances ask.
//!
//! One script call may grant several calls (`want`), so that under load one round trip serves
//! every caller waiting at that moment (see BENCHMARKS.md for what a batch buys). Grants are
//! handed to callers at once and never kept for later, which would let them bunch up.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// What both scripts start with: Redis's clock in microseconds, the interval and the burst's
/// tolerance (`ARGV[1]`, `ARGV[2]`), and the stored theoretical arrival time.
macro_rules! gcra_prelude {
    () => {
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * (tonumber(ARGV[2]) - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')"
    };
}

/// Grants up to `ARGV[3]` calls at once; returns `{granted, microseconds to wait}`.
const TAKE: &str = concat!(
    gcra_prelude!(),
    r"
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval) + 1
if room < 1 then
  return {0, tat - tolerance - now}
end
local granted = math.min(room, tonumber(ARGV[3]))
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}"
);

/// Grants nothing for `ARGV[3]` microseconds (a 429's `Retry-After`), for every instance.
const PAUSE: &str = concat!(
    gcra_prelude!(),
    r"
local paused = now + tonumber(ARGV[3]) + tolerance
if paused > tat then
  redis.call('SET', KEYS[1], string.format('%.3f', paused), 'PX', math.ceil((paused - now) / 1000) + 1000)
end
return 1"
);

/// Grants one call of two limits together (`KEYS[1]`: `ARGV[1]`, `ARGV[2]`; `KEYS[2]`:
/// `ARGV[3]`, `ARGV[4]`), or neither; returns `{granted, microseconds to wait}`. Taking the two
/// one after the other would let calls granted by the first bunch up while they wait for the
/// second, and go out faster than the first allows.
const TAKE_PAIR: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tats = {}
local wait = 0
for i = 1, 2 do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = interval * (tonumber(ARGV[2 * i]) - 1)
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  if tat - tolerance > now then wait = math.max(wait, tat - tolerance - now) end
  tats[i] = tat
end
if wait > 0 then
  return {0, wait}
end
for i = 1, 2 do
  local tat = tats[i] + tonumber(ARGV[2 * i - 1])
  redis.call('SET', KEYS[i], string.format('%.3f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {1, 0}";

/// What one request for calls got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// This many calls may go out now (at least one).
    Calls(u32),
    /// None now; ask again after this long.
    WaitFor(Duration),
}

/// The cluster-wide limit of one deployment (one `REDIS_PREFIX`).
#[derive(Clone)]
pub struct ClusterRateLimit {
    redis: ConnectionManager,
    key: String,
    /// Microseconds between calls at the rate (fractional: 700,000/s is 1.43 µs).
    interval_us: f64,
    burst: u32,
    take: Script,
    take_pair: Script,
    pause: Script,
}

impl ClusterRateLimit {
    pub fn new(redis: ConnectionManager, key: String, rate_per_sec: u32, burst: u32) -> Self {
        Self {
            redis,
            key,
            interval_us: 1_000_000.0 / f64::from(rate_per_sec.max(1)),
            burst: burst.max(1),
            take: Script::new(TAKE),
            take_pair: Script::new(TAKE_PAIR),
            pause: Script::new(PAUSE),
        }
    }

    /// `(rate per second, burst)`.
    pub fn limits(&self) -> (u32, u32) {
        ((1_000_000.0 / self.interval_us).round() as u32, self.burst)
    }

    /// Asks for up to `want` calls.
    pub async fn take(&self, want: u32) -> redis::RedisResult<Grant> {
        let (granted, wait_us): (u32, u64) = self
            .take
            .key(&self.key)
            .arg(self.interval_us)
            .arg(self.burst)
            .arg(want.max(1))
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match granted {
            0 => Grant::WaitFor(Duration::from_micros(wait_us.max(100))),
            granted => Grant::Calls(granted),
        })
    }

    /// Asks for one call of this limit and of `share` together (a share of this limit kept by
    /// a part of the work: audits): both grant it, or neither does.
    pub async fn take_one_within(&self, share: &ClusterRateLimit) -> redis::RedisResult<Grant> {
        let (granted, wait_us): (u32, u64) = self
            .take_pair
            .key(&self.key)
            .key(&share.key)
            .arg(self.interval_us)
            .arg(self.burst)
            .arg(share.interval_us)
            .arg(share.burst)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(match granted {
            0 => Grant::WaitFor(Duration::from_micros(wait_us.max(100))),
            granted => Grant::Calls(granted),
        })
    }

    /// Stops every instance's calls for `delay`.
    pub async fn pause(&self, delay: Duration) -> redis::RedisResult<()> {
        let _: i64 = self
            .pause
            .key(&self.key)
            .arg(self.interval_us)
            .arg(self.burst)
            .arg(delay.as_micros() as u64)
            .invoke_async(&mut self.redis.clone())
            .await?;
        Ok(())
    }
}
