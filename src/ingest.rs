//! Where the webhook handler hands routed events: the [`EventSink`]. The service uses the
//! durable [`crate::journal::Journal`]; tests and benchmarks may use [`MemorySink`].

use async_trait::async_trait;
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
