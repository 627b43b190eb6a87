//! Real processes for the durability tests: the service binary as a child (killed with real
//! signals), a redis-server of the test's own, and a database the test owns and drops.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use crate::helpers::{database_server, redis_url, unique_db_name, wait_for};

/// A free local port (bound, read and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A database the test owns: the service creates it; it is dropped with this value.
pub struct OwnDatabase {
    pub name: String,
}

impl OwnDatabase {
    pub fn new() -> Self {
        Self {
            name: unique_db_name(),
        }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", database_server(), self.name)
    }

    /// A small pool for checks, once the service has created the database.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.url())
            .await
            .expect("connect to the test database")
    }
}

impl Drop for OwnDatabase {
    fn drop(&mut self) {
        test_support::drop_database_blocking(&self.name);
    }
}

/// The service binary running as a child process; killed (SIGKILL) when dropped.
pub struct ServiceProcess {
    child: Child,
    pub port: u16,
}

/// Where child processes write their logs (kept as test artifacts).
pub fn log_path(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("service-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    dir.join(format!("{name}.log"))
}

impl ServiceProcess {
    /// Starts the service with `env` (on a fresh free port), appending its output to `log`.
    pub fn start(env: &[(String, String)], log: &PathBuf) -> Self {
        let port = free_port();
        let output = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let errors = output.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_order-sync"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors))
            .spawn()
            .expect("the service binary starts");
        Self { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until `/health` answers 200.
    pub async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let url = self.url("/health");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the service exited during start-up: {status}");
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the service was not ready within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still the one started (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (a name such as `"TERM"` or `"KILL"`) with kill(1), so the tests need no
    /// `unsafe` (the workspace forbids it). As with kill(2), a process that has already exited
    /// is not an error.
    pub fn signal(&self, signal: &str) {
        Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("kill(1) runs");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit by itself; returns its exit code (`None` for a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "the service did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The environment for a service child: its own database and Redis prefix, and `extra`.
pub fn service_env(
    db: &OwnDatabase,
    prefix: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("DATABASE_URL".to_string(), db.url()),
        ("DATABASE_MAX_CONNECTIONS".to_string(), "5".to_string()),
        ("REDIS_URL".to_string(), redis_url()),
        ("REDIS_PREFIX".to_string(), prefix.to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// A redis-server of the test's own on a free port, killed when dropped; `restart` brings it
/// back empty on the same port (as a Redis without persistence comes back).
pub struct OwnRedis {
    child: Option<Child>,
    pub port: u16,
    /// Extra `redis-server` arguments, kept for `restart`.
    extra_args: Vec<String>,
}

impl OwnRedis {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Starts one with extra `redis-server` arguments (`--enable-debug-command yes`, say).
    pub async fn start_with(extra_args: &[&str]) -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        redis.launch().await;
        redis
    }

    async fn launch(&mut self) {
        let log = File::create(log_path(&format!("redis-{}", self.port))).expect("redis log");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.extra_args)
            .stdout(Stdio::from(log))
            .spawn()
            .expect("redis-server is installed");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            "redis-server to accept connections",
            Duration::from_secs(10),
            || async move { std::net::TcpStream::connect(("127.0.0.1", port)).ok() },
        )
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a request to a service process and reads its JSON answer when it has `status`; `None`
/// otherwise (the load drivers count those as failed writes: a kill can cut any request off).
pub async fn answer_with(
    request: reqwest::RequestBuilder,
    status: u16,
) -> Option<serde_json::Value> {
    let response = request.send().await.ok()?;
    if response.status() != status {
        return None;
    }
    response.json().await.ok()
}

/// `POST {base}/orders` with a valid order: the created order, or `None`.
pub async fn create_order_at(http: &reqwest::Client, base: &str) -> Option<serde_json::Value> {
    answer_with(
        http.post(format!("{base}/orders"))
            .json(&crate::helpers::order_body()),
        201,
    )
    .await
}

/// `PATCH {base}/orders/{id}` with a new amount: the new version, or `None`.
pub async fn patch_amount_at(
    http: &reqwest::Client,
    base: &str,
    id: i64,
    amount: i64,
) -> Option<i64> {
    let order = answer_with(
        http.patch(format!("{base}/orders/{id}"))
            .json(&serde_json::json!({"amount": amount})),
        200,
    )
    .await?;
    order["version"].as_i64()
}

/// `GET url`, answered with JSON.
pub async fn get_json_at(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("a JSON answer")
}
