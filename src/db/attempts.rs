//! The attempt log (`sync_attempts`): every call attempt the engine made, written in batches by
//! `engine::actors::batched`, read by the operator's routes, and pruned in the background by
//! `engine::attempt_pruner` in short statements (no long locks): to the last
//! `ATTEMPTS_KEPT_PER_ORDER` attempts per order, and nothing older than
//! `ATTEMPTS_RETENTION_DAYS`.

use crate::domain::OrderId;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One attempt as the engine records it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    pub order_id: OrderId,
    pub version: i64,
    pub verb: &'static str,
    pub outcome: AttemptOutcome,
    /// The answer's status, when one came.
    pub http_status: Option<u16>,
    /// Cleaned by the client: bounded, no control characters.
    pub excerpt: String,
    pub duration_ms: u32,
    pub instance: String,
    pub attempted_at: DateTime<Utc>,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// A 2xx (or a `DELETE` answered 404: already gone).
    Ok,
    /// Any other status (in `http_status`).
    Status,
    Timeout,
    /// No answer: the connection could not be made or broke.
    Connect,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Status => "status",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
        }
    }
}

/// One recorded attempt, as the API shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Attempt {
    /// Increases with every attempt recorded: the list's cursor.
    pub id: i64,
    #[schema(value_type = i64)]
    pub order_id: OrderId,
    /// The order's version the call carried.
    pub version: i64,
    /// `POST`, `PUT` or `DELETE`.
    pub verb: String,
    /// `ok`, `status` (an error answer: see `http_status`), `timeout` or `connect`.
    pub outcome: String,
    pub http_status: Option<i16>,
    /// The start of the answer's body or of the error, cleaned (at most 300 characters, no
    /// control characters).
    pub excerpt: String,
    pub duration_ms: i32,
    /// The instance that made the call.
    pub instance: String,
    pub attempted_at: DateTime<Utc>,
}

/// The statement that writes attempts, from the nine arrays of [`AttemptColumns`] bound as
/// `$1` to `$9`. A macro, so [`crate::db::sync::record_many_synced`] can run it in the same
/// statement as the successes it records (`concat!` takes literals only).
macro_rules! insert_attempts_sql {
    () => {
        "INSERT INTO sync_attempts
             (order_id, version, verb, outcome, http_status, excerpt, duration_ms, instance,
              attempted_at)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[],
                              $5::smallint[], $6::text[], $7::int[], $8::text[],
                              $9::timestamptz[])"
    };
}
pub(crate) use insert_attempts_sql;

/// Attempts as the nine arrays [`insert_attempts_sql`] takes.
pub(crate) struct AttemptColumns {
    order_ids: Vec<OrderId>,
    versions: Vec<i64>,
    verbs: Vec<&'static str>,
    outcomes: Vec<&'static str>,
    statuses: Vec<Option<i16>>,
    excerpts: Vec<String>,
    durations: Vec<i32>,
    instances: Vec<String>,
    times: Vec<DateTime<Utc>>,
}

impl AttemptColumns {
    pub(crate) fn of(attempts: &[NewAttempt]) -> Self {
        Self {
            order_ids: attempts.iter().map(|a| a.order_id).collect(),
            versions: attempts.iter().map(|a| a.version).collect(),
            verbs: attempts.iter().map(|a| a.verb).collect(),
            outcomes: attempts.iter().map(|a| a.outcome.as_str()).collect(),
            statuses: attempts
                .iter()
                .map(|a| a.http_status.and_then(|s| i16::try_from(s).ok()))
                .collect(),
            excerpts: attempts.iter().map(|a| a.excerpt.clone()).collect(),
            durations: attempts
                .iter()
                .map(|a| i32::try_from(a.duration_ms).unwrap_or(i32::MAX))
                .collect(),
            instances: attempts.iter().map(|a| a.instance.clone()).collect(),
            times: attempts.iter().map(|a| a.attempted_at).collect(),
        }
    }

    /// Binds the nine arrays, in order, to `query` (a `query` or a `query_as`).
    pub(crate) fn bind_to<Q: BindArrays>(self, query: Q) -> Q {
        query
            .bind_array(self.order_ids)
            .bind_array(self.versions)
            .bind_array(self.verbs)
            .bind_array(self.outcomes)
            .bind_array(self.statuses)
            .bind_array(self.excerpts)
            .bind_array(self.durations)
            .bind_array(self.instances)
            .bind_array(self.times)
    }
}

/// `bind` on both `sqlx::query` and `sqlx::query_as`, which are different types.
pub(crate) trait BindArrays: Sized {
    fn bind_array<T>(self, value: Vec<T>) -> Self
    where
        Vec<T>:
            for<'e> sqlx::Encode<'e, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static;
}

impl<'q> BindArrays for sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn bind_array<T>(self, value: Vec<T>) -> Self
    where
        Vec<T>:
            for<'e> sqlx::Encode<'e, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
    {
        self.bind(value)
    }
}

impl<'q, O> BindArrays
    for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
{
    fn bind_array<T>(self, value: Vec<T>) -> Self
    where
        Vec<T>:
            for<'e> sqlx::Encode<'e, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + 'static,
    {
        self.bind(value)
    }
}

/// Writes `attempts` in one statement.
pub async fn insert_many(pool: &PgPool, attempts: &[NewAttempt]) -> Result<(), sqlx::Error> {
    if attempts.is_empty() {
        return Ok(());
    }
    AttemptColumns::of(attempts)
        .bind_to(sqlx::query(insert_attempts_sql!()))
        .execute(pool)
        .await?;
    Ok(())
}

/// The order's attempts, newest first, older than the attempt `before` when given.
pub async fn list_for_order(
    pool: &PgPool,
    order_id: OrderId,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Attempt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, order_id, version, verb, outcome, http_status, excerpt, duration_ms, instance,
                attempted_at
         FROM sync_attempts
         WHERE order_id = $1 AND ($2::bigint IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(order_id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What one pass of the per-order pruning did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExcessPruned {
    /// Attempts deleted.
    pub deleted: u64,
    /// New attempts looked at: fewer than the page means the pruner has caught up.
    pub looked_at: u64,
}

/// Deletes, for the orders of the next `page` attempts recorded since the last pass, all but
/// their newest `keep` attempts, and moves the mark past those `page`. One short statement; an
/// order over the limit always has an attempt after the mark, so no pass reads the whole table.
/// Another instance pruning at the same moment holds the mark's row: this pass then does nothing
/// (`SKIP LOCKED`), and nothing waits.
///
/// An attempt committed after a later one was already passed by the mark (two batches committing
/// out of order) is not looked at; its order is pruned at its next attempt, and by age anyway.
pub async fn prune_excess(
    pool: &PgPool,
    keep: i64,
    page: i64,
) -> Result<ExcessPruned, sqlx::Error> {
    let (deleted, looked_at): (i64, i64) = sqlx::query_as(
        "WITH mark AS (SELECT through_id FROM sync_attempts_pruned FOR UPDATE SKIP LOCKED),
         new AS (SELECT a.id, a.order_id FROM sync_attempts a, mark
                 WHERE a.id > mark.through_id ORDER BY a.id LIMIT $2),
         touched AS (SELECT DISTINCT order_id FROM new),
         doomed AS (SELECT old.id FROM touched t CROSS JOIN LATERAL (
                        SELECT id FROM sync_attempts WHERE order_id = t.order_id
                        ORDER BY id DESC OFFSET $1) old),
         deleted AS (DELETE FROM sync_attempts WHERE id IN (SELECT id FROM doomed) RETURNING 1),
         moved AS (UPDATE sync_attempts_pruned SET through_id = (SELECT max(id) FROM new)
                   WHERE EXISTS (SELECT 1 FROM new) RETURNING 1)
         SELECT (SELECT count(*) FROM deleted), (SELECT count(*) FROM new)",
    )
    .bind(keep)
    .bind(page)
    .fetch_one(pool)
    .await?;
    Ok(ExcessPruned {
        deleted: deleted.max(0) as u64,
        looked_at: looked_at.max(0) as u64,
    })
}

/// Deletes those of the oldest `page` attempts (by id, which follows time) made before `before`.
/// Reading only the oldest `page` keeps each statement short whatever the table's size; the
/// pruner repeats it while it deletes a whole page.
pub async fn prune_older_than(
    pool: &PgPool,
    before: DateTime<Utc>,
    page: i64,
) -> Result<u64, sqlx::Error> {
    let deleted = sqlx::query(
        "DELETE FROM sync_attempts WHERE id IN (
             SELECT id FROM (SELECT id, attempted_at FROM sync_attempts ORDER BY id LIMIT $2) oldest
             WHERE attempted_at < $1)",
    )
    .bind(before)
    .bind(page)
    .execute(pool)
    .await?;
    Ok(deleted.rows_affected())
}

/// An order's sync columns, tombstones included, for `GET /orders/{id}/sync`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncColumns {
    pub version: i64,
    pub synced_version: i64,
    pub sync_state: crate::domain::SyncState,
    pub sync_attempts: i32,
    pub sync_last_error: Option<String>,
    pub synced_at: Option<DateTime<Utc>>,
    pub sync_next_attempt_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub deleted: bool,
}

/// The order's sync columns; `None` when its row is gone (its delete was synced).
pub async fn sync_columns(
    pool: &PgPool,
    order_id: OrderId,
) -> Result<Option<SyncColumns>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, synced_version, sync_state, sync_attempts, sync_last_error, synced_at,
                sync_next_attempt_at, updated_at, deleted_at IS NOT NULL AS deleted
         FROM orders WHERE id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await
}
