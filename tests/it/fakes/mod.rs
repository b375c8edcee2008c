//! Fake Plex, Jellyfin and Emby servers for the tests, on warp, bound to `127.0.0.1:0`.
//!
//! Each fake serves the same paths, auth headers, JSON shapes and paging as the real server
//! (see the module of each), keeps an in-memory library and per-user state that writes change
//! like the real server does, records every request, checks every request against the server's
//! API contract (`tests/contracts/*.txt`) and takes faults on demand.
//!
//! ```ignore
//! let lib = FakeLibrary::new()
//!     .with(FakeItem::movie("101", "The Matrix").year(1999).ext("imdb", "tt0133093"))
//!     .with_show(FakeShow::new("200", "Dark").ext("tvdb", "334824"))
//!     .with(FakeItem::episode("201", "200", 1, 1).ext("tvdb", "6252618").played_at(1_700_000_000_000));
//! let fake = FakeServer::start(FakeKind::Jellyfin, lib).await;
//! let client = fake.client();                       // the real JellyfinClient, pointed at it
//! client.set_played("101", true, None).await?;
//! assert!(fake.item_state("101").played);
//! assert_eq!(fake.writes().len(), 1);
//! fake.inject(Fault::status(500).times(2).writes_only());
//! fake.assert_contract();                           // no request outside the OpenAPI paths
//! ```
//!
//! The API is used by other test modules (end-to-end tests), so not every function is called
//! from this directory's own tests.
#![allow(dead_code)]

mod emby;
mod jellyfin;
mod plex;

use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::http::HeaderMap;
use warp::Filter;
use watchstate::backend::{build_client, ClientConfig};
use watchstate_actors::backend::BackendApi;
use watchstate_actors::event::{BackendKind, ExternalIds, ItemType, Millis};

/// Which server a fake imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeKind {
    Plex,
    Jellyfin,
    Emby,
}

impl FakeKind {
    pub fn backend_kind(self) -> BackendKind {
        match self {
            FakeKind::Plex => BackendKind::Plex,
            FakeKind::Jellyfin => BackendKind::Jellyfin,
            FakeKind::Emby => BackendKind::Emby,
        }
    }

    /// The `(METHOD path-template)` list this server's requests must match.
    fn contract_text(self) -> &'static str {
        match self {
            FakeKind::Plex => include_str!("../../contracts/plex.txt"),
            FakeKind::Jellyfin => include_str!("../../contracts/jellyfin.txt"),
            FakeKind::Emby => include_str!("../../contracts/emby.txt"),
        }
    }
}

impl From<BackendKind> for FakeKind {
    fn from(kind: BackendKind) -> Self {
        match kind {
            BackendKind::Plex => FakeKind::Plex,
            BackendKind::Jellyfin => FakeKind::Jellyfin,
            BackendKind::Emby => FakeKind::Emby,
        }
    }
}

/// A movie or an episode of the fake library.
#[derive(Debug, Clone)]
pub struct FakeItem {
    /// Plex ratingKey / Jellyfin and Emby item id.
    pub id: String,
    pub item_type: ItemType,
    pub title: String,
    pub year: Option<u32>,
    /// The show of an episode ([`FakeShow::id`]).
    pub show_id: Option<String>,
    pub season: Option<u32>,
    pub episode: Option<u32>,
    /// Provider ids, lower-case keys (`imdb`, `tmdb`, `tvdb`).
    pub ids: ExternalIds,
    /// Plex only: a legacy agent guid (`com.plexapp.agents.thetvdb://1/2/3?lang=en`); when set
    /// Plex serves it as `guid` and no `Guid[]`, like a library matched by a legacy agent.
    pub plex_guid: Option<String>,
    pub duration_ms: u64,
    /// Plex section; default "1" for movies and "2" for episodes.
    pub library_id: Option<String>,
    /// The default user's state at start.
    pub initial: ItemState,
    /// Jellyfin/Emby only: a placeholder with no media (`LocationType: "Virtual"`), as
    /// Jellyfin keeps for missing episodes; Jellyfin leaves it out of listings that send
    /// `excludeLocationTypes=Virtual`.
    pub is_virtual: bool,
    /// Fields of the item's JSON changed as the server renders it, in order: `Some` sets the
    /// field (a string year, a null id), `None` removes it; for items real servers send
    /// in an unexpected shape.
    pub render: Vec<(String, Option<serde_json::Value>)>,
}

impl FakeItem {
    pub fn movie(id: &str, title: &str) -> Self {
        FakeItem {
            id: id.to_string(),
            item_type: ItemType::Movie,
            title: title.to_string(),
            year: None,
            show_id: None,
            season: None,
            episode: None,
            ids: ExternalIds::new(),
            plex_guid: None,
            duration_ms: 7_200_000,
            library_id: None,
            initial: ItemState::default(),
            is_virtual: false,
            render: Vec::new(),
        }
    }

    pub fn episode(id: &str, show_id: &str, season: u32, episode: u32) -> Self {
        FakeItem {
            item_type: ItemType::Episode,
            title: format!("Episode {season}x{episode}"),
            show_id: Some(show_id.to_string()),
            season: Some(season),
            episode: Some(episode),
            duration_ms: 2_700_000,
            ..FakeItem::movie(id, "")
        }
    }

    pub fn title(mut self, title: &str) -> Self {
        self.title = title.to_string();
        self
    }

    pub fn year(mut self, year: u32) -> Self {
        self.year = Some(year);
        self
    }

    /// Adds a provider id (`ext("imdb", "tt0133093")`).
    pub fn ext(mut self, provider: &str, id: &str) -> Self {
        self.ids
            .insert(provider.to_ascii_lowercase(), id.to_string());
        self
    }

    pub fn plex_guid(mut self, guid: &str) -> Self {
        self.plex_guid = Some(guid.to_string());
        self
    }

    pub fn duration_ms(mut self, ms: u64) -> Self {
        self.duration_ms = ms;
        self
    }

    /// A virtual item (see [`Self::is_virtual`]).
    pub fn virtual_item(mut self) -> Self {
        self.is_virtual = true;
        self
    }

    /// Renders `field` with this JSON value, whatever the server would normally send.
    pub fn render(mut self, field: &str, value: serde_json::Value) -> Self {
        self.render.push((field.to_string(), Some(value)));
        self
    }

    /// Leaves `field` out of the rendered item.
    pub fn omit(mut self, field: &str) -> Self {
        self.render.push((field.to_string(), None));
        self
    }

    /// Applies [`Self::render`]/[`Self::omit`] to the item's JSON.
    pub(crate) fn apply_render(&self, out: &mut serde_json::Value) {
        let Some(obj) = out.as_object_mut() else {
            return;
        };
        for (field, value) in &self.render {
            match value {
                Some(v) => {
                    obj.insert(field.clone(), v.clone());
                }
                None => {
                    obj.remove(field);
                }
            }
        }
    }

    pub fn library(mut self, library_id: &str) -> Self {
        self.library_id = Some(library_id.to_string());
        self
    }

    /// Starts played by the default user, last played at `at` (unix ms).
    pub fn played_at(mut self, at: Millis) -> Self {
        self.initial = ItemState {
            played: true,
            play_count: 1,
            last_played_at: Some(at),
            position_ms: 0,
        };
        self
    }

    /// Starts unplayed with a resume position for the default user.
    pub fn position_ms(mut self, ms: u64) -> Self {
        self.initial.position_ms = ms;
        self
    }

    /// The library (Plex section, Jellyfin/Emby `CollectionFolder`) that holds the item.
    pub(crate) fn library_id(&self) -> String {
        self.library_id
            .clone()
            .unwrap_or_else(|| match self.item_type {
                ItemType::Movie => "1".to_string(),
                ItemType::Episode => "2".to_string(),
            })
    }
}

/// A show: the parent of episodes, with the series ids.
#[derive(Debug, Clone)]
pub struct FakeShow {
    pub id: String,
    pub title: String,
    pub ids: ExternalIds,
    /// Plex only: legacy agent guid of the show (`com.plexapp.agents.thetvdb://123?lang=en`).
    pub plex_guid: Option<String>,
    pub year: Option<u32>,
}

impl FakeShow {
    pub fn new(id: &str, title: &str) -> Self {
        FakeShow {
            id: id.to_string(),
            title: title.to_string(),
            ids: ExternalIds::new(),
            plex_guid: None,
            year: None,
        }
    }

    pub fn ext(mut self, provider: &str, id: &str) -> Self {
        self.ids
            .insert(provider.to_ascii_lowercase(), id.to_string());
        self
    }

    pub fn plex_guid(mut self, guid: &str) -> Self {
        self.plex_guid = Some(guid.to_string());
        self
    }
}

/// The content of a fake server, in listing order.
#[derive(Debug, Clone, Default)]
pub struct FakeLibrary {
    pub items: Vec<FakeItem>,
    pub shows: Vec<FakeShow>,
    /// Plex only: raw `Directory` entries served after the sections of the items (a section
    /// in an unexpected shape, e.g. without `key`).
    pub plex_extra_sections: Vec<serde_json::Value>,
    /// Plex only: fields left out of every `MediaContainer` (`totalSize`, which the spec does
    /// not require in the body).
    pub plex_container_omit: Vec<String>,
    /// See [`FakeLibrary::under_count`].
    pub under_count: usize,
    /// See [`FakeLibrary::ignore_start_index`].
    pub ignore_start_index: bool,
    /// See [`FakeLibrary::plex_metadata_page`].
    pub plex_metadata_page: Option<usize>,
}

impl FakeLibrary {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, item: FakeItem) -> Self {
        self.items.push(item);
        self
    }

    pub fn with_show(mut self, show: FakeShow) -> Self {
        self.shows.push(show);
        self
    }

    /// Plex only: one more raw `Directory` entry in `/library/sections/all`.
    pub fn with_plex_section(mut self, directory: serde_json::Value) -> Self {
        self.plex_extra_sections.push(directory);
        self
    }

    /// Plex only: leaves `field` out of every `MediaContainer` the fake answers.
    pub fn plex_container_omit(mut self, field: &str) -> Self {
        self.plex_container_omit.push(field.to_string());
        self
    }

    /// Every listing's total (`TotalRecordCount`, Plex's `totalSize` and its header) is `n` below
    /// the truth, at least 0: what Jellyfin 10.4 and 10.5 answered (jellyfin#2116, #3030).
    pub fn under_count(mut self, n: usize) -> Self {
        self.under_count = n;
        self
    }

    /// Plex only: a lookup of several ids (`/library/metadata/1,2,3`) answers only the first
    /// `n` it finds, as a server applying the spec's default container size (50) would.
    pub fn plex_metadata_page(mut self, n: usize) -> Self {
        self.plex_metadata_page = Some(n);
        self
    }

    /// Listings ignore the start index and always answer from the first item (and say so), as
    /// a broken server or proxy might.
    pub fn ignore_start_index(mut self) -> Self {
        self.ignore_start_index = true;
        self
    }

    /// `n` items, half movies (ids `100000`, `100002`, ..., imdb `tt<id>`) and half episodes
    /// of shows of 10 episodes (ids `100001`, ..., tvdb `<id>`; shows `s<k>`, tvdb `9<k>`).
    /// Every third movie starts played; every fifth episode has a position. Cheap for 20 000.
    pub fn generated(n: usize) -> Self {
        let mut lib = FakeLibrary {
            items: Vec::with_capacity(n),
            shows: Vec::with_capacity(n / 20 + 1),
            plex_extra_sections: Vec::new(),
            plex_container_omit: Vec::new(),
            under_count: 0,
            ignore_start_index: false,
            plex_metadata_page: None,
        };
        for i in 0..n {
            let id = (100_000 + i).to_string();
            if i % 2 == 0 {
                let mut m = FakeItem::movie(&id, &format!("Movie {i}"))
                    .year(1990 + (i % 30) as u32)
                    .ext("imdb", &format!("tt{id}"));
                if i % 3 == 0 {
                    m = m.played_at(1_700_000_000_000 + i as i64 * 1000);
                }
                lib.items.push(m);
            } else {
                let e = i / 2;
                let show = e / 10;
                if e % 10 == 0 {
                    lib.shows.push(
                        FakeShow::new(&format!("s{show}"), &format!("Show {show}"))
                            .ext("tvdb", &format!("9{show}")),
                    );
                }
                let mut ep = FakeItem::episode(&id, &format!("s{show}"), 1, (e % 10) as u32 + 1)
                    .ext("tvdb", &id);
                if e % 5 == 0 {
                    ep = ep.position_ms(60_000);
                }
                lib.items.push(ep);
            }
        }
        lib
    }
}

/// One user's state of one item, in the system's units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemState {
    pub played: bool,
    pub play_count: u32,
    pub last_played_at: Option<Millis>,
    /// Resume position; 0 when none.
    pub position_ms: u64,
}

/// A request as the fake received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Raw path, without the query.
    pub path: String,
    /// Decoded query pairs, in order.
    pub query: Vec<(String, String)>,
    pub body: String,
    /// The request headers (auth, accept, client identification).
    pub headers: HeaderMap,
    /// What the fake answered.
    pub status: u16,
    /// When the fake received it: lets a test measure the spacing of retries.
    pub at: std::time::Instant,
}

impl RecordedRequest {
    /// Every value of a repeated query parameter (exact name), in order.
    pub fn params(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a query parameter (exact name).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A state change the fake applied because a client asked (not `set_*_directly`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeWrite {
    pub user_id: String,
    pub item_id: String,
    pub change: WriteChange,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteChange {
    /// Marked played; `at` is the date the client sent, if any.
    Played {
        at: Option<Millis>,
    },
    Unplayed,
    /// Resume position set (converted from the server's unit).
    Position {
        ms: u64,
    },
}

/// A failure the fake produces for the next `times` matching requests.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    /// How many requests it affects; `usize::MAX` for "until cleared".
    pub times: usize,
    /// Only mark played/unplayed/position requests, so listings and lookups still work.
    pub writes_only: bool,
}

#[derive(Debug, Clone)]
pub enum FaultKind {
    /// Answer this status with a short text body.
    Status(u16),
    /// Answer this status (429, 503) with this `Retry-After` value (seconds or an HTTP date).
    RetryAfter { status: u16, retry_after: String },
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Answer 200 with JSON of the wrong shape.
    WrongJson,
    /// Answer this status with this body and content type (an HTML login page, XML, JSON
    /// of another shape).
    Body {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Answer this status with an HTML error page that repeats the request line, query
    /// included, as many servers and proxies do.
    EchoRequest(u16),
    /// Answer this 3xx status with `Location: <to><path>?<query>`, as a reverse proxy that
    /// moved the server (to https, or under a prefix) does: path and query kept.
    Redirect { status: u16, to: String },
    /// Handle the request as usual (a write is applied), then answer its status with this
    /// body and content type: a server that confirms with a small HTML page, as Plex's
    /// documents allow for a write's `200` (`text/html`).
    Dressed {
        content_type: &'static str,
        body: String,
    },
}

impl Fault {
    pub fn status(status: u16) -> Self {
        Fault {
            kind: FaultKind::Status(status),
            times: 1,
            writes_only: false,
        }
    }

    pub fn rate_limited(retry_after: &str) -> Self {
        Fault::retry_after(429, retry_after)
    }

    /// This status with a `Retry-After` (a 503 in maintenance, a 429).
    pub fn retry_after(status: u16, retry_after: &str) -> Self {
        Fault {
            kind: FaultKind::RetryAfter {
                status,
                retry_after: retry_after.to_string(),
            },
            ..Fault::status(status)
        }
    }

    pub fn delay(delay: Duration) -> Self {
        Fault {
            kind: FaultKind::Delay(delay),
            ..Fault::status(0)
        }
    }

    pub fn wrong_json() -> Self {
        Fault {
            kind: FaultKind::WrongJson,
            ..Fault::status(0)
        }
    }

    pub fn body(status: u16, content_type: &'static str, body: &str) -> Self {
        Fault {
            kind: FaultKind::Body {
                status,
                content_type,
                body: body.to_string(),
            },
            ..Fault::status(0)
        }
    }

    /// See [`FaultKind::Dressed`].
    pub fn dressed(content_type: &'static str, body: &str) -> Self {
        Fault {
            kind: FaultKind::Dressed {
                content_type,
                body: body.to_string(),
            },
            ..Fault::status(0)
        }
    }

    pub fn echo_request(status: u16) -> Self {
        Fault {
            kind: FaultKind::EchoRequest(status),
            ..Fault::status(0)
        }
    }

    /// A `status` redirect to the same path and query under `to` (`http://host:port/prefix`).
    pub fn redirect(status: u16, to: &str) -> Self {
        Fault {
            kind: FaultKind::Redirect {
                status,
                to: to.trim_end_matches('/').to_string(),
            },
            ..Fault::status(0)
        }
    }

    pub fn times(mut self, times: usize) -> Self {
        self.times = times;
        self
    }

    pub fn always(self) -> Self {
        self.times(usize::MAX)
    }

    pub fn writes_only(mut self) -> Self {
        self.writes_only = true;
        self
    }
}

/// A running fake server. Dropping it stops the server.
pub struct FakeServer {
    kind: FakeKind,
    addr: SocketAddr,
    inner: Arc<Inner>,
    /// Fires the graceful shutdown.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// The server task, awaited by [`FakeServer::shutdown`].
    task: Mutex<Option<JoinHandle<()>>>,
}

/// What the request handler shares with the test.
pub(crate) struct Inner {
    kind: FakeKind,
    pub(crate) server_id: String,
    /// The token of the default user (Plex: the account token; Jellyfin/Emby: an API key).
    pub(crate) token: String,
    pub(crate) user_id: String,
    /// Jellyfin only: serve the routes of 10.8 (`/Users/{userId}/...`), not those of 10.9+.
    pub(crate) jellyfin_10_8: bool,
    contract: Contract,
    state: Mutex<State>,
}

/// Everything that changes.
pub(crate) struct State {
    pub(crate) items: Vec<FakeItem>,
    pub(crate) item_index: HashMap<String, usize>,
    pub(crate) shows: Vec<FakeShow>,
    pub(crate) show_index: HashMap<String, usize>,
    /// See [`FakeLibrary::plex_extra_sections`].
    pub(crate) plex_extra_sections: Vec<serde_json::Value>,
    /// See [`FakeLibrary::plex_container_omit`].
    pub(crate) plex_container_omit: Vec<String>,
    /// See [`FakeLibrary::under_count`].
    pub(crate) under_count: usize,
    /// See [`FakeLibrary::ignore_start_index`].
    pub(crate) ignore_start_index: bool,
    /// See [`FakeLibrary::plex_metadata_page`].
    pub(crate) plex_metadata_page: Option<usize>,
    /// Listing requests answered without a sort order so far (see [`State::listing_order`]).
    pub(crate) unsorted_listings: std::cell::Cell<usize>,
    /// token → user id.
    pub(crate) tokens: HashMap<String, String>,
    /// user id → item id → state.
    pub(crate) user_state: HashMap<String, HashMap<String, ItemState>>,
    /// (user id, item id) → the other `UserData` fields (`IsFavorite`, `Rating`, `Likes`) as
    /// JSON, for the servers that have them.
    pub(crate) other_user_data:
        HashMap<(String, String), serde_json::Map<String, serde_json::Value>>,
    requests: Vec<RecordedRequest>,
    pub(crate) writes: Vec<FakeWrite>,
    violations: Vec<String>,
    faults: VecDeque<Fault>,
    /// See [`FakeServer::rewrite_answers`].
    rewrites: Vec<(String, Vec<u8>)>,
}

impl State {
    pub(crate) fn item(&self, id: &str) -> Option<&FakeItem> {
        self.item_index.get(id).map(|i| &self.items[*i])
    }

    pub(crate) fn show(&self, id: &str) -> Option<&FakeShow> {
        self.show_index.get(id).map(|i| &self.shows[*i])
    }

    pub(crate) fn state_of(&self, user: &str, item: &str) -> ItemState {
        self.user_state
            .get(user)
            .and_then(|m| m.get(item))
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn state_mut(&mut self, user: &str, item: &str) -> &mut ItemState {
        self.user_state
            .entry(user.to_string())
            .or_default()
            .entry(item.to_string())
            .or_default()
    }

    /// Puts a listing's items in the order the server answers. `sorted`: the request asked
    /// for the creation order, which is the library's order (items added later come last).
    /// Without a sort order a real server's database answers in no fixed order, so pages of
    /// one listing may overlap or miss items; imitated by turning the order a little further
    /// on every such request.
    pub(crate) fn listing_order<T>(&self, items: &mut [T], sorted: bool) {
        if sorted || items.is_empty() {
            return;
        }
        let n = self.unsorted_listings.get() + 1;
        self.unsorted_listings.set(n);
        let len = items.len();
        items.rotate_left(n * 3 % len);
    }

    pub(crate) fn known_user(&self, user: &str) -> bool {
        self.tokens.values().any(|u| u == user)
    }

    /// The server's users as Jellyfin's and Emby's `UserDto` (`Name`, `Id`, a few of the
    /// other fields), sorted by id.
    pub(crate) fn user_dtos(&self, server_id: &str) -> Vec<serde_json::Value> {
        let ids: std::collections::BTreeSet<&String> = self.tokens.values().collect();
        ids.into_iter()
            .map(|id| {
                serde_json::json!({
                    "Name": format!("user-{id}"),
                    "ServerId": server_id,
                    "Id": id,
                    "HasPassword": true,
                    "Policy": {"IsAdministrator": false, "IsDisabled": false},
                })
            })
            .collect()
    }

    /// Marks played like the servers do: count up, date, position cleared.
    pub(crate) fn mark_played(&mut self, user: &str, item: &str, at: Option<Millis>) {
        let s = self.state_mut(user, item);
        s.played = true;
        s.play_count += 1;
        s.last_played_at = Some(at.unwrap_or_else(now_ms));
        s.position_ms = 0;
        self.writes.push(FakeWrite {
            user_id: user.to_string(),
            item_id: item.to_string(),
            change: WriteChange::Played { at },
        });
    }

    pub(crate) fn mark_unplayed(&mut self, user: &str, item: &str) {
        let s = self.state_mut(user, item);
        s.played = false;
        s.play_count = 0;
        s.last_played_at = None;
        s.position_ms = 0;
        self.writes.push(FakeWrite {
            user_id: user.to_string(),
            item_id: item.to_string(),
            change: WriteChange::Unplayed,
        });
    }

    pub(crate) fn record_position(&mut self, user: &str, item: &str, ms: u64) {
        self.writes.push(FakeWrite {
            user_id: user.to_string(),
            item_id: item.to_string(),
            change: WriteChange::Position { ms },
        });
    }
}

/// A request handed to a server module.
pub(crate) struct FakeRequest {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl FakeRequest {
    /// A query parameter, name compared exactly (Plex).
    pub(crate) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter, name compared case-insensitively (ASP.NET binding: Jellyfin, Emby).
    pub(crate) fn param_ci(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a possibly repeated parameter (case-insensitive name), comma-joined:
    /// `a=1&a=2` and `a=1,2` read the same, as on Jellyfin.
    pub(crate) fn param_list_ci(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .query
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    }

    /// `?a=1&b=2` as received (re-encoded), or "" without a query.
    pub(crate) fn raw_query(&self) -> String {
        if self.query.is_empty() {
            return String::new();
        }
        format!(
            "?{}",
            serde_urlencoded::to_string(&self.query).unwrap_or_default()
        )
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Path segments after the leading `/`.
    pub(crate) fn segments(&self) -> Vec<&str> {
        self.path.trim_start_matches('/').split('/').collect()
    }
}

/// What a server module answers.
pub(crate) struct FakeResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) content_type: &'static str,
    pub(crate) retry_after: Option<String>,
    /// `Location` of a redirect.
    pub(crate) location: Option<String>,
    /// Other headers of the answer (Plex's `X-Plex-Container-*`).
    pub(crate) headers: Vec<(&'static str, String)>,
    /// The body as bytes, when [`FakeServer::rewrite_answers`] made it other than `body`.
    pub(crate) raw: Option<Vec<u8>>,
}

impl FakeResponse {
    pub(crate) fn json(value: serde_json::Value) -> Self {
        FakeResponse {
            status: 200,
            body: value.to_string(),
            content_type: "application/json",
            retry_after: None,
            location: None,
            headers: Vec::new(),
            raw: None,
        }
    }

    pub(crate) fn status(status: u16, text: &str) -> Self {
        FakeResponse {
            status,
            body: text.to_string(),
            content_type: "text/plain",
            retry_after: None,
            location: None,
            headers: Vec::new(),
            raw: None,
        }
    }

    pub(crate) fn empty(status: u16) -> Self {
        FakeResponse::status(status, "")
    }
}

/// The `(METHOD, path template, query parameter names)` list of a server.
struct Contract {
    /// (method, segments, documented query names); a `{..}` segment matches any one
    /// non-empty segment.
    entries: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Contract {
    fn parse(text: &str) -> Self {
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| {
                let (method, rest) = l.split_once(' ')?;
                let (path, names) = rest.split_once(" ?").unwrap_or((rest, ""));
                let segs = path
                    .trim()
                    .trim_start_matches('/')
                    .split('/')
                    .map(str::to_string)
                    .collect();
                let names = names
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect();
                Some((method.to_string(), segs, names))
            })
            .collect();
        Contract { entries }
    }

    /// `None` when the request is one of the documented operations with only documented
    /// query parameter names (compared exactly: a server built from the document may not
    /// bind another casing), else what is wrong.
    fn violation(&self, method: &str, path: &str, query: &[(String, String)]) -> Option<String> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut unknown: Option<Vec<&str>> = None;
        for (_, _, names) in self.entries.iter().filter(|(m, template, _)| {
            m == method
                && template.len() == segs.len()
                && template.iter().zip(&segs).all(|(t, s)| {
                    if t.starts_with('{') && t.ends_with('}') {
                        !s.is_empty()
                    } else {
                        t == s
                    }
                })
        }) {
            let extra: Vec<&str> = query
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !names.iter().any(|n| n == k))
                .collect();
            if extra.is_empty() {
                return None;
            }
            unknown = Some(extra);
        }
        Some(match unknown {
            None => format!("{method} {path}"),
            Some(extra) => {
                format!("{method} {path}: query parameter(s) {extra:?} not documented for it")
            }
        })
    }
}

pub(crate) fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// Fixed ids for a fake, e.g. to match the ids inside recorded webhook payloads; each `None`
/// is generated (random server and user ids, a fixed token per kind).
#[derive(Debug, Clone, Default)]
pub struct FakeIdentity {
    pub server_id: Option<String>,
    pub user_id: Option<String>,
    pub token: Option<String>,
}

impl FakeServer {
    /// Starts a fake of `kind` serving `library` on `127.0.0.1:<free port>`, with one user
    /// ([`Self::user_id`], [`Self::token`]).
    pub async fn start(kind: FakeKind, library: FakeLibrary) -> FakeServer {
        Self::start_with(kind, library, FakeIdentity::default()).await
    }

    /// A fake Jellyfin 10.8: version `10.8.13`, play state under `/Users/{userId}/...`, no
    /// `/UserPlayedItems`, `/UserItems/{id}/UserData` or `GET /Items/{id}` (10.8.13 OpenAPI).
    pub async fn start_jellyfin_10_8(library: FakeLibrary) -> FakeServer {
        Self::start_inner(FakeKind::Jellyfin, library, FakeIdentity::default(), true).await
    }

    /// [`Self::start`] with the server id, user id or token chosen by the test.
    pub async fn start_with(
        kind: FakeKind,
        library: FakeLibrary,
        identity: FakeIdentity,
    ) -> FakeServer {
        Self::start_inner(kind, library, identity, false).await
    }

    async fn start_inner(
        kind: FakeKind,
        library: FakeLibrary,
        identity: FakeIdentity,
        jellyfin_10_8: bool,
    ) -> FakeServer {
        let (generated_server, generated_user, generated_token) = match kind {
            FakeKind::Plex => (
                format!("{:040x}", rand::random::<u128>()),
                "1".to_string(),
                "plex-token-secret".to_string(),
            ),
            FakeKind::Jellyfin => (
                format!("{:032x}", rand::random::<u128>()),
                format!("{:032x}", rand::random::<u128>()),
                "jellyfin-api-key-secret".to_string(),
            ),
            FakeKind::Emby => (
                format!("{:032x}", rand::random::<u128>()),
                format!("{:032x}", rand::random::<u128>()),
                "emby-api-key-secret".to_string(),
            ),
        };
        let server_id = identity.server_id.unwrap_or(generated_server);
        let user_id = identity.user_id.unwrap_or(generated_user);
        let token = identity.token.unwrap_or(generated_token);
        let mut user_state: HashMap<String, HashMap<String, ItemState>> = HashMap::new();
        let defaults: HashMap<String, ItemState> = library
            .items
            .iter()
            .filter(|i| i.initial != ItemState::default())
            .map(|i| (i.id.clone(), i.initial))
            .collect();
        user_state.insert(user_id.clone(), defaults);
        let item_index = library
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.id.clone(), i))
            .collect();
        let show_index = library
            .shows
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let state = State {
            items: library.items,
            item_index,
            shows: library.shows,
            show_index,
            plex_extra_sections: library.plex_extra_sections,
            plex_container_omit: library.plex_container_omit,
            under_count: library.under_count,
            ignore_start_index: library.ignore_start_index,
            plex_metadata_page: library.plex_metadata_page,
            unsorted_listings: std::cell::Cell::new(0),
            tokens: [(token.clone(), user_id.clone())].into(),
            user_state,
            other_user_data: HashMap::new(),
            requests: Vec::new(),
            writes: Vec::new(),
            violations: Vec::new(),
            faults: VecDeque::new(),
            rewrites: Vec::new(),
        };
        let inner = Arc::new(Inner {
            kind,
            server_id,
            token,
            user_id,
            jellyfin_10_8,
            contract: Contract::parse(kind.contract_text()),
            state: Mutex::new(state),
        });

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for a fake media server");
        let addr = listener.local_addr().expect("local address of the fake");
        let handler_inner = inner.clone();
        let routes = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |method: warp::http::Method,
                      path: warp::path::FullPath,
                      query: String,
                      headers: HeaderMap,
                      body: Bytes| {
                    let inner = handler_inner.clone();
                    async move {
                        let mut path = path.as_str().to_string();
                        // Emby's routes are under `/emby`, its spec's server URL. (A real
                        // server also answers most of them without it; a server built from
                        // the spec need not, and this fake does not.)
                        if inner.kind == FakeKind::Emby {
                            match path.strip_prefix("/emby/") {
                                Some(rest) => path = format!("/{rest}"),
                                None => {
                                    return into_reply(FakeResponse::status(
                                        404,
                                        "not found: Emby's routes are under /emby",
                                    ))
                                }
                            }
                        }
                        let req = FakeRequest {
                            method: method.as_str().to_string(),
                            path,
                            query: serde_urlencoded::from_str(&query).unwrap_or_default(),
                            headers,
                            body,
                        };
                        into_reply(inner.handle(req).await)
                    }
                },
            );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(
            warp::serve(routes)
                .incoming(listener)
                .graceful(async move {
                    let _ = stopped.await;
                })
                .run(),
        );
        FakeServer {
            kind,
            addr,
            inner,
            stop: Mutex::new(Some(stop)),
            task: Mutex::new(Some(task)),
        }
    }

    pub fn kind(&self) -> FakeKind {
        self.kind
    }

    /// `http://127.0.0.1:<port>/`
    pub fn url(&self) -> url::Url {
        url::Url::parse(&format!("http://{}/", self.addr)).expect("fake url")
    }

    /// The id the server reports (Plex machineIdentifier, Jellyfin/Emby `Id`).
    pub fn server_id(&self) -> &str {
        &self.inner.server_id
    }

    pub fn token(&self) -> &str {
        &self.inner.token
    }

    pub fn user_id(&self) -> &str {
        &self.inner.user_id
    }

    /// From now on every answer has `marker` replaced by `bytes`, as a server answers that
    /// stored a title as it found it (invalid UTF-8) or cut one in the middle of an emoji
    /// (`\ud83d`, half a surrogate pair). Give an item a title holding the marker.
    pub fn rewrite_answers(&self, marker: &str, bytes: &[u8]) {
        self.lock()
            .rewrites
            .push((marker.to_string(), bytes.to_vec()));
    }

    /// Adds a user whose requests carry `token` (Plex: a second account; Jellyfin/Emby: a
    /// user id the API key may also act for, `token` being that user's own token).
    pub fn add_user(&self, user_id: &str, token: &str) {
        self.lock()
            .tokens
            .insert(token.to_string(), user_id.to_string());
    }

    /// Adds an item after start, as when the server scans new media (pair it with an
    /// `ItemAdded`/`library.new` webhook in a test). Replaces an item with the same id.
    pub fn add_item(&self, item: FakeItem) {
        let user = self.inner.user_id.clone();
        let mut st = self.lock();
        if item.initial != ItemState::default() {
            *st.state_mut(&user, &item.id) = item.initial;
        }
        match st.item_index.get(&item.id).copied() {
            Some(i) => st.items[i] = item,
            None => {
                let i = st.items.len();
                st.item_index.insert(item.id.clone(), i);
                st.items.push(item);
            }
        }
    }

    /// Adds a show after start (before adding its episodes).
    pub fn add_show(&self, show: FakeShow) {
        let mut st = self.lock();
        match st.show_index.get(&show.id).copied() {
            Some(i) => st.shows[i] = show,
            None => {
                let i = st.shows.len();
                st.show_index.insert(show.id.clone(), i);
                st.shows.push(show);
            }
        }
    }

    /// Forgets the recorded requests and writes (not the contract violations), so that a
    /// test can look at one phase alone.
    pub fn clear_log(&self) {
        let mut st = self.lock();
        st.requests.clear();
        st.writes.clear();
    }

    /// A client config for the default user (5 s timeout).
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            kind: self.kind.backend_kind(),
            base_url: self.url(),
            token: self.token().to_string(),
            user_id: self.user_id().to_string(),
            timeout: Duration::from_secs(5),
            ignore_libraries: Vec::new(),
        }
    }

    /// The real client of this kind, pointed at the fake, for the default user.
    pub fn client(&self) -> Arc<dyn BackendApi> {
        build_client(self.client_config()).expect("build a client for the fake")
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.clone()
    }

    /// The state changes clients made (mark played / unplayed / position), in order.
    pub fn writes(&self) -> Vec<FakeWrite> {
        self.lock().writes.clone()
    }

    /// The default user's state of an item.
    pub fn item_state(&self, item_id: &str) -> ItemState {
        let user = self.inner.user_id.clone();
        self.item_state_for(&user, item_id)
    }

    pub fn item_state_for(&self, user_id: &str, item_id: &str) -> ItemState {
        self.lock().state_of(user_id, item_id)
    }

    /// Changes the default user's played state as if done in the server's UI with no webhook
    /// (not recorded as a write).
    pub fn set_played_directly(&self, item_id: &str, played: bool) {
        let user = self.inner.user_id.clone();
        let mut st = self.lock();
        let s = st.state_mut(&user, item_id);
        s.played = played;
        s.play_count = u32::from(played);
        s.last_played_at = played.then(now_ms);
        s.position_ms = 0;
    }

    /// Sets other `UserData` fields of the default user (`{"IsFavorite": true, "Rating": 8.5}`)
    /// as if done in the server's UI (Jellyfin and Emby).
    pub fn set_user_data_directly(&self, item_id: &str, fields: serde_json::Value) {
        let user = self.inner.user_id.clone();
        let mut st = self.lock();
        let map = st
            .other_user_data
            .entry((user, item_id.to_string()))
            .or_default();
        for (k, v) in fields.as_object().cloned().unwrap_or_default() {
            map.insert(k, v);
        }
    }

    /// The default user's other `UserData` fields (see [`Self::set_user_data_directly`]).
    pub fn other_user_data(&self, item_id: &str) -> serde_json::Map<String, serde_json::Value> {
        let key = (self.inner.user_id.clone(), item_id.to_string());
        self.lock()
            .other_user_data
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Sets the default user's resume position directly (not recorded as a write).
    pub fn set_position_directly(&self, item_id: &str, position_ms: u64) {
        let user = self.inner.user_id.clone();
        self.lock().state_mut(&user, item_id).position_ms = position_ms;
    }

    /// Queues a fault; faults apply in the order injected.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Requests whose `METHOD path` matched no entry of the server's contract.
    pub fn violations(&self) -> Vec<String> {
        self.lock().violations.clone()
    }

    /// Panics when any request so far was outside the server's API contract.
    #[track_caller]
    pub fn assert_contract(&self) {
        let v = self.violations();
        assert!(
            v.is_empty(),
            "{:?} fake received requests not in tests/contracts/{}.txt: {v:#?}",
            self.kind,
            self.kind.backend_kind()
        );
    }

    /// Stops the server and waits until its port is closed: later connections are refused.
    pub async fn shutdown(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
    }
}

impl Inner {
    async fn handle(&self, req: FakeRequest) -> FakeResponse {
        let at = std::time::Instant::now();
        let is_write = match self.kind {
            FakeKind::Plex => plex::is_write(&req),
            FakeKind::Jellyfin => jellyfin::is_write(&req),
            FakeKind::Emby => emby::is_write(&req),
        };
        let fault = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = self.contract.violation(&req.method, &req.path, &req.query) {
                st.violations.push(v);
            }
            take_fault(&mut st.faults, is_write)
        };
        let mut resp = None;
        let mut dress = None;
        match fault {
            Some(FaultKind::Delay(d)) => tokio::time::sleep(d).await,
            Some(FaultKind::Status(s)) => {
                resp = Some(FakeResponse::status(s, "injected failure"));
            }
            Some(FaultKind::RetryAfter {
                status,
                retry_after,
            }) => {
                let mut r = FakeResponse::status(status, "try again later");
                r.retry_after = Some(retry_after);
                resp = Some(r);
            }
            Some(FaultKind::Body {
                status,
                content_type,
                body,
            }) => {
                let mut r = FakeResponse::status(status, &body);
                r.content_type = content_type;
                resp = Some(r);
            }
            Some(FaultKind::EchoRequest(status)) => {
                let mut r = FakeResponse::status(
                    status,
                    &format!(
                        "<html><body>Error processing {} {}{}</body></html>",
                        req.method,
                        req.path,
                        req.raw_query()
                    ),
                );
                r.content_type = "text/html";
                resp = Some(r);
            }
            Some(FaultKind::Redirect { status, to }) => {
                let mut r = FakeResponse::status(status, "moved");
                r.location = Some(format!("{to}{}{}", req.path, req.raw_query()));
                resp = Some(r);
            }
            Some(FaultKind::Dressed { content_type, body }) => dress = Some((content_type, body)),
            Some(FaultKind::WrongJson) => {
                resp = Some(FakeResponse::json(serde_json::json!([
                    "not", "the", "expected", "shape"
                ])));
            }
            None => {}
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut resp = resp.unwrap_or_else(|| match self.kind {
            FakeKind::Plex => plex::handle(self, &mut st, &req),
            FakeKind::Jellyfin => jellyfin::handle(self, &mut st, &req),
            FakeKind::Emby => emby::handle(self, &mut st, &req),
        });
        if let Some((content_type, body)) = dress {
            resp.content_type = content_type;
            resp.body = body;
            resp.raw = None;
        }
        for (marker, bytes) in &st.rewrites {
            let body = resp
                .raw
                .take()
                .unwrap_or_else(|| resp.body.clone().into_bytes());
            resp.raw = Some(replace_bytes(&body, marker.as_bytes(), bytes));
        }
        st.requests.push(RecordedRequest {
            method: req.method,
            path: req.path,
            query: req.query,
            body: String::from_utf8_lossy(&req.body).into_owned(),
            headers: req.headers,
            status: resp.status,
            at,
        });
        resp
    }
}

/// The first queued fault that applies to this request, counted down.
fn take_fault(faults: &mut VecDeque<Fault>, is_write: bool) -> Option<FaultKind> {
    let idx = faults.iter().position(|f| !f.writes_only || is_write)?;
    let fault = &mut faults[idx];
    let kind = fault.kind.clone();
    if fault.times != usize::MAX {
        fault.times -= 1;
    }
    if fault.times == 0 {
        faults.remove(idx);
    }
    Some(kind)
}

/// `body` with every `marker` replaced by `with`.
fn replace_bytes(body: &[u8], marker: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while let Some(at) = rest.windows(marker.len()).position(|w| w == marker) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(with);
        rest = &rest[at + marker.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fn into_reply(resp: FakeResponse) -> warp::reply::Response {
    use warp::Reply;
    let mut out = match resp.raw {
        Some(raw) => raw.into_response(),
        None => resp.body.into_response(),
    };
    *out.status_mut() =
        warp::http::StatusCode::from_u16(resp.status).unwrap_or(warp::http::StatusCode::OK);
    out.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static(resp.content_type),
    );
    if let Some(loc) = resp
        .location
        .and_then(|l| warp::http::HeaderValue::from_str(&l).ok())
    {
        out.headers_mut().insert("location", loc);
    }
    for (name, value) in resp.headers {
        if let Ok(v) = warp::http::HeaderValue::from_str(&value) {
            out.headers_mut().insert(name, v);
        }
    }
    if let Some(ra) = resp.retry_after {
        if let Ok(v) = warp::http::HeaderValue::from_str(&ra) {
            out.headers_mut().insert("retry-after", v);
        }
    }
    out
}

/// `Token="…"` out of a MediaBrowser/Emby `Authorization` header.
pub(crate) fn mediabrowser_token(header: &str) -> Option<String> {
    let (_, rest) = header.split_once(' ')?;
    rest.split(',').find_map(|part| {
        let (k, v) = part.trim().split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("Token")
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// Unix ms → `2024-05-01T10:00:00.0000000Z` (how Jellyfin and Emby write dates).
pub(crate) fn dotnet_date(ms: Millis) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    format!("{}.0000000Z", s.trim_end_matches('Z'))
}

/// Provider key as Jellyfin and Emby spell it in `ProviderIds`.
pub(crate) fn provider_name(key: &str) -> String {
    let mut c = key.chars();
    match c.next() {
        Some(first) => first.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}
