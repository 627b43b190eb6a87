//! The API's OpenAPI document (utoipa, from the handlers' annotations) at `/openapi.json`, and an
//! interactive viewer at `/docs`: Swagger UI, vendored from the npm package `swagger-ui-dist`
//! (`assets/swagger-ui/`) and built into the binary, so it works without network access. Its
//! start-up call is a file too (`/docs/swagger-init.js`): the content security policy
//! (`super::edge`) runs no inline script.

use actix_web::{web, HttpResponse, ResponseError};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{admin, control, health, inbound, metrics, orders, sync_view, ApiError, PROBLEM_JSON};

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
        inbound::put_inbound,
        inbound::patch_inbound,
        health::check_health,
        health::check_live,
        health::check_ready,
        metrics::actor_metrics,
        metrics::prometheus_metrics,
        metrics::metrics_history,
        admin::list_failed_orders,
        admin::retry_order,
        admin::retry_all_dead,
        admin::discard_order,
        control::start_audit,
        control::start_resync,
        control::list_jobs,
        control::get_job,
        control::pause_sync,
        control::resume_sync,
    ),
    components(schemas(orders::OrderIn, orders::OrderPatchIn, inbound::InboundJson, inbound::InboundOrder, inbound::InboundForm, orders::OrderOut, orders::SyncOut, orders::OrderPageOut, sync_view::AttemptPageOut, sync_view::SyncExplanationOut, metrics::HistoryOut, control::JobRangeIn, control::JobOut, control::JobListOut, control::SyncSwitchOut, crate::db::jobs::Job, crate::db::jobs::JobKind, crate::db::jobs::JobStatus, super::ErrorBody)),
    modifiers(&AdminToken, &OrderLinks, &CommonErrors, &ProblemMediaType),
    tags(
        (name = "orders", description = "Orders; every change is synced to the external API"),
        (name = "inbound", description = "The external system writing back (never echoed)"),
        (name = "admin", description = "The dead set, audits, resyncs and the pause switch: needs `Authorization: Bearer $ADMIN_TOKEN`"),
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

/// Declares, on every operation, the errors that the service's common layers can answer with,
/// so no answer is undocumented: 400 (an id or query that does not parse, a body that is not
/// JSON), 401 (`API_TOKENS` set, or a bad admin token), 405 is per path (`Allow`), 422 (a rule
/// broken), 503 (PostgreSQL unreachable), and for a body 408 (too slow), 413 (too large) and
/// 415 (a type or coding the route does not take). Added here, not by hand on each handler, so
/// a new route cannot miss them. `/health` (200/503) and the pages without data keep their own.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    PROBLEM_JSON,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(PROBLEM_SCHEMA)))
                        .build(),
                )
                .build()
        };
        for (path, item) in openapi.paths.paths.iter_mut() {
            if path.starts_with("/health") {
                continue;
            }
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
                item.delete.as_mut(),
            ];
            for operation in operations.into_iter().flatten() {
                let mut common = vec![
                    ("401", "Missing or wrong bearer token"),
                    (
                        "503",
                        "PostgreSQL cannot be reached right now (with Retry-After)",
                    ),
                ];
                let takes_input = path.contains('{')
                    || operation.request_body.is_some()
                    || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                if takes_input {
                    common.push((
                        "400",
                        "An id or query value that does not parse, or a body that is not JSON",
                    ));
                    common.push(("422", "A value breaks a rule; `fields` names each"));
                }
                if operation.request_body.is_some() {
                    common.push(("408", "The body did not arrive in time"));
                    common.push(("413", "The body is larger than MAX_BODY_BYTES"));
                    common.push(("415", "A body type or coding the route does not take"));
                }
                for (status, description) in common {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error(description).into());
                }
            }
        }
    }
}

/// The OpenAPI name of `super::ErrorBody` (its `#[schema(as = ...)]`).
const PROBLEM_SCHEMA: &str = "Problem";

/// Declares every error answer as `application/problem+json`, the type it is sent with: utoipa
/// writes `body = crate::api::ErrorBody` as `application/json`. Done here, once, so a handler's
/// annotation cannot get it wrong. Runs after [`CommonErrors`].
struct ProblemMediaType;

impl Modify for ProblemMediaType {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::RefOr;
        let problem = format!("#/components/schemas/{PROBLEM_SCHEMA}");
        let responses = openapi
            .paths
            .paths
            .values_mut()
            .flat_map(|item| {
                [
                    item.get.as_mut(),
                    item.post.as_mut(),
                    item.put.as_mut(),
                    item.patch.as_mut(),
                    item.delete.as_mut(),
                ]
            })
            .flatten()
            .flat_map(|operation| operation.responses.responses.values_mut());
        for response in responses {
            let RefOr::T(response) = response else {
                continue;
            };
            let is_problem = response.content.get("application/json").is_some_and(
                |c| matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == problem),
            );
            if !is_problem {
                continue;
            }
            if let Some(content) = response.content.shift_remove("application/json") {
                response.content.insert(PROBLEM_JSON.to_string(), content);
            }
        }
    }
}

/// Links from the order `POST /orders` creates to every operation that takes an order's id, so
/// a client (or a stateful fuzzer) can follow a created order through the API.
struct OrderLinks;

/// The operations that take an order's id as `{id}`.
const TAKE_AN_ORDER_ID: [&str; 10] = [
    "get_order",
    "replace_order",
    "patch_order",
    "delete_order",
    "list_attempts",
    "explain_sync",
    "retry_order",
    "discard_order",
    "put_inbound",
    "patch_inbound",
];

impl Modify for OrderLinks {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::Link;
        use utoipa::openapi::RefOr;
        let created = openapi
            .paths
            .paths
            .get_mut("/orders")
            .and_then(|item| item.post.as_mut())
            .and_then(|post| post.responses.responses.get_mut("201"));
        let Some(RefOr::T(created)) = created else {
            return;
        };
        for operation in TAKE_AN_ORDER_ID {
            created.links.insert(
                operation.to_string(),
                RefOr::T(
                    Link::builder()
                        .operation_id(operation)
                        .parameter("id", "$response.body#/id")
                        .build(),
                ),
            );
        }
    }
}

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

/// The document as served, with what utoipa cannot state added. utoipa 5.5 writes a link's `operationId` and `operationRef` as
/// `operation_id` and `operation_ref` (its `Link` lacks the camel-case renaming), which no
/// OpenAPI tool reads: they are renamed here.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(paths) = document.get_mut("paths").and_then(|p| p.as_object_mut()) {
        let responses = paths
            .values_mut()
            .filter_map(|item| item.as_object_mut())
            .flat_map(|item| item.values_mut())
            .filter_map(|operation| operation.get_mut("responses"))
            .filter_map(|responses| responses.as_object_mut())
            .flat_map(|responses| responses.values_mut());
        for response in responses {
            let Some(links) = response.get_mut("links").and_then(|l| l.as_object_mut()) else {
                continue;
            };
            for link in links.values_mut().filter_map(|l| l.as_object_mut()) {
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("operation_ref", "operationRef"),
                ] {
                    if let Some(value) = link.remove(snake) {
                        link.insert(camel.to_string(), value);
                    }
                }
            }
        }
    }
    // A rule between two fields, which utoipa's attributes cannot state: `delivered_at` is
    // null or absent unless the status is `delivered` (`OrderFields::checked`).
    if let Some(order) = document
        .pointer_mut("/components/schemas/OrderIn")
        .and_then(|o| o.as_object_mut())
    {
        order.insert(
            "if".into(),
            serde_json::json!({"properties": {"status": {"const": "delivered"}}}),
        );
        order.insert(
            "else".into(),
            serde_json::json!({"properties": {"delivered_at": {"type": "null"}}}),
        );
    }
    document
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
        _ => return ApiError::NotFound("no such asset".into()).error_response(),
    };
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "public, max-age=86400"))
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::document;
    use crate::domain::{Money, MAX_EPOCH_SECONDS};

    /// The numbers written in the schema's attributes are the domain's own: a changed rule
    /// that is not changed in the document too fails here.
    #[test]
    fn the_documents_bounds_are_the_domains() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for body in ["OrderIn", "OrderPatchIn"] {
            for field in ["amount", "tax"] {
                let money = &schemas[body]["properties"][field];
                assert_eq!(money["maximum"], Money::MAX, "{body}.{field}");
                assert_eq!(money["minimum"], 0, "{body}.{field}");
            }
            assert_eq!(schemas[body]["additionalProperties"], false, "{body}");
        }
        let epoch = &schemas["InboundOrder"]["properties"]["delivered_on"]["oneOf"][0];
        assert_eq!(epoch["maximum"], MAX_EPOCH_SECONDS);
        let list = doc["paths"]["/orders"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let page = list.iter().find(|p| p["name"] == "page").expect("page");
        assert_eq!(page["schema"]["maximum"], super::super::orders::MAX_PAGE);
    }

    /// A job's kind and status are declared by the names the API sends.
    #[test]
    fn the_job_enums_are_declared_by_the_names_sent() {
        use crate::db::jobs::{JobKind, JobStatus};
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        let names = |values: Vec<&str>| serde_json::json!(values);
        assert_eq!(
            schemas["JobKind"]["enum"],
            names(JobKind::ALL.iter().map(|k| k.as_str()).collect())
        );
        assert_eq!(
            schemas["JobStatus"]["enum"],
            names(JobStatus::ALL.iter().map(|s| s.as_str()).collect())
        );
        assert_eq!(
            serde_json::to_value(JobKind::Resync).expect("JSON"),
            serde_json::json!("resync")
        );
    }

    /// Every error answer is declared as it is sent: a `Problem` as `application/problem+json`.
    #[test]
    fn every_error_answer_is_a_problem_json() {
        let doc = document();
        let problem = serde_json::json!({"$ref": "#/components/schemas/Problem"});
        let mut problems = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("operations") {
                let responses = operation["responses"].as_object().expect("responses");
                for (status, response) in responses {
                    let Some(content) = response["content"].as_object() else {
                        continue;
                    };
                    for (media_type, body) in content {
                        let is_problem = body["schema"] == problem;
                        assert_eq!(
                            is_problem,
                            media_type == super::PROBLEM_JSON,
                            "{method} {path} {status}: {media_type}"
                        );
                        problems += usize::from(is_problem);
                    }
                    if status.starts_with('4') || status.starts_with('5') {
                        assert!(
                            content.is_empty() || content.contains_key(super::PROBLEM_JSON),
                            "{method} {path} {status} is not a problem"
                        );
                    }
                }
            }
        }
        assert!(problems > 50, "only {problems} problem answers");
        let schema = &doc["components"]["schemas"]["Problem"];
        for member in ["type", "title", "status", "detail", "code"] {
            assert!(
                schema["required"]
                    .as_array()
                    .is_some_and(|r| r.contains(&member.into())),
                "{member} not required in {schema}"
            );
        }
    }
}
