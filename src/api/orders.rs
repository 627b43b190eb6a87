//! `/orders`: create, read, list, replace, patch and delete orders. Handlers parse the body into
//! domain values (which reject bad fields) and hand them to `crate::db` (changes go through
//! `state.changes`); they check nothing.

use crate::domain::OrderId;
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
    /// Page number, 1 to 100; the answer then has `total`. Numbered pages reach the first 10,000
    /// orders (100 pages of 100): go further with `cursor`.
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    page: Option<String>,
    /// Orders per page, 1 to 100 (default 25).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    per_page: Option<String>,
    /// The `next_cursor` of the previous page (not with `page`).
    #[param(value_type = Option<i64>, minimum = 1)]
    cursor: Option<String>,
    /// `pending`, `delivered` or `canceled`.
    #[param(value_type = Option<String>, pattern = "^(pending|delivered|canceled)$")]
    status: Option<String>,
    /// `pending`, `synced`, `retrying` or `dead` (also accepted as `sync.state`).
    #[serde(alias = "sync.state")]
    #[param(value_type = Option<String>, pattern = "^(pending|synced|retrying|dead)$")]
    sync_state: Option<String>,
}

/// A full order, as `POST` and `PUT` take it (documentation: the handlers parse the JSON into
/// `crate::domain::OrderFields`, which enforces these rules; the patterns say exactly what
/// `AddressLine::new` and `Pincode::new` accept: leading and trailing whitespace (Rust's
/// `char::is_whitespace`) is trimmed, and what is left has no control character).
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by the OpenAPI document only
pub struct OrderIn {
    /// `pending`, `delivered` or `canceled`.
    #[schema(example = "delivered", pattern = "^(pending|delivered|canceled)$")]
    status: String,
    /// RFC 3339.
    #[schema(example = "2025-06-01T10:00:00Z")]
    placed_at: DateTime<Utc>,
    /// Only when delivered; not before `placed_at`.
    #[schema(example = "2025-06-04T10:00:00Z")]
    delivered_at: Option<DateTime<Utc>>,
    /// Minor units, 0 to 10^12.
    #[schema(example = 1000, minimum = 0, maximum = 1_000_000_000_000_i64)]
    amount: i64,
    /// Minor units, 0 to 10^12.
    #[schema(example = 180, minimum = 0, maximum = 1_000_000_000_000_i64)]
    tax: i64,
    /// 1 to 200 characters once trimmed, no control characters (as are city, state and
    /// country).
    #[schema(
        example = "12 MG Road",
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    street_address: String,
    #[schema(
        example = "Pune",
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    city: String,
    #[schema(
        example = "Maharashtra",
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    state: String,
    #[schema(
        example = "India",
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    country: String,
    /// 3 to 10 letters, digits, spaces or hyphens once trimmed, starting with a letter or digit;
    /// kept as text. A whole number (100 to 9999999999) is taken too.
    #[schema(example = "411001", schema_with = pincode_schema)]
    pincode: String,
}

/// Any subset of an order's fields, as `PATCH` takes it; `"delivered_at": null` clears it.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by the OpenAPI document only
pub struct OrderPatchIn {
    #[schema(nullable = false, pattern = "^(pending|delivered|canceled)$")]
    status: Option<String>,
    #[schema(nullable = false)]
    placed_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000_000_000_i64)]
    amount: Option<i64>,
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000_000_000_i64)]
    tax: Option<i64>,
    #[schema(
        nullable = false,
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    street_address: Option<String>,
    #[schema(
        nullable = false,
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    city: Option<String>,
    #[schema(
        nullable = false,
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    state: Option<String>,
    #[schema(
        nullable = false,
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000](?:[^\x00-\x1f\x7f-\x9f]{0,198}[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000])?[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    country: Option<String>,
    #[schema(nullable = false, schema_with = pincode_schema)]
    pincode: Option<String>,
}

/// A pincode: text of 3 to 10 letters, digits, spaces or hyphens, or a whole number of 3 to 10
/// digits.
fn pincode_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .pattern(Some(r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*[A-Za-z0-9][A-Za-z0-9 -]{1,8}[A-Za-z0-9-][\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(100))
                .maximum(Some(9_999_999_999_i64)),
        )
        .build()
        .into()
}

const DEFAULT_PER_PAGE: u64 = 25;
const MAX_PER_PAGE: u64 = 100;

/// The last numbered page. PostgreSQL reads and discards every row before a numbered page
/// (`OFFSET`), so page 400,000 costs a scan of ten million rows, each time it is asked for; a
/// cursor page seeks straight to its place in the index whatever its depth. With at most 100 per
/// page, numbered pages reach the first 10,000 orders; further ones are refused (422) with a
/// pointer to `cursor`. (Until 2026-11-28 the bound was `page` × `per_page` ≤ 10,000, which no
/// OpenAPI schema can state: a generated client could not know page 401 was refused.)
pub(super) const MAX_PAGE: u64 = 100;

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
        let cursor = number("cursor", self.cursor, 1, i64::MAX as u64).map(|c| c as i64);
        let page = self.page.and_then(|raw| match raw.parse::<u64>() {
            Ok(page) if (1..=MAX_PAGE).contains(&page) => Some(page),
            _ => {
                errors.insert(
                    "page".into(),
                    format!(
                        "must be an integer from 1 to {MAX_PAGE}: numbered pages reach the \
                         first {} orders; use cursor (each page's next_cursor) to go further",
                        MAX_PAGE * MAX_PER_PAGE
                    ),
                );
                None
            }
        });
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
    let order = state.changes.create_order(&fields).await?;
    Ok(HttpResponse::Created().json(OrderOut::from(order)))
}

#[utoipa::path(get, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    responses((status = 200, body = OrderOut), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody)))]
pub async fn get_order(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
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
    id: web::Path<OrderId>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    let fields = OrderFields::parse(&body).map_err(ApiError::Validation)?;
    let order = state.changes.replace_order(id.into_inner(), fields).await?;
    Ok(HttpResponse::Ok().json(OrderOut::from(order)))
}

#[utoipa::path(patch, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    request_body = OrderPatchIn,
    responses((status = 200, body = OrderOut), (status = 404, body = crate::api::ErrorBody), (status = 415, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody)))]
pub async fn patch_order(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
    body: web::Json<Value>,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    let patch = OrderPatch::parse(&body).map_err(ApiError::Validation)?;
    let order = state.changes.patch_order(id.into_inner(), patch).await?;
    Ok(HttpResponse::Ok().json(OrderOut::from(order)))
}

#[utoipa::path(delete, path = "/orders/{id}", tag = "orders", params(("id" = i64, Path, description = "The order's id")),
    responses((status = 204, description = "Deleted; the delete is synced to the external API"), (status = 404, body = crate::api::ErrorBody)))]
pub async fn delete_order(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    state.changes.delete_order(id.into_inner()).await?;
    Ok(HttpResponse::NoContent().finish())
}
