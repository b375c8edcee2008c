//! The webhook fixtures of `tests/fixtures/webhooks/`, expanded into every transport their sender
//! uses, and the comparison of a decoded event with a fixture's `expected` facts. Used by the
//! decoder test (function API) and the HTTP dry-run test.

#![allow(dead_code)] // each test module uses a different subset

use serde_json::Value;
use std::path::PathBuf;

/// One request to send: a fixture body in one transport.
#[derive(Debug, Clone)]
pub struct FixtureCase {
    /// The fixture's file stem, e.g. `plex-media.pause-01`.
    pub name: String,
    /// How it is sent, for failure messages: `plex multipart+thumb`, `emby form data`, ...
    pub transport: &'static str,
    /// `plex`, `tautulli`, `jellyfin` or `emby` (from the `.meta.json`).
    pub sender: String,
    pub method: &'static str,
    pub content_type: Option<String>,
    pub user_agent: Option<String>,
    pub body: Vec<u8>,
    /// The fixture's `expected` object.
    pub expected: Value,
}

impl FixtureCase {
    /// `name [transport]`, for failure messages.
    pub fn label(&self) -> String {
        format!("{} [{}]", self.name, self.transport)
    }
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

/// Every fixture's (stem, sender, JSON bytes, expected), sorted by name.
pub fn fixture_files() -> Vec<(String, String, Vec<u8>, Value)> {
    let dir = fixtures_dir();
    let mut metas: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".meta.json"))
        .collect();
    metas.sort();
    metas
        .into_iter()
        .map(|meta_path| {
            let meta: Value = serde_json::from_slice(
                &std::fs::read(&meta_path)
                    .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display())),
            )
            .unwrap_or_else(|e| panic!("{}: {e}", meta_path.display()));
            let file = meta_path.file_name().unwrap().to_string_lossy().to_string();
            let stem = file.trim_end_matches(".meta.json").to_string();
            let sample = meta["sample"]
                .as_str()
                .map(String::from)
                .unwrap_or(format!("{stem}.json"));
            let body_path = dir.join(&sample);
            let body = std::fs::read(&body_path)
                .unwrap_or_else(|e| panic!("{}: {e}", body_path.display()));
            let sender = meta["sender"]
                .as_str()
                .unwrap_or_else(|| panic!("{file}: no sender"))
                .to_string();
            let expected = meta["expected"].clone();
            assert!(expected.is_object(), "{file}: no expected object");
            (stem, sender, body, expected)
        })
        .collect()
}

/// A small JPEG-like blob with the bytes that trip naive parsers: CR, LF and `--`.
pub const THUMB: &[u8] =
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\r\n--not-a-boundary\r\n\r\n\x00\xff\xd9";

/// A multipart body with the given (name, filename, content type, bytes) parts.
pub fn multipart(boundary: &str, parts: &[(&str, Option<&str>, &str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, filename, ct, bytes) in parts {
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\n")
                    .as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(format!("Content-Type: {ct}\r\n\r\n").as_bytes());
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// Every fixture in every transport its sender uses.
pub fn fixture_cases() -> Vec<FixtureCase> {
    let mut cases = Vec::new();
    for (name, sender, body, expected) in fixture_files() {
        let case = |transport: &'static str,
                    method: &'static str,
                    ct: Option<&str>,
                    ua: Option<&str>,
                    body: Vec<u8>| FixtureCase {
            name: name.clone(),
            transport,
            sender: sender.clone(),
            method,
            content_type: ct.map(String::from),
            user_agent: ua.map(String::from),
            body,
            expected: expected.clone(),
        };
        match sender.as_str() {
            "plex" => {
                let boundary = "------------------------8f1c2a7d5e3b9a04";
                let ct = format!("multipart/form-data; boundary={boundary}");
                let ua = Some("PlexMediaServer/1.41.6.9685-d301f511a");
                cases.push(case(
                    "plex multipart",
                    "POST",
                    Some(&ct),
                    ua,
                    multipart(boundary, &[("payload", None, "application/json", &body)]),
                ));
                let quoted = format!("multipart/form-data; boundary=\"{boundary}\"");
                cases.push(case(
                    "plex multipart+thumb",
                    "POST",
                    Some(&quoted),
                    ua,
                    multipart(
                        boundary,
                        &[
                            ("payload", None, "application/json", &body),
                            ("thumb", Some("thumb.jpg"), "image/jpeg", THUMB),
                        ],
                    ),
                ));
            }
            "tautulli" => {
                let ua = Some("Tautulli/v2.17.2");
                cases.push(case(
                    "tautulli PUT",
                    "PUT",
                    Some("application/json"),
                    ua,
                    body.clone(),
                ));
                cases.push(case(
                    "tautulli POST",
                    "POST",
                    Some("application/json"),
                    ua,
                    body.clone(),
                ));
            }
            "jellyfin" => {
                let ua = Some("Jellyfin-Server/10.10.3");
                cases.push(case(
                    "jellyfin text/plain",
                    "POST",
                    Some("text/plain; charset=utf-8"),
                    ua,
                    body.clone(),
                ));
                cases.push(case(
                    "jellyfin application/json",
                    "POST",
                    Some("application/json"),
                    ua,
                    body.clone(),
                ));
            }
            "emby" => {
                cases.push(case(
                    "emby json",
                    "POST",
                    Some("application/json"),
                    None,
                    body.clone(),
                ));
                let boundary = "EmbyBoundary0f3d9c";
                cases.push(case(
                    "emby multipart data",
                    "POST",
                    Some(&format!("multipart/form-data; boundary={boundary}")),
                    None,
                    multipart(
                        boundary,
                        &[("data", None, "text/plain; charset=utf-8", &body)],
                    ),
                ));
                let text = String::from_utf8(body.clone()).expect("emby fixture is UTF-8");
                let form =
                    serde_urlencoded::to_string([("data", text.as_str())]).expect("urlencode");
                cases.push(case(
                    "emby form data",
                    "POST",
                    Some("application/x-www-form-urlencoded"),
                    None,
                    form.into_bytes(),
                ));
            }
            other => panic!("{name}: unknown sender {other}"),
        }
    }
    cases
}

/// Compares a serialized `WebhookEvent` (with `actionable` merged in as a top-level key, as the
/// dry run answers it next to the event) with a fixture's `expected`. Every key of `expected`
/// must match; ids and numbers compare by value whether written as strings or numbers; a `null`
/// expectation also accepts an absent key. Returns every mismatch, one per line.
pub fn check_expected(event_json: &Value, expected: &Value) -> Result<(), String> {
    let Some(expected) = expected.as_object() else {
        return Err("expected is not an object".into());
    };
    let mut errors = Vec::new();
    for (key, want) in expected {
        let got = event_json.get(key).unwrap_or(&Value::Null);
        if !same(got, want) {
            errors.push(format!("field '{key}': expected {want}, got {got}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

fn same(got: &Value, want: &Value) -> bool {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            g.len() == w.len()
                && w.iter()
                    .all(|(k, wv)| g.get(k).is_some_and(|gv| same(gv, wv)))
        }
        (Value::Array(g), Value::Array(w)) => {
            g.len() == w.len() && g.iter().zip(w).all(|(a, b)| same(a, b))
        }
        (Value::String(g), Value::Number(w)) | (Value::Number(w), Value::String(g)) => {
            g == &w.to_string()
        }
        (Value::Number(g), Value::Number(w)) => g.as_f64() == w.as_f64(),
        _ => got == want,
    }
}

#[test]
fn check_expected_reports_every_mismatch_and_accepts_string_numbers() {
    let got = serde_json::json!({"a": "1", "b": {"imdb": "tt1"}, "c": null, "actionable": true});
    assert!(check_expected(
        &got,
        &serde_json::json!({"a": 1, "b": {"imdb": "tt1"}, "c": null, "d": null})
    )
    .is_ok());
    let err = check_expected(
        &got,
        &serde_json::json!({"a": 2, "b": {}, "actionable": false}),
    )
    .unwrap_err();
    assert_eq!(err.lines().count(), 3, "{err}");
    assert!(err.contains("field 'b'"));
}
