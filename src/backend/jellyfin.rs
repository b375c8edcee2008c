//! Jellyfin 10.9+ (routes of the 10.11.11 and 12.0 OpenAPI documents) and 10.8 (10.8.13).
//!
//! 10.9 moved the play-state routes: `/UserPlayedItems/{id}`, `/UserItems/{id}/UserData` and
//! `GET /Items/{id}` (with `userId` in the query) replace 10.8's `/Users/{userId}/PlayedItems/
//! {id}` and `GET /Users/{userId}/Items/{id}`, which are hidden since 10.9 and not to be relied
//! on in 12. The client uses the routes of the server's version (`Routes`): known from
//! `identity`, or else the 10.9 routes are tried first and a 404 or 405 on one of them makes
//! it read the version (`/System/Info/Public`, no auth) once and retry with the 10.8 routes
//! when that is what the server has. 10.8 has no route that sets a resume position
//! (`UserData` updates came with 10.9; its `PlayingItems` reports need a playback session):
//! positions are refused with an error that says so.
//!
//! Auth: `Authorization: MediaBrowser Client=…, Device=…, DeviceId=…, Version=…, Token="…"`
//! (the legacy `X-Emby-Token` is refused by default from 12.0). Positions are ticks.
//! Series ids: the episodes of a page name their show (`SeriesId`); the shows not yet cached
//! are fetched with `GET /Items?ids=…&fields=ProviderIds` (100 per request) and cached.
//!
//! Listings leave out `Virtual` items (`excludeLocationTypes`, in the 10.8 to 12.0 specs): the
//! placeholders of missing episodes, which no other server has.
//!
//! Array query parameters (`includeItemTypes`, `fields`, `sortBy`, `ids`) are sent as one
//! comma list each (`includeItemTypes=Movie,Episode`), as DESIGN.md §10 and the parameters'
//! descriptions in the spec say; Jellyfin also reads repeated keys.
//!
//! `ignore_libraries`: items do not name their library, so a listing first lists the ignored
//! libraries' ids (`GET /Items?parentId=…`) and a looked-up item reads its ancestors
//! (`GET /Items/{id}/Ancestors`); see `mediabrowser::IgnoredLibraries`.

use super::http::{format_rfc3339, item_id as plain_id, HttpCore};
use super::mediabrowser::{
    cache_shows, listed_page, ms_to_ticks, next_cursor, parse_cursor, server_users, to_remote,
    uncached_shows, IgnoredLibraries, ItemDto, ItemsResult, PublicSystemInfo, UserDataUpdate,
    UserDto,
};
use super::{ClientConfig, SeriesIdCache, SHOW_LOOKUP_BATCH};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use serde_json::value::RawValue;
use watchstate_actors::backend::{
    BackendApi, BackendError, ItemPage, RemoteItem, ServerIdentity, ServerUser,
};
use watchstate_actors::event::Millis;

/// The `fields` a listing asks for beyond the defaults.
const LIST_FIELDS: [&str; 1] = ["ProviderIds"];
/// The `includeItemTypes` of a listing.
const LIST_TYPES: [&str; 2] = ["Movie", "Episode"];
/// The `sortBy` of a listing: without an order the database pages through an order that may
/// change between requests (pages overlap or miss items); creation order also puts items
/// added during a listing at its end. `SortName` breaks ties. `sortOrder=Ascending` applies
/// to both.
const LIST_SORT: [&str; 2] = ["DateCreated", "SortName"];

/// The `excludeLocationTypes` of a listing: `Virtual` items are the placeholders Jellyfin keeps
/// for episodes it knows from metadata but has no file of (missing, not yet aired); listed,
/// they would be unplayed items that no other server has. The PHP original sends it too.
const LIST_EXCLUDED_LOCATIONS: [&str; 1] = ["Virtual"];

/// `name=v1,v2…`: an array query parameter as one comma list, as DESIGN.md §10 writes the
/// listing (`includeItemTypes=Movie,Episode&fields=ProviderIds,…`) and as each of these
/// parameters' description in the Jellyfin documents says ("This allows multiple, comma
/// delimited"). Jellyfin reads both this and repeated keys; a server that reads one value
/// per name and splits it on commas reads only this one (with repeated keys it would see
/// `Movie` alone and leave every episode out, without an error).
fn comma_list<'a>(name: &'a str, values: &[&str]) -> [(&'a str, String); 1] {
    [(name, values.join(","))]
}

/// Client for one Jellyfin user.
#[derive(Debug)]
pub struct JellyfinClient {
    /// Transport with the `Authorization` header.
    http: HttpCore,
    /// Every call is made with `userId` = this.
    user_id: String,
    /// Show provider ids already fetched.
    series: SeriesIdCache,
    /// `ignore_libraries`, and the items they hold.
    ignored: IgnoredLibraries,
    /// The routes the server has, once known, and its version when read; `identity` reads
    /// it again, so an upgraded server is followed.
    routes: std::sync::Mutex<Option<(Routes, Option<String>)>>,
}

/// Which play-state routes the server has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routes {
    /// 10.9 and later: `/UserPlayedItems/{id}`, `/UserItems/{id}/UserData`, `GET /Items/{id}`.
    Current,
    /// 10.8 and earlier: `/Users/{userId}/PlayedItems/{id}`, `GET /Users/{userId}/Items/{id}`.
    Legacy,
}

impl Routes {
    /// From `PublicSystemInfo.Version` (`10.8.13`): the 10.8 routes for 10.0 to 10.8 only.
    /// Jellyfin's versions start at 10.0 (it forked Emby 3.5), so a version that does not read
    /// as `major.minor`, or a lower one (`0.0.0`, `1.0.0` from a placeholder), is taken as
    /// current, as is any later one.
    fn of_version(version: Option<&str>) -> Routes {
        let mut parts = version.unwrap_or("").trim().split('.');
        let mut number = || parts.next().and_then(|p| p.parse::<u32>().ok());
        match (number(), number()) {
            (Some(10), Some(minor)) if minor < 9 => Routes::Legacy,
            _ => Routes::Current,
        }
    }
}

impl JellyfinClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, BackendError> {
        let mut headers = HeaderMap::new();
        let auth = format!(
            "MediaBrowser Client=\"watchstate-rs\", Device=\"watchstate-rs\", DeviceId=\"watchstate-rs-{}\", Version=\"{}\", Token=\"{}\"",
            cfg.user_id.replace('"', ""),
            env!("CARGO_PKG_VERSION"),
            cfg.token
        );
        let mut value = HeaderValue::from_str(&auth).map_err(|_| BackendError::Client {
            status: 0,
            message: "the Jellyfin token contains characters not allowed in an HTTP header: check the token in the configuration".into(),
        })?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        Ok(JellyfinClient {
            http: HttpCore::new(cfg.base_url, cfg.timeout, headers, &cfg.token)?,
            user_id: cfg.user_id,
            series: SeriesIdCache::default(),
            ignored: IgnoredLibraries::new(cfg.ignore_libraries),
            routes: std::sync::Mutex::new(None),
        })
    }

    /// `GET /System/Info/Public`; notes the routes of the version it names.
    async fn public_info(&self) -> Result<PublicSystemInfo, BackendError> {
        let req = self
            .http
            .request(Method::GET, &["System", "Info", "Public"], &[])?;
        let info: PublicSystemInfo = self.http.send_json(req, "server identity").await?;
        let routes = Routes::of_version(info.version.as_deref());
        let mut known = self.lock_routes();
        if known.as_ref().map(|(r, _)| *r) != Some(routes) {
            tracing::info!(
                version = info.version.as_deref().unwrap_or("unknown"),
                legacy_routes = routes == Routes::Legacy,
                "Jellyfin version read"
            );
        }
        *known = Some((routes, info.version.clone()));
        Ok(info)
    }

    /// Runs `call` with the routes the server has (see the module doc): when they are not
    /// known yet, with the 10.9 routes first, and after a 404 or 405 on those, once the
    /// version is read, with the 10.8 routes if the server is that old.
    async fn with_routes<T, F, Fut>(&self, call: F) -> Result<T, BackendError>
    where
        F: Fn(Routes) -> Fut,
        Fut: std::future::Future<Output = Result<T, BackendError>>,
    {
        let known = self.lock_routes().as_ref().map(|(r, _)| *r);
        if let Some(routes) = known {
            return call(routes).await;
        }
        match call(Routes::Current).await {
            Err(e)
                if matches!(
                    e,
                    BackendError::NotFound { .. } | BackendError::Client { status: 405, .. }
                ) =>
            {
                match self.public_info().await?.version {
                    v if Routes::of_version(v.as_deref()) == Routes::Legacy => {
                        call(Routes::Legacy).await
                    }
                    _ => Err(e),
                }
            }
            Ok(v) => {
                self.lock_routes().get_or_insert((Routes::Current, None));
                Ok(v)
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /Items/{id}?userId=` (10.9+) or `GET /Users/{userId}/Items/{id}` (10.8).
    async fn fetch_item(&self, routes: Routes, id: &str) -> Result<ItemDto, BackendError> {
        let req = match routes {
            Routes::Current => self
                .http
                .request(Method::GET, &["Items", id], &[self.user()])?,
            Routes::Legacy => {
                let route = ["Users", &self.user_id, "Items", id];
                self.http.request(Method::GET, &route, &[])?
            }
        };
        self.http.send_json(req, &format!("item {id}")).await
    }

    /// `POST|DELETE /UserPlayedItems/{id}?userId=` (10.9+) or
    /// `/Users/{userId}/PlayedItems/{id}` (10.8), with `datePlayed` when marking played.
    async fn mark(
        &self,
        routes: Routes,
        id: &str,
        played: bool,
        at: Option<Millis>,
    ) -> Result<(), BackendError> {
        let (route, mut query) = match routes {
            Routes::Current => (vec!["UserPlayedItems", id], vec![self.user()]),
            Routes::Legacy => (vec!["Users", &self.user_id, "PlayedItems", id], Vec::new()),
        };
        let method = if played {
            if let Some(at) = at {
                query.push(("datePlayed", format_rfc3339(at)));
            }
            Method::POST
        } else {
            Method::DELETE
        };
        let req = self.http.request(method, &route, &query)?;
        let what = format!("mark {id} {}", if played { "played" } else { "unplayed" });
        self.http.send_write(req, &what).await
    }

    /// `POST /UserItems/{id}/UserData?userId=` with only the position (10.9+; 10.8 has no
    /// such route: an error that says so, nothing sent).
    async fn put_position(
        &self,
        routes: Routes,
        id: &str,
        position_ms: u64,
        at: Option<Millis>,
    ) -> Result<(), BackendError> {
        let what = format!("set position of {id}");
        if routes == Routes::Legacy {
            return Err(BackendError::Client {
                status: 0,
                message: format!(
                    "{what}: Jellyfin {} has no API to set a resume position (POST /UserItems/{{id}}/UserData came with 10.9); upgrade Jellyfin to sync positions to it",
                    self.version().as_deref().unwrap_or("before 10.9")
                ),
            });
        }
        // Only the position and when it was reached: every other field is left as it is
        // (`UpdateUserItemDataDto`), so a position push never unmarks an item played
        // meanwhile. The date orders "Continue Watching" (most recently played first).
        let body = UserDataUpdate {
            playback_position_ticks: ms_to_ticks(position_ms),
            last_played_date: at.map(format_rfc3339),
            ..Default::default()
        };
        let req = self
            .http
            .request(Method::POST, &["UserItems", id, "UserData"], &[self.user()])?
            .json(&body);
        self.http.send_write(req, &what).await
    }

    /// The server's version when it has been read (for messages).
    fn version(&self) -> Option<String> {
        self.lock_routes().as_ref().and_then(|(_, v)| v.clone())
    }

    fn lock_routes(&self) -> std::sync::MutexGuard<'_, Option<(Routes, Option<String>)>> {
        // A panic while holding this lock cannot leave the value inconsistent.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn user(&self) -> (&'static str, String) {
        ("userId", self.user_id.clone())
    }

    /// `GET /Items?parentId={library}&recursive=true&…`, ids only: the items of each ignored
    /// library (`parentId` and the route are the same in 10.8).
    async fn list_ignored(&self, page_size: usize) -> Result<(), BackendError> {
        self.ignored
            .list_members(page_size, |lib, start| async move {
                let mut query = vec![
                    self.user(),
                    ("parentId", lib.clone()),
                    ("recursive", "true".to_string()),
                ];
                query.extend(comma_list("includeItemTypes", &LIST_TYPES));
                query.extend(comma_list("excludeLocationTypes", &LIST_EXCLUDED_LOCATIONS));
                query.extend(comma_list("sortBy", &LIST_SORT));
                query.extend([
                    ("sortOrder", "Ascending".to_string()),
                    ("enableUserData", "false".to_string()),
                    ("enableImages", "false".to_string()),
                    ("startIndex", start.to_string()),
                    ("limit", page_size.to_string()),
                ]);
                let req = self.http.request(Method::GET, &["Items"], &query)?;
                self.http
                    .send_json(req, &format!("list ignored library {lib}"))
                    .await
            })
            .await
    }

    /// `GET /Items/{id}/Ancestors?userId=` (the same route in 10.8).
    async fn ancestors(&self, id: &str) -> Result<Vec<Box<RawValue>>, BackendError> {
        let id = plain_id(id)?;
        let req = self
            .http
            .request(Method::GET, &["Items", id, "Ancestors"], &[self.user()])?;
        self.http
            .send_json(req, &format!("ancestors of {id}"))
            .await
    }

    /// Fills the cache for the shows of `items` that are not in it yet (one request per
    /// [`SHOW_LOOKUP_BATCH`] shows).
    async fn load_series(&self, items: &[ItemDto]) -> Result<(), BackendError> {
        let missing = uncached_shows(items, &self.series);
        for batch in missing.chunks(SHOW_LOOKUP_BATCH) {
            // `recursive`: without `parentId` the documents scope a query to the root folder's
            // children unless it is recursive; Jellyfin finds ids anywhere either way.
            let mut query = vec![self.user(), ("recursive", "true".to_string())];
            query.extend(comma_list("ids", batch));
            query.extend(comma_list("fields", &LIST_FIELDS));
            let req = self.http.request(Method::GET, &["Items"], &query)?;
            let shows: ItemsResult = self.http.send_json(req, "list shows").await?;
            cache_shows(&self.series, batch, shows);
        }
        Ok(())
    }
}

#[async_trait]
impl BackendApi for JellyfinClient {
    async fn identity(&self) -> Result<ServerIdentity, BackendError> {
        self.public_info().await?.into_identity("Jellyfin")
    }

    /// `GET /Users` (an API key may read it; a user's own token gets 403).
    async fn users(&self) -> Result<Option<Vec<ServerUser>>, BackendError> {
        let req = self.http.request(Method::GET, &["Users"], &[])?;
        let users: Vec<UserDto> = self.http.send_json(req, "list users").await?;
        Ok(Some(server_users(users)))
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
        let mut query = vec![self.user(), ("recursive", "true".to_string())];
        query.extend(comma_list("includeItemTypes", &LIST_TYPES));
        query.extend(comma_list("excludeLocationTypes", &LIST_EXCLUDED_LOCATIONS));
        query.extend(comma_list("fields", &LIST_FIELDS));
        query.extend(comma_list("sortBy", &LIST_SORT));
        query.extend([
            ("sortOrder", "Ascending".to_string()),
            ("enableUserData", "true".to_string()),
            ("startIndex", start.to_string()),
            ("limit", page_size.to_string()),
        ]);
        let req = self.http.request(Method::GET, &["Items"], &query)?;
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
        let id = plain_id(item_id)?;
        let item = match self.with_routes(|r| self.fetch_item(r, id)).await {
            Ok(item) => item,
            Err(BackendError::NotFound { .. }) => return Ok(None),
            // Item ids are `format: uuid` in the spec: a server that checks the format answers
            // 400 to an id that is not one (a webhook's id of another server), which no item
            // has. Only here, and only for such an id: a 400 to a GUID (a wrong user id, say),
            // to a listing or to a write stays an error.
            Err(BackendError::Client {
                status: 400,
                message,
            }) if !watchstate_actors::event::is_guid(id) => {
                tracing::debug!(
                    item = id,
                    answer = %message,
                    "Jellyfin refused the item id (400): taken as no such item"
                );
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
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
        let id = plain_id(item_id)?;
        self.with_routes(|r| self.mark(r, id, played, at)).await
    }

    /// Not on a server known to be older than 10.9 (its version is read by every sync's
    /// identity check, or by the first call that needed the old routes).
    fn accepts_positions(&self) -> bool {
        !matches!(self.lock_routes().as_ref(), Some((Routes::Legacy, _)))
    }

    async fn set_position(
        &self,
        item_id: &str,
        position_ms: u64,
        _duration_ms: Option<u64>,
        at: Option<Millis>,
    ) -> Result<(), BackendError> {
        let id = plain_id(item_id)?;
        self.with_routes(|r| self.put_position(r, id, position_ms, at))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_before_10_9_use_the_legacy_routes() {
        for (version, routes) in [
            (Some("10.8.13"), Routes::Legacy),
            (Some("10.7.7"), Routes::Legacy),
            (Some("10.9.0"), Routes::Current),
            (Some("10.11.11"), Routes::Current),
            (Some("12.0.0"), Routes::Current),
            (Some("10.0.0"), Routes::Legacy),
            (Some("unstable"), Routes::Current),
            (Some("0.0.0"), Routes::Current),
            (Some("1.0.0"), Routes::Current),
            (None, Routes::Current),
        ] {
            assert_eq!(Routes::of_version(version), routes, "{version:?}");
        }
    }
}
