//! The operator's view of one order: every call attempt kept (`GET /orders/{id}/attempts`),
//! the one-line explanation (`GET /orders/{id}/sync`), and the attempt log's retention.

use std::time::Duration;

use serde_json::{json, Value};

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{id_of, spawn_app_with, wait_for, TestApp};

async fn explanation(app: &TestApp, id: i64) -> Value {
    app.get_json(&format!("/orders/{id}/sync")).await
}

/// Waits until the order's sync explanation starts with `prefix` and `attempts` are kept for it;
/// returns the explanation and the attempts (newest first).
async fn wait_for_view(
    app: &TestApp,
    id: i64,
    prefix: &str,
    attempts: usize,
) -> (Value, Vec<Value>) {
    wait_for(
        &format!("order {id} to read {prefix:?} with {attempts} attempts"),
        Duration::from_secs(30),
        || async {
            let sync = explanation(app, id).await;
            let page = app.get_json(&format!("/orders/{id}/attempts")).await;
            let list = page["attempts"].as_array().cloned().unwrap_or_default();
            let line = sync["explanation"].as_str().unwrap_or_default();
            (line.starts_with(prefix) && list.len() == attempts).then_some((sync, list))
        },
    )
    .await
}

/// `(verb, version, outcome, http_status)` of each attempt.
fn summary(attempts: &[Value]) -> Vec<(String, i64, String, Option<i64>)> {
    attempts
        .iter()
        .map(|a| {
            (
                a["verb"].as_str().unwrap().to_string(),
                a["version"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap().to_string(),
                a["http_status"].as_i64(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn refused_retried_and_successful_calls_give_the_exact_attempt_list_and_explanation() {
    let api = ExternalApi::start(Duration::ZERO).await;
    // The create is refused twice (both quick attempts), then the order is parked.
    api.fail_next("POST", 2, 503, json!({"message": "busy"}), None)
        .await;
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &api.url()),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("RETRY_MAX_ATTEMPTS", "2"),
        // The first delayed retry comes after 15 to 25 s × 0.2: 3 to 5 s.
        ("DELAYED_RETRY_SCALE", "0.2"),
    ])
    .await;
    let id = app.create_order().await["id"].as_i64().unwrap();

    let (parked, attempts) = wait_for_view(&app, id, "parked until ", 2).await;
    let line = parked["explanation"].as_str().unwrap();
    assert!(
        line.ends_with("(delayed retry 1 of 25) after 503 busy"),
        "{line}"
    );
    assert_eq!(parked["state"], "retrying");
    assert_eq!(parked["facts"]["failed_attempts"], 1);
    assert_eq!(parked["facts"]["last_attempt"]["http_status"], 503);

    // The delayed retry succeeds.
    let (synced, attempts_after) = wait_for_view(&app, id, "synced at version 1", 3).await;
    assert_eq!(synced["state"], "synced");
    assert_eq!(
        attempts_after[1..],
        attempts[..],
        "older attempts stay as they were"
    );

    // A change the external API rejects for good.
    api.fail_next("PUT", 1, 422, json!({"message": "address rejected"}), None)
        .await;
    app.patch_order(id, &json!({"city": "Nowhere"})).await;
    let (dead, attempts) = wait_for_view(&app, id, "dead: ", 4).await;
    assert_eq!(dead["explanation"], "dead: 422 address rejected");
    assert_eq!(dead["state"], "dead");
    let s = |v: &str| v.to_string();
    assert_eq!(
        summary(&attempts),
        vec![
            (s("PUT"), 2, s("status"), Some(422)),
            (s("POST"), 1, s("ok"), Some(200)),
            (s("POST"), 1, s("status"), Some(503)),
            (s("POST"), 1, s("status"), Some(503)),
        ]
    );
    assert!(attempts[0]["excerpt"]
        .as_str()
        .unwrap()
        .contains("address rejected"));
    assert!(attempts[1]["excerpt"]
        .as_str()
        .unwrap()
        .contains("successfully created"));
    for pair in attempts.windows(2) {
        assert!(
            pair[0]["id"].as_i64() > pair[1]["id"].as_i64(),
            "newest first"
        );
        // As times: RFC 3339 text drops trailing zero digits, so `.120Z` sorts below `.120456Z`.
        let at = |attempt: &Value| {
            chrono::DateTime::parse_from_rfc3339(attempt["attempted_at"].as_str().unwrap())
                .expect("an RFC 3339 time")
        };
        assert!(at(&pair[0]) >= at(&pair[1]), "newest first");
    }
    for attempt in &attempts {
        assert_eq!(attempt["order_id"], id);
        assert!(!attempt["instance"].as_str().unwrap().is_empty());
        assert!(attempt["duration_ms"].as_i64().unwrap() >= 0);
    }
    // The external API saw exactly these calls.
    assert_eq!(api.recorder.calls_for(id).len(), 4);

    // The cursor walks the same list, two at a time.
    let first = app
        .get_json(&format!("/orders/{id}/attempts?per_page=2"))
        .await;
    let cursor = first["next_cursor"].as_i64().expect("a next page");
    let second = app
        .get_json(&format!("/orders/{id}/attempts?per_page=2&cursor={cursor}"))
        .await;
    assert_eq!(second["next_cursor"], Value::Null);
    let walked: Vec<Value> = [&first, &second]
        .iter()
        .flat_map(|p| p["attempts"].as_array().unwrap().clone())
        .collect();
    assert_eq!(walked, attempts);
}

#[actix_web::test]
async fn a_call_in_flight_reads_as_waiting_and_a_synced_delete_as_deleted() {
    let api = ExternalApi::start(Duration::from_millis(1500)).await;
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &api.url()),
        ("EXTERNAL_API_TOKEN", TOKEN),
    ])
    .await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let (waiting, _) = wait_for_view(
        &app,
        id,
        "waiting: a call for version 1 (POST) is in flight since ",
        0,
    )
    .await;
    assert_eq!(waiting["facts"]["call_in_flight"]["verb"], "POST");
    app.wait_until_synced(id).await;
    app.delete_order(id).await;
    app.wait_until_purged(id).await;
    let (deleted, attempts) = wait_for_view(
        &app,
        id,
        "deleted: the delete of version 2 was synced at ",
        2,
    )
    .await;
    assert_eq!(deleted["state"], "deleted");
    assert_eq!(attempts[0]["verb"], "DELETE");
}

#[actix_web::test]
async fn unknown_orders_and_bad_pages_are_refused() {
    let app = spawn_app_with(&[("SYNC_ENGINE", "false")]).await;
    for path in ["/orders/999999/attempts", "/orders/999999/sync"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "not_found");
    }
    let id = id_of(&app.create_order().await);
    let empty = app.get_json(&format!("/orders/{id}/attempts")).await;
    assert_eq!(empty, json!({"attempts": [], "next_cursor": null}));
    for query in ["per_page=0", "per_page=101", "cursor=abc", "cursor=-1"] {
        let response = app
            .http
            .get(app.url(&format!("/orders/{id}/attempts?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{query}");
    }
    let response = app
        .http
        .get(app.url("/orders/x/sync"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = app
        .http
        .post(app.url(&format!("/orders/{id}/sync")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
}

#[actix_web::test]
async fn retention_prunes_to_the_newest_per_order_and_drops_what_is_too_old() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &api.url()),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("ATTEMPTS_KEPT_PER_ORDER", "3"),
        ("ATTEMPTS_RETENTION_DAYS", "7"),
        ("ATTEMPTS_PRUNE_INTERVAL_SECS", "1"),
    ])
    .await;
    // Rows of other orders, written as the engine would: 8 days old (pruned) and 6 (kept).
    sqlx::query(
        "INSERT INTO sync_attempts (order_id, version, verb, outcome, http_status, duration_ms,
                                    instance, attempted_at)
         SELECT 900000 + n % 2, 1, 'POST', 'ok', 200, 1, 'old',
                now() - CASE WHEN n % 2 = 0 THEN interval '8 days' ELSE interval '6 days' END
         FROM generate_series(1, 10) n",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let id = app.create_order().await["id"].as_i64().unwrap();
    app.wait_until_synced(id).await;
    for n in 0..6 {
        app.patch_order(id, &json!({"amount": 2000 + n})).await;
        app.wait_until_synced(id).await;
    }
    assert_eq!(api.recorder.calls_for(id).len(), 7);
    let versions = wait_for(
        "the attempt log to be pruned",
        Duration::from_secs(30),
        || async {
            let kept: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT order_id, version FROM sync_attempts ORDER BY order_id, id DESC",
            )
            .fetch_all(&app.pool)
            .await
            .unwrap();
            let too_old = kept.iter().filter(|(order, _)| *order == 900000).count();
            let mine: Vec<i64> = kept
                .iter()
                .filter(|(order, _)| *order == id)
                .map(|(_, v)| *v)
                .collect();
            let recent = kept.iter().filter(|(order, _)| *order == 900001).count();
            (too_old == 0 && mine.len() == 3 && recent == 3).then_some(mine)
        },
    )
    .await;
    // The order's newest three, and the newest three of the order whose five attempts are
    // within the age limit (waited for above).
    assert_eq!(versions, vec![7, 6, 5], "the newest three are kept");
    let text = app.prometheus_text().await;
    let pruned: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("order_sync_attempts_pruned_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the pruned counter");
    assert_eq!(
        pruned,
        4 + 5 + 2,
        "4 of the order, 5 too old, 2 over the limit"
    );
}
