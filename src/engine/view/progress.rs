//! The one-line summary the engine logs every few seconds while events are coming or waiting:
//! synced per second, the backlog, the events in flight and the lag.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::engine::backlog::dispatcher::InFlight;
use crate::engine::keys::Keys;
use crate::engine::view::stats::shard_stats;
use crate::metrics::SyncMetrics;

/// How often the summary line comes while there is work.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Logs `synced/s, backlog, lag` every few seconds while events are coming or waiting.
pub async fn log_progress(
    metrics: Arc<SyncMetrics>,
    in_flight: InFlight,
    mut redis: ConnectionManager,
    keys: Keys,
    shutdown: CancellationToken,
) {
    let (mut last_synced, mut last_received) =
        (metrics.synced.get(), metrics.events_received.get());
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(SUMMARY_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let (synced, received) = (metrics.synced.get(), metrics.events_received.get());
        let backlog: u64 = shard_stats(&mut redis, &keys)
            .await
            .map(|shards| shards.iter().map(|s| s.length).sum())
            .unwrap_or(0);
        if received == last_received && backlog == 0 && in_flight.count() == 0 {
            continue; // idle: say nothing
        }
        let lag = metrics.lag_summary();
        tracing::info!(
            synced_per_sec = format!(
                "{:.1}",
                (synced - last_synced) as f64 / SUMMARY_EVERY.as_secs_f64()
            ),
            backlog,
            in_flight = in_flight.count(),
            lag_p50_ms = lag.p50,
            lag_p95_ms = lag.p95,
            "sync progress"
        );
        (last_synced, last_received) = (synced, received);
    }
}
