//! Figure 6: the seeder against PostgreSQL's COPY.

use std::time::Instant;

use sqlx::postgres::PgPoolCopyExt;

use super::Row;
use crate::harness::BenchDb;
use crate::Scale;

/// Figure 6: the seeder against PostgreSQL's COPY of the same kind of rows from a file.
pub async fn seeder_speed(scale: &Scale) -> anyhow::Result<Row> {
    let db = BenchDb::create().await?;
    let orders = scale.seeder_orders;
    let csv = std::env::temp_dir().join(format!("{}.csv", db.name));
    write_csv(&csv, orders)?;
    let copy_started = Instant::now();
    let mut copy = db
        .pool
        .copy_in_raw(
            "COPY orders (status, placed_at, delivered_at, amount, tax, street_address, city, state, country, pincode)
             FROM STDIN (FORMAT csv)",
        )
        .await?;
    let file = tokio::fs::File::open(&csv).await?;
    copy.read_from(file).await?;
    copy.finish().await?;
    let copy_rate = orders as f64 / copy_started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&csv);
    sqlx::query("TRUNCATE orders, outbox")
        .execute(&db.pool)
        .await?;

    let seeded = Instant::now();
    seeder::write::insert_orders(&db.pool, orders, false, |_| {}).await?;
    let seeder_rate = orders as f64 / seeded.elapsed().as_secs_f64();
    sqlx::query("TRUNCATE orders, outbox")
        .execute(&db.pool)
        .await?;
    let with_outbox = Instant::now();
    seeder::write::insert_orders(&db.pool, orders, true, |_| {}).await?;
    let with_outbox_rate = orders as f64 / with_outbox.elapsed().as_secs_f64();
    db.drop_now().await;
    let ratio = seeder_rate / copy_rate;
    Ok(Row {
        figure: "6 seeder",
        measured: format!(
            "{seeder_rate:.0} orders/s (SYNC=false), {with_outbox_rate:.0} orders/s with outbox rows ({orders} orders)"
        ),
        limit: format!("COPY {copy_rate:.0} rows/s"),
        goal: format!("ratio {ratio:.2} >= 0.5"),
        met: ratio >= 0.5,
    })
}

/// The same kind of rows the seeder makes, as CSV.
fn write_csv(path: &std::path::Path, orders: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let now = chrono::Utc::now();
    let mut rng = rand::rng();
    let mut left = orders;
    while left > 0 {
        let n = left.min(10_000);
        let c = seeder::generate::OrderColumns::fake(n as usize, now, &mut rng);
        for i in 0..c.len() {
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                c.status[i],
                c.placed_at[i].to_rfc3339(),
                c.delivered_at[i]
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default(),
                c.amount[i],
                c.tax[i],
                quote(&c.street_address[i]),
                quote(&c.city[i]),
                quote(&c.state[i]),
                quote(&c.country[i]),
                quote(&c.pincode[i]),
            )?;
        }
        left -= n;
    }
    out.flush()?;
    Ok(())
}
