//! Redis faults ridden out under load, with nothing lost and nothing restarted.
//!
//! Each test runs the service binary against a database of its own and a redis-server of its own
//! (started with `--enable-debug-command yes`, so the test can stall it), a recording external API
//! that answers after a small delay, and a load driver that creates and PATCHes orders through
//! the HTTP API at a steady rate for the whole test. The faults:
//!
//! - Redis stalls past the client's 5 s response timeout (`DEBUG SLEEP 7`, twice). Commands
//!   time out in the client yet run when Redis wakes: a publish may land twice, an
//!   acknowledgement may land unreported, and a read may deliver entries whose reply is lost.
//! - Redis drops every client connection (`CLIENT KILL TYPE normal`, five times, 1-2 s apart):
//!   commands in flight fail, some after Redis ran them.
//!
//!   In both, a lost read reply is made certain: the pipeline that stalls Redis or drops the
//!   connections first appends an event of the test's own (a repeat of an order's create), which
//!   serves the dispatcher's blocked read at once; its reply would leave after the stall, when
//!   the client has given up, or on a connection about to be dropped. The entry then sits
//!   pending, delivered but never handled, until the engine reclaims it.
//! - Entries not yet delivered to the consumer group are deleted (XDEL) while the load goes on:
//!   the orders they were the only event of must be published again by the reconciler within a
//!   bound, under load, not only once the backlog is empty.
//!
//! Each test ends the same way: the load stops; within a stated deadline every order the API
//! acknowledged reaches `sync.state == "synced"` with `synced_version == version`, and every
//! stream drains empty (nothing left pending); the external API's last successful call for each
//! order carries the database's version; and the service process is still the one started.

use order_sync::domain::OrderId;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use order_sync::engine::backlog::{EventKind, SyncEvent};
use order_sync::engine::keys::{Keys, GROUP};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamInfoGroupsReply, StreamPendingReply, StreamRangeReply};
use redis::AsyncCommands;
use serde_json::Value;
use sqlx::PgPool;

use crate::external::{ExternalApi, TOKEN};
use crate::process::{
    create_order_at, log_path, patch_amount_at, service_env, OwnDatabase, OwnRedis, ServiceProcess,
};

/// How long every acknowledged order may take to be synced, and the streams to drain, once the
/// load stops. It covers entries left pending by a fault, which are reclaimed only once pending
/// for about 15 s.
const CONVERGE_WITHIN: Duration = Duration::from_secs(30);

/// How long the test may look for a burst's creates published and not yet delivered.
const UNDELIVERED_FOUND_WITHIN: Duration = Duration::from_secs(10);

/// How long an order whose only event was deleted may stay behind while the load runs.
const RECONCILED_WITHIN: Duration = Duration::from_secs(30);

/// The service under test with everything it talks to, each of the test's own.
struct Rig {
    // First: the service is killed before what it talks to goes away.
    service: ServiceProcess,
    api: ExternalApi,
    redis: OwnRedis,
    keys: Keys,
    pool: PgPool,
    log: std::path::PathBuf,
    http: reqwest::Client,
    // Last: dropped after the service and the pool, which hold connections to it.
    _db: OwnDatabase,
}

impl Rig {
    /// Starts a debuggable redis-server, an external API answering after `delay`, and the
    /// service (with `extra` variables); `name` names its log file.
    async fn start(name: &str, delay: Duration, extra: &[(&str, &str)]) -> Self {
        let redis = OwnRedis::start_with(&["--enable-debug-command", "yes"]).await;
        let api = ExternalApi::start(delay).await;
        let db = OwnDatabase::new();
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let (api_url, redis_url) = (api.url(), redis.url());
        let mut vars = vec![
            ("EXTERNAL_API_URL", api_url.as_str()),
            ("EXTERNAL_API_TOKEN", TOKEN),
            ("REDIS_URL", redis_url.as_str()),
        ];
        vars.extend_from_slice(extra);
        let env = service_env(&db, &prefix, &vars);
        let log = log_path(&format!("{name}-{}", db.name));
        let mut service = ServiceProcess::start(&env, &log);
        service.wait_ready().await;
        let pool = db.pool().await;
        Self {
            service,
            api,
            redis,
            keys: Keys::new(&prefix, 8),
            pool,
            log,
            http: reqwest::Client::new(),
            _db: db,
        }
    }

    /// A connection of the test's own to its redis-server, with no response timeout (a `DEBUG
    /// SLEEP` answers only when it is over).
    /// A connection of the test's own, without a response timeout: it waits out the stalls it
    /// makes.
    async fn redis(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
        redis::Client::open(self.redis.url())?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// A pipeline that first appends a repeat of `order_id`'s create to its shard's stream.
    /// Redis serves the dispatcher's blocked read with it at once, so what the pipeline does next
    /// (stall, drop connections) happens between the read's delivery and its reply.
    fn pipeline_after_repeat_of_create(&self, order_id: i64) -> redis::Pipeline {
        let repeat = SyncEvent {
            order_id: OrderId::new(order_id),
            version: 1,
            kind: EventKind::Change,
            committed_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let mut pipe = redis::pipe();
        pipe.xadd(
            self.keys.stream(self.keys.shard_of(OrderId::new(order_id))),
            "*",
            &repeat.fields(),
        );
        pipe
    }

    /// Stalls Redis for `secs` seconds (`DEBUG SLEEP`) right after a repeat of `order_id`'s
    /// create; returns the repeat's entry id and how long the stall took.
    async fn stall_redis_after_repeat(&self, order_id: i64, secs: u64) -> (String, Duration) {
        let mut redis = self.redis().await.expect("connect to the test's redis");
        let started = Instant::now();
        let (entry_id, ()): (String, ()) = self
            .pipeline_after_repeat_of_create(order_id)
            .cmd("DEBUG")
            .arg("SLEEP")
            .arg(secs)
            .query_async(&mut redis)
            .await
            .expect("XADD and DEBUG SLEEP");
        (entry_id, started.elapsed())
    }

    /// Drops every normal client connection (`CLIENT KILL TYPE normal`) right after a repeat of
    /// `order_id`'s create; returns the repeat's entry id and how many connections were dropped.
    /// The command skips the connection that sends it, and a fresh one is used each time anyway.
    async fn drop_redis_connections_after_repeat(&self, order_id: i64) -> (String, u64) {
        let mut redis = self.redis().await.expect("connect to the test's redis");
        self.pipeline_after_repeat_of_create(order_id)
            .cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut redis)
            .await
            .expect("XADD and CLIENT KILL")
    }

    /// Deletes entries that are creates of `candidates` and have not been delivered to the
    /// consumer group yet, at most one per shard and `wanted` in all; returns their orders.
    ///
    /// Each XDEL runs in one MULTI with a read of the group's last-delivered id, so an entry
    /// counts only if it was still undelivered when it was deleted (it cannot be delivered later).
    async fn delete_undelivered_creates(
        &self,
        candidates: &HashSet<i64>,
        wanted: usize,
    ) -> Vec<i64> {
        let mut redis = self.redis().await.expect("connect to the test's redis");
        let mut deleted = Vec::new();
        for stream in self.keys.streams() {
            if deleted.len() == wanted {
                break;
            }
            let last = last_delivered(&mut redis, &stream).await;
            let unread: StreamRangeReply = redis::cmd("XRANGE")
                .arg(&stream)
                .arg(format!("({last}"))
                .arg("+")
                .arg("COUNT")
                .arg(50)
                .query_async(&mut redis)
                .await
                .expect("XRANGE");
            for entry in unread.ids {
                let order_id: Option<i64> = entry.get("order_id");
                let version: Option<i64> = entry.get("version");
                let Some(order_id) = order_id.filter(|id| candidates.contains(id)) else {
                    continue;
                };
                if version != Some(1) {
                    continue;
                }
                let (groups, removed): (StreamInfoGroupsReply, u64) = redis::pipe()
                    .atomic()
                    .xinfo_groups(&stream)
                    .xdel(&stream, &[&entry.id])
                    .query_async(&mut redis)
                    .await
                    .expect("XINFO GROUPS and XDEL in one MULTI");
                let last = group_last_delivered(&groups);
                if removed == 1 && entry_id(&entry.id) > entry_id(&last) {
                    deleted.push(order_id);
                    break;
                }
            }
        }
        deleted
    }

    /// Polls until every order in the database is synced at its version, and then until every
    /// stream is empty (each entry acknowledged and deleted, none left pending); returns how long
    /// each took. At the deadline, panics naming what is stuck.
    async fn wait_until_drained(&self, within: Duration) -> (Duration, Duration) {
        let started = Instant::now();
        loop {
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM orders WHERE NOT (sync_state = 'synced' AND synced_version = version)",
            )
            .fetch_one(&self.pool)
            .await
            .expect("count orders behind");
            if behind == 0 {
                break;
            }
            if started.elapsed() > within {
                panic!(
                    "{behind} orders not synced {within:?} after the load stopped\n{}",
                    self.describe_stuck().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let synced = started.elapsed();
        let mut redis = self.redis().await.expect("connect to the test's redis");
        loop {
            let mut entries = 0;
            for stream in self.keys.streams() {
                entries += redis.xlen::<_, u64>(&stream).await.expect("XLEN");
            }
            if entries == 0 {
                return (synced, started.elapsed());
            }
            if started.elapsed() > within {
                panic!(
                    "every order is synced, but {entries} entries are still in the streams \
                     {within:?} after the load stopped\n{}",
                    self.describe_stuck().await
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The orders behind and, per stream, its length, the group's pending entries and those
    /// pending for over 10 s: what a failure message needs.
    async fn describe_stuck(&self) -> String {
        let rows: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "SELECT id, version, synced_version, sync_state FROM orders
             WHERE NOT (sync_state = 'synced' AND synced_version = version) ORDER BY id LIMIT 20",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap_or_default();
        let mut text =
            String::from("orders behind (id, version, synced_version, state), first 20:\n");
        for row in rows {
            text += &format!("  {row:?}\n");
        }
        let Ok(mut redis) = self.redis().await else {
            return text + "(Redis unreachable)";
        };
        for stream in self.keys.streams() {
            let length: u64 = redis.xlen(&stream).await.unwrap_or(0);
            let pending: Option<StreamPendingReply> = redis.xpending(&stream, GROUP).await.ok();
            let pending = pending.map(|p| p.count()).unwrap_or(0);
            let stale: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
                .arg(&stream)
                .arg(GROUP)
                .arg("IDLE")
                .arg(10_000)
                .arg("-")
                .arg("+")
                .arg(10)
                .query_async(&mut redis)
                .await
                .unwrap_or_default();
            let mut stale_orders = Vec::new();
            for (id, ..) in &stale {
                let entry: StreamRangeReply =
                    redis.xrange(&stream, id, id).await.unwrap_or_default();
                stale_orders.extend(entry.ids.iter().map(|e| {
                    (
                        e.id.clone(),
                        e.get::<i64>("order_id"),
                        e.get::<i64>("version"),
                    )
                }));
            }
            text += &format!(
                "{stream}: length {length}, pending {pending}, pending over 10 s \
                 (id, order, version): {stale_orders:?}\n"
            );
        }
        text + &format!("service log: {}", self.log.display())
    }

    /// Every acknowledged order is synced at its current version (at least the acknowledged
    /// one), as the API shows it, and the external API's last successful call for it carries
    /// that version.
    async fn assert_every_acknowledged_order_synced(&self, acknowledged: &BTreeMap<i64, i64>) {
        let mut last_ok: HashMap<i64, i64> = HashMap::new();
        for call in self.api.recorder.calls() {
            if call.status == 200 {
                last_ok.insert(call.order_id, call.version);
            }
        }
        for (&id, &acked) in acknowledged {
            let order: Value = self
                .http
                .get(self.service.url(&format!("/orders/{id}")))
                .send()
                .await
                .expect("GET sent")
                .json()
                .await
                .expect("order JSON");
            let version = order["version"].as_i64().expect("a version");
            assert!(
                version >= acked,
                "order {id}: acknowledged v{acked}, now v{version}"
            );
            assert_eq!(
                (
                    order["sync"]["state"].as_str(),
                    order["sync"]["synced_version"].as_i64()
                ),
                (Some("synced"), Some(version)),
                "order {id}"
            );
            assert_eq!(
                last_ok.get(&id),
                Some(&version),
                "order {id}: the external API's last successful call"
            );
        }
    }

    /// Lines of the service's log that contain `text`.
    fn log_lines_with(&self, text: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }
}

/// The group's last-delivered id on `stream`.
async fn last_delivered(redis: &mut MultiplexedConnection, stream: &str) -> String {
    let groups: StreamInfoGroupsReply = redis.xinfo_groups(stream).await.expect("XINFO GROUPS");
    group_last_delivered(&groups)
}

fn group_last_delivered(groups: &StreamInfoGroupsReply) -> String {
    groups
        .groups
        .iter()
        .find(|g| g.name == GROUP)
        .map(|g| g.last_delivered_id.clone())
        .expect("the service created its consumer group")
}

/// A stream entry id (`ms-seq`) as a comparable pair.
fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// What the API acknowledged.
#[derive(Default)]
struct Ledger {
    /// Each order's highest acknowledged version.
    versions: BTreeMap<i64, i64>,
    /// Orders the load may PATCH; the others (every other create) it never touches again.
    patchable: Vec<i64>,
    writes: u64,
    failures: u64,
}

/// A steady stream of writes through the HTTP API: 40% creates, 60% PATCHes of a random order
/// from the patchable half, one every `1 / per_sec` seconds, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    started: Instant,
    worker: actix_rt::task::JoinHandle<()>,
}

impl Load {
    fn start(base: String, per_sec: u32, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let worker = actix_rt::spawn(drive(base, per_sec, seed, stop.clone(), ledger.clone()));
        Self {
            stop,
            ledger,
            started: Instant::now(),
            worker,
        }
    }

    fn writes(&self) -> u64 {
        self.ledger.lock().unwrap().writes
    }

    /// The order created last.
    fn latest_order(&self) -> i64 {
        let ledger = self.ledger.lock().unwrap();
        *ledger
            .versions
            .keys()
            .last()
            .expect("the load has created an order")
    }

    fn is_running(&self) -> bool {
        !self.worker.is_finished()
    }

    /// Records an order created outside the load (never touched by it).
    fn record_created(&self, id: i64) {
        self.ledger.lock().unwrap().versions.insert(id, 1);
    }

    /// Lets the load run for `how_long`: the test's duration, not a wait for anything.
    async fn run_for(&self, how_long: Duration) {
        tokio::time::sleep(how_long).await;
    }

    /// Waits (up to 10 s) until the load has made `writes` writes.
    async fn wait_for_writes(&self, writes: u64) {
        crate::helpers::wait_for("the load to get going", Duration::from_secs(10), || async {
            (self.writes() >= writes).then_some(())
        })
        .await;
    }

    /// Stops the load; returns what was acknowledged and how long the load ran.
    async fn stop(self) -> (Ledger, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.await.expect("the load worker");
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap());
        (ledger, self.started.elapsed())
    }
}

async fn drive(
    base: String,
    per_sec: u32,
    seed: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_sec);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut creates = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let target = {
            let ledger = ledger.lock().unwrap();
            let patchable = &ledger.patchable;
            (!patchable.is_empty() && rng.random_range(0..100) >= 40)
                .then(|| patchable[rng.random_range(0..patchable.len())])
        };
        let acked = match target {
            Some(id) => patch(&http, &base, id, rng.random_range(100..10_000)).await,
            None => create(&http, &base).await,
        };
        let mut ledger = ledger.lock().unwrap();
        ledger.writes += 1;
        match acked {
            // Answers can only come in order here (one write at a time), yet keep the highest.
            Some((id, version)) => match ledger.versions.get(&id).copied() {
                Some(known) => {
                    ledger.versions.insert(id, known.max(version));
                }
                None => {
                    ledger.versions.insert(id, version);
                    creates += 1;
                    if creates.is_multiple_of(2) {
                        ledger.patchable.push(id);
                    }
                }
            },
            None => ledger.failures += 1,
        }
    }
}

async fn create(http: &reqwest::Client, base: &str) -> Option<(i64, i64)> {
    let order = create_order_at(http, base).await?;
    Some((order["id"].as_i64()?, order["version"].as_i64()?))
}

async fn patch(http: &reqwest::Client, base: &str, id: i64, amount: i64) -> Option<(i64, i64)> {
    Some((id, patch_amount_at(http, base, id, amount).await?))
}

#[actix_web::test]
async fn redis_stalling_past_the_response_timeout_under_load_loses_no_order() {
    let mut rig = Rig::start("redis-stall", Duration::from_millis(10), &[]).await;
    let per_sec = 30;
    let load = Load::start(rig.service.url(""), per_sec, 1);
    load.wait_for_writes(30).await;

    let mut repeats = Vec::new();
    for _ in 0..2 {
        let (before, order_id) = (load.writes(), load.latest_order());
        let (entry_id, stalled) = rig.stall_redis_after_repeat(order_id, 7).await;
        let during = load.writes() - before;
        assert!(
            stalled >= Duration::from_millis(6_900),
            "DEBUG SLEEP 7 answered after {stalled:?}: Redis did not stall"
        );
        // Writes go to PostgreSQL only: a stalled Redis must not hold them up.
        assert!(
            during >= 7 * u64::from(per_sec) / 2,
            "only {during} writes were answered during a 7 s stall"
        );
        eprintln!("stall: {stalled:?}, {during} writes answered meanwhile");
        repeats.push((order_id, entry_id));
        load.run_for(Duration::from_secs(2)).await;
    }
    let (ledger, ran) = load.stop().await;

    let (synced, drained) = rig.wait_until_drained(CONVERGE_WITHIN).await;
    rig.assert_every_acknowledged_order_synced(&ledger.versions)
        .await;
    assert!(rig.service.is_running(), "the service was restarted");
    eprintln!(
        "redis stall: repeats (order, entry) {repeats:?}; {} orders, {} writes in {ran:?} ({} \
         failed), all synced {synced:?} and the streams empty {drained:?} after the load \
         stopped; log lines: {} 'reading the backlog failed', {} 'reclaimed'",
        ledger.versions.len(),
        ledger.writes,
        ledger.failures,
        rig.log_lines_with("reading the backlog failed"),
        rig.log_lines_with("reclaimed")
    );
}

#[actix_web::test]
async fn redis_dropping_every_connection_under_load_loses_no_order() {
    let mut rig = Rig::start("redis-client-kill", Duration::from_millis(10), &[]).await;
    let load = Load::start(rig.service.url(""), 30, 2);
    load.wait_for_writes(30).await;

    let mut rng = StdRng::seed_from_u64(7);
    let mut dropped = Vec::new();
    let mut repeats = Vec::new();
    for _ in 0..5 {
        let order_id = load.latest_order();
        let (entry_id, count) = rig.drop_redis_connections_after_repeat(order_id).await;
        // The service holds connections of its own at all times: there is something to drop.
        assert!(count >= 1, "CLIENT KILL found no connection to drop");
        dropped.push(count);
        repeats.push((order_id, entry_id));
        load.run_for(Duration::from_millis(rng.random_range(1_000..2_000)))
            .await;
    }
    let (ledger, ran) = load.stop().await;

    let (synced, drained) = rig.wait_until_drained(CONVERGE_WITHIN).await;
    rig.assert_every_acknowledged_order_synced(&ledger.versions)
        .await;
    assert!(rig.service.is_running(), "the service was restarted");
    eprintln!(
        "redis client kill: connections dropped {dropped:?}; repeats (order, entry) \
         {repeats:?}; {} orders, {} writes in {ran:?} ({} \
         failed), all synced {synced:?} and the streams empty {drained:?} after the load stopped; \
         {} 'reclaimed' log lines",
        ledger.versions.len(),
        ledger.writes,
        ledger.failures,
        rig.log_lines_with("reclaimed")
    );
}

#[actix_web::test]
async fn an_undelivered_create_deleted_from_its_stream_is_republished_while_the_load_goes_on() {
    // Slow calls, few at a time, few events in flight: a burst leaves entries unread.
    let mut rig = Rig::start(
        "redis-xdel",
        Duration::from_millis(100),
        &[
            ("MAX_CONCURRENT_CALLS", "3"),
            ("MAX_IN_FLIGHT_EVENTS", "8"),
            ("RECONCILE_QUIET_SECS", "2"),
        ],
    )
    .await;
    let load = Load::start(rig.service.url(""), 20, 3);
    load.wait_for_writes(20).await;

    // A burst of creates the load never touches again, faster than the engine calls out.
    let base = rig.service.url("");
    let creates = (0..60).map(|_| create(&rig.http, &base));
    let burst: HashSet<i64> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|acked| acked.expect("a burst create is acknowledged").0)
        .collect();
    for &id in &burst {
        load.record_created(id);
    }
    // The relay publishes the burst a moment after each create is acknowledged, and the engine
    // reads on meanwhile: look again until enough undelivered creates were found and deleted.
    let mut deleted = Vec::new();
    let looking_since = Instant::now();
    while deleted.len() < 3 {
        assert!(
            looking_since.elapsed() <= UNDELIVERED_FOUND_WITHIN,
            "the burst left too few undelivered creates to delete within \
             {UNDELIVERED_FOUND_WITHIN:?}: {deleted:?}"
        );
        let left: HashSet<i64> = burst
            .iter()
            .copied()
            .filter(|id| !deleted.contains(id))
            .collect();
        deleted.extend(rig.delete_undelivered_creates(&left, 5).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deleted_at = Instant::now();
    let writes_then = load.writes();

    // Each deleted order's only event is gone: the reconciler must publish it again, under load.
    let mut smallest_backlog = u64::MAX;
    let mut synced_after = BTreeMap::new();
    let mut redis = rig.redis().await.expect("connect to the test's redis");
    loop {
        let mut behind = Vec::new();
        for &id in &deleted {
            if synced_after.contains_key(&id) {
                continue;
            }
            let (version, synced_version, state): (i64, i64, String) = sqlx::query_as(
                "SELECT version, synced_version, sync_state FROM orders WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&rig.pool)
            .await
            .expect("the order");
            if state == "synced" && synced_version == version {
                synced_after.insert(id, deleted_at.elapsed());
            } else {
                behind.push((id, version, synced_version, state));
            }
        }
        if behind.is_empty() {
            break;
        }
        let mut backlog = 0;
        for stream in rig.keys.streams() {
            backlog += redis.xlen::<_, u64>(&stream).await.unwrap_or(0);
        }
        smallest_backlog = smallest_backlog.min(backlog);
        assert!(
            deleted_at.elapsed() <= RECONCILED_WITHIN,
            "orders whose creates were deleted undelivered, still behind {RECONCILED_WITHIN:?} \
             later under load (id, version, synced_version, state): {behind:?}; synced: \
             {synced_after:?}; {} writes meanwhile; the streams together never held fewer than \
             {smallest_backlog} entries; {} 'orders behind with no event' lines in {}",
            load.writes() - writes_then,
            rig.log_lines_with("orders behind with no event"),
            rig.log.display()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        load.is_running() && load.writes() > writes_then,
        "the load must still be running when the deleted orders are synced"
    );
    let (ledger, ran) = load.stop().await;

    let (synced, drained) = rig.wait_until_drained(CONVERGE_WITHIN).await;
    for &id in &deleted {
        let calls = rig.api.recorder.calls_for(id);
        assert!(
            calls
                .iter()
                .all(|c| (c.method.as_str(), c.version) == ("POST", 1)),
            "order {id} was created once and never changed: {calls:?}"
        );
    }
    rig.assert_every_acknowledged_order_synced(&ledger.versions)
        .await;
    assert!(rig.service.is_running(), "the service was restarted");
    eprintln!(
        "redis xdel: deleted {deleted:?}, synced after {synced_after:?} (smallest backlog meanwhile \
         {smallest_backlog}); {} orders, {} writes in {ran:?} ({} failed), all synced {synced:?} \
         and the streams empty {drained:?} after the load stopped; {} 'orders behind with no \
         event' log lines",
        ledger.versions.len(),
        ledger.writes,
        ledger.failures,
        rig.log_lines_with("orders behind with no event")
    );
}
