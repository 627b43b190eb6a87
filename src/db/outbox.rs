//! Queries on the outbox: the changes committed but not yet published to the Redis backlog.
//! Rows are inserted by [`super::changes`] alone, in the same transaction as their change; the
//! relay (`backlog::relay`) locks a batch, publishes it and deletes it in one transaction of its
//! own.

use crate::domain::OrderId;
use sea_orm::{DeriveActiveEnum, EnumIter};
use sqlx::{PgConnection, PgPool};

use super::codec::text_column;
use crate::domain::serialize_as_str;

/// Why an outbox row was written: a change to the order, or an operator's retry. Stored as its
/// lowercase name in `outbox.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text", rename_all = "lowercase")]
pub enum ChangeAction {
    Create,
    Update,
    Delete,
    /// An operator retried a dead or parked order (`Changes::retry_order`): its event must reach the order
    /// even while it is parked, where a change would wait.
    Retry,
}

impl ChangeAction {
    pub const ALL: [ChangeAction; 4] = [Self::Create, Self::Update, Self::Delete, Self::Retry];

    /// The `outbox.action` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Retry => "retry",
        }
    }
}

impl std::str::FromStr for ChangeAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|action| action.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not an outbox action"))
    }
}

text_column!(ChangeAction);
serialize_as_str!(ChangeAction);

/// One committed change waiting to be published.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub order_id: OrderId,
    pub version: i64,
    pub action: ChangeAction,
    /// When the change was committed, in milliseconds since the epoch (for the lag metric).
    pub committed_at_ms: i64,
}

/// Locks up to `limit` of the oldest rows, in id order, for the caller's transaction. Rows
/// another transaction holds are skipped (`SKIP LOCKED`), so several relays never publish one
/// row twice at once.
pub async fn lock_oldest(
    txn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id, version, action,
                (extract(epoch FROM created_at) * 1000)::bigint AS committed_at_ms
         FROM outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(txn)
    .await
}

/// Deletes published rows, in the transaction that locked them.
pub async fn delete(txn: &mut PgConnection, ids: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(txn)
        .await?;
    Ok(())
}

/// How many rows wait to be published, for the metrics.
pub async fn count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await
}
