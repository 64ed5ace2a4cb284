//! Streaming GGUF v3 writer. Only the header is held in memory; tensor bytes are
//! produced by a callback one tensor at a time, so multi-GB models never need to
//! be resident.
//!
//! Layout follows ggml's own writer: header, tensor infos, zero padding to the
//! alignment, then each tensor followed by zero padding to the alignment (the last
//! one included). Re-writing a bitnet.cpp file therefore gives the same bytes.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::reader::{
    ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_ARRAY_DEPTH, MAX_DIMS, alignment_from,
};
use super::types::GgmlType;
use super::value::Value;

const VERSION: u32 = 3;

/// Something the writer refuses because the reader would refuse the resulting file.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("metadata key {0:?} is already set")]
    DuplicateKey(String),
    #[error("metadata key {key:?}: array element {index} is {found}, the array holds {declared}")]
    MixedArray {
        key: String,
        index: usize,
        found: &'static str,
        declared: &'static str,
    },
    #[error("metadata key {0:?}: arrays nested too deeply")]
    NestedTooDeep(String),
    #[error("{ALIGNMENT_KEY} is {0}, not a power of two up to 65536")]
    BadAlignment(String),
    #[error("tensor {0:?} is already added")]
    DuplicateTensor(String),
    #[error("tensor {name:?}: shape {dims:?} is not 1 to 4 non-zero dimensions that fit type {ty}")]
    BadShape {
        name: String,
        dims: Vec<u64>,
        ty: GgmlType,
    },
}

struct TensorEntry {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    size: u64,
}

/// Collects metadata and tensor infos, then streams a GGUF file with [`GgufWriter::write`].
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorEntry>,
    tensor_names: HashSet<String>,
    alignment: Option<u64>,
}

impl GgufWriter {
    /// An empty file; tensor data is aligned to 32 bytes unless `general.alignment` is added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a metadata entry; entries are written in insertion order.
    ///
    /// A key can be set only once (a GGUF with duplicate keys is refused by the
    /// reader, and silently replacing would hide caller bugs). Arrays must hold
    /// only their declared element type, and `general.alignment` must be an
    /// integer power of two up to 65536.
    pub fn add_metadata(&mut self, key: &str, value: Value) -> Result<(), WriteError> {
        if self.metadata.iter().any(|(k, _)| k == key) {
            return Err(WriteError::DuplicateKey(key.to_owned()));
        }
        check_value(key, &value, 0)?;
        if key == ALIGNMENT_KEY {
            let a =
                alignment_from(&value).ok_or_else(|| WriteError::BadAlignment(value.describe()))?;
            self.alignment = Some(a);
        }
        self.metadata.push((key.to_owned(), value));
        Ok(())
    }

    /// Appends a tensor info; `fill` is later called for tensors in this order.
    pub fn add_tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType) -> Result<(), WriteError> {
        if self.tensor_names.contains(name) {
            return Err(WriteError::DuplicateTensor(name.to_owned()));
        }
        let dims_ok = !dims.is_empty()
            && dims.len() <= MAX_DIMS as usize
            && dims.iter().all(|&d| d != 0 && d <= i64::MAX as u64);
        let size =
            ty.tensor_bytes(dims)
                .filter(|_| dims_ok)
                .ok_or_else(|| WriteError::BadShape {
                    name: name.to_owned(),
                    dims: dims.to_vec(),
                    ty,
                })?;
        self.tensor_names.insert(name.to_owned());
        self.tensors.push(TensorEntry {
            name: name.to_owned(),
            dims: dims.to_vec(),
            ty,
            size,
        });
        Ok(())
    }

    fn alignment(&self) -> u64 {
        self.alignment.unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Writes the file. `fill(i, w)` must write exactly the bytes of tensor `i`
    /// (its `GgmlType::tensor_bytes`); writing more or less is an error naming the tensor.
    pub fn write<W: Write>(
        &self,
        out: W,
        mut fill: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let align = self.alignment();
        let mut out = Counting {
            inner: BufWriter::new(out),
            written: 0,
        };
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&(self.tensors.len() as u64).to_le_bytes())?;
        out.write_all(&(self.metadata.len() as u64).to_le_bytes())?;
        for (key, value) in &self.metadata {
            write_str(&mut out, key)?;
            out.write_all(&(value.value_type() as u32).to_le_bytes())?;
            write_value(&mut out, value)?;
        }
        let mut rel_offset = 0u64;
        for t in &self.tensors {
            write_str(&mut out, &t.name)?;
            out.write_all(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                out.write_all(&d.to_le_bytes())?;
            }
            out.write_all(&t.ty.id().to_le_bytes())?;
            out.write_all(&rel_offset.to_le_bytes())?;
            rel_offset = rel_offset
                .checked_add(t.size)
                .map(|end| end.next_multiple_of(align))
                .ok_or_else(|| invalid(format!("tensor {:?} ends past 2^64 bytes", t.name)))?;
        }
        pad(&mut out, align)?;
        for (i, t) in self.tensors.iter().enumerate() {
            let mut sink = Limited {
                inner: &mut out,
                left: t.size,
                name: &t.name,
            };
            fill(i, &mut sink)?;
            if sink.left != 0 {
                return Err(invalid(format!(
                    "tensor {:?}: fill wrote {} of its {} bytes",
                    t.name,
                    t.size - sink.left,
                    t.size
                )));
            }
            pad(&mut out, align)?;
        }
        out.inner.flush()
    }

    /// [`GgufWriter::write`] to a new file at `path` (replaced if it exists).
    pub fn write_file(
        &self,
        path: impl AsRef<Path>,
        fill: impl FnMut(usize, &mut dyn Write) -> io::Result<()>,
    ) -> io::Result<()> {
        let file = File::create(path)?;
        self.write(&file, fill)?;
        file.sync_all()
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Checks what the encoding cannot express: every array element has the array's
/// declared type (GGUF stores the type once per array), and nesting is bounded.
fn check_value(key: &str, value: &Value, depth: u32) -> Result<(), WriteError> {
    let Value::Array(declared, items) = value else {
        return Ok(());
    };
    if depth >= MAX_ARRAY_DEPTH {
        return Err(WriteError::NestedTooDeep(key.to_owned()));
    }
    for (index, item) in items.iter().enumerate() {
        if item.value_type() != *declared {
            return Err(WriteError::MixedArray {
                key: key.to_owned(),
                index,
                found: item.value_type().name(),
                declared: declared.name(),
            });
        }
        check_value(key, item, depth + 1)?;
    }
    Ok(())
}

fn write_str(out: &mut impl Write, s: &str) -> io::Result<()> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

/// The value's payload, without its type tag (arrays carry their element tag).
fn write_value(out: &mut impl Write, value: &Value) -> io::Result<()> {
    match value {
        Value::U8(v) => out.write_all(&v.to_le_bytes()),
        Value::I8(v) => out.write_all(&v.to_le_bytes()),
        Value::U16(v) => out.write_all(&v.to_le_bytes()),
        Value::I16(v) => out.write_all(&v.to_le_bytes()),
        Value::U32(v) => out.write_all(&v.to_le_bytes()),
        Value::I32(v) => out.write_all(&v.to_le_bytes()),
        Value::F32(v) => out.write_all(&v.to_le_bytes()),
        Value::U64(v) => out.write_all(&v.to_le_bytes()),
        Value::I64(v) => out.write_all(&v.to_le_bytes()),
        Value::F64(v) => out.write_all(&v.to_le_bytes()),
        Value::Bool(v) => out.write_all(&[u8::from(*v)]),
        Value::String(s) => write_str(out, s),
        Value::Array(ty, items) => {
            out.write_all(&(*ty as u32).to_le_bytes())?;
            out.write_all(&(items.len() as u64).to_le_bytes())?;
            items.iter().try_for_each(|item| write_value(out, item))
        }
    }
}

/// Zero bytes up to the next multiple of `align` from the start of the file.
fn pad<W: Write>(out: &mut Counting<W>, align: u64) -> io::Result<()> {
    const ZEROS: [u8; 64] = [0; 64];
    let mut n = out.written.next_multiple_of(align) - out.written;
    while n > 0 {
        let chunk = n.min(ZEROS.len() as u64);
        out.write_all(&ZEROS[..chunk as usize])?;
        n -= chunk;
    }
    Ok(())
}

/// Tracks the file position, which padding is computed from.
struct Counting<W: Write> {
    inner: BufWriter<W>,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hands `fill` a window of exactly one tensor's size, so an over-long fill fails
/// before it corrupts the next tensor's position.
struct Limited<'a, W: Write> {
    inner: &'a mut W,
    left: u64,
    name: &'a str,
}

impl<W: Write> Write for Limited<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(invalid(format!(
                "tensor {:?}: fill wrote more than its bytes ({} too many)",
                self.name,
                buf.len() as u64 - self.left
            )));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Gguf, ValueType};

    /// Distinct bytes per tensor, so a misplaced tensor cannot pass for another.
    fn pattern(index: usize, len: u64) -> Vec<u8> {
        (0..len)
            .map(|j| (j as u8).wrapping_mul(7).wrapping_add(index as u8 * 31 + 1))
            .collect()
    }

    fn write_patterned(w: &GgufWriter) -> Vec<u8> {
        let mut out = Vec::new();
        w.write(&mut out, |i, sink| {
            sink.write_all(&pattern(i, w.tensors[i].size))
        })
        .unwrap();
        out
    }

    fn every_value_type() -> Vec<(&'static str, Value)> {
        let strings = ["", "a", "héllo", "多字节"]
            .map(|s| Value::String(s.into()))
            .to_vec();
        vec![
            ("t.u8", Value::U8(200)),
            ("t.i8", Value::I8(-100)),
            ("t.u16", Value::U16(60000)),
            ("t.i16", Value::I16(-30000)),
            ("t.u32", Value::U32(4_000_000_000)),
            ("t.i32", Value::I32(-2_000_000_000)),
            ("t.f32", Value::F32(-1.5e-5)),
            ("t.bool", Value::Bool(true)),
            ("t.false", Value::Bool(false)),
            ("t.str", Value::String("bitnet-b1.58".into())),
            ("t.empty_str", Value::String(String::new())),
            ("t.u64", Value::U64(u64::MAX)),
            ("t.i64", Value::I64(i64::MIN)),
            ("t.f64", Value::F64(500000.25)),
            (
                "t.arr_i32",
                Value::Array(ValueType::I32, vec![Value::I32(-1), Value::I32(7)]),
            ),
            ("t.arr_empty", Value::Array(ValueType::F32, vec![])),
            ("t.arr_str", Value::Array(ValueType::String, strings)),
            (
                "t.arr_bool",
                Value::Array(ValueType::Bool, vec![Value::Bool(false), Value::Bool(true)]),
            ),
            (
                "t.arr_nested",
                Value::Array(
                    ValueType::Array,
                    vec![
                        Value::Array(ValueType::U8, vec![Value::U8(1), Value::U8(2)]),
                        Value::Array(ValueType::U64, vec![]),
                    ],
                ),
            ),
        ]
    }

    #[test]
    fn metadata_and_tensors_round_trip() {
        let mut w = GgufWriter::new();
        let meta = every_value_type();
        for (k, v) in &meta {
            w.add_metadata(k, v.clone()).unwrap();
        }
        let tensors: &[(&str, &[u64], GgmlType)] = &[
            ("norm", &[3], GgmlType::F32),
            ("emb", &[4, 2], GgmlType::F16),
            ("q8", &[32, 2], GgmlType::Q8_0),
            ("q6", &[256], GgmlType::Q6K),
            ("bf", &[2, 1, 1, 3], GgmlType::BF16),
            ("i2s", &[128, 3], GgmlType::I2S),
            ("tl1", &[128, 1], GgmlType::TL1),
            ("tl2", &[256, 2], GgmlType::TL2),
        ];
        for (name, dims, ty) in tensors {
            w.add_tensor(name, dims, *ty).unwrap();
        }
        let bytes = write_patterned(&w);
        let g = Gguf::from_bytes(bytes.clone()).unwrap();

        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        let got: Vec<(&str, &Value)> = g.metadata().iter().map(|(k, v)| (k.as_str(), v)).collect();
        let want: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        assert_eq!(got, want);
        assert_eq!(g.tensors().len(), tensors.len());
        for (i, (t, (name, dims, ty))) in g.tensors().iter().zip(tensors).enumerate() {
            assert_eq!(
                (t.name.as_str(), t.dims.as_slice(), t.ggml_type),
                (*name, *dims, *ty)
            );
            assert_eq!(t.offset % 32, 0, "{name}");
            assert_eq!(g.tensor_data(t), pattern(i, t.size), "{name}");
        }
        // Header padding and the padding after each tensor are zeros, and the file
        // ends on an alignment boundary, as ggml writes it.
        assert_eq!(bytes.len() % 32, 0);
        let mut pos = g.data_offset as usize;
        for t in g.tensors() {
            assert!(bytes[pos..t.offset as usize].iter().all(|&b| b == 0));
            pos = (t.offset + t.size) as usize;
        }
        assert!(bytes[pos..].iter().all(|&b| b == 0));
    }

    #[test]
    fn custom_alignment_applies_even_when_set_after_tensors() {
        let mut w = GgufWriter::new();
        w.add_tensor("a", &[3], GgmlType::F32).unwrap();
        w.add_tensor("b", &[70], GgmlType::F16).unwrap();
        w.add_metadata("general.alignment", Value::U32(256))
            .unwrap();
        let bytes = write_patterned(&w);
        let g = Gguf::from_bytes(bytes.clone()).unwrap();
        assert_eq!(g.alignment, 256);
        assert_eq!(g.data_offset % 256, 0);
        let offsets: Vec<u64> = g
            .tensors()
            .iter()
            .map(|t| t.offset - g.data_offset)
            .collect();
        assert_eq!(offsets, [0, 256]);
        assert_eq!(bytes.len() as u64, g.data_offset + 512);
        assert_eq!(g.tensor_data(&g.tensors()[1]), pattern(1, 140));
    }

    #[test]
    fn empty_file_round_trips() {
        let mut out = Vec::new();
        GgufWriter::new()
            .write(&mut out, |_, _| unreachable!())
            .unwrap();
        assert_eq!(out.len(), 32);
        let g = Gguf::from_bytes(out).unwrap();
        assert!(g.metadata().is_empty() && g.tensors().is_empty());
    }

    #[test]
    fn write_file_is_readable_through_mmap() {
        let mut w = GgufWriter::new();
        w.add_metadata("general.name", Value::String("x".into()))
            .unwrap();
        w.add_tensor("t", &[5], GgmlType::F32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        w.write_file(&path, |_, sink| sink.write_all(&[9; 20]))
            .unwrap();
        let g = Gguf::open(&path).unwrap();
        assert_eq!(g.tensor_data(&g.tensors()[0]), [9; 20]);
    }

    #[test]
    fn fill_of_the_wrong_length_is_an_error_naming_the_tensor() {
        let mut w = GgufWriter::new();
        w.add_tensor("first", &[4], GgmlType::F32).unwrap();
        w.add_tensor("second", &[4], GgmlType::F32).unwrap();
        let short = w.write(Vec::new(), |i, sink| sink.write_all(&[0; 16][..16 - i]));
        let msg = short.unwrap_err().to_string();
        assert!(
            msg.contains("\"second\"") && msg.contains("wrote 15 of its 16"),
            "{msg}"
        );
        let long = w.write(Vec::new(), |_, sink| sink.write_all(&[0; 17]));
        let msg = long.unwrap_err().to_string();
        assert!(
            msg.contains("\"first\"") && msg.contains("1 too many"),
            "{msg}"
        );
    }

    #[test]
    fn refuses_what_the_reader_would_refuse() {
        let mut w = GgufWriter::new();
        w.add_metadata("k", Value::U8(1)).unwrap();
        assert!(
            matches!(w.add_metadata("k", Value::U8(2)), Err(WriteError::DuplicateKey(k)) if k == "k")
        );
        let mixed = Value::Array(ValueType::U32, vec![Value::U32(1), Value::I32(2)]);
        let err = w.add_metadata("m", mixed).unwrap_err().to_string();
        assert!(
            err.contains("\"m\"") && err.contains("element 1 is i32"),
            "{err}"
        );
        let deep = (0..5).fold(Value::U8(0), |v, _| Value::Array(v.value_type(), vec![v]));
        assert!(matches!(
            w.add_metadata("d", deep),
            Err(WriteError::NestedTooDeep(_))
        ));
        for bad in [
            Value::U32(0),
            Value::U32(3),
            Value::U64(1 << 17),
            Value::F32(32.0),
        ] {
            let err = w.add_metadata("general.alignment", bad).unwrap_err();
            assert!(matches!(err, WriteError::BadAlignment(_)), "{err}");
        }

        w.add_tensor("t", &[4], GgmlType::F32).unwrap();
        assert!(matches!(
            w.add_tensor("t", &[4], GgmlType::F32),
            Err(WriteError::DuplicateTensor(_))
        ));
        let shapes: [&[u64]; 5] = [
            &[],
            &[1, 1, 1, 1, 1],
            &[4, 0],
            &[u64::MAX],
            &[1 << 40, 1 << 40],
        ];
        for dims in shapes {
            let err = w.add_tensor("u", dims, GgmlType::F32).unwrap_err();
            assert!(matches!(err, WriteError::BadShape { .. }), "{dims:?}");
        }
        assert!(w.add_tensor("u", &[33], GgmlType::Q8_0).is_err());
        // Nothing refused was kept: the file holds exactly the accepted entries.
        let g = Gguf::from_bytes(write_patterned(&w)).unwrap();
        assert_eq!((g.metadata().len(), g.tensors().len()), (1, 1));
    }
}
