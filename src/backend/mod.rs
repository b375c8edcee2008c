//! The media servers' HTTP clients (DESIGN.md §10): one file per server, each implementing
//! [`BackendApi`] of `watchstate-actors` with reqwest (rustls).
//!
//! - [`plex`]: Plex Media Server (`X-Plex-Token`), positions in ms, dates in unix seconds.
//! - [`jellyfin`]: Jellyfin 10.9+ routes (`Authorization: MediaBrowser Token="…"`), ticks.
//! - [`emby`]: Emby 4.8 (`api_key` in the query and `X-Emby-Token`), ticks.
//! - [`mediabrowser`]: the item shape Jellyfin and Emby share (`BaseItemDto`, `UserData`).
//! - [`http`]: the one place that sends a request and turns failures into [`BackendError`].
//! - [`lenient`]: reading their JSON item by item and numbers leniently, so that one odd item
//!   is skipped rather than failing a page.
//!
//! Build a client with [`build_client`]; every call is made for [`ClientConfig::user_id`].

/// A real answer of `tests/fixtures/responses/` (`"plex/x.json"`), for the clients' unit tests.
#[cfg(test)]
macro_rules! real_answer {
    ($path:literal) => {
        include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/responses/",
            $path
        ))
    };
}

pub mod emby;
pub mod http;
pub mod jellyfin;
pub mod lenient;
pub mod mediabrowser;
pub mod plex;

pub use emby::EmbyClient;
pub use jellyfin::JellyfinClient;
pub use plex::PlexClient;

use std::sync::Arc;
use std::time::Duration;
use watchstate_actors::backend::{BackendApi, BackendError};
use watchstate_actors::event::BackendKind;

/// Whether a listing goes on after a page of `got` items, of `asked`, that started at `start`.
/// The server's total decides, unless the listing already went past it: then the total is
/// wrong (Jellyfin 10.5 answered 0 with a full page, jellyfin#3030; 10.4 one too few,
/// jellyfin#2116), and a full page says there may be more, but only when the answer confirms
/// that it starts where it was asked to (`start_confirmed`: Jellyfin's `StartIndex`, Plex's
/// `offset`). A server or proxy that ignores the start index would otherwise send its first
/// page for ever. A total short by less than a page that ends exactly on a page boundary is
/// not caught: telling it from a right one would cost an empty page on every listing whose
/// size is a multiple of the page. Without a total, a full page goes on.
pub(crate) fn more_pages(
    start: u64,
    got: u64,
    asked: u64,
    total: Option<u64>,
    start_confirmed: bool,
) -> bool {
    let end = start + got;
    got > 0
        && match total {
            Some(total) if end < total => true,
            Some(total) if end > total => start_confirmed && got >= asked,
            Some(_) => false,
            None => got >= asked,
        }
}

/// What a client needs to talk to one media server for one user.
#[derive(Clone)]
pub struct ClientConfig {
    /// Which server API to speak.
    pub kind: BackendKind,
    /// Where the server answers, possibly with a path prefix (`http://host/emby`).
    pub base_url: url::Url,
    /// The API key or user token; sent in a header (Emby: also as the `api_key` query
    /// parameter its spec names), never logged, cut out of error texts.
    pub token: String,
    /// The server's id of the user whose state is read and written (Jellyfin/Emby user id;
    /// for Plex the token already names the account, the id is only used in logs).
    pub user_id: String,
    /// Bound on each whole request (connect, send, read the body).
    pub timeout: Duration,
    /// `ignore_libraries` of the backend: Jellyfin and Emby clients find out which items
    /// those libraries hold (Plex names the section on every item).
    pub ignore_libraries: Vec<String>,
}

impl std::fmt::Debug for ClientConfig {
    // Hand-written so that the token never reaches a log line through `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("kind", &self.kind)
            .field("base_url", &self.base_url.as_str())
            .field("token", &"<redacted>")
            .field("user_id", &self.user_id)
            .field("timeout", &self.timeout)
            .field("ignore_libraries", &self.ignore_libraries)
            .finish()
    }
}

/// The client for `cfg.kind`, ready to use. Makes no request. Fails only when the HTTP client
/// cannot be built: a token that cannot be an HTTP header value gives
/// `BackendError::Client { status: 0, .. }` (not retryable: the configuration must change).
pub fn build_client(cfg: ClientConfig) -> Result<Arc<dyn BackendApi>, BackendError> {
    Ok(match cfg.kind {
        BackendKind::Plex => Arc::new(PlexClient::new(cfg)?),
        BackendKind::Jellyfin => Arc::new(JellyfinClient::new(cfg)?),
        BackendKind::Emby => Arc::new(EmbyClient::new(cfg)?),
    })
}

/// Shows asked for in one lookup request. 100 ids (Jellyfin's are 32 hex digits, sent as
/// repeated `ids=`) keep the URL under 4 KB, well below the 8 KB many servers and proxies
/// accept, whatever the page size.
pub(crate) const SHOW_LOOKUP_BATCH: usize = 100;

/// Show ids looked up once per show and kept for later pages and later listings, so that a
/// listing of N episodes costs one extra request per page (Jellyfin/Emby) or per show (Plex),
/// not one per episode. Bounded: cleared when full (show ids rarely change; a refetch is cheap).
#[derive(Debug, Default)]
pub(crate) struct SeriesIdCache {
    /// show id on the server → the show's provider ids (empty when it has none).
    map: std::sync::Mutex<std::collections::HashMap<String, watchstate_actors::event::ExternalIds>>,
}

impl SeriesIdCache {
    /// Past this many shows the cache starts over instead of growing without bound.
    const CAPACITY: usize = 20_000;

    pub(crate) fn get(&self, show_id: &str) -> Option<watchstate_actors::event::ExternalIds> {
        self.lock().get(show_id).cloned()
    }

    pub(crate) fn insert(&self, show_id: String, ids: watchstate_actors::event::ExternalIds) {
        let mut map = self.lock();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(show_id, ids);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, watchstate_actors::event::ExternalIds>,
    > {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Maps a provider name as a server spells it (`Imdb`, `TheMovieDb`, `thetvdb`) to the
/// system's lower-case key; `None` for providers the sync does not match on.
pub(crate) fn provider_key(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "imdb" => "imdb",
        "tmdb" | "themoviedb" => "tmdb",
        "tvdb" | "thetvdb" => "tvdb",
        "tvmaze" => "tvmaze",
        "tvrage" => "tvrage",
        "anidb" => "anidb",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_client_shows_its_token_in_debug_output() {
        for kind in [BackendKind::Plex, BackendKind::Jellyfin, BackendKind::Emby] {
            let cfg = ClientConfig {
                kind,
                base_url: url::Url::parse("http://127.0.0.1:9/").unwrap(),
                token: "s3cret-t0ken".to_string(),
                user_id: "u1".to_string(),
                timeout: Duration::from_secs(1),
                ignore_libraries: Vec::new(),
            };
            assert!(!format!("{cfg:?}").contains("s3cret"));
            let text = match kind {
                BackendKind::Plex => format!("{:?}", PlexClient::new(cfg).unwrap()),
                BackendKind::Jellyfin => format!("{:?}", JellyfinClient::new(cfg).unwrap()),
                BackendKind::Emby => format!("{:?}", EmbyClient::new(cfg).unwrap()),
            };
            assert!(!text.contains("s3cret"), "{kind}: {text}");
        }
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused() {
        let cfg = ClientConfig {
            kind: BackendKind::Emby,
            base_url: url::Url::parse("http://127.0.0.1:9/").unwrap(),
            token: "bad\ntoken".to_string(),
            user_id: "u1".to_string(),
            timeout: Duration::from_secs(1),
            ignore_libraries: Vec::new(),
        };
        assert!(build_client(cfg).is_err());
    }

    #[test]
    fn provider_names_map_to_system_keys() {
        assert_eq!(provider_key("Imdb"), Some("imdb"));
        assert_eq!(provider_key("TheMovieDb"), Some("tmdb"));
        assert_eq!(provider_key("thetvdb"), Some("tvdb"));
        assert_eq!(provider_key("TmdbCollection"), None);
    }
}
