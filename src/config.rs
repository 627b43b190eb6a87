//! Service configuration, read once at start-up from the environment (and a `.env` file).
//!
//! Every variable has a default that works on a machine where PostgreSQL and Redis run locally
//! on their standard ports, so `cargo run` needs no setup. A value that does not parse is an
//! error naming the variable, never a silent fallback.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// A secret read from the environment. It prints as `[redacted]` in `Debug` and `Display`, so
/// neither a log line nor an error message can leak it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it (a header) or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Which checks apply at start-up: `development` (the default) lets the service run on a bare
/// machine (the built-in fake, open routes); `production` refuses to start on any setting that
/// only makes sense on a developer's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    #[default]
    Development,
    Production,
}

/// What one process does (`ROLE`), as the reference ran `web` and `sidekiq` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The HTTP API, and the outbox relay, so its own commits reach Redis at once. No calls.
    Api,
    /// The sync engine (relay, shard leases, dispatcher, actors, scheduler), with only the
    /// operator's routes (`/health`, `/metrics`, `/metrics/actors`). Scale these out.
    Worker,
    /// Both, in one process (the default: one command runs everything).
    #[default]
    All,
}

impl Role {
    /// Whether this process serves the orders API (and the dashboard, the docs, admin, inbound).
    pub fn serves_api(self) -> bool {
        matches!(self, Self::Api | Self::All)
    }

    /// Whether this process takes shard leases and makes calls.
    pub fn syncs(self) -> bool {
        matches!(self, Self::Worker | Self::All)
    }

    /// The value of `ROLE` that selects it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Worker => "worker",
            Self::All => "all",
        }
    }
}

/// A key of `INBOUND_WEBHOOK_SECRET` (Standard Webhooks: `whsec_` and the base64 of the key). It
/// prints as `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookKey(Vec<u8>);

impl WebhookKey {
    /// Reads one `whsec_<base64>` key; `None` when it is not one.
    pub fn from_whsec(text: &str) -> Option<Self> {
        use base64::Engine;
        let encoded = text.strip_prefix("whsec_").unwrap_or(text);
        base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .filter(|bytes| !bytes.is_empty())
            .map(Self)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `API_TOKENS`: comma-separated, so a new token can be added before the old one is removed.
fn comma_separated_tokens<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Secret>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    Ok(raw
        .split(',')
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .map(Secret::new)
        .collect())
}

/// `INBOUND_WEBHOOK_SECRET`: space-separated `whsec_<base64>` keys (several during a rotation).
fn webhook_keys<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<WebhookKey>, D::Error> {
    let raw = String::deserialize(deserializer)?;
    raw.split_whitespace()
        .map(|key| {
            // The key itself is never echoed.
            WebhookKey::from_whsec(key).ok_or_else(|| {
                serde::de::Error::custom(
                    "INBOUND_WEBHOOK_SECRET: each key must be whsec_ followed by base64",
                )
            })
        })
        .collect()
}

/// The environment variables as they are read: one field per variable (its name lower-cased),
/// each with its default and, in its type, its range. [`Settings`] groups them by the part of
/// the service they configure; nothing else sees this shape.
#[derive(Deserialize)]
struct Variables {
    /// `ORDER_SYNC_ENV`: `development` or `production` (see [`Environment`]).
    #[serde(default)]
    pub order_sync_env: Environment,
    #[serde(default = "defaults::port")]
    pub port: u16,
    #[serde(default = "defaults::host")]
    pub host: String,
    #[serde(default = "defaults::database_url")]
    pub database_url: String,
    /// Most connections the pool opens to PostgreSQL.
    #[serde(default = "defaults::database_max_connections")]
    pub database_max_connections: Bounded<1, 1_000>,
    #[serde(default = "defaults::redis_url")]
    pub redis_url: String,
    /// Namespace of every Redis key, so tests and instances can share one Redis.
    #[serde(default = "defaults::redis_prefix")]
    pub redis_prefix: String,
    /// Unset: start the built-in fake external API and use it.
    #[serde(default)]
    pub external_api_url: Option<String>,
    #[serde(default = "defaults::external_api_token")]
    pub external_api_token: Secret,
    #[serde(default = "defaults::rate_limit_per_sec")]
    pub rate_limit_per_sec: Bounded<1, 1_000_000>,
    #[serde(default = "defaults::rate_limit_burst")]
    pub rate_limit_burst: Bounded<0, 1_000_000>,
    #[serde(default = "defaults::max_concurrent_calls")]
    pub max_concurrent_calls: Bounded<1, 10_000>,
    #[serde(default = "defaults::max_in_flight_events")]
    pub max_in_flight_events: Bounded<1, 1_000_000>,
    #[serde(default = "defaults::order_actor_idle_secs")]
    pub order_actor_idle_secs: Bounded<1, 86_400>,
    #[serde(default = "defaults::retry_max_attempts")]
    pub retry_max_attempts: Bounded<1, 100>,
    /// Delayed retries (Sidekiq's schedule) after the quick ones, before an order is `dead`.
    #[serde(default = "defaults::delayed_retry_limit")]
    pub delayed_retry_limit: Bounded<0, 100>,
    /// Multiplies the delayed schedule (1.0 = Sidekiq's `count^4 + 15 + jitter` seconds).
    #[serde(default = "defaults::delayed_retry_scale")]
    pub delayed_retry_scale: RetryScale,
    /// Bounds each external call as a whole (connecting, sending, the answer and its body), in
    /// milliseconds.
    #[serde(default = "defaults::external_timeout_ms")]
    pub external_timeout_ms: Bounded<1, 600_000>,
    /// Longest pause a 429's `Retry-After` can impose on every call, in seconds: the external API
    /// is untrusted, and an unbounded value would stop syncing for as long as it says.
    #[serde(default = "defaults::retry_after_max_secs")]
    pub retry_after_max_secs: Bounded<0, 86_400>,
    /// Unset: the admin endpoints are off (404), not open.
    #[serde(default)]
    pub admin_token: Option<Secret>,
    /// Bearer tokens for every data route (all but `/health`, `/inbound`, `/admin` and the
    /// data-free pages). Empty: those routes are open (development only).
    #[serde(default, deserialize_with = "comma_separated_tokens")]
    pub api_tokens: Vec<Secret>,
    /// Keys that sign inbound write-backs. Empty: `/inbound` is open (development only).
    #[serde(default, deserialize_with = "webhook_keys")]
    pub inbound_webhook_secret: Vec<WebhookKey>,
    #[serde(default = "defaults::shutdown_timeout_secs")]
    pub shutdown_timeout_secs: Bounded<0, 3_600>,
    /// How long an order that is behind must have been quiet, with the backlog and the outbox
    /// empty, before the reconciler publishes it again (its event was lost with Redis).
    #[serde(default = "defaults::reconcile_quiet_secs")]
    pub reconcile_quiet_secs: Bounded<1, 86_400>,
    /// `ROLE`: `api`, `worker` or `all` (see [`Role`]).
    #[serde(default)]
    pub role: Role,
    /// `false`: no engine task at all, not even the relay: changes wait in the outbox (for
    /// maintenance; `ROLE=api` is the way to run an API-only process).
    #[serde(default = "defaults::sync_engine")]
    pub sync_engine: bool,
    /// Streams the backlog is split into; the unit of work an instance holds a lease on. Every
    /// instance of a deployment must use the same value (checked against Redis at start-up).
    #[serde(default = "defaults::shards")]
    pub shards: Bounded<1, 1_024>,
    /// How long a shard's lease lasts unless renewed (renewed every fifth of it). At least twice
    /// `EXTERNAL_TIMEOUT_MS` + 1 s, so calls never stop between renewals (docs/ARCHITECTURE.md).
    #[serde(default = "defaults::shard_lease_ms")]
    pub shard_lease_ms: Bounded<1_000, 3_600_000>,
    /// This instance's name in logs, leases and the consumer group; a unique suffix is added.
    /// Unset: the host name.
    #[serde(default)]
    pub instance_id: Option<String>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: Bounded<1_024, 67_108_864>,
    /// Call attempts kept per order in the attempt log (the newest); 0 turns the log off.
    #[serde(default = "defaults::attempts_kept_per_order")]
    pub attempts_kept_per_order: Bounded<0, 10_000>,
    /// Attempts older than this many days are pruned from the attempt log.
    #[serde(default = "defaults::attempts_retention_days")]
    pub attempts_retention_days: Bounded<1, 3_650>,
    /// How often the attempt log is pruned.
    #[serde(default = "defaults::attempts_prune_interval_secs")]
    pub attempts_prune_interval_secs: Bounded<1, 86_400>,
    /// The share of `RATE_LIMIT_PER_SEC` audits may use (their `GET`s), above 0 and at most 1.
    /// Normal syncing keeps the rest.
    #[serde(default = "defaults::audit_rate_share")]
    pub audit_rate_share: Share,
    /// Seconds between continuous audits, each of the next `AUDIT_SAMPLE_SIZE` ids (wrapping
    /// around); 0 (the default) runs audits only when asked (`POST /admin/audit`).
    #[serde(default = "defaults::audit_interval_secs")]
    pub audit_interval_secs: Bounded<0, 604_800>,
    /// Ids one continuous audit checks.
    #[serde(default = "defaults::audit_sample_size")]
    pub audit_sample_size: Bounded<1, 10_000_000>,
    /// Failed calls for different orders in a row (no connection, timeouts, 5xx, 408, 429) that
    /// turn the external API `down` for the whole cluster (`engine::gate::destination`).
    #[serde(default = "defaults::external_api_down_after")]
    pub external_api_down_after: Bounded<1, 1_000>,
    /// The longest wait between two probes of a down external API, in milliseconds (probes back
    /// off from 1 s, doubling). It bounds how long the API's return goes unnoticed.
    #[serde(default = "defaults::external_api_probe_max_ms")]
    pub external_api_probe_max_ms: Bounded<100, 3_600_000>,
    /// How long the throttle takes to open fully once the external API is back, in
    /// milliseconds: a tenth of `MAX_CONCURRENT_CALLS` at first, all of them at the end.
    #[serde(default = "defaults::external_api_ramp_ms")]
    pub external_api_ramp_ms: Bounded<0, 600_000>,
}

mod defaults {
    use super::{Bounded, RetryScale, Secret, Share};

    pub fn port() -> u16 {
        8080
    }
    /// Every interface: in a container (the Dockerfile, docker-compose) the service must be
    /// reachable from outside its own network namespace. On a shared machine set
    /// `HOST=127.0.0.1`, and in production put `API_TOKENS` on the routes (`ORDER_SYNC_ENV`).
    pub fn host() -> String {
        "0.0.0.0".into()
    }
    pub fn database_url() -> String {
        "postgres://postgres@127.0.0.1:5432/order_sync".into()
    }
    pub fn database_max_connections() -> Bounded<1, 1_000> {
        Bounded::in_range(20)
    }
    pub fn redis_url() -> String {
        "redis://127.0.0.1:6379".into()
    }
    pub fn redis_prefix() -> String {
        "order-sync".into()
    }
    pub fn external_api_token() -> Secret {
        Secret::new("dev-token")
    }
    /// The reference throttles at 1,000 calls per 10 s.
    pub fn rate_limit_per_sec() -> Bounded<1, 1_000_000> {
        Bounded::in_range(100)
    }
    pub fn rate_limit_burst() -> Bounded<0, 1_000_000> {
        Bounded::in_range(100)
    }
    pub fn max_concurrent_calls() -> Bounded<1, 10_000> {
        Bounded::in_range(25)
    }
    pub fn max_in_flight_events() -> Bounded<1, 1_000_000> {
        Bounded::in_range(1_000)
    }
    pub fn order_actor_idle_secs() -> Bounded<1, 86_400> {
        Bounded::in_range(30)
    }
    /// Faraday's retry middleware in the reference: 3 retries.
    pub fn retry_max_attempts() -> Bounded<1, 100> {
        Bounded::in_range(4)
    }
    /// Sidekiq's default retry count.
    pub fn delayed_retry_limit() -> Bounded<0, 100> {
        Bounded::in_range(25)
    }
    pub fn delayed_retry_scale() -> RetryScale {
        RetryScale(1.0)
    }
    /// The reference's Faraday timeouts: 5 s to connect, 5 s for the request.
    pub fn external_timeout_ms() -> Bounded<1, 600_000> {
        Bounded::in_range(5_000)
    }
    /// Five minutes: longer than any sensible rate-limit window, short enough to notice.
    pub fn retry_after_max_secs() -> Bounded<0, 86_400> {
        Bounded::in_range(300)
    }
    /// Sidekiq waits 25 s for jobs in flight on TERM.
    pub fn shutdown_timeout_secs() -> Bounded<0, 3_600> {
        Bounded::in_range(25)
    }
    pub fn reconcile_quiet_secs() -> Bounded<1, 86_400> {
        Bounded::in_range(10)
    }
    pub fn shards() -> Bounded<1, 1_024> {
        Bounded::in_range(8)
    }
    /// 15 s: the fence closes 9 s after a renewal (5 s calls + 1 s margin), renewals come every
    /// 3 s, and a killed instance's shards are taken over within 18 s.
    pub fn shard_lease_ms() -> Bounded<1_000, 3_600_000> {
        Bounded::in_range(15_000)
    }
    pub fn sync_engine() -> bool {
        true
    }
    pub fn max_body_bytes() -> Bounded<1_024, 67_108_864> {
        Bounded::in_range(64 * 1024)
    }
    /// Sidekiq Web shows a job's last error; Svix keeps every attempt. 20 covers the quick
    /// retries of several delayed retries.
    pub fn attempts_kept_per_order() -> Bounded<0, 10_000> {
        Bounded::in_range(20)
    }
    pub fn attempts_retention_days() -> Bounded<1, 3_650> {
        Bounded::in_range(7)
    }
    pub fn attempts_prune_interval_secs() -> Bounded<1, 86_400> {
        Bounded::in_range(60)
    }
    /// A tenth: an audit of 100,000 orders at 100 calls/s takes under three hours, and normal
    /// syncing keeps nine tenths of the rate.
    pub fn audit_rate_share() -> Share {
        Share(0.1)
    }
    pub fn audit_interval_secs() -> Bounded<0, 604_800> {
        Bounded::in_range(0)
    }
    pub fn audit_sample_size() -> Bounded<1, 10_000_000> {
        Bounded::in_range(1_000)
    }
    /// Five: 2% of calls failing at random make five in a row once in 300 million calls.
    pub fn external_api_down_after() -> Bounded<1, 1_000> {
        Bounded::in_range(5)
    }
    /// Three seconds: a returning API is noticed within 3 s, at one call per 3 s while down.
    pub fn external_api_probe_max_ms() -> Bounded<100, 3_600_000> {
        Bounded::in_range(3_000)
    }
    pub fn external_api_ramp_ms() -> Bounded<0, 600_000> {
        Bounded::in_range(2_000)
    }
}

/// What each component needs, in its own units: the one place a setting's number becomes a
/// `Duration` or a policy.
/// All settings of one service instance, by the part of the service each configures. They come
/// from the environment ([`Settings::from_env`]); docs/CONFIGURATION.md lists the variables.
/// Every section derives `Debug`: the secrets and the URLs' passwords print redacted through
/// their own types ([`Secret`], [`WebhookKey`], [`ConnectionUrl`]).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `ORDER_SYNC_ENV`.
    pub environment: Environment,
    /// `ROLE`.
    pub role: Role,
    pub http: HttpSettings,
    pub auth: AuthSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub external: ExternalSettings,
    pub engine: EngineSettings,
    pub cluster: ClusterSettings,
    /// Audits and resyncs (`AUDIT_*`, and the rate they share).
    pub jobs: JobSettings,
    /// The attempt log (`ATTEMPTS_*`).
    pub attempts: AttemptRetention,
}

/// The HTTP server (`HOST`, `PORT`, `MAX_BODY_BYTES`, `SHUTDOWN_TIMEOUT_SECS`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub host: String,
    pub port: u16,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long calls in flight get to finish at shutdown.
    pub shutdown_timeout: Duration,
}

/// Who may use which route (`API_TOKENS`, `ADMIN_TOKEN`, `INBOUND_WEBHOOK_SECRET`).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Empty: the data routes are open (development only).
    pub api_tokens: Vec<Secret>,
    /// `None`: the admin endpoints are off (404), not open.
    pub admin_token: Option<Secret>,
    /// Keys that sign inbound write-backs. Empty: `/inbound` is open (development only).
    pub webhook_keys: Vec<WebhookKey>,
}

/// PostgreSQL (`DATABASE_URL`, `DATABASE_MAX_CONNECTIONS`).
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: ConnectionUrl,
    pub max_connections: u32,
}

/// Redis (`REDIS_URL`, `REDIS_PREFIX`).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: ConnectionUrl,
    /// Namespace of every key, so tests and deployments can share one Redis.
    pub prefix: String,
}

/// The external API and how its health is judged (`EXTERNAL_*`, `RETRY_AFTER_MAX_SECS`).
#[derive(Debug, Clone)]
pub struct ExternalSettings {
    /// `None`: start the built-in fake external API and use it.
    pub url: Option<ConnectionUrl>,
    pub token: Secret,
    /// Bounds each call as a whole (connecting, sending, the answer and its body).
    pub timeout: Duration,
    /// Longest pause a 429's `Retry-After` can impose on every call.
    pub retry_after_max: Duration,
    pub health: DestinationSettings,
}

/// The sync engine: whether it runs, the throttle, the actors and the retries.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// `SYNC_ENGINE=false`: no engine task at all, not even the relay.
    pub enabled: bool,
    /// `RATE_LIMIT_PER_SEC`, for the whole deployment.
    pub rate_per_sec: u32,
    /// `RATE_LIMIT_BURST`.
    pub burst: u32,
    /// `MAX_CONCURRENT_CALLS`, per instance.
    pub max_concurrent_calls: u32,
    pub max_in_flight_events: usize,
    pub order_actor_idle: Duration,
    pub retry: RetryPolicy,
    /// How long an order that is behind must have been quiet before the reconciler publishes it
    /// again (`RECONCILE_QUIET_SECS`).
    pub reconcile_quiet: Duration,
}

/// Several instances sharing the backlog (`SHARDS`, `SHARD_LEASE_MS`, `INSTANCE_ID`).
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub shards: u64,
    pub leases: LeaseTimes,
    /// This instance's name in logs and leases (a unique suffix is added); `None`: the host name.
    pub instance_id: Option<String>,
}

/// A URL that may carry a password (PostgreSQL's, Redis's): `Debug` and `Display` show it with
/// the password redacted ([`redact_url`]); [`ConnectionUrl::expose`] gives it whole, to connect.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionUrl(String);

impl ConnectionUrl {
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl fmt::Display for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl From<Variables> for Settings {
    fn from(v: Variables) -> Self {
        let external_timeout = Duration::from_millis(v.external_timeout_ms.get());
        let rate_per_sec = v.rate_limit_per_sec.get_u32();
        Settings {
            environment: v.order_sync_env,
            role: v.role,
            http: HttpSettings {
                host: v.host,
                port: v.port,
                max_body_bytes: v.max_body_bytes.get_usize(),
                shutdown_timeout: Duration::from_secs(v.shutdown_timeout_secs.get()),
            },
            auth: AuthSettings {
                api_tokens: v.api_tokens,
                admin_token: v.admin_token,
                webhook_keys: v.inbound_webhook_secret,
            },
            database: DatabaseSettings {
                url: ConnectionUrl(v.database_url),
                max_connections: v.database_max_connections.get_u32(),
            },
            redis: RedisSettings {
                url: ConnectionUrl(v.redis_url),
                prefix: v.redis_prefix,
            },
            external: ExternalSettings {
                url: v.external_api_url.map(ConnectionUrl),
                token: v.external_api_token,
                timeout: external_timeout,
                retry_after_max: Duration::from_secs(v.retry_after_max_secs.get()),
                health: DestinationSettings {
                    down_after: v.external_api_down_after.get_u32(),
                    probe_max: Duration::from_millis(v.external_api_probe_max_ms.get()),
                    ramp: Duration::from_millis(v.external_api_ramp_ms.get()),
                    probe_lease: external_timeout + Duration::from_secs(1),
                },
            },
            engine: EngineSettings {
                enabled: v.sync_engine,
                rate_per_sec,
                burst: v.rate_limit_burst.get_u32(),
                max_concurrent_calls: v.max_concurrent_calls.get_u32(),
                max_in_flight_events: v.max_in_flight_events.get_usize(),
                order_actor_idle: Duration::from_secs(v.order_actor_idle_secs.get()),
                retry: RetryPolicy {
                    quick_attempts: v.retry_max_attempts.get_u32(),
                    delayed_limit: v.delayed_retry_limit.get_u32(),
                    delayed_scale: v.delayed_retry_scale.get(),
                },
                reconcile_quiet: Duration::from_secs(v.reconcile_quiet_secs.get()),
            },
            cluster: ClusterSettings {
                shards: v.shards.get(),
                leases: LeaseTimes::new(
                    Duration::from_millis(v.shard_lease_ms.get()),
                    external_timeout,
                ),
                instance_id: v.instance_id,
            },
            jobs: JobSettings {
                rate_per_sec,
                audit_share: v.audit_rate_share.get(),
                audit_every: (v.audit_interval_secs.get() > 0)
                    .then(|| Duration::from_secs(v.audit_interval_secs.get())),
                audit_sample: v.audit_sample_size.get(),
            },
            attempts: AttemptRetention {
                kept_per_order: v.attempts_kept_per_order.get(),
                max_age: Duration::from_secs(v.attempts_retention_days.get() * 24 * 3600),
                every: Duration::from_secs(v.attempts_prune_interval_secs.get()),
            },
        }
    }
}

/// `DATABASE_URL` from the environment (after `.env`), or its default: for tools such as the
/// seeder that need only the database.
pub fn database_url_from_env() -> String {
    let _ = dotenvy::dotenv();
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(defaults::database_url)
}

/// A setting that cannot be used: the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl Settings {
    /// Reads `.env` (if present) and then the process environment, which wins.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth failing on.
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError(format!(".env: {e}"))),
        }
        Self::from_vars(std::env::vars())
    }

    /// Builds settings from explicit `(NAME, value)` pairs; tests use this to avoid touching the
    /// process environment.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Empty values count as unset, as in most shells' `VAR= cargo run`.
        let vars = vars.into_iter().filter(|(_, v)| !v.is_empty());
        let vars: Vec<(String, String)> = vars.collect();
        let variables: Variables =
            envy::from_iter(vars.clone()).map_err(|e| name_the_variable(&vars, e))?;
        variables.check()?;
        Ok(variables.into())
    }
}

impl Variables {
    /// Rejects combinations the service cannot run with. Each number's range is in its type
    /// ([`Bounded`]), so a typo such as `MAX_CONCURRENT_CALLS=0` already failed to parse.
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.external_api_url {
            url::Url::parse(url)
                .map_err(|e| ConfigError(format!("EXTERNAL_API_URL={}: {e}", redact_url(url))))?;
        }
        let call_budget_ms = self.external_timeout_ms.get() + 1_000;
        if self.shard_lease_ms.get() < 2 * call_budget_ms {
            return Err(ConfigError(format!(
                "SHARD_LEASE_MS must be at least twice EXTERNAL_TIMEOUT_MS + 1000 ({}), not {}: a lease must outlast a call with time to renew it",
                2 * call_budget_ms,
                self.shard_lease_ms.get()
            )));
        }
        if self.order_sync_env == Environment::Production {
            self.check_production()?;
        }
        Ok(())
    }

    /// `ORDER_SYNC_ENV=production` refuses what only a developer's machine should run with:
    /// the built-in fake (it reports orders synced that never left the process), plain HTTP to
    /// another host (the bearer token in clear text), the development token, open routes, and a
    /// guessable admin token.
    fn check_production(&self) -> Result<(), ConfigError> {
        let refuse = |what: &str| Err(ConfigError(format!("{what} (ORDER_SYNC_ENV=production)")));
        let Some(url) = &self.external_api_url else {
            return refuse("EXTERNAL_API_URL must be set: the built-in fake is for development");
        };
        if let Ok(parsed) = url::Url::parse(url) {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(name)) => name == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if parsed.scheme() != "https" && !loopback {
                return refuse(&format!(
                    "EXTERNAL_API_URL={} must use https:// (the bearer token would travel in clear text)",
                    redact_url(url)
                ));
            }
        }
        if self.external_api_token.is_empty()
            || self.external_api_token.expose() == defaults::external_api_token().expose()
        {
            return refuse(
                "EXTERNAL_API_TOKEN must be set to the external API's token, not dev-token",
            );
        }
        if self.api_tokens.is_empty() {
            return refuse("API_TOKENS must be set: the orders API would be open to anyone");
        }
        if self.inbound_webhook_secret.is_empty() {
            return refuse(
                "INBOUND_WEBHOOK_SECRET must be set: anyone could rewrite orders through /inbound",
            );
        }
        if self
            .admin_token
            .as_ref()
            .is_some_and(|token| token.expose().chars().count() < 32)
        {
            return refuse("ADMIN_TOKEN must be at least 32 characters");
        }
        Ok(())
    }
}

/// When envy's error does not say which variable it came from (a value that parsed but lies out
/// of its type's range), finds the variable by reading each one alone: every setting has a
/// default, so only the bad one fails by itself.
fn name_the_variable(vars: &[(String, String)], err: envy::Error) -> ConfigError {
    let message = err.to_string();
    let culprit = vars.iter().find(|(name, value)| {
        envy::from_iter::<_, Variables>([(name.clone(), value.clone())]).is_err()
    });
    match culprit {
        Some((name, _)) if !message.contains(name.as_str()) => {
            ConfigError(format!("{name} {message}"))
        }
        _ => ConfigError(message),
    }
}

/// A whole number that only parses within `MIN..=MAX`, both ends included: the range lives in
/// the field's type, so no component can be handed `MAX_CONCURRENT_CALLS=0` (a stall) or a
/// `RETRY_AFTER_MAX_SECS` that overflows a date (a panic). Out of range, parsing fails with
/// "must be between MIN and MAX, not VALUE".
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Bounded<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> Bounded<MIN, MAX> {
    /// For defaults: a value outside the range is a bug, caught by the defaults' test.
    const fn in_range(value: u64) -> Self {
        assert!(MIN <= value && value <= MAX, "default out of its range");
        Self(value)
    }

    pub fn new(value: u64) -> Option<Self> {
        (MIN..=MAX).contains(&value).then_some(Self(value))
    }

    pub fn get(self) -> u64 {
        self.0
    }

    /// Every range used here ends below `u32::MAX`; saturating keeps that a type fact, not a cast.
    pub fn get_u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }

    pub fn get_usize(self) -> usize {
        usize::try_from(self.0).unwrap_or(usize::MAX)
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Bounded<MIN, MAX> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        Self::new(value).ok_or_else(|| {
            serde::de::Error::custom(format!("must be between {MIN} and {MAX}, not {value}"))
        })
    }
}

impl<const MIN: u64, const MAX: u64> fmt::Debug for Bounded<MIN, MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// `DELAYED_RETRY_SCALE`: a finite number from 0 to 1000. 1000 times the schedule's longest
/// delay (99^4 s, at `DELAYED_RETRY_LIMIT=100`) is 3,000 years, which a timestamp still holds; a
/// larger scale overflowed the date and panicked. NaN and the infinities lie in no range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryScale(f64);

impl RetryScale {
    pub const MAX: f64 = 1_000.0;

    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for RetryScale {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if (0.0..=Self::MAX).contains(&value) {
            return Ok(Self(value));
        }
        Err(serde::de::Error::custom(format!(
            "must be between 0 and {}, not {value}",
            Self::MAX
        )))
    }
}

/// `AUDIT_RATE_SHARE`: a share of the rate limit, above 0 and at most 1 (NaN lies in no range).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Share(f64);

impl Share {
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if value > 0.0 && value <= 1.0 {
            return Ok(Self(value));
        }
        Err(serde::de::Error::custom(format!(
            "must be above 0 and at most 1, not {value}"
        )))
    }
}

/// The URL with any password replaced, for error messages and logs.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) => {
            if url.password().is_some() {
                let _ = url.set_password(Some("redacted"));
            }
            url.to_string()
        }
        Err(_) => "<unparseable url>".to_string(),
    }
}

// The sections' types read by the sync engine (their behaviour, where they have one, is in the
// engine module that uses them: `impl RetryPolicy` in `engine::actors::deps`, say).

/// How jobs run (`crate::config::Settings::jobs`).
#[derive(Debug, Clone, Copy)]
pub struct JobSettings {
    /// `RATE_LIMIT_PER_SEC`.
    pub rate_per_sec: u32,
    /// `AUDIT_RATE_SHARE`.
    pub audit_share: f64,
    /// `AUDIT_INTERVAL_SECS`, when continuous audits are on.
    pub audit_every: Option<Duration>,
    /// `AUDIT_SAMPLE_SIZE`.
    pub audit_sample: u64,
}

/// How the attempt log is kept (`crate::config::Settings::attempts`).
#[derive(Debug, Clone, Copy)]
pub struct AttemptRetention {
    /// 0: the log is off (nothing is written, nothing to prune).
    pub kept_per_order: u64,
    pub max_age: Duration,
    pub every: Duration,
}

/// What the settings say (`EXTERNAL_API_DOWN_AFTER`, `EXTERNAL_API_PROBE_MAX_MS`,
/// `EXTERNAL_API_RAMP_MS`).
#[derive(Debug, Clone, Copy)]
pub struct DestinationSettings {
    /// Failed calls for different orders in a row that turn the API `down`.
    pub down_after: u32,
    /// The longest wait between two probes.
    pub probe_max: Duration,
    /// How long the throttle takes to open fully after the API is back.
    pub ramp: Duration,
    /// How long a probe may hold its lease: a call's whole budget.
    pub probe_lease: Duration,
}

/// How failed calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call in process (the first included), with exponential backoff and jitter.
    pub quick_attempts: u32,
    /// Delayed retries (Sidekiq's schedule) before the order is `dead`.
    pub delayed_limit: u32,
    /// Multiplies the delayed schedule; 1.0 is Sidekiq's own (`count^4 + 15 + jitter` seconds).
    pub delayed_scale: f64,
}

/// The lease's timings.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimes {
    /// How long a lease lasts unless renewed (`SHARD_LEASE_MS`).
    pub ttl: Duration,
    /// How long before the deadline no call may start: the call's timeout plus a margin (`engine::cluster::leases`).
    pub call_budget: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let s = Settings::from_vars(vec![]).expect("defaults are valid");
        assert_eq!(s.http.port, 8080);
        assert_eq!(s.redis.prefix, "order-sync");
        assert!(s.external.url.is_none());
        assert!(s.auth.admin_token.is_none());
        assert_eq!(s.external.retry_after_max, Duration::from_secs(300));
    }

    #[test]
    fn each_out_of_range_number_is_refused_with_its_variables_name() {
        let cases = [
            ("PORT", "65536"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("DATABASE_MAX_CONNECTIONS", "1001"),
            ("RATE_LIMIT_PER_SEC", "0"),
            ("RATE_LIMIT_PER_SEC", "1000001"),
            ("RATE_LIMIT_BURST", "1000001"),
            ("MAX_CONCURRENT_CALLS", "0"),
            ("MAX_CONCURRENT_CALLS", "10001"),
            ("MAX_IN_FLIGHT_EVENTS", "0"),
            ("MAX_IN_FLIGHT_EVENTS", "1000001"),
            ("ORDER_ACTOR_IDLE_SECS", "0"),
            ("ORDER_ACTOR_IDLE_SECS", "86401"),
            ("RETRY_MAX_ATTEMPTS", "0"),
            ("RETRY_MAX_ATTEMPTS", "101"),
            ("DELAYED_RETRY_LIMIT", "101"),
            ("DELAYED_RETRY_SCALE", "-0.5"),
            ("DELAYED_RETRY_SCALE", "1000.5"),
            ("DELAYED_RETRY_SCALE", "1e300"),
            ("DELAYED_RETRY_SCALE", "NaN"),
            ("DELAYED_RETRY_SCALE", "inf"),
            ("EXTERNAL_TIMEOUT_MS", "0"),
            ("EXTERNAL_TIMEOUT_MS", "600001"),
            ("RETRY_AFTER_MAX_SECS", "86401"),
            ("RETRY_AFTER_MAX_SECS", "18446744073709551615"),
            ("SHUTDOWN_TIMEOUT_SECS", "3601"),
            ("RECONCILE_QUIET_SECS", "0"),
            ("RECONCILE_QUIET_SECS", "86401"),
            ("MAX_BODY_BYTES", "1023"),
            ("MAX_BODY_BYTES", "67108865"),
            ("SHARDS", "0"),
            ("SHARDS", "1025"),
            ("SHARD_LEASE_MS", "999"),
            ("EXTERNAL_API_DOWN_AFTER", "0"),
            ("EXTERNAL_API_PROBE_MAX_MS", "99"),
            ("EXTERNAL_API_RAMP_MS", "600001"),
        ];
        for (name, value) in cases {
            let err = Settings::from_vars(vars(&[(name, value)]))
                .expect_err(&format!("{name}={value} is refused"));
            let message = err.to_string();
            assert!(
                message.starts_with("invalid configuration: ") && message.contains(name),
                "{name}={value}: {message}"
            );
        }
    }

    #[test]
    fn a_range_error_says_what_the_range_is() {
        let err = Settings::from_vars(vars(&[("MAX_CONCURRENT_CALLS", "0")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid configuration: MAX_CONCURRENT_CALLS must be between 1 and 10000, not 0"
        );
    }

    #[test]
    fn the_ends_of_each_range_are_accepted() {
        let lowest = [
            ("PORT", "0"),
            ("DATABASE_MAX_CONNECTIONS", "1"),
            ("RATE_LIMIT_PER_SEC", "1"),
            ("RATE_LIMIT_BURST", "0"),
            ("MAX_CONCURRENT_CALLS", "1"),
            ("MAX_IN_FLIGHT_EVENTS", "1"),
            ("ORDER_ACTOR_IDLE_SECS", "1"),
            ("RETRY_MAX_ATTEMPTS", "1"),
            ("DELAYED_RETRY_LIMIT", "0"),
            ("DELAYED_RETRY_SCALE", "0"),
            ("EXTERNAL_TIMEOUT_MS", "1"),
            ("RETRY_AFTER_MAX_SECS", "0"),
            ("SHUTDOWN_TIMEOUT_SECS", "0"),
            ("RECONCILE_QUIET_SECS", "1"),
            ("MAX_BODY_BYTES", "1024"),
            ("SHARDS", "1"),
            ("SHARD_LEASE_MS", "2002"),
            ("ATTEMPTS_KEPT_PER_ORDER", "0"),
            ("ATTEMPTS_RETENTION_DAYS", "1"),
            ("ATTEMPTS_PRUNE_INTERVAL_SECS", "1"),
            ("AUDIT_RATE_SHARE", "0.001"),
            ("AUDIT_INTERVAL_SECS", "0"),
            ("AUDIT_SAMPLE_SIZE", "1"),
            ("EXTERNAL_API_DOWN_AFTER", "1"),
            ("EXTERNAL_API_PROBE_MAX_MS", "100"),
            ("EXTERNAL_API_RAMP_MS", "0"),
        ];
        let highest = [
            ("PORT", "65535"),
            ("DATABASE_MAX_CONNECTIONS", "1000"),
            ("RATE_LIMIT_PER_SEC", "1000000"),
            ("RATE_LIMIT_BURST", "1000000"),
            ("MAX_CONCURRENT_CALLS", "10000"),
            ("MAX_IN_FLIGHT_EVENTS", "1000000"),
            ("ORDER_ACTOR_IDLE_SECS", "86400"),
            ("RETRY_MAX_ATTEMPTS", "100"),
            ("DELAYED_RETRY_LIMIT", "100"),
            ("DELAYED_RETRY_SCALE", "1000"),
            ("EXTERNAL_TIMEOUT_MS", "600000"),
            ("RETRY_AFTER_MAX_SECS", "86400"),
            ("SHUTDOWN_TIMEOUT_SECS", "3600"),
            ("RECONCILE_QUIET_SECS", "86400"),
            ("MAX_BODY_BYTES", "67108864"),
            ("SHARDS", "1024"),
            ("SHARD_LEASE_MS", "3600000"),
            ("ATTEMPTS_KEPT_PER_ORDER", "10000"),
            ("ATTEMPTS_RETENTION_DAYS", "3650"),
            ("ATTEMPTS_PRUNE_INTERVAL_SECS", "86400"),
            ("AUDIT_RATE_SHARE", "1"),
            ("AUDIT_INTERVAL_SECS", "604800"),
            ("AUDIT_SAMPLE_SIZE", "10000000"),
            ("EXTERNAL_API_DOWN_AFTER", "1000"),
            ("EXTERNAL_API_PROBE_MAX_MS", "3600000"),
            ("EXTERNAL_API_RAMP_MS", "600000"),
        ];
        for ends in [lowest, highest] {
            if let Err(err) = Settings::from_vars(vars(&ends)) {
                panic!("{ends:?}: {err}");
            }
        }
    }

    #[test]
    fn a_lease_shorter_than_two_calls_is_refused() {
        let err = Settings::from_vars(vars(&[
            ("EXTERNAL_TIMEOUT_MS", "10000"),
            ("SHARD_LEASE_MS", "15000"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("SHARD_LEASE_MS must be at least twice EXTERNAL_TIMEOUT_MS + 1000 (22000), not 15000"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_role_or_environment_is_refused_naming_it() {
        for (name, bad) in [
            ("ROLE", "wroker"),
            ("ROLE", "API"),
            ("ORDER_SYNC_ENV", "prod"),
            ("SYNC_ENGINE", "maybe"),
        ] {
            let err = Settings::from_vars(vars(&[(name, bad)])).unwrap_err();
            let line = err.to_string();
            assert!(line.contains(name), "{name}={bad}: {line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn an_audit_share_outside_its_range_is_refused() {
        for bad in ["0", "1.5", "-0.1", "NaN"] {
            let err = Settings::from_vars(vars(&[("AUDIT_RATE_SHARE", bad)])).unwrap_err();
            assert!(err.to_string().contains("AUDIT_RATE_SHARE"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_bad_number_names_its_variable() {
        let err = Settings::from_vars(vars(&[("PORT", "eighty")])).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Settings::from_vars(vars(&[
            ("EXTERNAL_API_TOKEN", "hunter2"),
            ("ADMIN_TOKEN", "s3cret"),
        ]))
        .expect("valid");
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("s3cret"),
            "{printed}"
        );
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        let shown = redact_url("postgres://user:pw@db:5432/x");
        assert!(!shown.contains("pw@"), "{shown}");
        let s = Settings::from_vars(vars(&[
            ("DATABASE_URL", "postgres://app:dbpass@db:5432/orders"),
            ("REDIS_URL", "redis://:redispass@redis:6379"),
            ("EXTERNAL_API_URL", "https://user:apipass@api.example.com"),
        ]))
        .expect("valid");
        let printed = format!("{s:?}");
        for password in ["dbpass", "redispass", "apipass"] {
            assert!(!printed.contains(password), "{printed}");
        }
        assert!(printed.contains("db:5432/orders"), "{printed}");
        assert_eq!(
            s.database.url.expose(),
            "postgres://app:dbpass@db:5432/orders"
        );
    }

    /// The sections are the variables, converted once: a unit or a share mixed up here would
    /// change every figure that follows from it.
    #[test]
    fn each_variable_lands_in_its_section() {
        let s = Settings::from_vars(vars(&[
            ("PORT", "9000"),
            ("MAX_BODY_BYTES", "2048"),
            ("SHUTDOWN_TIMEOUT_SECS", "7"),
            ("EXTERNAL_TIMEOUT_MS", "1500"),
            ("SHARD_LEASE_MS", "6000"),
            ("RATE_LIMIT_PER_SEC", "40"),
            ("RATE_LIMIT_BURST", "5"),
            ("RETRY_MAX_ATTEMPTS", "4"),
            ("AUDIT_INTERVAL_SECS", "0"),
            ("ATTEMPTS_RETENTION_DAYS", "2"),
            ("ROLE", "worker"),
            ("SYNC_ENGINE", "false"),
        ]))
        .expect("valid");
        assert_eq!((s.http.port, s.http.max_body_bytes), (9000, 2048));
        assert_eq!(s.http.shutdown_timeout, Duration::from_secs(7));
        assert_eq!(s.external.timeout, Duration::from_millis(1500));
        assert_eq!(s.external.health.probe_lease, Duration::from_millis(2500));
        assert_eq!(s.cluster.leases.ttl, Duration::from_millis(6000));
        assert_eq!((s.engine.rate_per_sec, s.engine.burst), (40, 5));
        assert_eq!(s.jobs.rate_per_sec, 40);
        assert_eq!(s.engine.retry.quick_attempts, 4);
        assert!(s.jobs.audit_every.is_none());
        assert_eq!(s.attempts.max_age, Duration::from_secs(2 * 24 * 3600));
        assert_eq!(s.role, Role::Worker);
        assert!(!s.engine.enabled);
    }
}
