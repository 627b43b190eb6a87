//! `cargo run -p seeder`: fills the orders table with realistic fake orders, like the reference's
//! `rake db:seed ORDER_COUNT=100 CLEAN_ORDERS='true'`.
//!
//! Settings (environment): `ORDER_COUNT` (10000), `CLEAN_ORDERS` (`true` empties orders and their
//! outbox rows first), `SYNC` (`false` writes no outbox rows, so nothing is synced),
//! `DATABASE_URL` (as for the service). Every value is checked before anything is written.

use std::process::ExitCode;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use seeder::options::SeedOptions;
use seeder::write;

/// The seeder takes its settings from the environment; its arguments only ask what it is.
const USAGE: &str = "usage: seeder [--version | --help]
  settings come from the environment: ORDER_COUNT (10000), CLEAN_ORDERS (false), SYNC (true),
  DATABASE_URL (as for the service)";

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [flag] if flag == "--version" || flag == "-V" => {
            println!("{}", order_sync::build_info::version_line("seeder"));
            return ExitCode::SUCCESS;
        }
        [flag] if flag == "--help" || flag == "-h" => {
            println!(
                "{}\n{USAGE}",
                order_sync::build_info::version_line("seeder")
            );
            return ExitCode::SUCCESS;
        }
        [first, ..] => {
            eprintln!("error: unknown argument {first:?} (seeder --help lists what it takes; settings come from the environment)");
            return ExitCode::from(2);
        }
    }
    let vars = std::env::vars().collect::<Vec<_>>();
    let options = match SeedOptions::from_vars(&vars) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    match seed(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn seed(options: SeedOptions) -> anyhow::Result<()> {
    let database_url = order_sync::config::database_url_from_env();
    let shown_url = order_sync::config::redact_url(&database_url);
    let connect_error =
        |e: anyhow::Error| e.context(format!("cannot use DATABASE_URL={shown_url}"));
    order_sync::db::ensure_database(&database_url)
        .await
        .map_err(connect_error)?;
    let db = order_sync::db::connect_and_migrate(&database_url, write::CONNECTIONS + 1)
        .await
        .map_err(connect_error)?;
    let pool = db.get_postgres_connection_pool().clone();

    if options.clean {
        let deleted = write::delete_all_orders(&pool).await?;
        println!("{deleted} orders deleted successfully.");
    }

    let started = Instant::now();
    let progress = ProgressBar::new(options.count);
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} orders {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let created =
        write::insert_orders(&pool, options.count, options.sync, |n| progress.inc(n)).await?;
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!("{created} orders created successfully.");
    println!(
        "seeded {created} orders in {seconds:.2} s ({:.0} orders/s)",
        created as f64 / seconds.max(1e-9)
    );
    Ok(())
}
