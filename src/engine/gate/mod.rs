//! The gate every external call passes, shared by the instances through Redis:
//!
//! - [`throttle`] — this instance's one budget (an actor): a cap on calls in flight, a token from
//!   the cluster-wide rate limit per attempt, and a pause for everyone after a 429.
//! - [`rate_limit`] — the external API's rate limit, enforced across every instance by one Lua
//!   script (GCRA) in Redis.
//! - [`pause`] — the operator's switch that stops outbound calls on every instance.
//! - [`destination`] — the external API's health, one state for every instance: while it is down
//!   only one probe at a time calls it, and its return releases every waiting call at once.
//!
//! The throttle and the destination know each other (the throttle hands the one probe's ticket;
//! the destination opens and closes the throttle), which is why they share this folder. Nothing
//! here imports the actors, the backlog or the view above it.

pub mod destination;
pub mod pause;
pub mod rate_limit;
pub mod throttle;
