//! Building and running one service instance, in the order its parts depend on each other:
//! configuration -> PostgreSQL (created and migrated) -> Redis -> HTTP server.
//!
//! `Application::build` binds its own listener (port 0 works, for tests) and fails with one
//! clear error naming the variable at fault when a dependency cannot be reached.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::{Server, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tracing_actix_web::TracingLogger;

use crate::api::{self, AppState};
use crate::config::{redact_url, Settings};
use crate::db;

/// Why the service could not start. Each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot use DATABASE_URL={url}: {cause:#}")]
    Database { url: String, cause: anyhow::Error },
    #[error("cannot use REDIS_URL={url}: {cause:#}")]
    Redis { url: String, cause: anyhow::Error },
    #[error("cannot listen on {addr} (PORT): {cause}")]
    Bind { addr: String, cause: std::io::Error },
}

/// A built service: connected, migrated and listening, not yet serving.
pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let database_error = |cause| StartupError::Database {
            url: redact_url(&settings.database_url),
            cause,
        };
        db::ensure_database(&settings.database_url)
            .await
            .map_err(database_error)?;
        let db = db::connect_and_migrate(&settings.database_url, settings.database_max_connections)
            .await
            .map_err(database_error)?;
        let redis =
            connect_redis(&settings.redis_url)
                .await
                .map_err(|cause| StartupError::Redis {
                    url: redact_url(&settings.redis_url),
                    cause,
                })?;

        let addr = format!("{}:{}", settings.host, settings.port);
        let listener = TcpListener::bind(&addr).map_err(|cause| StartupError::Bind {
            addr: addr.clone(),
            cause,
        })?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or(settings.port);

        let state = web::Data::new(AppState { db, redis });
        let max_body_bytes = settings.max_body_bytes;
        let server = HttpServer::new(move || {
            App::new()
                .wrap(ErrorHandlers::new().default_handler(json_error_body))
                .wrap(TracingLogger::default())
                .app_data(state.clone())
                .configure(|cfg| api::configure(cfg, max_body_bytes))
                .default_service(web::to(api::route_not_found))
        })
        .listen(listener)
        .map_err(|cause| StartupError::Bind { addr, cause })?
        .shutdown_timeout(settings.shutdown_timeout_secs)
        .run();
        tracing::info!(port, "order-sync listening");
        Ok(Self { port, server })
    }

    /// The port actually bound (useful when `PORT=0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Connects to Redis and checks it answers. The connection manager reconnects by itself later.
async fn connect_redis(url: &str) -> anyhow::Result<ConnectionManager> {
    let client = redis::Client::open(url).context("not a valid Redis URL")?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(5))
        .set_response_timeout(Duration::from_secs(5))
        .set_number_of_retries(2);
    let mut manager = tokio::time::timeout(
        Duration::from_secs(10),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .context("timed out connecting")?
    .context("cannot connect")?;
    redis::cmd("PING")
        .query_async::<String>(&mut manager)
        .await
        .context("PING failed")?;
    Ok(manager)
}

/// Gives errors that actix-web produces itself (an oversized body, say) the one JSON error shape.
fn json_error_body<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let code = match status.as_u16() {
        413 => "payload_too_large",
        404 => "not_found",
        405 => "method_not_allowed",
        s if s >= 500 => "internal_error",
        _ => "bad_request",
    };
    let body = serde_json::json!({"error": {
        "code": code,
        "message": status.canonical_reason().unwrap_or("error").to_lowercase(),
    }})
    .to_string();
    let (req, mut res) = res.into_parts();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let res =
        ServiceResponse::new(req, res.set_body(body).map_into_boxed_body()).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}
