//! The sled implementation of the actors' [`Store`]: one database under `storage.path` with
//! the trees `journal`, `pairs` and `meta` (DESIGN.md §7).

mod writer;

use crate::journal::JournalIndex;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use watchstate_actors::store::{Batch, Store, StoreError, Tree};

/// Why the database could not be opened; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot create the data directory {path}: {source} (check storage.path and its permissions)")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the data directory {path} is not writable: {source} (check storage.path and its permissions)")]
    NotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the database in {path}: {message}")]
    Sled { path: PathBuf, message: String },
    #[error("cannot move the corrupted database {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the corrupted database was moved to {aside}, but {what} could not be taken back from it: {source}; move {what} from there into {path} by hand, then start again")]
    TakeBack {
        aside: PathBuf,
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}

/// The process's sled database.
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    journal: sled::Tree,
    pairs: sled::Tree,
    meta: sled::Tree,
    /// Where a corrupted database was moved at open, if that happened: shown in status, and
    /// the reason every actor starts empty and rebuilds through its first scheduled sync.
    moved_aside: Option<PathBuf>,
    /// The database directory.
    path: PathBuf,
    /// The file journal (`crate::journal`), once attached: `Tree::Journal` reads and removals
    /// go to it instead of sled, so that the journal never waits on sled's flushes.
    file_journal: Arc<OnceLock<Arc<JournalIndex>>>,
    /// Applies the actors' batches in the background, many at once (see [`writer`]).
    writer: Arc<writer::Writer>,
}

const API_KEY: &[u8] = b"api_key";
const SCHEMA_VERSION: &[u8] = b"schema_version";
const SCHEMA: u32 = 1;
const KEY_FILE: &str = "api_key";
/// The journal's directory under `storage.path` (see `crate::journal`).
pub const JOURNAL_DIR: &str = "journal";
/// Written beside the database once it holds its schema version; lets `open` notice a
/// database whose content sled silently dropped.
const INITIALISED_FILE: &str = "watchstate-initialised";
/// Prefix of the error made from a panic inside sled while it opens (recovers) the database.
const PANIC_AT_OPEN: &str = "sled panicked while opening the database: ";

impl SledStore {
    /// Open (or create) the database at `path` with a page cache of `cache_bytes`.
    /// A corrupted database is moved aside to `<path>.corrupt-<unix seconds>` and a new one
    /// is created: state is then rebuilt by the actors' scheduled sync.
    pub fn open(path: &Path, cache_bytes: u64) -> Result<SledStore, OpenError> {
        std::fs::create_dir_all(path).map_err(|source| OpenError::CreateDir {
            path: path.to_path_buf(),
            source,
        })?;
        let probe = path.join(".write-test");
        std::fs::write(&probe, b"ok")
            .and_then(|_| std::fs::remove_file(&probe))
            .map_err(|source| OpenError::NotWritable {
                path: path.to_path_buf(),
                source,
            })?;
        let initialised = path.join(INITIALISED_FILE).exists();
        let opened = Self::open_db_waiting_for_lock(path, cache_bytes);
        // sled 0.34 does not report a damaged `db` file: its recovery stops at the first
        // unreadable segment and opens what came before, often nothing at all. A database
        // that was initialised before (the marker file) but has lost its schema version has
        // lost its content that way: it is treated as corrupted too.
        let corrupt = match &opened {
            // `Unsupported` at open means sled could not make sense of its `conf` file (it
            // blames an old sled version; every database of ours was made by 0.34), and a
            // panic inside sled's recovery means it choked on its own files.
            Err(sled::Error::Corruption { .. } | sled::Error::Unsupported(_)) => true,
            Err(sled::Error::ReportableBug(m)) if m.starts_with(PANIC_AT_OPEN) => true,
            Ok(db) => initialised && !has_schema_version(db),
            Err(_) => false,
        };
        if corrupt {
            drop(opened);
            return Self::move_aside_and_recreate(path, cache_bytes);
        }
        match opened {
            Ok(db) => Self::from_db(db, None, path),
            Err(e) => Err(OpenError::Sled {
                path: path.to_path_buf(),
                message: match e {
                    sled::Error::Io(io) if is_lock_error(&io) => {
                        "it is locked by another process (is watchstate already running with this storage.path?)".to_string()
                    }
                    other => other.to_string(),
                },
            }),
        }
    }

    /// Move the database at `path` to `<path>.corrupt-<unix seconds>` and create a new one.
    fn move_aside_and_recreate(path: &Path, cache_bytes: u64) -> Result<SledStore, OpenError> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // A second corruption within the same second gets `-1`, `-2`, ...: never overwrite.
        let aside = (0u32..)
            .map(|n| {
                let mut p = path.as_os_str().to_owned();
                p.push(format!(".corrupt-{secs}"));
                if n > 0 {
                    p.push(format!("-{n}"));
                }
                PathBuf::from(p)
            })
            .find(|p| !p.exists())
            .expect("an unused name");
        std::fs::rename(path, &aside).map_err(|source| OpenError::MoveAside {
            path: path.to_path_buf(),
            source,
        })?;
        tracing::error!(
            corrupt = %aside.display(),
            "the database was corrupted; it was moved aside and a new one is created; \
             every actor rebuilds its state through a full scheduled sync (the journal of \
             accepted webhooks and the API key are kept)"
        );
        std::fs::create_dir_all(path).map_err(|source| OpenError::CreateDir {
            path: path.to_path_buf(),
            source,
        })?;
        // Not sled's: the journal (accepted webhooks not applied yet, replayed into the new
        // database) and the generated API key (the senders' URLs carry it). They come back.
        // Not started without them: a journal left behind would never be replayed.
        for name in [JOURNAL_DIR, KEY_FILE] {
            let (from, to) = (aside.join(name), path.join(name));
            if from.exists() {
                std::fs::rename(&from, &to).map_err(|source| OpenError::TakeBack {
                    aside: aside.clone(),
                    path: path.to_path_buf(),
                    what: name,
                    source,
                })?;
            }
        }
        let db = Self::open_db(path, cache_bytes).map_err(|e| OpenError::Sled {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::from_db(db, Some(aside), path)
    }

    /// A database that was just closed in this process can stay locked for a moment while
    /// sled's background threads finish; wait a little for the lock instead of failing.
    /// Another running process keeps it locked, and that still fails (after the wait).
    fn open_db_waiting_for_lock(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        loop {
            match Self::open_db(path, cache_bytes) {
                Err(sled::Error::Io(io))
                    if is_lock_error(&io) && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(25));
                }
                other => return other,
            }
        }
    }

    fn open_db(path: &Path, cache_bytes: u64) -> sled::Result<sled::Db> {
        let config = sled::Config::new().path(path).cache_capacity(cache_bytes);
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).unwrap_or_else(
            |panic| {
                Err(sled::Error::ReportableBug(format!(
                    "{PANIC_AT_OPEN}{}",
                    panic_message(panic.as_ref())
                )))
            },
        )
    }

    fn from_db(
        db: sled::Db,
        moved_aside: Option<PathBuf>,
        path: &Path,
    ) -> Result<SledStore, OpenError> {
        let sled_err = |e: sled::Error| OpenError::Sled {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let trees = writer::Trees {
            journal: db.open_tree(Tree::Journal.name()).map_err(sled_err)?,
            pairs: db.open_tree(Tree::Pairs.name()).map_err(sled_err)?,
            meta: db.open_tree(Tree::Meta.name()).map_err(sled_err)?,
        };
        let file_journal = Arc::new(OnceLock::new());
        let writer = writer::Writer::start(trees.clone(), file_journal.clone()).map_err(|e| {
            OpenError::Sled {
                path: path.to_path_buf(),
                message: format!("cannot start the database writer thread: {e}"),
            }
        })?;
        let store = SledStore {
            journal: trees.journal,
            pairs: trees.pairs,
            meta: trees.meta,
            db,
            moved_aside,
            path: path.to_path_buf(),
            file_journal,
            writer: Arc::new(writer),
        };
        store
            .meta
            .insert(SCHEMA_VERSION, &SCHEMA.to_be_bytes())
            .map_err(sled_err)?;
        // The marker says "this database holds a schema version": from now on, opening it
        // without one means its content was lost (see `open`). Durable before the marker.
        let marker = path.join(INITIALISED_FILE);
        if !marker.exists() {
            store.db.flush().map_err(sled_err)?;
            if let Err(e) = std::fs::write(&marker, b"watchstate database initialised\n") {
                tracing::warn!(path = %marker.display(), error = %e, "cannot write the database marker file");
            }
        }
        Ok(store)
    }

    /// The database directory (the journal lives in `journal/` below it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// From now on `Tree::Journal` is served by `index`.
    pub fn attach_journal(&self, index: Arc<JournalIndex>) {
        let _ = self.file_journal.set(index);
    }

    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    fn tree(&self, tree: Tree) -> &sled::Tree {
        match tree {
            Tree::Journal => &self.journal,
            Tree::Pairs => &self.pairs,
            Tree::Meta => &self.meta,
        }
    }

    /// The API key from `server.api_key`, or the one generated at first start (32 random
    /// bytes as hex), stored and reused.
    pub fn api_key(&self, configured: Option<&str>) -> Result<String, StoreError> {
        if let Some(k) = configured {
            return Ok(k.trim().to_string());
        }
        if let Some(v) = self.meta.get(API_KEY).map_err(err)? {
            return String::from_utf8(v.to_vec())
                .map_err(|_| StoreError("the stored API key is not text".into()));
        }
        // A key generated before (its file kept when a corrupted database was moved aside),
        // else a new one.
        let key = Self::read_key_file(&self.path).unwrap_or_else(|| {
            let bytes: [u8; 32] = rand::random();
            hex::encode(bytes)
        });
        // Only the first writer wins, so two processes (serve and apikey) agree.
        match self
            .meta
            .compare_and_swap(API_KEY, None as Option<&[u8]>, Some(key.as_bytes()))
            .map_err(err)?
        {
            Ok(()) => {
                self.db.flush().map_err(err)?;
                self.write_key_file(&key);
                Ok(key)
            }
            Err(current) => {
                Ok(String::from_utf8_lossy(&current.current.unwrap_or_default()).into_owned())
            }
        }
    }

    /// The generated key is also written to `<storage.path>/api_key` (mode 0600), so that
    /// `watchstate apikey` can print it while the service holds the database lock.
    fn write_key_file(&self, key: &str) {
        let path = self.path.join(KEY_FILE);
        let written = std::fs::write(&path, format!("{key}\n"));
        #[cfg(unix)]
        if written.is_ok() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the API key file");
        }
    }

    /// The generated key as kept beside the database, for when the database is locked.
    pub fn read_key_file(path: &Path) -> Option<String> {
        let text = std::fs::read_to_string(path.join(KEY_FILE)).ok()?;
        let key = text.trim();
        (!key.is_empty()).then(|| key.to_string())
    }

    pub async fn flush_async(&self) -> Result<(), StoreError> {
        self.writer.settle()?;
        self.db.flush_async().await.map(|_| ()).map_err(err)
    }

    /// (batches written since start, sled writes made for them, batches waiting now): how
    /// well the writer groups the actors' batches.
    pub fn write_stats(&self) -> (u64, u64, usize) {
        self.writer.stats()
    }

    /// Approximate bytes on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// The text a panic was raised with (empty when it was not text).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Whether the database holds the schema version `from_db` writes at every open.
fn has_schema_version(db: &sled::Db) -> bool {
    matches!(
        db.open_tree(Tree::Meta.name())
            .and_then(|m| m.contains_key(SCHEMA_VERSION)),
        Ok(true)
    )
}

/// sled reports a held lock as `WouldBlock`, or wrapped in an `Other` error with this text.
fn is_lock_error(io: &std::io::Error) -> bool {
    io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("could not acquire lock")
}

fn err(e: sled::Error) -> StoreError {
    StoreError(e.to_string())
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.writer.settle()?;
        if let (Tree::Journal, Some(j)) = (tree, self.file_journal.get()) {
            return Ok(journal_seq(key).and_then(|seq| j.get(seq)));
        }
        Ok(self.tree(tree).get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(
        &self,
        tree: Tree,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.writer.settle()?;
        if let (Tree::Journal, Some(j)) = (tree, self.file_journal.get()) {
            let mut rows = j.entries();
            rows.retain(|(k, _)| k.starts_with(prefix));
            return Ok(rows);
        }
        self.tree(tree)
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
            .collect()
    }

    /// Queue the batch for the writer thread, which applies it (atomically, together with
    /// the batches queued beside it) and then acknowledges the journal entries it removes.
    /// Reads and `flush` wait for it first.
    fn apply(&self, mut batch: Batch) -> Result<(), StoreError> {
        if batch.ops.is_empty() {
            return Ok(());
        }
        // With the file journal attached, removing a journal key acknowledges the entry, once
        // the rest of the batch (the effect) is applied.
        let mut acks = Vec::new();
        if self.file_journal.get().is_some() {
            if batch
                .ops
                .iter()
                .any(|op| op.tree == Tree::Journal && op.value.is_some())
            {
                return Err(StoreError(
                    "journal entries are written by the journal, not through the store".into(),
                ));
            }
            batch.ops.retain(|op| {
                if op.tree == Tree::Journal {
                    acks.extend(journal_seq(&op.key));
                    false
                } else {
                    true
                }
            });
        }
        self.writer.push(batch.ops, acks)
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.writer.settle()?;
        self.db.flush().map(|_| ()).map_err(err)
    }
}

/// A journal key is a big-endian u64 sequence number.
fn journal_seq(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_across_trees_are_applied_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path(), 1 << 20).unwrap();
            let mut b = Batch::new();
            b.put(Tree::Journal, 1u64.to_be_bytes().to_vec(), b"e".to_vec());
            s.apply(b).unwrap();
            let mut b = Batch::new();
            b.put(Tree::Pairs, b"u/b/1".to_vec(), b"state".to_vec());
            b.remove(Tree::Journal, 1u64.to_be_bytes().to_vec());
            s.apply(b).unwrap();
            s.flush().unwrap();
        }
        let s = SledStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            s.get(Tree::Pairs, b"u/b/1").unwrap(),
            Some(b"state".to_vec())
        );
        assert!(s.scan_prefix(Tree::Journal, b"").unwrap().is_empty());
    }

    /// sled opens a database whose `db` file is garbage as an empty one, without an error:
    /// the marker file turns that silent loss into a visible "moved aside".
    #[test]
    fn a_garbage_db_file_is_detected_and_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        {
            let s = SledStore::open(&path, 1 << 20).unwrap();
            let mut b = Batch::new();
            b.put(Tree::Pairs, b"u/b/1".to_vec(), b"state".to_vec());
            s.apply(b).unwrap();
            s.flush().unwrap();
            assert!(s.moved_aside().is_none());
        }
        for round in 0..2 {
            let garbage: Vec<u8> = (0..50_000u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            std::fs::write(path.join("db"), &garbage).unwrap();
            let s = SledStore::open(&path, 1 << 20).unwrap();
            let aside = s
                .moved_aside()
                .expect("the lost database is reported")
                .to_path_buf();
            assert!(aside.exists(), "round {round}: {}", aside.display());
            assert_eq!(s.get(Tree::Pairs, b"u/b/1").unwrap(), None);
            drop(s);
            // The new database is sound: reopening it moves nothing.
            let s = SledStore::open(&path, 1 << 20).unwrap();
            assert!(s.moved_aside().is_none(), "round {round}");
        }
    }

    /// What is not sled's stays with the new database: the journal of accepted webhooks
    /// (replayed into it) and the generated API key (the senders' URLs carry it).
    #[test]
    fn a_moved_aside_database_leaves_the_journal_and_the_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let key = {
            let s = SledStore::open(&path, 1 << 20).unwrap();
            let key = s.api_key(None).unwrap();
            s.flush().unwrap();
            key
        };
        std::fs::create_dir_all(path.join(JOURNAL_DIR)).unwrap();
        std::fs::write(path.join(JOURNAL_DIR).join("00000001.seg"), b"entries").unwrap();
        std::fs::write(path.join("db"), vec![0x5a; 50_000]).unwrap();
        let s = SledStore::open(&path, 1 << 20).unwrap();
        let aside = s.moved_aside().expect("moved aside").to_path_buf();
        assert!(aside.join("db").exists());
        assert_eq!(
            std::fs::read(path.join(JOURNAL_DIR).join("00000001.seg")).unwrap(),
            b"entries"
        );
        assert!(!aside.join(JOURNAL_DIR).exists());
        assert_eq!(s.api_key(None).unwrap(), key, "the same key after the move");
        drop(s);
        let s = SledStore::open(&path, 1 << 20).unwrap();
        assert_eq!(
            s.api_key(None).unwrap(),
            key,
            "and kept in the new database"
        );
    }

    /// Whatever garbage is in the files, `open` gives a working store (the old one moved
    /// aside or, when sled recovered it, kept), never an error or a panic.
    #[test]
    fn open_survives_garbage_anywhere_in_the_files() {
        let mut seed = 0x51ed_270b_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for case in 0..24 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("data");
            {
                let s = SledStore::open(&path, 1 << 20).unwrap();
                for i in 0..200u32 {
                    let mut b = Batch::new();
                    b.put(Tree::Pairs, i.to_be_bytes().to_vec(), vec![i as u8; 64]);
                    s.apply(b).unwrap();
                }
                s.flush().unwrap();
            }
            let file = if case % 3 == 0 { "conf" } else { "db" };
            let target = path.join(file);
            let mut bytes = std::fs::read(&target).unwrap();
            match case % 4 {
                // overwrite a random window
                0 | 1 => {
                    let at = (next() as usize) % bytes.len().max(1);
                    let len = 1 + (next() as usize) % 256;
                    for i in at..(at + len).min(bytes.len()) {
                        bytes[i] = next() as u8;
                    }
                }
                // truncate somewhere
                2 => bytes.truncate((next() as usize) % bytes.len().max(1)),
                // all zeros
                _ => bytes.iter_mut().for_each(|b| *b = 0),
            }
            std::fs::write(&target, &bytes).unwrap();
            let s = SledStore::open(&path, 1 << 20)
                .unwrap_or_else(|e| panic!("case {case} ({file}): {e}"));
            let mut b = Batch::new();
            b.put(Tree::Pairs, b"after".to_vec(), b"ok".to_vec());
            s.apply(b).unwrap();
            assert_eq!(s.get(Tree::Pairs, b"after").unwrap(), Some(b"ok".to_vec()));
        }
    }

    /// Batches from many threads are applied in each thread's order, and every read sees
    /// every batch queued before it, whatever the writer thread has got to.
    #[test]
    fn queued_batches_are_applied_in_order_and_read_back_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path(), 1 << 20).unwrap();
        std::thread::scope(|scope| {
            for t in 0..4u8 {
                let s = s.clone();
                scope.spawn(move || {
                    let key = format!("thread/{t}");
                    for i in 0..500u32 {
                        let mut b = Batch::new();
                        b.put(
                            Tree::Pairs,
                            key.as_bytes().to_vec(),
                            i.to_be_bytes().to_vec(),
                        );
                        b.put(Tree::Pairs, format!("{key}/{i}").into_bytes(), vec![t]);
                        if i > 0 {
                            b.remove(Tree::Pairs, format!("{key}/{}", i - 1).into_bytes());
                        }
                        s.apply(b).unwrap();
                        if i % 100 == 0 {
                            assert_eq!(
                                s.get(Tree::Pairs, key.as_bytes()).unwrap(),
                                Some(i.to_be_bytes().to_vec())
                            );
                        }
                    }
                });
            }
        });
        for t in 0..4u8 {
            let key = format!("thread/{t}");
            assert_eq!(
                s.get(Tree::Pairs, key.as_bytes()).unwrap(),
                Some(499u32.to_be_bytes().to_vec())
            );
            let rows = s
                .scan_prefix(Tree::Pairs, format!("{key}/").as_bytes())
                .unwrap();
            assert_eq!(rows, vec![(format!("{key}/499").into_bytes(), vec![t])]);
        }
        let (batches, writes, waiting) = s.write_stats();
        assert_eq!((batches, waiting), (2000, 0));
        assert!(writes >= 1 && writes <= batches, "{writes} writes");
    }

    #[test]
    fn generated_api_key_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = SledStore::open(dir.path(), 1 << 20)
            .unwrap()
            .api_key(None)
            .unwrap();
        let k2 = SledStore::open(dir.path(), 1 << 20)
            .unwrap()
            .api_key(None)
            .unwrap();
        assert_eq!(k1, k2);
        assert!(k1.len() >= 32 && k1.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
