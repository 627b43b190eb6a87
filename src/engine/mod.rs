//! The sync engine as one thing that owns its tasks: the outbox relay, the dispatcher and its
//! acknowledger, the scheduler (delayed retries and the reconciler), the attempt log's pruner,
//! the operator's jobs (audits and resyncs) and the progress log, next to the actors (supervisor,
//! order actors) they feed and the gate (throttle, rate limit) the calls pass.
//!
//! [`SyncEngine::build`] starts it and returns its one handle: the API, the dashboard and the
//! process's shutdown reach the engine through that handle's methods alone.
//!
//! # Layers
//!
//! Each folder imports only the ones below it (`scripts/check-architecture` checks it):
//!
//! | layer | modules |
//! |---|---|
//! | the handle | this file, [`tasks`](self) (the watched tasks) |
//! | what runs beside the path | [`view`] (census, worker watch, stats, progress log), [`jobs`], [`attempt_pruner`] |
//! | the backlog | [`backlog`] (relay, dispatcher, scheduler) |
//! | the actors | [`actors`] (supervisor, order actors, the event path) |
//! | the gate and the cluster | [`gate`] (throttle, rate limit, pause, destination), [`cluster`] (leases) |
//! | the ground | [`keys`] (the Redis layout and connection), `backoff` |
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
//!    `gate::throttle` slot, take the shard's fence (`cluster::leases::Fence`), `calls::call_with_retries`
//!    (each attempt after a token from the cluster-wide `gate::rate_limit`), record the
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
pub mod gate;
pub mod jobs;
pub mod keys;
mod tasks;
pub mod view;

// What the rest of the service names of the engine: the figures its handle's methods answer
// with. Nothing outside `crate::engine` reaches into its folders.
pub use actors::attempt_log::CallInFlight;
pub use actors::messages::MailboxStats;
pub use gate::destination::{DestinationView, Health};
pub use gate::throttle::ThrottleState;
pub use keys::connect as connect_redis;
pub use view::census::{Counts, InstanceFigures};
pub use view::stats::ShardStats;
pub use view::workers::WorkersSeen;

use crate::domain::OrderId;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use redis::aio::ConnectionManager;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::db::{self, Changes, DatabaseConnection};
use crate::external::ExternalClient;
use crate::metrics::{HistoryPoint, SyncMetrics};
use actors::attempt_log::CallsInFlight;
use actors::deps::AuditShare;
use actors::messages::GetMailboxStats;
use actors::supervisor::SupervisorActor;
use actors::{BatchedQueries, SyncDeps};
use backlog::dispatcher::InFlight;
use cluster::leases::Leases;
use cluster::InstanceId;
use gate::destination::{Destination, DestinationWatcher};
use gate::pause::PauseSwitch;
use gate::rate_limit::ClusterRateLimit;
use gate::throttle::Throttle;
use keys::Keys;
use view::census::Publisher;
use view::workers::WorkerWatch;

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

    /// Running as configured: every task, or the relay alone (`ROLE=api`).
    pub fn is_up(&self) -> bool {
        matches!(self, Self::Running | Self::RelayOnly)
    }
}

/// What the engine shares with the rest of its instance (the HTTP API), made once by
/// `Application::build`.
pub struct Shared {
    pub db: DatabaseConnection,
    pub redis: ConnectionManager,
    /// The one write path; the relay waits on its doorbell.
    pub changes: Changes,
    pub metrics: Arc<SyncMetrics>,
    /// Where calls go (the built-in fake's address when none is configured).
    pub external_api_url: String,
    /// Cancelled when shutdown begins: no new event or call starts.
    pub shutdown: CancellationToken,
}

/// Why the engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The bookkeeping pool could not connect.
    #[error("{0:#}")]
    Database(anyhow::Error),
    /// This instance cannot join the others (a different `SHARDS`, say).
    #[error("{0}")]
    Cluster(String),
    #[error(transparent)]
    Tls(#[from] rustls::Error),
}

/// The figures gathered from the engine at a scrape.
pub struct Snapshot {
    /// `None` when the throttle did not answer.
    pub throttle: Option<ThrottleState>,
    pub mailbox: MailboxStats,
    /// Each shard's stream (empty when Redis could not be read).
    pub shards: Vec<ShardStats>,
    /// The live instances of the deployment, their figures and their shards.
    pub instances: Vec<InstanceFigures>,
}

/// The sync engine's one handle: what the API, the dashboard and the process's shutdown know of
/// it. Cheap to clone.
#[derive(Clone)]
pub struct SyncEngine {
    instance: InstanceId,
    keys: Keys,
    redis: ConnectionManager,
    throttle: Throttle,
    pause: PauseSwitch,
    destination: Destination,
    workers: WorkerWatch,
    calls_in_flight: CallsInFlight,
    /// `Some` when this instance takes shard leases (the engine on, `ROLE` `all` or `worker`).
    leases: Option<Leases>,
    /// `None` with `SYNC_ENGINE=false`.
    supervisor: Option<Addr<SupervisorActor>>,
    in_flight: Option<InFlight>,
    state: watch::Receiver<EngineState>,
    delayed_retry_limit: u32,
    built_at: Instant,
}

impl SyncEngine {
    /// Builds the engine for `settings` and starts it: its gate (throttle, rate limit, pause,
    /// the external API's health), the watchers every role runs (the census, the worker watch),
    /// and, with `SYNC_ENGINE` on, the actors and the tasks of its role (see the module's doc).
    pub async fn build(settings: &Settings, shared: Shared) -> Result<Self, BuildError> {
        let Shared {
            db,
            redis,
            changes,
            metrics,
            external_api_url,
            shutdown,
        } = shared;
        let keys = Keys::new(&settings.redis.prefix, settings.cluster.shards);
        cluster::check_shard_count(&mut redis.clone(), &keys)
            .await
            .map_err(BuildError::Cluster)?;
        let pool = db.get_postgres_connection_pool().clone();
        let bookkeeping = db::bookkeeping_pool(
            settings.database.url.expose(),
            settings.database.max_connections,
        )
        .await
        .map_err(BuildError::Database)?;
        // The trusted roots are read here, once; every call's handshake shares them.
        let tls = crate::external::tls::client_config()?;

        let engine = &settings.engine;
        let role = settings.role;
        let rate_limit = ClusterRateLimit::new(
            redis.clone(),
            keys.rate_limit(),
            engine.rate_per_sec,
            engine.burst,
        );
        let throttle =
            Throttle::start_cluster_wide(engine.max_concurrent_calls, rate_limit.clone());
        let audit_share = AuditShare {
            share: ClusterRateLimit::new(
                redis.clone(),
                keys.audit_rate_limit(),
                settings.jobs.audit_rate(),
                (settings.jobs.audit_rate() / 20).max(1),
            ),
            whole: rate_limit,
            slots: tokio::sync::Semaphore::new(
                settings.jobs.audit_slots(engine.max_concurrent_calls),
            ),
        };
        let instance = InstanceId::generate(settings.cluster.instance_id.as_deref());
        let leases = Leases::new(instance.clone(), keys.clone(), settings.cluster.leases);
        let calls_in_flight = CallsInFlight::default();
        let destination = Destination::new(settings.external.health);
        let pause = PauseSwitch::new(throttle.clone(), metrics.clone());
        let workers = WorkerWatch::default();

        actix_rt::spawn(destination.clone().keep_watching(DestinationWatcher {
            redis: redis.clone(),
            keys: keys.clone(),
            instance: instance.to_string(),
            pool: pool.clone(),
            retry_scale: engine.retry.delayed_scale,
            throttle: throttle.clone(),
            syncs: engine.enabled && role.syncs(),
            shutdown: shutdown.clone(),
        }));
        let deps = Rc::new(SyncDeps {
            pool: pool.clone(),
            changes: changes.clone(),
            bookkeeping: bookkeeping.clone(),
            batched: BatchedQueries::start(pool.clone(), bookkeeping.clone()),
            client: ExternalClient::new(
                &external_api_url,
                settings.external.token.clone(),
                settings.external.timeout,
                settings.external.retry_after_max,
                tls,
            ),
            throttle: throttle.clone(),
            destination: destination.clone(),
            leases: leases.clone(),
            retry: engine.retry,
            metrics: metrics.clone(),
            calls_in_flight: calls_in_flight.clone(),
            attempt_log_on: settings.attempts.kept_per_order > 0,
            audit_share: Some(audit_share),
            shutdown: shutdown.clone(),
        });
        let running = if engine.enabled {
            if role.syncs() {
                tracing::info!(%instance, shards = keys.shards(), ?role, "sync engine starting; taking this instance's share of the shards");
            } else {
                tracing::info!(
                    ?role,
                    "ROLE=api: relaying the outbox only; workers make the calls"
                );
            }
            Some(tasks::start(tasks::EngineParts {
                deps,
                pool: pool.clone(),
                bookkeeping,
                redis: redis.clone(),
                redis_url: settings.redis.url.expose().to_string(),
                keys: keys.clone(),
                leases: leases.clone(),
                changes,
                metrics: metrics.clone(),
                max_in_flight_events: engine.max_in_flight_events,
                order_actor_idle: engine.order_actor_idle,
                reconcile_quiet: engine.reconcile_quiet,
                attempt_retention: settings.attempts,
                jobs: settings.jobs,
                relay_only: !role.syncs(),
                shutdown: shutdown.clone(),
            }))
        } else {
            tracing::info!("SYNC_ENGINE=false: serving the API only; changes wait in the outbox");
            None
        };
        let in_flight = running.as_ref().map(|r| r.in_flight.clone());
        actix_rt::spawn(
            Publisher {
                redis: redis.clone(),
                keys: keys.clone(),
                instance: instance.to_string(),
                role,
                metrics,
                in_flight: in_flight.clone(),
                shutdown: shutdown.clone(),
            }
            .keep_publishing(),
        );
        actix_rt::spawn(workers.clone().keep_watching(
            redis.clone(),
            keys.clone(),
            pool.clone(),
            shutdown.clone(),
        ));
        actix_rt::spawn(pause.clone().keep_watching(pool, shutdown));
        Ok(Self {
            instance,
            keys,
            redis,
            throttle,
            pause,
            destination,
            workers,
            calls_in_flight,
            leases: running.as_ref().filter(|_| role.syncs()).map(|_| leases),
            supervisor: running.as_ref().map(|r| r.supervisor.clone()),
            in_flight,
            state: match running {
                Some(running) => running.state,
                None => watch::channel(EngineState::Off).1,
            },
            delayed_retry_limit: engine.retry.delayed_limit,
            built_at: Instant::now(),
        })
    }

    /// The engine's state now.
    pub fn state(&self) -> EngineState {
        self.state.borrow().clone()
    }

    /// The engine's state as it changes (`run_until_stopped` waits for a failure on it).
    pub fn states(&self) -> watch::Receiver<EngineState> {
        self.state.clone()
    }

    /// This process's id among the instances (every role has one: the census names it).
    pub fn instance_id(&self) -> &str {
        self.instance.as_str()
    }

    /// The shards this instance holds, or `None` when it takes no leases (`ROLE=api`, or the
    /// engine off).
    pub fn shards(&self) -> Option<Vec<u64>> {
        self.leases.as_ref().map(Leases::held_shards)
    }

    /// Why this instance's leases make it unready, if they do: past the lease time without a
    /// round of renewals its leases have run out and it syncs nothing.
    pub fn lease_trouble(&self) -> Option<String> {
        let leases = self.leases.as_ref()?;
        let ttl = leases.times().ttl;
        match leases.since_last_round() {
            Some(ago) if ago <= ttl => None,
            Some(ago) => Some(format!(
                "leases: not renewed for {} s (Redis unreachable?); this worker holds no shard",
                ago.as_secs()
            )),
            None if self.built_at.elapsed() > ttl => {
                Some("leases: never taken since start (Redis unreachable?)".into())
            }
            None => Some("leases: starting".into()),
        }
    }

    /// Whether outbound calls are paused (cluster-wide, by an operator).
    pub fn is_paused(&self) -> bool {
        self.pause.is_paused()
    }

    /// Applies the operator's switch here at once (it is recorded in PostgreSQL by the caller;
    /// the other instances apply it at their next look).
    pub fn set_paused(&self, paused: bool) {
        self.pause.apply(paused);
    }

    /// The external API's health as the cluster sees it.
    pub fn destination(&self) -> DestinationView {
        self.destination.view()
    }

    /// The probes this instance has sent while the external API was down.
    pub fn probes_sent(&self) -> u64 {
        self.destination.probes_sent()
    }

    /// Whether any worker holds the shards.
    pub fn workers(&self) -> WorkersSeen {
        self.workers.seen()
    }

    /// The events read from Redis and not yet acknowledged here.
    pub fn events_in_flight(&self) -> usize {
        self.in_flight.as_ref().map_or(0, InFlight::count)
    }

    /// The call this instance is making for `order_id`, if any.
    pub fn call_in_flight(&self, order_id: OrderId) -> Option<CallInFlight> {
        self.calls_in_flight.get(order_id)
    }

    /// `DELAYED_RETRY_LIMIT`: the delayed retries before an order is dead.
    pub fn delayed_retry_limit(&self) -> u32 {
        self.delayed_retry_limit
    }

    /// The throttle's, the actors', the streams' and the instances' figures, read now. What
    /// cannot be read is logged and left empty: a scrape shows the rest.
    pub async fn snapshot(&self) -> Snapshot {
        let mailbox = match &self.supervisor {
            Some(supervisor) => supervisor.send(GetMailboxStats).await.unwrap_or_default(),
            None => MailboxStats::default(),
        };
        let mut redis = self.redis.clone();
        let shards = view::stats::shard_stats(&mut redis, &self.keys)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(error = %error, "cannot read the backlog's size");
                Vec::new()
            });
        let owners: Vec<(u64, Option<String>)> =
            shards.iter().map(|s| (s.shard, s.owner.clone())).collect();
        let instances = view::census::read_instances(&mut redis, &self.keys, &owners)
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(error = %error, "cannot read the live instances");
                Vec::new()
            });
        Snapshot {
            throttle: self.throttle.state().await,
            mailbox,
            shards,
            instances,
        }
    }

    /// The cluster's throughput and lag over the last 15 minutes, from the census.
    pub async fn cluster_history(&self) -> redis::RedisResult<Vec<HistoryPoint>> {
        view::census::read_history(&mut self.redis.clone(), &self.keys).await
    }

    /// The end of shutdown (after the shutdown token is cancelled): waits up to `timeout` for the
    /// events in flight to be done, then hands this instance's shards over at once, so the other
    /// instances need not wait for the leases to run out. Events not done stay unacknowledged in
    /// Redis for whoever takes the shard next.
    pub async fn drain_and_hand_over(&self, timeout: Duration) {
        if let Some(in_flight) = &self.in_flight {
            let pending = in_flight.count();
            match tokio::time::timeout(timeout, in_flight.drained()).await {
                Ok(()) => tracing::info!(events = pending, "in-flight events finished"),
                Err(_) => tracing::warn!(
                    events = in_flight.count(),
                    "shutdown timeout: leaving unfinished events in Redis for the next start"
                ),
            }
        }
        if let Some(leases) = &self.leases {
            leases.release_all(self.redis.clone()).await;
        }
    }
}
