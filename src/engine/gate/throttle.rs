//! The global call budget. An actor because it is one piece of state that every order's actor
//! consults in turn: the mailbox serialises the bookkeeping, and waiters are served strictly in
//! the order they asked (first come, first served), so no order starves.
//!
//! Two stages, so that the rate is measured where it matters, at the moment of the call:
//!
//! 1. [`Throttle::acquire`] waits for one of `MAX_CONCURRENT_CALLS` slots and returns a
//!    [`CallPermit`], which holds the slot until dropped. While the external API is down
//!    (`crate::engine::gate::destination`) no slot is handed out but the probe's, to the
//!    oldest waiter; when it is back, slots open over a ramp. The caller may still look at the
//!    database (its freshest state) before deciding to call, or drop the permit and call nothing.
//! 2. [`CallPermit::take_token`] waits for a token, right before the request is sent. Tokens
//!    come at `RATE_LIMIT_PER_SEC` after a burst of `RATE_LIMIT_BURST`, so no one-second window
//!    sees more than rate + burst calls, however long the caller's database steps took. With
//!    Redis ([`Throttle::start_cluster_wide`]) the tokens are granted by
//!    `crate::engine::gate::rate_limit`, so that bound holds for all instances together;
//!    without it (unit tests) by a local token bucket. A 429 with `Retry-After`
//!    ([`Throttle::pause_for`]) stops handing out tokens, to everyone.

use crate::domain::OrderId;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::engine::gate::destination::ProbeTicket;
use crate::engine::gate::rate_limit::{ClusterRateLimit, Grant};

/// Most tokens asked of Redis in one round trip: every caller waiting at that moment, up to
/// this many (BENCHMARKS.md measures what the batch buys).
const MAX_GRANT: usize = 64;
/// How long to wait before asking Redis again after it failed to answer.
const REDIS_RETRY: Duration = Duration::from_millis(500);

/// Asks for a slot; the permit arrives on `reply` when it is this caller's turn.
#[derive(Message)]
#[rtype(result = "()")]
struct AcquireSlot {
    /// The order the call is for: the probe avoids orders known to fail.
    order_id: OrderId,
    reply: oneshot::Sender<CallPermit>,
}

/// Asks for a token for a call about to be sent (by a slot holder).
#[derive(Message)]
#[rtype(result = "()")]
struct TakeToken {
    reply: oneshot::Sender<()>,
}

/// Stops handing out tokens until `until` (a 429 answer's `Retry-After`).
#[derive(Message)]
#[rtype(result = "()")]
struct PauseCalls {
    until: Instant,
}

/// The external API is down (no slot but the probe's) or up (slots open over `ramp`).
#[derive(Message)]
#[rtype(result = "()")]
struct SetDestinationOpen {
    open: bool,
    ramp: Duration,
}

/// The probe's right to call: handed with the next slot to the oldest waiter whose order is not
/// in `avoid` (orders whose calls failed lately: one order's own failure would keep the API
/// looking down), or to the oldest waiter if every one is.
#[derive(Message)]
#[rtype(result = "()")]
struct HandProbe {
    ticket: ProbeTicket,
    avoid: Vec<OrderId>,
}

/// An operator paused (`true`) or resumed outbound calls (`crate::engine::gate::pause`).
#[derive(Message)]
#[rtype(result = "()")]
struct SetSyncPaused(bool);

/// Sent by a dropped permit: its slot is free.
#[derive(Message)]
#[rtype(result = "()")]
struct ReleaseSlot;

/// A snapshot of the throttle, for metrics.
#[derive(Message)]
#[rtype(result = "ThrottleState")]
struct GetThrottleState;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ThrottleState {
    pub rate_per_sec: u32,
    pub burst: u32,
    pub max_concurrent: u32,
    pub tokens: f64,
    /// Callers waiting for a slot or a token.
    pub waiters: usize,
    /// Callers waiting for a slot: calls that would go out now if the API were up.
    pub slot_waiters: usize,
    /// Slots held: calls in flight or about to be.
    pub in_flight: u32,
    /// Milliseconds until issuing resumes, when paused.
    pub paused_for_ms: Option<u64>,
    /// An operator paused outbound calls: no slot is handed out until they resume.
    pub sync_paused: bool,
    /// The external API is up as far as this instance knows: slots are handed out.
    pub destination_open: bool,
}

/// One of the `MAX_CONCURRENT_CALLS` slots; dropping it frees the slot.
pub struct CallPermit {
    throttle: Addr<ThrottleActor>,
    /// Set on the one slot handed out while the external API is down: this call is the probe.
    probe: Option<ProbeTicket>,
}

impl CallPermit {
    /// The probe's ticket, when this slot is the probe's: the caller reports the call's result
    /// with it instead of counting it as an ordinary call.
    pub fn take_probe(&mut self) -> Option<ProbeTicket> {
        self.probe.take()
    }

    /// Waits for a token; call right before sending the request. `false` when the throttle has
    /// stopped (shutdown).
    pub async fn take_token(&self) -> bool {
        let (reply, granted) = oneshot::channel();
        self.throttle.do_send(TakeToken { reply });
        granted.await.is_ok()
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.throttle.do_send(ReleaseSlot);
    }
}

/// Handle to the throttle for callers.
#[derive(Clone)]
pub struct Throttle {
    addr: Addr<ThrottleActor>,
}

impl Throttle {
    /// A throttle whose rate is this process's alone (a local token bucket).
    pub fn start(rate_per_sec: u32, burst: u32, max_concurrent: u32) -> Self {
        Self::start_with(rate_per_sec, burst, max_concurrent, None)
    }

    /// A throttle whose rate is shared by every instance of the deployment, through Redis.
    pub fn start_cluster_wide(max_concurrent: u32, limit: ClusterRateLimit) -> Self {
        let (rate_per_sec, burst) = limit.limits();
        Self::start_with(rate_per_sec, burst, max_concurrent, Some(limit))
    }

    fn start_with(
        rate_per_sec: u32,
        burst: u32,
        max_concurrent: u32,
        cluster: Option<ClusterRateLimit>,
    ) -> Self {
        let burst = f64::from(burst.max(1));
        let addr = ThrottleActor {
            cluster,
            asking: false,
            ask_not_before: None,
            redis_failing: false,
            rate_per_sec: f64::from(rate_per_sec),
            burst,
            max_concurrent,
            tokens: burst,
            refilled_at: Instant::now(),
            in_flight: 0,
            slot_waiters: VecDeque::new(),
            token_waiters: VecDeque::new(),
            paused_until: None,
            sync_paused: false,
            destination_open: true,
            ramp: None,
            probe: None,
            ramp_timer: None,
            wake_up: None,
        }
        .start();
        Self { addr }
    }

    /// Waits for a slot for a call for `order_id`. `None` when the throttle has stopped
    /// (shutdown).
    pub async fn acquire(&self, order_id: OrderId) -> Option<CallPermit> {
        let (reply, permit) = oneshot::channel();
        self.addr.do_send(AcquireSlot { order_id, reply });
        permit.await.ok()
    }

    /// While paused no slot is handed out, so no call starts (calls that already hold one
    /// finish); callers wait in order, and are served when calls resume.
    pub fn set_sync_paused(&self, paused: bool) {
        self.addr.do_send(SetSyncPaused(paused));
    }

    /// Closed, no slot is handed out but a probe's ([`Throttle::hand_probe`]); opened, slots
    /// go out over `ramp`: a tenth of `MAX_CONCURRENT_CALLS` at first, all of them at its end.
    pub fn set_destination_open(&self, open: bool, ramp: Duration) {
        self.addr.do_send(SetDestinationOpen { open, ramp });
    }

    /// Lets the oldest waiting caller through as the probe, preferring orders not in `avoid`
    /// (dropped unused if no one waits).
    pub fn hand_probe(&self, ticket: ProbeTicket, avoid: Vec<OrderId>) {
        self.addr.do_send(HandProbe { ticket, avoid });
    }

    pub fn pause_for(&self, delay: Duration) {
        self.addr.do_send(PauseCalls {
            until: Instant::now() + delay.min(Duration::from_secs(86_400)), // saturates, never overflows
        });
    }

    pub async fn state(&self) -> Option<ThrottleState> {
        self.addr.send(GetThrottleState).await.ok()
    }
}

/// Callers reach it with `do_send` only, which no mailbox bound refuses: every caller depends
/// on this actor, and the number of callers is bounded by the dispatcher's in-flight limit.
pub struct ThrottleActor {
    /// Where tokens come from when the rate is cluster-wide; `None`: the local bucket.
    cluster: Option<ClusterRateLimit>,
    /// A request for tokens is on its way to Redis.
    asking: bool,
    /// Redis said no token is due before then.
    ask_not_before: Option<Instant>,
    /// Redis failed the last request (logged once per outage).
    redis_failing: bool,
    rate_per_sec: f64,
    burst: f64,
    max_concurrent: u32,
    tokens: f64,
    refilled_at: Instant,
    in_flight: u32,
    slot_waiters: VecDeque<(OrderId, oneshot::Sender<CallPermit>)>,
    token_waiters: VecDeque<oneshot::Sender<()>>,
    paused_until: Option<Instant>,
    /// An operator paused outbound calls: slots wait.
    sync_paused: bool,
    /// The external API is up as far as this instance knows.
    destination_open: bool,
    /// Since when, and over how long, slots open after the API came back.
    ramp: Option<(Instant, Duration)>,
    /// The probe's ticket, waiting for the next slot waiter, and the orders it avoids.
    probe: Option<(ProbeTicket, Vec<OrderId>)>,
    /// Serves the slot waiters again while slots open over a ramp.
    ramp_timer: Option<SpawnHandle>,
    /// The timer that serves token waiters once a token or the end of a pause is due.
    wake_up: Option<SpawnHandle>,
}

impl Actor for ThrottleActor {
    type Context = Context<Self>;
}

impl ThrottleActor {
    fn refill(&mut self, now: Instant) {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate_per_sec).min(self.burst);
        self.refilled_at = now;
    }

    /// Hands out free slots, then tokens, each in arrival order; then, if someone still waits for
    /// a token, sets a timer for when the next one (or the end of a pause) is due.
    fn serve(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self.sync_paused {
            self.probe = None; // paused: no call at all, not even a probe
        } else if !self.destination_open {
            self.hand_out_probe(ctx);
        } else {
            let limit = self.slots_open(now);
            while self.in_flight < limit {
                let Some((_, waiter)) = self.slot_waiters.pop_front() else {
                    break;
                };
                if waiter.is_closed() {
                    continue; // the caller gave up (its actor stopped)
                }
                self.in_flight += 1;
                // If the caller went away just now, the permit's drop gives the slot back.
                let _ = waiter.send(CallPermit {
                    throttle: ctx.address(),
                    probe: None,
                });
            }
            if limit < self.max_concurrent
                && !self.slot_waiters.is_empty()
                && self.ramp_timer.is_none()
            {
                self.ramp_timer = Some(ctx.run_later(RAMP_STEP, |act, ctx| {
                    act.ramp_timer = None;
                    act.serve(ctx);
                }));
            }
        }

        self.refill(now);
        if let Some(handle) = self.wake_up.take() {
            ctx.cancel_future(handle);
        }
        if let Some(until) = self.paused_until {
            if until > now {
                self.wake_up = Some(ctx.run_later(until - now, |act, ctx| act.serve(ctx)));
                return;
            }
            self.paused_until = None;
        }
        if let Some(cluster) = self.cluster.clone() {
            self.ask_cluster(cluster, now, ctx);
            return;
        }
        while self.tokens >= 1.0 {
            let Some(waiter) = self.token_waiters.pop_front() else {
                break;
            };
            if waiter.send(()).is_ok() {
                self.tokens -= 1.0;
            }
        }
        if !self.token_waiters.is_empty() {
            let wait = Duration::from_secs_f64(
                (1.0 - self.tokens) / self.rate_per_sec.max(f64::MIN_POSITIVE),
            );
            self.wake_up = Some(
                ctx.run_later(wait.max(Duration::from_micros(200)), |act, ctx| {
                    act.serve(ctx)
                }),
            );
        }
    }
}

/// How often slots are handed out again while they open over a ramp.
const RAMP_STEP: Duration = Duration::from_millis(50);

impl ThrottleActor {
    /// Slots that may be out now: all of them, or during a ramp a share growing from a tenth.
    fn slots_open(&mut self, now: Instant) -> u32 {
        let Some((since, ramp)) = self.ramp else {
            return self.max_concurrent;
        };
        let done = now.saturating_duration_since(since).as_secs_f64() / ramp.as_secs_f64();
        if done >= 1.0 || ramp.is_zero() {
            self.ramp = None;
            return self.max_concurrent;
        }
        let share = 0.1 + 0.9 * done;
        ((f64::from(self.max_concurrent) * share).ceil() as u32).clamp(1, self.max_concurrent)
    }

    /// While the API is down: the probe's ticket goes with a slot to the oldest live waiter.
    fn hand_out_probe(&mut self, ctx: &mut Context<Self>) {
        let Some((ticket, avoid)) = self.probe.take() else {
            return;
        };
        self.slot_waiters.retain(|(_, waiter)| !waiter.is_closed());
        let chosen = self
            .slot_waiters
            .iter()
            .position(|(order_id, _)| !avoid.contains(order_id))
            .or((!self.slot_waiters.is_empty()).then_some(0));
        // No one waits here: the ticket is dropped, which gives the lease back.
        let Some((_, waiter)) = chosen.and_then(|at| self.slot_waiters.remove(at)) else {
            return;
        };
        self.in_flight += 1;
        // If the caller went away just now, the permit's drop frees the slot and the lease.
        let _ = waiter.send(CallPermit {
            throttle: ctx.address(),
            probe: Some(ticket),
        });
    }

    /// Asks Redis for as many tokens as callers wait for (up to `MAX_GRANT`), one request at a
    /// time, and hands each granted token to the next waiter at once.
    fn ask_cluster(&mut self, cluster: ClusterRateLimit, now: Instant, ctx: &mut Context<Self>) {
        self.token_waiters.retain(|waiter| !waiter.is_closed());
        if self.token_waiters.is_empty() || self.asking {
            return;
        }
        if let Some(at) = self.ask_not_before.filter(|at| *at > now) {
            self.wake_up = Some(ctx.run_later(at - now, |act, ctx| act.serve(ctx)));
            return;
        }
        self.asking = true;
        let want = self.token_waiters.len().min(MAX_GRANT) as u32;
        let ask = async move { cluster.take(want).await };
        ctx.spawn(ask.into_actor(self).map(|grant, act, ctx| {
            act.asking = false;
            match grant {
                Ok(Grant::Calls(granted)) => {
                    act.redis_failing = false;
                    let mut granted = granted;
                    while granted > 0 {
                        let Some(waiter) = act.token_waiters.pop_front() else {
                            break; // the rest is not used: never kept for later
                        };
                        if waiter.send(()).is_ok() {
                            granted -= 1;
                        }
                    }
                }
                Ok(Grant::WaitFor(wait)) => {
                    act.redis_failing = false;
                    act.ask_not_before = Some(Instant::now() + wait);
                }
                Err(error) => {
                    if !act.redis_failing {
                        tracing::warn!(error = %error, "cannot take rate-limit tokens from Redis; calls wait");
                    }
                    act.redis_failing = true;
                    act.ask_not_before = Some(Instant::now() + REDIS_RETRY);
                }
            }
            act.serve(ctx);
        }));
    }
}

impl Handler<AcquireSlot> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: AcquireSlot, ctx: &mut Context<Self>) {
        self.slot_waiters.push_back((msg.order_id, msg.reply));
        self.serve(ctx);
    }
}

impl Handler<TakeToken> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: TakeToken, ctx: &mut Context<Self>) {
        self.token_waiters.push_back(msg.reply);
        self.serve(ctx);
    }
}

impl Handler<SetSyncPaused> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: SetSyncPaused, ctx: &mut Context<Self>) {
        self.sync_paused = msg.0;
        self.serve(ctx);
    }
}

impl Handler<SetDestinationOpen> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: SetDestinationOpen, ctx: &mut Context<Self>) {
        if msg.open && !self.destination_open {
            self.ramp = Some((Instant::now(), msg.ramp));
        }
        if !msg.open {
            self.ramp = None;
        }
        self.destination_open = msg.open;
        self.serve(ctx);
    }
}

impl Handler<HandProbe> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: HandProbe, ctx: &mut Context<Self>) {
        self.probe = Some((msg.ticket, msg.avoid));
        self.serve(ctx);
    }
}

impl Handler<ReleaseSlot> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, _: ReleaseSlot, ctx: &mut Context<Self>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.serve(ctx);
    }
}

impl Handler<PauseCalls> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: PauseCalls, ctx: &mut Context<Self>) {
        if self.paused_until.is_none_or(|until| until < msg.until) {
            let pause_ms = msg
                .until
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            tracing::warn!(
                pause_ms,
                "external API asked to slow down; pausing every call"
            );
            self.paused_until = Some(msg.until);
            if let Some(cluster) = self.cluster.clone() {
                // Every instance pauses: the 429 was for the deployment's calls, not this one's.
                let delay = msg.until.saturating_duration_since(Instant::now());
                ctx.spawn(
                    async move {
                        if let Err(error) = cluster.pause(delay).await {
                            tracing::warn!(error = %error, "could not pause the other instances' calls");
                        }
                    }
                    .into_actor(self),
                );
            }
        }
        self.serve(ctx);
    }
}

impl Handler<GetThrottleState> for ThrottleActor {
    type Result = MessageResult<GetThrottleState>;

    fn handle(&mut self, _: GetThrottleState, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        self.refill(now);
        MessageResult(ThrottleState {
            rate_per_sec: self.rate_per_sec as u32,
            burst: self.burst as u32,
            max_concurrent: self.max_concurrent,
            // With a cluster-wide rate the bucket is in Redis, shared: nothing is kept here.
            tokens: if self.cluster.is_some() {
                0.0
            } else {
                self.tokens
            },
            waiters: self.slot_waiters.len() + self.token_waiters.len(),
            slot_waiters: self.slot_waiters.len(),
            in_flight: self.in_flight,
            paused_for_ms: self
                .paused_until
                .filter(|until| *until > now)
                .map(|until| (until - now).as_millis() as u64),
            sync_paused: self.sync_paused,
            destination_open: self.destination_open,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn tokens_beyond_the_burst_wait_for_the_rate() {
        let throttle = Throttle::start(50, 5, 100);
        let permit = throttle.acquire(OrderId::new(1)).await.expect("a slot");
        let started = Instant::now();
        for _ in 0..15 {
            assert!(permit.take_token().await);
        }
        // 5 from the burst, 10 more at 50/s: at least 200 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
    }

    #[actix_rt::test]
    async fn no_slot_is_handed_out_while_calls_are_paused() {
        let throttle = Throttle::start(10_000, 100, 10);
        throttle.set_sync_paused(true);
        let waiting = throttle.acquire(OrderId::new(1));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut waiting)
                .await
                .is_err()
        );
        throttle.set_sync_paused(false);
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .is_ok_and(|permit| permit.is_some()));
    }

    #[actix_rt::test]
    async fn no_more_than_max_concurrent_slots_are_out_at_once() {
        let throttle = Throttle::start(10_000, 100, 2);
        let first = throttle.acquire(OrderId::new(1)).await.expect("permit");
        let _second = throttle.acquire(OrderId::new(2)).await.expect("permit");
        let third = throttle.acquire(OrderId::new(3));
        tokio::pin!(third);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut third)
            .await
            .is_err());
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .is_ok());
    }
}
