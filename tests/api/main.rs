//! Integration tests: each starts a real service instance against real PostgreSQL and Redis
//! (see `helpers::spawn_app`).

mod bad_input;
mod durability;
mod external;
mod health;
mod helpers;
mod inbound;
mod orders;
mod outbox;
mod process;
mod startup;
mod sync;
