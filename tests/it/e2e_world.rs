//! The world of the end-to-end tests: one user (`alice`) with a fake Plex, Jellyfin and Emby
//! server, the real service in front of them, and the helpers the tests share.

#![allow(dead_code)] // each e2e module uses a different subset

use crate::fakes::{FakeKind, FakeLibrary, FakeServer, FakeWrite, WriteChange};
use crate::harness::{backend_toml, eventually, TestApp, TestDir};
use std::time::Duration;

/// Alice's three backends, as named in the config.
pub const BACKENDS: [&str; 3] = ["plex", "jellyfin", "emby"];

/// How long a propagation may take before a test fails (no retries involved).
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The service and alice's three fake servers.
pub struct World {
    pub app: TestApp,
    pub plex: FakeServer,
    pub jellyfin: FakeServer,
    pub emby: FakeServer,
    /// The `[sync]` table body and the users' tables, to start the service again the same way.
    sync: String,
    users: String,
}

/// Per-backend extra config lines (`import = false`, `export = false`, `sync_interval`, ...).
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub plex: &'static str,
    pub jellyfin: &'static str,
    pub emby: &'static str,
}

impl World {
    /// Start the fakes with these libraries and the service with `sync` as its `[sync]` table.
    pub async fn start(
        plex: FakeLibrary,
        jellyfin: FakeLibrary,
        emby: FakeLibrary,
        sync: &str,
        extra: Extra,
    ) -> World {
        let plex = FakeServer::start(FakeKind::Plex, plex).await;
        let jellyfin = FakeServer::start(FakeKind::Jellyfin, jellyfin).await;
        let emby = FakeServer::start(FakeKind::Emby, emby).await;
        let config = World::config(&plex, &jellyfin, &emby, &extra);
        let app = TestApp::start_sync(TestDir::new(), "", sync, &config).await;
        World {
            app,
            plex,
            jellyfin,
            emby,
            sync: sync.to_string(),
            users: config,
        }
    }

    /// Stop the service and start it again on the same data dir and config.
    pub async fn restart(mut self) -> World {
        let placeholder = TestApp {
            app: None,
            base: String::new(),
            key: String::new(),
            client: reqwest::Client::new(),
            dir: TestDir::new(),
        };
        let dir = std::mem::replace(&mut self.app, placeholder)
            .stop_keep_dir()
            .await;
        self.app = TestApp::start_sync(dir, "", &self.sync, &self.users).await;
        self
    }

    /// Alice's three `[users.alice.backends.*]` tables.
    pub fn config(
        plex: &FakeServer,
        jellyfin: &FakeServer,
        emby: &FakeServer,
        extra: &Extra,
    ) -> String {
        [
            backend_toml("alice", "plex", plex, extra.plex),
            backend_toml("alice", "jellyfin", jellyfin, extra.jellyfin),
            backend_toml("alice", "emby", emby, extra.emby),
        ]
        .concat()
    }

    /// Sync every backend once through the API so each actor knows its library.
    pub async fn sync_all(&self) {
        for b in BACKENDS {
            self.app.sync_and_wait("alice", b).await;
        }
    }

    pub fn fakes(&self) -> [&FakeServer; 3] {
        [&self.plex, &self.jellyfin, &self.emby]
    }

    /// Forget what the fakes recorded so far (after the set-up syncs).
    pub fn clear_logs(&self) {
        for f in self.fakes() {
            f.clear_log();
        }
    }

    /// Every fake saw only requests of its server's API contract.
    #[track_caller]
    pub fn assert_contracts(&self) {
        for f in self.fakes() {
            f.assert_contract();
        }
    }

    pub async fn stop(self) {
        self.assert_contracts();
        self.app.stop().await;
    }
}

/// Wait until `fake` recorded exactly `n` writes (panics on more), and return them.
pub async fn wait_writes(fake: &FakeServer, n: usize, what: &str) -> Vec<FakeWrite> {
    eventually(DEADLINE, what, || async {
        let w = fake.writes();
        assert!(w.len() <= n, "{what}: more writes than expected: {w:#?}");
        (w.len() == n).then_some(w)
    })
    .await
}

/// A write of `item_id` for the fake's default user with this change.
pub fn write(fake: &FakeServer, item_id: &str, change: WriteChange) -> FakeWrite {
    FakeWrite {
        user_id: fake.user_id().to_string(),
        item_id: item_id.to_string(),
        change,
    }
}

/// A mark-played write, whatever date the client sent.
pub fn is_played(w: &FakeWrite, fake: &FakeServer, item_id: &str) -> bool {
    w.user_id == fake.user_id()
        && w.item_id == item_id
        && matches!(w.change, WriteChange::Played { .. })
}
