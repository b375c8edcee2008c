//! Durable ingest (DESIGN.md §7): a routed webhook is written to the sled journal, one entry
//! per pair, and acknowledged only once a flush has made it durable. Flushes are grouped:
//! every request waiting while a flush runs shares the next one (group commit). Entries leave
//! the journal when their actor has persisted the effect (the actor removes them in the same
//! batch); entries left at start are replayed in order.

use crate::ingest::{EventSink, SinkError};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::oneshot;
use watchstate_actors::event::{JournalEntry, Millis, WebhookEvent};
use watchstate_actors::store::{Batch, PairKey, Store, Tree};

use crate::store::SledStore;

/// Where journaled entries go once durable: the supervisor, in the service.
pub type Dispatch = Arc<dyn Fn(JournalEntry) -> Result<(), String> + Send + Sync>;

/// One accepted request on its way to the journal writer.
struct Append {
    request_id: String,
    received_at: Millis,
    event: WebhookEvent,
    pairs: Vec<PairKey>,
    /// Answered with the durable entries (one per pair), or why nothing was written.
    reply: oneshot::Sender<Result<Vec<JournalEntry>, String>>,
}

/// The journal and its writer thread.
pub struct Journal {
    store: SledStore,
    dispatch: Dispatch,
    /// Requests waiting to be appended and flushed by the writer thread.
    append_tx: mpsc::Sender<Append>,
    /// Number of flushes done, for metrics (shows how well requests are grouped).
    flushes: Arc<AtomicU64>,
    /// Entries appended since start.
    appended: AtomicU64,
}

/// The writer thread: take every request waiting, append them in one atomic batch, make
/// them durable with one flush, answer them all (group commit).
///
/// It is a plain thread, not a tokio task, because sled's batch writes and flushes block:
/// a sled flush holds sled's global concurrency lock for the whole write and fsync, and a
/// batch waits for it. Done on the runtime's worker threads, that wait stalled every HTTP
/// request in the process for each fsync (measured by `benches/ingest.rs`); here only this
/// thread waits, and the requests that arrive meanwhile form the next group.
fn writer(store: SledStore, rx: mpsc::Receiver<Append>, flushes: Arc<AtomicU64>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while let Ok(a) = rx.try_recv() {
            group.push(a);
        }
        let mut batch = Batch::new();
        let mut written: Vec<Result<Vec<JournalEntry>, String>> = Vec::with_capacity(group.len());
        for a in &group {
            let mut entries = Vec::with_capacity(a.pairs.len());
            let mut failed = None;
            for pair in &a.pairs {
                match store.next_id() {
                    Ok(seq) => entries.push(JournalEntry {
                        seq,
                        pair: pair.clone(),
                        request_id: a.request_id.clone(),
                        received_at: a.received_at,
                        event: a.event.clone(),
                    }),
                    Err(e) => {
                        failed = Some(e.to_string());
                        break;
                    }
                }
            }
            match failed {
                Some(e) => written.push(Err(e)),
                None => {
                    for entry in &entries {
                        let bytes = serde_json::to_vec(entry).expect("journal entries serialise");
                        batch.put(Tree::Journal, JournalEntry::key(entry.seq).to_vec(), bytes);
                    }
                    written.push(Ok(entries));
                }
            }
        }
        // One atomic batch: every entry of the group is written, or none is.
        let durable = store
            .apply(batch)
            .and_then(|()| store.flush())
            .map_err(|e| e.to_string());
        flushes.fetch_add(1, Ordering::Relaxed);
        for (a, w) in group.into_iter().zip(written) {
            let _ = a.reply.send(match &durable {
                Ok(()) => w,
                Err(e) => Err(e.clone()),
            });
        }
    }
}

impl Journal {
    /// Start the writer thread. It stops when the journal is dropped.
    pub fn start(store: SledStore, dispatch: Dispatch) -> Journal {
        let (append_tx, rx) = mpsc::channel::<Append>();
        let flushes = Arc::new(AtomicU64::new(0));
        let writer_store = store.clone();
        let counter = flushes.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer(writer_store, rx, counter))
            .expect("cannot start the journal writer thread");
        Journal {
            store,
            dispatch,
            append_tx,
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
        let (reply, rx) = oneshot::channel();
        let stopped = || SinkError::Unavailable("the journal writer stopped".into());
        self.append_tx
            .send(Append {
                request_id: request_id.to_string(),
                received_at,
                event: event.clone(),
                pairs: pairs.to_vec(),
                reply,
            })
            .map_err(|_| stopped())?;
        let entries = rx
            .await
            .map_err(|_| stopped())?
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
