//! Property tests: no input makes the decoder panic; it always answers an event or a typed
//! error, and changing values inside a real payload never makes it undecodable.

use crate::support::fixtures::{fixture_cases, fixture_files};
use proptest::prelude::*;
use serde_json::{Map, Value};
use watchstate::webhook::{decode, RawRequest};

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "text/plain",
    "text/plain; charset=utf-8",
    "multipart/form-data",
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=\"\"",
    "multipart/form-data; boundary=abc",
    "multipart/form-data; boundary=\"a;b\"",
    "application/x-www-form-urlencoded",
    "application/octet-stream",
    ";;;",
    "",
];

fn run(ct: Option<&str>, ua: Option<&str>, body: &[u8]) {
    let req = RawRequest {
        method: "POST",
        content_type: ct,
        user_agent: ua,
        body,
    };
    match decode(&req) {
        Ok(event) => {
            serde_json::to_value(&event).expect("a decoded event always serializes");
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error always says something"),
    }
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(CONTENT_TYPES).prop_map(|s| Some(s.to_string())),
        ".{0,40}".prop_map(Some),
    ]
}

fn user_agent() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("PlexMediaServer/1.0".to_string())),
        Just(Some("Tautulli/v2".to_string())),
        Just(Some("Jellyfin-Server/10.10".to_string())),
        ".{0,20}".prop_map(Some),
    ]
}

/// JSON whose top level looks like one of the senders, with arbitrary contents below.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        "(tt|imdb://tt|tvdb://|com.plexapp.agents.thetvdb://|com.plexapp.agents.hama://anidb-)[0-9/]{0,8}"
            .prop_map(Value::String),
        "\\{[a-z_]{1,10}\\}".prop_map(Value::String),
    ];
    let key = prop_oneof![
        proptest::sample::select(vec![
            "event",
            "Event",
            "NotificationType",
            "Server",
            "Account",
            "Metadata",
            "Item",
            "User",
            "PlaybackInfo",
            "uuid",
            "Id",
            "id",
            "type",
            "Type",
            "ratingKey",
            "Guid",
            "guid",
            "Guids",
            "ProviderIds",
            "Provider_imdb",
            "viewOffset",
            "PositionTicks",
            "PlaybackPositionTicks",
            "SaveReason",
            "Played",
            "IsPaused",
            "PlayedToCompletion",
            "data",
            "ItemType",
            "ServerId",
        ])
        .prop_map(String::from),
        "[a-zA-Z_]{1,8}",
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Replaces the leaf at `index` (in visiting order) by `with`; the top-level sender keys are
/// kept, so the body stays recognisable.
fn replace_leaf(v: &mut Value, index: &mut usize, with: &Value, top: bool) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if top && matches!(k.as_str(), "event" | "Event" | "NotificationType" | "data") {
                    continue;
                }
                replace_leaf(child, index, with, false);
            }
        }
        Value::Array(items) => {
            for child in items {
                replace_leaf(child, index, with, false);
            }
        }
        leaf => {
            if *index == 0 {
                *leaf = with.clone();
            }
            *index = index.wrapping_sub(1);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), ct in content_type(), ua in user_agent()) {
        run(ct.as_deref(), ua.as_deref(), &body);
    }

    #[test]
    fn arbitrary_json_never_panics(v in arb_json(), ct in content_type(), ua in user_agent()) {
        let body = serde_json::to_vec(&v).unwrap();
        run(ct.as_deref(), ua.as_deref(), &body);
        // The same JSON inside the envelopes.
        let multipart = crate::support::fixtures::multipart("b0und", &[("payload", None, "application/json", &body)]);
        run(Some("multipart/form-data; boundary=b0und"), ua.as_deref(), &multipart);
        let form = serde_urlencoded::to_string([("data", String::from_utf8_lossy(&body).as_ref())]).unwrap();
        run(Some("application/x-www-form-urlencoded"), None, form.as_bytes());
    }

    #[test]
    fn truncated_fixtures_never_panic(case_index in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), ct in content_type()) {
        let cases = fixture_cases();
        let case = case_index.get(&cases);
        let end = cut.index(case.body.len() + 1);
        run(case.content_type.as_deref(), case.user_agent.as_deref(), &case.body[..end]);
        run(ct.as_deref(), case.user_agent.as_deref(), &case.body[..end]);
    }

    #[test]
    fn mutated_fixture_bytes_never_panic(
        case_index in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let cases = fixture_cases();
        let case = case_index.get(&cases);
        let mut body = case.body.clone();
        for (at, byte, op) in edits {
            if body.is_empty() { break; }
            let i = at.index(body.len());
            match op {
                0 => body[i] = byte,
                1 => body.insert(i, byte),
                _ => { body.remove(i); }
            }
        }
        run(case.content_type.as_deref(), case.user_agent.as_deref(), &body);
    }

    #[test]
    fn changing_a_value_inside_a_fixture_still_decodes(
        file_index in any::<prop::sample::Index>(),
        leaf in any::<prop::sample::Index>(),
        with in arb_json(),
    ) {
        let files = fixture_files();
        let (name, sender, body, _) = file_index.get(&files);
        let mut v: Value = serde_json::from_slice(body).unwrap();
        let mut index = leaf.index(400);
        replace_leaf(&mut v, &mut index, &with, true);
        let bytes = serde_json::to_vec(&v).unwrap();
        let ua = (sender == "tautulli").then_some("Tautulli/v2.17.2");
        let event = decode(&RawRequest { method: "POST", content_type: Some("application/json"), user_agent: ua, body: &bytes });
        prop_assert!(event.is_ok(), "{name}: {:?}", event.err().map(|e| e.to_string()));
        prop_assert_eq!(event.unwrap().sender.as_str(), sender.as_str());
    }
}
