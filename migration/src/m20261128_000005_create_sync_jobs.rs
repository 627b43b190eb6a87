//! The operator's jobs and switch: `sync_jobs` holds each audit and full resync (its id range,
//! how far it got, its counts, and which instance runs it until when), so a job survives a
//! restart and resumes where it was; `sync_control` holds whether outbound calls are paused, for
//! every instance at once and across restarts.

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
CREATE TABLE sync_jobs (
    id                  BIGSERIAL   PRIMARY KEY,
    kind                TEXT        NOT NULL CHECK (kind IN ('audit', 'resync')),
    status              TEXT        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done')),
    -- Started by AUDIT_INTERVAL_SECS rather than by an operator.
    sampled             BOOLEAN     NOT NULL DEFAULT false,
    from_id             BIGINT      NOT NULL,
    to_id               BIGINT      NOT NULL,
    -- The cursor: every id below it has been queued.
    next_id             BIGINT      NOT NULL,
    -- Ids (audit) or orders (resync) in the range when the job was created.
    total               BIGINT      NOT NULL,
    queued              BIGINT      NOT NULL DEFAULT 0,
    checked             BIGINT      NOT NULL DEFAULT 0,
    matching            BIGINT      NOT NULL DEFAULT 0,
    skipped             BIGINT      NOT NULL DEFAULT 0,
    errors              BIGINT      NOT NULL DEFAULT 0,
    repaired_missing    BIGINT      NOT NULL DEFAULT 0,
    repaired_different  BIGINT      NOT NULL DEFAULT 0,
    repaired_stray      BIGINT      NOT NULL DEFAULT 0,
    -- The instance working the job, and until when its claim holds unless renewed.
    runner              TEXT        NULL,
    runner_until        TIMESTAMPTZ NULL,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at         TIMESTAMPTZ NULL
);
CREATE INDEX sync_jobs_running_idx ON sync_jobs (id) WHERE status = 'running';

CREATE TABLE sync_control (
    one         BOOLEAN     PRIMARY KEY DEFAULT true CHECK (one),
    paused      BOOLEAN     NOT NULL DEFAULT false,
    changed_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO sync_control DEFAULT VALUES;
"#,
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS sync_jobs; DROP TABLE IF EXISTS sync_control")
            .await?;
        Ok(())
    }
}
