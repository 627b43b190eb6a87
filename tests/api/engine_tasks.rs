//! The sync engine owns its tasks: one that ends is started again and syncing goes on; one that
//! cannot be kept running fails `/health/live` (and `order-sync healthcheck live`) and stops the
//! process with a non-zero exit. The service
//! binary runs as a child, with a failpoint (`FAILPOINTS=engine-task-<name>=...`) ending a task.

use std::time::Duration;

use serde_json::Value;

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::wait_for;
use crate::process::{
    create_order_at, get_json_at, log_path, service_env, OwnDatabase, ServiceProcess,
};

async fn start_service(
    api: &ExternalApi,
    db: &OwnDatabase,
    failpoints: &str,
    log: &str,
) -> (ServiceProcess, std::path::PathBuf) {
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let url = api.url();
    let env = service_env(
        db,
        &prefix,
        &[
            ("EXTERNAL_API_URL", &url),
            ("EXTERNAL_API_TOKEN", TOKEN),
            ("FAILPOINTS", failpoints),
        ],
    );
    let log = log_path(&format!("{log}-{prefix}"));
    let mut service = ServiceProcess::start(&env, &log);
    service.wait_ready().await;
    (service, log)
}

#[actix_web::test]
async fn an_engine_task_that_ends_is_started_again_and_syncing_goes_on() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let db = OwnDatabase::new();
    // The relay panics the first time it starts.
    let (service, log) =
        start_service(&api, &db, "engine-task-relay=1*panic", "relay-panics-once").await;
    let http = reqwest::Client::new();
    let created = create_order_at(&http, &service.url(""))
        .await
        .expect("an order created");
    let id = created["id"].as_i64().expect("id");
    wait_for("the order to sync", Duration::from_secs(20), || async {
        let order: Value = http
            .get(service.url(&format!("/orders/{id}")))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (order["sync"]["state"] == "synced").then_some(())
    })
    .await;
    assert_eq!(api.recorder.calls_for(id).len(), 1);
    let health: Value = get_json_at(&http, &service.url("/health")).await;
    assert_eq!(health["engine"], "ok", "{health}");
    let metrics: Value = get_json_at(&http, &service.url("/metrics/actors")).await;
    assert_eq!(metrics["engine"]["task_restarts"], 1, "{metrics}");
    let logged = std::fs::read_to_string(&log).expect("the service's log");
    assert!(
        logged.contains("a sync engine task ended unexpectedly; starting it again"),
        "{logged}"
    );
}

#[actix_web::test]
async fn an_engine_task_that_keeps_ending_stops_the_process_with_an_error() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let db = OwnDatabase::new();
    // The scheduler panics every time it starts: the engine gives up after 5 restarts (~3 s).
    // The failed process is held 20 s before it stops, to see what it answers meanwhile.
    let (mut service, log) = start_service(
        &api,
        &db,
        "engine-task-scheduler=panic;engine-failed-linger=return(20000)",
        "scheduler-always-panics",
    )
    .await;
    let http = reqwest::Client::new();
    let healthcheck = |what: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_order-sync"))
            .args(["healthcheck", what])
            .env_clear()
            .env("PORT", service.port.to_string())
            .output()
            .expect("the binary runs")
    };
    // Live while it runs: the container's HEALTHCHECK passes.
    let live = healthcheck("live");
    assert!(
        live.status.success(),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let live = wait_for(
        "/health/live to say the engine has given up",
        Duration::from_secs(30),
        || async {
            let response = http.get(service.url("/health/live")).send().await.ok()?;
            (response.status() == 503).then_some(())?;
            response.json::<Value>().await.ok()
        },
    )
    .await;
    assert_eq!(live["status"], "down", "{live}");
    assert!(
        live["engine"]
            .as_str()
            .is_some_and(|e| e.contains("scheduler")),
        "{live}"
    );
    let dead = healthcheck("live");
    assert_eq!(
        dead.status.code(),
        Some(1),
        "order-sync healthcheck live fails"
    );
    assert!(
        String::from_utf8_lossy(&dead.stderr).contains("/health/live answered 503"),
        "{}",
        String::from_utf8_lossy(&dead.stderr)
    );
    let code = service.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, Some(1), "a failed engine exits non-zero");
    let logged = std::fs::read_to_string(&log).expect("the service's log");
    assert!(
        logged.contains("a sync engine task keeps ending; giving up"),
        "{logged}"
    );
    assert!(
        logged.contains("error: sync engine failed: the scheduler task keeps ending"),
        "{logged}"
    );
}
