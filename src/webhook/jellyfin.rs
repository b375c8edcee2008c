//! Jellyfin webhooks (webhook plugin, generic destination, "Send All Properties"): a flat JSON
//! object, sent as `text/plain` (the plugin default) or `application/json`. The "Generic Form"
//! destination's url-encoded fields arrive here as the same object with string values.
//!
//! | `NotificationType` | normalised |
//! |---|---|
//! | `PlaybackStart` | play |
//! | `PlaybackProgress` | pause if `IsPaused`, else progress |
//! | `PlaybackStop` | stop; `played = true` only if `PlayedToCompletion` is true (without it: `Played` at position 0 or ≥ 90 %) |
//! | `UserDataSaved`, `SaveReason` `PlaybackStart` / `PlaybackProgress` | progress |
//! | `UserDataSaved`, `SaveReason` `PlaybackFinished` | scrobble, `played = true`, if `Played` at position 0 (or ≥ 90 %); else progress |
//! | `UserDataSaved`, `SaveReason` `TogglePlayed` | mark_played / mark_unplayed by `Played` |
//! | `UserDataSaved`, `SaveReason` `UpdateUserData` (a write of the user data through the API, ours included) | ignore |
//! | `ItemAdded` | item_added (generic) |
//! | anything else (other save reasons, `AuthenticationSuccess`, `SessionStart`, ...) | ignore |

use super::fields::{bool_field, finished_by_played, str_field, ticks_to_ms, u32_field, u64_field};
use super::lazy::Obj;
use super::{blank, ids};
use watchstate_actors::event::{EventKind, ItemType, Sender, WebhookEvent};

pub fn decode(obj: &Obj<'_>) -> WebhookEvent {
    let raw_event = str_field(obj, "NotificationType").unwrap_or_default();
    let mut ev = blank(
        Sender::Jellyfin,
        str_field(obj, "ServerId").unwrap_or_default(),
        raw_event.clone(),
    );
    ev.user_id = str_field(obj, "UserId");
    ev.user_name = str_field(obj, "NotificationUsername").or_else(|| str_field(obj, "Username"));
    ev.item_id = str_field(obj, "ItemId").map(guid_n_format);
    ev.item_type = str_field(obj, "ItemType").and_then(|t| match t.to_ascii_lowercase().as_str() {
        "movie" => Some(ItemType::Movie),
        "episode" => Some(ItemType::Episode),
        _ => None,
    });
    if ev.item_id.is_some() {
        ev.title = str_field(obj, "Name");
        ev.year = u32_field(obj, "Year").filter(|y| *y > 0);
    }
    if ev.item_type == Some(ItemType::Episode) {
        ev.series_title = str_field(obj, "SeriesName");
        ev.season = u32_field(obj, "SeasonNumber");
        ev.episode = u32_field(obj, "EpisodeNumber");
    }
    ev.position_ms = u64_field(obj, "PlaybackPositionTicks").map(ticks_to_ms);
    ev.duration_ms = u64_field(obj, "RunTimeTicks")
        .map(ticks_to_ms)
        .filter(|d| *d > 0);
    ev.external_ids = ids::jellyfin_providers(obj);

    let (kind, played) = match raw_event.to_ascii_lowercase().as_str() {
        "playbackstart" => (EventKind::Play, None),
        "playbackprogress" => {
            if bool_field(obj, "IsPaused") == Some(true) {
                (EventKind::Pause, None)
            } else {
                (EventKind::Progress, None)
            }
        }
        "playbackstop" => {
            // `PlayedToCompletion` says whether this session finished it. Without it, `Played`
            // (sent by some templates) is the item's state after the stop, which stays true
            // for a film played before and stopped mid-way this time: it counts only with
            // the position reset to 0, as Jellyfin does at completion. A false never asserts
            // unplayed (stopping early does not unmark an item).
            let completed = match bool_field(obj, "PlayedToCompletion") {
                Some(done) => done,
                None => {
                    finished_by_played(bool_field(obj, "Played"), ev.position_ms, ev.duration_ms)
                }
            };
            (EventKind::Stop, completed.then_some(true))
        }
        "userdatasaved" => user_data_saved(obj, ev.position_ms, ev.duration_ms),
        "itemadded" => (EventKind::ItemAdded, None),
        _ => (EventKind::Ignore, None),
    };
    ev.event = kind;
    ev.played = played;
    ev.generic = kind == EventKind::ItemAdded;
    ev
}

/// Jellyfin item ids are GUIDs, written by "Send All Properties" and the API as 32 lower-case
/// hex digits ("N" format). A user's Handlebars template renders `{{ItemId}}` with dashes
/// ("D" format: `2c0d61a7-93f1-a789-57bc-cedd56eea531`); item ids are compared exactly
/// downstream, so that form is turned into the N form. Anything else is kept as it is.
fn guid_n_format(id: String) -> String {
    if id.len() == 36 && watchstate_actors::event::is_guid(&id) {
        id.chars()
            .filter(|c| *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect()
    } else {
        id
    }
}

/// `UserDataSaved` fires for every user-data write; `SaveReason` says which.
fn user_data_saved(
    obj: &Obj<'_>,
    position_ms: Option<u64>,
    duration_ms: Option<u64>,
) -> (EventKind, Option<bool>) {
    let reason = str_field(obj, "SaveReason").unwrap_or_default();
    match reason.to_ascii_lowercase().as_str() {
        "playbackstart" | "playbackprogress" => (EventKind::Progress, None),
        // Jellyfin saves with this reason at every stop, not only at the end. At the played
        // threshold it sets `Played` and resets the position to 0. `Played` with a position
        // is a film played before, stopped mid-way this time: the resume position being
        // stored, as is a stop short of the threshold. Neither asserts anything (nor
        // unplayed).
        "playbackfinished" => {
            if finished_by_played(bool_field(obj, "Played"), position_ms, duration_ms) {
                (EventKind::Scrobble, Some(true))
            } else {
                (EventKind::Progress, None)
            }
        }
        "toggleplayed" => match bool_field(obj, "Played") {
            Some(true) => (EventKind::MarkPlayed, Some(true)),
            Some(false) => (EventKind::MarkUnplayed, Some(false)),
            None => (EventKind::Ignore, None),
        },
        _ => (EventKind::Ignore, None),
    }
}

#[cfg(test)]
mod tests {
    use super::super::lazy::parse_object;
    use super::*;
    use serde_json::{json, Value};

    fn dec(extra: Value) -> WebhookEvent {
        let mut base = json!({"ServerId": "16588A9F-062A-40C4-9665-86B1D220BFFC", "UserId": "u1",
            "NotificationUsername": "Rain", "ItemId": "i1", "ItemType": "Episode", "Name": "Ep",
            "SeriesName": "Show", "SeasonNumber": 1, "EpisodeNumber": 2, "Year": 2021,
            "RunTimeTicks": 14210970000u64, "Provider_anidb": "238801"});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        decode(&parse_object(&base.to_string()))
    }

    #[test]
    fn event_table() {
        let cases = [
            (
                json!({"NotificationType": "PlaybackStart"}),
                EventKind::Play,
                None,
            ),
            (
                json!({"NotificationType": "PlaybackProgress", "IsPaused": true}),
                EventKind::Pause,
                None,
            ),
            (
                json!({"NotificationType": "PlaybackProgress", "IsPaused": false}),
                EventKind::Progress,
                None,
            ),
            (
                json!({"NotificationType": "PlaybackProgress"}),
                EventKind::Progress,
                None,
            ),
            (
                json!({"NotificationType": "PlaybackStop", "PlayedToCompletion": true}),
                EventKind::Stop,
                Some(true),
            ),
            (
                json!({"NotificationType": "PlaybackStop", "PlayedToCompletion": false}),
                EventKind::Stop,
                None,
            ),
            (
                json!({"NotificationType": "PlaybackStop"}),
                EventKind::Stop,
                None,
            ),
            (
                json!({"NotificationType": "PlaybackStop", "Played": true}),
                EventKind::Stop,
                Some(true),
            ),
            (
                json!({"NotificationType": "PlaybackStop", "Played": false, "PlayedToCompletion": false}),
                EventKind::Stop,
                None,
            ),
            // A film played before, stopped mid-way: `Played` stays true, the position says so.
            (
                json!({"NotificationType": "PlaybackStop", "Played": true, "PlaybackPositionTicks": 7000000000u64}),
                EventKind::Stop,
                None,
            ),
            // The session's own position at the end of a finished playback (95 % in).
            (
                json!({"NotificationType": "PlaybackStop", "Played": true, "PlaybackPositionTicks": 13500000000u64}),
                EventKind::Stop,
                Some(true),
            ),
            (
                json!({"NotificationType": "PlaybackStop", "Played": true, "PlayedToCompletion": false}),
                EventKind::Stop,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "PlaybackStart"}),
                EventKind::Progress,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "PlaybackProgress"}),
                EventKind::Progress,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "PlaybackFinished", "Played": true}),
                EventKind::Scrobble,
                Some(true),
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "PlaybackFinished", "Played": true, "PlaybackPositionTicks": 0}),
                EventKind::Scrobble,
                Some(true),
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "PlaybackFinished", "Played": true, "PlaybackPositionTicks": 7000000000u64}),
                EventKind::Progress,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "PlaybackFinished", "Played": false}),
                EventKind::Progress,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "PlaybackFinished"}),
                EventKind::Progress,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "TogglePlayed", "Played": true}),
                EventKind::MarkPlayed,
                Some(true),
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "TogglePlayed", "Played": false}),
                EventKind::MarkUnplayed,
                Some(false),
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "TogglePlayed"}),
                EventKind::Ignore,
                None,
            ),
            // Our own position writes come back with this reason (and `Played` is the item's
            // state after any write, not an action): never read.
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "UpdateUserData", "Played": true}),
                EventKind::Ignore,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "UpdateUserData", "Played": false, "PlaybackPositionTicks": 6000000000u64}),
                EventKind::Ignore,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "TogglePlayed", "Played": ""}),
                EventKind::Ignore,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved", "SaveReason": "UpdateUserRating", "Played": true}),
                EventKind::Ignore,
                None,
            ),
            (
                json!({"NotificationType": "UserDataSaved"}),
                EventKind::Ignore,
                None,
            ),
            (
                json!({"NotificationType": "ItemAdded"}),
                EventKind::ItemAdded,
                None,
            ),
            (
                json!({"NotificationType": "AuthenticationSuccess"}),
                EventKind::Ignore,
                None,
            ),
            (
                json!({"NotificationType": "SessionStart"}),
                EventKind::Ignore,
                None,
            ),
        ];
        for (extra, kind, played) in cases {
            let ev = dec(extra.clone());
            assert_eq!(ev.event, kind, "{extra}");
            assert_eq!(ev.played, played, "{extra}");
            assert_eq!(ev.generic, kind == EventKind::ItemAdded, "{extra}");
        }
    }

    #[test]
    fn fields_ticks_and_ids() {
        let ev =
            dec(json!({"NotificationType": "PlaybackStop", "PlaybackPositionTicks": 56722609}));
        assert_eq!(ev.backend_id, "16588A9F-062A-40C4-9665-86B1D220BFFC");
        assert_eq!(ev.user_id.as_deref(), Some("u1"));
        assert_eq!(ev.user_name.as_deref(), Some("Rain"));
        assert_eq!(ev.item_id.as_deref(), Some("i1"));
        assert_eq!(ev.item_type, Some(ItemType::Episode));
        assert_eq!(ev.position_ms, Some(5672));
        assert_eq!(ev.duration_ms, Some(1_421_097));
        assert_eq!(
            (ev.season, ev.episode, ev.year),
            (Some(1), Some(2), Some(2021))
        );
        assert_eq!(ev.series_title.as_deref(), Some("Show"));
        assert_eq!(ev.external_ids["anidb"], "238801");
        assert!(ev.series_external_ids.is_empty());
    }

    #[test]
    fn absent_ticks_are_none_and_strings_are_accepted() {
        let ev = dec(json!({"NotificationType": "ItemAdded"}));
        assert_eq!(ev.position_ms, None);
        let ev = dec(
            json!({"NotificationType": "PlaybackProgress", "PlaybackPositionTicks": "14523310000", "IsPaused": "true"}),
        );
        assert_eq!(ev.position_ms, Some(1_452_331));
        assert_eq!(ev.event, EventKind::Pause);
    }

    #[test]
    fn dashed_item_guids_become_the_n_format() {
        let ev = dec(
            json!({"NotificationType": "UserDataSaved", "SaveReason": "TogglePlayed",
            "Played": "True", "ItemId": "2C0D61A7-93f1-a789-57bc-cedd56eea531"}),
        );
        assert_eq!(
            ev.item_id.as_deref(),
            Some("2c0d61a793f1a78957bccedd56eea531")
        );
        assert_eq!(ev.event, EventKind::MarkPlayed);
        for kept in [
            "9250ab3d1101d01705c353b78cbb572e",
            "i1",
            "2c0d61a7-93f1-a789-57bc-cedd56eea53",
            "2c0d61a7_93f1-a789-57bc-cedd56eea531",
        ] {
            let ev = dec(json!({"NotificationType": "PlaybackStart", "ItemId": kept}));
            assert_eq!(ev.item_id.as_deref(), Some(kept));
        }
    }

    #[test]
    fn movies_and_non_items() {
        let ev = dec(json!({"NotificationType": "PlaybackStart", "ItemType": "Movie"}));
        assert_eq!(ev.item_type, Some(ItemType::Movie));
        assert_eq!(
            (ev.season, ev.episode, ev.series_title.clone()),
            (None, None, None)
        );
        let ev = dec(json!({"NotificationType": "PlaybackStart", "ItemType": "Audio"}));
        assert_eq!(ev.item_type, None);
    }
}
