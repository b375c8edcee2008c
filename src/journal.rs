//! Durable ingest (DESIGN.md §7): a routed webhook is written to the journal, one entry per
//! pair, and acknowledged only once the entry is on disk. Writes are grouped: every request
//! waiting while the disk syncs shares the next write and sync (group commit).
//!
//! The journal is an append-only log of segment files beside the sled database
//! (`<storage.path>/journal/<first seq>.wal`), not a sled tree: sled holds its global lock
//! through every flush, so a journal in sled made every webhook wait for sled's whole flush
//! machinery (`benches/ingest.rs` measured 3.6k events/s with p99 20 ms that way); one
//! `fdatasync` of a small append costs a fraction of a millisecond.
//!
//! Entries leave the journal when their actor has persisted the effect: the actor removes
//! `Tree::Journal` key `seq` in the batch that stores the effect, and [`crate::store::SledStore`]
//! turns that removal into [`JournalIndex::ack`]. A segment file is deleted only once every
//! entry in it is acknowledged *and* sled has been flushed after those acknowledgements, so a
//! crash at any point either finds an effect durable or replays its entry (replaying an applied
//! event changes nothing). Entries left at start are replayed in order.

use crate::ingest::{EventSink, SinkError};
use crate::store::SledStore;
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;
use watchstate_actors::event::{JournalEntry, Millis, WebhookEvent};
use watchstate_actors::store::{PairKey, Store};

/// Where journaled entries go once durable: the supervisor, in the service.
pub type Dispatch = Arc<dyn Fn(JournalEntry) -> Result<(), String> + Send + Sync>;

/// A segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// How long the writer waits for requests before it closes a fully applied active segment
/// (so that the tidier can delete it).
const IDLE: Duration = Duration::from_millis(200);
/// The tidier deletes applied segments (after flushing sled) this often.
const TIDY_EVERY: Duration = Duration::from_secs(1);
/// Record header: payload length and CRC-32 of the payload, both little-endian u32.
const HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot use the journal directory {path}: {source} (check storage.path and its permissions)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One entry waiting for its actor.
struct Pending {
    /// The entry as written (JSON of [`JournalEntry`]), served to actors that replay it.
    bytes: Arc<[u8]>,
    /// First seq of the segment file that holds it.
    segment: u64,
}

/// The entries not yet acknowledged and, per segment file, how many of them it holds. Shared
/// by the writer (adds), the store (acknowledgements from actors) and status.
#[derive(Default)]
pub struct JournalIndex {
    inner: Mutex<IndexInner>,
}

#[derive(Default)]
struct IndexInner {
    pending: BTreeMap<u64, Pending>,
    /// Segment first seq → entries of it not yet acknowledged.
    outstanding: HashMap<u64, usize>,
}

impl JournalIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, IndexInner> {
        // Every update leaves the maps consistent, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, seq: u64, segment: u64, bytes: Arc<[u8]>) {
        let mut inner = self.lock();
        if inner
            .pending
            .insert(seq, Pending { bytes, segment })
            .is_none()
        {
            *inner.outstanding.entry(segment).or_default() += 1;
        }
    }

    /// The entry's effect is persisted (in sled's memory; made durable by the flush that
    /// precedes any segment deletion).
    pub fn ack(&self, seq: u64) {
        let mut inner = self.lock();
        if let Some(p) = inner.pending.remove(&seq) {
            if let Some(n) = inner.outstanding.get_mut(&p.segment) {
                *n = n.saturating_sub(1);
            }
        }
    }

    pub fn get(&self, seq: u64) -> Option<Vec<u8>> {
        self.lock().pending.get(&seq).map(|p| p.bytes.to_vec())
    }

    /// Every pending entry as (key, JSON), in order.
    pub fn entries(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.lock()
            .pending
            .iter()
            .map(|(seq, p)| (JournalEntry::key(*seq).to_vec(), p.bytes.to_vec()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn outstanding(&self, segment: u64) -> usize {
        self.lock().outstanding.get(&segment).copied().unwrap_or(0)
    }

    fn forget_segment(&self, segment: u64) {
        self.lock().outstanding.remove(&segment);
    }
}

/// One accepted request on its way to the journal writer.
struct Append {
    request_id: String,
    received_at: Millis,
    event: WebhookEvent,
    pairs: Vec<PairKey>,
    /// Answered with the durable entries (one per pair), or why nothing was written.
    reply: oneshot::Sender<Result<Vec<JournalEntry>, String>>,
}

/// What the writer thread is asked to do.
enum Msg {
    Append(Box<Append>),
    /// Tidy up and stop; answered when done.
    Close(oneshot::Sender<()>),
}

/// The journal: the writer thread, the index of pending entries, where entries go.
pub struct Journal {
    index: Arc<JournalIndex>,
    dispatch: OnceLock<Dispatch>,
    /// Requests waiting to be written and synced by the writer thread.
    append_tx: mpsc::Sender<Msg>,
    /// Disk syncs done, for metrics (shows how well requests are grouped).
    flushes: Arc<AtomicU64>,
    /// Entries appended since start.
    appended: AtomicU64,
}

/// Closed segments, by first seq: the writer adds, the tidier deletes.
type Sealed = Arc<Mutex<Vec<u64>>>;

/// The segment files and the active one, owned by the writer thread.
struct Segments {
    dir: PathBuf,
    sealed: Sealed,
    /// First seq of the segment being appended to.
    active: u64,
    file: File,
    size: u64,
    /// The next sequence number to hand out.
    next_seq: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.wal"))
}

impl Segments {
    /// Read every segment in `dir`, register its entries as pending, and open a new active
    /// segment after them. A torn record at the end of a segment (a crash during a write that
    /// was never acknowledged) ends that segment.
    fn open(dir: &Path, index: &JournalIndex) -> Result<Segments, JournalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.strip_suffix(".wal")?.parse::<u64>().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut next_seq = firsts.last().copied().unwrap_or(1).max(1);
        let mut sealed = Vec::new();
        for first in firsts {
            let path = segment_path(dir, first);
            let mut data = Vec::new();
            File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(io_err(&path))?;
            let mut at = 0;
            let mut kept = 0;
            while let Some((payload, len)) = read_record(&data[at..]) {
                at += len;
                match serde_json::from_slice::<JournalEntry>(payload) {
                    Ok(entry) => {
                        next_seq = next_seq.max(entry.seq + 1);
                        index.add(entry.seq, first, Arc::from(payload));
                        kept += 1;
                    }
                    Err(e) => tracing::error!(
                        segment = %path.display(),
                        error = %e,
                        "skipping an unreadable journal entry"
                    ),
                }
            }
            if at < data.len() {
                tracing::warn!(
                    segment = %path.display(),
                    bytes = data.len() - at,
                    "ignoring a torn write at the end of a journal segment (never acknowledged)"
                );
            }
            if kept == 0 {
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            } else {
                sealed.push(first);
            }
        }
        let active = next_seq;
        let path = segment_path(dir, active);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(dir);
        Ok(Segments {
            dir: dir.to_path_buf(),
            sealed: Arc::new(Mutex::new(sealed)),
            active,
            file,
            size: 0,
            next_seq,
        })
    }

    /// Close the active segment and start a new one named after the next seq.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = segment_path(&self.dir, self.next_seq);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        sync_dir(&self.dir);
        self.sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.active);
        self.active = self.next_seq;
        self.file = file;
        self.size = 0;
        Ok(())
    }

    /// When nothing is pending at all, close the active segment so that the tidier can
    /// delete it too.
    fn seal_if_applied(&mut self, index: &JournalIndex) {
        if self.size > 0 && index.is_empty() {
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "cannot start a new journal segment");
            }
        }
    }
}

/// Delete the closed segments whose entries are all acknowledged, after flushing sled so that
/// the effects of those acknowledgements are durable. Runs on the tidier thread (and once at
/// close), never on the writer's: a sled flush can take long, and webhooks wait for the writer.
fn delete_applied(dir: &Path, sealed: &Sealed, index: &JournalIndex, store: &SledStore) {
    let lock = || sealed.lock().unwrap_or_else(|p| p.into_inner());
    let done: Vec<u64> = lock()
        .iter()
        .copied()
        .filter(|s| index.outstanding(*s) == 0)
        .collect();
    if done.is_empty() {
        return;
    }
    if let Err(e) = store.flush() {
        tracing::warn!(error = %e, "cannot flush the store; journal segments are kept");
        return;
    }
    for s in done {
        let path = segment_path(dir, s);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                lock().retain(|x| *x != s);
                index.forget_segment(s);
            }
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete a journal segment")
            }
        }
    }
}

/// The tidier thread: [`delete_applied`] every [`TIDY_EVERY`] until told to stop.
fn tidier(
    dir: PathBuf,
    sealed: Sealed,
    index: Arc<JournalIndex>,
    store: SledStore,
    stop: mpsc::Receiver<()>,
) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(TIDY_EVERY) {
        delete_applied(&dir, &sealed, &index, &store);
    }
}

/// Make a file creation durable (the directory entry).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// One record: `len` (u32 LE), CRC-32 of the payload (u32 LE), payload.
fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The next record's payload and its whole length, or `None` at the end or at a torn or
/// damaged record.
fn read_record(data: &[u8]) -> Option<(&[u8], usize)> {
    if data.len() < HEADER {
        return None;
    }
    let len = u32::from_le_bytes(data[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(data[4..8].try_into().ok()?);
    let payload = data.get(HEADER..HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some((payload, HEADER + len))
}

/// The writer thread: take every request waiting, append them with one write, make them
/// durable with one `fdatasync`, answer them all (group commit). When idle, delete the
/// segments whose entries are all applied.
fn writer(
    mut segments: Segments,
    index: Arc<JournalIndex>,
    store: SledStore,
    rx: mpsc::Receiver<Msg>,
    flushes: Arc<AtomicU64>,
) {
    let (stop_tidier, stop) = mpsc::channel::<()>();
    let tidier = {
        let (dir, sealed, index, store) = (
            segments.dir.clone(),
            segments.sealed.clone(),
            index.clone(),
            store.clone(),
        );
        std::thread::Builder::new()
            .name("journal-tidier".into())
            .spawn(move || tidier(dir, sealed, index, store, stop))
    };
    if let Err(e) = &tidier {
        tracing::error!(error = %e, "cannot start the journal tidier; applied segments are deleted at stop");
    }
    // Stop the tidier, then tidy once more: a clean stop leaves no journal to replay.
    let finish = |segments: &mut Segments| {
        let _ = stop_tidier.send(());
        if let Ok(t) = tidier {
            let _ = t.join();
        }
        segments.seal_if_applied(&index);
        delete_applied(&segments.dir, &segments.sealed, &index, &store);
    };
    let mut buf = Vec::with_capacity(64 * 1024);
    loop {
        let first = match rx.recv_timeout(IDLE) {
            Ok(Msg::Append(a)) => *a,
            Ok(Msg::Close(done)) => {
                finish(&mut segments);
                let _ = done.send(());
                return;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                segments.seal_if_applied(&index);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        let mut close = None;
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::Append(a) => group.push(*a),
                Msg::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
        }
        buf.clear();
        // Per request: its entries and their encoded bytes.
        type Written = (Vec<JournalEntry>, Vec<Arc<[u8]>>);
        let mut written: Vec<Written> = Vec::with_capacity(group.len());
        let mut seq = segments.next_seq;
        for a in &group {
            let mut entries = Vec::with_capacity(a.pairs.len());
            let mut bytes = Vec::with_capacity(a.pairs.len());
            for pair in &a.pairs {
                let entry = JournalEntry {
                    seq,
                    pair: pair.clone(),
                    request_id: a.request_id.clone(),
                    received_at: a.received_at,
                    event: a.event.clone(),
                };
                seq += 1;
                let json: Arc<[u8]> =
                    Arc::from(serde_json::to_vec(&entry).expect("journal entries serialise"));
                encode_record(&json, &mut buf);
                entries.push(entry);
                bytes.push(json);
            }
            written.push((entries, bytes));
        }
        let durable = segments
            .file
            .write_all(&buf)
            .and_then(|()| segments.file.sync_data());
        flushes.fetch_add(1, Ordering::Relaxed);
        match durable {
            Ok(()) => {
                segments.next_seq = seq;
                segments.size += buf.len() as u64;
                for (a, (entries, bytes)) in group.into_iter().zip(written) {
                    for (e, b) in entries.iter().zip(bytes) {
                        index.add(e.seq, segments.active, b);
                    }
                    let _ = a.reply.send(Ok(entries));
                }
            }
            Err(e) => {
                // Nothing of this group is acknowledged. A partial write is a torn record at
                // the end of the segment; start a new segment so later writes do not follow it.
                let message = format!("writing the journal failed: {e}");
                tracing::error!("{message}");
                segments.next_seq = seq;
                if let Err(e) = segments.rotate() {
                    tracing::error!(error = %e, "cannot start a new journal segment");
                }
                for a in group {
                    let _ = a.reply.send(Err(message.clone()));
                }
            }
        }
        if segments.size >= SEGMENT_BYTES {
            if let Err(e) = segments.rotate() {
                tracing::error!(error = %e, "cannot start a new journal segment");
            }
        }
        if let Some(done) = close {
            finish(&mut segments);
            let _ = done.send(());
            return;
        }
    }
    finish(&mut segments);
}

impl Journal {
    /// Open the journal under `<storage.path>/journal`, read what the previous run left,
    /// attach the index to `store` (so actors' removals of journal keys acknowledge entries),
    /// and start the writer thread. Entries are dispatched once [`Journal::set_dispatch`] is
    /// called; [`Journal::replay`] hands over the ones left from the previous run.
    pub fn open(store: SledStore) -> Result<Journal, JournalError> {
        let index = Arc::new(JournalIndex::default());
        let dir = store.path().join("journal");
        let segments = Segments::open(&dir, &index)?;
        store.attach_journal(index.clone());
        let (append_tx, rx) = mpsc::channel::<Msg>();
        let flushes = Arc::new(AtomicU64::new(0));
        let writer_index = index.clone();
        let counter = flushes.clone();
        std::thread::Builder::new()
            .name("journal-writer".into())
            .spawn(move || writer(segments, writer_index, store, rx, counter))
            .map_err(io_err(&dir))?;
        Ok(Journal {
            index,
            dispatch: OnceLock::new(),
            append_tx,
            flushes,
            appended: AtomicU64::new(0),
        })
    }

    /// Where durable entries go (the supervisor). Set once, before serving.
    pub fn set_dispatch(&self, dispatch: Dispatch) {
        let _ = self.dispatch.set(dispatch);
    }

    fn dispatch(&self, entry: JournalEntry) -> Result<(), String> {
        match self.dispatch.get() {
            Some(d) => d(entry),
            None => Err("no dispatcher: the actors are not running".into()),
        }
    }

    /// Entries still waiting for their actor, oldest first.
    pub fn pending(&self) -> Vec<JournalEntry> {
        self.index
            .entries()
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_slice::<JournalEntry>(&v).ok())
            .collect()
    }

    /// Hand every entry left from the previous run to its actor, in order. Returns how many.
    pub fn replay(&self) -> Result<usize, SinkError> {
        let entries = self.pending();
        let n = entries.len();
        for e in entries {
            self.dispatch(e).map_err(SinkError::Unavailable)?;
        }
        Ok(n)
    }

    pub fn depth(&self) -> usize {
        self.index.len()
    }

    /// Stop the writer after a last tidy-up (a clean stop leaves nothing to replay when every
    /// entry was applied). Later appends are refused.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.append_tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
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
            .send(Msg::Append(Box::new(Append {
                request_id: request_id.to_string(),
                received_at,
                event: event.clone(),
                pairs: pairs.to_vec(),
                reply,
            })))
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
            if let Err(err) = self.dispatch(e) {
                tracing::error!(seq, error = %err, "journaled event not dispatched; it will be replayed at the next start");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use watchstate_actors::event::{EventKind, Sender};
    use watchstate_actors::store::{Batch, Tree};

    fn event() -> WebhookEvent {
        WebhookEvent {
            sender: Sender::Plex,
            backend_id: "s".into(),
            user_id: Some("1".into()),
            user_name: None,
            event: EventKind::Scrobble,
            raw_event: "media.scrobble".into(),
            generic: false,
            item_type: None,
            item_id: Some("42".into()),
            title: None,
            series_title: None,
            season: None,
            episode: None,
            year: None,
            played: Some(true),
            position_ms: None,
            duration_ms: None,
            external_ids: Default::default(),
            series_external_ids: Default::default(),
            library_id: None,
        }
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("journal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn records_round_trip_and_torn_records_end_the_log() {
        let mut buf = Vec::new();
        encode_record(b"one", &mut buf);
        encode_record(b"two", &mut buf);
        let (p, n) = read_record(&buf).unwrap();
        assert_eq!(p, b"one");
        assert_eq!(read_record(&buf[n..]).unwrap().0, b"two");
        // Torn: header only, or payload cut, or payload damaged.
        assert!(read_record(&buf[n..n + 6]).is_none());
        assert!(read_record(&buf[n..buf.len() - 1]).is_none());
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(read_record(&bad[n..]).is_none());
    }

    #[tokio::test]
    async fn entries_survive_a_restart_until_acknowledged_and_seqs_keep_growing() {
        let dir = tempfile::tempdir().unwrap();
        let pair = PairKey::new("alice", "plex");
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            let store = SledStore::open(dir.path(), 1 << 20).unwrap();
            let j = Journal::open(store.clone()).unwrap();
            let s = seen.clone();
            j.set_dispatch(Arc::new(move |e: JournalEntry| {
                s.lock().unwrap().push(e.seq);
                Ok(())
            }));
            j.accept("r1", 1, &event(), std::slice::from_ref(&pair))
                .await
                .unwrap();
            j.accept(
                "r2",
                2,
                &event(),
                &[pair.clone(), PairKey::new("alice", "emby")],
            )
            .await
            .unwrap();
            assert_eq!(j.depth(), 3);
            // The actor of the first entry persists its effect and removes the key.
            let first = seen.lock().unwrap()[0];
            let mut b = Batch::new();
            b.put(Tree::Pairs, b"alice/plex/x".to_vec(), b"state".to_vec());
            b.remove(Tree::Journal, JournalEntry::key(first).to_vec());
            store.apply(b).unwrap();
            // The store applies batches in the background; a flush waits for them.
            store.flush().unwrap();
            assert_eq!(j.depth(), 2);
            assert_eq!(store.scan_prefix(Tree::Journal, b"").unwrap().len(), 2);
            // A stop with entries pending keeps every segment that holds one (the
            // acknowledged entry shares its segment with pending ones).
            j.close().await;
        }
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open(store.clone()).unwrap();
        // All three are still there: the acknowledged one too, because its segment holds
        // pending ones; replaying it is harmless (an applied event changes nothing).
        let pending = j.pending();
        assert_eq!(pending.len(), 3);
        let max = pending.iter().map(|e| e.seq).max().unwrap();
        let replayed = Arc::new(Mutex::new(Vec::new()));
        let r = replayed.clone();
        j.set_dispatch(Arc::new(move |e: JournalEntry| {
            r.lock().unwrap().push(e);
            Ok(())
        }));
        assert_eq!(j.replay().unwrap(), 3);
        let seqs: Vec<u64> = replayed.lock().unwrap().iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
        assert_eq!(replayed.lock().unwrap()[2].request_id, "r2");
        j.accept("r3", 3, &event(), std::slice::from_ref(&pair))
            .await
            .unwrap();
        let newest = replayed.lock().unwrap().last().unwrap().seq;
        assert!(newest > max, "seqs grow across restarts");
    }

    #[tokio::test]
    async fn acknowledged_segments_are_deleted_once_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open(store.clone()).unwrap();
        let acks = store.clone();
        j.set_dispatch(Arc::new(move |e: JournalEntry| {
            let mut b = Batch::new();
            b.remove(Tree::Journal, JournalEntry::key(e.seq).to_vec());
            acks.apply(b).map_err(|e| e.to_string())
        }));
        for i in 0..20 {
            j.accept(&format!("r{i}"), i, &event(), &[PairKey::new("u", "b")])
                .await
                .unwrap();
        }
        store.flush().unwrap();
        assert_eq!(j.depth(), 0);
        let size = |d: &Path| -> u64 {
            segment_files(d)
                .iter()
                .map(|p| std::fs::metadata(p).unwrap().len())
                .sum()
        };
        assert!(size(dir.path()) > 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while size(dir.path()) > 0 {
            assert!(
                Instant::now() < deadline,
                "segments were not tidied: {:?}",
                segment_files(dir.path())
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A restart finds nothing to replay.
        j.close().await;
        let j2 = Journal::open(store).unwrap();
        assert_eq!(j2.depth(), 0);
    }

    /// A disk that fills up while the service runs: the next segment is `/dev/full`, whose
    /// every write fails with ENOSPC. The request in that group is refused (the HTTP layer
    /// answers 503), nothing of it is dispatched, and the journal goes on in a new segment.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_full_disk_refuses_the_group_and_the_journal_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open(store.clone()).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (acks, s) = (store.clone(), seen.clone());
        j.set_dispatch(Arc::new(move |e: JournalEntry| {
            s.lock().unwrap().push(e.request_id.clone());
            let mut b = Batch::new();
            b.remove(Tree::Journal, JournalEntry::key(e.seq).to_vec());
            acks.apply(b).map_err(|e| e.to_string())
        }));
        // Once r1 is applied and the writer idles, it starts segment 2: make that the full disk
        // (before r1, so that the writer cannot have started segment 2 already).
        let journal_dir = dir.path().join("journal");
        std::os::unix::fs::symlink("/dev/full", segment_path(&journal_dir, 2)).unwrap();
        let pair = [PairKey::new("u", "b")];
        j.accept("r1", 1, &event(), &pair).await.unwrap();
        let first = segment_path(&journal_dir, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while first.exists() {
            assert!(
                Instant::now() < deadline,
                "segment 1 was never closed and deleted"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let err = j.accept("r2", 2, &event(), &pair).await.unwrap_err();
        let SinkError::Unavailable(message) = &err;
        assert!(message.contains("No space left on device"), "{message}");
        j.accept("r3", 3, &event(), &pair).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec!["r1", "r3"]);
        assert_eq!(j.appended_count(), 2);
        // The full segment held nothing and goes; r3's segment is a real file.
        let deadline = Instant::now() + Duration::from_secs(10);
        while segment_path(&journal_dir, 2).symlink_metadata().is_ok() {
            assert!(
                Instant::now() < deadline,
                "the failed segment was never removed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        j.close().await;
        let j2 = Journal::open(store).unwrap();
        assert_eq!(j2.depth(), 0);
    }

    #[tokio::test]
    async fn a_torn_tail_is_ignored_and_earlier_entries_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledStore::open(dir.path(), 1 << 20).unwrap();
            let j = Journal::open(store).unwrap();
            j.accept("r1", 1, &event(), &[PairKey::new("u", "b")])
                .await
                .unwrap();
            j.close().await;
        }
        let files = segment_files(dir.path());
        let with_data = files
            .iter()
            .find(|p| std::fs::metadata(p).unwrap().len() > 0)
            .unwrap();
        let mut f = OpenOptions::new().append(true).open(with_data).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open(store).unwrap();
        assert_eq!(j.depth(), 1);
        assert_eq!(j.pending()[0].request_id, "r1");
    }
}
