//! Logging. `RUST_LOG` filters as usual (default `info`); the audit trail is target `audit`, and reaches the
//! JSON logs like everything else (`log.format = "json"`).

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr: stdout carries what a command prints for the user (a token, the listen line).
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).flatten_event(true).try_init(),
    };
}
