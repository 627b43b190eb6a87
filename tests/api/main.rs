//! Integration tests: each starts a real service instance against real PostgreSQL and Redis
//! (see `helpers::spawn_app`).

// The workspace denies `unwrap_used` for the service's code; a test's helpers may unwrap, since a
// failing unwrap fails the test, which is what it is for.
#![allow(clippy::unwrap_used)]

mod admin;
mod attempts;
mod bad_input;
mod batched;
mod dashboard;
mod destination;
mod durability;
mod edge;
mod engine_tasks;
mod external;
mod health;
mod helpers;
mod inbound;
mod instances;
mod monitoring;
mod observability;
mod operating;
mod orders;
mod outages;
mod outbox;
mod outcomes;
mod process;
mod production;
mod production_stack;
mod properties;
mod redis_faults;
mod remote_store;
mod startup;
mod sync;
mod tls;
mod untrusted_api;
