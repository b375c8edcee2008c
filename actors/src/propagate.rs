//! Propagation between the pairs of one user (DESIGN.md §6 rules 4–6): `StateChanged` to
//! siblings, comparison on the target, pending wanted states and conflicts.

use crate::event::Millis;
use crate::outbox::{OutboxEntry, PushAction};
use crate::pair::{encode, PairCore, PairMsg, CONFLICT_LIMIT};
use crate::state::{key_hashes, Identity};
use crate::status::{ConflictRecord, PendingView};
use crate::store::{Batch, PairKey, StoreError, Tree};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The date an undated play is held at (see the scheduled sync's first sight): no real date.
pub const UNDATED_PLAY: Millis = 1;

/// A change applied by a sibling (U, A), sent to (U, X) (rule 4). Exactly one of `played`
/// and `position_ms` is set: a played change clears the position by itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChanged {
    pub identity: Identity,
    pub played: Option<bool>,
    pub position_ms: Option<u64>,
    /// The time of the change (rule 3), stored with the state once pushed.
    pub changed_at: Millis,
    pub origin: PairKey,
    /// The webhook request (or `sync:<pair>`) that caused it, for traces.
    pub request_id: String,
}

/// A wanted state for an item this backend does not know yet (rule 5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEntry {
    pub id: u64,
    pub identity: Identity,
    pub played: Option<(bool, Millis)>,
    pub position: Option<(u64, Millis)>,
    pub origin: PairKey,
    pub request_id: String,
    pub since: Millis,
}

/// Pending wanted states with an index by identity key.
#[derive(Debug, Default)]
pub struct Pending {
    entries: BTreeMap<u64, PendingEntry>,
    by_key: HashMap<String, u64>,
}

impl Pending {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn insert(&mut self, p: PendingEntry) {
        for k in p.identity.index_keys() {
            self.by_key.insert(k, p.id);
        }
        self.entries.insert(p.id, p);
    }

    /// The entry for this identity. An index key counts only while the entry it names still
    /// has it: an entry's identity can change (a merge brings other season and episode
    /// numbers), and a key left from before must not hand its state to another item.
    ///
    /// As [`crate::state::Items::find`]: an episode numbered otherwise is taken only when
    /// nothing better matches and no id contradicts (the parts of a double episode share an
    /// IMDb id; one part's state must not go to the other).
    pub fn find(&self, identity: &Identity) -> Option<u64> {
        let mut fallback = None;
        for k in identity.index_keys() {
            let Some(&id) = self.by_key.get(&k) else {
                continue;
            };
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            if !entry.identity.index_keys().contains(&k) {
                continue;
            }
            match identity.match_rank_of(&entry.identity, false) {
                Some(0) => return Some(id),
                Some(_) => fallback = fallback.or(Some(id)),
                None => {}
            }
        }
        fallback
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut PendingEntry> {
        self.entries.get_mut(&id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &PendingEntry> {
        self.entries.values()
    }

    pub fn remove(&mut self, id: u64) -> Option<PendingEntry> {
        let p = self.entries.remove(&id)?;
        for k in p.identity.index_keys() {
            if self.by_key.get(&k) == Some(&id) {
                self.by_key.remove(&k);
            }
        }
        Some(p)
    }

    pub fn view_for_keys(&self, keys: &[String]) -> Option<PendingView> {
        let id = keys.iter().find_map(|k| self.by_key.get(k))?;
        let p = self.entries.get(id)?;
        Some(PendingView {
            identity: p.identity.clone(),
            played: p.played.map(|x| x.0),
            played_at: p.played.map(|x| x.1),
            position_ms: p.position.map(|x| x.0),
            position_at: p.position.map(|x| x.1),
            origin: p.origin.clone(),
            request_id: p.request_id.clone(),
            since: p.since,
        })
    }
}

impl PairCore {
    /// Relay a change this pair applied to every sibling of the same user that accepts
    /// pushes: a durable record in `batch` (the batch that stores the change here), and a
    /// message sent once that batch is committed (see [`crate::relay`]).
    pub fn propagate(
        &mut self,
        identity: &Identity,
        played: Option<bool>,
        position_ms: Option<u64>,
        changed_at: Millis,
        request_id: &str,
        batch: &mut Batch,
    ) {
        if !self.spec.import {
            return;
        }
        for (sibling, export) in self.router.siblings(self.key()) {
            if !export {
                continue;
            }
            let msg = StateChanged {
                identity: identity.clone(),
                played,
                position_ms,
                changed_at,
                origin: self.spec.key.clone(),
                request_id: request_id.to_string(),
            };
            self.relay(sibling, msg, batch);
        }
    }

    /// A sibling's change arrived: compare, then push, keep pending, or record a conflict.
    /// `relay` is its durable record, removed in the same batch as the outcome.
    pub fn on_state_changed(
        &mut self,
        sc: StateChanged,
        relay: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        if self.spec.export && sc.origin.user == self.spec.key.user {
            let conflicts_before = self.meta.conflicts;
            match self.items.find(&sc.identity) {
                // In an ignored library: nothing is written to it, nothing kept for it.
                Some(slot) if self.item_ignored(slot) => {}
                Some(slot) => {
                    let pushed = self.want(slot, &sc, &mut batch);
                    if pushed && sc.request_id == format!("sync:{}", self.spec.key) {
                        self.meta.sync.pushed += 1;
                    }
                }
                // Found by this pair's sync in an ignored library: never registered here.
                None if !self.spec.ignore_libraries.is_empty()
                    && key_hashes(&sc.identity).any(|k| self.ignored_keys.contains(&k)) => {}
                None => self.keep_pending(sc, &mut batch),
            }
            // Equal states (echoes, catch-up of known states) change no state at all.
            if !batch.is_empty() || self.meta.conflicts != conflicts_before {
                self.put_meta(&mut batch);
            }
        }
        if let Some(key) = relay {
            batch.remove(Tree::Pairs, key);
        }
        self.commit(batch)
    }

    fn keep_pending(&mut self, sc: StateChanged, batch: &mut Batch) {
        let now = self.now();
        let id = match self.pending.find(&sc.identity) {
            Some(id) => id,
            None => {
                let id = self.next_id();
                self.pending.insert(PendingEntry {
                    id,
                    identity: sc.identity.clone(),
                    played: None,
                    position: None,
                    origin: sc.origin.clone(),
                    request_id: sc.request_id.clone(),
                    since: now,
                });
                id
            }
        };
        let before = self.pending.get_mut(id).map(|p| p.clone());
        let p = self.pending.get_mut(id).expect("just found or inserted");
        if let Some(played) = sc.played {
            if p.played.is_none_or(|(_, at)| sc.changed_at >= at) {
                p.played = Some((played, sc.changed_at));
                p.position = None;
                p.origin = sc.origin.clone();
                p.request_id = sc.request_id.clone();
            }
        }
        if let Some(pos) = sc.position_ms {
            let newer_played = p.played.is_some_and(|(_, at)| at > sc.changed_at);
            if !newer_played && p.position.is_none_or(|(_, at)| sc.changed_at >= at) {
                p.position = Some((pos, sc.changed_at));
                p.origin = sc.origin.clone();
                p.request_id = sc.request_id.clone();
            }
        }
        p.identity = p.identity.merged(&sc.identity);
        let p = p.clone();
        // The same wanted state again (every sibling's catch-up resends it): nothing to write.
        if before.as_ref().is_some_and(|b| *b == p) {
            return;
        }
        self.pending.remove(id);
        self.pending.insert(p.clone());
        batch.put(Tree::Pairs, self.pending_key(id), encode(&p));
    }

    /// Apply wanted states kept for the item in `slot`, now that this pair knows it.
    pub fn apply_pending_for(&mut self, slot: u32, batch: &mut Batch) -> usize {
        if self.pending.is_empty() {
            return 0;
        }
        let identity = self.items.get(slot).identity();
        let Some(id) = self.pending.find(&identity) else {
            return 0;
        };
        let p = self.pending.remove(id).expect("found above");
        batch.remove(Tree::Pairs, self.pending_key(id));
        let mut pushed = 0;
        if let Some((played, at)) = p.played {
            let sc = StateChanged {
                identity: p.identity.clone(),
                played: Some(played),
                position_ms: None,
                changed_at: at,
                origin: p.origin.clone(),
                request_id: p.request_id.clone(),
            };
            pushed += self.want(slot, &sc, batch) as usize;
        }
        if let Some((pos, at)) = p.position {
            let sc = StateChanged {
                identity: p.identity,
                played: None,
                position_ms: Some(pos),
                changed_at: at,
                origin: p.origin,
                request_id: p.request_id,
            };
            pushed += self.want(slot, &sc, batch) as usize;
        }
        pushed
    }

    /// Forget the dead letters of `item_id` that a change made at `changed_at` (a played one
    /// when `played`, else a position) makes stale, whether it came from a sibling or from
    /// this backend: retried later, they would put an old state back over the newer one.
    pub fn drop_stale_dead_letters(
        &mut self,
        item_id: &str,
        played: bool,
        changed_at: Millis,
        batch: &mut Batch,
    ) {
        if self.outbox.dead.is_empty() {
            return;
        }
        for id in self.outbox.dead_superseded_by(item_id, played, changed_at) {
            self.outbox.dead.remove(&id);
            batch.remove(Tree::Pairs, self.dead_key(id));
        }
    }

    /// Compare a wanted state with the item's state (including pushes already queued) and
    /// queue a push when needed. Returns true when a push was queued.
    pub fn want(&mut self, slot: u32, sc: &StateChanged, batch: &mut Batch) -> bool {
        if !self.spec.export {
            return false;
        }
        let item_id = self.items.get(slot).item_id.to_string();
        self.drop_stale_dead_letters(&item_id, sc.played.is_some(), sc.changed_at, batch);
        let item = self.items.get(slot);
        let (eff_played, eff_played_at) = self
            .outbox
            .wanted_played(&item_id)
            .unwrap_or((item.played, item.played_at));
        let action = if let Some(played) = sc.played {
            if eff_played == played {
                return false;
            }
            if eff_played_at > sc.changed_at {
                self.record_conflict(sc, eff_played_at, format!("played={played}"));
                return false;
            }
            PushAction::SetPlayed {
                played,
                // A play of unknown date is held as 1 ms (the oldest state): it is sent
                // without one, not as played on 1 January 1970.
                at: (played && sc.changed_at > UNDATED_PLAY).then_some(sc.changed_at),
            }
        } else if let Some(pos) = sc.position_ms {
            let s = &self.settings;
            if !s.progress || eff_played || pos <= s.progress_min.as_millis() as u64 {
                return false;
            }
            if !self.backend.accepts_positions() {
                tracing::debug!(pair = %self.spec.key, item = %item_id,
                    "position not sent: this server cannot store one");
                return false;
            }
            let eff_pos = self
                .outbox
                .wanted_position(&item_id)
                .unwrap_or(item.position_ms);
            if pos.abs_diff(eff_pos) <= s.progress_threshold.as_millis() as u64 {
                return false;
            }
            if item.position_at > sc.changed_at {
                self.record_conflict(sc, item.position_at, format!("position={pos}"));
                return false;
            }
            PushAction::SetPosition {
                position_ms: pos,
                duration_ms: item.duration_ms,
            }
        } else {
            return false;
        };
        self.queue_push(item_id, action, sc, batch);
        true
    }

    /// Queue a push of `action` for `item_id`, caused by the change `sc`.
    pub fn queue_push(
        &mut self,
        item_id: String,
        action: PushAction,
        sc: &StateChanged,
        batch: &mut Batch,
    ) {
        let now = self.now();
        let entry = OutboxEntry {
            id: self.next_id(),
            item_id,
            action,
            changed_at: sc.changed_at,
            origin: sc.origin.clone(),
            request_id: sc.request_id.clone(),
            attempts: 0,
            due_at: now,
            created_at: now,
            last_error: None,
            last_failure: None,
        };
        for removed in self.outbox.enqueue(entry.clone()) {
            batch.remove(Tree::Pairs, self.outbox_key(removed));
        }
        self.put_outbox(batch, &entry);
    }

    fn record_conflict(&mut self, sc: &StateChanged, held_at: Millis, wanted: String) {
        self.meta.conflicts += 1;
        if self.conflicts.len() >= CONFLICT_LIMIT {
            self.conflicts.pop_front();
        }
        self.conflicts.push_back(ConflictRecord {
            at: self.now(),
            identity: sc.identity.describe(),
            origin: sc.origin.clone(),
            request_id: sc.request_id.clone(),
            wanted,
            wanted_at: sc.changed_at,
            held_at,
        });
    }

    /// A sibling finished a sync: send it every state this pair knows a time for, so the
    /// sibling can push what its backend lacks (rule 8). Equal states cost it nothing.
    pub fn on_catch_up(&self, requester: &PairKey) {
        if requester.user != self.spec.key.user {
            return;
        }
        self.send_catch_up(requester);
        // After the states, in the same mailbox: every one of them is handled before this.
        self.send_to(
            requester,
            PairMsg::CatchUpDone {
                from: self.spec.key.clone(),
            },
        );
    }

    /// The requester's sibling answered a catch-up completely: not asked again.
    pub fn on_catch_up_done(&mut self, from: &PairKey) -> Result<(), StoreError> {
        let before = self.meta.catch_up_from.len();
        self.meta.catch_up_from.retain(|k| k != from);
        if self.meta.catch_up_from.len() == before {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.put_meta_soon(&mut batch);
        self.commit(batch)
    }

    /// At start: siblings whose catch-up answer a stop may have cut short are asked again
    /// (equal states cost nothing); those no longer configured are forgotten.
    pub fn ask_catch_up_again(&mut self) {
        let siblings = self.sibling_keys();
        self.meta.catch_up_from.retain(|k| siblings.contains(k));
        self.ask_catch_up(&self.meta.catch_up_from);
    }

    /// The other pairs of this pair's user.
    pub fn sibling_keys(&self) -> Vec<PairKey> {
        self.router
            .siblings(self.key())
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// Ask `siblings` for every state they know (rule 8); each answers with
    /// [`PairMsg::CatchUpDone`] after its states.
    pub fn ask_catch_up(&self, siblings: &[PairKey]) {
        for sibling in siblings {
            self.send_to(
                sibling,
                PairMsg::CatchUp {
                    requester: self.spec.key.clone(),
                },
            );
        }
    }

    fn send_catch_up(&self, requester: &PairKey) {
        if !self.spec.import {
            return;
        }
        let request_id = format!("sync:{}", requester);
        for (slot, item) in self.items.iter() {
            // Its state here is no longer followed: it would only be an old one.
            if self.item_ignored(slot) {
                continue;
            }
            let identity = item.identity();
            if !identity.is_usable() {
                continue;
            }
            if item.played_at > 0 {
                let msg = StateChanged {
                    identity: identity.clone(),
                    played: Some(item.played),
                    position_ms: None,
                    changed_at: item.played_at,
                    origin: self.spec.key.clone(),
                    request_id: request_id.clone(),
                };
                self.send_to(
                    requester,
                    PairMsg::StateChanged {
                        change: Box::new(msg),
                        relay: None,
                    },
                );
            }
            if !item.played
                && item.position_at > 0
                && item.position_ms > self.settings.progress_min.as_millis() as u64
            {
                let msg = StateChanged {
                    identity,
                    played: None,
                    position_ms: Some(item.position_ms),
                    changed_at: item.position_at,
                    origin: self.spec.key.clone(),
                    request_id: request_id.clone(),
                };
                self.send_to(
                    requester,
                    PairMsg::StateChanged {
                        change: Box::new(msg),
                        relay: None,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::ItemType;

    fn episode(season: u32, episode: u32) -> Identity {
        Identity {
            item_type: ItemType::Episode,
            ids: Default::default(),
            series_ids: [("tvdb".to_string(), "12".to_string())]
                .into_iter()
                .collect(),
            season: Some(season),
            episode: Some(episode),
        }
    }

    /// An entry whose episode numbers changed (another numbering merged in) is not found
    /// any more by its old numbers, which may name another episode.
    #[test]
    fn a_key_the_entry_no_longer_has_finds_nothing() {
        let mut pending = Pending::default();
        pending.insert(PendingEntry {
            id: 1,
            identity: episode(1, 2),
            played: Some((true, 5)),
            position: None,
            origin: PairKey::new("u", "plex"),
            request_id: "r".into(),
            since: 0,
        });
        assert_eq!(pending.find(&episode(1, 2)), Some(1));
        // As keep_pending does: change the identity, then remove and insert again.
        pending.get_mut(1).unwrap().identity = episode(1, 3);
        let entry = pending.get_mut(1).unwrap().clone();
        pending.remove(1);
        pending.insert(entry);
        assert_eq!(pending.find(&episode(1, 3)), Some(1));
        assert_eq!(pending.find(&episode(1, 2)), None);
    }
}
