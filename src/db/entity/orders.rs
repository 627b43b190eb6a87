//! The `orders` table. Validated values live in `crate::domain`; this is the stored row.

use sea_orm::entity::prelude::*;

use crate::domain::{OrderStatus, SyncState};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub status: OrderStatus,
    pub placed_at: DateTimeUtc,
    pub delivered_at: Option<DateTimeUtc>,
    pub amount: i64,
    pub tax: i64,
    pub street_address: String,
    pub city: String,
    pub state: String,
    pub country: String,
    pub pincode: String,
    /// Incremented by every change; the sync engine compares it with `synced_version`.
    pub version: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// Set by `DELETE`: the row stays as a tombstone until the delete has been synced.
    pub deleted_at: Option<DateTimeUtc>,
    pub sync_state: SyncState,
    pub synced_version: i64,
    pub sync_attempts: i32,
    pub sync_last_error: Option<String>,
    pub synced_at: Option<DateTimeUtc>,
    pub sync_next_attempt_at: Option<DateTimeUtc>,
    /// When the first `POST` was sent; a tombstone without it was never created remotely.
    pub create_sent_at: Option<DateTimeUtc>,
    /// When the external system sent the last write-back applied (its `webhook-timestamp`).
    pub inbound_sent_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
