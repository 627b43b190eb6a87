//! An order's fields as stored, at one version: what a call to the external API is built from.

use super::OrderId;

use chrono::{DateTime, Utc};

use super::OrderStatus;

/// The order fields the external payload is made from (`external::payload`), read as part of
/// the sync engine's row (`db::sync::SyncRow`, which nests it; `db::codec` reads it from a row).
#[derive(Debug, Clone)]
pub struct OrderSnapshot {
    pub id: OrderId,
    pub version: i64,
    pub status: OrderStatus,
    pub placed_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub amount: i64,
    pub tax: i64,
    pub street_address: String,
    pub city: String,
    pub state: String,
    pub country: String,
    pub pincode: String,
}
