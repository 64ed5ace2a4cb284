//! GGUF v2/v3 reader. Parses the header from a byte slice (normally a memory map)
//! and hands out zero-copy tensor views. Every count, length, offset and size is
//! checked against the bytes actually present before it is used.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use super::storage::Storage;
use super::types::GgmlType;
use super::value::{Value, ValueType};

pub const MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml supports at most 4 dimensions.
pub const MAX_DIMS: u32 = 4;
/// Arrays nested deeper than this are refused (ggml never writes nested arrays).
pub(crate) const MAX_ARRAY_DEPTH: u32 = 4;
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";

/// The tensor data alignment a `general.alignment` value asks for, if it is valid:
/// an integer power of two, capped so padding stays small.
pub(crate) fn alignment_from(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .filter(|a| a.is_power_of_two() && *a <= 1 << 16)
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("bad GGUF at byte {offset}: {message}")]
    Corrupt { offset: u64, message: String },
}

fn corrupt<T>(offset: usize, message: impl Into<String>) -> Result<T, GgufError> {
    Err(GgufError::Corrupt {
        offset: offset as u64,
        message: message.into(),
    })
}

/// One tensor's header entry, resolved to an absolute byte range of the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) is the fastest-varying dimension.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the tensor's first byte in the file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF file. Tensor data stays in the underlying storage.
pub struct Gguf {
    storage: Storage,
    pub version: u32,
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    metadata: Vec<(String, Value)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl Gguf {
    /// Memory-maps and parses a file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let storage = Storage::map(path).map_err(|source| GgufError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(storage)
    }

    /// Parses a file held in memory (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<Self, GgufError> {
        let header = parse_header(storage.bytes())?;
        let metadata_index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Gguf {
            storage,
            version: header.version,
            alignment: header.alignment,
            data_offset: header.data_offset,
            metadata: header.metadata,
            metadata_index,
            tensors: header.tensors,
            tensor_index,
        })
    }

    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Tensors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes. The range was checked against the file at parse time.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.storage.bytes()[info.offset as usize..(info.offset + info.size) as usize]
    }

    /// The whole file (for checksums and repacking).
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Gives back the memory of a mapped byte range that will not be read again (see
    /// `Storage::release`); a no-op for a file held in memory.
    pub fn release(&self, range: Range<usize>) {
        self.storage.release(range)
    }
}

struct Header {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() as u64 {
            return corrupt(
                self.pos,
                format!(
                    "{} needs {n} bytes but the file ends {} bytes later",
                    what(),
                    self.remaining()
                ),
            );
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("length checked"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let at = self.pos;
        let len = self.u64(&|| format!("length of {}", what()))?;
        // Blame the length field, not the bytes after it.
        if len > self.remaining() as u64 {
            return corrupt(
                at,
                format!(
                    "{} has length {len} but the file ends {} bytes later",
                    what(),
                    self.remaining()
                ),
            );
        }
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(e) => corrupt(
                at + 8 + e.valid_up_to(),
                format!("{} is not valid UTF-8", what()),
            ),
        }
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value, GgufError> {
        let what = || format!("value of key {key:?}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => Value::U32(self.u32(&what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => Value::U64(self.u64(&what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => {
                let at = self.pos;
                match self.array::<1>(&what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => return corrupt(at, format!("key {key:?}: bool byte is {b}, not 0 or 1")),
                }
            }
            ValueType::String => Value::String(self.string(&what)?),
            ValueType::Array => {
                let at = self.pos;
                if depth >= MAX_ARRAY_DEPTH {
                    return corrupt(at, format!("key {key:?}: arrays nested too deeply"));
                }
                let elem_id = self.u32(&|| format!("array type of key {key:?}"))?;
                let Some(elem) = ValueType::from_id(elem_id) else {
                    return corrupt(
                        at,
                        format!("key {key:?}: unknown array element type {elem_id}"),
                    );
                };
                let count_at = self.pos;
                let count = self.u64(&|| format!("array length of key {key:?}"))?;
                let fits = self.remaining() as u64 / elem.min_encoded_len();
                if count > fits {
                    return corrupt(
                        count_at,
                        format!(
                            "key {key:?}: array of {count} {} cannot fit in the {} bytes left",
                            elem.name(),
                            self.remaining()
                        ),
                    );
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

fn parse_header(buf: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>(&|| "the magic".into())?;
    if &magic != MAGIC {
        return corrupt(
            0,
            format!("magic is {magic:02x?}, not \"GGUF\": not a GGUF file"),
        );
    }
    let version = c.u32(&|| "the version".into())?;
    match version {
        2 | 3 => {}
        1 => return corrupt(4, "GGUF version 1 is not supported (re-convert the model)"),
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return corrupt(4, "big-endian GGUF is not supported");
        }
        v => {
            return corrupt(
                4,
                format!("unsupported GGUF version {v} (2 and 3 are read)"),
            );
        }
    }
    let n_tensors_at = c.pos;
    let n_tensors = c.u64(&|| "the tensor count".into())?;
    let n_kv_at = c.pos;
    let n_kv = c.u64(&|| "the metadata count".into())?;
    // Each metadata entry takes at least 8 (key length) + 4 (type) + 1 bytes; each
    // tensor info at least 8 + 4 + 4 + 8.
    if n_kv > c.remaining() as u64 / 13 {
        return corrupt(
            n_kv_at,
            format!("metadata count {n_kv} cannot fit in the file"),
        );
    }
    if n_tensors > c.remaining() as u64 / 24 {
        return corrupt(
            n_tensors_at,
            format!("tensor count {n_tensors} cannot fit in the file"),
        );
    }

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut seen = HashMap::new();
    for i in 0..n_kv {
        let at = c.pos;
        let key = c.string(&|| format!("key of metadata entry {i}"))?;
        if seen.insert(key.clone(), ()).is_some() {
            return corrupt(at, format!("duplicate metadata key {key:?}"));
        }
        let type_at = c.pos;
        let ty_id = c.u32(&|| format!("type of key {key:?}"))?;
        let Some(ty) = ValueType::from_id(ty_id) else {
            return corrupt(
                type_at,
                format!("key {key:?} has unknown value type {ty_id}"),
            );
        };
        let value_at = c.pos;
        let value = c.value(ty, &key, 0)?;
        if key == ALIGNMENT_KEY {
            let Some(a) = alignment_from(&value) else {
                return corrupt(
                    value_at,
                    format!(
                        "{ALIGNMENT_KEY} is {} {}, not an integer power of two up to 65536",
                        ty.name(),
                        value.describe()
                    ),
                );
            };
            alignment = a;
        }
        metadata.push((key, value));
    }

    struct RawInfo {
        at: usize,
        name: String,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        rel_offset: u64,
    }
    let mut raw = Vec::with_capacity(n_tensors as usize);
    let mut names = HashMap::new();
    for i in 0..n_tensors {
        let at = c.pos;
        let name = c.string(&|| format!("name of tensor {i}"))?;
        if names.insert(name.clone(), ()).is_some() {
            return corrupt(at, format!("duplicate tensor name {name:?}"));
        }
        let nd_at = c.pos;
        let n_dims = c.u32(&|| format!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return corrupt(
                nd_at,
                format!("tensor {name:?} has {n_dims} dimensions (1 to 4 allowed)"),
            );
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            let dim_at = c.pos;
            let v = c.u64(&|| format!("dimension {d} of tensor {name:?}"))?;
            if v == 0 || v > i64::MAX as u64 {
                return corrupt(dim_at, format!("tensor {name:?} dimension {d} is {v}"));
            }
            dims.push(v);
        }
        let type_at = c.pos;
        let type_id = c.u32(&|| format!("type of tensor {name:?}"))?;
        let Some(ggml_type) = GgmlType::from_id(type_id) else {
            return corrupt(
                type_at,
                format!("tensor {name:?} has ggml type {type_id}, which bitnetd does not support"),
            );
        };
        let rel_offset = c.u64(&|| format!("offset of tensor {name:?}"))?;
        raw.push(RawInfo {
            at,
            name,
            dims,
            ggml_type,
            rel_offset,
        });
    }

    let data_offset = (c.pos as u64).next_multiple_of(alignment);
    let file_len = buf.len() as u64;
    if data_offset > file_len {
        return corrupt(
            c.pos,
            format!("file ends before the tensor data section ({data_offset})"),
        );
    }
    let mut tensors = Vec::with_capacity(raw.len());
    for r in raw {
        let name = &r.name;
        if r.rel_offset % alignment != 0 {
            return corrupt(
                r.at,
                format!(
                    "tensor {name:?} data offset {} is not a multiple of the alignment {alignment}",
                    r.rel_offset
                ),
            );
        }
        if r.dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .is_none()
        {
            return corrupt(
                r.at,
                format!(
                    "tensor {name:?}: element count of shape {:?} overflows 64 bits",
                    r.dims
                ),
            );
        }
        let Some(size) = r.ggml_type.tensor_bytes(&r.dims) else {
            return corrupt(
                r.at,
                format!(
                    "tensor {name:?}: shape {:?} does not fit type {}",
                    r.dims, r.ggml_type
                ),
            );
        };
        let end = data_offset
            .checked_add(r.rel_offset)
            .and_then(|o| o.checked_add(size));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return corrupt(
                    r.at,
                    format!(
                        "tensor {name:?} ({} bytes at data offset {}) runs past the end of the file ({file_len} bytes)",
                        size, r.rel_offset
                    ),
                );
            }
        }
        tensors.push(TensorInfo {
            name: r.name,
            dims: r.dims,
            ggml_type: r.ggml_type,
            offset: data_offset + r.rel_offset,
            size,
        });
    }
    check_no_overlap(&tensors)?;
    Ok(Header {
        version,
        alignment,
        data_offset,
        metadata,
        tensors,
    })
}

/// Two tensors sharing bytes means a damaged or hand-crafted file.
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<(), GgufError> {
    let mut spans: Vec<&TensorInfo> = tensors.iter().collect();
    spans.sort_by_key(|t| t.offset);
    for pair in spans.windows(2) {
        if pair[0].offset + pair[0].size > pair[1].offset {
            return corrupt(
                pair[1].offset as usize,
                format!("tensors {:?} and {:?} overlap", pair[0].name, pair[1].name),
            );
        }
    }
    Ok(())
}
