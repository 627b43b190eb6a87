//! The engine's tasks, each watched: one that ends while the service is not shutting down is
//! logged and started again after a backoff; one that keeps ending fails the engine (see
//! `crate::engine`'s doc for why the process then exits).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr};
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::actors::supervisor::SupervisorActor;
use super::actors::SyncDeps;
use super::attempt_pruner;
use super::backlog::dispatcher::{Dispatcher, InFlight};
use super::backlog::relay::OutboxRelay;
use super::backlog::scheduler::Scheduler;
use super::backoff::Backoff;
use super::cluster::leases::Leases;
use super::jobs;
use super::keys::Keys;
use super::EngineState;
use crate::db::PgPool;
use crate::metrics::SyncMetrics;

/// Restarts allowed within `RESTART_WINDOW` before a task counts as impossible to keep running.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// The longest wait before a task is started again (the first is `backoff::FIRST_DELAY`).
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// What the tasks are built from.
pub(super) struct EngineParts {
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
    pub attempt_retention: crate::config::AttemptRetention,
    /// How audits and resyncs run.
    pub jobs: crate::config::JobSettings,
    /// `ROLE=api`: run the relay alone (no leases, no reads, no calls).
    pub relay_only: bool,
    pub shutdown: CancellationToken,
}

/// The running tasks' handles.
pub(super) struct Running {
    pub supervisor: Addr<SupervisorActor>,
    /// The events read from Redis and not yet acknowledged; shutdown waits for them.
    pub in_flight: InFlight,
    pub state: watch::Receiver<EngineState>,
}

type TaskFuture = Pin<Box<dyn Future<Output = ()>>>;
/// Starts a fresh run of a task.
type StartTask = Box<dyn Fn() -> TaskFuture>;

/// Starts the actors and every task, each watched (see `crate::engine`'s doc).
pub(super) fn start(parts: EngineParts) -> Running {
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
                Box::pin(super::view::progress::log_progress(
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
    Running {
        supervisor,
        in_flight,
        state,
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
