//! The engine's figures, counted where things happen, in a Prometheus registry: the metrics
//! endpoints read the same values, as JSON (`/metrics/actors`) and as Prometheus text
//! (`/metrics`). Counters and gauges are atomics, cheap on the hot path and readable from the
//! HTTP workers' threads. Figures that live elsewhere (Redis, PostgreSQL, the throttle) are
//! gauges set at scrape time by `crate::api::metrics`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::external::CallError;

/// Lag samples of the last `LAG_WINDOW`, at most `LAG_SAMPLES` of them, for the JSON percentiles.
const LAG_WINDOW: Duration = Duration::from_secs(60);
const LAG_SAMPLES: usize = 10_000;

/// How often the chart's history takes a point, and how many it keeps: the last 15 minutes.
pub const HISTORY_EVERY: Duration = Duration::from_secs(5);
const HISTORY_POINTS: usize = 180;

/// One point of the dashboard chart's history.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct HistoryPoint {
    /// When the point was taken, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Calls that succeeded and were recorded per second, on this instance, since the last point.
    pub synced_per_sec: f64,
    /// Lag p95 in milliseconds over the same interval (0 with no sample).
    pub lag_p95_ms: u64,
}

/// The chart's last 15 minutes, and what the next point's rate is measured from.
struct History {
    points: VecDeque<HistoryPoint>,
    /// `events_synced_total` when the last point was taken.
    synced_then: u64,
    taken_at: Instant,
}

/// Lag percentiles over the recent window, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct LagSummary {
    pub p50: u64,
    pub p95: u64,
    pub p99: u64,
    pub max: u64,
    pub samples: usize,
}

/// Every figure, by its Prometheus name (prefix `order_sync_`).
pub struct SyncMetrics {
    registry: Registry,
    /// Events handed to the supervisor.
    pub events_received: IntCounter,
    /// Calls that succeeded and were recorded.
    pub synced: IntCounter,
    /// Events that needed no call (coalesced, gone, parked, dead).
    pub skipped: IntCounter,
    /// Tombstones removed without a call.
    pub purged: IntCounter,
    /// Quick retries made (attempts after the first).
    pub retried: IntCounter,
    /// Orders parked for a delayed retry.
    pub parked: IntCounter,
    /// Orders that became dead.
    pub dead: IntCounter,
    /// Events whose sync failed (parked or dead).
    pub failed: IntCounter,
    pub actors_spawned: IntCounter,
    pub actors_stopped: IntCounter,
    pub actors_restarted: IntCounter,
    pub live_actors: IntGauge,
    /// Events forwarded to order actors and not yet handled, summed over actors.
    pub mailbox_depth: IntGauge,
    pub mailbox_depth_max: IntGauge,
    /// Events read from Redis and not yet acknowledged.
    pub events_in_flight: IntGauge,
    /// Stream entries left pending (a lost reply, a failed acknowledgement, a deferred event)
    /// and dispatched again while running.
    pub reclaimed: IntCounter,
    /// Orders whose event was lost, published again by the reconciler.
    pub republished: IntCounter,
    /// Engine tasks started again after they ended unexpectedly.
    pub engine_task_restarts: IntCounter,
    /// Attempts deleted from the attempt log by its pruner.
    pub attempts_pruned: IntCounter,
    calls: IntCounterVec,
    lag: Histogram,
    lag_window: Mutex<VecDeque<(Instant, Duration)>>,
    history: Mutex<History>,
    // Set at scrape time.
    pub throttle_tokens: Gauge,
    pub throttle_waiters: IntGauge,
    pub throttle_calls_in_flight: IntGauge,
    pub throttle_rate: IntGauge,
    pub throttle_burst: IntGauge,
    pub throttle_paused_seconds: Gauge,
    pub stream_length: IntGaugeVec,
    pub stream_pending: IntGaugeVec,
    /// Shards whose lease this instance holds.
    pub shards_held: IntGauge,
    /// Instances whose heartbeat is live, this one included.
    pub live_instances: IntGauge,
    /// Set at scrape time: live instances holding at least one shard (the workers syncing).
    pub workers_live: IntGauge,
    /// 1 while changes have waited with no worker holding a shard for 30 s
    /// (`engine::view::workers`).
    pub workers_missing: IntGauge,
    pub outbox_rows: IntGauge,
    pub orders: IntGaugeVec,
    /// 1 while the sync engine runs (or relays, with `ROLE=api`); 0 when it failed or is off.
    pub engine_up: IntGauge,
    /// Audit checks this instance made, by verdict (`crate::db::jobs::Verdict`).
    pub audit_checks: IntCounterVec,
    /// 1 while outbound calls are paused (`POST /admin/sync/pause`), for every instance.
    pub sync_paused: IntGauge,
    /// Set at scrape time: 1 while the external API is healthy for the cluster, 0 while it is
    /// down or being probed (`engine::gate::destination`); how long it has been so; and the
    /// probes this instance sent.
    pub external_api_up: IntGauge,
    pub external_api_state_seconds: Gauge,
    pub external_api_probes: IntCounter,
    /// Set at scrape time: running jobs by kind, and the oldest one's progress (0 to 1).
    pub jobs_running: IntGaugeVec,
    pub job_progress: GaugeVec,
}

impl Default for SyncMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(format!("order_sync_{name}"), help).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("a unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(format!("order_sync_{name}"), help).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("a unique metric");
    metric
}

fn float_gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let metric = Gauge::new(format!("order_sync_{name}"), help).expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("a unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(format!("order_sync_{name}"), help), &[label])
        .expect("a valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("a unique metric");
    metric
}

impl SyncMetrics {
    /// The registry and its metrics. The names are fixed and valid, so registering cannot fail
    /// (hence the `expect`s, which run once at start-up, never on a request or event path).
    pub fn new() -> Self {
        let r = Registry::new();
        let calls = IntCounterVec::new(
            Opts::new(
                "order_sync_external_calls_total",
                "Calls to the external API, by verb and status class.",
            ),
            &["verb", "status_class"],
        )
        .expect("a valid metric");
        r.register(Box::new(calls.clone()))
            .expect("a unique metric");
        let lag = Histogram::with_opts(
            HistogramOpts::new(
                "order_sync_sync_lag_seconds",
                "Time from a change's commit to the success of the call that synced it.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )
        .expect("a valid metric");
        r.register(Box::new(lag.clone())).expect("a unique metric");
        let audit_checks = IntCounterVec::new(
            Opts::new(
                "order_sync_audit_checks_total",
                "Orders an audit compared with the external copy, by verdict (matching, skipped, errors, repaired_missing, repaired_different, repaired_stray).",
            ),
            &["verdict"],
        )
        .expect("a valid metric");
        r.register(Box::new(audit_checks.clone()))
            .expect("a unique metric");
        let job_progress = GaugeVec::new(
            Opts::new(
                "order_sync_job_progress_ratio",
                "Progress of the oldest running job of each kind (audit, resync), from 0 to 1.",
            ),
            &["kind"],
        )
        .expect("a valid metric");
        r.register(Box::new(job_progress.clone()))
            .expect("a unique metric");
        // Always 1; the labels say what runs (the convention of `prometheus_build_info`).
        let build_info = IntGaugeVec::new(
            Opts::new(
                "order_sync_build_info",
                "The version and commit this instance runs (the value is always 1).",
            ),
            &["version", "git_sha"],
        )
        .expect("a valid metric");
        build_info
            .with_label_values(&[crate::build_info::VERSION, crate::build_info::GIT_SHA])
            .set(1);
        r.register(Box::new(build_info)).expect("a unique metric");
        Self {
            events_received: counter(
                &r,
                "events_received_total",
                "Events handed to the supervisor.",
            ),
            synced: counter(
                &r,
                "events_synced_total",
                "Calls that succeeded and were recorded.",
            ),
            skipped: counter(
                &r,
                "events_skipped_total",
                "Events that needed no call (coalesced, gone, parked, dead).",
            ),
            purged: counter(
                &r,
                "events_purged_total",
                "Deleted orders removed without a call (never created remotely).",
            ),
            retried: counter(&r, "call_retries_total", "Quick retries of external calls."),
            parked: counter(
                &r,
                "orders_parked_total",
                "Times an order was parked for a delayed retry.",
            ),
            dead: counter(&r, "orders_dead_total", "Times an order became dead."),
            failed: counter(
                &r,
                "events_failed_total",
                "Events whose sync failed (parked or dead).",
            ),
            actors_spawned: counter(&r, "actors_spawned_total", "Order actors started."),
            actors_stopped: counter(
                &r,
                "actors_stopped_total",
                "Order actors stopped (idle or failed).",
            ),
            actors_restarted: counter(
                &r,
                "actors_restarted_total",
                "Order actors replaced after a failure.",
            ),
            live_actors: gauge(&r, "actors_live", "Order actors alive now."),
            mailbox_depth: gauge(
                &r,
                "mailbox_depth",
                "Events waiting in order actors' mailboxes, summed.",
            ),
            mailbox_depth_max: gauge(
                &r,
                "mailbox_depth_max",
                "Events waiting in the fullest order actor's mailbox.",
            ),
            reclaimed: counter(
                &r,
                "events_reclaimed_total",
                "Stream entries left pending and dispatched again while running.",
            ),
            republished: counter(
                &r,
                "orders_republished_total",
                "Orders whose event was lost, published again by the reconciler.",
            ),
            engine_task_restarts: counter(
                &r,
                "engine_task_restarts_total",
                "Engine tasks started again after they ended unexpectedly.",
            ),
            attempts_pruned: counter(
                &r,
                "attempts_pruned_total",
                "Call attempts deleted from the attempt log (ATTEMPTS_KEPT_PER_ORDER, ATTEMPTS_RETENTION_DAYS).",
            ),
            events_in_flight: gauge(
                &r,
                "events_in_flight",
                "Events read from Redis and not yet acknowledged.",
            ),
            calls,
            lag,
            lag_window: Mutex::new(VecDeque::new()),
            history: Mutex::new(History {
                points: VecDeque::new(),
                synced_then: 0,
                taken_at: Instant::now(),
            }),
            throttle_tokens: float_gauge(
                &r,
                "throttle_tokens",
                "Tokens in the rate-limit bucket now.",
            ),
            throttle_waiters: gauge(&r, "throttle_waiters", "Actors waiting for a token."),
            throttle_calls_in_flight: gauge(
                &r,
                "throttle_calls_in_flight",
                "External calls in flight.",
            ),
            throttle_rate: gauge(&r, "throttle_rate_per_second", "RATE_LIMIT_PER_SEC."),
            throttle_burst: gauge(&r, "throttle_burst", "RATE_LIMIT_BURST."),
            throttle_paused_seconds: float_gauge(
                &r,
                "throttle_paused_seconds",
                "Seconds until issuing resumes after a 429.",
            ),
            stream_length: gauge_vec(
                &r,
                "backlog_stream_length",
                "Entries in a shard's stream (unread or unacknowledged).",
                "shard",
            ),
            stream_pending: gauge_vec(
                &r,
                "backlog_pending",
                "Entries read from a shard's stream but not yet acknowledged.",
                "shard",
            ),
            shards_held: gauge(
                &r,
                "shards_held",
                "Shards whose lease this instance holds (their streams it reads).",
            ),
            live_instances: gauge(
                &r,
                "live_instances",
                "Instances of the deployment whose heartbeat is live.",
            ),
            workers_live: gauge(
                &r,
                "workers_live",
                "Live instances holding at least one shard: the workers syncing (0: nothing reaches the external API).",
            ),
            workers_missing: gauge(
                &r,
                "workers_missing",
                "1 while changes have waited 30 s or more with no worker holding a shard.",
            ),
            outbox_rows: gauge(
                &r,
                "outbox_rows",
                "Committed changes not yet published to Redis.",
            ),
            orders: gauge_vec(
                &r,
                "orders",
                "Orders by sync state (pending, retrying, dead).",
                "sync_state",
            ),
            engine_up: gauge(
                &r,
                "engine_up",
                "1 while the sync engine runs (ROLE=api: while it relays); 0 when it failed or is off.",
            ),
            audit_checks,
            sync_paused: gauge(
                &r,
                "sync_paused",
                "1 while outbound calls are paused for every instance (POST /admin/sync/pause).",
            ),
            external_api_up: gauge(
                &r,
                "external_api_up",
                "1 while the external API is healthy for the cluster; 0 while it is down (calls wait) or being probed.",
            ),
            external_api_state_seconds: float_gauge(
                &r,
                "external_api_state_seconds",
                "Seconds the external API has been in its current state (healthy, down, probing).",
            ),
            external_api_probes: counter(
                &r,
                "external_api_probes_total",
                "Probes of a down external API this instance sent (one call at a time for the cluster).",
            ),
            jobs_running: gauge_vec(
                &r,
                "jobs_running",
                "Audit and resync jobs running, by kind.",
                "kind",
            ),
            job_progress,
            registry: r,
        }
    }

    pub fn record_call<T>(&self, verb: &'static str, result: &Result<T, CallError>) {
        let class = match result {
            Ok(_) => "2xx",
            Err(CallError::Status { status, .. }) if *status < 500 => "4xx",
            Err(CallError::Status { .. }) => "5xx",
            Err(CallError::Abandoned) => return,
            Err(_) => "error",
        };
        self.calls.with_label_values(&[verb, class]).inc();
    }

    /// Calls by `(verb, status class)`.
    pub fn calls(&self) -> BTreeMap<(String, String), u64> {
        let mut calls = BTreeMap::new();
        for family in self.calls.collect() {
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                calls.insert(
                    (label("verb"), label("status_class")),
                    metric.get_counter().get_value() as u64,
                );
            }
        }
        calls
    }

    /// Records the time from the change's commit (`committed_at_ms`, epoch) to now.
    pub fn record_lag(&self, committed_at_ms: i64) {
        let lag_ms = (chrono::Utc::now().timestamp_millis() - committed_at_ms).max(0) as u64;
        let lag = Duration::from_millis(lag_ms);
        self.lag.observe(lag.as_secs_f64());
        if let Ok(mut window) = self.lag_window.lock() {
            if window.len() == LAG_SAMPLES {
                window.pop_front();
            }
            window.push_back((Instant::now(), lag));
        }
    }

    /// Lag over the recent window, in milliseconds.
    pub fn lag_summary(&self) -> LagSummary {
        let mut samples: Vec<u64> = match self.lag_window.lock() {
            Ok(mut window) => {
                while window
                    .front()
                    .is_some_and(|(at, _)| at.elapsed() > LAG_WINDOW)
                {
                    window.pop_front();
                }
                window.iter().map(|(_, d)| d.as_millis() as u64).collect()
            }
            Err(_) => Vec::new(),
        };
        if samples.is_empty() {
            return LagSummary::default();
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        LagSummary {
            p50: at(0.50),
            p95: at(0.95),
            p99: at(0.99),
            max: samples[samples.len() - 1],
            samples: samples.len(),
        }
    }

    /// Takes the chart's next point (every [`HISTORY_EVERY`], by [`keep_history`]).
    pub fn take_history_point(&self) {
        let synced = self.synced.get();
        let lag_p95_ms = self.lag_p95_within(HISTORY_EVERY);
        let Ok(mut history) = self.history.lock() else {
            return;
        };
        let seconds = history.taken_at.elapsed().as_secs_f64();
        let synced_per_sec = if seconds > 0.0 {
            synced.saturating_sub(history.synced_then) as f64 / seconds
        } else {
            0.0
        };
        if history.points.len() == HISTORY_POINTS {
            history.points.pop_front();
        }
        history.points.push_back(HistoryPoint {
            at_ms: chrono::Utc::now().timestamp_millis(),
            synced_per_sec: (synced_per_sec * 100.0).round() / 100.0,
            lag_p95_ms,
        });
        history.synced_then = synced;
        history.taken_at = Instant::now();
    }

    /// The chart's points, oldest first: up to the last 15 minutes.
    pub fn history(&self) -> Vec<HistoryPoint> {
        self.history
            .lock()
            .map(|history| history.points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Lag p95 in milliseconds over the samples of the last `within` (0 with none).
    pub fn lag_p95_within(&self, within: Duration) -> u64 {
        let mut samples: Vec<u64> = match self.lag_window.lock() {
            Ok(window) => window
                .iter()
                .filter(|(at, _)| at.elapsed() <= within)
                .map(|(_, lag)| lag.as_millis() as u64)
                .collect(),
            Err(_) => return 0,
        };
        if samples.is_empty() {
            return 0;
        }
        samples.sort_unstable();
        samples[((samples.len() - 1) as f64 * 0.95).round() as usize]
    }

    /// Every metric in the Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Takes a point of the chart's history every [`HISTORY_EVERY`] until shutdown, so the dashboard
/// opens on the last 15 minutes rather than on an empty chart.
pub async fn keep_history(
    metrics: std::sync::Arc<SyncMetrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(HISTORY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        tokio::select! {
            _ = every.tick() => metrics.take_history_point(),
            _ = shutdown.cancelled() => return,
        }
    }
}
