//! Issue 5 end to end: webhooks into the real service, pushes out to fake Plex, Jellyfin and
//! Emby servers through the real clients; echoes stop, duplicates collapse, failures retry.

use crate::e2e_world::{is_played, wait_writes, write, Extra, World, DEADLINE};
use crate::fakes::{FakeItem, FakeLibrary, FakeShow, Fault, WriteChange};
use crate::harness::{
    emby_webhook, eventually, jellyfin_item_added, jellyfin_progress, jellyfin_user_data_saved,
    plex_webhook, MbItem, PlexMeta,
};
use std::time::Duration;

/// `[sync]` for these tests: no timer (syncs are triggered through the API), few attempts.
const SYNC: &str = "interval = \"0\"\npush_attempts = 4";

const IMDB: &str = "tt1375666";
const PLEX_MOVIE: &str = "48213";
const JF_MOVIE: &str = "e3a1f9b2c47d4e1f9a0b8c7d6e5f4a3b";
const EMBY_MOVIE: &str = "88001";

fn movie(id: &str) -> FakeItem {
    FakeItem::movie(id, "Inception")
        .year(2010)
        .ext("imdb", IMDB)
        .ext("tmdb", "27205")
        .duration_ms(8_880_000)
}

fn movie_libraries() -> (FakeLibrary, FakeLibrary, FakeLibrary) {
    (
        FakeLibrary::new().with(movie(PLEX_MOVIE)),
        FakeLibrary::new().with(movie(JF_MOVIE)),
        FakeLibrary::new().with(movie(EMBY_MOVIE)),
    )
}

fn plex_movie_meta() -> PlexMeta {
    PlexMeta {
        rating_key: PLEX_MOVIE.into(),
        kind: "movie",
        title: "Inception".into(),
        guids: vec![("imdb", IMDB.into()), ("tmdb", "27205".into())],
        duration_ms: 8_880_000,
        ..PlexMeta::default()
    }
}

fn mb_movie(id: &str) -> MbItem {
    MbItem {
        id: id.into(),
        kind: "Movie",
        name: "Inception".into(),
        ids: vec![("Imdb", IMDB.into()), ("Tmdb", "27205".into())],
        series: None,
        runtime_ms: 8_880_000,
    }
}

async fn accepted(w: &World, body: &crate::harness::WebhookBody) -> String {
    let (status, answer) = w.app.webhook(body).await;
    assert_eq!(status, 202, "webhook not accepted: {answer}");
    answer["request_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Emby's `item.markplayed` of the movie, accepted.
async fn emby_marks_the_movie_played(w: &World) {
    let body = emby_webhook(
        "item.markplayed",
        w.emby.server_id(),
        w.emby.user_id(),
        &mb_movie(EMBY_MOVIE),
    );
    accepted(w, &body).await;
}

/// Wait until the actor `backend` has received `n` webhook events in total.
async fn wait_received(w: &World, backend: &str, n: u64) {
    eventually(
        DEADLINE,
        &format!("{backend} to receive {n} events"),
        || async {
            (w.app.pair("alice", backend).await["counters"]["received"].as_u64() >= Some(n))
                .then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn plex_scrobble_marks_played_once_on_jellyfin_and_emby_and_the_echo_stops() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    assert!(
        w.fakes().iter().all(|f| f.writes().is_empty()),
        "syncing equal libraries wrote"
    );
    w.clear_logs();

    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &plex_movie_meta()),
    )
    .await;
    let jf = wait_writes(&w.jellyfin, 1, "one mark played on Jellyfin").await;
    let em = wait_writes(&w.emby, 1, "one mark played on Emby").await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    assert!(is_played(&em[0], &w.emby, EMBY_MOVIE), "{em:?}");
    assert!(w.jellyfin.item_state(JF_MOVIE).played);
    assert!(w.emby.item_state(EMBY_MOVIE).played);
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(
        w.plex.writes().is_empty(),
        "the origin was written to: {:?}",
        w.plex.writes()
    );

    // The servers tell us about our own writes: Jellyfin's TogglePlayed and Emby's markplayed.
    let received_jf = w.app.pair("alice", "jellyfin").await["counters"]["received"]
        .as_u64()
        .unwrap();
    let received_em = w.app.pair("alice", "emby").await["counters"]["received"]
        .as_u64()
        .unwrap();
    accepted(
        &w,
        &jellyfin_user_data_saved(
            w.jellyfin.server_id(),
            w.jellyfin.user_id(),
            &mb_movie(JF_MOVIE),
            "TogglePlayed",
            true,
            0,
        ),
    )
    .await;
    emby_marks_the_movie_played(&w).await;
    wait_received(&w, "jellyfin", received_jf + 1).await;
    wait_received(&w, "emby", received_em + 1).await;
    w.app.wait_quiet(Duration::from_millis(500)).await;
    assert_eq!(w.jellyfin.writes().len(), 1, "{:?}", w.jellyfin.writes());
    assert_eq!(w.emby.writes().len(), 1, "{:?}", w.emby.writes());
    assert!(
        w.plex.writes().is_empty(),
        "echo reached Plex: {:?}",
        w.plex.writes()
    );
    let jf = w.app.pair("alice", "jellyfin").await;
    assert_eq!(jf["last_event"]["outcome"], "unchanged", "{jf:#}");
    w.stop().await;
}

const SHOW_TVDB: &str = "371980";
const EP_TVDB: &str = "7889611";

fn episode(id: &str, show: &str) -> FakeItem {
    FakeItem::episode(id, show, 1, 1)
        .title("Good News About Hell")
        .ext("tvdb", EP_TVDB)
        .ext("imdb", "tt11650328")
}

#[tokio::test]
async fn emby_markunplayed_of_an_episode_unmarks_it_on_plex_and_jellyfin() {
    let at = 1_700_000_000_000;
    let show = |id: &str| FakeShow::new(id, "Severance").ext("tvdb", SHOW_TVDB);
    let w = World::start(
        FakeLibrary::new()
            .with_show(show("300"))
            .with(episode("301", "300").played_at(at)),
        FakeLibrary::new()
            .with_show(show("0f1e2d3c4b5a49687766554433221100"))
            .with(
                episode(
                    "5c1e2d3f4a5b46c7d8e9f0a1b2c3d4e5",
                    "0f1e2d3c4b5a49687766554433221100",
                )
                .played_at(at),
            ),
        FakeLibrary::new()
            .with_show(show("88190"))
            .with(episode("88213", "88190").played_at(at)),
        SYNC,
        Extra::default(),
    )
    .await;
    w.sync_all().await;
    w.app.wait_quiet(Duration::from_millis(200)).await;
    assert!(
        w.fakes().iter().all(|f| f.writes().is_empty()),
        "played everywhere, yet written"
    );

    let item = MbItem {
        id: "88213".into(),
        kind: "Episode",
        name: "Good News About Hell".into(),
        ids: vec![("Tvdb", EP_TVDB.into()), ("Imdb", "tt11650328".into())],
        series: Some(("Severance".into(), 1, 1)),
        runtime_ms: 3_417_000,
    };
    accepted(
        &w,
        &emby_webhook(
            "item.markunplayed",
            w.emby.server_id(),
            w.emby.user_id(),
            &item,
        ),
    )
    .await;
    let plex = wait_writes(&w.plex, 1, "an unscrobble on Plex").await;
    let jf = wait_writes(&w.jellyfin, 1, "an unplayed on Jellyfin").await;
    assert_eq!(plex[0], write(&w.plex, "301", WriteChange::Unplayed));
    assert_eq!(
        jf[0],
        write(
            &w.jellyfin,
            "5c1e2d3f4a5b46c7d8e9f0a1b2c3d4e5",
            WriteChange::Unplayed
        )
    );
    assert!(!w.plex.item_state("301").played);
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.emby.writes().is_empty(), "{:?}", w.emby.writes());
    assert_eq!(w.plex.writes().len(), 1);
    assert_eq!(w.jellyfin.writes().len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_plex_legacy_agent_episode_scrobble_reaches_the_right_episode_elsewhere() {
    // Plex matched by the legacy TVDB agent: the episode guid names the show and the numbers.
    let legacy_show = FakeShow::new("400", "Breaking Bad")
        .plex_guid("com.plexapp.agents.thetvdb://81189?lang=en");
    let legacy_ep = |id: &str, e: u32| {
        FakeItem::episode(id, "400", 2, e)
            .plex_guid(&format!("com.plexapp.agents.thetvdb://81189/2/{e}?lang=en"))
    };
    let show = |id: &str| FakeShow::new(id, "Breaking Bad").ext("tvdb", "81189");
    let ep = |id: &str, show: &str, e: u32| {
        FakeItem::episode(id, show, 2, e).ext("tvdb", &format!("43825{e}"))
    };
    let w = World::start(
        FakeLibrary::new()
            .with_show(legacy_show)
            .with(legacy_ep("402", 2))
            .with(legacy_ep("403", 3))
            .with(legacy_ep("404", 4)),
        FakeLibrary::new()
            .with_show(show("a1b2"))
            .with(ep("jf-e2", "a1b2", 2))
            .with(ep("jf-e3", "a1b2", 3))
            .with(ep("jf-e4", "a1b2", 4)),
        FakeLibrary::new()
            .with_show(show("700"))
            .with(ep("702", "700", 2))
            .with(ep("703", "700", 3))
            .with(ep("704", "700", 4)),
        SYNC,
        Extra::default(),
    )
    .await;
    w.sync_all().await;
    w.clear_logs();

    let meta = PlexMeta {
        rating_key: "403".into(),
        kind: "episode",
        title: "Episode 2x3".into(),
        guid: Some("com.plexapp.agents.thetvdb://81189/2/3?lang=en".into()),
        show: Some(("Breaking Bad".into(), 2, 3)),
        duration_ms: 2_700_000,
        ..PlexMeta::default()
    };
    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &meta),
    )
    .await;
    let jf = wait_writes(&w.jellyfin, 1, "the episode marked played on Jellyfin").await;
    let em = wait_writes(&w.emby, 1, "the episode marked played on Emby").await;
    assert!(is_played(&jf[0], &w.jellyfin, "jf-e3"), "{jf:?}");
    assert!(is_played(&em[0], &w.emby, "703"), "{em:?}");
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert_eq!(w.jellyfin.writes().len(), 1);
    assert_eq!(w.emby.writes().len(), 1);
    assert!(w.plex.writes().is_empty());
    w.stop().await;
}

#[tokio::test]
async fn jellyfin_item_added_gets_the_plex_played_state_for_that_user_only() {
    use crate::fakes::{FakeKind, FakeServer};
    use crate::harness::{backend_toml, backend_toml_for, TestApp, TestDir};
    let plex = FakeServer::start(
        FakeKind::Plex,
        FakeLibrary::new().with(movie(PLEX_MOVIE).played_at(1_700_000_000_000)),
    )
    .await;
    let jellyfin = FakeServer::start(FakeKind::Jellyfin, FakeLibrary::new()).await;
    let bob_jf = "b0b00000000000000000000000000001";
    plex.add_user("2", "plex-bob-token");
    jellyfin.add_user(bob_jf, "jf-bob-token");
    let config = [
        backend_toml("alice", "plex", &plex, ""),
        backend_toml("alice", "jellyfin", &jellyfin, ""),
        backend_toml_for("bob", "plex", &plex, "2", "plex-bob-token", ""),
        backend_toml_for("bob", "jellyfin", &jellyfin, bob_jf, "jf-bob-token", ""),
    ]
    .concat();
    let app = TestApp::start_sync(TestDir::new(), "", SYNC, &config).await;
    for (u, b) in [
        ("alice", "jellyfin"),
        ("bob", "jellyfin"),
        ("alice", "plex"),
        ("bob", "plex"),
    ] {
        app.sync_and_wait(u, b).await;
    }
    app.wait_quiet(Duration::from_millis(200)).await;
    let pending = app.pair("alice", "jellyfin").await["pending"].as_u64();
    assert_eq!(
        pending,
        Some(1),
        "alice's played movie waits for Jellyfin to learn it"
    );
    assert!(jellyfin.writes().is_empty());

    // Jellyfin scans the movie in and says so, without a user.
    jellyfin.add_item(movie(JF_MOVIE));
    let (status, answer) = app
        .webhook(&jellyfin_item_added(
            jellyfin.server_id(),
            &mb_movie(JF_MOVIE),
        ))
        .await;
    assert_eq!(status, 202, "{answer}");
    let routed = answer["routed"].as_array().map(Vec::len);
    assert_eq!(
        routed,
        Some(2),
        "ItemAdded goes to every user of that server: {answer}"
    );
    let writes = wait_writes(&jellyfin, 1, "alice's Jellyfin marked played").await;
    assert!(is_played(&writes[0], &jellyfin, JF_MOVIE), "{writes:?}");
    app.wait_quiet(Duration::from_millis(300)).await;
    assert_eq!(
        jellyfin.writes().len(),
        1,
        "bob got a write: {:?}",
        jellyfin.writes()
    );
    assert!(!jellyfin.item_state_for(bob_jf, JF_MOVIE).played);
    assert!(plex.writes().is_empty());
    assert_eq!(
        app.pair("alice", "jellyfin").await["pending"].as_u64(),
        Some(0)
    );
    plex.assert_contract();
    jellyfin.assert_contract();
    app.stop().await;
}

#[tokio::test]
async fn the_same_webhook_five_times_writes_once_per_other_backend() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    w.clear_logs();
    let body = emby_webhook(
        "item.markplayed",
        w.emby.server_id(),
        w.emby.user_id(),
        &mb_movie(EMBY_MOVIE),
    );
    for _ in 0..5 {
        accepted(&w, &body).await;
    }
    wait_received(&w, "emby", 5).await;
    let plex = wait_writes(&w.plex, 1, "one scrobble on Plex").await;
    let jf = wait_writes(&w.jellyfin, 1, "one mark played on Jellyfin").await;
    w.app.wait_quiet(Duration::from_millis(500)).await;
    assert!(is_played(&plex[0], &w.plex, PLEX_MOVIE), "{plex:?}");
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    assert_eq!(w.plex.writes().len(), 1, "{:?}", w.plex.writes());
    assert_eq!(w.jellyfin.writes().len(), 1, "{:?}", w.jellyfin.writes());
    assert!(w.emby.writes().is_empty());
    w.stop().await;
}

#[tokio::test]
async fn resume_positions_propagate_in_each_servers_unit() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    w.clear_logs();

    // Plex pause at 10 min (ms) → Jellyfin and Emby get ticks, dated when the webhook came
    // (their "Continue Watching" is ordered by the last played date).
    let mut meta = plex_movie_meta();
    meta.view_offset_ms = Some(600_000);
    let sent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    accepted(
        &w,
        &plex_webhook("media.pause", w.plex.server_id(), 1, &meta),
    )
    .await;
    let jf = wait_writes(&w.jellyfin, 1, "a position on Jellyfin").await;
    let em = wait_writes(&w.emby, 1, "a position on Emby").await;
    assert_eq!(
        jf[0],
        write(&w.jellyfin, JF_MOVIE, WriteChange::Position { ms: 600_000 })
    );
    assert_eq!(
        em[0],
        write(&w.emby, EMBY_MOVIE, WriteChange::Position { ms: 600_000 })
    );
    let ticks = |fake: &crate::fakes::FakeServer| -> Vec<i64> {
        fake.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with("/UserData"))
            .map(|r| {
                let v: serde_json::Value = serde_json::from_str(&r.body).expect("json body");
                v["PlaybackPositionTicks"]
                    .as_i64()
                    .expect("PlaybackPositionTicks")
            })
            .collect()
    };
    assert_eq!(ticks(&w.jellyfin), vec![6_000_000_000]);
    assert_eq!(ticks(&w.emby), vec![6_000_000_000]);
    assert!(w.plex.writes().is_empty());
    for (fake, item) in [(&w.jellyfin, JF_MOVIE), (&w.emby, EMBY_MOVIE)] {
        // Whole seconds: the date is sent as RFC 3339 without fractions.
        let at = fake
            .item_state(item)
            .last_played_at
            .expect("a last played date");
        assert!(at + 1_000 >= sent && at <= sent + 60_000, "{at} vs {sent}");
    }

    // Jellyfin pause at 30 min (ticks) → Plex gets ms on its timeline, Emby ticks.
    w.app.wait_quiet(Duration::from_millis(200)).await;
    w.clear_logs();
    accepted(
        &w,
        &jellyfin_progress(
            w.jellyfin.server_id(),
            w.jellyfin.user_id(),
            &mb_movie(JF_MOVIE),
            1_800_000,
            true,
        ),
    )
    .await;
    let plex = wait_writes(&w.plex, 1, "a position on Plex").await;
    assert_eq!(
        plex[0],
        write(&w.plex, PLEX_MOVIE, WriteChange::Position { ms: 1_800_000 })
    );
    let timeline: Vec<_> = w
        .plex
        .requests()
        .into_iter()
        .filter(|r| r.path == "/:/timeline")
        .collect();
    assert_eq!(timeline.len(), 1);
    assert_eq!(timeline[0].param("time"), Some("1800000"));
    assert_eq!(timeline[0].param("duration"), Some("8880000"));
    wait_writes(&w.emby, 1, "a position on Emby").await;
    assert_eq!(ticks(&w.emby), vec![18_000_000_000]);
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.jellyfin.writes().is_empty(), "{:?}", w.jellyfin.writes());
    w.stop().await;
}

/// The push requests (mark played) a fake received for an item, in order.
fn played_attempts(
    fake: &crate::fakes::FakeServer,
    path_part: &str,
) -> Vec<crate::fakes::RecordedRequest> {
    fake.requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains(path_part))
        .collect()
}

#[tokio::test]
async fn server_errors_are_retried_until_delivered() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    w.clear_logs();
    w.jellyfin.inject(Fault::status(500).times(2).writes_only());

    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &plex_movie_meta()),
    )
    .await;
    wait_writes(&w.emby, 1, "Emby written at once").await;
    // Two failures with backoff (1 s, then 2 s, ±10 %), then the write.
    let jf = eventually(
        Duration::from_secs(15),
        "the Jellyfin push to get through",
        || async {
            let w = w.jellyfin.writes();
            (!w.is_empty()).then_some(w)
        },
    )
    .await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    let attempts = played_attempts(&w.jellyfin, "/UserPlayedItems/");
    let statuses: Vec<u16> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 500, 200]);
    let gap1 = attempts[1].at - attempts[0].at;
    let gap2 = attempts[2].at - attempts[1].at;
    assert!(
        gap1 >= Duration::from_millis(850),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(1700),
        "second retry after {gap2:?} (backoff doubles)"
    );
    w.app.wait_quiet(Duration::from_millis(200)).await;
    let s = w.app.pair("alice", "jellyfin").await;
    assert_eq!(s["outbox"]["dead_letters"], 0, "{s:#}");
    assert_eq!(s["counters"]["pushed"], 1, "{s:#}");
    assert_eq!(w.jellyfin.writes().len(), 1);
    w.stop().await;
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    w.clear_logs();
    // Retry-After 3 s is well above the first backoff step (1 s).
    w.emby.inject(Fault::rate_limited("3").writes_only());

    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &plex_movie_meta()),
    )
    .await;
    wait_writes(&w.jellyfin, 1, "Jellyfin written at once").await;
    let em = eventually(
        Duration::from_secs(15),
        "the Emby push after Retry-After",
        || async {
            let w = w.emby.writes();
            (!w.is_empty()).then_some(w)
        },
    )
    .await;
    assert!(is_played(&em[0], &w.emby, EMBY_MOVIE), "{em:?}");
    let attempts = played_attempts(&w.emby, "/PlayedItems/");
    let statuses: Vec<u16> = attempts.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 200]);
    let gap = attempts[1].at - attempts[0].at;
    assert!(
        gap >= Duration::from_millis(2900),
        "retried after {gap:?}, Retry-After said 3 s"
    );
    w.stop().await;
}

/// A write answered `200` with a web page: a small page from a server that did the write
/// (Plex's documents type a write's `200` as `text/html`) is confirmed by reading the item
/// back; a proxy's sign-in page in front of a server that did nothing is retried.
#[tokio::test]
async fn a_write_answered_with_a_web_page_is_read_back_or_retried() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    w.clear_logs();
    w.plex.inject(
        Fault::dressed(
            "text/html",
            "<html><head><title>OK</title></head><body><h1>200 OK</h1></body></html>",
        )
        .always()
        .writes_only(),
    );
    let sign_in = "<!-- proxy -->\n<!DOCTYPE html><html><head><title>Sign in</title></head>\
                   <body><form method=post></form></body></html>";
    w.jellyfin
        .inject(Fault::body(200, "text/html; charset=utf-8", sign_in).writes_only());

    emby_marks_the_movie_played(&w).await;
    let plex = wait_writes(&w.plex, 1, "the Plex scrobble").await;
    assert!(is_played(&plex[0], &w.plex, PLEX_MOVIE), "{plex:?}");
    let jf = wait_writes(&w.jellyfin, 1, "the Jellyfin push after the sign-in page").await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    let attempts = played_attempts(&w.jellyfin, "/UserPlayedItems/");
    assert_eq!(attempts.len(), 2, "one page, one retry: {attempts:?}");
    // Between them, the item read back (unplayed: the page was in front of the server).
    let reads = w
        .jellyfin
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET"
                && r.path.ends_with(JF_MOVIE)
                && r.at > attempts[0].at
                && r.at < attempts[1].at
        })
        .count();
    assert_eq!(reads, 1, "the item read back after the page");
    w.app.wait_quiet(Duration::from_millis(200)).await;
    let s = w.app.pair("alice", "plex").await;
    assert_eq!(s["counters"]["pushed"], 1, "{s:#}");
    assert_eq!(s["outbox"]["dead_letters"], 0, "{s:#}");
    assert_eq!(s["outbox"]["pending"], 0, "{s:#}");
    let scrobbles = w
        .plex
        .requests()
        .into_iter()
        .filter(|r| r.path == "/:/scrobble")
        .count();
    assert_eq!(scrobbles, 1, "confirmed by the read-back, not retried");
    let reads = w
        .plex
        .requests()
        .into_iter()
        .filter(|r| r.path == format!("/library/metadata/{PLEX_MOVIE}"))
        .count();
    assert!(reads >= 1, "the Plex item read back");
    let s = w.app.pair("alice", "jellyfin").await;
    assert_eq!(s["counters"]["pushed"], 1, "{s:#}");
    assert_eq!(s["outbox"]["dead_letters"], 0, "{s:#}");
    w.stop().await;
}

#[tokio::test]
async fn a_permanent_4xx_becomes_a_dead_letter_and_the_api_retries_it() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    w.clear_logs();
    w.emby.inject(Fault::status(400).always().writes_only());

    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &plex_movie_meta()),
    )
    .await;
    wait_writes(&w.jellyfin, 1, "Jellyfin written").await;
    let s = eventually(DEADLINE, "a dead letter on Emby", || async {
        let s = w.app.pair("alice", "emby").await;
        (s["outbox"]["dead_letters"] == 1).then_some(s)
    })
    .await;
    // No retries for a 400: one attempt.
    assert_eq!(played_attempts(&w.emby, "/PlayedItems/").len(), 1);
    let dead = &s["outbox"]["dead"][0];
    assert_eq!(dead["item_id"], EMBY_MOVIE, "{s:#}");
    assert_eq!(dead["attempts"], 1, "{s:#}");
    assert!(
        dead["error"].as_str().is_some_and(|e| e.contains("400")),
        "{s:#}"
    );
    assert_eq!(s["counters"]["push_failed"], 1, "{s:#}");
    let global = w.app.get_json("/status").await;
    assert_eq!(global["outbox"]["dead_letters"], 1, "{global:#}");
    assert!(w.emby.writes().is_empty());

    w.emby.clear_faults();
    let (status, body) = w
        .app
        .post_api("/status/users/alice/emby/outbox/retry")
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["retried"], 1, "{body}");
    let em = wait_writes(&w.emby, 1, "the retried push delivered").await;
    assert!(is_played(&em[0], &w.emby, EMBY_MOVIE), "{em:?}");
    w.app.wait_quiet(Duration::from_millis(200)).await;
    let s = w.app.pair("alice", "emby").await;
    assert_eq!(s["outbox"]["dead_letters"], 0, "{s:#}");
    assert_eq!(s["outbox"]["pending"], 0, "{s:#}");
    assert_eq!(w.emby.writes().len(), 1);
    w.stop().await;
}

/// `import_unplayed = false` in `config.toml`: Jellyfin's plays go out, its unmarks do not,
/// and it gets the played state back.
#[tokio::test]
async fn import_unplayed_false_sends_plays_but_not_unmarks() {
    let (p, j, e) = movie_libraries();
    let extra = Extra {
        plex: "",
        jellyfin: "import_unplayed = false",
        emby: "",
    };
    let w = World::start(p, j, e, SYNC, extra).await;
    w.sync_all().await;
    w.clear_logs();
    for played in [true, false] {
        let body = jellyfin_user_data_saved(
            w.jellyfin.server_id(),
            w.jellyfin.user_id(),
            &mb_movie(JF_MOVIE),
            "TogglePlayed",
            played,
            0,
        );
        accepted(&w, &body).await;
        wait_received(&w, "jellyfin", if played { 1 } else { 2 }).await;
        w.app.wait_quiet(Duration::from_millis(300)).await;
    }
    let plex = wait_writes(&w.plex, 1, "the play on Plex").await;
    assert!(is_played(&plex[0], &w.plex, PLEX_MOVIE), "{plex:?}");
    assert_eq!((w.plex.writes().len(), w.emby.writes().len()), (1, 1));
    assert!(w.emby.item_state(EMBY_MOVIE).played);
    // Jellyfin gets its played state back.
    let jf = wait_writes(&w.jellyfin, 1, "the play restored on Jellyfin").await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    let jf = w.app.pair("alice", "jellyfin").await;
    assert_eq!(jf["last_event"]["outcome"], "ignored", "{jf:#}");
    assert!(
        jf["last_event"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("import_unplayed = false")),
        "{jf:#}"
    );
    w.stop().await;
}

#[tokio::test]
async fn export_false_is_never_written_and_import_false_changes_nothing_elsewhere() {
    let (p, j, e) = movie_libraries();
    let w = World::start(
        p,
        j,
        e,
        SYNC,
        Extra {
            plex: "",
            jellyfin: "import = false",
            emby: "export = false",
        },
    )
    .await;
    w.sync_all().await;
    w.clear_logs();

    // Plex → Jellyfin only: Emby has export = false.
    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &plex_movie_meta()),
    )
    .await;
    let jf = wait_writes(&w.jellyfin, 1, "Jellyfin written").await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    w.app.wait_quiet(Duration::from_millis(500)).await;
    assert!(
        w.emby.writes().is_empty(),
        "export = false written to: {:?}",
        w.emby.writes()
    );
    assert!(!w.emby.item_state(EMBY_MOVIE).played);

    // Jellyfin (import = false) unmarks: nothing changes anywhere.
    w.clear_logs();
    let received = w.app.pair("alice", "jellyfin").await["counters"]["received"]
        .as_u64()
        .unwrap();
    accepted(
        &w,
        &jellyfin_user_data_saved(
            w.jellyfin.server_id(),
            w.jellyfin.user_id(),
            &mb_movie(JF_MOVIE),
            "TogglePlayed",
            false,
            0,
        ),
    )
    .await;
    wait_received(&w, "jellyfin", received + 1).await;
    w.app.wait_quiet(Duration::from_millis(500)).await;
    for f in w.fakes() {
        assert!(
            f.writes().is_empty(),
            "{:?} written: {:?}",
            f.kind(),
            f.writes()
        );
    }
    let jf = w.app.pair("alice", "jellyfin").await;
    assert_eq!(jf["last_event"]["outcome"], "ignored", "{jf:#}");
    let items = w
        .app
        .get_json(&format!(
            "/status/users/alice/items?external_id=imdb:{IMDB}"
        ))
        .await;
    let plex_state = items["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "plex")
        .map(|b| b["state"]["item"]["played"].clone());
    assert_eq!(plex_state, Some(serde_json::json!(true)), "{items:#}");
    w.stop().await;
}

#[tokio::test]
async fn a_queued_push_survives_a_restart_and_is_delivered_after_it() {
    let (p, j, e) = movie_libraries();
    let w = World::start(
        p,
        j,
        e,
        "interval = \"0\"\npush_attempts = 10",
        Extra::default(),
    )
    .await;
    w.sync_all().await;
    w.clear_logs();
    w.emby.inject(Fault::status(503).always().writes_only());

    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &plex_movie_meta()),
    )
    .await;
    wait_writes(&w.jellyfin, 1, "Jellyfin written").await;
    eventually(
        DEADLINE,
        "a failed attempt on Emby, still queued",
        || async {
            let s = w.app.pair("alice", "emby").await;
            let tried = !played_attempts(&w.emby, "/PlayedItems/").is_empty();
            (tried && s["outbox"]["pending"] == 1 && s["outbox"]["dead_letters"] == 0).then_some(())
        },
    )
    .await;

    let w = w.restart().await;
    let s = w.app.pair("alice", "emby").await;
    assert_eq!(s["outbox"]["pending"], 1, "the queued push was lost: {s:#}");
    w.emby.clear_faults();
    let em = eventually(
        Duration::from_secs(15),
        "the push delivered after the restart",
        || async {
            let w = w.emby.writes();
            (!w.is_empty()).then_some(w)
        },
    )
    .await;
    assert!(is_played(&em[0], &w.emby, EMBY_MOVIE), "{em:?}");
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert_eq!(w.emby.writes().len(), 1);
    assert_eq!(w.jellyfin.writes().len(), 1, "replayed to Jellyfin again");
    assert!(w.plex.writes().is_empty());
    w.stop().await;
}

#[tokio::test]
async fn a_plex_scrobble_without_guids_is_resolved_by_one_lookup() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    for b in ["jellyfin", "emby"] {
        w.app.sync_and_wait("alice", b).await;
    }
    w.clear_logs();
    // Plex has not synced yet, and the payload names the movie only by its plex:// guid.
    let mut meta = plex_movie_meta();
    meta.guids.clear();
    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &meta),
    )
    .await;
    let jf = wait_writes(&w.jellyfin, 1, "Jellyfin written").await;
    let em = wait_writes(&w.emby, 1, "Emby written").await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    assert!(is_played(&em[0], &w.emby, EMBY_MOVIE), "{em:?}");
    let lookups: Vec<_> = w
        .plex
        .requests()
        .into_iter()
        .filter(|r| r.path == format!("/library/metadata/{PLEX_MOVIE}"))
        .collect();
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.plex.writes().is_empty());
    w.stop().await;
}

#[tokio::test]
async fn a_change_before_any_sync_waits_as_pending_and_the_first_syncs_apply_it() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    // Nothing synced yet: Plex and Jellyfin know no item. Marked played in Emby's UI.
    w.emby.set_played_directly(EMBY_MOVIE, true);
    emby_marks_the_movie_played(&w).await;
    eventually(
        DEADLINE,
        "the change pending on Plex and Jellyfin",
        || async {
            let p = w.app.pair("alice", "plex").await["pending"].as_u64();
            let j = w.app.pair("alice", "jellyfin").await["pending"].as_u64();
            (p == Some(1) && j == Some(1)).then_some(())
        },
    )
    .await;
    let items = w
        .app
        .get_json(&format!(
            "/status/users/alice/items?external_id=imdb:{IMDB}"
        ))
        .await;
    let plex_view = items["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "plex")
        .cloned()
        .unwrap();
    assert_eq!(plex_view["state"]["pending"]["played"], true, "{items:#}");
    assert!(w.fakes().iter().all(|f| f.writes().is_empty()));

    w.sync_all().await;
    let plex = wait_writes(&w.plex, 1, "Plex scrobbled by its first sync").await;
    let jf = wait_writes(&w.jellyfin, 1, "Jellyfin marked by its first sync").await;
    assert!(is_played(&plex[0], &w.plex, PLEX_MOVIE), "{plex:?}");
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.emby.writes().is_empty());
    for b in ["plex", "jellyfin"] {
        assert_eq!(w.app.pair("alice", b).await["pending"], 0);
    }
    w.stop().await;
}

#[tokio::test]
async fn a_tautulli_watched_for_the_plex_server_reaches_jellyfin_and_emby() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    w.clear_logs();
    let body = crate::harness::tautulli_watched(
        w.plex.server_id(),
        w.plex.user_id(),
        PLEX_MOVIE,
        &[("imdb", IMDB), ("tmdb", "27205")],
    );
    let (status, answer) = w.app.webhook(&body).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["routed"][0]["backend"], "plex", "{answer}");
    let jf = wait_writes(&w.jellyfin, 1, "Jellyfin written").await;
    let em = wait_writes(&w.emby, 1, "Emby written").await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    assert!(is_played(&em[0], &w.emby, EMBY_MOVIE), "{em:?}");
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.plex.writes().is_empty());
    w.stop().await;
}

/// `ignore_libraries` on a Jellyfin backend: the items of that library are left out of its
/// sync, its webhooks about them change nothing anywhere, and changes from the other
/// backends are neither written into it nor kept waiting. Jellyfin webhooks never name the
/// library: the service learns it from the server (after a restart, from the item's
/// ancestors), and drops the webhook when the server cannot say. The library is configured
/// with dashes and in capitals; Jellyfin writes its ids without.
#[tokio::test]
async fn jellyfin_ignore_libraries_keeps_that_library_out_both_ways() {
    const KIDS_IMDB: &str = "tt0110357";
    const KIDS_LIB: &str = "b1c2d3e4f5a60718293a4b5c6d7e8f90";
    const JF_KIDS: &str = "b0a1c2d3e4f5061728394a5b6c7d8e9f";
    let kids = |id: &str| {
        FakeItem::movie(id, "The Lion King")
            .year(1994)
            .ext("imdb", KIDS_IMDB)
    };
    let w = World::start(
        FakeLibrary::new()
            .with(movie(PLEX_MOVIE))
            .with(kids("48300")),
        FakeLibrary::new()
            .with(movie(JF_MOVIE))
            .with(kids(JF_KIDS).library(KIDS_LIB)),
        FakeLibrary::new()
            .with(movie(EMBY_MOVIE))
            .with(kids("88300")),
        SYNC,
        Extra {
            jellyfin: "ignore_libraries = [\"B1C2D3E4-F5A6-0718-293A-4B5C6D7E8F90\"]",
            ..Extra::default()
        },
    )
    .await;
    w.sync_all().await;
    let jf = w.app.pair("alice", "jellyfin").await;
    assert_eq!(jf["items"], 1, "the ignored library was synced: {jf:#}");
    assert_eq!(
        (&jf["sync"]["seen"], &jf["sync"]["ignored"]),
        (&serde_json::json!(2), &serde_json::json!(1)),
        "{jf:#}"
    );
    // A new process: what the last listing found is gone, the server is asked.
    let w = w.restart().await;
    w.clear_logs();

    // Jellyfin marks the ignored movie played: nothing is written anywhere.
    let item = MbItem {
        id: JF_KIDS.into(),
        kind: "Movie",
        name: "The Lion King".into(),
        ids: vec![("Imdb", KIDS_IMDB.into())],
        series: None,
        runtime_ms: 5_280_000,
    };
    let played = jellyfin_user_data_saved(
        w.jellyfin.server_id(),
        w.jellyfin.user_id(),
        &item,
        "TogglePlayed",
        true,
        0,
    );
    let received = |jf: &serde_json::Value| jf["counters"]["received"].as_u64().unwrap();
    let before = received(&w.app.pair("alice", "jellyfin").await);
    accepted(&w, &played).await;
    wait_received(&w, "jellyfin", before + 1).await;
    let jf = w.app.pair("alice", "jellyfin").await;
    assert_eq!(jf["last_event"]["outcome"], "ignored", "{jf:#}");
    assert_eq!(
        jf["last_event"]["reason"], "library ignored by ignore_libraries",
        "{jf:#}"
    );
    let ancestors = format!("/Items/{JF_KIDS}/Ancestors");
    assert!(
        w.jellyfin.requests().iter().any(|r| r.path == ancestors),
        "the library was not read from the server"
    );

    // The server fails the lookup: the webhook is dropped, not applied on a guess.
    w.jellyfin.inject(Fault::status(500));
    accepted(&w, &played).await;
    wait_received(&w, "jellyfin", before + 2).await;
    let jf = w.app.pair("alice", "jellyfin").await;
    assert_eq!(jf["last_event"]["outcome"], "dropped", "{jf:#}");

    // Plex scrobbles it: Emby gets it, Jellyfin does not; the change waits for Jellyfin
    // only until its next sync shows the film is in the ignored library.
    let meta = PlexMeta {
        rating_key: "48300".into(),
        kind: "movie",
        title: "The Lion King".into(),
        guids: vec![("imdb", KIDS_IMDB.into())],
        duration_ms: 5_280_000,
        ..PlexMeta::default()
    };
    accepted(
        &w,
        &plex_webhook("media.scrobble", w.plex.server_id(), 1, &meta),
    )
    .await;
    let emby = wait_writes(&w.emby, 1, "Emby written").await;
    assert!(is_played(&emby[0], &w.emby, "88300"), "{emby:?}");
    let jf = w.app.sync_and_wait("alice", "jellyfin").await;
    assert_eq!(jf["pending"], 0, "{jf:#}");
    w.app.wait_quiet(Duration::from_millis(500)).await;
    assert!(
        w.jellyfin.writes().is_empty(),
        "the ignored library was written: {:?}",
        w.jellyfin.writes()
    );
    assert!(w.plex.writes().is_empty(), "{:?}", w.plex.writes());
    // Later changes are dropped at once: Emby unmarks it, Plex follows, Jellyfin keeps
    // nothing for it.
    let emby_item = MbItem {
        id: "88300".into(),
        ..item.clone()
    };
    accepted(
        &w,
        &emby_webhook(
            "item.markunplayed",
            w.emby.server_id(),
            w.emby.user_id(),
            &emby_item,
        ),
    )
    .await;
    wait_writes(&w.plex, 1, "Plex unmarked").await;
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert_eq!(w.app.pair("alice", "jellyfin").await["pending"], 0);
    assert!(w.jellyfin.writes().is_empty(), "{:?}", w.jellyfin.writes());
    w.stop().await;
}
