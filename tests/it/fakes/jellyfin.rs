//! Fake Jellyfin 10.11/12.0: routes of its OpenAPI document, `Authorization: MediaBrowser
//! Token="…"` (legacy `X-Emby-Token` refused, like 12.0's default), PascalCase JSON,
//! ticks. Also the `BaseItemDto` rendering Emby shares.
//!
//! - `GET /System/Info/Public` (no auth)
//! - `GET /Items?userId&includeItemTypes&excludeLocationTypes&ids&fields&sortBy&startIndex&limit`
//!   → `Items`, `TotalRecordCount`; array parameters repeated or comma lists; in creation
//!   order when `sortBy` starts with `DateCreated`, else in an order that turns on every
//!   request; virtual items ([`super::FakeItem::virtual_item`]) listed unless
//!   `excludeLocationTypes` names `Virtual`
//! - `GET /Items/{itemId}?userId`; an unknown id: 404 when it is a GUID, else 400 (binding)
//! - `POST|DELETE /UserPlayedItems/{itemId}?userId(&datePlayed)` → `UserItemDataDto`
//! - `GET|POST /UserItems/{itemId}/UserData?userId` (body `UpdateUserItemDataDto`, nullable
//!   fields; `LastPlayedDate` sets the item's last played date)
//!
//! Started with [`super::FakeServer::start_jellyfin_10_8`] it is a Jellyfin 10.8 instead
//! (10.8.13 OpenAPI): version `10.8.13`, `GET /Users/{userId}/Items/{itemId}` and
//! `POST|DELETE /Users/{userId}/PlayedItems/{itemId}(?datePlayed)`; the 10.9 routes above
//! answer 404 (`GET /Items/{itemId}`: 405, that path only has POST and DELETE there) and there
//! is no route that sets a resume position.

use super::{
    dotnet_date, mediabrowser_token, provider_name, FakeItem, FakeRequest, FakeResponse, FakeShow,
    Inner, State,
};
use serde_json::{json, Map, Value};
use watchstate_actors::event::{normalize_id, ItemType, Millis};

const TICKS_PER_MS: i64 = 10_000;

pub(super) fn is_write(req: &FakeRequest) -> bool {
    let s = req.segments();
    (s.first() == Some(&"UserPlayedItems") && (req.method == "POST" || req.method == "DELETE"))
        || (s.first() == Some(&"UserItems")
            && s.get(2) == Some(&"UserData")
            && req.method == "POST")
        || (s.first() == Some(&"Users")
            && s.get(2) == Some(&"PlayedItems")
            && (req.method == "POST" || req.method == "DELETE"))
}

/// Marks `id` played (`POST`, with `datePlayed`) or unplayed for `user`.
fn played_items(st: &mut State, req: &FakeRequest, user: &str, id: &str) -> FakeResponse {
    if st.item(id).is_none() {
        return FakeResponse::status(404, "Item not found");
    }
    if req.method == "POST" {
        let at = match req.param_ci("datePlayed") {
            Some(d) => match parse_date(d) {
                Some(at) => Some(at),
                None => return FakeResponse::status(400, "invalid datePlayed"),
            },
            None => None,
        };
        st.mark_played(user, id, at);
    } else {
        st.mark_unplayed(user, id);
    }
    FakeResponse::json(user_data_json(st, user, id, Render::FULL))
}

/// The routes of Jellyfin 10.8 (`/Users/{userId}/...`).
fn handle_10_8(inner: &Inner, st: &mut State, req: &FakeRequest) -> FakeResponse {
    let segs = req.segments();
    let m = req.method.as_str();
    match (m, segs.as_slice()) {
        ("GET", ["Users", user, "Items", id]) => {
            if !st.known_user(user) {
                return FakeResponse::status(404, "User not found");
            }
            match (st.item(id), st.show(id)) {
                (Some(item), _) => {
                    FakeResponse::json(item_json(inner, st, Some(user), item, Render::FULL))
                }
                (None, Some(show)) => FakeResponse::json(show_json(inner, show, Render::FULL)),
                _ => unknown_item(id),
            }
        }
        (_, ["Users", user, "PlayedItems", id]) if m == "POST" || m == "DELETE" => {
            if !st.known_user(user) {
                return FakeResponse::status(404, "User not found");
            }
            let user = user.to_string();
            played_items(st, req, &user, id)
        }
        ("GET", ["Items", id, "Ancestors"]) => ancestors(st, id),
        ("GET", ["Items", _]) => FakeResponse::status(405, ""),
        _ => FakeResponse::status(404, ""),
    }
}

/// The answer of `GET /Items/{itemId}` (10.8: `GET /Users/{userId}/Items/{itemId}`) for an id
/// the library does not have: `itemId` is a `Guid` route parameter, so an id that is not one
/// fails parameter binding (400, a validation problem), and a GUID of no item is 404. (The
/// fake's own items keep the short ids the tests give them.)
fn unknown_item(id: &str) -> FakeResponse {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    let parts: Vec<&str> = id.split('-').collect();
    let guid = (id.len() == 32 && hex(id))
        || (parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| hex(p)));
    if guid {
        return FakeResponse::status(404, "Item not found");
    }
    let mut resp = FakeResponse::json(json!({
        "type": "https://tools.ietf.org/html/rfc9110#section-15.5.1",
        "title": "One or more validation errors occurred.",
        "status": 400,
        "errors": {"itemId": [format!("The value '{id}' is not valid.")]},
    }));
    resp.status = 400;
    resp.content_type = "application/problem+json; charset=utf-8";
    resp
}

/// Which optional parts of an item are rendered.
#[derive(Clone, Copy)]
pub(super) struct Render {
    pub(super) provider_ids: bool,
    /// `UserData.LastPlayedDate` (Emby listings: only when asked for).
    pub(super) last_played: bool,
    /// `UserData.PlayCount` (Emby listings: only when asked for).
    pub(super) play_count: bool,
}

impl Render {
    pub(super) const FULL: Render = Render {
        provider_ids: true,
        last_played: true,
        play_count: true,
    };
}

pub(super) fn provider_ids_json(ids: &watchstate_actors::event::ExternalIds) -> Value {
    Value::Object(
        ids.iter()
            .map(|(k, v)| (provider_name(k), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

pub(super) fn user_data_json(st: &State, user: &str, item_id: &str, r: Render) -> Value {
    let s = st.state_of(user, item_id);
    let mut out = json!({
        "PlaybackPositionTicks": s.position_ms as i64 * TICKS_PER_MS,
        "IsFavorite": false,
        "Played": s.played,
        "Key": item_id,
        "ItemId": item_id,
    });
    // Emby answers 0 unless `Fields` asks for the count (`Render::play_count`).
    out["PlayCount"] = json!(if r.play_count { s.play_count } else { 0 });
    if r.last_played {
        if let Some(at) = s.last_played_at {
            out["LastPlayedDate"] = json!(dotnet_date(at));
        }
    }
    let key = (user.to_string(), item_id.to_string());
    for (k, v) in st.other_user_data.get(&key).into_iter().flatten() {
        out[k.as_str()] = v.clone();
    }
    out
}

/// The `UserData` fields besides play state that a user-data update carries.
pub(super) const OTHER_USER_DATA: [&str; 3] = ["IsFavorite", "Rating", "Likes"];

pub(super) fn item_json(
    inner: &Inner,
    st: &State,
    user: Option<&str>,
    item: &FakeItem,
    r: Render,
) -> Value {
    let mut out = json!({
        "Name": item.title,
        "ServerId": inner.server_id,
        "Id": item.id,
        "Type": match item.item_type { ItemType::Movie => "Movie", ItemType::Episode => "Episode" },
        "IsFolder": false,
        "MediaType": "Video",
        "RunTimeTicks": item.duration_ms as i64 * TICKS_PER_MS,
        "LocationType": if item.is_virtual { "Virtual" } else { "FileSystem" },
    });
    if let Some(y) = item.year {
        out["ProductionYear"] = json!(y);
    }
    if r.provider_ids {
        out["ProviderIds"] = provider_ids_json(&item.ids);
    }
    if item.item_type == ItemType::Episode {
        if let Some(show) = item.show_id.as_deref().and_then(|id| st.show(id)) {
            out["SeriesName"] = json!(show.title);
            out["SeriesId"] = json!(show.id);
        }
        out["ParentIndexNumber"] = json!(item.season);
        out["IndexNumber"] = json!(item.episode);
    }
    if let Some(user) = user {
        out["UserData"] = user_data_json(st, user, &item.id, r);
    }
    item.apply_render(&mut out);
    out
}

pub(super) fn show_json(inner: &Inner, show: &FakeShow, r: Render) -> Value {
    let mut out = json!({
        "Name": show.title,
        "ServerId": inner.server_id,
        "Id": show.id,
        "Type": "Series",
        "IsFolder": true,
    });
    if r.provider_ids {
        out["ProviderIds"] = provider_ids_json(&show.ids);
    }
    out
}

pub(super) fn public_info(inner: &Inner, product: &str, version: &str) -> FakeResponse {
    FakeResponse::json(json!({
        "LocalAddress": "http://127.0.0.1",
        "ServerName": format!("fake {product}"),
        "Version": version,
        "ProductName": product,
        "OperatingSystem": "Linux",
        "Id": inner.server_id,
        "StartupWizardCompleted": true,
    }))
}

/// The `QueryResult<BaseItemDto>` of a listing; shared with Emby (`p` reads its parameters).
pub(super) fn query_items(
    inner: &Inner,
    st: &State,
    user: Option<&str>,
    p: impl Fn(&str) -> Option<String>,
    render: Render,
) -> Value {
    let types: Option<Vec<String>> = p("includeItemTypes").map(|t| {
        t.split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .collect()
    });
    let wants = |t: &str| types.as_ref().is_none_or(|ts| ts.iter().any(|x| x == t));
    // `excludeLocationTypes`: Jellyfin only (Emby 4.8 has no such parameter and ignores
    // it); enum names read case-insensitively.
    let no_virtual = inner.kind == super::FakeKind::Jellyfin
        && p("excludeLocationTypes").is_some_and(|l| {
            l.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("virtual"))
        });
    let start: usize = p("startIndex").and_then(|s| s.parse().ok()).unwrap_or(0);
    let start = if st.ignore_start_index { 0 } else { start };
    let limit: usize = p("limit")
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let mut all: Vec<Value> = Vec::new();
    let total;
    if let Some(ids) = p("ids") {
        for id in ids.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if let Some(item) = st.item(id) {
                let t = match item.item_type {
                    ItemType::Movie => "movie",
                    ItemType::Episode => "episode",
                };
                if wants(t) {
                    all.push(item_json(inner, st, user, item, render));
                }
            } else if let Some(show) = st.show(id) {
                if wants("series") {
                    all.push(show_json(inner, show, render));
                }
            }
        }
        total = all.len();
        all = all.into_iter().skip(start).take(limit).collect();
    } else {
        // `parentId`: the items under that folder; with `recursive`, a library's items. Ids
        // compare as GUIDs do (dashes and case aside).
        let parent = p("parentId").map(|p| normalize_id(&p));
        let mut matching: Vec<&FakeItem> = st
            .items
            .iter()
            .filter(|i| match i.item_type {
                ItemType::Movie => wants("movie"),
                ItemType::Episode => wants("episode"),
            })
            .filter(|i| !(no_virtual && i.is_virtual))
            .filter(|i| {
                parent
                    .as_ref()
                    .is_none_or(|p| *p == normalize_id(&i.library_id()))
            })
            .collect();
        // `sortBy` (Jellyfin: repeated or a comma list; Emby: a comma list).
        let sorted = p("sortBy").is_some_and(|s| {
            let s = s.to_ascii_lowercase();
            s.split(',').next().map(str::trim) == Some("datecreated")
        });
        st.listing_order(&mut matching, sorted);
        total = matching.len();
        all = matching
            .into_iter()
            .skip(start)
            .take(limit)
            .map(|i| item_json(inner, st, user, i, render))
            .collect();
    }
    let total = total.saturating_sub(st.under_count);
    if inner.kind == super::FakeKind::Emby {
        // Emby's `QueryResult_BaseItemDto` has no `StartIndex`.
        return json!({"Items": all, "TotalRecordCount": total});
    }
    json!({"Items": all, "TotalRecordCount": total, "StartIndex": start})
}

/// A `parentId` that is no folder of the library is refused, as the servers do (Jellyfin:
/// 400 "Invalid parent id"; one that is not a GUID fails parameter binding, also 400).
pub(super) fn unknown_parent(st: &State, parent: Option<String>) -> Option<FakeResponse> {
    let parent = normalize_id(&parent?);
    let known = st
        .items
        .iter()
        .any(|i| normalize_id(&i.library_id()) == parent);
    (!known).then(|| FakeResponse::status(400, "Invalid parent id"))
}

/// `GET /Items/{id}/Ancestors` (both servers): the item's folders up to the root, nearest
/// first: for an episode its season and show, then its library (`CollectionFolder`), then the
/// user's root folder.
pub(super) fn ancestors(st: &State, id: &str) -> FakeResponse {
    let Some(item) = st.item(id) else {
        return FakeResponse::status(404, "Item not found");
    };
    let mut list = Vec::new();
    if item.item_type == ItemType::Episode {
        list.push(json!({"Id": format!("season-{id}"), "Type": "Season", "Name": "Season"}));
        if let Some(show) = &item.show_id {
            list.push(json!({"Id": show, "Type": "Series", "Name": "Show"}));
        }
    }
    let library = item.library_id();
    list.push(
        json!({"Id": library, "Type": "CollectionFolder", "Name": format!("Library {library}")}),
    );
    list.push(json!({"Id": "root", "Type": "UserRootFolder", "Name": "Media Folders"}));
    FakeResponse::json(Value::Array(list))
}

fn authorized(st: &State, req: &FakeRequest) -> bool {
    req.header("authorization")
        .filter(|h| {
            let scheme = h.split(' ').next().unwrap_or("");
            scheme.eq_ignore_ascii_case("MediaBrowser")
        })
        .and_then(mediabrowser_token)
        .is_some_and(|t| st.tokens.contains_key(&t))
}

pub(super) fn parse_date(s: &str) -> Option<Millis> {
    let s = s.trim();
    // ISO 8601, or the legacy `yyyyMMddHHmmss` both servers accept.
    let iso = if s.len() == 14 && s.chars().all(|c| c.is_ascii_digit()) {
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            &s[0..4],
            &s[4..6],
            &s[6..8],
            &s[8..10],
            &s[10..12],
            &s[12..14]
        )
    } else {
        s.to_string()
    };
    humantime::parse_rfc3339_weak(&iso)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as Millis)
}

pub(super) fn handle(inner: &Inner, st: &mut State, req: &FakeRequest) -> FakeResponse {
    let segs = req.segments();
    let m = req.method.as_str();
    if m == "GET" && segs == ["System", "Info", "Public"] {
        let version = if inner.jellyfin_10_8 {
            "10.8.13"
        } else {
            "10.11.11"
        };
        return public_info(inner, "Jellyfin Server", version);
    }
    if !authorized(st, req) {
        return FakeResponse::empty(401);
    }
    if m == "GET" && segs == ["Users"] {
        return FakeResponse::json(serde_json::Value::Array(st.user_dtos(&inner.server_id)));
    }
    if inner.jellyfin_10_8 && !(m == "GET" && segs == ["Items"]) {
        return handle_10_8(inner, st, req);
    }
    let user = req.param_ci("userId").map(str::to_string);
    if let Some(u) = &user {
        if !st.known_user(u) {
            return FakeResponse::status(404, "User not found");
        }
    }
    let need_user = || FakeResponse::status(400, "userId is required");
    match (m, segs.as_slice()) {
        ("GET", ["Items"]) => {
            let p = |name: &str| req.param_list_ci(name);
            if let Some(refused) = unknown_parent(st, p("parentId")) {
                return refused;
            }
            let fields = p("fields").unwrap_or_default().to_ascii_lowercase();
            let render = Render {
                provider_ids: fields.split(',').any(|f| f.trim() == "providerids"),
                last_played: true,
                play_count: true,
            };
            FakeResponse::json(query_items(inner, st, user.as_deref(), p, render))
        }
        ("GET", ["Items", id, "Ancestors"]) => ancestors(st, id),
        ("GET", ["Items", id]) => match (st.item(id), st.show(id)) {
            (Some(item), _) => {
                FakeResponse::json(item_json(inner, st, user.as_deref(), item, Render::FULL))
            }
            (None, Some(show)) => FakeResponse::json(show_json(inner, show, Render::FULL)),
            _ => unknown_item(id),
        },
        (_, ["UserPlayedItems", id]) if m == "POST" || m == "DELETE" => {
            let Some(user) = user else { return need_user() };
            played_items(st, req, &user, id)
        }
        (_, ["UserItems", id, "UserData"]) if m == "GET" || m == "POST" => {
            let Some(user) = user else { return need_user() };
            if st.item(id).is_none() {
                return FakeResponse::status(404, "Item not found");
            }
            if m == "POST" {
                let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
                    return FakeResponse::status(400, "body is not JSON");
                };
                // UpdateUserItemDataDto: every field nullable, absent means unchanged.
                let ticks = body.get("PlaybackPositionTicks").and_then(Value::as_i64);
                let played = body.get("Played").and_then(Value::as_bool);
                let last = body
                    .get("LastPlayedDate")
                    .and_then(Value::as_str)
                    .and_then(parse_date);
                let others = st
                    .other_user_data
                    .entry((user.clone(), id.to_string()))
                    .or_default();
                for field in OTHER_USER_DATA {
                    if let Some(v) = body.get(field).filter(|v| !v.is_null()) {
                        others.insert(field.to_string(), v.clone());
                    }
                }
                let s = st.state_mut(&user, id);
                if let Some(p) = played {
                    s.played = p;
                }
                if let Some(t) = ticks {
                    s.position_ms = (t.max(0) / TICKS_PER_MS) as u64;
                }
                if last.is_some() {
                    s.last_played_at = last;
                }
                let ms = s.position_ms;
                if ticks.is_some() {
                    st.record_position(&user, id, ms);
                }
            }
            FakeResponse::json(user_data_json(st, &user, id, Render::FULL))
        }
        _ => FakeResponse::status(404, "no such route in the fake"),
    }
}
