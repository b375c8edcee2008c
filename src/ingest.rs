//! Where the webhook handler hands routed events: the [`EventSink`]. The service uses the
//! durable [`crate::journal::Journal`]; tests and benchmarks may use [`MemorySink`].

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use watchstate_actors::event::{Millis, WebhookEvent};
use watchstate_actors::store::PairKey;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SinkError {
    /// Nothing was accepted; the sender should retry. Answered with 503.
    #[error("the event journal cannot be written: {0}")]
    Unavailable(String),
}

/// Accepts a routed event for the given pairs. Returning `Ok` means the event is durable and
/// will be applied: the webhook is then answered 202.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn accept(
        &self,
        request_id: &str,
        received_at: Millis,
        event: &WebhookEvent,
        pairs: &[PairKey],
    ) -> Result<(), SinkError>;

    /// Where the handler counts webhooks on their way to [`EventSink::accept`], if the sink
    /// wants to know (the journal waits for them to share its disk sync).
    fn arrivals(&self) -> Option<&Arrivals> {
        None
    }
}

/// Webhooks whose body is in and which are being decoded and routed: the ones that may
/// reach the sink in the next few microseconds. Two counters, so that a reader can wait for
/// the ones that had entered at some point to leave, without waiting for later ones.
#[derive(Debug, Default)]
pub struct Arrivals {
    entered: AtomicU64,
    left: AtomicU64,
}

impl Arrivals {
    /// Count a webhook in; it is counted out when the guard is dropped.
    pub fn enter(&self) -> Arriving<'_> {
        self.entered.fetch_add(1, Ordering::AcqRel);
        Arriving(self)
    }

    /// Webhooks counted in so far.
    pub fn entered(&self) -> u64 {
        self.entered.load(Ordering::Acquire)
    }

    /// Webhooks counted out so far.
    pub fn left(&self) -> u64 {
        self.left.load(Ordering::Acquire)
    }
}

/// One webhook counted in [`Arrivals`] until dropped.
#[must_use = "dropping it counts the webhook out at once"]
pub struct Arriving<'a>(&'a Arrivals);

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0.left.fetch_add(1, Ordering::AcqRel);
    }
}

/// One event a [`MemorySink`] accepted.
#[derive(Debug, Clone, PartialEq)]
pub struct AcceptedEvent {
    pub request_id: String,
    pub received_at: Millis,
    pub event: WebhookEvent,
    pub pairs: Vec<PairKey>,
}

/// Keeps accepted events in memory; `fail` makes it refuse everything (to test the 503).
#[derive(Debug, Default)]
pub struct MemorySink {
    pub accepted: Mutex<Vec<AcceptedEvent>>,
    pub fail: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl EventSink for MemorySink {
    async fn accept(
        &self,
        request_id: &str,
        received_at: Millis,
        event: &WebhookEvent,
        pairs: &[PairKey],
    ) -> Result<(), SinkError> {
        if self.fail.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(SinkError::Unavailable("memory sink set to fail".into()));
        }
        self.accepted.lock().unwrap().push(AcceptedEvent {
            request_id: request_id.to_string(),
            received_at,
            event: event.clone(),
            pairs: pairs.to_vec(),
        });
        Ok(())
    }
}
