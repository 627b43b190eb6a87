//! The seeder as a user runs it: the real binary against a fresh PostgreSQL database.

use std::process::{Command, Output};

use sqlx::{Connection, PgConnection};

/// A database of this test's own, dropped at the end (the seeder creates it on first use).
struct TestDatabase {
    name: String,
}

impl TestDatabase {
    fn new() -> Self {
        Self {
            name: test_support::unique_db_name(),
        }
    }

    fn url(&self) -> String {
        format!("{}/{}", test_support::database_server(), self.name)
    }

    fn seed(&self, vars: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_seeder"))
            .env("DATABASE_URL", self.url())
            .envs(vars.iter().copied())
            .output()
            .expect("the seeder runs")
    }

    async fn count(&self, query: &'static str) -> i64 {
        let mut conn = PgConnection::connect(&self.url()).await.expect("connect");
        sqlx::query_scalar(query)
            .fetch_one(&mut conn)
            .await
            .expect("count")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        test_support::drop_database_blocking(&self.name);
    }
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "seeder failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn seeding_creates_the_orders_with_outbox_rows_and_clean_orders_empties_first() {
    let db = TestDatabase::new();
    let out = stdout(&db.seed(&[("ORDER_COUNT", "120")]));
    assert!(out.contains("120 orders created successfully."), "{out}");
    assert!(
        out.lines()
            .last()
            .is_some_and(|l| l.starts_with("seeded 120 orders in ") && l.ends_with(" orders/s)")),
        "{out}"
    );
    assert!(!out.contains("deleted"), "{out}");
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 120);
    assert_eq!(
        db.count("SELECT count(*) FROM outbox WHERE action = 'create' AND version = 1")
            .await,
        120
    );

    let out = stdout(&db.seed(&[("ORDER_COUNT", "30"), ("CLEAN_ORDERS", "true")]));
    assert!(
        out.starts_with("120 orders deleted successfully.\n30 orders created successfully.\n"),
        "{out}"
    );
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 30);
    assert_eq!(db.count("SELECT count(*) FROM outbox").await, 30);
    assert_eq!(
        db.count("SELECT count(*) FROM orders o JOIN outbox b ON b.order_id = o.id")
            .await,
        30,
        "every seeded order has its own outbox row"
    );
}

#[tokio::test]
async fn sync_false_seeds_orders_without_outbox_rows() {
    let db = TestDatabase::new();
    stdout(&db.seed(&[("ORDER_COUNT", "40"), ("SYNC", "false")]));
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 40);
    assert_eq!(db.count("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test]
async fn bad_values_fail_with_one_line_and_write_nothing() {
    let db = TestDatabase::new();
    stdout(&db.seed(&[("ORDER_COUNT", "5")]));
    for (name, value) in [
        ("ORDER_COUNT", "abc"),
        ("ORDER_COUNT", "-5"),
        ("CLEAN_ORDERS", "maybe"),
    ] {
        let output = db.seed(&[(name, value)]);
        assert_eq!(output.status.code(), Some(1), "{name}={value}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(name),
            "{stderr}"
        );
    }
    // CLEAN_ORDERS=true with a bad ORDER_COUNT must not have emptied the table either.
    let output = db.seed(&[("ORDER_COUNT", "abc"), ("CLEAN_ORDERS", "true")]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(db.count("SELECT count(*) FROM orders").await, 5);
}

#[test]
fn version_and_help_answer_without_seeding_and_an_unknown_argument_is_one_line() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_seeder"))
            .args(args)
            .env_clear()
            .output()
            .expect("the seeder runs")
    };
    let version = run(&["--version"]);
    assert!(version.status.success(), "{version:?}");
    assert_eq!(
        stdout(&version).trim(),
        order_sync::build_info::version_line("seeder")
    );
    let help = run(&["--help"]);
    assert!(help.status.success(), "{help:?}");
    assert!(stdout(&help).contains("ORDER_COUNT"), "{help:?}");
    let unknown = run(&["--count", "5"]);
    assert_eq!(unknown.status.code(), Some(2));
    let error = String::from_utf8_lossy(&unknown.stderr);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(
        error.starts_with("error: unknown argument \"--count\""),
        "{error}"
    );
}
