//! Stamps the binary with the commit it was built from (`order_sync::build_info::GIT_SHA`), for
//! `order-sync --version` and the `order_sync_build_info` metric. `GIT_SHA` in the build's
//! environment wins (the Docker build has no `.git`: `docker build --build-arg GIT_SHA=...`);
//! otherwise `git rev-parse`, and `unknown` where neither answers.

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=GIT_SHA");
    let from_env = std::env::var("GIT_SHA")
        .ok()
        .filter(|sha| !sha.trim().is_empty());
    let sha = from_env
        .or_else(git_head)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=ORDER_SYNC_GIT_SHA={}", sha.trim());
    // Built again when HEAD moves, and only then (not on every source change).
    if let Some(git_dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={git_dir}/HEAD");
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={git_dir}/{reference}");
        }
    }
}

fn git_head() -> Option<String> {
    git(&["rev-parse", "--short=12", "HEAD"])
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    (output.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
