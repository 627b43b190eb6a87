//! Several instances at once, as operators run them: rolling deploys (the new instance starts
//! before the old one gets SIGTERM), scaled-out workers SIGKILLed at random, and one rate limit
//! for all of them. Each run ends with the recording external API equal to the database, and
//! no order ever saw two calls at once (except across a kill), an older version after a newer
//! one, or anything after its delete (`durability::verify`).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::durability::{verify, wait_for_quiescence, Load, Rig};
use crate::helpers::wait_for;
use crate::process::{create_order_at, get_json_at};

#[actix_web::test]
async fn rolling_deploys_under_load_lose_nothing_and_keep_each_orders_calls_in_order() {
    let rig = Rig::new(Duration::from_millis(5), "rolling").await;
    let mut old = rig.start_instance("v0", &[]).await;
    let load = Load::start(7, old.port);
    let mut rng = StdRng::seed_from_u64(7);
    for deploy in 1..=3 {
        // The load runs for a while before each deploy (its duration, not a wait for anything).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..1500))).await;
        let new = rig.start_instance(&format!("v{deploy}"), &[]).await;
        load.port.store(new.port, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(500..2000))).await;
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
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1500))).await;
        let victim = rng.gen_range(1..3);
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
    let limits = [("RATE_LIMIT_PER_SEC", "100"), ("RATE_LIMIT_BURST", "20")];
    let mut instances = Vec::new();
    for n in 0..3 {
        instances.push(rig.start_instance(&format!("r{n}"), &limits).await);
    }
    let http = reqwest::Client::new();
    let orders = 500;
    for n in 0..orders {
        create_order_at(&http, &instances[n % 3].url(""))
            .await
            .expect("order created");
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
        "3 instances at 100/s + 20: {} calls, at most {busiest} in one second",
        arrivals.len()
    );
    // rate + burst = 120; a few more for the time between Redis's grant and the arrival.
    assert!(busiest <= 125, "{busiest} calls in one second, limit 120");
    // And the limit was the bottleneck: the calls were not simply slow to come.
    assert!(busiest >= 90, "{busiest} calls in the busiest second");
}
