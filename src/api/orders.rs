//! `/orders`: create, read, list, replace, patch and delete orders. Handlers parse the body into
//! domain values (which reject bad fields) and hand them to `crate::db`; they check nothing.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, AppState};
use crate::db::{self, entity::orders, OrderFilter, PageRequest};
use crate::domain::{FieldErrors, OrderFields, OrderPatch};

/// An order as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderOut {
    pub id: i64,
    pub status: String,
    pub placed_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub amount: i64,
    pub tax: i64,
    pub street_address: String,
    pub city: String,
    pub state: String,
    pub country: String,
    pub pincode: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sync: SyncOut,
}

/// Where the order's external copy stands.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncOut {
    pub state: String,
    pub synced_version: i64,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub synced_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

impl From<orders::Model> for OrderOut {
    fn from(row: orders::Model) -> Self {
        Self {
            id: row.id,
            status: row.status.to_string(),
            placed_at: row.placed_at,
            delivered_at: row.delivered_at,
            amount: row.amount,
            tax: row.tax,
            street_address: row.street_address,
            city: row.city,
            state: row.state,
            country: row.country,
            pincode: row.pincode,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            sync: SyncOut {
                state: row.sync_state.to_string(),
                synced_version: row.synced_version,
                attempts: row.sync_attempts,
                last_error: row.sync_last_error,
                synced_at: row.synced_at,
                next_attempt_at: row.sync_next_attempt_at,
            },
        }
    }
}

/// One page of `GET /orders`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderPageOut {
    pub orders: Vec<OrderOut>,
    pub per_page: u64,
    /// Set for numbered pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u64>,
    /// Orders matching the filter, for numbered pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Pass as `?cursor=` for the next page; null on the last one.
    pub next_cursor: Option<i64>,
}

/// The query string of `GET /orders`, as sent; parsed into a filter and a page request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page number (from 1); the answer then has `total`. `page` × `per_page` may be 10,000 at
    /// most: go further with `cursor`.
    page: Option<String>,
    /// Orders per page, 1 to 100 (default 25).
    per_page: Option<String>,
    /// The `next_cursor` of the previous page (not with `page`).
    cursor: Option<String>,
    /// `pending`, `delivered` or `canceled`.
    status: Option<String>,
    /// `pending`, `synced`, `retrying` or `dead` (also accepted as `sync.state`).
    #[serde(alias = "sync.state")]
    sync_state: Option<String>,
}

/// A full order, as `POST` and `PUT` take it (documentation: the handlers parse the JSON into
/// `crate::domain::OrderFields`, which enforces these rules).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // read by the OpenAPI document only
pub struct OrderIn {
    /// `pending`, `delivered` or `canceled`.
    #[schema(example = "delivered")]
    status: String,
    /// RFC 3339.
    #[schema(example = "2025-06-01T10:00:00Z")]
    placed_at: DateTime<Utc>,
    /// Only when delivered; not before `placed_at`.
    #[schema(example = "2025-06-04T10:00:00Z")]
    delivered_at: Option<DateTime<Utc>>,
    /// Minor units, 0 to 10^12.
    #[schema(example = 1000)]
    amount: i64,
    /// Minor units, 0 to 10^12.
    #[schema(example = 180)]
    tax: i64,
    /// 1 to 200 characters (as are city, state and country).
    #[schema(example = "12 MG Road")]
    street_address: String,
    #[schema(example = "Pune")]
    city: String,
    #[schema(example = "Maharashtra")]
    state: String,
    #[schema(example = "India")]
    country: String,
    /// 3 to 10 letters, digits, spaces or hyphens; kept as text.
    #[schema(example = "411001")]
    pincode: String,
}

const DEFAULT_PER_PAGE: u64 = 25;
const MAX_PER_PAGE: u64 = 100;

/// The deepest a numbered page may reach (`page` × `per_page`). PostgreSQL reads and discards
/// every row before a numbered page (`OFFSET`), so page 400,000 costs a scan of ten million rows,
/// each time it is asked for; a cursor page seeks straight to its place in the index whatever
/// its depth. Deeper pages are refused (422) with a pointer to `cursor`.
const MAX_NUMBERED_ROWS: u64 = 10_000;

impl ListQuery {
    fn parse(self) -> Result<(OrderFilter, PageRequest), FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut number = |name: &str, raw: Option<String>, min: u64, max: u64| -> Option<u64> {
            let raw = raw?;
            match raw.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    errors.insert(
                        name.into(),
                        format!("must be an integer from {min} to {max}"),
                    );
                    None
                }
            }
        };
        let per_page =
            number("per_page", self.per_page, 1, MAX_PER_PAGE).unwrap_or(DEFAULT_PER_PAGE);
        let page = number("page", self.page, 1, u64::from(u32::MAX));
        let cursor = number("cursor", self.cursor, 1, i64::MAX as u64).map(|c| c as i64);
        let status = self.status.and_then(|s| {
            s.parse()
                .map_err(|e| errors.insert("status".into(), e))
                .ok()
        });
        let sync_state = self.sync_state.and_then(|s| {
            s.parse()
                .map_err(|e| errors.insert("sync.state".into(), e))
                .ok()
        });
        if page.is_some_and(|page| page.saturating_mul(per_page) > MAX_NUMBERED_ROWS) {
            errors.insert(
                "page".into(),
                format!(
                    "numbered pages reach the first {MAX_NUMBERED_ROWS} orders only \
                     (page × per_page); use cursor (each page's next_cursor) to go further"
                ),
            );
        }
        if page.is_some() && cursor.is_some() {
            errors.insert(
                "cursor".into(),
                "use either page or cursor, not both".into(),
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let request = match page {
            Some(page) => PageRequest::Numbered { page, per_page },
            None => PageRequest::After { cursor, per_page },
        };
        Ok((OrderFilter { status, sync_state }, request))
    }
}

#[utoipa::path(post, path = "/orders", tag = "orders", request_body = OrderIn,
    responses((status = 201, body = OrderOut), (status = 400, body = crate::api::ErrorBody), (status = 413, body = crate::api::ErrorBody), (status = 415, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody), (status = 503, body = crate::api::ErrorBody)))]
pub async fn create_order(
    state: web::Data<AppState>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    let fields = OrderFields::parse(&body).map_err(ApiError::Validation)?;
    let order = db::create_order(&state.db, &fields).await?;
    state.relay_wake_up.notify_one();
    Ok(HttpResponse::Created().json(OrderOut::from(order)))
}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    responses((status = 200, body = OrderOut), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_order(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    let order = db::get_order(&state.db, id.into_inner()).await?;
    Ok(HttpResponse::Ok().json(OrderOut::from(order)))
}

#[utoipa::path(get, path = "/orders", tag = "orders", params(ListQuery),
    responses((status = 200, body = OrderPageOut), (status = 422, body = crate::api::ErrorBody)))]
pub async fn list_orders(
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let (filter, request) = query.into_inner().parse().map_err(ApiError::Validation)?;
    let page = db::list_orders(&state.db, &filter, request).await?;
    let (page_number, per_page) = match request {
        PageRequest::Numbered { page, per_page } => (Some(page), per_page),
        PageRequest::After { per_page, .. } => (None, per_page),
    };
    Ok(HttpResponse::Ok().json(OrderPageOut {
        orders: page.orders.into_iter().map(OrderOut::from).collect(),
        per_page,
        page: page_number,
        total: page.total,
        next_cursor: page.next_cursor,
    }))
}

#[utoipa::path(put, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")), request_body = OrderIn,
    responses((status = 200, body = OrderOut), (status = 404, body = crate::api::ErrorBody), (status = 415, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody)))]
pub async fn replace_order(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    let fields = OrderFields::parse(&body).map_err(ApiError::Validation)?;
    let order = db::replace_order(&state.db, id.into_inner(), fields).await?;
    state.relay_wake_up.notify_one();
    Ok(HttpResponse::Ok().json(OrderOut::from(order)))
}

#[utoipa::path(patch, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    request_body(content = serde_json::Value, description = "Any subset of the order's fields; `\"delivered_at\": null` clears it"),
    responses((status = 200, body = OrderOut), (status = 404, body = crate::api::ErrorBody), (status = 415, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody)))]
pub async fn patch_order(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    let patch = OrderPatch::parse(&body).map_err(ApiError::Validation)?;
    let order = db::patch_order(&state.db, id.into_inner(), patch).await?;
    state.relay_wake_up.notify_one();
    Ok(HttpResponse::Ok().json(OrderOut::from(order)))
}

#[utoipa::path(delete, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    responses((status = 204, description = "Deleted; the delete is synced to the external API"), (status = 404, body = crate::api::ErrorBody)))]
pub async fn delete_order(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    db::delete_order(&state.db, id.into_inner()).await?;
    state.relay_wake_up.notify_one();
    Ok(HttpResponse::NoContent().finish())
}
