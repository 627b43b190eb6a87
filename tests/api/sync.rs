//! The sync engine end to end: API -> outbox -> Redis -> actor -> external API (wiremock),
//! against real PostgreSQL and Redis.

use std::time::Duration;

use serde_json::{json, Value};

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{id_of, order_body, spawn_app_syncing_to, spawn_app_with, wait_for, TestApp};

/// An app whose external API is `api`, with quick settings for tests.
/// An unthrottled app (the rate is the throttle tests' business).
async fn app_with(api: &ExternalApi, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("RATE_LIMIT_PER_SEC", "10000"),
        ("RATE_LIMIT_BURST", "1000"),
    ];
    vars.extend_from_slice(extra);
    spawn_app_syncing_to(&api.url(), &vars).await
}

#[actix_web::test]
async fn each_verb_sends_the_reference_request_with_its_headers_and_body() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = app_with(&api, &[]).await;
    let id = id_of(&app.create_order().await);
    app.wait_until_synced(id).await;
    app.patch_order(
        id,
        &json!({"city": "Mumbai", "status": "canceled", "delivered_at": null}),
    )
    .await;
    app.wait_until_synced(id).await;
    app.delete_order(id).await;
    app.wait_until_purged(id).await;

    let calls = api.recorder.calls_for(id);
    let summary: Vec<(&str, &str, i64)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.path.as_str(), c.version))
        .collect();
    let item = format!("/v1/orders/{id}");
    assert_eq!(
        summary,
        vec![
            ("POST", "/v1/orders", 1),
            ("PUT", item.as_str(), 2),
            ("DELETE", item.as_str(), 3)
        ]
    );
    for call in &calls {
        assert_eq!(call.authorization, format!("Bearer {TOKEN}"));
        assert_eq!(call.idempotency_key, format!("{id}:{}", call.version));
    }
    assert_eq!(
        calls[0].body,
        Some(
            json!({"id": id, "version": 1, "status": "delivered", "purchased_date": "01/06/2025",
                    "delivery_date": 1749031200, "cost": 1180,
                    "address": "12 MG Road,Pune,Maharashtra,011001,India"})
        )
    );
    assert_eq!(
        calls[1].body,
        Some(
            json!({"id": id, "version": 2, "status": "canceled", "purchased_date": "01/06/2025",
                    "delivery_date": "", "cost": 1180,
                    "address": "12 MG Road,Mumbai,Maharashtra,011001,India"})
        )
    );
    assert_eq!(calls[2].body, None, "DELETE has no body");
}

#[actix_web::test]
async fn a_500_is_retried_and_then_succeeds() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 1, 500, json!({"message": "boom"}), None)
        .await;
    let app = app_with(&api, &[]).await;
    let id = id_of(&app.create_order().await);
    let order = app.wait_until_synced(id).await;
    let statuses: Vec<u16> = api
        .recorder
        .calls_for(id)
        .iter()
        .map(|c| c.status)
        .collect();
    assert_eq!(statuses, vec![500, 200]);
    assert_eq!(order["sync"]["attempts"], 0);
    assert_eq!(app.actor_metrics().await["events"]["retried"], 1);
}

#[actix_web::test]
async fn a_422_is_not_retried_and_the_order_is_dead_with_the_answer_as_its_error() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 1, 422, json!({"message": "cost is invalid"}), None)
        .await;
    let app = app_with(&api, &[]).await;
    let id = id_of(&app.create_order().await);
    let order = wait_for("the order to be dead", Duration::from_secs(20), || async {
        let order = app.get_order(id).await;
        (order["sync"]["state"] == "dead").then_some(order)
    })
    .await;
    assert!(
        order["sync"]["last_error"]
            .as_str()
            .unwrap()
            .contains("cost is invalid"),
        "{order}"
    );
    // Retries happen before the outcome is recorded: the count is final now.
    assert_eq!(api.recorder.calls_for(id).len(), 1);
}

#[actix_web::test]
async fn a_429_with_retry_after_pauses_every_caller() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next(
        "POST",
        1,
        429,
        json!({"message": "slow down"}),
        Some(("Retry-After", "1")),
    )
    .await;
    let app = app_with(&api, &[]).await;
    let first = id_of(&app.create_order().await);
    let throttled = wait_for("the 429", Duration::from_secs(10), || async {
        api.recorder.calls().into_iter().find(|c| c.status == 429)
    })
    .await;
    let others = [
        id_of(&app.create_order().await),
        id_of(&app.create_order().await),
    ];
    for id in std::iter::once(first).chain(others) {
        app.wait_until_synced(id).await;
    }
    let later: Vec<_> = api
        .recorder
        .calls()
        .into_iter()
        .filter(|c| c.arrived > throttled.arrived)
        .collect();
    assert_eq!(
        later.len(),
        3,
        "the throttled order's retry and the two others"
    );
    for call in later {
        let gap = call.arrived - throttled.arrived;
        assert!(
            gap >= Duration::from_millis(995),
            "order {} called {gap:?} after the 429",
            call.order_id
        );
    }
}

#[actix_web::test]
async fn one_orders_calls_never_overlap_and_follow_its_versions_while_orders_run_concurrently() {
    let delay = Duration::from_millis(60);
    let api = ExternalApi::start(delay).await;
    let app = app_with(&api, &[]).await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(id_of(&app.create_order().await));
    }
    for round in 0..3 {
        for &id in &ids {
            app.patch_order(id, &json!({"amount": 2000 + round})).await;
        }
        tokio::time::sleep(delay).await; // spread the rounds; correctness does not depend on it
    }
    for &id in &ids {
        app.delete_order(id).await;
    }
    for &id in &ids {
        app.wait_until_purged(id).await;
    }

    let calls = api.recorder.calls();
    for &id in &ids {
        let mine: Vec<_> = calls.iter().filter(|c| c.order_id == id).collect();
        assert_eq!(
            mine.first().map(|c| c.method.as_str()),
            Some("POST"),
            "order {id} starts with its create"
        );
        assert_eq!(
            mine.last().map(|c| c.method.as_str()),
            Some("DELETE"),
            "order {id} ends with its delete"
        );
        for pair in mine.windows(2) {
            assert!(
                pair[1].arrived >= pair[0].answered,
                "order {id}: two calls at once"
            );
            assert!(
                pair[1].version > pair[0].version,
                "order {id}: version {} after {}",
                pair[1].version,
                pair[0].version
            );
            assert_ne!(pair[1].method, "POST", "order {id}: a second create");
        }
    }
    let overlapping = calls.iter().any(|a| {
        calls
            .iter()
            .any(|b| a.order_id != b.order_id && b.arrived >= a.arrived && b.arrived < a.answered)
    });
    assert!(
        overlapping,
        "different orders should be synced concurrently"
    );
}

#[actix_web::test]
async fn many_quick_updates_of_one_order_coalesce_into_few_calls_ending_at_the_latest_version() {
    let api = ExternalApi::start(Duration::from_millis(500)).await;
    let app = app_with(&api, &[]).await;
    let id = id_of(&app.create_order().await);
    let updates = 20;
    for i in 0..updates {
        app.patch_order(id, &json!({"amount": 3000 + i})).await;
    }
    let order = app.wait_until_synced(id).await;
    assert_eq!(order["version"], updates + 1);
    let calls = api.recorder.calls_for(id);
    assert!(
        calls.len() <= 4,
        "{} calls for {} changes",
        calls.len(),
        updates + 1
    );
    let last = calls.last().expect("at least one call");
    assert_eq!(last.version, updates + 1);
    assert_eq!(
        last.body.as_ref().map(|b| b["cost"].clone()),
        Some(json!(3000 + updates - 1 + 180))
    );
}

#[actix_web::test]
async fn orders_changing_faster_than_the_rate_limit_coalesce_and_their_backlog_stays_small() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let (orders, rate) = (20, 20);
    let app = spawn_app_syncing_to(
        &api.url(),
        &[("RATE_LIMIT_PER_SEC", "20"), ("RATE_LIMIT_BURST", "2")],
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..orders {
        ids.push(id_of(&app.create_order().await));
    }
    for &id in &ids {
        app.wait_until_synced(id).await;
    }
    // Changes at twice the rate limit for 8 s, round the orders.
    let mut pace = tokio::time::interval(Duration::from_millis(1000 / (2 * rate)));
    let load = Duration::from_secs(8);
    let started = std::time::Instant::now();
    let (mut changes, mut most_in_flight) = (0usize, 0);
    while started.elapsed() < load {
        pace.tick().await;
        app.patch_order(ids[changes % orders], &json!({"amount": 1000 + changes}))
            .await;
        changes += 1;
        if changes % 10 == 0 {
            let metrics = app.actor_metrics().await;
            let in_flight = metrics["events"]["in_flight"].as_u64().unwrap_or(0);
            most_in_flight = most_in_flight.max(in_flight);
        }
    }
    // An order whose events queued one per change would owe a call per change: at the rate
    // that is (changes - 8 s × rate) / rate seconds more. Coalesced, each order owes one call.
    let drained = std::time::Instant::now();
    wait_for(
        "every order synced at its latest version",
        Duration::from_secs(60),
        || async {
            let mut latest = true;
            for &id in &ids {
                let order = app.get_order(id).await;
                latest &= order["sync"]["state"] == "synced"
                    && order["sync"]["synced_version"] == order["version"];
            }
            latest.then_some(())
        },
    )
    .await;
    let drain = drained.elapsed();
    eprintln!("{changes} changes to {orders} orders: at most {most_in_flight} events in flight; drained {drain:?} after the load");
    let owed_one_per_change = (changes as f64 - load.as_secs_f64() * rate as f64) / rate as f64;
    assert!(
        drain.as_secs_f64() < 10.0,
        "{changes} changes to {orders} orders took {drain:?} to drain after the load (one call per change would take {owed_one_per_change:.1} s)"
    );
    assert!(
        most_in_flight <= 4 * orders as u64,
        "{most_in_flight} events in flight for {orders} orders"
    );
    for &id in &ids {
        let order = app.get_order(id).await;
        let last = api.recorder.calls_for(id).last().map(|c| c.version);
        assert_eq!(
            last,
            order["version"].as_i64(),
            "order {id} ends at its latest version"
        );
    }
}

#[actix_web::test]
async fn an_order_created_and_deleted_before_its_sync_makes_no_call() {
    // One call at a time, and a slow first order: the second order waits for its turn.
    let api = ExternalApi::start(Duration::from_millis(1500)).await;
    let app = app_with(&api, &[("MAX_CONCURRENT_CALLS", "1")]).await;
    let blocker = id_of(&app.create_order().await);
    wait_for("the blocking call", Duration::from_secs(10), || async {
        (!api.recorder.calls_for(blocker).is_empty()).then_some(())
    })
    .await;
    let doomed = id_of(&app.create_order().await);
    app.delete_order(doomed).await;
    app.wait_until_purged(doomed).await;
    app.wait_until_synced(blocker).await;
    assert!(
        api.recorder.calls_for(doomed).is_empty(),
        "{:?}",
        api.recorder.calls_for(doomed)
    );
    assert_eq!(app.actor_metrics().await["events"]["purged"], 1);
}

#[actix_web::test]
async fn the_call_rate_stays_within_the_token_bucket() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let (rate, burst, orders) = (20, 5, 60);
    let app = app_with(
        &api,
        &[("RATE_LIMIT_PER_SEC", "20"), ("RATE_LIMIT_BURST", "5")],
    )
    .await;
    let body = order_body();
    let creates = (0..orders)
        .map(|_| async { id_of(&app.post_order(&body).await.json::<Value>().await.unwrap()) });
    let ids: Vec<i64> = futures_util::future::join_all(creates).await;
    for &id in &ids {
        app.wait_until_synced(id).await;
    }
    let mut arrivals: Vec<_> = api.recorder.calls().iter().map(|c| c.arrived).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), orders);
    for (i, start) in arrivals.iter().enumerate() {
        let in_window = arrivals[i..]
            .iter()
            .take_while(|t| **t - *start < Duration::from_secs(1))
            .count();
        assert!(
            in_window <= rate + burst,
            "{in_window} calls within one second"
        );
    }
    let span = *arrivals.last().unwrap() - arrivals[0];
    let least = Duration::from_secs_f64((orders - burst) as f64 / rate as f64 * 0.95);
    assert!(span >= least, "{orders} calls took only {span:?}");
}

#[actix_web::test]
async fn idle_order_actors_stop_and_are_forgotten() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = app_with(&api, &[("ORDER_ACTOR_IDLE_SECS", "1")]).await;
    for _ in 0..3 {
        let id = id_of(&app.create_order().await);
        app.wait_until_synced(id).await;
    }
    let actors = wait_for("idle actors to stop", Duration::from_secs(15), || async {
        let metrics = app.actor_metrics().await;
        (metrics["actors"]["live"] == 0).then_some(metrics["actors"].clone())
    })
    .await;
    assert_eq!(
        (actors["spawned"].as_u64(), actors["stopped"].as_u64()),
        (Some(3), Some(3))
    );
}

#[actix_web::test]
async fn with_no_external_api_configured_the_built_in_fake_receives_the_sync_and_inbound_causes_no_call(
) {
    let app = spawn_app_with(&[]).await;
    let id = id_of(&app.create_order().await);
    let order = app.wait_until_synced(id).await;
    assert_eq!(order["sync"]["synced_version"], 1);
    let fake = |path: String| {
        app.http
            .get(format!("{}{path}", app.external_api_url))
            .bearer_auth("dev-token")
            .send()
    };
    let stored: Value = fake(format!("/v1/orders/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stored["id"].as_i64(), stored["version"].as_i64()),
        (Some(id), Some(1))
    );

    let inbound = app
        .http
        .put(app.url(&format!("/inbound/{id}")))
        .json(&json!({"order": {"status": "canceled"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(inbound.status(), 200);
    // A later real change is synced; had the inbound one emitted an event, there would be one more.
    app.patch_order(id, &json!({"city": "Nashik"})).await;
    app.wait_until_synced(id).await;
    let stats: Value = fake("/_fake/stats".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The GET is this test's own read of the stored order.
    assert_eq!(stats["calls"], json!({"POST": 1, "PUT": 1, "GET": 1}));
    assert_eq!(app.actor_metrics().await["events"]["received"], 2);
}

#[actix_web::test]
async fn a_failing_order_is_parked_then_dead_while_its_later_changes_wait_and_other_orders_go_on() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = app_with(
        &api,
        &[
            ("RETRY_MAX_ATTEMPTS", "2"),
            ("DELAYED_RETRY_LIMIT", "2"),
            ("DELAYED_RETRY_SCALE", "0.02"),
        ],
    )
    .await;
    // Every create of the order in Failtown fails with a 503 (retryable).
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::body_partial_json(
            json!({"address": "12 MG Road,Failtown,Maharashtra,011001,India"}),
        ))
        .respond_with(api.responder(503, json!({"message": "down"}), Duration::ZERO))
        .with_priority(1)
        .mount(&api.server)
        .await;
    let mut body = order_body();
    body["city"] = json!("Failtown");
    let failing = id_of(&app.post_order(&body).await.json::<Value>().await.unwrap());
    let parked = wait_for(
        "the order to be parked",
        Duration::from_secs(20),
        || async {
            let order = app.get_order(failing).await;
            (order["sync"]["state"] == "retrying").then_some(order)
        },
    )
    .await;
    assert_eq!(parked["sync"]["attempts"], 1);
    assert!(parked["sync"]["next_attempt_at"].is_string(), "{parked}");

    // A change while parked waits behind the parked retry; another order is not held up.
    app.patch_order(failing, &json!({"amount": 5000})).await;
    let other = id_of(&app.create_order().await);
    app.wait_until_synced(other).await;

    let dead = wait_for("the order to be dead", Duration::from_secs(30), || async {
        let order = app.get_order(failing).await;
        (order["sync"]["state"] == "dead").then_some(order)
    })
    .await;
    assert_eq!(
        dead["sync"]["attempts"], 3,
        "two delayed retries, then dead"
    );
    assert!(
        dead["sync"]["last_error"].as_str().unwrap().contains("503"),
        "{dead}"
    );
    let calls = api.recorder.calls_for(failing);
    assert_eq!(calls.len(), 6, "3 rounds of 2 quick attempts");
    assert!(calls.iter().all(|c| c.method == "POST"));
    assert_eq!(
        calls.last().map(|c| c.version),
        Some(2),
        "the delayed retry carries the latest version"
    );
}

#[actix_web::test]
async fn the_dispatcher_never_holds_more_than_max_in_flight_events() {
    // Slow answers and a small bound: the backlog must wait in Redis, not in memory.
    let api = ExternalApi::start(Duration::from_millis(100)).await;
    let app = app_with(&api, &[("MAX_IN_FLIGHT_EVENTS", "8")]).await;
    let body = order_body();
    let creates = (0..40)
        .map(|_| async { id_of(&app.post_order(&body).await.json::<Value>().await.unwrap()) });
    let ids: Vec<i64> = futures_util::future::join_all(creates).await;
    let (mut most_pending, mut saw_a_backlog) = (0, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = app.actor_metrics().await;
        let pending = metrics["backlog"]["pending"].as_u64().unwrap_or(0);
        let in_flight = metrics["events"]["in_flight"].as_u64().unwrap_or(0);
        most_pending = most_pending.max(pending).max(in_flight);
        saw_a_backlog |= metrics["backlog"]["stream_length"].as_u64().unwrap_or(0) > 8;
        if metrics["events"]["synced"] == ids.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all synced within 60 s: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most_pending <= 8,
        "{most_pending} events were read and unacknowledged at once"
    );
    assert!(saw_a_backlog, "the backlog should have waited in Redis");
}
