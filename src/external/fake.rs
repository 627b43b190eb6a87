//! The built-in fake external API: the reference's WebMock stubs as a running server.
//!
//! It answers `POST /v1/orders`, `PUT|DELETE|GET /v1/orders/{id}` and `GET /v1/orders` with the
//! stubs' messages, requires a bearer token as the stubs did, and keeps what it was sent in
//! memory so `GET` returns it. Knobs for demos and benchmarks: a latency and a failure rate
//! (answered with 500), set at start (`FAKE_API_LATENCY_MS`, `FAKE_API_FAILURE_RATE`) or live
//! with `PUT /_fake/config {"latency_ms": 50, "failure_rate": 0.1}`; `GET /_fake/stats` counts
//! the calls by verb, `GET /_fake/timeline` counts them per 100 ms (for rate measurements), and
//! `POST /_fake/reset` forgets everything.

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header::AUTHORIZATION;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The fake's knobs.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct FakeConfig {
    /// Added to every answer.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of calls answered with 500, from 0.0 to 1.0.
    #[serde(default)]
    pub failure_rate: f64,
}

impl FakeConfig {
    /// Reads `FAKE_API_LATENCY_MS` and `FAKE_API_FAILURE_RATE` (empty counts as unset); the error
    /// names the variable.
    pub fn from_env() -> Result<Self, String> {
        let vars = std::env::vars().filter(|(_, value)| !value.is_empty());
        let env: FakeEnv = envy::from_iter(vars).map_err(|e| e.to_string())?;
        Ok(Self {
            latency_ms: env.fake_api_latency_ms,
            failure_rate: env.fake_api_failure_rate,
        })
    }
}

/// The fake's knobs as environment variables (field names are the variables, lower-cased). The
/// parsers are hand-written only for their messages, which say what a valid value is.
#[derive(Deserialize)]
struct FakeEnv {
    #[serde(default, deserialize_with = "latency_ms")]
    fake_api_latency_ms: u64,
    #[serde(default, deserialize_with = "failure_rate")]
    fake_api_failure_rate: f64,
}

fn latency_ms<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let raw = String::deserialize(deserializer)?;
    raw.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "FAKE_API_LATENCY_MS must be a whole number of milliseconds, not {raw:?}"
        ))
    })
}

fn failure_rate<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let raw = String::deserialize(deserializer)?;
    raw.parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "FAKE_API_FAILURE_RATE must be a number from 0 to 1, not {raw:?}"
            ))
        })
}

#[derive(Default)]
struct FakeState {
    config: FakeConfig,
    orders: HashMap<i64, Value>,
    calls: HashMap<&'static str, u64>,
    /// Calls per 100 ms slot (epoch milliseconds / 100), for the last `TIMELINE_SLOTS` slots.
    timeline: BTreeMap<u64, u64>,
}

/// Ten minutes of 100 ms slots.
const TIMELINE_SLOTS: u64 = 6_000;

type Shared = web::Data<Mutex<FakeState>>;

/// A running fake: its address and a handle to stop it.
pub struct FakeExternalApi {
    pub url: String,
    pub handle: ServerHandle,
}

impl FakeExternalApi {
    /// Starts the fake on `listener` in the current actix system (one worker: it is a stub).
    pub fn start(listener: TcpListener, config: FakeConfig) -> std::io::Result<Self> {
        let (url, server) = Self::build(listener, config)?;
        let handle = server.handle();
        actix_rt::spawn(server);
        Ok(Self { url, handle })
    }

    /// The server, not yet running (the standalone binary awaits it).
    pub fn build(listener: TcpListener, config: FakeConfig) -> std::io::Result<(String, Server)> {
        let url = format!("http://{}", listener.local_addr()?);
        let state: Shared = web::Data::new(Mutex::new(FakeState {
            config,
            ..FakeState::default()
        }));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(web::JsonConfig::default().limit(1 << 20))
                .route("/v1/orders", web::post().to(create))
                .route("/v1/orders", web::get().to(list))
                .route("/v1/orders/{id}", web::put().to(update))
                .route("/v1/orders/{id}", web::delete().to(delete))
                .route("/v1/orders/{id}", web::get().to(get))
                .route("/_fake/config", web::put().to(set_config))
                .route("/_fake/stats", web::get().to(stats))
                .route("/_fake/timeline", web::get().to(timeline))
                .route("/_fake/reset", web::post().to(reset))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        Ok((url, server))
    }
}

/// Applies the latency and failure knobs, counts the call, and checks the bearer token (the
/// stubs matched `Authorization: Bearer \w+`). `Some` is the answer to give instead.
async fn gate(state: &Shared, req: &HttpRequest, verb: &'static str) -> Option<HttpResponse> {
    let config = {
        let mut state = state.lock().ok()?;
        *state.calls.entry(verb).or_default() += 1;
        let slot = chrono::Utc::now().timestamp_millis().max(0) as u64 / 100;
        *state.timeline.entry(slot).or_default() += 1;
        while state
            .timeline
            .first_key_value()
            .is_some_and(|(first, _)| first + TIMELINE_SLOTS < slot)
        {
            state.timeline.pop_first();
        }
        state.config
    };
    if config.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(config.latency_ms)).await;
    }
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| {
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        });
    if !authorized {
        return Some(HttpResponse::Unauthorized().json(json!({"message": "Unauthorized."})));
    }
    if config.failure_rate > 0.0 && rand::thread_rng().gen_bool(config.failure_rate.min(1.0)) {
        return Some(
            HttpResponse::InternalServerError().json(json!({"message": "Injected failure."})),
        );
    }
    None
}

async fn create(state: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    if let Some(answer) = gate(&state, &req, "POST").await {
        return answer;
    }
    let Some(id) = body.get("id").and_then(Value::as_i64) else {
        return HttpResponse::UnprocessableEntity().json(json!({"message": "id is required."}));
    };
    // A repeated create (same order id) is a retry, not a second order.
    if let Ok(mut state) = state.lock() {
        state.orders.insert(id, body.into_inner());
    }
    HttpResponse::Ok().json(json!({"message": "Order was successfully created."}))
}

async fn update(
    state: Shared,
    req: HttpRequest,
    id: web::Path<i64>,
    body: web::Json<Value>,
) -> HttpResponse {
    if let Some(answer) = gate(&state, &req, "PUT").await {
        return answer;
    }
    if let Ok(mut state) = state.lock() {
        state.orders.insert(id.into_inner(), body.into_inner());
    }
    HttpResponse::Ok().json(json!({"message": "Order was successfully updated."}))
}

async fn delete(state: Shared, req: HttpRequest, id: web::Path<i64>) -> HttpResponse {
    if let Some(answer) = gate(&state, &req, "DELETE").await {
        return answer;
    }
    let existed = state
        .lock()
        .map(|mut s| s.orders.remove(&id).is_some())
        .unwrap_or(false);
    if existed {
        HttpResponse::Ok().json(json!({"message": "Order was successfully deleted."}))
    } else {
        HttpResponse::NotFound().json(json!({"message": "Order not found."}))
    }
}

async fn get(state: Shared, req: HttpRequest, id: web::Path<i64>) -> HttpResponse {
    if let Some(answer) = gate(&state, &req, "GET").await {
        return answer;
    }
    let order = state.lock().ok().and_then(|s| s.orders.get(&id).cloned());
    match order {
        Some(order) => HttpResponse::Ok().json(order),
        None => HttpResponse::NotFound().json(json!({"message": "Order not found."})),
    }
}

async fn list(state: Shared, req: HttpRequest) -> HttpResponse {
    if let Some(answer) = gate(&state, &req, "GET").await {
        return answer;
    }
    let mut orders: Vec<Value> = state
        .lock()
        .map(|s| s.orders.values().cloned().collect())
        .unwrap_or_default();
    orders.sort_by_key(|o| o.get("id").and_then(Value::as_i64));
    HttpResponse::Ok().json(orders)
}

async fn set_config(state: Shared, config: web::Json<FakeConfig>) -> HttpResponse {
    if !(0.0..=1.0).contains(&config.failure_rate) {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"message": "failure_rate must be from 0 to 1."}));
    }
    if let Ok(mut state) = state.lock() {
        state.config = config.into_inner();
    }
    HttpResponse::Ok().json(config_now(&state))
}

async fn stats(state: Shared) -> HttpResponse {
    let (calls, stored) = state
        .lock()
        .map(|s| (s.calls.clone(), s.orders.len()))
        .unwrap_or_default();
    HttpResponse::Ok()
        .json(json!({"calls": calls, "stored_orders": stored, "config": config_now(&state)}))
}

fn config_now(state: &Shared) -> FakeConfig {
    state.lock().map(|s| s.config).unwrap_or_default()
}

async fn timeline(state: Shared) -> HttpResponse {
    let slots: BTreeMap<u64, u64> = state.lock().map(|s| s.timeline.clone()).unwrap_or_default();
    HttpResponse::Ok().json(json!({"slot_ms": 100, "calls": slots}))
}

async fn reset(state: Shared) -> HttpResponse {
    if let Ok(mut state) = state.lock() {
        let config = state.config;
        *state = FakeState {
            config,
            ..FakeState::default()
        };
    }
    HttpResponse::NoContent().finish()
}
