//! The durable backlog in Redis streams, and the tasks that move events through it:
//!
//! - [`relay`] — outbox rows (PostgreSQL) -> stream entries, right after each commit and by a
//!   periodic sweep; a row is deleted only once its entry exists.
//! - [`dispatcher`] — stream entries -> the supervisor, with at most `MAX_IN_FLIGHT_EVENTS`
//!   unacknowledged in memory; an entry is acknowledged only after its outcome is in PostgreSQL.
//! - [`scheduler`] — parked (`retrying`) orders whose time has come, and orders whose events were
//!   lost with Redis, are published again, so the system converges from PostgreSQL alone.

pub mod dispatcher;
mod event;
pub mod relay;
pub mod scheduler;

pub use event::{EventKind, SyncEvent};
