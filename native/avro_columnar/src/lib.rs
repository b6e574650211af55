//! Avro single-object messages (`C3 01`, 8-byte CRC-64-AVRO fingerprint, Avro binary body)
//! decoded straight into Arrow column buffers, without a Python object per message.
//!
//! Beside it: the collector's JSON to Avro fast path (`intake.rs`), its delivery tally
//! (`delivery.rs`), and the sessions mart's grouping (`sessions.rs`, `sessions_of_day`).
//!
//! The decoder is generic over the schema: it is given the writer schemas by fingerprint (as
//! parsed JSON) and a column plan (names and types). Each writer schema is compiled once into
//! a tree of decode operations whose leaves write into the column of the same name; record
//! fields (directly or inside a union, like the event payload) are flattened into the same
//! column namespace, so a payload field lands in the column named after it and a column no
//! field fills stays null. Decoding follows fastavro's reader exactly where bytes are odd
//! (varints longer than ten bytes, negative union indexes, non-0/1 booleans), so the good
//! messages and the error reasons are the same as the Python codec's.

use std::collections::HashMap;
use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString};

mod delivery;
mod intake;
mod sessions;

const MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;
/// Offsets of a string column are int32 (Arrow `string`): a batch stops before it overflows.
const MAX_STRING_BYTES: usize = i32::MAX as usize;

// ---------------------------------------------------------------------------------------------
// Schemas

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prim {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
}

impl Prim {
    fn from_name(name: &str) -> Option<Prim> {
        Some(match name {
            "null" => Prim::Null,
            "boolean" => Prim::Boolean,
            "int" => Prim::Int,
            "long" => Prim::Long,
            "float" => Prim::Float,
            "double" => Prim::Double,
            "bytes" => Prim::Bytes,
            "string" => Prim::String,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Prim::Null => "null",
            Prim::Boolean => "boolean",
            Prim::Int => "int",
            Prim::Long => "long",
            Prim::Float => "float",
            Prim::Double => "double",
            Prim::Bytes => "bytes",
            Prim::String => "string",
        }
    }
}

#[derive(Clone, Debug)]
enum Schema {
    Prim(Prim),
    Record {
        name: String,
        fields: Vec<(String, Schema)>,
    },
    Union(Vec<Schema>),
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

struct SchemaParser {
    named: HashMap<String, Schema>,
}

impl SchemaParser {
    fn parse(&mut self, node: &Bound<'_, PyAny>, namespace: &str) -> PyResult<Schema> {
        if let Ok(s) = node.downcast::<PyString>() {
            let name = s.to_str()?;
            if let Some(p) = Prim::from_name(name) {
                return Ok(Schema::Prim(p));
            }
            let candidates = [full_name(name, namespace), name.to_string()];
            for candidate in candidates.iter() {
                if let Some(found) = self.named.get(candidate) {
                    return Ok(found.clone());
                }
            }
            return Err(PyValueError::new_err(format!(
                "unknown or unsupported (recursive?) type {name:?}"
            )));
        }
        if let Ok(list) = node.downcast::<PyList>() {
            let mut branches = Vec::with_capacity(list.len());
            for item in list.iter() {
                branches.push(self.parse(&item, namespace)?);
            }
            return Ok(Schema::Union(branches));
        }
        if let Ok(dict) = node.downcast::<PyDict>() {
            let type_obj = dict
                .get_item("type")?
                .ok_or_else(|| PyValueError::new_err("schema object without \"type\""))?;
            let type_name: String = match type_obj.downcast::<PyString>() {
                Ok(s) => s.to_str()?.to_string(),
                // {"type": {...}} or {"type": [...]}: the inner schema
                Err(_) => return self.parse(&type_obj, namespace),
            };
            if type_name == "record" || type_name == "error" {
                let name: String = dict
                    .get_item("name")?
                    .ok_or_else(|| PyValueError::new_err("record without a name"))?
                    .extract()?;
                let ns: String = match dict.get_item("namespace")? {
                    Some(v) if !v.is_none() => v.extract()?,
                    _ => match name.rfind('.') {
                        Some(i) => name[..i].to_string(),
                        None => namespace.to_string(),
                    },
                };
                let fullname = full_name(&name, &ns);
                let record_ns = match fullname.rfind('.') {
                    Some(i) => fullname[..i].to_string(),
                    None => String::new(),
                };
                let fields_obj = dict
                    .get_item("fields")?
                    .ok_or_else(|| PyValueError::new_err("record without fields"))?;
                let fields_list = fields_obj.downcast::<PyList>()?;
                let mut fields = Vec::with_capacity(fields_list.len());
                for field in fields_list.iter() {
                    let field = field.downcast::<PyDict>()?;
                    let fname: String = field
                        .get_item("name")?
                        .ok_or_else(|| PyValueError::new_err("field without a name"))?
                        .extract()?;
                    let ftype = field
                        .get_item("type")?
                        .ok_or_else(|| PyValueError::new_err("field without a type"))?;
                    fields.push((fname, self.parse(&ftype, &record_ns)?));
                }
                let schema = Schema::Record {
                    name: fullname.clone(),
                    fields,
                };
                self.named.insert(fullname, schema.clone());
                return Ok(schema);
            }
            if let Some(p) = Prim::from_name(&type_name) {
                return Ok(Schema::Prim(p)); // logical types keep their underlying encoding
            }
            if matches!(type_name.as_str(), "enum" | "fixed" | "array" | "map") {
                return Err(PyValueError::new_err(format!(
                    "Avro type {type_name} is not supported by the columnar decoder"
                )));
            }
            return self.parse(&type_obj, namespace);
        }
        Err(PyTypeError::new_err("a schema is a str, a list or a dict"))
    }
}

// ---------------------------------------------------------------------------------------------
// Column plan and compiled decode operations

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ColType {
    Utf8,
    I32,
    I64,
    F32,
    F64,
    Bool,
}

impl ColType {
    fn from_name(name: &str) -> PyResult<ColType> {
        Ok(match name {
            "string" => ColType::Utf8,
            "int32" => ColType::I32,
            "int64" => ColType::I64,
            "float32" => ColType::F32,
            "float64" => ColType::F64,
            "bool" => ColType::Bool,
            _ => {
                return Err(PyValueError::new_err(format!(
                    "column type {name:?} is not one of string, int32, int64, float32, \
                     float64, bool"
                )))
            }
        })
    }
}

/// Where a primitive value goes: a column (with a conversion) or nowhere (read and dropped).
#[derive(Clone, Copy, Debug)]
struct Target {
    col: Option<usize>,
    ty: ColType,  // meaningful only with a column
    field: usize, // index into the field path names, for error details
}

#[derive(Debug)]
enum Op {
    Null,
    Prim {
        prim: Prim,
        target: Target,
        tag: bool,
    },
    Record(Vec<Op>),
    /// `tagged`: the branch taken names the record whose tag (event_type) the row must carry.
    Union {
        branches: Vec<Op>,
        records: Vec<Option<usize>>,
        tagged: bool,
        field: usize,
    },
}

struct Compiled {
    root: Op,
    field_names: Vec<String>,
    record_names: Vec<String>,
    /// expected tag value per record name index (None: the record is unknown to the tag map)
    record_tags: Vec<Option<Vec<u8>>>,
}

struct Compiler<'a> {
    columns: &'a HashMap<String, usize>,
    col_types: &'a [ColType],
    tag_field: Option<&'a str>,
    tags: &'a HashMap<String, String>,
    field_names: Vec<String>,
    record_names: Vec<String>,
    record_tags: Vec<Option<Vec<u8>>>,
    /// which columns a top-level field fills, and which a flattened record field fills
    top_level_cols: Vec<usize>,
    flattened_cols: Vec<usize>,
}

fn compatible(prim: Prim, ty: ColType) -> bool {
    matches!(
        (prim, ty),
        (Prim::Null, _)
            | (Prim::String, ColType::Utf8)
            | (
                Prim::Int,
                ColType::I32 | ColType::I64 | ColType::F32 | ColType::F64
            )
            | (Prim::Long, ColType::I64 | ColType::F32 | ColType::F64)
            | (Prim::Float, ColType::F32 | ColType::F64)
            | (Prim::Double, ColType::F64)
            | (Prim::Boolean, ColType::Bool)
    )
}

impl<'a> Compiler<'a> {
    /// A field of a record at `depth` (0: the top-level record; more: flattened records).
    fn field(&mut self, name: &str, path: &str, schema: &Schema, depth: usize) -> PyResult<Op> {
        let field_id = self.field_names.len();
        self.field_names.push(path.to_string());
        let tagged = depth == 0 && self.tag_field.is_some();
        let is_tag = depth == 0 && self.tag_field == Some(name);
        self.value(name, path, schema, depth, field_id, tagged, is_tag)
    }

    #[allow(clippy::too_many_arguments)]
    fn value(
        &mut self,
        name: &str,
        path: &str,
        schema: &Schema,
        depth: usize,
        field_id: usize,
        tagged: bool,
        is_tag: bool,
    ) -> PyResult<Op> {
        match schema {
            Schema::Prim(Prim::Null) => Ok(Op::Null),
            Schema::Prim(prim) => {
                if is_tag && *prim != Prim::String {
                    return Err(PyValueError::new_err(format!(
                        "tag field {path} must be a string, is {}",
                        prim.name()
                    )));
                }
                let col = self.columns.get(name).copied();
                let ty = match col {
                    Some(c) => {
                        let ty = self.col_types[c];
                        if !compatible(*prim, ty) {
                            return Err(PyValueError::new_err(format!(
                                "field {path}: Avro {} cannot fill column {name} of type {ty:?}",
                                prim.name()
                            )));
                        }
                        if depth == 0 {
                            self.top_level_cols.push(c);
                        } else {
                            self.flattened_cols.push(c);
                        }
                        ty
                    }
                    None => ColType::Utf8,
                };
                Ok(Op::Prim {
                    prim: *prim,
                    target: Target {
                        col,
                        ty,
                        field: field_id,
                    },
                    tag: is_tag,
                })
            }
            Schema::Union(branches) => {
                let mut ops = Vec::with_capacity(branches.len());
                let mut records = Vec::with_capacity(branches.len());
                for b in branches {
                    if let Schema::Record { name: rname, .. } = b {
                        records.push(Some(self.record_name(rname)));
                    } else {
                        records.push(None);
                    }
                    ops.push(self.value(name, path, b, depth, field_id, false, is_tag)?);
                }
                let tagged = tagged && records.iter().any(Option::is_some);
                Ok(Op::Union {
                    branches: ops,
                    records,
                    tagged,
                    field: field_id,
                })
            }
            Schema::Record { fields, .. } => {
                let mut ops = Vec::with_capacity(fields.len());
                for (fname, fschema) in fields {
                    let fpath = format!("{path}.{fname}");
                    ops.push(self.field(fname, &fpath, fschema, depth + 1)?);
                }
                Ok(Op::Record(ops))
            }
        }
    }

    fn record_name(&mut self, name: &str) -> usize {
        if let Some(i) = self.record_names.iter().position(|n| n == name) {
            return i;
        }
        self.record_names.push(name.to_string());
        self.record_tags
            .push(self.tags.get(name).map(|t| t.as_bytes().to_vec()));
        self.record_names.len() - 1
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

#[derive(Debug)]
enum BodyError {
    Truncated(String),
    Corrupt(String),
    TagMismatch { tag: String, record: String },
}

#[derive(Clone, Copy)]
enum Slot {
    Null,
    Str(usize, usize),
    Int(i64),
    Float(f64),
    Bool(bool),
}

struct Row {
    slots: Vec<Slot>,
    tag: Option<(usize, usize)>,
    record: Option<usize>,
}

struct Reader<'m> {
    buf: &'m [u8],
    pos: usize,
}

impl<'m> Reader<'m> {
    /// fastavro's read_long: EOF at the first byte is EOFError (truncated), EOF inside the
    /// varint an IndexError (corrupt); bits past 64 wrap like the C shift on x86-64.
    #[inline]
    fn long(&mut self, field: &str) -> Result<i64, BodyError> {
        let first = match self.buf.get(self.pos) {
            Some(&b) => b,
            None => {
                return Err(BodyError::Truncated(format!(
                    "body ends before {field} (at byte {})",
                    self.pos + HEADER_LEN
                )))
            }
        };
        self.pos += 1;
        let mut b = first as u64;
        let mut n = b & 0x7F;
        let mut shift: u32 = 7;
        while b & 0x80 != 0 {
            let next = match self.buf.get(self.pos) {
                Some(&b) => b,
                None => {
                    return Err(BodyError::Corrupt(format!(
                        "varint of {field} runs past the end of the message"
                    )))
                }
            };
            self.pos += 1;
            b = next as u64;
            n |= (b & 0x7F).wrapping_shl(shift);
            shift = shift.wrapping_add(7);
        }
        Ok(((n >> 1) ^ (n & 1).wrapping_neg()) as i64)
    }

    #[inline]
    fn fixed(&mut self, size: usize, what: &str, field: &str) -> Result<&'m [u8], BodyError> {
        if self.buf.len() - self.pos < size {
            return Err(BodyError::Truncated(format!(
                "body ends inside {what} {field} (at byte {})",
                self.pos + HEADER_LEN
            )));
        }
        let out = &self.buf[self.pos..self.pos + size];
        self.pos += size;
        Ok(out)
    }

    #[inline]
    fn sized(&mut self, field: &str) -> Result<(usize, usize), BodyError> {
        let size = self.long(field)?;
        let left = self.buf.len() - self.pos;
        if size < 0 || size as u64 > left as u64 {
            return Err(BodyError::Truncated(format!(
                "{field} says {size} bytes, {left} left (at byte {})",
                self.pos + HEADER_LEN
            )));
        }
        let start = self.pos;
        self.pos += size as usize;
        Ok((start, size as usize))
    }
}

struct Decode<'c, 'm> {
    c: &'c Compiled,
    r: Reader<'m>,
    row: &'c mut Row,
}

impl<'c, 'm> Decode<'c, 'm> {
    fn run(&mut self, op: &Op) -> Result<(), BodyError> {
        match op {
            Op::Null => Ok(()),
            Op::Record(fields) => {
                for f in fields {
                    self.run(f)?;
                }
                Ok(())
            }
            Op::Union {
                branches,
                records,
                tagged,
                field,
            } => {
                let name = &self.c.field_names[*field];
                let index = self.r.long(name)?;
                let n = branches.len() as i64;
                // fastavro indexes a Python list: -1 is the last branch
                let i = if index < 0 { index + n } else { index };
                if i < 0 || i >= n {
                    return Err(BodyError::Corrupt(format!(
                        "union index {index} of {name} is out of range ({n} branches)"
                    )));
                }
                let i = i as usize;
                if *tagged {
                    self.row.record = records[i];
                }
                self.run(&branches[i])
            }
            Op::Prim { prim, target, tag } => self.prim(*prim, target, *tag),
        }
    }

    #[inline]
    fn prim(&mut self, prim: Prim, target: &Target, tag: bool) -> Result<(), BodyError> {
        let name = &self.c.field_names[target.field];
        let slot = match prim {
            Prim::Null => return Ok(()),
            Prim::Boolean => Slot::Bool(self.r.fixed(1, "boolean", name)?[0] != 0),
            Prim::Int | Prim::Long => {
                let v = self.r.long(name)?;
                match target.ty {
                    ColType::I32 if target.col.is_some() => {
                        if v < i32::MIN as i64 || v > i32::MAX as i64 {
                            return Err(BodyError::Corrupt(format!(
                                "{name} is {v}, out of the 32-bit int range"
                            )));
                        }
                        Slot::Int(v)
                    }
                    ColType::F32 | ColType::F64 => Slot::Float(v as f64),
                    _ => Slot::Int(v),
                }
            }
            Prim::Float => {
                let b = self.r.fixed(4, "float", name)?;
                Slot::Float(f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            }
            Prim::Double => {
                let b = self.r.fixed(8, "double", name)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                Slot::Float(f64::from_le_bytes(a))
            }
            Prim::Bytes => {
                self.r.sized(name)?;
                Slot::Null
            }
            Prim::String => {
                let (start, len) = self.r.sized(name)?;
                if let Err(e) = std::str::from_utf8(&self.r.buf[start..start + len]) {
                    return Err(BodyError::Corrupt(format!(
                        "{name} is not UTF-8 ({e}, at byte {})",
                        start + HEADER_LEN
                    )));
                }
                if tag {
                    self.row.tag = Some((start, len));
                }
                Slot::Str(start, len)
            }
        };
        if let Some(col) = target.col {
            self.row.slots[col] = slot;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Column builders

struct Column {
    ty: ColType,
    len: usize,
    null_count: usize,
    validity: Vec<u8>,
    offsets: Vec<u8>,
    data: Vec<u8>,
}

fn push_bit(bits: &mut Vec<u8>, i: usize, on: bool) {
    if i % 8 == 0 {
        bits.push(0);
    }
    if on {
        *bits.last_mut().unwrap() |= 1 << (i % 8);
    }
}

impl Column {
    fn new(ty: ColType, capacity: usize) -> Column {
        let width = match ty {
            ColType::Utf8 => 16,
            ColType::I32 | ColType::F32 => 4,
            ColType::I64 | ColType::F64 => 8,
            ColType::Bool => 0,
        };
        let mut offsets = Vec::new();
        if ty == ColType::Utf8 {
            offsets.reserve((capacity + 1) * 4);
            offsets.extend_from_slice(&0i32.to_le_bytes());
        }
        Column {
            ty,
            len: 0,
            null_count: 0,
            validity: Vec::with_capacity(capacity / 8 + 1),
            offsets,
            data: Vec::with_capacity(capacity * width + capacity / 8 + 1),
        }
    }

    #[inline]
    fn push(&mut self, slot: Slot, msg: &[u8]) {
        let i = self.len;
        let valid = !matches!(slot, Slot::Null);
        push_bit(&mut self.validity, i, valid);
        if !valid {
            self.null_count += 1;
        }
        match self.ty {
            ColType::Utf8 => {
                if let Slot::Str(start, len) = slot {
                    self.data.extend_from_slice(&msg[start..start + len]);
                }
                self.offsets
                    .extend_from_slice(&(self.data.len() as i32).to_le_bytes());
            }
            ColType::I32 => {
                let v = if let Slot::Int(v) = slot { v as i32 } else { 0 };
                self.data.extend_from_slice(&v.to_le_bytes());
            }
            ColType::I64 => {
                let v = if let Slot::Int(v) = slot { v } else { 0 };
                self.data.extend_from_slice(&v.to_le_bytes());
            }
            ColType::F32 => {
                let v = if let Slot::Float(v) = slot {
                    v as f32
                } else {
                    0.0
                };
                self.data.extend_from_slice(&v.to_le_bytes());
            }
            ColType::F64 => {
                let v = if let Slot::Float(v) = slot { v } else { 0.0 };
                self.data.extend_from_slice(&v.to_le_bytes());
            }
            ColType::Bool => {
                let v = matches!(slot, Slot::Bool(true));
                push_bit(&mut self.data, i, v);
            }
        }
        self.len += 1;
    }
}

// ---------------------------------------------------------------------------------------------
// The Python classes

/// One output buffer, handed to Python without a copy: read-only, through the buffer
/// protocol (`pyarrow.py_buffer(b)` wraps it and keeps it alive).
#[pyclass(frozen, module = "eventplatform_avro")]
struct Buffer {
    data: Vec<u8>,
}

#[pymethods]
impl Buffer {
    /// # Safety
    /// `view` is a Py_buffer the interpreter hands in; the bytes stay valid and unchanged
    /// while the view holds a reference to this (frozen) object.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE {
            return Err(PyBufferError::new_err("the buffer is read-only"));
        }
        let data = &slf.get().data;
        let filled = ffi::PyBuffer_FillInfo(
            view,
            slf.as_ptr(),
            data.as_ptr() as *mut c_void,
            data.len() as ffi::Py_ssize_t,
            1,
            flags,
        );
        if filled == -1 {
            return Err(PyErr::fetch(slf.py()));
        }
        Ok(())
    }

    fn __len__(&self) -> usize {
        self.data.len()
    }
}

fn buffer(py: Python<'_>, data: Vec<u8>) -> PyResult<Py<Buffer>> {
    Py::new(py, Buffer { data })
}

/// Decodes lists of single-object encoded messages into Arrow column buffers.
///
/// `writers`: (8-byte fingerprint, schema as parsed JSON) per known writer schema.
/// `columns`: (name, type) in output order; types are string, int32, int64, float32, float64,
/// bool. `tag_field` and `tags` (record full name -> tag value): the top-level string field
/// that must name the record a top-level union of records holds (event_type and payload).
/// `max_string_bytes` (at most and by default 2 GiB - 1, for tests smaller): a string column
/// of one call stays below it; `decode` stops there and says where to go on.
#[pyclass(frozen, module = "eventplatform_avro")]
struct Decoder {
    writers: HashMap<[u8; 8], Compiled>,
    col_types: Vec<ColType>,
    max_string_bytes: usize,
}

struct Message {
    ptr: *const u8,
    len: usize,
}

/// Raw views of the bytes objects, which `decode` keeps alive (and bytes are immutable) while
/// it runs without the GIL.
struct Messages(Vec<Option<Message>>);
unsafe impl Send for Messages {}

enum Failure {
    Header,
    Body(BodyError),
}

struct Output {
    consumed: usize,
    rows: usize,
    columns: Vec<Column>,
    errors: Vec<(usize, Failure)>,
}

type ErrorTuple = (usize, &'static str, String, Option<String>, Option<String>);
type ColumnTuple = (Option<Py<Buffer>>, Option<Py<Buffer>>, Py<Buffer>, usize);

#[pymethods]
impl Decoder {
    #[new]
    #[pyo3(signature = (writers, columns, tag_field=None, tags=None, max_string_bytes=None))]
    fn new(
        writers: Vec<(Vec<u8>, Bound<'_, PyAny>)>,
        columns: Vec<(String, String)>,
        tag_field: Option<String>,
        tags: Option<HashMap<String, String>>,
        max_string_bytes: Option<usize>,
    ) -> PyResult<Self> {
        let max_string_bytes = max_string_bytes
            .unwrap_or(MAX_STRING_BYTES)
            .min(MAX_STRING_BYTES);
        let tags = tags.unwrap_or_default();
        let mut by_name = HashMap::new();
        let mut col_types = Vec::with_capacity(columns.len());
        for (i, (name, ty)) in columns.iter().enumerate() {
            if by_name.insert(name.clone(), i).is_some() {
                return Err(PyValueError::new_err(format!(
                    "column {name} appears twice"
                )));
            }
            col_types.push(ColType::from_name(ty)?);
        }
        let mut compiled = HashMap::new();
        for (fingerprint, schema) in writers {
            let fp: [u8; 8] = fingerprint
                .as_slice()
                .try_into()
                .map_err(|_| PyValueError::new_err("a fingerprint is 8 bytes"))?;
            let mut parser = SchemaParser {
                named: HashMap::new(),
            };
            let parsed = parser.parse(&schema, "")?;
            let fields = match &parsed {
                Schema::Record { fields, .. } => fields,
                _ => return Err(PyValueError::new_err("a writer schema must be a record")),
            };
            let mut compiler = Compiler {
                columns: &by_name,
                col_types: &col_types,
                tag_field: tag_field.as_deref(),
                tags: &tags,
                field_names: Vec::new(),
                record_names: Vec::new(),
                record_tags: Vec::new(),
                top_level_cols: Vec::new(),
                flattened_cols: Vec::new(),
            };
            let mut ops = Vec::with_capacity(fields.len());
            for (name, fschema) in fields {
                ops.push(compiler.field(name, name, fschema, 0)?);
            }
            if let Some(c) = compiler
                .flattened_cols
                .iter()
                .find(|c| compiler.top_level_cols.contains(c))
            {
                return Err(PyValueError::new_err(format!(
                    "column {} is filled both by a top-level field and a nested record field",
                    columns[*c].0
                )));
            }
            compiled.insert(
                fp,
                Compiled {
                    root: Op::Record(ops),
                    field_names: compiler.field_names,
                    record_names: compiler.record_names,
                    record_tags: compiler.record_tags,
                },
            );
        }
        Ok(Decoder {
            writers: compiled,
            col_types,
            max_string_bytes,
        })
    }

    /// Decodes `values[start:]` (bytes or None) and returns
    /// `(next_start, rows, columns, errors)`: `next_start` is `len(values)` unless a string
    /// column reached 2 GiB (call again from there); `columns` holds per column
    /// `(validity or None, offsets or None, data, null_count)`, the buffers as read-only
    /// `Buffer` objects; `errors` holds `(index, reason, detail, tag, record)`, reason
    /// `header` for messages whose first ten bytes are wrong (the caller words those), and
    /// `tag`/`record` set when the tag does not match the payload record.
    #[pyo3(signature = (values, start=0))]
    fn decode(
        &self,
        py: Python<'_>,
        values: &Bound<'_, PyList>,
        start: usize,
    ) -> PyResult<(usize, usize, Vec<ColumnTuple>, Vec<ErrorTuple>)> {
        let total = values.len();
        let start = start.min(total);
        let mut keep: Vec<Bound<'_, PyAny>> = Vec::with_capacity(total - start);
        let mut msgs = Vec::with_capacity(total - start);
        for i in start..total {
            let item = values.get_item(i)?;
            if item.is_none() {
                msgs.push(None);
                continue;
            }
            let bytes = if let Ok(b) = item.downcast::<PyBytes>() {
                b.clone()
            } else if item.is_instance_of::<PyByteArray>() || item.is_instance_of::<PyMemoryView>()
            {
                py.get_type::<PyBytes>()
                    .call1((&item,))?
                    .downcast_into::<PyBytes>()?
            } else {
                msgs.push(None); // not bytes: a header error, worded by the caller
                continue;
            };
            let slice = bytes.as_bytes();
            msgs.push(Some(Message {
                ptr: slice.as_ptr(),
                len: slice.len(),
            }));
            keep.push(bytes.into_any());
        }
        let msgs = Messages(msgs);
        let out = py.allow_threads(move || self.decode_raw(msgs, start));
        drop(keep);

        let rows = out.rows;
        let mut columns = Vec::with_capacity(out.columns.len());
        for col in out.columns {
            let validity = if col.null_count > 0 {
                Some(buffer(py, col.validity)?)
            } else {
                None
            };
            let offsets = if col.ty == ColType::Utf8 {
                Some(buffer(py, col.offsets)?)
            } else {
                None
            };
            columns.push((validity, offsets, buffer(py, col.data)?, col.null_count));
        }
        let errors = out
            .errors
            .into_iter()
            .map(|(i, f)| match f {
                Failure::Header => (i, "header", String::new(), None, None),
                Failure::Body(BodyError::Truncated(d)) => (i, "truncated", d, None, None),
                Failure::Body(BodyError::Corrupt(d)) => (i, "corrupt_body", d, None, None),
                Failure::Body(BodyError::TagMismatch { tag, record }) => {
                    (i, "corrupt_body", String::new(), Some(tag), Some(record))
                }
            })
            .collect();
        Ok((out.consumed, rows, columns, errors))
    }

    /// The fingerprints this decoder knows.
    fn fingerprints<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.writers.keys().map(|k| PyBytes::new(py, k)).collect()
    }
}

impl Decoder {
    fn decode_raw(&self, msgs: Messages, start: usize) -> Output {
        let n = msgs.0.len();
        let mut columns: Vec<Column> = self.col_types.iter().map(|t| Column::new(*t, n)).collect();
        let mut errors = Vec::new();
        let mut row = Row {
            slots: vec![Slot::Null; self.col_types.len()],
            tag: None,
            record: None,
        };
        let mut consumed = start + n;
        let mut rows = 0;
        for (k, m) in msgs.0.iter().enumerate() {
            let index = start + k;
            let m = match m {
                Some(m) => m,
                None => {
                    errors.push((index, Failure::Header));
                    continue;
                }
            };
            // SAFETY: the bytes object outlives this call (see `decode`) and is immutable.
            let msg: &[u8] = unsafe { std::slice::from_raw_parts(m.ptr, m.len) };
            if msg.len() < HEADER_LEN || msg[..2] != MARKER {
                errors.push((index, Failure::Header));
                continue;
            }
            let mut fp = [0u8; 8];
            fp.copy_from_slice(&msg[2..HEADER_LEN]);
            let compiled = match self.writers.get(&fp) {
                Some(c) => c,
                None => {
                    errors.push((index, Failure::Header));
                    continue;
                }
            };
            if msg.len() > self.max_string_bytes {
                let detail = format!("message of {} bytes is too large", msg.len());
                errors.push((index, Failure::Body(BodyError::Corrupt(detail))));
                continue;
            }
            if columns
                .iter()
                .any(|c| c.ty == ColType::Utf8 && c.data.len() + msg.len() > self.max_string_bytes)
            {
                consumed = index; // the caller goes on from here with fresh columns
                break;
            }
            let body = &msg[HEADER_LEN..];
            for s in row.slots.iter_mut() {
                *s = Slot::Null;
            }
            row.tag = None;
            row.record = None;
            let result = guarded(|| {
                let mut d = Decode {
                    c: compiled,
                    r: Reader { buf: body, pos: 0 },
                    row: &mut row,
                };
                d.run(&compiled.root)?;
                let pos = d.r.pos;
                if pos != body.len() {
                    return Err(BodyError::Corrupt(format!(
                        "{} trailing bytes after the event",
                        body.len() - pos
                    )));
                }
                if let Some(rec) = row.record {
                    let tag: &[u8] = match row.tag {
                        Some((s, l)) => &body[s..s + l],
                        None => &[],
                    };
                    if compiled.record_tags[rec].as_deref() != Some(tag) {
                        return Err(BodyError::TagMismatch {
                            tag: String::from_utf8_lossy(tag).into_owned(),
                            record: compiled.record_names[rec].clone(),
                        });
                    }
                }
                Ok(())
            });
            match result {
                Ok(()) => {
                    for (col, slot) in columns.iter_mut().zip(row.slots.iter()) {
                        col.push(*slot, body);
                    }
                    rows += 1;
                }
                Err(e) => errors.push((index, Failure::Body(e))),
            }
        }
        Output {
            consumed,
            rows,
            columns,
            errors,
        }
    }
}

/// Runs the decoding of one message; a panic (a bug, never expected) becomes a corrupt_body
/// error for that message instead of an exception for the whole batch.
fn guarded<F: FnOnce() -> Result<(), BodyError>>(f: F) -> Result<(), BodyError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(_) => Err(BodyError::Corrupt(
            "the decoder panicked on this message".into(),
        )),
    }
}

/// For the tests: what `guarded` makes of a panic in this build (it needs panic=unwind).
#[pyfunction]
fn _panic_probe() -> String {
    match guarded(|| panic!("probe: a panic while decoding")) {
        Err(BodyError::Corrupt(detail)) => detail,
        other => format!("unexpected: {other:?}"),
    }
}

/// A borrowed view of a Python buffer (a pyarrow buffer, a numpy array) as `T`s: the caller
/// keeps the `PyBuffer` alive while the slice is used.
fn slice_of<'a, T>(buf: &'a PyBuffer<u8>, what: &str, at_least: usize) -> PyResult<&'a [T]> {
    let (ptr, bytes) = (buf.buf_ptr(), buf.len_bytes());
    let size = std::mem::size_of::<T>();
    if !buf.is_c_contiguous() || (ptr as usize) % std::mem::align_of::<T>() != 0 {
        return Err(PyValueError::new_err(format!(
            "{what}: not a contiguous, aligned buffer"
        )));
    }
    if bytes / size < at_least {
        return Err(PyValueError::new_err(format!(
            "{what}: {} items, {at_least} needed",
            bytes / size
        )));
    }
    // SAFETY: contiguous, aligned, long enough, and kept alive by the caller's PyBuffer.
    Ok(unsafe { std::slice::from_raw_parts(ptr as *const T, bytes / size) })
}

/// An Arrow string column's buffers: (offsets, data, validity or None, offset).
type StringBuffers = (PyBuffer<u8>, PyBuffer<u8>, Option<PyBuffer<u8>>, usize);

fn strings<'a>(b: &'a StringBuffers, what: &str, rows: usize) -> PyResult<sessions::Strings<'a>> {
    let offsets = slice_of::<i32>(&b.0, what, b.3 + rows + 1)?;
    let data = slice_of::<u8>(&b.1, what, 0)?;
    let validity = match &b.2 {
        Some(v) => Some(slice_of::<u8>(v, what, (b.3 + rows + 7) / 8)?),
        None => None,
    };
    let last = offsets[b.3 + rows];
    if offsets[b.3] < 0 || last < offsets[b.3] || last as usize > data.len() {
        return Err(PyValueError::new_err(format!(
            "{what}: offsets out of the data"
        )));
    }
    if offsets[b.3..=b.3 + rows].windows(2).any(|w| w[1] < w[0]) {
        return Err(PyValueError::new_err(format!(
            "{what}: offsets not ascending"
        )));
    }
    Ok(sessions::Strings {
        offsets,
        data,
        validity,
        offset: b.3,
    })
}

/// The sessions mart's grouping (`sessions.rs`): `rows` events' customer_id, session_id and
/// user_id (Arrow string buffers), times (int64 ms) and flags (uint8, `sessions::HAS_URL`...),
/// to `OUTPUT_WIDTH` int64 figures per session, as one buffer.
#[pyfunction]
fn sessions_of_day(
    py: Python<'_>,
    rows: usize,
    customer: StringBuffers,
    session: StringBuffers,
    user: StringBuffers,
    ts: PyBuffer<u8>,
    flags: PyBuffer<u8>,
    gap_ms: i64,
) -> PyResult<(Py<Buffer>, usize)> {
    let customer = strings(&customer, "customer_id", rows)?;
    let session = strings(&session, "session_id", rows)?;
    let user = strings(&user, "user_id", rows)?;
    let ts = &slice_of::<i64>(&ts, "ts", rows)?[..rows];
    let flags = &slice_of::<u8>(&flags, "flags", rows)?[..rows];
    let out = py
        .allow_threads(|| sessions::sessions(rows, &customer, &session, &user, ts, flags, gap_ms));
    let count = out.len() / (sessions::OUTPUT_WIDTH * 8);
    Ok((buffer(py, out)?, count))
}

/// Times (int64 ms since the epoch) as `YYYY-MM-DD HH:MM:SS.mmm` text, 23 bytes each, one
/// buffer; None when one is outside years 0000 to 9999.
#[pyfunction]
fn format_ms_times(
    py: Python<'_>,
    times: PyBuffer<u8>,
    count: usize,
) -> PyResult<Option<Py<Buffer>>> {
    let times = &slice_of::<i64>(&times, "times", count)?[..count];
    match py.allow_threads(|| sessions::format_ms(times)) {
        Some(text) => Ok(Some(buffer(py, text)?)),
        None => Ok(None),
    }
}

#[pymodule]
fn eventplatform_avro(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Decoder>()?;
    m.add_class::<Buffer>()?;
    m.add_class::<intake::EventEncoder>()?;
    m.add_class::<delivery::DeliveryTally>()?;
    m.add_function(wrap_pyfunction!(_panic_probe, m)?)?;
    m.add_function(wrap_pyfunction!(sessions_of_day, m)?)?;
    m.add_function(wrap_pyfunction!(format_ms_times, m)?)?;
    m.add("SESSION_FIGURES", sessions::OUTPUT_WIDTH)?;
    Ok(())
}
