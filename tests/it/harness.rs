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
}

impl Served {
    /// Start `watchstate serve --config path --log-format json` and wait until it serves.
    pub fn start(config: &Path) -> Served {
        let mut child = bin()
            .args(["serve", "--log-format", "json", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn watchstate");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("watchstate is serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
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
        Served { child, addr, log }
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
                targets,
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
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("watchstate is serving") {
                    let _ = tx.send(line.clone());
                }
                sink.lock().unwrap().push(line);
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
        Served { child, addr, log }
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
