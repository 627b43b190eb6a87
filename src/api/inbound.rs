//! `PUT|PATCH /inbound/{id}`: the external system writing an order's status and delivery time
//! back, as in the reference service. The change emits no sync event, so nothing echoes back.
//! The body is `{"order": {"status": ..., "delivered_on": epoch}}` as JSON, or the same as a
//! form (`order[status]=delivered&order[delivered_on]=1749000000`). With
//! `INBOUND_WEBHOOK_SECRET` set, every write-back must be signed ([`super::webhook`]): a missing
//! or wrong signature, or a stale timestamp, gets 401, and a replay is answered without being
//! applied twice.

use crate::domain::OrderId;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::{webhook, ApiError, AppState};
use crate::db::{self, InboundOutcome};
use crate::domain::InboundUpdate;

/// The write-back as JSON. Keys beside `order` are ignored, as the reference ignored them.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[allow(dead_code)] // read by the OpenAPI document only
pub struct InboundJson {
    order: InboundOrder,
}

/// What the external system writes back: `status`, `delivered_on`, or both.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // read by the OpenAPI document only
pub struct InboundOrder {
    #[schema(nullable = false, pattern = "^(pending|delivered|canceled)$")]
    status: Option<String>,
    /// The delivery time in epoch seconds (0 to 99999999999): a number, or a string of digits.
    #[schema(nullable = false, schema_with = epoch_seconds_schema)]
    delivered_on: Option<i64>,
}

/// The write-back as a form, as the reference's clients sent it.
#[derive(utoipa::ToSchema, serde::Deserialize)]
#[allow(dead_code)] // read by the OpenAPI document only
pub struct InboundForm {
    #[serde(rename = "order[status]")]
    #[schema(nullable = false, pattern = "^(pending|delivered|canceled)$")]
    status: Option<String>,
    #[serde(rename = "order[delivered_on]")]
    #[schema(
        nullable = false,
        pattern = r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*\+?[0-9]{1,11}[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$"
    )]
    delivered_on: Option<String>,
}

/// Epoch seconds as `crate::domain::InboundUpdate` takes them: a whole number from 0 to
/// `MAX_EPOCH_SECONDS`, or a string of 1 to 11 digits (an optional `+`, whitespace around it).
fn epoch_seconds_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(0))
                .maximum(Some(crate::domain::MAX_EPOCH_SECONDS)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .pattern(Some(r"^[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*\+?[0-9]{1,11}[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*$")),
        )
        .examples([serde_json::json!(1_749_000_000)])
        .build()
        .into()
}

#[utoipa::path(put, path = "/inbound/{id}", tag = "inbound", params(("id" = i64, Path, description = "The order's id")),
    request_body(content((InboundJson = "application/json"), (InboundForm = "application/x-www-form-urlencoded")), description = "`{\"order\": {\"status\": \"delivered\", \"delivered_on\": 1749000000}}`, or the same as a form (`order[status]=...&order[delivered_on]=...`)"),
    responses((status = 200, description = "`{\"message\": \"Order record updated successfully.\"}`"), (status = 404, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody)))]
pub async fn put_inbound(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    update_from_inbound(state, id, req, body).await
}

/// The reference took the write-back as `PUT` or `PATCH` alike; so does this.
#[utoipa::path(patch, path = "/inbound/{id}", tag = "inbound", params(("id" = i64, Path, description = "The order's id")),
    request_body(content((InboundJson = "application/json"), (InboundForm = "application/x-www-form-urlencoded")), description = "As `PUT /inbound/{id}`"),
    responses((status = 200, description = "`{\"message\": \"Order record updated successfully.\"}`"), (status = 404, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody)))]
pub async fn patch_inbound(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    update_from_inbound(state, id, req, body).await
}

async fn update_from_inbound(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    state.ensure_accepting_writes()?;
    // Checked on the raw body, before anything is parsed.
    let webhook_id = if state.webhook_keys.is_empty() {
        None
    } else {
        let now = chrono::Utc::now().timestamp();
        Some(webhook::verify(
            &state.webhook_keys,
            req.headers(),
            &body,
            now,
        )?)
    };
    let (status, delivered_on) = read_inbound_body(&req, &body)?;
    let update = InboundUpdate::parse(status.as_ref(), delivered_on.as_ref())
        .map_err(ApiError::Validation)?;
    let signed = webhook_id.as_ref().map(|webhook| db::SignedWriteBack {
        id: webhook.id.as_str(),
        sent_at: chrono::DateTime::from_timestamp(webhook.sent_at, 0).unwrap_or_default(),
    });
    let webhook_id = signed.as_ref().map(|webhook| webhook.id);
    let outcome = state
        .changes
        .update_from_inbound(id.into_inner(), update, signed)
        .await?;
    match outcome {
        InboundOutcome::Applied(_) => {}
        // The sender retried, or someone repeated a captured request: already applied.
        InboundOutcome::Replayed => {
            tracing::info!(webhook_id, "replayed write-back: not applied again")
        }
        // Delivered late: a write-back the sender sent after it was applied first.
        InboundOutcome::Superseded => {
            tracing::info!(
                webhook_id,
                "write-back older than one already applied: ignored"
            )
        }
    }
    Ok(HttpResponse::Ok().json(json!({"message": "Order record updated successfully."})))
}

/// The raw `status` and `delivered_on` values, from a form or a JSON body.
fn read_inbound_body(
    req: &HttpRequest,
    body: &[u8],
) -> Result<(Option<Value>, Option<Value>), ApiError> {
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if is_form {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::BadRequest(format!("the form body cannot be read: {e}")))?;
        let take = |key: &str| {
            pairs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| Value::String(v.clone()))
        };
        return Ok((take("order[status]"), take("order[delivered_on]")));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not valid JSON: {e}")))?;
    let Some(order) = value.get("order").and_then(Value::as_object) else {
        let mut fields = crate::domain::FieldErrors::new();
        fields.insert(
            "order".into(),
            "must be an object with status and/or delivered_on".into(),
        );
        return Err(ApiError::Validation(fields));
    };
    let mut fields = crate::domain::FieldErrors::new();
    for key in order
        .keys()
        .filter(|k| !matches!(k.as_str(), "status" | "delivered_on"))
    {
        fields.insert(format!("order[{key}]"), "is not a known field".into());
    }
    if !fields.is_empty() {
        return Err(ApiError::Validation(fields));
    }
    Ok((
        order.get("status").cloned(),
        order.get("delivered_on").cloned(),
    ))
}
