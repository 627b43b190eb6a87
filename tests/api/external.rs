//! A wiremock external API that stubs every verb as the old WebMock setup did (requiring the
//! bearer, JSON and Accept headers, answering the reference's messages), and records each call
//! with when it arrived, so tests can check order, concurrency and rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wiremock::matchers::{header, header_regex, method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// The token the tests configure; the stubs accept any `Bearer \w+`.
pub const TOKEN: &str = "test_token";

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub order_id: i64,
    pub version: i64,
    pub idempotency_key: String,
    pub authorization: String,
    pub body: Option<Value>,
    pub arrived: Instant,
    /// When the answer was due (arrival + the stub's delay).
    pub answered: Instant,
    pub status: u16,
}

#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<Call>>>);

impl Recorder {
    pub fn calls(&self) -> Vec<Call> {
        self.0.lock().expect("recorder lock").clone()
    }

    pub fn push(&self, call: Call) {
        self.0.lock().expect("recorder lock").push(call);
    }

    pub fn calls_for(&self, order_id: i64) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.order_id == order_id)
            .collect()
    }
}

/// Answers `status` with `body` after `delay`, recording the call.
pub struct Recording {
    recorder: Recorder,
    status: u16,
    body: Value,
    delay: Duration,
    extra_header: Option<(&'static str, &'static str)>,
}

impl Respond for Recording {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let key = header("Idempotency-Key");
        let (order_id, version) = key
            .split_once(':')
            .and_then(|(id, v)| Some((id.parse().ok()?, v.parse().ok()?)))
            .unwrap_or((-1, -1));
        let arrived = Instant::now();
        self.recorder.0.lock().expect("recorder lock").push(Call {
            method: request.method.to_string(),
            path: request.url.path().to_string(),
            order_id,
            version,
            idempotency_key: key,
            authorization: header("Authorization"),
            body: serde_json::from_slice(&request.body).ok(),
            arrived,
            answered: arrived + self.delay,
            status: self.status,
        });
        let mut template = ResponseTemplate::new(self.status)
            .set_body_json(self.body.clone())
            .set_delay(self.delay);
        if let Some((name, value)) = self.extra_header {
            template = template.insert_header(name, value);
        }
        template
    }
}

pub struct ExternalApi {
    pub server: MockServer,
    pub recorder: Recorder,
}

impl ExternalApi {
    /// Stubs for every verb, answering 200 with the reference's messages after `delay`.
    pub async fn start(delay: Duration) -> Self {
        let api = Self {
            server: MockServer::start().await,
            recorder: Recorder::default(),
        };
        api.mount_stubs(delay).await;
        api
    }

    /// Mounts the 200 stubs for every verb (again, after a `server.reset()`).
    pub async fn mount_stubs(&self, delay: Duration) {
        let api = self;
        let stubs = [
            ("POST", None, "Order was successfully created."),
            (
                "PUT",
                Some(r"^/v1/orders/\d+$"),
                "Order was successfully updated.",
            ),
            (
                "DELETE",
                Some(r"^/v1/orders/\d+$"),
                "Order was successfully deleted.",
            ),
        ];
        for (verb, id_path, message) in stubs {
            let mock = Mock::given(method(verb));
            let mock = match id_path {
                Some(pattern) => mock.and(path_regex(pattern)),
                None => mock.and(path("/v1/orders")),
            };
            mock.and(header("Content-Type", "application/json"))
                .and(header("Accept", "*/*"))
                .and(header_regex("Authorization", r"^Bearer \w+$"))
                .respond_with(api.responder(200, json!({"message": message}), delay))
                .with_priority(10)
                .mount(&api.server)
                .await;
        }
    }

    pub fn responder(&self, status: u16, body: Value, delay: Duration) -> Recording {
        Recording {
            recorder: self.recorder.clone(),
            status,
            body,
            delay,
            extra_header: None,
        }
    }

    /// Answers the next `times` calls of `verb` with `status` (before the normal stubs).
    pub async fn fail_next(
        &self,
        verb: &str,
        times: u64,
        status: u16,
        body: Value,
        extra_header: Option<(&'static str, &'static str)>,
    ) {
        let mut responder = self.responder(status, body, Duration::ZERO);
        responder.extra_header = extra_header;
        Mock::given(method(verb))
            .respond_with(responder)
            .up_to_n_times(times)
            .with_priority(1)
            .mount(&self.server)
            .await;
    }

    pub fn url(&self) -> String {
        self.server.uri()
    }
}
