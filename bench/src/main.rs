//! The benchmark program: `cargo build --release --workspace --bins && ./target/release/bench`
//! prints every figure of BENCHMARKS.md in one table, each beside its limit measured in the same run (this machine is shared and noisy:
//! a ratio holds where an absolute time does not).
//!
//! `BENCH_MODE=smoke` runs everything tiny (CI keeps the program working with it);
//! `BENCH_MODE=large` runs the memory figure with 1,000,000 orders; `BENCH_FIGURES=1,4` runs
//! only some figures. `bench soak [--minutes 60] ...` runs the chaos soak instead (`soak.rs`;
//! BENCHMARKS.md, "Soak"): its own PostgreSQL, Redis and instances, and a fault every minute. It needs PostgreSQL and
//! Redis (`BENCH_DATABASE_SERVER`, `BENCH_REDIS_URL`), and runs the release binaries beside it
//! (the service and the fake external API) as child processes. One workspace build makes them
//! all with the same features, so nothing is rebuilt between the two.

mod figures;
mod harness;
mod outage;
mod soak;

use std::process::ExitCode;
use std::time::Duration;

use figures::Row;

/// How big each figure is.
pub struct Scale {
    name: &'static str,
    throughput_orders: u64,
    memory_orders: u64,
    coalesce_orders: u64,
    coalesce_updates: u32,
    /// Figure 2: how long the external API takes per call during the burst.
    coalesce_latency: Duration,
    lag_rate: u64,
    lag_duration: Duration,
    throttle_rate: u64,
    throttle_burst: u64,
    throttle_duration: Duration,
    seeder_orders: u64,
    ingest_duration: Duration,
    /// Figure 8: orders synced by 1, 2 and 3 instances, and how long the rate is measured.
    instance_orders: u64,
    instance_rate_duration: Duration,
    /// Figure 9: requests for rate-limit grants per batch size.
    grant_requests: u64,
    /// Figure 1's PostgreSQL yardstick: how long pgbench runs.
    pgbench_duration: Duration,
    /// Figure 10: orders seeded, synced and audited; `RATE_LIMIT_PER_SEC` of the audits at the
    /// default share and at share 1; how long after the first check the rate is steady; how
    /// long it is measured at the default share and at the service's defaults; how long the
    /// audit at share 1 may run; how long the share's limiter alone is measured.
    audit_orders: u64,
    audit_rate_limit: u32,
    audit_ramp: Duration,
    audit_window: Duration,
    audit_default_window: Duration,
    audit_ceiling_within: Duration,
    audit_limiter_duration: Duration,
    /// Figure 11: how long the external API is down (`BENCH_OUTAGE_SECS` overrides it).
    outage_length: Duration,
    long_timeout: Duration,
}

impl Scale {
    fn from_env() -> Result<Self, String> {
        let default = Scale {
            name: "default",
            throughput_orders: 100_000,
            memory_orders: 100_000,
            coalesce_orders: 1_000,
            coalesce_updates: 50,
            coalesce_latency: Duration::from_millis(20),
            lag_rate: 500,
            lag_duration: Duration::from_secs(20),
            // Half of what the whole engine reaches on this machine (figure 1, about 1,000/s
            // here now): the limit, not the machine, must be what holds the rate back.
            throttle_rate: 500,
            throttle_burst: 25,
            throttle_duration: Duration::from_secs(10),
            seeder_orders: 1_000_000,
            ingest_duration: Duration::from_secs(10),
            instance_orders: 20_000,
            instance_rate_duration: Duration::from_secs(5),
            grant_requests: 20_000,
            pgbench_duration: Duration::from_secs(10),
            // 200 checks/s at the default share, 10/s at the defaults, 2,000/s at share 1: the
            // whole figure, the sync of 100,000 orders included, in about four minutes.
            audit_orders: 100_000,
            audit_rate_limit: 2_000,
            audit_ramp: Duration::from_secs(5),
            audit_window: Duration::from_secs(40),
            audit_default_window: Duration::from_secs(30),
            audit_ceiling_within: Duration::from_secs(60),
            audit_limiter_duration: Duration::from_secs(10),
            outage_length: Duration::from_secs(120),
            long_timeout: Duration::from_secs(900),
        };
        match std::env::var("BENCH_MODE").unwrap_or_default().as_str() {
            "" | "default" => Ok(default),
            "large" => Ok(Scale {
                name: "large",
                memory_orders: 1_000_000,
                // A million orders at about 1,000/s, with room for a slower machine.
                long_timeout: Duration::from_secs(3_600),
                ..default
            }),
            "smoke" => Ok(Scale {
                name: "smoke",
                throughput_orders: 1_000,
                memory_orders: 1_000,
                coalesce_orders: 50,
                coalesce_updates: 5,
                coalesce_latency: Duration::from_millis(20),
                lag_rate: 100,
                lag_duration: Duration::from_secs(2),
                throttle_rate: 200,
                throttle_burst: 10,
                throttle_duration: Duration::from_secs(2),
                seeder_orders: 2_000,
                ingest_duration: Duration::from_secs(2),
                instance_orders: 500,
                instance_rate_duration: Duration::from_secs(2),
                grant_requests: 500,
                pgbench_duration: Duration::from_secs(1),
                // 50 checks/s: 200 ids take 4 s at the default share.
                audit_orders: 200,
                audit_rate_limit: 500,
                audit_ramp: Duration::from_millis(500),
                audit_window: Duration::from_secs(2),
                audit_default_window: Duration::from_secs(2),
                audit_ceiling_within: Duration::from_secs(10),
                audit_limiter_duration: Duration::from_secs(1),
                outage_length: Duration::from_secs(5),
                long_timeout: Duration::from_secs(120),
            }),
            other => Err(format!(
                "BENCH_MODE must be smoke, default or large, not {other:?}"
            )),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|mode| mode == "soak") {
        return soak::main(&args[1..]);
    }
    let scale = match Scale::from_env() {
        Ok(scale) => scale,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match crate::start_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    match runtime.block_on(run(&scale)) {
        Ok(rows) => {
            print_table(&scale, &rows);
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The multi-threaded runtime both modes run on; on failure, the message is printed and the exit
/// code returned.
pub(crate) fn start_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start a runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `BENCH_FIGURES=1,4` runs only those figures (all when unset).
fn wanted(figure: u32) -> bool {
    match std::env::var("BENCH_FIGURES") {
        Ok(list) if !list.trim().is_empty() => {
            list.split(',').any(|f| f.trim() == figure.to_string())
        }
        _ => true,
    }
}

async fn run(scale: &Scale) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut memory = None;
    if wanted(1) || wanted(5) {
        eprintln!("[bench] figures 1 and 5: throughput, memory and actors");
        let (throughput, at_throughput_scale) =
            figures::throughput_and_memory(scale, scale.throughput_orders).await?;
        rows.push(throughput);
        memory = Some(at_throughput_scale);
        if scale.memory_orders != scale.throughput_orders && wanted(5) {
            eprintln!("[bench] figure 5 at {} orders", scale.memory_orders);
            memory = Some(
                figures::throughput_and_memory(scale, scale.memory_orders)
                    .await?
                    .1,
            );
        }
    }
    if wanted(2) {
        eprintln!("[bench] figure 2: coalescing");
        rows.push(figures::coalescing(scale).await?);
    }
    if wanted(3) {
        eprintln!("[bench] figure 3: lag");
        rows.push(figures::lag(scale).await?);
    }
    if wanted(4) {
        eprintln!("[bench] figure 4: throttle");
        rows.push(figures::throttle(scale).await?);
    }
    rows.extend(memory);
    if wanted(6) {
        eprintln!("[bench] figure 6: seeder");
        rows.push(figures::seeder_speed(scale).await?);
    }
    if wanted(7) {
        eprintln!("[bench] figure 7: ingest");
        rows.push(figures::ingest(scale).await?);
    }
    if wanted(8) {
        eprintln!("[bench] figure 8: several instances");
        rows.extend(figures::several_instances(scale).await?);
    }
    if wanted(9) {
        eprintln!("[bench] figure 9: rate-limit grants");
        rows.push(figures::rate_limit_grants(scale).await?);
    }
    if wanted(10) {
        eprintln!("[bench] figure 10: the audit's rate at its share");
        rows.extend(figures::audit_rate(scale).await?);
    }
    if wanted(11) {
        eprintln!("[bench] figure 11: the external API down");
        rows.push(outage::external_api_outage(scale).await?);
    }
    Ok(rows)
}

fn print_table(scale: &Scale, rows: &[Row]) {
    println!(
        "order-sync benchmarks ({} mode, {} cores)",
        scale.name,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| figure | measured | limit (same run) | goal | met |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.figure,
            row.measured,
            row.limit,
            row.goal,
            if row.met { "yes" } else { "NO" }
        );
    }
}
