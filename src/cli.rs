//! The command line: `order-sync` runs the service (settings come from the environment, see the
//! README); the few arguments it takes answer a question and exit. Hand-written rather than
//! clap: three words need no parser, and an unknown one must stop with one line, not start a
//! server.

use std::time::Duration;

use crate::build_info;

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// No argument: run the service.
    Serve,
    Version,
    Help,
    /// `healthcheck [live|ready|URL]`: ask a running instance on this host, exit 0 or 1 (for a
    /// container's `HEALTHCHECK`, which has no curl to run).
    Healthcheck(String),
}

pub const USAGE: &str = "usage: order-sync [--version | --help | healthcheck [live|ready|URL]]
  (no argument)   run the service; settings come from the environment (see the README)
  --version, -V   print the version and the commit it was built from
  --help, -h      print this
  healthcheck     GET http://127.0.0.1:$PORT/health/ready (or /health/live, or URL) and exit 0
                  when it answers 200, 1 otherwise";

/// Reads the arguments after the program's name; `Err` is the one line to print.
pub fn parse(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Serve),
        [flag] if flag == "--version" || flag == "-V" => Ok(Command::Version),
        [flag] if flag == "--help" || flag == "-h" => Ok(Command::Help),
        [word] if word == "healthcheck" => Ok(Command::Healthcheck(local_health_url("ready"))),
        [word, what] if word == "healthcheck" => match what.as_str() {
            "live" | "ready" => Ok(Command::Healthcheck(local_health_url(what))),
            url if url.starts_with("http://") => Ok(Command::Healthcheck(url.to_string())),
            other => Err(format!(
                "healthcheck takes live, ready or an http:// URL, not {other:?}"
            )),
        },
        [first, ..] => Err(format!(
            "unknown argument {first:?} (order-sync --help lists what it takes; settings come from the environment)"
        )),
    }
}

/// This host's instance, on `PORT` (8080 when unset).
fn local_health_url(which: &str) -> String {
    let port = std::env::var("PORT")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "8080".to_string());
    format!("http://127.0.0.1:{port}/health/{which}")
}

/// `order-sync --version`.
pub fn version() -> String {
    build_info::version_line("order-sync")
}

/// Asks `url` once, within 5 s: `Ok` on 200, `Err` naming what came back otherwise.
pub async fn healthcheck(url: &str) -> Result<(), String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(5))
        .finish();
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}", response.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Command, String> {
        parse(&words.iter().map(|w| w.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn no_argument_runs_the_service() {
        assert_eq!(parse_words(&[]), Ok(Command::Serve));
    }

    #[test]
    fn version_and_help_take_their_short_forms_too() {
        assert_eq!(parse_words(&["--version"]), Ok(Command::Version));
        assert_eq!(parse_words(&["-V"]), Ok(Command::Version));
        assert_eq!(parse_words(&["--help"]), Ok(Command::Help));
        assert_eq!(parse_words(&["-h"]), Ok(Command::Help));
    }

    #[test]
    fn healthcheck_asks_ready_unless_told_live_or_a_url() {
        let ready = parse_words(&["healthcheck"]);
        assert!(matches!(ready, Ok(Command::Healthcheck(url)) if url.ends_with("/health/ready")));
        let live = parse_words(&["healthcheck", "live"]);
        assert!(matches!(live, Ok(Command::Healthcheck(url)) if url.ends_with("/health/live")));
        let url = parse_words(&["healthcheck", "http://127.0.0.1:9090/_fake/health"]);
        assert_eq!(
            url,
            Ok(Command::Healthcheck(
                "http://127.0.0.1:9090/_fake/health".into()
            ))
        );
        assert!(parse_words(&["healthcheck", "sideways"]).is_err());
    }

    #[test]
    fn an_unknown_argument_is_refused_naming_it() {
        let refused = parse_words(&["--port", "80"]);
        assert!(
            matches!(&refused, Err(line) if line.contains("\"--port\"") && !line.contains('\n'))
        );
    }
}
