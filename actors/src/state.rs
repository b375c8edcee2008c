//! A pair's items in memory: compact records, an index from external ids (and series id +
//! season + episode) to items, and the identity rule of DESIGN.md §6 rule 1.
//!
//! Memory matters (10 000 actors × 100 items, under 512 bytes per item), so an item keeps its
//! ids as one packed string and the indexes map packed keys to a `u32` slot.

use crate::event::{ExternalIds, ItemType, Millis};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

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
    /// How well an item found under one of this identity's index keys (its own ids
    /// `other_ids`, its numbers) matches it: `Some(0)` for a match, `Some(1)` for one taken
    /// only when nothing better is found, `None` for another item. Movies match by any key
    /// (a key names its type). Episodes:
    /// - an own id of theirs other than IMDb's that differs (the two parts of a double
    ///   episode share an IMDb id, not their TVDB ids; DVD order puts another episode at
    ///   these numbers) makes them two episodes (IMDb ids are left out: servers give an
    ///   episode its show's now and then);
    /// - the same season and episode numbers (or none to compare) match;
    /// - other numbers: on this pair's own server, another episode; from another server,
    ///   which may number the show otherwise (absolute order), a fallback, when they share
    ///   an episode id other than IMDb's (which the parts of a double episode share).
    pub fn match_rank<'a>(
        &self,
        other_ids: impl Iterator<Item = (&'a str, &'a str)> + Clone,
        season: Option<u32>,
        episode: Option<u32>,
        own_server: bool,
    ) -> Option<u8> {
        if self.item_type != ItemType::Episode {
            return Some(0);
        }
        let theirs = |p: &str| other_ids.clone().find(|(q, _)| *q == p).map(|(_, w)| w);
        let episode_ids = || self.ids.iter().filter(|(p, _)| p.as_str() != "imdb");
        if episode_ids().any(|(p, v)| theirs(p).is_some_and(|w| !same_id(v, w))) {
            return None;
        }
        let numbered_otherwise = matches!(
            (self.season.zip(self.episode), season.zip(episode)),
            (Some(a), Some(b)) if a != b
        );
        if !numbered_otherwise {
            return Some(0);
        }
        let shares_episode_id =
            episode_ids().any(|(p, v)| theirs(p).is_some_and(|w| same_id(v, w)));
        (!own_server && shares_episode_id).then_some(1)
    }

    /// [`Identity::match_rank`] against another identity.
    pub fn match_rank_of(&self, other: &Identity, own_server: bool) -> Option<u8> {
        let ids = other.ids.iter().map(|(p, v)| (p.as_str(), v.as_str()));
        self.match_rank(ids, other.season, other.episode, own_server)
    }

    /// True when the identity can match anything: own ids, or series ids with both numbers.
    pub fn is_usable(&self) -> bool {
        !self.index_keys().is_empty()
    }

    /// The index keys this identity answers to. Movie and episode keys differ, so a movie
    /// never matches an episode that shares a provider id.
    pub fn index_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for_each_key(
            self.item_type,
            self.ids.iter().map(|(p, v)| (p.as_str(), v.as_str())),
            self.series_ids
                .iter()
                .map(|(p, v)| (p.as_str(), v.as_str())),
            self.season.zip(self.episode),
            |k| keys.push(k.to_string()),
        );
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

/// Whether two ids of one provider are the same: case aside (`TT0133093`), and leading zeros
/// of a number aside (`0123`), as servers write them differently.
fn same_id(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    digits(a) && digits(b) && a.trim_start_matches('0') == b.trim_start_matches('0')
}

/// Call `f` with each index key of an identity given by its parts (see
/// [`Identity::index_keys`]), composed in one reused buffer: loading a pair indexes every item,
/// and a `String` per key was most of that work.
fn for_each_key<'a>(
    item_type: ItemType,
    ids: impl Iterator<Item = (&'a str, &'a str)>,
    series_ids: impl Iterator<Item = (&'a str, &'a str)>,
    season_episode: Option<(u32, u32)>,
    mut f: impl FnMut(&str),
) {
    let t = match item_type {
        ItemType::Movie => "m:",
        ItemType::Episode => "e:",
    };
    let mut key = String::with_capacity(64);
    for (p, v) in ids.filter(|(p, v)| !p.is_empty() && !v.is_empty()) {
        key.clear();
        key.push_str(t);
        key.push_str(p);
        key.push(':');
        key.push_str(v);
        f(&key);
    }
    let Some((season, episode)) = season_episode.filter(|_| item_type == ItemType::Episode) else {
        return;
    };
    let (mut s, mut e) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (s, e) = (s.format(season), e.format(episode));
    for (p, v) in series_ids.filter(|(p, v)| !p.is_empty() && !v.is_empty()) {
        key.clear();
        key.push_str("s:");
        key.push_str(p);
        key.push(':');
        key.push_str(v);
        key.push(':');
        key.push_str(s);
        key.push(':');
        key.push_str(e);
        f(&key);
    }
}

/// Separators for packed id strings: control characters no id contains.
const PAIR_SEP: char = '\u{1e}';
const KV_SEP: char = '\u{1f}';

fn pack_ids(ids: &ExternalIds) -> Box<str> {
    pack_pairs(ids.iter().map(|(p, v)| (p.as_str(), v.as_str())))
}

fn pack_pairs<'a>(ids: impl Iterator<Item = (&'a str, &'a str)>) -> Box<str> {
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
    packed_pairs(s)
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .collect()
}

/// The (provider, id) pairs of a packed id string, borrowed.
fn packed_pairs(s: &str) -> impl Iterator<Item = (&str, &str)> + Clone {
    s.split(PAIR_SEP).filter_map(|kv| kv.split_once(KV_SEP))
}

/// What [`Items::upsert`] did.
#[derive(Debug)]
pub struct Upserted {
    pub slot: u32,
    /// A new record.
    pub is_new: bool,
    /// More than `last_seen` changed (always for a new record).
    pub changed: bool,
    /// The record had this other backend id (its state was reset unless kept, see
    /// [`Items::upsert`]); the record stored under the old id is to be removed.
    pub renamed_from: Option<Box<str>>,
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
    /// The last sync found it in a library of `ignore_libraries` (it was known before that
    /// library was ignored): its webhooks and its siblings' changes are ignored while the
    /// pair ignores libraries.
    pub in_ignored_library: bool,
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
    /// A played-state change at `at`. Either way the resume position goes: marking played
    /// clears it (DESIGN.md §6 rule 6), and marking unplayed resets it on Jellyfin, Emby and
    /// Plex alike. A position reported while the item was played (a pause in the credits
    /// after the scrobble) must not outlive an unmark: a later catch-up would send it to
    /// the other servers as a resume point.
    pub fn set_played(&mut self, played: bool, at: Millis) {
        self.played = played;
        self.played_at = at;
        self.position_ms = 0;
        self.position_at = at;
    }

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
            in_ignored_library: false,
            played_at: 0,
            position_ms: 0,
            position_at: 0,
            duration_ms: None,
            last_seen: now,
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

    /// [`Identity::index_keys`] of this item's identity, without unpacking it.
    fn for_each_key(&self, f: impl FnMut(&str)) {
        for_each_key(
            self.item_type,
            packed_pairs(&self.ids),
            packed_pairs(&self.series_ids),
            self.season.zip(self.episode),
            f,
        );
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
            in_ignored_library: self.in_ignored_library,
            played_at: self.played_at,
            position_ms: self.position_ms,
            position_at: self.position_at,
            duration_ms: self.duration_ms,
            last_seen: self.last_seen,
        }
    }

    /// [`Item::from_stored`] straight from the stored JSON, borrowing its strings: loading a
    /// pair decodes every item it has.
    pub fn decode_stored(json: &[u8]) -> Option<Self> {
        let s: StoredItemRef = serde_json::from_slice(json).ok()?;
        let pairs = |m: &'_ BTreeMap<Cow<'_, str>, Cow<'_, str>>| {
            pack_pairs(m.iter().map(|(p, v)| (p.as_ref(), v.as_ref())))
        };
        Some(Item {
            item_id: s.item_id.as_ref().into(),
            ids: pairs(&s.identity.ids),
            series_ids: pairs(&s.identity.series_ids),
            title: s.title.as_ref().into(),
            item_type: s.identity.item_type,
            season: s.identity.season,
            episode: s.identity.episode,
            played: s.played,
            in_ignored_library: s.in_ignored_library,
            played_at: s.played_at,
            position_ms: s.position_ms,
            position_at: s.position_at,
            duration_ms: s.duration_ms,
            last_seen: s.last_seen,
        })
    }

    pub fn from_stored(s: &StoredItem) -> Self {
        let mut item = Item::new(&s.item_id, &s.identity, Some(&s.title), s.last_seen);
        item.played = s.played;
        item.in_ignored_library = s.in_ignored_library;
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
    /// Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_ignored_library: bool,
    pub played_at: Millis,
    pub position_ms: u64,
    pub position_at: Millis,
    #[serde(default)]
    pub duration_ms: Option<u64>,
    pub last_seen: Millis,
}

/// [`StoredItem`] with borrowed strings, for [`Item::decode_stored`]. The fields and their
/// defaults must stay those of [`StoredItem`] and [`Identity`].
#[derive(Deserialize)]
struct StoredItemRef<'a> {
    #[serde(borrow)]
    item_id: Cow<'a, str>,
    #[serde(default, borrow)]
    title: Cow<'a, str>,
    #[serde(borrow)]
    identity: IdentityRef<'a>,
    played: bool,
    #[serde(default)]
    in_ignored_library: bool,
    played_at: Millis,
    position_ms: u64,
    position_at: Millis,
    #[serde(default)]
    duration_ms: Option<u64>,
    last_seen: Millis,
}

#[derive(Deserialize)]
struct IdentityRef<'a> {
    item_type: ItemType,
    #[serde(default, borrow)]
    ids: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(default, borrow)]
    series_ids: BTreeMap<Cow<'a, str>, Cow<'a, str>>,
    #[serde(default)]
    season: Option<u32>,
    #[serde(default)]
    episode: Option<u32>,
}

/// Hashes of the identity's index keys, as the indexes hold them.
pub fn key_hashes(identity: &Identity) -> impl Iterator<Item = u64> {
    identity.index_keys().into_iter().map(|k| h64(&k))
}

/// A 64-bit hash of an index key or item id. The indexes store hashes instead of strings
/// (memory), and every hit is verified against the item itself, so a collision can never
/// return the wrong item. Keyed at random once per process (the hashes live in memory only),
/// so ids sent from outside cannot be chosen to collide.
fn h64(s: &str) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default).hash_one(s)
}

/// A map keyed by `h64` hashes, which are hashed already: the map uses them as they are
/// instead of hashing them again (SipHash was a tenth of an actor's start).
pub type HashIndex<V> = HashMap<u64, V, std::hash::BuildHasherDefault<Prehashed>>;

/// The hasher of [`HashIndex`]: a `u64` key is its own hash.
#[derive(Default)]
pub struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are used; anything else still hashes (FNV-1a), never panics.
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// All items of one pair with both indexes. Items are never removed, so a slot is stable;
/// only a pair whose server was replaced drops them all at once (`PairCore::forget_records`),
/// clearing every slot it kept.
#[derive(Debug, Default)]
pub struct Items {
    slots: Vec<Item>,
    /// Hash of the backend item id → slot: resolves events that carry no external ids.
    by_item_id: HashIndex<u32>,
    /// Hash of an identity index key → slot.
    by_key: HashIndex<u32>,
    /// Item ids whose hash collided with another item's (practically never used).
    item_id_overflow: HashMap<Box<str>, u32>,
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
            .get(&h64(item_id))
            .copied()
            .filter(|s| &*self.slots[*s as usize].item_id == item_id)
            .or_else(|| self.item_id_overflow.get(item_id).copied())
    }

    /// The slot of the item this identity names, if known (rule 1).
    /// The record of an item another server describes (a sibling's change). An episode
    /// with another own id of the same provider is another episode; one found under a shared
    /// id with other season and episode numbers is taken only when nothing better matches
    /// and they share an episode id other than IMDb's (see [`Identity::match_rank`]):
    /// servers may number a show differently (absolute or by season).
    pub fn find(&self, identity: &Identity) -> Option<u32> {
        self.find_matching(identity, false)
    }

    /// The record of an item this pair's own server describes (its webhook, its listing).
    /// An episode with other season and episode numbers than the identity's, or another own
    /// id of the same provider, is another episode, whatever id they share: two parts of a
    /// double episode often carry one IMDb id, and taken for one another, the second would
    /// take over the first's record.
    pub fn find_own(&self, identity: &Identity) -> Option<u32> {
        self.find_matching(identity, true)
    }

    fn find_matching(&self, identity: &Identity, own_server: bool) -> Option<u32> {
        let mut fallback = None;
        for key in identity.index_keys() {
            let Some(slot) = self.find_key(&key) else {
                continue;
            };
            if identity.item_type != ItemType::Episode {
                return Some(slot);
            }
            let item = &self.slots[slot as usize];
            let ids = packed_pairs(&item.ids);
            match identity.match_rank(ids, item.season, item.episode, own_server) {
                Some(0) => return Some(slot),
                Some(_) => fallback = fallback.or(Some(slot)),
                None => {}
            }
        }
        fallback
    }

    /// The slot for an index key such as `m:imdb:tt1` (for the items endpoint).
    pub fn find_key(&self, key: &str) -> Option<u32> {
        let slot = *self.by_key.get(&h64(key))?;
        let mut found = false;
        self.slots[slot as usize].for_each_key(|k| found |= k == key);
        found.then_some(slot)
    }

    fn index_item_id(&mut self, item_id: &str, slot: u32) {
        let h = h64(item_id);
        match self.by_item_id.get(&h) {
            Some(other) if *other != slot && &*self.slots[*other as usize].item_id != item_id => {
                self.item_id_overflow.insert(item_id.into(), slot);
            }
            _ => {
                self.by_item_id.insert(h, slot);
            }
        }
    }

    fn unindex_item_id(&mut self, item_id: &str, slot: u32) {
        let h = h64(item_id);
        if self.by_item_id.get(&h) == Some(&slot) {
            self.by_item_id.remove(&h);
        }
        self.item_id_overflow.remove(item_id);
    }

    /// Insert or update the item with this backend id and identity. The identity is merged
    /// with what was known, so ids learned once are kept.
    ///
    /// A record found by its ids under another backend id takes the new id (the item was
    /// deleted and added again, or it is another copy of the same film). Unless `keep_state`
    /// (an event that asserts a state of its own, compared with what was known), its state
    /// is then reset to unobserved (unplayed, no position, no dates): the state it held was
    /// that of the other id, and read as this one's, a copy that is not played would look
    /// like the user unmarking it, and be unmarked everywhere.
    pub fn upsert(
        &mut self,
        item_id: &str,
        identity: &Identity,
        title: Option<&str>,
        now: Millis,
        keep_state: bool,
    ) -> Upserted {
        let existing = self.by_item_id(item_id).or_else(|| self.find_own(identity));
        match existing {
            Some(slot) => {
                let old = self.slots[slot as usize].identity();
                let merged = if old.item_type == identity.item_type {
                    old.merged(identity)
                } else {
                    identity.clone()
                };
                let old_id = self.slots[slot as usize].item_id.clone();
                let renamed = &*old_id != item_id;
                let mut changed = renamed || merged != old;
                if renamed {
                    self.unindex_item_id(&old_id, slot);
                    let item = &mut self.slots[slot as usize];
                    item.item_id = item_id.into();
                    if !keep_state {
                        item.played = false;
                        item.played_at = 0;
                        item.position_ms = 0;
                        item.position_at = 0;
                    }
                    self.index_item_id(item_id, slot);
                }
                if merged != old {
                    self.slots[slot as usize].set_identity(&merged);
                    for k in merged.index_keys() {
                        self.by_key.insert(h64(&k), slot);
                    }
                }
                let item = &mut self.slots[slot as usize];
                if let Some(t) = title.filter(|t| !t.is_empty() && **t != *item.title) {
                    item.title = t.into();
                    changed = true;
                }
                item.last_seen = now;
                Upserted {
                    slot,
                    is_new: false,
                    changed,
                    renamed_from: renamed.then_some(old_id),
                }
            }
            None => {
                let (slot, is_new) = self.insert(Item::new(item_id, identity, title, now));
                Upserted {
                    slot,
                    is_new,
                    changed: true,
                    renamed_from: None,
                }
            }
        }
    }

    /// Add a restored or new item and index it.
    pub fn insert(&mut self, item: Item) -> (u32, bool) {
        if let Some(slot) = self.by_item_id(&item.item_id) {
            self.slots[slot as usize] = item;
            return (slot, false);
        }
        let slot = self.slots.len() as u32;
        let by_key = &mut self.by_key;
        item.for_each_key(|k| {
            by_key.insert(h64(k), slot);
        });
        let id = item.item_id.clone();
        self.slots.push(item);
        self.index_item_id(&id, slot);
        (slot, true)
    }

    /// Room for `n` more items before a bulk load, so that the slots and the indexes are not
    /// grown (and copied) step by step: an item has two to four index keys.
    pub fn reserve(&mut self, n: usize) {
        self.slots.reserve_exact(n);
        self.by_item_id.reserve(n);
        self.by_key.reserve(n * 3);
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
        items.upsert("a", &movie, Some("M"), 1, false);
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
        items.upsert("x", &ep, None, 1, false);
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
    fn the_two_parts_of_a_double_episode_sharing_an_imdb_id_stay_two() {
        let mut items = Items::default();
        let part = |tvdb: &str, e: u32| Identity {
            item_type: ItemType::Episode,
            ids: ids(&[("imdb", "tt1"), ("tvdb", tvdb)]),
            series_ids: ids(&[("tvdb", "9")]),
            season: Some(1),
            episode: Some(e),
        };
        let (e1, e2) = (part("101", 1), part("102", 2));
        let first = items.upsert("e1", &e1, None, 1, false);
        let second = items.upsert("e2", &e2, None, 1, false);
        assert!(second.is_new && second.renamed_from.is_none(), "{second:?}");
        assert_ne!(first.slot, second.slot);
        assert_eq!(&*items.get(first.slot).item_id, "e1");
        for find in [Items::find, Items::find_own] {
            assert_eq!(find(&items, &e1), Some(first.slot));
            assert_eq!(find(&items, &e2), Some(second.slot));
            // Known only by the shared id, with its numbers: still the right part.
            let by_imdb = |e| Identity {
                ids: ids(&[("imdb", "tt1")]),
                ..part("", e)
            };
            assert_eq!(find(&items, &by_imdb(2)), Some(second.slot));
            assert_eq!(find(&items, &by_imdb(1)), Some(first.slot));
        }
        // Numbered otherwise by another server (absolute order) with the same episode id:
        // that server's change still finds it; this server's own item is another one.
        let absolute = Identity {
            ids: ids(&[("tvdb", "102")]),
            season: Some(1),
            episode: Some(58),
            ..e2.clone()
        };
        assert_eq!(items.find(&absolute), Some(second.slot));
        assert_eq!(items.find_own(&absolute), None);
        // Known by the shared IMDb id and numbers alone (no show ids): no part is taken for
        // the other; from another server, without another shared id, no guess is made.
        let imdb_only = |e| Identity {
            ids: ids(&[("imdb", "tt1")]),
            series_ids: ExternalIds::new(),
            ..part("", e)
        };
        // The key leads to one of the parts: it is taken for that part only.
        let key_holder = items.find_key("e:imdb:tt1").expect("indexed");
        for (e, slot) in [(1, first.slot), (2, second.slot)] {
            let found = items.find(&imdb_only(e));
            let expected = (slot == key_holder).then_some(slot);
            assert_eq!(found, expected, "part {e}");
            assert_eq!(items.find_own(&imdb_only(e)), expected, "part {e}");
        }
    }

    #[test]
    fn another_servers_order_matches_by_episode_id_and_never_by_numbers_against_it() {
        let mut items = Items::default();
        let aired = |tvdb: &str, e: u32| Identity {
            item_type: ItemType::Episode,
            ids: ids(&[("tvdb", tvdb)]),
            series_ids: ids(&[("tvdb", "9")]),
            season: Some(1),
            episode: Some(e),
        };
        let e5 = items.upsert("a5", &aired("105", 5), None, 1, false).slot;
        let e7 = items.upsert("a7", &aired("107", 7), None, 1, false).slot;
        // DVD order puts aired episode 7 at 5: its TVDB id decides, not the numbers.
        let dvd = aired("107", 5);
        assert_eq!(items.find(&dvd), Some(e7));
        assert_eq!(items.find_own(&dvd), None);
        assert_eq!(items.find(&aired("105", 5)), Some(e5));
        assert!(same_id("TT0133093", "tt0133093") && same_id("0123", "123"));
        assert!(!same_id("tt123", "tt0123") && !same_id("12", "123"));
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

    /// Loading decodes the stored JSON with borrowed strings; it must read exactly what the
    /// owned form reads: escapes, missing optional fields, unknown fields, and refuse the same.
    #[test]
    fn borrowed_decoding_reads_what_the_stored_form_reads() {
        let ep = Identity {
            item_type: ItemType::Episode,
            ids: ids(&[("tvdb", "9\"0\"0"), ("imdb", "tt9")]),
            series_ids: ids(&[("tvdb", "12")]),
            season: Some(1),
            episode: Some(2),
        };
        let mut it = Item::new("k/é\n", &ep, Some("Tit\"le ☃"), 3);
        it.position_ms = 5;
        it.duration_ms = Some(9);
        let stored = serde_json::to_vec(&it.to_stored()).unwrap();
        assert_eq!(Item::decode_stored(&stored), Some(it.clone()));
        // The mark of an ignored library is written only when set, and read back.
        assert!(!String::from_utf8_lossy(&stored).contains("in_ignored_library"));
        let mut ignored = it.clone();
        ignored.in_ignored_library = true;
        let stored = serde_json::to_vec(&ignored.to_stored()).unwrap();
        assert_eq!(Item::decode_stored(&stored), Some(ignored.clone()));
        let owned: StoredItem = serde_json::from_slice(&stored).unwrap();
        assert_eq!(Item::from_stored(&owned), ignored);
        let bodies = [
            r#"{"item_id":"1","identity":{"item_type":"movie","ids":{"imdb":"tt1"}},"played":true,"played_at":1,"position_ms":0,"position_at":0,"last_seen":2,"extra":[1]}"#,
            r#"{"item_id":"1","title":"A\u00e9","identity":{"item_type":"episode","series_ids":{"tvdb":"5"},"season":2,"episode":3},"played":false,"played_at":0,"position_ms":10,"position_at":4,"duration_ms":null,"last_seen":2}"#,
            r#"{"item_id":"1","identity":{"item_type":"movie"},"played":true}"#,
            r#"{"item_id":1,"identity":{"item_type":"movie"},"played":true,"played_at":1,"position_ms":0,"position_at":0,"last_seen":2}"#,
            r#"{"item_id":"1","identity":{"item_type":"show"},"played":true,"played_at":1,"position_ms":0,"position_at":0,"last_seen":2}"#,
        ];
        for body in bodies {
            let owned = serde_json::from_str::<StoredItem>(body)
                .ok()
                .map(|s| Item::from_stored(&s));
            assert_eq!(Item::decode_stored(body.as_bytes()), owned, "{body}");
        }
        assert!(Item::decode_stored(bodies[0].as_bytes()).is_some());
        assert!(Item::decode_stored(bodies[2].as_bytes()).is_none());
        // The index keys walked over the packed form are those of the identity.
        let mut walked = Vec::new();
        it.for_each_key(|k| walked.push(k.to_string()));
        assert_eq!(walked, ep.index_keys());
        assert_eq!(walked, ["e:imdb:tt9", "e:tvdb:9\"0\"0", "s:tvdb:12:1:2"]);
    }
}
