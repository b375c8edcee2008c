//! Logs through `tracing`: readable lines by default, JSON lines on request. The level comes
//! from `RUST_LOG` when set, else from `log.level`, else `info`.
//!
//! Lines are written to stderr by a thread of their own (`tracing-appender`), not by the task
//! that logs: a webhook is answered without waiting for a `write` to stderr, and a slow reader
//! of the log (a full pipe, a busy journald) cannot hold up acknowledgements. Should the
//! reader fall behind by more than the queue (128 000 lines), lines are dropped rather than
//! let webhooks wait, and counted: `GET /v1/api/status` shows `log.dropped_lines`.

use crate::config::LogFormat;
use std::sync::OnceLock;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Log lines dropped because stderr's reader fell too far behind (0 when the service's own
/// log writer is not in use, as in tests that embed the service).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// Install the global subscriber. Keep the guard until the process ends: dropping it writes
/// out the lines still queued. `None` when a subscriber was already installed.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat, level: Option<&str>) -> Option<WorkerGuard> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_to(std::io::stderr(), ansi, format, level)
}

/// [`init`] with the lines written to `out` instead of stderr (the ingest bench logs into
/// `io::sink()` this way, through the same writer thread as the service).
#[must_use = "dropping the guard stops the log writer"]
pub fn init_to(
    out: impl std::io::Write + Send + 'static,
    ansi: bool,
    format: LogFormat,
    level: Option<&str>,
) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("log-writer")
        // The thread takes every line queued, then flushes: the lines of one batch go out in
        // one `write` (stderr itself is unbuffered, one system call per line).
        .finish(std::io::BufWriter::with_capacity(64 * 1024, out));
    let dropped = writer.error_counter();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.ok()?;
    let _ = DROPPED.set(dropped);
    Some(guard)
}
