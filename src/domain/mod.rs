//! Domain types: an order's fields as values that can only exist when valid.
//!
//! Each type's only constructor checks its input (parse, don't validate), so handlers and the
//! database layer never re-check a field. Parsing an input collects every bad field at once, so
//! a client learns all its mistakes from one answer.

/// Serializes a state enum (one with `as_str`) by its `as_str` name: the same names the
/// database stores it under (`db::codec`).
macro_rules! serialize_as_str {
    ($enum:ty) => {
        impl serde::Serialize for $enum {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}
pub(crate) use serialize_as_str;

mod event;
mod order;
mod order_id;
mod snapshot;

pub use event::{EventKind, SyncEvent};
pub use order::{
    whole_number, AddressLine, FieldErrors, InboundUpdate, Money, OrderFields, OrderPatch,
    OrderStatus, Pincode, SyncState, MAX_EPOCH_SECONDS,
};
pub use order_id::OrderId;
pub use snapshot::OrderSnapshot;
