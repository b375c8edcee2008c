//! Issue 8 §6: secrets stay secret and the status API is closed without the key. The real
//! binary runs at `RUST_LOG=debug` against fake media servers (so every client really sends
//! its token), every endpoint is exercised, and neither a token nor the API key may appear in
//! any response (body or headers) or in any log line. The key is compared in constant time
//! (`subtle`, unit-tested in `src/http/auth.rs`); here: only the exact key opens the API.

use crate::harness::{FakeBackend, FakeBehaviour, Served, TestDir};
use crate::reliability_common::*;
use std::time::Duration;

const KEY: &str = "APIKEY-5ec7e7-do-not-leak-91c2";
const TOKENS: [&str; 4] = [
    "TOKEN-jf-src-a1b2c3-leak",
    "TOKEN-jf-dst-d4e5f6-leak",
    "TOKEN-plex-0a9b8c-leak",
    "TOKEN-emby-7d6e5f-leak",
];

fn config_text(url: &str) -> String {
    format!(
        "[users.sec.backends.src]\ntype = \"jellyfin\"\nurl = {url:?}\ntoken = {t0:?}\nserver_id = {JF_SERVER:?}\nuser_id = {u:?}\n\n\
         [users.sec.backends.dst]\ntype = \"jellyfin\"\nurl = {url:?}\ntoken = {t1:?}\nserver_id = {JF_TARGET:?}\nuser_id = {u:?}\n\n\
         [users.sec2.backends.plex]\ntype = \"plex\"\nurl = {url:?}\ntoken = {t2:?}\nserver_id = \"3f2a9c1d7e8b4a6f9c0d1e2f3a4b5c6d7e8f9a0b\"\nuser_id = \"24681357\"\n\n\
         [users.sec2.backends.emby]\ntype = \"emby\"\nurl = {url:?}\ntoken = {t3:?}\nserver_id = \"15596ac9bbc24127b9f01db6f33630c7\"\nuser_id = \"aac3a78d9f184ea480fb1629e76aad57\"\n",
        u = jf_user(0),
        t0 = TOKENS[0],
        t1 = TOKENS[1],
        t2 = TOKENS[2],
        t3 = TOKENS[3],
    )
}

/// Every answer seen, as text: status line, headers and body.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn record(&mut self, label: &str, r: reqwest::Response) -> (u16, serde_json::Value) {
        let status = r.status().as_u16();
        let headers = format!("{:?}", r.headers());
        let body = r.text().await.unwrap();
        self.0
            .push(format!("{label} -> {status}\n{headers}\n{body}"));
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_security_no_secret_in_logs_or_answers_and_status_needs_the_key() {
    let fake = FakeBackend::start(FakeBehaviour::Ok).await;
    let dir = TestDir::new();
    let config = dir.config(&format!("api_key = {KEY:?}"), &config_text(&fake.url()));
    let served = Served::start_with_env(&config, &[("RUST_LOG", "debug")]);
    let base = format!("http://{}/v1/api", served.addr);
    let client = reqwest::Client::new();
    let mut seen = Seen::default();
    let key = |rb: reqwest::RequestBuilder| rb.header("X-Apikey", KEY);

    // Webhooks: register the item on dst, mark it played on src (a push to dst follows), a
    // dry run, an undecodable body, an unmatched event, the ready probe.
    let (code, _) = seen
        .record(
            "item added",
            client
                .post(format!("{base}/webhook"))
                .header("content-type", "application/json")
                .body(jf_item_added(JF_TARGET, 1))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 202);
    let (code, accepted) = seen
        .record(
            "mark played",
            client
                .post(format!("{base}/webhook"))
                .header("content-type", "application/json")
                .body(jf_mark_played(JF_SERVER, 0, 1))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 202);
    let request_id = accepted["request_id"].as_str().unwrap().to_string();
    let (code, _) = seen
        .record(
            "dry run",
            client
                .post(format!("{base}/webhook?dry_run=1"))
                .header("content-type", "application/json")
                .body(jf_mark_played(JF_SERVER, 0, 2))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = seen
        .record(
            "bad webhook",
            client
                .post(format!("{base}/webhook"))
                .body("nope")
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 400);
    let (code, _) = seen
        .record(
            "unmatched",
            client
                .post(format!("{base}/webhook"))
                .header("content-type", "application/json")
                .body(jf_mark_played("ffffffffffffffffffffffffffffffff", 0, 3))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(code, 200);
    seen.record(
        "webhook probe",
        client.get(format!("{base}/webhook")).send().await.unwrap(),
    )
    .await;

    // The push reached the fake (so a token really went over the wire).
    crate::harness::eventually(Duration::from_secs(10), "the push to dst", || {
        let n = fake.count("/UserPlayedItems/");
        async move { (n >= 1).then_some(()) }
    })
    .await;

    // Every status route, with the key in each accepted form.
    let routes = [
        "/status".to_string(),
        "/status/users".into(),
        "/status/users/sec".into(),
        "/status/users/sec/src".into(),
        "/status/users/sec/dst".into(),
        "/status/users/sec2/plex".into(),
        "/status/users/sec/dst/events?limit=10".into(),
        format!("/status/requests/{request_id}"),
        format!("/status/users/sec/items?external_id=imdb:{}", imdb(1)),
        "/metrics".into(),
    ];
    for route in &routes {
        let (code, _) = seen
            .record(
                route,
                key(client.get(format!("{base}{route}")))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        assert_eq!(code, 200, "{route}");
        let (code, _) = seen
            .record(
                route,
                client
                    .get(format!("{base}{route}"))
                    .header("Authorization", format!("Bearer {KEY}"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        assert_eq!(code, 200, "{route} with Bearer");
        let sep = if route.contains('?') { '&' } else { '?' };
        let (code, _) = seen
            .record(
                route,
                client
                    .get(format!("{base}{route}{sep}apikey={KEY}"))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        assert_eq!(code, 200, "{route} with ?apikey");
        // Without the key, and with near-miss keys: 401, with a message saying how to pass it.
        let (code, body) = seen
            .record(
                route,
                client.get(format!("{base}{route}")).send().await.unwrap(),
            )
            .await;
        assert_eq!(code, 401, "{route} without a key");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("x-apikey"),
            "{body}"
        );
        let mut first = KEY.to_string();
        first.replace_range(0..1, "B");
        let mut last = KEY.to_string();
        last.pop();
        last.push('3');
        for wrong in [
            first,
            last,
            KEY[..KEY.len() - 1].to_string(),
            format!("{KEY}x"),
            KEY.to_lowercase(),
            String::new(),
        ] {
            let (code, _) = seen
                .record(
                    route,
                    client
                        .get(format!("{base}{route}"))
                        .header("X-Apikey", wrong.as_str())
                        .send()
                        .await
                        .unwrap(),
                )
                .await;
            assert_eq!(code, 401, "{route} with the wrong key {wrong:?}");
        }
    }
    // The write routes: sync (makes the clients list libraries with their tokens; the fake's
    // `{}` answers are the wrong shape, so errors with URLs end up in status) and retry.
    for (user, backend) in [
        ("sec", "src"),
        ("sec", "dst"),
        ("sec2", "plex"),
        ("sec2", "emby"),
    ] {
        let route = format!("/status/users/{user}/{backend}/sync");
        let (code, _) = seen
            .record(
                &route,
                client.post(format!("{base}{route}")).send().await.unwrap(),
            )
            .await;
        assert_eq!(code, 401, "{route} without a key");
        let (code, body) = seen
            .record(
                &route,
                key(client.post(format!("{base}{route}")))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        assert!(code == 202 || code == 409, "{route}: {code} {body}");
        let route = format!("/status/users/{user}/{backend}/outbox/retry");
        let (code, _) = seen
            .record(
                &route,
                client.post(format!("{base}{route}")).send().await.unwrap(),
            )
            .await;
        assert_eq!(code, 401, "{route} without a key");
        let (code, _) = seen
            .record(
                &route,
                key(client.post(format!("{base}{route}")))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        assert_eq!(code, 202, "{route}");
    }
    // Once the syncs have finished (or failed), read every status object again: errors and
    // last outcomes are where a URL with a token would show up.
    crate::harness::eventually(Duration::from_secs(20), "the syncs to finish", || {
        let client = client.clone();
        let url = format!("{base}/status/users");
        async move {
            let (_, v) = crate::harness::get_json(&client, &url, KEY).await;
            let busy = v
                .as_array()?
                .iter()
                .flat_map(|u| u["backends"].as_array().unwrap().iter())
                .any(|b| b["state"] == "syncing");
            (!busy).then_some(())
        }
    })
    .await;
    for route in &routes {
        seen.record(
            route,
            key(client.get(format!("{base}{route}")))
                .send()
                .await
                .unwrap(),
        )
        .await;
    }
    // Unknown routes and the open system routes.
    for route in [
        "/system/healthcheck",
        "/system/ready",
        "/nope",
        "/status/nope/a/b/c/d/e",
    ] {
        seen.record(
            route,
            client.get(format!("{base}{route}")).send().await.unwrap(),
        )
        .await;
    }
    seen.record(
        "outside the prefix",
        client
            .get(format!("http://{}/?apikey={KEY}", served.addr))
            .send()
            .await
            .unwrap(),
    )
    .await;

    // Give the last log lines a moment to be written, then look everywhere.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let answers = seen.0.join("\n\n");
    let log = served.log_text();
    assert!(
        log.contains("\"level\":\"DEBUG\""),
        "the log is at debug level"
    );
    assert!(
        fake.requests.lock().unwrap().len() >= 5,
        "the clients talked to the fake"
    );
    for secret in TOKENS.iter().chain([&KEY]) {
        if let Some(i) = answers.find(secret) {
            panic!(
                "{secret} appears in an answer: ...{}...",
                &answers[i.saturating_sub(400)..(i + 100).min(answers.len())]
            );
        }
        if let Some(line) = log.lines().find(|l| l.contains(secret)) {
            panic!("{secret} appears in the log: {line}");
        }
    }
}
