//! Sending a request to a media server and classifying what went wrong (DESIGN.md §7 retries
//! on the classification): 401/403 → `Auth`, 404 → `NotFound`, 429 → `RateLimited` with the
//! `Retry-After`, 5xx → `Server`, 3xx (never followed) and other 4xx → `Client`, timeout →
//! `Timeout`, no connection → `Network`, unreadable JSON → `BadResponse`, a web page instead
//! of the API's answer (also a `2xx` one to a write) → `WebPage`. Also the date helpers the
//! clients share.
//!
//! Tokens travel in default headers set at construction and, for Emby, also in the `api_key`
//! query parameter of every URL. No error text shows a URL with its query: reqwest errors are
//! taken `without_url`, a redirect's Location loses its query, and any text from the server
//! (an error page may repeat the request URL) has the token cut out ([`HttpCore::redact`]).
//!
//! Request paths are built from segments ([`HttpCore::url`]), each percent-encoded on its own,
//! and item ids must be plain ([`item_id`]): an id from a webhook can never change the route.

use super::lenient::from_slice_repaired;
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use watchstate_actors::backend::BackendError;
use watchstate_actors::event::Millis;

/// How many characters of an error body go into an error message: enough to tell why.
const ERROR_BODY_CHARS: usize = 200;
/// How many bytes of an answer that is not the expected JSON go into the error message:
/// enough to recognise it (XML, a login page, another product's JSON).
const SNIPPET_BYTES: usize = 100;

/// A reqwest client bound to one server: base URL, auth headers and the timeout.
#[derive(Debug, Clone)]
pub struct HttpCore {
    /// Shared connection pool; carries the auth headers as defaults.
    client: reqwest::Client,
    /// The server's address including any path prefix; request paths are appended to it.
    base: url::Url,
    /// Reported in `Timeout` errors.
    timeout: Duration,
    /// The token: added to every query when [`Self::token_param`] is set, and cut out of any
    /// server text that goes into an error (an error page may repeat the request URL).
    secret: Secret,
    /// The query parameter that carries the token on every request (Emby's `api_key`).
    token_param: Option<&'static str>,
}

/// A token that never shows in `{:?}`.
#[derive(Clone)]
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl HttpCore {
    /// `headers` are sent with every request (auth and client identification); `token` is
    /// the secret they carry, kept to be cut out of error texts.
    pub fn new(
        base: url::Url,
        timeout: Duration,
        headers: HeaderMap,
        token: &str,
    ) -> Result<Self, BackendError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(headers)
            // Never follow a redirect: reqwest would turn a POST or DELETE into a GET and carry
            // the token headers to whatever host the answer names. A 3xx is reported instead,
            // with the address to configure (`redirect_error`).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("watchstate-rs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| BackendError::Network {
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(HttpCore {
            client,
            base,
            timeout,
            secret: Secret(token.to_string()),
            token_param: None,
        })
    }

    /// Also sends the token as the query parameter `name` of every request.
    pub fn with_token_in_query(mut self, name: &'static str) -> Self {
        self.token_param = Some(name);
        self
    }

    /// The absolute URL of `route` under the base URL, with `query` (a repeated name is sent
    /// repeated). Each route segment is percent-encoded as one segment (`/`, `?`, `#`, `%`
    /// included), so no value can add a segment; an empty, `.` or `..` segment, which `url`
    /// would drop or resolve, is refused.
    pub fn url(&self, route: &[&str], query: &[(&str, String)]) -> Result<url::Url, BackendError> {
        let mut url = self.base.clone();
        url.set_query(None);
        url.set_fragment(None);
        {
            let mut path = url.path_segments_mut().map_err(|_| BackendError::Client {
                status: 0,
                message: format!(
                    "the server URL {} cannot take a path: check url in the configuration",
                    self.host()
                ),
            })?;
            path.pop_if_empty();
            for segment in route {
                if matches!(*segment, "" | "." | "..") {
                    return Err(BackendError::Client {
                        status: 0,
                        message: format!("refused to send a request path with segment {segment:?}"),
                    });
                }
                path.push(segment);
            }
        }
        if !query.is_empty() || self.token_param.is_some() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
            if let Some(name) = self.token_param {
                pairs.append_pair(name, &self.secret.0);
            }
        }
        Ok(url)
    }

    /// A request builder for `method route?query`; finish it and pass it to [`Self::send`].
    pub fn request(
        &self,
        method: Method,
        route: &[&str],
        query: &[(&str, String)],
    ) -> Result<RequestBuilder, BackendError> {
        Ok(self.client.request(method, self.url(route, query)?))
    }

    /// Sends the request; `Ok` only for a 2xx answer, anything else classified.
    pub async fn send(&self, req: RequestBuilder, what: &str) -> Result<Response, BackendError> {
        let request = req.build().map_err(|e| self.transport_error(e))?;
        // A sync's requests keep to `sync.max_requests_per_second`; others go at once.
        watchstate_actors::backend::pace_request().await;
        let sent_to = request.url().clone();
        let route = format!("{} {}", request.method(), sent_to.path());
        let resp = self
            .client
            .execute(request)
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status.is_redirection() {
            let location = resp.headers().get(LOCATION);
            return Err(self.redirect_error(status, &sent_to, location, what));
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = self.redact(&resp.text().await.unwrap_or_default());
        Err(classify_status(status, retry_after, what, &route, &body))
    }

    /// Sends a write (mark played or unplayed, a resume position) whose answer carries
    /// nothing we read. A 2xx web page is not a confirmation: a URL that reaches a web app, a
    /// proxy's sign-in page or a maintenance page instead of the media server's API answers
    /// `200` with HTML to every path, and the write never happened. Such an answer is
    /// [`BackendError::WebPage`]; the push then reads the item back, which tells a server that
    /// did write and confirmed with a small page (Plex's documents type a write's `200` as
    /// `text/html`) from a page in front of it.
    pub async fn send_write(&self, req: RequestBuilder, what: &str) -> Result<(), BackendError> {
        let resp = self.send(req, what).await?;
        let html_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("text/html"));
        if !html_type {
            return Ok(());
        }
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        // Any text labelled HTML but JSON or XML (what these APIs answer) is taken for a page:
        // a page missed would count a write that never happened, one taken wrongly costs one
        // read of the item.
        if is_blank(&bytes) || is_api_answer(&bytes) {
            return Ok(());
        }
        Err(self.web_page(what, "text/html", &bytes))
    }

    /// [`BackendError::WebPage`] for an answer that is a web page.
    fn web_page(&self, what: &str, content_type: &str, bytes: &[u8]) -> BackendError {
        BackendError::WebPage {
            message: format!(
                "{what}: the server answered with a web page ({}), not the media server's \
                 API; check the backend's url (a web app, a proxy's sign-in page or a \
                 maintenance page at {}?); it starts with \"{}\"",
                self.redact(content_type),
                self.host(),
                self.snippet(bytes)
            ),
        }
    }

    /// Sends the request and decodes a 2xx JSON answer.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> Result<T, BackendError> {
        self.send_json_with_headers(req, what).await.map(|(v, _)| v)
    }

    /// [`Self::send_json`], with the answer's headers (Plex also gives its paging totals
    /// there).
    pub async fn send_json_with_headers<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
        what: &str,
    ) -> Result<(T, HeaderMap), BackendError> {
        let resp = self.send(req, what).await?;
        let headers = resp.headers().clone();
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(e))?;
        let value = from_slice_repaired(&bytes, what).map_err(|e| {
            if looks_like_html(&bytes) {
                return self.web_page(what, &content_type, &bytes);
            }
            BackendError::BadResponse {
                message: format!(
                    "{what}: the answer is not the expected JSON ({e}); content type {}, it starts with \"{}\"",
                    self.redact(&content_type),
                    self.snippet(&bytes)
                ),
            }
        })?;
        Ok((value, headers))
    }

    /// The first [`SNIPPET_BYTES`] of an answer as one line of text: invalid UTF-8 and
    /// control characters replaced, the token cut out (before the cut, so that a token across
    /// it cannot show in part).
    fn snippet(&self, bytes: &[u8]) -> String {
        let head = &bytes[..bytes.len().min(SNIPPET_BYTES + self.secret.0.len())];
        let text: String = String::from_utf8_lossy(head)
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = self.redact(text.trim());
        let mut end = text.len().min(SNIPPET_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text[..end].to_string()
    }

    /// Turns a reqwest failure (no HTTP status) into `Timeout` or `Network`.
    fn transport_error(&self, e: reqwest::Error) -> BackendError {
        if e.is_timeout() {
            return BackendError::Timeout {
                after_ms: self.timeout.as_millis() as u64,
            };
        }
        let e = e.without_url();
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        BackendError::Network {
            message: format!(
                "{} (is the server running at {}?)",
                self.redact(&message),
                self.host()
            ),
        }
    }

    /// A 3xx answer, not followed: the error names where the server points and the base URL
    /// to configure instead. The new address is shown without query and credentials, which
    /// may repeat the token.
    fn redirect_error(
        &self,
        status: StatusCode,
        sent_to: &url::Url,
        location: Option<&HeaderValue>,
        what: &str,
    ) -> BackendError {
        let code = status.as_u16();
        let target = location
            .and_then(|l| l.to_str().ok())
            .and_then(|l| sent_to.join(l).ok());
        let message = match target {
            Some(mut to) => {
                to.set_query(None);
                to.set_fragment(None);
                let _ = to.set_username("");
                let _ = to.set_password(None);
                // What the request added to the base URL; what precedes it in the new
                // address is the base URL to configure.
                let prefix = self.base.path().trim_end_matches('/');
                let route = sent_to.path().strip_prefix(prefix).unwrap_or(sent_to.path());
                let mut base = to.clone();
                if let Some(new_prefix) = to.path().strip_suffix(route) {
                    base.set_path(&format!("{}/", new_prefix.trim_end_matches('/')));
                }
                format!(
                    "{what}: the server answered {code} redirect to {to}; set url to {base} in the configuration"
                )
            }
            None => format!(
                "{what}: the server answered {code} redirect without a usable Location; check url in the configuration"
            ),
        };
        BackendError::Client {
            status: code,
            message: self.redact(&message),
        }
    }

    /// `text` with the token cut out, as sent and percent-encoded: for any server text that
    /// goes into an error message.
    pub fn redact(&self, text: &str) -> String {
        let token = self.secret.0.as_str();
        if token.is_empty() {
            return text.to_string();
        }
        let mut out = text.replace(token, "<redacted>");
        let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
        if encoded != token {
            out = out.replace(&encoded, "<redacted>");
        }
        out
    }

    /// `scheme://host:port` of the base URL, for messages (no path, no credentials).
    fn host(&self) -> String {
        format!(
            "{}://{}{}",
            self.base.scheme(),
            self.base.host_str().unwrap_or(""),
            self.base
                .port()
                .map(|p| format!(":{p}"))
                .unwrap_or_default()
        )
    }
}

/// The most an item id may be: longer ids are refused like hostile ones.
const MAX_ITEM_ID_LEN: usize = 128;

/// An item id as it may go into a request: letters, digits, `-` and `_` (Plex ratingKeys,
/// Jellyfin GUIDs, Emby numbers). Ids arrive in webhooks; one like `../../Items/1` or `%2e%2e`
/// is refused before any request is made, so that it cannot reach another route.
pub fn item_id(id: &str) -> Result<&str, BackendError> {
    let plain = !id.is_empty()
        && id.len() <= MAX_ITEM_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return Ok(id);
    }
    let shown: String = id.chars().take(64).collect();
    Err(BackendError::Client {
        status: 0,
        message: format!(
            "item id {shown:?} refused: an id is letters, digits, '-' and '_' only (it could otherwise change the request's route)"
        ),
    })
}

/// The error for a non-2xx status; `body` is cut to a readable length. A 404 names the
/// request (`route`: method and path, never the query) and the server's answer: "not found"
/// may mean the item, the user or the route (an older server), and the answer tells which.
pub fn classify_status(
    status: StatusCode,
    retry_after_ms: Option<u64>,
    what: &str,
    route: &str,
    body: &str,
) -> BackendError {
    let code = status.as_u16();
    let message: String = {
        let text = body.trim();
        let short: String = text.chars().take(ERROR_BODY_CHARS).collect();
        if short.is_empty() {
            format!(
                "{what}: {}",
                status.canonical_reason().unwrap_or("no reason")
            )
        } else {
            format!("{what}: {short}")
        }
    };
    match code {
        401 | 403 => BackendError::Auth { status: code },
        404 => BackendError::NotFound {
            what: match message.strip_prefix(what) {
                Some(answer) => format!("{what} ({route}){answer}"),
                None => format!("{what} ({route})"),
            },
        },
        429 => BackendError::RateLimited { retry_after_ms },
        500..=599 => BackendError::Server {
            status: code,
            message,
            // RFC 9110 §10.2.3: a 503's Retry-After says how long the service is expected to
            // be unavailable; other 5xx do not carry one.
            retry_after_ms: retry_after_ms.filter(|_| code == 503),
        },
        _ => BackendError::Client {
            status: code,
            message,
        },
    }
}

/// Whether a body is an HTML document (`<!DOCTYPE html`, `<html`, or a `<head>`/`<body>`
/// fragment), after blanks, a byte order mark, comments (`<!-- … -->`, as many generated pages
/// and proxies' error pages begin) and an XML declaration (XHTML).
fn looks_like_html(bytes: &[u8]) -> bool {
    // Only the page's first 4 KiB are read: a document that has not begun by then is no page.
    let mut rest = &bytes[..bytes.len().min(4096)];
    loop {
        rest = text_start(rest);
        let skip = if rest.starts_with(b"<!--") {
            find(rest, b"-->").map(|end| end + 3)
        } else if rest.len() >= 5 && rest[..5].eq_ignore_ascii_case(b"<?xml") {
            find(rest, b"?>").map(|end| end + 2)
        } else {
            break;
        };
        match skip {
            Some(n) => rest = &rest[n..],
            None => return false,
        }
    }
    let head = rest[..rest.len().min(16)].to_ascii_lowercase();
    ["<!doctype html", "<html", "<head", "<body"]
        .iter()
        .any(|p| head.starts_with(p.as_bytes()))
}

/// The text after a byte order mark and blanks.
fn text_start(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

fn is_blank(bytes: &[u8]) -> bool {
    text_start(bytes).is_empty()
}

/// Whether a body reads as an answer of the media servers' APIs: JSON, an XML document that
/// is not a web page, or Plex's `<MediaContainer>`.
fn is_api_answer(bytes: &[u8]) -> bool {
    let head = text_start(bytes);
    match head.first() {
        Some(b'{' | b'[') => true,
        Some(b'<') => {
            let xml = head.len() >= 5 && head[..5].eq_ignore_ascii_case(b"<?xml");
            (xml && !looks_like_html(bytes)) || head.starts_with(b"<MediaContainer")
        }
        _ => false,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `Retry-After` as milliseconds from `now`: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
/// A date in the past means "now" (0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.saturating_mul(1000));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// An ISO 8601 / RFC 3339 date as Jellyfin and Emby write it (`2024-05-01T10:00:00.0000000Z`,
/// also with a numeric offset or no zone, read as UTC) → unix ms.
pub fn parse_iso8601_ms(s: &str) -> Option<Millis> {
    let s = s.trim();
    // humantime reads `Z`, `+00:00` and no zone; a different offset is applied by hand.
    // `get` rather than `split_at`: the cut may fall inside a multibyte character.
    let split = s
        .len()
        .checked_sub(6)
        .and_then(|i| Some((s.get(..i)?, s.get(i..)?)));
    let (body, offset_secs) = match split {
        Some((body, tail))
            if (tail.starts_with('+') || tail.starts_with('-'))
                && tail.as_bytes()[3] == b':'
                && tail != "+00:00" =>
        {
            let hours: i64 = tail[1..3].parse().ok()?;
            let minutes: i64 = tail[4..6].parse().ok()?;
            let sign = if tail.starts_with('-') { -1 } else { 1 };
            (body, sign * (hours * 3600 + minutes * 60))
        }
        _ => (s, 0),
    };
    let t = humantime::parse_rfc3339_weak(body).ok()?;
    let ms = t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64;
    Some(ms - offset_secs * 1000)
}

/// Unix ms → `2024-05-01T10:00:00Z` (RFC 3339, UTC, whole seconds).
pub fn format_rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_seconds(system_time(ms)).to_string()
}

/// Unix ms → `20240501100000` (Emby's `DatePlayed` format, UTC).
pub fn format_compact_utc(ms: Millis) -> String {
    let text = format_rfc3339(ms); // 2024-05-01T10:00:00Z
    text.chars().filter(|c| c.is_ascii_digit()).collect()
}

fn system_time(ms: Millis) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client core for `base` with `token`, for the URL and error-text tests.
    fn core_for(base: &str, token: &str) -> HttpCore {
        HttpCore::new(
            url::Url::parse(base).unwrap(),
            Duration::from_secs(1),
            HeaderMap::new(),
            token,
        )
        .unwrap()
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("7", now), Some(7_000));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(30_000)
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(0)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn statuses_are_classified() {
        let c = |s: u16| {
            classify_status(
                StatusCode::from_u16(s).unwrap(),
                Some(5),
                "x",
                "GET /a",
                "body",
            )
        };
        assert_eq!(c(401), BackendError::Auth { status: 401 });
        assert_eq!(c(403), BackendError::Auth { status: 403 });
        assert_eq!(
            c(404),
            BackendError::NotFound {
                what: "x (GET /a): body".into()
            }
        );
        assert_eq!(
            c(429),
            BackendError::RateLimited {
                retry_after_ms: Some(5)
            }
        );
        assert_eq!(
            c(503),
            BackendError::Server {
                status: 503,
                message: "x: body".into(),
                retry_after_ms: Some(5)
            }
        );
        // Only a 503's Retry-After is kept among the 5xx.
        assert!(matches!(
            c(502),
            BackendError::Server {
                status: 502,
                retry_after_ms: None,
                ..
            }
        ));
        assert!(matches!(c(400), BackendError::Client { status: 400, .. }));
    }

    #[test]
    fn iso_dates_parse_with_any_precision_and_offset() {
        assert_eq!(parse_iso8601_ms("1970-01-01T00:00:01Z"), Some(1_000));
        assert_eq!(
            parse_iso8601_ms("2024-05-01T10:00:00.1234567Z"),
            Some(1_714_557_600_123)
        );
        assert_eq!(
            parse_iso8601_ms("2024-05-01T12:00:00+02:00"),
            Some(1_714_557_600_000)
        );
        assert_eq!(
            parse_iso8601_ms("2024-05-01T10:00:00"),
            Some(1_714_557_600_000)
        );
        assert_eq!(parse_iso8601_ms("yesterday"), None);
    }

    #[test]
    fn a_date_cut_inside_a_multibyte_character_is_refused_without_panic() {
        // The offset would start at byte 3 (21), inside the euro sign.
        assert_eq!(parse_iso8601_ms("ab€cdef"), None);
        assert_eq!(parse_iso8601_ms("2024-05-01T10:00:00€00:00"), None);
    }

    proptest::proptest! {
        #[test]
        fn no_date_text_panics(s in "\\PC{0,40}") {
            let _ = parse_iso8601_ms(&s);
        }
    }

    #[test]
    fn dates_format_for_each_server() {
        assert_eq!(format_rfc3339(1_714_557_600_500), "2024-05-01T10:00:00Z");
        assert_eq!(format_compact_utc(1_714_557_600_000), "20240501100000");
    }

    #[test]
    fn urls_keep_the_base_prefix() {
        let core = core_for("http://h:1/emby/", "");
        let url = core
            .url(&["Users", "u", "Items"], &[("Ids", "a,b".to_string())])
            .unwrap();
        assert_eq!(url.as_str(), "http://h:1/emby/Users/u/Items?Ids=a%2Cb");
        let bare = core_for("http://h:1", "");
        let url = bare.url(&["identity"], &[]).unwrap();
        assert_eq!(url.as_str(), "http://h:1/identity");
    }

    #[test]
    fn the_token_goes_into_every_query_and_out_of_every_error_text() {
        let core = core_for("http://h:1/", "k3y/+x").with_token_in_query("api_key");
        let url = core.url(&["System", "Info", "Public"], &[]).unwrap();
        assert_eq!(url.query(), Some("api_key=k3y%2F%2Bx"));
        let url = core.url(&["Items"], &[("Ids", "1".into())]).unwrap();
        assert_eq!(url.query(), Some("Ids=1&api_key=k3y%2F%2Bx"));
        let page = format!("<h1>Error</h1> GET {url} (key k3y/+x)");
        assert_eq!(
            core.redact(&page),
            "<h1>Error</h1> GET http://h:1/Items?Ids=1&api_key=<redacted> (key <redacted>)"
        );
        assert!(!format!("{core:?}").contains("k3y"));
    }

    #[test]
    fn a_web_page_is_known_behind_comments_and_an_xml_declaration() {
        for page in [
            "<!DOCTYPE html><html></html>",
            "\u{feff}  <HTML lang=en>",
            "<!-- generated by nginx -->\n<!doctype html>",
            "<!-- a --><!--b-->\r\n<head><title>x</title>",
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<!DOCTYPE html PUBLIC \"-//W3C//DTD XHTML 1.0\">",
            "<?XML version=\"1.0\"?><html xmlns=\"http://www.w3.org/1999/xhtml\">",
        ] {
            assert!(looks_like_html(page.as_bytes()), "{page:?}");
        }
        for body in [
            "",
            "OK",
            "{\"html\":1}",
            "<?xml version=\"1.0\"?><MediaContainer size=\"0\"/>",
            "<!-- a comment never closed <html>",
            "<!-- x -->",
            "<h1>Error</h1>",
        ] {
            assert!(!looks_like_html(body.as_bytes()), "{body:?}");
        }
        // A document that begins after 4 KiB of comment is not looked for.
        let late = format!("<!--{}--><html>", "x".repeat(5000));
        assert!(!looks_like_html(late.as_bytes()));
    }

    #[test]
    fn a_write_answer_labelled_html_is_an_api_answer_only_as_json_or_xml() {
        for body in [
            "{}",
            " [1]",
            "\u{feff}{\"ok\":true}",
            "<?xml version=\"1.0\"?><MediaContainer size=\"0\"/>",
            "<MediaContainer size=\"0\"/>",
        ] {
            assert!(is_api_answer(body.as_bytes()), "{body:?}");
        }
        for body in [
            "OK",
            "<h1>OK</h1>",
            "<!-- a comment never closed <html>",
            &format!("<!--{}--><html>", "x".repeat(5000)),
            "<?xml version=\"1.0\"?><!DOCTYPE html><html>",
            "<html><body>200 OK</body></html>",
        ] {
            assert!(!is_api_answer(body.as_bytes()), "{body:?}");
        }
        assert!(is_blank(b"\xEF\xBB\xBF \r\n") && !is_blank(b"OK"));
    }

    #[test]
    fn a_snippet_is_one_short_clean_line_without_the_token() {
        let core = core_for("http://h:1/", "s3cret");
        let page = format!("<html>\r\n\u{7}<title>Sign in</title>{}", "é".repeat(200));
        let s = core.snippet(page.as_bytes());
        assert!(s.starts_with("<html>   <title>Sign in</title>éé"), "{s}");
        assert!(s.len() <= SNIPPET_BYTES);
        let cut = format!("{}s3cret", "x".repeat(97));
        assert!(!core.snippet(cut.as_bytes()).contains("s3c"));
        assert_eq!(core.snippet(&[0xff, b'{']), "\u{fffd}{");
    }

    #[test]
    fn a_segment_stays_one_segment() {
        let core = core_for("http://h:1/jf/", "");
        let path = |seg: &str| core.url(&["Items", seg], &[]).map(|u| u.path().to_string());
        assert_eq!(path("a/../b").unwrap(), "/jf/Items/a%2F..%2Fb");
        assert_eq!(path("%2e%2e").unwrap(), "/jf/Items/%252e%252e");
        assert_eq!(path("x?y#z").unwrap(), "/jf/Items/x%3Fy%23z");
        for bad in ["..", ".", ""] {
            assert!(path(bad).is_err(), "{bad:?}");
        }
        let url = core
            .url(&["Items"], &[("ids", "a".into()), ("ids", "b".into())])
            .unwrap();
        assert_eq!(url.query(), Some("ids=a&ids=b"));
    }

    #[test]
    fn only_plain_item_ids_are_accepted() {
        for ok in ["101", "a1b2c3d4e5f60718293a4b5c6d7e8f90", "0f1e-2d3c_4b"] {
            assert_eq!(item_id(ok), Ok(ok));
        }
        let long = "9".repeat(129);
        for bad in [
            "",
            "..",
            "1/2",
            "%2e%2e",
            "1?x",
            "1#x",
            "é",
            " 1",
            long.as_str(),
        ] {
            let err = item_id(bad).unwrap_err();
            assert!(
                matches!(err, BackendError::Client { status: 0, .. }),
                "{bad:?}"
            );
        }
    }
}
