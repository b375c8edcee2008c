//! The one clock of the system (DESIGN.md §6 rule 3): every change time is read from it.

use crate::event::Millis;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where "now" comes from, so tests can control the time of changes.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> Millis;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or(0)
    }
}

/// A test clock that follows tokio's clock (so `tokio::time::pause`/`advance` move it too),
/// starting at a chosen epoch time, plus a manual offset for jumps between syncs.
#[derive(Debug)]
pub struct TestClock {
    /// The time the clock showed when it was created.
    base: Millis,
    /// Tokio's instant at creation: elapsed tokio time is added to `base`.
    start: tokio::time::Instant,
    /// Extra time added by [`TestClock::advance`].
    offset: AtomicI64,
}

impl TestClock {
    pub fn new(base: Millis) -> Self {
        TestClock {
            base,
            start: tokio::time::Instant::now(),
            offset: AtomicI64::new(0),
        }
    }

    /// Jump the clock forward without moving tokio's timers.
    pub fn advance(&self, ms: Millis) {
        self.offset.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now_ms(&self) -> Millis {
        self.base + self.start.elapsed().as_millis() as Millis + self.offset.load(Ordering::SeqCst)
    }
}
