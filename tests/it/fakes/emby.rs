//! Fake Emby 4.8: routes of its OpenAPI document, `X-Emby-Token` header (or `api_key` query),
//! PascalCase JSON, ticks.
//!
//! - `GET /System/Info/Public` (no auth)
//! - `GET /Users/{UserId}/Items?IncludeItemTypes&Ids&Fields&StartIndex&Limit` — `UserData`
//!   carries `LastPlayedDate` and the real `PlayCount` (else 0) only when `Fields` names
//!   `UserDataLastPlayedDate` / `UserDataPlayCount`, like recent servers
//! - `GET /Users/{UserId}/Items/{Id}` (the same `UserData` rule)
//! - `POST /Users/{UserId}/PlayedItems/{Id}(?DatePlayed=yyyyMMddHHmmss)`, `DELETE …` and
//!   `POST …/Delete` (unplayed)
//! - `POST /Users/{UserId}/Items/{ItemId}/UserData`: the body replaces the user data and absent
//!   fields take their defaults (an update without `Played` unmarks the item), as reported of
//!   real Emby servers.

use super::jellyfin::{
    item_json, parse_date, public_info, query_items, user_data_json, Render, OTHER_USER_DATA,
};
use super::{mediabrowser_token, FakeRequest, FakeResponse, Inner, State};
use serde_json::{json, Value};

const TICKS_PER_MS: i64 = 10_000;

pub(super) fn is_write(req: &FakeRequest) -> bool {
    let s = req.segments();
    matches!(
        (req.method.as_str(), s.as_slice()),
        ("POST" | "DELETE", ["Users", _, "PlayedItems", _])
            | ("POST", ["Users", _, "PlayedItems", _, "Delete"])
            | ("POST", ["Users", _, "Items", _, "UserData"])
    )
}

fn authorized(st: &State, req: &FakeRequest) -> bool {
    let token = req
        .header("x-emby-token")
        .map(str::to_string)
        .or_else(|| req.param_ci("api_key").map(str::to_string))
        .or_else(|| {
            req.header("x-emby-authorization")
                .and_then(mediabrowser_token)
        });
    token.is_some_and(|t| st.tokens.contains_key(&t))
}

pub(super) fn handle(inner: &Inner, st: &mut State, req: &FakeRequest) -> FakeResponse {
    let segs = req.segments();
    let m = req.method.as_str();
    if m == "GET" && segs == ["System", "Info", "Public"] {
        return public_info(inner, "Emby Server", "4.8.11.0");
    }
    if !authorized(st, req) {
        return FakeResponse::status(401, "Access token is invalid or expired.");
    }
    if let ("GET", ["Items", id, "Ancestors"]) = (m, segs.as_slice()) {
        return super::jellyfin::ancestors(st, id);
    }
    if let ("GET", ["Users", "Query"]) = (m, segs.as_slice()) {
        let users = st.user_dtos(&inner.server_id);
        return FakeResponse::json(json!({"Items": users, "TotalRecordCount": users.len()}));
    }
    let ["Users", user, rest @ ..] = segs.as_slice() else {
        return FakeResponse::status(404, "no such route in the fake");
    };
    let user = user.to_string();
    if !st.known_user(&user) {
        return FakeResponse::status(404, "User not found");
    }
    match (m, rest) {
        ("GET", ["Items"]) => {
            let p = |name: &str| req.param_ci(name).map(str::to_string);
            if let Some(refused) = super::jellyfin::unknown_parent(st, p("ParentId")) {
                return refused;
            }
            let fields = p("Fields").unwrap_or_default().to_ascii_lowercase();
            let has = |f: &str| fields.split(',').any(|x| x.trim() == f);
            let render = Render {
                provider_ids: has("providerids"),
                last_played: has("userdatalastplayeddate"),
                play_count: has("userdataplaycount"),
            };
            FakeResponse::json(query_items(inner, st, Some(&user), p, render))
        }
        ("GET", ["Items", id]) => match st.item(id) {
            Some(item) => {
                // Like listings: the real play count and the date only when `Fields` names
                // them (the spec documents no `Fields` here; recent servers read it).
                let fields = req
                    .param_ci("Fields")
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                let has = |f: &str| fields.split(',').any(|x| x.trim() == f);
                let render = Render {
                    provider_ids: true,
                    last_played: has("userdatalastplayeddate"),
                    play_count: has("userdataplaycount"),
                };
                FakeResponse::json(item_json(inner, st, Some(&user), item, render))
            }
            None => match st.show(id) {
                Some(show) => {
                    FakeResponse::json(super::jellyfin::show_json(inner, show, Render::FULL))
                }
                None => FakeResponse::status(404, "Item not found"),
            },
        },
        (_, ["PlayedItems", id]) | ("POST", ["PlayedItems", id, "Delete"])
            if m == "POST" || m == "DELETE" =>
        {
            if st.item(id).is_none() {
                return FakeResponse::status(404, "Item not found");
            }
            let unplay = m == "DELETE" || rest.len() == 3;
            if unplay {
                st.mark_unplayed(&user, id);
            } else {
                let at = match req.param_ci("DatePlayed") {
                    Some(d) => match parse_date(d) {
                        Some(at) => Some(at),
                        None => return FakeResponse::status(400, "invalid DatePlayed"),
                    },
                    None => None,
                };
                st.mark_played(&user, id, at);
            }
            FakeResponse::json(user_data_json(st, &user, id, Render::FULL))
        }
        ("POST", ["Items", id, "UserData"]) => {
            if st.item(id).is_none() {
                return FakeResponse::status(404, "Item not found");
            }
            let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
                return FakeResponse::status(400, "body is not a UserItemDataDto");
            };
            let ticks = body
                .get("PlaybackPositionTicks")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            let played = body.get("Played").and_then(Value::as_bool).unwrap_or(false);
            let count = body.get("PlayCount").and_then(Value::as_u64).unwrap_or(0) as u32;
            let last = body
                .get("LastPlayedDate")
                .and_then(Value::as_str)
                .and_then(parse_date);
            // The other fields are replaced too: absent ones are dropped (default).
            let others: serde_json::Map<String, Value> = OTHER_USER_DATA
                .iter()
                .filter_map(|f| {
                    Some((
                        f.to_string(),
                        body.get(*f).filter(|v| !v.is_null())?.clone(),
                    ))
                })
                .collect();
            st.other_user_data
                .insert((user.clone(), id.to_string()), others);
            let s = st.state_mut(&user, id);
            s.position_ms = (ticks.max(0) / TICKS_PER_MS) as u64;
            s.played = played;
            s.play_count = count;
            s.last_played_at = last;
            let ms = s.position_ms;
            st.record_position(&user, id, ms);
            FakeResponse::empty(204)
        }
        _ => FakeResponse::status(404, "no such route in the fake"),
    }
}
