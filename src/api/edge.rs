//! What every request passes through before a handler sees it, and what every answer carries:
//! the limits that keep one client from holding the service's memory or connections, and the
//! headers that tell a browser how little our pages may do. `crate::startup` wraps the whole app
//! in these; the content-type rules live with the routes (`super::configure`).
//!
//! - Compressed request bodies are refused ([`refuse_compressed_bodies`]).
//! - A request's body must arrive within [`BODY_READ_TIMEOUT`] ([`limit_body_read_time`]); its
//!   head within [`CLIENT_REQUEST_TIMEOUT`] (set on the server in `crate::startup`).
//! - Every answer carries [`CONTENT_SECURITY_POLICY`] and its companions ([`security_headers`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::error::PayloadError;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::ConnectionType;
use actix_web::middleware::{DefaultHeaders, Next};
use actix_web::web::Bytes;
use actix_web::{mime, HttpMessage, ResponseError};
use futures_util::{Stream, StreamExt};

use super::ApiError;

/// How long a client has to send a request's head (line and headers) once connected. actix-web's
/// default, made explicit: a client that trickles its headers is cut off with a 408.
pub const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a client has to send a request's whole body once its head is in. A body is at most
/// `MAX_BODY_BYTES` (64 KiB by default), which any working link sends in well under a second;
/// without this bound a client sending a byte a second would hold its connection, and a
/// handler, for as long as it liked, and a few thousand such clients would hold them all.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The pages the service serves (the dashboard at `/`, Swagger UI at `/docs`) load their
/// scripts, styles and data from this origin only, run no inline script or style, and may not be
/// framed: an injected `<script>` or `style` attribute does nothing, and no other site can overlay
/// the dashboard's buttons. `data:` images are Swagger UI's icons, built into its stylesheet.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The headers every answer carries: the content security policy above; `nosniff`, so a browser
/// never runs an answer as a type other than the one declared; and `no-referrer`, so following
/// a link from the dashboard tells the other site nothing about it.
pub fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .add((header::REFERRER_POLICY, "no-referrer"))
}

/// Most bytes of a refused compressed body read (and dropped) before answering.
const MAX_DRAINED_BYTES: usize = 1024 * 1024;

/// Answers 415 to any request whose body is compressed (a `Content-Encoding` other than
/// `identity`), without inflating a byte of it.
///
/// Refusing is simpler and safer than inflating under a limit: no client of this API needs to
/// compress a 1 KB order, and an inflater is where a 56 KiB gzip body becomes 60 MB, or a
/// 59 KiB zstd body 1.9 GiB, before any size check sees it. (The service is also built without
/// actix-web's decompressors; this answer is what a client sees either way.)
pub async fn refuse_compressed_bodies(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let compressed = req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .any(|value| !is_identity(value));
    if compressed {
        // The client is likely still sending the body: read it (still compressed, a chunk at a
        // time, nothing inflated or kept) so that it gets this answer instead of a reset
        // connection. Bounded in size and time; past either, the connection is closed.
        let mut body = req.take_payload();
        let drained = tokio::time::timeout(BODY_READ_TIMEOUT, async {
            let mut read = 0usize;
            while let Some(Ok(chunk)) = body.next().await {
                read += chunk.len();
                if read > MAX_DRAINED_BYTES {
                    return false;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
        let refusal = ApiError::UnsupportedMediaType(
            "compressed request bodies are not accepted: send the body without Content-Encoding"
                .into(),
        );
        let mut response = req.error_response(refusal);
        if !drained {
            response
                .response_mut()
                .head_mut()
                .set_connection_type(ConnectionType::Close);
        }
        return Ok(response.map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// True for `identity` (any case), or a list of nothing else.
fn is_identity(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|codings| {
        codings
            .split(',')
            .map(str::trim)
            .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"))
    })
}

/// Gives the request's body [`BODY_READ_TIMEOUT`] to arrive, counted from when its head was in.
/// Past that, reading the body fails, the answer is 408 in the one error shape whatever the
/// handler made of the failure, and the connection is closed.
pub async fn limit_body_read_time(
    mut req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let expired = Rc::new(Cell::new(false));
    let body = BodyDeadline {
        body: req.take_payload(),
        deadline: Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT)),
        expired: expired.clone(),
    };
    req.set_payload(Payload::Stream {
        payload: Box::pin(body),
    });
    let response = next.call(req).await?;
    if !expired.get() {
        return Ok(response.map_into_left_body());
    }
    let (req, _) = response.into_parts();
    let mut timeout = ApiError::RequestTimeout.error_response();
    timeout
        .head_mut()
        .set_connection_type(ConnectionType::Close);
    Ok(ServiceResponse::new(req, timeout).map_into_right_body())
}

/// A request body that fails once its deadline has passed, and records that it did.
struct BodyDeadline {
    body: Payload,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Rc<Cell<bool>>,
}

impl Stream for BodyDeadline {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.expired.get() {
            return Poll::Ready(None);
        }
        // The deadline first: a client trickling bytes always has one ready.
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.set(true);
            return Poll::Ready(Some(Err(PayloadError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the request body was not received in time",
            )))));
        }
        Pin::new(&mut this.body).poll_next(cx)
    }
}

/// Answers 415 unless the body is JSON or a form (`PUT|PATCH /inbound/{id}` takes either; the
/// routes that take JSON only say so through `JsonConfig`).
pub async fn require_json_or_form(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let accepted = req.mime_type().ok().flatten().is_some_and(|mime| {
        is_json(&mime)
            || (mime.type_() == mime::APPLICATION && mime.subtype() == mime::WWW_FORM_URLENCODED)
    });
    if !accepted {
        let refusal = ApiError::UnsupportedMediaType(
            "the body must be JSON (Content-Type: application/json) or a form \
             (application/x-www-form-urlencoded)"
                .into(),
        );
        return Ok(req.error_response(refusal).map_into_right_body());
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// `application/json`, as actix-web's JSON extractor recognises it (`*/json`, `*/*+json`).
pub(super) fn is_json(mime: &mime::Mime) -> bool {
    mime.subtype() == mime::JSON || mime.suffix() == Some(mime::JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_alone_is_not_a_compression() {
        for value in [
            "identity",
            "IDENTITY",
            " identity ",
            "identity, identity",
            "",
        ] {
            assert!(is_identity(&HeaderValue::from_static(value)), "{value:?}");
        }
        for value in [
            "gzip",
            "br",
            "zstd",
            "deflate",
            "identity, gzip",
            "x-unknown",
        ] {
            assert!(!is_identity(&HeaderValue::from_static(value)), "{value:?}");
        }
    }
}
