//! Durable relays (actors/src/relay.rs): a change a pair applied reaches its siblings even
//! when the process dies between the source's batch and the sibling's, exactly once.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::*;
use watchstate_actors::backend::RemoteItem;
use watchstate_actors::event::EventKind;
use watchstate_actors::propagate::StateChanged;
use watchstate_actors::relay::relay_key;
use watchstate_actors::store::{Batch, MemoryStore, PairKey, Store, StoreError, Tree};
use watchstate_actors::{Clock, SyncSettings};

fn three() -> Vec<watchstate_actors::PairSpec> {
    vec![
        spec("alice", "plex"),
        spec("alice", "jelly"),
        spec("alice", "emby"),
    ]
}

/// A store that dies right after the first batch writing relay records: that batch is
/// durable, every later write fails, as if the process were killed at that moment.
struct CrashStore {
    /// What survives the "kill"; a new supervisor is started on it.
    inner: Arc<MemoryStore>,
    /// Set once the relay batch is through.
    dead: AtomicBool,
}

impl Store for CrashStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan_prefix(
        &self,
        tree: Tree,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        if self.dead.load(Ordering::SeqCst) {
            return Err(StoreError("killed".into()));
        }
        let relays = batch
            .ops
            .iter()
            .any(|op| op.value.is_some() && is_relay_key(&op.key));
        self.inner.apply(batch)?;
        if relays {
            self.dead.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn is_relay_key(key: &[u8]) -> bool {
    String::from_utf8_lossy(key).contains("/r/")
}

fn relay_records(store: &dyn Store) -> Vec<String> {
    store
        .scan_prefix(Tree::Pairs, b"")
        .unwrap()
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k).into_owned())
        .filter(|k| k.contains("/r/"))
        .collect()
}

fn local(m: &RemoteItem, b: &str) -> RemoteItem {
    let mut item = m.clone();
    item.item_id = format!("{}-{b}", m.item_id);
    item
}

/// The movie registered on every backend of alice (fakes and actors).
async fn register(h: &mut Harness, m: &RemoteItem) {
    for b in ["plex", "jelly", "emby"] {
        h.backend("alice", b).add(local(m, b));
        h.send("alice", b, event(EventKind::ItemAdded, &local(m, b)));
    }
    h.settle().await;
}

#[tokio::test(start_paused = true)]
async fn relay_records_are_removed_once_the_siblings_handled_them() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("n", "tt1");
    register(&mut h, &m).await;
    // One sibling knows the item (push), the other will keep it pending: both remove the
    // record in the batch that stores their outcome.
    let other = movie("p", "tt2");
    for b in ["plex", "jelly"] {
        h.backend("alice", b).add(local(&other, b));
        h.send("alice", b, event(EventKind::ItemAdded, &local(&other, b)));
    }
    h.settle().await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "plex")),
    );
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&other, "plex")),
    );
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![
            Call::SetPlayed("n-jelly".into(), true),
            Call::SetPlayed("p-jelly".into(), true)
        ]
    );
    assert_eq!(h.status("alice", "emby").await.pending, 1);
    assert_eq!(relay_records(&*h.store), Vec::<String>::new());
    assert_eq!(h.journal_len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_push_survives_a_kill_between_the_source_and_its_siblings() {
    let inner = Arc::new(MemoryStore::new());
    let crash = Arc::new(CrashStore {
        inner: inner.clone(),
        dead: AtomicBool::new(false),
    });
    let specs = three();
    let backends = specs
        .iter()
        .map(|s| (s.key.clone(), FakeBackend::new()))
        .collect();
    let clock = Arc::new(watchstate_actors::TestClock::new(1_700_000_000_000));
    let mut h = Harness::start_with(
        specs.clone(),
        SyncSettings::default(),
        crash.clone(),
        clock.clone(),
        backends,
    )
    .await;
    let m = movie("k", "tt3");
    register(&mut h, &m).await;

    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "plex")),
    );
    eventually("the source's batch to be stored", || async {
        crash.dead.load(Ordering::SeqCst)
    })
    .await;
    // Let the siblings try (and fail) to store their handling, then "kill" the process.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let backends = h.backends.clone();
    h.handle.shutdown().await;
    assert_eq!(inner.scan_prefix(Tree::Journal, b"").unwrap().len(), 0);
    assert_eq!(
        relay_records(&*inner).len(),
        2,
        "one record per exporting sibling"
    );
    for b in ["jelly", "emby"] {
        assert!(
            backends[&PairKey::new("alice", b)].writes().is_empty(),
            "nothing pushed before the kill"
        );
    }

    // A new process on what was stored: the push happens, once per sibling.
    let h = Harness::start_with(specs, SyncSettings::default(), inner, clock, backends).await;
    h.settle().await;
    for b in ["jelly", "emby"] {
        assert_eq!(
            h.backend("alice", b).writes(),
            vec![Call::SetPlayed(format!("k-{b}"), true)],
            "{b}"
        );
    }
    assert!(h.backend("alice", "plex").writes().is_empty());
    assert_eq!(relay_records(&*h.store), Vec::<String>::new());

    // Restarting again replays nothing: still one write per sibling.
    let h = h.restart().await;
    h.settle().await;
    for b in ["jelly", "emby"] {
        assert_eq!(h.backend("alice", b).writes().len(), 1, "{b}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_relayed_change_handled_twice_pushes_once() {
    let mut h = Harness::start(three(), SyncSettings::default()).await;
    let m = movie("t", "tt4");
    register(&mut h, &m).await;
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "plex")),
    );
    h.settle().await;
    assert_eq!(h.backend("alice", "jelly").writes().len(), 1);

    // The same change once more from a record (its message was handled already), as after a
    // restart that raced with the message.
    let plex = PairKey::new("alice", "plex");
    let jelly = PairKey::new("alice", "jelly");
    let stored = h
        .handle
        .item_states("alice", "imdb", "tt4")
        .await
        .into_iter()
        .find(|(k, _)| *k == plex)
        .and_then(|(_, v)| v)
        .and_then(|v| v.item)
        .expect("known on plex");
    let change = StateChanged {
        identity: stored.identity.clone(),
        played: Some(true),
        position_ms: None,
        changed_at: stored.played_at,
        origin: plex.clone(),
        request_id: "req-again".into(),
    };
    let mut b = Batch::new();
    b.put(
        Tree::Pairs,
        relay_key(&jelly, h.clock.now_ms(), &plex, 1),
        serde_json::to_vec(&change).unwrap(),
    );
    h.store.apply(b).unwrap();
    let h = h.restart().await;
    h.settle().await;
    assert_eq!(
        h.backend("alice", "jelly").writes(),
        vec![Call::SetPlayed("t-jelly".into(), true)]
    );
    assert_eq!(relay_records(&*h.store), Vec::<String>::new());
    let s = h.status("alice", "jelly").await;
    assert_eq!((s.counters.pushed, s.conflicts.count), (1, 0));
}

/// A store whose batches removing relay records fail while `fail` is set: the siblings fail
/// while handling a relayed change, the source does not.
#[derive(Default)]
struct SiblingFailStore {
    inner: MemoryStore,
    fail: AtomicBool,
}

impl Store for SiblingFailStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan_prefix(
        &self,
        tree: Tree,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        self.inner.scan_prefix(tree, prefix)
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let handles_relay = batch
            .ops
            .iter()
            .any(|op| op.value.is_none() && is_relay_key(&op.key));
        if handles_relay && self.fail.load(Ordering::SeqCst) {
            return Err(StoreError("disk on fire".into()));
        }
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_sibling_that_fails_before_storing_a_change_handles_it_after_its_restart() {
    let store = Arc::new(SiblingFailStore::default());
    let mut h = Harness::start_on(three(), SyncSettings::default(), store.clone()).await;
    let m = movie("f", "tt5");
    register(&mut h, &m).await;
    // The source stores its effect and the records; the siblings fail while handling the
    // message (its change is lost in memory), and the supervisor restarts them.
    store.fail.store(true, Ordering::SeqCst);
    h.send(
        "alice",
        "plex",
        event(EventKind::Scrobble, &local(&m, "plex")),
    );
    for b in ["jelly", "emby"] {
        eventually("the sibling to fail", || async {
            h.status("alice", b).await.restarts > 0
        })
        .await;
        assert!(h.backend("alice", b).writes().is_empty());
    }
    assert_eq!(relay_records(&store.inner).len(), 2);
    store.fail.store(false, Ordering::SeqCst);
    eventually("every actor back", || async { h.handle.ready().ready }).await;
    h.settle().await;
    for b in ["jelly", "emby"] {
        assert_eq!(
            h.backend("alice", b).writes(),
            vec![Call::SetPlayed(format!("f-{b}"), true)],
            "{b}"
        );
    }
    assert_eq!(relay_records(&store.inner), Vec::<String>::new());
}
