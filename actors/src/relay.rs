//! Durable relays between the pairs of one user (DESIGN.md §7: nothing accepted is ever lost).
//!
//! A change a pair applied reaches its siblings as an in-memory `StateChanged`, while the
//! journal entry that caused it leaves the journal in the batch that stores the source's
//! effect. A crash between that batch and the sibling's own would lose the push. So the same
//! batch also writes one relay record per exporting sibling, under the sibling's prefix:
//! `<user>/<sibling>/r/<created ms>/<origin backend>/<origin id>` → the `StateChanged` as JSON.
//! The messages are sent only once that batch is committed (so a sibling can never remove a
//! record before it exists), and the sibling removes the record in the batch that stores its
//! handling (outbox entry, pending state, conflict, or nothing). At every (re)start an actor
//! handles its relay records first, in key order (oldest first); a change handled twice, from
//! its record and from its message, changes nothing the second time (state equality).

use crate::event::Millis;
use crate::pair::{decode, encode, PairCore, PairMsg};
use crate::propagate::StateChanged;
use crate::store::{Batch, PairKey, StoreError, Tree};

/// A change waiting for the commit of the batch that made it durable.
pub struct Outgoing {
    /// The sibling to tell.
    pub to: PairKey,
    /// Its relay record, removed by the sibling once handled.
    pub key: Vec<u8>,
    pub change: StateChanged,
}

/// The store prefix of a pair's relay records.
pub fn relay_prefix(pair: &PairKey) -> String {
    format!("{}/{}/r/", pair.user, pair.backend)
}

/// The key of one relay record: ordered by creation time, then origin and its id, so records
/// are handled in the order the changes were made.
pub fn relay_key(to: &PairKey, created: Millis, origin: &PairKey, id: u64) -> Vec<u8> {
    format!(
        "{}{:020}/{}/{:020}",
        relay_prefix(to),
        created.max(0),
        origin.backend,
        id
    )
    .into_bytes()
}

impl PairCore {
    /// Write the relay record of a change for `to` into `batch` (the batch that stores the
    /// change here) and keep the message until that batch is committed.
    pub fn relay(&mut self, to: PairKey, change: StateChanged, batch: &mut Batch) {
        let id = self.next_id();
        let key = relay_key(&to, self.now(), &self.spec.key, id);
        batch.put(Tree::Pairs, key.clone(), encode(&change));
        self.outgoing.push(Outgoing { to, key, change });
    }

    /// Send the changes whose batch was just committed.
    pub fn send_outgoing(&mut self) {
        for o in std::mem::take(&mut self.outgoing) {
            self.send_to(
                &o.to,
                PairMsg::StateChanged {
                    change: Box::new(o.change),
                    relay: Some(o.key),
                },
            );
        }
    }

    /// At (re)start, before any message: handle the relay records left for this pair by a
    /// process or an actor that stopped before handling them.
    pub fn handle_relays(&mut self) -> Result<usize, StoreError> {
        let prefix = relay_prefix(self.key());
        let rows = self.store.scan_prefix(Tree::Pairs, prefix.as_bytes())?;
        let n = rows.len();
        for (k, v) in rows {
            let change: StateChanged = decode(&v).ok_or_else(|| {
                StoreError(format!(
                    "cannot decode the relayed change at {}: delete it or restore a backup",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            self.on_state_changed(change, Some(k))?;
        }
        if n > 0 {
            tracing::info!(pair = %self.spec.key, relays = n, "handled changes relayed before a stop");
        }
        Ok(n)
    }
}
