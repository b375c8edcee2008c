//! The status objects of DESIGN.md §8 (serde), built by the actors for the API and `/metrics`.

use crate::event::{BackendKind, Millis};
use crate::state::{Identity, StoredItem};
use crate::store::PairKey;
use serde::{Deserialize, Serialize};

/// What a pair actor is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    Idle,
    Processing,
    Syncing,
    /// Failed and waiting for the supervisor's restart.
    Backoff,
    /// Failed and not restartable (its start failed repeatedly); see `last_error`.
    Failed,
}

/// What applying one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// State changed (and was propagated).
    Applied,
    /// The item was registered or its ids learned; no state change.
    Registered,
    /// Nothing to change: the stored state already says so (replays and echoes end here).
    Unchanged,
    /// Deliberately not applied (import off, ignored library, not a movie/episode, ...).
    Ignored,
    /// Could not be applied: no usable ids, or the lookup failed.
    Dropped,
}

/// One processed event, kept in a ring for `/events` and request traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub at: Millis,
    pub seq: u64,
    pub request_id: String,
    pub event: String,
    pub raw_event: String,
    pub item: Option<String>,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

/// One push to the media server, kept in a ring for request traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    pub at: Millis,
    /// The webhook request that caused it (or `sync:<pair>` for sync-driven pushes).
    pub request_id: String,
    pub item_id: String,
    pub action: String,
    pub attempt: u32,
    /// `ok`, `retry`, or `dead_letter`.
    pub result: String,
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// The `last_event` object of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastEvent {
    pub at: Millis,
    pub event: String,
    pub request_id: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub received: u64,
    pub applied: u64,
    pub ignored: u64,
    pub failed: u64,
    pub pushed: u64,
    pub push_failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    pub pending: usize,
    pub in_flight: usize,
    pub dead_letters: usize,
    /// Age of the oldest queued push, in seconds.
    pub oldest_age_s: Option<u64>,
    pub dead: Vec<DeadLetterView>,
}

/// A dead letter as shown in status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub item_id: String,
    pub action: String,
    pub attempts: u32,
    pub error: Option<String>,
    pub request_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    pub enabled: bool,
    pub running: bool,
    pub last_started: Option<Millis>,
    pub last_finished: Option<Millis>,
    /// `ok` or `failed: <error>`.
    pub last_result: Option<String>,
    /// Items seen by the running or last run.
    pub seen: u64,
    /// Total the server announced for the running or last run.
    pub total: Option<u64>,
    pub changed: u64,
    pub pushed: u64,
    pub next_at: Option<Millis>,
    pub runs_ok: u64,
    pub runs_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub at: Millis,
    pub message: String,
}

/// A change not applied because the target held a newer one (rule 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictRecord {
    pub at: Millis,
    pub identity: String,
    pub origin: PairKey,
    pub request_id: String,
    pub wanted: String,
    pub wanted_at: Millis,
    pub held_at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConflictStatus {
    pub count: u64,
    pub recent: Vec<ConflictRecord>,
}

/// Push latency histogram (cumulative Prometheus-style buckets, milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// (upper bound in ms, cumulative count); the last bound is +Inf (`f64::INFINITY` → null).
    pub buckets: Vec<(f64, u64)>,
    pub sum_ms: u64,
    pub count: u64,
}

/// Bucket bounds of [`LatencyHistogram`], in ms.
pub const LATENCY_BOUNDS_MS: [f64; 10] = [
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 10000.0,
];

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: LATENCY_BOUNDS_MS.iter().map(|b| (*b, 0)).collect(),
            sum_ms: 0,
            count: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn observe(&mut self, ms: u64) {
        for (bound, n) in self.buckets.iter_mut() {
            if (ms as f64) <= *bound {
                *n += 1;
            }
        }
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// Aggregates for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PairMetrics {
    pub push_latency: LatencyHistogram,
    pub push_ok: u64,
    pub push_retried: u64,
    pub push_dead: u64,
}

/// One actor's status object (DESIGN.md §8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairStatus {
    pub user: String,
    pub backend: String,
    #[serde(rename = "type")]
    pub kind: BackendKind,
    pub server_id: String,
    pub backend_user_id: String,
    pub import: bool,
    pub export: bool,
    pub state: ActorState,
    pub items: usize,
    pub mailbox_depth: usize,
    pub last_event: Option<LastEvent>,
    pub counters: Counters,
    pub outbox: OutboxStatus,
    pub sync: SyncStatus,
    pub last_error: Option<LastError>,
    /// How often the supervisor restarted this actor.
    pub restarts: u32,
    /// Wanted states for items this backend does not know yet (rule 5).
    pub pending: usize,
    pub conflicts: ConflictStatus,
    /// Events dropped because no ids could be found (also counted in `ignored`).
    pub dropped_no_ids: u64,
    pub metrics: PairMetrics,
}

/// A wanted state waiting for its item (rule 5), as shown by the items endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingView {
    pub identity: Identity,
    pub played: Option<bool>,
    pub played_at: Option<Millis>,
    pub position_ms: Option<u64>,
    pub position_at: Option<Millis>,
    pub origin: PairKey,
    pub request_id: String,
    pub since: Millis,
}

/// A queued push for an item, as shown by the items endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedPushView {
    pub action: String,
    pub attempts: u32,
    pub dead: bool,
    pub last_error: Option<String>,
}

/// One item on one backend with what is waiting for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemView {
    pub item: Option<StoredItem>,
    pub pending: Option<PendingView>,
    pub outbox: Vec<QueuedPushView>,
    pub conflicts: Vec<ConflictRecord>,
}

/// What one actor did with one webhook request, and the pushes it caused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestOutcome {
    pub pair: PairKey,
    /// `None` when this actor only pushed because of the request (a sibling's change).
    pub event: Option<EventRecord>,
    pub pushes: Vec<PushRecord>,
}

/// `/system/ready`: every actor up?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyReport {
    pub ready: bool,
    pub actors: usize,
    pub running: usize,
    /// Pairs not running, with their state.
    pub not_running: Vec<(PairKey, ActorState)>,
}
