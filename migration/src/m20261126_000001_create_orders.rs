//! The `orders` table: the reference service's columns, plus `version`, the sync columns and a
//! soft-delete tombstone (`deleted_at`), so that a delete that is owed to the external API
//! survives a crash until it has been synced.

use sea_orm_migration::prelude::*;

/// Named after this file (`DeriveMigrationName`), as the `seaql_migrations` rows already are.
#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Raw SQL: CHECK constraints and partial indexes read more plainly here than through
        // the schema builder, and this table is PostgreSQL-only by design.
        manager
            .get_connection()
            .execute_unprepared(
                r#"
CREATE TABLE orders (
    id               BIGSERIAL PRIMARY KEY,
    status           TEXT        NOT NULL CHECK (status IN ('pending', 'delivered', 'canceled')),
    placed_at        TIMESTAMPTZ NOT NULL,
    delivered_at     TIMESTAMPTZ NULL,
    amount           BIGINT      NOT NULL CHECK (amount >= 0),
    tax              BIGINT      NOT NULL CHECK (tax >= 0),
    street_address   TEXT        NOT NULL,
    city             TEXT        NOT NULL,
    state            TEXT        NOT NULL,
    country          TEXT        NOT NULL,
    pincode          TEXT        NOT NULL,
    version          BIGINT      NOT NULL DEFAULT 1,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at       TIMESTAMPTZ NULL,
    sync_state       TEXT        NOT NULL DEFAULT 'pending'
                     CHECK (sync_state IN ('pending', 'synced', 'retrying', 'dead')),
    synced_version   BIGINT      NOT NULL DEFAULT 0,
    sync_attempts    INTEGER     NOT NULL DEFAULT 0,
    sync_last_error  TEXT        NULL,
    synced_at        TIMESTAMPTZ NULL,
    sync_next_attempt_at TIMESTAMPTZ NULL,
    -- Set just before the first POST is sent: if a crash then hides whether it arrived, the
    -- order may exist remotely, and a later delete must still be sent.
    create_sent_at   TIMESTAMPTZ NULL
);
-- GET /orders pages newest first (id DESC) over live orders, optionally by status or sync state.
CREATE INDEX orders_live_status_idx ON orders (status, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX orders_live_sync_state_idx ON orders (sync_state, id DESC) WHERE deleted_at IS NULL;
-- The reconciler looks for orders whose external copy is behind.
CREATE INDEX orders_unsynced_idx ON orders (id) WHERE synced_version < version;
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS orders")
            .await?;
        Ok(())
    }
}
