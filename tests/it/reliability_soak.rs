//! Issue 8 §5: a soak run. The real binary runs against a fake Jellyfin target;
//! waves of webhooks flip every movie of every user between played and unplayed (each flip is
//! a push), with progress reports, unmatched events and scheduled-sync runs in between. After
//! every wave the journal and the outboxes drain; at the end the target holds exactly the
//! state of the last wave, nothing was answered 5xx, nothing failed, and the resident memory
//! did not grow beyond a generous bound after warm-up (state is bounded: a fixed set of items
//! and bounded logs).
//!
//! Time is real (sled and HTTP do real I/O, so `tokio::time::pause` cannot drive them); the
//! CI run is short and the long one is `#[ignore]`d:
//! `cargo test --test it reliability_soak_long -- --ignored`.

use crate::fakes::WriteChange;
use crate::harness::{eventually, get_json, Served, TestDir, API_KEY};
use crate::reliability_common::*;
use futures_util::StreamExt;
use std::time::Duration;

const USERS: usize = 3;
const MOVIES: usize = 100;
/// sled's page cache for the run (the config's minimum is 1 MiB).
const CACHE_BYTES: u64 = 2 * 1024 * 1024;
/// Allowed growth of the resident memory after warm-up.
const RSS_BOUND: u64 = 24 * 1024 * 1024;

/// Resident set size of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).expect("/proc/<pid>/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

async fn soak(waves: usize) {
    let (fake, text) = pushing_target(MOVIES, USERS, "soak").await;
    // A small page cache, so that sled filling its cache does not pass for a leak.
    let dir = TestDir::new();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[storage]\npath = {:?}\ncache_bytes = {CACHE_BYTES}\n[sync]\ninterval = \"0\"\n{text}",
            server_with_key(),
            dir.data().display().to_string()
        ),
    )
    .unwrap();
    // The real binary: its resident memory is the service's alone (tests running beside this
    // one in the test process would blur an in-process measurement).
    let served = Served::start(&path);
    let base = format!("http://{}/v1/api", served.addr);
    let pid = served.child.id();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let webhook = format!("{base}/webhook");

    let sync = |user: usize| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let pair = format!("{base}/status/users/u{user}/dst");
            let (_, before) = get_json(&client, &pair, API_KEY).await;
            let runs = before["sync"]["runs_ok"].as_u64().unwrap_or(0);
            let r = client
                .post(format!("{pair}/sync"))
                .header("X-Apikey", API_KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 202);
            eventually(Duration::from_secs(30), "a dst sync", || {
                let (client, pair) = (client.clone(), pair.clone());
                async move {
                    let (_, v) = get_json(&client, &pair, API_KEY).await;
                    assert_eq!(v["sync"]["runs_failed"], 0, "{v}");
                    (v["sync"]["runs_ok"].as_u64().unwrap_or(0) > runs).then_some(())
                }
            })
            .await;
        }
    };
    for i in 0..USERS {
        sync(i).await;
    }

    let mut warm_rss = 0;
    let mut sent = 0usize;
    for wave in 0..waves {
        let played = wave % 2 == 0;
        let mut bodies = Vec::with_capacity(USERS * MOVIES * 2);
        for i in 0..USERS {
            for n in 0..MOVIES {
                bodies.push((jf_toggle(JF_SERVER, i, n, played), true));
                if n % 10 == wave % 10 {
                    bodies.push((
                        jf_progress(JF_SERVER, i, n, 90_000 + wave as u64 * 1000),
                        true,
                    ));
                }
            }
            bodies.push((
                jf_mark_played("ffffffffffffffffffffffffffffffff", i, wave),
                false,
            ));
        }
        sent += bodies.len();
        let answers: Vec<(u16, bool)> = futures_util::stream::iter(bodies)
            .map(|(body, routed)| {
                let (client, webhook) = (client.clone(), webhook.clone());
                async move {
                    (
                        post_jf(&client, &webhook, body).await.expect("an answer").0,
                        routed,
                    )
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        for (code, routed) in answers {
            assert_eq!(code, if routed { 202 } else { 200 }, "wave {wave}");
        }
        // Everything drains after every wave: the journal and every outbox.
        eventually(
            Duration::from_secs(60),
            &format!("wave {wave} to drain"),
            || {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    let s = global_status(&client, &base).await;
                    (s["journal"]["depth"] == 0 && s["outbox"]["pending"] == 0).then_some(())
                }
            },
        )
        .await;
        if wave % 3 == 2 {
            sync(wave % USERS).await;
        }
        if wave == waves / 4 {
            warm_rss = rss(pid);
        }
    }

    // The target holds the last wave's state for every item of every user.
    let last = (waves - 1) % 2 == 0;
    eventually(
        Duration::from_secs(30),
        "the target to hold the last wave",
        || {
            let wrong = (0..USERS)
                .flat_map(|i| (0..MOVIES).map(move |n| (i, n)))
                .filter(|(i, n)| fake.item_state_for(&jf_user(*i), &format!("m{n}")).played != last)
                .count();
            async move { (wrong == 0).then_some(()) }
        },
    )
    .await;
    // Exactly once: every flip of every item is one played/unplayed write on the target, no
    // more (no echo, no repeat), no less.
    let state_writes = fake
        .writes()
        .iter()
        .filter(|w| !matches!(w.change, WriteChange::Position { .. }))
        .count();
    assert_eq!(
        state_writes,
        USERS * MOVIES * waves,
        "played/unplayed writes on the target"
    );
    let s = global_status(&client, &base).await;
    assert_eq!(s["webhooks"]["rejected"], 0, "{s}");
    assert_eq!(s["webhooks"]["unavailable"], 0, "{s}");
    assert_eq!(s["outbox"]["dead_letters"], 0, "{s}");
    assert_eq!(s["actors"]["failed"], serde_json::Value::Null, "{s}");
    assert!(
        s["webhooks"]["received"].as_u64().unwrap() as usize >= sent,
        "{s}"
    );
    let (_, users) = get_json(&client, &format!("{base}/status/users"), API_KEY).await;
    for u in users.as_array().unwrap() {
        for b in u["backends"].as_array().unwrap() {
            assert!(b["last_error"].is_null(), "{u}");
        }
    }
    let grown = rss(pid).saturating_sub(warm_rss);
    eprintln!(
        "soak: {sent} webhooks in {waves} waves; RSS after warm-up {} MiB, grown {} KiB",
        warm_rss >> 20,
        grown >> 10
    );
    assert!(
        grown < RSS_BOUND,
        "resident memory grew by {} MiB after warm-up",
        grown >> 20
    );
    fake.assert_contract();
    assert!(!served.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reliability_soak_steady_webhooks_drain_and_memory_stays_flat() {
    soak(8).await;
}

/// About 80 000 webhooks and 2 000 pushes per user per 10 waves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: 250 waves"]
async fn reliability_soak_long() {
    soak(250).await;
}
