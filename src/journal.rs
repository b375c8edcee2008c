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
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::oneshot;
use watchstate_actors::event::{JournalEntry, Millis, WebhookEvent};
use watchstate_actors::store::{PairKey, Store};

/// Where journaled entries go once durable: the supervisor, in the service.
pub type Dispatch = Arc<dyn Fn(JournalEntry) -> Result<(), String> + Send + Sync>;

/// A segment is closed and a new one started before a write would take it past this size.
/// Under sustained load segments are preallocated to this size (see [`SPARE`]).
const SEGMENT_BYTES: u64 = 32 * 1024 * 1024;
/// The next segment, zero-filled (or a fully applied segment, recycled) and synced ahead of
/// time. Writing over allocated blocks that are already part of the file lets `fdatasync`
/// write the data alone: an append also has to write the inode (the new size), a second
/// synchronous write per group that measured a third of each sync.
const SPARE: &str = "spare.ready";
/// Where a spare is zero-filled before it is renamed to [`SPARE`].
const SPARE_PREP: &str = "spare.prep";
/// How long the writer waits for requests before it closes a fully applied active segment
/// (so that the tidier can delete it).
const IDLE: Duration = Duration::from_millis(200);
/// The tidier deletes applied segments (after flushing sled) this often.
const TIDY_EVERY: Duration = Duration::from_secs(1);
/// Sustained writes (this much in one segment) have the tidier prepare a spare. A segment
/// that grows by appending asks early (1 MiB) and is left as soon as the spare is ready; a
/// preallocated one asks at a quarter, when the segment before it has long been applied and
/// can be recycled instead of zero-filling a new file (32 MiB of writes that slow the
/// journal's syncs). A trickle of webhooks never costs a preallocated segment.
fn spare_threshold(segment_bytes: u64, preallocated: bool) -> u64 {
    if preallocated {
        segment_bytes / 4
    } else {
        (segment_bytes / 4).min(1 << 20)
    }
}

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
        self.add_all(segment, [(seq, bytes)]);
    }

    /// Entries of one segment, under one lock.
    fn add_all(&self, segment: u64, entries: impl IntoIterator<Item = (u64, Arc<[u8]>)>) {
        let mut inner = self.lock();
        let mut added = 0;
        for (seq, bytes) in entries {
            if inner
                .pending
                .insert(seq, Pending { bytes, segment })
                .is_none()
            {
                added += 1;
            }
        }
        if added > 0 {
            *inner.outstanding.entry(segment).or_default() += added;
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

/// One accepted request on its way to the journal writer. The event is serialised by the
/// request's task, so the single writer thread only copies bytes.
struct Append {
    request_id: String,
    received_at: Millis,
    /// JSON of the [`WebhookEvent`].
    event_json: Vec<u8>,
    pairs: Vec<PairKey>,
    /// Answered with the seq of the first entry (the request's entries have consecutive seqs,
    /// one per pair, in order), or why nothing was written.
    reply: oneshot::Sender<Result<u64, String>>,
}

/// What the writer thread is asked to do.
enum Msg {
    Append(Box<Append>),
    /// Tidy up and stop; answered when done.
    Close(oneshot::Sender<()>),
}

/// What the tidier thread is asked to do besides its periodic tidy-up.
enum TidierMsg {
    /// The active segment is filling up: have a spare ready for the next one.
    Prepare,
    Stop,
}

/// The JSON of a [`JournalEntry`], composed from the event's JSON (serialised once per
/// request) without serialising the event again for every pair.
fn entry_json(
    seq: u64,
    pair: &PairKey,
    request_id: &str,
    received_at: Millis,
    event_json: &[u8],
    out: &mut Vec<u8>,
) {
    let text = |out: &mut Vec<u8>, s: &str| {
        serde_json::to_writer(out, s).expect("a string serialises to JSON")
    };
    out.extend_from_slice(b"{\"seq\":");
    write!(out, "{seq}").expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"pair\":{\"user\":");
    text(out, &pair.user);
    out.extend_from_slice(b",\"backend\":");
    text(out, &pair.backend);
    out.extend_from_slice(b"},\"request_id\":");
    text(out, request_id);
    out.extend_from_slice(b",\"received_at\":");
    write!(out, "{received_at}").expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"event\":");
    out.extend_from_slice(event_json);
    out.push(b'}');
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
    /// Rotate before a write would pass this size ([`SEGMENT_BYTES`]; smaller in tests).
    segment_bytes: u64,
    /// The tidier was asked for a spare for the segment after this one.
    spare_asked: bool,
    /// The active segment is a spare (written over allocated blocks), not a file that grows.
    preallocated: bool,
    /// A spare is (probably) ready: set by the tidier when it made or recycled one, cleared
    /// when a rotation found none.
    spare_ready: Arc<AtomicBool>,
}

/// Open the file of a new segment at `path`, where to write in it, and whether it is a
/// spare: the spare renamed into place when one is ready (written from its start), or a new
/// empty file. A file already at `path` is never replaced; it is written after its end.
fn open_segment(dir: &Path, path: &Path) -> std::io::Result<(File, u64, bool)> {
    if path.symlink_metadata().is_err() && std::fs::rename(dir.join(SPARE), path).is_ok() {
        let file = OpenOptions::new().write(true).open(path)?;
        return Ok((file, 0, true));
    }
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size, false))
}

/// Zero-fill a spare segment of `bytes` and make it durable, unless one is ready.
fn prepare_spare(dir: &Path, bytes: u64) -> std::io::Result<()> {
    let ready = dir.join(SPARE);
    if ready.exists() {
        return Ok(());
    }
    let prep = dir.join(SPARE_PREP);
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(&prep)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    std::fs::rename(&prep, &ready)
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
        // A spare is never carried across a restart: a recycled one holds old records, and
        // seqs start again from what the segments left here say.
        for name in [SPARE, SPARE_PREP] {
            let _ = std::fs::remove_file(dir.join(name));
        }
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
            let mut last = 0;
            while let Some((payload, len)) = read_record(&data[at..]) {
                match serde_json::from_slice::<JournalEntry>(payload) {
                    // Seqs grow within a segment and start at its name: an older record is
                    // what a recycled segment held before, past the end of this one.
                    Ok(entry) if entry.seq < first || entry.seq <= last => break,
                    Ok(entry) => {
                        last = entry.seq;
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
                at += len;
            }
            if data[at..].iter().any(|b| *b != 0) {
                // Preallocated space is zeros; anything else is a write cut short by a crash
                // or what a recycled segment held before. Neither was ever acknowledged.
                tracing::info!(
                    segment = %path.display(),
                    at,
                    "journal segment ends before the end of its file (an unacknowledged write or earlier contents)"
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
        let (file, size, preallocated) = open_segment(dir, &path).map_err(io_err(&path))?;
        sync_dir(dir);
        Ok(Segments {
            dir: dir.to_path_buf(),
            sealed: Arc::new(Mutex::new(sealed)),
            active,
            file,
            size,
            next_seq,
            segment_bytes: SEGMENT_BYTES,
            spare_asked: false,
            preallocated,
            spare_ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Close the active segment and start a new one named after the next seq.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = segment_path(&self.dir, self.next_seq);
        let (file, size, preallocated) = open_segment(&self.dir, &path)?;
        sync_dir(&self.dir);
        if !preallocated {
            self.spare_ready.store(false, Ordering::Release);
        }
        self.sealed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.active);
        self.active = self.next_seq;
        self.file = file;
        self.size = size;
        self.spare_asked = false;
        self.preallocated = preallocated;
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
///
/// One full-size applied segment becomes the spare when none is ready: its blocks are
/// allocated, and the seq check at start-up tells its old records from new ones.
fn delete_applied(
    dir: &Path,
    sealed: &Sealed,
    index: &JournalIndex,
    store: &SledStore,
    segment_bytes: u64,
    spare_ready: &AtomicBool,
) {
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
    let spare = dir.join(SPARE);
    for s in done {
        let path = segment_path(dir, s);
        let recycle =
            !spare.exists() && std::fs::metadata(&path).is_ok_and(|m| m.len() >= segment_bytes);
        let gone = if recycle {
            std::fs::rename(&path, &spare)
        } else {
            std::fs::remove_file(&path)
        };
        match gone {
            Ok(()) => {
                if recycle {
                    spare_ready.store(true, Ordering::Release);
                }
                lock().retain(|x| *x != s);
                index.forget_segment(s);
            }
            Err(e) => {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete a journal segment")
            }
        }
    }
}

/// The tidier thread: [`delete_applied`] every [`TIDY_EVERY`], and a spare segment when the
/// writer asks for one, until told to stop.
fn tidier(
    dir: PathBuf,
    sealed: Sealed,
    index: Arc<JournalIndex>,
    store: SledStore,
    segment_bytes: u64,
    spare_ready: Arc<AtomicBool>,
    rx: mpsc::Receiver<TidierMsg>,
) {
    loop {
        let prepare = match rx.recv_timeout(TIDY_EVERY) {
            Ok(TidierMsg::Prepare) => true,
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Ok(TidierMsg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        delete_applied(&dir, &sealed, &index, &store, segment_bytes, &spare_ready);
        if prepare {
            match prepare_spare(&dir, segment_bytes) {
                Ok(()) => spare_ready.store(true, Ordering::Release),
                Err(e) => {
                    let _ = std::fs::remove_file(dir.join(SPARE_PREP));
                    tracing::warn!(error = %e, "cannot prepare the next journal segment; it will grow as it is written");
                }
            }
        }
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
    if len == 0 {
        // Zeros: the preallocated part of a segment (no record is empty).
        return None;
    }
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
    let (tidy_tx, tidy_rx) = mpsc::channel::<TidierMsg>();
    let tidier = {
        let (dir, sealed, index, store) = (
            segments.dir.clone(),
            segments.sealed.clone(),
            index.clone(),
            store.clone(),
        );
        let bytes = segments.segment_bytes;
        let ready = segments.spare_ready.clone();
        std::thread::Builder::new()
            .name("journal-tidier".into())
            .spawn(move || tidier(dir, sealed, index, store, bytes, ready, tidy_rx))
    };
    if let Err(e) = &tidier {
        tracing::error!(error = %e, "cannot start the journal tidier; applied segments are deleted at stop");
    }
    // Stop the tidier, then tidy once more: a clean stop leaves no journal to replay.
    // Nothing is recycled at a stop, and a spare is not kept (the next start removes it).
    let finish = |segments: &mut Segments| {
        let _ = tidy_tx.send(TidierMsg::Stop);
        if let Ok(t) = tidier {
            let _ = t.join();
        }
        segments.seal_if_applied(&index);
        delete_applied(
            &segments.dir,
            &segments.sealed,
            &index,
            &store,
            u64::MAX,
            &segments.spare_ready,
        );
        for name in [SPARE, SPARE_PREP] {
            let _ = std::fs::remove_file(segments.dir.join(name));
        }
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
        // Every entry of the group as (seq, JSON), in order.
        let mut written: Vec<(u64, Arc<[u8]>)> = Vec::with_capacity(group.len());
        let mut seq = segments.next_seq;
        let mut json = Vec::with_capacity(4096);
        for a in &group {
            for pair in &a.pairs {
                json.clear();
                entry_json(
                    seq,
                    pair,
                    &a.request_id,
                    a.received_at,
                    &a.event_json,
                    &mut json,
                );
                encode_record(&json, &mut buf);
                written.push((seq, Arc::from(json.as_slice())));
                seq += 1;
            }
        }
        // The group starts the next segment rather than take this one past its size, or
        // rather than grow a segment that is not preallocated once a spare is ready; the new
        // segment is named after the group's first seq, still `next_seq`.
        if segments.size > 0
            && (segments.size + buf.len() as u64 > segments.segment_bytes
                || (!segments.preallocated && segments.spare_ready.load(Ordering::Acquire)))
        {
            if let Err(e) = segments.rotate() {
                tracing::error!(error = %e, "cannot start a new journal segment");
            }
        }
        let durable = segments
            .file
            .write_all_at(&buf, segments.size)
            .and_then(|()| segments.file.sync_data());
        flushes.fetch_add(1, Ordering::Relaxed);
        match durable {
            Ok(()) => {
                let mut first = segments.next_seq;
                segments.next_seq = seq;
                segments.size += buf.len() as u64;
                index.add_all(segments.active, written);
                for a in group {
                    let _ = a.reply.send(Ok(first));
                    first += a.pairs.len() as u64;
                }
                if !segments.spare_asked
                    && segments.size
                        >= spare_threshold(segments.segment_bytes, segments.preallocated)
                {
                    segments.spare_asked = true;
                    let _ = tidy_tx.send(TidierMsg::Prepare);
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
        Journal::open_sized(store, SEGMENT_BYTES)
    }

    /// [`Journal::open`] with another segment size (tests use small ones).
    fn open_sized(store: SledStore, segment_bytes: u64) -> Result<Journal, JournalError> {
        let index = Arc::new(JournalIndex::default());
        let dir = store.path().join(crate::store::JOURNAL_DIR);
        let mut segments = Segments::open(&dir, &index)?;
        segments.segment_bytes = segment_bytes;
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
        self.replay_configured(|_| true)
    }

    /// [`Journal::replay`] of the entries whose pair `configured` accepts. The others (a pair
    /// removed or renamed in the configuration since they were accepted) are kept, not
    /// dropped: they stay in the journal, and replay if the pair comes back. A warning names
    /// each such pair. Returns how many were handed on.
    pub fn replay_configured(
        &self,
        configured: impl Fn(&PairKey) -> bool,
    ) -> Result<usize, SinkError> {
        let mut kept: BTreeMap<String, usize> = BTreeMap::new();
        let mut n = 0;
        for e in self.pending() {
            if !configured(&e.pair) {
                *kept.entry(e.pair.to_string()).or_default() += 1;
                continue;
            }
            self.dispatch(e).map_err(SinkError::Unavailable)?;
            n += 1;
        }
        for (pair, count) in kept {
            tracing::warn!(%pair, events = count,
                "journaled events of a pair that is no longer configured were kept, not applied; \
                 they apply if the pair is configured again (the journal's depth counts them)");
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
        let event_json = serde_json::to_vec(event).expect("events serialise to JSON");
        self.append_tx
            .send(Msg::Append(Box::new(Append {
                request_id: request_id.to_string(),
                received_at,
                event_json,
                pairs: pairs.to_vec(),
                reply,
            })))
            .map_err(|_| stopped())?;
        let first = rx
            .await
            .map_err(|_| stopped())?
            .map_err(SinkError::Unavailable)?;
        self.appended
            .fetch_add(pairs.len() as u64, Ordering::Relaxed);
        // Durable now: from here on the event survives anything, so a dispatch failure is
        // logged, not reported (the entry is replayed at the next start).
        for (seq, pair) in (first..).zip(pairs) {
            let entry = JournalEntry {
                seq,
                pair: pair.clone(),
                request_id: request_id.to_string(),
                received_at,
                event: event.clone(),
            };
            if let Err(err) = self.dispatch(entry) {
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

    #[test]
    fn composed_entries_read_back_as_journal_entries() {
        let mut ev = event();
        ev.title = Some("Caf\u{e9} \"quoted\" \\ line\nbreak".into());
        let pair = PairKey::new("al\"ice", "pl\\ex");
        let event_json = serde_json::to_vec(&ev).unwrap();
        let mut out = Vec::new();
        entry_json(u64::MAX, &pair, "req-\u{1}", -5, &event_json, &mut out);
        let back: JournalEntry = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.seq, u64::MAX);
        assert_eq!(back.pair, pair);
        assert_eq!(back.request_id, "req-\u{1}");
        assert_eq!(back.received_at, -5);
        assert_eq!(back.event.title, ev.title);
        assert_eq!(
            serde_json::to_value(&back.event).unwrap(),
            serde_json::to_value(&ev).unwrap()
        );
    }

    /// The file of a recycled segment: new records, then what it held before (older seqs,
    /// valid CRCs, not on a record boundary), then zeros. Only the new records are entries.
    #[tokio::test]
    async fn a_segment_ends_at_zeros_or_at_an_older_record() {
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("journal");
        std::fs::create_dir_all(&journal_dir).unwrap();
        let record = |seq: u64, out: &mut Vec<u8>| {
            let mut json = Vec::new();
            let ev = serde_json::to_vec(&event()).unwrap();
            entry_json(
                seq,
                &PairKey::new("u", "b"),
                &format!("r{seq}"),
                1,
                &ev,
                &mut json,
            );
            encode_record(&json, out);
        };
        let mut data = Vec::new();
        record(100, &mut data);
        record(101, &mut data);
        let mut old = Vec::new();
        for seq in 7..10 {
            record(seq, &mut old);
        }
        record(8, &mut data); // a whole older record, right after the new ones
        data.extend_from_slice(&old[5..]); // and from mid-record on
        data.resize(data.len() + 4096, 0);
        std::fs::write(segment_path(&journal_dir, 100), &data).unwrap();
        // A preallocated segment holding one record, then zeros.
        let mut zeroed = Vec::new();
        record(102, &mut zeroed);
        zeroed.resize(64 * 1024, 0);
        std::fs::write(segment_path(&journal_dir, 102), &zeroed).unwrap();
        // A spare left by the previous run is not used again.
        std::fs::write(journal_dir.join(SPARE), &old).unwrap();

        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open(store).unwrap();
        let seqs: Vec<u64> = j.pending().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![100, 101, 102]);
        assert!(!journal_dir.join(SPARE).exists());
        // Seqs go on after the last entry.
        j.set_dispatch(Arc::new(|_| Ok(())));
        j.accept("next", 2, &event(), &[PairKey::new("u", "b")])
            .await
            .unwrap();
        assert_eq!(j.pending().last().unwrap().seq, 103);
    }

    /// Entries of a pair removed from the configuration while they waited do not stop the
    /// start (the actors know no such pair): they are kept, and the others replay.
    #[tokio::test]
    async fn entries_of_a_pair_no_longer_configured_are_kept_and_the_rest_replays() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, gone) = (PairKey::new("alice", "plex"), PairKey::new("bob", "plex"));
        {
            let store = SledStore::open(dir.path(), 1 << 20).unwrap();
            let j = Journal::open(store).unwrap();
            j.set_dispatch(Arc::new(|_| Ok(())));
            j.accept("r1", 1, &event(), std::slice::from_ref(&gone))
                .await
                .unwrap();
            j.accept("r2", 2, &event(), std::slice::from_ref(&kept))
                .await
                .unwrap();
            j.close().await;
        }
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open(store).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, known) = (seen.clone(), kept.clone());
        // As the supervisor does: an unknown pair is an error.
        j.set_dispatch(Arc::new(move |e: JournalEntry| {
            if e.pair != known {
                return Err(format!("unknown pair {}", e.pair));
            }
            s.lock().unwrap().push(e.request_id);
            Ok(())
        }));
        assert!(
            j.replay().is_err(),
            "replaying everything fails on the removed pair"
        );
        seen.lock().unwrap().clear();
        assert_eq!(j.replay_configured(|p| *p == kept).unwrap(), 1);
        assert_eq!(*seen.lock().unwrap(), vec!["r2".to_string()]);
        assert_eq!(j.depth(), 2, "the removed pair's entry is kept");
    }

    /// Under sustained writes the tidier prepares a zero-filled spare and the next segment is
    /// that file, written from its start; acknowledged full-size segments are recycled as
    /// spares. A restart reads every entry of such segments once, in order, and nothing more.
    #[tokio::test]
    async fn preallocated_and_recycled_segments_keep_every_entry_and_nothing_else() {
        const BYTES: u64 = 16 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("journal");
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open_sized(store.clone(), BYTES).unwrap();
        // Requests whose id starts with "keep" stay pending; the others are applied at once.
        let acks = store.clone();
        j.set_dispatch(Arc::new(move |e: JournalEntry| {
            if e.request_id.starts_with("keep") {
                return Ok(());
            }
            let mut b = Batch::new();
            b.remove(Tree::Journal, JournalEntry::key(e.seq).to_vec());
            acks.apply(b).map_err(|e| e.to_string())
        }));
        let pair = [PairKey::new("u", "b")];
        let full_size = |d: &Path| {
            segment_files(d)
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() == BYTES))
                .count()
        };
        // Applied requests until a preallocated segment was used and then recycled: the spare
        // holds records (a zero-filled one would not) and no full-size segment is left.
        let recycled_spare =
            |d: &Path| std::fs::read(d.join(SPARE)).is_ok_and(|data| data.iter().any(|b| *b != 0));
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut recycled = false;
        let mut n = 0;
        while !recycled {
            assert!(
                Instant::now() < deadline,
                "no segment was preallocated and recycled: {:?}",
                segment_files(dir.path())
            );
            j.accept(&format!("r{n}"), n, &event(), &pair)
                .await
                .unwrap();
            n += 1;
            if full_size(dir.path()) > 0 {
                // Let the tidier apply, flush and recycle.
                let until = Instant::now() + Duration::from_secs(5);
                while Instant::now() < until
                    && !(full_size(dir.path()) == 0 && recycled_spare(&journal_dir))
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                recycled = full_size(dir.path()) == 0 && recycled_spare(&journal_dir);
            }
        }
        // Pending requests now go to the recycled spare, over its older records.
        let old = std::fs::read(journal_dir.join(SPARE)).unwrap();
        let mut kept = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read(journal_dir.join(SPARE)).is_ok_and(|d| d == old) || kept.len() < 3 {
            assert!(Instant::now() < deadline, "the spare was never used");
            let id = format!("keep{}", kept.len());
            j.accept(&id, 0, &event(), &pair).await.unwrap();
            kept.push(id);
        }
        // The newest segment is the recycled file: a few new records over older ones.
        let newest = segment_files(dir.path())
            .into_iter()
            .rev()
            .find(|p| p.extension().is_some_and(|x| x == "wal"))
            .unwrap();
        let data = std::fs::read(&newest).unwrap();
        let mut at = 0;
        while let Some((payload, len)) = read_record(&data[at..]) {
            let e: JournalEntry = serde_json::from_slice(payload).unwrap();
            if !e.request_id.starts_with("keep") {
                break;
            }
            at += len;
        }
        assert!(at > 0);
        assert_eq!(
            data[at..],
            old[at..],
            "the newest segment is not the recycled file"
        );
        // A crash now: copy what is on disk while the journal runs, and start from the copy.
        let crashed = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crashed.path().join("journal")).unwrap();
        for f in segment_files(dir.path()) {
            std::fs::copy(
                &f,
                crashed.path().join("journal").join(f.file_name().unwrap()),
            )
            .unwrap();
        }
        let j2 = Journal::open(SledStore::open(crashed.path(), 1 << 20).unwrap()).unwrap();
        let pending: Vec<String> = j2.pending().into_iter().map(|e| e.request_id).collect();
        let applied_left: Vec<&String> =
            pending.iter().filter(|r| !r.starts_with("keep")).collect();
        let kept_read: Vec<&String> = pending.iter().filter(|r| r.starts_with("keep")).collect();
        assert_eq!(kept_read, kept.iter().collect::<Vec<_>>());
        // Applied entries may still be in a segment the tidier had not removed yet, but each
        // at most once and in order.
        let mut seen = std::collections::BTreeSet::new();
        assert!(applied_left.iter().all(|r| seen.insert(r.to_string())));
        // No entry comes from before the start of its segment (the recycled file's past).
        for (seq, p) in &j2.index.lock().pending {
            assert!(
                *seq >= p.segment,
                "entry {seq} read from segment {}",
                p.segment
            );
        }
        // A clean stop leaves no spare behind.
        j.close().await;
        assert!(!journal_dir.join(SPARE).exists());
        assert!(!journal_dir.join(SPARE_PREP).exists());
    }

    /// A segment that grows by appending (the first one after a start) is left for the spare
    /// as soon as the spare is ready, long before it is full: every group after that writes
    /// over allocated blocks.
    #[tokio::test]
    async fn a_growing_segment_is_left_for_a_ready_spare() {
        const BYTES: u64 = 256 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("journal");
        let store = SledStore::open(dir.path(), 1 << 20).unwrap();
        let j = Journal::open_sized(store, BYTES).unwrap();
        j.set_dispatch(Arc::new(|_| Ok(())));
        let pair = [PairKey::new("u", "b")];
        let wal_sizes = || -> Vec<u64> {
            segment_files(dir.path())
                .iter()
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .map(|p| std::fs::metadata(p).unwrap().len())
                .collect()
        };
        let mut n = 0;
        while wal_sizes()[0] < spare_threshold(BYTES, false) {
            j.accept(&format!("r{n}"), n, &event(), &pair)
                .await
                .unwrap();
            n += 1;
        }
        assert_eq!(wal_sizes().len(), 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !journal_dir.join(SPARE).exists() {
            assert!(Instant::now() < deadline, "no spare was prepared");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The writer learns of the spare just after it appears.
        while wal_sizes().len() < 2 {
            assert!(Instant::now() < deadline, "the spare was never used");
            j.accept(&format!("r{n}"), n, &event(), &pair)
                .await
                .unwrap();
            n += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        j.accept("next", n, &event(), &pair).await.unwrap();
        let sizes = wal_sizes();
        assert_eq!(sizes.len(), 2, "{sizes:?}");
        assert!(
            sizes[0] < BYTES / 2,
            "the first segment was not left early: {sizes:?}"
        );
        assert_eq!(
            sizes[1], BYTES,
            "the new segment is not the spare: {sizes:?}"
        );
        let pending: Vec<String> = j.pending().into_iter().map(|e| e.request_id).collect();
        assert_eq!(pending.len(), n as usize + 1);
        assert_eq!(pending.last().map(String::as_str), Some("next"));
        j.close().await;
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
