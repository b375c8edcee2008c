//! The scheduled sync (DESIGN.md §6 rule 8, issue 6): a `SyncTick` timer message per actor.
//!
//! Pages are fetched by a spawned task (rate-limited) that sends each page back as a
//! `PairMsg::SyncPage`, so webhooks keep being processed, in order, while a run goes on. The
//! cursor of the next page is persisted with each page's effects: an interrupted run resumes
//! from it. The next run time is persisted, so a restart neither skips nor repeats a run.

use crate::apply::remote_identity;
use crate::backend::{BackendApi, BackendError, ItemPage, RemoteItem, RequestPacer};
use crate::event::Millis;
use crate::pair::{PairCore, PairMsg};
use crate::state::key_hashes;
use crate::status::SyncStatus;
use crate::store::{Batch, StoreError, Tree};
use ractor::ActorRef;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// A failed run is retried after this long (or the interval, when shorter).
pub const FAILED_SYNC_RETRY: Duration = Duration::from_secs(15 * 60);

/// Persisted sync bookkeeping of a pair.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncMeta {
    pub last_started: Option<Millis>,
    pub last_finished: Option<Millis>,
    pub last_result: Option<String>,
    pub seen: u64,
    pub total: Option<u64>,
    pub changed: u64,
    /// Pushes this pair's sync queued (pending applied, catch-up from siblings).
    pub pushed: u64,
    /// Items the run could not read and skipped (the backend client logs each).
    #[serde(default)]
    pub skipped: u64,
    /// Items the run found in ignored libraries (`ignore_libraries`) and left alone.
    #[serde(default)]
    pub ignored: u64,
    /// When the next run is due (clock ms).
    pub next_at: Option<Millis>,
    /// The cursor of the next page of an unfinished run: where a resumed run starts.
    pub checkpoint: Option<String>,
    pub runs_ok: u64,
    pub runs_failed: u64,
}

impl SyncMeta {
    /// A run started and never finished (crash, shutdown): resume it soon.
    fn interrupted(&self) -> bool {
        self.checkpoint.is_some()
            || match (self.last_started, self.last_finished) {
                (Some(s), Some(f)) => s > f,
                (Some(_), None) => true,
                _ => false,
            }
    }
}

/// The run in progress (memory only; its progress is persisted in [`SyncMeta`]).
pub struct SyncRun {
    pub id: u64,
    /// The page fetch task, aborted if the actor stops.
    pub task: JoinHandle<()>,
    /// Hashes of the identity keys of the items this run found in ignored libraries; they
    /// replace [`PairCore::ignored_keys`] when the run completes.
    pub ignored_keys: std::collections::HashSet<u64>,
    /// Items listed without the user's play state ([`RemoteItem::state_unknown`]).
    pub state_unknown: u64,
    /// Counts the state changes made during the run by webhooks and confirmed pushes; the
    /// fetch task reads it before each page's request (see [`PairCore::touch`]).
    pub touches: Arc<AtomicU64>,
    /// Slot → the count of its last such change.
    pub touched: HashMap<u32, u64>,
    /// The item ids this run listed so far (to tell a second copy of a film from a film
    /// added again under a new id).
    pub listed: std::collections::HashSet<String>,
    /// Items left alone as further copies of a film already listed.
    pub copies: u64,
    /// The server at the url is not the configured one (see [`PairCore::on_sync_identity`]):
    /// kept for the run's failure message, which would otherwise replace it in status.
    pub identity_mismatch: Option<String>,
}

async fn fetch_pages(
    backend: Arc<dyn BackendApi>,
    me: ActorRef<PairMsg>,
    run: u64,
    mut cursor: Option<String>,
    page_size: usize,
    max_rps: f64,
    touches: Arc<AtomicU64>,
) {
    let gap = if max_rps > 0.0 {
        Duration::from_secs_f64(1.0 / max_rps)
    } else {
        Duration::ZERO
    };
    // Each page starts a gap after the last one started; inside a page, a client that makes
    // several requests has each of them paced the same way.
    let pacer = RequestPacer::new(max_rps);
    // Every run, resumed ones too, first asks the server who it is (paced like the pages): a
    // url that reaches another server than `server_id` names is reported, and another server
    // than the records were read from has them forgotten before any page is compared with
    // them (see `on_sync_identity`). A run that cannot ask fails: its pages would be read
    // against records nothing says are that server's.
    let found = RequestPacer::scope(pacer.clone(), backend.identity()).await;
    let sent = match found {
        Ok(identity) => me.cast(PairMsg::SyncIdentity { run, identity }),
        Err(e) => {
            let _ = me.cast(PairMsg::SyncPage {
                run,
                result: Err(e),
                touches_before: touches.load(Ordering::Acquire),
            });
            return;
        }
    };
    if sent.is_err() {
        return;
    }
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        if let Some(l) = last {
            tokio::time::sleep_until(l + gap).await;
        }
        last = Some(tokio::time::Instant::now());
        let touches_before = touches.load(Ordering::Acquire);
        let result = RequestPacer::scope(
            pacer.clone(),
            backend.list_items(cursor.as_deref(), page_size),
        )
        .await;
        let next = result.as_ref().ok().and_then(|p| p.next.clone());
        let done = next.is_none();
        let page = PairMsg::SyncPage {
            run,
            result,
            touches_before,
        };
        if me.cast(page).is_err() || done {
            return;
        }
        cursor = next;
    }
}

impl PairCore {
    fn stagger(&self) -> Duration {
        let base = self.settings.first_sync_delay;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.spec.key.hash(&mut h);
        let window = base.as_millis().max(1) as u64;
        base + Duration::from_millis(h.finish() % window)
    }

    /// At start: arm the timer for the persisted next run, or soon when never synced,
    /// overdue or interrupted.
    pub fn schedule_first_sync(&mut self) {
        if self.spec.sync_interval.is_none() {
            return;
        }
        let now = self.now();
        let m = &self.meta.sync;
        let delay = match m.next_at {
            Some(next) if next > now && !m.interrupted() => {
                Duration::from_millis((next - now) as u64)
            }
            _ => self.stagger(),
        };
        self.meta.sync.next_at = Some(now + delay.as_millis() as Millis);
        self.arm_sync_timer(delay);
    }

    fn arm_sync_timer(&mut self, delay: Duration) {
        self.sync_generation += 1;
        if let Some(t) = self.sync_timer.take() {
            t.abort();
        }
        let generation = self.sync_generation;
        let me = self.myself.clone();
        self.sync_timer = Some(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = me.cast(PairMsg::SyncTick { generation });
        }));
    }

    /// Begin a run (from the checkpoint when the last one was interrupted).
    pub fn start_sync(&mut self) -> Result<(), StoreError> {
        let id = self.next_id();
        let now = self.now();
        let resume = self.meta.sync.checkpoint.clone();
        if let Some(t) = self.sync_timer.take() {
            t.abort();
        }
        let m = &mut self.meta.sync;
        if resume.is_none() {
            m.seen = 0;
            m.changed = 0;
            m.pushed = 0;
            m.skipped = 0;
            m.ignored = 0;
            m.total = None;
        }
        m.last_started = Some(now);
        tracing::info!(pair = %self.spec.key, resume = resume.is_some(), "scheduled sync started");
        let touches = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(fetch_pages(
            self.backend.clone(),
            self.myself.clone(),
            id,
            resume,
            self.settings.page_size.max(1),
            self.settings.max_requests_per_second,
            touches.clone(),
        ));
        self.sync_run = Some(SyncRun {
            id,
            task,
            ignored_keys: Default::default(),
            state_unknown: 0,
            touches,
            touched: HashMap::new(),
            listed: Default::default(),
            copies: 0,
            identity_mismatch: None,
        });
        let mut batch = Batch::new();
        self.put_meta(&mut batch);
        self.commit(batch)
    }

    /// The server that this pair's url reaches, as the running sync found it. Another id than
    /// the configured `server_id` means a wrong url or server id: webhooks from the server at
    /// the url are not routed here, or items are read and written on another server than the
    /// webhooks come from. Reported (status and log) at every run; the sync goes on, as
    /// nothing tells which of the two is wrong.
    pub fn on_sync_identity(
        &mut self,
        run: u64,
        identity: &crate::backend::ServerIdentity,
    ) -> Result<(), StoreError> {
        if self.sync_run.as_ref().map(|r| r.id) != Some(run) {
            return Ok(());
        }
        let found = crate::event::normalize_id(&identity.server_id);
        if found.is_empty() {
            return Ok(());
        }
        let mut message = None;
        // Whose records they are: the server's id and the user's (another user's played
        // items read as this user's unmarks just the same). A Plex client reads the token's
        // account whatever `user_id` says, so there the server's id alone tells.
        let user = match self.spec.kind {
            crate::event::BackendKind::Plex => String::new(),
            _ => crate::event::normalize_id(&self.spec.backend_user_id),
        };
        let records = format!("{found}/{user}");
        match self.meta.records_from.clone() {
            Some(before) if before == records => {}
            // Another server, or another user's records. A key of the same server written
            // without the user's part, or (Plex) with one, is only rewritten below.
            Some(before)
                if before.split('/').next() != Some(found.as_str())
                    || (before.contains('/')
                        && self.spec.kind != crate::event::BackendKind::Plex) =>
            {
                let (before_server, before_user) =
                    before.split_once('/').unwrap_or((before.as_str(), ""));
                let why = if before_server != found {
                    format!(
                        "the server at this backend's url is another server (id {:?}) than the one its records were read from (id {before_server:?}): a reinstalled server or a changed url",
                        identity.server_id
                    )
                } else {
                    format!(
                        "the backend's user_id is now {:?}, and its records were read for user {before_user:?}",
                        self.spec.backend_user_id
                    )
                };
                message = Some(self.forget_records(records, &why)?);
            }
            _ => {
                self.meta.records_from = Some(records);
                let mut batch = Batch::new();
                self.put_meta(&mut batch);
                self.commit(batch)?;
            }
        }
        if found != crate::event::normalize_id(&self.spec.server_id) {
            let mismatch = format!(
                "the server at this backend's url says its id is {:?}, but its server_id is {:?}: check url and server_id (webhooks are routed by server_id; items are read from and written to the server at url)",
                identity.server_id, self.spec.server_id
            );
            message = Some(match message {
                Some(replaced) => format!("{mismatch}; {replaced}"),
                None => mismatch,
            });
        }
        if let Some(message) = message {
            self.record_error(message.clone());
            // Kept for the run's failure message, which would otherwise replace it.
            if let Some(run) = self.sync_run.as_mut() {
                run.identity_mismatch = Some(message);
            }
        }
        Ok(())
    }

    /// The server at the url is not the one the item records were read from (a media server
    /// reinstalled with a new database, or the url pointed at another server), or they were
    /// read for another user (`user_id` corrected in the configuration). Its items all
    /// look unplayed (or are other items under the same ids), so read against the old
    /// records this run would unmark everything elsewhere. The records (and the queued
    /// pushes and dead letters, which name the old server's item ids) are forgotten, and the
    /// run reads the server as a backend just added: played items are changes, nothing is
    /// unmarked elsewhere (rule 8), and the catch-up at its end sends it the user's states.
    /// Kept: the states waiting for items this server does not have yet. A run resumed from
    /// a checkpoint reads the rest of the library so; the items before the checkpoint are
    /// registered again by the next run or by their webhooks.
    /// Returns what happened, for the status and the log.
    pub fn forget_records(&mut self, records: String, why: &str) -> Result<String, StoreError> {
        let mut batch = Batch::new();
        let count = self.items.len();
        for (_, item) in self.items.iter() {
            batch.remove(Tree::Pairs, self.item_key(&item.item_id));
        }
        let pushes = self.outbox.queue.len() + self.outbox.dead.len();
        for id in self.outbox.queue.keys() {
            batch.remove(Tree::Pairs, self.outbox_key(*id));
        }
        for id in self.outbox.dead.keys() {
            batch.remove(Tree::Pairs, self.dead_key(*id));
        }
        let kept = self.meta.records_from.replace(records);
        self.put_meta(&mut batch);
        if let Err(e) = self.commit(batch) {
            self.meta.records_from = kept;
            return Err(e);
        }
        for (_, task) in self.push_tasks.0.drain() {
            task.abort();
        }
        if let Some((_, t)) = self.outbox_timer.take() {
            t.abort();
        }
        // Slots and item ids of the old server go with it.
        self.items = crate::state::Items::default();
        self.outbox = crate::outbox::Outbox::default();
        self.seen.clear();
        self.confirmed_lately.clear();
        if let Some(run) = self.sync_run.as_mut() {
            run.touched.clear();
        }
        Ok(format!(
            "{why}; its {count} item record(s) and {pushes} queued push(es) and dead letter(s) are forgotten, and this sync reads it as a backend just added (nothing is unmarked elsewhere)"
        ))
    }

    /// A webhook or a confirmed push changed the state of the item at `slot`. A page of the
    /// running sync whose request had started before that holds the server's state from
    /// before the change: for this item it is stale, and read as news it would undo the
    /// change (a push to this server confirmed after the page was read would look like the
    /// user unmarking the film there).
    pub fn touch(&mut self, slot: u32) {
        if let Some(run) = self.sync_run.as_mut() {
            let n = run.touches.fetch_add(1, Ordering::AcqRel) + 1;
            run.touched.insert(slot, n);
        }
    }

    /// One page of the running sync: compare its items, persist them with the checkpoint.
    /// `touches_before` is [`SyncRun::touches`] as the page's request started.
    pub fn on_sync_page(
        &mut self,
        run: u64,
        result: Result<ItemPage, BackendError>,
        touches_before: u64,
    ) -> Result<(), StoreError> {
        if self.sync_run.as_ref().map(|r| r.id) != Some(run) {
            return Ok(());
        }
        let page = match result {
            Ok(p) => p,
            Err(e) => return self.finish_sync(Err(e.to_string())),
        };
        let mut batch = Batch::new();
        for item in &page.items {
            self.sync_item(item, touches_before, &mut batch);
        }
        let m = &mut self.meta.sync;
        // Progress counts every entry of the server's total: read, unreadable or left out.
        m.seen += page.items.len() as u64 + page.skipped + page.left_out;
        m.skipped += page.skipped;
        if page.total.is_some() {
            m.total = page.total;
        }
        m.checkpoint = page.next.clone();
        self.put_meta(&mut batch);
        self.commit(batch)?;
        if page.next.is_none() {
            self.finish_sync(Ok(()))?;
        }
        Ok(())
    }

    /// Rule 8 for one listed item.
    fn sync_item(&mut self, r: &RemoteItem, touches_before: u64, batch: &mut Batch) {
        let ignored = r
            .library_id
            .as_deref()
            .is_some_and(|l| self.library_ignored(l));
        let known_id = self.items.by_item_id(&r.item_id);
        if ignored {
            self.meta.sync.ignored += 1;
            // Not registered (a copy of the same film in another library keeps its own
            // state); one known from before its library was ignored is marked, so that
            // neither its webhooks nor its siblings' changes reach it any more.
            if let Some(slot) = known_id.filter(|s| !self.items.get(*s).in_ignored_library) {
                self.items.get_mut(slot).in_ignored_library = true;
                self.put_item(batch, slot);
            }
            let identity = remote_identity(r);
            if let Some(run) = self.sync_run.as_mut().filter(|_| identity.is_usable()) {
                run.ignored_keys.extend(key_hashes(&identity));
            }
            return;
        }
        let now = self.now();
        let identity = remote_identity(r);
        let usable = identity.is_usable();
        // A second copy of a film (another library, another version): its ids match a record
        // whose own item was already listed in this run. The record stays with the copy it
        // follows; this one is left alone (taken over, the record would swap copies on every
        // run, and with them its state).
        if known_id.is_none() && usable {
            if let (Some(run), Some(other)) =
                (self.sync_run.as_ref(), self.items.find_own(&identity))
            {
                if run.listed.contains(&*self.items.get(other).item_id) {
                    if let Some(run) = self.sync_run.as_mut() {
                        run.copies += 1;
                    }
                    return;
                }
            }
        }
        if let Some(run) = self.sync_run.as_mut() {
            run.listed.insert(r.item_id.clone());
        }
        let known = self
            .items
            .by_item_id(&r.item_id)
            .or_else(|| self.items.find_own(&identity));
        let up = self
            .items
            .upsert(&r.item_id, &identity, r.title.as_deref(), now, false);
        let slot = up.slot;
        // A record that took this id from another one (a copy of the same film, or the item
        // deleted and added again) starts from nothing: the first sight of this id.
        let known = known.filter(|_| up.renamed_from.is_none());
        if let Some(old) = &up.renamed_from {
            batch.remove(Tree::Pairs, self.item_key(old));
        }
        // Listed outside the ignored libraries (moved, the config changed, or a copy in
        // another library that now holds the slot): followed again.
        self.items.get_mut(slot).in_ignored_library = false;
        if r.duration_ms.is_some() {
            self.items.get_mut(slot).duration_ms = r.duration_ms;
        }
        let request_id = format!("sync:{}", self.spec.key);
        let min = self.settings.progress_min.as_millis() as u64;
        if r.state_unknown {
            if let Some(run) = self.sync_run.as_mut() {
                run.state_unknown += 1;
            }
        }
        // Changed here since this page was requested: the page's state of it is older.
        let stale = self
            .sync_run
            .as_ref()
            .and_then(|run| run.touched.get(&slot))
            .is_some_and(|n| *n > touches_before);
        if self.spec.import && usable && !r.state_unknown && !stale {
            let item = self.items.get(slot).clone();
            let wanted = self.outbox.wanted_played(&item.item_id);
            if known.is_none() {
                // First sight: played is a change; unplayed only registers (never an unmark).
                let it = self.items.get_mut(slot);
                if r.played {
                    // A server clock ahead of ours must not put changes in our future. Without
                    // a date the play is of unknown age: dated 1 ms, the oldest known state (0
                    // means none, which the catch-up of a backend added later would skip). It
                    // reaches servers that never changed the item, but does not beat an unmark
                    // made elsewhere, as "now" would for a backend just added.
                    let at = r
                        .last_played_at
                        .unwrap_or(crate::propagate::UNDATED_PLAY)
                        .min(now);
                    it.played = true;
                    it.played_at = at;
                    self.meta.sync.changed += 1;
                    self.propagate(&identity, Some(true), None, at, &request_id, batch);
                } else if r.position_ms > 0 {
                    it.position_ms = r.position_ms;
                }
            } else if item.played != r.played {
                if wanted.map(|w| w.0) == Some(r.played) {
                    self.settle_echo(slot, r.played, wanted.map(|w| w.1).unwrap_or(now), batch);
                } else if !r.played && !self.spec.import_unplayed {
                    // `import_unplayed = false`: the unmark is not taken; the server gets the
                    // played state back.
                    self.restore_played(slot, &identity, &request_id, batch);
                } else {
                    let at = if r.played {
                        r.last_played_at
                            .filter(|t| *t > item.played_at)
                            .unwrap_or(now)
                            .min(now)
                    } else {
                        now
                    };
                    let it = self.items.get_mut(slot);
                    it.set_played(r.played, at);
                    if !r.played {
                        // What the server holds now (watched again since the unmark).
                        it.position_ms = r.position_ms;
                    }
                    self.meta.sync.changed += 1;
                    self.propagate(&identity, Some(r.played), None, at, &request_id, batch);
                    if !r.played && self.settings.progress && r.position_ms > min {
                        let pos = Some(r.position_ms);
                        self.propagate(&identity, None, pos, at, &request_id, batch);
                    }
                }
            } else if !r.played
                && r.position_ms != item.position_ms
                && self.outbox.wanted_position(&item.item_id) != Some(r.position_ms)
            {
                let it = self.items.get_mut(slot);
                it.position_ms = r.position_ms;
                it.position_at = now;
                self.meta.sync.changed += 1;
                if self.settings.progress && r.position_ms > min {
                    self.propagate(
                        &identity,
                        None,
                        Some(r.position_ms),
                        now,
                        &request_id,
                        batch,
                    );
                }
            }
        }
        self.meta.sync.pushed += self.apply_pending_for(slot, batch) as u64;
        self.put_item(batch, slot);
    }

    fn finish_sync(&mut self, result: Result<(), String>) -> Result<(), StoreError> {
        let Some(run) = self.sync_run.take() else {
            return Ok(());
        };
        run.task.abort();
        let now = self.now();
        let interval = self
            .spec
            .sync_interval
            .unwrap_or(crate::config::DEFAULT_SYNC_INTERVAL);
        let ok = result.is_ok();
        let m = &mut self.meta.sync;
        m.last_finished = Some(now);
        let wait = match &result {
            Ok(()) => {
                m.checkpoint = None;
                m.runs_ok += 1;
                m.last_result = Some("ok".into());
                let unit: f64 = rand::random();
                let j = 1.0 + self.settings.jitter * (2.0 * unit - 1.0);
                interval.mul_f64(j.max(0.0))
            }
            Err(e) => {
                m.runs_failed += 1;
                m.last_result = Some(format!("failed: {e}"));
                interval.min(FAILED_SYNC_RETRY)
            }
        };
        m.next_at = Some(now + wait.as_millis() as Millis);
        if let Err(e) = &result {
            // A wrong server is the likelier cause (another server does not know the user).
            let message = match &run.identity_mismatch {
                Some(mismatch) => format!("scheduled sync failed: {e}; {mismatch}"),
                None => format!("scheduled sync failed: {e}"),
            };
            self.record_error(message);
        } else {
            tracing::info!(pair = %self.spec.key, seen = self.meta.sync.seen,
                changed = self.meta.sync.changed, "scheduled sync finished");
        }
        if run.copies > 0 {
            tracing::info!(pair = %self.spec.key, items = run.copies,
                "items with the external ids of another item listed before them (copies of one \
                 film in several libraries or versions) were left alone; the first copy listed \
                 carries the state");
        }
        if run.state_unknown > 0 {
            tracing::warn!(pair = %self.spec.key, items = run.state_unknown,
                "the server listed items without this user's play state, so their state was \
                 not read; check that user_id is the server's id of this user");
        }
        let mut batch = Batch::new();
        if ok {
            self.ignored_keys = run.ignored_keys;
            self.drop_pending_of_ignored(&mut batch);
        }
        // Stored with the run's result: asked again at the next start until answered.
        let siblings = if ok && self.spec.export {
            self.sibling_keys()
        } else {
            Vec::new()
        };
        if !siblings.is_empty() {
            self.meta.catch_up_from = siblings.clone();
        }
        self.put_meta(&mut batch);
        self.commit(batch)?;
        if self.spec.sync_interval.is_some() {
            self.arm_sync_timer(wait);
        }
        self.ask_catch_up(&siblings);
        Ok(())
    }

    /// Changes kept for items that the completed run found only in ignored libraries (no
    /// copy of them is followed here): they would wait for ever.
    fn drop_pending_of_ignored(&mut self, batch: &mut Batch) {
        if self.ignored_keys.is_empty() {
            return;
        }
        let gone: Vec<u64> = self
            .pending
            .iter()
            .filter(|p| {
                key_hashes(&p.identity).any(|k| self.ignored_keys.contains(&k))
                    && self.items.find(&p.identity).is_none()
            })
            .map(|p| p.id)
            .collect();
        for id in gone {
            self.pending.remove(id);
            batch.remove(Tree::Pairs, self.pending_key(id));
        }
    }

    pub fn sync_status(&self) -> SyncStatus {
        let m = &self.meta.sync;
        SyncStatus {
            enabled: self.spec.sync_interval.is_some(),
            running: self.sync_run.is_some(),
            last_started: m.last_started,
            last_finished: m.last_finished,
            last_result: m.last_result.clone(),
            seen: m.seen,
            total: m.total,
            changed: m.changed,
            pushed: m.pushed,
            skipped: m.skipped,
            ignored: m.ignored,
            next_at: if self.spec.sync_interval.is_some() {
                m.next_at
            } else {
                None
            },
            runs_ok: m.runs_ok,
            runs_failed: m.runs_failed,
        }
    }
}
