//! The supervisor (DESIGN.md §5) and [`SupervisorHandle`], the only entry point of the rest of
//! the program into the actor system.
//!
//! Messages reach pair actors through a shared [`Router`] (a read-mostly table of actor
//! references), so routing never queues behind one supervisor mailbox. While a pair actor is
//! being restarted its messages go to the supervisor, which buffers them and hands them to the
//! new actor, so nothing sent during a restart is lost.

use crate::backend::BackendApi;
use crate::clock::Clock;
use crate::config::{PairSpec, SyncSettings};
use crate::event::JournalEntry;
use crate::pair::{PairActor, PairArgs, PairMsg};
use crate::status::{
    ActorState, ConflictStatus, Counters, EventRecord, ItemView, LastError, OutboxStatus,
    PairMetrics, PairStatus, ReadyReport, RequestOutcome, SyncStatus,
};
use crate::store::{PairKey, Store};
use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, ActorStatus, MessagingErr, SupervisionEvent,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// How long a status query waits for one actor, so one stuck actor cannot hang the API.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// First restart delay of a failed actor; doubles per consecutive failure up to the max.
pub const RESTART_BASE: Duration = Duration::from_millis(500);
pub const RESTART_MAX: Duration = Duration::from_secs(60);
/// Messages kept for a pair that is down (besides webhooks and relayed changes, which are
/// never kept: the restart re-reads them); past this many, the rest are dropped.
pub const MAX_BUFFERED: usize = 1000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ActorsError {
    #[error("unknown pair {0}: no such user/backend in the configuration")]
    UnknownPair(PairKey),
    #[error("pair {0} is configured twice; remove the duplicate from config.toml")]
    DuplicatePair(PairKey),
    #[error("the actor system is not running (shut down or failed to start)")]
    NotRunning,
    #[error("the actor of {0} did not answer in time; it may be busy, see its status")]
    Timeout(PairKey),
    #[error("cannot start the supervisor: {0}")]
    Spawn(String),
    #[error("storage error in the actor of {0}: {1}")]
    Store(PairKey, String),
}

/// Why `sync_now` did not start a run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SyncNowError {
    #[error("a sync of {0} is already running; wait for it to finish")]
    AlreadyRunning(PairKey),
    #[error("unknown pair {0}: no such user/backend in the configuration")]
    UnknownPair(PairKey),
    #[error("the actor of {0} is not available right now (restarting or busy); try again")]
    Unavailable(PairKey),
    #[error("storage error while starting the sync: {0}")]
    Store(String),
}

/// A pair's entry in the routing table.
struct Slot {
    /// `None` while the actor is being (re)started.
    actor: Option<ActorRef<PairMsg>>,
    /// Messages sent and not yet handled; shown as `mailbox_depth`.
    depth: Arc<AtomicUsize>,
    /// Set by the supervisor while the actor is down (backoff / failed).
    down: Option<ActorState>,
    /// Restarts so far, shown in status.
    restarts: u32,
    /// Why it went down, shown while it is down.
    last_failure: Option<LastError>,
}

/// Shared routing table: pair → actor, plus the static sibling lists of each user.
pub struct Router {
    slots: RwLock<HashMap<PairKey, Slot>>,
    /// user → [(pair, export)], in configuration order.
    siblings: HashMap<String, Vec<(PairKey, bool)>>,
    /// Where messages for a pair that is down are buffered.
    supervisor: OnceLock<ActorRef<SupMsg>>,
}

impl Router {
    /// The other pairs of the same user, with their `export` switch.
    pub fn siblings(&self, key: &PairKey) -> Vec<(PairKey, bool)> {
        self.siblings
            .get(&key.user)
            .map(|v| v.iter().filter(|(k, _)| k != key).cloned().collect())
            .unwrap_or_default()
    }

    /// Deliver to a pair actor; while it is down the supervisor buffers the message.
    pub fn send(&self, key: &PairKey, msg: PairMsg) -> Result<(), ActorsError> {
        let counted = matches!(msg, PairMsg::Webhook(_) | PairMsg::StateChanged { .. });
        let (actor, depth) = {
            let slots = self.slots.read().expect("router lock");
            let slot = slots
                .get(key)
                .ok_or_else(|| ActorsError::UnknownPair(key.clone()))?;
            (slot.actor.clone(), slot.depth.clone())
        };
        if counted {
            depth.fetch_add(1, Ordering::Relaxed);
        }
        let msg = match actor {
            Some(a) => match a.send_message(msg) {
                Ok(()) => return Ok(()),
                Err(MessagingErr::SendErr(m)) => m,
                Err(_) => {
                    if counted {
                        depth.fetch_sub(1, Ordering::Relaxed);
                    }
                    return Err(ActorsError::NotRunning);
                }
            },
            None => msg,
        };
        let sent = self
            .supervisor
            .get()
            .map(|s| s.send_message(SupMsg::Route(key.clone(), msg)).is_ok())
            .unwrap_or(false);
        if !sent {
            if counted {
                depth.fetch_sub(1, Ordering::Relaxed);
            }
            return Err(ActorsError::NotRunning);
        }
        Ok(())
    }

    fn actor(&self, key: &PairKey) -> Result<Option<ActorRef<PairMsg>>, ActorsError> {
        let slots = self.slots.read().expect("router lock");
        slots
            .get(key)
            .map(|s| s.actor.clone())
            .ok_or_else(|| ActorsError::UnknownPair(key.clone()))
    }
}

fn depth_of(router: &Router, key: &PairKey) -> Arc<AtomicUsize> {
    let slots = router.slots.read().expect("router lock");
    slots[key].depth.clone()
}

/// Messages of the supervisor actor.
pub enum SupMsg {
    /// A message for a pair whose actor is down: buffer it until the restart.
    Route(PairKey, PairMsg),
    /// Backoff elapsed: start the pair's actor again.
    Restart(PairKey),
    /// Stop every pair actor, then reply.
    Shutdown(ractor::RpcReplyPort<()>),
}

/// What the supervisor needs to (re)start pair actors.
pub struct SupArgs {
    /// One pair actor per entry.
    specs: Vec<(PairSpec, Arc<dyn BackendApi>)>,
    settings: Arc<SyncSettings>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    router: Arc<Router>,
}

pub struct SupState {
    /// Kept to restart a pair with the same configuration and client.
    specs: HashMap<PairKey, (PairSpec, Arc<dyn BackendApi>)>,
    settings: Arc<SyncSettings>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    router: Arc<Router>,
    /// Messages for pairs that are down, in arrival order (see [`SupState::buffer`]).
    buffered: HashMap<PairKey, Vec<PairMsg>>,
    /// Pairs that dropped messages past [`MAX_BUFFERED`] since they went down (warned once).
    overflowed: std::collections::HashSet<PairKey>,
    /// Which pair a linked actor is, to handle its supervision events.
    by_actor: HashMap<ActorId, PairKey>,
    /// Set by `Shutdown`: stopped actors are then not restarted.
    shutting_down: bool,
}

/// The supervisor actor: spawns, restarts and stops the pair actors.
pub struct Supervisor;

impl SupState {
    /// What a pair actor is started with; `None` for a pair that is not configured.
    /// `restart`: the actor replays its own entries still in the journal (at process start
    /// the journal replay does that for everyone).
    fn pair_args(&self, key: &PairKey, restart: bool) -> Option<PairArgs> {
        let (spec, backend) = self.specs.get(key).cloned()?;
        Some(PairArgs {
            spec,
            backend,
            settings: self.settings.clone(),
            store: self.store.clone(),
            clock: self.clock.clone(),
            router: self.router.clone(),
            depth: depth_of(&self.router, key),
            replay_journal: restart,
        })
    }

    async fn spawn_pair(&mut self, myself: &ActorRef<SupMsg>, key: &PairKey, restart: bool) {
        let Some(args) = self.pair_args(key, restart) else {
            return;
        };
        depth_of(&self.router, key).store(0, Ordering::Relaxed);
        let started = Actor::spawn_linked(None, PairActor, args, myself.get_cell()).await;
        self.register(myself, key, started);
    }

    /// Start every pair at once, each in its own task: an actor loads its items in
    /// `pre_start`, which ractor runs in the spawning task, so one task starting them in
    /// turn used one core (10 000 actors × 100 items took 3.6 s in `benches/actors.rs`).
    async fn spawn_all(&mut self, myself: &ActorRef<SupMsg>, order: &[PairKey]) {
        let mut tasks = tokio::task::JoinSet::new();
        let mut waiting: std::collections::HashSet<PairKey> = Default::default();
        for key in order {
            let Some(args) = self.pair_args(key, false) else {
                continue;
            };
            let cell = myself.get_cell();
            let key = key.clone();
            waiting.insert(key.clone());
            tasks.spawn(async move {
                let started = Actor::spawn_linked(None, PairActor, args, cell).await;
                (key, started)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((key, started)) => {
                    waiting.remove(&key);
                    self.register(myself, &key, started);
                }
                Err(e) => tracing::error!("a pair actor's start task failed: {e}"),
            }
        }
        // A start task that panicked left its pair down: restart it with backoff.
        for key in waiting {
            let message = "the actor's start task failed".to_string();
            self.mark_down(myself, &key, ActorState::Failed, message);
        }
    }

    /// A message for a pair whose actor is down. Webhooks and relayed changes are not kept:
    /// they are durable (the journal, the relay records) and the restarted actor re-reads
    /// them before any message, so a pair that stays down does not collect every webhook
    /// for it in memory, nor get each one twice once back. Anything else (a catch-up state,
    /// which the next sync sends again; a status query) waits for the restart, up to
    /// [`MAX_BUFFERED`] per pair.
    fn buffer(&mut self, key: PairKey, m: PairMsg) {
        let counted = matches!(m, PairMsg::Webhook(_) | PairMsg::StateChanged { .. });
        let durable = matches!(
            m,
            PairMsg::Webhook(_) | PairMsg::StateChanged { relay: Some(_), .. }
        );
        let queue = self.buffered.entry(key.clone()).or_default();
        if !durable && queue.len() < MAX_BUFFERED {
            queue.push(m);
            return;
        }
        if counted {
            let _ = depth_of(&self.router, &key).fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |d| d.checked_sub(1),
            );
        }
        if !durable && self.overflowed.insert(key.clone()) {
            tracing::warn!(pair = %key, max = MAX_BUFFERED,
                "the pair is down with {MAX_BUFFERED} messages waiting; later ones are dropped until it is back (webhooks are kept in the journal, catch-up states come again with the next sync)");
        }
    }

    fn register(
        &mut self,
        myself: &ActorRef<SupMsg>,
        key: &PairKey,
        started: Result<(ActorRef<PairMsg>, tokio::task::JoinHandle<()>), ractor::SpawnErr>,
    ) {
        match started {
            Ok((actor, _join)) => {
                self.by_actor.insert(actor.get_id(), key.clone());
                self.overflowed.remove(key);
                let buffered = self.buffered.remove(key).unwrap_or_default();
                // The depth was reset before the start (messages that died with the old
                // mailbox are gone; webhooks stay in the journal), and the replay counted what
                // it queued: add what the new actor receives from the buffer.
                let counted = buffered
                    .iter()
                    .filter(|m| matches!(m, PairMsg::Webhook(_) | PairMsg::StateChanged { .. }))
                    .count();
                depth_of(&self.router, key).fetch_add(counted, Ordering::Relaxed);
                for m in buffered {
                    if let Err(e) = actor.send_message(m) {
                        tracing::warn!(pair = %key, "lost a buffered message: {e:?}");
                    }
                }
                let mut slots = self.router.slots.write().expect("router lock");
                let slot = slots.get_mut(key).expect("slot exists for every spec");
                slot.actor = Some(actor);
                slot.down = None;
            }
            Err(e) => {
                let message = format!("cannot start the actor: {e}");
                tracing::error!(pair = %key, "{message}");
                self.mark_down(myself, key, ActorState::Failed, message);
            }
        }
    }

    fn mark_down(
        &mut self,
        myself: &ActorRef<SupMsg>,
        key: &PairKey,
        state: ActorState,
        message: String,
    ) {
        let restarts = {
            let mut slots = self.router.slots.write().expect("router lock");
            let slot = slots.get_mut(key).expect("slot exists for every spec");
            slot.actor = None;
            slot.down = Some(state);
            slot.restarts += 1;
            slot.last_failure = Some(LastError {
                at: self.clock.now_ms(),
                message,
            });
            slot.restarts
        };
        let exp = restarts.saturating_sub(1).min(16);
        let delay = RESTART_BASE.saturating_mul(1 << exp).min(RESTART_MAX);
        let key = key.clone();
        myself.send_after(delay, move || SupMsg::Restart(key));
    }
}

impl Actor for Supervisor {
    type Msg = SupMsg;
    type State = SupState;
    type Arguments = SupArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SupMsg>,
        args: SupArgs,
    ) -> Result<SupState, ActorProcessingErr> {
        let order: Vec<PairKey> = args.specs.iter().map(|(s, _)| s.key.clone()).collect();
        // Before any pair starts: a pair that sends to a sibling not started yet (a catch-up
        // asked again at start) reaches the supervisor, which delivers it once all are up.
        let _ = args.router.supervisor.set(myself.clone());
        let mut state = SupState {
            specs: args
                .specs
                .into_iter()
                .map(|(s, b)| (s.key.clone(), (s, b)))
                .collect(),
            settings: args.settings,
            store: args.store,
            clock: args.clock,
            router: args.router,
            buffered: HashMap::new(),
            overflowed: Default::default(),
            by_actor: HashMap::new(),
            shutting_down: false,
        };
        state.spawn_all(&myself, &order).await;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupMsg>,
        msg: SupMsg,
        state: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupMsg::Route(key, m) => {
                let actor = state.router.actor(&key).ok().flatten();
                let m = match actor {
                    Some(a) => match a.send_message(m) {
                        Ok(()) => return Ok(()),
                        Err(MessagingErr::SendErr(m)) => m,
                        Err(_) => return Ok(()),
                    },
                    None => m,
                };
                if !state.shutting_down {
                    state.buffer(key, m);
                }
            }
            SupMsg::Restart(key) => {
                if !state.shutting_down {
                    tracing::info!(pair = %key, "restarting pair actor");
                    state.spawn_pair(&myself, &key, true).await;
                }
            }
            SupMsg::Shutdown(reply) => {
                state.shutting_down = true;
                let actors: Vec<ActorRef<PairMsg>> = {
                    let mut slots = state.router.slots.write().expect("router lock");
                    slots.values_mut().filter_map(|s| s.actor.take()).collect()
                };
                for a in actors {
                    let _ = a
                        .stop_and_wait(Some("shutdown".into()), Some(CALL_TIMEOUT))
                        .await;
                }
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupMsg>,
        evt: SupervisionEvent,
        state: &mut SupState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, message) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("actor failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!(
                    "actor stopped unexpectedly: {}",
                    reason.unwrap_or_else(|| "no reason".into())
                ),
            ),
            _ => return Ok(()),
        };
        let Some(key) = state.by_actor.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.shutting_down {
            return Ok(());
        }
        tracing::error!(pair = %key, "{message}; restarting with backoff");
        state.mark_down(&myself, &key, ActorState::Backoff, message);
        Ok(())
    }
}

/// A status object for a pair whose actor cannot answer right now.
fn unavailable_status(
    spec: &PairSpec,
    state: ActorState,
    depth: usize,
    last_error: Option<LastError>,
) -> PairStatus {
    PairStatus {
        user: spec.key.user.clone(),
        backend: spec.key.backend.clone(),
        kind: spec.kind,
        server_id: spec.server_id.clone(),
        backend_user_id: spec.backend_user_id.clone(),
        import: spec.import,
        export: spec.export,
        state,
        items: 0,
        mailbox_depth: depth,
        last_event: None,
        counters: Counters::default(),
        outbox: OutboxStatus::default(),
        sync: SyncStatus {
            enabled: spec.sync_interval.is_some(),
            ..SyncStatus::default()
        },
        last_error,
        restarts: 0,
        pending: 0,
        conflicts: ConflictStatus::default(),
        dropped_no_ids: 0,
        metrics: PairMetrics::default(),
    }
}

/// The cloneable entry point of the program into the actor system.
#[derive(Clone)]
pub struct SupervisorHandle {
    router: Arc<Router>,
    /// For shutdown.
    supervisor: ActorRef<SupMsg>,
    /// Specs in configuration order, for status listings and fallbacks.
    specs: Arc<Vec<PairSpec>>,
    /// Flushed at shutdown.
    store: Arc<dyn Store>,
}

impl SupervisorHandle {
    /// Spawn the supervisor and one pair actor per spec; each loads its state from the store.
    pub async fn start(
        specs: Vec<(PairSpec, Arc<dyn BackendApi>)>,
        settings: SyncSettings,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ActorsError> {
        let mut slots = HashMap::new();
        let mut siblings: HashMap<String, Vec<(PairKey, bool)>> = HashMap::new();
        for (spec, _) in &specs {
            let slot = Slot {
                actor: None,
                depth: Arc::new(AtomicUsize::new(0)),
                down: Some(ActorState::Failed),
                restarts: 0,
                last_failure: None,
            };
            if slots.insert(spec.key.clone(), slot).is_some() {
                return Err(ActorsError::DuplicatePair(spec.key.clone()));
            }
            siblings
                .entry(spec.key.user.clone())
                .or_default()
                .push((spec.key.clone(), spec.export));
        }
        let router = Arc::new(Router {
            slots: RwLock::new(slots),
            siblings,
            supervisor: OnceLock::new(),
        });
        let spec_list: Vec<PairSpec> = specs.iter().map(|(s, _)| s.clone()).collect();
        let args = SupArgs {
            specs,
            settings: Arc::new(settings),
            store: store.clone(),
            clock,
            router: router.clone(),
        };
        let (supervisor, _join) = Actor::spawn(None, Supervisor, args)
            .await
            .map_err(|e| ActorsError::Spawn(e.to_string()))?;
        Ok(SupervisorHandle {
            router,
            supervisor,
            specs: Arc::new(spec_list),
            store,
        })
    }

    /// Hand a journalled event to its pair actor (cast). The actor removes the journal entry
    /// in the batch that persists the effect, whatever the outcome.
    pub fn dispatch(&self, entry: JournalEntry) -> Result<(), ActorsError> {
        let key = entry.pair.clone();
        self.router.send(&key, PairMsg::Webhook(Box::new(entry)))
    }

    /// Every configured pair, in configuration order.
    pub fn pairs(&self) -> Vec<PairKey> {
        self.specs.iter().map(|s| s.key.clone()).collect()
    }

    pub async fn pair_status(&self, key: &PairKey) -> Option<PairStatus> {
        let spec = self.specs.iter().find(|s| &s.key == key)?;
        let (actor, down, restarts, failure, depth) = {
            let slots = self.router.slots.read().expect("router lock");
            let s = slots.get(key)?;
            (
                s.actor.clone(),
                s.down,
                s.restarts,
                s.last_failure.clone(),
                s.depth.load(Ordering::Relaxed),
            )
        };
        let mut status = match actor {
            Some(a) => match a.call(PairMsg::Status, Some(CALL_TIMEOUT)).await {
                Ok(CallResult::Success(s)) => s,
                _ => unavailable_status(
                    spec,
                    ActorState::Processing,
                    depth,
                    Some(LastError {
                        at: 0,
                        message: "the actor did not answer the status query in time".into(),
                    }),
                ),
            },
            None => unavailable_status(
                spec,
                down.unwrap_or(ActorState::Failed),
                depth,
                failure.clone(),
            ),
        };
        status.restarts = restarts;
        if status.last_error.is_none() {
            status.last_error = failure;
        }
        Some(status)
    }

    pub async fn all_status(&self) -> Vec<PairStatus> {
        let mut set = tokio::task::JoinSet::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let h = self.clone();
            let key = spec.key.clone();
            set.spawn(async move { (i, h.pair_status(&key).await) });
        }
        let mut out: Vec<(usize, PairStatus)> = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((i, Some(s))) = r {
                out.push((i, s));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// The pair's most recent events, newest first; `None` for an unknown pair.
    pub async fn recent_events(&self, key: &PairKey, limit: usize) -> Option<Vec<EventRecord>> {
        let actor = self.router.actor(key).ok()?;
        let Some(a) = actor else {
            return Some(Vec::new());
        };
        match a
            .call(|r| PairMsg::RecentEvents(limit, r), Some(CALL_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(v)) => Some(v),
            _ => Some(Vec::new()),
        }
    }

    /// What each actor did with one webhook request, and the pushes it caused.
    pub async fn request_outcomes(&self, request_id: &str) -> Vec<RequestOutcome> {
        let mut set = tokio::task::JoinSet::new();
        for (i, spec) in self.specs.iter().enumerate() {
            let Ok(Some(a)) = self.router.actor(&spec.key) else {
                continue;
            };
            let id = request_id.to_string();
            set.spawn(async move {
                let r = a
                    .call(|r| PairMsg::RequestOutcome(id, r), Some(CALL_TIMEOUT))
                    .await;
                (i, r)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok((i, Ok(CallResult::Success(Some(o))))) = r {
                out.push((i, o));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, o)| o).collect()
    }

    /// The item named by `provider:id` on each backend of the user (movie or episode ids),
    /// with pending wanted states, queued pushes and conflicts.
    pub async fn item_states(
        &self,
        user: &str,
        provider: &str,
        id: &str,
    ) -> Vec<(PairKey, Option<ItemView>)> {
        let p = provider.trim().to_lowercase();
        let id = id.trim();
        let keys = vec![format!("m:{p}:{id}"), format!("e:{p}:{id}")];
        let mut out = Vec::new();
        for spec in self.specs.iter().filter(|s| s.key.user == user) {
            let view = match self.router.actor(&spec.key) {
                Ok(Some(a)) => {
                    let k = keys.clone();
                    match a
                        .call(|r| PairMsg::ItemQuery(k, r), Some(CALL_TIMEOUT))
                        .await
                    {
                        Ok(CallResult::Success(v)) => v,
                        _ => None,
                    }
                }
                _ => None,
            };
            out.push((spec.key.clone(), view));
        }
        out
    }

    /// Start the pair's scheduled sync now.
    pub async fn sync_now(&self, key: &PairKey) -> Result<(), SyncNowError> {
        let actor = self
            .router
            .actor(key)
            .map_err(|_| SyncNowError::UnknownPair(key.clone()))?
            .ok_or_else(|| SyncNowError::Unavailable(key.clone()))?;
        match actor.call(PairMsg::SyncNow, Some(CALL_TIMEOUT)).await {
            Ok(CallResult::Success(r)) => r,
            _ => Err(SyncNowError::Unavailable(key.clone())),
        }
    }

    /// Put the pair's dead letters back into its outbox; returns how many.
    pub async fn retry_dead_letters(&self, key: &PairKey) -> Result<usize, ActorsError> {
        let actor = self.router.actor(key)?.ok_or(ActorsError::NotRunning)?;
        match actor
            .call(PairMsg::RetryDeadLetters, Some(CALL_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(n)) => Ok(n),
            Ok(CallResult::Timeout) => Err(ActorsError::Timeout(key.clone())),
            _ => Err(ActorsError::NotRunning),
        }
    }

    /// Every actor up?
    pub fn ready(&self) -> ReadyReport {
        let slots = self.router.slots.read().expect("router lock");
        let mut not_running = Vec::new();
        for spec in self.specs.iter() {
            let s = &slots[&spec.key];
            let up = s
                .actor
                .as_ref()
                .is_some_and(|a| a.get_status() == ActorStatus::Running);
            if !up {
                not_running.push((spec.key.clone(), s.down.unwrap_or(ActorState::Failed)));
            }
        }
        ReadyReport {
            ready: not_running.is_empty(),
            actors: self.specs.len(),
            running: self.specs.len() - not_running.len(),
            not_running,
        }
    }

    /// Stop every actor and the supervisor, then flush the store.
    pub async fn shutdown(&self) {
        let _ = self
            .supervisor
            .call(SupMsg::Shutdown, Some(CALL_TIMEOUT * 4))
            .await;
        let _ = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(CALL_TIMEOUT))
            .await;
        if let Err(e) = self.store.flush() {
            tracing::warn!("flushing the store at shutdown: {e}");
        }
    }
}
