//! Domain types: an order's fields as values that can only exist when valid.
//!
//! Each type's only constructor checks its input (parse, don't validate), so handlers and the
//! database layer never re-check a field. Parsing an input collects every bad field at once, so
//! a client learns all its mistakes from one answer.

/// Maps a state enum (one with `as_str` and `FromStr`) to a PostgreSQL `TEXT` column for sqlx,
/// through its `as_str` names: bound as a parameter, read from a column, and bound as a `TEXT[]`
/// for `= ANY($n)`; serialized (JSON) by the same names. The sea-orm entity reads the same columns through `DeriveActiveEnum` with
/// `rename_all = "lowercase"`, which gives the same names (a test in `order.rs` checks it).
macro_rules! text_column {
    ($enum:ty) => {
        impl sqlx::Type<sqlx::Postgres> for $enum {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $enum {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $enum {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl sqlx::Decode<'_, sqlx::Postgres> for $enum {
            fn decode(
                value: sqlx::postgres::PgValueRef<'_>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(text.parse::<$enum>()?)
            }
        }

        impl serde::Serialize for $enum {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }
    };
}
pub(crate) use text_column;

mod event;
mod order;
mod snapshot;

pub use event::{EventKind, SyncEvent};
pub use order::{
    whole_number, AddressLine, FieldErrors, InboundUpdate, Money, OrderFields, OrderPatch,
    OrderStatus, Pincode, SyncState, MAX_EPOCH_SECONDS,
};
pub use snapshot::OrderSnapshot;
