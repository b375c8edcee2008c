//! Reading the servers' JSON so that one odd value cannot stop a sync: ids that arrive as
//! numbers, numbers that arrive as strings (`"ProductionYear": "2017"`), and pages decoded
//! item by item ([`decode_each`]): an item of an unexpected shape is skipped, logged and
//! counted instead of failing its page, and with it every later run of a sync that resumes
//! at that page.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Decodes each raw item of a page as `T`. The ones that do not decode are logged (with the
/// value of `id_field` when readable) and counted: `(decoded, skipped)`.
pub fn decode_each<T: DeserializeOwned>(
    raw: &[Box<RawValue>],
    id_field: &str,
    what: &str,
) -> (Vec<T>, u64) {
    let mut items = Vec::with_capacity(raw.len());
    let mut skipped = 0;
    for r in raw {
        let decoded: Result<T, serde_json::Error> = serde_json::from_str(r.get()).or_else(|e| {
            let item = repaired(r.get()).ok_or(e)?;
            let id = id_of(r, id_field);
            tracing::warn!(
                item = id.as_deref().unwrap_or("unknown"),
                "{what}: an item was not valid JSON; read after replacing what was broken"
            );
            Ok(item)
        });
        match decoded {
            Ok(item) => items.push(item),
            Err(e) => {
                skipped += 1;
                let id = id_of(r, id_field);
                tracing::warn!(
                    item = id.as_deref().unwrap_or("unknown"),
                    error = %e,
                    "{what}: skipped an item of an unexpected shape"
                );
            }
        }
    }
    (items, skipped)
}

/// Decodes a JSON text as `T`; when that fails, once more after [`crate::json_repair::repair`]
/// (half a surrogate pair, a raw control character, ...), with a warning. The first error when
/// the repair does not help.
pub fn from_str_repaired<T: DeserializeOwned>(
    text: &str,
    what: &str,
) -> Result<T, serde_json::Error> {
    let err = match serde_json::from_str(text) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let value = repaired(text).ok_or(err)?;
    warn_repaired(what, false);
    Ok(value)
}

/// [`from_str_repaired`] of a media server's answer as bytes: invalid UTF-8 (a title or a file
/// name that the server stored as it found it) is replaced by U+FFFD instead of failing the
/// whole answer, and with it every later sync that resumes at that page. When nothing helps,
/// the error is that of the text with U+FFFD in place (the real fault, not the UTF-8).
pub fn from_slice_repaired<T: DeserializeOwned>(
    bytes: &[u8],
    what: &str,
) -> Result<T, serde_json::Error> {
    let err = match serde_json::from_slice(bytes) {
        Ok(v) => return Ok(v),
        Err(e) => e,
    };
    let (value, lossy) = match String::from_utf8_lossy(bytes) {
        std::borrow::Cow::Borrowed(text) => (repaired(text).ok_or(err)?, false),
        std::borrow::Cow::Owned(text) => match serde_json::from_str(&text) {
            Ok(v) => (v, true),
            Err(err) => (repaired(&text).ok_or(err)?, true),
        },
    };
    warn_repaired(what, lossy);
    Ok(value)
}

/// `text` decoded after [`crate::json_repair::repair`]; `None` when there was nothing to
/// repair or it still does not decode.
fn repaired<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_str(&crate::json_repair::repair(text)?).ok()
}

fn warn_repaired(what: &str, lossy: bool) {
    tracing::warn!(
        "{what}: the answer was not valid JSON{}; read after replacing what was broken",
        if lossy { " (invalid UTF-8)" } else { "" }
    );
}

/// The item's `field` as text, when it is a string or a number (for the log, and to check that
/// an answer is the item asked for).
pub fn id_of(raw: &RawValue, field: &str) -> Option<String> {
    // The other fields stay raw: one that only a full parse rejects (half a surrogate pair in
    // a title) must not hide the id.
    let map: std::collections::HashMap<String, Box<RawValue>> =
        serde_json::from_str(raw.get()).ok()?;
    match serde_json::from_str(map.get(field)?.get()).ok()? {
        serde_json::Value::String(s) => Some(s.chars().take(64).collect()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An id written as a string, or as a number by some versions and proxies.
pub fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

/// [`string_or_number`], absent or null allowed.
pub fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string or a number, got {other}"
        ))),
    }
}

/// A number that may arrive as a JSON number or a numeric string (`"2017"`); absent, null
/// or an empty string is `None`.
pub fn opt_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => {
            Ok(n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
        }
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected a number, got {s:?}"))),
        Some(serde_json::Value::Bool(b)) => Ok(Some(b as i64)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a number, got {other}"
        ))),
    }
}

/// Provider name → id, values as strings: a number (`"Tmdb": 603`, as some proxies and
/// Emby-compatible servers write it) becomes its text; a value of another kind is no id. A
/// `ProviderIds` that is no object (`[]` for an empty map) is none; absent or null too.
#[allow(clippy::type_complexity)]
pub fn opt_id_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::collections::HashMap<String, Option<String>>>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Object(map)) => Some(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        serde_json::Value::String(s) => Some(s),
                        serde_json::Value::Number(n) => Some(n.to_string()),
                        _ => None,
                    };
                    (k, v)
                })
                .collect(),
        ),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Item {
        #[serde(deserialize_with = "string_or_number")]
        id: String,
        #[serde(default, deserialize_with = "opt_number")]
        year: Option<i64>,
    }

    #[test]
    fn numbers_and_ids_are_read_leniently() {
        let it: Item = serde_json::from_str(r#"{"id": 7, "year": " 2017 "}"#).unwrap();
        assert_eq!(
            it,
            Item {
                id: "7".into(),
                year: Some(2017)
            }
        );
        let it: Item = serde_json::from_str(r#"{"id": "a", "year": ""}"#).unwrap();
        assert_eq!(it.year, None);
        assert!(serde_json::from_str::<Item>(r#"{"id": null}"#).is_err());
        assert!(serde_json::from_str::<Item>(r#"{"id": "a", "year": "soon"}"#).is_err());
    }

    #[test]
    fn a_bad_item_is_skipped_and_counted() {
        let raw: Vec<Box<RawValue>> = serde_json::from_str(
            r#"[{"id": "1", "year": 1999}, {"id": "2", "year": {"x": 1}}, {"year": 3}, {"id": 4}]"#,
        )
        .unwrap();
        let (items, skipped) = decode_each::<Item>(&raw, "id", "test");
        assert_eq!(skipped, 2);
        let ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["1", "4"]);
        assert_eq!(id_of(&raw[1], "id").as_deref(), Some("2"));
        assert_eq!(id_of(&raw[2], "id"), None);
    }
}
