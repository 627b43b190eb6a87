//! The order change and its outbox row are one transaction: neither is written without the other.

use crate::helpers::{order_body, spawn_api_only};

/// Makes every insert into the outbox fail, as a broken disk or a bug would.
const BREAK_OUTBOX: &str = r#"
CREATE FUNCTION refuse_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'outbox refused by test'; END $$;
CREATE TRIGGER refuse_outbox BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_outbox();
"#;

#[actix_web::test]
async fn when_the_outbox_insert_fails_the_order_change_is_rolled_back_too() {
    let app = spawn_api_only().await;
    let id = app.create_order().await["id"].as_i64().unwrap();
    sqlx::raw_sql(BREAK_OUTBOX)
        .execute(&app.pool)
        .await
        .unwrap();
    let before = app.snapshot().await;

    let create = app.post_order(&order_body()).await;
    assert_eq!(create.status(), 500);
    let path = app.url(&format!("/orders/{id}"));
    let mut changed = order_body();
    changed["city"] = serde_json::json!("Nagpur");
    assert_eq!(
        app.http
            .put(&path)
            .json(&changed)
            .send()
            .await
            .unwrap()
            .status(),
        500
    );
    assert_eq!(app.http.delete(&path).send().await.unwrap().status(), 500);

    let body: serde_json::Value = app.post_order(&order_body()).await.json().await.unwrap();
    assert_eq!(body["code"], "internal_error");
    assert!(
        !body.to_string().contains("refused by test"),
        "internal causes must not leak: {body}"
    );
    assert_eq!(
        app.snapshot().await,
        before,
        "an order change was committed without its outbox row"
    );
}
