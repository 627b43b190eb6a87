//! Logging with `tracing`: human-readable on a terminal, JSON when `LOG_FORMAT=json`, level from
//! `RUST_LOG` (default `info`). Every HTTP request is one line (with a request id, also sent back
//! as `X-Request-Id`), every external call attempt is one line (`crate::engine::actors::calls`),
//! and while there is work a one-line summary comes every few seconds
//! (`crate::engine::view::progress`).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; call once, from `main`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Middleware: gives each request an id (its span carries it into every line the request
/// logs): the caller's own `X-Request-Id` when it is sane (see [`incoming_request_id`]), so one
/// id follows a request through a proxy and into our logs, else a fresh one. Answers it in
/// `X-Request-Id`, and logs one line when the request is done, with the route's template
/// (`/orders/{id}`) beside the path. Headers are never logged, so neither is a bearer token.
///
/// Hand-written rather than `tracing-actix-web`'s `TracingLogger`: that crate opens the span
/// and makes the id, but logs no line of its own when a request ends (its `on_request_end` has
/// no start time for the duration) and does not send the id back in a header; both are what
/// operators read, and this does all three in one place.
pub async fn log_request(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = incoming_request_id(req.headers())
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = req.method().to_string();
    let path = req.path().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %request_id);
    let mut response = next.call(req).instrument(span).await?;
    let status = response.status().as_u16();
    let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(request_id = %request_id, method, path, route, status, duration_ms = format!("{duration_ms:.1}"), "request");
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(X_REQUEST_ID, value);
    }
    Ok(response)
}

/// The request id header, in and out.
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest incoming request id kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// The caller's `X-Request-Id`, if it is one header of 1 to [`MAX_REQUEST_ID_LEN`] characters
/// of `[A-Za-z0-9._:-]`. Anything else is replaced, never logged: the header is the caller's
/// input, and a newline, an escape sequence or a megabyte of it would forge or flood log lines.
fn incoming_request_id(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(X_REQUEST_ID);
    let value = values.next()?.as_bytes();
    let sane = values.next().is_none()
        && (1..=MAX_REQUEST_ID_LEN).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(b));
    sane.then(|| value.iter().map(|&b| char::from(b)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ids(ids: &[&[u8]]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for id in ids {
            if let Ok(value) = HeaderValue::from_bytes(id) {
                headers.append(X_REQUEST_ID, value);
            }
        }
        headers
    }

    #[test]
    fn a_sane_incoming_request_id_is_kept() {
        let longest = "a".repeat(MAX_REQUEST_ID_LEN);
        for id in ["abc-123", "trace:4bf92f35.00f0_67AA", "7", longest.as_str()] {
            assert_eq!(
                incoming_request_id(&with_ids(&[id.as_bytes()])).as_deref(),
                Some(id)
            );
        }
    }

    #[test]
    fn a_hostile_or_broken_incoming_request_id_is_not() {
        let too_long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        for id in [
            too_long.as_bytes(),
            b"",
            b"a\tb",
            b"a b",
            b"a\x7fb",
            b"\xc3\xa9t\xc3\xa9",
            b"<script>",
            b"a/b",
        ] {
            assert_eq!(incoming_request_id(&with_ids(&[id])), None, "{id:?}");
        }
        assert_eq!(incoming_request_id(&with_ids(&[b"one", b"two"])), None);
        assert_eq!(incoming_request_id(&HeaderMap::new()), None);
    }
}
