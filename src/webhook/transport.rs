//! How the JSON arrives: raw body (`application/json`, `text/plain`, no content type), a
//! `multipart/form-data` field (Plex `payload`, Emby 4.7/4.8 `data`) or an
//! `application/x-www-form-urlencoded` field (Emby `data`). Everything here works on the
//! in-memory body, never panics, and turns each failure into a [`DecodeError`] that says what
//! was wrong.

use super::lazy::{self, Json};
use super::DecodeError;
use serde_json::Value;
use std::borrow::Cow;

/// The form fields that carry a webhook's JSON, in the order they are looked for.
const JSON_FIELDS: [&str; 2] = ["payload", "data"];

/// A parsed `Content-Type`: the lower-cased media type and its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentType {
    /// e.g. `multipart/form-data`; lower-case, without parameters.
    pub mime: String,
    /// Parameter names lower-cased; values unquoted, case kept (a boundary is case-sensitive).
    pub params: Vec<(String, String)>,
}

impl ContentType {
    /// Parses `type/subtype; a=b; c="d;e"`. Never fails: garbage gives an odd `mime`.
    pub fn parse(raw: &str) -> ContentType {
        let mut parts = split_params(raw).into_iter();
        let mime = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let params = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                Some((k.trim().to_ascii_lowercase(), unquote(v.trim())))
            })
            .collect();
        ContentType { mime, params }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_multipart(&self) -> bool {
        self.mime.starts_with("multipart/")
    }

    pub fn is_urlencoded(&self) -> bool {
        self.mime == "application/x-www-form-urlencoded"
    }
}

/// Splits on `;` outside double quotes.
fn split_params(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for c in raw.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn unquote(v: &str) -> String {
    if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
        let inner = &v[1..v.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else {
                out.push(c);
            }
        }
        out
    } else {
        v.to_string()
    }
}

/// Where the JSON was found; kept for error messages and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    /// The whole body is the JSON.
    Raw,
    /// A multipart field of that name.
    Multipart(&'static str),
    /// A url-encoded form field of that name.
    Form(&'static str),
    /// The form's fields are the properties (Jellyfin "Generic Form" destination).
    FormFields,
}

impl Envelope {
    /// The form field whose name errors in the JSON are reported under.
    fn field(self) -> Option<&'static str> {
        match self {
            Envelope::Multipart(field) | Envelope::Form(field) => Some(field),
            Envelope::Raw | Envelope::FormFields => None,
        }
    }
}

/// One part of a multipart body. Only what the decoders need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part<'a> {
    /// The `name` of `Content-Disposition: form-data; name="..."`; `None` if absent.
    pub name: Option<String>,
    /// Present for file parts (Plex `thumb`): they are never the JSON.
    pub filename: Option<String>,
    pub body: &'a [u8],
}

/// Extracts the webhook's JSON text from the request body (not parsed yet: see
/// [`parse_extracted`]).
pub fn extract_json<'a>(
    content_type: Option<&str>,
    body: &'a [u8],
) -> Result<(Cow<'a, str>, Envelope), DecodeError> {
    let body = strip_bom(body);
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(DecodeError::EmptyBody);
    }
    let ct = content_type.map(ContentType::parse);
    match &ct {
        Some(ct) if ct.is_multipart() => {
            // Raw JSON labelled multipart (a sender's or a proxy's mislabel): a multipart body
            // starts with its boundary, never with `{`.
            if looks_like_json(body) {
                return json_text(body).map(|t| (t, Envelope::Raw));
            }
            let boundary = match ct.param("boundary") {
                Some(b) if !b.is_empty() => b.to_string(),
                _ => sniff_boundary(body).ok_or(DecodeError::MissingBoundary)?,
            };
            from_multipart(body, &boundary)
        }
        Some(ct) if ct.is_urlencoded() => {
            // Some senders label raw JSON as a form; accept it when it looks like JSON.
            if looks_like_json(body) {
                return json_text(body).map(|t| (t, Envelope::Raw));
            }
            from_form(body)
        }
        _ => {
            if !looks_like_json(body) {
                // No or a misleading content type: try the other envelopes before giving up.
                if let Some(boundary) = sniff_boundary(body) {
                    return from_multipart(body, &boundary);
                }
                // A form counts only if its JSON field parses (this parses it twice: rare).
                if let Ok((text, envelope)) = from_form(body) {
                    if parse_extracted(&text, envelope).is_ok() {
                        return Ok((text, envelope));
                    }
                }
            }
            json_text(body).map(|t| (t, Envelope::Raw))
        }
    }
}

/// Parses the text [`extract_json`] found; an error in a form field's JSON is reported as the
/// field's.
pub fn parse_extracted(text: &str, envelope: Envelope) -> Result<Json<'_>, DecodeError> {
    parse_json(text).map_err(|e| match envelope.field() {
        Some(field) => DecodeError::InField {
            field,
            source: Box::new(e),
        },
        None => e,
    })
}

fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

/// The JSON text of a body or field: without a UTF-8 byte order mark, invalid UTF-8 replaced
/// rather than rejected; an empty (or all blank) one is [`DecodeError::EmptyBody`].
pub fn json_text(bytes: &[u8]) -> Result<Cow<'_, str>, DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(s) => json_str(s).map(Cow::Borrowed),
        Err(_) => owned_json_text(String::from_utf8_lossy(bytes).into_owned()),
    }
}

/// [`json_text`] of a string, which needs no UTF-8 repair.
pub fn json_str(s: &str) -> Result<&str, DecodeError> {
    let s = s.strip_prefix('\u{FEFF}').unwrap_or(s);
    if s.bytes().all(|b| b.is_ascii_whitespace()) {
        return Err(DecodeError::EmptyBody);
    }
    Ok(s)
}

/// Parses a JSON text, lazily (see `lazy::parse`).
pub fn parse_json(text: &str) -> Result<Json<'_>, DecodeError> {
    lazy::parse(text).map_err(|e| DecodeError::InvalidJson {
        line: e.line(),
        column: e.column(),
        message: strip_position(&e.to_string()),
    })
}

/// serde_json appends " at line L column C"; the error's Display says it once, in front.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// A body that starts with `--<boundary>` line is multipart even without a content type.
fn sniff_boundary(body: &[u8]) -> Option<String> {
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    let rest = body[start..].strip_prefix(b"--")?;
    let end = rest.iter().position(|b| *b == b'\r' || *b == b'\n')?;
    let boundary = std::str::from_utf8(&rest[..end]).ok()?.trim_end();
    if boundary.is_empty() || boundary.len() > 200 || boundary.contains(char::is_whitespace) {
        return None;
    }
    Some(boundary.to_string())
}

fn from_multipart<'a>(
    body: &'a [u8],
    boundary: &str,
) -> Result<(Cow<'a, str>, Envelope), DecodeError> {
    let parts = parse_multipart(body, boundary)?;
    for field in JSON_FIELDS {
        if let Some(part) = parts
            .iter()
            .find(|p| p.filename.is_none() && p.name.as_deref() == Some(field))
        {
            let text = json_text(part.body).map_err(|e| DecodeError::InField {
                field,
                source: Box::new(e),
            })?;
            return Ok((text, Envelope::Multipart(field)));
        }
    }
    Err(DecodeError::NoJsonField {
        envelope: "multipart",
        present: parts
            .iter()
            .map(|p| p.name.clone().unwrap_or_else(|| "(unnamed)".into()))
            .collect(),
    })
}

fn from_form(body: &[u8]) -> Result<(Cow<'static, str>, Envelope), DecodeError> {
    let mut pairs: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|e| DecodeError::InvalidForm(e.to_string()))?;
    for field in JSON_FIELDS {
        if let Some(i) = pairs.iter().position(|(k, _)| k == field) {
            let (_, value) = pairs.swap_remove(i);
            let text = owned_json_text(value).map_err(|e| DecodeError::InField {
                field,
                source: Box::new(e),
            })?;
            return Ok((text, Envelope::Form(field)));
        }
    }
    // Jellyfin's "Generic Form" destination posts the properties themselves as form fields:
    // they become a JSON object of strings (a repeated field keeps its last value).
    if pairs
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("NotificationType"))
    {
        let obj = pairs
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<serde_json::Map<_, _>>();
        return Ok((
            Cow::Owned(Value::Object(obj).to_string()),
            Envelope::FormFields,
        ));
    }
    Err(DecodeError::NoJsonField {
        envelope: "form",
        present: pairs.into_iter().map(|(k, _)| k).take(20).collect(),
    })
}

/// [`json_text`] of a form field's value, kept without a copy when it has no byte order mark.
fn owned_json_text(value: String) -> Result<Cow<'static, str>, DecodeError> {
    let text = json_str(&value)?;
    Ok(Cow::Owned(if text.len() == value.len() {
        value
    } else {
        text.to_string()
    }))
}

/// An in-memory `multipart/form-data` parser (RFC 7578 / RFC 2046 §5.1). Lenient: accepts LF
/// line ends, a missing closing delimiter (the last part then runs to the end of the body) and
/// preamble text; strict only where guessing would mis-read a part.
pub fn parse_multipart<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, DecodeError> {
    if boundary.is_empty() || boundary.len() > 200 {
        return Err(DecodeError::MissingBoundary);
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // The first delimiter may open the body or follow a preamble line.
    let mut pos = if body.starts_with(delim) {
        0
    } else {
        match find_delimiter(body, delim, 0) {
            Some((at, _)) => at,
            None => {
                return Err(DecodeError::BadMultipart(format!(
                    "the boundary '{boundary}' of the content type never appears in the body"
                )))
            }
        }
    };
    let mut parts = Vec::new();
    loop {
        // `pos` is at a delimiter.
        let mut cur = pos + delim.len();
        if body[cur..].starts_with(b"--") {
            break; // closing delimiter
        }
        // Transport padding, then the line end.
        while cur < body.len() && (body[cur] == b' ' || body[cur] == b'\t') {
            cur += 1;
        }
        if body[cur..].starts_with(b"\r\n") {
            cur += 2;
        } else if body[cur..].starts_with(b"\n") {
            cur += 1;
        } else if cur >= body.len() {
            break;
        } else {
            return Err(DecodeError::BadMultipart(
                "a boundary line is followed by text instead of a line end".into(),
            ));
        }
        let (headers, body_start) = match find_headers_end(body, cur) {
            Some(found) => found,
            None => {
                return Err(DecodeError::BadMultipart(
                    "a part's headers are not ended by an empty line".into(),
                ))
            }
        };
        let (name, filename) = parse_disposition(&body[cur..headers]);
        let (part_end, next) = match find_delimiter(body, delim, body_start) {
            Some((at, content_end)) => (content_end, Some(at)),
            None => (trim_trailing_newline(body, body_start), None),
        };
        parts.push(Part {
            name,
            filename,
            body: &body[body_start..part_end.max(body_start)],
        });
        match next {
            Some(at) => pos = at,
            None => break,
        }
    }
    Ok(parts)
}

/// Finds the next delimiter that starts a line at or after `from` (a delimiter always follows a
/// line end, so only the bytes after each `\n` are compared: linear in the body's length, and
/// `memchr` skips a binary part such as Plex's thumbnail JPEG many bytes at a time).
/// Returns (delimiter position, end of the preceding part's content).
fn find_delimiter(body: &[u8], delim: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < body.len() {
        let nl = i + memchr::memchr(b'\n', &body[i..])?;
        let at = nl + 1;
        if body[at..].starts_with(delim) {
            let content_end = if nl > from && body[nl - 1] == b'\r' {
                nl - 1
            } else {
                nl
            };
            return Some((at, content_end.max(from)));
        }
        i = at;
    }
    None
}

/// Returns (end of the header block, start of the part body).
fn find_headers_end(body: &[u8], from: usize) -> Option<(usize, usize)> {
    // A part with no headers at all starts with the empty line.
    if body[from..].starts_with(b"\r\n") {
        return Some((from, from + 2));
    }
    if body[from..].starts_with(b"\n") {
        return Some((from, from + 1));
    }
    let mut i = from;
    while i < body.len() {
        if body[i..].starts_with(b"\r\n\r\n") {
            return Some((i, i + 4));
        }
        if body[i..].starts_with(b"\n\n") {
            return Some((i, i + 2));
        }
        if body[i..].starts_with(b"\n\r\n") {
            return Some((i, i + 3));
        }
        i += 1;
    }
    None
}

fn trim_trailing_newline(body: &[u8], start: usize) -> usize {
    let mut end = body.len();
    if end >= start + 2 && &body[end - 2..end] == b"\r\n" {
        end -= 2;
    } else if end > start && body[end - 1] == b'\n' {
        end -= 1;
    }
    end
}

/// Reads `name` and `filename` from the part's `Content-Disposition` header.
fn parse_disposition(headers: &[u8]) -> (Option<String>, Option<String>) {
    let text = String::from_utf8_lossy(headers);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if !key.trim().eq_ignore_ascii_case("content-disposition") {
            continue;
        }
        let mut name = None;
        let mut filename = None;
        for p in split_params(value).into_iter().skip(1) {
            if let Some((k, v)) = p.split_once('=') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "name" => name = Some(unquote(v.trim())),
                    "filename" | "filename*" => filename = Some(unquote(v.trim())),
                    _ => {}
                }
            }
        }
        return (name, filename);
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extracts and parses as `decode` does; the JSON as a `Value`, for the assertions.
    fn extract(ct: Option<&str>, body: &[u8]) -> Result<(Value, Envelope), DecodeError> {
        let (text, env) = extract_json(ct, body)?;
        parse_extracted(&text, env)?;
        Ok((serde_json::from_str(&text).unwrap(), env))
    }

    #[test]
    fn content_type_params_and_quotes() {
        let ct = ContentType::parse("Multipart/Form-Data; boundary=\"a;b c\"; charset=utf-8");
        assert_eq!(ct.mime, "multipart/form-data");
        assert_eq!(ct.param("boundary"), Some("a;b c"));
        assert_eq!(ct.param("charset"), Some("utf-8"));
        assert!(ct.is_multipart());
    }

    #[test]
    fn multipart_crlf_with_thumb_part() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"payload\"\r\nContent-Type: application/json\r\n\r\n{\"a\":1}\r\n--XyZ\r\nContent-Disposition: form-data; name=\"thumb\"; filename=\"thumb.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n\xff\xd8--XyZ-not\r\n--XyZ--\r\n";
        let parts = parse_multipart(body, "XyZ").unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name.as_deref(), Some("payload"));
        assert_eq!(parts[0].body, b"{\"a\":1}");
        assert_eq!(parts[1].filename.as_deref(), Some("thumb.jpg"));
        assert_eq!(parts[1].body, b"\xff\xd8--XyZ-not");
        let (v, env) = extract(Some("multipart/form-data; boundary=XyZ"), body).unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(env, Envelope::Multipart("payload"));
    }

    #[test]
    fn multipart_lf_preamble_and_missing_close() {
        let body =
            b"preamble\n--b\nContent-Disposition: form-data; name=data\n\n{\"Event\":\"x\"}\n";
        let (v, env) = extract(Some("multipart/form-data; boundary=b"), body).unwrap();
        assert_eq!(v["Event"], "x");
        assert_eq!(env, Envelope::Multipart("data"));
    }

    #[test]
    fn multipart_without_json_field_names_the_fields() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"other\"\r\n\r\nx\r\n--b--";
        let err = extract(Some("multipart/form-data; boundary=b"), body).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no 'payload'"), "{msg}");
        assert!(msg.contains("other"), "{msg}");
    }

    #[test]
    fn multipart_boundary_sniffed_without_param() {
        let body =
            b"--abc\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{}\r\n--abc--\r\n";
        let (_, env) = extract(Some("multipart/form-data"), body).unwrap();
        assert_eq!(env, Envelope::Multipart("payload"));
        let (_, env) = extract(None, body).unwrap();
        assert_eq!(env, Envelope::Multipart("payload"));
    }

    #[test]
    fn urlencoded_data_field() {
        let body = b"data=%7B%22Event%22%3A%22library.new%22%7D&x=1";
        let (v, env) = extract(Some("application/x-www-form-urlencoded"), body).unwrap();
        assert_eq!(v["Event"], "library.new");
        assert_eq!(env, Envelope::Form("data"));
    }

    #[test]
    fn raw_json_labelled_multipart_is_read_as_json() {
        let body = br#" {"Event":"playback.stop","Server":{"Id":"s"}}"#;
        for ct in ["multipart/form-data; boundary=----x", "multipart/form-data"] {
            let (v, env) = extract(Some(ct), body).unwrap();
            assert_eq!(v["Event"], "playback.stop", "{ct}");
            assert_eq!(env, Envelope::Raw, "{ct}");
        }
    }

    #[test]
    fn jellyfin_generic_form_fields_become_an_object() {
        let body = b"NotificationType=PlaybackStart&ServerId=abc&PlaybackPositionTicks=50000";
        let (v, env) = extract(Some("application/x-www-form-urlencoded"), body).unwrap();
        assert_eq!(env, Envelope::FormFields);
        assert_eq!(v["NotificationType"], "PlaybackStart");
        assert_eq!(v["PlaybackPositionTicks"], "50000");
    }

    #[test]
    fn invalid_json_reports_line_and_column() {
        let err = extract(Some("application/json"), b"{\n\"a\":\n  ]").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("invalid JSON at line 3 column 3"), "{msg}");
    }

    #[test]
    fn json_errors_inside_fields_are_the_fields() {
        let body =
            b"--b\r\nContent-Disposition: form-data; name=\"payload\"\r\n\r\n{\"a\":}\r\n--b--";
        let err = extract(Some("multipart/form-data; boundary=b"), body).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("field 'payload': invalid JSON at line 1 column 6"),
            "{err}"
        );
        let err = extract(Some("application/x-www-form-urlencoded"), b"data=%20&x=1").unwrap_err();
        assert!(
            matches!(&err, DecodeError::InField { field: "data", source } if matches!(**source, DecodeError::EmptyBody)),
            "{err:?}"
        );
        // Without a content type, a form whose JSON does not parse is not taken for one: the
        // body itself is the (invalid) JSON.
        let err = extract(None, b"data=%7B&x=1").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid JSON at line 1 column 1"),
            "{err}"
        );
        let (v, env) = extract(None, b"data=%7B%22a%22%3A1%7D&x=1").unwrap();
        assert_eq!((v["a"].as_u64(), env), (Some(1), Envelope::Form("data")));
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        let (v, _) = extract(None, b"{\"a\": \"x\xff\"}").unwrap();
        assert_eq!(v["a"], "x\u{fffd}");
    }

    #[test]
    fn empty_and_bom() {
        assert!(matches!(
            extract(None, b"  \r\n"),
            Err(DecodeError::EmptyBody)
        ));
        let (v, _) = extract(Some("text/plain"), b"\xEF\xBB\xBF{\"a\":2}").unwrap();
        assert_eq!(v["a"], 2);
    }
}
