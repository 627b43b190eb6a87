//! The operator's jobs: audits (compare the external copy of each order with the order, and
//! repair differences) and full resyncs (send every order's current state once). A job lives in
//! `sync_jobs` (`crate::db::jobs`): its range, a cursor, its counts, and which instance works it
//! until when. Any instance running the engine claims a job no one works, and renews its claim
//! as it goes; after a crash (SIGKILL) the claim runs out within [`CLAIM_HOLD`] and another
//! instance, or the restarted one, resumes at the cursor.
//!
//! Neither kind makes a call itself. Both put work on the normal path, a page at a time, and no
//! faster than it is done, so the streams hold at most a couple of seconds of a job's work and
//! changes queued behind it wait no longer than that:
//!
//! - An audit publishes an `audit` event per id (every id in the range, deleted ones included:
//!   a stray remote copy hides there) to the id's shard. The order's actor makes the check
//!   (`crate::engine::actors::audit`) within `AUDIT_RATE_SHARE` of the rate, and counts it.
//!   At most two seconds of checks at that share are outstanding. Checks never counted (an
//!   instance older than audits drops their events) are given up on after [`STALL`].
//! - A resync makes each order of a page a new version with its outbox row, and moves the cursor,
//!   in one transaction: after a crash nothing is queued twice, and what was queued is synced by
//!   the engine's own guarantees. At most two seconds of calls at the full rate are outstanding.
//!
//! `AUDIT_INTERVAL_SECS` adds continuous audits: every interval one of the next
//! `AUDIT_SAMPLE_SIZE` ids after the last one, wrapping around, so every id is audited in turn.

use std::time::{Duration, Instant};

use crate::config::JobSettings;
use crate::db::PgPool;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::backlog::relay;
use super::cluster::InstanceId;
use crate::db::jobs::{self, Job, JobKind};
use crate::db::Changes;
use crate::domain::{EventKind, OrderId, SyncEvent};
use crate::engine::keys::Keys;

/// How long a claim on a job holds unless renewed (it is renewed at every step).
pub const CLAIM_HOLD: Duration = Duration::from_secs(15);
/// How often an instance without a job looks for one.
const LOOK_EVERY: Duration = Duration::from_secs(1);
/// How often a job waiting for its queued work looks again.
const PACE_EVERY: Duration = Duration::from_millis(200);
/// Audit checks not counted for this long, while no check is counted at all, are given up on.
const STALL: Duration = Duration::from_secs(60);
/// Seconds of work a job keeps queued.
const QUEUED_SECS: f64 = 2.0;
/// Most orders a resync queues in one transaction.
const MAX_RESYNC_PAGE: i64 = 500;

impl JobSettings {
    /// The audits' rate, in calls per second: at least one.
    pub fn audit_rate(&self) -> u32 {
        ((f64::from(self.rate_per_sec) * self.audit_share).floor() as u32).max(1)
    }

    /// The call slots (of `max_concurrent`, `MAX_CONCURRENT_CALLS`) audit checks may hold: their
    /// share, rounded up, at least one.
    pub fn audit_slots(&self, max_concurrent: u32) -> usize {
        ((f64::from(max_concurrent) * self.audit_share).ceil() as usize).max(1)
    }

    /// Audit checks kept queued.
    fn audit_window(&self) -> i64 {
        (f64::from(self.audit_rate()) * QUEUED_SECS).ceil().max(1.0) as i64
    }

    /// Resends kept queued.
    fn resync_window(&self) -> i64 {
        (f64::from(self.rate_per_sec) * QUEUED_SECS)
            .ceil()
            .max(10.0) as i64
    }
}

/// Claims and works jobs, one at a time: the engine's `jobs` task.
#[derive(Clone)]
pub struct JobRunner {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub instance: InstanceId,
    pub settings: JobSettings,
    /// Writes the resync's pages (and wakes the relay after each).
    pub changes: Changes,
    pub shutdown: CancellationToken,
}

/// What one step of a job did.
enum Step {
    /// Queued more work.
    Queued,
    /// Waits for queued work to be done.
    Wait,
    Finished,
}

/// An audit's checks that were queued and never counted.
struct Stall {
    last_checked: i64,
    since: Instant,
    given_up: i64,
}

impl JobRunner {
    pub async fn run(self) {
        while !self.shutdown.is_cancelled() {
            if let Some(every) = self.settings.audit_every {
                match jobs::start_sampled_audit(&self.pool, every, self.settings.audit_sample).await
                {
                    Ok(Some(job)) => tracing::info!(
                        job = job.id,
                        from_id = job.from_id,
                        to_id = job.to_id,
                        "continuous audit started"
                    ),
                    Ok(None) => {}
                    Err(error) => tracing::warn!(%error, "could not start a continuous audit"),
                }
            }
            match jobs::claim_next(&self.pool, self.instance.as_str(), CLAIM_HOLD).await {
                Ok(Some(job)) => self.work(job).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "could not look for a job"),
            }
            tokio::select! {
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Works `job` until it is finished, no longer this instance's, or shutdown (its claim then
    /// runs out, and the next instance resumes it).
    async fn work(&self, job: Job) {
        tracing::info!(
            job = job.id,
            kind = job.kind.as_str(),
            from_id = job.from_id,
            to_id = job.to_id,
            next_id = job.next_id,
            "working a job"
        );
        let mut stall = Stall {
            last_checked: job.checked,
            since: Instant::now(),
            given_up: 0,
        };
        let id = job.id;
        while !self.shutdown.is_cancelled() {
            let renewed = jobs::renew(&self.pool, id, self.instance.as_str(), CLAIM_HOLD).await;
            let job = match renewed {
                Ok(Some(job)) => job,
                Ok(None) => {
                    tracing::info!(job = id, "the job is no longer this instance's");
                    return;
                }
                Err(error) => {
                    tracing::warn!(job = id, %error, "could not renew the claim on a job");
                    self.pause(LOOK_EVERY).await;
                    continue;
                }
            };
            let step = if job.kind == JobKind::Audit {
                self.audit_step(&job, &mut stall).await
            } else {
                self.resync_step(&job).await
            };
            match step {
                Ok(Step::Queued) => {}
                Ok(Step::Wait) => self.pause(PACE_EVERY).await,
                Ok(Step::Finished) => {
                    match jobs::finish(&self.pool, id, self.instance.as_str()).await {
                        Ok(true) => tracing::info!(
                            job = id,
                            kind = job.kind.as_str(),
                            checked = job.checked,
                            matching = job.matching,
                            repaired_missing = job.repaired_missing,
                            repaired_different = job.repaired_different,
                            repaired_stray = job.repaired_stray,
                            queued = job.queued,
                            "job finished"
                        ),
                        Ok(false) => {}
                        Err(error) => {
                            tracing::warn!(job = id, %error, "could not finish a job");
                            self.pause(LOOK_EVERY).await;
                            continue;
                        }
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(
                        job = id,
                        error = format!("{error:#}"),
                        "a job step failed; trying again"
                    );
                    self.pause(LOOK_EVERY).await;
                }
            }
        }
    }

    async fn pause(&self, wait: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    /// Publishes the next ids' audit events, as many as keep [`JobSettings::audit_window`]
    /// checks outstanding.
    async fn audit_step(&self, job: &Job, stall: &mut Stall) -> anyhow::Result<Step> {
        if job.checked != stall.last_checked {
            stall.last_checked = job.checked;
            stall.since = Instant::now();
        }
        let mut outstanding = job.queued - job.checked - stall.given_up;
        if outstanding > 0 && stall.since.elapsed() > STALL {
            tracing::warn!(
                job = job.id,
                outstanding,
                "audit checks were queued and never counted (an older instance drops them); moving on"
            );
            stall.given_up += outstanding;
            stall.since = Instant::now();
            outstanding = 0;
        }
        if job.next_id > job.to_id {
            return Ok(if outstanding <= 0 {
                Step::Finished
            } else {
                Step::Wait
            });
        }
        let room = self.settings.audit_window() - outstanding;
        if room <= 0 {
            return Ok(Step::Wait);
        }
        let count = room.min(job.to_id - job.next_id + 1);
        let now_ms = chrono::Utc::now().timestamp_millis();
        let events: Vec<SyncEvent> = (job.next_id..job.next_id + count)
            .map(|id| SyncEvent {
                order_id: OrderId::new(id),
                version: 0,
                kind: EventKind::Audit { job: job.id },
                committed_at_ms: now_ms,
            })
            .collect();
        // Published before the cursor moves: a crash between the two publishes these again,
        // and the repeated checks are harmless.
        relay::publish(&mut self.redis.clone(), &self.keys, &events).await?;
        let still_ours = jobs::advance_audit(
            &self.pool,
            job.id,
            self.instance.as_str(),
            job.next_id + count,
            count,
        )
        .await?;
        Ok(if still_ours { Step::Queued } else { Step::Wait })
    }

    /// Queues the next page of a resync, as much as keeps [`JobSettings::resync_window`]
    /// resends outstanding.
    async fn resync_step(&self, job: &Job) -> anyhow::Result<Step> {
        debug_assert_eq!(job.kind, JobKind::Resync);
        let outstanding = jobs::resync_outstanding(&self.pool, job).await?;
        if job.next_id > job.to_id {
            return Ok(if outstanding == 0 {
                Step::Finished
            } else {
                Step::Wait
            });
        }
        let room = (self.settings.resync_window() - outstanding).min(MAX_RESYNC_PAGE);
        if room <= 0 {
            return Ok(Step::Wait);
        }
        let page = self
            .changes
            .queue_resync_page(job.id, self.instance.as_str(), room)
            .await?;
        Ok(match page {
            Some(_) => Step::Queued,
            None => Step::Wait,
        })
    }
}
