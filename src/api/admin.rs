//! `/admin`: the operator's view of what failed, and the Sidekiq dead-set actions (retry one,
//! retry all, discard one). Protected by `ADMIN_TOKEN` as a bearer token: no token is 401, a
//! wrong one 403; with `ADMIN_TOKEN` unset the endpoints are off (404), never open.

use crate::domain::OrderId;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::db::admin::{self, AdminChange};
use crate::db::{QueryError, StoreError};
use crate::domain::{FieldErrors, SyncState};

/// Checks the bearer token in constant time (the comparison must not tell how much matched).
pub(super) fn require_admin(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::NotFound(
            "the admin endpoints are off (ADMIN_TOKEN is unset)".into(),
        ));
    };
    let presented = super::auth::bearer_token(req.headers()).ok_or(ApiError::Unauthorized)?;
    if constant_time_eq::constant_time_eq(presented.as_bytes(), expected.expose().as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

/// `GET /admin/orders?state=dead|retrying&cursor=&per_page=`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FailedQuery {
    /// `dead` or `retrying`; both when omitted.
    #[param(pattern = "^(dead|retrying)$")]
    state: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<i64>,
    /// 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    per_page: Option<i64>,
}

#[utoipa::path(get, path = "/admin/orders", tag = "admin", params(FailedQuery), security(("admin_token" = [])),
    responses((status = 200, description = "`{\"orders\": [{id, version, synced_version, state, attempts, last_error, next_attempt_at, updated_at, deleted}], \"next_cursor\"}`"), (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset), or no such order")))]
pub async fn list_failed_orders(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<FailedQuery>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let query = query.into_inner();
    let mut errors = FieldErrors::new();
    let states = match query.state.as_deref() {
        None => vec![SyncState::Dead, SyncState::Retrying],
        Some("dead") => vec![SyncState::Dead],
        Some("retrying") => vec![SyncState::Retrying],
        Some(_) => {
            errors.insert("state".into(), "must be dead or retrying".into());
            vec![]
        }
    };
    let per_page = query.per_page.unwrap_or(50);
    if !(1..=500).contains(&per_page) {
        errors.insert("per_page".into(), "must be an integer from 1 to 500".into());
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let pool = state.db.get_postgres_connection_pool();
    let orders = admin::list_failed(pool, &states, query.cursor, per_page + 1)
        .await
        .map_err(store_error)?;
    let more = orders.len() as i64 > per_page;
    let orders: Vec<_> = orders.into_iter().take(per_page as usize).collect();
    let next_cursor = if more {
        orders.last().map(|o| o.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(json!({"orders": orders, "next_cursor": next_cursor})))
}

#[utoipa::path(post, path = "/admin/orders/{id}/retry", tag = "admin", params(("id" = i64, Path, description = "The order's id")), security(("admin_token" = [])),
    responses((status = 202, description = "Queued: the order's latest state will be synced"), (status = 409, body = crate::api::ErrorBody), (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset), or no such order")))]
pub async fn retry_order(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<OrderId>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = id.into_inner();
    let change = state.changes.retry_order(id).await.map_err(store_error)?;
    answer(change, id, "queued for retry")
}

#[utoipa::path(post, path = "/admin/orders/retry-all", tag = "admin", security(("admin_token" = [])),
    responses((status = 202, description = "`{\"retried\": n}`"), (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset), or no such order")))]
pub async fn retry_all_dead(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let retried = state.changes.retry_all_dead().await.map_err(store_error)?;
    tracing::info!(orders = retried, "operator retried every dead order");
    Ok(HttpResponse::Accepted().json(json!({"retried": retried})))
}

#[utoipa::path(delete, path = "/admin/orders/{id}", tag = "admin", params(("id" = i64, Path, description = "The order's id")), security(("admin_token" = [])),
    responses((status = 202, description = "Discarded: nothing more is sent for this version"), (status = 409, body = crate::api::ErrorBody), (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset), or no such order")))]
pub async fn discard_order(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<OrderId>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = id.into_inner();
    let change = admin::discard_order(state.db.get_postgres_connection_pool(), id)
        .await
        .map_err(store_error)?;
    answer(change, id, "discarded")
}

fn answer(change: AdminChange, id: OrderId, done: &str) -> Result<HttpResponse, ApiError> {
    match change {
        AdminChange::Done => {
            tracing::info!(order_id = id.get(), action = done, "operator action");
            Ok(HttpResponse::Accepted().json(json!({"id": id, "result": done})))
        }
        AdminChange::NotFound => Err(ApiError::NotFound(format!("order {id} not found"))),
        AdminChange::NotFailed(current) => Err(ApiError::Conflict(format!(
            "order {id} is {current}, not dead or retrying"
        ))),
    }
}

/// A failed statement of `db`'s, answered as the orders routes answer one: through
/// [`StoreError`], the one error that leaves `db` for the API (an outage is 503, not 500).
pub(super) fn store_error(err: QueryError) -> ApiError {
    StoreError::from(err).into()
}
