//! Write-behind for the actors' batches. sled 0.34 makes every `apply_batch` take its global
//! write lock, seal its current IO buffer and hand that buffer to a thread of its own pool,
//! so one small batch per event cost more than everything else an event does
//! (`benches/ingest.rs`). Batches are therefore queued and applied by one writer thread that
//! merges everything queued into one sled batch: under load, many events share one write.
//!
//! Nothing about durability changes. sled only makes writes durable at its flushes, and the
//! journal keeps every entry until its effect is applied *and* flushed: the writer
//! acknowledges journal entries only after their batch is applied, and [`Writer::settle`]
//! (called by every read and by `flush`) waits for everything queued before it, so a reader
//! sees its own writes and a flush covers every batch applied before it was asked for.

use crate::journal::JournalIndex;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use watchstate_actors::store::{Op, StoreError, Tree};

/// Past this many queued batches, `apply` waits for the writer (back-pressure).
const MAX_QUEUED: usize = 8192;
/// At most one sled write this often while batches keep coming, so that a write carries
/// many of them; a reader or a flush that waits for the queue cuts the pause short.
const PACE: Duration = Duration::from_millis(5);

/// One batch waiting: its sled operations and the journal entries it acknowledges.
struct Queued {
    ops: Vec<Op>,
    acks: Vec<u64>,
}

#[derive(Default)]
struct State {
    queue: Vec<Queued>,
    /// Batches queued since start, and batches the writer is done with (applied or failed).
    queued: u64,
    done: u64,
    /// The first failure: sled fails for good after an IO error, so every later write and
    /// read reports it (the actors fail and the journal keeps what they had not applied).
    error: Option<String>,
    /// The writer is waiting for work (worth a wake-up).
    idle: bool,
    /// Someone waits for the queue to be applied: no pause before the next write.
    urgent: bool,
    stop: bool,
    /// sled writes made, for status: `queued / writes` batches share one write.
    writes: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when there is work (or a stop) for the writer.
    work: Condvar,
    /// Signalled when the writer has finished a group.
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sled trees the writer applies to.
#[derive(Clone)]
pub(super) struct Trees {
    pub journal: sled::Tree,
    pub pairs: sled::Tree,
    pub meta: sled::Tree,
}

impl Trees {
    fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Journal => &self.journal,
            Tree::Pairs => &self.pairs,
            Tree::Meta => &self.meta,
        }
    }

    /// Apply operations at once: one tree's batch when they touch one tree, else a
    /// transaction over all trees. Later operations on a key win, as applied in order.
    fn apply(&self, ops: &[Op]) -> Result<(), String> {
        let Some(first) = ops.first().map(|op| op.tree) else {
            return Ok(());
        };
        if ops.iter().all(|op| op.tree == first) {
            let mut b = sled::Batch::default();
            for op in ops {
                match &op.value {
                    Some(v) => b.insert(op.key.as_slice(), v.as_slice()),
                    None => b.remove(op.key.as_slice()),
                }
            }
            return self.tree(first).apply_batch(b).map_err(|e| e.to_string());
        }
        use sled::Transactional;
        (&self.journal, &self.pairs, &self.meta)
            .transaction(|(j, p, m)| {
                for op in ops {
                    let t = match op.tree {
                        Tree::Journal => j,
                        Tree::Pairs => p,
                        Tree::Meta => m,
                    };
                    match &op.value {
                        Some(v) => {
                            t.insert(op.key.as_slice(), v.as_slice())?;
                        }
                        None => {
                            t.remove(op.key.as_slice())?;
                        }
                    }
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| format!("{e:?}"))
    }
}

/// The writer thread and its queue. Dropping the last handle applies what is queued and
/// stops the thread.
pub(super) struct Writer {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub fn start(
        trees: Trees,
        journal: Arc<OnceLock<Arc<JournalIndex>>>,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            work: Condvar::new(),
            finished: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run(&s, &trees, &journal))?;
        Ok(Writer {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queue a batch; it is applied shortly, in order with every other batch. Fails only when
    /// an earlier write failed (nothing is queued then).
    pub fn push(&self, ops: Vec<Op>, acks: Vec<u64>) -> Result<(), StoreError> {
        let mut st = self.shared.lock();
        while st.queue.len() >= MAX_QUEUED && st.error.is_none() {
            st = self
                .shared
                .finished
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        if let Some(e) = &st.error {
            return Err(StoreError(e.clone()));
        }
        st.queue.push(Queued { ops, acks });
        st.queued += 1;
        if st.idle {
            st.idle = false;
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Wait until every batch queued before this call is applied.
    pub fn settle(&self) -> Result<(), StoreError> {
        let mut st = self.shared.lock();
        let target = st.queued;
        if st.done < target {
            st.urgent = true;
            self.shared.work.notify_one();
        }
        while st.done < target {
            st = self
                .shared
                .finished
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
        match &st.error {
            Some(e) => Err(StoreError(e.clone())),
            None => Ok(()),
        }
    }

    /// (batches queued since start, sled writes made for them, batches waiting now)
    pub fn stats(&self) -> (u64, u64, usize) {
        let st = self.shared.lock();
        (st.queued, st.writes, st.queue.len())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stop = true;
            self.shared.work.notify_one();
        }
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, trees: &Trees, journal: &OnceLock<Arc<JournalIndex>>) {
    let mut ops: Vec<Op> = Vec::new();
    let mut last_write: Option<Instant> = None;
    loop {
        let (group, upto) = {
            let mut st = shared.lock();
            while st.queue.is_empty() && !st.stop {
                st.idle = true;
                st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.idle = false;
            // Batches keep coming: let more of them join this write.
            if let Some(last) = last_write {
                while !st.urgent && !st.stop && st.queue.len() < MAX_QUEUED / 2 {
                    let Some(left) = PACE.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
                    else {
                        break;
                    };
                    st = shared
                        .work
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
            st.urgent = false;
            if st.queue.is_empty() {
                return;
            }
            (std::mem::take(&mut st.queue), st.queued)
        };
        ops.clear();
        let mut acks = Vec::new();
        for q in group {
            ops.extend(q.ops);
            acks.extend(q.acks);
        }
        // A panic inside sled must not leave readers waiting for a writer that is gone.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| trees.apply(&ops)))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "sled panicked: {}",
                    super::panic_message(panic.as_ref())
                ))
            });
        last_write = Some(Instant::now());
        if result.is_ok() {
            if let Some(j) = journal.get() {
                for seq in acks {
                    j.ack(seq);
                }
            }
        }
        let mut st = shared.lock();
        st.done = upto;
        st.writes += 1;
        if let Err(e) = result {
            tracing::error!(error = %e, "writing to the database failed; the journal keeps the events not applied");
            st.error
                .get_or_insert(format!("writing to the database failed: {e}"));
        }
        shared.finished.notify_all();
    }
}
