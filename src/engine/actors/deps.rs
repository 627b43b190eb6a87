//! What every order actor shares, and the retry policy they follow: built once by
//! `crate::startup` and handed to the supervisor, which hands it to each order's actor.

use std::sync::Arc;
use std::time::Duration;

use crate::config::RetryPolicy;
use crate::db::PgPool;
use rand::RngExt;
use tokio_util::sync::CancellationToken;

use super::attempt_log::CallsInFlight;
use super::batched::BatchedQueries;
use crate::engine::cluster::leases::Leases;
use crate::engine::gate::destination::Destination;
use crate::engine::gate::rate_limit::ClusterRateLimit;
use crate::engine::gate::throttle::Throttle;
use crate::external::ExternalClient;
use crate::metrics::SyncMetrics;

/// The longest wait for a delayed retry (Sidekiq's 25th retry comes after about 20 days).
pub const MAX_DELAYED_RETRY: Duration = Duration::from_secs(30 * 24 * 3600);

impl RetryPolicy {
    /// The delay before delayed retry number `attempt` (1-based): Sidekiq's
    /// `count**4 + 15 + rand(10 * (count + 1))` seconds with `count = attempt - 1`.
    /// Capped at [`MAX_DELAYED_RETRY`], so no scale or count can overflow a date.
    pub fn delay(&self, attempt: u32) -> Duration {
        let count = f64::from(attempt.saturating_sub(1));
        let jitter = rand::rng().random_range(0.0..10.0 * (count + 1.0));
        let secs = (count.powi(4) + 15.0 + jitter) * self.delayed_scale;
        Duration::try_from_secs_f64(secs)
            .unwrap_or(MAX_DELAYED_RETRY)
            .min(MAX_DELAYED_RETRY)
    }
}

/// What audits may use of the external API's budget (`AUDIT_RATE_SHARE`), so that normal
/// syncing is never starved: at most their share of the rate and of the call slots.
pub struct AuditShare {
    /// The rate limit every call counts against (the throttle's own key).
    pub whole: ClusterRateLimit,
    /// The audits' part of it: a key of its own with a burst of 50 ms of the share
    /// (`startup.rs`), so that a check asking a little late does not lose its turn for good.
    /// A `GET` takes a token of both at once ([`ClusterRateLimit::take_one_within`]): taken one
    /// after the other, tokens of the share waited in the throttle's queue for the other and
    /// went out in bunches above the share.
    pub share: ClusterRateLimit,
    /// The audits' part of `MAX_CONCURRENT_CALLS`, taken before a throttle slot: checks waiting
    /// for their share hold at most these slots, and only these checks ask Redis for tokens.
    pub slots: tokio::sync::Semaphore,
}

/// What every order actor shares. Not `Send` (awc), so it lives on one arbiter.
pub struct SyncDeps {
    /// Reads, and the create mark, which must be durable before the `POST` goes out.
    pub pool: PgPool,
    /// The audits' repairs, written on the durable pool with their outbox rows (and waking the
    /// relay), as any change.
    pub changes: crate::db::Changes,
    /// Outcomes, committed without waiting for the disk (`crate::db::bookkeeping_pool`).
    pub bookkeeping: PgPool,
    /// The read and the recorded success of every event, sent in batches over `pool` and
    /// `bookkeeping`.
    pub batched: BatchedQueries,
    pub client: ExternalClient,
    pub throttle: Throttle,
    /// The external API's health, shared by the cluster: every call's result is evidence.
    pub destination: Destination,
    /// No call is made for an order unless this instance holds its shard's lease.
    pub leases: Leases,
    pub retry: RetryPolicy,
    pub metrics: Arc<SyncMetrics>,
    /// The calls this instance is making, for `GET /orders/{id}/sync`.
    pub calls_in_flight: CallsInFlight,
    /// Whether call attempts are written to the attempt log (`ATTEMPTS_KEPT_PER_ORDER` > 0).
    pub attempt_log_on: bool,
    /// What audits may use of the rate and the call slots (`AUDIT_RATE_SHARE`); `None`: no share.
    pub audit_share: Option<AuditShare>,
    /// Cancelled on SIGTERM: no new call starts; calls in flight finish.
    pub shutdown: CancellationToken,
}
