//! Figure 7: ingest, `POST /orders` against a plain sqlx loop.

use std::time::Instant;

use futures_util::StreamExt;
use sqlx::postgres::PgPoolOptions;

use super::{Row, CONCURRENCY};
use crate::harness::{percentile, start_fake, start_service, BenchDb, ChildProcess};
use crate::Scale;

/// Figure 7: `POST /orders` at a fixed concurrency, against a plain sqlx loop running the same
/// two-insert transaction at the same concurrency and pool size.
pub async fn ingest(scale: &Scale) -> anyhow::Result<Row> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    // The API alone: the engine would compete for the same two cores.
    let service = start_service(
        &db,
        &fake,
        &[("SYNC_ENGINE", "false"), ("DATABASE_MAX_CONNECTIONS", "20")],
    )
    .await?;
    let (api_rate, api_p99) = drive_api(&service, scale.ingest_duration).await?;
    drop(service);
    let (sql_rate, sql_p99) = drive_sql(&db.url, scale.ingest_duration).await?;
    drop(fake);
    db.drop_now().await;
    let ratio = api_rate / sql_rate;
    Ok(Row {
        figure: "7 ingest (POST /orders, concurrency 64)",
        measured: format!("{api_rate:.0} req/s, p99 {api_p99:.1} ms"),
        limit: format!("sqlx loop {sql_rate:.0} tx/s, p99 {sql_p99:.1} ms"),
        goal: format!("ratio {ratio:.2} >= 0.6"),
        met: ratio >= 0.6,
    })
}

const ORDER_JSON: &str = r#"{"status": "delivered", "placed_at": "2025-06-01T10:00:00Z", "delivered_at": "2025-06-04T10:00:00Z",
    "amount": 1000, "tax": 180, "street_address": "12 MG Road", "city": "Pune", "state": "Maharashtra",
    "country": "India", "pincode": "411001"}"#;

async fn drive_api(
    service: &ChildProcess,
    duration: std::time::Duration,
) -> anyhow::Result<(f64, f64)> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    let url = service.url("/orders");
    measure(duration, move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let response = http
                .post(&url)
                .header("content-type", "application/json")
                .body(ORDER_JSON)
                .send()
                .await?;
            anyhow::ensure!(
                response.status() == 201,
                "POST /orders answered {}",
                response.status()
            );
            Ok(())
        }
    })
    .await
}

async fn drive_sql(url: &str, duration: std::time::Duration) -> anyhow::Result<(f64, f64)> {
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await?;
    measure(duration, move || {
        let pool = pool.clone();
        async move {
            let mut txn = pool.begin().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO orders (status, placed_at, delivered_at, amount, tax, street_address, city, state, country, pincode)
                 VALUES ('delivered', '2025-06-01T10:00:00Z', '2025-06-04T10:00:00Z', 1000, 180, '12 MG Road', 'Pune',
                         'Maharashtra', 'India', '411001') RETURNING id",
            )
            .fetch_one(&mut *txn)
            .await?;
            sqlx::query("INSERT INTO outbox (order_id, version, action) VALUES ($1, 1, 'create')")
                .bind(id)
                .execute(&mut *txn)
                .await?;
            txn.commit().await?;
            Ok(())
        }
    })
    .await
}

/// Runs `op` from `CONCURRENCY` loops for `duration`; returns (operations per second, p99 ms).
async fn measure<F, Fut>(duration: std::time::Duration, op: F) -> anyhow::Result<(f64, f64)>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let end = Instant::now() + duration;
    let started = Instant::now();
    let loops = (0..CONCURRENCY).map(|_| {
        let op = op.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < end {
                let at = Instant::now();
                op().await?;
                latencies.push(at.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(latencies)
        })
    });
    let mut all = Vec::new();
    let mut results = futures_util::stream::iter(loops).buffer_unordered(CONCURRENCY);
    while let Some(result) = results.next().await {
        all.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    Ok((all.len() as f64 / elapsed, percentile(&all, 0.99)))
}
