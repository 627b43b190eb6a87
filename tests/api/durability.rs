//! Nothing is lost: the service binary as a child process, killed with real signals at random
//! moments and at chosen crash points, against real PostgreSQL and Redis and a recording
//! external API. After each run the external state must equal the database's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::external::{Call, ExternalApi, TOKEN};
use crate::helpers::{order_body, wait_for};
use crate::process::{
    create_order_at, log_path, patch_amount_at, service_env, OwnDatabase, ServiceProcess,
};

/// What the API acknowledged (2xx) for one order.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Acked {
    Live(i64),
    Deleted,
}

#[derive(Default)]
pub(crate) struct Ledger {
    acked: BTreeMap<i64, Acked>,
    /// Orders a DELETE was sent for, answered or not: a kill can cut off the answer to a delete
    /// that was committed.
    delete_sent: std::collections::HashSet<i64>,
    pub errors: u64,
}

impl Ledger {
    fn live_ids(&self) -> Vec<i64> {
        self.acked
            .iter()
            .filter(|(_, a)| matches!(a, Acked::Live(_)))
            .map(|(id, _)| *id)
            .collect()
    }
}

/// Creates, updates and deletes orders through whichever service is running now (`port`),
/// recording what was acknowledged, until `stop`.
async fn drive_load(
    seed: u64,
    port: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let base = format!("http://127.0.0.1:{}", port.load(Ordering::Relaxed));
        let live = ledger.lock().unwrap().live_ids();
        let roll: u32 = rng.random_range(0..100);
        let target = (!live.is_empty()).then(|| live[rng.random_range(0..live.len())]);
        let acked = match (roll, target) {
            (0..=34, _) | (_, None) => create(&http, &base).await,
            (35..=84, Some(id)) => update(&http, &base, id, rng.random_range(100..10_000)).await,
            (_, Some(id)) => {
                ledger.lock().unwrap().delete_sent.insert(id);
                delete(&http, &base, id).await
            }
        };
        match acked {
            Some((id, acked)) => {
                let mut ledger = ledger.lock().unwrap();
                let entry = ledger.acked.entry(id).or_insert(acked);
                *entry = match (*entry, acked) {
                    (Acked::Live(old), Acked::Live(new)) => Acked::Live(old.max(new)),
                    // Answers race between workers: an update answered after the delete was
                    // still committed before it. A delete is final.
                    (Acked::Deleted, _) | (_, Acked::Deleted) => Acked::Deleted,
                };
            }
            None => {
                ledger.lock().unwrap().errors += 1;
                // The service may be down (being restarted): back off a little, don't spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn create(http: &reqwest::Client, base: &str) -> Option<(i64, Acked)> {
    let order = create_order_at(http, base).await?;
    Some((order["id"].as_i64()?, Acked::Live(1)))
}

async fn update(http: &reqwest::Client, base: &str, id: i64, amount: i64) -> Option<(i64, Acked)> {
    let version = patch_amount_at(http, base, id, amount).await?;
    Some((id, Acked::Live(version)))
}

async fn delete(http: &reqwest::Client, base: &str, id: i64) -> Option<(i64, Acked)> {
    let response = http
        .delete(format!("{base}/orders/{id}"))
        .send()
        .await
        .ok()?;
    (response.status() == 204).then_some((id, Acked::Deleted))
}

/// Waits until every order is synced at its version, no tombstone and no outbox row is left.
pub(crate) async fn wait_for_quiescence(pool: &PgPool, timeout: Duration) {
    wait_for("every order to be synced", timeout, || async {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM orders
             WHERE NOT (sync_state = 'synced' AND synced_version = version AND deleted_at IS NULL)",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
            .ok()?;
        (behind == 0 && outbox == 0).then_some(())
    })
    .await;
}

/// The figures of one run's check.
#[derive(Debug, Default)]
pub(crate) struct Verdict {
    pub orders: usize,
    pub calls: usize,
    pub duplicates: usize,
    pub lost: usize,
}

/// Checks the external API's final state against the database and the ledger, and that no order
/// ever saw two calls at once (except across a kill, where the dead process's call was cut off)
/// or an older version after a newer one, or anything after its delete.
pub(crate) async fn verify(
    pool: &PgPool,
    calls: &[Call],
    kills: &[Instant],
    ledger: &Ledger,
) -> Verdict {
    let mut by_order: HashMap<i64, Vec<&Call>> = HashMap::new();
    for call in calls {
        by_order.entry(call.order_id).or_default().push(call);
    }
    let mut external: HashMap<i64, Value> = HashMap::new();
    let mut duplicates = 0;
    for (id, calls) in by_order.iter_mut() {
        calls.sort_by_key(|c| c.arrived);
        let mut seen = std::collections::HashSet::new();
        let mut deleted = false;
        for pair in calls.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let killed_between = kills.iter().any(|k| *k >= a.arrived && *k <= b.arrived);
            assert!(
                b.arrived >= a.answered || killed_between,
                "order {id}: two calls at once"
            );
            assert!(
                b.version >= a.version,
                "order {id}: version {} after {}",
                b.version,
                a.version
            );
        }
        for call in calls.iter() {
            if !seen.insert((call.method.clone(), call.version)) {
                duplicates += 1;
            }
            assert!(
                !deleted || call.method == "DELETE",
                "order {id}: {} after its delete",
                call.method
            );
            match call.method.as_str() {
                "DELETE" => {
                    deleted = true;
                    external.remove(id);
                }
                _ => {
                    external.insert(*id, call.body.clone().expect("POST and PUT carry a body"));
                }
            }
        }
    }
    let rows: Vec<(i64, i64, i64, i64, String)> =
        sqlx::query_as("SELECT id, version, amount, tax, status FROM orders ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut lost = 0;
    for (id, version, amount, tax, status) in &rows {
        match external.get(id) {
            Some(body)
                if body["version"] == *version
                    && body["cost"] == amount + tax
                    && body["status"] == *status => {}
            other => {
                lost += 1;
                eprintln!("order {id} v{version}: external has {other:?}");
            }
        }
    }
    let in_db: std::collections::HashSet<i64> = rows.iter().map(|r| r.0).collect();
    for id in external.keys() {
        assert!(
            in_db.contains(id),
            "order {id} is gone from the database but not from the external API: {:?}",
            by_order.get(id)
        );
    }
    for (id, acked) in &ledger.acked {
        let row = rows.iter().find(|r| r.0 == *id);
        match (acked, row) {
            (Acked::Live(v), Some(row)) => assert!(
                row.1 >= *v,
                "order {id}: acknowledged v{v}, database has v{}",
                row.1
            ),
            (Acked::Live(v), None) => assert!(
                ledger.delete_sent.contains(id),
                "order {id}: acknowledged v{v} but the order is gone, and no delete was sent"
            ),
            (Acked::Deleted, Some(_)) => {
                panic!("order {id}: acknowledged delete but the order is still there")
            }
            (Acked::Deleted, None) => assert!(
                !external.contains_key(id),
                "order {id}: deleted but still external"
            ),
        }
    }
    Verdict {
        orders: ledger.acked.len(),
        calls: calls.len(),
        duplicates,
        lost,
    }
}

fn engine_env<'a>(api: &'a ExternalApi, url: &'a str) -> Vec<(&'a str, &'a str)> {
    let _ = api;
    vec![
        ("EXTERNAL_API_URL", url),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("RATE_LIMIT_PER_SEC", "5000"),
        ("RATE_LIMIT_BURST", "500"),
        ("RECONCILE_QUIET_SECS", "2"),
        ("SHUTDOWN_TIMEOUT_SECS", "5"),
        // A killed instance's shards are free after the lease (4 s), not the default 15 s.
        ("EXTERNAL_TIMEOUT_MS", "1000"),
        ("SHARD_LEASE_MS", "4000"),
    ]
}

/// A recording external API, a database and the service's environment for one test.
pub(crate) struct Rig {
    pub api: ExternalApi,
    pub db: OwnDatabase,
    pub env: Vec<(String, String)>,
    log: std::path::PathBuf,
}

impl Rig {
    /// `delay`: the external API's answer time; `name`: for the child's log file.
    pub async fn new(delay: Duration, name: &str) -> Self {
        let api = ExternalApi::start(delay).await;
        let url = api.url();
        let db = OwnDatabase::new();
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let env = service_env(&db, &prefix, &engine_env(&api, &url));
        let log = log_path(&format!("{name}-{}", db.name));
        Self { api, db, env, log }
    }

    /// One more instance beside any running, with its own log file, named `instance`; not
    /// waited for.
    pub fn spawn_instance(&self, instance: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let log = self.log.with_extension(format!("{instance}.log"));
        ServiceProcess::start(&env, &log)
    }

    /// [`Rig::spawn_instance`], once it answers `/health`.
    pub async fn start_instance(&self, instance: &str, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut service = self.spawn_instance(instance, extra);
        service.wait_ready().await;
        service
    }

    pub async fn start_service(&self) -> ServiceProcess {
        let mut service = ServiceProcess::start(&self.env, &self.log);
        service.wait_ready().await;
        service
    }
}

/// Four load workers against whichever service `port` names.
pub(crate) struct Load {
    pub port: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    workers: Vec<actix_rt::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(seed: u64, port: u16) -> Self {
        let port = Arc::new(AtomicU16::new(port));
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let workers = (0..4)
            .map(|n| {
                actix_rt::spawn(drive_load(
                    seed + n,
                    port.clone(),
                    stop.clone(),
                    ledger.clone(),
                ))
            })
            .collect();
        Self {
            port,
            stop,
            ledger,
            workers,
        }
    }

    /// Stops the workers and returns what was acknowledged.
    pub async fn stop(self) -> Ledger {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        std::mem::take(&mut *self.ledger.lock().unwrap())
    }
}

#[actix_web::test]
async fn sigkill_at_random_moments_under_load_loses_nothing_and_keeps_each_orders_calls_in_order() {
    let rig = Rig::new(Duration::from_millis(5), "crash").await;
    let mut service = rig.start_service().await;
    let load = Load::start(0, service.port);

    let mut rng = StdRng::seed_from_u64(42);
    let mut kills = Vec::new();
    for _ in 0..5 {
        // Let the load run for a random while (this is the load's duration, not a wait for anything).
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1200))).await;
        service.signal("KILL");
        kills.push(Instant::now());
        service.kill();
        service = rig.start_service().await;
        load.port.store(service.port, Ordering::Relaxed);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = load.stop().await;

    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(90)).await;
    let verdict = verify(&pool, &rig.api.recorder.calls(), &kills, &ledger).await;
    eprintln!(
        "crash test: orders={} kills={} calls={} duplicates={} lost={} (request errors while down: {})",
        verdict.orders,
        kills.len(),
        verdict.calls,
        verdict.duplicates,
        verdict.lost,
        ledger.errors
    );
    assert!(
        verdict.orders >= 20,
        "too little load to mean anything: {verdict:?}"
    );
    assert_eq!(verdict.lost, 0, "{verdict:?}");
}

/// Starts a service armed to abort at `crash_point`, makes one order, waits for the abort, and
/// restarts it unarmed; returns the order's id, the rig and the running service.
async fn crash_at(crash_point: &str) -> (i64, Rig, ServiceProcess) {
    let rig = Rig::new(Duration::ZERO, &format!("crash-at-{crash_point}")).await;
    let mut armed_env = rig.env.clone();
    armed_env.push(("ORDER_SYNC_CRASH_AT".into(), crash_point.into()));
    let mut service = ServiceProcess::start(&armed_env, &rig.log);
    service.wait_ready().await;
    // The answer may or may not arrive before the abort; the order is committed either way.
    let _ = reqwest::Client::new()
        .post(service.url("/orders"))
        .json(&order_body())
        .send()
        .await;
    assert_eq!(
        service.wait_exit(Duration::from_secs(20)).await,
        None,
        "the process must die by abort"
    );
    let pool = rig.db.pool().await;
    let id: i64 = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_one(&pool)
        .await
        .expect("the order was committed");
    let service = rig.start_service().await;
    wait_for_quiescence(&pool, Duration::from_secs(30)).await;
    (id, rig, service)
}

#[actix_web::test]
async fn a_crash_between_commit_and_publish_is_recovered_by_the_outbox_sweep() {
    let (id, rig, _service) = crash_at("before_publish").await;
    let calls: Vec<(String, i64)> = rig
        .api
        .recorder
        .calls_for(id)
        .iter()
        .map(|c| (c.method.clone(), c.version))
        .collect();
    assert_eq!(calls, vec![("POST".to_string(), 1)]);
}

#[actix_web::test]
async fn a_crash_between_the_call_and_its_acknowledgement_repeats_the_call_with_the_same_idempotency_key(
) {
    let (id, rig, _service) = crash_at("after_call").await;
    let calls = rig.api.recorder.calls_for(id);
    let keys: Vec<&str> = calls.iter().map(|c| c.idempotency_key.as_str()).collect();
    let expected = format!("{id}:1");
    assert_eq!(
        keys,
        vec![expected.as_str(), expected.as_str()],
        "one call, then its repeat"
    );
    assert!(calls.iter().all(|c| c.method == "POST"));
}

#[actix_web::test]
async fn sigterm_under_load_exits_0_within_the_timeout_and_loses_nothing() {
    // Slow answers, so calls are in flight when the signal comes.
    let rig = Rig::new(Duration::from_millis(200), "sigterm").await;
    let mut service = rig.start_service().await;
    let load = Load::start(100, service.port);
    wait_for("calls in flight", Duration::from_secs(20), || async {
        (rig.api.recorder.calls().len() >= 10).then_some(())
    })
    .await;

    let signalled = Instant::now();
    service.signal("TERM");
    let code = service.wait_exit(Duration::from_secs(15)).await;
    let took = signalled.elapsed();
    let ledger = load.stop().await;
    assert_eq!(code, Some(0), "a graceful shutdown exits 0");
    assert!(
        took <= Duration::from_secs(5 + 2),
        "shutdown took {took:?}, over SHUTDOWN_TIMEOUT_SECS=5"
    );

    let _service = rig.start_service().await;
    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(60)).await;
    let verdict = verify(&pool, &rig.api.recorder.calls(), &[signalled], &ledger).await;
    assert_eq!(verdict.lost, 0, "{verdict:?}");
}

#[actix_web::test]
async fn tokens_never_appear_in_logs_errors_or_metrics() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let url = api.url();
    let db = OwnDatabase::new();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let (external_token, admin_token) = ("extSECRET4711", "admSECRET0815");
    let env = service_env(
        &db,
        &prefix,
        &[
            ("EXTERNAL_API_URL", &url),
            ("EXTERNAL_API_TOKEN", external_token),
            ("ADMIN_TOKEN", admin_token),
            ("RUST_LOG", "debug"),
            ("DELAYED_RETRY_LIMIT", "0"),
        ],
    );
    api.fail_next("POST", 1, 422, json!({"message": "rejected"}), None)
        .await;
    let log = log_path(&format!("secrets-{}", db.name));
    let mut service = ServiceProcess::start(&env, &log);
    service.wait_ready().await;
    let http = reqwest::Client::new();
    let mut bodies = Vec::new();
    for _ in 0..2 {
        http.post(service.url("/orders"))
            .json(&order_body())
            .send()
            .await
            .unwrap();
    }
    let pool = db.pool().await;
    wait_for(
        "both orders to be handled",
        Duration::from_secs(20),
        || async {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM orders WHERE sync_state IN ('synced', 'dead')",
            )
            .fetch_one(&pool)
            .await
            .ok()?;
            (done == 2).then_some(())
        },
    )
    .await;
    let wrong = http
        .get(service.url("/admin/orders"))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 403);
    bodies.push(wrong.text().await.unwrap());
    let listed = http
        .get(service.url("/admin/orders"))
        .bearer_auth(admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    bodies.push(listed.text().await.unwrap());
    bodies.push(
        http.get(service.url("/metrics/actors"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    service.signal("TERM");
    service.wait_exit(Duration::from_secs(15)).await;

    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(
        logs.contains("rejected"),
        "the log should show the failure (and so be worth checking)"
    );
    for secret in [external_token, admin_token] {
        assert!(
            !logs.contains(secret),
            "a token leaked into the log {}",
            log.display()
        );
        for body in &bodies {
            assert!(
                !body.contains(secret),
                "a token leaked into an answer: {body}"
            );
        }
    }
    // The external API did receive the token: it was sent, just never shown.
    assert!(api
        .recorder
        .calls()
        .iter()
        .all(|c| c.authorization == format!("Bearer {external_token}")));
}
