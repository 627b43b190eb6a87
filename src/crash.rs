//! Crash points for the durability tests: the process aborts at a named point, as a SIGKILL
//! there would, when `ORDER_SYNC_CRASH_AT` names that point. Unset (always, outside those tests)
//! a point costs one load of an already-initialised value.
//!
//! Points: `before_publish` (outbox rows committed, not yet in Redis) and `after_call` (the
//! external call succeeded, its outcome not yet recorded or acknowledged).

/// Aborts the process if `ORDER_SYNC_CRASH_AT` equals `name`. Built only with the `failpoints`
/// feature (the tests'); the release build has no crash point.
#[cfg(feature = "failpoints")]
pub fn point(name: &str) {
    use std::sync::OnceLock;
    static CRASH_AT: OnceLock<Option<String>> = OnceLock::new();
    let armed = CRASH_AT.get_or_init(|| {
        std::env::var("ORDER_SYNC_CRASH_AT")
            .ok()
            .filter(|v| !v.is_empty())
    });
    if armed.as_deref() == Some(name) {
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

/// Without the `failpoints` feature a crash point is nothing.
#[cfg(not(feature = "failpoints"))]
pub fn point(_name: &str) {}
