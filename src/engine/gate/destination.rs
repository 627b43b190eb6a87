//! The external API's health, one state for the whole cluster, kept in Redis (`{prefix}:destination`)
//! on Redis's clock:
//!
//! - `healthy`: calls go out as usual.
//! - `down`: `EXTERNAL_API_DOWN_AFTER` calls for different orders in a row failed the way an
//!   unwell API fails (no connection, a timeout, 5xx, 408, 429). No call goes out: every
//!   instance's throttle hands out no slot, so events wait in their actors (and, past
//!   `MAX_IN_FLIGHT_EVENTS`, in Redis) without calling and without spending attempts. A 4xx
//!   about one order (422, 404, 409) says nothing about the API and neither counts nor resets.
//! - `probing`: one instance holds the probe lease (`{prefix}:destination:probe`, as long as a
//!   call may take) and lets exactly one waiting call through: its oldest waiter's, a real call
//!   with that order's current state. Probes back off from 1 s, doubling up to
//!   `EXTERNAL_API_PROBE_MAX_MS`, with jitter that only shortens them, and never come before a
//!   `Retry-After`. A probe that gets any answer but those above turns the state `healthy` and
//!   bumps the generation; one that fails turns it back to `down`. A probe holder that dies
//!   leaves its lease to run out, and the next instance probes.
//!
//! Every instance reads the state every [`WATCH_EVERY`]. On `healthy` it opens its throttle with
//! a ramp (`EXTERNAL_API_RAMP_MS`, from a tenth of `MAX_CONCURRENT_CALLS` to all of it), so the
//! waiting actors go at once, each with its order's latest state (one call per order, however
//! many changes it missed), in order and within the rate limit; and it releases the orders parked
//! for a delayed retry since the outage began (refunding the attempt it cost them), which would
//! otherwise wait for their own schedule.
//!
//! The streak is counted by each instance over its own calls, so successes cost no Redis command;
//! only the turn to `down` is written.

use crate::domain::OrderId;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::DestinationSettings;
use crate::db::PgPool;
use rand::RngExt;
use redis::aio::ConnectionManager;
use redis::Script;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::engine::gate::throttle::Throttle;
use crate::engine::keys::Keys;
use crate::external::{Answer, CallError};

/// How often every instance reads the shared state.
pub const WATCH_EVERY: Duration = Duration::from_millis(250);
/// The first probe's delay after the turn to `down`; each failed probe doubles it.
const FIRST_PROBE: Duration = Duration::from_secs(1);
/// Orders remembered as failing lately ([`Destination::is_suspect`]).
const SUSPECTS_KEPT: usize = 1_024;
/// Orders parked this long before the outage was noticed are released with the rest: the calls
/// that tripped it failed over the seconds before.
const PARKED_BEFORE_DOWN: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    Healthy,
    Down,
    Probing,
}

impl Health {
    fn parse(text: Option<&str>) -> Self {
        match text {
            Some("down") => Self::Down,
            Some("probing") => Self::Probing,
            _ => Self::Healthy,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Down => "down",
            Self::Probing => "probing",
        }
    }
}

/// The shared state as this instance last read it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DestinationView {
    pub state: Health,
    /// When the current state began (epoch milliseconds, Redis's clock); 0: never changed.
    pub since_ms: i64,
    /// Bumped on every change between `healthy` and `down`.
    pub generation: u64,
    /// Probes that failed since the API went down.
    pub probes_failed: u32,
    /// When the next probe may go (epoch milliseconds), while not healthy.
    pub next_probe_ms: Option<i64>,
}

impl Default for DestinationView {
    fn default() -> Self {
        Self {
            state: Health::Healthy,
            since_ms: 0,
            generation: 0,
            probes_failed: 0,
            next_probe_ms: None,
        }
    }
}

/// What calls tell the watcher.
#[derive(Debug)]
enum Report {
    /// This instance's streak reached `down_after`.
    Trip,
    /// A probe got an answer that shows the API is up (`true`), or failed (`false`, with the
    /// answer's `Retry-After`).
    Probe {
        answered: bool,
        retry_after: Option<Duration>,
    },
    /// A probe's slot went to a caller that made no call after all (its shard moved, shutdown).
    ProbeUnused,
}

/// The external API's health as every call on this instance sees it. Cheap to clone.
#[derive(Clone)]
pub struct Destination {
    inner: Arc<Inner>,
}

struct Inner {
    settings: DestinationSettings,
    view: watch::Sender<DestinationView>,
    /// Orders whose calls failed in a row (different orders only: one order's retries say
    /// little about the API).
    streak: Mutex<Vec<OrderId>>,
    /// Orders whose calls failed lately, newest last (at most [`SUSPECTS_KEPT`]): the probe goes
    /// to another order if one waits, since one order's own failure says little about the API.
    suspects: Mutex<VecDeque<OrderId>>,
    /// Set when this instance tripped and Redis has not said `down` yet: its own calls wait.
    tripped_here: AtomicBool,
    probes_sent: AtomicU64,
    /// When this instance last brought a parked order's retry forward to be the probe.
    brought_forward_at: Mutex<Option<std::time::Instant>>,
    reports: mpsc::UnboundedSender<Report>,
    reports_received: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
}

/// A unit of evidence about the API's health from one call's result: `Some(true)` it answered,
/// `Some(false)` it failed the way an unwell API fails, `None` it says nothing (a 4xx about the
/// order, or no call made).
pub fn health_evidence(result: &Result<Answer, CallError>) -> Option<bool> {
    match result {
        Ok(_) => Some(true),
        Err(CallError::Abandoned) => None,
        Err(CallError::Connect(_) | CallError::Timeout) => Some(false),
        Err(CallError::Status { status, .. }) => {
            if *status >= 500 || *status == 408 || *status == 429 {
                Some(false)
            } else {
                None
            }
        }
    }
}

fn retry_after(result: &Result<Answer, CallError>) -> Option<Duration> {
    match result {
        Err(CallError::Status { retry_after, .. }) => *retry_after,
        _ => None,
    }
}

impl Destination {
    pub fn new(settings: DestinationSettings) -> Self {
        let (reports, received) = mpsc::unbounded_channel();
        Self {
            inner: Arc::new(Inner {
                settings,
                view: watch::channel(DestinationView::default()).0,
                streak: Mutex::new(Vec::new()),
                suspects: Mutex::new(VecDeque::new()),
                tripped_here: AtomicBool::new(false),
                probes_sent: AtomicU64::new(0),
                brought_forward_at: Mutex::new(None),
                reports,
                reports_received: Mutex::new(Some(received)),
            }),
        }
    }

    pub fn settings(&self) -> DestinationSettings {
        self.inner.settings
    }

    pub fn view(&self) -> DestinationView {
        *self.inner.view.borrow()
    }

    /// Probes this instance sent.
    pub fn probes_sent(&self) -> u64 {
        self.inner.probes_sent.load(Ordering::Relaxed)
    }

    /// Whether calls wait: the cluster says the API is not healthy, or this instance just found
    /// it down and is telling the others.
    pub fn is_down(&self) -> bool {
        self.view().state != Health::Healthy || self.inner.tripped_here.load(Ordering::Relaxed)
    }

    /// Whether a failed call should skip its quick retries: the API is down, or half the streak
    /// that would turn it down has already failed. Quick retries into an API that is going down
    /// are the retry storm this module exists to stop.
    pub fn looks_unwell(&self) -> bool {
        let half = self.inner.settings.down_after.div_ceil(2).max(2) as usize;
        self.is_down() || self.streak_len() >= half
    }

    fn streak_len(&self) -> usize {
        self.inner.streak.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Counts one call's result (not a probe's: see [`ProbeTicket::finish`]) toward the streak,
    /// and trips the API `down` when the streak is long enough. Returns whether it tripped.
    fn observe(&self, order_id: OrderId, result: &Result<Answer, CallError>, throttle: &Throttle) {
        let Some(answered) = health_evidence(result) else {
            return;
        };
        let Ok(mut streak) = self.inner.streak.lock() else {
            return;
        };
        if answered {
            streak.clear();
            return;
        }
        self.suspect(order_id);
        if !streak.contains(&order_id) {
            streak.push(order_id);
        }
        if streak.len() >= self.inner.settings.down_after as usize && !self.is_down() {
            streak.clear();
            self.inner.tripped_here.store(true, Ordering::Relaxed);
            throttle.set_destination_open(false, Duration::ZERO);
            let _ = self.inner.reports.send(Report::Trip);
        }
    }

    /// Counts one call's result: as the probe's when `probe` is its ticket, as an ordinary
    /// call's otherwise. Returns what [`Destination::finish_probe`] returns (`false` for an
    /// ordinary call).
    pub fn report_call(
        &self,
        order_id: OrderId,
        probe: Option<ProbeTicket>,
        result: &Result<Answer, CallError>,
        throttle: &Throttle,
    ) -> bool {
        match probe {
            Some(ticket) => self.finish_probe(ticket, order_id, result),
            None => {
                self.observe(order_id, result, throttle);
                false
            }
        }
    }

    /// Reports the probe's result. Returns whether its failure is to be recorded as the order's
    /// own (parked on its retry schedule) rather than waited out: the order had failed before,
    /// so it may fail for reasons of its own, and waiting again would keep it, and the API's
    /// state with it, stuck for as long as that lasts. The attempt this costs during a real
    /// outage is given back when the API returns (`release_parked_since`).
    fn finish_probe(
        &self,
        ticket: ProbeTicket,
        order_id: OrderId,
        result: &Result<Answer, CallError>,
    ) -> bool {
        let failed = health_evidence(result) == Some(false);
        let failed_before = self.is_suspect(order_id);
        ticket.finish(result);
        if failed {
            self.suspect(order_id);
        }
        failed && failed_before
    }

    /// Remembers that a call for `order_id` failed the way an unwell API fails.
    fn suspect(&self, order_id: OrderId) {
        if let Ok(mut suspects) = self.inner.suspects.lock() {
            suspects.retain(|id| *id != order_id);
            suspects.push_back(order_id);
            if suspects.len() > SUSPECTS_KEPT {
                suspects.pop_front();
            }
        }
    }

    /// Whether a call for `order_id` failed lately the way an unwell API fails.
    pub fn is_suspect(&self, order_id: OrderId) -> bool {
        self.inner
            .suspects
            .lock()
            .is_ok_and(|suspects| suspects.contains(&order_id))
    }

    fn suspects(&self) -> Vec<OrderId> {
        self.inner
            .suspects
            .lock()
            .map(|suspects| suspects.iter().copied().collect())
            .unwrap_or_default()
    }

    fn ticket(&self) -> ProbeTicket {
        self.inner.probes_sent.fetch_add(1, Ordering::Relaxed);
        ProbeTicket {
            reports: self.inner.reports.clone(),
            finished: false,
        }
    }

    /// Reads the shared state every [`WATCH_EVERY`], writes this instance's findings (a trip, a
    /// probe's outcome), takes the probe lease when a probe is due and a call waits here, and
    /// applies every change to the throttle. Runs until shutdown.
    pub async fn keep_watching(self, watcher: DestinationWatcher) {
        let Some(mut reports) = self
            .inner
            .reports_received
            .lock()
            .ok()
            .and_then(|mut r| r.take())
        else {
            return; // already watching
        };
        let mut watcher = watcher;
        let mut redis_failing = false;
        while !watcher.shutdown.is_cancelled() {
            let step = tokio::select! {
                report = reports.recv() => match report {
                    Some(report) => watcher.handle(&self, report).await,
                    None => return,
                },
                _ = tokio::time::sleep(WATCH_EVERY) => watcher.poll(&self).await,
                _ = watcher.shutdown.cancelled() => return,
            };
            match step {
                Ok(()) => redis_failing = false,
                Err(error) => {
                    if !redis_failing {
                        tracing::warn!(%error, "cannot read or write the external API's health in Redis; keeping the last state");
                    }
                    redis_failing = true;
                }
            }
        }
    }
}

/// The one probe's right to call, handed by the throttle to the oldest waiting caller. Reported
/// with [`ProbeTicket::finish`]; dropped unused, it gives the lease back.
pub struct ProbeTicket {
    reports: mpsc::UnboundedSender<Report>,
    finished: bool,
}

impl ProbeTicket {
    pub fn finish(mut self, result: &Result<Answer, CallError>) {
        self.finished = true;
        let report = match health_evidence(result) {
            None if matches!(result, Err(CallError::Abandoned)) => Report::ProbeUnused,
            // A 4xx about the order: the API answered.
            None | Some(true) => Report::Probe {
                answered: true,
                retry_after: None,
            },
            Some(false) => Report::Probe {
                answered: false,
                retry_after: retry_after(result),
            },
        };
        let _ = self.reports.send(report);
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.reports.send(Report::ProbeUnused);
        }
    }
}

/// What the watcher works with.
pub struct DestinationWatcher {
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub instance: String,
    pub pool: PgPool,
    /// `DELAYED_RETRY_SCALE`: which parked orders the outage parked follows from it.
    pub retry_scale: f64,
    pub throttle: Throttle,
    /// This instance makes calls (`ROLE` `all` or `worker`): only such an instance brings a
    /// parked order forward to be the probe.
    pub syncs: bool,
    pub shutdown: CancellationToken,
}

/// `{now_ms, state, since_ms, generation, probes_failed, next_probe_ms}`.
const READ: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'state', 'since_ms', 'generation', 'probes_failed', 'next_probe_ms')
return {now, h[1] or 'healthy', h[2] or '0', h[3] or '0', h[4] or '0', h[5] or ''}";

/// Turns a healthy API `down`; `ARGV[1]`: the first probe's delay in milliseconds.
const TRIP: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'down' or state == 'probing' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', 'down', 'since_ms', now, 'probes_failed', 0,
  'next_probe_ms', now + tonumber(ARGV[1]))
return 1";

/// Takes the probe lease when a probe is due; `ARGV`: this instance, the lease in milliseconds.
const TAKE_PROBE: &str = r"
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'down' and state ~= 'probing' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(redis.call('HGET', KEYS[1], 'next_probe_ms') or '0') then return 0 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'probing')
return 1";

/// A failed probe: back to `down`, the next probe in `ARGV[2]` ms; `ARGV[1]`: this instance.
const PROBE_FAILED: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'state') ~= 'probing' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HINCRBY', KEYS[1], 'probes_failed', 1)
redis.call('HSET', KEYS[1], 'state', 'down', 'next_probe_ms', now + tonumber(ARGV[2]))
return 1";

/// A probe's slot went unused: the lease is given back, the next probe may go at once.
const PROBE_UNUSED: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
if redis.call('HGET', KEYS[1], 'state') == 'probing' then
  redis.call('HSET', KEYS[1], 'state', 'down')
end
return 1";

/// The API answered a probe: `healthy`, a new generation. Returns when the outage began (ms),
/// or 0 when it was already healthy. Whoever holds the lease, an answer is an answer.
const PROBE_ANSWERED: &str = r"
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'down' and state ~= 'probing' then return 0 end
local since = tonumber(redis.call('HGET', KEYS[1], 'since_ms') or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HINCRBY', KEYS[1], 'generation', 1)
redis.call('HSET', KEYS[1], 'state', 'healthy', 'since_ms', now, 'probes_failed', 0)
redis.call('HDEL', KEYS[1], 'next_probe_ms')
return since";

impl DestinationWatcher {
    /// A script on the two keys, ready for its arguments.
    fn script(&self, script: &'static Script) -> redis::ScriptInvocation<'static> {
        let mut invocation = script.prepare_invoke();
        invocation
            .key(self.keys.destination())
            .key(self.keys.destination_probe());
        invocation
    }

    async fn handle(&mut self, destination: &Destination, report: Report) -> anyhow::Result<()> {
        let settings = destination.inner.settings;
        match report {
            Report::Trip => {}
            Report::ProbeUnused => {
                let _: i64 = self
                    .script(&PROBE_UNUSED_SCRIPT)
                    .arg(&self.instance)
                    .invoke_async(&mut self.redis)
                    .await?;
            }
            Report::Probe {
                answered: false,
                retry_after,
            } => {
                let failed = destination.view().probes_failed;
                let wait =
                    probe_delay(failed, settings.probe_max).max(retry_after.unwrap_or_default());
                let _: i64 = self
                    .script(&PROBE_FAILED_SCRIPT)
                    .arg(&self.instance)
                    .arg(wait.as_millis() as u64)
                    .invoke_async(&mut self.redis)
                    .await?;
                tracing::info!(
                    next_probe_in_ms = wait.as_millis() as u64,
                    "probe of the external API failed; it is still down"
                );
            }
            Report::Probe { answered: true, .. } => {
                let _: i64 = self
                    .script(&PROBE_ANSWERED_SCRIPT)
                    .arg(&self.instance)
                    .invoke_async(&mut self.redis)
                    .await?;
            }
        }
        self.poll(destination).await
    }

    /// Reads the shared state (writing this instance's trip first), applies it, and takes the
    /// probe lease when a probe is due and a call waits here.
    async fn poll(&mut self, destination: &Destination) -> anyhow::Result<()> {
        let inner = &destination.inner;
        if inner.tripped_here.load(Ordering::Relaxed) {
            let _: i64 = self
                .script(&TRIP_SCRIPT)
                .arg(FIRST_PROBE.min(inner.settings.probe_max).as_millis() as u64)
                .invoke_async(&mut self.redis)
                .await?;
        }
        let (now_ms, state, since, generation, probes_failed, next_probe): (
            i64,
            String,
            String,
            String,
            String,
            String,
        ) = self
            .script(&READ_SCRIPT)
            .invoke_async(&mut self.redis)
            .await?;
        let read = DestinationView {
            state: Health::parse(Some(&state)),
            since_ms: since.parse().unwrap_or(0),
            generation: generation.parse().unwrap_or(0),
            probes_failed: probes_failed.parse().unwrap_or(0),
            next_probe_ms: next_probe.parse().ok(),
        };
        self.apply(destination, read).await;
        inner.tripped_here.store(false, Ordering::Relaxed);
        // `probing` too: a probe holder that died leaves it so until its lease runs out, and the
        // script takes the lease only once it has.
        if read.state == Health::Healthy || read.next_probe_ms.is_some_and(|at| at > now_ms) {
            return Ok(());
        }
        let waiting = self.throttle.state().await.map_or(0, |s| s.slot_waiters);
        if waiting == 0 {
            // Another instance with calls waiting probes; if none has any, a parked order's
            // retry is brought forward to be the probe (once per `probe_max` per instance).
            self.bring_forward_a_retry(destination).await;
            return Ok(());
        }
        let lease_ms = inner.settings.probe_lease.as_millis() as u64;
        let taken: i64 = self
            .script(&TAKE_PROBE_SCRIPT)
            .arg(&self.instance)
            .arg(lease_ms)
            .invoke_async(&mut self.redis)
            .await?;
        if taken == 1 {
            inner.view.send_modify(|view| view.state = Health::Probing);
            tracing::info!("probing the external API with the oldest waiting call");
            self.throttle
                .hand_probe(destination.ticket(), destination.suspects());
        }
        Ok(())
    }

    async fn bring_forward_a_retry(&self, destination: &Destination) {
        if !self.syncs {
            return;
        }
        let Ok(mut last) = destination.inner.brought_forward_at.lock().map(|at| *at) else {
            return;
        };
        let every = destination.inner.settings.probe_max;
        if last.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        last = Some(std::time::Instant::now());
        if let Ok(mut at) = destination.inner.brought_forward_at.lock() {
            *at = last;
        }
        if let Err(error) = crate::db::sync::bring_forward_next_retry(&self.pool).await {
            tracing::warn!(%error, "could not bring a parked order's retry forward to probe the external API");
        }
    }

    /// Applies what Redis says: a change between healthy and not is logged once, closes or opens
    /// the throttle, and on the way back releases the orders the outage parked.
    async fn apply(&mut self, destination: &Destination, read: DestinationView) {
        let before = destination.inner.view.send_replace(read);
        let was_down = before.state != Health::Healthy;
        let is_down = read.state != Health::Healthy;
        if is_down && (!was_down || before.generation != read.generation) {
            tracing::warn!(
                since_ms = read.since_ms,
                "the external API is down: calls wait, and one probe at a time checks it"
            );
        }
        let came_back =
            !is_down && (was_down || destination.inner.tripped_here.load(Ordering::Relaxed));
        if !came_back {
            // Told at every read: a throttle restarted meanwhile starts open.
            self.throttle.set_destination_open(!is_down, Duration::ZERO);
            return;
        }
        let outage_ms = read.since_ms.saturating_sub(before.since_ms).max(0);
        tracing::info!(
            outage_ms,
            "the external API is back: releasing the waiting calls"
        );
        self.throttle
            .set_destination_open(true, destination.inner.settings.ramp);
        if before.since_ms > 0 {
            self.release_parked(before.since_ms).await;
        }
    }

    /// Orders parked for a delayed retry since shortly before the outage began are due now.
    async fn release_parked(&self, down_since_ms: i64) {
        let since = chrono::DateTime::from_timestamp_millis(down_since_ms).unwrap_or_default()
            - chrono::Duration::from_std(PARKED_BEFORE_DOWN).unwrap_or_default();
        match crate::db::sync::release_parked_since(&self.pool, since, self.retry_scale).await {
            Ok(0) => {}
            Ok(released) => {
                tracing::info!(released, "released the orders the outage parked")
            }
            Err(error) => {
                tracing::warn!(%error, "could not release the orders the outage parked; they wait for their own retry")
            }
        }
    }
}

static READ_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(READ));
static TRIP_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(TRIP));
static TAKE_PROBE_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(TAKE_PROBE));
static PROBE_FAILED_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(PROBE_FAILED));
static PROBE_UNUSED_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(PROBE_UNUSED));
static PROBE_ANSWERED_SCRIPT: std::sync::LazyLock<Script> =
    std::sync::LazyLock::new(|| Script::new(PROBE_ANSWERED));

/// The wait before the next probe after `failed` failed ones: 1 s doubling up to `max`, less a
/// random part of up to half, so that jitter never makes a probe later than the schedule.
fn probe_delay(failed: u32, max: Duration) -> Duration {
    let full = FIRST_PROBE.saturating_mul(1u32 << failed.min(20)).min(max);
    let shortened = rand::rng().random_range(0.5..=1.0);
    full.mul_f64(shortened)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_back_off_up_to_the_cap_and_jitter_only_shortens_them() {
        let max = Duration::from_secs(30);
        for failed in 0..40 {
            let delay = probe_delay(failed, max);
            let full = FIRST_PROBE.saturating_mul(1 << failed.min(20)).min(max);
            assert!(delay <= full && delay >= full / 2, "{failed}: {delay:?}");
        }
        assert!(probe_delay(10, Duration::from_secs(3)) <= Duration::from_secs(3));
    }

    #[test]
    fn only_an_unwell_apis_answers_count_against_it() {
        let status = |status| {
            Err(CallError::Status {
                status,
                body: String::new(),
                retry_after: None,
            })
        };
        assert_eq!(health_evidence(&status(503)), Some(false));
        assert_eq!(health_evidence(&status(429)), Some(false));
        assert_eq!(health_evidence(&status(408)), Some(false));
        assert_eq!(health_evidence(&Err(CallError::Timeout)), Some(false));
        assert_eq!(health_evidence(&status(422)), None);
        assert_eq!(health_evidence(&status(404)), None);
        assert_eq!(health_evidence(&status(409)), None);
        assert_eq!(health_evidence(&Err(CallError::Abandoned)), None);
    }
}
