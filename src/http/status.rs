//! The status API (DESIGN.md §8): what every actor is doing, why an event did or did not
//! sync, and the knobs to retry. Every route here needs the API key (checked before).

use super::reply::{error, json, text, Reply};
use super::service::ServiceRoutes;
use super::{method_not_allowed, Api, Request};
use http::{Method, StatusCode};
use serde_json::json as j;
use std::collections::BTreeMap;
use watchstate_actors::status::PairStatus;
use watchstate_actors::store::PairKey;
use watchstate_actors::supervisor::SyncNowError;

impl ServiceRoutes {
    /// `/status...` below the prefix; `rest` starts after `/status`.
    pub(super) async fn status(&self, api: &Api, req: &Request, rest: &str) -> Option<Reply> {
        let parts: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let get = req.method == Method::GET || req.method == Method::HEAD;
        let post = req.method == Method::POST;
        Some(match parts.as_slice() {
            [] if get => self.global_status(api).await,
            ["users"] if get => self.users_summary().await,
            ["users", user] if get => self.user_status(user).await,
            ["users", user, "items"] if get => self.item_states(req, user).await,
            ["users", user, backend] if get => self.pair_status(user, backend).await,
            ["users", user, backend, "events"] if get => self.pair_events(req, user, backend).await,
            ["users", user, backend, "sync"] if post => self.sync_now(req, user, backend).await,
            ["users", user, backend, "outbox", "retry"] if post => {
                self.retry_outbox(req, user, backend).await
            }
            ["requests", id] if get => self.request_trace(id).await,
            []
            | ["users"]
            | ["users", _]
            | ["users", _, _]
            | ["users", _, _, "events"]
            | ["requests", _] => method_not_allowed("GET"),
            ["users", _, _, "sync"] | ["users", _, _, "outbox", "retry"] => {
                method_not_allowed("POST")
            }
            _ => return None,
        })
    }

    fn not_running() -> Reply {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the actor system is not running in this process",
        )
    }

    async fn global_status(&self, api: &Api) -> Reply {
        let mut actors_by_state: BTreeMap<String, usize> = BTreeMap::new();
        let mut pairs = 0;
        let mut outbox_pending = 0;
        let mut dead_letters = 0;
        if let Some(actors) = &self.actors {
            for s in actors.all_status().await {
                pairs += 1;
                outbox_pending += s.outbox.pending;
                dead_letters += s.outbox.dead_letters;
                *actors_by_state.entry(state_name(&s)).or_default() += 1;
            }
        }
        let journal = self.journal.as_ref().map(|jn| {
            j!({
                "depth": jn.depth(),
                "appended": jn.appended_count(),
                "flushes": jn.flush_count(),
            })
        });
        // Actor batches written since start, the sled writes they took, and those waiting.
        let writes = self.store.as_ref().map(|s| s.write_stats());
        json(
            StatusCode::OK,
            &j!({
                "version": env!("CARGO_PKG_VERSION"),
                "uptime_s": api.started.elapsed().as_secs(),
                "journal": journal,
                "webhooks": self.webhook.counters.snapshot(),
                "pairs": pairs,
                "actors": actors_by_state,
                "outbox": {"pending": outbox_pending, "dead_letters": dead_letters},
                "unmatched": {
                    "total": self.webhook.unmatched.total(),
                    "recent": self.webhook.unmatched.snapshot(),
                },
                "log": {"dropped_lines": crate::logging::dropped_lines()},
                "store": {
                    "corrupt_database_moved_to": self.store.as_ref().and_then(|s| s.moved_aside()).map(|p| p.display().to_string()),
                    "batches": writes.map(|w| w.0),
                    "writes": writes.map(|w| w.1),
                    "queued": writes.map(|w| w.2),
                },
            }),
        )
    }

    async fn users_summary(&self) -> Reply {
        let Some(actors) = &self.actors else {
            return Self::not_running();
        };
        let mut users: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
        for s in actors.all_status().await {
            users.entry(s.user.clone()).or_default().push(j!({
                "backend": s.backend,
                "type": s.kind,
                "state": s.state,
                "items": s.items,
                "outbox_pending": s.outbox.pending,
                "dead_letters": s.outbox.dead_letters,
                "last_event": s.last_event,
                "sync_last_result": s.sync.last_result,
                "last_error": s.last_error.as_ref().map(|e| &e.message),
            }));
        }
        let list: Vec<_> = users
            .into_iter()
            .map(|(user, backends)| j!({"user": user, "backends": backends}))
            .collect();
        json(StatusCode::OK, &list)
    }

    fn unknown_user(user: &str) -> Reply {
        error(
            StatusCode::NOT_FOUND,
            format!("no user {user:?} in the configuration"),
        )
    }

    fn unknown_pair(user: &str, backend: &str) -> Reply {
        error(
            StatusCode::NOT_FOUND,
            format!("user {user:?} has no backend {backend:?} in the configuration"),
        )
    }

    fn known_pair(&self, user: &str, backend: &str) -> Option<PairKey> {
        let key = PairKey::new(user, backend);
        self.actors
            .as_ref()?
            .pairs()
            .into_iter()
            .find(|p| *p == key)
    }

    async fn user_status(&self, user: &str) -> Reply {
        let Some(actors) = &self.actors else {
            return Self::not_running();
        };
        let list: Vec<PairStatus> = actors
            .all_status()
            .await
            .into_iter()
            .filter(|s| s.user == user)
            .collect();
        if list.is_empty() {
            return Self::unknown_user(user);
        }
        json(StatusCode::OK, &list)
    }

    async fn pair_status(&self, user: &str, backend: &str) -> Reply {
        let Some(actors) = &self.actors else {
            return Self::not_running();
        };
        match actors.pair_status(&PairKey::new(user, backend)).await {
            Some(s) => json(StatusCode::OK, &s),
            None => Self::unknown_pair(user, backend),
        }
    }

    async fn pair_events(&self, req: &Request, user: &str, backend: &str) -> Reply {
        let Some(actors) = &self.actors else {
            return Self::not_running();
        };
        let limit = match req.query_param("limit") {
            None => 50,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n > 0 => n.min(1000),
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("limit must be a whole number from 1 to 1000, got {v:?}"),
                    )
                }
            },
        };
        match actors
            .recent_events(&PairKey::new(user, backend), limit)
            .await
        {
            Some(events) => json(StatusCode::OK, &events),
            None => Self::unknown_pair(user, backend),
        }
    }

    async fn item_states(&self, req: &Request, user: &str) -> Reply {
        let Some(actors) = &self.actors else {
            return Self::not_running();
        };
        let Some(wanted) = req.query_param("external_id") else {
            return error(
                StatusCode::BAD_REQUEST,
                "give the item as ?external_id=<provider>:<id>, e.g. ?external_id=imdb:tt1375666",
            );
        };
        let Some((provider, id)) = wanted
            .split_once(':')
            .filter(|(p, i)| !p.is_empty() && !i.is_empty())
        else {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "external_id must be <provider>:<id> (e.g. imdb:tt1375666), got {wanted:?}"
                ),
            );
        };
        let states = actors.item_states(user, provider, id).await;
        if states.is_empty() {
            return Self::unknown_user(user);
        }
        let backends: Vec<_> = states
            .into_iter()
            .map(|(pair, view)| j!({"backend": pair.backend, "state": view}))
            .collect();
        json(
            StatusCode::OK,
            &j!({"user": user, "external_id": format!("{}:{}", provider.to_lowercase(), id), "backends": backends}),
        )
    }

    async fn sync_now(&self, req: &Request, user: &str, backend: &str) -> Reply {
        let Some(actors) = &self.actors else {
            return Self::not_running();
        };
        match actors.sync_now(&PairKey::new(user, backend)).await {
            Ok(()) => json(
                StatusCode::ACCEPTED,
                &j!({"request_id": req.request_id, "status": "started", "user": user, "backend": backend}),
            ),
            Err(SyncNowError::AlreadyRunning(_)) => error(
                StatusCode::CONFLICT,
                format!(
                    "a sync of {user}/{backend} is already running; see its progress in status"
                ),
            ),
            Err(SyncNowError::UnknownPair(_)) => Self::unknown_pair(user, backend),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    async fn retry_outbox(&self, req: &Request, user: &str, backend: &str) -> Reply {
        let Some(actors) = &self.actors else {
            return Self::not_running();
        };
        if self.known_pair(user, backend).is_none() {
            return Self::unknown_pair(user, backend);
        }
        match actors
            .retry_dead_letters(&PairKey::new(user, backend))
            .await
        {
            Ok(n) => json(
                StatusCode::ACCEPTED,
                &j!({"request_id": req.request_id, "status": "retrying", "retried": n}),
            ),
            Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }

    async fn request_trace(&self, id: &str) -> Reply {
        let trace = self.webhook.requests.find(id);
        let outcomes = match &self.actors {
            Some(a) => a.request_outcomes(id).await,
            None => Vec::new(),
        };
        if trace.is_none() && outcomes.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                format!("no recent webhook request with id {id:?} (only recent requests are kept)"),
            );
        }
        json(
            StatusCode::OK,
            &j!({
                "request_id": id,
                "received": trace.as_ref().map(|t| t.at),
                "status": trace.as_ref().map(|t| t.status),
                "reason": trace.as_ref().and_then(|t| t.reason.clone()),
                "event": trace.as_ref().and_then(|t| t.event.clone()),
                "routed": trace.as_ref().map(|t| t.routed.clone()).unwrap_or_default(),
                "outcomes": outcomes,
            }),
        )
    }

    /// `/metrics`: Prometheus text exposition.
    pub(super) async fn metrics(&self) -> Reply {
        use std::fmt::Write;
        let mut out = String::with_capacity(4096);
        let c = &self.webhook.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP watchstate_webhooks_total Webhook requests by outcome."
        );
        let _ = writeln!(out, "# TYPE watchstate_webhooks_total counter");
        for (outcome, v) in [
            ("received", load(&c.received)),
            ("accepted", load(&c.accepted)),
            ("ignored", load(&c.ignored)),
            ("unmatched", load(&c.unmatched)),
            ("test", load(&c.test)),
            ("rejected", load(&c.rejected)),
            ("unavailable", load(&c.unavailable)),
        ] {
            let _ = writeln!(
                out,
                "watchstate_webhooks_total{{outcome=\"{outcome}\"}} {v}"
            );
        }
        if let Some(jn) = &self.journal {
            let _ = writeln!(
                out,
                "# HELP watchstate_journal_depth Accepted events not yet applied."
            );
            let _ = writeln!(out, "# TYPE watchstate_journal_depth gauge");
            let _ = writeln!(out, "watchstate_journal_depth {}", jn.depth());
            let _ = writeln!(
                out,
                "# HELP watchstate_journal_flushes_total Grouped journal flushes."
            );
            let _ = writeln!(out, "# TYPE watchstate_journal_flushes_total counter");
            let _ = writeln!(out, "watchstate_journal_flushes_total {}", jn.flush_count());
        }
        if let Some(actors) = &self.actors {
            let all = actors.all_status().await;
            let labels = |s: &PairStatus| {
                format!(
                    "user=\"{}\",backend=\"{}\",type=\"{}\"",
                    s.user, s.backend, s.kind
                )
            };
            let _ = writeln!(
                out,
                "# HELP watchstate_outbox_depth Pushes waiting per pair."
            );
            let _ = writeln!(out, "# TYPE watchstate_outbox_depth gauge");
            for s in &all {
                let _ = writeln!(
                    out,
                    "watchstate_outbox_depth{{{}}} {}",
                    labels(s),
                    s.outbox.pending
                );
            }
            let _ = writeln!(
                out,
                "# HELP watchstate_dead_letters Pushes given up per pair."
            );
            let _ = writeln!(out, "# TYPE watchstate_dead_letters gauge");
            for s in &all {
                let _ = writeln!(
                    out,
                    "watchstate_dead_letters{{{}}} {}",
                    labels(s),
                    s.outbox.dead_letters
                );
            }
            let _ = writeln!(out, "# HELP watchstate_items Items tracked per pair.");
            let _ = writeln!(out, "# TYPE watchstate_items gauge");
            for s in &all {
                let _ = writeln!(out, "watchstate_items{{{}}} {}", labels(s), s.items);
            }
            let _ = writeln!(out, "# HELP watchstate_pushes_total Push results per pair.");
            let _ = writeln!(out, "# TYPE watchstate_pushes_total counter");
            for s in &all {
                let m = &s.metrics;
                for (result, v) in [
                    ("ok", m.push_ok),
                    ("retried", m.push_retried),
                    ("dead", m.push_dead),
                ] {
                    let _ = writeln!(
                        out,
                        "watchstate_pushes_total{{{},result=\"{result}\"}} {v}",
                        labels(s)
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP watchstate_push_latency_ms Time from a change to its confirmed push."
            );
            let _ = writeln!(out, "# TYPE watchstate_push_latency_ms histogram");
            for s in &all {
                let h = &s.metrics.push_latency;
                for (bound, cumulative) in h.buckets.iter().filter(|(b, _)| b.is_finite()) {
                    let _ = writeln!(
                        out,
                        "watchstate_push_latency_ms_bucket{{{},le=\"{bound}\"}} {cumulative}",
                        labels(s)
                    );
                }
                let _ = writeln!(
                    out,
                    "watchstate_push_latency_ms_bucket{{{},le=\"+Inf\"}} {}",
                    labels(s),
                    h.count
                );
                let _ = writeln!(
                    out,
                    "watchstate_push_latency_ms_sum{{{}}} {}",
                    labels(s),
                    h.sum_ms
                );
                let _ = writeln!(
                    out,
                    "watchstate_push_latency_ms_count{{{}}} {}",
                    labels(s),
                    h.count
                );
            }
            let _ = writeln!(
                out,
                "# HELP watchstate_sync_runs_total Scheduled sync runs finished per pair."
            );
            let _ = writeln!(out, "# TYPE watchstate_sync_runs_total counter");
            for s in &all {
                let _ = writeln!(
                    out,
                    "watchstate_sync_runs_total{{{},result=\"ok\"}} {}",
                    labels(s),
                    s.sync.runs_ok
                );
                let _ = writeln!(
                    out,
                    "watchstate_sync_runs_total{{{},result=\"failed\"}} {}",
                    labels(s),
                    s.sync.runs_failed
                );
            }
        }
        text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            out,
        )
    }
}

fn state_name(s: &PairStatus) -> String {
    serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}
