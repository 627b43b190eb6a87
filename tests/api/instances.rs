//! Several instances at once, as operators run them: rolling deploys (the new instance starts
//! before the old one gets SIGTERM), scaled-out workers SIGKILLed at random, and one rate limit
//! for all of them. Each run ends with the recording external API equal to the database, and
//! no order ever saw two calls at once (except across a kill), an older version after a newer
//! one, or anything after its delete (`durability::verify`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use crate::durability::{verify, wait_for_quiescence, Load, Rig};
use crate::helpers::wait_for;
use crate::process::{create_order_at, get_json_at};

#[actix_web::test]
async fn rolling_deploys_under_load_lose_nothing_and_keep_each_orders_calls_in_order() {
    let rig = Rig::new(Duration::from_millis(5), "rolling").await;
    let mut old = rig.start_instance("v0", &[]).await;
    let load = Load::start(7, old.port);
    let mut rng = StdRng::seed_from_u64(7);
    for deploy in 1..=4 {
        // The load runs for a while before each deploy (its duration, not a wait for anything).
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..1500))).await;
        let new = rig.start_instance(&format!("v{deploy}"), &[]).await;
        load.port.store(new.port, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2000))).await;
        old.signal("TERM");
        assert_eq!(
            old.wait_exit(Duration::from_secs(20)).await,
            Some(0),
            "deploy {deploy}: the old instance exits 0 on SIGTERM"
        );
        old = new;
    }
    let ledger = load.stop().await;

    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(60)).await;
    let verdict = verify(&pool, &rig.api.recorder.calls(), &[], &ledger).await;
    eprintln!("rolling deploys: {verdict:?}");
    assert!(verdict.orders >= 50, "too little load: {verdict:?}");
    assert_eq!(verdict.lost, 0, "{verdict:?}");
    // The last instance holds every shard once the others are gone.
    let health = get_json_at(&reqwest::Client::new(), &old.url("/health")).await;
    assert_eq!(
        health["shards"].as_array().map(Vec::len),
        Some(8),
        "{health}"
    );
}

#[actix_web::test]
async fn three_instances_with_sigkills_among_them_lose_nothing_and_keep_each_orders_calls_in_order()
{
    let rig = Rig::new(Duration::from_millis(5), "three").await;
    let mut instances = Vec::new();
    for n in 0..3 {
        instances.push(rig.start_instance(&format!("i{n}-0"), &[]).await);
    }
    // The load goes to the first instance, which is never killed; the others are.
    let load = Load::start(11, instances[0].port);
    let mut rng = StdRng::seed_from_u64(11);
    let mut kills = Vec::new();
    for round in 1..=4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        let victim = rng.random_range(1..3);
        instances[victim].signal("KILL");
        kills.push(Instant::now());
        instances[victim].kill();
        instances[victim] = rig.start_instance(&format!("i{victim}-{round}"), &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ledger = load.stop().await;

    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(90)).await;
    let verdict = verify(&pool, &rig.api.recorder.calls(), &kills, &ledger).await;
    eprintln!("three instances, {} kills: {verdict:?}", kills.len());
    assert!(verdict.orders >= 50, "too little load: {verdict:?}");
    assert_eq!(verdict.lost, 0, "{verdict:?}");
    // The shards end spread over the three: none idle, none holding more than its share.
    let http = reqwest::Client::new();
    let spread = wait_for(
        "the shards to spread evenly",
        Duration::from_secs(30),
        || {
            let http = http.clone();
            let urls: Vec<String> = instances.iter().map(|i| i.url("/health")).collect();
            async move {
                let mut held = Vec::new();
                for url in urls {
                    held.push(get_json_at(&http, &url).await["shards"].as_array()?.len());
                }
                (held.iter().sum::<usize>() == 8 && held.iter().all(|n| (2..=3).contains(n)))
                    .then_some(held)
            }
        },
    )
    .await;
    eprintln!("shards per instance: {spread:?}");
}

#[actix_web::test]
async fn three_instances_share_one_rate_limit() {
    let rig = Rig::new(Duration::ZERO, "rate").await;
    // The orders are written first (to an API-only instance), so that the limit, not the
    // supply of changes, sets the pace once the three engines start.
    let api_only = rig.start_instance("api", &[("SYNC_ENGINE", "false")]).await;
    let http = reqwest::Client::new();
    let orders = 400;
    for _ in 0..orders {
        create_order_at(&http, &api_only.url(""))
            .await
            .expect("order created");
    }
    // 50/s: well below what three debug instances sustain while the rest of the suite runs, so
    // the limit, not the machine, sets the pace (the benchmark measures higher rates).
    let limits = [("RATE_LIMIT_PER_SEC", "50"), ("RATE_LIMIT_BURST", "10")];
    let mut instances = Vec::new();
    for n in 0..3 {
        instances.push(rig.spawn_instance(&format!("r{n}"), &limits));
    }
    for instance in &mut instances {
        instance.wait_ready().await;
    }
    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(60)).await;

    let mut arrivals: Vec<Instant> = rig
        .api
        .recorder
        .calls()
        .iter()
        .map(|call| call.arrived)
        .collect();
    arrivals.sort();
    assert!(arrivals.len() >= orders, "{} calls", arrivals.len());
    // The most calls that arrived within any one second.
    let busiest = (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|at| at.duration_since(arrivals[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "3 instances at 50/s + 10: {} calls, at most {busiest} in one second",
        arrivals.len()
    );
    // rate + burst = 60; two more for the time between Redis's grant and the arrival.
    assert!(busiest <= 62, "{busiest} calls in one second, limit 60");
    // After the burst, calls come at the rate: the mean is the limit, within 2%.
    let (first, last) = (arrivals[0], arrivals[arrivals.len() - 1]);
    let mean = (arrivals.len() - 10) as f64 / last.duration_since(first).as_secs_f64();
    eprintln!("mean rate after the burst: {mean:.2}/s");
    assert!(
        (49.0..=51.0).contains(&mean),
        "mean rate {mean:.2}/s, limit 50/s"
    );
}

#[actix_web::test]
async fn instances_starting_together_on_an_empty_database_migrate_it_once_and_all_sync() {
    let rig = Rig::new(Duration::ZERO, "together").await;
    // Started at once, none waited for: they race to create the database and to migrate it.
    let mut instances: Vec<_> = (0..3)
        .map(|n| rig.spawn_instance(&format!("t{n}"), &[]))
        .collect();
    for instance in &mut instances {
        instance.wait_ready().await;
    }
    // An instance that lost the race to migrate would have failed its start and exited.
    for instance in &mut instances {
        assert!(instance.is_running(), "every instance started");
    }
    let pool = rig.db.pool().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM seaql_migrations")
        .fetch_one(&pool)
        .await
        .expect("the migrations table");
    use migration::MigratorTrait;
    assert_eq!(
        applied,
        migration::Migrator::migrations().len() as i64,
        "every migration applied, once"
    );
    let http = reqwest::Client::new();
    for n in 0..30 {
        create_order_at(&http, &instances[n % 3].url(""))
            .await
            .expect("order created");
    }
    wait_for_quiescence(&pool, Duration::from_secs(30)).await;
    assert_eq!(rig.api.recorder.calls().len(), 30, "one POST per order");
}

#[actix_web::test]
async fn scaling_from_one_to_three_and_back_to_one_under_load_loses_nothing() {
    let rig = Rig::new(Duration::from_millis(5), "scaling").await;
    let first = rig.start_instance("s0", &[]).await;
    let load = Load::start(13, first.port);
    let http = reqwest::Client::new();
    let shards_of = |instance: &crate::process::ServiceProcess| {
        let (http, url) = (http.clone(), instance.url("/health"));
        async move {
            get_json_at(&http, &url).await["shards"]
                .as_array()
                .map(Vec::len)
        }
    };
    let mut added = Vec::new();
    for n in 1..=2 {
        added.push(rig.start_instance(&format!("s{n}"), &[]).await);
    }
    // Scaled out: the first instance hands shards over until each holds its share.
    wait_for(
        "the first instance to hold its share",
        Duration::from_secs(30),
        || async { (shards_of(&first).await? <= 3).then_some(()) },
    )
    .await;
    let mut stopped = Vec::new();
    for mut instance in added {
        instance.signal("TERM");
        stopped.push(instance.wait_exit(Duration::from_secs(20)).await);
    }
    assert_eq!(stopped, [Some(0), Some(0)], "scaled in with SIGTERM");
    // Scaled in: the first instance takes every shard back.
    wait_for(
        "the first instance to hold every shard",
        Duration::from_secs(30),
        || async { (shards_of(&first).await? == 8).then_some(()) },
    )
    .await;
    let ledger = load.stop().await;
    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(60)).await;
    let verdict = verify(&pool, &rig.api.recorder.calls(), &[], &ledger).await;
    eprintln!("scaling 1 -> 3 -> 1: {verdict:?}");
    assert!(verdict.orders >= 30, "too little load: {verdict:?}");
    assert_eq!(verdict.lost, 0, "{verdict:?}");
}

#[actix_web::test]
async fn a_429_seen_by_one_instance_pauses_every_instance() {
    let rig = Rig::new(Duration::ZERO, "pause").await;
    let api_only = rig.start_instance("api", &[("SYNC_ENGINE", "false")]).await;
    let http = reqwest::Client::new();
    for _ in 0..40 {
        create_order_at(&http, &api_only.url(""))
            .await
            .expect("order created");
    }
    rig.api
        .fail_next("POST", 1, 429, json!({}), Some(("Retry-After", "3")))
        .await;
    let limits = [("RATE_LIMIT_PER_SEC", "20"), ("RATE_LIMIT_BURST", "1")];
    let mut instances: Vec<_> = (0..2)
        .map(|n| rig.spawn_instance(&format!("p{n}"), &limits))
        .collect();
    for instance in &mut instances {
        instance.wait_ready().await;
    }
    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(60)).await;

    let calls = rig.api.recorder.calls();
    let refused = calls
        .iter()
        .find(|call| call.status == 429)
        .expect("the 429 was answered")
        .answered;
    // Calls already granted when the 429 came may still arrive just after it; none after that
    // until the pause is over, from either instance.
    let during_pause = calls
        .iter()
        .filter(|call| {
            call.arrived > refused + Duration::from_millis(200)
                && call.arrived < refused + Duration::from_millis(2_800)
        })
        .count();
    assert_eq!(during_pause, 0, "calls during the 3 s pause");
    assert!(
        calls
            .iter()
            .any(|call| call.arrived > refused + Duration::from_secs(3)),
        "syncing resumed after the pause"
    );
}

#[actix_web::test]
async fn an_api_process_and_two_workers_split_the_work_as_docker_compose_runs_them() {
    let rig = Rig::new(Duration::ZERO, "roles").await;
    let web = rig.start_instance("web", &[("ROLE", "api")]).await;
    let mut workers = Vec::new();
    for n in 0..2 {
        workers.push(
            rig.start_instance(&format!("worker{n}"), &[("ROLE", "worker")])
                .await,
        );
    }
    let http = reqwest::Client::new();
    let health = get_json_at(&http, &web.url("/health")).await;
    assert_eq!(health["engine"], "relay only (ROLE=api)", "{health}");
    assert!(
        health.get("shards").is_none(),
        "the API holds no shard: {health}"
    );
    // A worker serves the operator's routes only.
    let orders = http
        .get(workers[0].url("/orders"))
        .send()
        .await
        .expect("answer");
    assert_eq!(orders.status(), 404);
    // Every instance, whatever its role, is in the cluster's view, on any instance.
    let metrics_url = workers[0].url("/metrics/actors");
    let roles = wait_for(
        "the three instances in the view",
        Duration::from_secs(20),
        || async {
            let metrics = get_json_at(&http, &metrics_url).await;
            let mut roles: Vec<String> = metrics["cluster"]["instances"]
                .as_array()?
                .iter()
                .filter_map(|i| i["role"].as_str().map(str::to_string))
                .collect();
            roles.sort();
            (roles.len() == 3).then_some(roles)
        },
    )
    .await;
    assert_eq!(roles, ["api", "worker", "worker"]);

    for _ in 0..20 {
        create_order_at(&http, &web.url(""))
            .await
            .expect("order created");
    }
    let pool = rig.db.pool().await;
    wait_for_quiescence(&pool, Duration::from_secs(30)).await;
    assert_eq!(rig.api.recorder.calls().len(), 20, "one POST per order");
}
