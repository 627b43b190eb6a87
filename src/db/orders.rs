//! Queries on orders. Each write locks the row, bumps `version`, and inserts the outbox row
//! `(order_id, version, action)` in the same transaction: either both are committed or neither.

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    Statement, TransactionTrait,
};

use super::entity::orders;
use super::is_unavailable;
use super::outbox::{self, ChangeAction};
use crate::domain::{
    AddressLine, FieldErrors, InboundUpdate, Money, OrderFields, OrderPatch, OrderStatus, Pincode,
    SyncState,
};

/// Why a query on orders failed, in terms the API can answer with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {0} not found")]
    NotFound(i64),
    /// The change would make the order invalid (checked against its current state).
    #[error("the change makes the order invalid")]
    Invalid(FieldErrors),
    #[error("the database is unavailable")]
    Unavailable(#[source] DbErr),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        if is_unavailable(&err) {
            Self::Unavailable(err)
        } else {
            Self::Unexpected(anyhow::Error::new(err).context("database query failed"))
        }
    }
}

/// Inserts a new order (version 1) and its `create` outbox row in one statement: a single
/// statement is atomic, and one round trip instead of four (BEGIN, two INSERTs, COMMIT) is what
/// lets the API keep up with a plain loop of the same two inserts (BENCHMARKS.md, figure 7).
pub async fn create_order(
    db: &DatabaseConnection,
    fields: &OrderFields,
) -> Result<orders::Model, StoreError> {
    const INSERT_WITH_OUTBOX: &str = r#"
        WITH created AS (
            INSERT INTO orders (status, placed_at, delivered_at, amount, tax,
                                street_address, city, state, country, pincode)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
            RETURNING *),
        queued AS (
            INSERT INTO outbox (order_id, version, action)
            SELECT id, version, $11 FROM created)
        SELECT * FROM created"#;
    let values: [sea_orm::Value; 11] = [
        fields.status.into(),
        fields.placed_at.into(),
        fields.delivered_at.into(),
        fields.amount.minor_units().into(),
        fields.tax.minor_units().into(),
        fields.street_address.as_str().into(),
        fields.city.as_str().into(),
        fields.state.as_str().into(),
        fields.country.as_str().into(),
        fields.pincode.as_str().into(),
        ChangeAction::Create.into(),
    ];
    let statement = Statement::from_sql_and_values(DbBackend::Postgres, INSERT_WITH_OUTBOX, values);
    orders::Entity::find()
        .from_raw_sql(statement)
        .one(db)
        .await?
        .ok_or_else(|| StoreError::Unexpected(anyhow::anyhow!("the insert returned no row")))
}

/// Replaces every field of a live order (`PUT`).
pub async fn replace_order(
    db: &DatabaseConnection,
    id: i64,
    fields: OrderFields,
) -> Result<orders::Model, StoreError> {
    change_order(db, id, |_| Ok(fields)).await
}

/// Applies a partial change to a live order (`PATCH`); the result must be a valid order.
pub async fn patch_order(
    db: &DatabaseConnection,
    id: i64,
    patch: OrderPatch,
) -> Result<orders::Model, StoreError> {
    change_order(db, id, |current| current.patched(patch)).await
}

/// Turns a live order into a tombstone and records the `delete` that is owed to the external API.
pub async fn delete_order(db: &DatabaseConnection, id: i64) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    let current = lock_live_order(&txn, id).await?;
    let version = current.version + 1;
    let mut row: orders::ActiveModel = current.clone().into();
    row.version = Set(version);
    row.deleted_at = Set(Some(Utc::now()));
    row.updated_at = Set(Utc::now());
    set_sync_state_after_change(&mut row, current.sync_state);
    row.update(&txn).await?;
    outbox::insert(&txn, id, version, ChangeAction::Delete).await?;
    txn.commit().await?;
    Ok(())
}

/// Applies a change written back by the external system.
///
/// - When no call is owed (the order is synced, or dead and waiting for an operator), the
///   write-back changes the fields only: no sync event and no new version, so nothing echoes
///   back to where the change came from.
/// - When a call is owed (`pending` or `retrying` with `synced_version < version`), a call may be
///   in flight carrying the old fields, and its success would mark the order synced while the
///   external side holds the newer write-back. So the write-back is merged as a new version with
///   its outbox row: exactly one more call carries the merged state.
///
/// A signed write-back carries its `webhook_id`: it is recorded in the same transaction, and a
/// write-back whose id was already recorded is a replay, answered [`InboundOutcome::Replayed`]
/// without being applied again. It also carries when it was sent, which the soak showed to
/// matter (a write-back held up on a frozen instance, applied seconds late):
/// - one sent before the last write-back applied to the order is [`InboundOutcome::Superseded`]
///   and changes nothing (both times are the sender's clock);
/// - one sent before our last call was answered (within [`WRITE_BACK_CLOCK_SKEW`]) may have been
///   overwritten by that call on the external side, so it is merged as a new version and sent,
///   as when a call is owed.
pub async fn update_from_inbound(
    db: &DatabaseConnection,
    id: i64,
    update: InboundUpdate,
    signed: Option<SignedWriteBack<'_>>,
) -> Result<InboundOutcome, StoreError> {
    let txn = db.begin().await?;
    if let Some(webhook_id) = signed.as_ref().map(|webhook| webhook.id) {
        // Ids older than the signature tolerance cannot come back: forget them.
        txn.execute_unprepared(
            "DELETE FROM inbound_webhooks WHERE received_at < now() - interval '10 minutes'",
        )
        .await?;
        let recorded = txn
            .execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "INSERT INTO inbound_webhooks (webhook_id) VALUES ($1) ON CONFLICT DO NOTHING",
                [webhook_id.into()],
            ))
            .await?;
        if recorded.rows_affected() == 0 {
            return Ok(InboundOutcome::Replayed);
        }
    }
    let current = lock_live_order(&txn, id).await?;
    let sent_at = signed.as_ref().map(|webhook| webhook.sent_at);
    if let (Some(sent_at), Some(applied)) = (sent_at, current.inbound_sent_at) {
        // The sender's own clock on both sides: no skew between them.
        if sent_at < applied {
            txn.commit().await?;
            return Ok(InboundOutcome::Superseded);
        }
    }
    let fields = stored_fields(&current)?
        .with_inbound(update)
        .map_err(StoreError::Invalid)?;
    let owes_a_call = current.synced_version < current.version
        && matches!(current.sync_state, SyncState::Pending | SyncState::Retrying);
    // Sent before our last call was answered, the write-back may have been overwritten by that
    // call on the external side: send the merged state, rather than trust that side to hold it.
    let crossed_our_call = current.sync_state == SyncState::Synced
        && sent_at
            .zip(current.synced_at)
            .is_some_and(|(sent_at, synced_at)| sent_at <= synced_at + WRITE_BACK_CLOCK_SKEW);
    let sends_a_call = owes_a_call || crossed_our_call;
    let version = current.version + 1;
    let mut row: orders::ActiveModel = current.into();
    set_fields(&mut row, &fields);
    if let Some(sent_at) = sent_at {
        row.inbound_sent_at = Set(Some(sent_at));
    }
    if sends_a_call {
        row.version = Set(version);
        if crossed_our_call {
            // Synced until now: the new version is owed, as after any change.
            set_sync_state_after_change(&mut row, SyncState::Synced);
        }
    }
    let order = row.update(&txn).await?;
    if sends_a_call {
        outbox::insert(&txn, id, version, ChangeAction::Update).await?;
    }
    txn.commit().await?;
    Ok(InboundOutcome::Applied(Box::new(order)))
}

/// How far the external system's clock (a write-back's `webhook-timestamp`, whole seconds) may
/// be behind ours when telling whether it sent the write-back after our last call was answered:
/// within it, the merged state is sent (one extra call), since a lost write-back would leave the
/// two copies apart.
const WRITE_BACK_CLOCK_SKEW: chrono::TimeDelta = chrono::TimeDelta::seconds(5);

/// A verified write-back's id and when its sender sent it.
#[derive(Debug, Clone)]
pub struct SignedWriteBack<'a> {
    pub id: &'a str,
    pub sent_at: chrono::DateTime<chrono::Utc>,
}

/// What an inbound write-back did.
#[derive(Debug)]
pub enum InboundOutcome {
    Applied(Box<orders::Model>),
    /// A signed write-back whose id was already applied: nothing changed.
    Replayed,
    /// A signed write-back sent before the last one applied to the order, delivered late (a
    /// retry, a slow path): applying it would put an older state over a newer one. Nothing
    /// changed.
    Superseded,
}

/// A live (not deleted) order.
pub async fn get_order(db: &DatabaseConnection, id: i64) -> Result<orders::Model, StoreError> {
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

/// Locks a live order, lets `change` compute its new fields from the current ones, and writes
/// them with a new version and an `update` outbox row.
async fn change_order(
    db: &DatabaseConnection,
    id: i64,
    change: impl FnOnce(OrderFields) -> Result<OrderFields, FieldErrors>,
) -> Result<orders::Model, StoreError> {
    let txn = db.begin().await?;
    let current = lock_live_order(&txn, id).await?;
    let fields = change(stored_fields(&current)?).map_err(StoreError::Invalid)?;
    let version = current.version + 1;
    let sync_state = current.sync_state;
    let mut row: orders::ActiveModel = current.into();
    set_fields(&mut row, &fields);
    row.version = Set(version);
    set_sync_state_after_change(&mut row, sync_state);
    let order = row.update(&txn).await?;
    outbox::insert(&txn, id, version, ChangeAction::Update).await?;
    txn.commit().await?;
    Ok(order)
}

/// A change makes a synced order pending again, and gives a dead one a fresh start (the change
/// may be the fix for what killed it), with its attempts reset: a revived order gets its full
/// retry schedule again. A parked (`retrying`) order stays parked: the change waits behind it
/// and is coalesced into its next attempt.
fn set_sync_state_after_change(row: &mut orders::ActiveModel, current: SyncState) {
    match current {
        SyncState::Retrying => {}
        SyncState::Dead => {
            row.sync_state = Set(SyncState::Pending);
            row.sync_attempts = Set(0);
            row.sync_next_attempt_at = Set(None);
        }
        _ => row.sync_state = Set(SyncState::Pending),
    }
}

async fn lock_live_order(txn: &DatabaseTransaction, id: i64) -> Result<orders::Model, StoreError> {
    orders::Entity::find_by_id(id)
        .filter(orders::Column::DeletedAt.is_null())
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound(id))
}

fn set_fields(row: &mut orders::ActiveModel, fields: &OrderFields) {
    row.status = Set(fields.status);
    row.placed_at = Set(fields.placed_at);
    row.delivered_at = Set(fields.delivered_at);
    row.amount = Set(fields.amount.minor_units());
    row.tax = Set(fields.tax.minor_units());
    row.street_address = Set(fields.street_address.as_str().into());
    row.city = Set(fields.city.as_str().into());
    row.state = Set(fields.state.as_str().into());
    row.country = Set(fields.country.as_str().into());
    row.pincode = Set(fields.pincode.as_str().into());
    row.updated_at = Set(Utc::now());
}

/// The stored row as domain values. Rows are written only from valid values, so a failure here
/// means the row was changed behind the service's back.
fn stored_fields(row: &orders::Model) -> Result<OrderFields, StoreError> {
    let corrupt = |field: &str, why: String| {
        anyhow::anyhow!("order {} has an invalid stored {field}: {why}", row.id)
    };
    let line =
        |field: &str, value: &str| AddressLine::new(value).map_err(|why| corrupt(field, why));
    Ok(OrderFields {
        status: row.status,
        placed_at: row.placed_at,
        delivered_at: row.delivered_at,
        amount: Money::new(row.amount).map_err(|why| corrupt("amount", why))?,
        tax: Money::new(row.tax).map_err(|why| corrupt("tax", why))?,
        street_address: line("street_address", &row.street_address)?,
        city: line("city", &row.city)?,
        state: line("state", &row.state)?,
        country: line("country", &row.country)?,
        pincode: Pincode::new(&row.pincode).map_err(|why| corrupt("pincode", why))?,
    })
}
