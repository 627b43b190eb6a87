//! sea-orm entities, one per table of the migrations.

pub mod orders;
pub mod outbox;
