//! The built-in fake external API: the reference's WebMock stubs as a running server.
//!
//! It answers `POST /v1/orders`, `PUT|DELETE|GET /v1/orders/{id}` and `GET /v1/orders` with the
//! stubs' messages, requires a bearer token as the stubs did, and keeps what it was sent in
//! memory so `GET` returns it. Knobs for demos and benchmarks: a latency and a failure rate
//! (answered with 500), set at start (`FAKE_API_LATENCY_MS`, `FAKE_API_FAILURE_RATE`) or live
//! with `PUT /_fake/config {"latency_ms": 50, "failure_rate": 0.1}`; `GET /_fake/stats` counts
//! the calls by verb, `GET /_fake/timeline` counts them per 100 ms (for rate measurements), and
//! `POST /_fake/reset` forgets everything.
//!
//! For the chaos soak (`bench soak`) it also plays a hostile API and judges the service from the
//! outside: `status_override` answers every call with one status (an outage), `throttle_rate`
//! answers a share of calls 429 with `Retry-After: retry_after_secs`, `stall_ms` holds each call.
//! Every call is checked per order ([`CallChecks`]): a second call for an order while one is in
//! progress is an overlap, a change older than one already accepted is a reordering, a call
//! without `Idempotency-Key` is counted, and a change accepted twice is a duplicate (allowed, as
//! retries after a lost answer make them). `GET /_fake/stats` reports them, and
//! `GET /_fake/orders/{id}` reads the stored copy without counting as a call or meeting a knob
//! (`PATCH` on it changes the copy, as the external system does before it writes a change back).

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header::{AUTHORIZATION, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rand::RngExt;
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
    /// Answers every call with this status (an outage: 503), before any other knob.
    #[serde(default)]
    pub status_override: Option<u16>,
    /// Share of calls answered 429 with `Retry-After: retry_after_secs`, from 0.0 to 1.0.
    #[serde(default)]
    pub throttle_rate: f64,
    /// The `Retry-After` of throttled calls (and of an overridden 429), in seconds.
    #[serde(default)]
    pub retry_after_secs: u64,
    /// Added to every call like `latency_ms`: a stall the soak turns on and off on its own,
    /// without losing the everyday latency.
    #[serde(default)]
    pub stall_ms: u64,
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
            ..Self::default()
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
    /// Answers given, by status code.
    answered: BTreeMap<u16, u64>,
    checks: CallChecks,
}

/// The violations kept in full; past these only the counts grow.
const VIOLATIONS_KEPT: usize = 20;

/// One per-order rule broken, as `GET /_fake/stats` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// `overlap` or `reordered`.
    pub kind: &'static str,
    pub order: i64,
    pub verb: &'static str,
    pub version: Option<i64>,
    /// Epoch milliseconds at the call's start.
    pub at_ms: i64,
}

/// The per-order checks the fake makes from the outside: what the service promises (one call at a
/// time per order, changes in version order, every call with its `Idempotency-Key`), seen at the
/// only place where a breach does harm.
#[derive(Debug, Default)]
pub struct CallChecks {
    /// Calls in progress per order; an order leaves the map when its last call ends.
    in_progress: HashMap<i64, u32>,
    /// The highest version accepted (answered with success) per order.
    accepted: HashMap<i64, i64>,
    pub overlaps: u64,
    pub reordered: u64,
    pub duplicates: u64,
    pub missing_idempotency_key: u64,
    pub violations: Vec<Violation>,
}

/// A call the checks saw start; hand it back to [`CallChecks::finish`].
#[derive(Debug, Clone, Copy)]
pub struct CallTicket {
    order: i64,
    /// A change's version (`POST`, `PUT`, `DELETE`); `None` for a read.
    change_version: Option<i64>,
}

impl CallChecks {
    /// A call for `order` starts. `change_version` is the version a change carries (`None` for
    /// a `GET`, which only reads and is not ordered against changes).
    pub fn start(
        &mut self,
        order: i64,
        verb: &'static str,
        change_version: Option<i64>,
        has_idempotency_key: bool,
        at_ms: i64,
    ) -> CallTicket {
        if !has_idempotency_key {
            self.missing_idempotency_key += 1;
        }
        let in_progress = self.in_progress.entry(order).or_default();
        *in_progress += 1;
        if *in_progress > 1 {
            self.overlaps += 1;
            self.record("overlap", order, verb, change_version, at_ms);
        }
        if let (Some(version), Some(&accepted)) = (change_version, self.accepted.get(&order)) {
            if version < accepted {
                self.reordered += 1;
                self.record("reordered", order, verb, change_version, at_ms);
            }
        }
        CallTicket {
            order,
            change_version,
        }
    }

    /// The call ended; `accepted` when it was answered with success (a `DELETE` answered 404
    /// counts: the order is gone, as the caller wanted).
    pub fn finish(&mut self, ticket: CallTicket, accepted: bool) {
        if let Some(in_progress) = self.in_progress.get_mut(&ticket.order) {
            *in_progress = in_progress.saturating_sub(1);
            if *in_progress == 0 {
                self.in_progress.remove(&ticket.order);
            }
        }
        let Some(version) = ticket.change_version.filter(|_| accepted) else {
            return;
        };
        let highest = self.accepted.entry(ticket.order).or_insert(i64::MIN);
        if version == *highest {
            self.duplicates += 1;
        }
        *highest = (*highest).max(version);
    }

    fn record(
        &mut self,
        kind: &'static str,
        order: i64,
        verb: &'static str,
        version: Option<i64>,
        at_ms: i64,
    ) {
        if self.violations.len() < VIOLATIONS_KEPT {
            self.violations.push(Violation {
                kind,
                order,
                verb,
                version,
                at_ms,
            });
        }
    }
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
                .route("/_fake/orders/{id}", web::get().to(peek))
                .route("/_fake/orders/{id}", web::patch().to(change_copy))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        Ok((url, server))
    }
}

/// A call under the per-order checks, from its start until it is answered; dropping it ends the
/// call (also when the caller hangs up and actix drops the handler, so an abandoned call is not
/// in progress forever).
struct CallInProgress {
    state: Shared,
    ticket: CallTicket,
    accepted: bool,
}

impl Drop for CallInProgress {
    fn drop(&mut self) {
        if let Ok(mut state) = self.state.lock() {
            state.checks.finish(self.ticket, self.accepted);
        }
    }
}

/// Starts the checks of a call for `order`, before any knob holds or answers it: from the
/// caller's side the call is in progress from the moment it was sent.
fn begin(
    state: &Shared,
    req: &HttpRequest,
    verb: &'static str,
    order: Option<i64>,
    body: Option<&Value>,
) -> Option<CallInProgress> {
    let order = order?;
    let key = req
        .headers()
        .get("Idempotency-Key")
        .and_then(|v| v.to_str().ok());
    // A change's version travels in its body (`POST`, `PUT`) and, for every call, after the
    // colon of `Idempotency-Key: {id}:{version}` (`crate::external::client`).
    let change_version = match verb {
        "GET" => None,
        _ => body
            .and_then(|b| b.get("version"))
            .and_then(Value::as_i64)
            .or_else(|| key_version(key?)),
    };
    let at_ms = chrono::Utc::now().timestamp_millis();
    let ticket = state
        .lock()
        .ok()?
        .checks
        .start(order, verb, change_version, key.is_some(), at_ms);
    Some(CallInProgress {
        state: state.clone(),
        ticket,
        accepted: false,
    })
}

/// The version part of `{id}:{version}`.
fn key_version(key: &str) -> Option<i64> {
    key.rsplit_once(':')?.1.trim().parse().ok()
}

/// Ends `call` (accepted or not) and counts the answer's status.
fn answered(
    state: &Shared,
    call: Option<CallInProgress>,
    answer: HttpResponse,
    accepted: bool,
) -> HttpResponse {
    if let Some(mut call) = call {
        call.accepted = accepted;
    }
    if let Ok(mut state) = state.lock() {
        *state.answered.entry(answer.status().as_u16()).or_default() += 1;
    }
    answer
}

/// Applies the latency, stall, outage, throttle and failure knobs, counts the call, and checks
/// the bearer token (the stubs matched `Authorization: Bearer \w+`). `Some` is the answer to
/// give instead.
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
    let held = config.latency_ms.saturating_add(config.stall_ms);
    if held > 0 {
        tokio::time::sleep(Duration::from_millis(held)).await;
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
    if let Some(status) = config.status_override {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        let mut answer = HttpResponse::build(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            answer.insert_header((RETRY_AFTER, config.retry_after_secs.to_string()));
        }
        return Some(answer.json(json!({"message": "Injected outage."})));
    }
    if config.throttle_rate > 0.0 && rand::rng().random_bool(config.throttle_rate.min(1.0)) {
        return Some(
            HttpResponse::TooManyRequests()
                .insert_header((RETRY_AFTER, config.retry_after_secs.to_string()))
                .json(json!({"message": "Too many requests."})),
        );
    }
    if config.failure_rate > 0.0 && rand::rng().random_bool(config.failure_rate.min(1.0)) {
        return Some(
            HttpResponse::InternalServerError().json(json!({"message": "Injected failure."})),
        );
    }
    None
}

async fn create(state: Shared, req: HttpRequest, body: web::Json<Value>) -> HttpResponse {
    let order = body.get("id").and_then(Value::as_i64);
    let call = begin(&state, &req, "POST", order, Some(&body));
    if let Some(answer) = gate(&state, &req, "POST").await {
        return answered(&state, call, answer, false);
    }
    let Some(id) = order else {
        let answer =
            HttpResponse::UnprocessableEntity().json(json!({"message": "id is required."}));
        return answered(&state, call, answer, false);
    };
    // A repeated create (same order id) is a retry, not a second order.
    if let Ok(mut state) = state.lock() {
        state.orders.insert(id, body.into_inner());
    }
    let answer = HttpResponse::Ok().json(json!({"message": "Order was successfully created."}));
    answered(&state, call, answer, true)
}

async fn update(
    state: Shared,
    req: HttpRequest,
    id: web::Path<i64>,
    body: web::Json<Value>,
) -> HttpResponse {
    let call = begin(&state, &req, "PUT", Some(*id), Some(&body));
    if let Some(answer) = gate(&state, &req, "PUT").await {
        return answered(&state, call, answer, false);
    }
    if let Ok(mut state) = state.lock() {
        state.orders.insert(id.into_inner(), body.into_inner());
    }
    let answer = HttpResponse::Ok().json(json!({"message": "Order was successfully updated."}));
    answered(&state, call, answer, true)
}

async fn delete(state: Shared, req: HttpRequest, id: web::Path<i64>) -> HttpResponse {
    let call = begin(&state, &req, "DELETE", Some(*id), None);
    if let Some(answer) = gate(&state, &req, "DELETE").await {
        return answered(&state, call, answer, false);
    }
    let existed = state
        .lock()
        .map(|mut s| s.orders.remove(&id).is_some())
        .unwrap_or(false);
    // 404 is what the service takes as done too: the order is gone either way.
    let answer = if existed {
        HttpResponse::Ok().json(json!({"message": "Order was successfully deleted."}))
    } else {
        HttpResponse::NotFound().json(json!({"message": "Order not found."}))
    };
    answered(&state, call, answer, true)
}

async fn get(state: Shared, req: HttpRequest, id: web::Path<i64>) -> HttpResponse {
    let call = begin(&state, &req, "GET", Some(*id), None);
    if let Some(answer) = gate(&state, &req, "GET").await {
        return answered(&state, call, answer, false);
    }
    let order = state.lock().ok().and_then(|s| s.orders.get(&id).cloned());
    let answer = match order {
        Some(order) => HttpResponse::Ok().json(order),
        None => HttpResponse::NotFound().json(json!({"message": "Order not found."})),
    };
    answered(&state, call, answer, true)
}

/// `GET /_fake/orders/{id}`: the stored copy, for checks from outside. Not a call: it is not
/// counted, checked, held or failed by the knobs.
async fn peek(state: Shared, id: web::Path<i64>) -> HttpResponse {
    match state.lock().ok().and_then(|s| s.orders.get(&id).cloned()) {
        Some(order) => HttpResponse::Ok().json(order),
        None => HttpResponse::NotFound().json(json!({"message": "Order not found."})),
    }
}

/// `PATCH /_fake/orders/{id}`: the external system changes its own copy (the fields given are
/// merged in), as it does before it writes a change back to the service. Not a call either.
async fn change_copy(state: Shared, id: web::Path<i64>, fields: web::Json<Value>) -> HttpResponse {
    let Ok(mut state) = state.lock() else {
        return HttpResponse::InternalServerError().json(json!({"message": "state poisoned"}));
    };
    let (Some(copy), Some(fields)) = (
        state.orders.get_mut(&id).and_then(Value::as_object_mut),
        fields.as_object(),
    ) else {
        return HttpResponse::NotFound().json(json!({"message": "Order not found."}));
    };
    copy.extend(fields.clone());
    HttpResponse::Ok().json(Value::Object(copy.clone()))
}

async fn list(state: Shared, req: HttpRequest) -> HttpResponse {
    if let Some(answer) = gate(&state, &req, "GET").await {
        return answered(&state, None, answer, false);
    }
    let mut orders: Vec<Value> = state
        .lock()
        .map(|s| s.orders.values().cloned().collect())
        .unwrap_or_default();
    orders.sort_by_key(|o| o.get("id").and_then(Value::as_i64));
    answered(&state, None, HttpResponse::Ok().json(orders), true)
}

async fn set_config(state: Shared, config: web::Json<FakeConfig>) -> HttpResponse {
    if !(0.0..=1.0).contains(&config.failure_rate) {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"message": "failure_rate must be from 0 to 1."}));
    }
    if !(0.0..=1.0).contains(&config.throttle_rate) {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"message": "throttle_rate must be from 0 to 1."}));
    }
    if config
        .status_override
        .is_some_and(|status| StatusCode::from_u16(status).is_err())
    {
        return HttpResponse::UnprocessableEntity()
            .json(json!({"message": "status_override must be an HTTP status from 100 to 999."}));
    }
    if let Ok(mut state) = state.lock() {
        state.config = config.into_inner();
    }
    HttpResponse::Ok().json(config_now(&state))
}

async fn stats(state: Shared) -> HttpResponse {
    let Ok(s) = state.lock() else {
        return HttpResponse::InternalServerError().json(json!({"message": "state poisoned"}));
    };
    let checks = &s.checks;
    let stats = json!({
        "calls": s.calls,
        "stored_orders": s.orders.len(),
        "config": s.config,
        "answered": s.answered,
        "overlaps": checks.overlaps,
        "reordered": checks.reordered,
        "duplicates": checks.duplicates,
        "missing_idempotency_key": checks.missing_idempotency_key,
        "in_progress": checks.in_progress.values().sum::<u32>(),
        "violations": checks.violations,
    });
    HttpResponse::Ok().json(stats)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_that_starts_while_another_for_the_same_order_is_in_progress_is_an_overlap() {
        let mut checks = CallChecks::default();
        let first = checks.start(6, "PUT", Some(2), true, 10);
        let other_order = checks.start(7, "PUT", Some(2), true, 11);
        assert_eq!(checks.overlaps, 0);
        let second = checks.start(6, "DELETE", Some(3), true, 12);
        assert_eq!(checks.overlaps, 1);
        assert_eq!(
            checks.violations,
            vec![Violation {
                kind: "overlap",
                order: 6,
                verb: "DELETE",
                version: Some(3),
                at_ms: 12
            }]
        );
        checks.finish(first, true);
        checks.finish(second, true);
        checks.finish(other_order, true);
        let after = checks.start(6, "PUT", Some(4), true, 13);
        checks.finish(after, true);
        assert_eq!(checks.overlaps, 1, "calls one after another do not overlap");
        assert!(checks.in_progress.is_empty(), "{:?}", checks.in_progress);
    }

    #[test]
    fn a_change_older_than_one_accepted_is_reordered_and_a_repeat_is_a_duplicate() {
        let mut checks = CallChecks::default();
        let newer = checks.start(1, "PUT", Some(5), true, 0);
        checks.finish(newer, true);
        let repeat = checks.start(1, "PUT", Some(5), true, 1);
        checks.finish(repeat, true);
        assert_eq!((checks.reordered, checks.duplicates), (0, 1));
        let older = checks.start(1, "PUT", Some(4), true, 2);
        checks.finish(older, false);
        assert_eq!(checks.reordered, 1);
        assert_eq!(checks.violations[0].kind, "reordered");
        // A failed call is not accepted: an older change after it is in order.
        let mut checks = CallChecks::default();
        let refused = checks.start(2, "PUT", Some(9), true, 0);
        checks.finish(refused, false);
        let earlier = checks.start(2, "PUT", Some(8), true, 1);
        checks.finish(earlier, true);
        assert_eq!((checks.reordered, checks.duplicates), (0, 0));
    }

    #[test]
    fn reads_are_not_ordered_and_a_missing_idempotency_key_is_counted() {
        let mut checks = CallChecks::default();
        let change = checks.start(3, "PUT", Some(7), true, 0);
        checks.finish(change, true);
        let read = checks.start(3, "GET", None, false, 1);
        checks.finish(read, true);
        assert_eq!((checks.reordered, checks.duplicates), (0, 0));
        assert_eq!(checks.missing_idempotency_key, 1);
    }

    #[test]
    fn only_the_first_violations_are_kept_in_full() {
        let mut checks = CallChecks::default();
        let held = checks.start(1, "PUT", Some(1), true, 0);
        for at in 0..30 {
            checks.start(1, "PUT", Some(1), true, at);
        }
        checks.finish(held, true);
        assert_eq!(checks.overlaps, 30);
        assert_eq!(checks.violations.len(), VIOLATIONS_KEPT);
    }

    #[test]
    fn the_version_is_read_from_the_idempotency_key() {
        assert_eq!(key_version("17390:12"), Some(12));
        assert_eq!(key_version("12"), None);
        assert_eq!(key_version("1:x"), None);
    }

    #[test]
    fn old_clients_set_the_knobs_they_know_and_the_others_stay_off() {
        let config: FakeConfig =
            serde_json::from_value(json!({"latency_ms": 5, "failure_rate": 0.5})).expect("parse");
        assert_eq!(
            config,
            FakeConfig {
                latency_ms: 5,
                failure_rate: 0.5,
                ..FakeConfig::default()
            }
        );
        assert_eq!(config.status_override, None);
    }

    /// The fake on a free port with `config`, and a client for it.
    fn started(config: FakeConfig) -> (String, reqwest::Client) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let fake = FakeExternalApi::start(listener, config).expect("start");
        (fake.url, reqwest::Client::new())
    }

    #[actix_rt::test]
    async fn an_outage_answers_every_call_and_the_peek_route_is_not_a_call() {
        let (url, http) = started(FakeConfig::default());
        let put = |version: i64| {
            http.put(format!("{url}/v1/orders/9"))
                .bearer_auth("t")
                .header("Idempotency-Key", format!("9:{version}"))
                .json(&json!({"id": 9, "version": version}))
                .send()
        };
        assert_eq!(put(1).await.expect("put").status(), 200);
        let outage = json!({"status_override": 429, "retry_after_secs": 2});
        let set = http.put(format!("{url}/_fake/config")).json(&outage);
        assert_eq!(set.send().await.expect("config").status(), 200);
        let refused = put(2).await.expect("put");
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "2");
        let peek = http.get(format!("{url}/_fake/orders/9")).send().await;
        let copy: Value = peek.expect("peek").json().await.expect("json");
        assert_eq!(copy["version"], 1, "the outage kept the copy as it was");
        let absent = http.get(format!("{url}/_fake/orders/10")).send().await;
        assert_eq!(absent.expect("peek").status(), 404);
        let changed = http
            .patch(format!("{url}/_fake/orders/9"))
            .json(&json!({"status": "delivered"}))
            .send()
            .await;
        let changed: Value = changed.expect("change").json().await.expect("json");
        assert_eq!(
            (changed["status"].clone(), changed["version"].clone()),
            (json!("delivered"), json!(1))
        );
        let stats: Value = http
            .get(format!("{url}/_fake/stats"))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        assert_eq!(stats["calls"]["PUT"], 2);
        assert_eq!(stats["calls"].get("GET"), None, "peeking is not a call");
        assert_eq!(stats["answered"]["429"], 1);
        assert_eq!(
            (stats["overlaps"].clone(), stats["reordered"].clone()),
            (json!(0), json!(0))
        );
    }

    #[actix_rt::test]
    async fn a_delete_of_an_absent_order_is_still_answered_404() {
        let (url, http) = started(FakeConfig::default());
        let delete = http
            .delete(format!("{url}/v1/orders/5"))
            .bearer_auth("t")
            .header("Idempotency-Key", "5:3")
            .send()
            .await
            .expect("delete");
        assert_eq!(delete.status(), 404);
    }
}
