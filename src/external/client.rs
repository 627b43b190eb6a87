//! Calls to the external API with awc. One call is one HTTP request; retries and the rate limit
//! are the caller's (`crate::engine::actors::calls`), so that every attempt takes its own token.
//!
//! awc's `Client` is not `Send`: one is built per arbiter and shared (it is an `Rc` inside).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::web::Bytes;
use awc::error::PayloadError;
use awc::http::StatusCode;
use awc::ClientResponse;
use futures_util::{Stream, StreamExt};

use super::payload::ExternalOrder;
use super::untrusted::{clean_error_text, parse_retry_after, MAX_ERROR_CHARS};
use crate::config::Secret;
use crate::domain::OrderId;

/// One call to the external API: the one that brings it to an order's current state, or an
/// audit's read of its copy (`version`: ours when it was read, for the attempt log).
#[derive(Debug, Clone)]
pub enum ExternalCall {
    Create(ExternalOrder),
    Update(ExternalOrder),
    Delete { id: OrderId, version: i64 },
    Get { id: OrderId, version: i64 },
}

impl ExternalCall {
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Create(_) => "POST",
            Self::Update(_) => "PUT",
            Self::Delete { .. } => "DELETE",
            Self::Get { .. } => "GET",
        }
    }

    pub fn id_and_version(&self) -> (OrderId, i64) {
        match self {
            Self::Create(order) | Self::Update(order) => (order.id, order.version),
            Self::Delete { id, version } | Self::Get { id, version } => (*id, *version),
        }
    }

    /// `{id}:{version}`: the same change always carries the same key, so the external side can
    /// recognise a repeat (after a crash or a retry) as a repeat.
    pub fn idempotency_key(&self) -> String {
        let (id, version) = self.id_and_version();
        format!("{id}:{version}")
    }
}

/// The most characters of an answer's body an attempt keeps (`crate::db::attempts`).
pub const EXCERPT_CHARS: usize = 300;

/// A successful call's answer, as the attempt log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The start of the body, cleaned ([`clean_error_text`], at most [`EXCERPT_CHARS`]).
    pub excerpt: String,
    /// A `GET`'s answer: the external copy when the body is a JSON object (`None` for 404, or
    /// for a body that is not one, which an audit counts as an error, not as drift).
    pub copy: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The text is awc's error, cleaned ([`clean_error_text`]): it may quote what the peer sent.
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    /// The service is shutting down: the attempt was not made.
    #[error("not attempted: shutting down")]
    Abandoned,
    /// `body` is the start of the answer's body, cleaned ([`clean_error_text`]).
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        /// From the answer's `Retry-After` (either form), capped at `RETRY_AFTER_MAX_SECS`.
        retry_after: Option<Duration>,
    },
}

impl CallError {
    /// Connect errors, timeouts, 5xx, 408 and 429 may pass; other 4xx will not, however often
    /// they are retried.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout => true,
            Self::Abandoned => false,
            Self::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
        }
    }
}

/// Bytes of an error answer's body read at most: enough for the [`MAX_ERROR_CHARS`] kept (4 bytes
/// a character at worst), and no more, whatever the answer claims its length is.
const MAX_ERROR_BODY_BYTES: usize = 4 * MAX_ERROR_CHARS;

/// Bytes of a successful answer's body read at most. Reading it to the end lets the connection be
/// reused; a longer body is left unread and its connection closed.
const MAX_SUCCESS_BODY_BYTES: usize = 64 * 1024;

/// A client for one external API base URL.
#[derive(Clone)]
pub struct ExternalClient {
    http: awc::Client,
    base: String,
    token: Secret,
    /// Bounds the whole call: connecting, sending, the answer's headers and its body.
    timeout: Duration,
    /// Longest pause a `Retry-After` may ask for (`RETRY_AFTER_MAX_SECS`).
    retry_after_max: Duration,
}

impl ExternalClient {
    /// `timeout` bounds each call as a whole (`EXTERNAL_TIMEOUT_MS`); `retry_after_max` caps the
    /// pause an answer's `Retry-After` can ask for; `tls` is the configuration `https` URLs use
    /// ([`super::tls::client_config`], built once at start-up).
    pub fn new(
        base_url: &str,
        token: Secret,
        timeout: Duration,
        retry_after_max: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> Self {
        // awc's own timeouts (connect, the TLS handshake, and request up to the answer's headers)
        // are set to the same value, because their defaults (5 s) would otherwise cut a longer
        // EXTERNAL_TIMEOUT_MS short. The bound that holds is the one around the whole of `send`:
        // awc's stops at the headers, and a body that never ends would hold the call, its actor
        // and its slot forever.
        let connector = awc::Connector::new()
            .rustls_0_23(tls)
            .timeout(timeout)
            .handshake_timeout(timeout)
            .limit(0);
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(timeout)
            .disable_redirects()
            .finish();
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token,
            timeout,
            retry_after_max,
        }
    }

    /// Makes one call, within `EXTERNAL_TIMEOUT_MS` from the first byte sent to the last byte
    /// read. A `DELETE` answered 404 is a success: the order is already gone; so is a `GET`
    /// answered 404: the order is absent there.
    pub async fn send(&self, call: &ExternalCall) -> Result<Answer, CallError> {
        // Dropping the call on timeout drops its connection too, so nothing of it lingers.
        tokio::time::timeout(self.timeout, self.exchange(call))
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    /// The request and the reading of its answer, unbounded in time: [`Self::send`] bounds it.
    async fn exchange(&self, call: &ExternalCall) -> Result<Answer, CallError> {
        let request = match call {
            ExternalCall::Create(_) => self.http.post(format!("{}/v1/orders", self.base)),
            ExternalCall::Update(order) => self
                .http
                .put(format!("{}/v1/orders/{}", self.base, order.id)),
            ExternalCall::Delete { id, .. } => {
                self.http.delete(format!("{}/v1/orders/{id}", self.base))
            }
            ExternalCall::Get { id, .. } => self.http.get(format!("{}/v1/orders/{id}", self.base)),
        }
        .insert_header(("Authorization", format!("Bearer {}", self.token.expose())))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Accept", "*/*"))
        .insert_header(("Idempotency-Key", call.idempotency_key()))
        // An answer's body is read as sent, never inflated: a small compressed body could
        // otherwise grow without bound before `read_at_most` sees a byte of it. awc is built
        // without its decompressors too; this holds even if a dependency turns them back on.
        // With decompression off awc sends no Accept-Encoding, which would allow any coding.
        .insert_header(("Accept-Encoding", "identity"))
        .no_decompress();
        let sent = match call {
            ExternalCall::Create(order) | ExternalCall::Update(order) => {
                request.send_json(order).await
            }
            ExternalCall::Delete { .. } | ExternalCall::Get { .. } => request.send().await,
        };
        let mut response = sent.map_err(|e| match e {
            awc::error::SendRequestError::Timeout => CallError::Timeout,
            awc::error::SendRequestError::Connect(awc::error::ConnectError::Timeout) => {
                CallError::Timeout
            }
            other => CallError::Connect(clean_error_text(&other.to_string(), MAX_ERROR_CHARS)),
        })?;
        let status = response.status();
        let absent_is_fine = matches!(call, ExternalCall::Delete { .. } | ExternalCall::Get { .. });
        if status.is_success() || (absent_is_fine && status == StatusCode::NOT_FOUND) {
            // What a success says is not acted on (but for a GET's copy, which an audit compares):
            // its start is kept for the attempt log, and it is read to the end (within a bound)
            // so the connection can be reused.
            let body = read_at_most(&mut response, MAX_SUCCESS_BODY_BYTES)
                .await
                .unwrap_or_default();
            let start = &body[..body.len().min(4 * EXCERPT_CHARS)];
            let copy = match call {
                ExternalCall::Get { .. } if status.is_success() => {
                    serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|value| match value {
                            serde_json::Value::Object(fields) => Some(fields),
                            _ => None,
                        })
                }
                _ => None,
            };
            return Ok(Answer {
                status: status.as_u16(),
                excerpt: clean_error_text(&String::from_utf8_lossy(start), EXCERPT_CHARS),
                copy,
            });
        }
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now(), self.retry_after_max));
        let body = match read_at_most(&mut response, MAX_ERROR_BODY_BYTES).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(body unreadable: {e})"),
        };
        Err(CallError::Status {
            status: status.as_u16(),
            body: clean_error_text(&body, MAX_ERROR_CHARS),
            retry_after,
        })
    }
}

/// The first `limit` bytes of the answer's body, or all of it if shorter. Unlike awc's
/// `body().limit(..)`, a longer body is not an error: its start is what an error message needs.
/// A multi-byte character cut at the limit reads as U+FFFD, which is harmless in an error text.
async fn read_at_most<S>(
    response: &mut ClientResponse<S>,
    limit: usize,
) -> Result<Vec<u8>, PayloadError>
where
    S: Stream<Item = Result<Bytes, PayloadError>> + Unpin,
{
    let mut body = Vec::new();
    while body.len() < limit {
        let Some(chunk) = response.next().await else {
            break;
        };
        let chunk = chunk?;
        let room = limit - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A one-connection HTTP server that reads a request's head, writes `answer` and then holds
    /// the connection open until the client lets go, as a stalled or hostile server would.
    /// Returns its URL and the head it will have read.
    async fn answer_once_and_hold(
        answer: Vec<u8>,
    ) -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (head_read, head) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match socket.read(&mut byte).await {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let _ = head_read.send(String::from_utf8_lossy(&head).into_owned());
            // The client may stop reading before all of it is written.
            let _ = socket.write_all(&answer).await;
            let mut rest = [0u8; 1024];
            while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
        });
        (url, head)
    }

    fn client(url: &str, timeout: Duration) -> ExternalClient {
        let tls = crate::external::tls::client_config().expect("a TLS configuration");
        ExternalClient::new(
            url,
            Secret::new("t"),
            timeout,
            Duration::from_secs(300),
            tls,
        )
    }

    const DELETE: ExternalCall = ExternalCall::Delete {
        id: OrderId::new(1),
        version: 2,
    };

    #[actix_rt::test]
    async fn a_body_that_never_ends_times_out_the_whole_call() {
        let (url, _) = answer_once_and_hold(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"mess".to_vec(),
        )
        .await;
        let started = std::time::Instant::now();
        let result = client(&url, Duration::from_millis(200)).send(&DELETE).await;
        assert!(matches!(result, Err(CallError::Timeout)), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[actix_rt::test]
    async fn an_error_answer_is_read_to_a_bound_cleaned_and_its_retry_after_capped() {
        let mut answer = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 18446744073709551615\r\n\
            Content-Length: 10485760\r\n\r\n"
            .to_vec();
        answer.extend(b"\0\x1b[31m\r\n".repeat(100_000));
        let (url, _) = answer_once_and_hold(answer).await;
        let result = client(&url, Duration::from_secs(5)).send(&DELETE).await;
        let Err(CallError::Status {
            status,
            body,
            retry_after,
        }) = result
        else {
            panic!("a status error, not {result:?}");
        };
        assert_eq!(status, 429);
        assert_eq!(retry_after, Some(Duration::from_secs(300)));
        assert_eq!(body.chars().count(), MAX_ERROR_CHARS);
        assert!(!body.chars().any(char::is_control), "{body:?}");
    }

    #[actix_rt::test]
    async fn a_compressed_answer_is_neither_asked_for_nor_inflated() {
        use std::io::Write;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(&b"A".repeat(1 << 20)).expect("gzip");
        let gzip = gzip.finish().expect("gzip");
        let mut answer = format!(
            "HTTP/1.1 422 Unprocessable Entity\r\nContent-Encoding: gzip\r\n\
             Content-Length: {}\r\n\r\n",
            gzip.len()
        )
        .into_bytes();
        answer.extend(&gzip);
        let (url, head) = answer_once_and_hold(answer).await;
        let result = client(&url, Duration::from_secs(5)).send(&DELETE).await;
        let head = head.await.expect("the request's head").to_lowercase();
        assert!(head.contains("accept-encoding: identity\r\n"), "{head}");
        let Err(CallError::Status { status, body, .. }) = result else {
            panic!("a status error, not {result:?}");
        };
        assert_eq!(status, 422);
        assert!(!body.contains("AAAAAAAA"), "the body was inflated: {body}");
    }
}
