//! The real Plex, Jellyfin and Emby clients against their fake servers: listing and paging,
//! lookups, writes in each server's units, and the classification of every failure.

use crate::fakes::{
    FakeIdentity, FakeItem, FakeKind, FakeLibrary, FakeServer, FakeShow, Fault, WriteChange,
};
use std::collections::BTreeMap;
use std::time::Duration;
use watchstate::backend::{build_client, ClientConfig};
use watchstate_actors::backend::{BackendApi, BackendError, ItemPage, RemoteItem, RequestPacer};
use watchstate_actors::event::{ItemType, Millis};

const MATRIX_PLAYED_AT: Millis = 1_714_557_600_000;
const PILOT_PLAYED_AT: Millis = 1_700_000_000_000;

/// 7 movies, a modern show with 2 episodes, a legacy-agent show with 1 episode.
fn library() -> FakeLibrary {
    let mut lib = FakeLibrary::new()
        .with(
            FakeItem::movie("101", "The Matrix")
                .year(1999)
                .ext("imdb", "tt0133093")
                .ext("tmdb", "603")
                .duration_ms(8_160_000)
                .played_at(MATRIX_PLAYED_AT),
        )
        .with(
            FakeItem::movie("102", "Heat")
                .year(1995)
                .ext("imdb", "tt0113277")
                .position_ms(754_000),
        );
    for n in 103..=107 {
        lib = lib.with(
            FakeItem::movie(&n.to_string(), &format!("Movie {n}")).ext("tmdb", &format!("9{n}")),
        );
    }
    lib.with_show(
        FakeShow::new("200", "Dark")
            .ext("tvdb", "334824")
            .ext("imdb", "tt5753856"),
    )
    .with(
        FakeItem::episode("201", "200", 1, 1)
            .title("Secrets")
            .ext("tvdb", "6252618")
            .played_at(PILOT_PLAYED_AT),
    )
    .with(
        FakeItem::episode("202", "200", 1, 2)
            .title("Lies")
            .ext("tvdb", "6252619")
            .position_ms(61_000),
    )
    .with_show(
        FakeShow::new("300", "Game of Thrones")
            .plex_guid("com.plexapp.agents.thetvdb://121361?lang=en")
            .ext("tvdb", "121361"),
    )
    .with(
        FakeItem::episode("301", "300", 1, 2)
            .plex_guid("com.plexapp.agents.thetvdb://121361/1/2?lang=en")
            .ext("tvdb", "3254641"),
    )
}

/// Every page of a listing, which must end within `max_pages`.
async fn pages(client: &dyn BackendApi, page_size: usize, max_pages: usize) -> Vec<ItemPage> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = client
            .list_items(cursor.as_deref(), page_size)
            .await
            .expect("a page of the listing");
        assert!(page.items.len() <= page_size, "page larger than asked");
        assert!(pages.len() < max_pages, "the listing does not end");
        cursor = page.next.clone();
        pages.push(page);
        if cursor.is_none() {
            return pages;
        }
    }
}

/// The items of a whole listing, and the number of pages.
async fn list_all(client: &dyn BackendApi, page_size: usize) -> (Vec<RemoteItem>, usize) {
    let pages = pages(client, page_size, 1000).await;
    let n = pages.len();
    (pages.into_iter().flat_map(|p| p.items).collect(), n)
}

fn by_id(items: Vec<RemoteItem>) -> BTreeMap<String, RemoteItem> {
    let n = items.len();
    let map: BTreeMap<_, _> = items.into_iter().map(|i| (i.item_id.clone(), i)).collect();
    assert_eq!(map.len(), n, "an item was listed twice");
    map
}

fn config(fake: &FakeServer, token: &str, timeout: Duration) -> ClientConfig {
    ClientConfig {
        token: token.to_string(),
        timeout,
        ..fake.client_config()
    }
}

async fn listing_is_complete_and_correct(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let (items, pages) = list_all(client.as_ref(), 3).await;
    let items = by_id(items);
    let ids: Vec<&str> = items.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        ["101", "102", "103", "104", "105", "106", "107", "201", "202", "301"]
    );
    assert!(pages >= 4, "paging was not used ({pages} pages)");

    let matrix = &items["101"];
    assert_eq!(matrix.item_type, ItemType::Movie);
    assert_eq!(matrix.title.as_deref(), Some("The Matrix"));
    assert_eq!(matrix.year, Some(1999));
    assert_eq!(matrix.external_ids["imdb"], "tt0133093");
    assert_eq!(matrix.external_ids["tmdb"], "603");
    assert!(matrix.series_external_ids.is_empty());
    assert!(matrix.played);
    assert_eq!(matrix.last_played_at, Some(MATRIX_PLAYED_AT));
    assert_eq!(matrix.duration_ms, Some(8_160_000));
    assert_eq!(matrix.position_ms, 0);

    let heat = &items["102"];
    assert!(!heat.played);
    assert_eq!(heat.position_ms, 754_000);
    assert_eq!(heat.last_played_at, None);

    let secrets = &items["201"];
    assert_eq!(secrets.item_type, ItemType::Episode);
    assert_eq!(secrets.series_title.as_deref(), Some("Dark"));
    assert_eq!((secrets.season, secrets.episode), (Some(1), Some(1)));
    assert_eq!(secrets.external_ids["tvdb"], "6252618");
    assert_eq!(secrets.series_external_ids["tvdb"], "334824");
    assert_eq!(secrets.series_external_ids["imdb"], "tt5753856");
    assert!(secrets.played);
    assert_eq!(secrets.last_played_at, Some(PILOT_PLAYED_AT));
    assert_eq!(items["202"].position_ms, 61_000);
    assert_eq!(items["202"].series_external_ids["tvdb"], "334824");

    let legacy = &items["301"];
    assert_eq!(legacy.series_external_ids["tvdb"], "121361");
    assert_eq!((legacy.season, legacy.episode), (Some(1), Some(2)));
    if kind == FakeKind::Plex {
        // A legacy episode guid names the show only.
        assert!(legacy.external_ids.is_empty());
        assert_eq!(matrix.library_id.as_deref(), Some("1"));
        assert_eq!(secrets.library_id.as_deref(), Some("2"));
    } else {
        assert_eq!(legacy.external_ids["tvdb"], "3254641");
    }
    fake.assert_contract();
}

async fn paging_requests_use_the_servers_parameters(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    list_all(client.as_ref(), 4).await;
    let lists: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| match kind {
            FakeKind::Plex => {
                r.path.ends_with("/all")
                    && r.param("type").is_some()
                    && r.param("X-Plex-Container-Size") != Some("0")
            }
            FakeKind::Jellyfin => r.path == "/Items" && r.param("startIndex").is_some(),
            FakeKind::Emby => r.path.ends_with("/Items") && r.param("StartIndex").is_some(),
        })
        .collect();
    let starts: Vec<(&str, &str)> = lists
        .iter()
        .map(|r| match kind {
            FakeKind::Plex => (
                r.param("X-Plex-Container-Start").unwrap(),
                r.param("X-Plex-Container-Size").unwrap(),
            ),
            FakeKind::Jellyfin => (r.param("startIndex").unwrap(), r.param("limit").unwrap()),
            FakeKind::Emby => (r.param("StartIndex").unwrap(), r.param("Limit").unwrap()),
        })
        .collect();
    match kind {
        // Movies section (7 items), then the show section (3 episodes).
        FakeKind::Plex => {
            assert_eq!(starts, [("0", "4"), ("4", "4"), ("0", "4")]);
            assert_eq!(lists[0].param("type"), Some("1"));
            assert_eq!(lists[2].param("type"), Some("4"));
            assert!(lists.iter().all(|r| r.param("includeGuids") == Some("1")));
        }
        FakeKind::Jellyfin => {
            assert_eq!(starts, [("0", "4"), ("4", "4"), ("8", "4")]);
            let r = &lists[0];
            assert_eq!(r.param("userId"), Some(fake.user_id()));
            assert_eq!(r.param("recursive"), Some("true"));
            assert_eq!(r.params("includeItemTypes"), ["Movie,Episode"]);
            assert_eq!(r.params("fields"), ["ProviderIds"]);
        }
        FakeKind::Emby => {
            assert_eq!(starts, [("0", "4"), ("4", "4"), ("8", "4")]);
            let r = &lists[0];
            assert_eq!(r.path, format!("/Users/{}/Items", fake.user_id()));
            assert_eq!(r.param("Recursive"), Some("true"));
            assert_eq!(r.param("IncludeItemTypes"), Some("Movie,Episode"));
            assert!(r.param("Fields").unwrap().contains("ProviderIds"));
        }
    }
    fake.assert_contract();
}

async fn get_item_reads_one_item(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let ep = client.get_item("202").await.unwrap().expect("item 202");
    assert_eq!(ep.item_type, ItemType::Episode);
    assert_eq!(ep.series_title.as_deref(), Some("Dark"));
    assert_eq!(ep.series_external_ids["tvdb"], "334824");
    assert_eq!((ep.season, ep.episode), (Some(1), Some(2)));
    assert_eq!(ep.position_ms, 61_000);
    assert!(!ep.played);
    let movie = client.get_item("101").await.unwrap().expect("item 101");
    assert!(movie.played);
    assert_eq!(movie.last_played_at, Some(MATRIX_PLAYED_AT));
    assert_eq!(client.get_item("999999").await.unwrap(), None);
    fake.assert_contract();
}

async fn writes_change_the_server_in_its_units(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let at = 1_710_000_000_000;

    client.set_played("103", true, Some(at)).await.unwrap();
    let s = fake.item_state("103");
    assert!(s.played);
    assert_eq!(s.position_ms, 0);
    if kind != FakeKind::Plex {
        // Plex stamps the scrobble with its own clock; the others take the date.
        assert_eq!(s.last_played_at, Some(at));
    }

    client.set_played("101", false, None).await.unwrap();
    assert!(!fake.item_state("101").played);

    // The position was reached at `reached`: Jellyfin and Emby keep it as the item's last
    // played date, which orders their "Continue Watching".
    let reached = 1_714_557_600_000;
    client
        .set_position("102", 123_456, Some(8_000_000), Some(reached))
        .await
        .unwrap();
    let s = fake.item_state("102");
    assert_eq!(s.position_ms, 123_456);
    assert!(!s.played);
    if kind != FakeKind::Plex {
        assert_eq!(s.last_played_at, Some(reached));
    }

    assert_eq!(
        fake.writes()
            .into_iter()
            .map(|w| (w.item_id, w.change))
            .collect::<Vec<_>>(),
        [
            (
                "103".to_string(),
                WriteChange::Played {
                    at: (kind != FakeKind::Plex).then_some(at)
                }
            ),
            ("101".to_string(), WriteChange::Unplayed),
            ("102".to_string(), WriteChange::Position { ms: 123_456 }),
        ]
    );

    // The raw requests carry each server's units and parameter names.
    let requests = fake.requests();
    let find = |pred: &dyn Fn(&crate::fakes::RecordedRequest) -> bool| {
        requests.iter().find(|r| pred(r)).cloned().expect("request")
    };
    match kind {
        FakeKind::Plex => {
            let r = find(&|r| r.path == "/:/scrobble");
            assert_eq!(r.method, "PUT");
            assert_eq!(r.param("identifier"), Some("com.plexapp.plugins.library"));
            assert_eq!(r.param("key"), Some("103"));
            let r = find(&|r| r.path == "/:/unscrobble");
            assert_eq!((r.method.as_str(), r.param("key")), ("PUT", Some("101")));
            let r = find(&|r| r.path == "/:/timeline");
            assert_eq!(r.method, "POST");
            assert_eq!(r.param("ratingKey"), Some("102"));
            assert_eq!(r.param("key"), Some("/library/metadata/102"));
            assert_eq!(r.param("state"), Some("stopped"));
            assert_eq!(r.param("time"), Some("123456"));
            assert_eq!(r.param("duration"), Some("8000000"));
        }
        FakeKind::Jellyfin => {
            let r = find(&|r| r.path == "/UserPlayedItems/103");
            assert_eq!(r.method, "POST");
            assert_eq!(r.param("userId"), Some(fake.user_id()));
            assert_eq!(r.param("datePlayed"), Some("2024-03-09T16:00:00Z"));
            let r = find(&|r| r.path == "/UserPlayedItems/101");
            assert_eq!(r.method, "DELETE");
            let r = find(&|r| r.path == "/UserItems/102/UserData");
            assert_eq!(r.method, "POST");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["PlaybackPositionTicks"], 1_234_560_000i64);
            assert_eq!(body.get("Played"), None, "absent: left as it is");
            assert_eq!(body["LastPlayedDate"], "2024-05-01T10:00:00Z");
        }
        FakeKind::Emby => {
            let uid = fake.user_id();
            let r = find(&|r| r.path == format!("/Users/{uid}/PlayedItems/103"));
            assert_eq!(r.method, "POST");
            assert_eq!(r.param("DatePlayed"), Some("20240309160000"));
            let r = find(&|r| r.path == format!("/Users/{uid}/PlayedItems/101"));
            assert_eq!(r.method, "DELETE");
            let r = find(&|r| r.path == format!("/Users/{uid}/Items/102/UserData"));
            assert_eq!(r.method, "POST");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(body["PlaybackPositionTicks"], 1_234_560_000i64);
            assert_eq!(body["Played"], false);
            assert_eq!(body["LastPlayedDate"], "2024-05-01T10:00:00Z");
        }
    }
    fake.assert_contract();
}

async fn writes_to_unknown_items_are_not_found(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let err = client.set_played("424242", true, None).await.unwrap_err();
    assert!(matches!(err, BackendError::NotFound { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert!(fake.writes().is_empty());
}

async fn a_bad_token_is_an_auth_error(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = build_client(config(&fake, "wrong-token", Duration::from_secs(5))).unwrap();
    let err = client.list_items(None, 10).await.unwrap_err();
    assert_eq!(err, BackendError::Auth { status: 401 });
    assert!(
        !err.to_string().contains("wrong-token"),
        "token leaked: {err}"
    );
    let err = client.set_played("101", true, None).await.unwrap_err();
    assert_eq!(err, BackendError::Auth { status: 401 });
    assert!(fake.item_state("101").played, "state changed without auth");
}

async fn server_errors_and_rate_limits_are_classified(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();

    fake.inject(Fault::status(500));
    let err = client.list_items(None, 10).await.unwrap_err();
    assert!(
        matches!(err, BackendError::Server { status: 500, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());

    fake.inject(Fault::rate_limited("7"));
    let err = client.get_item("101").await.unwrap_err();
    assert_eq!(
        err,
        BackendError::RateLimited {
            retry_after_ms: Some(7_000)
        }
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    // A server in maintenance (or a proxy in front of it) says when it is back.
    fake.inject(Fault::retry_after(503, "120"));
    let err = client.set_played("101", true, None).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)), "{err:?}");
    assert!(err.is_server_wide() && err.asks_to_wait());
    assert!(err.to_string().contains("retry after 120 s"), "{err}");

    // A fault limited to writes leaves reads alone, then the write goes through.
    fake.inject(Fault::status(503).times(2).writes_only());
    assert!(client.get_item("104").await.unwrap().is_some());
    for _ in 0..2 {
        let err = client.set_played("104", true, None).await.unwrap_err();
        assert!(
            matches!(err, BackendError::Server { status: 503, .. }),
            "{err:?}"
        );
    }
    client.set_played("104", true, None).await.unwrap();
    assert!(fake.item_state("104").played);
    assert_eq!(fake.writes().len(), 1, "failed attempts are not writes");

    fake.inject(Fault::wrong_json());
    let err = client.list_items(None, 10).await.unwrap_err();
    assert!(matches!(err, BackendError::BadResponse { .. }), "{err:?}");
    assert!(!err.is_retryable());

    fake.inject(Fault::status(400));
    let err = client.set_played("105", false, None).await.unwrap_err();
    assert!(
        matches!(err, BackendError::Client { status: 400, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
}

/// A URL that reaches a web app or a proxy's sign-in page answers 200 with HTML to every path:
/// such an answer to a write is no confirmation. An empty 2xx (as Plex answers) still is.
async fn a_web_page_does_not_confirm_a_write(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let page = "\n<!DOCTYPE html><html><head><title>Sign in</title></head><body>Log in to continue</body></html>";
    fake.inject(Fault::body(200, "text/html; charset=utf-8", page).writes_only());
    let err = client.set_played("102", true, None).await.unwrap_err();
    assert!(matches!(err, BackendError::WebPage { .. }), "{err:?}");
    // A page in front of the server answers every request (a maintenance page passes):
    // retried, and holding the other pushes meanwhile (the push reads the item back first:
    // `e2e_push::a_write_answered_with_a_web_page_is_read_back_or_retried`).
    assert!(err.is_retryable() && err.is_server_wide(), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("web page") && text.contains("Sign in"),
        "{text}"
    );
    assert!(!text.contains(fake.token()), "token leaked: {text}");
    assert!(!fake.item_state("102").played);

    fake.inject(Fault::body(200, "text/html", page).writes_only());
    let err = client
        .set_position("102", 60_000, Some(6_000_000), None)
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::WebPage { .. }), "{err:?}");

    // Text labelled HTML that is neither JSON nor XML is taken for a page (the push reads the
    // item back before it counts it as failed): a page missed would count a lost write.
    for body in ["OK", "<!-- a comment never closed", "<h1>Signed out</h1>"] {
        fake.inject(Fault::body(200, "text/html", body).writes_only());
        let err = client.set_played("102", true, None).await.unwrap_err();
        assert!(
            matches!(err, BackendError::WebPage { .. }),
            "{body}: {err:?}"
        );
    }
    // An empty answer labelled as HTML, and HTML under another content type, are not pages.
    fake.inject(Fault::body(200, "text/html", "").writes_only());
    client.set_played("102", true, None).await.unwrap();
    fake.inject(Fault::body(200, "text/plain", page).writes_only());
    client.set_played("102", true, None).await.unwrap();
    // The server's own answer to a write is accepted as before.
    client.set_played("102", true, None).await.unwrap();
    assert!(fake.item_state("102").played);
}

async fn a_slow_server_times_out(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = build_client(config(&fake, fake.token(), Duration::from_millis(200))).unwrap();
    fake.inject(Fault::delay(Duration::from_secs(3)));
    let err = client.identity().await.unwrap_err();
    assert_eq!(err, BackendError::Timeout { after_ms: 200 });
    assert!(err.is_retryable());
}

async fn a_closed_port_is_a_network_error(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let id = client.identity().await.unwrap();
    assert_eq!(id.server_id, fake.server_id());
    fake.shutdown().await;
    let err = client.identity().await.unwrap_err();
    assert!(matches!(err, BackendError::Network { .. }), "{err:?}");
    assert!(err.is_retryable());
}

/// One test module per scenario with a test per server: `backend_clients::<scenario>::plex`.
macro_rules! per_kind {
    ($($name:ident),* $(,)?) => {
        $(mod $name {
            #[tokio::test]
            async fn plex() {
                super::$name(crate::fakes::FakeKind::Plex).await
            }
            #[tokio::test]
            async fn jellyfin() {
                super::$name(crate::fakes::FakeKind::Jellyfin).await
            }
            #[tokio::test]
            async fn emby() {
                super::$name(crate::fakes::FakeKind::Emby).await
            }
        })*
    };
}

per_kind!(
    listing_is_complete_and_correct,
    paging_requests_use_the_servers_parameters,
    get_item_reads_one_item,
    writes_change_the_server_in_its_units,
    writes_to_unknown_items_are_not_found,
    a_bad_token_is_an_auth_error,
    server_errors_and_rate_limits_are_classified,
    a_web_page_does_not_confirm_a_write,
    a_slow_server_times_out,
    a_closed_port_is_a_network_error,
);

#[tokio::test]
async fn a_retry_after_date_becomes_a_delay() {
    let fake = FakeServer::start(FakeKind::Jellyfin, library()).await;
    let at = std::time::SystemTime::now() + Duration::from_secs(120);
    fake.inject(Fault::rate_limited(&httpdate::fmt_http_date(at)));
    let err = fake.client().identity().await.unwrap_err();
    let ms = err.retry_after().expect("a retry-after").as_millis();
    assert!((100_000..=120_000).contains(&ms), "{ms} ms");
}

/// DESIGN.md §10: Emby's position update always says `Played`, even when the item read
/// before it left it out; lookups by id are recursive (the documents scope a query without
/// `ParentId` to the root folder's children otherwise).
#[tokio::test]
async fn emby_position_updates_say_played_and_lookups_are_recursive() {
    let fake = FakeServer::start(FakeKind::Emby, library()).await;
    let client = fake.client();
    fake.rewrite_answers("\"Played\":false", b"\"Unsaid\":null");
    client
        .set_position("102", 60_000, Some(6_000_000), None)
        .await
        .unwrap();
    let requests = fake.requests();
    let lookup = requests
        .iter()
        .find(|r| r.method == "GET" && r.param("Ids") == Some("102"))
        .expect("the item read before the update");
    assert!(lookup.body.is_empty());
    assert_eq!(lookup.param("Recursive"), Some("true"));
    let update = requests
        .iter()
        .find(|r| r.path.ends_with("/Items/102/UserData"))
        .expect("the update");
    let body: serde_json::Value = serde_json::from_str(&update.body).unwrap();
    assert_eq!(body["Played"], false, "{body}");
    assert_eq!(body.get("Unsaid"), Some(&serde_json::Value::Null), "{body}");
    assert_eq!(body["PlaybackPositionTicks"], 600_000_000i64);
    // A played item's `Played` is sent as it is.
    client.set_played("104", true, None).await.unwrap();
    client
        .set_position("104", 30_000, Some(6_000_000), None)
        .await
        .unwrap();
    let update = fake
        .requests()
        .into_iter()
        .rfind(|r| r.path.ends_with("/Items/104/UserData"))
        .expect("the second update");
    let body: serde_json::Value = serde_json::from_str(&update.body).unwrap();
    assert_eq!(body["Played"], true, "{body}");
    // Episodes name their show: the show lookup is recursive too.
    list_all(client.as_ref(), 20).await;
    let shows = fake
        .requests()
        .into_iter()
        .find(|r| r.param("Ids").is_some_and(|ids| ids.contains("200")))
        .expect("a show lookup");
    assert_eq!(shows.param("Recursive"), Some("true"));
    fake.assert_contract();
}

#[tokio::test]
async fn plex_fetches_each_show_once_per_listing() {
    let fake = FakeServer::start(FakeKind::Plex, library()).await;
    let client = fake.client();
    list_all(client.as_ref(), 1).await;
    let show_fetches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/library/metadata/"))
        .collect();
    // Episodes 201 and 202 are on different pages; the legacy 301 names its show in its guid.
    assert_eq!(show_fetches.len(), 1, "{show_fetches:?}");
    assert_eq!(show_fetches[0].path, "/library/metadata/200");
}

#[tokio::test]
async fn a_large_library_lists_completely() {
    let lib = FakeLibrary::generated(20_000);
    assert_eq!(lib.items.len(), 20_000);
    let fake = FakeServer::start(FakeKind::Jellyfin, lib).await;
    let (items, pages) = list_all(fake.client().as_ref(), 2_000).await;
    assert_eq!(pages, 10);
    let items = by_id(items);
    assert_eq!(items.len(), 20_000);
    let first_episode = &items["100001"];
    assert_eq!(first_episode.series_external_ids["tvdb"], "90");
    assert_eq!(first_episode.position_ms, 60_000);
    assert!(items["100000"].played);
    assert!(!items["100002"].played);
}

#[tokio::test]
async fn plex_episodes_of_vanished_shows_have_no_series_ids() {
    let lib = FakeLibrary::new()
        .with(FakeItem::episode("401", "gone-1", 1, 1).ext("tvdb", "1"))
        .with(FakeItem::episode("402", "gone-2", 1, 1).ext("tvdb", "2"))
        .with_show(FakeShow::new("403", "Kept").ext("tvdb", "77"))
        .with(FakeItem::episode("404", "403", 1, 1));
    let fake = FakeServer::start(FakeKind::Plex, lib).await;
    let (items, _) = list_all(fake.client().as_ref(), 2).await;
    let items = by_id(items);
    assert!(items["401"].series_external_ids.is_empty());
    assert!(items["402"].series_external_ids.is_empty());
    assert_eq!(items["404"].series_external_ids["tvdb"], "77");
    // The batch for both vanished shows failed as a whole, then each was asked alone.
    let paths: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/library/metadata/"))
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/library/metadata/gone-1,gone-2",
            "/library/metadata/gone-1",
            "/library/metadata/gone-2",
            "/library/metadata/403",
        ]
    );
    fake.assert_contract();
}

#[tokio::test]
async fn emby_answers_under_its_emby_prefix() {
    let fake = FakeServer::start(FakeKind::Emby, library()).await;
    let mut cfg = fake.client_config();
    cfg.base_url = fake.url().join("emby/").unwrap();
    let client = build_client(cfg).unwrap();
    assert_eq!(client.identity().await.unwrap().server_id, fake.server_id());
    client.set_played("103", true, None).await.unwrap();
    assert!(fake.item_state("103").played);
    fake.assert_contract();
}

async fn items_added_after_start_are_listed(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    assert_eq!(client.get_item("108").await.unwrap(), None);
    fake.add_item(
        FakeItem::movie("108", "Arrival")
            .ext("imdb", "tt2543164")
            .played_at(MATRIX_PLAYED_AT),
    );
    let arrival = client.get_item("108").await.unwrap().expect("added item");
    assert!(arrival.played);
    assert_eq!(arrival.external_ids["imdb"], "tt2543164");
    fake.clear_log();
    let (items, _) = list_all(client.as_ref(), 50).await;
    assert!(items.iter().any(|i| i.item_id == "108"));
    assert!(fake.writes().is_empty());
    assert!(fake.requests().iter().all(|r| r.status == 200));
    fake.assert_contract();
}

per_kind!(items_added_after_start_are_listed);

/// `ignore_libraries = ["2"]` (the fakes' episode library): every client says which items are
/// in it, in a listing and for one item looked up alone. Plex names the section on every
/// item; Jellyfin and Emby list the ignored library's ids at the start of a listing and read a
/// looked-up item's ancestors.
async fn items_of_ignored_libraries_carry_the_library(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let cfg = ClientConfig {
        ignore_libraries: vec!["2".into()],
        ..fake.client_config()
    };
    let in_ignored = |i: &RemoteItem| i.library_id.as_deref() == Some("2");
    let client = build_client(cfg.clone()).unwrap();
    let (items, _) = list_all(client.as_ref(), 4).await;
    assert_eq!(items.len(), 10);
    for i in &items {
        assert_eq!(
            in_ignored(i),
            i.item_type == ItemType::Episode,
            "{kind:?} {}: {:?}",
            i.item_id,
            i.library_id
        );
    }
    // Alone, with nothing listed before.
    let client = build_client(cfg).unwrap();
    let ep = client.get_item("202").await.unwrap().expect("item 202");
    assert!(in_ignored(&ep), "{kind:?}: {:?}", ep.library_id);
    let movie = client.get_item("101").await.unwrap().expect("item 101");
    assert!(!in_ignored(&movie), "{kind:?}: {:?}", movie.library_id);
    if kind != FakeKind::Plex {
        let requests = fake.requests();
        assert!(
            requests.iter().any(|r| r.path == "/Items/202/Ancestors"),
            "{kind:?}: the lookup did not read the ancestors"
        );
        let parent = |r: &&crate::fakes::RecordedRequest| {
            r.param("parentId").or(r.param("ParentId")) == Some("2")
        };
        assert!(
            requests.iter().any(|r| parent(&r)),
            "{kind:?}: the ignored library was not listed"
        );
    }
    // A library id the server does not have stops nothing (and, on Jellyfin and Emby, tags
    // nothing; Plex items always name their own section).
    let client = build_client(ClientConfig {
        ignore_libraries: vec!["no-such-library".into()],
        ..fake.client_config()
    })
    .unwrap();
    let (items, _) = list_all(client.as_ref(), 50).await;
    assert_eq!(items.len(), 10);
    if kind != FakeKind::Plex {
        assert!(items.iter().all(|i| i.library_id.is_none()));
    }
    fake.assert_contract();
}

per_kind!(items_of_ignored_libraries_carry_the_library);

/// A sync's listing call keeps to `sync.max_requests_per_second` request by request, also
/// when one call needs several (Plex: the sections, then the page, then the shows; Jellyfin
/// and Emby: the ids of an ignored library, then the page, then the shows).
async fn a_paced_listing_spaces_every_request(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = build_client(ClientConfig {
        ignore_libraries: vec!["2".into()],
        ..fake.client_config()
    })
    .unwrap();
    // 40 requests a second: request k may not start before k × 25 ms. Delays (a busy core,
    // a slow connection) can only make it arrive later, so the bound holds whatever the load;
    // without pacing they all arrive within a few milliseconds.
    let t0 = std::time::Instant::now();
    let pacer = RequestPacer::new(40.0);
    let page = RequestPacer::scope(pacer, client.list_items(None, 10))
        .await
        .expect("a page");
    assert!(!page.items.is_empty());
    let requests = fake.requests();
    assert!(
        requests.len() >= 3,
        "{kind:?}: expected several requests for the first page, got {:?}",
        requests.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    for (k, r) in requests.iter().enumerate() {
        let at = r.at.duration_since(t0);
        assert!(
            at >= Duration::from_millis(25) * k as u32,
            "{kind:?}: request {k} ({}) after only {at:?}",
            r.path
        );
    }
    // The same client outside a sync's scope still works.
    assert!(client.get_item("101").await.unwrap().is_some());
    assert!(fake.requests().len() > requests.len());
}

per_kind!(a_paced_listing_spaces_every_request);

#[tokio::test]
async fn plex_answers_xml_without_the_json_accept_header() {
    let fake = FakeServer::start(FakeKind::Plex, library()).await;
    let resp = reqwest::Client::new()
        .get(fake.url().join("library/sections/all").unwrap())
        .header("X-Plex-Token", fake.token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().starts_with("<?xml"));
}

#[tokio::test]
async fn a_fake_can_take_the_ids_of_recorded_payloads() {
    let identity = FakeIdentity {
        server_id: Some("16588a9f062a40c4966586b1d220bffc".into()),
        user_id: Some("e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1".into()),
        token: Some("fixture-key".into()),
    };
    let fake = FakeServer::start_with(FakeKind::Jellyfin, library(), identity).await;
    assert_eq!(fake.token(), "fixture-key");
    let client = fake.client();
    assert_eq!(
        client.identity().await.unwrap().server_id,
        "16588a9f062a40c4966586b1d220bffc"
    );
    client.set_played("105", true, None).await.unwrap();
    assert!(
        fake.item_state_for("e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1e1", "105")
            .played
    );
}

#[tokio::test]
async fn the_first_page_announces_the_total_of_the_whole_listing() {
    // Plex counts per section: its client adds up the other sections with count-only requests.
    for kind in [FakeKind::Plex, FakeKind::Jellyfin, FakeKind::Emby] {
        let fake = FakeServer::start(kind, library()).await;
        let client = fake.client();
        let first = client.list_items(None, 4).await.expect("first page");
        let (all, _) = list_all(client.as_ref(), 4).await;
        assert_eq!(first.total, Some(all.len() as u64), "{kind:?}");
        fake.assert_contract();
    }
}

/// Ids a webhook could carry that would move the request to another route if pasted into a
/// path: dot segments (plain and percent-encoded), separators, a query, a fragment.
fn hostile_ids(fake: &FakeServer) -> Vec<String> {
    let mut ids: Vec<String> = [
        "../../../Items/101",
        "../sections/1/all",
        "%2e%2e/%2e%2e/%2e%2e/Items/101",
        "..",
        ".",
        "101/..",
        "101?x=1",
        "101#x",
        "",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    ids.push(format!("../../{}/Items/101", fake.user_id()));
    ids
}

async fn a_hostile_item_id_never_reaches_another_route(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    for id in hostile_ids(&fake) {
        let got = client.get_item(&id).await;
        assert!(!matches!(got, Ok(Some(_))), "{kind:?} {id:?}: {got:?}");
        for result in [
            client.set_played(&id, true, None).await,
            client.set_played(&id, false, None).await,
            client.set_position(&id, 60_000, Some(120_000), None).await,
        ] {
            let err = result.expect_err(&id);
            assert!(!err.is_retryable(), "{kind:?} {id:?}: {err:?}");
        }
    }
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert!(fake.item_state("101").played, "another item changed");
    let answered: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.status < 300)
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(answered.is_empty(), "{kind:?} reached: {answered:?}");
    fake.assert_contract();
}

per_kind!(a_hostile_item_id_never_reaches_another_route);

async fn a_redirect_is_reported_not_followed(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let moved = format!("{}moved", fake.url());
    fake.inject(Fault::redirect(301, &moved));
    let err = client.set_played("103", true, None).await.unwrap_err();
    assert!(
        matches!(err, BackendError::Client { status: 301, .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(text.contains(&format!("{moved}/")), "{text}");
    assert!(text.contains("set url to"), "{text}");
    assert!(!text.contains(fake.token()), "token leaked: {text}");
    // Not followed: one request, nothing written, no GET sent to the new address.
    assert_eq!(fake.requests().len(), 1, "{:?}", fake.requests());
    assert!(!fake.item_state("103").played);

    fake.inject(Fault::redirect(302, &moved));
    let err = client.get_item("101").await.unwrap_err();
    assert!(
        matches!(err, BackendError::Client { status: 302, .. }),
        "{err:?}"
    );
    assert_eq!(fake.requests().len(), 2);
}

per_kind!(a_redirect_is_reported_not_followed);

#[tokio::test]
async fn emby_sends_its_token_as_api_key_and_as_header() {
    let fake = FakeServer::start(FakeKind::Emby, library()).await;
    let client = fake.client();
    client.identity().await.unwrap();
    list_all(client.as_ref(), 4).await;
    client.get_item("101").await.unwrap().expect("item 101");
    client.set_played("103", true, None).await.unwrap();
    client.set_played("103", false, None).await.unwrap();
    client.set_position("102", 5_000, None, None).await.unwrap();
    let requests = fake.requests();
    assert!(requests.len() >= 8, "{requests:?}");
    for r in &requests {
        let line = format!("{} {}", r.method, r.path);
        assert_eq!(r.params("api_key"), [fake.token()], "{line}");
        let header = r.headers.get("x-emby-token").map(|v| v.to_str().unwrap());
        assert_eq!(header, Some(fake.token()), "{line}");
        // The client and device, as Emby's own clients name them (without the token).
        let who = r.headers["x-emby-authorization"].to_str().unwrap();
        assert!(
            who.starts_with("Emby Client=\"watchstate-rs\", Device=\"watchstate-rs\", DeviceId=\"watchstate-rs-")
                && who.contains("Version=\""),
            "{line}: {who}"
        );
        assert!(!who.contains(fake.token()), "{line}");
    }
    fake.assert_contract();
}

#[tokio::test]
async fn the_fake_emby_takes_the_token_in_the_query_or_a_header() {
    let fake = FakeServer::start(FakeKind::Emby, library()).await;
    let url = fake
        .url()
        .join(&format!("emby/Users/{}/Items?Ids=101", fake.user_id()))
        .unwrap();
    let http = reqwest::Client::new();
    let by_query = http
        .get(format!("{url}&api_key={}", fake.token()))
        .send()
        .await
        .unwrap();
    assert_eq!(by_query.status(), 200);
    let by_header = http
        .get(url.clone())
        .header("X-Emby-Token", fake.token())
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 200);
    let neither = http.get(url).send().await.unwrap();
    assert_eq!(neither.status(), 401);
}

/// Every failure of an Emby request, whose URL carries the token: the error text never does.
#[tokio::test]
async fn emby_errors_never_show_the_token() {
    let fake = FakeServer::start(FakeKind::Emby, library()).await;
    let client = fake.client();
    let token = fake.token().to_string();
    let mut texts = Vec::new();
    // Error pages that repeat the request line, query included.
    for status in [400, 404, 500, 503] {
        fake.inject(Fault::echo_request(status));
        let err = client.set_played("103", true, None).await.unwrap_err();
        texts.push(format!("{err} / {err:?}"));
    }
    fake.inject(Fault::echo_request(200));
    let err = client.list_items(None, 5).await.unwrap_err();
    assert!(matches!(err, BackendError::WebPage { .. }), "{err:?}");
    texts.push(format!("{err} / {err:?}"));
    fake.inject(Fault::redirect(307, "https://emby.example.com:8920/emby"));
    let err = client.set_position("102", 5_000, Some(10_000), None).await;
    texts.push(format!("{err:?}"));
    let slow = build_client(config(&fake, &token, Duration::from_millis(100))).unwrap();
    fake.inject(Fault::delay(Duration::from_secs(2)));
    texts.push(format!("{:?}", slow.get_item("101").await));
    fake.shutdown().await;
    let err = client.set_played("103", true, None).await.unwrap_err();
    assert!(matches!(err, BackendError::Network { .. }), "{err:?}");
    texts.push(format!("{err} / {err:?}"));
    // The echoed pages did reach the client: the check below is not vacuous.
    assert!(texts[0].contains("Error processing"), "{}", texts[0]);
    for text in &texts {
        assert!(!text.contains(&token), "token leaked: {text}");
    }
}

async fn an_identity_without_an_id_says_so(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    let body = match kind {
        FakeKind::Plex => r#"{"MediaContainer":{"size":0,"claimed":true,"version":"1.41.3"}}"#,
        FakeKind::Jellyfin => r#"{"ServerName":"den","Version":"10.11.11","Id":null}"#,
        FakeKind::Emby => r#"{"ServerName":"den","Version":"4.8.11.0"}"#,
    };
    fake.inject(Fault::body(200, "application/json", body));
    let err = client.identity().await.unwrap_err();
    assert!(matches!(err, BackendError::BadResponse { .. }), "{err:?}");
    assert!(err.to_string().contains("returned no"), "{err}");
    assert!(!err.is_retryable());
}

async fn an_answer_that_is_not_json_is_shown(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let client = fake.client();
    fake.inject(Fault::body(
        200,
        "text/xml",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<MediaContainer size=\"0\"/>",
    ));
    let err = client.identity().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BackendError::BadResponse { .. }), "{err:?}");
    assert!(text.contains("text/xml"), "{text}");
    assert!(text.contains("<?xml version"), "{text}");
    // A login page in front of the server: type and start shown, control characters not.
    let page = format!(
        "<!DOCTYPE html>\r\n<html><head><title>Sign in</title></head>\u{7}{}</html>",
        "x".repeat(5000)
    );
    fake.inject(Fault::body(200, "text/html; charset=utf-8", &page));
    let err = client.list_items(None, 5).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, BackendError::WebPage { .. }), "{err:?}");
    assert!(text.contains("text/html"), "{text}");
    assert!(text.contains("<!DOCTYPE html>"), "{text}");
    assert!(text.contains("Sign in"), "{text}");
    assert!(!text.contains('\r') && !text.contains('\u{7}'), "{text:?}");
    assert!(text.len() < 600, "{} bytes: {text}", text.len());
}

per_kind!(
    an_identity_without_an_id_says_so,
    an_answer_that_is_not_json_is_shown
);

/// `library()` plus three items as real servers sometimes send them: a year as text, a
/// wrong-typed duration, and (Jellyfin/Emby) a null id or (Plex) no `ratingKey`.
fn library_with_odd_items(kind: FakeKind) -> FakeLibrary {
    let (year, duration) = match kind {
        FakeKind::Plex => ("year", "duration"),
        _ => ("ProductionYear", "RunTimeTicks"),
    };
    let no_id = FakeItem::movie("110", "No id").ext("imdb", "tt0000110");
    let no_id = match kind {
        FakeKind::Plex => no_id.omit("ratingKey"),
        _ => no_id.render("Id", serde_json::Value::Null),
    };
    library()
        .with(
            FakeItem::movie("108", "Year as text")
                .ext("imdb", "tt0000108")
                .render(year, serde_json::json!("2017")),
        )
        .with(
            FakeItem::movie("109", "Broken")
                .ext("imdb", "tt0000109")
                .render(duration, serde_json::json!({"not": "a number"})),
        )
        .with(no_id)
}

async fn one_malformed_item_does_not_stop_the_listing(kind: FakeKind) {
    let fake = FakeServer::start(kind, library_with_odd_items(kind)).await;
    let client = fake.client();
    let (items, _) = list_all(client.as_ref(), 4).await;
    let items = by_id(items);
    assert_eq!(items["108"].year, Some(2017));
    assert!(!items.contains_key("109"), "the broken item is skipped");
    if kind == FakeKind::Plex {
        // No ratingKey: taken from `key` (`/library/metadata/110`).
        assert_eq!(items["110"].external_ids["imdb"], "tt0000110");
    } else {
        assert!(
            !items.contains_key("110"),
            "an item without id cannot be used"
        );
    }
    for id in ["101", "102", "201", "202", "301"] {
        assert!(items.contains_key(id), "{id} missing");
    }
    // Each page says how many items it skipped, for the sync's status.
    let skipped: u64 = pages(client.as_ref(), 4, 100)
        .await
        .iter()
        .map(|p| p.skipped)
        .sum();
    assert_eq!(skipped, if kind == FakeKind::Plex { 1 } else { 2 });
    fake.assert_contract();
}

per_kind!(one_malformed_item_does_not_stop_the_listing);

/// Titles a real server stored as it found them: bytes that are not UTF-8 (WatchState#68 and
/// other Plex clients' reports), and half a surrogate pair as an escape. The answer is read
/// with U+FFFD in their place; no item is skipped and no page fails.
async fn broken_text_in_an_answer_is_replaced(kind: FakeKind) {
    let lib = library()
        .with(FakeItem::movie("111", "Caf@@BAD@@").ext("imdb", "tt0000111"))
        .with(FakeItem::movie("112", "Smile @@HALF@@").ext("imdb", "tt0000112"));
    let fake = FakeServer::start(kind, lib).await;
    fake.rewrite_answers("@@BAD@@", b"\xff\xfe");
    fake.rewrite_answers("@@HALF@@", b"\\ud83d");
    let client = fake.client();
    let pages = pages(client.as_ref(), 4, 100).await;
    assert_eq!(pages.iter().map(|p| p.skipped).sum::<u64>(), 0);
    let items = by_id(pages.into_iter().flat_map(|p| p.items).collect());
    assert_eq!(items.len(), 12, "{:?}", items.keys());
    assert_eq!(items["111"].title.as_deref(), Some("Caf\u{fffd}\u{fffd}"));
    assert_eq!(items["111"].external_ids["imdb"], "tt0000111");
    assert_eq!(items["112"].title.as_deref(), Some("Smile \u{fffd}"));
    let one = client.get_item("112").await.unwrap().expect("the item");
    assert_eq!(one.external_ids["imdb"], "tt0000112");
    // Writes to such an item work (Emby sends the item's user data back: it is read strictly,
    // the broken title is not part of it).
    client
        .set_position("112", 61_000, None, None)
        .await
        .unwrap();
    assert_eq!(fake.item_state("112").position_ms, 61_000);
    client
        .set_played("111", true, Some(1_714_557_600_000))
        .await
        .unwrap();
    assert!(fake.item_state("111").played);
    fake.assert_contract();
}

per_kind!(broken_text_in_an_answer_is_replaced);

/// A server whose totals are below the truth (Jellyfin 10.5 answered 0 with every item in the
/// page): full pages past the total go on, so nothing is left out. Jellyfin and Plex say where
/// each page starts; Emby's answers do not, so its total is believed (see below).
async fn a_total_below_the_truth_does_not_end_the_listing(kind: FakeKind) {
    let full = FakeServer::start(kind, library()).await;
    let (expected, _) = list_all(full.client().as_ref(), 3).await;
    let expected: Vec<String> = by_id(expected).into_keys().collect();
    assert_eq!(expected.len(), 10);
    for short_by in [5, usize::MAX] {
        let fake = FakeServer::start(kind, library().under_count(short_by)).await;
        let (items, _) = list_all(fake.client().as_ref(), 3).await;
        let ids: Vec<String> = by_id(items).into_keys().collect();
        assert_eq!(ids, expected, "totals short by {short_by}");
        fake.assert_contract();
    }
}

#[tokio::test]
async fn a_total_below_the_truth_does_not_end_a_jellyfin_listing() {
    a_total_below_the_truth_does_not_end_the_listing(FakeKind::Jellyfin).await;
}

#[tokio::test]
async fn a_total_below_the_truth_does_not_end_a_plex_listing() {
    a_total_below_the_truth_does_not_end_the_listing(FakeKind::Plex).await;
}

/// A server or proxy that ignores the start index sends its first page for every page asked
/// for: the listing still ends, with right totals and with wrong ones (and Emby, whose answers
/// do not say where they start, ends at its total).
async fn a_server_that_ignores_the_start_index_cannot_loop_the_listing(kind: FakeKind) {
    for short_by in [0, 5, usize::MAX] {
        let lib = library().ignore_start_index().under_count(short_by);
        let fake = FakeServer::start(kind, lib).await;
        // 10 items in pages of 3: 4 pages at most, more would be a loop.
        let listed = pages(fake.client().as_ref(), 3, 8).await;
        assert!(
            listed.len() <= 4,
            "short by {short_by}: {} pages",
            listed.len()
        );
        fake.assert_contract();
    }
}

per_kind!(a_server_that_ignores_the_start_index_cannot_loop_the_listing);

#[tokio::test]
async fn plex_skips_a_section_it_cannot_address() {
    let lib = library().with_plex_section(serde_json::json!({
        "type": "movie", "title": "No key", "uuid": "section-x", "language": "en-US"
    }));
    let fake = FakeServer::start(FakeKind::Plex, lib).await;
    let (items, _) = list_all(fake.client().as_ref(), 4).await;
    assert_eq!(by_id(items).len(), 10);
    fake.assert_contract();
}

/// DESIGN.md §10 (`includeItemTypes=Movie,Episode&fields=ProviderIds,...`) and the Jellyfin
/// documents' descriptions ("This allows multiple, comma delimited"): one comma list per
/// array parameter, never the same key twice.
#[tokio::test]
async fn jellyfin_sends_array_parameters_as_comma_lists() {
    let fake = FakeServer::start(FakeKind::Jellyfin, library()).await;
    list_all(fake.client().as_ref(), 20).await;
    let requests = fake.requests();
    let listing = requests
        .iter()
        .find(|r| r.path == "/Items" && r.param("startIndex").is_some())
        .expect("a listing request");
    assert_eq!(listing.params("includeItemTypes"), ["Movie,Episode"]);
    assert_eq!(listing.params("fields"), ["ProviderIds"]);
    assert_eq!(listing.params("sortBy"), ["DateCreated,SortName"]);
    assert_eq!(listing.params("excludeLocationTypes"), ["Virtual"]);
    let shows = requests
        .iter()
        .find(|r| r.path == "/Items" && r.param("ids").is_some())
        .expect("a show lookup");
    assert_eq!(shows.params("ids"), ["200,300"]);
    for r in &requests {
        let mut names: Vec<&str> = r.query.iter().map(|(k, _)| k.as_str()).collect();
        let all = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(
            names.len(),
            all,
            "a key sent twice: {} {:?}",
            r.path,
            r.query
        );
    }
    fake.assert_contract();
}

/// 150 shows of one episode each, listed in one page: show lookups go in batches of 100.
async fn show_lookups_are_batched(kind: FakeKind) {
    let mut lib = FakeLibrary::new();
    for n in 0..150 {
        lib = lib
            .with_show(
                FakeShow::new(&format!("{}", 5000 + n), &format!("Show {n}"))
                    .ext("tvdb", &format!("7{n}")),
            )
            .with(FakeItem::episode(
                &format!("{}", 6000 + n),
                &format!("{}", 5000 + n),
                1,
                1,
            ));
    }
    let fake = FakeServer::start(kind, lib).await;
    let (items, _) = list_all(fake.client().as_ref(), 200).await;
    let items = by_id(items);
    assert_eq!(items.len(), 150);
    assert_eq!(items["6149"].series_external_ids["tvdb"], "7149");
    let lookups: Vec<usize> = fake
        .requests()
        .iter()
        .filter_map(|r| match kind {
            FakeKind::Plex => r
                .path
                .strip_prefix("/library/metadata/")
                .map(|ids| ids.split(',').count()),
            FakeKind::Jellyfin => r.param("ids").map(|ids| ids.split(',').count()),
            FakeKind::Emby => r.param("Ids").map(|ids| ids.split(',').count()),
        })
        .collect();
    assert_eq!(lookups, [100, 50], "{kind:?}");
    fake.assert_contract();
}

per_kind!(show_lookups_are_batched);

/// Jellyfin and Emby may leave `UserData` out of an item (their specs make it optional): such
/// an item is listed with its state unknown, not as unplayed; Plex items always have theirs.
async fn an_item_without_user_data_is_listed_with_its_state_unknown(kind: FakeKind) {
    let lib = FakeLibrary::new()
        .with(
            FakeItem::movie("101", "Known")
                .ext("imdb", "tt1")
                .played_at(1_600_000_000_000),
        )
        .with(
            FakeItem::movie("102", "Unknown")
                .ext("imdb", "tt2")
                .played_at(1_600_000_000_000)
                .omit("UserData"),
        );
    let fake = FakeServer::start(kind, lib).await;
    let items = by_id(list_all(fake.client().as_ref(), 50).await.0);
    assert!(
        items["101"].played && !items["101"].state_unknown,
        "{kind:?}"
    );
    let unknown = &items["102"];
    assert_eq!(unknown.state_unknown, kind != FakeKind::Plex, "{kind:?}");
    assert_eq!(unknown.played, kind == FakeKind::Plex, "{kind:?}");
}

per_kind!(an_item_without_user_data_is_listed_with_its_state_unknown);

/// A Plex server that answers a lookup of several shows with only the first 50 (the spec's
/// default container size): the shows left out are asked again, so every episode still gets
/// its show's ids. A show that is gone costs one more request, not a wrong cache entry.
#[tokio::test]
async fn a_plex_show_lookup_answered_in_part_asks_for_the_rest() {
    let mut lib = FakeLibrary::new().plex_metadata_page(50);
    for n in 0..120 {
        lib = lib.with(FakeItem::episode(
            &format!("{}", 6000 + n),
            &format!("{}", 5000 + n),
            1,
            1,
        ));
        // Show 5007 was deleted: its episode is listed, the show is not there.
        if n != 7 {
            lib = lib.with_show(
                FakeShow::new(&format!("{}", 5000 + n), &format!("Show {n}"))
                    .ext("tvdb", &format!("7{n}")),
            );
        }
    }
    let fake = FakeServer::start(FakeKind::Plex, lib).await;
    let (items, _) = list_all(fake.client().as_ref(), 200).await;
    let items = by_id(items);
    assert_eq!(items.len(), 120);
    for n in (0..120).filter(|n| *n != 7) {
        let id = format!("{}", 6000 + n);
        assert_eq!(
            items[&id]
                .series_external_ids
                .get("tvdb")
                .map(String::as_str),
            Some(format!("7{n}").as_str()),
            "episode {id}"
        );
    }
    assert!(items["6007"].series_external_ids.is_empty());
    let lookups: Vec<usize> = fake
        .requests()
        .iter()
        .filter_map(|r| r.path.strip_prefix("/library/metadata/"))
        .map(|ids| ids.split(',').count())
        .collect();
    // The first batch: 100 asked, 50 answered; the other 50 asked again, 49 answered; the one
    // that is gone asked alone (404), which brings nothing more. Then the last 20 shows.
    assert_eq!(lookups, [100, 50, 1, 20], "{lookups:?}");
    fake.assert_contract();
}

/// Without a sort order a server pages through an order that may change between requests
/// (the fakes turn theirs on every unsorted listing request): the listing asks for creation
/// order, so that pages neither overlap nor miss items.
async fn listings_ask_for_a_stable_order(kind: FakeKind) {
    let fake = FakeServer::start(kind, FakeLibrary::generated(60)).await;
    let (items, pages) = list_all(fake.client().as_ref(), 7).await;
    assert!(pages > 5);
    assert_eq!(by_id(items).len(), 60);
    let listings: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| match kind {
            FakeKind::Plex => {
                r.param("type").is_some() && r.param("X-Plex-Container-Size") != Some("0")
            }
            FakeKind::Jellyfin => r.path == "/Items" && r.param("startIndex").is_some(),
            FakeKind::Emby => r.path.ends_with("/Items") && r.param("StartIndex").is_some(),
        })
        .collect();
    assert!(!listings.is_empty());
    for r in &listings {
        match kind {
            FakeKind::Plex => assert_eq!(r.param("sort"), Some("addedAt")),
            FakeKind::Jellyfin => {
                assert_eq!(r.params("sortBy"), ["DateCreated,SortName"]);
                assert_eq!(r.params("sortOrder"), ["Ascending"]);
            }
            FakeKind::Emby => {
                assert_eq!(r.param("SortBy"), Some("DateCreated,SortName"));
                assert_eq!(r.param("SortOrder"), Some("Ascending"));
            }
        }
    }
    fake.assert_contract();
}

per_kind!(listings_ask_for_a_stable_order);

#[tokio::test]
async fn jellyfin_position_leaves_the_rest_of_the_user_data_alone() {
    let fake = FakeServer::start(FakeKind::Jellyfin, library()).await;
    fake.set_user_data_directly(
        "201",
        serde_json::json!({"IsFavorite": true, "Rating": 7.5}),
    );
    fake.clear_log();
    fake.client()
        .set_position("201", 5_000, None, None)
        .await
        .unwrap();
    // 201 is played: a position pushed meanwhile must not unmark it.
    let s = fake.item_state("201");
    assert_eq!(s.position_ms, 5_000);
    assert!(s.played);
    assert_eq!(s.play_count, 1);
    assert_eq!(s.last_played_at, Some(PILOT_PLAYED_AT));
    assert_eq!(fake.other_user_data("201")["IsFavorite"], true);
    let requests = fake.requests();
    let update = requests.iter().find(|r| r.method == "POST").unwrap();
    let body: serde_json::Value = serde_json::from_str(&update.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"PlaybackPositionTicks": 50_000_000})
    );
    fake.assert_contract();
}

#[tokio::test]
async fn emby_position_sends_back_the_whole_user_data() {
    let fake = FakeServer::start(FakeKind::Emby, library()).await;
    fake.set_user_data_directly(
        "201",
        serde_json::json!({"IsFavorite": true, "Rating": 7.5}),
    );
    fake.client()
        .set_position("201", 5_000, None, None)
        .await
        .unwrap();
    // Emby resets every field the body leaves out: the client read them all (asking for the
    // play count and date, which Emby leaves out otherwise) and sent them back, with only the
    // position changed. 201 is played and stays played.
    let s = fake.item_state("201");
    assert_eq!(s.position_ms, 5_000);
    assert!(s.played);
    assert_eq!(s.play_count, 1);
    assert_eq!(s.last_played_at, Some(PILOT_PLAYED_AT));
    let others = fake.other_user_data("201");
    assert_eq!(others["IsFavorite"], true);
    assert_eq!(others["Rating"], 7.5);

    // An unplayed item keeps its other fields too.
    fake.set_user_data_directly("102", serde_json::json!({"IsFavorite": true}));
    fake.client()
        .set_position("102", 9_000, Some(8_000_000), None)
        .await
        .unwrap();
    let s = fake.item_state("102");
    assert_eq!((s.position_ms, s.played, s.play_count), (9_000, false, 0));
    assert_eq!(fake.other_user_data("102")["IsFavorite"], true);
    fake.assert_contract();
}

#[tokio::test]
async fn jellyfin_10_8_is_read_and_marked_through_its_own_routes() {
    let fake = FakeServer::start_jellyfin_10_8(library()).await;
    let client = fake.client();
    assert!(client.accepts_positions(), "the version is not known yet");
    let id = client.identity().await.unwrap();
    assert_eq!(id.version.as_deref(), Some("10.8.13"));
    // Known now: the actor queues no position for it.
    assert!(!client.accepts_positions());
    let (items, _) = list_all(client.as_ref(), 4).await;
    assert_eq!(by_id(items).len(), 10);
    let movie = client.get_item("101").await.unwrap().expect("item 101");
    assert!(movie.played);
    assert_eq!(client.get_item("999999").await.unwrap(), None);
    client
        .set_played("103", true, Some(1_710_000_000_000))
        .await
        .unwrap();
    assert_eq!(
        fake.item_state("103").last_played_at,
        Some(1_710_000_000_000)
    );
    client.set_played("101", false, None).await.unwrap();
    assert!(!fake.item_state("101").played);
    // 10.8 has no route that sets a resume position: a clear error, no request.
    let before = fake.requests().len();
    let err = client
        .set_position("102", 5_000, None, None)
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("10.9"), "{err}");
    assert_eq!(fake.requests().len(), before);
    assert_eq!(fake.item_state("102").position_ms, 754_000);
    let uid = fake.user_id();
    let paths: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert!(
        paths.contains(&format!("GET /Users/{uid}/Items/101")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&format!("POST /Users/{uid}/PlayedItems/103")),
        "{paths:?}"
    );
    assert!(
        paths.contains(&format!("DELETE /Users/{uid}/PlayedItems/101")),
        "{paths:?}"
    );
    // A client that did not ask for the identity first: the 10.9 route answers 404, the
    // version is read once, and the 10.8 route is used from then on.
    let fresh = fake.client();
    fake.clear_log();
    fresh.set_played("104", true, None).await.unwrap();
    assert!(fake.item_state("104").played);
    fresh.set_played("105", true, None).await.unwrap();
    let paths: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        paths,
        [
            "POST /UserPlayedItems/104".to_string(),
            "GET /System/Info/Public".to_string(),
            format!("POST /Users/{uid}/PlayedItems/104"),
            format!("POST /Users/{uid}/PlayedItems/105"),
        ]
    );
    let err = fake
        .client()
        .set_position("102", 5_000, None, None)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Jellyfin 10.8.13 has no API"),
        "{err}"
    );
    fake.assert_contract();
}

#[tokio::test]
async fn jellyfin_10_9_and_later_use_the_new_routes() {
    let fake = FakeServer::start(FakeKind::Jellyfin, library()).await;
    let client = fake.client();
    client.get_item("101").await.unwrap().expect("item 101");
    client.set_played("103", true, None).await.unwrap();
    assert!(client.accepts_positions());
    let paths: Vec<String> = fake.requests().into_iter().map(|r| r.path).collect();
    assert!(paths.contains(&"/Items/101".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"/UserPlayedItems/103".to_string()),
        "{paths:?}"
    );
    // No request to another route, and none to read the version.
    assert!(
        paths
            .iter()
            .all(|p| !p.starts_with("/Users/") && !p.starts_with("/System/")),
        "{paths:?}"
    );
}

async fn not_found_names_the_request_and_the_answer(kind: FakeKind) {
    let fake = FakeServer::start(kind, library()).await;
    let err = fake
        .client()
        .set_played("424242", true, None)
        .await
        .unwrap_err();
    let text = err.to_string();
    let (route, answer) = match kind {
        FakeKind::Plex => ("PUT /:/scrobble".to_string(), "404 Not Found"),
        FakeKind::Jellyfin => ("POST /UserPlayedItems/424242".to_string(), "Item not found"),
        FakeKind::Emby => (
            format!("POST /emby/Users/{}/PlayedItems/424242", fake.user_id()),
            "Item not found",
        ),
    };
    assert!(text.contains(&route), "{text}");
    assert!(text.contains(answer), "{text}");
    assert!(!text.contains(fake.token()), "{text}");
}

per_kind!(not_found_names_the_request_and_the_answer);

/// A Plex timeline report names the library provider (`identifier`, as the PHP original sends
/// it: without it Plex may ignore the report), the item and the position, and comes from a
/// client identifier of this backend: Plex keeps a playback session per client identifier, so
/// two users (or two installs) must not share one. The identifier is stable for one backend
/// and never shows the token.
#[tokio::test]
async fn plex_timeline_reports_name_the_library_and_the_backends_own_client() {
    let fake = FakeServer::start(FakeKind::Plex, library()).await;
    fake.add_user("plex-user-2", "second-account-token");
    let client_id = |r: &crate::fakes::RecordedRequest| {
        r.headers
            .get("x-plex-client-identifier")
            .and_then(|v| v.to_str().ok())
            .expect("a client identifier")
            .to_string()
    };
    let timeline = || {
        fake.requests()
            .into_iter()
            .rfind(|r| r.path == "/:/timeline")
            .expect("a timeline report")
    };

    fake.client()
        .set_position("102", 123_456, Some(8_000_000), None)
        .await
        .unwrap();
    assert_eq!(fake.item_state("102").position_ms, 123_456);
    let r = timeline();
    assert_eq!(r.method, "POST");
    assert_eq!(r.param("identifier"), Some("com.plexapp.plugins.library"));
    assert_eq!(r.param("key"), Some("/library/metadata/102"));
    assert_eq!(r.param("ratingKey"), Some("102"));
    assert_eq!(r.param("state"), Some("stopped"));
    assert_eq!(r.param("time"), Some("123456"));
    assert_eq!(r.param("duration"), Some("8000000"));
    let first = client_id(&r);
    assert!(first.starts_with("watchstate-rs-"), "{first}");
    assert!(!first.contains(fake.token()), "{first}");
    let product = r.headers.get("x-plex-product").map(|v| v.to_str().unwrap());
    assert_eq!(product, Some("watchstate-rs"));
    // Every request of the client carries the same identifier.
    assert!(fake.requests().iter().all(|r| client_id(r) == first));

    // The same backend configured again (a restart): the same identifier.
    fake.client()
        .set_position("102", 200_000, Some(8_000_000), None)
        .await
        .unwrap();
    assert_eq!(client_id(&timeline()), first);

    // Another user of the same server: another identifier.
    let other = build_client(ClientConfig {
        user_id: "plex-user-2".into(),
        ..config(&fake, "second-account-token", Duration::from_secs(5))
    })
    .unwrap();
    other
        .set_position("102", 300_000, Some(8_000_000), None)
        .await
        .unwrap();
    assert_eq!(
        fake.item_state_for("plex-user-2", "102").position_ms,
        300_000
    );
    let second = client_id(&timeline());
    assert!(second.starts_with("watchstate-rs-"), "{second}");
    assert_ne!(second, first);
    fake.assert_contract();
}

/// The spec's `Metadata` has no `librarySectionID`; Plex also names the section on the
/// `MediaContainer` of `/library/metadata/{id}`. An item looked up without its own takes the
/// container's, so that `ignore_libraries` applies to it as to a listed one.
#[tokio::test]
async fn plex_lookup_takes_the_section_from_the_container() {
    let lib = library()
        .with(
            FakeItem::movie("120", "No section of its own")
                .library("5")
                .omit("librarySectionID"),
        )
        .with(FakeItem::episode("203", "200", 1, 3).omit("librarySectionID"));
    let fake = FakeServer::start(FakeKind::Plex, lib).await;
    let client = build_client(ClientConfig {
        ignore_libraries: vec!["5".into()],
        ..fake.client_config()
    })
    .unwrap();
    let movie = client.get_item("120").await.unwrap().expect("item 120");
    assert_eq!(movie.library_id.as_deref(), Some("5"));
    let ep = client.get_item("203").await.unwrap().expect("item 203");
    assert_eq!(ep.library_id.as_deref(), Some("2"));
    // Items with their own, as before.
    let matrix = client.get_item("101").await.unwrap().expect("item 101");
    assert_eq!(matrix.library_id.as_deref(), Some("1"));
    fake.assert_contract();
}

/// `totalSize` is not required in a Plex `MediaContainer`: the spec says it is "also provided
/// in the `X-Plex-Container-Total-Size` header". A server that sends only the header still
/// gives the listing its total and ends each section without asking for an empty page.
#[tokio::test]
async fn plex_reads_the_total_from_the_header_when_the_body_has_none() {
    let fake = FakeServer::start(FakeKind::Plex, library().plex_container_omit("totalSize")).await;
    let client = fake.client();
    let first = client.list_items(None, 4).await.expect("first page");
    assert_eq!(first.total, Some(10));
    // 7 movies in pages of 7: the total tells that the section ends there.
    let (items, pages) = list_all(client.as_ref(), 7).await;
    assert_eq!(by_id(items).len(), 10);
    assert_eq!(pages, 2, "a page came back empty");
    fake.assert_contract();
}

/// [`library`] and episode 203 as a `Virtual` item: known from metadata, no file.
fn library_with_a_placeholder() -> FakeLibrary {
    library().with(
        FakeItem::episode("203", "200", 1, 3)
            .title("Missing")
            .ext("tvdb", "6252620")
            .virtual_item(),
    )
}

/// Jellyfin keeps `Virtual` items for episodes it knows from metadata but has no file of; the
/// listing leaves them out (`excludeLocationTypes=Virtual`, an array parameter sent in the
/// spec's repeated style), so they never count as unplayed items of the library.
#[tokio::test]
async fn jellyfin_listing_leaves_out_virtual_items() {
    let fake = FakeServer::start(FakeKind::Jellyfin, library_with_a_placeholder()).await;
    let client = fake.client();
    let first = client.list_items(None, 4).await.expect("first page");
    assert_eq!(first.total, Some(10));
    let (items, _) = list_all(client.as_ref(), 4).await;
    let items = by_id(items);
    assert_eq!(items.len(), 10);
    assert!(!items.contains_key("203"), "the virtual episode was listed");
    let listings: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/Items" && r.param("startIndex").is_some())
        .collect();
    assert!(!listings.is_empty());
    for r in &listings {
        assert_eq!(r.params("excludeLocationTypes"), ["Virtual"]);
    }
    fake.assert_contract();
}

/// Emby 4.8's listing has no filter for placeholders, so its `Virtual` items come back; the
/// client leaves them out itself (and so would Jellyfin's, were a server to ignore the filter).
#[tokio::test]
async fn emby_listing_leaves_out_virtual_items() {
    // Show 400 has nothing but a placeholder: it is not even looked up.
    let lib = library_with_a_placeholder()
        .with_show(FakeShow::new("400", "Announced").ext("tvdb", "999001"))
        .with(FakeItem::episode("401", "400", 1, 1).virtual_item());
    let fake = FakeServer::start(FakeKind::Emby, lib).await;
    let client = fake.client();
    let (items, _) = list_all(client.as_ref(), 4).await;
    let items = by_id(items);
    assert_eq!(items.len(), 10);
    assert!(!items.contains_key("203"), "the virtual episode was listed");
    assert!(!items.contains_key("401"), "the virtual episode was listed");
    assert!(
        !fake.requests().iter().any(|r| r
            .param("Ids")
            .is_some_and(|ids| ids.split(',').any(|i| i == "400"))),
        "the show of a placeholder was looked up"
    );
    assert!(
        client.get_item("203").await.unwrap().is_none(),
        "a placeholder looked up alone is no item either"
    );
    // The placeholders are in Emby's total: the pages say they left them out, so that a
    // sync's progress reaches the total.
    let pages = pages(client.as_ref(), 4, 100).await;
    let counted: u64 = pages
        .iter()
        .map(|p| p.items.len() as u64 + p.skipped + p.left_out)
        .sum();
    assert_eq!((counted, pages[0].total), (12, Some(12)));
    fake.assert_contract();
}

/// `Items` is nullable in Jellyfin 10.8's `BaseItemDtoQueryResult` (and Jellyfin leaves null
/// properties out): a page whose `Items` is null or absent is empty, not a failed listing.
/// An answer without `TotalRecordCount` either is no query result and stays an error.
#[tokio::test]
async fn a_page_with_null_or_absent_items_is_empty() {
    let fakes = [
        FakeServer::start_jellyfin_10_8(library()).await,
        FakeServer::start(FakeKind::Jellyfin, library()).await,
        FakeServer::start(FakeKind::Emby, library()).await,
    ];
    for fake in &fakes {
        let client = fake.client();
        for body in [
            r#"{"Items":null,"TotalRecordCount":0,"StartIndex":0}"#,
            r#"{"TotalRecordCount":0,"StartIndex":0}"#,
        ] {
            fake.inject(Fault::body(200, "application/json", body));
            let page = client.list_items(None, 10).await.expect(body);
            assert!(page.items.is_empty(), "{body}");
            assert_eq!((page.next, page.total), (None, Some(0)), "{body}");
        }
        // No list at all, or none where the total says there are items, fails the page
        // (read as empty, the second would end the sync at its first page).
        for body in [
            r#"{"Items":null}"#,
            r#"{"Items":null,"TotalRecordCount":500}"#,
        ] {
            fake.inject(Fault::body(200, "application/json", body));
            let err = client.list_items(None, 10).await.unwrap_err();
            assert!(
                matches!(err, BackendError::BadResponse { .. }),
                "{body}: {err:?}"
            );
        }
        // The listing goes on as before.
        let (items, _) = list_all(client.as_ref(), 4).await;
        assert_eq!(items.len(), 10);
    }
}

/// Jellyfin item ids are `format: uuid`: the server answers a lookup of an id that is not one
/// with 400 (parameter binding), and of a GUID it does not have with 404. Both mean that no
/// item has the id. Only the lookup reads a 400 so: a listing or a write answered 400 fails.
#[tokio::test]
async fn jellyfin_lookup_of_an_id_that_is_no_guid_finds_nothing() {
    for fake in [
        FakeServer::start(FakeKind::Jellyfin, library()).await,
        FakeServer::start_jellyfin_10_8(library()).await,
    ] {
        let client = fake.client();
        for id in ["999999", "0123456789abcdef0123456789abcdef"] {
            fake.clear_log();
            assert_eq!(client.get_item(id).await.unwrap(), None, "{id}");
            let statuses: Vec<u16> = fake
                .requests()
                .iter()
                .filter(|r| r.path.ends_with(&format!("/Items/{id}")))
                .map(|r| r.status)
                .collect();
            let expected = if id.len() == 32 { 404 } else { 400 };
            assert_eq!(statuses.last(), Some(&expected), "{id}: {statuses:?}");
        }
        assert!(client.get_item("101").await.unwrap().is_some());
        // A 400 to a GUID is something else (a wrong user id, say): an error.
        fake.inject(Fault::status(400));
        let err = client
            .get_item("0123456789abcdef0123456789abcdef")
            .await
            .unwrap_err();
        assert!(
            matches!(err, BackendError::Client { status: 400, .. }),
            "{err:?}"
        );

        fake.inject(Fault::status(400));
        let err = client.list_items(None, 10).await.unwrap_err();
        assert!(
            matches!(err, BackendError::Client { status: 400, .. }),
            "{err:?}"
        );
        fake.inject(Fault::status(400));
        let err = client.set_played("103", true, None).await.unwrap_err();
        assert!(
            matches!(err, BackendError::Client { status: 400, .. }),
            "{err:?}"
        );
        fake.assert_contract();
    }
}

/// `watchstate check-servers` against three fakes: one configured right, one whose
/// `server_id` is another server's, one with a refused token. Each line says which, and no
/// token is printed.
#[tokio::test]
async fn check_servers_finds_a_wrong_server_id_and_a_refused_token() {
    let plex = FakeServer::start(FakeKind::Plex, library()).await;
    let jellyfin = FakeServer::start(FakeKind::Jellyfin, library()).await;
    let emby = FakeServer::start(FakeKind::Emby, library()).await;
    let no_user_data = FakeServer::start(
        FakeKind::Jellyfin,
        FakeLibrary::new().with(
            FakeItem::movie("101", "X")
                .ext("imdb", "tt1")
                .omit("UserData"),
        ),
    )
    .await;
    let toml = [
        crate::harness::backend_toml("alice", "plex", &plex, ""),
        crate::harness::backend_toml_for(
            "carol",
            "jelly",
            &jellyfin,
            "no-such-user",
            jellyfin.token(),
            "",
        ),
        crate::harness::backend_toml("dave", "jelly", &no_user_data, ""),
        crate::harness::backend_toml("alice", "jelly", &jellyfin, "")
            .replace(jellyfin.server_id(), "0123456789abcdef0123456789abcdef"),
        crate::harness::backend_toml_for(
            "alice",
            "emby",
            &emby,
            emby.user_id(),
            "not-the-emby-key",
            "",
        ),
        crate::harness::backend_toml_for(
            "erin",
            "emby",
            &emby,
            "not-an-emby-user",
            emby.token(),
            "",
        ),
    ]
    .concat();
    let config = watchstate::config::Config::parse("t.toml", &toml, &Default::default()).unwrap();
    let checks = watchstate::check::check_servers(&config).await;
    let by_pair = |p: &str| checks.iter().find(|c| c.pair == p).cloned().unwrap();

    let ok = by_pair("alice/plex");
    assert!(ok.ok, "{ok}");
    assert!(
        ok.message
            .contains("id matches; 10 movies and episodes listed"),
        "{ok}"
    );

    let wrong = by_pair("alice/jelly");
    assert!(!wrong.ok);
    assert!(
        wrong
            .message
            .contains(&format!("says its id is {:?}", jellyfin.server_id()))
            && wrong.message.contains("0123456789abcdef0123456789abcdef"),
        "{wrong}"
    );

    let refused = by_pair("alice/emby");
    assert!(!refused.ok);
    assert!(
        refused.message.contains("the token was refused (401)"),
        "{refused}"
    );

    // An unknown user id is named with the server's users (their names and ids).
    for (pair, fake, wrong) in [
        ("carol/jelly", &jellyfin, "no-such-user"),
        ("erin/emby", &emby, "not-an-emby-user"),
    ] {
        let unknown_user = by_pair(pair);
        assert!(!unknown_user.ok);
        let m = &unknown_user.message;
        assert!(
            m.contains(&format!("user_id {wrong:?} is not a user of this server"))
                && m.contains("check user_id")
                && m.contains(&format!("\"user-{0}\" (id {0})", fake.user_id())),
            "{unknown_user}"
        );
    }
    let no_state = by_pair("dave/jelly");
    assert!(!no_state.ok);
    assert!(
        no_state.message.contains("without this user's play state"),
        "{no_state}"
    );

    jellyfin.assert_contract();
    emby.assert_contract();
    for c in &checks {
        let line = c.to_string();
        for token in [
            plex.token(),
            jellyfin.token(),
            emby.token(),
            "not-the-emby-key",
        ] {
            assert!(!line.contains(token), "{line}");
        }
    }

    // The command: a line per backend, exit 0 only when every one is right.
    let dir = crate::harness::TestDir::new();
    let path = dir.path().join("config.toml");
    let run = |text: String| {
        std::fs::write(&path, text).unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_watchstate"))
            .args(["check-servers", "--config"])
            .arg(&path)
            .output()
    };
    let out = run(crate::harness::backend_toml("alice", "plex", &plex, ""))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with("alice/plex: ok: "), "{stdout}");
    let unreachable = "\n[users.bob.backends.jelly]\ntype = \"jellyfin\"\nurl = \"http://127.0.0.1:9\"\ntoken = \"t\"\nserver_id = \"s\"\nuser_id = \"u\"\n";
    let out = run(toml + unreachable).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.lines().count(), 7, "{stdout}");
    assert!(
        stdout.contains("bob/jelly: FAILED: cannot reach the server at http://127.0.0.1:9"),
        "{stdout}"
    );
}
