//! One repair pass for JSON text that did not parse: what a Jellyfin webhook template renders
//! ([`repair`]), and what a media server's answer can hold (invalid UTF-8, half a surrogate
//! pair). Used by the webhook decoder and the media-server clients, only after a parse failed.

/// Repairs the JSON that a Jellyfin Handlebars template renders: the plugin substitutes values
/// as they are, so a user's template produces text that is not JSON when an `Overview` holds a
/// line break (jellyfin-plugin-webhook#44, #217, #380), when `{{Name}}` HTML-escapes the quote the
/// plugin already backslash-escaped (`\&quot;`), when a bare `{{IsPaused}}` renders .NET's
/// `True`/`False`, when a bare `{{SeasonNumber}}` renders nothing (`"SeasonNumber": ,`), or when
/// a conditional block leaves a trailing comma (`"message": "...",\n}`, #173). Inside strings,
/// control characters are escaped and a backslash that starts no JSON escape is kept as a
/// character; outside strings, `True`/`False` become `true`/`false`, an empty value becomes `null`
/// and a comma before `}` or `]` is dropped. A `\u` escape of half a UTF-16 surrogate pair
/// (what a serialiser writes for a title cut in the middle of an emoji) becomes `\ufffd`, the
/// replacement character, as invalid UTF-8 already does. `None` when there was nothing to repair.
/// Only tried on a text that did not parse; linear in its length.
pub fn repair(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut changed = false;
    let mut in_string = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if in_string {
            match c {
                '"' => in_string = false,
                '\\' => {
                    let next = chars.peek().map(|(_, n)| *n);
                    if next == Some('u') {
                        match unicode_escape(text, i) {
                            Escape::Invalid => {}
                            Escape::Valid(len) => {
                                out.push_str(&text[i..i + len]);
                                for _ in 1..len {
                                    chars.next();
                                }
                                continue;
                            }
                            Escape::LoneSurrogate => {
                                out.push_str("\\ufffd");
                                for _ in 1..6 {
                                    chars.next();
                                }
                                changed = true;
                                continue;
                            }
                        }
                    }
                    let valid =
                        matches!(next, Some('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't'));
                    if valid {
                        out.push(c);
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    } else {
                        out.push_str("\\\\");
                        changed = true;
                    }
                    continue;
                }
                '\n' => {
                    out.push_str("\\n");
                    changed = true;
                    continue;
                }
                '\r' => {
                    out.push_str("\\r");
                    changed = true;
                    continue;
                }
                '\t' => {
                    out.push_str("\\t");
                    changed = true;
                    continue;
                }
                c if (c as u32) < 0x20 => {
                    out.push_str(&format!("\\u{:04x}", c as u32));
                    changed = true;
                    continue;
                }
                _ => {}
            }
            out.push(c);
            continue;
        }
        match c {
            '"' => in_string = true,
            ',' => {
                // A comma before the closing bracket: left by a conditional block.
                let rest = text[i + 1..].trim_start();
                if rest.starts_with('}') || rest.starts_with(']') {
                    changed = true;
                    continue;
                }
            }
            ':' => {
                // A value that rendered empty.
                let rest = text[i + 1..].trim_start();
                if rest.starts_with(',') || rest.starts_with('}') {
                    out.push_str(": null");
                    changed = true;
                    continue;
                }
            }
            'T' | 'F' => {
                let word = if c == 'T' { "True" } else { "False" };
                let after = text[i..].strip_prefix(word).and_then(|r| r.chars().next());
                let starts_word = out
                    .chars()
                    .next_back()
                    .is_none_or(|p| !p.is_ascii_alphanumeric() && p != '_');
                if starts_word
                    && text[i..].starts_with(word)
                    && after.is_none_or(|a| !a.is_ascii_alphanumeric() && a != '_')
                {
                    out.push_str(if c == 'T' { "true" } else { "false" });
                    for _ in 1..word.len() {
                        chars.next();
                    }
                    changed = true;
                    continue;
                }
            }
            _ => {}
        }
        out.push(c);
    }
    changed.then_some(out)
}

/// What a `\u` escape at `i` (the backslash) is.
enum Escape {
    /// Not four hex digits: the backslash is a character.
    Invalid,
    /// A whole escape (6 bytes, or 12 for a surrogate pair), kept as it is.
    Valid(usize),
    /// Half a surrogate pair: 6 bytes to replace.
    LoneSurrogate,
}

fn unicode_escape(text: &str, i: usize) -> Escape {
    let unit = |at: usize| -> Option<u16> {
        let hex = text.get(at..at + 6)?.strip_prefix("\\u")?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    };
    match unit(i) {
        None => Escape::Invalid,
        Some(0xD800..=0xDBFF) => match unit(i + 6) {
            Some(0xDC00..=0xDFFF) => Escape::Valid(12),
            _ => Escape::LoneSurrogate,
        },
        Some(0xDC00..=0xDFFF) => Escape::LoneSurrogate,
        Some(_) => Escape::Valid(6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_json_is_repaired() {
        let fix = |s: &str| repair(s);
        // A line break and a tab inside a string; other control characters.
        assert_eq!(
            fix("{\"Overview\": \"a\n\r\tb\u{1}\"}").as_deref(),
            Some(r#"{"Overview": "a\n\r\tb\u0001"}"#)
        );
        // A backslash that starts no escape is a character; valid escapes are kept.
        assert_eq!(
            fix(r#"{"Name": "say \&quot;hi\&quot; \" \\ \u00e9 \u12"}"#).as_deref(),
            Some(r#"{"Name": "say \\&quot;hi\\&quot; \" \\ \u00e9 \\u12"}"#)
        );
        // .NET booleans, empty values and trailing commas outside strings only.
        assert_eq!(
            fix(r#"{"IsPaused": False, "P": True,"S": , "E":}"#).as_deref(),
            Some(r#"{"IsPaused": false, "P": true,"S": null , "E": null}"#)
        );
        assert_eq!(
            fix("{\"a\": [1, 2,\n], \"b\": \"x, }\",\n\n}").as_deref(),
            Some("{\"a\": [1, 2\n], \"b\": \"x, }\"\n\n}")
        );
        assert_eq!(
            fix(r#"{"True": "False", "a": Trueish, "b": xFalse}"#),
            None,
            "words inside strings or other words are left alone"
        );
        assert_eq!(fix(r#"{"a": true, "b": "ok"}"#), None);
        // Half a surrogate pair becomes the replacement character; a whole pair is kept.
        assert_eq!(
            fix(r#"{"a": "x\ud83d y", "b": "\uDC00", "c": "\ud83d\u0041"}"#).as_deref(),
            Some(r#"{"a": "x\ufffd y", "b": "\ufffd", "c": "\ufffd\u0041"}"#)
        );
        assert_eq!(fix(r#"{"a": "\ud83d\ude00 \u00e9"}"#), None);
        let fixed = fix(r#"{"Name": "Caf\u00e9 \ud83d"}"#).unwrap();
        let v: serde_json::Value = serde_json::from_str(&fixed).unwrap();
        assert_eq!(v["Name"], "Caf\u{e9} \u{fffd}");
        // Never panics on odd text, and stops at an unterminated string.
        for odd in [
            "\"\\",
            "\"\\u",
            "é\\",
            "{\"a\": \"\\u00",
            ",",
            ":",
            "T",
            "Fals",
            "\"x\n",
            "\"\\ud83d",
            "\"\\ud83d\\u",
            "\"\\ud83d\\udc0",
        ] {
            let _ = fix(odd);
        }
    }
}
