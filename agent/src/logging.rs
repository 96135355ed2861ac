//! Logging: journald-native under systemd (`JOURNAL_STREAM`), human-readable otherwise.

use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Install the global subscriber. `RUST_LOG` overrides the default `info` level.
pub fn init() {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        if let Ok(journald) = tracing_journald::layer() {
            let _ = registry
                .with(journald.with_syslog_identifier("cloudnx-agent".into()))
                .try_init();
            return;
        }
    }
    let _ = registry
        .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
        .try_init();
}
