//! Schema migrations for order-sync (sea-orm-migration).
//!
//! `cargo run -p migration -- up|down|fresh|status` runs them by hand; the service applies
//! them itself at start-up, so a new machine needs no manual step.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_orders;
mod m20261126_000002_create_outbox;
mod m20261127_000003_create_inbound_webhooks;

/// Every migration, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_orders::Migration),
            Box::new(m20261126_000002_create_outbox::Migration),
            Box::new(m20261127_000003_create_inbound_webhooks::Migration),
        ]
    }
}
