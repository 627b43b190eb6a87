//! order-sync keeps an external HTTP API in step with an orders database: reliably, in order
//! per order, and within a global rate limit.
//!
//! The modules follow the picture in `docs/ARCHITECTURE.md` ("Parts and how data flows"):
//!
//! - [`api`] — the actix-web HTTP API (orders, inbound write-back, health, metrics).
//! - [`engine`] — the sync engine: owns and watches its tasks, and holds its two halves:
//!   - [`engine::backlog`] — the Redis streams: the outbox relay, the dispatcher, the scheduler;
//!   - [`engine::actors`] — the supervisor, one actor per order (whose `event_path` reads as the
//!     handling of one event), and the global throttle.
//! - [`external`] — the external API: payload, awc client, and the built-in fake.
//! - [`metrics`] — the engine's counters and the lag window.
//! - [`domain`] — order fields as types that can only hold valid values.
//! - [`db`] — PostgreSQL, the source of truth: entities, queries, the outbox rows.
//! - [`config`] — settings from the environment; [`cli`] — the few arguments the binary takes.
//! - [`build_info`] — the version and commit, for `--version` and the metrics.
//! - [`crash`] — crash points for the durability tests (inert unless armed).
//! - [`startup`] — builds and runs an instance.
//! - [`telemetry`] — logging.

pub mod api;
pub mod build_info;
pub mod cli;
pub mod config;
pub mod crash;
pub mod db;
pub mod domain;
pub mod engine;
pub mod external;
pub mod metrics;
pub mod startup;
pub mod telemetry;
