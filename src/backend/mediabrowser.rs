//! What Jellyfin and Emby (both descendants of Media Browser) answer alike: `BaseItemDto` with
//! `UserData`, `QueryResult<BaseItemDto>` and `PublicSystemInfo`, all PascalCase, positions in
//! ticks (100 ns). The two clients differ only in routes and auth.

use super::http::parse_iso8601_ms;
use super::lenient::{decode_each, opt_number, string_or_number};
use super::provider_key;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use watchstate_actors::backend::{BackendError, RemoteItem, ServerIdentity};
use watchstate_actors::event::{ExternalIds, ItemType};

/// Ticks per millisecond: .NET `TimeSpan` ticks are 100 ns.
pub const TICKS_PER_MS: i64 = 10_000;

pub fn ticks_to_ms(ticks: i64) -> u64 {
    (ticks.max(0) / TICKS_PER_MS) as u64
}

pub fn ms_to_ticks(ms: u64) -> i64 {
    (ms as i64).saturating_mul(TICKS_PER_MS)
}

/// `GET /System/Info/Public`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PublicSystemInfo {
    /// The id webhooks carry as `ServerId` / `Server.Id`. Nullable in Jellyfin's spec, not
    /// required in Emby's: its absence is an error of its own ([`Self::into_identity`]).
    pub id: Option<String>,
    pub server_name: Option<String>,
    pub version: Option<String>,
}

impl PublicSystemInfo {
    /// The server's identity, or an error saying the id is missing (`product` names the
    /// server the URL should point at).
    pub fn into_identity(self, product: &str) -> Result<ServerIdentity, BackendError> {
        match self.id.filter(|id| !id.trim().is_empty()) {
            Some(server_id) => Ok(ServerIdentity {
                server_id,
                name: self.server_name,
                version: self.version,
            }),
            None => Err(BackendError::BadResponse {
                message: format!(
                    "server identity: the server returned no Id in /System/Info/Public; is url the address of a {product} server?"
                ),
            }),
        }
    }
}

/// `QueryResult<BaseItemDto>`; `Items` is required so that a wrong-shaped answer is an error,
/// not an empty library. The items stay raw until [`Self::decode`] reads them one by one.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ItemsResult {
    pub items: Vec<Box<RawValue>>,
    /// Lets the listing stop without asking for an empty page.
    #[serde(default, deserialize_with = "opt_number")]
    pub total_record_count: Option<i64>,
}

impl ItemsResult {
    /// The items that decode, and how many did not (skipped and logged with their `Id`).
    pub fn decode(&self, what: &str) -> (Vec<ItemDto>, u64) {
        decode_each(&self.items, "Id", what)
    }

    /// `TotalRecordCount`, when the server gave a usable one.
    pub fn total(&self) -> Option<u64> {
        self.total_record_count.and_then(|n| u64::try_from(n).ok())
    }
}

/// The fields of `BaseItemDto` the sync reads; numbers may arrive as numeric strings.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ItemDto {
    /// Required: an item without id cannot be written back, so it does not decode.
    #[serde(deserialize_with = "string_or_number")]
    pub id: String,
    /// `Movie`, `Episode`, `Series`, ...; anything but movies and episodes is skipped.
    #[serde(rename = "Type")]
    pub item_type: Option<String>,
    pub name: Option<String>,
    /// Provider name → id; values can be null or empty on real servers.
    pub provider_ids: Option<HashMap<String, Option<String>>>,
    #[serde(default, deserialize_with = "opt_number")]
    pub production_year: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    pub run_time_ticks: Option<i64>,
    pub series_name: Option<String>,
    /// The show, whose provider ids are the episode's series ids.
    pub series_id: Option<String>,
    #[serde(default, deserialize_with = "opt_number")]
    pub parent_index_number: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    pub index_number: Option<i64>,
    pub user_data: Option<UserDataDto>,
}

/// `UserItemDataDto` as read (Jellyfin's write body is [`UserDataUpdate`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserDataDto {
    pub played: Option<bool>,
    #[serde(default, deserialize_with = "opt_number")]
    pub playback_position_ticks: Option<i64>,
    pub last_played_date: Option<String>,
}

/// The body of a Jellyfin user-data update: only the fields we mean to set are serialised
/// (`UpdateUserItemDataDto`: every field nullable, absent ones left alone). Emby's update
/// replaces the whole `UserData` instead: its client sends back what it read.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserDataUpdate {
    pub playback_position_ticks: i64,
    /// `None` for a position push: the item may have been marked played meanwhile, and an
    /// explicit `false` would unmark it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub played: Option<bool>,
}

/// `ProviderIds` → the system's lower-case keys; unknown providers and empty values dropped.
pub fn provider_ids(ids: Option<&HashMap<String, Option<String>>>) -> ExternalIds {
    let mut out = ExternalIds::new();
    for (name, value) in ids.into_iter().flatten() {
        let (Some(key), Some(value)) = (provider_key(name), value.as_deref()) else {
            continue;
        };
        let value = value.trim();
        if !value.is_empty() {
            out.insert(key.to_string(), value.to_string());
        }
    }
    out
}

impl ItemDto {
    /// Movie or episode; `None` for any other type.
    pub fn kind(&self) -> Option<ItemType> {
        match self.item_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("movie") => Some(ItemType::Movie),
            Some(t) if t.eq_ignore_ascii_case("episode") => Some(ItemType::Episode),
            _ => None,
        }
    }

    /// The show id to look up for series ids (episodes only).
    pub fn show_id(&self) -> Option<&str> {
        match self.kind() {
            Some(ItemType::Episode) => self.series_id.as_deref().filter(|s| !s.is_empty()),
            _ => None,
        }
    }

    /// The sync's view of this item; `series_ids` are the show's provider ids (episodes).
    pub fn into_remote(self, series_ids: ExternalIds) -> Option<RemoteItem> {
        let item_type = self.kind()?;
        let user = self.user_data.unwrap_or_default();
        let episode = item_type == ItemType::Episode;
        let number = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok());
        Some(RemoteItem {
            external_ids: provider_ids(self.provider_ids.as_ref()),
            series_external_ids: if episode {
                series_ids
            } else {
                ExternalIds::new()
            },
            item_id: self.id,
            item_type,
            title: self.name,
            series_title: if episode { self.series_name } else { None },
            year: number(self.production_year),
            season: if episode {
                number(self.parent_index_number)
            } else {
                None
            },
            episode: if episode {
                number(self.index_number)
            } else {
                None
            },
            played: user.played.unwrap_or(false),
            last_played_at: user.last_played_date.as_deref().and_then(parse_iso8601_ms),
            position_ms: user.playback_position_ticks.map(ticks_to_ms).unwrap_or(0),
            duration_ms: self.run_time_ticks.map(ticks_to_ms),
            // Neither server names the library on an item (ParentId is the folder).
            library_id: None,
        })
    }
}

/// The listing cursor of both servers: the next `StartIndex`, in decimal.
pub fn parse_cursor(cursor: Option<&str>) -> u64 {
    match cursor.map(str::parse::<u64>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            tracing::warn!("unreadable listing cursor; listing again from the start");
            0
        }
    }
}

/// The cursor after a page of `got` items starting at `start`.
pub fn next_cursor(start: u64, got: usize, asked: usize, total: Option<u64>) -> Option<String> {
    let end = start + got as u64;
    let more = match total {
        Some(total) => got > 0 && end < total,
        None => got >= asked && got > 0,
    };
    more.then(|| end.to_string())
}

/// The shows named by the episodes of `items` whose provider ids are not cached yet (sorted,
/// once each): what the next "list shows" request of a page must ask for.
pub(crate) fn uncached_shows<'a>(
    items: &'a [ItemDto],
    cache: &super::SeriesIdCache,
) -> Vec<&'a str> {
    let mut missing: Vec<&str> = items
        .iter()
        .filter_map(ItemDto::show_id)
        .filter(|id| cache.get(id).is_none())
        .collect();
    missing.sort_unstable();
    missing.dedup();
    missing
}

/// Cache the provider ids of every show in `asked`; a show the server did not return (or in a
/// shape that does not decode) is cached with no ids, so it is not asked for again.
pub(crate) fn cache_shows(cache: &super::SeriesIdCache, asked: &[&str], shows: ItemsResult) {
    let (shows, _) = shows.decode("list shows");
    let mut found: HashMap<String, ExternalIds> = shows
        .into_iter()
        .map(|s| {
            let ids = provider_ids(s.provider_ids.as_ref());
            (s.id, ids)
        })
        .collect();
    for id in asked {
        cache.insert(id.to_string(), found.remove(*id).unwrap_or_default());
    }
}

/// One item as the actors see it, with its show's ids from `cache`.
pub(crate) fn to_remote(cache: &super::SeriesIdCache, item: ItemDto) -> Option<RemoteItem> {
    let series = item
        .show_id()
        .and_then(|id| cache.get(id))
        .unwrap_or_default();
    item.into_remote(series)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: serde_json::Value) -> ItemDto {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn ticks_convert_to_ms_and_back() {
        assert_eq!(ticks_to_ms(12_345_670_000), 1_234_567);
        assert_eq!(ticks_to_ms(-5), 0);
        assert_eq!(ms_to_ticks(1_234_567), 12_345_670_000);
    }

    #[test]
    fn an_episode_reads_ids_numbers_and_user_data() {
        let dto = item(serde_json::json!({
            "Id": "e1", "Type": "Episode", "Name": "Pilot", "SeriesName": "Dark",
            "SeriesId": "s1", "ParentIndexNumber": 1, "IndexNumber": 2,
            "RunTimeTicks": 36_000_000_000i64, "ProductionYear": 2017,
            "ProviderIds": {"Tvdb": "6252618", "Imdb": "", "Zap2It": "x", "Tmdb": null},
            "UserData": {"Played": true, "PlaybackPositionTicks": 600_000_000,
                          "LastPlayedDate": "2024-05-01T10:00:00.0000000Z"}
        }));
        assert_eq!(dto.show_id(), Some("s1"));
        let series: ExternalIds = [("tvdb".to_string(), "334824".to_string())].into();
        let r = dto.into_remote(series.clone()).unwrap();
        assert_eq!(r.item_type, ItemType::Episode);
        assert_eq!(r.external_ids.len(), 1);
        assert_eq!(r.external_ids["tvdb"], "6252618");
        assert_eq!(r.series_external_ids, series);
        assert_eq!((r.season, r.episode), (Some(1), Some(2)));
        assert_eq!(r.series_title.as_deref(), Some("Dark"));
        assert!(r.played);
        assert_eq!(r.position_ms, 60_000);
        assert_eq!(r.duration_ms, Some(3_600_000));
        assert_eq!(r.last_played_at, Some(1_714_557_600_000));
    }

    #[test]
    fn other_types_are_skipped_and_missing_user_data_is_unplayed() {
        assert!(item(serde_json::json!({"Id": "x", "Type": "Series"}))
            .into_remote(ExternalIds::new())
            .is_none());
        let r = item(serde_json::json!({"Id": "m", "Type": "Movie", "SeriesName": "no"}))
            .into_remote(ExternalIds::new())
            .unwrap();
        assert!(!r.played);
        assert_eq!(r.position_ms, 0);
        assert_eq!(r.series_title, None);
    }

    #[test]
    fn numbers_may_be_strings_and_a_page_skips_what_does_not_decode() {
        let dto = item(serde_json::json!({
            "Id": 5, "Type": "Movie", "ProductionYear": "2017", "RunTimeTicks": "36000000000",
            "UserData": {"PlaybackPositionTicks": "600000000", "PlayCount": "2", "Played": false}
        }));
        let r = dto.into_remote(ExternalIds::new()).unwrap();
        assert_eq!((r.item_id.as_str(), r.year), ("5", Some(2017)));
        assert_eq!((r.position_ms, r.duration_ms), (60_000, Some(3_600_000)));
        let page: ItemsResult = serde_json::from_str(
            r#"{"Items": [{"Id": "a", "Type": "Movie"}, {"Id": null}, {"Id": "c", "IndexNumber": []}],
                "TotalRecordCount": "3"}"#,
        )
        .unwrap();
        let (items, skipped) = page.decode("test");
        assert_eq!((items.len(), skipped, page.total()), (1, 2, Some(3)));
    }

    #[test]
    fn cursors_follow_the_total() {
        assert_eq!(parse_cursor(None), 0);
        assert_eq!(parse_cursor(Some("40")), 40);
        assert_eq!(parse_cursor(Some("garbage")), 0);
        assert_eq!(next_cursor(0, 20, 20, Some(45)), Some("20".into()));
        assert_eq!(next_cursor(40, 5, 20, Some(45)), None);
        assert_eq!(next_cursor(0, 20, 20, None), Some("20".into()));
        assert_eq!(next_cursor(20, 3, 20, None), None);
        assert_eq!(next_cursor(0, 0, 20, Some(10)), None);
    }

    #[test]
    fn the_update_body_has_pascal_case_and_skips_unset_fields() {
        let body = serde_json::to_value(UserDataUpdate {
            playback_position_ticks: 10,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(body, serde_json::json!({"PlaybackPositionTicks": 10}));
        let body = serde_json::to_value(UserDataUpdate {
            playback_position_ticks: 10,
            played: Some(false),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"PlaybackPositionTicks": 10, "Played": false})
        );
    }
}
