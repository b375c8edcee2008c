//! The scheduled sync (DESIGN.md §6 rule 8): timers, rule-8 comparisons, paging, rate limit,
//! checkpoints and the persisted next-run time. All under paused tokio time.

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::*;
use watchstate_actors::event::EventKind;
use watchstate_actors::store::PairKey;
use watchstate_actors::{PairSpec, SyncNowError, SyncSettings};

type Fakes = std::collections::HashMap<PairKey, std::sync::Arc<FakeBackend>>;

fn fake(fakes: &Fakes, backend: &str) -> std::sync::Arc<FakeBackend> {
    fakes[&PairKey::new("alice", backend)].clone()
}

const HOUR: Duration = Duration::from_secs(3600);

fn synced(user: &str, backend: &str) -> PairSpec {
    PairSpec {
        sync_interval: Some(12 * HOUR),
        ..spec(user, backend)
    }
}

fn three_synced() -> Vec<PairSpec> {
    vec![
        synced("alice", "plex"),
        synced("alice", "jelly"),
        synced("alice", "emby"),
    ]
}

/// Put the same movie on each backend as `<prefix>-<backend>`, played where listed.
fn library(fakes: &Fakes, imdb: &str, prefix: &str, played_on: &[&str]) {
    for b in ["plex", "jelly", "emby"] {
        if let Some(fake) = fakes.get(&PairKey::new("alice", b)) {
            let mut m = movie(&format!("{prefix}-{b}"), imdb);
            if played_on.contains(&b) {
                m.played = true;
                m.last_played_at = Some(1_600_000_000_000);
            }
            fake.add(m);
        }
    }
}

async fn wait_runs(h: &Harness, runs: u64) {
    eventually("every pair to finish its sync run", || async {
        h.handle
            .all_status()
            .await
            .iter()
            .all(|s| s.sync.runs_ok >= runs && !s.sync.running)
    })
    .await;
    h.settle().await;
}

/// Run a sync of `pair` now and wait until it is its `runs`-th completed one.
async fn run_sync(h: &Harness, pair: &PairKey, runs: u64) {
    h.handle.sync_now(pair).await.unwrap();
    eventually("the run to finish", || async {
        let s = h.status(&pair.user, &pair.backend).await;
        s.sync.runs_ok >= runs && !s.sync.running
    })
    .await;
    h.settle().await;
}

#[tokio::test(start_paused = true)]
async fn first_sync_pushes_played_only_on_one_backend_and_never_unmarks() {
    let h = Harness::start_filled(three_synced(), SyncSettings::default(), |h| {
        library(h, "tt1", "a", &["plex"]);
        library(h, "tt2", "b", &[]);
        library(h, "tt3", "c", &["plex", "jelly", "emby"]);
    })
    .await;
    wait_runs(&h, 1).await;
    for b in ["jelly", "emby"] {
        assert_eq!(
            h.backend("alice", b).writes(),
            vec![Call::SetPlayed(format!("a-{b}"), true)],
            "{b}"
        );
    }
    assert!(h.backend("alice", "plex").writes().is_empty());
    let s = h.status("alice", "plex").await;
    assert_eq!((s.items, s.sync.seen, s.sync.total), (3, 3, Some(3)));
    assert_eq!(s.sync.last_result.as_deref(), Some("ok"));
    assert!(s.sync.next_at.unwrap() > s.sync.last_finished.unwrap() + 10 * 3_600_000);
}

#[tokio::test(start_paused = true)]
async fn a_new_all_unplayed_backend_changes_nothing_elsewhere_and_gets_the_played_states() {
    let specs = vec![synced("alice", "plex"), synced("alice", "emby")];
    let h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        library(h, "tt1", "a", &["plex"]);
        library(h, "tt2", "b", &["plex"]);
    })
    .await;
    wait_runs(&h, 1).await;
    assert!(
        h.backend("alice", "plex").writes().is_empty(),
        "nothing unmarked on plex"
    );
    let mut emby = h.backend("alice", "emby").writes();
    emby.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        emby,
        vec![
            Call::SetPlayed("a-emby".into(), true),
            Call::SetPlayed("b-emby".into(), true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_unmark_or_a_mark_made_without_webhook_is_found_by_the_next_run() {
    let h = Harness::start_filled(three_synced(), SyncSettings::default(), |h| {
        library(h, "tt1", "a", &["plex", "jelly", "emby"]);
        library(h, "tt2", "b", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    assert!(h.backends.values().all(|b| b.writes().is_empty()));

    // Unmarked on plex, no webhook: the API-triggered run finds it.
    h.backend("alice", "plex").set_state("a-plex", false, None);
    h.clock.advance(60_000);
    h.handle
        .sync_now(&PairKey::new("alice", "plex"))
        .await
        .unwrap();
    h.settle().await;
    eventually("the unmark to reach jelly and emby", || async {
        ["jelly", "emby"]
            .iter()
            .all(|b| !h.backend("alice", b).item(&format!("a-{b}")).played)
    })
    .await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("a-jelly".into(), false)]
    );

    // Marked on jelly, no webhook: the timer-driven run 12 h later finds it.
    h.backend("alice", "jelly").set_state("b-jelly", true, None);
    tokio::time::sleep(14 * HOUR).await;
    wait_runs(&h, 2).await;
    eventually("the mark to reach plex and emby", || async {
        ["plex", "emby"]
            .iter()
            .all(|b| h.backend("alice", b).item(&format!("b-{b}")).played)
    })
    .await;
    assert_eq!(
        h.backend("alice", "plex").writes(),
        vec![Call::SetPlayed("b-plex".into(), true)]
    );
}

/// A server that lists items without the user's play state (Jellyfin or Emby leaving
/// `UserData` out): the items stay known, but nothing is unmarked, here or elsewhere, and a
/// new item is not taken as unplayed either.
#[tokio::test(start_paused = true)]
async fn items_listed_without_their_play_state_change_nothing() {
    let h = Harness::start_filled(three_synced(), SyncSettings::default(), |h| {
        library(h, "tt1", "a", &["plex", "jelly", "emby"]);
    })
    .await;
    wait_runs(&h, 1).await;
    assert!(h.backends.values().all(|b| b.writes().is_empty()));

    let jelly = h.backend("alice", "jelly");
    jelly.update("a-jelly", |m| {
        m.played = false;
        m.last_played_at = None;
        m.state_unknown = true;
    });
    let mut new = movie("n-jelly", "tt9");
    new.state_unknown = true;
    new.position_ms = 600_000;
    jelly.add(new);
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "jelly"), 2).await;
    assert!(h.backends.values().all(|b| b.writes().is_empty()));
    let s = h.status("alice", "jelly").await;
    assert_eq!((s.items, s.sync.changed), (2, 0));
    for b in ["plex", "emby"] {
        assert!(h.backend("alice", b).item(&format!("a-{b}")).played, "{b}");
    }
}

/// Two copies of one film on Plex (say an HD and a 4K library), one played, one not. The
/// copy listed second is left alone, never read as the user unmarking the film: run after
/// run nothing is unmarked anywhere, whichever copy comes first, and the record stays with
/// the first copy (no change counted again and again). That copy then follows the film.
#[tokio::test(start_paused = true)]
async fn a_second_copy_of_a_film_never_unmarks_it_elsewhere() {
    for (played, unplayed) in [("a1-plex", "a2-plex"), ("a2-plex", "a1-plex")] {
        let mut h = Harness::start_filled(three_synced(), SyncSettings::default(), |h| {
            for b in ["jelly", "emby"] {
                let mut m = movie(&format!("a-{b}"), "tt1");
                m.played = true;
                m.last_played_at = Some(1_600_000_000_000);
                fake(h, b).add(m);
            }
            let plex = fake(h, "plex");
            let mut copy = movie(played, "tt1");
            copy.played = true;
            copy.last_played_at = Some(1_600_000_000_000);
            plex.add(copy);
            plex.add(movie(unplayed, "tt1"));
        })
        .await;
        wait_runs(&h, 1).await;
        for run in 2..=3 {
            h.clock.advance(60_000);
            run_sync(&h, &PairKey::new("alice", "plex"), run).await;
            assert_eq!(h.status("alice", "plex").await.sync.changed, 0, "run {run}");
        }
        for b in ["jelly", "emby"] {
            assert!(
                h.backend("alice", b).writes().is_empty(),
                "{b} was written to ({played} played): {:?}",
                h.backend("alice", b).writes()
            );
            assert!(h.backend("alice", b).item(&format!("a-{b}")).played);
        }
        let keys = h.store_keys("alice/plex/i/");
        assert_eq!(
            keys,
            vec!["alice/plex/i/a1-plex".to_string()],
            "{played} played"
        );
        if played == "a1-plex" {
            // The copy the record follows is played: an unmark elsewhere reaches it.
            h.clock.advance(60_000);
            h.send(
                "alice",
                "jelly",
                event(EventKind::MarkUnplayed, &movie("a-jelly", "tt1")),
            );
            h.settle().await;
            assert_eq!(
                h.backend("alice", "plex").writes(),
                vec![Call::SetPlayed("a1-plex".into(), false)]
            );
        }
    }
}

/// A film deleted on Jellyfin and added again comes back under a new id, unplayed: its
/// `ItemAdded` and the next sync do not unmark it on the other servers, and the new copy
/// gets the played state they hold.
#[tokio::test(start_paused = true)]
async fn a_film_added_again_under_a_new_id_does_not_unmark_it_elsewhere() {
    let mut h = Harness::start_filled(three_synced(), SyncSettings::default(), |h| {
        library(h, "tt1", "a", &["plex", "jelly", "emby"]);
    })
    .await;
    wait_runs(&h, 1).await;
    let jelly = h.backend("alice", "jelly");
    jelly.state.lock().unwrap().items.remove("a-jelly");
    let again = movie("z-jelly", "tt1");
    jelly.add(again.clone());
    h.send("alice", "jelly", event(EventKind::ItemAdded, &again));
    h.settle().await;
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "jelly"), 2).await;
    for b in ["plex", "emby"] {
        assert!(
            h.backend("alice", b).writes().is_empty(),
            "{b}: {:?}",
            h.backend("alice", b).writes()
        );
    }
    // The copy added again gets the film's played state from the other servers.
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("z-jelly".into(), true)]
    );
    // The old record is gone from the store: a restart cannot bring the deleted id back.
    let keys = h.store_keys("alice/jelly/i/");
    assert!(!keys.iter().any(|k| k.ends_with("/a-jelly")), "{keys:?}");
    assert!(keys.iter().any(|k| k.ends_with("/z-jelly")), "{keys:?}");
}

#[tokio::test(start_paused = true)]
async fn twenty_thousand_items_sync_with_paging_and_the_rate_limit() {
    let settings = SyncSettings {
        page_size: 200,
        max_requests_per_second: 5.0,
        ..SyncSettings::default()
    };
    let h = Harness::start_filled(vec![synced("alice", "plex")], settings, |h| {
        let fake = fake(h, "plex");
        for i in 0..20_000 {
            let mut m = movie(&format!("{i:05}"), &format!("tt{i}"));
            m.played = i % 3 == 0;
            fake.add(m);
        }
        fake.state.lock().unwrap().skipped_per_page = 1;
    })
    .await;
    wait_runs(&h, 1).await;
    let s = h.status("alice", "plex").await;
    // Progress counts the unreadable entries too, so that it reaches the server's total.
    assert_eq!(
        (s.items, s.sync.seen, s.sync.total),
        (20_000, 20_100, Some(20_100))
    );
    assert_eq!(s.sync.skipped, 100, "one unreadable item per page, counted");
    assert_eq!(
        s.sync.changed, 6_667,
        "first sight: played items are changes"
    );
    let lists: Vec<_> = h
        .backend("alice", "plex")
        .calls()
        .into_iter()
        .filter(|(_, c)| matches!(c, Call::List(_)))
        .collect();
    assert_eq!(lists.len(), 100);
    for w in lists.windows(2) {
        assert!(
            w[1].0 - w[0].0 >= Duration::from_millis(200),
            "at most 5 requests per second"
        );
    }
    let v = h.handle.item_states("alice", "imdb", "tt19998").await;
    assert!(v[0].1.as_ref().unwrap().item.as_ref().unwrap().played);
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_sync_resumes_from_its_checkpoint_even_after_a_restart() {
    let settings = SyncSettings {
        page_size: 100,
        ..SyncSettings::default()
    };
    let h = Harness::start_filled(vec![synced("alice", "plex")], settings, |h| {
        let fake = fake(h, "plex");
        for i in 0..1000 {
            fake.add(movie(&format!("{i:04}"), &format!("tt{i}")));
        }
        fake.state.lock().unwrap().list_fail_at.push("500".into());
    })
    .await;
    eventually("the first run to fail", || async {
        h.status("alice", "plex").await.sync.runs_failed == 1
    })
    .await;
    let s = h.status("alice", "plex").await;
    assert!(s
        .sync
        .last_result
        .unwrap()
        .starts_with("failed: media server error HTTP 500"));
    assert_eq!(s.sync.seen, 500);
    assert!(s.last_error.is_some());

    let h = h.restart().await;
    wait_runs(&h, 1).await;
    let lists = h.backend("alice", "plex").lists();
    let resumed = &lists[6..];
    assert_eq!(
        resumed.first(),
        Some(&Some("500".to_string())),
        "resumed at the checkpoint: {lists:?}"
    );
    assert_eq!(resumed.len(), 5);
    let s = h.status("alice", "plex").await;
    assert_eq!((s.items, s.sync.seen), (1000, 1000));
}

#[tokio::test(start_paused = true)]
async fn the_next_run_time_survives_a_restart() {
    let spec = PairSpec {
        sync_interval: Some(HOUR),
        ..spec("alice", "plex")
    };
    let h = Harness::start_filled(vec![spec], SyncSettings::default(), |h| {
        library(h, "tt1", "a", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    let next = h.status("alice", "plex").await.sync.next_at.unwrap();
    let h = h.restart().await;
    assert_eq!(
        h.status("alice", "plex").await.sync.next_at,
        Some(next),
        "not rescheduled"
    );
    let now = watchstate_actors::Clock::now_ms(&*h.clock);
    // Just before the persisted time: no run (a restart does not repeat one) ...
    tokio::time::sleep(Duration::from_millis((next - now - 1_000) as u64)).await;
    assert_eq!(h.backend("alice", "plex").lists().len(), 1);
    // ... and just after it: the run happens (a restart does not skip one).
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_runs(&h, 2).await;
    assert_eq!(h.backend("alice", "plex").lists().len(), 2);
}

/// A page read before a change and handled after it is stale for that item: Jellyfin's page
/// shows the film unplayed, but before the page is handled a Plex scrobble is pushed to
/// Jellyfin and confirmed. The page must not read as the user unmarking it on Jellyfin.
#[tokio::test(start_paused = true)]
async fn a_page_read_before_a_change_does_not_undo_it() {
    let specs = vec![synced("alice", "plex"), synced("alice", "jelly")];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        library(h, "tt1", "a", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    let jelly = h.backend("alice", "jelly");
    jelly.state.lock().unwrap().pages_read_before_gate = true;
    let held = jelly.list_gate.lock().await;
    let pair = PairKey::new("alice", "jelly");
    h.handle.sync_now(&pair).await.unwrap();
    eventually("the page to be read", || async { jelly.lists().len() == 2 }).await;
    h.clock.advance(60_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &movie("a-plex", "tt1")),
    );
    eventually("the push to Jellyfin", || async {
        jelly.item("a-jelly").played
    })
    .await;
    h.settle().await;
    drop(held);
    eventually("the run to finish", || async {
        h.status("alice", "jelly").await.sync.runs_ok == 2
    })
    .await;
    h.settle().await;
    assert!(
        h.backend("alice", "plex").writes().is_empty(),
        "the stale page unmarked Plex: {:?}",
        h.backend("alice", "plex").writes()
    );
    assert!(jelly.item("a-jelly").played);
    assert_eq!(
        jelly.writes(),
        vec![Call::SetPlayed("a-jelly".into(), true)]
    );
}

/// A backend added later lists a film as played but gives no date (Jellyfin can): that play
/// is of unknown age, so it does not undo an unmark the user made on the other servers.
#[tokio::test(start_paused = true)]
async fn a_played_state_without_a_date_does_not_beat_an_earlier_unmark() {
    let specs = vec![
        synced("alice", "plex"),
        synced("alice", "jelly"),
        spec("alice", "emby"),
    ];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        library(h, "tt1", "a", &["plex", "jelly"]);
        let mut undated = movie("a-emby", "tt1");
        undated.played = true;
        fake(h, "emby").add(undated);
    })
    .await;
    eventually("plex and jelly to finish their first run", || async {
        let (p, j) = (
            h.status("alice", "plex").await,
            h.status("alice", "jelly").await,
        );
        p.sync.runs_ok == 1 && j.sync.runs_ok == 1
    })
    .await;
    h.clock.advance(60_000);
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkUnplayed, &movie("a-plex", "tt1")),
    );
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("a-jelly".into(), false)]
    );
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "emby"), 1).await;
    assert!(
        h.backend("alice", "plex").writes().is_empty(),
        "{:?}",
        h.backend("alice", "plex").writes()
    );
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("a-jelly".into(), false)]
    );
    assert!(!h.backend("alice", "jelly").item("a-jelly").played);
}

/// Tautulli reports "watched" at its own threshold (85 %), Plex marks played at 90 %: a stop
/// at 87 % leaves Plex unplayed. The next Plex sync must not read that as the user unmarking
/// the film: Jellyfin, which got the play, keeps it.
#[tokio::test(start_paused = true)]
async fn a_tautulli_watched_below_plexs_threshold_is_not_unmarked_by_the_next_sync() {
    let specs = vec![synced("alice", "plex"), synced("alice", "jelly")];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        library(h, "tt1", "a", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    h.clock.advance(60_000);
    let mut watched = event(EventKind::Scrobble, &movie("a-plex", "tt1"));
    watched.sender = watchstate_actors::event::Sender::Tautulli;
    h.send("alice", "plex", watched);
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("a-jelly".into(), true)]
    );
    // Plex itself still has it unplayed (stopped at 87 %).
    assert!(!h.backend("alice", "plex").item("a-plex").played);
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "plex"), 2).await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("a-jelly".into(), true)],
        "the sync unmarked the film on Jellyfin"
    );
    assert!(h.backend("alice", "jelly").item("a-jelly").played);
    // The sync's catch-up gives Plex the play its siblings hold.
    assert_eq!(
        h.backend("alice", "plex").writes(),
        vec![Call::SetPlayed("a-plex".into(), true)]
    );
}

/// The same dateless play reaches a backend the user adds later, through its first sync's
/// catch-up.
#[tokio::test(start_paused = true)]
async fn a_played_state_without_a_date_reaches_a_backend_added_later() {
    let mut h = Harness::start_filled(
        vec![synced("alice", "jelly")],
        SyncSettings::default(),
        |h| {
            let mut undated = movie("a-jelly", "tt1");
            undated.played = true;
            fake(h, "jelly").add(undated);
        },
    )
    .await;
    wait_runs(&h, 1).await;
    // The user adds Plex to the configuration and restarts.
    let plex = FakeBackend::new();
    plex.add(movie("a-plex", "tt1"));
    h.backends
        .insert(PairKey::new("alice", "plex"), plex.clone());
    h.specs.push(synced("alice", "plex"));
    let h = h.restart().await;
    eventually("plex's first run", || async {
        h.status("alice", "plex").await.sync.runs_ok == 1
    })
    .await;
    h.settle().await;
    assert_eq!(plex.writes(), vec![Call::SetPlayed("a-plex".into(), true)]);
    // Sent without a date, not as played in January 1970.
    assert_eq!(plex.item("a-plex").last_played_at, None);
}

/// A store over memory that counts the writes of keys under `prefix` and, while `fail` is
/// set, fails every batch that touches them (that pair's actor fails; the others go on).
struct CountingStore {
    inner: watchstate_actors::store::MemoryStore,
    prefix: &'static str,
    writes: std::sync::atomic::AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

impl CountingStore {
    fn new(prefix: &'static str) -> Arc<Self> {
        Arc::new(CountingStore {
            inner: watchstate_actors::store::MemoryStore::new(),
            prefix,
            writes: Default::default(),
            fail: Default::default(),
        })
    }
}

impl watchstate_actors::store::Store for CountingStore {
    fn get(
        &self,
        tree: watchstate_actors::store::Tree,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, watchstate_actors::store::StoreError> {
        self.inner.get(tree, key)
    }
    fn scan_prefix(
        &self,
        tree: watchstate_actors::store::Tree,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, watchstate_actors::store::StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn apply(
        &self,
        batch: watchstate_actors::store::Batch,
    ) -> Result<(), watchstate_actors::store::StoreError> {
        let ours = |op: &&watchstate_actors::store::Op| op.key.starts_with(self.prefix.as_bytes());
        if self.fail.load(std::sync::atomic::Ordering::SeqCst)
            && batch.ops.iter().any(|op| ours(&op))
        {
            return Err(watchstate_actors::store::StoreError("disk on fire".into()));
        }
        let n = batch
            .ops
            .iter()
            .filter(|op| op.value.is_some() && ours(op))
            .count();
        self.writes
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), watchstate_actors::store::StoreError> {
        Ok(())
    }
}

/// A film Jellyfin does not have waits there as a pending state. Every later sync of
/// Jellyfin gets it again from Plex's catch-up: the same state is not written again.
#[tokio::test(start_paused = true)]
async fn a_catch_up_that_resends_a_pending_state_writes_nothing() {
    let store = CountingStore::new("alice/jelly/p/");
    let plex = FakeBackend::new();
    let mut m = movie("a-plex", "tt1");
    m.played = true;
    m.last_played_at = Some(1_600_000_000_000);
    plex.add(m);
    let backends: std::collections::HashMap<PairKey, Arc<FakeBackend>> = [
        (PairKey::new("alice", "plex"), plex),
        (PairKey::new("alice", "jelly"), FakeBackend::new()),
    ]
    .into_iter()
    .collect();
    let h = Harness::start_with(
        vec![synced("alice", "plex"), synced("alice", "jelly")],
        SyncSettings::default(),
        store.clone(),
        Arc::new(watchstate_actors::TestClock::new(1_700_000_000_000)),
        backends,
    )
    .await;
    wait_runs(&h, 1).await;
    let after_first = store.writes.load(std::sync::atomic::Ordering::SeqCst);
    assert!(after_first >= 1, "the pending state was never written");
    for run in 2..=3 {
        h.clock.advance(60_000);
        run_sync(&h, &PairKey::new("alice", "jelly"), run).await;
    }
    assert_eq!(
        store.writes.load(std::sync::atomic::Ordering::SeqCst),
        after_first,
        "the same pending state was written again"
    );
}

#[tokio::test(start_paused = true)]
async fn sync_now_refuses_a_second_run_and_webhooks_flow_during_a_run() {
    let specs = vec![spec("alice", "plex"), spec("alice", "jelly")];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        library(h, "tt1", "a", &[]);
    })
    .await;
    let plex = PairKey::new("alice", "plex");
    let gate = h.backend("alice", "plex");
    let held = gate.list_gate.lock().await;
    h.handle.sync_now(&plex).await.unwrap();
    assert_eq!(
        h.handle.sync_now(&plex).await,
        Err(SyncNowError::AlreadyRunning(plex.clone()))
    );
    assert_eq!(
        h.handle.sync_now(&PairKey::new("zed", "plex")).await,
        Err(SyncNowError::UnknownPair(PairKey::new("zed", "plex")))
    );
    let s = h.status("alice", "plex").await;
    assert!(s.sync.running);
    assert_eq!(s.state, watchstate_actors::status::ActorState::Syncing);
    // Webhooks are applied while the sync waits on the server.
    h.send(
        "alice",
        "jelly",
        event(EventKind::ItemAdded, &movie("a-jelly", "tt1")),
    );
    h.send(
        "alice",
        "plex",
        event(EventKind::ItemAdded, &movie("a-plex", "tt1")),
    );
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &movie("a-plex", "tt1")),
    );
    eventually("the webhook to be pushed during the run", || async {
        h.backend("alice", "jelly").writes() == vec![Call::SetPlayed("a-jelly".into(), true)]
    })
    .await;
    drop(held);
    eventually("the run to finish", || async {
        h.status("alice", "plex").await.sync.runs_ok == 1
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_backend_shows_in_status_and_the_actor_keeps_running() {
    let h = Harness::start_filled(
        vec![synced("alice", "plex")],
        SyncSettings::default(),
        |h| {
            fake(h, "plex").state.lock().unwrap().unreachable = true;
        },
    )
    .await;
    eventually("the run to fail", || async {
        h.status("alice", "plex").await.sync.runs_failed == 1
    })
    .await;
    let s = h.status("alice", "plex").await;
    assert_eq!(
        s.sync.last_result.as_deref(),
        Some("failed: network error: connection refused")
    );
    assert!(s.last_error.unwrap().message.contains("connection refused"));
    assert!(h.handle.ready().ready);
    assert_eq!(s.restarts, 0);
}

/// A library ignored after its items were synced: the next run marks the items it lists in
/// that library, and from then on their webhooks change nothing and the siblings' changes are
/// not written to them. A run that lists them outside it again (the config changed back)
/// unmarks them.
#[tokio::test(start_paused = true)]
async fn items_known_before_their_library_was_ignored_are_left_alone_after_the_next_run() {
    let specs = vec![synced("alice", "plex"), synced("alice", "jelly")];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        library(h, "tt1", "a", &[]);
        library(h, "tt2", "b", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    let jelly = PairKey::new("alice", "jelly");
    // The library of a-jelly is ignored from now on.
    let mut kids = h.backend("alice", "jelly").item("a-jelly");
    kids.library_id = Some("kids".into());
    h.backend("alice", "jelly").add(kids);
    for s in h.specs.iter_mut().filter(|s| s.key == jelly) {
        s.ignore_libraries = vec!["kids".into()];
    }
    let mut h = h.restart().await;
    run_sync(&h, &jelly, 1).await;

    // A webhook about it on jelly: ignored, nothing written to plex.
    let mut played = movie("a-jelly", "tt1");
    played.played = true;
    h.send("alice", "jelly", event(EventKind::MarkPlayed, &played));
    h.settle().await;
    let s = h.status("alice", "jelly").await;
    let last = s.last_event.expect("the webhook was applied");
    assert_eq!(
        last.reason.as_deref(),
        Some("library ignored by ignore_libraries"),
        "{last:?}"
    );
    // Plex marks both: only b reaches jelly.
    for id in ["a-plex", "b-plex"] {
        h.send(
            "alice",
            "plex",
            event(
                EventKind::MarkPlayed,
                &movie(id, if id == "a-plex" { "tt1" } else { "tt2" }),
            ),
        );
    }
    eventually("b to reach jelly", || async {
        !h.backend("alice", "jelly").writes().is_empty()
    })
    .await;
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("b-jelly".into(), true)]
    );
    assert!(h.backend("alice", "plex").writes().is_empty());

    // Moved out of the ignored library: the next run unmarks it, and its webhooks count again.
    let mut moved = h.backend("alice", "jelly").item("a-jelly");
    moved.library_id = None;
    h.backend("alice", "jelly").add(moved);
    run_sync(&h, &jelly, 2).await;
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkUnplayed, &movie("a-jelly", "tt1")),
    );
    h.settle().await;
    let last = h.status("alice", "jelly").await.last_event.unwrap();
    assert_ne!(
        last.reason.as_deref(),
        Some("library ignored by ignore_libraries")
    );
    eventually("the unmark to reach plex", || async {
        h.backend("alice", "plex").writes() == vec![Call::SetPlayed("a-plex".into(), false)]
    })
    .await;
}

/// The state a pair holds for an item in an ignored library is no longer followed: a sibling
/// that finishes a sync is not sent it. Here Plex is added after Jellyfin's library was
/// ignored; Jellyfin's old "played" would otherwise be pushed to it.
#[tokio::test(start_paused = true)]
async fn a_catch_up_leaves_out_items_of_ignored_libraries() {
    let h = Harness::start_filled(
        vec![synced("alice", "jelly")],
        SyncSettings::default(),
        |h| {
            let mut m = movie("a-jelly", "tt1");
            m.played = true;
            m.last_played_at = Some(1_600_000_000_000);
            fake(h, "jelly").add(m);
        },
    )
    .await;
    wait_runs(&h, 1).await;
    let jelly = PairKey::new("alice", "jelly");
    let plex = PairKey::new("alice", "plex");
    let mut kids = h.backend("alice", "jelly").item("a-jelly");
    kids.library_id = Some("kids".into());
    h.backend("alice", "jelly").add(kids);
    let mut h = h;
    for s in h.specs.iter_mut().filter(|s| s.key == jelly) {
        s.ignore_libraries = vec!["kids".into()];
    }
    // Plex joins, with the movie unplayed and no scheduled sync of its own.
    h.specs.push(spec("alice", "plex"));
    let plex_fake = FakeBackend::new();
    plex_fake.add(movie("a-plex", "tt1"));
    h.backends.insert(plex.clone(), plex_fake);
    let h = h.restart().await;
    run_sync(&h, &jelly, 2).await;

    run_sync(&h, &plex, 1).await;
    assert_eq!(h.status("alice", "plex").await.items, 1);
    assert!(
        h.backend("alice", "plex").writes().is_empty(),
        "{:?}",
        h.backend("alice", "plex").writes()
    );
}

/// Changes the siblings make to an item this pair's sync found only in an ignored library
/// are dropped, not kept pending for an item that will never be registered here; a change
/// kept from before its library was ignored goes at the next run. A copy of the same film in
/// a library that is not ignored still gets them.
#[tokio::test(start_paused = true)]
async fn changes_to_items_of_ignored_libraries_are_not_kept_pending() {
    let mut jelly_spec = synced("alice", "jelly");
    jelly_spec.ignore_libraries = vec!["kids".into()];
    let specs = vec![synced("alice", "plex"), jelly_spec];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        let mut kids = movie("k-jelly", "tt9");
        kids.library_id = Some("kids".into());
        fake(h, "jelly").add(kids);
        fake(h, "jelly").add(movie("m-jelly", "tt8"));
        // The same film in both libraries.
        let mut copy = movie("d-jelly-kids", "tt7");
        copy.library_id = Some("kids".into());
        fake(h, "jelly").add(copy);
        fake(h, "jelly").add(movie("d-jelly", "tt7"));
        for (id, imdb) in [("k-plex", "tt9"), ("m-plex", "tt8"), ("d-plex", "tt7")] {
            let mut m = movie(id, imdb);
            m.played = true;
            m.last_played_at = Some(1_600_000_000_000);
            fake(h, "plex").add(m);
        }
    })
    .await;
    wait_runs(&h, 1).await;
    // Both runs are done, catch-ups included: only the films outside "kids" were written.
    eventually("m and d to reach jelly", || async {
        let jelly = h.backend("alice", "jelly");
        jelly.item("m-jelly").played && jelly.item("d-jelly").played
    })
    .await;
    h.settle().await;
    let mut writes = h.backend("alice", "jelly").writes();
    writes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        writes,
        vec![
            Call::SetPlayed("d-jelly".into(), true),
            Call::SetPlayed("m-jelly".into(), true)
        ]
    );
    let s = h.status("alice", "jelly").await;
    assert_eq!((s.items, s.pending), (2, 0), "{s:?}");
    assert_eq!((s.sync.seen, s.sync.ignored), (4, 2), "{s:?}");
    // A later change on plex: dropped as well.
    let mut unplayed = movie("k-plex", "tt9");
    unplayed.played = false;
    h.send("alice", "plex", event(EventKind::MarkUnplayed, &unplayed));
    h.settle().await;
    assert_eq!(h.status("alice", "jelly").await.pending, 0);
}

/// Plex and Jellyfin with film a; Jellyfin ignores "kids", and a-jelly, synced before it was
/// put there, is marked by a second run.
async fn a_jelly_marked_in_kids() -> (Harness, PairKey) {
    let mut jelly_spec = synced("alice", "jelly");
    jelly_spec.ignore_libraries = vec!["kids".into()];
    let specs = vec![synced("alice", "plex"), jelly_spec];
    let h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        library(h, "tt1", "a", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    let jelly = PairKey::new("alice", "jelly");
    let mut kids = h.backend("alice", "jelly").item("a-jelly");
    kids.library_id = Some("kids".into());
    h.backend("alice", "jelly").add(kids);
    run_sync(&h, &jelly, 2).await;
    (h, jelly)
}

/// Marks are made for the libraries ignored at the time: when the configuration stops
/// ignoring one, the next start clears them (the next sync marks what is still ignored), so
/// the items of a library no longer ignored are followed at once.
#[tokio::test(start_paused = true)]
async fn marks_go_when_their_library_is_no_longer_ignored() {
    let (mut h, jelly) = a_jelly_marked_in_kids().await;
    let mut played = movie("a-jelly", "tt1");
    played.played = true;
    h.send("alice", "jelly", event(EventKind::MarkPlayed, &played));
    h.settle().await;
    let last = h.status("alice", "jelly").await.last_event.unwrap();
    assert_eq!(last.outcome, watchstate_actors::status::Outcome::Ignored);

    // Now "docs" is ignored instead: a-jelly is followed again without waiting for a sync.
    for s in h.specs.iter_mut().filter(|s| s.key == jelly) {
        s.ignore_libraries = vec!["docs".into()];
    }
    let mut h = h.restart().await;
    h.send("alice", "jelly", event(EventKind::MarkPlayed, &played));
    eventually("a to reach plex", || async {
        h.backend("alice", "plex").writes() == vec![Call::SetPlayed("a-plex".into(), true)]
    })
    .await;
}

/// A copy of a film in a followed library takes over the slot its marked copy (in an ignored
/// library) held: from its first webhook on it is followed, not only until the next event.
#[tokio::test(start_paused = true)]
async fn a_followed_copy_of_a_marked_item_is_followed() {
    let (mut h, _) = a_jelly_marked_in_kids().await;
    // The same film added to a followed library.
    h.backend("alice", "jelly").add(movie("a2-jelly", "tt1"));
    let mut copy = movie("a2-jelly", "tt1");
    copy.played = true;
    h.send("alice", "jelly", event(EventKind::MarkPlayed, &copy));
    eventually("the mark to reach plex", || async {
        h.backend("alice", "plex").writes() == vec![Call::SetPlayed("a-plex".into(), true)]
    })
    .await;
    h.clock.advance(60_000);
    copy.played = false;
    h.send("alice", "jelly", event(EventKind::MarkUnplayed, &copy));
    eventually("the unmark to reach plex", || async {
        h.backend("alice", "plex").writes().len() == 2
    })
    .await;
    assert_eq!(
        h.backend("alice", "plex").writes()[1],
        Call::SetPlayed("a-plex".into(), false)
    );
}

/// A url that reaches another server than `server_id` names (a copied configuration, two
/// servers): every sync reports it in the pair's status, and the sync still runs. The same
/// id written another way (dashes, case) is no mismatch.
#[tokio::test(start_paused = true)]
async fn a_server_answering_with_another_id_is_reported_by_the_sync() {
    let specs = vec![synced("alice", "jelly"), synced("bob", "jelly")];
    let h = Harness::start_filled(specs, SyncSettings::default(), |fakes| {
        let alice = &fakes[&PairKey::new("alice", "jelly")];
        alice.state.lock().unwrap().server_id = "srv-other".into();
        alice.add(movie("a-1", "tt1"));
        let bob = &fakes[&PairKey::new("bob", "jelly")];
        bob.state.lock().unwrap().server_id = "SRV-JELLY".into();
    })
    .await;
    let alice = PairKey::new("alice", "jelly");
    let bob = PairKey::new("bob", "jelly");
    run_sync(&h, &alice, 1).await;
    run_sync(&h, &bob, 1).await;

    let s = h.status("alice", "jelly").await;
    assert_eq!(s.sync.last_result.as_deref(), Some("ok"));
    assert_eq!(s.sync.seen, 1);
    let err = s.last_error.expect("the mismatch is reported");
    assert!(
        err.message.contains("\"srv-other\"") && err.message.contains("\"srv-jelly\""),
        "{}",
        err.message
    );
    assert_eq!(h.status("bob", "jelly").await.last_error, None);
}

/// Another server usually does not know the configured user: the listing fails, and the
/// failure's message keeps the mismatch, its likely cause.
#[tokio::test(start_paused = true)]
async fn a_failed_sync_on_another_server_keeps_the_mismatch_in_its_message() {
    let h = Harness::start_filled(
        vec![synced("alice", "jelly")],
        SyncSettings::default(),
        |f| {
            let mut st = f[&PairKey::new("alice", "jelly")].state.lock().unwrap();
            st.server_id = "srv-other".into();
            st.unreachable = true;
        },
    )
    .await;
    h.handle
        .sync_now(&PairKey::new("alice", "jelly"))
        .await
        .unwrap();
    eventually("the run to fail", || async {
        let s = h.status("alice", "jelly").await;
        s.sync.runs_failed >= 1 && !s.sync.running
    })
    .await;
    let err = h.status("alice", "jelly").await.last_error.unwrap();
    assert!(
        err.message.starts_with("scheduled sync failed: ")
            && err.message.contains("says its id is \"srv-other\""),
        "{}",
        err.message
    );
}

/// A backend that needs many plays at once (here from Plex's first sync): those pushes go out
/// at `sync.max_requests_per_second`, like the sync's own requests, and a user's change
/// reported by a webhook meanwhile does not wait behind them.
#[tokio::test(start_paused = true)]
async fn pushes_caused_by_a_sync_are_paced_and_a_users_change_goes_first() {
    let specs = vec![synced("alice", "plex"), spec("alice", "jelly")];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |h| {
        for i in 0..30 {
            let imdb = format!("tt70{i:02}");
            let mut p = movie(&format!("b{i}-plex"), &imdb);
            p.played = true;
            p.last_played_at = Some(1_600_000_000_000);
            fake(h, "plex").add(p);
            fake(h, "jelly").add(movie(&format!("b{i}-jelly"), &imdb));
        }
        fake(h, "plex").add(movie("live-plex", "tt7100"));
    })
    .await;
    // Jellyfin learns its items from webhooks (it has no scheduled sync here).
    for i in 0..30 {
        let item = movie(&format!("b{i}-jelly"), &format!("tt70{i:02}"));
        h.send("alice", "jelly", event(EventKind::ItemAdded, &item));
    }
    let live = movie("live-jelly", "tt7100");
    h.backend("alice", "jelly").add(live.clone());
    h.send("alice", "jelly", event(EventKind::ItemAdded, &live));
    let jelly = h.backend("alice", "jelly");
    eventually("the first pushes of Plex's sync", || async {
        !jelly.writes().is_empty()
    })
    .await;
    h.send(
        "alice",
        "plex",
        event(EventKind::MarkPlayed, &movie("live-plex", "tt7100")),
    );
    eventually("every push", || async { jelly.writes().len() == 31 }).await;

    let writes = jelly.writes();
    let live_at = writes
        .iter()
        .position(|w| *w == Call::SetPlayed("live-jelly".into(), true))
        .unwrap();
    assert!(
        live_at <= 2,
        "the user's change waited behind {live_at} pushes"
    );
    let times: Vec<_> = jelly
        .calls()
        .into_iter()
        .filter(|(_, c)| matches!(c, Call::SetPlayed(id, _) if id != "live-jelly"))
        .map(|(at, _)| at)
        .collect();
    assert_eq!(times.len(), 30);
    let span = *times.last().unwrap() - times[0];
    assert!(
        span >= Duration::from_millis(2_900),
        "30 pushes at 10 a second took {span:?}"
    );
}

/// Plex's answer to Jellyfin's catch-up lives only in mailboxes: here Plex's actor is down
/// when the first sync of a newly added Jellyfin asks, and the request dies with its mailbox.
/// Jellyfin asks again at the next start, instead of waiting for its next sync (12 h) to get
/// the play that Plex had before Jellyfin was added.
#[tokio::test(start_paused = true)]
async fn a_catch_up_cut_short_is_asked_again_at_the_next_start() {
    // Only Plex's writes fail while `fail` is set.
    let store = CountingStore::new("alice/plex/");
    let plex = FakeBackend::new();
    let mut played = movie("a-plex", "tt1");
    played.played = true;
    played.last_played_at = Some(1_600_000_000_000);
    plex.add(played.clone());
    let backends: std::collections::HashMap<PairKey, Arc<FakeBackend>> =
        [(PairKey::new("alice", "plex"), plex)]
            .into_iter()
            .collect();
    let mut h = Harness::start_with(
        vec![spec("alice", "plex")],
        SyncSettings::default(),
        store.clone(),
        Arc::new(watchstate_actors::TestClock::new(1_700_000_000_000)),
        backends,
    )
    .await;
    h.send("alice", "plex", event(EventKind::Scrobble, &played));
    h.settle().await;

    // The user adds Jellyfin and restarts; Plex's actor goes down (its writes fail) before
    // Jellyfin's first sync ends.
    let jelly = FakeBackend::new();
    jelly.add(movie("a-jelly", "tt1"));
    h.backends
        .insert(PairKey::new("alice", "jelly"), jelly.clone());
    h.specs.push(synced("alice", "jelly"));
    let mut h = h.restart().await;
    store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    // A new film on Plex: its registration fails, at every restart's replay too.
    h.send(
        "alice",
        "plex",
        event(EventKind::ItemAdded, &movie("z-plex", "tt9")),
    );
    eventually("Jellyfin's first sync while Plex is down", || async {
        h.status("alice", "plex").await.restarts >= 1
            && h.status("alice", "jelly").await.sync.runs_ok == 1
    })
    .await;
    h.settle().await;
    assert!(jelly.writes().is_empty(), "{:?}", jelly.writes());
    let stored_asks = || {
        use watchstate_actors::store::Store;
        let m = store
            .get(watchstate_actors::store::Tree::Pairs, b"alice/jelly/m")
            .unwrap()
            .unwrap();
        let meta: watchstate_actors::pair::PairMeta = serde_json::from_slice(&m).unwrap();
        meta.catch_up_from
    };
    assert_eq!(stored_asks(), vec![PairKey::new("alice", "plex")]);

    store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    let h = h.restart().await;
    eventually("the play to reach Jellyfin", || async {
        jelly.writes() == vec![Call::SetPlayed("a-jelly".into(), true)]
    })
    .await;
    // Answered: not asked again at the start after.
    eventually("the answer to be stored", || async {
        stored_asks().is_empty()
    })
    .await;
    drop(h);
}

/// A position reported after the scrobble (a pause in the credits) is no resume point once
/// the film is unmarked: the unmark clears it on every record, so a later catch-up sends no
/// position to a server where the user unmarked it.
#[tokio::test(start_paused = true)]
async fn a_position_taken_while_played_does_not_outlive_an_unmark() {
    let mut h = Harness::start_filled(three_synced(), SyncSettings::default(), |h| {
        library(h, "tt1", "a", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    let on = |h: &Harness, b: &str| h.backend("alice", b).item(&format!("a-{b}"));
    h.clock.advance(60_000);
    let plex = on(&h, "plex");
    h.send("alice", "plex", event(EventKind::MarkPlayed, &plex));
    h.settle().await;
    h.clock.advance(60_000);
    let mut pause = event(EventKind::Pause, &plex);
    pause.position_ms = Some(6_700_000);
    h.send("alice", "plex", pause);
    h.settle().await;
    assert!(["jelly", "emby"].iter().all(|b| on(&h, b).played));

    // Unmarked on Jellyfin: pushed to Plex and Emby.
    h.clock.advance(60_000);
    h.backend("alice", "jelly")
        .set_state("a-jelly", false, None);
    let jelly = on(&h, "jelly");
    h.send("alice", "jelly", event(EventKind::MarkUnplayed, &jelly));
    h.settle().await;
    assert!(!on(&h, "plex").played && !on(&h, "emby").played);
    let v = h.handle.item_states("alice", "imdb", "tt1").await;
    for (pair, state) in &v {
        let item = state.as_ref().unwrap().item.as_ref().unwrap();
        assert_eq!((item.played, item.position_ms), (false, 0), "{pair:?}");
    }

    // Jellyfin's next run asks its siblings for what it missed: no resume point comes back.
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "jelly"), 2).await;
    let writes = h.backend("alice", "jelly").writes();
    assert_eq!(
        writes,
        vec![Call::SetPlayed("a-jelly".into(), true)],
        "only the first scrobble is written to Jellyfin"
    );
}

/// A media server reinstalled with a fresh database behind the same url: a new server id,
/// every item unplayed, the item ids reused for other films. Read against the old records
/// that would unmark everything elsewhere (and mix films up); instead the records are
/// forgotten, the run reads it as a backend just added, and it gets the user's states back.
#[tokio::test(start_paused = true)]
async fn a_server_replaced_behind_the_url_unmarks_nothing_and_gets_the_states_back() {
    let h = Harness::start_filled(three_synced(), SyncSettings::default(), |f| {
        library(f, "tt1", "a", &["plex", "jelly", "emby"]);
        library(f, "tt2", "b", &["plex", "jelly", "emby"]);
        f[&PairKey::new("alice", "jelly")]
            .state
            .lock()
            .unwrap()
            .server_id = "srv-jelly".into();
    })
    .await;
    wait_runs(&h, 1).await;
    assert!(h.backends.values().all(|b| b.writes().is_empty()));
    let queued_before = h.status("alice", "jelly").await;
    assert_eq!(queued_before.items, 2);

    // Reinstalled: a new id, nothing played, and "a-jelly" is now the other film.
    let jelly = h.backend("alice", "jelly");
    {
        let mut st = jelly.state.lock().unwrap();
        st.server_id = "srv-jelly-new".into();
        st.items.clear();
    }
    jelly.add(movie("a-jelly", "tt2"));
    jelly.add(movie("c-jelly", "tt1"));
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "jelly"), 2).await;
    h.settle().await;
    for b in ["plex", "emby"] {
        assert!(
            h.backend("alice", b).writes().is_empty(),
            "{b} was written: {:?}",
            h.backend("alice", b).writes()
        );
        assert!(h.backend("alice", b).item(&format!("a-{b}")).played);
    }
    // The siblings' catch-up marks both films played on the new server, each under its id.
    eventually("both films played on the new server", || async {
        jelly.item("a-jelly").played && jelly.item("c-jelly").played
    })
    .await;
    let mut writes = jelly.writes();
    writes.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(
        writes,
        vec![
            Call::SetPlayed("a-jelly".into(), true),
            Call::SetPlayed("c-jelly".into(), true)
        ]
    );
    let s = h.status("alice", "jelly").await;
    assert_eq!(s.items, 2);
    let err = s.last_error.expect("the replacement is reported");
    assert!(
        err.message.contains("another server") && err.message.contains("srv-jelly-new"),
        "{}",
        err.message
    );
    // A restart keeps the new server's records: the next run forgets nothing.
    let h = h.restart().await;
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "jelly"), 3).await;
    let s = h.status("alice", "jelly").await;
    assert_eq!(s.items, 2);
    assert!(
        !s.last_error.is_some_and(|e| e.message.contains("forgotten")
            && e.at > watchstate_actors::Clock::now_ms(h.clock.as_ref()) - 30_000)
    );
}

/// Plex and Jellyfin with four films played on both; Plex's server id is set.
async fn four_played(page_size: usize) -> Harness {
    let settings = SyncSettings {
        page_size,
        ..SyncSettings::default()
    };
    let specs = vec![synced("alice", "plex"), synced("alice", "jelly")];
    let h = Harness::start_filled(specs, settings, |f| {
        for (i, imdb) in ["tt1", "tt2", "tt3", "tt4"].iter().enumerate() {
            for b in ["plex", "jelly"] {
                let mut m = movie(&format!("{i}-{b}"), imdb);
                m.played = true;
                m.last_played_at = Some(1_600_000_000_000);
                fake(f, b).add(m);
            }
        }
        fake(f, "plex").state.lock().unwrap().server_id = "srv-plex".into();
    })
    .await;
    wait_runs(&h, 1).await;
    assert!(h.backends.values().all(|b| b.writes().is_empty()));
    h
}

/// The server replaced between a run that failed half way and the run that resumes it from
/// its checkpoint: the resumed run asks who the server is too, and unmarks nothing.
#[tokio::test(start_paused = true)]
async fn a_run_resumed_from_its_checkpoint_checks_the_server_too() {
    let h = four_played(2).await;
    let plex = h.backend("alice", "plex");
    plex.state.lock().unwrap().list_fail_at.push("2".into());
    h.clock.advance(60_000);
    h.handle
        .sync_now(&PairKey::new("alice", "plex"))
        .await
        .unwrap();
    eventually("the run to fail at its second page", || async {
        h.status("alice", "plex").await.sync.runs_failed == 1
    })
    .await;
    {
        let mut st = plex.state.lock().unwrap();
        st.server_id = "srv-plex-new".into();
        for item in st.items.values_mut() {
            item.played = false;
            item.last_played_at = None;
        }
    }
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "plex"), 2).await;
    let lists = plex.lists();
    assert_eq!(
        lists.last(),
        Some(&Some("2".to_string())),
        "resumed at the checkpoint: {lists:?}"
    );
    let jelly = h.backend("alice", "jelly");
    assert!(
        jelly
            .writes()
            .iter()
            .all(|c| !matches!(c, Call::SetPlayed(_, false))),
        "unmarked on jellyfin: {:?}",
        jelly.writes()
    );
    let err = h.status("alice", "plex").await.last_error.unwrap();
    assert!(err.message.contains("forgotten"), "{}", err.message);
}

/// A run that cannot ask the server who it is fails: its pages would be compared with
/// records nothing says are that server's.
#[tokio::test(start_paused = true)]
async fn a_run_that_cannot_ask_who_the_server_is_fails_and_changes_nothing() {
    let h = four_played(10).await;
    let plex = h.backend("alice", "plex");
    {
        let mut st = plex.state.lock().unwrap();
        st.identity_fails = true;
        for item in st.items.values_mut() {
            item.played = false;
        }
    }
    let lists_before = plex.lists().len();
    h.clock.advance(60_000);
    h.handle
        .sync_now(&PairKey::new("alice", "plex"))
        .await
        .unwrap();
    eventually("the run to fail", || async {
        let s = h.status("alice", "plex").await;
        s.sync.runs_failed == 1 && !s.sync.running
    })
    .await;
    h.settle().await;
    let s = h.status("alice", "plex").await;
    assert!(
        s.sync
            .last_result
            .as_deref()
            .is_some_and(|r| r.contains("connection reset")),
        "{:?}",
        s.sync.last_result
    );
    assert_eq!(plex.lists().len(), lists_before, "no page was read");
    assert!(h.backend("alice", "jelly").writes().is_empty());
}

/// Unmarked on Plex without a webhook and partly watched again since: the sync finds both,
/// and the other servers get the unmark and then the resume position.
#[tokio::test(start_paused = true)]
async fn an_unmark_found_by_the_sync_takes_the_position_along() {
    let h = four_played(10).await;
    h.backend("alice", "plex").update("0-plex", |it| {
        it.played = false;
        it.position_ms = 600_000;
    });
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "plex"), 2).await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![
            Call::SetPlayed("0-jelly".into(), false),
            Call::SetPosition("0-jelly".into(), 600_000)
        ]
    );
}

/// `user_id` corrected in the configuration: the records were another user's, whose played
/// films this user has not watched. Read as this user's unmarks they would unmark them
/// everywhere; instead they are forgotten and the server is read as a backend just added.
#[tokio::test(start_paused = true)]
async fn another_user_id_reads_the_backend_as_new_and_unmarks_nothing() {
    let mut h = four_played(10).await;
    for item in h
        .backend("alice", "plex")
        .state
        .lock()
        .unwrap()
        .items
        .values_mut()
    {
        item.played = false;
    }
    let plex = h
        .specs
        .iter_mut()
        .find(|s| s.key.backend == "plex")
        .unwrap();
    plex.backend_user_id = "other-account".into();
    let h = h.restart().await;
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "plex"), 2).await;
    assert!(
        h.backend("alice", "jelly").writes().is_empty(),
        "{:?}",
        h.backend("alice", "jelly").writes()
    );
    let s = h.status("alice", "plex").await;
    let err = s.last_error.expect("the change is reported");
    assert!(
        err.message.contains("user_id is now \"other-account\"")
            && err.message.contains("forgotten"),
        "{}",
        err.message
    );
    // Jellyfin's played films reach the new account's server (the catch-up).
    eventually("the films marked played on plex", || async {
        (0..4).all(|i| h.backend("alice", "plex").item(&format!("{i}-plex")).played)
    })
    .await;
}

/// A double episode whose two parts carry one IMDb id (as IMDb lists them): both parts are
/// tracked on each server, and a play of the second part marks the second part elsewhere.
#[tokio::test(start_paused = true)]
async fn the_parts_of_a_double_episode_sharing_an_imdb_id_sync_apart() {
    let specs = vec![synced("alice", "plex"), synced("alice", "jelly")];
    let h = Harness::start_filled(specs, SyncSettings::default(), |f| {
        for b in ["plex", "jelly"] {
            for (e, tvdb) in [(1, "101"), (2, "102")] {
                let mut ep = episode(&format!("e{e}-{b}"), tvdb, "9", 1, e);
                ep.external_ids.insert("imdb".into(), "tt1".into());
                if b == "plex" && e == 2 {
                    ep.played = true;
                    ep.last_played_at = Some(1_600_000_000_000);
                }
                fake(f, b).add(ep);
            }
        }
    })
    .await;
    wait_runs(&h, 1).await;
    for b in ["plex", "jelly"] {
        let s = h.status("alice", b).await;
        assert_eq!(s.items, 2, "{b}");
    }
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("e2-jelly".into(), true)]
    );
}

/// `import_unplayed = false` (WatchState's `DISABLE_MARK_UNPLAYED`): a backend that reports
/// films unplayed by itself (Jellyfin set to date items by when they were scanned, after a
/// file is replaced) unmarks nothing, by webhook or by sync; its plays still go out.
#[tokio::test(start_paused = true)]
async fn a_backend_that_may_not_unmark_unmarks_nothing_and_still_marks() {
    let specs = vec![
        PairSpec {
            import_unplayed: false,
            ..synced("alice", "jelly")
        },
        synced("alice", "plex"),
    ];
    let mut h = Harness::start_filled(specs, SyncSettings::default(), |f| {
        library(f, "tt1", "a", &["plex", "jelly"]);
        library(f, "tt2", "b", &["plex", "jelly"]);
        library(f, "tt3", "c", &[]);
    })
    .await;
    wait_runs(&h, 1).await;
    let jelly = h.backend("alice", "jelly");
    // By webhook.
    h.clock.advance(60_000);
    jelly.set_state("a-jelly", false, None);
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkUnplayed, &jelly.item("a-jelly")),
    );
    h.settle().await;
    let last = h.status("alice", "jelly").await.last_event.unwrap();
    assert_eq!(last.outcome, watchstate_actors::status::Outcome::Ignored);
    assert!(last.reason.unwrap().contains("import_unplayed = false"));
    // The server gets its played state back (as WatchState's export restores it).
    assert_eq!(
        jelly.writes(),
        vec![Call::SetPlayed("a-jelly".into(), true)]
    );
    assert!(jelly.item("a-jelly").played);
    // By sync.
    jelly.set_state("b-jelly", false, None);
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "jelly"), 2).await;
    assert!(
        h.backend("alice", "plex").writes().is_empty(),
        "{:?}",
        h.backend("alice", "plex").writes()
    );
    assert_eq!(
        jelly.writes().last(),
        Some(&Call::SetPlayed("b-jelly".into(), true))
    );
    assert!(jelly.item("b-jelly").played);
    // A play still goes out.
    h.send(
        "alice",
        "jelly",
        event(EventKind::MarkPlayed, &jelly.item("c-jelly")),
    );
    h.settle().await;
    assert_eq!(
        h.backend("alice", "plex").writes(),
        vec![Call::SetPlayed("c-plex".into(), true)]
    );
}

/// A Plex client reads the token's account whatever `user_id` says: changing `user_id` there
/// (the owner's account id for `1`, as the README advises with Tautulli) forgets nothing.
#[tokio::test(start_paused = true)]
async fn another_user_id_on_plex_forgets_nothing() {
    let mut h = four_played(10).await;
    let plex = h
        .specs
        .iter_mut()
        .find(|s| s.key.backend == "plex")
        .unwrap();
    plex.kind = watchstate_actors::event::BackendKind::Plex;
    let h = h.restart().await;
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "plex"), 2).await;
    // (Its kind changed above: that run read it anew.)
    let before = h.status("alice", "plex").await.last_error;
    let mut h = h;
    let plex = h
        .specs
        .iter_mut()
        .find(|s| s.key.backend == "plex")
        .unwrap();
    plex.backend_user_id = "1".into();
    let h = h.restart().await;
    h.clock.advance(60_000);
    run_sync(&h, &PairKey::new("alice", "plex"), 3).await;
    let s = h.status("alice", "plex").await;
    assert_eq!(s.last_error, before, "records forgotten again");
    assert_eq!(s.items, 4);
}

/// `import_unplayed = false`: an unmark reported again while the restoring push is still
/// failing is refused too; and without `export` nothing is restored, while the other
/// backends' catch-ups still see the film as played there.
#[tokio::test(start_paused = true)]
async fn a_refused_unmark_stays_refused_while_restoring_and_without_export() {
    for export in [true, false] {
        let specs = vec![
            PairSpec {
                import_unplayed: false,
                export,
                ..synced("alice", "jelly")
            },
            synced("alice", "plex"),
        ];
        let mut h = Harness::start_filled(specs, SyncSettings::default(), |f| {
            library(f, "tt1", "a", &["plex", "jelly"]);
        })
        .await;
        wait_runs(&h, 1).await;
        let jelly = h.backend("alice", "jelly");
        // The restoring push is held running while the unmark comes again.
        let held = jelly.write_gate.lock().await;
        jelly.set_state("a-jelly", false, None);
        for _ in 0..2 {
            h.clock.advance(30_000);
            h.send(
                "alice",
                "jelly",
                event(EventKind::MarkUnplayed, &jelly.item("a-jelly")),
            );
            eventually("the unmark to be handled", || async {
                h.status("alice", "jelly").await.last_event.is_some_and(|e| {
                    e.reason.as_deref()
                        == Some("unmarks from this backend are not imported (import_unplayed = false)")
                })
            })
            .await;
        }
        drop(held);
        h.settle().await;
        // Plex finishes a sync: Jellyfin's catch-up answer says played.
        h.clock.advance(60_000);
        run_sync(&h, &PairKey::new("alice", "plex"), 2).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
        h.settle().await;
        assert!(
            h.backend("alice", "plex").writes().is_empty(),
            "export {export}: {:?}",
            h.backend("alice", "plex").writes()
        );
        assert_eq!(jelly.item("a-jelly").played, export, "export {export}");
        let s = h.status("alice", "jelly").await;
        assert_eq!(s.outbox.dead_letters, 0, "export {export}");
    }
}
