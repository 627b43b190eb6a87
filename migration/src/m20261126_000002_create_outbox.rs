//! The `outbox` table: one row per order change, written in the same transaction as the change.
//! The relay publishes rows to Redis in `id` order and deletes each only after its stream entry
//! exists, so a change committed in PostgreSQL cannot be lost on its way to the backlog.

use sea_orm_migration::prelude::*;

/// Named after this file (`DeriveMigrationName`), as the `seaql_migrations` rows already are.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // No foreign key to orders: a purged tombstone must not take its outbox rows with it
        // before they are published, and the relay reads by primary key only.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE TABLE outbox (
    id          BIGSERIAL   PRIMARY KEY,
    order_id    BIGINT      NOT NULL,
    version     BIGINT      NOT NULL,
    action      TEXT        NOT NULL CHECK (action IN ('create', 'update', 'delete', 'retry')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_order_id_idx ON outbox (order_id);
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS outbox")
            .await?;
        Ok(())
    }
}
