//! Domain types: an order's fields as values that can only exist when valid.
//!
//! Each type's only constructor checks its input (parse, don't validate), so handlers and the
//! database layer never re-check a field. Parsing an input collects every bad field at once, so
//! a client learns all its mistakes from one answer.

mod order;

pub use order::{
    AddressLine, FieldErrors, InboundUpdate, Money, OrderFields, OrderPatch, OrderStatus, Pincode,
    SyncState,
};
