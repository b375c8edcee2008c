//! The status objects of DESIGN.md §8 (serde), built by the actors for the API and `/metrics`.

use crate::event::{BackendKind, Millis};
use crate::state::{Identity, StoredItem};
use crate::store::PairKey;
use serde::{Deserialize, Serialize};

/// What a pair actor is doing right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    /// Nothing to do (pushes may still wait in the outbox for their retry).
    Idle,
    /// Events are waiting in its mailbox.
    Processing,
    /// A scheduled sync (or a sync asked for) is running.
    Syncing,
    /// Pushes to its server are running: a backlog (after a sync, or when the server comes
    /// back) drains in this state.
    Pushing,
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
    /// When the actor processed it.
    pub at: Millis,
    /// Journal sequence: ties the record to the accepted webhook.
    pub seq: u64,
    /// Links the record to `/status/requests/{request_id}`.
    pub request_id: String,
    /// The normalised event name.
    pub event: String,
    /// The sender's own event name, to recognise it in the media server's logs.
    pub raw_event: String,
    /// Title (or item id) so a person can tell which item it was.
    pub item: Option<String>,
    pub outcome: Outcome,
    /// Why it was not applied (or how it was resolved): the answer to "why didn't this sync".
    pub reason: Option<String>,
}

/// One push to the media server, kept in a ring for request traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    /// When the attempt finished.
    pub at: Millis,
    /// The webhook request that caused it (or `sync:<pair>` for sync-driven pushes).
    pub request_id: String,
    /// The item's id on the pushed backend.
    pub item_id: String,
    /// `mark_played`, `mark_unplayed` or `set_position <ms>`.
    pub action: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// `ok`, `retry`, or `dead_letter`.
    pub result: String,
    /// The media server's error for a failed attempt.
    pub error: Option<String>,
    /// Duration of the HTTP call.
    pub latency_ms: u64,
}

/// The `last_event` object of the status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastEvent {
    /// When it was processed.
    pub at: Millis,
    /// The normalised event name.
    pub event: String,
    /// Links to the request trace.
    pub request_id: String,
    pub outcome: Outcome,
    /// Why it was not applied, when it was not.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Webhook events handed to this actor.
    pub received: u64,
    /// Events that changed state or registered an item.
    pub applied: u64,
    /// Events with nothing to do (equal state, import off, ignored library, ...).
    pub ignored: u64,
    /// Events dropped (no usable ids).
    pub failed: u64,
    /// Pushes the media server confirmed.
    pub pushed: u64,
    /// Pushes that became dead letters.
    pub push_failed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Queued pushes (running ones included): the outbox depth of `/metrics`.
    pub pending: usize,
    /// Pushes whose HTTP call is running now.
    pub in_flight: usize,
    /// Pushes given up on; `POST .../outbox/retry` puts them back.
    pub dead_letters: usize,
    /// Age of the oldest queued push, in seconds.
    pub oldest_age_s: Option<u64>,
    /// The latest failed attempt of a push still queued (retrying), so a server that is down
    /// shows here at its first failure, not only once its pushes become dead letters.
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// The first dead letters, so status says what failed and why.
    pub dead: Vec<DeadLetterView>,
}

/// A dead letter as shown in status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterView {
    /// The item's id on this backend.
    pub item_id: String,
    /// What was to be written.
    pub action: String,
    /// Attempts made before giving up.
    pub attempts: u32,
    /// The last error of the media server.
    pub error: Option<String>,
    /// The request that caused the push.
    pub request_id: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncStatus {
    /// False when this pair's `sync_interval` is 0.
    pub enabled: bool,
    /// A run is in progress (`seen`/`total` is its progress).
    pub running: bool,
    pub last_started: Option<Millis>,
    pub last_finished: Option<Millis>,
    /// `ok` or `failed: <error>`.
    pub last_result: Option<String>,
    /// Entries of the server's total the running or last run went through: items read,
    /// unreadable ones and ones left out (placeholders).
    pub seen: u64,
    /// Total the server announced for the running or last run.
    pub total: Option<u64>,
    /// Items whose state the run changed (and propagated).
    pub changed: u64,
    /// Pushes to this backend the run queued (pending states, siblings' newer states).
    pub pushed: u64,
    /// Items the run could not read (a wrong-typed field, no id) and skipped; each is in the
    /// log with its id.
    #[serde(default)]
    pub skipped: u64,
    /// Items the run found in ignored libraries (`ignore_libraries`) and left alone.
    #[serde(default)]
    pub ignored: u64,
    /// When the next run is due; persisted across restarts.
    pub next_at: Option<Millis>,
    /// Completed runs, for `/metrics`.
    pub runs_ok: u64,
    /// Failed runs, for `/metrics`.
    pub runs_failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub at: Millis,
    /// What went wrong, in words a user can act on.
    pub message: String,
}

/// A change not applied because the target held a newer one (rule 4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// When the conflict was seen.
    pub at: Millis,
    /// The item, as `Identity::describe` writes it.
    pub identity: String,
    /// The sibling whose change was refused.
    pub origin: PairKey,
    pub request_id: String,
    /// The refused state, e.g. `played=true`.
    pub wanted: String,
    /// Time of the refused change.
    pub wanted_at: Millis,
    /// Time of the newer state this backend holds.
    pub held_at: Millis,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConflictStatus {
    /// Conflicts since the pair was created (persisted).
    pub count: u64,
    /// The latest few, newest first.
    pub recent: Vec<ConflictRecord>,
}

/// Push latency histogram (cumulative Prometheus-style buckets, milliseconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyHistogram {
    /// (upper bound in ms, cumulative count); the last bound is +Inf (`f64::INFINITY` → null).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of all observed latencies (Prometheus `_sum`).
    pub sum_ms: u64,
    /// Number of observations (Prometheus `_count`).
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
    /// Latency of every push attempt.
    pub push_latency: LatencyHistogram,
    /// Attempts that succeeded.
    pub push_ok: u64,
    /// Attempts that failed and were scheduled again.
    pub push_retried: u64,
    /// Attempts that failed for good (dead letters).
    pub push_dead: u64,
}

/// One actor's status object (DESIGN.md §8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairStatus {
    pub user: String,
    pub backend: String,
    /// The media server kind (`plex`, `jellyfin`, `emby`).
    #[serde(rename = "type")]
    pub kind: BackendKind,
    /// From the configuration, to check routing against webhooks.
    pub server_id: String,
    pub backend_user_id: String,
    pub import: bool,
    pub export: bool,
    pub state: ActorState,
    /// Tracked movies and episodes.
    pub items: usize,
    /// Webhooks and sibling changes sent and not yet handled.
    pub mailbox_depth: usize,
    pub last_event: Option<LastEvent>,
    pub counters: Counters,
    pub outbox: OutboxStatus,
    pub sync: SyncStatus,
    /// The latest failure (lookup, push, sync, actor crash).
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
    /// The ids the wanted state is waiting for.
    pub identity: Identity,
    pub played: Option<bool>,
    pub played_at: Option<Millis>,
    pub position_ms: Option<u64>,
    pub position_at: Option<Millis>,
    /// The sibling that wants it.
    pub origin: PairKey,
    pub request_id: String,
    /// How long it has been waiting.
    pub since: Millis,
}

/// A queued push for an item, as shown by the items endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedPushView {
    pub action: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// True for a dead letter.
    pub dead: bool,
    pub last_error: Option<String>,
}

/// One item on one backend with what is waiting for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemView {
    /// The item as this backend has it; `None` when only a pending state exists.
    pub item: Option<StoredItem>,
    /// A wanted state waiting for this backend to learn the item.
    pub pending: Option<PendingView>,
    /// Pushes queued or dead for the item.
    pub outbox: Vec<QueuedPushView>,
    /// Sibling changes refused because this backend held a newer one.
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
    /// True when every configured pair has a running actor.
    pub ready: bool,
    /// Configured pairs.
    pub actors: usize,
    /// Pairs whose actor is running.
    pub running: usize,
    /// Pairs not running, with their state.
    pub not_running: Vec<(PairKey, ActorState)>,
}
