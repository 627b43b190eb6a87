//! `API_TOKENS`: bearer tokens for the data routes. Several may be set (comma-separated), so a
//! token is rotated by adding the new one, moving clients over, then removing the old one.
//!
//! Open without a token: `/health`, `/health/live` and `/health/ready` (for load balancers and
//! orchestrators; they name no order and no secret), `/inbound` (signed instead, see
//! [`super::webhook`]), `/admin` (its own `ADMIN_TOKEN`), and the pages that hold no data (the
//! dashboard's page and Swagger UI with the OpenAPI document), so a browser can load them; the
//! dashboard then asks for the token and sends it with every request for figures. With no
//! token configured every route is open, and a WARN line at start-up says so.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, AUTHORIZATION};
use actix_web::middleware::Next;
use actix_web::{web, Error, ResponseError};

use super::{ApiError, AppState};
use crate::config::Secret;

/// The bearer token of a request, if it has a well-formed one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Whether `presented` is one of `tokens`, compared in constant time against every one of them
/// (the comparison must tell neither how much matched nor which token it was).
pub fn is_one_of(presented: &str, tokens: &[Secret]) -> bool {
    tokens.iter().fold(false, |found, token| {
        found | constant_time_eq::constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
    })
}

/// Paths that need no API token (see the module's doc).
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/" | "/dashboard.js"
            | "/dashboard.css"
            | "/health"
            | "/health/live"
            | "/health/ready"
            | "/openapi.json"
            | "/docs"
    ) || ["/docs/", "/inbound/", "/admin"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// Middleware: answers 401 (in the one error shape) to a data route without a valid token.
pub async fn require_api_token(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, Error> {
    let tokens = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.api_tokens.clone())
        .unwrap_or_default();
    if tokens.is_empty() || is_open(req.path()) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body);
    }
    let refused = match bearer_token(req.headers()) {
        None => Some(ApiError::Unauthorized),
        Some(token) if !is_one_of(token, &tokens) => Some(ApiError::BadToken),
        Some(_) => None,
    };
    match refused {
        Some(error) => Ok(req.into_response(error.error_response())),
        None => next
            .call(req)
            .await
            .map(ServiceResponse::map_into_boxed_body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_free_pages_health_inbound_and_admin_are_open() {
        for open in [
            "/",
            "/health",
            "/health/live",
            "/health/ready",
            "/docs",
            "/docs/swagger-ui.css",
            "/openapi.json",
            "/inbound/1",
            "/admin/orders",
        ] {
            assert!(is_open(open), "{open}");
        }
        for guarded in [
            "/orders",
            "/orders/1",
            "/metrics",
            "/metrics/actors",
            "/metrics/history",
            "/orders/1/attempts",
            "/orders/1/sync",
            "/nope",
            "/healthz",
        ] {
            assert!(!is_open(guarded), "{guarded}");
        }
    }

    #[test]
    fn any_configured_token_is_accepted_and_no_other() {
        let tokens = [Secret::new("old-token"), Secret::new("new-token")];
        assert!(is_one_of("old-token", &tokens));
        assert!(is_one_of("new-token", &tokens));
        assert!(!is_one_of("new-toke", &tokens));
        assert!(!is_one_of("", &tokens));
    }
}
