//! Ingest throughput and acknowledgement latency (DESIGN.md §11, first line).
//!
//! The real service (`App::start`: warp, decoders, routing, sled journal with group commit,
//! actors) listens on 127.0.0.1:0 with its storage in a temporary directory. `BENCH_SENDERS`
//! (default 32) concurrent keep-alive senders post a round-robin mix of the webhook fixtures
//! of all four senders (Plex multipart `payload`, Tautulli JSON `PUT`, Jellyfin `text/plain`,
//! Emby JSON). The configuration gives every (server id, user id) of the fixtures its own user
//! with a single backend and `export = false`, so every request is routed and journaled
//! durably (answered 202) and no actor ever pushes to a server that does not exist.
//!
//! In the same run, with the same client, a bare warp handler that reads the body and answers
//! 200 gives the baseline. Phases alternate (baseline, service) for `BENCH_ROUNDS` rounds so
//! that load drift on a shared machine hits both alike.
//!
//! `cargo bench --bench ingest`; `BENCH_QUICK=1` for a short run.

mod common;

use common::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use watchstate::webhook::{self, RouteOutcome, RouteTarget};
use watchstate_actors::event::{normalize_id, Sender};

/// The fixture mix and the configuration that routes all of it.
struct Workload {
    /// Requests that route to at least one pair (the others are left out of the mix).
    requests: Vec<WireRequest>,
    /// `[users...]` TOML for the service.
    config: String,
    /// Fixtures left out, with why (ignored, test, undecodable).
    skipped: Vec<String>,
}

fn kind_of(sender: Sender) -> &'static str {
    sender.backend_kind().as_str()
}

fn workload() -> Workload {
    let all: Vec<WireRequest> = fixtures()
        .iter()
        .map(|f| wire_request(&f.name, &f.sender, &f.json))
        .collect();
    // One pair per (server id, user id) the fixtures carry; library events without a user
    // get a pair of their own when nothing else is configured on their server.
    let mut targets: Vec<(RouteTarget, &'static str)> = Vec::new();
    let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut add = |server: &str, user: &str, kind: &'static str| {
        if seen.insert((normalize_id(server), normalize_id(user))) {
            let target = RouteTarget {
                user: format!("u{}", targets.len()),
                backend: kind.to_string(),
                server_id: server.to_string(),
                user_id: user.to_string(),
            };
            targets.push((target, kind));
        }
    };
    let decoded: Vec<_> = all.iter().map(|r| webhook::decode(&r.raw())).collect();
    for ev in decoded.iter().flatten() {
        if let Some(user) = ev.user_id.as_deref().filter(|u| !u.is_empty()) {
            add(&ev.backend_id, user, kind_of(ev.sender));
        }
    }
    let user_servers: BTreeSet<String> = decoded
        .iter()
        .flatten()
        .filter(|ev| ev.user_id.as_deref().is_some_and(|u| !u.is_empty()))
        .map(|ev| normalize_id(&ev.backend_id))
        .collect();
    for ev in decoded.iter().flatten() {
        if ev.generic && !user_servers.contains(&normalize_id(&ev.backend_id)) {
            add(&ev.backend_id, "bench-library-user", kind_of(ev.sender));
        }
    }
    let (targets, kinds): (Vec<RouteTarget>, Vec<&'static str>) = targets.into_iter().unzip();
    let mut config = String::new();
    for (t, kind) in targets.iter().zip(&kinds) {
        config.push_str(&format!(
            "[users.{}.backends.{}]\ntype = \"{kind}\"\nurl = \"http://127.0.0.1:9\"\n\
             token = \"bench-token\"\nserver_id = {:?}\nuser_id = {:?}\nexport = false\n\n",
            t.user, t.backend, t.server_id, t.user_id
        ));
    }
    let mut requests = Vec::new();
    let mut skipped = Vec::new();
    for (req, ev) in all.into_iter().zip(decoded) {
        match ev {
            Ok(ev) => match webhook::route(&ev, &targets) {
                RouteOutcome::Routed(_) => requests.push(req),
                other => skipped.push(format!("{} ({:?})", req.name, other)),
            },
            Err(e) => skipped.push(format!("{} (undecodable: {e})", req.name)),
        }
    }
    Workload {
        requests,
        config,
        skipped,
    }
}

/// The bare warp server of the baseline: reads the body, answers 200.
async fn start_baseline() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    use warp::Filter;
    let route = warp::any()
        .and(warp::body::bytes())
        .map(|body: bytes::Bytes| {
            std::hint::black_box(body.len());
            warp::reply()
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the baseline server");
    let addr = listener.local_addr().expect("baseline address");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        warp::serve(route)
            .incoming(listener)
            .graceful(async move {
                let _ = rx.await;
            })
            .run(),
    );
    (addr, tx)
}

fn report(label: &str, r: &LoadResult) {
    println!(
        "{label:<9} {:>9.0} events/s  p50 {:>7} ms  p99 {:>7} ms  max {:>8} ms  CPU {:>6} us/event  ({} ok, {} errors)",
        r.per_second(),
        ms(r.p50_us()),
        ms(r.p99_us()),
        ms(r.max_us()),
        cpu_per_event(r),
        r.ok,
        r.error_count()
    );
    if r.error_count() > 0 {
        println!("          errors by status (0 = transport): {:?}", r.errors);
        for s in &r.error_samples {
            println!("          e.g. {s}");
        }
    }
}

/// The process's CPU time per answered request (senders and server together), or `n/a`.
fn cpu_per_event(r: &LoadResult) -> String {
    r.cpu_us_per_event()
        .map_or("n/a".to_string(), |us| format!("{us:.1}"))
}

fn merge(into: &mut LoadResult, r: LoadResult) {
    // The first phase merged into the empty total sets the CPU time; later ones add to it.
    into.cpu_us = if into.window.is_zero() {
        r.cpu_us
    } else {
        into.cpu_us.zip(r.cpu_us).map(|(a, b)| a + b)
    };
    into.ok += r.ok;
    into.window += r.window;
    for (k, v) in r.errors {
        *into.errors.entry(k).or_default() += v;
    }
    into.latencies_us.extend(r.latencies_us);
    into.error_samples.extend(r.error_samples);
    into.error_samples.truncate(5);
}

fn main() {
    let quick = quick();
    let senders = env_usize("BENCH_SENDERS", 32).max(1);
    let window = env_secs("BENCH_SECONDS", if quick { 3.0 } else { 10.0 });
    let rounds = env_usize("BENCH_ROUNDS", if quick { 1 } else { 2 }).max(1);
    let warmup = Duration::from_millis(if quick { 500 } else { 1000 });
    discard_logs();

    let work = workload();
    let by_sender: HashMap<&str, usize> = work.requests.iter().fold(HashMap::new(), |mut m, r| {
        *m.entry(r.sender.as_str()).or_default() += 1;
        m
    });
    for s in ["plex", "tautulli", "jellyfin", "emby"] {
        assert!(
            by_sender.get(s).copied().unwrap_or(0) > 0,
            "the mix has no routable {s} webhook; the fixtures or the routing changed"
        );
    }
    println!("machine: {}", machine());
    println!(
        "mix: {} requests ({}), senders {senders}, {rounds} round(s) of {:?} per phase after {:?} warm-up",
        work.requests.len(),
        ["plex", "tautulli", "jellyfin", "emby"]
            .iter()
            .map(|s| format!("{s} {}", by_sender[s]))
            .collect::<Vec<_>>()
            .join(", "),
        window,
        warmup
    );
    println!("left out (not routed): {}", work.skipped.join("; "));

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rt.worker_threads(n);
    }
    let rt = rt.enable_all().build().expect("tokio runtime");
    rt.block_on(async move {
        // BENCH_DATA_DIR puts the database elsewhere (e.g. on tmpfs, to take fsync out).
        let dir = match std::env::var("BENCH_DATA_DIR") {
            Ok(d) => tempfile::tempdir_in(d).expect("temp dir in BENCH_DATA_DIR"),
            Err(_) => tempfile::tempdir().expect("temp dir"),
        };
        let (fsync_p50, fsync_p99) = fsync_probe(dir.path(), 500);
        println!(
            "disk: fdatasync of a small append p50 {} ms, p99 {} ms (the journal pays one per group)",
            ms(fsync_p50),
            ms(fsync_p99)
        );
        let app = start_service(&dir.path().join("data"), &work.config).await;
        let service_url = format!("http://{}/v1/api/webhook", app.addr);
        let (base_addr, base_stop) = start_baseline().await;
        let base_url = format!("http://{base_addr}/webhook");
        let requests = Arc::new(work.requests);

        // Every request of the mix must be accepted before anything is timed.
        let probe = client(1);
        for r in requests.iter() {
            let (status, _) = send(&probe, &service_url, r).await.expect("probe request");
            assert_eq!(status, 202, "{} was answered {status}, not 202", r.name);
        }

        let client = client(senders);
        let mut base = LoadResult::default();
        let mut svc = LoadResult::default();
        // BENCH_ONLY=service|baseline runs one side only (for profiling).
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        for round in 1..=rounds {
            if only != "service" {
                let b =
                    run_load(&client, &base_url, requests.clone(), senders, warmup, window, 200)
                        .await;
                report(&format!("baseline{round}"), &b);
                merge(&mut base, b);
            }
            if only != "baseline" {
                let s =
                    run_load(&client, &service_url, requests.clone(), senders, warmup, window, 202)
                        .await;
                report(&format!("service{round}"), &s);
                merge(&mut svc, s);
            }
        }
        base.latencies_us.sort_unstable();
        svc.latencies_us.sort_unstable();

        let status: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{}/v1/api/status", app.addr))
            .header("X-Apikey", &app.api_key)
            .send()
            .await
            .expect("status request")
            .json()
            .await
            .expect("status JSON");
        let appended = status["journal"]["appended"].as_u64().unwrap_or(0);
        let flushes = status["journal"]["flushes"].as_u64().unwrap_or(0).max(1);
        let accepted = status["webhooks"]["accepted"].as_u64().unwrap_or(0);
        let store_batches = status["store"]["batches"].as_u64().unwrap_or(0);
        let store_writes = status["store"]["writes"].as_u64().unwrap_or(0).max(1);
        let _ = base_stop.send(());
        app.stop().await;

        println!("---");
        report("baseline", &base);
        report("service", &svc);
        // No baseline phase with BENCH_ONLY=service (and no service phase with =baseline); a
        // phase that ran and got nothing through shows 0.
        let (ran_base, ran_svc) = (only != "service", only != "baseline");
        let rate = |ran: bool, r: f64| ran.then(|| if r.is_finite() { r } else { 0.0 });
        let (svc_rate, base_rate) = (rate(ran_svc, svc.per_second()), rate(ran_base, base.per_second()));
        let ratio = match (svc_rate, base_rate) {
            (Some(s), Some(b)) if b > 0.0 => format!("{:.2}", s / b),
            _ => "n/a".to_string(),
        };
        let per_s = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.0}"));
        println!(
            "journal: {accepted} webhooks accepted, {appended} entries, {flushes} flushes \
             ({:.1} entries per flush); ratio service/baseline {ratio} (target >= 0.5, aim 0.7); \
             p99 target < 5 ms",
            appended as f64 / flushes as f64
        );
        println!(
            "store: {store_batches} actor batches in {store_writes} database writes ({:.1} per write)",
            store_batches as f64 / store_writes as f64
        );
        if svc.error_count() > 0 {
            println!("WARNING: {} service requests were not answered 202", svc.error_count());
        }
        bench_line(
            "ingest",
            &[
                ("events_per_s", per_s(svc_rate)),
                ("baseline_per_s", per_s(base_rate)),
                ("ratio", ratio),
                ("p50_ms", ms(svc.p50_us())),
                ("p99_ms", ms(svc.p99_us())),
                ("baseline_p99_ms", ms(base.p99_us())),
                ("cpu_us_per_event", cpu_per_event(&svc)),
                ("baseline_cpu_us_per_event", cpu_per_event(&base)),
                ("errors", svc.error_count().to_string()),
                ("senders", senders.to_string()),
                ("fsync_p99_ms", ms(fsync_p99)),
            ],
        );
    });
}
