//! Issue 2: config validation, CLI, auth, errors, request ids, body limit, shutdown.

use crate::harness::{bin, Served, TestApp, TestDir, API_KEY};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const BACKEND: &str = r#"
[users.alice.backends.plex]
type = "plex"
url = "http://127.0.0.1:32400"
token = "secret-plex-token"
server_id = "abc"
user_id = "1"
"#;

/// Run `watchstate check-config` on `text`; return (exit code, stderr).
fn check_config(text: &str) -> (i32, String) {
    let dir = TestDir::new();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("secret-plex-token"),
        "a token leaked into an error: {stderr}"
    );
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_config_error(text: &str, key: &str, words: &str) {
    let (code, err) = check_config(text);
    assert_ne!(code, 0, "expected a failure for key {key}; stderr: {err}");
    assert!(err.contains("config.toml"), "names the file: {err}");
    assert!(err.contains(key), "names the key {key}: {err}");
    assert!(
        err.to_lowercase().contains(&words.to_lowercase()),
        "says {words:?}: {err}"
    );
}

#[test]
fn valid_config_passes_check() {
    let (code, err) = check_config(BACKEND);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn shipped_config_is_valid() {
    let out = bin()
        .args(["check-config", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn config_error_unknown_backend_type() {
    assert_config_error(
        &BACKEND.replace("type = \"plex\"", "type = \"kodi\""),
        "users.alice.backends.plex.type",
        "kodi",
    );
}

#[test]
fn config_error_invalid_url() {
    assert_config_error(
        &BACKEND.replace("http://127.0.0.1:32400", "not a url"),
        "users.alice.backends.plex.url",
        "invalid url",
    );
    assert_config_error(
        &BACKEND.replace("http://127.0.0.1:32400", "ftp://host/"),
        "users.alice.backends.plex.url",
        "http",
    );
}

#[test]
fn config_error_empty_library_id() {
    assert_config_error(
        &BACKEND.replace(
            "user_id = \"1\"\n",
            "user_id = \"1\"\nignore_libraries = [\"7\", \" \"]\n",
        ),
        "users.alice.backends.plex.ignore_libraries",
        "empty id",
    );
}

#[test]
fn config_error_request_rate_too_low() {
    for rate in ["0", "-1", "1e-30"] {
        assert_config_error(
            &format!("[sync]\nmax_requests_per_second = {rate}\n{BACKEND}"),
            "sync.max_requests_per_second",
            "at least 0.001",
        );
    }
}

#[test]
fn config_error_empty_token() {
    assert_config_error(
        &BACKEND.replace("secret-plex-token", ""),
        "users.alice.backends.plex.token",
        "empty",
    );
}

#[test]
fn config_error_missing_server_id_and_user_id() {
    assert_config_error(
        &BACKEND.replace("server_id = \"abc\"\n", ""),
        "users.alice.backends.plex",
        "server_id",
    );
    assert_config_error(
        &BACKEND.replace("user_id = \"1\"\n", ""),
        "users.alice.backends.plex",
        "user_id",
    );
    assert_config_error(
        &BACKEND.replace("server_id = \"abc\"", "server_id = \" \""),
        "users.alice.backends.plex.server_id",
        "empty",
    );
}

#[test]
fn config_error_duplicate_server_and_user_under_two_users() {
    let text = format!(
        "{BACKEND}\n[users.bob.backends.plex]\ntype = \"plex\"\nurl = \"http://127.0.0.1:32400\"\ntoken = \"t\"\nserver_id = \"ABC\"\nuser_id = \"1\"\n"
    );
    assert_config_error(
        &text,
        "users.bob.backends.plex.user_id",
        "already configured at users.alice.backends.plex",
    );
}

#[test]
fn config_error_unknown_keys() {
    assert_config_error(
        &format!("{BACKEND}\ncolour = \"blue\"\n"),
        "users.alice.backends.plex",
        "unknown field `colour`",
    );
    assert_config_error(
        "[server]\nlisen = \"x\"\n",
        "server",
        "unknown field `lisen`",
    );
    assert_config_error("[extra]\na = 1\n", "extra", "unknown field `extra`");
}

#[test]
fn config_error_bad_duration() {
    assert_config_error(
        "[sync]\ninterval = \"12 parsecs\"\n",
        "sync.interval",
        "invalid duration",
    );
    assert_config_error(
        &format!("{BACKEND}sync_interval = \"soon\"\n"),
        "users.alice.backends.plex.sync_interval",
        "invalid duration",
    );
}

#[test]
fn config_error_retry_delays() {
    assert_config_error(
        "[sync]\nretry_base = \"0s\"\n",
        "sync.retry_base",
        "greater than 0",
    );
    assert_config_error(
        "[sync]\nretry_base = \"10s\"\nretry_max = \"5s\"\n",
        "sync.retry_max",
        "at least sync.retry_base (10s)",
    );
    assert_config_error(
        "[sync]\nfirst_sync_delay = \"later\"\n",
        "sync.first_sync_delay",
        "invalid duration",
    );
}

#[test]
fn config_error_syntax_and_missing_file() {
    assert_config_error("[server\n", "(syntax)", "line 1");
    let out = bin()
        .args(["check-config", "--config", "/nonexistent/watchstate.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

#[test]
fn environment_overrides_a_scalar_key() {
    let dir = TestDir::new();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, BACKEND).unwrap();
    let out = bin()
        .args(["check-config", "--config"])
        .arg(&path)
        .env("WATCHSTATE_SERVER_MAX_BODY_BYTES", "not-a-number")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WATCHSTATE_SERVER_MAX_BODY_BYTES"), "{err}");
}

#[test]
fn version_and_help() {
    let out = bin().arg("--version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = bin().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "serve",
        "check-config",
        "check-servers",
        "apikey",
        "--config",
    ] {
        assert!(help.contains(word), "help mentions {word}: {help}");
    }
}

#[tokio::test]
async fn auth_matrix_with_open_webhook() {
    let t = TestApp::start(TestDir::new(), &format!("api_key = \"{API_KEY}\""), BACKEND).await;
    let c = &t.client;
    // Always open.
    let r = c.get(t.url("/system/healthcheck")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(t.url("/system/ready")).send().await.unwrap();
    assert!(r.status() == 200 || r.status() == 503);
    // The webhook is open by default.
    let r = c.get(t.url("/webhook")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["status"],
        "ready"
    );
    // Protected routes: missing key, wrong key, each accepted form.
    let r = c.get(t.url("/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 401);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("X-Apikey") && msg.contains("Bearer") && msg.contains("apikey="),
        "{msg}"
    );
    let r = c
        .get(t.url("/status"))
        .header("X-Apikey", "wrong-key-0123456789abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(t.url("/status"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for req in [
        c.get(t.url("/status")).header("X-Apikey", API_KEY),
        c.get(t.url("/status")).bearer_auth(API_KEY),
        c.get(format!("{}?apikey={API_KEY}", t.url("/status"))),
    ] {
        let r = req.send().await.unwrap();
        assert_ne!(r.status(), 401, "a valid key form was refused");
        assert_ne!(r.status(), 404);
    }
    t.stop().await;
}

#[tokio::test]
async fn auth_with_secure_webhooks() {
    let t = TestApp::start(
        TestDir::new(),
        &format!("api_key = \"{API_KEY}\"\nsecure_webhooks = true"),
        BACKEND,
    )
    .await;
    let c = &t.client;
    let r = c.get(t.url("/webhook")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c.post(t.url("/webhook")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .get(t.url("/webhook"))
        .header("X-Apikey", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}?apikey={API_KEY}", t.url("/webhook")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Health stays open.
    let r = c.get(t.url("/system/healthcheck")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    t.stop().await;
}

#[tokio::test]
async fn body_limit_request_id_and_json_404() {
    let t = TestApp::start(
        TestDir::new(),
        &format!("api_key = \"{API_KEY}\"\nmax_body_bytes = 1000"),
        BACKEND,
    )
    .await;
    let c = &t.client;
    let r = c
        .post(t.url("/webhook"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 413);
    // A chunked body (no Content-Length) over the limit is refused too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b'y'; 100])).collect();
    let r = c
        .post(t.url("/webhook"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // A new id on every answer, a sane incoming one echoed, an insane one replaced.
    let r = c.get(t.url("/system/healthcheck")).send().await.unwrap();
    let id1 = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let r = c.get(t.url("/system/healthcheck")).send().await.unwrap();
    let id2 = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(!id1.is_empty() && id1 != id2);
    let r = c
        .get(t.url("/system/healthcheck"))
        .header("X-Request-Id", "from-proxy-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "from-proxy-42");
    let r = c
        .get(t.url("/system/healthcheck"))
        .header("X-Request-Id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"], "bad id with spaces");

    for path in ["/nothing-here", "/status-ish"] {
        let r = c
            .get(t.url(path))
            .header("X-Apikey", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert!(r.headers().contains_key("x-request-id"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], 404);
    }
    let r = c
        .get(format!("http://{}/elsewhere", t.app.as_ref().unwrap().addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["content-type"], "application/json");
    t.stop().await;
}

#[test]
fn apikey_is_generated_once_and_accepted() {
    let dir = TestDir::new();
    let path = dir.config("", BACKEND);
    let key = |p: &std::path::Path| {
        let out = bin().args(["apikey", "--config"]).arg(p).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let k1 = key(&path);
    let k2 = key(&path);
    assert_eq!(k1, k2);
    assert!(
        k1.len() >= 32 && k1.chars().all(|c| c.is_ascii_hexdigit()),
        "{k1}"
    );

    let served = Served::start(&path);
    // While the service holds the database, the command still prints the same key.
    assert_eq!(key(&path), k1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let r = c
            .get(served.url("/status"))
            .header("X-Apikey", &k1)
            .send()
            .await
            .unwrap();
        assert_ne!(r.status(), 401);
        let r = c
            .get(served.url("/status"))
            .header("X-Apikey", "0".repeat(64))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    });
    assert!(
        !served.log_text().contains(&k1),
        "the key must never be logged"
    );
}

/// The log is written by a thread of its own: a reader of stderr that stalls (a full pipe)
/// does not hold up webhooks. Written from the request's task, the 65th KiB of log lines
/// blocked the handler, and with it every webhook after.
#[test]
fn a_stalled_log_reader_does_not_hold_up_webhooks() {
    let dir = TestDir::new();
    let path = dir.config(&format!("api_key = \"{API_KEY}\""), BACKEND);
    let served = Served::start(&path);
    served
        .stall_log
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let rt = tokio::runtime::Runtime::new().unwrap();
    const N: usize = 1500;
    rt.block_on(async {
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for i in 0..N {
            // Each is answered `unmatched` and logs a line of a few hundred bytes: far more
            // than a pipe holds (64 KiB) in all.
            let body = format!(
                r#"{{"Event":"playback.start","Server":{{"Id":"unknown-server"}},"User":{{"Id":"u{i}"}},"Item":{{"Id":"{i}","Type":"Movie"}}}}"#
            );
            let r = c
                .post(served.url("/webhook"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("webhook {i} was not answered while the log stalled: {e}"));
            assert_eq!(r.status(), 200, "webhook {i}");
        }
    });
    // Once the reader goes on, every line arrives: none was dropped.
    served
        .stall_log
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    let logged = || {
        served
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("\"message\":\"webhook\""))
            .count()
    };
    while logged() < N {
        assert!(
            Instant::now() < deadline,
            "only {} of {N} webhook log lines arrived",
            logged()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status: serde_json::Value = rt.block_on(async {
        reqwest::Client::new()
            .get(served.url("/status"))
            .header("X-Apikey", API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(status["log"]["dropped_lines"], 0, "{status}");
}

#[test]
fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    let dir = TestDir::new();
    let path = dir.config(&format!("api_key = \"{API_KEY}\""), BACKEND);
    let mut served = Served::start(&path);
    // Start a request and leave its body unfinished: it is in flight when SIGTERM arrives.
    let mut conn = std::net::TcpStream::connect(&served.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let body = b"{\"hello\":\"world\"}";
    write!(
        conn,
        "POST /v1/api/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    conn.write_all(&body[..5]).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    served.signal("TERM");
    // The listener closes, but the in-flight request is still answered.
    std::thread::sleep(Duration::from_millis(100));
    conn.write_all(&body[5..]).unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.push_str(&String::from_utf8_lossy(&buf[..n]));
                if answer.contains("\r\n\r\n") && answer.contains('}') {
                    break;
                }
            }
            Err(e) => panic!("reading the answer failed: {e}; so far {answer:?}"),
        }
    }
    assert!(
        answer.starts_with("HTTP/1.1 "),
        "an HTTP answer: {answer:?}"
    );
    assert!(answer.contains("x-request-id"), "{answer}");
    drop(conn);
    let status = served
        .wait_exit(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "log: {}", served.log_text());
}
