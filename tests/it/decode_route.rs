//! Decoding then routing every fixture against a configuration built from its own ids, with the
//! ids written the other way round (case flipped, dashes added): generic events fan out to every
//! user of the server, user events reach exactly their user, the rest is ignored or a test.

use crate::support::fixtures::fixture_cases;
use proptest::prelude::*;
use watchstate::webhook::{decode, route, RawRequest, RouteOutcome, RouteTarget};
use watchstate_actors::event::EventKind;
use watchstate_actors::store::PairKey;

/// Writes an id the way another tool might: upper-cased, with dashes every `every` characters.
fn mangle(id: &str, every: usize, upper: bool) -> String {
    let mut out = String::new();
    for (i, c) in id.chars().enumerate() {
        if every > 0 && i > 0 && i % every == 0 {
            out.push('-');
        }
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
    }
    out
}

fn targets_for(server: &str, user: Option<&str>, every: usize, upper: bool) -> Vec<RouteTarget> {
    vec![
        RouteTarget {
            user: "owner".into(),
            backend: "main".into(),
            server_id: mangle(server, every, upper),
            user_id: mangle(user.unwrap_or("someone"), every, upper),
        },
        RouteTarget {
            user: "guest".into(),
            backend: "main".into(),
            server_id: server.into(),
            user_id: "not-the-sender".into(),
        },
        RouteTarget {
            user: "owner".into(),
            backend: "elsewhere".into(),
            server_id: "another-server".into(),
            user_id: user.unwrap_or("someone").into(),
        },
    ]
}

fn check_case_routes(every: usize, upper: bool) -> Result<(), String> {
    for case in fixture_cases() {
        let event = decode(&RawRequest {
            method: case.method,
            content_type: case.content_type.as_deref(),
            user_agent: case.user_agent.as_deref(),
            body: &case.body,
        })
        .map_err(|e| format!("{}: {e}", case.label()))?;
        let targets = targets_for(&event.backend_id, event.user_id.as_deref(), every, upper);
        let outcome = route(&event, &targets);
        let owner = PairKey::new("owner", "main");
        let guest = PairKey::new("guest", "main");
        // A body without a server id, or a user event without a user id (a user's own Jellyfin
        // template can leave them out), cannot reach anyone: it is unmatched (DESIGN.md §4).
        let no_ids = event.backend_id.trim().is_empty()
            || (!event.generic && event.user_id.as_deref().unwrap_or("").trim().is_empty());
        let ok = match event.event {
            EventKind::Ignore => matches!(outcome, RouteOutcome::Ignored { .. }),
            EventKind::Test => match &outcome {
                RouteOutcome::Test { routed } => match &event.user_id {
                    Some(_) => routed == &vec![owner.clone()],
                    None => routed == &vec![owner.clone(), guest.clone()],
                },
                _ => false,
            },
            _ if event.item_type.is_none() => matches!(outcome, RouteOutcome::Ignored { .. }),
            _ if no_ids => matches!(outcome, RouteOutcome::Unmatched { .. }),
            EventKind::ItemAdded => {
                outcome == RouteOutcome::Routed(vec![owner.clone(), guest.clone()])
            }
            _ => outcome == RouteOutcome::Routed(vec![owner.clone()]),
        };
        if !ok {
            return Err(format!(
                "{}: {} routed to {outcome:?}",
                case.label(),
                event.event
            ));
        }
        if event.actionable() && !no_ids && !matches!(outcome, RouteOutcome::Routed(_)) {
            return Err(format!("{}: actionable but {outcome:?}", case.label()));
        }
    }
    Ok(())
}

#[test]
fn decode_route_every_fixture() {
    check_case_routes(0, false).unwrap();
    check_case_routes(4, true).unwrap();
}

#[test]
fn decode_route_unknown_user_is_unmatched_with_its_ids() {
    for case in fixture_cases() {
        let event = decode(&RawRequest {
            method: case.method,
            content_type: case.content_type.as_deref(),
            user_agent: case.user_agent.as_deref(),
            body: &case.body,
        })
        .unwrap();
        if !event.actionable() {
            continue;
        }
        let targets = vec![RouteTarget {
            user: "owner".into(),
            backend: "main".into(),
            server_id: event.backend_id.clone(),
            user_id: "nobody".into(),
        }];
        match route(&event, &targets) {
            RouteOutcome::Unmatched { reason, .. } => {
                let uid = event.user_id.clone().unwrap_or_default();
                assert!(reason.contains(&uid), "{}: {reason}", case.label());
                assert!(
                    reason.contains(&event.backend_id),
                    "{}: {reason}",
                    case.label()
                );
            }
            other => panic!("{}: {other:?}", case.label()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn decode_route_ids_match_in_any_case_and_dash_layout(every in 0usize..9, upper in any::<bool>()) {
        prop_assert!(check_case_routes(every, upper).is_ok(), "{:?}", check_case_routes(every, upper));
    }
}
