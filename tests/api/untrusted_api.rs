//! The external API as untrusted input (`docs/ARCHITECTURE.md`, invariant 8): hostile
//! `Retry-After` values, a body that never finishes, and control characters in error bodies.
//! Each test runs a real instance, never restarts it, and ends with every order synced: no
//! answer wedges an actor, a slot or the engine.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wiremock::matchers::{body_string_contains, method};
use wiremock::{Match, Mock, Request, Respond, ResponseTemplate};

use crate::external::{ExternalApi, Recording};
use crate::helpers::{id_of, order_body, spawn_app_syncing_to, wait_for, TestApp};

/// An app whose external API is at `url`, with a rate limit that stays out of the way.
/// An unthrottled app syncing to `url`.
async fn app_with(url: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("RATE_LIMIT_PER_SEC", "10000"),
        ("RATE_LIMIT_BURST", "1000"),
    ];
    vars.extend_from_slice(extra);
    spawn_app_syncing_to(url, &vars).await
}

/// No order actor failed and was replaced: the hostile answers were handled, not survived.
async fn assert_nothing_restarted(app: &TestApp) {
    let metrics = app.actor_metrics().await;
    assert_eq!(metrics["actors"]["restarted"], 0, "{metrics}");
}

#[actix_web::test]
async fn a_retry_after_of_decades_pauses_calls_only_for_retry_after_max_secs() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next(
        "POST",
        1,
        429,
        json!({"message": "come back in 31 years"}),
        Some(("Retry-After", "1000000000")),
    )
    .await;
    let app = app_with(&api.url(), &[("RETRY_AFTER_MAX_SECS", "1")]).await;
    let id = id_of(&app.create_order().await);

    let order = wait_for(
        "the throttled order to be synced",
        Duration::from_secs(5),
        || async {
            let metrics = app.actor_metrics().await;
            let paused_ms = metrics["throttle"]["paused_for_ms"].as_u64().unwrap_or(0);
            assert!(paused_ms <= 1_000, "paused for {paused_ms} ms: {metrics}");
            let order = app.get_order(id).await;
            (order["sync"]["state"] == "synced"
                && order["sync"]["synced_version"] == order["version"])
                .then_some(order)
        },
    )
    .await;

    let calls = api.recorder.calls_for(id);
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 200]);
    let gap = calls[1].arrived - calls[0].arrived;
    assert!(
        gap >= Duration::from_millis(995),
        "the capped pause was honoured: retried {gap:?} after the 429"
    );
    assert_eq!(Some(calls[1].version), order["version"].as_i64());
    assert_nothing_restarted(&app).await;
}

/// Answers like `inner`, with a `Retry-After` date `ahead` of the moment of answering (rounded
/// up to the whole second an HTTP date can say, so it is never less than `ahead`).
struct RetryAfterDate {
    inner: Recording,
    ahead: Duration,
}

impl Respond for RetryAfterDate {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let at = SystemTime::now() + self.ahead;
        let whole_secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) + 1;
        let date = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(whole_secs));
        self.inner
            .respond(request)
            .insert_header("Retry-After", date.as_str())
    }
}

#[actix_web::test]
async fn a_retry_after_given_as_an_http_date_is_honoured() {
    let api = ExternalApi::start(Duration::ZERO).await;
    Mock::given(method("POST"))
        .respond_with(RetryAfterDate {
            inner: api.responder(429, json!({"message": "slow down"}), Duration::ZERO),
            ahead: Duration::from_secs(2),
        })
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&api.server)
        .await;
    let app = app_with(&api.url(), &[]).await;
    let id = id_of(&app.create_order().await);
    let order = app.wait_until_synced(id).await;

    let calls = api.recorder.calls_for(id);
    let statuses: Vec<u16> = calls.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 200]);
    let gap = calls[1].arrived - calls[0].arrived;
    assert!(
        gap >= Duration::from_millis(1_500),
        "the date was honoured: retried {gap:?} after the 429"
    );
    assert_eq!(Some(calls[1].version), order["version"].as_i64());
    assert_nothing_restarted(&app).await;
}

/// A tiny HTTP/1.1 external API written by hand, because wiremock cannot send half a body.
/// While `stall` is set it answers `Content-Length: 1000`, a few bytes, and then nothing, holding
/// the connection open; otherwise it answers 200 with the reference's message. It records each
/// request's `Idempotency-Key` with the status it got.
#[derive(Clone, Default)]
struct StallingApi {
    stall: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<(String, u16)>>>,
}

impl StallingApi {
    async fn start() -> (Self, String) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let api = Self::default();
        let server = api.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(server.clone().serve(socket));
            }
        });
        (api, url)
    }

    /// Serves one connection's requests in turn (keep-alive) until the client closes it.
    async fn serve(self, mut socket: TcpStream) {
        while let Some(key) = read_request(&mut socket).await {
            if self.stall.load(Ordering::SeqCst) {
                self.calls.lock().expect("calls").push((key, 0));
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                            Content-Length: 1000\r\n\r\n{\"mess";
                let _ = socket.write_all(head.as_bytes()).await;
                // Hold the connection, reading (nothing) until the client gives up on it.
                let mut rest = [0u8; 1024];
                while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                return;
            }
            self.calls.lock().expect("calls").push((key, 200));
            let body = r#"{"message": "Order was successfully created."}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if socket.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    fn calls(&self) -> Vec<(String, u16)> {
        self.calls.lock().expect("calls").clone()
    }
}

/// Reads one request (head and `Content-Length` body); returns its `Idempotency-Key`, or `None`
/// when the connection closed.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let header = |name: &str| {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    socket.read_exact(&mut body).await.ok()?;
    Some(header("idempotency-key").unwrap_or_default())
}

#[actix_web::test]
async fn a_body_that_never_finishes_times_out_and_does_not_hold_the_call_slot() {
    let (api, url) = StallingApi::start().await;
    api.stall.store(true, Ordering::SeqCst);
    let app = app_with(
        &url,
        &[
            ("EXTERNAL_TIMEOUT_MS", "300"),
            ("MAX_CONCURRENT_CALLS", "1"),
            ("RETRY_MAX_ATTEMPTS", "1"),
            ("DELAYED_RETRY_SCALE", "0.01"),
        ],
    )
    .await;
    let id = id_of(&app.create_order().await);
    let failed = wait_for(
        "the stalled call to time out",
        Duration::from_secs(10),
        || async {
            let order = app.get_order(id).await;
            let timed_out = order["sync"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out"));
            (order["sync"]["state"] == "retrying" || timed_out).then_some(order)
        },
    )
    .await;
    assert_ne!(failed["sync"]["state"], "synced", "{failed}");

    api.stall.store(false, Ordering::SeqCst);
    let order = app.wait_until_synced(id).await;
    // The one slot serves another order too: nothing kept it.
    let other = id_of(&app.create_order().await);
    let other_order = app.wait_until_synced(other).await;

    let calls = api.calls();
    let stalled = calls.iter().filter(|(_, status)| *status == 0).count();
    assert!(stalled >= 1, "{calls:?}");
    for (id, order) in [(id, &order), (other, &other_order)] {
        let last = calls
            .iter()
            .rev()
            .find(|(key, _)| key.starts_with(&format!("{id}:")));
        let expected = format!("{id}:{}", order["version"]);
        assert_eq!(last, Some(&(expected, 200)), "{calls:?}");
    }
    assert_nothing_restarted(&app).await;
}

/// Control characters a hostile or broken server may put in an error body: NUL (which
/// PostgreSQL's TEXT rejects), SOH, terminal colour codes, DEL, line breaks, C1, bad UTF-8.
const HOSTILE_BODY: &[u8] =
    b"kaboom\0nul \x01soh \x1b[31mred\x1b[0m \x7fdel\r\nsecond line\t\xc2\x85nel \xff\xfe end";

/// Answers like `inner` (so the call is recorded) with [`HOSTILE_BODY`] as the body.
struct Hostile(Recording);

impl Respond for Hostile {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        self.0.respond(request).set_body_bytes(HOSTILE_BODY)
    }
}

/// Matches while its flag is set. Clearing it turns a stub off at once, with the normal stubs
/// answering throughout; `server.reset()` and mounting them again would leave a moment in which a
/// retried `PUT` gets wiremock's 404, which kills the order. (A scoped mock cannot do it either:
/// wiremock 0.6 sorts its mocks by priority and then deactivates a guard's mock by its old index.)
struct While(Arc<AtomicBool>);

impl Match for While {
    fn matches(&self, _: &Request) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

#[actix_web::test]
async fn control_characters_in_error_bodies_are_cleaned_and_never_wedge_the_engine() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let failing = Arc::new(AtomicBool::new(true));
    Mock::given(body_string_contains("Nulville"))
        .and(While(failing.clone()))
        .respond_with(Hostile(api.responder(500, json!({}), Duration::ZERO)))
        .with_priority(1)
        .mount(&api.server)
        .await;
    let app = app_with(
        &api.url(),
        &[
            ("MAX_IN_FLIGHT_EVENTS", "50"),
            ("RETRY_MAX_ATTEMPTS", "2"),
            ("DELAYED_RETRY_SCALE", "0.01"),
        ],
    )
    .await;

    let mut nulville = order_body();
    nulville["city"] = json!("Nulville");
    let mut failing_ids = Vec::new();
    for _ in 0..10 {
        let response = app.post_order(&nulville).await;
        assert_eq!(response.status(), 201);
        failing_ids.push(id_of(&response.json().await.expect("order JSON")));
    }
    // 90 events for failing orders, more than MAX_IN_FLIGHT_EVENTS: had any of them wedged, so
    // would the dispatcher.
    for round in 0..8 {
        for &id in &failing_ids {
            app.patch_order(id, &json!({"amount": 2000 + round})).await;
        }
    }

    let started = Instant::now();
    let mut normal_ids = Vec::new();
    for _ in 0..60 {
        normal_ids.push(id_of(&app.create_order().await));
    }
    let all_normal = normal_ids.iter().map(i64::to_string).collect::<Vec<_>>();
    let unsynced_normal = format!(
        "orders WHERE id IN ({}) AND (sync_state <> 'synced' OR synced_version < version)",
        all_normal.join(",")
    );
    wait_for(
        "the 60 normal orders to be synced",
        Duration::from_secs(30),
        || async { (app.count(&unsynced_normal).await == 0).then_some(()) },
    )
    .await;
    let normal_took = started.elapsed();

    for &id in &failing_ids {
        let order = wait_for(
            &format!("order {id} to record its failure"),
            Duration::from_secs(10),
            || async {
                let order = app.get_order(id).await;
                order["sync"]["last_error"].is_string().then_some(order)
            },
        )
        .await;
        let error = order["sync"]["last_error"].as_str().expect("a last error");
        assert!(error.contains("kaboom"), "{error:?}");
        assert!(!error.chars().any(char::is_control), "{error:?}");
        assert_ne!(order["sync"]["state"], "synced", "{order}");
    }

    failing.store(false, Ordering::SeqCst);
    wait_for(
        "every order to be synced",
        Duration::from_secs(60),
        || async {
            (app.count("orders WHERE sync_state <> 'synced' OR synced_version < version")
                .await
                == 0)
                .then_some(())
        },
    )
    .await;
    for id in failing_ids.iter().chain(&normal_ids) {
        let order = app.get_order(*id).await;
        let last = api.recorder.calls_for(*id).pop().expect("a call");
        assert_eq!(
            (last.status, Some(last.version)),
            (200, order["version"].as_i64())
        );
    }
    assert_nothing_restarted(&app).await;
    eprintln!("60 normal orders synced in {normal_took:?} beside 10 failing ones");
}
