//! An order's id.

use std::fmt;

/// An order's id: the primary key of `orders`, and the key the engine shards, queues and
/// serialises an order's work by (one actor, one shard, one lease per id). A type of its own
/// from the API's path to the engine's actors, so that an id is never taken for a version, a
/// job id or a count. Serialized as the bare number (in the OpenAPI document, fields of this
/// type say `#[schema(value_type = i64)]`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct OrderId(i64);

impl OrderId {
    pub const fn new(id: i64) -> Self {
        Self(id)
    }

    /// The number, for arithmetic (the shard is `id % SHARDS`) and for storage.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl From<OrderId> for i64 {
    fn from(id: OrderId) -> Self {
        id.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
