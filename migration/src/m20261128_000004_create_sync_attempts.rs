//! The `sync_attempts` table: every call attempt the engine made, for the operator's view
//! (`GET /orders/{id}/attempts`, `GET /orders/{id}/sync`, the dashboard's order lookup). It is a
//! log, not state: nothing in the engine reads it, and its rows are pruned in the background to
//! the last `ATTEMPTS_KEPT_PER_ORDER` per order and `ATTEMPTS_RETENTION_DAYS`.
//!
//! No foreign key to `orders`: a deleted order's row is purged once its delete is synced, and the
//! attempts that did it stay until retention removes them.

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
CREATE TABLE sync_attempts (
    id            BIGSERIAL   PRIMARY KEY,
    order_id      BIGINT      NOT NULL,
    version       BIGINT      NOT NULL,
    verb          TEXT        NOT NULL,
    -- 'ok', or why it failed: 'status' (the answer's status is in http_status), 'timeout',
    -- 'connect'.
    outcome       TEXT        NOT NULL,
    http_status   SMALLINT    NULL,
    -- The start of the answer's body (or the error's text), cleaned: bounded, no control
    -- characters.
    excerpt       TEXT        NOT NULL DEFAULT '',
    duration_ms   INTEGER     NOT NULL,
    instance      TEXT        NOT NULL,
    attempted_at  TIMESTAMPTZ NOT NULL
);
-- An order's attempts, newest first; also how the pruner finds an order's oldest ones.
CREATE INDEX sync_attempts_order_idx ON sync_attempts (order_id, id DESC);
-- How far the per-order pruner has looked (one row): attempts after it are new since its last
-- pass, and only orders with new attempts can be over the limit.
CREATE TABLE sync_attempts_pruned (
    singleton  BOOLEAN PRIMARY KEY DEFAULT true CHECK (singleton),
    through_id BIGINT  NOT NULL
);
INSERT INTO sync_attempts_pruned (through_id) VALUES (0);
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS sync_attempts, sync_attempts_pruned")
            .await?;
        Ok(())
    }
}
