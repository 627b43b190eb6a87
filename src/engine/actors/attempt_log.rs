//! What the operator's view needs from the event path: each call attempt as a row of the attempt
//! log (`crate::db::attempts`, written in batches by [`super::batched`]), and the calls this
//! instance has in flight right now (for `GET /orders/{id}/sync`), which no table holds: writing
//! a row as each call starts would cost every call a statement.

use crate::domain::OrderId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::db::attempts::{AttemptOutcome, NewAttempt};
use crate::external::{clean_error_text, Answer, CallError, ExternalCall, EXCERPT_CHARS};

/// One call this instance is making.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallInFlight {
    pub version: i64,
    pub verb: &'static str,
    pub since: DateTime<Utc>,
    /// 1 for the first attempt, 2 for the first quick retry, and so on.
    pub attempt: u32,
}

/// The calls this instance has in flight, by order id. Shared with the HTTP workers' threads, so
/// a mutex held for an insert or a lookup only.
#[derive(Debug, Clone, Default)]
pub struct CallsInFlight(Arc<Mutex<HashMap<OrderId, CallInFlight>>>);

impl CallsInFlight {
    /// Registers the call until the returned guard is dropped (the call ended or was cancelled).
    pub(crate) fn start(&self, order_id: OrderId, call: CallInFlight) -> InFlightGuard {
        if let Ok(mut calls) = self.0.lock() {
            calls.insert(order_id, call);
        }
        InFlightGuard {
            calls: self.clone(),
            order_id,
        }
    }

    /// The call in flight for the order on this instance, if any.
    pub fn get(&self, order_id: OrderId) -> Option<CallInFlight> {
        self.0.lock().ok()?.get(&order_id).cloned()
    }
}

/// Removes its call from [`CallsInFlight`] when dropped.
pub(crate) struct InFlightGuard {
    calls: CallsInFlight,
    order_id: OrderId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.calls.0.lock() {
            calls.remove(&self.order_id);
        }
    }
}

/// The attempt log's row for one attempt of `call` that ended with `result`.
pub(crate) fn attempt_row(
    call: &ExternalCall,
    result: &Result<Answer, CallError>,
    attempted_at: DateTime<Utc>,
    took: Duration,
    instance: &str,
) -> NewAttempt {
    let (order_id, version) = call.id_and_version();
    let (outcome, http_status, excerpt) = match result {
        Ok(answer) => (
            AttemptOutcome::Ok,
            Some(answer.status),
            answer.excerpt.clone(),
        ),
        Err(CallError::Status { status, body, .. }) => (
            AttemptOutcome::Status,
            Some(*status),
            clean_error_text(body, EXCERPT_CHARS),
        ),
        Err(CallError::Timeout) => (AttemptOutcome::Timeout, None, String::new()),
        Err(error) => (
            AttemptOutcome::Connect,
            None,
            clean_error_text(&error.to_string(), EXCERPT_CHARS),
        ),
    };
    NewAttempt {
        order_id,
        version,
        verb: call.verb(),
        outcome,
        http_status,
        excerpt,
        duration_ms: u32::try_from(took.as_millis()).unwrap_or(u32::MAX),
        instance: instance.to_string(),
        attempted_at,
    }
}
