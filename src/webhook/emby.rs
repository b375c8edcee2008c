//! Emby webhooks: JSON with `Event`, `Server`, `User`, `Item` (and `PlaybackInfo` for playback),
//! as the raw body (Emby 4.9+ "application/json") or in a `data` form field (4.7/4.8). Any server
//! version is accepted; keys are read case-insensitively.
//!
//! | `Event` | normalised |
//! |---|---|
//! | `playback.start` / `playback.pause` / `playback.unpause` | play / pause / resume |
//! | `playback.stop` | stop; `played = true` only if `PlayedToCompletion` is true (without it: `Item.Played` at position 0 or ≥ 90 %) |
//! | `playback.scrobble` | scrobble, `played = true` |
//! | `item.markplayed` / `item.markunplayed` | mark_played / mark_unplayed (forced state) |
//! | `library.new` | item_added (generic) |
//! | `system.notificationtest`, `system.webhooktest` | test |
//! | anything else (`item.rate`, `library.deleted`, `user.*`, ...) | ignore |

use super::fields::{
    self, bool_field, finished_by_played, str_field, ticks_to_ms, u32_field, u64_field,
};
use super::lazy::Obj;
use super::{blank, ids};
use watchstate_actors::event::{EventKind, ItemType, Sender, WebhookEvent};

pub fn decode(obj: &Obj<'_>) -> WebhookEvent {
    let raw_event = str_field(obj, "Event").unwrap_or_default();
    let item = fields::object(obj, "Item");
    let backend_id = fields::object(obj, "Server")
        .and_then(|s| str_field(s, "Id"))
        .or_else(|| item.and_then(|i| str_field(i, "ServerId")))
        .unwrap_or_default();
    let mut ev = blank(Sender::Emby, backend_id, raw_event.clone());
    if let Some(user) = fields::object(obj, "User") {
        ev.user_id = str_field(user, "Id");
        ev.user_name = str_field(user, "Name");
    }
    let playback = fields::object(obj, "PlaybackInfo");
    if let Some(item) = item {
        ev.item_id = str_field(item, "Id");
        ev.item_type =
            str_field(item, "Type").and_then(|t| match t.to_ascii_lowercase().as_str() {
                "movie" => Some(ItemType::Movie),
                "episode" => Some(ItemType::Episode),
                _ => None,
            });
        ev.title = str_field(item, "Name");
        ev.year = u32_field(item, "ProductionYear").filter(|y| *y > 0);
        if ev.item_type == Some(ItemType::Episode) {
            ev.series_title = str_field(item, "SeriesName");
            ev.season = u32_field(item, "ParentIndexNumber");
            ev.episode = u32_field(item, "IndexNumber");
        }
        ev.duration_ms = u64_field(item, "RunTimeTicks")
            .map(ticks_to_ms)
            .filter(|d| *d > 0);
        if let Some(provider_ids) = fields::object(item, "ProviderIds") {
            ev.external_ids = ids::provider_map(provider_ids);
        }
    }
    ev.position_ms = playback
        .and_then(|p| u64_field(p, "PositionTicks"))
        .map(ticks_to_ms);

    let (kind, played) = match raw_event.to_ascii_lowercase().as_str() {
        "playback.start" => (EventKind::Play, None),
        "playback.pause" => (EventKind::Pause, None),
        "playback.unpause" => (EventKind::Resume, None),
        "playback.stop" => {
            // `PlayedToCompletion` says whether this session finished it; without it, the
            // item's `Played` counts only where a finished playback leaves the position
            // (`Played` stays true on a film played before and stopped mid-way). False never
            // asserts unplayed.
            let to_completion = playback
                .and_then(|p| bool_field(p, "PlayedToCompletion"))
                .or_else(|| item.and_then(|i| bool_field(i, "PlayedToCompletion")));
            let completed = match to_completion {
                Some(done) => done,
                None => finished_by_played(
                    item.and_then(|i| bool_field(i, "Played")),
                    ev.position_ms,
                    ev.duration_ms,
                ),
            };
            (EventKind::Stop, completed.then_some(true))
        }
        "playback.scrobble" => (EventKind::Scrobble, Some(true)),
        "item.markplayed" => (EventKind::MarkPlayed, Some(true)),
        "item.markunplayed" => (EventKind::MarkUnplayed, Some(false)),
        "library.new" => (EventKind::ItemAdded, None),
        "system.notificationtest" | "system.webhooktest" => (EventKind::Test, None),
        _ => (EventKind::Ignore, None),
    };
    ev.event = kind;
    ev.played = played;
    ev.generic = kind == EventKind::ItemAdded;
    ev
}

#[cfg(test)]
mod tests {
    use super::super::lazy::parse_object;
    use super::*;
    use serde_json::{json, Value};

    fn dec(event: &str, extra: Value) -> WebhookEvent {
        let mut base = json!({"Event": event, "Server": {"Id": "srv", "Version": "4.8.11.0"},
            "User": {"Id": "u1", "Name": "luiz"},
            "Item": {"Id": 88213, "Type": "Episode", "Name": "Ep", "SeriesName": "Severance",
                     "ParentIndexNumber": 1, "IndexNumber": 1, "ProductionYear": 2022,
                     "RunTimeTicks": 34170000000u64, "ProviderIds": {"Tvdb": "7889611", "IMDB": "tt11650328"}}});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        decode(&parse_object(&base.to_string()))
    }

    #[test]
    fn event_table() {
        for (name, extra, kind, played) in [
            ("playback.start", json!({}), EventKind::Play, None),
            ("playback.pause", json!({}), EventKind::Pause, None),
            ("playback.unpause", json!({}), EventKind::Resume, None),
            (
                "playback.stop",
                json!({"PlaybackInfo": {"PlayedToCompletion": true}}),
                EventKind::Stop,
                Some(true),
            ),
            (
                "playback.stop",
                json!({"PlaybackInfo": {"PlayedToCompletion": false}}),
                EventKind::Stop,
                None,
            ),
            ("playback.stop", json!({}), EventKind::Stop, None),
            (
                "playback.stop",
                json!({"Item": {"Type": "Movie", "Played": true}}),
                EventKind::Stop,
                Some(true),
            ),
            // A film played before, stopped mid-way: `Played` stays true.
            (
                "playback.stop",
                json!({"Item": {"Type": "Movie", "Played": true, "RunTimeTicks": 34170000000u64},
                       "PlaybackInfo": {"PositionTicks": 12000000000u64}}),
                EventKind::Stop,
                None,
            ),
            (
                "playback.stop",
                json!({"Item": {"Type": "Movie", "Played": true},
                       "PlaybackInfo": {"PlayedToCompletion": false}}),
                EventKind::Stop,
                None,
            ),
            (
                "playback.scrobble",
                json!({}),
                EventKind::Scrobble,
                Some(true),
            ),
            (
                "item.markplayed",
                json!({}),
                EventKind::MarkPlayed,
                Some(true),
            ),
            (
                "item.markunplayed",
                json!({}),
                EventKind::MarkUnplayed,
                Some(false),
            ),
            ("library.new", json!({}), EventKind::ItemAdded, None),
            ("system.notificationtest", json!({}), EventKind::Test, None),
            ("system.webhooktest", json!({}), EventKind::Test, None),
            ("item.rate", json!({}), EventKind::Ignore, None),
            ("user.authenticated", json!({}), EventKind::Ignore, None),
        ] {
            let ev = dec(name, extra);
            assert_eq!(ev.event, kind, "{name}");
            assert_eq!(ev.played, played, "{name}");
            assert_eq!(ev.generic, kind == EventKind::ItemAdded, "{name}");
            assert_eq!(ev.sender, Sender::Emby);
        }
    }

    #[test]
    fn fields_ticks_and_provider_ids() {
        let ev = dec(
            "playback.stop",
            json!({"PlaybackInfo": {"PositionTicks": 33912345670u64}}),
        );
        assert_eq!(ev.backend_id, "srv");
        assert_eq!(ev.user_id.as_deref(), Some("u1"));
        assert_eq!(ev.item_id.as_deref(), Some("88213"));
        assert_eq!(ev.position_ms, Some(3_391_234));
        assert_eq!(ev.duration_ms, Some(3_417_000));
        assert_eq!(
            (ev.season, ev.episode, ev.year),
            (Some(1), Some(1), Some(2022))
        );
        assert_eq!(ev.external_ids["imdb"], "tt11650328");
        assert_eq!(ev.external_ids["tvdb"], "7889611");
    }

    #[test]
    fn missing_parts() {
        let ev = decode(&parse_object(
            &json!({"Event": "system.notificationtest", "Server": {"Id": "srv"}}).to_string(),
        ));
        assert_eq!(ev.event, EventKind::Test);
        assert_eq!(
            (ev.user_id.clone(), ev.item_id.clone(), ev.position_ms),
            (None, None, None)
        );
        let ev = decode(&parse_object(
            &json!({"event": "library.new", "item": {"id": "5", "type": "movie", "serverid": "s2"}})
                .to_string(),
        ));
        assert_eq!(ev.backend_id, "s2");
        assert_eq!(ev.item_type, Some(ItemType::Movie));
        assert_eq!(ev.event, EventKind::ItemAdded);
    }
}
