//! What this binary is: its version and the commit it was built from (stamped by `build.rs`).

/// The crate's version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from, or `unknown` (see `build.rs`).
pub const GIT_SHA: &str = env!("ORDER_SYNC_GIT_SHA");

/// `order-sync 0.1.0 (3f2a9c1b4d5e)`, for `--version` and the start-up log line.
pub fn version_line(program: &str) -> String {
    format!("{program} {VERSION} ({GIT_SHA})")
}
