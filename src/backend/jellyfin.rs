//! Jellyfin 10.9+ (routes of the 10.11.11 and 12.0 OpenAPI documents; the legacy
//! `/Users/{userId}/...` play-state routes are hidden since 10.9 and not used).
//!
//! Auth: `Authorization: MediaBrowser Client=…, Device=…, DeviceId=…, Version=…, Token="…"`
//! (the legacy `X-Emby-Token` is refused by default from 12.0). Positions are ticks.
//! Series ids: the episodes of a page name their show (`SeriesId`); the shows not yet cached
//! are fetched with `GET /Items?ids=…&fields=ProviderIds` (100 per request) and cached.
//!
//! Array query parameters (`includeItemTypes`, `fields`, `ids`) are `type: array` with the
//! default `form`/`explode=true` style in the spec, so they are sent as repeated keys
//! (`includeItemTypes=Movie&includeItemTypes=Episode`); Jellyfin also reads comma lists.

use super::http::{format_rfc3339, item_id as plain_id, HttpCore};
use super::mediabrowser::{
    cache_shows, ms_to_ticks, next_cursor, parse_cursor, to_remote, uncached_shows, ItemDto,
    ItemsResult, PublicSystemInfo, UserDataUpdate,
};
use super::{ClientConfig, SeriesIdCache, SHOW_LOOKUP_BATCH};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION};
use reqwest::Method;
use watchstate_actors::backend::{BackendApi, BackendError, ItemPage, RemoteItem, ServerIdentity};
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

/// `name=v1&name=v2…`: an array query parameter in the spec's (default, exploded) style.
fn repeated<'a>(name: &'a str, values: &[&str]) -> Vec<(&'a str, String)> {
    values.iter().map(|v| (name, v.to_string())).collect()
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
        })
    }

    fn user(&self) -> (&'static str, String) {
        ("userId", self.user_id.clone())
    }

    /// Fills the cache for the shows of `items` that are not in it yet (one request per
    /// [`SHOW_LOOKUP_BATCH`] shows).
    async fn load_series(&self, items: &[ItemDto]) -> Result<(), BackendError> {
        let missing = uncached_shows(items, &self.series);
        for batch in missing.chunks(SHOW_LOOKUP_BATCH) {
            let mut query = vec![self.user()];
            query.extend(repeated("ids", batch));
            query.extend(repeated("fields", &LIST_FIELDS));
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
        let req = self
            .http
            .request(Method::GET, &["System", "Info", "Public"], &[])?;
        let info: PublicSystemInfo = self.http.send_json(req, "server identity").await?;
        info.into_identity("Jellyfin")
    }

    async fn list_items(
        &self,
        cursor: Option<&str>,
        page_size: usize,
    ) -> Result<ItemPage, BackendError> {
        let start = parse_cursor(cursor);
        let mut query = vec![self.user(), ("recursive", "true".to_string())];
        query.extend(repeated("includeItemTypes", &LIST_TYPES));
        query.extend(repeated("fields", &LIST_FIELDS));
        query.extend(repeated("sortBy", &LIST_SORT));
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
        let (items, skipped) = page.decode("list items");
        self.load_series(&items).await?;
        let next = next_cursor(start, got, page_size, page.total());
        let items = items
            .into_iter()
            .filter_map(|i| to_remote(&self.series, i))
            .collect();
        Ok(ItemPage {
            items,
            next,
            total: page.total(),
            skipped,
        })
    }

    async fn get_item(&self, item_id: &str) -> Result<Option<RemoteItem>, BackendError> {
        let id = plain_id(item_id)?;
        let req = self
            .http
            .request(Method::GET, &["Items", id], &[self.user()])?;
        let item: ItemDto = match self.http.send_json(req, &format!("item {item_id}")).await {
            Ok(item) => item,
            Err(BackendError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.load_series(std::slice::from_ref(&item)).await?;
        Ok(to_remote(&self.series, item))
    }

    async fn set_played(
        &self,
        item_id: &str,
        played: bool,
        at: Option<Millis>,
    ) -> Result<(), BackendError> {
        let route = ["UserPlayedItems", plain_id(item_id)?];
        let req = if played {
            let mut query = vec![self.user()];
            if let Some(at) = at {
                query.push(("datePlayed", format_rfc3339(at)));
            }
            self.http.request(Method::POST, &route, &query)?
        } else {
            self.http.request(Method::DELETE, &route, &[self.user()])?
        };
        let what = format!(
            "mark {item_id} {}",
            if played { "played" } else { "unplayed" }
        );
        self.http.send(req, &what).await.map(drop)
    }

    async fn set_position(
        &self,
        item_id: &str,
        position_ms: u64,
        _duration_ms: Option<u64>,
    ) -> Result<(), BackendError> {
        let route = ["UserItems", plain_id(item_id)?, "UserData"];
        // Only the position: every other field is left as it is (`UpdateUserItemDataDto`),
        // so a position push never unmarks an item played meanwhile.
        let body = UserDataUpdate {
            playback_position_ticks: ms_to_ticks(position_ms),
            ..Default::default()
        };
        let req = self
            .http
            .request(Method::POST, &route, &[self.user()])?
            .json(&body);
        self.http
            .send(req, &format!("set position of {item_id}"))
            .await
            .map(drop)
    }
}
