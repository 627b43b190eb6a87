//! `OrderSyncActor`: one per order id. An actor because it gives each order a mailbox of its
//! own: the order's events queue there and are handled one at a time (`AtomicResponse` holds
//! the mailbox until an event is fully handled), so the external API never sees two calls for
//! one order at once, while other orders' actors run concurrently.
//!
//! Handling an event means: read the order's current row, decide the one call that brings the
//! external API to that state (or none), take a token from the throttle, make the call with quick
//! retries, and record the outcome in PostgreSQL. Only then is the event reported done, and only
//! then does the dispatcher acknowledge it in Redis.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use rand::Rng;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio_retry::strategy::{jitter, ExponentialBackoff};
use tokio_retry::RetryIf;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::supervisor::{OrderActorIdle, SupervisorActor};
use super::throttle::{CallPermit, Throttle};
use crate::backlog::{EventKind, SyncEvent};
use crate::db;
use crate::db::sync::{self as queries, FailedCallNext, FailureRecorded, SyncRow};
use crate::domain::SyncState;
use crate::external::payload::ExternalOrder;
use crate::external::{clean_error_text, CallError, ExternalCall, ExternalClient};
use crate::metrics::SyncMetrics;

/// A wait for a slot longer than this makes the actor read the order again before calling.
const RELOAD_AFTER: Duration = Duration::from_millis(20);

/// The longest error text stored in `sync.last_error`.
const MAX_ERROR_CHARS: usize = 500;

/// The longest wait for a delayed retry (Sidekiq's 25th retry comes after about 20 days).
pub const MAX_DELAYED_RETRY: Duration = Duration::from_secs(30 * 24 * 3600);

/// How failed calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call in process (the first included), with exponential backoff and jitter.
    pub quick_attempts: u32,
    /// Delayed retries (Sidekiq's schedule) before the order is `dead`.
    pub delayed_limit: u32,
    /// Multiplies the delayed schedule; 1.0 is Sidekiq's own (`count^4 + 15 + jitter` seconds).
    pub delayed_scale: f64,
}

impl RetryPolicy {
    /// The delay before delayed retry number `attempt` (1-based): Sidekiq's
    /// `count**4 + 15 + rand(10 * (count + 1))` seconds with `count = attempt - 1`.
    /// Capped at [`MAX_DELAYED_RETRY`], so no scale or count can overflow a date.
    pub fn delay(&self, attempt: u32) -> Duration {
        let count = f64::from(attempt.saturating_sub(1));
        let jitter = rand::thread_rng().gen_range(0.0..10.0 * (count + 1.0));
        let secs = (count.powi(4) + 15.0 + jitter) * self.delayed_scale;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_DELAYED_RETRY)
            .min(MAX_DELAYED_RETRY)
    }
}

/// What every order actor shares. Not `Send` (awc), so it lives on one arbiter.
pub struct SyncDeps {
    /// Reads, and the create mark, which must be durable before the `POST` goes out.
    pub pool: PgPool,
    /// Outcomes, committed without waiting for the disk (`crate::db::bookkeeping_pool`).
    pub bookkeeping: PgPool,
    pub client: ExternalClient,
    pub throttle: Throttle,
    pub retry: RetryPolicy,
    pub metrics: Arc<SyncMetrics>,
    /// Cancelled on SIGTERM: no new call starts; calls in flight finish.
    pub shutdown: CancellationToken,
}

/// One event to handle; `done` carries the outcome once it is recorded in PostgreSQL.
#[derive(Message)]
#[rtype(result = "()")]
pub struct HandleEvent {
    pub event: SyncEvent,
    pub done: oneshot::Sender<Outcome>,
}

/// Tells an idle actor to stop; the supervisor has already forgotten it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIdle;

/// How an event ended. Every outcome is recorded in PostgreSQL before it is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A call succeeded and the order's `synced_version` was recorded.
    Synced,
    /// Nothing to do: already synced (coalesced), gone, parked or dead.
    Skipped,
    /// A tombstone that was never created remotely was removed without a call.
    Purged,
    /// Quick retries were used up; the order waits for its delayed retry.
    Parked,
    /// The call cannot succeed (or every retry failed): the order is `dead`.
    Dead,
    /// The service is shutting down: nothing was recorded, and the event must stay
    /// unacknowledged so that the next start handles it.
    Abandoned,
    /// PostgreSQL stayed unreachable for longer than the engine retries a step: nothing more
    /// was recorded, and the event stays unacknowledged; the dispatcher frees its slot and
    /// reclaims it later (no event holds a slot for as long as an outage lasts).
    Deferred,
}

impl Outcome {
    /// Whether the stream entry must stay unacknowledged (handled again later).
    pub fn leaves_entry_pending(self) -> bool {
        matches!(self, Self::Abandoned | Self::Deferred)
    }
}

pub struct OrderSyncActor {
    order_id: i64,
    /// Tells this actor apart from a later one for the same order.
    child_id: u64,
    deps: Rc<SyncDeps>,
    supervisor: Addr<SupervisorActor>,
    idle_after: Duration,
    /// Events handled so far; the supervisor compares it with the events it sent.
    handled: u64,
    /// Events forwarded to this actor and not yet handled (shared with the supervisor, which
    /// adds to it; same arbiter, so a `Cell`).
    mailbox_depth: Rc<Cell<u64>>,
    idle_timer: Option<SpawnHandle>,
}

impl OrderSyncActor {
    pub fn new(
        order_id: i64,
        child_id: u64,
        deps: Rc<SyncDeps>,
        supervisor: Addr<SupervisorActor>,
        idle_after: Duration,
        mailbox_depth: Rc<Cell<u64>>,
    ) -> Self {
        Self {
            order_id,
            child_id,
            deps,
            supervisor,
            idle_after,
            handled: 0,
            mailbox_depth,
            idle_timer: None,
        }
    }

    /// (Re)starts the idle countdown; when it runs out, the actor offers to stop.
    fn arm_idle_timer(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.idle_timer.take() {
            ctx.cancel_future(handle);
        }
        self.idle_timer = Some(ctx.run_later(self.idle_after, |act, _| {
            act.supervisor.do_send(OrderActorIdle {
                order_id: act.order_id,
                child_id: act.child_id,
                handled: act.handled,
            });
        }));
    }
}

impl Actor for OrderSyncActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.arm_idle_timer(ctx);
    }
}

impl Handler<HandleEvent> for OrderSyncActor {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, msg: HandleEvent, ctx: &mut Context<Self>) -> Self::Result {
        // Not idle while working; re-armed when this event is done.
        if let Some(handle) = self.idle_timer.take() {
            ctx.cancel_future(handle);
        }
        let deps = self.deps.clone();
        let HandleEvent { event, done } = msg;
        // Every line logged while handling the event (database retries included) carries it.
        let span = tracing::info_span!(
            "sync_event",
            order_id = event.order_id,
            version = event.version,
            kind = event.kind.as_str()
        );
        AtomicResponse::new(Box::pin(
            async move { sync_order(&deps, event).await }
                .instrument(span)
                .into_actor(self)
                .map(move |outcome, act, ctx| {
                    act.handled += 1;
                    act.mailbox_depth
                        .set(act.mailbox_depth.get().saturating_sub(1));
                    act.deps.metrics.mailbox_depth.dec();
                    let _ = done.send(outcome);
                    act.arm_idle_timer(ctx);
                }),
        ))
    }
}

impl Handler<StopIdle> for OrderSyncActor {
    type Result = ();

    fn handle(&mut self, _: StopIdle, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// What to do for an order, decided from its current row alone.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    Skip(&'static str),
    /// A tombstone never created remotely: remove it, call nothing.
    PurgeWithoutCall,
    Call(Verb),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Create,
    Update,
    Delete,
}

fn decide(row: Option<&SyncRow>, kind: EventKind) -> Decision {
    let Some(row) = row else {
        return Decision::Skip("gone");
    };
    match (row.sync_state, kind) {
        // Nothing is owed: every change sets `pending`, and only a recorded success (or an
        // operator's discard) sets `synced`.
        (SyncState::Synced, _) => return Decision::Skip("already synced"),
        // A parked order's changes wait for its delayed retry, which syncs the latest state.
        (SyncState::Retrying, EventKind::Change) => return Decision::Skip("parked"),
        // A duplicate of a delayed retry whose attempt was already made: the order waits for
        // its next one, on schedule.
        (
            SyncState::Retrying,
            EventKind::Retry {
                attempt: Some(attempt),
            },
        ) if attempt != row.sync_attempts => return Decision::Skip("retry already made"),
        // A change or an operator's retry revives a dead order in the same transaction as it
        // writes its event, so an event that finds it dead is stale.
        (SyncState::Dead, _) => return Decision::Skip("dead"),
        _ => {}
    }
    if row.version <= row.synced_version {
        return Decision::Skip("already synced");
    }
    if row.deleted {
        // Never created remotely, and no create was ever sent: nothing to delete.
        if row.synced_version == 0 && !row.create_sent {
            return Decision::PurgeWithoutCall;
        }
        return Decision::Call(Verb::Delete);
    }
    if row.synced_version == 0 {
        Decision::Call(Verb::Create)
    } else {
        Decision::Call(Verb::Update)
    }
}

fn build_call(row: &SyncRow, verb: Verb) -> ExternalCall {
    match verb {
        Verb::Create => ExternalCall::Create(ExternalOrder::from(&row.snapshot())),
        Verb::Update => ExternalCall::Update(ExternalOrder::from(&row.snapshot())),
        Verb::Delete => ExternalCall::Delete {
            id: row.id,
            version: row.version,
        },
    }
}

/// Brings the external API to the order's current state and records the outcome. A database
/// step that cannot be completed ends the event here, one way or the other: never by holding
/// it (and its in-flight slot) for as long as the database misbehaves.
async fn sync_order(deps: &SyncDeps, event: SyncEvent) -> Outcome {
    let id = event.order_id;
    match sync_to_current_state(deps, &event).await {
        Ok(outcome) => outcome,
        Err(DbStepFailed::Unavailable { step }) => {
            tracing::warn!(
                order_id = id,
                step,
                "PostgreSQL stayed unreachable: the event is left for later"
            );
            Outcome::Deferred
        }
        Err(DbStepFailed::Rejected { step, code }) => {
            // Retrying a statement PostgreSQL rejects cannot help. Record that in a form that
            // cannot itself be rejected (plain ASCII, no outside text), and move on.
            let message = format!(
                "the sync engine could not {step}: PostgreSQL rejected it (SQLSTATE {})",
                code.as_deref().unwrap_or("none")
            );
            tracing::error!(order_id = id, step, error = %message, "order is dead");
            if let Err(error) =
                queries::mark_dead_unrecordable(&deps.bookkeeping, id, &message).await
            {
                tracing::error!(order_id = id, error = %error, "could not mark the order dead either");
            }
            deps.metrics.dead.inc();
            deps.metrics.failed.inc();
            Outcome::Dead
        }
    }
}

async fn sync_to_current_state(
    deps: &SyncDeps,
    event: &SyncEvent,
) -> Result<Outcome, DbStepFailed> {
    let pool = &deps.pool;
    let id = event.order_id;
    let mut kind = event.kind;
    loop {
        if deps.shutdown.is_cancelled() {
            return Ok(Outcome::Abandoned);
        }
        let row = db_step("load the order", id, || {
            queries::load_marking_create(pool, id)
        })
        .await?;
        let verb = match decide(row.as_ref(), kind) {
            Decision::Skip(reason) => {
                tracing::debug!(
                    order_id = id,
                    event_version = event.version,
                    reason,
                    "skipped"
                );
                deps.metrics.skipped.inc();
                return Ok(Outcome::Skipped);
            }
            Decision::PurgeWithoutCall => return purge_without_call(deps, id).await,
            Decision::Call(verb) => verb,
        };
        let Some(mut row) = row else { continue };
        // Written before taking a slot, so the slot is held for the call (and the reload) alone.
        let mut marked_here = row.marked_now;
        if verb == Verb::Create && !row.create_sent {
            marked_here = true;
            db_step("mark the create as sent", id, || {
                queries::mark_create_sent(pool, id)
            })
            .await?;
            row.create_sent = true;
        }
        let asked = Instant::now();
        let permit = tokio::select! {
            permit = deps.throttle.acquire() => permit,
            _ = deps.shutdown.cancelled() => None,
        };
        let Some(permit) = permit else {
            return Ok(Outcome::Abandoned);
        };
        // While we waited for a slot the order may have changed again: after a long wait (the
        // throttle is the bottleneck), decide on the freshest state (more coalescing, and no
        // create for an order deleted meanwhile). After a short one a change is unlikely, and a
        // read while holding a slot would cost every call (BENCHMARKS.md, figure 1).
        if asked.elapsed() > RELOAD_AFTER {
            let fresh = db_step("reload the order", id, || queries::load(pool, id)).await?;
            let mut decision = decide(fresh.as_ref(), kind);
            // The create mark is ours and nothing was sent: deleted meanwhile, it was never
            // created remotely.
            let never_sent = fresh.as_ref().is_some_and(|r| r.synced_version == 0);
            if marked_here && never_sent && decision == Decision::Call(Verb::Delete) {
                decision = Decision::PurgeWithoutCall;
            }
            match (decision, fresh) {
                (Decision::Call(now), Some(fresh)) if now == verb => row = fresh,
                (Decision::PurgeWithoutCall, _) => return purge_without_call(deps, id).await,
                _ => {
                    drop(permit);
                    continue;
                }
            }
        }
        let call = build_call(&row, verb);
        let started = Instant::now();
        let result = call_with_retries(deps, &call, permit).await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if matches!(result, Err(CallError::Abandoned)) {
            return Ok(Outcome::Abandoned);
        }
        deps.metrics.record_call(call.verb(), &result);
        let error = match result {
            Ok(()) => {
                crate::crash::point("after_call");
                tracing::debug!(
                    order_id = id,
                    version = row.version,
                    verb = call.verb(),
                    status = "ok",
                    duration_ms = elapsed_ms,
                    "synced"
                );
                deps.metrics.record_lag(event.committed_at_ms);
                deps.metrics.synced.inc();
                if verb == Verb::Delete {
                    db_step("purge the tombstone", id, || {
                        queries::purge_tombstone(&deps.bookkeeping, id)
                    })
                    .await?;
                    return Ok(Outcome::Synced);
                }
                let current = db_step("record the success", id, || {
                    queries::record_synced(&deps.bookkeeping, id, row.version)
                })
                .await?;
                match current {
                    // A change committed during the call: sync that too, now.
                    Some(current) if current > row.version => {
                        kind = EventKind::Change;
                        continue;
                    }
                    _ => return Ok(Outcome::Synced),
                }
            }
            Err(error) => error,
        };
        match record_failure(deps, &row, &call, &error, elapsed_ms).await? {
            // A change committed during the failed call: its state is owed now, afresh.
            FailureRecorded::Superseded => kind = EventKind::Change,
            FailureRecorded::Applied if error.is_retryable() && !gives_up(deps, &row) => {
                return Ok(Outcome::Parked)
            }
            FailureRecorded::Applied => return Ok(Outcome::Dead),
            FailureRecorded::LeftAlone => return Ok(Outcome::Skipped),
        }
    }
}

/// Removes a tombstone that was never created remotely: no call is owed.
async fn purge_without_call(deps: &SyncDeps, id: i64) -> Result<Outcome, DbStepFailed> {
    db_step("purge the tombstone", id, || {
        queries::purge_tombstone(&deps.bookkeeping, id)
    })
    .await?;
    tracing::info!(order_id = id, "deleted before it was ever synced: no call");
    deps.metrics.purged.inc();
    Ok(Outcome::Purged)
}

/// Whether this failure uses up the order's last delayed retry.
fn gives_up(deps: &SyncDeps, row: &SyncRow) -> bool {
    let limit = i32::try_from(deps.retry.delayed_limit).unwrap_or(i32::MAX);
    row.sync_attempts.saturating_add(1) > limit
}

/// Parks the order for its next delayed retry, or marks it dead, unless a change or an operator
/// got there first (see [`queries::record_failed_call`]).
async fn record_failure(
    deps: &SyncDeps,
    row: &SyncRow,
    call: &ExternalCall,
    error: &CallError,
    elapsed_ms: u64,
) -> Result<FailureRecorded, DbStepFailed> {
    let attempts = row.sync_attempts.saturating_add(1);
    // The answer's text came from outside: it was cleaned by the client, and is again here, so
    // that no answer can make the record itself fail.
    let message = clean_error_text(&error.to_string(), MAX_ERROR_CHARS);
    let next = if !error.is_retryable() || gives_up(deps, row) {
        FailedCallNext::Dead
    } else {
        let delay = deps.retry.delay(attempts as u32);
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|delay| Utc::now().checked_add_signed(delay))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        FailedCallNext::RetryAt(at)
    };
    let recorded = db_step("record the failure", row.id, || {
        queries::record_failed_call(
            &deps.bookkeeping,
            row.id,
            row.basis(),
            attempts,
            &message,
            next,
        )
    })
    .await?;
    match (recorded, next) {
        (FailureRecorded::Applied, FailedCallNext::Dead) => {
            tracing::warn!(order_id = row.id, version = row.version, verb = call.verb(), error = %message, attempts, duration_ms = elapsed_ms, "sync failed for good: order is dead");
            deps.metrics.dead.inc();
            deps.metrics.failed.inc();
        }
        (FailureRecorded::Applied, FailedCallNext::RetryAt(at)) => {
            let retry_in_ms = (at - Utc::now()).num_milliseconds().max(0);
            tracing::warn!(order_id = row.id, version = row.version, verb = call.verb(), error = %message, attempts, retry_in_ms, duration_ms = elapsed_ms, "sync failed: parked for a delayed retry");
            deps.metrics.parked.inc();
            deps.metrics.failed.inc();
        }
        (FailureRecorded::Superseded, _) => {
            tracing::info!(order_id = row.id, version = row.version, verb = call.verb(), error = %message, "call failed, but a newer change arrived meanwhile: syncing that instead");
        }
        (FailureRecorded::LeftAlone, _) => {
            deps.metrics.skipped.inc();
            tracing::info!(order_id = row.id, version = row.version, verb = call.verb(), error = %message, "call failed, but an operator retried or discarded the order meanwhile: left as they set it");
        }
    }
    Ok(recorded)
}

/// Makes the call, retrying quickly (exponential backoff with jitter) what may pass on a retry.
/// Every attempt takes its own slot and token from the throttle; the first uses `first_permit`.
async fn call_with_retries(
    deps: &SyncDeps,
    call: &ExternalCall,
    first_permit: CallPermit,
) -> Result<(), CallError> {
    let backoff = ExponentialBackoff::from_millis(2)
        .factor(25)
        .max_delay(Duration::from_secs(2))
        .map(jitter)
        .take(deps.retry.quick_attempts.saturating_sub(1) as usize);
    let first_permit = Cell::new(Some(first_permit));
    let attempt = || {
        let permit = first_permit.take();
        async move {
            let permit = match permit {
                Some(permit) => permit,
                None => {
                    // A retry is a new call: none starts once shutdown has begun.
                    if deps.shutdown.is_cancelled() {
                        return Err(CallError::Abandoned);
                    }
                    deps.metrics.retried.inc();
                    tokio::select! {
                        permit = deps.throttle.acquire() => permit.ok_or(CallError::Abandoned)?,
                        _ = deps.shutdown.cancelled() => return Err(CallError::Abandoned),
                    }
                }
            };
            // The token is taken last, so the rate holds where the external API sees it.
            let token = tokio::select! {
                token = permit.take_token() => token,
                _ = deps.shutdown.cancelled() => false,
            };
            if !token {
                return Err(CallError::Abandoned);
            }
            let started = Instant::now();
            let result = deps.client.send(call).await;
            let (id, version) = call.id_and_version();
            let status = match &result {
                Ok(()) => "ok".to_string(),
                Err(CallError::Status { status, .. }) => status.to_string(),
                Err(other) => other.to_string(),
            };
            tracing::info!(
                order_id = id,
                version,
                verb = call.verb(),
                status,
                duration_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
                "external call"
            );
            if let Err(CallError::Status {
                status: 429,
                retry_after: Some(delay),
                ..
            }) = &result
            {
                deps.throttle.pause_for(*delay);
            }
            result
        }
    };
    RetryIf::start(backoff, attempt, CallError::is_retryable).await
}

/// Why a database step of an event could not be completed.
#[derive(Debug)]
enum DbStepFailed {
    /// PostgreSQL stayed unreachable through every retry.
    Unavailable { step: &'static str },
    /// PostgreSQL rejected the statement: retrying cannot help.
    Rejected {
        step: &'static str,
        code: Option<String>,
    },
}

/// How long a database step is retried while PostgreSQL is unreachable: about a minute in all
/// (100 ms doubling to 5 s, 15 retries), long enough for a restart or a failover, short enough
/// that no event holds its in-flight slot through a long outage.
fn db_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBackoff::from_millis(2)
        .factor(50)
        .max_delay(Duration::from_secs(5))
        .map(jitter)
        .take(15)
}

/// Runs one PostgreSQL step of an event. Errors that may pass (the connection lost, the
/// server unavailable, a serialization failure or deadlock) are retried with backoff, each
/// retry logged with the order's id; anything else fails at once.
async fn db_step<T, F, Fut>(
    step: &'static str,
    order_id: i64,
    mut run: F,
) -> Result<T, DbStepFailed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let attempt = || {
        let next = run();
        async move {
            next.await.inspect_err(|error| {
                if db::is_transient(error) {
                    tracing::warn!(order_id, step, error = %error, "database step failed; retrying");
                }
            })
        }
    };
    RetryIf::start(db_backoff(), attempt, db::is_transient)
        .await
        .map_err(|error| {
            if db::is_transient(&error) {
                DbStepFailed::Unavailable { step }
            } else {
                DbStepFailed::Rejected {
                    step,
                    code: db::sqlstate(&error),
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;

    fn row(
        version: i64,
        synced_version: i64,
        state: &str,
        deleted: bool,
        create_sent: bool,
    ) -> SyncRow {
        SyncRow {
            id: 1,
            status: OrderStatus::Pending,
            placed_at: Utc::now(),
            delivered_at: None,
            amount: 1,
            tax: 0,
            street_address: "a".into(),
            city: "b".into(),
            state: "c".into(),
            country: "d".into(),
            pincode: "123".into(),
            version,
            deleted,
            sync_state: state.parse().unwrap(),
            synced_version,
            sync_attempts: 0,
            create_sent,
            marked_now: false,
        }
    }

    #[test]
    fn the_decision_follows_the_orders_state() {
        use EventKind::Change;
        let retry = EventKind::Retry { attempt: None };
        assert_eq!(decide(None, Change), Decision::Skip("gone"));
        assert_eq!(
            decide(Some(&row(3, 3, "synced", false, true)), Change),
            Decision::Skip("already synced")
        );
        assert_eq!(
            decide(Some(&row(1, 0, "pending", false, false)), Change),
            Decision::Call(Verb::Create)
        );
        assert_eq!(
            decide(Some(&row(4, 2, "pending", false, true)), Change),
            Decision::Call(Verb::Update)
        );
        assert_eq!(
            decide(Some(&row(2, 1, "pending", true, true)), Change),
            Decision::Call(Verb::Delete)
        );
        assert_eq!(
            decide(Some(&row(2, 0, "pending", true, false)), Change),
            Decision::PurgeWithoutCall
        );
        // A create may have arrived before a crash: the delete is still owed.
        assert_eq!(
            decide(Some(&row(2, 0, "pending", true, true)), Change),
            Decision::Call(Verb::Delete)
        );
        assert_eq!(
            decide(Some(&row(4, 2, "retrying", false, true)), Change),
            Decision::Skip("parked")
        );
        assert_eq!(
            decide(Some(&row(4, 2, "retrying", false, true)), retry),
            Decision::Call(Verb::Update)
        );
        assert_eq!(
            decide(Some(&row(4, 2, "dead", false, true)), Change),
            Decision::Skip("dead")
        );
        assert_eq!(
            decide(Some(&row(4, 2, "dead", false, true)), retry),
            Decision::Skip("dead")
        );
        // An operator discarded an order never created remotely: synced, yet version 0.
        assert_eq!(
            decide(Some(&row(4, 0, "synced", false, true)), Change),
            Decision::Skip("already synced")
        );
    }

    #[test]
    fn a_delayed_retry_runs_once_per_attempt() {
        let mut parked = row(4, 2, "retrying", false, true);
        parked.sync_attempts = 3;
        let this_attempt = EventKind::Retry { attempt: Some(3) };
        let earlier_attempt = EventKind::Retry { attempt: Some(2) };
        assert_eq!(
            decide(Some(&parked), this_attempt),
            Decision::Call(Verb::Update)
        );
        assert_eq!(
            decide(Some(&parked), earlier_attempt),
            Decision::Skip("retry already made")
        );
    }

    #[test]
    fn no_scale_or_count_overflows_the_delayed_schedule() {
        let policy = RetryPolicy {
            quick_attempts: 1,
            delayed_limit: 25,
            delayed_scale: 1e300,
        };
        assert_eq!(policy.delay(u32::MAX), MAX_DELAYED_RETRY);
        assert_eq!(policy.delay(25), MAX_DELAYED_RETRY);
    }

    #[test]
    fn the_delayed_schedule_is_sidekiqs() {
        let policy = RetryPolicy {
            quick_attempts: 4,
            delayed_limit: 25,
            delayed_scale: 1.0,
        };
        let first = policy.delay(1).as_secs_f64();
        assert!((15.0..25.0).contains(&first), "{first}");
        let fifth = policy.delay(5).as_secs_f64();
        assert!(
            (256.0 + 15.0..256.0 + 15.0 + 50.0).contains(&fifth),
            "{fifth}"
        );
    }
}
