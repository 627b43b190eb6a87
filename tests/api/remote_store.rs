//! An external API that keeps what it is sent, as the real one does: `POST` and `PUT` store the
//! order's body, `DELETE` removes it (404 when absent), `GET /v1/orders/{id}` answers it (404
//! when absent). The test can change the store behind the service's back (lose an order, edit
//! one, keep a copy of a deleted one), refuse some ids (422), and read every call as
//! `crate::external` records them, with when it arrived and when it was answered.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{header_regex, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

use crate::external::{Call, Recorder};

#[derive(Default)]
struct Store {
    orders: HashMap<i64, Value>,
    refused: HashSet<i64>,
}

/// The recording, storing external API.
pub struct StoreApi {
    pub server: MockServer,
    pub recorder: Recorder,
    store: Arc<Mutex<Store>>,
}

struct Answering {
    recorder: Recorder,
    store: Arc<Mutex<Store>>,
    delay: Duration,
}

impl Respond for Answering {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let path = request.url.path().to_string();
        let method = request.method.to_string();
        let body: Option<Value> = serde_json::from_slice(&request.body).ok();
        let path_id = path
            .strip_prefix("/v1/orders/")
            .and_then(|id| id.parse::<i64>().ok());
        let id = path_id.or_else(|| body.as_ref().and_then(|b| b["id"].as_i64()));
        let key = request
            .headers
            .get("Idempotency-Key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let version = key
            .split_once(':')
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(-1);
        let (status, answer) = {
            let mut store = self.store.lock().unwrap();
            match (method.as_str(), id) {
                (_, Some(id)) if store.refused.contains(&id) && method != "GET" => {
                    (422, json!({"message": "Order rejected."}))
                }
                ("POST" | "PUT", Some(id)) => {
                    store.orders.insert(id, body.clone().unwrap_or(Value::Null));
                    (200, json!({"message": "Order was successfully saved."}))
                }
                ("DELETE", Some(id)) => match store.orders.remove(&id) {
                    Some(_) => (200, json!({"message": "Order was successfully deleted."})),
                    None => (404, json!({"message": "Order not found."})),
                },
                ("GET", Some(id)) => match store.orders.get(&id) {
                    Some(order) => (200, order.clone()),
                    None => (404, json!({"message": "Order not found."})),
                },
                _ => (400, json!({"message": "Bad request."})),
            }
        };
        let arrived = Instant::now();
        self.recorder.push(Call {
            method,
            path,
            order_id: id.unwrap_or(-1),
            version,
            idempotency_key: key,
            authorization: String::new(),
            body,
            arrived,
            answered: arrived + self.delay,
            status,
        });
        ResponseTemplate::new(status)
            .set_body_json(answer)
            .set_delay(self.delay)
    }
}

impl StoreApi {
    /// Starts it; every answer takes `delay`.
    pub async fn start(delay: Duration) -> Self {
        let api = Self {
            server: MockServer::start().await,
            recorder: Recorder::default(),
            store: Arc::default(),
        };
        Mock::given(path_regex(r"^/v1/orders(/\d+)?$"))
            .and(header_regex("Authorization", r"^Bearer \w+$"))
            .respond_with(Answering {
                recorder: api.recorder.clone(),
                store: api.store.clone(),
                delay,
            })
            .mount(&api.server)
            .await;
        api
    }

    pub fn url(&self) -> String {
        self.server.uri()
    }

    /// The stored copy of order `id`.
    pub fn get(&self, id: i64) -> Option<Value> {
        self.store.lock().unwrap().orders.get(&id).cloned()
    }

    /// Loses, changes or adds a copy behind the service's back.
    pub fn set(&self, id: i64, copy: Option<Value>) {
        let mut store = self.store.lock().unwrap();
        match copy {
            Some(copy) => store.orders.insert(id, copy),
            None => store.orders.remove(&id),
        };
    }

    /// Answers 422 to every write for order `id`.
    pub fn refuse(&self, id: i64) {
        self.store.lock().unwrap().refused.insert(id);
    }
}
