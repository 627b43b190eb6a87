//! The external API: what we send it ([`payload`]), how we call it ([`client`], awc with
//! tokio-retry), how its answers are made safe to act on and store ([`untrusted`]), and a
//! built-in fake of it ([`fake`]) that `cargo run` starts when `EXTERNAL_API_URL` is unset, as the
//! reference's WebMock stubs stood in for the real thing. [`tls`] holds the trusted roots an
//! `https` URL is checked against.

pub mod client;
pub mod fake;
pub mod payload;
pub mod tls;
pub mod untrusted;

pub use client::{Answer, CallError, ExternalCall, ExternalClient, EXCERPT_CHARS};
pub use untrusted::{clean_error_text, parse_retry_after};
