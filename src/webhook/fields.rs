//! Liberal readers for JSON fields. Real senders write numbers as strings (Tautulli), strings as
//! numbers (Plex `ratingKey` on some versions), `null` for absent values, and key case varies
//! between Emby versions; these helpers absorb all of that in one place.

use serde_json::{Map, Value};

/// A field by exact key, then by case-insensitive key. `null` counts as absent.
pub fn get<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let v = match obj.get(key) {
        Some(v) => Some(v),
        None => obj
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v),
    };
    v.filter(|v| !v.is_null())
}

/// A field by exact key only (Plex has both `guid` and `Guid`). `null` counts as absent.
pub fn get_exact<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// A nested object.
pub fn object<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Map<String, Value>> {
    get(obj, key).and_then(Value::as_object)
}

/// A scalar as a trimmed, non-empty string: strings as they are, numbers in decimal, booleans
/// as `true`/`false`.
pub fn string(v: &Value) -> Option<String> {
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
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
        Value::Bool(b) => b.to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

pub fn str_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    get(obj, key).and_then(string)
}

/// A non-negative integer: JSON integers, floats (floored), and numeric strings (`"12"`,
/// `" 12 "`, `"12.0"`). Negative, fractional-garbage or empty values are absent.
pub fn u64_of(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(u)
            } else {
                let f = n.as_f64()?;
                (0.0..1.8e19).contains(&f).then(|| f.floor() as u64)
            }
        }
        Value::String(s) => {
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

pub fn u64_field(obj: &Map<String, Value>, key: &str) -> Option<u64> {
    get(obj, key).and_then(u64_of)
}

pub fn u32_field(obj: &Map<String, Value>, key: &str) -> Option<u32> {
    u64_field(obj, key).and_then(|v| u32::try_from(v).ok())
}

/// A boolean: JSON booleans, `1`/`0`, and the strings `true`/`false`/`1`/`0`/`yes`/`no`.
pub fn bool_of(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().map(|f| f != 0.0),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" | "" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

pub fn bool_field(obj: &Map<String, Value>, key: &str) -> Option<bool> {
    get(obj, key).and_then(bool_of)
}

/// Media-server ticks (100 ns) to milliseconds, floored.
pub fn ticks_to_ms(ticks: u64) -> u64 {
    ticks / 10_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_and_strings_are_interchangeable() {
        assert_eq!(string(&json!(12)), Some("12".into()));
        assert_eq!(string(&json!(" ab ")), Some("ab".into()));
        assert_eq!(string(&json!("")), None);
        assert_eq!(string(&json!(3.0)), Some("3".into()));
        assert_eq!(u64_of(&json!("42")), Some(42));
        assert_eq!(u64_of(&json!("42.9")), Some(42));
        assert_eq!(u64_of(&json!(-1)), None);
        assert_eq!(u64_of(&json!("x")), None);
        assert_eq!(u64_of(&json!(7.5)), Some(7));
    }

    #[test]
    fn keys_match_case_insensitively_and_null_is_absent() {
        let v = json!({"ProviderIds": {"imdb": "tt1"}, "X": null});
        let o = v.as_object().unwrap();
        assert!(get(o, "providerids").is_some());
        assert!(get(o, "X").is_none());
        assert!(get_exact(o, "providerids").is_none());
    }

    #[test]
    fn bools_and_ticks() {
        assert_eq!(bool_of(&json!("1")), Some(true));
        assert_eq!(bool_of(&json!(0)), Some(false));
        assert_eq!(bool_of(&json!("True")), Some(true));
        assert_eq!(ticks_to_ms(56_722_609), 5672);
    }
}
