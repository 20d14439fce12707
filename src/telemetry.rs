//! Logging setup: `tracing` with JSON lines when stdout is not a terminal (containers)
//! and human-readable lines on a terminal; the level comes from `RUST_LOG`
//! (default `info`). `APNS_WORKER_LOG_FORMAT=json|text` overrides the choice.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init_logging() {
    init_logging_with("info");
}

/// As [`init_logging`], with another level when `RUST_LOG` is not set.
pub fn init_logging_with(default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = match std::env::var("APNS_WORKER_LOG_FORMAT").as_deref() {
        Ok("json") => true,
        Ok("text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
