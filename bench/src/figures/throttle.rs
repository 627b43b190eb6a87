//! Figure 4: throttle accuracy, and the rate measurement figure 8 shares.

use std::time::Duration;

use serde_json::Value;

use super::{start_services, Row};
use crate::harness::{get_json, start_fake, BenchDb};
use crate::Scale;

/// Figure 4: the achieved call rate against the configured one, with load far above it.
pub async fn throttle(scale: &Scale) -> anyhow::Result<Row> {
    let (rate, burst) = (scale.throttle_rate, scale.throttle_burst);
    let seconds = scale.throttle_duration.as_secs();
    let (achieved, busiest) = measure_rate(scale, 1, scale.throttle_duration).await?;
    let error = (achieved - rate as f64).abs() / rate as f64;
    Ok(Row {
        figure: "4 throttle accuracy",
        measured: format!("{achieved:.0} calls/s over {seconds} s; busiest 1 s window {busiest}"),
        limit: format!("{rate}/s, burst {burst}"),
        goal: format!(
            "within 2% ({:.1}%), window <= {}",
            error * 100.0,
            rate + burst
        ),
        met: error <= 0.02 && busiest <= rate + burst,
    })
}

/// `count` instances with the figure's limit and load far above it, measured for `window` after
/// the first second: the achieved mean rate and the busiest 1 s window.
pub(super) async fn measure_rate(
    scale: &Scale,
    count: usize,
    window: Duration,
) -> anyhow::Result<(f64, u64)> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let (rate, burst) = (scale.throttle_rate, scale.throttle_burst);
    let seconds = window.as_secs();
    seeder::write::insert_orders(&db.pool, rate * (seconds + 4), true, |_| {}).await?;
    let (rate_s, burst_s) = (rate.to_string(), burst.to_string());
    let limits = [
        ("RATE_LIMIT_PER_SEC", rate_s.as_str()),
        ("RATE_LIMIT_BURST", burst_s.as_str()),
        ("MAX_CONCURRENT_CALLS", "64"),
        // Two pools each: three instances at 15 stay under PostgreSQL's 100 connections.
        ("DATABASE_MAX_CONNECTIONS", "15"),
    ];
    let services = start_services(&db, &fake, &limits, count).await?;
    // The measurement window itself (not a wait for anything): the first second, then `window`.
    tokio::time::sleep(window + Duration::from_millis(1500)).await;
    let timeline = get_json(&fake.url("/_fake/timeline")).await?;
    drop(services);
    drop(fake);
    db.drop_now().await;
    rate_from_timeline(&timeline, seconds)
}

/// From the fake's timeline (calls per 100 ms slot): the mean rate over `seconds` after the
/// first second (which holds the burst), and the most calls in any 1 s window.
fn rate_from_timeline(timeline: &Value, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let slots: Vec<(u64, u64)> = timeline["calls"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let Some(first) = slots.iter().map(|(slot, _)| *slot).min() else {
        anyhow::bail!("the fake received no calls");
    };
    let in_range = |from: u64, to: u64| {
        slots
            .iter()
            .filter(|(s, _)| *s >= from && *s < to)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    let achieved = in_range(first + 10, first + 10 + seconds * 10) as f64 / seconds as f64;
    let last = slots.iter().map(|(slot, _)| *slot).max().unwrap_or(first);
    let busiest = (first..=last.saturating_sub(9))
        .map(|start| in_range(start, start + 10))
        .max()
        .unwrap_or(0);
    Ok((achieved, busiest))
}
