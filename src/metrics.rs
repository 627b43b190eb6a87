//! The engine's own figures, counted where things happen and read by the metrics endpoints.
//! Plain atomics: cheap on the hot path, and readable from the HTTP workers' threads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::external::CallError;

/// A count that only grows.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Lag samples of the last `LAG_WINDOW`, at most `LAG_SAMPLES` of them.
const LAG_WINDOW: Duration = Duration::from_secs(60);
const LAG_SAMPLES: usize = 10_000;

#[derive(Debug, Default)]
pub struct SyncMetrics {
    /// Events handed to the supervisor.
    pub events_received: Counter,
    /// Calls that succeeded and were recorded.
    pub synced: Counter,
    /// Events that needed no call (coalesced, gone, parked, dead).
    pub skipped: Counter,
    /// Tombstones removed without a call.
    pub purged: Counter,
    /// Quick retries made (attempts after the first).
    pub retried: Counter,
    /// Orders parked for a delayed retry.
    pub parked: Counter,
    /// Orders that became dead.
    pub dead: Counter,
    pub actors_spawned: Counter,
    pub actors_stopped: Counter,
    pub actors_restarted: Counter,
    pub live_actors: Gauge,
    /// Calls by `(verb, status class)`, status class being `2xx`, `4xx`, `5xx` or `error`.
    calls: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// `(when recorded, lag)`, oldest first.
    lag: Mutex<VecDeque<(Instant, Duration)>>,
}

impl SyncMetrics {
    pub fn record_call(&self, verb: &'static str, result: &Result<(), CallError>) {
        let class = match result {
            Ok(()) => "2xx",
            Err(CallError::Status { status, .. }) if *status < 500 => "4xx",
            Err(CallError::Status { .. }) => "5xx",
            Err(CallError::Abandoned) => return,
            Err(_) => "error",
        };
        if let Ok(mut calls) = self.calls.lock() {
            *calls.entry((verb, class)).or_default() += 1;
        }
    }

    pub fn calls(&self) -> BTreeMap<(&'static str, &'static str), u64> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Records the time from the change's commit (`committed_at_ms`, epoch) to now.
    pub fn record_lag(&self, committed_at_ms: i64) {
        let lag_ms = (chrono::Utc::now().timestamp_millis() - committed_at_ms).max(0) as u64;
        if let Ok(mut lag) = self.lag.lock() {
            if lag.len() == LAG_SAMPLES {
                lag.pop_front();
            }
            lag.push_back((Instant::now(), Duration::from_millis(lag_ms)));
        }
    }

    /// Lag percentiles (in milliseconds) over the recent window: `(p50, p95, p99, samples)`.
    pub fn lag_percentiles(&self) -> (u64, u64, u64, usize) {
        let mut samples: Vec<u64> = match self.lag.lock() {
            Ok(mut lag) => {
                while lag.front().is_some_and(|(at, _)| at.elapsed() > LAG_WINDOW) {
                    lag.pop_front();
                }
                lag.iter().map(|(_, d)| d.as_millis() as u64).collect()
            }
            Err(_) => Vec::new(),
        };
        if samples.is_empty() {
            return (0, 0, 0, 0);
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        (at(0.50), at(0.95), at(0.99), samples.len())
    }
}
