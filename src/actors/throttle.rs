//! The global call budget. An actor because it is one piece of state that every order's actor
//! consults in turn: the mailbox serialises the bookkeeping, and waiters are served strictly in
//! the order they asked (first come, first served), so no order starves.
//!
//! A caller sends [`AcquireToken`] and awaits the [`CallPermit`] that comes back; the permit
//! holds one of `MAX_CONCURRENT_CALLS` slots until dropped. Tokens refill at
//! `RATE_LIMIT_PER_SEC` up to `RATE_LIMIT_BURST`, so no one-second window sees more than
//! rate + burst calls. [`PauseCalls`] (after a 429 with `Retry-After`) stops issuing for everyone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

/// Asks for the right to make one call; the permit arrives on `reply` when it is this caller's turn.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AcquireToken {
    pub reply: oneshot::Sender<CallPermit>,
}

/// A call was not made after all: its token goes back to the bucket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RefundToken;

/// Stops handing out permits until `until` (a 429 answer's `Retry-After`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PauseCalls {
    pub until: Instant,
}

/// Sent by a dropped permit: its call is over.
#[derive(Message)]
#[rtype(result = "()")]
struct ReleaseCall;

/// A snapshot of the throttle, for metrics.
#[derive(Message)]
#[rtype(result = "ThrottleState")]
pub struct GetThrottleState;

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ThrottleState {
    pub rate_per_sec: u32,
    pub burst: u32,
    pub max_concurrent: u32,
    pub tokens: f64,
    pub waiters: usize,
    pub in_flight: u32,
    /// Milliseconds until issuing resumes, when paused.
    pub paused_for_ms: Option<u64>,
}

/// The right to make one call now; dropping it frees the concurrency slot.
pub struct CallPermit {
    throttle: Addr<ThrottleActor>,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.throttle.do_send(ReleaseCall);
    }
}

/// Handle to the throttle for callers.
#[derive(Clone)]
pub struct Throttle {
    addr: Addr<ThrottleActor>,
}

impl Throttle {
    pub fn start(rate_per_sec: u32, burst: u32, max_concurrent: u32) -> Self {
        let addr = ThrottleActor {
            rate_per_sec: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            max_concurrent,
            tokens: f64::from(burst.max(1)),
            refilled_at: Instant::now(),
            in_flight: 0,
            waiters: VecDeque::new(),
            paused_until: None,
            wake_up: None,
        }
        .start();
        Self { addr }
    }

    /// Waits for this caller's turn. `None` when the throttle has stopped (shutdown).
    pub async fn acquire(&self) -> Option<CallPermit> {
        let (reply, permit) = oneshot::channel();
        self.addr.do_send(AcquireToken { reply });
        permit.await.ok()
    }

    pub fn refund(&self) {
        self.addr.do_send(RefundToken);
    }

    pub fn pause_for(&self, delay: Duration) {
        self.addr.do_send(PauseCalls {
            until: Instant::now() + delay,
        });
    }

    pub async fn state(&self) -> Option<ThrottleState> {
        self.addr.send(GetThrottleState).await.ok()
    }
}

pub struct ThrottleActor {
    rate_per_sec: f64,
    burst: f64,
    max_concurrent: u32,
    tokens: f64,
    refilled_at: Instant,
    in_flight: u32,
    waiters: VecDeque<oneshot::Sender<CallPermit>>,
    paused_until: Option<Instant>,
    /// The timer that serves waiters once a token or the end of a pause is due.
    wake_up: Option<SpawnHandle>,
}

/// Callers reach it with `do_send` only, which no mailbox bound refuses: every caller depends
/// on this actor, and the number of callers is bounded by the dispatcher's in-flight limit.
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

    /// Hands out permits to waiters, in order, while tokens, slots and no pause allow; then, if
    /// someone still waits for a token or a pause, sets a timer for when that will change.
    fn serve(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
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
        while self.in_flight < self.max_concurrent && self.tokens >= 1.0 {
            let Some(waiter) = self.waiters.pop_front() else {
                return;
            };
            if waiter.is_closed() {
                continue; // the caller gave up (its actor stopped)
            }
            self.tokens -= 1.0;
            self.in_flight += 1;
            // If the caller went away just now, the permit's drop gives the slot back.
            let _ = waiter.send(CallPermit {
                throttle: ctx.address(),
            });
        }
        if !self.waiters.is_empty() && self.tokens < 1.0 && self.in_flight < self.max_concurrent {
            let wait = Duration::from_secs_f64(
                (1.0 - self.tokens) / self.rate_per_sec.max(f64::MIN_POSITIVE),
            );
            self.wake_up = Some(
                ctx.run_later(wait.max(Duration::from_micros(200)), |act, ctx| {
                    act.serve(ctx)
                }),
            );
        }
        // Waiting for a slot needs no timer: the next ReleaseCall serves.
    }
}

impl Handler<AcquireToken> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: AcquireToken, ctx: &mut Context<Self>) {
        self.waiters.push_back(msg.reply);
        self.serve(ctx);
    }
}

impl Handler<ReleaseCall> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, _: ReleaseCall, ctx: &mut Context<Self>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.serve(ctx);
    }
}

impl Handler<RefundToken> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, _: RefundToken, ctx: &mut Context<Self>) {
        self.tokens = (self.tokens + 1.0).min(self.burst);
        self.serve(ctx);
    }
}

impl Handler<PauseCalls> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: PauseCalls, ctx: &mut Context<Self>) {
        if self.paused_until.is_none_or(|until| until < msg.until) {
            tracing::warn!(
                pause_ms = msg
                    .until
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
                "external API asked to slow down; pausing every call"
            );
            self.paused_until = Some(msg.until);
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
            tokens: self.tokens,
            waiters: self.waiters.len(),
            in_flight: self.in_flight,
            paused_for_ms: self
                .paused_until
                .filter(|until| *until > now)
                .map(|until| (until - now).as_millis() as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn permits_beyond_the_burst_wait_for_the_rate() {
        let throttle = Throttle::start(50, 5, 100);
        let started = Instant::now();
        let mut permits = Vec::new();
        for _ in 0..15 {
            permits.push(throttle.acquire().await.expect("permit"));
        }
        // 5 from the burst, 10 more at 50/s: at least 200 ms.
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
    }

    #[actix_rt::test]
    async fn no_more_than_max_concurrent_permits_are_out_at_once() {
        let throttle = Throttle::start(10_000, 100, 2);
        let first = throttle.acquire().await.expect("permit");
        let _second = throttle.acquire().await.expect("permit");
        let third = throttle.acquire();
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
