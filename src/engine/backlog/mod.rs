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
pub mod keys;
pub mod relay;
pub mod scheduler;
pub mod stats;

pub use event::{EventKind, SyncEvent};

use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Connects to Redis and checks it answers. The connection manager reconnects by itself later.
pub async fn connect(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("not a valid Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    let mut manager = tokio::time::timeout(
        Duration::from_secs(10),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .context("timed out connecting")?
    .context("cannot connect")?;
    redis::cmd("PING")
        .query_async::<String>(&mut manager)
        .await
        .context("PING failed")?;
    Ok(manager)
}
