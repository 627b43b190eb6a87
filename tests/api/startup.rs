//! Start-up: the service creates its database, and a bad address fails with one clear line.

use std::process::Command;

use order_sync::startup::Application;

use crate::helpers::{test_settings, unique_db_name, TestApp};

#[actix_web::test]
async fn the_service_creates_its_database_when_missing_and_migrates_it() {
    // spawn_app starts from a database name that does not exist yet.
    let app = crate::helpers::spawn_app().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    for table in ["orders", "outbox", "seaql_migrations"] {
        assert!(
            tables.iter().any(|t| t == table),
            "{table} missing from {tables:?}"
        );
    }
    let _: &TestApp = &app;
}

#[actix_web::test]
async fn an_unreachable_database_fails_start_up_naming_database_url() {
    let settings = test_settings(
        &unique_db_name(),
        "unused",
        &[("DATABASE_URL", "postgres://postgres:pw@127.0.0.1:1/nothing")],
    );
    let err = Application::build(settings)
        .await
        .err()
        .expect("start-up must fail");
    let message = err.to_string();
    assert!(
        message.contains("DATABASE_URL=postgres://postgres:redacted@127.0.0.1:1/nothing"),
        "{message}"
    );
    assert!(!message.contains(":pw@"), "the password leaked: {message}");
}

#[actix_web::test]
async fn an_unreachable_redis_fails_start_up_naming_redis_url() {
    let db_name = unique_db_name();
    let settings = test_settings(&db_name, "unused", &[("REDIS_URL", "redis://127.0.0.1:1")]);
    let err = Application::build(settings)
        .await
        .err()
        .expect("start-up must fail");
    assert!(
        err.to_string().contains("REDIS_URL=redis://127.0.0.1:1"),
        "{err}"
    );
    crate::helpers::drop_database(&db_name).await;
}

#[test]
fn the_binary_exits_1_with_one_line_naming_the_variable() {
    for (variable, value) in [
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing"),
        ("DATABASE_URL", "not a url"),
        ("PORT", "eighty"),
        ("DELAYED_RETRY_SCALE", "1e12"),
        ("RETRY_AFTER_MAX_SECS", "86401"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_order-sync"))
            .env(variable, value)
            .env("RUST_LOG", "off")
            .output()
            .expect("the binary runs");
        assert_eq!(output.status.code(), Some(1), "{variable}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(variable),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
