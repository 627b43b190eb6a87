//! order-sync keeps an external HTTP API in step with an orders database: reliably, in order
//! per order, and within a global rate limit.
//!
//! The modules follow the picture in DESIGN.md:
//!
//! - [`api`] — the actix-web HTTP API (orders, inbound write-back, health).
//! - [`domain`] — order fields as types that can only hold valid values.
//! - [`db`] — PostgreSQL, the source of truth: entities, queries, the outbox rows.
//! - [`config`] — settings from the environment.
//! - [`startup`] — builds and runs an instance.
//! - [`telemetry`] — logging.

pub mod api;
pub mod config;
pub mod db;
pub mod domain;
pub mod startup;
pub mod telemetry;
