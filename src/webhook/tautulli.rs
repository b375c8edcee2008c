//! Tautulli webhooks: the guide's JSON template (Plex-shaped, every value a string), sent with
//! `PUT`, `POST` or `PATCH`. The event is `tautulli.<action>`.
//!
//! | Tautulli event | normalised |
//! |---|---|
//! | `tautulli.play` (`start`) / `pause` / `resume` / `stop` | play / pause / resume / stop |
//! | `tautulli.watched` | scrobble, `played = true` |
//! | `tautulli.created` | item_added (generic) |
//! | a test notification (event, server or item an unrendered `{placeholder}`) or `tautulli.test` | test |
//! | anything else (`change`, `buffer`, `error`, `newdevice`, ...) | ignore |
//!
//! `Metadata.Guids` (`{imdb_id}`, `{thetvdb_id}`, ...) name the show for an episode and the
//! movie for a movie.

use super::fields::{self, str_field};
use super::lazy::Obj;
use super::{blank, plex};
use watchstate_actors::event::{EventKind, ItemType, Sender, WebhookEvent};

pub fn decode(obj: Obj<'_>) -> WebhookEvent {
    // Unrendered placeholders are absent values. A test notification sends the template
    // unrendered: its event, server and item are placeholders. A live event may still leave
    // some other one (Tautulli keeps a name it does not know as `{name}`: an older Tautulli
    // than the template, or a typo); that field alone is absent.
    let raw_event = str_field(&obj, "event").unwrap_or_default();
    let unrendered = |parent: &str, key: &str| {
        fields::object(&obj, parent)
            .and_then(|o| str_field(o, key))
            .is_some_and(|v| is_unrendered(&v))
    };
    let is_test = is_unrendered(&raw_event)
        || unrendered("Server", "uuid")
        || unrendered("Metadata", "ratingKey");
    let obj = obj.with_null_strings(is_unrendered);
    let mut ev = blank(Sender::Tautulli, plex::server_id(&obj), raw_event.clone());
    plex::fill_account(&obj, &mut ev);
    if let Some(meta) = fields::object(&obj, "Metadata") {
        plex::fill_metadata(meta, &mut ev);
        fill_guids(meta, &mut ev);
    }
    let lower = raw_event.to_ascii_lowercase();
    let action = lower.strip_prefix("tautulli.").unwrap_or(&lower);
    let (kind, played) = if is_test {
        (EventKind::Test, None)
    } else {
        match action {
            "play" | "start" => (EventKind::Play, None),
            "pause" => (EventKind::Pause, None),
            "resume" => (EventKind::Resume, None),
            "stop" => (EventKind::Stop, None),
            "watched" => (EventKind::Scrobble, Some(true)),
            "created" => (EventKind::ItemAdded, None),
            "test" => (EventKind::Test, None),
            _ => (EventKind::Ignore, None),
        }
    };
    ev.event = kind;
    ev.played = played;
    ev.generic = kind == EventKind::ItemAdded;
    ev
}

/// `Metadata.Guids` of the template, plus any Plex guid the payload carries.
fn fill_guids(meta: &Obj<'_>, ev: &mut WebhookEvent) {
    let is_episode = ev.item_type == Some(ItemType::Episode);
    if let Some(guids) = fields::object_exact(meta, "Guids") {
        let target = if is_episode {
            &mut ev.series_external_ids
        } else {
            &mut ev.external_ids
        };
        for (provider, value) in guids.sorted() {
            if let Some(value) = fields::string(value) {
                super::ids::insert(target, provider, &value);
            }
        }
    }
    plex::fill_guids(meta, ev);
}

/// A string that is exactly one `{placeholder}`, or the event `tautulli.{action}` of an
/// unrendered template: it reads as `null`. Only strings with a `{` qualify (as
/// [`Obj::any_brace_string`] requires).
fn is_unrendered(s: &str) -> bool {
    is_placeholder(s) || (s.starts_with("tautulli.") && s.contains('{') && s.contains('}'))
}

/// Quotes every `{placeholder}` that stands outside a JSON string, so that a test notification
/// of a template with unquoted numeric placeholders parses. `None` if there was none.
pub(super) fn quote_bare_placeholders(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut changed = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == '{' {
            // Placeholders are short: look only a few bytes ahead (linear in the body).
            let window = &rest.as_bytes()[..rest.len().min(64)];
            if let Some(end) = window.iter().position(|b| *b == b'}') {
                let candidate = &rest[..=end];
                if is_placeholder(candidate) {
                    out.push('"');
                    out.push_str(candidate);
                    out.push('"');
                    rest = &rest[end + 1..];
                    changed = true;
                    continue;
                }
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    changed.then_some(out)
}

fn is_placeholder(s: &str) -> bool {
    let s = s.trim();
    s.len() > 2
        && s.starts_with('{')
        && s.ends_with('}')
        && s[1..s.len() - 1]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

#[cfg(test)]
mod tests {
    use super::super::lazy::parse_object;
    use super::*;
    use serde_json::{json, Value};

    fn dec(v: Value) -> WebhookEvent {
        decode(parse_object(&v.to_string()))
    }

    fn body(event: &str, media_type: &str) -> Value {
        json!({"event": event, "Account": {"id": "28467193", "title": "bob"},
               "Server": {"uuid": "9d2c"},
               "Metadata": {"type": media_type, "ratingKey": "70315", "title": "Pilot",
                            "grandparentTitle": "Severance", "index": "1", "parentIndex": "1",
                            "viewOffset": "1452000", "duration": "3417000", "year": "",
                            "librarySectionID": "2",
                            "Guids": {"imdb": "tt11280740", "tvdb": "371980", "tmdb": "", "tvmaze": "bad"}}})
    }

    #[test]
    fn event_table() {
        for (name, kind, played) in [
            ("tautulli.play", EventKind::Play, None),
            ("tautulli.start", EventKind::Play, None),
            ("tautulli.pause", EventKind::Pause, None),
            ("tautulli.resume", EventKind::Resume, None),
            ("tautulli.stop", EventKind::Stop, None),
            ("tautulli.watched", EventKind::Scrobble, Some(true)),
            ("tautulli.created", EventKind::ItemAdded, None),
            ("tautulli.test", EventKind::Test, None),
            ("tautulli.buffer", EventKind::Ignore, None),
            ("tautulli.newdevice", EventKind::Ignore, None),
        ] {
            let ev = dec(body(name, "movie"));
            assert_eq!(ev.event, kind, "{name}");
            assert_eq!(ev.played, played, "{name}");
            assert_eq!(ev.generic, kind == EventKind::ItemAdded, "{name}");
            assert_eq!(ev.sender, Sender::Tautulli);
        }
    }

    #[test]
    fn strings_become_numbers_and_episode_guids_name_the_show() {
        let ev = dec(body("tautulli.pause", "episode"));
        assert_eq!(ev.user_id.as_deref(), Some("28467193"));
        assert_eq!((ev.season, ev.episode, ev.year), (Some(1), Some(1), None));
        assert_eq!(
            (ev.position_ms, ev.duration_ms),
            (Some(1_452_000), Some(3_417_000))
        );
        assert!(ev.external_ids.is_empty());
        assert_eq!(ev.series_external_ids.len(), 2);
        assert_eq!(ev.series_external_ids["tvdb"], "371980");
        assert_eq!(ev.library_id.as_deref(), Some("2"));

        let ev = dec(body("tautulli.play", "movie"));
        assert_eq!(ev.external_ids["imdb"], "tt11280740");
        assert!(ev.series_external_ids.is_empty());
        assert_eq!((ev.season, ev.episode), (None, None));
    }

    #[test]
    fn unrendered_template_is_a_test() {
        let ev = dec(json!({"event": "tautulli.{action}",
            "Account": {"id": "{user_id}", "title": "{username}"},
            "Server": {"uuid": "{server_machine_id}"},
            "Metadata": {"type": "{media_type}", "ratingKey": "{rating_key}", "viewOffset": "{view_offset}",
                         "Guids": {"imdb": "{imdb_id}"}}}));
        assert_eq!(ev.event, EventKind::Test);
        assert_eq!(ev.backend_id, "");
        assert_eq!(ev.user_id, None);
        assert_eq!(ev.item_id, None);
        assert_eq!(ev.position_ms, None);
        assert!(ev.external_ids.is_empty());

        // Rendered event, its item left unrendered: still a test.
        let ev = dec(json!({"event": "tautulli.play", "Server": {"uuid": "abc"},
                            "Metadata": {"ratingKey": "{rating_key}"}}));
        assert_eq!(ev.event, EventKind::Test);
        assert_eq!(ev.backend_id, "abc");
    }

    /// Tautulli keeps a parameter it does not know as `{name}` in a live event (an older
    /// Tautulli than the template, or a typo): that field is absent, the event is real.
    #[test]
    fn a_live_event_with_one_unknown_placeholder_is_not_a_test() {
        let mut v = body("tautulli.watched", "movie");
        v["Metadata"]["file_size"] = json!("{file_size_bytes}");
        v["Metadata"]["year"] = json!("{yaer}");
        v["Metadata"]["Guids"]["tmdb"] = json!("{themoviedb_id}");
        let ev = dec(v);
        assert_eq!(ev.event, EventKind::Scrobble);
        assert_eq!(ev.played, Some(true));
        assert_eq!(ev.item_id.as_deref(), Some("70315"));
        assert_eq!(ev.year, None);
        assert_eq!(
            ev.external_ids.get("imdb").map(String::as_str),
            Some("tt11280740")
        );
        assert!(!ev.external_ids.contains_key("tmdb"));

        // The server left unrendered: a test.
        let mut v = body("tautulli.watched", "movie");
        v["Server"]["uuid"] = json!("{server_machine_id}");
        assert_eq!(dec(v).event, EventKind::Test);
    }

    #[test]
    fn bare_placeholders_are_quoted_outside_strings_only() {
        let fixed =
            quote_bare_placeholders(r#"{"a": {x_y}, "b": "{c} \" {d}", "e": {"f": 1}}"#).unwrap();
        assert_eq!(fixed, r#"{"a": "{x_y}", "b": "{c} \" {d}", "e": {"f": 1}}"#);
        assert_eq!(quote_bare_placeholders(r#"{"a": "{x}"}"#), None);
    }

    #[test]
    fn blank_user_of_created_is_none() {
        let mut v = body("tautulli.created", "movie");
        v["Account"] = json!({"id": "", "title": ""});
        let ev = dec(v);
        assert_eq!((ev.user_id, ev.user_name), (None, None));
        assert!(ev.generic);
    }
}
