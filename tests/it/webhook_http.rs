//! Issues 3 and 4 through the wire: the dry run over every fixture, the answer for each
//! outcome, routing through the real server, the 503 when nothing can be stored, and the status
//! API reflecting what happened.

use crate::harness::{eventually, IntakeServer, TestApp, TestDir, API_KEY};
use crate::support::fixtures::{check_expected, fixture_cases};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use watchstate::ingest::MemorySink;
use watchstate::webhook::RouteTarget;

/// Alice on one Jellyfin server and Plex; bob and carol share another Jellyfin server (ids of
/// the fixtures; carol's server id is written with dashes and upper case on purpose).
const CONFIG: &str = r#"
[users.alice.backends.jellyfin]
type = "jellyfin"
url = "http://127.0.0.1:9"
token = "jf-token"
server_id = "16588a9f-062a-40c4-9665-86b1d220bffc"
user_id = "02700c8344d542619b39319296c0d4c7"
export = false

[users.bob.backends.jellyfin]
type = "jellyfin"
url = "http://127.0.0.1:9"
token = "jf-token"
server_id = "7bc43eb3bf2c4266980f3e30ab4d8fa4"
user_id = "a4b9f3c2d1e04f6a8b7c6d5e4f3a2b1c"
export = false

[users.carol.backends.jellyfin]
type = "jellyfin"
url = "http://127.0.0.1:9"
token = "jf-token"
server_id = "7BC43EB3-BF2C-4266-980F-3E30AB4D8FA4"
user_id = "c4r0l"
export = false

[users.alice.backends.plex]
type = "plex"
url = "http://127.0.0.1:9"
token = "plex-token"
server_id = "3f2a9c1d7e8b4a6f9c0d1e2f3a4b5c6d7e8f9a0b"
user_id = "24681357"
export = false
"#;

fn fixture(name: &str, transport: &str) -> crate::support::fixtures::FixtureCase {
    fixture_cases()
        .into_iter()
        .find(|c| c.name == name && c.transport == transport)
        .unwrap_or_else(|| panic!("no fixture {name} in transport {transport}"))
}

fn request(
    client: &reqwest::Client,
    url: &str,
    case: &crate::support::fixtures::FixtureCase,
) -> reqwest::RequestBuilder {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut r = client.request(method, url).body(case.body.clone());
    if let Some(ct) = &case.content_type {
        r = r.header("content-type", ct);
    }
    if let Some(ua) = &case.user_agent {
        r = r.header("user-agent", ua);
    }
    r
}

async fn get_json(t: &TestApp, path: &str) -> Value {
    let r = t
        .client
        .get(t.url(path))
        .header("X-Apikey", &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "GET {path}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn dry_run_decodes_every_fixture_in_every_transport_and_stores_nothing() {
    let t = TestApp::start(TestDir::new(), &format!("api_key = \"{API_KEY}\""), CONFIG).await;
    let cases = fixture_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let r = request(&t.client, &t.url("/webhook?dry_run=1"), case)
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            failures.push(format!("{}: HTTP {}", case.label(), r.status()));
            continue;
        }
        let answer: Value = r.json().await.unwrap();
        for key in ["request_id", "status", "reason", "event", "routed"] {
            if answer.get(key).is_none() {
                failures.push(format!("{}: answer lacks {key}", case.label()));
            }
        }
        let mut event = answer["event"].clone();
        event["actionable"] = answer["actionable"].clone();
        if let Err(e) = check_expected(&event, &case.expected) {
            failures.push(format!("{}: {e}", case.label()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let status = get_json(&t, "/status").await;
    assert_eq!(
        status["webhooks"]["accepted"], 0,
        "a dry run stored something"
    );
    assert_eq!(status["journal"]["appended"], 0);
    assert_eq!(status["webhooks"]["dry_runs"], cases.len());
    t.stop().await;
}

/// Every spelling of a dry run is one; a value that is neither on nor off is refused (400)
/// rather than taken as off, and nothing is stored in any of these cases.
#[tokio::test]
async fn dry_run_spellings_never_store_the_event() {
    let t = TestApp::start(TestDir::new(), &format!("api_key = \"{API_KEY}\""), CONFIG).await;
    let case = fixture_cases()
        .into_iter()
        .find(|c| c.expected["actionable"] == true)
        .expect("an actionable fixture");
    for query in [
        "dry_run",
        "dry_run=",
        "dry_run=TRUE",
        "dry_run=on",
        "dry_run=Yes",
    ] {
        let r = request(&t.client, &t.url(&format!("/webhook?{query}")), &case)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "?{query}");
        let answer: Value = r.json().await.unwrap();
        assert!(answer.get("event").is_some(), "?{query}: {answer}");
    }
    let r = request(&t.client, &t.url("/webhook?dry_run=please"), &case)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dry_run"),
        "{answer}"
    );
    let status = get_json(&t, "/status").await;
    assert_eq!(
        status["webhooks"]["accepted"], 0,
        "a dry run stored something"
    );
    assert_eq!(status["journal"]["appended"], 0);
    assert_eq!(status["webhooks"]["dry_runs"], 5);
    t.stop().await;
}

/// The Plex owner is `1` in Plex's own webhooks and their plex.tv account id in Tautulli's:
/// with one as `user_id` and the other in `user_id_aliases`, both reach the same pair.
#[tokio::test]
async fn a_user_id_alias_routes_tautulli_and_plex_ids_of_the_owner_alike() {
    let config = r#"
[users.alice.backends.plex]
type = "plex"
url = "http://127.0.0.1:9"
token = "plex-token"
server_id = "9d2c7e5a1b3f48c6a0e4d8b2f6c1a7e3b5d9f0c2"
user_id = "1"
user_id_aliases = ["28467193"]
export = false
"#;
    let t = TestApp::start(TestDir::new(), &format!("api_key = \"{API_KEY}\""), config).await;
    let body = include_str!("../fixtures/webhooks/tautulli-watched-01.json");
    assert!(body.contains(r#""id": "28467193""#));
    let (put, patch) = (reqwest::Method::PUT, reqwest::Method::PATCH);
    for (label, method, body) in [
        ("plex.tv account id", put.clone(), body.to_string()),
        (
            "owner id 1",
            put,
            body.replace(r#""id": "28467193""#, r#""id": "1""#),
        ),
        // Tautulli 2.15.2 added PATCH to its webhook methods.
        ("sent with PATCH", patch, body.to_string()),
    ] {
        let r = t
            .client
            .request(method, t.url("/webhook"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{label}");
        let answer: Value = r.json().await.unwrap();
        assert_eq!(
            answer["routed"],
            serde_json::json!([{"user": "alice", "backend": "plex"}]),
            "{label}"
        );
    }
    let r = t
        .client
        .delete(t.url("/webhook"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD, POST, PUT, PATCH");
    t.stop().await;
}

#[tokio::test]
async fn each_outcome_has_its_answer() {
    let t = TestApp::start(TestDir::new(), &format!("api_key = \"{API_KEY}\""), CONFIG).await;
    let c = &t.client;
    let hook = t.url("/webhook");

    // Accepted: a user-scoped Jellyfin event reaches only alice's Jellyfin.
    let r = request(
        c,
        &hook,
        &fixture("jellyfin-UserDataSaved-01", "jellyfin text/plain"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["status"], "accepted");
    assert_eq!(
        a["routed"],
        serde_json::json!([{"user": "alice", "backend": "jellyfin"}])
    );
    assert!(a["request_id"].as_str().unwrap().len() >= 8);

    // Generic: ItemAdded reaches every user of that server, not the Plex backend.
    let r = request(
        c,
        &hook,
        &fixture("jellyfin-ItemAdded-01", "jellyfin application/json"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 202);
    let a: Value = r.json().await.unwrap();
    let mut routed: Vec<String> = a["routed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["user"].as_str().unwrap(),
                p["backend"].as_str().unwrap()
            )
        })
        .collect();
    routed.sort();
    assert_eq!(routed, ["bob/jellyfin", "carol/jellyfin"]);

    // Ignored, with a reason.
    let r = request(c, &hook, &fixture("plex-media.rate-01", "plex multipart"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["status"], "ignored");
    assert!(a["reason"].as_str().unwrap().contains("media.rate"), "{a}");

    // Unmatched: Emby is not configured; the ids are kept for the status page.
    let r = request(c, &hook, &fixture("emby-item.markplayed-01", "emby json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let a: Value = r.json().await.unwrap();
    assert_eq!(a["status"], "unmatched");
    let emby_case = fixture("emby-item.markplayed-01", "emby json");
    let emby_server = emby_case.expected["backend_id"]
        .as_str()
        .unwrap()
        .to_string();
    let reason = a["reason"].as_str().unwrap();
    assert!(reason.contains(&emby_server), "{a}");
    // Whoever can reach the webhook URL is not told which servers are configured.
    let plex_server = "3f2a9c1d7e8b4a6f9c0d1e2f3a4b5c6d7e8f9a0b";
    assert!(!reason.contains(plex_server), "{a}");

    // Test notifications.
    let r = request(
        c,
        &hook,
        &fixture("emby-system.notificationtest-01", "emby json"),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "test");

    // Undecodable input: 400 with a message that says what is wrong.
    for (ct, body, words) in [
        (
            "multipart/form-data; boundary=XyZ",
            "--XyZ\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\n{}\r\n--XyZ--\r\n",
            "'payload'",
        ),
        (
            "application/json",
            "{\n  \"event\": \"media.play\",\n  oops\n}",
            "invalid JSON at line 3",
        ),
        (
            "application/json",
            "{\"hello\":\"world\"}",
            "not a Plex, Tautulli, Jellyfin or Emby webhook",
        ),
        ("application/json", "", "empty body"),
    ] {
        let r = c
            .post(&hook)
            .header("content-type", ct)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let a: Value = r.json().await.unwrap();
        let msg = a["error"]["message"].as_str().unwrap();
        assert!(msg.contains(words), "{msg:?} should mention {words:?}");
    }

    let status = get_json(&t, "/status").await;
    let w = &status["webhooks"];
    assert_eq!(w["accepted"], 2);
    assert_eq!(w["ignored"], 1);
    assert_eq!(w["unmatched"], 1);
    assert_eq!(w["test"], 1);
    assert_eq!(w["rejected"], 4);
    let recent = status["unmatched"]["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0]["backend_id"], emby_server);
    assert_eq!(recent[0]["sender"], "emby");
    // The status, behind the API key, names them: the common set-up mistake is visible there.
    let full = recent[0]["reason"].as_str().unwrap();
    assert!(
        full.contains(&emby_server) && full.contains(plex_server),
        "{full}"
    );
    t.stop().await;
}

#[tokio::test]
async fn journal_failure_answers_503_and_accepts_nothing() {
    let sink = Arc::new(MemorySink::default());
    sink.fail.store(true, std::sync::atomic::Ordering::Relaxed);
    let targets = vec![RouteTarget {
        user: "alice".into(),
        backend: "jellyfin".into(),
        server_id: "16588a9f062a40c4966586b1d220bffc".into(),
        user_id: "02700c8344d542619b39319296c0d4c7".into(),
    }];
    let server = IntakeServer::start(targets, sink.clone()).await;
    let c = reqwest::Client::new();
    let case = fixture("jellyfin-UserDataSaved-01", "jellyfin text/plain");
    let r = request(&c, &server.url("/webhook"), &case)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let a: Value = r.json().await.unwrap();
    assert!(a["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nothing was accepted"));
    assert!(sink.accepted.lock().unwrap().is_empty());
    // Once storage works again the same request is accepted.
    sink.fail.store(false, std::sync::atomic::Ordering::Relaxed);
    let r = request(&c, &server.url("/webhook"), &case)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(sink.accepted.lock().unwrap().len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn status_reflects_what_happened() {
    let t = TestApp::start(TestDir::new(), &format!("api_key = \"{API_KEY}\""), CONFIG).await;
    let case = fixture("plex-media.scrobble-01", "plex multipart");
    let r = request(&t.client, &t.url("/webhook"), &case)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let request_id = r.json::<Value>().await.unwrap()["request_id"]
        .as_str()
        .unwrap()
        .to_string();

    // The actor applies it: counters, last event and the item itself.
    let pair = eventually(
        Duration::from_secs(10),
        "the scrobble to be applied",
        || async {
            let s = get_json(&t, "/status/users/alice/plex").await;
            (s["counters"]["applied"] == 1).then_some(s)
        },
    )
    .await;
    for field in [
        "user",
        "backend",
        "type",
        "server_id",
        "backend_user_id",
        "import",
        "export",
        "state",
        "items",
        "mailbox_depth",
        "last_event",
        "counters",
        "outbox",
        "sync",
        "last_error",
    ] {
        assert!(pair.get(field).is_some(), "status lacks {field}: {pair}");
    }
    assert_eq!(pair["counters"]["received"], 1);
    assert_eq!(pair["items"], 1);
    assert_eq!(pair["last_event"]["request_id"], request_id.as_str());
    assert_eq!(pair["last_event"]["outcome"], "applied");
    for field in ["pending", "dead_letters", "oldest_age_s"] {
        assert!(pair["outbox"].get(field).is_some(), "outbox lacks {field}");
    }
    for field in [
        "last_started",
        "last_finished",
        "last_result",
        "changed",
        "next_at",
    ] {
        assert!(pair["sync"].get(field).is_some(), "sync lacks {field}");
    }

    let events = get_json(&t, "/status/users/alice/plex/events?limit=5").await;
    assert_eq!(events.as_array().unwrap().len(), 1);
    assert_eq!(events[0]["request_id"], request_id.as_str());

    let item = get_json(&t, "/status/users/alice/items?external_id=imdb:tt1375666").await;
    let plex = item["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["backend"] == "plex")
        .expect("plex in the item answer");
    assert_eq!(plex["state"]["item"]["played"], true);
    assert_eq!(plex["state"]["item"]["item_id"], "48213");

    let trace = get_json(&t, &format!("/status/requests/{request_id}")).await;
    assert_eq!(trace["status"], "accepted");
    assert_eq!(trace["event"]["event"], "scrobble");
    assert_eq!(trace["routed"][0]["backend"], "plex");
    let outcomes = trace["outcomes"].as_array().unwrap();
    assert!(
        outcomes
            .iter()
            .any(|o| o["pair"]["backend"] == "plex" && o["event"]["outcome"] == "applied"),
        "{trace}"
    );

    let users = get_json(&t, "/status/users").await;
    assert_eq!(users.as_array().unwrap().len(), 3);
    let alice = get_json(&t, "/status/users/alice").await;
    assert_eq!(alice.as_array().unwrap().len(), 2);

    // Unknown names are 404s with a message; bad parameters are 400s.
    for (path, code) in [
        ("/status/users/nobody", 404),
        ("/status/users/alice/nothing", 404),
        ("/status/requests/unknown-id", 404),
        ("/status/users/alice/plex/events?limit=zero", 400),
        ("/status/users/alice/items?external_id=tt1", 400),
    ] {
        let r = t
            .client
            .get(t.url(path))
            .header("X-Apikey", &t.key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), code, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
    }

    // The global status and Prometheus metrics.
    let status = get_json(&t, "/status").await;
    assert_eq!(status["pairs"], 4);
    assert!(status["uptime_s"].is_u64());
    assert!(status["version"].is_string());
    let metrics = t
        .client
        .get(t.url("/metrics"))
        .header("X-Apikey", &t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(metrics.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = metrics.text().await.unwrap();
    assert_prometheus(&text);
    assert!(
        text.contains("watchstate_webhooks_total{outcome=\"accepted\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("watchstate_items{user=\"alice\",backend=\"plex\",type=\"plex\"} 1"),
        "{text}"
    );
    t.stop().await;
}

/// Every line is a comment (`# HELP`/`# TYPE`) or `name{labels} number`, and every sample's
/// metric has a TYPE line.
fn assert_prometheus(text: &str) {
    let mut typed = std::collections::HashSet::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
                for pair in labels[1..labels.len() - 1].split(',') {
                    let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line:?}"));
                    assert!(
                        !k.is_empty() && v.starts_with('"') && v.ends_with('"'),
                        "{line:?}"
                    );
                }
            }
        }
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            typed.contains(name) || typed.contains(base),
            "no TYPE for {name}"
        );
    }
}
