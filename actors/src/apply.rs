//! Applying a webhook event to a pair's own state (DESIGN.md §6 rules 1–3 and 7).
//!
//! Every event ends in exactly one [`Outcome`] with a reason, and its journal entry is removed
//! in the same batch that persists the effect, even when nothing changed, so the journal
//! drains and a replay is a no-op by state equality.

use crate::backend::RemoteItem;
use crate::event::{EventKind, JournalEntry, Millis, Sender, WebhookEvent};
use crate::pair::{PairCore, LOOKUP_PAUSE};
use crate::propagate::StateChanged;
use crate::state::Identity;
use crate::status::{EventRecord, LastEvent, Outcome};
use crate::store::{Batch, StoreError, Tree};

/// What applying one event decided.
struct Decision {
    outcome: Outcome,
    reason: Option<String>,
}

impl Decision {
    fn new(outcome: Outcome, reason: impl Into<Option<&'static str>>) -> Self {
        Decision {
            outcome,
            reason: reason.into().map(str::to_string),
        }
    }
}

/// The identity an event states by itself.
pub fn event_identity(ev: &WebhookEvent) -> Option<Identity> {
    Some(Identity {
        item_type: ev.item_type?,
        ids: ev.external_ids.clone(),
        series_ids: ev.series_external_ids.clone(),
        season: ev.season,
        episode: ev.episode,
    })
}

/// The identity a backend lookup gives.
pub fn remote_identity(r: &RemoteItem) -> Identity {
    Identity {
        item_type: r.item_type,
        ids: r.external_ids.clone(),
        series_ids: r.series_external_ids.clone(),
        season: r.season,
        episode: r.episode,
    }
}

impl PairCore {
    /// Apply one journalled event; persists the effect and removes the journal entry.
    pub async fn on_webhook(&mut self, entry: JournalEntry) -> Result<(), StoreError> {
        let mut batch = Batch::new();
        batch.remove(Tree::Journal, JournalEntry::key(entry.seq).to_vec());
        // The second copy of an entry replayed at a restart (the router dispatched it too).
        if let Some(applied) = self.replayed.get_mut(&entry.seq) {
            if *applied {
                // No third copy comes: forgotten.
                self.replayed.remove(&entry.seq);
                tracing::debug!(pair = %self.spec.key, seq = entry.seq,
                    "journal entry already replayed; acknowledged");
                return self.commit(batch);
            }
            *applied = true;
        }
        self.meta.counters.received += 1;
        let lookup = self.lookup_if_needed(&entry.event).await;
        let decision = self.decide(&entry, lookup, &mut batch);
        match decision.outcome {
            Outcome::Applied | Outcome::Registered => self.meta.counters.applied += 1,
            Outcome::Unchanged | Outcome::Ignored => self.meta.counters.ignored += 1,
            Outcome::Dropped => self.meta.counters.failed += 1,
        }
        let ev = &entry.event;
        tracing::debug!(pair = %self.spec.key, seq = entry.seq, event = %ev.event,
            outcome = ?decision.outcome, reason = ?decision.reason, "webhook applied");
        let now = self.now();
        self.meta.last_event = Some(LastEvent {
            at: now,
            event: ev.event.as_str().to_string(),
            request_id: entry.request_id.clone(),
            outcome: decision.outcome,
            reason: decision.reason.clone(),
        });
        let item = ev.title.clone().or_else(|| ev.item_id.clone()).map(|t| {
            match (&ev.series_title, ev.season, ev.episode) {
                (Some(s), Some(se), Some(ep)) => format!("{s} S{se:02}E{ep:02} {t}"),
                _ => t,
            }
        });
        self.push_event_record(EventRecord {
            at: now,
            seq: entry.seq,
            request_id: entry.request_id.clone(),
            event: ev.event.as_str().to_string(),
            raw_event: ev.raw_event.clone(),
            item,
            outcome: decision.outcome,
            reason: decision.reason,
        });
        self.put_meta_soon(&mut batch);
        self.commit(batch)
    }

    /// One `get_item` call when the index does not know the event's backend item id and
    /// the event carries no usable ids (rule 1), or does not name its library while this
    /// backend ignores some (Jellyfin and Emby never name it; the lookup finds it).
    async fn lookup_if_needed(&mut self, ev: &WebhookEvent) -> Option<Result<RemoteItem, String>> {
        let relevant = ev.actionable() || ev.event == EventKind::ItemAdded;
        let usable = event_identity(ev).is_some_and(|i| i.is_usable());
        let library_unknown = !self.spec.ignore_libraries.is_empty() && ev.library_id.is_none();
        let item_id = ev.item_id.as_deref()?;
        if !relevant || (usable && !library_unknown) || self.items.by_item_id(item_id).is_some() {
            return None;
        }
        let now = self.now();
        if let Some((until, why)) = self.lookups_paused.as_ref().filter(|(u, _)| now < *u) {
            return Some(Err(format!(
                "lookups paused for {} s after the server failed one: {why}",
                (until - now + 999) / 1000
            )));
        }
        self.lookups_paused = None;
        match self.backend.get_item(item_id).await {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => Some(Err(format!("item {item_id} not found on the server"))),
            Err(e) => {
                self.record_error(format!("looking up item {item_id}: {e}"));
                // A server that is down or overloaded is not asked again for every webhook:
                // each try would hold this pair's queue for up to the request timeout.
                if e.is_retryable() {
                    let pause = LOOKUP_PAUSE.as_millis() as Millis;
                    self.lookups_paused = Some((now + pause, e.to_string()));
                }
                Some(Err(e.to_string()))
            }
        }
    }

    fn decide(
        &mut self,
        entry: &JournalEntry,
        lookup: Option<Result<RemoteItem, String>>,
        batch: &mut Batch,
    ) -> Decision {
        let ev = &entry.event;
        let at = entry.received_at;
        if !(ev.event.is_state_event() || ev.event == EventKind::ItemAdded) {
            return Decision::new(
                Outcome::Ignored,
                "not a playback, marking or item_added event",
            );
        }
        if ev.item_type.is_none() {
            return Decision::new(Outcome::Ignored, "not a movie or an episode");
        }
        if ev
            .library_id
            .as_deref()
            .is_some_and(|l| self.library_ignored(l))
        {
            return Decision::new(Outcome::Ignored, "library ignored by ignore_libraries");
        }
        // Resolve the identity: the event's own ids, the index, or the lookup.
        let mut identity = event_identity(ev).expect("item_type checked above");
        let known_slot = ev
            .item_id
            .as_deref()
            .and_then(|id| self.items.by_item_id(id));
        if let Some(slot) = known_slot {
            if self.item_ignored(slot) {
                return Decision::new(Outcome::Ignored, "library ignored by ignore_libraries");
            }
            identity = self.items.get(slot).identity().merged(&identity);
        }
        let mut lookup_duration = None;
        match lookup {
            Some(Ok(remote)) => {
                if remote
                    .library_id
                    .as_deref()
                    .is_some_and(|l| self.library_ignored(l))
                {
                    return Decision::new(Outcome::Ignored, "library ignored by ignore_libraries");
                }
                identity = identity.merged(&remote_identity(&remote));
                lookup_duration = remote.duration_ms;
            }
            Some(Err(e)) if !identity.is_usable() => {
                self.meta.dropped_no_ids += 1;
                return Decision {
                    outcome: Outcome::Dropped,
                    reason: Some(format!("no external ids (lookup failed: {e})")),
                };
            }
            // The item may be in an ignored library, and only the server can say: dropped,
            // not applied on a guess. The next sync finds its state either way.
            Some(Err(e)) if !self.spec.ignore_libraries.is_empty() && ev.library_id.is_none() => {
                return Decision {
                    outcome: Outcome::Dropped,
                    reason: Some(format!(
                        "its library is unknown and this backend ignores some (lookup failed: {e}); the next sync finds its state"
                    )),
                };
            }
            _ => {}
        }
        if !identity.is_usable() {
            self.meta.dropped_no_ids += 1;
            return Decision::new(Outcome::Dropped, "no external ids");
        }
        // Register (or teach the index) the item when the event names it.
        let mut slot = None;
        let mut registered = false;
        if let Some(item_id) = ev.item_id.as_deref() {
            // An event that asserts a state is compared with what the record knew, even when
            // it names the item by a new id (a user's unmark of a re-added film still goes out).
            let keep_state = ev.asserts_played().is_some();
            let up = self
                .items
                .upsert(item_id, &identity, ev.title.as_deref(), at, keep_state);
            let (s, is_new, mut changed) = (up.slot, up.is_new, up.changed);
            if let Some(old) = &up.renamed_from {
                batch.remove(Tree::Pairs, self.item_key(old));
            }
            let duration = ev.duration_ms.or(lookup_duration);
            let item = self.items.get_mut(s);
            if duration.is_some() && item.duration_ms != duration {
                item.duration_ms = duration;
                changed = true;
            }
            // Not in an ignored library (checked above): a copy of a film whose other copy,
            // in an ignored library, held this slot is followed.
            if item.in_ignored_library {
                item.in_ignored_library = false;
                changed = true;
            }
            registered = is_new;
            slot = Some(s);
            // An event that only tells the item was seen again (a repeated or no-op webhook)
            // does not rewrite it: `last_seen` is status, written with the meta (within
            // META_WRITE_DELAY). Any other change is in this batch.
            if changed {
                self.put_item(batch, s);
            } else {
                self.seen_soon(s);
            }
            self.apply_pending_for(s, batch);
        } else if let Some(s) = self.items.find_own(&identity) {
            slot = Some(s);
        }
        if ev.event == EventKind::ItemAdded {
            return if registered {
                Decision::new(Outcome::Registered, "item registered")
            } else {
                Decision::new(Outcome::Unchanged, "item already known")
            };
        }
        if !self.spec.import {
            return Decision::new(Outcome::Ignored, "import disabled for this backend");
        }
        if let Some(played) = ev.asserts_played() {
            // `import_unplayed = false`: the backend's unmark is not taken (one of ours coming
            // back, with our unmark of the item queued, is handled as usual).
            let refused = !played
                && !self.spec.import_unplayed
                && slot.is_none_or(|s| {
                    let item_id = &self.items.get(s).item_id;
                    self.outbox
                        .wanted_played(item_id)
                        .is_none_or(|(want, _)| want)
                });
            if refused {
                if let Some(s) = slot {
                    self.restore_played(s, &identity, &entry.request_id, batch);
                }
                return Decision::new(
                    Outcome::Ignored,
                    "unmarks from this backend are not imported (import_unplayed = false)",
                );
            }
            if ev.sender == Sender::Tautulli {
                return self.apply_reported_play(
                    slot,
                    &identity,
                    played,
                    at,
                    &entry.request_id,
                    batch,
                );
            }
            // A mark (not a playback) is what a server reports about our own write.
            let may_echo = matches!(ev.event, EventKind::MarkPlayed | EventKind::MarkUnplayed);
            return self.apply_played(
                slot,
                &identity,
                played,
                may_echo,
                at,
                &entry.request_id,
                batch,
            );
        }
        match ev.position_ms {
            Some(pos) => self.apply_position(slot, &identity, pos, at, &entry.request_id, batch),
            None => Decision::new(Outcome::Unchanged, "event carries no position"),
        }
    }

    /// Tautulli's "watched": what Tautulli saw played, at its own threshold (85 % by default),
    /// not what Plex stored (Plex marks played at 90 %). The siblings get it, but the Plex
    /// pair's record keeps what Plex itself reports: stored as Plex's state, a stop at 87 %
    /// would have the next sync read Plex's "unplayed" as the user unmarking the film, and
    /// unmark it everywhere.
    fn apply_reported_play(
        &mut self,
        slot: Option<u32>,
        identity: &Identity,
        played: bool,
        at: Millis,
        request_id: &str,
        batch: &mut Batch,
    ) -> Decision {
        if let Some(s) = slot {
            let item = self.items.get(s);
            if item.played == played {
                return Decision::new(Outcome::Unchanged, "state already equal");
            }
            if at < item.played_at {
                return Decision::new(Outcome::Ignored, "older than the stored state");
            }
            // A sibling's opposite change still queued for Plex is older than this play.
            let item_id = item.item_id.to_string();
            self.drop_stale_dead_letters(&item_id, true, at, batch);
            if self
                .outbox
                .wanted_played(&item_id)
                .is_some_and(|(want, _)| want != played)
            {
                self.drop_queued_pushes(&item_id, true, batch);
            }
        }
        self.propagate(identity, Some(played), None, at, request_id, batch);
        Decision::new(Outcome::Applied, None)
    }

    /// `import_unplayed = false` and the server reports the item at `slot`, held as played,
    /// unplayed: the unmark is not taken (the record stays played, so catch-ups and later
    /// comparisons go by it), and the server gets the played state back, dated as before
    /// (as WatchState's export restores it), unless a push of it is queued already or
    /// nothing is written to this backend.
    pub fn restore_played(
        &mut self,
        slot: u32,
        identity: &Identity,
        request_id: &str,
        batch: &mut Batch,
    ) {
        let item = self.items.get(slot);
        let item_id = item.item_id.to_string();
        if !item.played
            || !self.spec.export
            || self
                .outbox
                .wanted_played(&item_id)
                .is_some_and(|(want, _)| want)
        {
            return;
        }
        let at = item.played_at;
        let back = StateChanged {
            identity: identity.clone(),
            played: Some(true),
            position_ms: None,
            changed_at: at,
            origin: self.spec.key.clone(),
            request_id: request_id.to_string(),
        };
        let action = crate::outbox::PushAction::SetPlayed {
            played: true,
            at: (at > crate::propagate::UNDATED_PLAY).then_some(at),
        };
        self.queue_push(item_id, action, &back, batch);
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_played(
        &mut self,
        slot: Option<u32>,
        identity: &Identity,
        played: bool,
        may_echo: bool,
        at: Millis,
        request_id: &str,
        batch: &mut Batch,
    ) -> Decision {
        if let Some(s) = slot {
            let item = self.items.get(s);
            if item.played == played {
                // Equal to what the server held, but a sibling's opposite change may still be
                // queued for it (the push is being retried): the user's own action here, when
                // newer, wins over it, here and on the siblings.
                let item_id = item.item_id.to_string();
                let wanted = self.outbox.wanted_played(&item_id);
                let opposite_queued = wanted.is_some_and(|(want, _)| want != played);
                if may_echo && opposite_queued && self.late_echo(&item_id, played, true) {
                    return Decision::new(Outcome::Unchanged, "late echo of our own push");
                }
                // Dead letters only: the queue, and `wanted`, stay as they are.
                self.drop_stale_dead_letters(&item_id, true, at, batch);
                match wanted {
                    Some((want, changed_at)) if want != played && at >= changed_at => {
                        self.drop_queued_pushes(&item_id, true, batch);
                        self.items.get_mut(s).played_at = at;
                        self.touch(s);
                        self.put_item(batch, s);
                        // The opposite push could not be dropped: it is running. The server
                        // gets the user's state back right after it.
                        if self
                            .outbox
                            .wanted_played(&item_id)
                            .is_some_and(|(want, _)| want != played)
                        {
                            let back = StateChanged {
                                identity: identity.clone(),
                                played: Some(played),
                                position_ms: None,
                                changed_at: at,
                                origin: self.spec.key.clone(),
                                request_id: request_id.to_string(),
                            };
                            self.want(s, &back, batch);
                        }
                        self.propagate(identity, Some(played), None, at, request_id, batch);
                        return Decision::new(Outcome::Applied, None);
                    }
                    _ => {
                        if may_echo {
                            self.echo_of_confirmed(&item_id, played);
                        }
                        return Decision::new(Outcome::Unchanged, "state already equal");
                    }
                }
            }
            if at < item.played_at {
                return Decision::new(Outcome::Ignored, "older than the stored state");
            }
            let item_id = item.item_id.to_string();
            let wanted = self.outbox.wanted_played(&item_id);
            let opposite_queued = wanted.is_some_and(|(want, _)| want != played);
            if may_echo && self.late_echo(&item_id, played, opposite_queued) {
                return Decision::new(Outcome::Unchanged, "late echo of our own push");
            }
            self.drop_stale_dead_letters(&item_id, true, at, batch);
            // Our own push coming back before its confirmation: the echo of a sibling's change.
            if let Some((want, changed_at)) = wanted {
                if want == played {
                    let running = self.outbox.entries_for(&item_id).any(|e| {
                        self.outbox.in_flight.contains(&e.id)
                            && matches!(e.action, crate::outbox::PushAction::SetPlayed { played: p, .. } if p == played)
                    });
                    if may_echo && running {
                        self.echo_before_confirmation(&item_id, played);
                    }
                    self.settle_echo(s, played, changed_at, batch);
                    return Decision::new(Outcome::Unchanged, "echo of our own push");
                }
            }
            // The user's own action here is newer than any sibling change still queued.
            self.drop_queued_pushes(&item_id, true, batch);
            self.items.get_mut(s).set_played(played, at);
            self.touch(s);
            self.put_item(batch, s);
        }
        self.propagate(identity, Some(played), None, at, request_id, batch);
        Decision::new(Outcome::Applied, None)
    }

    fn apply_position(
        &mut self,
        slot: Option<u32>,
        identity: &Identity,
        pos: u64,
        at: Millis,
        request_id: &str,
        batch: &mut Batch,
    ) -> Decision {
        if let Some(s) = slot {
            let item = self.items.get(s);
            if item.position_ms == pos {
                return Decision::new(Outcome::Unchanged, "position already equal");
            }
            if at < item.position_at {
                return Decision::new(Outcome::Ignored, "older than the stored position");
            }
            if self.outbox.wanted_position(&item.item_id) == Some(pos) {
                return Decision::new(Outcome::Unchanged, "echo of our own push");
            }
            let item_id = item.item_id.to_string();
            self.drop_stale_dead_letters(&item_id, false, at, batch);
            self.drop_queued_pushes(&item_id, false, batch);
            let item = self.items.get_mut(s);
            item.position_ms = pos;
            item.position_at = at;
            self.touch(s);
            self.put_item(batch, s);
        }
        if self.settings.progress && pos > self.settings.progress_min.as_millis() as u64 {
            self.propagate(identity, None, Some(pos), at, request_id, batch);
        }
        Decision::new(Outcome::Applied, None)
    }
}
