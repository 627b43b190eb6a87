//! Integration tests: each starts a real service instance against real PostgreSQL and Redis
//! (see `helpers::spawn_app`).

mod bad_input;
mod external;
mod health;
mod helpers;
mod inbound;
mod orders;
mod outbox;
mod startup;
mod sync;
