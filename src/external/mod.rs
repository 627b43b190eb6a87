//! The external API: what we send it ([`payload`]), how we call it ([`client`], awc with
//! tokio-retry), and a built-in fake of it ([`fake`]) that `cargo run` starts when
//! `EXTERNAL_API_URL` is unset, as the reference's WebMock stubs stood in for the real thing.

pub mod client;
pub mod fake;
pub mod payload;

pub use client::{CallError, ExternalCall, ExternalClient};
