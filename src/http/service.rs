//! The service's routes beyond the system ones: the webhook and the status API.

use super::reply::Reply;
use super::webhook::WebhookService;
use super::{method_not_allowed, Api, Body, Request, Routes, PREFIX};
use crate::journal::Journal;
use crate::store::SledStore;
use http::Method;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use watchstate_actors::supervisor::SupervisorHandle;

/// The route table of the running service.
pub struct ServiceRoutes {
    pub webhook: WebhookService,
    /// `None` when only the webhook intake runs (decoder tests with an in-memory sink).
    pub actors: Option<SupervisorHandle>,
    /// For journal depth and flush counts in status and metrics.
    pub journal: Option<Arc<Journal>>,
    /// For the "corrupt database moved aside" note in status.
    pub store: Option<SledStore>,
}

impl Routes for ServiceRoutes {
    fn handle<'a>(
        &'a self,
        api: &'a Api,
        req: &'a Request,
        body: &'a mut Body,
    ) -> Pin<Box<dyn Future<Output = Option<Reply>> + Send + 'a>> {
        Box::pin(async move {
            let path = req.path.trim_end_matches('/');
            let rest = path.strip_prefix(PREFIX)?;
            if rest == "/webhook" {
                return Some(match req.method {
                    // Tautulli can send PATCH (2.15.2 added it to its webhook methods).
                    Method::POST | Method::PUT | Method::PATCH => {
                        self.webhook.handle(req, body).await
                    }
                    // GET and HEAD are answered before the routes (a readiness probe).
                    _ => method_not_allowed("GET, HEAD, POST, PUT, PATCH"),
                });
            }
            if rest == "/metrics" {
                return Some(match req.method {
                    Method::GET => self.metrics().await,
                    _ => method_not_allowed("GET"),
                });
            }
            if rest == "/status" || rest.starts_with("/status/") {
                return self.status(api, req, &rest["/status".len()..]).await;
            }
            None
        })
    }
}
