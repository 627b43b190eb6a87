//! The `inbound_webhooks` table: the ids of signed write-backs already applied. A write-back is
//! applied in the same transaction as its id is inserted, so a replay (the sender retrying, or
//! an attacker repeating a captured request within the 5-minute tolerance) is answered without
//! being applied twice. Rows older than the tolerance can no longer pass the signature check, so
//! they are pruned.

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
                r#"
CREATE TABLE inbound_webhooks (
    webhook_id   TEXT        PRIMARY KEY,
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX inbound_webhooks_received_at_idx ON inbound_webhooks (received_at);
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS inbound_webhooks")
            .await?;
        Ok(())
    }
}
