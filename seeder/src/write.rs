//! Writing seeded orders: large batches, one statement each, several batches in flight.
//!
//! A batch is one `INSERT ... SELECT FROM unnest(...)` whose `RETURNING` feeds the outbox insert
//! in the same statement, so a seeded order gets its outbox row exactly as an API-made one does,
//! in one round trip per batch.

use futures_util::{stream, StreamExt, TryStreamExt};
use sqlx::PgPool;

use crate::generate::OrderColumns;

/// Rows per statement: large enough to amortise the round trip, small enough to stream.
const BATCH_SIZE: u64 = 5_000;
/// Batches written at once; PostgreSQL parses and inserts them in parallel.
pub const CONNECTIONS: u32 = 3;

const INSERT_WITH_OUTBOX: &str = r#"
WITH created AS (
    INSERT INTO orders (status, placed_at, delivered_at, amount, tax,
                        street_address, city, state, country, pincode)
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::bigint[], $5::bigint[],
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::text[])
    RETURNING id, version
)
INSERT INTO outbox (order_id, version, action)
SELECT id, version, 'create' FROM created WHERE $11
"#;

/// Empties the orders table, its outbox rows and its attempt log, as the reference's
/// `Order.delete_all` (which sent no delete syncs either). Returns how many orders there were.
pub async fn delete_all_orders(pool: &PgPool) -> anyhow::Result<u64> {
    let mut txn = pool.begin().await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE deleted_at IS NULL")
        .fetch_one(&mut *txn)
        .await?;
    // TRUNCATE, not DELETE: a million rows go in milliseconds. Ids keep growing (no RESTART
    // IDENTITY) so events still in Redis can never be mistaken for a new order's.
    sqlx::query("TRUNCATE orders, outbox, sync_attempts")
        .execute(&mut *txn)
        .await?;
    txn.commit().await?;
    Ok(count as u64)
}

/// Inserts `count` fake orders (with outbox rows when `sync`), calling `progress` after each batch.
pub async fn insert_orders(
    pool: &PgPool,
    count: u64,
    sync: bool,
    progress: impl Fn(u64),
) -> anyhow::Result<u64> {
    let now = chrono::Utc::now();
    let batches = (0..count)
        .step_by(BATCH_SIZE as usize)
        .map(|start| (count - start).min(BATCH_SIZE));
    stream::iter(batches)
        .map(|size| async move {
            // Generating takes about as long as inserting, so it runs on the blocking pool
            // while other batches are being written.
            let columns = tokio::task::spawn_blocking(move || {
                OrderColumns::fake(size as usize, now, &mut rand::rng())
            })
            .await?;
            insert_batch(pool, &columns, sync).await
        })
        .buffer_unordered(CONNECTIONS as usize)
        .map_ok(|inserted| {
            progress(inserted);
            inserted
        })
        .try_fold(0, |total, inserted| async move { Ok(total + inserted) })
        .await
}

async fn insert_batch(pool: &PgPool, columns: &OrderColumns, sync: bool) -> anyhow::Result<u64> {
    sqlx::query(INSERT_WITH_OUTBOX)
        .bind(&columns.status)
        .bind(&columns.placed_at)
        .bind(&columns.delivered_at)
        .bind(&columns.amount)
        .bind(&columns.tax)
        .bind(&columns.street_address)
        .bind(&columns.city)
        .bind(&columns.state)
        .bind(&columns.country)
        .bind(&columns.pincode)
        .bind(sync)
        .execute(pool)
        .await?;
    Ok(columns.len() as u64)
}
