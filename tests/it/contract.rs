//! Contract test (issue 5, part 5): every request each client makes is a `METHOD path` of its
//! server's OpenAPI document, as listed in `tests/contracts/*.txt`. The fakes check each
//! request they receive; this drives every client method and asserts none was outside.

use crate::fakes::{FakeItem, FakeKind, FakeLibrary, FakeServer, FakeShow};
use watchstate_actors::backend::BackendApi;

fn library() -> FakeLibrary {
    FakeLibrary::new()
        .with(FakeItem::movie("11", "Alien").ext("imdb", "tt0078748"))
        .with(FakeItem::movie("12", "Aliens").ext("imdb", "tt0090605"))
        .with_show(FakeShow::new("20", "Severance").ext("tvdb", "371980"))
        .with(FakeItem::episode("21", "20", 1, 1).ext("tvdb", "7985434"))
        .with(FakeItem::episode("22", "20", 1, 2).ext("tvdb", "7985435"))
        .with_show(
            FakeShow::new("30", "Lost").plex_guid("com.plexapp.agents.thetvdb://73739?lang=en"),
        )
        .with(
            FakeItem::episode("31", "30", 2, 3)
                .plex_guid("com.plexapp.agents.thetvdb://73739/2/3?lang=en"),
        )
}

/// Calls every method of the client at least once, including the error paths a sync meets.
async fn exercise(client: &dyn BackendApi) {
    client.identity().await.expect("identity");
    let mut cursor: Option<String> = None;
    loop {
        let page = client.list_items(cursor.as_deref(), 2).await.expect("page");
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert!(client.get_item("21").await.expect("get").is_some());
    assert!(client.get_item("11").await.expect("get").is_some());
    assert!(client
        .get_item("9999")
        .await
        .expect("get unknown")
        .is_none());
    client
        .set_played("11", true, Some(1_700_000_000_000))
        .await
        .expect("played with date");
    client.set_played("12", true, None).await.expect("played");
    client
        .set_played("11", false, None)
        .await
        .expect("unplayed");
    client
        .set_position("22", 90_000, Some(2_700_000), None)
        .await
        .expect("position");
    client
        .set_position("21", 30_000, None, None)
        .await
        .expect("position without duration");
}

async fn every_client_request_is_in_the_contract(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    exercise(fake.client().as_ref()).await;
    assert!(fake.requests().len() >= 10);
    assert_eq!(fake.writes().len(), 5);
    fake.assert_contract();
}

#[tokio::test]
async fn plex_client_requests_are_in_the_contract() {
    every_client_request_is_in_the_contract(FakeKind::Plex).await;
}

#[tokio::test]
async fn jellyfin_client_requests_are_in_the_contract() {
    every_client_request_is_in_the_contract(FakeKind::Jellyfin).await;
}

#[tokio::test]
async fn emby_client_requests_are_in_the_contract() {
    every_client_request_is_in_the_contract(FakeKind::Emby).await;
}

/// The check can fail: a route no document defines (a user-data update under
/// `/Users/{userId}`, which no Jellyfin version documents), a wrong method, and a query
/// name the operation does not document (a casing slip) are recorded as violations.
#[tokio::test]
async fn a_request_outside_the_contract_is_recorded() {
    let fake = FakeServer::start(FakeKind::Jellyfin, library()).await;
    let http = reqwest::Client::new();
    let base = fake.url();
    let legacy = base
        .join(&format!("Users/{}/Items/11/UserData", fake.user_id()))
        .unwrap();
    http.post(legacy).send().await.unwrap();
    http.patch(base.join("UserPlayedItems/11").unwrap())
        .send()
        .await
        .unwrap();
    http.get(base.join("System/Info/Public").unwrap())
        .send()
        .await
        .unwrap();
    let items = |query: &str| base.join(&format!("Items?{query}")).unwrap();
    let uid = fake.user_id();
    http.get(items(&format!("userId={uid}&startIndex=0&limit=5")))
        .send()
        .await
        .unwrap();
    http.get(items(&format!("UserId={uid}&startIndex=0")))
        .send()
        .await
        .unwrap();
    let v = fake.violations();
    assert_eq!(
        v,
        [
            format!("POST /Users/{}/Items/11/UserData", fake.user_id()),
            "PATCH /UserPlayedItems/11".to_string(),
            "GET /Items: query parameter(s) [\"UserId\"] not documented for it".to_string(),
        ]
    );
    let panicked = std::panic::catch_unwind(|| fake.assert_contract());
    assert!(panicked.is_err(), "assert_contract accepted violations");
}

/// The lists hold the documented routes the clients rely on (a guard against a bad regeneration).
#[test]
fn the_contract_lists_hold_the_routes_of_design_section_10() {
    let plex = include_str!("../contracts/plex.txt");
    let jellyfin = include_str!("../contracts/jellyfin.txt");
    let emby = include_str!("../contracts/emby.txt");
    let has = |list: &str, line: &str| {
        list.lines()
            .any(|l| l.split(" ?").next().unwrap_or("").trim() == line)
    };
    // The query names the clients send are documented where the clients send them.
    let names = |list: &str, op: &str| -> Vec<String> {
        list.lines()
            .find_map(|l| l.strip_prefix(op)?.strip_prefix(" ?"))
            .map(|n| n.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    for (list, op, name) in [
        (
            plex,
            "GET /library/sections/{sectionId}/all",
            "X-Plex-Container-Start",
        ),
        (plex, "GET /library/sections/{sectionId}/all", "type"),
        (plex, "GET /library/metadata/{ids}", "includeGuids"),
        (plex, "POST /:/timeline", "identifier"),
        (jellyfin, "GET /Items", "startIndex"),
        (emby, "GET /Users/{UserId}/Items", "api_key"),
        (emby, "GET /Users/{UserId}/Items", "StartIndex"),
    ] {
        assert!(
            names(list, op).iter().any(|n| n == name),
            "{op} lacks {name}"
        );
    }
    for line in [
        "GET /identity",
        "GET /library/sections/all",
        "GET /library/sections/{sectionId}/all",
        "GET /library/metadata/{ids}",
        "PUT /:/scrobble",
        "PUT /:/unscrobble",
        "POST /:/timeline",
    ] {
        assert!(has(plex, line), "plex.txt lacks {line}");
    }
    for line in [
        "GET /System/Info/Public",
        "GET /Items",
        "GET /Items/{itemId}",
        "POST /UserPlayedItems/{itemId}",
        "DELETE /UserPlayedItems/{itemId}",
        "POST /UserItems/{itemId}/UserData",
        // Jellyfin 10.8 (10.8.13 document).
        "GET /Users/{userId}/Items/{itemId}",
        "POST /Users/{userId}/PlayedItems/{itemId}",
        "DELETE /Users/{userId}/PlayedItems/{itemId}",
    ] {
        assert!(has(jellyfin, line), "jellyfin.txt lacks {line}");
    }
    assert!(!has(
        jellyfin,
        "POST /Users/{userId}/Items/{itemId}/UserData"
    ));
    for line in [
        "GET /System/Info/Public",
        "GET /Users/{UserId}/Items",
        "GET /Users/{UserId}/Items/{Id}",
        "POST /Users/{UserId}/PlayedItems/{Id}",
        "DELETE /Users/{UserId}/PlayedItems/{Id}",
        "POST /Users/{UserId}/Items/{ItemId}/UserData",
    ] {
        assert!(has(emby, line), "emby.txt lacks {line}");
    }
}
