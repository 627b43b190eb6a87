//! The HTTP API (actix-web): orders, the inbound write-back, health. Routes are listed here in
//! one place; each resource's handlers live in its own module.

mod admin;
pub mod auth;
mod control;
mod dashboard;
mod docs;
pub(crate) mod edge;
mod error;
mod health;
mod inbound;
mod metrics;
mod orders;
mod sync_view;
pub mod webhook;

pub use docs::ApiDoc;
pub use error::{ApiError, ErrorBody, PROBLEM_JSON};

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError};
use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::Arc;

use crate::db::DatabaseConnection;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use crate::config::{Role, Secret, WebhookKey};
use crate::engine::SyncEngine;
use crate::metrics::SyncMetrics;

/// What every handler can reach, shared through `web::Data`.
pub struct AppState {
    /// The durable pool: reads, and the operator's discard (which queues no event).
    pub db: DatabaseConnection,
    /// For `/health`'s ping.
    pub redis: ConnectionManager,
    /// Every change to an order goes through it: it writes the outbox row in the change's
    /// transaction and wakes the relay after the commit.
    pub changes: crate::db::Changes,
    pub metrics: Arc<SyncMetrics>,
    /// The sync engine's handle: its state, the pause, the external API's health, the calls in
    /// flight, the shards and the cluster's figures.
    pub engine: SyncEngine,
    /// Cancelled when shutdown begins: writes answer 503 from then on.
    pub shutdown: CancellationToken,
    /// `None`: the admin endpoints are off.
    pub admin_token: Option<Secret>,
    /// Bearer tokens of the data routes; empty: open (see [`auth`]).
    pub api_tokens: Vec<Secret>,
    /// Keys that sign inbound write-backs; empty: `/inbound` is open (see [`webhook`]).
    pub webhook_keys: Vec<WebhookKey>,
    /// Where external calls go: `"built-in fake"` or `"configured"`, for `/health`.
    pub external_api: &'static str,
    pub started_at: std::time::Instant,
    /// `ROLE`, for `/health/ready`.
    pub role: Role,
}

impl AppState {
    /// Refuses writes once shutdown has begun, so every change accepted is one the engine
    /// will see (it waits in the outbox for the next start).
    pub fn ensure_accepting_writes(&self) -> Result<(), ApiError> {
        if self.shutdown.is_cancelled() {
            Err(ApiError::Unavailable(
                "the service is shutting down; try again shortly".into(),
            ))
        } else {
            Ok(())
        }
    }
}

/// Registers the routes of `role` (a worker serves the operator's routes alone), and the
/// extractor settings that turn bad input into `ApiError`s. Every path is a resource whose other
/// methods are answered 405 with `Allow` naming the ones it takes.
pub fn configure(cfg: &mut web::ServiceConfig, max_body_bytes: usize, role: Role) {
    cfg.service(get_only("/health", web::get().to(health::check_health)))
        .service(get_only("/health/live", web::get().to(health::check_live)))
        .service(get_only(
            "/health/ready",
            web::get().to(health::check_ready),
        ))
        .service(get_only(
            "/metrics/actors",
            web::get().to(metrics::actor_metrics),
        ))
        .service(get_only(
            "/metrics/history",
            web::get().to(metrics::metrics_history),
        ))
        .service(get_only(
            "/metrics",
            web::get().to(metrics::prometheus_metrics),
        ));
    if !role.serves_api() {
        return;
    }
    cfg.app_data(
        web::JsonConfig::default()
            .limit(max_body_bytes)
            // JSON routes take `Content-Type: application/json` only (415 otherwise): the types
            // a web page may send to another origin without asking (a form, text/plain) are
            // refused, so no page a browser has open can write orders through it.
            .content_type_required(true)
            .error_handler(move |err, _req| json_error(err, max_body_bytes).into()),
    )
    .app_data(web::PayloadConfig::new(max_body_bytes))
    .app_data(web::PathConfig::default().error_handler(|err, _req| path_error(err).into()))
    .app_data(web::QueryConfig::default().error_handler(|err, _req| query_error(err).into()))
    .service(get_only("/", web::get().to(dashboard::show_dashboard)))
    .service(get_only(
        "/dashboard.js",
        web::get().to(dashboard::dashboard_script),
    ))
    .service(get_only(
        "/dashboard.css",
        web::get().to(dashboard::dashboard_styles),
    ))
    .service(get_only("/openapi.json", web::get().to(docs::openapi_json)))
    .service(get_only("/docs", web::get().to(docs::show_docs)))
    .service(get_only("/docs/{asset}", web::get().to(docs::docs_asset)))
    .service(
        web::resource("/orders")
            .route(web::post().to(orders::create_order))
            .route(web::get().to(orders::list_orders))
            .default_service(not_allowed("GET, POST")),
    )
    .service(
        web::resource("/orders/{id}")
            .route(web::get().to(orders::get_order))
            .route(web::put().to(orders::replace_order))
            .route(web::patch().to(orders::patch_order))
            .route(web::delete().to(orders::delete_order))
            .default_service(not_allowed("GET, PUT, PATCH, DELETE")),
    )
    .service(get_only(
        "/orders/{id}/attempts",
        web::get().to(sync_view::list_attempts),
    ))
    .service(get_only(
        "/orders/{id}/sync",
        web::get().to(sync_view::explain_sync),
    ))
    .service(get_only(
        "/admin/orders",
        web::get().to(admin::list_failed_orders),
    ))
    // Before `/admin/orders/{id}`, which would otherwise take `retry-all` for an id.
    .service(
        web::resource("/admin/orders/retry-all")
            .route(web::post().to(admin::retry_all_dead))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/admin/orders/{id}/retry")
            .route(web::post().to(admin::retry_order))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/admin/orders/{id}")
            .route(web::delete().to(admin::discard_order))
            .default_service(not_allowed("DELETE")),
    )
    .service(
        web::resource("/admin/audit")
            .route(web::post().to(control::start_audit))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/admin/resync")
            .route(web::post().to(control::start_resync))
            .default_service(not_allowed("POST")),
    )
    .service(get_only("/admin/jobs", web::get().to(control::list_jobs)))
    .service(get_only(
        "/admin/jobs/{id}",
        web::get().to(control::get_job),
    ))
    .service(
        web::resource("/admin/sync/pause")
            .route(web::post().to(control::pause_sync))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/admin/sync/resume")
            .route(web::post().to(control::resume_sync))
            .default_service(not_allowed("POST")),
    )
    .service(
        web::resource("/inbound/{id}")
            .route(inbound_route(web::put(), inbound::put_inbound))
            .route(inbound_route(web::patch(), inbound::patch_inbound))
            .default_service(not_allowed("PUT, PATCH")),
    );
}

/// A path that takes `GET` alone.
fn get_only(path: &str, get: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(get)
        .default_service(not_allowed("GET"))
}

/// Answers 405 with `Allow: allow`, in the one error shape.
fn not_allowed(allow: &'static str) -> actix_web::Route {
    web::to(move || async move { Err::<HttpResponse, _>(ApiError::MethodNotAllowed { allow }) })
}

/// The write-back takes JSON or a form; anything else is refused before its handler runs.
fn inbound_route<F, Args>(method: actix_web::Route, handler: F) -> actix_web::Route
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    method
        .to(handler)
        .wrap(actix_web::middleware::from_fn(edge::require_json_or_form))
}

/// The answer for paths no route matches.
pub async fn route_not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

fn json_error(err: JsonPayloadError, limit: usize) -> ApiError {
    match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            ApiError::PayloadTooLarge { limit }
        }
        JsonPayloadError::Deserialize(e) => {
            ApiError::MalformedJson(format!("the body is not valid JSON: {e}"))
        }
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType(
            "the body must be JSON, sent with Content-Type: application/json".into(),
        ),
        other => ApiError::BadRequest(format!("cannot read the body: {other}")),
    }
}

fn path_error(err: PathError) -> ApiError {
    match err {
        PathError::Deserialize(_) => {
            ApiError::BadRequest("the id in the path must be an integer".into())
        }
        other => ApiError::BadRequest(other.to_string()),
    }
}

fn query_error(err: QueryPayloadError) -> ApiError {
    ApiError::BadRequest(format!("bad query string: {err}"))
}
