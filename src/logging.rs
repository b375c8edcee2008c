//! Logs through `tracing`: readable lines by default, JSON lines on request. The level comes
//! from `RUST_LOG` when set, else from `log.level`, else `info`.
//!
//! Lines are written to stderr by a thread of their own, not by the task that logs: a webhook
//! is answered without waiting for a `write` to stderr, and a slow reader of the log (a full
//! pipe, a busy journald) cannot hold up acknowledgements.
//!
//! A logging task only copies its formatted line into a shared buffer. The writer thread
//! takes the whole buffer every [`FLUSH_EVERY`] and writes it in one call; it is woken early
//! only by a warning or an error (written at once) or by a buffer past [`WAKE_AT`] bytes.
//! At the webhook rate a service sees under load, waking a thread for every line (as a
//! channel per line does) cost more CPU than decoding the webhook.
//!
//! Should the reader fall behind by more than [`MAX_PENDING`] bytes (some 50 000 lines),
//! lines are dropped rather than let webhooks wait, and counted: `GET /v1/api/status` shows
//! `log.dropped_lines`.

use crate::config::LogFormat;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How long a line may wait in the buffer before the writer thread writes it out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this full wakes the writer thread before [`FLUSH_EVERY`] is up.
pub const WAKE_AT: usize = 256 * 1024;
/// Lines that would take the buffer past this many bytes are dropped and counted.
pub const MAX_PENDING: usize = 16 * 1024 * 1024;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped because stderr's reader fell too far behind (0 when the service's own
/// log writer is not in use, as in tests that embed the service).
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Install the global subscriber. Keep the guard until the process ends: dropping it writes
/// out the lines still queued. `None` when a subscriber was already installed.
#[must_use = "dropping the guard stops the log writer"]
pub fn init(format: LogFormat, level: Option<&str>) -> Option<LogGuard> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    init_to(std::io::stderr(), ansi, format, level)
}

/// [`init`] with the lines written to `out` instead of stderr (the ingest bench logs into
/// `io::sink()` this way, through the same writer thread as the service).
#[must_use = "dropping the guard stops the log writer"]
pub fn init_to(
    out: impl Write + Send + 'static,
    ansi: bool,
    format: LogFormat,
    level: Option<&str>,
) -> Option<LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = LogWriter::start(out, &DROPPED, FLUSH_EVERY);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // Without a subscriber the guard stops its thread at once; nothing was written to it.
    installed.ok()?;
    Some(guard)
}

/// What the logging tasks and the writer thread share.
struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: &'static AtomicU64,
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The writer thread was woken and has not taken the buffer yet.
    woken: bool,
    stop: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves at worst a half-copied line; keep logging.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, line: &[u8], urgent: bool) {
        let mut p = self.lock();
        if p.buf.len() + line.len() > MAX_PENDING {
            drop(p);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        p.buf.extend_from_slice(line);
        if !p.woken && (urgent || p.buf.len() >= WAKE_AT) {
            p.woken = true;
            drop(p);
            self.wake.notify_one();
        }
    }
}

/// The `MakeWriter` handed to the subscriber: each event's line is copied into the shared
/// buffer in one piece.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Keeps the writer thread; dropping it writes out what is buffered and stops the thread.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Start the writer thread, writing what is buffered to `out` every `every`.
    fn start(
        out: impl Write + Send + 'static,
        dropped: &'static AtomicU64,
        every: Duration,
    ) -> (Self, LogGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            dropped,
        });
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".to_string())
            .spawn(move || write_loop(&for_thread, out, every))
            .expect("start the log writer thread");
        let guard = LogGuard {
            shared: shared.clone(),
            thread: Some(thread),
        };
        (LogWriter { shared }, guard)
    }
}

fn write_loop(shared: &Shared, mut out: impl Write, every: Duration) {
    let mut spare = Vec::new();
    loop {
        let stop = {
            let mut p = shared.lock();
            if !p.woken && !p.stop {
                p = shared
                    .wake
                    .wait_timeout(p, every)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            p.woken = false;
            std::mem::swap(&mut p.buf, &mut spare);
            p.stop
        };
        if !spare.is_empty() {
            // Nowhere to report a failed write to the log itself; the lines are lost.
            let _ = out.write_all(&spare).and_then(|()| out.flush());
            spare.clear();
            // Keep a buffer the size of a busy interval, not of the largest burst ever.
            spare.shrink_to(WAKE_AT * 2);
        }
        if stop {
            return;
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One event's line, as the subscriber writes it.
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.shared.push(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            // Warnings and errors go out at once.
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An `out` the test can read while the writer thread writes to it.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn leaked_counter() -> &'static AtomicU64 {
        Box::leak(Box::new(AtomicU64::new(0)))
    }

    fn wait_for(out: &Captured, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !out.text().contains(want) {
            assert!(
                Instant::now() < deadline,
                "{want:?} never written: {}",
                out.text()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn lines_reach_the_output_in_order_and_dropping_the_guard_writes_the_rest() {
        let out = Captured::default();
        let (writer, guard) = LogWriter::start(out.clone(), leaked_counter(), HOUR);
        for i in 0..1000 {
            writer
                .make_writer()
                .write_all(format!("line {i}\n").as_bytes())
                .unwrap();
        }
        drop(guard);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(*l, format!("line {i}"));
        }
    }

    #[test]
    fn info_lines_are_written_within_the_flush_interval() {
        let out = Captured::default();
        let (writer, _guard) =
            LogWriter::start(out.clone(), leaked_counter(), Duration::from_millis(20));
        writer.make_writer().write_all(b"quiet\n").unwrap();
        wait_for(&out, "quiet\n");
    }

    #[test]
    fn a_warning_is_written_at_once_not_at_the_next_interval() {
        let out = Captured::default();
        // An interval no test waits for: only the wake-up can write the lines out.
        let (writer, _guard) = LogWriter::start(out.clone(), leaked_counter(), HOUR);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(writer)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            tracing::warn!("urgent");
        });
        wait_for(&out, "urgent");
        assert!(out.text().contains("before"), "{}", out.text());
    }

    #[test]
    fn lines_past_the_limit_are_dropped_and_counted() {
        let dropped = leaked_counter();
        // A writer whose output never drains: the thread is blocked inside `write`.
        let gate = Arc::new(Mutex::new(()));
        struct Blocked(Arc<Mutex<()>>);
        impl Write for Blocked {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _held = self.0.lock().unwrap();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let held = gate.lock().unwrap();
        let (writer, guard) =
            LogWriter::start(Blocked(gate.clone()), dropped, Duration::from_millis(1));
        let line = vec![b'x'; 1024];
        // Twice the limit: whatever the thread took before blocking, the rest cannot fit.
        for _ in 0..(2 * MAX_PENDING / line.len() + 2 * WAKE_AT / line.len()) {
            writer.make_writer().write_all(&line).unwrap();
        }
        assert!(dropped.load(Ordering::Relaxed) > 0, "nothing was dropped");
        assert!(writer.shared.lock().buf.len() <= MAX_PENDING);
        drop(held);
        drop(guard);
    }
}
