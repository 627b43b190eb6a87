//! The `outbox` table: changes committed but not yet published to the Redis backlog.

use sea_orm::entity::prelude::*;

use crate::db::ChangeAction;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub order_id: i64,
    pub version: i64,
    /// Why the row was written (an operator's retry, or a change): the relay publishes a retry
    /// so that it reaches a parked order. The sync itself always reads the order's current row.
    pub action: ChangeAction,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
