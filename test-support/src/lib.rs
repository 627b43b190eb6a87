//! Test support, for development only (never a dependency of the service): what the API tests
//! (`tests/api/helpers.rs`), the seeder's tests and the benchmark each need.
//!
//! - [`database_server`] and [`redis_url`]: the servers, from `TEST_DATABASE_SERVER` and
//!   `TEST_REDIS_URL`, defaulting to local ones on their standard ports.
//! - [`unique_db_name`], [`drop_database`], [`drop_database_blocking`] and
//!   [`sweep_stale_databases_once`]: a database per test, named so that the leftovers of a
//!   killed run can be told from the databases of tests running now.
//! - [`unique_redis_prefix`]: a Redis namespace per test.
//! - [`wait_for`] and [`try_wait_for`]: polling with a deadline, never a bare sleep.

use std::sync::Once;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::Connection;

/// The PostgreSQL server when `TEST_DATABASE_SERVER` is unset.
pub const DEFAULT_DATABASE_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// The Redis server when `TEST_REDIS_URL` is unset.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// The server the tests use (no database in the URL); override with `TEST_DATABASE_SERVER`.
pub fn database_server() -> String {
    std::env::var("TEST_DATABASE_SERVER").unwrap_or_else(|_| DEFAULT_DATABASE_SERVER.into())
}

/// The Redis the tests use; override with `TEST_REDIS_URL`.
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into())
}

/// Test databases are named `order_sync_test_<unix seconds>_<random>`, so a sweep can tell
/// stale ones (left by a killed run) from those of tests running now.
const TEST_DB_PREFIX: &str = "order_sync_test_";

/// A stale test database is older than this.
const STALE_AFTER_SECS: u64 = 3600;

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh test database name (`order_sync_test_<unix seconds>_<12 hex digits>`).
pub fn unique_db_name() -> String {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    format!("{TEST_DB_PREFIX}{}_{}", unix_secs(), &tag[..12])
}

/// A fresh Redis key prefix (`test-<uuid>`), so tests can share one Redis.
pub fn unique_redis_prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

/// Drops database `name` on [`database_server`]; see [`drop_database_on`].
pub async fn drop_database(name: &str) {
    drop_database_on(&database_server(), name).await;
}

/// Drops database `name` on `server`, if it exists. `FORCE` ends the connections still open on
/// it (a service's pool). Best effort: a test's clean-up must not fail the test.
pub async fn drop_database_on(server: &str, name: &str) {
    let url = format!("{server}/postgres");
    if let Ok(mut conn) = sqlx::PgConnection::connect(&url).await {
        // Audited: test database names are generated, never typed by a user.
        let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        let _ = sqlx::query(sqlx::AssertSqlSafe(drop))
            .execute(&mut conn)
            .await;
    }
}

/// [`drop_database`] for `Drop` impls: `Drop` runs inside the test's runtime, which cannot block
/// on itself, so this uses a thread with its own small runtime and waits for it.
pub fn drop_database_blocking(name: &str) {
    let name = name.to_string();
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(drop_database(&name));
        }
    })
    .join();
}

/// Drops test databases older than an hour, once per process: the leftovers of runs that were
/// killed before their `Drop` ran.
pub async fn sweep_stale_databases_once() {
    static SWEEP: Once = Once::new();
    let mut first = false;
    SWEEP.call_once(|| first = true);
    if !first {
        return;
    }
    let url = format!("{}/postgres", database_server());
    let Ok(mut conn) = sqlx::PgConnection::connect(&url).await else {
        return;
    };
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{TEST_DB_PREFIX}%"))
            .fetch_all(&mut conn)
            .await
            .unwrap_or_default();
    let now = unix_secs();
    for name in names {
        let created = name
            .trim_start_matches(TEST_DB_PREFIX)
            .split('_')
            .next()
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| secs + STALE_AFTER_SECS < now) {
            drop_database(&name).await;
        }
    }
}

/// [`try_wait_for`] gave up: what it waited for, and how long.
#[derive(Debug)]
pub struct TimedOut {
    what: String,
    timeout: Duration,
}

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.timeout, self.what
        )
    }
}

impl std::error::Error for TimedOut {}

/// Polls `check` every `every` until it returns `Some`, or fails once `timeout` has passed.
pub async fn try_wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(TimedOut {
                what: what.to_string(),
                timeout,
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match try_wait_for(what, timeout, Duration::from_millis(20), check).await {
        Ok(value) => value,
        Err(timed_out) => panic!("{timed_out}"),
    }
}
