//! Test doubles for the actor tests: a recording media server, a store that can be told to
//! fail, event builders and a harness that starts a supervisor for a set of pairs.
#![allow(dead_code)]

use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use watchstate_actors::backend::{BackendApi, BackendError, ItemPage, RemoteItem, ServerIdentity};
use watchstate_actors::event::{
    BackendKind, EventKind, ExternalIds, ItemType, JournalEntry, Millis, Sender, WebhookEvent,
};
use watchstate_actors::status::PairStatus;
use watchstate_actors::store::{Batch, MemoryStore, PairKey, Store, StoreError, Tree};
use watchstate_actors::{PairSpec, SupervisorHandle, SyncSettings, TestClock};

/// One call the fake server received.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    SetPlayed(String, bool),
    SetPosition(String, u64),
    GetItem(String),
    List(Option<String>),
}

#[derive(Default)]
pub struct FakeState {
    pub items: BTreeMap<String, RemoteItem>,
    pub calls: Vec<(tokio::time::Instant, Call)>,
    /// Errors returned by the next writes, in order.
    pub write_faults: VecDeque<BackendError>,
    /// A `list_items` call with this cursor fails (once per entry).
    pub list_fail_at: Vec<String>,
    /// When set, every `list_items` call fails with a network error.
    pub unreachable: bool,
    /// What every page reports as [`ItemPage::skipped`] (items the client could not read).
    pub skipped_per_page: u64,
    /// A page is read from the library before `list_gate` is waited for, so a page held at
    /// the gate shows the library as it was when its request started (a slow answer).
    pub pages_read_before_gate: bool,
    /// The id `identity` answers; empty (the default) is not compared.
    pub server_id: String,
    /// When set, `identity` fails with a network error.
    pub identity_fails: bool,
    /// The server cannot store resume positions (`accepts_positions` is false).
    pub no_positions: bool,
    /// Writes that got past `write_gate` (a write aborted while held there is not counted).
    pub completed_writes: usize,
}

/// A media server double: an in-memory library with per-user state, recording every call.
#[derive(Default)]
pub struct FakeBackend {
    pub state: Mutex<FakeState>,
    /// Held while `list_items` should block (to keep a sync running).
    pub list_gate: tokio::sync::Mutex<()>,
    /// Held while writes should block (to keep a push in flight); a write takes its fault,
    /// if any, after the gate.
    pub write_gate: tokio::sync::Mutex<()>,
}

impl FakeBackend {
    pub fn new() -> Arc<Self> {
        Arc::new(FakeBackend::default())
    }
    pub fn add(&self, item: RemoteItem) {
        self.state
            .lock()
            .unwrap()
            .items
            .insert(item.item_id.clone(), item);
    }
    pub fn set_state(&self, item_id: &str, played: bool, last_played_at: Option<Millis>) {
        let mut s = self.state.lock().unwrap();
        let it = s.items.get_mut(item_id).expect("known item");
        it.played = played;
        it.last_played_at = last_played_at;
    }
    /// Change a listed item in place.
    pub fn update(&self, item_id: &str, change: impl FnOnce(&mut RemoteItem)) {
        let mut s = self.state.lock().unwrap();
        change(s.items.get_mut(item_id).expect("known item"));
    }
    /// One page of the library, as `list_items` answers it (after its gate).
    fn page(&self, cursor: Option<&str>, page_size: usize) -> Result<ItemPage, BackendError> {
        self.record(Call::List(cursor.map(str::to_string)));
        let mut s = self.state.lock().unwrap();
        if s.unreachable {
            return Err(BackendError::Network {
                message: "connection refused".into(),
            });
        }
        if let Some(c) = cursor {
            if let Some(i) = s.list_fail_at.iter().position(|x| x == c) {
                s.list_fail_at.remove(i);
                return Err(BackendError::Server {
                    status: 500,
                    message: "boom".into(),
                    retry_after_ms: None,
                });
            }
        }
        let start: usize = cursor.map(|c| c.parse().unwrap()).unwrap_or(0);
        let all: Vec<&RemoteItem> = s.items.values().collect();
        let end = (start + page_size).min(all.len());
        // The unreadable entries a page reports are part of the server's total, as with a
        // real server.
        let pages = all.len().div_ceil(page_size.max(1)).max(1) as u64;
        Ok(ItemPage {
            items: all[start..end].iter().map(|i| (*i).clone()).collect(),
            next: (end < all.len()).then(|| end.to_string()),
            total: Some(all.len() as u64 + pages * s.skipped_per_page),
            skipped: s.skipped_per_page,
            left_out: 0,
        })
    }

    pub fn item(&self, item_id: &str) -> RemoteItem {
        self.state.lock().unwrap().items[item_id].clone()
    }
    pub fn writes(&self) -> Vec<Call> {
        self.state
            .lock()
            .unwrap()
            .calls
            .iter()
            .filter(|(_, c)| matches!(c, Call::SetPlayed(..) | Call::SetPosition(..)))
            .map(|(_, c)| c.clone())
            .collect()
    }
    pub fn calls(&self) -> Vec<(tokio::time::Instant, Call)> {
        self.state.lock().unwrap().calls.clone()
    }
    pub fn lists(&self) -> Vec<Option<String>> {
        self.calls()
            .into_iter()
            .filter_map(|(_, c)| match c {
                Call::List(c) => Some(c),
                _ => None,
            })
            .collect()
    }
    pub fn fault(&self, e: BackendError) {
        self.state.lock().unwrap().write_faults.push_back(e);
    }
    fn record(&self, c: Call) {
        self.state
            .lock()
            .unwrap()
            .calls
            .push((tokio::time::Instant::now(), c));
    }
    fn write_fault(&self) -> Option<BackendError> {
        self.state.lock().unwrap().write_faults.pop_front()
    }
}

#[async_trait]
impl BackendApi for FakeBackend {
    fn accepts_positions(&self) -> bool {
        !self.state.lock().unwrap().no_positions
    }

    async fn identity(&self) -> Result<ServerIdentity, BackendError> {
        if self.state.lock().unwrap().identity_fails {
            return Err(BackendError::Network {
                message: "connection reset".into(),
            });
        }
        Ok(ServerIdentity {
            server_id: self.state.lock().unwrap().server_id.clone(),
            name: None,
            version: None,
        })
    }

    async fn list_items(
        &self,
        cursor: Option<&str>,
        page_size: usize,
    ) -> Result<ItemPage, BackendError> {
        if self.state.lock().unwrap().pages_read_before_gate {
            let page = self.page(cursor, page_size);
            let _gate = self.list_gate.lock().await;
            return page;
        }
        let _gate = self.list_gate.lock().await;
        self.page(cursor, page_size)
    }

    async fn get_item(&self, item_id: &str) -> Result<Option<RemoteItem>, BackendError> {
        self.record(Call::GetItem(item_id.into()));
        let s = self.state.lock().unwrap();
        if s.unreachable {
            return Err(BackendError::Network {
                message: "connection refused".into(),
            });
        }
        Ok(s.items.get(item_id).cloned())
    }

    async fn set_played(
        &self,
        item_id: &str,
        played: bool,
        at: Option<Millis>,
    ) -> Result<(), BackendError> {
        self.record(Call::SetPlayed(item_id.into(), played));
        drop(self.write_gate.lock().await);
        self.state.lock().unwrap().completed_writes += 1;
        if let Some(e) = self.write_fault() {
            return Err(e);
        }
        let mut s = self.state.lock().unwrap();
        if let Some(it) = s.items.get_mut(item_id) {
            it.played = played;
            it.last_played_at = if played { at } else { it.last_played_at };
            if played {
                it.position_ms = 0;
            }
        }
        Ok(())
    }

    async fn set_position(
        &self,
        item_id: &str,
        position_ms: u64,
        _duration_ms: Option<u64>,
        _at: Option<Millis>,
    ) -> Result<(), BackendError> {
        self.record(Call::SetPosition(item_id.into(), position_ms));
        if let Some(e) = self.write_fault() {
            return Err(e);
        }
        if let Some(it) = self.state.lock().unwrap().items.get_mut(item_id) {
            it.position_ms = position_ms;
        }
        Ok(())
    }
}

/// A store whose pair-state writes fail while `fail` is set (to make an actor fail); the
/// journal, written by the lead's side, keeps working.
#[derive(Default)]
pub struct FlakyStore {
    pub inner: MemoryStore,
    pub fail: AtomicBool,
}

impl Store for FlakyStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan_prefix(
        &self,
        tree: Tree,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let touches_pairs = batch.ops.iter().any(|op| op.tree == Tree::Pairs);
        if touches_pairs && self.fail.load(Ordering::SeqCst) {
            return Err(StoreError("disk on fire".into()));
        }
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

pub fn ids(pairs: &[(&str, &str)]) -> ExternalIds {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

pub fn movie(item_id: &str, imdb: &str) -> RemoteItem {
    RemoteItem {
        item_id: item_id.into(),
        item_type: ItemType::Movie,
        title: Some(format!("Movie {imdb}")),
        series_title: None,
        year: Some(2000),
        season: None,
        episode: None,
        external_ids: ids(&[("imdb", imdb)]),
        series_external_ids: ExternalIds::new(),
        played: false,
        state_unknown: false,
        last_played_at: None,
        position_ms: 0,
        duration_ms: Some(7_200_000),
        library_id: Some("1".into()),
    }
}

pub fn episode(item_id: &str, tvdb: &str, series: &str, s: u32, e: u32) -> RemoteItem {
    RemoteItem {
        item_type: ItemType::Episode,
        external_ids: ids(&[("tvdb", tvdb)]),
        series_external_ids: ids(&[("tvdb", series)]),
        season: Some(s),
        episode: Some(e),
        series_title: Some("Show".into()),
        ..movie(item_id, "x")
    }
}

/// A webhook event about `item` (ids taken from it) on a server of kind `sender`.
pub fn event(kind: EventKind, item: &RemoteItem) -> WebhookEvent {
    WebhookEvent {
        sender: Sender::Jellyfin,
        backend_id: "srv".into(),
        user_id: Some("u".into()),
        user_name: None,
        event: kind,
        raw_event: kind.as_str().into(),
        generic: kind == EventKind::ItemAdded,
        item_type: Some(item.item_type),
        item_id: Some(item.item_id.clone()),
        title: item.title.clone(),
        series_title: item.series_title.clone(),
        season: item.season,
        episode: item.episode,
        year: item.year,
        played: None,
        position_ms: None,
        duration_ms: item.duration_ms,
        external_ids: item.external_ids.clone(),
        series_external_ids: item.series_external_ids.clone(),
        library_id: item.library_id.clone(),
    }
}

pub fn spec(user: &str, backend: &str) -> PairSpec {
    PairSpec {
        key: PairKey::new(user, backend),
        kind: BackendKind::Jellyfin,
        server_id: format!("srv-{backend}"),
        backend_user_id: format!("{user}-id"),
        import: true,
        export: true,
        import_unplayed: true,
        sync_interval: None,
        ignore_libraries: Vec::new(),
    }
}

/// A running actor system over a shared store, clock and fake backends.
pub struct Harness {
    pub store: Arc<dyn Store>,
    pub clock: Arc<TestClock>,
    pub backends: HashMap<PairKey, Arc<FakeBackend>>,
    pub specs: Vec<PairSpec>,
    pub settings: SyncSettings,
    pub handle: SupervisorHandle,
    seq: u64,
}

impl Harness {
    pub async fn start(specs: Vec<PairSpec>, settings: SyncSettings) -> Harness {
        Self::start_on(specs, settings, Arc::new(MemoryStore::new())).await
    }

    /// Like [`Harness::start`] on a given store (e.g. one that fails on purpose).
    pub async fn start_on(
        specs: Vec<PairSpec>,
        settings: SyncSettings,
        store: Arc<dyn Store>,
    ) -> Harness {
        let clock = Arc::new(TestClock::new(1_700_000_000_000));
        let backends = specs
            .iter()
            .map(|s| (s.key.clone(), FakeBackend::new()))
            .collect();
        Self::start_with(specs, settings, store, clock, backends).await
    }

    pub async fn start_with(
        specs: Vec<PairSpec>,
        settings: SyncSettings,
        store: Arc<dyn Store>,
        clock: Arc<TestClock>,
        backends: HashMap<PairKey, Arc<FakeBackend>>,
    ) -> Harness {
        let pairs = specs
            .iter()
            .map(|s| {
                let b: Arc<dyn BackendApi> = backends[&s.key].clone();
                (s.clone(), b)
            })
            .collect();
        let handle = SupervisorHandle::start(pairs, settings.clone(), store.clone(), clock.clone())
            .await
            .expect("supervisor starts");
        Harness {
            store,
            clock,
            backends,
            specs,
            settings,
            handle,
            seq: 1000,
        }
    }

    /// Start with fakes that `fill` prepares before any actor runs (for sync tests).
    pub async fn start_filled(
        specs: Vec<PairSpec>,
        settings: SyncSettings,
        fill: impl FnOnce(&HashMap<PairKey, Arc<FakeBackend>>),
    ) -> Harness {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let clock = Arc::new(TestClock::new(1_700_000_000_000));
        let backends: HashMap<PairKey, Arc<FakeBackend>> = specs
            .iter()
            .map(|s| (s.key.clone(), FakeBackend::new()))
            .collect();
        fill(&backends);
        Self::start_with(specs, settings, store, clock, backends).await
    }

    /// Stop and start again on the same store, clock and backends (a process restart).
    pub async fn restart(self) -> Harness {
        self.handle.shutdown().await;
        let seq = self.seq;
        let mut h = Self::start_with(
            self.specs,
            self.settings,
            self.store,
            self.clock,
            self.backends,
        )
        .await;
        h.seq = seq;
        h
    }

    pub fn backend(&self, user: &str, backend: &str) -> Arc<FakeBackend> {
        self.backends[&PairKey::new(user, backend)].clone()
    }

    /// Journal and dispatch an event to one pair, as the lead's webhook handler does.
    /// The keys of the pairs' tree that start with `prefix` (e.g. `alice/jelly/i/`).
    pub fn store_keys(&self, prefix: &str) -> Vec<String> {
        self.store
            .scan_prefix(watchstate_actors::store::Tree::Pairs, prefix.as_bytes())
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }

    pub fn send(&mut self, user: &str, backend: &str, ev: WebhookEvent) -> JournalEntry {
        let now = watchstate_actors::Clock::now_ms(&*self.clock);
        self.send_at(user, backend, ev, now)
    }

    /// Like [`Harness::send`] with a chosen receive time (a late delivery).
    pub fn send_at(
        &mut self,
        user: &str,
        backend: &str,
        ev: WebhookEvent,
        received_at: Millis,
    ) -> JournalEntry {
        self.seq += 1;
        let entry = JournalEntry {
            seq: self.seq,
            pair: PairKey::new(user, backend),
            request_id: format!("req-{}", self.seq),
            received_at,
            event: ev,
        };
        self.redeliver(&entry);
        entry
    }

    /// Dispatch an already journalled entry (again).
    pub fn redeliver(&self, entry: &JournalEntry) {
        let mut b = Batch::new();
        b.put(
            Tree::Journal,
            JournalEntry::key(entry.seq).to_vec(),
            serde_json::to_vec(entry).unwrap(),
        );
        self.store.apply(b).unwrap();
        self.handle.dispatch(entry.clone()).expect("dispatch");
    }

    pub fn journal_len(&self) -> usize {
        self.store.scan_prefix(Tree::Journal, b"").unwrap().len()
    }

    pub async fn status(&self, user: &str, backend: &str) -> PairStatus {
        self.handle
            .pair_status(&PairKey::new(user, backend))
            .await
            .expect("known pair")
    }

    /// Wait until every actor has handled its messages and its outbox is empty (or only
    /// waiting on a retry), then let virtual time run a little more.
    pub async fn settle(&self) {
        eventually("actors idle and outboxes drained", || async {
            self.handle
                .all_status()
                .await
                .iter()
                .all(|s| s.mailbox_depth == 0 && s.outbox.in_flight == 0 && s.outbox.pending == 0)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Poll a condition with a (virtual-time) deadline.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
