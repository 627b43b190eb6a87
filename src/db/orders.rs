//! Reads of orders, and the error every query on orders answers with. The writes (each with its
//! outbox row, in the same transaction) are in [`super::changes`].

use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use super::entity::orders;
use super::is_unavailable;
use crate::domain::{FieldErrors, OrderId, OrderStatus, SyncState};

/// Why a query on orders failed, in terms the API can answer with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} not found")]
    NotFound(OrderId),
    /// The change would make the order invalid (checked against its current state).
    #[error("the change makes the order invalid")]
    Invalid(FieldErrors),
    #[error("the database is unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable(err.into())
        } else {
            Self::Unexpected(anyhow::Error::new(err).context("database query failed"))
        }
    }
}

/// The same rule for the statements run through sqlx: an outage (the pool closed, the
/// connection lost, the server unavailable) is `Unavailable`, anything else `Unexpected`.
impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if matches!(err, sqlx::Error::PoolClosed) || super::is_transient(&err) {
            Self::Unavailable(err.into())
        } else {
            Self::Unexpected(anyhow::Error::new(err).context("query failed"))
        }
    }
}

/// A live (not deleted) order.
pub async fn get_order(db: &DatabaseConnection, id: OrderId) -> Result<orders::Model, StoreError> {
    orders::Entity::find_by_id(id)
        .filter(orders::Column::DeletedAt.is_null())
        .one(db)
        .await?
        .ok_or(StoreError::NotFound(id))
}

/// How many orders are in each of `states` (a state with none is left out), for the metrics.
pub async fn count_by_sync_state(
    pool: &sqlx::PgPool,
    states: &[SyncState],
) -> Result<Vec<(SyncState, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sync_state, count(*) FROM orders WHERE sync_state = ANY($1) GROUP BY sync_state",
    )
    .bind(states)
    .fetch_all(pool)
    .await
}

/// Which orders `GET /orders` lists.
#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub sync_state: Option<SyncState>,
}

/// How `GET /orders` pages: by page number (with a total), or by cursor (the last id seen),
/// which stays fast and stable however deep the client reads.
#[derive(Debug, Clone, Copy)]
pub enum PageRequest {
    Numbered { page: u64, per_page: u64 },
    After { cursor: Option<i64>, per_page: u64 },
}

/// One page of orders, newest first.
#[derive(Debug)]
pub struct OrderPage {
    pub orders: Vec<orders::Model>,
    /// How many orders match the filter (numbered pages only).
    pub total: Option<u64>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<i64>,
}

/// Lists live orders, newest first (by id, which grows with creation time).
pub async fn list_orders(
    db: &DatabaseConnection,
    filter: &OrderFilter,
    page: PageRequest,
) -> Result<OrderPage, StoreError> {
    let mut query = orders::Entity::find()
        .filter(orders::Column::DeletedAt.is_null())
        .order_by_desc(orders::Column::Id);
    if let Some(status) = filter.status {
        query = query.filter(orders::Column::Status.eq(status));
    }
    if let Some(state) = filter.sync_state {
        query = query.filter(orders::Column::SyncState.eq(state));
    }
    let (per_page, total, query) = match page {
        PageRequest::Numbered { page, per_page } => {
            let total = query.clone().count(db).await?;
            let offset = page.saturating_sub(1).saturating_mul(per_page);
            (per_page, Some(total), query.offset(offset))
        }
        PageRequest::After { cursor, per_page } => {
            let query = match cursor {
                Some(last_seen) => query.filter(orders::Column::Id.lt(last_seen)),
                None => query,
            };
            (per_page, None, query)
        }
    };
    // One row more than asked tells whether another page exists.
    let mut rows = query.limit(per_page + 1).all(db).await?;
    let more = rows.len() as u64 > per_page;
    rows.truncate(per_page as usize);
    let next_cursor = if more {
        rows.last().map(|row| row.id)
    } else {
        None
    };
    Ok(OrderPage {
        orders: rows,
        total,
        next_cursor,
    })
}
