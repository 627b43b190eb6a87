//! Schema migrations for order-sync (sea-orm-migration).
//!
//! `cargo run -p migration -- up|down|fresh|status` runs them by hand; the service applies
//! them itself at start-up, so a new machine needs no manual step.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_orders;
mod m20261126_000002_create_outbox;
mod m20261127_000003_create_inbound_webhooks;
mod m20261128_000004_create_sync_attempts;
mod m20261128_000005_create_sync_jobs;
mod m20261206_000006_orders_inbound_sent_at;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_orders::Migration),
            Box::new(m20261126_000002_create_outbox::Migration),
            Box::new(m20261127_000003_create_inbound_webhooks::Migration),
            Box::new(m20261128_000004_create_sync_attempts::Migration),
            Box::new(m20261128_000005_create_sync_jobs::Migration),
            Box::new(m20261206_000006_orders_inbound_sent_at::Migration),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the `seaql_migrations` rows of every existing database: a changed name would
    /// run that migration again there.
    #[test]
    fn migration_names_are_those_already_recorded() {
        let names: Vec<String> = Migrator::migrations()
            .iter()
            .map(|m| m.name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "m20261126_000001_create_orders",
                "m20261126_000002_create_outbox",
                "m20261127_000003_create_inbound_webhooks",
                "m20261128_000004_create_sync_attempts",
                "m20261128_000005_create_sync_jobs",
                "m20261206_000006_orders_inbound_sent_at",
            ]
        );
    }
}
