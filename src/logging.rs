//! Logs through `tracing`: readable lines by default, JSON lines on request. The level comes
//! from `RUST_LOG` when set, else from `log.level`, else `info`.

use crate::config::LogFormat;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(format: LogFormat, level: Option<&str>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
