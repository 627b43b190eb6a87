//! `spawn_app()`: a real service instance on a random port, with its own freshly created
//! PostgreSQL database and its own Redis prefix, so tests run in parallel and leave nothing
//! behind. The database is dropped when the `TestApp` is.

use std::time::Duration;

use order_sync::config::Settings;
use order_sync::startup::Application;
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
// The database, Redis and waiting helpers are shared with the seeder's tests and the benchmark.
pub use test_support::{database_server, drop_database, redis_url, unique_db_name, wait_for};
use test_support::{drop_database_blocking, sweep_stale_databases_once, unique_redis_prefix};

pub struct TestApp {
    pub address: String,
    /// Where the app sends external calls (the built-in fake when none was given).
    pub external_api_url: String,
    pub db_name: String,
    #[allow(dead_code)] // used by the sync engine tests
    pub redis_prefix: String,
    /// A small pool on the test's database, for checking what was written.
    pub pool: PgPool,
    pub http: reqwest::Client,
}

/// Builds settings for a test instance; `overrides` are `(VARIABLE, value)` pairs.
pub fn test_settings(db_name: &str, redis_prefix: &str, overrides: &[(&str, &str)]) -> Settings {
    let vars = vec![
        (
            "DATABASE_URL".to_string(),
            format!("{}/{db_name}", database_server()),
        ),
        ("DATABASE_MAX_CONNECTIONS".to_string(), "5".to_string()),
        ("REDIS_URL".to_string(), redis_url()),
        ("REDIS_PREFIX".to_string(), redis_prefix.to_string()),
        ("HOST".to_string(), "127.0.0.1".to_string()),
        ("PORT".to_string(), "0".to_string()),
        ("SHUTDOWN_TIMEOUT_SECS".to_string(), "1".to_string()),
    ];
    // Later pairs win, as overrides should.
    let vars: std::collections::BTreeMap<String, String> = vars
        .into_iter()
        .chain(
            overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .collect();
    Settings::from_vars(vars).expect("test settings are valid")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// An app without its sync engine (`SYNC_ENGINE=false`): the outbox rows and sync columns stay
/// exactly as the API wrote them, for tests of the API's writes.
pub async fn spawn_api_only() -> TestApp {
    spawn_app_with(&[("SYNC_ENGINE", "false")]).await
}

/// An app that syncs to the external API at `url` with the tests' token, and `extra` settings.
pub async fn spawn_app_syncing_to(url: &str, extra: &[(&str, &str)]) -> TestApp {
    let mut vars = vec![
        ("EXTERNAL_API_URL", url),
        ("EXTERNAL_API_TOKEN", crate::external::TOKEN),
    ];
    vars.extend_from_slice(extra);
    spawn_app_with(&vars).await
}

/// An order's id, from its JSON.
pub fn id_of(order: &Value) -> i64 {
    order["id"].as_i64().expect("order id")
}

pub async fn spawn_app_with(overrides: &[(&str, &str)]) -> TestApp {
    sweep_stale_databases_once().await;
    let redis_prefix = unique_redis_prefix();
    let settings = test_settings(&unique_db_name(), &redis_prefix, overrides);
    // A DATABASE_URL override (a second instance on another's database) names the database.
    let db_name = settings
        .database
        .url
        .expose()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let app = Application::build(settings)
        .await
        .expect("the test app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let external_api_url = app.external_api_url().to_string();
    actix_rt::spawn(app.run_until_stopped());
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&format!("{}/{db_name}", database_server()))
        .await
        .expect("connect to the test database");
    TestApp {
        address,
        external_api_url,
        db_name,
        redis_prefix,
        pool,
        http: reqwest::Client::new(),
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        drop_database_blocking(&self.db_name);
    }
}

/// A valid order body; tests change single fields of it.
pub fn order_body() -> Value {
    json!({
        "status": "delivered",
        "placed_at": "2025-06-01T10:00:00Z",
        "delivered_at": "2025-06-04T10:00:00Z",
        "amount": 1000,
        "tax": 180,
        "street_address": "12 MG Road",
        "city": "Pune",
        "state": "Maharashtra",
        "country": "India",
        "pincode": "011001"
    })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_order(&self, body: &Value) -> reqwest::Response {
        self.http
            .post(self.url("/orders"))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Creates a valid order and returns its JSON.
    pub async fn create_order(&self) -> Value {
        let response = self.post_order(&order_body()).await;
        assert_eq!(response.status(), 201);
        response.json().await.expect("order JSON")
    }

    pub async fn count(&self, table: &str) -> i64 {
        // Audited: `table` is a name the test itself writes.
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(&self.pool)
            .await
            .expect("count rows")
    }

    /// `GET path` answered with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("a JSON answer")
    }

    pub async fn get_order(&self, id: i64) -> Value {
        self.get_json(&format!("/orders/{id}")).await
    }

    pub async fn patch_order(&self, id: i64, body: &Value) -> Value {
        let response = self
            .http
            .patch(self.url(&format!("/orders/{id}")))
            .json(body)
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        response.json().await.expect("order JSON")
    }

    pub async fn delete_order(&self, id: i64) {
        let response = self
            .http
            .delete(self.url(&format!("/orders/{id}")))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 204);
    }

    /// Waits until the order's external copy is at its current version.
    pub async fn wait_until_synced(&self, id: i64) -> Value {
        wait_for(
            &format!("order {id} to be synced"),
            Duration::from_secs(20),
            || async {
                let order = self.get_order(id).await;
                let synced = order["sync"]["state"] == "synced"
                    && order["sync"]["synced_version"] == order["version"];
                synced.then_some(order)
            },
        )
        .await
    }

    /// Waits until a deleted order's tombstone is gone (its delete was synced, or not owed).
    pub async fn wait_until_purged(&self, id: i64) {
        wait_for(
            &format!("order {id} to be purged"),
            Duration::from_secs(20),
            || async { (self.count(&format!("orders WHERE id = {id}")).await == 0).then_some(()) },
        )
        .await
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn prometheus_text(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("a text answer")
    }

    pub async fn actor_metrics(&self) -> Value {
        self.get_json("/metrics/actors").await
    }

    /// Every order row and outbox row, to compare before and after a rejected request.
    pub async fn snapshot(&self) -> (Vec<String>, Vec<String>) {
        let orders = sqlx::query_scalar("SELECT row_to_json(o)::text FROM orders o ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .expect("read orders");
        let outbox = sqlx::query_scalar("SELECT row_to_json(o)::text FROM outbox o ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .expect("read outbox");
        (orders, outbox)
    }
}
