//! Issue 5 end to end: webhooks into the real service, pushes out to fake Plex, Jellyfin and
//! Emby servers through the real clients; echoes stop, duplicates collapse, failures retry.

use crate::e2e_world::{is_played, wait_writes, write, Extra, World, DEADLINE};
use crate::fakes::{Fault, FakeItem, FakeLibrary, FakeShow, WriteChange};
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
    answer["request_id"].as_str().unwrap_or_default().to_string()
}

/// Wait until the actor `backend` has received `n` webhook events in total.
async fn wait_received(w: &World, backend: &str, n: u64) {
    eventually(DEADLINE, &format!("{backend} to receive {n} events"), || async {
        (w.app.pair("alice", backend).await["counters"]["received"].as_u64() >= Some(n))
            .then_some(())
    })
    .await
}

#[tokio::test]
async fn plex_scrobble_marks_played_once_on_jellyfin_and_emby_and_the_echo_stops() {
    let (p, j, e) = movie_libraries();
    let w = World::start(p, j, e, SYNC, Extra::default()).await;
    w.sync_all().await;
    assert!(w.fakes().iter().all(|f| f.writes().is_empty()), "syncing equal libraries wrote");
    w.clear_logs();

    accepted(&w, &plex_webhook("media.scrobble", w.plex.server_id(), 1, &plex_movie_meta())).await;
    let jf = wait_writes(&w.jellyfin, 1, "one mark played on Jellyfin").await;
    let em = wait_writes(&w.emby, 1, "one mark played on Emby").await;
    assert!(is_played(&jf[0], &w.jellyfin, JF_MOVIE), "{jf:?}");
    assert!(is_played(&em[0], &w.emby, EMBY_MOVIE), "{em:?}");
    assert!(w.jellyfin.item_state(JF_MOVIE).played);
    assert!(w.emby.item_state(EMBY_MOVIE).played);
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.plex.writes().is_empty(), "the origin was written to: {:?}", w.plex.writes());

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
    accepted(
        &w,
        &emby_webhook("item.markplayed", w.emby.server_id(), w.emby.user_id(), &mb_movie(EMBY_MOVIE)),
    )
    .await;
    wait_received(&w, "jellyfin", received_jf + 1).await;
    wait_received(&w, "emby", received_em + 1).await;
    w.app.wait_quiet(Duration::from_millis(500)).await;
    assert_eq!(w.jellyfin.writes().len(), 1, "{:?}", w.jellyfin.writes());
    assert_eq!(w.emby.writes().len(), 1, "{:?}", w.emby.writes());
    assert!(w.plex.writes().is_empty(), "echo reached Plex: {:?}", w.plex.writes());
    let jf = w.app.pair("alice", "jellyfin").await;
    assert_eq!(jf["last_event"]["outcome"], "unchanged", "{jf:#}");
    w.stop().await;
}
