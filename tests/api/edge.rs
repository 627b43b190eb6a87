//! The production edge, black-box through real sockets: compressed request bodies are refused
//! before they can inflate, JSON routes take JSON only, numbered pages stop at 10,000 orders,
//! slow clients are cut off, a statement that runs too long is cancelled, and every answer
//! carries the security headers.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{order_body, spawn_api_only};
use crate::process::{get_json_at, log_path, service_env, OwnDatabase, ServiceProcess};

/// How much a bomb inflates to (a gzip bomb a little less: deflate cannot beat about 1:1000, and
/// the compressed body must fit in `MAX_BODY_BYTES` to reach the inflater at all).
const BOMB_INFLATED: usize = 64 << 20;
const GZIP_BOMB_INFLATED: usize = 62 << 20;

/// Requests of each kind of bomb in flight at once, per route.
const BOMBS_AT_ONCE: usize = 8;

/// `head` followed by `padding` spaces: still valid JSON, so a service that inflated it without
/// a bound would act on it.
fn padded(head: &Value, padding: usize) -> impl Read {
    let spaces = Read::take(std::io::repeat(b' '), padding as u64);
    Read::chain(std::io::Cursor::new(head.to_string().into_bytes()), spaces)
}

fn gzip_bomb(head: &Value, inflated: usize) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::copy(&mut padded(head, inflated), &mut encoder).expect("gzip");
    encoder.finish().expect("gzip")
}

fn brotli_bomb(head: &Value, inflated: usize) -> Vec<u8> {
    let mut encoder = brotli::CompressorWriter::new(Vec::new(), 1 << 16, 5, 24);
    std::io::copy(&mut padded(head, inflated), &mut encoder).expect("brotli");
    encoder.flush().expect("brotli");
    encoder.into_inner()
}

fn zstd_bomb(head: &Value, inflated: usize) -> Vec<u8> {
    zstd::stream::encode_all(padded(head, inflated), 3).expect("zstd")
}

/// The child's peak resident set so far (`VmHWM`), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Asserts the one error shape (a problem detail) with `status` and `code`; returns the body.
async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status(), status, "{response:?}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{response:?}"
    );
    let body: Value = response.json().await.expect("errors are JSON");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(body["detail"].as_str().is_some_and(|m| !m.is_empty()));
    body
}

#[actix_web::test]
async fn gzip_brotli_and_zstd_bombs_are_refused_unread_without_growing_memory_or_writing() {
    let db = OwnDatabase::new();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let env = service_env(&db, &prefix, &[("SYNC_ENGINE", "false")]);
    let mut service = ServiceProcess::start(&env, &log_path(&format!("bombs-{prefix}")));
    service.wait_ready().await;
    let http = reqwest::Client::new();
    let created: Value = http
        .post(service.url("/orders"))
        .json(&order_body())
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("order JSON");
    let id = created["id"].as_i64().expect("id");
    let before: Value = get_json_at(&http, &service.url("/orders")).await;

    let order = order_body();
    let write_back = json!({"order": {"status": "canceled"}});
    let started = Instant::now();
    let bombs = [
        (
            "gzip",
            GZIP_BOMB_INFLATED,
            gzip_bomb(&order, GZIP_BOMB_INFLATED),
            gzip_bomb(&write_back, GZIP_BOMB_INFLATED),
        ),
        (
            "br",
            BOMB_INFLATED,
            brotli_bomb(&order, BOMB_INFLATED),
            brotli_bomb(&write_back, BOMB_INFLATED),
        ),
        (
            "zstd",
            BOMB_INFLATED,
            zstd_bomb(&order, BOMB_INFLATED),
            zstd_bomb(&write_back, BOMB_INFLATED),
        ),
    ];
    eprintln!("bombs built in {:?}", started.elapsed());
    // Each bomb on a connection of its own, as an attacker's would be: a pooled connection left
    // idle while the bombs were built (seconds on a loaded machine) may have been closed by the
    // server's keep-alive timeout, and reusing it would fail the request, not the service.
    let bomber = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("a client");

    for (coding, inflated, create_bomb, write_back_bomb) in bombs {
        assert!(create_bomb.len() < 65_536 && write_back_bomb.len() < 65_536);
        let peak_before = peak_rss_kib(service.pid());
        let started = Instant::now();
        let creates = (0..BOMBS_AT_ONCE).map(|_| {
            bomber
                .post(service.url("/orders"))
                .header("content-type", "application/json")
                .header("content-encoding", coding)
                .body(create_bomb.clone())
                .send()
        });
        let write_backs = (0..BOMBS_AT_ONCE).map(|_| {
            bomber
                .put(service.url(&format!("/inbound/{id}")))
                .header("content-type", "application/json")
                .header("content-encoding", coding)
                .body(write_back_bomb.clone())
                .send()
        });
        let (creates, write_backs) = futures_util::join!(
            futures_util::future::join_all(creates),
            futures_util::future::join_all(write_backs)
        );
        for answer in creates.into_iter().chain(write_backs) {
            assert_error(answer.expect("an answer"), 415, "unsupported_media_type").await;
        }
        let peak_after = peak_rss_kib(service.pid());
        eprintln!(
            "{coding}: {} + {} bytes ({} MiB inflated) x {BOMBS_AT_ONCE} each: VmHWM {peak_before} -> \
             {peak_after} KiB, answered in {:?}",
            create_bomb.len(),
            write_back_bomb.len(),
            inflated >> 20,
            started.elapsed()
        );
        assert!(
            peak_after.saturating_sub(peak_before) < 16 * 1024,
            "{coding} bombs raised peak RSS from {peak_before} to {peak_after} KiB"
        );
    }

    let after: Value = get_json_at(&http, &service.url("/orders")).await;
    assert_eq!(after, before, "a refused bomb wrote something");
}

#[actix_web::test]
async fn json_routes_refuse_other_content_types_with_415_and_write_nothing() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let before = app.snapshot().await;
    let order = order_body().to_string();
    let path = app.url(&format!("/orders/{id}"));
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
    ] {
        for (verb, request) in [
            ("POST", app.http.post(app.url("/orders"))),
            ("PUT", app.http.put(&path)),
            ("PATCH", app.http.patch(&path)),
        ] {
            let request = match content_type {
                Some(value) => request.header("content-type", value),
                None => request,
            };
            let response = request.body(order.clone()).send().await.unwrap();
            let error = assert_error(response, 415, "unsupported_media_type").await;
            assert!(
                error["detail"]
                    .as_str()
                    .is_some_and(|m| m.contains("application/json")),
                "{verb} with {content_type:?}: {error}"
            );
        }
    }
    // The write-back takes JSON or a form, nothing else.
    let response = app
        .http
        .put(app.url(&format!("/inbound/{id}")))
        .header("content-type", "text/plain")
        .body(json!({"order": {"status": "canceled"}}).to_string())
        .send()
        .await
        .unwrap();
    assert_error(response, 415, "unsupported_media_type").await;
    assert_eq!(
        app.snapshot().await,
        before,
        "a refused request wrote something"
    );

    // JSON with its content type still works, with parameters too.
    let response = app
        .http
        .patch(&path)
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({"city": "Mumbai"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[actix_web::test]
async fn a_numbered_page_beyond_the_first_10000_orders_is_refused_with_422_pointing_to_cursor() {
    let app = spawn_api_only().await;
    for (query, page_error) in [
        ("page=100&per_page=100", false),
        ("page=100", false),
        ("page=101&per_page=100", true),
        ("page=101&per_page=1", true),
        ("page=4294967295&per_page=100", true),
    ] {
        let response = app
            .http
            .get(app.url(&format!("/orders?{query}")))
            .send()
            .await
            .unwrap();
        if !page_error {
            assert_eq!(response.status(), 200, "{query}");
            continue;
        }
        let error = assert_error(response, 422, "validation_failed").await;
        let message = error["fields"]["page"].as_str().unwrap_or_default();
        assert!(message.contains("cursor"), "{query}: {error}");
    }
    // Cursor pages go as deep as the orders do.
    let response = app
        .http
        .get(app.url("/orders?cursor=1000000&per_page=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// Security headers every answer must carry.
fn assert_security_headers(path: &str, response: &reqwest::Response) {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let policy = header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(
            policy.split(';').any(|d| d.trim() == directive),
            "{path}: {directive} missing from {policy:?}"
        );
    }
    assert!(!policy.contains("unsafe"), "{path}: {policy:?}");
    assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
}

#[actix_web::test]
async fn every_answer_carries_the_security_headers_and_the_pages_have_no_inline_code() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let requests = [
        ("GET /", app.http.get(app.url("/"))),
        ("GET /dashboard.js", app.http.get(app.url("/dashboard.js"))),
        (
            "GET /dashboard.css",
            app.http.get(app.url("/dashboard.css")),
        ),
        ("GET /docs", app.http.get(app.url("/docs"))),
        (
            "GET /docs/swagger-init.js",
            app.http.get(app.url("/docs/swagger-init.js")),
        ),
        ("GET /openapi.json", app.http.get(app.url("/openapi.json"))),
        ("GET /health", app.http.get(app.url("/health"))),
        ("GET /metrics", app.http.get(app.url("/metrics"))),
        ("GET /orders", app.http.get(app.url("/orders"))),
        (
            "GET /orders/{id}",
            app.http.get(app.url(&format!("/orders/{id}"))),
        ),
        ("GET /nowhere (404)", app.http.get(app.url("/nowhere"))),
        ("DELETE /orders (405)", app.http.delete(app.url("/orders"))),
        (
            "POST /orders text (415)",
            app.http.post(app.url("/orders")).body("{}"),
        ),
        (
            "POST /orders {} (422)",
            app.http.post(app.url("/orders")).json(&json!({})),
        ),
    ];
    for (what, request) in requests {
        let response = request.send().await.unwrap();
        assert_security_headers(what, &response);
        if matches!(what, "GET /" | "GET /docs") {
            let page = response.text().await.unwrap();
            assert!(
                !page.contains("<script>") && !page.contains("<style"),
                "{what}"
            );
            assert!(!page.contains("style="), "{what}");
            assert!(!has_event_handler_attribute(&page), "{what}");
        }
    }
}

/// True when the page has an inline event handler (` onclick=`, ` onload=`, ...).
fn has_event_handler_attribute(page: &str) -> bool {
    page.match_indices(" on").any(|(at, _)| {
        let rest = &page[at + 3..];
        let name_len = rest.chars().take_while(char::is_ascii_lowercase).count();
        name_len > 0 && rest[name_len..].starts_with('=')
    })
}

/// Sends a request's head and then a byte a second (or the head itself a byte a second), as a
/// slowloris client does; returns the answer and how long until the server hung up, or panics
/// after `give_up`.
async fn trickle(address: &str, head: &[u8], then_a_byte_a_second: bool) -> (String, Duration) {
    let give_up = Duration::from_secs(20);
    let mut socket = TcpStream::connect(address.trim_start_matches("http://"))
        .await
        .expect("connect");
    let started = Instant::now();
    let (mut reader, mut writer) = socket.split();
    let mut answer = Vec::new();
    let read_all = reader.read_to_end(&mut answer);
    let write_slowly = async {
        if then_a_byte_a_second {
            writer.write_all(head).await.expect("head");
        }
        let trickled: &[u8] = if then_a_byte_a_second {
            b"{                  "
        } else {
            head
        };
        for byte in trickled.iter().cycle() {
            // The server hanging up ends this; so does the read finishing first.
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        read = read_all => { read.ok(); }
        _ = write_slowly => {}
        _ = tokio::time::sleep(give_up) => panic!("the slow client was not cut off within {give_up:?}"),
    }
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

/// The service's limits (`BODY_READ_TIMEOUT` and the head's timeout, both 5 s), plus the second
/// it lingers to read what the client is still sending before it closes, plus slack.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(9);

#[actix_web::test]
async fn a_body_sent_a_byte_a_second_is_cut_off_with_408_within_a_few_seconds() {
    let app = spawn_api_only().await;
    let head = b"POST /orders HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
        Content-Length: 1000\r\n\r\n";
    let (answer, elapsed) = trickle(&app.address, head, true).await;
    eprintln!("slow body: cut off after {elapsed:?}: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer:?}");
    assert!(elapsed < CUT_OFF_WITHIN, "cut off after {elapsed:?}");
    assert_eq!(app.count("orders").await, 0);
}

#[actix_web::test]
async fn a_request_head_sent_a_byte_a_second_is_cut_off_within_a_few_seconds() {
    let app = spawn_api_only().await;
    let head =
        b"POST /orders HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (answer, elapsed) = trickle(&app.address, head, false).await;
    eprintln!("slow head: cut off after {elapsed:?}: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(elapsed < CUT_OFF_WITHIN, "cut off after {elapsed:?}");
}

/// A write blocked behind a lock is cancelled by `statement_timeout` (10 s) and answered 503
/// with `Retry-After`, not left holding its connection; the lock is the test's own.
#[actix_web::test]
async fn a_statement_blocked_past_the_statement_timeout_is_cancelled_and_answered_503() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let before = app.snapshot().await;
    let mut lock = app.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let started = Instant::now();
    let response = app
        .http
        .patch(app.url(&format!("/orders/{id}")))
        .json(&json!({"city": "Mumbai"}))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    lock.rollback().await.unwrap();
    eprintln!(
        "blocked write answered {} after {elapsed:?}",
        response.status()
    );
    assert!(
        response.headers().contains_key("retry-after"),
        "{response:?}"
    );
    assert_error(response, 503, "unavailable").await;
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(20)).contains(&elapsed),
        "answered after {elapsed:?}"
    );
    assert_eq!(app.snapshot().await, before);
    // The lock gone, the same write goes through.
    let order = app.patch_order(id, &json!({"city": "Mumbai"})).await;
    assert_eq!(order["city"], "Mumbai");
}
