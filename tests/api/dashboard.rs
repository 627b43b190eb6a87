//! The dashboard in a real headless browser (Debian's chromium, driven through chromedriver
//! with fantoccini): the page shows the numbers the API reports, and its retry button retries a
//! dead order; its controls pause and resume syncing (with a banner) and follow an audit to its
//! end; a red banner says while the external API is down. Screenshots are saved as test artifacts (`target/tmp/screenshots/`). Swagger UI
//! works too. Both run under the service's content security policy, and the browser's log
//! must show no violation of it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::external::{ExternalApi, TOKEN};
use crate::helpers::{id_of, spawn_api_only, spawn_app_with, wait_for, TestApp};
use crate::process::free_port;

const ADMIN: &str = "dash_s3cret";

/// A chromedriver of the test's own, killed when dropped.
pub(crate) struct ChromeDriver {
    child: Child,
    port: u16,
}

impl ChromeDriver {
    pub(crate) async fn start() -> Self {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (.ci/run installs Debian's chromium-driver)");
        let driver = Self { child, port };
        let status = format!("http://127.0.0.1:{port}/status");
        wait_for(
            "chromedriver to be ready",
            Duration::from_secs(20),
            || async {
                let ready = reqwest::get(&status)
                    .await
                    .ok()?
                    .json::<Value>()
                    .await
                    .ok()?;
                (ready["value"]["ready"] == true).then_some(())
            },
        )
        .await;
        driver
    }

    pub(crate) async fn browser(&self) -> Client {
        let profile =
            std::env::temp_dir().join(format!("chromium-{}", uuid::Uuid::new_v4().simple()));
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--window-size=1280,1500".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut capabilities = serde_json::Map::new();
        // The browser's console log, where content security policy violations are reported.
        capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({"binary": "/usr/bin/chromium", "args": args}),
        );
        // chromedriver speaks plain HTTP on loopback: no TLS stack (and no OpenSSL) needed.
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a browser session")
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's log endpoint (not in the W3C protocol, so not in fantoccini): the browser's
/// console messages since the last time it was asked.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// The content security policy violations the browser has logged.
pub(crate) async fn policy_violations(browser: &Client) -> Vec<String> {
    let log = browser
        .issue_cmd(BrowserLog)
        .await
        .expect("the browser's log");
    log.as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["message"].as_str())
        .filter(|message| message.contains("Content Security Policy"))
        .map(str::to_string)
        .collect()
}

pub(crate) async fn text_of(browser: &Client, css: &str) -> Option<String> {
    browser
        .find(Locator::Css(css))
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Waits until the element's text equals `expected`.
pub(crate) async fn wait_for_text(browser: &Client, css: &str, expected: &str) {
    wait_for(
        &format!("{css} to show {expected}"),
        Duration::from_secs(20),
        || async { (text_of(browser, css).await.as_deref() == Some(expected)).then_some(()) },
    )
    .await;
}

async fn quiet_metrics(app: &TestApp) -> Value {
    wait_for("the engine to be idle", Duration::from_secs(20), || async {
        let m = app.actor_metrics().await;
        (m["events"]["in_flight"] == 0 && m["backlog"]["stream_length"] == 0).then_some(m)
    })
    .await
}

#[actix_web::test]
async fn the_dashboard_shows_the_apis_numbers_and_its_retry_button_retries_a_dead_order() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 1, 422, json!({"message": "address rejected"}), None)
        .await;
    let url = api.url();
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &url),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("ADMIN_TOKEN", ADMIN),
        ("ORDER_ACTOR_IDLE_SECS", "600"),
    ])
    .await;
    let dead = app.create_order().await["id"].as_i64().unwrap();
    wait_for("the order to be dead", Duration::from_secs(20), || async {
        (app.get_order(dead).await["sync"]["state"] == "dead").then_some(())
    })
    .await;
    for _ in 0..4 {
        let id = app.create_order().await["id"].as_i64().unwrap();
        app.wait_until_synced(id).await;
    }
    let metrics = quiet_metrics(&app).await;

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&app.url("/"))
        .await
        .expect("the dashboard loads");
    for (css, value) in [
        ("#stat-synced", &metrics["events"]["synced"]),
        ("#stat-received", &metrics["events"]["received"]),
        ("#stat-live-actors", &metrics["actors"]["live"]),
        ("#stat-dead", &metrics["orders"]["dead"]),
        ("#stat-backlog", &metrics["backlog"]["stream_length"]),
        ("#stat-outbox", &metrics["backlog"]["outbox_rows"]),
    ] {
        wait_for_text(&browser, css, &value.to_string()).await;
    }
    assert_eq!(metrics["events"]["synced"], 4);
    assert_eq!(metrics["orders"]["dead"], 1);

    // The operator enters the token; the dead order appears with its error.
    enter_admin_token(&browser).await;
    let row = format!("#failed-orders tr[data-order-id=\"{dead}\"]");
    wait_for("the dead order's row", Duration::from_secs(20), || async {
        text_of(&browser, &row)
            .await
            .filter(|t| t.contains("address rejected"))
    })
    .await;
    browser
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    let png = browser.screenshot().await.expect("a screenshot");
    save_screenshot("dashboard.png", &png);
    assert!(png.len() > 10_000, "the screenshot is an image of the page");

    // The external API accepts it now; the retry button syncs it.
    let button = format!("button.retry-button[data-order-id=\"{dead}\"]");
    browser
        .find(Locator::Css(&button))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let order = app.wait_until_synced(dead).await;
    assert_eq!(order["sync"]["synced_version"], 1);
    wait_for_text(&browser, "#stat-dead", "0").await;
    let message = text_of(&browser, "#admin-message")
        .await
        .unwrap_or_default();
    assert!(
        message.contains(&dead.to_string()),
        "the page says what it did: {message:?}"
    );
    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
}

/// Keeps a screenshot as a test artifact, under `target/tmp/screenshots/`.
pub(crate) fn save_screenshot(name: &str, png: &[u8]) {
    let shots = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join(name), png).unwrap();
}

/// The user types the API token into the page's header and saves it.
pub(crate) async fn enter_api_token(browser: &Client, token: &str) {
    browser
        .find(Locator::Css("#api-token"))
        .await
        .expect("the token field")
        .send_keys(token)
        .await
        .expect("typed");
    click(browser, "#save-api-token").await;
}

/// The operator types the admin token and saves it.
async fn enter_admin_token(browser: &Client) {
    browser
        .find(Locator::Css("#admin-token"))
        .await
        .unwrap()
        .send_keys(ADMIN)
        .await
        .unwrap();
    click(browser, "#save-token").await;
}

pub(crate) async fn click(browser: &Client, css: &str) {
    browser
        .wait()
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
}

#[actix_web::test]
async fn swagger_ui_shows_the_api_and_tries_a_call_under_the_content_security_policy() {
    let app = spawn_api_only().await;
    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser.goto(&app.url("/docs")).await.expect("/docs loads");
    wait_for("Swagger UI's title", Duration::from_secs(20), || async {
        text_of(&browser, ".swagger-ui .info .title")
            .await
            .filter(|t| t.contains("order-sync"))
    })
    .await;
    // Try it out: GET /health from the page, which needs a script and a same-origin fetch.
    let health = "#operations-operations-check_health";
    click(&browser, &format!("{health} .opblock-summary")).await;
    click(&browser, &format!("{health} .try-out__btn")).await;
    click(&browser, &format!("{health} .execute")).await;
    wait_for_text(
        &browser,
        &format!("{health} .live-responses-table tbody .response-col_status"),
        "200",
    )
    .await;
    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
}

#[actix_web::test]
async fn the_dashboard_asks_for_the_api_token_and_announces_the_built_in_fake() {
    // No EXTERNAL_API_URL: the built-in fake; API_TOKENS set: the figures need the token.
    let app = spawn_app_with(&[("API_TOKENS", "dash-token")]).await;
    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&app.url("/"))
        .await
        .expect("the page loads without a token");
    wait_for_text(&browser, "#status-line", "enter the API token (401)").await;
    wait_for(
        "the development banner",
        Duration::from_secs(20),
        || async {
            let banner = browser.find(Locator::Css("#fake-banner")).await.ok()?;
            banner
                .is_displayed()
                .await
                .ok()
                .filter(|shown| *shown)
                .map(|_| ())
        },
    )
    .await;
    enter_api_token(&browser, "dash-token").await;
    wait_for("the figures", Duration::from_secs(20), || async {
        text_of(&browser, "#status-line")
            .await
            .filter(|t| t.starts_with("updated"))
    })
    .await;
    wait_for_text(&browser, "#stat-synced", "0").await;
    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
}

#[actix_web::test]
async fn an_order_is_looked_up_from_its_failed_row_and_the_chart_opens_on_the_servers_history() {
    let api = ExternalApi::start(Duration::ZERO).await;
    api.fail_next("POST", 1, 422, json!({"message": "address rejected"}), None)
        .await;
    let app = spawn_app_with(&[
        ("EXTERNAL_API_URL", &api.url()),
        ("EXTERNAL_API_TOKEN", TOKEN),
        ("ADMIN_TOKEN", ADMIN),
    ])
    .await;
    let dead = app.create_order().await["id"].as_i64().unwrap();
    wait_for("the order to be dead", Duration::from_secs(20), || async {
        (app.get_order(dead).await["sync"]["state"] == "dead").then_some(())
    })
    .await;
    // The server keeps a point every 5 s: wait for two, so the chart has a line to draw.
    let kept = wait_for("two history points", Duration::from_secs(30), || async {
        let history = app.get_json("/metrics/history").await;
        let points = history["points"].as_array()?.len();
        (points >= 2).then_some(points)
    })
    .await;

    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&app.url("/"))
        .await
        .expect("the dashboard loads");
    // On page load the chart draws what the server kept, not an empty window.
    wait_for("the chart's history", Duration::from_secs(20), || async {
        let drawn: usize = browser
            .find(Locator::Css("#chart"))
            .await
            .ok()?
            .attr("data-points")
            .await
            .ok()??
            .parse()
            .ok()?;
        (drawn >= kept).then_some(())
    })
    .await;

    // The failed row's id links to the order's lookup.
    enter_admin_token(&browser).await;
    click(
        &browser,
        &format!("#failed-orders tr[data-order-id=\"{dead}\"] a.order-link"),
    )
    .await;
    wait_for_text(
        &browser,
        "#lookup-explanation",
        &format!("Order {dead}: dead: 422 address rejected"),
    )
    .await;
    let attempt = text_of(&browser, "#lookup-timeline li").await.unwrap();
    assert!(attempt.contains("POST version 1 → 422"), "{attempt}");
    assert!(attempt.contains("address rejected"), "{attempt}");
    let lookup = browser.find(Locator::Css("#lookup")).await.unwrap();
    let png = lookup.screenshot().await.expect("a screenshot");
    save_screenshot("order-lookup.png", &png);

    // Retried, it syncs; the lookup follows, and a lookup by typing the id shows the same.
    click(
        &browser,
        &format!("button.retry-button[data-order-id=\"{dead}\"]"),
    )
    .await;
    app.wait_until_synced(dead).await;
    let synced = format!("Order {dead}: synced at version 1");
    wait_for(
        "the lookup to follow the retry",
        Duration::from_secs(20),
        || async {
            text_of(&browser, "#lookup-explanation")
                .await
                .filter(|t| t.starts_with(&synced))
        },
    )
    .await;
    let items = browser
        .find_all(Locator::Css("#lookup-timeline li"))
        .await
        .unwrap();
    assert_eq!(items.len(), 2);
    assert!(items[0]
        .text()
        .await
        .unwrap()
        .contains("POST version 1 → 200"));
    let unknown = browser.find(Locator::Css("#lookup-id")).await.unwrap();
    unknown.clear().await.unwrap();
    unknown.send_keys("999999").await.unwrap();
    click(&browser, "#lookup-go").await;
    wait_for_text(&browser, "#lookup-message", "No order 999999").await;
    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
}

/// Clicks a button that asks for confirmation, checks that the dialog says `says`, and accepts.
async fn click_and_confirm(browser: &Client, css: &str, says: &str) {
    click(browser, css).await;
    let question = wait_for(
        "the confirmation dialog",
        Duration::from_secs(10),
        || async { browser.get_alert_text().await.ok() },
    )
    .await;
    assert!(question.contains(says), "{css} asks: {question:?}");
    browser
        .accept_alert()
        .await
        .expect("the dialog is accepted");
}

/// Waits until the element is shown (or hidden).
pub(crate) async fn wait_until_shown(browser: &Client, css: &str, shown: bool) {
    let what = format!("{css} to be {}", if shown { "shown" } else { "hidden" });
    wait_for(&what, Duration::from_secs(20), || async {
        let element = browser.find(Locator::Css(css)).await.ok()?;
        (element.is_displayed().await.ok()? == shown).then_some(())
    })
    .await;
}

async fn attr_of(browser: &Client, css: &str, name: &str) -> Option<String> {
    browser
        .find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()?
}

#[actix_web::test]
async fn the_dashboard_pauses_and_resumes_syncing_and_follows_an_audit_to_its_end() {
    // The built-in fake external API keeps what it is sent, so an audit can read it back.
    let app = spawn_app_with(&[("ADMIN_TOKEN", ADMIN)]).await;
    for _ in 0..3 {
        let id = id_of(&app.create_order().await);
        app.wait_until_synced(id).await;
    }
    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&app.url("/"))
        .await
        .expect("the dashboard loads");
    wait_for_text(&browser, "#sync-state", "sync: running").await;
    wait_until_shown(&browser, "#paused-banner", false).await;
    wait_until_shown(&browser, "#control-hint", true).await;

    // The operator enters the token and pauses syncing: the banner says so, and so does /health.
    enter_admin_token(&browser).await;
    wait_until_shown(&browser, "#control-hint", false).await;
    wait_for_text(&browser, "#sync-toggle", "Pause syncing").await;
    click_and_confirm(
        &browser,
        "#sync-toggle",
        "No calls are made to the external API until you resume",
    )
    .await;
    wait_until_shown(&browser, "#paused-banner", true).await;
    let banner = text_of(&browser, "#paused-banner").await.unwrap();
    assert!(
        banner.contains("Syncing is paused: no calls are made to the external API"),
        "{banner}"
    );
    wait_for_text(&browser, "#sync-state", "sync: paused").await;
    wait_for_text(&browser, "#sync-toggle", "Resume syncing").await;
    assert_eq!(app.get_json("/health").await["sync"], "paused");
    assert_eq!(app.actor_metrics().await["sync"], "paused");
    // A change made while paused is kept, and sent on resume.
    let kept = id_of(&app.create_order().await);
    browser
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    let png = browser.screenshot().await.expect("a screenshot");
    save_screenshot("dashboard-paused.png", &png);

    // The banner's button resumes.
    click_and_confirm(
        &browser,
        "#banner-resume",
        "Resume syncing on every instance?",
    )
    .await;
    wait_until_shown(&browser, "#paused-banner", false).await;
    wait_for_text(&browser, "#sync-toggle", "Pause syncing").await;
    assert_eq!(app.get_json("/health").await["sync"], "running");
    app.wait_until_synced(kept).await;

    // An audit of every order: its row gets a progress bar, which the page follows to the end.
    click_and_confirm(&browser, "#start-audit", "Audit every order").await;
    let row = "#jobs tbody tr[data-kind=\"audit\"]";
    let id = wait_for("the audit's row", Duration::from_secs(20), || async {
        attr_of(&browser, row, "data-job-id").await
    })
    .await;
    let message = text_of(&browser, "#control-message")
        .await
        .unwrap_or_default();
    assert!(
        message.starts_with(&format!("Audit started: job {id}")),
        "{message:?}"
    );
    let done = format!("#jobs tbody tr[data-job-id=\"{id}\"][data-status=\"done\"]");
    wait_for("the audit to be done", Duration::from_secs(60), || async {
        attr_of(&browser, &done, "data-job-id").await
    })
    .await;
    let job: Value = app
        .http
        .get(app.url(&format!("/admin/jobs/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("request sent")
        .json()
        .await
        .expect("a job");
    assert_eq!(job["status"], "done");
    assert_eq!(job["total"], 4, "{job}");
    assert_eq!(job["checked"], job["total"], "{job}");
    let bar = format!("{done} progress.job-progress");
    let value: f64 = attr_of(&browser, &bar, "value")
        .await
        .expect("the row has a progress bar")
        .parse()
        .unwrap();
    assert!(
        (value - job["progress"].as_f64().unwrap()).abs() < 1e-9,
        "{value} {job}"
    );
    let counts = text_of(&browser, &format!("{done} .counts")).await.unwrap();
    let expected = format!(
        "checked {} of {} · {} matching",
        job["checked"], job["total"], job["matching"]
    );
    assert!(counts.starts_with(&expected), "{counts:?} {expected:?}");
    browser
        .execute(
            "document.querySelector('#control').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    let control = browser.find(Locator::Css("#control")).await.unwrap();
    let png = control.screenshot().await.expect("a screenshot");
    save_screenshot("dashboard-jobs.png", &png);

    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
}

#[actix_web::test]
async fn the_dashboard_says_when_the_external_api_is_down_and_when_it_is_back() {
    let api = ExternalApi::start(Duration::ZERO).await;
    let outage = crate::destination::Outage::mount(&api, Duration::ZERO).await;
    let app = crate::helpers::spawn_app_syncing_to(
        &api.url(),
        &[
            ("EXTERNAL_API_DOWN_AFTER", "2"),
            ("RETRY_MAX_ATTEMPTS", "1"),
        ],
    )
    .await;
    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&app.url("/"))
        .await
        .expect("the dashboard loads");
    wait_until_shown(&browser, "#api-down-banner", false).await;

    outage.begin();
    let waiting = [
        id_of(&app.create_order().await),
        id_of(&app.create_order().await),
        id_of(&app.create_order().await),
    ];
    wait_until_shown(&browser, "#api-down-banner", true).await;
    let banner = text_of(&browser, "#api-down-banner").await.unwrap();
    assert!(
        banner.starts_with("External API down since") && banner.contains("orders waiting"),
        "{banner}"
    );
    browser
        .execute("window.scrollTo(0, 0)", vec![])
        .await
        .unwrap();
    let png = browser.screenshot().await.expect("a screenshot");
    save_screenshot("external-api-down.png", &png);

    outage.end();
    for id in waiting {
        app.wait_until_synced(id).await;
    }
    wait_until_shown(&browser, "#api-down-banner", false).await;
    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
}

#[actix_web::test]
async fn the_dashboard_says_when_no_worker_is_live() {
    // An API instance alone: it relays changes into the streams, and nothing takes them.
    let app = spawn_app_with(&[("ROLE", "api")]).await;
    let driver = ChromeDriver::start().await;
    let browser = driver.browser().await;
    browser
        .goto(&app.url("/"))
        .await
        .expect("the dashboard loads");
    wait_until_shown(&browser, "#no-worker-banner", false).await;
    let waiting = id_of(&app.create_order().await);

    // Said once the change has waited 30 s with no shard held (and the next look, 5 s).
    wait_for("the no-worker banner", Duration::from_secs(60), || async {
        let banner = browser.find(Locator::Css("#no-worker-banner")).await.ok()?;
        banner.is_displayed().await.ok()?.then_some(())
    })
    .await;
    let banner = text_of(&browser, "#no-worker-banner").await.unwrap();
    assert!(
        banner.starts_with("No worker is live since") && banner.contains("ROLE=worker"),
        "{banner}"
    );
    let order = app.get_order(waiting).await;
    assert_eq!(
        order["sync"]["state"], "pending",
        "nothing synced it: {order}"
    );
    let violations = policy_violations(&browser).await;
    assert!(violations.is_empty(), "{violations:#?}");
    browser.close().await.ok();
}
