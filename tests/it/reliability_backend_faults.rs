//! Issue 8 §3: media servers that fail. The real binary pushes to fake servers that refuse
//! connections, hang, answer 500, or answer 429 with `Retry-After`, while a healthy one serves
//! another user. Webhook intake never waits on any of them, pushes are retried and end as dead
//! letters that can be retried, status names the problem, and the healthy user's pushes are
//! not slowed by the broken ones. A sync against a server answering the wrong JSON shape fails
//! with a message in status.

use crate::harness::{
    closed_port, eventually, get_json, FakeBackend, FakeBehaviour, Served, TestDir, API_KEY,
};
use crate::reliability_common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One request to a media server may take this long (config `sync.request_timeout`).
const REQUEST_TIMEOUT_S: u64 = 5;
/// Far below the request timeout: an acknowledgement that waited on a media server would
/// take at least the timeout.
const ACK_BOUND: Duration = Duration::from_millis(2500);

async fn pair(client: &reqwest::Client, base: &str, user: &str, backend: &str) -> Value {
    let (code, v) = get_json(
        client,
        &format!("{base}/status/users/{user}/{backend}"),
        API_KEY,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    v
}

/// Poll the pair's status until `check` holds; return that status.
async fn pair_until(
    client: &reqwest::Client,
    base: &str,
    user: &str,
    backend: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let v = pair(client, base, user, backend).await;
        if check(&v) {
            return v;
        }
        assert!(
            Instant::now() < end,
            "{user}/{backend}: timed out waiting for {what}; status: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn last_error(v: &Value) -> String {
    v["last_error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reliability_backend_faults_do_not_slow_intake_or_other_users() {
    let healthy = FakeBackend::start(FakeBehaviour::Ok).await;
    let slow = FakeBackend::start(FakeBehaviour::Slow(Duration::from_secs(120))).await;
    let err500 = FakeBackend::start(FakeBehaviour::Status(500, None)).await;
    let err429 = FakeBackend::start(FakeBehaviour::Status(429, Some(1))).await;
    let down = format!("http://127.0.0.1:{}", closed_port());
    // user index → (name, push target URL)
    let users = [
        ("ok", healthy.url()),
        ("down", down),
        ("slow", slow.url()),
        ("e500", err500.url()),
        ("e429", err429.url()),
    ];
    let mut text = format!("request_timeout = \"{REQUEST_TIMEOUT_S}s\"\npush_attempts = 3\n\n");
    for (i, (name, url)) in users.iter().enumerate() {
        text.push_str(&pushing_user(
            name,
            i,
            &healthy.url(),
            url,
            &format!("faults-{name}"),
        ));
    }
    // `[sync]` is opened by the harness right before `rest`: the two settings land in it.
    let dir = TestDir::new();
    let config = dir.config(&server_with_key(), &text);
    let served = Served::start(&config);
    let base = format!("http://{}/v1/api", served.addr);
    let webhook = format!("{base}/webhook");
    let client = reqwest::Client::new();

    // Every user's push target learns movies 0..5 (a generic ItemAdded reaches every dst).
    for n in 0..5 {
        let (code, body) = post_jf(&client, &webhook, jf_item_added(JF_TARGET, n))
            .await
            .unwrap();
        assert_eq!(code, 202, "{body}");
    }
    for (i, (name, _)) in users.iter().enumerate() {
        pair_until(&client, &base, name, "dst", "5 items on dst", |v| {
            v["items"] == 5
        })
        .await;
        let _ = i;
    }

    // Round 1: movie 0 played by every user: four of the five pushes fail or hang.
    for (i, _) in users.iter().enumerate() {
        let started = Instant::now();
        let (code, body) = post_jf(&client, &webhook, jf_mark_played(JF_SERVER, i, 0))
            .await
            .unwrap();
        assert_eq!(code, 202, "{body}");
        assert!(
            started.elapsed() < ACK_BOUND,
            "ack took {:?}",
            started.elapsed()
        );
    }
    // The healthy user's push arrives while the slow server still holds its request.
    eventually(
        Duration::from_secs(REQUEST_TIMEOUT_S - 1),
        "the healthy user's push",
        || {
            let n = healthy.count(&format!("/UserPlayedItems/{JF_TARGET}-item-0"));
            async move { (n == 1).then_some(()) }
        },
    )
    .await;
    // The target stores the state once the server has confirmed the push.
    eventually(
        Duration::from_secs(REQUEST_TIMEOUT_S - 1),
        "the healthy target to store the pushed state",
        || {
            let (client, base) = (client.clone(), base.clone());
            async move {
                (played_on(&client, &base, "ok", "dst", &imdb(0)).await == Some(true)).then_some(())
            }
        },
    )
    .await;
    // The slow server holds its push request (it is not answered yet); it has been sent.
    eventually(
        Duration::from_secs(REQUEST_TIMEOUT_S - 1),
        "the slow server to receive its push",
        || {
            let n = slow.count("/UserPlayedItems/");
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;

    // Intake stays fast while pushes hang and fail: more events, all users, concurrently.
    let mut acks = Vec::new();
    for n in 1..5 {
        for (i, _) in users.iter().enumerate() {
            let (client, webhook) = (client.clone(), webhook.clone());
            acks.push(tokio::spawn(async move {
                let started = Instant::now();
                let (code, body) = post_jf(&client, &webhook, jf_mark_played(JF_SERVER, i, n))
                    .await
                    .unwrap();
                (code, body, started.elapsed())
            }));
        }
    }
    for a in acks {
        let (code, body, took) = a.await.unwrap();
        assert_eq!(code, 202, "{body}");
        assert!(
            took < ACK_BOUND,
            "ack took {took:?} while media servers misbehave"
        );
    }
    // Every one of the healthy user's pushes went out, once each.
    eventually(
        Duration::from_secs(REQUEST_TIMEOUT_S - 1),
        "the healthy user's pushes 1..5",
        || {
            let counts: Vec<usize> = (0..5)
                .map(|n| healthy.count(&format!("/UserPlayedItems/{JF_TARGET}-item-{n}?")))
                .collect();
            async move { counts.iter().all(|c| *c == 1).then_some(()) }
        },
    )
    .await;

    // While a push is being retried, the item's view names the problem, and so do the pair's
    // `last_error` and `outbox.last_error` from the first failed attempt (RELIABILITY.md).
    for (user, words) in [
        ("down", &["connect", "refused"][..]),
        ("e500", &["500"][..]),
        ("e429", &["rate limited", "429"][..]),
    ] {
        let found = eventually(
            Duration::from_secs(5),
            &format!("{user}: the retry error in the item view"),
            || {
                let (client, base) = (client.clone(), base.clone());
                async move {
                    let url = format!(
                        "{base}/status/users/{user}/items?external_id=imdb:{}",
                        imdb(0)
                    );
                    let (_, v) = get_json(&client, &url, API_KEY).await;
                    let dst = v["backends"]
                        .as_array()?
                        .iter()
                        .find(|b| b["backend"] == "dst")?
                        .clone();
                    let queued = dst["state"]["outbox"].as_array()?.first()?.clone();
                    let error = queued["last_error"].as_str()?.to_lowercase();
                    if queued["attempts"].as_u64()? < 1 {
                        return None;
                    }
                    // Still retrying: the pair's status says so too.
                    let p = pair(&client, &base, user, "dst").await;
                    let queue = p["outbox"]["last_error"]["message"]
                        .as_str()?
                        .to_lowercase();
                    Some((error, queue, last_error(&p)))
                }
            },
        )
        .await;
        let (item_error, queue_error, pair_error) = found;
        for found in [&item_error, &queue_error, &pair_error] {
            assert!(
                words.iter().any(|w| found.contains(w)),
                "{user}: {found:?} should say one of {words:?}"
            );
        }
        assert!(
            queue_error.contains("of item") && queue_error.contains("failed (attempt"),
            "{user}: the queue's error names the item and the attempt: {queue_error:?}"
        );
    }

    // 429 + Retry-After: retried; once the server recovers, the push lands.
    eventually(Duration::from_secs(10), "a retry after the 429", || {
        let n = err429.count(&format!("/UserPlayedItems/{JF_TARGET}-item-0?"));
        async move { (n >= 2).then_some(()) }
    })
    .await;
    err429.set(FakeBehaviour::Ok);
    let v = pair_until(
        &client,
        &base,
        "e429",
        "dst",
        "the pushes after the 429s",
        |v| {
            v["outbox"]["pending"] == 0
                && v["outbox"]["in_flight"] == 0
                && v["outbox"]["dead_letters"] == 0
                && v["metrics"]["push_ok"].as_u64().unwrap_or(0) >= 5
        },
    )
    .await;
    assert!(v["metrics"]["push_retried"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(
        played_on(&client, &base, "e429", "dst", &imdb(0)).await,
        Some(true)
    );

    // Unreachable for good: the pushes become dead letters and the pair says why.
    let v = pair_until(&client, &base, "down", "dst", "dead letters", |v| {
        v["outbox"]["dead_letters"] == 5
    })
    .await;
    assert_eq!(v["counters"]["push_failed"], 5, "{v}");
    let e = last_error(&v);
    assert!(
        e.contains("connect") || e.contains("refused"),
        "the error says the server is unreachable: {e}"
    );

    // 500 for good: the same, shown in the global status too; after the server recovers, a
    // retry through the API delivers them.
    let v = pair_until(&client, &base, "e500", "dst", "dead letters", |v| {
        v["outbox"]["dead_letters"] == 5
    })
    .await;
    assert_eq!(v["outbox"]["dead"].as_array().map(Vec::len), Some(5), "{v}");
    assert!(last_error(&v).contains("500"), "{v}");
    let g = global_status(&client, &base).await;
    assert!(g["outbox"]["dead_letters"].as_u64().unwrap() >= 10, "{g}");
    assert_eq!(
        played_on(&client, &base, "e500", "dst", &imdb(0)).await,
        Some(false),
        "not played before the push"
    );
    err500.set(FakeBehaviour::Ok);
    let r = client
        .post(format!("{base}/status/users/e500/dst/outbox/retry"))
        .header("X-Apikey", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["retried"], 5, "{body}");
    pair_until(&client, &base, "e500", "dst", "the retried pushes", |v| {
        v["outbox"]["dead_letters"] == 0
            && v["outbox"]["pending"] == 0
            && v["outbox"]["in_flight"] == 0
    })
    .await;
    assert_eq!(
        played_on(&client, &base, "e500", "dst", &imdb(0)).await,
        Some(true)
    );

    // The hanging server: its requests time out, and that is what the item view says.
    let found = eventually(
        Duration::from_secs(3 * REQUEST_TIMEOUT_S),
        "slow: a timeout in the item view",
        || {
            let (client, base) = (client.clone(), base.clone());
            async move {
                let url = format!(
                    "{base}/status/users/slow/items?external_id=imdb:{}",
                    imdb(0)
                );
                let (_, v) = get_json(&client, &url, API_KEY).await;
                let dst = v["backends"]
                    .as_array()?
                    .iter()
                    .find(|b| b["backend"] == "dst")?
                    .clone();
                dst["state"]["outbox"].as_array()?.first()?["last_error"]
                    .as_str()
                    .map(str::to_lowercase)
            }
        },
    )
    .await;
    assert!(
        found.contains("timed out") || found.contains("timeout"),
        "{found}"
    );

    // Wrong-shaped JSON: the fake answers `{}` to a library listing; the sync fails, says so.
    let r = client
        .post(format!("{base}/status/users/ok/dst/sync"))
        .header("X-Apikey", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let v = pair_until(&client, &base, "ok", "dst", "the sync result", |v| {
        v["sync"]["last_finished"].is_number()
    })
    .await;
    let result = v["sync"]["last_result"].to_string().to_lowercase();
    assert!(
        result.contains("fail") || result.contains("error"),
        "the sync reports the bad answer: {v}"
    );

    // Intake is still fast, the journal drained, the process never panicked.
    let started = Instant::now();
    let (code, _) = post_jf(&client, &webhook, jf_mark_played(JF_SERVER, 0, 4))
        .await
        .unwrap();
    assert_eq!(code, 202);
    assert!(started.elapsed() < ACK_BOUND);
    eventually(Duration::from_secs(10), "journal depth 0", || {
        let (client, base) = (client.clone(), base.clone());
        async move { (global_status(&client, &base).await["journal"]["depth"] == 0).then_some(()) }
    })
    .await;
    assert!(!served.log_text().contains("panicked"));
}
