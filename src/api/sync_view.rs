//! The operator's view of one order's sync: `GET /orders/{id}/attempts` (every call attempt
//! kept, newest first) and `GET /orders/{id}/sync` (one line saying where the order stands and
//! why, with the facts it is made from). Both answer for a deleted order whose row is gone
//! while its attempts are kept.

use crate::domain::OrderId;
use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::admin::store_error;
use super::{ApiError, AppState};
use crate::db::attempts::{self, Attempt, SyncColumns};
use crate::domain::{FieldErrors, SyncState};
use crate::engine::CallInFlight;

const DEFAULT_PER_PAGE: i64 = 20;
const MAX_PER_PAGE: i64 = 100;

/// The query string of `GET /orders/{id}/attempts`, as sent.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AttemptsQuery {
    /// The `next_cursor` of the previous page.
    #[param(value_type = Option<i64>, minimum = 1)]
    cursor: Option<String>,
    /// Attempts per page, 1 to 100 (default 20).
    #[param(value_type = Option<u64>, minimum = 1, maximum = 100)]
    per_page: Option<String>,
}

/// One page of an order's attempts, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptPageOut {
    pub attempts: Vec<Attempt>,
    /// Pass as `?cursor=` for older attempts; null on the last page.
    pub next_cursor: Option<i64>,
}

impl AttemptsQuery {
    fn parse(self) -> Result<(Option<i64>, i64), FieldErrors> {
        let mut errors = FieldErrors::new();
        let mut number = |name: &str, raw: Option<String>, max: i64| -> Option<i64> {
            match raw?.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => Some(n),
                _ => {
                    errors.insert(name.into(), format!("must be an integer from 1 to {max}"));
                    None
                }
            }
        };
        let cursor = number("cursor", self.cursor, i64::MAX);
        let per_page = number("per_page", self.per_page, MAX_PER_PAGE).unwrap_or(DEFAULT_PER_PAGE);
        if errors.is_empty() {
            Ok((cursor, per_page))
        } else {
            Err(errors)
        }
    }
}

#[utoipa::path(get, path = "/orders/{id}/attempts", tag = "orders",
    params(("id" = i64, Path, description = "The order's id"), AttemptsQuery),
    responses((status = 200, body = AttemptPageOut), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody), (status = 422, body = crate::api::ErrorBody)))]
pub async fn list_attempts(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
    query: web::Query<AttemptsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let (cursor, per_page) = query.into_inner().parse().map_err(ApiError::Validation)?;
    let pool = state.db.get_postgres_connection_pool();
    let mut page = attempts::list_for_order(pool, id, cursor, per_page + 1)
        .await
        .map_err(store_error)?;
    if page.is_empty()
        && cursor.is_none()
        && attempts::sync_columns(pool, id)
            .await
            .map_err(store_error)?
            .is_none()
    {
        return Err(ApiError::NotFound(format!("order {id} not found")));
    }
    let more = page.len() as i64 > per_page;
    page.truncate(per_page as usize);
    let next_cursor = more.then(|| page.last().map(|a| a.id)).flatten();
    Ok(HttpResponse::Ok().json(AttemptPageOut {
        attempts: page,
        next_cursor,
    }))
}

/// Where an order's sync stands, in one line, and what that line is made from.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncExplanationOut {
    #[schema(value_type = i64)]
    pub order_id: OrderId,
    /// `synced`, `pending`, `retrying`, `dead`, or `deleted` (the row is gone: its delete was
    /// synced).
    pub state: String,
    /// For example "parked until 12:05:00 UTC (delayed retry 3 of 25) after 503".
    pub explanation: String,
    pub facts: SyncFactsOut,
}

/// The facts an explanation is made from.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncFactsOut {
    /// The order's version (null once its row is gone).
    pub version: Option<i64>,
    /// The version the external API holds.
    pub synced_version: Option<i64>,
    /// Failed attempts since the last success (the delayed retry count).
    pub failed_attempts: Option<i32>,
    /// Delayed retries before an order is dead (`DELAYED_RETRY_LIMIT`).
    pub delayed_retry_limit: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub synced_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub deleted: bool,
    /// The call this instance is making for the order right now. Another instance's call shows
    /// here only on that instance.
    pub call_in_flight: Option<CallInFlightOut>,
    pub last_attempt: Option<Attempt>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallInFlightOut {
    pub version: i64,
    pub verb: String,
    pub since: DateTime<Utc>,
    /// 1 for the first attempt, 2 for the first quick retry, and so on.
    pub attempt: u32,
}

impl From<CallInFlight> for CallInFlightOut {
    fn from(call: CallInFlight) -> Self {
        Self {
            version: call.version,
            verb: call.verb.to_string(),
            since: call.since,
            attempt: call.attempt,
        }
    }
}

#[utoipa::path(get, path = "/orders/{id}/sync", tag = "orders",
    params(("id" = i64, Path, description = "The order's id")),
    responses((status = 200, body = SyncExplanationOut), (status = 400, body = crate::api::ErrorBody), (status = 404, body = crate::api::ErrorBody)))]
pub async fn explain_sync(
    state: web::Data<AppState>,
    id: web::Path<OrderId>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    let pool = state.db.get_postgres_connection_pool();
    let columns = attempts::sync_columns(pool, id)
        .await
        .map_err(store_error)?;
    let last_attempt = attempts::list_for_order(pool, id, None, 1)
        .await
        .map_err(store_error)?
        .pop();
    if columns.is_none() && last_attempt.is_none() {
        return Err(ApiError::NotFound(format!("order {id} not found")));
    }
    let in_flight = state.engine.call_in_flight(id).map(CallInFlightOut::from);
    let limit = state.engine.delayed_retry_limit();
    let (status, mut explanation) = explain(
        columns.as_ref(),
        last_attempt.as_ref(),
        in_flight.as_ref(),
        limit,
        Utc::now(),
    );
    let destination = state.engine.destination();
    if destination.state != crate::engine::Health::Healthy && in_flight.is_none() {
        let since = DateTime::from_timestamp_millis(destination.since_ms);
        if let Some(line) = columns
            .as_ref()
            .and_then(|c| waiting_for_the_api(c, since, Utc::now()))
        {
            explanation = line;
        }
    }
    let facts = SyncFactsOut {
        version: columns.as_ref().map(|c| c.version),
        synced_version: columns.as_ref().map(|c| c.synced_version),
        failed_attempts: columns.as_ref().map(|c| c.sync_attempts),
        delayed_retry_limit: limit,
        next_attempt_at: columns.as_ref().and_then(|c| c.sync_next_attempt_at),
        synced_at: columns.as_ref().and_then(|c| c.synced_at),
        updated_at: columns.as_ref().map(|c| c.updated_at),
        last_error: columns.as_ref().and_then(|c| c.sync_last_error.clone()),
        deleted: columns.as_ref().is_none_or(|c| c.deleted),
        call_in_flight: in_flight,
        last_attempt,
    };
    Ok(HttpResponse::Ok().json(SyncExplanationOut {
        order_id: id,
        state: status.to_string(),
        explanation,
        facts,
    }))
}

/// The state word and the one-line explanation, from the facts alone.
fn explain(
    columns: Option<&SyncColumns>,
    last: Option<&Attempt>,
    in_flight: Option<&CallInFlightOut>,
    delayed_retry_limit: u32,
    now: DateTime<Utc>,
) -> (&'static str, String) {
    let Some(c) = columns else {
        // The row is gone: its delete was synced (or was never owed).
        let line = match last {
            Some(a) if a.verb == "DELETE" && a.outcome == "ok" => format!(
                "deleted: the delete of version {} was synced at {}",
                a.version,
                clock(a.attempted_at, now)
            ),
            _ => "deleted: the order is gone, and no delete was owed to the external API".into(),
        };
        return ("deleted", line);
    };
    let state = c.sync_state.as_str();
    if let Some(call) = in_flight {
        let retry = match call.attempt {
            1 => String::new(),
            n => format!(", quick retry {} of the call", n - 1),
        };
        return (
            state,
            format!(
                "waiting: a call for version {} ({}{retry}) is in flight since {}",
                call.version,
                call.verb,
                clock(call.since, now)
            ),
        );
    }
    let line = match c.sync_state {
        SyncState::Synced if c.synced_version >= c.version => format!(
            "synced at version {}{}",
            c.synced_version,
            c.synced_at
                .map(|at| format!(" ({})", clock(at, now)))
                .unwrap_or_default()
        ),
        SyncState::Synced => format!(
            "not owed: an operator discarded version {}; the external API holds {}",
            c.version,
            match c.synced_version {
                0 => "no copy of it".to_string(),
                v => format!("version {v}"),
            }
        ),
        SyncState::Retrying => format!(
            "parked until {} (delayed retry {} of {}) after {}",
            c.sync_next_attempt_at
                .map(|at| clock(at, now))
                .unwrap_or_else(|| "its retry is due".into()),
            c.sync_attempts,
            delayed_retry_limit,
            failure(last, c)
        ),
        SyncState::Dead => format!("dead: {}", failure(last, c)),
        SyncState::Pending if c.version <= c.synced_version => {
            format!("synced at version {}", c.synced_version)
        }
        // Between quick retries of a call: its last attempt failed, the next is coming.
        SyncState::Pending if last.is_some_and(|a| a.version == c.version && a.outcome != "ok") => {
            format!(
                "waiting: retrying version {} after {} (last attempt at {})",
                c.version,
                failure(last, c),
                last.map(|a| clock(a.attempted_at, now)).unwrap_or_default()
            )
        }
        SyncState::Pending if c.deleted => format!(
            "waiting: the delete (version {}) is queued since {}",
            c.version,
            clock(c.updated_at, now)
        ),
        SyncState::Pending => format!(
            "waiting: version {} is queued since {} (the external API holds {})",
            c.version,
            clock(c.updated_at, now),
            match c.synced_version {
                0 => "no copy yet".to_string(),
                v => format!("version {v}"),
            }
        ),
    };
    (state, line)
}

/// An order behind while the external API is down waits for it, whatever its own state says.
fn waiting_for_the_api(
    c: &SyncColumns,
    down_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<String> {
    let behind = c.version > c.synced_version
        && matches!(c.sync_state, SyncState::Pending | SyncState::Retrying);
    behind.then(|| {
        format!(
            "waiting: the external API is down (since {}); version {} goes out when it is back",
            down_since.map_or_else(|| "just now".to_string(), |at| clock(at, now)),
            c.version
        )
    })
}

/// What the last failure was, briefly: "422 address rejected", "a timeout".
fn failure(last: Option<&Attempt>, c: &SyncColumns) -> String {
    match last.filter(|a| a.outcome != "ok") {
        Some(a) => match (a.outcome.as_str(), a.http_status) {
            (_, Some(status)) => {
                let said = said(&a.excerpt);
                if said.is_empty() {
                    status.to_string()
                } else {
                    format!("{status} {said}")
                }
            }
            ("timeout", _) => "a timeout".into(),
            _ => format!("a connection error ({})", short(&a.excerpt)),
        },
        None => c
            .sync_last_error
            .as_deref()
            .map(short)
            .unwrap_or_else(|| "an unrecorded error".into()),
    }
}

/// What an error answer says: its JSON `message`, `error` or `errors` when it has one, else the
/// start of the body.
fn said(excerpt: &str) -> String {
    let text = serde_json::from_str::<serde_json::Value>(excerpt)
        .ok()
        .and_then(|body| {
            let pick = |v: &serde_json::Value| match v {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(items) => Some(
                    items
                        .iter()
                        .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                serde_json::Value::Object(o) => o
                    .get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string),
                _ => None,
            };
            ["message", "error", "errors"]
                .iter()
                .find_map(|key| body.get(key).and_then(pick))
        })
        .unwrap_or_else(|| excerpt.to_string());
    short(&text)
}

/// At most 120 characters of `text` (already clean: it came from the attempt log).
fn short(text: &str) -> String {
    crate::external::clean_error_text(text.trim(), 120)
}

/// A time as the line shows it: the clock alone on the same day, the date too otherwise.
fn clock(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    if at.date_naive() == now.date_naive() {
        at.format("%H:%M:%S UTC").to_string()
    } else {
        at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, 12, 0, 30).unwrap()
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 28, h, m, s).unwrap()
    }

    fn columns(state: SyncState, version: i64, synced_version: i64, attempts: i32) -> SyncColumns {
        SyncColumns {
            version,
            synced_version,
            sync_state: state,
            sync_attempts: attempts,
            sync_last_error: None,
            synced_at: Some(at(11, 59, 0)),
            sync_next_attempt_at: None,
            updated_at: at(12, 0, 1),
            deleted: false,
        }
    }

    fn attempt(verb: &str, outcome: &str, status: Option<i16>, excerpt: &str) -> Attempt {
        Attempt {
            id: 1,
            order_id: OrderId::new(42),
            version: 7,
            verb: verb.into(),
            outcome: outcome.into(),
            http_status: status,
            excerpt: excerpt.into(),
            duration_ms: 3,
            instance: "i".into(),
            attempted_at: at(12, 0, 2),
        }
    }

    #[test]
    fn an_order_behind_while_the_api_is_down_waits_for_it() {
        let behind = columns(SyncState::Retrying, 7, 5, 1);
        assert_eq!(
            waiting_for_the_api(&behind, Some(at(11, 58, 0)), now()).as_deref(),
            Some("waiting: the external API is down (since 11:58:00 UTC); version 7 goes out when it is back")
        );
        let synced = columns(SyncState::Synced, 7, 7, 0);
        assert_eq!(
            waiting_for_the_api(&synced, Some(at(11, 58, 0)), now()),
            None
        );
        let dead = columns(SyncState::Dead, 7, 5, 25);
        assert_eq!(waiting_for_the_api(&dead, None, now()), None);
    }

    #[test]
    fn each_state_reads_as_one_line() {
        let synced = columns(SyncState::Synced, 9, 9, 0);
        assert_eq!(
            explain(Some(&synced), None, None, 25, now()).1,
            "synced at version 9 (11:59:00 UTC)"
        );

        let waiting = columns(SyncState::Pending, 7, 5, 0);
        let call = CallInFlightOut {
            version: 7,
            verb: "PUT".into(),
            since: at(12, 0, 1),
            attempt: 1,
        };
        assert_eq!(
            explain(Some(&waiting), None, Some(&call), 25, now()).1,
            "waiting: a call for version 7 (PUT) is in flight since 12:00:01 UTC"
        );
        assert_eq!(
            explain(Some(&waiting), None, None, 25, now()).1,
            "waiting: version 7 is queued since 12:00:01 UTC (the external API holds version 5)"
        );

        let refused = attempt("PUT", "status", Some(503), "");
        assert_eq!(
            explain(Some(&waiting), Some(&refused), None, 25, now()).1,
            "waiting: retrying version 7 after 503 (last attempt at 12:00:02 UTC)"
        );

        let mut parked = columns(SyncState::Retrying, 7, 5, 3);
        parked.sync_next_attempt_at = Some(at(12, 5, 0));
        let unavailable = attempt("PUT", "status", Some(503), "Service Unavailable");
        assert_eq!(
            explain(Some(&parked), Some(&unavailable), None, 25, now()).1,
            "parked until 12:05:00 UTC (delayed retry 3 of 25) after 503 Service Unavailable"
        );

        let dead = columns(SyncState::Dead, 7, 5, 1);
        let rejected = attempt(
            "PUT",
            "status",
            Some(422),
            r#"{"message":"address rejected"}"#,
        );
        assert_eq!(
            explain(Some(&dead), Some(&rejected), None, 25, now()),
            ("dead", "dead: 422 address rejected".into())
        );
        let timed_out = attempt("PUT", "timeout", None, "");
        assert_eq!(
            explain(Some(&dead), Some(&timed_out), None, 25, now()).1,
            "dead: a timeout"
        );

        let gone = attempt("DELETE", "ok", Some(204), "");
        assert_eq!(
            explain(None, Some(&gone), None, 25, now()),
            (
                "deleted",
                "deleted: the delete of version 7 was synced at 12:00:02 UTC".into()
            )
        );
    }

    #[test]
    fn an_error_body_reads_as_what_it_says() {
        assert_eq!(
            said(r#"{"errors":["bad pincode","bad city"]}"#),
            "bad pincode, bad city"
        );
        assert_eq!(said(r#"{"error":{"message":"nope"}}"#), "nope");
        assert_eq!(said("<html>oops</html>"), "<html>oops</html>");
        assert_eq!(said(&"x".repeat(500)).chars().count(), 120);
    }
}
