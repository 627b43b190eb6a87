use std::process::ExitCode;

use order_sync::cli::{self, Command};
use order_sync::config::Settings;
use order_sync::startup::Application;
use order_sync::telemetry;

fn main() -> ExitCode {
    order_sync::startup::run_system(run())
}

async fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(&args) {
        Ok(Command::Serve) => serve().await,
        Ok(Command::Version) => {
            println!("{}", cli::version());
            ExitCode::SUCCESS
        }
        Ok(Command::Help) => {
            println!("{}\n{}", cli::version(), cli::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Healthcheck(url)) => match cli::healthcheck(&url).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(why) => {
                eprintln!("unhealthy: {why}");
                ExitCode::FAILURE
            }
        },
        Err(line) => {
            eprintln!("error: {line}");
            ExitCode::from(2)
        }
    }
}

async fn serve() -> ExitCode {
    telemetry::init();
    // Failpoints for the tests, from `FAILPOINTS` (see `order_sync::engine`); only in the tests'
    // build, with the `failpoints` feature: the release build has none.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let result = async {
        let settings = Settings::from_env()?;
        let app = Application::build(settings).await?;
        app.run_until_stopped().await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, naming what to fix; no backtrace.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
