//! The outbox of a pair (DESIGN.md §7): pushes waiting for the media server, their retry
//! schedule, and dead letters. Persisted under `<pair>/o/` and `<pair>/d/`.
//!
//! Pushes run in spawned tasks so a slow server never blocks the actor's mailbox; the result
//! comes back as `PairMsg::PushResult`. At most [`MAX_IN_FLIGHT`] pushes run at once per
//! actor, and never two for the same item (their order matters).

use crate::backend::BackendError;
use crate::event::Millis;
use crate::store::PairKey;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

/// Concurrent pushes per actor: enough to keep latency low while a sync backlog drains.
pub const MAX_IN_FLIGHT: usize = 4;

/// When to retry a failed push: exponential backoff with jitter, as data (svix style).
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    /// Delay after the first failure.
    pub base: Duration,
    /// Upper bound of the doubling delay.
    pub max: Duration,
    /// Total attempts (first try included) before a push becomes a dead letter.
    pub attempts: u32,
    /// Relative jitter, 0.1 = ±10 %.
    pub jitter: f64,
}

impl RetrySchedule {
    /// The delay before the next attempt after `failed_attempts` failures (≥ 1), or `None`
    /// when the push must become a dead letter. `unit` is a uniform random number in [0, 1).
    /// A server's `Retry-After` is honoured: the delay is never shorter than it asks.
    pub fn next_delay(
        &self,
        failed_attempts: u32,
        error: &BackendError,
        unit: f64,
    ) -> Option<Duration> {
        if !error.is_retryable() || failed_attempts >= self.attempts.max(1) {
            return None;
        }
        let exp = failed_attempts.saturating_sub(1).min(30);
        let raw = self.base.saturating_mul(1u32 << exp).min(self.max);
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        let jittered = raw.mul_f64(factor.max(0.0)).min(self.max);
        Some(match error.retry_after() {
            // A server asking for more than an hour is read as an hour (a huge value must not
            // wrap the clock arithmetic into "now").
            Some(ra) => ra.min(MAX_RETRY_AFTER).max(jittered),
            None => jittered,
        })
    }
}

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How often a run of failed pushes to one server is logged as a warning.
pub const FAILURE_WARN_EVERY: Millis = 60_000;

/// Failed push attempts in a row to this pair's server, so that an outage is logged as a
/// warning at its first failure and then once a minute (with the count left out), rather
/// than once per attempt of every queued push. Every failure still sets the status's
/// `last_error`; the quiet ones are logged at debug level. Memory only.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FailureLog {
    /// Failed attempts since the last push that worked.
    streak: u64,
    /// Failed attempts not logged as warnings since the last warning.
    quiet: u64,
    /// When the last warning was logged.
    warned_at: Option<Millis>,
}

/// Whether a failure is logged as a warning, and how many were left out before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureVerdict {
    Warn { left_out: u64 },
    Quiet,
}

impl FailureLog {
    /// A push attempt failed at `now`.
    pub fn failed(&mut self, now: Millis) -> FailureVerdict {
        self.streak += 1;
        match self.warned_at {
            Some(at) if now.saturating_sub(at) < FAILURE_WARN_EVERY => {
                self.quiet += 1;
                FailureVerdict::Quiet
            }
            _ => {
                self.warned_at = Some(now);
                FailureVerdict::Warn {
                    left_out: std::mem::take(&mut self.quiet),
                }
            }
        }
    }

    /// A push worked: the number of failed attempts before it, if any (the run is over).
    pub fn succeeded(&mut self) -> Option<u64> {
        let streak = std::mem::take(self).streak;
        (streak > 0).then_some(streak)
    }
}

/// What to write on the media server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PushAction {
    SetPlayed {
        played: bool,
        at: Option<Millis>,
    },
    SetPosition {
        position_ms: u64,
        duration_ms: Option<u64>,
    },
}

impl PushAction {
    pub fn describe(&self) -> String {
        match self {
            PushAction::SetPlayed { played: true, .. } => "mark_played".into(),
            PushAction::SetPlayed { played: false, .. } => "mark_unplayed".into(),
            PushAction::SetPosition { position_ms, .. } => format!("set_position {position_ms}"),
        }
    }

    fn is_played(&self) -> bool {
        matches!(self, PushAction::SetPlayed { .. })
    }
}

impl OutboxEntry {
    /// Caused by a scheduled sync or its catch-up (`sync:<pair>`), not by a user's action
    /// reported by a webhook: such pushes can come by the thousand (a backend added to the
    /// configuration), so they wait behind the users' changes and are paced.
    pub fn is_background(&self) -> bool {
        self.request_id.starts_with("sync:")
    }
}

/// One queued push, persisted as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Monotonic per pair: order of pushes and store key.
    pub id: u64,
    pub item_id: String,
    pub action: PushAction,
    /// The change time stored with the new state once the server confirms (rule 4).
    pub changed_at: Millis,
    pub origin: PairKey,
    pub request_id: String,
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this time (clock ms).
    pub due_at: Millis,
    pub created_at: Millis,
    /// The media server's last error, shown with dead letters and queued pushes.
    pub last_error: Option<String>,
    /// The last failed attempt in words (item, attempt, next try), for the queue's
    /// `last_error` in status.
    #[serde(default)]
    pub last_failure: Option<LastError>,
}

/// Queued pushes and dead letters of one pair.
#[derive(Debug, Default)]
pub struct Outbox {
    pub queue: BTreeMap<u64, OutboxEntry>,
    pub dead: BTreeMap<u64, OutboxEntry>,
    /// Entry ids whose push is running.
    pub in_flight: HashSet<u64>,
    /// Item id → queued entry ids, so "what is wanted for this item" needs no scan.
    by_item: HashMap<String, Vec<u64>>,
    /// No push starts before this time: a push failed with an error about the whole server
    /// (unreachable, a timeout, 502–504, 429, a web page instead of the API; a `Retry-After`
    /// lengthens it), which holds every push
    /// to it until that push's retry, not only the one that got it.
    pub hold_until: Millis,
    /// The part of [`Outbox::hold_until`] the server asked for (a 429, or a 503 with a
    /// `Retry-After`): it stays when a push works meanwhile, while the rest of the hold is
    /// lifted (the server answers).
    pub retry_after_until: Millis,
    /// No push caused by a sync starts before this time ([`OutboxEntry::is_background`]):
    /// they go out at `sync.max_requests_per_second` at most, as the sync's own requests do.
    pub paced_until: Millis,
}

impl Outbox {
    /// Dead letters of `item_id` that a change made at `changed_at` makes stale: older played
    /// pushes and positions for a played change, older positions for a position change.
    /// Retried later, they would put an old state back over the newer one.
    pub fn dead_superseded_by(&self, item_id: &str, played: bool, changed_at: Millis) -> Vec<u64> {
        self.dead
            .iter()
            .filter(|(_, e)| {
                e.item_id == item_id
                    && e.changed_at <= changed_at
                    && (played || !e.action.is_played())
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether a newer entry of the same item, queued after `entry` (id `id`), supersedes it
    /// under the rule of [`Outbox::enqueue`].
    pub fn superseded(&self, id: u64, entry: &OutboxEntry) -> bool {
        self.entries_for(&entry.item_id)
            .any(|newer| newer.id > id && (newer.action.is_played() || !entry.action.is_played()))
    }

    /// Queue a push. A played push supersedes queued (not running) pushes of the same item;
    /// a position push supersedes queued position pushes. Returns the ids it removed.
    pub fn enqueue(&mut self, entry: OutboxEntry) -> Vec<u64> {
        let mut removed = Vec::new();
        if let Some(ids) = self.by_item.get(&entry.item_id) {
            for id in ids {
                if self.in_flight.contains(id) {
                    continue;
                }
                if let Some(old) = self.queue.get(id) {
                    if entry.action.is_played() || !old.action.is_played() {
                        removed.push(*id);
                    }
                }
            }
        }
        for id in &removed {
            self.remove(*id);
        }
        self.insert(entry);
        removed
    }

    /// Put back an entry (restore at start, or a dead letter retried).
    pub fn insert(&mut self, entry: OutboxEntry) {
        self.by_item
            .entry(entry.item_id.clone())
            .or_default()
            .push(entry.id);
        self.queue.insert(entry.id, entry);
    }

    pub fn remove(&mut self, id: u64) -> Option<OutboxEntry> {
        let e = self.queue.remove(&id)?;
        self.in_flight.remove(&id);
        if let Some(ids) = self.by_item.get_mut(&e.item_id) {
            ids.retain(|x| *x != id);
            if ids.is_empty() {
                self.by_item.remove(&e.item_id);
            }
        }
        Some(e)
    }

    /// The played state the newest queued push for this item wants, with its time.
    pub fn wanted_played(&self, item_id: &str) -> Option<(bool, Millis)> {
        self.entries_for(item_id)
            .filter_map(|e| match e.action {
                PushAction::SetPlayed { played, .. } => Some((played, e.changed_at)),
                _ => None,
            })
            .next_back()
    }

    /// The position the newest queued push for this item wants.
    pub fn wanted_position(&self, item_id: &str) -> Option<u64> {
        self.entries_for(item_id)
            .filter_map(|e| match e.action {
                PushAction::SetPosition { position_ms, .. } => Some(position_ms),
                _ => None,
            })
            .next_back()
    }

    pub fn entries_for<'a>(
        &'a self,
        item_id: &str,
    ) -> impl DoubleEndedIterator<Item = &'a OutboxEntry> {
        self.by_item
            .get(item_id)
            .map(|v| v.as_slice())
            .unwrap_or(&[])
            .iter()
            .filter_map(|id| self.queue.get(id))
    }

    /// The entries that may go next, in queue order: per item the oldest queued one, when
    /// nothing of that item is running (an item's pushes go out in the order they were
    /// queued). [`Outbox::ready`] and [`Outbox::next_due`] read this one rule.
    fn candidates(&self) -> impl Iterator<Item = (u64, &OutboxEntry)> + '_ {
        let mut seen: HashSet<&str> = self
            .in_flight
            .iter()
            .filter_map(|id| self.queue.get(id))
            .map(|e| e.item_id.as_str())
            .collect();
        self.queue
            .iter()
            .filter(move |(id, e)| !self.in_flight.contains(id) && seen.insert(e.item_id.as_str()))
            .map(|(id, e)| (*id, e))
    }

    /// Entries to start now: the due candidates (see `candidates`). The users' changes
    /// first, oldest first; then at most one push caused by a sync, once its pace allows
    /// ([`Outbox::paced_until`]).
    pub fn ready(&self, now: Millis, max_in_flight: usize) -> Vec<u64> {
        let mut slots = max_in_flight.saturating_sub(self.in_flight.len());
        if now < self.hold_until || slots == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut background = None;
        for (id, e) in self.candidates().filter(|(_, e)| e.due_at <= now) {
            if e.is_background() {
                if background.is_none() && now >= self.paced_until {
                    background = Some(id);
                }
                continue;
            }
            out.push(id);
            slots -= 1;
            if slots == 0 {
                return out;
            }
        }
        out.extend(background);
        out
    }

    /// The earliest time an entry could start (see [`Outbox::ready`]).
    pub fn next_due(&self) -> Option<Millis> {
        self.candidates()
            .map(|(_, e)| {
                let due = e.due_at.max(self.hold_until);
                if e.is_background() {
                    due.max(self.paced_until)
                } else {
                    due
                }
            })
            .min()
    }
}

/// A retry delay in words for status messages: `800 ms`, `8 s`, `4 min 16 s`.
pub fn format_delay(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{} s", (ms + 500) / 1000)
    } else {
        let s = (ms + 500) / 1000;
        match s % 60 {
            0 => format!("{} min", s / 60),
            r => format!("{} min {r} s", s / 60),
        }
    }
}

// ---- The actor side: running pushes and handling their results. ----

use crate::backend::BackendApi;
use crate::pair::{encode, PairCore, PairMsg};
use crate::status::{DeadLetterView, LastError, OutboxStatus, PushRecord, QueuedPushView};
use crate::store::{Batch, StoreError, Tree};
use std::sync::Arc;

async fn run_push(
    backend: Arc<dyn BackendApi>,
    item_id: String,
    action: PushAction,
    changed_at: Millis,
) -> Result<(), BackendError> {
    let result = match &action {
        // An undated play (held as 1 ms; entries queued before it was left out) goes without.
        PushAction::SetPlayed { played, at } => {
            let at = at.filter(|t| *t > crate::propagate::UNDATED_PLAY);
            backend.set_played(&item_id, *played, at).await
        }
        PushAction::SetPosition {
            position_ms,
            duration_ms,
        } => {
            let at = (changed_at > 0).then_some(changed_at);
            backend
                .set_position(&item_id, *position_ms, *duration_ms, at)
                .await
        }
    };
    match result {
        Err(err @ BackendError::WebPage { .. }) => {
            read_back(backend.as_ref(), &item_id, &action, err).await
        }
        other => other,
    }
}

/// How far a position read back may be from the one written: Jellyfin and Emby keep ticks,
/// Plex whole milliseconds, and a server may round to the second.
const POSITION_READ_BACK_SLACK_MS: u64 = 1_000;

/// A write answered with a web page (`page`): the item is read back to tell a server that
/// did the write from a page in front of it. Plex's documents give a write's `200` the type
/// `text/html`, so a server may confirm with a small page. The outcome:
/// - the item holds what was written: done (a date that came with a played state already
///   there may not have been written: the state, which is what is synced, is right);
/// - the read gets a page too (a proxy's sign-in page, a web app): `page`, which holds every
///   push to the server;
/// - the read fails otherwise: that error (a 500 about the item holds nothing, a refused
///   token is not retried);
/// - the item is not there: [`BackendError::NotFound`];
/// - the server answered with the item in another state: [`BackendError::Unconfirmed`],
///   retried without holding the other pushes (it is about this item).
///
/// In a paced sync backlog the read is a request the pace does not count; it only happens
/// for answers that are pages.
pub(crate) async fn read_back(
    backend: &dyn BackendApi,
    item_id: &str,
    action: &PushAction,
    page: BackendError,
) -> Result<(), BackendError> {
    let item = match backend.get_item(item_id).await {
        Ok(Some(item)) => item,
        Ok(None) => {
            return Err(BackendError::NotFound {
                what: format!(
                    "item {item_id}, read back after the server answered a write with a web page"
                ),
            })
        }
        Err(BackendError::WebPage { .. }) => return Err(page),
        Err(e) => return Err(e),
    };
    let (done, seen) = match action {
        _ if item.state_unknown => (false, "no play state".to_string()),
        PushAction::SetPlayed { played, .. } => (
            item.played == *played,
            if item.played { "played" } else { "unplayed" }.to_string(),
        ),
        PushAction::SetPosition { position_ms, .. } => (
            item.position_ms.abs_diff(*position_ms) <= POSITION_READ_BACK_SLACK_MS,
            format!("position {} ms", item.position_ms),
        ),
    };
    if done {
        return Ok(());
    }
    Err(BackendError::Unconfirmed {
        message: format!(
            "{} of item {item_id} was answered with a web page, and the item read back shows {seen}",
            action.describe()
        ),
    })
}

impl PairCore {
    pub fn retry_schedule(&self) -> RetrySchedule {
        RetrySchedule {
            base: self.settings.retry_base,
            max: self.settings.retry_max,
            attempts: self.settings.push_attempts,
            jitter: self.settings.jitter,
        }
    }

    /// Start every push that is due, and arm the wake timer for the next one.
    pub fn pump_outbox(&mut self) {
        let now = self.now();
        for id in self.outbox.ready(now, MAX_IN_FLIGHT) {
            let Some(entry) = self.outbox.queue.get(&id) else {
                continue;
            };
            if entry.is_background() {
                let rps = self.settings.max_requests_per_second;
                if rps > 0.0 {
                    self.outbox.paced_until = now + (1000.0 / rps).ceil() as Millis;
                }
            }
            self.outbox.in_flight.insert(id);
            let backend = self.backend.clone();
            let me = self.myself.clone();
            let (item_id, action) = (entry.item_id.clone(), entry.action.clone());
            let changed_at = entry.changed_at;
            let task = tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                let result = run_push(backend, item_id, action, changed_at).await;
                let latency_ms = started.elapsed().as_millis() as u64;
                let _ = me.cast(PairMsg::PushResult {
                    entry_id: id,
                    result,
                    latency_ms,
                });
            });
            self.push_tasks.0.insert(id, task.abort_handle());
        }
        match self.outbox.next_due() {
            Some(due) if due > now => {
                if self.outbox_timer.as_ref().is_some_and(|(at, _)| *at == due) {
                    return;
                }
                if let Some((_, t)) = self.outbox_timer.take() {
                    t.abort();
                }
                let me = self.myself.clone();
                let wait = std::time::Duration::from_millis((due - now) as u64);
                let t = tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = me.cast(PairMsg::OutboxWake);
                });
                self.outbox_timer = Some((due, t));
            }
            _ => {}
        }
    }

    /// A push finished: store the confirmed state, or schedule a retry, or dead-letter it.
    pub fn on_push_result(
        &mut self,
        entry_id: u64,
        result: Result<(), BackendError>,
        latency_ms: u64,
    ) -> Result<(), StoreError> {
        self.outbox.in_flight.remove(&entry_id);
        self.push_tasks.0.remove(&entry_id);
        let Some(mut entry) = self.outbox.queue.get(&entry_id).cloned() else {
            return Ok(());
        };
        entry.attempts += 1;
        let now = self.now();
        let mut batch = Batch::new();
        self.meta.metrics.push_latency.observe(latency_ms);
        let mut record = PushRecord {
            at: now,
            request_id: entry.request_id.clone(),
            item_id: entry.item_id.clone(),
            action: entry.action.describe(),
            attempt: entry.attempts,
            result: "ok".into(),
            error: None,
            latency_ms,
        };
        match result {
            Ok(()) => {
                // The server answers: a hold for a failure that looked server-wide (one item
                // that times out, say) is lifted; a wait the server asked for (a 429, a 503's
                // `Retry-After`) still holds.
                self.outbox.hold_until = self.outbox.retry_after_until;
                if let Some(failed) = self.push_failures.succeeded() {
                    tracing::info!(pair = %self.spec.key, failed,
                        "pushes to this server work again after {failed} failed attempt(s)");
                }
                self.outbox.remove(entry_id);
                batch.remove(Tree::Pairs, self.outbox_key(entry_id));
                self.meta.counters.pushed += 1;
                self.meta.metrics.push_ok += 1;
                if let PushAction::SetPlayed { played, .. } = entry.action {
                    self.note_confirmed(&entry.item_id, played);
                }
                if let Some(slot) = self.items.by_item_id(&entry.item_id) {
                    let item = self.items.get_mut(slot);
                    match entry.action {
                        PushAction::SetPlayed { played, .. } => {
                            item.set_played(played, entry.changed_at);
                        }
                        PushAction::SetPosition { position_ms, .. } => {
                            item.position_ms = position_ms;
                            item.position_at = entry.changed_at;
                        }
                    }
                    self.touch(slot);
                    self.put_item(&mut batch, slot);
                }
                tracing::debug!(pair = %self.spec.key, item = %entry.item_id,
                    action = %entry.action.describe(), "push confirmed");
            }
            // Failed while a newer push for the item was queued that makes it pointless (a
            // played push, or a position after a position): dropped, not retried, so that the
            // older state can never reach the server after the newer one.
            Err(err) if self.outbox.superseded(entry_id, &entry) => {
                self.outbox.remove(entry_id);
                batch.remove(Tree::Pairs, self.outbox_key(entry_id));
                record.error = Some(err.to_string());
                record.result = "superseded".into();
            }
            Err(err) => {
                let unit: f64 = rand::random();
                entry.last_error = Some(err.to_string());
                record.error = Some(err.to_string());
                let schedule = self.retry_schedule();
                match schedule.next_delay(entry.attempts, &err, unit) {
                    Some(delay) => {
                        entry.due_at = now + delay.as_millis() as Millis;
                        // A server that is down or rate limiting gets no other push until this
                        // one's retry: a backlog would otherwise send every entry's attempts
                        // (thousands of requests a minute to a server saying it cannot take
                        // them) and turn them all into dead letters together.
                        if err.is_server_wide() {
                            self.outbox.hold_until = self.outbox.hold_until.max(entry.due_at);
                        }
                        if err.asks_to_wait() {
                            // What the server asked for (capped), not this push's own backoff,
                            // which a push that works may lift; a 429 without a `Retry-After`
                            // waits out the backoff.
                            let until = match err.retry_after().filter(|d| !d.is_zero()) {
                                Some(ra) => now + ra.min(MAX_RETRY_AFTER).as_millis() as Millis,
                                None => entry.due_at,
                            };
                            self.outbox.retry_after_until =
                                self.outbox.retry_after_until.max(until);
                        }
                        record.result = "retry".into();
                        self.meta.metrics.push_retried += 1;
                        // Visible at the first failure: a server that is down would otherwise
                        // go unnoticed until the last attempt (8.5 min with the defaults: 1 + 2 + ... + 256 s).
                        let message = format!(
                            "push {} of item {} failed (attempt {} of {}, next in {}): {err}",
                            entry.action.describe(),
                            entry.item_id,
                            entry.attempts,
                            schedule.attempts.max(1),
                            format_delay(delay)
                        );
                        self.push_failed(message.clone(), now);
                        entry.last_failure = Some(LastError { at: now, message });
                        self.put_outbox(&mut batch, &entry);
                        self.outbox.queue.insert(entry_id, entry);
                    }
                    None => {
                        self.outbox.remove(entry_id);
                        batch.remove(Tree::Pairs, self.outbox_key(entry_id));
                        batch.put(Tree::Pairs, self.dead_key(entry_id), encode(&entry));
                        self.meta.counters.push_failed += 1;
                        self.meta.metrics.push_dead += 1;
                        record.result = "dead_letter".into();
                        let message = format!(
                            "push {} of item {} failed after {} attempt(s): {err}",
                            entry.action.describe(),
                            entry.item_id,
                            entry.attempts
                        );
                        // Given up for good: always a warning. The last attempt of a server
                        // that stays down is still part of its run of failures.
                        tracing::warn!(pair = %self.spec.key, "{message}");
                        if err.is_retryable() {
                            let _ = self.push_failures.failed(now);
                        }
                        self.set_last_error(message);
                        self.outbox.dead.insert(entry_id, entry);
                    }
                }
            }
        }
        self.push_push_record(record);
        // Counters and the last error: written within a second (a backlog of pushes would
        // otherwise rewrite the meta at every result).
        self.put_meta_soon(&mut batch);
        self.commit(batch)
    }

    /// A push attempt failed and will be retried: the status shows it at once; the log gets
    /// a warning at the first failure of a run and then once a minute, the rest at debug
    /// level.
    fn push_failed(&mut self, message: String, now: Millis) {
        match self.push_failures.failed(now) {
            FailureVerdict::Warn { left_out: 0 } => {
                tracing::warn!(pair = %self.spec.key, "{message}")
            }
            FailureVerdict::Warn { left_out } => tracing::warn!(pair = %self.spec.key,
                left_out, "{message} ({left_out} more failed attempt(s) in the last minute not logged as warnings)"),
            FailureVerdict::Quiet => tracing::debug!(pair = %self.spec.key, "{message}"),
        }
        self.set_last_error(message);
    }

    /// The media server reported the state a queued push wants: it is there already.
    pub fn settle_echo(&mut self, slot: u32, played: bool, changed_at: Millis, batch: &mut Batch) {
        let item_id = self.items.get(slot).item_id.to_string();
        let queued: Vec<u64> = self
            .outbox
            .entries_for(&item_id)
            .filter(|e| {
                !self.outbox.in_flight.contains(&e.id)
                    && matches!(e.action, PushAction::SetPlayed { played: p, .. } if p == played)
            })
            .map(|e| e.id)
            .collect();
        if queued.is_empty() {
            // In flight: its result will store the state.
            return;
        }
        for id in queued {
            self.outbox.remove(id);
            batch.remove(Tree::Pairs, self.outbox_key(id));
        }
        self.items.get_mut(slot).set_played(played, changed_at);
        self.touch(slot);
        self.put_item(batch, slot);
    }

    /// Forget queued (not running) pushes of an item superseded by a newer change made on
    /// this backend: played pushes (and positions) when `played`, else position pushes.
    pub fn drop_queued_pushes(&mut self, item_id: &str, played: bool, batch: &mut Batch) {
        let ids: Vec<u64> = self
            .outbox
            .entries_for(item_id)
            .filter(|e| !self.outbox.in_flight.contains(&e.id))
            .filter(|e| played || matches!(e.action, PushAction::SetPosition { .. }))
            .map(|e| e.id)
            .collect();
        for id in ids {
            self.outbox.remove(id);
            batch.remove(Tree::Pairs, self.outbox_key(id));
        }
    }

    /// Put every dead letter back in the queue with fresh attempts.
    pub fn retry_dead_letters(&mut self) -> Result<usize, StoreError> {
        let dead = std::mem::take(&mut self.outbox.dead);
        let n = dead.len();
        let now = self.now();
        let mut batch = Batch::new();
        for (id, mut e) in dead {
            batch.remove(Tree::Pairs, self.dead_key(id));
            e.attempts = 0;
            e.due_at = now;
            // A fresh start: the queue's last error is about attempts of this run only.
            e.last_failure = None;
            self.put_outbox(&mut batch, &e);
            self.outbox.insert(e);
        }
        self.commit(batch)?;
        Ok(n)
    }

    pub fn outbox_status(&self) -> OutboxStatus {
        let now = self.now();
        OutboxStatus {
            pending: self.outbox.queue.len(),
            in_flight: self.outbox.in_flight.len(),
            dead_letters: self.outbox.dead.len(),
            oldest_age_s: self
                .outbox
                .queue
                .values()
                .map(|e| e.created_at)
                .min()
                .map(|c| ((now - c).max(0) / 1000) as u64),
            last_error: self
                .outbox
                .queue
                .values()
                .filter_map(|e| e.last_failure.as_ref())
                .max_by_key(|f| f.at)
                .cloned(),
            dead: self
                .outbox
                .dead
                .values()
                .take(20)
                .map(|e| DeadLetterView {
                    item_id: e.item_id.clone(),
                    action: e.action.describe(),
                    attempts: e.attempts,
                    error: e.last_error.clone(),
                    request_id: e.request_id.clone(),
                })
                .collect(),
        }
    }

    pub fn outbox_view(&self, item_id: &str) -> Vec<QueuedPushView> {
        let queued = self.outbox.entries_for(item_id).map(|e| (e, false));
        let dead = self
            .outbox
            .dead
            .values()
            .filter(|e| e.item_id == item_id)
            .map(|e| (e, true));
        queued
            .chain(dead)
            .map(|(e, dead)| QueuedPushView {
                action: e.action.describe(),
                attempts: e.attempts,
                dead,
                last_error: e.last_error.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::RemoteItem;

    fn not_asked() -> BackendError {
        BackendError::Network {
            message: "not asked".into(),
        }
    }

    /// A server for `read_back`: `get_item` answers `read`; nothing else is asked.
    struct ReadBack {
        read: Result<Option<RemoteItem>, BackendError>,
    }

    #[async_trait::async_trait]
    impl BackendApi for ReadBack {
        async fn identity(&self) -> Result<crate::backend::ServerIdentity, BackendError> {
            Err(not_asked())
        }
        async fn list_items(
            &self,
            _cursor: Option<&str>,
            _page_size: usize,
        ) -> Result<crate::backend::ItemPage, BackendError> {
            Err(not_asked())
        }
        async fn get_item(&self, _item_id: &str) -> Result<Option<RemoteItem>, BackendError> {
            self.read.clone()
        }
        async fn set_played(
            &self,
            _item_id: &str,
            _played: bool,
            _at: Option<Millis>,
        ) -> Result<(), BackendError> {
            Err(not_asked())
        }
        async fn set_position(
            &self,
            _item_id: &str,
            _position_ms: u64,
            _duration_ms: Option<u64>,
            _at: Option<Millis>,
        ) -> Result<(), BackendError> {
            Err(not_asked())
        }
    }

    fn read_item(played: bool, position_ms: u64) -> RemoteItem {
        RemoteItem {
            item_id: "7".into(),
            item_type: crate::event::ItemType::Movie,
            title: None,
            series_title: None,
            year: None,
            season: None,
            episode: None,
            external_ids: Default::default(),
            series_external_ids: Default::default(),
            played,
            state_unknown: false,
            last_played_at: None,
            position_ms,
            duration_ms: None,
            library_id: None,
        }
    }

    #[tokio::test]
    async fn a_write_answered_with_a_page_is_judged_by_the_item_read_back() {
        let page = || BackendError::WebPage {
            message: "sign in".into(),
        };
        let played = PushAction::SetPlayed {
            played: true,
            at: None,
        };
        let position = PushAction::SetPosition {
            position_ms: 60_000,
            duration_ms: None,
        };
        let run = |read, action: &PushAction| {
            let action = action.clone();
            async move { read_back(&ReadBack { read }, "7", &action, page()).await }
        };
        // Done: the state written, a position within a second.
        assert_eq!(run(Ok(Some(read_item(true, 0))), &played).await, Ok(()));
        assert_eq!(
            run(Ok(Some(read_item(false, 60_900))), &position).await,
            Ok(())
        );
        // The API answered with the item in another state: about this item only.
        for (read, action) in [
            (read_item(false, 0), &played),
            (read_item(false, 58_000), &position),
            (
                RemoteItem {
                    state_unknown: true,
                    ..read_item(true, 60_000)
                },
                &played,
            ),
        ] {
            let err = run(Ok(Some(read)), action).await.unwrap_err();
            assert!(matches!(err, BackendError::Unconfirmed { .. }), "{err:?}");
            assert!(err.is_retryable() && !err.is_server_wide(), "{err:?}");
        }
        let err = run(Ok(Some(read_item(false, 0))), &played)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("shows unplayed"), "{err}");
        // A page answers the read too: the page, holding the server's pushes.
        let err = run(Err(page()), &played).await.unwrap_err();
        assert_eq!(err, page());
        // Other read errors are their own; an item not there is not found.
        let e500 = BackendError::Server {
            status: 500,
            message: "boom".into(),
            retry_after_ms: None,
        };
        assert_eq!(run(Err(e500.clone()), &played).await, Err(e500));
        let err = run(Ok(None), &position).await.unwrap_err();
        assert!(matches!(err, BackendError::NotFound { .. }), "{err:?}");
    }

    #[test]
    fn a_run_of_failures_warns_at_its_start_then_once_a_minute_and_ends_at_a_success() {
        let mut log = FailureLog::default();
        assert_eq!(log.succeeded(), None, "no run yet");
        assert_eq!(log.failed(1_000), FailureVerdict::Warn { left_out: 0 });
        for t in [1_001, 2_000, 60_999] {
            assert_eq!(log.failed(t), FailureVerdict::Quiet, "at {t}");
        }
        assert_eq!(log.failed(61_000), FailureVerdict::Warn { left_out: 3 });
        assert_eq!(log.failed(61_001), FailureVerdict::Quiet);
        assert_eq!(log.failed(200_000), FailureVerdict::Warn { left_out: 1 });
        assert_eq!(log.succeeded(), Some(7));
        assert_eq!(log, FailureLog::default(), "the run is over");
        // The next failure starts a new run: warned at once, even within the minute.
        assert_eq!(log.failed(200_001), FailureVerdict::Warn { left_out: 0 });
    }

    fn sched() -> RetrySchedule {
        RetrySchedule {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
            attempts: 10,
            jitter: 0.0,
        }
    }

    fn server() -> BackendError {
        BackendError::Server {
            status: 500,
            message: "x".into(),
            retry_after_ms: None,
        }
    }

    /// An unmark waiting for its retry holds back a newer position push of the same item (a
    /// server clears the position when unmarking, so the order matters); other items go on.
    #[test]
    fn an_items_pushes_start_in_order_behind_one_waiting_for_its_retry() {
        let mut o = Outbox::default();
        let unmark = PushAction::SetPlayed {
            played: false,
            at: None,
        };
        let position = PushAction::SetPosition {
            position_ms: 90_000,
            duration_ms: None,
        };
        let due = |e: OutboxEntry, due_at: Millis| OutboxEntry { due_at, ..e };
        o.insert(due(entry(1, "a", unmark), 100));
        o.insert(due(entry(2, "a", position.clone()), 0));
        o.insert(due(entry(3, "b", position), 0));
        assert_eq!(o.ready(50, 4), vec![3]);
        o.in_flight.insert(3);
        assert_eq!(o.next_due(), Some(100));
        assert_eq!(o.ready(100, 4), vec![1]);
    }

    /// A 429 holds every push of the pair until its time, and a Retry-After of years is read
    /// as an hour.
    #[test]
    fn a_rate_limit_holds_the_whole_outbox_and_is_capped() {
        let mut o = Outbox::default();
        let played = PushAction::SetPlayed {
            played: true,
            at: None,
        };
        o.insert(entry(1, "a", played.clone()));
        o.insert(entry(2, "b", played));
        o.hold_until = 5_000;
        assert!(o.ready(4_999, 4).is_empty());
        assert_eq!(o.next_due(), Some(5_000));
        assert_eq!(o.ready(5_000, 4), vec![1, 2]);
        let huge = BackendError::RateLimited {
            retry_after_ms: Some(u64::MAX / 4),
        };
        assert_eq!(
            sched().next_delay(1, &huge, 0.5),
            Some(Duration::from_secs(3600))
        );
    }

    #[test]
    fn backoff_doubles_from_base_to_max() {
        let s = sched();
        let d: Vec<u64> = (1..10)
            .map(|n| s.next_delay(n, &server(), 0.5).unwrap().as_secs())
            .collect();
        assert_eq!(d, vec![1, 2, 4, 8, 16, 32, 64, 128, 256]);
        let s = RetrySchedule { attempts: 20, ..s };
        assert_eq!(
            s.next_delay(12, &server(), 0.5),
            Some(Duration::from_secs(300))
        );
    }

    /// Errors about the whole server hold every push; a 500 (often about one item) and the
    /// errors that are not retried do not.
    #[test]
    fn which_errors_hold_every_push_to_the_server() {
        let server = |status| BackendError::Server {
            status,
            message: String::new(),
            retry_after_ms: None,
        };
        for e in [
            BackendError::Network {
                message: "refused".into(),
            },
            BackendError::Timeout { after_ms: 30_000 },
            BackendError::RateLimited {
                retry_after_ms: None,
            },
            server(502),
            server(503),
            server(504),
            BackendError::WebPage {
                message: "sign in".into(),
            },
        ] {
            assert!(e.is_server_wide(), "{e:?}");
        }
        for e in [
            server(500),
            BackendError::NotFound { what: "x".into() },
            BackendError::Auth { status: 401 },
            BackendError::Client {
                status: 408,
                message: String::new(),
            },
        ] {
            assert!(!e.is_server_wide(), "{e:?}");
        }
    }

    #[test]
    fn gives_up_after_attempts_or_on_permanent_errors() {
        let s = sched();
        assert_eq!(s.next_delay(10, &server(), 0.5), None);
        let perm = BackendError::Client {
            status: 400,
            message: "bad".into(),
        };
        assert_eq!(s.next_delay(1, &perm, 0.5), None);
        let unreadable = BackendError::BadResponse {
            message: "not json".into(),
        };
        assert_eq!(s.next_delay(1, &unreadable, 0.5), None);
        // A web page instead of the API (a maintenance page, a proxy's sign-in page) is
        // tried again, up to the attempts.
        let page = BackendError::WebPage {
            message: "maintenance".into(),
        };
        assert!(s.next_delay(1, &page, 0.5).is_some());
        assert_eq!(s.next_delay(10, &page, 0.5), None);
        let timeout408 = BackendError::Client {
            status: 408,
            message: "t".into(),
        };
        assert!(s.next_delay(1, &timeout408, 0.5).is_some());
    }

    #[test]
    fn delays_read_as_words() {
        assert_eq!(format_delay(Duration::from_millis(900)), "900 ms");
        assert_eq!(format_delay(Duration::from_millis(8_400)), "8 s");
        assert_eq!(format_delay(Duration::from_secs(120)), "2 min");
        assert_eq!(format_delay(Duration::from_secs(256)), "4 min 16 s");
    }

    #[test]
    fn retry_after_is_honoured_and_jitter_stays_in_bounds() {
        let s = sched();
        let e = BackendError::RateLimited {
            retry_after_ms: Some(7000),
        };
        assert_eq!(s.next_delay(1, &e, 0.9), Some(Duration::from_secs(7)));
        // A 503 in maintenance says when it is back, too.
        let maintenance = BackendError::Server {
            status: 503,
            message: "maintenance".into(),
            retry_after_ms: Some(120_000),
        };
        assert_eq!(
            s.next_delay(1, &maintenance, 0.9),
            Some(Duration::from_secs(120))
        );
        assert!(maintenance.asks_to_wait() && !server().asks_to_wait());
        // A Retry-After date already past asks for nothing.
        let past = BackendError::Server {
            status: 503,
            message: "maintenance".into(),
            retry_after_ms: Some(0),
        };
        assert!(!past.asks_to_wait());
        let j = RetrySchedule {
            jitter: 0.5,
            ..sched()
        };
        let lo = j.next_delay(3, &server(), 0.0).unwrap();
        let hi = j.next_delay(3, &server(), 0.999).unwrap();
        assert_eq!(lo, Duration::from_secs(2));
        assert!(hi > Duration::from_millis(5900) && hi <= Duration::from_secs(6));
    }

    fn entry(id: u64, item: &str, action: PushAction) -> OutboxEntry {
        OutboxEntry {
            id,
            item_id: item.into(),
            action,
            changed_at: id as Millis,
            origin: PairKey::new("u", "a"),
            request_id: "r".into(),
            attempts: 0,
            due_at: 0,
            created_at: 0,
            last_error: None,
            last_failure: None,
        }
    }

    #[test]
    fn played_push_supersedes_queued_pushes_of_the_item() {
        let mut o = Outbox::default();
        o.enqueue(entry(
            1,
            "a",
            PushAction::SetPosition {
                position_ms: 5,
                duration_ms: None,
            },
        ));
        o.enqueue(entry(
            2,
            "b",
            PushAction::SetPlayed {
                played: true,
                at: None,
            },
        ));
        let removed = o.enqueue(entry(
            3,
            "a",
            PushAction::SetPlayed {
                played: true,
                at: None,
            },
        ));
        assert_eq!(removed, vec![1]);
        assert_eq!(o.wanted_played("a"), Some((true, 3)));
        assert_eq!(o.wanted_position("a"), None);
        assert_eq!(o.ready(0, 4), vec![2, 3]);
        o.in_flight.insert(3);
        o.enqueue(entry(
            4,
            "a",
            PushAction::SetPlayed {
                played: false,
                at: None,
            },
        ));
        assert_eq!(o.ready(0, 4), vec![2], "one push per item at a time");
        assert_eq!(o.wanted_played("a"), Some((false, 4)));
    }
}
