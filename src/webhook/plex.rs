//! Plex Media Server webhooks: `multipart/form-data`, the JSON in field `payload`.
//!
//! | Plex event | normalised |
//! |---|---|
//! | `media.play` / `media.pause` / `media.resume` / `media.stop` | play / pause / resume / stop |
//! | `media.scrobble` | scrobble, `played = true` |
//! | `library.new` | item_added (generic) |
//! | anything else (`media.rate`, `library.on.deck`, `playback.started`, `admin.*`, ...) | ignore |
//!
//! Plex has no mark-played event and no stop-at-completion flag, so only a scrobble asserts
//! played; `viewCount`/`lastViewedAt` describe the past, not this event, and are not used.
//! The helpers here are shared with [`super::tautulli`], whose payload is Plex-shaped.

use super::blank;
use super::fields::{self, get_exact, str_field, u32_field, u64_field};
use super::ids::{self, GuidTarget};
use super::lazy::Obj;
use watchstate_actors::event::{EventKind, ItemType, Sender, WebhookEvent};

pub fn decode(obj: &Obj<'_>) -> WebhookEvent {
    let raw_event = str_field(obj, "event").unwrap_or_default();
    let mut ev = blank(Sender::Plex, server_id(obj), raw_event.clone());
    fill_account(obj, &mut ev);
    if let Some(meta) = fields::object(obj, "Metadata") {
        fill_metadata(meta, &mut ev);
        fill_guids(meta, &mut ev);
    }
    let (kind, played) = match raw_event.to_ascii_lowercase().as_str() {
        "media.play" => (EventKind::Play, None),
        "media.pause" => (EventKind::Pause, None),
        "media.resume" => (EventKind::Resume, None),
        "media.stop" => (EventKind::Stop, None),
        "media.scrobble" => (EventKind::Scrobble, Some(true)),
        "library.new" => (EventKind::ItemAdded, None),
        _ => (EventKind::Ignore, None),
    };
    ev.event = kind;
    ev.played = played;
    ev.generic = kind == EventKind::ItemAdded;
    ev
}

/// `Server.uuid`, the Plex machine identifier.
pub(super) fn server_id(obj: &Obj<'_>) -> String {
    fields::object(obj, "Server")
        .and_then(|s| str_field(s, "uuid"))
        .unwrap_or_default()
}

/// `Account.id` (an integer in Plex, a string in Tautulli) and `Account.title`.
pub(super) fn fill_account(obj: &Obj<'_>, ev: &mut WebhookEvent) {
    if let Some(account) = fields::object(obj, "Account") {
        ev.user_id = str_field(account, "id");
        ev.user_name = str_field(account, "title");
    }
}

/// Item fields of `Metadata`. Episode-only fields stay empty for movies and other types
/// (Tautulli writes `"0"` season/episode for movies; a track's `index` is not an episode).
pub(super) fn fill_metadata(meta: &Obj<'_>, ev: &mut WebhookEvent) {
    ev.item_type = get_exact(meta, "type")
        .and_then(fields::string)
        .and_then(|t| match t.to_ascii_lowercase().as_str() {
            "movie" => Some(ItemType::Movie),
            "episode" => Some(ItemType::Episode),
            _ => None,
        });
    ev.item_id = str_field(meta, "ratingKey");
    ev.title = get_exact(meta, "title").and_then(fields::string);
    ev.year = u32_field(meta, "year").filter(|y| *y > 0);
    if ev.item_type == Some(ItemType::Episode) {
        ev.series_title = str_field(meta, "grandparentTitle");
        ev.season = u32_field(meta, "parentIndex");
        ev.episode = u32_field(meta, "index");
    }
    ev.position_ms = u64_field(meta, "viewOffset");
    ev.duration_ms = u64_field(meta, "duration").filter(|d| *d > 0);
    ev.library_id = str_field(meta, "librarySectionID");
}

/// `Metadata.Guid[]` (modern agents), `Metadata.guid` (legacy agents) and
/// `Metadata.grandparentGuid` (always the show).
pub(super) fn fill_guids(meta: &Obj<'_>, ev: &mut WebhookEvent) {
    let is_episode = ev.item_type == Some(ItemType::Episode);
    if let Some(list) = get_exact(meta, "Guid").and_then(|v| v.as_array()) {
        for entry in list {
            let guid = match entry.as_object() {
                Some(o) => str_field(&o, "id"),
                None => fields::string(entry),
            };
            if let Some(guid) = guid {
                add_guid(ev, &guid, is_episode, false);
            }
        }
    }
    if let Some(guid) = get_exact(meta, "guid").and_then(fields::string) {
        add_guid(ev, &guid, is_episode, false);
    }
    if is_episode {
        if let Some(guid) = get_exact(meta, "grandparentGuid").and_then(fields::string) {
            add_guid(ev, &guid, true, true);
        }
    }
}

/// Adds the id of one guid to the item's or the show's ids (first value of a provider wins).
pub(super) fn add_guid(ev: &mut WebhookEvent, guid: &str, is_episode: bool, force_series: bool) {
    if let Some(found) = ids::parse_plex_guid(guid, is_episode) {
        let target = if force_series {
            GuidTarget::Series
        } else {
            found.target
        };
        let map = match target {
            GuidTarget::Item => &mut ev.external_ids,
            GuidTarget::Series => &mut ev.series_external_ids,
        };
        map.entry(found.provider.to_string()).or_insert(found.id);
    }
}

#[cfg(test)]
mod tests {
    use super::super::lazy::parse_object;
    use super::*;
    use serde_json::{json, Value};

    fn dec(v: Value) -> WebhookEvent {
        decode(&parse_object(&v.to_string()))
    }

    fn body(event: &str, meta: Value) -> Value {
        json!({"event": event, "Account": {"id": 7, "title": "ann"},
               "Server": {"uuid": "ABC"}, "Metadata": meta})
    }

    #[test]
    fn event_table() {
        let movie = json!({"type": "movie", "ratingKey": "1"});
        for (name, kind, played) in [
            ("media.play", EventKind::Play, None),
            ("media.pause", EventKind::Pause, None),
            ("media.resume", EventKind::Resume, None),
            ("media.stop", EventKind::Stop, None),
            ("media.scrobble", EventKind::Scrobble, Some(true)),
            ("library.new", EventKind::ItemAdded, None),
            ("media.rate", EventKind::Ignore, None),
            ("library.on.deck", EventKind::Ignore, None),
            ("playback.started", EventKind::Ignore, None),
            ("admin.database.backup", EventKind::Ignore, None),
        ] {
            let ev = dec(body(name, movie.clone()));
            assert_eq!(ev.event, kind, "{name}");
            assert_eq!(ev.played, played, "{name}");
            assert_eq!(ev.generic, kind == EventKind::ItemAdded, "{name}");
            assert_eq!(ev.raw_event, name);
            assert_eq!(ev.sender, Sender::Plex);
        }
    }

    #[test]
    fn fields_and_numbers() {
        let ev = dec(body(
            "media.stop",
            json!({"type": "episode", "ratingKey": 42, "title": "Pilot", "grandparentTitle": "Show",
                   "parentIndex": 2, "index": "3", "year": 2020, "viewOffset": 1234, "duration": 5000,
                   "librarySectionID": 5, "viewCount": 3}),
        ));
        assert_eq!(ev.backend_id, "ABC");
        assert_eq!(ev.user_id.as_deref(), Some("7"));
        assert_eq!(ev.user_name.as_deref(), Some("ann"));
        assert_eq!(ev.item_id.as_deref(), Some("42"));
        assert_eq!(ev.item_type, Some(ItemType::Episode));
        assert_eq!(ev.series_title.as_deref(), Some("Show"));
        assert_eq!(
            (ev.season, ev.episode, ev.year),
            (Some(2), Some(3), Some(2020))
        );
        assert_eq!((ev.position_ms, ev.duration_ms), (Some(1234), Some(5000)));
        assert_eq!(ev.library_id.as_deref(), Some("5"));
        assert_eq!(ev.played, None, "viewCount is history, not this event");
    }

    #[test]
    fn absent_position_is_none_and_tracks_have_no_type() {
        let ev = dec(body(
            "media.play",
            json!({"type": "track", "ratingKey": "9", "index": 1, "parentIndex": 1, "grandparentTitle": "Artist"}),
        ));
        assert_eq!(ev.item_type, None);
        assert_eq!(ev.position_ms, None);
        assert_eq!(
            (ev.season, ev.episode, ev.series_title.clone()),
            (None, None, None)
        );
    }

    #[test]
    fn guid_lists_and_legacy_guids() {
        let ev = dec(body(
            "media.scrobble",
            json!({"type": "episode", "guid": "plex://episode/x",
                   "grandparentGuid": "com.plexapp.agents.thetvdb://81189?lang=en",
                   "Guid": [{"id": "imdb://tt1"}, {"id": "tvdb://2"}, {"id": "tmdb://bad"}, "tvmaze://4"]}),
        ));
        assert_eq!(ev.external_ids.len(), 3);
        assert_eq!(ev.external_ids["imdb"], "tt1");
        assert_eq!(ev.external_ids["tvmaze"], "4");
        assert_eq!(ev.series_external_ids["tvdb"], "81189");

        let ev = dec(body(
            "media.pause",
            json!({"type": "episode", "guid": "com.plexapp.agents.thetvdb://350665/1/4?lang=de"}),
        ));
        assert!(ev.external_ids.is_empty());
        assert_eq!(ev.series_external_ids["tvdb"], "350665");

        let ev = dec(body(
            "media.play",
            json!({"type": "movie", "guid": "com.plexapp.agents.imdb://tt0137523?lang=en"}),
        ));
        assert_eq!(ev.external_ids["imdb"], "tt0137523");
        assert!(ev.series_external_ids.is_empty());
    }

    #[test]
    fn missing_everything_still_decodes() {
        let ev = dec(json!({"event": "media.play"}));
        assert_eq!(ev.backend_id, "");
        assert_eq!(ev.user_id, None);
        assert_eq!(ev.item_type, None);
        assert_eq!(ev.event, EventKind::Play);
    }
}
