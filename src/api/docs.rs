//! The API's OpenAPI document (utoipa, from the handlers' annotations) at `/openapi.json`, and an
//! interactive viewer at `/docs`: Swagger UI, vendored from the npm package `swagger-ui-dist`
//! (`assets/swagger-ui/`) and built into the binary, so it works without network access. Its
//! start-up call is a file too (`/docs/swagger-init.js`): the content security policy
//! (`super::edge`) runs no inline script.

use actix_web::{web, HttpResponse};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, health, inbound, metrics, orders, sync_view};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "order-sync",
        description = "Keeps an external HTTP API in step with an orders database: reliably, in order per order, within one rate limit."
    ),
    paths(
        orders::create_order,
        orders::list_orders,
        orders::get_order,
        orders::replace_order,
        orders::patch_order,
        orders::delete_order,
        sync_view::list_attempts,
        sync_view::explain_sync,
        inbound::update_from_inbound,
        health::check_health,
        metrics::actor_metrics,
        metrics::prometheus_metrics,
        metrics::metrics_history,
        admin::list_failed_orders,
        admin::retry_order,
        admin::retry_all_dead,
        admin::discard_order,
    ),
    components(schemas(orders::OrderIn, orders::OrderOut, orders::SyncOut, orders::OrderPageOut, sync_view::AttemptPageOut, sync_view::SyncExplanationOut, metrics::HistoryOut, super::ErrorBody)),
    modifiers(&AdminToken),
    tags(
        (name = "orders", description = "Orders; every change is synced to the external API"),
        (name = "inbound", description = "The external system writing back (never echoed)"),
        (name = "admin", description = "The dead set: needs `Authorization: Bearer $ADMIN_TOKEN`"),
        (name = "operations", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// Declares the admin endpoints' bearer token.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "admin_token",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

const VIEWER: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>order-sync API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-init.js"></script>
</body></html>"##;

/// `validatorUrl: null`: no badge fetched from validator.swagger.io (the policy would block it).
const INIT: &[u8] =
    br##"window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", validatorUrl: null});
"##;

pub async fn show_docs() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(VIEWER)
}

const BUNDLE: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js");
const STYLES: &[u8] = include_bytes!("../../assets/swagger-ui/swagger-ui.css");

pub async fn docs_asset(asset: web::Path<String>) -> HttpResponse {
    let (body, content_type) = match asset.as_str() {
        "swagger-ui-bundle.js" => (BUNDLE, "application/javascript"),
        "swagger-init.js" => (INIT, "application/javascript"),
        "swagger-ui.css" => (STYLES, "text/css"),
        _ => {
            return HttpResponse::NotFound().json(
                serde_json::json!({"error": {"code": "not_found", "message": "no such asset"}}),
            )
        }
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "public, max-age=86400"))
        .body(body)
}
