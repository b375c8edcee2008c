//! Fake Plex Media Server: routes of the community OpenAPI document, `X-Plex-Token` (header or
//! query; the token names the user), JSON `MediaContainer`s, ms positions, unix-second dates.
//!
//! - `GET /identity` (no auth) → `machineIdentifier`
//! - `GET /library/sections/all` → `Directory[]` (`key`, `type` movie|show), one section per
//!   distinct [`FakeItem::library`] ("1" movies, "2" shows by default)
//! - `GET /library/sections/{id}/all?type=1|2|4&includeGuids=1&sort&X-Plex-Container-Start&-Size`
//!   (in creation order, `addedAt`, when `sort=addedAt` is asked; else in an order that turns
//!   on every request, as a database without ORDER BY may answer)
//!   (paging also from the headers of the same names) → `Metadata[]`, `totalSize`, `offset`,
//!   and the headers `X-Plex-Container-Start`/`-Total-Size`; fields of every `MediaContainer`
//!   can be left out ([`super::FakeLibrary::plex_container_omit`])
//! - `GET /library/metadata/{ids}` (comma-separated ids; items and shows), with the items'
//!   `librarySectionID` also on the `MediaContainer` when they share one section
//! - `PUT /:/scrobble` / `PUT /:/unscrobble` `?identifier=com.plexapp.plugins.library&key=`
//! - `POST /:/timeline?identifier&ratingKey&key&state&time&duration`: `stopped` stores the
//!   offset; at 90 % of the duration or more Plex counts the item as watched. An `identifier`
//!   other than `com.plexapp.plugins.library` is refused.
//!
//! GETs without `Accept: application/json` get XML, as from Plex; writes need
//! `X-Plex-Client-Identifier`. Every request is recorded with its query and headers
//! ([`super::FakeServer::requests`]), so a test can read what a timeline report carried.
//!
//! Items with a legacy agent guid ([`FakeItem::plex_guid`]) have `guid` and no `Guid[]`.

use super::{FakeItem, FakeRequest, FakeResponse, FakeShow, Inner, State};
use serde_json::{json, Value};
use watchstate_actors::event::ItemType;

pub(super) fn is_write(req: &FakeRequest) -> bool {
    matches!(
        req.path.as_str(),
        "/:/scrobble" | "/:/unscrobble" | "/:/timeline"
    )
}

/// One section per library id, typed by its items, sorted by key.
fn sections(st: &State) -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    for item in &st.items {
        let key = item.library_id();
        if !out.iter().any(|(k, _)| *k == key) {
            let kind = match item.item_type {
                ItemType::Movie => "movie",
                ItemType::Episode => "show",
            };
            out.push((key, kind));
        }
    }
    out.sort_by(|a, b| {
        let n = |s: &str| s.parse::<u64>().unwrap_or(u64::MAX);
        n(&a.0).cmp(&n(&b.0)).then(a.0.cmp(&b.0))
    });
    out
}

fn section_id_json(key: &str) -> Value {
    key.parse::<u64>().map(Value::from).unwrap_or(json!(key))
}

fn guids_json(ids: &watchstate_actors::event::ExternalIds) -> Value {
    Value::Array(
        ids.iter()
            .map(|(k, v)| json!({"id": format!("{k}://{v}")}))
            .collect(),
    )
}

fn item_json(st: &State, user: &str, item: &FakeItem, include_guids: bool) -> Value {
    let s = st.state_of(user, &item.id);
    // Creation order is the library's order.
    let added_at = 1_600_000_000 + st.item_index.get(&item.id).copied().unwrap_or(0) as u64;
    let library = item.library_id();
    let kind = match item.item_type {
        ItemType::Movie => "movie",
        ItemType::Episode => "episode",
    };
    let mut out = json!({
        "ratingKey": item.id,
        "key": format!("/library/metadata/{}", item.id),
        "type": kind,
        "title": item.title,
        "guid": item.plex_guid.clone().unwrap_or_else(|| format!("plex://{kind}/{}", item.id)),
        "duration": item.duration_ms,
        "addedAt": added_at,
        "librarySectionID": section_id_json(&library),
        "librarySectionKey": format!("/library/sections/{library}"),
    });
    if include_guids && item.plex_guid.is_none() {
        out["Guid"] = guids_json(&item.ids);
    }
    if let Some(y) = item.year {
        out["year"] = json!(y);
    }
    if s.play_count > 0 || s.played {
        out["viewCount"] = json!(s.play_count.max(1));
    }
    if s.position_ms > 0 {
        out["viewOffset"] = json!(s.position_ms);
    }
    if let Some(at) = s.last_played_at {
        out["lastViewedAt"] = json!(at / 1000);
    }
    if item.item_type == ItemType::Episode {
        if let Some(show_id) = &item.show_id {
            // A show missing from the library stands for one deleted while listing.
            out["grandparentRatingKey"] = json!(show_id);
            out["grandparentKey"] = json!(format!("/library/metadata/{show_id}"));
        }
        if let Some(show) = item.show_id.as_deref().and_then(|id| st.show(id)) {
            out["grandparentTitle"] = json!(show.title);
            out["grandparentGuid"] = json!(show_guid(show));
        }
        out["parentIndex"] = json!(item.season);
        out["index"] = json!(item.episode);
        out["parentTitle"] = json!(format!("Season {}", item.season.unwrap_or(0)));
    }
    item.apply_render(&mut out);
    out
}

fn show_guid(show: &FakeShow) -> String {
    show.plex_guid
        .clone()
        .unwrap_or_else(|| format!("plex://show/{}", show.id))
}

/// The section of a show: that of its first episode.
fn show_library(st: &State, show: &FakeShow) -> String {
    st.items
        .iter()
        .find(|i| i.show_id.as_deref() == Some(show.id.as_str()))
        .map(FakeItem::library_id)
        .unwrap_or_else(|| "2".to_string())
}

fn show_json(st: &State, show: &FakeShow, include_guids: bool) -> Value {
    let library = show_library(st, show);
    let mut out = json!({
        "ratingKey": show.id,
        "key": format!("/library/metadata/{}/children", show.id),
        "type": "show",
        "title": show.title,
        "guid": show_guid(show),
        "librarySectionID": section_id_json(&library),
    });
    if include_guids && show.plex_guid.is_none() {
        out["Guid"] = guids_json(&show.ids);
    }
    if let Some(y) = show.year {
        out["year"] = json!(y);
    }
    out
}

fn container(st: &State, mut extra: Value) -> FakeResponse {
    if let Some(obj) = extra.as_object_mut() {
        for field in &st.plex_container_omit {
            obj.remove(field);
        }
    }
    FakeResponse::json(json!({ "MediaContainer": extra }))
}

/// A page of a listing: the container, with the paging also in the headers, as Plex sends it.
fn page_of(st: &State, mut extra: Value, start: usize, total: usize) -> FakeResponse {
    let total = total.saturating_sub(st.under_count);
    if extra.get("totalSize").is_some() {
        extra["totalSize"] = json!(total);
    }
    let mut resp = container(st, extra);
    resp.headers
        .push(("X-Plex-Container-Start", start.to_string()));
    resp.headers
        .push(("X-Plex-Container-Total-Size", total.to_string()));
    resp
}

/// A paging value from the query or, as real Plex also accepts, the header of the same name.
fn paging(req: &FakeRequest, name: &str) -> Option<usize> {
    req.param(name)
        .or_else(|| req.header(name))
        .and_then(|v| v.parse().ok())
}

pub(super) fn handle(inner: &Inner, st: &mut State, req: &FakeRequest) -> FakeResponse {
    let m = req.method.as_str();
    let path = req.path.as_str();
    let wants_json = ["accept", "accepts"].iter().any(|h| {
        req.header(h)
            .is_some_and(|v| v.contains("application/json"))
    });
    if m == "GET" && !wants_json {
        // Plex answers XML unless asked for JSON.
        return FakeResponse {
            status: 200,
            body: "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MediaContainer size=\"0\"/>".into(),
            content_type: "text/xml",
            retry_after: None,
            location: None,
            headers: Vec::new(),
            raw: None,
        };
    }
    if is_write(req) && req.header("x-plex-client-identifier").is_none() {
        return FakeResponse::status(400, "X-Plex-Client-Identifier is required");
    }
    if m == "GET" && path == "/identity" {
        return container(
            st,
            json!({
                "size": 0,
                "claimed": true,
                "machineIdentifier": inner.server_id,
                "version": "1.41.3.9314-a0bfb8370",
            }),
        );
    }
    let token = req
        .header("x-plex-token")
        .or_else(|| req.param("X-Plex-Token"));
    let Some(user) = token.and_then(|t| st.tokens.get(t)).cloned() else {
        return FakeResponse::status(401, "<html><h1>401 Unauthorized</h1></html>");
    };
    let include_guids = req.param("includeGuids") == Some("1");
    let segs = req.segments();
    match (m, segs.as_slice()) {
        ("GET", ["library", "sections", "all"]) => {
            let mut dirs: Vec<Value> = sections(st)
                .into_iter()
                .map(|(key, kind)| {
                    json!({
                        "key": key,
                        "type": kind,
                        "title": if kind == "movie" { "Movies" } else { "TV Shows" },
                        "agent": if kind == "movie" { "tv.plex.agents.movie" } else { "tv.plex.agents.series" },
                        "scanner": if kind == "movie" { "Plex Movie" } else { "Plex TV Series" },
                        "language": "en-US",
                        "uuid": format!("section-{key}"),
                    })
                })
                .collect();
            dirs.extend(st.plex_extra_sections.iter().cloned());
            container(
                st,
                json!({"size": dirs.len(), "allowSync": false, "title1": "Plex Library", "Directory": dirs}),
            )
        }
        ("GET", ["library", "sections", id, "all"]) => {
            let Some((key, kind)) = sections(st).into_iter().find(|(k, _)| k == id) else {
                return FakeResponse::status(404, "no such section");
            };
            let wanted = req.param("type");
            let start = paging(req, "X-Plex-Container-Start").unwrap_or(0);
            let start = if st.ignore_start_index { 0 } else { start };
            let size = paging(req, "X-Plex-Container-Size").unwrap_or(usize::MAX);
            let rows: Vec<Value> = match (kind, wanted) {
                ("movie", None | Some("1")) | ("show", Some("4")) => {
                    let want_type = if kind == "movie" {
                        ItemType::Movie
                    } else {
                        ItemType::Episode
                    };
                    let mut matching: Vec<&FakeItem> = st
                        .items
                        .iter()
                        .filter(|i| i.item_type == want_type && i.library_id() == key)
                        .collect();
                    let sorted = req
                        .param("sort")
                        .and_then(|s| s.split(',').next())
                        .is_some_and(|f| f.split(':').next() == Some("addedAt"));
                    st.listing_order(&mut matching, sorted);
                    let total = matching.len();
                    let rows: Vec<Value> = matching
                        .into_iter()
                        .skip(start)
                        .take(size)
                        .map(|i| item_json(st, &user, i, include_guids))
                        .collect();
                    return page_of(
                        st,
                        json!({
                            "size": rows.len(), "totalSize": total, "offset": start,
                            "librarySectionID": section_id_json(&key),
                            "identifier": "com.plexapp.plugins.library",
                            "Metadata": rows,
                        }),
                        start,
                        total,
                    );
                }
                ("show", None | Some("2")) => st
                    .shows
                    .iter()
                    .map(|s| show_json(st, s, include_guids))
                    .collect(),
                _ => Vec::new(),
            };
            let total = rows.len();
            let rows: Vec<Value> = rows.into_iter().skip(start).take(size).collect();
            page_of(
                st,
                json!({
                    "size": rows.len(), "totalSize": total, "offset": start,
                    "librarySectionID": section_id_json(&key), "Metadata": rows,
                }),
                start,
                total,
            )
        }
        ("GET", ["library", "metadata", ids]) => {
            let mut sections = std::collections::BTreeSet::new();
            let found: Vec<Value> = ids
                .split(',')
                .filter_map(|id| match (st.item(id), st.show(id)) {
                    (Some(item), _) => {
                        sections.insert(item.library_id());
                        Some(item_json(st, &user, item, include_guids))
                    }
                    (None, Some(show)) => {
                        sections.insert(show_library(st, show));
                        Some(show_json(st, show, include_guids))
                    }
                    _ => None,
                })
                .collect();
            if found.is_empty() {
                return FakeResponse::status(404, "<html><h1>404 Not Found</h1></html>");
            }
            let total = found.len();
            let found: Vec<Value> = match st.plex_metadata_page {
                Some(n) => found.into_iter().take(n).collect(),
                None => found,
            };
            let mut out = json!({
                "size": found.len(), "totalSize": total, "offset": 0,
                "identifier": "com.plexapp.plugins.library", "Metadata": found,
            });
            // As Plex: the items' section on the container too, when they share one (an item
            // can be served without its own with `FakeItem::omit("librarySectionID")`).
            if let [section] = Vec::from_iter(sections).as_slice() {
                out["librarySectionID"] = section_id_json(section);
                out["librarySectionTitle"] = json!(format!("Library {section}"));
            }
            container(st, out)
        }
        ("PUT", [":", action @ ("scrobble" | "unscrobble")]) => {
            if req.param("identifier") != Some("com.plexapp.plugins.library") {
                return FakeResponse::status(400, "identifier must be com.plexapp.plugins.library");
            }
            let Some(key) = req.param("key").map(str::to_string) else {
                return FakeResponse::status(400, "key is required");
            };
            if st.item(&key).is_none() {
                return FakeResponse::status(404, "<html><h1>404 Not Found</h1></html>");
            }
            if *action == "scrobble" {
                st.mark_played(&user, &key, None);
            } else {
                st.mark_unplayed(&user, &key);
            }
            FakeResponse::empty(200)
        }
        ("POST", [":", "timeline"]) => {
            if req
                .param("identifier")
                .is_some_and(|i| i != "com.plexapp.plugins.library")
            {
                return FakeResponse::status(400, "identifier must be com.plexapp.plugins.library");
            }
            let key = req.param("ratingKey").map(str::to_string).or_else(|| {
                req.param("key")
                    .and_then(|k| k.strip_prefix("/library/metadata/"))
                    .map(str::to_string)
            });
            let Some(key) = key else {
                return FakeResponse::status(400, "ratingKey or key is required");
            };
            let (Some(state), Some(time)) = (
                req.param("state"),
                req.param("time").and_then(|t| t.parse::<u64>().ok()),
            ) else {
                return FakeResponse::status(400, "state and time are required");
            };
            let Some(item) = st.item(&key) else {
                return FakeResponse::status(404, "<html><h1>404 Not Found</h1></html>");
            };
            let duration = req
                .param("duration")
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(item.duration_ms);
            if matches!(state, "stopped" | "paused") {
                if duration > 0 && time * 10 >= duration * 9 {
                    st.mark_played(&user, &key, None);
                } else {
                    st.state_mut(&user, &key).position_ms = time;
                    st.record_position(&user, &key, time);
                }
            }
            container(st, json!({"size": 0}))
        }
        _ => FakeResponse::status(404, "<html><h1>404 Not Found</h1></html>"),
    }
}
