//! The normalised webhook event (DESIGN.md §3): what every decoder in `src/webhook/` produces
//! and what the actors consume. It carries no HTTP or sender-specific format.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Provider → id, provider keys lower-case (`imdb`, `tmdb`, `tvdb`, `tvmaze`, `anidb`, ...).
/// A `BTreeMap` so that serialised events and identity keys are stable.
pub type ExternalIds = BTreeMap<String, String>;

/// Milliseconds since the Unix epoch, UTC. One clock type for every "when" in the system.
pub type Millis = i64;

/// Who sent the webhook. Tautulli events describe a Plex server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sender {
    Plex,
    Tautulli,
    Jellyfin,
    Emby,
}

impl Sender {
    pub fn as_str(self) -> &'static str {
        match self {
            Sender::Plex => "plex",
            Sender::Tautulli => "tautulli",
            Sender::Jellyfin => "jellyfin",
            Sender::Emby => "emby",
        }
    }

    /// The kind of media server this sender's ids belong to (Tautulli speaks for Plex).
    pub fn backend_kind(self) -> BackendKind {
        match self {
            Sender::Plex | Sender::Tautulli => BackendKind::Plex,
            Sender::Jellyfin => BackendKind::Jellyfin,
            Sender::Emby => BackendKind::Emby,
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The three media servers a backend can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    Plex,
    Jellyfin,
    Emby,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Plex => "plex",
            BackendKind::Jellyfin => "jellyfin",
            BackendKind::Emby => "emby",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The normalised event names of DESIGN.md §3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Play,
    Pause,
    Resume,
    Progress,
    Stop,
    Scrobble,
    MarkPlayed,
    MarkUnplayed,
    ItemAdded,
    Test,
    Ignore,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Play => "play",
            EventKind::Pause => "pause",
            EventKind::Resume => "resume",
            EventKind::Progress => "progress",
            EventKind::Stop => "stop",
            EventKind::Scrobble => "scrobble",
            EventKind::MarkPlayed => "mark_played",
            EventKind::MarkUnplayed => "mark_unplayed",
            EventKind::ItemAdded => "item_added",
            EventKind::Test => "test",
            EventKind::Ignore => "ignore",
        }
    }

    /// Playback and marking events: the ones that can change an item's state.
    pub fn is_state_event(self) -> bool {
        matches!(
            self,
            EventKind::Play
                | EventKind::Pause
                | EventKind::Resume
                | EventKind::Progress
                | EventKind::Stop
                | EventKind::Scrobble
                | EventKind::MarkPlayed
                | EventKind::MarkUnplayed
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Only movies and episodes are synced; anything else (tracks, shows, seasons) decodes to `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ItemType {
    Movie,
    Episode,
}

impl ItemType {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemType::Movie => "movie",
            ItemType::Episode => "episode",
        }
    }
}

/// One webhook, decoded. Produced by a pure decoder (no I/O); routed by `backend_id`/`user_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    pub sender: Sender,
    /// The media server's id as the sender wrote it; compare with [`normalize_id`].
    pub backend_id: String,
    /// The backend's id of the user; `None` for events that carry no user (library added).
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub event: EventKind,
    /// The sender's own event name, for logs and status.
    pub raw_event: String,
    /// True for `item_added`: it carries no user and goes to every user of that server.
    pub generic: bool,
    pub item_type: Option<ItemType>,
    /// The item's id on that server (Plex ratingKey, Jellyfin/Emby item id).
    pub item_id: Option<String>,
    pub title: Option<String>,
    pub series_title: Option<String>,
    pub season: Option<u32>,
    pub episode: Option<u32>,
    pub year: Option<u32>,
    /// Only set when the event asserts the played state (scrobble, mark, stop at completion).
    pub played: Option<bool>,
    /// Resume position; `None` when the payload has none (absent is not 0).
    pub position_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The item's own provider ids.
    pub external_ids: ExternalIds,
    /// Provider ids that name the show, not the episode.
    pub series_external_ids: ExternalIds,
    /// The library (section) the item lives in, when the payload says; used by `ignore_libraries`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library_id: Option<String>,
}

impl WebhookEvent {
    /// True when applying this event can change stored played state or resume position:
    /// a playback or marking event about a movie or an episode.
    pub fn actionable(&self) -> bool {
        self.event.is_state_event() && self.item_type.is_some()
    }

    /// True when this event asserts a played state (DESIGN.md §6 rule 2).
    pub fn asserts_played(&self) -> Option<bool> {
        match self.event {
            EventKind::Scrobble | EventKind::MarkPlayed => Some(true),
            EventKind::MarkUnplayed => Some(false),
            EventKind::Stop if self.played == Some(true) => Some(true),
            _ => None,
        }
    }
}

/// An accepted webhook event addressed to one pair, as written to the journal before the
/// webhook is acknowledged. Its key in [`crate::store::Tree::Journal`] is `seq` big-endian;
/// the pair actor removes it in the same batch that persists the event's effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Monotonic across restarts: replay order.
    pub seq: u64,
    pub pair: crate::store::PairKey,
    /// The webhook request it came from (one request can fan out to several pairs).
    pub request_id: String,
    /// When this service received it: the time of the change (DESIGN.md §6 rule 3).
    pub received_at: Millis,
    pub event: WebhookEvent,
}

impl JournalEntry {
    pub fn key(seq: u64) -> [u8; 8] {
        seq.to_be_bytes()
    }
}

/// Server and user ids are compared case-insensitively with dashes removed
/// (Jellyfin writes GUIDs with and without dashes, in either case).
pub fn normalize_id(id: &str) -> String {
    // One allocation (routing calls this for every webhook): ASCII is lowered byte by byte,
    // anything else as `char::to_lowercase` does; blanks at either end go afterwards, as
    // removing dashes can bring some to the ends.
    let mut out = String::with_capacity(id.len());
    for c in id.chars() {
        if c == '-' {
            continue;
        }
        if c.is_ascii() {
            out.push(c.to_ascii_lowercase());
        } else {
            out.extend(c.to_lowercase());
        }
    }
    let end = out.trim_end().len();
    out.truncate(end);
    let start = out.len() - out.trim_start().len();
    out.drain(..start);
    out
}

/// A GUID as Jellyfin and Emby write one: 32 hex digits ("N" format) or 36 characters with
/// dashes ("D" format), in either case.
pub fn is_guid(id: &str) -> bool {
    let b = id.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_in_both_formats() {
        assert!(is_guid("16588a9f062a40c4966586b1d220bffc"));
        assert!(is_guid("16588A9F-062A-40C4-9665-86B1D220BFFC"));
        for id in [
            "101",
            "16588a9f062a40c4966586b1d220bff",
            "16588a9f-062a40c4-9665-86b1d220bffc0",
            "g6588a9f062a40c4966586b1d220bffc",
        ] {
            assert!(!is_guid(id), "{id}");
        }
    }

    #[test]
    fn normalize_id_ignores_case_and_dashes() {
        assert_eq!(
            normalize_id("16588A9F-062A-40C4-9665-86B1D220BFFC"),
            "16588a9f062a40c4966586b1d220bffc"
        );
        assert_ne!(normalize_id("abc"), normalize_id("abd"));
        // Blanks that removing dashes brings to the ends go too; non-ASCII is lowered.
        assert_eq!(normalize_id("- Ab-C -"), "abc");
        assert_eq!(normalize_id("\u{2003}ÄÖ-İd\t"), "äöi\u{307}d");
        assert_eq!(normalize_id(" - "), "");
    }
}
