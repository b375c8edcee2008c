//! Webhook decoding (DESIGN.md §3) and routing (§4): pure functions from a request's bytes to a
//! [`WebhookEvent`], and from an event plus the configured targets to a [`RouteOutcome`]. No
//! I/O happens here; the HTTP layer calls [`decode`] and [`route::route`].
//!
//! - [`transport`]: where the JSON is (raw body, multipart field, url-encoded field);
//! - [`plex`], [`tautulli`], [`jellyfin`], [`emby`]: one decoder per sender;
//! - [`ids`]: provider ids (Plex guids, legacy agents, Emby/Jellyfin provider keys);
//! - [`mod@route`]: which (user, backend) pairs an event goes to, and the unmatched-request log.
//!
//! The sender is recognised by the body's shape; the user agent is only a hint used to pick
//! Tautulli over Plex and to write better error messages.

pub mod emby;
mod fields;
pub mod ids;
pub mod jellyfin;
pub mod plex;
pub mod route;
pub mod tautulli;
pub mod transport;

pub use route::{route, RouteOutcome, RouteTable, RouteTarget, UnmatchedLog, UnmatchedRecord};

use serde_json::{Map, Value};
use watchstate_actors::event::{ExternalIds, Sender, WebhookEvent};

/// One webhook request as the HTTP layer received it; only what decoding needs.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    /// `POST` or `PUT` (Tautulli's guide uses `PUT`); it never changes how a body decodes.
    pub method: &'a str,
    /// Decides the envelope (multipart, form, raw); absent means "guess from the body".
    pub content_type: Option<&'a str>,
    /// A hint only (`PlexMediaServer/`, `Tautulli/`, `Jellyfin-Server/`).
    pub user_agent: Option<&'a str>,
    pub body: &'a [u8],
}

/// Why a request could not be decoded. The Display text is the HTTP 400 message: it says what
/// was wrong and, where possible, what to change in the sender's set-up.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty body: a webhook must carry a JSON payload (Plex: multipart field 'payload'; Tautulli, Jellyfin, Emby: the JSON body). Emby before 4.9.0.37 sends its test notification empty: check the set-up with a real event instead")]
    EmptyBody,
    #[error("invalid JSON at line {line} column {column}: {message}")]
    InvalidJson {
        line: usize,
        column: usize,
        /// serde_json's description without its position suffix.
        message: String,
    },
    #[error("multipart body without a boundary: the Content-Type must carry boundary=...")]
    MissingBoundary,
    #[error("malformed multipart body: {0}")]
    BadMultipart(String),
    #[error("{envelope} body has no 'payload' field (Plex) nor 'data' field (Emby); fields present: [{}]", present.join(", "))]
    NoJsonField {
        /// `multipart` or `form`.
        envelope: &'static str,
        /// The field names that were there, to spot a misconfigured sender.
        present: Vec<String>,
    },
    #[error("invalid url-encoded form body: {0}")]
    InvalidForm(String),
    #[error("field '{field}': {source}")]
    InField {
        field: &'static str,
        source: Box<DecodeError>,
    },
    #[error("not a Plex, Tautulli, Jellyfin or Emby webhook: {0}")]
    NotAWebhook(String),
}

/// Decodes one webhook request into the normalised event.
pub fn decode(req: &RawRequest) -> Result<WebhookEvent, DecodeError> {
    let value = match transport::extract_json(req.content_type, req.body) {
        Ok((value, _envelope)) => value,
        Err(err @ DecodeError::InvalidJson { .. }) => {
            // A Tautulli test notification of a template with unquoted placeholders
            // (`"viewOffset": {view_offset}`) is not JSON until they are quoted.
            match tautulli::quote_bare_placeholders(req.body)
                .and_then(|fixed| transport::parse_json(fixed.as_bytes()).ok())
            {
                Some(value) => value,
                None => return Err(err),
            }
        }
        Err(err) => return Err(err),
    };
    decode_value(value, req.user_agent)
}

/// Decodes an already-parsed JSON body (the sender is recognised by its shape).
pub fn decode_value(value: Value, user_agent: Option<&str>) -> Result<WebhookEvent, DecodeError> {
    let mut value = value;
    // Emby can wrap its JSON in a `data` key even inside a JSON body; unwrap twice at most.
    for _ in 0..2 {
        let Value::Object(obj) = &value else {
            return Err(DecodeError::NotAWebhook(format!(
                "the JSON body is {}, not an object",
                kind_of(&value)
            )));
        };
        match detect(obj, user_agent) {
            Some(Sender::Plex) => return Ok(plex::decode(obj)),
            Some(Sender::Tautulli) => {
                let Value::Object(obj) = value else {
                    unreachable!("matched as an object above")
                };
                return Ok(tautulli::decode(obj));
            }
            Some(Sender::Jellyfin) => return Ok(jellyfin::decode(obj)),
            Some(Sender::Emby) => return Ok(emby::decode(obj)),
            None => {}
        }
        match fields::get(obj, "data") {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                value = transport::parse_json(s.as_bytes()).map_err(|e| DecodeError::InField {
                    field: "data",
                    source: Box::new(e),
                })?;
            }
            Some(Value::Object(inner)) => value = Value::Object(inner.clone()),
            _ => return Err(DecodeError::NotAWebhook(why_not(obj, user_agent))),
        }
    }
    match &value {
        Value::Object(obj) => Err(DecodeError::NotAWebhook(why_not(obj, user_agent))),
        other => Err(DecodeError::NotAWebhook(format!(
            "the 'data' field holds {}, not an object",
            kind_of(other)
        ))),
    }
}

/// Recognises the sender by the keys that only it writes.
fn detect(obj: &Map<String, Value>, user_agent: Option<&str>) -> Option<Sender> {
    let ua = user_agent.unwrap_or_default().trim();
    if fields::get(obj, "NotificationType").is_some() {
        return Some(Sender::Jellyfin);
    }
    if let Some(event) = fields::get_exact(obj, "event") {
        let event = fields::string(event).unwrap_or_default();
        let tautulli = event.to_ascii_lowercase().starts_with("tautulli.")
            || event.contains('{')
            || starts_with_ci(ua, "tautulli")
            || fields::object(obj, "Metadata")
                .and_then(|m| fields::get_exact(m, "Guids"))
                .is_some_and(Value::is_object);
        return Some(if tautulli {
            Sender::Tautulli
        } else {
            Sender::Plex
        });
    }
    if fields::get(obj, "Event").is_some() {
        return Some(Sender::Emby);
    }
    None
}

/// The part of the 400 message that says why the body is none of the four senders.
fn why_not(obj: &Map<String, Value>, user_agent: Option<&str>) -> String {
    let ua = user_agent.unwrap_or_default().trim();
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).take(12).collect();
    if obj.len() > 12 {
        keys.push("...");
    }
    let keys = keys.join(", ");
    if starts_with_ci(ua, "jellyfin") || fields::get(obj, "ServerId").is_some() {
        return format!(
            "the body has no 'NotificationType' key, so it is not a Jellyfin \"Send All Properties\" body; enable \"Send All Properties\" in the webhook plugin (keys present: {keys})"
        );
    }
    format!(
        "the JSON object has none of the keys 'event' (Plex, Tautulli), 'NotificationType' (Jellyfin) or 'Event' (Emby); keys present: {keys}"
    )
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An event with every optional field empty; each decoder fills in what its payload has.
fn blank(sender: Sender, backend_id: String, raw_event: String) -> WebhookEvent {
    WebhookEvent {
        sender,
        backend_id,
        user_id: None,
        user_name: None,
        event: watchstate_actors::event::EventKind::Ignore,
        raw_event,
        generic: false,
        item_type: None,
        item_id: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use watchstate_actors::event::EventKind;

    fn req<'a>(ct: Option<&'a str>, ua: Option<&'a str>, body: &'a [u8]) -> RawRequest<'a> {
        RawRequest {
            method: "POST",
            content_type: ct,
            user_agent: ua,
            body,
        }
    }

    #[test]
    fn sender_is_recognised_by_shape_not_user_agent() {
        let jf = br#"{"NotificationType":"PlaybackStart","ServerId":"s"}"#;
        let ev = decode(&req(Some("text/plain"), Some("PlexMediaServer/1.0"), jf)).unwrap();
        assert_eq!(ev.sender, Sender::Jellyfin);
        let emby = br#"{"Event":"playback.start","Server":{"Id":"s"}}"#;
        assert_eq!(decode(&req(None, None, emby)).unwrap().sender, Sender::Emby);
        let plex = br#"{"event":"media.play","Server":{"uuid":"s"}}"#;
        assert_eq!(decode(&req(None, None, plex)).unwrap().sender, Sender::Plex);
        let taut = br#"{"event":"tautulli.play","Server":{"uuid":"s"}}"#;
        assert_eq!(
            decode(&req(None, None, taut)).unwrap().sender,
            Sender::Tautulli
        );
    }

    #[test]
    fn tautulli_test_with_bare_placeholders_is_a_test() {
        let body = b"{\"event\": \"tautulli.{action}\", \"Server\": {\"uuid\": \"{server_machine_id}\"},\n \"Metadata\": {\"viewOffset\": {view_offset}, \"year\": {year}}}";
        let ev = decode(&req(
            Some("application/json"),
            Some("Tautulli/v2.17.2"),
            body,
        ))
        .unwrap();
        assert_eq!(ev.sender, Sender::Tautulli);
        assert_eq!(ev.event, EventKind::Test);
        assert_eq!(ev.position_ms, None);
        // Real syntax errors stay errors.
        let err = decode(&req(
            Some("application/json"),
            None,
            b"{\"event\": {action}, ]",
        ))
        .unwrap_err();
        assert!(
            err.to_string().starts_with("invalid JSON at line 1"),
            "{err}"
        );
    }

    #[test]
    fn jellyfin_generic_form_decodes() {
        let body = b"NotificationType=PlaybackProgress&ServerId=abc&UserId=u&ItemId=i&ItemType=Movie&IsPaused=True&PlaybackPositionTicks=123456789&Provider_imdb=tt1";
        let ev = decode(&req(Some("application/x-www-form-urlencoded"), None, body)).unwrap();
        assert_eq!(ev.sender, Sender::Jellyfin);
        assert_eq!(ev.event, EventKind::Pause);
        assert_eq!(ev.position_ms, Some(12_345));
        assert_eq!(ev.external_ids["imdb"], "tt1");
    }

    #[test]
    fn user_agent_picks_tautulli_for_plex_shaped_json() {
        let body = br#"{"event":"media.play","Server":{"uuid":"s"}}"#;
        let ev = decode(&req(
            Some("application/json"),
            Some("Tautulli/v2.17.2"),
            body,
        ))
        .unwrap();
        assert_eq!(ev.sender, Sender::Tautulli);
    }

    #[test]
    fn emby_data_key_inside_json_is_unwrapped() {
        let body = br#"{"data":"{\"Event\":\"item.markplayed\",\"Server\":{\"Id\":\"s\"}}"}"#;
        let ev = decode(&req(Some("application/json"), None, body)).unwrap();
        assert_eq!(ev.sender, Sender::Emby);
        assert_eq!(ev.event, EventKind::MarkPlayed);
        let body = br#"{"data":{"Event":"item.markplayed"}}"#;
        assert_eq!(decode(&req(None, None, body)).unwrap().sender, Sender::Emby);
    }

    #[test]
    fn unknown_shapes_are_typed_errors() {
        let err = decode(&req(Some("application/json"), None, br#"{"hello":1}"#)).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("not a Plex, Tautulli, Jellyfin or Emby webhook: "));
        assert!(err.to_string().contains("hello"));
        let err = decode(&req(
            None,
            Some("Jellyfin-Server/10.10"),
            br#"{"Name":"x"}"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("Send All Properties"), "{err}");
        let err = decode(&req(None, None, b"[1,2]")).unwrap_err();
        assert!(err.to_string().contains("an array"), "{err}");
        let err = decode(&req(None, None, br#"{"data":"{"}"#)).unwrap_err();
        assert!(
            err.to_string().starts_with("field 'data': invalid JSON"),
            "{err}"
        );
        assert!(matches!(
            decode(&req(None, None, b"")),
            Err(DecodeError::EmptyBody)
        ));
    }
}
