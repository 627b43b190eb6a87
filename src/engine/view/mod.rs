//! What the engine shows of itself and of the other instances, read by the API through the
//! engine's handle (`crate::engine::SyncEngine`) and logged:
//!
//! - [`stats`] — each shard's stream: its length, what is read and not yet acknowledged, its owner.
//! - [`census`] — every instance publishes its figures, so any instance shows the whole cluster.
//! - [`workers`] — whether any instance holds the shards; changes waiting with no worker are
//!   reported loudly rather than left to pile up in silence.
//! - [`progress`] — the one-line summary logged every few seconds while there is work.
//!
//! It looks down at the backlog and the leases and changes neither.

pub mod census;
pub mod progress;
pub mod stats;
pub mod workers;
