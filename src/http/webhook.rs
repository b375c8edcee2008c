//! `POST|PUT|PATCH /v1/api/webhook` (DESIGN.md §2, §8): read the body within the limit, decode
//! (pure), route (config lookup), and hand routed events to the [`EventSink`]. The handler
//! never waits on a media server; it answers 202 only once the sink has made the event durable.

use super::reply::{error, json, Reply};
use super::{body_error_reply, Body, Request};
use crate::ingest::{EventSink, SinkError};
use crate::webhook::{self, RawRequest, RouteOutcome, RouteTable, UnmatchedLog};
use http::StatusCode;
use serde::Serialize;
use serde_json::json as j;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use watchstate_actors::clock::Clock;
use watchstate_actors::event::{Millis, WebhookEvent};
use watchstate_actors::store::PairKey;

/// Webhook outcomes since start, by kind: the global status and `/metrics` show them.
#[derive(Debug, Default)]
pub struct WebhookCounters {
    pub received: AtomicU64,
    pub accepted: AtomicU64,
    pub ignored: AtomicU64,
    pub unmatched: AtomicU64,
    pub test: AtomicU64,
    /// Undecodable (400) and over the limit (413).
    pub rejected: AtomicU64,
    /// The journal could not be written (503).
    pub unavailable: AtomicU64,
    pub dry_runs: AtomicU64,
}

impl WebhookCounters {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        j!({
            "received": g(&self.received),
            "accepted": g(&self.accepted),
            "ignored": g(&self.ignored),
            "unmatched": g(&self.unmatched),
            "test": g(&self.test),
            "rejected": g(&self.rejected),
            "unavailable": g(&self.unavailable),
            "dry_runs": g(&self.dry_runs),
        })
    }
}

/// What happened to one webhook request, kept for `/status/requests/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct RequestTrace {
    pub request_id: String,
    pub at: Millis,
    /// accepted | ignored | unmatched | test | rejected | unavailable
    pub status: &'static str,
    pub reason: Option<String>,
    pub event: Option<WebhookEvent>,
    pub routed: Vec<PairKey>,
}

/// The last webhook requests (bounded), newest last.
#[derive(Debug)]
pub struct RequestLog {
    entries: Mutex<VecDeque<RequestTrace>>,
    capacity: usize,
}

impl RequestLog {
    pub fn new(capacity: usize) -> Self {
        RequestLog {
            entries: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
        }
    }

    pub fn push(&self, trace: RequestTrace) {
        let mut e = self.entries.lock().unwrap();
        if e.len() == self.capacity {
            e.pop_front();
        }
        e.push_back(trace);
    }

    pub fn find(&self, request_id: &str) -> Option<RequestTrace> {
        let e = self.entries.lock().unwrap();
        e.iter().rev().find(|t| t.request_id == request_id).cloned()
    }
}

/// The webhook endpoint's state.
pub struct WebhookService {
    /// Every configured pair with its ids: the routing table.
    pub routes: RouteTable,
    pub sink: Arc<dyn EventSink>,
    pub unmatched: UnmatchedLog,
    pub requests: RequestLog,
    pub counters: WebhookCounters,
    pub max_body_bytes: u64,
    /// The one clock of the system: a change's time is when this service received it.
    pub clock: Arc<dyn Clock>,
}

fn routed_json(pairs: &[PairKey]) -> Vec<serde_json::Value> {
    pairs
        .iter()
        .map(|p| j!({"user": p.user, "backend": p.backend}))
        .collect()
}

/// The answer to an accepted webhook, serialised without building a `Value` tree first (it is
/// the answer of nearly every request under load). Same shape as the other answers.
#[derive(Serialize)]
struct Accepted<'a> {
    request_id: &'a str,
    status: &'static str,
    routed: Vec<RoutedPair<'a>>,
}

#[derive(Serialize)]
struct RoutedPair<'a> {
    user: &'a str,
    backend: &'a str,
}

/// `?dry_run`: on when present without a value or as `1`, `true`, `yes`, `on`; off as `0`,
/// `false`, `no`, `off` (any case). Anything else is refused rather than taken as off: a
/// caller who meant a dry run must not have the event stored for real.
fn dry_run(value: Option<&str>) -> Result<bool, String> {
    let Some(v) = value else {
        return Ok(false);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "" | "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "dry_run={v:?} is neither on (1, true, yes) nor off (0, false, no); nothing was stored"
        )),
    }
}

impl WebhookService {
    pub async fn handle(&self, req: &Request, body: &mut Body) -> Reply {
        let received_at = self.clock.now_ms();
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        let dry_run = match dry_run(req.query_param("dry_run").as_deref()) {
            Ok(d) => d,
            Err(message) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return error(StatusCode::BAD_REQUEST, message);
            }
        };
        let bytes = match body.read(&req.headers, self.max_body_bytes).await {
            Ok(b) => b,
            Err(e) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return body_error_reply(e);
            }
        };
        let raw = RawRequest {
            method: req.method.as_str(),
            content_type: req.header("content-type"),
            user_agent: req.header("user-agent"),
            body: &bytes,
        };
        let event = match webhook::decode(&raw) {
            Ok(e) => e,
            Err(e) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                let message = e.to_string();
                tracing::info!(request_id = %req.request_id, error = %message, "webhook rejected");
                self.trace(
                    req,
                    received_at,
                    "rejected",
                    Some(message.clone()),
                    None,
                    vec![],
                );
                return error(StatusCode::BAD_REQUEST, message);
            }
        };
        let outcome = self.routes.route(&event);
        let (status, reason, routed) = match &outcome {
            RouteOutcome::Routed(p) => ("accepted", None, p.clone()),
            RouteOutcome::Ignored { reason } => ("ignored", Some(reason.clone()), vec![]),
            RouteOutcome::Unmatched { reason, .. } => ("unmatched", Some(reason.clone()), vec![]),
            RouteOutcome::Test { routed } => (
                "test",
                Some(format!(
                    "test notification from {} received; it reaches {} configured backend(s)",
                    event.sender,
                    routed.len()
                )),
                routed.clone(),
            ),
        };
        if dry_run {
            self.counters.dry_runs.fetch_add(1, Ordering::Relaxed);
            return json(
                StatusCode::OK,
                &j!({
                    "request_id": req.request_id,
                    "status": status,
                    "reason": reason,
                    "event": event,
                    "actionable": event.actionable(),
                    "routed": routed_json(&routed),
                }),
            );
        }
        tracing::info!(
            request_id = %req.request_id,
            sender = %event.sender,
            event = %event.raw_event,
            status,
            reason = reason.as_deref().unwrap_or(""),
            routed = routed.len(),
            "webhook"
        );
        match outcome {
            RouteOutcome::Routed(pairs) => {
                match self
                    .sink
                    .accept(&req.request_id, received_at, &event, &pairs)
                    .await
                {
                    Ok(()) => {
                        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                        let answer = json(
                            StatusCode::ACCEPTED,
                            &Accepted {
                                request_id: &req.request_id,
                                status: "accepted",
                                routed: pairs
                                    .iter()
                                    .map(|p| RoutedPair {
                                        user: &p.user,
                                        backend: &p.backend,
                                    })
                                    .collect(),
                            },
                        );
                        self.trace(req, received_at, "accepted", None, Some(event), pairs);
                        answer
                    }
                    Err(SinkError::Unavailable(m)) => {
                        self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(request_id = %req.request_id, error = %m, "webhook not accepted");
                        self.trace(
                            req,
                            received_at,
                            "unavailable",
                            Some(m.clone()),
                            Some(event),
                            vec![],
                        );
                        error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("the event could not be stored, nothing was accepted; retry later ({m})"),
                        )
                    }
                }
            }
            other => {
                // The status and the request trace (behind the API key) get the whole reason,
                // with what is configured instead; the caller only learns about the ids it sent.
                let full_reason = other.full_reason().or_else(|| reason.clone());
                let counter = match other {
                    RouteOutcome::Ignored { .. } => &self.counters.ignored,
                    RouteOutcome::Unmatched { configured, .. } => {
                        if !configured.is_empty() {
                            tracing::info!(
                                request_id = %req.request_id,
                                "unmatched webhook; {configured}"
                            );
                        }
                        self.unmatched.record(
                            &event,
                            full_reason.as_deref().unwrap_or(""),
                            received_at,
                        );
                        &self.counters.unmatched
                    }
                    _ => &self.counters.test,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let answer = j!({
                    "request_id": req.request_id,
                    "status": status,
                    "reason": reason,
                    "routed": routed_json(&routed),
                });
                self.trace(req, received_at, status, full_reason, Some(event), routed);
                json(StatusCode::OK, &answer)
            }
        }
    }

    fn trace(
        &self,
        req: &Request,
        at: Millis,
        status: &'static str,
        reason: Option<String>,
        event: Option<WebhookEvent>,
        routed: Vec<PairKey>,
    ) {
        self.requests.push(RequestTrace {
            request_id: req.request_id.clone(),
            at,
            status,
            reason,
            event,
            routed,
        });
    }
}
