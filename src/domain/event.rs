//! A sync event: `(order_id, version, kind)` plus when the change was committed (for the lag
//! figure). The event names the version that made it; the order's actor always syncs the
//! order's current state, so an old event can only lead to a skip. How it is written to and read
//! from a stream is `crate::engine::backlog::event`'s business.

use super::OrderId;

/// Why the event was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A change committed through the API (or the seeder, or the reconciler).
    Change,
    /// A parked order's delayed retry is due (`attempt`: the order's `sync_attempts` when it
    /// was claimed, so a duplicate of this retry is a no-op once the attempt has been made), or
    /// an operator asked for a retry (`attempt: None`).
    Retry { attempt: Option<i32> },
    /// An audit job (`crate::engine::jobs`) asks the order's actor to compare the external
    /// copy with the order, and to repair it if they differ. Handled in the order's mailbox, so
    /// its `GET` never overlaps the order's other calls.
    Audit { job: i64 },
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Retry { .. } => "retry",
            Self::Audit { .. } => "audit",
        }
    }
}

/// One event read from (or to be written to) a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncEvent {
    pub order_id: OrderId,
    pub version: i64,
    pub kind: EventKind,
    /// Milliseconds since the epoch when the change was committed.
    pub committed_at_ms: i64,
}
