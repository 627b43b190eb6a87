//! The one write path: every statement that changes an order's data or queues its sync, and
//! every outbox row, is written here, and nowhere else.
//!
//! It exists to keep one invariant in one place: a change writes its outbox row in the same
//! transaction as the change (either both commit or neither), and once a commit has written an
//! outbox row, the relay (`crate::engine::backlog::relay`) is woken at once through
//! [`RelayDoorbell`], rather than at its next sweep. Callers hold a [`Changes`] handle and cannot
//! forget either half: the statements are private to this module, and only its methods ring the
//! doorbell.
//!
//! Everything here runs on the durable pool (`crate::db::connect_and_migrate`), never on the
//! asynchronous-commit one (`crate::db::bookkeeping_pool`): a change answered 2xx, a repair and a
//! resync page must be on disk. Reads, and the engine's bookkeeping (`crate::db::sync`), stay in
//! their own modules.

use crate::domain::OrderId;
use std::sync::Arc;

use chrono::Utc;
use sea_orm::sea_query::Query;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction,
    DbBackend, DbErr, EntityTrait, QueryFilter, QuerySelect, Set, Statement, TransactionTrait,
};
use sqlx::PgPool;
use tokio::sync::Notify;

use super::admin::AdminChange;
use super::entity::{orders, outbox};
use super::jobs::{Drift, HIGHEST_ID};
use super::orders::StoreError;
use super::outbox::ChangeAction;
use crate::domain::{
    AddressLine, FieldErrors, InboundUpdate, Money, OrderFields, OrderPatch, Pincode, SyncState,
};

/// Wakes the outbox relay after a commit that wrote outbox rows, so the change is published at
/// once. Only [`Changes`] rings it; the relay waits on [`RelayDoorbell::rung`]. A ring with no
/// one waiting is kept (one at most), so a commit made while the relay is busy is not missed.
#[derive(Debug, Clone, Default)]
pub struct RelayDoorbell(Arc<Notify>);

impl RelayDoorbell {
    pub fn new() -> Self {
        Self::default()
    }

    fn ring(&self) {
        self.0.notify_one();
    }

    /// Returns once the doorbell has been rung (at once if it was rung since the last wait).
    pub async fn rung(&self) {
        self.0.notified().await;
    }
}

/// The handle every caller changes orders through (see the module's doc). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Changes {
    /// The durable pool, for the changes written through sea-orm.
    db: DatabaseConnection,
    /// The same durable pool, for the changes written through sqlx.
    pool: PgPool,
    doorbell: RelayDoorbell,
}

impl Changes {
    /// `db` must be the durable pool (`crate::db::connect_and_migrate`), not the bookkeeping one.
    pub fn new(db: DatabaseConnection, doorbell: RelayDoorbell) -> Self {
        let pool = db.get_postgres_connection_pool().clone();
        Self { db, pool, doorbell }
    }

    /// The doorbell these changes ring, for the relay to wait on.
    pub fn doorbell(&self) -> RelayDoorbell {
        self.doorbell.clone()
    }

    /// Rings the doorbell when the commit just made wrote an outbox row.
    fn ring_if_outbox_written(&self, wrote_outbox_row: bool) {
        if wrote_outbox_row {
            self.doorbell.ring();
        }
    }

    /// Creates an order (version 1) with its `create` outbox row (`POST /orders`).
    pub async fn create_order(&self, fields: &OrderFields) -> Result<orders::Model, StoreError> {
        let order = create_order(&self.db, fields).await?;
        self.doorbell.ring();
        Ok(order)
    }

    /// Replaces every field of a live order (`PUT /orders/{id}`).
    pub async fn replace_order(
        &self,
        id: OrderId,
        fields: OrderFields,
    ) -> Result<orders::Model, StoreError> {
        let order = replace_order(&self.db, id, fields).await?;
        self.doorbell.ring();
        Ok(order)
    }

    /// Applies a partial change to a live order (`PATCH /orders/{id}`).
    pub async fn patch_order(
        &self,
        id: OrderId,
        patch: OrderPatch,
    ) -> Result<orders::Model, StoreError> {
        let order = patch_order(&self.db, id, patch).await?;
        self.doorbell.ring();
        Ok(order)
    }

    /// Turns a live order into a tombstone owed a delete (`DELETE /orders/{id}`).
    pub async fn delete_order(&self, id: OrderId) -> Result<(), StoreError> {
        delete_order(&self.db, id).await?;
        self.doorbell.ring();
        Ok(())
    }

    /// Applies a write-back from the external system (`/inbound/{id}`); see
    /// [`InboundOutcome`] for what it may do.
    pub async fn update_from_inbound(
        &self,
        id: OrderId,
        update: InboundUpdate,
        signed: Option<SignedWriteBack<'_>>,
    ) -> Result<InboundOutcome, StoreError> {
        let committed = update_from_inbound(&self.db, id, update, signed).await?;
        self.ring_if_outbox_written(committed.wrote_outbox_row);
        Ok(committed.outcome)
    }

    /// An operator's retry of a dead or retrying order (`POST /admin/orders/{id}/retry`).
    pub async fn retry_order(&self, id: OrderId) -> Result<AdminChange, sqlx::Error> {
        let change = retry_order(&self.pool, id).await?;
        self.ring_if_outbox_written(change == AdminChange::Done);
        Ok(change)
    }

    /// An operator's retry of every dead order (`POST /admin/orders/retry-all`); returns how
    /// many.
    pub async fn retry_all_dead(&self) -> Result<u64, sqlx::Error> {
        let retried = retry_all_dead(&self.pool).await?;
        self.ring_if_outbox_written(retried > 0);
        Ok(retried)
    }

    /// An audit's repair of a live order's external copy; `false` if the order moved on since
    /// the audit read version `seen`.
    pub async fn repair_copy(
        &self,
        id: OrderId,
        seen: i64,
        drift: Drift,
    ) -> Result<bool, sqlx::Error> {
        let repaired = repair_copy(&self.pool, id, seen, drift).await?;
        self.ring_if_outbox_written(repaired);
        Ok(repaired)
    }

    /// An audit's repair of a stray external copy of a deleted order; `false` if none was
    /// written.
    pub async fn repair_stray(
        &self,
        id: OrderId,
        remote_version: i64,
    ) -> Result<bool, sqlx::Error> {
        let repaired = repair_stray(&self.pool, id, remote_version).await?;
        self.ring_if_outbox_written(repaired);
        Ok(repaired)
    }

    /// Queues a resync's next page (at most `limit` orders) and moves its cursor; `None` if the
    /// job is not this instance's.
    pub async fn queue_resync_page(
        &self,
        job: i64,
        instance: &str,
        limit: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let queued = queue_resync_page(&self.pool, job, instance, limit).await?;
        self.ring_if_outbox_written(queued.is_some_and(|queued| queued > 0));
        Ok(queued)
    }
}

/// What a transaction committed, and whether it wrote an outbox row.
struct Committed<T> {
    outcome: T,
    wrote_outbox_row: bool,
}

/// Inserts the outbox row of a change, in the change's transaction.
async fn insert_outbox_row(
    txn: &DatabaseTransaction,
    order_id: OrderId,
    version: i64,
    action: ChangeAction,
) -> Result<(), DbErr> {
    let insert = Query::insert()
        .into_table(outbox::Entity)
        .columns([
            outbox::Column::OrderId,
            outbox::Column::Version,
            outbox::Column::Action,
        ])
        .values_panic([order_id.into(), version.into(), action.into()])
        .to_owned();
    txn.execute(&insert).await?;
    Ok(())
}

// --- The API's changes. Each locks the row, bumps `version`, and inserts the outbox row
// `(order_id, version, action)` in the same transaction: either both are committed or neither.

/// Inserts a new order (version 1) and its `create` outbox row in one statement: a single
/// statement is atomic, and one round trip instead of four (BEGIN, two INSERTs, COMMIT) is what
/// lets the API keep up with a plain loop of the same two inserts (BENCHMARKS.md, figure 7).
async fn create_order(
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
async fn replace_order(
    db: &DatabaseConnection,
    id: OrderId,
    fields: OrderFields,
) -> Result<orders::Model, StoreError> {
    change_order(db, id, |_| Ok(fields)).await
}

/// Applies a partial change to a live order (`PATCH`); the result must be a valid order.
async fn patch_order(
    db: &DatabaseConnection,
    id: OrderId,
    patch: OrderPatch,
) -> Result<orders::Model, StoreError> {
    change_order(db, id, |current| current.patched(patch)).await
}

/// Turns a live order into a tombstone and records the `delete` that is owed to the external API.
async fn delete_order(db: &DatabaseConnection, id: OrderId) -> Result<(), StoreError> {
    let txn = db.begin().await?;
    let current = lock_live_order(&txn, id).await?;
    let version = current.version + 1;
    let mut row: orders::ActiveModel = current.clone().into();
    row.version = Set(version);
    row.deleted_at = Set(Some(Utc::now()));
    row.updated_at = Set(Utc::now());
    set_sync_state_after_change(&mut row, current.sync_state);
    row.update(&txn).await?;
    insert_outbox_row(&txn, id, version, ChangeAction::Delete).await?;
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
async fn update_from_inbound(
    db: &DatabaseConnection,
    id: OrderId,
    update: InboundUpdate,
    signed: Option<SignedWriteBack<'_>>,
) -> Result<Committed<InboundOutcome>, StoreError> {
    let nothing_queued = |outcome| Committed {
        outcome,
        wrote_outbox_row: false,
    };
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
            return Ok(nothing_queued(InboundOutcome::Replayed));
        }
    }
    let current = lock_live_order(&txn, id).await?;
    let sent_at = signed.as_ref().map(|webhook| webhook.sent_at);
    if let (Some(sent_at), Some(applied)) = (sent_at, current.inbound_sent_at) {
        // The sender's own clock on both sides: no skew between them.
        if sent_at < applied {
            txn.commit().await?;
            return Ok(nothing_queued(InboundOutcome::Superseded));
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
        insert_outbox_row(&txn, id, version, ChangeAction::Update).await?;
    }
    txn.commit().await?;
    Ok(Committed {
        outcome: InboundOutcome::Applied(Box::new(order)),
        wrote_outbox_row: sends_a_call,
    })
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

/// Locks a live order, lets `change` compute its new fields from the current ones, and writes
/// them with a new version and an `update` outbox row.
async fn change_order(
    db: &DatabaseConnection,
    id: OrderId,
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
    insert_outbox_row(&txn, id, version, ChangeAction::Update).await?;
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

async fn lock_live_order(
    txn: &DatabaseTransaction,
    id: OrderId,
) -> Result<orders::Model, StoreError> {
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

// --- The operator's retries. A retry writes an outbox row (`retry`) in the same transaction as
// the state change, so it reaches the engine however the process fails afterwards.

/// Makes a dead or retrying order pending again (attempts reset) and queues a `retry` event,
/// which syncs its latest state.
async fn retry_order(pool: &PgPool, id: OrderId) -> Result<AdminChange, sqlx::Error> {
    let mut txn = pool.begin().await?;
    let state: Option<SyncState> =
        sqlx::query_scalar("SELECT sync_state FROM orders WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *txn)
            .await?;
    match state {
        None => return Ok(AdminChange::NotFound),
        Some(SyncState::Dead | SyncState::Retrying) => {}
        Some(state) => return Ok(AdminChange::NotFailed(state)),
    }
    sqlx::query(
        "WITH revived AS (
             UPDATE orders SET sync_state = $3, sync_attempts = 0, sync_next_attempt_at = NULL
             WHERE id = $1 RETURNING id, version)
         INSERT INTO outbox (order_id, version, action) SELECT id, version, $2 FROM revived",
    )
    .bind(id)
    .bind(ChangeAction::Retry)
    .bind(SyncState::Pending)
    .execute(&mut *txn)
    .await?;
    txn.commit().await?;
    Ok(AdminChange::Done)
}

/// Retries every dead order; returns how many.
async fn retry_all_dead(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "WITH revived AS (
             UPDATE orders SET sync_state = $2, sync_attempts = 0, sync_next_attempt_at = NULL
             WHERE sync_state = $3 RETURNING id, version)
         INSERT INTO outbox (order_id, version, action) SELECT id, version, $1 FROM revived",
    )
    .bind(ChangeAction::Retry)
    .bind(SyncState::Pending)
    .bind(SyncState::Dead)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

// --- The operator's jobs (`crate::db::jobs`). A repair or a resend is a new version of the
// order, written with its outbox row in one statement or transaction, as any change is: the
// engine then syncs it through the normal path. A new version, not a resend of the old one: the
// external side may deduplicate by `Idempotency-Key` (`{id}:{version}`) or ignore a version it
// already holds, and would then keep its wrong copy.

/// Queues the next `limit` orders of a resync for a resend, in one transaction with the cursor:
/// each becomes a new version, pending, with its outbox row (dead and parked orders included:
/// a resync sends everything). Returns how many were queued; `None` if the job is not ours.
async fn queue_resync_page(
    pool: &PgPool,
    id: i64,
    instance: &str,
    limit: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let mut txn = pool.begin().await?;
    let cursor: Option<(i64, i64)> = sqlx::query_as(
        "SELECT next_id, to_id FROM sync_jobs
         WHERE id = $1 AND runner = $2 AND status = 'running' FOR UPDATE",
    )
    .bind(id)
    .bind(instance)
    .fetch_optional(&mut *txn)
    .await?;
    let Some((next_id, to_id)) = cursor else {
        return Ok(None);
    };
    let (queued, last): (i64, Option<i64>) = sqlx::query_as(
        "WITH page AS (SELECT id FROM orders WHERE id >= $1 AND id <= $2
                       ORDER BY id LIMIT $3 FOR UPDATE),
              bumped AS (
                  UPDATE orders o SET version = o.version + 1, sync_state = $4, sync_attempts = 0,
                         sync_next_attempt_at = NULL
                  FROM page WHERE o.id = page.id
                  RETURNING o.id, o.version, o.deleted_at IS NOT NULL AS deleted, o.synced_version),
              queued AS (
                  INSERT INTO outbox (order_id, version, action)
                  SELECT id, version, CASE WHEN deleted THEN $5 WHEN synced_version = 0 THEN $6
                                           ELSE $7 END
                  FROM bumped RETURNING order_id)
         SELECT count(*), max(order_id) FROM queued",
    )
    .bind(next_id)
    .bind(to_id)
    .bind(limit)
    .bind(SyncState::Pending)
    .bind(ChangeAction::Delete)
    .bind(ChangeAction::Create)
    .bind(ChangeAction::Update)
    .fetch_one(&mut *txn)
    .await?;
    let next = match last {
        Some(last) if queued >= limit => last + 1,
        _ => to_id.saturating_add(1),
    };
    sqlx::query(
        "UPDATE sync_jobs SET next_id = $2, queued = queued + $3, updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(next)
    .bind(queued)
    .execute(&mut *txn)
    .await?;
    txn.commit().await?;
    Ok(Some(queued))
}

/// Makes the order's next version owe the repair of `drift`, with its outbox row. `seen`: the
/// version the audit compared; nothing changes (`false`) if the order moved on since, or is no
/// longer synced: its own sync sends the latest state.
async fn repair_copy(
    pool: &PgPool,
    id: OrderId,
    seen: i64,
    drift: Drift,
) -> Result<bool, sqlx::Error> {
    let missing = drift == Drift::Missing;
    let repaired = sqlx::query(
        "WITH repaired AS (
             UPDATE orders SET version = version + 1, sync_state = $3, sync_attempts = 0,
                    sync_next_attempt_at = NULL,
                    synced_version = CASE WHEN $6 THEN 0 ELSE synced_version END,
                    create_sent_at = CASE WHEN $6 THEN NULL ELSE create_sent_at END
             WHERE id = $1 AND version = $2 AND sync_state = $4 AND deleted_at IS NULL
             RETURNING id, version)
         INSERT INTO outbox (order_id, version, action) SELECT id, version, $5 FROM repaired",
    )
    .bind(id)
    .bind(seen)
    .bind(SyncState::Pending)
    .bind(SyncState::Synced)
    .bind(if missing {
        ChangeAction::Create
    } else {
        ChangeAction::Update
    })
    .bind(missing)
    .execute(pool)
    .await?;
    Ok(repaired.rows_affected() == 1)
}

/// The external API holds an order that is deleted here (its row purged, or an id never used):
/// a tombstone owed a delete is written, as a delete would have left it. Its order fields are
/// placeholders: a delete carries none. `remote_version`: the version the external copy says it
/// is, so the delete's version follows it. Never above the highest id handed out (that id's
/// order is yet to come), and never over a row that exists (`ON CONFLICT`: it was not deleted).
async fn repair_stray(
    pool: &PgPool,
    id: OrderId,
    remote_version: i64,
) -> Result<bool, sqlx::Error> {
    // Audited: only constants are formatted in.
    let sql = format!(
        "WITH top AS ({HIGHEST_ID}),
              stray AS (
                  INSERT INTO orders (id, status, placed_at, amount, tax, street_address, city,
                                      state, country, pincode, version, deleted_at, sync_state,
                                      synced_version, create_sent_at)
                  SELECT $1, 'canceled', now(), 0, 0, '', '', '', '', '', $2 + 1, now(), $3, $2,
                         now()
                  FROM top WHERE $1 <= highest
                  ON CONFLICT (id) DO NOTHING
                  RETURNING id, version)
         INSERT INTO outbox (order_id, version, action) SELECT id, version, $4 FROM stray"
    );
    let repaired = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(remote_version.clamp(0, i64::MAX / 2))
        .bind(SyncState::Pending)
        .bind(ChangeAction::Delete)
        .execute(pool)
        .await?;
    Ok(repaired.rows_affected() == 1)
}
