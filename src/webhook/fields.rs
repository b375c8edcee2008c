//! Liberal readers for JSON fields. Real senders write numbers as strings (Tautulli), strings as
//! numbers (Plex `ratingKey` on some versions), `null` for absent values, and key case varies
//! between Emby versions; these helpers absorb all of that in one place.

use super::lazy::{Obj, Scalar, Val};

/// A field by exact key, then by case-insensitive key. `null` counts as absent.
pub fn get<'a>(obj: &Obj<'a>, key: &str) -> Option<Val<'a>> {
    let i = obj.find(key).or_else(|| obj.find_ignore_case(key))?;
    Some(obj.value(i)).filter(|v| !v.is_null())
}

/// A field by exact key only (Plex has both `guid` and `Guid`). `null` counts as absent.
pub fn get_exact<'a>(obj: &Obj<'a>, key: &str) -> Option<Val<'a>> {
    Some(obj.value(obj.find(key)?)).filter(|v| !v.is_null())
}

/// A nested object (indexed once, by the parse or on the first access).
pub fn object<'o, 'a>(obj: &'o Obj<'a>, key: &str) -> Option<&'o Obj<'a>> {
    let i = obj.find(key).or_else(|| obj.find_ignore_case(key))?;
    obj.child(i)
}

/// A nested object by exact key only.
pub fn object_exact<'o, 'a>(obj: &'o Obj<'a>, key: &str) -> Option<&'o Obj<'a>> {
    obj.child(obj.find(key)?)
}

/// A scalar as a trimmed, non-empty string: strings as they are, numbers in decimal, booleans
/// as `true`/`false`.
pub fn string(v: Val<'_>) -> Option<String> {
    let s = match v.scalar() {
        Scalar::Str(s) => s.trim().to_string(),
        Scalar::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(i)) => i.to_string(),
            _ => {
                let f = n.as_f64()?;
                if f.fract() == 0.0 && f.abs() < 1e15 {
                    format!("{}", f as i64)
                } else {
                    n.to_string()
                }
            }
        },
        Scalar::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

pub fn str_field(obj: &Obj<'_>, key: &str) -> Option<String> {
    get(obj, key).and_then(string)
}

/// A non-negative integer: JSON integers, floats (floored), and numeric strings (`"12"`,
/// `" 12 "`, `"12.0"`). Negative, fractional-garbage or empty values are absent.
pub fn u64_of(v: Val<'_>) -> Option<u64> {
    match v.scalar() {
        Scalar::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u)
            } else {
                let f = n.as_f64()?;
                (0.0..1.8e19).contains(&f).then(|| f.floor() as u64)
            }
        }
        Scalar::Str(s) => {
            let s = s.trim();
            if s.is_empty() {
                return None;
            }
            if let Ok(u) = s.parse::<u64>() {
                return Some(u);
            }
            let f: f64 = s.parse().ok()?;
            (0.0..1.8e19).contains(&f).then(|| f.floor() as u64)
        }
        _ => None,
    }
}

pub fn u64_field(obj: &Obj<'_>, key: &str) -> Option<u64> {
    get(obj, key).and_then(u64_of)
}

pub fn u32_field(obj: &Obj<'_>, key: &str) -> Option<u32> {
    u64_field(obj, key).and_then(|v| u32::try_from(v).ok())
}

/// A boolean: JSON booleans, `1`/`0`, and the strings `true`/`false`/`1`/`0`/`yes`/`no`. An
/// empty string (a template whose value rendered as nothing) is absent, not `false`: read as
/// `false`, an empty `Played` would assert an unmark.
pub fn bool_of(v: Val<'_>) -> Option<bool> {
    match v.scalar() {
        Scalar::Bool(b) => Some(b),
        Scalar::Number(n) => n.as_f64().map(|f| f != 0.0),
        Scalar::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

pub fn bool_field(obj: &Obj<'_>, key: &str) -> Option<bool> {
    get(obj, key).and_then(bool_of)
}

/// Media-server ticks (100 ns) to milliseconds, floored.
pub fn ticks_to_ms(ticks: u64) -> u64 {
    ticks / 10_000
}

/// Whether an item's `Played: true`, sent with a stop that does not say whether this session
/// finished it, means it did. `Played` stays true on a film played before and stopped
/// mid-way this time, so it counts only with the position where a finished playback leaves
/// it: reset to 0 (the user data after completion), or at least 90 % in (the session's own
/// position at the end, past Jellyfin's and Emby's default played threshold).
pub fn finished_by_played(
    played: Option<bool>,
    position_ms: Option<u64>,
    duration_ms: Option<u64>,
) -> bool {
    if played != Some(true) {
        return false;
    }
    match (position_ms.unwrap_or(0), duration_ms) {
        (0, _) => true,
        (pos, Some(d)) if d > 0 => pos.saturating_mul(10) >= d.saturating_mul(9),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::lazy::parse_object;
    use super::*;

    /// The value of `{"v": <json>}`, read as the decoders read it.
    fn with<R>(json: &str, f: impl FnOnce(Val<'_>) -> R) -> R {
        let text = format!("{{\"v\": {json}}}");
        let obj = parse_object(&text);
        f(obj.value(obj.find("v").unwrap()))
    }

    #[test]
    fn numbers_and_strings_are_interchangeable() {
        assert_eq!(with("12", string), Some("12".into()));
        assert_eq!(with("\" ab \"", string), Some("ab".into()));
        assert_eq!(with("\"\"", string), None);
        assert_eq!(with("3.0", string), Some("3".into()));
        assert_eq!(with("\"42\"", u64_of), Some(42));
        assert_eq!(with("\"42.9\"", u64_of), Some(42));
        assert_eq!(with("-1", u64_of), None);
        assert_eq!(with("\"x\"", u64_of), None);
        assert_eq!(with("7.5", u64_of), Some(7));
    }

    #[test]
    fn more_scalars() {
        assert_eq!(with("-3", string), Some("-3".into()));
        assert_eq!(with("2.5", string), Some("2.5".into()));
        assert_eq!(with("1e20", string), Some("1e+20".into()));
        assert_eq!(with("1e14", string), Some("100000000000000".into()));
        assert_eq!(with("1e15", string), Some("1000000000000000.0".into()));
        assert_eq!(with("true", string), Some("true".into()));
        assert_eq!(with("null", string), None);
        assert_eq!(with("[1]", string), None);
        assert_eq!(with("{\"a\": 1}", string), None);
        assert_eq!(with("\"a\\\"b\"", string), Some("a\"b".into()));
        assert_eq!(with("\" na\\u00efve \"", string), Some("naïve".into()));
        assert_eq!(with("\" 12 \"", u64_of), Some(12));
        assert_eq!(with("\"12.0\"", u64_of), Some(12));
        assert_eq!(with("\"\"", u64_of), None);
        assert_eq!(with("\"-4\"", u64_of), None);
        assert_eq!(with("18446744073709551615", u64_of), Some(u64::MAX));
        assert_eq!(with("true", u64_of), None);
        assert_eq!(with("\"yes\"", bool_of), Some(true));
        assert_eq!(with("\" No \"", bool_of), Some(false));
        assert_eq!(with("\"\"", bool_of), None);
        assert_eq!(with("\"maybe\"", bool_of), None);
        assert_eq!(with("0.5", bool_of), Some(true));
        assert_eq!(with("false", bool_of), Some(false));
        assert_eq!(with("null", bool_of), None);
    }

    #[test]
    fn keys_match_case_insensitively_and_null_is_absent() {
        let text = r#"{"ProviderIds": {"imdb": "tt1"}, "X": null}"#;
        let o = parse_object(text);
        assert!(get(&o, "providerids").is_some());
        assert!(get(&o, "X").is_none());
        assert!(get_exact(&o, "providerids").is_none());
    }

    #[test]
    fn lookups_find_what_a_map_finds() {
        // The rule as it was on `serde_json::Map`: exact key, else the first case-insensitive
        // match in key order; `null` is absent.
        fn map_get(text: &str, key: &str) -> Option<String> {
            let map: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text).unwrap();
            let v = match map.get(key) {
                Some(v) => Some(v),
                None => map
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v),
            };
            v.filter(|v| !v.is_null()).map(|v| v.to_string())
        }
        for text in [
            r#"{"id": null, "ID": "5", "Id": "6", "iD": "7"}"#,
            r#"{"ID": "5", "Id": "6", "iD": "7", "ID": "8"}"#,
            r#"{"Id": null, "ID": "5"}"#,
            r#"{"ID": null, "Id": "5"}"#,
            r#"{"iD": 1, "id": 2, "id": null}"#,
        ] {
            let o = parse_object(text);
            for key in ["id", "ID", "Id", "iD", "x"] {
                let got = get(&o, key).map(|v| v.text().to_string());
                assert_eq!(got, map_get(text, key), "{text} {key}");
            }
        }
        let o = parse_object(r#"{"ID": "5", "Id": "6", "iD": "7"}"#);
        assert_eq!(str_field(&o, "id"), Some("5".into()));
        let o = parse_object(r#"{"id": null, "ID": "5"}"#);
        assert_eq!(str_field(&o, "id"), None);
    }

    #[test]
    fn nested_objects() {
        let o = parse_object(r#"{"Item": {"Id": 5, "ProviderIds": {"Imdb": "tt1"}}, "S": "x"}"#);
        let item = object(&o, "item").unwrap();
        assert_eq!(u64_field(item, "id"), Some(5));
        let ids = object(item, "ProviderIds").unwrap();
        assert_eq!(str_field(ids, "imdb"), Some("tt1".into()));
        assert!(object(&o, "S").is_none());
        assert!(object_exact(&o, "item").is_none());
        assert!(object_exact(&o, "Item").is_some());
        assert!(object(&o, "missing").is_none());
        assert!(
            std::ptr::eq(item, object(&o, "Item").unwrap()),
            "parsed once"
        );
    }

    #[test]
    fn bools_and_ticks() {
        assert_eq!(with("\"1\"", bool_of), Some(true));
        assert_eq!(with("0", bool_of), Some(false));
        assert_eq!(with("\"True\"", bool_of), Some(true));
        assert_eq!(ticks_to_ms(56_722_609), 5672);
    }
}
