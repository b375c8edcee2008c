//! A pair's items in memory: compact records, an index from external ids (and series id +
//! season + episode) to items, and the identity rule of DESIGN.md §6 rule 1.
//!
//! Memory matters (10 000 actors × 100 items, under 512 bytes per item), so an item keeps its
//! ids as one packed string and the indexes map packed keys to a `u32` slot.

use crate::event::{ExternalIds, ItemType, Millis};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What makes two items on different backends "the same" (DESIGN.md §6 rule 1): the type and
/// provider ids, or for episodes the show's ids with season and episode numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub item_type: ItemType,
    /// The item's own provider ids.
    #[serde(default, skip_serializing_if = "ExternalIds::is_empty")]
    pub ids: ExternalIds,
    /// The show's provider ids (episodes), for legacy agents that only name the show.
    #[serde(default, skip_serializing_if = "ExternalIds::is_empty")]
    pub series_ids: ExternalIds,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub season: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode: Option<u32>,
}

impl Identity {
    /// True when the identity can match anything: own ids, or series ids with both numbers.
    pub fn is_usable(&self) -> bool {
        !self.index_keys().is_empty()
    }

    /// The index keys this identity answers to. Movie and episode keys differ, so a movie
    /// never matches an episode that shares a provider id.
    pub fn index_keys(&self) -> Vec<String> {
        let t = match self.item_type {
            ItemType::Movie => 'm',
            ItemType::Episode => 'e',
        };
        let mut keys: Vec<String> = self
            .ids
            .iter()
            .filter(|(p, v)| !p.is_empty() && !v.is_empty())
            .map(|(p, v)| format!("{t}:{p}:{v}"))
            .collect();
        if self.item_type == ItemType::Episode {
            if let (Some(s), Some(e)) = (self.season, self.episode) {
                keys.extend(
                    self.series_ids
                        .iter()
                        .filter(|(p, v)| !p.is_empty() && !v.is_empty())
                        .map(|(p, v)| format!("s:{p}:{v}:{s}:{e}")),
                );
            }
        }
        keys
    }

    /// Ids of both maps merged (the newer identity's values win).
    pub fn merged(&self, newer: &Identity) -> Identity {
        let mut out = self.clone();
        out.ids.extend(newer.ids.clone());
        out.series_ids.extend(newer.series_ids.clone());
        if newer.season.is_some() {
            out.season = newer.season;
        }
        if newer.episode.is_some() {
            out.episode = newer.episode;
        }
        out
    }

    /// A short text for status and logs, e.g. `movie imdb:tt1`.
    pub fn describe(&self) -> String {
        let ids: Vec<String> = self.ids.iter().map(|(p, v)| format!("{p}:{v}")).collect();
        let mut s = format!("{} {}", self.item_type.as_str(), ids.join(","));
        if let (false, Some(se), Some(ep)) = (self.series_ids.is_empty(), self.season, self.episode)
        {
            let sids: Vec<String> = self
                .series_ids
                .iter()
                .map(|(p, v)| format!("{p}:{v}"))
                .collect();
            s.push_str(&format!(" series {} S{se:02}E{ep:02}", sids.join(",")));
        }
        s
    }
}

/// Separators for packed id strings: control characters no id contains.
const PAIR_SEP: char = '\u{1e}';
const KV_SEP: char = '\u{1f}';

fn pack_ids(ids: &ExternalIds) -> Box<str> {
    let mut s = String::new();
    for (p, v) in ids {
        if !s.is_empty() {
            s.push(PAIR_SEP);
        }
        s.push_str(p);
        s.push(KV_SEP);
        s.push_str(v);
    }
    s.into_boxed_str()
}

fn unpack_ids(s: &str) -> ExternalIds {
    s.split(PAIR_SEP)
        .filter_map(|kv| kv.split_once(KV_SEP))
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

/// One tracked movie or episode on this pair's backend, kept small.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The item's id on this backend: what pushes address.
    pub item_id: Box<str>,
    /// Packed external ids (see [`pack_ids`]).
    ids: Box<str>,
    /// Packed series ids.
    series_ids: Box<str>,
    /// For status output only.
    pub title: Box<str>,
    pub item_type: ItemType,
    pub season: Option<u32>,
    pub episode: Option<u32>,
    pub played: bool,
    /// When `played` got its value; 0 = unknown (first seen unplayed, never changed).
    pub played_at: Millis,
    pub position_ms: u64,
    /// When the position got its value; 0 = unknown.
    pub position_at: Millis,
    /// Needed to push positions to servers that want a duration (Plex timeline).
    pub duration_ms: Option<u64>,
    /// The last time a webhook or sync saw the item.
    pub last_seen: Millis,
}

impl Item {
    pub fn new(item_id: &str, identity: &Identity, title: Option<&str>, now: Millis) -> Self {
        Item {
            item_id: item_id.into(),
            ids: pack_ids(&identity.ids),
            series_ids: pack_ids(&identity.series_ids),
            title: title.unwrap_or("").into(),
            item_type: identity.item_type,
            season: identity.season,
            episode: identity.episode,
            played: false,
            played_at: 0,
            position_ms: 0,
            position_at: 0,
            duration_ms: None,
            last_seen: now,
        }
    }

    /// The hashes of [`Identity::index_keys`] of this item, computed from the packed ids
    /// without building the key strings (this runs for every item an actor loads).
    fn index_hashes(&self, out: &mut Vec<u64>) {
        let t: &[u8] = match self.item_type {
            ItemType::Movie => b"m",
            ItemType::Episode => b"e",
        };
        for (p, v) in packed_pairs(&self.ids).filter(|(p, v)| !p.is_empty() && !v.is_empty()) {
            out.push(hash_pieces(&[t, b":", p.as_bytes(), b":", v.as_bytes()]));
        }
        if let (ItemType::Episode, Some(se), Some(ep)) = (self.item_type, self.season, self.episode)
        {
            let numbers = format!(":{se}:{ep}");
            for (p, v) in
                packed_pairs(&self.series_ids).filter(|(p, v)| !p.is_empty() && !v.is_empty())
            {
                out.push(hash_pieces(&[
                    b"s:",
                    p.as_bytes(),
                    b":",
                    v.as_bytes(),
                    numbers.as_bytes(),
                ]));
            }
        }
    }

    pub fn identity(&self) -> Identity {
        Identity {
            item_type: self.item_type,
            ids: unpack_ids(&self.ids),
            series_ids: unpack_ids(&self.series_ids),
            season: self.season,
            episode: self.episode,
        }
    }

    fn set_identity(&mut self, identity: &Identity) {
        self.ids = pack_ids(&identity.ids);
        self.series_ids = pack_ids(&identity.series_ids);
        self.season = identity.season;
        self.episode = identity.episode;
        self.item_type = identity.item_type;
    }

    pub fn to_stored(&self) -> StoredItem {
        StoredItem {
            item_id: self.item_id.to_string(),
            title: self.title.to_string(),
            identity: self.identity(),
            played: self.played,
            played_at: self.played_at,
            position_ms: self.position_ms,
            position_at: self.position_at,
            duration_ms: self.duration_ms,
            last_seen: self.last_seen,
        }
    }

    pub fn from_stored(s: &StoredItem) -> Self {
        let mut item = Item::new(&s.item_id, &s.identity, Some(&s.title), s.last_seen);
        item.played = s.played;
        item.played_at = s.played_at;
        item.position_ms = s.position_ms;
        item.position_at = s.position_at;
        item.duration_ms = s.duration_ms;
        item
    }
}

/// An item as persisted in the store (readable JSON; the packed form is memory-only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredItem {
    pub item_id: String,
    #[serde(default)]
    pub title: String,
    pub identity: Identity,
    pub played: bool,
    pub played_at: Millis,
    pub position_ms: u64,
    pub position_at: Millis,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    pub last_seen: Millis,
}

/// All items of one pair with both indexes. Items are never removed, so a slot is stable.
///
/// The indexes map a 64-bit hash of the key to the slot instead of the key itself: keeping
/// the key strings a second (and third) time cost more than the items (`benches/actors.rs`
/// measured 562 bytes per item with string keys). A hit is always checked against the item
/// in the slot, so a hash collision can never resolve to the wrong item; at worst (two keys of
/// one pair colliding, about 1 in 10^7 for a million items) the older key stops resolving
/// and the item is found again by its other ids or registered again by the next sync.
#[derive(Debug, Default)]
pub struct Items {
    slots: Vec<Item>,
    /// Hash of the backend item id → slot: resolves events that carry no external ids.
    by_item_id: HashMap<u64, u32, KeyHashed>,
    /// Hash of an identity index key → slot.
    by_key: HashMap<u64, u32, KeyHashed>,
}

/// The index maps' keys are already hashes: use them as they are instead of hashing again.
type KeyHashed = std::hash::BuildHasherDefault<PassThrough>;

/// A `Hasher` for `u64` keys that are hashes already.
#[derive(Debug, Default)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The index hash of the concatenated pieces (deterministic: SipHash with fixed keys).
fn hash_pieces(pieces: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in pieces {
        h.write(p);
    }
    h.finish()
}

/// The index hash of a key such as `m:imdb:tt1`.
fn key_hash(key: &str) -> u64 {
    hash_pieces(&[key.as_bytes()])
}

/// (provider, id) pairs of a packed id string.
fn packed_pairs(s: &str) -> impl Iterator<Item = (&str, &str)> {
    s.split(PAIR_SEP).filter_map(|kv| kv.split_once(KV_SEP))
}

impl Items {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, slot: u32) -> &Item {
        &self.slots[slot as usize]
    }

    pub fn get_mut(&mut self, slot: u32) -> &mut Item {
        &mut self.slots[slot as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = (u32, &Item)> {
        self.slots.iter().enumerate().map(|(i, it)| (i as u32, it))
    }

    pub fn by_item_id(&self, item_id: &str) -> Option<u32> {
        self.by_item_id
            .get(&key_hash(item_id))
            .copied()
            .filter(|s| &*self.slots[*s as usize].item_id == item_id)
    }

    /// The slot of the item this identity names, if known (rule 1).
    pub fn find(&self, identity: &Identity) -> Option<u32> {
        identity.index_keys().iter().find_map(|k| self.find_key(k))
    }

    /// The slot for an index key such as `m:imdb:tt1` (for the items endpoint).
    pub fn find_key(&self, key: &str) -> Option<u32> {
        let slot = *self.by_key.get(&key_hash(key))?;
        let item = &self.slots[slot as usize];
        item.identity()
            .index_keys()
            .iter()
            .any(|k| k == key)
            .then_some(slot)
    }

    /// Insert or update the item with this backend id and identity; returns (slot, is_new).
    /// The identity is merged with what was known, so ids learned once are kept.
    pub fn upsert(
        &mut self,
        item_id: &str,
        identity: &Identity,
        title: Option<&str>,
        now: Millis,
    ) -> (u32, bool) {
        let existing = self.by_item_id(item_id).or_else(|| self.find(identity));
        match existing {
            Some(slot) => {
                let old = self.slots[slot as usize].identity();
                let merged = if old.item_type == identity.item_type {
                    old.merged(identity)
                } else {
                    identity.clone()
                };
                let item = &mut self.slots[slot as usize];
                if &*item.item_id != item_id {
                    let old_hash = key_hash(&item.item_id);
                    if self.by_item_id.get(&old_hash) == Some(&slot) {
                        self.by_item_id.remove(&old_hash);
                    }
                    item.item_id = item_id.into();
                    self.by_item_id.insert(key_hash(item_id), slot);
                }
                if merged != old {
                    item.set_identity(&merged);
                    for k in merged.index_keys() {
                        self.by_key.insert(key_hash(&k), slot);
                    }
                }
                let item = &mut self.slots[slot as usize];
                if let Some(t) = title.filter(|t| !t.is_empty() && **t != *item.title) {
                    item.title = t.into();
                }
                item.last_seen = now;
                (slot, false)
            }
            None => self.insert(Item::new(item_id, identity, title, now)),
        }
    }

    /// Add a restored or new item and index it.
    pub fn insert(&mut self, item: Item) -> (u32, bool) {
        if let Some(slot) = self.by_item_id(&item.item_id) {
            self.slots[slot as usize] = item;
            return (slot, false);
        }
        let slot = self.slots.len() as u32;
        let mut hashes = Vec::with_capacity(4);
        item.index_hashes(&mut hashes);
        for h in hashes {
            self.by_key.insert(h, slot);
        }
        self.by_item_id.insert(key_hash(&item.item_id), slot);
        self.slots.push(item);
        (slot, true)
    }

    /// Free spare capacity after a bulk load.
    pub fn shrink(&mut self) {
        self.slots.shrink_to_fit();
        self.by_item_id.shrink_to_fit();
        self.by_key.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(pairs: &[(&str, &str)]) -> ExternalIds {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn identity_matches_by_shared_id_and_type_only() {
        let mut items = Items::default();
        let movie = Identity {
            item_type: ItemType::Movie,
            ids: ids(&[("imdb", "tt1"), ("tmdb", "5")]),
            series_ids: ExternalIds::new(),
            season: None,
            episode: None,
        };
        items.upsert("a", &movie, Some("M"), 1);
        let by_tmdb = Identity {
            ids: ids(&[("tmdb", "5")]),
            ..movie.clone()
        };
        assert_eq!(items.find(&by_tmdb), Some(0));
        let episode = Identity {
            item_type: ItemType::Episode,
            ..by_tmdb
        };
        assert_eq!(items.find(&episode), None);
    }

    #[test]
    fn episodes_match_by_series_ids_and_numbers() {
        let mut items = Items::default();
        let ep = Identity {
            item_type: ItemType::Episode,
            ids: ids(&[("tvdb", "900")]),
            series_ids: ids(&[("tvdb", "12")]),
            season: Some(1),
            episode: Some(2),
        };
        items.upsert("x", &ep, None, 1);
        let legacy = Identity {
            ids: ExternalIds::new(),
            ..ep.clone()
        };
        assert_eq!(items.find(&legacy), Some(0));
        let other = Identity {
            episode: Some(3),
            ..legacy
        };
        assert_eq!(items.find(&other), None);
        assert!(!Identity {
            season: None,
            ..other
        }
        .is_usable());
    }

    #[test]
    fn index_hashes_are_the_hashes_of_the_index_keys() {
        let ep = Identity {
            item_type: ItemType::Episode,
            ids: ids(&[("tvdb", "900"), ("imdb", "tt9"), ("empty", "")]),
            series_ids: ids(&[("tvdb", "12"), ("tmdb", "77")]),
            season: Some(1),
            episode: Some(12),
        };
        let movie = Identity {
            item_type: ItemType::Movie,
            ids: ids(&[("imdb", "tt1"), ("tmdb", "5")]),
            series_ids: ExternalIds::new(),
            season: None,
            episode: None,
        };
        for identity in [ep, movie] {
            let item = Item::new("k", &identity, None, 1);
            let mut hashes = Vec::new();
            item.index_hashes(&mut hashes);
            let want: Vec<u64> = identity.index_keys().iter().map(|k| key_hash(k)).collect();
            assert_eq!(hashes, want, "{}", identity.describe());
        }
    }

    #[test]
    fn lookups_check_the_slot_and_survive_an_id_change() {
        let mut items = Items::default();
        let movie = Identity {
            item_type: ItemType::Movie,
            ids: ids(&[("imdb", "tt1")]),
            series_ids: ExternalIds::new(),
            season: None,
            episode: None,
        };
        let (slot, new) = items.upsert("a", &movie, None, 1);
        assert!(new);
        assert_eq!(items.by_item_id("a"), Some(slot));
        assert_eq!(items.find_key("m:imdb:tt1"), Some(slot));
        assert_eq!(items.find_key("e:imdb:tt1"), None);
        assert_eq!(items.by_item_id("b"), None);
        // The same movie under a new backend id: the old id no longer resolves.
        let (again, new) = items.upsert("b", &movie, None, 2);
        assert_eq!((again, new), (slot, false));
        assert_eq!(items.by_item_id("b"), Some(slot));
        assert_eq!(items.by_item_id("a"), None);
    }

    #[test]
    fn packed_ids_round_trip_through_stored_form() {
        let ep = Identity {
            item_type: ItemType::Episode,
            ids: ids(&[("tvdb", "900"), ("imdb", "tt9")]),
            series_ids: ids(&[("tvdb", "12")]),
            season: Some(1),
            episode: Some(2),
        };
        let mut it = Item::new("k", &ep, Some("T"), 3);
        it.played = true;
        it.played_at = 7;
        let back = Item::from_stored(&it.to_stored());
        assert_eq!(back, it);
        assert_eq!(back.identity(), ep);
    }
}
