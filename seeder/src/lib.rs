//! The seeder's parts, as a library so the benchmarks can time exactly what `cargo run -p
//! seeder` does: [`options`] (the environment), [`generate`] (fake orders with the reference's
//! distributions) and [`write`] (batched inserts with outbox rows).

pub mod generate;
pub mod options;
pub mod write;
