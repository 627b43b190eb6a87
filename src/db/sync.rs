//! The sync engine's queries: reading an order as the actor needs it and recording the outcome
//! of its calls. Plain SQL on the sqlx pool under sea-orm: these run once or twice per call on
//! the hot path, where conditional updates (`GREATEST`, `CASE`) say exactly what they do.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::db::attempts::{insert_attempts_sql, AttemptColumns, NewAttempt};
use crate::domain::{OrderId, OrderSnapshot, SyncState};

/// An order as the sync engine sees it, tombstones included: its fields at this version (what a
/// call carries) and its sync columns.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncRow {
    #[sqlx(flatten)]
    pub order: OrderSnapshot,
    pub deleted: bool,
    pub sync_state: SyncState,
    pub synced_version: i64,
    pub sync_attempts: i32,
    pub create_sent: bool,
    /// This very read marked the create as sent (see [`load_marking_create`]).
    pub marked_now: bool,
}

impl SyncRow {
    pub fn id(&self) -> OrderId {
        self.order.id
    }

    pub fn version(&self) -> i64 {
        self.order.version
    }

    /// What a call decided from this row is based on (see [`record_failed_call`]).
    pub fn basis(&self) -> CallBasis {
        CallBasis {
            version: self.order.version,
            sync_state: self.sync_state,
            sync_attempts: self.sync_attempts,
        }
    }
}

/// The order's current row, or `None` when it no longer exists (its delete was synced).
pub async fn load(pool: &PgPool, id: OrderId) -> Result<Option<SyncRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, status, placed_at, delivered_at, amount, tax, street_address, city, state, country,
                pincode, version, deleted_at IS NOT NULL AS deleted, sync_state, synced_version,
                sync_attempts, create_sent_at IS NOT NULL AS create_sent, false AS marked_now
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Like [`load`], and when the order waits for its first sync (pending, never synced, not
/// deleted) it also marks the create as sent, in the same round trip: the mark must be written
/// before the `POST`, and one statement instead of two is a third fewer per created order
/// (BENCHMARKS.md, figure 1).
pub async fn load_marking_create(
    pool: &PgPool,
    id: OrderId,
) -> Result<Option<SyncRow>, sqlx::Error> {
    Ok(load_many_marking_create(pool, &[id]).await?.pop())
}

/// [`load_marking_create`] for many orders in one statement (the engine's batched reads,
/// `engine::actors::batched`): the rows of those of `ids` that exist, in no particular order.
///
/// The rows are read by primary key first (`current`), and only the update's `id` and
/// `create_sent_at` are left to the planner. With the sync state in the update's own `WHERE`,
/// statistics that are stale after a bulk load (every row `pending`, the planner believing
/// almost none are) made it walk `orders_live_sync_state_idx` over every pending order: 190 ms
/// per batch of 100 on 100,000 orders, against 6 ms this way. A mark on an order changed after
/// `current` was read is harmless: the mark says only that a create may have been sent.
///
/// Unprepared, unlike every other statement of the service: a cached statement's plan may turn
/// generic, fixed by the statistics of that moment. Planned while `orders` was small (a new
/// database, or one bulk-loaded and not yet analyzed), the generic plan of `id = ANY($1)` scans
/// the whole table; kept as the table grew, it cost 240 full scans a second at 500 changes/s
/// (BENCHMARKS.md, figure 3). Unprepared, each batch is planned with its own ids and walks the
/// primary key; planning costs less than the round trip, and there is one per batch.
pub async fn load_many_marking_create(
    pool: &PgPool,
    ids: &[OrderId],
) -> Result<Vec<SyncRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH current AS (SELECT * FROM orders WHERE id = ANY($1)),
         marked AS (
             UPDATE orders SET create_sent_at = now()
             WHERE id IN (SELECT id FROM current
                          WHERE create_sent_at IS NULL AND synced_version = 0
                            AND deleted_at IS NULL AND sync_state = $2)
               AND create_sent_at IS NULL
             RETURNING id)
         SELECT c.id, status, placed_at, delivered_at, amount, tax, street_address, city, state,
                country, pincode, version, deleted_at IS NOT NULL AS deleted, sync_state,
                synced_version, sync_attempts,
                (create_sent_at IS NOT NULL OR m.id IS NOT NULL) AS create_sent,
                m.id IS NOT NULL AS marked_now
         FROM current c LEFT JOIN marked m ON m.id = c.id",
    )
    .persistent(false)
    .bind(ids)
    .bind(SyncState::Pending)
    .fetch_all(pool)
    .await
}

/// Written before the first `POST` goes out, so a crash cannot hide that it may have arrived.
pub async fn mark_create_sent(pool: &PgPool, id: OrderId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET create_sent_at = now() WHERE id = $1 AND create_sent_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that the external API now holds `version`. Returns the order's current version, so
/// the caller can tell whether a newer change arrived meanwhile.
pub async fn record_synced(
    pool: &PgPool,
    id: OrderId,
    version: i64,
) -> Result<Option<i64>, sqlx::Error> {
    let recorded = record_many_synced(pool, &[(id, version)], &[]).await?;
    Ok(recorded.first().map(|&(_, current)| current))
}

/// [`record_synced`] for many `(id, version)` pairs in one statement (the engine's group
/// commit, `engine::actors::batched`), which also writes `attempts` to the attempt log: the
/// calls' attempts cost no statement of their own (BENCHMARKS.md, issue 14). Returns
/// `(id, current version)` for each order that still exists, in no particular order.
/// Unprepared, for the reason given at [`load_many_marking_create`].
pub async fn record_many_synced(
    pool: &PgPool,
    synced: &[(OrderId, i64)],
    attempts: &[NewAttempt],
) -> Result<Vec<(OrderId, i64)>, sqlx::Error> {
    let (ids, versions): (Vec<OrderId>, Vec<i64>) = synced.iter().copied().unzip();
    let query = sqlx::query_as(concat!(
        "WITH logged AS (",
        insert_attempts_sql!(),
        ")
         UPDATE orders o
         SET synced_version = GREATEST(o.synced_version, s.version),
             sync_state = CASE WHEN o.version <= GREATEST(o.synced_version, s.version)
                               THEN $12 ELSE $13 END,
             sync_attempts = 0, sync_last_error = NULL, synced_at = now(),
             sync_next_attempt_at = NULL
         FROM unnest($10::bigint[], $11::bigint[]) AS s(id, version)
         WHERE o.id = s.id
         RETURNING o.id, o.version"
    ))
    .persistent(false);
    AttemptColumns::of(attempts)
        .bind_to(query)
        .bind(ids)
        .bind(versions)
        .bind(SyncState::Synced)
        .bind(SyncState::Pending)
        .fetch_all(pool)
        .await
}

/// Removes a tombstone whose delete is done (or was never owed).
pub async fn purge_tombstone(pool: &PgPool, id: OrderId) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM orders WHERE id = $1 AND deleted_at IS NOT NULL")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// What the actor read when it decided on a call: the outcome of that call is recorded only if
/// nothing that matters changed meanwhile (compare-and-set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallBasis {
    /// The version the call carried.
    pub version: i64,
    pub sync_state: SyncState,
    pub sync_attempts: i32,
}

/// Where a failed call leaves the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailedCallNext {
    /// Parked for a delayed retry at this time.
    RetryAt(DateTime<Utc>),
    /// Given up until an operator (or a new change) retries it.
    Dead,
}

/// What recording a failed call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureRecorded {
    /// The order is parked or dead, as asked.
    Applied,
    /// A change was committed after the call was decided: it wins over the failure. The order is
    /// pending again with its attempts reset, and its latest state is owed now.
    Superseded,
    /// An operator retried or discarded the order meanwhile (or it is gone): left as it is.
    LeftAlone,
}

/// Records a failed call as a compare-and-set on what the call was decided from (invariant 7):
///
/// - a change committed after `basis.version` revives the order (pending, attempts reset): the
///   failure concerned a state that no longer exists, and the change may be the fix;
/// - otherwise the failure is recorded only if the order's sync state and attempts are still
///   those of `basis`, so an operator's retry or discard during the call is not overwritten.
///
/// `error` must already be clean (no NUL or control characters; see `external::clean_error_text`).
pub async fn record_failed_call(
    pool: &PgPool,
    id: OrderId,
    basis: CallBasis,
    attempts: i32,
    error: &str,
    next: FailedCallNext,
) -> Result<FailureRecorded, sqlx::Error> {
    let (state, next_attempt_at) = match next {
        FailedCallNext::RetryAt(at) => (SyncState::Retrying, Some(at)),
        FailedCallNext::Dead => (SyncState::Dead, None),
    };
    let superseded: Option<bool> = sqlx::query_scalar(
        "UPDATE orders SET
             sync_state = CASE WHEN version > $2 THEN $9 ELSE $3 END,
             sync_attempts = CASE WHEN version > $2 THEN 0 ELSE $4 END,
             sync_next_attempt_at = CASE WHEN version > $2 THEN NULL ELSE $5 END,
             sync_last_error = $6
         WHERE id = $1 AND synced_version < version
           AND (version > $2 OR (version = $2 AND sync_state = $7 AND sync_attempts = $8))
         RETURNING version > $2",
    )
    .bind(id)
    .bind(basis.version)
    .bind(state)
    .bind(attempts)
    .bind(next_attempt_at)
    .bind(error)
    .bind(basis.sync_state)
    .bind(basis.sync_attempts)
    .bind(SyncState::Pending)
    .fetch_optional(pool)
    .await?;
    Ok(match superseded {
        Some(true) => FailureRecorded::Superseded,
        Some(false) => FailureRecorded::Applied,
        None => FailureRecorded::LeftAlone,
    })
}

/// The last resort when a database step fails in a way retrying cannot fix: the order is marked
/// dead with a fixed, plain-ASCII message (which cannot itself be rejected), so an operator sees
/// it in the dead set instead of the engine retrying forever.
pub async fn mark_dead_unrecordable(
    pool: &PgPool,
    id: OrderId,
    message: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET sync_state = $3, sync_last_error = $2, sync_next_attempt_at = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(message)
    .bind(SyncState::Dead)
    .execute(pool)
    .await?;
    Ok(())
}

/// Makes due now the orders parked for a delayed retry by a failure at or after `since` (the
/// external API went down shortly after), and gives back the attempt that failure cost: it was
/// the API's failure, not the order's. Returns how many were released.
///
/// When a failure happened is not stored: it is at most the retry's time less the shortest
/// delay of its attempt (`count^4 + 15` seconds, times `scale`), so an order parked up to the
/// schedule's jitter (10 s a count) earlier is released too, which costs it nothing. A column of
/// its own would need a migration, and a database migrated by one release refuses to start the
/// release before it (a rollback).
pub async fn release_parked_since(
    pool: &PgPool,
    since: DateTime<Utc>,
    scale: f64,
) -> Result<u64, sqlx::Error> {
    let released = sqlx::query(
        "UPDATE orders SET sync_next_attempt_at = now(),
                sync_attempts = GREATEST(sync_attempts - 1, 0)
         WHERE sync_state = $1 AND sync_next_attempt_at > now()
           AND sync_next_attempt_at
               - make_interval(secs => (power(GREATEST(sync_attempts - 1, 0), 4) + 15) * $3)
               >= $2",
    )
    .bind(SyncState::Retrying)
    .bind(since)
    .bind(scale)
    .execute(pool)
    .await?;
    Ok(released.rows_affected())
}

/// Makes the parked order whose delayed retry comes first due now, so that a down external API
/// with no call waiting for it still gets its probe: a real call, the soonest one owed. Returns
/// whether there was one.
pub async fn bring_forward_next_retry(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let moved = sqlx::query(
        "UPDATE orders SET sync_next_attempt_at = now()
         WHERE id = (SELECT id FROM orders WHERE sync_state = $1 AND sync_next_attempt_at > now()
                     ORDER BY sync_next_attempt_at LIMIT 1)",
    )
    .bind(SyncState::Retrying)
    .execute(pool)
    .await?;
    Ok(moved.rows_affected() > 0)
}

/// Parked orders whose delayed retry is due, claimed for `lease` so the next sweep does not
/// publish them again while their retry event is on its way. Returns `(id, version, attempts)`:
/// the retry event carries the attempt it is for, so a duplicate of it (published again after
/// the lease ran out) is a no-op once that attempt has been made.
pub async fn claim_due_retries(
    pool: &PgPool,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<(OrderId, i64, i32)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE orders SET sync_next_attempt_at = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM orders
                      WHERE sync_state = $3 AND sync_next_attempt_at <= now()
                      ORDER BY sync_next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, version, sync_attempts",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .bind(SyncState::Retrying)
    .fetch_all(pool)
    .await
}

/// One step of the reconciler's walk over the orders that are behind.
#[derive(Debug, Default)]
pub struct BehindScan {
    /// Orders behind, waiting (`pending`), unchanged for `quiet`, and with no outbox row (so any
    /// event of theirs is already in a stream): `(id, version)` pairs.
    pub candidates: Vec<(OrderId, i64)>,
    /// The last id looked at; `None` when the walk reached the end.
    pub last_id: Option<i64>,
}

/// Looks at the next `limit` orders that are behind (`synced_version < version`) after
/// `after_id`, read from the partial index `orders_unsynced_idx`: one step costs the same on a
/// table of any size, and a walk over every order behind takes `behind / limit` steps.
pub async fn scan_behind(
    pool: &PgPool,
    after_id: i64,
    limit: i64,
    quiet: std::time::Duration,
) -> Result<BehindScan, sqlx::Error> {
    let rows: Vec<(OrderId, i64, bool)> = sqlx::query_as(
        "WITH scanned AS (
             SELECT id FROM orders WHERE synced_version < version AND id > $1
             ORDER BY id LIMIT $2)
         SELECT o.id, o.version,
                (o.sync_state = $4 AND o.updated_at < now() - make_interval(secs => $3)
                 AND NOT EXISTS (SELECT 1 FROM outbox b WHERE b.order_id = o.id))
         FROM orders o JOIN scanned USING (id)
         ORDER BY o.id",
    )
    .bind(after_id)
    .bind(limit)
    .bind(quiet.as_secs_f64())
    .bind(SyncState::Pending)
    .fetch_all(pool)
    .await?;
    let last_id = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|row| row.0.get()))
        .flatten();
    let candidates = rows
        .into_iter()
        .filter(|row| row.2)
        .map(|(id, version, _)| (id, version))
        .collect();
    Ok(BehindScan {
        candidates,
        last_id,
    })
}

/// Of `orders` (`(id, version)` pairs), those still behind, still `pending`, still at that
/// version and still without an outbox row: the reconciler's suspects that nothing has touched
/// since they were found.
pub async fn still_behind(
    pool: &PgPool,
    orders: &[(OrderId, i64)],
) -> Result<Vec<(OrderId, i64)>, sqlx::Error> {
    let (ids, versions): (Vec<OrderId>, Vec<i64>) = orders.iter().copied().unzip();
    sqlx::query_as(
        "SELECT o.id, o.version FROM orders o
         JOIN unnest($1::bigint[], $2::bigint[]) AS s(id, version)
           ON o.id = s.id AND o.version = s.version
         WHERE o.synced_version < o.version AND o.sync_state = $3
           AND NOT EXISTS (SELECT 1 FROM outbox b WHERE b.order_id = o.id)
         ORDER BY o.id",
    )
    .bind(&ids)
    .bind(&versions)
    .bind(SyncState::Pending)
    .fetch_all(pool)
    .await
}
