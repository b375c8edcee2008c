//! Issue 6 end to end: scheduled sync through the real service, its API trigger and status,
//! against fake Plex, Jellyfin and Emby servers (no webhooks involved unless said).

use crate::e2e_world::{is_played, wait_writes, write, Extra, World, BACKENDS, DEADLINE};
use crate::fakes::{FakeItem, FakeKind, FakeLibrary, FakeServer, Fault, WriteChange};
use crate::harness::{backend_toml, eventually, TestApp, TestDir};
use std::time::Duration;

/// Timer off: runs are triggered through the API.
const NO_TIMER: &str = "interval = \"0\"\npush_attempts = 4";

const PLAYED_AT: i64 = 1_700_000_000_000;

/// Two movies with the same ids on every server, under each server's own item ids.
fn two_movies(prefix: &str, played: [bool; 2]) -> FakeLibrary {
    let m = |n: usize, imdb: &str| {
        let item =
            FakeItem::movie(&format!("{prefix}{n}"), &format!("Movie {n}")).ext("imdb", imdb);
        if played[n - 1] {
            item.played_at(PLAYED_AT + n as i64)
        } else {
            item
        }
    };
    FakeLibrary::new()
        .with(m(1, "tt0000001"))
        .with(m(2, "tt0000002"))
}

#[tokio::test]
async fn the_first_sync_builds_the_index_and_pushes_what_only_plex_has() {
    let w = World::start(
        two_movies("p", [true, false]),
        two_movies("j", [false, false]),
        two_movies("e", [false, false]),
        NO_TIMER,
        Extra::default(),
    )
    .await;
    // Plex first: Jellyfin and Emby do not know the movie yet, so it waits as pending and is
    // pushed when their own first sync learns the item.
    let plex = w.app.sync_and_wait("alice", "plex").await;
    assert_eq!(plex["items"], 2, "{plex:#}");
    assert_eq!(plex["sync"]["seen"], 2, "{plex:#}");
    assert_eq!(plex["sync"]["changed"], 1, "{plex:#}");
    eventually(DEADLINE, "pending states on Jellyfin and Emby", || async {
        let j = w.app.pair("alice", "jellyfin").await["pending"].as_u64();
        let e = w.app.pair("alice", "emby").await["pending"].as_u64();
        (j == Some(1) && e == Some(1)).then_some(())
    })
    .await;
    for b in ["jellyfin", "emby"] {
        let s = w.app.sync_and_wait("alice", b).await;
        assert_eq!(s["items"], 2, "{s:#}");
    }
    let jf = wait_writes(&w.jellyfin, 1, "movie 1 pushed to Jellyfin").await;
    let em = wait_writes(&w.emby, 1, "movie 1 pushed to Emby").await;
    assert!(is_played(&jf[0], &w.jellyfin, "j1"), "{jf:?}");
    assert!(is_played(&em[0], &w.emby, "e1"), "{em:?}");
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.plex.writes().is_empty(), "{:?}", w.plex.writes());
    assert_eq!(w.jellyfin.writes().len(), 1);
    assert_eq!(w.emby.writes().len(), 1);
    assert!(!w.jellyfin.item_state("j2").played && !w.emby.item_state("e2").played);
    let items = w
        .app
        .get_json("/status/users/alice/items?external_id=imdb:tt0000001")
        .await;
    for b in items["backends"].as_array().unwrap() {
        assert_eq!(b["state"]["item"]["played"], true, "{items:#}");
    }
    w.stop().await;
}

#[tokio::test]
async fn a_new_unplayed_backend_unmarks_nothing_and_an_unmark_between_syncs_propagates() {
    let plex = FakeServer::start(FakeKind::Plex, two_movies("p", [true, true])).await;
    let emby = FakeServer::start(FakeKind::Emby, two_movies("e", [true, true])).await;
    let jellyfin = FakeServer::start(FakeKind::Jellyfin, two_movies("j", [false, false])).await;
    let two = [
        backend_toml("alice", "plex", &plex, ""),
        backend_toml("alice", "emby", &emby, ""),
    ]
    .concat();
    let app = TestApp::start_sync(TestDir::new(), "", NO_TIMER, &two).await;
    app.sync_and_wait("alice", "plex").await;
    app.sync_and_wait("alice", "emby").await;
    app.wait_quiet(Duration::from_millis(200)).await;
    assert!(plex.writes().is_empty() && emby.writes().is_empty());

    // Jellyfin is added to the config, with everything unplayed.
    let dir = app.stop_keep_dir().await;
    let three = format!("{two}{}", backend_toml("alice", "jellyfin", &jellyfin, ""));
    let app = TestApp::start_sync(dir, "", NO_TIMER, &three).await;
    let s = app.sync_and_wait("alice", "jellyfin").await;
    assert_eq!(
        s["sync"]["changed"], 0,
        "first sight of unplayed items is no change: {s:#}"
    );
    // It gets the played states of its siblings, and unmarks nothing on them.
    let jf = wait_writes(&jellyfin, 2, "both movies pushed to the new Jellyfin").await;
    let mut ids: Vec<_> = jf
        .iter()
        .filter(|w| is_played(w, &jellyfin, &w.item_id))
        .map(|w| w.item_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, vec!["j1", "j2"], "{jf:?}");
    app.wait_quiet(Duration::from_millis(300)).await;
    assert!(plex.writes().is_empty(), "{:?}", plex.writes());
    assert!(emby.writes().is_empty(), "{:?}", emby.writes());
    assert!(plex.item_state("p1").played && emby.item_state("e2").played);

    // Unmarked in Plex's UI (no webhook): the next Plex sync unmarks it on the others.
    for f in [&plex, &emby, &jellyfin] {
        f.clear_log();
    }
    plex.set_played_directly("p2", false);
    let s = app.sync_and_wait("alice", "plex").await;
    assert_eq!(s["sync"]["changed"], 1, "{s:#}");
    let em = wait_writes(&emby, 1, "movie 2 unmarked on Emby").await;
    let jf = wait_writes(&jellyfin, 1, "movie 2 unmarked on Jellyfin").await;
    assert_eq!(em[0], write(&emby, "e2", WriteChange::Unplayed));
    assert_eq!(jf[0], write(&jellyfin, "j2", WriteChange::Unplayed));
    app.wait_quiet(Duration::from_millis(300)).await;
    assert!(plex.writes().is_empty());
    assert!(emby.item_state("e1").played && jellyfin.item_state("j1").played);
    for f in [&plex, &emby, &jellyfin] {
        f.assert_contract();
    }
    app.stop().await;
}

#[tokio::test]
async fn a_change_made_on_the_server_without_webhook_is_found_by_the_next_sync() {
    let w = World::start(
        two_movies("p", [false, false]),
        two_movies("j", [false, false]),
        two_movies("e", [false, false]),
        NO_TIMER,
        Extra::default(),
    )
    .await;
    w.sync_all().await;
    w.app.wait_quiet(Duration::from_millis(200)).await;
    assert!(w.fakes().iter().all(|f| f.writes().is_empty()));

    // Played in Jellyfin's UI and a resume position set in Emby's, with no webhook.
    w.jellyfin.set_played_directly("j1", true);
    w.emby.set_position_directly("e2", 900_000);
    let s = w.app.sync_and_wait("alice", "jellyfin").await;
    assert_eq!(s["sync"]["changed"], 1, "{s:#}");
    let plex = wait_writes(&w.plex, 1, "movie 1 scrobbled on Plex").await;
    assert!(is_played(&plex[0], &w.plex, "p1"), "{plex:?}");
    let em = wait_writes(&w.emby, 1, "movie 1 marked played on Emby").await;
    assert!(is_played(&em[0], &w.emby, "e1"), "{em:?}");

    w.app.wait_quiet(Duration::from_millis(200)).await;
    w.clear_logs();
    let s = w.app.sync_and_wait("alice", "emby").await;
    assert_eq!(s["sync"]["changed"], 1, "{s:#}");
    let plex = wait_writes(&w.plex, 1, "movie 2 position on Plex").await;
    let jf = wait_writes(&w.jellyfin, 1, "movie 2 position on Jellyfin").await;
    assert_eq!(
        plex[0],
        write(&w.plex, "p2", WriteChange::Position { ms: 900_000 })
    );
    assert_eq!(
        jf[0],
        write(&w.jellyfin, "j2", WriteChange::Position { ms: 900_000 })
    );
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.emby.writes().is_empty());
    // A second run with nothing changed changes nothing.
    w.clear_logs();
    for b in BACKENDS {
        let s = w.app.sync_and_wait("alice", b).await;
        assert_eq!(s["sync"]["changed"], 0, "{b}: {s:#}");
    }
    w.app.wait_quiet(Duration::from_millis(300)).await;
    for f in w.fakes() {
        assert!(f.writes().is_empty(), "{:?}: {:?}", f.kind(), f.writes());
    }
    w.stop().await;
}

#[tokio::test]
async fn the_api_trigger_answers_202_then_409_and_status_shows_progress_and_outcome() {
    let jf = FakeServer::start(FakeKind::Jellyfin, FakeLibrary::generated(400)).await;
    let sync = "interval = \"6h\"\npage_size = 50\nmax_requests_per_second = 100";
    let app = TestApp::start_sync(
        TestDir::new(),
        "",
        sync,
        &backend_toml("alice", "jellyfin", &jf, ""),
    )
    .await;
    let before = app.pair("alice", "jellyfin").await;
    assert_eq!(before["sync"]["enabled"], true, "{before:#}");
    assert_eq!(before["sync"]["running"], false, "{before:#}");
    assert!(before["sync"]["last_result"].is_null(), "{before:#}");

    // Every Jellyfin request takes 250 ms, so the run lasts a few seconds.
    jf.inject(Fault::delay(Duration::from_millis(250)).always());
    let (status, body) = app.post_api("/status/users/alice/jellyfin/sync").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = app.post_api("/status/users/alice/jellyfin/sync").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already running"),
        "{body}"
    );
    let running = eventually(DEADLINE, "progress of the running sync", || async {
        let s = app.pair("alice", "jellyfin").await;
        let seen = s["sync"]["seen"].as_u64().unwrap_or(0);
        (s["sync"]["running"] == true && seen > 0 && seen < 400).then_some(s)
    })
    .await;
    assert_eq!(running["sync"]["total"], 400, "{running:#}");
    assert_eq!(running["state"], "syncing", "{running:#}");
    assert!(
        running["sync"]["last_started"].as_i64().is_some(),
        "{running:#}"
    );
    let (status, _) = app.post_api("/status/users/alice/jellyfin/sync").await;
    assert_eq!(status, 409);

    let done = app.wait_sync_runs("alice", "jellyfin", 1).await;
    jf.clear_faults();
    let sync = &done["sync"];
    assert_eq!(sync["last_result"], "ok", "{done:#}");
    assert_eq!(sync["seen"], 400, "{done:#}");
    assert_eq!(sync["total"], 400, "{done:#}");
    // generated(400): every third movie (i % 6 == 0) is played: 67 first-seen played items.
    assert_eq!(sync["changed"], 67, "{done:#}");
    assert_eq!(done["items"], 400, "{done:#}");
    let finished = sync["last_finished"].as_i64().unwrap();
    assert!(finished >= sync["last_started"].as_i64().unwrap());
    let next = sync["next_at"].as_i64().expect("next_at after a run");
    let six_hours = 6 * 3600 * 1000;
    assert!(
        next >= finished + six_hours * 9 / 10 && next <= finished + six_hours * 11 / 10,
        "next run {next} is not 6 h ± 10 % after {finished}"
    );
    let (status, body) = app.post_api("/status/users/alice/jellyfin/sync").await;
    assert_eq!(status, 202, "a finished run can be started again: {body}");
    app.wait_sync_runs("alice", "jellyfin", 2).await;
    let (status, _) = app.post_api("/status/users/alice/nope/sync").await;
    assert_eq!(status, 404);
    jf.assert_contract();
    app.stop().await;
}

#[tokio::test]
async fn the_next_run_time_survives_a_restart() {
    let plex = FakeServer::start(FakeKind::Plex, two_movies("p", [true, false])).await;
    let config = backend_toml("alice", "plex", &plex, "");
    let sync = "interval = \"2h\"";
    let app = TestApp::start_sync(TestDir::new(), "", sync, &config).await;
    let s = app.sync_and_wait("alice", "plex").await;
    let next = s["sync"]["next_at"].as_i64().expect("next_at");
    let dir = app.stop_keep_dir().await;
    plex.clear_log();

    let app = TestApp::start_sync(dir, "", sync, &config).await;
    let s = app.pair("alice", "plex").await;
    assert_eq!(s["sync"]["next_at"].as_i64(), Some(next), "{s:#}");
    assert_eq!(s["sync"]["runs_ok"], 1, "{s:#}");
    assert_eq!(s["sync"]["last_result"], "ok", "{s:#}");
    assert_eq!(s["items"], 2, "{s:#}");
    // Not due: no run at start (a never-synced pair would run ~30 s after start, an overdue
    // one too; this one waits for its persisted time).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.pair("alice", "plex").await["sync"]["running"], false);
    assert!(
        plex.requests()
            .iter()
            .all(|r| !r.path.starts_with("/library/sections")),
        "a run started at restart: {:?}",
        plex.requests()
    );
    plex.assert_contract();
    app.stop().await;
}

#[tokio::test]
async fn twenty_thousand_items_on_plex_and_jellyfin_sync_completely_through_the_real_clients() {
    // The same generated library on both servers: every item must pair up, so no push at all.
    let plex = FakeServer::start(FakeKind::Plex, FakeLibrary::generated(20_000)).await;
    let jf = FakeServer::start(FakeKind::Jellyfin, FakeLibrary::generated(20_000)).await;
    let config = [
        backend_toml("alice", "plex", &plex, ""),
        backend_toml("alice", "jellyfin", &jf, ""),
    ]
    .concat();
    let sync = "interval = \"0\"\npage_size = 1000\nmax_requests_per_second = 1000";
    let app = TestApp::start_sync(TestDir::new(), "", sync, &config).await;
    for b in ["plex", "jellyfin"] {
        let (status, body) = app.post_api(&format!("/status/users/alice/{b}/sync")).await;
        assert_eq!(status, 202, "{body}");
    }
    for b in ["plex", "jellyfin"] {
        let s = eventually(
            Duration::from_secs(120),
            &format!("{b} to sync 20 000 items"),
            || async {
                let s = app.pair("alice", b).await;
                assert_eq!(s["sync"]["runs_failed"], 0, "{s:#}");
                (s["sync"]["runs_ok"] == 1).then_some(s)
            },
        )
        .await;
        assert_eq!(s["sync"]["seen"], 20_000, "{s:#}");
        assert_eq!(s["sync"]["total"], 20_000, "{s:#}");
        assert_eq!(s["items"], 20_000, "{s:#}");
    }
    app.wait_quiet(Duration::from_millis(300)).await;
    assert!(
        plex.writes().is_empty(),
        "{} Plex writes",
        plex.writes().len()
    );
    assert!(
        jf.writes().is_empty(),
        "{} Jellyfin writes",
        jf.writes().len()
    );
    assert_eq!(app.pair("alice", "jellyfin").await["pending"], 0);
    // Paged: many listing requests, each at most a page.
    let pages = jf.requests().iter().filter(|r| r.path == "/Items").count();
    assert!(
        pages >= 20,
        "{pages} listing pages for 20 000 items of 1000"
    );
    plex.assert_contract();
    jf.assert_contract();
    app.stop().await;
}

#[tokio::test]
async fn the_timer_runs_the_next_sync_by_itself_and_repairs_a_missed_change() {
    let w = World::start(
        two_movies("p", [false, false]),
        two_movies("j", [false, false]),
        two_movies("e", [false, false]),
        "interval = \"2s\"",
        Extra::default(),
    )
    .await;
    // The first runs through the API (a never-synced pair would wait for its staggered start).
    w.sync_all().await;
    let s = w.app.pair("alice", "plex").await;
    let finished = s["sync"]["last_finished"].as_i64().unwrap();
    let next = s["sync"]["next_at"].as_i64().unwrap();
    assert!(
        (finished + 1_800..=finished + 2_200).contains(&next),
        "next run in 2 s ± 10 %: {s:#}"
    );
    w.app.wait_quiet(Duration::from_millis(100)).await;
    assert!(w.fakes().iter().all(|f| f.writes().is_empty()));

    // Watched on Plex with no webhook (as a manual mark on Plex always is): the timer's next
    // run finds it and Jellyfin and Emby get it, with no API call.
    w.plex.set_played_directly("p2", true);
    let jf = wait_writes(
        &w.jellyfin,
        1,
        "the timer's run to push movie 2 to Jellyfin",
    )
    .await;
    let em = wait_writes(&w.emby, 1, "the timer's run to push movie 2 to Emby").await;
    assert!(is_played(&jf[0], &w.jellyfin, "j2"), "{jf:?}");
    assert!(is_played(&em[0], &w.emby, "e2"), "{em:?}");
    let s = w.app.pair("alice", "plex").await;
    assert!(s["sync"]["runs_ok"].as_u64() >= Some(2), "{s:#}");
    w.stop().await;
}

#[tokio::test]
async fn a_jellyfin_event_without_its_user_is_unmatched_and_the_next_sync_repairs_it() {
    let w = World::start(
        two_movies("p", [false, false]),
        two_movies("j", [false, false]),
        two_movies("e", [false, false]),
        NO_TIMER,
        Extra::default(),
    )
    .await;
    w.sync_all().await;
    w.clear_logs();

    // Marked played in Jellyfin; the plugin's template left the user out.
    w.jellyfin.set_played_directly("j1", true);
    let item = crate::harness::MbItem {
        id: "j1".into(),
        kind: "Movie",
        name: "Movie 1".into(),
        ids: vec![("Imdb", "tt0000001".into())],
        series: None,
        runtime_ms: 7_200_000,
    };
    let mut body = crate::harness::jellyfin_user_data_saved(
        w.jellyfin.server_id(),
        w.jellyfin.user_id(),
        &item,
        "TogglePlayed",
        true,
        0,
    );
    let mut json: serde_json::Value = serde_json::from_slice(&body.body).unwrap();
    json.as_object_mut().unwrap().remove("UserId");
    json.as_object_mut().unwrap().remove("NotificationUsername");
    body.body = json.to_string().into_bytes();
    let (status, answer) = w.app.webhook(&body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "unmatched", "{answer}");
    let global = w.app.get_json("/status").await;
    assert_eq!(global["unmatched"]["total"], 1, "{global:#}");
    w.app.wait_quiet(Duration::from_millis(200)).await;
    assert!(w.fakes().iter().all(|f| f.writes().is_empty()));

    let s = w.app.sync_and_wait("alice", "jellyfin").await;
    assert_eq!(s["sync"]["changed"], 1, "{s:#}");
    let plex = wait_writes(&w.plex, 1, "movie 1 scrobbled on Plex").await;
    let em = wait_writes(&w.emby, 1, "movie 1 marked played on Emby").await;
    assert!(is_played(&plex[0], &w.plex, "p1"), "{plex:?}");
    assert!(is_played(&em[0], &w.emby, "e1"), "{em:?}");
    w.app.wait_quiet(Duration::from_millis(300)).await;
    assert!(w.jellyfin.writes().is_empty());
    w.stop().await;
}

#[tokio::test]
async fn an_old_play_on_a_new_backend_does_not_undo_a_newer_unmark_and_is_a_conflict() {
    let plex = FakeServer::start(FakeKind::Plex, two_movies("p", [true, false])).await;
    let emby = FakeServer::start(FakeKind::Emby, two_movies("e", [true, false])).await;
    // Jellyfin played movie 1 long ago, too.
    let jellyfin = FakeServer::start(FakeKind::Jellyfin, two_movies("j", [true, false])).await;
    let two = [
        backend_toml("alice", "plex", &plex, ""),
        backend_toml("alice", "emby", &emby, ""),
    ]
    .concat();
    let app = TestApp::start_sync(TestDir::new(), "", NO_TIMER, &two).await;
    app.sync_and_wait("alice", "plex").await;
    app.sync_and_wait("alice", "emby").await;

    // Today the user unmarks movie 1 in Emby.
    emby.set_played_directly("e1", false);
    let item = crate::harness::MbItem {
        id: "e1".into(),
        kind: "Movie",
        name: "Movie 1".into(),
        ids: vec![("Imdb", "tt0000001".into())],
        series: None,
        runtime_ms: 7_200_000,
    };
    let (status, answer) = app
        .webhook(&crate::harness::emby_webhook(
            "item.markunplayed",
            emby.server_id(),
            emby.user_id(),
            &item,
        ))
        .await;
    assert_eq!(status, 202, "{answer}");
    let p = wait_writes(&plex, 1, "movie 1 unmarked on Plex").await;
    assert_eq!(p[0], write(&plex, "p1", WriteChange::Unplayed));
    app.wait_quiet(Duration::from_millis(200)).await;
    plex.clear_log();

    // Jellyfin is added; its first sync sees the old play of movie 1.
    let dir = app.stop_keep_dir().await;
    let three = format!("{two}{}", backend_toml("alice", "jellyfin", &jellyfin, ""));
    let app = TestApp::start_sync(dir, "", NO_TIMER, &three).await;
    app.sync_and_wait("alice", "jellyfin").await;
    // The newer unmark reaches Jellyfin; the old play changes nothing on Plex and Emby.
    let jf = wait_writes(&jellyfin, 1, "movie 1 unmarked on Jellyfin").await;
    assert_eq!(jf[0], write(&jellyfin, "j1", WriteChange::Unplayed));
    app.wait_quiet(Duration::from_millis(300)).await;
    assert!(plex.writes().is_empty(), "{:?}", plex.writes());
    assert!(emby.writes().is_empty(), "{:?}", emby.writes());
    assert!(!plex.item_state("p1").played && !emby.item_state("e1").played);
    for b in ["plex", "emby"] {
        let s = app.pair("alice", b).await;
        assert_eq!(s["conflicts"]["count"], 1, "{b}: {s:#}");
        let c = &s["conflicts"]["recent"][0];
        assert_eq!(c["wanted"], "played=true", "{b}: {s:#}");
        assert_eq!(c["origin"]["backend"], "jellyfin", "{b}: {s:#}");
    }
    for f in [&plex, &emby, &jellyfin] {
        f.assert_contract();
    }
    app.stop().await;
}
