//! The collector's fast path in one pass: a JSON body (array or NDJSON) of customer events
//! straight to validated Avro single-object messages, without a Python object per event.
//!
//! It only ever says "this event is certainly good, here are its bytes". Everything else (a
//! rule broken, a type unusual, a timestamp format beyond the common one, a duplicate key, a
//! body orjson might read differently) is handed back to the Python validator, the reference,
//! which words every error exactly as before. So the rules and messages stay Python's; this
//! file must only never take an event Python would reject, and must write the bytes Python's
//! codec writes (a hypothesis test compares both, byte for byte).
//!
//! The JSON grammar accepted is RFC 8259, strict (what orjson accepts, or less): a body this
//! parser refuses goes to orjson, which gives the error or the events.

use std::borrow::Cow;
use std::collections::HashMap;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

/// Nesting deeper than this is left to orjson (which allows 1024): the parser recurses.
const MAX_DEPTH: usize = 64;
/// Bodies larger than this are read without holding the GIL.
const RELEASE_GIL_BYTES: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// JSON values, as much of them as validation needs

#[derive(Debug)]
enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// An object, an array, or an integer beyond i64: never part of a certainly good event.
    Other,
}

/// A parse failure: the body (or NDJSON line) goes to orjson as it is.
struct Invalid;

type Res<T> = Result<T, Invalid>;

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while self.i < self.b.len() {
            match self.b[self.i] {
                b' ' | b'\t' | b'\n' | b'\r' => self.i += 1,
                _ => break,
            }
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn expect(&mut self, c: u8) -> Res<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    fn literal(&mut self, word: &[u8]) -> Res<()> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(Invalid)
        }
    }

    /// Any value; objects and arrays are checked and skipped.
    fn value(&mut self, depth: usize) -> Res<Val<'a>> {
        match self.peek() {
            Some(b'"') => Ok(Val::Str(self.string()?)),
            Some(b'{') => {
                self.skip_object(depth + 1)?;
                Ok(Val::Other)
            }
            Some(b'[') => {
                self.skip_array(depth + 1)?;
                Ok(Val::Other)
            }
            Some(b't') => self.literal(b"true").map(|_| Val::Bool(true)),
            Some(b'f') => self.literal(b"false").map(|_| Val::Bool(false)),
            Some(b'n') => self.literal(b"null").map(|_| Val::Null),
            Some(b'-') | Some(b'0'..=b'9') => self.number(),
            _ => Err(Invalid),
        }
    }

    fn skip_object(&mut self, depth: usize) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    fn skip_array(&mut self, depth: usize) -> Res<()> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        self.expect(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            self.value(depth)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Invalid),
            }
        }
    }

    /// An object's members, values as `value` gives them (nested ones skipped), except the
    /// member named `nested`, whose object members are returned too.
    #[allow(clippy::type_complexity)]
    fn members(
        &mut self,
        depth: usize,
        nested: Option<&str>,
    ) -> Res<(Vec<(Cow<'a, str>, Val<'a>)>, Option<Vec<(Cow<'a, str>, Val<'a>)>>, bool)> {
        if depth > MAX_DEPTH {
            return Err(Invalid);
        }
        let mut out = Vec::with_capacity(16);
        let mut inner = None;
        let mut inner_twice = false;
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok((out, inner, false));
        }
        loop {
            self.ws();
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            self.ws();
            if nested == Some(key.as_ref()) && self.peek() == Some(b'{') {
                let (fields, _, _) = self.members(depth + 1, None)?;
                inner_twice |= inner.is_some();
                inner = Some(fields);
                out.push((key, Val::Other));
            } else {
                let v = self.value(depth)?;
                out.push((key, v));
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok((out, inner, inner_twice));
                }
                _ => return Err(Invalid),
            }
        }
    }

    fn string(&mut self) -> Res<Cow<'a, str>> {
        self.expect(b'"')?;
        let start = self.i;
        // the usual string: no escape, borrowed (the body was checked to be UTF-8). Eight
        // bytes at a time up to the first that is a quote, a backslash or a control byte.
        self.i = plain_run(self.b, self.i);
        while self.i < self.b.len() {
            let c = self.b[self.i];
            if c == b'"' {
                let s = &self.b[start..self.i];
                self.i += 1;
                return Ok(Cow::Borrowed(as_str(s)));
            }
            if c == b'\\' {
                break;
            }
            if c < 0x20 {
                return Err(Invalid);
            }
            self.i += 1;
        }
        let mut buf: Vec<u8> = self.b[start..self.i].to_vec();
        while self.i < self.b.len() {
            let c = self.b[self.i];
            self.i += 1;
            match c {
                b'"' => {
                    return String::from_utf8(buf)
                        .map(Cow::Owned)
                        .map_err(|_| Invalid)
                }
                b'\\' => {
                    let e = self.peek().ok_or(Invalid)?;
                    self.i += 1;
                    match e {
                        b'"' => buf.push(b'"'),
                        b'\\' => buf.push(b'\\'),
                        b'/' => buf.push(b'/'),
                        b'b' => buf.push(8),
                        b'f' => buf.push(12),
                        b'n' => buf.push(b'\n'),
                        b'r' => buf.push(b'\r'),
                        b't' => buf.push(b'\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                // a high surrogate: a low one must follow
                                self.literal(b"\\u")?;
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return Err(Invalid);
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return Err(Invalid); // a lone low surrogate
                            } else {
                                hi
                            };
                            let ch = char::from_u32(code).ok_or(Invalid)?;
                            let mut tmp = [0u8; 4];
                            buf.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                        }
                        _ => return Err(Invalid),
                    }
                }
                c if c < 0x20 => return Err(Invalid),
                c => buf.push(c),
            }
        }
        Err(Invalid)
    }

    fn hex4(&mut self) -> Res<u32> {
        if self.i + 4 > self.b.len() {
            return Err(Invalid);
        }
        let mut n = 0u32;
        for k in 0..4 {
            let d = (self.b[self.i + k] as char).to_digit(16).ok_or(Invalid)?;
            n = n * 16 + d;
        }
        self.i += 4;
        Ok(n)
    }

    fn number(&mut self) -> Res<Val<'a>> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Invalid),
        }
        let mut float = false;
        if self.peek() == Some(b'.') {
            self.i += 1;
            float = true;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Invalid);
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e') | Some(b'E')) {
            self.i += 1;
            float = true;
            if matches!(self.peek(), Some(b'+') | Some(b'-')) {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(Invalid);
            }
            self.digits();
        }
        // a digit right after a leading 0 ("01") is not JSON: the caller's next check fails
        let text = as_str(&self.b[start..self.i]);
        if float {
            let f: f64 = text.parse().map_err(|_| Invalid)?;
            if f.is_infinite() {
                return Err(Invalid); // orjson refuses it ("number is infinity")
            }
            Ok(Val::Float(f))
        } else {
            // beyond i64 orjson gives an int up to u64, then a float: left to Python
            Ok(text.parse::<i64>().map(Val::Int).unwrap_or(Val::Other))
        }
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }
}

/// The index of the first byte from `i` that may end a plain run of string: a quote, a
/// backslash or a control byte (< 0x20), found a word at a time; at most the last word's
/// worth is left to the byte loop that follows.
fn plain_run(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while i + 8 <= b.len() {
        let mut word = [0u8; 8];
        word.copy_from_slice(&b[i..i + 8]);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (ONES * b'"' as u64);
        let backslash = x ^ (ONES * b'\\' as u64);
        // a byte is zero in `v` when it matched; a byte < 0x20 when it is a control byte
        let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        let control = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        if zero(quote) | zero(backslash) | control != 0 {
            break;
        }
        i += 8;
    }
    i
}

fn as_str(b: &[u8]) -> &str {
    // SAFETY: every slice given here is a part of a body checked to be UTF-8 that starts and
    // ends at ASCII bytes (quotes, structure, digits).
    unsafe { std::str::from_utf8_unchecked(b) }
}

/// Characters (code points) of a string, as Python's len() counts them.
fn chars(s: &str) -> usize {
    s.as_bytes().iter().filter(|&&b| (b & 0xC0) != 0x80).count()
}

// ---------------------------------------------------------------------------------------------
// ISO-8601 timestamps: the common form only; Python parses the rest

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn num(b: &[u8]) -> Option<i64> {
    let mut n = 0i64;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as i64;
    }
    Some(n)
}

/// `YYYY-MM-DDTHH:MM:SS[.f{1,6}](Z|+HH:MM|-HH:MM)` as `parse_timestamp_ms` reads it:
/// `int(datetime.fromisoformat(v).timestamp() * 1000)`, the same float arithmetic. None for
/// any other form (Python then decides), and outside 1970 to 2255 (where microseconds stop
/// being exact in a double).
fn iso_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (h, mi, se) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let dim = [31, if leap(y) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if y < 1 || !(1..=12).contains(&mo) || d < 1 || d > dim[(mo - 1) as usize] {
        return None;
    }
    if h > 23 || mi > 59 || se > 59 {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        let start = i + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = end - start;
        if n == 0 || n > 6 {
            return None;
        }
        micros = num(&b[start..end])? * 10i64.pow((6 - n) as u32);
        i = end;
    }
    let offset_s = match &b[i..] {
        [b'Z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let oh = num(&[*h1, *h2])?;
            let om = num(&[*m1, *m2])?;
            if oh > 23 || om > 59 {
                return None;
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'-' {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    let local_s = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se;
    let us = (local_s - offset_s) * 1_000_000 + micros;
    if !(0..(1i64 << 53)).contains(&us) {
        return None;
    }
    // Python: (aware - epoch).total_seconds() is int microseconds / 10**6 (correctly rounded,
    // and exact operands here), then * 1000 as a float, then int() truncates.
    let seconds = us as f64 / 1e6;
    Some((seconds * 1000.0) as i64)
}

// ---------------------------------------------------------------------------------------------
// The writer schema, compiled: what each field is and how it is written

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    String,
    Long,
    Int,
    Double,
    Float,
    Boolean,
    /// Any other type (bytes, ...): a field of it is never written here.
    Unsupported,
}

impl Kind {
    fn of(name: &str) -> Kind {
        match name {
            "string" => Kind::String,
            "long" => Kind::Long,
            "int" => Kind::Int,
            "double" => Kind::Double,
            "float" => Kind::Float,
            "boolean" => Kind::Boolean,
            _ => Kind::Unsupported,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct FieldType {
    kind: Kind,
    /// None: required; Some(tag): `[null, X]` or `[X, null]`, the zigzag tags of null and X.
    optional: Option<(u8, u8)>,
}

struct PayloadRecord {
    fields: Vec<(String, FieldType)>,
    union_index: i64,
}

fn field_type(node: &Bound<'_, PyAny>) -> PyResult<FieldType> {
    if let Ok(s) = node.downcast::<PyString>() {
        return Ok(FieldType {
            kind: Kind::of(s.to_str()?),
            optional: None,
        });
    }
    if let Ok(list) = node.downcast::<PyList>() {
        if list.len() == 2 {
            let a: Option<String> = list.get_item(0)?.extract().ok();
            let b: Option<String> = list.get_item(1)?.extract().ok();
            if let (Some(a), Some(b)) = (a, b) {
                if a == "null" && b != "null" {
                    return Ok(FieldType {
                        kind: Kind::of(&b),
                        optional: Some((0, 2)),
                    });
                }
                if b == "null" && a != "null" {
                    return Ok(FieldType {
                        kind: Kind::of(&a),
                        optional: Some((2, 0)),
                    });
                }
            }
        }
    }
    if let Ok(dict) = node.downcast::<PyDict>() {
        if dict.len() == 1 {
            if let Some(inner) = dict.get_item("type")? {
                return field_type(&inner);
            }
        }
    }
    Ok(FieldType {
        kind: Kind::Unsupported,
        optional: None,
    })
}

fn name_of(dict: &Bound<'_, PyDict>, namespace: &str) -> PyResult<String> {
    let name: String = dict
        .get_item("name")?
        .ok_or_else(|| PyValueError::new_err("a record without a name"))?
        .extract()?;
    Ok(if name.contains('.') || namespace.is_empty() {
        name
    } else {
        format!("{namespace}.{name}")
    })
}

fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z > 0x7F {
        out.push((z as u8 & 0x7F) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    put_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// The top-level fields the encoder knows how to fill, in the writer schema's order.
enum Top {
    EventId,
    EventType,
    EventTs,
    ReceivedTs,
    CustomerId,
    Source,
    SchemaVersion,
    /// An optional string of the envelope (index into `optional`).
    Optional(usize, (u8, u8)),
    Payload,
}

/// What one event came to: its Avro bytes and id, or a reason to ask Python.
enum Outcome<'a> {
    Good { value: Vec<u8>, event_id: EventId<'a> },
    Python,
}

enum EventId<'a> {
    /// as sent (borrowed from the body unless it had escapes)
    Given(Cow<'a, str>),
    /// To be generated (uuid4), written first in the value: the value starts after it.
    Missing,
}

/// Validates customer events against the contract and the event policy, and writes the good
/// ones as Avro single-object messages. Built from the same schema and settings as the
/// Python validator and codec (`eventplatform/events/native.py`).
#[pyclass(frozen, module = "eventplatform_avro")]
pub struct EventEncoder {
    header: Vec<u8>,
    version: i64,
    top: Vec<Top>,
    optional: Vec<String>,
    allowed: Vec<String>,
    /// The place in `allowed` of the envelope fields `check` reads (None: not allowed, so
    /// never present in an event it takes), and of each of `optional`.
    at: Places,
    /// event_type -> the payload record
    types: HashMap<String, PayloadRecord>,
    max_string: usize,
    max_id: usize,
    max_age_ms: i64,
    max_future_ms: i64,
    max_cost: f64,
    max_epoch_ms: i64,
}

/// Where `check` finds a field: its place among the allowed names.
struct Places {
    event_type: Option<usize>,
    event_ts: Option<usize>,
    customer_id: Option<usize>,
    event_id: Option<usize>,
    source: Option<usize>,
    optional: Vec<Option<usize>>,
}

/// The most allowed envelope fields, or fields of a payload record, `check` places (on the
/// stack): a contract with more is left to the Python path whole.
const MAX_FIELDS: usize = 64;

struct Batch<'a> {
    values: Vec<Option<Vec<u8>>>,
    ids: Vec<Option<EventId<'a>>>,
    /// (index, start, end) of the events Python takes: the element's or the line's bytes
    python: Vec<(usize, usize, usize)>,
}

#[pymethods]
impl EventEncoder {
    /// `header`: marker and fingerprint; `schema`: the writer schema (parsed canonical form);
    /// `event_types`: event_type -> payload record full name; `allowed`: the envelope fields a
    /// sender may set; `optional`: the envelope's optional strings; then the validator's
    /// limits and the policy's window and cap.
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (header, schema, version, event_types, allowed, optional, max_string, max_id, max_age_ms, max_future_ms, max_cost, max_epoch_ms))]
    fn new(
        header: Vec<u8>,
        schema: &Bound<'_, PyDict>,
        version: i64,
        event_types: HashMap<String, String>,
        allowed: Vec<String>,
        optional: Vec<String>,
        max_string: usize,
        max_id: usize,
        max_age_ms: i64,
        max_future_ms: i64,
        max_cost: f64,
        max_epoch_ms: i64,
    ) -> PyResult<Self> {
        let unsupported = |what: String| PyValueError::new_err(format!("unsupported: {what}"));
        let namespace: String = match schema.get_item("namespace")? {
            Some(v) => v.extract()?,
            None => {
                let full = name_of(schema, "")?;
                full.rfind('.').map(|i| full[..i].to_string()).unwrap_or_default()
            }
        };
        let fields = schema
            .get_item("fields")?
            .ok_or_else(|| unsupported("a schema without fields".into()))?;
        let mut top = Vec::new();
        let mut records: HashMap<String, PayloadRecord> = HashMap::new();
        for field in fields.downcast::<PyList>()?.iter() {
            let field = field.downcast::<PyDict>()?.clone();
            let name: String = field.get_item("name")?.unwrap().extract()?;
            let ftype = field.get_item("type")?.unwrap();
            let simple = field_type(&ftype)?;
            let want = |kind: Kind| -> PyResult<()> {
                if simple.kind == kind && simple.optional.is_none() {
                    Ok(())
                } else {
                    Err(unsupported(format!("field {name} of another type")))
                }
            };
            let entry = match name.as_str() {
                "event_id" => want(Kind::String).map(|_| Top::EventId)?,
                "event_type" => want(Kind::String).map(|_| Top::EventType)?,
                "event_ts" => want(Kind::Long).map(|_| Top::EventTs)?,
                "received_ts" => want(Kind::Long).map(|_| Top::ReceivedTs)?,
                "customer_id" => want(Kind::String).map(|_| Top::CustomerId)?,
                "source" => want(Kind::String).map(|_| Top::Source)?,
                "schema_version" => want(Kind::Int).map(|_| Top::SchemaVersion)?,
                "payload" => {
                    let branches = ftype.downcast::<PyList>()?;
                    for (index, branch) in branches.iter().enumerate() {
                        let branch = branch.downcast::<PyDict>()?.clone();
                        let full = name_of(&branch, &namespace)?;
                        let mut rfields = Vec::new();
                        for f in branch.get_item("fields")?.unwrap().downcast::<PyList>()?.iter() {
                            let f = f.downcast::<PyDict>()?.clone();
                            let fname: String = f.get_item("name")?.unwrap().extract()?;
                            let ft = field_type(&f.get_item("type")?.unwrap())?;
                            if fname == "cost"
                                && !matches!(ft.kind, Kind::Double | Kind::Float | Kind::Long | Kind::Int)
                            {
                                return Err(unsupported("a cost that is not a number".into()));
                            }
                            rfields.push((fname, ft));
                        }
                        records.insert(
                            full,
                            PayloadRecord {
                                fields: rfields,
                                union_index: index as i64,
                            },
                        );
                    }
                    Top::Payload
                }
                other => match optional.iter().position(|o| o == other) {
                    Some(k) if simple.kind == Kind::String && simple.optional.is_some() => {
                        Top::Optional(k, simple.optional.unwrap())
                    }
                    _ => return Err(unsupported(format!("top-level field {other}"))),
                },
            };
            top.push(entry);
        }
        if !matches!(top.first(), Some(Top::EventId)) {
            return Err(unsupported("event_id must be the first field".into()));
        }
        let mut types = HashMap::new();
        for (event_type, record) in event_types {
            let r = records
                .remove(&record)
                .ok_or_else(|| unsupported(format!("record {record} not in the schema")))?;
            if r.fields.len() > MAX_FIELDS {
                return Err(unsupported(format!("record {record} of over {MAX_FIELDS} fields")));
            }
            types.insert(event_type, r);
        }
        if allowed.len() > MAX_FIELDS || optional.len() > MAX_FIELDS {
            return Err(unsupported(format!("an envelope of over {MAX_FIELDS} fields")));
        }
        let place = |name: &str| allowed.iter().position(|a| a == name);
        let at = Places {
            event_type: place("event_type"),
            event_ts: place("event_ts"),
            customer_id: place("customer_id"),
            event_id: place("event_id"),
            source: place("source"),
            optional: optional.iter().map(|name| place(name)).collect(),
        };
        Ok(EventEncoder {
            header,
            version,
            top,
            optional,
            allowed,
            at,
            types,
            max_string,
            max_id,
            max_age_ms,
            max_future_ms,
            max_cost,
            max_epoch_ms,
        })
    }

    /// Encodes a body's events. None when the body is left to Python whole (not UTF-8, not
    /// strict JSON, more than `max_events` events); else `(messages, event_ids, python,
    /// size)`: `messages` a dict `{"value", "key"}` per good event in order (ready for
    /// `produce_batch`), `event_ids` the good events' ids, `python` `(index, bytes)` of the
    /// events Python validates (their element or line as sent), `size` the values' bytes.
    #[pyo3(signature = (body, ndjson, customer, received_ms, default_source, max_events, max_event_bytes))]
    #[allow(clippy::too_many_arguments)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        body: &[u8],
        ndjson: bool,
        customer: &str,
        received_ms: i64,
        default_source: &str,
        max_events: usize,
        max_event_bytes: usize,
    ) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>, Bound<'py, PyList>, usize)>> {
        let read = || {
            if ndjson {
                self.lines(body, customer, received_ms, default_source, max_events, max_event_bytes)
            } else {
                self.array(body, customer, received_ms, default_source, max_events, max_event_bytes)
            }
        };
        // A large body (read in a worker thread) is parsed without the GIL, so the event loop
        // keeps answering meanwhile; a small one keeps it (a handoff costs more than it).
        let batch = if body.len() > RELEASE_GIL_BYTES {
            py.allow_threads(read)
        } else {
            read()
        };
        let batch = match batch {
            Some(b) => b,
            None => return Ok(None),
        };
        let missing = batch
            .ids
            .iter()
            .filter(|i| matches!(i, Some(EventId::Missing)))
            .count();
        // uuid.uuid4() is os.urandom(16) with the version bits set: the same source
        let random: Vec<u8> = if missing > 0 {
            py.import("os")?
                .getattr("urandom")?
                .call1((16 * missing,))?
                .extract()?
        } else {
            Vec::new()
        };
        let key = PyBytes::new(py, customer.as_bytes());
        // interned: a new str per message cost an allocation and its hash in every set_item
        let (value_key, key_key) = (pyo3::intern!(py, "value"), pyo3::intern!(py, "key"));
        let messages = PyList::empty(py);
        let ids = PyList::empty(py);
        let mut size = 0;
        let mut r = 0;
        for (value, id) in batch.values.into_iter().zip(batch.ids) {
            let (value, id) = match (value, id) {
                (Some(v), Some(id)) => (v, id),
                _ => continue,
            };
            let message = PyDict::new(py);
            let bytes = match id {
                EventId::Given(s) => {
                    ids.append(PyString::new(py, &s))?;
                    PyBytes::new(py, &value)
                }
                EventId::Missing => {
                    let id = uuid4(&random[16 * r..16 * r + 16]);
                    r += 1;
                    ids.append(PyString::new(py, &id))?;
                    // the header, the id, then the rest (value holds the header and the rest)
                    let mut full = Vec::with_capacity(value.len() + 40);
                    full.extend_from_slice(&value[..self.header.len()]);
                    put_string(&mut full, &id);
                    full.extend_from_slice(&value[self.header.len()..]);
                    if full.len() > max_event_bytes {
                        // cannot happen with sane limits (an id adds 37 bytes); be exact anyway
                        return Ok(None);
                    }
                    PyBytes::new(py, &full)
                }
            };
            size += bytes.as_bytes().len();
            message.set_item(&value_key, bytes)?;
            message.set_item(&key_key, &key)?;
            messages.append(message)?;
        }
        let python = PyList::empty(py);
        for (index, start, end) in batch.python {
            python.append((index, PyBytes::new(py, &body[start..end])))?;
        }
        Ok(Some((messages, ids, python, size)))
    }
}

fn uuid4(b: &[u8]) -> String {
    let mut u = [0u8; 16];
    u.copy_from_slice(b);
    u[6] = (u[6] & 0x0F) | 0x40;
    u[8] = (u[8] & 0x3F) | 0x80;
    let hex: Vec<String> = u.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// ASCII whitespace as Python's bytes methods and `\s` in a bytes regex see it.
fn py_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0B | 0x0C)
}

impl EventEncoder {
    fn array<'a>(
        &self,
        body: &'a [u8],
        customer: &str,
        received_ms: i64,
        source: &str,
        max_events: usize,
        max_event_bytes: usize,
    ) -> Option<Batch<'a>> {
        std::str::from_utf8(body).ok()?;
        let mut p = Parser { b: body, i: 0 };
        let mut batch = Batch {
            values: Vec::new(),
            ids: Vec::new(),
            python: Vec::new(),
        };
        p.ws();
        p.expect(b'[').ok()?;
        p.ws();
        if p.peek() == Some(b']') {
            p.i += 1;
        } else {
            loop {
                p.ws();
                if batch.values.len() == max_events {
                    return None;
                }
                let start = p.i;
                let outcome = self.event(&mut p, customer, received_ms, source, max_event_bytes);
                let outcome = outcome.ok()?;
                let index = batch.values.len();
                self.push(&mut batch, outcome, index, start, p.i);
                p.ws();
                match p.peek() {
                    Some(b',') => p.i += 1,
                    Some(b']') => {
                        p.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        p.ws();
        if p.i != body.len() {
            return None;
        }
        Some(batch)
    }

    /// NDJSON as `parse_body` cuts it: a line from its first non-blank byte to the newline,
    /// trailing blanks removed.
    fn lines<'a>(
        &self,
        body: &'a [u8],
        customer: &str,
        received_ms: i64,
        source: &str,
        max_events: usize,
        max_event_bytes: usize,
    ) -> Option<Batch<'a>> {
        let mut batch = Batch {
            values: Vec::new(),
            ids: Vec::new(),
            python: Vec::new(),
        };
        let mut i = 0;
        while i < body.len() {
            if py_space(body[i]) {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = body[start..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(body.len(), |k| start + k);
            i = end;
            while end > start && py_space(body[end - 1]) {
                end -= 1;
            }
            if batch.values.len() == max_events {
                return None;
            }
            let index = batch.values.len();
            let line = &body[start..end];
            let outcome = if line.len() > max_event_bytes || std::str::from_utf8(line).is_err() {
                Outcome::Python
            } else {
                let mut p = Parser { b: line, i: 0 };
                match self.event(&mut p, customer, received_ms, source, max_event_bytes) {
                    Ok(o) if p.i == line.len() => o,
                    _ => Outcome::Python,
                }
            };
            self.push(&mut batch, outcome, index, start, end);
        }
        Some(batch)
    }

    fn push<'a>(
        &self,
        batch: &mut Batch<'a>,
        outcome: Outcome<'a>,
        index: usize,
        start: usize,
        end: usize,
    ) {
        match outcome {
            Outcome::Good { value, event_id } => {
                batch.values.push(Some(value));
                batch.ids.push(Some(event_id));
            }
            Outcome::Python => {
                batch.values.push(None);
                batch.ids.push(None);
                batch.python.push((index, start, end));
            }
        }
    }

    /// One event (any JSON value, consumed whole): Err only when it is not valid JSON.
    fn event<'a>(
        &self,
        p: &mut Parser<'a>,
        customer: &str,
        received_ms: i64,
        default_source: &str,
        max_event_bytes: usize,
    ) -> Res<Outcome<'a>> {
        if p.peek() != Some(b'{') {
            p.value(0)?;
            return Ok(Outcome::Python);
        }
        let (members, payload, payload_twice) = p.members(1, Some("payload"))?;
        if payload_twice {
            return Ok(Outcome::Python);
        }
        Ok(self
            .check(&members, payload.as_deref(), customer, received_ms, default_source)
            .and_then(|(value, id)| {
                // the id is written later when generated; 37 bytes is the most it adds
                let extra = if matches!(id, EventId::Missing) { 37 } else { 0 };
                if value.len() + extra > max_event_bytes {
                    None // Python rejects it as too large, with its own words
                } else {
                    Some(Outcome::Good {
                        value,
                        event_id: id,
                    })
                }
            })
            .unwrap_or(Outcome::Python))
    }

    /// `EventValidator._good_event` and `EventCodec.encode` at once: the bytes of a certainly
    /// good event (without its id when it has to be generated), else None.
    fn check<'a>(
        &self,
        members: &[(Cow<'a, str>, Val<'a>)],
        payload: Option<&[(Cow<'a, str>, Val<'a>)]>,
        customer: &str,
        received_ms: i64,
        default_source: &str,
    ) -> Option<(Vec<u8>, EventId<'a>)> {
        // every key allowed, none twice (Python keeps the last of a duplicate: left to it):
        // each member put in its place among the allowed names, found once
        let mut slots: [Option<&Val<'a>>; MAX_FIELDS] = [None; MAX_FIELDS];
        for (key, value) in members {
            let at = self.allowed.iter().position(|a| a == key)?;
            if slots[at].replace(value).is_some() {
                return None;
            }
        }
        let get = |at: Option<usize>| at.and_then(|k| slots[k]);
        let event_type = match get(self.at.event_type) {
            Some(Val::Str(s)) => s.as_ref(),
            _ => return None,
        };
        let record = self.types.get(event_type)?;
        let payload = payload?;
        // the same for the payload's members among its record's fields
        let mut fields: [Option<&Val<'a>>; MAX_FIELDS] = [None; MAX_FIELDS];
        for (key, value) in payload {
            let at = record.fields.iter().position(|(name, _)| name == key)?;
            if fields[at].replace(value).is_some() {
                return None;
            }
        }
        let event_ts = match get(self.at.event_ts) {
            Some(Val::Int(n)) if (0..=self.max_epoch_ms).contains(n) => *n,
            Some(Val::Str(s)) => {
                let ms = iso_ms(s)?;
                if !(0..=self.max_epoch_ms).contains(&ms) {
                    return None;
                }
                ms
            }
            _ => return None,
        };
        let delta = event_ts - received_ms;
        if delta < -self.max_age_ms || delta > self.max_future_ms {
            return None;
        }
        match get(self.at.customer_id) {
            None | Some(Val::Null) => {}
            Some(Val::Str(s)) if s == customer => {}
            _ => return None,
        }
        let event_id = match get(self.at.event_id) {
            None | Some(Val::Null) => EventId::Missing,
            Some(Val::Str(s)) if (1..=self.max_id).contains(&chars(s)) => {
                EventId::Given(s.clone())
            }
            _ => return None,
        };
        let source = match get(self.at.source) {
            None => default_source,
            Some(Val::Str(s)) => s.as_ref(),
            _ => return None,
        };
        if !(1..=self.max_id).contains(&chars(source)) {
            return None;
        }
        let mut optional: [Option<&str>; MAX_FIELDS] = [None; MAX_FIELDS];
        for (k, at) in self.at.optional.iter().enumerate() {
            optional[k] = match get(*at) {
                None | Some(Val::Null) => None,
                Some(Val::Str(s)) if chars(s) <= self.max_string => Some(s.as_ref()),
                _ => return None,
            };
        }
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(&self.header);
        for entry in &self.top {
            match entry {
                Top::EventId => {
                    if let EventId::Given(s) = &event_id {
                        put_string(&mut out, s);
                    }
                }
                Top::EventType => put_string(&mut out, event_type),
                Top::EventTs => put_long(&mut out, event_ts),
                Top::ReceivedTs => put_long(&mut out, received_ms),
                Top::CustomerId => put_string(&mut out, customer),
                Top::Source => put_string(&mut out, source),
                Top::SchemaVersion => put_long(&mut out, self.version),
                Top::Optional(k, (null_tag, tag)) => match optional[*k] {
                    None => out.push(*null_tag),
                    Some(s) => {
                        out.push(*tag);
                        put_string(&mut out, s);
                    }
                },
                Top::Payload => {
                    put_long(&mut out, record.union_index);
                    for ((name, ft), value) in record.fields.iter().zip(fields) {
                        self.field(&mut out, name, *ft, value)?;
                    }
                }
            }
        }
        Some((out, event_id))
    }

    /// One payload field: checked as `_good_event` checks it, written as the codec writes it.
    fn field(&self, out: &mut Vec<u8>, name: &str, ft: FieldType, value: Option<&Val<'_>>) -> Option<()> {
        let value = match value {
            None | Some(Val::Null) => {
                let (null_tag, _) = ft.optional?; // a required field missing: Python words it
                out.push(null_tag);
                return Some(());
            }
            Some(v) => v,
        };
        if let Some((_, tag)) = ft.optional {
            out.push(tag);
        }
        match (ft.kind, value) {
            (Kind::String, Val::Str(s)) if chars(s) <= self.max_string => put_string(out, s),
            (Kind::Double | Kind::Float, Val::Int(_) | Val::Float(_)) => {
                let f = match value {
                    Val::Int(n) => *n as f64, // Python's float(int): round to nearest, even
                    Val::Float(f) if f.is_finite() => *f,
                    _ => return None,
                };
                if name == "cost" && !(0.0 <= f && f <= self.max_cost) {
                    return None;
                }
                if ft.kind == Kind::Double {
                    out.extend_from_slice(&f.to_le_bytes());
                } else {
                    let g = f as f32;
                    if g.is_infinite() {
                        return None; // struct.pack("<f") overflows: Python's to say
                    }
                    out.extend_from_slice(&g.to_le_bytes());
                }
            }
            (Kind::Long, Val::Int(n)) => {
                if name == "cost" && !(0.0 <= *n as f64 && *n as f64 <= self.max_cost) {
                    return None;
                }
                put_long(out, *n)
            }
            (Kind::Int, Val::Int(n)) if (-(1i64 << 31)..(1i64 << 31)).contains(n) => {
                if name == "cost" && !(0.0 <= *n as f64 && *n as f64 <= self.max_cost) {
                    return None;
                }
                put_long(out, *n)
            }
            (Kind::Boolean, Val::Bool(b)) => out.push(*b as u8),
            _ => return None,
        }
        Some(())
    }
}
