//! The pair actor (DESIGN.md §5): one per (user, backend). It owns that backend's items for
//! that user, in memory and in the store, and processes one message at a time, so its state
//! needs no locks. The rules live beside it: [`crate::apply`] (webhooks),
//! [`crate::propagate`] (siblings' changes), [`crate::outbox`] (pushes), [`crate::sync`].

use crate::backend::{BackendApi, BackendError, ItemPage};
use crate::clock::Clock;
use crate::config::{PairSpec, SyncSettings};
use crate::event::{JournalEntry, Millis};
use crate::outbox::{Outbox, OutboxEntry};
use crate::propagate::{Pending, PendingEntry, StateChanged};
use crate::relay::Outgoing;
use crate::state::{Item, Items};
use crate::status::{
    ActorState, ConflictRecord, Counters, EventRecord, ItemView, LastError, LastEvent, PairMetrics,
    PairStatus, PushRecord, RequestOutcome,
};
use crate::store::{Batch, PairKey, Store, StoreError, Tree};
use crate::supervisor::{Router, SyncNowError};
use crate::sync::{SyncMeta, SyncRun};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// How many recent events and pushes an actor keeps for status and request traces.
pub const RECENT_LIMIT: usize = 200;
/// How many recent conflicts an actor keeps for status.
pub const CONFLICT_LIMIT: usize = 50;
/// A webhook that changes only the status part of [`PairMeta`] (counters, last event) has it
/// written at most this long after, with whatever came in meanwhile, instead of in its own
/// batch: one write per busy second instead of one per event.
pub const META_WRITE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// After a lookup (`get_item` for an event without usable ids) fails because the server did
/// not answer, events that need one are dropped without asking for this long, so that a
/// server that is down does not hold the pair's queue for a timeout per webhook.
pub const LOOKUP_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything a pair actor receives (DESIGN.md §5).
pub enum PairMsg {
    /// A journalled webhook event for this pair.
    Webhook(Box<JournalEntry>),
    /// A sibling of the same user applied a change.
    StateChanged {
        change: Box<StateChanged>,
        /// The durable record of the change (see [`crate::relay`]), removed in the batch that
        /// stores its handling; `None` for catch-up states, which the next sync sends again.
        relay: Option<Vec<u8>>,
    },
    /// The scheduled sync timer fired; stale generations (rescheduled timers) are ignored.
    SyncTick {
        generation: u64,
    },
    /// The API asks for a sync now.
    SyncNow(RpcReplyPort<Result<(), SyncNowError>>),
    /// One page fetched by the running sync's fetch task.
    SyncPage {
        run: u64,
        result: Result<ItemPage, BackendError>,
        /// See [`PairCore::on_sync_page`].
        touches_before: u64,
    },
    /// The server's identity, read by the running sync's fetch task before its first page.
    SyncIdentity {
        run: u64,
        identity: crate::backend::ServerIdentity,
    },
    /// A push task finished.
    PushResult {
        entry_id: u64,
        result: Result<(), BackendError>,
        latency_ms: u64,
    },
    /// The outbox retry timer fired.
    OutboxWake,
    /// Write the status part of the meta that webhooks left unwritten.
    WriteMeta,
    /// A sibling finished a sync and wants the states this actor knows (rule 8, last step).
    CatchUp {
        requester: PairKey,
    },
    /// A sibling sent every state of its catch-up (after them, in the same mailbox order).
    CatchUpDone {
        from: PairKey,
    },
    RetryDeadLetters(RpcReplyPort<usize>),
    Status(RpcReplyPort<PairStatus>),
    RecentEvents(usize, RpcReplyPort<Vec<EventRecord>>),
    RequestOutcome(String, RpcReplyPort<Option<RequestOutcome>>),
    /// The item with this index key (`m:imdb:tt1`, `e:tvdb:5`), for the items endpoint.
    ItemQuery(Vec<String>, RpcReplyPort<Option<ItemView>>),
}

/// The persisted scalars of a pair: counters, outcomes, ids, sync schedule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PairMeta {
    /// Status counters, kept across restarts.
    pub counters: Counters,
    pub last_event: Option<LastEvent>,
    pub last_error: Option<LastError>,
    /// Schedule, checkpoint and outcome of the scheduled sync.
    pub sync: SyncMeta,
    /// Next id for outbox and pending entries (monotonic per pair).
    pub next_id: u64,
    /// Conflicts ever recorded (rule 4).
    pub conflicts: u64,
    /// Events dropped with "no external ids".
    pub dropped_no_ids: u64,
    /// Push latency and results for `/metrics`.
    pub metrics: PairMetrics,
    /// The `ignore_libraries` the items' marks ([`Item::in_ignored_library`]) were made for.
    #[serde(default)]
    pub ignore_libraries: Vec<String>,
    /// Siblings asked for their states after a completed sync (rule 8) that have not said
    /// they sent them all ([`PairMsg::CatchUpDone`]): asked again at the next start, since
    /// their answers live only in mailboxes and are lost with a stop.
    #[serde(default)]
    pub catch_up_from: Vec<PairKey>,
    /// Whose the item records are: `<server id>/<user id>` (normalised), the server's id as
    /// the sync found it and the configured user's. Another server at the url (a media
    /// server reinstalled with a new database, the url pointed elsewhere) or another user
    /// makes them someone else's: see [`PairCore::forget_records`].
    #[serde(default)]
    pub records_from: Option<String>,
}

/// A played state a push wrote and the server confirmed.
#[derive(Debug, Clone)]
pub struct ConfirmedPlay {
    pub item_id: Box<str>,
    pub played: bool,
    pub at: Millis,
}

/// How long the webhook a server sends about our own write is waited for.
pub const ECHO_WINDOW_MS: Millis = 60_000;

/// At most this many confirmed states are kept for [`PairCore::late_echo`].
const CONFIRMED_KEPT: usize = 1024;

/// Adds `play` at the end of `list`, the oldest going past [`CONFIRMED_KEPT`].
fn push_capped(list: &mut VecDeque<ConfirmedPlay>, play: ConfirmedPlay) {
    if list.len() >= CONFIRMED_KEPT {
        list.pop_front();
    }
    list.push_back(play);
}

/// The oldest entry about `item_id` and `played`.
fn position_of(list: &VecDeque<ConfirmedPlay>, item_id: &str, played: bool) -> Option<usize> {
    list.iter()
        .position(|c| &*c.item_id == item_id && c.played == played)
}

/// What the supervisor hands a pair actor at (re)start.
pub struct PairArgs {
    /// Kept by the supervisor, so a restarted actor gets the same configuration.
    pub spec: PairSpec,
    pub backend: Arc<dyn BackendApi>,
    pub settings: Arc<SyncSettings>,
    /// The actor reloads its state from here at every (re)start.
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub router: Arc<Router>,
    /// Shared with the router, which counts messages it sends; the actor counts them down.
    pub depth: Arc<AtomicUsize>,
    /// True on a restart after a failure: the actor re-reads its own journal entries, since
    /// the events that were in the dead actor's mailbox are still journalled but lost in memory.
    pub replay_journal: bool,
}

/// The actor's state. The rule modules add `impl PairCore` blocks.
pub struct PairCore {
    /// This pair's configuration (switches, interval, ignored libraries).
    pub spec: PairSpec,
    /// `<user>/<backend>/`: every store key of this pair starts with it.
    pub prefix: String,
    /// The only way to the media server.
    pub backend: Arc<dyn BackendApi>,
    pub settings: Arc<SyncSettings>,
    /// Where every effect is persisted before the actor moves on.
    pub store: Arc<dyn Store>,
    /// The one clock of change times (rule 3).
    pub clock: Arc<dyn Clock>,
    /// Reaches the siblings of the same user.
    pub router: Arc<Router>,
    /// Messages queued for this actor (shared with the router), for `mailbox_depth`.
    pub depth: Arc<AtomicUsize>,
    /// For timers and push tasks that report back.
    pub myself: ActorRef<PairMsg>,
    /// The backend's movies and episodes with the external-id index.
    pub items: Items,
    /// Wanted states for items not known yet (rule 5).
    pub pending: Pending,
    /// Pushes waiting for the media server, and dead letters.
    pub outbox: Outbox,
    /// Persisted counters, outcomes, sync schedule.
    pub meta: PairMeta,
    /// Recent events (memory only) for `/events` and request traces.
    pub events: VecDeque<EventRecord>,
    /// Recent push attempts (memory only) for request traces.
    pub pushes: VecDeque<PushRecord>,
    /// Recent conflicts (memory only; the count is persisted).
    pub conflicts: VecDeque<ConflictRecord>,
    /// The running scheduled sync, if any.
    pub sync_run: Option<SyncRun>,
    /// Generation of the armed sync timer; a tick of an older one is ignored.
    pub sync_generation: u64,
    pub sync_timer: Option<JoinHandle<()>>,
    /// The outbox wake timer and the time it is armed for.
    pub outbox_timer: Option<(Millis, JoinHandle<()>)>,
    /// Changes for siblings, sent once the batch holding their relay records is committed.
    pub outgoing: Vec<Outgoing>,
    /// `meta.next_id` as last written: ids handed out must be stored with what uses them.
    pub meta_next_id_written: u64,
    /// The meta changed since it was last written; [`PairMsg::WriteMeta`] is on its way.
    pub meta_timer: Option<JoinHandle<()>>,
    /// Items whose only change since they were stored is `last_seen`: written with the meta.
    pub seen: Vec<u32>,
    /// After a lookup failed because the server did not answer (network, timeout, 5xx, 429):
    /// no lookups until then, and why.
    pub lookups_paused: Option<(Millis, String)>,
    /// Hashes of the identity keys of the items the last completed sync found in ignored
    /// libraries (not registered): the siblings' changes about them are dropped instead of
    /// being kept pending for an item this pair will never register. Memory only; every
    /// completed sync replaces it, before the catch-up that follows it.
    pub ignored_keys: std::collections::HashSet<u64>,
    /// Failed push attempts in a row, for logging an outage once a minute.
    pub push_failures: crate::outbox::FailureLog,
    /// The running push tasks, aborted when the actor stops or fails (see [`PushTasks`]).
    pub push_tasks: PushTasks,
    /// Played states this server confirmed lately, oldest first (memory only): the webhook a
    /// server sends about our own write may arrive after a later push of the item changed
    /// it again (see [`PairCore::late_echo`]).
    pub confirmed_lately: VecDeque<ConfirmedPlay>,
    /// Reports of a played state that came while our push of it was still running: its
    /// confirmation then has had its echo, and is not kept for [`PairCore::late_echo`].
    pub echoed_early: VecDeque<ConfirmedPlay>,
    /// Started again by the supervisor after a failure (not at process start).
    pub restarted: bool,
    /// The journal entries this actor queued to itself at a restart, and whether each has
    /// been applied: one journalled while the actor started is also dispatched to it by the
    /// router, and that second copy is only acknowledged, not applied and counted again
    /// (then the seq is forgotten).
    pub replayed: HashMap<u64, bool>,
}

/// Push tasks by outbox entry id. Dropped with the actor's state, for whatever reason it
/// stops, they are aborted: a restarted actor sends its outbox again, and the old actor's
/// pushes must not go on beside it (a Jellyfin play sent twice counts twice).
#[derive(Default)]
pub struct PushTasks(pub HashMap<u64, tokio::task::AbortHandle>);

impl Drop for PushTasks {
    fn drop(&mut self) {
        for task in self.0.values() {
            task.abort();
        }
    }
}

impl PairCore {
    /// A push of `played` to `item_id` was confirmed now: kept for the server's report of it,
    /// unless that report came already ([`PairCore::echo_before_confirmation`]).
    pub fn note_confirmed(&mut self, item_id: &str, played: bool) {
        let at = self.forget_old_echoes();
        if let Some(i) = position_of(&self.echoed_early, item_id, played) {
            self.echoed_early.remove(i);
            return;
        }
        let play = ConfirmedPlay {
            item_id: item_id.into(),
            played,
            at,
        };
        push_capped(&mut self.confirmed_lately, play);
    }

    /// Drops what is older than [`ECHO_WINDOW_MS`]; returns now.
    fn forget_old_echoes(&mut self) -> Millis {
        let now = self.now();
        let recent = |c: &ConfirmedPlay| now.saturating_sub(c.at) <= ECHO_WINDOW_MS;
        self.echoed_early.retain(recent);
        self.confirmed_lately.retain(recent);
        now
    }

    /// The server reported `played` for `item_id` while our push of that state runs: that
    /// is its report of the push, which has had its echo once confirmed.
    pub fn echo_before_confirmation(&mut self, item_id: &str, played: bool) {
        let play = ConfirmedPlay {
            item_id: item_id.into(),
            played,
            at: self.now(),
        };
        push_capped(&mut self.echoed_early, play);
    }

    /// The server reported a state equal to what it holds: if we wrote it lately, that is
    /// the report of our write, used up here so that it cannot stand for a later one.
    pub fn echo_of_confirmed(&mut self, item_id: &str, played: bool) {
        if let Some(i) = position_of(&self.confirmed_lately, item_id, played) {
            self.confirmed_lately.remove(i);
        }
    }

    /// Whether this server's report (a mark, not a playback) that `item_id` is `played` is the
    /// late webhook about our own push of that state, not the user's action: we wrote `played`
    /// within [`ECHO_WINDOW_MS`] and its report has not come yet, and since then we wrote the
    /// opposite (`opposite_queued`: or it is still to go out). A user who marks and unmarks
    /// quickly elsewhere makes two pushes here; the server's report of the first may come
    /// after the second, and read as the user's newer action it would put the first state
    /// back everywhere. Each confirmed push stands for one report: it is used up.
    pub fn late_echo(&mut self, item_id: &str, played: bool, opposite_queued: bool) -> bool {
        self.forget_old_echoes();
        let Some(i) = position_of(&self.confirmed_lately, item_id, played) else {
            return false;
        };
        let opposite_since = opposite_queued
            || self
                .confirmed_lately
                .iter()
                .skip(i + 1)
                .any(|c| &*c.item_id == item_id && c.played != played);
        if opposite_since {
            self.confirmed_lately.remove(i);
        }
        opposite_since
    }

    pub fn key(&self) -> &PairKey {
        &self.spec.key
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn item_key(&self, item_id: &str) -> Vec<u8> {
        format!("{}i/{}", self.prefix, item_id).into_bytes()
    }
    pub fn pending_key(&self, id: u64) -> Vec<u8> {
        format!("{}p/{:020}", self.prefix, id).into_bytes()
    }
    pub fn outbox_key(&self, id: u64) -> Vec<u8> {
        format!("{}o/{:020}", self.prefix, id).into_bytes()
    }
    pub fn dead_key(&self, id: u64) -> Vec<u8> {
        format!("{}d/{:020}", self.prefix, id).into_bytes()
    }
    pub fn meta_key(&self) -> Vec<u8> {
        format!("{}m", self.prefix).into_bytes()
    }

    pub fn next_id(&mut self) -> u64 {
        self.meta.next_id += 1;
        self.meta.next_id
    }

    /// Whether `lib` is one of the pair's `ignore_libraries`.
    pub fn library_ignored(&self, lib: &str) -> bool {
        self.spec.ignore_libraries.iter().any(|l| l == lib)
    }

    /// The item at `slot` was found in an ignored library, and the pair still ignores some.
    pub fn item_ignored(&self, slot: u32) -> bool {
        !self.spec.ignore_libraries.is_empty() && self.items.get(slot).in_ignored_library
    }

    pub fn put_item(&self, batch: &mut Batch, slot: u32) {
        let item = self.items.get(slot);
        batch.put(
            Tree::Pairs,
            self.item_key(&item.item_id),
            encode(&item.to_stored()),
        );
    }

    pub fn put_meta(&mut self, batch: &mut Batch) {
        batch.put(Tree::Pairs, self.meta_key(), encode(&self.meta));
        let mut seen = std::mem::take(&mut self.seen);
        seen.sort_unstable();
        seen.dedup();
        for slot in seen {
            self.put_item(batch, slot);
        }
        self.meta_next_id_written = self.meta.next_id;
        if let Some(t) = self.meta_timer.take() {
            t.abort();
        }
    }

    /// The item was seen again and nothing else about it changed: its `last_seen` is written
    /// with the meta (the webhook arms the meta's timer), not in this webhook's batch.
    pub fn seen_soon(&mut self, slot: u32) {
        if self.seen.last() != Some(&slot) {
            self.seen.push(slot);
            if self.seen.len() > 1024 {
                self.seen.sort_unstable();
                self.seen.dedup();
            }
        }
    }

    /// After a webhook: the meta goes into `batch` when the event handed out an id (it must
    /// be durable with what uses it); otherwise, when only the status part changed, it is
    /// written within [`META_WRITE_DELAY`]. A crash in between loses only status counts.
    pub fn put_meta_soon(&mut self, batch: &mut Batch) {
        if self.meta.next_id != self.meta_next_id_written {
            self.put_meta(batch);
            return;
        }
        if self.meta_timer.is_none() {
            let me = self.myself.clone();
            self.meta_timer = Some(tokio::spawn(async move {
                tokio::time::sleep(META_WRITE_DELAY).await;
                let _ = me.cast(PairMsg::WriteMeta);
            }));
        }
    }

    /// Write the meta now if a webhook left it unwritten.
    pub fn write_pending_meta(&mut self) -> Result<(), StoreError> {
        if self.meta_timer.is_none() {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.put_meta(&mut batch);
        self.commit(batch)
    }

    pub fn put_outbox(&self, batch: &mut Batch, entry: &OutboxEntry) {
        batch.put(Tree::Pairs, self.outbox_key(entry.id), encode(entry));
    }

    /// Write a batch; a failing store fails the actor, and the supervisor restarts it from
    /// what was persisted (the journal still holds the unapplied event). Changes for siblings
    /// go out only once their relay records are stored, and are dropped with a failed batch.
    pub fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        if !batch.is_empty() {
            if let Err(e) = self.store.apply(batch) {
                self.outgoing.clear();
                return Err(e);
            }
        }
        self.send_outgoing();
        Ok(())
    }

    pub fn record_error(&mut self, message: String) {
        tracing::warn!(pair = %self.spec.key, "{message}");
        self.set_last_error(message);
    }

    /// The status's `last_error`, without a log line.
    pub fn set_last_error(&mut self, message: String) {
        self.meta.last_error = Some(LastError {
            at: self.now(),
            message,
        });
    }

    pub fn push_event_record(&mut self, rec: EventRecord) {
        if self.events.len() >= RECENT_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(rec);
    }

    pub fn push_push_record(&mut self, rec: PushRecord) {
        if self.pushes.len() >= RECENT_LIMIT {
            self.pushes.pop_front();
        }
        self.pushes.push_back(rec);
    }

    /// Send a message to another pair through the router (never fails the sender).
    pub fn send_to(&self, key: &PairKey, msg: PairMsg) {
        if let Err(e) = self.router.send(key, msg) {
            tracing::warn!(from = %self.spec.key, to = %key, "cannot reach sibling: {e}");
        }
    }

    /// Load everything persisted under this pair's prefix.
    fn load(&mut self) -> Result<(), StoreError> {
        let rows = self
            .store
            .scan_prefix(Tree::Pairs, self.prefix.as_bytes())?;
        let plen = self.prefix.len();
        let items = rows
            .iter()
            .filter(|(k, _)| k[plen..].starts_with(b"i/"))
            .count();
        self.items.reserve(items);
        for (k, v) in rows {
            let rest = &k[plen..];
            let bad = |what: &str| {
                StoreError(format!(
                    "cannot decode {what} at {}: delete it or restore a backup",
                    String::from_utf8_lossy(&k)
                ))
            };
            if rest == b"m" {
                self.meta = decode(&v).ok_or_else(|| bad("pair meta"))?;
                self.meta_next_id_written = self.meta.next_id;
            } else if rest.starts_with(b"i/") {
                let item = Item::decode_stored(&v).ok_or_else(|| bad("item"))?;
                self.items.insert(item);
            } else if rest.starts_with(b"p/") {
                let p: PendingEntry = decode(&v).ok_or_else(|| bad("pending state"))?;
                self.pending.insert(p);
            } else if rest.starts_with(b"o/") {
                let e: OutboxEntry = decode(&v).ok_or_else(|| bad("outbox entry"))?;
                self.outbox.insert(e);
            } else if rest.starts_with(b"d/") {
                let e: OutboxEntry = decode(&v).ok_or_else(|| bad("dead letter"))?;
                self.outbox.dead.insert(e.id, e);
            }
            // `r/`: relay records, handled (and removed) by `handle_relays` once loaded.
        }
        self.items.shrink();
        Ok(())
    }

    /// The marks of items in ignored libraries hold for the libraries they were made for:
    /// when one of those is no longer ignored, the marks are cleared (the next sync marks the
    /// items still in ignored libraries again) rather than keep ignoring its items until then.
    fn forget_stale_ignore_marks(&mut self) -> Result<(), StoreError> {
        if self.meta.ignore_libraries == self.spec.ignore_libraries {
            return Ok(());
        }
        let mut batch = Batch::new();
        let dropped = self
            .meta
            .ignore_libraries
            .iter()
            .any(|l| !self.library_ignored(l));
        if dropped {
            let marked: Vec<u32> = self
                .items
                .iter()
                .filter(|(_, i)| i.in_ignored_library)
                .map(|(slot, _)| slot)
                .collect();
            for slot in marked {
                self.items.get_mut(slot).in_ignored_library = false;
                self.put_item(&mut batch, slot);
            }
        }
        self.meta.ignore_libraries = self.spec.ignore_libraries.clone();
        self.put_meta(&mut batch);
        self.commit(batch)
    }

    fn state(&self) -> ActorState {
        if self.sync_run.is_some() {
            ActorState::Syncing
        } else if self.depth.load(Ordering::Relaxed) > 0 {
            ActorState::Processing
        } else if !self.outbox.in_flight.is_empty() {
            ActorState::Pushing
        } else {
            ActorState::Idle
        }
    }

    pub fn status(&self) -> PairStatus {
        PairStatus {
            user: self.spec.key.user.clone(),
            backend: self.spec.key.backend.clone(),
            kind: self.spec.kind,
            server_id: self.spec.server_id.clone(),
            backend_user_id: self.spec.backend_user_id.clone(),
            import: self.spec.import,
            export: self.spec.export,
            state: self.state(),
            items: self.items.len(),
            mailbox_depth: self.depth.load(Ordering::Relaxed),
            last_event: self.meta.last_event.clone(),
            counters: self.meta.counters.clone(),
            outbox: self.outbox_status(),
            sync: self.sync_status(),
            last_error: self.meta.last_error.clone(),
            restarts: 0,
            pending: self.pending.len(),
            conflicts: crate::status::ConflictStatus {
                count: self.meta.conflicts,
                recent: self.conflicts.iter().rev().take(10).cloned().collect(),
            },
            dropped_no_ids: self.meta.dropped_no_ids,
            metrics: self.meta.metrics.clone(),
        }
    }

    fn request_outcome(&self, request_id: &str) -> Option<RequestOutcome> {
        let event = self
            .events
            .iter()
            .rev()
            .find(|e| e.request_id == request_id)
            .cloned();
        let pushes: Vec<PushRecord> = self
            .pushes
            .iter()
            .filter(|p| p.request_id == request_id)
            .cloned()
            .collect();
        if event.is_none() && pushes.is_empty() {
            return None;
        }
        Some(RequestOutcome {
            pair: self.spec.key.clone(),
            event,
            pushes,
        })
    }

    fn item_view(&self, keys: &[String]) -> Option<ItemView> {
        let slot = keys.iter().find_map(|k| self.items.find_key(k));
        let item = slot.map(|s| self.items.get(s).to_stored());
        let pending = self.pending.view_for_keys(keys);
        let outbox = item
            .as_ref()
            .map(|i| self.outbox_view(&i.item_id))
            .unwrap_or_default();
        let conflicts: Vec<ConflictRecord> = match &item {
            Some(i) => {
                let d = i.identity.describe();
                self.conflicts
                    .iter()
                    .filter(|c| c.identity == d)
                    .cloned()
                    .collect()
            }
            None => Vec::new(),
        };
        if item.is_none() && pending.is_none() {
            return None;
        }
        Some(ItemView {
            item,
            pending,
            outbox,
            conflicts,
        })
    }
}

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("state types serialise to JSON")
}

pub fn decode<T: for<'de> Deserialize<'de>>(v: &[u8]) -> Option<T> {
    serde_json::from_slice(v).ok()
}

/// The ractor actor; its state is [`PairCore`].
pub struct PairActor;

impl Actor for PairActor {
    type Msg = PairMsg;
    type State = PairCore;
    type Arguments = PairArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<PairMsg>,
        args: PairArgs,
    ) -> Result<PairCore, ActorProcessingErr> {
        let prefix = format!("{}/{}/", args.spec.key.user, args.spec.key.backend);
        let mut core = PairCore {
            spec: args.spec,
            prefix,
            backend: args.backend,
            settings: args.settings,
            store: args.store,
            clock: args.clock,
            router: args.router,
            depth: args.depth,
            myself,
            items: Items::default(),
            pending: Pending::default(),
            outbox: Outbox::default(),
            meta: PairMeta::default(),
            events: VecDeque::new(),
            pushes: VecDeque::new(),
            conflicts: VecDeque::new(),
            sync_run: None,
            sync_generation: 0,
            sync_timer: None,
            outbox_timer: None,
            outgoing: Vec::new(),
            meta_next_id_written: 0,
            meta_timer: None,
            seen: Vec::new(),
            lookups_paused: None,
            ignored_keys: Default::default(),
            push_failures: Default::default(),
            push_tasks: Default::default(),
            confirmed_lately: VecDeque::new(),
            echoed_early: VecDeque::new(),
            restarted: args.replay_journal,
            replayed: HashMap::new(),
        };
        core.load()?;
        core.forget_stale_ignore_marks()?;
        // Changes relayed to this pair before a stop come first: they were made before
        // anything a sibling sends from now on, and before this pair's journal replay.
        core.handle_relays()?;
        if args.replay_journal {
            core.replay_own_journal()?;
        }
        Ok(core)
    }

    async fn post_start(
        &self,
        _myself: ActorRef<PairMsg>,
        core: &mut PairCore,
    ) -> Result<(), ActorProcessingErr> {
        core.schedule_first_sync();
        // At process start only: an actor that keeps failing would otherwise have its
        // siblings send every state at each restart.
        if !core.restarted {
            core.ask_catch_up_again();
        }
        core.pump_outbox();
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PairMsg>,
        core: &mut PairCore,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = core.sync_timer.take() {
            t.abort();
        }
        if let Some((_, t)) = core.outbox_timer.take() {
            t.abort();
        }
        if let Some(run) = core.sync_run.take() {
            run.task.abort();
        }
        if let Err(e) = core.write_pending_meta() {
            tracing::warn!(pair = %core.spec.key, error = %e, "cannot write the pair's status counts at stop");
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<PairMsg>,
        msg: PairMsg,
        core: &mut PairCore,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PairMsg::Webhook(entry) => {
                let r = core.on_webhook(*entry).await;
                core.depth_down();
                r?;
                core.pump_outbox();
            }
            PairMsg::StateChanged { change, relay } => {
                let r = core.on_state_changed(*change, relay);
                core.depth_down();
                r?;
                core.pump_outbox();
            }
            PairMsg::SyncTick { generation } => {
                if generation == core.sync_generation && core.sync_run.is_none() {
                    core.start_sync()?;
                }
            }
            PairMsg::SyncNow(reply) => {
                let r = if core.sync_run.is_some() {
                    Err(SyncNowError::AlreadyRunning(core.spec.key.clone()))
                } else {
                    core.start_sync().map_err(|e| SyncNowError::Store(e.0))
                };
                let _ = reply.send(r);
            }
            PairMsg::SyncPage {
                run,
                result,
                touches_before,
            } => {
                core.on_sync_page(run, result, touches_before)?;
                core.pump_outbox();
            }
            PairMsg::SyncIdentity { run, identity } => core.on_sync_identity(run, &identity)?,
            PairMsg::PushResult {
                entry_id,
                result,
                latency_ms,
            } => {
                core.on_push_result(entry_id, result, latency_ms)?;
                core.pump_outbox();
            }
            PairMsg::OutboxWake => {
                core.outbox_timer = None;
                core.pump_outbox();
            }
            PairMsg::WriteMeta => core.write_pending_meta()?,
            PairMsg::CatchUp { requester } => core.on_catch_up(&requester),
            PairMsg::CatchUpDone { from } => core.on_catch_up_done(&from)?,
            PairMsg::RetryDeadLetters(reply) => {
                let n = core.retry_dead_letters()?;
                let _ = reply.send(n);
                core.pump_outbox();
            }
            PairMsg::Status(reply) => {
                let _ = reply.send(core.status());
            }
            PairMsg::RecentEvents(limit, reply) => {
                let ev: Vec<EventRecord> = core.events.iter().rev().take(limit).cloned().collect();
                let _ = reply.send(ev);
            }
            PairMsg::RequestOutcome(id, reply) => {
                let _ = reply.send(core.request_outcome(&id));
            }
            PairMsg::ItemQuery(keys, reply) => {
                let _ = reply.send(core.item_view(&keys));
            }
        }
        Ok(())
    }
}

impl PairCore {
    /// Queue this pair's journal entries (JSON-encoded [`JournalEntry`] values) to itself, in
    /// sequence order. Applying an already-applied entry changes nothing (state equality).
    fn replay_own_journal(&mut self) -> Result<(), StoreError> {
        let mut n = 0;
        for (_, v) in self.store.scan_prefix(Tree::Journal, b"")? {
            let Some(entry) = decode::<JournalEntry>(&v) else {
                continue;
            };
            if entry.pair != self.spec.key {
                continue;
            }
            self.depth.fetch_add(1, Ordering::Relaxed);
            let seq = entry.seq;
            if self.myself.cast(PairMsg::Webhook(Box::new(entry))).is_err() {
                self.depth_down();
            } else {
                self.replayed.insert(seq, false);
            }
            n += 1;
        }
        if n > 0 {
            tracing::info!(pair = %self.spec.key, entries = n, "replaying journal after a restart");
        }
        Ok(())
    }

    fn depth_down(&self) {
        let _ = self
            .depth
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| d.checked_sub(1));
    }
}
