//! How domain types are stored: the state enums as `TEXT` columns by their `as_str` names, the
//! order id as its `BIGINT`, and the order snapshot read from a row. Kept here so that the domain names no database library.

use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use crate::domain::{OrderId, OrderSnapshot, OrderStatus, SyncState};

/// Maps a state enum (one with `as_str` and `FromStr`) to a PostgreSQL `TEXT` column for sqlx,
/// through its `as_str` names: bound as a parameter, read from a column, and bound as a `TEXT[]`
/// for `= ANY($n)`. The sea-orm entity reads the same columns through `DeriveActiveEnum` with
/// `rename_all = "lowercase"`, which gives the same names (a test in `domain/order.rs` checks it).
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
    };
}
pub(crate) use text_column;

text_column!(OrderStatus);
text_column!(SyncState);

/// An order id is its `BIGINT` column, for sea-orm's statements...
impl From<OrderId> for sea_orm::Value {
    fn from(id: OrderId) -> Self {
        id.get().into()
    }
}

/// ...and for sqlx's (and `BIGINT[]` for `= ANY($n)`).
impl sqlx::Type<sqlx::Postgres> for OrderId {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <i64 as sqlx::Type<sqlx::Postgres>>::type_info()
    }

    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <i64 as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::postgres::PgHasArrayType for OrderId {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <i64 as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

impl sqlx::Encode<'_, sqlx::Postgres> for OrderId {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as sqlx::Encode<sqlx::Postgres>>::encode(self.get(), buf)
    }
}

impl sqlx::Decode<'_, sqlx::Postgres> for OrderId {
    fn decode(value: sqlx::postgres::PgValueRef<'_>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(OrderId::new(<i64 as sqlx::Decode<sqlx::Postgres>>::decode(
            value,
        )?))
    }
}

/// The snapshot's columns, by its fields' names (the sync row nests it with `#[sqlx(flatten)]`).
impl<'r> FromRow<'r, PgRow> for OrderSnapshot {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            version: row.try_get("version")?,
            status: row.try_get("status")?,
            placed_at: row.try_get("placed_at")?,
            delivered_at: row.try_get("delivered_at")?,
            amount: row.try_get("amount")?,
            tax: row.try_get("tax")?,
            street_address: row.try_get("street_address")?,
            city: row.try_get("city")?,
            state: row.try_get("state")?,
            country: row.try_get("country")?,
            pincode: row.try_get("pincode")?,
        })
    }
}
