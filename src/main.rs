use std::process::ExitCode;

use order_sync::config::Settings;
use order_sync::startup::Application;
use order_sync::telemetry;

#[actix_web::main]
async fn main() -> ExitCode {
    telemetry::init();
    // Failpoints for the tests, from `FAILPOINTS` (unset: none); see `order_sync::engine`.
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
