//! The actors of the sync engine (actix), all on the arbiter that builds the application:
//!
//! - [`supervisor`] — spawns or reuses one `OrderSyncActor` per order id, forgets idle ones and
//!   replaces failed ones.
//! - [`order_sync`] — one per order: handles that order's events one at a time
//!   ([`event_path`]: read, [`decision`], call with retries ([`calls`]), record ([`db_step`])).
//! - [`messages`] — what the actors (and the dispatcher) send each other.
//! - [`deps`] — what every order actor shares, and the retry policy.
//! - [`batched`] — the event path's read, recorded success and attempt log, many orders per
//!   statement.
//! - [`attempt_log`] — each call attempt as a row of the attempt log, and the calls in flight.
//! - [`audit`] — one audit check: compare the external copy with the order, repair a difference.
//!
//! The throttle every call passes is in `crate::engine::gate`, below this layer.
//!
//! No module here imports one that imports it back: `messages` and `deps` import no actor,
//! `event_path` uses `decision`, `calls` and `db_step`, and `order_sync` uses `event_path`.

pub mod attempt_log;
mod audit;
pub mod batched;
mod calls;
mod db_step;
mod decision;
pub mod deps;
mod event_path;
pub mod messages;
pub mod order_sync;
pub mod supervisor;

pub use batched::BatchedQueries;
pub use deps::SyncDeps;
