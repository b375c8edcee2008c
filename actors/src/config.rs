//! What the actors need to know about each (user, backend) pair and about sync, as typed
//! values the lead builds from `config.toml` (DESIGN.md §9). No parsing happens here.

use crate::event::BackendKind;
use crate::store::PairKey;
use std::time::Duration;

/// One configured (user, backend): everything a pair actor needs besides its client.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSpec {
    /// Which pair this is; also its prefix in the store.
    pub key: PairKey,
    /// Shown in status as `type`.
    pub kind: BackendKind,
    /// The media server's id, shown in status (routing is done by the lead).
    pub server_id: String,
    /// The backend's id of this user, shown in status.
    pub backend_user_id: String,
    /// `false`: events from this backend never change state (DESIGN.md §6 rule 7).
    pub import: bool,
    /// `false`: nothing is ever pushed to this backend.
    pub export: bool,
    /// `false`: this backend's unmarks (webhook or found by the sync) change nothing; its
    /// plays and positions still do.
    pub import_unplayed: bool,
    /// How often the scheduled sync runs; `None` disables it for this pair.
    pub sync_interval: Option<Duration>,
    /// Library ids whose events and items are ignored.
    pub ignore_libraries: Vec<String>,
}

/// Process-wide sync and push settings (`[sync]` of `config.toml`).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncSettings {
    /// Whether resume positions propagate at all.
    pub progress: bool,
    /// Positions at or below this are not propagated (a few seconds in is not "resume").
    pub progress_min: Duration,
    /// A target's position is only changed when it differs by more than this.
    pub progress_threshold: Duration,
    /// Attempts per push before it becomes a dead letter.
    pub push_attempts: u32,
    /// Scheduled sync request rate per pair, so a sync never floods a server: pages start
    /// this far apart, and so does every request a client makes for one ([`crate::backend::RequestPacer`]).
    pub max_requests_per_second: f64,
    /// Items per `list_items` page during a sync.
    pub page_size: usize,
    /// First retry delay of a failed push; doubles per attempt.
    pub retry_base: Duration,
    /// Longest retry delay of a failed push.
    pub retry_max: Duration,
    /// Delay before the first sync of a never-synced or overdue pair (plus a per-pair stagger
    /// of up to the same amount, so many actors do not hit one server at once).
    pub first_sync_delay: Duration,
    /// Relative jitter (0.1 = ±10 %) on sync intervals and retry delays.
    pub jitter: f64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            progress: true,
            progress_min: Duration::from_secs(60),
            progress_threshold: Duration::from_secs(30),
            push_attempts: 10,
            max_requests_per_second: 10.0,
            page_size: 200,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            first_sync_delay: Duration::from_secs(30),
            jitter: 0.1,
        }
    }
}

/// The default scheduled sync interval (DESIGN.md §6 rule 8), for the lead's config defaults.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_secs(12 * 3600);
