//! Logging with `tracing`: human-readable on a terminal, JSON when `LOG_FORMAT=json`, level from
//! `RUST_LOG` (default `info`). Every HTTP request is one line (with a request id, also sent back
//! as `X-Request-Id`), every external call attempt is one line (`crate::engine::actors::calls`),
//! and while there is work a one-line summary comes every few seconds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;

use crate::engine::backlog::dispatcher::InFlight;
use crate::engine::backlog::keys::Keys;
use crate::engine::backlog::stats::shard_stats;
use crate::metrics::SyncMetrics;

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

/// How often the summary line comes while there is work.
const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Logs `synced/s, backlog, lag` every few seconds while events are coming or waiting.
pub async fn log_progress(
    metrics: Arc<SyncMetrics>,
    in_flight: InFlight,
    mut redis: ConnectionManager,
    keys: Keys,
    shutdown: CancellationToken,
) {
    let (mut last_synced, mut last_received) =
        (metrics.synced.get(), metrics.events_received.get());
    while !shutdown.is_cancelled() {
        tokio::select! {
            _ = tokio::time::sleep(SUMMARY_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
        let (synced, received) = (metrics.synced.get(), metrics.events_received.get());
        let backlog: u64 = shard_stats(&mut redis, &keys)
            .await
            .map(|shards| shards.iter().map(|s| s.length).sum())
            .unwrap_or(0);
        if received == last_received && backlog == 0 && in_flight.count() == 0 {
            continue; // idle: say nothing
        }
        let lag = metrics.lag_summary();
        tracing::info!(
            synced_per_sec = format!(
                "{:.1}",
                (synced - last_synced) as f64 / SUMMARY_EVERY.as_secs_f64()
            ),
            backlog,
            in_flight = in_flight.count(),
            lag_p50_ms = lag.p50,
            lag_p95_ms = lag.p95,
            "sync progress"
        );
        (last_synced, last_received) = (synced, received);
    }
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
