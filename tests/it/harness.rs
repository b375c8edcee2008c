//! Starting the real service for tests: in-process on 127.0.0.1:0, or the real binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use watchstate::app::App;
use watchstate::config::Config;

pub const API_KEY: &str = "test-key-0123456789abcdef";

/// A temporary data dir and a config file inside it.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    /// Write `config.toml` with the server on port 0 and storage in this dir, then `extra`.
    pub fn config(&self, server_extra: &str, rest: &str) -> PathBuf {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[storage]\npath = {:?}\n[sync]\ninterval = \"0\"\n{rest}\n",
            self.data().display().to_string()
        );
        let p = self.dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// The service running in this test process.
pub struct TestApp {
    pub app: Option<App>,
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
    pub dir: TestDir,
}

impl TestApp {
    pub async fn start(dir: TestDir, server_extra: &str, rest: &str) -> TestApp {
        let path = dir.config(server_extra, rest);
        let config = Config::load(&path).expect("valid test config");
        let app = App::start(config).await.expect("app starts");
        TestApp {
            base: format!("http://{}/v1/api", app.addr),
            key: app.api_key.clone(),
            app: Some(app),
            client: reqwest::Client::new(),
            dir,
        }
    }
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
    pub async fn stop(mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }
}

/// The real `watchstate` binary.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_watchstate"))
}

/// A `watchstate serve` child process and the address it listens on.
pub struct Served {
    pub child: Child,
    pub addr: String,
    /// Everything the process logged so far and later (collected by a thread).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// While true, the thread stops reading the process's stderr: its pipe fills up, like
    /// a log reader that has stalled.
    pub stall_log: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Served {
    /// Start `watchstate serve --config path --log-format json` and wait until it serves.
    pub fn start(config: &Path) -> Served {
        Served::start_with_env(config, &[])
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/v1/api{}", self.addr, path)
    }

    /// Wait for the process to exit, with a deadline.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Poll `check` until it returns `Some`, or panic after `deadline` naming `what`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Only the HTTP intake (no actors, no journal): the webhook handler in front of a given sink.
pub struct IntakeServer {
    pub addr: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl IntakeServer {
    pub async fn start(
        targets: Vec<watchstate::webhook::RouteTarget>,
        sink: std::sync::Arc<dyn watchstate::ingest::EventSink>,
    ) -> IntakeServer {
        use watchstate::http::service::ServiceRoutes;
        use watchstate::http::webhook::{RequestLog, WebhookService};
        let api = std::sync::Arc::new(watchstate::http::Api {
            api_key: API_KEY.to_string(),
            secure_webhooks: false,
            max_body_bytes: 1 << 20,
            started: Instant::now(),
            readiness: Box::new(Vec::new),
        });
        let routes = std::sync::Arc::new(ServiceRoutes {
            webhook: WebhookService {
                routes: watchstate::webhook::RouteTable::new(targets),
                sink,
                unmatched: Default::default(),
                requests: RequestLog::new(100),
                counters: Default::default(),
                max_body_bytes: 1 << 20,
                clock: std::sync::Arc::new(watchstate_actors::clock::SystemClock),
            },
            actors: None,
            journal: None,
            store: None,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(watchstate::http::serve(listener, api, routes, async move {
            let _ = rx.await;
        }));
        IntakeServer {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/v1/api{}", self.addr, path)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Served {
    /// Like [`Served::start`], with extra environment variables (e.g. `RUST_LOG=debug`).
    pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Served {
        let mut cmd = bin();
        cmd.args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Served::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Served {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn watchstate");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = log.clone();
        let stall_log = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stalled = stall_log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("watchstate is serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
                while stalled.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("watchstate did not start; log: {:?}", log.lock().unwrap()));
        let v: serde_json::Value = serde_json::from_str(&line).expect("json log line");
        let addr = v["addr"]
            .as_str()
            .expect("addr in the start line")
            .to_string();
        Served {
            child,
            addr,
            log,
            stall_log,
        }
    }

    /// `kill -9` the process (no shutdown code runs) and reap it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL watchstate");
        self.child.wait().expect("reap watchstate");
    }
}

/// `GET url` with the API key; the status code and the body as JSON (`Null` if not JSON).
pub async fn get_json(client: &reqwest::Client, url: &str, key: &str) -> (u16, serde_json::Value) {
    let r = client
        .get(url)
        .header("X-Apikey", key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let body = r.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// How a [`FakeBackend`] answers every request.
#[derive(Debug, Clone)]
pub enum FakeBehaviour {
    /// 200 with `{}`.
    Ok,
    /// This status with an error body, and `Retry-After: secs` when given.
    Status(u16, Option<u64>),
    /// Sleep this long, then 200 (a media server that hangs).
    Slow(Duration),
}

/// A minimal media server that records every request (method, path?query) and answers as
/// told: enough to count pushes and to inject faults, without any library semantics.
pub struct FakeBackend {
    pub addr: std::net::SocketAddr,
    /// Every request seen, in arrival order: `"POST /UserPlayedItems/x?userId=.."`.
    pub requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Changed by the test while the server runs.
    pub behaviour: std::sync::Arc<std::sync::Mutex<FakeBehaviour>>,
    /// Dropping it stops the server.
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl FakeBackend {
    pub async fn start(behaviour: FakeBehaviour) -> FakeBackend {
        use warp::Filter;
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let behaviour = std::sync::Arc::new(std::sync::Mutex::new(behaviour));
        let (rec, beh) = (requests.clone(), behaviour.clone());
        let raw_query = warp::query::raw().or(warp::any().map(String::new)).unify();
        let filter = warp::method().and(warp::path::full()).and(raw_query).then(
            move |m: http::Method, p: warp::path::FullPath, q: String| {
                let rec = rec.clone();
                let beh = beh.clone();
                async move {
                    rec.lock().unwrap().push(format!("{m} {}?{q}", p.as_str()));
                    let b = beh.lock().unwrap().clone();
                    let (code, body, retry) = match b {
                        FakeBehaviour::Ok => (200, "{}", None),
                        FakeBehaviour::Slow(d) => {
                            tokio::time::sleep(d).await;
                            (200, "{}", None)
                        }
                        FakeBehaviour::Status(code, retry) => {
                            (code, "{\"error\":\"injected\"}", retry)
                        }
                    };
                    let mut resp = warp::reply::Reply::into_response(warp::reply::with_status(
                        warp::reply::with_header(body, "content-type", "application/json"),
                        http::StatusCode::from_u16(code).unwrap(),
                    ));
                    if let Some(s) = retry {
                        resp.headers_mut()
                            .insert("retry-after", s.to_string().parse().unwrap());
                    }
                    resp
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(filter)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        FakeBackend {
            addr,
            requests,
            behaviour,
            _shutdown: tx,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, b: FakeBehaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Requests whose "METHOD path?query" line contains `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(needle))
            .count()
    }
}

/// A TCP port on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// End-to-end helpers: config tables for fake servers, webhook bodies shaped like the real
// senders' (see tests/fixtures/webhooks), and status polling.

/// A `[users.<user>.backends.<name>]` table pointing at `fake` for its default user, with
/// `extra` lines (e.g. `export = false`) appended.
pub fn backend_toml(
    user: &str,
    name: &str,
    fake: &crate::fakes::FakeServer,
    extra: &str,
) -> String {
    backend_toml_for(user, name, fake, fake.user_id(), fake.token(), extra)
}

/// [`backend_toml`] for another user of the same fake (added with `FakeServer::add_user`).
pub fn backend_toml_for(
    user: &str,
    name: &str,
    fake: &crate::fakes::FakeServer,
    user_id: &str,
    token: &str,
    extra: &str,
) -> String {
    let kind = match fake.kind() {
        crate::fakes::FakeKind::Plex => "plex",
        crate::fakes::FakeKind::Jellyfin => "jellyfin",
        crate::fakes::FakeKind::Emby => "emby",
    };
    format!(
        "\n[users.{user}.backends.{name}]\ntype = \"{kind}\"\nurl = \"{}\"\ntoken = \"{token}\"\nserver_id = \"{}\"\nuser_id = \"{user_id}\"\n{extra}\n",
        fake.url(),
        fake.server_id(),
    )
}

/// A webhook request body as a media server sends it.
#[derive(Debug, Clone)]
pub struct WebhookBody {
    pub content_type: String,
    pub user_agent: Option<&'static str>,
    pub body: Vec<u8>,
}

/// What a test says about the item a Plex webhook is about.
#[derive(Debug, Clone, Default)]
pub struct PlexMeta {
    /// `ratingKey`.
    pub rating_key: String,
    /// `movie` or `episode`.
    pub kind: &'static str,
    pub title: String,
    /// `Guid[]` entries, e.g. `("imdb", "tt0133093")`.
    pub guids: Vec<(&'static str, String)>,
    /// `guid`: `plex://...` or a legacy agent guid.
    pub guid: Option<String>,
    /// Episode: show title, season (`parentIndex`), episode (`index`).
    pub show: Option<(String, u32, u32)>,
    /// `viewOffset`, ms.
    pub view_offset_ms: Option<u64>,
    pub duration_ms: u64,
}

/// A Plex webhook (`media.scrobble`, `media.pause`, `media.stop`, ...): multipart with a JSON
/// `payload` part, as in `plex-media.scrobble-01`.
pub fn plex_webhook(event: &str, server_id: &str, account_id: u64, meta: &PlexMeta) -> WebhookBody {
    let mut m = serde_json::json!({
        "librarySectionType": if meta.kind == "movie" { "movie" } else { "show" },
        "ratingKey": meta.rating_key,
        "key": format!("/library/metadata/{}", meta.rating_key),
        "guid": meta.guid.clone().unwrap_or_else(|| format!("plex://{}/5d7768ba96b655001fdc{}", meta.kind, meta.rating_key)),
        "type": meta.kind,
        "title": meta.title,
        "librarySectionTitle": if meta.kind == "movie" { "Movies" } else { "TV Shows" },
        "librarySectionID": if meta.kind == "movie" { 1 } else { 2 },
        "duration": meta.duration_ms,
        "addedAt": 1_699_000_000,
        "updatedAt": 1_716_000_000,
    });
    if let Some(v) = meta.view_offset_ms {
        m["viewOffset"] = serde_json::json!(v);
    }
    if !meta.guids.is_empty() {
        m["Guid"] = serde_json::Value::Array(
            meta.guids
                .iter()
                .map(|(p, id)| serde_json::json!({"id": format!("{p}://{id}")}))
                .collect(),
        );
    }
    if let Some((show, season, episode)) = &meta.show {
        m["grandparentTitle"] = serde_json::json!(show);
        m["parentTitle"] = serde_json::json!(format!("Season {season}"));
        m["parentIndex"] = serde_json::json!(season);
        m["index"] = serde_json::json!(episode);
    }
    let payload = serde_json::json!({
        "event": event,
        "user": true,
        "owner": true,
        "Account": {"id": account_id, "thumb": "https://plex.tv/users/4f0c2a9e1b7d3c55/avatar", "title": "alice"},
        "Server": {"title": "living-room", "uuid": server_id},
        "Player": {"local": true, "publicAddress": "203.0.113.24", "title": "SHIELD Android TV", "uuid": "9a8b7c6d5e4f3a2b-com-plexapp-android"},
        "Metadata": m,
    });
    let boundary = "------------------------8f1c2a7d5e3b9a04";
    WebhookBody {
        content_type: format!("multipart/form-data; boundary={boundary}"),
        user_agent: Some("PlexMediaServer/1.41.6.9685-d301f511a"),
        body: crate::support::fixtures::multipart(
            boundary,
            &[(
                "payload",
                None,
                "application/json",
                payload.to_string().as_bytes(),
            )],
        ),
    }
}

/// What a test says about the item of a Jellyfin or Emby webhook.
#[derive(Debug, Clone, Default)]
pub struct MbItem {
    pub id: String,
    /// `Movie` or `Episode`.
    pub kind: &'static str,
    pub name: String,
    /// Provider ids, e.g. `("Imdb", "tt0133093")` (Jellyfin writes `Provider_imdb`).
    pub ids: Vec<(&'static str, String)>,
    /// Episode: series name, season, episode.
    pub series: Option<(String, u32, u32)>,
    pub runtime_ms: u64,
}

fn jellyfin_base(notification: &str, server_id: &str, item: &MbItem) -> serde_json::Value {
    let mut v = serde_json::json!({
        "ServerId": server_id,
        "ServerName": "jelly",
        "ServerVersion": "10.10.7",
        "ServerUrl": "",
        "NotificationType": notification,
        "Timestamp": "2025-03-15T09:12:03.55107+01:00",
        "UtcTimestamp": "2025-03-15T08:12:03.5510754Z",
        "Name": item.name,
        "Overview": "",
        "Tagline": "",
        "ItemId": item.id,
        "ItemType": item.kind,
        "RunTimeTicks": item.runtime_ms * 10_000,
        "RunTime": "01:56:01",
        "Year": 2016,
    });
    for (p, id) in &item.ids {
        v[format!("Provider_{}", p.to_ascii_lowercase())] = serde_json::json!(id);
    }
    if let Some((series, season, episode)) = &item.series {
        v["SeriesName"] = serde_json::json!(series);
        v["SeriesId"] = serde_json::json!("0f1e2d3c4b5a49687766554433221100");
        v["SeasonNumber"] = serde_json::json!(season);
        v["SeasonNumber00"] = serde_json::json!(format!("{season:02}"));
        v["EpisodeNumber"] = serde_json::json!(episode);
        v["EpisodeNumber00"] = serde_json::json!(format!("{episode:02}"));
    }
    v
}

fn jellyfin_body(v: serde_json::Value) -> WebhookBody {
    WebhookBody {
        content_type: "text/plain; charset=utf-8".into(),
        user_agent: Some("Jellyfin-Server/10.10.7"),
        body: v.to_string().into_bytes(),
    }
}

/// Jellyfin `UserDataSaved` (as in `jellyfin-UserDataSaved-03`): `reason` is the `SaveReason`
/// (`TogglePlayed`, `PlaybackFinished`, ...).
pub fn jellyfin_user_data_saved(
    server_id: &str,
    user_id: &str,
    item: &MbItem,
    reason: &str,
    played: bool,
    position_ms: u64,
) -> WebhookBody {
    let mut v = jellyfin_base("UserDataSaved", server_id, item);
    v["Likes"] = serde_json::json!(false);
    v["Rating"] = serde_json::json!(0);
    v["PlaybackPositionTicks"] = serde_json::json!(position_ms * 10_000);
    v["PlaybackPosition"] = serde_json::json!("00:00:00");
    v["PlayCount"] = serde_json::json!(u32::from(played));
    v["Favorite"] = serde_json::json!(false);
    v["Played"] = serde_json::json!(played);
    v["AudioStreamIndex"] = serde_json::json!(-1);
    v["SubtitleStreamIndex"] = serde_json::json!(-1);
    if played {
        v["LastPlayedDate"] = serde_json::json!("2025-03-15T08:12:03.5436120Z");
    }
    v["SaveReason"] = serde_json::json!(reason);
    v["NotificationUsername"] = serde_json::json!("alice");
    v["UserId"] = serde_json::json!(user_id);
    jellyfin_body(v)
}

/// Jellyfin `PlaybackProgress` (as in `jellyfin-PlaybackProgress-01`).
pub fn jellyfin_progress(
    server_id: &str,
    user_id: &str,
    item: &MbItem,
    position_ms: u64,
    paused: bool,
) -> WebhookBody {
    let mut v = jellyfin_base("PlaybackProgress", server_id, item);
    v["PlaybackPositionTicks"] = serde_json::json!(position_ms * 10_000);
    v["PlaybackPosition"] = serde_json::json!("00:24:12");
    v["MediaSourceId"] = serde_json::json!(item.id);
    v["IsPaused"] = serde_json::json!(paused);
    v["IsAutomated"] = serde_json::json!(false);
    v["DeviceName"] = serde_json::json!("Firefox");
    v["ClientName"] = serde_json::json!("Jellyfin Web");
    v["PlayMethod"] = serde_json::json!("DirectPlay");
    v["UserId"] = serde_json::json!(user_id);
    v["NotificationUsername"] = serde_json::json!("alice");
    jellyfin_body(v)
}

/// Jellyfin `ItemAdded` (as in `jellyfin-ItemAdded-01`): no user.
pub fn jellyfin_item_added(server_id: &str, item: &MbItem) -> WebhookBody {
    jellyfin_body(jellyfin_base("ItemAdded", server_id, item))
}

/// An Emby webhook (`item.markplayed`, `item.markunplayed`, `playback.stop`, ...) as raw JSON,
/// as in `emby-item.markplayed-01`.
pub fn emby_webhook(event: &str, server_id: &str, user_id: &str, item: &MbItem) -> WebhookBody {
    let mut it = serde_json::json!({
        "Name": item.name,
        "ServerId": server_id,
        "Id": item.id,
        "Type": item.kind,
        "RunTimeTicks": item.runtime_ms * 10_000,
        "IsFolder": false,
        "MediaType": "Video",
        "ProviderIds": item.ids.iter().map(|(p, id)| (p.to_string(), serde_json::json!(id))).collect::<serde_json::Map<_, _>>(),
    });
    if let Some((series, season, episode)) = &item.series {
        it["SeriesName"] = serde_json::json!(series);
        it["SeriesId"] = serde_json::json!("88190");
        it["ParentIndexNumber"] = serde_json::json!(season);
        it["IndexNumber"] = serde_json::json!(episode);
    }
    let v = serde_json::json!({
        "Title": format!("alice {event} {}", item.name),
        "Date": "2025-06-08T09:30:12.5521904Z",
        "Event": event,
        "User": {"Name": "alice", "Id": user_id},
        "Item": it,
        "Server": {"Name": "emby-home", "Id": server_id, "Version": "4.8.11.0"},
    });
    WebhookBody {
        content_type: "application/json".into(),
        user_agent: None,
        body: v.to_string().into_bytes(),
    }
}

impl TestApp {
    /// POST a webhook; returns the HTTP status and the JSON answer.
    pub async fn webhook(&self, body: &WebhookBody) -> (u16, serde_json::Value) {
        let mut r = self
            .client
            .post(self.url("/webhook"))
            .header("content-type", &body.content_type)
            .body(body.body.clone());
        if let Some(ua) = body.user_agent {
            r = r.header("user-agent", ua);
        }
        let resp = r.send().await.expect("webhook request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET an API path with the key; the JSON answer (panics on a non-200).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .client
            .get(self.url(path))
            .header("X-Apikey", &self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("json answer")
    }

    /// POST an API path with the key; the HTTP status and JSON answer.
    pub async fn post_api(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("X-Apikey", &self.key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// One actor's status object.
    pub async fn pair(&self, user: &str, backend: &str) -> serde_json::Value {
        self.get_json(&format!("/status/users/{user}/{backend}"))
            .await
    }

    /// Trigger a sync of one pair through the API (202) and wait until it finished with `ok`;
    /// its status afterwards.
    pub async fn sync_and_wait(&self, user: &str, backend: &str) -> serde_json::Value {
        // A timer-driven run may be going on (409): wait for it to end, then start ours.
        let path = format!("/status/users/{user}/{backend}/sync");
        let before = eventually(
            Duration::from_secs(15),
            &format!("the API to start a sync of {user}/{backend}"),
            || async {
                let before = self.pair(user, backend).await["sync"]["runs_ok"]
                    .as_u64()
                    .unwrap_or(0);
                let (status, body) = self.post_api(&path).await;
                assert!(
                    status == 202 || status == 409,
                    "sync {user}/{backend}: {status} {body}"
                );
                (status == 202).then_some(before)
            },
        )
        .await;
        self.wait_sync_runs(user, backend, before + 1).await
    }

    /// Wait until `runs_ok` of a pair reaches `runs` (and it is not running); its status.
    pub async fn wait_sync_runs(&self, user: &str, backend: &str, runs: u64) -> serde_json::Value {
        eventually(
            Duration::from_secs(15),
            &format!("sync of {user}/{backend} to finish ok"),
            || async {
                let s = self.pair(user, backend).await;
                let failed = s["sync"]["runs_failed"].as_u64().unwrap_or(0);
                assert_eq!(failed, 0, "sync of {user}/{backend} failed: {s:#}");
                (s["sync"]["runs_ok"].as_u64() >= Some(runs) && s["sync"]["running"] == false)
                    .then_some(s)
            },
        )
        .await
    }

    /// Whether the service is quiet now: journal empty, every actor idle with no queued push.
    pub async fn is_quiet(&self) -> bool {
        let g = self.get_json("/status").await;
        let users = self.get_json("/status/users").await;
        let journal_empty = g["journal"]["depth"].as_u64() == Some(0);
        let outbox_empty = g["outbox"]["pending"].as_u64() == Some(0);
        let all_idle = users.as_array().into_iter().flatten().all(|u| {
            u["backends"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|b| b["state"] == "idle" && b["outbox_pending"] == 0)
        });
        journal_empty && outbox_empty && all_idle
    }

    /// Wait until the service has been quiet ([`Self::is_quiet`]) on every poll for `settle`
    /// (so a late echo would have had time to show), or panic after 20 s.
    pub async fn wait_quiet(&self, settle: Duration) {
        let end = Instant::now() + Duration::from_secs(20);
        let mut since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if self.is_quiet().await {
                if now.duration_since(*since.get_or_insert(now)) >= settle {
                    return;
                }
            } else {
                since = None;
            }
            assert!(now < end, "the service did not become quiet within 20 s");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl TestDir {
    /// Like [`TestDir::config`], with the whole `[sync]` table body given by the test
    /// (`sync` must set `interval`; the default one disables the timer).
    pub fn config_sync(&self, server_extra: &str, sync: &str, rest: &str) -> PathBuf {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n[storage]\npath = {:?}\n[sync]\n{sync}\n{rest}\n",
            self.data().display().to_string()
        );
        let p = self.dir.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl TestApp {
    /// [`TestApp::start`] with the `[sync]` table body given by the test.
    pub async fn start_sync(dir: TestDir, server_extra: &str, sync: &str, rest: &str) -> TestApp {
        let path = dir.config_sync(server_extra, sync, rest);
        let config = Config::load(&path).expect("valid test config");
        let app = App::start(config).await.expect("app starts");
        TestApp {
            base: format!("http://{}/v1/api", app.addr),
            key: app.api_key.clone(),
            app: Some(app),
            client: reqwest::Client::new(),
            dir,
        }
    }

    /// Stop the service and keep its data dir, to start it again on the same data.
    pub async fn stop_keep_dir(mut self) -> TestDir {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
        self.dir
    }
}

/// Tautulli's `watched` notification (the webhook guide's template, every value a string), from
/// `tautulli-watched-01` with the server, account, item and ids of the test.
pub fn tautulli_watched(
    server_id: &str,
    account_id: &str,
    rating_key: &str,
    guids: &[(&str, &str)],
) -> WebhookBody {
    let path = crate::support::fixtures::fixtures_dir().join("tautulli-watched-01.json");
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("tautulli fixture")).unwrap();
    v["Server"]["uuid"] = serde_json::json!(server_id);
    v["Account"]["id"] = serde_json::json!(account_id);
    v["Metadata"]["ratingKey"] = serde_json::json!(rating_key);
    let ids = v["Metadata"]["Guids"].as_object_mut().unwrap();
    for value in ids.values_mut() {
        *value = serde_json::json!("");
    }
    for (provider, id) in guids {
        ids.insert(provider.to_string(), serde_json::json!(id));
    }
    WebhookBody {
        content_type: "application/json".into(),
        user_agent: Some("Tautulli/v2.17.2"),
        body: v.to_string().into_bytes(),
    }
}
