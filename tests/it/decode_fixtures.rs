//! Every fixture of `tests/fixtures/webhooks/`, in every transport its sender uses, decoded by
//! the function API and checked field by field against the fixture's `expected`.

use crate::support::fixtures::{check_expected, fixture_cases, fixture_files};
use watchstate::webhook::{decode, RawRequest};

#[test]
fn decode_every_fixture_in_every_transport() {
    let files = fixture_files();
    assert!(files.len() >= 20, "only {} fixtures found", files.len());
    let cases = fixture_cases();
    assert!(cases.len() >= 2 * files.len(), "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let req = RawRequest {
            method: case.method,
            content_type: case.content_type.as_deref(),
            user_agent: case.user_agent.as_deref(),
            body: &case.body,
        };
        let event = match decode(&req) {
            Ok(event) => event,
            Err(e) => {
                failures.push(format!("{}: decode failed: {e}", case.label()));
                continue;
            }
        };
        if event.sender.as_str() != case.sender {
            failures.push(format!(
                "{}: field 'sender': expected {}, got {}",
                case.label(),
                case.sender,
                event.sender
            ));
        }
        let mut json = serde_json::to_value(&event).expect("serialize event");
        json["actionable"] = serde_json::Value::Bool(event.actionable());
        if let Err(e) = check_expected(&json, &case.expected) {
            for line in e.lines() {
                failures.push(format!("{}: {line}", case.label()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_sender_and_transport_is_covered() {
    let cases = fixture_cases();
    for transport in [
        "plex multipart",
        "plex multipart+thumb",
        "tautulli PUT",
        "tautulli POST",
        "jellyfin text/plain",
        "jellyfin application/json",
        "emby json",
        "emby multipart data",
        "emby form data",
    ] {
        assert!(
            cases.iter().any(|c| c.transport == transport),
            "no case for {transport}"
        );
    }
}

#[test]
fn decode_is_deterministic_across_transports() {
    // The same fixture must decode to the same event whatever the envelope.
    let cases = fixture_cases();
    for name in cases
        .iter()
        .map(|c| c.name.clone())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let events: Vec<_> = cases
            .iter()
            .filter(|c| c.name == name)
            .filter_map(|c| {
                decode(&RawRequest {
                    method: c.method,
                    content_type: c.content_type.as_deref(),
                    user_agent: c.user_agent.as_deref(),
                    body: &c.body,
                })
                .ok()
            })
            .collect();
        assert!(!events.is_empty(), "{name}");
        assert!(
            events.windows(2).all(|w| w[0] == w[1]),
            "{name}: transports disagree"
        );
    }
}

#[test]
fn half_a_surrogate_pair_in_a_body_changes_no_fact() {
    // A serialiser that cut a title in the middle of an emoji writes half a surrogate pair as
    // an escape (`\ud83d`), which strict JSON parsers refuse. Such a body is read with U+FFFD
    // in its place: every fixture with one added decodes to the same event as without.
    let mut mutated = 0;
    for case in fixture_cases() {
        let Some(at) = case.body.iter().position(|b| *b == b'{') else {
            continue; // url-encoded: the JSON is escaped
        };
        let original = decode(&RawRequest {
            method: case.method,
            content_type: case.content_type.as_deref(),
            user_agent: case.user_agent.as_deref(),
            body: &case.body,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
        let mut body = case.body.clone();
        body.splice(at + 1..at + 1, br#""Note": "cut \ud83d", "#.iter().copied());
        let event = decode(&RawRequest {
            method: case.method,
            content_type: case.content_type.as_deref(),
            user_agent: case.user_agent.as_deref(),
            body: &body,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", case.label()));
        assert_eq!(event, original, "{}", case.label());
        mutated += 1;
    }
    assert!(mutated >= 60, "only {mutated} bodies with a JSON object");
}
