//! The sync policy, as a pure function of the order's current row: which one call (create,
//! update, delete) brings the external API to the order's state, or why none is owed.

use crate::db::sync::SyncRow;
use crate::domain::{EventKind, SyncState};
use crate::external::payload::ExternalOrder;
use crate::external::ExternalCall;

/// What to do for an order, decided from its current row (and, for a change, its version).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Skip(&'static str),
    /// A tombstone never created remotely: remove it, call nothing.
    PurgeWithoutCall,
    Call(Verb),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Create,
    Update,
    Delete,
}

/// `change_version`: the version a change event wrote, on the event's first look. Every call
/// sends the latest state, so a change whose version an earlier call already carried is done:
/// the later changes have events of their own, queued behind it. Without this, an order that
/// changes faster than its calls go out would make one call per change, and its events would
/// fill the dispatcher's in-flight bound while other orders waited.
pub(crate) fn decide(
    row: Option<&SyncRow>,
    kind: EventKind,
    change_version: Option<i64>,
) -> Decision {
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
        (SyncState::Pending, EventKind::Change)
            if change_version.is_some_and(|version| version <= row.synced_version) =>
        {
            return Decision::Skip("carried by an earlier call")
        }
        _ => {}
    }
    if row.version() <= row.synced_version {
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

pub(crate) fn build_call(row: &SyncRow, verb: Verb) -> ExternalCall {
    match verb {
        Verb::Create => ExternalCall::Create(ExternalOrder::from(&row.order)),
        Verb::Update => ExternalCall::Update(ExternalOrder::from(&row.order)),
        Verb::Delete => ExternalCall::Delete {
            id: row.id(),
            version: row.version(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::OrderStatus;
    use chrono::Utc;

    fn row(
        version: i64,
        synced_version: i64,
        state: &str,
        deleted: bool,
        create_sent: bool,
    ) -> SyncRow {
        SyncRow {
            order: crate::domain::OrderSnapshot {
                id: crate::domain::OrderId::new(1),
                version,
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
            },
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
        assert_eq!(decide(None, Change, None), Decision::Skip("gone"));
        assert_eq!(
            decide(Some(&row(3, 3, "synced", false, true)), Change, None),
            Decision::Skip("already synced")
        );
        assert_eq!(
            decide(Some(&row(1, 0, "pending", false, false)), Change, None),
            Decision::Call(Verb::Create)
        );
        assert_eq!(
            decide(Some(&row(4, 2, "pending", false, true)), Change, None),
            Decision::Call(Verb::Update)
        );
        assert_eq!(
            decide(Some(&row(2, 1, "pending", true, true)), Change, None),
            Decision::Call(Verb::Delete)
        );
        assert_eq!(
            decide(Some(&row(2, 0, "pending", true, false)), Change, None),
            Decision::PurgeWithoutCall
        );
        // A create may have arrived before a crash: the delete is still owed.
        assert_eq!(
            decide(Some(&row(2, 0, "pending", true, true)), Change, None),
            Decision::Call(Verb::Delete)
        );
        assert_eq!(
            decide(Some(&row(4, 2, "retrying", false, true)), Change, None),
            Decision::Skip("parked")
        );
        assert_eq!(
            decide(Some(&row(4, 2, "retrying", false, true)), retry, None),
            Decision::Call(Verb::Update)
        );
        assert_eq!(
            decide(Some(&row(4, 2, "dead", false, true)), Change, None),
            Decision::Skip("dead")
        );
        assert_eq!(
            decide(Some(&row(4, 2, "dead", false, true)), retry, None),
            Decision::Skip("dead")
        );
        // An operator discarded an order never created remotely: synced, yet version 0.
        assert_eq!(
            decide(Some(&row(4, 0, "synced", false, true)), Change, None),
            Decision::Skip("already synced")
        );
    }

    #[test]
    fn a_change_an_earlier_call_carried_makes_no_call() {
        // Version 4 is owed; a call already sent version 3 (the latest when it went out).
        let behind = row(4, 3, "pending", false, true);
        assert_eq!(
            decide(Some(&behind), EventKind::Change, Some(2)),
            Decision::Skip("carried by an earlier call")
        );
        assert_eq!(
            decide(Some(&behind), EventKind::Change, Some(3)),
            Decision::Skip("carried by an earlier call")
        );
        assert_eq!(
            decide(Some(&behind), EventKind::Change, Some(4)),
            Decision::Call(Verb::Update)
        );
        // A retry, or a change looked at again after a failed call, syncs the latest state.
        let retry = EventKind::Retry { attempt: None };
        assert_eq!(
            decide(Some(&behind), retry, Some(2)),
            Decision::Call(Verb::Update)
        );
        assert_eq!(
            decide(Some(&behind), EventKind::Change, None),
            Decision::Call(Verb::Update)
        );
    }

    #[test]
    fn a_delayed_retry_runs_once_per_attempt() {
        let mut parked = row(4, 2, "retrying", false, true);
        parked.sync_attempts = 3;
        let this_attempt = EventKind::Retry { attempt: Some(3) };
        let earlier_attempt = EventKind::Retry { attempt: Some(2) };
        assert_eq!(
            decide(Some(&parked), this_attempt, None),
            Decision::Call(Verb::Update)
        );
        assert_eq!(
            decide(Some(&parked), earlier_attempt, None),
            Decision::Skip("retry already made")
        );
    }
}
