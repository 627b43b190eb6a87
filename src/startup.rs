//! Building and running one service instance, in the order its parts depend on each other:
//! configuration -> PostgreSQL (created and migrated) -> Redis -> the external API (the built-in
//! fake when none is configured) -> the sync engine (throttle, supervisor, dispatcher, relay,
//! scheduler) -> the HTTP server.
//!
//! `Application::build` binds its own listener (port 0 works, for tests) and fails with one
//! clear error naming the variable at fault when a dependency cannot be reached.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use tokio_util::sync::CancellationToken;

use crate::api::{self, edge, ApiError, AppState};
use crate::config::Settings;
use crate::db;
use crate::engine::{self, BuildError, EngineState, SyncEngine};
use crate::external::fake::{FakeConfig, FakeExternalApi};
use crate::metrics::SyncMetrics;

/// Why the service could not start. Each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot use DATABASE_URL={url}: {cause:#}")]
    Database { url: String, cause: anyhow::Error },
    #[error("cannot use REDIS_URL={url}: {cause:#}")]
    Redis { url: String, cause: anyhow::Error },
    #[error("cannot listen on {addr} (PORT): {cause}")]
    Bind { addr: String, cause: std::io::Error },
    #[error("cannot start the built-in fake external API: {0}")]
    FakeApi(String),
    #[error("cannot join the other instances: {0}")]
    Cluster(String),
    #[error("cannot configure TLS for EXTERNAL_API_URL: {0}")]
    Tls(#[from] rustls::Error),
}

/// A built service: connected, migrated, its sync engine running, listening but not yet serving.
pub struct Application {
    port: u16,
    server: Server,
    external_api_url: String,
    /// Cancelled on SIGTERM or Ctrl-C: writes answer 503, no new event or call starts.
    shutdown: CancellationToken,
    /// Drained and its shards handed over at shutdown; a failed engine stops the process.
    engine: SyncEngine,
    shutdown_timeout: Duration,
}

impl Application {
    /// Connects, migrates, starts the engine and binds the HTTP server, in that order.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let db = connect_database(&settings).await?;
        let redis = crate::engine::connect_redis(settings.redis.url.expose())
            .await
            .map_err(|cause| StartupError::Redis {
                url: settings.redis.url.to_string(),
                cause,
            })?;
        let (external_api, external_api_url) = external_api(&settings)?;
        let metrics = Arc::new(SyncMetrics::default());
        let shutdown = CancellationToken::new();
        // The one write path, on the durable pool: the API, the audits' repairs and the resyncs
        // change orders through it, and it wakes this instance's relay after their commits.
        let changes = db::Changes::new(db.clone(), db::RelayDoorbell::new());
        let engine = SyncEngine::build(
            &settings,
            engine::Shared {
                db: db.clone(),
                redis: redis.clone(),
                changes: changes.clone(),
                metrics: metrics.clone(),
                external_api_url: external_api_url.clone(),
                shutdown: shutdown.clone(),
            },
        )
        .await
        .map_err(|error| match error {
            BuildError::Database(cause) => StartupError::Database {
                url: settings.database.url.to_string(),
                cause,
            },
            BuildError::Cluster(why) => StartupError::Cluster(why),
            BuildError::Tls(error) => StartupError::Tls(error),
        })?;
        actix_rt::spawn(crate::metrics::keep_history(
            metrics.clone(),
            shutdown.clone(),
        ));
        warn_about_open_routes(&settings);
        let state = web::Data::new(AppState {
            db,
            redis,
            changes,
            metrics,
            engine: engine.clone(),
            shutdown: shutdown.clone(),
            admin_token: settings
                .auth
                .admin_token
                .clone()
                .filter(|token| !token.is_empty()),
            api_tokens: settings.auth.api_tokens.clone(),
            webhook_keys: settings.auth.webhook_keys.clone(),
            external_api,
            started_at: std::time::Instant::now(),
            role: settings.role,
        });
        let (server, port) = serve(state, &settings)?;
        tracing::info!(
            port,
            version = crate::build_info::VERSION,
            git_sha = crate::build_info::GIT_SHA,
            "order-sync listening"
        );
        Ok(Self {
            port,
            server,
            external_api_url,
            shutdown,
            engine,
            shutdown_timeout: settings.http.shutdown_timeout,
        })
    }

    /// Where external calls go (the built-in fake's address when none was configured).
    pub fn external_api_url(&self) -> &str {
        &self.external_api_url
    }

    /// The port actually bound (useful when `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves the HTTP API and runs the sync engine until SIGTERM or Ctrl-C, or until the engine
    /// fails, then shuts down gracefully: writes answer 503 and the dispatcher stops reading at
    /// once; calls in flight get up to `SHUTDOWN_TIMEOUT_SECS` to finish and be recorded; events
    /// not started stay unacknowledged in Redis for the next start. Then the HTTP server stops.
    /// A failed engine makes this return an error, so the process exits non-zero.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let mut server = actix_rt::spawn(self.server);
        let mut engine = self.engine.states();
        let engine_failed = async {
            match engine
                .wait_for(|state| matches!(state, EngineState::Failed { .. }))
                .await
            {
                Ok(state) => state.describe(),
                // The engine is gone with its sender: only at shutdown.
                Err(_) => std::future::pending().await,
            }
        };
        let mut failure = None;
        tokio::select! {
            served = &mut server => return served.unwrap_or_else(|e| Err(std::io::Error::other(e))),
            signal = shutdown_signal() => tracing::info!(signal, "shutting down"),
            why = engine_failed => {
                tracing::error!(engine = why, "the sync engine failed; shutting down");
                failure = Some(why);
                // The tests hold a failed process here (`engine-failed-linger=return(MS)`) to
                // see what it answers before it stops.
                #[cfg(feature = "failpoints")]
                if let Some(ms) = fail::eval("engine-failed-linger", |ms| {
                    ms.and_then(|ms| ms.parse::<u64>().ok())
                })
                .flatten()
                {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
        }
        self.shutdown.cancel();
        self.engine.drain_and_hand_over(self.shutdown_timeout).await;
        handle.stop(true).await;
        let _ = server.await;
        match failure {
            Some(why) => Err(std::io::Error::other(format!("sync engine {why}"))),
            None => Ok(()),
        }
    }
}

/// Creates the database when it is missing, then connects and applies the migrations.
async fn connect_database(settings: &Settings) -> Result<db::DatabaseConnection, StartupError> {
    let database_error = |cause| StartupError::Database {
        url: settings.database.url.to_string(),
        cause,
    };
    db::ensure_database(settings.database.url.expose())
        .await
        .map_err(database_error)?;
    db::connect_and_migrate(
        settings.database.url.expose(),
        settings.database.max_connections,
    )
    .await
    .map_err(database_error)
}

/// Where external calls go, and how `/health` names it: `EXTERNAL_API_URL`, or the built-in
/// fake, started here, when it is unset.
fn external_api(settings: &Settings) -> Result<(&'static str, String), StartupError> {
    if let Some(url) = &settings.external.url {
        return Ok(("configured", url.expose().to_string()));
    }
    let config = FakeConfig::from_env().map_err(StartupError::FakeApi)?;
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(|e| StartupError::FakeApi(e.to_string()))?;
    let fake = FakeExternalApi::start(listener, config)
        .map_err(|e| StartupError::FakeApi(e.to_string()))?;
    tracing::warn!(url = %fake.url, "EXTERNAL_API_URL is unset: started the built-in fake external API; orders are synced to it alone, and it keeps them in memory (development only)");
    Ok(("built-in fake", fake.url))
}

/// Says at start-up which routes are open to anyone who can reach the port.
fn warn_about_open_routes(settings: &Settings) {
    if settings.auth.api_tokens.is_empty() {
        tracing::warn!("API_TOKENS is unset: the orders and metrics routes are open to anyone who can reach the port (set it, or ORDER_SYNC_ENV=production to require it)");
    }
    if settings.auth.webhook_keys.is_empty() {
        tracing::warn!("INBOUND_WEBHOOK_SECRET is unset: /inbound accepts unsigned write-backs from anyone who can reach the port");
    }
}

/// Binds `HOST:PORT` and builds the HTTP server over `state` (not yet serving), with the port
/// actually bound (`PORT=0` picks one).
fn serve(state: web::Data<AppState>, settings: &Settings) -> Result<(Server, u16), StartupError> {
    let addr = format!("{}:{}", settings.http.host, settings.http.port);
    let listener = TcpListener::bind(&addr).map_err(|cause| StartupError::Bind {
        addr: addr.clone(),
        cause,
    })?;
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or(settings.http.port);
    let (max_body_bytes, role) = (settings.http.max_body_bytes, settings.role);
    let server = HttpServer::new(move || {
        // The last `wrap` is the outermost: a request meets the security headers, then the
        // log, then the refusal of compressed bodies and the body's deadline, then its route.
        App::new()
            .wrap(actix_web::middleware::from_fn(edge::limit_body_read_time))
            .wrap(actix_web::middleware::from_fn(
                edge::refuse_compressed_bodies,
            ))
            .wrap(ErrorHandlers::new().default_handler(json_error_body))
            .wrap(actix_web::middleware::from_fn(
                crate::api::auth::require_api_token,
            ))
            .wrap(actix_web::middleware::from_fn(
                crate::telemetry::log_request,
            ))
            .wrap(edge::security_headers())
            .app_data(state.clone())
            .configure(|cfg| api::configure(cfg, max_body_bytes, role))
            .default_service(web::to(api::route_not_found))
    })
    // A request's head must arrive within this; its body within `edge::BODY_READ_TIMEOUT`.
    .client_request_timeout(edge::CLIENT_REQUEST_TIMEOUT)
    .listen(listener)
    .map_err(|cause| StartupError::Bind { addr, cause })?
    // Signals are ours (see `run_until_stopped`): the engine must drain before the server stops.
    .disable_signals()
    .shutdown_timeout(settings.http.shutdown_timeout.as_secs())
    .run();
    Ok((server, port))
}

/// Resolves on SIGTERM or Ctrl-C, with the signal's name.
async fn shutdown_signal() -> &'static str {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate => "SIGTERM",
    }
}

/// Gives errors that actix-web produces itself (an oversized body, say) the one error shape, a
/// problem detail. Answers already JSON pass: ours (`application/problem+json`) and `/health`'s
/// 503 report (`application/json`), which is a status, not an error.
fn json_error_body<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/json") || v.starts_with(crate::api::PROBLEM_JSON.as_bytes())
    });
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let detail = status.canonical_reason().unwrap_or("error").to_lowercase();
    let problem = ApiError::from_status(status)
        .problem(detail)
        .with_status(status);
    let body =
        serde_json::to_string(&problem).map_err(actix_web::error::ErrorInternalServerError)?;
    let (req, mut res) = res.into_parts();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(crate::api::PROBLEM_JSON),
    );
    let res =
        ServiceResponse::new(req, res.set_body(body).map_into_boxed_body()).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

/// Runs `main` to its end on an actix system on this thread, as `#[actix_web::main]` would, then
/// drops the system inside tokio's context. Actix drops the tasks still parked on this thread
/// (an engine task cut off at shutdown, say) before the tokio runtime and outside its context;
/// one holding a pooled PostgreSQL connection then panicked, because sqlx returns a dropped
/// connection to its pool by spawning, which needs the context: a SIGTERM landing on such a
/// moment exited 101 instead of 0. In the context that spawn succeeds, and the runtime cancels
/// it as it shuts down.
pub fn run_system<F: std::future::Future>(main: F) -> F::Output {
    let system = actix_rt::System::new();
    let tokio = system.runtime().tokio_runtime().handle().clone();
    let output = system.block_on(main);
    let _context = tokio.enter();
    drop(system);
    output
}

#[cfg(test)]
mod tests {
    use super::run_system;

    /// A task parked at the end holding a pooled connection: dropping it must not panic. (Tokio
    /// catches a panic in a dropped task and prints it, so the test watches for one on its thread.)
    #[test]
    fn a_task_left_holding_a_pooled_connection_at_the_end_is_dropped_quietly() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let panicked = Arc::new(AtomicBool::new(false));
        let this_thread = std::thread::current().id();
        let previous = std::panic::take_hook();
        let seen = panicked.clone();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() == this_thread {
                seen.store(true, Ordering::SeqCst);
            }
            previous(info)
        }));
        let url = format!("{}/postgres", test_support::database_server());
        let left_running = run_system(async move {
            let pool = crate::db::PgPool::connect(&url).await.expect("PostgreSQL");
            let connection = pool.acquire().await.expect("a connection");
            let (held, holding) = tokio::sync::oneshot::channel::<()>();
            actix_rt::spawn(async move {
                let _connection = connection;
                let _ = held.send(());
                std::future::pending::<()>().await;
            });
            holding.await.is_ok()
        });
        assert!(
            left_running,
            "the task held its connection when the system ended"
        );
        assert!(
            !panicked.load(Ordering::SeqCst),
            "dropping the parked task panicked"
        );
    }
}
