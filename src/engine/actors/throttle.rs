//! The global call budget. An actor because it is one piece of state that every order's actor
//! consults in turn: the mailbox serialises the bookkeeping, and waiters are served strictly in
//! the order they asked (first come, first served), so no order starves.
//!
//! Two stages, so that the rate is measured where it matters, at the moment of the call:
//!
//! 1. [`Throttle::acquire`] waits for one of `MAX_CONCURRENT_CALLS` slots and returns a
//!    [`CallPermit`], which holds the slot until dropped. The caller may still look at the
//!    database (its freshest state) before deciding to call, or drop the permit and call nothing.
//! 2. [`CallPermit::take_token`] waits for a token, right before the request is sent. Tokens
//!    refill at `RATE_LIMIT_PER_SEC` up to `RATE_LIMIT_BURST`, so no one-second window sees more
//!    than rate + burst calls, however long the caller's database steps took. A 429 with
//!    `Retry-After` ([`Throttle::pause_for`]) stops handing out tokens, to everyone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

/// Asks for a slot; the permit arrives on `reply` when it is this caller's turn.
#[derive(Message)]
#[rtype(result = "()")]
struct AcquireSlot {
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
    /// Slots held: calls in flight or about to be.
    pub in_flight: u32,
    /// Milliseconds until issuing resumes, when paused.
    pub paused_for_ms: Option<u64>,
}

/// One of the `MAX_CONCURRENT_CALLS` slots; dropping it frees the slot.
pub struct CallPermit {
    throttle: Addr<ThrottleActor>,
}

impl CallPermit {
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
    pub fn start(rate_per_sec: u32, burst: u32, max_concurrent: u32) -> Self {
        let burst = f64::from(burst.max(1));
        let addr = ThrottleActor {
            rate_per_sec: f64::from(rate_per_sec),
            burst,
            max_concurrent,
            tokens: burst,
            refilled_at: Instant::now(),
            in_flight: 0,
            slot_waiters: VecDeque::new(),
            token_waiters: VecDeque::new(),
            paused_until: None,
            wake_up: None,
        }
        .start();
        Self { addr }
    }

    /// Waits for a slot. `None` when the throttle has stopped (shutdown).
    pub async fn acquire(&self) -> Option<CallPermit> {
        let (reply, permit) = oneshot::channel();
        self.addr.do_send(AcquireSlot { reply });
        permit.await.ok()
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
    rate_per_sec: f64,
    burst: f64,
    max_concurrent: u32,
    tokens: f64,
    refilled_at: Instant,
    in_flight: u32,
    slot_waiters: VecDeque<oneshot::Sender<CallPermit>>,
    token_waiters: VecDeque<oneshot::Sender<()>>,
    paused_until: Option<Instant>,
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
        while self.in_flight < self.max_concurrent {
            let Some(waiter) = self.slot_waiters.pop_front() else {
                break;
            };
            if waiter.is_closed() {
                continue; // the caller gave up (its actor stopped)
            }
            self.in_flight += 1;
            // If the caller went away just now, the permit's drop gives the slot back.
            let _ = waiter.send(CallPermit {
                throttle: ctx.address(),
            });
        }

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

impl Handler<AcquireSlot> for ThrottleActor {
    type Result = ();

    fn handle(&mut self, msg: AcquireSlot, ctx: &mut Context<Self>) {
        self.slot_waiters.push_back(msg.reply);
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
            waiters: self.slot_waiters.len() + self.token_waiters.len(),
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
    async fn tokens_beyond_the_burst_wait_for_the_rate() {
        let throttle = Throttle::start(50, 5, 100);
        let permit = throttle.acquire().await.expect("a slot");
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
    async fn no_more_than_max_concurrent_slots_are_out_at_once() {
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
