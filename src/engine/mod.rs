//! The sync engine as one thing that owns its tasks: the outbox relay, the dispatcher and its
//! acknowledger, the scheduler (delayed retries and the reconciler), the attempt log's pruner,
//! the operator's jobs (audits and resyncs) and the progress log, next to the actors (supervisor, order actors, throttle) they feed.
//!
//! Each task is watched. One that ends while the service is not shutting down (a panic, or a
//! return it should never make) is logged and started again after a backoff (0.1 s doubling to
//! 10 s). A task that keeps ending, more than `MAX_RESTARTS` times within `RESTART_WINDOW`, cannot
//! be kept running: the engine is then failed, `/health` answers 503 naming it, and
//! `Application::run_until_stopped` shuts the process down with an error, so it exits non-zero.
//! Exiting is deliberate: a process that serves HTTP but no longer syncs looks alive to
//! everything but its users, while an exited one is restarted by whatever supervises it
//! (systemd, Kubernetes, `restart:` in compose), and restarting reclaims everything left
//! pending.
//!
//! # The path of one event
//!
//! 0. `cluster::leases` holds this instance's share of the shards; only their streams are read.
//! 1. `backlog::relay` publishes a committed outbox row to its shard's stream.
//! 2. `backlog::dispatcher` reads it (`ShardReader::read_new`), takes an in-flight slot, and
//!    sends `actors::messages::HandleEvent` to the supervisor.
//! 3. `actors::supervisor` forwards it to the order's actor (one per order id).
//! 4. `actors::event_path` handles it: read the row, `decision::decide`, mark a create, take a
//!    throttle slot, take the shard's fence (`cluster::leases::Fence`), `calls::call_with_retries`
//!    (each attempt after a token from the cluster-wide `cluster::rate_limit`), record the
//!    outcome (`db::sync`).
//! 5. The outcome goes back on the event's `done` channel; the dispatcher queues the
//!    acknowledgement, and its acknowledger XACKs it in a batch, freeing the slot.
//!
//! Each task has a failpoint, `engine-task-<name>` (the `fail` crate, configured from the
//! `FAILPOINTS` environment variable in the binary, e.g. `FAILPOINTS=engine-task-relay=1*panic`),
//! that ends it with a panic when it (re)starts; the tests use it. It exists only with the
//! `failpoints` cargo feature, which the tests turn on and the release build leaves off.

pub mod actors;
pub mod attempt_pruner;
pub mod backlog;
pub(crate) mod backoff;
pub mod cluster;
pub mod jobs;

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::db::PgPool;
use actix::{Actor, Addr};
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::engine::actors::supervisor::SupervisorActor;
use crate::engine::actors::SyncDeps;
use crate::engine::backlog::dispatcher::{Dispatcher, InFlight};
use crate::engine::backlog::keys::Keys;
use crate::engine::backlog::relay::OutboxRelay;
use crate::engine::backlog::scheduler::Scheduler;
use crate::engine::backoff::Backoff;
use crate::engine::cluster::leases::Leases;
use crate::metrics::SyncMetrics;

/// Restarts allowed within `RESTART_WINDOW` before a task counts as impossible to keep running.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The longest wait before a task is started again (the first is `backoff::FIRST_DELAY`).
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// How the engine is doing, for `/health` and for `run_until_stopped`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineState {
    /// Every task is running (or being restarted).
    Running,
    /// `SYNC_ENGINE=false`: this instance serves the API only.
    Off,
    /// `ROLE=api`: only the outbox relay runs here; workers make the calls.
    RelayOnly,
    /// A task could not be kept running: `task` ended with `why`.
    Failed { task: &'static str, why: String },
}

impl EngineState {
    /// The word `/health` shows: `ok`, `off`, or what failed.
    pub fn describe(&self) -> String {
        match self {
            Self::Running => "ok".into(),
            Self::Off => "off".into(),
            Self::RelayOnly => "relay only (ROLE=api)".into(),
            Self::Failed { task, why } => format!("failed: the {task} task keeps ending ({why})"),
        }
    }
}

/// What the engine is built from.
pub struct EngineParts {
    pub deps: Rc<SyncDeps>,
    /// The durable pool, for the scheduler's reads.
    pub pool: PgPool,
    /// The asynchronous-commit pool, for the relay (`crate::db::bookkeeping_pool`).
    pub bookkeeping: PgPool,
    pub redis: ConnectionManager,
    /// For the connections of the dispatcher's readers, one per held shard.
    pub redis_url: String,
    pub keys: Keys,
    /// The shard leases this instance takes, keeps and hands over.
    pub leases: Leases,
    /// The one write path (the jobs' resync pages); the relay waits on its doorbell.
    pub changes: crate::db::Changes,
    pub metrics: Arc<SyncMetrics>,
    pub max_in_flight_events: usize,
    pub order_actor_idle: Duration,
    pub reconcile_quiet: Duration,
    pub attempt_retention: attempt_pruner::AttemptRetention,
    /// How audits and resyncs run.
    pub jobs: jobs::JobSettings,
    /// `ROLE=api`: run the relay alone (no leases, no reads, no calls).
    pub relay_only: bool,
    pub shutdown: CancellationToken,
}

/// A running sync engine.
pub struct SyncEngine {
    supervisor: Addr<SupervisorActor>,
    in_flight: InFlight,
    state: watch::Receiver<EngineState>,
}

type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;
/// Starts a fresh run of a task.
type StartTask = Box<dyn Fn() -> TaskFuture>;

impl SyncEngine {
    /// Starts the actors and every task, each watched (see the module's doc).
    pub fn start(parts: EngineParts) -> Self {
        let supervisor = SupervisorActor::new(parts.deps, parts.order_actor_idle).start();
        let dispatcher = Dispatcher::new(
            &parts.redis_url,
            parts.redis.clone(),
            parts.keys.clone(),
            parts.leases.clone(),
            supervisor.clone(),
            parts.max_in_flight_events,
            parts.metrics.clone(),
            parts.shutdown.clone(),
        );
        let in_flight = dispatcher.in_flight();
        let (report, state) = watch::channel(if parts.relay_only {
            EngineState::RelayOnly
        } else {
            EngineState::Running
        });
        let report = Rc::new(report);

        let tasks: Vec<(&'static str, StartTask)> = vec![
            ("leases", {
                let (leases, redis, shutdown) = (
                    parts.leases.clone(),
                    parts.redis.clone(),
                    parts.shutdown.clone(),
                );
                Box::new(move || Box::pin(leases.clone().keep(redis.clone(), shutdown.clone())))
            }),
            ("relay", {
                let relay = OutboxRelay::new(
                    parts.bookkeeping.clone(),
                    parts.redis.clone(),
                    parts.keys.clone(),
                    parts.changes.doorbell(),
                    parts.shutdown.clone(),
                );
                Box::new(move || Box::pin(relay.clone().run()))
            }),
            ("dispatcher", {
                let dispatcher = dispatcher.clone();
                Box::new(move || Box::pin(dispatcher.clone().run()))
            }),
            ("acknowledger", {
                let dispatcher = dispatcher.clone();
                Box::new(move || Box::pin(dispatcher.clone().acknowledge()))
            }),
            ("scheduler", {
                let scheduler = Scheduler::new(
                    parts.pool.clone(),
                    parts.redis.clone(),
                    parts.keys.clone(),
                    parts.reconcile_quiet,
                    in_flight.clone(),
                    parts.leases.clone(),
                    parts.metrics.clone(),
                    parts.shutdown.clone(),
                );
                Box::new(move || Box::pin(scheduler.clone().run()))
            }),
            ("attempt-pruner", {
                let (pool, retention, metrics, shutdown) = (
                    parts.bookkeeping.clone(),
                    parts.attempt_retention,
                    parts.metrics.clone(),
                    parts.shutdown.clone(),
                );
                Box::new(move || {
                    Box::pin(attempt_pruner::keep_pruning(
                        pool.clone(),
                        retention,
                        metrics.clone(),
                        shutdown.clone(),
                    ))
                })
            }),
            ("jobs", {
                let runner = jobs::JobRunner {
                    pool: parts.pool.clone(),
                    redis: parts.redis.clone(),
                    keys: parts.keys.clone(),
                    instance: parts.leases.instance().clone(),
                    settings: parts.jobs,
                    changes: parts.changes.clone(),
                    shutdown: parts.shutdown.clone(),
                };
                Box::new(move || Box::pin(runner.clone().run()))
            }),
            ("progress-log", {
                let (metrics, in_flight, redis, keys, shutdown) = (
                    parts.metrics.clone(),
                    in_flight.clone(),
                    parts.redis.clone(),
                    parts.keys.clone(),
                    parts.shutdown.clone(),
                );
                Box::new(move || {
                    Box::pin(crate::telemetry::log_progress(
                        metrics.clone(),
                        in_flight.clone(),
                        redis.clone(),
                        keys.clone(),
                        shutdown.clone(),
                    ))
                })
            }),
        ];
        let tasks = tasks
            .into_iter()
            .filter(|(name, _)| !parts.relay_only || *name == "relay");
        for (name, start) in tasks {
            actix_rt::spawn(keep_running(
                name,
                start,
                parts.shutdown.clone(),
                parts.metrics.clone(),
                report.clone(),
            ));
        }
        Self {
            supervisor,
            in_flight,
            state,
        }
    }

    pub fn supervisor(&self) -> Addr<SupervisorActor> {
        self.supervisor.clone()
    }

    /// The events read from Redis and not yet acknowledged; shutdown waits for them.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.clone()
    }

    /// The engine's state as it changes.
    pub fn state(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }
}

/// Runs one task, starting it again each time it ends before shutdown, until it has ended too
/// often to be worth another try; then reports the engine failed.
async fn keep_running(
    name: &'static str,
    start: StartTask,
    shutdown: CancellationToken,
    metrics: Arc<SyncMetrics>,
    report: Rc<watch::Sender<EngineState>>,
) {
    let mut ended_at: VecDeque<Instant> = VecDeque::new();
    let mut backoff = Backoff::up_to(MAX_RESTART_DELAY);
    loop {
        let run = start();
        #[cfg(feature = "failpoints")]
        let run = async move {
            fail::fail_point!(&format!("engine-task-{name}"));
            run.await
        };
        let ended = actix_rt::spawn(run).await;
        if shutdown.is_cancelled() {
            return;
        }
        let why = match ended {
            Ok(()) => "it returned".to_string(),
            Err(error) if error.is_panic() => {
                let payload = error.into_panic();
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".into());
                format!("it panicked: {message}")
            }
            Err(error) => format!("it was cancelled: {error}"),
        };
        let now = Instant::now();
        ended_at.push_back(now);
        while ended_at
            .front()
            .is_some_and(|at| now.duration_since(*at) > RESTART_WINDOW)
        {
            ended_at.pop_front();
        }
        if ended_at.len() > MAX_RESTARTS {
            tracing::error!(
                task = name,
                why,
                restarts = MAX_RESTARTS,
                "a sync engine task keeps ending; giving up: the service stops"
            );
            report.send_replace(EngineState::Failed { task: name, why });
            return;
        }
        metrics.engine_task_restarts.inc();
        let delay = backoff.next_delay();
        tracing::error!(
            task = name,
            why,
            restart_in_ms = delay.as_millis() as u64,
            "a sync engine task ended unexpectedly; starting it again"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
