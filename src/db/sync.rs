//! The sync engine's queries: reading an order as the actor needs it and recording the outcome
//! of its calls. Plain SQL on the sqlx pool under sea-orm: these run once or twice per call on
//! the hot path, where conditional updates (`GREATEST`, `CASE`) say exactly what they do.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::domain::SyncState;
use crate::external::payload::OrderSnapshot;

/// An order as the sync engine sees it, tombstones included.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SyncRow {
    pub id: i64,
    pub status: String,
    pub placed_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub amount: i64,
    pub tax: i64,
    pub street_address: String,
    pub city: String,
    pub state: String,
    pub country: String,
    pub pincode: String,
    pub version: i64,
    pub deleted: bool,
    pub sync_state: String,
    pub synced_version: i64,
    pub sync_attempts: i32,
    pub create_sent: bool,
    /// This very read marked the create as sent (see [`load_marking_create`]).
    pub marked_now: bool,
}

impl SyncRow {
    pub fn sync_state(&self) -> Option<SyncState> {
        self.sync_state.parse().ok()
    }

    pub fn snapshot(&self) -> OrderSnapshot {
        OrderSnapshot {
            id: self.id,
            version: self.version,
            status: self.status.clone(),
            placed_at: self.placed_at,
            delivered_at: self.delivered_at,
            amount: self.amount,
            tax: self.tax,
            street_address: self.street_address.clone(),
            city: self.city.clone(),
            state: self.state.clone(),
            country: self.country.clone(),
            pincode: self.pincode.clone(),
        }
    }
}

/// The order's current row, or `None` when it no longer exists (its delete was synced).
pub async fn load(pool: &PgPool, id: i64) -> Result<Option<SyncRow>, sqlx::Error> {
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
/// (BENCHMARKS.md, figure 1). The outer SELECT sees the row as it was before the CTE's update.
pub async fn load_marking_create(pool: &PgPool, id: i64) -> Result<Option<SyncRow>, sqlx::Error> {
    sqlx::query_as(
        "WITH marked AS (
             UPDATE orders SET create_sent_at = now()
             WHERE id = $1 AND create_sent_at IS NULL AND synced_version = 0
               AND deleted_at IS NULL AND sync_state = 'pending'
             RETURNING id)
         SELECT id, status, placed_at, delivered_at, amount, tax, street_address, city, state, country,
                pincode, version, deleted_at IS NOT NULL AS deleted, sync_state, synced_version,
                sync_attempts, (create_sent_at IS NOT NULL OR EXISTS (SELECT 1 FROM marked)) AS create_sent,
                EXISTS (SELECT 1 FROM marked) AS marked_now
         FROM orders WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// Written before the first `POST` goes out, so a crash cannot hide that it may have arrived.
pub async fn mark_create_sent(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
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
    id: i64,
    version: i64,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE orders
         SET synced_version = GREATEST(synced_version, $2),
             sync_state = CASE WHEN version <= GREATEST(synced_version, $2) THEN 'synced' ELSE 'pending' END,
             sync_attempts = 0, sync_last_error = NULL, synced_at = now(), sync_next_attempt_at = NULL
         WHERE id = $1
         RETURNING version",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// Removes a tombstone whose delete is done (or was never owed).
pub async fn purge_tombstone(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM orders WHERE id = $1 AND deleted_at IS NOT NULL")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Parks the order until `next_attempt_at`, counting the attempt.
pub async fn record_retrying(
    pool: &PgPool,
    id: i64,
    attempts: i32,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET sync_state = 'retrying', sync_attempts = $2, sync_last_error = $3,
                sync_next_attempt_at = $4
         WHERE id = $1",
    )
    .bind(id)
    .bind(attempts)
    .bind(error)
    .bind(next_attempt_at)
    .execute(pool)
    .await?;
    Ok(())
}

/// Gives up on the order until an operator (or a new change) retries it.
pub async fn record_dead(
    pool: &PgPool,
    id: i64,
    attempts: i32,
    error: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET sync_state = 'dead', sync_attempts = $2, sync_last_error = $3,
                sync_next_attempt_at = NULL
         WHERE id = $1",
    )
    .bind(id)
    .bind(attempts)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Parked orders whose delayed retry is due, claimed for `lease` so the next sweep does not
/// publish them again while their retry event is on its way. Returns `(id, version)` pairs.
pub async fn claim_due_retries(
    pool: &PgPool,
    limit: i64,
    lease: std::time::Duration,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE orders SET sync_next_attempt_at = now() + make_interval(secs => $2)
         WHERE id IN (SELECT id FROM orders
                      WHERE sync_state = 'retrying' AND sync_next_attempt_at <= now()
                      ORDER BY sync_next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         RETURNING id, version",
    )
    .bind(limit)
    .bind(lease.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Orders that are behind (`synced_version < version`) and waiting (`pending`) but untouched for
/// `quiet`: candidates whose events were lost with Redis. Returns `(id, version)` pairs.
pub async fn stale_pending(
    pool: &PgPool,
    after_id: i64,
    limit: i64,
    quiet: std::time::Duration,
) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, version FROM orders
         WHERE synced_version < version AND sync_state = 'pending' AND id > $1
           AND updated_at < now() - make_interval(secs => $3)
         ORDER BY id LIMIT $2",
    )
    .bind(after_id)
    .bind(limit)
    .bind(quiet.as_secs_f64())
    .fetch_all(pool)
    .await
}
