//! What an actor needs from its media server (DESIGN.md §10), as a trait. The real clients
//! (reqwest) live in `src/backend/`; tests use doubles. Units here are the system's own:
//! milliseconds for positions and durations, [`Millis`] for dates.

use crate::event::{ExternalIds, ItemType, Millis};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Who the server says it is (`/identity` on Plex, `/System/Info/Public` on Jellyfin and Emby).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerIdentity {
    pub server_id: String,
    pub name: Option<String>,
    pub version: Option<String>,
}

/// A user of the server, as its user list names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerUser {
    pub id: String,
    pub name: String,
}

/// One movie or episode as the backend reports it for the actor's user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteItem {
    /// The item's id on that server (Plex ratingKey, Jellyfin/Emby item id).
    pub item_id: String,
    pub item_type: ItemType,
    pub title: Option<String>,
    pub series_title: Option<String>,
    pub year: Option<u32>,
    pub season: Option<u32>,
    pub episode: Option<u32>,
    /// The item's own provider ids, lower-case keys.
    pub external_ids: ExternalIds,
    /// The show's provider ids (episodes only).
    pub series_external_ids: ExternalIds,
    pub played: bool,
    /// The server sent no play state for it (a Jellyfin or Emby item without `UserData`,
    /// which their APIs allow): `played`, `last_played_at` and `position_ms` say nothing, and
    /// the sync registers the item without taking any state from it. Read as unplayed, a
    /// server that leaves the user data out would unmark everything elsewhere.
    #[serde(default)]
    pub state_unknown: bool,
    /// When the user last played it, if the server knows.
    pub last_played_at: Option<Millis>,
    /// Resume position; 0 when none.
    pub position_ms: u64,
    pub duration_ms: Option<u64>,
    /// The library (Plex section, Jellyfin/Emby parent library) it belongs to, when known.
    pub library_id: Option<String>,
}

/// One page of a library listing. `next` is an opaque cursor the client understands; the
/// actor persists it as the sync checkpoint so an interrupted sync resumes where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemPage {
    pub items: Vec<RemoteItem>,
    /// `None` when this was the last page.
    pub next: Option<String>,
    /// Total number of items the listing will produce, when the server says.
    pub total: Option<u64>,
    /// Items of this page the client could not read (a wrong-typed field, no id): skipped and
    /// logged, so that one odd item does not stop the listing.
    #[serde(default)]
    pub skipped: u64,
    /// Items of this page, counted in `total`, that are no items of the sync: placeholders
    /// (episodes with no file), and whatever else the listing brought besides movies and
    /// episodes. They count towards the sync's progress.
    #[serde(default)]
    pub left_out: u64,
}

/// Spaces out the requests a client makes for one sync run (`sync.max_requests_per_second`).
/// A sync runs each listing call inside [`RequestPacer::scope`]; the HTTP clients call
/// [`pace_request`] before every request, so a listing call that needs several (Plex's
/// sections, show lookups, the ids of ignored libraries) is paced request by request.
/// Requests made outside a sync (pushes, webhook lookups) are never held back.
#[derive(Debug)]
pub struct RequestPacer {
    gap: Duration,
    /// When the next request may start.
    next: std::sync::Mutex<Option<tokio::time::Instant>>,
}

tokio::task_local! {
    static PACER: std::sync::Arc<RequestPacer>;
}

impl RequestPacer {
    /// At most `per_second` requests a second; `None` when that is no limit (0 or less).
    pub fn new(per_second: f64) -> Option<std::sync::Arc<RequestPacer>> {
        (per_second > 0.0 && per_second.is_finite()).then(|| {
            std::sync::Arc::new(RequestPacer {
                gap: Duration::from_secs_f64(1.0 / per_second),
                next: std::sync::Mutex::new(None),
            })
        })
    }

    /// Wait for this request's turn.
    pub async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.gap);
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Run `fut` with every request it makes through [`pace_request`] paced by `pacer`.
    pub async fn scope<F: std::future::Future>(
        pacer: Option<std::sync::Arc<RequestPacer>>,
        fut: F,
    ) -> F::Output {
        match pacer {
            Some(p) => PACER.scope(p, fut).await,
            None => fut.await,
        }
    }
}

/// Called by a client before each request: waits for its turn when the request is part of a
/// paced sync ([`RequestPacer::scope`]), returns at once otherwise.
pub async fn pace_request() {
    if let Ok(p) = PACER.try_with(|p| p.clone()) {
        p.wait().await;
    }
}

/// Why a call to a media server failed; decides whether the outbox retries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum BackendError {
    #[error("authentication failed (HTTP {status}): check the backend's token")]
    Auth { status: u16 },
    #[error("not found on the media server: {what}")]
    NotFound { what: String },
    #[error("rate limited by the media server{}", retry_after_text(.retry_after_ms))]
    RateLimited { retry_after_ms: Option<u64> },
    #[error("media server error HTTP {status}: {message}{}", retry_after_text(.retry_after_ms))]
    Server {
        status: u16,
        message: String,
        /// The `Retry-After` of a 503 (a server in maintenance, or a proxy saying when it
        /// will be back); left out of the serialised form when there is none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    #[error("request rejected with HTTP {status}: {message}")]
    Client { status: u16, message: String },
    #[error("request timed out after {after_ms} ms")]
    Timeout { after_ms: u64 },
    #[error("network error: {message}")]
    Network { message: String },
    #[error("unexpected answer from the media server: {message}")]
    BadResponse { message: String },
    /// A web page answered instead of the media server's API: the URL reaches a web app, a
    /// proxy's sign-in page or a maintenance page, and every request to it gets one. So it
    /// holds every push like a server that is down, and is retried: a maintenance page
    /// passes, and a wrong URL ends as dead letters (retried by hand once it is fixed). A
    /// write answered with a page is read back first (the push's `read_back`): a server that
    /// confirms writes with a small page is not this.
    #[error("not the media server's API: {message}")]
    WebPage { message: String },
    /// A write was answered with a web page and the item, read back through the API, is not
    /// in the state written. About this item only: retried, holding nothing else.
    #[error("write not confirmed: {message}")]
    Unconfirmed { message: String },
}

fn retry_after_text(ms: &Option<u64>) -> String {
    match ms {
        Some(ms) => format!(" (retry after {} s)", ms.div_ceil(1000)),
        None => String::new(),
    }
}

impl BackendError {
    /// Network errors, timeouts, 408, 429, 5xx and a web page instead of the API are retried
    /// (DESIGN.md §7); any other 4xx and an answer we cannot read are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            BackendError::RateLimited { .. }
            | BackendError::Server { .. }
            | BackendError::Timeout { .. }
            | BackendError::Network { .. }
            | BackendError::WebPage { .. }
            | BackendError::Unconfirmed { .. } => true,
            BackendError::Client { status, .. } => *status == 408,
            BackendError::Auth { .. }
            | BackendError::NotFound { .. }
            | BackendError::BadResponse { .. } => false,
        }
    }

    /// Whether the error says the server as a whole cannot take requests now (it is
    /// unreachable, overloaded, behind a gateway that cannot reach it, or rate limiting), not
    /// that this one request failed: every push to it waits, not only the one that failed.
    /// A 500 is not one: it is often about one item.
    pub fn is_server_wide(&self) -> bool {
        match self {
            BackendError::RateLimited { .. }
            | BackendError::Timeout { .. }
            | BackendError::Network { .. }
            | BackendError::WebPage { .. } => true,
            BackendError::Server { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    /// The server's `Retry-After`, when it sent one (with a 429 or a 503).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::RateLimited {
                retry_after_ms: Some(ms),
            }
            | BackendError::Server {
                retry_after_ms: Some(ms),
                ..
            } => Some(Duration::from_millis(*ms)),
            _ => None,
        }
    }

    /// Whether the server said how long to wait (a 429, with or without `Retry-After`, or a
    /// 503 with one): that wait holds every push to it even when another push works
    /// meanwhile.
    pub fn asks_to_wait(&self) -> bool {
        match self {
            BackendError::RateLimited { .. } => true,
            // A `Retry-After` date already past asks for nothing.
            _ => self.retry_after().is_some_and(|d| !d.is_zero()),
        }
    }
}

/// A media server, seen from one (user, backend) pair: every call is for that pair's user.
#[async_trait]
pub trait BackendApi: Send + Sync + 'static {
    /// The server's identity: each scheduled sync from the start compares its id with the
    /// configured `server_id`.
    async fn identity(&self) -> Result<ServerIdentity, BackendError>;

    /// The server's users, where its API lists them for this token (Jellyfin and Emby with an
    /// API key), to help pick `user_id`; `None` where it has no such list (Plex: a token is one
    /// account).
    async fn users(&self) -> Result<Option<Vec<ServerUser>>, BackendError> {
        Ok(None)
    }

    /// One page of the user's movies and episodes. `cursor` is `None` for the first page and
    /// otherwise a value of [`ItemPage::next`] returned earlier (possibly before a restart).
    async fn list_items(
        &self,
        cursor: Option<&str>,
        page_size: usize,
    ) -> Result<ItemPage, BackendError>;

    /// One item by its id on this server, with ids, series ids, numbers and the user's state.
    /// `Ok(None)` when the server does not know it.
    async fn get_item(&self, item_id: &str) -> Result<Option<RemoteItem>, BackendError>;

    /// Mark played (with the time it was played, when the server accepts one) or unplayed.
    async fn set_played(
        &self,
        item_id: &str,
        played: bool,
        at: Option<Millis>,
    ) -> Result<(), BackendError>;

    /// False once the client knows that the server cannot store a resume position (Jellyfin
    /// before 10.9 has no API for it): position changes are then not queued for it, where
    /// each would only become a dead letter.
    fn accepts_positions(&self) -> bool {
        true
    }

    /// Set the resume position of an unplayed item; `at` is when it was reached (the
    /// item's last-played date where the server keeps one: Jellyfin and Emby order their
    /// "Continue Watching" by it).
    async fn set_position(
        &self,
        item_id: &str,
        position_ms: u64,
        duration_ms: Option<u64>,
        at: Option<Millis>,
    ) -> Result<(), BackendError>;
}
