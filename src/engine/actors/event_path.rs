//! What handling one event means, in the order it happens: read the order's current row,
//! [`decide`] the one call (or none), mark a create before it is sent, take a slot from the
//! throttle (and read again after a long wait), make the call with its quick retries
//! ([`call_with_retries`]), and record the outcome in PostgreSQL (a success, or a failure as a
//! compare-and-set). Only then is the outcome reported, and only then does the dispatcher
//! acknowledge the event (`crate::engine::backlog::dispatcher`).

use crate::domain::OrderId;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::calls::{call_with_retries, CallReport};
use super::db_step::{db_step, DbStepFailed};
use super::decision::{build_call, decide, Decision, Verb};
use super::deps::SyncDeps;
use super::messages::Outcome;
use crate::db::attempts::NewAttempt;
use crate::db::sync::{self as queries, FailedCallNext, FailureRecorded, SyncRow};
use crate::domain::{EventKind, SyncEvent};
use crate::external::{clean_error_text, Answer, CallError, ExternalCall};

/// A wait for a slot longer than this makes the actor read the order again before calling.
const RELOAD_AFTER: Duration = Duration::from_millis(20);

/// The longest error text stored in `sync.last_error`.
const MAX_ERROR_CHARS: usize = 500;

/// Brings the external API to the order's current state and records the outcome. A database
/// step that cannot be completed ends the event here, one way or the other: never by holding
/// it (and its in-flight slot) for as long as the database misbehaves.
pub(crate) async fn sync_order(deps: &SyncDeps, event: SyncEvent) -> Outcome {
    let id = event.order_id;
    if let EventKind::Audit { job } = event.kind {
        return super::audit::audit_order(deps, id, job).await;
    }
    match sync_to_current_state(deps, &event).await {
        Ok(outcome) => outcome,
        Err(DbStepFailed::Unavailable { step }) => {
            tracing::warn!(
                order_id = id.get(),
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
            tracing::error!(order_id = id.get(), step, error = %message, "order is dead");
            if let Err(error) =
                queries::mark_dead_unrecordable(&deps.bookkeeping, id, &message).await
            {
                tracing::error!(order_id = id.get(), error = %error, "could not mark the order dead either");
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
    // The change's own version, until a failed call makes the event look again.
    let mut change_version = Some(event.version);
    loop {
        if deps.shutdown.is_cancelled() {
            return Ok(Outcome::Abandoned);
        }
        // Taken before the read: a row read under one lease of the shard is sent only under the
        // same lease (`crate::engine::cluster::leases`, "generation").
        let mut read_under = deps.leases.generation_of(id);
        let row = db_step("load the order", id, || {
            deps.batched.load_marking_create(id)
        })
        .await?;
        let verb = match decide(row.as_ref(), kind, change_version) {
            Decision::Skip(reason) => {
                tracing::debug!(
                    order_id = id.get(),
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
            permit = deps.throttle.acquire(id) => permit,
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
            let marked_under = read_under;
            read_under = deps.leases.generation_of(id);
            let fresh = db_step("reload the order", id, || queries::load(pool, id)).await?;
            let mut decision = decide(fresh.as_ref(), kind, change_version);
            // The create mark is ours and nothing was sent: deleted meanwhile, it was never
            // created remotely. Only while the shard is still held under the lease the mark was
            // made under: if it was handed over during the wait, its new owner may have sent
            // the create (the mark tells it one may be out), and the tombstone is owed a delete.
            let never_sent = fresh.as_ref().is_some_and(|r| r.synced_version == 0);
            let mark_still_ours = marked_here && read_under.is_some() && read_under == marked_under;
            if mark_still_ours && never_sent && decision == Decision::Call(Verb::Delete) {
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
        // Held until the outcome is recorded: the shard is handed over only after that.
        let Some(fence) = deps.leases.fence(id) else {
            tracing::info!(
                order_id = id.get(),
                "this instance no longer holds the order's shard: left for its new owner"
            );
            return Ok(Outcome::Abandoned);
        };
        if Some(fence.generation()) != read_under {
            // The shard was lost and taken back since the read: its owner in between may have
            // sent a newer version. Read again under this lease.
            drop((fence, permit));
            continue;
        }
        let call = build_call(&row, verb);
        let started = Instant::now();
        let report = call_with_retries(deps, &call, permit, &fence).await;
        if !report.failed_probe_is_the_orders && waits_for_the_api(deps, &report.result) {
            // Not the order's failure: nothing is recorded and no attempt is spent. The event
            // waits for the API at the throttle, then sends the order's state as it is then.
            drop(fence);
            deps.metrics.record_call(call.verb(), &report.result);
            deps.batched.log_attempts(report.attempts).await;
            tracing::debug!(
                order_id = id.get(),
                "the external API is down: the order waits for it"
            );
            continue;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let next = record_outcome(deps, event, &row, verb, &call, report, elapsed_ms).await;
        match next? {
            AfterCall::Done(outcome) => return Ok(outcome),
            AfterCall::SyncAgain => {
                kind = EventKind::Change;
                change_version = None;
            }
        }
    }
}

/// Whether a failed call failed because the external API is down: then the order waits for it
/// rather than being parked on its own retry schedule.
fn waits_for_the_api(deps: &SyncDeps, result: &Result<Answer, CallError>) -> bool {
    crate::engine::gate::destination::health_evidence(result) == Some(false)
        && deps.destination.is_down()
}

/// What follows a call's recorded outcome.
enum AfterCall {
    Done(Outcome),
    /// A change committed during a failed call: the order's latest state is owed now.
    SyncAgain,
}

/// Records what the call did, and its attempts in the attempt log: a recorded success writes
/// them in its own statement; any other outcome queues them first, so they are written beside
/// it, and waits for them before the event is done (an acknowledged event's attempts are in the
/// log).
async fn record_outcome(
    deps: &SyncDeps,
    event: &SyncEvent,
    row: &SyncRow,
    verb: Verb,
    call: &ExternalCall,
    report: CallReport,
    elapsed_ms: u64,
) -> Result<AfterCall, DbStepFailed> {
    let CallReport {
        result, attempts, ..
    } = report;
    if result.is_ok() && verb != Verb::Delete {
        return record_success(deps, event, row, call, result, attempts, elapsed_ms).await;
    }
    let logged = deps.batched.log_attempts(attempts);
    let next = record_other_outcome(deps, event, row, call, result, elapsed_ms).await;
    logged.await;
    next
}

/// A successful create or update: recorded with its attempts in one batched statement.
async fn record_success(
    deps: &SyncDeps,
    event: &SyncEvent,
    row: &SyncRow,
    call: &ExternalCall,
    result: Result<Answer, CallError>,
    attempts: Vec<NewAttempt>,
    elapsed_ms: u64,
) -> Result<AfterCall, DbStepFailed> {
    let id = row.id();
    deps.metrics.record_call(call.verb(), &result);
    synced(deps, event, row, &result, call, elapsed_ms);
    db_step("record the success", id, || {
        deps.batched
            .record_synced(id, row.version(), attempts.clone())
    })
    .await?;
    // A change committed during the call is left to its own event, queued behind this one:
    // syncing it here would keep this event (and the order's queued events, each holding an
    // in-flight slot) busy for as long as the order keeps changing.
    Ok(AfterCall::Done(Outcome::Synced))
}

/// What every success counts and logs.
fn synced(
    deps: &SyncDeps,
    event: &SyncEvent,
    row: &SyncRow,
    result: &Result<Answer, CallError>,
    call: &ExternalCall,
    elapsed_ms: u64,
) {
    crate::crash::point("after_call");
    tracing::debug!(
        order_id = row.id().get(),
        version = row.version(),
        verb = call.verb(),
        status = result.as_ref().map_or(0, |answer| answer.status),
        duration_ms = elapsed_ms,
        "synced"
    );
    deps.metrics.record_lag(event.committed_at_ms);
    deps.metrics.synced.inc();
}

/// A delete that succeeded (the tombstone is purged), a failure ([`record_failure`]), or a call
/// abandoned at shutdown.
async fn record_other_outcome(
    deps: &SyncDeps,
    event: &SyncEvent,
    row: &SyncRow,
    call: &ExternalCall,
    result: Result<Answer, CallError>,
    elapsed_ms: u64,
) -> Result<AfterCall, DbStepFailed> {
    let id = row.id();
    if matches!(result, Err(CallError::Abandoned)) {
        return Ok(AfterCall::Done(Outcome::Abandoned));
    }
    deps.metrics.record_call(call.verb(), &result);
    let error = match result {
        Ok(_) => {
            // Only a delete's success comes here: its tombstone goes.
            synced(deps, event, row, &result, call, elapsed_ms);
            db_step("purge the tombstone", id, || {
                queries::purge_tombstone(&deps.bookkeeping, id)
            })
            .await?;
            return Ok(AfterCall::Done(Outcome::Synced));
        }
        Err(error) => error,
    };
    Ok(
        match record_failure(deps, row, call, &error, elapsed_ms).await? {
            Some(outcome) => AfterCall::Done(outcome),
            None => AfterCall::SyncAgain,
        },
    )
}

/// Removes a tombstone that was never created remotely: no call is owed.
async fn purge_without_call(deps: &SyncDeps, id: OrderId) -> Result<Outcome, DbStepFailed> {
    db_step("purge the tombstone", id, || {
        queries::purge_tombstone(&deps.bookkeeping, id)
    })
    .await?;
    tracing::info!(
        order_id = id.get(),
        "deleted before it was ever synced: no call"
    );
    deps.metrics.purged.inc();
    Ok(Outcome::Purged)
}

/// Whether this failure uses up the order's last delayed retry.
fn gives_up(deps: &SyncDeps, row: &SyncRow) -> bool {
    let limit = i32::try_from(deps.retry.delayed_limit).unwrap_or(i32::MAX);
    row.sync_attempts.saturating_add(1) > limit
}

/// Parks the order for its next delayed retry, or marks it dead, unless a change or an operator
/// got there first (see [`queries::record_failed_call`]). `None`: a change committed during the
/// call superseded the failure, and the order's latest state is owed now.
async fn record_failure(
    deps: &SyncDeps,
    row: &SyncRow,
    call: &ExternalCall,
    error: &CallError,
    elapsed_ms: u64,
) -> Result<Option<Outcome>, DbStepFailed> {
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
    let recorded = db_step("record the failure", row.id(), || {
        queries::record_failed_call(
            &deps.bookkeeping,
            row.id(),
            row.basis(),
            attempts,
            &message,
            next,
        )
    })
    .await?;
    let outcome = match (recorded, next) {
        (FailureRecorded::Applied, FailedCallNext::Dead) => {
            tracing::warn!(order_id = row.id().get(), version = row.version(), verb = call.verb(), error = %message, attempts, duration_ms = elapsed_ms, "sync failed for good: order is dead");
            deps.metrics.dead.inc();
            deps.metrics.failed.inc();
            Some(Outcome::Dead)
        }
        (FailureRecorded::Applied, FailedCallNext::RetryAt(at)) => {
            let retry_in_ms = (at - Utc::now()).num_milliseconds().max(0);
            tracing::warn!(order_id = row.id().get(), version = row.version(), verb = call.verb(), error = %message, attempts, retry_in_ms, duration_ms = elapsed_ms, "sync failed: parked for a delayed retry");
            deps.metrics.parked.inc();
            deps.metrics.failed.inc();
            Some(Outcome::Parked)
        }
        (FailureRecorded::Superseded, _) => {
            tracing::info!(order_id = row.id().get(), version = row.version(), verb = call.verb(), error = %message, "call failed, but a newer change arrived meanwhile: syncing that instead");
            None
        }
        (FailureRecorded::LeftAlone, _) => {
            deps.metrics.skipped.inc();
            tracing::info!(order_id = row.id().get(), version = row.version(), verb = call.verb(), error = %message, "call failed, but an operator retried or discarded the order meanwhile: left as they set it");
            Some(Outcome::Skipped)
        }
    };
    Ok(outcome)
}
