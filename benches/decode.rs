//! Decoder micro-benchmarks: one case per sender and transport, on the fixture bodies.
//! `BENCH_QUICK=1` shortens measurement so the whole run finishes well under a minute.
//! Ends with one summary line: `BENCH decode plex_ns=... tautulli_ns=... jellyfin_ns=... emby_ns=...`.

use criterion::{black_box, criterion_group, Criterion};

/// The allocator of the `watchstate` binary (`src/main.rs`), so that the figures are the
/// service's.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use std::time::{Duration, Instant};
use watchstate::webhook::{decode, RawRequest};

/// One benchmark input: a request as the HTTP layer would hand it over.
struct Case {
    /// Benchmark id and summary key.
    name: &'static str,
    content_type: String,
    user_agent: Option<&'static str>,
    body: Vec<u8>,
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn multipart(boundary: &str, field: &str, json: &[u8], thumb: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"\r\nContent-Type: application/json\r\n\r\n").as_bytes(),
    );
    out.extend_from_slice(json);
    out.extend_from_slice(b"\r\n");
    if thumb {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"thumb\"; filename=\"thumb.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").as_bytes(),
        );
        out.extend(std::iter::repeat_n(0xABu8, 7_600));
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

fn cases() -> Vec<Case> {
    let boundary = "------------------------8f1c2a7d5e3b9a04";
    let emby = fixture("emby-playback.stop-02.json");
    vec![
        Case {
            name: "plex",
            content_type: format!("multipart/form-data; boundary={boundary}"),
            user_agent: Some("PlexMediaServer/1.41.6"),
            body: multipart(
                boundary,
                "payload",
                &fixture("plex-library.new-01.json"),
                true,
            ),
        },
        Case {
            name: "tautulli",
            content_type: "application/json".into(),
            user_agent: Some("Tautulli/v2.17.2"),
            body: fixture("tautulli-watched-03.json"),
        },
        Case {
            name: "jellyfin",
            content_type: "text/plain; charset=utf-8".into(),
            user_agent: Some("Jellyfin-Server/10.10.3"),
            body: fixture("jellyfin-PlaybackStop-01.json"),
        },
        Case {
            name: "emby",
            content_type: "application/json".into(),
            user_agent: None,
            body: emby.clone(),
        },
        Case {
            name: "emby_form",
            content_type: "application/x-www-form-urlencoded".into(),
            user_agent: None,
            body: serde_urlencoded::to_string([("data", String::from_utf8(emby).unwrap())])
                .unwrap()
                .into_bytes(),
        },
    ]
}

fn request(case: &Case) -> RawRequest<'_> {
    RawRequest {
        method: "POST",
        content_type: Some(&case.content_type),
        user_agent: case.user_agent,
        body: &case.body,
    }
}

fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1")
}

fn bench_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for case in cases() {
        decode(&request(&case)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        group.bench_function(case.name, |b| b.iter(|| decode(black_box(&request(&case)))));
    }
    group.finish();
}

fn config() -> Criterion {
    let c = Criterion::default();
    if quick() {
        c.warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(600))
            .sample_size(20)
    } else {
        c
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_decode
}

/// Mean ns per decode over a simple timed loop, for the one-line summary.
fn mean_ns(case: &Case) -> u128 {
    let budget = if quick() {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let req = request(case);
    let start = Instant::now();
    let mut n: u128 = 0;
    while start.elapsed() < budget {
        for _ in 0..64 {
            let _ = black_box(decode(black_box(&req)));
        }
        n += 64;
    }
    start.elapsed().as_nanos() / n.max(1)
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    let results: Vec<(&str, u128)> = cases().iter().map(|c| (c.name, mean_ns(c))).collect();
    let get = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .unwrap_or(0)
    };
    println!(
        "BENCH decode plex_ns={} tautulli_ns={} jellyfin_ns={} emby_ns={} emby_form_ns={}",
        get("plex"),
        get("tautulli"),
        get("jellyfin"),
        get("emby"),
        get("emby_form")
    );
}
