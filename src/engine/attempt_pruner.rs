//! Keeps the attempt log (`crate::db::attempts`) bounded: every `ATTEMPTS_PRUNE_INTERVAL_SECS`,
//! down to the newest `ATTEMPTS_KEPT_PER_ORDER` attempts of each order, and nothing older than
//! `ATTEMPTS_RETENTION_DAYS`. Each statement deletes at most a page, so no lock is held for long
//! and the engine's own writes never wait behind a pruning; a pass that finds more repeats at
//! once. Every syncing instance runs it: the per-order pass is taken by one at a time (the
//! others skip it), and the age pass is harmless to repeat.

use std::sync::Arc;

use crate::config::AttemptRetention;
use crate::db::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::attempts;
use crate::db::QueryError;
use crate::metrics::SyncMetrics;

/// Attempts looked at (or deleted) per statement.
const PAGE: i64 = 1_000;
/// Most statements of each kind per pass: a backlog of pruning is worked off over several passes
/// rather than in one long burst.
const MOST_PAGES_PER_PASS: usize = 100;

/// Prunes until shutdown. Errors are logged and the next pass tries again.
pub async fn keep_pruning(
    pool: PgPool,
    retention: AttemptRetention,
    metrics: Arc<SyncMetrics>,
    shutdown: CancellationToken,
) {
    loop {
        match prune_once(&pool, retention).await {
            Ok(0) => {}
            Ok(deleted) => {
                metrics.attempts_pruned.inc_by(deleted);
                tracing::debug!(deleted, "pruned the attempt log");
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot prune the attempt log; trying again later")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retention.every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One pass: the per-order limit, then the age limit. Returns how many attempts it deleted.
pub async fn prune_once(pool: &PgPool, retention: AttemptRetention) -> Result<u64, QueryError> {
    let mut deleted = 0;
    // With the log off there is still a log from before to age out.
    if retention.kept_per_order > 0 {
        let keep = i64::try_from(retention.kept_per_order).unwrap_or(i64::MAX);
        for _ in 0..MOST_PAGES_PER_PASS {
            let pass = attempts::prune_excess(pool, keep, PAGE).await?;
            deleted += pass.deleted;
            if pass.looked_at < PAGE as u64 {
                break;
            }
        }
    }
    let oldest_kept = chrono::Duration::from_std(retention.max_age)
        .ok()
        .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    for _ in 0..MOST_PAGES_PER_PASS {
        let pass = attempts::prune_older_than(pool, oldest_kept, PAGE).await?;
        deleted += pass;
        if pass < PAGE as u64 {
            break;
        }
    }
    Ok(deleted)
}
