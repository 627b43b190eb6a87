//! The production stack as docs/OPERATIONS.md starts it, without Docker: the "Without Docker"
//! block run by bash line by line, exactly as written, in the repository: its `cargo build` line
//! (a no-op when `./scripts/test` or `.ci/run` has built the release already), then its
//! `ROLE=...` lines, so the binary under test is `./target/release/order-sync`, the release
//! build without failpoints. The production variables are exported first, as the section says:
//! `ORDER_SYNC_ENV=production`, an HTTPS external API whose certificate a private CA signed
//! (`SSL_CERT_FILE`), `API_TOKENS` and a signed inbound write-back. One `api` instance and two
//! workers, as `docker-compose.production.yml` runs them. It checks the external copy, the
//! cluster-wide figures the API instance shows (in JSON and on the dashboard, in a real
//! browser), both health endpoints and `order-sync healthcheck`; then it stops the workers and
//! waits for the API instance to say, loudly, that nothing is syncing.
//!
//! A second check reads the compose files and the docs: every long-running service has a
//! healthcheck, web and worker wait for healthy dependencies, and every documented command that
//! starts the stack starts a worker.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use order_sync::api::webhook::sign;
use order_sync::config::WebhookKey;
use serde_json::{json, Value};

use crate::dashboard::{
    enter_api_token, policy_violations, save_screenshot, text_of, wait_for_text, wait_until_shown,
    ChromeDriver,
};
use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{order_body, wait_for};
use crate::process::{free_port, log_path, service_env, OwnDatabase};
use crate::tls::{backend_of, new_ca, write_ca_file, TlsFront};

const API_TOKEN: &str = "production-stack-api-token";
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ORDERS: i64 = 12;

fn repository_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The lines of the "Without Docker" block, comments and blank lines left out.
fn documented_block() -> Vec<String> {
    let operations = repository_file("docs/OPERATIONS.md");
    let section = operations
        .split("### Without Docker")
        .nth(1)
        .expect("docs/OPERATIONS.md has a \"Without Docker\" section");
    let block = section
        .split("```sh")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the section has a sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a documented line that ends before the next (the build) in the repository, in a
/// newcomer's shell: none of the `CARGO_*` and `OUT_DIR` variables cargo sets for this test.
/// Build scripts watch some of them (ring's `rerun-if-env-changed=CARGO_PKG_NAME`, say), so
/// with them set the build would compile its dependencies again instead of finding them fresh.
fn run_to_the_end(line: &str) {
    let shell: Vec<(String, String)> = ["PATH", "HOME", "USER", "CARGO_HOME", "RUSTUP_HOME"]
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect();
    let status = Command::new("bash")
        .arg("-c")
        .arg(line)
        .current_dir(repository())
        .env_clear()
        .envs(shell)
        .status()
        .expect("bash runs");
    assert!(status.success(), "`{line}` failed: {status}");
}

/// One documented line run by bash in `dir` (where `target/release/order-sync` is the binary
/// under test). The trailing `&` is the test's to handle: `exec` keeps the process killable.
struct DocumentedProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl DocumentedProcess {
    fn start(line: &str, dir: &Path, env: &[(String, String)], log: PathBuf) -> Self {
        let command = line.trim_end_matches('&').trim();
        // The port it will listen on: its own `PORT=` or the exported one.
        let port = command
            .split_whitespace()
            .find_map(|word| word.strip_prefix("PORT="))
            .or_else(|| {
                env.iter()
                    .find(|(k, _)| k == "PORT")
                    .map(|(_, v)| v.as_str())
            })
            .and_then(|p| p.parse().ok())
            .expect("a port");
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let errors = output.try_clone().expect("log file");
        let child = Command::new("bash")
            .arg("-c")
            .arg(format!("exec env {command}"))
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors))
            .spawn()
            .expect("bash runs the documented line");
        Self { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-s", "TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for DocumentedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, Value) {
    match http.get(url).bearer_auth(API_TOKEN).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

#[actix_web::test]
async fn the_documented_production_stack_syncs_shows_the_whole_cluster_and_says_when_no_worker_runs(
) {
    let block = documented_block();
    let (lines, others): (Vec<String>, Vec<String>) =
        block.into_iter().partition(|l| l.starts_with("ROLE="));
    assert!(
        others
            .iter()
            .all(|l| l.starts_with("cargo build --release")),
        "the block is the build and the instances: {others:?}"
    );
    for line in &others {
        run_to_the_end(line);
    }
    assert!(
        lines.iter().any(|l| l.starts_with("ROLE=api"))
            && lines
                .iter()
                .filter(|l| l.starts_with("ROLE=worker"))
                .count()
                >= 2,
        "the documented stack is one api and two workers: {lines:?}"
    );
    // The workers' documented ports must be free here, or the stack cannot start as written.
    for line in &lines {
        if let Some(port) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("PORT="))
        {
            assert!(
                std::net::TcpListener::bind(("0.0.0.0", port.parse::<u16>().expect("a port")))
                    .is_ok(),
                "port {port} of the documented line {line:?} is taken on this machine"
            );
        }
    }

    // An HTTPS external API, signed by a CA of the test's own.
    let api = ExternalApi::start(Duration::ZERO).await;
    let ca = new_ca("order-sync production-stack test CA");
    let front = TlsFront::start(&ca, backend_of(&api)).await;
    let ca_file = write_ca_file(&ca).display().to_string();

    // The lines name `./target/release/order-sync`: the release build, in the repository.
    let dir = repository();
    assert!(
        dir.join("target/release/order-sync").is_file(),
        "the documented build made ./target/release/order-sync"
    );

    let db = OwnDatabase::new();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let api_port = free_port().to_string();
    let external_url = front.url();
    let mut env = service_env(
        &db,
        &prefix,
        &[
            ("ORDER_SYNC_ENV", "production"),
            ("EXTERNAL_API_URL", &external_url),
            ("EXTERNAL_API_TOKEN", TOKEN),
            ("API_TOKENS", API_TOKEN),
            ("INBOUND_WEBHOOK_SECRET", WEBHOOK_SECRET),
            ("SSL_CERT_FILE", &ca_file),
            ("PORT", &api_port),
        ],
    );
    env.retain(|(k, _)| k != "DATABASE_MAX_CONNECTIONS");
    let mut processes: Vec<DocumentedProcess> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            DocumentedProcess::start(line, dir, &env, log_path(&format!("stack-{i}-{prefix}")))
        })
        .collect();
    let http = reqwest::Client::new();
    for process in &processes {
        let url = process.url("/health/ready");
        wait_for(
            &format!("{url} to answer 200 (log: {})", process.log.display()),
            Duration::from_secs(60),
            || async { (get(&http, &url).await.0 == 200).then_some(()) },
        )
        .await;
    }
    let api_instance = &processes[0];
    assert!(lines[0].starts_with("ROLE=api"), "the api line comes first");

    // Orders through the API: created, changed, one deleted, one written back (signed).
    let mut ids = Vec::new();
    for i in 0..ORDERS {
        let mut body = order_body();
        body["amount"] = json!(1000 + i);
        let created: Value = http
            .post(api_instance.url("/orders"))
            .bearer_auth(API_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("JSON");
        ids.push(created["id"].as_i64().expect("an id"));
    }
    for id in &ids[..4] {
        let changed = http
            .patch(api_instance.url(&format!("/orders/{id}")))
            .bearer_auth(API_TOKEN)
            .json(&json!({"city": "Mumbai"}))
            .send()
            .await
            .expect("sent");
        assert_eq!(changed.status(), 200);
    }
    let written_back = ids[5];
    let body = r#"{"order": {"status": "delivered"}}"#;
    let now = chrono::Utc::now().timestamp();
    let key = WebhookKey::from_whsec(WEBHOOK_SECRET).expect("the key");
    let response = http
        .put(api_instance.url(&format!("/inbound/{written_back}")))
        .header("content-type", "application/json")
        .header("webhook-id", "msg_stack_1")
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            sign(&key, "msg_stack_1", now, body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200, "a signed write-back is applied");

    // The external copy: every order's last call carries its latest version; the deleted one's
    // last call is a DELETE.
    for id in &ids {
        let url = api_instance.url(&format!("/orders/{id}/sync"));
        wait_for(
            &format!("order {id} synced"),
            Duration::from_secs(60),
            || async {
                let (_, explanation) = get(&http, &url).await;
                (explanation["state"] == "synced").then_some(())
            },
        )
        .await;
    }
    // One synced order is deleted: the delete reaches the external API too.
    let deleted = ids[ORDERS as usize - 1];
    let response = http
        .delete(api_instance.url(&format!("/orders/{deleted}")))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 204);
    wait_for(
        "the delete reaches the external API",
        Duration::from_secs(60),
        || async {
            api.recorder
                .calls_for(deleted)
                .last()
                .is_some_and(|call| call.method == "DELETE")
                .then_some(())
        },
    )
    .await;
    for id in ids.iter().filter(|id| **id != deleted) {
        let (_, order) = get(&http, &api_instance.url(&format!("/orders/{id}"))).await;
        let last = api.recorder.calls_for(*id);
        let last = last.last().expect("a call for every order");
        assert_eq!(
            last.version,
            order["version"].as_i64().expect("a version"),
            "order {id}: the external API's last call is its latest version"
        );
        assert!(
            last.authorization.ends_with(TOKEN),
            "the external API's token"
        );
    }

    // The API instance makes no call, yet shows the whole cluster: three instances (one api, two
    // workers holding every shard between them), the workers' syncing in the totals and chart.
    let calls = api.recorder.calls().len() as u64;
    let metrics = wait_for(
        "the API instance's figures to count every call the workers made",
        Duration::from_secs(30),
        || async {
            let (_, m) = get(&http, &api_instance.url("/metrics/actors")).await;
            (m["cluster"]["totals"]["synced"].as_u64() == Some(calls)).then_some(m)
        },
    )
    .await;
    assert_eq!(
        metrics["events"]["synced"], 0,
        "the api instance itself made no call"
    );
    let instances = metrics["cluster"]["instances"]
        .as_array()
        .expect("instances")
        .clone();
    let roles: BTreeMap<String, usize> = instances.iter().fold(BTreeMap::new(), |mut roles, i| {
        *roles
            .entry(i["role"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        roles
    });
    assert_eq!(
        roles,
        BTreeMap::from([("api".to_string(), 1), ("worker".to_string(), 2)]),
        "{instances:?}"
    );
    let shards_held: usize = instances
        .iter()
        .map(|i| i["shards"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        shards_held, 8,
        "the workers hold every shard: {instances:?}"
    );
    let history = wait_for(
        "the cluster's chart to show the workers' syncing",
        Duration::from_secs(30),
        || async {
            let (_, h) = get(&http, &api_instance.url("/metrics/history")).await;
            let synced: f64 = h["points"]
                .as_array()
                .map(|points| {
                    points
                        .iter()
                        .filter_map(|p| p["synced_per_sec"].as_f64())
                        .sum()
                })
                .unwrap_or(0.0);
            (synced > 0.0).then_some(h)
        },
    )
    .await;
    assert_eq!(history["scope"], "cluster");

    // The dashboard a user opens at the API instance's port, in a real browser, shows the same:
    // the workers' syncing and a row per instance.
    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&api_instance.url("/"))
        .await
        .expect("the dashboard loads");
    enter_api_token(&browser, API_TOKEN).await;
    wait_for_text(&browser, "#stat-synced", &calls.to_string()).await;
    let table = wait_for(
        "the dashboard's row per instance",
        Duration::from_secs(20),
        || async {
            text_of(&browser, "#details-instances")
                .await
                .filter(|t| t.matches("worker").count() == 2 && t.contains("api"))
        },
    )
    .await;
    for instance in &instances {
        let id = instance["id"].as_str().expect("an instance id");
        assert!(table.contains(id), "{id} is on the dashboard: {table}");
    }
    wait_until_shown(&browser, "#no-worker-banner", false).await;

    // Health: live and ready everywhere; the API instance sees its workers.
    for process in &processes {
        assert_eq!(get(&http, &process.url("/health/live")).await.0, 200);
    }
    let (status, ready) = get(&http, &api_instance.url("/health/ready")).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["workers"]["status"], "ok", "{ready}");
    assert_eq!(ready["workers"]["live"], 2, "{ready}");
    // `order-sync healthcheck`, as the image's HEALTHCHECK runs it beside each instance.
    let healthcheck = |port: u16, what: &str| {
        Command::new(dir.join("target/release/order-sync"))
            .args(["healthcheck", what])
            .env_clear()
            .env("PORT", port.to_string())
            .output()
            .expect("the binary runs")
    };
    for process in &processes {
        for what in ["ready", "live"] {
            let check = healthcheck(process.port, what);
            assert!(
                check.status.success(),
                "healthcheck {what} on :{}: {}",
                process.port,
                String::from_utf8_lossy(&check.stderr)
            );
        }
    }

    // Both workers stop: a change waits, and within 30 s plus a look the API instance says so
    // in /health/ready (still 200: it can take orders), the metric, and its log.
    for worker in processes.iter_mut().skip(1) {
        worker.stop();
    }
    let waiting: Value = http
        .post(processes[0].url("/orders"))
        .bearer_auth(API_TOKEN)
        .json(&order_body())
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");
    assert!(waiting["id"].is_i64(), "orders are still taken: {waiting}");
    let api_instance = &processes[0];
    let ready = wait_for(
        "the API instance to report that no worker is live",
        Duration::from_secs(60),
        || async {
            let (status, ready) = get(&http, &api_instance.url("/health/ready")).await;
            (status == 200 && ready["workers"]["status"] == "missing").then_some(ready)
        },
    )
    .await;
    assert!(
        ready["warning"]
            .as_str()
            .is_some_and(|w| w.contains("ROLE=worker")),
        "{ready}"
    );
    let text = http
        .get(api_instance.url("/metrics"))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        text.lines().any(|l| l == "order_sync_workers_missing 1"),
        "order_sync_workers_missing reads 1"
    );
    assert!(
        text.lines().any(|l| l == "order_sync_workers_live 0"),
        "order_sync_workers_live reads 0"
    );
    wait_until_shown(&browser, "#no-worker-banner", true).await;
    let banner = text_of(&browser, "#no-worker-banner")
        .await
        .unwrap_or_default();
    assert!(banner.contains("ROLE=worker"), "{banner}");
    let png = browser.screenshot().await.expect("a screenshot");
    save_screenshot("production-stack-no-worker.png", &png);
    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
    // A stopped worker's healthcheck fails, as a container's would.
    let stopped = healthcheck(processes[1].port, "live");
    assert_eq!(stopped.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&stopped.stderr).starts_with("unhealthy: "),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let log = &api_instance.log;
    wait_for(
        "the warning in the API instance's log",
        Duration::from_secs(10),
        || async {
            std::fs::read_to_string(log)
                .ok()
                .filter(|text| text.contains("no worker is live"))
                .map(|_| ())
        },
    )
    .await;
}

/// The services a compose file runs for good (one-off tools, `profiles: [tools]`, excepted),
/// with whether each has a healthcheck of its own or through a `<<` merge.
fn services_with_healthchecks(compose: &str) -> Vec<(String, bool)> {
    use yaml_rust2::{Yaml, YamlLoader};
    let documents = YamlLoader::load_from_str(compose).expect("valid YAML");
    let services = documents[0]["services"]
        .as_hash()
        .expect("a services mapping");
    let has = |service: &Yaml, key: &str| {
        !service[key].is_badvalue() || !service["<<"][key].is_badvalue()
    };
    services
        .iter()
        .filter(|(_, service)| {
            !service["profiles"]
                .as_vec()
                .is_some_and(|profiles| profiles.iter().any(|p| p.as_str() == Some("tools")))
        })
        .map(|(name, service)| {
            (
                name.as_str().unwrap_or("?").to_string(),
                has(service, "healthcheck"),
            )
        })
        .collect()
}

/// The services `service` waits for to be healthy before it starts (`depends_on` with
/// `condition: service_healthy`, its own or through a `<<` merge).
fn waits_for_healthy(compose: &str, service: &str) -> Vec<String> {
    use yaml_rust2::YamlLoader;
    let documents = YamlLoader::load_from_str(compose).expect("valid YAML");
    let service = &documents[0]["services"][service];
    let depends_on = if service["depends_on"].is_badvalue() {
        &service["<<"]["depends_on"]
    } else {
        &service["depends_on"]
    };
    depends_on
        .as_hash()
        .into_iter()
        .flatten()
        .filter(|(_, how)| how["condition"].as_str() == Some("service_healthy"))
        .filter_map(|(name, _)| name.as_str().map(str::to_string))
        .collect()
}

/// The services a `docker compose ... up` line names; empty: all of them.
fn services_started_by(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let Some(up) = words.iter().position(|w| *w == "up") else {
        return Vec::new();
    };
    let mut named = Vec::new();
    let mut skip_value = false;
    for raw in &words[up + 1..] {
        if raw.starts_with('#') {
            break;
        }
        // In prose the command is a code span: it ends at the closing backtick.
        let word = &raw.trim_matches(|c: char| c == '`' || c == ',' || c == '.' || c == ')');
        let span_ends = raw.contains('`');
        if skip_value {
            skip_value = false;
        } else if *word == "--scale" || *word == "-t" || *word == "--timeout" {
            skip_value = true;
        } else if !word.starts_with('-') && !word.is_empty() {
            named.push(word.to_string());
        }
        if span_ends {
            break;
        }
    }
    named
}

#[test]
fn every_service_has_a_healthcheck_waits_for_healthy_dependencies_and_every_documented_start_starts_a_worker(
) {
    let compose = repository_file("docker-compose.yml");
    let services = services_with_healthchecks(&compose);
    assert!(
        services.iter().any(|(name, _)| name == "worker"),
        "{services:?}"
    );
    for (name, has_healthcheck) in &services {
        assert!(
            has_healthcheck,
            "docker-compose.yml: {name} has no healthcheck"
        );
    }
    // The service starts once PostgreSQL and Redis answer, not merely once their containers run.
    for service in ["web", "worker"] {
        assert_eq!(
            waits_for_healthy(&compose, service),
            vec!["db".to_string(), "redis".to_string()],
            "docker-compose.yml: {service} waits for a healthy db and redis"
        );
    }

    let mut docs = vec![
        ("README.md".to_string(), repository_file("README.md")),
        ("docker-compose.yml".to_string(), compose.clone()),
        (
            "docker-compose.production.yml".to_string(),
            repository_file("docker-compose.production.yml"),
        ),
    ];
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs"))
        .expect("docs/")
        .flatten()
    {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "md") {
            let text = std::fs::read_to_string(&path).expect("a doc");
            docs.push((path.display().to_string(), text));
        }
    }
    let mut starts = 0;
    for (file, text) in &docs {
        for line in text.lines() {
            let is_start = (line.contains("docker compose") || line.contains("docker-compose"))
                && line.split_whitespace().any(|w| w == "up");
            if !is_start {
                continue;
            }
            starts += 1;
            let named = services_started_by(line);
            assert!(
                named.is_empty() || named.iter().any(|s| s == "worker"),
                "{file}: `{}` starts no worker (nothing would be synced)",
                line.trim()
            );
        }
    }
    assert!(
        starts >= 3,
        "the documented start commands were found ({starts})"
    );
    let production = repository_file("docs/OPERATIONS.md");
    assert!(
        production.contains(
            "docker compose -f docker-compose.yml -f docker-compose.production.yml up -d db redis web worker"
        ),
        "the production command names the worker"
    );
}

#[test]
fn a_start_command_naming_services_without_a_worker_is_caught() {
    assert_eq!(
        services_started_by("docker compose -f a.yml up -d db redis web"),
        vec!["db", "redis", "web"]
    );
    assert!(services_started_by("docker compose up --build").is_empty());
    assert!(services_started_by("docker compose up -d --scale worker=3").is_empty());
    assert_eq!(
        services_started_by("start one (`docker compose ... up -d worker`, or an instance"),
        vec!["worker"]
    );
    let without = services_with_healthchecks(
        "services:\n  web:\n    image: x\n  seeder:\n    profiles: [tools]\n",
    );
    assert_eq!(without, vec![("web".to_string(), false)]);
    let started_only = "services:\n  web:\n    depends_on:\n      db:\n        condition: service_started\n      redis:\n        condition: service_healthy\n";
    assert_eq!(waits_for_healthy(started_only, "web"), vec!["redis"]);
    assert!(waits_for_healthy("services:\n  web:\n    image: x\n", "web").is_empty());
}

/// The features `package` is built with, as `cargo tree` resolves them for `edges`.
fn features_of_fail(edges: &str) -> String {
    let output = Command::new(env!("CARGO"))
        .args(["tree", "--locked", "-p", "order-sync", "-e", edges])
        .args(["-f", "{p} [{f}]", "-i", "fail"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The release build (and the image, which builds the same way) has no failpoints: the `fail`
/// crate is built without its `failpoints` feature unless the tests' dev-dependency asks for it.
/// (`.ci/run` also checks the release binary itself: `scripts/check-release-binary`.)
#[test]
fn the_release_build_has_no_failpoints_and_the_tests_build_has_them() {
    let release = features_of_fail("no-dev");
    assert!(
        release.starts_with("fail v") && !release.contains("failpoints"),
        "a build without the dev-dependencies: {release}"
    );
    let tests = features_of_fail("all");
    assert!(tests.contains("failpoints"), "the tests' build: {tests}");
}

/// A release says what it is: `--version` (and `--help`) answer without starting a server, an
/// unknown argument is one line and exit 2, and the metrics carry the same version and commit.
#[actix_web::test]
async fn the_binary_says_its_version_and_the_metrics_say_the_same() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_order-sync"))
            .args(args)
            .env_clear()
            .output()
            .expect("the binary runs")
    };
    let version = run(&["--version"]);
    assert!(version.status.success());
    let line = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let expected = format!(
        "order-sync {} ({})",
        order_sync::build_info::VERSION,
        order_sync::build_info::GIT_SHA
    );
    assert_eq!(line, expected);
    assert!(run(&["--help"]).status.success());
    let unknown = run(&["--port", "80"]);
    assert_eq!(unknown.status.code(), Some(2));
    let error = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with("error: unknown argument \"--port\""),
        "{error}"
    );

    let app = crate::helpers::spawn_app().await;
    let text = app.prometheus_text().await;
    let build_info = format!(
        "order_sync_build_info{{git_sha=\"{}\",version=\"{}\"}} 1",
        order_sync::build_info::GIT_SHA,
        order_sync::build_info::VERSION
    );
    assert!(
        text.lines().any(|l| l == build_info),
        "{build_info} is exported"
    );
}
