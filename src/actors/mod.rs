//! The actors of the sync engine (actix), all on the arbiter that builds the application:
//!
//! - [`supervisor`] — spawns or reuses one `OrderSyncActor` per order id, forgets idle ones and
//!   replaces failed ones.
//! - [`order_sync`] — one per order: handles that order's events one at a time, making the one
//!   call that brings the external API to the order's current state.
//! - [`throttle`] — the one global budget: a token bucket, a cap on calls in flight, and a pause
//!   for everyone after a 429.

pub mod order_sync;
pub mod supervisor;
pub mod throttle;
