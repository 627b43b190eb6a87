//! The `outbox` table: changes committed but not yet published to the Redis backlog.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub order_id: i64,
    pub version: i64,
    /// `create`, `update`, `delete`, or `retry` (an operator's retry): for logs and metrics. The sync
    /// itself always reads the order's current row.
    pub action: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
