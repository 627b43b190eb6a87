//! Calls to the external API with awc. One call is one HTTP request; retries and the rate limit
//! are the caller's (`crate::actors::order_sync`), so that every attempt takes its own token.
//!
//! awc's `Client` is not `Send`: one is built per arbiter and shared (it is an `Rc` inside).

use std::time::Duration;

use awc::http::StatusCode;

use super::payload::ExternalOrder;
use crate::config::Secret;

/// The one call that brings the external API to an order's current state.
#[derive(Debug, Clone)]
pub enum ExternalCall {
    Create(ExternalOrder),
    Update(ExternalOrder),
    Delete { id: i64, version: i64 },
}

impl ExternalCall {
    pub fn verb(&self) -> &'static str {
        match self {
            Self::Create(_) => "POST",
            Self::Update(_) => "PUT",
            Self::Delete { .. } => "DELETE",
        }
    }

    pub fn id_and_version(&self) -> (i64, i64) {
        match self {
            Self::Create(order) | Self::Update(order) => (order.id, order.version),
            Self::Delete { id, version } => (*id, *version),
        }
    }

    /// `{id}:{version}`: the same change always carries the same key, so the external side can
    /// recognise a repeat (after a crash or a retry) as a repeat.
    pub fn idempotency_key(&self) -> String {
        let (id, version) = self.id_and_version();
        format!("{id}:{version}")
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    /// The service is shutting down: the attempt was not made.
    #[error("not attempted: shutting down")]
    Abandoned,
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        /// From a 429 or 503's `Retry-After` (seconds form).
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

/// The longest answer body kept in an error (and so in `sync.last_error`).
const MAX_ERROR_BODY: usize = 500;

/// A client for one external API base URL.
#[derive(Clone)]
pub struct ExternalClient {
    http: awc::Client,
    base: String,
    token: Secret,
}

impl ExternalClient {
    /// `timeout` bounds connecting and the whole request each (the reference used 5 s for both).
    pub fn new(base_url: &str, token: Secret, timeout: Duration) -> Self {
        let connector = awc::Connector::new().timeout(timeout).limit(0);
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(timeout)
            .disable_redirects()
            .finish();
        Self {
            http,
            base: base_url.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// Makes one call. A `DELETE` answered 404 is a success: the order is already gone.
    pub async fn send(&self, call: &ExternalCall) -> Result<(), CallError> {
        let request = match call {
            ExternalCall::Create(_) => self.http.post(format!("{}/v1/orders", self.base)),
            ExternalCall::Update(order) => self
                .http
                .put(format!("{}/v1/orders/{}", self.base, order.id)),
            ExternalCall::Delete { id, .. } => {
                self.http.delete(format!("{}/v1/orders/{id}", self.base))
            }
        }
        .insert_header(("Authorization", format!("Bearer {}", self.token.expose())))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("Accept", "*/*"))
        .insert_header(("Idempotency-Key", call.idempotency_key()));
        let sent = match call {
            ExternalCall::Create(order) | ExternalCall::Update(order) => {
                request.send_json(order).await
            }
            ExternalCall::Delete { .. } => request.send().await,
        };
        let mut response = sent.map_err(|e| match e {
            awc::error::SendRequestError::Timeout => CallError::Timeout,
            awc::error::SendRequestError::Connect(awc::error::ConnectError::Timeout) => {
                CallError::Timeout
            }
            other => CallError::Connect(other.to_string()),
        })?;
        let status = response.status();
        if status.is_success()
            || (matches!(call, ExternalCall::Delete { .. }) && status == StatusCode::NOT_FOUND)
        {
            // Drain the body so the connection can be reused.
            let _ = response.body().limit(64 * 1024).await;
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match response.body().limit(64 * 1024).await {
            Ok(bytes) => String::from_utf8_lossy(&bytes)
                .chars()
                .take(MAX_ERROR_BODY)
                .collect(),
            Err(e) => format!("(body unreadable: {e})"),
        };
        Err(CallError::Status {
            status: status.as_u16(),
            body,
            retry_after,
        })
    }
}
