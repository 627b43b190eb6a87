//! `orders.inbound_sent_at`: when the external system sent the last write-back applied to the
//! order (its signed `webhook-timestamp`). A write-back delivered late, after a newer one was
//! applied, is then recognised as stale (`db::update_from_inbound`). Nullable and added without
//! a rewrite, so instances of the previous release keep running during a rolling deploy.

use sea_orm_migration::prelude::*;

/// Named after this file (`DeriveMigrationName`), as the `seaql_migrations` rows already are.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "ALTER TABLE orders ADD COLUMN IF NOT EXISTS inbound_sent_at TIMESTAMPTZ",
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("ALTER TABLE orders DROP COLUMN IF EXISTS inbound_sent_at")
            .await?;
        Ok(())
    }
}
