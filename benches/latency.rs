//! Webhook to first push (DESIGN.md §11, second line): how long after a Plex
//! `media.scrobble` is sent does the user's other backend receive the matching push?
//!
//! Set-up: the real service (`App::start`) with one user and two backends, a Plex source
//! (`export = false`, never contacted) and a Jellyfin target whose URL is a minimal fake
//! Jellyfin in this process (warp on 127.0.0.1:0). The fake answers the pushes the Jellyfin
//! client makes (`POST /UserPlayedItems/{id}`, `DELETE` of the same, `POST
//! /UserItems/{id}/UserData`, `GET /System/Info/Public`) and records when each item's first
//! push arrived.
//!
//! First `BENCH_ITEMS` (default 1000) movies are registered on the target actor through
//! Jellyfin `ItemAdded` webhooks (real decoder, real routing); the bench waits until the
//! pair's status shows them all. Then one Plex scrobble per item is sent, one request at a
//! time without waiting for the push (a steady stream), and send → push arrival is measured.
//!
//! `cargo bench --bench latency`; `BENCH_QUICK=1` for a short run (still 1000 events).

mod common;

use common::*;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const PLEX_SERVER: &str = "3f2a9c1d7e8b4a6f9c0d1e2f3a4b5c6d7e8f9a0b";
const PLEX_USER: &str = "24681357";
const JELLYFIN_SERVER: &str = "b3c5e0a19f2d4c7e8a6b1d2c3e4f5a60";
const JELLYFIN_USER: &str = "4d2f8a1c9b3e47d6a5c0e1f2a3b4c5d6";

fn jf_item(i: usize) -> String {
    format!("jf{i:05}")
}
fn imdb(i: usize) -> String {
    format!("tt9{i:06}")
}

/// What the fake Jellyfin saw.
#[derive(Default)]
struct FakeLog {
    /// Requests the Jellyfin client should never make here (path, method).
    unexpected: Vec<String>,
    /// Pushes received, in total (a retry or duplicate shows as more than one per item).
    pushes: u64,
}

/// Start the fake Jellyfin; first pushes per item id arrive on the returned channel.
async fn start_fake_jellyfin() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(String, Instant)>,
    Arc<Mutex<FakeLog>>,
    tokio::sync::oneshot::Sender<()>,
) {
    use warp::Filter;
    let (tx, rx) = mpsc::unbounded_channel::<(String, Instant)>();
    let log = Arc::new(Mutex::new(FakeLog::default()));
    let seen = Arc::new(Mutex::new(std::collections::HashSet::<String>::new()));
    let record = {
        let log = log.clone();
        move |id: String| {
            let at = Instant::now();
            log.lock().unwrap().pushes += 1;
            if seen.lock().unwrap().insert(id.clone()) {
                let _ = tx.send((id, at));
            }
        }
    };
    let played = {
        let record = record.clone();
        warp::path!("UserPlayedItems" / String)
            .and(warp::post().or(warp::delete()).unify())
            .map(move |id: String| {
                record(id.clone());
                warp::reply::json(&serde_json::json!({"ItemId": id, "Played": true}))
            })
    };
    let user_data = warp::path!("UserItems" / String / "UserData")
        .and(warp::post())
        .and(warp::body::bytes())
        .map(move |id: String, _body: bytes::Bytes| {
            record(id.clone());
            warp::reply::json(&serde_json::json!({"ItemId": id}))
        });
    let info = warp::path!("System" / "Info" / "Public")
        .and(warp::get())
        .map(|| {
            warp::reply::json(&serde_json::json!({
                "Id": JELLYFIN_SERVER, "ServerName": "bench-jellyfin", "Version": "10.10.7",
                "ProductName": "Jellyfin Server"
            }))
        });
    let other = {
        let log = log.clone();
        warp::method().and(warp::path::full()).map(
            move |m: warp::http::Method, p: warp::path::FullPath| {
                log.lock()
                    .unwrap()
                    .unexpected
                    .push(format!("{m} {}", p.as_str()));
                warp::reply::with_status(warp::reply(), warp::http::StatusCode::NOT_FOUND)
            },
        )
    };
    let routes = played.or(user_data).or(info).or(other);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake Jellyfin");
    let addr = listener.local_addr().expect("fake address");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        warp::serve(routes)
            .incoming(listener)
            .graceful(async move {
                let _ = stop_rx.await;
            })
            .run(),
    );
    (addr, rx, log, stop_tx)
}

/// A Jellyfin `ItemAdded` webhook for bench movie `i` (generic: routed by server id).
fn item_added(i: usize) -> WireRequest {
    let body = serde_json::json!({
        "ServerId": JELLYFIN_SERVER,
        "ServerName": "bench-jellyfin",
        "ServerVersion": "10.10.7",
        "NotificationType": "ItemAdded",
        "UtcTimestamp": "2025-03-13T02:00:12.1082265Z",
        "Name": format!("Bench Movie {i}"),
        "ItemId": jf_item(i),
        "ItemType": "Movie",
        "RunTimeTicks": 72_000_000_000u64,
        "Year": 2020,
        "Provider_imdb": imdb(i),
        "Provider_tmdb": format!("9{i:06}"),
    });
    wire_request(
        &format!("jellyfin ItemAdded {i}"),
        "jellyfin",
        &serde_json::to_vec(&body).unwrap(),
    )
}

/// A Plex `media.scrobble` for the same movie, built from the scrobble fixture.
fn scrobble(template: &serde_json::Value, i: usize) -> WireRequest {
    let mut v = template.clone();
    v["Account"]["id"] = serde_json::json!(PLEX_USER.parse::<u64>().unwrap());
    v["Server"]["uuid"] = serde_json::json!(PLEX_SERVER);
    let m = &mut v["Metadata"];
    let key = format!("{}", 500_000 + i);
    m["ratingKey"] = serde_json::json!(key);
    m["key"] = serde_json::json!(format!("/library/metadata/{key}"));
    m["title"] = serde_json::json!(format!("Bench Movie {i}"));
    m["Guid"] = serde_json::json!([
        {"id": format!("imdb://{}", imdb(i))},
        {"id": format!("tmdb://9{i:06}")}
    ]);
    wire_request(
        &format!("plex scrobble {i}"),
        "plex",
        &serde_json::to_vec(&v).unwrap(),
    )
}

fn main() {
    let quick = quick();
    let n = env_usize("BENCH_ITEMS", 1000).max(1);
    let concurrency = env_usize("BENCH_CONCURRENCY", 1).max(1);
    discard_logs();
    println!("machine: {}", machine());
    println!("items/events: {n}, scrobbles in flight: {concurrency}, quick: {quick}");

    let template: serde_json::Value = {
        let f = fixtures()
            .into_iter()
            .find(|f| f.name == "plex-media.scrobble-01")
            .expect("fixture plex-media.scrobble-01");
        serde_json::from_slice(&f.json).expect("fixture JSON")
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let (fake, mut arrivals, log, fake_stop) = start_fake_jellyfin().await;
        let config = format!(
            "[users.alice.backends.plex]\ntype = \"plex\"\nurl = \"http://127.0.0.1:9\"\n\
             token = \"bench-token\"\nserver_id = {PLEX_SERVER:?}\nuser_id = {PLEX_USER:?}\n\
             export = false\n\n\
             [users.alice.backends.jelly]\ntype = \"jellyfin\"\nurl = \"http://{fake}\"\n\
             token = \"bench-token\"\nserver_id = {JELLYFIN_SERVER:?}\nuser_id = {JELLYFIN_USER:?}\n"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let app = start_service(&dir.path().join("data"), &config).await;
        let url = format!("http://{}/v1/api/webhook", app.addr);
        let client = client(32);

        // 1. Register the items on the target actor.
        let started = Instant::now();
        let adds: Vec<WireRequest> = (0..n).map(item_added).collect();
        let statuses: Vec<u16> = futures_util::stream::iter(adds.iter())
            .map(|r| {
                let client = client.clone();
                let url = url.clone();
                async move { send(&client, &url, r).await.map(|(s, _)| s).unwrap_or(0) }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let bad = statuses.iter().filter(|s| **s != 202).count();
        assert_eq!(bad, 0, "{bad} ItemAdded webhooks were not answered 202");
        let status_url = format!("http://{}/v1/api/status/users/alice/jelly", app.addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s: serde_json::Value = client
                .get(&status_url)
                .header("X-Apikey", &app.api_key)
                .send()
                .await
                .expect("status request")
                .json()
                .await
                .expect("status JSON");
            let items = s["items"].as_u64().unwrap_or(0) as usize;
            if items >= n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the target registered only {items} of {n} items within 60 s: {s}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "registered {n} items on the target in {:.2} s",
            started.elapsed().as_secs_f64()
        );

        // 2. One scrobble per item; record when each was sent and acknowledged.
        let scrobbles: Vec<WireRequest> = (0..n).map(|i| scrobble(&template, i)).collect();
        let sent: Arc<Mutex<HashMap<String, (Instant, Instant)>>> = Arc::default();
        let run_started = Instant::now();
        let statuses: Vec<u16> = futures_util::stream::iter(scrobbles.iter().enumerate())
            .map(|(i, r)| {
                let client = client.clone();
                let url = url.clone();
                let sent = sent.clone();
                async move {
                    let t0 = Instant::now();
                    let status = send(&client, &url, r).await.map(|(s, _)| s).unwrap_or(0);
                    sent.lock().unwrap().insert(jf_item(i), (t0, Instant::now()));
                    status
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let send_secs = run_started.elapsed().as_secs_f64();
        let not_accepted = statuses.iter().filter(|s| **s != 202).count();

        // 3. Wait for every first push.
        let mut arrived: HashMap<String, Instant> = HashMap::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while arrived.len() < n - not_accepted {
            match tokio::time::timeout_at(deadline.into(), arrivals.recv()).await {
                Ok(Some((id, at))) => {
                    arrived.insert(id, at);
                }
                _ => break,
            }
        }
        let sent = sent.lock().unwrap().clone();
        let mut send_to_push: Vec<u64> = Vec::new();
        let mut ack_to_push: Vec<u64> = Vec::new();
        for (id, (t_send, t_ack)) in &sent {
            if let Some(at) = arrived.get(id) {
                send_to_push.push(at.saturating_duration_since(*t_send).as_micros() as u64);
                ack_to_push.push(at.saturating_duration_since(*t_ack).as_micros() as u64);
            }
        }
        send_to_push.sort_unstable();
        ack_to_push.sort_unstable();
        let missing = n - send_to_push.len();
        let (unexpected, pushes) = {
            let fake_log = log.lock().unwrap();
            (fake_log.unexpected.clone(), fake_log.pushes)
        };
        let _ = fake_stop.send(());
        app.stop().await;

        println!(
            "sent {n} scrobbles in {send_secs:.2} s ({:.0}/s); {not_accepted} not answered 202; \
             {pushes} pushes received, {missing} items never pushed",
            n as f64 / send_secs
        );
        if !unexpected.is_empty() {
            println!(
                "unexpected requests at the fake Jellyfin: {}",
                unexpected.join(", ")
            );
        }
        println!(
            "send -> first push:     p50 {} ms  p99 {} ms  max {} ms",
            ms(percentile(&send_to_push, 50.0)),
            ms(percentile(&send_to_push, 99.0)),
            ms(send_to_push.last().copied().unwrap_or(0))
        );
        println!(
            "202 ack -> first push:  p50 {} ms  p99 {} ms  (0 when the push beat the answer)",
            ms(percentile(&ack_to_push, 50.0)),
            ms(percentile(&ack_to_push, 99.0))
        );
        println!("target: p99 < 50 ms (WatchState: up to 60 s)");
        bench_line(
            "latency",
            &[
                ("p50_ms", ms(percentile(&send_to_push, 50.0))),
                ("p99_ms", ms(percentile(&send_to_push, 99.0))),
                ("max_ms", ms(send_to_push.last().copied().unwrap_or(0))),
                ("events", send_to_push.len().to_string()),
                ("missing", missing.to_string()),
            ],
        );
    });
}
