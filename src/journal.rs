//! Durable ingest (DESIGN.md §7): a routed webhook is written to the sled journal, one entry
//! per pair, and acknowledged only once a flush has made it durable. Flushes are grouped:
//! every request waiting while a flush runs shares the next one (group commit). Entries leave
//! the journal when their actor has persisted the effect (the actor removes them in the same
//! batch); entries left at start are replayed in order.

use crate::ingest::{EventSink, SinkError};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use watchstate_actors::event::{JournalEntry, Millis, WebhookEvent};
use watchstate_actors::store::{Batch, PairKey, Store, Tree};

use crate::store::SledStore;

/// Where journaled entries go once durable: the supervisor, in the service.
pub type Dispatch = Arc<dyn Fn(JournalEntry) -> Result<(), String> + Send + Sync>;

type FlushWaiter = oneshot::Sender<Result<(), String>>;

/// The journal and its flusher task.
pub struct Journal {
    store: SledStore,
    dispatch: Dispatch,
    /// Requests whose entries are written and that wait for the next flush.
    flush_tx: mpsc::UnboundedSender<FlushWaiter>,
    /// Number of flushes done, for metrics (shows how well requests are grouped).
    flushes: Arc<AtomicU64>,
    /// Entries appended since start.
    appended: AtomicU64,
}

impl Journal {
    /// Start the flusher task. Needs a tokio runtime.
    pub fn start(store: SledStore, dispatch: Dispatch) -> Journal {
        let (flush_tx, mut rx) = mpsc::unbounded_channel::<FlushWaiter>();
        let flushes = Arc::new(AtomicU64::new(0));
        let flusher_store = store.clone();
        let counter = flushes.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let result = flusher_store.flush_async().await.map_err(|e| e.to_string());
                counter.fetch_add(1, Ordering::Relaxed);
                for w in waiters {
                    let _ = w.send(result.clone());
                }
            }
        });
        Journal {
            store,
            dispatch,
            flush_tx,
            flushes,
            appended: AtomicU64::new(0),
        }
    }

    /// Entries still waiting for their actor, oldest first.
    pub fn pending(&self) -> Result<Vec<JournalEntry>, SinkError> {
        let rows = self
            .store
            .scan_prefix(Tree::Journal, b"")
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let mut out = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            match serde_json::from_slice::<JournalEntry>(&value) {
                Ok(e) => out.push(e),
                Err(e) => {
                    // An entry we cannot read would block the journal forever: report and drop it.
                    tracing::error!(key = ?key, error = %e, "dropping an unreadable journal entry");
                    let mut b = Batch::new();
                    b.remove(Tree::Journal, key);
                    let _ = self.store.apply(b);
                }
            }
        }
        Ok(out)
    }

    /// Hand every entry left from the previous run to its actor, in order. Returns how many.
    pub fn replay(&self) -> Result<usize, SinkError> {
        let entries = self.pending()?;
        let n = entries.len();
        for e in entries {
            (self.dispatch)(e).map_err(SinkError::Unavailable)?;
        }
        Ok(n)
    }

    pub fn depth(&self) -> usize {
        self.store.journal_len()
    }

    pub fn flush_count(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    pub fn appended_count(&self) -> u64 {
        self.appended.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl EventSink for Journal {
    async fn accept(
        &self,
        request_id: &str,
        received_at: Millis,
        event: &WebhookEvent,
        pairs: &[PairKey],
    ) -> Result<(), SinkError> {
        let mut entries = Vec::with_capacity(pairs.len());
        let mut batch = Batch::new();
        for pair in pairs {
            let seq = self
                .store
                .next_id()
                .map_err(|e| SinkError::Unavailable(e.to_string()))?;
            let entry = JournalEntry {
                seq,
                pair: pair.clone(),
                request_id: request_id.to_string(),
                received_at,
                event: event.clone(),
            };
            let bytes = serde_json::to_vec(&entry).expect("journal entries serialise");
            batch.put(Tree::Journal, JournalEntry::key(seq).to_vec(), bytes);
            entries.push(entry);
        }
        // One atomic batch: either every pair's entry is written or none is.
        self.store
            .apply(batch)
            .map_err(|e| SinkError::Unavailable(e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.flush_tx
            .send(tx)
            .map_err(|_| SinkError::Unavailable("the journal flusher stopped".into()))?;
        rx.await
            .map_err(|_| SinkError::Unavailable("the journal flusher stopped".into()))?
            .map_err(SinkError::Unavailable)?;
        self.appended
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        // Durable now: from here on the event survives anything, so a dispatch failure is
        // logged, not reported (the entry is replayed at the next start).
        for e in entries {
            let seq = e.seq;
            if let Err(err) = (self.dispatch)(e) {
                tracing::error!(seq, error = %err, "journaled event not dispatched; it will be replayed at the next start");
            }
        }
        Ok(())
    }
}
