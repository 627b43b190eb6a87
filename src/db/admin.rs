//! The operator's queries: the dead and retrying orders, and discarding one. Retrying them
//! writes outbox rows, so it is in [`super::changes`] (`Changes::retry_order`,
//! `Changes::retry_all_dead`), which answers with [`AdminChange`] too.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::{OrderId, SyncState};

/// An order that needs an operator's eye.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct FailedOrder {
    pub id: OrderId,
    pub version: i64,
    pub synced_version: i64,
    pub state: SyncState,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
}

/// Dead and/or retrying orders, newest first, after `cursor` (an id) when given.
pub async fn list_failed(
    pool: &PgPool,
    states: &[SyncState],
    cursor: Option<i64>,
    limit: i64,
) -> Result<Vec<FailedOrder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, version, synced_version, sync_state AS state, sync_attempts AS attempts,
                sync_last_error AS last_error, sync_next_attempt_at AS next_attempt_at, updated_at,
                deleted_at IS NOT NULL AS deleted
         FROM orders
         WHERE sync_state = ANY($1) AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(states)
    .bind(cursor)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What a retry or discard of one order found.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminChange {
    Done,
    NotFound,
    /// The order is neither dead nor retrying: there is nothing to retry or discard.
    NotFailed(SyncState),
}

/// Gives up on syncing a dead or retrying order's current version: the external API keeps what
/// it has. The order counts as synced (its error is kept, marked as discarded), and a tombstone
/// is removed, since no delete will be sent. An order the external API has never held keeps
/// `synced_version = 0`, so its next change is sent as a create (not an update of an order the
/// external API does not know). A call in flight cannot undo a discard: its outcome is recorded
/// only if the order's sync state is still the one it started from.
pub async fn discard_order(pool: &PgPool, id: OrderId) -> Result<AdminChange, sqlx::Error> {
    let mut txn = pool.begin().await?;
    let found: Option<(SyncState, bool)> = sqlx::query_as(
        "SELECT sync_state, deleted_at IS NOT NULL FROM orders WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *txn)
    .await?;
    match found {
        None => return Ok(AdminChange::NotFound),
        Some((state, _)) if !matches!(state, SyncState::Dead | SyncState::Retrying) => {
            return Ok(AdminChange::NotFailed(state))
        }
        Some((_, true)) => {
            sqlx::query("DELETE FROM orders WHERE id = $1")
                .bind(id)
                .execute(&mut *txn)
                .await?;
        }
        Some((_, false)) => {
            sqlx::query(
                "UPDATE orders SET sync_state = $2, sync_attempts = 0,
                        synced_version = CASE WHEN synced_version = 0 THEN 0 ELSE version END,
                        sync_next_attempt_at = NULL,
                        sync_last_error = 'discarded by an operator; last error: ' || coalesce(sync_last_error, 'none')
                 WHERE id = $1",
            )
            .bind(id)
            .bind(SyncState::Synced)
            .execute(&mut *txn)
            .await?;
        }
    }
    txn.commit().await?;
    Ok(AdminChange::Done)
}
