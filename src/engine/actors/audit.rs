//! One audit check, in the order's own actor (so its `GET` never overlaps the order's other
//! calls): read the order, and unless a sync is owed, read the external copy and compare them
//! field by field. A difference is repaired by writing a new version of the order with its
//! outbox row (`crate::db::Changes`, which wakes the relay), which the engine then syncs like any
//! change.
//!
//! | here | there | verdict |
//! |---|---|---|
//! | pending, retrying or dead | (not read) | skipped |
//! | synced | 404 | missing: a create is owed |
//! | synced | different fields | different: an update is owed |
//! | no row (deleted and purged, or an id never used) | present | stray: a delete is owed |
//! | synced, or no row | same fields, or 404 | matching |
//!
//! The `GET` counts against the rate limit like any call (the external API's limit counts every
//! call), and against the audits' share of it (`AUDIT_RATE_SHARE`, [`AuditShare`]): one of the
//! audits' call slots, a throttle slot, then a token of both limits at once.

use crate::domain::OrderId;
use serde_json::{Map, Value};

use super::attempt_log::{attempt_row, CallInFlight};
use super::db_step::{db_step, DbStepFailed};
use super::deps::{AuditShare, SyncDeps};
use super::messages::Outcome;
use crate::db::jobs::{self, Drift, Verdict};
use crate::db::sync::{self as queries, SyncRow};
use crate::domain::SyncState;
use crate::engine::gate::rate_limit::Grant;
use crate::external::payload::ExternalOrder;
use crate::external::{CallError, ExternalCall};

/// Checks order `id` for audit `job` and counts the verdict.
pub(crate) async fn audit_order(deps: &SyncDeps, id: OrderId, job: i64) -> Outcome {
    let verdict = match check(deps, id).await {
        Ok(Some(verdict)) => verdict,
        // Shutting down, or the shard moved: the event stays for whoever handles it next.
        Ok(None) => return Outcome::Abandoned,
        Err(DbStepFailed::Unavailable { .. }) => return Outcome::Deferred,
        Err(DbStepFailed::Rejected { step, code }) => {
            tracing::warn!(order_id = id.get(), job, step, code, "audit check failed");
            Verdict::Error
        }
    };
    deps.metrics
        .audit_checks
        .with_label_values(&[verdict.as_str()])
        .inc();
    if !matches!(verdict, Verdict::Matching | Verdict::Skipped) {
        tracing::info!(
            order_id = id.get(),
            job,
            verdict = verdict.as_str(),
            "audit"
        );
    }
    let counted = db_step("count the audit check", id, || {
        jobs::record_check(&deps.bookkeeping, job, verdict)
    })
    .await;
    if let Err(error) = counted {
        tracing::warn!(
            order_id = id.get(),
            job,
            ?error,
            "could not count an audit check"
        );
    }
    Outcome::Audited
}

/// The verdict, or `None` when the check was not made (shutdown, or the shard moved).
async fn check(deps: &SyncDeps, id: OrderId) -> Result<Option<Verdict>, DbStepFailed> {
    let row = db_step("load the order", id, || queries::load(&deps.pool, id)).await?;
    if row
        .as_ref()
        .is_some_and(|row| row.sync_state != SyncState::Synced || row.deleted)
    {
        return Ok(Some(Verdict::Skipped));
    }
    let version = row.as_ref().map_or(0, SyncRow::version);
    let call = ExternalCall::Get { id, version };
    let Some(answer) = read_external_copy(deps, &call).await else {
        return Ok(None);
    };
    let remote = match answer {
        Ok(answer) if answer.status == 404 => None,
        Ok(answer) => match answer.copy {
            Some(copy) if is_copy_of(&copy, id) => Some(copy),
            // Not an order, or another one: the answer is wrong, which no repair can fix.
            _ => {
                tracing::warn!(
                    order_id = id.get(),
                    answer = answer.excerpt,
                    "the external API's answer to GET is not this order's copy"
                );
                return Ok(Some(Verdict::Error));
            }
        },
        Err(_) => return Ok(Some(Verdict::Error)),
    };
    let verdict = match (row, remote) {
        (None, None) => Verdict::Matching,
        (None, Some(copy)) => {
            let remote_version = copy.get("version").and_then(Value::as_i64).unwrap_or(0);
            let repaired = db_step("write the stray copy's tombstone", id, || {
                deps.changes.repair_stray(id, remote_version)
            })
            .await?;
            repaired_or_skipped(repaired, Verdict::RepairedStray)
        }
        (Some(row), None) => {
            let repaired = db_step("queue the missing order's create", id, || {
                deps.changes.repair_copy(id, row.version(), Drift::Missing)
            })
            .await?;
            repaired_or_skipped(repaired, Verdict::RepairedMissing)
        }
        (Some(row), Some(copy)) => {
            let differing = differing_fields(&row, &copy);
            if differing.is_empty() {
                Verdict::Matching
            } else {
                tracing::info!(order_id = id.get(), fields = ?differing, "the external copy differs");
                let repaired = db_step("queue the differing order's update", id, || {
                    deps.changes
                        .repair_copy(id, row.version(), Drift::Different)
                })
                .await?;
                repaired_or_skipped(repaired, Verdict::RepairedDifferent)
            }
        }
    };
    Ok(Some(verdict))
}

/// A repair written, or none because the order changed since it was read (its own sync will
/// send the latest state).
fn repaired_or_skipped(repaired: bool, verdict: Verdict) -> Verdict {
    if repaired {
        verdict
    } else {
        Verdict::Skipped
    }
}

/// Whether the answer is order `id`'s copy: its `id` names it (as a number, or as text).
fn is_copy_of(copy: &Map<String, Value>, id: OrderId) -> bool {
    match copy.get("id") {
        Some(Value::Number(n)) => n.as_i64() == Some(id.get()),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok() == Some(id.get()),
        _ => false,
    }
}

/// The fields of what we would send that the external copy has otherwise. `version` is left out:
/// a copy edited by hand may keep its version, and one with only a different version holds the
/// same order. Fields the copy has beyond ours are the external side's own.
fn differing_fields(row: &SyncRow, copy: &Map<String, Value>) -> Vec<String> {
    let Ok(Value::Object(ours)) = serde_json::to_value(ExternalOrder::from(&row.order)) else {
        return Vec::new();
    };
    ours.into_iter()
        .filter(|(field, value)| field != "version" && copy.get(field) != Some(value))
        .map(|(field, _)| field)
        .collect()
}

/// Makes the audit's `GET`: one of the audits' call slots, a throttle slot, the shard's fence,
/// and a token of the rate limit and of the audits' share together. `None` when it could not be
/// made (shutdown, or the shard moved).
async fn read_external_copy(
    deps: &SyncDeps,
    call: &ExternalCall,
) -> Option<Result<crate::external::Answer, CallError>> {
    let _audit_slot = match &deps.audit_share {
        Some(share) => Some(tokio::select! {
            slot = share.slots.acquire() => slot.ok()?,
            _ = deps.shutdown.cancelled() => return None,
        }),
        None => None,
    };
    let mut permit = tokio::select! {
        permit = deps.throttle.acquire(call.id_and_version().0) => permit?,
        _ = deps.shutdown.cancelled() => return None,
    };
    let (id, version) = call.id_and_version();
    let fence = deps.leases.fence(id)?;
    let token = match &deps.audit_share {
        Some(share) => take_shared_token(deps, share).await,
        None => tokio::select! {
            token = permit.take_token() => token,
            _ = deps.shutdown.cancelled() => false,
        },
    };
    if !token || !fence.may_call() {
        return None;
    }
    let attempted_at = chrono::Utc::now();
    let in_flight = deps.calls_in_flight.start(
        id,
        CallInFlight {
            version,
            verb: call.verb(),
            since: attempted_at,
            attempt: 1,
        },
    );
    let probe = permit.take_probe();
    let started = std::time::Instant::now();
    let result = deps.client.send(call).await;
    let took = started.elapsed();
    drop(in_flight);
    drop(permit);
    deps.destination
        .report_call(id, probe, &result, &deps.throttle);
    deps.metrics.record_call(call.verb(), &result);
    if let Err(CallError::Status {
        status: 429,
        retry_after: Some(delay),
        ..
    }) = &result
    {
        deps.throttle.pause_for(*delay);
    }
    if deps.attempt_log_on {
        let instance = deps.leases.instance().to_string();
        let logged = deps.batched.log_attempts(vec![attempt_row(
            call,
            &result,
            attempted_at,
            took,
            &instance,
        )]);
        logged.await;
    }
    Some(result)
}

/// Waits for a token of the rate limit and of the audits' share, granted together; `false` on
/// shutdown. Asked of Redis directly rather than through the throttle's queue, where a token of
/// the share would wait for one of the rate. While Redis fails, the check waits, as calls do.
async fn take_shared_token(deps: &SyncDeps, share: &AuditShare) -> bool {
    let mut redis_failing = false;
    loop {
        let wait = match share.whole.take_one_within(&share.share).await {
            Ok(Grant::Calls(_)) => return true,
            Ok(Grant::WaitFor(wait)) => wait,
            Err(error) => {
                if !redis_failing {
                    tracing::warn!(%error, "cannot take an audit token from Redis; waiting");
                }
                redis_failing = true;
                std::time::Duration::from_millis(500)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = deps.shutdown.cancelled() => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::domain::{OrderSnapshot, OrderStatus};

    fn row() -> SyncRow {
        SyncRow {
            order: OrderSnapshot {
                id: OrderId::new(7),
                version: 3,
                status: OrderStatus::Pending,
                placed_at: Utc::now(),
                delivered_at: None,
                amount: 100,
                tax: 18,
                street_address: "12 MG Road".into(),
                city: "Pune".into(),
                state: "MH".into(),
                country: "India".into(),
                pincode: "411001".into(),
            },
            deleted: false,
            sync_state: SyncState::Synced,
            synced_version: 3,
            sync_attempts: 0,
            create_sent: true,
            marked_now: false,
        }
    }

    fn as_sent(row: &SyncRow) -> Map<String, Value> {
        match serde_json::to_value(ExternalOrder::from(&row.order)) {
            Ok(Value::Object(fields)) => fields,
            other => panic!("an object, not {other:?}"),
        }
    }

    #[test]
    fn a_copy_differs_in_the_fields_we_send_and_not_in_its_version_or_its_own_fields() {
        let row = row();
        let mut copy = as_sent(&row);
        copy.insert("version".into(), json!(1));
        copy.insert("received_at".into(), json!("yesterday"));
        assert!(differing_fields(&row, &copy).is_empty());
        copy.insert("cost".into(), json!("118"));
        copy.remove("address");
        assert_eq!(differing_fields(&row, &copy), ["address", "cost"]);
    }

    #[test]
    fn only_an_answer_naming_the_order_is_its_copy() {
        let copy = |id: Value| Map::from_iter([("id".to_string(), id)]);
        assert!(is_copy_of(&copy(json!(7)), OrderId::new(7)));
        assert!(is_copy_of(&copy(json!(" 7")), OrderId::new(7)));
        assert!(!is_copy_of(&copy(json!(8)), OrderId::new(7)));
        assert!(!is_copy_of(&copy(json!(null)), OrderId::new(7)));
        assert!(!is_copy_of(&Map::new(), OrderId::new(7)));
    }
}
