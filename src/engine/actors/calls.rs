//! External calls and their retries: quick retries in process (exponential backoff with jitter,
//! tokio-retry), each attempt with its own slot and token from the throttle, and the delayed
//! retry schedule (Sidekiq's) for when the quick ones are used up.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use tokio_retry::strategy::{jitter, ExponentialBackoff};
use tokio_retry::RetryIf;

use super::attempt_log::{attempt_row, CallInFlight};
use super::deps::SyncDeps;
use crate::db::attempts::NewAttempt;
use crate::engine::cluster::leases::Fence;
use crate::engine::gate::throttle::CallPermit;
use crate::external::{Answer, CallError, ExternalCall};

/// A call's result, and every attempt it took (for the attempt log).
pub(crate) struct CallReport {
    pub result: Result<Answer, CallError>,
    pub attempts: Vec<NewAttempt>,
    /// The call was a probe of a down API, and its failure is the order's own to record
    /// ([`crate::engine::gate::destination::Destination::finish_probe`]).
    pub failed_probe_is_the_orders: bool,
}

/// Makes the call, retrying quickly (exponential backoff with jitter) what may pass on a retry,
/// unless the external API looks unwell (`crate::engine::gate::destination`): quick retries
/// into an API that is going down are a retry storm. Every result is evidence of the API's
/// health; the probe's is reported as the probe's.
/// Every attempt takes its own slot and token from the throttle; the first uses `first_permit`.
/// Every attempt starts only while `fence` says the shard's lease outlasts it; otherwise the call
/// is abandoned, and the event stays pending for the shard's next owner.
pub(crate) async fn call_with_retries(
    deps: &SyncDeps,
    call: &ExternalCall,
    first_permit: CallPermit,
    fence: &Fence,
) -> CallReport {
    let backoff = ExponentialBackoff::from_millis(2)
        .factor(25)
        .max_delay(Duration::from_secs(2))
        .map(jitter)
        .take(deps.retry.quick_attempts.saturating_sub(1) as usize);
    let first_permit = Cell::new(Some(first_permit));
    let attempts = RefCell::new(Vec::new());
    let number = Cell::new(0u32);
    let failed_probe_is_the_orders = Cell::new(false);
    let attempt = || {
        let permit = first_permit.take();
        let (attempts, number) = (&attempts, &number);
        let failed_probe_is_the_orders = &failed_probe_is_the_orders;
        async move {
            let mut permit = match permit {
                Some(permit) => permit,
                None => {
                    // A retry is a new call: none starts once shutdown has begun.
                    if deps.shutdown.is_cancelled() {
                        return Err(CallError::Abandoned);
                    }
                    deps.metrics.retried.inc();
                    tokio::select! {
                        permit = deps.throttle.acquire(call.id_and_version().0) => permit.ok_or(CallError::Abandoned)?,
                        _ = deps.shutdown.cancelled() => return Err(CallError::Abandoned),
                    }
                }
            };
            // The token is taken last, so the rate holds where the external API sees it.
            let token = tokio::select! {
                token = permit.take_token() => token,
                _ = deps.shutdown.cancelled() => false,
            };
            if !token || !fence.may_call() {
                return Err(CallError::Abandoned);
            }
            let (id, version) = call.id_and_version();
            number.set(number.get() + 1);
            let attempted_at = chrono::Utc::now();
            let in_flight = deps.calls_in_flight.start(
                id,
                CallInFlight {
                    version,
                    verb: call.verb(),
                    since: attempted_at,
                    attempt: number.get(),
                },
            );
            let probe = permit.take_probe();
            let started = Instant::now();
            let result = deps.client.send(call).await;
            let took = started.elapsed();
            drop(in_flight);
            let own_failure = deps
                .destination
                .report_call(id, probe, &result, &deps.throttle);
            failed_probe_is_the_orders.set(own_failure);
            if deps.attempt_log_on {
                let instance = deps.leases.instance().to_string();
                attempts.borrow_mut().push(attempt_row(
                    call,
                    &result,
                    attempted_at,
                    took,
                    &instance,
                ));
            }
            let status = match &result {
                Ok(answer) => answer.status.to_string(),
                Err(CallError::Status { status, .. }) => status.to_string(),
                Err(other) => other.to_string(),
            };
            tracing::info!(
                order_id = id.get(),
                version,
                verb = call.verb(),
                status,
                duration_ms = format!("{:.1}", took.as_secs_f64() * 1000.0),
                "external call"
            );
            if let Err(CallError::Status {
                status: 429,
                retry_after: Some(delay),
                ..
            }) = &result
            {
                deps.throttle.pause_for(*delay);
            }
            result
        }
    };
    let retry_quickly =
        |error: &CallError| error.is_retryable() && !deps.destination.looks_unwell();
    let result = RetryIf::start(backoff, attempt, retry_quickly).await;
    CallReport {
        result,
        attempts: attempts.into_inner(),
        failed_probe_is_the_orders: failed_probe_is_the_orders.get(),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RetryPolicy;
    use crate::engine::actors::deps::MAX_DELAYED_RETRY;

    #[test]
    fn no_scale_or_count_overflows_the_delayed_schedule() {
        let policy = RetryPolicy {
            quick_attempts: 1,
            delayed_limit: 25,
            delayed_scale: 1e300,
        };
        assert_eq!(policy.delay(u32::MAX), MAX_DELAYED_RETRY);
        assert_eq!(policy.delay(25), MAX_DELAYED_RETRY);
    }

    #[test]
    fn the_delayed_schedule_is_sidekiqs() {
        let policy = RetryPolicy {
            quick_attempts: 4,
            delayed_limit: 25,
            delayed_scale: 1.0,
        };
        let first = policy.delay(1).as_secs_f64();
        assert!((15.0..25.0).contains(&first), "{first}");
        let fifth = policy.delay(5).as_secs_f64();
        assert!(
            (256.0 + 15.0..256.0 + 15.0 + 50.0).contains(&fifth),
            "{fifth}"
        );
    }
}
