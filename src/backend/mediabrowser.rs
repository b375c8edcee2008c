//! What Jellyfin and Emby (both descendants of Media Browser) answer alike: `BaseItemDto` with
//! `UserData`, `QueryResult<BaseItemDto>` and `PublicSystemInfo`, all PascalCase, positions in
//! ticks (100 ns). The two clients differ only in routes and auth.

use super::http::parse_iso8601_ms;
use super::lenient::{decode_each, opt_id_map, opt_number, opt_string_or_number, string_or_number};
use super::provider_key;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::HashMap;
use watchstate_actors::backend::{BackendError, ItemPage, RemoteItem, ServerIdentity, ServerUser};
use watchstate_actors::event::{ExternalIds, ItemType};

/// Ticks per millisecond: .NET `TimeSpan` ticks are 100 ns.
pub const TICKS_PER_MS: i64 = 10_000;

pub fn ticks_to_ms(ticks: i64) -> u64 {
    (ticks.max(0) / TICKS_PER_MS) as u64
}

pub fn ms_to_ticks(ms: u64) -> i64 {
    (ms as i64).saturating_mul(TICKS_PER_MS)
}

/// A `UserDto` of `GET /Users` (Jellyfin) or `GET /Users/Query` (Emby): its id and name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UserDto {
    // Jellyfin documents a camelCase profile of its JSON too; either spelling is read.
    #[serde(default, alias = "id", deserialize_with = "opt_string_or_number")]
    pub id: Option<String>,
    #[serde(default, alias = "name")]
    pub name: Option<String>,
}

/// The users with an id, in the server's order.
pub fn server_users(users: Vec<UserDto>) -> Vec<ServerUser> {
    users
        .into_iter()
        .filter_map(|u| {
            let id = u.id.filter(|i| !i.is_empty())?;
            Some(ServerUser {
                name: u.name.unwrap_or_default(),
                id,
            })
        })
        .collect()
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

/// `QueryResult<BaseItemDto>`. The items stay raw until [`Self::decode`] reads them one by one.
/// `Items` is nullable in Jellyfin 10.8's spec (and Jellyfin leaves null properties out): a
/// null or absent `Items` is an empty page when the answer has `TotalRecordCount`, as every
/// query result has; an answer with neither is an error, not an empty library.
#[derive(Debug, Deserialize)]
#[serde(try_from = "QueryResultFields")]
pub struct ItemsResult {
    pub items: Vec<Box<RawValue>>,
    /// Lets the listing stop without asking for an empty page.
    pub total_record_count: Option<i64>,
    /// Where the page starts, as the server says (Jellyfin; Emby's answers do not say).
    pub start_index: Option<i64>,
}

/// [`ItemsResult`] as sent, before the check that it is a query result.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueryResultFields {
    #[serde(default)]
    items: Option<Vec<Box<RawValue>>>,
    #[serde(default, deserialize_with = "opt_number")]
    total_record_count: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    start_index: Option<i64>,
}

impl TryFrom<QueryResultFields> for ItemsResult {
    type Error = &'static str;

    fn try_from(f: QueryResultFields) -> Result<Self, Self::Error> {
        match (&f.items, f.total_record_count) {
            (None, None) => return Err("neither Items nor TotalRecordCount: not a list of items"),
            // No items, yet items to list: taken as empty it would end a listing early.
            (None, Some(n)) if n > 0 => {
                return Err("no Items although TotalRecordCount is above 0")
            }
            _ => {}
        }
        Ok(ItemsResult {
            items: f.items.unwrap_or_default(),
            total_record_count: f.total_record_count,
            start_index: f.start_index,
        })
    }
}

impl ItemsResult {
    /// The items that decode, and how many did not (skipped and logged with their `Id`).
    pub fn decode(&self, what: &str) -> (Vec<ItemDto>, u64) {
        decode_each(&self.items, "Id", what)
    }

    /// [`Self::decode`] for a listing page: placeholders left out before their shows are
    /// looked up.
    pub fn decode_listed(&self, what: &str) -> (Vec<ItemDto>, u64) {
        let (mut items, skipped) = self.decode(what);
        items.retain(|i| !i.is_virtual());
        (items, skipped)
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
    #[serde(default, deserialize_with = "opt_id_map")]
    pub provider_ids: Option<HashMap<String, Option<String>>>,
    #[serde(default, deserialize_with = "opt_number")]
    pub production_year: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    pub run_time_ticks: Option<i64>,
    pub series_name: Option<String>,
    /// The show, whose provider ids are the episode's series ids (a number like `Id`).
    #[serde(default, deserialize_with = "opt_string_or_number")]
    pub series_id: Option<String>,
    #[serde(default, deserialize_with = "opt_number")]
    pub parent_index_number: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    pub index_number: Option<i64>,
    pub user_data: Option<UserDataDto>,
    /// `Virtual` for a placeholder (an episode known from metadata, with no file): not an
    /// item of the library, whatever the listing's filters let through.
    pub location_type: Option<String>,
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
    /// When the position was reached (RFC 3339); absent leaves the server's date.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_played_date: Option<String>,
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
    /// A placeholder (`LocationType: Virtual`): no item of the library.
    pub fn is_virtual(&self) -> bool {
        self.location_type
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case("virtual"))
    }

    pub fn into_remote(self, series_ids: ExternalIds) -> Option<RemoteItem> {
        if self.is_virtual() {
            return None;
        }
        let item_type = self.kind()?;
        let state_unknown = self.user_data.is_none();
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
            state_unknown,
            last_played_at: user.last_played_date.as_deref().and_then(parse_iso8601_ms),
            position_ms: user.playback_position_ticks.map(ticks_to_ms).unwrap_or(0),
            duration_ms: self.run_time_ticks.map(ticks_to_ms),
            // Neither server names the library on an item (ParentId is the folder).
            library_id: None,
        })
    }
}

/// `ignore_libraries` on a server whose items do not name their library. The listing learns
/// which items the ignored libraries hold (one id-only listing of each, at the start of every
/// sync), and a single item's library is read from its ancestors (`/Items/{id}/Ancestors`),
/// where one of them is the library (a `CollectionFolder`, the `ParentId` of a listing).
/// Items found in an ignored library carry its id, as configured, in
/// [`RemoteItem::library_id`]: the pair actor ignores them (in a sync and for a webhook).
#[derive(Debug, Default)]
pub(crate) struct IgnoredLibraries {
    /// The configured ids, as written.
    ids: Vec<String>,
    /// Item id → the configured id of the ignored library it is in; `None` until listed.
    members: std::sync::Mutex<Option<HashMap<String, String>>>,
}

impl IgnoredLibraries {
    pub fn new(ids: Vec<String>) -> Self {
        IgnoredLibraries {
            ids: ids.into_iter().filter(|i| !i.trim().is_empty()).collect(),
            members: Default::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, String>>> {
        // Replaced whole, never left half-updated.
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the members must be listed before a page starting at `start`: at the start of
    /// every listing, and when a listing resumed after a restart has not listed them yet.
    pub fn needs_members(&self, start: u64) -> bool {
        !self.is_empty() && (start == 0 || self.lock().is_none())
    }

    pub fn set_members(&self, members: HashMap<String, String>) {
        *self.lock() = Some(members);
    }

    /// The configured id that `id` (a library's item id) is, compared as server ids are (case
    /// and dashes aside).
    pub fn matching(&self, id: &str) -> Option<&str> {
        let id = watchstate_actors::event::normalize_id(id);
        self.ids
            .iter()
            .find(|c| watchstate_actors::event::normalize_id(c) == id)
            .map(String::as_str)
    }

    /// Tag `item` with its ignored library when the last listing found it in one; whether
    /// it is tagged.
    pub fn tag(&self, item: &mut RemoteItem) -> bool {
        if item.library_id.is_none() {
            item.library_id = self
                .lock()
                .as_ref()
                .and_then(|m| m.get(&item.item_id).cloned());
        }
        item.library_id.is_some()
    }

    /// Tag `item` (looked up alone) from the last listing, else from its ancestors as
    /// `ancestors` reads them. When they cannot be read the lookup fails: the pair then
    /// drops the event rather than follow an item that may be in an ignored library.
    pub async fn tag_looked_up<Fut>(
        &self,
        item: &mut RemoteItem,
        ancestors: Fut,
    ) -> Result<(), BackendError>
    where
        Fut: std::future::Future<Output = Result<Vec<Box<RawValue>>, BackendError>>,
    {
        if self.is_empty() || self.tag(item) {
            return Ok(());
        }
        let list = ancestors.await?;
        self.tag_from_ancestors(item, &list);
        Ok(())
    }

    /// Tag `item` from its ancestors (`GET /Items/{id}/Ancestors`, an array of items).
    pub fn tag_from_ancestors(&self, item: &mut RemoteItem, ancestors: &[Box<RawValue>]) {
        #[derive(Deserialize)]
        struct Ancestor {
            #[serde(rename = "Id", deserialize_with = "string_or_number")]
            id: String,
        }
        item.library_id = ancestors
            .iter()
            .filter_map(|a| serde_json::from_str::<Ancestor>(a.get()).ok())
            .find_map(|a| self.matching(&a.id).map(str::to_string));
    }

    /// List the items of every ignored library (movies and episodes, ids only) with `fetch`
    /// (library id, start index → a page) and remember which library each is in. A library
    /// the server does not know (a 4xx) is skipped with a warning, so that a wrong id does
    /// not stop every sync; other failures fail the listing (the sync retries it).
    pub async fn list_members<F, Fut>(&self, page_size: usize, fetch: F) -> Result<(), BackendError>
    where
        F: Fn(String, u64) -> Fut,
        Fut: std::future::Future<Output = Result<ItemsResult, BackendError>>,
    {
        let mut members = HashMap::new();
        for lib in &self.ids {
            let mut start = 0;
            loop {
                let page = match fetch(lib.clone(), start).await {
                    Ok(page) => page,
                    Err(e @ (BackendError::NotFound { .. } | BackendError::Client { .. })) => {
                        tracing::warn!(library = %lib, error = %e, "ignore_libraries: cannot list this library; is it a library id of this server?");
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let (got, ids) = page_ids(&page);
                members.extend(ids.into_iter().map(|id| (id, lib.clone())));
                match next_start(start, got, page_size, &page) {
                    Some(next) => start = next,
                    None => break,
                }
            }
        }
        tracing::debug!(
            items = members.len(),
            "items of the ignored libraries listed"
        );
        self.set_members(members);
        Ok(())
    }
}

/// The item ids of one library, from an id-only listing page: how many items it had, and
/// the ids that decode.
pub fn page_ids(page: &ItemsResult) -> (usize, Vec<String>) {
    #[derive(Deserialize)]
    struct IdOnly {
        #[serde(rename = "Id", deserialize_with = "string_or_number")]
        id: String,
    }
    let ids = page
        .items
        .iter()
        .filter_map(|i| serde_json::from_str::<IdOnly>(i.get()).ok())
        .map(|i| i.id)
        .collect();
    (page.items.len(), ids)
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

/// The cursor after `page`, of `got` items, asked for at `start`.
pub fn next_cursor(start: u64, got: usize, asked: usize, page: &ItemsResult) -> Option<String> {
    next_start(start, got, asked, page).map(|n| n.to_string())
}

/// The start of the page after `page`, of `got` items, asked for at `start`, if there is one.
fn next_start(start: u64, got: usize, asked: usize, page: &ItemsResult) -> Option<u64> {
    let confirmed = page.start_index == i64::try_from(start).ok();
    super::more_pages(start, got as u64, asked as u64, page.total(), confirmed)
        .then_some(start + got as u64)
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

/// A listing page as the sync sees it: the `items` that decoded (their shows looked up) as
/// remote items tagged with their ignored library, out of `got` entries of which `skipped`
/// did not decode; the rest are counted as left out (placeholders, other types).
pub(crate) fn listed_page(
    cache: &super::SeriesIdCache,
    ignored: &IgnoredLibraries,
    items: Vec<ItemDto>,
    got: usize,
    skipped: u64,
    next: Option<String>,
    total: Option<u64>,
) -> ItemPage {
    let items: Vec<RemoteItem> = items
        .into_iter()
        .filter_map(|i| to_remote(cache, i))
        .map(|mut r| {
            ignored.tag(&mut r);
            r
        })
        .collect();
    ItemPage {
        left_out: (got as u64).saturating_sub(skipped + items.len() as u64),
        items,
        next,
        total,
        skipped,
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
    fn users_read_in_either_casing_and_without_an_id_are_left_out() {
        let users: Vec<UserDto> = serde_json::from_str(
            r#"[{"Name":"Alice","Id":"4a6b"},{"name":"bob","id":"5c7d"},{"Name":"no id"}]"#,
        )
        .unwrap();
        let users = server_users(users);
        assert_eq!(
            users,
            vec![
                ServerUser {
                    id: "4a6b".into(),
                    name: "Alice".into()
                },
                ServerUser {
                    id: "5c7d".into(),
                    name: "bob".into()
                }
            ]
        );
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

    /// A real listing's movies and episodes as the sync sees them (shows not looked up), the
    /// number of items skipped, and the page's total.
    fn real_page(text: &str) -> (Vec<RemoteItem>, u64, Option<u64>) {
        let page: ItemsResult = serde_json::from_str(text).unwrap();
        let (items, skipped) = page.decode_listed("sample");
        let items = items
            .into_iter()
            .filter_map(|i| i.into_remote(ExternalIds::new()))
            .collect();
        (items, skipped, page.total())
    }

    #[test]
    fn real_jellyfin_answers_decode() {
        // 10.10: LastPlayedDate with three fractional digits.
        let (items, skipped, _) =
            real_page(real_answer!("jellyfin/items-episode-onepiece-10.10.json"));
        assert_eq!(skipped, 0);
        let e = &items[0];
        assert_eq!(e.item_id, "ebf426612fd9faef245484ffccadceec");
        assert_eq!(
            (e.item_type, e.season, e.episode),
            (ItemType::Episode, Some(1), Some(3))
        );
        assert_eq!(e.series_title.as_deref(), Some("One Piece"));
        assert!(e.played);
        assert_eq!(e.last_played_at, Some(1_732_223_089_571));
        // A series is no item of the sync; a movie played 9 times but now unplayed is unplayed.
        let (items, _, _) = real_page(real_answer!("jellyfin/items-series-and-movie-10.10.json"));
        assert_eq!(items.len(), 1);
        let m = &items[0];
        assert_eq!((m.item_type, m.year), (ItemType::Movie, Some(2024)));
        assert!(!m.played);
        assert_eq!(m.duration_ms, Some(5_831_916));
        // 10.8.10 (the demo server): the same, and a played episode with its date.
        let (items, _, total) =
            real_page(real_answer!("jellyfin/shows-episodes-10.8.10-demo.json"));
        assert_eq!(total, Some(2));
        assert!(!items[0].played, "Played: false despite PlayCount 17");
        assert!(items[1].played);
        assert_eq!(items[1].last_played_at, Some(1_581_787_850_365));
        let (items, _, _) = real_page(real_answer!(
            "jellyfin/users-items-search-folder-and-episode-10.8.10-demo.json"
        ));
        assert_eq!(items.len(), 1, "the folder is left out");
        assert_eq!(items[0].item_id, "26e5d3268d21165df762a033b8b116f6");
        // No UserData asked for: unplayed, nothing else lost.
        let (items, _, _) = real_page(real_answer!("jellyfin/items-movie-bourne.json"));
        assert_eq!((items[0].played, items[0].year), (false, Some(2004)));
        // 10.5 answered a total of 0 with the items in the page: the listing goes on.
        let (items, skipped, total) = real_page(real_answer!(
            "jellyfin/users-items-movies-10.5-jellyfin3030-excerpt.json"
        ));
        assert_eq!((items.len(), skipped, total), (2, 0, Some(0)));
        assert!(items.iter().all(|m| m.played));
        let page: ItemsResult = serde_json::from_str(real_answer!(
            "jellyfin/users-items-movies-10.5-jellyfin3030-excerpt.json"
        ))
        .unwrap();
        assert_eq!(next_cursor(0, 2, 2, &page), Some("2".into()));
        // One item, and the server identities.
        let one: ItemDto =
            serde_json::from_str(real_answer!("jellyfin/item-movie-310toyuma.json")).unwrap();
        let m = one.into_remote(ExternalIds::new()).unwrap();
        assert_eq!(
            (m.title.as_deref(), m.year),
            (Some("3 10 to Yuma"), Some(2007))
        );
        for text in [
            real_answer!("jellyfin/system-info-public-10.8.10-demo.json"),
            real_answer!("jellyfin/system-info-public-10.1.0.json"),
        ] {
            let info: PublicSystemInfo = serde_json::from_str(text).unwrap();
            assert_eq!(info.id.map(|id| id.len()), Some(32));
        }
    }

    #[test]
    fn real_emby_answers_decode() {
        // Upper-case IMDB key, a resume position in ticks, the last-played date.
        let one: ItemDto =
            serde_json::from_str(real_answer!("emby/item-movie-users-items-id.json")).unwrap();
        let m = one.into_remote(ExternalIds::new()).unwrap();
        assert_eq!(
            (m.item_id.as_str(), m.item_type),
            ("368536", ItemType::Movie)
        );
        assert_eq!(m.external_ids["imdb"], "tt10676048");
        assert_eq!(m.external_ids["tmdb"], "609681");
        assert!(!m.played);
        assert_eq!(m.position_ms, 2_708_635);
        assert_eq!(m.last_played_at, Some(1_778_745_294_000));
        // Numeric-string ids; no UserData.
        let one: ItemDto =
            serde_json::from_str(real_answer!("emby/item-episode-resume-or-latest-empl.json"))
                .unwrap();
        assert_eq!(one.show_id(), Some("11206"));
        let e = one.into_remote(ExternalIds::new()).unwrap();
        assert_eq!((e.season, e.episode, e.played), (Some(3), Some(4), false));
        // A season is no item of the sync.
        let one: ItemDto =
            serde_json::from_str(real_answer!("emby/item-season-users-items-id.json")).unwrap();
        assert!(one.into_remote(ExternalIds::new()).is_none());
        // Played without a date (Fields did not name UserDataLastPlayedDate).
        let (items, skipped, _) = real_page(real_answer!(
            "emby/items-movie-userdata-without-fields.json"
        ));
        assert_eq!(skipped, 0);
        assert!(items[0].played);
        assert_eq!(items[0].last_played_at, None);
        assert_eq!(items[0].external_ids["imdb"], "tt28650488");
    }

    #[test]
    fn provider_ids_and_series_ids_may_be_numbers() {
        let dto = item(serde_json::json!({
            "Id": 7, "Type": "Episode", "SeriesId": 70,
            "ProviderIds": {"Tvdb": 6252618, "Imdb": "tt1", "Tmdb": {"odd": 1}, "X": true}
        }));
        assert_eq!(dto.show_id(), Some("70"));
        let r = dto.into_remote(ExternalIds::new()).unwrap();
        assert_eq!(r.external_ids["tvdb"], "6252618");
        assert_eq!(r.external_ids["imdb"], "tt1");
        assert_eq!(r.external_ids.len(), 2);
        // An empty map written as a list (`[]`), or null: no ids, the item still reads.
        for ids in [serde_json::json!([]), serde_json::Value::Null] {
            let dto = item(serde_json::json!({"Id": "m", "Type": "Movie", "ProviderIds": ids}));
            assert!(dto
                .into_remote(ExternalIds::new())
                .unwrap()
                .external_ids
                .is_empty());
        }
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
    fn null_or_absent_items_are_an_empty_page_of_a_query_result() {
        for body in [
            r#"{"Items": null, "TotalRecordCount": 0, "StartIndex": 0}"#,
            r#"{"TotalRecordCount": 0, "StartIndex": 0}"#,
        ] {
            let page: ItemsResult = serde_json::from_str(body).expect(body);
            assert!(page.items.is_empty(), "{body}");
            assert_eq!(page.total(), Some(0), "{body}");
        }
        let page: ItemsResult = serde_json::from_str(r#"{"Items": []}"#).unwrap();
        assert_eq!((page.items.len(), page.total()), (0, None));
        // Another shape is still an error, not an empty library.
        // So is a null list where the total says there are items: read as empty, it would
        // end a listing at its first page.
        for body in [
            r#"{}"#,
            r#"{"Items": null}"#,
            r#"{"Items": null, "TotalRecordCount": 500}"#,
            r#"{"TotalRecordCount": 3}"#,
            r#"{"error": "x"}"#,
            r#"[1]"#,
        ] {
            assert!(serde_json::from_str::<ItemsResult>(body).is_err(), "{body}");
        }
    }

    #[test]
    fn cursors_follow_the_total() {
        assert_eq!(parse_cursor(None), 0);
        assert_eq!(parse_cursor(Some("40")), 40);
        assert_eq!(parse_cursor(Some("garbage")), 0);
        // What Jellyfin answers (it says where the page starts) and what Emby answers.
        let jf = |total: Option<i64>, start: u64| ItemsResult {
            items: Vec::new(),
            total_record_count: total,
            start_index: Some(start as i64),
        };
        let emby = |total: Option<i64>| ItemsResult {
            items: Vec::new(),
            total_record_count: total,
            start_index: None,
        };
        for (page, start) in [(jf(Some(45), 0), 0), (emby(Some(45)), 0)] {
            assert_eq!(next_cursor(start, 20, 20, &page), Some("20".into()));
        }
        assert_eq!(next_cursor(40, 5, 20, &jf(Some(45), 40)), None);
        assert_eq!(next_cursor(0, 20, 20, &emby(None)), Some("20".into()));
        assert_eq!(next_cursor(20, 3, 20, &emby(None)), None);
        assert_eq!(next_cursor(0, 0, 20, &jf(Some(10), 0)), None);
        // A total below what was listed is wrong: full pages go on, a short one ends it.
        assert_eq!(next_cursor(0, 20, 20, &jf(Some(0), 0)), Some("20".into()));
        assert_eq!(
            next_cursor(20, 20, 20, &jf(Some(39), 20)),
            Some("40".into())
        );
        assert_eq!(next_cursor(40, 3, 20, &jf(Some(39), 40)), None);
        // Short by less than a page, ending on a page boundary: not caught.
        assert_eq!(next_cursor(20, 20, 20, &jf(Some(40), 20)), None);
        // Only when the answer confirms its start: not Emby's, not one that ignores it.
        assert_eq!(next_cursor(0, 20, 20, &emby(Some(0))), None);
        assert_eq!(next_cursor(40, 20, 20, &jf(Some(45), 0)), None);
        // A server that ignores the page size: its total ends the listing.
        assert_eq!(next_cursor(0, 45, 20, &jf(Some(45), 0)), None);
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
            last_played_date: Some("2024-05-01T10:00:00Z".into()),
        })
        .unwrap();
        assert_eq!(
            body,
            serde_json::json!({"PlaybackPositionTicks": 10, "Played": false,
                               "LastPlayedDate": "2024-05-01T10:00:00Z"})
        );
    }
}
