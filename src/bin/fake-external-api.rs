//! The built-in fake external API on its own: `cargo run --bin fake-external-api`.
//! `FAKE_API_PORT` (default 9090), `FAKE_API_HOST` (default 127.0.0.1; docker-compose sets
//! 0.0.0.0 so the service's container can reach it), `FAKE_API_LATENCY_MS`,
//! `FAKE_API_FAILURE_RATE`.

use std::net::TcpListener;
use std::process::ExitCode;

use order_sync::external::fake::{FakeConfig, FakeExternalApi};

#[actix_web::main]
async fn main() -> ExitCode {
    let result = async {
        let config = FakeConfig::from_env().map_err(anyhow::Error::msg)?;
        let port = std::env::var("FAKE_API_PORT").unwrap_or_else(|_| "9090".into());
        let port: u16 = port
            .parse()
            .map_err(|_| anyhow::anyhow!("FAKE_API_PORT must be a port number, not {port:?}"))?;
        let host = std::env::var("FAKE_API_HOST").unwrap_or_else(|_| "127.0.0.1".into());
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
