//! The one backoff policy of the engine's loops that run for the process's life: the outbox
//! relay, each shard's reader and the task keeper. After a failure each waits 100 ms, doubling
//! up to its own ceiling; progress starts the schedule over, so the wait grows only while the
//! dependency keeps failing, not with every error in the process's life.
//!
//! The delays are tokio-retry's `ExponentialBackoff`, the schedule the bounded retries
//! (`actors::db_step`, the external calls) use too. `tokio_retry::Retry` itself does not fit
//! these loops: they never give up, and they reset on progress rather than on one success.

use std::time::Duration;

use tokio_retry::strategy::ExponentialBackoff;

/// The first wait after a failure.
pub const FIRST_DELAY: Duration = Duration::from_millis(100);

/// Waits that double from [`FIRST_DELAY`] up to a ceiling.
#[derive(Debug, Clone)]
pub struct Backoff {
    max: Duration,
    delays: ExponentialBackoff,
}

impl Backoff {
    pub fn up_to(max: Duration) -> Self {
        Self {
            max,
            delays: Self::schedule(max),
        }
    }

    /// 2^n × half the first delay: 100 ms, 200 ms, 400 ms, ... capped at `max`.
    fn schedule(max: Duration) -> ExponentialBackoff {
        let half_first = FIRST_DELAY.as_millis() as u64 / 2;
        ExponentialBackoff::from_millis(2)
            .factor(half_first)
            .max_delay(max)
    }

    /// How long to wait after one more failure in a row.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Progress: the next failure waits [`FIRST_DELAY`] again.
    pub fn reset(&mut self) {
        self.delays = Self::schedule(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_100_ms_to_the_ceiling_and_start_over_after_progress() {
        let mut backoff = Backoff::up_to(Duration::from_secs(5));
        let waits: Vec<u128> = (0..9).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), FIRST_DELAY);
        // A failing dependency for hours never overflows the schedule.
        let mut long = Backoff::up_to(Duration::from_secs(10));
        for _ in 0..10_000 {
            assert!(long.next_delay() <= Duration::from_secs(10));
        }
        assert_eq!(long.next_delay(), Duration::from_secs(10));
    }
}
