//! When the external API is down (`engine::gate::destination`): real instances under load
//! against a recording external API switched between down (503 to everything) and up. While it is
//! down only probes reach it, one at a time for the cluster; when it is back every waiting order
//! goes out at once (parked ones too), in order, and nothing is lost. A probe holder that dies
//! leaves the probing to another instance; a 4xx about one order says nothing about the API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use wiremock::{Match, Mock, Request};

use crate::durability::{verify, wait_for_quiescence, Load, Rig};
use crate::external::ExternalApi;
use crate::helpers::{id_of, spawn_app_syncing_to, wait_for};
use crate::process::{get_json_at, ServiceProcess};

/// Matches every request while the switch is on: mounted before the normal stubs, it answers
/// 503 to everything for as long as the external API is to be down.
struct WhileDown(Arc<AtomicBool>);

impl Match for WhileDown {
    fn matches(&self, _: &Request) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The switch of an external API that can be taken down (503 after `delay`) and brought back.
pub(crate) struct Outage(Arc<AtomicBool>);

impl Outage {
    pub(crate) async fn mount(api: &ExternalApi, delay: Duration) -> Self {
        let down = Arc::new(AtomicBool::new(false));
        Mock::given(WhileDown(down.clone()))
            .respond_with(api.responder(503, json!({"message": "Service Unavailable"}), delay))
            .with_priority(1)
            .mount(&api.server)
            .await;
        Self(down)
    }

    pub(crate) fn begin(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub(crate) fn end(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

async fn external_api_state(http: &reqwest::Client, instance: &ServiceProcess) -> String {
    let health: Value = get_json_at(http, &instance.url("/health")).await;
    health["external_api"].as_str().unwrap_or("?").to_string()
}

/// Waits until every instance says the external API is `down` or `probing`.
async fn wait_until_down(http: &reqwest::Client, instances: &[&ServiceProcess]) {
    wait_for(
        "every instance to see the API down",
        Duration::from_secs(30),
        || async {
            for instance in instances {
                if external_api_state(http, instance).await == "healthy" {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// Settings that make the outage's effects plain: a first delayed retry of at least 150 s, so
/// an order parked by the outage is synced soon after it only if the return released it.
const SLOW_DELAYED_RETRIES: (&str, &str) = ("DELAYED_RETRY_SCALE", "10");

#[actix_web::test]
async fn an_outage_gets_only_probes_and_its_end_sends_everything_at_once_in_order() {
    let rig = Rig::new(Duration::from_millis(2), "outage").await;
    let outage = Outage::mount(&rig.api, Duration::ZERO).await;
    let a = rig.start_instance("a", &[SLOW_DELAYED_RETRIES]).await;
    let b = rig.start_instance("b", &[SLOW_DELAYED_RETRIES]).await;
    let http = reqwest::Client::new();
    let load = Load::start(24, a.port);
    tokio::time::sleep(Duration::from_secs(1)).await; // load before the outage (its duration)

    outage.begin();
    let went_down = Instant::now();
    wait_until_down(&http, &[&a, &b]).await;
    let seen_down = Instant::now();
    eprintln!("seen down after {:?}", seen_down - went_down);
    // Changes go on during the outage: each is recorded and waits.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ledger = load.stop().await;
    let pool = rig.db.pool().await;
    let behind: i64 =
        sqlx::query_scalar("SELECT count(*) FROM orders WHERE synced_version < version")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(behind >= 20, "too little waits to mean anything: {behind}");
    let waiting_id: i64 = sqlx::query_scalar(
        "SELECT id FROM orders WHERE synced_version < version AND deleted_at IS NULL LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let explained = get_json_at(&http, &a.url(&format!("/orders/{waiting_id}/sync"))).await;
    assert!(
        explained["explanation"]
            .as_str()
            .is_some_and(|line| line.starts_with("waiting: the external API is down")),
        "{explained}"
    );
    let metrics = get_json_at(&http, &b.url("/metrics/actors")).await;
    assert!(
        metrics["external_api"]["orders_waiting"].as_i64() >= Some(20),
        "{}",
        metrics["external_api"]
    );
    tokio::time::sleep(Duration::from_secs(6)).await; // the outage goes on (its duration)
    let came_back = Instant::now();
    let during: Vec<_> = rig
        .api
        .recorder
        .calls()
        .into_iter()
        .filter(|c| c.arrived > seen_down && c.arrived < came_back)
        .collect();
    outage.end();

    // One probe at a time for both instances, 1 s, 2 s, then every 3 s at most: about 4 in
    // 9 s; never a retry storm.
    let outage_secs = (came_back - seen_down).as_secs_f64();
    eprintln!(
        "{} calls in {outage_secs:.1} s of outage, {behind} orders waiting",
        during.len()
    );
    assert!(
        (during.len() as f64) <= outage_secs / 1.0 + 2.0,
        "{} calls reached the down API in {outage_secs:.1} s",
        during.len()
    );
    for pair in during.windows(2) {
        assert!(pair[1].arrived >= pair[0].answered, "two probes at once");
    }

    // Everything waiting goes out soon after the return, parked orders included (their own
    // first retry would be 150 s away).
    wait_for_quiescence(&pool, Duration::from_secs(40)).await;
    eprintln!("converged {:?} after the return", came_back.elapsed());
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE sync_state = 'dead'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    let verdict = verify(&pool, &rig.api.recorder.calls(), &[], &ledger).await;
    assert_eq!(verdict.lost, 0, "{verdict:?}");
    wait_for(
        "both instances to see the API healthy",
        Duration::from_secs(10),
        || async {
            let healthy = external_api_state(&http, &a).await == "healthy"
                && external_api_state(&http, &b).await == "healthy";
            healthy.then_some(())
        },
    )
    .await;
}

#[actix_web::test]
async fn another_instance_probes_when_the_probe_holder_is_killed() {
    let rig = Rig::new(Duration::from_millis(2), "probe-kill").await;
    // Each probe takes 800 ms to fail, so its holder can be caught holding the lease.
    let outage = Outage::mount(&rig.api, Duration::from_millis(800)).await;
    let mut a = rig.start_instance("a", &[]).await;
    let mut b = rig.start_instance("b", &[]).await;
    let http = reqwest::Client::new();
    let instance_ids = [
        get_json_at(&http, &a.url("/health")).await["instance"].clone(),
        get_json_at(&http, &b.url("/health")).await["instance"].clone(),
    ];
    let load = Load::start(25, a.port);
    tokio::time::sleep(Duration::from_millis(500)).await;
    outage.begin();
    wait_until_down(&http, &[&a, &b]).await;
    let ledger = load.stop().await;
    let prefix = rig
        .env
        .iter()
        .find(|(k, _)| k == "REDIS_PREFIX")
        .map(|(_, v)| v.clone())
        .unwrap();
    let redis = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let redis = redis.get_multiplexed_async_connection().await.unwrap();
    let lease_key = format!("{{{prefix}}}:destination:probe");
    let holder: String = wait_for(
        "an instance to hold the probe lease",
        Duration::from_secs(30),
        || {
            let (mut redis, key) = (redis.clone(), lease_key.clone());
            async move {
                let holder: Option<String> =
                    redis::AsyncCommands::get(&mut redis, &key).await.ok()?;
                holder
            }
        },
    )
    .await;
    let (killed, survivor) = if Value::String(holder.clone()) == instance_ids[0] {
        (&mut a, &b)
    } else {
        assert_eq!(Value::String(holder.clone()), instance_ids[1]);
        (&mut b, &a)
    };
    killed.signal("KILL");
    let killed_at = Instant::now();
    killed.kill();
    // The lease (EXTERNAL_TIMEOUT_MS + 1 s = 2 s) runs out, and the survivor probes: with the
    // probe schedule's 3 s at most, within about 5 s.
    wait_for(
        "a probe after the kill",
        Duration::from_secs(15),
        || async {
            let probes = rig
                .api
                .recorder
                .calls()
                .into_iter()
                .filter(|c| c.arrived > killed_at + Duration::from_millis(100))
                .count();
            (probes > 0).then_some(())
        },
    )
    .await;
    eprintln!("another probe {:?} after the kill", killed_at.elapsed());
    assert!(
        killed_at.elapsed() < Duration::from_secs(8),
        "{:?}",
        killed_at.elapsed()
    );
    outage.end();
    let pool = rig.db.pool().await;
    // The killed instance's shards pass to the survivor after their lease (4 s).
    wait_for_quiescence(&pool, Duration::from_secs(60)).await;
    let verdict = verify(&pool, &rig.api.recorder.calls(), &[killed_at], &ledger).await;
    assert_eq!(verdict.lost, 0, "{verdict:?}");
    assert_eq!(external_api_state(&http, survivor).await, "healthy");
}

#[actix_web::test]
async fn orders_refused_for_their_own_reasons_do_not_turn_the_api_down() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = spawn_app_syncing_to(
        &api.url(),
        &[
            ("EXTERNAL_API_DOWN_AFTER", "3"),
            ("RETRY_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    // Ten different orders refused with 422: each is dead, and the API is as healthy as before.
    api.fail_next("POST", 10, 422, json!({"message": "invalid pincode"}), None)
        .await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(id_of(&app.create_order().await));
    }
    for id in &ids {
        wait_for(
            "the refused order to be dead",
            Duration::from_secs(20),
            || async {
                let order = app.get_order(*id).await;
                (order["sync"]["state"] == "dead").then_some(())
            },
        )
        .await;
    }
    let health = app.get_json("/health").await;
    assert_eq!(health["external_api"], "healthy", "{health}");
    let next = id_of(&app.create_order().await);
    app.wait_until_synced(next).await;
}

#[actix_web::test]
async fn flapping_neither_loses_nor_reorders_a_change() {
    let rig = Rig::new(Duration::from_millis(2), "flapping").await;
    let outage = Outage::mount(&rig.api, Duration::ZERO).await;
    let a = rig.start_instance("a", &[SLOW_DELAYED_RETRIES]).await;
    let b = rig.start_instance("b", &[SLOW_DELAYED_RETRIES]).await;
    let load = Load::start(26, b.port);
    for _ in 0..4 {
        outage.begin();
        tokio::time::sleep(Duration::from_secs(3)).await; // down for a while (its duration)
        outage.end();
        tokio::time::sleep(Duration::from_secs(1)).await; // up for a moment (its duration)
    }
    let ledger = load.stop().await;
    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(60)).await;
    let verdict = verify(&pool, &rig.api.recorder.calls(), &[], &ledger).await;
    eprintln!("flapping: {verdict:?}");
    assert!(verdict.orders >= 20, "too little load: {verdict:?}");
    assert_eq!(verdict.lost, 0, "{verdict:?}");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE sync_state = 'dead'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    drop((a, b));
}
