//! Service configuration, read once at start-up from the environment (and a `.env` file).
//!
//! Every variable has a default that works on a machine where PostgreSQL and Redis run locally
//! on their standard ports, so `cargo run` needs no setup. A value that does not parse is an
//! error naming the variable, never a silent fallback.

use std::fmt;

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

/// All settings of one service instance. Field names are the environment variables, lower-cased.
/// `Debug` redacts secrets and the passwords in URLs.
#[derive(Clone, Deserialize)]
pub struct Settings {
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
    pub database_max_connections: u32,
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
    pub rate_limit_per_sec: u32,
    #[serde(default = "defaults::rate_limit_burst")]
    pub rate_limit_burst: u32,
    #[serde(default = "defaults::max_concurrent_calls")]
    pub max_concurrent_calls: u32,
    #[serde(default = "defaults::max_in_flight_events")]
    pub max_in_flight_events: u32,
    #[serde(default = "defaults::order_actor_idle_secs")]
    pub order_actor_idle_secs: u64,
    #[serde(default = "defaults::retry_max_attempts")]
    pub retry_max_attempts: u32,
    /// Delayed retries (Sidekiq's schedule) after the quick ones, before an order is `dead`.
    #[serde(default = "defaults::delayed_retry_limit")]
    pub delayed_retry_limit: u32,
    /// Multiplies the delayed schedule (1.0 = Sidekiq's `count^4 + 15 + jitter` seconds).
    #[serde(default = "defaults::delayed_retry_scale")]
    pub delayed_retry_scale: f64,
    /// Bounds each external call as a whole (connecting, sending, the answer and its body), in
    /// milliseconds.
    #[serde(default = "defaults::external_timeout_ms")]
    pub external_timeout_ms: u64,
    /// Longest pause a 429's `Retry-After` can impose on every call, in seconds: the external API
    /// is untrusted, and an unbounded value would stop syncing for as long as it says.
    #[serde(default = "defaults::retry_after_max_secs")]
    pub retry_after_max_secs: u64,
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
    pub shutdown_timeout_secs: u64,
    /// How long an order that is behind must have been quiet, with the backlog and the outbox
    /// empty, before the reconciler publishes it again (its event was lost with Redis).
    #[serde(default = "defaults::reconcile_quiet_secs")]
    pub reconcile_quiet_secs: u64,
    /// `false`: serve the API only, and leave the relay, dispatcher and actors to another
    /// instance (as the reference ran `web` and `sidekiq` apart). Changes wait in the outbox.
    #[serde(default = "defaults::sync_engine")]
    pub sync_engine: bool,
    /// Largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
}

mod defaults {
    use super::Secret;

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
    pub fn database_max_connections() -> u32 {
        20
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
    pub fn rate_limit_per_sec() -> u32 {
        100
    }
    pub fn rate_limit_burst() -> u32 {
        100
    }
    pub fn max_concurrent_calls() -> u32 {
        25
    }
    pub fn max_in_flight_events() -> u32 {
        1000
    }
    pub fn order_actor_idle_secs() -> u64 {
        30
    }
    /// Faraday's retry middleware in the reference: 3 retries.
    pub fn retry_max_attempts() -> u32 {
        4
    }
    /// Sidekiq's default retry count.
    pub fn delayed_retry_limit() -> u32 {
        25
    }
    pub fn delayed_retry_scale() -> f64 {
        1.0
    }
    /// The reference's Faraday timeouts: 5 s to connect, 5 s for the request.
    pub fn external_timeout_ms() -> u64 {
        5_000
    }
    /// Five minutes: longer than any sensible rate-limit window, short enough to notice.
    pub fn retry_after_max_secs() -> u64 {
        300
    }
    /// Sidekiq waits 25 s for jobs in flight on TERM.
    pub fn shutdown_timeout_secs() -> u64 {
        25
    }
    pub fn reconcile_quiet_secs() -> u64 {
        10
    }
    pub fn sync_engine() -> bool {
        true
    }
    pub fn max_body_bytes() -> usize {
        64 * 1024
    }
}

/// What each component needs, in its own units: the one place a setting's number becomes a
/// `Duration` or a policy.
impl Settings {
    /// How failed calls are retried (quick retries, then Sidekiq's delayed schedule).
    pub fn retry_policy(&self) -> crate::engine::actors::RetryPolicy {
        crate::engine::actors::RetryPolicy {
            quick_attempts: self.retry_max_attempts,
            delayed_limit: self.delayed_retry_limit,
            delayed_scale: self.delayed_retry_scale,
        }
    }

    /// The throttle's limits: `(rate per second, burst, calls in flight at most)`.
    pub fn throttle_limits(&self) -> (u32, u32, u32) {
        (
            self.rate_limit_per_sec,
            self.rate_limit_burst,
            self.max_concurrent_calls,
        )
    }

    /// The bound on one external call as a whole.
    pub fn external_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.external_timeout_ms)
    }

    /// The longest pause a `Retry-After` may impose.
    pub fn retry_after_max(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.retry_after_max_secs)
    }

    pub fn order_actor_idle(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.order_actor_idle_secs)
    }

    pub fn reconcile_quiet(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.reconcile_quiet_secs)
    }

    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_timeout_secs)
    }
}

impl fmt::Debug for Settings {
    /// Every field, with the passwords in URLs and every token and key redacted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("order_sync_env", &self.order_sync_env)
            .field("port", &self.port)
            .field("host", &self.host)
            .field("database_url", &redact_url(&self.database_url))
            .field("database_max_connections", &self.database_max_connections)
            .field("redis_url", &redact_url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field(
                "external_api_url",
                &self.external_api_url.as_deref().map(redact_url),
            )
            .field("external_api_token", &self.external_api_token)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("max_concurrent_calls", &self.max_concurrent_calls)
            .field("max_in_flight_events", &self.max_in_flight_events)
            .field("order_actor_idle_secs", &self.order_actor_idle_secs)
            .field("retry_max_attempts", &self.retry_max_attempts)
            .field("delayed_retry_limit", &self.delayed_retry_limit)
            .field("delayed_retry_scale", &self.delayed_retry_scale)
            .field("external_timeout_ms", &self.external_timeout_ms)
            .field("retry_after_max_secs", &self.retry_after_max_secs)
            .field("admin_token", &self.admin_token)
            .field("api_tokens", &self.api_tokens)
            .field("inbound_webhook_secret", &self.inbound_webhook_secret)
            .field("shutdown_timeout_secs", &self.shutdown_timeout_secs)
            .field("reconcile_quiet_secs", &self.reconcile_quiet_secs)
            .field("sync_engine", &self.sync_engine)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
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
        let settings: Settings = envy::from_iter(vars).map_err(|e| ConfigError(e.to_string()))?;
        settings.check()?;
        Ok(settings)
    }

    /// Rejects values the service cannot run with. Every numeric setting has a range, so that a
    /// typo fails at start-up with the variable's name instead of later as a panic (a huge
    /// `DELAYED_RETRY_SCALE` overflows a date) or a stall (`MAX_CONCURRENT_CALLS=0`).
    fn check(&self) -> Result<(), ConfigError> {
        for (name, range) in self.numeric_ranges() {
            range.check(name)?;
        }
        if let Some(url) = &self.external_api_url {
            url::Url::parse(url)
                .map_err(|e| ConfigError(format!("EXTERNAL_API_URL={}: {e}", redact_url(url))))?;
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

    /// Every numeric setting with the range it must lie in: the one place these bounds live.
    fn numeric_ranges(&self) -> [(&'static str, Range); 15] {
        use Range::{Int, Real};
        let int = |value: u64, min: u64, max: u64| Int { value, min, max };
        let size = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        [
            ("PORT", int(self.port.into(), 0, u16::MAX.into())),
            (
                "DATABASE_MAX_CONNECTIONS",
                int(self.database_max_connections.into(), 1, 1_000),
            ),
            (
                "RATE_LIMIT_PER_SEC",
                int(self.rate_limit_per_sec.into(), 1, 1_000_000),
            ),
            (
                "RATE_LIMIT_BURST",
                int(self.rate_limit_burst.into(), 0, 1_000_000),
            ),
            (
                "MAX_CONCURRENT_CALLS",
                int(self.max_concurrent_calls.into(), 1, 10_000),
            ),
            (
                "MAX_IN_FLIGHT_EVENTS",
                int(self.max_in_flight_events.into(), 1, 1_000_000),
            ),
            (
                "ORDER_ACTOR_IDLE_SECS",
                int(self.order_actor_idle_secs, 1, 86_400),
            ),
            (
                "RETRY_MAX_ATTEMPTS",
                int(self.retry_max_attempts.into(), 1, 100),
            ),
            (
                "DELAYED_RETRY_LIMIT",
                int(self.delayed_retry_limit.into(), 0, 100),
            ),
            // 1000 times the schedule's longest delay (99^4 s, at DELAYED_RETRY_LIMIT=100) is 3,000
            // years, which a timestamp still holds; a larger scale overflowed the date and panicked.
            (
                "DELAYED_RETRY_SCALE",
                Real {
                    value: self.delayed_retry_scale,
                    min: 0.0,
                    max: 1_000.0,
                },
            ),
            (
                "EXTERNAL_TIMEOUT_MS",
                int(self.external_timeout_ms, 1, 600_000),
            ),
            (
                "RETRY_AFTER_MAX_SECS",
                int(self.retry_after_max_secs, 0, 86_400),
            ),
            (
                "SHUTDOWN_TIMEOUT_SECS",
                int(self.shutdown_timeout_secs, 0, 3_600),
            ),
            (
                "RECONCILE_QUIET_SECS",
                int(self.reconcile_quiet_secs, 1, 86_400),
            ),
            (
                "MAX_BODY_BYTES",
                int(size(self.max_body_bytes), 1024, 64 * 1024 * 1024),
            ),
        ]
    }
}

/// A numeric setting's value and its allowed range, both ends included.
#[derive(Debug, Clone, Copy)]
enum Range {
    Int {
        value: u64,
        min: u64,
        max: u64,
    },
    /// NaN and the infinities lie in no range.
    Real {
        value: f64,
        min: f64,
        max: f64,
    },
}

impl Range {
    fn check(self, name: &str) -> Result<(), ConfigError> {
        match self {
            Self::Int { value, min, max } => within(name, value, min, max),
            Self::Real { value, min, max } => within(name, value, min, max),
        }
    }
}

/// `Ok` when `min <= value <= max`, else the one-line error naming the variable.
fn within<T: PartialOrd + fmt::Display>(
    name: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if min <= value && value <= max {
        return Ok(());
    }
    Err(ConfigError(format!(
        "{name} must be between {min} and {max}, not {value}"
    )))
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
        assert_eq!(s.port, 8080);
        assert_eq!(s.redis_prefix, "order-sync");
        assert!(s.external_api_url.is_none());
        assert!(s.admin_token.is_none());
        assert_eq!(s.retry_after_max_secs, 300);
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
        ];
        for ends in [lowest, highest] {
            if let Err(err) = Settings::from_vars(vars(&ends)) {
                panic!("{ends:?}: {err}");
            }
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
    }
}
