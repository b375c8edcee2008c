//! The actor system seen through its handle: routing, persistence, restarts, the rules of
//! DESIGN.md §6 and the outbox.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use support::*;
use watchstate_actors::backend::BackendError;
use watchstate_actors::event::{EventKind, ExternalIds};
use watchstate_actors::status::{ActorState, Outcome};
use watchstate_actors::store::PairKey;

use watchstate_actors::SyncSettings;

fn three() -> Vec<watchstate_actors::PairSpec> {
    vec![
        spec("alice", "plex"),
        spec("alice", "jelly"),
        spec("alice", "emby"),
    ]
}

/// Register the same movie on every listed backend through item_added webhooks.
async fn register(
    h: &mut Harness,
    user: &str,
    backends: &[&str],
    m: &watchstate_actors::backend::RemoteItem,
    prefix: &str,
) {
    for b in backends {
        let mut item = m.clone();
        item.item_id = format!("{prefix}-{b}");
        h.backend(user, b).add(item.clone());
        h.send(user, b, event(EventKind::ItemAdded, &item));
    }
    h.settle().await;
}

fn local(
    m: &watchstate_actors::backend::RemoteItem,
    prefix: &str,
    b: &str,
) -> watchstate_actors::backend::RemoteItem {
    let mut item = m.clone();
    item.item_id = format!("{prefix}-{b}");
    item
}

/// `kind` reported by Plex about `m` (`<prefix>-plex`), and everything it caused done.
async fn on_plex(
    h: &mut Harness,
    m: &watchstate_actors::backend::RemoteItem,
    prefix: &str,
    kind: EventKind,
) {
    h.send("alice", "plex", event(kind, &local(m, prefix, "plex")));
    h.settle().await;
}

/// An unmark on Plex whose push to Jellyfin is running: the caller holds Jellyfin's write
/// gate.
async fn unmark_running_on_jelly(
    h: &mut Harness,
    m: &watchstate_actors::backend::RemoteItem,
    prefix: &str,
) {
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkUnplayed, &local(m, prefix, "plex")),
    );
    eventually("the unmark to be running on jellyfin", || async {
        h.status("alice", "jelly").await.outbox.in_flight == 1
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn generic_item_added_reaches_every_users_actor_and_drains_the_journal() {
    let mut h = Harness::start(
        vec![spec("alice", "jelly"), spec("bob", "jelly")],
        SyncSettings::default(),
    )
    .await;
    let m = movie("j1", "tt1");
    h.send("alice", "jelly", event(EventKind::ItemAdded, &m));
    h.send("bob", "jelly", event(EventKind::ItemAdded, &m));
    h.settle().await;
    for user in ["alice", "bob"] {
        let v = h.handle.item_states(user, "imdb", "tt1").await;
        assert_eq!(v.len(), 1);
        let item = v[0]
            .1
            .as_ref()
            .and_then(|v| v.item.clone())
            .expect("registered");
        assert_eq!(item.item_id, "j1");
        let s = h.status(user, "jelly").await;
        assert_eq!(s.items, 1);
        assert_eq!(s.last_event.unwrap().outcome, Outcome::Registered);
    }
    assert_eq!(
        h.journal_len(),
        0,
        "every journal entry removed once applied"
    );
    assert!(h.handle.ready().ready);
}

#[tokio::test(start_paused = true)]
async fn scrobble_propagates_once_and_echoes_and_duplicates_stop() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt42");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "m").await;

    let scrobble = event(EventKind::Scrobble, &local(&m, "m", "plex"));
    let first = h.send("alice", "plex", scrobble.clone());
    for _ in 0..4 {
        h.send("alice", "plex", scrobble.clone());
    }
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("m-jelly".into(), true)]
    );
    assert_eq!(
        h.backend("alice", "emby").writes(),
        vec![Call::SetPlayed("m-emby".into(), true)]
    );
    assert!(
        h.backend("alice", "plex").writes().is_empty(),
        "never written back to the origin"
    );

    // The media server's own webhook about our write: nothing more anywhere.
    let echo = event(EventKind::MarkPlayed, &local(&m, "m", "jelly"));
    h.send("alice", "jelly", echo);
    h.settle().await;
    assert_eq!(h.backend("alice", "jelly").writes().len(), 1);
    assert_eq!(h.backend("alice", "emby").writes().len(), 1);
    assert!(h.backend("alice", "plex").writes().is_empty());
    let jelly = h.status("alice", "jelly").await;
    assert_eq!(jelly.last_event.unwrap().outcome, Outcome::Unchanged);
    assert_eq!(jelly.counters.pushed, 1);

    // The request trace shows the origin's outcome and the pushes it caused.
    let trace = h.handle.request_outcomes(&first.request_id).await;
    let origin = trace
        .iter()
        .find(|o| o.pair == PairKey::new("alice", "plex"))
        .unwrap();
    assert_eq!(origin.event.as_ref().unwrap().outcome, Outcome::Applied);
    let pushes: usize = trace.iter().map(|o| o.pushes.len()).sum();
    assert_eq!(pushes, 2);
}

#[tokio::test(start_paused = true)]
async fn replaying_a_journal_entry_changes_nothing_the_second_time() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt7");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "r").await;
    let entry = h.send(
        "alice",
        "plex",
        event(EventKind::MarkPlayed, &local(&m, "r", "plex")),
    );
    h.settle().await;
    let before = h.status("alice", "plex").await.counters;
    h.redeliver(&entry);
    h.settle().await;
    let after = h.status("alice", "plex").await;
    assert_eq!(after.counters.applied, before.applied);
    assert_eq!(after.last_event.unwrap().outcome, Outcome::Unchanged);
    assert_eq!(h.backend("alice", "jelly").writes().len(), 1);
    assert_eq!(h.journal_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn mark_unplayed_propagates() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = episode("x", "900", "12", 1, 2);
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "e").await;
    h.send(
        "alice",
        "emby",
        event(EventKind::MarkPlayed, &local(&m, "e", "emby")),
    );
    h.settle().await;
    h.clock.advance(60_000);
    h.send(
        "alice",
        "emby",
        event(EventKind::MarkUnplayed, &local(&m, "e", "emby")),
    );
    h.settle().await;
    for b in ["plex", "jelly"] {
        assert_eq!(
            h.backend("alice", b).writes(),
            vec![
                Call::SetPlayed(format!("e-{b}"), true),
                Call::SetPlayed(format!("e-{b}"), false)
            ]
        );
    }
    let v = h.handle.item_states("alice", "tvdb", "900").await;
    assert!(v
        .iter()
        .all(|(_, v)| !v.as_ref().unwrap().item.as_ref().unwrap().played));
}

/// Marked and unmarked on Plex within seconds: Jellyfin gets both pushes, and its webhook about
/// the first comes after the second was confirmed. That is our own write coming back, not the
/// user's newer action: it changes nothing, here or elsewhere. Once the wait for such echoes
/// is over, the same report is the user's own action again.
#[tokio::test(start_paused = true)]
async fn a_late_echo_of_a_push_undone_since_changes_nothing() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt43");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "m").await;
    h.clock.advance(1_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkPlayed, &local(&m, "m", "plex")),
    );
    h.settle().await;
    h.clock.advance(3_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkUnplayed, &local(&m, "m", "plex")),
    );
    h.settle().await;
    let both = |b: &str| {
        vec![
            Call::SetPlayed(format!("m-{b}"), true),
            Call::SetPlayed(format!("m-{b}"), false),
        ]
    };
    assert_eq!(h.backend("alice", "jelly").writes(), both("jelly"));

    // Jellyfin's webhook about the first push, late.
    h.clock.advance(2_000);
    let late = event(EventKind::MarkPlayed, &local(&m, "m", "jelly"));
    h.send("alice", "jelly", late.clone());
    h.settle().await;
    let status = h.status("alice", "jelly").await;
    let last = status.last_event.unwrap();
    assert_eq!(
        (last.outcome, last.reason.as_deref()),
        (Outcome::Unchanged, Some("late echo of our own push"))
    );
    assert!(h.backend("alice", "plex").writes().is_empty());
    assert_eq!(h.backend("alice", "emby").writes(), both("emby"));
    assert_eq!(h.backend("alice", "jelly").writes(), both("jelly"));
    // Its webhook about the second push: equal to what it holds.
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkUnplayed, &local(&m, "m", "jelly")),
    );
    h.settle().await;
    assert!(h.backend("alice", "plex").writes().is_empty());

    // Minutes later the user marks it played on Jellyfin: that is theirs, and goes out.
    h.clock.advance(180_000);
    h.send("alice", "jelly", late);
    h.settle().await;
    assert_eq!(
        h.backend("alice", "plex").writes(),
        vec![Call::SetPlayed("m-plex".into(), true)]
    );
    assert_eq!(h.backend("alice", "emby").writes().len(), 3);
}

/// As above, but Jellyfin's webhook about the first push comes while the second is still
/// running there: it is not the user re-marking the film (a playback would be, see
/// `a_users_newer_action_beats_an_opposite_push_already_running`), and the unmark stands.
#[tokio::test(start_paused = true)]
async fn a_late_echo_while_the_opposite_push_runs_changes_nothing() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt44");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "k").await;
    on_plex(&mut h, &m, "k", EventKind::MarkPlayed).await;
    let jelly = h.backend("alice", "jelly");
    let held = jelly.write_gate.lock().await;
    h.clock.advance(3_000);
    unmark_running_on_jelly(&mut h, &m, "k").await;
    h.clock.advance(1_000);
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkPlayed, &local(&m, "k", "jelly")),
    );
    eventually("the late echo to be handled", || async {
        h.status("alice", "jelly")
            .await
            .last_event
            .is_some_and(|e| e.reason.as_deref() == Some("late echo of our own push"))
    })
    .await;
    drop(held);
    h.settle().await;
    assert!(!jelly.item("k-jelly").played, "{:?}", jelly.writes());
    assert_eq!(
        jelly.writes(),
        vec![
            Call::SetPlayed("k-jelly".into(), true),
            Call::SetPlayed("k-jelly".into(), false)
        ]
    );
    assert!(h.backend("alice", "plex").writes().is_empty());
    assert_eq!(h.backend("alice", "emby").writes().len(), 2);
}

/// Marked and unmarked on Plex: Jellyfin reports each write in order, or not at all. Either
/// way a mark the user then makes on Jellyfin is theirs: reports that came use up their
/// writes, and writes whose report never comes are waited for a minute only.
#[tokio::test(start_paused = true)]
async fn after_its_echoes_or_a_minute_a_mark_on_the_target_is_the_users() {
    for echoes in [true, false] {
        let mut h = Harness::start(three(), SyncSettings::default()).await;
        let m = movie("x", "tt45");
        register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "j").await;
        for kind in [EventKind::MarkPlayed, EventKind::MarkUnplayed] {
            h.clock.advance(2_000);
            h.send("alice", "plex", event(kind, &local(&m, "j", "plex")));
            h.settle().await;
            if echoes {
                h.send("alice", "jelly", event(kind, &local(&m, "j", "jelly")));
                h.settle().await;
            }
        }
        assert_eq!(h.backend("alice", "jelly").writes().len(), 2);
        assert!(h.backend("alice", "plex").writes().is_empty());
        h.clock.advance(if echoes { 5_000 } else { 61_000 });
        h.send(
            "alice",
            "jelly",
            event(EventKind::MarkPlayed, &local(&m, "j", "jelly")),
        );
        h.settle().await;
        let last = h.status("alice", "jelly").await.last_event.unwrap();
        assert_eq!(last.outcome, Outcome::Applied, "echoes: {echoes}: {last:?}");
        assert_eq!(
            h.backend("alice", "plex").writes(),
            vec![Call::SetPlayed("j-plex".into(), true)],
            "echoes: {echoes}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn legacy_series_id_episode_reaches_the_right_episode() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let target = episode("x", "900", "12", 3, 4);
    let other = episode("y", "901", "12", 3, 5);
    register(&mut h, "alice", &["plex", "jelly", "emby"], &target, "t").await;
    register(&mut h, "alice", &["plex", "jelly", "emby"], &other, "o").await;
    // Plex legacy agent: only the show's id and the numbers.
    let mut ev = event(EventKind::Scrobble, &local(&target, "t", "plex"));
    ev.external_ids = ExternalIds::new();
    h.send("alice", "plex", ev);
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("t-jelly".into(), true)]
    );
    assert_eq!(
        h.backend("alice", "emby").writes(),
        vec![Call::SetPlayed("t-emby".into(), true)]
    );
}

#[tokio::test(start_paused = true)]
async fn pending_state_is_applied_when_the_item_is_added() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt9");
    register(&mut h, "alice", &["plex"], &m, "p").await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "p", "plex")),
    );
    h.settle().await;
    assert!(h.backend("alice", "jelly").writes().is_empty());
    let s = h.status("alice", "jelly").await;
    assert_eq!(s.pending, 1);
    let v = h.handle.item_states("alice", "imdb", "tt9").await;
    let jelly = v.iter().find(|(k, _)| k.backend == "jelly").unwrap();
    assert_eq!(
        jelly.1.as_ref().unwrap().pending.as_ref().unwrap().played,
        Some(true)
    );

    register(&mut h, "alice", &["jelly"], &m, "p").await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("p-jelly".into(), true)]
    );
    assert_eq!(h.status("alice", "jelly").await.pending, 0);
}

#[tokio::test(start_paused = true)]
async fn positions_propagate_with_minimum_and_threshold_in_ms() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt5");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "q").await;
    let send_pos = |h: &mut Harness, kind: EventKind, ms: u64| {
        let mut ev = event(kind, &local(&m, "q", "plex"));
        ev.position_ms = Some(ms);
        h.send("alice", "plex", ev);
    };
    send_pos(&mut h, EventKind::Play, 30_000); // under the 60 s minimum
    h.settle().await;
    assert!(h.backend("alice", "jelly").writes().is_empty());
    send_pos(&mut h, EventKind::Progress, 120_000);
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPosition("q-jelly".into(), 120_000)]
    );
    send_pos(&mut h, EventKind::Pause, 140_000); // 20 s away: under the 30 s threshold
    h.settle().await;
    assert_eq!(h.backend("alice", "jelly").writes().len(), 1);
    send_pos(&mut h, EventKind::Stop, 200_000);
    h.settle().await;
    assert_eq!(
        h.backend("alice", "emby").writes().last(),
        Some(&Call::SetPosition("q-emby".into(), 200_000))
    );
    // Once played, positions no longer propagate to it.
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkPlayed, &local(&m, "q", "jelly")),
    );
    h.settle().await;
    let jelly_writes = h.backend("alice", "jelly").writes().len();
    send_pos(&mut h, EventKind::Progress, 900_000);
    h.settle().await;
    assert_eq!(h.backend("alice", "jelly").writes().len(), jelly_writes);
}

/// A server that cannot store resume positions (Jellyfin 10.8) gets none queued: each would
/// only become a dead letter. Played states still reach it.
#[tokio::test(start_paused = true)]
async fn a_server_that_cannot_store_positions_gets_none_queued() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt6");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "n").await;
    h.backend("alice", "jelly")
        .state
        .lock()
        .unwrap()
        .no_positions = true;
    let mut ev = event(EventKind::Pause, &local(&m, "n", "plex"));
    ev.position_ms = Some(600_000);
    h.send("alice", "plex", ev);
    h.settle().await;
    assert_eq!(
        h.backend("alice", "emby").writes(),
        vec![Call::SetPosition("n-emby".into(), 600_000)]
    );
    assert!(h.backend("alice", "jelly").writes().is_empty());
    let s = h.status("alice", "jelly").await;
    assert_eq!((s.outbox.pending, s.outbox.dead_letters), (0, 0));

    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "n", "plex")),
    );
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("n-jelly".into(), true)]
    );
}

#[tokio::test(start_paused = true)]
async fn switches_and_users_bound_propagation() {
    let mut specs = three();
    specs[1].export = false; // jelly: never written
    specs[2].import = false; // emby: its events change nothing elsewhere
    specs.push(spec("bob", "plex"));
    let mut h = Harness::start(specs, SyncSettings::default()).await;
    let m = movie("x", "tt3");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "s").await;
    register(&mut h, "bob", &["plex"], &m, "b").await;

    h.send(
        "alice",
        "emby",
        event(EventKind::MarkPlayed, &local(&m, "s", "emby")),
    );
    h.settle().await;
    assert_eq!(
        h.status("alice", "emby").await.last_event.unwrap().outcome,
        Outcome::Ignored
    );
    assert!(h.backend("alice", "plex").writes().is_empty());

    h.send(
        "alice",
        "plex",
        event(EventKind::MarkPlayed, &local(&m, "s", "plex")),
    );
    h.settle().await;
    assert!(
        h.backend("alice", "jelly").writes().is_empty(),
        "export = false"
    );
    assert_eq!(
        h.backend("alice", "emby").writes(),
        vec![Call::SetPlayed("s-emby".into(), true)]
    );
    assert!(
        h.backend("bob", "plex").writes().is_empty(),
        "never across users"
    );
}

#[tokio::test(start_paused = true)]
async fn events_without_ids_use_the_index_or_one_lookup_or_are_dropped() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt8");
    // jelly and emby know the movie; plex's event carries no ids and plex never saw it.
    register(&mut h, "alice", &["jelly", "emby"], &m, "l").await;
    h.backend("alice", "plex").add(local(&m, "l", "plex"));
    let mut bare = event(EventKind::Scrobble, &local(&m, "l", "plex"));
    bare.external_ids = ExternalIds::new();
    h.send("alice", "plex", bare.clone());
    h.settle().await;
    assert_eq!(h.backend("alice", "jelly").writes().len(), 1);
    assert!(h
        .backend("alice", "plex")
        .calls()
        .iter()
        .any(|(_, c)| *c == Call::GetItem("l-plex".into())));

    let mut unknown = bare;
    unknown.item_id = Some("nope".into());
    h.send("alice", "plex", unknown);
    h.settle().await;
    let s = h.status("alice", "plex").await;
    let last = s.last_event.unwrap();
    assert_eq!(last.outcome, Outcome::Dropped);
    assert!(last.reason.unwrap().contains("no external ids"));
    assert_eq!(s.dropped_no_ids, 1);
}

#[tokio::test(start_paused = true)]
async fn state_survives_a_restart() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt11");
    register(&mut h, "alice", &["plex", "jelly"], &m, "k").await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "k", "plex")),
    );
    h.settle().await;
    let mut h = h.restart().await;
    let v = h.handle.item_states("alice", "imdb", "tt11").await;
    for (k, view) in &v[..2] {
        assert!(
            view.as_ref().unwrap().item.as_ref().unwrap().played,
            "{k} played after restart"
        );
    }
    assert_eq!(h.status("alice", "plex").await.counters.applied, 2);
    assert_eq!(
        h.status("alice", "emby").await.pending,
        1,
        "pending survives too"
    );
    // And the restored index still stops echoes.
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkPlayed, &local(&m, "k", "jelly")),
    );
    h.settle().await;
    assert_eq!(h.backend("alice", "jelly").writes().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_failed_actor_is_restarted_and_its_state_survives() {
    let store = Arc::new(FlakyStore::default());
    let mut h = Harness::start_on(three(), SyncSettings::default(), store.clone()).await;
    let m = movie("x", "tt12");
    register(&mut h, "alice", &["plex", "jelly"], &m, "f").await;

    store.fail.store(true, Ordering::SeqCst);
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "f", "plex")),
    );
    eventually("the actor to fail", || async {
        let s = h.status("alice", "plex").await;
        s.restarts == 1 && matches!(s.state, ActorState::Backoff | ActorState::Failed)
    })
    .await;
    assert!(!h.handle.ready().ready);
    store.fail.store(false, Ordering::SeqCst);
    eventually("the actor to be back", || async { h.handle.ready().ready }).await;
    let s = h.status("alice", "plex").await;
    assert_eq!(s.restarts, 1);
    assert_eq!(s.items, 1, "state reloaded from the store");
    assert!(s.last_error.is_some());
    // The failed event was still journalled: the restarted actor replays it by itself.
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("f-jelly".into(), true)]
    );
    assert_eq!(h.journal_len(), 0);
}

/// Webhooks for a pair that is down are not kept in memory: they are in the journal, and the
/// restarted actor replays them. Each is applied once (kept and replayed, each came twice),
/// and a pair that stays down does not collect them all in memory.
#[tokio::test(start_paused = true)]
async fn webhooks_for_a_pair_that_is_down_are_replayed_once_from_the_journal() {
    let store = Arc::new(FlakyStore::default());
    let mut h = Harness::start_on(three(), SyncSettings::default(), store.clone()).await;
    let m = movie("x", "tt14");
    register(&mut h, "alice", &["plex", "jelly"], &m, "d").await;

    store.fail.store(true, Ordering::SeqCst);
    let scrobble = h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "d", "plex")),
    );
    let mut seqs = vec![scrobble.seq];
    eventually("the actor to be down", || async {
        let s = h.status("alice", "plex").await;
        s.restarts >= 1 && matches!(s.state, ActorState::Backoff | ActorState::Failed)
    })
    .await;
    // While it is down: five new films.
    for i in 0..5 {
        let added = movie(&format!("d{i}-plex"), &format!("tt14{i}"));
        h.backend("alice", "plex").add(added.clone());
        seqs.push(
            h.send("alice", "plex", event(EventKind::ItemAdded, &added))
                .seq,
        );
    }
    store.fail.store(false, Ordering::SeqCst);
    eventually("the actor to be back", || async { h.handle.ready().ready }).await;
    h.settle().await;
    let s = h.status("alice", "plex").await;
    assert_eq!(s.items, 6);
    let events = h
        .handle
        .recent_events(&PairKey::new("alice", "plex"), 100)
        .await
        .unwrap();
    for seq in &seqs {
        assert_eq!(
            events.iter().filter(|e| e.seq == *seq).count(),
            1,
            "entry {seq} applied once after the restart: {events:#?}"
        );
    }
    assert_eq!(s.mailbox_depth, 0);
    assert_eq!(h.journal_len(), 0);
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("d-jelly".into(), true)]
    );

    // An entry the restart replayed that the router dispatches as well (it was journalled
    // while the actor started): acknowledged, not applied or counted a second time.
    h.redeliver(&scrobble);
    h.settle().await;
    let again = h.status("alice", "plex").await;
    assert_eq!(again.counters.received, s.counters.received);
    let events = h
        .handle
        .recent_events(&PairKey::new("alice", "plex"), 100)
        .await
        .unwrap();
    assert_eq!(events.iter().filter(|e| e.seq == scrobble.seq).count(), 1);
    assert_eq!(h.journal_len(), 0);
}

/// An actor that fails while one of its pushes is running: the restarted actor sends the
/// push again, and the old one's is aborted rather than sent beside it (a Jellyfin play sent
/// twice counts twice).
#[tokio::test(start_paused = true)]
async fn a_failed_actors_running_push_is_not_sent_beside_the_restarted_ones() {
    let store = Arc::new(FlakyStore::default());
    let mut h = Harness::start_on(three(), SyncSettings::default(), store.clone()).await;
    let m = movie("x", "tt15");
    register(&mut h, "alice", &["plex", "jelly"], &m, "a").await;
    let jelly = h.backend("alice", "jelly");
    let held = jelly.write_gate.lock().await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "a", "plex")),
    );
    eventually("the push to be running", || async {
        h.status("alice", "jelly").await.outbox.in_flight == 1
    })
    .await;
    // Jellyfin's actor fails (its store write fails), then comes back.
    store.fail.store(true, Ordering::SeqCst);
    h.send(
        "alice",
        "jelly",
        event(EventKind::Progress, &local(&m, "a", "jelly")),
    );
    eventually("jellyfin's actor to fail", || async {
        h.status("alice", "jelly").await.restarts >= 1
    })
    .await;
    store.fail.store(false, Ordering::SeqCst);
    eventually("the actor to be back", || async { h.handle.ready().ready }).await;
    eventually("the push to be sent again", || async {
        jelly.writes().len() == 2
    })
    .await;
    drop(held);
    h.settle().await;
    assert_eq!(jelly.state.lock().unwrap().completed_writes, 1);
    assert!(jelly.item("a-jelly").played);
    assert_eq!(h.status("alice", "jelly").await.outbox.pending, 0);
}

#[tokio::test(start_paused = true)]
async fn outbox_retries_with_backoff_and_honours_retry_after() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt13");
    register(&mut h, "alice", &["plex", "jelly"], &m, "o").await;
    let jelly = h.backend("alice", "jelly");
    jelly.fault(BackendError::Server {
        status: 500,
        message: "oops".into(),
        retry_after_ms: None,
    });
    jelly.fault(BackendError::RateLimited {
        retry_after_ms: Some(7_000),
    });
    jelly.fault(BackendError::Network {
        message: "refused".into(),
    });
    jelly.fault(BackendError::Server {
        status: 503,
        message: "maintenance".into(),
        retry_after_ms: Some(30_000),
    });
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "o", "plex")),
    );
    eventually("delivery after retries", || async {
        jelly.writes().len() == 5
    })
    .await;
    h.settle().await;
    let times: Vec<_> = jelly
        .calls()
        .into_iter()
        .filter(|(_, c)| matches!(c, Call::SetPlayed(..)))
        .map(|(t, _)| t)
        .collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    // 1 s (±10 %) after the 500, at least the 7 s Retry-After after the 429, ~4 s after the
    // third, at least the 30 s Retry-After after the 503.
    assert!(
        gaps[0] >= Duration::from_millis(900) && gaps[0] <= Duration::from_millis(1200),
        "{gaps:?}"
    );
    assert!(gaps[1] >= Duration::from_secs(7), "{gaps:?}");
    assert!(
        gaps[2] >= Duration::from_millis(3600) && gaps[2] <= Duration::from_millis(4500),
        "{gaps:?}"
    );
    assert!(gaps[3] >= Duration::from_secs(30), "{gaps:?}");
    let s = h.status("alice", "jelly").await;
    assert_eq!(s.counters.pushed, 1);
    assert_eq!(s.outbox.dead_letters, 0);
    assert!(jelly.item("o-jelly").played);
}

/// Plex unmarks a film; the push to Jellyfin fails and waits for its retry; meanwhile the user
/// watches the film to the end on Jellyfin. That newer action wins: the queued unmark is
/// dropped (Jellyfin stays played) and Plex and Emby are marked played again.
#[tokio::test(start_paused = true)]
async fn a_users_newer_action_beats_an_opposite_push_still_queued_for_it() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt77");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "q").await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "q", "plex")),
    );
    h.settle().await;
    assert!(h.backend("alice", "jelly").item("q-jelly").played);

    let jelly = h.backend("alice", "jelly");
    for _ in 0..5 {
        jelly.fault(BackendError::Server {
            status: 503,
            message: "busy".into(),
            retry_after_ms: None,
        });
    }
    h.clock.advance(60_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkUnplayed, &local(&m, "q", "plex")),
    );
    eventually(
        "the unmark to fail once on jellyfin and wait for its retry",
        || async {
            let s = h.status("alice", "jelly").await;
            s.outbox.pending == 1 && s.outbox.in_flight == 0 && !jelly.writes().is_empty()
        },
    )
    .await;
    assert!(jelly.item("q-jelly").played);

    h.clock.advance(1_000);
    h.send(
        "alice",
        "jelly",
        event(EventKind::Scrobble, &local(&m, "q", "jelly")),
    );
    h.settle().await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    h.settle().await;
    assert!(
        jelly.item("q-jelly").played,
        "the queued unmark was sent after all"
    );
    assert_eq!(h.status("alice", "jelly").await.outbox.pending, 0);
    for b in ["plex", "emby"] {
        let writes = h.backend("alice", b).writes();
        assert_eq!(
            writes.last(),
            Some(&Call::SetPlayed(format!("q-{b}"), true)),
            "{b}: {writes:?}"
        );
    }
}

/// A push of "played" is still running on Jellyfin when Plex unmarks the film; then that
/// push fails (a timeout). It must not be retried after the unmark went out: Jellyfin ends
/// unplayed, like the others.
#[tokio::test(start_paused = true)]
async fn a_push_that_fails_after_a_newer_one_was_queued_is_not_retried_over_it() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt78");
    register(&mut h, "alice", &["plex", "jelly"], &m, "w").await;
    let jelly = h.backend("alice", "jelly");
    let held = jelly.write_gate.lock().await;
    jelly.fault(BackendError::Network {
        message: "timed out".into(),
    });
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "w", "plex")),
    );
    eventually("the played push to be in flight", || async {
        h.status("alice", "jelly").await.outbox.in_flight == 1
    })
    .await;
    assert_eq!(h.status("alice", "jelly").await.state, ActorState::Pushing);
    h.clock.advance(60_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkUnplayed, &local(&m, "w", "plex")),
    );
    eventually("the unmark to be queued behind it", || async {
        h.status("alice", "jelly").await.outbox.pending == 2
    })
    .await;
    drop(held);
    h.settle().await;
    tokio::time::sleep(Duration::from_secs(600)).await;
    h.settle().await;
    assert!(!jelly.item("w-jelly").played, "{:?}", jelly.writes());
    assert_eq!(
        jelly.writes(),
        vec![
            Call::SetPlayed("w-jelly".into(), true),
            Call::SetPlayed("w-jelly".into(), false)
        ]
    );
    let s = h.status("alice", "jelly").await;
    assert_eq!((s.outbox.pending, s.outbox.dead_letters), (0, 0));
}

/// A played push to Jellyfin became a dead letter; then the user unmarks the film on Plex.
/// Jellyfin never got the play, so nothing is pushed, but the dead letter is stale now: it
/// is dropped, and a retry of dead letters cannot mark the film played again.
#[tokio::test(start_paused = true)]
async fn a_newer_change_drops_the_dead_letters_it_makes_stale() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt79");
    register(&mut h, "alice", &["plex", "jelly"], &m, "v").await;
    let jelly = h.backend("alice", "jelly");
    jelly.fault(BackendError::Client {
        status: 400,
        message: "bad request".into(),
    });
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "v", "plex")),
    );
    h.settle().await;
    assert_eq!(h.status("alice", "jelly").await.outbox.dead_letters, 1);
    h.clock.advance(60_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkUnplayed, &local(&m, "v", "plex")),
    );
    h.settle().await;
    assert_eq!(h.status("alice", "jelly").await.outbox.dead_letters, 0);
    let pair = PairKey::new("alice", "jelly");
    assert_eq!(h.handle.retry_dead_letters(&pair).await.unwrap(), 0);
    h.settle().await;
    assert!(!jelly.item("v-jelly").played);
    assert_eq!(jelly.writes().len(), 1, "{:?}", jelly.writes());
    // After a restart too: the dead letter was removed from the store.
    let h = h.restart().await;
    assert_eq!(h.status("alice", "jelly").await.outbox.dead_letters, 0);
}

/// A server that answered 429 with `Retry-After: 7` gets no push of any item before then.
#[tokio::test(start_paused = true)]
async fn retry_after_holds_every_push_to_that_server() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let (m1, m2) = (movie("x", "tt81"), movie("y", "tt82"));
    register(&mut h, "alice", &["plex", "jelly"], &m1, "r1").await;
    register(&mut h, "alice", &["plex", "jelly"], &m2, "r2").await;
    let jelly = h.backend("alice", "jelly");
    jelly.fault(BackendError::RateLimited {
        retry_after_ms: Some(7_000),
    });
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m1, "r1", "plex")),
    );
    eventually("the 429", || async {
        let s = h.status("alice", "jelly").await;
        s.outbox.pending == 1 && s.outbox.in_flight == 0 && jelly.writes().len() == 1
    })
    .await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m2, "r2", "plex")),
    );
    h.settle().await;
    let calls: Vec<_> = jelly.calls();
    let first = calls[0].0;
    for (at, call) in &calls[1..] {
        assert!(
            *at - first >= Duration::from_secs(7),
            "{call:?} went {:?} after the 429",
            *at - first
        );
    }
    assert!(jelly.item("r1-jelly").played && jelly.item("r2-jelly").played);
}

/// A server that is down while twenty pushes wait for it: after a failure that says the
/// whole server is down, no other push goes out before that one's retry. Each round tries at
/// most the few oldest pushes, instead of every push retrying on its own (about a hundred
/// requests in these 30 s); once it is back, all twenty are delivered.
#[tokio::test(start_paused = true)]
async fn a_server_that_is_down_gets_a_few_probes_not_every_push() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let jelly = h.backend("alice", "jelly");
    let mut films = Vec::new();
    for i in 0..20 {
        let m = movie(&format!("x{i}"), &format!("tt95{i:02}"));
        register(&mut h, "alice", &["plex", "jelly"], &m, &format!("d{i}")).await;
        films.push(m);
    }
    for _ in 0..1000 {
        jelly.fault(BackendError::Network {
            message: "connection refused".into(),
        });
    }
    let start = tokio::time::Instant::now();
    for (i, m) in films.iter().enumerate() {
        h.send(
            "alice",
            "plex",
            event(EventKind::Scrobble, &local(m, &format!("d{i}"), "plex")),
        );
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    let attempts = jelly.writes().len();
    assert!(
        (4..=30).contains(&attempts),
        "{attempts} attempts in 30 s to a server that is down"
    );
    let by_item: std::collections::HashSet<_> = jelly
        .calls()
        .iter()
        .filter(|(at, _)| *at - start < Duration::from_secs(30))
        .map(|(_, c)| format!("{c:?}"))
        .collect();
    assert!(by_item.len() <= 8, "the oldest pushes probe: {by_item:?}");

    jelly.state.lock().unwrap().write_faults.clear();
    eventually("every push to land once the server is back", || async {
        h.status("alice", "jelly").await.counters.pushed == 20
    })
    .await;
    let s = h.status("alice", "jelly").await;
    assert_eq!((s.outbox.pending, s.outbox.dead_letters), (0, 0));
}

/// Six films whose scrobbles reach Jellyfin, the first push failing with `fault` while four
/// are held at the write gate: how long after the gate opens the sixth push goes out. Every
/// push must land in the end.
async fn sixth_push_wait_after_a_fault(
    h: &mut Harness,
    fault: BackendError,
    tag: &str,
    imdb: &str,
) -> Duration {
    let jelly = h.backend("alice", "jelly");
    let mut films = Vec::new();
    for i in 0..6 {
        let m = movie(&format!("{tag}{i}"), &format!("{imdb}{i:02}"));
        register(h, "alice", &["plex", "jelly"], &m, &format!("{tag}t{i}")).await;
        films.push(m);
    }
    jelly.fault(fault);
    let gate = jelly.write_gate.lock().await;
    for (i, m) in films.iter().enumerate() {
        h.send(
            "alice",
            "plex",
            event(
                EventKind::Scrobble,
                &local(m, &format!("{tag}t{i}"), "plex"),
            ),
        );
    }
    eventually("four pushes at the gate", || async {
        jelly.writes().len() == 4
    })
    .await;
    let released = tokio::time::Instant::now();
    drop(gate);
    eventually("the two waiting pushes", || async {
        jelly.writes().len() >= 6
    })
    .await;
    let waited = jelly.calls()[5].0 - released;
    eventually("every push to land", || async {
        h.status("alice", "jelly").await.counters.pushed == 6
    })
    .await;
    waited
}

/// A timeout on one push holds the others, but a push that works meanwhile shows that the
/// server answers: the hold is lifted and the queue goes on at once (here the two pushes
/// that waited go out without the second's wait).
#[tokio::test(start_paused = true)]
async fn a_push_that_works_lifts_the_hold_of_a_timeout() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let timeout = BackendError::Timeout { after_ms: 30_000 };
    let waited = sixth_push_wait_after_a_fault(&mut h, timeout, "x", "tt96").await;
    assert!(
        waited < Duration::from_millis(500),
        "the last push waited {waited:?}"
    );
}

/// A 503 in maintenance asks for 2 s (`Retry-After`) while the failed push's own backoff is a
/// minute: every push waits the 2 s the server asked for, even after a push that works, but
/// not the backoff, which that push lifts.
#[tokio::test(start_paused = true)]
async fn a_push_that_works_lifts_the_backoff_but_not_what_a_503_asked_for() {
    let settings = SyncSettings {
        retry_base: Duration::from_secs(60),
        ..SyncSettings::default()
    };
    let mut h = Harness::start(three(), settings).await;
    let maintenance = BackendError::Server {
        status: 503,
        message: "maintenance".into(),
        retry_after_ms: Some(2_000),
    };
    let waited = sixth_push_wait_after_a_fault(&mut h, maintenance, "y", "tt97").await;
    assert!(
        waited >= Duration::from_millis(1_900) && waited < Duration::from_secs(10),
        "the last push waited {waited:?}"
    );
}

/// As above, but the unmark is already running on Jellyfin (it cannot be dropped) when the
/// user watches the film there: Jellyfin gets the play back right after it.
#[tokio::test(start_paused = true)]
async fn a_users_newer_action_beats_an_opposite_push_already_running() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt83");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "n").await;
    on_plex(&mut h, &m, "n", EventKind::Scrobble).await;
    let jelly = h.backend("alice", "jelly");
    let held = jelly.write_gate.lock().await;
    h.clock.advance(60_000);
    unmark_running_on_jelly(&mut h, &m, "n").await;
    h.clock.advance(1_000);
    h.send(
        "alice",
        "jelly",
        event(EventKind::Scrobble, &local(&m, "n", "jelly")),
    );
    eventually("the scrobble to be handled", || async {
        h.status("alice", "jelly").await.outbox.pending == 2
    })
    .await;
    drop(held);
    h.settle().await;
    assert!(jelly.item("n-jelly").played, "{:?}", jelly.writes());
    assert_eq!(
        jelly.writes().last(),
        Some(&Call::SetPlayed("n-jelly".into(), true))
    );
    for b in ["plex", "emby"] {
        let writes = h.backend("alice", b).writes();
        assert_eq!(
            writes.last(),
            Some(&Call::SetPlayed(format!("n-{b}"), true)),
            "{b}: {writes:?}"
        );
    }
}

/// An unmark for Jellyfin became a dead letter; then the user watches the film on Jellyfin
/// itself. That newer action makes the dead letter stale: a retry cannot unmark the film.
#[tokio::test(start_paused = true)]
async fn the_backends_own_newer_action_drops_its_stale_dead_letters() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt84");
    register(&mut h, "alice", &["plex", "jelly"], &m, "s").await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "s", "plex")),
    );
    h.settle().await;
    let jelly = h.backend("alice", "jelly");
    jelly.fault(BackendError::Client {
        status: 400,
        message: "bad request".into(),
    });
    h.clock.advance(60_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkUnplayed, &local(&m, "s", "plex")),
    );
    h.settle().await;
    assert_eq!(h.status("alice", "jelly").await.outbox.dead_letters, 1);
    h.clock.advance(60_000);
    h.send(
        "alice",
        "jelly",
        event(EventKind::Scrobble, &local(&m, "s", "jelly")),
    );
    h.settle().await;
    assert_eq!(h.status("alice", "jelly").await.outbox.dead_letters, 0);
    let pair = PairKey::new("alice", "jelly");
    assert_eq!(h.handle.retry_dead_letters(&pair).await.unwrap(), 0);
    h.settle().await;
    assert!(jelly.item("s-jelly").played);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_become_dead_letters_that_can_be_retried() {
    let settings = SyncSettings {
        push_attempts: 3,
        ..SyncSettings::default()
    };
    let mut h = Harness::start(three(), settings).await;
    let m = movie("x", "tt14");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "d").await;
    let jelly = h.backend("alice", "jelly");
    let emby = h.backend("alice", "emby");
    jelly.fault(BackendError::Client {
        status: 400,
        message: "bad request".into(),
    });
    for _ in 0..3 {
        emby.fault(BackendError::Server {
            status: 503,
            message: "down".into(),
            retry_after_ms: None,
        });
    }
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "d", "plex")),
    );
    h.settle().await;
    let js = h.status("alice", "jelly").await;
    assert_eq!((js.outbox.dead_letters, js.counters.push_failed), (1, 1));
    assert_eq!(jelly.writes().len(), 1, "a permanent 4xx is not retried");
    let es = h.status("alice", "emby").await;
    assert_eq!(es.outbox.dead_letters, 1);
    assert_eq!(emby.writes().len(), 3, "push_attempts attempts");
    assert!(es.last_error.unwrap().message.contains("after 3 attempt"));

    assert_eq!(
        h.handle
            .retry_dead_letters(&PairKey::new("alice", "jelly"))
            .await
            .unwrap(),
        1
    );
    h.settle().await;
    assert!(jelly.item("d-jelly").played);
    let js = h.status("alice", "jelly").await;
    assert_eq!((js.outbox.dead_letters, js.counters.pushed), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn status_queries_answer_for_every_pair_and_unknown_pairs_are_errors() {
    let h = Harness::start(three(), SyncSettings::default()).await;
    let all = h.handle.all_status().await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].backend, "plex");
    let json = serde_json::to_value(&all[0]).unwrap();
    for field in [
        "user",
        "backend",
        "type",
        "server_id",
        "backend_user_id",
        "import",
        "export",
        "state",
        "items",
        "mailbox_depth",
        "last_event",
        "counters",
        "outbox",
        "sync",
        "last_error",
    ] {
        assert!(json.get(field).is_some(), "status has {field}");
    }
    let unknown = PairKey::new("carol", "plex");
    assert!(h.handle.pair_status(&unknown).await.is_none());
    assert!(h.handle.recent_events(&unknown, 5).await.is_none());
    assert!(h
        .handle
        .dispatch(watchstate_actors::event::JournalEntry {
            seq: 1,
            pair: unknown,
            request_id: "r".into(),
            received_at: 0,
            event: event(EventKind::ItemAdded, &movie("x", "tt1")),
        })
        .is_err());
    h.handle.shutdown().await;
    let _ = h.store.flush();
}

#[tokio::test(start_paused = true)]
async fn an_older_change_never_overwrites_a_newer_one_and_the_conflict_is_recorded() {
    let mut specs = three();
    specs[0].export = false; // plex never hears of jelly's changes
    let mut h = Harness::start(specs, SyncSettings::default()).await;
    let m = movie("x", "tt21");
    register(&mut h, "alice", &["plex", "jelly", "emby"], &m, "c").await;
    let t = watchstate_actors::Clock::now_ms(&*h.clock);
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkPlayed, &local(&m, "c", "jelly")),
    );
    h.settle().await;
    h.clock.advance(10_000);
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkUnplayed, &local(&m, "c", "jelly")),
    );
    h.settle().await;
    let emby_writes = h.backend("alice", "emby").writes().len();
    assert_eq!(emby_writes, 2);
    // Plex's mark, received between jelly's two changes, is processed late.
    h.send_at(
        "alice",
        "plex",
        event(EventKind::MarkPlayed, &local(&m, "c", "plex")),
        t + 5_000,
    );
    h.settle().await;
    assert_eq!(
        h.backend("alice", "emby").writes().len(),
        emby_writes,
        "older change not pushed"
    );
    assert!(h.backend("alice", "jelly").writes().is_empty());
    let s = h.status("alice", "emby").await;
    assert_eq!(s.conflicts.count, 1);
    assert_eq!(s.conflicts.recent[0].origin, PairKey::new("alice", "plex"));
    let v = h.handle.item_states("alice", "imdb", "tt21").await;
    let emby = v
        .iter()
        .find(|(k, _)| k.backend == "emby")
        .unwrap()
        .1
        .as_ref()
        .unwrap();
    assert_eq!(emby.conflicts.len(), 1);
    assert!(!emby.item.as_ref().unwrap().played);
}

#[tokio::test(start_paused = true)]
async fn a_failing_push_shows_in_status_at_its_first_attempt() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("x", "tt15");
    register(&mut h, "alice", &["plex", "jelly"], &m, "v").await;
    let jelly = h.backend("alice", "jelly");
    for _ in 0..2 {
        jelly.fault(BackendError::Network {
            message: "connection refused".into(),
        });
    }
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "v", "plex")),
    );
    eventually("the first failed attempt", || async {
        jelly.writes().len() == 1 && h.status("alice", "jelly").await.last_error.is_some()
    })
    .await;
    let s = h.status("alice", "jelly").await;
    let err = s.last_error.expect("set at the first failure");
    assert!(
        err.message
            .starts_with("push mark_played of item v-jelly failed (attempt 1 of 10, next in "),
        "{}",
        err.message
    );
    assert!(
        err.message.contains("connection refused"),
        "{}",
        err.message
    );
    assert_eq!(
        s.outbox.last_error,
        Some(err.clone()),
        "the queue's last error"
    );
    assert_eq!(s.outbox.dead_letters, 0);

    eventually("the second failed attempt", || async {
        jelly.writes().len() == 2
            && h.status("alice", "jelly")
                .await
                .outbox
                .last_error
                .is_some_and(|e| e.message.contains("attempt 2 of 10"))
    })
    .await;
    let s = h.status("alice", "jelly").await;
    assert!(s.last_error.unwrap().message.contains("attempt 2 of 10"));

    // Delivered: the queue has no error any more; the pair keeps its last one as history.
    h.settle().await;
    let s = h.status("alice", "jelly").await;
    assert_eq!(s.counters.pushed, 1);
    assert_eq!(s.outbox.last_error, None);
    assert!(s.last_error.is_some());
}

/// The pair's meta as stored, if any.
fn stored_meta(
    h: &Harness,
    user: &str,
    backend: &str,
) -> Option<watchstate_actors::pair::PairMeta> {
    let key = format!("{user}/{backend}/m");
    h.store
        .get(watchstate_actors::store::Tree::Pairs, key.as_bytes())
        .unwrap()
        .map(|v| serde_json::from_slice(&v).unwrap())
}

/// Webhooks that only move status counts have the pair's meta written within
/// `META_WRITE_DELAY` of the first of them, in one write; a webhook that hands out an id (a
/// relay record for a sibling) stores the meta with it; a stop writes what is left.
#[tokio::test(start_paused = true)]
async fn status_counts_are_written_soon_in_one_write_and_ids_at_once() {
    use watchstate_actors::pair::META_WRITE_DELAY;
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let received = |h: &Harness| stored_meta(h, "alice", "plex").map_or(0, |m| m.counters.received);
    let m = movie("x", "tt77");
    let plex = local(&m, "c", "plex");
    h.backend("alice", "plex").add(plex.clone());
    for _ in 0..3 {
        h.send("alice", "plex", event(EventKind::Play, &plex));
    }
    eventually("three events handled", || async {
        h.status("alice", "plex").await.counters.received == 3
    })
    .await;
    assert_eq!(received(&h), 0, "written per event");
    tokio::time::sleep(META_WRITE_DELAY + Duration::from_millis(50)).await;
    assert_eq!(received(&h), 3, "not written after the delay");

    // An id handed out is stored with the batch that uses it.
    register(&mut h, "alice", &["jelly"], &m, "c").await;
    let before = stored_meta(&h, "alice", "plex").unwrap().next_id;
    h.send("alice", "plex", event(EventKind::Scrobble, &plex));
    eventually("the scrobble handled", || async {
        h.status("alice", "plex").await.counters.received == 4
    })
    .await;
    let meta = stored_meta(&h, "alice", "plex").unwrap();
    assert!(
        meta.next_id > before,
        "the relay id is not stored with the relay record"
    );
    assert_eq!(meta.counters.received, 4);

    h.send("alice", "plex", event(EventKind::Play, &plex));
    eventually("the last event handled", || async {
        h.status("alice", "plex").await.counters.received == 5
    })
    .await;
    assert_eq!(received(&h), 4);
    let h = h.restart().await;
    assert_eq!(received(&h), 5, "a stop leaves counts unwritten");
    assert_eq!(h.status("alice", "plex").await.counters.received, 5);
}

/// A webhook that tells nothing new about a known item (a repeated play) does not rewrite the
/// item in its batch; the item's `last_seen` is written with the meta, within
/// `META_WRITE_DELAY`, and at a stop. A webhook that changes the item writes it at once.
#[tokio::test(start_paused = true)]
async fn a_repeated_webhook_does_not_rewrite_its_item() {
    use watchstate_actors::pair::META_WRITE_DELAY;
    use watchstate_actors::state::StoredItem;
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let stored = |h: &Harness| -> Option<StoredItem> {
        h.store
            .get(
                watchstate_actors::store::Tree::Pairs,
                b"alice/plex/i/c-plex",
            )
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
    };
    let m = movie("x", "tt77");
    let plex = local(&m, "c", "plex");
    h.backend("alice", "plex").add(plex.clone());
    h.send("alice", "plex", event(EventKind::Play, &plex));
    eventually("the first play handled", || async {
        h.status("alice", "plex").await.counters.received == 1
    })
    .await;
    let first = stored(&h).expect("a new item is stored with its webhook");
    h.clock.advance(60_000);
    h.send("alice", "plex", event(EventKind::Play, &plex));
    eventually("the second play handled", || async {
        h.status("alice", "plex").await.counters.received == 2
    })
    .await;
    assert_eq!(
        stored(&h),
        Some(first.clone()),
        "rewritten for last_seen alone"
    );
    tokio::time::sleep(META_WRITE_DELAY + Duration::from_millis(50)).await;
    let later = stored(&h).unwrap();
    assert_eq!(
        later.last_seen,
        first.last_seen + 60_000,
        "last_seen never written"
    );
    assert_eq!(
        StoredItem {
            last_seen: first.last_seen,
            ..later
        },
        first
    );

    // A change is written with its webhook.
    h.clock.advance(60_000);
    let mut watched = plex.clone();
    watched.played = true;
    h.send("alice", "plex", event(EventKind::Scrobble, &watched));
    eventually("the scrobble handled", || async {
        h.status("alice", "plex").await.counters.received == 3
    })
    .await;
    assert!(stored(&h).unwrap().played);

    // What is left unwritten at a stop is written by it.
    h.clock.advance(60_000);
    h.send("alice", "plex", event(EventKind::Scrobble, &watched));
    eventually("the repeated scrobble handled", || async {
        h.status("alice", "plex").await.counters.received == 4
    })
    .await;
    let before_stop = stored(&h).unwrap().last_seen;
    let h = h.restart().await;
    assert_eq!(stored(&h).unwrap().last_seen, before_stop + 60_000);
}

/// A lookup that fails because the server does not answer pauses lookups for
/// `LOOKUP_PAUSE`: the next events that would need one are dropped without asking (each try
/// could hold the pair's queue for a whole timeout); afterwards the server is asked again.
#[tokio::test(start_paused = true)]
async fn a_failed_lookup_pauses_lookups_for_a_while() {
    use watchstate_actors::pair::LOOKUP_PAUSE;
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let plex = h.backend("alice", "plex");
    plex.state.lock().unwrap().unreachable = true;
    let lookups = |b: &FakeBackend| {
        b.calls()
            .iter()
            .filter(|(_, c)| matches!(c, Call::GetItem(_)))
            .count()
    };
    let bare = |id: &str| {
        let mut ev = event(EventKind::Scrobble, &movie(id, "tt1"));
        ev.external_ids = ExternalIds::new();
        ev
    };
    for id in ["a", "b", "c"] {
        h.send("alice", "plex", bare(id));
    }
    h.settle().await;
    assert_eq!(lookups(&plex), 1, "asked again while the server was down");
    let s = h.status("alice", "plex").await;
    assert_eq!(s.dropped_no_ids, 3);
    assert!(s
        .last_event
        .unwrap()
        .reason
        .unwrap()
        .contains("lookups paused"));

    // Once the pause is over the server is asked again, and an answer ends the pause.
    plex.state.lock().unwrap().unreachable = false;
    plex.add(movie("d", "tt4"));
    h.clock.advance(LOOKUP_PAUSE.as_millis() as i64 + 1);
    h.send("alice", "plex", bare("d"));
    h.send("alice", "plex", bare("e"));
    h.settle().await;
    assert_eq!(lookups(&plex), 3);
    let s = h.status("alice", "plex").await;
    assert_eq!(s.dropped_no_ids, 4, "d was found, e is not on the server");
}
