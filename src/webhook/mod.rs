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
mod lazy;
pub mod plex;
pub mod route;
pub mod tautulli;
pub mod transport;

pub use route::{route, RouteOutcome, RouteTable, RouteTarget, UnmatchedLog, UnmatchedRecord};

use lazy::{Json, Kind, Obj, Scalar};
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
    #[error("empty body from Tautulli: Tautulli sends its webhook empty when the JSON data template is not JSON once filled in. Check the agent's JSON data: every value must be quoted, placeholders too (\"viewOffset\": \"{{view_offset}}\"), as in WatchState's webhook guide")]
    EmptyTautulliBody,
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

/// Tautulli's user agent, as the README's set-up sends it (`Tautulli/v2.17.2`).
fn is_tautulli(user_agent: Option<&str>) -> bool {
    user_agent.is_some_and(|ua| {
        ua.trim_start()
            .get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case("tautulli/"))
    })
}

/// Decodes one webhook request into the normalised event.
pub fn decode(req: &RawRequest) -> Result<WebhookEvent, DecodeError> {
    let (text, envelope) = match transport::extract_json(req.content_type, req.body) {
        Err(DecodeError::EmptyBody) if is_tautulli(req.user_agent) => {
            return Err(DecodeError::EmptyTautulliBody)
        }
        other => other?,
    };
    let fixed: Option<String>;
    let repaired: Option<String>;
    let json = match transport::parse_extracted(&text, envelope) {
        Ok(json) => json,
        Err(err) => {
            if !matches!(
                &err,
                DecodeError::InvalidJson { .. } | DecodeError::InField { .. }
            ) {
                return Err(err);
            }
            // A Tautulli test notification of a template with unquoted placeholders
            // (`"viewOffset": {view_offset}`) is not JSON until they are quoted.
            fixed = match &err {
                DecodeError::InvalidJson { .. } => tautulli::quote_bare_placeholders(&text),
                _ => None,
            };
            if let Some(json) = fixed.as_deref().and_then(parse_repaired) {
                json
            } else {
                // A Jellyfin template that rendered a line break, `True` or nothing where
                // JSON wants a value, half a surrogate pair (see `json_repair::repair`): in
                // the text with its placeholders quoted, if it had any.
                repaired = crate::json_repair::repair(fixed.as_deref().unwrap_or(&text));
                match repaired.as_deref().and_then(parse_repaired) {
                    Some(json) => json,
                    None => return Err(err),
                }
            }
        }
    };
    decode_json(json, req.user_agent, 0)
}

/// Parses a body rewritten after it failed to parse; `None` if it still does not.
fn parse_repaired(text: &str) -> Option<Json<'_>> {
    transport::json_str(text)
        .and_then(transport::parse_json)
        .ok()
}

/// Decodes a parsed JSON body (the sender is recognised by its shape). Emby can wrap its JSON
/// in a `data` key even inside a JSON body; `unwrapped` counts those unwrapped so far (two at
/// most).
fn decode_json(
    json: Json<'_>,
    user_agent: Option<&str>,
    unwrapped: u8,
) -> Result<WebhookEvent, DecodeError> {
    if unwrapped == 2 {
        return Err(DecodeError::NotAWebhook(match json {
            Json::Object(obj) => why_not(&obj, user_agent),
            Json::Other(kind) => {
                format!("the 'data' field holds {}, not an object", kind_of(kind))
            }
        }));
    }
    let obj = match json {
        Json::Object(obj) => obj,
        Json::Other(kind) => {
            return Err(DecodeError::NotAWebhook(format!(
                "the JSON body is {}, not an object",
                kind_of(kind)
            )))
        }
    };
    match detect(&obj, user_agent) {
        Some(Sender::Plex) => return Ok(plex::decode(&obj)),
        Some(Sender::Tautulli) => return Ok(tautulli::decode(obj)),
        Some(Sender::Jellyfin) => return Ok(jellyfin::decode(&obj)),
        Some(Sender::Emby) => return Ok(emby::decode(&obj)),
        None => {}
    }
    if let Some(data) = fields::get(&obj, "data") {
        match data.scalar() {
            Scalar::Str(s) if !s.trim().is_empty() => {
                let inner = transport::json_str(&s)
                    .and_then(transport::parse_json)
                    .map_err(|e| DecodeError::InField {
                        field: "data",
                        source: Box::new(e),
                    })?;
                return decode_json(inner, user_agent, unwrapped + 1);
            }
            Scalar::Object => {
                if let Some(inner) = data.as_object() {
                    return decode_json(Json::Object(inner), user_agent, unwrapped + 1);
                }
            }
            _ => {}
        }
    }
    Err(DecodeError::NotAWebhook(why_not(&obj, user_agent)))
}

/// Recognises the sender by the keys that only it writes.
fn detect(obj: &Obj<'_>, user_agent: Option<&str>) -> Option<Sender> {
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
                .and_then(|m| fields::object_exact(m, "Guids"))
                .is_some();
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
fn why_not(obj: &Obj<'_>, user_agent: Option<&str>) -> String {
    let ua = user_agent.unwrap_or_default().trim();
    let all = obj.sorted();
    // A key whose value is null counts as missing: say so next to it.
    let mut keys: Vec<String> = all
        .iter()
        .take(12)
        .map(|(k, v)| {
            if v.is_null() {
                format!("{k} (null)")
            } else {
                k.to_string()
            }
        })
        .collect();
    if all.len() > 12 {
        keys.push("...".into());
    }
    let keys = keys.join(", ");
    if starts_with_ci(ua, "jellyfin") || fields::get(obj, "ServerId").is_some() {
        return format!(
            "the body has no 'NotificationType' key, so it is not a Jellyfin \"Send All Properties\" body; enable \"Send All Properties\" in the webhook plugin (keys present: {keys})"
        );
    }
    format!(
        "the JSON object has none of the keys 'event' (Plex, Tautulli), 'NotificationType' (Jellyfin) or 'Event' (Emby) with a value; keys present: {keys}"
    )
}

fn starts_with_ci(s: &str, prefix: &str) -> bool {
    s.get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
}

fn kind_of(kind: Kind) -> &'static str {
    match kind {
        Kind::Null => "null",
        Kind::Bool => "a boolean",
        Kind::Number => "a number",
        Kind::String => "a string",
        Kind::Array => "an array",
        Kind::Object => "an object",
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
        // With half a surrogate pair in a title and invalid UTF-8 too: both repairs apply.
        let body = b"{\"event\": \"tautulli.{action}\", \"Server\": {\"uuid\": \"{server_machine_id}\"},\n \"Metadata\": {\"title\": \"cut \\ud83d \xff\", \"viewOffset\": {view_offset}}}";
        let ev = decode(&req(
            Some("application/json"),
            Some("Tautulli/v2.17.2"),
            body,
        ))
        .unwrap();
        assert_eq!((ev.sender, ev.event), (Sender::Tautulli, EventKind::Test));
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
    fn jellyfin_template_that_renders_invalid_json_decodes() {
        // What the webhook plugin sends for a user's Handlebars template: an `Overview` with
        // line breaks, `{{Name}}` HTML-escaping the quote the plugin backslash-escaped, bare
        // `{{IsPaused}}`/`{{PlayedToCompletion}}` rendering .NET's False/True, a bare
        // `{{SeasonNumber}}` rendering nothing for a movie, and a trailing comma left by a
        // conditional block; GUIDs rendered with dashes.
        let body = "{\n  \"NotificationType\": \"PlaybackStop\",\n  \"ServerId\": \"7bc43eb3bf2c4266980f3e30ab4d8fa4\",\n  \"UserId\": \"a4b9f3c2-d1e0-4f6a-8b7c-6d5e4f3a2b1c\",\n  \"NotificationUsername\": \"alice\",\n  \"ItemId\": \"e3a1f9b2-c47d-4e1f-9a0b-8c7d6e5f4a3b\",\n  \"ItemType\": \"Movie\",\n  \"Name\": \"The \\&quot;Director\\&quot; Cut\",\n  \"Overview\": \"First paragraph.\r\n\r\nSecond\tparagraph.\",\n  \"Year\": 2016,\n  \"SeasonNumber\": ,\n  \"Provider_imdb\": \"tt2543164\",\n  \"RunTimeTicks\": 69610000000,\n  \"PlaybackPositionTicks\": 68123400000,\n  \"IsPaused\": False,\n  \"PlayedToCompletion\": True,\n\n}";
        for ct in ["text/plain; charset=utf-8", "application/json"] {
            let ev = decode(&req(
                Some(ct),
                Some("Jellyfin-Server/10.10.7"),
                body.as_bytes(),
            ))
            .unwrap();
            assert_eq!(ev.sender, Sender::Jellyfin);
            assert_eq!(ev.event, EventKind::Stop);
            assert_eq!(ev.played, Some(true));
            assert_eq!(ev.position_ms, Some(6_812_340));
            assert_eq!(
                ev.item_id.as_deref(),
                Some("e3a1f9b2c47d4e1f9a0b8c7d6e5f4a3b")
            );
            assert_eq!(ev.season, None);
            assert_eq!(ev.external_ids["imdb"], "tt2543164");
            assert_eq!(
                ev.user_id.as_deref(),
                Some("a4b9f3c2-d1e0-4f6a-8b7c-6d5e4f3a2b1c")
            );
        }
        // The same with `IsPaused: True` is a pause.
        let body = r#"{"NotificationType": "PlaybackProgress", "ItemType": "Episode", "ItemId": "i", "IsPaused": True, "PlaybackPositionTicks": 10000}"#;
        let ev = decode(&req(Some("text/plain"), None, body.as_bytes())).unwrap();
        assert_eq!((ev.event, ev.position_ms), (EventKind::Pause, Some(1)));
        // Text that no repair makes JSON keeps its first error.
        let err = decode(&req(Some("text/plain"), None, b"{\"a\": \"x\n")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid JSON at line 2 column 0: control character"),
            "{err}"
        );
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
        // Tautulli sends nothing when its filled-in template is not JSON: say so.
        let err = decode(&req(
            Some("application/json"),
            Some("Tautulli/v2.17.2"),
            b" \n",
        ))
        .unwrap_err();
        assert!(matches!(err, DecodeError::EmptyTautulliBody), "{err}");
        assert!(err.to_string().contains("\"{view_offset}\""), "{err}");
    }

    #[test]
    fn data_unwrapping_messages() {
        let msg = |body: &[u8]| decode(&req(None, None, body)).unwrap_err().to_string();
        // Unwrapped once or twice, then the 'data' field itself is reported.
        assert!(
            msg(br#"{"data": "[1]"}"#).ends_with("the JSON body is an array, not an object"),
            "{}",
            msg(br#"{"data": "[1]"}"#)
        );
        assert!(msg(br#"{"data": {"data": 5}}"#).ends_with("keys present: data"));
        assert!(msg(br#"{"event": null}"#).ends_with("keys present: event (null)"));
        assert!(msg(br#"{"data": {"data": {"data": 5}}}"#).ends_with("keys present: data"));
        assert!(msg(br#"{"data": {"data": "\"x\""}}"#)
            .ends_with("the 'data' field holds a string, not an object"));
        assert!(msg(br#"{"data": {"data": "5"}}"#)
            .ends_with("the 'data' field holds a number, not an object"));
        // Keys are found in any case, and listed sorted, once, at most 12.
        let ev = decode(&req(None, None, br#"{"DATA": {"Event": "library.new"}}"#)).unwrap();
        assert_eq!(ev.sender, Sender::Emby);
        let m = msg(br#"{"n": 1, "m": 2, "a": 3, "b": 4, "c": 5, "d": 6, "e": 7, "f": 8, "g": 9, "h": 10, "i": 11, "j": 12, "a": 13, "k": 14}"#);
        assert!(
            m.ends_with("keys present: a, b, c, d, e, f, g, h, i, j, k, m, ..."),
            "{m}"
        );
    }
}
