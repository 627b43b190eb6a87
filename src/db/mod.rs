//! PostgreSQL, the source of truth: the connection, the schema's entities, the one write path
//! that changes orders ([`Changes`]: every change writes its outbox row in the same transaction
//! and wakes the relay after its commit), the reads of orders, the outbox's queries ([`outbox`]),
//! the sync engine's ([`sync`]) and the operator's ([`admin`], [`jobs`]). Every SQL statement of
//! the service is in this module.

pub mod admin;
pub mod attempts;
mod changes;
mod codec;
pub mod entity;
pub mod jobs;
mod orders;
pub mod outbox;
pub mod sync;

pub use changes::{Changes, InboundOutcome, RelayDoorbell, SignedWriteBack};
pub use orders::{
    count_by_sync_state, get_order, list_orders, OrderFilter, OrderPage, PageRequest, StoreError,
};
pub use outbox::ChangeAction;
/// The database handles the rest of the service holds: sea-orm's connection (entities, the write
/// path) and the sqlx pool under it (the batched statements). Named here so that nothing
/// outside this module depends on which library provides them.
pub use sea_orm::DatabaseConnection;
/// The error of a statement of this module's: what the engine's retries classify with
/// [`is_transient`] and [`sqlstate`]. Order writes answer [`StoreError`] instead, which the API
/// turns into its answers.
pub use sqlx::Error as QueryError;
pub use sqlx::PgPool;

use std::time::Duration;

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DbBackend, DbErr, RuntimeErr, Statement};
use sqlx::Connection;

/// Creates the database named by `url` when it does not exist yet, by connecting to the
/// server's `postgres` database; a new machine then needs no `createdb` step.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let mut parsed = url::Url::parse(url).context("not a valid URL")?;
    let name = parsed.path().trim_start_matches('/').to_string();
    anyhow::ensure!(!name.is_empty(), "the URL names no database");
    parsed.set_path("/postgres");
    let mut admin = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::PgConnection::connect(parsed.as_str()),
    )
    .await
    .context("timed out connecting")?
    .context("cannot connect")?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await
            .context("cannot list databases")?;
    if !exists {
        let create = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        // Audited: `name` is quoted as an identifier (its `"` doubled) above.
        match sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE: fine.
            // (42P04, or 23505 when both CREATEs reached the catalog at once.)
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e).context("cannot create the database"),
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// The longest one statement may run on the main pool: PostgreSQL cancels it past this
/// (SQLSTATE 57014), so no request, however expensive its query, holds a connection and a
/// server process for longer. It is far beyond what any statement of the API or the engine
/// should need: one that takes this long is stuck behind a lock or running away, and holding its
/// connection would starve the rest of the pool. Migrations run without it, on a connection of
/// their own: they may rewrite whole tables.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Applies pending migrations, then opens the main pool (API and engine), whose statements are
/// bounded by [`STATEMENT_TIMEOUT`].
pub async fn connect_and_migrate(
    url: &str,
    max_connections: u32,
) -> anyhow::Result<DatabaseConnection> {
    migrate(url).await?;
    let statement_timeout = format!("{}ms", STATEMENT_TIMEOUT.as_millis());
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        .map_sqlx_postgres_opts(move |pg| {
            pg.options([("statement_timeout", statement_timeout.as_str())])
        });
    Database::connect(options).await.context("cannot connect")
}

/// Whether every migration this binary knows is recorded as applied (for `/health/ready`). An
/// instance of a newer release may have applied more; those do not make this one unready.
/// One round trip to PostgreSQL (`SELECT 1`), for the health checks.
pub async fn ping(db: &DatabaseConnection) -> Result<(), DbErr> {
    db.execute_unprepared("SELECT 1").await.map(|_| ())
}

pub async fn migrations_applied(pool: &sqlx::PgPool) -> Result<bool, sqlx::Error> {
    use migration::MigratorTrait;
    let ours: Vec<String> = migration::Migrator::migrations()
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM seaql_migrations WHERE version = ANY($1)")
            .bind(&ours)
            .fetch_one(pool)
            .await?;
    Ok(applied == ours.len() as i64)
}

/// The advisory lock every instance takes around its migrations: any number of instances can
/// start together, and the first migrates while the others wait, then find nothing to do. (The
/// number is arbitrary; it only has to be the same in every instance.)
const MIGRATION_LOCK: i64 = 0x6f72_6465_7273_796e; // "ordersyn"

/// Applies pending migrations on a connection of their own (one session, so the advisory lock
/// is held around them), without a statement timeout, closed when they are done.
async fn migrate(url: &str) -> anyhow::Result<()> {
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false);
    let db = Database::connect(options).await.context("cannot connect")?;
    let lock = |sql: &'static str| {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, [MIGRATION_LOCK.into()])
    };
    db.execute_raw(lock("SELECT pg_advisory_lock($1)"))
        .await
        .context("cannot take the migration lock")?;
    let migrated = Migrator::up(&db, None)
        .await
        .context("cannot apply migrations");
    // Closing the session would release it too; unlocking says so.
    let _ = db.execute_raw(lock("SELECT pg_advisory_unlock($1)")).await;
    db.close().await.ok();
    migrated
}

/// A pool whose commits do not wait for the disk (`synchronous_commit = off`), for the sync
/// engine's bookkeeping: recorded outcomes and published outbox rows. Losing the last few of
/// those (only if the PostgreSQL *server* crashes) repeats a call or republishes an event, which
/// versions and idempotency keys make harmless; waiting for an fsync on each of them was the
/// engine's bottleneck (BENCHMARKS.md, figure 1). The API's writes, and the create mark, stay on
/// the durable pool: a change answered 2xx must be on disk.
pub async fn bookkeeping_pool(url: &str, max_connections: u32) -> anyhow::Result<sqlx::PgPool> {
    use std::str::FromStr;
    let options = sqlx::postgres::PgConnectOptions::from_str(url)
        .context("not a valid URL")?
        .options([("synchronous_commit", "off")]);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("cannot connect")
}

/// True when the error means PostgreSQL cannot be reached right now (as opposed to a bad query):
/// the API answers those with 503.
pub fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(**e, sqlx::Error::PoolClosed) || is_transient(e)
        }
        _ => false,
    }
}

/// True when the same statement may well succeed if tried again: the connection was lost or
/// could not be had, the server is starting, stopping or out of connections (SQLSTATE classes
/// 08, 57P and 53), the transaction lost a serialization race or a deadlock (40001, 40P01), or
/// the statement was cancelled (57014: it ran past [`STATEMENT_TIMEOUT`], which a server under
/// load or a lock held elsewhere causes, and which passes with them). The API answers those 503
/// with `Retry-After`; the engine retries them with backoff and then puts the event off.
/// Everything else (a constraint, a value PostgreSQL rejects) fails the same way every time.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("57P")
                || code.starts_with("53")
                || code == "40001"
                || code == "40P01"
                || code == "57014"
        }),
        _ => false,
    }
}

/// The error's SQLSTATE, when PostgreSQL gave one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(e) => e.code().map(|code| code.into_owned()),
        _ => None,
    }
}
