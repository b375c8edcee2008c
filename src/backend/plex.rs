//! Plex Media Server (routes of the community OpenAPI document, LukeHagar 1.1.1).
//!
//! Auth: `X-Plex-Token` as a header (never in the URL), `X-Plex-Client-Identifier` (one per
//! configured backend) and `Accept: application/json` (Plex answers XML otherwise). Positions
//! and durations are ms, `lastViewedAt` is unix seconds.
//!
//! Listing walks the movie and show sections of `/library/sections/all` in order: `type=1`
//! (movies) in movie sections, `type=4` (episodes) in show sections, with `includeGuids=1`,
//! `sort=addedAt` (the spec's `mediaQuery` sort: a fixed order, so that pages neither overlap
//! nor miss items as items are added) and `X-Plex-Container-Start`/`-Size`. Items added in the
//! same second tie; Plex documents no tie-break field for it (the spec lists none, `ratingKey`
//! is reported to be refused with a 500, and an unknown sort field is answered with an error,
//! which would stop every listing), so none is sent: ties keep the database's order from page
//! to page as long as the section does not change during the walk. A section's size is `totalSize`, or
//! the `X-Plex-Container-Total-Size` header when the body has none. The cursor is
//! `<section key>:<offset>`.
//!
//! Ids: `Guid[]` (`imdb://…`, `tmdb://…`, `tvdb://…`) and the item's `guid` when it is a legacy
//! agent guid (`com.plexapp.agents.imdb://tt…?lang=en`). An episode's legacy guid
//! (`com.plexapp.agents.thetvdb://<show>/<season>/<episode>`) names the show: it gives series
//! ids. Otherwise series ids come from the show (`grandparentRatingKey`): the page's uncached
//! shows are fetched with `GET /library/metadata/{k1,k2,…}` (100 per request) and cached.

use super::http::{item_id as plain_id, HttpCore};
use super::lenient::{decode_each, opt_number, opt_string_or_number, string_or_number};
use super::{provider_key, ClientConfig, SeriesIdCache, SHOW_LOOKUP_BATCH};
use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT};
use reqwest::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Mutex;
use watchstate_actors::backend::{BackendApi, BackendError, ItemPage, RemoteItem, ServerIdentity};
use watchstate_actors::event::{ExternalIds, ItemType, Millis};

/// `identifier` of the library provider for scrobble/unscrobble and timeline reports.
const LIBRARY_IDENTIFIER: &str = "com.plexapp.plugins.library";
/// Sent as `X-Plex-Product`, and the start of `X-Plex-Client-Identifier` ([`client_identifier`]):
/// Plex wants every client named.
const CLIENT_NAME: &str = "watchstate-rs";

/// `X-Plex-Client-Identifier` of one configured backend: `watchstate-rs-` and 12 hex digits of
/// a hash of its URL, user id and token, so that two users, or two installs, never report
/// under one client (Plex keeps a playback session per client identifier), and one backend
/// keeps its identifier across restarts. Only the hash leaves the process, never the token;
/// a new token gives a new identifier.
fn client_identifier(cfg: &ClientConfig) -> String {
    // FNV-1a over the length-prefixed fields, then the murmur3 finaliser to spread the bits:
    // fixed by this code, unlike std's hasher, whose output may change between Rust releases.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for field in [cfg.base_url.as_str(), &cfg.user_id, &cfg.token] {
        let len = (field.len() as u64).to_le_bytes();
        for b in len.iter().chain(field.as_bytes()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    format!("{CLIENT_NAME}-{:012x}", h >> 16)
}

/// Client for one Plex account (the token's).
#[derive(Debug)]
pub struct PlexClient {
    /// Transport with the `X-Plex-*` headers.
    http: HttpCore,
    /// Movie and show sections of the current listing, so that each page costs one request.
    sections: Mutex<Option<Vec<Section>>>,
    /// Show provider ids already fetched.
    series: SeriesIdCache,
}

/// Every Plex answer is wrapped in `MediaContainer`.
#[derive(Debug, Deserialize)]
struct Container<T> {
    #[serde(rename = "MediaContainer")]
    media_container: T,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityContainer {
    /// Not required by the spec: its absence is an error of its own.
    machine_identifier: Option<String>,
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
struct SectionsContainer {
    /// Raw: each section is read on its own, so that one odd section does not hide the rest.
    #[serde(rename = "Directory", default)]
    directory: Vec<Box<RawValue>>,
}

/// A `LibrarySection` of `/library/sections/all` as served.
#[derive(Debug, Deserialize)]
struct SectionEntry {
    /// Not required by the spec; a section without it cannot be addressed.
    #[serde(default, deserialize_with = "opt_string_or_number")]
    key: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    title: Option<String>,
}

/// A movie or show section the listing walks.
#[derive(Debug, Clone)]
struct Section {
    /// The section id used in paths and cursors.
    key: String,
    /// `movie` or `show`.
    kind: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataContainer {
    /// Raw: read item by item by [`decode_metadata`].
    #[serde(rename = "Metadata", default)]
    metadata: Vec<Box<RawValue>>,
    /// Items in the whole section: tells when the section is exhausted.
    #[serde(default, deserialize_with = "opt_number")]
    total_size: Option<i64>,
    /// Where the page starts, as the server says (also in `X-Plex-Container-Start`).
    #[serde(default, deserialize_with = "opt_number")]
    offset: Option<i64>,
    /// Hoisted from the items when they all share it; on `/library/metadata/{id}` the section
    /// of an item that lacks its own (the spec's `Metadata` has no such field).
    #[serde(
        rename = "librarySectionID",
        default,
        deserialize_with = "opt_string_or_number"
    )]
    library_section_id: Option<String>,
}

/// The fields of a Plex `Metadata` item the sync reads.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlexItem {
    /// Not required by the spec's `Metadata`: when absent it is read from `key`
    /// ([`decode_metadata`] drops items that have neither).
    #[serde(default, deserialize_with = "opt_string_or_number")]
    rating_key: Option<String>,
    /// `/library/metadata/{ratingKey}` (required by the spec).
    key: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    title: Option<String>,
    /// `plex://…` for modern agents, `com.plexapp.agents.…` for legacy ones.
    guid: Option<String>,
    #[serde(rename = "Guid", default)]
    guids: Vec<GuidTag>,
    #[serde(default, deserialize_with = "opt_number")]
    year: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    duration: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    view_count: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    view_offset: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    last_viewed_at: Option<i64>,
    grandparent_title: Option<String>,
    #[serde(default, deserialize_with = "opt_string_or_number")]
    grandparent_rating_key: Option<String>,
    grandparent_guid: Option<String>,
    #[serde(default, deserialize_with = "opt_number")]
    parent_index: Option<i64>,
    #[serde(default, deserialize_with = "opt_number")]
    index: Option<i64>,
    #[serde(
        rename = "librarySectionID",
        default,
        deserialize_with = "opt_string_or_number"
    )]
    library_section_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct GuidTag {
    #[serde(deserialize_with = "string_or_number")]
    id: String,
}

/// The items of a `MediaContainer` that decode and have a ratingKey (their own, or the one in
/// `key`), and how many did not (skipped and logged).
fn decode_metadata(c: &MetadataContainer, what: &str) -> (Vec<PlexItem>, u64) {
    let (decoded, mut skipped) = decode_each::<PlexItem>(&c.metadata, "ratingKey", what);
    let mut items = Vec::with_capacity(decoded.len());
    for mut item in decoded {
        if item.rating_key.as_deref().is_none_or(str::is_empty) {
            item.rating_key = item
                .key
                .as_deref()
                .and_then(|k| k.strip_prefix("/library/metadata/"))
                .and_then(|rest| rest.split('/').next())
                .filter(|rk| !rk.is_empty())
                .map(str::to_string);
        }
        if item.rating_key.is_some() {
            items.push(item);
        } else {
            skipped += 1;
            tracing::warn!(
                title = item.title.as_deref().unwrap_or("unknown"),
                "{what}: skipped an item with neither ratingKey nor a /library/metadata/ key"
            );
        }
    }
    (items, skipped)
}

/// What one guid string says: the item's own id, or (legacy episode guids) the show's.
#[derive(Debug, PartialEq, Eq)]
enum GuidMeaning {
    Item(&'static str, String),
    Series(&'static str, String),
    Nothing,
}

/// Parses a Plex guid: `imdb://tt1`, `tmdb://2`, `tvdb://3`, legacy agents
/// (`com.plexapp.agents.thetvdb://123/1/2?lang=en`, `…themoviedb://…`, `…xbmcnfo…`, `…hama://anidb-1`)
/// and NFO agents (`tv.plex.agents.nfo.movie://movie/imdb_tt1`). `plex://`, `local://` and
/// `none` agents carry no external id.
fn parse_guid(guid: &str) -> GuidMeaning {
    let Some((scheme, rest)) = guid.split_once("://") else {
        return GuidMeaning::Nothing;
    };
    let scheme = scheme.to_ascii_lowercase();
    let value = rest.split('?').next().unwrap_or("").trim();
    if value.is_empty() {
        return GuidMeaning::Nothing;
    }
    if let Some(agent) = scheme.strip_prefix("com.plexapp.agents.") {
        let (agent, value) = match agent {
            "hama" => match parse_hama(value) {
                Some(pair) => pair,
                None => return GuidMeaning::Nothing,
            },
            "xbmcnfo" if value.starts_with("tt") => ("imdb", value.to_string()),
            "xbmcnfo" => ("tmdb", value.to_string()),
            "xbmcnfotv" => ("tvdb", value.to_string()),
            other => match provider_key(other) {
                Some(key) => (key, value.to_string()),
                None => return GuidMeaning::Nothing,
            },
        };
        // `<show>/<season>/<episode>`: relative to the show, so it identifies the show.
        return match value.split_once('/') {
            Some((show, _)) if !show.is_empty() => GuidMeaning::Series(agent, show.to_string()),
            Some(_) => GuidMeaning::Nothing,
            None => GuidMeaning::Item(agent, value),
        };
    }
    if scheme.starts_with("tv.plex.agents.nfo") {
        let last = value.rsplit('/').next().unwrap_or("");
        return match last.split_once('_') {
            Some((source, id)) if !id.is_empty() => match provider_key(source) {
                Some(key) => GuidMeaning::Item(key, id.to_string()),
                None => GuidMeaning::Nothing,
            },
            _ => GuidMeaning::Nothing,
        };
    }
    match provider_key(&scheme) {
        Some(key) if !value.contains('/') => GuidMeaning::Item(key, value.to_string()),
        _ => GuidMeaning::Nothing,
    }
}

/// `anidb-123`, `tvdb2-456`, `tsdb-7` (the HAMA agent's ids).
fn parse_hama(value: &str) -> Option<(&'static str, String)> {
    let (source, id) = value.split_once('-')?;
    let source = source.trim_end_matches(|c: char| c.is_ascii_digit());
    let key = match source {
        "anidb" => "anidb",
        "tvdb" => "tvdb",
        "tmdb" | "tsdb" => "tmdb",
        "imdb" => "imdb",
        _ => return None,
    };
    // Any `/<season>/<episode>` tail is kept: the caller decides item or show from it.
    (!id.is_empty()).then(|| (key, id.to_string()))
}

impl PlexItem {
    fn item_type(&self) -> Option<ItemType> {
        match self.kind.as_deref() {
            Some("movie") => Some(ItemType::Movie),
            Some("episode") => Some(ItemType::Episode),
            _ => None,
        }
    }

    /// (own ids, series ids found in the guids themselves).
    fn ids(&self) -> (ExternalIds, ExternalIds) {
        let mut own = ExternalIds::new();
        let mut series = ExternalIds::new();
        let all = self
            .guids
            .iter()
            .map(|g| g.id.as_str())
            .chain(self.guid.as_deref());
        for guid in all {
            match parse_guid(guid) {
                GuidMeaning::Item(k, v) => {
                    own.entry(k.to_string()).or_insert(v);
                }
                GuidMeaning::Series(k, v) => {
                    series.entry(k.to_string()).or_insert(v);
                }
                GuidMeaning::Nothing => {}
            }
        }
        if let Some(GuidMeaning::Item(k, v)) = self.grandparent_guid.as_deref().map(parse_guid) {
            series.entry(k.to_string()).or_insert(v);
        }
        (own, series)
    }

    /// The show to fetch for series ids, when the guids did not already give them.
    fn show_to_fetch(&self) -> Option<&str> {
        if self.item_type() != Some(ItemType::Episode) || !self.ids().1.is_empty() {
            return None;
        }
        self.grandparent_rating_key
            .as_deref()
            .filter(|k| !k.is_empty())
    }

    /// The ratingKey ([`decode_metadata`] keeps only items that have one).
    fn rating_key(&self) -> &str {
        self.rating_key.as_deref().unwrap_or_default()
    }

    fn into_remote(
        self,
        show_ids: Option<ExternalIds>,
        library: Option<&str>,
    ) -> Option<RemoteItem> {
        let item_type = self.item_type()?;
        let (own, mut series) = self.ids();
        let episode = item_type == ItemType::Episode;
        if episode && series.is_empty() {
            series = show_ids.unwrap_or_default();
        }
        let number = |n: Option<i64>| n.and_then(|n| u32::try_from(n).ok());
        let positive = |n: Option<i64>| n.filter(|n| *n > 0).map(|n| n as u64);
        Some(RemoteItem {
            item_id: self.rating_key.unwrap_or_default(),
            item_type,
            title: self.title,
            series_title: if episode {
                self.grandparent_title
            } else {
                None
            },
            year: number(self.year),
            season: if episode {
                number(self.parent_index)
            } else {
                None
            },
            episode: if episode { number(self.index) } else { None },
            external_ids: own,
            series_external_ids: if episode { series } else { ExternalIds::new() },
            // Plex leaves `viewCount` out of an item never played: its state is always known.
            played: self.view_count.unwrap_or(0) > 0,
            state_unknown: false,
            last_played_at: self
                .last_viewed_at
                .filter(|s| *s > 0)
                .map(|s| s.saturating_mul(1000) as Millis),
            position_ms: positive(self.view_offset).unwrap_or(0),
            duration_ms: positive(self.duration),
            library_id: self.library_section_id.or(library.map(str::to_string)),
        })
    }
}

impl PlexClient {
    pub fn new(cfg: ClientConfig) -> Result<Self, BackendError> {
        let mut headers = HeaderMap::new();
        let mut token = HeaderValue::from_str(&cfg.token).map_err(|_| BackendError::Client {
            status: 0,
            message: "the Plex token contains characters not allowed in an HTTP header: check the token in the configuration".into(),
        })?;
        token.set_sensitive(true);
        headers.insert(HeaderName::from_static("x-plex-token"), token);
        // Letters, digits and `-`: always a valid header value.
        let client_id = HeaderValue::from_str(&client_identifier(&cfg))
            .unwrap_or_else(|_| HeaderValue::from_static(CLIENT_NAME));
        headers.insert(
            HeaderName::from_static("x-plex-client-identifier"),
            client_id,
        );
        headers.insert(
            HeaderName::from_static("x-plex-product"),
            HeaderValue::from_static(CLIENT_NAME),
        );
        headers.insert(
            HeaderName::from_static("x-plex-version"),
            HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        // The community spec names this header parameter `accepts` (default XML); real Plex
        // reads `Accept`. Both are sent so that either reading answers JSON.
        headers.insert(
            HeaderName::from_static("accepts"),
            HeaderValue::from_static("application/json"),
        );
        Ok(PlexClient {
            http: HttpCore::new(cfg.base_url, cfg.timeout, headers, &cfg.token)?,
            sections: Mutex::new(None),
            series: SeriesIdCache::default(),
        })
    }

    /// Movie and show sections, from the cache unless `reload`.
    async fn sections(&self, reload: bool) -> Result<Vec<Section>, BackendError> {
        if !reload {
            if let Some(s) = self.lock_sections().clone() {
                return Ok(s);
            }
        }
        let req = self
            .http
            .request(Method::GET, &["library", "sections", "all"], &[])?;
        let all: Container<SectionsContainer> =
            self.http.send_json(req, "library sections").await?;
        let (entries, _) =
            decode_each::<SectionEntry>(&all.media_container.directory, "key", "library sections");
        let sections: Vec<Section> = entries
            .into_iter()
            .filter(|s| s.kind == "movie" || s.kind == "show")
            .filter_map(|s| match s.key.filter(|k| !k.is_empty()) {
                Some(key) => Some(Section { key, kind: s.kind }),
                None => {
                    tracing::warn!(
                        section = s.title.as_deref().unwrap_or("unknown"),
                        "a Plex library section has no key: it cannot be listed and is skipped"
                    );
                    None
                }
            })
            .collect();
        *self.lock_sections() = Some(sections.clone());
        Ok(sections)
    }

    /// Movies and episodes in these sections, by count-only requests
    /// (`X-Plex-Container-Size=0` answers `totalSize` and no items); `None` when a section
    /// does not say.
    async fn total_of(&self, sections: &[Section]) -> Result<Option<u64>, BackendError> {
        let mut total = 0u64;
        for section in sections {
            let kind = if section.kind == "movie" { "1" } else { "4" };
            let route = ["library", "sections", &section.key, "all"];
            let query = [
                ("type", kind.to_string()),
                ("X-Plex-Container-Start", "0".to_string()),
                ("X-Plex-Container-Size", "0".to_string()),
            ];
            let req = self.http.request(Method::GET, &route, &query)?;
            let what = format!("size of section {}", section.key);
            let c = self.section_page(req, &what).await?;
            match c.total_size {
                Some(n) => total += n.max(0) as u64,
                None => return Ok(None),
            }
        }
        Ok(Some(total))
    }

    /// A page of a section listing. `totalSize` and `offset` are not required in the body: the
    /// spec says they are also given in the `X-Plex-Container-Total-Size` and
    /// `X-Plex-Container-Start` headers, read when they are not.
    async fn section_page(
        &self,
        req: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<MetadataContainer, BackendError> {
        let (c, headers): (Container<MetadataContainer>, _) =
            self.http.send_json_with_headers(req, what).await?;
        let mut page = c.media_container;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse().ok())
        };
        if page.total_size.is_none() {
            page.total_size = header("x-plex-container-total-size");
        }
        if page.offset.is_none() {
            page.offset = header("x-plex-container-start");
        }
        Ok(page)
    }

    fn lock_sections(&self) -> std::sync::MutexGuard<'_, Option<Vec<Section>>> {
        self.sections.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn metadata(&self, keys: &str, what: &str) -> Result<MetadataContainer, BackendError> {
        let query = [("includeGuids", "1".to_string())];
        let req = self
            .http
            .request(Method::GET, &["library", "metadata", keys], &query)?;
        let c: Container<MetadataContainer> = self.http.send_json(req, what).await?;
        Ok(c.media_container)
    }

    /// Fetches and caches the ids of the shows these episodes need (one request per
    /// [`SHOW_LOOKUP_BATCH`] shows).
    async fn load_shows(&self, items: &[PlexItem]) -> Result<(), BackendError> {
        let mut missing: Vec<&str> = items
            .iter()
            .filter_map(PlexItem::show_to_fetch)
            .filter(|k| self.series.get(k).is_none())
            .collect();
        missing.sort_unstable();
        missing.dedup();
        for batch in missing.chunks(SHOW_LOOKUP_BATCH) {
            self.load_show_batch(batch).await?;
        }
        Ok(())
    }

    /// Fetches (in one request, more if the server answers only part of it) and caches the
    /// ids of these shows.
    async fn load_show_batch(&self, missing: &[&str]) -> Result<(), BackendError> {
        let mut found: std::collections::HashMap<String, ExternalIds> =
            std::collections::HashMap::new();
        let mut left: Vec<&str> = missing.to_vec();
        // A server may page the answer (the spec gives 50 as the default container size) and
        // say so only by what is missing: the shows left out are asked again, for as long as
        // that brings more of them. A show that never comes was deleted meanwhile.
        while !left.is_empty() {
            let before = found.len();
            for show in self.fetch_shows(&left).await? {
                found.insert(show.rating_key().to_string(), show.ids().0);
            }
            left.retain(|k| !found.contains_key(*k));
            if found.len() == before {
                break;
            }
        }
        for key in missing {
            let ids = found.remove(*key).unwrap_or_default();
            self.series.insert(key.to_string(), ids);
        }
        Ok(())
    }

    /// The shows of one lookup request; those the server does not have are left out.
    async fn fetch_shows(&self, keys: &[&str]) -> Result<Vec<PlexItem>, BackendError> {
        Ok(match self.metadata(&keys.join(","), "shows").await {
            Ok(c) => decode_metadata(&c, "shows").0,
            // One of several shows gone, or a server that reads one id per path: ask singly.
            Err(BackendError::NotFound { .. }) if keys.len() > 1 => {
                let mut shows = Vec::new();
                for key in keys {
                    match self.metadata(key, "show").await {
                        Ok(c) => shows.extend(decode_metadata(&c, "show").0),
                        Err(BackendError::NotFound { .. }) => {}
                        Err(e) => return Err(e),
                    }
                }
                shows
            }
            // The show was deleted meanwhile: its episodes simply have no series ids.
            Err(BackendError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        })
    }

    fn convert(&self, item: PlexItem, library: Option<&str>) -> Option<RemoteItem> {
        let show = item.show_to_fetch().and_then(|k| self.series.get(k));
        item.into_remote(show, library)
    }

    async fn write(
        &self,
        route: &[&str],
        method: Method,
        query: &[(&str, String)],
        what: &str,
    ) -> Result<(), BackendError> {
        let req = self.http.request(method, route, query)?;
        self.http.send_write(req, what).await
    }
}

#[async_trait]
impl BackendApi for PlexClient {
    async fn identity(&self) -> Result<ServerIdentity, BackendError> {
        let req = self.http.request(Method::GET, &["identity"], &[])?;
        let c: Container<IdentityContainer> = self.http.send_json(req, "server identity").await?;
        let c = c.media_container;
        let Some(server_id) = c.machine_identifier.filter(|id| !id.trim().is_empty()) else {
            return Err(BackendError::BadResponse {
                message: "server identity: the server returned no machineIdentifier in /identity; is url the address of a Plex Media Server?".into(),
            });
        };
        Ok(ServerIdentity {
            server_id,
            name: None,
            version: c.version,
        })
    }

    async fn list_items(
        &self,
        cursor: Option<&str>,
        page_size: usize,
    ) -> Result<ItemPage, BackendError> {
        let sections = self.sections(cursor.is_none()).await?;
        let position = cursor.and_then(|c| {
            let (key, offset) = c.rsplit_once(':')?;
            let offset = offset.parse::<u64>().ok()?;
            let idx = sections.iter().position(|s| s.key == key)?;
            Some((idx, offset))
        });
        let (idx, offset) = match (cursor, position) {
            (Some(_), None) => {
                tracing::warn!(
                    "listing cursor names no current Plex section; listing again from the start"
                );
                (0, 0)
            }
            (_, p) => p.unwrap_or((0, 0)),
        };
        let Some(section) = sections.get(idx) else {
            return Ok(ItemPage {
                items: Vec::new(),
                next: None,
                total: Some(0),
                skipped: 0,
                left_out: 0,
            });
        };
        let kind = if section.kind == "movie" { "1" } else { "4" };
        let route = ["library", "sections", &section.key, "all"];
        let query = [
            ("type", kind.to_string()),
            ("includeGuids", "1".to_string()),
            ("sort", "addedAt".to_string()),
            ("X-Plex-Container-Start", offset.to_string()),
            ("X-Plex-Container-Size", page_size.to_string()),
        ];
        let req = self.http.request(Method::GET, &route, &query)?;
        let what = format!("section {}", section.key);
        let page = self.section_page(req, &what).await?;
        // The offset moves past every item of the page, read or skipped.
        let got = page.metadata.len() as u64;
        let (metadata, skipped) = decode_metadata(&page, &what);
        self.load_shows(&metadata).await?;
        let total_size = page.total_size.map(|t| t.max(0) as u64);
        let confirmed = page.offset == i64::try_from(offset).ok();
        let section_done = !super::more_pages(offset, got, page_size as u64, total_size, confirmed);
        let next = if !section_done {
            Some(format!("{}:{}", section.key, offset + got))
        } else {
            sections.get(idx + 1).map(|s| format!("{}:0", s.key))
        };
        let library = page
            .library_section_id
            .clone()
            .unwrap_or(section.key.clone());
        // Plex counts per section: on the first page of a listing, add up the other
        // sections' sizes (one count-only request each) so a sync can show its progress.
        let total = match (cursor, page.total_size) {
            (None, Some(first)) => self
                .total_of(&sections[1..])
                .await?
                .map(|t| t + first.max(0) as u64),
            _ => None,
        };
        let items: Vec<RemoteItem> = metadata
            .into_iter()
            .filter_map(|i| self.convert(i, Some(&library)))
            .collect();
        Ok(ItemPage {
            left_out: got.saturating_sub(skipped + items.len() as u64),
            items,
            next,
            total,
            skipped,
        })
    }

    async fn get_item(&self, item_id: &str) -> Result<Option<RemoteItem>, BackendError> {
        let item_id = plain_id(item_id)?;
        let c = match self.metadata(item_id, &format!("item {item_id}")).await {
            Ok(c) => c,
            Err(BackendError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(item) = decode_metadata(&c, "item").0.into_iter().next() else {
            return Ok(None);
        };
        // The item's own section first, else the container's.
        let library = c.library_section_id;
        self.load_shows(std::slice::from_ref(&item)).await?;
        Ok(self.convert(item, library.as_deref()))
    }

    async fn set_played(
        &self,
        item_id: &str,
        played: bool,
        _at: Option<Millis>,
    ) -> Result<(), BackendError> {
        // Plex takes no date: the scrobble is stamped with the server's clock.
        let item_id = plain_id(item_id)?;
        let action = if played { "scrobble" } else { "unscrobble" };
        let query = [
            ("identifier", LIBRARY_IDENTIFIER.to_string()),
            ("key", item_id.to_string()),
        ];
        let what = format!(
            "mark {item_id} {}",
            if played { "played" } else { "unplayed" }
        );
        self.write(&[":", action], Method::PUT, &query, &what).await
    }

    async fn set_position(
        &self,
        item_id: &str,
        position_ms: u64,
        duration_ms: Option<u64>,
        // Plex stamps the report with its own time.
        _at: Option<Millis>,
    ) -> Result<(), BackendError> {
        let item_id = plain_id(item_id)?;
        let duration = match duration_ms {
            Some(d) => Some(d),
            None => match self.get_item(item_id).await? {
                Some(item) => item.duration_ms,
                None => {
                    return Err(BackendError::NotFound {
                        what: format!("item {item_id}"),
                    })
                }
            },
        };
        // As the PHP original: without `identifier` and `duration` Plex may ignore the report.
        let mut query = vec![
            ("identifier", LIBRARY_IDENTIFIER.to_string()),
            ("ratingKey", item_id.to_string()),
            ("key", format!("/library/metadata/{item_id}")),
            ("state", "stopped".to_string()),
            ("time", position_ms.to_string()),
        ];
        if let Some(d) = duration {
            query.push(("duration", d.to_string()));
        }
        self.write(
            &[":", "timeline"],
            Method::POST,
            &query,
            &format!("set position of {item_id}"),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: serde_json::Value) -> PlexItem {
        serde_json::from_value(json).unwrap()
    }

    /// A real answer's items as the sync sees them, and how many were skipped.
    fn real_items(text: &str) -> (Vec<RemoteItem>, u64) {
        let c: Container<MetadataContainer> = serde_json::from_str(text).unwrap();
        let library = c.media_container.library_section_id.clone();
        let (items, skipped) = decode_metadata(&c.media_container, "sample");
        let items = items
            .into_iter()
            .filter_map(|i| i.into_remote(None, library.as_deref()))
            .collect();
        (items, skipped)
    }

    #[test]
    fn real_answers_of_one_item_decode() {
        // A legacy-agent movie, never played: its id is in `guid`, there is no `Guid[]`.
        let (items, skipped) = real_items(real_answer!(
            "plex/plexapirs-metadata-108-legacy-movie.json"
        ));
        assert_eq!(skipped, 0);
        let m = &items[0];
        assert_eq!((m.item_id.as_str(), m.item_type), ("108", ItemType::Movie));
        assert_eq!(m.title.as_deref(), Some("Interstate 60"));
        assert_eq!(m.external_ids["imdb"], "tt0165832");
        assert_eq!((m.year, m.library_id.as_deref()), (Some(2002), Some("1")));
        assert!(!m.played);
        assert_eq!((m.position_ms, m.last_played_at), (0, None));
        // The same modern-agent movie stopped part way (no viewCount), then scrobbled.
        let (items, _) = real_items(real_answer!("plex/plexapirs-metadata-182-inprogress.json"));
        let m = &items[0];
        assert_eq!(m.external_ids["imdb"], "tt0096895");
        assert_eq!(m.external_ids["tmdb"], "268");
        assert!(!m.played);
        assert_eq!(m.position_ms, 75_000);
        assert_eq!(m.duration_ms, Some(81_030));
        let (items, _) = real_items(real_answer!("plex/plexapirs-metadata-182-played.json"));
        let m = &items[0];
        assert!(m.played);
        assert_eq!(m.last_played_at, Some(1_683_761_882_000));
        assert_eq!(m.position_ms, 0);
        // A collection decodes and is no item of the sync.
        let (items, skipped) =
            real_items(real_answer!("plex/plexapirs-metadata-161-collection.json"));
        assert_eq!((items.len(), skipped), (0, 0));
    }

    #[test]
    fn real_listings_decode() {
        let (movies, skipped) = real_items(real_answer!("plex/plexapirs-movie-library.json"));
        assert_eq!(skipped, 0);
        let ids: Vec<_> = movies.iter().map(|m| m.item_id.as_str()).collect();
        assert_eq!(ids, ["55", "108"]);
        assert_eq!(movies[0].external_ids["imdb"], "tt1254207");
        assert!(movies.iter().all(|m| m.library_id.as_deref() == Some("1")));
        // Legacy TheTVDB episodes: the show's id and the numbers, from each episode's guid.
        let (episodes, _) = real_items(real_answer!("plex/plexapirs-tv-episodes.json"));
        assert_eq!(episodes.len(), 3);
        for (n, e) in episodes.iter().enumerate() {
            assert_eq!(e.item_type, ItemType::Episode);
            assert_eq!((e.season, e.episode), (Some(1), Some(n as u32 + 1)));
            assert_eq!(e.series_external_ids["tvdb"], "268592");
            assert_eq!(e.series_title.as_deref(), Some("The 100"));
        }
        // WatchState's listings (modern agents, paged): a played episode and movies.
        let (episodes, skipped) = real_items(real_answer!("plex/watchstate-episodes-page.json"));
        assert_eq!(skipped, 0);
        let e = &episodes[0];
        assert_eq!((e.item_id.as_str(), e.played), ("5", true));
        assert_eq!(e.last_played_at, Some(1_643_805_016_000));
        assert_eq!(e.external_ids["tvdb"], "4");
        assert_eq!((e.season, e.episode), (Some(1), Some(1)));
        let (movies, skipped) = real_items(real_answer!("plex/watchstate-movies-page.json"));
        assert_eq!(skipped, 0);
        assert_eq!(movies[0].external_ids["imdb"], "tt0000001");
        assert!(movies.iter().all(|m| m.item_type == ItemType::Movie));
    }

    #[test]
    fn real_section_lists_decode() {
        for text in [
            real_answer!("plex/watchstate-library-sections.json"),
            real_answer!("plex/watchstate-sections-anonymized.json"),
        ] {
            let c: Container<SectionsContainer> = serde_json::from_str(text).unwrap();
            let (entries, skipped) =
                decode_each::<SectionEntry>(&c.media_container.directory, "key", "sample");
            assert_eq!(skipped, 0);
            assert!(entries.iter().any(|e| e.kind == "show"));
            assert!(entries.iter().all(|e| e.key.is_some()));
        }
    }

    #[test]
    fn guids_of_every_agent_parse() {
        use GuidMeaning::*;
        assert_eq!(
            parse_guid("imdb://tt0133093"),
            Item("imdb", "tt0133093".into())
        );
        assert_eq!(parse_guid("tmdb://603"), Item("tmdb", "603".into()));
        assert_eq!(parse_guid("plex://movie/5d776"), Nothing);
        assert_eq!(
            parse_guid("com.plexapp.agents.imdb://tt0133093?lang=en"),
            Item("imdb", "tt0133093".into())
        );
        assert_eq!(
            parse_guid("com.plexapp.agents.themoviedb://603?lang=en"),
            Item("tmdb", "603".into())
        );
        assert_eq!(
            parse_guid("com.plexapp.agents.thetvdb://121361/1/2?lang=en"),
            Series("tvdb", "121361".into())
        );
        assert_eq!(
            parse_guid("com.plexapp.agents.thetvdb://121361?lang=en"),
            Item("tvdb", "121361".into())
        );
        assert_eq!(
            parse_guid("com.plexapp.agents.hama://anidb-123/1/2?lang=en"),
            Series("anidb", "123".into())
        );
        assert_eq!(
            parse_guid("com.plexapp.agents.xbmcnfo://tt1?lang=en"),
            Item("imdb", "tt1".into())
        );
        assert_eq!(parse_guid("com.plexapp.agents.none://abc"), Nothing);
        assert_eq!(
            parse_guid("tv.plex.agents.nfo.movie://movie/imdb_tt5"),
            Item("imdb", "tt5".into())
        );
        assert_eq!(parse_guid("local://12"), Nothing);
    }

    #[test]
    fn a_movie_reads_state_in_ms_and_seconds() {
        let r = item(serde_json::json!({
            "ratingKey": "101", "type": "movie", "title": "The Matrix", "year": 1999,
            "guid": "plex://movie/5d776", "Guid": [{"id": "imdb://tt0133093"}, {"id": "tmdb://603"}],
            "duration": 8160000, "viewCount": 2, "viewOffset": 60000, "lastViewedAt": 1714557600,
            "librarySectionID": 1
        }))
        .into_remote(None, Some("9"))
        .unwrap();
        assert_eq!(r.item_id, "101");
        assert_eq!(r.external_ids["imdb"], "tt0133093");
        assert_eq!(r.external_ids["tmdb"], "603");
        assert!(r.played);
        assert_eq!(r.position_ms, 60_000);
        assert_eq!(r.duration_ms, Some(8_160_000));
        assert_eq!(r.last_played_at, Some(1_714_557_600_000));
        assert_eq!(r.library_id.as_deref(), Some("1"));
        assert_eq!(r.year, Some(1999));
    }

    #[test]
    fn a_legacy_episode_names_its_show() {
        let it = item(serde_json::json!({
            "ratingKey": 301, "type": "episode", "title": "Pilot",
            "guid": "com.plexapp.agents.thetvdb://121361/1/2?lang=en",
            "grandparentTitle": "Game of Thrones", "grandparentRatingKey": "300",
            "parentIndex": 1, "index": 2
        }));
        assert_eq!(it.show_to_fetch(), None);
        let r = it.into_remote(None, None).unwrap();
        assert_eq!(r.item_id, "301");
        assert!(r.external_ids.is_empty());
        assert_eq!(r.series_external_ids["tvdb"], "121361");
        assert_eq!((r.season, r.episode), (Some(1), Some(2)));
        assert!(!r.played);
        assert_eq!(r.last_played_at, None);
    }

    #[test]
    fn a_modern_episode_takes_series_ids_from_its_show() {
        let it = item(serde_json::json!({
            "ratingKey": "201", "type": "episode", "Guid": [{"id": "tvdb://6252618"}],
            "grandparentRatingKey": "200", "grandparentGuid": "plex://show/abc",
            "parentIndex": 1, "index": 1
        }));
        assert_eq!(it.show_to_fetch(), Some("200"));
        let show: ExternalIds = [("tvdb".to_string(), "334824".to_string())].into();
        let r = it.into_remote(Some(show.clone()), None).unwrap();
        assert_eq!(r.series_external_ids, show);
        assert_eq!(r.external_ids["tvdb"], "6252618");
    }

    #[test]
    fn an_item_without_rating_key_takes_it_from_key() {
        let c: MetadataContainer = serde_json::from_value(serde_json::json!({
            "Metadata": [
                {"key": "/library/metadata/77", "type": "movie", "title": "A"},
                {"key": "/library/metadata/78/children", "type": "show", "title": "B"},
                {"key": "/elsewhere/79", "type": "movie", "title": "C"},
                {"ratingKey": "80", "type": "movie", "year": "nineteen"},
                {"ratingKey": 81, "type": "movie", "year": "1999"}
            ]
        }))
        .unwrap();
        let (items, skipped) = decode_metadata(&c, "test");
        let keys: Vec<&str> = items.iter().map(PlexItem::rating_key).collect();
        assert_eq!(keys, ["77", "78", "81"]);
        assert_eq!(skipped, 2);
        assert_eq!(items[2].year, Some(1999));
    }

    #[test]
    fn each_backend_has_its_own_stable_client_identifier() {
        let cfg = |url: &str, user: &str, token: &str| ClientConfig {
            kind: watchstate_actors::event::BackendKind::Plex,
            base_url: url::Url::parse(url).unwrap(),
            token: token.to_string(),
            user_id: user.to_string(),
            timeout: std::time::Duration::from_secs(1),
            ignore_libraries: Vec::new(),
        };
        let id = client_identifier(&cfg("http://plex:32400/", "1", "s3cret"));
        assert_eq!(id.len(), "watchstate-rs-".len() + 12, "{id}");
        assert!(id.starts_with("watchstate-rs-"), "{id}");
        assert!(!id.contains("s3cret"));
        // Stable: the same backend always has the same identifier (and the URL reads the same
        // with or without its trailing slash).
        assert_eq!(
            id,
            client_identifier(&cfg("http://plex:32400", "1", "s3cret"))
        );
        for other in [
            cfg("http://plex:32401/", "1", "s3cret"),
            cfg("http://plex:32400/", "2", "s3cret"),
            cfg("http://plex:32400/", "1", "other"),
            // Fields do not run into each other.
            cfg("http://plex:32400/", "1s", "3cret"),
        ] {
            assert_ne!(client_identifier(&other), id, "{other:?}");
        }
    }

    #[test]
    fn shows_and_tracks_are_not_items() {
        assert!(item(serde_json::json!({"ratingKey": "1", "type": "show"}))
            .into_remote(None, None)
            .is_none());
    }
}
