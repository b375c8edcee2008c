//! A JSON object read lazily, for the decoders. Parsing checks the whole text but builds only
//! an index of its objects (and of the objects in them): each key, borrowed from the text
//! unless it has escapes, with the raw text of its value. Anything else is parsed when a
//! decoder reads it, on each read; most of a webhook body (Plex `Metadata` arrays, the Jellyfin
//! and Emby properties nobody reads) is never built at all.
//!
//! What a reader sees is what a `serde_json::Value` of the same text would hold:
//! - a duplicate key holds its last value (`Map` keeps the last insert);
//! - lookups that a `Map` answers in key order ([`Obj::find_ignore_case`], [`Obj::sorted`])
//!   answer in the same order (byte-wise sorted keys);
//! - a text is rejected exactly when `serde_json::from_str::<Value>` rejects it, with the same
//!   error (message, line, column): see [`parse`].

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Number;
use std::borrow::Cow;
use std::cell::OnceCell;
use std::fmt;

/// Strings for which this returns true read as `null` (see [`Obj::with_null_strings`]).
pub type NullStrings = fn(&str) -> bool;

/// A parsed JSON text: an object to read lazily, or the kind of whatever else it was.
pub enum Json<'a> {
    Object(Obj<'a>),
    Other(Kind),
}

/// The kind of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// A JSON object whose values are parsed when read.
#[derive(Clone)]
pub struct Obj<'a> {
    entries: Vec<Entry<'a>>,
    null_strings: Option<NullStrings>,
}

#[derive(Clone)]
struct Entry<'a> {
    key: Cow<'a, str>,
    /// The value's JSON text.
    raw: &'a str,
    /// False if no string value in it, at any depth, has a `{` (see [`Obj::any_brace_string`]);
    /// true when that is not known.
    braced: bool,
    /// The value as an object, parsed on first access (`None` once known not to be one).
    child: OnceCell<Option<Obj<'a>>>,
}

/// One value of an [`Obj`] or of an array, not parsed yet.
#[derive(Clone, Copy)]
pub struct Val<'a> {
    raw: &'a str,
    null_strings: Option<NullStrings>,
}

/// A value as read: scalars parsed, containers only named.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array,
    Object,
}

/// Parses a JSON text. Fails exactly when `serde_json::from_str::<serde_json::Value>` fails,
/// with its error.
///
/// An object is walked here in one pass: its structure, plain strings, literals and short
/// integers are checked here, escaped strings and other numbers by serde_json's own full parse
/// (which makes every check a `Value` parse makes). Anything this walk does not follow (every
/// invalid text among them), and nesting deep enough to approach serde_json's limit of 128
/// levels (which the walk, parsing values one by one, would count from the wrong level), is
/// left to one full parse of the whole text, which then reports the error a `Value` parse
/// reports.
pub fn parse(text: &str) -> Result<Json<'_>, serde_json::Error> {
    let b = text.as_bytes();
    let first = b.get(skip_ws(b, 0)).copied();
    if first == Some(b'{') && !may_be_deep(b) {
        if let Some(entries) = index_object(text) {
            return Ok(Json::Object(Obj {
                entries,
                null_strings: None,
            }));
        }
    }
    full_parse(text)?;
    Ok(match first {
        Some(b'{') => match Obj::from_valid(text, None) {
            Some(obj) => Json::Object(obj),
            None => Json::Other(Kind::Object),
        },
        Some(b'[') => Json::Other(Kind::Array),
        Some(b'"') => Json::Other(Kind::String),
        Some(b't' | b'f') => Json::Other(Kind::Bool),
        Some(b'n') => Json::Other(Kind::Null),
        _ => Json::Other(Kind::Number),
    })
}

/// Nesting that may reach serde_json's recursion limit (128) once counted from the top level.
const DEEP: usize = 120;

/// True if the text has [`DEEP`] `[` or `{` (strings included: an upper bound of its nesting).
fn may_be_deep(b: &[u8]) -> bool {
    memchr::memchr2_iter(b'[', b'{', b).nth(DEEP - 1).is_some()
}

/// JSON whitespace, as serde_json skips it.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// The entries of a text that is one JSON object; `None` if anything is off (then a full parse
/// says what), including a value that fails serde_json's full parse.
fn index_object(text: &str) -> Option<Vec<Entry<'_>>> {
    let b = text.as_bytes();
    let (entries, end) = index_object_at(text, skip_ws(b, 0), 64)?;
    (skip_ws(b, end) == b.len()).then_some(entries)
}

/// The entries of the object whose `{` is at `at`, and the index after its `}`. Objects in it
/// are indexed the same way (so that reading one does not parse its text again); every other
/// value is checked by [`check_value`]. The caller has made sure that the nesting is shallow.
fn index_object_at(text: &str, at: usize, capacity: usize) -> Option<(Vec<Entry<'_>>, usize)> {
    let b = text.as_bytes();
    if b.get(at) != Some(&b'{') {
        return None;
    }
    let mut i = skip_ws(b, at + 1);
    let mut entries = Vec::with_capacity(capacity);
    if b.get(i) == Some(&b'}') {
        return Some((entries, i + 1));
    }
    loop {
        let (key, after_key) = read_key(text, i)?;
        i = skip_ws(b, after_key);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (end, braced, child) = if b.get(i) == Some(&b'{') {
            let (entries, end) = index_object_at(text, i, 16)?;
            let braced = entries.iter().any(|e| e.braced);
            let obj = Obj {
                entries,
                null_strings: None,
            };
            (end, braced, OnceCell::from(Some(obj)))
        } else {
            let (end, braced) = check_value(text, i)?;
            (end, braced, OnceCell::new())
        };
        entries.push(Entry {
            key,
            raw: &text[i..end],
            braced,
            child,
        });
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some((entries, i + 1)),
            _ => return None,
        }
    }
}

/// Checks the value at `at` as serde_json's full parse would, building nothing: the index after
/// it, and whether a string value in it (keys aside) has a `{`. Plain strings (no escapes),
/// literals, short integers and the structure are checked here; escaped strings and other
/// numbers are handed to serde_json. `None` if the value is invalid, or is valid in a way this
/// does not follow (the caller then leaves the text to a full parse, which says which).
fn check_value(text: &str, at: usize) -> Option<(usize, bool)> {
    let b = text.as_bytes();
    match *b.get(at)? {
        b'"' => plain_string_end(b, at).or_else(|| check_by_serde(text, at)),
        b'{' => check_object(text, at),
        b'[' => check_array(text, at),
        b't' if b[at..].starts_with(b"true") => scalar_end(b, at + 4),
        b'f' if b[at..].starts_with(b"false") => scalar_end(b, at + 5),
        b'n' if b[at..].starts_with(b"null") => scalar_end(b, at + 4),
        b'-' | b'0'..=b'9' => short_integer_end(b, at).or_else(|| check_by_serde(text, at)),
        _ => None,
    }
}

/// See [`check_value`]; `at` is the `{`.
fn check_object(text: &str, at: usize) -> Option<(usize, bool)> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, at + 1);
    let mut braced = false;
    if b.get(i) == Some(&b'}') {
        return Some((i + 1, false));
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (after_key, _) = plain_string_end(b, i).or_else(|| check_by_serde(text, i))?;
        i = skip_ws(b, after_key);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let (end, value_braced) = check_value(text, skip_ws(b, i + 1))?;
        braced |= value_braced;
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Some((i + 1, braced)),
            _ => return None,
        }
    }
}

/// See [`check_value`]; `at` is the `[`.
fn check_array(text: &str, at: usize) -> Option<(usize, bool)> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, at + 1);
    let mut braced = false;
    if b.get(i) == Some(&b']') {
        return Some((i + 1, false));
    }
    loop {
        let (end, value_braced) = check_value(text, i)?;
        braced |= value_braced;
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b']') => return Some((i + 1, braced)),
            _ => return None,
        }
    }
}

/// The value at `at` checked by serde_json's full parse (see [`check_value`]).
fn check_by_serde(text: &str, at: usize) -> Option<(usize, bool)> {
    let mut values = serde_json::Deserializer::from_str(&text[at..]).into_iter::<Checked>();
    let Checked(braced) = values.next()?.ok()?;
    Some((at + values.byte_offset(), braced))
}

/// The end of the string at `at` (its `"`) if it has neither escapes nor control characters,
/// and whether it has a `{`.
fn plain_string_end(b: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut braced = false;
    let mut i = at + 1;
    // Eight bytes at a time; the lowest byte flagged in a word is a true match.
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        let stop = has_byte(w, b'"') | has_byte(w, b'\\') | has_byte_below(w, 0x20);
        if stop == 0 {
            braced |= has_byte(w, b'{') != 0;
            i += 8;
            continue;
        }
        let lane = (stop.trailing_zeros() / 8) as usize;
        braced |= has_byte(w, b'{') & ((1u64 << (8 * lane)) - 1) != 0;
        i += lane;
        return (b[i] == b'"').then_some((i + 1, braced));
    }
    loop {
        match *b.get(i)? {
            b'"' => return Some((i + 1, braced)),
            b'\\' => return None,
            c if c < 0x20 => return None,
            c => {
                braced |= c == b'{';
                i += 1;
            }
        }
    }
}

/// The end of an integer of at most 15 digits at `at` (it fits any integer type serde_json
/// parses into), if a delimiter follows it.
fn short_integer_end(b: &[u8], at: usize) -> Option<(usize, bool)> {
    let digits = at + usize::from(b.get(at) == Some(&b'-'));
    let mut i = digits;
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    let n = i - digits;
    if n == 0 || n > 15 || (n > 1 && b[digits] == b'0') {
        return None;
    }
    scalar_end(b, i)
}

/// `end` if a scalar that ends there is followed by whitespace, `,`, `}` or `]`.
fn scalar_end(b: &[u8], end: usize) -> Option<(usize, bool)> {
    matches!(
        b.get(end),
        Some(b' ' | b'\n' | b'\t' | b'\r' | b',' | b'}' | b']')
    )
    .then_some((end, false))
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Non-zero if a byte of `w` is below `n` (at most 128). Never misses one; may flag a byte
/// above a true one (a borrow), which only makes the caller look closer.
fn has_byte_below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGHS
}

/// Non-zero if a byte of `w` is `c` (same caveat as [`has_byte_below`]).
fn has_byte(w: u64, c: u8) -> u64 {
    has_byte_below(w ^ (ONES * u64::from(c)), 1)
}

/// The key whose opening quote is at `at`, and the index after its closing quote. Keys without
/// escapes are borrowed; the others are decoded by serde_json.
fn read_key(text: &str, at: usize) -> Option<(Cow<'_, str>, usize)> {
    if text.as_bytes().get(at) != Some(&b'"') {
        return None;
    }
    if let Some((end, _)) = plain_string_end(text.as_bytes(), at) {
        return Some((Cow::Borrowed(&text[at + 1..end - 1]), end));
    }
    let rest = &text[at..];
    let key = CowStr
        .deserialize(&mut serde_json::Deserializer::from_str(rest))
        .ok()?;
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<IgnoredAny>();
    stream.next()?.ok()?;
    Some((key, at + stream.byte_offset()))
}

/// A value that passed serde_json's full parse; true if a string value in it has a `{`.
struct Checked(bool);

impl<'de> serde::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Checked, D::Error> {
        FullParse.deserialize(d).map(Checked)
    }
}

impl<'a> Obj<'a> {
    /// Parses the text of a JSON object that is already known to be valid.
    fn from_valid(text: &'a str, null_strings: Option<NullStrings>) -> Option<Obj<'a>> {
        let mut de = serde_json::Deserializer::from_str(text);
        let entries = de.deserialize_map(EntriesVisitor).ok()?;
        Some(Obj {
            entries,
            null_strings,
        })
    }

    /// This object, where every string value (here and in nested objects and arrays) for
    /// which `f` returns true reads as `null`. Keys are not affected.
    pub fn with_null_strings(mut self, f: NullStrings) -> Obj<'a> {
        self.set_null_strings(f);
        self
    }

    fn set_null_strings(&mut self, f: NullStrings) {
        self.null_strings = Some(f);
        for e in &mut self.entries {
            // Objects parsed later get `f` from this object.
            if let Some(Some(child)) = e.child.get_mut() {
                child.set_null_strings(f);
            }
        }
    }

    /// The entry of exactly this key (the last one if the key is repeated), `null` included.
    pub fn find(&self, key: &str) -> Option<usize> {
        self.entries.iter().rposition(|e| e.key == key)
    }

    /// The entry a `Map` finds first when searched in key order for a key equal to `key`
    /// ignoring ASCII case: the smallest such key, its last occurrence; `null` included.
    pub fn find_ignore_case(&self, key: &str) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if !e.key.eq_ignore_ascii_case(key) {
                continue;
            }
            match best {
                Some(b) if self.entries[b].key < e.key => {}
                _ => best = Some(i),
            }
        }
        best
    }

    /// The value of an entry found by [`Obj::find`] or [`Obj::find_ignore_case`].
    pub fn value(&self, index: usize) -> Val<'a> {
        Val {
            raw: self.entries[index].raw,
            null_strings: self.null_strings,
        }
    }

    /// The value of an entry as an object, parsed once; `None` if it is not an object.
    pub fn child(&self, index: usize) -> Option<&Obj<'a>> {
        let e = &self.entries[index];
        e.child
            .get_or_init(|| {
                Val {
                    raw: e.raw,
                    null_strings: self.null_strings,
                }
                .as_object()
            })
            .as_ref()
    }

    /// True if `f` returns true for a string value here or at any depth below (keys do not
    /// count; of a repeated key only the last value does, as in a `Map`). `f` is asked only
    /// about strings with a `{` (it must return false for the others): the parse noted which
    /// values have such strings, and only those are read.
    pub fn any_brace_string(&self, f: NullStrings) -> bool {
        let mut hits: Vec<&str> = Vec::new();
        for e in &self.entries {
            let found = e.braced
                && match e.child.get() {
                    Some(Some(child)) => child.any_brace_string(f),
                    _ => Val {
                        raw: e.raw,
                        null_strings: None,
                    }
                    .any_string(f),
                };
            note_hit(&mut hits, e.key.as_ref(), found);
        }
        !hits.is_empty()
    }

    /// The entries as a `Map` iterates them: sorted by key, each key once with its last value.
    pub fn sorted(&self) -> Vec<(&str, Val<'a>)> {
        self.sorted_where(|_| true)
    }

    /// [`Obj::sorted`], only the keys for which `keep` returns true.
    pub fn sorted_where(&self, keep: impl Fn(&str) -> bool) -> Vec<(&str, Val<'a>)> {
        let mut out: Vec<(&str, Val<'a>)> = self
            .entries
            .iter()
            .filter(|e| keep(&e.key))
            .map(|e| {
                (
                    e.key.as_ref(),
                    Val {
                        raw: e.raw,
                        null_strings: self.null_strings,
                    },
                )
            })
            .collect();
        // Stable: a repeated key's entries stay in text order, and the last one is kept.
        out.sort_by(|a, b| a.0.cmp(b.0));
        out.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                *kept = *later;
            }
            same
        });
        out
    }
}

impl<'a> Val<'a> {
    /// The value's JSON text.
    pub fn text(&self) -> &'a str {
        self.raw
    }

    /// The kind, from the first byte only (a string is decoded only when strings may read as
    /// `null`, see [`Obj::with_null_strings`]).
    pub fn kind(&self) -> Kind {
        match self.raw.as_bytes().first() {
            Some(b'n') => Kind::Null,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'"') => {
                if self.null_strings.is_some() && self.scalar() == Scalar::Null {
                    Kind::Null
                } else {
                    Kind::String
                }
            }
            Some(b'[') => Kind::Array,
            Some(b'{') => Kind::Object,
            _ => Kind::Number,
        }
    }

    pub fn is_null(&self) -> bool {
        self.kind() == Kind::Null
    }

    pub fn is_object(&self) -> bool {
        self.raw.starts_with('{')
    }

    /// The value parsed: scalars in full, containers only by kind.
    pub fn scalar(&self) -> Scalar<'a> {
        match self.raw.as_bytes().first() {
            Some(b'n') => Scalar::Null,
            Some(b't') => Scalar::Bool(true),
            Some(b'f') => Scalar::Bool(false),
            Some(b'"') => match decode_str(self.raw) {
                Some(s) if self.null_strings.is_some_and(|f| f(&s)) => Scalar::Null,
                Some(s) => Scalar::Str(s),
                None => Scalar::Null,
            },
            Some(b'[') => Scalar::Array,
            Some(b'{') => Scalar::Object,
            // The text was validated: a number always parses (as `Value` parses it).
            _ => serde_json::from_str::<Number>(self.raw).map_or(Scalar::Null, Scalar::Number),
        }
    }

    /// True if `f` returns true for this string, or for a string value at any depth below
    /// (keys do not count; of a repeated key only the last value does).
    pub fn any_string(&self, f: NullStrings) -> bool {
        match self.raw.as_bytes().first() {
            Some(b'"') => decode_str(self.raw).is_some_and(|s| f(&s)),
            Some(b'[' | b'{') => AnyString(f)
                .deserialize(&mut serde_json::Deserializer::from_str(self.raw))
                .unwrap_or(false),
            _ => false,
        }
    }

    /// The value as an object (its values read the same way as this value's object's).
    pub fn as_object(&self) -> Option<Obj<'a>> {
        if !self.is_object() {
            return None;
        }
        Obj::from_valid(self.raw, self.null_strings)
    }

    /// The value's elements, if it is an array.
    pub fn as_array(&self) -> Option<Vec<Val<'a>>> {
        if !self.raw.starts_with('[') {
            return None;
        }
        let items: Vec<&'a RawValue> = serde_json::from_str(self.raw).ok()?;
        Some(
            items
                .into_iter()
                .map(|raw| Val {
                    raw: raw.get(),
                    null_strings: self.null_strings,
                })
                .collect(),
        )
    }
}

/// Decodes the text of a JSON string (with its quotes); borrowed unless it has escapes.
fn decode_str(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        // Validated text: no escapes and no control characters, so the content is the string.
        return Some(Cow::Borrowed(inner));
    }
    let mut de = serde_json::Deserializer::from_str(raw);
    de.deserialize_str(CowStr).ok()
}

/// A string, borrowed from the text when it has no escapes.
struct CowStr;

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
}

impl<'de> DeserializeSeed<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

/// Keeps in `hits` the keys whose last value so far was found.
fn note_hit<K: PartialEq>(hits: &mut Vec<K>, key: K, found: bool) {
    if found {
        if !hits.contains(&key) {
            hits.push(key);
        }
    } else if !hits.is_empty() {
        hits.retain(|h| *h != key);
    }
}

/// Whether a string value, at any depth, satisfies the function (see [`Val::any_string`]).
#[derive(Clone, Copy)]
struct AnyString(NullStrings);

impl<'de> DeserializeSeed<'de> for AnyString {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyString {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok((self.0)(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(f) = seq.next_element_seed(self)? {
            found |= f;
        }
        Ok(found)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut hits: Vec<Cow<'de, str>> = Vec::new();
        while let Some(key) = map.next_key_seed(CowStr)? {
            let found = map.next_value_seed(self)?;
            note_hit(&mut hits, key, found);
        }
        Ok(!hits.is_empty())
    }
}

/// An object's entries: keys decoded, values kept as raw text.
struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Vec<Entry<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(16);
        while let Some(key) = map.next_key_seed(CowStr)? {
            let raw: &'de RawValue = map.next_value()?;
            entries.push(Entry {
                key,
                raw: raw.get(),
                braced: true,
                child: OnceCell::new(),
            });
        }
        Ok(entries)
    }
}

/// Parses the whole text as `serde_json::from_str::<Value>` does (same checks, same errors),
/// building nothing.
fn full_parse(text: &str) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    FullParse.deserialize(&mut de)?;
    de.end()
}

/// Visits every value through `deserialize_any`, as `Value`'s own visitor does. Answers
/// whether a string value (not a key) has a `{`.
#[derive(Clone, Copy)]
struct FullParse;

impl<'de> DeserializeSeed<'de> for FullParse {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FullParse {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v.contains('{'))
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut braced = false;
        while let Some(b) = seq.next_element_seed(FullParse)? {
            braced |= b;
        }
        Ok(braced)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut braced = false;
        while map.next_key_seed(FullParse)?.is_some() {
            braced |= map.next_value_seed(FullParse)?;
        }
        Ok(braced)
    }
}

#[cfg(test)]
pub(super) fn parse_object(text: &str) -> Obj<'_> {
    match parse(text) {
        Ok(Json::Object(obj)) => obj,
        Ok(Json::Other(kind)) => panic!("not an object but {kind:?}: {text}"),
        Err(e) => panic!("invalid JSON ({e}): {text}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn get<'a>(obj: &Obj<'a>, key: &str) -> Option<Val<'a>> {
        obj.find(key).map(|i| obj.value(i))
    }

    #[test]
    fn values_are_read_from_the_raw_text() {
        let obj = parse_object(
            r#"{"s": "a\"b", "n": 12, "f": 2.5, "t": true, "z": null, "o": {"k": [1, {"x": "y"}]},
                "na\u00efve": "na\u00efve", "plain": " x "}"#,
        );
        assert_eq!(get(&obj, "s").unwrap().scalar(), Scalar::Str("a\"b".into()));
        assert_eq!(
            get(&obj, "n").unwrap().scalar(),
            Scalar::Number(Number::from(12))
        );
        assert_eq!(
            get(&obj, "f").unwrap().scalar(),
            Scalar::Number(Number::from_f64(2.5).unwrap())
        );
        assert_eq!(get(&obj, "t").unwrap().scalar(), Scalar::Bool(true));
        assert!(get(&obj, "z").unwrap().is_null());
        assert_eq!(get(&obj, "o").unwrap().kind(), Kind::Object);
        // Escaped keys are decoded; unescaped strings are borrowed from the text.
        assert_eq!(
            get(&obj, "naïve").unwrap().scalar(),
            Scalar::Str("naïve".into())
        );
        assert!(matches!(
            get(&obj, "plain").unwrap().scalar(),
            Scalar::Str(Cow::Borrowed(" x "))
        ));
        let o = obj.child(obj.find("o").unwrap()).unwrap();
        let list = get(o, "k").unwrap().as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].text(), "1");
        let inner = list[1].as_object().unwrap();
        assert_eq!(get(&inner, "x").unwrap().scalar(), Scalar::Str("y".into()));
        assert!(get(&obj, "s").unwrap().as_object().is_none());
        assert!(get(&obj, "s").unwrap().as_array().is_none());
    }

    #[test]
    fn repeated_keys_and_key_order_are_those_of_a_map() {
        let text = r#"{"b": 1, "KEY": 1, "a": 1, "Key": 2, "b": 2, "KEY": 3, "kEy": 4}"#;
        let obj = parse_object(text);
        assert_eq!(get(&obj, "b").unwrap().text(), "2");
        // A Map searched in key order: "KEY" < "Key" < "kEy"; "KEY" holds its last value.
        let i = obj.find_ignore_case("key").unwrap();
        assert_eq!(obj.value(i).text(), "3");
        let map: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
        let sorted: Vec<(String, String)> = obj
            .sorted()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.text().to_string()))
            .collect();
        let expected: Vec<(String, String)> = map
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        assert_eq!(sorted, expected);
        let only_k: Vec<&str> = obj
            .sorted_where(|k| k.starts_with('K'))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(only_k, ["KEY", "Key"]);
    }

    #[test]
    fn null_strings_read_as_null_in_nested_values_too() {
        let obj = parse_object(r#"{"a": "{x}", "b": {"c": "{y}", "d": ["{z}", "w"]}, "{k}": 1}"#)
            .with_null_strings(|s| s.starts_with('{'));
        assert!(get(&obj, "a").unwrap().is_null());
        assert_eq!(get(&obj, "{k}").unwrap().text(), "1");
        let b = obj.child(obj.find("b").unwrap()).unwrap();
        assert!(get(b, "c").unwrap().is_null());
        let d = get(b, "d").unwrap().as_array().unwrap();
        assert_eq!(d[0].scalar(), Scalar::Null);
        assert_eq!(d[1].scalar(), Scalar::Str("w".into()));
        // A child parsed before the flag gets it too.
        let obj = parse_object(r#"{"b": {"c": "{y}"}}"#);
        let b = obj.child(0).unwrap();
        assert!(!get(b, "c").unwrap().is_null());
        let obj = obj.with_null_strings(|s| s.starts_with('{'));
        let b = obj.child(0).unwrap();
        assert!(get(b, "c").unwrap().is_null());
    }

    #[test]
    fn any_string_sees_the_values_a_map_keeps() {
        let brace = |s: &str| s.starts_with('{');
        for (text, found) in [
            (r#"{"a": 1, "b": {"c": [2, {"d": "{x}"}]}}"#, true),
            (r#"{"a": "{x}"}"#, true),
            (r#"{"{a}": 1, "b": {"{c}": "x"}}"#, false),
            (r#"{"a": "{x}", "a": "y"}"#, false),
            (r#"{"a": "y", "a": "{x}"}"#, true),
            (r#"{"b": {"c": "{x}", "c": "y"}}"#, false),
            (r#"{"b": {"c": "{x}", "d": 1, "c": {"e": ["{y}"]}}}"#, true),
            (r#"{"b": [{"c": "{x}", "c": null}, "{y}"]}"#, true),
            (r#"{"b": [{"c": "{x}", "c": null}, "y"]}"#, false),
            (r#"{"a": "\u007bx}"}"#, true),
        ] {
            assert_eq!(parse_object(text).any_brace_string(brace), found, "{text}");
        }
    }

    #[test]
    fn top_level_kinds() {
        for (text, kind) in [
            ("null", Kind::Null),
            (" true ", Kind::Bool),
            ("-1.5", Kind::Number),
            ("\"x\"", Kind::String),
            ("[1, [2], {\"a\": 3}]", Kind::Array),
        ] {
            match parse(text).unwrap() {
                Json::Other(k) => assert_eq!(k, kind, "{text}"),
                Json::Object(_) => panic!("{text}"),
            }
        }
    }

    /// Every text is accepted or rejected as `Value` parsing does, with the same error.
    fn same_as_value(text: &str) {
        let expected = serde_json::from_str::<Value>(text).map(|_| ());
        let got = parse(text).map(|_| ());
        match (expected, got) {
            (Ok(()), Ok(())) => {}
            (Err(e), Err(g)) => {
                assert_eq!(
                    (e.to_string(), e.line(), e.column()),
                    (g.to_string(), g.line(), g.column()),
                    "{text}"
                );
            }
            (e, g) => panic!("{text}: Value gives {e:?}, the lazy parse {g:?}"),
        }
    }

    #[test]
    fn invalid_json_in_unread_values_is_rejected_where_value_rejects_it() {
        let nested = |n: usize| format!("{{\"a\": {}1{}}}", "[".repeat(n), "]".repeat(n));
        let (deep_ok, deep_edge, deep_bad) = (nested(126), nested(127), nested(130));
        let long_ok = format!("{{\"a\": {}}}", "9".repeat(305));
        let long_bad = format!("{{\"a\": {}}}", "9".repeat(400));
        for text in [
            // Syntax errors deep inside a value nobody reads, with their positions.
            "{\"event\": \"media.play\",\n \"Metadata\": {\"Guid\": [{\"id\": \"x\"},\n   {\"id\": tru}]}}",
            "{\"a\": {\"b\": [1, 2,]}}",
            "{\"a\": {\"b\": 1,}}",
            "{\"a\": {\"b\" 1}}",
            "{\"a\": [\"\\x\"]}",
            "{\"a\": [\"tab\tin string\"]}",
            "{\"a\": [01]}",
            "{\"a\": [1.]}",
            "{\"a\": [-]}",
            "{\"a\": {\"b\": 1}} x",
            "{\"a\": {\"b\": 1}",
            "{\"a\": \"\\u12\"}",
            "{1: 2}",
            "",
            "[1, 2,]",
            // What only a full parse rejects.
            "{\"a\": {\"b\": \"\\ud800\"}}",
            "{\"a\": {\"b\": \"\\udc00 x\"}}",
            "{\"a\": {\"b\": \"\\uD83D\\uDE00\"}}",
            "{\"a\": {\"b\": \"\\uD83D\\u0041\"}}",
            "{\"a\": [1e400]}",
            "{\"a\": [-1E+400]}",
            "{\"a\": [0e999, 1.5e-999, 2e10]}",
            "[\"\\ud800\"]",
            &deep_ok,
            &deep_edge,
            &deep_bad,
            &long_ok,
            &long_bad,
            // Valid.
            "{\"a\": {\"b\": [1, -2.5e3, \"\\\"\", \"\\\\\", {}]}, \"c\": null}",
        ] {
            same_as_value(text);
        }
        // The position points into the unread value (the `o` of `nope`).
        let err = parse("{\"event\": \"x\",\n \"Metadata\": {\"Role\": [\n  {\"tag\": nope}]}}")
            .err()
            .unwrap();
        assert_eq!((err.line(), err.column()), (3, 12), "{err}");
    }

    /// JSON-like text: mostly valid, with every kind of token serde_json treats specially, and
    /// now and then a mistake.
    fn json_text() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", "", "", " ", "\n  ", "\t", "\r\n", "\u{b}"]);
        let scalar = prop::sample::select(vec![
            "\"abc\"",
            "\"\"",
            "\"a\\\"b\"",
            "\"na\\u00efve\"",
            "\"\\ud83d\\ude00\"",
            "\"\\ud800\"",
            "\"\\udc00x\"",
            "\"\\ud83d\\u0041\"",
            "\"{x}\"",
            "\"tab\there\"",
            "\"\\q\"",
            "\"\\u12\"",
            "\"unterminated",
            "\"0123456789abcdef{}\"",
            "\"é…\"",
            "0",
            "-0",
            "12",
            "-12",
            "012",
            "1.5",
            "1.",
            ".5",
            "1e5",
            "1E+400",
            "-1e-400",
            "2e308",
            "123456789012345",
            "1234567890123456",
            "123456789012345678901234567890",
            "18446744073709551616",
            "-9223372036854775809",
            "1.7976931348623157e308",
            "-",
            "+1",
            "true",
            "false",
            "null",
            "tru",
            "nul",
            "True",
            "truex",
            "1x",
            ",",
            "]",
            "}",
            ":",
            "",
        ]);
        let leaf = (ws.clone(), scalar, ws.clone()).prop_map(|(a, v, b)| format!("{a}{v}{b}"));
        let key = prop::sample::select(vec![
            "\"a\"",
            "\"A\"",
            "\"a\"",
            "\"k\\u0041\"",
            "\"{k}\"",
            "\"\"",
            "\"\\ud800\"",
            "1",
            "\"x",
        ]);
        let sep = prop::sample::select(vec![",", ",", ",", ",", ",", "", ",,"]);
        leaf.prop_recursive(5, 64, 6, move |inner| {
            let key = key.clone();
            let sep = sep.clone();
            prop_oneof![
                (
                    prop::collection::vec(inner.clone(), 0..6),
                    sep.clone(),
                    any::<bool>()
                )
                    .prop_map(|(items, sep, trailing)| {
                        let mut s = format!("[{}", items.join(sep));
                        if trailing && !items.is_empty() {
                            s.push(',');
                        }
                        s + "]"
                    }),
                (
                    prop::collection::vec(
                        (key, prop::sample::select(vec![":", ":", ":", ""]), inner),
                        0..6
                    ),
                    sep,
                    any::<bool>(),
                )
                    .prop_map(|(entries, sep, trailing)| {
                        let entries: Vec<String> = entries
                            .into_iter()
                            .map(|(k, c, v)| format!("{k}{c}{v}"))
                            .collect();
                        let mut s = format!("{{{}", entries.join(sep));
                        if trailing && !entries.is_empty() {
                            s.push(',');
                        }
                        s + "}"
                    }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        #[test]
        fn any_text_is_accepted_or_rejected_as_value_does(text in json_text()) {
            same_as_value(&text);
            same_as_value(&format!("{{\"k\": {text}}}"));
            same_as_value(&format!(" {{\"k\": {{\"j\": [{text}]}}, \"l\": 1}} "));
        }
    }
}
