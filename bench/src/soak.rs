//! `bench soak`: the chaos soak (issue 25). Everyday faults, one every `--fault-every` seconds and
//! taken in turn, across several instances of the service under steady mixed load, and at the end
//! the checks that nothing was lost and nothing went out of order.
//!
//! Everything runs as real processes the soak starts itself, on free ports, in
//! `/tmp/order-sync-soak-PID`: a PostgreSQL cluster (so it can be restarted and its backends
//! terminated without touching the machine's own on 5432), a Redis with `appendonly yes` (as the
//! compose file runs it), the fake external API (which checks per-order overlap, order and
//! `Idempotency-Key` from the outside: `order_sync::external::fake`), and the instances, in
//! production mode. The load goes through the HTTP API only, as clients' would.
//!
//! The life of a run: [`run`] starts the servers, seeds orders and a canary, then runs side by
//! side the load ([`drive_load`]), the faults ([`Fault::inflict`], each in a task of its own so a
//! slow recovery never delays the next), the death watch ([`Cluster::watch_deaths`]), the
//! write-back check ([`verify_write_backs`]) and the memory samples. Then it stops the load,
//! waits for the faults, turns the fake's knobs off, waits for convergence and judges
//! ([`Verdict`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::StreamExt;
use order_sync::config::WebhookKey;
use order_sync::db::sync::SyncRow;
use order_sync::domain::SyncState;
use order_sync::external::payload::ExternalOrder;
use rand::RngExt;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::Semaphore;

use crate::harness::{free_port, BenchDb, ChildProcess};

/// The soak's flags, as `bench soak --help` would list them.
const USAGE: &str = "usage: bench soak [--minutes 60] [--fault-every 60] [--rate 200] \
[--instances 3] [--split] [--rate-limit 2*rate] [--outage-phase 30] [--orders 2000]";

/// What one run does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SoakArgs {
    /// How long the load and the faults go on.
    minutes: f64,
    /// Seconds between two faults.
    fault_every: u64,
    /// Operations per second through the HTTP API.
    rate: u32,
    instances: usize,
    /// One `ROLE=api` instance and `instances - 1` `ROLE=worker` ones, rather than all `ROLE=all`.
    split: bool,
    /// `RATE_LIMIT_PER_SEC`, for all instances together.
    rate_limit: u32,
    /// Seconds of each of the external outage's three phases (503, 429, stalls).
    outage_phase: u64,
    /// Orders seeded before the load starts.
    orders: u64,
}

impl SoakArgs {
    /// Parses the flags after `soak`; the error is one line naming the flag.
    pub(crate) fn parse(args: &[String]) -> Result<Self, String> {
        let mut parsed = SoakArgs {
            minutes: 60.0,
            fault_every: 60,
            rate: 200,
            instances: 3,
            split: false,
            rate_limit: 0,
            outage_phase: 30,
            orders: 2_000,
        };
        let mut rate_limit = None;
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            if flag == "--split" {
                parsed.split = true;
                continue;
            }
            let mut value = || {
                rest.next()
                    .ok_or_else(|| format!("{flag} needs a value ({USAGE})"))
            };
            match flag.as_str() {
                "--minutes" => parsed.minutes = number(flag, value()?)?,
                "--fault-every" => parsed.fault_every = number(flag, value()?)?,
                "--rate" => parsed.rate = number(flag, value()?)?,
                "--instances" => parsed.instances = number(flag, value()?)?,
                "--rate-limit" => rate_limit = Some(number(flag, value()?)?),
                "--outage-phase" => parsed.outage_phase = number(flag, value()?)?,
                "--orders" => parsed.orders = number(flag, value()?)?,
                other => return Err(format!("unknown argument {other:?} ({USAGE})")),
            }
        }
        if !(parsed.minutes > 0.0 && parsed.minutes.is_finite()) {
            return Err("--minutes must be above 0".into());
        }
        if parsed.fault_every == 0 || parsed.rate == 0 || parsed.outage_phase == 0 {
            return Err("--fault-every, --rate and --outage-phase must be above 0".into());
        }
        let least = if parsed.split { 2 } else { 1 };
        if parsed.instances < least {
            return Err(format!(
                "--instances must be at least {least} (with --split: one api and a worker)"
            ));
        }
        parsed.rate_limit = rate_limit.unwrap_or(parsed.rate.saturating_mul(2));
        if parsed.rate_limit == 0 {
            return Err("--rate-limit must be above 0".into());
        }
        Ok(parsed)
    }

    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.minutes * 60.0)
    }

    fn role(&self, index: usize) -> &'static str {
        match (self.split, index) {
            (false, _) => "all",
            (true, 0) => "api",
            (true, _) => "worker",
        }
    }
}

fn number<T: std::str::FromStr>(flag: &str, raw: &str) -> Result<T, String> {
    raw.parse()
        .map_err(|_| format!("{flag} must be a number, not {raw:?}"))
}

/// `bench soak ...`: runs the soak and prints its verdict. Exit 0 when it passed, 1 when it did not
/// (the logs stay in the temporary directory, named), 2 on bad flags.
pub(crate) fn main(args: &[String]) -> ExitCode {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}\n(the faults, the checks and the defaults: BENCHMARKS.md, \"Soak\")");
        return ExitCode::SUCCESS;
    }
    let args = match SoakArgs::parse(args) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match crate::start_runtime() {
        Ok(runtime) => runtime,
        Err(code) => return code,
    };
    let dir = PathBuf::from(format!("/tmp/order-sync-soak-{}", std::process::id()));
    let outcome = runtime.block_on(run(&args, &dir));
    // The runtime's end stops the tasks still running; the processes stop as their handles drop.
    drop(runtime);
    match outcome {
        Ok(verdict) if verdict.passed() => {
            let _ = std::fs::remove_dir_all(&dir);
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("soak FAILED: logs kept in {}", dir.display());
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!(
                "error: {err:#}\nsoak FAILED: logs kept in {}",
                dir.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// Tokens and keys of the instances (production mode refuses to start without them).
const API_TOKEN: &str = "soak-api-token";
const ADMIN_TOKEN: &str = "soak-admin-token-at-least-32-characters";
const EXTERNAL_TOKEN: &str = "soak-external-token";
const SHARD_LEASE_MS: u64 = 15_000;
/// The most requests of the load in flight at once; past it an operation is skipped and counted.
const MOST_IN_FLIGHT: usize = 1_024;
/// How long after its end a fault may take to recover before it counts as not recovered.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(600);
const CONVERGENCE_TIMEOUT: Duration = Duration::from_secs(900);
const WRITE_BACK_CHECK_EVERY: Duration = Duration::from_secs(20);
const RSS_SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// Every order's `placed_at`; the load never changes it, so no delivery time is before it.
const PLACED_AT: &str = "2025-06-01T10:00:00Z";
/// The first write-back's `delivered_on` (2025-06-15); each later one is a second later.
const FIRST_DELIVERED_ON: i64 = 1_750_000_000;

/// The everyday external API: 2% of calls answered 500, 0.2% 429 with `Retry-After: 1`.
fn everyday_knobs() -> Value {
    json!({"failure_rate": 0.02, "throttle_rate": 0.002, "retry_after_secs": 1})
}

/// The whole run; an `Err` is the soak itself failing (a server that would not start).
async fn run(args: &SoakArgs, dir: &Path) -> anyhow::Result<Verdict> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    eprintln!(
        "[soak] {} min, a fault every {} s, {} ops/s, {} instances{}, rate limit {}/s; in {}",
        args.minutes,
        args.fault_every,
        args.rate,
        args.instances,
        if args.split { " (1 api + workers)" } else { "" },
        args.rate_limit,
        dir.display()
    );
    let postgres = Postgres::start(dir).await?;
    let db_url = format!("postgres://postgres@127.0.0.1:{}/order_sync", postgres.port);
    order_sync::db::ensure_database(&db_url).await?;
    order_sync::db::connect_and_migrate(&db_url, 2).await?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&db_url)
        .await?;
    let redis = Redis::start(dir).await?;
    let fake_port = free_port()?;
    let mut fake = ChildProcess::spawn_logging_to(
        "fake-external-api",
        &[("FAKE_API_PORT", fake_port.to_string())],
        fake_port,
        Some(&dir.join("fake-external-api.log")),
    )?;
    fake.wait_ready("/_fake/stats").await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let fake = Fake {
        url: fake.url(""),
        http: http.clone(),
        _process: fake,
    };
    fake.set_knobs(everyday_knobs()).await?;
    let webhook_secret = format!("whsec_{}", uuid::Uuid::new_v4().simple());
    let cluster = Arc::new(Cluster {
        args: args.clone(),
        dir: dir.to_path_buf(),
        env: vec![
            ("ORDER_SYNC_ENV", "production".into()),
            ("HOST", "127.0.0.1".into()),
            ("DATABASE_URL", db_url.clone()),
            ("REDIS_URL", redis.url()),
            ("REDIS_PREFIX", "order-sync-soak".into()),
            ("EXTERNAL_API_URL", fake.url.clone()),
            ("EXTERNAL_API_TOKEN", EXTERNAL_TOKEN.into()),
            ("API_TOKENS", API_TOKEN.into()),
            ("ADMIN_TOKEN", ADMIN_TOKEN.into()),
            ("INBOUND_WEBHOOK_SECRET", webhook_secret.clone()),
            ("RATE_LIMIT_PER_SEC", args.rate_limit.to_string()),
            ("SHARD_LEASE_MS", SHARD_LEASE_MS.to_string()),
        ],
        slots: tokio::sync::Mutex::new(Vec::new()),
        generation: AtomicU64::new(0),
        deaths: Mutex::new(Vec::new()),
        watching: AtomicBool::new(true),
    });
    cluster.start_all().await?;
    let api = Api {
        http: http.clone(),
        cluster: cluster.clone(),
        webhook_key: WebhookKey::from_whsec(&webhook_secret)
            .context("the soak's own webhook key")?,
        write_backs_sent: AtomicU64::new(0),
    };
    let ledger = Arc::new(SharedLedger::default());
    eprintln!("[soak] seeding {} orders and the canary", args.orders);
    let canary = api.seed(&ledger, args.orders).await?;
    // The summary counts the load's acknowledgements, not the seeding's.
    ledger.with(|l| l.acked = 0);
    let soak = Arc::new(Soak {
        args: args.clone(),
        api,
        ledger,
        fake,
        cluster: cluster.clone(),
        postgres,
        redis: tokio::sync::Mutex::new(redis),
        pool: pool.clone(),
        canary,
        load_running: AtomicBool::new(true),
        operations: AtomicU64::new(0),
        write_backs_made: AtomicU64::new(0),
        faults: Mutex::new(BTreeMap::new()),
    });
    let started = Instant::now();
    let watcher = tokio::spawn(cluster.clone().watch_deaths());
    let load = tokio::spawn(drive_load(soak.clone()));
    let write_backs = tokio::spawn(verify_write_backs_every(soak.clone()));
    let memory = tokio::spawn(sample_memory(soak.clone()));
    let mut faults = Vec::new();
    let mut next_fault = Duration::from_secs(args.fault_every) / 2;
    let mut kind = 0;
    while next_fault < args.duration() {
        tokio::time::sleep_until((started + next_fault).into()).await;
        let fault = Fault::ALL[kind % Fault::ALL.len()];
        eprintln!(
            "[soak] {:>5.0} s: {}",
            started.elapsed().as_secs_f64(),
            fault.name()
        );
        faults.push(tokio::spawn(fault.inflict(soak.clone(), kind)));
        kind += 1;
        next_fault += Duration::from_secs(args.fault_every);
    }
    tokio::time::sleep_until((started + args.duration()).into()).await;
    eprintln!("[soak] load stops; waiting for the faults to end and recover");
    soak.load_running.store(false, Ordering::SeqCst);
    load.await.context("the load task")?;
    for fault in faults {
        fault.await.context("a fault's task")?;
    }
    let soaked = started.elapsed();
    soak.fake.set_knobs(json!({})).await?;
    let rss = memory.await.context("the memory task")?;
    write_backs.abort();
    verify_write_backs(&soak).await;
    eprintln!("[soak] waiting for convergence (at most {CONVERGENCE_TIMEOUT:?})");
    let converging = Instant::now();
    let db = BenchDb {
        name: "order_sync".into(),
        url: db_url,
        pool,
    };
    let convergence = converge(&soak, &db).await;
    let converged_after = converging.elapsed();
    cluster.watching.store(false, Ordering::SeqCst);
    watcher.abort();
    let verdict = judge(&soak, &db, convergence, converged_after, soaked, rss).await;
    verdict.print();
    cluster.stop_all().await;
    soak.redis.lock().await.stop().await;
    soak.postgres.stop().await;
    Ok(verdict)
}

/// What every part of a run shares.
struct Soak {
    args: SoakArgs,
    api: Api,
    ledger: Arc<SharedLedger>,
    fake: Fake,
    cluster: Arc<Cluster>,
    postgres: Postgres,
    /// Held by the Redis restart while it replaces the process.
    redis: tokio::sync::Mutex<Redis>,
    pool: PgPool,
    canary: i64,
    load_running: AtomicBool,
    operations: AtomicU64,
    /// Write-backs made so far: each has its own `delivered_on`.
    write_backs_made: AtomicU64,
    faults: Mutex<BTreeMap<&'static str, FaultRecord>>,
}

// ---------------------------------------------------------------------------------------------
// The servers the soak runs itself.

/// Runs `command` to its end on a blocking thread; the error carries its output.
async fn run_command(mut command: Command, what: &str) -> anyhow::Result<()> {
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let output = command.output().with_context(|| format!("run {what}"))?;
        if !output.status.success() {
            bail!(
                "{what} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    })
    .await?
}

/// A PostgreSQL cluster of the soak's own, so that it can be restarted and its backends
/// terminated while the machine's own server (5432) is left alone.
struct Postgres {
    bin: PathBuf,
    home: PathBuf,
    port: u16,
    /// As root, PostgreSQL's programs run as `postgres` (`initdb` refuses root).
    as_postgres: bool,
}

impl Postgres {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .context("PostgreSQL's programs (/usr/lib/postgresql/*/bin)")?
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                Some((version, entry.path().join("bin")))
            })
            .max()
            .map(|(_, bin)| bin)
            .context("no /usr/lib/postgresql/<version>/bin")?;
        let home = dir.join("pg");
        std::fs::create_dir_all(&home)?;
        let as_postgres = running_as_root();
        if as_postgres {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&home);
            run_command(chown, "chown the PostgreSQL directory").await?;
        }
        let postgres = Self {
            bin,
            home,
            port: free_port()?,
            as_postgres,
        };
        let mut initdb = postgres.command("initdb");
        initdb
            .arg("-D")
            .arg(postgres.home.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8"]);
        run_command(initdb, "initdb").await?;
        postgres.start_server().await?;
        Ok(postgres)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut runuser = Command::new("runuser");
            runuser.args(["-u", "postgres", "--"]).arg(program);
            runuser
        } else {
            Command::new(program)
        };
        command.current_dir(&self.home);
        command
    }

    async fn start_server(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=300",
            self.port,
            self.home.display()
        );
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.home.join("data"))
            .arg("-l")
            .arg(self.home.join("postgres.log"))
            .args(["-w", "-t", "120", "-o", &options, "start"]);
        run_command(pg_ctl, "pg_ctl start").await
    }

    async fn stop_server(&self, mode: &str) -> anyhow::Result<()> {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.home.join("data"))
            .args(["-w", "-t", "120", "-m", mode, "stop"]);
        run_command(pg_ctl, "pg_ctl stop").await
    }

    async fn stop(&self) {
        if let Err(e) = self.stop_server("fast").await {
            eprintln!("[soak] stopping PostgreSQL: {e:#}");
        }
    }
}

impl Drop for Postgres {
    /// A run that ends early (an error) must not leave its server running.
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.home.join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// A Redis of the soak's own, with the append-only file on as the compose file runs it, so a
/// restart keeps the backlog.
struct Redis {
    dir: PathBuf,
    port: u16,
    process: Option<ChildProcess>,
    restarts: u32,
}

impl Redis {
    async fn start(dir: &Path) -> anyhow::Result<Self> {
        let dir = dir.join("redis");
        std::fs::create_dir_all(&dir)?;
        let mut redis = Self {
            dir,
            port: free_port()?,
            process: None,
            restarts: 0,
        };
        redis.start_server().await?;
        Ok(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start_server(&mut self) -> anyhow::Result<()> {
        let args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--dir",
            &self.dir.display().to_string(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let log = self.dir.join(format!("redis-{}.log", self.restarts));
        self.process = Some(ChildProcess::spawn_program(
            Path::new("redis-server"),
            &args,
            self.port,
            &log,
        )?);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .cli(&["PING"])
            .await
            .is_ok_and(|out| out.contains("PONG"))
        {
            if Instant::now() > deadline {
                bail!(
                    "Redis did not answer PING within 60 s (log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// SIGTERM (Redis writes its append-only file and exits), then the same port and directory.
    async fn restart(&mut self) -> anyhow::Result<()> {
        if let Some(mut process) = self.process.take() {
            process.signal("TERM")?;
            if process.wait_exit(Duration::from_secs(30)).await.is_none() {
                bail!("Redis did not exit within 30 s of SIGTERM");
            }
        }
        self.restarts += 1;
        self.start_server().await
    }

    async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.signal("TERM");
            process.wait_exit(Duration::from_secs(30)).await;
        }
    }

    /// `redis-cli` against this server; its output.
    async fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let port = self.port.to_string();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let output = Command::new("redis-cli")
                .args(["-p", &port])
                .args(&args)
                .output()
                .context("run redis-cli")?;
            anyhow::ensure!(output.status.success(), "redis-cli {args:?} failed");
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        })
        .await?
    }
}

/// The fake external API's process and its control routes.
struct Fake {
    url: String,
    http: reqwest::Client,
    _process: ChildProcess,
}

impl Fake {
    /// Sets every knob at once (those not named are off).
    async fn set_knobs(&self, knobs: Value) -> anyhow::Result<()> {
        self.http
            .put(format!("{}/_fake/config", self.url))
            .json(&knobs)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    async fn stats(&self) -> anyhow::Result<FakeStats> {
        let stats: Value = self
            .http
            .get(format!("{}/_fake/stats", self.url))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let count = |key: &str| stats[key].as_u64().unwrap_or(0);
        Ok(FakeStats {
            calls: stats["calls"]
                .as_object()
                .map_or(0, |calls| calls.values().filter_map(Value::as_u64).sum()),
            duplicates: count("duplicates"),
            overlaps: count("overlaps"),
            reordered: count("reordered"),
            missing_idempotency_key: count("missing_idempotency_key"),
            violations: stats["violations"].clone(),
            answered: stats["answered"].clone(),
        })
    }

    /// The external system's own change of its copy of `order` (absent: nothing to change).
    async fn change_copy(&self, order: i64, fields: Value) -> anyhow::Result<()> {
        let answer = self
            .http
            .patch(format!("{}/_fake/orders/{order}", self.url))
            .json(&fields)
            .send()
            .await?;
        if answer.status() != reqwest::StatusCode::NOT_FOUND {
            answer.error_for_status()?;
        }
        Ok(())
    }

    /// The fake's copy of `order` (not a call: it is neither counted nor failed by the knobs).
    async fn copy_of(&self, order: i64) -> anyhow::Result<Option<Value>> {
        let answer = self
            .http
            .get(format!("{}/_fake/orders/{order}", self.url))
            .send()
            .await?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(answer.error_for_status()?.json().await?))
    }
}

/// What the fake saw, from `GET /_fake/stats`.
#[derive(Debug, Clone, Default)]
struct FakeStats {
    calls: u64,
    duplicates: u64,
    overlaps: u64,
    reordered: u64,
    missing_idempotency_key: u64,
    violations: Value,
    answered: Value,
}

// ---------------------------------------------------------------------------------------------
// The instances.

/// One instance's place: its role and, while it runs, its process. A fault takes the process out
/// before it kills or replaces it, so the death watch never counts the soak's own doing.
struct Slot {
    role: &'static str,
    process: Option<ChildProcess>,
}

/// The service's instances, and the deaths seen.
struct Cluster {
    args: SoakArgs,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    /// A tokio mutex, held briefly and never across a start: starting an instance takes seconds.
    slots: tokio::sync::Mutex<Vec<Slot>>,
    generation: AtomicU64,
    /// One line per instance that exited without the soak stopping it.
    deaths: Mutex<Vec<String>>,
    watching: AtomicBool,
}

impl Cluster {
    async fn start_all(&self) -> anyhow::Result<()> {
        let roles: Vec<&'static str> = (0..self.args.instances)
            .map(|i| self.args.role(i))
            .collect();
        let started = futures_util::future::try_join_all(
            roles
                .iter()
                .enumerate()
                .map(|(i, role)| self.spawn(i, role)),
        )
        .await?;
        let mut slots = self.slots.lock().await;
        *slots = roles
            .into_iter()
            .zip(started)
            .map(|(role, process)| Slot {
                role,
                process: Some(process),
            })
            .collect();
        Ok(())
    }

    /// A new instance for slot `index`, started and ready (`/health` 200); its log is
    /// `instance-{index}-{generation}.log`.
    async fn spawn(&self, index: usize, role: &'static str) -> anyhow::Result<ChildProcess> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        let port = free_port()?;
        let mut env: Vec<(&str, String)> = self.env.clone();
        env.extend([
            ("PORT", port.to_string()),
            ("ROLE", role.to_string()),
            ("INSTANCE_ID", format!("soak-{index}-{generation}")),
        ]);
        let log = self.dir.join(format!("instance-{index}-{generation}.log"));
        let mut process = ChildProcess::spawn_logging_to("order-sync", &env, port, Some(&log))?;
        process
            .wait_ready("/health")
            .await
            .with_context(|| format!("instance {index} (log: {})", log.display()))?;
        Ok(process)
    }

    /// Starts a replacement for slot `index` until one is up (a start may fail while PostgreSQL
    /// or Redis is down), and puts it in.
    async fn restart(&self, index: usize, role: &'static str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match self.spawn(index, role).await {
                Ok(process) => {
                    self.slots.lock().await[index].process = Some(process);
                    return Ok(());
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[soak] instance {index} restart: {e:#}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn take(&self, index: usize) -> Option<(&'static str, ChildProcess)> {
        let mut slots = self.slots.lock().await;
        let slot = slots.get_mut(index)?;
        Some((slot.role, slot.process.take()?))
    }

    /// The ports of the instances that serve the API now.
    async fn api_ports(&self) -> Vec<u16> {
        self.slots
            .lock()
            .await
            .iter()
            .filter(|slot| slot.role != "worker")
            .filter_map(|slot| slot.process.as_ref().map(|p| p.port))
            .collect()
    }

    async fn rss_mib(&self) -> f64 {
        self.slots
            .lock()
            .await
            .iter()
            .filter_map(|slot| slot.process.as_ref().map(ChildProcess::rss_mib))
            .sum()
    }

    /// Every 250 ms, an instance that exited without the soak stopping it is a death: counted,
    /// and restarted (in a task of its own, so the watch goes on).
    async fn watch_deaths(self: Arc<Self>) {
        while self.watching.load(Ordering::SeqCst) {
            let mut dead = Vec::new();
            {
                let mut slots = self.slots.lock().await;
                for (index, slot) in slots.iter_mut().enumerate() {
                    let exited = slot.process.as_mut().and_then(ChildProcess::exited);
                    if let Some(status) = exited {
                        slot.process = None;
                        dead.push((index, slot.role, status));
                    }
                }
            }
            for (index, role, status) in dead {
                let line = format!(
                    "instance {index} ({role}) exited on its own: {status} (logs: {}/instance-{index}-*.log)",
                    self.dir.display()
                );
                eprintln!("[soak] DEATH: {line}");
                if let Ok(mut deaths) = self.deaths.lock() {
                    deaths.push(line);
                }
                let cluster = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = cluster.restart(index, role).await {
                        eprintln!("[soak] instance {index} could not be restarted: {e:#}");
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// SIGTERM to every instance, as a deployment is stopped.
    async fn stop_all(&self) {
        let processes: Vec<ChildProcess> = {
            let mut slots = self.slots.lock().await;
            slots.iter_mut().filter_map(|s| s.process.take()).collect()
        };
        for mut process in processes {
            let _ = process.signal("TERM");
            process.wait_exit(Duration::from_secs(30)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The load and its ledger.

/// What the load was told, per order.
#[derive(Debug, Clone, Copy, Default)]
struct OrderRecord {
    /// The highest version an acknowledged write returned.
    acked_version: i64,
    delete_sent: bool,
}

/// What the load sent and what was acknowledged, to check the end state against.
#[derive(Debug, Default)]
struct Ledger {
    orders: HashMap<i64, OrderRecord>,
    /// Orders the load may still change (created, no delete sent); the canary is not one.
    live: Vec<i64>,
    /// Write-backs acknowledged and not yet found in `inbound_webhooks`.
    write_backs_unverified: Vec<String>,
    write_backs_acked: u64,
    write_backs_verified: u64,
    /// Acknowledged write-backs whose id was not in `inbound_webhooks` when looked for.
    write_backs_missing: Vec<String>,
    acked: u64,
    deletes_sent: u64,
    deletes_acked: u64,
    /// Refusals by operation and status (`PATCH 404`, `create connect`, ...).
    refusals: BTreeMap<String, u64>,
}

/// The ledger behind a std mutex that only these methods lock, each without an `.await`: a guard
/// can never be held across one (clippy's `await_holding_lock`).
#[derive(Debug, Default)]
struct SharedLedger(Mutex<Ledger>);

impl SharedLedger {
    fn with<T>(&self, change: impl FnOnce(&mut Ledger) -> T) -> T {
        let mut ledger = match self.0.lock() {
            Ok(ledger) => ledger,
            Err(poisoned) => poisoned.into_inner(),
        };
        change(&mut ledger)
    }

    fn created(&self, id: i64, version: i64, live: bool) {
        self.with(|l| {
            l.acked += 1;
            l.orders.entry(id).or_default().acked_version = version;
            if live {
                l.live.push(id);
            }
        });
    }

    fn written(&self, id: i64, version: i64) {
        self.with(|l| {
            l.acked += 1;
            let record = l.orders.entry(id).or_default();
            record.acked_version = record.acked_version.max(version);
        });
    }

    /// A recovery probe's change of the canary: checked like any write, not counted as load.
    fn canary_written(&self, id: i64, version: i64) {
        self.with(|l| {
            let record = l.orders.entry(id).or_default();
            record.acked_version = record.acked_version.max(version);
        });
    }

    fn any_live(&self) -> Option<i64> {
        self.with(|l| {
            (!l.live.is_empty()).then(|| l.live[rand::rng().random_range(0..l.live.len())])
        })
    }

    /// Takes a live order out of the load's reach and records that its delete is sent.
    fn delete_one(&self) -> Option<i64> {
        self.with(|l| {
            if l.live.is_empty() {
                return None;
            }
            let at = rand::rng().random_range(0..l.live.len());
            let id = l.live.swap_remove(at);
            l.orders.entry(id).or_default().delete_sent = true;
            l.deletes_sent += 1;
            Some(id)
        })
    }

    fn delete_acked(&self) {
        self.with(|l| {
            l.acked += 1;
            l.deletes_acked += 1;
        });
    }

    fn write_back_acked(&self, webhook_id: String) {
        self.with(|l| {
            l.acked += 1;
            l.write_backs_acked += 1;
            l.write_backs_unverified.push(webhook_id);
        });
    }

    fn refused(&self, what: String) {
        self.with(|l| *l.refusals.entry(what).or_default() += 1);
    }
}

/// The HTTP API of the instances, as a client sees it.
struct Api {
    http: reqwest::Client,
    cluster: Arc<Cluster>,
    webhook_key: WebhookKey,
    write_backs_sent: AtomicU64,
}

/// An operation of the load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Delete,
    WriteBack,
    Patch,
}

impl Operation {
    /// About 15% creates, 7% deletes, 12% write-backs, the rest PATCHes.
    fn pick(roll: f64) -> Self {
        match roll {
            r if r < 0.15 => Self::Create,
            r if r < 0.22 => Self::Delete,
            r if r < 0.34 => Self::WriteBack,
            _ => Self::Patch,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Delete => "delete",
            Self::WriteBack => "write-back",
            Self::Patch => "PATCH",
        }
    }
}

/// Why a request did not succeed: a status (a refusal, counted; not an error by itself) or no
/// answer at all.
enum Refusal {
    Status(u16),
    NoAnswer(&'static str),
    NoInstance,
}

impl Refusal {
    fn describe(&self, operation: &str) -> String {
        match self {
            Self::Status(status) => format!("{operation} {status}"),
            Self::NoAnswer(why) => format!("{operation} {why}"),
            Self::NoInstance => format!("{operation} no API instance up"),
        }
    }
}

impl Api {
    /// An instance serving the API, at random.
    async fn base(&self) -> Result<String, Refusal> {
        let ports = self.cluster.api_ports().await;
        if ports.is_empty() {
            return Err(Refusal::NoInstance);
        }
        let port = ports[rand::rng().random_range(0..ports.len())];
        Ok(format!("http://127.0.0.1:{port}"))
    }

    /// Sends `request` and reads a JSON answer (`Null` for an empty one).
    async fn send(request: reqwest::RequestBuilder) -> Result<Value, Refusal> {
        let answer = request.send().await.map_err(|e| {
            Refusal::NoAnswer(if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect error"
            } else {
                "request error"
            })
        })?;
        let status = answer.status();
        if !status.is_success() {
            return Err(Refusal::Status(status.as_u16()));
        }
        Ok(answer.json().await.unwrap_or(Value::Null))
    }

    async fn create_order(&self) -> Result<(i64, i64), Refusal> {
        let base = self.base().await?;
        let order = Self::send(
            self.http
                .post(format!("{base}/orders"))
                .bearer_auth(API_TOKEN)
                .json(&new_order()),
        )
        .await?;
        match (order["id"].as_i64(), order["version"].as_i64()) {
            (Some(id), Some(version)) => Ok((id, version)),
            _ => Err(Refusal::NoAnswer("answer without id or version")),
        }
    }

    async fn patch_order(&self, id: i64, patch: Value) -> Result<i64, Refusal> {
        let base = self.base().await?;
        let order = Self::send(
            self.http
                .patch(format!("{base}/orders/{id}"))
                .bearer_auth(API_TOKEN)
                .json(&patch),
        )
        .await?;
        order["version"]
            .as_i64()
            .ok_or(Refusal::NoAnswer("answer without version"))
    }

    async fn delete_order(&self, id: i64) -> Result<(), Refusal> {
        let base = self.base().await?;
        Self::send(
            self.http
                .delete(format!("{base}/orders/{id}"))
                .bearer_auth(API_TOKEN),
        )
        .await
        .map(drop)
    }

    /// A write-back signed as the external system signs it (Standard Webhooks): status
    /// delivered on `delivered_on`. Returns its `webhook-id`.
    async fn write_back(&self, id: i64, delivered_on: i64) -> Result<String, Refusal> {
        let base = self.base().await?;
        let n = self.write_backs_sent.fetch_add(1, Ordering::SeqCst);
        let body =
            json!({"order": {"status": "delivered", "delivered_on": delivered_on}}).to_string();
        let webhook_id = format!("msg_soak_{}_{n}", std::process::id());
        let timestamp = chrono::Utc::now().timestamp();
        let signature = order_sync::api::webhook::sign(
            &self.webhook_key,
            &webhook_id,
            timestamp,
            body.as_bytes(),
        );
        Self::send(
            self.http
                .put(format!("{base}/inbound/{id}"))
                .header("content-type", "application/json")
                .header("webhook-id", &webhook_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .body(body),
        )
        .await
        .map(|_| webhook_id)
    }

    /// An admin route (`POST`), retried for up to a minute while instances restart.
    async fn admin(&self, path: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let outcome = match self.base().await {
                Ok(base) => {
                    Self::send(
                        self.http
                            .post(format!("{base}{path}"))
                            .bearer_auth(ADMIN_TOKEN),
                    )
                    .await
                }
                Err(refusal) => Err(refusal),
            };
            match outcome {
                Ok(_) => return Ok(()),
                Err(refusal) if Instant::now() > deadline => {
                    bail!("POST {path}: {}", refusal.describe("admin"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// Creates the canary (first) and `orders` orders, 32 at a time; returns the canary's id.
    async fn seed(&self, ledger: &SharedLedger, orders: u64) -> anyhow::Result<i64> {
        let (canary, version) = self
            .create_order()
            .await
            .map_err(|r| anyhow::anyhow!("seeding the canary: {}", r.describe("create")))?;
        ledger.created(canary, version, false);
        let mut creating = futures_util::stream::iter(0..orders)
            .map(|_| self.create_order())
            .buffer_unordered(32);
        while let Some(created) = creating.next().await {
            let (id, version) =
                created.map_err(|r| anyhow::anyhow!("seeding: {}", r.describe("create")))?;
            ledger.created(id, version, true);
        }
        Ok(canary)
    }
}

/// A new order: pending, placed at [`PLACED_AT`].
fn new_order() -> Value {
    let mut rng = rand::rng();
    json!({
        "status": "pending",
        "placed_at": PLACED_AT,
        "amount": rng.random_range(100..100_000),
        "tax": rng.random_range(0..5_000),
        "street_address": format!("{} MG Road", rng.random_range(1..500)),
        "city": "Pune",
        "state": "Maharashtra",
        "country": "India",
        "pincode": format!("{:06}", rng.random_range(100_000..999_999)),
    })
}

/// A partial change the API accepts whatever the order's state: a delivery time only with
/// `delivered`, other statuses clear it.
fn random_patch() -> Value {
    let mut rng = rand::rng();
    match rng.random_range(0..5) {
        0 => json!({"amount": rng.random_range(100..100_000)}),
        1 => {
            json!({"tax": rng.random_range(0..5_000), "city": format!("Pune {}", rng.random_range(1..99))})
        }
        2 => json!({"status": "canceled", "delivered_at": null}),
        3 => json!({"status": "pending", "delivered_at": null}),
        _ => json!({"status": "delivered",
                    "delivered_at": format!("2025-06-{:02}T12:00:00Z", rng.random_range(2..28))}),
    }
}

/// The load: `rate` operations a second, each in a task of its own, at most [`MOST_IN_FLIGHT`] at
/// once. The due count is recomputed every 10 ms from the elapsed time, so a late tick catches up
/// rather than lowering the rate.
async fn drive_load(soak: Arc<Soak>) {
    let in_flight = Arc::new(Semaphore::new(MOST_IN_FLIGHT));
    let started = Instant::now();
    let mut issued: u64 = 0;
    while soak.load_running.load(Ordering::SeqCst) {
        let due = (started.elapsed().as_secs_f64() * f64::from(soak.args.rate)) as u64;
        while issued < due {
            issued += 1;
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                soak.ledger
                    .refused(format!("skipped: {MOST_IN_FLIGHT} requests in flight"));
                continue;
            };
            let soak = soak.clone();
            tokio::spawn(async move {
                one_operation(&soak).await;
                drop(permit);
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The last answers are part of the ledger: wait for every request in flight.
    let _all = in_flight.acquire_many(MOST_IN_FLIGHT as u32).await;
}

async fn one_operation(soak: &Soak) {
    let operation = Operation::pick(rand::rng().random());
    soak.operations.fetch_add(1, Ordering::Relaxed);
    let ledger = &soak.ledger;
    let outcome = match operation {
        Operation::Create => soak
            .api
            .create_order()
            .await
            .map(|(id, version)| ledger.created(id, version, true)),
        Operation::Delete => match ledger.delete_one() {
            Some(id) => soak
                .api
                .delete_order(id)
                .await
                .map(|()| ledger.delete_acked()),
            None => return,
        },
        Operation::WriteBack => match ledger.any_live() {
            Some(id) => {
                // The external system changes its own copy, then tells the service: a service
                // whose copy is synced takes the write-back without a call, trusting the external
                // side to hold it already.
                let delivered_on = FIRST_DELIVERED_ON
                    + soak.write_backs_made.fetch_add(1, Ordering::SeqCst) as i64;
                let own_change = json!({"status": "delivered", "delivery_date": delivered_on});
                if let Err(e) = soak.fake.change_copy(id, own_change).await {
                    ledger.refused(format!("write-back: the fake's own change failed: {e}"));
                }
                soak.api
                    .write_back(id, delivered_on)
                    .await
                    .map(|webhook_id| ledger.write_back_acked(webhook_id))
            }
            None => return,
        },
        Operation::Patch => match ledger.any_live() {
            Some(id) => soak
                .api
                .patch_order(id, random_patch())
                .await
                .map(|version| ledger.written(id, version)),
            None => return,
        },
    };
    if let Err(refusal) = outcome {
        ledger.refused(refusal.describe(operation.name()));
    }
}

/// Every [`WRITE_BACK_CHECK_EVERY`], the acknowledged write-backs are looked up in
/// `inbound_webhooks` (which keeps ids for 10 minutes).
async fn verify_write_backs_every(soak: Arc<Soak>) {
    loop {
        tokio::time::sleep(WRITE_BACK_CHECK_EVERY).await;
        verify_write_backs(&soak).await;
    }
}

/// One look-up of the unverified write-backs; when PostgreSQL is down they wait for the next.
async fn verify_write_backs(soak: &Soak) {
    let ids = soak
        .ledger
        .with(|l| std::mem::take(&mut l.write_backs_unverified));
    if ids.is_empty() {
        return;
    }
    let found: Result<Vec<String>, _> =
        sqlx::query_scalar("SELECT webhook_id FROM inbound_webhooks WHERE webhook_id = ANY($1)")
            .bind(&ids)
            .fetch_all(&soak.pool)
            .await;
    soak.ledger.with(|l| match found {
        Ok(found) => {
            let found: std::collections::HashSet<String> = found.into_iter().collect();
            for id in ids {
                if found.contains(&id) {
                    l.write_backs_verified += 1;
                } else {
                    l.write_backs_missing.push(id);
                }
            }
        }
        Err(_) => l.write_backs_unverified.extend(ids),
    });
}

/// Summed RSS of the instances, every [`RSS_SAMPLE_EVERY`] from the first minute on (start-up
/// and seeding are not growth) until the load stops. `(minute, MiB)` pairs.
async fn sample_memory(soak: Arc<Soak>) -> Vec<(f64, f64)> {
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        tokio::time::sleep(RSS_SAMPLE_EVERY).await;
        if !soak.load_running.load(Ordering::SeqCst) {
            return samples;
        }
        let minute = started.elapsed().as_secs_f64() / 60.0;
        samples.push((minute, soak.cluster.rss_mib().await));
    }
}

/// Least-squares slope of `(x, y)` samples (MiB per minute for the RSS samples); 0 for fewer
/// than two.
fn slope(samples: &[(f64, f64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_x = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_y = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let covariance: f64 = samples
        .iter()
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    let variance: f64 = samples.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

/// The fewest RSS samples the growth verdict is given for: below six minutes, a warming cache
/// and the rolling deploy's fresh processes weigh more than any leak.
const LEAST_RSS_SAMPLES: usize = 6;

/// Memory growth: `Some(true)` when the last third's mean is above 1.5 times the first third's
/// and 30 MiB more; `None` when there are too few samples to judge.
fn memory_unbounded(samples: &[(f64, f64)]) -> Option<bool> {
    if samples.len() < LEAST_RSS_SAMPLES {
        return None;
    }
    let third = samples.len() / 3;
    let mean = |part: &[(f64, f64)]| part.iter().map(|s| s.1).sum::<f64>() / part.len() as f64;
    let first = mean(&samples[..third]);
    let last = mean(&samples[samples.len() - third..]);
    Some(last > 1.5 * first && last > first + 30.0)
}

// ---------------------------------------------------------------------------------------------
// The faults.

/// The everyday faults, taken in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    RollingDeploy,
    Freeze,
    RedisConnectionsKilled,
    RedisRestart,
    PostgresBackendsTerminated,
    PostgresRestart,
    ExternalApiOutage,
    JobsAndPause,
}

/// One fault kind's record, for the table.
#[derive(Debug, Clone, Default)]
struct FaultRecord {
    times: u32,
    longest_fault: Duration,
    longest_recovery: Duration,
    /// Faults of this kind whose canary did not reach the external API within
    /// [`RECOVERY_TIMEOUT`].
    unrecovered: u32,
    /// What went wrong inflicting it (the soak's side: an instance that would not start).
    errors: Vec<String>,
    duplicates: u64,
    overlaps: u64,
    reordered: u64,
    calls: u64,
}

impl Fault {
    const ALL: [Fault; 9] = [
        Self::Kill,
        Self::RollingDeploy,
        Self::Freeze,
        Self::RedisConnectionsKilled,
        Self::RedisRestart,
        Self::PostgresBackendsTerminated,
        Self::PostgresRestart,
        Self::ExternalApiOutage,
        Self::JobsAndPause,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Kill => "SIGKILL + restart",
            Self::RollingDeploy => "rolling deploy",
            Self::Freeze => "frozen past lease",
            Self::RedisConnectionsKilled => "Redis connections killed",
            Self::RedisRestart => "Redis restart",
            Self::PostgresBackendsTerminated => "PostgreSQL backends terminated",
            Self::PostgresRestart => "PostgreSQL restart",
            Self::ExternalApiOutage => "external API 503/429/stall",
            Self::JobsAndPause => "resync + audit + pause",
        }
    }

    /// Inflicts the fault, then measures the recovery (from the fault's end until a canary
    /// change made after it has reached the external API), and records both with what the fake
    /// saw meanwhile (counted from the fault's start to its recovery; windows of faults that
    /// overlap count in both).
    async fn inflict(self, soak: Arc<Soak>, nth: usize) {
        let before = soak.fake.stats().await.unwrap_or_default();
        let started = Instant::now();
        let inflicted = self.act(&soak, nth).await;
        let ended = Instant::now();
        let recovery = recover(&soak, ended).await;
        let after = soak.fake.stats().await.unwrap_or_default();
        let mut faults = match soak.faults.lock() {
            Ok(faults) => faults,
            Err(poisoned) => poisoned.into_inner(),
        };
        let record = faults.entry(self.name()).or_default();
        record.times += 1;
        record.longest_fault = record.longest_fault.max(ended - started);
        match recovery {
            Some(took) => record.longest_recovery = record.longest_recovery.max(took),
            None => record.unrecovered += 1,
        }
        if let Err(e) = inflicted {
            eprintln!("[soak] {}: {e:#}", self.name());
            record.errors.push(format!("{e:#}"));
        }
        record.duplicates += after.duplicates.saturating_sub(before.duplicates);
        record.overlaps += after.overlaps.saturating_sub(before.overlaps);
        record.reordered += after.reordered.saturating_sub(before.reordered);
        record.calls += after.calls.saturating_sub(before.calls);
    }

    async fn act(self, soak: &Soak, nth: usize) -> anyhow::Result<()> {
        let cluster = &soak.cluster;
        // Instances taken in turn: the nth fault of a kind on instance nth % instances.
        let index = (nth / Self::ALL.len()) % soak.args.instances;
        match self {
            Self::Kill => {
                let (role, mut process) = cluster
                    .take(index)
                    .await
                    .context("the instance is not running")?;
                process.signal("KILL")?;
                process.wait_exit(Duration::from_secs(10)).await;
                cluster.restart(index, role).await
            }
            Self::RollingDeploy => {
                for index in 0..soak.args.instances {
                    let role = soak.args.role(index);
                    let new = cluster.spawn(index, role).await?;
                    let old = {
                        let mut slots = cluster.slots.lock().await;
                        slots[index].process.replace(new)
                    };
                    if let Some(mut old) = old {
                        old.signal("TERM")?;
                        let exited = old.wait_exit(Duration::from_secs(60)).await;
                        match exited {
                            Some(status) if status.success() => {}
                            Some(status) => bail!("instance {index} exited {status} on SIGTERM"),
                            None => bail!("instance {index} was still running 60 s after SIGTERM"),
                        }
                    }
                }
                Ok(())
            }
            Self::Freeze => {
                let pid = {
                    let slots = cluster.slots.lock().await;
                    slots[index].process.as_ref().map(ChildProcess::pid)
                }
                .context("the instance is not running")?;
                signal_pid(pid, "STOP")?;
                tokio::time::sleep(Duration::from_millis(SHARD_LEASE_MS + 2_000)).await;
                signal_pid(pid, "CONT")
            }
            Self::RedisConnectionsKilled => {
                let redis = soak.redis.lock().await;
                redis
                    .cli(&["CLIENT", "KILL", "TYPE", "normal"])
                    .await
                    .map(drop)
            }
            Self::RedisRestart => soak.redis.lock().await.restart().await,
            Self::PostgresBackendsTerminated => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                )
                .fetch_one(&soak.pool)
                .await?;
                Ok(())
            }
            Self::PostgresRestart => {
                soak.postgres.stop_server("fast").await?;
                soak.postgres.start_server().await
            }
            Self::ExternalApiOutage => {
                let phase = Duration::from_secs(soak.args.outage_phase);
                let with = |extra: Value| {
                    let mut knobs = everyday_knobs();
                    if let (Some(knobs), Some(extra)) = (knobs.as_object_mut(), extra.as_object()) {
                        knobs.extend(extra.clone());
                    }
                    knobs
                };
                soak.fake
                    .set_knobs(with(json!({"status_override": 503})))
                    .await?;
                tokio::time::sleep(phase).await;
                soak.fake
                    .set_knobs(with(json!({"status_override": 429, "retry_after_secs": 2})))
                    .await?;
                tokio::time::sleep(phase).await;
                soak.fake
                    .set_knobs(with(json!({"stall_ms": 3_000})))
                    .await?;
                tokio::time::sleep(phase).await;
                soak.fake.set_knobs(everyday_knobs()).await
            }
            Self::JobsAndPause => {
                soak.api.admin("/admin/resync").await?;
                soak.api.admin("/admin/audit").await?;
                soak.api.admin("/admin/sync/pause").await?;
                tokio::time::sleep(Duration::from_secs(5)).await;
                soak.api.admin("/admin/sync/resume").await
            }
        }
    }
}

fn signal_pid(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .context("run kill")?;
    anyhow::ensure!(status.success(), "kill -s {signal} {pid} failed");
    Ok(())
}

/// Time from `ended` until a canary change made after it is in the fake's copy; `None` past
/// [`RECOVERY_TIMEOUT`]. A change the API refuses (it may still be down) is tried again.
async fn recover(soak: &Soak, ended: Instant) -> Option<Duration> {
    let deadline = ended + RECOVERY_TIMEOUT;
    while Instant::now() < deadline {
        let amount = rand::rng().random_range(100..100_000);
        let Ok(version) = soak
            .api
            .patch_order(soak.canary, json!({"amount": amount}))
            .await
        else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        soak.ledger.canary_written(soak.canary, version);
        while Instant::now() < deadline {
            let copy = soak.fake.copy_of(soak.canary).await.ok().flatten();
            if copy.and_then(|c| c["version"].as_i64()) >= Some(version) {
                return Some(ended.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// The end: convergence and the verdict.

/// Every order row, tombstones included, as the sync engine reads it.
async fn all_rows(pool: &PgPool) -> anyhow::Result<Vec<SyncRow>> {
    Ok(sqlx::query_as(
        "SELECT id, status, placed_at, delivered_at, amount, tax, street_address, city, state,
                country, pincode, version, deleted_at IS NOT NULL AS deleted, sync_state,
                synced_version, sync_attempts, create_sent_at IS NOT NULL AS create_sent,
                false AS marked_now
         FROM orders ORDER BY id",
    )
    .fetch_all(pool)
    .await?)
}

/// Orders whose external copy is not what the database says: a live order's copy must equal
/// its payload (version included), a deleted or purged order must be absent. Ids are those of
/// the rows and of the ledger (a purged order has no row left).
async fn differences(soak: &Soak, rows: &[SyncRow]) -> anyhow::Result<Vec<String>> {
    let mut expected: BTreeMap<i64, Option<Value>> = rows
        .iter()
        .map(|row| {
            let payload = (!row.deleted)
                .then(|| serde_json::to_value(ExternalOrder::from(&row.order)))
                .transpose();
            payload.map(|payload| (row.id().get(), payload))
        })
        .collect::<Result<_, _>>()?;
    for id in soak
        .ledger
        .with(|l| l.orders.keys().copied().collect::<Vec<_>>())
    {
        expected.entry(id).or_insert(None);
    }
    let copies: Vec<(i64, Option<Value>, anyhow::Result<Option<Value>>)> =
        futures_util::stream::iter(expected)
            .map(|(id, want)| async move { (id, want, soak.fake.copy_of(id).await) })
            .buffer_unordered(32)
            .collect()
            .await;
    let mut differ = Vec::new();
    for (id, want, copy) in copies {
        let copy = copy?;
        if copy != want {
            differ.push(format!(
                "order {id}: database {}, external {}",
                want.map_or("absent".into(), |v| v.to_string()),
                copy.map_or("absent".into(), |v| v.to_string())
            ));
        }
    }
    differ.sort();
    Ok(differ)
}

/// Waits, at most [`CONVERGENCE_TIMEOUT`], until no order is behind
/// (`figures::wait_all_synced`) and every external copy equals the database. The differences
/// left when it gives up.
async fn converge(soak: &Soak, db: &BenchDb) -> Vec<String> {
    let deadline = Instant::now() + CONVERGENCE_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let synced = crate::figures::wait_all_synced(db, left).await;
        let differ = match all_rows(&soak.pool).await {
            Ok(rows) => differences(soak, &rows)
                .await
                .unwrap_or_else(|e| vec![format!("cannot compare: {e:#}")]),
            Err(e) => vec![format!("cannot read the orders: {e:#}")],
        };
        if synced.is_ok() && differ.is_empty() {
            return differ;
        }
        if Instant::now() > deadline {
            let mut left = differ;
            if let Err(e) = synced {
                left.insert(0, format!("{e:#}"));
            }
            return left;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Everything the run found, and whether it passed.
struct Verdict {
    soaked: Duration,
    operations: u64,
    orders: usize,
    acked: u64,
    refusals: BTreeMap<String, u64>,
    /// Acknowledged writes missing from the database (an order older than acknowledged, or gone
    /// without a delete sent).
    lost: Vec<String>,
    write_backs_acked: u64,
    write_backs_verified: u64,
    write_backs_missing: Vec<String>,
    deletes: (u64, u64),
    fake: FakeStats,
    deaths: Vec<String>,
    dead_orders: i64,
    /// Differences left when convergence gave up (empty: converged).
    unconverged: Vec<String>,
    converged_after: Duration,
    faults: BTreeMap<&'static str, FaultRecord>,
    rss: Vec<(f64, f64)>,
}

async fn judge(
    soak: &Soak,
    db: &BenchDb,
    unconverged: Vec<String>,
    converged_after: Duration,
    soaked: Duration,
    rss: Vec<(f64, f64)>,
) -> Verdict {
    let versions: HashMap<i64, (i64, bool)> = all_rows(&db.pool)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|row| (row.id().get(), (row.version(), row.deleted)))
        .collect();
    let mut lost: Vec<String> = soak.ledger.with(|l| {
        l.orders
            .iter()
            .filter_map(|(id, record)| match versions.get(id) {
                Some((version, _)) if *version >= record.acked_version => None,
                Some((_, deleted)) if *deleted && record.delete_sent => None,
                Some((version, _)) => Some(format!(
                    "order {id}: version {version} in the database, {} acknowledged",
                    record.acked_version
                )),
                None if record.delete_sent => None,
                None => Some(format!("order {id}: absent, and no delete was sent")),
            })
            .collect()
    });
    lost.sort();
    let dead_orders = sqlx::query_scalar("SELECT count(*) FROM orders WHERE sync_state = $1")
        .bind(SyncState::Dead)
        .fetch_one(&db.pool)
        .await
        .unwrap_or(-1);
    let fake = soak.fake.stats().await.unwrap_or_default();
    let deaths = soak
        .cluster
        .deaths
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    let faults = soak.faults.lock().map(|f| f.clone()).unwrap_or_default();
    soak.ledger.with(|l| Verdict {
        soaked,
        operations: soak.operations.load(Ordering::Relaxed),
        orders: l.orders.len(),
        acked: l.acked,
        refusals: l.refusals.clone(),
        lost,
        write_backs_acked: l.write_backs_acked,
        write_backs_verified: l.write_backs_verified,
        write_backs_missing: l.write_backs_missing.clone(),
        deletes: (l.deletes_sent, l.deletes_acked),
        fake,
        deaths,
        dead_orders,
        unconverged,
        converged_after,
        faults,
        rss,
    })
}

impl Verdict {
    fn faults_recovered(&self) -> bool {
        self.faults
            .values()
            .all(|f| f.unrecovered == 0 && f.errors.is_empty())
    }

    fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.write_backs_missing.is_empty()
            && self.fake.overlaps == 0
            && self.fake.reordered == 0
            && self.fake.missing_idempotency_key == 0
            && self.deaths.is_empty()
            && self.dead_orders == 0
            && self.unconverged.is_empty()
            && self.faults_recovered()
            && memory_unbounded(&self.rss) != Some(true)
    }

    fn memory(&self) -> String {
        let per_hour = slope(&self.rss) * 60.0;
        let verdict = match memory_unbounded(&self.rss) {
            None => "too short to judge growth",
            Some(false) => "bounded",
            Some(true) => "UNBOUNDED",
        };
        let last = self.rss.last().map_or(0.0, |s| s.1);
        format!(
            "RSS {last:.0} MiB summed, slope {per_hour:+.1} MiB/h over {} samples ({verdict})",
            self.rss.len()
        )
    }

    fn print(&self) {
        let refused: u64 = self.refusals.values().sum();
        println!(
            "soak {}: {:.1} min, {} operations ({} acknowledged, {refused} refused) on {} orders, \
             {} calls; {} lost, {} overlaps, {} reordered, {} without Idempotency-Key, {} duplicates; \
             {} deaths, {} dead orders; {}; write-backs {}/{} recorded; deletes {}/{} acknowledged; \
             faults {} recovered; {}",
            if self.passed() { "PASS" } else { "FAIL" },
            self.soaked.as_secs_f64() / 60.0,
            self.operations,
            self.acked,
            self.orders,
            self.fake.calls,
            self.lost.len(),
            self.fake.overlaps,
            self.fake.reordered,
            self.fake.missing_idempotency_key,
            self.fake.duplicates,
            self.deaths.len(),
            self.dead_orders,
            if self.unconverged.is_empty() {
                format!("converged {:.0} s after the load", self.converged_after.as_secs_f64())
            } else {
                format!("NOT converged ({} differences)", self.unconverged.len())
            },
            self.write_backs_verified,
            self.write_backs_acked,
            self.deletes.1,
            self.deletes.0,
            if self.faults_recovered() { "all" } else { "NOT all" },
            self.memory(),
        );
        println!();
        print!("{}", fault_table(&self.faults));
        println!();
        println!("refusals (answers other than success; counted, not errors by themselves):");
        for (what, count) in &self.refusals {
            println!("  {what}: {count}");
        }
        println!("external API answers: {}", self.fake.answered);
        let problems = [
            ("lost", &self.lost),
            ("write-backs not recorded", &self.write_backs_missing),
            ("deaths", &self.deaths),
            ("not converged", &self.unconverged),
        ];
        for (what, lines) in problems {
            if !lines.is_empty() {
                println!("{what} ({}):", lines.len());
                for line in lines.iter().take(20) {
                    println!("  {line}");
                }
            }
        }
        if self
            .fake
            .violations
            .as_array()
            .is_some_and(|v| !v.is_empty())
        {
            println!(
                "violations seen by the external API (first 20): {}",
                self.fake.violations
            );
        }
        for (name, record) in &self.faults {
            for error in &record.errors {
                println!("fault {name}: {error}");
            }
        }
    }
}

fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// The table per fault kind, in markdown, in the order the faults are taken.
fn fault_table(faults: &BTreeMap<&'static str, FaultRecord>) -> String {
    let mut table = String::from(
        "| fault | times | longest fault | longest recovery | duplicates | overlaps | reordered | calls |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for fault in Fault::ALL {
        let Some(record) = faults.get(fault.name()) else {
            continue;
        };
        let recovery = if record.unrecovered > 0 {
            format!("{} not recovered", record.unrecovered)
        } else {
            seconds(record.longest_recovery)
        };
        table.push_str(&format!(
            "| {} | {} | {} | {recovery} | {} | {} | {} | {} |\n",
            fault.name(),
            record.times,
            seconds(record.longest_fault),
            record.duplicates,
            record.overlaps,
            record.reordered,
            record.calls,
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<SoakArgs, String> {
        let words: Vec<String> = line.split_whitespace().map(String::from).collect();
        SoakArgs::parse(&words)
    }

    #[test]
    fn the_defaults_are_an_hour_at_200_a_second_on_three_instances() {
        let parsed = args("").expect("defaults");
        assert_eq!(parsed.minutes, 60.0);
        assert_eq!(
            (parsed.fault_every, parsed.rate, parsed.instances),
            (60, 200, 3)
        );
        assert_eq!(
            (parsed.rate_limit, parsed.outage_phase, parsed.orders),
            (400, 30, 2_000)
        );
        assert!(!parsed.split);
        assert_eq!(parsed.role(1), "all");
    }

    #[test]
    fn flags_set_the_run_and_split_makes_one_api_and_workers() {
        let parsed =
            args("--minutes 3 --fault-every 20 --outage-phase 8 --rate 50 --split").expect("flags");
        assert_eq!(parsed.duration(), Duration::from_secs(180));
        assert_eq!((parsed.fault_every, parsed.outage_phase), (20, 8));
        assert_eq!(parsed.rate_limit, 100, "twice the rate unless given");
        assert_eq!(
            (parsed.role(0), parsed.role(1), parsed.role(2)),
            ("api", "worker", "worker")
        );
        assert_eq!(args("--rate-limit 7").expect("flag").rate_limit, 7);
    }

    #[test]
    fn an_unknown_flag_or_a_bad_value_is_one_line_naming_it() {
        for (line, names) in [
            ("--minuts 3", "--minuts"),
            ("--rate fast", "--rate"),
            ("--minutes", "--minutes"),
            ("--instances 1 --split", "--instances"),
            ("--minutes 0", "--minutes"),
        ] {
            let error = args(line).expect_err(line);
            assert!(error.contains(names), "{line}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn the_slope_is_the_least_squares_fit() {
        assert_eq!(slope(&[]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0)]), 0.0);
        let line: Vec<(f64, f64)> = (0..10)
            .map(|m| (m as f64, 100.0 + 2.0 * m as f64))
            .collect();
        assert!((slope(&line) - 2.0).abs() < 1e-9);
        let flat_noisy = [(0.0, 10.0), (1.0, 12.0), (2.0, 10.0), (3.0, 12.0)];
        assert!((slope(&flat_noisy) - 0.4).abs() < 1e-9);
    }

    #[test]
    fn memory_is_unbounded_only_when_the_last_third_is_half_again_and_30_mib_above_the_first() {
        let samples = |values: &[f64]| -> Vec<(f64, f64)> {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v))
                .collect()
        };
        assert_eq!(memory_unbounded(&samples(&[10.0, 90.0, 200.0])), None);
        assert_eq!(
            memory_unbounded(&samples(&[100.0, 100.0, 120.0, 140.0, 160.0, 200.0])),
            Some(true)
        );
        // Half again, but only 15 MiB more: small processes are noisy.
        assert_eq!(
            memory_unbounded(&samples(&[30.0, 30.0, 35.0, 40.0, 45.0, 45.0])),
            Some(false)
        );
        assert_eq!(
            memory_unbounded(&samples(&[300.0, 300.0, 310.0, 320.0, 330.0, 340.0])),
            Some(false)
        );
    }

    #[test]
    fn the_table_lists_the_faults_in_turn_with_unrecovered_ones_named() {
        let mut faults = BTreeMap::new();
        faults.insert(
            Fault::RedisRestart.name(),
            FaultRecord {
                times: 2,
                longest_fault: Duration::from_millis(1_500),
                longest_recovery: Duration::from_millis(2_300),
                duplicates: 3,
                calls: 400,
                ..FaultRecord::default()
            },
        );
        faults.insert(
            Fault::Kill.name(),
            FaultRecord {
                times: 1,
                unrecovered: 1,
                ..FaultRecord::default()
            },
        );
        let table = fault_table(&faults);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| fault | times | longest fault | longest recovery | duplicates | overlaps | reordered | calls |"
        );
        assert_eq!(
            lines[2],
            "| SIGKILL + restart | 1 | 0.0 s | 1 not recovered | 0 | 0 | 0 | 0 |"
        );
        assert_eq!(
            lines[3],
            "| Redis restart | 2 | 1.5 s | 2.3 s | 3 | 0 | 0 | 400 |"
        );
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn the_mix_is_mostly_patches() {
        assert_eq!(Operation::pick(0.10), Operation::Create);
        assert_eq!(Operation::pick(0.20), Operation::Delete);
        assert_eq!(Operation::pick(0.30), Operation::WriteBack);
        assert_eq!(Operation::pick(0.50), Operation::Patch);
    }
}
