//! Property tests over the orders API's input: any JSON body gets a 2xx, or a 4xx in the one
//! error shape, never a 5xx; and a rejected body writes nothing.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value};

use crate::helpers::{order_body, spawn_api_only};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "(pending|delivered|canceled|[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z)".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,14}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A valid order with some fields replaced by anything, some removed, and perhaps an extra one:
/// close enough to valid to reach the deeper rules.
fn mutated_order() -> impl Strategy<Value = Value> {
    let fields = order_body()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect::<Vec<_>>();
    (
        prop::collection::vec((prop::sample::select(fields.clone()), any_json()), 0..4),
        prop::collection::vec(prop::sample::select(fields), 0..2),
        prop::option::of(("[a-z]{1,8}", any_json())),
    )
        .prop_map(|(replaced, removed, extra)| {
            let mut body = order_body();
            let object = body.as_object_mut().unwrap();
            for (field, value) in replaced {
                object.insert(field, value);
            }
            for field in removed {
                object.remove(&field);
            }
            if let Some((key, value)) = extra {
                object.insert(key, value);
            }
            body
        })
}

fn assert_error_shape(body: &Value) {
    assert!(
        ["type", "title", "detail", "code"]
            .iter()
            .all(|member| body[member].is_string())
            && body["status"].is_u64(),
        "not the error shape: {body}"
    );
}

#[actix_web::test]
async fn any_json_body_gets_a_2xx_or_a_4xx_in_the_error_shape_and_a_rejected_one_writes_nothing() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    let mut runner = TestRunner::deterministic();
    let bodies = prop_oneof![any_json(), mutated_order()];
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..300 {
        let body = bodies.new_tree(&mut runner).expect("a value").current();
        let before = app.snapshot().await;
        let request = match case % 3 {
            0 => app.http.post(app.url("/orders")),
            1 => app.http.put(app.url(&format!("/orders/{id}"))),
            _ => app.http.patch(app.url(&format!("/orders/{id}"))),
        };
        let response = request.json(&body).send().await.unwrap();
        let status = response.status().as_u16();
        assert!(status < 500, "{status} for {body}");
        if status >= 400 {
            rejected += 1;
            assert_error_shape(&response.json().await.unwrap());
            assert_eq!(
                app.snapshot().await,
                before,
                "a rejected body ({status}) wrote something: {body}"
            );
        } else {
            accepted += 1;
        }
    }
    // Both sides of the property were exercised.
    assert!(
        accepted > 0 && rejected > 0,
        "accepted {accepted}, rejected {rejected}"
    );
}
