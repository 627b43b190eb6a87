//! The built-in fake external API on its own: `cargo run --bin fake-external-api`.
//! `FAKE_API_PORT` (default 9090), `FAKE_API_HOST` (default 127.0.0.1; docker-compose sets
//! 0.0.0.0 so the service's container can reach it), `FAKE_API_LATENCY_MS`,
//! `FAKE_API_FAILURE_RATE`.

use std::net::TcpListener;
use std::process::ExitCode;

use order_sync::external::fake::{FakeConfig, FakeExternalApi};
use serde::Deserialize;

/// Where to listen, read with envy (field names are the variables, lower-cased). Unlike the
/// knobs, an empty value is not unset: `FAKE_API_PORT=` is refused, as a typo should be.
#[derive(Deserialize)]
struct Listen {
    #[serde(default = "default_port", deserialize_with = "port")]
    fake_api_port: u16,
    #[serde(default = "default_host")]
    fake_api_host: String,
}

fn default_port() -> u16 {
    9090
}

fn default_host() -> String {
    "127.0.0.1".into()
}

/// Hand-written only for its message, which says what a valid value is.
fn port<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    let raw = String::deserialize(deserializer)?;
    raw.parse().map_err(|_| {
        serde::de::Error::custom(format!("FAKE_API_PORT must be a port number, not {raw:?}"))
    })
}

#[actix_web::main]
async fn main() -> ExitCode {
    let result = async {
        let config = FakeConfig::from_env().map_err(anyhow::Error::msg)?;
        let Listen {
            fake_api_port: port,
            fake_api_host: host,
        } = envy::from_env().map_err(anyhow::Error::new)?;
        let listener = TcpListener::bind((host.as_str(), port)).map_err(|e| {
            anyhow::anyhow!("cannot listen on {host}:{port} (FAKE_API_HOST, FAKE_API_PORT): {e}")
        })?;
        let (url, server) = FakeExternalApi::build(listener, config)?;
        println!("fake external API listening on {url} ({config:?})");
        server.await?;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
