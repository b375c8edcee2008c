//! Helpers shared by the benchmarks (`benches/ingest.rs`, `latency.rs`, `actors.rs`):
//! run-length settings, the webhook fixtures as wire requests, a keep-alive load generator,
//! percentiles, resident memory and a description of the machine.
//!
//! Benchmarks measure; they never assert timings. They do check that the service answered
//! what it should (202 for routed webhooks), so a broken set-up cannot pass for a fast one.

#![allow(dead_code)] // each bench uses a different subset

/// The allocator of the `watchstate` binary (`src/main.rs`), so that the figures are the
/// service's.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use watchstate::app::App;
use watchstate::config::Config;

/// `BENCH_QUICK=1`: every bench finishes in well under a minute.
pub fn quick() -> bool {
    matches!(
        std::env::var("BENCH_QUICK").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// An unsigned integer from the environment, or `default` when unset or unreadable.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// Seconds from the environment, or `default` (quick mode picks a different default).
pub fn env_secs(name: &str, default: f64) -> Duration {
    let secs = std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(default);
    Duration::from_secs_f64(secs)
}

/// `nproc` and total memory, for the results table.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{cores} cores, {:.1} GiB RAM",
        mem_kb as f64 / (1024.0 * 1024.0)
    )
}

/// What one small durable append costs on the disk under `dir`: `fdatasync` after a 300-byte
/// append, `n` times; (p50, p99) in microseconds. The journal pays this once per group, so
/// it bounds the ingest figures from below, and it varies a lot on shared virtual disks.
pub fn fsync_probe(dir: &std::path::Path, n: usize) -> (u64, u64) {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("create the fsync probe file");
    let mut us: Vec<u64> = (0..n.max(1))
        .map(|_| {
            f.write_all(&[b'x'; 300])
                .expect("write the fsync probe file");
            let t = Instant::now();
            f.sync_data().expect("fdatasync the probe file");
            t.elapsed().as_micros() as u64
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    us.sort_unstable();
    (
        us[us.len() / 2],
        us[(us.len() * 99 / 100).min(us.len() - 1)],
    )
}

/// Resident set size of this process, from `/proc/self/statm` (Linux only; 0 elsewhere).
pub fn rss_bytes() -> u64 {
    let page = 4096u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * page)
        .unwrap_or(0)
}

/// Install the service's own `info` subscriber (its log writer thread included) with the
/// lines thrown away at the end: the service then pays for its per-webhook log line as it
/// does in production, without flooding the bench output.
pub fn discard_logs() {
    let guard = watchstate::logging::init_to(
        std::io::sink(),
        false,
        watchstate::config::LogFormat::Text,
        Some("info"),
    );
    // Kept for the whole run: the process ends with the bench.
    std::mem::forget(guard);
}

/// The value at percentile `p` (0–100) of sorted samples (nearest rank); 0 when empty.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds as milliseconds with three decimals, for printing.
pub fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// One webhook fixture file: its name, sender and JSON bytes.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// File stem, e.g. `plex-media.scrobble-01`.
    pub name: String,
    /// `plex`, `tautulli`, `jellyfin` or `emby`, from the `.meta.json`.
    pub sender: String,
    /// The JSON the sender produces (the Plex `payload` field, the other senders' body).
    pub json: Vec<u8>,
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

/// Every fixture of `tests/fixtures/webhooks`, sorted by name.
pub fn fixtures() -> Vec<Fixture> {
    let dir = fixtures_dir();
    let mut metas: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".meta.json"))
        .collect();
    metas.sort();
    metas
        .into_iter()
        .map(|meta_path| {
            let meta: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&meta_path)
                    .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display()));
            let file = meta_path.file_name().unwrap().to_string_lossy().to_string();
            let name = file.trim_end_matches(".meta.json").to_string();
            let sample = meta["sample"]
                .as_str()
                .map(String::from)
                .unwrap_or(format!("{name}.json"));
            let body_path = dir.join(sample);
            let json = std::fs::read(&body_path)
                .unwrap_or_else(|e| panic!("{}: {e}", body_path.display()));
            let sender = meta["sender"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no sender"))
                .to_string();
            Fixture { name, sender, json }
        })
        .collect()
}

/// One request as a sender puts it on the wire.
#[derive(Debug, Clone)]
pub struct WireRequest {
    /// Fixture name (or a generated label), for error messages.
    pub name: String,
    pub sender: String,
    pub method: reqwest::Method,
    pub content_type: String,
    pub user_agent: Option<&'static str>,
    /// `Bytes`, so that every send shares one buffer instead of copying it.
    pub body: Bytes,
}

impl WireRequest {
    /// What the decoders see of this request (for routing the mix before the run).
    pub fn raw(&self) -> watchstate::webhook::RawRequest<'_> {
        watchstate::webhook::RawRequest {
            method: self.method.as_str(),
            content_type: Some(&self.content_type),
            user_agent: self.user_agent,
            body: &self.body,
        }
    }
}

const PLEX_BOUNDARY: &str = "------------------------8f1c2a7d5e3b9a04";

/// A Plex webhook: `multipart/form-data` with the JSON in the field `payload`.
pub fn plex_multipart(json: &[u8]) -> (String, Vec<u8>) {
    let mut out = Vec::with_capacity(json.len() + 200);
    out.extend_from_slice(format!("--{PLEX_BOUNDARY}\r\n").as_bytes());
    out.extend_from_slice(b"Content-Disposition: form-data; name=\"payload\"\r\n");
    out.extend_from_slice(b"Content-Type: application/json\r\n\r\n");
    out.extend_from_slice(json);
    out.extend_from_slice(format!("\r\n--{PLEX_BOUNDARY}--\r\n").as_bytes());
    (
        format!("multipart/form-data; boundary={PLEX_BOUNDARY}"),
        out,
    )
}

/// The fixture JSON in the transport its sender uses by default: Plex multipart `payload`,
/// Tautulli JSON `PUT`, Jellyfin `text/plain`, Emby JSON.
pub fn wire_request(name: &str, sender: &str, json: &[u8]) -> WireRequest {
    let (method, content_type, user_agent, body) = match sender {
        "plex" => {
            let (ct, body) = plex_multipart(json);
            (
                reqwest::Method::POST,
                ct,
                Some("PlexMediaServer/1.41.6.9685-d301f511a"),
                body,
            )
        }
        "tautulli" => (
            reqwest::Method::PUT,
            "application/json".to_string(),
            Some("Tautulli/v2.17.2"),
            json.to_vec(),
        ),
        "jellyfin" => (
            reqwest::Method::POST,
            "text/plain; charset=utf-8".to_string(),
            Some("Jellyfin-Server/10.10.3"),
            json.to_vec(),
        ),
        "emby" => (
            reqwest::Method::POST,
            "application/json".to_string(),
            None,
            json.to_vec(),
        ),
        other => panic!("{name}: unknown sender {other}"),
    };
    WireRequest {
        name: name.to_string(),
        sender: sender.to_string(),
        method,
        content_type,
        user_agent,
        body: Bytes::from(body),
    }
}

/// Send one request and return (status, elapsed), reading the whole answer so that the
/// keep-alive connection can be reused.
pub async fn send(
    client: &reqwest::Client,
    url: &str,
    req: &WireRequest,
) -> Result<(u16, Duration), reqwest::Error> {
    let started = Instant::now();
    let mut builder = client
        .request(req.method.clone(), url)
        .header(reqwest::header::CONTENT_TYPE, &req.content_type)
        .body(req.body.clone());
    if let Some(ua) = req.user_agent {
        builder = builder.header(reqwest::header::USER_AGENT, ua);
    }
    let resp = builder.send().await?;
    let status = resp.status().as_u16();
    resp.bytes().await?;
    Ok((status, started.elapsed()))
}

/// A client with one keep-alive connection per concurrent sender.
pub fn client(senders: usize) -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(senders)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// What one load phase measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Requests answered with the expected status inside the measured window.
    pub ok: u64,
    /// Other answers and transport errors inside the window, by status (0 = transport error).
    pub errors: BTreeMap<u16, u64>,
    /// Acknowledgement latencies of the `ok` requests, sorted, in microseconds.
    pub latencies_us: Vec<u64>,
    /// The measured window.
    pub window: Duration,
    /// The first few unexpected answers, to say what went wrong.
    pub error_samples: Vec<String>,
    /// CPU time the whole process (senders, server, every thread) used during the window,
    /// in microseconds; `None` where `/proc/self/stat` cannot be read.
    pub cpu_us: Option<u64>,
}

impl LoadResult {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.window.as_secs_f64()
    }
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
    pub fn p50_us(&self) -> u64 {
        percentile(&self.latencies_us, 50.0)
    }
    pub fn p99_us(&self) -> u64 {
        percentile(&self.latencies_us, 99.0)
    }
    pub fn max_us(&self) -> u64 {
        self.latencies_us.last().copied().unwrap_or(0)
    }
    /// Process CPU time per answered request, in microseconds: what one request costs the
    /// machine, senders included. It does not count time the process waited (for the disk,
    /// or for a core taken by another tenant of a shared host), but a busy host still moves
    /// it (caches, frequency) about as much as the rate.
    pub fn cpu_us_per_event(&self) -> Option<f64> {
        let cpu = self.cpu_us?;
        (self.ok > 0).then(|| cpu as f64 / self.ok as f64)
    }
}

/// CPU time (user + system) of this process so far, all threads, in microseconds; read from
/// `/proc/self/stat` (Linux), in clock ticks of 10 ms.
pub fn process_cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis
    // start at field 3, so utime and stime (fields 14 and 15) are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) * 10_000)
}

/// `senders` concurrent keep-alive senders post `requests` round-robin to `url` (each sender
/// starts at a different offset) for `warmup` + `window`; only requests that start and finish
/// inside the window are counted. Answers other than `expect` are errors.
pub async fn run_load(
    client: &reqwest::Client,
    url: &str,
    requests: Arc<Vec<WireRequest>>,
    senders: usize,
    warmup: Duration,
    window: Duration,
    expect: u16,
) -> LoadResult {
    let begin = Instant::now();
    let from = begin + warmup;
    let until = from + window;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..senders {
        let client = client.clone();
        let url = url.to_string();
        let requests = requests.clone();
        tasks.spawn(async move {
            let mut r = LoadResult::default();
            let mut n = i;
            loop {
                let started = Instant::now();
                if started >= until {
                    break;
                }
                let req = &requests[n % requests.len()];
                n += 1;
                let outcome = send(&client, &url, req).await;
                let done = Instant::now();
                if started < from || done > until {
                    continue;
                }
                match outcome {
                    Ok((status, took)) if status == expect => {
                        r.ok += 1;
                        r.latencies_us.push(took.as_micros() as u64);
                    }
                    Ok((status, _)) => {
                        *r.errors.entry(status).or_default() += 1;
                        if r.error_samples.len() < 3 {
                            r.error_samples.push(format!("{}: HTTP {status}", req.name));
                        }
                    }
                    Err(e) => {
                        *r.errors.entry(0).or_default() += 1;
                        if r.error_samples.len() < 3 {
                            r.error_samples.push(format!("{}: {e}", req.name));
                        }
                    }
                }
            }
            r
        });
    }
    tokio::time::sleep_until(from.into()).await;
    let cpu_from = process_cpu_us();
    tokio::time::sleep_until(until.into()).await;
    let cpu_until = process_cpu_us();
    let mut total = LoadResult {
        window,
        cpu_us: cpu_from.zip(cpu_until).map(|(a, b)| b.saturating_sub(a)),
        ..LoadResult::default()
    };
    while let Some(r) = tasks.join_next().await {
        let r = r.expect("sender task");
        total.ok += r.ok;
        for (k, v) in r.errors {
            *total.errors.entry(k).or_default() += v;
        }
        total.latencies_us.extend(r.latencies_us);
        for s in r.error_samples {
            if total.error_samples.len() < 5 {
                total.error_samples.push(s);
            }
        }
    }
    total.latencies_us.sort_unstable();
    total
}

/// Start the real service from the TOML `rest` (users and backends) with the server on
/// 127.0.0.1:0, storage in `data`, scheduled sync off and a fixed API key.
pub async fn start_service(data: &std::path::Path, rest: &str) -> App {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\napi_key = \"bench-key-0123456789abcdef\"\n\
         [storage]\npath = {:?}\n[sync]\ninterval = \"0\"\n{rest}\n",
        data.display().to_string()
    );
    let config = Config::parse("bench.toml", &text, &HashMap::new())
        .unwrap_or_else(|e| panic!("bench config is invalid: {e}\n{text}"));
    App::start(config)
        .await
        .unwrap_or_else(|e| panic!("the service did not start: {e}"))
}

/// The `BENCH` summary line; always the last line a bench prints.
pub fn bench_line(name: &str, fields: &[(&str, String)]) {
    let kv: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("BENCH {name} {}", kv.join(" "));
}
