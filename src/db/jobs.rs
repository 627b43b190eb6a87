//! The operator's jobs (audits and full resyncs, `crate::engine::jobs`), what an audit finds,
//! and the cluster-wide pause switch.
//!
//! The writes that change orders (a resync's page, an audit's repairs) are in
//! [`super::changes`] (`Changes::queue_resync_page`, `Changes::repair_copy`,
//! `Changes::repair_stray`): a repair is a new version of the order, written with its outbox row
//! in one statement, as any change is, and the engine then syncs it through the normal path (one
//! actor per order, the rate limit, compare-and-set outcomes, the reconciler if its event is
//! lost).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::codec::text_column;
use crate::domain::{serialize_as_str, SyncState};

/// The highest order id ever handed out (the sequence's, so ids deleted at the top count), or
/// the highest id present if that is higher; 0 on an empty table.
pub(super) const HIGHEST_ID: &str = "SELECT GREATEST(
        COALESCE(pg_sequence_last_value(pg_get_serial_sequence('orders', 'id')), 0),
        COALESCE((SELECT max(id) FROM orders), 0)) AS highest";

/// What a job does: check the external copies, or send every order again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum JobKind {
    Audit,
    Resync,
}

impl JobKind {
    pub const ALL: [Self; 2] = [Self::Audit, Self::Resync];

    /// The name stored in `sync_jobs.kind`, shown in the API and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Resync => "resync",
        }
    }
}

/// Where a job stands: its runner is queuing work, or it has queued all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum JobStatus {
    Running,
    Done,
}

impl JobStatus {
    pub const ALL: [Self; 2] = [Self::Running, Self::Done];

    /// The name stored in `sync_jobs.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Done => "done",
        }
    }
}

/// Both read from the database by their names, which only this module writes.
macro_rules! named_by_as_str {
    ($enum:ty, $what:literal) => {
        impl std::str::FromStr for $enum {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|value| value.as_str() == s)
                    .ok_or_else(|| format!("{s:?} is not a job {}", $what))
            }
        }

        impl std::fmt::Display for $enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        text_column!($enum);
        serialize_as_str!($enum);
    };
}
named_by_as_str!(JobKind, "kind");
named_by_as_str!(JobStatus, "status");

/// One job, as stored and as `GET /admin/jobs/{id}` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct Job {
    pub id: i64,
    pub kind: JobKind,
    pub status: JobStatus,
    /// Started by `AUDIT_INTERVAL_SECS` rather than by an operator.
    pub sampled: bool,
    pub from_id: i64,
    pub to_id: i64,
    /// Every id below this one has been queued.
    pub next_id: i64,
    /// Ids (audit: every id in the range, deleted ones included) or orders (resync) in the range
    /// when the job was created.
    pub total: i64,
    /// Ids queued for a check (audit) or orders queued for a resend (resync).
    pub queued: i64,
    pub checked: i64,
    pub matching: i64,
    /// Orders with a sync pending, retrying or dead (not compared), or changed during the check.
    pub skipped: i64,
    /// Checks whose `GET` failed or answered something other than a JSON object.
    pub errors: i64,
    pub repaired_missing: i64,
    pub repaired_different: i64,
    pub repaired_stray: i64,
    /// The instance working it.
    pub runner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "id, kind, status, sampled, from_id, to_id, next_id, total, queued, \
    checked, matching, skipped, errors, repaired_missing, repaired_different, repaired_stray, \
    runner, created_at, updated_at, finished_at";

/// Creates a job over `from..=to` (default: every id ever handed out). An audit's range ends at
/// the highest id handed out: a stray remote copy above it cannot be one of our deleted orders.
pub async fn create_job(
    pool: &PgPool,
    kind: JobKind,
    from: Option<i64>,
    to: Option<i64>,
) -> Result<Job, sqlx::Error> {
    let mut txn = pool.begin().await?;
    let job = create_in(&mut txn, kind, from, to, false).await?;
    txn.commit().await?;
    Ok(job)
}

async fn create_in(
    txn: &mut sqlx::PgConnection,
    kind: JobKind,
    from: Option<i64>,
    to: Option<i64>,
    sampled: bool,
) -> Result<Job, sqlx::Error> {
    // Audited: only constants are formatted in.
    let sql = format!(
        "WITH top AS ({HIGHEST_ID}),
              range AS (SELECT $2::bigint AS lo, LEAST(COALESCE($3::bigint, highest), highest) AS up
                        FROM top)
         INSERT INTO sync_jobs (kind, sampled, from_id, to_id, next_id, total)
         SELECT $1, $4, lo, up, lo,
                CASE WHEN $1 = 'audit' THEN GREATEST(up - lo + 1, 0)
                     ELSE (SELECT count(*) FROM orders WHERE id BETWEEN lo AND up) END
         FROM range
         RETURNING {JOB_COLUMNS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(kind)
        .bind(from.unwrap_or(1))
        .bind(to)
        .bind(sampled)
        .fetch_one(txn)
        .await
}

/// Starts the next continuous audit (`AUDIT_INTERVAL_SECS`): `sample` ids after where the last
/// one ended, from 1 again past the highest id. `None` while one runs or the last started less
/// than `every` ago. One instance at a time decides (an advisory lock), so two never both start one.
pub async fn start_sampled_audit(
    pool: &PgPool,
    every: std::time::Duration,
    sample: u64,
) -> Result<Option<Job>, sqlx::Error> {
    let mut txn = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(7316001)")
        .execute(&mut *txn)
        .await?;
    let recent: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sync_jobs WHERE sampled
                          AND (status = 'running' OR created_at > now() - make_interval(secs => $1)))",
    )
    .bind(every.as_secs_f64())
    .fetch_one(&mut *txn)
    .await?;
    if recent {
        return Ok(None);
    }
    // Audited: a constant.
    let highest: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(HIGHEST_ID.to_string()))
        .fetch_one(&mut *txn)
        .await?;
    if highest == 0 {
        return Ok(None); // no order yet
    }
    let last_end: Option<i64> =
        sqlx::query_scalar("SELECT to_id FROM sync_jobs WHERE sampled ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *txn)
            .await?;
    let from = match last_end {
        Some(end) if end < highest => end + 1,
        _ => 1,
    };
    let sample = i64::try_from(sample).unwrap_or(i64::MAX);
    let to = from.saturating_add(sample - 1);
    let job = create_in(&mut txn, JobKind::Audit, Some(from), Some(to), true).await?;
    txn.commit().await?;
    Ok(Some(job))
}

/// Claims the oldest running job no instance works (its runner's claim ran out: a crash), for
/// `hold`.
pub async fn claim_next(
    pool: &PgPool,
    instance: &str,
    hold: std::time::Duration,
) -> Result<Option<Job>, sqlx::Error> {
    // Audited: only constants are formatted in.
    let sql = format!(
        "UPDATE sync_jobs SET runner = $1, runner_until = now() + make_interval(secs => $2),
                updated_at = now()
         WHERE id = (SELECT id FROM sync_jobs
                     WHERE status = 'running' AND (runner_until IS NULL OR runner_until < now())
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
         RETURNING {JOB_COLUMNS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(instance)
        .bind(hold.as_secs_f64())
        .fetch_optional(pool)
        .await
}

/// Extends this instance's claim and reads the job's counts; `None` once the job is no longer
/// this instance's (it stalled past its claim and another took it) or no longer running.
pub async fn renew(
    pool: &PgPool,
    id: i64,
    instance: &str,
    hold: std::time::Duration,
) -> Result<Option<Job>, sqlx::Error> {
    // Audited: only constants are formatted in.
    let sql = format!(
        "UPDATE sync_jobs SET runner_until = now() + make_interval(secs => $3)
         WHERE id = $1 AND runner = $2 AND status = 'running'
         RETURNING {JOB_COLUMNS}"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .bind(instance)
        .bind(hold.as_secs_f64())
        .fetch_optional(pool)
        .await
}

/// Moves an audit's cursor past the ids just published; `false` if the job is no longer ours.
pub async fn advance_audit(
    pool: &PgPool,
    id: i64,
    instance: &str,
    next_id: i64,
    queued: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sync_jobs SET next_id = $3, queued = queued + $4, updated_at = now()
         WHERE id = $1 AND runner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(instance)
    .bind(next_id)
    .bind(queued)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Orders a resync queued whose resend is not recorded yet (dead ones are not waited for).
pub async fn resync_outstanding(pool: &PgPool, job: &Job) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM orders
         WHERE id >= $1 AND id < $2 AND synced_version < version AND sync_state <> $3",
    )
    .bind(job.from_id)
    .bind(job.next_id)
    .bind(SyncState::Dead)
    .fetch_one(pool)
    .await
}

/// Marks the job done; `false` if it was not ours.
pub async fn finish(pool: &PgPool, id: i64, instance: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sync_jobs SET status = 'done', finished_at = now(), updated_at = now(),
                runner_until = NULL
         WHERE id = $1 AND runner = $2 AND status = 'running'",
    )
    .bind(id)
    .bind(instance)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get_job(pool: &PgPool, id: i64) -> Result<Option<Job>, sqlx::Error> {
    // Audited: only constants are formatted in.
    let sql = format!("SELECT {JOB_COLUMNS} FROM sync_jobs WHERE id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The newest jobs first.
pub async fn recent_jobs(pool: &PgPool, limit: i64) -> Result<Vec<Job>, sqlx::Error> {
    // Audited: only constants are formatted in.
    let sql = format!("SELECT {JOB_COLUMNS} FROM sync_jobs ORDER BY id DESC LIMIT $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// The running jobs, oldest first.
pub async fn running_jobs(pool: &PgPool) -> Result<Vec<Job>, sqlx::Error> {
    // Audited: only constants are formatted in.
    let sql = format!("SELECT {JOB_COLUMNS} FROM sync_jobs WHERE status = 'running' ORDER BY id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await
}

/// How far a job got, from 0 to 1: checked ids of the total (audit), or recorded resends of the
/// total (resync), with the number of those resends.
pub async fn progress(pool: &PgPool, job: &Job) -> Result<(f64, Option<i64>), sqlx::Error> {
    let done = job.status == JobStatus::Done;
    let of_total = |n: i64| {
        if done || job.total <= 0 {
            1.0
        } else {
            (n as f64 / job.total as f64).clamp(0.0, 1.0)
        }
    };
    if job.kind == JobKind::Audit {
        return Ok((of_total(job.checked), None));
    }
    let outstanding = if done {
        0
    } else {
        resync_outstanding(pool, job).await?
    };
    let sent = (job.queued - outstanding).max(0);
    Ok((of_total(sent), Some(sent)))
}

/// What one audit check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Matching,
    /// A sync was owed (pending, retrying, dead), or the order changed during the check.
    Skipped,
    /// The `GET` failed, or its answer was not a JSON object.
    Error,
    RepairedMissing,
    RepairedDifferent,
    RepairedStray,
}

impl Verdict {
    pub const ALL: [Verdict; 6] = [
        Self::Matching,
        Self::Skipped,
        Self::Error,
        Self::RepairedMissing,
        Self::RepairedDifferent,
        Self::RepairedStray,
    ];

    /// Its label in metrics, and its counter's column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matching => "matching",
            Self::Skipped => "skipped",
            Self::Error => "errors",
            Self::RepairedMissing => "repaired_missing",
            Self::RepairedDifferent => "repaired_different",
            Self::RepairedStray => "repaired_stray",
        }
    }
}

/// Counts one check of the job. A check repeated after a crash (its event handled twice) counts
/// twice.
pub async fn record_check(pool: &PgPool, job: i64, verdict: Verdict) -> Result<(), sqlx::Error> {
    let column = verdict.as_str();
    // Audited: `column` is one of `Verdict::as_str`'s constants.
    let sql = format!(
        "UPDATE sync_jobs SET checked = checked + 1, {column} = {column} + 1, updated_at = now()
         WHERE id = $1"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(job)
        .execute(pool)
        .await?;
    Ok(())
}

/// What an audit found wrong with a live order's external copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// The external API lost it: a create is owed again (`synced_version` back to 0).
    Missing,
    /// Its copy differs: an update is owed.
    Different,
}

/// Whether outbound calls are paused, and since when that is so.
pub async fn sync_paused(pool: &PgPool) -> Result<(bool, DateTime<Utc>), sqlx::Error> {
    sqlx::query_as("SELECT paused, changed_at FROM sync_control")
        .fetch_one(pool)
        .await
}

/// Pauses or resumes outbound calls for every instance; returns when that took effect (the
/// earlier time when it already was so).
pub async fn set_sync_paused(pool: &PgPool, paused: bool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE sync_control SET paused = $1,
                changed_at = CASE WHEN paused = $1 THEN changed_at ELSE now() END
         RETURNING changed_at",
    )
    .bind(paused)
    .fetch_one(pool)
    .await
}
