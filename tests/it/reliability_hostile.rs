//! Issue 8 §2: hostile input at the webhook, sent to the real binary (a panic or a stack
//! overflow would show in its log or kill it). Every request gets a 4xx with a JSON error
//! message, or a 200 `ignored` / `unmatched` / `test`; never a 5xx. Broken input never leaves
//! a journal entry (`journal.appended` and `webhooks.accepted` unchanged), and the service
//! keeps answering its healthcheck.

use crate::harness::{get_json, Served, TestDir, API_KEY};
use crate::support::fixtures::{fixture_files, multipart};
use serde_json::Value;
use std::time::Duration;

/// Bodies above this are refused with 413; the deep-nesting bodies stay below it.
const LIMIT: usize = 256 * 1024;

/// One hostile request.
struct Case {
    label: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn case(label: impl Into<String>, ct: Option<&str>, body: impl Into<Vec<u8>>) -> Case {
    Case {
        label: label.into(),
        content_type: ct.map(String::from),
        body: body.into(),
    }
}

/// A config with a backend for every (server, user) the fixtures carry, so that a fixture that
/// still decodes would be routed: "not accepted" below then means the input was refused, not
/// that nobody was configured.
fn fixture_backends() -> String {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = String::new();
    for (name, sender, _, expected) in fixture_files() {
        let (Some(server), Some(user)) = (
            expected["backend_id"].as_str(),
            expected["user_id"].as_str(),
        ) else {
            continue;
        };
        let kind = if sender == "tautulli" {
            "plex"
        } else {
            sender.as_str()
        };
        if !seen.insert((server.to_string(), user.to_string())) {
            continue;
        }
        let i = seen.len();
        out.push_str(&format!(
            "# from {name}\n[users.h{i}.backends.b]\ntype = {kind:?}\nurl = \"http://127.0.0.1:9\"\ntoken = \"hostile-token-{i}\"\nserver_id = {server:?}\nuser_id = {user:?}\n\n"
        ));
    }
    out
}

/// Structurally broken requests: none of them is an event.
fn broken_cases() -> Vec<Case> {
    let mut v = vec![
        case("empty body, no content type", None, ""),
        case("empty body, json", Some("application/json"), ""),
        case("whitespace body", Some("application/json"), "  \r\n\t "),
        case("BOM only", Some("text/plain"), &b"\xEF\xBB\xBF"[..]),
        case("not json", Some("application/json"), "hello webhook"),
        case("json null", Some("application/json"), "null"),
        case("json number", Some("application/json"), "12345"),
        case("json string", Some("application/json"), "\"UserDataSaved\""),
        case(
            "json array of events",
            Some("application/json"),
            "[{\"NotificationType\":\"ItemAdded\"}]",
        ),
        case("empty object", Some("application/json"), "{}"),
        case(
            "truncated json",
            Some("application/json"),
            "{\"NotificationType\": \"UserDataSaved\", \"ServerId\": \"7bc4",
        ),
        case(
            "trailing garbage",
            Some("application/json"),
            "{\"Event\":\"x\"} }}}",
        ),
        case(
            "image content type",
            Some("image/png"),
            &b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"[..],
        ),
        case(
            "unknown content type, text",
            Some("application/x-unknown"),
            "event=media.play",
        ),
        case("content type garbage", Some(";;;==\"\\"), "{"),
        case(
            "multipart without boundary",
            Some("multipart/form-data"),
            "{\"event\":\"media.play\"}",
        ),
        case(
            "multipart, empty boundary",
            Some("multipart/form-data; boundary="),
            "--\r\n\r\n--",
        ),
        case(
            "multipart, wrong boundary",
            Some("multipart/form-data; boundary=abc"),
            multipart("xyz", &[("payload", None, "application/json", b"{}")]),
        ),
        case(
            "multipart, truncated",
            Some("multipart/form-data; boundary=b"),
            "--b\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{\"event\":",
        ),
        case(
            "multipart, no end",
            Some("multipart/form-data; boundary=b"),
            "--b\r\n",
        ),
        case(
            "multipart, part without headers",
            Some("multipart/form-data; boundary=b"),
            "--b\r\n\r\n{}\r\n--b--\r\n",
        ),
        case(
            "multipart, payload not json",
            Some("multipart/form-data; boundary=b"),
            multipart(
                "b",
                &[("payload", None, "application/json", b"this is not json")],
            ),
        ),
        case(
            "multipart, payload empty",
            Some("multipart/form-data; boundary=b"),
            multipart("b", &[("payload", None, "application/json", b"")]),
        ),
        case(
            "multipart, only a thumb",
            Some("multipart/form-data; boundary=b"),
            multipart(
                "b",
                &[("thumb", Some("t.jpg"), "image/jpeg", b"\xff\xd8\xff\xd9")],
            ),
        ),
        case(
            "multipart, payload is a file",
            Some("multipart/form-data; boundary=b"),
            multipart(
                "b",
                &[("payload", Some("p.json"), "application/json", b"[1,2")],
            ),
        ),
        case(
            "multipart, data field nested garbage",
            Some("multipart/form-data; boundary=b"),
            multipart(
                "b",
                &[(
                    "data",
                    None,
                    "text/plain",
                    b"{\"data\":\"{\\\"data\\\":\\\"[\\\"}\"}",
                )],
            ),
        ),
        case(
            "form, no data field",
            Some("application/x-www-form-urlencoded"),
            "a=1&b=2",
        ),
        case(
            "form, data not json",
            Some("application/x-www-form-urlencoded"),
            "data=%7Bnot%20json",
        ),
        case(
            "form, broken escapes",
            Some("application/x-www-form-urlencoded"),
            "data=%ZZ%&&=%",
        ),
        case(
            "invalid utf-8 outside strings",
            Some("application/json"),
            &b"\xff\xfe{\"Event\":1}"[..],
        ),
        case(
            "invalid utf-8 in keys of an object",
            Some("application/json"),
            &b"{\"\xff\xff\":\"\xc3\x28\"}"[..],
        ),
        case(
            "lone surrogate escape",
            Some("application/json"),
            "{\"Event\":\"\\ud800\"}",
        ),
        case(
            "NUL bytes",
            Some("application/json"),
            &b"\x00\x00\x00{}"[..],
        ),
        case(
            "huge numbers, no identity",
            Some("application/json"),
            "{\"a\":1e400,\"b\":-18446744073709551616000,\"c\":123456789012345678901234567890}",
        ),
        case(
            "emby data string holding a non-object",
            Some("application/json"),
            "{\"data\":\"[1,2,3]\"}",
        ),
        case(
            "emby data string holding broken json",
            Some("application/json"),
            "{\"data\":\"{\\\"Event\\\":\"}",
        ),
    ];
    // Deep nesting: serde_json stops at depth 128 instead of recursing until the stack ends.
    for (label, open, depth) in [("arrays", "[", 100_000), ("objects", "{\"a\":", 30_000)] {
        let deep = open.repeat(depth);
        v.push(case(
            format!("{depth} nested {label}"),
            Some("application/json"),
            deep.clone(),
        ));
        v.push(case(
            format!("{depth} nested {label} in a plex payload"),
            Some("multipart/form-data; boundary=b"),
            multipart(
                "b",
                &[("payload", None, "application/json", deep.as_bytes())],
            ),
        ));
        let wrapped = serde_json::json!({ "data": deep }).to_string();
        v.push(case(
            format!("{depth} nested {label} in an emby data string"),
            Some("application/json"),
            wrapped,
        ));
    }
    // Deep nesting inside a real event's field: decoded up to the limit, then refused.
    let mut deep_field = String::from("{\"NotificationType\":\"UserDataSaved\",\"ServerId\":\"7bc43eb3bf2c4266980f3e30ab4d8fa4\",\"X\":");
    deep_field.push_str(&"[".repeat(50_000));
    v.push(case(
        "event with a deeply nested field",
        Some("application/json"),
        deep_field,
    ));
    // Random bytes from a seeded generator (xorshift): the same run every time.
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let cts = [
        None,
        Some("application/json"),
        Some("multipart/form-data; boundary=x"),
        Some("application/x-www-form-urlencoded"),
        Some("text/plain"),
    ];
    for i in 0..150 {
        let len = (next() % 2048) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Some bodies look like the start of a JSON object or a multipart part.
        match i % 3 {
            1 => body.insert(0, b'{'),
            2 => body
                .splice(
                    0..0,
                    b"--x\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{"
                        .iter()
                        .copied(),
                )
                .for_each(drop),
            _ => {}
        }
        let ct = cts[(next() % cts.len() as u64) as usize];
        v.push(case(format!("random bytes #{i}"), ct, body));
    }
    v
}

/// Replace every leaf at any depth with `f(leaf)`.
fn map_leaves(v: &Value, f: &dyn Fn(&Value) -> Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| (k.clone(), map_leaves(x, f)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| map_leaves(x, f)).collect()),
        leaf => f(leaf),
    }
}

/// Real fixtures whose every value is made hostile: all nulls; numbers and strings swapped;
/// absurd numbers. The ids that route an event are among the values changed, so none of these
/// may be accepted: they must be refused or answered `unmatched` / `ignored`.
fn mangled_fixture_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (name, _sender, body, _) in fixture_files() {
        let json: Value = serde_json::from_slice(&body).unwrap();
        let null = |_: &Value| Value::Null;
        let swap = |x: &Value| match x {
            Value::String(s) => s.parse::<f64>().map(Value::from).unwrap_or(Value::from(7)),
            Value::Number(n) => Value::String(format!("{n}x")),
            Value::Bool(b) => Value::String(b.to_string()),
            Value::Null => Value::from(0),
            other => other.clone(),
        };
        let huge = |x: &Value| match x {
            Value::Number(_) | Value::String(_) => {
                serde_json::from_str("123456789012345678901234567890e300")
                    .unwrap_or(Value::from(u64::MAX))
            }
            other => other.clone(),
        };
        let shapes = |x: &Value| match x {
            Value::String(_) => serde_json::json!({"nested": [x.clone()]}),
            Value::Number(_) => serde_json::json!([x.clone(), x.clone()]),
            other => other.clone(),
        };
        for (how, f) in [
            ("null everywhere", &null as &dyn Fn(&Value) -> Value),
            ("numbers and strings swapped", &swap),
            ("huge numbers", &huge),
            ("leaves as objects and arrays", &shapes),
        ] {
            let mangled = map_leaves(&json, f).to_string();
            v.push(case(
                format!("{name}: {how}"),
                Some("application/json"),
                mangled.clone(),
            ));
            v.push(case(
                format!("{name}: {how} (multipart payload)"),
                Some("multipart/form-data; boundary=b"),
                multipart(
                    "b",
                    &[("payload", None, "application/json", mangled.as_bytes())],
                ),
            ));
        }
        // Only the top-level values made null (keeps the shape that picks the decoder).
        if let Value::Object(m) = &json {
            let tops: serde_json::Map<String, Value> =
                m.keys().map(|k| (k.clone(), Value::Null)).collect();
            v.push(case(
                format!("{name}: top-level nulls"),
                Some("application/json"),
                Value::Object(tops).to_string(),
            ));
        }
    }
    v
}

async fn counters(client: &reqwest::Client, base: &str) -> (u64, u64) {
    let (code, s) = get_json(client, &format!("{base}/status"), API_KEY).await;
    assert_eq!(code, 200, "{s}");
    (
        s["journal"]["appended"].as_u64().unwrap(),
        s["webhooks"]["accepted"].as_u64().unwrap(),
    )
}

/// Send one case; panics unless the answer is a 4xx with a message or a 200 that is not an
/// acceptance.
async fn send(client: &reqwest::Client, url: &str, c: &Case, served: &mut Served) {
    let mut req = client.post(url).body(c.body.clone());
    if let Some(ct) = &c.content_type {
        req = req.header("content-type", ct.as_str());
    }
    let r = req.send().await.unwrap_or_else(|e| {
        let exit = served.wait_exit(Duration::from_secs(2));
        panic!(
            "{}: no answer ({e:?}); process exit: {exit:?}; log tail: {}",
            c.label,
            served
                .log_text()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    let code = r.status().as_u16();
    let body: Value = serde_json::from_slice(&r.bytes().await.unwrap())
        .unwrap_or_else(|e| panic!("{}: answer {code} is not JSON: {e}", c.label));
    match code {
        200 => {
            let status = body["status"].as_str().unwrap_or_default();
            assert!(
                matches!(status, "ignored" | "unmatched" | "test"),
                "{}: 200 with status {status:?}: {body}",
                c.label
            );
            assert!(
                body["reason"].as_str().is_some_and(|r| !r.is_empty()),
                "{}: no reason: {body}",
                c.label
            );
        }
        400..=499 => {
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.len() >= 10,
                "{}: {code} without a clear message: {body}",
                c.label
            );
            assert_eq!(body["error"]["code"], code, "{}: {body}", c.label);
        }
        _ => panic!("{}: answered {code}: {body}", c.label),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reliability_hostile_input_is_refused_without_5xx_panic_or_journal_entry() {
    let dir = TestDir::new();
    let config = dir.config(
        &format!("api_key = {API_KEY:?}\nmax_body_bytes = {LIMIT}"),
        &fixture_backends(),
    );
    let mut served = Served::start(&config);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("http://{}/v1/api", served.addr);
    let url = format!("{base}/webhook");
    let before = counters(&client, &base).await;

    let mut cases = broken_cases();
    cases.extend(mangled_fixture_cases());
    let total = cases.len();
    for c in &cases {
        send(&client, &url, c, &mut served).await;
    }

    // Over the limit: declared length, and chunked without a length (read stops at the
    // limit). The sender is still uploading when the 413 is ready; it must get the 413 (the
    // rest of the body is drained), not a reset connection.
    for size in [LIMIT + 1, 4 * LIMIT, 3 * 1024 * 1024] {
        let big = vec![b'{'; size];
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(big.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{size} bytes with a length: no answer ({e:?})"));
        assert_eq!(r.status(), 413, "{size} bytes with a length");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("max_body_bytes"),
            "{body}"
        );
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            big.chunks(8192).map(|c| Ok(c.to_vec())).collect();
        let r = client
            .post(&url)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{size} bytes chunked: no answer ({e:?})"));
        assert_eq!(r.status(), 413, "{size} bytes chunked");
    }

    // Invalid UTF-8 in headers the decoder reads.
    let r = client
        .post(&url)
        .header(
            "content-type",
            reqwest::header::HeaderValue::from_bytes(b"application/\xffjson").unwrap(),
        )
        .header(
            "user-agent",
            reqwest::header::HeaderValue::from_bytes(b"Plex\xfe\xffMediaServer/1").unwrap(),
        )
        .body("{\"event\": 5}")
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_client_error() || r.status() == 200,
        "{}",
        r.status()
    );

    let after = counters(&client, &base).await;
    assert_eq!(
        after, before,
        "hostile input left journal entries (appended, accepted) after {total} cases"
    );

    // Still alive, still serving, and it never panicked.
    let r = client
        .get(format!("{base}/system/healthcheck"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        served.child.try_wait().unwrap().is_none(),
        "the process exited"
    );
    let log = served.log_text();
    assert!(!log.contains("panicked"), "the service panicked: {log}");
    // The service still accepts a real event after all that.
    let ok = crate::reliability_common::jf_mark_played(crate::reliability_common::JF_SERVER, 0, 1)
        .replace(
            &crate::reliability_common::jf_user(0),
            "a4b9f3c2d1e04f6a8b7c6d5e4f3a2b1c",
        );
    let (code, body) = crate::reliability_common::post_jf(&client, &url, ok)
        .await
        .unwrap();
    assert_eq!(code, 202, "{body}");
}
