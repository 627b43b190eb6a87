//! The operator's controls (behind `ADMIN_TOKEN`, like the rest of `/admin`): start an audit or a
//! full resync (`crate::engine::jobs`), follow jobs, and pause or resume outbound calls for every
//! instance (`crate::engine::gate::pause`).

use actix_web::http::header::LOCATION;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

use super::admin::{require_admin, store_error};
use super::{ApiError, AppState};
use crate::db::jobs::{self, Job, JobKind};
use crate::domain::FieldErrors;

/// The ids a job covers; both optional (from the first id to the highest handed out).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRangeIn {
    /// The first id (default 1).
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole_id")]
    from_id: Option<i64>,
    /// The last id (default: the highest id handed out). Not below `from_id`.
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole_id")]
    to_id: Option<i64>,
}

/// An id sent as a JSON number: `5271`, or `5271.0`, which JSON Schema (and so the OpenAPI
/// document) counts as the same integer. `null` is the default.
fn whole_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    crate::domain::whole_number(&number)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number of an i64")))
}

/// A job and how far it got.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobOut {
    #[serde(flatten)]
    job: Job,
    /// From 0 to 1: checked ids of the total (audit), or resends recorded of the total (resync).
    progress: f64,
    /// Resync: orders queued whose resend is recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    sent: Option<i64>,
}

/// `{"jobs": [...]}`, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobListOut {
    jobs: Vec<JobOut>,
}

/// Whether outbound calls run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SyncSwitchOut {
    /// `running` or `paused`.
    sync: &'static str,
    /// When it became so.
    since: DateTime<Utc>,
}

#[utoipa::path(post, path = "/admin/audit", tag = "admin", request_body = Option<JobRangeIn>, security(("admin_token" = [])),
    responses((status = 202, body = JobOut, description = "The audit job, started; follow it at `Location`"), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset)")))]
pub async fn start_audit(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    start_job(&state, &req, &body, JobKind::Audit).await
}

#[utoipa::path(post, path = "/admin/resync", tag = "admin", request_body = Option<JobRangeIn>, security(("admin_token" = [])),
    responses((status = 202, body = JobOut, description = "The resync job, started; follow it at `Location`"), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset)")))]
pub async fn start_resync(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    start_job(&state, &req, &body, JobKind::Resync).await
}

async fn start_job(
    state: &AppState,
    req: &HttpRequest,
    body: &[u8],
    kind: JobKind,
) -> Result<HttpResponse, ApiError> {
    require_admin(state, req)?;
    state.ensure_accepting_writes()?;
    let range = read_range(req, body)?;
    let pool = state.db.get_postgres_connection_pool();
    let job = jobs::create_job(pool, kind, range.from_id, range.to_id)
        .await
        .map_err(store_error)?;
    tracing::info!(
        job = job.id,
        kind = kind.as_str(),
        from_id = job.from_id,
        to_id = job.to_id,
        "operator started a job"
    );
    let out = job_out(pool, job).await?;
    Ok(HttpResponse::Accepted()
        .insert_header((LOCATION, format!("/admin/jobs/{}", out.job.id)))
        .json(out))
}

/// The optional body: nothing (or `null`), or a JSON object with `from_id` and `to_id`.
fn read_range(req: &HttpRequest, body: &[u8]) -> Result<JobRangeIn, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(JobRangeIn::default());
    }
    let json = req
        .mime_type()
        .ok()
        .flatten()
        .is_some_and(|mime| super::edge::is_json(&mime));
    if !json {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be JSON, sent with Content-Type: application/json".into(),
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not valid JSON: {e}")))?;
    if value.is_null() {
        return Ok(JobRangeIn::default()); // as an empty body
    }
    if !value.is_object() {
        return Err(ApiError::MalformedJson(
            "the body must be a JSON object: {\"from_id\": 1, \"to_id\": 100}".into(),
        ));
    }
    let range: JobRangeIn = serde_json::from_value(value)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not a range of ids: {e}")))?;
    let mut errors = FieldErrors::new();
    for (field, value) in [("from_id", range.from_id), ("to_id", range.to_id)] {
        if value.is_some_and(|id| id < 1) {
            errors.insert(field.into(), "must be an id, 1 or more".into());
        }
    }
    if let (Some(from), Some(to)) = (range.from_id, range.to_id) {
        if to < from {
            errors.insert("to_id".into(), "must not be below from_id".into());
        }
    }
    if errors.is_empty() {
        Ok(range)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// A job with its progress.
async fn job_out(pool: &crate::db::PgPool, job: Job) -> Result<JobOut, ApiError> {
    let (progress, sent) = jobs::progress(pool, &job).await.map_err(store_error)?;
    Ok(JobOut {
        job,
        progress,
        sent,
    })
}

#[utoipa::path(get, path = "/admin/jobs", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = JobListOut, description = "The 20 newest jobs"), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset)")))]
pub async fn list_jobs(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let pool = state.db.get_postgres_connection_pool();
    let mut jobs_out = Vec::new();
    for job in jobs::recent_jobs(pool, 20).await.map_err(store_error)? {
        jobs_out.push(job_out(pool, job).await?);
    }
    Ok(HttpResponse::Ok().json(JobListOut { jobs: jobs_out }))
}

#[utoipa::path(get, path = "/admin/jobs/{id}", tag = "admin", params(("id" = i64, Path, description = "The job's id")), security(("admin_token" = [])),
    responses((status = 200, body = JobOut), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "No such job, or admin endpoints off (ADMIN_TOKEN unset)")))]
pub async fn get_job(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&state, &req)?;
    let id = id.into_inner();
    let pool = state.db.get_postgres_connection_pool();
    let job = jobs::get_job(pool, id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
    Ok(HttpResponse::Ok().json(job_out(pool, job).await?))
}

#[utoipa::path(post, path = "/admin/sync/pause", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = SyncSwitchOut, description = "Paused, on every instance: no call starts (calls already started finish; the other instances stop within 0.5 s); changes are still accepted and coalesce"), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset)")))]
pub async fn pause_sync(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    switch(&state, &req, true).await
}

#[utoipa::path(post, path = "/admin/sync/resume", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, body = SyncSwitchOut, description = "Running again, on every instance: the backlog drains at the rate limit"), (status = 403, body = crate::api::ErrorBody), (status = 404, description = "Admin endpoints off (ADMIN_TOKEN unset)")))]
pub async fn resume_sync(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    switch(&state, &req, false).await
}

async fn switch(
    state: &AppState,
    req: &HttpRequest,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    require_admin(state, req)?;
    let since = jobs::set_sync_paused(state.db.get_postgres_connection_pool(), paused)
        .await
        .map_err(store_error)?;
    // This instance at once; the others at their next look (`pause::WATCH_EVERY`).
    state.engine.set_paused(paused);
    let sync = if paused { "paused" } else { "running" };
    tracing::warn!(sync, "operator switched outbound calls");
    Ok(HttpResponse::Ok().json(SyncSwitchOut { sync, since }))
}
