//! Figure 10: the audit's rate against its share of the rate limit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{wait_all_synced, Row, UNTHROTTLED};
use crate::harness::{get_json, start_fake, start_service, BenchDb, ChildProcess};
use crate::Scale;

/// `RATE_LIMIT_PER_SEC` and `AUDIT_RATE_SHARE` when unset (`src/config.rs`): figure 10's run at
/// the defaults leaves both unset, and these give what it is measured against.
const DEFAULT_RATE_LIMIT_PER_SEC: u32 = 100;
const DEFAULT_AUDIT_RATE_SHARE: f64 = 0.1;
/// `MAX_IN_FLIGHT_EVENTS` when unset: events handed to actors at once, per instance.
const DEFAULT_MAX_IN_FLIGHT_EVENTS: usize = 1_000;
/// The admin token of figure 10's services.
const ADMIN_TOKEN: &str = "bench-admin-token";

/// What the audits' share allows, in checks per second: the engine's own rounding.
fn audit_allowed(rate_limit: u32, share: f64) -> u32 {
    order_sync::config::JobSettings {
        rate_per_sec: rate_limit,
        audit_share: share,
        audit_every: None,
        audit_sample: 1,
    }
    .audit_rate()
}

/// How one audit run of figure 10 is set and how long it goes on.
struct AuditSetup {
    /// `RATE_LIMIT_PER_SEC` and `AUDIT_RATE_SHARE`; `None` leaves them unset (the defaults).
    rate_limit: Option<u32>,
    share: Option<f64>,
    /// How long after the first check counted it goes on (less if the audit ends sooner); the
    /// rate is measured from `audit_ramp` after the first check.
    run_for: Duration,
    /// Its name in the log file's name.
    label: &'static str,
}

impl AuditSetup {
    fn rate_limit(&self) -> u32 {
        self.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT_PER_SEC)
    }

    fn share(&self) -> f64 {
        self.share.unwrap_or(DEFAULT_AUDIT_RATE_SHARE)
    }

    fn allowed(&self) -> u32 {
        audit_allowed(self.rate_limit(), self.share())
    }

    fn limit(&self) -> String {
        let set = |unset: bool| if unset { " (default)" } else { "" };
        format!(
            "RATE_LIMIT_PER_SEC {}{} x AUDIT_RATE_SHARE {}{} = {}/s, burst {}",
            self.rate_limit(),
            set(self.rate_limit.is_none()),
            self.share(),
            set(self.share.is_none()),
            self.allowed(),
            audit_burst(self.allowed())
        )
    }
}

/// The audit limiter's burst, as the service sets it (`startup.rs`): 50 ms of the share.
fn audit_burst(allowed: u32) -> u32 {
    (allowed / 20).max(1)
}

/// One audit run of figure 10.
struct AuditRun {
    /// Checks counted per second over the steady window.
    checks_per_s: f64,
    /// Calls per second the fake received over the same window (all `GET`s: every order is
    /// synced, and a repair would show in the verdicts).
    gets_per_s: f64,
    /// The most calls the fake received in any 1 s within the window.
    busiest: u64,
    window_s: f64,
    /// Rate-limit script calls (`EVALSHA`) Redis served per second over the window.
    redis_per_s: f64,
    /// The job's counts once the service was stopped (every check made by then counted).
    job: order_sync::db::jobs::Job,
    /// From the first check counted to the last, when the audit finished.
    finished_in: Option<f64>,
    peak_rss: f64,
    /// WARN and ERROR lines of the service's log.
    warnings: Vec<String>,
    log: std::path::PathBuf,
}

/// Figure 10: the audit's rate against its share of the rate limit. `audit_orders` orders are
/// seeded and synced (throttle off), so the fake holds every one and an audit finds them all
/// matching. Then three services in turn, each starting an audit of every id: one at
/// `RATE_LIMIT_PER_SEC=audit_rate_limit` and the default share (0.1), one at the service's
/// defaults (the rate a whole audit takes in production), and one at share 1 (where the
/// engine's own ceiling for checks lies). Beside them, the share's limiter alone, asked as an
/// audit check asks it, by as many waiters as the audit keeps queued.
pub async fn audit_rate(scale: &Scale) -> anyhow::Result<Vec<Row>> {
    let db = BenchDb::create().await?;
    let fake = start_fake().await?;
    let orders = scale.audit_orders;
    seeder::write::insert_orders(&db.pool, orders, true, |_| {}).await?;
    let syncing = Instant::now();
    let service = start_service(&db, &fake, &UNTHROTTLED).await?;
    wait_all_synced(&db, scale.long_timeout).await?;
    drop(service);
    let synced_in = syncing.elapsed().as_secs_f64();
    let stored = get_json(&fake.url("/_fake/stats")).await?["stored_orders"]
        .as_u64()
        .unwrap_or(0);
    anyhow::ensure!(
        stored == orders,
        "the fake holds {stored} orders of {orders} after the sync"
    );
    eprintln!("[bench] figure 10: {orders} orders synced in {synced_in:.0} s; auditing");

    let share_setup = AuditSetup {
        rate_limit: Some(scale.audit_rate_limit),
        share: Some(DEFAULT_AUDIT_RATE_SHARE),
        run_for: scale.audit_ramp + scale.audit_window,
        label: "share",
    };
    let default_setup = AuditSetup {
        rate_limit: None,
        share: None,
        run_for: scale.audit_ramp + scale.audit_default_window,
        label: "defaults",
    };
    let full_setup = AuditSetup {
        rate_limit: Some(scale.audit_rate_limit),
        share: Some(1.0),
        run_for: scale.audit_ceiling_within,
        label: "full",
    };
    let at_share = audit_run(&db, &fake, &share_setup, scale).await?;
    let at_defaults = audit_run(&db, &fake, &default_setup, scale).await?;
    let at_full = audit_run(&db, &fake, &full_setup, scale).await?;
    drop(fake);
    db.drop_now().await;
    // An audit keeps two seconds of checks queued (`engine::jobs`), each waiting for its token
    // once the dispatcher has handed it to its order's actor (at most `MAX_IN_FLIGHT_EVENTS`).
    let waiters = |allowed: u32| (allowed as usize * 2).min(DEFAULT_MAX_IN_FLIGHT_EVENTS);
    let share_waiters = waiters(share_setup.allowed());
    let (alone, alone_scripts) = share_limiter_alone(
        share_setup.allowed(),
        share_waiters,
        scale.audit_limiter_duration,
    )
    .await?;
    let full_waiters = waiters(full_setup.allowed());
    let (full_alone, full_alone_scripts) = share_limiter_alone(
        full_setup.allowed(),
        full_waiters,
        scale.audit_limiter_duration,
    )
    .await?;

    let share_allowed = f64::from(share_setup.allowed());
    let error = (at_share.checks_per_s - share_allowed).abs() / share_allowed;
    let window_limit =
        u64::from(share_setup.allowed()) + u64::from(audit_burst(share_setup.allowed()));
    let share_row = Row {
        figure: "10a audit rate at its share",
        measured: format!(
            "{:.1} checks/s over {:.0} s ({:.1} GETs/s at the fake, busiest 1 s {}; Redis {:.0} script calls/s); {}",
            at_share.checks_per_s,
            at_share.window_s,
            at_share.gets_per_s,
            at_share.busiest,
            at_share.redis_per_s,
            verdicts(&at_share),
        ),
        limit: format!(
            "{}; the share's limiter alone, {share_waiters} waiters: {alone:.1}/s ({alone_scripts:.0} script calls/s)",
            share_setup.limit()
        ),
        goal: format!(
            "within 2% ({:.1}%), busiest 1 s <= {window_limit}, all matching",
            error * 100.0
        ),
        met: error <= 0.02 && at_share.busiest <= window_limit && all_matching(&at_share),
    };
    let default_allowed = f64::from(default_setup.allowed());
    let default_error = (at_defaults.checks_per_s - default_allowed).abs() / default_allowed;
    let whole_s = orders as f64 / at_defaults.checks_per_s;
    let defaults_row = Row {
        figure: "10b audit rate at the service's defaults",
        measured: format!(
            "{:.2} checks/s over {:.0} s ({:.2} GETs/s at the fake, busiest 1 s {}; Redis {:.0} script calls/s); {}; the whole {orders} at this rate: {} ({} at exactly {}/s)",
            at_defaults.checks_per_s,
            at_defaults.window_s,
            at_defaults.gets_per_s,
            at_defaults.busiest,
            at_defaults.redis_per_s,
            verdicts(&at_defaults),
            hours_minutes(whole_s),
            hours_minutes(orders as f64 / default_allowed),
            default_setup.allowed(),
        ),
        limit: default_setup.limit(),
        goal: format!(
            "within 2% ({:.1}%), all matching",
            default_error * 100.0
        ),
        met: default_error <= 0.02 && all_matching(&at_defaults),
    };
    let full_row = Row {
        figure: "10c audit checks at share 1 (the engine's ceiling)",
        measured: format!(
            "{:.0} checks/s over {:.1} s ({:.0} GETs/s at the fake, busiest 1 s {}; Redis {:.0} script calls/s); {}{}; peak RSS {:.0} MiB",
            at_full.checks_per_s,
            at_full.window_s,
            at_full.gets_per_s,
            at_full.busiest,
            at_full.redis_per_s,
            verdicts(&at_full),
            match at_full.finished_in {
                Some(s) => format!("; all {} checked in {s:.1} s", at_full.job.total),
                None => format!(
                    "; stopped after {} s",
                    scale.audit_ceiling_within.as_secs()
                ),
            },
            at_full.peak_rss,
        ),
        limit: format!(
            "{}; the share's limiter alone, {full_waiters} waiters: {full_alone:.0}/s ({full_alone_scripts:.0} script calls/s)",
            full_setup.limit()
        ),
        goal: format!(
            "reported: {:.0}% of the share; all matching",
            at_full.checks_per_s / f64::from(full_setup.allowed()) * 100.0
        ),
        met: all_matching(&at_full),
    };
    for (setup, run) in [
        (&share_setup, &at_share),
        (&default_setup, &at_defaults),
        (&full_setup, &at_full),
    ] {
        eprintln!(
            "[bench] figure 10, {}: {} WARN/ERROR lines in {}",
            setup.label,
            run.warnings.len(),
            run.log.display()
        );
        for line in run.warnings.iter().take(5) {
            eprintln!("[bench]   {line}");
        }
    }
    Ok(vec![share_row, defaults_row, full_row])
}

/// The audits' share limiter alone (`ClusterRateLimit` at `rate`, burst 1, on a key of its own):
/// `waiters` tasks each asking for one token as an audit check does (`take(1)`, then sleeping
/// for the wait it is told), for `duration`. Tokens granted per second, and Redis script calls
/// per second.
async fn share_limiter_alone(
    rate: u32,
    waiters: usize,
    duration: Duration,
) -> anyhow::Result<(f64, f64)> {
    use order_sync::engine::gate::rate_limit::{ClusterRateLimit, Grant};
    let redis = order_sync::engine::keys::connect(&crate::harness::redis_url()).await?;
    let scripts_before = redis_script_calls(&redis).await?;
    let key = format!("bench-audit-share-{}", uuid::Uuid::new_v4().simple());
    let limit = ClusterRateLimit::new(redis.clone(), key.clone(), rate, 1);
    let granted = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let tasks = (0..waiters).map(|_| {
        let (limit, granted) = (limit.clone(), granted.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                match limit.take(1).await? {
                    Grant::Calls(n) => {
                        granted.fetch_add(u64::from(n), Ordering::Relaxed);
                    }
                    Grant::WaitFor(wait) => tokio::time::sleep(wait).await,
                }
            }
            anyhow::Ok(())
        })
    });
    for task in futures_util::future::join_all(tasks).await {
        task??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let scripts = redis_script_calls(&redis)
        .await?
        .saturating_sub(scripts_before);
    let mut cleanup = redis.clone();
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut cleanup)
        .await?;
    Ok((
        granted.load(Ordering::Relaxed) as f64 / elapsed,
        scripts as f64 / elapsed,
    ))
}

fn verdicts(run: &AuditRun) -> String {
    let job = &run.job;
    format!(
        "{} checked: {} matching, {} skipped, {} errors, {} repaired; {} log warnings",
        job.checked,
        job.matching,
        job.skipped,
        job.errors,
        job.repaired_missing + job.repaired_different + job.repaired_stray,
        run.warnings.len()
    )
}

fn all_matching(run: &AuditRun) -> bool {
    run.job.checked > 0 && run.job.matching == run.job.checked
}

fn hours_minutes(seconds: f64) -> String {
    if seconds < 600.0 {
        return format!("{seconds:.0} s");
    }
    let minutes = (seconds / 60.0).round() as u64;
    format!("{} h {:02} min", minutes / 60, minutes % 60)
}

/// One sample of a job's progress.
#[derive(Clone, Copy)]
struct JobSample {
    at: Instant,
    epoch_ms: u64,
    checked: i64,
    done: bool,
    redis_scripts: u64,
}

fn epoch_ms() -> u64 {
    chrono::Utc::now().timestamp_millis().max(0) as u64
}

/// Script calls (`EVALSHA`) Redis has served since it started: every grant the rate limits ask
/// for is one (the whole server's: anything else using this Redis counts too).
async fn redis_script_calls(redis: &redis::aio::ConnectionManager) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut redis.clone())
        .await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Where an audit job is (`GET /admin/jobs/{id}`), with Redis's count of script calls.
async fn job_sample(
    http: &reqwest::Client,
    url: &str,
    redis: &redis::aio::ConnectionManager,
) -> anyhow::Result<JobSample> {
    let job: Value = http
        .get(url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let redis_scripts = redis_script_calls(redis).await?;
    Ok(JobSample {
        at: Instant::now(),
        epoch_ms: epoch_ms(),
        checked: job["checked"].as_i64().unwrap_or(0),
        done: job["status"] == "done",
        redis_scripts,
    })
}

/// Starts a service set as `setup` says (with a Redis prefix of its own, so nothing of an
/// earlier run's streams or leases is in its way), starts an audit of every id and follows it.
async fn audit_run(
    db: &BenchDb,
    fake: &ChildProcess,
    setup: &AuditSetup,
    scale: &Scale,
) -> anyhow::Result<AuditRun> {
    let rate_s = setup.rate_limit.map(|r| r.to_string());
    let share_s = setup.share.map(|s| s.to_string());
    let prefix = format!("bench-{}-audit-{}", db.name, setup.label);
    let log_level = std::env::var("BENCH_CHILD_LOG").unwrap_or_else(|_| {
        "warn,order_sync::engine::jobs=info,order_sync::engine::actors::audit=info".into()
    });
    let log = std::env::temp_dir().join(format!("{}-audit-{}.log", db.name, setup.label));
    let mut settings = vec![
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("REDIS_PREFIX", prefix.as_str()),
        ("RUST_LOG", log_level.as_str()),
        ("LOG_FORMAT", "json"),
    ];
    if let Some(rate) = &rate_s {
        settings.push(("RATE_LIMIT_PER_SEC", rate.as_str()));
    }
    if let Some(share) = &share_s {
        settings.push(("AUDIT_RATE_SHARE", share.as_str()));
    }
    let service = crate::harness::start_service_logging_to(db, fake, &settings, Some(&log)).await?;
    let redis = order_sync::engine::keys::connect(&crate::harness::redis_url()).await?;
    let http = reqwest::Client::new();
    let started = http
        .post(service.url("/admin/audit"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    anyhow::ensure!(
        started.status() == 202,
        "POST /admin/audit answered {}",
        started.status()
    );
    let job_id = started.json::<Value>().await?["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("POST /admin/audit gave no job id"))?;
    let job_url = service.url(&format!("/admin/jobs/{job_id}"));
    let sample = || job_sample(&http, &job_url, &redis);

    // From the first check counted: the job runner looks for jobs every second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        let now = sample().await?;
        if now.checked > 0 || now.done {
            break now;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the audit counted no check within 30 s (see {})",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let end = first.at + setup.run_for;
    let mut samples = vec![first];
    while !samples.last().is_some_and(|s| s.done) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(sample().await?);
    }
    // The steady window: from `audit_ramp` after the first check (or the first sample, if the
    // audit ended sooner) to the first sample with the last count (a finished job is marked
    // done a moment after its last check: that moment is not the checks' time).
    let final_count = samples.last().map_or(0, |s| s.checked);
    let last = *samples
        .iter()
        .find(|s| s.checked == final_count)
        .expect("one sample at least");
    let from = samples
        .iter()
        .find(|s| s.at.duration_since(first.at) >= scale.audit_ramp && s.at < last.at)
        .copied()
        .unwrap_or(first);
    let window_s = last.at.duration_since(from.at).as_secs_f64();
    anyhow::ensure!(
        window_s > 0.0,
        "the audit ended before it could be measured"
    );
    let checks_per_s = (last.checked - from.checked) as f64 / window_s;
    let redis_per_s = last.redis_scripts.saturating_sub(from.redis_scripts) as f64 / window_s;
    let finished_in = samples
        .last()
        .is_some_and(|s| s.done)
        .then(|| last.at.duration_since(first.at).as_secs_f64());
    let timeline = get_json(&fake.url("/_fake/timeline")).await?;
    let (gets_per_s, busiest) = calls_between(&timeline, from.epoch_ms, last.epoch_ms);
    let peak_rss = service.peak_rss_mib();
    drop(service);

    // Every check made is counted by now; an unfinished job is closed, or the next service
    // would claim and resume it once this one's claim runs out.
    let job = order_sync::db::jobs::get_job(&db.pool, job_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {job_id} vanished"))?;
    sqlx::query(
        "UPDATE sync_jobs SET status = 'done', finished_at = now(), runner_until = NULL
         WHERE id = $1 AND status = 'running'",
    )
    .bind(job_id)
    .execute(&db.pool)
    .await?;
    let warnings = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#))
        .map(str::to_string)
        .collect();
    Ok(AuditRun {
        checks_per_s,
        gets_per_s,
        busiest,
        window_s,
        redis_per_s,
        job,
        finished_in,
        peak_rss,
        warnings,
        log,
    })
}

/// From the fake's timeline: the calls per second between two instants (epoch milliseconds,
/// whole 100 ms slots within them), and the most calls in any 10 consecutive of those slots.
fn calls_between(timeline: &Value, from_ms: u64, to_ms: u64) -> (f64, u64) {
    let (first, last) = (from_ms.div_ceil(100), to_ms / 100);
    if last <= first {
        return (0.0, 0);
    }
    let slots: std::collections::BTreeMap<u64, u64> = timeline["calls"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                .filter(|(slot, _)| (first..last).contains(slot))
                .collect()
        })
        .unwrap_or_default();
    let total: u64 = slots.values().sum();
    let busiest = (first..=last.saturating_sub(10).max(first))
        .map(|start| slots.range(start..start + 10).map(|(_, n)| n).sum::<u64>())
        .max()
        .unwrap_or(0);
    (total as f64 / ((last - first) as f64 / 10.0), busiest)
}
