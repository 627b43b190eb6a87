//! What every figure needs: a database of its own, the service and the fake external API as
//! child processes (release builds, so their memory is theirs alone), and small HTTP helpers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub fn database_server() -> String {
    std::env::var("BENCH_DATABASE_SERVER")
        .unwrap_or_else(|_| test_support::DEFAULT_DATABASE_SERVER.into())
}

pub fn redis_url() -> String {
    std::env::var("BENCH_REDIS_URL").unwrap_or_else(|_| test_support::DEFAULT_REDIS_URL.into())
}

/// The release binaries next to this one (`cargo build --release --workspace --bins`).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    Ok(test_support::try_wait_for(what, timeout, Duration::from_millis(50), check).await?)
}

/// A fresh database with the service's schema, dropped when this value is.
pub struct BenchDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl BenchDb {
    pub async fn create() -> anyhow::Result<Self> {
        let name = format!(
            "order_sync_bench_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let url = format!("{}/{name}", database_server());
        order_sync::db::ensure_database(&url).await?;
        order_sync::db::connect_and_migrate(&url, 2).await?;
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .connect(&url)
            .await?;
        Ok(Self { name, url, pool })
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or(-1)
    }

    pub async fn drop_now(self) {
        self.pool.close().await;
        test_support::drop_database_on(&database_server(), &self.name).await;
    }
}

/// A child process killed when dropped.
pub struct ChildProcess {
    child: Child,
    pub port: u16,
}

impl ChildProcess {
    pub fn spawn(binary: &str, env: &[(&str, String)], port: u16) -> anyhow::Result<Self> {
        Self::spawn_logging_to(binary, env, port, None)
    }

    /// [`Self::spawn`], its log (stderr) written to `log` rather than to the bench's own stderr
    /// when given. `RUST_LOG` in `env` overrides the default level (`BENCH_CHILD_LOG`).
    pub fn spawn_logging_to(
        binary: &str,
        env: &[(&str, String)],
        port: u16,
        log: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(self::binary(binary)?);
        command
            .env(
                "RUST_LOG",
                std::env::var("BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(log) = log {
            let file = std::fs::File::create(log)
                .with_context(|| format!("create the log file {}", log.display()))?;
            command.stderr(file);
        }
        let child = command.spawn().with_context(|| format!("start {binary}"))?;
        Ok(Self { child, port })
    }

    /// Any program (not one of the release binaries: `redis-server` for the soak), with `args`,
    /// its stdout and stderr written to `log`.
    pub fn spawn_program(
        program: &Path,
        args: &[String],
        port: u16,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("create the log file {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {}", program.display()))?;
        Ok(Self { child, port })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How the process ended, if it has (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends `signal` (a name `kill -s` knows: `TERM`, `KILL`, `STOP`, `CONT`).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .context("run kill")?;
        anyhow::ensure!(
            status.success(),
            "kill -s {signal} {} failed",
            self.child.id()
        );
        Ok(())
    }

    /// Waits up to `timeout` for the process to end, polling every 50 ms.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Resident memory now (VmRSS), in MiB; 0 once the process is gone.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// CPU time the process has used so far (user and system, from `/proc/PID/stat`).
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The fields after the command name (which may hold spaces) start at its closing ')'.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
        Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / 100.0)
    }

    /// Peak resident memory so far (VmHWM), in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    pub async fn wait_ready(&mut self, path: &str) -> anyhow::Result<()> {
        let url = self.url(path);
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the child exited during start-up: {status}");
            }
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{url} was not ready within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The built-in fake external API, alone, with zero latency.
pub async fn start_fake() -> anyhow::Result<ChildProcess> {
    let port = free_port()?;
    let mut fake = ChildProcess::spawn(
        "fake-external-api",
        &[("FAKE_API_PORT", port.to_string())],
        port,
    )?;
    fake.wait_ready("/_fake/stats").await?;
    Ok(fake)
}

/// The service on `db`, calling `fake`, with `extra` settings.
pub async fn start_service(
    db: &BenchDb,
    fake: &ChildProcess,
    extra: &[(&str, &str)],
) -> anyhow::Result<ChildProcess> {
    start_service_logging_to(db, fake, extra, None).await
}

/// [`start_service`], its log written to `log` when given. `extra` overrides the defaults here
/// (`REDIS_PREFIX`, `RUST_LOG`, ...).
pub async fn start_service_logging_to(
    db: &BenchDb,
    fake: &ChildProcess,
    extra: &[(&str, &str)],
    log: Option<&Path>,
) -> anyhow::Result<ChildProcess> {
    let port = free_port()?;
    let mut env = vec![
        ("PORT", port.to_string()),
        ("HOST", "127.0.0.1".to_string()),
        ("DATABASE_URL", db.url.clone()),
        ("REDIS_URL", redis_url()),
        ("REDIS_PREFIX", format!("bench-{}", db.name)),
        ("EXTERNAL_API_URL", fake.url("")),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let mut service = ChildProcess::spawn_logging_to("order-sync", &env, port, log)?;
    service.wait_ready("/health").await?;
    Ok(service)
}

pub async fn get_json(url: &str) -> anyhow::Result<Value> {
    Ok(reqwest::get(url).await?.error_for_status()?.json().await?)
}

pub async fn post(url: &str) -> anyhow::Result<()> {
    reqwest::Client::new()
        .post(url)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// Nearest-rank percentile of sorted samples.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
