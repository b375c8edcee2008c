//! Actor scale (DESIGN.md §11, third line): 10 000 pair actors with 100 items each.
//!
//! Each measurement runs in a child process of its own (this binary re-executed), so that
//! memory freed by one phase cannot hide the growth of the next:
//! - `empty`: `BENCH_ACTORS` (default 10 000) pair actors over an empty store;
//! - `items`: the same actors over a [`MemoryStore`] pre-populated with
//!   `BENCH_ITEMS_PER_ACTOR` (default 100) persisted items per pair, in the form the pair
//!   actor itself writes (`<user>/<backend>/i/<item id>` → JSON [`StoredItem`]).
//!
//! In each child the store is filled first, then resident memory is read, the supervisor is
//! started, and the time until every actor is up (and has loaded its items) is measured;
//! resident memory is read again. Memory per item = (growth with items − growth without) /
//! items. The status of every pair is then read to check that each holds its items.
//!
//! `cargo bench --bench actors`; `BENCH_QUICK=1` for a short run.

mod common;

use async_trait::async_trait;
use common::*;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use watchstate_actors::backend::{BackendApi, BackendError, ItemPage, RemoteItem, ServerIdentity};
use watchstate_actors::config::{PairSpec, SyncSettings};
use watchstate_actors::event::{BackendKind, ExternalIds, ItemType, Millis};
use watchstate_actors::pair::encode;
use watchstate_actors::state::{Identity, StoredItem};
use watchstate_actors::store::{Batch, MemoryStore, PairKey, Store, Tree};
use watchstate_actors::{SupervisorHandle, SystemClock};

/// The child's environment variable: how many items per actor it loads.
const CHILD_ENV: &str = "BENCH_ACTORS_CHILD_ITEMS";

/// A backend that is never reached: sync is off and nothing is pushed in this bench.
struct Unreachable;

fn unreachable_err() -> BackendError {
    BackendError::Network {
        message: "the actors bench has no media server".into(),
    }
}

#[async_trait]
impl BackendApi for Unreachable {
    async fn identity(&self) -> Result<ServerIdentity, BackendError> {
        Err(unreachable_err())
    }
    async fn list_items(&self, _: Option<&str>, _: usize) -> Result<ItemPage, BackendError> {
        Err(unreachable_err())
    }
    async fn get_item(&self, _: &str) -> Result<Option<RemoteItem>, BackendError> {
        Err(unreachable_err())
    }
    async fn set_played(&self, _: &str, _: bool, _: Option<Millis>) -> Result<(), BackendError> {
        Err(unreachable_err())
    }
    async fn set_position(
        &self,
        _: &str,
        _: u64,
        _: Option<u64>,
        _: Option<Millis>,
    ) -> Result<(), BackendError> {
        Err(unreachable_err())
    }
}

fn ids(pairs: &[(&str, String)]) -> ExternalIds {
    pairs
        .iter()
        .map(|(p, v)| (p.to_string(), v.clone()))
        .collect()
}

/// Item `i` of pair `k`, shaped like a real library: even pairs are Plex (numeric rating
/// keys), odd pairs Jellyfin (32-hex ids); 60 % episodes (own tvdb + imdb ids, the show's tvdb
/// id, season and episode) and 40 % movies (imdb + tmdb), with realistic titles and state.
fn stored_item(k: usize, i: usize) -> StoredItem {
    let n = k * 1000 + i;
    let item_id = if k % 2 == 0 {
        format!("{}", 100_000 + n)
    } else {
        format!(
            "{:032x}",
            (n as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        )
    };
    let episode = i % 5 < 3;
    let identity = if episode {
        Identity {
            item_type: ItemType::Episode,
            ids: ids(&[
                ("tvdb", format!("{}", 7_000_000 + n)),
                ("imdb", format!("tt{:08}", 10_000_000 + n)),
            ]),
            series_ids: ids(&[("tvdb", format!("{}", 300_000 + n / 10))]),
            season: Some((i / 10) as u32 + 1),
            episode: Some((i % 10) as u32 + 1),
        }
    } else {
        Identity {
            item_type: ItemType::Movie,
            ids: ids(&[
                ("imdb", format!("tt{:07}", 1_000_000 + n)),
                ("tmdb", format!("{}", 10_000 + n)),
            ]),
            series_ids: ExternalIds::new(),
            season: None,
            episode: None,
        }
    };
    let played = i % 3 == 0;
    StoredItem {
        item_id,
        title: format!(
            "{} {n}",
            if episode {
                "Episode Title"
            } else {
                "A Movie Title"
            }
        ),
        identity,
        played,
        in_ignored_library: false,
        played_at: if played {
            1_700_000_000_000 + n as i64
        } else {
            0
        },
        position_ms: if i % 7 == 0 { 1_234_000 } else { 0 },
        position_at: if i % 7 == 0 { 1_700_000_000_000 } else { 0 },
        duration_ms: Some(2_700_000),
        last_seen: 1_700_000_000_000,
    }
}

fn spec(k: usize) -> PairSpec {
    PairSpec {
        key: PairKey::new(format!("user{k}"), "media"),
        kind: if k % 2 == 0 {
            BackendKind::Plex
        } else {
            BackendKind::Jellyfin
        },
        server_id: format!("server{k}"),
        backend_user_id: format!("{k}"),
        import: true,
        export: true,
        import_unplayed: true,
        sync_interval: None,
        ignore_libraries: Vec::new(),
    }
}

/// One measurement, in its own process; prints one `RESULT` line.
fn child(actors: usize, items: usize) {
    let store = Arc::new(MemoryStore::new());
    for k in 0..actors {
        let key = spec(k).key;
        let mut batch = Batch::new();
        for i in 0..items {
            let item = stored_item(k, i);
            let store_key = format!("{}/{}/i/{}", key.user, key.backend, item.item_id);
            batch.put(Tree::Pairs, store_key.into_bytes(), encode(&item));
        }
        store.apply(batch).expect("memory store");
    }
    let specs: Vec<(PairSpec, Arc<dyn BackendApi>)> = (0..actors)
        .map(|k| (spec(k), Arc::new(Unreachable) as Arc<dyn BackendApi>))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let rss_before = rss_bytes();
        let started = Instant::now();
        let handle = SupervisorHandle::start(
            specs,
            SyncSettings::default(),
            store.clone() as Arc<dyn Store>,
            Arc::new(SystemClock),
        )
        .await
        .expect("the supervisor starts");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let r = handle.ready();
            if r.ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {} actors running after 120 s",
                r.running,
                r.actors
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let spawn = started.elapsed();
        let rss_after = rss_bytes();
        // Every actor must hold exactly its items (a check, not a timing).
        let loaded: usize = handle.all_status().await.iter().map(|s| s.items).sum();
        assert_eq!(
            loaded,
            actors * items,
            "the actors hold {loaded} items, expected {}",
            actors * items
        );
        println!(
            "RESULT spawn_s={:.3} rss_before={rss_before} rss_after={rss_after} loaded={loaded}",
            spawn.as_secs_f64()
        );
        // The process exits right away: stopping 10 000 actors is not what is measured.
        std::process::exit(0);
    });
}

/// What a child printed.
struct Measure {
    /// Supervisor start until every actor runs, in seconds.
    spawn_s: f64,
    /// Resident memory added by starting the actors (the filled store is already counted).
    rss_growth: u64,
    /// Items the actors report holding, to check the load.
    loaded: usize,
}

fn run_child(items: usize, actors: usize) -> Measure {
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .env(CHILD_ENV, items.to_string())
        .env("BENCH_ACTORS", actors.to_string())
        .output()
        .expect("start the measuring child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child with {items} items per actor failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line from the child: {stdout}"));
    let field = |name: &str| -> String {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {line}"))
            .to_string()
    };
    let before: u64 = field("rss_before").parse().unwrap();
    let after: u64 = field("rss_after").parse().unwrap();
    Measure {
        spawn_s: field("spawn_s").parse().unwrap(),
        rss_growth: after.saturating_sub(before),
        loaded: field("loaded").parse().unwrap(),
    }
}

fn main() {
    let actors = env_usize("BENCH_ACTORS", 10_000).max(1);
    if let Ok(items) = std::env::var(CHILD_ENV) {
        child(actors, items.parse().expect("item count"));
        return;
    }
    let items = env_usize("BENCH_ITEMS_PER_ACTOR", 100).max(1);
    println!("machine: {}", machine());
    println!(
        "{actors} pair actors, {items} items each{}",
        if quick() {
            " (quick mode: same sizes, it takes seconds)"
        } else {
            ""
        }
    );
    let empty = run_child(0, actors);
    println!(
        "empty actors:     spawn {:.3} s, resident growth {:.1} MiB ({} bytes per actor)",
        empty.spawn_s,
        empty.rss_growth as f64 / 1048576.0,
        empty.rss_growth / actors as u64
    );
    let full = run_child(items, actors);
    let total_items = (actors * items) as u64;
    let per_item = full.rss_growth.saturating_sub(empty.rss_growth) / total_items;
    println!(
        "with {items} items:   spawn {:.3} s, resident growth {:.1} MiB ({} bytes per item incl. actor, {} items loaded)",
        full.spawn_s,
        full.rss_growth as f64 / 1048576.0,
        full.rss_growth / total_items,
        full.loaded
    );
    println!(
        "per item (growth with items - growth without): {per_item} bytes; targets: spawn < 2 s, < 512 bytes per item"
    );
    bench_line(
        "actors",
        &[
            ("spawn_s", format!("{:.3}", full.spawn_s)),
            ("empty_spawn_s", format!("{:.3}", empty.spawn_s)),
            ("bytes_per_item", per_item.to_string()),
            (
                "total_mib",
                format!("{:.1}", full.rss_growth as f64 / 1048576.0),
            ),
            ("actors", actors.to_string()),
            ("items_per_actor", items.to_string()),
        ],
    );
}
