//! Routing (DESIGN.md §4): which configured (user, backend) pairs a decoded event goes to.
//!
//! - the event's server id must equal the backend's configured server id (always);
//! - a non-generic event's user id must equal that backend's configured user id;
//! - a generic event (`item_added`) goes to every pair on that server;
//! - ids compare with [`normalize_id`] (case-insensitive, dashes ignored);
//! - `ignore` events and state events about something that is not a movie or an episode are
//!   ignored before matching; `test` events are matched, then answered as a test.
//!
//! Requests that match nothing are the most common set-up mistake, so [`UnmatchedLog`] keeps
//! the last few with the ids they carried, for the status API.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use watchstate_actors::event::{normalize_id, EventKind, Millis, Sender, WebhookEvent};
use watchstate_actors::store::PairKey;

/// One configured (user, backend) pair, as routing needs it. Built from the config by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// The user's name in `config.toml`.
    pub user: String,
    /// The backend's name under that user.
    pub backend: String,
    /// The media server's id (Plex machine identifier, Jellyfin/Emby server id).
    pub server_id: String,
    /// The user's id on that server (Plex account id, Jellyfin/Emby user id).
    pub user_id: String,
}

impl RouteTarget {
    fn pair(&self) -> PairKey {
        PairKey::new(self.user.clone(), self.backend.clone())
    }
}

/// What to do with a decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// Hand the event to these pairs (never empty).
    Routed(Vec<PairKey>),
    /// Decoded, understood, and nothing to do; `reason` says why.
    Ignored { reason: String },
    /// No configured pair matches the ids the event carried; `reason` names them.
    /// `configured` lists the ids that are configured instead: for the status and the log,
    /// never for the webhook's caller (who may be anyone who can reach the URL).
    Unmatched { reason: String, configured: String },
    /// A sender's test notification; `routed` lists the pairs real events would go to.
    Test { routed: Vec<PairKey> },
}

/// Routes one event to the configured targets. Pure: same inputs, same answer. Builds the
/// lookup tables each time: the service keeps a [`RouteTable`] instead.
pub fn route(event: &WebhookEvent, targets: &[RouteTarget]) -> RouteOutcome {
    RouteTable::new(targets.to_vec()).route(event)
}

/// The configured targets indexed by normalised server id and user id, built once from the
/// config, so that routing an event costs two hash lookups however many pairs there are.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    targets: Vec<RouteTarget>,
    /// Normalised server id → its targets (indexes into `targets`, config order) and, by
    /// normalised user id, those of each user.
    servers: HashMap<String, ServerTargets>,
}

#[derive(Debug, Clone, Default)]
struct ServerTargets {
    all: Vec<usize>,
    by_user: HashMap<String, Vec<usize>>,
}

impl RouteTable {
    pub fn new(targets: Vec<RouteTarget>) -> RouteTable {
        let mut servers: HashMap<String, ServerTargets> = HashMap::new();
        for (i, t) in targets.iter().enumerate() {
            let server = normalize_id(&t.server_id);
            if server.is_empty() {
                continue;
            }
            let entry = servers.entry(server).or_default();
            entry.all.push(i);
            entry
                .by_user
                .entry(normalize_id(&t.user_id))
                .or_default()
                .push(i);
        }
        RouteTable { targets, servers }
    }

    pub fn targets(&self) -> &[RouteTarget] {
        &self.targets
    }

    fn pairs(&self, indexes: &[usize]) -> Vec<PairKey> {
        dedup(indexes.iter().map(|i| self.targets[*i].pair()).collect())
    }

    /// Routes one event (see the module documentation for the rules).
    pub fn route(&self, event: &WebhookEvent) -> RouteOutcome {
        if event.event == EventKind::Ignore {
            return RouteOutcome::Ignored {
                reason: format!("{} is not used", describe_event(event)),
            };
        }
        let needs_item = event.event.is_state_event() || event.event == EventKind::ItemAdded;
        if needs_item && event.item_type.is_none() {
            return RouteOutcome::Ignored {
                reason: format!("{} is not about a movie or episode", describe_event(event)),
            };
        }

        let server = normalize_id(&event.backend_id);
        let on_server = self.servers.get(&server).filter(|_| !server.is_empty());
        let user = event
            .user_id
            .as_deref()
            .map(normalize_id)
            .filter(|u| !u.is_empty());
        let of_user = |u: &str| -> &[usize] {
            on_server
                .and_then(|s| s.by_user.get(u))
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        let all_on_server = on_server.map(|s| s.all.as_slice()).unwrap_or_default();

        if event.event == EventKind::Test {
            // Emby's test names whoever pressed the button: when that is no configured user,
            // the server's pairs are the ones real events would reach.
            let routed = match user.as_deref().map(of_user) {
                Some(pairs) if !pairs.is_empty() => self.pairs(pairs),
                _ => self.pairs(all_on_server),
            };
            return RouteOutcome::Test { routed };
        }
        if needs_item
            && event.item_id.is_none()
            && event.external_ids.is_empty()
            && event.series_external_ids.is_empty()
        {
            return RouteOutcome::Ignored {
                reason: format!(
                    "{} names no item (no item id, no external ids): a test notification (the Jellyfin plugin's Test button sends none), or a template that leaves them out",
                    describe_event(event)
                ),
            };
        }

        if server.is_empty() {
            return RouteOutcome::Unmatched {
                reason: format!("the {} webhook carried no server id", event.sender),
                configured: configured_servers(&self.targets),
            };
        }
        if all_on_server.is_empty() {
            return RouteOutcome::Unmatched {
                reason: format!(
                    "no backend with server id {} is configured",
                    event.backend_id
                ),
                configured: configured_servers(&self.targets),
            };
        }
        if event.generic {
            return RouteOutcome::Routed(self.pairs(all_on_server));
        }
        let Some(user) = user else {
            return RouteOutcome::Unmatched {
                reason: format!(
                    "the {} event {} for server id {} carried no user id, and only library events go to every user{}",
                    event.sender,
                    event.raw_event,
                    event.backend_id,
                    no_user_hint(event.sender)
                ),
                configured: String::new(),
            };
        };
        let routed = of_user(&user);
        if routed.is_empty() {
            let configured = all_on_server
                .iter()
                .map(|i| {
                    let t = &self.targets[*i];
                    format!("{}/{} (user id {})", t.user, t.backend, t.user_id)
                })
                .collect::<Vec<_>>()
                .join(", ");
            return RouteOutcome::Unmatched {
                reason: format!(
                    "no backend with server id {} and user id {} is configured",
                    event.backend_id,
                    event.user_id.as_deref().unwrap_or_default(),
                ),
                configured: format!("configured on that server: {configured}"),
            };
        }
        RouteOutcome::Routed(self.pairs(routed))
    }
}

fn describe_event(event: &WebhookEvent) -> String {
    if event.raw_event.is_empty() {
        format!("a {} event without a name", event.sender)
    } else {
        event.raw_event.clone()
    }
}

fn no_user_hint(sender: Sender) -> &'static str {
    match sender {
        Sender::Emby => " (in Emby's webhook settings, include all users)",
        Sender::Jellyfin => {
            " (in the Jellyfin webhook plugin, select the users to send events for)"
        }
        Sender::Plex | Sender::Tautulli => "",
    }
}

fn configured_servers(targets: &[RouteTarget]) -> String {
    let mut ids: Vec<&str> = targets.iter().map(|t| t.server_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        "configured server ids: none".into()
    } else {
        format!("configured server ids: {}", ids.join(", "))
    }
}

impl RouteOutcome {
    /// The whole reason, with what is configured instead: for the status and the log.
    pub fn full_reason(&self) -> Option<String> {
        match self {
            RouteOutcome::Unmatched { reason, configured } if !configured.is_empty() => {
                Some(format!("{reason}; {configured}"))
            }
            RouteOutcome::Unmatched { reason, .. } | RouteOutcome::Ignored { reason } => {
                Some(reason.clone())
            }
            RouteOutcome::Routed(_) | RouteOutcome::Test { .. } => None,
        }
    }
}

fn dedup(mut pairs: Vec<PairKey>) -> Vec<PairKey> {
    let mut seen = Vec::with_capacity(pairs.len());
    pairs.retain(|p| {
        if seen.contains(p) {
            false
        } else {
            seen.push(p.clone());
            true
        }
    });
    pairs
}

/// One request that matched no pair, as the status API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnmatchedRecord {
    /// When it was received (ms since the epoch).
    pub at: Millis,
    pub sender: Sender,
    /// The sender's own event name.
    pub raw_event: String,
    /// The ids it carried: what the user compares with the config.
    pub backend_id: String,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub reason: String,
}

/// The last unmatched requests (a bounded ring) and how many there were in all.
/// Shared by the HTTP handlers (record) and the status API (snapshot); cheap to lock.
#[derive(Debug)]
pub struct UnmatchedLog {
    /// Oldest first; never longer than `capacity`.
    entries: Mutex<VecDeque<UnmatchedRecord>>,
    /// How many records are kept; older ones are dropped.
    capacity: usize,
    /// Every unmatched request since start, including dropped ones.
    total: AtomicU64,
}

impl Default for UnmatchedLog {
    fn default() -> Self {
        UnmatchedLog::new(UnmatchedLog::DEFAULT_CAPACITY)
    }
}

impl UnmatchedLog {
    pub const DEFAULT_CAPACITY: usize = 50;

    pub fn new(capacity: usize) -> Self {
        UnmatchedLog {
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            total: AtomicU64::new(0),
        }
    }

    /// Records an unmatched event at time `at`.
    pub fn record(&self, event: &WebhookEvent, reason: &str, at: Millis) {
        self.push(UnmatchedRecord {
            at,
            sender: event.sender,
            raw_event: event.raw_event.clone(),
            backend_id: event.backend_id.clone(),
            user_id: event.user_id.clone(),
            user_name: event.user_name.clone(),
            reason: reason.to_string(),
        });
    }

    /// Records an unmatched event received now.
    pub fn record_now(&self, event: &WebhookEvent, reason: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as Millis)
            .unwrap_or_default();
        self.record(event, reason, now);
    }

    pub fn push(&self, record: UnmatchedRecord) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        while entries.len() >= self.capacity {
            entries.pop_front();
        }
        entries.push_back(record);
    }

    /// The kept records, newest first.
    pub fn snapshot(&self) -> Vec<UnmatchedRecord> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.iter().rev().cloned().collect()
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watchstate_actors::event::{ExternalIds, ItemType};

    fn target(user: &str, backend: &str, server: &str, uid: &str) -> RouteTarget {
        RouteTarget {
            user: user.into(),
            backend: backend.into(),
            server_id: server.into(),
            user_id: uid.into(),
        }
    }

    fn targets() -> Vec<RouteTarget> {
        vec![
            target(
                "alice",
                "jelly",
                "16588A9F-062A-40C4-9665-86B1D220BFFC",
                "02700C83-44D5-4261-9B39-319296C0D4C7",
            ),
            target("bob", "jelly", "16588a9f062a40c4966586b1d220bffc", "b0b"),
            target("alice", "plex", "plexsrv", "1"),
        ]
    }

    fn ev(kind: EventKind, server: &str, user: Option<&str>) -> WebhookEvent {
        WebhookEvent {
            sender: Sender::Jellyfin,
            backend_id: server.into(),
            user_id: user.map(String::from),
            user_name: None,
            event: kind,
            raw_event: "Raw".into(),
            generic: kind == EventKind::ItemAdded,
            item_type: Some(ItemType::Movie),
            item_id: Some("i".into()),
            title: None,
            series_title: None,
            season: None,
            episode: None,
            year: None,
            played: None,
            position_ms: None,
            duration_ms: None,
            external_ids: ExternalIds::new(),
            series_external_ids: ExternalIds::new(),
            library_id: None,
        }
    }

    const JF: &str = "16588a9f062a40c4966586b1d220bffc";

    #[test]
    fn user_scoped_event_goes_to_one_pair_with_normalised_ids() {
        let e = ev(
            EventKind::Play,
            JF,
            Some("02700c8344d542619b39319296c0d4c7"),
        );
        assert_eq!(
            route(&e, &targets()),
            RouteOutcome::Routed(vec![PairKey::new("alice", "jelly")])
        );
        let e = ev(
            EventKind::Play,
            "16588A9F062A40C4966586B1D220BFFC",
            Some("B0B"),
        );
        assert_eq!(
            route(&e, &targets()),
            RouteOutcome::Routed(vec![PairKey::new("bob", "jelly")])
        );
    }

    #[test]
    fn generic_event_fans_out_to_every_user_of_the_server() {
        let e = ev(EventKind::ItemAdded, JF, None);
        assert_eq!(
            route(&e, &targets()),
            RouteOutcome::Routed(vec![
                PairKey::new("alice", "jelly"),
                PairKey::new("bob", "jelly")
            ])
        );
    }

    #[test]
    fn mismatched_ids_are_unmatched_with_the_ids() {
        let e = ev(EventKind::Play, "other", Some("1"));
        match route(&e, &targets()) {
            RouteOutcome::Unmatched { reason, configured } => {
                assert!(reason.contains("server id other"), "{reason}");
                // What is configured is kept apart from what the caller is told.
                assert!(!reason.contains("plexsrv"), "{reason}");
                assert!(configured.contains("plexsrv"), "{configured}");
            }
            o => panic!("{o:?}"),
        }
        let e = ev(EventKind::Play, JF, Some("stranger"));
        let outcome = route(&e, &targets());
        match &outcome {
            RouteOutcome::Unmatched { reason, configured } => {
                assert!(reason.contains("user id stranger"), "{reason}");
                assert!(!reason.contains("b0b"), "{reason}");
                assert!(
                    configured.contains("bob/jelly (user id b0b)"),
                    "{configured}"
                );
            }
            o => panic!("{o:?}"),
        }
        let full = outcome.full_reason().unwrap();
        assert!(
            full.contains("user id stranger") && full.contains("bob/jelly (user id b0b)"),
            "{full}"
        );
        let e = ev(EventKind::Play, JF, None);
        assert!(matches!(
            route(&e, &targets()),
            RouteOutcome::Unmatched { .. }
        ));
        let e = ev(EventKind::Play, "", Some("1"));
        match route(&e, &targets()) {
            RouteOutcome::Unmatched { reason, .. } => {
                assert!(reason.contains("no server id"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
        let e = ev(EventKind::ItemAdded, "nope", None);
        assert!(matches!(
            route(&e, &targets()),
            RouteOutcome::Unmatched { .. }
        ));
        let e = ev(EventKind::Play, JF, Some("b0b"));
        assert!(
            matches!(route(&e, &[]), RouteOutcome::Unmatched { configured, .. } if configured.contains("none"))
        );
    }

    #[test]
    fn ignore_and_non_items_are_ignored() {
        let mut e = ev(EventKind::Ignore, JF, Some("b0b"));
        e.raw_event = "media.rate".into();
        assert_eq!(
            route(&e, &targets()),
            RouteOutcome::Ignored {
                reason: "media.rate is not used".into()
            }
        );
        let mut e = ev(EventKind::Play, JF, Some("b0b"));
        e.item_type = None;
        assert!(
            matches!(route(&e, &targets()), RouteOutcome::Ignored { reason } if reason.contains("not about a movie or episode"))
        );
        let mut e = ev(EventKind::ItemAdded, JF, None);
        e.item_type = None;
        assert!(matches!(
            route(&e, &targets()),
            RouteOutcome::Ignored { .. }
        ));
    }

    #[test]
    fn test_events_report_the_pairs_they_would_reach() {
        let mut e = ev(EventKind::Test, JF, None);
        e.item_type = None;
        assert_eq!(
            route(&e, &targets()),
            RouteOutcome::Test {
                routed: vec![PairKey::new("alice", "jelly"), PairKey::new("bob", "jelly")]
            }
        );
        let e = ev(EventKind::Test, JF, Some("b0b"));
        assert_eq!(
            route(&e, &targets()),
            RouteOutcome::Test {
                routed: vec![PairKey::new("bob", "jelly")]
            }
        );
        let e = ev(EventKind::Test, "unknown", None);
        assert_eq!(route(&e, &targets()), RouteOutcome::Test { routed: vec![] });
        // Sent by someone who is no configured user (Emby names whoever pressed the button).
        let e = ev(EventKind::Test, JF, Some("admin"));
        assert_eq!(
            route(&e, &targets()),
            RouteOutcome::Test {
                routed: vec![PairKey::new("alice", "jelly"), PairKey::new("bob", "jelly")]
            }
        );
    }

    /// A state or item-added event about no item (the Jellyfin plugin's test button sends
    /// only the server and the notification type) is ignored, not journaled or unmatched.
    #[test]
    fn an_event_naming_no_item_is_ignored() {
        for (kind, user) in [
            (EventKind::ItemAdded, None),
            (EventKind::Play, Some("b0b")),
            (EventKind::Play, None),
        ] {
            let mut e = ev(kind, JF, user);
            e.item_id = None;
            e.external_ids.clear();
            e.series_external_ids.clear();
            match route(&e, &targets()) {
                RouteOutcome::Ignored { reason } => {
                    assert!(reason.contains("names no item"), "{reason}")
                }
                other => panic!("{kind:?}: {other:?}"),
            }
            // With an external id it is about an item.
            e.external_ids.insert("imdb".into(), "tt1".into());
            assert!(!matches!(
                route(&e, &targets()),
                RouteOutcome::Ignored { .. }
            ));
        }
    }

    #[test]
    fn duplicate_targets_are_routed_once() {
        let mut t = targets();
        t.push(t[0].clone());
        let e = ev(
            EventKind::Play,
            JF,
            Some("02700c8344d542619b39319296c0d4c7"),
        );
        assert_eq!(
            route(&e, &t),
            RouteOutcome::Routed(vec![PairKey::new("alice", "jelly")])
        );
    }

    #[test]
    fn unmatched_log_is_bounded_and_counts_everything() {
        let log = UnmatchedLog::new(3);
        for i in 0..5 {
            let e = ev(EventKind::Play, &format!("s{i}"), Some("u"));
            log.record(&e, "why", i);
        }
        assert_eq!(log.total(), 5);
        let snap = log.snapshot();
        assert_eq!(snap.len(), 3);
        assert_eq!(snap[0].backend_id, "s4");
        assert_eq!(snap[2].backend_id, "s2");
        assert_eq!(snap[0].at, 4);
        assert_eq!(UnmatchedLog::default().capacity, 50);
        let json = serde_json::to_value(&snap[0]).unwrap();
        assert_eq!(json["sender"], "jellyfin");
        assert_eq!(json["user_id"], "u");
    }
}
