//! The HTTP API (DESIGN.md §8) on warp.
//!
//! One catch-all warp filter hands every request to [`Api::handle`], which owns the whole
//! request life: request id, authentication, body limit, routing and the JSON error shape. That
//! keeps every answer — including 401, 404, 405 and 413 — in one format with one code path,
//! instead of spreading it over warp rejections.

pub mod auth;
pub mod reply;
pub mod service;
pub mod status;
pub mod webhook;

use crate::http::reply::{error, json, Reply};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use serde_json::json as j;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::net::TcpListener;
use warp::{Buf, Filter};

pub const PREFIX: &str = "/v1/api";
pub const REQUEST_ID: &str = "x-request-id";

/// Everything the handlers need, shared by all requests.
pub struct Api {
    /// The key every protected route needs (from config, or generated and stored).
    pub api_key: String,
    /// When true the webhook needs the key too.
    pub secure_webhooks: bool,
    /// Bodies larger than this are answered 413 without being read further.
    pub max_body_bytes: u64,
    /// For `uptime` in status.
    pub started: Instant,
    /// The readiness checks of `/system/ready`.
    pub readiness: Box<dyn Fn() -> Vec<ReadyCheck> + Send + Sync>,
}

/// One check of `/system/ready`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReadyCheck {
    pub name: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A request as the handlers see it; the body is read only by routes that take one.
pub struct Request {
    pub method: Method,
    pub path: String,
    /// The raw query string without `?` (may be empty).
    pub query: String,
    pub headers: HeaderMap,
    pub request_id: String,
}

impl Request {
    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        url::form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The path with the query, `apikey` masked: safe to log.
    pub fn loggable_target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, auth::mask_query(&self.query))
        }
    }
}

/// The body of a request, read on demand with the size limit applied.
pub struct Body {
    stream: Option<Box<dyn futures_util::Stream<Item = Result<Bytes, warp::Error>> + Send + Unpin>>,
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge(u64),
    Read(String),
}

impl Body {
    pub fn from_bytes(b: Bytes) -> Body {
        Body {
            stream: Some(Box::new(futures_util::stream::iter([Ok(b)]))),
        }
    }

    fn from_stream<S, B>(stream: S) -> Body
    where
        S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
        B: Buf,
    {
        let stream = Box::pin(stream).map(|r| r.map(|mut b| b.copy_to_bytes(b.remaining())));
        Body {
            stream: Some(Box::new(stream)),
        }
    }

    /// Read the whole body; stop as soon as it passes `limit` bytes.
    pub async fn read(&mut self, headers: &HeaderMap, limit: u64) -> Result<Bytes, BodyError> {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let Some(mut stream) = self.stream.take() else {
            return Ok(Bytes::new());
        };
        if declared.is_some_and(|n| n > limit) {
            drain(&mut stream, DRAIN_BYTES).await;
            return Err(BodyError::TooLarge(limit));
        }
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Read(e.to_string()))?;
            if buf.len() as u64 + chunk.len() as u64 > limit {
                drain(&mut stream, DRAIN_BYTES).await;
                return Err(BodyError::TooLarge(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// How much of a refused (too large) body is read and thrown away so that the sender, still
/// uploading, gets the 413 instead of a reset connection; beyond this the connection is closed.
const DRAIN_BYTES: u64 = 8 * 1024 * 1024;

/// How long draining a refused body may take, so a slow sender cannot hold the connection.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Read and discard up to `max` bytes of `stream` (bounded in time by [`DRAIN_TIME`]).
async fn drain<S>(stream: &mut S, max: u64)
where
    S: futures_util::Stream<Item = Result<Bytes, warp::Error>> + Unpin + ?Sized,
{
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len() as u64;
            if seen > max {
                break;
            }
        }
    })
    .await;
}

pub fn body_error_reply(e: BodyError) -> Reply {
    match e {
        BodyError::TooLarge(limit) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than server.max_body_bytes ({limit} bytes)"),
        ),
        BodyError::Read(m) => error(
            StatusCode::BAD_REQUEST,
            format!("the request body could not be read: {m}"),
        ),
    }
}

/// The route handlers beyond the built-in system routes, plugged in by the service.
pub trait Routes: Send + Sync + 'static {
    /// Answer `req` if the path is one of this table's, else `None`.
    fn handle<'a>(
        &'a self,
        api: &'a Api,
        req: &'a Request,
        body: &'a mut Body,
    ) -> std::pin::Pin<Box<dyn Future<Output = Option<Reply>> + Send + 'a>>;
}

/// A sane incoming request id is reused (so a proxy's id follows the request); otherwise a
/// new one is made.
fn request_id(headers: &HeaderMap) -> String {
    if let Some(v) = headers.get(REQUEST_ID).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty()
            && v.len() <= 64
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return v.to_string();
        }
    }
    format!("{:016x}", rand::random::<u64>())
}

impl Api {
    /// Answer one request.
    pub async fn handle(&self, routes: &dyn Routes, req: Request, mut body: Body) -> Reply {
        let started = Instant::now();
        let mut reply = self.route(routes, &req, &mut body).await;
        if let Ok(v) = HeaderValue::from_str(&req.request_id) {
            reply.headers_mut().insert(REQUEST_ID, v);
        }
        tracing::debug!(
            request_id = %req.request_id,
            method = %req.method,
            target = %req.loggable_target(),
            status = reply.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "request"
        );
        reply
    }

    async fn route(&self, routes: &dyn Routes, req: &Request, body: &mut Body) -> Reply {
        let path = req.path.trim_end_matches('/');
        match path {
            p if p.strip_prefix(PREFIX) == Some("/system/healthcheck") => {
                return match req.method {
                    Method::GET | Method::HEAD => json(StatusCode::OK, &j!({"status": "ok"})),
                    _ => method_not_allowed("GET"),
                };
            }
            p if p.strip_prefix(PREFIX) == Some("/system/ready") => {
                if req.method != Method::GET && req.method != Method::HEAD {
                    return method_not_allowed("GET");
                }
                let checks = (self.readiness)();
                let ok = checks.iter().all(|c| c.ok);
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let failed: Vec<&str> = checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| c.name.as_str())
                    .collect();
                return json(
                    status,
                    &j!({"status": if ok {"ready"} else {"not ready"}, "failed": failed, "checks": checks}),
                );
            }
            _ => {}
        }
        if !path.starts_with(PREFIX) {
            return not_found(req);
        }
        let is_webhook = path.strip_prefix(PREFIX) == Some("/webhook");
        if !is_webhook || self.secure_webhooks {
            if let Err(reply) = auth::check(req, &self.api_key) {
                // Unknown routes answer 404 with or without the key.
                return if !is_webhook && !known_route(path) {
                    not_found(req)
                } else {
                    *reply
                };
            }
        }
        if is_webhook && (req.method == Method::GET || req.method == Method::HEAD) {
            return json(StatusCode::OK, &j!({"status": "ready"}));
        }
        match routes.handle(self, req, body).await {
            Some(r) => r,
            None => not_found(req),
        }
    }
}

/// The protected route shapes, used to answer 401 (known) or 404 (unknown) before the key.
fn known_route(path: &str) -> bool {
    let rest = &path[PREFIX.len()..];
    rest == "/status" || rest.starts_with("/status/") || rest == "/metrics"
}

pub fn not_found(req: &Request) -> Reply {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {} {}; the API lives under {PREFIX}/ (see the README's API table)",
            req.method, req.path
        ),
    )
}

pub fn method_not_allowed(allowed: &str) -> Reply {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed here; use {allowed}"),
    );
    if let Ok(v) = HeaderValue::from_str(allowed) {
        r.headers_mut().insert(http::header::ALLOW, v);
    }
    r
}

/// The warp filter that feeds every request to [`Api::handle`].
pub fn filter(
    api: Arc<Api>,
    routes: Arc<dyn Routes>,
) -> impl Filter<Extract = (Reply,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::method()
        .and(warp::path::full())
        .and(raw_query)
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .then(
            move |method: Method,
                  path: warp::path::FullPath,
                  query: String,
                  headers: HeaderMap,
                  stream| {
                let api = api.clone();
                let routes = routes.clone();
                async move {
                    let request_id = request_id(&headers);
                    let req = Request {
                        method,
                        path: path.as_str().to_string(),
                        query,
                        headers,
                        request_id,
                    };
                    let body = Body::from_stream(stream);
                    api.handle(routes.as_ref(), req, body).await
                }
            },
        )
}

/// Serve `api` on `listener` until `shutdown` resolves; in-flight requests are completed.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    routes: Arc<dyn Routes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    warp::serve(filter(api, routes))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
