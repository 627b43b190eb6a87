//! One PostgreSQL step of an event, retried only when retrying can help, for a bounded time:
//! no event holds its in-flight slot for as long as the database misbehaves.

use crate::domain::OrderId;
use std::time::Duration;

use tokio_retry::strategy::{jitter, ExponentialBackoff};
use tokio_retry::RetryIf;

use crate::db;
use crate::db::QueryError;

/// Why a database step of an event could not be completed.
#[derive(Debug)]
pub(crate) enum DbStepFailed {
    /// PostgreSQL stayed unreachable through every retry.
    Unavailable { step: &'static str },
    /// PostgreSQL rejected the statement: retrying cannot help.
    Rejected {
        step: &'static str,
        code: Option<String>,
    },
}

/// How long a database step is retried while PostgreSQL is unreachable: about a minute in all
/// (100 ms doubling to 5 s, 15 retries), long enough for a restart or a failover, short enough
/// that no event holds its in-flight slot through a long outage.
fn db_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBackoff::from_millis(2)
        .factor(50)
        .max_delay(Duration::from_secs(5))
        .map(jitter)
        .take(15)
}

/// Runs one PostgreSQL step of an event. Errors that may pass (the connection lost, the
/// server unavailable, a serialization failure or deadlock) are retried with backoff, each
/// retry logged with the order's id; anything else fails at once.
pub(crate) async fn db_step<T, F, Fut>(
    step: &'static str,
    order_id: OrderId,
    mut run: F,
) -> Result<T, DbStepFailed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, QueryError>>,
{
    let attempt = || {
        let next = run();
        async move {
            next.await.inspect_err(|error| {
                if db::is_transient(error) {
                    tracing::warn!(order_id = order_id.get(), step, error = %error, "database step failed; retrying");
                }
            })
        }
    };
    RetryIf::start(db_backoff(), attempt, db::is_transient)
        .await
        .map_err(|error| {
            if db::is_transient(&error) {
                DbStepFailed::Unavailable { step }
            } else {
                DbStepFailed::Rejected {
                    step,
                    code: db::sqlstate(&error),
                }
            }
        })
}
