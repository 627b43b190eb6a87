//! The messages between the engine's actors, in one place, so that the actors import this
//! module and never each other: the dispatcher sends [`HandleEvent`] to the supervisor, which
//! forwards it to the order's actor; the actor reports [`Outcome`] on the event's `done` channel,
//! and offers to stop with [`OrderActorIdle`], to which the supervisor answers [`StopIdle`].

use crate::domain::OrderId;
use actix::prelude::*;
use tokio::sync::oneshot;

use crate::domain::SyncEvent;

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
    /// An audit check was made and counted (a repair it found is a change of its own).
    Audited,
    /// A tombstone that was never created remotely was removed without a call.
    Purged,
    /// Quick retries were used up; the order waits for its delayed retry.
    Parked,
    /// The call cannot succeed (or every retry failed): the order is `dead`.
    Dead,
    /// The service is shutting down, or this instance no longer holds the order's shard:
    /// nothing was recorded, and the event must stay unacknowledged so that the next start, or
    /// the shard's next owner, handles it.
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

/// An idle actor offers to stop (`handled` events so far).
#[derive(Message)]
#[rtype(result = "()")]
pub struct OrderActorIdle {
    pub order_id: OrderId,
    pub child_id: u64,
    pub handled: u64,
}

/// The deepest and the summed mailbox of the live order actors.
#[derive(Message)]
#[rtype(result = "MailboxStats")]
pub struct GetMailboxStats;

#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MailboxStats {
    pub depth_sum: u64,
    pub depth_max: u64,
}
