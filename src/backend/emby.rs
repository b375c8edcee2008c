//! Emby 4.8 (routes of the Emby 4.8.11.0 OpenAPI document). Auth: the token as `api_key` in
//! the query of every request (the spec's security scheme) and as `X-Emby-Token` (the
//! alternative it names). Positions are ticks; `DatePlayed` is `yyyyMMddHHmmss` (UTC).
//! Series ids: like Jellyfin, `GET /Users/{uid}/Items?Ids=…&Fields=ProviderIds` (100 per
//! request) for the shows not cached yet. List parameters are comma lists (`type: string`,
//! "comma delimited" in this spec).
//! Setting a position reads the item's `UserData` first and sends it back whole (every field
//! the server returned, `Played` included) with only the position changed: Emby resets every
//! field absent from the body (played, favourite, rating, play count, ...). The item is read
//! through the listing route with `Fields=…UserDataPlayCount,UserDataLastPlayedDate`: recent
//! Emby leaves `LastPlayedDate` out and answers `PlayCount: 0` unless asked, and the
//! single-item route documents no `Fields`.
//! Unlike Jellyfin's, Emby 4.8's listing has no filter on `LocationType` or missing episodes
//! (no `ExcludeLocationTypes`, `LocationTypes` or `IsMissing` in its spec): none is sent, and
//! the items it answers with `LocationType: Virtual` are left out by the client.
//! `ignore_libraries`: as for Jellyfin (`ParentId` listings, `GET /Items/{Id}/Ancestors`);
//! see `mediabrowser::IgnoredLibraries`.

use super::http::{format_compact_utc, format_rfc3339, item_id as plain_id, HttpCore};
use super::lenient::{from_str_repaired, id_of};
use super::mediabrowser::{
    cache_shows, listed_page, ms_to_ticks, next_cursor, parse_cursor, server_users, to_remote,
    uncached_shows, IgnoredLibraries, ItemDto, ItemsResult, PublicSystemInfo, UserDto,
};
use super::{ClientConfig, SeriesIdCache, SHOW_LOOKUP_BATCH};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use watchstate_actors::backend::{
    BackendApi, BackendError, ItemPage, RemoteItem, ServerIdentity, ServerUser,
};
use watchstate_actors::event::Millis;

/// `UserDataLastPlayedDate`/`UserDataPlayCount` make recent Emby servers include those fields
/// of `UserData` in listings.
const LIST_FIELDS: &str = "ProviderIds,UserDataPlayCount,UserDataLastPlayedDate";
/// The `SortBy` of a listing, as for Jellyfin: a fixed order (creation, then name) so that
/// pages neither overlap nor miss items.
const LIST_SORT: &str = "DateCreated,SortName";

/// Client for one Emby user.
#[derive(Debug)]
pub struct EmbyClient {
    /// Transport with the `X-Emby-Token` header and the `api_key` query parameter.
    http: HttpCore,
    /// The `{UserId}` of every route.
    user_id: String,
    /// Show provider ids already fetched.
    series: SeriesIdCache,
    /// `ignore_libraries`, and the items they hold.
    ignored: IgnoredLibraries,
}

/// The configured server URL with Emby's `/emby` base path, unless it already ends with it.
/// The spec's server URL is `http://emby.media/emby` and Emby's own apps call `/emby/...`;
/// current servers answer most routes without it too, but a server that follows the spec,
/// or a reverse proxy that forwards only `/emby`, need not.
fn under_emby(mut url: url::Url) -> url::Url {
    let ends_with_emby = url
        .path_segments()
        .and_then(|mut s| s.rfind(|seg| !seg.is_empty()))
        .is_some_and(|last| last.eq_ignore_ascii_case("emby"));
    if !ends_with_emby {
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("emby");
        }
    }
    url
}

impl EmbyClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, BackendError> {
        let mut headers = HeaderMap::new();
        let mut token = HeaderValue::from_str(&cfg.token).map_err(|_| BackendError::Client {
            status: 0,
            message: "the Emby token contains characters not allowed in an HTTP header: check the token in the configuration".into(),
        })?;
        token.set_sensitive(true);
        headers.insert(HeaderName::from_static("x-emby-token"), token);
        // Who is calling, as Emby's clients say it (the spec's `embyauth` form, without the
        // token): writes that go through a session (mark played) want a client and device.
        let client = format!(
            "Emby Client=\"watchstate-rs\", Device=\"watchstate-rs\", DeviceId=\"watchstate-rs-{}\", Version=\"{}\"",
            cfg.user_id.replace(['"', '\r', '\n'], ""),
            env!("CARGO_PKG_VERSION"),
        );
        if let Ok(value) = HeaderValue::from_str(&client) {
            headers.insert(HeaderName::from_static("x-emby-authorization"), value);
        }
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        Ok(EmbyClient {
            // The spec's security scheme is `api_key` in the query; the header is the
            // alternative it names. Both are sent, so either reading authenticates.
            http: HttpCore::new(under_emby(cfg.base_url), cfg.timeout, headers, &cfg.token)?
                .with_token_in_query("api_key"),
            user_id: cfg.user_id,
            series: SeriesIdCache::default(),
            ignored: IgnoredLibraries::new(cfg.ignore_libraries),
        })
    }

    fn items_route(&self) -> [&str; 3] {
        ["Users", &self.user_id, "Items"]
    }

    /// One item as Emby sends it (raw), with its provider ids and its whole `UserData`:
    /// `GET /Users/{uid}/Items?Ids={id}&Fields=…&EnableUserData=true` (see the module doc).
    /// `None` when the server does not know it.
    async fn fetch_item(&self, item_id: &str) -> Result<Option<Box<RawValue>>, BackendError> {
        // `Recursive`: the documents scope a query without `ParentId` to the root folder's
        // children unless it is recursive; Emby finds ids anywhere either way.
        let query = [
            ("Ids", plain_id(item_id)?.to_string()),
            ("Recursive", "true".to_string()),
            ("Fields", LIST_FIELDS.to_string()),
            ("EnableUserData", "true".to_string()),
        ];
        let req = self
            .http
            .request(Method::GET, &self.items_route(), &query)?;
        let what = format!("item {item_id}");
        let page: ItemsResult = match self.http.send_json(req, &what).await {
            Ok(page) => page,
            Err(BackendError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        // Only the item asked for: a server that ignored `Ids` would answer others.
        Ok(page
            .items
            .into_iter()
            .find(|raw| id_of(raw, "Id").as_deref() == Some(item_id)))
    }

    /// `GET /Users/{uid}/Items?ParentId={library}&Recursive=true&…`, ids only: the items of
    /// each ignored library.
    async fn list_ignored(&self, page_size: usize) -> Result<(), BackendError> {
        self.ignored
            .list_members(page_size, |lib, start| async move {
                let query = [
                    ("ParentId", lib.clone()),
                    ("Recursive", "true".to_string()),
                    ("IncludeItemTypes", "Movie,Episode".to_string()),
                    ("SortBy", LIST_SORT.to_string()),
                    ("SortOrder", "Ascending".to_string()),
                    ("EnableUserData", "false".to_string()),
                    ("EnableImages", "false".to_string()),
                    ("StartIndex", start.to_string()),
                    ("Limit", page_size.to_string()),
                ];
                let req = self
                    .http
                    .request(Method::GET, &self.items_route(), &query)?;
                self.http
                    .send_json(req, &format!("list ignored library {lib}"))
                    .await
            })
            .await
    }

    /// `GET /Items/{Id}/Ancestors?UserId=`.
    async fn ancestors(&self, id: &str) -> Result<Vec<Box<RawValue>>, BackendError> {
        let id = plain_id(id)?;
        let query = [("UserId", self.user_id.clone())];
        let req = self
            .http
            .request(Method::GET, &["Items", id, "Ancestors"], &query)?;
        self.http
            .send_json(req, &format!("ancestors of {id}"))
            .await
    }

    /// Fills the cache for the shows of `items` that are not in it yet (one request per
    /// [`SHOW_LOOKUP_BATCH`] shows).
    async fn load_series(&self, items: &[ItemDto]) -> Result<(), BackendError> {
        let missing = uncached_shows(items, &self.series);
        for batch in missing.chunks(SHOW_LOOKUP_BATCH) {
            let query = [
                ("Ids", batch.join(",")),
                ("Recursive", "true".to_string()),
                ("Fields", "ProviderIds".to_string()),
            ];
            let req = self
                .http
                .request(Method::GET, &self.items_route(), &query)?;
            let shows: ItemsResult = self.http.send_json(req, "list shows").await?;
            cache_shows(&self.series, batch, shows);
        }
        Ok(())
    }
}

#[async_trait]
impl BackendApi for EmbyClient {
    async fn identity(&self) -> Result<ServerIdentity, BackendError> {
        let req = self
            .http
            .request(Method::GET, &["System", "Info", "Public"], &[])?;
        let info: PublicSystemInfo = self.http.send_json(req, "server identity").await?;
        info.into_identity("Emby")
    }

    /// `GET /Users/Query` (Emby 4.8's documented user list: a query result of `UserDto`).
    async fn users(&self) -> Result<Option<Vec<ServerUser>>, BackendError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Users {
            #[serde(default)]
            items: Option<Vec<UserDto>>,
        }
        let req = self.http.request(Method::GET, &["Users", "Query"], &[])?;
        let users: Users = self.http.send_json(req, "list users").await?;
        Ok(Some(server_users(users.items.unwrap_or_default())))
    }

    async fn list_items(
        &self,
        cursor: Option<&str>,
        page_size: usize,
    ) -> Result<ItemPage, BackendError> {
        let start = parse_cursor(cursor);
        if self.ignored.needs_members(start) {
            self.list_ignored(page_size).await?;
        }
        let query = [
            ("Recursive", "true".to_string()),
            ("IncludeItemTypes", "Movie,Episode".to_string()),
            ("Fields", LIST_FIELDS.to_string()),
            ("SortBy", LIST_SORT.to_string()),
            ("SortOrder", "Ascending".to_string()),
            ("EnableUserData", "true".to_string()),
            ("StartIndex", start.to_string()),
            ("Limit", page_size.to_string()),
        ];
        let req = self
            .http
            .request(Method::GET, &self.items_route(), &query)?;
        let page: ItemsResult = self.http.send_json(req, "list items").await?;
        // The cursor moves past every item of the page, read or skipped.
        let got = page.items.len();
        let (items, skipped) = page.decode_listed("list items");
        self.load_series(&items).await?;
        let next = next_cursor(start, got, page_size, &page);
        Ok(listed_page(
            &self.series,
            &self.ignored,
            items,
            got,
            skipped,
            next,
            page.total(),
        ))
    }

    async fn get_item(&self, item_id: &str) -> Result<Option<RemoteItem>, BackendError> {
        let Some(raw) = self.fetch_item(item_id).await? else {
            return Ok(None);
        };
        let item: ItemDto =
            from_str_repaired(raw.get(), "item").map_err(|e| BackendError::BadResponse {
                message: format!("item {item_id}: the item is not the expected JSON ({e})"),
            })?;
        self.load_series(std::slice::from_ref(&item)).await?;
        let Some(mut remote) = to_remote(&self.series, item) else {
            return Ok(None);
        };
        let id = remote.item_id.clone();
        self.ignored
            .tag_looked_up(&mut remote, self.ancestors(&id))
            .await?;
        Ok(Some(remote))
    }

    async fn set_played(
        &self,
        item_id: &str,
        played: bool,
        at: Option<Millis>,
    ) -> Result<(), BackendError> {
        let route = ["Users", &self.user_id, "PlayedItems", plain_id(item_id)?];
        let req = if played {
            let query: Vec<(&str, String)> = at
                .map(|at| ("DatePlayed", format_compact_utc(at)))
                .into_iter()
                .collect();
            self.http.request(Method::POST, &route, &query)?
        } else {
            self.http.request(Method::DELETE, &route, &[])?
        };
        let what = format!(
            "mark {item_id} {}",
            if played { "played" } else { "unplayed" }
        );
        self.http.send_write(req, &what).await
    }

    async fn set_position(
        &self,
        item_id: &str,
        position_ms: u64,
        _duration_ms: Option<u64>,
        at: Option<Millis>,
    ) -> Result<(), BackendError> {
        let what = format!("set position of {item_id}");
        let Some(raw) = self.fetch_item(item_id).await? else {
            return Err(BackendError::NotFound {
                what: format!("{what}: item {item_id}"),
            });
        };
        /// The part of the item the update sends back.
        #[derive(Deserialize)]
        struct WithUserData {
            #[serde(rename = "UserData")]
            user_data: Option<serde_json::Map<String, serde_json::Value>>,
        }
        // Strict (other fields are skipped unread, so a broken title does not matter): what a
        // repair replaced in the user data must not be written back.
        let item: WithUserData =
            serde_json::from_str(raw.get()).map_err(|e| BackendError::BadResponse {
                message: format!("{what}: the item is not the expected JSON ({e})"),
            })?;
        // Without the current user data the update would reset it: better not to send it.
        let Some(mut body) = item.user_data else {
            return Err(BackendError::BadResponse {
                message: format!(
                    "{what}: Emby sent the item without UserData; not updated, as the update would reset its played state"
                ),
            });
        };
        body.insert(
            "PlaybackPositionTicks".into(),
            ms_to_ticks(position_ms).into(),
        );
        // `Played` always goes with it (DESIGN.md §10): a server that left it out of the
        // item would read its absence in the update as `false` anyway, so it is said.
        if !body.get("Played").is_some_and(|v| v.is_boolean()) {
            body.insert("Played".into(), false.into());
        }
        // When it was reached: Emby orders "Continue Watching" by it.
        if let Some(at) = at {
            body.insert("LastPlayedDate".into(), format_rfc3339(at).into());
        }
        // Derived from the old position; the server computes it.
        body.remove("PlayedPercentage");
        let route = [
            "Users",
            &self.user_id,
            "Items",
            plain_id(item_id)?,
            "UserData",
        ];
        let req = self.http.request(Method::POST, &route, &[])?.json(&body);
        self.http.send_write(req, &what).await
    }
}

#[cfg(test)]
mod tests {
    use super::under_emby;

    #[test]
    fn the_emby_base_path_is_added_once() {
        let cases = [
            ("http://10.0.0.5:8096", "http://10.0.0.5:8096/emby"),
            ("http://10.0.0.5:8096/", "http://10.0.0.5:8096/emby"),
            ("http://10.0.0.5:8096/emby", "http://10.0.0.5:8096/emby"),
            ("http://10.0.0.5:8096/emby/", "http://10.0.0.5:8096/emby/"),
            ("http://10.0.0.5:8096/Emby", "http://10.0.0.5:8096/Emby"),
            ("https://media.example/tv", "https://media.example/tv/emby"),
            (
                "https://media.example/tv/emby",
                "https://media.example/tv/emby",
            ),
            (
                "https://media.example/embyserver",
                "https://media.example/embyserver/emby",
            ),
        ];
        for (configured, used) in cases {
            let url = under_emby(url::Url::parse(configured).unwrap());
            assert_eq!(url.as_str(), used, "{configured}");
        }
    }
}
